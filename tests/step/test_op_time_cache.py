"""The searches' cache of operation times (moesim.step.estimate._OP_ARRAY_TIMES) is keyed on everything the timing
reads of an operation, and hands out what an uncached timing gives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moesim.caches import clear_caches
from moesim.layer import GemmShape, Op
from moesim.scenario import load_scenario
from moesim.step import estimate as E
from moesim.timing import op_terms, op_time_s


class _Recorder:
    """Stands in for an Op or GemmShape and records every field read, properties included (their own reads go
    through the recorder, so ``flops_per_gemm`` counts as ``m``, ``n`` and ``k``)."""

    def __init__(self, obj, seen: set[str], prefix: str = "") -> None:
        self._obj, self._seen, self._prefix = obj, seen, prefix

    def __getattr__(self, name: str):
        prop = getattr(type(self._obj), name, None)
        if isinstance(prop, property):
            return prop.fget(self)
        self._seen.add(self._prefix + name)
        value = getattr(self._obj, name)
        if isinstance(value, GemmShape):
            return _Recorder(value, self._seen, prefix="gemm.")
        return value


def _search_ops(monkeypatch) -> list[tuple[object, str, Op]]:
    """(profile, dtype, op) of every computation the vectorised passes of a serving and a training search time."""
    seen: list[tuple[object, str, Op]] = []
    original = E._Timer.time_only

    def recording(self, op):
        if op.compute_kind != "comm":
            seen.append((self.hw, self.dtype, op))
        return original(self, op)

    monkeypatch.setattr(E._Timer, "time_only", recording)
    clear_caches()
    sc = load_scenario("deepseek-v3-decode-h800")  # FP8: GEMMs, grouped GEMMs, attention, quantisation passes
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    E.serve_curve(sc, model, hw, np.array([1.0, 8.0, 64.0]))
    sc = load_scenario("mixtral-8x22b-train-h100")  # backward passes
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    E.train_curve(sc, model, hw, [(sc.num_gpus, sc.layout, 1), (sc.num_gpus, sc.layout, 2)])
    monkeypatch.undo()
    clear_caches()
    return seen


def test_the_timing_reads_only_the_fields_of_the_key(monkeypatch) -> None:
    ops = _search_ops(monkeypatch)
    kinds = {op.compute_kind for _, _, op in ops}
    assert {"matmul", "grouped_matmul", "attention", "elementwise"} <= kinds
    assert any(op.is_backward for _, _, op in ops)
    allowed = set(E.OP_TIME_FIELDS) | {"gemm"} | {f"gemm.{f}" for f in E.GEMM_TIME_FIELDS}
    read: set[str] = set()
    for hw, dtype, op in ops:
        seen: set[str] = set()
        c, m, o = op_terms(hw, _Recorder(op, seen), dtype)
        assert np.array_equal(c, op_terms(hw, op, dtype)[0])
        read |= seen
    assert read <= allowed, sorted(read - allowed)
    assert "flops" in read and "gemm.m" in read


def test_every_field_of_the_key_tells_operations_apart() -> None:
    g = GemmShape(m=np.array([64.0, 128.0]), n=4096.0, k=1024.0, groups=8.0, call_groups=8.0)
    op = Op(E.OpKind.EXPERTS, "experts_up", flops=np.array([1e9, 2e9]), bytes_moved=np.array([1e6, 2e6]),
            weight_bytes=3e6, compute_kind="grouped_matmul", num_kernels=1, gemm=g, keys_per_query=None)
    other = {"compute_kind": "matmul", "dtype": "fp8", "flops": np.array([1e9, 3e9]),
             "bytes_moved": np.array([1e6, 3e6]), "weight_bytes": 4e6, "num_kernels": 2,
             "keys_per_query": 512.0, "head_dim": 64.0, "is_backward": True, "streams": 4}
    assert set(other) == set(E.OP_TIME_FIELDS)
    for name, value in other.items():
        assert E._op_key(dataclasses.replace(op, **{name: value})) != E._op_key(op), name
    gemm_other = {"m": np.array([64.0, 256.0]), "n": 2048.0, "k": 512.0, "call_groups": 4.0}
    assert set(gemm_other) == set(E.GEMM_TIME_FIELDS)
    for name, value in gemm_other.items():
        changed = dataclasses.replace(op, gemm=dataclasses.replace(g, **{name: value}))
        assert E._op_key(changed) != E._op_key(op), name
    # an int and a float of one value, or arrays of one value and another dtype, stay apart
    assert E._op_key(dataclasses.replace(op, weight_bytes=3_000_000)) != E._op_key(op)
    f32 = dataclasses.replace(op, flops=op.flops.astype(np.float32))
    assert E._op_key(f32) != E._op_key(op)


def test_a_cached_time_is_the_uncached_one_and_read_only(monkeypatch) -> None:
    ops = _search_ops(monkeypatch)
    hw, dtype, op = next((h, d, o) for h, d, o in ops if np.ndim(o.flops) > 0)
    par = E.Parallel.of(load_scenario("deepseek-v3-decode-h800"), hw.node.accelerators_per_node)
    timer = E._Timer(hw, par, dtype)
    first, again = timer.time_only(op), timer.time_only(op)
    assert again is first
    assert np.array_equal(first, op_time_s(hw, op, dtype))
    with pytest.raises(ValueError):
        first[0] = 0.0
