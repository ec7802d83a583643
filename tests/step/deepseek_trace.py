"""Kernel times of DeepSeek's published training profile, by kind of kernel, per MoE layer.

DeepSeek's profile-data repository (github.com/deepseek-ai/profile-data, train.json) holds a PyTorch
profiler trace of one rank of DeepSeek-V3 training on H800: one DualPipe pair of a forward and a backward
chunk of 4 MoE layers each, EP64, TP1, 4096-token micro-batches, balanced routing. This script reads a
downloaded copy (the trace is not part of this repository) and prints:

* the GPU time of the pair, from the first kernel's start to the last kernel's end over every stream,
  and per MoE layer (/ 4): the figure of the comparison row ``dsv3-profile-moe-layer``;
* the kernels' summed durations per MoE layer by kind (GEMMs by format, attention, FP8 casts, other
  elementwise kernels, DeepEP's communication kernels) beside the model's: the operation times of one MoE
  layer's forward and backward pass of the comparison's scenario, summed by the same kinds (without the
  overlap's slowdown, which the model applies to the layer, not to each operation), as
  docs/published-comparisons.md shows them.

    python tests/step/deepseek_trace.py path/to/train.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "validation-e2e" / "deepseek-v3-pretrain-h800.toml"

if str(REPO) not in sys.path:  # the script may run from anywhere
    sys.path.insert(0, str(REPO))

import moesim  # noqa: E402
from moesim.caches import clear_caches  # noqa: E402
from moesim.step import estimate as E  # noqa: E402
from moesim.step.parallel import Parallel  # noqa: E402

LAYERS = 4  #: MoE layers in each chunk of the profiled pair (the repository's README)

#: (substring of the kernel name, kind); the first match wins
KINDS = (
    ("dpsk::ep::", "DeepEP dispatch / combine (communication stream)"),
    ("fp8_dptp128c_acc", "FP8 GEMMs (all)"),
    ("m_grouped_fp8", "FP8 GEMMs (all)"),
    ("fp8_ptp128c", "FP8 GEMMs (all)"),
    ("gemm_bf16", "BF16 GEMMs (router)"),
    ("flash::", "attention core (forward, backward)"),
    ("FlashAttn", "attention core (forward, backward)"),
    ("cast", "FP8 casts and transposes"),
    ("transpose", "FP8 casts and transposes"),
)
OTHER = "other kernels (norms, rotary, SwiGLU, permutes, elementwise)"
#: the FP8 GEMMs by role: (substring of the kernel name, label)
ROLES = (
    ("fp8_dptp128c_acc", "  of which weight-gradient GEMMs"),
    ("m_grouped_fp8", "  of which grouped GEMMs (experts, forward and dgrad)"),
    ("fp8_ptp128c", "  of which dense GEMMs (attention, shared experts)"),
)


def kind_of(name: str) -> str:
    for pattern, kind in KINDS:
        if pattern in name:
            return kind
    return OTHER


def model_kind(op) -> str:
    """The trace's kind of kernel that a model operation stands for."""
    if op.compute_kind == "comm":
        return KINDS[0][1]
    if op.compute_kind == "attention":
        return "attention core (forward, backward)"
    if op.compute_kind in ("matmul", "grouped_matmul"):
        return "BF16 GEMMs (router)" if op.kind.value == "router" else "FP8 GEMMs (all)"
    if op.name.endswith("_quantize"):
        return "FP8 casts and transposes"
    return OTHER


def model_by_kind() -> dict[str, float]:
    """Seconds of the model's operations in one MoE layer's forward and backward pass (expected load), by kind.

    The layer passes are run as the estimate runs them, with their timer recording what it times: each pass
    times the MoE layer at the expected load, then at the p99 straggler's, then the dense layer; the first of
    these is kept (it ends where the layer's first operation comes round again after its combine)."""
    sc = moesim.load_scenario(SCENARIO)
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    times: list = []
    timed = E._Timer.op

    def op(self, o):
        t = timed(self, o)
        times.append((id(self), o, t[0]))
        return t

    E._Timer.op = op
    try:
        clear_caches()  # every pass computed afresh, so its timer sees every operation
        E._train_passes(sc, model, hw, par, detail=True)
    finally:
        E._Timer.op = timed
        clear_caches()
    out: dict[str, float] = defaultdict(float)
    for timer in dict.fromkeys(t for t, _, _ in times):  # the forward pass, then the backward
        ops = [(o, t) for tid, o, t in times if tid == timer]
        first, after_combine = ops[0][0].name, False
        for o, t in ops:
            if after_combine and o.name == first:
                break
            after_combine = after_combine or o.kind.value == "combine"
            out[model_kind(o)] += t
    return out


def main(path: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"error: {path}: not a readable PyTorch profiler trace ({type(exc).__name__}: {exc})")
    kernels = [e for e in events if e.get("cat") == "kernel"]
    start = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    span_us = end - start
    print(f"{len(kernels)} kernels; GPU span of the chunk pair {span_us / 1e3:.3f} ms, "
          f"per MoE layer {span_us / LAYERS / 1e3:.3f} ms")
    by_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in kernels:
        role = next((label for pattern, label in ROLES if pattern in e["name"]), None)
        for k in (kind_of(e["name"]), role):
            if k is not None:
                by_kind[k] += e["dur"]
                count[k] += 1
    modelled = model_by_kind()
    print(f"{'kind (per MoE layer, forward + backward)':60s} {'trace us':>9s} {'kernels':>8s} {'model us':>9s}")
    order = sorted((k for k in by_kind if not k.startswith("  ")), key=lambda k: -by_kind[k])
    for k in order:
        print(f"{k:60s} {by_kind[k] / LAYERS:9.0f} {count[k] / LAYERS:8.1f} {modelled.get(k, 0.0) * 1e6:9.0f}")
        if k == "FP8 GEMMs (all)":
            for sub in sorted((r for r in by_kind if r.startswith("  ")), key=lambda r: -by_kind[r]):
                print(f"{sub:60s} {by_kind[sub] / LAYERS:9.0f} {count[sub] / LAYERS:8.1f}")
    compute = sum(v for k, v in by_kind.items() if not k.startswith(("DeepEP", "  ")))
    model_compute = sum(v for k, v in modelled.items() if not k.startswith("DeepEP"))
    print(f"{'all but DeepEP':60s} {compute / LAYERS:9.0f} {'':8s} {model_compute * 1e6:9.0f}")
    print(f"the model's MoE layer forward + backward as the step composes it (overlap included): "
          f"{E.moe_layer_cost_s(moesim.load_scenario(SCENARIO)) * 1e3:.3f} ms")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/step/deepseek_trace.py path/to/train.json")
    main(sys.argv[1])
