"""The layer templates: their order and predecessors are networkx's, without networkx on the estimate's path."""

from __future__ import annotations

import networkx as nx
import pytest

from moesim.step.schedule import critical_path_s, template, template_graph


@pytest.mark.parametrize("kind", ["moe", "dense"])
@pytest.mark.parametrize("overlap_shared", [True, False])
def test_template_order_and_predecessors_are_networkx_s(kind, overlap_shared) -> None:
    g = template_graph(kind, overlap_shared)
    order = tuple(nx.topological_sort(g))
    assert template(kind, overlap_shared) == (order, tuple(tuple(g.predecessors(n)) for n in order))


def test_shared_experts_overlap_the_dispatch_on_the_critical_path() -> None:
    dur = {"attention": 1.0, "router": 1.0, "permute": 1.0, "dispatch": 5.0, "shared_experts": 2.0, "experts": 3.0,
           "combine": 1.0, "unpermute": 1.0}
    t_on, path_on = critical_path_s("moe", dur, overlap_shared=True)
    t_off, _ = critical_path_s("moe", dur, overlap_shared=False)
    assert t_on == 13.0 and t_off == 15.0 and "shared_experts" not in path_on
