"""The trainer's networks read junction indices (`observe`), not one-hot vectors: the same function."""

import jax
import jax.numpy as jnp
import numpy as np

from reled_jax.networks import MLP, encode, observe, one_hot_input

N_NODES, M_OUT = 7, 3


def _features(key, n):
    """Table I features of n agents on a 7-junction network with 3 outgoing slots (-1 where none)."""
    k = jax.random.split(key, 4)
    node = jax.random.randint(k[0], (n, 1), 0, N_NODES)
    dest = jax.random.randint(k[1], (n, 1), 0, N_NODES)
    ends = jax.random.randint(k[2], (n, M_OUT), -1, N_NODES)
    score = jnp.where(ends >= 0, jax.random.uniform(k[3], (n, M_OUT)), -1.0)
    per_edge = jnp.stack([score, ends.astype(jnp.float32)], -1).reshape(n, 2 * M_OUT)
    return jnp.concatenate([node, dest, per_edge], 1).astype(jnp.float32)


def test_index_network_equals_the_one_hot_network_in_parameters_outputs_and_gradients():
    features = _features(jax.random.PRNGKey(0), 64)
    x_fast, x_slow = observe(features, M_OUT), encode(features, N_NODES, M_OUT)
    assert x_fast.shape == (64, 2 + 2 * M_OUT) and x_slow.shape == (64, 2 * N_NODES + 2 * M_OUT)
    np.testing.assert_array_equal(one_hot_input(x_fast, N_NODES), x_slow)
    fast, slow = MLP(M_OUT, 16, one_hot_nodes=N_NODES), MLP(M_OUT, 16)
    p_fast = fast.init(jax.random.PRNGKey(1), x_fast[0])
    p_slow = slow.init(jax.random.PRNGKey(1), x_slow[0])
    jax.tree.map(np.testing.assert_array_equal, p_fast, p_slow)  # same names, shapes and initial values
    p = jax.tree.map(lambda z: z + 0.1 * jax.random.normal(jax.random.PRNGKey(2), z.shape), p_slow)  # not the initial point
    np.testing.assert_allclose(fast.apply(p, x_fast), slow.apply(p, x_slow), rtol=1e-5, atol=1e-6)
    target = jax.random.normal(jax.random.PRNGKey(3), (64, M_OUT))
    loss = lambda net, x: lambda q: jnp.sum((net.apply(q, x) - target) ** 2)  # noqa: E731
    g_fast, g_slow = jax.grad(loss(fast, x_fast))(p), jax.grad(loss(slow, x_slow))(p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_fast, g_slow)
    # Rows of junctions nobody stands at or heads for get no gradient in either form.
    used = np.union1d(np.asarray(x_fast[:, 0]), N_NODES + np.asarray(x_fast[:, 1])).astype(int)
    unused = np.setdiff1d(np.arange(2 * N_NODES), used)
    assert np.all(np.asarray(g_fast["params"]["Dense_0"]["kernel"])[unused] == 0)


def test_observe_keeps_indices_scores_and_destination_flags():
    features = jnp.array([[2, 5, 0.5, 5, -1, -1, 0.3, 1]], jnp.float32)
    np.testing.assert_allclose(observe(features, M_OUT), [[2, 5, 0.5, 0.0, 0.3, 1, 0, 0]])
