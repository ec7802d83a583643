"""The calibration grid: which microbenchmarks ``moesim calibrate`` runs.

Three sizes: ``full`` (the default, about 10 minutes on a 2-core CPU),
``quick`` (``--quick``, under 3 minutes) and ``tiny`` (seconds; for tests).
Memory benchmarks reach buffers well past the last-level cache (256 MB on a
CPU, 1 GB on a GPU), so the memory curve has both the cache and the DRAM / HBM
regime; weights are timed at the DRAM end (see :mod:`moesim.timing`).
GEMM widths are powers of two; the validation cases use other widths, so no
validation layer's expert GEMM is a calibration shape (checked by a test).
The GPU grid reaches the sizes where tensor cores saturate.
"""

from __future__ import annotations

from typing import Literal

from .records import CollectiveBench, GroupedMatmulBench, MatmulBench, MemoryBench, OverheadBench

GridSize = Literal["tiny", "quick", "full"]
GRID_SIZES: tuple[str, ...] = ("tiny", "quick", "full")

#: On a CPU without bf16 instructions (AVX-512 BF16, AMX), GEMMs in a dtype other than fp32 are measured up to
#: this many FLOPs: torch runs them through a conversion path 100x slower than fp32 (0.4-1.7 GFLOP/s on this
#: project's 2-core AVX2 EPYC against 110-150 for fp32), which would take the quick grid past its time budget;
#: the shape table holds its largest measured rows beyond the cap. A CPU with them (a Zen 4 EPYC: 157 GFLOP/s
#: bf16 against 92 fp32 on one core) measures bf16 on the whole grid, as fp32.
CPU_NARROW_DTYPE_MAX_FLOPS = {"tiny": 1 << 24, "quick": 1 << 26, "full": 1 << 28}

AnyBench = MatmulBench | GroupedMatmulBench | MemoryBench | OverheadBench | CollectiveBench


def _matmuls(dtypes: list[str], ms: list[int], kns: list[tuple[int, int]]) -> list[MatmulBench]:
    return [MatmulBench(dtype=d, m=m, k=k, n=n) for d in dtypes for (k, n) in kns for m in ms]  # type: ignore[arg-type]


def _grouped(dtypes: list[str], groups: list[int], ms: list[int], kns: list[tuple[int, int]], ops: list[str],
             max_rows: int) -> list[GroupedMatmulBench]:
    out = []
    for d in dtypes:
        for op in ops:
            for g in groups:
                for m in ms:
                    if g * m > max_rows:
                        continue
                    for k, n in kns:
                        out.append(GroupedMatmulBench(dtype=d, op=op, num_groups=g, m_per_group=m, k=k, n=n))  # type: ignore[arg-type]
    return out


def _memory(dtype: str, sizes: list[int], ops: list[str]) -> list[MemoryBench]:
    return [MemoryBench(op=op, dtype=dtype, num_elements=n) for op in ops for n in sizes]  # type: ignore[arg-type]


def calibration_grid(device: Literal["cpu", "cuda"], size: GridSize = "full", world_size: int = 2, *,
                     cpu_bf16_instructions: bool = False) -> list[AnyBench]:
    """The microbenchmarks to run, in order (cheap ones first so an early interrupt keeps a usable set).

    ``cpu_bf16_instructions``: the CPU has bf16 dot-product instructions, so its bf16 GEMMs are measured over
    the whole grid instead of up to :data:`CPU_NARROW_DTYPE_MAX_FLOPS`.
    """
    gpu = device == "cuda"
    overhead = [OverheadBench(op=o)  # type: ignore[arg-type]
                for o in ("add", "index_select", "index", "nonzero", "index_add", "mm", "topk", "argsort", "bincount",
                          "softmax")]
    mem_ops = ["copy", "elementwise", "gather", "scatter_add", "swiglu"]
    if size == "tiny":  # seconds: for tests of the whole loop, not for accurate profiles
        return (
            overhead[:2]
            + _matmuls(["fp32"], [16, 256], [(256, 256)])
            + _grouped(["fp32"], [4], [32], [(128, 256)], ["grouped_mm", "bmm"], 1 << 20)
            + _memory("fp32", [1 << 12, 1 << 16, 1 << 18], ["copy", "gather"])
            + ([CollectiveBench(op=o, world_size=world_size, message_bytes=s)  # type: ignore[arg-type]
                for o in ("all_to_all", "all_reduce") for s in (1 << 12, 1 << 18)] if world_size >= 2 else [])
        )
    dtypes = ["bf16", "fp16", "fp32"] if gpu else ["fp32", "bf16"]
    if gpu:
        overhead.append(OverheadBench(op="issue"))  # type: ignore[arg-type]
    # GEMM shapes for the shape tables (rows per group M x inner K; see moesim/timing.py): rows from 1 to
    # thousands (decode to prefill), K from expert-narrow (128) to wide; N fixed (efficiency is flat in N at
    # fixed M and K to the first order). GPU grids reach the sizes where tensor cores saturate.
    if size == "quick":
        ms = [1, 8, 64, 512, 4096] if gpu else [1 << p for p in range(0, 13)]
        kns = [(1024, 4096), (4096, 4096), (8192, 8192)] if gpu else [(128, 1024), (512, 1024), (2048, 1024)]
        groups, gms = ([8, 64], [1, 16, 128, 1024]) if gpu else ([4, 32], [1, 4, 16, 64, 256, 1024])
        gkns = [(2048, 4096), (4096, 2048)] if gpu else [(128, 512), (512, 512), (2048, 512)]
        mem_sizes = [1 << p for p in (range(12, 31, 3) if gpu else range(10, 27, 2))]
        coll_sizes = [1 << p for p in (range(10, 31, 4) if gpu else range(10, 25, 3))]
        gdtypes = dtypes[:1] if gpu else ["fp32", "bf16"]
        gops = ["grouped_mm", "bmm"]
    else:
        ms = [1, 4, 16, 64, 256, 1024, 4096, 16384] if gpu else sorted({int(round(2 ** (p / 2))) for p in range(0, 25)})
        kns = (
            [(1024, 4096), (2048, 4096), (4096, 2048), (4096, 4096), (8192, 8192), (4096, 14336)]
            if gpu
            else [(128, 1024), (256, 2048), (512, 1024), (1024, 2048), (2048, 1024), (4096, 512)]
        )
        groups, gms = ([8, 32, 128], [1, 8, 64, 512, 2048]) if gpu else ([4, 16, 64], [1 << p for p in range(0, 11)])
        gkns = [(2048, 4096), (4096, 2048), (7168, 2048)] if gpu else [(128, 1024), (512, 512), (1024, 1024), (2048, 512)]
        mem_sizes = [1 << p for p in (range(10, 32, 2) if gpu else range(8, 28, 1))]
        coll_sizes = [1 << p for p in (range(8, 32, 2) if gpu else range(8, 26, 2))]
        gdtypes = dtypes if gpu else ["fp32", "bf16"]
        gops = ["grouped_mm", "bmm"]
    max_rows = 1 << 16 if gpu else 8192
    colls = [CollectiveBench(op=o, world_size=world_size, message_bytes=s)  # type: ignore[arg-type]
             for o in ("all_to_all", "all_reduce") for s in coll_sizes] if world_size >= 2 else []
    gemms = [b for b in _matmuls(dtypes, ms, kns) + _grouped(gdtypes, groups, gms, gkns, gops, max_rows)
             if gpu or cpu_bf16_instructions or b.dtype == "fp32" or b.flops <= CPU_NARROW_DTYPE_MAX_FLOPS[size]]
    return overhead + _memory(dtypes[0], mem_sizes, mem_ops) + gemms + colls
