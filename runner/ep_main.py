"""Expert-parallel MoE layer under torchrun: one process, several on one machine, or several nodes.

    torchrun --standalone --nproc-per-node 2 -m moesim.runner.ep_main --device cpu --check
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m moesim.runner.ep_main --device cuda --num-experts 64 --top-k 8 --num-tokens 8192

Every rank builds the same seeded weights, keeps its experts, routes its own
tokens (forced routing from the expert-load model, one seed per rank) and runs
the dispatch / experts / combine path over torch.distributed (NCCL on CUDA,
gloo on the CPU). ``--check`` compares each rank's output with the per-expert
reference loop on the full weights (fp32: exact up to summation order).
Rank 0 prints one JSON object: timing (slowest rank per iteration), the
all-to-all primitive used, and the check's largest error.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from moesim.calib.layer_spec import MoELayerSpec
from moesim.calib.routing import forced_experts

from .cases import _input, ep_worker
from .dist import init_from_env
from .ep import EPMoELayer, shard_weights
from .layers import MoELayer, init_weights


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--num-tokens", type=int, default=256, help="tokens per rank")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--d-expert-ffn", type=int, default=256)
    ap.add_argument("--num-experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--implementation", choices=["grouped", "loop"], default="grouped")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--num-shared-experts", type=int, default=0)
    ap.add_argument("--routing", default="uniform")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="compare with the reference loop on full weights")
    ap.add_argument("--target-s", type=float, default=0.3)
    args = ap.parse_args(argv)

    rank, world, dev = init_from_env(args.device)
    spec = MoELayerSpec(num_tokens=args.num_tokens, d_model=args.d_model, d_expert_ffn=args.d_expert_ffn,
                        num_experts=args.num_experts, top_k=args.top_k, implementation=args.implementation,
                        dtype=args.dtype, num_shared_experts=args.num_shared_experts, ep_size=world)
    forced = forced_experts(spec, args.routing, seed=args.seed)
    result = {"world_size": world, "backend": dist.get_backend(), "device": str(dev)}
    if args.check:
        full = init_weights(spec, args.seed)
        layer = EPMoELayer(spec, shard_weights(full, rank, world, spec.num_experts), device=dev)
        x = _input(spec, args.seed, rank, dev, layer.dtype)
        f = None if forced is None else torch.as_tensor(forced[rank], device=dev)
        with torch.inference_mode():
            y = layer(x, f).y_TD.float()
            ref_spec = MoELayerSpec.model_validate(spec.model_dump() | {"ep_size": 1})
            ref = MoELayer(ref_spec, device=dev, weights=full)(x, f, implementation="loop").y_TD.float()
        err = torch.tensor([float((y - ref).abs().max())], dtype=torch.float64, device=dev)
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        result |= {"max_abs_error": float(err), "a2a_method": layer.a2a_method}
    timing = ep_worker(rank, world, dev, spec, forced, args.seed, args.target_s, 50)
    result |= {k: timing[k] for k in ("median_s", "p10_s", "p90_s", "num_samples")}
    result["details"] = timing["details"]
    if rank == 0:
        print(json.dumps(result, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
