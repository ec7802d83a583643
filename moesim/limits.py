"""The physical range of every count and size that input can set, in one place.

Every number a user can give (a scenario or model file, ``--set``, a Hugging Face
``config.json``, a command-line flag) is checked once, where it is parsed,
against one :class:`Limit` defined here. The schema (:mod:`moesim.scenario`,
:mod:`moesim.model`), the importer (:mod:`moesim.hf_import`), the file readers
(:mod:`moesim.io`) and the CLI flags all use these objects, so a limit and its
reason are written once and every surface reports them the same way::

    workload.prompt_tokens: must be at most 100,000,000 (10x the longest published context window,
    Llama 4 Scout's 10M tokens); got 1e+30

The upper bounds are far above anything built or published (the reason says
by how much): they exist so that a typo or a hostile value (``10**30``, ``inf``)
is refused with a clear line instead of overflowing numpy, running for hours or
printing a figure that no machine could reach. Floats must be finite.

A few limits are computational rather than physical (the size of the load
model's Monte Carlo tables, the number of sweep points, the nesting of a file);
their reason says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

__all__ = [
    "Limit",
    "TextLimit",
    "short",
    "count",
    "number",
    "text",
]


def short(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters (huge integers as ``1e+30``), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= 10**15:
        try:
            return f"{float(value):.3g}"
        except OverflowError:
            return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else repr(value)
    text = repr(value)
    if len(text) > width:
        text = text[: width - 15] + f"... ({len(text):,} characters)"
    return text


def _fmt(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e13:
        return f"{int(x):,}"
    return f"{x:.3g}"


@dataclass(frozen=True)
class Limit:
    """The allowed range of one kind of number, and why its upper bound is where it is.

    ``lo`` is the smallest allowed value (excluded when ``lo_open``); ``hi`` the
    largest. ``integer`` limits accept whole numbers only (an integral float such
    as ``8.0`` or ``1e6`` is taken as that integer).
    """

    what: str
    lo: float
    hi: float
    why: str
    integer: bool = True
    lo_open: bool = False

    @property
    def allowed(self) -> str:
        """The range in words, e.g. ``1 to 10,000`` or ``> 0 and at most 10,000``."""
        if self.lo_open:
            return f"> {_fmt(self.lo)} and at most {_fmt(self.hi)}"
        return f"{_fmt(self.lo)} to {_fmt(self.hi)}"

    def problem(self, value: Any, *, lower: bool = True) -> str | None:
        """Why ``value`` (an int or float) is outside this limit, or None when it is inside.

        ``lower=False`` leaves the lower bound to a later check with its own wording.
        """
        if isinstance(value, bool):
            return f"expected a number, got {short(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number ({self.allowed}); got {short(value)}"
        if self.integer and isinstance(value, float) and not value.is_integer():
            return f"must be a whole number ({self.allowed}); got {short(value)}"
        if value > self.hi:
            return f"must be at most {_fmt(self.hi)} ({self.why}); got {short(value)}"
        if lower and (value < self.lo or (self.lo_open and value <= self.lo)):
            return self.below()
        return None

    def below(self) -> str:
        """The message for a value under the lower bound (pydantic's wording, as ``Field(gt=...)`` gives)."""
        if self.lo_open:
            return f"Input should be greater than {_fmt(self.lo)}"
        if self.integer and self.lo >= 1:
            return f"Input should be greater than {_fmt(self.lo - 1)}"
        return f"Input should be greater than or equal to {_fmt(self.lo)}"

    def convert(self, value: Any) -> Any:
        """``value`` checked (ints and integral floats become int for integer limits); ValueError if outside.

        Anything that is not a number is returned unchanged, for the caller's
        type check to refuse with its own message.
        """
        if isinstance(value, (int, float)):
            msg = self.problem(value)
            if msg is not None:
                raise ValueError(msg)
            if self.integer:
                return int(value)
            return float(value)
        return value

    def check(self, value: Any, *, source: str | None = None, field: str | None = None) -> Any:
        """:meth:`convert`, raising :class:`~moesim.errors.InputError` naming ``source`` and ``field``."""
        try:
            return self.convert(value)
        except ValueError as exc:
            from .errors import InputError

            raise InputError(str(exc), source=source, field=field) from None

    def _after(self, value: Any) -> Any:
        """Check a value again after pydantic parsed it (a numeric string such as ``"1e400"``)."""
        return self.convert(value)

    def schema(self) -> dict[str, Any]:
        key = "exclusiveMinimum" if self.lo_open else "minimum"
        lo: float = int(self.lo) if self.integer else self.lo
        hi: float = int(self.hi) if self.integer else self.hi
        return {key: lo, "maximum": hi}

    def parse_text(self, text: str, *, lower: bool = True) -> int | float:
        """A command-line value: ``16384``, ``16_384``, ``1e6`` (integral for integer limits), ``0.5``."""
        t = text.strip().replace("_", "")
        if len(t) > 64:
            raise ValueError(f"expected a number ({self.allowed}); got {short(text)}")
        try:
            v: int | float = int(t)
        except ValueError:
            try:
                v = float(t)
            except ValueError:
                kind = "a whole number" if self.integer else "a number"
                raise ValueError(f"expected {kind} ({self.allowed}); got {short(text)}") from None
        msg = self.problem(v, lower=lower)
        if msg is not None:
            raise ValueError(msg)
        return int(v) if self.integer else float(v)


def _after_validator(limit: Limit):  # noqa: ANN202
    from pydantic import AfterValidator

    return AfterValidator(limit._after)


def count(limit: Limit) -> Any:
    """An ``int`` pydantic type bounded by ``limit`` (booleans refused, huge values named)."""
    return Annotated[int, BeforeValidator(limit.convert), _after_validator(limit),
                     Field(json_schema_extra=limit.schema())]


def number(limit: Limit) -> Any:
    """A finite ``float`` pydantic type bounded by ``limit``."""
    return Annotated[float, BeforeValidator(limit.convert), _after_validator(limit),
                     Field(json_schema_extra=limit.schema())]


@dataclass(frozen=True)
class TextLimit:
    """The longest text allowed for one kind of string, and why."""

    what: str
    max_chars: int
    why: str

    def problem(self, value: str) -> str | None:
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars:,} characters ({self.why}); got {len(value):,}"
        if "\x00" in value:
            return "must not contain a NUL character"
        return None

    def convert(self, value: Any) -> Any:
        if isinstance(value, str):
            msg = self.problem(value)
            if msg is not None:
                raise ValueError(msg)
        return value

    def check(self, value: str, *, source: str | None = None, field: str | None = None) -> str:
        """``value`` unchanged, or :class:`~moesim.errors.InputError` naming ``source`` and ``field``."""
        msg = self.problem(value)
        if msg is not None:
            from .errors import InputError

            raise InputError(msg, source=source, field=field)
        return value


def text(limit: TextLimit) -> Any:
    """A ``str`` pydantic type at most ``limit.max_chars`` long, without NUL characters."""
    return Annotated[str, BeforeValidator(limit.convert), Field(json_schema_extra={"maxLength": limit.max_chars})]


# ============================================================================ the limits
# Model architecture

LAYERS = Limit("decoder layers", 1, 10_000, "the deepest published LLMs have under 200 layers")
LAYER_INDEX = Limit("a layer index", 0, LAYERS.hi - 1, "indices of layers below the 10,000-layer limit")
WIDTH = Limit("a width (hidden, FFN, head or low-rank size)", 1, 1_000_000,
              "published models stay below 100,000")
WIDTH_OR_ZERO = Limit("a width (0 = none)", 0, WIDTH.hi, WIDTH.why)
HEADS = Limit("attention heads", 1, 100_000, "published models have at most 128 query heads")
VOCAB = Limit("vocabulary entries", 1, 10_000_000, "the largest published vocabularies have about 260,000 entries")
EXPERTS = Limit("routed experts", 1, 16_384, "40x the most routed experts of a published MoE (Kimi K2: 384)")
EXPERTS_OR_ZERO = Limit("experts (0 = none)", 0, EXPERTS.hi, EXPERTS.why)
PARAMS = Limit("parameters of a model", 1, 1e15, "500x the largest published models, about 2 trillion parameters")
ATTENTION_WIDTH = Limit("attention width (heads x head dimension)", 1, WIDTH.hi, WIDTH.why)
MTP_MODULES = Limit("multi-token-prediction modules", 0, LAYERS.hi, "at most one per layer limit")
CONTEXT = Limit("tokens per sequence", 1, 100_000_000,
                "10x the longest published context window, Llama 4 Scout's 10M tokens")

# Workload

SEQUENCES = Limit("sequences per batch", 1, 1_000_000_000, "10,000x the largest published serving batches")
STEP_TOKENS = Limit("tokens in one step", 1, 10_000_000_000,
                    "150x the largest published training step, DeepSeek-V3's 15,360 x 4,096 tokens")
RUN_TOKENS = Limit("tokens of a run", 0, 1e15, "30x the largest published pre-training run, Qwen3's 36T tokens",
                   integer=False, lo_open=True)

# Cluster and layout

GPUS = Limit("accelerators", 1, 1_000_000, "5x the largest GPU clusters built, about 200,000 accelerators")
NODES = Limit("nodes", 1, GPUS.hi, "at most one node per accelerator limit")
MICROBATCHES = Limit("micro-batches per step", 1, 1_000_000, "the pipeline schedule has one entry per micro-batch")

NODE_SIZE = Limit("accelerators per node or scale-up domain", 1, 4_096,
                  "7x the largest scale-up domain announced, NVL576")
NICS = Limit("NICs per node", 0, 1_024, "nodes carry at most 8 to 16 NICs")
SWITCH_PORTS = Limit("ports per switch", 2, 65_536, "switches have at most a few hundred ports")
OVERSUBSCRIPTION = Limit("an oversubscription ratio", 1, 1_000, "fabrics are built at 1:1 to 4:1", integer=False)

# Routing and load model

CAPACITY_FACTOR = Limit("a capacity factor", 0, 1_000, "published runs use 1 to 2; above E / k it only adds padding",
                        integer=False, lo_open=True)
MEAN_EXPERTS = Limit("mean experts per token", 0, EXPERTS.hi, EXPERTS.why, integer=False, lo_open=True)
DIRICHLET_CONCENTRATION = Limit("a Dirichlet concentration", 0.05, 1e6,
                                "below 0.05 a draw leaves experts with shares under 1e-300 that the load model "
                                "cannot resolve", integer=False)
#: the inclusion probabilities of non-uniform top-k routing cost about experts x top-k^2
SKEWED_ROUTING_WORK = Limit(
    "experts x top-k^2 of non-uniform top-k routing", 1, 2**18,
    "beyond it the load model's top-k inclusion probabilities take minutes",
)
REDUNDANT_EXPERTS = Limit("redundant expert replicas", 0, 4_096,
                          "64x the 64 redundant and shared slots of DeepSeek-V3's decode deployment")
PLACEMENT_WORK = Limit(
    "experts per EP rank x redundant experts", 0, 2**17,
    "placing each replica scans the experts of a rank; beyond it placement takes minutes",
)
SAMPLES = Limit("Monte Carlo samples", 1, 10_000, "the p99 tail of the load settles within a few thousand samples")
SEED = Limit("a seed", 0, 2**63 - 1, "numpy seeds are non-negative 64-bit integers")
#: the load model keeps (samples x experts), (ranks x experts) and (samples x ranks) tables
LOAD_MODEL_CELLS = Limit(
    "cells of the load model's tables", 1, 2**23,
    "larger load-model tables take minutes and gigabytes",
)

@lru_cache(maxsize=1024)
def routing_problem(distribution: str, num_experts: int, top_k: int) -> str | None:
    """Why routing ``distribution`` (its text form) over ``num_experts`` with ``top_k`` is outside the load model's
    limits (:data:`DIRICHLET_CONCENTRATION`, :data:`SKEWED_ROUTING_WORK`), or None. Reads no file."""
    parts = [p.strip().lower() for p in str(distribution).replace(";", ",").split(",")]
    for part in parts:
        kind, _, rest = part.partition(":")
        if kind == "dirichlet":
            try:
                alpha = float(rest.split(":")[0].split("@")[0])
            except ValueError:
                continue  # the distribution parser words this one
            if DIRICHLET_CONCENTRATION.problem(alpha) is not None:
                return (f"dirichlet concentration {short(alpha)} is outside {DIRICHLET_CONCENTRATION.allowed} "
                        f"({DIRICHLET_CONCENTRATION.why})")
    skewed = any(p.partition(":")[0] not in ("uniform", "") for p in parts if not p.replace(".", "").isdigit())
    work = num_experts * top_k * top_k
    if skewed and top_k > 1 and work > SKEWED_ROUTING_WORK.hi:
        return (f"experts x top-k^2 ({num_experts:,} x {top_k:,}^2 = {work:,}) must be at most "
                f"{int(SKEWED_ROUTING_WORK.hi):,} with non-uniform routing ({SKEWED_ROUTING_WORK.why}); "
                "use uniform routing or fewer experts")
    return None


# Money, bytes, time

PRICE_PER_GPU_HOUR = Limit("USD per accelerator-hour", 0, 10_000, "cloud list prices are 1 to 15 USD per GPU-hour",
                           integer=False, lo_open=True)
CLUSTER_USD_PER_HOUR = Limit("USD per cluster-hour", 0, GPUS.hi * PRICE_PER_GPU_HOUR.hi,
                             "the accelerator limit times the price limit", integer=False, lo_open=True)
WORKSPACE_BYTES = Limit("bytes of per-GPU workspace", 0, 1e13, "10 TB: 30x the largest accelerator memory (288 GB)",
                        integer=False)
MESSAGE_BYTES = Limit("bytes of one message", 0, 1e15, "1 PB: more than the memory of any cluster",
                      integer=False, lo_open=True)
SECONDS = Limit("seconds", 0, 1e9, "about 30 years", integer=False, lo_open=True)
TOKENS_PER_S = Limit("tokens per second", 0, 1e15, "a million times the fastest published deployments",
                     integer=False, lo_open=True)
TOKENS_PER_RANK = Limit("tokens per rank", 0, STEP_TOKENS.hi, STEP_TOKENS.why, integer=False, lo_open=True)

# Command-line only

PLAN_TOP = Limit("candidates to print", 1, 10_000, "a table longer than this is better written with --csv")
SWEEP_POINTS = Limit("sweep points", 1, 1_000,
                     "every point is a full estimate, so larger grids run for minutes; split them or use moesim plan")
THREADS = Limit("threads or processes", 1, 4_096, "more than the cores of any one machine")

# Text and files

NAME = TextLimit("a name", 256, "names are labels")
DESCRIPTION = TextLimit("a description", 10_000, "a paragraph, not a document")
PATH = TextLimit("a name or path", 4_096, "the longest path Linux accepts")
DISTRIBUTION = TextLimit("a distribution", 1_000_000, "an inline histogram of 16,384 experts fits in far less")

#: files read as input (TOML, JSON, CSV) are refused above this size, before they are read
MAX_FILE_BYTES = 32 * 2**20
#: tables and arrays nested deeper than this are refused before parsing
MAX_NESTING = 64
#: most dotted parts in a ``--set`` / ``--vary`` field
MAX_FIELD_PARTS = 16
