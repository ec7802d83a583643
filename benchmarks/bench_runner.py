"""Speed of the runner's MoE layer implementations (prints figures; not a test).

    .venv/bin/python benchmarks/bench_runner.py [--device cpu|cuda] [--dtype fp32 bf16] [--reps-s 1.0]

For each configuration it times a whole forward (router, dispatch, experts,
combine) of the per-expert ``loop`` reference, the capacity-padded ``padded``
version (capacity factor 1.25) and the dropless ``grouped`` version, with the
harness of ``moesim.runner.timing`` (warm-up, cache flush before every
iteration, median of the repetitions), and prints the grouped speed-up over the
loop. The first configuration is the project's reference point: 4096 tokens,
d_model 1024, expert width 2048, 8 experts, top-2, uniform forced routing.
"""

from __future__ import annotations

import argparse

import torch

from moesim.calib.layer_spec import MoELayerSpec
from moesim.calib.routing import forced_experts
from moesim.runner.env import capture_env, tune_allocator
from moesim.runner.layers import MoELayer
from moesim.runner.timing import RegionTimer, bench

CONFIGS = [
    # (label, tokens, d_model, expert width, experts, top-k)
    ("reference", 4096, 1024, 2048, 8, 2),
    ("fine-grained", 2048, 512, 256, 64, 6),
    ("many small experts", 512, 384, 384, 128, 8),
]


def run(device: str, dtypes: list[str], reps_s: float) -> None:
    tune_allocator()
    env = capture_env(device)
    print(f"device: {env['device_name']}  torch {env['torch_version']}  threads {env['num_threads']}  "
          f"allocator: {env['allocator']}  load average (1 min) {env.get('load_average_1min')}")
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    for label, T, D, F, E, K in CONFIGS:
        for dtype in dtypes:
            times = {}
            stages = {}
            backend = ""
            for impl in ("loop", "padded", "grouped"):
                spec = MoELayerSpec(num_tokens=T, d_model=D, d_expert_ffn=F, num_experts=E, top_k=K, dtype=dtype,
                                    implementation=impl, capacity_factor=1.25 if impl == "padded" else None)
                layer = MoELayer(spec, device=dev)
                x = torch.randn(T, D, generator=torch.Generator().manual_seed(1)).to(device=dev, dtype=layer.dtype)
                forced = torch.as_tensor(forced_experts(spec, "uniform", seed=0)[0], device=dev)
                with torch.inference_mode():
                    t = bench(lambda: layer(x, forced), dev, warmup=2, min_reps=5, max_reps=50, target_s=reps_s)
                    rt = RegionTimer(dev)
                    out = layer(x, forced, timer=rt)
                times[impl] = t
                stages[impl] = {str(k): v for k, v in rt.totals_s().items()}
                if impl == "grouped":
                    backend = out.details["experts_backend"]
            gflop = 3 * 2 * T * K * D * F / 1e9
            print(f"\n{label}: T={T} D={D} F={F} E={E} k={K} {dtype} ({gflop:.1f} GFLOP in the experts); "
                  f"grouped backend: {backend}")
            for impl, t in times.items():
                st = "  ".join(f"{k} {v * 1e3:.2f}" for k, v in stages[impl].items())
                print(f"  {impl:8s} median {t.median_s * 1e3:9.2f} ms  (p10 {t.p10_s * 1e3:.2f}, p90 {t.p90_s * 1e3:.2f}, "
                      f"n={t.num_samples})  {gflop / t.median_s:7.1f} GFLOP/s   stages ms: {st}")
            print(f"  grouped vs loop: {times['loop'].median_s / times['grouped'].median_s:.2f}x faster; "
                  f"padded vs loop: {times['loop'].median_s / times['padded'].median_s:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--reps-s", type=float, default=1.0, help="seconds of timed repetitions per implementation")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.device, args.dtype, args.reps_s)


if __name__ == "__main__":
    main()
