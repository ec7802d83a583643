"""Typed results of the communication model (what the API returns and ``--json`` prints)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BottleneckLink(_Frozen):
    """The link that sets the bandwidth term of a collective."""

    link: str = Field(description="The link as 'from -> to', e.g. 'nic 3.0 -> leaf 0'.")
    kind: str = Field(description="Link kind: scale_up, mesh, nic or fabric.")
    load_bytes: float = Field(description="Bytes the link carries during the collective, bytes.")
    capacity_bytes_per_s: float = Field(description="Link capacity per direction, bytes/s.")
    achievable_bytes_per_s: float = Field(description="Capacity times the profile's achievable fraction, bytes/s.")
    busy_s: float = Field(description="load / achievable bandwidth: the bandwidth term, seconds.")
    utilization_frac: float = Field(
        description="load / (capacity * time): share of the link's capacity used over the whole collective, fraction."
    )


class CollectiveTime(_Frozen):
    """Predicted time of one collective on a group of ranks, with nccl-tests' bandwidths.

    ``time_s = overhead_s + latency_s + bandwidth_s``. ``size_bytes`` is ``S`` as
    nccl-tests defines it (all-reduce: the buffer; all-gather / reduce-scatter:
    the whole gathered array; all-to-all: one rank's send buffer, its own share
    included; send/receive: the message). ``algbw = S / t``;
    ``busbw = algbw * busbw_factor`` with the factor of nccl-tests'
    doc/PERFORMANCE.md (2(n-1)/n all-reduce, (n-1)/n all-gather, reduce-scatter and
    all-to-all, 1 send/receive).
    """

    collective: str = Field(description="all_reduce, reduce_scatter, all_gather, all_to_all, sendrecv, dispatch or combine.")
    algorithm: str = Field(description="Algorithm used (ring, tree, nvls, direct, hierarchical).")
    hardware: str = Field(description="Hardware profile name.")
    num_ranks: int = Field(description="Ranks in the group, count.")
    num_nodes: int = Field(description="Nodes (scale-up domains) the group spans, count.")
    size_bytes: float = Field(description="S as nccl-tests defines it (see class docstring), bytes.")
    time_s: float = Field(description="Predicted time, seconds.")
    bandwidth_s: float = Field(description="Bandwidth term: the bottleneck link's load over its achievable rate, seconds.")
    latency_s: float = Field(description="Per-message latency terms (steps x path latency), seconds.")
    overhead_s: float = Field(description="Fixed software cost per call (efficiency.collective_overhead_s), seconds.")
    num_steps: int = Field(description="Sequential message steps the latency term counts, count.")
    algbw_bytes_per_s: float = Field(description="S / time_s (inf when nothing moves), bytes/s.")
    busbw_bytes_per_s: float = Field(description="algbw x busbw_factor, bytes/s.")
    busbw_factor: float = Field(description="nccl-tests bus bandwidth factor, dimensionless.")
    bottleneck: BottleneckLink | None = Field(description="The link that sets bandwidth_s (None when nothing moves).")
    local_bytes: float = Field(description="Bytes that stayed on their rank, summed over ranks, bytes.")
    scale_up_bytes: float = Field(description="Bytes sent over scale-up links (NVLink / xGMI), summed over ranks, bytes.")
    network_bytes: float = Field(description="Bytes sent into NICs (scale-out), summed over ranks, bytes.")


class AllToAllTime(_Frozen):
    """Expert-parallel dispatch and combine for one MoE layer (forward)."""

    hardware: str = Field(description="Hardware profile name.")
    algorithm: str = Field(description="direct or hierarchical.")
    num_ranks: int = Field(description="Expert-parallel ranks, count.")
    ranks_per_node: int = Field(description="EP ranks per node, count.")
    num_nodes: int = Field(description="Nodes the EP group spans, count.")
    tokens_per_rank: float = Field(description="Tokens entering each rank, count.")
    top_k: int = Field(description="Experts per token, count.")
    num_experts: int = Field(description="Routed experts, count.")
    node_limit: int | None = Field(description="Most nodes one token may reach (group-limited routing), count.")
    distribution: str = Field(description="Routing distribution (text form).")
    dispatch_bytes_per_token: float = Field(description="Bytes of one dispatched token copy, bytes.")
    combine_bytes_per_token: float = Field(description="Bytes of one combined token copy, bytes.")
    dispatch: CollectiveTime = Field(description="Dispatch (tokens to experts).")
    combine: CollectiveTime = Field(description="Combine (expert outputs back to their tokens).")
    time_s: float = Field(description="dispatch + combine, seconds.")
