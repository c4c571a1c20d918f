"""Per-agent policy and value networks (paper IV-A2: two layers of 128 units), stacked on a leading agent axis.

Every agent i has its own policy pi^i, agent value V^a_i and expert value V^e_i
(fully decentralised, paper III-E). Their parameters are initialised with
`jax.vmap` over agent keys, so a parameter leaf has shape [A, ...] and every
per-agent computation is a `jax.vmap` over that axis (Mava's Anakin layout):
10 or 200 agents run the same code.

Observation encoding (a fixed transform of the Table I observation, not extra
information): one-hot current junction, one-hot destination, each outgoing
edge's score, and whether each outgoing edge ends at the destination.
Unavailable edges are masked out of the policy's logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

NEG_INF = -1e9


class MLP(nn.Module):
    out: int
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.tanh(nn.Dense(self.hidden, kernel_init=nn.initializers.orthogonal(jnp.sqrt(2.0)))(x))
        scale = 0.01 if self.out > 1 else 1.0  # near-uniform initial policy
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(scale))(x)


@struct.dataclass
class AgentParams:
    """Parameters of all agents, each leaf with a leading [A] axis."""

    policy: dict
    value_agent: dict
    value_expert: dict


def encode(features: jax.Array, n_nodes: int, m_out: int) -> jax.Array:
    """[..., 2M+2] Table I features -> [..., 2N + 2M] network input."""
    node = features[..., 0].astype(jnp.int32)
    dest = features[..., 1].astype(jnp.int32)
    per_edge = features[..., 2:].reshape(features.shape[:-1] + (m_out, 2))
    score = jnp.maximum(per_edge[..., 0], 0.0)
    ends_at_dest = (per_edge[..., 1].astype(jnp.int32) == dest[..., None]).astype(jnp.float32)
    return jnp.concatenate([jax.nn.one_hot(node, n_nodes), jax.nn.one_hot(dest, n_nodes), score, ends_at_dest], axis=-1)


def masked_logits(policy: MLP, params, x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, policy.apply(params, x), NEG_INF)


def init_agents(
    key: jax.Array, n_agents: int, input_dim: int, m_out: int, hidden: int = 128, critic_dim: int | None = None
) -> tuple[AgentParams, MLP, MLP]:
    """Independent initialisation of every agent's three networks (stacked on axis 0).

    `critic_dim`: input size of the agent value network when it is not the observation's
    (MAPPO's centralised critic, reled_jax/mappo.py).
    """
    policy, value = MLP(m_out, hidden), MLP(1, hidden)
    dummy = jnp.zeros((input_dim,))
    keys = jax.random.split(key, (3, n_agents))
    params = AgentParams(
        policy=jax.vmap(policy.init, in_axes=(0, None))(keys[0], dummy),
        value_agent=jax.vmap(value.init, in_axes=(0, None))(keys[1], jnp.zeros((critic_dim or input_dim,))),
        value_expert=jax.vmap(value.init, in_axes=(0, None))(keys[2], dummy),
    )
    return params, policy, value
