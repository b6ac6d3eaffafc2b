"""The doctor report: build facts, GPUs, and per-model fit, including the README's example."""

from __future__ import annotations

import re

from llamalab import doctor, hardware
from tests.conftest import REPO

RTX_4090 = hardware.GPU(index=0, name="NVIDIA GeForce RTX 4090", total_bytes=int(25.4e9), free_bytes=int(23.1e9))


def test_readme_doctor_example_is_what_the_estimator_says():
    """The README shows doctor's lines for three Llama-2 models on a 24 GB card: keep them true."""
    readme = (REPO / "README.md").read_text()
    shown = [line for line in readme.splitlines() if re.match(r"^  llama-2-\d+b-chat:", line)]
    assert len(shown) == 3
    fits = [doctor.fit_model(f"llama-2-{size.lower()}-chat:{quant}", hardware.llama2_info(size, quant), 4096,
                             [RTX_4090], True)
            for size, quant in (("7B", "q4_k_m"), ("13B", "q8_0"), ("70B", "q4_k_m"))]
    report = doctor.DoctorReport("0", "0.3.x", True, "", [RTX_4090], 4096, "~/.cache/llamalab", fits)
    text = doctor.format_report(report)
    for line in shown:
        assert line in text.splitlines()
    assert "[0] NVIDIA GeForce RTX 4090: 23.1 GB free of 25.4 GB" in text


def test_report_on_this_machine_lists_store_models(tmp_store, demo_model, tmp_path):
    tmp_store.register("smol", demo_model, source="test")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(demo_model.read_bytes()[:1000])
    tmp_store.register("smol2", demo_model, source="test")
    tmp_store._write({**tmp_store._read(), "broken": {**tmp_store._read()["smol2"], "name": "broken",
                                                    "path": str(broken)}})
    report = doctor.build_report(store=tmp_store, gpus=[], offload_supported=False)
    names = {m.name: m for m in report.models}
    assert names["smol"].needed_bytes > names["smol"].file_bytes * 0.9 and names["smol"].n_gpu_layers == 0
    assert names["broken"].problem and "truncated" in names["broken"].problem
    text = doctor.format_report(report)
    assert "GPUs: none found" in text and "CPU only" in text
    assert hardware.CUDA_INSTALL_HINT in text  # the CPU-only build says how to get CUDA


def test_gpu_present_but_everything_fits_or_partially(tmp_store, demo_model):
    tmp_store.register("smol", demo_model, source="test")
    big = hardware.GPU(0, "Big", 80 * 2**30, 79 * 2**30)
    report = doctor.build_report(store=tmp_store, gpus=[big], offload_supported=True)
    assert report.models[0].fits_fully and report.models[0].n_gpu_layers == report.models[0].total_layers
    assert "all on GPU" in doctor.format_report(report) and not report.notices
    tiny = hardware.GPU(0, "Tiny", 2**30, 600 * 2**20)
    partial = doctor.fit_model("70b", hardware.llama2_info("70B", "q4_k_m"), 4096, [tiny], True)
    assert partial.n_gpu_layers == 0 and not partial.fits_fully


def test_a_model_with_odd_metadata_gets_its_problem_on_its_line(tmp_store, demo_model, tmp_path):
    """A GGUF without ``llama.block_count`` cannot be sized; the rest of the report still is."""
    import gguf
    import numpy as np

    odd = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(odd), "llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_file_type(1)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp_store.register("smol", demo_model, source="test")
    tmp_store.register("odd", odd, source="test")
    report = doctor.build_report(store=tmp_store, gpus=[RTX_4090], offload_supported=True)
    names = {m.name: m for m in report.models}
    assert names["odd"].problem and "block_count" in names["odd"].problem and not names["odd"].fits_fully
    assert names["smol"].problem is None and names["smol"].fits_fully
    assert "odd" in doctor.format_report(report)
