"""The pictures of issue 20: an episode's animation (sim.render) and Fig. 6's flow map (benchmarks.flow_map)."""

import jax
import jax.numpy as jnp
import numpy as np

from sim.scenarios import load_scenario


def test_the_recorded_episode_is_the_one_step_runs_and_the_animation_has_a_frame_per_interval(tmp_path):
    from PIL import Image

    from reled_jax.evaluate import test_episode
    from sim.policies import shortest_time_policy
    from sim.render import animate, record_episode

    network, env, params = load_scenario("oakland", "moderate", n_agents=4)
    policy = lambda key, obs: shortest_time_policy(key, obs, params)  # noqa: E731
    key = jax.random.PRNGKey(3)
    episode = record_episode(env, params, policy, key)
    # Tick by tick, the same episode as `step` runs from the same reset: who arrives, and when.
    _, travel, arrived, _, finished = jax.device_get(test_episode(env, params, policy, jax.random.split(key)[0], 3000))
    last = episode.seconds - 1
    assert bool(finished) and arrived.all() and episode.agent_arrived[last].all() and not episode.live[last + 1:].any()
    np.testing.assert_allclose(episode.agent_travel_time[last], travel)
    assert (np.diff(episode.t[: last + 1]) == 1).all() and episode.occupancy.max() > 0
    frames = animate(network, params, episode, tmp_path / "episode.gif", every=40)
    want = len(set(range(0, last + 1, 40)) | {last})
    assert frames == want and Image.open(tmp_path / "episode.gif").n_frames == want
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file became the output


def test_each_agents_flow_is_a_route_from_its_origin_to_its_destination():
    """Fig. 6's flows: for an agent that arrived, roads entered minus roads left is +1 at its origin, -1 at its
    destination and 0 elsewhere (flow conservation); the map's panels add these up."""
    from benchmarks.flow_map import agent_edge_flows, agreement, expert_plans
    from llm.demos import make_demo_rollout

    network, env, params = load_scenario("oakland", "moderate", n_agents=4)
    plans = expert_plans(network, params, "planner", seed=0)
    rollout = jax.jit(lambda k: make_demo_rollout(env, 512)(k, params, plans, jnp.ones(4, bool), lambda _k, obs: jnp.zeros(obs.action_mask.shape)))(
        jax.random.PRNGKey(1))
    flow = np.asarray(agent_edge_flows(rollout, params.out_edges, env.n_edges))  # [A, E]
    origin, dest = np.asarray(params.agent_origin), np.asarray(params.agent_dest)
    assert np.asarray(rollout.arrived).all()
    for a in range(4):
        net = np.zeros(network.n_nodes)
        np.add.at(net, network.edge_from, flow[a])
        np.add.at(net, network.edge_to, -flow[a])
        want = np.zeros(network.n_nodes)
        want[origin[a]], want[dest[a]] = 1, -1
        np.testing.assert_array_equal(net, want)
    total = flow.sum(0)
    same, shifted = agreement(total, total), agreement(total, np.roll(total, 1))
    assert same["cosine"] == 1.0 and same["expert_flow_on_agent_roads"] == 1.0 and same["roads_both"] == (total > 0).sum()
    assert shifted["cosine"] < 1.0 and shifted["expert_flow_on_agent_roads"] < 1.0
