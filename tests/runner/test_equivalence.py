"""Fast layers and expert parallelism equal the per-expert reference loop (fp32, copied weights).

Pattern: databricks/megablocks tests/layers/dmoe_test.py (same weights, compare outputs).
"""

from __future__ import annotations

import pytest
import torch

from moesim.calib.layer_spec import MoELayerSpec
from moesim.runner.dist import spawn_local
from moesim.runner.ep import ep_forward_worker
from moesim.runner.layers import MoELayer, grouped_mm_support

BASE = dict(num_tokens=96, d_model=32, d_expert_ffn=48, num_experts=8, top_k=2)

ROUTERS = {
    "softmax": {},
    "softmax_unnormalised": {"norm_topk_prob": False},
    "sigmoid": {"router": "sigmoid"},
    "group_limited": {"num_groups": 4, "topk_groups": 2},
    "shared_experts": {"num_shared_experts": 2, "d_shared_ffn": 24},
    "top1": {"top_k": 1},
}


def _spec(**kw) -> MoELayerSpec:
    return MoELayerSpec(**(BASE | kw))


def _x(spec: MoELayerSpec, seed: int = 1) -> torch.Tensor:
    return torch.randn(spec.num_tokens, spec.d_model, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", sorted(ROUTERS))
def test_grouped_equals_loop_reference(case):
    spec = _spec(**ROUTERS[case])
    layer = MoELayer(spec)
    x = _x(spec)
    ref = layer(x, implementation="loop")
    out = layer(x, implementation="grouped")
    torch.testing.assert_close(out.y_TD, ref.y_TD)
    assert int(out.tokens_per_expert_E.sum()) == spec.num_tokens * spec.top_k


@pytest.mark.parametrize("case", sorted(ROUTERS))
def test_grouped_fallback_equals_loop_reference(case):
    spec = _spec(**ROUTERS[case])
    layer = MoELayer(spec)
    layer.use_grouped_mm = False
    x = _x(spec)
    torch.testing.assert_close(layer(x, implementation="grouped").y_TD, layer(x, implementation="loop").y_TD)


@pytest.mark.parametrize("case", sorted(ROUTERS))
def test_padded_without_drops_equals_loop_reference(case):
    spec = _spec(**ROUTERS[case])
    ref_layer = MoELayer(spec)
    # capacity_factor = E / K gives every expert room for all tokens: nothing can drop
    padded = MoELayer(_spec(**ROUTERS[case], implementation="padded",
                            capacity_factor=spec.num_experts / spec.top_k), weights=ref_layer.weights())
    x = _x(spec)
    out = padded(x)
    assert out.num_dropped == 0
    torch.testing.assert_close(out.y_TD, ref_layer(x, implementation="loop").y_TD)


def test_padded_drops_overflow_and_keeps_first_choices():
    spec = _spec(implementation="padded", capacity_factor=0.5)
    layer = MoELayer(spec)
    x = _x(spec)
    forced = torch.zeros(spec.num_tokens, 2, dtype=torch.int64)
    forced[:, 1] = 1  # every token: first choice expert 0, second expert 1
    out = layer(x, forced)
    C = spec.capacity
    assert out.num_dropped == 2 * (spec.num_tokens - C)
    # the kept rows are tokens 0..C-1 (first come) for both experts
    ref = MoELayer(_spec(), weights=layer.weights())
    keep_forced = forced.clone()
    y_ref = ref(x, keep_forced, implementation="loop").y_TD
    torch.testing.assert_close(out.y_TD[:C], y_ref[:C])
    assert torch.count_nonzero(out.y_TD[C:]) == 0


def test_expert_choice_padded_and_grouped_equal_loop():
    spec = _spec(router="expert_choice", capacity_factor=1.5)
    layer = MoELayer(spec)
    padded = MoELayer(_spec(router="expert_choice", capacity_factor=1.5, implementation="padded"),
                      weights=layer.weights())
    x = _x(spec)
    ref = layer(x, implementation="loop")
    assert int(ref.tokens_per_expert_E.min()) == int(ref.tokens_per_expert_E.max()) == spec.capacity
    torch.testing.assert_close(layer(x, implementation="grouped").y_TD, ref.y_TD)
    torch.testing.assert_close(padded(x).y_TD, ref.y_TD)


def test_forced_routing_sets_tokens_per_expert():
    spec = _spec()
    layer = MoELayer(spec)
    forced = torch.tensor([[0, 3]] * 50 + [[3, 5]] * 46)
    out = layer(_x(spec), forced)
    assert out.tokens_per_expert_E.tolist() == [50, 0, 0, 96, 0, 46, 0, 0]


def test_grouped_mm_support_reports_its_backend():
    ok, detail = grouped_mm_support(torch.device("cpu"), torch.float32)
    assert ("grouped_mm" in detail) if ok else ("fallback" in detail)


@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_two_process_expert_parallel_over_gloo_equals_reference(impl):
    R = 2
    spec = _spec(implementation=impl, ep_size=R, num_shared_experts=1)
    ref_layer = MoELayer(_spec(num_shared_experts=1))
    x_RTD = torch.randn(R, spec.num_tokens, spec.d_model, generator=torch.Generator().manual_seed(3))
    # skewed forced routing so the ranks exchange unequal row counts
    g = torch.Generator().manual_seed(4)
    forced_RTK = torch.stack([torch.multinomial(torch.tensor([8.0, 4, 2, 1, 1, 1, 1, 1]), 2, generator=g)
                              for _ in range(R * spec.num_tokens)]).view(R, spec.num_tokens, 2)
    results = spawn_local(ep_forward_worker, R, spec, ref_layer.weights(), x_RTD, forced_RTK)
    for r in range(R):
        ref = ref_layer(x_RTD[r], forced_RTK[r], implementation="loop").y_TD
        torch.testing.assert_close(results[r]["y_TD"], ref)
    assert results[0]["a2a_method"] in ("all_to_all_single", "all_to_all", "send_recv")


def test_torchrun_launch_runs_expert_parallel_and_matches_the_reference():
    import json
    import subprocess
    import sys
    from pathlib import Path

    from moesim.runner.dist import free_port

    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "moesim.runner.ep_main", "--device", "cpu", "--num-tokens", "64", "--d-model", "32",
           "--d-expert-ffn", "48", "--num-experts", "4", "--routing", "zipf:1.0", "--check", "--target-s", "0.01"]
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=180,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["world_size"] == 2 and out["backend"] == "gloo"
    assert out["max_abs_error"] < 1e-5
    assert out["median_s"] > 0
