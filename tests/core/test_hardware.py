"""Tests for llamalab.hardware: GPU detection, the memory estimator and the offload planner.

This machine has no GPU and a CPU-only llama.cpp build, so GPUs are injected (``gpus=`` or a fake
``nvidia-smi`` runner); the planner is checked against published Llama-2 GGUF sizes and the
VRAM guidance people follow in practice.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from llamalab.errors import ConfigError
from llamalab.hardware import (
    CUDA_INSTALL_HINT,
    GPU,
    MemoryEstimate,
    detect_gpus,
    estimate_for,
    estimate_memory,
    gpu_offload_supported,
    llama2_info,
    llama2_tensors,
    plan_offload,
)
from llamalab.gguf_info import TensorInfo

GiB = 2**30
MiB = 2**20

# File sizes (decimal GB) of the widely used Llama-2 GGUFs made with llama.cpp's converter and
# quantizer (TheBloke/Llama-2-{7B,13B,70B}-GGUF model cards); metadata adds well under 1 MB.
PUBLISHED_GB = {
    ("7b", "f16"): 13.48, ("7b", "q8_0"): 7.16, ("7b", "q4_k_m"): 4.08,
    ("13b", "f16"): 26.03, ("13b", "q8_0"): 13.83, ("13b", "q4_k_m"): 7.87,
    ("70b", "f16"): 137.97, ("70b", "q8_0"): 73.29, ("70b", "q4_k_m"): 41.42,
}


def card(gib: int, index: int = 0, used_mib: int = 300) -> GPU:
    """A GPU of ``gib`` GiB with ``used_mib`` already taken by the driver/desktop."""
    return GPU(index=index, name=f"Test {gib} GB", total_bytes=gib * GiB, free_bytes=gib * GiB - used_mib * MiB)


def plan(size: str, quant: str, gpu: GPU | None, n_ctx: int = 4096, requested: int | str = "auto"):
    return plan_offload(llama2_info(size, quant), n_ctx, requested,
                        gpus=[gpu] if gpu else [], offload_supported=True)


# --------------------------------------------------------------------------- llama2_tensors


@pytest.mark.parametrize(("size", "quant"), sorted(PUBLISHED_GB))
def test_llama2_totals_match_published_file_sizes(size, quant):
    total = sum(t.n_bytes for t in llama2_tensors(size, quant))
    published = PUBLISHED_GB[(size, quant)] * 1e9
    assert abs(total - published) / published < 0.03


@pytest.mark.parametrize(("size", "n_layer", "n_embd", "n_kv", "n_ff"),
                         [("7b", 32, 4096, 4096, 11008), ("13b", 40, 5120, 5120, 13824),
                          ("70b", 80, 8192, 1024, 28672)])
def test_llama2_tensor_names_and_shapes(size, n_layer, n_embd, n_kv, n_ff):
    tensors = {t.name: t for t in llama2_tensors(size, "f16")}
    assert len(tensors) == 9 * n_layer + 3
    assert tensors["token_embd.weight"].shape == (n_embd, 32000)
    assert tensors["output.weight"].shape == (n_embd, 32000)
    last = n_layer - 1
    assert tensors[f"blk.{last}.attn_k.weight"].shape == (n_embd, n_kv)
    assert tensors[f"blk.{last}.attn_v.weight"].shape == (n_embd, n_kv)
    assert tensors[f"blk.{last}.ffn_down.weight"].shape == (n_ff, n_embd)
    assert tensors[f"blk.{last}.ffn_gate.weight"].shape == (n_embd, n_ff)
    for name, t in tensors.items():
        expected = "F32" if "norm" in name else "F16"
        assert t.ggml_type == expected, name
        assert t.n_bytes == (4 if expected == "F32" else 2) * _elements(t.shape)


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_q4_k_m_mix_follows_llama_cpp():
    tensors = {t.name: t for t in llama2_tensors("7b", "q4_k_m")}
    assert tensors["output.weight"].ggml_type == "Q6_K"
    assert tensors["token_embd.weight"].ggml_type == "Q4_K"
    assert tensors["blk.5.attn_norm.weight"].ggml_type == "F32"
    # llama.cpp's "use_more_bits" layers for 32 blocks: first 4, last 4, and every third between.
    more_bits = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    for i in range(32):
        want = "Q6_K" if i in more_bits else "Q4_K"
        assert tensors[f"blk.{i}.ffn_down.weight"].ggml_type == want
        assert tensors[f"blk.{i}.attn_v.weight"].ggml_type == want
        assert tensors[f"blk.{i}.attn_q.weight"].ggml_type == "Q4_K"
        assert tensors[f"blk.{i}.ffn_up.weight"].ggml_type == "Q4_K"
    # Q4_K stores 256 weights in 144 bytes.
    assert tensors["blk.4.attn_q.weight"].n_bytes == 4096 * 4096 // 256 * 144


def test_q4_k_m_70b_gives_gqa_attn_v_more_bits():
    tensors = {t.name: t for t in llama2_tensors("70b", "q4_k_m")}
    assert tensors["blk.0.attn_v.weight"].ggml_type == "Q6_K"   # a use_more_bits layer
    assert tensors["blk.10.attn_v.weight"].ggml_type == "Q5_K"  # 70B bump from Q4_K
    assert tensors["blk.10.ffn_down.weight"].ggml_type == "Q4_K"


def test_llama2_info_and_bad_names():
    info = llama2_info("13B", "Q8_0", context_length=2048)
    assert (info.block_count, info.embedding_length, info.head_count, info.head_count_kv) == (40, 5120, 40, 40)
    assert info.context_length == 2048 and info.quantization == "Q8_0"
    assert info.size_bytes == sum(t.n_bytes for t in info.tensors)
    with pytest.raises(ConfigError):
        llama2_tensors("34b", "f16")
    with pytest.raises(ConfigError):
        llama2_info("7b", "q3_k_s")


# --------------------------------------------------------------------------- estimator


def test_kv_cache_7b_is_2_gib_at_4096():
    assert estimate_for(llama2_info("7b", "q4_k_m"), 4096).kv_cache_bytes == 2 * GiB


def test_kv_cache_70b_gqa_is_an_eighth_of_full_attention():
    est = estimate_for(llama2_info("70b", "q4_k_m"), 4096)
    assert est.kv_cache_bytes == 1.25 * GiB
    full = estimate_memory(llama2_tensors("70b", "q4_k_m"), block_count=80, n_ctx=4096,
                           n_embd=8192, n_head=64, n_head_kv=64)
    assert full.kv_cache_bytes == 8 * est.kv_cache_bytes


def test_kv_cache_scales_with_context_and_type():
    info = llama2_info("7b", "q4_k_m")
    assert estimate_for(info, 2048).kv_cache_bytes == 1 * GiB
    q8 = estimate_memory(info.tensors, block_count=32, n_ctx=4096, n_embd=4096, n_head=32,
                         n_head_kv=32, kv_type="Q8_0")
    assert q8.kv_cache_bytes == 2 * GiB * 34 // 32 // 2  # Q8_0: 32 values in 34 bytes
    with pytest.raises(ConfigError):
        estimate_memory(info.tensors, block_count=32, n_ctx=4096, n_embd=4096, n_head=32,
                        n_head_kv=32, kv_type="F13")


def test_estimate_splits_weights_like_llama_cpp():
    info = llama2_info("7b", "q4_k_m")
    est = estimate_for(info, 4096)
    by_name = {t.name: t.n_bytes for t in info.tensors}
    assert est.input_bytes == by_name["token_embd.weight"]
    assert est.output_bytes == by_name["output.weight"] + by_name["output_norm.weight"]
    assert len(est.layer_bytes) == 32
    kv_share = est.kv_cache_bytes // 32
    assert est.layer_bytes[0] == sum(n for k, n in by_name.items() if k.startswith("blk.0.")) + kv_share
    weights = sum(by_name.values())
    assert est.total_bytes == weights + est.kv_cache_bytes + est.compute_bytes
    assert 100 * MiB < est.compute_bytes < 1 * GiB


def test_gpu_bytes_offloads_last_layers_then_output():
    est = estimate_for(llama2_info("7b", "q4_k_m"), 4096)
    assert est.gpu_bytes(0) == 0
    assert est.gpu_bytes(1) == est.layer_bytes[-1] + est.compute_bytes
    assert est.gpu_bytes(33) - est.gpu_bytes(32) == est.output_bytes
    assert est.gpu_bytes(33) == est.total_bytes - est.input_bytes
    assert est.gpu_bytes(1000) == est.gpu_bytes(33)
    values = [est.gpu_bytes(n) for n in range(34)]
    assert values == sorted(values)


def test_tied_embeddings_are_duplicated_as_output():
    tensors = [TensorInfo("token_embd.weight", "F16", (64, 100), 64 * 100 * 2),
               TensorInfo("output_norm.weight", "F32", (64,), 256),
               TensorInfo("blk.0.attn_q.weight", "F16", (64, 64), 64 * 64 * 2)]
    est = estimate_memory(tensors, block_count=1, n_ctx=16, n_embd=64, n_head=4, n_head_kv=4)
    assert est.input_bytes == 64 * 100 * 2
    assert est.output_bytes == 64 * 100 * 2 + 256


def test_estimate_rejects_nonsense_metadata():
    with pytest.raises(ConfigError):
        estimate_memory([], block_count=0, n_ctx=4096, n_embd=4096, n_head=32, n_head_kv=32)
    with pytest.raises(ConfigError):
        estimate_memory([], block_count=32, n_ctx=0, n_embd=4096, n_head=32, n_head_kv=32)


# --------------------------------------------------------------------------- real-world fit


@pytest.mark.parametrize(("size", "quant", "gib"), [
    ("7b", "q4_k_m", 8),     # 7B Q4 runs fully on an 8 GB card at 4k context
    ("7b", "q4_k_m", 10),
    ("7b", "f16", 24),       # 7B f16 (~13.5 GB) fits a 24 GB card
    ("13b", "q4_k_m", 12),   # 13B Q4 on a 12 GB card
    ("13b", "q8_0", 24),
    ("70b", "q4_k_m", 80),   # 70B Q4 (~41 GB) on one 80 GB A100/H100
])
def test_fits_fully(size, quant, gib):
    p = plan(size, quant, card(gib))
    assert p.n_gpu_layers == p.total_layers
    assert p.fits_fully
    assert p.vram_needed_bytes < p.vram_free_bytes


@pytest.mark.parametrize(("size", "quant", "gib"), [
    ("7b", "f16", 10),
    ("13b", "f16", 24),      # ~26 GB of weights alone
    ("70b", "f16", 80),      # ~138 GB
    ("70b", "q4_k_m", 24),
])
def test_partial_offload(size, quant, gib):
    p = plan(size, quant, card(gib))
    assert 0 < p.n_gpu_layers < p.total_layers
    assert not p.fits_fully
    assert p.vram_needed_bytes > p.vram_free_bytes
    assert p.notices  # says what would let more layers fit


def test_total_layers_is_block_count_plus_output():
    assert plan("70b", "f16", card(80)).total_layers == 81
    assert plan("7b", "f16", card(80)).total_layers == 33


@pytest.mark.parametrize(("size", "quant"), [("7b", "f16"), ("13b", "q4_k_m"), ("70b", "q8_0")])
def test_more_free_vram_never_gives_fewer_layers(size, quant):
    info = llama2_info(size, quant)
    previous = 0
    for free_gib in range(0, 161, 2):
        gpu = GPU(0, "t", 200 * GiB, free_gib * GiB)
        p = plan_offload(info, 4096, gpus=[gpu], offload_supported=True)
        assert previous <= p.n_gpu_layers <= p.total_layers
        previous = p.n_gpu_layers
    assert previous == info.block_count + 1


def test_auto_uses_exactly_the_free_memory_less_the_reserve():
    info = llama2_info("7b", "q4_k_m")
    need = estimate_for(info, 4096).gpu_bytes(33)
    reserve = 256 * MiB
    exact = GPU(0, "t", 16 * GiB, need + reserve)
    short = GPU(0, "t", 16 * GiB, need + reserve - 1)
    assert plan_offload(info, 4096, gpus=[exact], offload_supported=True, reserve_bytes=reserve).n_gpu_layers == 33
    assert plan_offload(info, 4096, gpus=[short], offload_supported=True, reserve_bytes=reserve).n_gpu_layers == 32


def test_longer_context_offloads_fewer_layers():
    short = plan("13b", "q8_0", card(12), n_ctx=2048)
    long = plan("13b", "q8_0", card(12), n_ctx=4096)
    assert long.n_gpu_layers < short.n_gpu_layers


def test_auto_plans_for_the_gpu_with_most_free_memory():
    info = llama2_info("13b", "q8_0")
    small, big = card(8, index=0), card(24, index=1)
    both = plan_offload(info, 4096, gpus=[small, big], offload_supported=True)
    only_big = plan_offload(info, 4096, gpus=[big], offload_supported=True)
    assert both.n_gpu_layers == only_big.n_gpu_layers == 41
    assert both.vram_free_bytes == big.free_bytes
    assert "GPU 1" in both.reason


# --------------------------------------------------------------------------- no GPU / explicit


def test_cpu_only_build_gives_zero_layers_and_the_cuda_hint():
    p = plan_offload(llama2_info("7b", "q4_k_m"), 4096, gpus=[card(80)], offload_supported=False)
    assert p.n_gpu_layers == 0
    assert not p.fits_fully
    assert any(CUDA_INSTALL_HINT in n for n in p.notices)
    assert "-DGGML_CUDA=on" in CUDA_INSTALL_HINT


def test_no_gpu_gives_zero_layers():
    p = plan("7b", "q4_k_m", None)
    assert p.n_gpu_layers == 0
    assert p.vram_free_bytes == 0
    assert "no NVIDIA GPU" in p.reason


@pytest.mark.parametrize(("requested", "expected"), [(20, 20), (0, 0), (-1, 33), (500, 33), ("12", 12), ("AUTO", 33)])
def test_requested_counts(requested, expected):
    assert plan("7b", "q4_k_m", card(24), requested=requested).n_gpu_layers == expected


def test_explicit_count_is_honoured_with_a_notice_when_it_will_not_fit():
    p = plan("7b", "f16", card(10), requested=-1)
    assert p.n_gpu_layers == 33
    assert p.notices and "auto" in p.notices[0]
    p = plan_offload(llama2_info("7b", "f16"), 4096, 10, gpus=[], offload_supported=False)
    assert p.n_gpu_layers == 10
    assert any(CUDA_INSTALL_HINT in n for n in p.notices)


@pytest.mark.parametrize("bad", ["all", "", "max", "-2", -5, 2.5, True, None])
def test_bad_requested_raises_config_error(bad):
    with pytest.raises(ConfigError) as info:
        plan("7b", "q4_k_m", card(24), requested=bad)
    assert "\n" not in str(info.value)
    assert "auto" in str(info.value)


# --------------------------------------------------------------------------- detection


NVIDIA_SMI_TWO_GPUS = "0, NVIDIA GeForce RTX 3090, 24576, 23800\n1, NVIDIA A100-SXM4-80GB, 81920, 81050\n"


def test_detect_gpus_parses_nvidia_smi():
    calls = []

    def run(cmd):
        calls.append(cmd)
        return NVIDIA_SMI_TWO_GPUS

    gpus = detect_gpus(run=run)
    assert calls and calls[0][0] == "nvidia-smi"
    assert any("memory.free" in part for part in calls[0])
    assert gpus == [GPU(0, "NVIDIA GeForce RTX 3090", 24576 * MiB, 23800 * MiB),
                    GPU(1, "NVIDIA A100-SXM4-80GB", 81920 * MiB, 81050 * MiB)]


@pytest.mark.parametrize("error", [FileNotFoundError("nvidia-smi"),
                                   subprocess.CalledProcessError(9, ["nvidia-smi"]),
                                   subprocess.TimeoutExpired(["nvidia-smi"], 5)])
def test_detect_gpus_returns_empty_when_the_command_fails(error):
    def run(cmd):
        raise error

    assert detect_gpus(run=run) == []


def test_detect_gpus_ignores_unparseable_output():
    text = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n0, X, [N/A], [N/A]\n"
    assert detect_gpus(run=lambda cmd: text) == []


def test_detect_gpus_on_this_machine_does_not_raise():
    gpus = detect_gpus()  # no GPU here, so normally []; a lent GPU machine lists its cards
    assert isinstance(gpus, list)
    assert all(isinstance(g, GPU) and 0 <= g.free_bytes <= g.total_bytes for g in gpus)


def test_gpu_offload_supported_matches_llama_cpp():
    llama_cpp = pytest.importorskip("llama_cpp")
    # This machine's build is CPU-only, so this is False here; a CUDA build makes it True.
    assert gpu_offload_supported() is bool(llama_cpp.llama_supports_gpu_offload())


def test_gpu_offload_supported_false_without_llama_cpp(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    assert gpu_offload_supported() is False


def test_planning_prints_nothing(capsys):
    plan_offload(llama2_info("7b", "q4_k_m"), 4096)  # real detection on this machine
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_memory_estimate_is_frozen():
    est = MemoryEstimate((1, 2), 3, 4, 0, 5)
    with pytest.raises(AttributeError):
        est.output_bytes = 7  # type: ignore[misc]
    assert est.total_bytes == 15


def test_the_kv_cache_of_all_slots_is_planned_with_the_offload():
    """Slots share one KV cache of kv_size cells: 8 windows of 4096 for a 7B (16 GiB of f16 KV)
    no longer fit a 16 GB card beside the Q4 weights, so auto offload keeps layers on the CPU."""
    info = llama2_info("7b", "q4_k_m")
    gpu = [card(16)]
    one = plan_offload(info, 4096, "auto", gpus=gpu, offload_supported=True)
    eight = plan_offload(info, 4096, "auto", gpus=gpu, offload_supported=True, kv_size=8 * 4096)
    assert one.fits_fully and not eight.fits_fully
    assert eight.vram_needed_bytes - one.vram_needed_bytes >= 7 * 2 * GiB - GiB // 8
    assert eight.n_gpu_layers < one.n_gpu_layers
