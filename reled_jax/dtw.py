"""Dynamic time warping between trajectories, in JAX (paper Eq. 30's D_DTW) and a NumPy reference.

Trajectories are sequences of visited junction coordinates, padded to a fixed
length with a true length alongside, so a batch of agents or episodes is one
array and `jax.vmap` applies directly.

The kernel is a wavefront (anti-diagonal) dynamic programme: cells on one
anti-diagonal i + j = k depend only on the two previous anti-diagonals, so one
`lax.scan` step fills a whole diagonal as a vector operation. That is
n + m - 1 sequential steps of O(n) parallel work, instead of the n * m
sequential steps of the textbook double loop, and it vectorises over batches.

Two point costs:
* "euclidean": DTW = min over warping paths of the sum of Euclidean distances
  between matched points (the usual trajectory DTW; metres in, metres out).
* "dtaidistance": sqrt of the minimal sum of *squared* distances, the
  convention of the `dtaidistance` package (used to cross-check the kernel).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("euclidean", "dtaidistance")


def dtw(a: jax.Array, b: jax.Array, a_len: jax.Array | int | None = None, b_len: jax.Array | int | None = None, metric: str = "euclidean") -> jax.Array:
    """DTW distance between a [n, d] (first a_len rows real) and b [m, d] (first b_len rows real).

    Jittable and vmappable. Lengths default to the full arrays. A pair where
    either sequence is empty has distance 0 if both are empty, else inf.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown DTW metric {metric!r}; choose one of {METRICS}")
    chex.assert_rank([a, b], 2)
    chex.assert_equal_shape_suffix([a, b], 1)
    n, m = a.shape[0], b.shape[0]
    a_len = jnp.asarray(n if a_len is None else a_len, jnp.int32)
    b_len = jnp.asarray(m if b_len is None else b_len, jnp.int32)
    diff = a[:, None, :].astype(jnp.float32) - b[None, :, :].astype(jnp.float32)
    sq = jnp.sum(diff * diff, axis=-1)
    cost = sq if metric == "dtaidistance" else jnp.sqrt(sq)  # [n, m]
    rows = jnp.arange(n)
    inf = jnp.float32(jnp.inf)
    # Skew the cost matrix into anti-diagonals once ([n+m-1, n]: diagonal k, row i -> cost[i, k-i]),
    # so the sequential loop below does no gathers.
    diags = jnp.arange(n + m - 1)
    cols = diags[:, None] - rows[None, :]
    valid = (cols >= 0) & (cols < b_len) & (rows[None, :] < a_len)
    skewed = jnp.where(valid, cost[rows[None, :], jnp.clip(cols, 0, m - 1)], inf)
    first = rows == 0

    def diagonal(carry, xs):
        prev, prev2, result = carry  # D on diagonals k-1 and k-2, indexed by row i
        c, k = xs
        up = jnp.concatenate([jnp.full((1,), inf), prev[:-1]])  # D[i-1][j]
        diag = jnp.concatenate([jnp.full((1,), inf), prev2[:-1]])  # D[i-1][j-1]
        best = jnp.minimum(jnp.minimum(up, prev), diag)  # prev[i] is D[i][j-1]
        best = jnp.where((k == 0) & first, 0.0, best)
        current = c + best  # c is inf outside the valid band, so current is too
        done = k == a_len + b_len - 2
        result = jnp.where(done, current[jnp.clip(a_len - 1, 0, n - 1)], result)
        return (current, prev, result), None

    init = (jnp.full((n,), inf), jnp.full((n,), inf), inf)
    (_, _, result), _ = jax.lax.scan(diagonal, init, (skewed, diags))
    result = jnp.where((a_len == 0) & (b_len == 0), 0.0, result)
    return jnp.sqrt(result) if metric == "dtaidistance" else result


def dtw_batch(a: jax.Array, b: jax.Array, a_len: jax.Array, b_len: jax.Array, metric: str = "euclidean") -> jax.Array:
    """DTW of B pairs: a [B, n, d], b [B, m, d], lengths [B] -> [B]."""
    return jax.vmap(lambda x, y, lx, ly: dtw(x, y, lx, ly, metric))(a, b, a_len, b_len)


def dtw_reference(a: np.ndarray, b: np.ndarray, metric: str = "euclidean") -> float:
    """The textbook O(n*m) double loop in NumPy: ground truth for the kernel."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else float("inf")
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    cost = sq if metric == "dtaidistance" else np.sqrt(sq)
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(np.sqrt(acc[-1, -1]) if metric == "dtaidistance" else acc[-1, -1])
