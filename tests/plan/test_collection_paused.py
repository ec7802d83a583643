"""The cyclic collector is paused for a search and restored after it (moesim.caches.collection_paused)."""

import gc

import pytest

from moesim.caches import collection_paused
from moesim.plan.search import Constraints, plan
from moesim.plan.sweep import sweep


@pytest.fixture
def gc_state():
    was = gc.isenabled()
    yield
    gc.enable() if was else gc.disable()


def test_paused_inside_restored_after(gc_state):
    gc.enable()
    with collection_paused():
        assert not gc.isenabled()
        with collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause found it paused and leaves it so
    assert gc.isenabled()


def test_restored_when_the_body_raises(gc_state):
    gc.enable()
    with pytest.raises(ZeroDivisionError):
        with collection_paused():
            1 / 0
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled(gc_state):
    gc.disable()
    with collection_paused():
        pass
    assert not gc.isenabled()


def test_plan_and_sweep_run_paused_and_restore(gc_state, monkeypatch):
    import moesim.plan.search as search

    seen = []
    real = search._train_candidates

    def spy(*a, **k):
        seen.append(gc.isenabled())
        return real(*a, **k)

    monkeypatch.setattr(search, "_train_candidates", spy)
    gc.enable()
    plan("mixtral-8x22b-train-h100", hardware=["h100-sxm"], constraints=Constraints(max_gpus=64), objective="throughput")
    assert seen and not any(seen)
    assert gc.isenabled()
    res = sweep("mixtral-8x7b-serve-h100", {"workload.batch_size": [1, 8]},
                progress=lambda done, total: seen.append(gc.isenabled()))
    assert res.num_points == 2 and seen[-2:] == [False, False]
    assert gc.isenabled()
