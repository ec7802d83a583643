"""``moesim plan --rate``: the cheapest deployment that serves a request rate within p99 latency SLOs.

For a scenario's model and a request stream (rate, arrival process, length
distributions), candidates are deployments: hardware x engine size x layout x
number of instances, **aggregated** (each instance prefills and decodes) or
**disaggregated** (a prefill pool and a decode pool of their own sizes and
layouts, the KV cache moved between them). Each candidate is judged by
simulating the stream through it (:mod:`moesim.serving`): it is feasible when the
p99 TTFT and p99 TPOT of the simulated requests meet the SLOs.

The search, in order (every candidate is counted under the first check it fails):

1. **engines**: per hardware, engine sizes from :func:`moesim.plan.search.cluster_sizes`
   and layouts from :func:`moesim.plan.search.layouts` without pipeline stages;
   whose weights do not fit are rejected (``memory``), as are layouts the step
   model refuses (``invalid``);
2. **zero-load screen** with the step model (:func:`moesim.step.estimate.serve_curve`
   at the stream's median prompt and mean output): an engine whose single-request
   prefill misses the TTFT SLO, or whose batch-1 decode step misses the TPOT SLO,
   cannot meet them under load (``max_ttft_p99_s`` / ``max_tpot_p99_s``);
3. **ranking**: the rest by static throughput per GPU (the largest batch whose decode
   step meets the TPOT SLO and fits), the best ``engines_per_size`` per
   hardware and size for aggregated serving; for disaggregation the best
   ``pool_engines`` prefill engines (prompt tokens/s per GPU of one prompt) and
   decode engines (decode tokens/s per GPU);
4. **sizing by simulation**: an engine's saturation rate ``mu`` (overload run)
   gives ``k = ceil(rate / (0.85 mu))`` instances; the stream is simulated and,
   while an SLO is missed, the pool that sets it (prefill for TTFT, decode for TPOT;
   aggregated: the only pool) gains an instance, up to ``max_tries`` simulations
   or the GPU limit (``max_gpus``). The prefill : decode ratio of a disaggregated
   candidate is where this stops.

The frontier trades cost per hour (GPUs when there is no price) against p99
TPOT; aggregated and disaggregated candidates share it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..hardware import HardwareProfile, bundled_hardware, load_hardware
from ..model import ModelSpec
from ..scenario import Layout, Scenario, ServeWorkload, ServingPool, ServingSpec, load_scenario
from ..step.estimate import check_layout, serve_curve
from .search import SERVE_BATCHES, _weights_fit, cluster_sizes, first_rejection, layouts, pareto

REJECTIONS = ("memory", "invalid", "max_ttft_p99_s", "max_tpot_p99_s", "max_gpus", "max_usd_per_hour", "no_price")
RATE_OBJECTIVES = ("cost", "throughput", "latency")


class RateConstraints(BaseModel):
    """What a deployment must meet at the request rate."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rate_per_s: float = Field(gt=0, le=1e9, description="Request rate to serve, requests/s.")
    max_ttft_p99_s: float | None = Field(None, gt=0, description="p99 time to first token, seconds.")
    max_tpot_p99_s: float | None = Field(None, gt=0, description="p99 time per output token, seconds.")
    max_gpus: int = Field(512, gt=0, description="Most accelerators of the whole deployment.")
    max_usd_per_hour: float | None = Field(None, gt=0, description="Budget: price of the deployment per hour, USD.")


class RatePlanResult(BaseModel):
    """What ``moesim plan --rate`` prints; records are flat dicts with units in their names."""

    model_config = ConfigDict(frozen=True)
    scenario: str
    objective: str
    constraints: RateConstraints
    stream: str
    num_requests: int = Field(description="Requests simulated per candidate.")
    hardware: list[str]
    num_candidates: int = Field(description="Engines considered (hardware x size x layout), before sizing.")
    num_simulations: int
    num_feasible: int
    rejected: dict[str, int] = Field(description="Candidates rejected, by the first check they failed.")
    best: list[dict[str, Any]]
    frontier: list[dict[str, Any]]
    elapsed_s: float

    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.best]

    def to_dataframe(self):
        from .records import to_dataframe

        return to_dataframe(self.best)


RATE_FIELDS = ("mode", "hardware", "num_gpus", "prefill", "decode", "ttft_p99_s", "tpot_p99_s", "e2e_p99_s",
               "requests_per_s", "output_tokens_per_s_per_gpu", "usd_per_hour", "usd_per_million_output_tokens",
               "saturation_requests_per_s")


def _engine_label(n: int, lay: Layout, k: int) -> str:
    """``instances x GPUs`` and the layout, e.g. ``2x4 TP4 EP1 ETP4``."""
    return f"{k}x{n} TP{lay.tp} EP{lay.ep} ETP{lay.etp}" + (f" PP{lay.pp}" if lay.pp > 1 else "")


class _Screen:
    """Engines of one hardware profile that pass the cheap checks, with their static figures."""

    def __init__(self, hw: HardwareProfile, n: int, lay: Layout, sc: Scenario, agg_score: float, pre_score: float,
                 dec_score: float):
        self.hw, self.n, self.lay, self.sc = hw, n, lay, sc
        self.agg_score, self.pre_score, self.dec_score = agg_score, pre_score, dec_score


def _screen(sc: Scenario, model: ModelSpec, hw: HardwareProfile, cons: RateConstraints, prompt: int, output: int,
            rejected: dict[str, int], counter: list[int]) -> list[_Screen]:
    from ..dtypes import bytes_per_element

    w: ServeWorkload = sc.workload  # type: ignore[assignment]
    wb = bytes_per_element(w.weight_dtype or model.weight_dtype)
    seats = sc.serving.max_num_seqs or w.batch_size
    batches = np.array([b for b in SERVE_BATCHES if b <= seats] or [1], dtype=float)
    out = []
    for n in cluster_sizes(hw, cons.max_gpus):
        for lay in layouts(model, hw, n, training=False):
            if lay.pp != 1:
                continue
            counter[0] += 1
            if not _weights_fit(model, hw, lay, n, False, wb):
                rejected["memory"] += 1
                continue
            cand = sc.model_copy(update={"hardware": hw.name, "num_gpus": n, "layout": lay, "serving": ServingSpec(
                **{**sc.serving.model_dump(), "prefill": None, "decode": None, "num_instances": 1}),
                "workload": w.model_copy(update={"prompt_tokens": prompt, "output_tokens": output, "phase": "both",
                                                 "prefill_batch_size": 1,
                                                 "cached_prompt_tokens": min(w.cached_prompt_tokens, prompt - 1)})})
            try:
                check_layout(cand, model, hw)
                cur = serve_curve(cand, model, hw, batches)
            except InputError:
                rejected["invalid"] += 1
                continue
            if not bool(cur["fits"][0]):
                rejected["memory"] += 1
                continue
            ttft1, tpot1 = float(cur["ttft_s"][0]), float(cur["tpot_s"][0])
            if cons.max_ttft_p99_s is not None and ttft1 > cons.max_ttft_p99_s:
                rejected["max_ttft_p99_s"] += 1
                continue
            if cons.max_tpot_p99_s is not None and tpot1 > cons.max_tpot_p99_s:
                rejected["max_tpot_p99_s"] += 1
                continue
            ok = cur["fits"] & (cur["tpot_s"] <= (cons.max_tpot_p99_s or math.inf))
            dec = float(np.max(np.where(ok, cur["tokens_per_s"], 0.0))) / n
            pre = prompt / ttft1 / n
            out.append(_Screen(hw, n, lay, cand, dec, pre, dec))
    return out


def _meets(res, cons: RateConstraints) -> str | None:
    if cons.max_ttft_p99_s is not None and (res.ttft.p99_s is None or res.ttft.p99_s > cons.max_ttft_p99_s):
        return "max_ttft_p99_s"
    if cons.max_tpot_p99_s is not None and res.tpot.p99_s is not None and res.tpot.p99_s > cons.max_tpot_p99_s:
        return "max_tpot_p99_s"
    return None


def _record(res, mode: str, hw: HardwareProfile, engines: list[tuple[int, Layout, int]], sat: float | None) -> dict:
    labels = [_engine_label(n, lay, k) for n, lay, k in engines]
    return {
        "mode": mode, "hardware": hw.name, "num_gpus": res.num_gpus,
        "prefill": labels[0], "decode": labels[-1] if mode == "disaggregated" else labels[0],
        "ttft_p99_s": res.ttft.p99_s, "tpot_p99_s": res.tpot.p99_s, "e2e_p99_s": res.e2e.p99_s,
        "requests_per_s": res.requests_per_s, "output_tokens_per_s_per_gpu": res.output_tokens_per_s_per_gpu,
        "usd_per_hour": res.usd_per_hour, "usd_per_million_output_tokens": res.usd_per_million_output_tokens,
        "saturation_requests_per_s": sat,
        "engines": [{"num_gpus": n, "tp": lay.tp, "ep": lay.ep, "etp": lay.etp, "pp": lay.pp, "num_instances": k}
                    for n, lay, k in engines],
    }


def plan_rate(scenario: Scenario | str | None = None, *, rate: float, max_ttft_p99_s: float | None = None,
              max_tpot_p99_s: float | None = None, max_gpus: int = 512, max_usd_per_hour: float | None = None,
              hardware: Sequence[str] | None = None, objective: str = "cost", top: int = 5,
              num_requests: int = 2000, arrivals: str = "poisson", prompt_tokens: str | None = None,
              output_tokens: str | None = None, seed: int = 0, overrides: Sequence[str] = (),
              disaggregated: bool = True, engines_per_size: int = 3, pool_engines: int = 2, max_tries: int = 4,
              progress: Callable[[int, int], None] | None = None,
              collect: list[dict[str, Any]] | None = None) -> RatePlanResult:
    """Search deployments for ``scenario``'s model that serve ``rate`` requests/s within the p99 SLOs
    (see the module docstring). ``collect``, when given, receives every feasible candidate's record."""
    from ..serving.api import deployment, pool_saturation, run_stream, with_instances
    from ..serving.stream import generate

    t0 = time.perf_counter()
    if objective not in RATE_OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; allowed: {', '.join(RATE_OBJECTIVES)}", source="--objective")
    cons = RateConstraints(rate_per_s=rate, max_ttft_p99_s=max_ttft_p99_s, max_tpot_p99_s=max_tpot_p99_s,
                           max_gpus=max_gpus, max_usd_per_hour=max_usd_per_hour)
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario, overrides)
    if not isinstance(sc.workload, ServeWorkload):
        raise InputError("plan --rate needs a serving scenario (workload.kind = 'serve')", source=f"scenario {sc.name}",
                         field="workload.kind")
    model = sc.resolve_model()
    w = sc.workload
    stream = generate(rate, num_requests, arrivals=arrivals,
                      prompt_tokens=prompt_tokens if prompt_tokens is not None else f"fixed:{w.prompt_tokens}",
                      output_tokens=output_tokens if output_tokens is not None else f"fixed:{w.output_tokens}",
                      seed=seed, max_context=model.max_context)
    ctx = int((stream.prompt_tokens + stream.output_tokens).max()) + 1
    prompt = max(1, int(np.median(stream.prompt_tokens)))
    output = max(1, int(round(float(np.mean(stream.output_tokens)))))
    if hardware:
        profiles = [load_hardware(h) for h in hardware]
    else:
        profiles = [p for p in (load_hardware(n) for n in bundled_hardware()) if p.accelerator.kind == "gpu"]
    rejected = dict.fromkeys(REJECTIONS, 0)
    counter = [0]
    screens: dict[str, list[_Screen]] = {hw.name: _screen(sc, model, hw, cons, prompt, output, rejected, counter)
                                         for hw in profiles}
    jobs: list[tuple[str, Any]] = []
    for hw in profiles:
        cands = screens[hw.name]
        by_size: dict[int, list[_Screen]] = {}
        for c in cands:
            by_size.setdefault(c.n, []).append(c)
        agg = [c for lst in by_size.values() for c in sorted(lst, key=lambda c: -c.agg_score)[:engines_per_size]]
        jobs += [("aggregated", c) for c in agg]
        if disaggregated and cands:
            pre = sorted(cands, key=lambda c: -c.pre_score)[:pool_engines]
            dec = sorted(cands, key=lambda c: -c.dec_score)[:pool_engines]
            jobs += [("disaggregated", (p, d)) for p in pre for d in dec]
    feasible: list[dict[str, Any]] = []
    sims = 0
    deps: dict[tuple, Any] = {}

    def engine_dep(c: _Screen, pools: tuple[_Screen, _Screen] | None = None):
        key = (c.hw.name, c.n, c.lay) if pools is None else ("disagg", c.hw.name, pools[0].n, pools[0].lay,
                                                              pools[1].n, pools[1].lay)
        if key not in deps:
            if pools is None:
                dsc = c.sc
            else:
                p, d = pools
                srv = c.sc.serving.model_copy(update={
                    "prefill": ServingPool(num_gpus=p.n, layout=p.lay), "decode": ServingPool(num_gpus=d.n, layout=d.lay)})
                dsc = c.sc.model_copy(update={"serving": srv})
            deps[key] = deployment(dsc, model, c.hw, max_context=ctx)
        return deps[key]

    for i, (mode, job) in enumerate(jobs):
        if progress is not None:
            progress(i, len(jobs))
        hw = job.hw if mode == "aggregated" else job[0].hw
        price = sc.price_usd_per_gpu_hour or (hw.price.usd_per_accelerator_hour if hw.price else None)
        if objective == "cost" and price is None:
            rejected["no_price"] += 1
            continue
        try:
            dep = engine_dep(job) if mode == "aggregated" else engine_dep(job[0], job)
        except InputError:
            rejected["invalid"] += 1
            continue
        sats = [pool_saturation(p, stream) for p in dep.pools]
        ks = [max(1, math.ceil(rate / (0.85 * s))) if s > 0 else 1 for s in sats]
        reason = None
        for _ in range(max_tries):
            gpus = sum(k * p.num_gpus_per_instance for k, p in zip(ks, dep.pools))
            if gpus > cons.max_gpus:
                reason = "max_gpus"
                break
            if cons.max_usd_per_hour is not None and price * gpus > cons.max_usd_per_hour:
                reason = "max_usd_per_hour"
                break
            sims += 1
            res = run_stream(with_instances(dep, ks), stream, keep_requests=False, timeline_points=10)
            reason = _meets(res, cons)
            if reason is None:
                engines = [(p.num_gpus_per_instance, p.scenario.layout, k) for p, k in zip(dep.pools, ks)]
                sat = sum(s * k for s, k in zip(sats, ks)) if mode == "aggregated" else \
                    min(s * k for s, k in zip(sats, ks))
                feasible.append(_record(res, mode, hw, engines, sat))
                break
            if mode == "aggregated":
                ks[0] += 1
            elif reason == "max_ttft_p99_s":
                ks[0] += 1
            else:
                ks[1] += 1
        if reason is not None:
            rejected[reason] += 1
    if progress is not None:
        progress(len(jobs), len(jobs))
    if collect is not None:
        collect.extend(feasible)
    key = {"cost": lambda r: (r["usd_per_hour"] if r["usd_per_hour"] is not None else math.inf, r["num_gpus"],
                              r["tpot_p99_s"]),
           "throughput": lambda r: (-r["output_tokens_per_s_per_gpu"], r["tpot_p99_s"]),
           "latency": lambda r: (r["tpot_p99_s"] if r["tpot_p99_s"] is not None else math.inf, r["num_gpus"])}[objective]
    best = sorted(feasible, key=key)[:top]
    x = "usd_per_hour" if all(r["usd_per_hour"] is not None for r in feasible) else "num_gpus"
    front = pareto(feasible, x, "tpot_p99_s", x_low=True, y_low=True)
    return RatePlanResult(
        scenario=sc.name, objective=objective, constraints=cons, stream=stream.source, num_requests=num_requests,
        hardware=[p.name for p in profiles], num_candidates=counter[0], num_simulations=sims,
        num_feasible=len(feasible), rejected={k: v for k, v in rejected.items() if v}, best=best, frontier=front,
        elapsed_s=time.perf_counter() - t0,
    )


def empty_reason(result: RatePlanResult) -> str:
    """One line naming the check that emptied the search space (:func:`moesim.plan.search.first_rejection`), then
    every rejection's count."""
    if not result.rejected:
        return "no candidate was generated (check --max-gpus and the hardware list)"
    name, count, counts = first_rejection(result.rejected)
    hint = {
        "memory": "nothing fits in memory: raise --max-gpus or use bigger-memory hardware",
        "invalid": "no valid layout",
        "max_ttft_p99_s": "no deployment meets --max-ttft-p99-s",
        "max_tpot_p99_s": "no deployment meets --max-tpot-p99-s",
        "max_gpus": "serving the rate within the SLOs needs more than --max-gpus",
        "max_usd_per_hour": "no deployment fits the --max-usd-per-hour budget",
        "no_price": ("profiles without a price cannot be ranked by cost: use --objective throughput or latency, "
                     "or give a price (--set price_usd_per_gpu_hour=USD)"),
    }[name]
    return (f"no feasible deployment out of {result.num_candidates} engines: {hint} "
            f"({count} rejected by {name}; {counts})")


def write_csv(path, records: list[dict[str, Any]]) -> None:
    """Write feasible deployments as CSV atomically (columns: RATE_FIELDS)."""
    import csv
    import io
    from pathlib import Path

    from ..io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RATE_FIELDS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in RATE_FIELDS})
    atomic_write_text(Path(path), buf.getvalue())
