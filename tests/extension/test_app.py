"""The extension as an application: traitlets with help, enabled by the installed config
file, what kernels inherit, preloading."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from traitlets import TraitError

from llamalab.extension.app import LlamalabExtension
from llamalab.extension.kernel_access import SERVER_KEY_ENV, SERVER_URL_ENV
from tests.conftest import REPO, TEST_HOME

CONFIG_FILE = "etc/jupyter/jupyter_server_config.d"


def test_every_option_has_help_for_administrators():
    traits = LlamalabExtension.class_own_traits(config=True)
    assert {"default_model", "n_ctx", "n_gpu_layers", "remote_url", "remote_api_key", "allowed_models",
            "system_prompt", "max_queued", "max_prompt_chars", "store_dir", "kernel_access"} <= set(traits)
    assert all(len(t.help) > 20 for t in traits.values()), [n for n, t in traits.items() if len(t.help) <= 20]
    assert "--LlamalabExtension.n_gpu_layers" in LlamalabExtension.class_get_help()


def test_gpu_layers_accept_auto_or_a_count():
    app = LlamalabExtension()
    for given, kept in (("auto", "auto"), ("AUTO", "auto"), ("12", 12), (-1, -1), (0, 0)):
        app.n_gpu_layers = given
        assert app.n_gpu_layers == kept
    for bad in ("many", -2):
        with pytest.raises(TraitError):
            app.n_gpu_layers = bad
    with pytest.raises(TraitError):
        app.max_queued = 0
    for name, bad in (("completion_prefix_tokens", 8), ("completion_context_tokens", -1),
                      ("completion_suffix_tokens", -5), ("completion_time_budget_ms", -1)):
        with pytest.raises(TraitError, match=name):
            setattr(app, name, bad)
    app.completion_context_tokens = 0  # no context is a choice


def test_installing_enables_the_extension(tmp_path):
    """pyproject installs the config file; jupyter finds it there and the extension validates."""
    tomllib = pytest.importorskip("tomllib")
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    [source] = data_files[CONFIG_FILE]
    assert json.loads((REPO / source).read_text()) == {"ServerApp": {"jpserver_extensions": {"llamalab.extension": True}}}
    config_dir = tmp_path / "config"  # where the wheel puts it is sys.prefix/etc/jupyter; jupyter reads both alike
    (config_dir / "jupyter_server_config.d").mkdir(parents=True)
    (config_dir / "jupyter_server_config.d" / "llamalab.json").write_text((REPO / source).read_text())
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "NO_COLOR": "1"}
    listed = subprocess.run([sys.executable, "-m", "jupyter_server.extension.serverextension", "list"],
                            capture_output=True, text=True, env=env, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    section = text.split(f"Config dir: {config_dir}")[1].split("Config dir:")[0]
    assert "llamalab.extension enabled" in section and "OK" in section, text


async def test_kernels_inherit_the_servers_url_and_key(jp_serverapp, extension, server_root):
    assert os.environ[SERVER_URL_ENV] == server_root
    assert os.environ[SERVER_KEY_ENV] == extension.kernel_key and len(extension.kernel_key) >= 32
    assert os.environ["LLAMALAB_HOME"] == str(TEST_HOME)
    await extension.stop_extension()
    assert SERVER_URL_ENV not in os.environ and SERVER_KEY_ENV not in os.environ
