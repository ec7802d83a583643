"""Warnings about the machine a runner command measures."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from moesim.runner.env import bf16_warning  # noqa: E402


def test_bf16_cases_on_a_cpu_without_bf16_instructions_are_warned_about():
    cpu = {"device_kind": "cpu", "cpu_bf16_instructions": False}
    assert "no bf16 instructions" in bf16_warning(cpu, {"fp32", "bf16"})
    assert bf16_warning(cpu, {"fp32"}) is None
    assert bf16_warning(cpu | {"cpu_bf16_instructions": True}, {"bf16"}) is None
    assert bf16_warning({"device_kind": "gpu"}, {"bf16"}) is None


def test_cpu_ranks_time_share_the_cpus_they_may_run_on(monkeypatch):
    import torch

    from moesim.calib.cases import ValidationCase
    from moesim.hardware import load_hardware
    from moesim.runner import validate

    case = ValidationCase(name="c", num_tokens=64, d_model=64, d_expert_ffn=64, num_experts=4, top_k=2, ep_size=2)
    prof = load_hardware("local-cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(validate, "available_cpus", lambda: 1)
    assert validate.compute_share(prof, case, "cpu") == (1.0, 1.0)  # two one-thread ranks take turns on one CPU
    monkeypatch.setattr(validate, "available_cpus", lambda: 2)
    assert validate.compute_share(prof, case, "cpu") == (1.0, None)  # one CPU each
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert validate.compute_share(prof, case, "cpu") == (0.5, None)  # one of the two calibrated threads each
    assert validate.compute_share(prof, case, "cuda") == (1.0, None)


def test_ranks_taking_turns_on_one_cpu_cost_their_total_work():
    import numpy as np

    from moesim.calib.layer_model import predict_layer
    from moesim.calib.layer_spec import MoELayerSpec
    from moesim.hardware import HardwareProfile, load_hardware

    raw = load_hardware("local-cpu").model_dump()
    raw["node"]["scale_up_bandwidth_per_accelerator_bytes_per_s"] = 2e9
    prof = HardwareProfile.model_validate(raw)
    spec = MoELayerSpec(num_tokens=256, d_model=128, d_expert_ffn=256, num_experts=4, top_k=2, ep_size=2)
    hot = np.array([[200, 200, 50, 62], [200, 200, 50, 62]])
    alone = predict_layer(prof, spec, hot)
    shared = predict_layer(prof, spec, hot, concurrent_ranks=1.0)
    assert shared.time_s == pytest.approx(sum(r.time_s for r in alone.ranks))
    assert alone.time_s < shared.time_s < 2 * alone.time_s


def test_the_busy_warning_reads_the_cpus_now_not_a_load_average_that_remembers_a_run_just_ended():
    from moesim.runner.env import load_warning

    quiet_now = {"num_cpus": 2, "load_average_1min": 1.2, "cpu_busy_now": {"busy_cpus": 0.05, "steal_frac": 0.0}}
    assert load_warning(quiet_now) is None
    busy = load_warning(quiet_now | {"cpu_busy_now": {"busy_cpus": 0.9, "steal_frac": 0.0}})
    assert "0.90 of 2 CPUs busy" in busy
    assert "stolen" in load_warning(quiet_now | {"cpu_busy_now": {"busy_cpus": 0.1, "steal_frac": 0.2}})
    # where /proc/stat is missing, the load average decides
    assert "load average 1.20" in load_warning({"num_cpus": 2, "load_average_1min": 1.2, "cpu_busy_now": None})
    assert load_warning({"num_cpus": 2, "load_average_1min": 0.3}) is None


def test_a_sample_of_proc_stat_counts_a_busy_cpu(tmp_path):
    import os
    import threading
    import time

    from moesim.runner.env import cpu_busy_now

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    stop = time.monotonic() + 0.6
    spin = threading.Thread(target=lambda: [None for _ in iter(lambda: time.monotonic() < stop, False)])
    spin.start()
    now = cpu_busy_now(0.3)
    spin.join()
    cpus = os.cpu_count() or 1
    assert now is not None and 0.0 <= now["steal_frac"] <= 1.0
    assert 0.5 <= now["busy_cpus"] <= cpus + 1e-9  # the spinning thread keeps about one CPU busy
