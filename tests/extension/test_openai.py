"""The OpenAI-compatible surface: core's RemoteEngine works against it, streamed (SSE) and
whole answers agree, errors have OpenAI's shape, and a client that leaves frees the model."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import HTTPClientError

from llamalab import GenerationParams, RemoteEngine, ServerResponseError


async def test_remote_engine_uses_the_servers_model(server_root, token, extension):
    def use() -> dict:
        with RemoteEngine(server_root, api_key=token) as remote:
            greedy = GenerationParams(max_tokens=10, temperature=0)
            chat = remote.chat([{"role": "user", "content": "Name a colour."}], greedy)
            pieces = list(chat)
            completion = remote.complete("The capital of France is", greedy).collect()
            return {"model": remote.model_name(), "pieces": pieces, "chat": chat.result, "completion": completion,
                    "tokens": remote.tokenize("hello world"), "bos": remote.tokenize("hi", add_bos=True),
                    "described": remote.describe()}

    got = await asyncio.to_thread(use)
    assert got["model"] == "smollm2-135m-instruct:q4_1"
    assert len(got["pieces"]) > 1 and "".join(got["pieces"]) == got["chat"].text
    assert got["chat"].finish_reason in ("stop", "length") and got["chat"].prompt_tokens > 0
    assert got["completion"].text and got["completion"].completion_tokens <= 10
    local = extension.manager._engine  # the server's own engine: same tokenizer
    assert got["tokens"] == local.tokenize("hello world")
    assert got["bos"] == local.tokenize("hi", add_bos=True) != local.tokenize("hi")
    assert got["described"].backend == "remote" and got["described"].context_length == 1024


async def test_streamed_and_whole_answers_agree(jp_fetch):
    request = {"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": [{"type": "text", "text": "Name a fruit."}]}],
               "max_tokens": 12, "temperature": 0, "user": "ignored-field"}
    whole = json.loads((await jp_fetch("llamalab", "v1", "chat", "completions", method="POST",
                                       body=json.dumps(request))).body)
    assert whole["object"] == "chat.completion" and whole["model"] == "smollm2-135m-instruct:q4_1"
    choice = whole["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + whole["usage"]["completion_tokens"]

    streamed = await jp_fetch("llamalab", "v1", "chat", "completions", method="POST",
                              body=json.dumps({**request, "stream": True, "stream_options": {"include_usage": True}}))
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    lines = [line[len("data: "):] for line in streamed.body.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({e["id"] for e in events}) == 1 and all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == choice["message"]["content"]
    usage = dict(events[-1]["usage"])
    details = usage.pop("prompt_tokens_details")
    assert usage == {k: v for k, v in whole["usage"].items() if k != "prompt_tokens_details"}
    assert events[-1]["choices"] == []
    # The same prompt again: its slot held all of it, only the last token was evaluated again.
    assert details == {"cached_tokens": usage["prompt_tokens"] - 1}

    completion = json.loads((await jp_fetch("llamalab", "v1", "completions", method="POST", body=json.dumps(
        {"prompt": ["Once upon a time"], "max_tokens": 8, "temperature": 0, "stop": "\n"}))).body)
    assert completion["object"] == "text_completion" and completion["choices"][0]["text"]
    assert "\n" not in completion["choices"][0]["text"]


async def test_v1_models_lists_the_served_model_first(jp_fetch, fetch_json):
    listed = json.loads((await jp_fetch("llamalab", "v1", "models")).body)
    assert listed["object"] == "list" and listed["data"][0]["id"] == "smollm2-135m-instruct:q4_1"
    await fetch_json("POST", "llamalab/models/load", {})
    listed = json.loads((await jp_fetch("llamalab", "v1", "models")).body)
    assert listed["data"][0]["meta"]["n_ctx"] == 1024


@pytest.mark.parametrize(("route", "body", "status", "code"), [
    ("completions", "{broken", 400, "bad_request"),
    ("completions", {"prompt": "hi", "n": 2}, 400, "bad_request"),
    ("completions", {"prompt": "hi", "suffix": "def f():"}, 400, "bad_request"),
    ("completions", {"prompt": ["a", "b"]}, 400, "bad_request"),
    ("completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model_not_found"),
    ("completions", {"prompt": "x" * 250_000}, 413, "prompt_too_long"),
    ("chat/completions", {"messages": []}, 400, "bad_request"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "bad_request"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "bad_request"),
])
async def test_errors_have_openais_shape(jp_fetch, route, body, status, code):
    raw = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch("llamalab", "v1", *route.split("/"), method="POST", body=raw)
    assert failed.value.code == status
    error = json.loads(failed.value.response.body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


async def test_remote_engine_reports_server_errors_as_one_line(server_root, token):
    def ask_unknown_model() -> str:
        with RemoteEngine(server_root, api_key=token, model="gpt-4") as remote:
            with pytest.raises(ServerResponseError) as failed:
                remote.chat([{"role": "user", "content": "hi"}]).collect()
            return str(failed.value)

    message = await asyncio.to_thread(ask_unknown_model)
    assert "404" in message and "unknown model 'gpt-4'" in message and "\n" not in message


async def test_a_client_that_leaves_cancels_its_generation(server_root, token, extension):
    def start_and_leave() -> str:
        with RemoteEngine(server_root, api_key=token) as remote:
            stream = remote.chat([{"role": "user", "content": "Write a long story about llamas."}],
                                 GenerationParams(max_tokens=400, temperature=0))
            first = next(stream)
            stream.cancel()  # closes the HTTP stream, as a browser tab or kernel going away would
            return first

    assert await asyncio.to_thread(start_and_leave)
    deadline = time.monotonic() + 10
    while extension.manager.active_count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert extension.manager.active_count == 0


async def test_a_full_queue_answers_busy(jp_fetch, extension):
    await extension.manager.update(max_queued=1)
    body = json.dumps({"messages": [{"role": "user", "content": "Write a long story about llamas."}],
                       "max_tokens": 400, "temperature": 0, "stream": True})
    first = asyncio.ensure_future(jp_fetch("llamalab", "v1", "chat", "completions", method="POST", body=body))
    while extension.manager.active_count == 0:
        await asyncio.sleep(0.01)
    with pytest.raises(HTTPClientError) as busy:
        await jp_fetch("llamalab", "v1", "completions", method="POST", body=json.dumps({"prompt": "hi"}))
    assert busy.value.code == 429 and json.loads(busy.value.response.body)["error"]["code"] == "busy"
    extension.manager.cancel_all()
    await first
