"""FLOPs per token, weight bytes and KV-cache bytes against hand calculations, and invariants."""

from __future__ import annotations

import pytest

from moesim.card import model_card
from moesim.catalog import load_model
from moesim.dtypes import bytes_per_element
from moesim.flops import attention_score_flops, forward_flops_per_token
from moesim.memory import kv_bytes_per_token, kv_cache_bytes, kv_elements_per_token_per_layer, weight_bytes
from moesim.model import ModelSpec
from moesim.params import count_params

# ----------------------------------------------------------------------------- FLOPs


def test_forward_matmul_flops_are_twice_the_active_matmul_params():
    # tiny-moe has no biases, so every active parameter except the embedding lookup and the norm
    # weights is a matrix weight: 2 FLOPs (multiply + add) each (Kaplan et al. 2020, C_forward ~ 2N).
    m = load_model("tiny-moe")
    act = count_params(m).active_by_component
    matmul_params = act["attention"] + act["router"] + act["routed_experts"] + act["lm_head"]
    f = forward_flops_per_token(m)
    assert f.matmul_flops == 2 * matmul_params == 2 * (count_params(m).active - act["embedding"] - act["norms"])
    assert f.attention_flops == 0 and f.total_flops == f.matmul_flops


def test_attention_flops_are_linear_in_keys_attended():
    m = load_model("tiny-moe")
    # QK^T and AV: 2 * heads * (d_qk + d_v) FLOPs per key per layer = 2 * 8 * (32 + 32) = 1024
    per_key = 4 * 2 * 8 * (32 + 32)
    assert attention_score_flops(m, 1.0) == per_key
    f0, f1, f2 = (forward_flops_per_token(m, k) for k in (0.0, 1000.0, 2000.0))
    assert f1.attention_flops == 1000 * per_key
    assert f2.total_flops - f1.total_flops == f1.total_flops - f0.total_flops == 1000 * per_key
    assert f1.by_component["attention_scores"] == f1.attention_flops


def test_mla_attention_flops_use_the_qk_and_v_head_dims():
    m = load_model("deepseek-v3")
    # 128 heads, d_qk = 128 + 64, d_v = 128, 61 layers
    assert attention_score_flops(m, 1.0) == 61 * 2 * 128 * (192 + 128)


def test_sliding_window_caps_keys_on_windowed_layers():
    m = load_model("gpt-oss-120b")  # 36 layers, even ones windowed at 128 keys
    per_layer_key = 2 * 64 * (64 + 64)
    assert attention_score_flops(m, 100.0) == 36 * 100 * per_layer_key
    assert attention_score_flops(m, 4096.0) == (18 * 128 + 18 * 4096) * per_layer_key


def test_lm_head_flops_counted_even_when_tied():
    m = load_model("tiny-moe")
    tied = m.model_copy(update={"tie_embeddings": True})
    assert forward_flops_per_token(tied).by_component["lm_head"] == 2 * m.vocab_size * m.hidden_size
    assert forward_flops_per_token(tied).matmul_flops == forward_flops_per_token(m).matmul_flops


def test_routed_expert_flops_scale_with_top_k_not_num_experts():
    m = load_model("tiny-moe")
    more = m.model_copy(update={"moe": m.moe.model_copy(update={"num_experts": 64})})
    k4 = m.model_copy(update={"moe": m.moe.model_copy(update={"top_k": 4})})
    base = forward_flops_per_token(m).by_component["routed_experts"]
    assert forward_flops_per_token(more).by_component["routed_experts"] == base
    assert forward_flops_per_token(k4).by_component["routed_experts"] == 2 * base


def _pair(width: int) -> tuple[ModelSpec, ModelSpec]:
    common = dict(name="x", num_layers=3, hidden_size=48, vocab_size=97,
                  attention=dict(kind="gqa", num_heads=4, num_kv_heads=4, head_dim=12))
    moe = ModelSpec.model_validate(common | {"moe": dict(num_experts=1, top_k=1, expert_ffn_dim=width)})
    dense = ModelSpec.model_validate(common | {"dense_ffn_dim": width})
    return moe, dense


def test_one_expert_top1_moe_costs_what_the_dense_ffn_costs():
    moe, dense = _pair(200)
    pm, pd = count_params(moe), count_params(dense)
    router = pm.by_component["router"]
    assert router == 3 * 48  # the only difference: a Linear(h, 1) router in each of 3 layers
    assert pm.by_component["routed_experts"] == pm.active_by_component["routed_experts"] == pd.by_component["dense_ffn"]
    assert pm.total - router == pd.total and pm.active - router == pd.active
    fm, fd = forward_flops_per_token(moe, 512.0), forward_flops_per_token(dense, 512.0)
    assert fm.total_flops - 2 * router == fd.total_flops
    assert fm.by_component["routed_experts"] == fd.by_component["dense_ffn"]


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize(
    "name, kind, per_token_bf16",
    [
        ("deepseek-moe-16b", "mha", 28 * 2 * 16 * 128 * 2),  # layers x (K + V) x heads x head_dim x bytes
        ("mixtral-8x7b", "gqa", 32 * 2 * 8 * 128 * 2),  # 8 KV heads of 128
        ("deepseek-v3", "mla", 61 * (512 + 64) * 2),  # latent + shared rope key (DeepSeek-V2 sec. 2.1)
        ("deepseek-v2-lite", "mla", 27 * (512 + 64) * 2),
    ],
)
def test_kv_bytes_per_token(name, kind, per_token_bf16):
    m = load_model(name)
    assert model_card(m).attention == kind
    assert kv_bytes_per_token(m) == per_token_bf16
    assert kv_bytes_per_token(m, "fp8") == per_token_bf16 / 2


def test_kv_cache_grows_with_context_and_batch():
    m = load_model("mixtral-8x7b")
    assert kv_cache_bytes(m, 1000, batch=3) == 3 * 1000 * kv_bytes_per_token(m)


def test_sliding_window_caps_gpt_oss_kv_cache():
    m = load_model("gpt-oss-120b")  # 36 layers, 8 KV heads of 64, even layers windowed at 128
    per_token_per_layer = 2 * 8 * 64 * 2
    assert kv_elements_per_token_per_layer(m) * 2 == per_token_per_layer
    assert kv_cache_bytes(m, 4096, batch=2) == 2 * (18 * 128 + 18 * 4096) * per_token_per_layer
    assert kv_cache_bytes(m, 100) == 36 * 100 * per_token_per_layer  # below the window: no cap
    # the per-token figure is the growth before any window fills
    assert kv_bytes_per_token(m) == 36 * per_token_per_layer


# ----------------------------------------------------------------------------- weight bytes


def _odd_model() -> ModelSpec:
    return ModelSpec.model_validate(dict(
        name="odd", num_layers=1, hidden_size=33, vocab_size=101,
        attention=dict(kind="gqa", num_heads=3, num_kv_heads=1, head_dim=11),
        moe=dict(num_experts=4, top_k=1, expert_ffn_dim=7),
    ))


@pytest.mark.parametrize("dtype, bits", [("bf16", 16), ("fp8", 8), ("int4", 4), ("mxfp4", 4.25), ("int4_g128", 4.25)])
def test_weight_bytes_use_fractional_bytes_per_element(dtype, bits):
    m = _odd_model()
    n = count_params(m).total
    assert n % 8 and n % 32  # not divisible: integer division would show
    assert weight_bytes(m, dtype) == n * bits / 8
    if bits < 8:
        assert weight_bytes(m, dtype) != int(weight_bytes(m, dtype))


def test_mxfp4_is_4_25_bits_per_element():
    # OCP Microscaling spec v1.0: 32 FP4 (E2M1) elements share one 8-bit E8M0 scale
    assert bytes_per_element("mxfp4") == (4 + 8 / 32) / 8


def test_gpt_oss_experts_in_mxfp4_biases_and_the_rest_in_bf16():
    m = load_model("gpt-oss-20b")
    c = count_params(m)
    biases = 24 * 32 * (2 * 2880 + 2880)  # per expert: gate_up (2F) and down (h) biases
    matrices = c.by_component["routed_experts"] - biases
    assert weight_bytes(m) == (c.total - matrices) * 2 + matrices * 4.25 / 8
    assert weight_bytes(m, "fp8") == c.total  # an explicit dtype applies to every weight


@pytest.mark.parametrize("name", ["gpt-oss-120b", "gpt-oss-20b"])
def test_gpt_oss_weight_bytes_match_the_published_checkpoint(name, published):
    # arXiv:2508.10925 (gpt-oss model card) Table 1: checkpoint 60.8 GiB (120b) and 12.8 GiB (20b)
    gib = weight_bytes(load_model(name)) / 2**30
    assert round(gib, 1) == published[name]["checkpoint_size_gib"]


def test_model_card_weight_table_and_published_dtype():
    m = load_model("gpt-oss-120b")
    card = model_card(m)
    total = count_params(m).total
    assert card.weight_bytes_by_dtype["bf16"] == 2 * total
    assert card.weight_bytes_by_dtype["mxfp4"] == total * 4.25 / 8
    assert card.weight_bytes_published == weight_bytes(m)
    assert card.published_weight_dtype == "bf16 (experts mxfp4)"
    assert card.forward_flops_per_token_at_context["0"] == card.forward_matmul_flops_per_token
    assert card.forward_attention_flops_per_token_per_key == attention_score_flops(m, 1.0)
