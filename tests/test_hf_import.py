"""Hugging Face config.json import: the per-family traps, nested layouts and bad input.

Modified configs are written to tmp_path from the fixtures in tests/data/hf_configs/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.errors import InputError
from moesim.hf_import import FAMILIES, load_hf_config, spec_from_hf_dict
from moesim.params import count_params

HF_CONFIGS = Path(__file__).resolve().parent / "data" / "hf_configs"

REAL = sorted(p.stem for p in HF_CONFIGS.glob("*.json") if not p.stem.startswith("bad-"))


def imported(name: str):
    return load_hf_config(HF_CONFIGS / f"{name}.json")


@pytest.mark.parametrize("name", REAL)
def test_every_fixture_config_imports_and_keeps_its_family(name, hf_raw):
    m = imported(name)
    raw = hf_raw(name)
    assert m.family == raw["model_type"].removesuffix("_text")
    assert m.name == name


# ----------------------------------------------------------------------------- intermediate_size


@pytest.mark.parametrize(
    "name, expert, dense",
    [
        ("mixtral-8x7b", 14336, 0),  # intermediate_size is the expert width
        ("phimoe", 6400, 0),
        ("olmoe-1b-7b", 1024, 0),
        ("gpt-oss-120b", 2880, 0),
        ("deepseek-v3", 2048, 18432),  # moe_intermediate_size = expert, intermediate_size = dense layers
        ("deepseek-v2-lite", 1408, 10944),
        ("qwen2-moe-a2.7b", 1408, 5632),
        ("qwen3-30b-a3b", 768, 6144),
        ("llama4-maverick", 8192, 16384),  # intermediate_size = expert and shared; _mlp = dense
    ],
)
def test_intermediate_size_means_what_each_family_means(name, expert, dense):
    m = imported(name)
    assert m.moe.expert_ffn_dim == expert
    assert m.dense_ffn_dim == dense


def test_mixtral_intermediate_size_scales_the_experts(hf_raw, write_config):
    raw = hf_raw("mixtral-8x7b")
    raw["intermediate_size"] *= 2
    base, wide = count_params(imported("mixtral-8x7b")), count_params(load_hf_config(write_config(raw)))
    assert wide.by_component["routed_experts"] == 2 * base.by_component["routed_experts"]


def test_deepseek_intermediate_size_only_changes_the_dense_layers(hf_raw, write_config):
    raw = hf_raw("deepseek-v3")
    raw["intermediate_size"] = 9216
    base, half = count_params(imported("deepseek-v3")), count_params(load_hf_config(write_config(raw)))
    assert half.by_component["routed_experts"] == base.by_component["routed_experts"]
    assert half.by_component["shared_experts"] == base.by_component["shared_experts"]
    assert half.by_component["dense_ffn"] * 2 == base.by_component["dense_ffn"] == 3 * 3 * 7168 * 18432


# ----------------------------------------------------------------------------- shared experts


def test_qwen2_shared_expert_is_one_wide_gated_expert():
    m = imported("qwen2-moe-a2.7b")
    assert (m.moe.num_shared_experts, m.moe.shared_expert_ffn_dim, m.moe.shared_expert_gate) == (1, 5632, True)
    h = 2048
    # one SwiGLU of width 5632 plus its sigmoid gate Linear(h, 1), in each of 24 layers
    assert count_params(m).by_component["shared_experts"] == 24 * (3 * h * 5632 + h)


def test_qwen2_without_shared_expert_size_has_no_shared_expert(hf_raw, write_config):
    raw = hf_raw("qwen2-moe-a2.7b")
    del raw["shared_expert_intermediate_size"]
    m = load_hf_config(write_config(raw))
    assert m.moe.num_shared_experts == 0 and not m.moe.shared_expert_gate


def test_deepseek_shared_experts_each_have_the_expert_width():
    m = imported("deepseek-v2-lite")
    assert (m.moe.num_shared_experts, m.moe.shared_expert_ffn_dim, m.moe.shared_expert_gate) == (2, 1408, False)
    assert count_params(m).by_component["shared_experts"] == 26 * 2 * 3 * 2048 * 1408


def test_llama4_has_one_shared_expert_of_the_expert_width():
    m = imported("llama4-scout")
    assert (m.moe.num_shared_experts, m.moe.shared_expert_ffn_dim) == (1, 8192)


# ----------------------------------------------------------------------------- which layers are MoE


def test_deepseek_v3_first_three_layers_are_dense():
    assert imported("deepseek-v3").moe_layer_indices == list(range(3, 61))


@pytest.mark.parametrize(
    "first_k, freq, expected",
    [(0, 1, list(range(8))), (3, 1, [3, 4, 5, 6, 7]), (1, 2, [2, 4, 6]), (3, 2, [4, 6])],
)
def test_deepseek_first_k_dense_replace_and_moe_layer_freq(first_k, freq, expected, hf_raw, write_config):
    raw = hf_raw("deepseek-v2-lite") | {"num_hidden_layers": 8, "first_k_dense_replace": first_k,
                                        "moe_layer_freq": freq}
    m = load_hf_config(write_config(raw))
    assert m.moe_layer_indices == expected
    assert count_params(m).by_component["dense_ffn"] == (8 - len(expected)) * 3 * 2048 * 10944


@pytest.mark.parametrize(
    "step, mlp_only, expected",
    [
        (1, [], list(range(8))),
        (2, [], [1, 3, 5, 7]),  # (i + 1) % step == 0
        (1, [0, 5], [1, 2, 3, 4, 6, 7]),
        (2, [3], [1, 5, 7]),
        (4, [], [3, 7]),
    ],
)
def test_qwen_decoder_sparse_step_and_mlp_only_layers(step, mlp_only, expected, hf_raw, write_config):
    raw = hf_raw("qwen3-30b-a3b") | {"num_hidden_layers": 8, "decoder_sparse_step": step, "mlp_only_layers": mlp_only}
    m = load_hf_config(write_config(raw))
    assert m.moe_layer_indices == expected
    # the other layers are dense MLPs of width intermediate_size
    assert count_params(m).by_component["dense_ffn"] == (8 - len(expected)) * 3 * 2048 * 6144


def test_llama4_maverick_moe_layers_are_the_odd_indices():
    m = imported("llama4-maverick")
    assert m.moe_layer_indices == list(range(1, 48, 2))
    assert count_params(m).by_component["dense_ffn"] == 24 * 3 * 5120 * 16384


def test_llama4_scout_explicit_moe_layers_cover_every_layer():
    assert imported("llama4-scout").moe_layer_indices == list(range(48))


def test_llama4_explicit_moe_layers_win_over_the_interleave_step(hf_raw, write_config):
    raw = hf_raw("llama4-scout")
    raw["text_config"] |= {"moe_layers": [0, 47], "interleave_moe_layer_step": 2, "intermediate_size_mlp": 16384}
    assert load_hf_config(write_config(raw)).moe_layer_indices == [0, 47]


def test_llama4_text_config_alone_imports_like_the_nested_one(hf_raw, write_config):
    text = hf_raw("llama4-maverick")["text_config"]
    assert text["model_type"] == "llama4_text"
    flat = load_hf_config(write_config(text))
    nested = imported("llama4-maverick")
    assert flat.model_copy(update={"name": "x"}) == nested.model_copy(update={"name": "x"})


# ----------------------------------------------------------------------------- attention


def test_gpt_oss_head_dim_is_not_hidden_over_heads():
    a = imported("gpt-oss-120b").attention
    assert a.head_dim == 64 and a.num_heads * a.head_dim == 4096 != 2880
    assert (a.qkv_bias, a.out_bias, a.sinks) == (True, True, True)


def test_gpt_oss_alternating_layer_types_become_even_sliding_layers():
    m = imported("gpt-oss-20b")
    assert (m.attention.sliding_window, m.attention.sliding_layers) == (128, "even")
    assert [m.is_sliding(i) for i in range(4)] == [True, False, True, False]
    assert m.expert_weight_dtype == "mxfp4" and m.weight_dtype == "bf16"


def test_gpt_oss_all_full_attention_layers_have_no_window(hf_raw, write_config):
    raw = hf_raw("gpt-oss-20b")
    raw["layer_types"] = ["full_attention"] * 24
    assert load_hf_config(write_config(raw)).attention.sliding_layers == "none"


def test_gpt_oss_irregular_sliding_pattern_is_refused(hf_raw, write_config):
    raw = hf_raw("gpt-oss-20b")
    raw["layer_types"] = ["sliding_attention"] * 3 + ["full_attention"] * 21
    with pytest.raises(InputError) as exc:
        load_hf_config(write_config(raw))
    assert exc.value.field == "layer_types"


def test_deepseek_v3_mla_router_and_mtp():
    m = imported("deepseek-v3")
    a = m.attention
    assert (a.kind, a.q_lora_rank, a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim) == (
        "mla", 1536, 512, 128, 64, 128)
    r = m.moe.router
    assert (r.scoring, r.num_groups, r.topk_groups, r.score_correction_bias) == ("sigmoid", 8, 4, True)
    assert (m.mtp.num_modules, m.mtp.own_embedding_and_head) == (1, True)


def test_deepseek_v2_lite_has_full_rank_queries_and_no_groups():
    m = imported("deepseek-v2-lite")
    assert m.attention.q_lora_rank is None
    assert (m.moe.router.num_groups, m.moe.router.score_correction_bias) == (1, False)
    assert m.mtp.num_modules == 0


@pytest.mark.parametrize("name, full_width", [("qwen3-30b-a3b", False), ("olmoe-1b-7b", True)])
def test_qk_norm_width_per_family(name, full_width):
    a = imported(name).attention
    assert a.qk_norm and a.qk_norm_full_width == full_width


# ----------------------------------------------------------------------------- DBRX


def test_dbrx_nested_configs_are_read():
    m = imported("dbrx")
    assert (m.num_layers, m.hidden_size, m.attention.num_heads, m.attention.num_kv_heads) == (40, 6144, 48, 8)
    assert (m.moe.num_experts, m.moe.top_k, m.moe.expert_ffn_dim) == (16, 4, 10752)
    assert m.norm == "layernorm_nobias" and m.moe.router.norm_topk_prob


def test_dbrx_null_normalize_expert_weights_turns_renormalisation_off(hf_raw, write_config):
    raw = hf_raw("dbrx")
    raw["ffn_config"]["moe_normalize_expert_weights"] = None
    assert not load_hf_config(write_config(raw)).moe.router.norm_topk_prob


def test_dbrx_missing_nested_field_is_named_with_its_parent(hf_raw, write_config):
    raw = hf_raw("dbrx")
    del raw["ffn_config"]["moe_top_k"]
    with pytest.raises(InputError) as exc:
        load_hf_config(write_config(raw))
    assert exc.value.field == "ffn_config.moe_top_k"


def test_dbrx_nested_config_that_is_not_an_object_is_refused(hf_raw, write_config):
    raw = hf_raw("dbrx")
    raw["attn_config"] = 8
    with pytest.raises(InputError) as exc:
        load_hf_config(write_config(raw))
    assert exc.value.field == "attn_config" and "object" in exc.value.message


# ----------------------------------------------------------------------------- bad input


def test_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(InputError) as exc:
        load_hf_config(HF_CONFIGS / "bad-unknown-model-type.json")
    assert exc.value.field == "model_type" and "falcon_mamba_xyz" in exc.value.message
    for family in FAMILIES:
        assert family in exc.value.message


def test_missing_required_field_is_named():
    with pytest.raises(InputError) as exc:
        load_hf_config(HF_CONFIGS / "bad-missing-field.json")
    assert exc.value.field == "num_local_experts"
    assert exc.value.source.endswith("bad-missing-field.json")


def test_not_json_names_the_file_and_position():
    with pytest.raises(InputError) as exc:
        load_hf_config(HF_CONFIGS / "bad-not-json.json")
    assert "not valid JSON" in exc.value.message and "line" in exc.value.message


def test_top_level_array_is_refused():
    with pytest.raises(InputError, match="JSON object"):
        spec_from_hf_dict([1, 2], "x.json")


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("hidden_size", "big", "expected an integer"),
        ("hidden_size", 4096.5, "expected an integer"),  # never silently truncated
        ("num_hidden_layers", True, "expected an integer"),
        ("num_local_experts", 0, "must be >= 1"),
        ("num_local_experts", -8, "must be >= 1"),
        ("tie_word_embeddings", "false", "expected true or false"),
    ],
)
def test_wrong_typed_values_name_the_config_field(field, value, needle, hf_raw, write_config):
    raw = hf_raw("mixtral-8x7b") | {field: value}
    with pytest.raises(InputError) as exc:
        load_hf_config(write_config(raw))
    assert exc.value.field == field and needle in exc.value.message


def test_integral_floats_are_accepted(hf_raw, write_config):
    raw = hf_raw("mixtral-8x7b") | {"hidden_size": 4096.0}
    assert load_hf_config(write_config(raw)).hidden_size == 4096


def test_layer_list_that_is_not_a_list_is_refused(hf_raw, write_config):
    raw = hf_raw("qwen3-30b-a3b") | {"mlp_only_layers": 3}
    with pytest.raises(InputError) as exc:
        load_hf_config(write_config(raw))
    assert exc.value.field == "mlp_only_layers"


def test_top_k_above_num_experts_is_an_input_error(hf_raw, write_config):
    raw = hf_raw("mixtral-8x7b") | {"num_experts_per_tok": 9}
    with pytest.raises(InputError, match=r"top_k \(9\) cannot exceed num_experts \(8\)"):
        load_hf_config(write_config(raw))


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read file"):
        load_hf_config(tmp_path / "nope.json")


def test_code_references_in_the_config_are_not_followed(hf_raw, write_config):
    # auto_map names remote Python code; the importer reads fields only.
    raw = hf_raw("phimoe")
    raw["auto_map"] = {"AutoModelForCausalLM": "does_not_exist.Model"}
    assert load_hf_config(write_config(raw)).moe.num_experts == 16
