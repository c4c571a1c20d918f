"""The jittable environment: exact dynamics on hand-built networks, invariants under load, API contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim.env import RouteChoiceEnv, TrafficModel, make_env, make_params
from sim.network import SignalConfig, build_network
from sim.policies import random_policy, shortest_time_policy
from sim.scenarios import load_scenario

T_MAX = 2400
NO_JUNCTION_DELAY = TrafficModel(turn_delay_s=0.0, startup_loss_s=0.0)  # exact edge-by-edge times; junction delays are tested on their own


@pytest.fixture(scope="module")
def oakland():
    """Small scenario with enough background traffic that queues and full edges occur.

    Gridlock release is off here, so storage is a hard limit (it is tested on its own below).
    """
    return load_scenario("oakland", "moderate", n_agents=6, n_background=150, seed=0, t_max=600, traffic=TrafficModel(teleport_s=0))


def test_free_flow_time_and_exact_eq32_rewards(line_network):
    net = line_network
    env = make_env(net, n_agents=1, n_background=0)
    params = make_params(net, [0], [3], [0], [3], traffic=NO_JUNCTION_DELAY)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert bool(obs.awaiting[0]) and obs.features[0, 0] == 0 and obs.features[0, 1] == 3
    xy = net.node_xy
    dist = lambda n: float(np.linalg.norm(xy[n] - xy[3]))  # noqa: E731

    step = jax.jit(env.step_env)
    key = jax.random.PRNGKey(1)
    rewards, times = [], []
    while True:
        actions = shortest_time_policy(None, obs, params)
        obs, state, reward, done, info = step(key, state, actions, params)
        rewards.append(float(reward[0]))
        times.append(int(info["sim_time"]))
        if bool(info["episode_done"]):
            break
    # Decisions at A (t=0), B (t=10), C (t=20); arrival at D at t=30: 10 s per edge, no junction delay.
    assert times == [10, 20, 30]
    assert float(info["travel_time"][0]) == pytest.approx(float(net.shortest_time[0, 3]))
    assert rewards[0] == pytest.approx(-10 + dist(0) - dist(1), abs=1e-3)
    assert rewards[1] == pytest.approx(-10 + dist(1) - dist(2), abs=1e-3)
    assert rewards[2] == pytest.approx(-10 + dist(2) - 0.0 + 0.1 * T_MAX, abs=1e-3)
    assert int(state.agent_decisions[0]) == 3
    assert bool(done[0]) and bool(info["arrived"][0])


def test_observation_follows_table_1(line_network):
    net = line_network
    env = make_env(net, n_agents=1, n_background=0)
    params = make_params(net, [1], [3], [0], [3])
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    f = np.asarray(obs.features[0])
    assert f.shape == (2 * net.m_out + 2,)
    ends = sorted(f[3::2].tolist())
    assert ends == [0.0, 2.0]  # B's two outgoing edges lead to A and C
    assert np.allclose(f[2::2], 1.0)  # empty roads: score = free-flow / estimated = 1
    obs_a, _ = env.reset(jax.random.PRNGKey(0), make_params(net, [0], [3], [0], [3]))
    fa = np.asarray(obs_a.features[0])
    assert fa[4] == -1 and fa[5] == -1 and not bool(obs_a.action_mask[0, 1])


def test_red_light_holds_vehicle_at_stop_line(cross_network):
    net = cross_network
    env = make_env(net, n_agents=1, n_background=0)
    params = make_params(net, [1], [3], [1], [3])
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(env.step_env)
    obs, state, _, _, info = step(jax.random.PRNGKey(0), state, shortest_time_policy(None, obs, params), params)
    t_decide = int(info["sim_time"])  # reached the signalized centre
    obs, state, _, _, info = step(jax.random.PRNGKey(0), state, shortest_time_policy(None, obs, params), params)
    e_in = int(np.flatnonzero((net.edge_from == 1) & (net.edge_to == 0))[0])
    cycle, start, dur, offset = (int(x) for x in (net.signal_cycle[e_in], net.signal_green_start[e_in],
                                                  net.signal_green_dur[e_in], net.signal_offset[e_in]))
    # First green second at or after t_decide, then 20 s on the 200 m exit edge.
    t = t_decide
    while not (start <= (t + offset) % cycle < start + dur):
        t += 1
    assert int(info["sim_time"]) == t + 20
    assert bool(info["arrived"][0])


def _rollout(env, params, policy, key, n_steps):
    """Random-policy rollout with auto-reset, returning every intermediate state."""

    def body(carry, _):
        key, obs, state = carry
        key, k_act, k_step = jax.random.split(key, 3)
        actions = policy(k_act, obs, params)
        obs, state, reward, done, info = env.step(k_step, state, actions, params)
        return (key, obs, state), (obs, state, reward, info)

    obs, state = env.reset(key, params)
    return jax.lax.scan(body, (key, obs, state), None, length=n_steps)[1]


def test_invariants_under_load(oakland):
    net, env, params = oakland
    obs, states, rewards, infos = jax.jit(lambda k: _rollout(env, params, random_policy, k, 300))(jax.random.PRNGKey(3))
    edge = np.asarray(states.veh_edge)  # [T, V]
    arrived = np.concatenate([np.asarray(states.agent_arrived), np.zeros(edge.shape[:1] + (env.n_background,), bool)], 1)
    # Vehicles are neither created nor lost: every one is on an edge, queued at an origin
    # ready to enter its first edge, or an agent that has arrived.
    on_edge = edge >= 0
    assert edge.shape[1] == env.n_vehicles and (edge < env.n_edges).all()
    assert (~(on_edge & arrived)).all(), "arrived agents leave the network"
    node = np.asarray(states.veh_node)
    nxt = np.asarray(states.veh_next)
    n_ag = env.n_agents
    bg_off = ~on_edge[:, n_ag:]
    assert (net.edge_from[nxt[:, n_ag:][bg_off]] == node[:, n_ag:][bg_off]).all(), "off-network background vehicle lost"
    ag_waiting = ~on_edge[:, :n_ag] & ~arrived[:, :n_ag]
    origin = np.broadcast_to(np.asarray(params.agent_origin), ag_waiting.shape)
    assert (node[:, :n_ag][ag_waiting] == origin[ag_waiting]).all()
    assert (on_edge.sum(1) + bg_off.sum(1) + ag_waiting.sum(1) + arrived.sum(1) == env.n_vehicles).all()
    assert ((node >= 0) & (node < env.n_nodes)).all()
    assert (np.where(on_edge, net.edge_to[np.maximum(edge, 0)], node) == node).all()
    # No edge ever exceeds its storage, and the constraint is active (some edge is full).
    counts = np.stack([np.bincount(e[e >= 0], minlength=env.n_edges) for e in edge])
    assert (counts <= net.edge_storage[None]).all()
    assert (counts == net.edge_storage[None]).any(), "load too light to exercise spillback"
    # Background vehicles keep circulating: steady demand means completed trips.
    assert np.asarray(states.veh_trips)[-1, env.n_agents:].sum() > 0
    # Masks never allow a missing edge; features mark missing edges with -1.
    mask = np.asarray(obs.action_mask)
    out = net.out_edges[np.asarray(obs.features[..., 0]).astype(int)]
    assert (mask == (out >= 0)).all()
    feats = np.asarray(obs.features)
    assert (feats[..., 2::2][~mask] == -1).all() and (feats[..., 3::2][~mask] == -1).all()
    scores = feats[..., 2::2][mask]
    assert (scores > 0).all() and (scores <= 1).all() and (scores < 1).any()
    # Interaction steps are counted exactly: the decisions taken equal the awaiting flags consumed.
    assert int(infos["n_decisions"].sum()) == int(np.asarray(infos["decided"]).sum())
    assert int(infos["invalid_actions"].sum()) == 0


def test_invalid_action_falls_back_and_is_counted(line_network):
    env = make_env(line_network, n_agents=1, n_background=0)
    params = make_params(line_network, [0], [3], [0], [3])
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    _, state, _, _, info = env.step_env(jax.random.PRNGKey(0), state, jnp.array([1]), params)  # slot 1 is padding at A
    assert int(info["invalid_actions"]) == 1 and info["invalid_actions"].dtype == jnp.int32  # a count, like n_decisions
    assert int(state.veh_node[0]) == 1  # it still drove A -> B on the only edge


def test_same_key_same_episode_different_key_different(oakland):
    _, env, params = oakland
    run = jax.jit(lambda k: _rollout(env, params, random_policy, k, 60))
    a, b, c = run(jax.random.PRNGKey(7)), run(jax.random.PRNGKey(7)), run(jax.random.PRNGKey(8))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_jit_vmap_step_equals_loop_of_single_steps(oakland):
    _, env, params = oakland
    n_envs, n_steps = 4, 12
    keys = jax.random.split(jax.random.PRNGKey(11), n_envs)
    obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    batched_step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    single_step = jax.jit(env.step)  # compiled once: the comparison is batched against unbatched, not jit against eager
    single_obs = [jax.tree.map(lambda x: x[i], obs) for i in range(n_envs)]
    single_states = [jax.tree.map(lambda x: x[i], states) for i in range(n_envs)]
    for t in range(n_steps):
        step_keys = jax.random.split(jax.random.PRNGKey(100 + t), n_envs)
        actions = jax.vmap(random_policy, in_axes=(0, 0, None))(step_keys, obs, params)
        obs, states, rewards, dones, _ = batched_step(step_keys, states, actions, params)
        for i in range(n_envs):
            o, s, r, d, _ = single_step(step_keys[i], single_states[i], actions[i], params)
            single_obs[i], single_states[i] = o, s
            np.testing.assert_allclose(np.asarray(r), np.asarray(rewards[i]), rtol=1e-6, atol=1e-4)
            np.testing.assert_array_equal(np.asarray(d), np.asarray(dones[i]))
            for x, y in zip(jax.tree.leaves(s), jax.tree.leaves(jax.tree.map(lambda z: z[i], states))):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-4)


def test_reference_policies_shortest_beats_random():
    _, env, params = load_scenario("oakland", "moderate", n_agents=6, n_background=40, seed=0, t_max=1200)

    def episode(policy, key):
        obs, states, rewards, infos = _rollout(env, params, policy, key, 200)
        first_done = jnp.argmax(infos["episode_done"])
        valid = jnp.arange(200) <= first_done
        ret = jnp.sum(jnp.where(valid[:, None], rewards, 0.0))
        return ret, infos["arrived"][first_done], infos["travel_time"][first_done], infos["episode_done"].any()

    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    s_ret, s_arr, s_tt, s_done = jax.jit(jax.vmap(lambda k: episode(shortest_time_policy, k)))(keys)
    r_ret, r_arr, r_tt, r_done = jax.jit(jax.vmap(lambda k: episode(random_policy, k)))(keys)
    assert bool(s_done.all()) and bool(r_done.all())
    assert bool(s_arr.all()), "shortest-time routing brings every agent home on a lightly loaded network"
    assert float(s_tt.mean()) < float(r_tt.mean())
    assert float(s_ret.mean()) > float(r_ret.mean())


def test_auto_reset_starts_a_new_episode(line_network):
    env = make_env(line_network, n_agents=1, n_background=0)
    params = make_params(line_network, [0], [1], [0], [1], t_max=100, traffic=NO_JUNCTION_DELAY)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    obs, state, reward, done, info = env.step(jax.random.PRNGKey(1), state, jnp.array([0]), params)
    assert bool(info["episode_done"]) and bool(done[0])
    assert int(state.t) == 0 and bool(obs.awaiting[0]) and int(state.agent_decisions[0]) == 0
    assert float(reward[0]) == pytest.approx(-10 + 100 + 0.1 * 100, abs=1e-3)


def test_step_returns_after_max_ticks_without_a_decision(line_network):
    env = make_env(line_network, n_agents=1, n_background=0)
    params = make_params(line_network, [0], [3], [0], [3], max_ticks_per_step=4)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    _, state, reward, _, info = env.step_env(jax.random.PRNGKey(0), state, jnp.array([0]), params)
    assert int(info["sim_time"]) == 4 and int(info["n_decisions"]) == 1 and float(reward[0]) == 0.0
    obs, state, _, _, info = env.step_env(jax.random.PRNGKey(0), state, jnp.array([0]), params)
    assert int(info["sim_time"]) == 8 and int(info["n_decisions"]) == 0 and not bool(obs.awaiting[0])


def _placed(env, params, edges, positions, dests):
    """A reset state with the background vehicles put on given edges, positions and destinations."""
    _, state = env.reset(jax.random.PRNGKey(0), params)
    n_ag = env.n_agents
    edges, dests = jnp.asarray(edges, jnp.int32), jnp.asarray(dests, jnp.int32)
    node = params.edge_to[edges]
    slot = params.next_slot_time[node, dests]
    nxt = jnp.where(slot >= 0, jnp.take_along_axis(params.out_edges[node], jnp.maximum(slot, 0)[:, None], 1)[:, 0], -1)
    return state.replace(
        veh_edge=state.veh_edge.at[n_ag:].set(edges),
        veh_pos=state.veh_pos.at[n_ag:].set(jnp.asarray(positions, jnp.float32)),
        veh_node=state.veh_node.at[n_ag:].set(node),
        veh_dest=state.veh_dest.at[n_ag:].set(dests),
        veh_next=state.veh_next.at[n_ag:].set(nxt),
        veh_enter=state.veh_enter.at[n_ag:].set(-jnp.arange(len(dests), 0, -1, dtype=jnp.int32)),
    )


def _run_ticks(env, params, state, n):
    return jax.lax.scan(lambda s, _: (env.tick(s, params), s), state, None, length=n)


def test_gridlock_is_released_after_teleport_time():
    """Three full one-vehicle edges in a ring, each head waiting for the next: locked until teleport_s."""
    xy = np.array([[0.0, 0.0], [7.5, 0.0], [3.75, 6.5]])
    ring = build_network("ring", xy, [(0, 1, 7.5, 7.5, 1), (1, 2, 7.5, 7.5, 1), (2, 0, 7.5, 7.5, 1)], signals=SignalConfig(enabled=False))
    assert (ring.edge_storage == 1).all()
    # Fuller than make_env allows on purpose: the ring must be completely full to lock.
    env = RouteChoiceEnv(n_agents=1, n_background=3, n_nodes=3, n_edges=3, m_out=ring.m_out)
    edge_of = {(int(u), int(v)): k for k, (u, v) in enumerate(zip(ring.edge_from, ring.edge_to))}
    edges = [edge_of[(0, 1)], edge_of[(1, 2)], edge_of[(2, 0)]]
    for teleport_s, released in ((0, False), (20, True)):
        params = make_params(ring, [0], [2], [0, 1, 2], [2, 0, 1], agent_depart=[10_000], traffic=TrafficModel(teleport_s=teleport_s, startup_loss_s=0.0))
        state = _placed(env, params, edges, [7.5, 7.5, 7.5], [2, 0, 1])  # each at its stop line, two edges from home
        final, history = jax.jit(_run_ticks, static_argnums=(0, 3))(env, params, state, 60)
        trips = np.asarray(history.veh_trips)[:, 1:].sum(1)
        if not released:
            assert trips[-1] == 0 and (np.asarray(history.veh_edge)[-1, 1:] == np.asarray(edges)).all()
        else:
            first_trip = int(np.argmax(trips > 0))
            assert trips[-1] > 0 and 20 <= first_trip <= 30


@pytest.mark.parametrize("saturation_flow", [0.5, 0.7])
def test_queue_discharges_at_saturation_flow(line_network, saturation_flow):
    """A standing single-lane queue, no signal, empty road ahead: departures per second = saturation flow."""
    env = make_env(line_network, n_agents=1, n_background=8)
    params = make_params(line_network, [0], [3], [0], [3], agent_depart=[10_000], traffic=TrafficModel(saturation_flow=saturation_flow))
    first = int(np.flatnonzero((line_network.edge_from == 0) & (line_network.edge_to == 1))[0])
    state = _placed(env, params, [first] * 8, [100.0] * 8, [3] * 8)
    final, history = jax.jit(_run_ticks, static_argnums=(0, 3))(env, params, state, 11)
    left = int((np.asarray(final.veh_edge)[1:] != first).sum())
    assert left == round(saturation_flow * 10) + 1  # t = 0 .. 10, the bucket starts with one departure


def test_multilane_queue_lets_vehicles_pass_a_blocked_head(cross_network):
    """The head waits for a full edge; the vehicle behind it goes elsewhere only if the edge has two lanes."""
    results = {}
    for lanes in (1, 2):
        xy = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [100.0, 7.5]])
        roads = [(0, 1, 100.0, 10.0, lanes), (1, 2, 100.0, 10.0, 1), (1, 3, 7.5, 7.5, 1), (3, 1, 7.5, 7.5, 1), (2, 1, 100.0, 10.0, 1), (1, 0, 100.0, 10.0, 1)]
        net = build_network("fork", xy, roads, signals=SignalConfig(enabled=False))
        env = make_env(net, n_agents=1, n_background=3)
        params = make_params(net, [0], [2], [0, 0], [2, 3], agent_depart=[10_000], traffic=TrafficModel(teleport_s=0))
        edge = {(int(u), int(v)): k for k, (u, v) in enumerate(zip(net.edge_from, net.edge_to))}
        # Head (first in) bound for 3 via the full one-vehicle edge 1->3; behind it, one bound for 2.
        state = _placed(env, params, [edge[(0, 1)], edge[(0, 1)], edge[(1, 3)]], [100.0, 100.0, 3.0], [3, 2, 1])
        state = state.replace(veh_enter=state.veh_enter.at[1:].set(jnp.array([-5, -4, -3], jnp.int32)))
        final, _ = jax.jit(_run_ticks, static_argnums=(0, 3))(env, params, state, 3)
        results[lanes] = int(final.veh_edge[2]) == edge[(1, 2)]
    assert results == {1: False, 2: True}


# ----------------------------------------------------------------- Eq. 32 beyond free flow
OMEGA_D, T_MAX_SHORT = 0.5, 1000  # omega_d != 1, and a bonus of 0.1 * T_max = 100


def _decisions(env, params, state, obs, until=50):
    """Drive agent 0 on its free-flow shortest-time route: (sim time, reward) of every step that consumed a decision or ended."""
    step = jax.jit(env.step_env)
    out = []
    for k in range(until):
        obs, state, reward, done, info = step(jax.random.PRNGKey(k), state, shortest_time_policy(None, obs, params), params)
        if int(info["n_decisions"]) or bool(info["episode_done"]):
            out.append((int(info["sim_time"]), float(reward[0])))
        if bool(info["episode_done"]):
            return out, info
    raise AssertionError("episode did not end")


def _dist(net, a, b):
    return float(np.linalg.norm(net.node_xy[a] - net.node_xy[b]))


def test_truncation_cuts_the_decision_of_every_agent_still_driving_and_only_theirs(line_network):
    """T_max = 15, three agents A -> D departing at t = 0, 8 and 20. At the cut, agent 0 is on its second
    decision (taken at B, t = 10), agent 1 on its first (taken at A, t = 8), agent 2 has not left: it gets 0."""
    net = line_network
    env = make_env(net, n_agents=3, n_background=0)
    params = make_params(net, [0, 0, 0], [3, 3, 3], [0], [3], agent_depart=[0, 8, 20], t_max=15, omega_d=OMEGA_D, traffic=NO_JUNCTION_DELAY)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(env.step_env)
    for k in range(50):
        obs, state, reward, done, info = step(jax.random.PRNGKey(k), state, shortest_time_policy(None, obs, params), params)
        if bool(info["episode_done"]):
            break
    d = [_dist(net, n, 3) for n in range(4)]
    assert int(info["sim_time"]) == 15 and np.asarray(state.agent_decisions).tolist() == [2, 1, 0]
    np.testing.assert_allclose(np.asarray(reward), [-5 + OMEGA_D * (d[1] - d[2]), -7 + OMEGA_D * (d[0] - d[1]), 0.0], atol=1e-3)


@pytest.mark.parametrize("origin,dest", [(1, 3), (3, 1)])
def test_eq32_counts_a_red_light_wait_in_the_decision_that_led_to_it(cross_network, origin, dest):
    """Arm 1 -> centre 0 -> arm 3 (and back). The agent departs so that it reaches the centre on red; the wait is
    part of the reward of the decision taken at the centre, which ends at arrival (20 s after the green). From
    arm 3 the road chosen at the centre is edge 0, a chosen road that must not read as "no road chosen yet"."""
    net = cross_network
    assert (int(net.edge_from[0]), int(net.edge_to[0])) == (0, 1)
    e_in = int(np.flatnonzero((net.edge_from == origin) & (net.edge_to == 0))[0])
    cycle, start, dur, offset = (int(x) for x in (net.signal_cycle[e_in], net.signal_green_start[e_in], net.signal_green_dur[e_in], net.signal_offset[e_in]))
    green = lambda t: start <= (t + offset) % cycle < start + dur  # noqa: E731
    depart = next(d for d in range(cycle) if not green(d + 20) and not green(d + 21))  # at the line on red, for 2 s at least
    t_green = next(t for t in range(depart + 20, depart + 20 + cycle) if green(t))
    env = make_env(net, n_agents=1, n_background=0)
    params = make_params(net, [origin], [dest], [origin], [dest], agent_depart=[depart], t_max=T_MAX_SHORT, omega_d=OMEGA_D, traffic=NO_JUNCTION_DELAY)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    steps, info = _decisions(env, params, state, obs)
    # Two decisions, at the origin and at 0, and no other (the wait for the departure decides nothing).
    d1, d0 = _dist(net, origin, dest), _dist(net, 0, dest)
    assert len(steps) == 2 and steps == [
        (depart + 20, pytest.approx(-20 + OMEGA_D * (d1 - d0), abs=1e-3)),  # 200 m at 10 m/s to the centre's stop line
        (t_green + 20, pytest.approx(-(t_green + 20 - (depart + 20)) + OMEGA_D * d0 + 0.1 * T_MAX_SHORT, abs=1e-3)),
    ]
    assert t_green > depart + 21  # the red wait is really there
    assert float(info["travel_time"][0]) == t_green + 20 - depart


def test_eq32_counts_a_queue_wait_and_omega_d(line_network):
    """A -> B -> C -> D. Five vehicles stand at C's stop line (on B -> C) and leave one every 10 s (saturation
    flow 0.1 veh/s: t = 0, 10, ..., 40). The agent reaches that line at t = 20, decides there, and leaves
    behind the fifth at t = 50: the 30 s in the queue belong to the decision taken at C."""
    net = line_network
    env = make_env(net, n_agents=1, n_background=5)
    # critical_occupancy near 1 keeps the B -> C edge at free speed, so only the queue delays the agent.
    traffic = TrafficModel(saturation_flow=0.1, critical_occupancy=0.99, teleport_s=0, turn_delay_s=0.0, startup_loss_s=0.0)  # junction delays: tested on their own
    params = make_params(net, [0], [3], [3], [0], t_max=T_MAX_SHORT, omega_d=OMEGA_D, traffic=traffic)  # background: D -> A (away)
    b_to_c = int(np.flatnonzero((net.edge_from == 1) & (net.edge_to == 2))[0])
    state = _placed(env, params, [b_to_c] * 5, [150.0] * 5, [3] * 5)
    obs = env.get_obs(state, params)
    steps, info = _decisions(env, params, state, obs)
    d = [_dist(net, n, 3) for n in range(4)]
    want = [(10, -10 + OMEGA_D * (d[0] - d[1])), (20, -10 + OMEGA_D * (d[1] - d[2])), (60, -40 + OMEGA_D * d[2] + 0.1 * T_MAX_SHORT)]
    assert [t for t, _ in steps] == [t for t, _ in want]
    np.testing.assert_allclose([r for _, r in steps], [r for _, r in want], atol=1e-3)
    assert float(info["travel_time"][0]) == 60.0


def test_eq32_at_truncation_credits_the_unfinished_decision_without_bonus(line_network):
    """T_max = 15: decisions at A (t = 0) and B (t = 10); the episode ends at t = 15 on B -> C."""
    net = line_network
    env = make_env(net, n_agents=1, n_background=0)
    params = make_params(net, [0], [3], [0], [3], t_max=15, omega_d=OMEGA_D, traffic=NO_JUNCTION_DELAY)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    steps, info = _decisions(env, params, state, obs)
    d = [_dist(net, n, 3) for n in range(4)]
    # The cut decision: 5 s of driving, distance credited up to C (the junction approached), no arrival bonus.
    np.testing.assert_allclose([r for _, r in steps], [-10 + OMEGA_D * (d[0] - d[1]), -5 + OMEGA_D * (d[1] - d[2])], atol=1e-3)
    assert [t for t, _ in steps] == [10, 15]
    assert not bool(info["arrived"][0]) and float(info["travel_time"][0]) == 15.0


def test_an_agent_is_done_when_it_arrives_while_the_episode_goes_on(line_network):
    """Agent 0 drives A -> B, agent 1 A -> D: at agent 0's arrival its `done` is set, agent 1's is not, and the
    episode has not ended."""
    env = make_env(line_network, n_agents=2, n_background=0)
    params = make_params(line_network, [0, 0], [1, 3], [0], [3])
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(env.step_env)
    for k in range(10):
        obs, state, reward, done, info = step(jax.random.PRNGKey(k), state, shortest_time_policy(None, obs, params), params)
        if bool(info["arrived"][0]):
            break
    assert bool(done[0]) and not bool(done[1]) and not bool(info["episode_done"])


def _best_score_policy(key, obs, params):
    """Deterministic and state-dependent: the outgoing edge with the best current score."""
    del key, params
    return jnp.argmax(jnp.where(obs.action_mask, obs.features[:, 2::2], -jnp.inf), axis=-1)


def _first_episode_events(trace, env_index):
    """(time, agent, junction, action) of every decision and each agent's rewards in order,
    until the first episode of one environment ended (a reward is reported at the end of the env step
    it completed in, so its time depends on where steps end; its order does not)."""
    t0, t1, decided, node, action, reward, ended = (np.asarray(z[:, env_index]) for z in trace)
    end = int(np.argmax(ended)) if ended.any() else len(ended) - 1
    decisions = [(int(t0[k]), a, int(node[k, a]), int(action[k, a])) for k in range(end + 1) for a in np.flatnonzero(decided[k])]
    rewards = [[round(float(reward[k, a]), 3) for k in range(end + 1) if reward[k, a]] for a in range(reward.shape[1])]
    return decisions, rewards, bool(ended.any())


def test_lockstep_batch_runs_every_environment_as_it_would_run_alone(oakland):
    """`step_batch` ticks all environments together until any has a decision: the same decisions, at
    the same seconds, with the same rewards, as each environment's own tick loop under vmap."""
    _, env, params = oakland
    n_envs = 3
    _, states = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(5), n_envs), params)

    def trace(step, n_steps):
        def body(carry, key):
            obs, state = carry
            actions = jax.vmap(_best_score_policy, in_axes=(0, 0, None))(jax.random.split(key, n_envs), obs, params)
            obs2, state2, reward, _, info = step(jax.random.split(key, n_envs), state, actions, params)
            node = state.veh_node[:, : env.n_agents]
            return (obs2, state2), (state.t, info["sim_time"], info["decided"], node, actions, reward, info["episode_done"])

        obs = jax.vmap(env.get_obs, in_axes=(0, None))(states, params)
        return jax.lax.scan(body, (obs, states), jax.random.split(jax.random.PRNGKey(9), n_steps))[1]

    own = jax.jit(lambda: trace(jax.vmap(env.step, in_axes=(0, 0, 0, None)), 400))()
    lockstep = jax.jit(lambda: trace(env.step_batch, 900))()
    assert int(np.asarray(lockstep[2]).sum()) > 0
    n_steps_own, n_steps_lock = [], []
    for i in range(n_envs):
        d_own, r_own, ended_own = _first_episode_events(own, i)
        d_lock, r_lock, ended_lock = _first_episode_events(lockstep, i)
        assert ended_own and ended_lock and len(d_own) > 20
        assert d_lock == d_own and r_lock == r_own
        n_steps_own.append(int(np.argmax(np.asarray(own[6][:, i]))))
        n_steps_lock.append(int(np.argmax(np.asarray(lockstep[6][:, i]))))
    # Lockstep env steps are shorter (some hold no decision), never longer.
    assert all(b >= a for a, b in zip(n_steps_own, n_steps_lock)) and sum(n_steps_lock) > sum(n_steps_own)
    # The lockstep batch never wastes a tick: every step advanced every environment equally.
    ticks = np.asarray(lockstep[1]) - np.asarray(lockstep[0])
    first_end = min(n_steps_lock)
    assert np.all(ticks[:first_end] == ticks[:first_end, :1])


def test_lockstep_batches_of_several_seeds_reset_as_each_would_alone(oakland):
    """Under the seeds' vmap (axis_name) the auto-reset asks whether an episode ended in any seed, so
    it stays a cond; each seed's environments still reset exactly when their own episode ends."""
    _, env, params = oakland

    def run(states, key, axis_name=None):
        def body(carry, k):
            obs, state = carry
            actions = jax.vmap(_best_score_policy, in_axes=(0, 0, None))(jax.random.split(k, 2), obs, params)
            obs, state, reward, _, info = env.step_batch(jax.random.split(k, 2), state, actions, params, axis_name=axis_name)
            return (obs, state), (state.t, reward, info["episode_done"], state.veh_node)

        obs = jax.vmap(env.get_obs, in_axes=(0, None))(states, params)
        return jax.lax.scan(body, (obs, states), jax.random.split(key, 700))[1]

    seeds = [jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(s), 2), params)[1] for s in (5, 6)]
    keys = jnp.stack([jax.random.PRNGKey(7), jax.random.PRNGKey(8)])
    together = jax.jit(jax.vmap(lambda st, k: run(st, k, "seeds"), axis_name="seeds"))(jax.tree.map(lambda *z: jnp.stack(z), *seeds), keys)
    ended = np.asarray(together[2])  # [seed, step, env]
    first_end = [int(np.argmax(ended[i].any(-1))) for i in range(2)]
    assert ended[0].any() and ended[1].any() and first_end[0] != first_end[1]  # a reset in one seed while the other went on
    alone_run = jax.jit(run)
    for i in range(2):
        alone = alone_run(seeds[i], keys[i])
        for a, b in zip(together, alone):
            np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b))


def test_junction_delays_cost_the_crossing_vehicle_alone(line_network):
    """A -> B is east, B -> C north (a left turn), C -> D east (a right turn): each turn costs turn_delay_s on the
    new edge, a start from the depot startup_loss_s; the straight free-flow trip is 30 s."""
    env = make_env(line_network, n_agents=1, n_background=0)
    travel = {}
    for name, traffic in {"none": TrafficModel(turn_delay_s=0.0, startup_loss_s=0.0), "turns": TrafficModel(turn_delay_s=4.0, startup_loss_s=0.0),
                          "turns and start": TrafficModel(turn_delay_s=4.0, startup_loss_s=3.0)}.items():
        params = make_params(line_network, [0], [3], [0], [3], traffic=traffic)
        obs, state = env.reset(jax.random.PRNGKey(0), params)
        step = jax.jit(env.step_env)
        for _ in range(5):
            obs, state, _, _, info = step(jax.random.PRNGKey(1), state, shortest_time_policy(None, obs, params), params)
        travel[name] = float(info["travel_time"][0])
    assert travel == {"none": 30.0, "turns": 30.0 + 2 * 4.0, "turns and start": 30.0 + 2 * 4.0 + 3.0}


def test_wide_turns_and_short_edges_cost_their_share_of_the_turn_delay(line_network):
    """The left turn at B ends the 100 m edge A -> B, the right turn at C the 150 m edge B -> C. Where traffic keeps
    right the left turn is the wide one (wide_turn_frac), where it keeps left the right turn is; with turn_regain_m
    200 m a turn costs length / 200 m of its delay. Each edge takes 10 s plus its delay (8 s a whole turn)."""
    lefthand = build_network("line-left", line_network.node_xy, [(int(u), int(v), float(length), float(speed), 1) for u, v, length, speed in
                             zip(line_network.edge_from, line_network.edge_to, line_network.edge_length, line_network.edge_speed)], lefthand=True)
    cases = {
        "alike": (line_network, TrafficModel(turn_delay_s=8.0, startup_loss_s=0.0)),
        "wide left": (line_network, TrafficModel(turn_delay_s=8.0, startup_loss_s=0.0, wide_turn_frac=0.5)),
        "wide left, short edges": (line_network, TrafficModel(turn_delay_s=8.0, startup_loss_s=0.0, wide_turn_frac=0.5, turn_regain_m=200.0)),
        "wide right, short edges": (lefthand, TrafficModel(turn_delay_s=8.0, startup_loss_s=0.0, wide_turn_frac=0.5, turn_regain_m=200.0)),
    }
    travel = {}
    for name, (network, traffic) in cases.items():
        env = make_env(network, n_agents=1, n_background=0)
        params = make_params(network, [0], [3], [0], [3], traffic=traffic)
        obs, state = env.reset(jax.random.PRNGKey(0), params)
        for _ in range(5):
            obs, state, _, _, info = env.step_env(jax.random.PRNGKey(1), state, shortest_time_policy(None, obs, params), params)
        travel[name] = float(info["travel_time"][0])
    assert travel == {"alike": 30.0 + 8 + 8, "wide left": 30.0 + 4 + 8, "wide left, short edges": 30.0 + 8 * 0.5 * 0.5 + 8 * 0.75,
                      "wide right, short edges": 30.0 + 8 * 0.5 + 8 * 0.5 * 0.75}


def test_a_start_up_loss_is_paid_by_the_head_of_a_released_queue_alone(line_network):
    """Eight vehicles stood at the line (the bucket full: the line was idle): with a start-up loss the first away
    starts 5 s behind, the others leave and drive exactly as without it, one every 1 / saturation flow seconds."""
    env = make_env(line_network, n_agents=1, n_background=8)
    first = int(np.flatnonzero((line_network.edge_from == 0) & (line_network.edge_to == 1))[0])
    final = {}
    for loss in (0.0, 5.0):
        params = make_params(line_network, [0], [3], [0], [3], agent_depart=[10_000], traffic=TrafficModel(saturation_flow=0.5, startup_loss_s=loss))
        state = _placed(env, params, [first] * 8, [101.0] * 8, [3] * 8)  # past the line: they stood there last tick
        state = state.replace(discharge_credit=jnp.full(env.n_edges, 1.5, jnp.float32))
        final[loss], _ = jax.jit(_run_ticks, static_argnums=(0, 3))(env, params, state, 6)
    edges = {k: np.asarray(v.veh_edge)[1:] for k, v in final.items()}
    gap = np.asarray(final[0.0].veh_pos)[1:] - np.asarray(final[5.0].veh_pos)[1:]
    assert (edges[0.0] == edges[5.0]).all() and int((edges[0.0] != first).sum()) == 4  # the full bucket lets two go, then one every 2 s
    assert sorted(np.round(gap[edges[0.0] != first], 3)) == [0.0] * 3 + [75.0]  # the head alone: 5 s at 15 m/s


def test_a_speed_state_charges_starts_and_turns_by_each_vehicles_own_speed(line_network):
    """With accel_mps2 2.5 the agent leaves its depot from standstill: 4 s to reach 10 m/s over 20 m, so A -> B takes
    12 s. The left turn at B caps its speed at turn_speed_mps: from 5 m/s it needs 4 s and 40 m to reach 15 m/s, then
    110 m at 15 m/s reach C within 8 s (12 s). The right turn at C leaves at 5 m/s onto an 8 m/s edge: 7.5 then 8 m/s
    cover 14 m in 2 s, the other 66 m take 9 s (11 s). A turn speed above every edge's speed slows nobody: B -> C
    from 10 m/s takes 2 s and 25 m to reach 15 m/s, then 9 s (11 s), and C -> D 10 s."""
    env = make_env(line_network, n_agents=1, n_background=0)
    travel = {}
    for turn_speed in (5.0, 20.0):
        params = make_params(line_network, [0], [3], [0], [3], traffic=TrafficModel(turn_delay_s=0.0, startup_loss_s=0.0, accel_mps2=2.5, turn_speed_mps=turn_speed))
        obs, state = env.reset(jax.random.PRNGKey(0), params)
        for _ in range(5):
            obs, state, _, _, info = env.step_env(jax.random.PRNGKey(1), state, shortest_time_policy(None, obs, params), params)
        travel[turn_speed] = float(info["travel_time"][0])
    assert travel == {5.0: 12.0 + 12.0 + 11.0, 20.0: 12.0 + 11.0 + 10.0}


def test_a_vehicle_that_stood_at_its_line_restarts_from_standstill_one_that_reached_it_drives_on():
    """Two background vehicles at the end of 100 m edges that go on straight through unsignalised junctions:
    the one that stood there a tick (marked past the line) accelerates from 0 at 2.5 m/s^2 and after 10 s is 20 m
    (v / 2a at 10 m/s) behind the one that just reached it at 10 m/s. Without a speed state both drive 100 m. Behind
    the head of a queue that is already discharging (the bucket not full) a vehicle leaves at queue_exit_speed_mps:
    from 5 m/s it is 5 m behind; the head of an idle line (a full bucket) starts from standstill whatever that is."""
    xy = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [0.0, 100.0], [100.0, 100.0], [200.0, 100.0]])
    fwd = [(0, 1, 100.0, 10.0, 1), (1, 2, 100.0, 10.0, 1), (3, 4, 100.0, 10.0, 1), (4, 5, 100.0, 10.0, 1)]
    net = build_network("straight", xy, fwd + [(v, u, length, speed, lanes) for u, v, length, speed, lanes in fwd], signals=SignalConfig(enabled=False))
    env = make_env(net, n_agents=1, n_background=2)
    edge_of = {(int(u), int(v)): k for k, (u, v) in enumerate(zip(net.edge_from, net.edge_to))}
    driven = {}
    for accel, queue_exit, credit in ((0.0, 0.0, 1.0), (2.5, 0.0, 1.0), (2.5, 5.0, 1.0), (2.5, 5.0, 1.5)):
        params = make_params(net, [3], [4], [0, 3], [2, 5], agent_depart=[10_000],
                             traffic=TrafficModel(turn_delay_s=0.0, startup_loss_s=0.0, accel_mps2=accel, queue_exit_speed_mps=queue_exit))
        state = _placed(env, params, [edge_of[(0, 1)], edge_of[(3, 4)]], [101.0, 100.0], [2, 5])  # stood / just reached
        state = state.replace(veh_speed=state.veh_speed.at[1:].set(10.0), discharge_credit=jnp.full(env.n_edges, credit, jnp.float32))
        final, _ = jax.jit(_run_ticks, static_argnums=(0, 3))(env, params, state, 10)
        driven[accel, queue_exit, credit] = np.asarray(final.veh_pos)[1:].round(3).tolist()
    assert driven == {(0.0, 0.0, 1.0): [100.0, 100.0], (2.5, 0.0, 1.0): [80.0, 100.0], (2.5, 5.0, 1.0): [95.0, 100.0], (2.5, 5.0, 1.5): [80.0, 100.0]}


def test_the_recorded_model_names_the_speed_state_only_when_it_is_on():
    """Results recorded before the speed state existed match the same dynamics: without it its parameters are left out."""
    from sim.env import simulator_model

    off = simulator_model(TrafficModel())
    on = simulator_model(TrafficModel(accel_mps2=2.6))
    assert not {"accel_mps2", "turn_speed_mps", "queue_exit_speed_mps"} & set(off["traffic"])
    assert on["traffic"] | {} == off["traffic"] | {"accel_mps2": 2.6, "turn_speed_mps": 8.0, "queue_exit_speed_mps": 0.0}
