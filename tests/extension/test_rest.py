"""The REST routes under /llamalab/ against a real jupyter_server with the demo model."""

from __future__ import annotations

import json



async def test_models_lists_the_store_and_the_catalog(fetch_json):
    status, body = await fetch_json("GET", "llamalab/models")
    assert status == 200 and body["type"] == "models"
    assert body["default_model"] == "smollm2-135m-instruct:q4_1"
    assert body["loaded"] is None  # loaded lazily, on first use
    stored = {m["name"]: m for m in body["stored"]}
    assert stored["smollm2-135m-instruct:q4_1"]["quantization"] == "Q4_1"
    catalog = {e["name"]: e for e in body["catalog"]}
    assert catalog["llama-2-7b-chat"]["requires_license_acceptance"] is True
    assert "q4_k_m" in catalog["llama-2-7b-chat"]["quantizations"]


async def test_load_then_unload_the_model(fetch_json, extension):
    status, loaded = await fetch_json("POST", "llamalab/models/load", {})
    assert status == 200
    assert loaded["name"] == "smollm2-135m-instruct:q4_1" and loaded["backend"] == "local"
    assert loaded["context_length"] == 1024 and loaded["architecture"] == "llama"
    _, models = await fetch_json("GET", "llamalab/models")
    assert models["loaded"]["name"] == loaded["name"]
    assert [m["loaded"] for m in models["stored"] if m["name"] == loaded["name"]] == [True]
    status, unloaded = await fetch_json("POST", "llamalab/models/unload")
    assert status == 200 and unloaded == {"type": "unloaded", "model": loaded["name"]}
    assert extension.manager.loaded is None


async def test_settings_can_be_read_and_changed_within_limits(fetch_json):
    status, settings = await fetch_json("GET", "llamalab/settings")
    assert status == 200
    assert settings["n_ctx"] == 1024 and settings["n_gpu_layers"] == "auto"
    assert settings["kernel_access"] is True and settings["remote_api_key_set"] is False
    status, changed = await fetch_json("PATCH", "llamalab/settings", {"system_prompt": "Be brief.", "n_ctx": 512})
    assert status == 200 and changed["system_prompt"] == "Be brief." and changed["n_ctx"] == 512

    status, error = await fetch_json("PATCH", "llamalab/settings", {"max_queued": 1000})  # the admin's, not a user's
    assert status == 400 and error["code"] == "bad_request" and "max_queued" in error["message"]
    status, error = await fetch_json("PATCH", "llamalab/settings", {"default_model": "no-such-model"})
    assert status == 404 and error["code"] == "model_not_found"
    status, error = await fetch_json("PATCH", "llamalab/settings", {"n_gpu_layers": "lots"})
    assert status == 400 and error["type"] == "error"


async def test_hardware_is_the_doctor_report(fetch_json):
    status, report = await fetch_json("GET", "llamalab/hardware")
    assert status == 200 and report["type"] == "hardware"
    assert report["llama_cpp_version"] and isinstance(report["gpu_offload_supported"], bool)
    assert any(m["name"] == "smollm2-135m-instruct:q4_1" for m in report["models"])
    assert "llama-cpp-python" in report["text"]


async def test_malformed_requests_get_error_replies_and_the_server_keeps_serving(fetch_json):
    cases = [
        ("POST", "llamalab/pulls", "{not json", 400, "bad_request"),
        ("POST", "llamalab/pulls", {}, 400, "bad_request"),
        ("POST", "llamalab/pulls", {"model": "default", "surprise": 1}, 400, "bad_request"),
        ("POST", "llamalab/pulls", {"model": "no-such-model"}, 404, "model_not_found"),
        ("GET", "llamalab/pulls/abc123", None, 404, "not_found"),
        ("POST", "llamalab/models/load", {"model": "hf:not-a-hub-reference"}, 404, "model_not_found"),
        ("POST", "llamalab/models/load", b"\xff\xfe", 400, "bad_request"),
        ("PATCH", "llamalab/settings", "[1, 2]", 400, "bad_request"),
    ]
    for method, path, body, status, code in cases:
        got_status, error = await fetch_json(method, path, body)
        assert (got_status, error["type"], error["code"]) == (status, "error", code), (path, body, error)
        assert "\n" not in error["message"]
    status, _ = await fetch_json("GET", "llamalab/models")
    assert status == 200


async def test_schema_route_serves_the_wire_schema(fetch_json):
    from llamalab.extension.messages import CLIENT_TYPES
    from llamalab.extension.schema import wire_schema

    status, schema = await fetch_json("GET", "llamalab/schema")
    assert status == 200 and schema == json.loads(json.dumps(wire_schema()))
    mapping = schema["$defs"]["ClientMessage"]["discriminator"]["mapping"]
    assert sorted(mapping) == sorted(CLIENT_TYPES)
    server_types = set(schema["$defs"]["ServerMessage"]["discriminator"]["mapping"])
    assert {"hello", "token", "done", "ack", "error", "history", "model_changed", "job_progress",
            "conversation_changed"} == server_types
    assert set(schema["$defs"]["TokenMessage"]["required"]) == {"type", "id", "conversation_id", "text"}
