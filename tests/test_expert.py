"""Compiled plans: tensors, execution inside jit (Eq. 15), the instruction map, and feedback sets (Eqs. 17-24)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.compile import compile_plans, expert_actions
from llm.demos import DemoRollout, make_demo_rollout
from llm.feedback import DivergencePair, Feedback, RewardInstructionPair, TrajectorySummary, agent_routes, build_feedback
from llm.interface import MODE_SHORTEST_PATH, MODE_SHORTEST_TIME, Instruction
from llm.plans import AgentPlan, PlanRequestContext, parse_response
from sim.env import make_env, make_params
from sim.network import build_network


def _plans(ctx, code, agents):
    out = parse_response(code, agents, ctx)
    return [out[a] for a in agents]


def test_compile_pads_drops_noops_and_completes(line_network):
    origin, dest = np.array([0, 3]), np.array([3, 0])
    plans = [
        AgentPlan(0, (Instruction("move_to_by_shortest_path", 0, 1), Instruction("move_to_by_shortest_path", 1, 2), Instruction("move_to_by_shortest_time", 3, 3))),
        AgentPlan(1, (Instruction("move_to_by_shortest_path", 2, 1), Instruction("move_to_by_shortest_path", 2, 2))),
    ]
    compiled = compile_plans(plans, origin, dest, max_instructions=4)
    t = compiled.tensors
    np.testing.assert_array_equal(t.target, [[1, 3, 3, 3], [2, 0, 0, 0]])
    np.testing.assert_array_equal(t.mode, [[MODE_SHORTEST_PATH, MODE_SHORTEST_TIME, 1, 1], [MODE_SHORTEST_PATH, MODE_SHORTEST_TIME, 1, 1]])
    np.testing.assert_array_equal(t.length, [2, 2])
    np.testing.assert_array_equal(compiled.completed, [False, True])
    assert compiled.completed.dtype == bool  # a mask (the service counts and negates it)
    assert compiled.n_completed == 1
    # The instruction map keeps the source line of each compiled column; the appended move has none.
    assert [i.line for i in compiled.instructions[0]] == [2, 3]
    assert compiled.instructions[1][1] == Instruction("move_to_by_shortest_time", 0)
    with pytest.raises(ValueError, match="compiled width"):
        compile_plans(plans, origin, dest, max_instructions=1)


def test_compile_refuses_a_missing_plan_and_fixes_width_and_dtypes(line_network):
    plans = [AgentPlan(0, (Instruction("move_to_by_shortest_path", 2),))]
    with pytest.raises(ValueError) as err:
        compile_plans(plans, np.array([0, 3]), np.array([3, 0]))
    assert str(err.value) == "need one plan per agent (2), got 1"
    swapped = [AgentPlan(1, ()), AgentPlan(0, ())]
    with pytest.raises(ValueError) as err:
        compile_plans(swapped, np.array([0, 3]), np.array([3, 0]))
    assert str(err.value) == "plan 0 is for agent 1; pass plans in agent order"
    t = compile_plans(plans, np.array([0]), np.array([3])).tensors
    assert t.target.shape == t.mode.shape == (1, 64)  # the default width
    assert t.target.dtype == t.mode.dtype == t.length.dtype == jnp.int32


def test_follow_edge_takes_the_direct_road_else_the_shortest_path_and_the_pointer_stops_at_the_end(diamond_network):
    """Three agents at once: agent 0 at 1 told to follow an edge to 2 (no such road: static next hop, via 3);
    agent 1 at 0 told the same (a direct road: take it); agent 2 on the target of its only instruction."""
    from llm.compile import PlanTensors
    from llm.interface import MODE_FOLLOW_EDGE

    net = diamond_network
    env = make_env(net, 3, 0)
    params = make_params(net, [1, 0, 3], [2, 2, 0], [0], [3])
    _, state = env.reset(jax.random.PRNGKey(0), params)
    state = state.replace(veh_node=state.veh_node.at[:3].set(jnp.array([1, 0, 3])))
    plans = PlanTensors(target=jnp.array([[2, 2], [2, 2], [3, 0]]), mode=jnp.array([[MODE_FOLLOW_EDGE, 1], [MODE_FOLLOW_EDGE, 1], [1, 1]]),
                        length=jnp.array([2, 2, 1]))
    actions, pointer = expert_actions(plans, jnp.zeros((3,), jnp.int32), state, params)
    to = lambda node, slot: int(net.edge_to[net.out_edges[node, slot]])  # noqa: E731
    assert to(1, int(actions[0])) == 3 and to(0, int(actions[1])) == 2
    assert actions.tolist() == [int(net.next_slot_dist[1, 2]), 1, int(actions[2])]
    assert pointer.tolist() == [0, 0, 0]  # nobody on a target but agent 2, whose instruction is its last


@pytest.mark.parametrize("mirrored", [False, True])
def test_each_mode_picks_its_own_first_hop_where_the_long_way_round_is_fastest(mirrored):
    """From junction 0: a direct but slow road (1 km) to the target, or five fast 50-m roads round a ring. Shortest
    time and shortest path both go round (the first hop's distance needs four relaxation rounds, more than half the
    junction count); follow-edge takes the direct road. Edges are numbered by (from, to): edge 0 is the ring's first
    road, or, with the ring's junctions numbered the other way round, the direct one."""
    from llm.compile import PlanTensors
    from llm.interface import MODE_FOLLOW_EDGE

    label = (lambda i: (6 - i) % 6) if mirrored else (lambda i: i)  # noqa: E731
    angle = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    xy = 100.0 * np.stack([np.cos(angle), np.sin(angle)], 1)[[label(i) for i in range(6)]]
    fwd = [(label(i), label(i + 1), 50.0, 15.0, 1) for i in range(5)] + [(0, label(5), 1000.0, 10.0, 1)]
    net = build_network("ring", xy, fwd + [(v, u, length, speed, lanes) for u, v, length, speed, lanes in fwd])
    target, first_hop = label(5), label(1)
    assert (int(net.edge_from[0]), int(net.edge_to[0])) == (0, target if mirrored else first_hop)
    env = make_env(net, 3, 0)
    params = make_params(net, [0, 0, 0], [target] * 3, [0], [target])
    _, state = env.reset(jax.random.PRNGKey(0), params)
    plans = PlanTensors(target=jnp.full((3, 1), target), mode=jnp.array([[MODE_SHORTEST_TIME], [MODE_SHORTEST_PATH], [MODE_FOLLOW_EDGE]]),
                        length=jnp.ones(3, jnp.int32))
    actions, _ = expert_actions(plans, jnp.zeros((3,), jnp.int32), state, params)
    assert [int(net.edge_to[net.out_edges[0, int(a)]]) for a in actions] == [first_hop, first_hop, target]


def _one_decision_demo(reward, sim_time, node):
    """An expert rollout as build_feedback reads it: rewards [T, A], agent 0 deciding once at t = 0 (instruction 0),
    every agent headed for junction 3; and the compiled plans (each the appended move to 3)."""
    T, A = reward.shape
    decided = np.zeros((T, A), bool)
    decided[0, 0] = True
    demo = {
        "valid": np.ones(T, bool), "sim_time": np.asarray(sim_time), "decided": decided, "node": np.array([node] * T),
        "action": np.zeros((T, A), int), "instruction": np.zeros((T, A), int), "policy_logp": np.zeros((T, A)),
        "policy_best": np.zeros((T, A), int), "reward": reward, "arrived_now": np.zeros((T, A), bool),
        "travel_time": np.zeros(A), "arrived": np.zeros(A, bool),
    }
    return demo, compile_plans([AgentPlan(a, ()) for a in range(A)], np.zeros(A, int), np.full(A, 3), 2)


def test_reward_pairs_name_the_three_worst_victims_and_an_empty_rollout_has_no_volatility(line_network):
    """A_j = {0}; at the flagged step four outside agents lose reward: the pair names the worst three, worst first."""
    demo, compiled = _one_decision_demo(np.array([[-9.0, -1.0, -4.0, -3.0, -2.0], [0.0] * 5]), [0, 5], [0, 1, 2, 3, 0])
    fb = build_feedback(demo, [0], compiled, line_network, threshold=5.0, terminal_bonus=0.0)
    assert fb.reward_pairs == (RewardInstructionPair(0, 0, "move_to_by_shortest_time(3)", 10.0, 1, 0, ((2, 2, -4.0), (3, 3, -3.0), (4, 0, -2.0))),)
    empty = {k: (v[:0] if k not in ("travel_time", "arrived") else v) for k, v in demo.items()}
    assert build_feedback(empty, [0], compiled, line_network, threshold=5.0, terminal_bonus=0.0).rvi == 0.0


def test_a_reward_pair_reports_its_worst_flagged_step_and_routes_end_where_the_last_edge_leads(line_network):
    """Agent 0 runs instruction 0 through two flagged steps (r_ext = -6, then -9): the pair is the worse one's."""
    demo, compiled = _one_decision_demo(np.array([[-9.0, -6.0, 0.0], [0.0, -4.0, -5.0], [0.0] * 3]), [0, 4, 8], [0, 1, 2])
    fb = build_feedback(demo, [0], compiled, line_network, threshold=5.0, terminal_bonus=0.0)
    assert fb.reward_pairs == (RewardInstructionPair(0, 0, "move_to_by_shortest_time(3)", 9.0, 2, 4, ((2, 2, -5.0), (1, 1, -4.0))),)
    # A route ends with the junction its last chosen edge leads to, junction 0 included.
    to_0 = int(np.nonzero(line_network.edge_to[line_network.out_edges[1]] == 0)[0][0])
    back = {"valid": np.ones(1, bool), "decided": np.ones((1, 1), bool), "node": np.array([[1]]), "action": np.array([[to_0]]), "reward": np.zeros((1, 1))}
    assert agent_routes(back, line_network) == [[1, 0]]


def _diamond_env(network, n_background=0):
    env = make_env(network, 1, n_background)
    params = make_params(network, [0], [3], [0], [3], n_background=n_background)
    return env, params


def _run_episode(env, params, compiled, steps=20):
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    pointer = jnp.zeros((1,), jnp.int32)
    visited, pointers = [0], []
    for k in range(steps):
        actions, pointer = expert_actions(compiled.tensors, pointer, state, params)
        if bool(obs.awaiting[0]):
            pointers.append(int(pointer[0]))
        obs, state, _, done, info = env.step_env(jax.random.PRNGKey(k), state, actions, params)
        visited.append(int(state.veh_node[0]))
        if bool(info["episode_done"]):
            break
    return list(dict.fromkeys(visited)), pointers


def test_waypoint_plan_is_executed_and_pointer_advances(diamond_network):
    env, params = _diamond_env(diamond_network)
    ctx = PlanRequestContext(diamond_network, np.array([0]), np.array([3]))
    direct = compile_plans(_plans(ctx, "move_to_by_shortest_path(get_destination())", [0]), [0], [3], 4)
    via_south = compile_plans(_plans(ctx, "move_to_by_shortest_path(2)\nmove_to_by_shortest_path(3)", [0]), [0], [3], 4)
    route, _ = _run_episode(env, params, direct)
    assert route == [0, 1, 3]  # the static shortest path goes north
    route, pointers = _run_episode(env, params, via_south)
    assert route == [0, 2, 3]
    assert pointers == [0, 1]  # decision at 0 by instruction 0, at 2 by instruction 1


def test_shortest_time_instruction_sees_live_congestion(diamond_network):
    env, params = _diamond_env(diamond_network, n_background=15)
    _, state = env.reset(jax.random.PRNGKey(1), params)
    north = int(diamond_network.out_edges[0, diamond_network.next_slot_dist[0, 3]])
    # Jam the first north edge: 15 of its 18 storage places, spread along it.
    state = state.replace(
        veh_edge=state.veh_edge.at[1:].set(north),
        veh_pos=state.veh_pos.at[1:].set(jnp.linspace(0.0, 120.0, 15)),
        veh_node=state.veh_node.at[1:].set(1),
    )
    ctx = PlanRequestContext(diamond_network, np.array([0]), np.array([3]))
    for code, expected_next in [("move_to_by_shortest_time(3)", 2), ("move_to_by_shortest_path(3)", 1)]:
        compiled = compile_plans(_plans(ctx, code, [0]), [0], [3], 2)
        action, _ = jax.jit(expert_actions)(compiled.tensors, jnp.zeros((1,), jnp.int32), state, params)
        edge = int(diamond_network.out_edges[0, int(action[0])])
        assert int(diamond_network.edge_to[edge]) == expected_next, code


def test_demo_rollout_records_instruction_map_and_policy_logp(diamond_network):
    env, params = _diamond_env(diamond_network)
    ctx = PlanRequestContext(diamond_network, np.array([0]), np.array([3]))
    compiled = compile_plans(_plans(ctx, "move_to_by_shortest_path(2)\nmove_to_by_shortest_path(3)", [0]), [0], [3], 4)
    logits = jnp.array([[0.0, jnp.log(3.0)]])  # a fixed policy over the junction's m_out = 2 slots
    rollout = jax.jit(make_demo_rollout(env, 8), static_argnums=4)
    demo = rollout(jax.random.PRNGKey(0), params, compiled.tensors, jnp.array([True]), lambda k, o: logits)
    decided = np.asarray(demo.decided[:, 0])
    assert decided.sum() == 2 and bool(demo.arrived[0])
    np.testing.assert_array_equal(np.asarray(demo.node)[decided, 0], [0, 2])
    np.testing.assert_array_equal(np.asarray(demo.instruction)[decided, 0], [0, 1])
    # log pi~ of the expert's action under the masked policy, recomputed by hand.
    for t in np.nonzero(decided)[0]:
        node = int(demo.node[t, 0])
        mask = diamond_network.out_edges[node] >= 0
        p = np.where(mask, np.exp(np.asarray(logits[0])), 0.0)
        p /= p.sum()
        assert float(demo.policy_logp[t, 0]) == pytest.approx(np.log(p[int(demo.action[t, 0])]), abs=1e-5)
    assert not np.asarray(demo.valid)[int(np.nonzero(np.asarray(demo.valid))[0].max()) + 1 :].any()


def test_feedback_sets_on_a_hand_built_rollout(line_network):
    """R^j (Eqs. 18-19), K^j (Eqs. 22-24), RVI, PDI and the trajectory summaries, every field, on five steps of
    four agents with A_j = {0, 1}; step 4 comes after the episode's end and must not count. Values are
    rounded for the prompt (times and returns to 0.1, KL to 0.001): -15.44 shows as -15.4, pi~ 0.12346 as 0.123."""
    net = line_network
    slot = lambda u, v: int(np.flatnonzero(net.edge_to[net.out_edges[u]] == v)[0])  # noqa: E731  out-edge slot of u -> v
    T, A, bonus = 5, 4, 240.0
    action = np.zeros((T, A), int)
    action[[0, 1, 2], 0] = slot(0, 1), slot(1, 2), slot(2, 3)  # agent 0: 0 -> 1 -> 2 -> 3
    action[[0, 1], 1] = slot(3, 2), slot(2, 1)  # agent 1: 3 -> 2 -> 1
    best = np.zeros((T, A), int)
    best[1, 0] = slot(1, 0)  # the policy would turn back at 1
    best[0, 1] = 1  # a padded slot at junction 3 (one road out): leads nowhere
    reward = np.array([[-3.14, -2.2, -4.25, 0.0], [-7.3, -6.0, 0.0, -12.3456], [-5.0, 0.0, bonus - 8.5, -3.74], [0.0, 0.0, 0.0, -2.0], [0.0, 0.0, 0.0, -99.0]])
    arrived_now = np.zeros((T, A), bool)
    arrived_now[2, 2] = True
    demo = {
        "valid": np.array([True, True, True, True, False]), "sim_time": np.array([0, 7, 19, 31, 44]),
        "decided": np.array([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], bool),
        "node": np.array([[0, 3, 1, 2], [1, 2, 2, 1], [2, 1, 3, 0], [2, 0, 3, 1], [2, 0, 3, 1]]), "action": action,
        "instruction": np.array([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]),
        "policy_logp": np.log(np.array([[0.5, 0.3, 1, 1], [0.12346, 0.6, 1, 1], [0.8, 1, 1, 1], [1, 1, 1, 1], [0.01, 0.001, 1, 1]])),
        "policy_best": best, "reward": reward, "arrived_now": arrived_now,
        "travel_time": np.array([30.04, 44.46, 19.0, 44.0]), "arrived": np.array([True, False, True, False]),
    }
    compiled = compile_plans(
        [AgentPlan(0, (Instruction("move_to_by_shortest_path", 1, 1), Instruction("move_to_by_shortest_time", 3, 2))),
         AgentPlan(1, (Instruction("move_to_by_shortest_path", 2, 1), Instruction("move_to_by_shortest_time", 0, 2))),
         AgentPlan(2, (Instruction("move_to_by_shortest_time", 3),)), AgentPlan(3, (Instruction("move_to_by_shortest_time", 0),))],
        np.array([0, 3, 0, 3]), np.array([3, 0, 3, 0]), 4,
    )
    fb = build_feedback(demo, [0, 1], compiled, net, threshold=10.123, terminal_bonus=bonus)
    # r^{A-j} (agents 2 and 3, bonus removed): -4.25, -12.3456, -12.24, -2.0; the last row is after the end.
    # Flagged (< -10.123): steps 1 and 2, while agent 0 ran instructions 0 then 1 and agent 1 instruction 1.
    victims_1, victims_2 = ((3, 1, -12.3),), ((2, 3, -8.5), (3, 0, -3.7))
    ln = lambda p: float(-np.log(p))  # noqa: E731
    want = Feedback(
        subset=(0, 1),
        reward_pairs=(  # worst first; ties keep the order of the steps
            RewardInstructionPair(0, 0, "move_to_by_shortest_path(1)", 12.35, 1, 7, victims_1),
            RewardInstructionPair(1, 1, "move_to_by_shortest_time(0)", 12.35, 2, 7, victims_1),
            RewardInstructionPair(0, 1, "move_to_by_shortest_time(3)", 12.24, 1, 19, victims_2),
        ),
        divergence_pairs=(  # D_KL^max = max -ln pi~(u_t|o_t) over each agent's expert decisions, largest first
            DivergencePair(0, 0, "move_to_by_shortest_path(1)", round(ln(0.12346), 3), 1, 2, 0, 0.123),
            DivergencePair(1, 0, "move_to_by_shortest_path(2)", round(ln(0.3), 3), 3, 2, -1, 0.3),
        ),
        trajectories=(TrajectorySummary(0, (0, 1, 2, 3), 30.0, -15.4, True), TrajectorySummary(1, (3, 2, 1), 44.5, -8.2, False)),
        rvi=12.35, pdi=round(ln(0.12346) + ln(0.3), 3), threshold=10.12,
    )
    assert fb == want
    # The same rollout as a DemoRollout (what SED passes) gives the same sets; max_pairs keeps the worst pairs.
    as_rollout = DemoRollout(**{k: jnp.asarray(v) for k, v in demo.items()}, obs=jnp.zeros((T, A, 6)), mask=jnp.ones((T, A, 2), bool), done=jnp.zeros((T, A), bool))
    assert build_feedback(as_rollout, [0, 1], compiled, net, 10.123, bonus) == want
    short = build_feedback(demo, [0, 1], compiled, net, 10.123, bonus, max_pairs=1)
    assert (short.reward_pairs, short.divergence_pairs, short.pdi) == (want.reward_pairs[:1], want.divergence_pairs[:1], want.pdi)
    calm = build_feedback(demo, [0, 1], compiled, net, threshold=100.0, terminal_bonus=bonus)
    assert calm.reward_pairs == () and calm.rvi == 12.35
