"""``moesim plan``: search hardware x cluster size x parallel layout x batch under constraints.

The search space for a scenario's model and workload:

* hardware: the given profiles (default: every shipped GPU profile);
* cluster sizes: powers of two and whole multiples of a node, up to ``max_gpus``
  and the profile's cluster limit;
* layouts: TP in {1, 2, 4, 8} dividing the heads and within one node, PP from
  {1, 2, 4, 8, 16} (serving: {1, 2, 4}), DP = GPUs / (TP x PP), EP a divisor of
  the experts with EP x ETP dividing TP x DP, ETP in {1, TP}, ZeRO stage 1 or 3
  (training);
* batch: serving batch sizes per replica (1, 2, 3, 4, 6, 8, ... 768, 1024), evaluated
  together with numpy (:func:`moesim.step.estimate.serve_curve`); training
  micro-batch sizes {1, 2, 4} at the scenario's global batch, every layout and
  micro-batch size of a profile evaluated together with numpy
  (:func:`moesim.step.estimate.train_curve`);
* recomputation (training, ``recompute``): the scenario's ``workload.recompute`` (with its
  ``recompute_modules``), or each of the values asked for ("none", "selective", "full"; a
  "selective" other than the scenario's own takes the default modules).

Every candidate is checked against the constraints in a fixed order (memory,
TTFT, TPOT, throughput, budget) and counted under the first one it fails, so
the report says which constraint emptied the space. Candidates whose weights
alone cannot fit are rejected before they are timed (counted under memory).
The frontier is the set of feasible candidates that no other candidate beats on
both axes: cost per million tokens and throughput for training; latency (TPOT,
or TTFT for a prefill deployment) and throughput per GPU for serving, the
throughput-interactivity trade-off of a deployment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..caches import collection_paused
from ..errors import InputError
from ..hardware import HardwareProfile, bundled_hardware, load_hardware
from ..model import ModelSpec
from ..scenario import RECOMPUTE_CHOICES, Layout, Scenario, ServeWorkload, TrainWorkload, load_scenario
from ..step.estimate import check_layout, price_usd_per_gpu_hour, serve_curve, train_curve
from ..step.memo import by_model
from ..step.memory import StageParams, param_state_bytes, stage_params
from ..step.parallel import Parallel
from ..step.result import built

Objective = Literal["cost", "throughput", "latency"]
REJECTIONS = ("memory", "max_ttft_s", "max_tpot_s", "min_tokens_per_s", "max_usd_per_hour", "no_price", "invalid")
TRAIN_MICRO_BATCHES = (1, 2, 4)
SERVE_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


class Constraints(BaseModel):
    """Limits a candidate must meet (None = no limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_gpus: int = Field(512, gt=0, description="Largest cluster to consider, accelerators.")
    max_ttft_s: float | None = Field(None, gt=0, description="Time to first token limit, seconds.")
    max_tpot_s: float | None = Field(None, gt=0, description="Time per output token limit, seconds.")
    min_tokens_per_s: float | None = Field(None, gt=0, description="Throughput floor, tokens/s.")
    max_usd_per_hour: float | None = Field(None, gt=0, description="Budget: price of the whole cluster per hour, USD.")


class PlanResult(BaseModel):
    """What ``moesim plan`` prints; records are flat dicts of the key figures."""

    model_config = ConfigDict(frozen=True)
    scenario: str
    objective: str
    workload: str
    constraints: Constraints
    hardware: list[str]
    num_candidates: int = Field(description="Candidates considered (hardware x GPUs x layout x batch).")
    num_timed: int = Field(description="Candidates timed by the step model (the rest failed a cheap memory bound).")
    num_feasible: int
    rejected: dict[str, int] = Field(description="Candidates rejected, by the first constraint they failed.")
    best: list[dict[str, Any]] = Field(description="The best few feasible candidates by the objective.")
    frontier: list[dict[str, Any]] = Field(description="Pareto frontier of the feasible candidates.")
    elapsed_s: float
    candidates_per_s: float = Field(description="Timed candidates per second of search.")
    recompute: list[str] = Field(default_factory=list,
                                 description="Training: the recomputation settings searched (workload.recompute).")

    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.best]

    def to_dataframe(self):
        from .records import to_dataframe

        return to_dataframe(self.best)


# ----------------------------------------------------------------------------- the space


def _pow2_upto(n: int) -> list[int]:
    out, x = [], 1
    while x <= n:
        out.append(x)
        x *= 2
    return out


def cluster_sizes(hw: HardwareProfile, max_gpus: int) -> list[int]:
    """Powers of two up to one node, then whole nodes in powers of two, within the limits."""
    gpn = hw.node.accelerators_per_node
    cap = min(max_gpus, hw.max_accelerators or max_gpus)
    sizes = {s for s in _pow2_upto(min(gpn, cap))}
    nodes = 1
    while nodes * gpn <= cap:
        sizes.add(nodes * gpn)
        nodes *= 2
    sizes |= {s for s in _pow2_upto(cap) if s % gpn == 0}
    return sorted(sizes)


@lru_cache(maxsize=256)
def _divisors(n: int) -> tuple[int, ...]:
    return tuple(d for d in range(1, n + 1) if n % d == 0)


def layouts(model: ModelSpec, hw: HardwareProfile, num_gpus: int, training: bool) -> list[Layout]:
    """Valid layouts of ``num_gpus`` for ``model`` (see module docstring)."""
    gpn = hw.node.accelerators_per_node
    heads = model.attention.num_heads
    out = []
    moe = model.moe
    for tp in (1, 2, 4, 8):
        if tp > num_gpus or tp > gpn or heads % tp:
            continue
        for pp in ((1, 2, 4, 8, 16) if training else (1, 2, 4)):
            if num_gpus % (tp * pp) or pp > model.num_layers:
                continue
            dp = num_gpus // (tp * pp)
            stage = tp * dp
            eps = [1] if moe is None else [e for e in _divisors(moe.num_experts) if stage % e == 0]
            for ep in eps:
                etps = [1] if moe is None else sorted({1, tp})
                for etp in etps:
                    if moe is not None and (moe.expert_ffn_dim % etp or stage % (ep * etp)):
                        continue
                    for zero in ((1, 3) if training else (0,)):
                        # generated within every bound of the schema: built without re-validating each
                        out.append(built(Layout, tp=tp, pp=pp, ep=ep, etp=etp, zero_stage=zero,
                                              sequence_parallel=training and tp > 1))
    return out


def _weights_fit(model: ModelSpec, hw: HardwareProfile, lay: Layout, num_gpus: int, training: bool,
                 weight_bytes: float, master_weights_fp32: bool = True, grad_bytes: float = 4.0) -> bool:
    """Cheap lower bound: do the weights alone (plus gradients and optimizer states in training) fit one GPU?

    The step model's own memory formula (:func:`moesim.step.memory.param_state_bytes`) over the parameters
    of an average pipeline stage, which no stage of the balanced split holds fewer of; activations, buffers
    and KV cache only add, so a candidate rejected here cannot fit.
    """
    whole = _whole_model(model, lay.tp, lay.ep, lay.etp)
    avg = StageParams(dense=whole.dense / lay.pp, expert=whole.expert / lay.pp)
    if training:
        dp = num_gpus // (lay.tp * lay.pp)
        edp = max(1, dp * lay.tp // (lay.ep * lay.etp))
        par = Parallel(num_gpus, lay.tp, lay.pp, dp, lay.ep, lay.etp, edp, lay.zero_stage, lay.sequence_parallel,
                       hw.node.accelerators_per_node)
        per_gpu_bytes = sum(param_state_bytes(avg, par, master_weights_fp32=master_weights_fp32,
                                                grad_bytes=grad_bytes).values())
    else:
        per_gpu_bytes = (avg.dense + avg.expert) * weight_bytes
    return per_gpu_bytes <= hw.accelerator.memory_bytes


@by_model(1024)
def _whole_model(model: ModelSpec, tp: int, ep: int, etp: int) -> StageParams:
    """Parameters one GPU holds of the whole model as one stage (:func:`moesim.step.memory.stage_params`)."""
    par = Parallel(None, tp, 1, None, ep, etp, None, None, None, None)  # type: ignore[arg-type]
    return stage_params(model, par, list(range(model.num_layers)), True, True)


# ----------------------------------------------------------------------------- search


@dataclass
class _Acc:
    feasible: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTIONS, 0))
    count: int = 0
    timed: int = 0


def _check_objective(objective: str, training: bool) -> None:
    if objective not in ("cost", "throughput", "latency"):
        raise InputError(f"unknown objective {objective!r}; allowed: cost, throughput, latency", source="--objective")
    if objective == "latency" and training:
        raise InputError("objective 'latency' applies to serving workloads (TTFT/TPOT); for training use cost or "
                         "throughput", source="--objective")


def _failed(cons: Constraints, fits: bool, tokens_per_s: float, price: float | None, num_gpus: int, *,
            ttft_s: float | None = None, tpot_s: float | None = None) -> str | None:
    """The first constraint a candidate fails (in REJECTIONS order), or None."""
    if not fits:
        return "memory"
    if cons.max_ttft_s is not None and ttft_s is not None and ttft_s > cons.max_ttft_s:
        return "max_ttft_s"
    if cons.max_tpot_s is not None and tpot_s is not None and tpot_s > cons.max_tpot_s:
        return "max_tpot_s"
    if cons.min_tokens_per_s is not None and tokens_per_s < cons.min_tokens_per_s:
        return "min_tokens_per_s"
    if cons.max_usd_per_hour is not None and (price is None or price * num_gpus > cons.max_usd_per_hour):
        return "max_usd_per_hour"
    return None


def _serve_candidates(sc: Scenario, model: ModelSpec, hw: HardwareProfile, lay: Layout, n: int, price: float | None,
                      cons: Constraints, acc: _Acc) -> None:
    w: ServeWorkload = sc.workload  # type: ignore[assignment]
    cand = sc.model_copy(update={"hardware": hw.name, "num_gpus": n, "layout": lay})
    batches = np.array(SERVE_BATCHES, dtype=float)
    acc.count += len(batches)
    acc.timed += len(batches)
    try:
        check_layout(cand, model, hw)
        cur = serve_curve(cand, model, hw, batches)
    except InputError:
        acc.rejected["invalid"] += len(batches)
        return
    dp = n // (lay.tp * lay.pp)
    for i, b in enumerate(SERVE_BATCHES):
        ttft, tpot, tps = float(cur["ttft_s"][i]), float(cur["tpot_s"][i]), float(cur["tokens_per_s"][i])
        reason = _failed(cons, bool(cur["fits"][i]), tps, price, n,
                         ttft_s=ttft if w.phase != "decode" else None, tpot_s=tpot if w.phase != "prefill" else None)
        if reason:
            acc.rejected[reason] += 1
            continue
        usd_h = price * n if price else None
        acc.feasible.append({
            "hardware": hw.name, "num_gpus": n, "tp": lay.tp, "pp": lay.pp, "dp": dp, "ep": lay.ep, "etp": lay.etp,
            "zero_stage": lay.zero_stage, "batch_size": b, "fits": True,
            "memory_per_gpu_bytes": float(cur["memory_per_gpu_bytes"][i]), "step_s": None,
            "ttft_s": None if math.isnan(ttft) else ttft, "tpot_s": None if math.isnan(tpot) else tpot,
            "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / n, "mfu_frac": float(cur["mfu_frac"][i]),
            "usd_per_hour": usd_h, "usd_per_million_tokens": usd_h / 3600.0 / tps * 1e6 if usd_h else None,
            "gpu_hours_per_million_tokens": n / 3600.0 / tps * 1e6,
        })


def _train_candidates(sc: Scenario, model: ModelSpec, hw: HardwareProfile, jobs: list[tuple[int, Layout]],
                      price: float | None, cons: Constraints, acc: _Acc) -> None:
    """Time the training candidates of ``jobs`` (cluster size, layout) on ``hw`` at every micro-batch size that
    divides the global batch, all at once (:func:`moesim.step.estimate.train_curve`), in search order."""
    w: TrainWorkload = sc.workload  # type: ignore[assignment]
    cands = []
    for n, lay in jobs:
        dp = n // (lay.tp * lay.pp)
        cands += [(n, lay, mbs) for mbs in TRAIN_MICRO_BATCHES if not w.global_batch_size % (dp * mbs)]
    acc.count += len(cands)
    acc.timed += len(cands)
    if not cands:
        return
    cur = train_curve(sc, model, hw, cands)
    valid, fits, tps_all, mem = cur["valid"].tolist(), cur["fits"].tolist(), cur["tokens_per_s"].tolist(), \
        cur["memory_per_gpu_bytes"].tolist()
    step, mfu = cur["step_s"].tolist(), cur["mfu_frac"].tolist()
    for i, (n, lay, mbs) in enumerate(cands):
        if not valid[i]:
            acc.rejected["invalid"] += 1
            continue
        tps = tps_all[i]
        reason = _failed(cons, fits[i], tps, price, n)
        if reason:
            acc.rejected[reason] += 1
            continue
        gpu_h = n / 3600.0 / tps * 1e6 if tps > 0 else math.inf
        acc.feasible.append({
            "hardware": hw.name, "num_gpus": n, "tp": lay.tp, "pp": lay.pp, "dp": n // (lay.tp * lay.pp),
            "ep": lay.ep, "etp": lay.etp, "zero_stage": lay.zero_stage, "batch_size": mbs,
            "recompute": w.recompute, "fits": True,
            "memory_per_gpu_bytes": mem[i], "step_s": step[i], "ttft_s": None, "tpot_s": None, "tokens_per_s": tps,
            "tokens_per_s_per_gpu": tps / n, "mfu_frac": mfu[i], "usd_per_hour": price * n if price else None,
            "usd_per_million_tokens": gpu_h * price if price else None, "gpu_hours_per_million_tokens": gpu_h,
        })


def _key(objective: str, training: bool, phase: str) -> Callable[[dict[str, Any]], float]:
    if objective == "cost":
        return lambda r: r["usd_per_million_tokens"] if r["usd_per_million_tokens"] is not None else math.inf
    if objective == "throughput":
        return lambda r: -r["tokens_per_s"]
    lat = "ttft_s" if phase == "prefill" else "tpot_s"
    return lambda r: r[lat]


def _distinct(ranked: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The first ``top`` records, skipping data-parallel copies of one already listed (same layout, batch and
    per-GPU figures on more GPUs)."""
    out, seen = [], set()
    for r in ranked:
        sig = (r["hardware"], r["tp"], r["pp"], r["ep"], r["etp"], r["zero_stage"], r["batch_size"],
               r.get("recompute"), round(r["tokens_per_s_per_gpu"], 6))
        if sig in seen:
            continue
        seen.add(sig)
        out.append(r)
        if len(out) == top:
            break
    return out


def frontier_axes(training: bool, phase: str) -> tuple[str, str]:
    """(x, y) of the Pareto frontier: training trades cost for throughput; serving trades latency
    (TPOT, or TTFT for a prefill deployment) for throughput per GPU."""
    if training:
        return "usd_per_million_tokens", "tokens_per_s"
    return ("ttft_s" if phase == "prefill" else "tpot_s"), "tokens_per_s_per_gpu"


def pareto(records: list[dict[str, Any]], x: str, y: str, *, x_low: bool = True, y_low: bool = False) -> list[dict[str, Any]]:
    """Records that no other record beats on both ``x`` and ``y`` (sorted by ``x``)."""
    pts = [r for r in records if r.get(x) is not None and r.get(y) is not None]
    sx = 1.0 if x_low else -1.0
    sy = 1.0 if y_low else -1.0
    pts.sort(key=lambda r: (sx * r[x], sy * r[y]))
    out, best_y = [], math.inf
    for r in pts:
        if sy * r[y] < best_y:
            out.append(r)
            best_y = sy * r[y]
    return out


def plan(scenario: Scenario | str | None = None, *, hardware: list[str] | None = None,
         constraints: Constraints | None = None, objective: Objective = "cost", top: int = 5,
         overrides: tuple[str, ...] = (), progress: Callable[[int, int], None] | None = None,
         collect: list[dict[str, Any]] | None = None, recompute: list[str] | None = None) -> PlanResult:
    """Search hardware x GPUs x layout x batch for ``scenario``'s model and workload (see module docstring).

    ``collect``, when given, receives every feasible candidate's record (for CSV output). ``recompute`` (training):
    the recomputation settings to search, each of "none", "selective", "full" (default: the scenario's).
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario, overrides)
    cons = constraints or Constraints()
    training = isinstance(sc.workload, TrainWorkload)
    _check_objective(objective, training)
    variants = recompute_variants(sc, recompute)
    model = sc.resolve_model()
    if hardware:
        profiles = [load_hardware(n) for n in hardware]
    else:  # every shipped GPU profile (the CPU ones are for the runner)
        profiles = [p for p in (load_hardware(n) for n in bundled_hardware()) if p.accelerator.kind == "gpu"]
    phase = "train" if training else sc.workload.phase  # type: ignore[union-attr]
    wdt = getattr(sc.workload, "weight_dtype", None) or model.weight_dtype
    from ..dtypes import bytes_per_element

    wb = bytes_per_element(wdt)
    master = bool(getattr(sc.workload, "master_weights_fp32", True))
    grad_bytes = float(getattr(sc.workload, "grad_bytes_per_element", 4.0))
    jobs = []
    for hw in profiles:
        price = price_usd_per_gpu_hour(sc, hw)
        for n in cluster_sizes(hw, cons.max_gpus):
            for lay in layouts(model, hw, n, training):
                jobs.append((hw, n, lay, price))
    acc = _Acc()
    t0 = time.perf_counter()
    per_job = len(TRAIN_MICRO_BATCHES) if training else len(SERVE_BATCHES)
    with collection_paused():  # the caches a search fills hold no cycles (moesim.caches)
        batch: list[tuple[int, Layout]] = []  # training: one profile's timed jobs, evaluated together
        for i, (hw, n, lay, price) in enumerate(jobs):
            if progress is not None and i % 64 == 0:
                progress(i, len(jobs))
            if training and batch and (i == 0 or jobs[i - 1][0] is not hw):
                prev = jobs[i - 1]
                for v in variants:
                    _train_candidates(v, model, prev[0], batch, prev[3], cons, acc)
                batch = []
            if not _weights_fit(model, hw, lay, n, training, wb, master, grad_bytes):
                acc.count += per_job * len(variants)
                acc.rejected["memory"] += per_job * len(variants)
                continue
            if objective == "cost" and price is None:
                acc.count += per_job * len(variants)
                acc.rejected["no_price"] += per_job * len(variants)
                continue
            if training:
                batch.append((n, lay))
            else:
                _serve_candidates(sc, model, hw, lay, n, price, cons, acc)
        if training and batch:
            for v in variants:
                _train_candidates(v, model, jobs[-1][0], batch, jobs[-1][3], cons, acc)
        if progress is not None:
            progress(len(jobs), len(jobs))
    elapsed = time.perf_counter() - t0
    if collect is not None:
        collect.extend(acc.feasible)
    key = _key(objective, training, phase)
    best = _distinct(sorted(acc.feasible, key=lambda r: (key(r), r["num_gpus"])), top)
    x, y = frontier_axes(training, phase)
    front = pareto(acc.feasible, x, y, x_low=True, y_low=False)
    return PlanResult(
        scenario=sc.name, objective=objective, workload=phase, constraints=cons, hardware=[p.name for p in profiles],
        num_candidates=acc.count, num_timed=acc.timed, num_feasible=len(acc.feasible), rejected={k: v for k, v in acc.rejected.items() if v},
        best=best, frontier=front, elapsed_s=elapsed,
        candidates_per_s=acc.timed / elapsed if elapsed > 0 else math.inf,
        recompute=[v.workload.recompute for v in variants] if training else [],  # type: ignore[union-attr]
    )


def recompute_variants(sc: Scenario, recompute: list[str] | None) -> list[Scenario]:
    """The scenario once per recomputation setting to search (training; see the module docstring)."""
    if recompute is None:
        return [sc]
    if not isinstance(sc.workload, TrainWorkload):
        raise InputError("searching recomputation applies to a training scenario (workload.kind = 'train')",
                         source="--recompute")
    values = list(recompute)
    bad = [v for v in values if v not in RECOMPUTE_CHOICES]
    if not values or bad:
        got = f"got {', '.join(map(repr, bad))}; " if bad else ""
        raise InputError(f"{got}give one or more of {', '.join(RECOMPUTE_CHOICES)} (e.g. --recompute selective,full)",
                         source="--recompute")
    if len(set(values)) < len(values):
        raise InputError(f"a setting is listed twice in {', '.join(values)}", source="--recompute")
    w: TrainWorkload = sc.workload
    out = []
    for v in values:
        if v == w.recompute:
            out.append(sc)
        else:
            out.append(sc.model_copy(update={"workload": w.model_copy(update={"recompute": v,
                                                                              "recompute_modules": None})}))
    return out


def first_rejection(rejected: dict[str, int]) -> tuple[str, int, str]:
    """Of an empty search's rejections (non-empty): the one to name, its count, and every rejection's count.

    A missing price is named first wherever it rejected candidates: it rejects every layout of a profile that
    fits in memory, so it, not the memory check, is what left nothing where the others fit; otherwise the most
    frequent rejection."""
    name, count = max(rejected.items(), key=lambda kv: (kv[0] == "no_price", kv[1]))
    return name, count, ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1]))


def empty_reason(result: PlanResult) -> str:
    """One line naming the constraint that emptied the search space (:func:`first_rejection`), then every
    rejection's count."""
    if not result.rejected:
        return "no candidate was generated (check --max-gpus and the hardware list)"
    name, count, counts = first_rejection(result.rejected)
    hint = {
        "memory": "nothing fits in memory: raise --max-gpus or use bigger-memory hardware",
        "max_ttft_s": "no candidate meets --max-ttft-s",
        "max_tpot_s": "no candidate meets --max-tpot-s",
        "min_tokens_per_s": "no candidate reaches --min-tokens-per-s",
        "max_usd_per_hour": "no candidate fits the --max-usd-per-hour budget",
        "no_price": ("profiles without a price cannot be ranked by cost: use --objective throughput or give a "
                     "price (--set price_usd_per_gpu_hour=USD)"),
        "invalid": "no valid layout",
    }[name]
    return f"no feasible candidate out of {result.num_candidates}: {hint} ({count} rejected by {name}; {counts})"
