"""Where a communication group's ranks sit on the cluster.

A group is described either by its size and how many of its ranks share a node
(``GroupSpec(size=16, ranks_per_node=8)``: two full 8-GPU nodes;
``GroupSpec(size=64, ranks_per_node=1)``: one GPU on each of 64 nodes, as a
data-parallel group beside tensor parallelism of 8), or by an explicit list of
accelerator indices. Accelerators are numbered node-major: accelerator ``a`` is
local index ``a % P`` of node ``a // P``, where ``P`` is the size of a routing node
(the accelerators of a node, or of a scale-up domain when that spans nodes, as
in an NVL72 rack).

Group rank ``i`` of a size-based group is local index ``i % r`` of node
``first_node + i // r``; this is also the rank order of an expert-parallel
traffic matrix (``TrafficMatrix.ranks_per_node``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import InputError
from .spec import NetworkSpec, check_cluster


class GroupSpec(BaseModel):
    """A communication group: ``size`` (+ ``ranks_per_node``, ``first_node``) or explicit ``ranks``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int | None = Field(None, ge=1, description="Number of ranks in the group (count).")
    ranks_per_node: int | None = Field(
        None, ge=1, description="Ranks of the group on each node it uses (count); default: fill whole nodes."
    )
    first_node: int = Field(0, ge=0, description="Index of the first node the group uses (count).")
    ranks: tuple[int, ...] | None = Field(
        None, description="Explicit accelerator indices, node-major (accelerator a = local a % P of node a // P)."
    )

    @model_validator(mode="after")
    def _one_form(self) -> "GroupSpec":
        if (self.size is None) == (self.ranks is None):
            raise ValueError("give either size (with ranks_per_node) or an explicit ranks list, not both")
        if self.ranks is not None:
            if len(self.ranks) == 0:
                raise ValueError("ranks must not be empty")
            if len(set(self.ranks)) != len(self.ranks):
                raise ValueError("ranks must be distinct accelerators")
            if min(self.ranks) < 0:
                raise ValueError("ranks must be >= 0")
        return self

    @property
    def num_ranks(self) -> int:
        return self.size if self.size is not None else len(self.ranks or ())


@dataclass(frozen=True, eq=False)
class Placement:
    """A group resolved against a network: accelerators, nodes and (when regular) slots.

    ``regular`` placements use the same local indices (``slots``) on every node
    they touch; their ranks can be viewed node-major as ``[num_nodes, num_slots]``
    after the permutation ``order`` (group rank ``order[q]`` sits at node-major
    position ``q``), which the vectorised routers need.
    """

    accelerators: np.ndarray  # [n] accelerator of group rank i
    node_size: int
    nodes: np.ndarray  # [m] routing nodes used, sorted
    slots: np.ndarray | None  # [r] local indices used on every node (regular) or None
    order: np.ndarray | None  # [n] node-major order of group ranks; None if already node-major
    key: tuple

    @property
    def num_ranks(self) -> int:
        return int(self.accelerators.size)

    @property
    def num_nodes(self) -> int:
        return int(self.nodes.size)

    @property
    def regular(self) -> bool:
        return self.slots is not None

    @property
    def nodes_needed(self) -> int:
        """Routing nodes the cluster must have (the highest node used + 1)."""
        return int(self.nodes.max()) + 1


def resolve(group: GroupSpec | int, spec: NetworkSpec, *, source: str | None = None) -> Placement:
    """Place ``group`` on a cluster of ``spec``; :class:`InputError` if it cannot be placed.

    Results are cached per (group, network), so repeated calls are cheap.
    """
    if isinstance(group, (int, np.integer)):
        group = GroupSpec(size=int(group))
    try:
        return _resolve_cached(group, spec)
    except InputError as exc:
        raise exc.with_source(source) if source else exc


@lru_cache(maxsize=1024)
def _resolve_cached(group: GroupSpec, spec: NetworkSpec) -> Placement:
    source = None
    node_size = max(spec.accelerators_per_node, spec.scale_up_domain_size if spec.scale_up != "none" else 1)
    if group.ranks is not None:
        acc = np.asarray(group.ranks, dtype=np.int64)
    else:
        n = int(group.size or 0)
        r = group.ranks_per_node if group.ranks_per_node is not None else min(n, node_size)
        if r > node_size:
            raise InputError(
                f"ranks_per_node = {r} exceeds the {node_size} accelerators of a {spec.profile_name} node",
                source=source,
                field="ranks_per_node",
            )
        if n % r:
            raise InputError(
                f"{n} ranks do not fill whole nodes at {r} ranks per node; use a multiple of {r} "
                f"(or at most {node_size} ranks on one node)",
                source=source,
                field="ranks",
            )
        i = np.arange(n)
        acc = (group.first_node + i // r) * node_size + i % r
    node = acc // node_size
    local = acc % node_size
    nodes = np.unique(node)
    check_cluster(spec, int(nodes.max()) + 1, source=source)

    order_q = np.lexsort((local, node))  # node-major order
    slots = None
    order = None
    counts = np.bincount(node, minlength=int(nodes.max()) + 1)[nodes]
    if np.all(counts == counts[0]):
        r = int(counts[0])
        loc_sorted = local[order_q].reshape(nodes.size, r)
        if np.all(loc_sorted == loc_sorted[0]):
            slots = loc_sorted[0].copy()
            if not np.array_equal(order_q, np.arange(acc.size)):
                order = order_q
    if group.ranks is None:
        key = ("size", node_size, group.size, int(acc.size // nodes.size), group.first_node)
    else:
        key = ("ranks", node_size, tuple(acc.tolist()))
    return Placement(accelerators=acc, node_size=node_size, nodes=nodes, slots=slots, order=order, key=key)
