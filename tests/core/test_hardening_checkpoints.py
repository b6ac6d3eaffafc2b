"""Issue 13, rows 5-9: a crafted download server or checkpoint cannot write outside Meta's files
or turn into a memory or disk bomb. Each test builds the attack itself and fails on the old code."""

from __future__ import annotations

import collections
import io
import pickle
import time
import tracemalloc
import zipfile

import pytest

from llamalab import PullError
from llamalab.convert.params import LlamaParams
from llamalab.convert.pth import load_pth
from llamalab.errors import CheckpointError, UnsafeCheckpointError
from llamalab.license import accept_license
from llamalab.meta_download import download_meta
from tests.fixtures.meta_server import MetaServer, llama2_tree

torch = pytest.importorskip("torch")

CHECKLISTS = {"tokenizer_checklist.chk", "llama-2-7b/checklist.chk"}


# -- row 5: checklists name only Meta's files --------------------------------------------------
@pytest.mark.parametrize("checklist, extra, line", [
    ("tokenizer_checklist.chk", ".bashrc", 2),
    ("tokenizer_checklist.chk", "./.profile", 2),
    ("llama-2-7b/checklist.chk", ".bashrc", 3),
    ("llama-2-7b/checklist.chk", "notes.txt", 3),
])
def test_checklist_naming_other_files_is_refused_before_any_request(tmp_path, tmp_store, checklist, extra, line):
    accept_license("llama2", tmp_store)
    served = llama2_tree(("7B",))
    served[checklist] += f"d41d8cd98f00b204e9800998ecf8427e  {extra}\n".encode()
    name = extra.removeprefix("./")
    served[name if "/" not in checklist else f"llama-2-7b/{name}"] = b"export EVIL=1\n"
    out = tmp_path / "out"
    out.mkdir()
    (out / ".bashrc").write_text("mine\n")
    with MetaServer(served) as server:
        with pytest.raises(PullError, match=rf"{checklist} line {line} names '{name}'.*nothing was fetched") as info:
            download_meta(server.signed_url(), ["7B"], out=out, store=tmp_store)
        requested = {r.path for r in server.requests}
    assert "\n" not in str(info.value)
    assert requested <= CHECKLISTS  # not the listed file, not even a HEAD
    assert (out / ".bashrc").read_text() == "mine\n"
    assert not (out / ".profile").exists() and not (out / "llama-2-7b" / name).exists()
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert all(w == ".bashrc" or w.split(".chk")[0] + ".chk" in CHECKLISTS for w in written), written


def test_a_shard_the_model_does_not_have_is_refused_before_any_request(tmp_path, tmp_store):
    accept_license("llama2", tmp_store)
    served = llama2_tree(("7B",))
    served["llama-2-7b/checklist.chk"] += b"d41d8cd98f00b204e9800998ecf8427e  consolidated.05.pth\n"
    served["llama-2-7b/consolidated.05.pth"] = b"x" * 1000
    with MetaServer(served) as server:
        with pytest.raises(PullError, match="lists llama-2-7b/consolidated.05.pth, which Meta's release"):
            download_meta(server.signed_url(), ["7B"], out=tmp_path / "out", store=tmp_store)
        assert {r.path for r in server.requests} <= CHECKLISTS
    assert not (tmp_path / "out" / "llama-2-7b" / "consolidated.05.pth").exists()


# -- helpers for crafted .pth files --------------------------------------------------------------
def rewrite(path, change) -> None:
    """Rewrite the zip at ``path``: ``change(members) -> {name: (bytes, compress_type)}``."""
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, (data, kind) in change(members).items():
            z.writestr(name, data, compress_type=kind)


def pkl_name(members) -> str:
    return next(n for n in members if n.endswith("data.pkl"))


def peak_mib(call) -> float:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


# -- row 6: compressed members are never inflated ------------------------------------------------
def test_a_deflated_data_pkl_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "consolidated.00.pth"
    torch.save({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, path)
    bomb = 64 << 20  # 64 MiB of zeros after the pickle's STOP: deflates to ~64 KB

    def change(members):
        out = {n: (d, zipfile.ZIP_STORED) for n, d in members.items()}
        name = pkl_name(members)
        out[name] = (members[name] + b"\0" * bomb, zipfile.ZIP_DEFLATED)
        return out

    rewrite(path, change)
    assert path.stat().st_size < 1 << 20
    errors = []

    def load():
        with pytest.raises(CheckpointError, match=r"consolidated.00.pth holds a compressed .*data.pkl") as info:
            load_pth(path)
        errors.append(str(info.value))

    assert peak_mib(load) < 8
    assert "\n" not in errors[0]


def test_an_oversized_stored_data_pkl_is_refused(tmp_path, monkeypatch):
    import llamalab.convert.pth as pth

    path = tmp_path / "c.pth"
    torch.save({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, path)
    monkeypatch.setattr(pth, "MAX_PICKLE_BYTES", 100)
    with pytest.raises(CheckpointError, match=r"c.pth holds a [\d,]+-byte .*data.pkl, more than"):
        load_pth(path)


# -- row 7: the pickle's budget ------------------------------------------------------------------
class Copy:
    """Pickles as ``collections.OrderedDict(big)``: one more full copy of ``big`` per instance."""

    def __init__(self, big: dict) -> None:
        self.big = big

    def __reduce__(self):
        return (collections.OrderedDict, (self.big,))


def test_a_small_pickle_cannot_build_a_huge_state(tmp_path):
    path = tmp_path / "consolidated.00.pth"
    torch.save({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, path)
    big = {f"k{i}": i for i in range(5000)}
    payload = pickle.dumps({"w": [Copy(big) for _ in range(300)]}, protocol=2)
    assert len(payload) < 150_000  # 300 copies of 5,000 items: 1.5 million items built

    def change(members):
        out = {n: (d, zipfile.ZIP_STORED) for n, d in members.items()}
        out[pkl_name(members)] = (payload, zipfile.ZIP_STORED)
        return out

    rewrite(path, change)

    def load():
        with pytest.raises(UnsafeCheckpointError, match="builds more objects than a checkpoint"):
            load_pth(path)

    assert peak_mib(load) < 150


def test_pickle_build_state_on_llamalab_objects_is_refused(tmp_path):
    """BUILD could overwrite the fields of a checked object (a tensor's shape): it is refused."""
    path = tmp_path / "c.pth"
    torch.save({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, path)
    crafted = b"\x80\x02ctorch\nBFloat16Storage\n}X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00F32sb."

    def change(members):
        out = {n: (d, zipfile.ZIP_STORED) for n, d in members.items()}
        out[pkl_name(members)] = (crafted, zipfile.ZIP_STORED)
        return out

    rewrite(path, change)
    with pytest.raises(UnsafeCheckpointError, match="c.pth: its pickle sets the state of a StorageType"):
        load_pth(path)


def test_real_state_dicts_with_metadata_still_load(tmp_path):
    path = tmp_path / "c.pth"
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(torch.bfloat16)
    torch.save(model.state_dict(), path)  # an OrderedDict with a _metadata attribute (BUILD)
    with load_pth(path) as ckpt:
        assert set(ckpt.tensors) == {"0.weight", "0.bias", "1.weight", "1.bias"}


# -- row 8: strides and storage extents --------------------------------------------------------
def test_stride_zero_over_a_one_element_storage_is_refused(tmp_path):
    path = tmp_path / "consolidated.00.pth"
    broadcast = torch.ones(1, dtype=torch.bfloat16).expand(65536, 4096)  # strides (0, 0), 2 bytes stored
    torch.save({"tok_embeddings.weight": broadcast}, path)
    assert path.stat().st_size < 20_000
    before = set(tmp_path.iterdir())
    with pytest.raises(UnsafeCheckpointError, match=r"tok_embeddings.weight has strides \(0, 0\) that reuse "
                                                     r"stored values") as info:
        load_pth(path)
    assert "\n" not in str(info.value)
    assert set(tmp_path.iterdir()) == before


def test_overlapping_rows_are_refused(tmp_path):
    path = tmp_path / "c.pth"
    base = torch.ones(64, dtype=torch.bfloat16)
    torch.save({"w": base.as_strided((32, 32), (1, 1))}, path)  # each row starts one element later
    with pytest.raises(UnsafeCheckpointError, match="reuse stored values"):
        load_pth(path)


def test_many_tensors_over_one_storage_are_refused(tmp_path):
    path = tmp_path / "c.pth"
    shared = torch.ones(512, 512, dtype=torch.bfloat16)  # 512 KiB stored once
    torch.save({f"layers.{i}.w": shared for i in range(40)}, path)  # claims 20 MiB
    with pytest.raises(UnsafeCheckpointError, match=r"c.pth is [\d,]+ bytes but its tensors claim"):
        load_pth(path)


def test_tied_weights_and_views_still_load(tmp_path):
    path = tmp_path / "c.pth"
    embed = torch.randn(32, 8).to(torch.bfloat16)
    torch.save({"embed": embed, "output": embed, "t": embed.t(), "rows": embed[4:9]}, path)
    with load_pth(path) as ckpt:
        assert ckpt.tensors["t"].shape == (8, 32) and ckpt.tensors["rows"].shape == (5, 8)


# -- row 9: params.json ranges -----------------------------------------------------------------
SEVEN_B = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}


@pytest.mark.parametrize("change, key", [
    ({"n_layers": 1_000_000_000}, "n_layers"),
    ({"dim": 1 << 20, "n_heads": 1 << 10}, "dim"),
    ({"n_heads": 1 << 20}, "n_heads"),
    ({"vocab_size": 1 << 40}, "vocab_size"),
    ({"multiple_of": 0}, "multiple_of"),
    ({"multiple_of": 1 << 40}, "multiple_of"),
    ({"ffn_dim_multiplier": 1e300}, "ffn_dim_multiplier"),
    ({"norm_eps": 5.0}, "norm_eps"),
    ({"rope_theta": 1e300}, "rope_theta"),
    ({"max_seq_len": 1 << 40}, "context_length"),
])
def test_params_outside_sane_ranges_are_refused_at_once(change, key):
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=rf"params.json's '{key}' is .* outside the sane range") as info:
        LlamaParams.from_meta({**SEVEN_B, **change}, 32000)
    assert time.monotonic() - started < 1
    assert "\n" not in str(info.value)


def test_infinite_values_are_not_numbers():
    raw = io.StringIO('{"dim": 4096, "n_heads": 32, "n_layers": 32, "ffn_dim_multiplier": Infinity}')
    import json

    with pytest.raises(CheckpointError, match="'ffn_dim_multiplier' is inf, not a number"):
        LlamaParams.from_meta(json.load(raw), 32000)


def test_hf_config_outside_sane_ranges_is_refused():
    config = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
              "num_hidden_layers": 1_000_000_000, "vocab_size": 32000}
    with pytest.raises(CheckpointError, match="config.json's 'n_layers' is 1000000000, outside the sane range"):
        LlamaParams.from_hf(config, 32000)


def test_real_params_still_pass():
    p = LlamaParams.from_meta({**SEVEN_B, "n_kv_heads": 8, "ffn_dim_multiplier": 1.3, "rope_theta": 1e6}, 32000)
    assert p.n_layers == 32 and p.rope_theta == 1e6
