"""A scenario's parallel layout, reduced to the per-GPU shares the cost model needs."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

from ..model import ModelSpec
from ..scenario import Scenario


@dataclass(frozen=True)
class Parallel:
    """Group sizes of one layout (Megatron MoE parallel folding).

    Dense parts run on ``tp x pp x dp`` GPUs. Within a stage, experts run on
    ``etp x ep x edp`` = ``tp x dp`` GPUs. Tokens that enter an MoE layer on one
    EP rank: ``n_src = n * etp / tp`` for ``n`` tokens per DP rank (with TP > ETP
    the TP group's tokens are split before dispatch, as with sequence parallelism).
    """

    num_gpus: int
    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    edp: int
    zero_stage: int
    sequence_parallel: bool
    gpus_per_node: int

    @classmethod
    def of(cls, sc: Scenario, gpus_per_node: int) -> "Parallel":
        lay = sc.layout
        return cls(sc.num_gpus, lay.tp, lay.pp, sc.dp, lay.ep, lay.etp, sc.edp, lay.zero_stage,
                   lay.sequence_parallel, gpus_per_node)

    def layer_view(self) -> "Parallel":
        """The layout as one layer pass sees it: TP, EP and ETP sizes and the node size.

        A layer's operations and their times (tensor-parallel and expert-parallel
        collectives included) depend on nothing else, so layouts that differ only in
        their data-parallel, pipeline or ZeRO fields share one layer pass; those fields
        are ``None`` here, so a layer pass that read them would fail rather than be
        shared wrongly.
        """
        return Parallel(None, self.tp, None, None, self.ep, self.etp, None, None, None,  # type: ignore[arg-type]
                        self.gpus_per_node)

    def moe_tokens(self, n_tokens: float) -> float:
        """Tokens entering the MoE layer on one EP rank for ``n_tokens`` per DP rank."""
        return n_tokens * self.etp / self.tp

    @property
    def coupled_replicas(self) -> int:
        """Attention data-parallel replicas that one EP group joins (``ep etp / tp``, at most ``dp``): their MoE
        layers exchange tokens every layer, so each waits for the slowest of them."""
        return max(1, min(self.dp, self.ep * self.etp // self.tp))

    def layers_per_stage(self, model: ModelSpec) -> list[list[int]]:
        """Layer indices of each pipeline stage (the first ``L mod pp`` stages take one extra)."""
        return self.layers_per_stage_even(model.num_layers)

    def balanced_stages(self, costs: list[float], first_extra: float = 0.0, last_extra: float = 0.0) -> list[list[int]]:
        """Contiguous layer ranges per stage that minimise the slowest stage's cost.

        Frameworks let users give the first and last stages fewer layers to carry
        the embedding and the LM head (Megatron's
        ``--decoder-first/last-pipeline-num-layers``); this picks the split a
        careful user would: binary search on the stage budget with a greedy fill
        (exact for contiguous partitions).
        """
        if self.pp == 1:
            return [list(range(len(costs)))]
        return [list(r) for r in _balanced(tuple(costs), self.pp, first_extra, last_extra)]

    def balanced_stage_pairs(self, costs: list[float], first_extra: float = 0.0,
                             last_extra: float = 0.0) -> list[list[int]]:
        """Contiguous layer ranges per stage for DualPipe, where GPU ``j`` runs stages ``j`` and ``pp - 1 - j``:
        the split that minimises the busiest GPU's pair of stages (then the slowest stage, which sets the
        bubble). See :func:`_balanced_pairs`."""
        if self.pp == 1:
            return [list(range(len(costs)))]
        return [list(r) for r in _balanced_pairs(tuple(costs), self.pp, first_extra, last_extra)]

    def layers_per_stage_even(self, L: int) -> list[list[int]]:
        return [list(r) for r in _even(L, self.pp)]

    def ranks_per_node_in_group(self, group_size: int, stride: int) -> int:
        """GPUs of one group (``group_size`` ranks spaced ``stride`` apart) that share a node."""
        per_node = max(1, self.gpus_per_node // stride)
        return max(1, min(group_size, per_node))

    @property
    def ep_stride(self) -> int:
        """Rank distance between EP peers (Megatron order tp-ep-dp-pp: EP ranks are ``etp`` apart)."""
        return self.etp

    @property
    def dp_stride(self) -> int:
        return self.tp

    def kv_shard(self, num_kv_heads: int, mla: bool) -> int:
        """How many ways TP splits the KV cache: heads split up to the number of KV heads; MLA's latent is not split."""
        if mla:
            return 1
        return max(1, min(self.tp, num_kv_heads))

    @property
    def nodes(self) -> int:
        return math.ceil(self.num_gpus / self.gpus_per_node)


@lru_cache(maxsize=4096)
def _even(L: int, pp: int) -> tuple[range, ...]:
    base, extra = divmod(L, pp)
    out, start = [], 0
    for s in range(pp):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return tuple(out)


@lru_cache(maxsize=4096)
def _balanced(costs: tuple[float, ...], pp: int, first_extra: float, last_extra: float) -> tuple[range, ...]:
    """Contiguous stages minimising the largest stage cost (memoised: searches repeat the same costs)."""
    L = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    # per stage: the extra cost it carries and the last end index that leaves one layer for each later stage
    extras = [(first_extra if s == 0 else 0.0) + (last_extra if s == pp - 1 else 0.0) for s in range(pp)]
    his = [L - (pp - s - 1) + 1 for s in range(pp)]
    bisect_right = bisect.bisect_right

    def split(budget: float) -> list[int] | None:
        """Stage end indices of a greedy fill under ``budget``, or None if it cannot fit."""
        ends, i = [], 0
        limit = budget * (1 + 1e-12)
        for s in range(pp - 1):
            extra = extras[s]
            j = bisect_right(prefix, prefix[i] + budget - extra, i + 1, his[s]) - 1
            if j <= i or prefix[j] - prefix[i] + extra > limit:
                return None
            ends.append(j)
            i = j
        # the last stage takes every remaining layer
        if L <= i or prefix[L] - prefix[i] + extras[-1] > limit:
            return None
        ends.append(L)
        return ends

    total = prefix[-1] + first_extra + last_extra
    best, _ = _smallest_budget(split, max(max(costs), total / pp), total, 1e-3)
    return _even(L, pp) if best is None else _ranges(best)


def _smallest_budget(layout, lo: float, hi: float, rel: float, used=None) -> tuple:
    """(the layout at the smallest feasible budget, that budget): bisection between a lower bound ``lo`` and a
    budget ``hi`` to try first, until ``hi - lo <= rel lo``; ``layout(budget)`` is None where it cannot fit.
    ``used(layout)``, when given, is the budget a layout actually uses, which then bounds the search from above."""
    best = layout(hi)
    if best is None:
        return None, hi
    if used is not None:
        hi = min(hi, used(best))
    while hi - lo > rel * lo:
        mid = (lo + hi) / 2
        got = layout(mid)
        if got is None:
            lo = mid
        else:
            hi, best = (mid if used is None else min(mid, used(got))), got
    return best, hi


def _ranges(ends: list[int]) -> tuple[range, ...]:
    """Stage ranges from their end indices."""
    out, start = [], 0
    for end in ends:
        out.append(range(start, end))
        start = end
    return tuple(out)


@lru_cache(maxsize=4096)
def _balanced_pairs(costs: tuple[float, ...], pp: int, first_extra: float, last_extra: float) -> tuple[range, ...]:
    """Contiguous stages minimising the largest pair ``max_j (c_j + c_{pp-1-j})``, then the slowest stage
    ``max_j c_j`` (memoised).

    Binary search on the pair budget ``B``, then on the stage budget ``C`` under the smallest ``B`` (each to 0.1%,
    as :func:`_balanced`; the split for single stages gives both searches their first budget). A budget
    is feasible if the stages can be laid out pair by pair from both ends: pair ``j`` takes the next front
    stage and the next back stage, and of the layouts that reach a given front end the one that leaves the
    fewest layers (its back stage the longest that fits) is kept, as leaving fewer layers to the inner pairs
    never makes them harder; one that leaves the inner stages more than their budgets can hold is dropped.
    A feasible layout's own largest pair (then slowest stage) bounds the search from above. For odd ``pp`` the
    middle stage pairs with itself. ``tests/step/test_stage_split.py`` checks the result against every
    contiguous split of small cases.
    """
    L = len(costs)
    if pp < 2 or L < pp:
        return _balanced(costs, pp, first_extra, last_extra)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    half, odd = pp // 2, pp % 2
    bisect_left = bisect.bisect_left

    def layout(pair_budget: float, stage_budget: float) -> list[int] | None:
        """Stage end indices within both budgets, or None."""
        slack = 1 + 1e-12
        pb, sb = pair_budget * slack, stage_budget * slack
        # per pair: front end -> (back start, the smallest that fits; the previous pair's front end)
        frontier: dict[int, tuple[int, int]] = {0: (L, 0)}
        levels: list[dict[int, tuple[int, int]]] = []
        for j in range(half):
            fe = first_extra if j == 0 else 0.0
            be = last_extra if j == 0 else 0.0
            need = 2 * (half - j - 1) + odd  # layers the inner stages need
            # what the inner stages can hold at most: a layout that leaves them more cannot finish
            inner = min((half - j - 1) * pb + (min(sb, pb / 2) if odd else 0.0), need * sb)
            nxt: dict[int, tuple[int, int]] = {}
            for i, (k, _) in frontier.items():
                pk = prefix[k]
                for i2 in range(i + 1, k):
                    cf = prefix[i2] - prefix[i] + fe
                    if cf > sb or cf > pb:
                        break
                    room = sb if sb < pb - cf else pb - cf  # the back stage may cost this much
                    k2 = bisect_left(prefix, pk - room + be, 0, k + 1)
                    if k2 < i2 + need:
                        k2 = i2 + need
                    if k2 > k - 1 or pk - prefix[k2] + be > room or prefix[k2] - prefix[i2] > inner:
                        continue
                    old = nxt.get(i2)
                    if old is None or k2 < old[0]:
                        nxt[i2] = (k2, i)
            if not nxt:
                return None
            levels.append(nxt)
            frontier = nxt
        for i in sorted(frontier):
            k = frontier[i][0]
            if odd:
                mid = prefix[k] - prefix[i]
                if k - i < 1 or mid > sb or 2 * mid > pb:
                    continue
            elif k != i:
                continue
            fronts, backs = [], []
            for level in reversed(levels):  # walk back from the innermost pair
                k2, prev = level[i]
                fronts.append(i)
                backs.append(k2)
                i = prev
            fronts.reverse()  # front stage ends, outermost first; backs: back stage starts, innermost first
            return fronts + (backs if odd else backs[1:]) + [L]
        return None

    total = prefix[-1] + first_extra + last_extra
    # the split for single stages is feasible at its own largest pair (the first budget tried); the pairs (the
    # middle stage counted twice) sum to at least the total (the lower bound)
    def stage_costs(ends: list[int]) -> list[float]:
        out = [prefix[e] - prefix[a] for a, e in zip([0] + ends[:-1], ends)]
        out[0] += first_extra
        out[-1] += last_extra
        return out

    def largest_pair(ends: list[int]) -> float:
        c = stage_costs(ends)
        return max(c[j] + c[pp - 1 - j] for j in range(half + odd))

    single = _balanced(costs, pp, first_extra, last_extra)
    single_ends = [r.stop for r in single]
    top = largest_pair(single_ends)
    slowest = max(stage_costs(single_ends))  # the split for single stages has the smallest slowest stage of all

    ends, pair_b = _smallest_budget(lambda b: layout(b, total), total / (half + odd), top, 1e-3, largest_pair)
    if ends is None:
        return single
    if max(stage_costs(ends)) > slowest * (1 + 1e-3):
        ends2, _ = _smallest_budget(lambda b: layout(pair_b, b), slowest, max(stage_costs(ends)), 1e-3,
                                    lambda e: max(stage_costs(e)))
        ends = ends2 or ends
    return _ranges(ends)
