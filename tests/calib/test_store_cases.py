"""Measurements file (JSONL) robustness, cases files, the calibration grid and error summaries (no torch)."""

from __future__ import annotations

import json

import pytest

from moesim.calib.cases import load_cases, parse_cases
from moesim.calib.grid import CPU_NARROW_DTYPE_MAX_FLOPS, calibration_grid
from moesim.calib.records import EnvHeader, MatmulBench, Measurement, MemoryBench
from moesim.calib.routing import counts_per_rank, forced_experts
from moesim.calib.store import (
    SLOW_MACHINE_FRAC,
    append_record,
    measured_slow,
    read_measurements,
    repair_tail,
    sha256_file,
)
from moesim.calib.validation import error_summary
from moesim.data import scenarios_dir
from moesim.errors import InputError

DEFAULT_CASES = scenarios_dir() / "validation" / "default.toml"
CASE = dict(name="a", num_tokens=64, d_model=32, d_expert_ffn=48, num_experts=8, top_k=2)


def _meas(m: int = 8) -> Measurement:
    return Measurement(bench=MatmulBench(dtype="fp32", m=m, k=16, n=16), median_s=1e-5, p10_s=9e-6, p90_s=2e-5,
                       num_samples=5)


# ---------------------------------------------------------------- records and the JSONL file

def test_benchmark_flops_and_bytes_by_hand():
    b = MatmulBench(dtype="bf16", m=2, k=3, n=4)
    assert b.flops == 2 * 2 * 3 * 4
    assert b.bytes_moved == (2 * 3 + 3 * 4 + 2 * 4) * 2
    assert MemoryBench(op="copy", dtype="fp32", num_elements=10).bytes_moved == 80
    assert MemoryBench(op="scatter_add", dtype="fp32", num_elements=10).bytes_moved == 120


def test_records_round_trip_and_a_partial_last_line_is_ignored_then_repaired(tmp_path):
    p = tmp_path / "m.jsonl"
    append_record(p, EnvHeader(device="cpu", env={"device_name": "x"}))
    append_record(p, _meas(8))
    append_record(p, _meas(16))
    with open(p, "a") as f:
        f.write('{"record": "measurement", "bench": {"ki')  # killed mid-write
    mf = read_measurements(p)
    assert mf.header.env["device_name"] == "x"
    assert [m.bench.m for m in mf.measurements] == [8, 16]
    assert mf.num_bad_lines == 1
    assert repair_tail(p) > 0
    assert p.read_text().endswith("\n")
    append_record(p, _meas(32))
    assert [m.bench.m for m in read_measurements(p).measurements] == [8, 16, 32]
    assert len(sha256_file(p)) == 64


def _timed(m: int, median_s: float, sentinel_s: float | None) -> Measurement:
    return _meas(m).model_copy(update={"median_s": median_s, "p90_s": 2 * median_s, "sentinel_s": sentinel_s})


def test_a_benchmark_measured_again_keeps_the_record_whose_sentinel_ran_fastest_at_its_first_place(tmp_path):
    p = tmp_path / "m.jsonl"
    for rec in (_timed(8, 3e-5, 2.0e-4), _timed(16, 1e-5, 1.0e-4), _timed(8, 1e-5, 1.0e-4), _timed(8, 2e-5, 1.5e-4)):
        append_record(p, rec)
    mf = read_measurements(p)
    assert [(m.bench.m, m.median_s) for m in mf.measurements] == [(8, 1e-5), (16, 1e-5)]
    assert mf.num_superseded == 2
    assert mf.keys == {_meas(8).key, _meas(16).key}


def test_without_sentinels_the_later_record_of_a_key_wins(tmp_path):
    p = tmp_path / "m.jsonl"
    for rec in (_timed(8, 3e-5, None), _timed(8, 1e-5, None), _timed(16, 5e-5, 1e-4), _timed(16, 6e-5, None)):
        append_record(p, rec)
    got = {m.bench.m: m.median_s for m in read_measurements(p).measurements}
    assert got == {8: 1e-5, 16: 5e-5}  # a record with a sentinel is not replaced by one without


def test_measured_slow_flags_sentinels_past_the_threshold_over_the_fastest():
    ref = 1e-4
    ms = [_timed(8, 1e-5, ref), _timed(16, 1e-5, ref * (1 + SLOW_MACHINE_FRAC) * 0.99),
          _timed(32, 1e-5, ref * (1 + SLOW_MACHINE_FRAC) * 1.01), _timed(64, 1e-5, None)]
    assert [m.bench.m for m in measured_slow(ms)] == [32]
    assert [m.bench.m for m in measured_slow(ms, fastest_s=ref / 2)] == [8, 16, 32]  # against another run's fastest
    assert measured_slow([_timed(8, 1e-5, None)]) == []


def test_a_corrupt_line_in_the_middle_is_an_input_error(tmp_path):
    p = tmp_path / "m.jsonl"
    append_record(p, _meas(8))
    with open(p, "a") as f:
        f.write("not json\n")
    append_record(p, _meas(16))
    with pytest.raises(InputError, match="line 2"):
        read_measurements(p)


def test_grid_keys_are_unique_and_tiny_is_the_smallest():
    for device in ("cpu", "cuda"):
        sizes = {}
        for size in ("tiny", "quick", "full"):
            keys = [b.key for b in calibration_grid(device, size)]
            assert len(keys) == len(set(keys)), (device, size)
            sizes[size] = len(keys)
        assert sizes["tiny"] < sizes["quick"] < sizes["full"]
    assert not [b for b in calibration_grid("cpu", "full", world_size=1) if b.kind == "collective"]


# ---------------------------------------------------------------- cases


def test_bundled_cases_are_many_and_varied():
    cases = load_cases(DEFAULT_CASES)
    assert len(cases) >= 20
    assert {c.implementation for c in cases} == {"loop", "padded", "grouped"}
    assert len({c.num_tokens for c in cases}) >= 4
    assert len({c.d_model for c in cases}) >= 3
    assert len({c.num_experts for c in cases}) >= 3
    assert len({c.top_k for c in cases}) >= 3
    assert any(c.routing.startswith("zipf") for c in cases) and any(c.routing == "uniform" for c in cases)


def test_no_validation_gemm_is_a_calibration_shape():
    """Validation cases are never used for fitting: their expert and shared GEMM shapes are off the grid."""
    grid_shapes = set()
    for size in ("tiny", "quick", "full"):
        for b in calibration_grid("cpu", size):
            if b.kind == "matmul":
                grid_shapes.add((b.k, b.n))
            elif b.kind == "grouped_matmul":
                grid_shapes.add((b.k, b.n))
    for c in load_cases(DEFAULT_CASES):
        for kn in ((c.d_model, c.d_expert_ffn), (c.d_expert_ffn, c.d_model)):
            assert kn not in grid_shapes, (c.name, kn)


@pytest.mark.parametrize("change, needle", [
    ({"top_k": 9}, "top_k (9) cannot exceed num_experts (8)"),
    ({"ep_size": 3}, "ep_size (3) must divide num_experts (8)"),
    ({"num_tokens": 0}, "num_tokens"),
    ({"d_model": -4}, "d_model"),
    ({"colour": "red"}, "unknown key"),
    ({"routing": "zipff:1"}, "unknown distribution"),
    ({"implementation": "fast"}, "implementation"),
    ({"capacity_factor": 1.0}, "capacity_factor"),
])
def test_bad_cases_raise_one_line_naming_file_and_case(change, needle):
    with pytest.raises(InputError) as ei:
        parse_cases({"case": [CASE | change]}, "cases.toml")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("cases.toml: case[0] (a)") and needle in msg


def test_duplicate_names_and_empty_files_are_rejected():
    with pytest.raises(InputError, match="duplicate case name"):
        parse_cases({"case": [CASE, CASE]}, "c.toml")
    with pytest.raises(InputError, match="no \\[\\[case\\]\\]"):
        parse_cases({}, "c.toml")
    with pytest.raises(InputError, match="unknown top-level"):
        parse_cases({"case": [CASE], "cases": []}, "c.toml")


# ---------------------------------------------------------------- forced routing and error summary


def test_forced_routing_is_seeded_per_rank_and_counts_match():
    spec = parse_cases({"case": [CASE | {"ep_size": 2, "routing": "zipf:1.5"}]}, "c").pop().layer_spec()
    a = forced_experts(spec, "zipf:1.5", seed=3)
    b = forced_experts(spec, "zipf:1.5", seed=3)
    assert a.shape == (2, 64, 2) and (a == b).all() and not (a[0] == a[1]).all()
    counts = counts_per_rank(spec, a)
    assert counts.shape == (2, 8) and (counts.sum(axis=1) == 64 * 2).all()
    assert counts[:, 0].sum() > counts[:, 7].sum()  # expert 0 is the hottest under zipf


def test_expert_choice_counts_are_the_capacity():
    spec = parse_cases({"case": [CASE | {"router": "expert_choice", "capacity_factor": 1.0}]}, "c").pop().layer_spec()
    assert forced_experts(spec, "uniform") is None
    assert (counts_per_rank(spec, None) == spec.capacity).all()


def test_error_summary_median_and_p90_by_hand():
    med, p90 = error_summary([1.1, 0.8, 1.0, 1.3, 2.0], [1.0] * 5)
    assert med == pytest.approx(0.2)
    assert p90 == pytest.approx(0.3 + 0.6 * (1.0 - 0.3))  # numpy linear interpolation at rank 3.6


def test_measurement_json_names_carry_units():
    d = json.loads(_meas().model_dump_json())
    assert {"median_s", "p10_s", "p90_s", "num_samples"} <= set(d)


def test_case_classes_and_their_error_summary():
    from moesim.calib.validation import CaseResult, case_classes, class_summary

    layer = {"num_tokens": 32, "d_model": 1024, "d_expert_ffn": 256, "implementation": "loop", "dtype": "bf16",
             "num_shared_experts": 1, "routing": "zipf:1.2", "ep_size": 1}
    assert case_classes(layer) == ["decode", "fine_grained", "loop", "shared", "bf16", "skewed"]
    assert case_classes(layer | {"num_tokens": 4096, "d_expert_ffn": 4096, "implementation": "grouped",
                                 "dtype": "fp32", "num_shared_experts": 0, "routing": "uniform"}) == ["wide"]

    def case(name, err, **kw):
        return CaseResult(name=name, layer=layer | kw, predicted_s=1 + err, measured_s=1.0, measured_p10_s=1.0,
                          measured_p90_s=1.0, num_samples=5, error_frac=err, predicted_by_stage_s={},
                          measured_by_stage_s={}, tokens_per_expert_max=1, tokens_per_expert_mean=1.0)

    summary = class_summary([case("a", 0.1), case("b", -0.3), case("c", 0.05, num_tokens=512)])
    assert summary["decode"]["num_cases"] == 2 and summary["decode"]["median_abs_error_frac"] == pytest.approx(0.2)
    assert summary["loop"]["num_cases"] == 3 and summary["loop"]["median_abs_error_frac"] == pytest.approx(0.1)


def test_a_cpu_with_bf16_instructions_measures_bf16_gemms_on_the_whole_grid():
    def gemm_keys(dtype, **kw):
        return {b.key.replace(f":{dtype}:", ":") for b in calibration_grid("cpu", "quick", **kw)
                if b.kind in ("matmul", "grouped_matmul") and b.dtype == dtype}

    fp32 = gemm_keys("fp32")
    capped = gemm_keys("bf16")
    full = gemm_keys("bf16", cpu_bf16_instructions=True)
    assert capped < fp32 and full == fp32  # the same shapes as fp32 once bf16 is not the slow path
    assert max(b.flops for b in calibration_grid("cpu", "quick") if getattr(b, "dtype", "") == "bf16"
               and b.kind in ("matmul", "grouped_matmul")) <= CPU_NARROW_DTYPE_MAX_FLOPS["quick"]
