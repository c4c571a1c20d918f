"""Compiled plans: tensors, execution inside jit (Eq. 15), the instruction map, and feedback sets (Eqs. 17-24)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.compile import compile_plans, expert_actions
from llm.demos import make_demo_rollout
from llm.feedback import build_feedback
from llm.interface import MODE_SHORTEST_PATH, MODE_SHORTEST_TIME, Instruction
from llm.plans import AgentPlan, PlanRequestContext, parse_response
from sim.env import make_env, make_params


def _plans(ctx, code, agents):
    out = parse_response(code, agents, ctx)
    return [out[a] for a in agents]


def test_compile_pads_drops_noops_and_completes(line_network):
    origin, dest = np.array([0, 3]), np.array([3, 0])
    plans = [
        AgentPlan(0, (Instruction("move_to_by_shortest_path", 0, 1), Instruction("move_to_by_shortest_path", 1, 2), Instruction("move_to_by_shortest_time", 3, 3))),
        AgentPlan(1, (Instruction("move_to_by_shortest_path", 2, 1), Instruction("move_to_by_shortest_path", 2, 2))),
    ]
    compiled = compile_plans(plans, line_network, origin, dest, max_instructions=4)
    t = compiled.tensors
    np.testing.assert_array_equal(t.target, [[1, 3, 3, 3], [2, 0, 0, 0]])
    np.testing.assert_array_equal(t.mode, [[MODE_SHORTEST_PATH, MODE_SHORTEST_TIME, 1, 1], [MODE_SHORTEST_PATH, MODE_SHORTEST_TIME, 1, 1]])
    np.testing.assert_array_equal(t.length, [2, 2])
    np.testing.assert_array_equal(compiled.completed, [False, True])
    assert compiled.n_completed == 1
    # The instruction map keeps the source line of each compiled column; the appended move has none.
    assert [i.line for i in compiled.instructions[0]] == [2, 3]
    assert compiled.instructions[1][1] == Instruction("move_to_by_shortest_time", 0)
    with pytest.raises(ValueError, match="compiled width"):
        compile_plans(plans, line_network, origin, dest, max_instructions=1)


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
    direct = compile_plans(_plans(ctx, "move_to_by_shortest_path(get_destination())", [0]), diamond_network, [0], [3], 4)
    via_south = compile_plans(_plans(ctx, "move_to_by_shortest_path(2)\nmove_to_by_shortest_path(3)", [0]), diamond_network, [0], [3], 4)
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
        compiled = compile_plans(_plans(ctx, code, [0]), diamond_network, [0], [3], 2)
        action, _ = jax.jit(expert_actions)(compiled.tensors, jnp.zeros((1,), jnp.int32), state, params)
        edge = int(diamond_network.out_edges[0, int(action[0])])
        assert int(diamond_network.edge_to[edge]) == expected_next, code


def test_demo_rollout_records_instruction_map_and_policy_logp(diamond_network):
    env, params = _diamond_env(diamond_network)
    ctx = PlanRequestContext(diamond_network, np.array([0]), np.array([3]))
    compiled = compile_plans(_plans(ctx, "move_to_by_shortest_path(2)\nmove_to_by_shortest_path(3)", [0]), diamond_network, [0], [3], 4)
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
    """R^j (Eqs. 18-19), K^j (Eqs. 22-24), RVI and PDI on four steps, three agents, A_j = {0}."""
    T, A = 4, 3
    demo = {
        "valid": np.array([True, True, True, False]),
        "sim_time": np.array([0, 10, 20, 30]),
        "decided": np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 0, 0]], bool),
        "node": np.array([[0, 3, 2], [1, 3, 1], [2, 2, 0], [2, 2, 0]]),
        "action": np.zeros((T, A), int),
        "instruction": np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]]),
        "policy_logp": np.log(np.array([[0.5, 1, 1], [0.1, 1, 1], [0.9, 1, 1], [1, 1, 1]])),
        "policy_best": np.ones((T, A), int),
        "reward": np.array([[0.0, -5.0, -1.0], [0.0, 4.0, -30.0], [0.0, -20.0, 240.0 - 25.0], [0, 0, 0]]),
        "arrived_now": np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]], bool),
        "travel_time": np.array([30.0, 40.0, 20.0]),
        "arrived": np.array([True, False, True]),
    }
    compiled = compile_plans(
        [AgentPlan(0, (Instruction("move_to_by_shortest_path", 1, 1), Instruction("move_to_by_shortest_time", 3, 2)))]
        + [AgentPlan(a, (Instruction("move_to_by_shortest_time", 3),)) for a in (1, 2)],
        line_network, np.array([0, 0, 0]), np.array([3, 3, 3]), 4,
    )
    fb = build_feedback(demo, [0], compiled, line_network, threshold=10.0, terminal_bonus=240.0)
    # r^{A-j} per step (bonus removed): -6, -26, -45; below -10 at steps 1 and 2, under instructions 0 and 1.
    assert fb.rvi == pytest.approx(45.0)
    assert [(p.instruction, p.reward, p.n_steps) for p in fb.reward_pairs] == [(1, 45.0, 1), (0, 26.0, 1)]
    assert fb.reward_pairs[0].victims[0] == (2, 0, -25.0)
    # D_KL^max = -ln 0.1 at step 1 (instruction 0, junction 1).
    (kp,) = fb.divergence_pairs
    assert kp.kl_max == pytest.approx(-np.log(0.1), abs=1e-3) and kp.instruction == 0 and kp.junction == 1
    assert fb.pdi == pytest.approx(-np.log(0.1), abs=1e-3)
    assert fb.trajectories[0].route[:2] == (0, 1)
    none = build_feedback(demo, [0], compiled, line_network, threshold=100.0, terminal_bonus=240.0)
    assert none.reward_pairs == ()
