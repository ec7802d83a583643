"""Routed experts in their own precision (FP4 MoE checkpoints with FP8 elsewhere): workload.expert_compute_dtype
and workload.expert_weight_dtype."""

from __future__ import annotations

import pytest

from moesim.catalog import load_model
from moesim.layer import SCALE_BYTES_PER_ELEMENT, GemmShape, Op, low_precision_ops
from moesim.ops import OpKind
from moesim.scenario import scenario_from_dict
from moesim.step.estimate import estimate, serve_weight_dtypes


def _ops():
    g = GemmShape(m=64.0, n=4096.0, k=7168.0, groups=8.0)
    return [
        Op(OpKind.ATTENTION, "attention_proj", flops=1.0, gemm=GemmShape(m=512.0, n=3072.0, k=7168.0)),
        Op(OpKind.EXPERTS, "experts_up", flops=1.0, gemm=g, compute_kind="grouped_matmul"),
        Op(OpKind.EXPERTS, "experts_act", bytes_moved=1.0, compute_kind="elementwise"),
        Op(OpKind.SHARED_EXPERTS, "shared_up", flops=1.0, gemm=GemmShape(m=512.0, n=4096.0, k=7168.0)),
    ]


def test_expert_gemms_take_the_expert_dtype_and_its_quantisation_bytes():
    out = {op.name: op for op in low_precision_ops(_ops(), "fp8", training=False, element_bytes=1.0,
                                                   expert_dtype="fp4")}
    assert out["experts_up"].dtype == "fp4"
    assert out["attention_proj"].dtype is None and out["shared_up"].dtype is None  # the layer's fp8
    assert out["experts_act"].dtype is None  # elementwise kernels are not GEMMs
    g = out["experts_up"].gemm
    want = g.m * g.groups * g.k * (2.0 + 0.5 + SCALE_BYTES_PER_ELEMENT)  # read bf16, write fp4 + scales
    assert out["experts_up_quantize"].bytes_moved == pytest.approx(want, rel=1e-12)
    same = {op.name: op for op in low_precision_ops(_ops(), "fp8", training=False, element_bytes=1.0)}
    assert same["experts_up"].dtype is None
    assert same["experts_up_quantize"].bytes_moved == pytest.approx(
        g.m * g.groups * g.k * (2.0 + 1.0 + SCALE_BYTES_PER_ELEMENT), rel=1e-12)


def test_fp4_experts_under_a_bf16_layer_get_their_own_passes_only():
    out = {op.name: op for op in low_precision_ops(_ops(), "bf16", training=False, element_bytes=2.0,
                                                   expert_dtype="fp4")}
    assert out["experts_up"].dtype == "fp4"
    assert "experts_up_quantize" in out
    assert "attention_proj_quantize" not in out and "shared_up_quantize" not in out


def _dsv3_b200(**workload):
    raw = {"name": "t", "model": "deepseek-v3", "hardware": "b200", "num_gpus": 8,
           "layout": {"tp": 1, "dp": 8, "ep": 8},
           "workload": {"kind": "serve", "batch_size": 128, "prompt_tokens": 1024, "output_tokens": 1024,
                        **workload}}
    return scenario_from_dict(raw, "test")


def test_fp4_experts_sit_between_all_fp8_and_all_fp4():
    fp8 = estimate(_dsv3_b200(compute_dtype="fp8", weight_dtype="fp8")).tpot_s
    mixed = estimate(_dsv3_b200(compute_dtype="fp8", weight_dtype="fp8", expert_compute_dtype="fp4",
                                expert_weight_dtype="fp4")).tpot_s
    fp4 = estimate(_dsv3_b200(compute_dtype="fp4", weight_dtype="fp4")).tpot_s
    assert fp4 < mixed < fp8


def test_expert_weight_dtype_sets_the_experts_bytes_only():
    model = load_model("deepseek-v3")
    w = _dsv3_b200(compute_dtype="fp8", weight_dtype="fp8", expert_weight_dtype="fp4").workload
    assert serve_weight_dtypes(model, w) == ("fp8", "fp4")
    w = _dsv3_b200(expert_weight_dtype="fp4").workload  # the rest stays at the published dtype
    assert serve_weight_dtypes(model, w) == (model.weight_dtype, "fp4")
    w = _dsv3_b200(weight_dtype="fp8").workload
    assert serve_weight_dtypes(model, w) == ("fp8", None)
    fp8 = estimate(_dsv3_b200(compute_dtype="fp8", weight_dtype="fp8"))
    mixed = estimate(_dsv3_b200(compute_dtype="fp8", weight_dtype="fp8", expert_weight_dtype="fp4"))
    saved = fp8.memory.by_category_bytes["weights"] - mixed.memory.by_category_bytes["weights"]
    moe = model.moe
    routed = model.num_moe_layers * moe.num_experts / 8 * model.ffn_matrices * model.hidden_size * moe.expert_ffn_dim
    assert saved == pytest.approx(routed * 0.5, rel=0.02)  # half a byte per routed-expert weight (scales apart)


@pytest.mark.parametrize("field,value", [("workload.expert_compute_dtype", "fp16"),
                                         ("workload.expert_weight_dtype", "int3")])
def test_bad_expert_dtypes_exit_2_naming_the_field(run_cli, field, value):
    res = run_cli("estimate", "deepseek-v3-decode-h800", "--set", f"{field}={value}")
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and field.split(".")[-1] in line


def test_training_workloads_refuse_the_serving_only_field(run_cli):
    res = run_cli("estimate", "deepseek-v3-train-h800", "--set", "workload.expert_compute_dtype=fp8")
    assert res.exit_code == 2
    assert "expert_compute_dtype" in res.stderr


def test_a_dtype_the_device_lacks_is_named_in_the_notes():
    h800 = scenario_from_dict({"name": "t", "model": "deepseek-v3", "hardware": "h800", "num_gpus": 8,
                               "layout": {"tp": 1, "dp": 8, "ep": 8},
                               "workload": {"kind": "serve", "batch_size": 16, "prompt_tokens": 512,
                                            "output_tokens": 256, "compute_dtype": "fp8",
                                            "expert_compute_dtype": "fp4"}}, "test")
    notes = estimate(h800).notes
    assert "h800 has no fp4 peak: fp4 GEMMs are timed at its fp8 peak" in notes
    assert not [n for n in estimate(_dsv3_b200(compute_dtype="fp8", expert_compute_dtype="fp4")).notes
                if "has no" in n]  # B200 has an fp4 peak
