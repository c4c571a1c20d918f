"""RELED's HPO pieces on hand-computed cases, the stacked per-agent update, and short training runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reled_jax.methods import METHODS, PAPER_RELED, VA_RELED
from reled_jax.networks import encode, init_agents, init_env_agents, input_dim as observation_dim
from reled_jax.reled import (
    HybridPPOConfig, Samples, agent_loss, agent_rows, block_trips, blockwise, clipped_surrogate, minibatch_stats, decision_returns, dtw_alpha, empty_expert, entropy,
    _episode_sums, compact_rows, episode_in_progress, hybrid_alpha, init_state, make_epoch, rollout_statistics,
    trajectory_points, update_capacities, agent_weight,
)
from reled_jax.config import TrainConfig
from sim.env import TrafficModel, make_env, make_params
from sim.network import SignalConfig, build_network
from sim.policies import random_policy
from sim.scenarios import load_scenario


def test_decision_returns_eq26_eq28_by_hand():
    reward = jnp.array([1.0, 2.0, 0.0, 3.0])
    decided = jnp.array([True, False, True, False])
    done = jnp.array([False, False, False, True])
    values = jnp.array([0.5, 9.0, 0.2, 9.0])
    ret, adv = decision_returns(reward, decided, done, values, jnp.float32(7.0), gamma=0.9, lam=1.0)
    # t=2: its reward (0 + 3 realised before the episode ends) and no bootstrap: R = 3.
    # t=0: rewards 1 + 2 until the next decision, then gamma * R_2: R = 3 + 0.9 * 3 = 5.7.
    np.testing.assert_allclose(np.asarray(ret), [5.7, 0.0, 3.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(adv), [5.2, 0.0, 2.8, 0.0], rtol=1e-6)
    # Without an ending the last decision bootstraps from the value after the window (Eq. 26).
    ret, _ = decision_returns(reward, decided, jnp.zeros(4, bool), values, jnp.float32(7.0), gamma=0.9, lam=1.0)
    assert float(ret[2]) == pytest.approx(3.0 + 0.9 * 7.0)
    # GAE(lambda = 0.5) over decisions: delta_2 = 3 - 0.2 (the episode ends, no bootstrap), delta_0 = 3 + 0.9 * 0.2 - 0.5,
    # A_0 = delta_0 + 0.9 * 0.5 * A_2 = 3.94; returns are A + V. (With lambda = 1 the values in between cancel.)
    ret, adv = decision_returns(reward, decided, done, values, jnp.float32(7.0), gamma=0.9, lam=0.5)
    np.testing.assert_allclose(np.asarray(adv), [3.94, 0.0, 2.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), [4.44, 0.0, 3.0, 0.0], rtol=1e-6)


def test_rollout_statistics_average_the_episodes_that_ended_over_agents():
    """One environment, two agents; an episode ends at t = 1 (rewards 1+3 and 2+4), t = 2 starts the next one."""
    reward = jnp.array([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]])  # [T, E, A]
    ended = jnp.array([[False], [True], [False]])
    travel = jnp.array([[[0.0, 0.0]], [[10.0, 20.0]], [[1.0, 1.0]]])
    arrived = jnp.array([[[False, False]], [[True, False]], [[False, False]]])
    decided = jnp.array([[[True, True]], [[False, True]], [[True, False]]])
    stats = {k: float(v) for k, v in rollout_statistics(reward, ended, travel, arrived, decided).items()}
    assert stats == {"interaction_steps": 4.0, "episodes": 1.0, "episode_reward": 5.0, "travel_time": 15.0, "arrival_rate": 0.5}
    none_ended = rollout_statistics(reward, jnp.zeros_like(ended), travel, arrived, decided)
    assert all(np.isnan(float(none_ended[k])) for k in ("episode_reward", "travel_time", "arrival_rate"))


def test_clipped_surrogate_eq29_and_entropy():
    logp = jnp.log(jnp.array([0.6, 0.6, 0.3]))
    old = jnp.log(jnp.array([0.4, 0.4, 0.3]))  # ratios 1.5, 1.5, 1.0
    adv = jnp.array([1.0, -1.0, 2.0])
    valid = jnp.array([True, True, False])
    surrogate, clipfrac = clipped_surrogate(logp, old, adv, valid, clip_eps=0.2)
    assert float(surrogate) == pytest.approx((min(1.5, 1.2) * 1.0 + min(-1.5, -1.2)) / 2)
    assert float(clipfrac) == pytest.approx(1.0)
    logits = jnp.array([[0.0, 0.0, -1e9], [5.0, 5.0, 5.0]])  # one entropy per row: log 2, then log 3
    np.testing.assert_allclose(np.asarray(entropy(logits, jnp.array([[True, True, False], [True, True, True]]))), np.log([2.0, 3.0]), rtol=1e-6)


def test_alpha_schedules_on_hand_values():
    """The three readings of Eq. 30 (HybridPPOConfig.alpha_schedule) at K = 10, D = 0, 0.5, 2, and the agent-loss
    weight w of Eq. 31 each gives; Table IV's fixed alpha is the expert's weight except under eq30."""
    d = jnp.array([0.0, 0.5, 2.0])
    run = lambda schedule, epoch, method="reled": agent_weight(d, jnp.int32(epoch), HybridPPOConfig(epochs=10, method=method, alpha_schedule=schedule))  # noqa: E731
    # eq30 (literal): k = epoch from 0, alpha on the agent loss: no imitation in the first epoch.
    alpha, w = run("eq30", 0)
    np.testing.assert_allclose(np.asarray(alpha), [1, 1, 1])
    np.testing.assert_allclose(np.asarray(w), [1, 1, 1])
    alpha, w = run("eq30", 5)
    np.testing.assert_allclose(np.asarray(w), np.exp(-0.5 * np.asarray(d)), rtol=1e-6)
    # text: imitation first (k = 1: alpha = exp(-0.9 D)), alpha -> 1 at the end (k = K).
    alpha, w = run("text", 0)
    np.testing.assert_allclose(np.asarray(w), np.exp(-0.9 * np.asarray(d)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(run("text", 9)[1]), [1, 1, 1], rtol=1e-6)
    assert float(run("text", 2)[1][2]) > float(run("text", 1)[1][2])  # the agent's weight rises with k
    # expert-weight: alpha = exp(-(k/K) D), k from 1, weights the expert loss: w = 1 - alpha.
    alpha, w = run("expert-weight", 0)
    np.testing.assert_allclose(np.asarray(alpha), np.exp(-0.1 * np.asarray(d)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w), 1 - np.exp(-0.1 * np.asarray(d)), rtol=1e-5, atol=1e-7)
    # Table IV's alpha0.2: the agent's weight under eq30, the expert's under the two text readings.
    assert np.allclose(run("eq30", 3, "reled-alpha0.2")[1], 0.2) and np.allclose(run("text", 3, "reled-alpha0.2")[1], 0.8)
    assert np.allclose(run("expert-weight", 3, "reled-va-alpha0.5")[1], 0.5) and np.allclose(run("text", 3, "reled-alpha0.2")[0], 0.2)
    for schedule in ("eq30", "text", "expert-weight"):  # no expert: the agent's loss alone
        assert np.allclose(run(schedule, 3, "ippo")[1], 1.0)
    with pytest.raises(ValueError, match="alpha_schedule"):
        HybridPPOConfig(alpha_schedule="backwards")


def test_alpha_follows_eq30():
    d = jnp.array([0.0, 0.5, 2.0])
    np.testing.assert_allclose(np.asarray(dtw_alpha(d, jnp.float32(0), 10)), [1, 1, 1])
    np.testing.assert_allclose(np.asarray(dtw_alpha(d, jnp.float32(5), 10)), np.exp(-0.5 * np.array([0.0, 0.5, 2.0])), rtol=1e-6)
    assert HybridPPOConfig(method="reled-alpha0.2").fixed_alpha == 0.2 and HybridPPOConfig(method="ippo").fixed_alpha == 1.0
    with pytest.raises(ValueError, match="unknown method"):
        HybridPPOConfig(method="sac")


def _tiny_batches(key, n_agents, n, input_dim, m_out, adv_sign=1.0):
    k = jax.random.split(key, 4)
    mask = jnp.ones((n_agents, n, m_out), bool)
    batch = dict(
        x=jax.random.normal(k[0], (n_agents, n, input_dim)), mask=mask,
        action=jax.random.randint(k[1], (n_agents, n), 0, m_out), old_logp=jnp.full((n_agents, n), -jnp.log(m_out)),
        adv=adv_sign * jnp.abs(jax.random.normal(k[2], (n_agents, n))) + 0.1 * jnp.arange(n), ret=jax.random.normal(k[3], (n_agents, n)),
        valid=jnp.ones((n_agents, n), bool),
    )
    return batch


@pytest.fixture(scope="module")
def tiny():
    _, env, params = load_scenario("oakland", "moderate", n_agents=3, seed=0, n_background=20)
    cfg = HybridPPOConfig(epochs=4, n_envs=2, rollout_steps=16, n_minibatches=2, update_epochs=1)
    input_dim = 2 * env.n_nodes + 2 * env.m_out
    agent_params, policy, value = init_agents(jax.random.PRNGKey(0), env.n_agents, input_dim, env.m_out)
    return env, params, cfg, agent_params, policy, value, input_dim


def test_loss_signs_and_alpha_weighting(tiny):
    env, _, cfg, agent_params, policy, value, input_dim = tiny
    p0 = jax.tree.map(lambda z: z[0], agent_params)
    b_a = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(1), 1, 16, input_dim, env.m_out))
    b_e = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(2), 1, 16, input_dim, env.m_out))
    # Compiled once for all the cases below (batches and alpha are arguments, the config is fixed per call).
    grad = jax.jit(lambda ba, be, alpha, c: jax.grad(agent_loss, has_aux=True)(p0, policy, value, ba, be, alpha, c)[0], static_argnums=3)
    # One gradient step on the loss raises the log-probability of positive-advantage agent actions.
    grads = grad(b_a, b_e, 1.0, cfg)
    stepped = jax.tree.map(lambda p, g: p - 1e-2 * g, p0, grads)

    def logp(p, b):
        logits = policy.apply(p.policy, b["x"])
        return jnp.take_along_axis(jax.nn.log_softmax(logits), b["action"][:, None], 1)[:, 0]

    assert float(jnp.sum(b_a["adv"] * (logp(stepped, b_a) - logp(p0, b_a)))) > 0
    # alpha = 1: the expert samples do not move the policy; alpha = 0: the agent's advantages do not.
    other_e = dict(b_e, adv=-b_e["adv"])
    g1, g2 = grad(b_a, b_e, 1.0, cfg), grad(b_a, other_e, 1.0, cfg)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1.policy, g2.policy)
    cfg0 = dataclasses.replace(cfg, entropy_coef=0.0)
    g3, g4 = grad(b_a, b_e, 0.0, cfg0), grad(dict(b_a, adv=-b_a["adv"]), b_e, 0.0, cfg0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g3.policy, g4.policy)


def test_agent_advantages_are_standardised_per_minibatch_and_entropy_is_per_decision(tiny):
    """l_agent is Eq. 29 on the minibatch's advantages centred and scaled (PPO's usual normalisation); expert
    advantages are, in paper form, divided by the agent minibatch's spread and not centred (issue 17), with
    center_expert_advantages standardised on their own, and for reled-va used as given; the entropy bonus is
    the mean over decisions of each decision's own entropy. All recomputed in NumPy."""
    env, _, cfg, agent_params, policy, value, input_dim = tiny
    p0 = jax.tree.map(lambda z: z[0], agent_params)
    b_a = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(6), 1, 16, input_dim, env.m_out))
    b_e = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(7), 1, 16, input_dim, env.m_out, adv_sign=-1.0))
    assert abs(float(b_a["adv"].mean())) > 0.5  # a mean that centring must remove

    def log_softmax(b):
        z = np.asarray(policy.apply(p0.policy, b["x"]), np.float64)
        return z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))

    def surrogate(b, adv):
        ratio = np.exp(np.take_along_axis(log_softmax(b), np.asarray(b["action"])[:, None], 1)[:, 0] - np.asarray(b["old_logp"]))
        return np.mean(np.minimum(ratio * adv, np.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv))

    standard = lambda a: (a - a.mean()) / np.sqrt(a.var() + 1e-8)  # noqa: E731
    adv_a, adv_e = np.asarray(b_a["adv"], np.float64), np.asarray(b_e["adv"], np.float64)
    spread_a = np.sqrt(adv_a.var() + 1e-8)
    assert abs(spread_a - 1.0) > 0.1  # a spread that the paper form's scale must apply
    for form, want_e in [(dict(center_expert_advantages=True), standard(adv_e)), (dict(), adv_e / spread_a), (dict(method="reled-va"), adv_e)]:
        _, aux = agent_loss(p0, policy, value, b_a, b_e, 0.5, dataclasses.replace(cfg, **form))
        assert float(aux["l_agent"]) == pytest.approx(surrogate(b_a, standard(adv_a)), rel=1e-4, abs=1e-6)
        assert float(aux["l_expert"]) == pytest.approx(surrogate(b_e, want_e), rel=1e-4, abs=1e-6), form
    lp = log_softmax(b_a)
    assert float(aux["entropy"]) == pytest.approx(np.mean(-(np.exp(lp) * lp).sum(-1)), rel=1e-5)
    # The loss minimised is -(Eq. 31) plus the value terms: the entropy bonus lowers it (exploration is rewarded).
    loss, aux = agent_loss(p0, policy, value, b_a, b_e, 0.25, cfg)
    objective = 0.25 * aux["l_agent"] + 0.75 * aux["l_expert"] + cfg.entropy_coef * aux["entropy"]
    assert float(loss) == pytest.approx(float(-objective + cfg.value_coef * aux["value_loss"]), rel=1e-5)


def test_stacked_update_equals_loop_of_single_agent_updates(tiny):
    env, params, cfg, agent_params, policy, value, input_dim = tiny
    epoch = make_epoch(env, params, policy, value, cfg)
    state = init_state(jax.random.PRNGKey(3), agent_params, cfg)
    b_a = _tiny_batches(jax.random.PRNGKey(4), env.n_agents, 8, input_dim, env.m_out)
    b_e = _tiny_batches(jax.random.PRNGKey(5), env.n_agents, 8, input_dim, env.m_out)
    alpha = jnp.array([0.2, 0.5, 0.9])
    update = jax.jit(epoch.agents_update)
    stacked, _, _ = update(state.params, state.opt_state, b_a, b_e, alpha)
    for i in range(env.n_agents):
        take = lambda z: z[i : i + 1]  # noqa: E731
        single, _, _ = update(
            jax.tree.map(take, state.params), jax.tree.map(take, state.opt_state), jax.tree.map(take, b_a), jax.tree.map(take, b_e), alpha[i : i + 1]
        )
        jax.tree.map(lambda s, o: np.testing.assert_allclose(np.asarray(s)[i], np.asarray(o)[0], rtol=1e-5, atol=1e-6), stacked, single)


def test_encoding_is_a_transform_of_the_table_i_observation(tiny):
    env, params, *_ = tiny
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    x = encode(obs.features, env.n_nodes, env.m_out)
    assert x.shape == (env.n_agents, 2 * env.n_nodes + 2 * env.m_out)
    np.testing.assert_array_equal(np.argmax(np.asarray(x[:, : env.n_nodes]), 1), np.asarray(params.agent_origin))
    np.testing.assert_array_equal(np.argmax(np.asarray(x[:, env.n_nodes : 2 * env.n_nodes]), 1), np.asarray(params.agent_dest))


def test_value_losses_eq27(tiny):
    env, _, cfg, agent_params, policy, value, input_dim = tiny
    p0 = jax.tree.map(lambda z: z[0], agent_params)
    b_a = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(6), 1, 8, input_dim, env.m_out))
    b_e = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(7), 1, 8, input_dim, env.m_out))
    b_e["valid"] = b_e["valid"].at[:4].set(False)  # masked rows do not count
    _, aux = jax.jit(lambda ba, be: agent_loss(p0, policy, value, ba, be, 0.5, cfg))(b_a, b_e)
    v_a = value.apply(p0.value_agent, b_a["x"])[:, 0]
    v_e = value.apply(p0.value_expert, b_e["x"])[:, 0]
    want = np.mean((np.asarray(v_a) - np.asarray(b_a["ret"])) ** 2) + np.mean((np.asarray(v_e)[4:] - np.asarray(b_e["ret"])[4:]) ** 2)
    assert float(aux["value_loss"]) == pytest.approx(want, rel=1e-5)


def test_expert_advantage_baselines(tiny):
    """Eq. 28's A^e = R^e - V^e(o^e) by default; the "agent" variant swaps in V^a and keeps R^e."""
    env, params, cfg, agent_params, policy, value, input_dim = tiny
    n_agents, n, segments = env.n_agents, 12, 2
    k = jax.random.split(jax.random.PRNGKey(8), 4)
    decided = jax.random.bernoulli(k[0], 0.5, (n_agents, n))
    expert = Samples(
        x=jax.random.normal(k[1], (n_agents, n, input_dim)), mask=jnp.ones((n_agents, n, env.m_out), bool),
        action=jnp.zeros((n_agents, n), jnp.int32), reward=jax.random.normal(k[2], (n_agents, n)), decided=decided,
        done=jnp.zeros((n_agents, n), bool).at[:, n // 2 - 1].set(True), last_x=jax.random.normal(k[3], (n_agents, segments, input_dim)),
    )
    v = lambda vp: np.asarray(jax.vmap(lambda p, x: value.apply(p, x)[..., 0])(vp, expert.x))  # noqa: E731
    ret_e, adv_e = make_epoch(env, params, policy, value, cfg).expert_advantages(expert, agent_params)
    ret_a, adv_a = make_epoch(env, params, policy, value, dataclasses.replace(cfg, expert_baseline="agent")).expert_advantages(expert, agent_params)
    ret_v, adv_v = make_epoch(env, params, policy, value, dataclasses.replace(cfg, method="reled-va")).expert_advantages(expert, agent_params)
    on = np.asarray(decided)
    np.testing.assert_allclose(np.asarray(ret_a), np.asarray(ret_e), rtol=1e-6)  # the same returns (bootstrapped with V^e)
    np.testing.assert_allclose(np.asarray(adv_e)[on], (np.asarray(ret_e) - v(agent_params.value_expert))[on], rtol=1e-5, atol=1e-5)
    want = np.where(on, np.asarray(ret_e) - v(agent_params.value_agent), 0.0)
    np.testing.assert_allclose(np.asarray(adv_a), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(adv_a)[on], np.asarray(adv_e)[on])
    # reled-va: the same advantages, uncentred, divided by each agent's spread over its decisions.
    spread = np.array([want[i][on[i]].std() for i in range(n_agents)])
    np.testing.assert_allclose(np.asarray(adv_v), want / spread[:, None], rtol=1e-4, atol=1e-5)
    # reled-va* are RELED's Table IV variants with the agent baseline and uncentred expert advantages;
    # everything else about a variant (fixed alpha, refinement, expert backend) is the paper variant's.
    for paper, va_method in zip(PAPER_RELED, VA_RELED, strict=True):
        assert (METHODS[va_method].variant, METHODS[va_method].in_paper, METHODS[paper].variant, METHODS[paper].in_paper) == (paper, False, paper, True)
        va, pv = HybridPPOConfig(method=va_method), HybridPPOConfig(method=paper)
        assert (va.expert_advantage_baseline, va.fixed_alpha) == ("agent", pv.fixed_alpha)
        assert (pv.expert_advantage_baseline, pv.expert_advantage_norm) == ("expert", "agent-spread")
        assert (va.expert_advantage_norm, HybridPPOConfig(method=paper, center_expert_advantages=True).expert_advantage_norm) == ("given", "center")
        assert HybridPPOConfig(method=va_method, center_expert_advantages=True).expert_advantage_norm == "given"  # reled-va is never centred
    assert HybridPPOConfig(method="reled-va-alpha0.2").fixed_alpha == 0.2 and HybridPPOConfig(method="reled-va").fixed_alpha is None
    assert HybridPPOConfig(method="ippo").fixed_alpha == 1.0 and not HybridPPOConfig(method="mappo").uses_expert and HybridPPOConfig(method="mappo").centralised_critic
    for method, backend, refine in (("reled-va-logit", "logit", True), ("reled-va-norefine", "planner", False), ("reled-va", "planner", True), ("reled-logit", "logit", True)):
        tcfg = TrainConfig.of(method=method).resolved()
        assert (tcfg.expert.backend, tcfg.spec.refine) == (backend, refine), method
    with pytest.raises(ValueError, match="expert_baseline"):
        HybridPPOConfig(expert_baseline="both")


def _expert_direction_batch(policy, params, input_dim, m_out):
    """Eight expert rows on two observations: action 1 at x1 with A^e = +1, action 0 at x2 with A^e = -1."""
    x1, x2 = jnp.zeros(input_dim).at[0].set(1.0), jnp.zeros(input_dim).at[1].set(1.0)
    x = jnp.stack([x1] * 4 + [x2] * 4)
    action = jnp.array([1] * 4 + [0] * 4)
    logp = jnp.take_along_axis(jax.nn.log_softmax(policy.apply(params.policy, x)), action[:, None], 1)[:, 0]
    return dict(x=x, mask=jnp.ones((8, m_out), bool), action=action, old_logp=logp, adv=jnp.array([1.0] * 4 + [-1.0] * 4),
                ret=jnp.zeros(8), valid=jnp.ones(8, bool))


@pytest.mark.parametrize("method", ["reled", "reled-va"])  # centred (Eq. 28 as in the paper) and uncentred expert advantages
def test_expert_term_pulls_towards_positive_advantage_expert_actions(tiny, method):
    """Eq. 30/31: alpha = 0 follows the expert's advantages, alpha = 1 ignores them, alpha = 0.5 is the mean of both."""
    env, _, cfg, agent_params, policy, value, input_dim = tiny
    cfg = dataclasses.replace(cfg, method=method, entropy_coef=0.0)  # the entropy term would move the policy too
    p0 = jax.tree.map(lambda z: z[0], agent_params)
    b_e = _expert_direction_batch(policy, p0, input_dim, env.m_out)
    b_a = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(9), 1, 16, input_dim, env.m_out))
    grad = jax.jit(lambda alpha, be: jax.grad(agent_loss, has_aux=True)(p0, policy, value, b_a, be, alpha, cfg)[0].policy)

    def logp_change(g):
        stepped = jax.tree.map(lambda p, d: p - 1e-2 * d, p0.policy, g)
        after = jnp.take_along_axis(jax.nn.log_softmax(policy.apply(stepped, b_e["x"])), b_e["action"][:, None], 1)[:, 0]
        return np.asarray(after - b_e["old_logp"])

    g0, g1, g_half = grad(0.0, b_e), grad(1.0, b_e), grad(0.5, b_e)
    change = logp_change(g0)
    assert (change[:4] > 1e-4).all() and (change[4:] < -1e-4).all(), change  # towards the good expert action, away from the bad
    # alpha = 1: the expert rows carry no weight, whatever their advantages.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), g1, grad(1.0, dict(b_e, adv=-b_e["adv"])))
    assert np.abs(logp_change(g1)[:4] - change[:4]).max() > 1e-4  # ... and alpha = 1 is not alpha = 0
    # The hybrid loss is linear in alpha: alpha = 0.5 is exactly half of each.
    jax.tree.map(lambda h, a, b: np.testing.assert_allclose(h, 0.5 * a + 0.5 * b, rtol=1e-5, atol=1e-7), g_half, g1, g0)


def test_hybrid_alpha_scales_dtw_and_pairs_each_agent_with_its_own_expert_rows():
    """Eq. 30 from hand-made trajectories: [E, A, L, 2] points and [E, A] lengths of agents and experts."""
    cfg = HybridPPOConfig(epochs=4, dtw_scale_m=200.0, alpha_schedule="eq30")
    a_xy, a_len = np.zeros((2, 2, 4, 2)), np.zeros((2, 2), np.int32)
    e_xy, e_len = np.zeros((3, 2, 4, 2)), np.zeros((3, 2), np.int32)
    route = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 100.0]])
    # Agent 0 drives its expert's route in both environments: DTW 0.
    a_xy[:, 0, :3], a_len[:, 0], e_xy[:2, 0, :3], e_len[:2, 0] = route, 3, route, 3
    # Agent 1, environment 0: two points, its expert three, 300 m north of them (the last repeated):
    # DTW = 3 x 300 m, divided by the longer trajectory (3) and by 200 m: D = 1.5.
    a_xy[0, 1, :2], a_len[0, 1] = route[:2], 2
    e_xy[0, 1, :3], e_len[0, 1] = route[[0, 1, 1]] + [0.0, 300.0], 3
    # Environment 1: agent 1 never decided (empty) against a non-empty expert: infinite DTW, left out of the mean.
    e_xy[1, 1, :2], e_len[1, 1] = route[:2], 2
    # A third expert environment has no agent counterpart and must not count.
    e_xy[2], e_len[2] = 5000.0, 1
    alpha, weight, dtw_m, d_dtw = jax.jit(lambda a, e, k: hybrid_alpha(a, e, k, cfg))((a_xy, a_len), (e_xy, e_len), jnp.int32(3))
    np.testing.assert_allclose(np.asarray(dtw_m), [0.0, 900.0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(d_dtw), [0.0, 1.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(alpha), [1.0, np.exp(-3 / 4 * 1.5)], rtol=1e-6)  # exp(-(k/K) D)
    np.testing.assert_allclose(np.asarray(weight), np.asarray(alpha))  # eq30: alpha weights the agent loss
    fixed, _, _, _ = hybrid_alpha((a_xy, a_len), (e_xy, e_len), 3, dataclasses.replace(cfg, method="reled-alpha0.2"))
    np.testing.assert_allclose(np.asarray(fixed), [0.2, 0.2])


def test_alpha_inside_epoch_compares_each_agents_first_episode_with_its_own_expert():
    """On a one-way ring every trajectory is forced: agent 0 decides at junctions 0, 1; agent 1 at 1, 2."""
    xy = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]])
    ring = build_network("ring", xy, [(k, (k + 1) % 4, 100.0, 10.0, 1) for k in range(4)], signals=SignalConfig(enabled=False))
    env = make_env(ring, n_agents=2, n_background=0)
    params = make_params(ring, [0, 1], [2, 3], [0], [2])
    cfg = HybridPPOConfig(epochs=4, n_envs=1, rollout_steps=6, n_minibatches=1, update_epochs=1, alpha_schedule="eq30")
    agents, policy, value = init_env_agents(jax.random.PRNGKey(0), env)
    input_dim = observation_dim(env.m_out)
    state = init_state(jax.random.PRNGKey(1), agents, cfg).replace(epoch=jnp.int32(2))
    # Expert rows: agent 0's expert drives 0 -> 1 (its own route), agent 1's drives 2 -> 3 (one junction ahead of it).
    e_xy = np.zeros((1, 2, cfg.max_trajectory, 2))
    e_xy[0, 0, :2], e_xy[0, 1, :2] = xy[[0, 1]], xy[[2, 3]]
    expert_nodes = (jnp.asarray(e_xy), jnp.array([[2, 2]], jnp.int32))
    _, metrics = jax.jit(make_epoch(env, params, policy, value, cfg))(state, empty_expert(2, input_dim, env.m_out), expert_nodes)
    # Agent 0: DTW 0. Agent 1: |(100,0)-(100,100)| + |(100,100)-(0,100)| = 200 m, D = 200 / 2 / 200 = 0.5.
    assert float(metrics["dtw_m"]) == pytest.approx((0.0 + 200.0) / 2, rel=1e-5)
    assert float(metrics["d_dtw"]) == pytest.approx((0.0 + 0.5) / 2, rel=1e-5)
    assert float(metrics["alpha"]) == pytest.approx((1.0 + np.exp(-2 / 4 * 0.5)) / 2, rel=1e-5)  # k = 2 of K = 4
    # The logged expert weight is the one the loss used: no expert row in any minibatch forces it to 0.
    assert float(metrics["expert_weight"]) == 0.0 and float(metrics["clipfrac_expert"]) == 0.0


def test_compacted_batch_gives_the_same_loss_and_gradients_as_the_full_one(tiny):
    """The update keeps only decision rows (HybridPPOConfig.decision_share): masked means ignore the rest."""
    env, _, cfg, agent_params, policy, value, input_dim = tiny
    p0 = jax.tree.map(lambda z: z[0], agent_params)
    full_a = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(11), 1, 40, input_dim, env.m_out))
    full_e = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(12), 1, 40, input_dim, env.m_out))
    full_a["valid"] = jnp.arange(40) % 5 == 1  # 8 decision rows among 40
    full_e["valid"] = jnp.arange(40) % 8 == 3  # 5
    add_agent = lambda b: jax.tree.map(lambda z: z[None], b)  # noqa: E731
    compact_a, dropped_a = compact_rows(add_agent(full_a), add_agent(full_a)["valid"], 12)
    compact_e, dropped_e = compact_rows(add_agent(full_e), add_agent(full_e)["valid"], 8)
    assert compact_a["x"].shape == (1, 12, input_dim) and int(dropped_a[0]) == 0 and int(dropped_e[0]) == 0
    np.testing.assert_array_equal(compact_a["valid"][0], np.arange(12) < 8)
    np.testing.assert_array_equal(compact_a["x"][0, :8], full_a["x"][1::5])  # the decision rows, in order
    compact_a, compact_e = jax.tree.map(lambda z: z[0], compact_a), jax.tree.map(lambda z: z[0], compact_e)
    grad = jax.jit(jax.grad(agent_loss, has_aux=True), static_argnums=(1, 2, 6))
    for center in (True, False):
        c = dataclasses.replace(cfg, center_expert_advantages=center)
        (g_full, aux_full), (g_compact, aux_compact) = grad(p0, policy, value, full_a, full_e, 0.6, c), grad(p0, policy, value, compact_a, compact_e, 0.6, c)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), aux_full, aux_compact)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_full, g_compact)


def test_blockwise_applies_a_function_to_each_agents_decision_rows_only():
    """Blocks of 4 over rows compacted per agent: 7, 0 and 3 decisions give 2 blocks (the busiest agent's),
    each agent's own rows get fn's value, and every position past an agent's count holds 0."""
    rows = jnp.array([[5, 1, 9, 2, 7, 3, 8, 0, 0, 0], [10] * 10, [4, 6, 2, 10, 10, 10, 10, 10, 10, 10]])
    count = jnp.array([7, 0, 3])
    blocks_run = []

    def fn(r):
        jax.debug.callback(lambda block: blocks_run.append(np.asarray(block).tolist()), r)
        return 100.0 + r
    got = np.asarray(jax.jit(lambda r, c: blockwise(fn, r, c, block_trips(c[None], c[None], 4, 1)["agent"], 4))(rows, count))
    jax.effects_barrier()
    want = np.where(np.arange(10)[None, :] < np.asarray(count)[:, None], 100.0 + np.asarray(rows), 0.0)
    np.testing.assert_array_equal(got, want)
    assert [b[0] for b in blocks_run] == [[5, 1, 9, 2], [7, 3, 8, 0]]  # two blocks of agent 0's rows, none of the last 2 positions
    # The trip counts, over both seeds: all agent rows (12 -> 3 blocks), all expert rows (9 -> 3), and each
    # minibatch's largest share (agent 7 splits 3 + 4, expert 9 splits 4 + 5, agent 12 splits 6 + 6).
    trips = block_trips(jnp.array([[7, 0, 3], [1, 1, 12]]), jnp.array([[2, 9, 0], [0, 0, 0]]), 4, 2)
    assert (int(trips["agent"]), int(trips["expert"]), np.asarray(trips["minibatch"]).tolist()) == (3, 3, [2, 2])
    trips = block_trips(jnp.array([[7, 0, 3]]), jnp.array([[2, 9, 0]]), 4, 2)
    assert (int(trips["agent"]), int(trips["expert"]), np.asarray(trips["minibatch"]).tolist()) == (2, 3, [1, 2])


def test_gradients_of_a_minibatchs_blocks_add_up_to_the_minibatchs_gradient(tiny):
    """Gradient accumulation (HybridPPOConfig.update_block): the minibatch's counts and moments given to each block
    (`minibatch_stats`), the blocks' losses, terms and gradients sum to those of the whole minibatch, for
    every expert-advantage form, with expert rows in some blocks only."""
    env, _, cfg, agent_params, policy, value, input_dim = tiny
    p0 = jax.tree.map(lambda z: z[0], agent_params)
    b_a = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(21), 1, 12, input_dim, env.m_out))
    b_e = jax.tree.map(lambda z: z[0], _tiny_batches(jax.random.PRNGKey(22), 1, 12, input_dim, env.m_out))
    b_e["valid"] = jnp.arange(12) < 5  # expert rows in the first two blocks of 4 only
    grad = jax.jit(jax.grad(agent_loss, has_aux=True), static_argnums=(1, 2, 6))
    for form in (dict(), dict(center_expert_advantages=True)):  # A^e over the agent spread (paper form), centred on its own
        c = dataclasses.replace(cfg, **form)
        g_whole, aux_whole = grad(p0, policy, value, b_a, b_e, 0.3, c)
        stats = minibatch_stats(b_a["adv"], b_a["valid"], b_e["adv"], b_e["valid"])
        blocks = [grad(p0, policy, value, *(jax.tree.map(lambda z: z[k : k + 4], b) for b in (b_a, b_e)), 0.3, c, stats) for k in (0, 4, 8)]
        g_sum = jax.tree.map(lambda *g: sum(g), *[g for g, _ in blocks])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_whole, g_sum)
        for term in ("l_agent", "l_expert", "entropy", "value_loss", "clipfrac"):
            assert float(sum(a[term] for _, a in blocks)) == pytest.approx(float(aux_whole[term]), rel=1e-5, abs=1e-6), (form, term)
        # a block alone, without the minibatch's stats, is not its share (the stats matter)
        g_alone = grad(p0, policy, value, *(jax.tree.map(lambda z: z[4:8], b) for b in (b_a, b_e)), 0.3, c)[0]
        assert not np.allclose(g_alone.policy["params"]["Dense_0"]["kernel"], blocks[1][0].policy["params"]["Dense_0"]["kernel"], atol=1e-6)


def test_without_an_expert_v_e_keeps_no_optimiser_state_and_the_others_step_as_with_adam():
    """IPPO/MAPPO: V^e has no gradient, so make_optimizer gives it no Adam state; the policy and V^a take
    exactly the steps of clipping plus Adam over the whole tree with V^e's gradients zero (RELED's optimiser)."""
    from reled_jax.networks import AgentParams
    from reled_jax.reled import make_optimizer

    k = jax.random.split(jax.random.PRNGKey(0), 6)
    params = AgentParams(*({"w": jax.random.normal(k[i], (4, 3))} for i in range(3)))
    grads = [AgentParams({"w": 5.0 * jax.random.normal(k[3 + i], (4, 3))}, {"w": jax.random.normal(k[4], (4, 3))}, {"w": jnp.zeros((4, 3))}) for i in range(2)]
    ippo, reled = make_optimizer(HybridPPOConfig(method="ippo")), make_optimizer(HybridPPOConfig(method="reled"))
    s_i, s_r, p_i, p_r = ippo.init(params), reled.init(params), params, params
    for g in grads:  # two steps: Adam's moments carry over
        u_i, s_i = ippo.update(g, s_i, p_i)
        u_r, s_r = reled.update(g, s_r, p_r)
        p_i, p_r = optax.apply_updates(p_i, u_i), optax.apply_updates(p_r, u_r)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p_i, p_r)
    assert float(jnp.abs(p_i.policy["w"] - params.policy["w"]).max()) > 1e-4
    np.testing.assert_array_equal(p_i.value_expert["w"], params.value_expert["w"])
    assert len(jax.tree.leaves(s_i)) == len(jax.tree.leaves(s_r)) - 2  # V^e's two Adam moments are not kept


def test_decisions_beyond_the_capacity_are_dropped_and_counted():
    valid = jnp.array([[True, False, True, True, False, True], [False, True, False, False, False, False]])
    batch, dropped = compact_rows({"x": jnp.arange(12.0).reshape(2, 6)}, valid, 3)
    np.testing.assert_array_equal(batch["x"], [[0.0, 2.0, 3.0], [7.0, 11.0, 11.0]])  # agent 1: one row, then padding (last row)
    np.testing.assert_array_equal(batch["valid"], [[True, True, True], [True, False, False]])
    np.testing.assert_array_equal(dropped, [1, 0])
    assert update_capacities(1000, 0.25, 8) == (256, 1000) and update_capacities(1000, 1.0, 8) == (1000,) and update_capacities(10, 0.01, 4) == (4, 10)


def test_the_three_update_forms_update_alike_when_they_update_on_the_same_rows():
    """RELED with expert rows, one minibatch per PPO epoch, so that every form updates on every decision. One
    program with the capacity switch (decision_share 0.5: 24 of 48 rows) runs its usual branch when every
    agent's decisions fit and all rows when one agent's do not (no decision is dropped); gradient
    accumulation over blocks of 8 decision rows (update_block) covers only the busiest agent's decisions
    rounded up to a block. On both inputs the two programs give the same networks and loss terms."""
    # The traffic model before issue 21's junction delays: this rollout's decisions fit the 24 rows (need 22).
    _, env, params = load_scenario("oakland", "moderate", n_agents=3, seed=0, n_background=20, traffic=TrafficModel(turn_delay_s=0.0, startup_loss_s=0.0, teleport_s=120, critical_occupancy=0.4))
    agents, policy, value = init_env_agents(jax.random.PRNGKey(0), env)
    base = HybridPPOConfig(method="reled", epochs=2, n_envs=2, rollout_steps=24, n_minibatches=1, update_epochs=2)
    state = init_state(jax.random.PRNGKey(1), agents, base)
    epoch = make_epoch(env, params, policy, value, base)
    traj, _, _ = jax.jit(epoch.rollout)(init_state(jax.random.PRNGKey(7), agents, base))  # another rollout's decisions as the expert's
    rows = lambda z: agent_rows(jnp.swapaxes(z, 0, 1))  # noqa: E731
    fits = Samples(x=rows(traj["x"]), mask=rows(traj["mask"]), action=rows(traj["action"]), reward=rows(traj["reward"]), decided=rows(traj["decided"]),
                   done=rows(traj["done"]), last_x=jnp.swapaxes(traj["x"][-1], 0, 1))
    assert bool(fits.mask.any(-1).all())  # every row has a legal action, so every row can count as a decision:
    overflows = fits.replace(decided=jnp.ones_like(fits.decided))  # 48 expert decisions per agent, more than 24
    nodes = (jnp.zeros((1, env.n_agents, 64, 2)), jnp.ones((1, env.n_agents), jnp.int32))
    switch = jax.jit(make_epoch(env, params, policy, value, dataclasses.replace(base, decision_share=0.5)))
    blocks = jax.jit(make_epoch(env, params, policy, value, dataclasses.replace(base, update_block=8)))
    for expert, branch_rows in ((fits, 24), (overflows, 48)):
        (s_switch, m_switch), (s_blocks, m_blocks) = switch(state, expert, nodes), blocks(state, expert, nodes)
        need = max(int(round(float(m_switch["decision_share_max"]) * 48)), int(expert.decided.sum(1).max()))
        assert (need <= 24) == (branch_rows == 24) and need > 8, need  # the usual branch exactly when it fits; several blocks
        assert (int(m_switch["update_rows"]), int(m_blocks["update_rows"])) == (branch_rows, -(-need // 8) * 8)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), s_switch.params, s_blocks.params)
        for term in ("l_agent", "l_expert", "value_loss", "entropy", "expert_weight", "clipfrac"):
            assert float(m_blocks[term]) == pytest.approx(float(m_switch[term]), rel=1e-4, abs=1e-6), (branch_rows, term)
        assert float(m_switch["l_expert"]) != 0.0  # the expert rows took part
        # and the update changed the networks (so the equality above is not that of two untouched states)
        assert not np.allclose(s_switch.params.policy["params"]["Dense_0"]["kernel"], agents.policy["params"]["Dense_0"]["kernel"])


def test_carried_episodes_continue_their_trajectory_and_reward_across_rollouts():
    """One environment, one agent. Before the rollout its episode had visited junctions 7, 8 and
    gained 5. The rollout: decides at 1 (t=0), 2 (t=1), its episode ends at t=2, decides at 3, 4."""
    node = jnp.array([1, 2, 9, 3, 4])[:, None, None]  # [T, E, A]
    decided = jnp.array([True, True, False, True, True])[:, None, None]
    done = jnp.array([False, False, True, False, False])[:, None, None]
    prefix = (jnp.zeros((1, 1, 6), jnp.int32).at[0, 0, :2].set(jnp.array([7, 8])), jnp.array([[2]]))
    xy = jnp.stack([jnp.arange(10.0), jnp.zeros(10)], -1)  # junction k at (k, 0)
    points, length = trajectory_points(node, decided, done, xy, 6, prefix)
    assert int(length[0, 0]) == 4 and np.asarray(points[0, 0, :4, 0]).tolist() == [7, 8, 1, 2]
    nodes, length = episode_in_progress(node, decided, done, prefix, 6)
    assert int(length[0, 0]) == 2 and np.asarray(nodes[0, 0, :2]).tolist() == [3, 4]
    no_end = episode_in_progress(node, decided, jnp.zeros_like(done), prefix, 6)
    assert int(no_end[1][0, 0]) == 6 and np.asarray(no_end[0][0, 0]).tolist() == [7, 8, 1, 2, 9, 3][:2] + [1, 2, 3, 4]
    reward = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])[:, None, None]
    sums = _episode_sums(reward, done[..., 0], jnp.array([[5.0]]))
    assert float(sums[2, 0, 0]) == 5 + 1 + 2 + 3 and float(sums[4, 0, 0]) == 4 + 5


def test_carried_environments_go_on_from_epoch_to_epoch():
    _, env, params = load_scenario("oakland", "moderate", n_agents=3, seed=0, n_background=20)
    agents, policy, value = init_env_agents(jax.random.PRNGKey(0), env)
    no_nodes = (jnp.zeros((1, env.n_agents, 64, 2)), jnp.zeros((1, env.n_agents), jnp.int32))
    cfg = HybridPPOConfig(method="ippo", epochs=3, n_envs=2, rollout_steps=3, n_minibatches=1, update_epochs=1, lockstep=True, carry_envs=True)
    epoch = make_epoch(env, params, policy, value, cfg)
    state = init_state(jax.random.PRNGKey(1), agents, cfg).replace(envs=epoch.initial_envs(jax.random.PRNGKey(2)))
    run = jax.jit(epoch)
    clock, steps = [np.asarray(state.envs.state.t)], 0
    for _ in range(3):
        state, metrics = run(state, empty_expert(env.n_agents, observation_dim(env.m_out), env.m_out), no_nodes)
        clock.append(np.asarray(state.envs.state.t))
        steps += int(metrics["interaction_steps"])
        assert int(metrics["episodes"]) == 0
    assert np.all(np.diff(np.stack(clock), axis=0) > 0)  # each epoch's rollout went on from the last one's end
    # The trajectories in progress hold every decision since the reset (an agent's ends when it arrives).
    sim = state.envs.state
    np.testing.assert_array_equal(state.envs.path_len, np.where(sim.agent_arrived, 0, sim.agent_decisions))
    assert int(sim.agent_decisions.sum()) == steps > 0
    # Without carry_envs the state holds no environments: every epoch resets its own.
    plain = init_state(jax.random.PRNGKey(1), agents, dataclasses.replace(cfg, carry_envs=False))
    assert plain.envs is None


def test_staggered_environments_start_at_spread_phases_with_their_bookkeeping():
    _, env, params = load_scenario("oakland", "moderate", n_agents=3, seed=0, n_background=20)
    _, policy, value = init_env_agents(jax.random.PRNGKey(0), env)
    cfg = HybridPPOConfig(method="ippo", n_envs=4, rollout_steps=3, lockstep=True, carry_envs=True)
    together = make_epoch(env, params, policy, value, cfg).initial_envs(jax.random.PRNGKey(2))
    assert np.all(np.asarray(together.state.t) == 0)
    staggered = make_epoch(env, params, policy, value, dataclasses.replace(cfg, stagger_steps=40)).initial_envs(jax.random.PRNGKey(2))
    # Environment e restarted at warm-up step 10 e: the later the restart, the earlier its clock.
    clock = np.asarray(staggered.state.t)
    assert np.all(np.diff(clock) < 0) and clock[-1] > 0, clock
    # Each path in progress holds the decisions since that restart.
    sim = staggered.state
    np.testing.assert_array_equal(staggered.path_len, np.where(sim.agent_arrived, 0, sim.agent_decisions))
    # Reward sums: the warm-up replayed step by step, a sum cut at every episode end and at the restart.
    k_init, k_run = jax.random.split(jax.random.PRNGKey(2))
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_init, 4), params)
    step = jax.jit(lambda k, s, a: env.step_batch(k, s, a, params))
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    sums = np.zeros((4, env.n_agents))
    for t, step_key in enumerate(jax.random.split(k_run, 40)):
        k_act, k_env, k_reset = jax.random.split(step_key, 3)
        action = jax.vmap(random_policy, in_axes=(0, 0, None))(jax.random.split(k_act, 4), obs, params)
        obs, state, reward, _, info = step(jax.random.split(k_env, 4), state, action)
        restart = np.arange(4) * 10 == t
        fresh = reset(jax.random.split(k_reset, 4), params)
        obs, state = jax.tree.map(lambda a, b: jnp.where(restart.reshape((4,) + (1,) * (a.ndim - 1)), a, b), fresh, (obs, state))
        sums += np.asarray(reward)
        sums[np.asarray(info["episode_done"]) | restart] = 0.0
    assert np.any(sums != 0)
    np.testing.assert_allclose(staggered.reward_sum, sums, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(staggered.state.t, state.t)
