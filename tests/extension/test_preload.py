"""``preload`` loads the model when the server starts; ``kernel_access = False`` gives
kernels nothing."""

from __future__ import annotations

import asyncio
import os

import pytest

from llamalab.extension.kernel_access import SERVER_URL_ENV
from tests.conftest import TEST_HOME


@pytest.fixture
def llamalab_config(demo_model):
    return {"store_dir": str(TEST_HOME), "n_ctx": 512, "preload": True, "kernel_access": False}


async def test_preload_loads_at_start_and_kernel_access_can_be_off(jp_serverapp, extension):
    assert SERVER_URL_ENV not in os.environ and extension.kernel_key is None
    await extension._start_jupyter_server_extension(jp_serverapp)  # what the server calls once it listens
    for _ in range(200):
        if extension.manager.loaded is not None:
            break
        await asyncio.sleep(0.05)
    assert extension.manager.loaded is not None and extension.manager.loaded.context_length == 512
