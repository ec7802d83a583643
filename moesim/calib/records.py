"""Measurement records: what a microbenchmark measured, one JSON object per line of a JSONL file.

A calibration run writes a header line (:class:`EnvHeader`, the environment)
and then one :class:`Measurement` per microbenchmark as it finishes, so an
interrupted run keeps everything measured so far. Each measurement carries its
benchmark description (a discriminated union on ``kind``) whose :attr:`key`
identifies it for ``--resume``.

FLOPs and bytes of each benchmark are derived here (no hardware):

* matmul ``[m, k] @ [k, n]``: ``2 m k n`` FLOPs; ``(m k + k n + m n) * b``
  bytes (read both operands, write the result once; cache reuse ignored).
* grouped matmul of ``G`` groups of ``m`` rows: ``G`` times the above with a
  ``[G, k, n]`` weight.
* memory ops over ``N`` elements of ``b`` bytes: copy and gather move ``2 N b``
  (read + write), elementwise ``a * c`` moves ``3 N b``, scatter-add
  ``3 N b`` (read source and destination, write destination), the SwiGLU
  activation ``silu(a) * c`` ``5 N b`` (silu reads and writes, the product
  reads two and writes one).
* collectives: ``message_bytes`` is the per-rank buffer (all-to-all: the rows
  one rank sends, a ``1/R`` share to each rank including itself; all-reduce:
  the vector each rank holds).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

BenchDType = Literal["fp32", "bf16", "fp16"]
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MatmulBench(_Frozen):
    """``[m, k] @ [k, n]`` in one call (torch.mm)."""

    kind: Literal["matmul"] = "matmul"
    dtype: BenchDType = Field(description="Operand dtype.")
    m: int = Field(gt=0, description="Rows of the left operand (tokens), count.")
    k: int = Field(gt=0, description="Inner dimension, count.")
    n: int = Field(gt=0, description="Columns of the result, count.")

    @property
    def key(self) -> str:
        return f"matmul:{self.dtype}:{self.m}x{self.k}x{self.n}"

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n

    @property
    def bytes_moved(self) -> float:
        return float(self.m * self.k + self.k * self.n + self.m * self.n) * BYTES_PER_ELEMENT[self.dtype]


class GroupedMatmulBench(_Frozen):
    """``G`` independent ``[m, k] @ [k, n]`` products in one grouped call (grouped_mm, or bmm for the padded layout)."""

    kind: Literal["grouped_matmul"] = "grouped_matmul"
    dtype: BenchDType = Field(description="Operand dtype.")
    op: Literal["grouped_mm", "bmm"] = Field("grouped_mm", description="Jagged grouped GEMM or padded batched GEMM.")
    num_groups: int = Field(gt=0, description="Groups (experts), count.")
    m_per_group: int = Field(gt=0, description="Rows per group, count.")
    k: int = Field(gt=0, description="Inner dimension, count.")
    n: int = Field(gt=0, description="Columns of each result, count.")

    @property
    def key(self) -> str:
        return f"grouped_matmul:{self.op}:{self.dtype}:{self.num_groups}x{self.m_per_group}x{self.k}x{self.n}"

    @property
    def flops_per_group(self) -> float:
        return 2.0 * self.m_per_group * self.k * self.n

    @property
    def flops(self) -> float:
        return self.num_groups * self.flops_per_group

    @property
    def bytes_moved(self) -> float:
        g, m, k, n = self.num_groups, self.m_per_group, self.k, self.n
        return float(g * (m * k + k * n + m * n)) * BYTES_PER_ELEMENT[self.dtype]


MemoryOp = Literal["copy", "elementwise", "gather", "scatter_add", "swiglu"]
_MEM_TRAFFIC = {"copy": 2, "elementwise": 3, "gather": 2, "scatter_add": 3, "swiglu": 5}


class MemoryBench(_Frozen):
    """A memory-bound operation over ``num_elements`` elements (see module docstring for bytes)."""

    kind: Literal["memory"] = "memory"
    op: MemoryOp = Field(
        description="copy, elementwise (a * c), gather (index_select rows), scatter_add (index_add_ rows), "
        "swiglu (silu(a) * c: the experts' activation; SiLU costs arithmetic too)."
    )
    dtype: BenchDType = Field(description="Element dtype.")
    num_elements: int = Field(gt=0, description="Elements of the output, count.")
    row_elements: int = Field(1024, gt=0, description="Row width for gather / scatter_add, count of elements.")

    @property
    def key(self) -> str:
        return f"memory:{self.op}:{self.dtype}:{self.num_elements}"

    @property
    def bytes_moved(self) -> float:
        return float(_MEM_TRAFFIC[self.op] * self.num_elements * BYTES_PER_ELEMENT[self.dtype])


class OverheadBench(_Frozen):
    """A tiny operation whose time is the fixed per-kernel cost (dispatch + launch)."""

    kind: Literal["overhead"] = "overhead"
    op: Literal["add", "index_select", "index", "nonzero", "index_add", "mm", "topk", "argsort", "bincount",
                "softmax", "issue"] = Field(description="Tiny op timed (the kinds of call an MoE layer makes).")

    @property
    def key(self) -> str:
        return f"overhead:{self.op}"


class CollectiveBench(_Frozen):
    """A collective over ``world_size`` processes on this host (gloo on CPU, NCCL on GPUs)."""

    kind: Literal["collective"] = "collective"
    op: Literal["all_to_all", "all_reduce"] = Field(description="Collective timed.")
    world_size: int = Field(ge=2, description="Processes in the group, count.")
    message_bytes: int = Field(gt=0, description="Per-rank buffer, bytes (see module docstring).")

    @property
    def key(self) -> str:
        return f"collective:{self.op}:{self.world_size}:{self.message_bytes}"

    @property
    def cross_bytes(self) -> float:
        """Bytes one rank sends to other ranks: ``S (R-1)/R`` for all-to-all, ``2 S (R-1)/R`` for ring all-reduce."""
        r = self.world_size
        share = (r - 1) / r
        return self.message_bytes * share * (2.0 if self.op == "all_reduce" else 1.0)


Bench = Annotated[
    Union[MatmulBench, GroupedMatmulBench, MemoryBench, OverheadBench, CollectiveBench], Field(discriminator="kind")
]


class Measurement(_Frozen):
    """One microbenchmark result, seconds (median and spread over repetitions)."""

    record: Literal["measurement"] = "measurement"
    bench: Bench
    median_s: float = Field(gt=0, description="Median time of one call, seconds.")
    p10_s: float = Field(gt=0, description="10th percentile, seconds.")
    p90_s: float = Field(gt=0, description="90th percentile, seconds.")
    num_samples: int = Field(gt=0, description="Timed repetitions kept, count.")
    detail: str = Field("", description="What ran (backend, fallback, method).")
    sentinel_s: float | None = Field(
        None, gt=0,
        description="The slower of two timings of the sentinel GEMM (moesim.runner.timing.Sentinel) right before "
        "and right after this benchmark, seconds; compared with its fastest in the run it tells whether the machine "
        "ran slow while this was measured. None: not measured (collectives, files from before the sentinel).",
    )

    @property
    def key(self) -> str:
        return self.bench.key


class EnvHeader(_Frozen):
    """The first line of a measurements file: where and with what it was measured."""

    record: Literal["env"] = "env"
    device: Literal["cpu", "cuda"] = Field(description="Device kind measured.")
    env: dict[str, Any] = Field(description="Device name, driver, library versions, threads (see moesim.runner.env).")


Record = Annotated[Union[Measurement, EnvHeader], Field(discriminator="record")]
