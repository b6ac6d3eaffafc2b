"""Reading torch.save files without torch: the values come back exactly, and a pickle that
tries to run code is refused before anything runs."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llamalab.convert.pth import load_pth  # noqa: E402
from llamalab.convert.source import convert_block  # noqa: E402
from llamalab.errors import CheckpointError, UnsafeCheckpointError  # noqa: E402


def as_float32(tensor) -> np.ndarray:
    return tensor.to(torch.float32).numpy()


def read(checkpoint, name: str) -> np.ndarray:
    t = checkpoint.tensors[name]
    return convert_block(np.array(t.raw()), t.dtype, "F32")


def test_plain_tensors_of_every_float_type_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 10, generator=g)
    state = {
        "bf16": base.to(torch.bfloat16),
        "f16": base.to(torch.float16),
        "f32": base.clone(),
        "vector": torch.randn(7, generator=g).to(torch.bfloat16),
        "transposed": base.t(),  # non-contiguous: strides (1, 10)
        "row_slice": base[2:5],  # shares a storage, starts at an offset
        "column_slice": base[:, 3:8],
    }
    path = tmp_path / "consolidated.00.pth"
    torch.save(state, path)
    with load_pth(path) as ckpt:
        assert set(ckpt.tensors) == set(state)
        for name, value in state.items():
            got = read(ckpt, name)
            assert got.shape == tuple(value.shape), name
            assert np.array_equal(got, as_float32(value)), name
        assert ckpt.tensors["bf16"].dtype == "BF16" and ckpt.tensors["f16"].dtype == "F16"


def test_training_checkpoints_with_a_model_key_and_parameters(tmp_path):
    layer = torch.nn.Linear(4, 3)
    path = tmp_path / "model.pth"
    torch.save({"model": layer.state_dict(keep_vars=True)}, path)  # nn.Parameter objects
    with load_pth(path) as ckpt:
        assert np.array_equal(read(ckpt, "weight"), layer.weight.detach().numpy())


def test_reading_never_imports_torch(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, path)
    code = ("import sys; from llamalab.convert.pth import load_pth; c = load_pth(sys.argv[1]); "
            "print(c.tensors['w'].shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(2,", "2)", "False"]


class Payload:
    """What an attacker plants: unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def plant(path: Path, payload: object) -> None:
    """Replace the state dict pickled in a real torch.save file by one holding ``payload``."""
    torch.save({"w": torch.ones(2, 2, dtype=torch.bfloat16)}, path)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    name = next(n for n in members if n.endswith("data.pkl"))
    members[name] = pickle.dumps({"w": payload}, protocol=2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for member, data in members.items():
            z.writestr(member, data)


def test_a_reduce_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "consolidated.00.pth"
    plant(path, Payload(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"(__builtin__|builtins)\.exec.*nothing in the file was run"):
        load_pth(path)
    assert not marker.exists()
    # The payload is real: torch.load without weights_only runs it (in a child process).
    subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
                    str(path)], capture_output=True, timeout=120)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("target", ["os.system", "subprocess.Popen", "torch._tensor._rebuild_from_type_v2",
                                    "torch.serialization._get_layout", "builtins.getattr"])
def test_any_other_global_is_refused(tmp_path, target):
    module, name = target.rsplit(".", 1)
    blob = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    path = tmp_path / "x.pth"
    plant(path, None)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    members[next(n for n in members if n.endswith("data.pkl"))] = blob
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    with pytest.raises(UnsafeCheckpointError, match=f"'{target}'"):
        load_pth(path)


def test_truncated_and_foreign_files_are_named(tmp_path):
    path = tmp_path / "consolidated.00.pth"
    torch.save({"w": torch.ones(64, 64, dtype=torch.bfloat16)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="consolidated.00.pth is truncated"):
        load_pth(path)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        load_pth(legacy)
    other = tmp_path / "notes.pth"
    other.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_pth(other)


def test_a_storage_shorter_than_its_tensor_is_damage(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"w": torch.ones(16, 16, dtype=torch.bfloat16)}, path)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    storage = next(n for n in members if "/data/" in n and not n.endswith(".pkl"))
    members[storage] = members[storage][:100]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for member, data in members.items():
            z.writestr(member, data)
    with pytest.raises(CheckpointError, match="c.pth is damaged: a tensor runs past the end of its storage"):
        load_pth(path)


def test_integer_tensors_are_refused_clearly(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"step": torch.tensor([1, 2, 3])}, path)
    with pytest.raises(CheckpointError, match="LongStorage tensors; llamalab converts bf16, f16 and f32"):
        load_pth(path)
