"""Speed of capacity planning (issue: plan, sweep and compare).

Prints candidates evaluated per second for DeepSeek-V3 serving and training and
the wall time of a full ``plan`` for DeepSeek-V3 serving on up to 512 GPUs across
every shipped GPU profile, cold (empty caches) and warm.

    taskset -c 0 python benchmarks/bench_plan.py
"""

from __future__ import annotations

import time


def main() -> None:
    from moesim.plan.search import Constraints, plan

    t = time.perf_counter()
    r = plan("deepseek-v3-serve-h200", constraints=Constraints(max_gpus=512))
    cold = time.perf_counter() - t
    print(f"plan deepseek-v3-serve-h200, all profiles, <= 512 GPUs: cold {cold:.2f} s wall; "
          f"{r.num_candidates:,} candidates considered, {r.num_timed:,} timed, {r.num_feasible:,} feasible; "
          f"{r.candidates_per_s:,.0f} timed candidates/s")
    t = time.perf_counter()
    r = plan("deepseek-v3-serve-h200", constraints=Constraints(max_gpus=512))
    warm = time.perf_counter() - t
    print(f"  same plan again (warm caches): {warm:.2f} s wall, {r.candidates_per_s:,.0f} timed candidates/s")

    t = time.perf_counter()
    r = plan("deepseek-v3-train-h800", hardware=["h800", "h100-sxm"], constraints=Constraints(max_gpus=2048),
             objective="throughput")
    dt = time.perf_counter() - t
    print(f"plan deepseek-v3-train-h800 on h800 + h100-sxm, <= 2048 GPUs: {dt:.2f} s wall; "
          f"{r.num_candidates:,} considered, {r.num_timed:,} timed, {r.num_feasible:,} feasible; "
          f"{r.candidates_per_s:,.0f} timed candidates/s")


if __name__ == "__main__":
    main()
