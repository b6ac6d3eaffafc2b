"""``%llama`` without a llamalab server: the model is loaded in the kernel's own process.
Runs in an in-process IPython shell, with the parsing helpers tested on their own."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from llamalab.extension.kernel import kernel_backend
from llamalab.extension.magics import extract_code, interpolate, parse_line
from tests.conftest import TEST_HOME


def test_parse_line_reads_options_then_the_prompt_verbatim():
    call = parse_line('-m mymodel -s "You are terse." -t 0.2 -n 64 -f json What is "{x}"?')
    assert (call.model, call.system, call.temperature, call.max_tokens, call.format) == \
        ("mymodel", "You are terse.", 0.2, 64, "json")
    assert call.command is None and call.prompt == 'What is "{x}"?'
    assert parse_line("--no-history hi").no_history
    assert parse_line("-- -1 is negative?").prompt == "-1 is negative?"


def test_parse_line_commands_and_their_options():
    assert parse_line("reset").command == "reset"
    assert (parse_line("explain -n 20").command, parse_line("explain -n 20").max_tokens) == ("explain", 20)
    pull = parse_line("pull llama-2-7b-chat --accept-license")
    assert (pull.command, pull.args, pull.accept_license) == ("pull", ["llama-2-7b-chat"], True)
    assert parse_line("models are cool").command is None  # a prompt that starts like a command
    for bad in ("-x hi", "-f yaml hi", "-t warm hi", "-n"):
        with pytest.raises(UsageError):
            parse_line(bad)


def test_interpolate_and_extract_code():
    assert interpolate("{a} and {b} and {{a}}", {"a": 1}) == "1 and {b} and {{a}}"
    assert extract_code("Here:\n```py\nx = 1\n```\nDone") == ("py", "x = 1")
    assert extract_code("x = 2") == ("python", "x = 2")
    assert extract_code("```\nunfinished") == ("python", "unfinished")


@pytest.fixture
def shell(demo_model, monkeypatch):
    monkeypatch.delenv("LLAMALAB_SERVER_URL", raising=False)
    monkeypatch.setenv("LLAMALAB_HOME", str(TEST_HOME))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llamalab")
    ip.run_line_magic("config", "LlamaMagics.n_ctx = 1024")
    ip.run_line_magic("config", "LlamaMagics.update_interval = 0")
    yield ip
    kernel_backend().close()
    InteractiveShell.clear_instance()


def run(ip: InteractiveShell, code: str) -> capture_output:
    with capture_output() as captured:
        ip.run_cell(code)
    return captured


def magics(ip: InteractiveShell):
    return ip.magics_manager.registry["LlamaMagics"]


def test_local_magics_stream_remember_and_format(shell):
    shell.user_ns["animal"] = "llama"
    out = run(shell, "%llama -n 12 -t 0 Say one sentence about a {animal}.")
    bundles = [o.data for o in out.outputs]
    assert len(bundles) >= 3 and bundles[-1]["text/plain"].strip()  # streamed: several updates
    backend = kernel_backend()
    assert backend._local is not None and backend._remote == {}  # loaded here, no server involved
    history = magics(shell).history
    assert history[0]["content"] == "Say one sentence about a llama." and len(history) == 2

    run(shell, "%llama --no-history -n 4 -t 0 Hi")
    assert len(magics(shell).history) == 2
    run(shell, "%%llama -f code -n 40 -t 0\nWrite a Python function add(a, b).")
    assert shell.rl_next_input == extract_code(magics(shell).last_answer)[1]
    out = run(shell, '%llama -f json -n 24 -t 0 Reply with only this JSON: {"a": 1}')
    assert "application/json" in out.outputs[-1].data or "not valid JSON" in out.outputs[-1].data["text/plain"]
    run(shell, "%llama reset")
    assert magics(shell).history == []


def test_local_explain_models_pull_and_errors(shell):
    run(shell, "1 / 0")
    out = run(shell, "%llama explain -n 12 -t 0")
    assert out.outputs and "ZeroDivisionError" in magics(shell).history[0]["content"]
    out = run(shell, "%llama models")
    text = out.outputs[-1].data["text/markdown"]
    assert "smollm2-135m-instruct:q4_1" in text and "loaded in this kernel" in text
    out = run(shell, "%llama pull default")  # already in the store: no download, a finished bar
    assert "application/vnd.jupyter.widget-view+json" in out.outputs[0].data
    out = run(shell, "%llama -m no-such-model hi")
    assert "UsageError" in out.stderr and "unknown model 'no-such-model'" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    out = run(shell, "%llama")
    assert "needs a prompt" in out.stderr
    out = run(shell, "%llama help")
    assert "%llama reset" in out.stdout
    out = run(shell, "%llama chat")
    assert "application/vnd.jupyter.widget-view+json" in out.outputs[-1].data


def test_pull_shows_progress_and_fills_the_store(shell, tmp_path, monkeypatch):
    from llamalab import ModelStore
    from llamalab.extension import magics as magics_module
    from tests.fixtures.file_server import FileServer
    from tests.fixtures.tiny_llama import write_gguf_with_architecture

    monkeypatch.setenv("LLAMALAB_HOME", str(tmp_path / "store"))
    views, updates = [], []

    class Recorded(magics_module._ProgressView):
        def __init__(self, name):
            super().__init__(name)
            views.append(self)

        def __call__(self, progress):
            updates.append(progress)
            super().__call__(progress)

    monkeypatch.setattr(magics_module, "_ProgressView", Recorded)
    gguf = write_gguf_with_architecture(tmp_path / "src.gguf", "llama", n_rows=3000).read_bytes()
    with FileServer({"tiny.gguf": gguf}) as files:
        out = run(shell, f"%llama pull {files.url}/tiny.gguf")
    assert out.stderr == ""
    assert "application/vnd.jupyter.widget-view+json" in out.outputs[0].data
    [view] = views
    assert updates and updates[-1].done == updates[-1].total  # the core pull's progress reached the bar
    assert view._bar.value == 1.0 and view._bar.bar_style == "success" and view._label.value.startswith("tiny:")
    assert ModelStore(tmp_path / "store").find("tiny").size_bytes == len(gguf)


def test_a_trailing_question_mark_belongs_to_the_prompt():
    from llamalab.extension.magics import keep_question_marks

    assert keep_question_marks(["%llama In one sentence, what country is {city} in?\n"]) == [
        "get_ipython().run_line_magic('llama', 'In one sentence, what country is {city} in?')\n"]
    assert keep_question_marks(["  %llama -t 0 Why?? \n"]) == ["  get_ipython().run_line_magic('llama', '-t 0 Why??')\n"]
    untouched = ["%llama?\n", "%%llama -t 0\n", "x = 1?\n", "%llama hello\n", "print('%llama a?')\n"]
    assert keep_question_marks(untouched) == untouched
