"""Speed of one estimate (issue: step model).

Prints the median in-process time of a full ``estimate_resolved`` for DeepSeek-V3
training on 2048 H800 (load model included: first call cold, then warm with its
caches), and the wall time of ``moesim estimate`` as a cold command.

    python benchmarks/bench_estimate.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()

    from moesim.scenario import load_scenario
    from moesim.step.estimate import estimate_resolved

    for name in ("deepseek-v3-train-h800", "deepseek-v3-decode-h800", "mixtral-8x7b-serve-h100"):
        sc = load_scenario(name)
        model, hw = sc.resolve_model(), sc.resolve_hardware()
        t = time.perf_counter()
        estimate_resolved(sc, model, hw)
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            estimate_resolved(sc, model, hw)
            times.append(time.perf_counter() - t)
        print(f"{name:28s} first call {first * 1e3:8.2f} ms   warm median {statistics.median(times) * 1e3:7.3f} ms "
              f"(min {min(times) * 1e3:.3f} ms, {args.repeats} runs)")

    cold = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moesim.cli.main", "estimate", "--json"], check=True,
                       stdout=subprocess.DEVNULL)
        cold.append(time.perf_counter() - t)
    print(f"`moesim estimate` (default scenario) as a cold command: median {statistics.median(cold):.3f} s "
          f"(min {min(cold):.3f} s, 5 runs)")
    cold = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moesim.cli.main", "estimate", "deepseek-v3-train-h800", "--json"],
                       check=True, stdout=subprocess.DEVNULL)
        cold.append(time.perf_counter() - t)
    print(f"`moesim estimate deepseek-v3-train-h800` cold: median {statistics.median(cold):.3f} s (3 runs)")


if __name__ == "__main__":
    main()
