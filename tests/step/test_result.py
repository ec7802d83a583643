"""result.built: the same instance as pydantic's model_construct, faster."""

from __future__ import annotations

import moesim
from moesim.step.result import CostResult, Estimate, MemoryResult, OpTiming, built


def _state(m):  # noqa: ANN001, ANN202
    return (type(m), list(m.__dict__.items()), m.__pydantic_fields_set__, m.__pydantic_extra__,
            m.__pydantic_private__)


def test_built_equals_model_construct_with_every_field_given() -> None:
    est = moesim.estimate(moesim.load_scenario("mixtral-8x7b-serve-h100"))
    for obj in (est, est.memory, est.cost, est.ops[0]):
        values = dict(reversed(list(obj.__dict__.items())))  # declaration order must not come from the call
        a, b = built(type(obj), **values), type(obj).model_construct(**values)
        assert _state(a) == _state(b)
        assert a.model_dump_json() == b.model_dump_json()


def test_built_fills_defaults_and_leaves_them_out_of_the_fields_set() -> None:
    a = built(CostResult, usd_per_gpu_hour=None, gpu_hours_per_million_tokens=1.0, usd_per_million_tokens=None)
    b = CostResult.model_construct(usd_per_gpu_hour=None, gpu_hours_per_million_tokens=1.0, usd_per_million_tokens=None)
    assert _state(a) == _state(b)
    assert a.model_fields_set == {"usd_per_gpu_hour", "gpu_hours_per_million_tokens", "usd_per_million_tokens"}
    est = moesim.estimate(moesim.load_scenario("mixtral-8x7b-serve-h100"))
    values = {k: v for k, v in est.__dict__.items() if k != "notes"}
    a, b = built(Estimate, **values), Estimate.model_construct(**values)
    assert _state(a) == _state(b) and a.notes == [] and a.notes is not b.notes  # a fresh list from the factory


def test_built_ignores_unknown_names_like_model_construct() -> None:
    fields = dict(by_category_bytes={"weights": 1.0}, total_bytes=1.0, capacity_bytes=2.0, headroom_bytes=1.0,
                  fits=True, stage=0)
    a, b = built(MemoryResult, **fields, extra=3), MemoryResult.model_construct(**fields, extra=3)
    assert _state(a) == _state(b)
    c, d = built(OpTiming, kind="x"), OpTiming.model_construct(kind="x")
    assert _state(c) == _state(d)


def test_built_hands_out_scalar_defaults_like_model_construct() -> None:
    from moesim.scenario import Layout

    for fields in (dict(tp=8, pp=2, ep=4, etp=1, zero_stage=1, sequence_parallel=True), dict(tp=2), {}):
        a, b = built(Layout, **fields), Layout.model_construct(**fields)
        assert _state(a) == _state(b)
        assert a.model_dump_json() == b.model_dump_json()
