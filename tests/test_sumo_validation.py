"""Policies driving in SUMO: they reach their destinations, and decide there as they do in JAX."""

import json

import jax
import numpy as np
import pytest

from reled_jax.export_policy import NumpyPolicy, policy_arrays
from reled_jax.networks import MLP, encode, init_agents
from reled_jax.reled import policy_apply
from sim.scenarios import load_scenario

pytest.importorskip("libsumo", reason="SUMO extra not installed")
from sim.sumo_run import SumoRouteChoice, shortest_time_numpy  # noqa: E402


@pytest.fixture(scope="module")
def oakland(tmp_path_factory):
    network, env, params = load_scenario("oakland", "moderate", n_agents=4)
    runner = SumoRouteChoice(network, env, params, tmp_path_factory.mktemp("sumo"))
    return network, env, params, runner


def test_shortest_path_policy_reaches_every_destination_in_sumo(oakland):
    network, env, params, runner = oakland
    episode = runner.run_episode(shortest_time_numpy(params), jax.random.PRNGKey(3))
    origin, dest = np.asarray(params.agent_origin), np.asarray(params.agent_dest)
    assert episode.arrived.all() and episode.route_ran_out == 0
    # Every hop was chosen by the policy at a junction: as many decisions as edges on the route.
    hops = np.array([len(runner.route_edges(int(o), int(d))) for o, d in zip(origin, dest)])
    np.testing.assert_array_equal(episode.decisions, hops)
    # Nobody can beat free flow by more than SUMO's speed spread (+20 %), and signals add delay.
    assert (episode.travel_time >= network.shortest_time[origin, dest] / 1.2).all()
    # Eq. 32 telescopes: reward = -travel time + w_d * straight-line distance + arrival bonus.
    straight = np.linalg.norm(network.node_xy[origin] - network.node_xy[dest], axis=1)
    np.testing.assert_allclose(episode.reward, -episode.travel_time + params.omega_d * straight + params.terminal_bonus, rtol=1e-5)


def test_policy_decides_in_sumo_as_in_jax_on_the_same_observations(oakland):
    network, env, params, runner = oakland
    agents, _, _ = init_agents(jax.random.PRNGKey(0), env.n_agents, 2 * env.n_nodes + 2 * env.m_out, env.m_out)
    # Sharpen the near-uniform initial policies so that the argmax is far from ties.
    policy = jax.tree.map(lambda x: x * 30.0, agents.policy)
    deployed = NumpyPolicy(policy_arrays(policy, env.n_nodes, env.m_out))
    episode = runner.run_episode(lambda f, m, rng: deployed.act(f, m), jax.random.PRNGKey(5), record=True)
    assert len(episode.log) >= 8
    agent = np.array([i for _, i, _, _, _ in episode.log])
    obs = np.stack([o for _, _, o, _, _ in episode.log])
    mask = np.stack([m for _, _, _, m, _ in episode.log])
    sumo_actions = np.array([a for _, _, _, _, a in episode.log])
    assert len(set(sumo_actions.tolist())) > 1  # decisions are not all the same slot
    # JAX: agent i's own network (row i of the stacked parameters) on each logged observation.
    x = encode(obs, env.n_nodes, env.m_out)
    logits = policy_apply(MLP(env.m_out), jax.tree.map(lambda p: p[agent], policy), x[:, None], mask[:, None])[:, 0]
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), axis=-1), sumo_actions)


def test_validate_cli_writes_side_by_side_report(tmp_path):
    from reled_jax.validate_sumo import ValidateConfig, main

    report = main(ValidateConfig(scenario="oakland", regime="moderate", n_agents=4, episodes=2, policies=("shortest",), out=str(tmp_path)))
    saved = json.loads((tmp_path / "sumo_validation.json").read_text())
    assert saved["results"].keys() == report["results"].keys() == {"shortest"}
    shortest = saved["results"]["shortest"]
    assert shortest["jax"]["arrival_rate"] == shortest["sumo"]["arrival_rate"] == 1.0
    assert np.shape(shortest["sumo"]["per_agent"]["travel_time_s"]) == (2, 4)
    # The paired metrics are computed from the per-agent arrays that are saved alongside them.
    ours, sumo = (np.mean(shortest[sim]["per_agent"]["travel_time_s"]) for sim in ("jax", "sumo"))
    assert shortest["travel_time_rel_error"] == pytest.approx((ours - sumo) / sumo)
    assert shortest["sumo"]["travel_time_s"][0] == pytest.approx(sumo)
    from scipy.stats import spearmanr

    means = [np.mean(shortest[sim]["per_agent"]["travel_time_s"], axis=0) for sim in ("jax", "sumo")]
    assert shortest["agent_mean_spearman"] == pytest.approx(spearmanr(*means).statistic, nan_ok=True)
    assert (tmp_path / "sumo_validation.png").stat().st_size > 10_000


def test_validate_cli_rejects_missing_checkpoint(tmp_path):
    from reled_jax.validate_sumo import ValidateConfig, main

    with pytest.raises(SystemExit, match="not found"):
        main(ValidateConfig(checkpoint=str(tmp_path / "nope.pkl")))


def test_the_rank_agreement_comes_with_its_interval_and_each_simulators_own_reproducibility():
    """The fidelity goal's rho (agents' mean travel times, JAX against SUMO) with a bootstrap interval over the
    paired episodes, and each simulator's split-half reliability: what noise alone would leave of the ranking."""
    from reled_jax.validate_sumo import bootstrap_agent_mean_spearman, rank_correlation, split_half_reliability

    rng = np.random.default_rng(0)
    agents = np.arange(40) * 20.0  # forty agents whose trips differ by 20 s steps
    steady = agents + rng.normal(0, 2, (20, 40))  # 20 episodes of little noise
    noisy = agents + rng.normal(0, 5000, (20, 40))  # noise far larger than the differences between agents
    low, high = bootstrap_agent_mean_spearman(steady, steady + rng.normal(0, 2, (20, 40)))
    assert 0.9 < low <= high <= 1.0
    low, high = bootstrap_agent_mean_spearman(steady, noisy)
    assert low < rank_correlation(steady.mean(0), noisy.mean(0)) < high and high - low > 0.2 and low < 0
    assert split_half_reliability(steady) > 0.95 and split_half_reliability(noisy) < 0.5


def test_fidelity_names_every_missed_goal_and_whether_more_episodes_would_help():
    from benchmarks.fidelity import GOALS, shortfalls

    def result(rho, half_jax, half_sumo):
        return {"agent_mean_spearman_ci95": [rho - 0.1, rho + 0.1], "split_half_spearman": {"jax": half_jax, "sumo": half_sumo}}

    cells = {
        "good": {"free_flow": {"error": 0.01, "meets_goal": True},
                 "regimes": {"moderate": {"spearman": {"a": 0.9}, "mean_travel_time_error": {"a": 0.02}, "results": {"a": result(0.9, 0.95, 0.95)}}}},
        "bad": {"free_flow": {"error": 0.0502, "meets_goal": False},
                "regimes": {"moderate": {"spearman": {"model": 0.43, "noisy": 0.6}, "mean_travel_time_error": {"model": 0.3, "noisy": -0.01},
                                         "results": {"model": result(0.43, 1.0, 0.98), "noisy": result(0.6, 0.95, 0.5)}}}},
    }
    lines = shortfalls(cells)
    assert len(lines) == 4 and not any(line.startswith("good") for line in lines)
    assert lines[0] == f"bad free flow: travel time +5.02% against SUMO (goal within {GOALS['free_flow_error']:.0%})"
    assert "rho 0.43 [0.33, 0.53]" in lines[1] and "model error, not noise" in lines[1] and "JAX 1.00, SUMO 0.98" in lines[1]
    assert "rho 0.60" in lines[2] and "noise as much as model" in lines[2] and "0.50" in lines[2]
    assert lines[3] == f"bad/moderate, model: mean travel time +30.0% against SUMO (goal within {GOALS['mean_travel_time_error']:.0%})"
