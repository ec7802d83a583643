"""``moesim.simulate``: a request stream through a deployment's engines, and what its users see.

A deployment is the scenario's model on its hardware, as

* **aggregated** instances (``serving.num_instances`` engines of the scenario's
  ``num_gpus`` and ``layout``, each prefilling and decoding), or
* **disaggregated** pools (``serving.prefill`` and ``serving.decode``): prompts run on
  prefill instances; each request's KV cache then moves to a decode instance (a
  send/receive of the prompt's KV bytes per GPU on the topology model: NVLink when
  one prefill and one decode instance fit in a node, else the scale-out fabric),
  queued per decode DP rank, and decodes there.

Requests go to instances round-robin, so instances run independently
(:func:`moesim.serving.engine.run_engine` each). Per request: TTFT (arrival to
first token), TPOT ((finish - first token) / (output - 1)), end-to-end latency,
queueing (arrival to admission). Inter-token latency (ITL) is the distribution
of decode iterations' times weighted by the tokens they produce, plus (when
disaggregated) each request's gap from first to second token. Throughput is over
the span from the first arrival to the last finish; goodput counts the requests
that meet both SLOs. The **saturation rate** is the completion rate of an
overloaded stream (every request of a same-length sample queued at once), in
steady state (between its 25th and 75th percentile completions): the largest
rate the deployment sustains, above which queues and TTFT grow without bound.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ..errors import InputError, from_validation_error
from ..hardware import HardwareProfile
from ..model import ModelSpec
from ..scenario import Scenario, ServeWorkload, ServingPool, load_scenario
from . import costs
from .engine import EngineConfig, EngineRun, run_engine
from .stream import RequestStream, check_rate, generate

#: timeline points kept in a result (the engine samples more finely)
TIMELINE_POINTS = 400


# ----------------------------------------------------------------------------- deployment


@dataclass
class Pool:
    """Identical engine instances with one role."""

    role: str  # aggregated | prefill | decode
    scenario: Scenario
    num_instances: int
    cost: costs.IterationCost
    config: EngineConfig
    kv: costs.KVCapacity

    @property
    def num_gpus_per_instance(self) -> int:
        return self.scenario.num_gpus

    @property
    def num_gpus(self) -> int:
        return self.scenario.num_gpus * self.num_instances


@dataclass
class Deployment:
    """A scenario's deployment, ready to simulate (costs built once, reused over rates)."""

    scenario: Scenario
    model: ModelSpec
    hardware: HardwareProfile
    pools: list[Pool]
    same_node_transfer: bool
    price_usd_per_gpu_hour: float | None

    @property
    def disaggregated(self) -> bool:
        return len(self.pools) == 2

    @property
    def num_gpus(self) -> int:
        return sum(p.num_gpus for p in self.pools)

    def kv_transfer_bytes_per_token(self) -> float:
        """Bytes per prompt token over the busiest link: the larger of a prefill GPU's and a decode GPU's KV share."""
        return max(p.kv.bytes_per_token_per_gpu for p in self.pools)


def _pool_scenario(sc: Scenario, pool: ServingPool, role: str) -> Scenario:
    raw = sc.model_dump(mode="python")
    raw["num_gpus"] = pool.num_gpus
    raw["layout"] = pool.layout.model_dump(mode="python")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        err = from_validation_error(exc, f"scenario {sc.name}")
        field = f"serving.{role}." + (err.field or "layout")
        raise InputError(err.message, source=f"scenario {sc.name}", field=field) from None


def deployment(sc: Scenario, model: ModelSpec | None = None, hw: HardwareProfile | None = None, *,
               max_context: int | None = None) -> Deployment:
    """Build the engines of ``sc`` (its ``[serving]`` table; see the module docstring)."""
    if not isinstance(sc.workload, ServeWorkload):
        raise InputError("moesim simulate needs a serving scenario (workload.kind = 'serve')",
                         source=f"scenario {sc.name}", field="workload.kind")
    model = model or sc.resolve_model()
    hw = hw or sc.resolve_hardware()
    srv = sc.serving
    seqs = srv.max_num_seqs or sc.workload.batch_size
    where = f"scenario {sc.name}"
    if srv.max_num_batched_tokens < seqs:
        raise InputError(f"serving.max_num_batched_tokens ({srv.max_num_batched_tokens:,}) must be at least "
                         f"max_num_seqs ({seqs:,}, the workload's batch_size unless set)", source=where,
                         field="serving.max_num_batched_tokens")
    ctx = max_context or model.max_context or 131072
    roles: list[tuple[str, Scenario, int]]
    if srv.prefill is not None and srv.decode is not None:
        roles = [("prefill", _pool_scenario(sc, srv.prefill, "prefill"), srv.prefill.num_instances),
                 ("decode", _pool_scenario(sc, srv.decode, "decode"), srv.decode.num_instances)]
    else:
        roles = [("aggregated", sc, srv.num_instances)]
    pools = []
    for role, psc, k in roles:
        pwhere = where + (f" (serving.{role} pool)" if role != "aggregated" else "")
        costs.check_layout_for(psc, model, hw, pwhere)
        kv = costs.kv_capacity(psc, model, hw, max_num_seqs=seqs, max_num_batched_tokens=srv.max_num_batched_tokens,
                               where=pwhere)
        cost = costs.iteration_cost(psc, model, hw, max_tokens=srv.max_num_batched_tokens, max_keys=ctx + 1,
                                    max_kv_read=kv.tokens_per_dp_rank + ctx)
        cfg = EngineConfig(dp=psc.dp, pp=psc.layout.pp, max_num_seqs=seqs,
                           max_num_batched_tokens=srv.max_num_batched_tokens, kv_capacity_tokens=kv.tokens_per_dp_rank,
                           kv_block_tokens=srv.kv_block_tokens, chunked_prefill=srv.chunked_prefill,
                           cached_prompt_tokens=sc.workload.cached_prompt_tokens)
        pools.append(Pool(role, psc, k, cost, cfg, kv))
    same_node = False
    if len(pools) == 2:
        same_node = pools[0].num_gpus_per_instance + pools[1].num_gpus_per_instance <= hw.node.accelerators_per_node
    price = sc.price_usd_per_gpu_hour or (hw.price.usd_per_accelerator_hour if hw.price else None)
    return Deployment(sc, model, hw, pools, same_node, price)


# ----------------------------------------------------------------------------- results


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Percentiles(_Out):
    """A latency's distribution over requests (or tokens, for ITL), seconds."""

    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    mean_s: float | None
    max_s: float | None


class Timeline(_Out):
    """One pool over time (all its instances together), averaged over intervals of ``sample_dt_s``."""

    role: str
    sample_dt_s: float
    time_s: list[float]
    num_waiting: list[float] = Field(description="Requests queued (arrived, not admitted), mean over each interval.")
    num_running: list[float] = Field(description="Sequences in the running batch (decoding or prefilling), mean over "
                                     "each interval.")
    kv_used_frac: list[float] = Field(description="KV cache in use over its capacity (blocks counted full), mean over "
                                      "each interval.")


class PoolResult(_Out):
    """One pool's engines and what they did."""

    role: str
    num_instances: int
    num_gpus_per_instance: int
    layout: dict[str, int]
    max_num_seqs_per_dp_rank: int
    max_num_batched_tokens_per_dp_rank: int
    num_kv_tokens_per_instance: int
    kv_bytes_per_token_per_gpu: float
    num_iterations: int
    num_preemptions: int
    busy_frac: float = Field(description="Share of the span the engines were running iterations (mean of instances).")
    peak_kv_used_frac: float
    mean_kv_used_frac: float
    max_num_waiting: int
    mean_num_running: float
    num_step_model_calls: int = Field(description="Columns of the iteration table evaluated with the step model.")


class SimulationResult(_Out):
    """A request stream through a deployment (``moesim simulate``); units in field names."""

    scenario: str
    model: str
    hardware: str
    mode: str = Field(description="aggregated or disaggregated.")
    num_gpus: int
    stream: str
    rate_per_s: float | None = Field(description="Offered request rate; None for a trace.")
    num_requests: int
    span_s: float = Field(description="First arrival to last finish.")
    ttft: Percentiles
    tpot: Percentiles
    itl: Percentiles
    e2e: Percentiles
    queue: Percentiles = Field(description="Arrival to admission (prefill admission when disaggregated).")
    kv_transfer: Percentiles | None = Field(description="KV cache transfer, prefill to decode pool (disaggregated).")
    requests_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    mean_prompt_tokens: float
    mean_output_tokens: float
    max_ttft_s: float | None = Field(description="SLO on each request's TTFT (goodput), seconds.")
    max_tpot_s: float | None = Field(description="SLO on each request's TPOT (goodput), seconds.")
    goodput_requests_per_s: float | None
    slo_met_frac: float | None
    saturation_requests_per_s: float | None = Field(description="Largest sustainable rate (overload run).")
    mean_num_in_system: float = Field(description="Time-average of requests arrived and not finished.")
    num_preemptions: int
    usd_per_hour: float | None
    usd_per_million_output_tokens: float | None
    pools: list[PoolResult]
    timelines: list[Timeline]
    elapsed_s: float = Field(description="Wall time of the simulation.")
    _requests: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per request (units in the names), in arrival order."""
        r = self._requests
        if not r:
            return []
        cols = list(r)
        out = []
        for i in range(len(r["arrival_s"])):
            row = {}
            for c in cols:
                v = r[c][i]
                if isinstance(v, (np.floating, float)):
                    v = float(v)
                    row[c] = None if math.isnan(v) else v
                else:
                    row[c] = int(v)
            out.append(row)
        return out

    def to_dataframe(self):
        from ..plan.records import to_dataframe

        return to_dataframe(self.records())

    @property
    def requests(self) -> dict[str, np.ndarray]:
        """Per-request arrays (the columns of :meth:`records`)."""
        return dict(self._requests)


class RateSweepResult(_Out):
    """One deployment at several request rates (same requests, re-timed)."""

    scenario: str
    mode: str
    num_gpus: int
    stream: str
    saturation_requests_per_s: float | None
    rates_per_s: list[float]
    points: list[SimulationResult]
    elapsed_s: float

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per rate: the headline figures."""
        return [summary_record(p) for p in self.points]

    def to_dataframe(self):
        from ..plan.records import to_dataframe

        return to_dataframe(self.records())


SUMMARY_FIELDS = (
    "rate_per_s", "requests_per_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
    "itl_p99_s", "e2e_p50_s", "e2e_p99_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu",
    "goodput_requests_per_s", "slo_met_frac", "mean_num_in_system", "num_preemptions",
)


def summary_record(r: SimulationResult) -> dict[str, Any]:
    return {
        "rate_per_s": r.rate_per_s, "requests_per_s": r.requests_per_s,
        "ttft_p50_s": r.ttft.p50_s, "ttft_p90_s": r.ttft.p90_s, "ttft_p99_s": r.ttft.p99_s,
        "tpot_p50_s": r.tpot.p50_s, "tpot_p90_s": r.tpot.p90_s, "tpot_p99_s": r.tpot.p99_s,
        "itl_p99_s": r.itl.p99_s, "e2e_p50_s": r.e2e.p50_s, "e2e_p99_s": r.e2e.p99_s,
        "output_tokens_per_s": r.output_tokens_per_s, "output_tokens_per_s_per_gpu": r.output_tokens_per_s_per_gpu,
        "goodput_requests_per_s": r.goodput_requests_per_s, "slo_met_frac": r.slo_met_frac,
        "mean_num_in_system": r.mean_num_in_system, "num_preemptions": r.num_preemptions,
    }


# ----------------------------------------------------------------------------- statistics


def weighted_quantiles(values: np.ndarray, weights: np.ndarray | None, qs: Sequence[float]) -> list[float | None]:
    """Quantiles of ``values`` (NaN dropped) with ``weights``: the smallest value whose cumulative weight reaches
    ``q`` of the total."""
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    keep = ~np.isnan(v) & (w > 0)
    v, w = v[keep], w[keep]
    if v.size == 0:
        return [None] * len(qs)
    order = np.argsort(v, kind="stable")
    v, cw = v[order], np.cumsum(w[order])
    total = cw[-1]
    out = []
    for q in qs:
        i = int(np.searchsorted(cw, q * total, side="left"))
        out.append(float(v[min(i, v.size - 1)]))
    return out


def percentiles(values: np.ndarray, weights: np.ndarray | None = None) -> Percentiles:
    v = np.asarray(values, dtype=float)
    p50, p90, p99 = weighted_quantiles(v, weights, (0.5, 0.9, 0.99))
    keep = ~np.isnan(v)
    if not keep.any():
        return Percentiles(p50_s=None, p90_s=None, p99_s=None, mean_s=None, max_s=None)
    w = None if weights is None else np.asarray(weights, dtype=float)[keep]
    mean = float(np.average(v[keep], weights=w)) if w is None or w.sum() > 0 else None
    return Percentiles(p50_s=p50, p90_s=p90, p99_s=p99, mean_s=mean, max_s=float(v[keep].max()))


# ----------------------------------------------------------------------------- running


def _check_stream(dep: Deployment, stream: RequestStream) -> None:
    """Requests that no engine of the deployment could ever run."""
    model = dep.model
    total = stream.prompt_tokens + stream.output_tokens
    if model.max_context is not None:
        bad = np.flatnonzero(total > model.max_context)
        if bad.size:
            i = int(bad[0])
            raise InputError(f"prompt_tokens + output_tokens ({int(stream.prompt_tokens[i]):,} + "
                             f"{int(stream.output_tokens[i]):,}) exceeds the {model.max_context:,}-token context of "
                             f"model {model.name}", source=stream.origin, field=stream.where(i))
    for pool in dep.pools:
        cfg = pool.config
        need = stream.prompt_tokens + (stream.output_tokens if pool.role != "prefill" else 1) + cfg.kv_block_tokens
        bad = np.flatnonzero(need > cfg.kv_capacity_tokens)
        if bad.size:
            i = int(bad[0])
            raise InputError(f"a request of {int(need[i]):,} tokens (with one spare KV block) cannot fit in the KV "
                             f"cache of one DP rank of the {pool.role} engine ({cfg.kv_capacity_tokens:,} tokens)",
                             source=stream.origin, field=stream.where(i))
        if not cfg.chunked_prefill:
            bad = np.flatnonzero(stream.prompt_tokens > cfg.max_num_batched_tokens)
            if bad.size:
                i = int(bad[0])
                raise InputError(f"prompt of {int(stream.prompt_tokens[i]):,} tokens is longer than "
                                 f"serving.max_num_batched_tokens ({cfg.max_num_batched_tokens:,}) and "
                                 "serving.chunked_prefill is false: it could never be scheduled",
                                 source=stream.origin, field=stream.where(i))


def _sample_dt(stream: RequestStream) -> float:
    span = float(stream.arrival_s[-1] - stream.arrival_s[0]) if len(stream) > 1 else 0.0
    return max(span / 1000.0, 1e-3)


@dataclass
class _PoolRuns:
    pool: Pool
    runs: list[EngineRun]
    index: list[np.ndarray]


def _run_pool(pool: Pool, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, prefilled: bool,
              sample_dt: float, tick: Callable[[int], None] | None) -> tuple[_PoolRuns, dict[str, np.ndarray]]:
    """Round-robin ``arrival`` (sorted) over the pool's instances and run each."""
    n = len(arrival)
    out = {k: np.full(n, np.nan) for k in ("admit_s", "first_token_s", "second_token_s", "finish_s")}
    out["num_preemptions"] = np.zeros(n, dtype=np.int64)
    out["instance"] = np.zeros(n, dtype=np.int64)
    runs, index = [], []
    done_before = 0
    for i in range(pool.num_instances):
        idx = np.arange(i, n, pool.num_instances)
        index.append(idx)
        if idx.size == 0:
            runs.append(None)  # type: ignore[arg-type]
            continue
        base = done_before

        def cb(done: int, base: int = base) -> None:
            if tick is not None:
                tick(base + done)

        run = run_engine(arrival[idx], prompt[idx], output[idx], pool.cost.iteration_s, pool.config,
                         prefilled=np.full(idx.size, prefilled), sample_dt_s=sample_dt, progress=cb)
        done_before += idx.size
        runs.append(run)
        out["admit_s"][idx] = run.admit_s
        out["first_token_s"][idx] = run.first_token_s
        out["second_token_s"][idx] = run.second_token_s
        out["finish_s"][idx] = run.finish_s
        out["num_preemptions"][idx] = run.num_preemptions
        out["instance"][idx] = i
    return _PoolRuns(pool, runs, index), out


def _transfers(dep: Deployment, ready_s: np.ndarray, prompt: np.ndarray, num_decode_instances: int,
               lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(transfer end, transfer seconds) per request: FIFO over each decode instance's ``lanes`` (its DP ranks)."""
    per_token = dep.kv_transfer_bytes_per_token()
    cache: dict[int, float] = {}
    n = len(ready_s)
    end = np.empty(n)
    dur = np.empty(n)
    free = [[0.0] * lanes for _ in range(num_decode_instances)]
    for h in free:
        heapq.heapify(h)
    order = np.argsort(ready_s, kind="stable")
    for pos, i in enumerate(order):
        p = int(prompt[i])
        d = cache.get(p)
        if d is None:
            d = cache[p] = costs.kv_transfer_s(dep.hardware, p * per_token, same_node=dep.same_node_transfer)
        lanes_i = free[pos % num_decode_instances]
        start = max(float(ready_s[i]), lanes_i[0])
        heapq.heapreplace(lanes_i, start + d)
        end[i] = start + d
        dur[i] = d
    return end, dur


def _timeline(role: str, runs: list[EngineRun], points: int) -> tuple[Timeline, dict[str, float]]:
    runs = [r for r in runs if r is not None]
    length = max(len(r.num_waiting) for r in runs)

    def total(attr: str) -> np.ndarray:
        acc = np.zeros(length)
        for r in runs:
            a = getattr(r, attr)
            acc[: len(a)] += a
        return acc

    w, run_, kv = total("num_waiting"), total("num_running"), total("kv_used_tokens")
    cap = sum(r.kv_capacity_tokens for r in runs)
    dt = runs[0].sample_dt_s
    step = max(1, int(math.ceil(length / points)))
    kv_frac = kv / cap

    def binned(x: np.ndarray) -> list[float]:  # mean over each interval of ``step`` samples
        pad = (-len(x)) % step
        return [float(v) for v in np.concatenate([x, np.full(pad, x[-1])]).reshape(-1, step).mean(axis=1)]

    starts = np.arange(0, length, step)
    tl = Timeline(role=role, sample_dt_s=dt * step, time_s=[float(x) for x in starts * dt],
                  num_waiting=binned(w), num_running=binned(run_), kv_used_frac=binned(kv_frac))
    stats = {"max_waiting": float(w.max()) if length else 0.0, "mean_running": float(run_.mean()) if length else 0.0,
             "mean_kv": float(kv_frac.mean()) if length else 0.0,
             "peak_kv": max(r.peak_kv_tokens / r.kv_capacity_tokens for r in runs)}
    return tl, stats


def _in_system(arrival: np.ndarray, finish: np.ndarray, dt: float) -> float:
    """Time-average of requests arrived and not finished, on a grid of ``dt`` over the span."""
    t0, t1 = float(arrival.min()), float(np.nanmax(finish))
    if t1 <= t0:
        return 0.0
    n = int(min(200_000, max(1000, (t1 - t0) / dt)))
    grid = t0 + (np.arange(n) + 0.5) * (t1 - t0) / n
    a = np.searchsorted(np.sort(arrival), grid, side="right")
    f = np.searchsorted(np.sort(finish), grid, side="right")
    return float(np.mean(a - f))


def run_stream(dep: Deployment, stream: RequestStream, *, max_ttft_s: float | None = None,
               max_tpot_s: float | None = None, saturation_requests_per_s: float | None = None,
               progress: Callable[[int, int], None] | None = None, timeline_points: int = TIMELINE_POINTS,
               keep_requests: bool = True) -> SimulationResult:
    """Simulate ``stream`` on ``dep`` (pure: no files, no printing)."""
    t_start = time.perf_counter()
    _check_stream(dep, stream)
    n = len(stream)
    arr, P, O = stream.arrival_s, stream.prompt_tokens, stream.output_tokens
    dt = _sample_dt(stream)
    total_work = n * len(dep.pools)

    def tick_for(offset: int):
        if progress is None:
            return None
        return lambda done: progress(offset + done, total_work)

    pool_runs: list[_PoolRuns] = []
    transfer = None
    if not dep.disaggregated:
        pr, out = _run_pool(dep.pools[0], arr, P, O, False, dt, tick_for(0))
        pool_runs.append(pr)
        first, second, finish, admit = out["first_token_s"], out["second_token_s"], out["finish_s"], out["admit_s"]
        preempt = out["num_preemptions"]
        inst_p = inst_d = out["instance"]
    else:
        pre_pool, dec_pool = dep.pools
        pr, pout = _run_pool(pre_pool, arr, P, np.ones_like(O), False, dt, tick_for(0))
        pool_runs.append(pr)
        first = pout["first_token_s"]
        admit = pout["admit_s"]
        ready, tdur = _transfers(dep, first, P, dec_pool.num_instances, dec_pool.config.dp)
        transfer = tdur
        finish = first.copy()
        second = np.full(n, np.nan)
        preempt = pout["num_preemptions"].copy()
        inst_p = pout["instance"]
        inst_d = np.full(n, -1, dtype=np.int64)
        need = np.flatnonzero(O > 1)
        if need.size:
            order = need[np.argsort(ready[need], kind="stable")]
            dr, dout = _run_pool(dec_pool, ready[order], P[order], O[order], True, dt, tick_for(n))
            pool_runs.append(dr)
            finish[order] = dout["finish_s"]
            second[order] = dout["second_token_s"]
            preempt[order] += dout["num_preemptions"]
            inst_d[order] = dout["instance"]
        else:
            pool_runs.append(_PoolRuns(dec_pool, [], []))
    ttft = first - arr
    e2e = finish - arr
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(O > 1, (finish - first) / np.maximum(O - 1, 1), np.nan)
    queue = admit - arr
    span = float(np.nanmax(finish) - arr.min()) if n else 0.0
    span = span if span > 0 else float("nan")

    itl_v, itl_w = [], []
    for pr in pool_runs:
        if pr.pool.role == "prefill":
            continue
        for r in pr.runs:
            if r is not None:
                itl_v.append(r.itl_s)
                itl_w.append(r.itl_weight)
    if dep.disaggregated:
        gaps = second - first
        itl_v.append(gaps[~np.isnan(gaps)])
        itl_w.append(np.ones(int((~np.isnan(gaps)).sum())))
    itl = percentiles(np.concatenate(itl_v) if itl_v else np.array([]),
                      np.concatenate(itl_w) if itl_w else np.array([]))

    met = None
    goodput = None
    if max_ttft_s is not None or max_tpot_s is not None:
        ok = np.ones(n, dtype=bool)
        if max_ttft_s is not None:
            ok &= ttft <= max_ttft_s
        if max_tpot_s is not None:
            ok &= np.where(O > 1, tpot <= max_tpot_s, True)
        met = float(ok.mean())
        goodput = float(ok.sum() / span)

    pools_out, timelines = [], []
    for pr in pool_runs:
        pool = pr.pool
        runs = [r for r in pr.runs if r is not None]
        if runs:
            tl, st = _timeline(pool.role, runs, timeline_points)
            timelines.append(tl)
        else:
            st = {"max_waiting": 0.0, "mean_running": 0.0, "mean_kv": 0.0, "peak_kv": 0.0}
        lay = pool.scenario.layout
        pools_out.append(PoolResult(
            role=pool.role, num_instances=pool.num_instances, num_gpus_per_instance=pool.num_gpus_per_instance,
            layout={"tp": lay.tp, "pp": lay.pp, "dp": pool.scenario.dp, "ep": lay.ep, "etp": lay.etp},
            max_num_seqs_per_dp_rank=pool.config.max_num_seqs,
            max_num_batched_tokens_per_dp_rank=pool.config.max_num_batched_tokens,
            num_kv_tokens_per_instance=pool.config.kv_tokens,
            kv_bytes_per_token_per_gpu=pool.kv.bytes_per_token_per_gpu,
            num_iterations=sum(r.num_iterations for r in runs), num_preemptions=int(sum(r.num_preemptions.sum() for r in runs)),
            busy_frac=float(np.mean([r.busy_s for r in runs]) / span) if runs and span == span else 0.0,
            peak_kv_used_frac=st["peak_kv"], mean_kv_used_frac=st["mean_kv"], max_num_waiting=int(st["max_waiting"]),
            mean_num_running=st["mean_running"], num_step_model_calls=pool.cost.num_step_model_calls,
        ))

    out_tps = float(O.sum() / span)
    usd_h = dep.price_usd_per_gpu_hour * dep.num_gpus if dep.price_usd_per_gpu_hour else None
    res = SimulationResult(
        scenario=dep.scenario.name, model=dep.model.name, hardware=dep.hardware.name,
        mode="disaggregated" if dep.disaggregated else "aggregated", num_gpus=dep.num_gpus, stream=stream.source,
        rate_per_s=stream.rate_per_s, num_requests=n, span_s=span,
        ttft=percentiles(ttft), tpot=percentiles(tpot), itl=itl, e2e=percentiles(e2e), queue=percentiles(queue),
        kv_transfer=percentiles(transfer) if transfer is not None else None,
        requests_per_s=n / span, input_tokens_per_s=float(P.sum() / span), output_tokens_per_s=out_tps,
        output_tokens_per_s_per_gpu=out_tps / dep.num_gpus, mean_prompt_tokens=float(P.mean()),
        mean_output_tokens=float(O.mean()), max_ttft_s=max_ttft_s, max_tpot_s=max_tpot_s,
        goodput_requests_per_s=goodput, slo_met_frac=met, saturation_requests_per_s=saturation_requests_per_s,
        mean_num_in_system=_in_system(arr, finish, dt), num_preemptions=int(preempt.sum()), usd_per_hour=usd_h,
        usd_per_million_output_tokens=usd_h / 3600.0 / out_tps * 1e6 if usd_h and out_tps > 0 else None,
        pools=pools_out, timelines=timelines, elapsed_s=time.perf_counter() - t_start,
    )
    if keep_requests:
        cols = {"request": np.arange(n), "arrival_s": arr, "prompt_tokens": P, "output_tokens": O, "queue_s": queue,
                "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "first_token_s": first, "finish_s": finish,
                "num_preemptions": preempt}
        if dep.disaggregated:
            cols |= {"kv_transfer_s": transfer, "prefill_instance": inst_p, "decode_instance": inst_d}
        else:
            cols["instance"] = inst_p
        res._requests = cols
    return res


def saturation_rate(dep: Deployment, stream: RequestStream, num_requests: int | None = None) -> float:
    """Completion rate of an overload (see the module docstring), requests/s."""
    seats = sum(p.config.seats * p.num_instances for p in dep.pools)
    k = num_requests or int(min(40_000, max(2_000, 6 * seats)))
    idx = np.arange(k) % len(stream)
    over = RequestStream(np.zeros(k), stream.prompt_tokens[idx], stream.output_tokens[idx], stream.source,
                         origin=stream.origin)
    res = run_stream(dep, over, timeline_points=10)
    fin = np.sort(res._requests["finish_s"])
    lo, hi = int(0.25 * k), int(0.75 * k)
    window = fin[hi] - fin[lo]
    return float((hi - lo) / window) if window > 0 else float(k / fin[-1])


# ----------------------------------------------------------------------------- entry points


def _stream_and_deployment(scenario, overrides, rate, num_requests, arrivals, prompt_tokens, output_tokens, trace,
                           seed) -> tuple[Deployment, RequestStream]:
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario, overrides)
    if not isinstance(sc.workload, ServeWorkload):
        raise InputError("moesim simulate needs a serving scenario (workload.kind = 'serve')",
                         source=f"scenario {sc.name}", field="workload.kind")
    model = sc.resolve_model()
    if trace is not None:
        from .trace import read_trace

        stream = read_trace(trace)
    else:
        w = sc.workload
        stream = generate(rate if rate is not None else 1.0, num_requests, arrivals=arrivals,
                          prompt_tokens=prompt_tokens if prompt_tokens is not None else f"fixed:{w.prompt_tokens}",
                          output_tokens=output_tokens if output_tokens is not None else f"fixed:{w.output_tokens}",
                          seed=seed, max_context=model.max_context)
    ctx = int((stream.prompt_tokens + stream.output_tokens).max()) + 1
    dep = deployment(sc, model, sc.resolve_hardware(), max_context=max(ctx, 2))
    return dep, stream


def prepare(scenario: Scenario | str | Path | None = None, *, rate: float | None = None, num_requests: int = 1000,
            arrivals: str = "poisson", prompt_tokens: str | None = None, output_tokens: str | None = None,
            trace: str | Path | None = None, seed: int = 0, overrides: Sequence[str] = ()
            ) -> tuple[Deployment, RequestStream]:
    """The deployment and the request stream of a simulation, checked (every input error is raised here)."""
    if trace is None:
        if rate is None:
            raise InputError("give a request rate (requests/s) or a trace file", source="--rate")
        check_rate(rate)
    elif rate is not None:
        raise InputError("give either a rate or a trace, not both", source="--rate")
    dep, stream = _stream_and_deployment(scenario, overrides, rate, num_requests, arrivals, prompt_tokens,
                                         output_tokens, trace, seed)
    _check_stream(dep, stream)
    return dep, stream


def simulate(scenario: Scenario | str | Path | None = None, *, rate: float | None = None, num_requests: int = 1000,
             arrivals: str = "poisson", prompt_tokens: str | None = None, output_tokens: str | None = None,
             trace: str | Path | None = None, seed: int = 0, overrides: Sequence[str] = (),
             max_ttft_s: float | None = None, max_tpot_s: float | None = None, saturation: bool = True,
             progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Simulate serving ``scenario`` under a request stream (generated at ``rate``, or a ``trace`` file).

    Lengths default to the scenario's ``prompt_tokens`` / ``output_tokens`` (fixed);
    see :mod:`moesim.serving.stream` for the distributions. ``max_ttft_s`` /
    ``max_tpot_s`` are per-request SLOs for goodput. Returns a
    :class:`SimulationResult` (``.records()`` per request, ``.to_dataframe()``).
    """
    _check_slo(max_ttft_s, "max_ttft_s")
    _check_slo(max_tpot_s, "max_tpot_s")
    dep, stream = prepare(scenario, rate=rate, num_requests=num_requests, arrivals=arrivals,
                          prompt_tokens=prompt_tokens, output_tokens=output_tokens, trace=trace, seed=seed,
                          overrides=overrides)
    return run_prepared(dep, stream, max_ttft_s=max_ttft_s, max_tpot_s=max_tpot_s, saturation=saturation,
                        progress=progress)


def run_prepared(dep: Deployment, stream: RequestStream, *, max_ttft_s: float | None = None,
                 max_tpot_s: float | None = None, saturation: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """:func:`simulate` on what :func:`prepare` returned."""
    sat = saturation_rate(dep, stream) if saturation else None
    return run_stream(dep, stream, max_ttft_s=max_ttft_s, max_tpot_s=max_tpot_s, saturation_requests_per_s=sat,
                      progress=progress)


def _rate_list(rates: Sequence[float] | int) -> tuple[list[float], int]:
    if isinstance(rates, int) and not isinstance(rates, bool):
        if not 1 <= rates <= 1000:
            raise InputError(f"the number of rates must be from 1 to 1,000; got {rates}", source="--rate")
        return [], rates
    out = [check_rate(r) for r in rates]
    if not out:
        raise InputError("give at least one rate", source="--rate")
    return out, 0


def simulate_rates(scenario: Scenario | str | Path | None = None, rates: Sequence[float] | int = 10, *,
                   num_requests: int = 1000, arrivals: str = "poisson", prompt_tokens: str | None = None,
                   output_tokens: str | None = None, seed: int = 0, overrides: Sequence[str] = (),
                   max_ttft_s: float | None = None, max_tpot_s: float | None = None,
                   progress: Callable[[int, int], None] | None = None) -> RateSweepResult:
    """The same requests at several rates; ``rates`` an int ``k`` sweeps ``k`` rates from 10 % to 120 % of the
    saturation rate."""
    _check_slo(max_ttft_s, "max_ttft_s")
    _check_slo(max_tpot_s, "max_tpot_s")
    rate_list, _ = _rate_list(rates)
    dep, stream = prepare(scenario, rate=rate_list[0] if rate_list else 1.0, num_requests=num_requests,
                          arrivals=arrivals, prompt_tokens=prompt_tokens, output_tokens=output_tokens, seed=seed,
                          overrides=overrides)
    return sweep_prepared(dep, stream, rates, max_ttft_s=max_ttft_s, max_tpot_s=max_tpot_s, progress=progress)


def sweep_prepared(dep: Deployment, stream: RequestStream, rates: Sequence[float] | int, *,
                   max_ttft_s: float | None = None, max_tpot_s: float | None = None,
                   progress: Callable[[int, int], None] | None = None) -> RateSweepResult:
    """:func:`simulate_rates` on what :func:`prepare` returned (a generated stream)."""
    t0 = time.perf_counter()
    rate_list, auto = _rate_list(rates)
    sat = saturation_rate(dep, stream)
    if auto:
        rate_list = [float(x) for x in np.linspace(0.1, 1.2, auto) * sat] if auto > 1 else [sat]
    points = []
    for i, r in enumerate(rate_list):
        points.append(run_stream(dep, stream.at_rate(r), max_ttft_s=max_ttft_s, max_tpot_s=max_tpot_s,
                                 saturation_requests_per_s=sat, timeline_points=100))
        if progress is not None:
            progress(i + 1, len(rate_list))
    return RateSweepResult(scenario=dep.scenario.name, mode=points[0].mode, num_gpus=dep.num_gpus,
                           stream=stream.source, saturation_requests_per_s=sat, rates_per_s=rate_list, points=points,
                           elapsed_s=time.perf_counter() - t0)


def _check_slo(x: float | None, name: str) -> None:
    if x is None:
        return
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise InputError(f"must be a finite number of seconds > 0; got {x!r}", source="--" + name.replace("_", "-"))


# ----------------------------------------------------------------------------- sizing (moesim plan --rate)


def with_instances(dep: Deployment, counts: Sequence[int]) -> Deployment:
    """``dep`` with ``counts[i]`` instances in pool ``i`` (engines reused, nothing rebuilt)."""
    import dataclasses

    pools = [dataclasses.replace(p, num_instances=int(k)) for p, k in zip(dep.pools, counts)]
    return dataclasses.replace(dep, pools=pools)


def pool_saturation(pool: Pool, stream: RequestStream, num_requests: int | None = None) -> float:
    """Requests/s one instance of ``pool`` completes when overloaded with ``stream``'s lengths: prefill only
    (prefill pool), decode only from a cached prompt (decode pool), or both (aggregated)."""
    k = num_requests or int(min(20_000, max(1_000, 6 * pool.config.seats)))
    idx = np.arange(k) % len(stream)
    P = stream.prompt_tokens[idx]
    O = stream.output_tokens[idx] if pool.role != "prefill" else np.ones(k, dtype=np.int64)
    run = run_engine(np.zeros(k), P, O, pool.cost.iteration_s, pool.config, prefilled=np.full(k, pool.role == "decode"),
                     sample_dt_s=1e9)
    fin = np.sort(run.finish_s)
    lo, hi = int(0.25 * k), int(0.75 * k)
    window = fin[hi] - fin[lo]
    return float((hi - lo) / window) if window > 0 else float(k / fin[-1])
