"""The fused MoE's permute at EP 1: a separate gather pass (Megatron-Core, TensorRT-LLM) or the up GEMM loading
each copy's row itself (vLLM / SGLang): schedule.gather_in_gemm."""

from __future__ import annotations

import pytest

from moesim.scenario import scenario_from_dict
from moesim.step.estimate import estimate


def _serve(ep: int = 1, **schedule):
    raw = {"name": "t", "model": "mixtral-8x7b", "hardware": "h100-sxm", "num_gpus": 8,
           "layout": {"tp": 8, "ep": ep} if ep == 1 else {"tp": 1, "ep": ep},
           "workload": {"kind": "serve", "phase": "prefill", "batch_size": 4, "prompt_tokens": 2048}}
    if schedule:
        raw["schedule"] = schedule
    return scenario_from_dict(raw, "test")


def _train(**schedule):
    raw = {"name": "t", "model": "mixtral-8x7b", "hardware": "h100-sxm", "num_gpus": 8,
           "layout": {"tp": 8},
           "workload": {"kind": "train", "seq_len": 2048, "global_batch_size": 8}}
    if schedule:
        raw["schedule"] = schedule
    return scenario_from_dict(raw, "test")


def _dispatch_s(est) -> float:
    return est.time_by_stage_s.get("dispatch", 0.0)


def test_serving_at_ep1_has_no_gather_pass_by_default():
    auto, off = estimate(_serve()), estimate(_serve(gather_in_gemm="off"))
    names = {o.kind for o in auto.ops}
    assert "dispatch" in names  # the id-alignment kernel remains
    # the separate gather moves 2 x copies x h x 2 bytes per layer; without it dispatch is only the id sort
    assert _dispatch_s(auto) < 0.05 * _dispatch_s(off)
    assert auto.ttft_s < off.ttft_s
    assert estimate(_serve(gather_in_gemm="on")).ttft_s == auto.ttft_s


def test_training_and_expert_parallel_serving_keep_the_permute():
    assert estimate(_train()).step_s == estimate(_train(gather_in_gemm="off")).step_s
    assert estimate(_train(gather_in_gemm="on")).step_s < estimate(_train()).step_s
    ep = estimate(_serve(ep=8))
    assert ep.ttft_s == estimate(_serve(ep=8, gather_in_gemm="off")).ttft_s  # packing for the all-to-all stays


def test_a_bad_gather_setting_exits_2_naming_the_field(run_cli):
    res = run_cli("estimate", "--set", "schedule.gather_in_gemm=maybe")
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert "\n" not in line and "gather_in_gemm" in line and "Traceback" not in line
