"""A team on a real JupyterHub: two users' single-user servers run llamalab pointed at one
``llamalab serve``, each with its own key from the spawner's environment.

The Hub is the real ``jupyterhub`` with configurable-http-proxy, a dummy authenticator and the
simple local-process spawner on 127.0.0.1 (tests/fixtures/hub.py). Alice and Bob chat and
complete at the same time; ``llamalab serve``'s metrics show each request under its own key's
name; the model is loaded once, in ``llamalab serve`` (no single-user server maps a GGUF); neither
user reaches the other's server, conversations, jobs or files, nor sees the other's key.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

pytest.importorskip("jupyterhub")

from tests.conftest import TEST_HOME, free_port  # noqa: E402
from tests.fixtures.hub import Hub  # noqa: E402
from tests.fixtures.serve_process import ServeProcess, add_key  # noqa: E402

USERS = ("alice", "bob")
OTHER = {"alice": "bob", "bob": "alice"}


@pytest.fixture(scope="module")
def team(tmp_path_factory, demo_model):
    """``llamalab serve`` with keys for alice and bob, and a Hub whose users' servers use it."""
    root = tmp_path_factory.mktemp("hub")
    keys_file = root / "serve-keys.json"
    keys = {user: add_key(keys_file, user) for user in USERS}
    serve = ServeProcess(TEST_HOME, keys_file, free_port(), ("--parallel", "2", "--n-ctx", "1024"))
    hub = Hub(root, dict(keys), serve.url, (free_port(), free_port(), free_port()))
    keys["prometheus"] = add_key(keys_file, "prometheus", "--role", "metrics")  # not a Hub user
    try:
        serve.start()
        hub.start()
        yield serve, hub, keys
    finally:
        hub.stop()
        assert serve.stop() == 0, serve.output()


def _as(hub: Hub, user: str) -> dict:
    return {"Authorization": f"token {hub.tokens[user]}"}


def _chat(hub: Hub, user: str, server: str, max_tokens: int = 12) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Say hello to the team."}], "max_tokens": max_tokens,
            "temperature": 0}
    return httpx.post(f"{hub.url}/user/{server}/llamalab/v1/chat/completions", json=body, headers=_as(hub, user),
                      timeout=300)


def _complete(hub: Hub, user: str, server: str) -> httpx.Response:
    body = {"prefix": "def add(a, b):\n    return ", "suffix": "\n", "language": "python", "max_tokens": 12}
    return httpx.post(f"{hub.url}/user/{server}/llamalab/complete", json=body, headers=_as(hub, user), timeout=300)


def _metrics(serve: ServeProcess, key: str) -> dict[str, float]:
    """/metrics, read with ``key`` (of role metrics, as Prometheus' would be)."""
    reply = httpx.get(serve.url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert reply.status_code == 200, reply.text
    text = reply.text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _refused(reply: httpx.Response) -> bool:
    """403, or a redirect to the Hub's login: anything but the other user's data."""
    if reply.status_code == 403:
        return True
    return reply.status_code in (301, 302, 303, 307) and "/hub/login" in reply.headers.get("location", "")


# -- both users at once, through llamalab serve -------------------------------------------
def test_alice_and_bob_chat_and_complete_at_the_same_time_through_llamalab_serve(team):
    serve, hub, keys = team
    before = _metrics(serve, keys["prometheus"])
    calls = [(kind, user) for user in USERS for kind in ("chat", "complete")]
    replies: dict[tuple[str, str], object] = {}
    together = threading.Barrier(len(calls))

    def run(kind: str, user: str) -> None:
        together.wait(60)
        try:
            replies[kind, user] = (_chat if kind == "chat" else _complete)(hub, user, user)
        except httpx.HTTPError as exc:
            replies[kind, user] = exc

    threads = [threading.Thread(target=run, args=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for user in USERS:
        chat, complete = replies.get(("chat", user)), replies.get(("complete", user))
        assert isinstance(chat, httpx.Response) and chat.status_code == 200, (user, chat, getattr(chat, "text", ""))
        assert chat.json()["choices"][0]["message"]["content"].strip(), chat.text
        assert chat.json()["model"] == "smollm2-135m-instruct:q4_1"  # the model llamalab serve serves
        assert isinstance(complete, httpx.Response) and complete.status_code == 200, (user, complete,
                                                                                     getattr(complete, "text", ""))
        assert complete.json()["text"].strip(), complete.text

    # each server went through llamalab serve with its own user's key: the key names are the users
    after = _metrics(serve, keys["prometheus"])

    def more(user: str, *routes: str) -> float:
        names = [f'llamalab_requests_total{{route="{route}",status="200",user="{user}"}}' for route in routes]
        return sum(after.get(name, 0) - before.get(name, 0) for name in names)

    for user in USERS:
        assert more(user, "chat.completions") >= 1, [name for name in after if user in name]
        # inline completion: the OpenAI, llama-server or fill-in-the-middle completion route
        assert more(user, "completions", "completion", "infill") >= 1, [name for name in after if user in name]
        tokens = f'llamalab_generated_tokens_total{{user="{user}"}}'
        assert after.get(tokens, 0) - before.get(tokens, 0) >= 2


def test_the_model_is_loaded_once_in_llamalab_serve(team):
    serve, hub, _ = team
    served_maps = Path(f"/proc/{serve.process.pid}/maps").read_text()
    assert ".gguf" in served_maps  # the check below would see a mapped model
    for user in USERS:
        assert _chat(hub, user, user, max_tokens=2).status_code == 200
        models = httpx.get(f"{hub.url}/user/{user}/llamalab/models", headers=_as(hub, user), timeout=60)
        assert models.status_code == 200, models.text
        assert models.json()["loaded"]["backend"] == "remote", models.json()["loaded"]
        assert models.json()["stored"] == []  # nothing pulled into the user's own store either
        settings = httpx.get(f"{hub.url}/user/{user}/llamalab/settings", headers=_as(hub, user), timeout=60).json()
        assert settings["remote_url"] == serve.url and settings["remote_api_key_set"] is True
        maps = Path(f"/proc/{hub.pids[user]}/maps").read_text()
        assert ".gguf" not in maps, f"{user}'s single-user server mapped a model file"
        assert "jupyterhub-singleuser" in Path(f"/proc/{hub.pids[user]}/cmdline").read_text()


# -- isolation -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["llamalab/v1/models", "llamalab/models", "llamalab/pulls", "llamalab/jobs",
                                  "llamalab/conversations", "llamalab/settings", "api/contents"])
def test_a_user_cannot_reach_the_other_users_server(team, path):
    _, hub, _ = team
    for user in USERS:
        own = httpx.get(f"{hub.url}/user/{user}/{path}", headers=_as(hub, user), timeout=60)
        assert own.status_code == 200, own.text  # the route is there and answers its owner
        other = httpx.get(f"{hub.url}/user/{OTHER[user]}/{path}", headers=_as(hub, user), timeout=60,
                          follow_redirects=False)
        assert _refused(other), (user, path, other.status_code, other.text[:300])


def test_a_user_cannot_use_the_other_users_server_for_inference(team):
    _, hub, _ = team
    for user in USERS:
        assert _refused(_chat(hub, user, OTHER[user], max_tokens=2))
        assert _refused(_complete(hub, user, OTHER[user]))
        anonymous = httpx.get(f"{hub.url}/user/{user}/llamalab/models", timeout=60, follow_redirects=False)
        assert _refused(anonymous), anonymous.status_code


def test_conversations_and_jobs_stay_with_their_owner(team):
    _, hub, _ = team
    alice = f"{hub.url}/user/alice"
    made = httpx.post(f"{alice}/llamalab/conversations", json={}, headers=_as(hub, "alice"), timeout=60)
    assert made.status_code == 201, made.text
    conversation = made.json()["id"]
    # a job: a pull of a file in alice's folder (not a model: however the job ends, it is hers)
    put = httpx.put(f"{alice}/api/contents/notes.gguf", headers=_as(hub, "alice"), timeout=60,
                    json={"type": "file", "format": "text", "content": "not a model"})
    assert put.status_code in (200, 201), put.text
    pulled = httpx.post(f"{alice}/llamalab/pulls", json={"model": "notes.gguf"}, headers=_as(hub, "alice"),
                        timeout=60)
    assert pulled.status_code == 202, pulled.text
    job = pulled.json()["id"]

    listed = httpx.get(f"{alice}/llamalab/conversations", headers=_as(hub, "alice"), timeout=60).text
    assert conversation in listed
    assert job in httpx.get(f"{alice}/llamalab/jobs", headers=_as(hub, "alice"), timeout=60).text
    for path in (f"llamalab/conversations/{conversation}", f"llamalab/jobs/{job}", f"llamalab/pulls/{job}",
                 "api/contents/notes.gguf"):
        assert httpx.get(f"{alice}/{path}", headers=_as(hub, "alice"), timeout=60).status_code == 200, path
        stolen = httpx.get(f"{alice}/{path}", headers=_as(hub, "bob"), timeout=60, follow_redirects=False)
        assert _refused(stolen), (path, stolen.status_code, stolen.text[:300])
    bobs = f"{hub.url}/user/bob"
    assert conversation not in httpx.get(f"{bobs}/llamalab/conversations", headers=_as(hub, "bob"), timeout=60).text
    assert job not in httpx.get(f"{bobs}/llamalab/jobs", headers=_as(hub, "bob"), timeout=60).text
    assert httpx.get(f"{bobs}/api/contents/notes.gguf", headers=_as(hub, "bob"), timeout=60).status_code == 404
    # and alice's conversation is kept in her own home, none of it in bob's
    assert any(conversation in p.name for p in hub.home("alice").rglob("*.json"))
    assert not any(conversation in p.name for p in hub.home("bob").rglob("*.json"))


def test_each_server_has_only_its_own_key(team):
    serve, hub, keys = team
    for user in USERS:
        raw = Path(f"/proc/{hub.pids[user]}/environ").read_bytes()
        environ = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        assert environ["LLAMALAB_REMOTE_API_KEY"] == keys[user]
        assert environ["LLAMALAB_REMOTE_URL"] == serve.url
        assert environ["HOME"] == str(hub.home(user))
        assert keys[OTHER[user]].encode() not in raw, f"{OTHER[user]}'s key is in {user}'s environment"
