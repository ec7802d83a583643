"""validate's sentinel: cases measured while the machine ran slow are measured again, and a machine slower or
faster than at calibration is warned of."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from moesim.calib.cases import ValidationCase  # noqa: E402
from moesim.calib.validation import CaseResult  # noqa: E402
from moesim.hardware import HardwareProfile, load_hardware  # noqa: E402
from moesim.runner import validate as validate_mod  # noqa: E402

CASES = [ValidationCase(name=n, num_tokens=64, d_model=64, d_expert_ffn=64, num_experts=4, top_k=2)
         for n in ("a", "b", "c")]


def _result(case: ValidationCase, measured_s: float) -> CaseResult:
    return CaseResult(name=case.name, layer=case.model_dump(exclude={"name"}), predicted_s=1e-3, measured_s=measured_s, measured_p10_s=measured_s,
                      measured_p90_s=measured_s, num_samples=5, error_frac=1e-3 / measured_s - 1.0,
                      predicted_by_stage_s={}, measured_by_stage_s={}, tokens_per_expert_max=1,
                      tokens_per_expert_mean=1.0)


def _run(monkeypatch, slow_tries: dict[str, int]) -> tuple[object, list[str]]:
    """Validate CASES on a fake machine: case ``n`` runs 1.5x slow (layer and sentinel) its first
    ``slow_tries[n]`` times; returns the report and the order the cases ran in."""
    calls: list[str] = []
    state = {"slow": False}

    def run_case(case, profile, device, *, target_s):
        calls.append(case.name)
        state["slow"] = calls.count(case.name) <= slow_tries.get(case.name, 0)
        return _result(case, 1.5e-3 if state["slow"] else 1e-3)

    def sentinel(self):  # the sentinel right after a slow case sees the slow machine
        t = 1.5e-4 if state["slow"] else 1e-4
        state["slow"] = False
        return t

    monkeypatch.setattr(validate_mod, "run_case", run_case)
    monkeypatch.setattr(validate_mod.Sentinel, "__call__", sentinel)
    report = validate_mod.run_validation(CASES, load_hardware("local-cpu"), "cpu", cases_file="f.toml",
                                         env={"device_name": "x", "num_threads": 1}, warnings=[])
    return report, calls


def test_a_case_measured_while_the_machine_ran_slow_is_measured_again_and_the_fast_measurement_kept(monkeypatch):
    report, calls = _run(monkeypatch, {"b": 1})
    assert calls == ["a", "b", "c", "b"]
    assert [c.measured_s for c in report.cases] == [1e-3, 1e-3, 1e-3]
    assert [c.sentinel_s for c in report.cases] == [1e-4] * 3
    assert (report.num_measured_again, report.num_measured_slow) == (1, 0)
    assert report.sentinel_fastest_s == 1e-4 and report.warnings == []
    assert report.median_abs_error_frac == pytest.approx(0.0)


def test_a_case_slow_through_every_retry_stops_after_the_passes_and_is_warned_of(monkeypatch):
    assert validate_mod.REMEASURE_PASSES == 2
    report, calls = _run(monkeypatch, {"c": 99})
    assert calls == ["a", "b", "c", "c", "c"]
    assert report.cases[2].measured_s == 1.5e-3 and report.cases[2].sentinel_s == 1.5e-4
    assert (report.num_measured_again, report.num_measured_slow) == (1, 1)
    assert len(report.warnings) == 1 and "1 case(s)" in report.warnings[0] and report.warnings[0].endswith(": c")


def test_a_quiet_machine_measures_each_case_once(monkeypatch):
    report, calls = _run(monkeypatch, {})
    assert calls == ["a", "b", "c"]
    assert (report.num_measured_again, report.num_measured_slow) == (0, 0)


def _calibrated(fastest_s: float | None, threads: int = 1) -> HardwareProfile:
    raw = load_hardware("local-cpu").model_dump()
    host = {"num_threads": threads} | ({"sentinel": {"fastest_s": fastest_s}} if fastest_s else {})
    raw["calibration"] = {"base_profile": "local-cpu", "device_name": "cpu X", "date_utc": "2026-12-04T00:00:00Z",
                          "host": host, "measurements_file": "m.jsonl", "measurements_sha256": "0" * 64,
                          "num_measurements": 1}
    return HardwareProfile.model_validate(raw)


def test_a_machine_slower_or_faster_than_at_calibration_is_warned_of():
    warn = validate_mod.calibration_speed_warning
    prof = _calibrated(1e-4)
    assert "30% slower" in warn(prof, "cpu X", 1, 1.3e-4)
    assert "faster" in warn(prof, "cpu X", 1, 0.8e-4)
    assert warn(prof, "cpu X", 1, 1.1e-4) is None  # within SLOW_MACHINE_FRAC
    assert warn(prof, "cpu X", 2, 1.3e-4) is None  # other thread count: not comparable
    assert warn(prof, "cpu Y", 1, 1.3e-4) is None  # another device model (warned of elsewhere)
    assert warn(_calibrated(None), "cpu X", 1, 1.3e-4) is None  # a profile from before the sentinel
    assert warn(load_hardware("local-cpu"), "cpu X", 1, 1.3e-4) is None  # not calibrated
    for odd in ("fast", -1.0, True, None, {"s": 1}):  # free-form provenance that is not a sentinel time
        raw = prof.model_dump()
        raw["calibration"]["host"]["sentinel"] = {"fastest_s": odd}
        assert warn(HardwareProfile.model_validate(raw), "cpu X", 1, 1.3e-4) is None
    raw = prof.model_dump()
    raw["calibration"]["host"]["sentinel"] = "fast"
    assert warn(HardwareProfile.model_validate(raw), "cpu X", 1, 1.3e-4) is None
