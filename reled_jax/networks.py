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

The trainer never builds the one-hot vectors. `observe` keeps the two junction
indices as numbers (2 + 2M values instead of 2N + 2M) and a network made with
`one_hot_nodes=N` computes its first layer as two rows of its kernel plus a
matmul of the rest (`IndexDense`): the same function, with the same parameters
(kernel [2N + 2M, 128]) and the same gradients as `nn.Dense` on `encode`'s
output, at a fraction of the cost and memory (tests/test_networks.py).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

NEG_INF = -1e9


class IndexDense(nn.Module):
    """`nn.Dense` on [one_hot(x0, N), one_hot(x1, N), x[2:]], computed without the one-hots.

    Input x [..., 2 + R]: two indices in [0, N) (as numbers), then R plain features. The
    kernel is [2N + R, features], laid out as Dense's on the one-hot input, so parameters,
    outputs and gradients are those of the one-hot layer (rows of the kernel are gathered
    instead of multiplied by zeros).
    """

    features: int
    n_index: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        n = self.n_index
        kernel = self.param("kernel", self.kernel_init, (2 * n + x.shape[-1] - 2, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        first, second = x[..., 0].astype(jnp.int32), x[..., 1].astype(jnp.int32)
        return kernel[first] + kernel[n + second] + x[..., 2:] @ kernel[2 * n :] + bias


class MLP(nn.Module):
    out: int
    hidden: int = 128
    one_hot_nodes: int = 0  # N > 0: inputs are `observe`'s (two junction indices first), see IndexDense

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.orthogonal(jnp.sqrt(2.0))
        for layer in range(2):
            if layer == 0 and self.one_hot_nodes:
                x = nn.tanh(IndexDense(self.hidden, self.one_hot_nodes, kernel_init=init, name="Dense_0")(x))
            else:
                x = nn.tanh(nn.Dense(self.hidden, kernel_init=init, name=f"Dense_{layer}")(x))
        scale = 0.01 if self.out > 1 else 1.0  # near-uniform initial policy
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(scale), name="Dense_2")(x)


@struct.dataclass
class AgentParams:
    """Parameters of all agents, each leaf with a leading [A] axis."""

    policy: dict
    value_agent: dict
    value_expert: dict


def observe(features: jax.Array, m_out: int) -> jax.Array:
    """[..., 2M+2] Table I features -> [..., 2 + 2M] input of a `one_hot_nodes` network:
    junction and destination indices, each outgoing edge's score, whether it ends at the destination."""
    node = features[..., 0]
    dest = features[..., 1]
    per_edge = features[..., 2:].reshape(features.shape[:-1] + (m_out, 2))
    score = jnp.maximum(per_edge[..., 0], 0.0)
    ends_at_dest = (per_edge[..., 1].astype(jnp.int32) == dest[..., None].astype(jnp.int32)).astype(jnp.float32)
    return jnp.concatenate([node[..., None], dest[..., None], score, ends_at_dest], axis=-1)


def input_dim(m_out: int) -> int:
    """Width of `observe`'s output: 2 junction indices and 2 numbers per outgoing edge."""
    return 2 + 2 * m_out


def one_hot_input(x: jax.Array, n_nodes: int) -> jax.Array:
    """`observe`'s output (or a critic input that starts with it) -> the one-hot layout a plain network reads."""
    first, second = x[..., 0].astype(jnp.int32), x[..., 1].astype(jnp.int32)
    return jnp.concatenate([jax.nn.one_hot(first, n_nodes), jax.nn.one_hot(second, n_nodes), x[..., 2:]], axis=-1)


def encode(features: jax.Array, n_nodes: int, m_out: int) -> jax.Array:
    """[..., 2M+2] Table I features -> [..., 2N + 2M] one-hot network input (of a plain MLP; see module doc)."""
    return one_hot_input(observe(features, m_out), n_nodes)


def masked_logits(policy: MLP, params, x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, policy.apply(params, x), NEG_INF)


def init_agents(
    key: jax.Array, n_agents: int, input_dim: int, m_out: int, hidden: int = 128, critic_dim: int | None = None, one_hot_nodes: int = 0
) -> tuple[AgentParams, MLP, MLP]:
    """Independent initialisation of every agent's three networks (stacked on axis 0).

    `critic_dim`: input size of the agent value network when it is not the observation's
    (MAPPO's centralised critic, reled_jax/mappo.py). `one_hot_nodes` = N: the networks read
    `observe`'s output (input_dim = 2 + 2M) with one-hot-equivalent first layers (IndexDense).
    """
    policy, value = MLP(m_out, hidden, one_hot_nodes), MLP(1, hidden, one_hot_nodes)
    dummy = jnp.zeros((input_dim,))
    keys = jax.random.split(key, (3, n_agents))
    # Eager on purpose: a jitted orthogonal initialiser (QR) leaves the process hanging at exit
    # with jax 0.10.2 on CPU, though it would start a few seconds faster.
    params = AgentParams(
        policy=jax.vmap(policy.init, in_axes=(0, None))(keys[0], dummy),
        value_agent=jax.vmap(value.init, in_axes=(0, None))(keys[1], jnp.zeros((critic_dim or input_dim,))),
        value_expert=jax.vmap(value.init, in_axes=(0, None))(keys[2], dummy),
    )
    return params, policy, value


def init_env_agents(key: jax.Array, env, critic_extra: int = 0, hidden: int = 128) -> tuple[AgentParams, MLP, MLP]:
    """`init_agents` for an environment's agents, reading `observe`'s inputs (one-hot-equivalent first layers).

    `critic_extra`: inputs the agent value network reads after the observation (MAPPO's global state).
    """
    dim = input_dim(env.m_out)
    return init_agents(key, env.n_agents, dim, env.m_out, hidden, critic_dim=dim + critic_extra if critic_extra else None, one_hot_nodes=env.n_nodes)
