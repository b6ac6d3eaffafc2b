"""JupyterLab loads with llamalab's front end: its plugins are active and its side panel is there."""

from __future__ import annotations

from tests.ui.conftest import PACKAGE


def test_jupyterlab_loads_llamalab(lab) -> None:
    for plugin in ("chat", "completer", "manager"):
        assert lab.plugin_activated(f"{PACKAGE}:{plugin}"), f"{PACKAGE}:{plugin} is not activated"
    failed = [line for line in lab.console if "Plugin failed to activate" in line or "failed to load" in line.lower()]
    assert not [line for line in failed if "llamalab" in line], failed
    tab = lab.page.locator('.jp-SideBar [data-id="llamalab-chat"]')
    assert tab.count() == 1
    lab.shot("loaded")
