"""Predict and measure validation cases (the work behind ``moesim validate`` and ``bench-layer``).

A shared machine has slow periods that cover a whole case (a busy SMT
sibling, hypervisor steal): the case is measured slow and the model looks
optimistic. As in calibration (:mod:`.calibrate`), the :class:`.timing.Sentinel`
GEMM is timed right before and right after each case; after all cases, those
whose sentinel took more than ``1 + SLOW_MACHINE_FRAC`` times the run's fastest
are measured again (up to ``REMEASURE_PASSES`` passes) and the measurement whose
sentinel ran fastest is kept. The run's fastest sentinel is also set against the
calibration's (same device kind and thread count): a machine slower or faster
than when the profile was calibrated is warned of, since every case then
measures a different machine from the one the profile describes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from moesim.calib.cases import ValidationCase
from moesim.calib.layer_model import predict_layer
from moesim.calib.routing import counts_per_rank, forced_experts
from moesim.calib.store import SLOW_MACHINE_FRAC, fastest_sentinel_s, measured_slow
from moesim.calib.validation import CaseResult, ValidationReport, class_summary, error_summary, stage_dict
from moesim.hardware import HardwareProfile

from .cases import measure_case
from .timing import REMEASURE_PASSES, Sentinel, measure_guarded

__all__ = ["REMEASURE_PASSES", "Sentinel", "calibration_speed_warning", "run_case", "run_validation"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset``), else the machine's count."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def compute_share(profile: HardwareProfile, case: ValidationCase, device: str) -> tuple[float, float | None]:
    """(share of the calibrated device one EP rank's threads get, ranks that can run at once).

    GPU ranks own a GPU: (1, None). CPU ranks split the threads (``threads // ep`` each, at least one):
    ``share = min(1, per_rank / calibrated_threads)``; when more threads run than the CPUs the processes
    may use, only ``cpus / per_rank`` ranks run at once and the others wait their turn (the layer is then
    bound by the ranks' total work over those slots; see :func:`moesim.calib.layer_model.predict_layer`).
    """
    if device == "cuda" or case.ep_size == 1:
        return 1.0, None
    threads = torch.get_num_threads()
    per_rank = max(1, threads // case.ep_size)
    calibrated = threads
    if profile.calibration is not None:
        calibrated = int(profile.calibration.host.get("num_threads", threads) or threads)
    slots = available_cpus() / per_rank
    return min(1.0, per_rank / max(calibrated, 1)), (slots if slots < case.ep_size else None)


def run_case(case: ValidationCase, profile: HardwareProfile, device: str, *, target_s: float = 0.3) -> CaseResult:
    spec = case.layer_spec()
    forced = forced_experts(spec, case.routing, seed=case.seed, source=f"case {case.name}: routing")
    counts = counts_per_rank(spec, forced)
    share, slots = compute_share(profile, case, device)
    pred = predict_layer(profile, spec, counts, compute_share=share, concurrent_ranks=slots)
    meas = measure_case(spec, forced, device, seed=case.seed, target_s=target_s)
    per_expert = counts.sum(axis=0)
    return CaseResult(
        name=case.name,
        layer=case.model_dump(exclude={"name"}),
        predicted_s=pred.time_s,
        measured_s=meas.median_s,
        measured_p10_s=meas.p10_s,
        measured_p90_s=meas.p90_s,
        num_samples=meas.num_samples,
        error_frac=pred.time_s / meas.median_s - 1.0,
        predicted_by_stage_s=stage_dict(pred),
        predicted_by_op_s=pred.by_op_s,
        measured_by_stage_s=meas.by_stage_s,
        tokens_per_expert_max=int(per_expert.max()),
        tokens_per_expert_mean=float(np.mean(per_expert)),
        num_dropped=meas.num_dropped,
        details=meas.details,
    )


def calibration_speed_warning(profile: HardwareProfile, device_name: str, num_threads: int,
                              fastest_s: float | None) -> str | None:
    """A warning when this run's fastest sentinel differs from the calibration's by more than SLOW_MACHINE_FRAC
    (same device model and thread count; otherwise the two are not comparable), else None."""
    cal = profile.calibration
    if fastest_s is None or cal is None or cal.device_name != device_name:
        return None
    host = cal.host or {}
    sent = host.get("sentinel")
    ref = sent.get("fastest_s") if isinstance(sent, dict) else None
    threads = host.get("num_threads")
    # host is free-form provenance: anything but a positive number and the same thread count is not comparable
    if not isinstance(ref, (int, float)) or isinstance(ref, bool) or not ref > 0 or threads != num_threads:
        return None
    ratio = fastest_s / float(ref)
    if ratio > 1 + SLOW_MACHINE_FRAC:
        return (f"the sentinel GEMM ran {ratio - 1:.0%} slower than when the profile was calibrated "
                f"({fastest_s * 1e6:.0f} vs {float(ref) * 1e6:.0f} us at best): this machine is slower now "
                "(or another one), and every case measures that")
    if ratio < 1 / (1 + SLOW_MACHINE_FRAC):
        return (f"the sentinel GEMM ran {1 - ratio:.0%} faster than when the profile was calibrated "
                f"({fastest_s * 1e6:.0f} vs {float(ref) * 1e6:.0f} us at best): the calibration ran on a slow "
                "machine (or another one)")
    return None


def run_validation(
    cases: list[ValidationCase], profile: HardwareProfile, device: str, *, cases_file: str, env: dict,
    warnings: list[str], target_s: float = 0.3, progress: Callable[[int, int, str], None] | None = None,
) -> ValidationReport:
    """Predict and measure every case; cases measured while the machine ran slow are measured again (module
    docstring)."""
    t0 = time.perf_counter()
    def before(i: int, again: tuple[int, int] | None) -> None:
        if not progress:
            return
        if again is None:
            progress(i, len(cases), cases[i].name)
        else:
            progress(len(cases), len(cases), f"again, machine was slow ({again[0] + 1}/{again[1]}): {cases[i].name}")

    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    results, again = measure_guarded(cases, lambda c: run_case(c, profile, device, target_s=target_s), dev,
                                     before=before)
    if progress:
        progress(len(cases), len(cases), "")
    fastest = fastest_sentinel_s(results)
    still_slow = measured_slow(results, fastest)
    warnings = list(warnings)
    if still_slow:
        warnings.append(f"{len(still_slow)} case(s) measured while the machine ran more than {SLOW_MACHINE_FRAC:.0%} "
                        f"slow (by the sentinel GEMM around them, up to {REMEASURE_PASSES + 1} tries): "
                        + ", ".join(r.name for r in still_slow))
    cw = calibration_speed_warning(profile, str(env.get("device_name", "")),
                                   int(env.get("num_threads", torch.get_num_threads())), fastest)
    if cw:
        warnings.append(cw)
    med, p90 = error_summary([r.predicted_s for r in results], [r.measured_s for r in results])
    return ValidationReport(
        device=device, device_name=str(env.get("device_name", "")), profile=profile.name,
        profile_calibrated_on=profile.calibration.device_name if profile.calibration else None,
        cases_file=cases_file, cases=results, median_abs_error_frac=med, p90_abs_error_frac=p90,
        by_class=class_summary(results),
        elapsed_s=time.perf_counter() - t0, env=env, warnings=warnings,
        sentinel_fastest_s=fastest, num_measured_again=len(again), num_measured_slow=len(still_slow),
    )
