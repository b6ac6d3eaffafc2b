"""``open_engine``: the one function every face opens an engine with."""

from __future__ import annotations

from llamalab import LocalEngine, LocalOptions, RemoteEngine, open_engine
from tests.conftest import TEST_HOME


def test_a_model_name_opens_a_local_engine_with_the_options(demo_store):
    options = LocalOptions(n_ctx=512, n_gpu_layers=0, n_parallel=2, kv_size=1024, prompt_cache_mb=8, max_queued=3)
    with open_engine("default", options=options, store=demo_store) as engine:
        assert isinstance(engine, LocalEngine)
        assert (engine.n_ctx, engine.n_parallel, engine.kv_size) == (512, 2, 1024)
        assert engine.stats().prompt_cache_limit_bytes == 8 * 2**20 and engine._max_queued == 3
        assert engine.describe().name == "default"  # the name it was asked by
        assert engine.describe().location.startswith(str(TEST_HOME))


def test_a_server_url_opens_a_remote_engine_and_loads_nothing():
    engine = open_engine("llama-2-7b-chat", remote_url="http://127.0.0.1:9/v1", api_key="k")
    try:
        assert isinstance(engine, RemoteEngine)
        assert engine.model_name() == "llama-2-7b-chat"
    finally:
        engine.close()
