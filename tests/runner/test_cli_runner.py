"""moesim calibrate / validate / bench-layer end to end on the CPU, interruption and resume, bad input.

Subprocess runs use ``python -m moesim.cli.main`` (the real exit codes and
signal handling); quick bad-input checks use the in-process ``run_cli`` fixture.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moesim.calib.grid import calibration_grid
from moesim.calib.store import read_measurements, sha256_file
from moesim.hardware import load_hardware

REPO = Path(__file__).resolve().parents[2]
MOESIM = [sys.executable, "-m", "moesim.cli.main"]

TINY_CASES = """
[[case]]
name = "grouped-zipf"
num_tokens = 96
d_model = 48
d_expert_ffn = 80
num_experts = 8
top_k = 2
routing = "zipf:1.2"
implementation = "grouped"
dtype = "fp32"

[[case]]
name = "padded-shared"
num_tokens = 96
d_model = 48
d_expert_ffn = 80
num_experts = 4
top_k = 1
routing = "uniform"
implementation = "padded"
capacity_factor = 1.0
num_shared_experts = 1
dtype = "fp32"

[[case]]
name = "loop-bf16-ep2"
num_tokens = 64
d_model = 48
d_expert_ffn = 80
num_experts = 4
top_k = 2
implementation = "loop"
dtype = "bf16"
ep_size = 2
"""


def moesim(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*MOESIM, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cal")
    out = d / "tiny-cpu.json"
    r = moesim("calibrate", "--device", "cpu", "--grid", "tiny", "--world-size", "2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["profile_path"] == str(out)
    return out


def test_tiny_calibration_writes_a_loadable_profile_with_provenance(tiny_profile):
    prof = load_hardware(tiny_profile)
    cal = prof.calibration
    assert prof.accelerator.kind == "cpu" and cal is not None
    meas = tiny_profile.with_name("tiny-cpu.measurements.jsonl")
    assert cal.measurements_file == meas.name
    assert cal.measurements_sha256 == sha256_file(meas)
    assert cal.library_versions["torch"] == torch.__version__
    assert cal.num_measurements == len(calibration_grid("cpu", "tiny", 2))
    assert {"matmul", "grouped_matmul", "memory", "all_to_all"} <= set(cal.fit_residuals)
    assert prof.node.scale_up_bandwidth_per_accelerator_bytes_per_s > 0  # fitted from the gloo all-to-all
    assert "measured" in prof.sources["accelerator.peak_flops_per_s.fp32"]
    assert cal.host["sentinel"]["fastest_s"] > 0  # the sentinel GEMM timed around each benchmark


def test_calibration_warns_of_benchmarks_measured_while_the_machine_ran_slow(tiny_profile, tmp_path):
    mf = read_measurements(tiny_profile.with_name("tiny-cpu.measurements.jsonl"))
    recs = [mf.header.model_dump(mode="json")] + [m.model_dump(mode="json") for m in mf.measurements]  # one per key
    timed = [r for r in recs if r.get("sentinel_s")]
    fastest = min(r["sentinel_s"] for r in timed)
    for r in timed:  # however the machine ran during the fixture's calibration: exactly one benchmark slow
        r["sentinel_s"] = fastest
    slow = timed[0]
    slow["sentinel_s"] = 2 * fastest
    meas, out = tmp_path / "p.measurements.jsonl", tmp_path / "p.json"
    meas.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = moesim("calibrate", "--device", "cpu", "--grid", "tiny", "--world-size", "2", "--out", str(out), "--resume",
               "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["num_measured_slow"] == 1 and summary["num_measured_again"] == 0
    assert any(w.startswith(f"1 of {summary['num_measurements']} benchmarks were measured while the machine ran "
                            "more than 15% slow") and slow["bench"]["kind"] in w for w in summary["warnings"])
    assert load_hardware(out).calibration.host["sentinel"]["num_measured_slow"] == 1


def test_validate_reports_every_case_with_json_out_dir_and_plot(tiny_profile, tmp_path):
    cases = tmp_path / "cases.toml"
    cases.write_text(TINY_CASES)
    out_dir, plot = tmp_path / "vout", tmp_path / "v.png"
    r = moesim("validate", "--device", "cpu", "--profile", str(tiny_profile), "--cases", str(cases),
               "--out", str(out_dir), "--plot", str(plot), "--json", "--target-s", "0.02")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [c["name"] for c in rep["cases"]] == ["grouped-zipf", "padded-shared", "loop-bf16-ep2"]
    for c in rep["cases"]:
        assert c["predicted_s"] > 0 and c["measured_s"] > 0
        assert c["error_frac"] == pytest.approx(c["predicted_s"] / c["measured_s"] - 1)
        assert set(c["predicted_by_stage_s"]) >= {"router", "dispatch", "experts", "combine"}
    assert rep["cases"][1]["predicted_by_stage_s"]["shared_experts"] > 0
    assert rep["cases"][2]["details"]["all_to_all"] in ("all_to_all_single", "all_to_all", "send_recv")
    errs = sorted(abs(c["error_frac"]) for c in rep["cases"])
    assert rep["median_abs_error_frac"] == pytest.approx(errs[1])
    assert rep["p90_abs_error_frac"] >= rep["median_abs_error_frac"]
    assert json.loads((out_dir / "validation.json").read_text())["cases"][0]["name"] == "grouped-zipf"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_layer_prints_measured_and_predicted(tiny_profile):
    r = moesim("bench-layer", "--profile", str(tiny_profile), "--num-tokens", "64", "--d-model", "32",
               "--d-expert-ffn", "48", "--num-experts", "4", "--top-k", "2", "--routing", "zipf:1", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["result"]
    assert res["measured_s"] > 0 and res["predicted_s"] > 0
    assert res["details"]["experts_backend"]
    text = moesim("bench-layer", "--profile", str(tiny_profile), "--num-tokens", "64", "--d-model", "32",
                  "--d-expert-ffn", "48", "--num-experts", "4")
    assert text.returncode == 0 and "predicted" in text.stdout and "measured" in text.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_calibration_keeps_measurements_and_the_old_profile_then_resumes(tmp_path, sig):
    out = tmp_path / "p.json"
    out.write_text('{"sentinel": "previous profile"}\n')
    meas = tmp_path / "p.measurements.jsonl"
    args = ["calibrate", "--grid", "tiny", "--world-size", "2", "--out", str(out)]
    # Ctrl-C at a terminal: the command gets SIGINT with its default action. A suite started in the background of
    # a non-interactive shell inherits SIGINT ignored (POSIX), and Python then leaves it ignored.
    proc = subprocess.Popen([*MOESIM, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if meas.exists() and meas.read_text().count("\n") >= 4:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert out.read_text() == '{"sentinel": "previous profile"}\n'
    kept = read_measurements(meas)
    assert len(kept.measurements) >= 3 and kept.header is not None
    # without --resume the existing measurements are refused (nothing written)
    r = moesim(*args)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert out.read_text() == '{"sentinel": "previous profile"}\n'
    r = moesim(*args, "--resume")
    assert r.returncode == 0, r.stderr
    done = read_measurements(meas)
    keys = [m.key for m in done.measurements]
    assert len(keys) == len(set(keys)) == len(calibration_grid("cpu", "tiny", 2))
    assert keys[: len(kept.measurements)] == [m.key for m in kept.measurements]
    assert load_hardware(out).calibration.measurements_sha256 == sha256_file(meas)


def test_calibration_killed_with_sigkill_keeps_a_readable_measurements_file_and_the_old_profile_then_resumes(tmp_path):
    """SIGKILL gives the process no chance to clean up: what it wrote must still be usable."""
    out = tmp_path / "p.json"
    out.write_text('{"sentinel": "previous profile"}\n')
    meas = tmp_path / "p.measurements.jsonl"
    args = ["calibrate", "--grid", "tiny", "--world-size", "2", "--out", str(out)]
    proc = subprocess.Popen([*MOESIM, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if meas.exists() and meas.read_text(errors="replace").count("\n") >= 4:
            break
        time.sleep(0.005)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out.read_text() == '{"sentinel": "previous profile"}\n'
    kept = read_measurements(meas)  # complete lines, at most one partial last line ignored
    assert kept.header is not None and len(kept.measurements) >= 3 and kept.num_bad_lines <= 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # the profile write never began
    r = moesim(*args, "--resume")
    assert r.returncode == 0, r.stderr
    done = read_measurements(meas)
    keys = [m.key for m in done.measurements]
    assert len(keys) == len(set(keys)) == len(calibration_grid("cpu", "tiny", 2)) and done.num_bad_lines == 0
    assert keys[: len(kept.measurements)] == [m.key for m in kept.measurements]
    assert load_hardware(out).calibration.measurements_sha256 == sha256_file(meas)


def test_resume_refuses_a_measurements_file_that_is_not_utf8_text(tmp_path):
    out, meas = tmp_path / "p.json", tmp_path / "p.measurements.jsonl"
    meas.write_bytes(b'{"kind": "env"}\n\xff\xfe\x00 binary\n')
    r = moesim("calibrate", "--grid", "tiny", "--world-size", "1", "--out", str(out), "--resume")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not UTF-8 text" in r.stderr, r.stderr
    assert not out.exists()


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written


def _one_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("cmd", [["calibrate", "--out", "{tmp}/p.json"], ["validate", "--profile", "h100-sxm"],
                                 ["bench-layer"]])
def test_device_cuda_without_a_gpu_is_refused(run_cli, tmp_path, cmd):
    line = _one_line(run_cli(*[c.format(tmp=tmp_path) for c in cmd], "--device", "cuda"))
    assert line.startswith("error: --device: cuda requested") and "--device cpu" in line
    assert not list(tmp_path.iterdir())


def test_a_datasheet_gpu_profile_cannot_validate_the_cpu(run_cli):
    line = _one_line(run_cli("validate", "--device", "cpu", "--profile", "h100-sxm"))
    assert "--profile" in line and "datasheet profile for a GPU" in line and "moesim calibrate --device cpu" in line


def test_a_profile_calibrated_on_cuda_cannot_validate_the_cpu(run_cli, tmp_path):
    raw = load_hardware("h100-sxm").model_dump(mode="json")
    raw["calibration"] = dict(base_profile="h100-sxm", device_name="NVIDIA H100 80GB HBM3", date_utc="2025-01-01",
                              measurements_file="m.jsonl", measurements_sha256="0" * 64, num_measurements=1)
    p = tmp_path / "h100-cal.json"
    p.write_text(json.dumps(raw))
    line = _one_line(run_cli("validate", "--device", "cpu", "--profile", str(p)))
    assert "calibrated on NVIDIA H100 80GB HBM3 for a GPU" in line and "--device is cpu" in line


@pytest.mark.parametrize("body, needle", [
    ('colour = "red"', "unknown key"),
    ("top_k = 9", "top_k (9) cannot exceed num_experts (8)"),
    ("ep_size = 3", "ep_size (3) must divide num_experts (8)"),
    ("num_tokens = 0", "num_tokens"),
])
def test_bad_cases_file_is_one_line_naming_the_file(run_cli, tmp_path, body, needle):
    base = {"name": '"x"', "num_tokens": "16", "d_model": "8", "d_expert_ffn": "8", "num_experts": "8", "top_k": "2"}
    key = body.split(" = ")[0]
    lines = [f"{k} = {v}" for k, v in base.items() if k != key] + [body]
    cases = tmp_path / "bad.toml"
    cases.write_text("[[case]]\n" + "\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    line = _one_line(run_cli("validate", "--profile", "local-cpu", "--cases", str(cases), "--out", str(out_dir)))
    assert str(cases) in line and needle in line
    assert not out_dir.exists()


def test_calibrate_refuses_a_non_json_output(run_cli, tmp_path):
    line = _one_line(run_cli("calibrate", "--out", str(tmp_path / "p.toml")))
    assert "--out" in line and ".json" in line


def test_calibrate_refuses_a_base_profile_of_another_device_kind(run_cli, tmp_path):
    line = _one_line(run_cli("calibrate", "--out", str(tmp_path / "p.json"), "--base", "h100-sxm"))
    assert "--base" in line and "GPU" in line
    assert not list(tmp_path.iterdir())


def test_validate_refuses_a_plot_that_is_not_png(run_cli, tmp_path):
    line = _one_line(run_cli("validate", "--profile", "local-cpu", "--plot", str(tmp_path / "v.jpg")))
    assert "--plot" in line and ".png" in line


def test_ep_cases_need_a_profile_with_a_fitted_link(run_cli, tmp_path):
    cases = tmp_path / "ep.toml"
    cases.write_text('[[case]]\nname = "ep"\nnum_tokens = 16\nd_model = 8\nd_expert_ffn = 8\nnum_experts = 4\n'
                     'top_k = 2\nep_size = 2\n')
    line = _one_line(run_cli("validate", "--profile", "local-cpu", "--cases", str(cases)))
    assert "--profile" in line and "link bandwidth" in line


@pytest.mark.parametrize("flags, needle", [
    (["--num-experts", "8", "--top-k", "9"], "top_k (9) cannot exceed num_experts (8)"),
    (["--num-experts", "8", "--ep-size", "3"], "ep_size (3) must divide num_experts (8)"),
    (["--num-tokens", "-5"], "--num-tokens"),
    (["--routing", "zipff:2"], "--routing"),
])
def test_bench_layer_bad_flags_name_the_flag(run_cli, flags, needle):
    assert needle in _one_line(run_cli("bench-layer", *flags))
