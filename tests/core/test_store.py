"""The model store: registration, metadata read with gguf's reader, removal, concurrency."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import pytest

from llamalab import ConfigError, InvalidModelFileError, ModelNotFoundError, ModelStore, read_gguf_info
from tests.fixtures.tiny_llama import write_gguf_with_architecture


def test_register_reads_metadata_and_hash(tmp_store, demo_model):
    model = tmp_store.register("smol", demo_model, source="test")
    assert model.sha256 == hashlib.sha256(demo_model.read_bytes()).hexdigest()
    assert (model.architecture, model.quantization, model.context_length) == ("llama", "Q4_1", 8192)
    assert model.size_bytes == demo_model.stat().st_size
    assert model.chat_template and "<|im_start|>" in model.chat_template
    assert model.license == "apache-2.0" and not model.owned
    assert [m.name for m in ModelStore(tmp_store.root).list()] == ["smol"]  # persisted on disk
    assert tmp_store.get("smol") == model


def test_gguf_info_of_demo_model(demo_model):
    info = read_gguf_info(demo_model)
    assert (info.block_count, info.embedding_length, info.head_count, info.head_count_kv) == (30, 576, 9, 3)
    assert info.vocab_size == 49152 and info.add_bos_token is False
    assert len(info.tensors) == 272 and info.tensor_bytes < info.size_bytes
    assert {t.ggml_type for t in info.tensors} >= {"Q4_1", "F32"}


def test_header_reader_agrees_with_gguf_reader(demo_model):
    """Our one-pass header parser against the gguf package's own GGUFReader."""
    import gguf

    reader = gguf.GGUFReader(str(demo_model))
    info = read_gguf_info(demo_model)
    theirs = [(t.name, gguf.GGMLQuantizationType(t.tensor_type).name, tuple(int(x) for x in t.shape),
               int(t.n_bytes)) for t in reader.tensors]
    assert [(t.name, t.ggml_type, t.shape, t.n_bytes) for t in info.tensors] == theirs
    assert info.chat_template == reader.fields["tokenizer.chat_template"].contents()
    assert info.context_length == reader.fields["llama.context_length"].contents()
    assert info.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data)
    assert info.bos_token_id == reader.fields["tokenizer.ggml.bos_token_id"].contents()


def test_remove_keeps_files_it_does_not_own(tmp_store, demo_model, tmp_path):
    copy = tmp_path / "mine.gguf"
    shutil.copy(demo_model, copy)
    tmp_store.register("mine", copy, source="test")
    tmp_store.remove("mine")
    assert copy.exists() and tmp_store.find("mine") is None
    with pytest.raises(ModelNotFoundError, match="no model named 'mine'"):
        tmp_store.remove("mine")


def test_remove_deletes_owned_files(tmp_store, tmp_path):
    folder = tmp_store.model_dir("owned:q8_0")
    folder.mkdir(parents=True)
    path = write_gguf_with_architecture(folder / "owned.gguf", "llama")
    tmp_store.register("owned:q8_0", path, source="test", owned=True)
    tmp_store.remove("owned:q8_0")
    assert not path.exists() and not folder.exists()


def test_unknown_name_says_how_to_fix(tmp_store):
    with pytest.raises(ModelNotFoundError, match="llamalab models pull llama-2-7b-chat"):
        tmp_store.get("llama-2-7b-chat")


def test_missing_file_is_reported_with_the_fix(tmp_store, tmp_path):
    path = write_gguf_with_architecture(tmp_path / "gone.gguf", "llama")
    tmp_store.register("gone", path, source="test")
    path.unlink()
    with pytest.raises(ModelNotFoundError, match="llamalab models rm gone"):
        tmp_store.get("gone")


def test_bad_files_are_refused_and_store_untouched(tmp_store, tmp_path, demo_model):
    tmp_store.register("good", demo_model, source="test")
    before = tmp_store.registry_path.read_text()
    html = tmp_path / "page.gguf"
    html.write_text("<!DOCTYPE html><html>expired</html>")
    with pytest.raises(InvalidModelFileError, match="not a GGUF"):
        tmp_store.register("bad", html, source="test")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(demo_model.read_bytes()[:5_000_000])
    with pytest.raises(InvalidModelFileError, match="truncated"):
        tmp_store.register("cut", truncated, source="test")
    assert tmp_store.registry_path.read_text() == before


@pytest.mark.parametrize("name", ["", "has space", "../escape", "a" * 200, "-leading-dash"])
def test_invalid_names(tmp_store, demo_model, name):
    with pytest.raises(ConfigError, match="not a valid model name"):
        tmp_store.register(name, demo_model, source="test")


def test_corrupt_registry_is_a_clear_error(tmp_store):
    tmp_store.root.mkdir(parents=True)
    tmp_store.registry_path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        tmp_store.list()


def test_concurrent_registration_loses_nothing(tmp_store, tmp_path):
    path = write_gguf_with_architecture(tmp_path / "m.gguf", "llama")
    info = read_gguf_info(path)
    errors = []

    def register(prefix: str) -> None:
        try:
            for i in range(15):
                ModelStore(tmp_store.root).register(f"{prefix}-{i}", path, source="test", sha256="0" * 64,
                                                    info=info)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(p,)) for p in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(tmp_store.list()) == 45
    assert json.loads(tmp_store.registry_path.read_text())["version"] == 1
    assert not list(tmp_store.root.glob("*.part"))  # no temporary registry left behind
