"""Request streams: when requests arrive and how long their prompts and outputs are.

A stream is generated (seeded, deterministic) or read from a trace
(:mod:`moesim.serving.trace`). Generated streams draw their lengths and their
unit-rate inter-arrival gaps from separate random generators, so one seed gives
the same requests at every rate of a sweep, only closer together.

Arrivals:

* ``poisson``: exponential gaps of mean ``1 / rate``;
* ``gamma:CV``: gamma gaps of mean ``1 / rate`` and coefficient of variation
  ``CV`` (shape ``1 / CV^2``); ``CV = 1`` is Poisson, ``CV > 1`` burstier,
  ``CV < 1`` more regular.

Lengths (tokens, whole numbers >= 1), written as strings on the command line:

* ``fixed:N`` (or just ``N``);
* ``uniform:LO,HI``: every whole number from LO to HI equally likely;
* ``lognormal:MEDIAN,SIGMA``: ``round(MEDIAN exp(SIGMA Z))`` with ``Z`` standard
  normal, kept within 1 and the model's context (the only unbounded family);
* ``hist:V1=W1,V2=W2,...``: value ``Vi`` with probability ``Wi / sum W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from ..errors import InputError, from_validation_error

#: longest sequence any generated length may reach (the project's bound on tokens per sequence)
MAX_TOKENS = 100_000_000
#: most requests in one stream
MAX_REQUESTS = 10_000_000


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FixedLength(_Spec):
    """Every request has ``tokens`` tokens."""

    kind: Literal["fixed"] = "fixed"
    tokens: int = Field(ge=1, le=MAX_TOKENS, description="Tokens, count.")

    def largest(self) -> int:
        return self.tokens

    def mean(self) -> float:
        return float(self.tokens)

    def sample(self, rng: np.random.Generator, n: int, cap: int) -> np.ndarray:
        return np.full(n, self.tokens, dtype=np.int64)


class UniformLength(_Spec):
    """Every whole number from ``low`` to ``high`` equally likely."""

    kind: Literal["uniform"] = "uniform"
    low: int = Field(ge=1, le=MAX_TOKENS, description="Smallest length, tokens.")
    high: int = Field(ge=1, le=MAX_TOKENS, description="Largest length, tokens.")

    @model_validator(mode="after")
    def _order(self) -> "UniformLength":
        if self.high < self.low:
            raise ValueError(f"uniform needs LO <= HI; got LO {self.low:,} > HI {self.high:,}")
        return self

    def largest(self) -> int:
        return self.high

    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: np.random.Generator, n: int, cap: int) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, size=n, dtype=np.int64)


class LognormalLength(_Spec):
    """``round(median exp(sigma Z))``, Z standard normal, kept within 1 and the context."""

    kind: Literal["lognormal"] = "lognormal"
    median: float = Field(gt=0, le=MAX_TOKENS, description="Median length, tokens.")
    sigma: float = Field(ge=0, le=10, description="Standard deviation of the log length (0: fixed).")

    def largest(self) -> int:
        return 1  # unbounded: samples are clipped to the context instead

    def mean(self) -> float:
        return self.median * math.exp(self.sigma ** 2 / 2)

    def sample(self, rng: np.random.Generator, n: int, cap: int) -> np.ndarray:
        x = np.round(self.median * np.exp(self.sigma * rng.standard_normal(n)))
        return np.clip(x, 1, cap).astype(np.int64)


class HistogramLength(_Spec):
    """Value ``values[i]`` with probability ``weights[i] / sum(weights)``."""

    kind: Literal["hist"] = "hist"
    values: list[int] = Field(min_length=1, max_length=100_000, description="Lengths, tokens.")
    weights: list[float] = Field(min_length=1, max_length=100_000, description="Relative frequencies (>= 0).")

    @model_validator(mode="after")
    def _check(self) -> "HistogramLength":
        if len(self.values) != len(self.weights):
            raise ValueError(f"hist needs one weight per value; got {len(self.values)} values and "
                             f"{len(self.weights)} weights")
        bad = [v for v in self.values if not 1 <= v <= MAX_TOKENS]
        if bad:
            raise ValueError(f"hist values must be whole numbers from 1 to {MAX_TOKENS:,}; got {bad[0]!r}")
        if any(not math.isfinite(w) or w < 0 for w in self.weights):
            raise ValueError("hist weights must be finite and >= 0")
        if sum(self.weights) <= 0:
            raise ValueError("hist weights must not all be zero")
        return self

    def largest(self) -> int:
        return max(v for v, w in zip(self.values, self.weights) if w > 0)

    def mean(self) -> float:
        w = np.asarray(self.weights)
        return float(np.dot(self.values, w) / w.sum())

    def sample(self, rng: np.random.Generator, n: int, cap: int) -> np.ndarray:
        w = np.asarray(self.weights, dtype=float)
        return rng.choice(np.asarray(self.values, dtype=np.int64), size=n, p=w / w.sum())


LengthDist = Annotated[Union[FixedLength, UniformLength, LognormalLength, HistogramLength], Field(discriminator="kind")]


class PoissonArrivals(_Spec):
    """Exponential gaps (a Poisson process)."""

    kind: Literal["poisson"] = "poisson"

    def gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(1.0, size=n)


class GammaArrivals(_Spec):
    """Gamma gaps of mean 1 (at unit rate) and coefficient of variation ``cv``."""

    kind: Literal["gamma"] = "gamma"
    cv: float = Field(gt=0, le=100, description="Coefficient of variation of the gaps (1 = Poisson).")

    def gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shape = 1.0 / self.cv ** 2
        return rng.gamma(shape, 1.0 / shape, size=n)


Arrivals = Annotated[Union[PoissonArrivals, GammaArrivals], Field(discriminator="kind")]

_LENGTH = TypeAdapter(LengthDist)
_ARRIVALS = TypeAdapter(Arrivals)


def _numbers(text: str, source: str, what: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            out.append(float(part.strip().replace("_", "")))
        except ValueError:
            raise InputError(f"{what}: {part.strip()!r} is not a number", source=source) from None
    return out


def _validated(adapter: TypeAdapter, raw: dict, source: str):
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        err = from_validation_error(exc, source)
        field = (err.field or "").split(".")[-1]
        if field == raw.get("kind"):  # a rule on the whole distribution, not on one parameter
            field = ""
        raise InputError(f"{field + ': ' if field else ''}{err.message}", source=source) from None


def _whole(x: float, source: str, what: str) -> int:
    if not math.isfinite(x) or not float(x).is_integer():
        raise InputError(f"{what} must be a whole number of tokens; got {x:g}", source=source)
    return int(x)


LENGTH_FORMS = "fixed:N (or N), uniform:LO,HI, lognormal:MEDIAN,SIGMA, hist:V1=W1,V2=W2,..."


def parse_length(text: str | int | BaseModel, source: str):
    """A length distribution from its string form (see the module docstring) or a model."""
    if isinstance(text, BaseModel):
        return text
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    s = str(text).strip()
    kind, sep, args = s.partition(":")
    kind = kind.strip().lower()
    if not sep:
        kind, args = "fixed", s
    if kind == "fixed":
        vals = _numbers(args, source, "fixed")
        if len(vals) != 1:
            raise InputError(f"fixed takes one length, got {args!r}; allowed: {LENGTH_FORMS}", source=source)
        return _validated(_LENGTH, {"kind": "fixed", "tokens": _whole(vals[0], source, "fixed")}, source)
    if kind == "uniform":
        vals = _numbers(args, source, "uniform")
        if len(vals) != 2:
            raise InputError(f"uniform takes LO,HI, got {args!r}", source=source)
        return _validated(_LENGTH, {"kind": "uniform", "low": _whole(vals[0], source, "uniform LO"),
                                    "high": _whole(vals[1], source, "uniform HI")}, source)
    if kind == "lognormal":
        vals = _numbers(args, source, "lognormal")
        if len(vals) != 2:
            raise InputError(f"lognormal takes MEDIAN,SIGMA, got {args!r}", source=source)
        return _validated(_LENGTH, {"kind": "lognormal", "median": vals[0], "sigma": vals[1]}, source)
    if kind in ("hist", "histogram"):
        values, weights = [], []
        for part in args.split(","):
            v, eq, w = part.partition("=")
            if not eq:
                raise InputError(f"hist entries are VALUE=WEIGHT, got {part.strip()!r}", source=source)
            values.append(_whole(_numbers(v, source, "hist value")[0], source, "hist value"))
            weights.append(_numbers(w, source, "hist weight")[0])
        return _validated(_LENGTH, {"kind": "hist", "values": values, "weights": weights}, source)
    raise InputError(f"unknown length distribution {kind!r}; allowed: {LENGTH_FORMS}", source=source)


def parse_arrivals(text: str | BaseModel, source: str):
    """``poisson`` or ``gamma:CV``."""
    if isinstance(text, BaseModel):
        return text
    s = str(text).strip().lower()
    kind, sep, args = s.partition(":")
    if kind == "poisson" and not sep:
        return PoissonArrivals()
    if kind == "gamma" and sep:
        vals = _numbers(args, source, "gamma")
        if len(vals) != 1:
            raise InputError(f"gamma takes one coefficient of variation, got {args!r}", source=source)
        return _validated(_ARRIVALS, {"kind": "gamma", "cv": vals[0]}, source)
    raise InputError(f"unknown arrival process {text!r}; allowed: poisson, gamma:CV (CV > 0; 1 = Poisson)",
                     source=source)


@dataclass(frozen=True)
class RequestStream:
    """Requests sorted by arrival: seconds from the start, prompt and output tokens."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str
    rate_per_s: float | None = None
    #: line of each request in its trace file (None for a generated stream)
    lines: np.ndarray | None = None
    #: what error messages name as the source of a request: the trace file, or the length flags
    origin: str = "--prompt-tokens / --output-tokens"

    def __len__(self) -> int:
        return len(self.arrival_s)

    def at_rate(self, rate_per_s: float) -> "RequestStream":
        """The same requests with arrival times scaled to ``rate_per_s`` (generated streams only)."""
        if self.rate_per_s is None:
            raise ValueError("only a generated stream can be re-timed")
        return RequestStream(self.arrival_s * (self.rate_per_s / rate_per_s), self.prompt_tokens, self.output_tokens,
                             self.source, rate_per_s, self.lines, self.origin)

    def all_at_once(self, n: int | None = None) -> "RequestStream":
        """The first ``n`` requests, all arriving at time 0 (an overload to measure the saturation rate)."""
        k = len(self) if n is None else min(n, len(self))
        return RequestStream(np.zeros(k), self.prompt_tokens[:k], self.output_tokens[:k], self.source, None,
                             None if self.lines is None else self.lines[:k], self.origin)

    def where(self, i: int) -> str:
        """How a message names request ``i``."""
        return f"line {int(self.lines[i])}" if self.lines is not None else f"request {i}"


def check_rate(rate: float, source: str = "--rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise InputError(f"the request rate must be a finite number of requests/s > 0; got {rate!r}", source=source)
    if rate > 1e9:
        raise InputError(f"the request rate must be at most 1e9 requests/s; got {rate:g}", source=source)
    return float(rate)


def generate(rate_per_s: float, num_requests: int, *, arrivals="poisson", prompt_tokens="fixed:1024",
             output_tokens="fixed:256", seed: int = 0, max_context: int | None = None) -> RequestStream:
    """A seeded stream of ``num_requests`` requests at ``rate_per_s`` (see the module docstring).

    ``max_context`` (the model's): prompt + output of a request must fit; a bounded
    distribution that can exceed it is an error, lognormal samples are clipped
    (the prompt is shortened to leave room for the output).
    """
    rate = check_rate(rate_per_s)
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or not 1 <= num_requests <= MAX_REQUESTS:
        raise InputError(f"the number of requests must be a whole number from 1 to {MAX_REQUESTS:,}; got "
                         f"{num_requests!r}", source="--requests")
    arr = parse_arrivals(arrivals, "--arrival")
    pd = parse_length(prompt_tokens, "--prompt-tokens")
    od = parse_length(output_tokens, "--output-tokens")
    ctx = max_context or MAX_TOKENS
    if pd.largest() + od.largest() > ctx:
        raise InputError(f"prompt and output lengths can reach {pd.largest():,} + {od.largest():,} tokens, over the "
                         f"model's {ctx:,}-token context", source="--prompt-tokens" if pd.largest() >= od.largest()
                         else "--output-tokens")
    if ctx < 2:
        raise InputError(f"the model's context ({ctx}) leaves no room for a prompt and an output token",
                         source="--prompt-tokens")
    ss = np.random.SeedSequence(seed)
    g_arr, g_p, g_o = (np.random.default_rng(s) for s in ss.spawn(3))
    gaps = arr.gaps(g_arr, num_requests)
    t = np.cumsum(gaps) - gaps[0]  # the first request arrives at 0
    o = od.sample(g_o, num_requests, ctx - 1)
    p = pd.sample(g_p, num_requests, ctx - 1)
    p = np.minimum(p, ctx - o)
    return RequestStream(t / rate, p.astype(np.int64), o.astype(np.int64),
                         f"{arr.kind} arrivals, prompt {describe(pd)}, output {describe(od)}, seed {seed}", rate)


def describe(dist) -> str:
    """Short text of a length distribution."""
    if isinstance(dist, FixedLength):
        return f"fixed:{dist.tokens}"
    if isinstance(dist, UniformLength):
        return f"uniform:{dist.low},{dist.high}"
    if isinstance(dist, LognormalLength):
        return f"lognormal:{dist.median:g},{dist.sigma:g}"
    return "hist:" + ",".join(f"{v}={w:g}" for v, w in zip(dist.values, dist.weights))
