"""The `llamalab` command as a person runs it: a real subprocess, a private store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

COMMAND = [sys.executable, "-m", "llamalab"]


def run(args, env, stdin=None, timeout=180):
    return subprocess.run(COMMAND + args, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, fragment):
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["models"], ["models", "pull"], ["models", "list"], ["models", "add"],
                                  ["models", "rm"], ["models", "info"], ["models", "catalog"], ["generate"],
                                  ["chat"], ["doctor"], ["convert"], ["quantize"], ["download"], ["lsp"]])
def test_help_everywhere(cli_env, args):
    result = run(args + ["--help"], cli_env)
    assert result.returncode == 0 and result.stdout.startswith("Usage: llamalab")
    assert len(result.stdout.splitlines()) > 4


def test_version_and_unknown_command(cli_env):
    assert run(["--version"], cli_env).stdout.strip() == "llamalab, version 0.1.0"
    bad = run(["frobnicate"], cli_env)
    assert bad.returncode == 2 and "No such command 'frobnicate'" in bad.stderr


def test_models_add_list_info_rm(cli_env, demo_model, tmp_path):
    assert "No models yet" in run(["models", "list"], cli_env).stdout
    copy = tmp_path / "My-Model.Q4_1.gguf"
    shutil.copy(demo_model, copy)
    added = run(["models", "add", str(copy)], cli_env)
    assert added.returncode == 0 and "added my-model.q4_1: llama, Q4_1" in added.stdout
    listing = run(["models", "list"], cli_env).stdout
    assert "my-model.q4_1" in listing and "Q4_1" in listing and "8192" in listing
    info = run(["models", "info", "my-model.q4_1"], cli_env).stdout
    assert "sha256" in info and "chat_template   yes" in info
    removed = run(["models", "rm", "my-model.q4_1"], cli_env)
    assert removed.returncode == 0 and "was kept" in removed.stdout and copy.exists()


def test_user_mistakes_are_one_line_errors(cli_env, tmp_path):
    assert_one_line_error(run(["models", "pull", "llama-9"], cli_env), "unknown model 'llama-9'")
    assert_one_line_error(run(["models", "info", "nothing"], cli_env), "no model named 'nothing'")
    assert_one_line_error(run(["models", "rm", "nothing"], cli_env), "no model named 'nothing'")
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello")
    assert_one_line_error(run(["models", "add", str(not_gguf)], cli_env), "not a GGUF file")
    assert_one_line_error(run(["generate", "hi", "-m", str(tmp_path / "none.gguf")], cli_env), "does not exist")
    assert_one_line_error(run(["generate", "hi", "-m", str(not_gguf)], cli_env), "not a GGUF file")


def test_unreachable_hub_is_explained(cli_env):
    env = dict(cli_env, HF_HUB_OFFLINE="1")
    assert_one_line_error(run(["models", "pull", "llama-2-7b-chat:q4_k_m"], env), "--accept-license")
    assert_one_line_error(run(["models", "pull", "llama-2-7b-chat:q4_k_m", "--accept-license"], env),
                          "cannot reach the Hugging Face Hub")


def test_bad_gpu_layers_and_unreachable_remote(cli_env, demo_model):
    from tests.conftest import free_port

    assert_one_line_error(run(["generate", "hi", "-m", str(demo_model), "--gpu-layers", "lots"], cli_env),
                          "lots")
    assert_one_line_error(run(["generate", "hi", "--remote", f"http://127.0.0.1:{free_port()}"], cli_env),
                          "cannot reach the model server")


def test_generate_pulls_default_on_first_use_and_streams(cli_env):
    result = run(["generate", "The capital of France is", "-n", "12", "-t", "0"], cli_env)
    assert result.returncode == 0, result.stderr
    assert "Pulling the default model smollm2-135m-instruct:q4_1" in result.stderr
    assert len(result.stdout.strip()) > 0
    again = run(["generate", "The capital of France is", "-n", "12", "-t", "0"], cli_env)
    assert "Pulling" not in again.stderr and again.stdout == result.stdout  # greedy: same text


def test_chat_repl_keeps_history_and_commands(cli_env, demo_model):
    script = "My name is Ada. Say hello.\n/system Answer in one word.\n/reset\nWhat is 2+2?\n/exit\n"
    result = run(["chat", "-m", str(demo_model), "-t", "0", "-n", "24"], cli_env, stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("assistant> ") == 2
    assert "(system prompt set)" in result.stdout and "(conversation cleared)" in result.stdout


def test_doctor_reports_build_and_models(cli_env, demo_model):
    run(["models", "add", str(demo_model), "--name", "smol"], cli_env)
    result = run(["doctor"], cli_env)
    assert result.returncode == 0
    assert "llama-cpp-python 0.3" in result.stdout
    assert "smol" in result.stdout and "needs" in result.stdout
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        assert "GPU offload: no" in result.stdout and "-DGGML_CUDA=on" in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child needs POSIX")
def test_ctrl_c_stops_the_answer_not_the_chat(cli_env, demo_model):
    proc = subprocess.Popen(COMMAND + ["chat", "-m", str(demo_model), "-n", "2000", "--ctx", "4096"],
                            env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = bytearray()

    def reader():
        while byte := proc.stdout.read(1):
            seen.extend(byte)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        proc.stdin.write(b"Write a very long story about a llama who learns to code, with ten chapters.\n")
        proc.stdin.flush()
        deadline = time.time() + 120
        while time.time() < deadline and len(seen.partition(b"assistant> ")[2]) < 20:
            time.sleep(0.05)
        assert b"assistant> " in seen, bytes(seen)
        proc.send_signal(signal.SIGINT)
        deadline = time.time() + 30
        while time.time() < deadline and b"[stopped]" not in seen:
            time.sleep(0.05)
        assert b"[stopped]" in seen, bytes(seen)
        assert proc.poll() is None  # still running: only the answer stopped
        proc.stdin.write(b"/exit\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
