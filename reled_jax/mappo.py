"""MAPPO (Yu et al., 2022): IPPO's decentralised actors with a centralised critic.

The actors are exactly IPPO's (every agent its own policy on its own Table I
observation, reled_jax/networks.py). Only the critic changes: agent i's value
network sees the *global state* beside its own encoded observation (the
"agent-specific global state" variant of MAPPO), so the advantage of an action
is judged with everything that happens in the network in view. The clipped
PPO update, returns and minibatching are shared with IPPO and RELED
(`reled_jax.reled.make_epoch` with method "mappo"); this module defines what the
critic sees.

Global state of one environment, all in [0, 1]-ish units:
* every agent's position: coordinates of the junction it is at or approaching,
  and of its destination, divided by the network's extent, and whether it has
  arrived (5 numbers per agent; this also carries every agent's observation's
  junction and destination);
* every edge's occupancy (vehicles / jam storage), from which every agent's
  edge scores are derived;
* the simulator clock as a fraction of T_max.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sim.env import EnvParams, EnvState


def global_state_dim(n_agents: int, n_edges: int) -> int:
    return 5 * n_agents + n_edges + 1


def global_state(state: EnvState, params: EnvParams, n_agents: int) -> jax.Array:
    """[5A + E + 1] global state of one environment (see module doc)."""
    extent = jnp.maximum(params.node_xy.max(axis=0), 1.0)
    node = state.veh_node[:n_agents]
    dest = state.veh_dest[:n_agents]
    agents = jnp.concatenate(
        [params.node_xy[node] / extent, params.node_xy[dest] / extent, state.agent_arrived[:, None].astype(jnp.float32)], axis=1
    )
    on_edge = state.veh_edge >= 0
    count = jnp.zeros(params.edge_length.shape, jnp.float32).at[jnp.maximum(state.veh_edge, 0)].add(on_edge.astype(jnp.float32))
    clock = state.t.astype(jnp.float32)[None] / params.t_max
    return jnp.concatenate([agents.reshape(-1), count / params.edge_storage, clock])


def critic_input(x: jax.Array, g: jax.Array) -> jax.Array:
    """Agent-specific critic input: own encoded observation x [..., A, D] beside the global state g [..., G]."""
    g = jnp.broadcast_to(g[..., None, :], x.shape[:-1] + g.shape[-1:])
    return jnp.concatenate([x, g], axis=-1)
