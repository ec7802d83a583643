"""Overlap as a dependency graph: the critical path of one layer.

Each layer kind has a fixed dependency template (its edges, with the topological
order computed once and cached; :func:`template_graph` gives it as a networkx
DiGraph); evaluating a candidate is then a longest-path pass over that order with
the operations' durations, so large searches do not rebuild graphs.

Templates (node names are stage names; ``*_tp`` are tensor-parallel collectives):

* MoE layer: attention -> attn_tp -> router -> permute -> dispatch -> experts ->
  combine -> unpermute -> ffn_tp (permute / unpermute are the GPU-local gather
  and weighted scatter around the two all-to-alls; they are reported under the
  dispatch and combine stages), and, when shared experts overlap the
  all-to-all, permute -> shared_experts -> experts (the shared experts run
  while tokens are in flight, Megatron's ``--moe-shared-expert-overlap``);
  otherwise shared_experts follows unpermute.
* Dense layer: attention -> attn_tp -> dense_ffn -> ffn_tp.

With ``comm_overlap`` (two micro-batches interleaved, as DeepSeek's DualPipe in
training and two-batch overlap in serving), the communication of one
micro-batch hides under the computation of the other, so a layer costs
``max(sum of compute / (1 - s), sum of communication)`` per micro-batch, where
``s`` is the share of SMs the communication kernels take from computation.

Shared experts overlapped with the dispatch share the SMs with it: with ``W`` their time alone and ``d`` the
dispatch's, they run at ``1 - s`` of the SMs while it is in flight and at all of them after, so they take
``min(W / (1 - s), W + s d)`` (:func:`shared_under_dispatch`).
Left out: contention for memory bandwidth between the two.
"""

from __future__ import annotations

from functools import cache

MOE_NODES = ("attention", "attn_tp", "router", "permute", "dispatch", "experts", "combine", "unpermute",
             "shared_experts", "ffn_tp")
DENSE_NODES = ("attention", "attn_tp", "dense_ffn", "ffn_tp")
COMM_NODES = frozenset({"attn_tp", "dispatch", "combine", "ffn_tp"})


def template_edges(kind: str, overlap_shared: bool) -> tuple[tuple[str, str], ...]:
    """The dependency edges of a layer template (``(a, b)``: ``b`` starts when ``a`` ends)."""
    if kind == "moe":
        chain = ["attention", "attn_tp", "router", "permute", "dispatch", "experts", "combine", "unpermute", "ffn_tp"]
        extra = ([("permute", "shared_experts"), ("shared_experts", "experts")] if overlap_shared
                 else [("unpermute", "shared_experts"), ("shared_experts", "ffn_tp")])
    else:
        chain, extra = list(DENSE_NODES), []
    return tuple(zip(chain, chain[1:])) + tuple(extra)


def template_graph(kind: str, overlap_shared: bool):  # noqa: ANN201 - networkx is imported only here
    """The template as a networkx DiGraph (for inspection; the estimate walks :func:`template`)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_edges_from(template_edges(kind, overlap_shared))
    return g


@cache
def template(kind: str, overlap_shared: bool) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(topological order, predecessors of each node) of a layer template.

    Kahn's algorithm over the edges in the order given (nodes in order of first
    appearance, ready nodes first in, first out): the order networkx's
    ``topological_sort`` gives for these templates (tests/step/test_schedule.py),
    without importing networkx on the estimate's path.
    """
    edges = template_edges(kind, overlap_shared)
    nodes: list[str] = []
    for e in edges:
        for x in e:
            if x not in nodes:
                nodes.append(x)
    preds = {x: tuple(a for a, b in edges if b == x) for x in nodes}
    succs = {x: [b for a, b in edges if a == x] for x in nodes}
    waiting = {x: len(preds[x]) for x in nodes}
    ready = [x for x in nodes if not waiting[x]]
    order: list[str] = []
    while ready:
        x = ready.pop(0)
        order.append(x)
        for y in succs[x]:
            waiting[y] -= 1
            if not waiting[y]:
                ready.append(y)
    return tuple(order), tuple(preds[x] for x in order)


def shared_under_dispatch(shared, dispatch, slowdown: float):
    """Time of the shared experts started with the dispatch: ``min(W / (1 - s), W + s d)`` (module docstring)."""
    if slowdown <= 0:
        return shared
    a, b = shared / (1.0 - slowdown), shared + slowdown * dispatch
    if isinstance(a, float) and isinstance(b, float):
        return min(a, b)
    import numpy as np

    return np.minimum(a, b)


def _overlapped(kind: str, durations: dict, overlap_shared: bool, slowdown: float) -> dict:
    if kind != "moe" or not overlap_shared or slowdown <= 0 or "shared_experts" not in durations:
        return durations
    out = dict(durations)
    out["shared_experts"] = shared_under_dispatch(durations["shared_experts"], durations.get("dispatch", 0.0),
                                                  slowdown)
    return out


def critical_path_s(kind: str, durations: dict[str, float], *, overlap_shared: bool = True,
                    comm_overlap: bool = False, overlap_slowdown_frac: float = 0.0) -> tuple[float, list[str]]:
    """Time of one layer and the nodes on its critical path.

    With ``comm_overlap`` the computation runs ``1 / (1 - overlap_slowdown_frac)``
    times slower, since the communication kernels it hides hold some of the SMs.
    """
    if comm_overlap:
        comm = sum(v for k, v in durations.items() if k in COMM_NODES)
        comp = sum(v for k, v in durations.items() if k not in COMM_NODES) / (1.0 - overlap_slowdown_frac)
        return max(comm, comp), sorted(k for k in durations if (k in COMM_NODES) == (comm >= comp))
    durations = _overlapped(kind, durations, overlap_shared, overlap_slowdown_frac)
    order, preds = template(kind, overlap_shared)
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node, ps in zip(order, preds):
        start, arg = 0.0, None
        for p in ps:
            if finish[p] > start:
                start, arg = finish[p], p
        finish[node] = start + durations.get(node, 0.0)
        via[node] = arg
    end = max(finish, key=finish.__getitem__)
    path, cur = [], end
    while cur is not None:
        path.append(cur)
        cur = via[cur]
    return finish[end], path[::-1]


def critical_path_time(kind: str, durations: dict, *, overlap_shared: bool = True, comm_overlap: bool = False,
                       overlap_slowdown_frac: float = 0.0):
    """Time of the critical path only; durations may be numpy arrays (one value per candidate)."""
    import numpy as np

    if comm_overlap:
        comm = sum(v for k, v in durations.items() if k in COMM_NODES)
        comp = sum(v for k, v in durations.items() if k not in COMM_NODES) / (1.0 - overlap_slowdown_frac)
        return np.maximum(comm, comp)
    durations = _overlapped(kind, durations, overlap_shared, overlap_slowdown_frac)
    order, preds = template(kind, overlap_shared)
    finish: dict = {}
    for node, ps in zip(order, preds):
        start = 0.0
        for p in ps:
            start = np.maximum(start, finish[p])
        finish[node] = start + durations.get(node, 0.0)
    out = 0.0
    for v in finish.values():
        out = np.maximum(out, v)
    return out
