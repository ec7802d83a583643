"""Speed of capacity planning, against a baseline measured in the same run.

* ``plan`` for DeepSeek-V3 training on H800 + H100 up to 2048 GPUs (throughput objective): wall time and
  timed candidates per second, in a fresh process (empty caches: the expert-load draws, topologies and
  collectives are computed in the timed region), then the same plan again in that process (warm);
* ``plan`` for DeepSeek-V3 serving over every shipped GPU profile up to 512 GPUs, the same way.

Times are CPU seconds of the ``plan`` call (``time.process_time``), the time it takes on an idle core (on
a shared core wall-clock figures stretch with the load); candidates per second are timed candidates over
that whole call. The baseline is the same measurement on another commit of this repository (``--baseline``, default the
last commit before the speed work), unpacked with ``git archive`` into a temporary folder and imported from
there, so both columns come from this run on this machine; ratio = baseline / current (> 1 is faster; for
candidates per second, current / baseline). ``--baseline none`` skips it. Targets are issue 13's. Run it
pinned to one core:

    taskset -c 0 python benchmarks/bench_plan.py [--baseline REF] [--rounds N]

The two trees run interleaved, plan by plan; ``--rounds`` repeats the set and reports each figure's median.
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

from bench_estimate import DEFAULT_BASELINE, REPO, unpack

#: (key, label, unit, target, higher is better)
FIGURES = [
    ("train_cold_s", "plan deepseek-v3-train-h800, h800 + h100-sxm, <= 2048 GPUs: CPU", "s", 3.0, False),
    ("train_cold_cps", "  timed candidates per second", "/s", 10_000.0, True),
    ("train_warm_s", "  the same plan again in that process: CPU", "s", None, False),
    ("train_warm_cps", "  timed candidates per second", "/s", None, True),
    ("serve_cold_s", "plan deepseek-v3-serve-h200, every GPU profile, <= 512 GPUs: CPU", "s", 3.0, False),
    ("serve_cold_cps", "  timed candidates per second", "/s", None, True),
    ("serve_warm_s", "  the same plan again in that process: CPU", "s", None, False),
]


def _plan(kind: str) -> dict[str, float]:
    from moesim.plan.search import Constraints, plan

    if kind == "train":
        args = dict(hardware=["h800", "h100-sxm"], constraints=Constraints(max_gpus=2048), objective="throughput")
        name = "deepseek-v3-train-h800"
    else:
        args = dict(constraints=Constraints(max_gpus=512))
        name = "deepseek-v3-serve-h200"
    out = {}
    for run in ("cold", "warm"):
        t = time.process_time()
        r = plan(name, **args)
        cpu = time.process_time() - t
        out[f"{kind}_{run}_s"] = cpu
        out[f"{kind}_{run}_cps"] = r.num_timed / cpu  # over the whole call, setup included
        out[f"{kind}_timed"] = r.num_timed
    return out


def run_kind(tree: Path, kind: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run([sys.executable, __file__, "--measure", kind], env=env, cwd=tree, check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_trees(trees: list[Path], rounds: int) -> list[dict[str, float]]:
    """Every figure for each tree, the trees interleaved plan by plan, each figure the median over ``rounds``."""
    samples: list[dict[str, list[float]]] = [{} for _ in trees]
    for _ in range(rounds):
        for kind in ("train", "serve"):
            for tree, out in zip(trees, samples):
                for k, v in run_kind(tree, kind).items():
                    out.setdefault(k, []).append(v)
    return [{k: statistics.median(v) for k, v in out.items()} for out in samples]


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}/s" if unit == "/s" else f"{v:.2f} s"


def report(cur: dict[str, float], base: dict[str, float] | None, ref: str) -> None:
    print(f"baseline: commit {ref}" if base else "baseline: none")
    print(f"timed candidates: train {cur.get('train_timed', 0):,}, serve {cur.get('serve_timed', 0):,}"
          + (f" (baseline {base.get('train_timed', 0):,}, {base.get('serve_timed', 0):,})" if base else ""))
    print(f"{'figure':<68} {'current':>11} {'baseline':>11} {'ratio':>7} {'target':>10}  met")
    for key, label, unit, target, higher in FIGURES:
        c = cur.get(key)
        b = base.get(key) if base else None
        ratio = "-" if not (b and c) else f"{(c / b if higher else b / c):6.1f}x"
        met = "" if target is None else ("yes" if c is not None and (c >= target if higher else c <= target) else "no")
        print(f"{label:<68} {_fmt(c, unit):>11} {_fmt(b, unit):>11} {ratio:>7} {_fmt(target, unit):>10}  {met}")
    print("CPU seconds on one core; ratio > 1: faster than the baseline; targets from issue 13")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit to compare with, or 'none'")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every figure; each figure is their median")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(_plan(args.measure)))
        return
    if args.baseline == "none":
        report(run_trees([REPO], args.rounds)[0], None, args.baseline)
        return
    with tempfile.TemporaryDirectory(prefix="moesim-baseline-") as tmp:
        cur, base = run_trees([REPO, unpack(args.baseline, Path(tmp))], args.rounds)
    report(cur, base, args.baseline)


if __name__ == "__main__":
    main()
