"""Import a Hugging Face ``config.json`` (a local file) into a :class:`ModelSpec`.

This is the only module that knows Hugging Face field names. Nothing is
downloaded and no code from the config is executed: the file is parsed as
JSON and mapped field by field.

Traps handled here, per family:

* ``intermediate_size`` is the *expert* width for Mixtral, PhiMoE, OLMoE,
  gpt-oss and Llama 4, but the *dense* FFN width for DeepSeek and Qwen-MoE
  (whose expert width is ``moe_intermediate_size``). Llama 4's dense width is
  ``intermediate_size_mlp``.
* Qwen2-MoE's ``shared_expert_intermediate_size`` is **one** wide shared expert
  with a sigmoid gate; DeepSeek's ``n_shared_experts`` are experts of
  ``moe_intermediate_size`` each.
* DeepSeek: layer i is MoE when ``i >= first_k_dense_replace`` and
  ``i % moe_layer_freq == 0``. Qwen: when ``(i + 1) % decoder_sparse_step == 0``
  and ``i`` is not in ``mlp_only_layers``. Llama 4: ``moe_layers`` when given,
  else ``interleave_moe_layer_step``.
* gpt-oss's ``head_dim`` (64) differs from ``hidden_size / num_attention_heads``.
* DBRX nests its fields in ``attn_config`` and ``ffn_config``; Llama 4 nests the
  text model in ``text_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from . import limits as L
from .errors import InputError, from_validation_error
from .io import read_json
from .model import ModelSpec

_MISSING = object()


class _Cfg:
    """Read fields of one (possibly nested) config dict, with errors naming the field."""

    def __init__(self, raw: dict[str, Any], where: str, prefix: str = ""):
        self.raw, self.where, self.prefix = raw, where, prefix

    def req(self, key: str) -> Any:
        v = self.raw.get(key, _MISSING)
        if v is _MISSING or v is None:
            raise InputError(
                f"required field is missing for model_type {self.model_type!r}", source=self.where, field=self.prefix + key
            )
        return v

    def opt(self, key: str, default: Any = None) -> Any:
        v = self.raw.get(key, _MISSING)
        return default if v is _MISSING or v is None else v

    def _int(self, key: str, v: Any, limit: L.Limit) -> int:
        """``v`` as an int (integral floats accepted) inside ``limit``, else an error naming ``key``."""
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise InputError(f"expected an integer, got {L.short(v)}", source=self.where, field=self.prefix + key)
        if v < limit.lo:
            raise InputError(f"must be >= {int(limit.lo)}, got {L.short(v)}", source=self.where, field=self.prefix + key)
        return int(limit.check(v, source=self.where, field=self.prefix + key))

    def req_int(self, key: str, limit: L.Limit) -> int:
        """A required integer field bounded by ``limit`` (moesim/limits.py)."""
        return self._int(key, self.req(key), limit)

    def opt_int(self, key: str, default: int | None, limit: L.Limit) -> int | None:
        """An optional integer field bounded by ``limit``; absent or null gives ``default``."""
        v = self.opt(key, _MISSING)
        return default if v is _MISSING else self._int(key, v, limit)

    def opt_bool(self, key: str, default: bool) -> bool:
        """An optional boolean field (JSON true / false); absent or null gives ``default``."""
        v = self.opt(key, _MISSING)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            raise InputError(f"expected true or false, got {L.short(v)}", source=self.where, field=self.prefix + key)
        return v

    def opt_int_list(self, key: str) -> list[int] | None:
        """An optional list of non-negative integers (layer indices); absent or null gives None."""
        v = self.opt(key, _MISSING)
        if v is _MISSING:
            return None
        if not isinstance(v, list):
            raise InputError(f"expected a list of layer indices, got {L.short(v)}", source=self.where,
                             field=self.prefix + key)
        if len(v) > L.LAYERS.hi:
            raise InputError(f"lists at most {int(L.LAYERS.hi):,} layer indices ({L.LAYERS.why}); got {len(v):,}",
                             source=self.where, field=self.prefix + key)
        return [self._int(key, i, L.LAYER_INDEX) for i in v]

    def sub(self, key: str) -> "_Cfg":
        v = self.req(key)
        if not isinstance(v, dict):
            raise InputError("expected an object", source=self.where, field=self.prefix + key)
        c = _Cfg(v, self.where, f"{self.prefix}{key}.")
        c._model_type = self.model_type
        return c

    @property
    def model_type(self) -> str:
        return getattr(self, "_model_type", None) or str(self.raw.get("model_type"))[:40]


def _dtype(c: _Cfg) -> str:
    """Storage dtype of the published weights: an fp8 ``quantization_config`` (DeepSeek-V3) wins over torch_dtype."""
    q = c.raw.get("quantization_config")
    if isinstance(q, dict) and q.get("quant_method") == "fp8":
        return "fp8"
    t = str(c.opt("torch_dtype", c.opt("dtype", "bfloat16")))
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(t, "bf16")


def _gqa(c: _Cfg, hidden: int, **extra: Any) -> dict[str, Any]:
    heads = c.req_int("num_attention_heads", L.HEADS)
    return {
        "kind": "gqa",
        "num_heads": heads,
        "num_kv_heads": c.opt_int("num_key_value_heads", heads, L.HEADS),
        "head_dim": c.opt_int("head_dim", hidden // heads, L.WIDTH),
        **extra,
    }


def _common(c: _Cfg) -> dict[str, Any]:
    return {
        "family": c.model_type,
        "num_layers": c.req_int("num_hidden_layers", L.LAYERS),
        "hidden_size": c.req_int("hidden_size", L.WIDTH),
        "vocab_size": c.req_int("vocab_size", L.VOCAB),
        "tie_embeddings": c.opt_bool("tie_word_embeddings", False),
        "max_context": c.opt_int("max_position_embeddings", None, L.CONTEXT),
        "weight_dtype": _dtype(c),
    }


def _mixtral(c: _Cfg) -> dict[str, Any]:
    d = _common(c)
    bias = c.opt_bool("attention_bias", False)
    d |= {
        "attention": _gqa(c, d["hidden_size"], qkv_bias=bias, out_bias=bias),
        "moe": {
            "num_experts": c.req_int("num_local_experts", L.EXPERTS),
            "top_k": c.req_int("num_experts_per_tok", L.EXPERTS),
            "expert_ffn_dim": c.req_int("intermediate_size", L.WIDTH),
            "router": {"scoring": "softmax", "norm_topk_prob": True},
        },
    }
    return d


def _phimoe(c: _Cfg) -> dict[str, Any]:
    d = _mixtral(c)
    d["norm"] = "layernorm"  # PhiMoE uses nn.LayerNorm with bias
    return d


def _olmoe(c: _Cfg) -> dict[str, Any]:
    d = _common(c)
    d |= {
        "attention": _gqa(c, d["hidden_size"], qk_norm=True, qk_norm_full_width=True,
                          qkv_bias=c.opt_bool("attention_bias", False)),
        "moe": {
            "num_experts": c.req_int("num_experts", L.EXPERTS),
            "top_k": c.req_int("num_experts_per_tok", L.EXPERTS),
            "expert_ffn_dim": c.req_int("intermediate_size", L.WIDTH),
            "router": {"scoring": "softmax", "norm_topk_prob": c.opt_bool("norm_topk_prob", False)},
        },
    }
    return d


def _qwen_layers(c: _Cfg, n_layers: int) -> dict[str, Any]:
    step = c.opt_int("decoder_sparse_step", 1, L.LAYERS)
    dense = c.opt_int_list("mlp_only_layers") or []
    if step == 1 and not dense:
        return {"kind": "all"}
    return {"kind": "interleaved", "step": step, "dense_layers": dense}


def _qwen2_moe(c: _Cfg) -> dict[str, Any]:
    d = _common(c)
    shared = c.opt_int("shared_expert_intermediate_size", 0, L.WIDTH_OR_ZERO)
    d |= {
        "attention": _gqa(c, d["hidden_size"], qkv_bias=True),
        "dense_ffn_dim": c.opt_int("intermediate_size", 0, L.WIDTH_OR_ZERO),
        "moe_layers": _qwen_layers(c, d["num_layers"]),
        "moe": {
            "num_experts": c.req_int("num_experts", L.EXPERTS),
            "top_k": c.req_int("num_experts_per_tok", L.EXPERTS),
            "expert_ffn_dim": c.req_int("moe_intermediate_size", L.WIDTH),
            "num_shared_experts": 1 if shared else 0,
            "shared_expert_ffn_dim": shared,
            "shared_expert_gate": bool(shared),
            "router": {"scoring": "softmax", "norm_topk_prob": c.opt_bool("norm_topk_prob", False)},
        },
    }
    return d


def _qwen3_moe(c: _Cfg) -> dict[str, Any]:
    d = _common(c)
    d |= {
        "attention": _gqa(c, d["hidden_size"], qk_norm=True, qkv_bias=c.opt_bool("attention_bias", False)),
        "dense_ffn_dim": c.opt_int("intermediate_size", 0, L.WIDTH_OR_ZERO),
        "moe_layers": _qwen_layers(c, d["num_layers"]),
        "moe": {
            "num_experts": c.req_int("num_experts", L.EXPERTS),
            "top_k": c.req_int("num_experts_per_tok", L.EXPERTS),
            "expert_ffn_dim": c.req_int("moe_intermediate_size", L.WIDTH),
            "router": {"scoring": "softmax", "norm_topk_prob": c.opt_bool("norm_topk_prob", True)},
        },
    }
    return d


def _deepseek_common(c: _Cfg) -> dict[str, Any]:
    d = _common(c)
    n_shared = c.opt_int("n_shared_experts", 0, L.EXPERTS_OR_ZERO)
    moe_w = c.req_int("moe_intermediate_size", L.WIDTH)
    d |= {
        "dense_ffn_dim": c.req_int("intermediate_size", L.WIDTH),
        "moe_layers": {
            "kind": "first_k_dense",
            "k": c.opt_int("first_k_dense_replace", 0, L.LAYER_INDEX),
            "step": c.opt_int("moe_layer_freq", 1, L.LAYERS),
        },
        "moe": {
            "num_experts": c.req_int("n_routed_experts", L.EXPERTS),
            "top_k": c.req_int("num_experts_per_tok", L.EXPERTS),
            "expert_ffn_dim": moe_w,
            "num_shared_experts": n_shared,
            "shared_expert_ffn_dim": moe_w if n_shared else 0,
            "router": {
                "scoring": str(c.opt("scoring_func", "softmax")),
                "norm_topk_prob": c.opt_bool("norm_topk_prob", False),
            },
        },
    }
    return d


def _deepseek(c: _Cfg) -> dict[str, Any]:
    d = _deepseek_common(c)
    d["attention"] = _gqa(c, d["hidden_size"], qkv_bias=c.opt_bool("attention_bias", False))
    return d


def _mla(c: _Cfg) -> dict[str, Any]:
    return {
        "kind": "mla",
        "num_heads": c.req_int("num_attention_heads", L.HEADS),
        "q_lora_rank": c.opt_int("q_lora_rank", None, L.WIDTH),
        "kv_lora_rank": c.req_int("kv_lora_rank", L.WIDTH),
        "qk_nope_head_dim": c.req_int("qk_nope_head_dim", L.WIDTH),
        "qk_rope_head_dim": c.req_int("qk_rope_head_dim", L.WIDTH),
        "v_head_dim": c.req_int("v_head_dim", L.WIDTH),
    }


def _deepseek_v2(c: _Cfg) -> dict[str, Any]:
    d = _deepseek_common(c)
    d["attention"] = _mla(c)
    method = str(c.opt("topk_method", "greedy"))
    groups = c.opt_int("n_group", 1, L.EXPERTS)
    router = d["moe"]["router"]
    if method in ("group_limited_greedy", "noaux_tc") and groups > 1:
        router |= {"num_groups": groups, "topk_groups": c.opt_int("topk_group", groups, L.EXPERTS)}
    router["score_correction_bias"] = method == "noaux_tc"
    return d


def _deepseek_v3(c: _Cfg) -> dict[str, Any]:
    d = _deepseek_v2(c)
    n_mtp = c.opt_int("num_nextn_predict_layers", 0, L.MTP_MODULES)
    # The published checkpoint stores an embedding and a head for each MTP module.
    d["mtp"] = {"num_modules": n_mtp, "own_embedding_and_head": n_mtp > 0}
    return d


def _dbrx(c: _Cfg) -> dict[str, Any]:
    attn, ffn = c.sub("attn_config"), c.sub("ffn_config")
    hidden = c.req_int("d_model", L.WIDTH)
    heads = c.req_int("n_heads", L.HEADS)
    # moe_normalize_expert_weights is the p of a p-norm applied to the top-k weights
    # (default 1); an explicit null turns the renormalisation off.
    normalize = ffn.raw.get("moe_normalize_expert_weights", 1)
    return {
        "family": "dbrx",
        "num_layers": c.req_int("n_layers", L.LAYERS),
        "hidden_size": hidden,
        "vocab_size": c.req_int("vocab_size", L.VOCAB),
        "tie_embeddings": c.opt_bool("tie_word_embeddings", False),
        "max_context": c.opt_int("max_seq_len", None, L.CONTEXT),
        "weight_dtype": _dtype(c),
        "norm": "layernorm_nobias",
        "attention": {"kind": "gqa", "num_heads": heads, "num_kv_heads": attn.req_int("kv_n_heads", L.HEADS),
                      "head_dim": hidden // heads},
        "moe": {
            "num_experts": ffn.req_int("moe_num_experts", L.EXPERTS),
            "top_k": ffn.req_int("moe_top_k", L.EXPERTS),
            "expert_ffn_dim": ffn.req_int("ffn_hidden_size", L.WIDTH),
            "router": {"scoring": "softmax", "norm_topk_prob": normalize is not None},
        },
    }


def _gpt_oss(c: _Cfg) -> dict[str, Any]:
    d = _common(c)
    window = c.opt_int("sliding_window", None, L.CONTEXT)
    types = c.opt("layer_types")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise InputError(f"expected a list of layer type names, got {L.short(types)}", source=c.where, field="layer_types")
    sliding = "none"
    if window and types:
        idx = [i for i, t in enumerate(types) if t == "sliding_attention"]
        if idx and all(i % 2 == 0 for i in idx) and len(idx) == (len(types) + 1) // 2:
            sliding = "even"
        elif idx and len(idx) == len(types):
            sliding = "all"
        elif idx and all(i % 2 == 1 for i in idx) and len(idx) == len(types) // 2:
            sliding = "odd"
        elif idx:
            raise InputError("sliding_attention pattern other than all / even / odd layers is not supported",
                             source=c.where, field="layer_types")
    elif window:
        sliding = "even"  # gpt-oss alternates banded and dense layers, banded first
    q = c.opt("quantization_config") or {}
    expert_dtype = "mxfp4" if isinstance(q, dict) and q.get("quant_method") == "mxfp4" else None
    d |= {
        "attention": _gqa(c, d["hidden_size"], qkv_bias=True, out_bias=True, sinks=True,
                          sliding_window=window if sliding != "none" else None, sliding_layers=sliding),
        "moe": {
            "num_experts": c.req_int("num_local_experts", L.EXPERTS),
            "top_k": c.req_int("num_experts_per_tok", L.EXPERTS) if c.opt("num_experts_per_tok") is not None
            else c.req_int("experts_per_token", L.EXPERTS),
            "expert_ffn_dim": c.req_int("intermediate_size", L.WIDTH),
            "expert_bias": True,
            "router": {"scoring": "softmax", "norm_topk_prob": True, "bias": True},
        },
        "expert_weight_dtype": expert_dtype,
    }
    return d


def _llama4(c: _Cfg) -> dict[str, Any]:
    if c.raw.get("model_type") == "llama4":
        c = c.sub("text_config")
    d = _common(c)
    n = d["num_layers"]
    explicit = c.opt_int_list("moe_layers")
    if explicit is not None and sorted(explicit) == list(range(n)):
        layers: dict[str, Any] = {"kind": "all"}
    elif explicit is not None:
        layers = {"kind": "explicit", "layers": explicit}
    else:
        step = c.opt_int("interleave_moe_layer_step", 1, L.LAYERS)
        layers = {"kind": "all"} if step == 1 else {"kind": "interleaved", "step": step}
    d |= {
        "attention": _gqa(c, d["hidden_size"]),
        "dense_ffn_dim": c.opt_int("intermediate_size_mlp", 0, L.WIDTH_OR_ZERO),
        "moe_layers": layers,
        "moe": {
            "num_experts": c.req_int("num_local_experts", L.EXPERTS),
            "top_k": c.req_int("num_experts_per_tok", L.EXPERTS),
            "expert_ffn_dim": c.req_int("intermediate_size", L.WIDTH),
            "num_shared_experts": 1,
            "shared_expert_ffn_dim": c.req_int("intermediate_size", L.WIDTH),
            "router": {"scoring": "sigmoid", "norm_topk_prob": False},
        },
    }
    d["family"] = "llama4"
    return d


FAMILIES: dict[str, Callable[[_Cfg], dict[str, Any]]] = {
    "mixtral": _mixtral,
    "phimoe": _phimoe,
    "olmoe": _olmoe,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "deepseek": _deepseek,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
    "dbrx": _dbrx,
    "gpt_oss": _gpt_oss,
    "llama4": _llama4,
    "llama4_text": _llama4,
}


def spec_from_hf_dict(raw: dict[str, Any], where: str, name: str | None = None) -> ModelSpec:
    """Map a parsed ``config.json`` dict to a :class:`ModelSpec`."""
    if not isinstance(raw, dict):
        raise InputError("expected a JSON object at the top level", source=where)
    mt = raw.get("model_type")
    if not isinstance(mt, str) or mt not in FAMILIES:
        got = "missing" if mt is None else f"{L.short(mt)}" if isinstance(mt, str) else f"not a string ({L.short(mt)})"
        raise InputError(
            f"unsupported model_type {got}; supported: {', '.join(sorted(FAMILIES))}",
            source=where,
            field="model_type",
        )
    fields = FAMILIES[mt](_Cfg(raw, where))
    fields["name"] = name or Path(where).parent.name or Path(where).stem
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as exc:
        raise from_validation_error(exc, where, fields) from None


def load_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """Read a local Hugging Face ``config.json`` and return its :class:`ModelSpec`."""
    p = Path(path)
    raw = read_json(p)
    stem = p.stem if p.stem != "config" else p.parent.name
    return spec_from_hf_dict(raw, str(p), name=name or stem)
