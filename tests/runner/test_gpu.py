"""CUDA paths: grouped GEMM, NCCL expert parallelism, device-event timing, predicted peak memory.

Marked ``gpu`` (deselected by default; run with ``pytest -m gpu`` on a machine with a CUDA GPU).
The CPU-side tests at the bottom check only the selection logic that picks the CUDA paths.
"""

from __future__ import annotations

import pytest
import torch

from moesim.calib.layer_model import layer_peak_memory
from moesim.calib.layer_spec import MoELayerSpec
from moesim.runner.dist import backend_for
from moesim.runner.layers import MoELayer
from moesim.runner.timing import CacheFlusher, L2_FLUSH_BYTES, bench

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _spec(**kw) -> MoELayerSpec:
    return MoELayerSpec(**({"num_tokens": 4096, "d_model": 2048, "d_expert_ffn": 1024, "num_experts": 16, "top_k": 4,
                            "dtype": "bf16"} | kw))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("impl", ["grouped", "padded", "loop"])
def test_predicted_peak_memory_matches_the_allocator_within_a_quarter(impl):
    spec = _spec(implementation=impl, capacity_factor=1.25 if impl == "padded" else None)
    dev = torch.device("cuda", 0)
    layer = MoELayer(spec, device=dev)
    x = torch.randn(spec.num_tokens, spec.d_model, device=dev, dtype=layer.dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)  # weights and input
    with torch.inference_mode():
        out = layer(x)
    torch.cuda.synchronize()
    measured_act = torch.cuda.max_memory_allocated(dev) - base
    pred = layer_peak_memory(spec, out.tokens_per_expert_E.tolist())
    weights = sum(t.numel() * t.element_size() for t in layer.weights().values())
    assert pred.weight_bytes == pytest.approx(weights, rel=1e-6)
    assert pred.activation_peak_bytes == pytest.approx(measured_act, rel=0.25)


@pytest.mark.gpu
@needs_cuda
def test_grouped_bf16_on_cuda_matches_the_loop_reference():
    spec = _spec(num_tokens=512)
    layer = MoELayer(spec, device="cuda")
    x = torch.randn(spec.num_tokens, spec.d_model, device="cuda", dtype=torch.bfloat16)
    ref = layer(x, implementation="loop").y_TD.float()
    torch.testing.assert_close(layer(x, implementation="grouped").y_TD.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@needs_cuda
def test_cuda_bench_uses_events_and_flushes_l2():
    a = torch.randn(2048, 2048, device="cuda")
    t = bench(lambda: a @ a, "cuda", warmup=2, min_reps=5, max_reps=10, target_s=0.0)
    assert t.num_samples >= 5 and 0 < t.p10_s <= t.median_s <= t.p90_s
    assert CacheFlusher(torch.device("cuda")).buf.numel() * 4 == L2_FLUSH_BYTES


# ------------------------------------------------------------------ selection logic, on any machine


def test_backend_is_nccl_for_cuda_and_gloo_for_cpu():
    assert backend_for("cuda") == "nccl"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for("cpu") == "gloo"


def test_cpu_cache_flush_is_larger_than_the_last_level_cache():
    from moesim.runner.timing import last_level_cache_bytes

    assert CacheFlusher(torch.device("cpu")).buf.numel() * 4 >= min(2 * last_level_cache_bytes(), 512 * 2**20)
