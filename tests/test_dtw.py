"""The JAX DTW kernel against the NumPy double loop and the dtaidistance package."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reled_jax.dtw import dtw, dtw_batch, dtw_reference


def _pad(x, n):
    return np.concatenate([x, np.full((n - len(x), x.shape[1]), 1e3)], axis=0)  # junk padding must be ignored


@pytest.mark.parametrize("metric", ["euclidean", "dtaidistance"])
def test_matches_numpy_reference_on_unequal_lengths(metric):
    rng = np.random.default_rng(0)
    n_max, m_max = 17, 23
    a_len = rng.integers(1, n_max + 1, 64)
    b_len = rng.integers(1, m_max + 1, 64)
    a = [rng.random((k, 2)) for k in a_len]
    b = [rng.random((k, 2)) for k in b_len]
    got = jax.jit(lambda *x: dtw_batch(*x, metric=metric))(
        jnp.asarray(np.stack([_pad(x, n_max) for x in a])), jnp.asarray(np.stack([_pad(x, m_max) for x in b])),
        jnp.asarray(a_len), jnp.asarray(b_len),
    )
    want = np.array([dtw_reference(x, y, metric) for x, y in zip(a, b)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_symmetric_zero_on_identical_and_empty_cases():
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.random((9, 2))), jnp.asarray(rng.random((5, 2)))
    assert float(dtw(x, y)) == pytest.approx(float(dtw(y, x)), rel=1e-6)
    assert float(dtw(x, x)) == 0.0
    # A path that waits (repeats a junction) is still at distance 0 from the path without the wait.
    assert float(dtw(x, jnp.concatenate([x[:3], x[2:3], x[3:]]))) == 0.0
    assert float(dtw(x, y, 0, 0)) == 0.0 and np.isinf(float(dtw(x, y, 0, 3)))
    # One point against a sequence: the sum of its distances to every point.
    assert float(dtw(x[:1], y)) == pytest.approx(float(jnp.linalg.norm(y - x[0], axis=1).sum()), rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("dtaidistance") is None, reason="dtaidistance not installed")
def test_matches_dtaidistance():
    from dtaidistance import dtw_ndim

    rng = np.random.default_rng(2)
    pairs = [(rng.random((int(rng.integers(2, 30)), 2)), rng.random((int(rng.integers(2, 30)), 2))) for _ in range(20)]
    # One compiled call on padded sequences with their lengths (the kernel's batch layout), not 20 shapes.
    got = jax.jit(lambda *x: dtw_batch(*x, metric="dtaidistance"))(
        jnp.asarray(np.stack([_pad(a, 30) for a, _ in pairs])), jnp.asarray(np.stack([_pad(b, 30) for _, b in pairs])),
        jnp.asarray([len(a) for a, _ in pairs]), jnp.asarray([len(b) for _, b in pairs]),
    )
    np.testing.assert_allclose(np.asarray(got), [dtw_ndim.distance(a, b) for a, b in pairs], rtol=1e-5)


def test_rejects_unknown_metric():
    with pytest.raises(ValueError, match="unknown DTW metric"):
        dtw(jnp.zeros((2, 2)), jnp.zeros((2, 2)), metric="manhattan")
