"""Issue 13, deliverable 4: a crafted ``.safetensors`` header or ``config.json`` is refused with
one ``CheckpointError`` line; it never overflows a size, reads outside the file or raises a raw
KeyError / ValueError / TypeError / OverflowError / RecursionError.

Files are written by hand: an 8-byte little-endian header length, the JSON header, the data.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from llamalab.convert.hf import MAX_HEADER_BYTES, check_config, load_safetensors, plan_hf
from llamalab.errors import CheckpointError


def write_raw(path: Path, header: object, data: bytes = b"", *, length: int | None = None,
              raw_header: bytes | None = None) -> Path:
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def refused(path: Path, fragment: str) -> str:
    with pytest.raises(CheckpointError) as info:
        tensors, mapped = load_safetensors(path)
        mapped.close()
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message and len(message) < 400, message
    return message


def good(path: Path, **extra) -> Path:
    """Two F32 tensors, a (2, 3) and a (4,), back to back: 40 bytes of data."""
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [24, 40]},
              "__metadata__": {"format": "pt"}}
    for name, entry in extra.items():
        header[name] = entry
    return write_raw(path, header, np.arange(10, dtype="<f4").tobytes())


def test_a_good_file_still_loads(tmp_path):
    tensors, mapped = load_safetensors(good(tmp_path / "m.safetensors"))
    try:
        assert tensors["a"].raw().tolist() == [[0, 1, 2], [3, 4, 5]]
        assert tensors["b"].raw().tolist() == [6, 7, 8, 9]
    finally:
        mapped.close()


# -- the header's length -----------------------------------------------------------------
@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 1 << 40, 1000])
def test_a_header_longer_than_the_file_is_refused(tmp_path, length):
    refused(write_raw(tmp_path / "m.safetensors", {}, length=length), "header claims")


def test_a_header_over_100_mb_is_refused_even_in_a_big_file(tmp_path):
    path = write_raw(tmp_path / "m.safetensors", None, raw_header=b"{", length=MAX_HEADER_BYTES + 1)
    with open(path, "r+b") as handle:  # sparse: the file is big, the disk use is not
        handle.truncate(MAX_HEADER_BYTES + 100)
    refused(path, "header claims 100,000,001 bytes")


def test_a_file_shorter_than_8_bytes_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x01\x02")
    refused(path, "no header")


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b"null", b"[" * 200_000 + b"]" * 200_000,
                                 b'{"a": {"shape": [' + b"9" * 5000 + b"]}}"])
def test_a_header_that_is_not_a_json_object_is_refused(tmp_path, raw):
    refused(write_raw(tmp_path / "m.safetensors", None, raw_header=raw), "safetensors")


# -- dtype, shape, data_offsets --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["I64", None, ["F32"], {"x": 1}, 7])
def test_an_unknown_or_malformed_dtype_is_refused(tmp_path, dtype):
    entry = {"dtype": dtype, "shape": [1], "data_offsets": [40, 44]}
    message = refused(good(tmp_path / "m.safetensors", c=entry), "converts BF16, F16 and F32")
    assert "'c'" in message


@pytest.mark.parametrize("shape", [None, "12", [-1, -4], [1.5], [True], ["2"], [1] * 9, {"0": 1}, [2**64]])
def test_a_malformed_shape_is_refused(tmp_path, shape):
    entry = {"dtype": "F32", "shape": shape, "data_offsets": [40, 44]}
    refused(good(tmp_path / "m.safetensors", c=entry), "shape of 'c'")


def test_a_shape_whose_size_overflows_int64_is_refused(tmp_path):
    # numpy's int64 product of these wraps to 0, which an empty byte range used to match.
    entry = {"dtype": "F32", "shape": [1 << 40, 1 << 40, 1 << 40, 4], "data_offsets": [40, 40]}
    assert int(np.prod(entry["shape"], dtype=np.int64)) == 0
    refused(good(tmp_path / "m.safetensors", c=entry), "needs")


@pytest.mark.parametrize("offsets", [None, [0], [0, 4, 8], [4.0, 8.0], ["0", "4"], [True, 4], [8, 4],
                                     [-4, 0], [40, 2**64], [36, 44]])
def test_data_offsets_outside_the_data_are_refused(tmp_path, offsets):
    entry = {"dtype": "F32", "shape": [1], "data_offsets": offsets}
    refused(good(tmp_path / "m.safetensors", c=entry), "is not inside the file")


def test_offsets_that_do_not_match_the_shape_are_refused(tmp_path):
    path = write_raw(tmp_path / "m.safetensors", {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}},
                     bytes(24))
    refused(path, "'a' takes 20 bytes but its shape (2, 3) of F32 needs 24")


def test_a_negative_begin_cannot_read_the_header(tmp_path):
    path = write_raw(tmp_path / "m.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
                     bytes(8))
    refused(path, "is not inside the file")


def test_overlapping_tensors_are_refused(tmp_path):
    entry = {"dtype": "F32", "shape": [3], "data_offsets": [20, 32]}  # inside a's [0, 24) and b's [24, 40)
    refused(good(tmp_path / "m.safetensors", c=entry), "share bytes")


def test_one_stride_over_another_is_refused_even_when_aliased_exactly(tmp_path):
    entry = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    refused(good(tmp_path / "m.safetensors", c=entry), "share bytes")


def test_empty_tensors_share_nothing(tmp_path):
    entry = {"dtype": "F32", "shape": [0, 5], "data_offsets": [24, 24]}
    tensors, mapped = load_safetensors(good(tmp_path / "m.safetensors", c=entry))
    mapped.close()
    assert tensors["c"].shape == (0, 5)


def test_names_with_control_characters_are_not_echoed(tmp_path):
    entry = {"dtype": "Q9", "shape": [1], "data_offsets": [40, 44]}
    header = {"x\nerror: forged line": entry}
    message = refused(write_raw(tmp_path / "m.safetensors", header, bytes(44)), "converts BF16")
    assert "\n" not in message


@pytest.mark.parametrize("metadata", [[1], "pt", 3])
def test_metadata_must_be_an_object(tmp_path, metadata):
    refused(good(tmp_path / "m.safetensors", __metadata__=metadata), "__metadata__")


def test_random_corruptions_raise_only_checkpoint_errors(tmp_path):
    """Mutate a good header's values at random: every outcome is a loaded file or one CheckpointError line."""
    rng = random.Random(13)
    junk = [None, True, -1, 0, 1, 2**31, 2**63, 2**64 + 1, -2**70, 1.5, float("nan"), "F32", "BF16", "", [],
            [0], [0, 0], [1, 2, 3], [-1], {}, {"a": 1}, [[1]], ["x"]]
    path = tmp_path / "m.safetensors"
    for _ in range(400):
        header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                  "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]}}
        for _ in range(rng.randint(1, 3)):
            entry = header[rng.choice("ab")]
            key = rng.choice(["dtype", "shape", "data_offsets"])
            if rng.random() < 0.3:
                entry.pop(key, None)
            else:
                entry[key] = rng.choice(junk)
        path.write_bytes(struct.pack("<Q", 0))  # replaced below
        blob = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(rng.choice([0, 8, 32, 40])))
        try:
            tensors, mapped = load_safetensors(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 400
            continue
        try:
            for tensor in tensors.values():
                tensor.raw()  # a loaded tensor reads inside the file
        finally:
            mapped.close()


# -- config.json -----------------------------------------------------------------------
BASE_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4,
               "num_key_value_heads": 2, "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
               "vocab_size": 512, "max_position_embeddings": 4096}


@pytest.mark.parametrize("key,value,fragment", [
    ("hidden_size", "64", "'hidden_size' is '64', not an integer"),
    ("hidden_size", 64.5, "not an integer"),
    ("hidden_size", 64.0, "not an integer"),
    ("num_hidden_layers", True, "not an integer"),
    ("num_hidden_layers", [2], "not an integer"),
    ("num_hidden_layers", 1_000_000_000, "outside the sane range 1 to 1024"),
    ("num_attention_heads", 0, "outside the sane range"),
    ("vocab_size", -1, "outside the sane range"),
    ("intermediate_size", 10**400, "outside the sane range"),
    ("rms_norm_eps", float("nan"), "not a number"),
    ("rms_norm_eps", "1e-5", "not a number"),
    ("rope_theta", float("inf"), "not a number"),
    ("max_position_embeddings", 2**40, "outside the sane range"),
    ("hidden_size", None, "config.json has no 'hidden_size'"),
])
def test_config_values_are_numbers_of_the_right_kind_in_range(tmp_path, key, value, fragment):
    config = dict(BASE_CONFIG, **{key: value})
    folder = tmp_path / "Llama-2-7b-hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))  # no tokenizer, no weights: refused before them
    with pytest.raises(CheckpointError) as info:
        plan_hf(folder, "F16")
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("text", ['{"model_type": "llama", "hidden_size": ' + "9" * 5000 + "}",
                                  '{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"])
def test_json_bombs_in_config_json_are_refused(tmp_path, text):
    folder = tmp_path / "Llama-2-7b-hf"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="config.json is not valid JSON") as info:
        plan_hf(folder, "F16")
    assert "\n" not in str(info.value)


def test_optional_config_values_may_be_absent_or_null():
    check_config(dict(BASE_CONFIG, num_key_value_heads=None, rope_theta=None, rms_norm_eps=None))
    check_config({k: v for k, v in BASE_CONFIG.items() if k not in ("max_position_embeddings", "rope_theta")})


# -- whole folders ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    pytest.importorskip("sentencepiece")
    import sentencepiece as spm

    from tests.fixtures.meta_checkpoint import Spec, make_weights, train_tokenizer, write_hf_checkpoint

    spec = Spec(dim=64, n_heads=4, n_kv_heads=2)
    root = tmp_path_factory.mktemp("hf")
    tokenizer = train_tokenizer(root / "tok")
    weights = make_weights(spec, spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size())
    return write_hf_checkpoint(root / "Llama-2-7b-hf", weights, spec, tokenizer)


@pytest.fixture()
def folder(hf_folder, tmp_path) -> Path:
    return Path(shutil.copytree(hf_folder, tmp_path / "Llama-2-7b-hf"))


def plan_refused(folder: Path, fragment: str) -> str:
    with pytest.raises(CheckpointError) as info:
        plan_hf(folder, "F16").close()
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message and len(message) < 400, message
    return message


def _rewrite(path: Path, edit) -> None:
    """Apply ``edit`` to a safetensors file's header dict, keeping its data."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length:])


def test_the_pristine_folder_plans(folder):
    plan_hf(folder, "F16").close()


def test_a_missing_weight_is_named_as_hugging_face_names_it(folder):
    (folder / "model.safetensors.index.json").unlink()  # no index: the loss shows up as a missing weight
    _rewrite(folder / "model-00002-of-00002.safetensors",
             lambda h: h.pop("model.layers.1.mlp.down_proj.weight"))
    plan_refused(folder, "the checkpoint has no model.layers.1.mlp.down_proj.weight")


def test_a_weight_the_index_lists_but_its_file_lacks_is_named(folder):
    _rewrite(folder / "model-00002-of-00002.safetensors",
             lambda h: h.pop("model.layers.1.mlp.down_proj.weight"))
    plan_refused(folder, "model-00002-of-00002.safetensors has no tensor 'model.layers.1.mlp.down_proj.weight'")


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors",
                                    "..\\x.safetensors", "config.json", 7, ".safetensors"])
def test_an_index_cannot_name_files_outside_the_folder(folder, target):
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = target
    index.write_text(json.dumps(data))
    plan_refused(folder, "not a .safetensors file in this folder")


@pytest.mark.parametrize("weight_map", [None, [], "x", {}])
def test_an_index_without_a_weight_map_is_refused(folder, weight_map):
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    plan_refused(folder, "has no weight_map object")


def test_a_tensor_in_two_files_is_refused(folder):
    (folder / "model.safetensors.index.json").unlink()
    first = folder / "model-00001-of-00002.safetensors"
    raw = first.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    name = next(n for n in json.loads(raw[8:8 + length]) if n != "__metadata__")
    entry = json.loads(raw[8:8 + length])[name]
    size = entry["data_offsets"][1] - entry["data_offsets"][0]
    write_raw(folder / "model-00003-extra.safetensors", {name: dict(entry, data_offsets=[0, size])}, bytes(size))
    plan_refused(folder, "the folder mixes two checkpoints")


@pytest.mark.parametrize("layer", ["9" * 5000, "01", "\u0661"])  # 5000 digits; a leading zero; Arabic-Indic one
def test_odd_layer_numbers_are_not_llama_weights(folder, layer):
    (folder / "model.safetensors.index.json").unlink()
    _rewrite(folder / "model-00002-of-00002.safetensors",
             lambda h: h.__setitem__(f"model.layers.{layer}.mlp.up_proj.weight",
                                     h.pop("model.layers.1.mlp.up_proj.weight")))
    plan_refused(folder, "is not a Llama weight")
