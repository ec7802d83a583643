"""Forced routing for the runner and its prediction: per-rank expert choices from the expert-load model.

The runner's routers compute their logits and top-k as usual, then take the
experts from these arrays, so the measured per-expert load is the one the
load model sampled and the prediction sees exactly the same counts
(:func:`counts_per_rank`). Sampling is :func:`moesim.load.routing.sample_topk`
(Plackett-Luce, Gumbel top-k) over :func:`moesim.load.distributions.expert_probs`;
rank ``r`` draws with ``numpy.random.default_rng([seed, r])``.
"""

from __future__ import annotations

import numpy as np

from ..load.distributions import expert_probs, parse_distribution
from ..load.routing import sample_topk
from .layer_spec import MoELayerSpec


def forced_experts(spec: MoELayerSpec, routing: str, *, seed: int = 0, source: str = "routing") -> np.ndarray | None:
    """Expert ids ``int64 [R, T, K]`` for every rank, or None for expert-choice routing (balanced by construction)."""
    dist = parse_distribution(routing, source=source)
    if spec.router == "expert_choice":
        return None
    probs = expert_probs(dist, spec.num_experts)
    return np.stack([
        sample_topk(probs, spec.num_tokens, spec.top_k, np.random.default_rng([seed, r])) for r in range(spec.ep_size)
    ])


def counts_per_rank(spec: MoELayerSpec, forced_RTK: np.ndarray | None) -> np.ndarray:
    """``counts[r, e]``: rows rank ``r`` routes to expert ``e`` (expert choice: every expert takes its capacity)."""
    if forced_RTK is None:
        c = min(spec.capacity, spec.num_tokens)
        return np.full((spec.ep_size, spec.num_experts), c, dtype=np.int64)
    return np.stack([np.bincount(f.ravel(), minlength=spec.num_experts) for f in forced_RTK]).astype(np.int64)
