"""Browser fixtures: a real ``jupyter lab`` with llamalab and the demo model, driven by Debian's
Chromium through Playwright (sync API).

- ``lab_server`` (module scope): ``jupyter lab`` from this virtual environment in a subprocess, on
  a free loopback port with a random token, in a temporary root with a test notebook. Its
  user-level Jupyter folders (config, data, runtime, IPython, settings, workspaces) are private
  temporary folders, so a developer's own settings cannot leak in; the environment's
  ``share/jupyter`` (where the built labextension is linked, and the ``python3`` kernel) stays.
  Its model store is a private copy of the test home's registry that points at the shared demo
  model (not owned, so nothing here can delete it); models pulled by a test land in that copy.
- ``browser`` (session scope): Chromium from ``$LLAMALAB_CHROMIUM`` or ``/usr/bin/chromium``.
  Playwright never downloads a browser here.
- ``lab`` (function scope): a fresh browser context on ``/lab`` with JupyterLab ready; console
  errors and uncaught page errors are recorded, and a test fails when llamalab's code logs one.
- ``LLAMALAB_UI_LABEXTENSION=path/to/dist`` runs the tests on another build of the front end than
  the one linked into the environment (it goes into the servers' private data folder).
- Screenshots go to ``$LLAMALAB_UI_ARTIFACTS`` (default ``build/ui-artifacts`` in the repository):
  ``lab.shot(name)`` during a test, ``<test>--end.png`` after every test and
  ``<test>--failed.png`` when it failed, next to ``<test>--console.log``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.conftest import REPO, free_port

CHROMIUM = os.environ.get("LLAMALAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("LLAMALAB_UI_ARTIFACTS", REPO / "build" / "ui-artifacts"))
BIN = Path(sys.executable).parent
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
PACKAGE = "@llamalab/labextension"
VIEWPORT = {"width": 1440, "height": 900}

# Plugins of JupyterLab's own that only talk to the outside world or pop up first-run notices.
DISABLED_PLUGINS = {
    "@jupyterlab/apputils-extension:announcements": True,
}

NOTEBOOK = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "first-cell", "metadata": {},
               "outputs": [], "source": ""}],
    "metadata": {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


def _needs_browser() -> Optional[str]:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: scripts/test.sh installs Debian's chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed in this environment (the test extra has it)"
    if not (BIN / "jupyter-lab").exists():
        return "JupyterLab is not installed in this environment (the jupyter extra has it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _needs_browser()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here and item.fspath.basename.endswith("_e2e.py"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# -- the server ---------------------------------------------------------------------------


def write_notebook(path: Path, cells: Optional[list[str]] = None) -> Path:
    notebook = json.loads(json.dumps(NOTEBOOK))
    if cells is not None:
        notebook["cells"] = [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {},
                              "outputs": [], "source": text} for i, text in enumerate(cells)]
    path.write_text(json.dumps(notebook, indent=1))
    return path


def private_store(folder: Path, demo_store: Any) -> Path:
    """A store whose registry lists the shared demo model, not owned (so `rm` keeps the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    registry = json.loads(demo_store.registry_path.read_text())
    for entry in registry["models"].values():
        entry["owned"] = False
    (folder / "registry.json").write_text(json.dumps(registry, indent=2))
    return folder


@dataclass
class LabServer:
    """A running ``jupyter lab``: its URL, token, root folder and log."""

    url: str
    token: str
    root: Path
    home: Path
    process: subprocess.Popen
    log: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/{path.lstrip('/')}", data=data, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_server(process: subprocess.Popen) -> list[Any]:
    """SIGTERM (JupyterLab shuts its kernels down), then SIGKILL whatever is left of the tree;
    returns the processes of the tree still alive after that (none, normally)."""
    import psutil

    children = _descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    for proc in [*children]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=10)
    return alive


def start_lab(tmp: Path, store: Path, *, extra_args: tuple[str, ...] = (),
              llamalab: Optional[dict[str, Any]] = None, timeout: float = 90.0) -> LabServer:
    root = tmp / "root"
    root.mkdir(parents=True, exist_ok=True)
    write_notebook(root / "test.ipynb")
    private = {name: tmp / name for name in ("config", "data", "runtime", "ipython", "settings", "workspaces", "home")}
    for folder in private.values():
        folder.mkdir(parents=True, exist_ok=True)
    override = os.environ.get("LLAMALAB_UI_LABEXTENSION")
    if override:  # another build of the front end (its dist/ folder), found before the linked one
        target = private["data"] / "labextensions" / PACKAGE
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(Path(override).resolve(), target_is_directory=True)
        env_extra = {"JUPYTER_PREFER_ENV_PATH": "0"}  # else the environment's share/jupyter comes first
    else:
        env_extra = {}
    labconfig = private["config"] / "labconfig"
    labconfig.mkdir(exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps({"disabledExtensions": DISABLED_PLUGINS}))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "LLAMALAB_SERVER"))}
    env.update({
        "HOME": str(private["home"]),
        "JUPYTER_CONFIG_DIR": str(private["config"]),
        "JUPYTER_DATA_DIR": str(private["data"]),
        "JUPYTER_RUNTIME_DIR": str(private["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(private["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(private["workspaces"]),
        "IPYTHONDIR": str(private["ipython"]),
        "LLAMALAB_HOME": str(store),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the python3 kernelspec runs `python`
        "PYTHONUNBUFFERED": "1",
        **env_extra,
    })
    port, token = free_port(), secrets.token_hex(24)
    settings = {"store_dir": str(store), "n_ctx": 2048, "default_max_tokens": 256, "preload": True}
    settings.update(llamalab or {})
    args = [
        str(BIN / "jupyter-lab"), "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={private['workspaces']}", f"--LabApp.user_settings_dir={private['settings']}",
        "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--ServerApp.terminals_enabled=False",
    ]
    for name, value in settings.items():
        args.append(f"--LlamalabExtension.{name}={json.dumps(value) if not isinstance(value, str) else value}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    args.extend(extra_args)
    log = tmp / "jupyter-lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LabServer(url=f"http://127.0.0.1:{port}", token=token, root=root, home=store,
                       process=process, log=log, env=env)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{server.log_text()[-4000:]}")
        try:
            server.api("api/status")
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                stop_server(process)
                raise RuntimeError(f"jupyter lab did not answer in {timeout:.0f}s:\n{server.log_text()[-4000:]}")
            time.sleep(0.25)
    return server


@pytest.fixture(scope="session")
def ui_store(tmp_path_factory: pytest.TempPathFactory, demo_model: Path, demo_store: Any) -> Path:
    """The servers' model store: the demo model listed, nothing else."""
    return private_store(tmp_path_factory.mktemp("ui-store"), demo_store)


_LISTED = False


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    """``start_lab`` keywords for a module's server (override in a module): ``llamalab`` traitlets,
    ``extra_args``, and ``own_store=True`` for a store of its own (a copy of the shared one)."""
    return {}


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory, ui_store: Path, demo_store: Any,
               lab_options: dict[str, Any]) -> Iterator[LabServer]:
    if _needs_browser():
        pytest.skip(_needs_browser())
    options = dict(lab_options)
    tmp = tmp_path_factory.mktemp("lab")
    store = private_store(tmp / "store", demo_store) if options.pop("own_store", False) else ui_store
    server = start_lab(tmp, store, **options)
    global _LISTED
    if not _LISTED:  # once a session: JupyterLab's own listing, with the servers' environment
        listing = subprocess.run([str(BIN / "jupyter"), "labextension", "list"], env=server.env,
                                 capture_output=True, text=True, timeout=120)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
        if not re.search(rf"{re.escape(PACKAGE)} v[\d.]+ enabled\s+OK", plain):
            stop_server(server.process)
            pytest.fail(f"{PACKAGE} is not an enabled labextension in the servers' environment:\n{plain}")
        _LISTED = True
    try:
        yield server
    finally:
        alive = stop_server(server.process)
        assert not alive, f"processes left behind by jupyter lab: {alive}"


# -- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    reason = _needs_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120]


class Lab:
    """One page on JupyterLab, with helpers for commands, notebooks and screenshots."""

    def __init__(self, page: Any, server: LabServer, test_name: str) -> None:
        self.page = page
        self.server = server
        self.test_name = test_name
        self.console: list[str] = []
        self.errors: list[str] = []  # console errors and uncaught exceptions, as text
        self.shots: list[Path] = []
        self.sent: list[dict[str, Any]] = []  # JSON frames the page sent on llamalab's chat WebSocket
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws: Any) -> None:
        if "/llamalab/chat" in ws.url:
            ws.on("framesent", self._on_frame_sent)

    def _on_frame_sent(self, payload: Any) -> None:
        try:
            self.sent.append(json.loads(payload))
        except (TypeError, ValueError):
            pass

    def chat_requests(self) -> list[dict[str, Any]]:
        """The ``chat`` messages the page sent, oldest first."""
        return [m for m in self.sent if isinstance(m, dict) and m.get("type") == "chat"]

    def _on_console(self, message: Any) -> None:
        line = f"[{message.type}] {message.text}"
        self.console.append(line)
        if message.type == "error":
            self.errors.append(line)

    def _on_page_error(self, error: Any) -> None:
        line = f"[uncaught] {error.name}: {error.message}\n{error.stack or ''}"
        self.console.append(line)
        self.errors.append(line)

    def extension_errors(self) -> list[str]:
        """Errors that llamalab's code logged or threw (its plugin ids, its bundle, its messages)."""
        pattern = re.compile(r"llamalab", re.I)
        return [e for e in self.errors if pattern.search(e)]

    # -- navigation ---------------------------------------------------------------------
    def open(self, path: str = "lab", timeout: float = 60_000) -> None:
        self.page.goto(f"{self.server.url}/{path}?reset&token={self.server.token}")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60_000) -> None:
        self.page.wait_for_selector("#jp-main-dock-panel", state="visible", timeout=timeout)
        self.page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=timeout)
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.started !== undefined",
                                    timeout=timeout)
        self.page.evaluate("() => window.jupyterapp.started")
        self.page.evaluate("() => window.jupyterapp.restored")
        # The file browser lists the root (it always holds test.ipynb) once the first fetch is back.
        self.page.wait_for_selector(".jp-DirListing-item", state="visible", timeout=timeout)
        self.page.wait_for_selector(".jp-Launcher", state="visible", timeout=timeout)  # ?reset opens it

    def command(self, command: str, args: Optional[dict[str, Any]] = None) -> None:
        """Run a JupyterLab command and wait for it; its result stays in the page (widgets don't serialize)."""
        self.page.evaluate("async ([c, a]) => { await window.jupyterapp.commands.execute(c, a); }",
                           [command, args or {}])

    def has_command(self, command: str) -> bool:
        return self.page.evaluate("(c) => window.jupyterapp.commands.hasCommand(c)", command)

    def plugin_activated(self, plugin: str) -> bool:
        return self.page.evaluate("(p) => window.jupyterapp.isPluginActivated(p)", plugin)

    # -- notebooks ----------------------------------------------------------------------
    def new_notebook(self, name: str, cells: Optional[list[str]] = None) -> Any:
        """Write ``name`` with ``cells`` into the server's root, open it and wait for its kernel."""
        write_notebook(self.server.root / name, cells)
        self.command("docmanager:open", {"path": name})
        panel = self.page.locator(f".jp-NotebookPanel:has(.jp-Notebook)").last
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-editor", timeout=30_000)
        self.page.wait_for_function(
            "() => { const w = window.jupyterapp.shell.currentWidget;"
            " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.connectionStatus === 'connected'; }",
            timeout=60_000,
        )
        return panel

    def cell_texts(self) -> list[str]:
        return self.page.evaluate(
            "() => { const w = window.jupyterapp.shell.currentWidget;"
            " return w.content.widgets.map(c => c.model.sharedModel.getSource()); }"
        )

    def notebook_cell_texts(self, path: str) -> list[str]:
        return self.page.evaluate(
            "(p) => { const w = window.jupyterapp.shell.widgets('main');"
            " for (const x of w) { if (x.context && x.context.path === p) return x.content.widgets.map("
            "c => c.model.sharedModel.getSource()); } return null; }", path
        )

    # -- artifacts ----------------------------------------------------------------------
    def shot(self, name: str, locator: Any = None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{_safe(self.test_name)}--{_safe(name)}.png"
        (locator or self.page).screenshot(path=str(path))
        self.shots.append(path)
        return path


@pytest.fixture
def lab(request: pytest.FixtureRequest, browser: Any, lab_server: LabServer) -> Iterator[Lab]:
    """A fresh browser context on JupyterLab, ready; artifacts written after the test."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    lab = Lab(page, lab_server, request.node.name)
    try:
        lab.open()
        override = os.environ.get("LLAMALAB_UI_LABEXTENSION")
        if override:  # make sure the page runs that build
            expected = json.loads((Path(override) / "package.json").read_text())["jupyterlab"]["_build"]["load"]
            loaded = page.evaluate(
                "(name) => JSON.parse(document.getElementById('jupyter-config-data').textContent)"
                ".federated_extensions.filter(e => e.name === name).map(e => e.load)", PACKAGE)
            assert loaded == [expected], f"the page loads {loaded}, not {override}'s {expected}"
        yield lab
    finally:
        failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
                     for when in ("setup", "call"))
        try:
            lab.shot("failed" if failed else "end")
        except Exception as exc:  # a crashed page still gets its console log
            lab.console.append(f"[fixture] no screenshot: {exc}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{_safe(lab.test_name)}--console.log").write_text("\n".join(lab.console) + "\n")
        context.close()
    errors = lab.extension_errors()
    if errors and not failed:
        pytest.fail("llamalab logged errors in the browser console:\n" + "\n".join(errors)[-4000:], pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _clean_artifacts() -> None:
    """Start each run with an empty artifacts folder so stale screenshots never pass for new ones."""
    if ARTIFACTS.is_dir() and ARTIFACTS.resolve() != REPO.resolve():
        for png in ARTIFACTS.glob("*.png"):
            png.unlink()
        for log in ARTIFACTS.glob("*.log"):
            log.unlink()


# -- the chat panel -------------------------------------------------------------------------

ASSISTANT = '#llamalab-chat .llamalab-message[data-role="assistant"]'

# The text of an answer: its Markdown body, without the author line, the notes or the spinner.
# Samples the newest assistant message every 15 ms until it has a finish reason (or the time is
# up): its text length and its data-streaming / data-finish-reason attributes, in order.
ANSWER_TEXT_JS = """
(m) => { const body = m && m.querySelector('.llamalab-message-body'); return body ? body.textContent : ''; }
"""
WATCH_ANSWER_JS = """
async ([selector, count, timeoutMs]) => {
  const answerText = """ + ANSWER_TEXT_JS.strip() + """;
  const samples = [];
  const start = performance.now();
  while (performance.now() - start < timeoutMs) {
    const all = document.querySelectorAll(selector);
    const m = all.length > count ? all[all.length - 1] : null;
    if (m) {
      const s = {t: Math.round(performance.now() - start), len: answerText(m).length,
                 streaming: m.getAttribute('data-streaming'), finish: m.getAttribute('data-finish-reason')};
      const last = samples[samples.length - 1];
      if (!last || last.len !== s.len || last.streaming !== s.streaming || last.finish !== s.finish) samples.push(s);
      if (s.finish) break;
    }
    await new Promise(r => setTimeout(r, 15));
  }
  return samples;
}
"""


class Chat:
    """The chat side panel of one page, through its stable selectors."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        page = lab.page
        self.panel = page.locator("#llamalab-chat")
        self.input = page.get_by_test_id("llamalab-chat-input")
        self.send_button = page.get_by_test_id("llamalab-chat-send")
        self.stop_button = page.get_by_test_id("llamalab-chat-stop")
        self.messages = page.get_by_test_id("llamalab-chat-messages")
        self.answers = page.locator(ASSISTANT)

    def open(self) -> "Chat":
        self.lab.command("llamalab:open-chat")
        self.panel.wait_for(state="visible")
        self.input.wait_for(state="visible")
        return self

    def answer_count(self) -> int:
        return self.answers.count()

    def send(self, text: str) -> int:
        """Type ``text`` and click send; returns how many answers there were before."""
        before = self.answer_count()
        self.input.fill(text)
        self.send_button.click()
        return before

    def watch(self, before: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Samples of the answer after the first ``before`` ones until it finished."""
        return self.lab.page.evaluate(WATCH_ANSWER_JS, [ASSISTANT, before, int(timeout * 1000)])

    def wait_streaming(self, index: int, min_chars: int = 40, timeout: float = 60.0) -> None:
        """Until answer ``index`` is streaming and shows at least ``min_chars`` of text."""
        self.lab.page.wait_for_function(
            "([sel, i, n]) => { const text = " + ANSWER_TEXT_JS.strip() + ";"
            " const m = document.querySelectorAll(sel)[i];"
            " return m && m.getAttribute('data-streaming') === 'true' && text(m).length >= n; }",
            arg=[ASSISTANT, index, min_chars], timeout=timeout * 1000)

    def answer_text(self, index: int) -> str:
        return self.answer(index).evaluate(ANSWER_TEXT_JS)

    def answer(self, index: int) -> Any:
        return self.answers.nth(index)

    def wait_finished(self, index: int, timeout: float = 90.0) -> Any:
        answer = self.answer(index)
        answer.wait_for(state="attached", timeout=timeout * 1000)
        self.lab.page.wait_for_function(
            "([sel, i]) => { const m = document.querySelectorAll(sel)[i];"
            " return m && m.hasAttribute('data-finish-reason'); }", arg=[ASSISTANT, index], timeout=timeout * 1000)
        self.wait_settled(index)
        return answer

    def wait_settled(self, index: int, quiet: float = 0.5, timeout: float = 5.0) -> str:
        """The answer's text once it stopped changing for ``quiet`` seconds (the Markdown body is
        rendered asynchronously; data-finish-reason waits for the final text, and this checks it)."""
        text, since = self.answer_text(index), time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.answer_text(index)
            if now != text:
                text, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return text


@pytest.fixture
def chat(lab: Lab) -> Chat:
    return Chat(lab)
