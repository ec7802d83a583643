"""Routing distributions: how often each routed expert is chosen.

A distribution gives the per-slot expert probabilities ``p`` (length E, sum 1):
the chance that one routing choice goes to expert ``e``. With top-k routing a
token makes k choices without replacement (see :mod:`moesim.load.routing`), so
the fraction of tokens that use expert ``e`` is the inclusion probability
``pi_e``, not ``k * p_e``; the two agree only for uniform routing.

Variants (a pydantic discriminated union on ``kind``):

* ``uniform``: ``p_e = 1/E`` (a perfectly balanced router).
* ``zipf``: ``p_e ∝ (rank_e + 1) ** -s`` with exponent ``s >= 0`` (``s = 0`` is
  uniform). Expert 0 is the hottest unless ``seed`` permutes which expert gets
  which rank.
* ``dirichlet``: ``p ~ Dirichlet(alpha * 1_E)`` drawn once with ``seed``; small
  ``alpha`` (< 1) gives a few hot experts, large ``alpha`` tends to uniform.
* ``histogram``: measured per-expert counts (tokens or slots per expert, for
  example from a deployment log), normalised to sum 1.

Every variant is deterministic: the same spec always gives the same ``p``.
:class:`LayerDistributions` assigns a different distribution to some layers.

Text form (CLI flags, :func:`parse_distribution`): ``uniform``, ``zipf:1.2``,
``zipf:1.2:SEED``, ``dirichlet:0.3``, ``dirichlet:0.3:SEED``,
``hist:3,1,1,0``, ``hist:FILE.json``, ``hist:FILE.csv`` and
``hist:FILE.json@LAYER`` to pick one row of a per-layer file.
"""

from __future__ import annotations

import csv
import io as _io
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InputError, from_validation_error
from ..io import read_json, read_text

__all__ = [
    "Uniform",
    "Zipf",
    "Dirichlet",
    "Histogram",
    "Distribution",
    "LayerDistributions",
    "parse_distribution",
    "parse_layer_distributions",
    "read_histogram_file",
    "expert_probs",
    "DISTRIBUTION_FORMS",
]

#: the accepted text forms, for error messages and --help
DISTRIBUTION_FORMS = "uniform, zipf:EXPONENT[:SEED], dirichlet:ALPHA[:SEED], hist:N,N,... or hist:FILE.json|FILE.csv[@LAYER]"


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Uniform(_Spec):
    """Every expert equally likely: ``p_e = 1/E``."""

    kind: Literal["uniform"] = "uniform"


class Zipf(_Spec):
    """Power-law skew: ``p_e ∝ (r_e + 1) ** -exponent`` where ``r_e`` is expert e's popularity rank.

    Without ``seed`` expert 0 is the hottest (rank 0), expert 1 the next, and so on,
    which is the worst case for contiguous placement (the hot experts share a rank).
    With ``seed`` the ranks are a seeded random permutation of the experts.
    """

    kind: Literal["zipf"] = "zipf"
    exponent: float = Field(ge=0, allow_inf_nan=False, description="Zipf exponent s, dimensionless (0 = uniform).")
    seed: int | None = Field(None, ge=0, description="Seed of the permutation of popularity ranks, >= 0; None = expert 0 hottest.")


class Dirichlet(_Spec):
    """Random expert popularity ``p ~ Dirichlet(concentration * 1_E)``, drawn once from ``seed``."""

    kind: Literal["dirichlet"] = "dirichlet"
    concentration: float = Field(gt=0, allow_inf_nan=False, description="Symmetric concentration alpha, dimensionless.")
    seed: int = Field(0, ge=0, description="Seed of the draw (numpy PCG64), >= 0.")


class Histogram(_Spec):
    """Measured per-expert counts (tokens or routing slots per expert), normalised to probabilities."""

    kind: Literal["histogram"] = "histogram"
    counts: list[float] = Field(min_length=1, description="Count per expert, any unit (only ratios matter); >= 0, finite.")

    @field_validator("counts")
    @classmethod
    def _finite_nonnegative(cls, v: list[float]) -> list[float]:
        bad = [i for i, x in enumerate(v) if not math.isfinite(x) or x < 0]
        if bad:
            i = bad[0]
            raise ValueError(
                f"histogram entry {i} is {v[i]!r}; entries must be finite and >= 0 ({len(bad)} bad entr{'y' if len(bad) == 1 else 'ies'})"
            )
        if sum(v) <= 0:
            raise ValueError("histogram entries sum to 0; at least one expert needs a positive count")
        return v


Distribution = Annotated[Union[Uniform, Zipf, Dirichlet, Histogram], Field(discriminator="kind")]


class LayerDistributions(_Spec):
    """A default distribution and per-layer overrides (0-based MoE layer index -> distribution)."""

    default: Distribution = Field(default_factory=Uniform, description="Distribution of layers not listed.")
    layers: dict[int, Distribution] = Field(default_factory=dict, description="Overrides by 0-based MoE layer index.")

    def for_layer(self, layer: int) -> Uniform | Zipf | Dirichlet | Histogram:
        return self.layers.get(layer, self.default)


# ------------------------------------------------------------------ probabilities

def expert_probs(dist: Distribution, num_experts: int) -> np.ndarray:
    """Per-slot expert probabilities ``p`` (float64, length ``num_experts``, sum 1).

    Raises :class:`InputError` when a histogram's length differs from ``num_experts``.
    """
    if num_experts < 1:
        raise InputError(f"num_experts must be >= 1, got {num_experts}", field="num_experts")
    e = num_experts
    if isinstance(dist, Uniform):
        return np.full(e, 1.0 / e)
    if isinstance(dist, Zipf):
        w = np.arange(1, e + 1, dtype=float) ** (-dist.exponent)
        if dist.seed is not None:
            w = w[np.random.default_rng(dist.seed).permutation(e)]
        return w / w.sum()
    if isinstance(dist, Dirichlet):
        rng = np.random.default_rng(dist.seed)
        # Gamma draws normalised; guard the all-underflow case of tiny alpha
        g = rng.standard_gamma(dist.concentration, size=e)
        if not np.any(g > 0):
            g = np.zeros(e)
            g[rng.integers(e)] = 1.0
        return g / g.sum()
    if isinstance(dist, Histogram):
        if len(dist.counts) != e:
            raise InputError(
                f"histogram has {len(dist.counts)} entries but the model has {e} experts; give one count per expert",
                field="distribution.counts",
            )
        c = np.asarray(dist.counts, dtype=float)
        return c / c.sum()
    raise TypeError(f"not a distribution: {dist!r}")  # pragma: no cover


# ------------------------------------------------------------------ parsing

def _float(text: str, source: str, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise InputError(f"{what} must be a number, got {text!r}", source=source, field="distribution") from None
    return x


def _int(text: str, source: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{what} must be an integer, got {text!r}", source=source, field="distribution") from None


def _validated(cls: type[_Spec], source: str, **kw: Any) -> Any:
    try:
        return cls(**kw)
    except ValidationError as exc:
        err = from_validation_error(exc, source)
        raise InputError(err.message, source=source, field=f"distribution.{err.field}" if err.field else "distribution") from None


def _rows_from_json(obj: Any, path: str) -> list[list[float]]:
    if isinstance(obj, dict):
        for key in ("counts", "tokens_per_expert", "histogram"):
            if key in obj:
                return _rows_from_json(obj[key], path)
        raise InputError(
            "JSON object needs a 'counts' (or 'tokens_per_expert') key holding a list of numbers per expert",
            source=path,
            field="counts",
        )
    if isinstance(obj, list) and obj and all(isinstance(r, list) for r in obj):
        rows = obj
    elif isinstance(obj, list):
        rows = [obj]
    else:
        raise InputError("expected a list of per-expert counts (or a list of such lists, one per layer)", source=path)
    out: list[list[float]] = []
    for i, row in enumerate(rows):
        vals = []
        for j, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                where = f"counts[{i}][{j}]" if len(rows) > 1 else f"counts[{j}]"
                raise InputError(f"not a number: {x!r}", source=path, field=where)
            vals.append(float(x))
        out.append(vals)
    return out


def _rows_from_csv(text: str, path: str) -> list[list[float]]:
    rows = [r for r in csv.reader(_io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        raise InputError("empty CSV file", source=path)
    header = None
    try:
        [float(c) for c in rows[0] if c.strip()]
    except ValueError:
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    if header is not None and "expert" in header and len(header) >= 2:
        ci = next((header.index(n) for n in ("count", "counts", "tokens", "load") if n in header), None)
        if ci is None:
            ci = 1 if header.index("expert") == 0 else 0
        ei = header.index("expert")
        pairs: dict[int, float] = {}
        for ln, r in enumerate(rows, start=2):
            try:
                pairs[int(float(r[ei]))] = float(r[ci])
            except (ValueError, IndexError):
                raise InputError(f"line {ln}: expected numbers in columns {header[ei]!r} and {header[ci]!r}", source=path) from None
        n = max(pairs) + 1 if pairs else 0
        missing = sorted(set(range(n)) - set(pairs))
        if missing:
            raise InputError(f"experts {missing[:5]} have no row; list every expert 0..{n - 1}", source=path, field="expert")
        return [[pairs[i] for i in range(n)]]
    out = []
    for ln, r in enumerate(rows, start=2 if header else 1):
        try:
            out.append([float(c) for c in r if c.strip()])
        except ValueError:
            raise InputError(f"line {ln}: not a number in {r!r}", source=path) from None
    if all(len(r) == 1 for r in out):  # one count per line
        return [[r[0] for r in out]]
    widths = {len(r) for r in out}
    if len(widths) > 1:
        raise InputError(f"rows have different lengths {sorted(widths)}; one row per layer, one column per expert", source=path)
    return out


def read_histogram_file(path: str | Path) -> list[list[float]]:
    """Per-expert counts from a JSON or CSV file: one row per layer (a single row for one layer).

    JSON: a list of numbers, a list of lists (one per layer), or an object with a
    ``counts`` / ``tokens_per_expert`` key holding either. CSV: one count per line,
    one row, one row per layer, or ``expert,count`` columns with a header.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        rows = _rows_from_json(read_json(p), str(p))
    elif suffix == ".csv":
        rows = _rows_from_csv(read_text(p), str(p))
    else:
        raise InputError(f"histogram file must end in .json or .csv, got {p.name!r}", source=str(p))
    if not rows or not rows[0]:
        raise InputError("no counts in file", source=str(p))
    return rows


def _histograms(spec: str, source: str) -> tuple[list[list[float]], str]:
    """Rows of counts for ``hist:...`` and the name of where they came from."""
    if not spec:
        raise InputError(f"'hist:' needs counts or a file; allowed: {DISTRIBUTION_FORMS}", source=source, field="distribution")
    head = spec.rsplit("@", 1)[0]
    if Path(head).suffix.lower() in (".json", ".csv"):
        layer = None
        if "@" in spec:
            layer = _int(spec.rsplit("@", 1)[1], source, "layer after '@'")
        rows = read_histogram_file(head)
        if layer is not None:
            if not 0 <= layer < len(rows):
                raise InputError(f"layer {layer} out of range; the file has {len(rows)} layer row(s)", source=head, field="layer")
            rows = [rows[layer]]
        return rows, head
    try:
        vals = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        if "," not in spec:  # a single word: meant as a file
            raise InputError(
                f"histogram file must end in .json or .csv, got {head!r}", source=source, field="distribution"
            ) from None
        bad = next(x for x in spec.split(",") if x.strip() and not _is_float(x))
        raise InputError(f"histogram entry must be a number, got {bad.strip()!r}", source=source, field="distribution") from None
    if not vals:
        raise InputError("'hist:' needs at least one count", source=source, field="distribution")
    return [vals], source


def _is_float(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


def _histogram(rows: list[float], where: str) -> Histogram:
    return _validated(Histogram, where, counts=rows)


def parse_distribution(text: str, *, source: str = "--distribution") -> Uniform | Zipf | Dirichlet | Histogram:
    """Parse the text form of a distribution (see module docstring); :class:`InputError` on anything else."""
    t = text.strip()
    name, _, rest = t.partition(":")
    name = name.lower()
    if name == "uniform" and not rest:
        return Uniform()
    if name in ("zipf", "powerlaw", "power-law"):
        parts = rest.split(":") if rest else []
        if not 1 <= len(parts) <= 2:
            raise InputError(f"expected zipf:EXPONENT[:SEED], got {text!r}", source=source, field="distribution")
        seed = _int(parts[1], source, "zipf seed") if len(parts) == 2 else None
        return _validated(Zipf, source, exponent=_float(parts[0], source, "zipf exponent"), seed=seed)
    if name == "dirichlet":
        parts = rest.split(":") if rest else []
        if not 1 <= len(parts) <= 2:
            raise InputError(f"expected dirichlet:ALPHA[:SEED], got {text!r}", source=source, field="distribution")
        seed = _int(parts[1], source, "dirichlet seed") if len(parts) == 2 else 0
        return _validated(Dirichlet, source, concentration=_float(parts[0], source, "dirichlet concentration"), seed=seed)
    if name in ("hist", "histogram"):
        rows, where = _histograms(rest, source)
        if len(rows) > 1:
            raise InputError(
                f"file holds {len(rows)} layers; pick one with hist:FILE@LAYER (or use the per-layer API)",
                source=where,
                field="distribution",
            )
        return _histogram(rows[0], where)
    raise InputError(f"unknown distribution {text!r}; allowed: {DISTRIBUTION_FORMS}", source=source, field="distribution")


def parse_layer_distributions(text: str, *, source: str = "--distribution") -> LayerDistributions:
    """Like :func:`parse_distribution`, but a per-layer histogram file gives one distribution per layer."""
    t = text.strip()
    name, _, rest = t.partition(":")
    if name.lower() in ("hist", "histogram"):
        rows, where = _histograms(rest, source)
        if len(rows) > 1:
            hs = [_histogram(r, where) for r in rows]
            return LayerDistributions(default=hs[0], layers={i: h for i, h in enumerate(hs)})
    return LayerDistributions(default=parse_distribution(text, source=source))
