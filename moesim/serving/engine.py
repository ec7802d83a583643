"""One engine instance under a request stream: an iteration-level scheduler as vLLM and SGLang run it.

State per iteration ``j`` (an iteration = one forward pass of the running batch):

* **decoding** sequences: each adds one token per iteration. A sequence that joined
  at iteration ``j0`` with ``s0`` tokens cached and ``g0`` tokens generated has
  ``s0 + (j - j0)`` cached and attends ``s0 + 1 + (j - j0)`` keys at iteration ``j``;
  it leaves before iteration ``j0 + O - g0`` (``O`` output tokens). The batch's
  keys are ``K(j) = S + b j`` with ``S = sum(s0 + 1 - j0)`` over the ``b`` decoding
  sequences, so no per-sequence work is done per iteration.
* **prefilling** sequences (admitted, prompt not finished): FCFS, each takes a chunk
  of ``min(remaining prompt, budget left)`` tokens; the budget per DP rank is
  ``max_num_batched_tokens`` less the rank's decode tokens. A chunk of ``p``
  tokens after ``q`` done attends ``p (q + (p + 1) / 2)`` key pairs and reads ``q``
  cached tokens. When the last chunk runs, the request's next token is sampled
  (its first token: TTFT) and it joins the decoding batch. A request that finds the
  first ``c`` tokens of its prompt in the prefix cache starts at ``q = c``: those are
  not computed, and its chunks attend to them (the prefix stays cached through a
  preemption; its KV is counted with the prompt's).
* **waiting** requests: FCFS; admitted while the batch has fewer than
  ``max_num_seqs`` sequences per DP rank, the iteration has budget for a chunk,
  and the KV cache has room for the whole prompt.

**KV cache** (paged, blocks of ``B`` tokens): the scheduler counts each sequence's
cached tokens plus ``B - 1`` (its last block counted full), and each prefilling
request's whole prompt plus ``B - 1``. Before an iteration, if the decode tokens
it adds would not fit, the most recently admitted sequence is **preempted**
(recompute, vLLM's default): its blocks are freed and it goes back to the front
of the queue, to prefill its prompt and generated tokens again.

**Data parallel ranks** (attention DP with experts over EP, as DeepSeek-V3 is
served): the ``dp`` ranks step together. Sequences, KV cache and token budget
are pooled over the ranks, decode work is spread evenly (``b / dp`` per rank),
and each prefill chunk goes to the rank with the most token budget left (a load
balancer that spreads prompts); the iteration takes the time of the busiest rank. With ``pp`` pipeline stages the decode batch runs as ``pp``
micro-batches (``b / (dp pp)`` tokens each), as the step model's decode does.

**Skipping ahead**: iterations that only decode (nothing to prefill, nobody to
admit) repeat with one more token per sequence; the loop runs ``k`` of them at
once, up to the next finish, the next arrival that could be admitted, or the
iteration at which the KV cache would overflow, with time ``k (T_first + T_last) / 2``
(iteration time is near linear in the context between those points).

Left out: prefix caching, speculative decoding, priorities other than FCFS,
swapping to host memory, per-rank imbalance beyond the busiest prefill rank,
CPU-side scheduling overhead.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: states of a request
_NOT_ARRIVED, _WAITING, _PREFILL, _DECODE, _DONE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler limits of one engine instance (pooled over its DP ranks)."""

    dp: int
    pp: int
    max_num_seqs: int  # per DP rank
    max_num_batched_tokens: int  # per DP rank
    kv_capacity_tokens: int  # per DP rank
    kv_block_tokens: int
    chunked_prefill: bool
    cached_prompt_tokens: int = 0  # prefix-cache hit per request (at most its prompt less one token)

    @property
    def seats(self) -> int:
        return self.max_num_seqs * self.dp

    @property
    def kv_tokens(self) -> int:
        return self.kv_capacity_tokens * self.dp


@dataclass
class EngineRun:
    """What one instance did: per-request times (seconds, NaN where not reached) and the time series."""

    admit_s: np.ndarray
    first_token_s: np.ndarray
    second_token_s: np.ndarray
    finish_s: np.ndarray
    num_preemptions: np.ndarray
    #: (iteration seconds, decode tokens it produced) per iteration or run of identical iterations
    itl_s: np.ndarray
    itl_weight: np.ndarray
    num_iterations: int
    busy_s: float
    peak_kv_tokens: float
    #: samples at times ``k * sample_dt``: waiting, running (decode + prefill), KV tokens in use
    sample_dt_s: float
    num_waiting: np.ndarray
    num_running: np.ndarray
    kv_used_tokens: np.ndarray
    num_in_system: np.ndarray
    kv_capacity_tokens: int
    notes: list[str] = field(default_factory=list)


def run_engine(arrival_s, prompt_tokens, output_tokens, cost: Callable[[float, float, float, float], float],
               cfg: EngineConfig, *, prefilled=None, cached=None, sample_dt_s: float = 1.0, skip_ahead: bool = True,
               progress: Callable[[int], None] | None = None) -> EngineRun:
    """Simulate one engine over requests sorted by arrival (see the module docstring).

    ``cost(n, keys, kv_read, lm)`` is the iteration time of the busiest DP rank
    (:meth:`moesim.serving.costs.IterationCost.iteration_s`). ``prefilled[i]``: the
    request arrives with its prompt's KV cache and first token (the decode pool of a
    disaggregated deployment). ``cached[i]``: leading prompt tokens of the request whose KV cache is resident
    (a prefix-cache hit, less than its prompt): its prefill starts after them, and its chunks attend to them;
    default ``min(cfg.cached_prompt_tokens, prompt - 1)`` for every request.
    ``skip_ahead=False`` runs every iteration on its own (the
    reference for the skipping). ``progress(n_done)`` is called now and then.
    """
    arr = [float(x) for x in arrival_s]
    P = [int(x) for x in prompt_tokens]
    O = [int(x) for x in output_tokens]
    N = len(arr)
    pre = [bool(x) for x in prefilled] if prefilled is not None else [False] * N
    c0 = cfg.cached_prompt_tokens
    hit = [int(x) for x in cached] if cached is not None else [min(c0, p - 1) for p in P]
    dp, div = cfg.dp, cfg.dp * cfg.pp
    M = cfg.max_num_batched_tokens
    B1 = cfg.kv_block_tokens - 1
    cap = cfg.kv_tokens
    seats = cfg.seats
    chunked = cfg.chunked_prefill

    state = [_NOT_ARRIVED] * N
    admit = [math.nan] * N
    first = [math.nan] * N
    second = [math.nan] * N
    finish = [math.nan] * N
    npre = [0] * N
    gen = [0] * N  # tokens generated (while waiting / prefilling)
    pf_total = [0] * N  # tokens to prefill (prompt, or prompt + generated after a preemption)
    pf_done = [0] * N
    s0 = [0] * N
    j0 = [0] * N
    g0 = [0] * N
    ver = [0] * N
    order = [0] * N  # admission sequence number (preemption victim: the largest)

    waiting: deque[int] = deque()
    prefilling: list[int] = []
    fin_heap: list[tuple[int, int, int]] = []  # (leave iteration, rid, version)
    victims: list[tuple[int, int, int]] = []  # (-order, rid, version)
    pending_second: list[int] = []
    itl_t: list[float] = []
    itl_w: list[float] = []
    smp_w: list[int] = []
    smp_r: list[int] = []
    smp_kv: list[float] = []
    smp_sys: list[int] = []

    t = 0.0
    j = 0
    b = 0
    S = 0  # sum over decoding sequences of (s0 + 1 - j0)
    res = 0  # tokens reserved by prefilling requests (prompt + B - 1 each)
    nxt = 0
    done = 0
    admitted = 0
    iters = 0
    busy = 0.0
    peak = 0.0
    stall = 0.0
    next_sample = 0.0
    report_every = max(1, N // 200)
    next_report = report_every

    def sample_until(now: float) -> None:
        nonlocal next_sample
        while next_sample <= now:
            arrived = bisect.bisect_right(arr, next_sample)
            smp_w.append(len(waiting) + max(0, arrived - nxt))
            smp_r.append(b + len(prefilling))
            smp_kv.append(float(S + b * j - b + b * B1 + res) if b else float(res))
            smp_sys.append(arrived - done)
            next_sample += sample_dt_s

    def preempt(rid: int) -> None:
        nonlocal b, S, res
        st = state[rid]
        if st == _DECODE:
            steps = j - j0[rid]
            S -= s0[rid] + 1 - j0[rid]
            b -= 1
            gen[rid] = g0[rid] + steps
            pf_total[rid] = s0[rid] + steps + 1
        else:  # prefilling: start its prompt again
            prefilling.remove(rid)
            res -= pf_total[rid] + B1
        pf_done[rid] = 0
        ver[rid] += 1
        state[rid] = _WAITING
        npre[rid] += 1
        waiting.appendleft(rid)

    def pop_victim() -> int:
        while victims:
            _, rid, v = heapq.heappop(victims)
            if v == ver[rid] and state[rid] in (_PREFILL, _DECODE):
                return rid
        return -1

    def join_decode(rid: int, cached: int, generated: int, at: int) -> None:
        nonlocal b, S
        state[rid] = _DECODE
        s0[rid], g0[rid], j0[rid] = cached, generated, at
        S += cached + 1 - at
        b += 1
        heapq.heappush(fin_heap, (at + O[rid] - generated, rid, ver[rid]))

    while done < N:
        while nxt < N and arr[nxt] <= t:
            state[nxt] = _WAITING
            pf_total[nxt] = P[nxt]
            if pre[nxt]:
                gen[nxt] = 1
            waiting.append(nxt)
            nxt += 1
        if b == 0 and not prefilling and not waiting:
            sample_until(arr[nxt])
            t = arr[nxt]
            continue

        # 1. room for this iteration's decode tokens, preempting the newest sequences if needed
        while b and S + b * j + b * B1 + res > cap:
            victim = pop_victim()
            if victim < 0:
                break
            preempt(victim)

        # 2. prefill chunks of running prompts, then admissions from the queue (FCFS); each chunk goes to the
        #    DP rank with the most budget left, and the iteration takes the busiest rank's time
        d = b / div
        per_rank = (M - b / dp) if chunked else M
        chunks: list[tuple[int, int]] = []
        loads: list[tuple[int, int]] = []  # (tokens placed, rank), a heap; empty until the first chunk
        per: dict[int, list] = {}

        def room() -> int:
            return int(per_rank - (loads[0][0] if loads else 0))

        def place(rid: int, q: int, rem: int) -> bool:
            if not loads:
                loads.extend((0, r) for r in range(dp))
            a, r = loads[0]
            left = int(per_rank - a)
            if left < 1 or (rem > left and not chunked):
                return False
            c = rem if rem <= left else left
            heapq.heapreplace(loads, (a + c, r))
            chunks.append((rid, c))
            st = per.get(r)
            if st is None:
                st = per[r] = [0, 0.0, 0.0, 0]
            st[0] += c
            st[1] += c * (q + (c + 1) / 2)
            st[2] += q
            st[3] += c == rem
            return True

        for rid in prefilling:
            if not place(rid, pf_done[rid], pf_total[rid] - pf_done[rid]):
                break
        kv_now = S + b * j + b * B1 + res
        while waiting and b + len(prefilling) < seats:
            rid = waiting[0]
            if pre[rid] and npre[rid] == 0:
                # arrives with its prompt cached (decode pool): joins the decode batch now
                need = P[rid] + 1 + B1
                if kv_now + need > cap:
                    break
                waiting.popleft()
                admitted += 1
                order[rid] = admitted
                heapq.heappush(victims, (-admitted, rid, ver[rid]))
                admit[rid] = t
                join_decode(rid, P[rid], 1, j)
                kv_now += need
                pending_second.append(rid)
                continue
            need = pf_total[rid] + B1
            if kv_now + need > cap:
                break
            left = room()
            if left < 1 or (not chunked and pf_total[rid] - hit[rid] > left):
                break
            waiting.popleft()
            state[rid] = _PREFILL
            prefilling.append(rid)
            res += need
            kv_now += need
            admitted += 1
            order[rid] = admitted
            heapq.heappush(victims, (-admitted, rid, ver[rid]))
            if math.isnan(admit[rid]):
                admit[rid] = t
            pf_done[rid] = hit[rid]  # a cached prefix is not computed
            place(rid, hit[rid], pf_total[rid] - hit[rid])
        if chunks:
            busy_n, busy_pairs, busy_read, busy_lm = max(per.values())
        d = b / div
        if kv_now > peak:
            peak = kv_now

        if not chunks:
            # 3. decode only: run k identical iterations at once
            if not b:
                raise RuntimeError("scheduler stalled: nothing to run and nobody admissible")
            while fin_heap and ver[fin_heap[0][1]] != fin_heap[0][2]:
                heapq.heappop(fin_heap)
            k = fin_heap[0][0] - j
            room = cap - res - b * B1 - S
            k_cap = room // b - j + 1
            if k_cap < k:
                k = k_cap
            K0 = S + b * j
            T0 = cost(d, K0 / b, K0 / div, d)
            if not waiting and nxt < N and b + len(prefilling) < seats:
                gap = arr[nxt] - t
                k_arr = int(math.ceil(gap / T0)) if gap > 0 else 1
                if k_arr < k:
                    k = k_arr
            if k < 1 or not skip_ahead:
                k = 1
            if k > 1:
                K1 = K0 + b * (k - 1)
                dt = k * (T0 + cost(d, K1 / b, K1 / div, d)) / 2
            else:
                dt = T0
            step = dt / k
            if pending_second:
                for rid in pending_second:
                    second[rid] = t + step
                pending_second.clear()
            if stall:
                itl_t.append(step + stall)
                itl_w.append(b)
                if k > 1:
                    itl_t.append(step)
                    itl_w.append(b * (k - 1))
                stall = 0.0
            else:
                itl_t.append(step)
                itl_w.append(b * k)
            t += dt
            busy += dt
            j += k
            iters += k
            last = S + b * (j - 1) + b * B1 + res
            if last > peak:
                peak = last
        else:
            # 4. one iteration with prefill chunks, and the decode batch unless prefill is unchunked
            decode_now = chunked and b > 0
            if decode_now:
                dk = (S + b * j) / div
                n = d + busy_n
                T = cost(n, (dk + busy_pairs) / n, dk + busy_read, d + busy_lm)
            else:
                T = cost(busy_n, busy_pairs / busy_n, busy_read, busy_lm)
            t += T
            busy += T
            iters += 1
            if decode_now:
                itl_t.append(T + stall)
                itl_w.append(b)
                stall = 0.0
                if pending_second:
                    for rid in pending_second:
                        second[rid] = t
                    pending_second.clear()
                j += 1
            elif b:
                stall += T  # decode waited for this prefill-only iteration (its sequences did not advance)
            for rid, c in chunks:
                pf_done[rid] += c
                if pf_done[rid] < pf_total[rid]:
                    continue
                prefilling.remove(rid)
                res -= pf_total[rid] + B1
                gen[rid] += 1
                if gen[rid] == 1:
                    first[rid] = t
                elif gen[rid] == 2 and second[rid] != second[rid]:
                    second[rid] = t
                if gen[rid] >= O[rid]:
                    state[rid] = _DONE
                    ver[rid] += 1
                    finish[rid] = t
                    done += 1
                else:
                    join_decode(rid, pf_total[rid], gen[rid], j)
                    if gen[rid] == 1:
                        pending_second.append(rid)
        # 5. finishes
        while fin_heap and fin_heap[0][0] <= j:
            jf, rid, v = heapq.heappop(fin_heap)
            if v != ver[rid] or state[rid] != _DECODE:
                continue
            state[rid] = _DONE
            ver[rid] += 1
            finish[rid] = t
            S -= s0[rid] + 1 - j0[rid]
            b -= 1
            done += 1
        sample_until(t)
        if progress is not None and done >= next_report:
            progress(done)
            next_report = done + report_every

    if progress is not None:
        progress(done)
    return EngineRun(
        admit_s=np.asarray(admit), first_token_s=np.asarray(first), second_token_s=np.asarray(second),
        finish_s=np.asarray(finish), num_preemptions=np.asarray(npre, dtype=np.int64),
        itl_s=np.asarray(itl_t), itl_weight=np.asarray(itl_w, dtype=float), num_iterations=iters, busy_s=busy,
        peak_kv_tokens=peak, sample_dt_s=sample_dt_s, num_waiting=np.asarray(smp_w, dtype=np.int64),
        num_running=np.asarray(smp_r, dtype=np.int64), kv_used_tokens=np.asarray(smp_kv),
        num_in_system=np.asarray(smp_sys, dtype=np.int64), kv_capacity_tokens=cap,
    )
