"""Microbenchmarks that calibration fits: GEMM, grouped GEMM, memory ops, per-kernel overhead, collectives.

Each function takes a benchmark description from :mod:`moesim.calib.records`
(the grid is :func:`moesim.calib.grid.calibration_grid`) and returns a
:class:`~moesim.calib.records.Measurement` in seconds. Tensors are allocated
once per benchmark, outside the timed region.

Dimension legend: M rows (tokens), K inner, N columns, G groups, X elements.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moesim.calib.records import (
    CollectiveBench,
    GroupedMatmulBench,
    MatmulBench,
    Measurement,
    MemoryBench,
    OverheadBench,
)

from .layers import _GROUPED_MM, TORCH_DTYPES, grouped_mm_support
from .timing import Timing, bench, bench_stable, synchronize


def _measurement(b: Any, t: Timing, detail: str = "") -> Measurement:
    return Measurement(bench=b, median_s=t.median_s, p10_s=t.p10_s, p90_s=t.p90_s, num_samples=t.num_samples,
                       detail=detail)


def _retried(tries: int) -> str:
    return f" (unstable: {tries} runs, steadiest kept)" if tries > 1 else ""


def _rand(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype)


def run_matmul(b: MatmulBench, device: torch.device, target_s: float) -> Measurement:
    dt = TORCH_DTYPES[b.dtype]
    a_MK, w_KN = _rand(b.m, b.k, dtype=dt, device=device), _rand(b.k, b.n, dtype=dt, device=device)
    out_MN = torch.empty(b.m, b.n, dtype=dt, device=device)
    t, tries = bench_stable(lambda: torch.mm(a_MK, w_KN, out=out_MN), device, target_s=target_s)
    return _measurement(b, t, "torch.mm" + _retried(tries))


def run_grouped(b: GroupedMatmulBench, device: torch.device, target_s: float) -> Measurement:
    dt = TORCH_DTYPES[b.dtype]
    G, M, K, N = b.num_groups, b.m_per_group, b.k, b.n
    w_GKN = _rand(G, K, N, dtype=dt, device=device)
    if b.op == "bmm":
        a_GMK = _rand(G, M, K, dtype=dt, device=device)
        out_GMN = torch.empty(G, M, N, dtype=dt, device=device)
        t, tries = bench_stable(lambda: torch.bmm(a_GMK, w_GKN, out=out_GMN), device, target_s=target_s)
        return _measurement(b, t, "torch.bmm" + _retried(tries))
    a_XK = _rand(G * M, K, dtype=dt, device=device)
    ok, detail = grouped_mm_support(device, dt)
    if ok:
        offs_G = (torch.arange(1, G + 1, device=device) * M).to(torch.int32)
        t, tries = bench_stable(lambda: _GROUPED_MM(a_XK, w_GKN, offs=offs_G), device, target_s=target_s)
    else:
        def loop() -> None:
            for g in range(G):
                torch.mm(a_XK[g * M:(g + 1) * M], w_GKN[g])
        t, tries = bench_stable(loop, device, target_s=target_s)
    return _measurement(b, t, detail + _retried(tries))


def run_memory(b: MemoryBench, device: torch.device, target_s: float) -> Measurement:
    dt = TORCH_DTYPES[b.dtype]
    X = b.num_elements
    if b.op in ("copy", "elementwise", "swiglu"):
        src, other, dst = (_rand(X, dtype=dt, device=device) for _ in range(3))
        fn, detail = {
            "copy": (lambda: dst.copy_(src), "Tensor.copy_"),
            "elementwise": (lambda: torch.mul(src, other, out=dst), "torch.mul(out=)"),
            "swiglu": (lambda: F.silu(src) * other, "silu(a) * c (allocating, as the experts run it)"),
        }[b.op]
    else:
        width = min(b.row_elements, X)
        rows = max(1, X // width)
        src_RW = _rand(rows, width, dtype=dt, device=device)
        dst_RW = torch.zeros(rows, width, dtype=dt, device=device)
        idx_R = torch.randperm(rows, device=device)
        if b.op == "gather":
            fn, detail = (lambda: torch.index_select(src_RW, 0, idx_R, out=dst_RW)), "torch.index_select rows"
        else:
            fn, detail = (lambda: dst_RW.index_add_(0, idx_R, src_RW)), "Tensor.index_add_ rows"
    t, tries = bench_stable(fn, device, target_s=target_s, flush_cache=False)
    return _measurement(b, t, detail + _retried(tries))


def run_overhead(b: OverheadBench, device: torch.device, target_s: float) -> Measurement:
    x = torch.randn(8, device=device)
    y = torch.randn(8, device=device)
    out = torch.empty(8, device=device)
    idx = torch.tensor([1, 0], device=device)
    rows = torch.randn(8, 4, device=device)
    src = torch.randn(2, 4, device=device)
    mask = torch.tensor([True, False] * 4, device=device)
    experts = torch.tensor([0, 3, 1, 2, 0, 1, 3, 2], device=device)
    m = torch.randn(1, 1, device=device)
    fns = {
        "add": lambda: torch.add(x, y, out=out),
        "index_select": lambda: torch.index_select(x, 0, idx),
        "index": lambda: rows[idx],
        "nonzero": lambda: torch.nonzero(mask),
        "index_add": lambda: rows.index_add_(0, idx, src),
        "mm": lambda: torch.mm(m, m),
        "topk": lambda: torch.topk(x, 2),
        "argsort": lambda: torch.argsort(x),
        "bincount": lambda: torch.bincount(experts, minlength=4),
        "softmax": lambda: torch.softmax(rows, dim=-1),
    }
    if b.op == "issue":  # host seconds per kernel of a chain issued without synchronising (GPU launch cost)
        import time

        chain = 200

        def issue_chain() -> float:
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(chain):
                torch.add(x, y, out=out)
            t1 = time.perf_counter()
            synchronize(device)
            return (t1 - t0) / chain

        for _ in range(3):
            issue_chain()
        from .timing import summarise

        t = summarise([issue_chain() for _ in range(30)])
        return _measurement(b, t, f"host time per torch.add issued in a chain of {chain}")
    t = bench(fns[b.op], device, min_reps=50, max_reps=2000, target_s=target_s, flush_cache=False)
    return _measurement(b, t, f"torch {b.op} on a few elements")


def run_single(b: Any, device: torch.device, target_s: float = 0.1) -> Measurement:
    """Run one single-process microbenchmark."""
    runners = {"matmul": run_matmul, "grouped_matmul": run_grouped, "memory": run_memory, "overhead": run_overhead}
    return runners[b.kind](b, device, target_s)


# --------------------------------------------------------------------------- collectives (one process per rank)


def _time_collective(fn: Any, device: torch.device, reps: int) -> list[float]:
    """Per-iteration times, each the max over ranks (the collective ends when the slowest rank does)."""
    import time

    out = []
    for _ in range(reps):
        dist.barrier()
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        out.append(float(dt))
    return out


def collective_worker(rank: int, world: int, device: torch.device, benches: list[CollectiveBench],
                      target_s: float) -> list[dict[str, Any]]:
    """Run ``benches`` on every rank; rank 0 returns the measurements as dicts."""
    from .dist import AllToAll
    from .timing import summarise

    a2a = AllToAll()
    method = a2a.probe(device)
    results = []
    for b in benches:
        elems = max(world, b.message_bytes // 4)
        elems -= elems % world
        x = torch.randn(elems, device=device)
        if b.op == "all_to_all":
            out = torch.empty_like(x)
            share = [elems // world] * world
            if method == "all_to_all_single":
                fn = lambda: dist.all_to_all_single(out, x)  # noqa: E731
            else:
                fn = lambda: a2a(x.view(elems, 1), share, share)  # noqa: E731
            detail = f"{dist.get_backend()} {method}"
        else:
            fn = lambda: dist.all_reduce(x)  # noqa: E731
            detail = f"{dist.get_backend()} all_reduce"
        for _ in range(2):
            fn()
        first = _time_collective(fn, device, 1)[0]
        reps = int(min(200, max(5, target_s / max(first, 1e-6))))
        samples = _time_collective(fn, device, reps + 1)[1:]
        t = summarise(samples)
        results.append(_measurement(b, t, detail).model_dump(mode="json"))
    return results if rank == 0 else []


def run_collectives(benches: list[CollectiveBench], device: str, target_s: float = 0.1) -> list[Measurement]:
    """Spawn ``world_size`` local processes and time ``benches`` (all with the same world size)."""
    from .dist import spawn_local

    if not benches:
        return []
    world = benches[0].world_size
    out = spawn_local(collective_worker, world, benches, target_s, device=device)
    return [Measurement.model_validate(d) for d in out[0]]
