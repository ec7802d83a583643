"""Placement of experts over expert-parallel ranks, with optional redundant replicas.

Symbols: E logical experts, R ranks, n redundant replicas, ``w_e`` the expected
tokens of expert e per step (the placement objective), ``E + n`` physical
experts, ``m = (E + n) / R`` slots per rank.

Strategies:

* ``contiguous``: rank r holds experts ``r*m .. r*m + m - 1`` (Megatron, DeepSpeed).
* ``round_robin``: expert e on rank ``e mod R``.
* ``load_aware``: greedy longest-processing-time packing: experts by decreasing
  ``w_e``, each to the least-loaded rank that still has a free slot (Graham 1969:
  within 4/3 of the optimal makespan without the slot limit).

**Redundant experts** (EPLB, github.com/deepseek-ai/EPLB, DeepSeek-V3 §3.4):
replicas go one at a time to the expert with the largest load per replica
``w_e / r_e`` (EPLB's ``replicate_experts`` rule); an expert's tokens are split
equally over its replicas (a deterministic round-robin split). With
``load_aware`` every physical expert is re-packed by the greedy rule (no rank
holds two replicas of one expert); with ``contiguous`` or ``round_robin`` the
logical experts stay where they are and the replicas fill the extra slots,
each on the least-loaded rank that does not hold that expert yet. Replica
counts are tried in steps of R (``n0, n0 + R, ..., n`` with ``n0 = (-E) mod R``,
the counts that fill every rank evenly) and the one with the lowest expected
max-rank load is kept, so more replicas never raise the expected max load
(greedy packing alone does not promise that). Each replica costs one expert's
weights of memory (and its optimizer state in training).

Omitted: EPLB's hierarchical node-then-GPU packing, the measured (not expected)
loads that deployments feed it, and the time to move experts when the plan changes.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError

__all__ = ["PlacementStrategy", "Placement", "place_experts", "PLACEMENTS"]

PlacementStrategy = Literal["contiguous", "round_robin", "load_aware"]
PLACEMENTS: tuple[str, ...] = ("contiguous", "round_robin", "load_aware")


class Placement(BaseModel):
    """Where every expert (and replica) lives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: PlacementStrategy = Field(description="Placement strategy.")
    num_ranks: int = Field(description="Expert-parallel ranks, count.")
    slots_per_rank: int = Field(description="Physical expert slots per rank, count ((E + n) / R).")
    num_redundant_requested: int = Field(description="Redundant replicas asked for, count (slots reserved).")
    num_redundant_used: int = Field(description="Redundant replicas that carry tokens, count.")
    expert_ranks: list[list[int]] = Field(description="Ranks holding each logical expert; the first is its home rank.")

    @property
    def num_experts(self) -> int:
        return len(self.expert_ranks)

    @property
    def expert_to_rank(self) -> np.ndarray:
        """Home rank of every expert, int64 [E]."""
        return np.array([r[0] for r in self.expert_ranks], dtype=np.int64)

    @cached_property
    def _pairs_cached(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._pairs_build()

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(expert, rank, share, is_replica) for every physical expert (computed once; do not modify)."""
        return self._pairs_cached

    def _pairs_build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ex = np.fromiter((e for e, rs in enumerate(self.expert_ranks) for _ in rs), dtype=np.int64)
        rk = np.fromiter((r for rs in self.expert_ranks for r in rs), dtype=np.int64)
        n = np.fromiter((len(rs) for rs in self.expert_ranks), dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(n)[:-1]])
        rep = np.ones(rk.size, dtype=bool)
        rep[first] = False
        return ex, rk, 1.0 / n[ex], rep

    @cached_property
    def _share_cached(self) -> np.ndarray:
        ex, rk, sh, _ = self._pairs()
        a = np.zeros((self.num_experts, self.num_ranks))
        np.add.at(a, (ex, rk), sh)
        a.flags.writeable = False
        return a

    def share_matrix(self) -> np.ndarray:
        """``A[e, r]``: fraction of expert e's tokens processed on rank r (rows sum to 1), float [E, R]
        (computed once per placement, read-only)."""
        return self._share_cached

    def experts_per_rank(self) -> np.ndarray:
        """Physical experts (replicas included) on every rank, int64 [R]."""
        return np.bincount(self._pairs()[1], minlength=self.num_ranks).astype(np.int64)

    def replicas_per_rank(self) -> np.ndarray:
        """Redundant replicas (not home copies) on every rank, int64 [R]."""
        _, rk, _, rep = self._pairs()
        return np.bincount(rk[rep], minlength=self.num_ranks).astype(np.int64)


def _base(strategy: str, w: np.ndarray, num_ranks: int) -> list[int]:
    e = w.size
    m = e // num_ranks
    if strategy == "contiguous":
        return [i // m for i in range(e)]
    if strategy == "round_robin":
        return [i % num_ranks for i in range(e)]
    return [rs[0] for rs in _pack(w, np.ones(e, dtype=np.int64), num_ranks, m)]


class _State:
    """Ranks of every expert, experts of every rank, slots used and load per rank during a greedy placement."""

    def __init__(self, w: np.ndarray, num_ranks: int, cap: int):
        self.w = w
        self.cap = cap
        self.ranks_of: list[list[int]] = [[] for _ in range(w.size)]
        self.members: list[list[int]] = [[] for _ in range(num_ranks)]
        self.slots = np.zeros(num_ranks, dtype=np.int64)
        self.load = np.zeros(num_ranks)

    def add(self, e: int, r: int, share: float) -> None:
        self.ranks_of[e].append(r)
        self.members[r].append(e)
        self.slots[r] += 1
        self.load[r] += share

    def eligible(self, e: int) -> np.ndarray:
        ok = self.slots < self.cap
        ok[self.ranks_of[e]] = False
        return np.flatnonzero(ok)

    def make_room(self, e: int, move_home: bool) -> int | None:
        """All free slots are on ranks holding e: move another expert's copy from a rank r that
        does not hold e to a free rank, and return r (None if no such move exists)."""
        free = np.flatnonzero(self.slots < self.cap)
        for f in free:
            for r in np.argsort(self.load):
                r = int(r)
                if r in self.ranks_of[e]:
                    continue
                for j in self.members[r]:
                    if f in self.ranks_of[j]:
                        continue
                    pos = self.ranks_of[j].index(r)
                    if pos == 0 and not move_home:
                        continue
                    share = self.w[j] / len(self.ranks_of[j])
                    self.ranks_of[j][pos] = int(f)
                    self.members[r].remove(j)
                    self.members[f].append(j)
                    self.slots[r] -= 1
                    self.slots[f] += 1
                    self.load[r] -= share
                    self.load[f] += share
                    return r
        return None

    def pick(self, e: int, move_home: bool) -> int:
        cand = self.eligible(e)
        if cand.size:
            return int(cand[np.argmin(self.load[cand])])
        r = self.make_room(e, move_home)
        if r is not None:
            return r
        free = np.flatnonzero(self.slots < self.cap)  # pragma: no cover - no legal move: double up
        return int(free[np.argmin(self.load[free])])


def _pack(w: np.ndarray, cnt: np.ndarray, num_ranks: int, cap: int) -> list[list[int]]:
    """Greedy LPT packing of ``cnt[e]`` copies of every expert (weight ``w[e] / cnt[e]`` each) into
    ranks of ``cap`` slots, heaviest first, each on the least-loaded rank that has a free slot
    and does not hold that expert."""
    st = _State(w, num_ranks, cap)
    per = w / cnt
    for e in sorted((i for i in range(w.size) for _ in range(int(cnt[i]))), key=lambda i: (-per[i], i)):
        st.add(e, st.pick(e, move_home=True), float(per[e]))
    return st.ranks_of


def _replica_counts(w: np.ndarray, n: int, num_ranks: int) -> np.ndarray:
    """EPLB's rule: each replica to the expert with the largest load per replica (at most R copies each)."""
    cnt = np.ones(w.size, dtype=np.int64)
    for _ in range(n):
        per = np.where(cnt < num_ranks, w / cnt, -np.inf)
        cnt[int(np.argmax(per))] += 1
    return cnt


def _with_replicas(strategy: str, w: np.ndarray, num_ranks: int, n: int, base: list[int]) -> list[list[int]]:
    e = w.size
    cnt = _replica_counts(w, n, num_ranks)
    cap = -(-(e + n) // num_ranks)
    if strategy == "load_aware":
        return _pack(w, cnt, num_ranks, cap)
    # keep home ranks; add replicas (largest per-replica load first) on the least-loaded eligible rank
    st = _State(w, num_ranks, cap)
    for i in range(e):
        st.add(i, base[i], float(w[i]))
    for i in sorted((i for i in range(e) for _ in range(int(cnt[i]) - 1)), key=lambda i: (-w[i] / cnt[i], i)):
        r = st.pick(i, move_home=False)
        old, new = w[i] / len(st.ranks_of[i]), w[i] / (len(st.ranks_of[i]) + 1)
        for h in st.ranks_of[i]:
            st.load[h] += new - old
        st.add(i, r, float(new))
    return st.ranks_of


def _max_load(w: np.ndarray, ranks_of: list[list[int]], num_ranks: int) -> float:
    load = np.zeros(num_ranks)
    for e, rs in enumerate(ranks_of):
        np.add.at(load, rs, w[e] / len(rs))
    return float(load.max())


def check_layout(num_experts: int, num_ranks: int, num_redundant: int) -> None:
    """Raise :class:`InputError` when the ranks cannot hold the experts evenly."""
    if num_ranks < 1:
        raise InputError(f"EP size must be >= 1, got {num_ranks}", field="ep_size")
    if num_redundant < 0:
        raise InputError(f"redundant experts must be >= 0, got {num_redundant}", field="num_redundant_experts")
    phys = num_experts + num_redundant
    if phys % num_ranks:
        if num_redundant == 0:
            divisors = [d for d in range(1, num_experts + 1) if num_experts % d == 0]
            raise InputError(
                f"EP size {num_ranks} does not divide the {num_experts} experts; allowed: {', '.join(map(str, divisors))} "
                f"(or add redundant experts so that experts + redundant is a multiple of {num_ranks})",
                field="ep_size",
            )
        raise InputError(
            f"num_experts + redundant ({num_experts} + {num_redundant} = {phys}) must be a multiple of EP size ({num_ranks}) "
            "so every rank holds the same number of experts",
            field="num_redundant_experts",
        )
    if phys // num_ranks > num_experts:
        raise InputError(
            f"{phys // num_ranks} slots per rank but only {num_experts} experts: a rank cannot hold two replicas of one expert",
            field="num_redundant_experts",
        )


@lru_cache(maxsize=128)
def _place_cached(strategy: str, wbytes: bytes, num_ranks: int, num_redundant: int) -> Placement:
    w = np.frombuffer(wbytes, dtype=float)
    e = w.size
    n0 = (-e) % num_ranks
    best: list[list[int]] | None = None
    best_n = n0
    best_max = np.inf
    base = _base(strategy, w, num_ranks) if e % num_ranks == 0 else None
    for n in range(n0, num_redundant + 1, num_ranks):
        if n == 0:
            assert base is not None
            ranks_of = [[r] for r in base]
        else:
            if base is None:  # more ranks than fit E evenly: every strategy re-packs
                ranks_of = _with_replicas("load_aware", w, num_ranks, n, [])
            else:
                ranks_of = _with_replicas(strategy, w, num_ranks, n, base)
        mx = _max_load(w, ranks_of, num_ranks)
        if mx < best_max * (1 - 1e-12):
            best, best_n, best_max = ranks_of, n, mx
    assert best is not None
    return Placement(
        strategy=strategy,  # type: ignore[arg-type]
        num_ranks=num_ranks,
        slots_per_rank=(e + num_redundant) // num_ranks,
        num_redundant_requested=num_redundant,
        num_redundant_used=best_n,
        expert_ranks=best,
    )


def place_experts(
    expected_tokens: np.ndarray,
    num_ranks: int,
    strategy: PlacementStrategy = "contiguous",
    num_redundant: int = 0,
) -> Placement:
    """Place E experts (expected tokens per step ``expected_tokens``) on ``num_ranks`` ranks.

    See the module docstring. Raises :class:`InputError` when ``num_experts +
    num_redundant`` is not a multiple of ``num_ranks`` or the strategy is unknown.
    """
    if strategy not in PLACEMENTS:
        raise InputError(f"unknown placement {strategy!r}; allowed: {', '.join(PLACEMENTS)}", field="placement")
    w = np.asarray(expected_tokens, dtype=float)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("expected_tokens must be a non-empty 1-D array of finite values >= 0", field="expected_tokens")
    check_layout(w.size, num_ranks, num_redundant)
    if strategy != "load_aware" and num_redundant == 0:
        # no replicas and home ranks that follow the expert index: the same placement for every load, so one
        # cached entry serves every token count
        w = np.zeros(w.size)
    return _place_cached(strategy, w.tobytes(), int(num_ranks), int(num_redundant))
