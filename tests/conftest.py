"""Shared fixtures: the real demo model, pulled once into a cache that outlives the run.

``LLAMALAB_TEST_HOME`` (default ``.cache/test-home`` in the repository) holds the store
the demo model is pulled into; later runs find it there. Tests that change a store get
their own empty one (``tmp_store``) so they never touch the shared one.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = Path(os.environ.get("LLAMALAB_TEST_HOME", REPO / ".cache" / "test-home"))


def pytest_configure(config) -> None:
    # A run started in the background by a non-interactive shell inherits SIGINT ignored (POSIX
    # job control), and so would every process the tests start; the Ctrl-C tests need it delivered
    # (a handled signal goes back to its default in an exec'd child).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def demo_store():
    from llamalab import ModelStore

    return ModelStore(TEST_HOME)


@pytest.fixture(scope="session")
def demo_model(demo_store) -> Path:
    """The embedded default model's GGUF file (SmolLM2-135M-Instruct Q4_1), pulled once."""
    from llamalab import pull

    return pull("default", store=demo_store).file


@pytest.fixture(scope="session")
def engine(demo_model):
    """One LocalEngine on the demo model, shared by the tests that only read from it."""
    from llamalab import LocalEngine

    eng = LocalEngine(demo_model, n_ctx=2048, name="smollm2-test")
    yield eng
    eng.close()


@pytest.fixture()
def tmp_store(tmp_path, monkeypatch):
    """An empty store, also made the default for code that builds its own ModelStore()."""
    from llamalab import ModelStore

    home = tmp_path / "home"
    monkeypatch.setenv("LLAMALAB_HOME", str(home))
    return ModelStore(home)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def cli_env(tmp_path):
    """Environment for running the `llamalab` command in a subprocess with a private store."""
    env = dict(os.environ)
    env["LLAMALAB_HOME"] = str(tmp_path / "cli-home")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
