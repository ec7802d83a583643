"""Where the serving simulator meets the step, memory and communication models (the only such place).

Everything the scheduler needs from the cost model goes through this module, so a
change inside the step model touches one file here:

* :class:`IterationCost`: the time of one engine iteration from
  :func:`moesim.step.estimate.layer_pass`, composed exactly as the step model
  composes a serving pass (``n_moe x moe + n_dense x dense + embedding + LM head``
  plus ``(pp - 1)`` pipeline sends), tabulated lazily over a grid and
  interpolated, then with the engine's host step
  (:func:`moesim.step.estimate.engine_iteration_s`, ``serving.host_step_s``);
* :func:`kv_capacity`: KV-cache tokens that fit per DP rank, from
  :func:`moesim.step.estimate.serve_memory` (the memory model's weights,
  activations, workspace and KV bytes per token);
* :func:`kv_transfer_s`: moving a request's KV cache from a prefill GPU to a
  decode GPU, a send/receive on the topology model (:mod:`moesim.comm`).

One iteration of a DP rank runs ``n`` tokens (its decode tokens plus its
prefill chunks), whose queries attend ``keys`` keys on average, reading
``kv_read`` cached tokens, with ``lm`` tokens through the LM head (one per
decode sequence and per finished prompt). For a decode batch ``b`` at context
``C`` that is ``(n, keys, kv_read, lm) = (b, C, b C, b)``, the step model's
decode step; for one prompt of ``P`` tokens it is ``(P, (P + 1) / 2, 0, 1)``, its
prefill. The table holds ``layer_pass`` at grid points (``n`` dense in small
counts, then 5 % apart; ``keys`` and ``kv_read`` 20 % apart) and is linear
between them (trilinear in the three axes); a column over ``n`` is computed the
first time an iteration needs it, so a long stream evaluates the step model a
few hundred times, not once per iteration.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ..comm.api import collective_time_s
from ..comm.placement import GroupSpec
from ..errors import InputError
from ..hardware import HardwareProfile
from ..model import ModelSpec
from ..scenario import Scenario, ServeWorkload
from ..step import bridge
from ..step.estimate import check_layout, engine_iteration_s, layer_pass, serve_memory, serve_pass_dtypes
from ..step.parallel import Parallel


def _grid(lo: float, hi: float, ratio: float, dense_upto: int = 0) -> list[float]:
    """Points from ``lo`` to at least ``hi``: halvings below 1, every integer up to ``dense_upto``, then
    whole numbers ``ratio`` apart."""
    pts: set[float] = set()
    x = lo
    while x < 1.0:
        pts.add(x)
        x *= 2.0
    pts.update(float(i) for i in range(1, dense_upto + 1))
    x = float(max(1, dense_upto))
    pts.add(x)
    while x < hi:
        x = float(max(round(x * ratio), x + 1.0))
        pts.add(x)
    return sorted(pts)


def _locate(grid: list[float], x: float) -> tuple[int, float]:
    """(index i, fraction f) with ``x = grid[i] + f (grid[i+1] - grid[i])``; linear beyond the ends."""
    last = len(grid) - 2
    i = bisect.bisect_right(grid, x) - 1
    if i < 0:
        i = 0
    elif i > last:
        i = last
    g0 = grid[i]
    return i, (x - g0) / (grid[i + 1] - g0)


class IterationCost:
    """Seconds of one engine iteration of one scenario (per DP rank, on the slowest stage's path).

    Built by :func:`iteration_cost`; :meth:`iteration_s` is the interpolated table,
    :meth:`exact_s` the step model at any point (for tests and checks).
    """

    def __init__(self, sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, *, max_tokens: float,
                 max_keys: float, max_kv_read: float):
        w: ServeWorkload = sc.workload  # type: ignore[assignment]
        self._sc, self._model, self._hw, self._par = sc, model, hw, par
        self._serving = sc.serving
        self._kw = dict(serve_pass_dtypes(model, w), detail=False)
        self._n_moe = model.num_moe_layers
        self._n_dense = model.num_dense_layers
        self.dp, self.pp = par.dp, par.pp
        n_lo = min(1.0, 1.0 / (par.dp * par.pp))
        self.n_grid = _grid(n_lo, max(2.0, max_tokens), 1.05, dense_upto=32)
        self.keys_grid = _grid(1.0, max(2.0, max_keys), 1.2)
        self.kv_grid = [0.0] + _grid(1.0, max(2.0, max_kv_read), 1.2)
        self._n_arr = np.asarray(self.n_grid)
        self._cols: dict[int, list[float]] = {}
        self._nk = len(self.kv_grid)
        first = self._pass(self._n_arr, 1.0, 0.0, lm=self._n_arr)
        self._lm = [float(x) for x in np.broadcast_to(first.lm_head_s, self._n_arr.shape)]
        h = model.hidden_size
        if par.pp > 1:
            self._p2p = [(par.pp - 1) * float(bridge.p2p_time_s(hw, par, 2.0 * n * h)) for n in self.n_grid]
        else:
            self._p2p = [0.0] * len(self.n_grid)
        self.num_step_model_calls = 1

    # -------------------------------------------------------------- the step model

    def _pass(self, n, keys: float, kv_read: float, lm):
        return layer_pass(self._sc, self._model, self._hw, self._par, n=n, keys=keys, decode_batch=1.0,
                          context=kv_read, lm_tokens=lm, **self._kw)

    def _body(self, p) -> np.ndarray:
        return np.broadcast_to(self._n_moe * p.moe_s + self._n_dense * p.dense_s + p.embedding_s, self._n_arr.shape)

    def exact_s(self, n: float, keys: float, kv_read: float, lm: float) -> float:
        """The step model itself at one point (no table): body + LM head + pipeline sends."""
        p = self._pass(np.array([float(n)]), float(keys), float(kv_read), np.array([float(lm)]))
        body = float(self._n_moe * np.ravel(p.moe_s)[0] + self._n_dense * np.ravel(p.dense_s)[0]
                     + np.ravel(p.embedding_s)[0])
        p2p = (self.pp - 1) * float(bridge.p2p_time_s(self._hw, self._par, 2.0 * n * self._model.hidden_size)) \
            if self.pp > 1 else 0.0
        return engine_iteration_s(body + float(np.ravel(p.lm_head_s)[0]) + p2p, float(lm), self._serving)

    def _col(self, ki: int, ri: int) -> list[float]:
        key = ki * self._nk + ri
        col = self._cols.get(key)
        if col is None:
            p = self._pass(self._n_arr, self.keys_grid[ki], self.kv_grid[ri], lm=1.0)
            col = self._cols[key] = [float(x) for x in self._body(p)]
            self.num_step_model_calls += 1
        return col

    # -------------------------------------------------------------- the table

    def iteration_s(self, n: float, keys: float, kv_read: float, lm: float) -> float:
        """Interpolated seconds of an iteration of ``n`` tokens per DP rank (see the module docstring)."""
        i, fn = _locate(self.n_grid, n)
        k, fk = _locate(self.keys_grid, keys if keys > 1.0 else 1.0)
        r, fr = _locate(self.kv_grid, kv_read)
        nk = self._nk
        cols = self._cols
        base = k * nk + r
        vals = []
        for key, (kk, rr) in ((base, (k, r)), (base + 1, (k, r + 1)), (base + nk, (k + 1, r)),
                              (base + nk + 1, (k + 1, r + 1))):
            c = cols.get(key)
            if c is None:
                c = self._col(kk, rr)
            a = c[i]
            vals.append(a + fn * (c[i + 1] - a))
        v0 = vals[0] + fr * (vals[1] - vals[0])
        v1 = vals[2] + fr * (vals[3] - vals[2])
        body = v0 + fk * (v1 - v0)
        j, fl = _locate(self.n_grid, lm)
        lm_s = self._lm[j] + fl * (self._lm[j + 1] - self._lm[j])
        p2p = self._p2p[i] + fn * (self._p2p[i + 1] - self._p2p[i])
        return engine_iteration_s(body + lm_s + p2p, lm, self._serving)

    def prefill_s(self, prompt_tokens: float) -> float:
        """One prompt prefilled alone (the step model's TTFT of one prompt)."""
        return self.iteration_s(prompt_tokens, (prompt_tokens + 1) / 2, 0.0, 1.0)

    def decode_s(self, batch: float, context: float) -> float:
        """One decode step of ``batch`` sequences on the whole engine at mean context ``context``."""
        d = batch / (self.dp * self.pp)
        return self.iteration_s(d, context, d * context, d)


def check_layout_for(sc: Scenario, model: ModelSpec, hw: HardwareProfile, where: str) -> None:
    """The step model's layout checks, naming ``where`` (a pool of a disaggregated deployment)."""
    try:
        check_layout(sc, model, hw)
    except InputError as exc:
        raise InputError(exc.message, source=where, field=exc.field) from None


def _serve_variant(sc: Scenario, **workload) -> Scenario:
    return sc.model_copy(update={"workload": sc.workload.model_copy(update=workload)})


def iteration_cost(sc: Scenario, model: ModelSpec, hw: HardwareProfile, *, max_tokens: float, max_keys: float,
                   max_kv_read: float) -> IterationCost:
    """The iteration table of a serving scenario (layout checked as ``moesim estimate`` checks it)."""
    if not isinstance(sc.workload, ServeWorkload):
        raise InputError("moesim simulate needs a serving scenario (workload.kind = 'serve')", source=f"scenario {sc.name}",
                         field="workload.kind")
    check_layout(sc, model, hw)
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    return IterationCost(sc, model, hw, par, max_tokens=max_tokens, max_keys=max_keys, max_kv_read=max_kv_read)


@dataclass(frozen=True)
class KVCapacity:
    """KV cache of one DP rank of an engine, from the memory model."""

    tokens_per_dp_rank: int
    bytes_per_token_per_gpu: float
    free_bytes_per_gpu: float
    capacity_bytes_per_gpu: float


def kv_capacity(sc: Scenario, model: ModelSpec, hw: HardwareProfile, *, max_num_seqs: int,
                max_num_batched_tokens: int, where: str) -> KVCapacity:
    """KV tokens per DP rank: GPU memory less weights, activations of a full iteration and workspace.

    The memory model is asked about the engine's largest iteration (``max_num_seqs``
    decode sequences plus a ``max_num_batched_tokens`` prefill); its ``kv_cache`` bytes
    over the tokens it holds give the bytes per token, everything else is the
    fixed part.
    """
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    # the largest iteration computes max_num_batched_tokens prompt tokens (a cached prefix is not in the budget)
    probe = _serve_variant(sc, phase="both", batch_size=max_num_seqs, prompt_tokens=max_num_batched_tokens,
                           cached_prompt_tokens=0, output_tokens=1, prefill_batch_size=1)
    mem, _ = serve_memory(probe, model, hw, par)
    cats = mem.by_category_bytes
    kv = float(cats.get("kv_cache", 0.0))
    per_token = kv / (max_num_seqs * (max_num_batched_tokens + 1))
    fixed = mem.total_bytes - kv
    free = mem.capacity_bytes - fixed
    if per_token <= 0:
        raise InputError("the memory model gives no KV-cache bytes per token for this model", source=where)
    tokens = int(free // per_token) if free > 0 else 0
    if tokens <= 0:
        other = ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in cats.items() if k != "kv_cache")
        raise InputError(f"no room for a KV cache: {other} per GPU already exceed the {mem.capacity_bytes / 1e9:.1f} GB "
                         f"of {hw.name} (use more GPUs, or lower serving.max_num_seqs / max_num_batched_tokens)",
                         source=where)
    return KVCapacity(tokens_per_dp_rank=tokens, bytes_per_token_per_gpu=per_token, free_bytes_per_gpu=free,
                      capacity_bytes_per_gpu=mem.capacity_bytes)


def kv_transfer_s(hw: HardwareProfile, size_bytes: float, *, same_node: bool) -> float:
    """Seconds to send ``size_bytes`` from one GPU to another: over the scale-up domain (NVLink) when both
    are in one node, else over the scale-out fabric (one NIC each), on the topology model."""
    same = same_node and hw.node.accelerators_per_node >= 2
    group = GroupSpec(size=2, ranks_per_node=2 if same else 1)
    return float(collective_time_s(hw, "sendrecv", float(size_bytes), group))


def check_prompt_fits(num_tokens: int, capacity_tokens: int, where: str, field: str) -> None:
    """A sequence that can never fit in one DP rank's KV cache can never run."""
    if num_tokens > capacity_tokens:
        raise InputError(f"a request of {num_tokens:,} tokens (prompt + output) cannot fit in the KV cache of one DP "
                         f"rank ({capacity_tokens:,} tokens); use more memory per rank or shorter requests",
                         source=where, field=field)
