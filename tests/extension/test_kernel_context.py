"""``KernelContextReader`` against real kernels started through the Jupyter server: the names a
notebook defined, read silently (no history, no execution count), and nothing read (at once)
from a busy, unknown or shut-down kernel."""

from __future__ import annotations

import asyncio
from typing import Any

from llamalab.extension.kernel_context import KernelContextReader, reader_for
from llamalab.extension.magics import parse_line
from tests.extension.test_kernel_magics import execute, printed, server_kernel
from tests.fixtures.waiting import DEADLINE_S, until


async def idle(serverapp: Any, kernel_id: str) -> None:
    kernel = serverapp.kernel_manager.get_kernel(kernel_id)

    async def check() -> bool:
        return kernel.execution_state == "idle"

    await until(check, f"kernel {kernel_id} to be idle")


async def read_all(reader: KernelContextReader, kernel_id: str, count: int) -> list[dict]:
    """The entries once the read has finished (the first read may take longer than ``wait_s``)."""
    return await reader.entries(kernel_id, count, wait_s=DEADLINE_S)


async def test_the_reader_sees_a_dataframes_columns_and_leaves_the_history_alone(jp_fetch, jp_serverapp, extension):
    reader = KernelContextReader(jp_serverapp.kernel_manager, jp_serverapp.log)
    async with server_kernel(jp_fetch, jp_serverapp) as (kernel_id, kernel):
        reply, outputs = await execute(kernel, 'import pandas as pd\ndf = pd.DataFrame({"price": [1.0], "qty": [2]})\n'
                                               "def total(items, tax=0.2):\n    return sum(items) * (1 + tax)\n"
                                               "city = 'Paris'")
        assert reply["status"] == "ok", outputs
        count = reply["execution_count"]
        reply, outputs = await execute(kernel, "print(len(In))")
        history_before = int(printed(outputs))
        await idle(jp_serverapp, kernel_id)

        entries = await read_all(reader, kernel_id, count)
        by_name = {e["name"]: e for e in entries}
        assert by_name["df"]["columns"] == ["price", "qty"]
        assert "price (float64)" in by_name["df"]["text"] and "qty (int64)" in by_name["df"]["text"]
        assert by_name["total"]["text"] == "def total(items, tax=0.2)"
        assert by_name["city"]["text"] == "city: str = 'Paris'"
        assert "pd" not in by_name and "In" not in by_name  # modules and IPython's own names are left out

        assert await reader.entries(kernel_id, count, wait_s=0) == entries  # cached for this count

        await idle(jp_serverapp, kernel_id)
        reply, outputs = await execute(kernel, "print(len(In))")
        assert int(printed(outputs)) == history_before + 1  # only this cell: the read added nothing
        assert reply["execution_count"] == count + 2
        reply, outputs = await execute(kernel, "print(sorted(k for k in globals() if 'llamalab' in k or k == '_run'))")
        assert printed(outputs).strip() == "[]"  # and defined nothing in the user's namespace

        await idle(jp_serverapp, kernel_id)
        reply, _ = await execute(kernel, "qty_total = 3")
        await idle(jp_serverapp, kernel_id)  # as the server sees it (its own iopub stream)
        fresh = await read_all(reader, kernel_id, reply["execution_count"])  # a new count reads again
        assert "qty_total" in {e["name"] for e in fresh}
        block = await reader.block(kernel_id, reply["execution_count"], near='df["')
        assert block.splitlines()[1].startswith("# df: DataFrame, 1 row; columns: price (float64), qty (int64)")


async def test_a_busy_kernel_answers_at_once_with_what_was_read_before(jp_fetch, jp_serverapp, extension,
                                                                        tmp_path):
    reader = KernelContextReader(jp_serverapp.kernel_manager, jp_serverapp.log)
    sleeping = tmp_path / "sleeping"
    async with server_kernel(jp_fetch, jp_serverapp) as (kernel_id, kernel):
        reply, _ = await execute(kernel, "x = 1")
        await idle(jp_serverapp, kernel_id)
        before = await read_all(reader, kernel_id, reply["execution_count"])
        assert [e["name"] for e in before] == ["x"]

        # not awaited: the kernel stays busy; the marker says the sleep itself has begun (a busy
        # state seen earlier may be the read's own request winding down)
        kernel.execute(f"import pathlib, time; pathlib.Path({str(sleeping)!r}).touch(); time.sleep(30)")
        manager = jp_serverapp.kernel_manager.get_kernel(kernel_id)

        async def busy() -> bool:
            return sleeping.exists() and manager.execution_state == "busy"

        await until(busy, "the kernel to be busy sleeping")
        # A long wait_s: the answer must not wait for the kernel, and no read may start.
        entries = await asyncio.wait_for(reader.entries(kernel_id, reply["execution_count"] + 1, wait_s=DEADLINE_S),
                                         timeout=DEADLINE_S / 2)
        assert entries == before and not reader._reads
        other = KernelContextReader(jp_serverapp.kernel_manager, jp_serverapp.log)  # knows nothing yet
        assert await asyncio.wait_for(other.entries(kernel_id, 1, wait_s=DEADLINE_S), timeout=DEADLINE_S / 2) == []
        await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="")


async def test_unknown_and_shut_down_kernels_give_nothing(jp_fetch, jp_serverapp, extension):
    reader = KernelContextReader(jp_serverapp.kernel_manager, jp_serverapp.log)
    assert await reader.entries("no-such-kernel", 1) == []
    async with server_kernel(jp_fetch, jp_serverapp) as (kernel_id, kernel):
        reply, _ = await execute(kernel, "pass")  # the server knows the kernel's state after a first execution
        await idle(jp_serverapp, kernel_id)
        assert await read_all(reader, kernel_id, reply["execution_count"]) == []  # no user names yet
        reply, _ = await execute(kernel, "y = 2")
        await idle(jp_serverapp, kernel_id)
        assert [e["name"] for e in await read_all(reader, kernel_id, reply["execution_count"])] == ["y"]
    assert kernel_id not in jp_serverapp.kernel_manager  # shut down
    assert await reader.entries(kernel_id, 2, wait_s=DEADLINE_S) == []
    assert kernel_id not in reader._cache  # forgotten


async def test_a_chat_with_the_kernel_context_gets_its_names_in_the_system_prompt(jp_fetch, jp_serverapp, extension,
                                                                                  open_chat, monkeypatch):
    sent: list[list[dict]] = []
    chat = extension.manager.chat

    async def spy(messages: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append([dict(m) for m in messages])
        return await chat(messages, *args, **kwargs)

    monkeypatch.setattr(extension.manager, "chat", spy)
    async with server_kernel(jp_fetch, jp_serverapp) as (kernel_id, kernel):
        reply, _ = await execute(kernel, 'import pandas as pd\ndf = pd.DataFrame({"price": [1.0], "qty": [2]})\n'
                                         "city = 'Paris'")
        count = reply["execution_count"]
        await idle(jp_serverapp, kernel_id)
        # The server's reader (the chat's) reads the kernel once, so the chat finds the names cached.
        reader = reader_for(jp_serverapp.web_app.settings, jp_serverapp.kernel_manager)
        await read_all(reader, kernel_id, count)

        socket = await open_chat()
        await socket.send({"type": "chat", "id": "k1", "conversation_id": "nb", "content": "What columns has df?",
                           "system": "Be brief.", "kernel": {"id": kernel_id, "execution_count": count},
                           "params": {"temperature": 0, "max_tokens": 4}})
        assert (await socket.reply_to("k1"))["type"] == "done"
        system = sent[-1][0]
        assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n# Variables in the kernel:\n")
        assert system["content"].splitlines()[3] == "# df: DataFrame, 1 row; columns: price (float64), qty (int64)"
        assert "# city: str = 'Paris'" in system["content"]

        await socket.send({"type": "chat", "id": "k2", "conversation_id": "nb", "content": "Thanks.",
                           "params": {"temperature": 0, "max_tokens": 4}})
        assert (await socket.reply_to("k2"))["type"] == "done"
        assert sent[-1][0] == {"role": "system", "content": "Be brief."}  # only the turn that asked for it
        assert [m["content"] for m in sent[-1] if m["role"] == "user"] == ["What columns has df?", "Thanks."]

        await socket.send({"type": "chat", "id": "k3", "conversation_id": "other", "content": "Hi",
                           "kernel": {"id": "no-such-kernel"}, "params": {"temperature": 0, "max_tokens": 4}})
        assert (await socket.reply_to("k3"))["type"] == "done"  # an unknown kernel adds nothing, fails nothing
        assert not any(m["role"] == "system" and "Variables" in m["content"] for m in sent[-1])


async def test_llama_magic_with_kernel_puts_the_kernels_names_in_the_system_prompt(jp_fetch, jp_serverapp, extension,
                                                                                   monkeypatch):
    sent: list[list[dict]] = []
    chat = extension.manager.chat

    async def spy(messages: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append([dict(m) for m in messages])
        return await chat(messages, *args, **kwargs)

    monkeypatch.setattr(extension.manager, "chat", spy)  # the kernel's magics reach the server's model
    async with server_kernel(jp_fetch, jp_serverapp) as (kernel_id, kernel):
        reply, outputs = await execute(kernel, '%load_ext llamalab\nimport pandas as pd\n'
                                               'df = pd.DataFrame({"price": [1.0], "qty": [2]})\ncity = "Paris"')
        assert reply["status"] == "ok", outputs
        reply, outputs = await execute(kernel, "%%llama --kernel -s 'Be brief.' -n 4 -t 0\nWhich columns has df?")
        assert reply["status"] == "ok", outputs
        system, question = sent[-1][0], sent[-1][-1]
        assert system["role"] == "system" and question["content"] == "Which columns has df?"
        assert system["content"].splitlines()[:3] == [
            "Be brief.", "", "# Variables in the kernel:"]
        assert system["content"].splitlines()[3] == "# df: DataFrame, 1 row; columns: price (float64), qty (int64)"
        assert "# city: str = 'Paris'" in system["content"]

        reply, outputs = await execute(kernel, "%llama -n 4 -t 0 Which columns has df?")  # without -k: no names
        assert reply["status"] == "ok", outputs
        assert not any("Variables in the kernel" in m["content"] for m in sent[-1])
        reply, outputs = await execute(kernel, "%llama help")
        assert "-k/--kernel" in printed(outputs)


def test_the_kernel_option_parses_short_and_long():
    assert parse_line("-k -n 5 What is df?").kernel and parse_line("--kernel hi").prompt == "hi"
    assert not parse_line("hi").kernel
    assert parse_line("explain -k").kernel  # a command takes it too


class FakeKernel:
    """A kernel manager's kernel as the reader sees it: language, state, liveness; reading it fails the test."""

    def __init__(self, language: str, state: str = "idle", alive: bool = True) -> None:
        self.kernel_spec = type("Spec", (), {"language": language})()
        self.execution_state = state
        self.alive = alive

    async def is_alive(self) -> bool:
        return self.alive

    def client(self, **kwargs: Any) -> Any:
        raise AssertionError("this kernel must not be read")


class FakeKernels(dict):
    def get_kernel(self, kernel_id: str) -> FakeKernel:
        return self[kernel_id]


async def test_non_python_dead_and_starting_kernels_are_not_read():
    kernels = FakeKernels(r=FakeKernel("R"), dead=FakeKernel("python", alive=False),
                          starting=FakeKernel("python", state="starting"), gone=FakeKernel("python", state="dead"))
    reader = KernelContextReader(kernels)
    for kernel_id in kernels:
        assert await reader.entries(kernel_id, 1) == [], kernel_id
    assert not reader._reads and not reader._cache


async def test_ghost_text_sees_the_kernels_dataframe_columns(jp_fetch, jp_serverapp, extension, fetch_json):
    """``df["`` in a cell after one that defined a DataFrame: the prompt carries its columns (the
    demo model's choice is its own; the prompt is what llamalab controls)."""
    async with server_kernel(jp_fetch, jp_serverapp) as (kernel_id, kernel):
        source = 'import pandas as pd\ndf = pd.DataFrame({"price": [1.0, 2.5], "qty": [2, 3]})'
        reply, outputs = await execute(kernel, source)
        assert reply["status"] == "ok", outputs
        await idle(jp_serverapp, kernel_id)
        body = {"cells": [{"id": "a", "source": source}, {"id": "b", "source": ""}], "cell_index": 1,
                "prefix": 'total = df["', "language": "python", "path": "prices.ipynb", "explain": True,
                "kernel": {"id": kernel_id, "execution_count": reply["execution_count"]}, "max_tokens": 4}
        reader = reader_for(jp_serverapp.web_app.settings, jp_serverapp.kernel_manager)  # the handlers' reader
        await reader.entries(kernel_id, reply["execution_count"], wait_s=DEADLINE_S)  # the first read may be slow
        status, answer = await fetch_json("POST", "llamalab/complete", body)
        assert status == 200, answer
        prompt = answer["prompt"]
        block = prompt[:prompt.index("# %%")]
        assert "df: DataFrame" in block and "price" in block and "qty" in block, prompt
        assert prompt.rstrip().endswith('total = df["') or prompt.rstrip().endswith("total = df[")
        # a kernel the server does not know: the suggestion goes on without names
        status, answer = await fetch_json("POST", "llamalab/complete", {**body, "kernel": {"id": "no-such-kernel"}})
        assert status == 200 and "Variables" not in answer["prompt"]
