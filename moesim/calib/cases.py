"""Validation cases: a TOML list of MoE layer configurations, never used for fitting.

A cases file holds ``[[case]]`` tables with the keys of :class:`ValidationCase`::

    [[case]]
    name = "e8-k2-zipf"
    num_tokens = 1024
    d_model = 768
    d_expert_ffn = 1536
    num_experts = 8
    top_k = 2
    routing = "zipf:1.2"          # any moesim.load distribution text
    implementation = "grouped"    # loop | padded | grouped
    dtype = "fp32"                # fp32 | bf16 | fp16
    # optional: capacity_factor, num_shared_experts, d_shared_ffn, ep_size, router,
    #           num_groups, topk_groups, norm_topk_prob, seed
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import InputError, from_validation_error
from ..io import read_toml
from ..load.distributions import parse_distribution
from .layer_spec import MoELayerSpec


class ValidationCase(MoELayerSpec):
    """One layer configuration to predict and measure."""

    name: str = Field(min_length=1, description="Case name (unique in the file).")
    routing: str = Field("uniform", description="Forced routing distribution: uniform, zipf:S, dirichlet:A, hist:...")
    seed: int = Field(0, ge=0, description="Seed of the forced routing and of the weights, count.")

    @field_validator("routing")
    @classmethod
    def _known_routing(cls, v: str) -> str:
        try:
            parse_distribution(v, source="routing")
        except InputError as exc:
            raise ValueError(exc.message) from None
        return v

    @model_validator(mode="after")
    def _routing(self) -> "ValidationCase":
        dist = parse_distribution(self.routing, source="routing")
        if self.router == "expert_choice" and dist.kind != "uniform":
            raise ValueError(
                f"router = 'expert_choice' balances load by construction; routing must be 'uniform' (got {self.routing!r})"
            )
        return self

    def layer_spec(self) -> MoELayerSpec:
        """The layer alone (without name, routing and seed)."""
        return MoELayerSpec.model_validate(self.model_dump(exclude={"name", "routing", "seed"}))


CASE_KEYS = tuple(ValidationCase.model_fields)


def parse_case(raw: dict, *, source: str, where: str = "") -> ValidationCase:
    try:
        return ValidationCase.model_validate(raw)
    except ValidationError as exc:
        err = from_validation_error(exc, source)
        field = f"{where}.{err.field}" if where and err.field else (where or err.field)
        msg = err.message
        if "unknown key" in msg:
            msg = f"unknown key; allowed keys: {', '.join(CASE_KEYS)}"
        raise InputError(msg, source=source, field=field) from None
    except InputError as exc:  # from the routing parser
        raise InputError(exc.message, source=source, field=f"{where}.routing" if where else "routing") from None


def parse_cases(raw: dict, source: str) -> list[ValidationCase]:
    """Validate a parsed cases file (``{"case": [...]}``)."""
    extra = set(raw) - {"case"}
    if extra:
        raise InputError(f"unknown top-level key(s) {sorted(extra)}; a cases file holds only [[case]] tables",
                         source=source, field=sorted(extra)[0])
    items = raw.get("case")
    if not isinstance(items, list) or not items:
        raise InputError("no [[case]] tables found", source=source, field="case")
    cases = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError("each case must be a table", source=source, field=f"case[{i}]")
        name = item.get("name") if isinstance(item.get("name"), str) else None
        c = parse_case(item, source=source, where=f"case[{i}]" + (f" ({name})" if name else ""))
        if c.name in seen:
            raise InputError(f"duplicate case name {c.name!r}", source=source, field=f"case[{i}].name")
        seen.add(c.name)
        cases.append(c)
    return cases


def load_cases(path: str | Path) -> list[ValidationCase]:
    """Read and validate a cases TOML file (one-line :class:`InputError` on any problem)."""
    p = Path(path)
    return parse_cases(read_toml(p), str(p))
