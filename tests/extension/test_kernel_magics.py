"""``%llama`` in a real IPython kernel started by the Jupyter server running llamalab: the
magics use the server's model through its OpenAI-compatible route and load none themselves."""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator


async def execute(client: Any, code: str, timeout: float = 120) -> tuple[dict, list[dict]]:
    outputs: list[dict] = []
    reply = await client.execute_interactive(code, output_hook=outputs.append, timeout=timeout)
    return reply["content"], outputs


def shown(outputs: list[dict]) -> list[dict]:
    """The display bundles (data + metadata) in order, updates included."""
    return [{"data": m["content"]["data"], "metadata": m["content"]["metadata"]}
            for m in outputs if m["msg_type"] in ("display_data", "update_display_data", "execute_result")]


def printed(outputs: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")


@contextlib.asynccontextmanager
async def server_kernel(jp_fetch: Any, serverapp: Any) -> AsyncIterator[tuple[str, Any]]:
    """A kernel started through the server's REST API, as JupyterLab starts one: (its id, a client)."""
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(response.body)["id"]
    client = serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        yield kernel_id, client
    finally:
        client.stop_channels()
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")


async def test_magics_in_a_server_kernel_use_the_servers_model(jp_fetch, jp_serverapp, extension, server_root):
    async with server_kernel(jp_fetch, jp_serverapp) as (_, kernel):
        await _session(kernel, extension, server_root)


async def _session(kernel: Any, extension: Any, server_root: str) -> None:
    reply, outputs = await execute(kernel, "%load_ext llamalab\nanimal = 'llama'")
    assert reply["status"] == "ok", outputs
    reply, outputs = await execute(kernel, "%%llama -n 12 -t 0\nSay one short sentence about a {animal}.")
    assert reply["status"] == "ok", outputs
    bundles = shown(outputs)
    assert len(bundles) >= 2  # an empty display first, then updates as the answer streams
    final = bundles[-1]
    assert final["metadata"]["llamalab"]["finish_reason"] in ("stop", "length")
    assert final["data"]["text/plain"].strip() and final["data"]["text/markdown"] == final["data"]["text/plain"]
    assert extension.manager.loaded is not None  # the server loaded it, for the kernel

    reply, outputs = await execute(kernel, "import os, sys\n"
                                           "print('llama_cpp' in sys.modules, os.environ['LLAMALAB_SERVER_URL'])")
    assert printed(outputs).split() == ["False", server_root]

    reply, outputs = await execute(kernel, "%llama -f code -n 40 -t 0 Write a Python function add(a, b).")
    code = shown(outputs)[-1]["data"]["text/plain"]
    assert [p["text"] for p in reply["payload"] if p["source"] == "set_next_input"] == [code]
    assert shown(outputs)[-1]["data"]["text/markdown"].startswith("```")

    reply, outputs = await execute(kernel, "m = get_ipython().magics_manager.registry['LlamaMagics']\n"
                                           "print(len(m.history))")
    assert printed(outputs).strip() == "4"  # two exchanges remembered across cells
    reply, outputs = await execute(kernel, "%llama reset\nprint(len(m.history))")
    assert printed(outputs).split()[-1] == "0"

    reply, _ = await execute(kernel, "1 / 0")
    assert reply["status"] == "error"
    reply, outputs = await execute(kernel, "%llama explain -n 16 -t 0")
    assert reply["status"] == "ok", outputs
    assert shown(outputs)[-1]["data"]["text/plain"].strip()
    assert "ZeroDivisionError" in kernel_history_prompt(await execute(kernel, "print(m.history[0]['content'])"))

    reply, outputs = await execute(kernel, "%llama models")
    assert "smollm2-135m-instruct:q4_1" in shown(outputs)[-1]["data"]["text/markdown"]
    assert "Jupyter server's model" in shown(outputs)[-1]["data"]["text/markdown"]

    reply, outputs = await execute(kernel, "%llama -m no-such-model hello")
    assert reply["status"] == "error" and reply["ename"] == "UsageError"
    assert "unknown model 'no-such-model'" in reply["evalue"]


def kernel_history_prompt(executed: tuple[dict, list[dict]]) -> str:
    return printed(executed[1])


async def test_a_question_asked_the_natural_way_reaches_the_model(jp_fetch, jp_serverapp, extension):
    """IPython's `obj?` help syntax must not take the `?` that ends a `%llama` question."""
    async with server_kernel(jp_fetch, jp_serverapp) as (_, kernel):
        reply, outputs = await execute(kernel, "%load_ext llamalab\ncity = 'Paris'")
        assert reply["status"] == "ok", outputs
        reply, outputs = await execute(kernel, "%llama -n 8 -t 0 In one sentence, what country is {city} in?")
        assert reply["status"] == "ok", outputs
        assert "not found" not in printed(outputs) and not any(p.get("source") == "page" for p in reply["payload"])
        assert shown(outputs)[-1]["metadata"]["llamalab"]["finish_reason"] in ("stop", "length")
        reply, outputs = await execute(kernel, "m = get_ipython().magics_manager.registry['LlamaMagics']\n"
                                               "print(m.history[-2]['content'])")
        assert printed(outputs).strip() == "In one sentence, what country is Paris in?"
        reply, outputs = await execute(kernel, "%llama?")  # the magic's own help still works
        assert reply["status"] == "ok" and any(p.get("source") == "page" for p in reply["payload"])
