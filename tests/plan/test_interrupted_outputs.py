"""``plan --csv`` and ``sweep --csv`` killed with SIGKILL: never a half-written output file.

Outputs are written to a temporary name in the same folder and renamed
(moesim.io.atomic_write_bytes), so a reader sees the old file or the complete
new one. The kill lands at the worst moment: a child process slows ``fsync``
(the data is in the temporary file, the rename has not happened) and signals
when it gets there; other kills land at random points of the run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: runs the CLI with fsync slowed down: it touches MARKER once the output's bytes are in the temporary file
SLOW_WRITE = """
import os, sys, time, pathlib
marker = pathlib.Path(sys.argv[1])
real = os.fsync
def slow_fsync(fd):
    real(fd)
    marker.write_text("in the write")
    time.sleep(120)
os.fsync = slow_fsync
from moesim.cli.main import main
main(sys.argv[2:])
"""

COMMANDS = {
    "sweep": ["sweep", "mixtral-8x7b-serve-h100", "--vary", "workload.batch_size=1,8,64", "--vary", "layout.ep=1,8",
              "--json"],
    "plan": ["plan", "mixtral-8x7b-serve-h100", "--hardware", "h100-sxm", "--max-gpus", "8", "--top", "2", "--json"],
}
OLD = "previous,file\n1,2\n"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _complete_csv(text: str, first_column: str) -> list[dict[str, str]]:
    assert text.endswith("\n")
    rows = list(csv.DictReader(text.splitlines()))
    assert rows and list(rows[0])[0] == first_column and all(None not in r for r in rows)
    return rows


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_sigkill_during_the_csv_write_leaves_the_old_file(name, tmp_path):
    out, marker = tmp_path / "out.csv", tmp_path / "marker"
    out.write_text(OLD)
    args = [*COMMANDS[name], "--csv", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(marker), *args], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), proc.communicate(timeout=10)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert out.read_text() == OLD  # the rename never happened
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers[0].startswith(".out.csv.") and leftovers[0].endswith(".tmp")  # only the hidden temporary
    # a run that is not killed replaces it with the complete file
    r = subprocess.run([sys.executable, "-m", "moesim.cli.main", *args], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _complete_csv(out.read_text(), "workload.batch_size" if name == "sweep" else "hardware")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_sigkill_at_any_moment_leaves_no_file_or_a_complete_one(name, tmp_path):
    """Kills spread over the run: the output is absent (never started) or complete, never partial."""
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "moesim.cli.main", *COMMANDS[name], "--csv", str(tmp_path / "full.csv")],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    whole = time.monotonic() - start
    expected = (tmp_path / "full.csv").read_text()
    for i, frac in enumerate((0.2, 0.5, 0.8, 0.9, 0.95, 0.99)):
        out = tmp_path / f"out{i}.csv"
        proc = subprocess.Popen([sys.executable, "-m", "moesim.cli.main", *COMMANDS[name], "--csv", str(out)],
                                cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(whole * frac)
        proc.kill()
        proc.wait(timeout=30)
        if out.exists():
            assert out.read_text() == expected, f"kill at {frac:.0%} of the run left a partial {out.name}"
