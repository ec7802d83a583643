"""Expected dispatch / combine traffic between expert-parallel ranks.

Symbols: R ranks, N nodes of ``ranks_per_node`` ranks (rank r is on node
``r // ranks_per_node``), E experts placed by ``expert_to_rank``, k experts per
token, ``T_r`` tokens per source rank, ``b`` bytes per token copy (hidden size x
activation bytes, plus any scales), ``pi_e`` the top-k inclusion probabilities,
``S_d`` the experts of rank d and ``S_n`` those of node n.

Every source rank routes its tokens with the same distribution, so the expected
matrix has identical rows (the diagonal is the local share that stays on the GPU)::

    per (token, expert) copy (Megatron all-to-all):  bytes[s, d] = T_r * b * sum_{e in S_d} pi_e
    one copy per destination rank (DeepEP):          bytes[s, d] = T_r * b * P(top-k hits S_d)
    one copy per destination node (hierarchical):    node[s, n]  = T_r * b * P(top-k hits S_n)

``P(top-k hits S)`` is the exact Plackett-Luce value of
:func:`moesim.load.routing.set_hit_probs`; for uniform routing it is the
hypergeometric ``1 - C(E - |S|, k) / C(E, k)``.

**Node-limited routing** (``node_limit = M``, DeepSeek-V3 arXiv 2412.19437 §2.1.2:
each token goes to at most M nodes). Uniform routing uses the closed form of
the two-stage model "a token picks M of the N nodes uniformly at random, then k
distinct experts uniformly among those nodes' experts" (``E_n = E / N``)::

    P(hit S_d) = (M / N) * (1 - C(M E_n - |S_d|, k) / C(M E_n, k))
    P(hit S_n) = (M / N) * (1 - C((M - 1) E_n, k) / C(M E_n, k))

Non-uniform routing uses a seeded, cached per-token simulation of the
group-limited router with one group per node (:func:`moesim.load.routing.sample_group_limited`).
Omitted: a score-based group choice (V3 picks nodes by their best experts' scores)
leaves a selected node unused less often than the uniform two-stage model,
so that model slightly under-states node traffic; see docs/load.md.

Combine traffic is the transpose of dispatch (the same copies travel back).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import InputError
from .routing import _check_probs, _miss_uniform, inclusion_probs, is_uniform, sample_group_limited, set_hit_probs

__all__ = ["TrafficMatrix", "dispatch_traffic", "combine_traffic"]


@dataclass(frozen=True)
class TrafficMatrix:
    """Expected bytes of one dispatch (or combine) between ranks and nodes."""

    rank_bytes: np.ndarray  #: [num_ranks, num_ranks] expected bytes src -> dst; diagonal = local (stays on the GPU)
    node_bytes: np.ndarray  #: [num_ranks, num_nodes] expected bytes src rank -> dst node, one copy per (token, node)
    ranks_per_node: int  #: ranks in one node (scale-up domain)

    @property
    def num_ranks(self) -> int:
        return int(self.rank_bytes.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.node_bytes.shape[1])

    @property
    def node_of_rank(self) -> np.ndarray:
        return np.arange(self.num_ranks) // self.ranks_per_node

    @property
    def total_bytes(self) -> float:
        """All bytes leaving their source GPU (off-diagonal)."""
        return float(self.rank_bytes.sum() - np.trace(self.rank_bytes))

    @property
    def inter_node_bytes(self) -> float:
        """Bytes crossing nodes with one copy per (token, destination rank) (flat all-to-all)."""
        node = self.node_of_rank
        return float(self.rank_bytes[node[:, None] != node[None, :]].sum())

    @property
    def inter_node_dedup_bytes(self) -> float:
        """Bytes crossing nodes with one copy per (token, destination node) (hierarchical dispatch)."""
        own = self.node_bytes[np.arange(self.num_ranks), self.node_of_rank]
        return float(self.node_bytes.sum() - own.sum())

    def transpose(self) -> "TrafficMatrix":
        """The combine direction: the same copies travel back (node matrix becomes dst-rank <- src-node)."""
        return TrafficMatrix(self.rank_bytes.T.copy(), self.node_bytes.copy(), self.ranks_per_node)

    def as_dict(self) -> dict:
        return {
            "rank_bytes": self.rank_bytes,
            "node_bytes": self.node_bytes,
            "ranks_per_node": self.ranks_per_node,
            "total_bytes": self.total_bytes,
            "inter_node_bytes": self.inter_node_bytes,
            "inter_node_dedup_bytes": self.inter_node_dedup_bytes,
        }


def _sim_tokens(num_experts: int) -> int:
    """Tokens for a per-token simulation: 32768, fewer for many experts (tokens x experts ~ 2^24, at least 4096)."""
    return int(min(32768, max(4096, (1 << 24) // max(num_experts, 1))))


def _rows(row: np.ndarray, num_rows: int) -> np.ndarray:
    return np.broadcast_to(row, (num_rows, row.size)).copy()


@lru_cache(maxsize=32)
def _node_limited_sim(
    pbytes: bytes, k: int, e2rbytes: bytes, num_ranks: int, ranks_per_node: int, node_limit: int, num_tokens: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(copies per rank, P(hit rank), P(hit node)) per token from a per-token simulation."""
    p = np.frombuffer(pbytes, dtype=float)
    e2r = np.frombuffer(e2rbytes, dtype=np.int64)
    num_nodes = num_ranks // ranks_per_node
    node = e2r // ranks_per_node
    order = np.argsort(node, kind="stable")  # experts in node order: groups become contiguous
    rng = np.random.default_rng(seed)
    idx = order[sample_group_limited(p[order], num_tokens, k, num_nodes, node_limit, rng, "top_sum")]
    ranks = e2r[idx]
    copies = np.bincount(ranks.ravel(), minlength=num_ranks) / num_tokens
    rows = np.arange(num_tokens)[:, None]
    hit_r = np.zeros((num_tokens, num_ranks), dtype=bool)
    hit_r[rows, ranks] = True
    hit_n = np.zeros((num_tokens, num_nodes), dtype=bool)
    hit_n[rows, ranks // ranks_per_node] = True
    return copies, hit_r.mean(axis=0), hit_n.mean(axis=0)


def dispatch_traffic(
    *,
    num_ranks: int,
    tokens_per_rank: float,
    top_k: int,
    probs: np.ndarray,
    expert_to_rank: np.ndarray,
    bytes_per_token: float,
    ranks_per_node: int,
    node_limit: int | None = None,
    dedup_per_rank: bool = True,
    sim_tokens: int | None = None,
    seed: int = 0,
) -> TrafficMatrix:
    """Expected dispatch bytes between every pair of ranks, and from every rank to every node.

    ``dedup_per_rank=True``: a token goes once to each destination rank holding at
    least one of its experts (DeepEP); ``False``: one copy per (token, expert)
    (Megatron's all-to-all dispatcher). ``node_bytes`` always counts one copy
    per (token, destination node). Combine traffic is :meth:`TrafficMatrix.transpose`.
    ``sim_tokens`` (default: 32768, fewer for many experts so that tokens x experts
    stays near 2^24) and ``seed`` only matter for node-limited non-uniform routing;
    the simulated probabilities have standard error ``sqrt(P (1 - P) / sim_tokens)``.
    See the module docstring for the formulas.
    """
    if num_ranks < 1:
        raise InputError(f"num_ranks must be >= 1, got {num_ranks}", field="num_ranks")
    if ranks_per_node < 1:
        raise InputError(f"ranks_per_node must be >= 1, got {ranks_per_node}", field="ranks_per_node")
    rpn = min(ranks_per_node, num_ranks)
    if num_ranks % rpn:
        raise InputError(f"num_ranks ({num_ranks}) must be a multiple of ranks_per_node ({ranks_per_node})", field="ranks_per_node")
    if tokens_per_rank < 0 or bytes_per_token < 0 or not np.isfinite(tokens_per_rank) or not np.isfinite(bytes_per_token):
        raise InputError("tokens_per_rank and bytes_per_token must be finite and >= 0", field="tokens_per_rank")
    p = _check_probs(probs, top_k)
    e = p.size
    e2r = np.asarray(expert_to_rank, dtype=np.int64)
    if e2r.shape != (e,):
        raise InputError(f"expert_to_rank must have one rank per expert ({e}), got shape {e2r.shape}", field="expert_to_rank")
    if e2r.min() < 0 or e2r.max() >= num_ranks:
        raise InputError(f"expert_to_rank values must lie in 0..{num_ranks - 1}", field="expert_to_rank")
    num_nodes = num_ranks // rpn
    k = int(top_k)
    per_rank = np.bincount(e2r, minlength=num_ranks).astype(float)
    per_node = per_rank.reshape(num_nodes, rpn).sum(axis=1)
    scale = float(tokens_per_rank) * float(bytes_per_token)

    limited = node_limit is not None and node_limit < num_nodes
    if node_limit is not None and node_limit < 1:
        raise InputError(f"node_limit must be >= 1, got {node_limit}", field="node_limit")

    if not limited:
        if dedup_per_rank:
            row = set_hit_probs(p, k, e2r, num_ranks)
        else:
            row = np.bincount(e2r, weights=inclusion_probs(p, k), minlength=num_ranks)
        node_row = set_hit_probs(p, k, e2r // rpn, num_nodes)
    else:
        assert node_limit is not None
        if np.any(per_node != per_node[0]):
            raise InputError(
                "node-limited routing needs the same number of experts on every node "
                f"(got {sorted(set(per_node.astype(int).tolist()))})",
                field="expert_to_rank",
            )
        en = int(per_node[0])
        if k > node_limit * en:
            raise InputError(
                f"top_k ({k}) exceeds the {node_limit * en} experts on node_limit ({node_limit}) nodes", field="node_limit"
            )
        if is_uniform(p):
            sel = node_limit / num_nodes
            pool = node_limit * en
            if dedup_per_rank:
                row = sel * (1.0 - _miss_uniform(pool, per_rank, k))
            else:
                row = k * per_rank / e
            node_hit = sel * (1.0 - _miss_uniform(pool, np.array([en]), k)[0])
            node_row = np.full(num_nodes, node_hit)
        else:
            n_sim = int(sim_tokens) if sim_tokens is not None else _sim_tokens(e)
            copies, hit_r, hit_n = _node_limited_sim(
                p.tobytes(), k, e2r.tobytes(), num_ranks, rpn, int(node_limit), n_sim, int(seed)
            )
            row = hit_r if dedup_per_rank else copies
            node_row = hit_n
    return TrafficMatrix(rank_bytes=_rows(scale * row, num_ranks), node_bytes=_rows(scale * node_row, num_ranks), ranks_per_node=rpn)


def combine_traffic(**kwargs) -> TrafficMatrix:  # type: ignore[no-untyped-def]
    """Combine traffic: :func:`dispatch_traffic` transposed (same arguments)."""
    return dispatch_traffic(**kwargs).transpose()
