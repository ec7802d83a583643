"""Speed of ``moesim simulate`` (prints figures; not a test).

    nice -n 19 taskset -c 1 .venv/bin/python benchmarks/bench_simulate.py [--requests 100000] [--rates 20]
        [--sweep-requests 10000] [--simpy]

On Mixtral-8x7B served on one 8x H100 node (the default scenario, with
``serving.max_num_seqs=256``), with lognormal prompts (median 800 tokens,
sigma 0.8) and uniform outputs (32 to 512 tokens), Poisson arrivals at 70 % of the
saturation rate:

* building the deployment (iteration table, KV capacity) and measuring the saturation rate;
* one stream of ``--requests`` requests (target: 100,000 in 10 s or less on one core);
* a sweep of ``--rates`` rates from 10 % to 120 % of saturation, ``--sweep-requests`` each
  (target: 20 rates in 60 s or less);
* with ``--simpy`` (needs ``pip install simpy``), the choice of machinery
  (docs/serving.md): the same stream through (a) the engine loop as shipped,
  (b) the same loop with every iteration run on its own (no skipping), and (c) a
  SimPy process-based engine with the same scheduling rules (an arrival process
  feeding a Store, an engine process that yields one timeout per iteration), all
  on the same interpolated iteration table.
"""

from __future__ import annotations

import argparse
import heapq
import math
import time
from collections import deque

import numpy as np

from moesim.scenario import load_scenario
from moesim.serving.api import deployment, run_stream, saturation_rate
from moesim.serving.engine import run_engine
from moesim.serving.stream import generate

SCENARIO = "mixtral-8x7b-serve-h100"


class Timer:
    """Wall and CPU seconds of a block (CPU time is the steadier figure on a shared machine)."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c

    def __str__(self) -> str:
        return f"{self.wall:7.2f} s wall, {self.cpu:6.2f} s CPU"
OVERRIDES = ["serving.max_num_seqs=256"]
PROMPT, OUTPUT = "lognormal:800,0.8", "uniform:32,512"


def simpy_engine(arr, P, O, cost, cfg):
    """The scheduler as SimPy processes, one event per iteration (DP 1, no preemption: the cache does not fill
    at this load). Returns (first token, finish) times and the iteration count."""
    import simpy

    env = simpy.Environment()
    store = simpy.Store(env)
    N = len(arr)
    first = [math.nan] * N
    finish = [math.nan] * N
    M, B1, cap, seats = cfg.max_num_batched_tokens, cfg.kv_block_tokens - 1, cfg.kv_tokens, cfg.seats
    stats = {"iterations": 0}

    def source():
        for i in range(N):
            gap = arr[i] - env.now
            if gap > 0:
                yield env.timeout(gap)
            store.put(i)

    def engine():
        waiting: deque[int] = deque()
        prefilling: list[int] = []
        pf_done = [0] * N
        s0 = [0] * N
        j0 = [0] * N
        fin: list[tuple[int, int]] = []
        b = S = j = res = done = 0
        while done < N:
            if store.items:
                waiting.extend(store.items)
                store.items.clear()
            if b == 0 and not prefilling and not waiting:
                rid = yield store.get()
                waiting.append(rid)
                continue
            left = M - b
            chunks = []
            busy_n = 0
            pairs = 0.0
            read = 0.0
            lm = 0
            for rid in prefilling:
                if left < 1:
                    break
                q = pf_done[rid]
                c = min(P[rid] - q, left)
                chunks.append((rid, c))
                left -= c
                busy_n += c
                pairs += c * (q + (c + 1) / 2)
                read += q
                lm += c == P[rid] - q
            kv = S + b * j + b * B1 + res
            while waiting and left >= 1 and b + len(prefilling) < seats and kv + P[waiting[0]] + B1 <= cap:
                rid = waiting.popleft()
                prefilling.append(rid)
                res += P[rid] + B1
                kv += P[rid] + B1
                c = min(P[rid], left)
                chunks.append((rid, c))
                left -= c
                busy_n += c
                pairs += c * (c + 1) / 2
                lm += c == P[rid]
            K = S + b * j
            n = b + busy_n
            T = cost(n, (K + pairs) / n, K + read, b + lm)
            yield env.timeout(T)
            stats["iterations"] += 1
            if b:
                j += 1
            for rid, c in chunks:
                pf_done[rid] += c
                if pf_done[rid] < P[rid]:
                    continue
                prefilling.remove(rid)
                res -= P[rid] + B1
                first[rid] = env.now
                if O[rid] <= 1:
                    finish[rid] = env.now
                    done += 1
                    continue
                s0[rid], j0[rid] = P[rid], j
                S += P[rid] + 1 - j
                b += 1
                heapq.heappush(fin, (j + O[rid] - 1, rid))
            while fin and fin[0][0] <= j:
                _, rid = heapq.heappop(fin)
                finish[rid] = env.now
                S -= s0[rid] + 1 - j0[rid]
                b -= 1
                done += 1

    env.process(source())
    env.process(engine())
    env.run()
    return np.asarray(first), np.asarray(finish), stats["iterations"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rates", type=int, default=20)
    ap.add_argument("--sweep-requests", type=int, default=10_000)
    ap.add_argument("--simpy", action="store_true", help="also time the SimPy engine and the unskipped loop")
    ap.add_argument("--simpy-loads", default="0.2,0.7", help="loads (fractions of saturation) for --simpy")
    args = ap.parse_args()

    with Timer() as t_build:
        sc = load_scenario(SCENARIO, OVERRIDES)
        stream = generate(1.0, args.requests, prompt_tokens=PROMPT, output_tokens=OUTPUT, seed=0, max_context=32768)
        dep = deployment(sc, max_context=int((stream.prompt_tokens + stream.output_tokens).max()) + 1)
    with Timer() as t_sat:
        sat = saturation_rate(dep, stream)
    print(f"{SCENARIO} {' '.join(OVERRIDES)}; prompts {PROMPT}, outputs {OUTPUT}")
    print(f"deployment (iteration table, KV capacity):  {t_build}")
    print(f"saturation rate {sat:.2f} requests/s (overload run): {t_sat}")

    rate = 0.7 * sat
    s = stream.at_rate(rate)
    with Timer() as t_one:
        res = run_stream(dep, s)
    pool = res.pools[0]
    print(f"{args.requests:,} requests at {rate:.1f}/s: {t_one} ({pool.num_iterations:,} iterations, "
          f"{pool.num_step_model_calls} step-model columns; TTFT p99 {res.ttft.p99_s * 1e3:.1f} ms, "
          f"TPOT p99 {res.tpot.p99_s * 1e3:.2f} ms)")

    sweep = stream if args.sweep_requests >= args.requests else generate(
        1.0, args.sweep_requests, prompt_tokens=PROMPT, output_tokens=OUTPUT, seed=1, max_context=32768)
    with Timer() as t_sweep:
        for f in np.linspace(0.1, 1.2, args.rates):
            run_stream(dep, sweep.at_rate(f * sat), timeline_points=100)
    print(f"sweep of {args.rates} rates x {args.sweep_requests:,} requests: {t_sweep}")

    if args.simpy:
        pool = dep.pools[0]
        cost, cfg = pool.cost.iteration_s, pool.config
        for load in (float(x) for x in args.simpy_loads.split(",")):
            s = stream.at_rate(load * sat)
            arr = [float(x) for x in s.arrival_s]
            P = [int(x) for x in s.prompt_tokens]
            O = [int(x) for x in s.output_tokens]
            print(f"machinery at {load:.0%} of saturation ({load * sat:.1f} requests/s), {args.requests:,} requests:")
            for label, skip in (("engine loop, skipping identical iterations", True),
                                ("engine loop, every iteration", False)):
                with Timer() as dt:
                    run = run_engine(arr, P, O, cost, cfg, skip_ahead=skip, sample_dt_s=max(arr[-1] / 1000, 1e-3))
                e2e = np.nanmean(run.finish_s - s.arrival_s)
                print(f"  {label:<44} {dt} ({run.num_iterations:,} iterations, mean E2E {e2e:.4f} s)")
            with Timer() as dt:
                first, finish, iters = simpy_engine(arr, P, O, cost, cfg)
            print(f"  {'SimPy processes, every iteration':<44} {dt} ({iters:,} iterations, mean E2E "
                  f"{np.nanmean(finish - s.arrival_s):.4f} s)")

if __name__ == "__main__":
    main()
