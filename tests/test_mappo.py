"""MAPPO's centralised critic: what it sees, and that the epoch trains it on that."""

import jax
import jax.numpy as jnp
import numpy as np

from reled_jax.mappo import critic_input, global_state, global_state_dim
from reled_jax.networks import init_env_agents, input_dim as observation_dim, observe
from reled_jax.reled import HybridPPOConfig, empty_expert, init_state, make_epoch
from sim.scenarios import load_scenario


def _scenario():
    return load_scenario("oakland", "moderate", n_agents=3, seed=0, n_background=20)


def test_global_state_holds_every_agent_position_and_edge_occupancy():
    network, env, params = _scenario()
    _, state = env.reset(jax.random.PRNGKey(0), params)
    g = np.asarray(global_state(state, params, env.n_agents))
    assert g.shape == (global_state_dim(env.n_agents, env.n_edges),)
    extent = np.maximum(network.node_xy.max(0), 1.0)
    agents = g[: 5 * env.n_agents].reshape(env.n_agents, 5)
    node, dest = np.asarray(state.veh_node[: env.n_agents]), np.asarray(state.veh_dest[: env.n_agents])
    np.testing.assert_allclose(agents[:, :2], network.node_xy[node] / extent, rtol=1e-6)
    np.testing.assert_allclose(agents[:, 2:4], network.node_xy[dest] / extent, rtol=1e-6)
    edge = np.asarray(state.veh_edge)
    count = np.bincount(edge[edge >= 0], minlength=env.n_edges)
    np.testing.assert_allclose(g[5 * env.n_agents : -1], count / network.edge_storage, rtol=1e-6)
    assert (g[5 * env.n_agents : -1] > 0).any()


def test_an_agents_critic_sees_the_other_agents_but_its_actor_does_not():
    network, env, params = _scenario()
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    moved = state.replace(veh_node=state.veh_node.at[1].set((state.veh_node[1] + 1) % env.n_nodes))
    x = observe(obs.features, env.m_out)  # agent 0's own observation is unchanged by agent 1's move
    cx_before = critic_input(x, global_state(state, params, env.n_agents))
    cx_after = critic_input(x, global_state(moved, params, env.n_agents))
    d = x.shape[-1]
    np.testing.assert_array_equal(cx_before[0, :d], x[0])  # own observation first
    assert not np.allclose(cx_before[0], cx_after[0])  # agent 1's position is in agent 0's critic input
    np.testing.assert_array_equal(cx_before[0, d:], cx_before[2, d:])  # every agent sees the same global state


def test_mappo_epoch_trains_a_critic_on_the_global_state():
    network, env, params = _scenario()
    cfg = HybridPPOConfig(method="mappo", epochs=2, n_envs=2, rollout_steps=16, n_minibatches=2, update_epochs=1)
    input_dim = observation_dim(env.m_out)
    one_hot_dim = 2 * env.n_nodes + 2 * env.m_out  # rows of the first layer's kernel before the global state's
    agents, policy, value = init_env_agents(jax.random.PRNGKey(0), env, global_state_dim(env.n_agents, env.n_edges))
    assert agents.value_agent["params"]["Dense_0"]["kernel"].shape == (env.n_agents, one_hot_dim + global_state_dim(env.n_agents, env.n_edges), 128)
    epoch = jax.jit(make_epoch(env, params, policy, value, cfg))
    no_nodes = (jnp.zeros((1, env.n_agents, cfg.max_trajectory, 2)), jnp.zeros((1, env.n_agents), jnp.int32))
    state = init_state(jax.random.PRNGKey(1), agents, cfg)
    new, metrics = epoch(state, empty_expert(env.n_agents, input_dim, env.m_out), no_nodes)
    assert float(metrics["alpha"]) == 1.0 and np.isfinite(float(metrics["value_loss"]))
    # The critic's weights on the global-state inputs moved: it is trained on them.
    w0 = np.asarray(agents.value_agent["params"]["Dense_0"]["kernel"][:, one_hot_dim:])
    w1 = np.asarray(new.params.value_agent["params"]["Dense_0"]["kernel"][:, one_hot_dim:])
    assert np.abs(w1 - w0).max() > 1e-6
