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


def test_shared_experts_under_the_dispatch_run_on_the_sms_it_leaves():
    from moesim.step.schedule import critical_path_s, shared_under_dispatch

    s = 0.15
    # hidden: W / (1 - s) <= d, the dispatch sets the pace
    assert shared_under_dispatch(0.5, 1.0, s) == pytest.approx(0.5 / 0.85)
    # longer than the dispatch: slowed while it is in flight, full speed after
    assert shared_under_dispatch(2.0, 1.0, s) == pytest.approx(2.0 + 0.15 * 1.0)
    assert shared_under_dispatch(2.0, 0.0, s) == 2.0  # nothing in flight (EP 1)
    assert shared_under_dispatch(2.0, 1.0, 0.0) == 2.0
    d = {"attention": 1.0, "router": 0.1, "permute": 0.1, "dispatch": 1.0, "shared_experts": 2.0, "experts": 3.0,
         "combine": 1.0, "unpermute": 0.1}
    t0, _ = critical_path_s("moe", d, overlap_shared=True, overlap_slowdown_frac=0.0)
    t1, path = critical_path_s("moe", d, overlap_shared=True, overlap_slowdown_frac=s)
    assert t1 - t0 == pytest.approx(0.15 * 1.0)
    assert "shared_experts" in path
    # the array path gives the same
    import numpy as np

    from moesim.step.schedule import critical_path_time

    arr = {k: np.array([v, v]) for k, v in d.items()}
    assert critical_path_time("moe", arr, overlap_shared=True, overlap_slowdown_frac=s) == pytest.approx([t1, t1])
