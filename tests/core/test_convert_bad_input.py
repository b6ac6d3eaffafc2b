"""Bad input to `llamalab convert` / `llamalab quantize`: one clear line, a non-zero exit, nothing
half-written, nothing registered."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from llamalab.cli.convert_cmd import convert, quantize  # noqa: E402
from llamalab.errors import (CheckpointError, ConversionError, InsufficientDiskSpaceError,  # noqa: E402
                             LicenseNotAcceptedError, LlamalabError, QuantizeError, UnsafeCheckpointError)
from tests.fixtures.meta_checkpoint import (Spec, make_weights, train_tokenizer,  # noqa: E402
                                            write_hf_checkpoint, write_meta_checkpoint)

SPEC = Spec(dim=64, n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("pristine")
    tokenizer = train_tokenizer(root / "tok")
    weights = make_weights(SPEC, spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size())
    meta = write_meta_checkpoint(root / "llama-2-13b", weights, SPEC, 2, tokenizer)
    hf = write_hf_checkpoint(root / "Llama-2-13b-hf", weights, SPEC, tokenizer)
    return meta, hf


@pytest.fixture()
def ckpt(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine[0], tmp_path / "src" / "llama-2-13b"))


@pytest.fixture()
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run_convert(folder: Path, out_dir: Path, *extra: str) -> None:
    convert.main([str(folder), "--out", str(out_dir / "model.gguf"), "--accept-license", *extra],
                 standalone_mode=False)


def assert_clean(info, fragment: str, out_dir: Path, store) -> None:
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and len(message) < 400, message
    assert list(out_dir.iterdir()) == [], "something was left in the output folder"
    assert store.list() == []
    models = store.models_dir
    assert not models.exists() or not any(models.rglob("*")), list(models.rglob("*"))


def test_missing_shard_listed_in_the_checklist(ckpt, out_dir, tmp_store):
    (ckpt / "consolidated.01.pth").unlink()
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "consolidated.01.pth missing", out_dir, tmp_store)
    assert "checklist.chk lists it" in str(info.value)


def test_missing_shard_without_a_checklist(ckpt, out_dir, tmp_store):
    (ckpt / "consolidated.01.pth").unlink()
    (ckpt / "checklist.chk").unlink()
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "split into 2 shards but", out_dir, tmp_store)
    assert "consolidated.01.pth missing" in str(info.value)


def test_gap_in_the_shard_numbers(ckpt, out_dir, tmp_store):
    (ckpt / "consolidated.01.pth").rename(ckpt / "consolidated.02.pth")
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "consolidated.01.pth missing", out_dir, tmp_store)


def test_extra_shard_not_in_the_checklist(ckpt, out_dir, tmp_store):
    shutil.copy(ckpt / "consolidated.01.pth", ckpt / "consolidated.02.pth")
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "consolidated.02.pth", out_dir, tmp_store)
    assert "not in checklist.chk" in str(info.value)


def test_extra_shard_without_a_checklist(ckpt, out_dir, tmp_store):
    shutil.copy(ckpt / "consolidated.01.pth", ckpt / "consolidated.02.pth")
    (ckpt / "checklist.chk").unlink()
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "split into 2 shard(s) but", out_dir, tmp_store)
    assert "consolidated.02.pth belongs to another model" in str(info.value)


@pytest.mark.parametrize("change, fragment", [
    ({"dim": 128}, "params.json does not match the weights: tok_embeddings.weight is (512, 64)"),
    ({"n_layers": 3}, "params.json says 3 layers but the weights have 2"),
    ({"n_kv_heads": 4}, "params.json does not match the weights: layers.0.attention.wk.weight is (32, 64)"),
    ({"multiple_of": 256}, "layers.0.feed_forward.w1.weight is (192, 64)"),
    ({"dim": None}, "params.json has no 'dim'"),
    ({"n_layers": None}, "params.json has no 'n_layers'"),
    ({"n_heads": 5}, "dim 64 is not a multiple of n_heads 5"),
])
def test_params_contradicting_the_tensor_shapes(ckpt, out_dir, tmp_store, change, fragment):
    params = {**json.loads((ckpt / "params.json").read_text()), **change}
    (ckpt / "params.json").write_text(json.dumps({k: v for k, v in params.items() if v is not None}))
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, fragment, out_dir, tmp_store)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_pth(ckpt, out_dir, tmp_store, keep):
    shard = ckpt / "consolidated.01.pth"
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "consolidated.01.pth is truncated", out_dir, tmp_store)


def test_shard_cut_inside_its_last_tensor(ckpt, out_dir, tmp_store):
    """The file ends in the middle of the data of the last tensor it stores (a download cut there)."""
    import struct
    import zipfile

    shard = ckpt / "consolidated.01.pth"
    with zipfile.ZipFile(shard) as archive:
        last = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.header_offset)
    raw = shard.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, last.header_offset + 26)  # the local file header
    data_start = last.header_offset + 30 + name_len + extra_len
    assert last.file_size > 2
    shard.write_bytes(raw[: data_start + last.file_size // 2])
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "consolidated.01.pth is truncated", out_dir, tmp_store)


def test_pickle_payload_does_not_run(ckpt, out_dir, tmp_store, tmp_path):
    from tests.core.test_convert_pth import Payload, plant

    marker = tmp_path / "marker"
    plant(ckpt / "consolidated.00.pth", Payload(marker))
    with pytest.raises(UnsafeCheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "consolidated.00.pth asks to load", out_dir, tmp_store)
    assert not marker.exists()


def test_folder_without_a_tokenizer(ckpt, out_dir, tmp_store):
    (ckpt / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "no tokenizer.model in", out_dir, tmp_store)


def test_a_tokenizer_that_is_not_sentencepiece(ckpt, out_dir, tmp_store):
    (ckpt / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")  # Llama 3's tiktoken format
    with pytest.raises(CheckpointError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "is not a SentencePiece model", out_dir, tmp_store)


def test_not_a_model_folder(tmp_path, out_dir, tmp_store):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as info:
        run_convert(tmp_path / "empty", out_dir)
    assert_clean(info, "holds neither Meta's checkpoint", out_dir, tmp_store)


def test_unknown_quant_type_fails_before_any_work(ckpt, out_dir, tmp_store):
    with pytest.raises(QuantizeError) as info:
        run_convert(ckpt, out_dir, "--quant", "Q9_X")
    assert_clean(info, "unknown quantization type 'Q9_X'", out_dir, tmp_store)


def test_unknown_outtype_is_a_usage_error(ckpt, out_dir, tmp_store):
    with pytest.raises(click.BadParameter):
        run_convert(ckpt, out_dir, "--outtype", "q4")
    assert list(out_dir.iterdir()) == []


def test_unwritable_output_path(ckpt, tmp_path, tmp_store):
    if os.geteuid() == 0:  # root ignores permission bits; /sys refuses new files even to root
        target = Path("/sys/llamalab-test/model.gguf")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "model.gguf"
    with pytest.raises(ConversionError) as info:
        convert.main([str(ckpt), "--out", str(target), "--accept-license"], standalone_mode=False)
    assert "permission denied" in str(info.value) and "\n" not in str(info.value)
    assert not target.exists() and tmp_store.list() == []


def test_output_under_a_file_instead_of_a_folder(ckpt, tmp_path, tmp_store):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConversionError) as info:
        convert.main([str(ckpt), "--out", str(tmp_path / "afile" / "m.gguf"), "--accept-license"],
                     standalone_mode=False)
    assert "check the output path" in str(info.value)
    assert tmp_store.list() == []


def test_full_disk_is_found_before_writing(ckpt, out_dir, tmp_store, monkeypatch):
    import llamalab.fetch

    monkeypatch.setattr(llamalab.fetch.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(InsufficientDiskSpaceError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "needed in", out_dir, tmp_store)


def test_disk_filling_up_midway_leaves_nothing(ckpt, out_dir, tmp_store, monkeypatch):
    """The disk fills while tensor data is being written: part of a write lands, then ENOSPC."""
    from llamalab.convert.blockio import BLOCK, TensorStream

    original = TensorStream._write_at
    written = []

    def filling(self, data, at):
        if sum(written) + data.size > 100_000:
            original(self, data[: data.size // 2 // BLOCK * BLOCK], at)
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(data.size)
        return original(self, data, at)

    monkeypatch.setattr(TensorStream, "_write_at", filling)
    with pytest.raises(InsufficientDiskSpaceError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "the disk filled up while writing model.gguf", out_dir, tmp_store)
    assert written, "the disk filled before any tensor data was written: the test lost its point"


def test_disk_filling_up_in_a_quantization_leaves_nothing(ckpt, out_dir, tmp_store, monkeypatch):
    """llama.cpp's quantizer failing (as on a full disk): one line, nothing left, nothing registered."""
    import llamalab.quantize

    f16 = out_dir.parent / "f16.gguf"
    run_convert(ckpt, out_dir)  # a real F16 GGUF to quantize, registered as llama-2-13b:f16
    (out_dir / "model.gguf").rename(f16)
    for model in tmp_store.list():
        tmp_store.remove(model.name, delete_file=False)
    monkeypatch.setattr(llamalab.quantize, "_quantize_here", lambda src, part, *a: part.write_bytes(b"GGUF") and 1)
    with pytest.raises(QuantizeError) as info:
        quantize.main([str(f16), "--type", "Q8_0", "--out", str(out_dir / "model.q8_0.gguf")], standalone_mode=False)
    assert_clean(info, "check that the input is an F32/F16/BF16 GGUF and the disk has room", out_dir, tmp_store)


def test_licence_not_accepted(ckpt, out_dir, tmp_store):
    with pytest.raises(LicenseNotAcceptedError) as info:
        convert.main([str(ckpt), "--out", str(out_dir / "model.gguf")], standalone_mode=False)
    assert_clean(info, "--accept-license", out_dir, tmp_store)


def test_a_model_that_fails_its_test_run_is_deleted_not_registered(ckpt, out_dir, tmp_store, monkeypatch):
    import llamalab.convert.runcheck

    def broken(path, *a, **k):
        raise ConversionError(f"{Path(path).name} does not run (simulated); the conversion is faulty.")

    monkeypatch.setattr(llamalab.convert.runcheck, "check_model", broken)
    with pytest.raises(ConversionError) as info:
        run_convert(ckpt, out_dir)
    assert_clean(info, "does not run", out_dir, tmp_store)


def test_truncated_safetensors(pristine, tmp_path, out_dir, tmp_store):
    hf = Path(shutil.copytree(pristine[1], tmp_path / "Llama-2-13b-hf"))
    shard = hf / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as info:
        run_convert(hf, out_dir)
    assert_clean(info, "model-00002-of-00002.safetensors is truncated", out_dir, tmp_store)


def test_quantize_command_bad_input(tmp_path, tmp_store):
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(LlamalabError, match="x.gguf is not a GGUF file"):
        quantize.main([str(not_gguf), "--type", "Q4_K_M"], standalone_mode=False)
    with pytest.raises(QuantizeError, match="unknown quantization type 'Q3'"):
        quantize.main([str(not_gguf), "--type", "Q3"], standalone_mode=False)
    assert tmp_store.list() == [] and not tmp_store.models_dir.exists()


def test_the_cli_prints_one_error_line_and_exits_non_zero(ckpt, out_dir, tmp_store):
    from llamalab.cli.main import _Group

    group = _Group("llamalab")
    group.add_command(convert)
    (ckpt / "consolidated.01.pth").unlink()
    result = CliRunner().invoke(group, ["convert", str(ckpt), "--out", str(out_dir / "m.gguf"), "--accept-license"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: consolidated.01.pth missing"), result.output
    assert list(out_dir.iterdir()) == []
