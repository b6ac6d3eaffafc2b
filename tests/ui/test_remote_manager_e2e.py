"""The model manager in a real JupyterLab pointed at a team server (``remote_url``): the "Team server"
section lists its models with the one in use marked, Use makes another one the one in use, and the
local store, pulls and conversion are hidden. A loopback HTTP server that lists two models at
``/v1/models`` (``tests/fixtures/models_server.py``) stands in for the team server."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.fixtures.models_server import running_models_server
from tests.ui.conftest import Chat, Lab

TEAM_MODELS = ["team-chat", "team-code"]


@pytest.fixture(scope="module")
def team_url() -> Iterator[str]:
    with running_models_server(TEAM_MODELS) as server:
        yield server.url


@pytest.fixture(scope="module")
def lab_options(team_url: str) -> dict[str, Any]:
    return {"llamalab": {"remote_url": team_url, "preload": False}}


def test_the_team_servers_models_and_choosing_one(lab: Lab, team_url: str) -> None:
    lab.command("llamalab:open-model-manager")
    manager = lab.page.locator("#llamalab-model-manager")
    section = manager.get_by_test_id("llamalab-remote")
    section.wait_for(state="visible", timeout=30_000)
    assert section.get_by_test_id("llamalab-remote-url").inner_text() == team_url
    assert "OpenAI-compatible" in section.get_by_test_id("llamalab-remote-kind").inner_text()
    rows = section.get_by_test_id("llamalab-remote-model")
    rows.nth(len(TEAM_MODELS) - 1).wait_for(state="visible", timeout=30_000)
    assert [r.get_attribute("data-model") for r in rows.all()] == TEAM_MODELS
    assert [r.get_attribute("data-in-use") for r in rows.all()] == ["true", "false"]
    assert section.locator('[data-model="team-chat"]').get_by_test_id("llamalab-remote-use").count() == 0
    # nothing to load, pull or convert on this server
    for hidden in ("llamalab-stored-model", "llamalab-pull-input", "llamalab-convert-source"):
        assert manager.get_by_test_id(hidden).count() == 0, hidden
    # the hardware that matters is the team server's: not this machine's GPUs nor what would fit here
    hardware = manager.get_by_test_id("llamalab-hardware")
    hardware.get_by_test_id("llamalab-hardware-remote").wait_for(state="visible", timeout=60_000)
    assert hardware.get_by_test_id("llamalab-fit").count() == 0
    notes = hardware.locator(".llamalab-Manager-note").all_inner_texts()
    assert notes and all(team_url in n or "the server at" in n for n in notes), notes
    assert not any("llama.cpp build" in n for n in notes), notes
    lab.shot("team-server", manager)

    section.get_by_role("button", name="Use team-code").click()
    section.locator('[data-testid="llamalab-remote-model"][data-model="team-code"][data-in-use="true"]').wait_for(
        timeout=30_000)
    assert section.locator('[data-model="team-chat"]').get_attribute("data-in-use") == "false"
    reply = lab.server.api("llamalab/models")
    assert reply["default_model"] == "team-code" and reply["loaded"]["name"] == "team-code"
    error = manager.get_by_test_id("llamalab-manager-error")
    assert error.count() == 0, error.all_inner_texts()


def test_the_chat_picker_offers_the_team_servers_models(lab: Lab) -> None:
    """With a team server the store is never loaded, so the chat panel's picker lists the team
    server's models (the one in use marked) and none of the store's."""
    Chat(lab).open()
    picker = lab.page.get_by_test_id("llamalab-model-picker")
    for model in TEAM_MODELS:
        picker.locator(f'option[value="{model}"]').wait_for(state="attached", timeout=30_000)
    values = picker.locator("option").evaluate_all("(options) => options.map(o => [o.value, o.textContent])")
    offered = [value for value, _ in values if value]
    assert offered == TEAM_MODELS, values  # not the store's demo model
    assert any(value == "" and text.startswith("Team server default") for value, text in values), values
    in_use = [value for value, text in values if value and "in use" in text]
    assert len(in_use) == 1, values
