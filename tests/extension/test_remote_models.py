"""``GET /llamalab/models`` with ``remote_url``: the team server's models in ``remote`` (llama-cpp-python's
server on the demo model, and a real ``llamalab serve``), the one in use, choosing one with
``POST /llamalab/models/load``, and an unreachable server answered as a field, not a failure."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import TEST_HOME, free_port
from tests.extension import test_remote_mode as remote_mode
from tests.fixtures.models_server import running_models_server
from tests.fixtures.serve_process import ServeProcess, add_key

KEY = remote_mode.KEY
upstream = remote_mode.upstream  # llama_cpp.server on the demo model, as "upstream-smollm2", key KEY
OVERALL_S = 60  # a generous bound on one request; nothing here is timed more tightly


@pytest.fixture
def llamalab_config(upstream):
    return {"store_dir": str(TEST_HOME), "remote_url": upstream, "remote_api_key": KEY}


@pytest.fixture(scope="module")
def team_serve(tmp_path_factory, demo_model):
    """A real ``llamalab serve`` on the demo model and a key for it."""
    keys = tmp_path_factory.mktemp("team") / "keys.json"
    key = add_key(keys, "hub-user")
    server = ServeProcess(TEST_HOME, keys, free_port(), ("--parallel", "1", "--n-ctx", "512")).start()
    yield server, key
    server.stop()


async def _models(fetch_json) -> dict:
    status, reply = await asyncio.wait_for(fetch_json("GET", "llamalab/models"), OVERALL_S)
    assert status == 200, reply
    return reply


async def test_the_upstreams_model_is_listed_in_use(fetch_json, jp_fetch, upstream):
    reply = await _models(fetch_json)
    remote = reply["remote"]
    assert remote["error"] is None and remote["url"] == upstream
    assert remote["kind"] == "openai-compatible"  # llama-cpp-python's server has no /props
    assert remote["models"] == [{"id": "upstream-smollm2", "in_use": True, "allowed": True}]
    assert reply["catalog"]  # the local parts are still there
    assert KEY not in (await jp_fetch("llamalab", "models")).body.decode()


async def test_an_id_the_server_does_not_list_is_refused_naming_those_it_does(fetch_json, extension):
    status, error = await fetch_json("POST", "llamalab/models/load", {"model": "no-such-model"})
    assert status == 404 and error["code"] == "model_not_found", error
    assert "'no-such-model'" in error["message"] and "upstream-smollm2" in error["message"]
    assert "\n" not in error["message"]
    assert extension.manager.default_model() == ""  # nothing changed: the server's own model


async def test_choosing_a_listed_model_makes_it_the_one_in_use(fetch_json, open_chat, extension):
    status, loaded = await fetch_json("POST", "llamalab/models/load", {"model": "upstream-smollm2"})
    assert status == 200 and loaded["name"] == "upstream-smollm2" and loaded["backend"] == "remote", loaded
    reply = await _models(fetch_json)
    assert reply["default_model"] == "upstream-smollm2" and reply["loaded"]["name"] == "upstream-smollm2"
    assert [m["id"] for m in reply["remote"]["models"] if m["in_use"]] == ["upstream-smollm2"]
    socket = await open_chat()  # a chat that names no model gets it
    await socket.send({"type": "chat", "id": "c1", "content": "Say hi.", "params": {"max_tokens": 4, "temperature": 0}})
    done = await socket.reply_to("c1")
    assert done["type"] == "done" and done["model"] == "upstream-smollm2", done
    assert extension.manager._engine is None  # still nothing loaded here


async def test_an_unreachable_server_is_an_error_field_and_the_url_hides_credentials(fetch_json, jp_fetch, extension):
    port = free_port()  # nobody listens there
    await extension.manager.update(remote_url=f"http://someone:hunter2@127.0.0.1:{port}/v1?token=hunter2")
    reply = await _models(fetch_json)  # answers (200) instead of failing or hanging
    remote = reply["remote"]
    assert remote["url"] == f"http://127.0.0.1:{port}/v1" and remote["models"] == [] and remote["kind"] is None
    assert "cannot reach" in remote["error"] and "check that it is running" in remote["error"]
    assert "\n" not in remote["error"]
    assert reply["catalog"] and reply["default_model"] == ""
    assert "hunter2" not in (await jp_fetch("llamalab", "models")).body.decode()
    status, error = await fetch_json("POST", "llamalab/models/load", {"model": "upstream-smollm2"})
    assert status == 500 and error["code"] == "engine_error" and "cannot reach" in error["message"], error


async def test_a_llamalab_serve_team_server(fetch_json, extension, team_serve):
    server, key = team_serve
    await extension.manager.update(remote_url=server.url, remote_api_key=key)
    reply = await _models(fetch_json)
    remote = reply["remote"]
    assert remote["error"] is None and remote["url"] == server.url and remote["kind"] == "llamalab serve"
    assert remote["models"] == [{"id": "smollm2-135m-instruct:q4_1", "in_use": True, "allowed": True}]
    assert key not in json.dumps(reply)


@pytest.fixture
def counting_server():
    with running_models_server(["a", "b"]) as server:
        yield server


async def test_listings_are_reused_and_the_first_model_is_in_use(fetch_json, extension, counting_server, monkeypatch):
    from llamalab.extension import remote_models as manager_module

    monkeypatch.setattr(manager_module, "REMOTE_LIST_TTL_S", 1e6)  # no expiry during the test
    await extension.manager.update(remote_url=counting_server.url)
    first, second = await asyncio.gather(_models(fetch_json), _models(fetch_json))
    third = await _models(fetch_json)
    assert first["remote"] == second["remote"] == third["remote"]
    assert first["remote"]["models"] == [{"id": "a", "in_use": True, "allowed": True},
                                         {"id": "b", "in_use": False, "allowed": True}]
    assert first["remote"]["kind"] == "openai-compatible"  # /props answered a list, not llama-server's
    assert counting_server.paths.count("/v1/models") == 1


@pytest.mark.parametrize("llamalab_config", [{"store_dir": str(TEST_HOME)}])
async def test_without_remote_url_there_is_no_remote(fetch_json, llamalab_config):
    reply = await _models(fetch_json)
    assert reply["remote"] is None and reply["stored"]
