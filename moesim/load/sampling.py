"""Monte Carlo of per-expert token counts per step, vectorised over samples.

Symbols: T tokens per step, k experts per token, E experts, S samples,
``pi_e`` inclusion probabilities (sum k), ``c_e`` tokens routed to expert e in
one step.

**Top-k (count level).** Each token takes k distinct experts, so ``c_e`` is
exactly ``Binomial(T, pi_e)``, ``sum_e c_e = T k``, and the per-token choices are
negatively correlated across experts. Rather than draw T x E per-token keys, a
sample builds counts with the right first two moments and the exact total:

1. deviations ``y_e = c_e - T pi_e`` of independent binomials (variance
   ``v_e = T pi_e (1 - pi_e)``);
2. projected onto ``sum y = 0`` with weights ``v`` (Gaussian conditioning on the
   total: covariance ``diag(v) - v v^T / V``, ``V = sum v``);
3. plus independent ``N(0, v_e^2 / V)`` noise projected with weights ``v^2``,
   which restores each marginal variance to ``v_e`` (up to ``v_e^4 / (V sum v^2)``)
   and leaves off-diagonal covariances ``-v_e v_f / V (1 + O(1/E))``: Hajek's
   approximation for fixed-size sampling designs, exact to ``O(1/E^2)`` for
   uniform routing (where the truth is ``-v / (E - 1)``);
4. rounded by systematic sampling (unbiased, row total exactly ``T k``); a
   count pushed outside ``[0, T]`` is clipped and its excess moved to experts
   with room.

A plain ``Multinomial(T k, pi / k)`` would overstate the per-rank variance by
``(E - 1)/(E - k)`` for uniform routing and let a count exceed T. Omitted: the
exact second- and higher-order structure of Plackett-Luce; tests compare the
max-loaded rank against the exact per-token simulation, :func:`per_token_counts`.

**Top-1** is exactly ``Multinomial(T, p)``. **Threshold** routing takes experts
independently, so ``c_e ~ Binomial(T, q_e)`` independently is exact.

**Speed.** A binomial with variance ``sigma^2 = T pi (1 - pi) >= 30`` is drawn as
a skewness-corrected normal (two-term Cornish-Fisher expansion,
``x = T pi + sigma (z + gamma (z^2 - 1) / 6)``, ``gamma = (1 - 2 pi) / sigma``),
rounded and clipped to ``[0, T]``: its quantiles match the exact binomial's
within one token out to the 1e-4 tail (tests/load check this), and it costs a
normal draw instead of numpy's BTPE binomial.
"""

from __future__ import annotations

import numpy as np

from .routing import sample_topk

__all__ = ["sample_topk_counts", "sample_independent_counts", "per_token_counts", "binomials"]

#: binomials with at least this variance are drawn as Cornish-Fisher normals
NORMAL_MIN_VAR = 30.0


def binomials(n: int, p: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``c[s, e] ~ Binomial(n, p_e)`` independently, int64 [S, E] (large variances via Cornish-Fisher)."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    var = n * p * (1.0 - p)
    big = var >= NORMAL_MIN_VAR
    if not big.any():
        if p.size and np.all(p == p[0]):  # one probability (uniform routing): numpy's scalar path, the same draws
            return rng.binomial(n, float(p[0]), size=(num_samples, p.size)).astype(np.int64)
        return rng.binomial(n, p, size=(num_samples, p.size)).astype(np.int64)
    out = np.empty((num_samples, p.size), dtype=np.int64)
    small = ~big
    if small.any():
        out[:, small] = rng.binomial(n, p[small], size=(num_samples, int(small.sum())))
    sd = np.sqrt(var[big])
    gamma = (1.0 - 2.0 * p[big]) / sd
    z = rng.standard_normal((num_samples, sd.size))
    # x = n p + sd (z + gamma (z^2 - 1) / 6), evaluated in place: the same operations in the same order
    x = np.multiply(z, z)
    x -= 1.0
    x *= gamma
    x /= 6.0
    x += z
    x *= sd
    x += n * p[big]
    np.rint(x, out=x)
    np.clip(x, 0, n, out=x)
    out[:, big] = x
    return out


def sample_independent_counts(q: np.ndarray, num_tokens: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``c[s, e] ~ Binomial(T, q_e)`` independently, int64 [S, E]."""
    return binomials(int(num_tokens), q, num_samples, rng)


def sample_topk_counts(pi: np.ndarray, num_tokens: int, top_k: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Per-expert counts [S, E] with ``c_e ~ Binomial(T, pi_e)`` and every row summing to ``T * top_k``."""
    t = int(num_tokens)
    e = pi.size
    pi = np.clip(np.asarray(pi, dtype=float), 0.0, 1.0)
    if top_k == 1:
        p = pi / pi.sum()
        return rng.multinomial(t, p, size=num_samples).astype(np.int64)
    if top_k >= e:
        return np.full((num_samples, e), t, dtype=np.int64)
    total = t * int(top_k)
    v = t * pi * (1.0 - pi)
    vsum = float(v.sum())
    if vsum <= 0:  # every expert always or never chosen: no randomness
        return np.broadcast_to(np.rint(t * pi).astype(np.int64), (num_samples, e)).copy()
    c = binomials(t, pi, num_samples, rng)
    mean = t * pi
    # The [S, E] arithmetic below runs in place on three buffers: fresh arrays of this size cost page faults
    # on every call (the allocator hands their pages back), several times the arithmetic itself.
    y = np.subtract(c, mean)
    buf = np.multiply(y.sum(axis=1, keepdims=True), v / vsum)
    y -= buf  # condition on the total
    v2 = v * v
    eta = rng.standard_normal((num_samples, e))
    eta *= v / np.sqrt(vsum)
    eta -= np.multiply(eta.sum(axis=1, keepdims=True), v2 / v2.sum(), out=buf)  # restore the marginal variances, zero sum
    x = np.add(mean, y, out=y)
    x += eta
    np.clip(x, 0.0, float(t), out=x)
    # unbiased systematic rounding that keeps every row total at T k
    fl = np.floor(x, out=eta)
    frac = np.subtract(x, fl, out=x)
    cum = np.cumsum(frac, axis=1, out=buf)
    need = np.clip(total - fl.sum(axis=1), 0, None)
    scale = np.where(cum[:, -1] > 0, need / np.where(cum[:, -1] > 0, cum[:, -1], 1.0), 0.0)
    cum *= scale[:, None]
    u = rng.random((num_samples, 1))
    hits = np.subtract(cum, u, out=cum)
    np.ceil(hits, out=hits)
    np.maximum(0.0, hits, out=hits)
    extra = frac  # the first differences of hits along the experts (hits[:, 0] first)
    extra[:, 0] = hits[:, 0]
    np.subtract(hits[:, 1:], hits[:, :-1], out=extra[:, 1:])
    fl += extra
    np.clip(fl, 0, t, out=fl)
    c = fl.astype(np.int64)
    d = total - c.sum(axis=1)
    for sign in (1, -1):  # rare: clipping moved a few units; give them to experts with room
        rows = np.flatnonzero(d * sign > 0)
        for _ in range(64):
            if rows.size == 0:
                break
            room = (t - c[rows]) if sign > 0 else c[rows]
            w = np.where(room > 0, v + 1e-300, 0.0)
            wsum = w.sum(axis=1, keepdims=True)
            w = np.where(wsum > 0, w, (room > 0).astype(float))
            w = w / w.sum(axis=1, keepdims=True)
            move = np.minimum(rng.multinomial(np.abs(d[rows]), w), room)
            c[rows] += sign * move
            d[rows] -= sign * move.sum(axis=1)
            rows = rows[d[rows] * sign > 0]
    return c


def per_token_counts(probs: np.ndarray, num_tokens: int, top_k: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Exact reference: counts [S, E] from per-token Plackett-Luce choices (:func:`sample_topk`). Slow: O(S T E)."""
    e = probs.size
    out = np.empty((num_samples, e), dtype=np.int64)
    for s in range(num_samples):
        idx = sample_topk(probs, num_tokens, top_k, rng)
        out[s] = np.bincount(idx.ravel(), minlength=e)
    return out
