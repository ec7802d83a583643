"""Speed of one estimate and of a 1000-configuration sweep, against a baseline measured in the same run.

Every figure goes through the public API, as a planning script calls it:

* ``moesim.estimate(sc)`` on a scenario loaded once (``sc = moesim.load_scenario(name)``), warm (median of
  ``--repeats`` calls after one call): the default scenario (Mixtral-8x7B serving on 8x H100), DeepSeek-V3
  decode on H800 and DeepSeek-V3 training on 2048 H800;
* a 1000-configuration Mixtral-8x7B serving sweep (10 batch sizes x 10 prompt lengths x 10 TP/EP/ETP
  layouts), once as ``moesim.load_scenario(name, overrides)`` + ``moesim.estimate(sc)`` per configuration and
  once as one ``moesim.sweep`` call over the same grid (a fresh process each, so the caches start empty), and
  that call plus reading every point's full estimate afterwards (``point.estimate``: built on first access where
  the sweep timed the batch sizes together);
* ``moesim estimate --json`` (default scenario, and DeepSeek-V3 training) as a cold process, with both trees
  byte-compiled first (``python -m compileall``, what pip does on install: a cold process then reads .pyc files
  as an installed moesim does, rather than compiling every module again).

Times are CPU seconds (``time.process_time``; for the cold commands the child's user + system time), the
time the same work takes on an idle core: on a core shared with other processes wall-clock figures
stretch with the load and say nothing about the code.

The baseline is the same measurement run on another commit of this repository (``--baseline``, default
the last commit before the speed work), unpacked with ``git archive`` into a temporary folder and
imported from there: both columns come from this run on this machine, so the ratio
(baseline / current, > 1 is faster) holds however loaded the machine is. ``--baseline none`` skips it.
The targets are issue 13's. Run it pinned to one core:

    taskset -c 0 python benchmarks/bench_estimate.py [--repeats 200] [--baseline REF] [--rounds N]

The two trees run interleaved, group by group, and ``--rounds`` repeats the whole set (each figure the
median), so drift of a shared machine during the run does not land on one column.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "d29cce4"  # the last commit before the speed work (issue 13)
SWEEP_BASE = "mixtral-8x7b-serve-h100"
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
PROMPTS = [128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
LAYOUTS = [{"tp": 1, "ep": 1, "etp": 1}, {"tp": 1, "ep": 2, "etp": 1}, {"tp": 1, "ep": 4, "etp": 1},
           {"tp": 1, "ep": 8, "etp": 1}, {"tp": 2, "ep": 2, "etp": 1}, {"tp": 2, "ep": 8, "etp": 1},
           {"tp": 4, "ep": 4, "etp": 1}, {"tp": 4, "ep": 8, "etp": 1}, {"tp": 8, "ep": 1, "etp": 8},
           {"tp": 8, "ep": 8, "etp": 1}]

#: (key, label, unit, target or None); the unit scales seconds for printing
FIGURES = [
    ("warm_default_s", "moesim.estimate(sc), default scenario, warm", "ms", 0.1e-3),
    ("warm_decode_s", "moesim.estimate(sc), deepseek-v3-decode-h800, warm", "ms", None),
    ("warm_train_s", "moesim.estimate(sc), deepseek-v3-train-h800, warm", "ms", 0.2e-3),
    ("first_train_s", "moesim.estimate(sc), deepseek-v3-train-h800, first call", "ms", None),
    ("sweep_public_s", "1000 configs: load_scenario + estimate each (cold process)", "s", 0.5),
    ("sweep_public_warm_s", "  the same 1000 again in that process", "s", None),
    ("sweep_api_s", "1000 configs: one moesim.sweep (cold process)", "s", 0.2),
    ("sweep_api_estimates_s", "  the sweep and then every point's full estimate read", "s", None),
    ("cli_default_s", "`moesim estimate --json` cold process, default scenario", "s", 0.4),
    ("cli_train_s", "`moesim estimate deepseek-v3-train-h800 --json` cold process", "s", None),
]


def _clock() -> float:
    """CPU seconds of this process: on a core shared with other work, what the same run takes on an idle core."""
    return time.process_time()


def _grid_overrides() -> list[list[str]]:
    out = []
    for lay in LAYOUTS:
        for p in PROMPTS:
            for b in BATCHES:
                out.append([f"layout.tp={lay['tp']}", f"layout.ep={lay['ep']}", f"layout.etp={lay['etp']}",
                            f"workload.prompt_tokens={p}", f"workload.batch_size={b}"])
    return out


def _warm(name: str, repeats: int) -> tuple[float, float]:
    import moesim

    sc = moesim.load_scenario(name)
    t = _clock()
    moesim.estimate(sc)
    first = _clock() - t
    times = []
    for _ in range(repeats):
        t = _clock()
        moesim.estimate(sc)
        times.append(_clock() - t)
    return statistics.median(times), first


def _sweep_public() -> dict[str, float]:
    import moesim

    grid = _grid_overrides()
    moesim.estimate  # noqa: B018 - imports the step model outside the timed region
    out = {}
    for key in ("sweep_public_s", "sweep_public_warm_s"):
        t = _clock()
        for ov in grid:
            try:
                moesim.estimate(moesim.load_scenario(SWEEP_BASE, ov))
            except moesim.InputError:
                pass
        out[key] = _clock() - t
    return out


def _sweep_api() -> dict[str, float]:
    import moesim

    sc = moesim.load_scenario(SWEEP_BASE)
    sweep = moesim.sweep  # imports the sweep and the step model outside the timed region
    t = _clock()
    res = sweep(sc, {"layout": LAYOUTS, "workload.prompt_tokens": PROMPTS, "workload.batch_size": BATCHES})
    dt = _clock() - t
    assert res.num_points == 1000
    # what a script pays that reads every point's full estimate too (built on first access where the batch
    # sizes were timed together; already there otherwise)
    t = _clock()
    for p in res.points:
        p.estimate  # noqa: B018
    return {"sweep_api_s": dt, "sweep_api_estimates_s": dt + _clock() - t}


def _cold_cli(args: list[str], runs: int) -> float:
    """Median CPU seconds (user + system) of ``moesim estimate ARGS --json`` as a fresh process."""
    import resource

    times = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "moesim.cli.main", "estimate", *args, "--json"], check=True,
                       stdout=subprocess.DEVNULL, env=os.environ.copy())
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(times)


def measure(part: str, repeats: int) -> dict[str, float]:
    """One group of figures, in this process (the parent runs each group in a fresh process)."""
    if part == "warm":
        d, _ = _warm(SWEEP_BASE, repeats)
        dec, _ = _warm("deepseek-v3-decode-h800", repeats)
        tr, first = _warm("deepseek-v3-train-h800", repeats)
        return {"warm_default_s": d, "warm_decode_s": dec, "warm_train_s": tr, "first_train_s": first}
    if part == "sweep_public":
        return _sweep_public()
    if part == "sweep_api":
        return _sweep_api()
    if part == "cli":
        return {"cli_default_s": _cold_cli([], 5), "cli_train_s": _cold_cli(["deepseek-v3-train-h800"], 3)}
    raise SystemExit(f"unknown part {part}")


def compile_tree(tree: Path) -> None:
    """Byte-compile ``tree``'s package as pip does on install, so that a cold process of either tree reads .pyc
    files as an installed moesim does (with PYTHONDONTWRITEBYTECODE set, as the runs below set it, a checkout
    would compile every module from source in every cold process)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "moesim")], check=True,
                   stdout=subprocess.DEVNULL)


PARTS = ("warm", "sweep_public", "sweep_api", "cli")


def run_part(tree: Path, part: str, repeats: int) -> dict[str, float]:
    """One group of figures with ``moesim`` imported from ``tree``, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run([sys.executable, __file__, "--measure", part, "--repeats", str(repeats)], env=env,
                         cwd=tree, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_trees(trees: list[Path], repeats: int, rounds: int) -> list[dict[str, float]]:
    """Every figure for each tree, the trees interleaved group by group (so a machine that slows down during the
    run slows both columns alike), each figure the median over ``rounds`` rounds."""
    for tree in trees:
        compile_tree(tree)
    samples: list[dict[str, list[float]]] = [{} for _ in trees]
    for _ in range(rounds):
        for part in PARTS:
            for tree, out in zip(trees, samples):
                for k, v in run_part(tree, part, repeats).items():
                    out.setdefault(k, []).append(v)
    return [{k: statistics.median(v) for k, v in out.items()} for out in samples]


def unpack(ref: str, into: Path) -> Path:
    """``ref`` of this repository as files under ``into`` (read-only for the repository: ``git archive``)."""
    arch = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=arch.stdout, check=True)
    return into


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.3f} ms" if unit == "ms" else f"{v:.3f} s"


def report(cur: dict[str, float], base: dict[str, float] | None, ref: str) -> None:
    head = f"{'figure':<62} {'current':>11} {'baseline':>11} {'ratio':>7} {'target':>10}  met"
    print(f"baseline: commit {ref}" if base else "baseline: none")
    print(head)
    for key, label, unit, target in FIGURES:
        c = cur.get(key)
        b = base.get(key) if base else None
        ratio = f"{b / c:6.1f}x" if (b and c) else "-"
        met = "" if target is None else ("yes" if c is not None and c <= target else "no")
        print(f"{label:<62} {_fmt(c, unit):>11} {_fmt(b, unit):>11} {ratio:>7} {_fmt(target, unit):>10}  {met}")
    print("CPU seconds on one core; ratio = baseline / current (> 1: faster than the baseline); targets from issue 13")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit to compare with, or 'none'")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every figure; each figure is their median")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeats)))
        return
    if args.baseline == "none":
        report(run_trees([REPO], args.repeats, args.rounds)[0], None, args.baseline)
        return
    with tempfile.TemporaryDirectory(prefix="moesim-baseline-") as tmp:
        cur, base = run_trees([REPO, unpack(args.baseline, Path(tmp))], args.repeats, args.rounds)
    report(cur, base, args.baseline)


if __name__ == "__main__":
    main()
