"""The SED module (paper III-D): partitions, each agent's expert rows, the feedback sets' plumbing, refresh end to end."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.demos import DemoRollout
from llm.feedback import DivergencePair, Feedback, RewardInstructionPair, TrajectorySummary, agent_routes, merge_feedback, volatility_threshold
from llm.service import ExpertConfig, ExpertService
from reled_jax.networks import init_env_agents, observe
from reled_jax.reled import HybridPPOConfig
from reled_jax.sed import SED, SEDConfig, expert_samples, partition_agents
from sim.env import make_env, make_params
from sim.scenarios import load_scenario


def test_partitions_are_disjoint_balanced_and_seeded():
    for n_agents, m in ((10, 2), (7, 3), (4, 4)):
        subsets = partition_agents(n_agents, m, seed=3, epoch=20)
        assert len(subsets) == m and sorted(a for s in subsets for a in s) == list(range(n_agents))
        assert max(map(len, subsets)) - min(map(len, subsets)) <= 1
    assert partition_agents(10, 2, seed=3, epoch=20) == partition_agents(10, 2, seed=3, epoch=20)  # a resumed run repeats it
    by_epoch = {tuple(partition_agents(10, 2, seed=3, epoch=e)) for e in range(0, 50, 10)}
    by_seed = {tuple(partition_agents(10, 2, seed=s, epoch=20)) for s in range(5)}
    assert len(by_epoch) == 5 and len(by_seed) == 5  # Algorithm 1, line 7: a new random partition each time


def _demo(j: int, n_agents: int = 3, steps: int = 3) -> DemoRollout:
    """A hand-made rollout of subset j: every value says which subset, agent and step it came from."""
    t, a = np.meshgrid(np.arange(steps), np.arange(n_agents), indexing="ij")
    node = (j + a + t) % 4
    obs = np.stack([node, np.full_like(node, 3), np.ones_like(node), node, -np.ones_like(node), -np.ones_like(node)], -1).astype(np.float32)
    arr = lambda z, dt=None: jnp.asarray(z, dt)[None]  # noqa: E731  one demonstration environment
    return DemoRollout(
        valid=arr(np.arange(steps) < 2), sim_time=arr(10 * np.arange(steps)), obs=arr(obs), mask=arr(np.stack([(t + a + j) % 2 == 0, np.ones_like(t, bool)], -1)),
        decided=arr((t + a) % 3 != 2), node=arr(node, jnp.int32), action=arr(10 * j + a, jnp.int32), instruction=arr(np.zeros_like(t), jnp.int32),
        policy_logp=arr(np.zeros_like(t, float)), policy_best=arr(np.zeros_like(t), jnp.int32), reward=arr(100.0 * j + 10.0 * a + t),
        arrived_now=arr(np.zeros_like(t, bool)), done=arr((t == 1) & (j == 0)), travel_time=arr(np.zeros(n_agents)), arrived=arr(np.zeros(n_agents, bool)),
    )


def test_each_agent_takes_its_expert_rows_from_its_own_subsets_rollout(line_network):
    env = make_env(line_network, n_agents=3, n_background=0)
    params = make_params(line_network, [0, 0, 0], [3, 3, 3], [0], [3])
    hpo = HybridPPOConfig(reward_scale=0.01, max_trajectory=4)
    demos, subset_of = [_demo(0), _demo(1)], np.array([1, 0, 1])
    samples, (xy, length) = jax.jit(lambda d, s: expert_samples(d, s, env, params, hpo))(demos, subset_of)
    for a in range(3):
        d = jax.tree.map(lambda z: np.asarray(z[0]), demos[subset_of[a]])  # [T, ...] of the agent's own subset
        np.testing.assert_array_equal(samples.action[a], d.action[:, a])
        np.testing.assert_allclose(samples.reward[a], 0.01 * d.reward[:, a])
        np.testing.assert_array_equal(samples.decided[a], d.decided[:, a] & d.valid)
        np.testing.assert_array_equal(samples.done[a], d.done[:, a])
        np.testing.assert_array_equal(samples.mask[a], d.mask[:, a])
        np.testing.assert_array_equal(samples.x[a], observe(jnp.asarray(d.obs[:, a]), env.m_out))
        np.testing.assert_array_equal(samples.last_x[a, 0], observe(jnp.asarray(d.obs[-1, a]), env.m_out))
        # Its trajectory for DTW: the junctions of its valid decisions up to its first episode's end.
        keep = d.decided[:, a] & d.valid & (np.cumsum(d.done[:, a]) - d.done[:, a] == 0)
        assert int(length[0, a]) == keep.sum()
        np.testing.assert_allclose(xy[0, a, : keep.sum()], line_network.node_xy[d.node[keep, a]])


def _feedback(subset, kl, reward, rvi, threshold):
    pairs = tuple(RewardInstructionPair(a, 0, f"move {a}", r, 1, 10, ()) for a, r in zip(subset, reward))
    div = tuple(DivergencePair(a, 0, f"move {a}", k, 0, 1, 2, float(np.exp(-k))) for a, k in zip(subset, kl))
    routes = tuple(TrajectorySummary(a, (0, a), 50.0, 10.0, True) for a in subset)
    return Feedback(tuple(subset), pairs, div, routes, rvi, round(sum(kl), 3), threshold)


def test_merge_feedback_collects_each_agents_pairs_from_wherever_it_was_evaluated():
    fa = _feedback((0, 1), kl=(1.0, 2.00049), reward=(30.0, 50.0), rvi=60.0, threshold=10.0)
    fb = _feedback((2, 3), kl=(0.5, 4.0), reward=(40.0, 10.0), rvi=45.0, threshold=12.0)
    merged = merge_feedback([fa, None, fb], [2, 1])
    assert merged.subset == (1, 2)
    assert [(p.agent, p.reward) for p in merged.reward_pairs] == [(1, 50.0), (2, 40.0)]  # worst first
    assert [(p.agent, p.kl_max) for p in merged.divergence_pairs] == [(1, 2.00049), (2, 0.5)]
    assert [t.agent for t in merged.trajectories] == [1, 2]
    # Largest RVI and threshold; PDI over the kept pairs, to 3 decimals (2.50049 -> 2.5).
    assert (merged.rvi, merged.pdi, merged.threshold) == (60.0, 2.5, 12.0)
    only_b = merge_feedback([fa, fb], [3])
    assert (only_b.subset, only_b.rvi, only_b.pdi, only_b.threshold) == ((3,), 45.0, 4.0, 12.0)
    assert merge_feedback([fa], [2, 3]) is None and merge_feedback([], [0]) is None and merge_feedback([None], [0]) is None


def test_volatility_threshold_is_eq17s_max_external_reward_without_arrival_bonus():
    """max over valid steps of |sum of the outside agents' rewards|, over [E, T, A] rollouts; the 240 bonus is not volatility."""
    reward = np.array([[[-5.0, 100.0, -3.0], [230.0, 0.0, -2.0], [50.0, 0.0, 50.0]],
                       [[1.0, -100.0, 2.0], [-20.0, 0.0, 9.0], [0.0, 0.0, 0.0]]])
    arrived_now = np.zeros_like(reward, bool)
    arrived_now[0, 1, 0] = True  # 230 = 240 bonus - 10
    valid = np.array([[True, True, False], [True, True, True]])  # the 100 at env 0, step 2 is after its episode
    outside = np.array([True, False, True])
    # Steps: |-8|, |-10 - 2|, -, |3|, |-11|, 0 -> 12.
    assert volatility_threshold(reward, arrived_now, valid, outside, 240.0) == 12.0
    assert volatility_threshold(reward, arrived_now, valid, ~outside, 240.0) == 100.0  # agent 1 alone
    assert volatility_threshold(reward[:, :0], arrived_now[:, :0], valid[:, :0], outside, 240.0) == 0.0  # no steps
    # Calm traffic: every |r| below 1, and the step after the episode's end still does not count.
    assert volatility_threshold(reward / 100.0, arrived_now, valid, outside, 2.4) == pytest.approx(0.12)


def test_agent_routes_are_decision_junctions_then_where_the_last_edge_leads(line_network):
    # Agent 0 decides at 0 then 1 (slot 1 at junction 1 leads to 2: its out-edges are 1->0, 1->2); agent 1 never decides.
    slot_to_2 = int(np.flatnonzero(line_network.edge_to[line_network.out_edges[1]] == 2)[0])
    demo = {"valid": np.array([True, True, False]), "decided": np.array([[True, False], [True, False], [True, False]]),
            "node": np.array([[0, 3], [1, 3], [2, 3]]), "action": np.array([[0, 0], [slot_to_2, 0], [0, 0]]), "reward": np.zeros((3, 2))}
    assert agent_routes(demo, line_network) == [[0, 1, 2], []]


@pytest.fixture(scope="module")
def small_sed_setup():
    network, env, params = load_scenario("oakland", "moderate", n_agents=4, seed=0, n_background=20)
    agents, policy, _ = init_env_agents(jax.random.PRNGKey(0), env)
    return network, env, params, agents, policy


class Recorder:
    """Wraps a backend and keeps the requests it was sent."""

    def __init__(self, backend):
        self.backend, self.name, self.requests = backend, backend.name, []

    def generate(self, requests):
        self.requests.append(list(requests))
        return self.backend.generate(requests)


@pytest.mark.parametrize("refine", [True, False])
def test_refresh_gives_each_agent_its_subsets_demonstrations_and_feedback(small_sed_setup, refine):
    network, env, params, agents, policy = small_sed_setup
    hpo = HybridPPOConfig(reward_scale=0.01)
    service = ExpertService(network, np.asarray(params.agent_origin), np.asarray(params.agent_dest), config=ExpertConfig(), t_max=params.t_max)
    service.backend = Recorder(service.backend)
    sed = SED(env, params, network, policy, hpo, SEDConfig(m=2, n_demo_envs=2, demo_steps=96, refine=refine), service, seed=7)

    samples, (xy, length), log = sed.refresh(agents.policy, epoch=0)
    subsets = partition_agents(4, 2, seed=7, epoch=0)
    assert [r["subset"] for r in log["subsets"]] == subsets and log["round"] == 1
    for s, record in zip(subsets, log["subsets"]):
        for a in s:
            assert sed.feedback[a].subset == s and sed.feedback[a].rvi == record["rvi"] and sed.feedback[a].threshold == record["threshold"]
        assert record["pdi"] == sed.feedback[s[0]].pdi and record["n_reward_pairs"] == len(sed.feedback[s[0]].reward_pairs)
    assert log["rvi"] == pytest.approx(np.mean([r["rvi"] for r in log["subsets"]]))
    assert log["pdi"] == pytest.approx(np.mean([r["pdi"] for r in log["subsets"]]))
    assert (log["execution_rate"], log["fallbacks"]) == (1.0, 0)
    # Every agent decided in its own subset's demonstrations, starting at its origin.
    assert samples.action.shape == (4, 2 * 96) and bool(samples.decided.any(axis=1).all())
    assert (np.asarray(length) >= 1).all()
    np.testing.assert_allclose(np.asarray(xy[:, :, 0]), np.broadcast_to(network.node_xy[np.asarray(params.agent_origin)], (2, 4, 2)))
    # The logged expert reward is the subset agents' mean episode reward in their own demonstrations.
    per_agent = np.asarray(samples.reward).sum(1) / 2 / hpo.reward_scale
    assert log["expert_reward"] == pytest.approx(np.mean([per_agent[list(s)].mean() for s in subsets]), rel=1e-4)
    assert sed.history == [log] and log["epoch"] == 0
    # Eq. 17's threshold of each subset: the largest external step reward (agents outside it) when everybody
    # drives the current policy. Nobody follows plans in that rollout, so any plans can ride along.
    k_base, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(7), 0))
    base = sed._rollouts(k_base, agents.policy, service.compiled_current().tensors, jnp.zeros(4, bool))
    for s, record in zip(subsets, log["subsets"]):
        outside = ~np.isin(np.arange(4), s)
        want = volatility_threshold(np.asarray(base.reward), np.asarray(base.arrived_now), np.asarray(base.valid), outside, params.terminal_bonus)
        assert want > 0 and record["threshold"] == pytest.approx(want, abs=0.051)

    _, _, log2 = sed.refresh(agents.policy, epoch=10)
    if refine:  # Refinement: each new subset's request carries its agents' feedback from the last round.
        assert len(service.backend.requests) == 2
        for s, request in zip(partition_agents(4, 2, seed=7, epoch=10), service.backend.requests[1]):
            assert request.agents == s and request.feedback.subset == tuple(sorted(s)) and request.round == 1
            assert {t.agent for t in request.feedback.trajectories} == set(s)
        assert log2["round"] == 2
    else:  # Plans generated once (reled-norefine): the backend is not asked again.
        assert len(service.backend.requests) == 1 and service.backend.requests[0][0].feedback is None and log2["round"] == 1
    assert len(sed.history) == 2 and log2["epoch"] == 10


def test_subset_agents_act_as_the_expert_in_their_demonstrations(small_sed_setup):
    """A policy that always takes slot 0 drives the agents outside A_j; the rows each agent learns from must
    hold the expert's actions, which are not all slot 0 (the planner's routes turn elsewhere somewhere)."""
    network, env, params, agents, policy = small_sed_setup
    slot0 = jax.tree_util.tree_map_with_path(
        lambda path, x: x.at[..., 0].add(100.0) if "Dense_2" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path) else x,
        agents.policy,
    )
    service = ExpertService(network, np.asarray(params.agent_origin), np.asarray(params.agent_dest), config=ExpertConfig(), t_max=params.t_max)
    sed = SED(env, params, network, policy, HybridPPOConfig(), SEDConfig(m=2, n_demo_envs=1, demo_steps=64, refine=False), service, seed=3)
    samples, _, _ = sed.refresh(slot0, epoch=0)
    actions, decided = np.asarray(samples.action), np.asarray(samples.decided)
    assert decided.any(axis=1).all() and (actions[decided] != 0).any()
