"""Dynamic time warping between trajectories (sequences of junction coordinates).

`dtw_reference` is the plain O(n*m) NumPy dynamic programme with Euclidean
point cost; it is the ground truth for the JAX kernel (issue 4) and what the
host-side expert benchmarks use.
"""

from __future__ import annotations

import numpy as np


def dtw_reference(a: np.ndarray, b: np.ndarray) -> float:
    """DTW distance between point sequences a [n, d] and b [m, d] (sum of matched Euclidean distances)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else float("inf")
    cost = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(acc[-1, -1])
