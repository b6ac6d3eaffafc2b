"""Peak memory of a conversion is bounded by a few tensors, not by the model.

The checkpoint has a 16k-piece vocabulary (user-defined pieces added to the tokenizer), so
its embedding and output matrices are each 16x a layer's attention matrix, and 48 layers,
so the model is ~12x its largest tensor. Python/numpy allocations are traced with
tracemalloc; resident memory is read from /proc (its peak reset first) where Linux offers it.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.fixtures.meta_checkpoint import Spec, make_weights, write_meta_checkpoint  # noqa: E402

SPEC = Spec(dim=256, n_layers=48, n_heads=4, multiple_of=256)
MB = 1 << 20


def big_vocab_tokenizer(folder: Path, extra: int = 15872) -> Path:
    """The test tokenizer with ``extra`` user-defined pieces: a Llama-sized vocabulary, quickly."""
    import io

    import numpy as np
    import sentencepiece as spm

    from tests.fixtures.tiny_llama import CORPUS_WORDS

    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(CORPUS_WORDS, size=12)) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=512 + extra, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        user_defined_symbols=[f"<extra_{i}>" for i in range(extra)])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return folder / "tokenizer.model"


def _proc_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def test_peak_memory_is_a_few_tensors_not_the_model(tmp_path, tmp_store):
    import sentencepiece as spm

    from llamalab.convert import convert_checkpoint
    from llamalab.convert.source import conversion_threads
    from llamalab.gguf_info import read_gguf_info

    tokenizer = big_vocab_tokenizer(tmp_path / "tok")
    n_vocab = spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size()
    weights = make_weights(SPEC, n_vocab)
    folder = write_meta_checkpoint(tmp_path / "llama-2-7b", weights, SPEC, 2, tokenizer)
    del weights
    gc.collect()

    rss_before = _proc_kb("VmRSS")
    can_measure_rss = _reset_peak_rss()
    tracemalloc.start()
    try:
        out = convert_checkpoint(folder, tmp_path / "m.gguf", "f16", accept_license=True, store=tmp_store)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_peak = _proc_kb("VmHWM")

    info = read_gguf_info(out)
    model_bytes = info.tensor_bytes
    largest = max(t.n_bytes for t in info.tensors)
    assert largest >= 14 * 2 * SPEC.dim * SPEC.dim and model_bytes >= 11 * largest  # the shape of the test
    print(f"\nmodel {model_bytes / MB:.1f} MB, largest tensor {largest / MB:.1f} MB, "
          f"traced peak {traced_peak / MB:.1f} MB" +
          (f", RSS peak over start {(rss_peak - rss_before) / 1024:.1f} MB" if can_measure_rss else ""))
    # Two output buffers of the largest tensor's size (one written while the next is built), per
    # converting thread (the pool's and the main thread's) a 4 MB scratch and a 2 MB staging
    # buffer, the vocabulary and header (~5-10 MB for 16k pieces).
    assert traced_peak < 2 * largest + (conversion_threads() + 1) * 6 * MB + 12 * MB
    assert traced_peak < model_bytes / 2
    if can_measure_rss and rss_before and rss_peak:
        assert (rss_peak - rss_before) * 1024 < 2 * largest + 32 * MB
