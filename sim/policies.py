"""The two reference policies every method is compared against.

Both are pure functions of (key, observation, params) -> actions [A], so they run
inside `jit`/`vmap` exactly like a learned policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sim.env import EnvParams, Observation


def shortest_time_policy(key: jax.Array, obs: Observation, params: EnvParams) -> jax.Array:
    """Free-flow shortest-time routing: the first edge of the fastest empty-road route."""
    del key
    node = obs.features[:, 0].astype(jnp.int32)
    dest = obs.features[:, 1].astype(jnp.int32)
    slot = params.next_slot_time[node, dest]
    return jnp.maximum(slot, 0)


def random_policy(key: jax.Array, obs: Observation, params: EnvParams) -> jax.Array:
    """Uniform over the existing outgoing edges (action mask applied to the logits)."""
    del params
    logits = jnp.where(obs.action_mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1)


REFERENCE_POLICIES = {"shortest": shortest_time_policy, "random": random_policy}
