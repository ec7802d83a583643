"""ModelSpec: the vocabulary's validation rules and its derived layer selections."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moesim.model import (
    AllLayers,
    ExplicitLayers,
    FirstKDense,
    GQAAttention,
    Interleaved,
    MLAAttention,
    ModelSpec,
    MoESpec,
    RouterSpec,
)


def spec(**over) -> ModelSpec:
    """A small valid MoE model, with top-level fields replaced by ``over``."""
    base = dict(
        name="t",
        num_layers=4,
        hidden_size=64,
        vocab_size=100,
        attention=dict(kind="gqa", num_heads=4, num_kv_heads=2, head_dim=16),
        moe=dict(num_experts=4, top_k=2, expert_ffn_dim=32),
    )
    base.update(over)
    return ModelSpec.model_validate(base)


# ----------------------------------------------------------------------------- layer selection


@pytest.mark.parametrize(
    "layers, n, expected",
    [
        (AllLayers(), 4, [0, 1, 2, 3]),
        (Interleaved(step=2), 6, [1, 3, 5]),  # Llama 4 Maverick / decoder_sparse_step = 2
        (Interleaved(step=1, dense_layers=[0, 2]), 4, [1, 3]),  # Qwen mlp_only_layers
        (Interleaved(step=3), 9, [2, 5, 8]),
        (FirstKDense(k=3), 6, [3, 4, 5]),  # DeepSeek-V3 first_k_dense_replace = 3
        (FirstKDense(k=1, step=2), 7, [2, 4, 6]),  # moe_layer_freq = 2: i >= k and i % 2 == 0
        (ExplicitLayers(layers=[0, 5]), 6, [0, 5]),
    ],
)
def test_moe_layer_indices_follow_the_selection_rule(layers, n, expected):
    m = spec(num_layers=n, moe_layers=layers, dense_ffn_dim=128)
    assert m.moe_layer_indices == expected
    assert m.num_moe_layers == len(expected)
    assert m.num_dense_layers == n - len(expected)


def test_a_dense_model_has_no_moe_layers():
    m = spec(moe=None, dense_ffn_dim=128)
    assert m.moe_layer_indices == [] and m.num_dense_layers == 4


def test_gated_ffn_has_three_matrices_and_plain_two():
    assert spec().ffn_matrices == 3
    assert spec(gated_ffn=False).ffn_matrices == 2


@pytest.mark.parametrize(
    "window_layers, expected",
    [("none", [False] * 4), ("all", [True] * 4), ("even", [True, False, True, False]), ("odd", [False, True, False, True])],
)
def test_sliding_window_layers(window_layers, expected):
    att = dict(kind="gqa", num_heads=4, num_kv_heads=2, head_dim=16, sliding_window=8, sliding_layers=window_layers)
    m = spec(attention=att)
    assert [m.is_sliding(i) for i in range(4)] == expected


def test_mla_properties_follow_its_low_rank_fields():
    a = MLAAttention(num_heads=8, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12)
    assert a.qk_head_dim == 24 and a.num_kv_heads == 8 and a.q_lora_rank is None


def test_gqa_properties():
    a = GQAAttention(num_heads=8, num_kv_heads=2, head_dim=64)
    assert (a.q_dim, a.kv_dim, a.qk_head_dim, a.v_head_dim) == (512, 128, 64, 64)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "over, needle",
    [
        (dict(moe=dict(num_experts=4, top_k=5, expert_ffn_dim=32)), "top_k (5) cannot exceed num_experts (4)"),
        (dict(attention=dict(kind="gqa", num_heads=6, num_kv_heads=4, head_dim=16)), "multiple of num_kv_heads"),
        (dict(attention=dict(kind="gqa", num_heads=4, num_kv_heads=2, head_dim=16, sliding_layers="even")),
         "needs sliding_window"),
        (dict(moe_layers=dict(kind="first_k_dense", k=1)), "dense_ffn_dim > 0"),
        (dict(moe_layers=dict(kind="explicit", layers=[1, 9]), dense_ffn_dim=8), "out of range"),
        (dict(moe_layers=dict(kind="first_k_dense", k=4), dense_ffn_dim=8), "selects no layer"),
        (dict(moe=dict(num_experts=6, top_k=2, expert_ffn_dim=32, router=dict(num_groups=4))),
         "divisible by router.num_groups"),
        (dict(moe=dict(num_experts=8, top_k=4, expert_ffn_dim=32, router=dict(num_groups=4, topk_groups=1))),
         "exceeds the experts in topk_groups"),
        (dict(moe=dict(num_experts=4, top_k=2, expert_ffn_dim=32, num_shared_experts=1)), "shared_expert_ffn_dim > 0"),
        (dict(hidden_size=0), "greater than 0"),
        (dict(num_layers=-1), "greater than 0"),
        (dict(num_layerz=4), "Extra inputs are not permitted"),
        (dict(weight_dtype="fp7"), "fp8"),
    ],
)
def test_invalid_specs_are_rejected_with_both_values_named(over, needle):
    with pytest.raises(ValidationError) as exc:
        spec(**over)
    assert needle in str(exc.value)


def test_router_rejects_more_topk_groups_than_groups():
    with pytest.raises(ValidationError, match=r"topk_groups \(3\) cannot exceed num_groups \(2\)"):
        RouterSpec(num_groups=2, topk_groups=3)


def test_specs_are_frozen():
    m = spec()
    with pytest.raises(ValidationError):
        m.num_layers = 8  # type: ignore[misc]
    with pytest.raises(ValidationError):
        m.moe.top_k = 1  # type: ignore[union-attr, misc]


def test_moe_spec_defaults_to_no_shared_experts_and_softmax_router():
    moe = MoESpec(num_experts=8, top_k=2, expert_ffn_dim=16)
    assert moe.num_shared_experts == 0 and moe.router.scoring == "softmax" and moe.router.norm_topk_prob
