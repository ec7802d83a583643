"""Speed of the expert-load model (a script that prints figures; not a test).

    .venv/bin/python benchmarks/bench_load.py [--repeats N]

Main case (issue 3): 256 experts, top-8, 64 EP ranks, 16,384 tokens per step,
Zipf 1.2 skew, p99 from 256 (and 200) Monte Carlo steps. "warm" is one
:func:`moesim.expert_load` call once the distribution's inclusion probabilities
and the placement are cached (what a sweep over seeds or capacity factors pays);
"cold" clears those caches first. Also timed: the exact inclusion probabilities
alone, the dispatch traffic matrix for 1,024 ranks, and placement with replicas.
Run it on an otherwise idle machine: other processes on the same cores inflate
every figure. Pin one core with ``taskset -c 0`` and one BLAS thread
(``OMP_NUM_THREADS=1``) for the "one core" figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from moesim.load import placement as _placement  # noqa: E402
from moesim.load import routing as _routing  # noqa: E402
from moesim.load.api import expert_load  # noqa: E402
from moesim.load.distributions import Zipf, expert_probs  # noqa: E402
from moesim.load.traffic import dispatch_traffic  # noqa: E402


def clear_caches() -> None:
    _routing._inclusion_cached.cache_clear()
    _routing._set_hit_cached.cache_clear()
    _routing._group_limited_cached.cache_clear()
    _placement._place_cached.cache_clear()


def timeit(fn: Callable[[int], object], repeats: int, before: Callable[[], None] | None = None) -> list[float]:
    fn(10_000)  # warm-up (imports, first allocations)
    out = []
    for i in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def report(name: str, times: list[float]) -> None:
    ms = sorted(t * 1e3 for t in times)
    print(f"{name:<58} median {statistics.median(ms):8.2f} ms   min {ms[0]:8.2f}   max {ms[-1]:8.2f}   (n={len(ms)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    n = args.repeats
    main_case = dict(num_experts=256, top_k=8, ep_size=64, num_tokens=16384, distribution=Zipf(exponent=1.2))

    print(f"numpy {np.__version__}, cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    for samples in (256, 200):
        report(f"expert_load E=256 k=8 R=64 T=16384 zipf1.2 S={samples} warm",
               timeit(lambda i, s=samples: expert_load(**main_case, num_samples=s, seed=i), n))
    report("expert_load same case S=256 cold (caches cleared)",
           timeit(lambda i: expert_load(**main_case, num_samples=256, seed=i), max(5, n // 5), clear_caches))
    report("  + capacity factor 1.25",
           timeit(lambda i: expert_load(**main_case, capacity_factor=1.25, seed=i), n))
    report("  + load_aware placement, 64 redundant experts (warm)",
           timeit(lambda i: expert_load(**main_case, placement="load_aware", num_redundant_experts=64, seed=i), n))
    report("  + load_aware placement, 64 redundant experts (cold)",
           timeit(lambda i: expert_load(**main_case, placement="load_aware", num_redundant_experts=64, seed=i),
                  max(5, n // 5), clear_caches))

    p = expert_probs(Zipf(exponent=1.2), 256)
    report("inclusion_probs E=256 k=8 zipf1.2 (uncached)",
           timeit(lambda i: _routing.inclusion_probs(p, 8), max(5, n // 5), clear_caches))

    e2r = np.arange(2048) // 2
    uni = np.full(2048, 1 / 2048)
    report("dispatch_traffic uniform, 1024 ranks, 2048 experts, dedup",
           timeit(lambda i: dispatch_traffic(num_ranks=1024, tokens_per_rank=4096, top_k=8, probs=uni,
                                             expert_to_rank=e2r, bytes_per_token=7168, ranks_per_node=8), n))
    report("dispatch_traffic uniform, 1024 ranks, node_limit=4",
           timeit(lambda i: dispatch_traffic(num_ranks=1024, tokens_per_rank=4096, top_k=8, probs=uni,
                                             expert_to_rank=e2r, bytes_per_token=7168, ranks_per_node=8,
                                             node_limit=4), n))
    pz = expert_probs(Zipf(exponent=1.2), 256)
    report("dispatch_traffic zipf1.2, 64 ranks, 256 experts (uncached)",
           timeit(lambda i: dispatch_traffic(num_ranks=64, tokens_per_rank=4096, top_k=8, probs=pz,
                                             expert_to_rank=np.arange(256) // 4, bytes_per_token=7168,
                                             ranks_per_node=8), max(5, n // 5), clear_caches))


if __name__ == "__main__":
    main()
