"""The whole estimate: a training step, or prefill and decode of a serving deployment.

Composition (per GPU of the slowest pipeline stage):

* one layer pass = critical path of its operations (:mod:`moesim.step.schedule`),
  with expert compute and all-to-all paced by the most loaded EP rank
  (expected value for ``step_s`` / ``tpot_s``, p99 for the ``*_p99_s`` figures);
* training: backward = a dgrad and a wgrad GEMM per forward GEMM at their own shapes, the wgrad
  accumulating into the main gradient (:func:`moesim.layer.backward_ops`), 2x every other
  computation (2.5x for the attention core, FlashAttention-2's ratio) and the same communication again;
  full recomputation adds one more forward. A 1F1B pipeline with ``m``
  micro-batches and stage times ``t_j`` takes ``sum_j t_j + (m - 1) max_j t_j``
  (fill, steady state, drain; equal stages give the ``(pp - 1) / m`` bubble).
  Gradient reduction (dense parameters over DP, expert parameters over EDP) is
  exposed only where it outlasts the last micro-batch's backward; the Adam
  update is a memory-bound pass over the local shard (ZeRO-1+).
* serving: time to first token = prefill of the batch through every layer;
  time per output token = one decode step of the batch at the mean context
  ``prompt + output / 2`` (KV-cache reads included).
* MFU = model FLOPs per token (6 x active matmul parameters plus attention for
  training, 2 x for inference, no recomputation, no MTP) x tokens/s over
  GPUs x dense peak.

References: Narayanan et al., "Efficient Large-Scale Language Model Training on
GPU Clusters Using Megatron-LM", SC21 (1F1B bubble, MFU); Dao, FlashAttention-2
(backward/forward ratio); DeepSeek-V3 technical report, arXiv 2412.19437.
Left out: pipeline schedules other than 1F1B (interleaved, DualPipe's bubble),
stragglers other than expert load (stage imbalance aside), host overheads,
prefill/decode interference and continuous batching dynamics.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..dtypes import bytes_per_element
from ..errors import InputError
from ..flops import forward_flops_per_token
from ..hardware import HardwareProfile
from ..model import MLAAttention, ModelSpec
from ..ops import OpKind
from ..scenario import RoutingSpec, Schedule, Scenario, ServeWorkload, ServingSpec, TrainWorkload, load_scenario
from ..layer import TE_COMPUTE_STREAMS, backward_ops, low_precision_ops, num_kernels
from ..timing import host_bound_s, op_time_s, time_op
from . import bridge
from .memory import (
    MemoryBreakdown,
    StageParams,
    TRAIN_WEIGHT_BYTES,
    kv_bytes_per_sequence,
    layer_activation_bytes,
    param_state_bytes,
    stage_params,
)
from .ops import (
    Op,
    attention_ops,
    dense_ffn_ops,
    dispatch_bytes_per_copy,
    embedding_op,
    lm_head_op,
    moe_ops,
    picks_for_recompute,
    recompute_units,
    recomputed_ops,
)
from .memo import by_model
from .parallel import Parallel
from .result import CostResult, Estimate, LoadSummary, MemoryResult, OpTiming, built
from .schedule import critical_path_s, critical_path_time

# ----------------------------------------------------------------------------- checks


def check_layout(sc: Scenario, model: ModelSpec, hw: HardwareProfile) -> None:
    """Raise InputError for layouts that cannot run, naming both numbers."""
    src = f"scenario {sc.name}"
    lay = sc.layout
    cap = hw.max_accelerators
    if cap is not None and sc.num_gpus > cap:
        raise InputError(f"num_gpus ({sc.num_gpus}) exceeds the {cap} accelerators profile {hw.name} describes",
                         source=src, field="num_gpus")
    if model.attention.num_heads % lay.tp:
        raise InputError(f"layout.tp ({lay.tp}) must divide the {model.attention.num_heads} attention heads",
                         source=src, field="layout.tp")
    if lay.pp > model.num_layers:
        raise InputError(f"layout.pp ({lay.pp}) exceeds the {model.num_layers} layers", source=src, field="layout.pp")
    v = lay.virtual_stages
    pipeline = sc.schedule.pipeline
    if (v > 1 or pipeline != "1f1b") and not isinstance(sc.workload, TrainWorkload):
        field = "layout.virtual_stages" if v > 1 else "schedule.pipeline"
        raise InputError("sets a training pipeline schedule; allowed for serving: layout.virtual_stages = 1 and "
                         "schedule.pipeline = '1f1b'", source=src, field=field)
    if v > 1:
        if lay.pp == 1:
            raise InputError(f"layout.virtual_stages ({v}) needs pipeline stages (layout.pp > 1); allowed with pp 1: 1",
                             source=src, field="layout.virtual_stages")
        if pipeline == "dualpipe":
            raise InputError("schedule.pipeline = 'dualpipe' has its own two chunks per GPU; allowed with it: "
                             "layout.virtual_stages = 1", source=src, field="layout.virtual_stages")
        if lay.pp * v > model.num_layers:
            raise InputError(f"layout.pp x layout.virtual_stages ({lay.pp} x {v}) exceeds the {model.num_layers} "
                             f"layers: a virtual stage holds at least one layer; allowed: virtual_stages <= "
                             f"{model.num_layers // lay.pp}", source=src, field="layout.virtual_stages")
    if pipeline == "dualpipe" and (lay.pp < 2 or lay.pp % 2):
        raise InputError(f"schedule.pipeline = 'dualpipe' pairs stage j with stage pp-1-j, so layout.pp must be even "
                         f"and at least 2; got {lay.pp}", source=src, field="layout.pp")
    moe = model.moe
    if moe is None:
        if lay.ep > 1 or lay.etp > 1:
            raise InputError(f"layout.ep/etp > 1 but model {model.name} has no experts", source=src, field="layout.ep")
        return
    slots = moe.num_experts + sc.routing.redundant_experts
    if slots % lay.ep:
        raise InputError(
            f"layout.ep ({lay.ep}) must divide the {moe.num_experts} experts"
            + (f" plus {sc.routing.redundant_experts} redundant" if sc.routing.redundant_experts else ""),
            source=src, field="layout.ep")
    if moe.expert_ffn_dim % lay.etp:
        raise InputError(f"layout.etp ({lay.etp}) must divide the expert width {moe.expert_ffn_dim}",
                         source=src, field="layout.etp")


# ----------------------------------------------------------------------------- one pass


@dataclass(frozen=True)
class Pass:
    """Per-layer times of one pass (forward, or backward) and the op details of the forward."""

    moe_s: float
    moe_p99_s: float
    dense_s: float
    by_stage_moe_s: dict[str, float]
    by_stage_dense_s: dict[str, float]
    bound: dict[str, str]
    timings: list[OpTiming]
    load: LoadSummary | None
    embedding_s: float
    lm_head_s: float
    #: seconds of one MoE layer's all-to-all transfers in this pass (dispatch + combine, expected and p99 load):
    #: the time the EP group's links are busy, whether or not the schedule hides it under computation
    a2a_s: float = 0.0
    a2a_p99_s: float = 0.0
    #: device seconds of the operations selective recomputation runs again in one MoE / dense layer's backward
    #: (detail passes; on the critical path or not)
    recompute_moe_s: float = 0.0
    recompute_dense_s: float = 0.0


_NODE = {
    OpKind.ATTENTION: "attention", OpKind.ROUTER: "router", OpKind.DISPATCH: "dispatch", OpKind.EXPERTS: "experts",
    OpKind.COMBINE: "combine", OpKind.SHARED_EXPERTS: "shared_experts", OpKind.DENSE_FFN: "dense_ffn",
}
#: schedule nodes of the local (GPU) work of the all-to-all stages, reported under their stage
_LOCAL = {OpKind.DISPATCH: "permute", OpKind.COMBINE: "unpermute"}
_STAGE_OF_NODE = {"permute": "dispatch", "unpermute": "combine", "attn_tp": "tp_comm", "ffn_tp": "tp_comm"}


def _node_names(ops: list[Op]) -> list[str]:
    """Schedule node of each operation (see moesim/step/schedule.py); local work of the all-to-all
    stages is kept apart from the transfer so overlap hides only the transfer."""
    names, seen_attn = [], False
    for op in ops:
        if op.kind == OpKind.TP_COMM:
            names.append("ffn_tp" if seen_attn and names and names[-1] != "attention" else "attn_tp")
        elif op.kind in _LOCAL and op.compute_kind != "comm":
            names.append(_LOCAL[op.kind])
        else:
            names.append(_NODE[op.kind])
            seen_attn = seen_attn or op.kind == OpKind.ATTENTION
    return names


class _Timer:
    """Times operations on one profile and layout (communication through the comm model).

    Within one pass an operation met again (the attention block under the MoE, p99 and dense templates, the
    router and shared experts under the mean and p99 loads) is timed once: operations are frozen and
    compared by value, and ``memo`` maps each to its (time, bound). Across passes, :data:`_OP_TIMES` keeps
    the (time, bound) of operations by profile digest, dtype and value (a sweep over prompt lengths meets
    the same expert operations at every length).
    """

    def __init__(self, hw: HardwareProfile, par: Parallel, dtype: str, fp8_block: bool = False):
        self.hw, self.par, self.dtype = hw, par, dtype
        # block-scaled FP8 GEMMs: only a profile whose tensor cores lack block scales tells them apart
        self.fp8_block = fp8_block and hw.efficiency.fp8_block_scaled_frac != 1.0
        self.hw_key = bridge._hw_key(hw)
        self.a2a: dict[OpKind, float] = {}
        self.memo: dict[Op, tuple[float, str]] = {}

    def time_only(self, op: Op):
        """Time of ``op`` for scalar or array sizes (fast path: no bound).

        Array times are kept in :data:`_OP_ARRAY_TIMES` by profile digest, dtype and the operation's values
        (:func:`_op_key`): a search meets the same operation in many layouts (the attention block under every
        EP size, the expert GEMMs under every TP size that leaves them alone)."""
        if op.compute_kind == "comm":
            if op.collective == "all_to_all":
                return self.a2a.get(op.kind, 0.0)
            return bridge.collective_time_s(self.hw, self.par, op.collective, op.comm_bytes, op.group)
        key = (self.hw_key, self.dtype, self.fp8_block, _op_key(op))
        hit = _OP_ARRAY_TIMES.get(key)
        if hit is None:
            hit = op_time_s(self.hw, op, self.dtype, fp8_block=self.fp8_block)
            if isinstance(hit, np.ndarray):
                hit.flags.writeable = False  # shared by every later caller
            _OP_ARRAY_TIMES.put(key, hit)
        return hit

    def op(self, op: Op) -> tuple[float, str]:
        if op.compute_kind == "comm":
            if op.collective == "all_to_all":
                t = self.a2a.get(op.kind, 0.0)
            else:
                t = bridge.collective_time_s(self.hw, self.par, op.collective, op.comm_bytes, op.group)
            return t, "communication"
        hit = self.memo.get(op)
        if hit is None:
            key = (self.hw_key, self.dtype, self.fp8_block, op)
            hit = _OP_TIMES.get(key)
            if hit is None:
                ot = time_op(self.hw, op, self.dtype, fp8_block=self.fp8_block)
                hit = (ot.time_s, ot.bound)
                _OP_TIMES.put(key, hit)
            self.memo[op] = hit
        return hit


class _PassCache:
    """Layer passes already computed, least recently used dropped past ``maxsize`` (see :func:`layer_pass`).

    ``cache_clear`` empties it (:func:`moesim.caches.clear_caches` calls it).
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.data: OrderedDict = OrderedDict()
        self.cache_clear = self.data.clear  # an attribute of the instance, not the class (moesim.caches scans both)

    def get(self, key):
        hit = self.data.get(key)
        if hit is not None:
            self.data.move_to_end(key)
        return hit

    def put(self, key, value) -> None:
        self.data[key] = value
        if len(self.data) > self.maxsize:
            self.data.popitem(last=False)



_PASSES = _PassCache(4096)
_OP_TIMES = _PassCache(65536)
_OP_ARRAY_TIMES = _PassCache(8192)  # about 3 kB an entry (the arrays in its key), so at most some 27 MB
#: what :func:`moesim.timing.op_terms` reads of an operation and of its GEMM shape (tests/step/test_op_time_cache.py
#: checks that it reads nothing else)
OP_TIME_FIELDS = ("compute_kind", "dtype", "flops", "bytes_moved", "weight_bytes", "num_kernels", "keys_per_query",
                  "head_dim", "is_backward", "streams")
GEMM_TIME_FIELDS = ("m", "n", "k", "call_groups")


def _op_key(op: Op) -> tuple:
    """A hashable stand-in for what :func:`moesim.timing.op_terms` reads of ``op`` (sizes may be numpy arrays):
    two operations with equal keys take the same time on one profile and dtype."""
    g = op.gemm  # the fields of OP_TIME_FIELDS and GEMM_TIME_FIELDS, spelled out (a loop costs twice as much)
    v = _value_key
    return (op.compute_kind, op.dtype, v(op.flops), v(op.bytes_moved), v(op.weight_bytes), v(op.num_kernels),
            v(op.keys_per_query), v(op.head_dim), op.is_backward, op.streams,
            None if g is None else (v(g.m), v(g.n), v(g.k), v(g.call_groups)))


def _plain(x) -> bool:
    return x is None or type(x) in (int, float)


def layer_pass(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, *, n, keys: float,
               decode_batch=0.0, context: float = 0.0, decode_tokens=None, weight_dtype: str, kv_dtype: str,
               expert_weight_dtype: str | None = None,
               compute_dtype: str, expert_compute_dtype: str | None = None, backward: bool = False,
               training: bool = False, lm_tokens=None, detail: bool = True,
               grad_bytes: float | None = None, fp8_scaling: str = "block",
               recompute: frozenset[str] = frozenset()) -> Pass:
    """Time of one MoE and one dense layer for ``n`` tokens per DP rank (forward, or backward).

    ``recompute`` (:func:`moesim.step.ops.recompute_units` of the workload) matters to a training backward only:
    the parts of the layer selective recomputation runs again, as forward operations (:func:`_layer_pass`).

    With ``detail=False`` (searches) ``n`` may be a numpy array of token counts: the
    times come back as arrays, without per-operation records, bounds or the p99 pass.

    A pass reads the model, the profile, the layout's TP / EP / ETP sizes and node size
    (:meth:`Parallel.layer_view`: nothing else of the layout), the scenario's routing and
    schedule, and the arguments. For plain-number sizes it is computed once per distinct
    set of those (the model and profile by their content digests) and shared by every
    estimate that needs it: layouts that differ only in DP, PP or ZeRO, repeated estimates
    of one scenario. The result is shared, so its dicts and lists are read-only.
    """
    lpar = par.layer_view()
    rt, sched = sc.routing, sc.schedule
    recompute = recompute if backward and training else frozenset()  # only a training backward runs anything again

    def run() -> Pass:
        return _layer_pass(rt, sched, model, hw, lpar, n=n, keys=keys, decode_batch=decode_batch, context=context,
                           decode_tokens=decode_tokens, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                           expert_weight_dtype=expert_weight_dtype, compute_dtype=compute_dtype,
                           expert_compute_dtype=expert_compute_dtype, backward=backward, training=training,
                           lm_tokens=lm_tokens, detail=detail, grad_bytes=grad_bytes, fp8_scaling=fp8_scaling,
                           recompute=recompute)

    key = _HashedKey((model.fingerprint, bridge._hw_key(hw), lpar, rt, sched, _value_key(n), _value_key(keys),
                      _value_key(decode_batch), _value_key(context), _value_key(decode_tokens), _value_key(lm_tokens),
                      weight_dtype, kv_dtype, expert_weight_dtype, compute_dtype, expert_compute_dtype, backward,
                      training, detail, grad_bytes if backward else None, fp8_scaling, recompute))
    hit = _PASSES.get(key)
    if hit is None:
        hit = run()
        if not detail:
            hit = _frozen(hit)
        _PASSES.put(key, hit)
    return hit


class _HashedKey:
    """A cache key hashed once: the pass cache looks a key up and then moves it to the end (two hashes of a
    tuple that holds the routing and schedule specs, whose pydantic hash walks every field)."""

    __slots__ = ("key", "hash")

    def __init__(self, key: tuple):
        self.key = key
        self.hash = hash(key)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HashedKey) and self.hash == other.hash and self.key == other.key


def _value_key(x):
    """A hashable stand-in for a size argument of :func:`layer_pass`: a plain number with its type (``2`` and
    ``2.0`` stay apart), a numpy array by dtype, shape and bytes."""
    if type(x) is np.ndarray:  # the searches' sizes (checked first: the most frequent argument there)
        return (x.dtype.str, x.shape, x.tobytes())
    if _plain(x):
        return (type(x), x)
    a = np.asarray(x)
    return (a.dtype.str, a.shape, a.tobytes())


def _frozen(p: Pass) -> Pass:
    """``p`` with its array fields read-only: a cached pass is shared by every later caller."""
    for x in (p.moe_s, p.moe_p99_s, p.dense_s, p.embedding_s, p.lm_head_s, p.a2a_s, p.a2a_p99_s):
        if isinstance(x, np.ndarray):
            x.flags.writeable = False
    return p


def _layer_pass(rt: RoutingSpec, sched: Schedule, model: ModelSpec, hw: HardwareProfile, par: Parallel, *, n,
                keys: float, decode_batch, context: float, decode_tokens, weight_dtype: str, kv_dtype: str,
                expert_weight_dtype: str | None, compute_dtype: str, expert_compute_dtype: str | None,
                backward: bool, training: bool, lm_tokens, detail: bool, grad_bytes: float | None,
                fp8_scaling: str = "block", recompute: frozenset[str] = frozenset()) -> Pass:
    """:func:`layer_pass` itself, from the routing and schedule alone of the scenario.

    A training backward under selective recomputation also runs, as forward operations, the parts of the layer
    in ``recompute`` (:func:`moesim.step.ops.recompute_units`), which the memory model does not keep
    (``moesim.step.memory.layer_activation_bytes``): by default every FFN activation of the layer and MLA's
    up-projections after their latent norms (:func:`moesim.step.ops.recomputed_ops`,
    :func:`moesim.step.ops.picks_for_recompute`), each at its own forward time and kernels, in the stage it
    belongs to.
    """
    vector = not detail and np.ndim(n) > 0  # token counts as a numpy array: time every op for all at once
    if vector:
        n = np.asarray(n, dtype=float)
    if backward and grad_bytes is None:
        raise ValueError("a backward pass needs grad_bytes (the main gradient's bytes per element)")
    timer = _Timer(hw, par, compute_dtype, fp8_block=fp8_scaling == "block")
    launch = sched.launch
    if launch == "auto":
        graph = bool(decode_batch > 0) if _plain(decode_batch) else bool(np.any(np.asarray(decode_batch) > 0))
    else:
        graph = launch == "graph"
    plan = sched.kernel_plan
    # vLLM's / SGLang's fused MoE at EP 1 gathers each copy's row inside the up GEMM (moesim.layer.moe_ffn_ops)
    gather = plan == "fused" and par.ep == 1 and (sched.gather_in_gemm == "on"
                                                  or (sched.gather_in_gemm == "auto" and not training))
    # Transformer Engine's grouped linear (Megatron-Core training) issues the experts' GEMMs one per local expert
    per_expert = sched.per_expert_gemms(training)
    wb = bytes_per_element(weight_dtype)
    ewb = bytes_per_element(expert_weight_dtype) if expert_weight_dtype else wb
    attn = attention_ops(model, par, n, keys, decode_batch=decode_batch, context=context,
                         decode_tokens=decode_tokens, weight_bytes=wb,
                         kv_bytes=bytes_per_element(kv_dtype))
    def lowp(ops: list[Op]) -> list[Op]:
        return low_precision_ops(ops, compute_dtype, training=training, element_bytes=bytes_per_element(compute_dtype),
                                 expert_dtype=expert_compute_dtype, fp8_scaling=fp8_scaling,
                                 dispatched_quantised=rt.dispatch_dtype == "fp8")

    units = recompute  # layer_pass passes none outside a training backward
    again = recomputed_ops(model, par, n, units, weight_bytes=wb) if units else []

    def pass_ops(ops: list[Op], dense_layer: bool = False) -> list[Op]:
        """``ops`` in the pass's precision, with what selective recomputation runs again in a backward."""
        if not units:
            return lowp(ops)
        redo = again + [op for op in ops if picks_for_recompute(op, units, dense_layer=dense_layer)]
        return lowp(ops) + [op.replaced(recomputed=True) for op in lowp(redo)]

    overlap_shared = sched.overlap_shared_experts
    comm_overlap = sched.overlap_comm_with_compute
    slowdown = sched.overlap_slowdown_frac
    timings: list[OpTiming] = []
    bound: dict[str, str] = {}

    def parts(op: Op) -> tuple[Op, ...]:
        """What ``op`` runs in this pass: itself, or its backward (a GEMM's dgrad and wgrad at their own shapes;
        the attention core states its own, 2.5); communication runs again as it is."""
        return backward_ops(op, grad_bytes) if backward and op.compute_kind != "comm" and not op.recomputed else (op,)

    def issued(ops: list[Op]):
        """Kernels the host issues for ``ops`` in this pass: a backward issues a GEMM's dgrad and wgrad, and a
        recomputed forward operation its own kernels once."""
        if not backward:
            return num_kernels(ops)
        redo = [op for op in ops if op.recomputed]
        return 2.0 * num_kernels([op for op in ops if not op.recomputed]) + num_kernels(redo)  # dgrad and wgrad

    def run_fast(kind: str, ops: list[Op]):
        dur: dict = {}
        for name, op in zip(_node_names(ops), ops):
            for part in parts(op):
                dur[name] = dur.get(name, 0.0) + (timer.time_only(part) if vector else timer.op(part)[0])
        if vector:
            total = critical_path_time(kind, dur, overlap_shared=overlap_shared, comm_overlap=comm_overlap,
                                       overlap_slowdown_frac=slowdown)
        else:
            total = critical_path_s(kind, dur, overlap_shared=overlap_shared, comm_overlap=comm_overlap,
                                    overlap_slowdown_frac=slowdown)[0]
        total = host_bound_s(hw, total, issued(ops), graph=graph)
        return total, {}, dur

    redo_s: dict[str, float] = {}

    def run(kind: str, ops: list[Op], record: bool = True) -> tuple[float, dict[str, float], dict[str, float]]:
        if not detail:
            return run_fast(kind, ops)
        names = _node_names(ops)
        dur: dict[str, float] = {}
        details = []
        for name, op in zip(names, ops):
            for part in parts(op):
                t, b = timer.op(part)
                dur[name] = dur.get(name, 0.0) + t
                details.append((name, part, t, b))
        total, path = critical_path_s(kind, dur, overlap_shared=overlap_shared, comm_overlap=comm_overlap,
                                      overlap_slowdown_frac=slowdown)
        device_total = total
        total = host_bound_s(hw, total, issued(ops), graph=graph)
        if total > device_total:
            bound["host_issue"] = "latency"
        by_stage: dict[str, float] = {}
        longest: dict[str, float] = {}
        for name, op, t, b in details:
            stage = _STAGE_OF_NODE.get(name, name)
            on = name in path
            by_stage[stage] = by_stage.get(stage, 0.0) + (t if on else 0.0)
            if t >= longest.get(stage, -1.0):  # a stage's bound is its longest operation's
                longest[stage] = t
                bound[stage] = b
            if op.recomputed and record:
                redo_s[kind] = redo_s.get(kind, 0.0) + t
            if record and not backward:
                timings.append(built(OpTiming,
                    kind=stage, layer=kind, time_s=t, flops=op.flops, bytes_moved=op.total_bytes,
                    comm_bytes=op.comm_bytes, group=op.group, bound=b, on_critical_path=on))
        return total, by_stage, dur

    load_summary = None
    moe_s = moe_p99_s = 0.0
    a2a = a2a_p99 = 0.0
    by_moe: dict[str, float] = {}
    if model.moe is not None and model.num_moe_layers:
        n_src = par.moe_tokens(n)
        bpc = dispatch_bytes_per_copy(model, rt.dispatch_dtype)
        if vector:
            mean_load = bridge.rank_load_array(rt, model, par, n_src)
        else:
            mean_load, p99_load, load_summary = bridge.rank_load(rt, model, par, n_src)
        d, c = bridge.a2a_times_s(rt, model, hw, par, n_src, bpc, mean_load)
        timer.a2a = {OpKind.DISPATCH: d, OpKind.COMBINE: c}
        a2a = a2a_p99 = d + c
        moe_ops_mean = pass_ops(attn + moe_ops(model, par, n, mean_load, bytes_per_copy=bpc, weight_bytes=wb,
                                               expert_weight_bytes=ewb, plan=plan, gather_in_gemm=gather,
                                               per_expert_gemms=per_expert))
        moe_s, by_moe, _ = run("moe", moe_ops_mean)
    if detail and model.moe is not None and model.num_moe_layers:
        d, c = bridge.a2a_times_s(rt, model, hw, par, n_src, bpc, p99_load)
        timer.a2a = {OpKind.DISPATCH: d, OpKind.COMBINE: c}
        a2a_p99 = d + c
        moe_ops_p99 = pass_ops(attn + moe_ops(model, par, n, p99_load, bytes_per_copy=bpc, weight_bytes=wb,
                                              expert_weight_bytes=ewb, plan=plan, gather_in_gemm=gather,
                                              per_expert_gemms=per_expert))
        moe_p99_s, _, _ = run("moe", moe_ops_p99, record=False)
    dense_s = 0.0
    by_dense: dict[str, float] = {}
    if model.num_dense_layers:
        dense_ops = pass_ops(attn + dense_ffn_ops(model, par, n, weight_bytes=wb, plan=plan), dense_layer=True)
        dense_s, by_dense, _ = run("dense", dense_ops)
    lm = lowp([lm_head_op(model, par, n if lm_tokens is None else lm_tokens, weight_bytes=wb)])[0]
    lm_parts = parts(lm)
    if not detail:
        if vector:
            emb_t, lm_t = timer.time_only(embedding_op(model, n)), sum(timer.time_only(x) for x in lm_parts)
        else:
            emb_t, lm_t = timer.op(embedding_op(model, n))[0], sum(timer.op(x)[0] for x in lm_parts)
        return Pass(moe_s, moe_s, dense_s, {}, {}, {}, [], load_summary, emb_t, lm_t, a2a, a2a)
    emb_t, _ = timer.op(embedding_op(model, n))
    lm_times = [timer.op(x) for x in lm_parts]
    lm_t = sum(t for t, _ in lm_times)
    lm_b = max(lm_times, key=lambda tb: tb[0])[1]
    bound["lm_head"] = lm_b
    if not backward:
        timings.append(built(OpTiming, kind="lm_head", layer="model", time_s=lm_t, flops=lm.flops, bytes_moved=lm.total_bytes,
                                comm_bytes=0.0, group="", bound=lm_b, on_critical_path=True))
    return Pass(moe_s, moe_p99_s, dense_s, by_moe, by_dense, bound, timings, load_summary, emb_t, lm_t, a2a, a2a_p99,
                redo_s.get("moe", 0.0), redo_s.get("dense", 0.0))


# ----------------------------------------------------------------------------- helpers


def _stage_layers(model: ModelSpec, par: Parallel, stages: list[list[int]] | None = None,
                  key: tuple[tuple[int, ...], ...] | None = None) -> list[tuple[int, int, bool, bool]]:
    """(moe layers, dense layers, first, last) per stage; MTP modules count as MoE layers of the last stage.
    ``key``: ``_stages_key(stages)`` when the caller has it."""
    stages = stages if stages is not None else par.layers_per_stage(model)
    return [(n_moe, n - n_moe, s == 0, s == len(stages) - 1)
            for s, (n_moe, n, _) in enumerate(_stage_shape(model, key if key is not None else _stages_key(stages)))]


def _stages_key(stages: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(layers) for layers in stages)


@by_model(4096)
def _stage_shape(model: ModelSpec, stages: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, int, bool], ...]:
    """Per stage: (MoE layers, layers, whether its last layer is an MoE layer)."""
    moe_idx = set(model.moe_layer_indices)
    return tuple((sum(1 for i in layers if i in moe_idx), len(layers), bool(layers) and layers[-1] in moe_idx)
                 for layers in stages)


@by_model(64)
def _moe_mask(model: ModelSpec) -> tuple[bool, ...]:
    """Whether each layer is an MoE layer."""
    moe_idx = set(model.moe_layer_indices)
    return tuple(i in moe_idx for i in range(model.num_layers))


@by_model(4096)
def _stage_param_list(model: ModelSpec, tp: int, ep: int, etp: int, one_stage: bool,
                      stages: tuple[tuple[int, ...], ...], red: int) -> tuple[StageParams, ...]:
    """Parameters one GPU of each stage holds (:func:`stage_params`), the MTP modules on the last stage."""
    par = Parallel(None, tp, 1 if one_stage else 2, None, ep, etp, None, None, None, None)  # type: ignore[arg-type]
    sp = [stage_params(model, par, list(layers), s == 0, s == len(stages) - 1, red) for s, layers in enumerate(stages)]
    mtp = model.mtp.num_modules
    if mtp:
        last = sp[-1]
        extra = stage_params(model, par, [model.moe_layer_indices[-1]] * mtp if model.moe else [0] * mtp, False, False,
                             red)
        sp[-1] = type(last)(dense=last.dense + extra.dense + 2 * model.hidden_size ** 2 * mtp / par.tp,
                            expert=last.expert + extra.expert)
    return tuple(sp)


def _stage_time(p: Pass, n_moe: int, n_dense: int, first: bool, last: bool, mtp: int, *, p99: bool = False) -> float:
    moe = p.moe_p99_s if p99 else p.moe_s
    t = (n_moe + (mtp if last else 0)) * moe + n_dense * p.dense_s
    if first:
        t += p.embedding_s
    if last:
        t += p.lm_head_s * (1 + mtp)
    return t


def _layer_counts(counts: list[tuple[int, int, bool, bool]], mtp: int) -> tuple[int, int]:
    """(MoE, dense) layers over every stage (:func:`_stage_layers`), the MTP modules counted as MoE layers."""
    return sum(c[0] for c in counts) + mtp, sum(c[1] for c in counts)


def _recompute_s(p: Pass, counts: list[tuple[int, int, bool, bool]], mtp: int) -> float:
    """Device seconds selective recomputation adds to one micro-batch's backward over every stage's layers."""
    n_moe, n_dense = _layer_counts(counts, mtp)
    return n_moe * p.recompute_moe_s + n_dense * p.recompute_dense_s


def _stage_a2a(p: Pass, n_moe: int, n_dense: int, first: bool, last: bool, mtp: int, *, p99: bool = False) -> float:
    """Seconds the EP all-to-all of one micro-batch keeps the links busy in a stage (the MTP modules on the last)."""
    return (n_moe + (mtp if last else 0)) * (p.a2a_p99_s if p99 else p.a2a_s)


def _by_stage_total(p: Pass, counts: list[tuple[int, int, bool, bool]], mtp: int) -> dict[str, float]:
    out: dict[str, float] = {}
    n_moe, n_dense = _layer_counts(counts, mtp)
    for k, v in p.by_stage_moe_s.items():
        out[k] = out.get(k, 0.0) + v * n_moe
    for k, v in p.by_stage_dense_s.items():
        out[k] = out.get(k, 0.0) + v * n_dense
    out["embedding"] = p.embedding_s
    out["lm_head"] = p.lm_head_s * (1 + mtp)
    return out


def price_usd_per_gpu_hour(sc: Scenario, hw: HardwareProfile) -> float | None:
    """The scenario's price per GPU-hour, else the profile's, else None."""
    if sc.price_usd_per_gpu_hour is not None:
        return sc.price_usd_per_gpu_hour
    return hw.price.usd_per_accelerator_hour if hw.price else None


def _cost(sc: Scenario, hw: HardwareProfile, tokens_per_s: float, run_tokens: float | None) -> CostResult:
    price = price_usd_per_gpu_hour(sc, hw)
    gpu_h_per_m = sc.num_gpus / 3600.0 / tokens_per_s * 1e6 if tokens_per_s > 0 else math.inf
    run_h = run_usd = run_days = None
    if run_tokens:
        run_s = run_tokens / tokens_per_s
        run_h = run_s * sc.num_gpus / 3600.0
        run_days = run_s / 86400.0
        run_usd = run_h * price if price else None
    return built(CostResult, usd_per_gpu_hour=price, gpu_hours_per_million_tokens=gpu_h_per_m,
                      usd_per_million_tokens=gpu_h_per_m * price if price else None,
                      run_tokens=run_tokens, run_gpu_hours=run_h, run_usd=run_usd, run_days=run_days)


def _memory_result(m: MemoryBreakdown) -> MemoryResult:
    # the result's own dict: ``m`` may be shared by later estimates (serve_memory)
    return built(MemoryResult, by_category_bytes=dict(m.by_category_bytes), total_bytes=m.total_bytes, capacity_bytes=m.capacity_bytes,
                        headroom_bytes=m.headroom_bytes, fits=m.fits, stage=m.stage)


def _layout_dict(sc: Scenario, par: Parallel) -> dict[str, int | bool]:
    return {"tp": par.tp, "pp": par.pp, "dp": par.dp, "ep": par.ep, "etp": par.etp, "edp": par.edp,
            "zero_stage": par.zero_stage, "sequence_parallel": par.sequence_parallel}


# ----------------------------------------------------------------------------- training


def _vec(x) -> bool:
    return isinstance(x, np.ndarray)


def _max_of(xs: list):
    """``max(xs)``, elementwise when they are arrays (one value per layout; all of a list are alike)."""
    if isinstance(xs[0], np.ndarray):
        out = xs[0]
        for x in xs[1:]:
            out = np.maximum(out, x)
        return out
    return max(xs)


def _max2(a, b):
    return np.maximum(a, b) if (_vec(a) or _vec(b)) else max(a, b)


def _min2(a, b):
    return np.minimum(a, b) if (_vec(a) or _vec(b)) else min(a, b)


def _where(cond, a, b):
    return np.where(cond, a, b) if _vec(cond) else (a if cond else b)


def _layout_views(par: Parallel):
    """For a vector :class:`Parallel` (see :func:`_per_layout`): one view per distinct (DP, EDP) of its layouts,
    and for each layout the index of its view; None for one layout."""
    if not _vec(par.dp):
        return None
    distinct: dict[tuple, int] = {}
    inverse = np.array([distinct.setdefault(k, len(distinct)) for k in zip(par.dp.tolist(), par.edp.tolist())])
    views = [Parallel(None, par.tp, par.pp, d, par.ep, par.etp, e, None,  # type: ignore[arg-type]
                      par.sequence_parallel, par.gpus_per_node) for d, e in distinct]
    return views, inverse


def _per_layout(par: Parallel, fn, arg=None, views=None):
    """``fn(par, arg)`` for one layout, or an array of ``fn`` over the layouts of a vector :class:`Parallel`
    (``num_gpus``, ``dp``, ``edp`` and ``zero_stage`` arrays, see :func:`train_curve`), ``arg`` a scalar or one
    value per layout. ``fn`` may read the data-parallel sizes and the fixed fields; each layout's view has no GPU
    count or ZeRO stage (``None``), so ``fn`` is evaluated once per distinct (DP, EDP, ``arg``). ``views``:
    :func:`_layout_views` of ``par``, for callers that evaluate several ``fn`` on one ``par``."""
    if not _vec(par.dp):
        return fn(par, arg)
    if not _vec(arg):
        qs, inverse = views if views is not None else _layout_views(par)
        return np.array([fn(q, arg) for q in qs], dtype=float)[inverse]
    memo: dict[tuple, float] = {}
    out = []
    for d, e, a in zip(par.dp.tolist(), par.edp.tolist(), arg.tolist()):
        v = memo.get((d, e, a))
        if v is None:
            v = memo[(d, e, a)] = fn(Parallel(None, par.tp, par.pp, d, par.ep, par.etp, e, None,  # type: ignore[arg-type]
                                              par.sequence_parallel, par.gpus_per_node), a)
        out.append(v)
    return np.array(out, dtype=float)


@dataclass(frozen=True)
class _TrainStep:
    """The figures of a training step shared by the estimate and the vectorised candidates (:func:`_train_step`)."""

    stages: list[list[int]]
    counts: list[tuple[int, int, bool, bool]]
    m: object  #: micro-batches per step per pipeline
    recompute: float
    pipe_mean_s: object
    pipe_p99_s: object
    exposed_grad_s: object  #: the once-per-step gradient reduction beyond the last backward
    exposed_gather_s: object  #: the once-per-step weight all-gather beyond the first forward (ZeRO-1, 2)
    microbatch_grad_s: object  #: ZeRO-2+: the per-micro-batch reduce-scatters' exposed share of the pipeline
    microbatch_gather_s: object  #: ZeRO-3: the per-micro-batch all-gathers' exposed share of the pipeline
    optimizer_s: object
    step_s: object
    step_p99_s: object
    tokens_per_s: object
    mfu_frac: object
    mfu_bf16_frac: object
    model_flops_per_token: float
    memory: dict[str, np.ndarray]  #: bytes by category and stage (:func:`train_memory_table`)


def _train_stages(sc: Scenario, model: ModelSpec, par: Parallel, fwd: Pass, bwd: Pass) -> list[list[int]]:
    """Layers of each pipeline stage: the contiguous split that balances the stages' forward + backward time
    (the first stage carries the embedding, the last the LM head and the MTP modules)."""
    mtp = model.mtp.num_modules
    recompute = _recompute(sc.workload)  # type: ignore[arg-type]
    moe_cost = _layer_cost(fwd.moe_s, bwd.moe_s, recompute)
    dense_cost = _layer_cost(fwd.dense_s, bwd.dense_s, recompute)
    per_layer = [moe_cost if is_moe else dense_cost for is_moe in _moe_mask(model)]
    split = par.balanced_stage_pairs if sc.schedule.pipeline == "dualpipe" else par.balanced_stages
    return split(per_layer, first_extra=fwd.embedding_s + bwd.embedding_s,
                 last_extra=(fwd.lm_head_s + bwd.lm_head_s) * (1 + mtp) + mtp * moe_cost)


def _layer_cost(forward_s, backward_s, recompute: float):
    """Seconds of one layer (or stage) per micro-batch in a training step: its forward (run again under full
    recomputation, ``recompute = 1``) and its backward."""
    return forward_s * (1 + recompute) + backward_s


def _recompute(w: TrainWorkload) -> float:
    """How many more times the whole forward runs in the backward: 1 under full recomputation, else 0 (what
    selective recomputation runs again is in the backward pass itself, :func:`_layer_pass`)."""
    return 1.0 if w.recompute == "full" else 0.0


def _train_step(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, fwd: Pass, bwd: Pass,
                p99: bool, *, stages: list[list[int]] | None = None, micro_batch_size=None) -> _TrainStep:
    """A training step from its forward and backward layer passes: stages, 1F1B pipeline, gradient reduction,
    optimizer, throughput, MFU and memory per stage (see the module docstring).

    ``par`` is one layout, or (:func:`train_curve`) several that share TP, PP, EP, ETP and the stage split
    with ``num_gpus``, ``dp``, ``edp`` and ``zero_stage`` as arrays: the same arithmetic then runs
    elementwise, one value per layout. Layouts of different micro-batch sizes share one call when their
    stage splits agree: ``micro_batch_size`` then holds one value per layout (the scenario's when None), the
    passes' times one value per layout, and ``stages`` the split (:func:`_train_stages` when None).
    """
    w: TrainWorkload = sc.workload  # type: ignore[assignment]
    mbs = w.micro_batch_size if micro_batch_size is None else micro_batch_size
    n = mbs * w.seq_len
    keys = (w.seq_len + 1) / 2
    dt = w.compute_dtype
    mtp = model.mtp.num_modules
    recompute = _recompute(w)
    if stages is None:
        stages = _train_stages(sc, model, par, fwd, bwd)
    skey = _stages_key(stages)
    counts = _stage_layers(model, par, stages, skey)
    m = w.global_batch_size // (par.dp * mbs)
    p2p_bytes = 2.0 * n * model.hidden_size / (par.tp if par.sequence_parallel else 1)
    p2p = _per_layout(par, lambda p, b: bridge.p2p_time_s(hw, p, b), p2p_bytes) if par.pp > 1 else 0.0

    # parameters of each stage: the data-parallel communication of ZeRO-2 / 3 runs per micro-batch with them
    sp = _stage_param_list(model, par.tp, par.ep, par.etp, par.pp == 1, skey,
                           sc.routing.redundant_experts)
    big = max(range(len(sp)), key=lambda i: sp[i].dense + sp[i].expert)
    grad_bytes = w.grad_bytes_per_element
    zero = par.zero_stage
    ovl_g, ovl_p = sc.schedule.overlap_grad_reduce, sc.schedule.overlap_param_gather
    per_microbatch = bool(np.any(zero >= 2)) if _vec(zero) else zero >= 2
    coll_memo: dict[tuple, object] = {}
    views = _layout_views(par)

    def dp_coll(idx: int, collective: str):
        """Seconds of ``collective`` over the data-parallel groups for stage ``idx``'s gradients (all_reduce,
        reduce_scatter) or bf16 weights (all_gather), one value per layout of a vector ``par``."""
        p = sp[idx]
        key = (p, collective)
        t = coll_memo.get(key)
        if t is None:
            b = TRAIN_WEIGHT_BYTES if collective == "all_gather" else grad_bytes
            t = coll_memo[key] = _per_layout(par, lambda q, _: bridge.dp_collective_s(hw, q, collective, p.dense * b,
                                                                                         p.expert * b), views=views)
        return t

    # the EP all-to-all and a data-parallel collective bound by the same links share them: an overlapped
    # collective hides only in the part of a pass that the all-to-all leaves the links free (docs/step-model.md
    # section 6); 1 where they share, per layout of a vector par
    link_shared = _per_layout(par, lambda q, _: float(bridge.shares_links_with_ep(q)), views=views)

    def free(idx: int, p: Pass, p99: bool = False):
        """Seconds of stage ``idx``'s pass ``p`` in which a data-parallel collective can hide: the pass, less the
        all-to-all's time on shared links (never below zero: a collective left no time adds in full, no more)."""
        c = counts[idx]
        return _max2(0.0, _stage_time(p, *c, mtp, p99=p99) - link_shared * _stage_a2a(p, *c, mtp, p99=p99))

    def microbatch_comm(idx: int, f, b) -> tuple:
        """(reduction, gather) seconds that one micro-batch of stage ``idx`` leaves exposed (forward ``f``,
        backward ``b``: the time a collective can hide in, see :func:`free`; recomputation included in neither):
        ZeRO-2 reduce-scatters its gradients during its backward; ZeRO-3 also all-gathers the weights before its
        forward and again before its backward."""
        rs = dp_coll(idx, "reduce_scatter")
        red2 = _max2(0.0, rs - b) if ovl_g else rs
        if not _vec(zero) and zero == 2:
            return red2, 0.0
        ag = dp_coll(idx, "all_gather")
        g_fwd = _max2(0.0, ag - f) if ovl_p else ag
        # the backward's gather and reduce-scatter share its time; what they leave exposed is split between the
        # overlapped ones in proportion, and a collective without overlap adds in full
        hid_ag, hid_rs = (ag if ovl_p else 0.0), (rs if ovl_g else 0.0)
        over = _max2(0.0, hid_ag + hid_rs - (recompute * f + b))
        tot = hid_ag + hid_rs
        share = _where(tot > 0, hid_ag / _where(tot > 0, tot, 1.0), 0.0)
        red3 = (0.0 if ovl_g else rs) + over * (1 - share)
        gat3 = g_fwd + (0.0 if ovl_p else ag) + over * share
        if not _vec(zero):
            return red3, gat3
        return np.where(zero >= 3, red3, np.where(zero == 2, red2, 0.0)), np.where(zero >= 3, gat3, 0.0)

    comm_memo: dict[tuple, tuple] = {}
    # stages of one shape and parameter count (most of them) take the same time: each stage's first such stage
    first_of: dict[tuple, int] = {}
    alike = [first_of.setdefault((c, sp[j]), j) for j, c in enumerate(counts)]

    def stage_comm(j: int, p99: bool = False) -> tuple:
        """:func:`microbatch_comm` of stage ``j`` (stages of one shape and parameter count share it)."""
        key = (p99, alike[j])
        hit = comm_memo.get(key)
        if hit is None:
            hit = comm_memo[key] = microbatch_comm(j, free(j, fwd, p99), free(j, bwd, p99))
        return hit

    def stage_times(p99: bool) -> list:
        seen: dict[int, object] = {}
        for j in first_of.values():
            c = counts[j]
            f = _stage_time(fwd, *c, mtp, p99=p99)
            b = _stage_time(bwd, *c, mtp, p99=p99)
            t = _layer_cost(f, b, recompute) + 2 * p2p
            if per_microbatch:
                red, gat = stage_comm(j, p99)
                t = t + red + gat
            seen[j] = t
        return [seen[j] for j in alike]

    schedule = sc.schedule.pipeline
    v = sc.layout.virtual_stages
    most_layers = max(len(layers) for layers in stages)
    chunk_frac = math.ceil(most_layers / v) / most_layers if v > 1 and most_layers else 1.0
    if schedule == "dualpipe":
        f_max = _max_of([_stage_time(fwd, *c, mtp) * (1 + recompute) for c in counts])

    def pipeline_s(t: list):
        """Time of the pipeline for stage times ``t`` per micro-batch (see docs/step-model.md, "Pipeline")."""
        if schedule == "dualpipe":
            # rank j holds stages j and pp-1-j; bubble (pp/2 - 1)(F&B + B - 3W) with B = W = half the backward and
            # F&B = F + B + W: (pp/2 - 1) F
            pair = [(t[j] + t[-1 - j]) / 2 for j in range(len(t))]
            return m * _max_of(pair) + (par.pp / 2 - 1) * f_max
        # 1F1B: fill and drain through the other stages, steady state at the slowest; interleaving with v
        # virtual stages sends chunks of ceil(L_s / v) of a stage's L_s layers through the fill and drain
        if v == 1:
            return sum(t) + (m - 1) * _max_of(t)
        return (sum(t) - _max_of(t)) * chunk_frac + m * _max_of(t)

    t_mean = stage_times(False)
    pipe_mean = pipeline_s(t_mean)
    if p99:
        pipe_p99 = pipeline_s(stage_times(True))
    else:
        pipe_p99 = pipe_mean

    # the once-per-step data-parallel communication of the stage with the most parameters: the gradients'
    # all-reduce (ZeRO-0) or reduce-scatter (ZeRO-1), hidden under the last backward; under ZeRO-1 and 2 the
    # all-gather of the updated weights after the optimizer, hidden under the next step's first forward
    def once(z: int) -> tuple:
        if z >= 3:
            return 0.0, 0.0
        red = 0.0
        if z <= 1:
            t = dp_coll(big, "all_reduce" if z == 0 else "reduce_scatter")
            red = _max2(0.0, t - free(big, bwd)) if ovl_g else t
        gat = 0.0
        if z >= 1:
            ag = dp_coll(big, "all_gather")
            gat = _max2(0.0, ag - free(big, fwd)) if ovl_p else ag
        return red, gat

    if _vec(zero):
        parts = {z: once(z) for z in sorted(set(zero.tolist()))}
        exposed_grad = sum(np.where(zero == z, r, 0.0) for z, (r, _) in parts.items())
        exposed_gather = sum(np.where(zero == z, g, 0.0) for z, (_, g) in parts.items())
    else:
        exposed_grad, exposed_gather = once(zero)
    if per_microbatch:  # the per-micro-batch share, as the other stages of the step: over the stages, m micro-batches
        per_stage = [stage_comm(j) for j in range(len(counts))]
        microbatch_red = sum(r for r, _ in per_stage) * m / par.pp
        microbatch_gat = sum(g for _, g in per_stage) * m / par.pp
    else:
        microbatch_red = microbatch_gat = 0.0
    shard_d = _where(par.zero_stage >= 1, par.dp, 1)
    shard_e = _where(par.zero_stage >= 1, par.edp, 1)
    local = sp[big].dense / shard_d + sp[big].expert / shard_e
    # read and write the fp32 master, m and v (24 bytes; bf16 m, v and weight without masters: 12), read the
    # gradient, write the bf16 weight
    opt_bytes = local * ((26.0 if w.master_weights_fp32 else 12.0) + grad_bytes)
    # Adam: one memory-bound pass over the local shard
    t_opt = op_time_s(hw, Op(OpKind.OPTIMIZER, "optimizer", flops=0.0, bytes_moved=opt_bytes,
                             compute_kind="elementwise", num_kernels=4), "bf16")
    step = pipe_mean + exposed_grad + exposed_gather + t_opt
    step_p99 = pipe_p99 + exposed_grad + exposed_gather + t_opt

    tokens = w.global_batch_size * w.seq_len
    tps = tokens / step
    ff = forward_flops_per_token(model, keys)
    model_flops = 3.0 * ff.total_flops
    mfu = tps * model_flops / (par.num_gpus * hw.accelerator.peak_for(dt))
    mfu_bf16 = tps * model_flops / (par.num_gpus * hw.accelerator.peak_for("bf16"))
    if not model.num_moe_layers:
        copies = 0.0
    elif _vec(n):
        by_n = {x: bridge.max_rank_copies(sc.routing, model, par, par.moe_tokens(x)) for x in set(n.tolist())}
        copies = np.array([by_n[x] for x in n.tolist()])
    else:
        copies = bridge.max_rank_copies(sc.routing, model, par, par.moe_tokens(n))
    mem = train_memory_table(sc, model, hw, par, copies, n, m, sp, stages, skey)
    return _TrainStep(stages, counts, m, recompute, pipe_mean, pipe_p99, exposed_grad, exposed_gather, microbatch_red,
                      microbatch_gat, t_opt, step, step_p99, tps, mfu, mfu_bf16, model_flops, mem)


def _train_passes(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, detail: bool,
                  n=None) -> tuple[Pass, Pass]:
    """The forward and the backward layer pass of a training scenario's micro-batch (``n`` tokens per DP rank:
    the scenario's micro-batch when None, or an array of them for :func:`train_curve`)."""
    w: TrainWorkload = sc.workload  # type: ignore[assignment]
    kw = dict(n=w.micro_batch_size * w.seq_len if n is None else n, keys=(w.seq_len + 1) / 2, weight_dtype="bf16",
              kv_dtype="bf16", compute_dtype=w.compute_dtype, training=True, detail=detail, fp8_scaling=w.fp8_scaling)
    fwd = layer_pass(sc, model, hw, par, **kw)
    bwd = layer_pass(sc, model, hw, par, backward=True, grad_bytes=w.grad_bytes_per_element,
                     recompute=recompute_units(w.recompute, w.recompute_modules), **kw)
    return fwd, bwd


def moe_layer_cost_s(sc: Scenario) -> float:
    """Seconds of one MoE layer per micro-batch in a training step (expected straggler): its forward pass
    (twice under full recomputation) and its backward, dgrad and wgrad, with the all-to-all and the overlap as
    the step composes them. The per-layer cost the pipeline stages are built from: what a kernel trace of one
    layer's forward and backward measures, without embedding, LM head, pipeline or data-parallel traffic."""
    if not isinstance(sc.workload, TrainWorkload):
        raise InputError("the MoE layer's forward + backward time needs a training scenario "
                         f"(workload.kind = 'train'); {sc.name!r} is a serving scenario", field="workload.kind")
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    if not model.num_moe_layers:
        raise InputError(f"model {model.name!r} has no MoE layers", field="model")
    check_layout(sc, model, hw)
    fwd, bwd = _train_passes(sc, model, hw, Parallel.of(sc, hw.node.accelerators_per_node), detail=True)
    return float(_layer_cost(fwd.moe_s, bwd.moe_s, _recompute(sc.workload)))


def _train(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, detail: bool = True) -> Estimate:
    w: TrainWorkload = sc.workload  # type: ignore[assignment]
    fwd, bwd = _train_passes(sc, model, hw, par, detail)
    st = _train_step(sc, model, hw, par, fwd, bwd, p99=detail)
    mem = _largest(st.memory, hw.accelerator.memory_bytes)
    tps, step = st.tokens_per_s, st.step_s
    mtp, m = model.mtp.num_modules, st.m
    counts = st.counts

    # time by stage over the step: per-layer critical-path shares x layers x micro-batches (steady state)
    by_stage = {}
    for p, mult in ((fwd, 1 + st.recompute), (bwd, 1.0)):
        for k, v in _by_stage_total(p, counts, mtp).items():
            by_stage[k] = by_stage.get(k, 0.0) + v * mult * m / par.pp
    in_pipe = st.microbatch_grad_s + st.microbatch_gather_s
    by_stage["pipeline_bubble"] = st.pipe_mean_s - sum(by_stage.values()) - in_pipe if par.pp > 1 else 0.0
    by_stage["grad_sync_exposed"] = st.exposed_grad_s + st.microbatch_grad_s
    by_stage["param_gather_exposed"] = st.exposed_gather_s + st.microbatch_gather_s
    by_stage["optimizer"] = st.optimizer_s
    bound = dict(fwd.bound) | {"grad_sync_exposed": "communication", "param_gather_exposed": "communication",
                               "optimizer": "memory", "pipeline_bubble": "latency"}

    if not detail:  # searches: the figures only, no validation of the result
        return built(Estimate,
            scenario=sc.name, model=model.name, hardware=hw.name, num_gpus=sc.num_gpus, workload="train",
            phase="train", layout=_layout_dict(sc, par), fits=mem.fits, memory_per_gpu_bytes=mem.total_bytes,
            memory=None, tokens_per_s=tps, tokens_per_s_per_gpu=tps / sc.num_gpus, mfu_frac=st.mfu_frac,
            mfu_bf16_frac=st.mfu_bf16_frac, model_flops_per_token=st.model_flops_per_token, step_s=step,
            step_p99_s=None, ttft_s=None, tpot_s=None, max_batch_size=None, time_by_stage_s={}, bound_by_stage={},
            ops=[], load=None, cost=_cost(sc, hw, tps, w.total_tokens), notes=[])
    notes = _layout_notes(par) + _dtype_notes(hw, w.compute_dtype, fp8_scaling=w.fp8_scaling)
    if par.pp > 1:
        v = sc.layout.virtual_stages
        kind = ("DualPipe" if sc.schedule.pipeline == "dualpipe"
                else f"interleaved 1F1B ({v} virtual stages per GPU)" if v > 1 else "1F1B")
        notes.append(f"{kind} pipeline: {m} micro-batches over {par.pp} stages, bubble "
                     f"{by_stage['pipeline_bubble']:.3g} s")
    redo = _recompute_s(bwd, counts, mtp) * m / par.pp
    if redo > 0:
        mods = w.recompute_modules
        if mods is not None:
            what = f"{', '.join(mods)} (workload.recompute_modules)"
        else:
            parts = "MLA's up-projections and every FFN activation" if isinstance(model.attention, MLAAttention) \
                else "every FFN activation"
            what = f"{parts} (the default; workload.recompute_modules names others)"
        notes.append(f"selective recomputation runs {what} again in the backward: {redo:.3g} s of device time per "
                     f"step per GPU")
    sched = sc.schedule
    local = fwd.load.local_experts if fwd.load is not None else 0
    if sched.per_expert_gemms(training=True) and local > 1:
        quant = ", each expert's input quantised on its own" if w.compute_dtype != "bf16" else ""
        notes.append(f"the routed experts' GEMMs run one per local expert ({local:g} per GPU, on "
                     f"{TE_COMPUTE_STREAMS} streams{quant}): "
                     f"Transformer Engine's grouped linear, Megatron-Core's default (schedule.grouped_gemm = "
                     f"'grouped' for one grouped kernel per call)")
    if (sched.overlap_grad_reduce or sched.overlap_param_gather) and fwd.a2a_s > 0 and bridge.shares_links_with_ep(par):
        busy = (fwd.a2a_s + bwd.a2a_s) / (fwd.moe_s + bwd.moe_s)
        links = "cross the NICs" if bridge.leaves_node(par, "ep") else "stay on the node's NVLink"
        notes.append(f"the EP all-to-all and the data-parallel collectives both {links}: overlapped reductions and "
                     f"gathers hide only where the all-to-all leaves them free (the all-to-all keeps them busy "
                     f"{busy:.0%} of an MoE layer's forward and backward)")
    return built(Estimate,  # every field built here with its type: no validation on the hot path
        scenario=sc.name, model=model.name, hardware=hw.name, num_gpus=sc.num_gpus, workload="train", phase="train",
        layout=_layout_dict(sc, par), fits=mem.fits, memory_per_gpu_bytes=mem.total_bytes, memory=_memory_result(mem),
        tokens_per_s=tps, tokens_per_s_per_gpu=tps / sc.num_gpus, mfu_frac=st.mfu_frac, mfu_bf16_frac=st.mfu_bf16_frac,
        model_flops_per_token=st.model_flops_per_token, step_s=step, step_p99_s=st.step_p99_s,
        time_by_stage_s=by_stage, bound_by_stage=bound, ops=list(fwd.timings), load=fwd.load,
        cost=_cost(sc, hw, tps, w.total_tokens), notes=notes,
    )


def _in_flight_microbatches(sc: Scenario, pp: int, stage, m):
    """Micro-batches whose activations stage ``stage`` holds at its peak (in units of one micro-batch through the
    whole stage): 1F1B ``min(pp - s, m)``; interleaved with ``v`` virtual stages Megatron's warm-up of
    ``2 (pp - s - 1) + (v - 1) pp + 1`` chunks of ``1 / v`` of the stage, at most ``m v``; DualPipe ``pp + 1``
    (DeepSeek-V3 report, Table 2), at most ``m``."""
    v = sc.layout.virtual_stages
    if sc.schedule.pipeline == "dualpipe":
        return np.minimum(np.full(np.shape(stage), pp + 1.0), m)
    if v > 1:
        return np.minimum(2.0 * (pp - stage - 1) + (v - 1) * pp + 1, m * v) / v
    return np.minimum(pp - stage, m)


#: Per-GPU workspace of a training job when the scenario sets none: CUDA context (~0.5 GB), cuBLAS / NCCL
#: workspaces and the caching allocator's fragmentation, as a fixed allowance.
TRAIN_WORKSPACE_BYTES = 2.5e9


def workspace_bytes(sc: Scenario, hw: HardwareProfile) -> float:
    """The scenario's workspace per GPU: its ``workspace_bytes``, else :data:`TRAIN_WORKSPACE_BYTES` for
    training and ``(1 - memory_utilization_frac) x device memory`` for serving (the share an engine such as
    vLLM leaves unused: ``gpu_memory_utilization`` 0.9)."""
    if sc.workspace_bytes is not None:
        return float(sc.workspace_bytes)
    w = sc.workload
    if isinstance(w, ServeWorkload):
        return (1.0 - w.memory_utilization_frac) * hw.accelerator.memory_bytes
    return TRAIN_WORKSPACE_BYTES


def _largest(table: dict[str, np.ndarray], capacity_bytes: float) -> MemoryBreakdown:
    """The stage that needs the most memory (the first of equals) of a one-layout table (:func:`train_memory_table`)."""
    total = sum(table.values())
    s = int(np.argmax(total))
    return MemoryBreakdown({k: float(v[s]) for k, v in table.items()}, capacity_bytes, stage=s)


def train_memory(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, copies: float,
                 n: float, m: int, sp, stages: list[list[int]]) -> MemoryBreakdown:
    """Memory per GPU of the largest stage; ``copies`` token copies on the most loaded EP rank (padded slots
    with a capacity factor)."""
    return _largest(train_memory_table(sc, model, hw, par, copies, n, m, sp, stages), hw.accelerator.memory_bytes)


def train_memory_table(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, copies: float,
                       n: float, m, sp, stages: list[list[int]],
                       stages_key: tuple[tuple[int, ...], ...] | None = None) -> dict[str, np.ndarray]:
    """Bytes per GPU by category and stage: arrays ``[stages]`` for one layout, ``[stages, layouts]`` when
    ``par`` and ``m`` hold one value per layout (:func:`train_curve`). Every stage's figures are the same
    elementwise arithmetic (see the module docstring of :mod:`moesim.step.memory`). ``stages_key``:
    ``_stages_key(stages)`` when the caller has it.

    For one layout the table is computed once per distinct set of what it reads (the key below: the model and
    profile by their content digests; ``sp`` follows from the model, the layout, the split and the redundant
    experts) and shared: its arrays are read-only."""
    skey = stages_key if stages_key is not None else _stages_key(stages)
    if _vec(par.dp) or _vec(n) or _vec(copies) or _vec(m):
        return _train_memory_table(sc, model, hw, par, copies, n, m, sp, stages, skey)
    w: TrainWorkload = sc.workload  # type: ignore[assignment]
    key = _HashedKey((model.fingerprint, bridge._hw_key(hw), par, copies, n, m, skey, w.compute_dtype, w.recompute,
                      recompute_units(w.recompute, w.recompute_modules), w.master_weights_fp32,
                      w.grad_bytes_per_element, sc.schedule.pipeline, sc.layout.virtual_stages,
                      sc.routing.dispatch_dtype, sc.routing.redundant_experts, workspace_bytes(sc, hw)))
    hit = _MEMORY_TABLES.get(key)
    if hit is None:
        hit = _train_memory_table(sc, model, hw, par, copies, n, m, sp, stages, skey)
        for v in hit.values():
            v.flags.writeable = False
        _MEMORY_TABLES.put(key, hit)
    return hit


_MEMORY_TABLES = _PassCache(1024)


def _train_memory_table(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, copies, n, m, sp,
                        stages: list[list[int]], stages_key: tuple[tuple[int, ...], ...]) -> dict[str, np.ndarray]:
    """:func:`train_memory_table` itself."""
    w: TrainWorkload = sc.workload  # type: ignore[assignment]
    ab = 1.0 if w.compute_dtype == "fp8" else 2.0
    units = recompute_units(w.recompute, w.recompute_modules)
    act_moe = (layer_activation_bytes(model, par, n, w.recompute, copies, True, ab, units)
               if model.moe_layer_indices else 0.0)
    act_dense = layer_activation_bytes(model, par, n, w.recompute, copies, False, ab, units)
    num = len(stages)
    per_microbatch_bytes = []
    for n_moe, n_layers, last_is_moe in _stage_shape(model, stages_key):
        acts_per_microbatch_bytes = n_moe * act_moe + (n_layers - n_moe) * act_dense
        if w.recompute == "full" and n_layers:
            acts_per_microbatch_bytes += layer_activation_bytes(model, par, n, "selective", copies, last_is_moe, ab)
        per_microbatch_bytes.append(acts_per_microbatch_bytes)
    if _vec(par.dp):  # stages down, layouts across
        col = (slice(None), None)
        par = replace(par, dp=par.dp[None, :], edp=par.edp[None, :], zero_stage=par.zero_stage[None, :])
        m = m[None, :]
    else:
        col = (slice(None),)
    per_layout_n = _vec(n)  # micro-batch sizes differ between the layouts: activations are [stages, layouts] already
    dense = np.array([p.dense for p in sp], dtype=float)[col]
    expert = np.array([p.expert for p in sp], dtype=float)[col]
    state = param_state_bytes(StageParams(dense=dense, expert=expert), par, master_weights_fp32=w.master_weights_fp32,
                              grad_bytes=w.grad_bytes_per_element)
    if sc.schedule.pipeline == "dualpipe":  # each GPU holds stages j and pp-1-j: two copies of weights and gradients
        paired = StageParams(dense=dense + dense[::-1], expert=expert + expert[::-1])
        both = param_state_bytes(paired, par, master_weights_fp32=w.master_weights_fp32,
                                 grad_bytes=w.grad_bytes_per_element)
        state = {"weights": both["weights"], "gradients": both["gradients"], "optimizer": state["optimizer"]}
    in_flight = _in_flight_microbatches(sc, par.pp, np.arange(num)[col], m)
    per_microbatch = np.array(per_microbatch_bytes, dtype=float)
    acts = (per_microbatch if per_layout_n else per_microbatch[col]) * in_flight
    logits = np.zeros((num,) + np.shape(n))
    logits[-1] = 4.0 * n * model.vocab_size / par.tp  # fp32 logits, last stage
    acts = acts + (logits if per_layout_n else logits[col])
    buffers = 0.0
    if model.moe is not None:
        bpc = dispatch_bytes_per_copy(model, sc.routing.dispatch_dtype)
        buffers = copies * (bpc + 2.0 * model.hidden_size)
    shape = np.shape(acts)
    return {"weights": state["weights"], "gradients": state["gradients"], "optimizer": state["optimizer"],
            "activations": acts, "dispatch_buffers": np.full(shape, buffers),
            "workspace": np.full(shape, workspace_bytes(sc, hw))}


# ----------------------------------------------------------------------------- serving


def serve_weight_dtypes(model: ModelSpec, w: ServeWorkload) -> tuple[str, str | None]:
    """(dtype of the weights, dtype of the routed experts when different): the published checkpoint's
    (gpt-oss keeps its experts in MXFP4) unless the workload names one dtype for all weights, or names the
    experts' own (``expert_weight_dtype``)."""
    if w.expert_weight_dtype is not None:
        return w.weight_dtype or model.weight_dtype, w.expert_weight_dtype
    if w.weight_dtype is not None:
        return w.weight_dtype, None
    return model.weight_dtype, model.expert_weight_dtype


#: serving's fp8_scaling in the terms of moesim.layer.low_precision_ops: a static per-tensor scale is cast in one
#: kernel, as training's delayed scaling; a dynamic one takes an amax pass first, as current scaling
_SERVE_FP8_SCALING = {"block": "block", "static": "delayed", "dynamic": "current"}


def serve_pass_dtypes(model: ModelSpec, w: ServeWorkload) -> dict[str, str | None]:
    """The dtype arguments of :func:`layer_pass` for a serving workload (weights, experts, KV cache, GEMMs)."""
    wdt, edt = serve_weight_dtypes(model, w)
    return dict(weight_dtype=wdt, expert_weight_dtype=edt, kv_dtype=w.kv_dtype, compute_dtype=w.compute_dtype,
                expert_compute_dtype=w.expert_compute_dtype, fp8_scaling=_SERVE_FP8_SCALING[w.fp8_scaling])


def prefill_batch(w: ServeWorkload, b):
    """Sequences prefilled together: the workload's setting, else the batch for prefill-only deployments, else 1."""
    if w.prefill_batch_size is not None:
        return w.prefill_batch_size
    return b if w.phase == "prefill" else 1


@dataclass(frozen=True)
class _ServeTimes:
    prefill: Pass | None
    decode: Pass | None
    ttft_s: object
    tpot_s: object
    tpot_p99_s: object
    tokens_per_s: object
    flops_per_token: float
    counts: list[tuple[int, int, bool, bool]]
    sampled: object  #: tokens the decode iteration's LM head samples (None without decode)


def _serve_times(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, b, detail: bool) -> _ServeTimes:
    """Prefill and decode times for ``b`` sequences per replica (a number, or an array when ``detail`` is off)."""
    w: ServeWorkload = sc.workload  # type: ignore[assignment]
    counts = _stage_layers(model, par)
    n_moe = sum(c[0] for c in counts)
    n_dense = sum(c[1] for c in counts)
    h = model.hidden_size

    def total(p: Pass, p99: bool = False):
        moe = p.moe_p99_s if p99 else p.moe_s
        return n_moe * moe + n_dense * p.dense_s + p.embedding_s + p.lm_head_s

    def p2p(nbytes):
        return (par.pp - 1) * bridge.p2p_time_s(hw, par, nbytes) if par.pp > 1 else 0.0

    dtypes = serve_pass_dtypes(model, w)
    ttft = tpot = tpot_p99 = sampled = None
    prefill = decode = None
    if w.phase in ("both", "prefill"):
        pb = prefill_batch(w, b)
        # a cached prefix is not computed; the computed tokens attend to it (ServeWorkload.prefill_keys_per_token)
        prefill = layer_pass(sc, model, hw, par, n=pb * w.computed_prompt_tokens, keys=w.prefill_keys_per_token,
                             lm_tokens=pb, detail=detail, **dtypes)
        ttft = engine_iteration_s(total(prefill) + p2p(2.0 * pb * w.computed_prompt_tokens * h), pb, sc.serving)
    ctx = w.prompt_tokens + w.output_tokens / 2
    it = _Iteration.of(sc, w)
    if w.phase in ("both", "decode"):
        # with pipeline stages, the batch decodes as pp micro-batches in flight, one per stage
        mb = b / par.pp
        n_dec = mb * it.verified
        chunk = mb * it.chunk_tokens_per_sequence  # prompt tokens of arriving requests riding along (chunked prefill)
        n_it = n_dec + chunk
        keys = (n_dec * ctx + chunk * w.prefill_keys_per_token) / n_it if it.chunk_tokens_per_sequence else ctx
        sampled = n_dec + chunk / w.computed_prompt_tokens  # the LM head's tokens: decode and completing prompts
        decode = layer_pass(sc, model, hw, par, n=n_it, keys=keys, decode_batch=mb, context=ctx, decode_tokens=n_dec,
                            lm_tokens=sampled, detail=detail, **dtypes)
        draft = 0.0
        if it.drafted:  # the MTP module (one MoE layer and the shared head) runs once per drafted token
            dp_ = layer_pass(sc, model, hw, par, n=mb, keys=ctx, decode_batch=mb, context=ctx, detail=False, **dtypes)
            draft = it.drafted * (dp_.moe_s + dp_.lm_head_s)
        p2p_s = p2p(2.0 * n_it * h)
        stall = 0.0
        if it.whole_prefill_share and ttft is not None:  # prompts prefilled whole between decode iterations
            stall = slowest_of_coupled(it.whole_prefill_share * b / prefill_batch(w, b), par.coupled_replicas) * ttft
        step = engine_iteration_s(total(decode) + draft + p2p_s, sampled, sc.serving) + stall
        step_p99 = engine_iteration_s(total(decode, p99=True) + draft + p2p_s, sampled, sc.serving) + stall
        tpot, tpot_p99 = step / it.tokens_per_iteration, step_p99 / it.tokens_per_iteration
    if w.phase == "prefill":
        tps = par.dp * b * w.prompt_tokens / ttft  # type: ignore[operator]  # served prompt tokens, cache hits too
        # FLOPs per served prompt token: the computed share of the prompt at its keys per token
        flops_tok = forward_flops_per_token(model, w.prefill_keys_per_token).total_flops
        if w.cached_prompt_tokens:
            flops_tok *= w.computed_prompt_tokens / w.prompt_tokens
    else:
        tps = par.dp * b / tpot  # type: ignore[operator]
        flops_tok = forward_flops_per_token(model, ctx).total_flops
    return _ServeTimes(prefill, decode, ttft, tpot, tpot_p99, tps, flops_tok, counts, sampled)


def engine_iteration_s(device_s, sampled, serving: ServingSpec):
    """Seconds of one engine iteration whose forward pass takes ``device_s`` and whose LM head samples
    ``sampled`` tokens (numbers or arrays): the host step ``h = serving.host_step_s + serving.host_step_per_token_s
    x sampled`` (scheduling, input preparation, sampling and output processing) hides under the device time when
    the engine overlaps the two (``max(device_s, h)``) and adds to it when it does not (``device_s + h``)."""
    if not serving.host_step_modelled:
        return device_s
    h = serving.host_step_time_s(sampled)
    out = np.maximum(device_s, h) if serving.overlap_host_step else device_s + h
    return float(out) if np.ndim(out) == 0 else out


def slowest_of_coupled(events, replicas: int):
    """Expected prefills per iteration of the replica that prefills most, among ``replicas`` replicas coupled by
    the expert all-to-all, each with ``events`` prefills per iteration on average (scalar or array).

    At steady state with fixed lengths, sequences finish at a fixed rate: a replica prefills ``floor(events)`` or
    ``ceil(events)`` times per iteration, the latter with probability ``frac(events)``, independently of the
    others (their phases are unrelated). The slowest replica then prefills ``floor + 1 - (1 - frac)^c`` times;
    with ``c = 1`` that is ``events`` itself.
    """
    if replicas <= 1:
        return events
    whole = np.floor(events)
    frac = events - whole
    out = whole + np.where(frac > 0, 1.0 - (1.0 - frac) ** replicas, 0.0)
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class _Iteration:
    """What one decode iteration of a saturated replica carries (see docs/step-model.md, "Serving iterations").

    * ``verified``: tokens per sequence the target model runs, ``1 + d`` with ``d`` MTP drafts;
    * ``tokens_per_iteration``: tokens each sequence gains, ``sum_{i=0..d} a^i`` for acceptance rate ``a``
      (a draft counts only when every draft before it was accepted);
    * at steady state every sequence is replaced after its ``O`` output tokens, so ``b E / O`` requests arrive
      per iteration. With chunked prefill (vLLM and SGLang's default) their prompts ride along in the decode
      iterations: ``chunk_tokens_per_sequence = (P - c) E / O`` prompt tokens per running sequence (``c`` of the
      ``P`` cached, :attr:`ServeWorkload.cached_prompt_tokens`). Without it each
      prompt is prefilled whole while decode waits: ``whole_prefill_share = E / O`` prefills per sequence per
      iteration, each batch of ``pb`` prompts taking one TTFT.
    """

    verified: int
    drafted: int
    tokens_per_iteration: float
    chunk_tokens_per_sequence: float
    whole_prefill_share: float

    @classmethod
    def of(cls, sc: Scenario, w: ServeWorkload) -> "_Iteration":
        d = w.mtp_draft_tokens
        a = w.mtp_acceptance_rate or 0.0
        e = sum(a ** i for i in range(d + 1))
        chunk = whole = 0.0
        if w.phase == "both":
            if sc.serving.chunked_prefill:
                chunk = w.computed_prompt_tokens * e / w.output_tokens
            else:
                whole = e / w.output_tokens
        return cls(1 + d, d, e, chunk, whole)


def _serve(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel) -> Estimate:
    w: ServeWorkload = sc.workload  # type: ignore[assignment]
    b = w.batch_size
    st = _serve_times(sc, model, hw, par, b, detail=True)
    main = st.decode if st.decode is not None else st.prefill
    assert main is not None
    mem, max_batch = serve_memory(sc, model, hw, par)
    ctx = w.prompt_tokens + w.output_tokens / 2
    return built(Estimate,  # every field built here with its type: no validation on the hot path
        **_serve_headline(sc, model, hw, par, st.tokens_per_s, st.flops_per_token, st.ttft_s, st.tpot_s,
                          mem.total_bytes, mem.fits),
        memory=_memory_result(mem), tpot_p99_s=st.tpot_p99_s, max_batch_size=max_batch,
        time_by_stage_s=_by_stage_total(main, st.counts, 0), bound_by_stage=dict(main.bound), ops=list(main.timings),
        load=main.load, notes=_serve_notes(sc, w, par, hw, b, ctx, st.sampled),
    )


def _serve_headline(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, tps: float, flops_tok: float,
                    ttft_s, tpot_s, memory_bytes: float, fits: bool) -> dict:
    """The fields of a serving estimate that :func:`serve_figures` gives too (one place for both)."""
    w: ServeWorkload = sc.workload  # type: ignore[assignment]
    mfu = _mfu_frac(sc, hw, tps, flops_tok, w.compute_dtype)
    mfu_bf16 = _mfu_frac(sc, hw, tps, flops_tok, "bf16")
    return dict(
        scenario=sc.name, model=model.name, hardware=hw.name, num_gpus=sc.num_gpus, workload="serve", phase=w.phase,
        layout=_layout_dict(sc, par), fits=fits, memory_per_gpu_bytes=memory_bytes,
        tokens_per_s=tps, tokens_per_s_per_gpu=tps / sc.num_gpus, mfu_frac=mfu, mfu_bf16_frac=mfu_bf16,
        model_flops_per_token=flops_tok, ttft_s=ttft_s, tpot_s=tpot_s, cost=_cost(sc, hw, tps, None))


def serve_figures(sc: Scenario, model: ModelSpec, hw: HardwareProfile, batches) -> list[Estimate]:
    """The headline figures of a serving estimate for several batch sizes per replica at once (a sweep over
    ``workload.batch_size``): entry ``i`` holds what :func:`estimate_resolved` gives for ``sc`` at
    ``batch_size = batches[i]`` in the fields :func:`moesim.plan.records.record` reads. The passes are timed
    as arrays over the batches, operation by operation with the scalar estimate's formulas, so the values agree
    to the last bits of rounding (the expert all-to-all of several token counts is routed once and scaled,
    :func:`moesim.step.bridge.a2a_times_s`; curves are interpolated by numpy). The per-operation detail is
    left empty: ``memory``, ``ops``, ``load``, the time by stage and its bounds, ``tpot_p99_s``,
    ``max_batch_size`` and the notes.
    """
    par, b, st, mem = _serve_batches(sc, model, hw, batches)
    cap = hw.accelerator.memory_bytes

    def at(x, i):
        return None if x is None else float(np.broadcast_to(x, b.shape)[i])

    out = []
    for i in range(b.size):
        m = at(mem, i)
        out.append(built(Estimate, **_serve_headline(
            sc, model, hw, par, at(st.tokens_per_s, i), st.flops_per_token, at(st.ttft_s, i), at(st.tpot_s, i),
            m, m <= cap), memory=None, time_by_stage_s={}, bound_by_stage={}, ops=[], load=None))
    return out


def _serve_notes(sc: Scenario, w: ServeWorkload, par: Parallel, hw: HardwareProfile, b: int, ctx: float,
                 sampled: float | None) -> list[str]:
    notes = []
    if w.cached_prompt_tokens:
        notes.append(f"prefix cache: {w.cached_prompt_tokens:,} of {w.prompt_tokens:,} prompt tokens per request are "
                     f"cached; a prefill computes {w.computed_prompt_tokens:,}, each attending "
                     f"{w.prefill_keys_per_token:,.6g} keys on average (the prefix's KV cache is counted in memory)")
    if w.phase != "prefill":
        notes.append(f"{par.dp} replica(s) x batch {b}; decode at mean context {ctx:g} tokens; TTFT prefills "
                     f"{prefill_batch(w, b)} prompt(s) at once")
        it = _Iteration.of(sc, w)
        if it.chunk_tokens_per_sequence:
            notes.append(f"steady state: each decode iteration also carries {b * it.chunk_tokens_per_sequence:.4g} "
                         f"prompt tokens of arriving requests (chunked prefill; serving.chunked_prefill = false "
                         f"prefills them whole between iterations)")
        elif it.whole_prefill_share:
            notes.append("steady state: arriving prompts are prefilled whole between decode iterations "
                         "(serving.chunked_prefill = false); TPOT includes those pauses")
            c = par.coupled_replicas
            if c > 1:
                events = it.whole_prefill_share * b / prefill_batch(w, b)
                notes.append(f"{c} attention-DP replicas share each EP group and wait for the one that prefills: "
                             f"{slowest_of_coupled(events, c):.3g} prefills per iteration on the critical path "
                             f"({events:.3g} per replica)")
        if sc.serving.host_step_modelled:
            sv = sc.serving
            how = "overlapped with the device (max of the two)" if sv.overlap_host_step else "added to the device time"
            notes.append(f"host step {sv.host_step_time_s(sampled) * 1e3:.3g} ms per decode iteration "
                         f"({sampled:.4g} tokens sampled), {how}")
        if it.drafted:
            notes.append(f"MTP speculative decoding: {it.drafted} draft token(s), {it.tokens_per_iteration:.3g} tokens "
                         f"per sequence per iteration at acceptance {w.mtp_acceptance_rate:g}")
    notes += _layout_notes(par) + _dtype_notes(hw, w.compute_dtype, w.expert_compute_dtype, fp8_scaling=w.fp8_scaling)
    if sc.workspace_bytes is None:
        notes.append(f"workspace {workspace_bytes(sc, hw) / 1e9:.3g} GB per GPU: the {1 - w.memory_utilization_frac:.0%} "
                     f"of device memory the engine leaves unused (workload.memory_utilization_frac = "
                     f"{w.memory_utilization_frac:g})")
    return notes


def _layout_notes(par: Parallel) -> list[str]:
    if par.ep == 1 and par.tp > 1 and par.etp == par.tp:
        return [f"experts sharded over the {par.tp} TP ranks (etp = tp; set layout.etp to change)"]
    return []


def _dtype_notes(hw: HardwareProfile, *dtypes: str | None, fp8_scaling: str = "block") -> list[str]:
    """A note for each GEMM dtype the device has no peak for (it runs at the nearest wider format's), and for
    block-scaled FP8 GEMMs on a device that runs them below the per-tensor speed."""
    notes = []
    peaks = hw.accelerator.peak_flops_per_s
    for d in dict.fromkeys(x for x in dtypes if x):
        if d not in peaks:
            notes.append(f"{hw.name} has no {d} peak: {d} GEMMs are timed at its {hw.accelerator.peak_dtype_for(d)} "
                         "peak")
    frac = hw.efficiency.fp8_block_scaled_frac
    if "fp8" in dtypes and fp8_scaling == "block" and frac != 1.0:
        notes.append(f"FP8 GEMMs with block scales (workload.fp8_scaling = block) run at {frac:g} of the per-tensor "
                     f"FP8 speed on {hw.name} (efficiency.fp8_block_scaled_frac: its tensor cores apply no block "
                     "scales)")
    return notes


def _serve_stage_memory(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, batch):
    """Per stage: (bytes by category, bytes per extra sequence, bytes independent of the batch)."""
    w: ServeWorkload = sc.workload  # type: ignore[assignment]
    wdt, edt = serve_weight_dtypes(model, w)
    wb = bytes_per_element(wdt)
    ewb = bytes_per_element(edt) if edt else wb
    stages = par.layers_per_stage(model)
    context = w.prompt_tokens + w.output_tokens
    h = model.hidden_size
    f_local = (model.moe.expert_ffn_dim / par.etp if model.moe else model.dense_ffn_dim / par.tp)
    k = model.moe.top_k if model.moe else 1
    act_per_token = 2.0 * (4 * h + k * (2 * h + 3 * f_local) * par.etp / par.tp)
    # transient activations of one layer: the prompts being prefilled, or one token per sequence in decode
    prefill_tokens = prefill_batch(w, batch) * w.computed_prompt_tokens if w.phase != "decode" else 0
    logits = 4.0 * model.vocab_size / par.tp
    out = []
    for s, layers in enumerate(stages):
        p = stage_params(model, par, layers, s == 0, s == len(stages) - 1, sc.routing.redundant_experts)
        weights = p.dense * wb + p.expert * ewb
        kv_seq = kv_bytes_per_sequence(model, par, layers, context, w.kv_dtype)
        per_seq = kv_seq + act_per_token + logits
        if w.phase == "prefill" and w.prefill_batch_size is None:
            per_seq += w.computed_prompt_tokens * act_per_token  # prefill-only: the batch is prefilled at once
            acts, fixed = batch * (per_seq - kv_seq), weights
        else:
            transient = prefill_tokens * act_per_token
            acts, fixed = batch * (act_per_token + logits) + transient, weights + transient
        cat = {"weights": weights, "kv_cache": batch * kv_seq, "activations": acts, "workspace": workspace_bytes(sc, hw)}
        out.append((cat, per_seq, fixed))
    return out


def serve_memory(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel) -> tuple[MemoryBreakdown, int]:
    """Memory per GPU of the largest stage and the largest batch per replica that fits: computed once per
    distinct set of what it reads (the workload, the redundant experts, the workspace, the layout, the model and
    profile by their content digests) and shared."""
    key = _HashedKey((sc.workload, sc.routing.redundant_experts, sc.workspace_bytes, par, model.fingerprint,
                      bridge._hw_key(hw)))
    hit = _SERVE_MEMORY.get(key)
    if hit is None:
        hit = _serve_memory(sc, model, hw, par)
        _SERVE_MEMORY.put(key, hit)
    return hit


_SERVE_MEMORY = _PassCache(1024)


def _serve_memory(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel) -> tuple[MemoryBreakdown, int]:
    """:func:`serve_memory` itself."""
    w: ServeWorkload = sc.workload  # type: ignore[assignment]
    cap = hw.accelerator.memory_bytes
    best: MemoryBreakdown | None = None
    max_b: int | None = None
    for s, (cat, per_seq, fixed) in enumerate(_serve_stage_memory(sc, model, hw, par, w.batch_size)):
        mb = MemoryBreakdown(cat, cap, stage=s)
        fit_b = max(0, int((cap - fixed - workspace_bytes(sc, hw)) // per_seq)) if per_seq > 0 else 0
        max_b = fit_b if max_b is None else min(max_b, fit_b)
        if best is None or mb.total_bytes > best.total_bytes:
            best = mb
    assert best is not None and max_b is not None
    return best, max_b


def serve_curve(sc: Scenario, model: ModelSpec, hw: HardwareProfile, batches) -> dict[str, np.ndarray]:
    """Key serving figures for several batch sizes per replica at once (the fast path of searches).

    Same model as :func:`estimate_resolved` (expected straggler, no p99, no
    per-operation records); every value is an array over ``batches``.
    """
    par, b, st, mem = _serve_batches(sc, model, hw, batches)

    def full(x):
        return np.broadcast_to(np.nan if x is None else x, b.shape).astype(float)

    mem = full(mem)
    tps = full(st.tokens_per_s)
    return {
        "batch_size": b,
        "ttft_s": full(st.ttft_s),
        "tpot_s": full(st.tpot_s),
        "tokens_per_s": tps,
        "memory_per_gpu_bytes": mem,
        "fits": mem <= hw.accelerator.memory_bytes,
        "mfu_frac": _mfu_frac(sc, hw, tps, st.flops_per_token, sc.workload.compute_dtype),
    }


def _serve_batches(sc: Scenario, model: ModelSpec, hw: HardwareProfile, batches):
    """(parallel layout, batches as an array, serving times over them, memory per GPU of the largest stage over
    them) for :func:`serve_curve` and :func:`serve_figures`."""
    check_layout(sc, model, hw)
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    b = np.asarray(batches, dtype=float)
    st = _serve_times(sc, model, hw, par, b, detail=False)
    stages = _serve_stage_memory(sc, model, hw, par, b)
    return par, b, st, np.max([sum(cat.values()) for cat, _, _ in stages], axis=0)


def _mfu_frac(sc: Scenario, hw: HardwareProfile, tokens_per_s, flops_per_token: float, dtype: str):
    """Model FLOPs over the GPUs' dense peak of ``dtype`` (scalars or arrays)."""
    return tokens_per_s * flops_per_token / (sc.num_gpus * hw.accelerator.peak_for(dtype))


def _pass_map(p: Pass, f) -> Pass:
    """A pass timed for several token counts at once, with ``f`` applied to each of its array times (scalars
    stay as they are; no per-operation records)."""
    def g(x):
        return f(x) if _vec(x) else x
    return Pass(g(p.moe_s), g(p.moe_p99_s), g(p.dense_s), {}, {}, {}, [], None, g(p.embedding_s), g(p.lm_head_s),
                g(p.a2a_s), g(p.a2a_p99_s))


def _pass_at(p: Pass, j: int) -> Pass:
    """Candidate ``j`` of a pass timed for several token counts at once."""
    return _pass_map(p, lambda x: float(x[j]))


def _pass_take(p: Pass, at: np.ndarray) -> Pass:
    """A pass timed for several token counts at once, taken at token count ``at[i]`` for layout ``i``."""
    return _pass_map(p, lambda x: x[at])


TRAIN_CURVE_FIELDS = ("valid", "step_s", "tokens_per_s", "memory_per_gpu_bytes", "fits", "mfu_frac", "dp", "edp")


def train_curve(sc: Scenario, model: ModelSpec, hw: HardwareProfile, candidates) -> dict[str, np.ndarray]:
    """Key training figures for many layouts and micro-batch sizes at once (the fast path of ``plan``).

    ``candidates`` are ``(num_gpus, layout, micro_batch_size)`` triples for ``sc``'s
    model and training workload on ``hw``. Same model as :func:`estimate_resolved`
    (expected straggler; no p99, per-operation records or breakdowns), evaluated with
    numpy: one layer pass per TP / EP / ETP for all micro-batch sizes together (the
    shared builder with arrays of token counts), then one step composition
    (:func:`_train_step`, the estimate's own) per TP / PP / EP / ETP / micro-batch
    size, elementwise over the layouts that differ in GPUs, DP and ZeRO stage.
    Every value is an array over ``candidates``; ``valid`` is False where the layout
    cannot run (:func:`check_layout`, or the scenario's divisibility rules), and the
    figures there are NaN.
    """
    import types

    w: TrainWorkload = sc.workload  # type: ignore[assignment]
    if not isinstance(w, TrainWorkload):
        raise ValueError("train_curve needs a training workload; use serve_curve for serving")
    cands = list(candidates)
    k = len(cands)
    out = {f: np.full(k, np.nan) for f in TRAIN_CURVE_FIELDS}
    out["valid"] = np.zeros(k, dtype=bool)
    out["fits"] = np.zeros(k, dtype=bool)
    gpn = hw.node.accelerators_per_node
    groups: dict[tuple, dict[tuple, list[int]]] = {}
    dps, edps = [0] * k, [0] * k
    for i, (g, lay, mbs) in enumerate(cands):
        tp, pp = lay.tp, lay.pp
        if g % (tp * pp):
            continue
        dp = lay.dp or g // (tp * pp)
        if tp * pp * dp != g or (tp * dp) % (lay.ep * lay.etp) or w.global_batch_size % (dp * mbs):
            continue
        try:
            check_layout(types.SimpleNamespace(name=sc.name, layout=lay, num_gpus=g, routing=sc.routing,
                                               workload=w, schedule=sc.schedule), model, hw)
        except InputError:
            continue
        dps[i], edps[i] = dp, tp * dp // (lay.ep * lay.etp)
        out["valid"][i] = True
        key = (tp, lay.ep, lay.etp, lay.sequence_parallel)
        groups.setdefault(key, {}).setdefault((pp, mbs, lay.virtual_stages), []).append(i)
    cap = hw.accelerator.memory_bytes
    for (tp, ep, etp, seq_par), members in groups.items():
        mbs_values = sorted({mbs for _, mbs, _ in members})
        one = Parallel(1, tp, 1, 1, ep, etp, 1, 0, seq_par, gpn)
        n_arr = np.array([mbs * w.seq_len for mbs in mbs_values], dtype=float)
        try:
            fwd_all, bwd_all = _train_passes(sc, model, hw, one, False, n=n_arr)
        except InputError:  # the layer cannot run (e.g. a node limit the EP group cannot meet)
            out["valid"][[i for idx in members.values() for i in idx]] = False
            continue
        # layouts of one PP and virtual-stage count whose micro-batch sizes give the same stage split share one
        # step composition, the passes' times taken per layout
        splits: dict[tuple, list[tuple[int, list[int]]]] = {}
        for (pp, mbs, vs), group in members.items():
            j = mbs_values.index(mbs)
            par_pp = Parallel(1, tp, pp, 1, ep, etp, 1, 0, seq_par, gpn)
            skey = _stages_key(_train_stages(sc, model, par_pp, _pass_at(fwd_all, j), _pass_at(bwd_all, j)))
            splits.setdefault((pp, vs, skey), []).append((j, group))
        for (pp, vs, skey), parts in splits.items():
            sc_vs = sc.model_copy(update={"layout": sc.layout.model_copy(update={"virtual_stages": vs})})
            stages = [list(r) for r in skey]
            order = [i for _, group in parts for i in group]
            which = np.array([j for j, group in parts for _ in group])

            def step(idx: list[int], at: np.ndarray) -> tuple[Parallel, _TrainStep]:
                par = Parallel(np.array([cands[i][0] for i in idx]), tp, pp, np.array([dps[i] for i in idx]), ep,
                               etp, np.array([edps[i] for i in idx]),
                               np.array([cands[i][1].zero_stage for i in idx]), seq_par, gpn)
                return par, _train_step(sc_vs, model, hw, par, _pass_take(fwd_all, at), _pass_take(bwd_all, at),
                                        p99=False, stages=stages,
                                        micro_batch_size=np.array([cands[i][2] for i in idx]))

            try:
                runs = [(order, *step(order, which))]
            except InputError:  # some layout of the group cannot run (a cluster the fabric cannot hold): one by one
                runs = []
                for i, j in zip(order, which.tolist()):
                    try:
                        runs.append(([i], *step([i], np.array([j]))))
                    except InputError:
                        out["valid"][i] = False
            for idx, par, st in runs:
                _fill(out, idx, par, st, cap)
    return out


def _fill(out: dict[str, np.ndarray], idx: list[int], par: Parallel, st: "_TrainStep", cap: float) -> None:
    mem = np.max(sum(st.memory.values()), axis=0)
    ii = np.array(idx)
    out["step_s"][ii] = st.step_s
    out["tokens_per_s"][ii] = st.tokens_per_s
    out["mfu_frac"][ii] = st.mfu_frac
    out["memory_per_gpu_bytes"][ii] = mem
    out["fits"][ii] = mem <= cap
    out["dp"][ii] = par.dp
    out["edp"][ii] = par.edp


# ----------------------------------------------------------------------------- entry point


def estimate_resolved(sc: Scenario, model: ModelSpec, hw: HardwareProfile) -> Estimate:
    """Estimate a scenario whose model and hardware are already loaded (pure; used by plan / sweep)."""
    check_layout(sc, model, hw)
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    if isinstance(sc.workload, TrainWorkload):
        return _train(sc, model, hw, par)
    return _serve(sc, model, hw, par)


def train_figures(sc: Scenario, model: ModelSpec, hw: HardwareProfile) -> Estimate:
    """The headline figures of a training step without per-operation detail or the p99 pass (searches).

    Same model as :func:`estimate_resolved`; ``memory``, ``ops``, ``load``, the
    time-by-stage breakdown and ``step_p99_s`` are left empty.
    """
    if not isinstance(sc.workload, TrainWorkload):
        raise ValueError("train_figures needs a training workload; use serve_curve for serving")
    check_layout(sc, model, hw)
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    return _train(sc, model, hw, par, detail=False)


def estimate(scenario: Scenario | str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Estimate:
    """Estimate a scenario (an object, a bundled name, or a TOML path; None = the default scenario)."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario, overrides)
    return estimate_resolved(sc, sc.resolve_model(), sc.resolve_hardware())
