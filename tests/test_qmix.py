"""QMIX: the mixer is monotonic, the TD target is r + gamma (1 - done) Q_tot^- with held macro-actions, agents off the road take no credit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reled_jax import qmix
from reled_jax.mappo import global_state_dim
from reled_jax.networks import MLP, init_env_agents, observe
from sim.scenarios import load_scenario

N_AGENTS, G_DIM = 4, 12


def _mixer(seed=0):
    mixer = qmix.Mixer(N_AGENTS, embed=8)
    return mixer, mixer.init(jax.random.PRNGKey(seed), jnp.zeros((N_AGENTS,)), jnp.zeros((G_DIM,)))


def test_mixing_is_monotonic_in_every_agent_q():
    mixer, params = _mixer()
    q = 5.0 * jax.random.normal(jax.random.PRNGKey(1), (256, N_AGENTS))  # negative and positive Q-values
    s = jax.random.normal(jax.random.PRNGKey(2), (256, G_DIM))
    grads = jax.jit(jax.vmap(jax.grad(lambda qi, si: mixer.apply(params, qi, si))))(q, s)
    assert (np.asarray(grads) >= 0).all() and (np.asarray(grads) > 0).any()
    # The hypernetworks' raw outputs take both signs; only abs() makes the mixing weights non-negative.
    w1 = jnp.abs(s @ params["params"]["hyper_w1"]["kernel"] + params["params"]["hyper_w1"]["bias"])
    assert (np.asarray(s @ params["params"]["hyper_w1"]["kernel"]) < 0).any() and (np.asarray(w1) >= 0).all()


def test_td_target():
    mixer, params = _mixer(3)
    s_next = jax.random.normal(jax.random.PRNGKey(4), (G_DIM,))
    q_next = jnp.array([1.0, -2.0, 3.0, 0.5])  # max_a Q^-(o'_i, a)
    held_q = jnp.array([7.0, 4.0, -5.0, 9.0])  # Q^-(o_i, a_i) of each agent's held decision
    acting = jnp.array([True, False, True, False])  # agents 0, 2 choose at s'
    on_road = jnp.array([False, True, False, False])  # agent 1 is still driving its held edge; agent 3 has arrived
    r, gamma = jnp.float32(0.7), 0.9
    y = qmix.td_target(r, jnp.bool_(False), q_next, acting, held_q, on_road, s_next, mixer, params, gamma)
    expected = r + gamma * mixer.apply(params, jnp.array([1.0, 4.0, 3.0, 0.0]), s_next)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    # An agent off the road contributes nothing, whatever its Q-values.
    y_other = qmix.td_target(r, jnp.bool_(False), q_next.at[3].set(100.0), acting, held_q.at[3].set(-100.0), on_road, s_next, mixer, params, gamma)
    np.testing.assert_allclose(y_other, y, rtol=1e-6)
    # At the end of an episode the target is the reward alone.
    np.testing.assert_allclose(qmix.td_target(r, jnp.bool_(True), q_next, acting, held_q, on_road, s_next, mixer, params, gamma), r)


def _batch(key, n, n_agents, m_out, n_nodes, g_dim, active):
    k = jax.random.split(key, 6)
    f_dim = 2 * m_out + 2
    features = jnp.concatenate([jax.random.randint(k[0], (n, n_agents, 2), 0, n_nodes).astype(jnp.float32),
                                jax.random.uniform(k[1], (n, n_agents, f_dim - 2))], -1)
    return {
        "features": features, "mask": jnp.ones((n, n_agents, m_out), bool), "action": jax.random.randint(k[2], (n, n_agents), 0, m_out),
        "active": jnp.broadcast_to(active, (n, n_agents)), "reward": jax.random.normal(k[3], (n,)), "done": jnp.zeros((n,), bool),
        "state": jax.random.normal(k[4], (n, g_dim)), "next_features": features, "next_mask": jnp.ones((n, n_agents, m_out), bool),
        "next_acting": jnp.ones((n, n_agents), bool), "next_active": jnp.zeros((n, n_agents), bool), "next_state": jax.random.normal(k[5], (n, g_dim)),
    }


def test_agents_off_the_road_get_no_gradient_from_the_td_error():
    _, env, _ = load_scenario("oakland", "moderate", n_agents=3, seed=0, n_background=20)
    cfg = qmix.QMixConfig(mixer_embed=8)
    agents, _, _ = init_env_agents(jax.random.PRNGKey(0), env)
    g_dim = global_state_dim(env.n_agents, env.n_edges)
    mixer = qmix.Mixer(env.n_agents, cfg.mixer_embed)
    mix_params = mixer.init(jax.random.PRNGKey(1), jnp.zeros((env.n_agents,)), jnp.zeros((g_dim,)))
    target_q = jax.tree.map(lambda z: z * 0.5, agents.policy)  # targets differ from the online networks
    batch = _batch(jax.random.PRNGKey(2), 32, env.n_agents, env.m_out, env.n_nodes, g_dim, jnp.array([True, False, True]))
    loss_grad = jax.jit(lambda q, m: jax.grad(qmix.qmix_loss, has_aux=True)(q, m, target_q, m, batch, MLP(env.m_out, one_hot_nodes=env.n_nodes), mixer, cfg, env.n_nodes, env.m_out))
    grads, aux = loss_grad(agents.policy, mix_params)
    norm = lambda i: sum(float(jnp.abs(g[i]).sum()) for g in jax.tree.leaves(grads))  # noqa: E731
    assert norm(1) == 0.0 and norm(0) > 0 and norm(2) > 0
    assert np.isfinite(float(aux["td_loss"]))


def _qmix_setup(cfg):
    """The small oakland scenario (3 agents) and a fresh QMIX state on the shared initial agent networks."""
    _, env, params = load_scenario("oakland", "moderate", n_agents=3, seed=0, n_background=20)
    agents, _, _ = init_env_agents(jax.random.PRNGKey(0), env)
    state, q_net, mixer = qmix.init_state(jax.random.PRNGKey(1), env, cfg, agents.policy)
    return env, params, state, q_net, mixer


def test_epoch_fills_the_buffer_trains_and_copies_targets():
    cfg = qmix.QMixConfig(epochs=2, n_envs=2, rollout_steps=32, batch_size=32, updates_per_epoch=4, target_every=4, mixer_embed=8)
    env, params, state, q_net, mixer = _qmix_setup(cfg)
    epoch = jax.jit(qmix.make_epoch(env, params, q_net, mixer, cfg))
    new, metrics = epoch(state)
    assert int(new.updates) == 4 and int(new.epoch) == 1
    assert int(new.buffer.current_index) == cfg.n_envs * cfg.rollout_steps
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.params.policy, state.params.policy))
    assert max(moved) > 0
    # After target_every updates the targets equal the online networks.
    jax.tree.map(lambda t, o: np.testing.assert_array_equal(t, o), new.target_q, new.params.policy)
    assert float(metrics["epsilon"]) == cfg.eps_start and np.isfinite(float(metrics["td_loss"]))
    # The trainer logs the same columns for every method: QMIX has no expert, so alpha is 1 and the DTW terms NaN.
    assert float(metrics["alpha"]) == 1.0 and np.isnan(float(metrics["dtw_m"])) and np.isnan(float(metrics["d_dtw"]))
    # An epoch too short to fill one batch is refused with the numbers that do not fit.
    short = dataclasses.replace(cfg, rollout_steps=8)
    with pytest.raises(ValueError) as err:
        qmix.make_epoch(env, params, q_net, mixer, short)
    assert str(err.value) == ("QMIX samples batches of 32 transitions but an epoch collects only 16; "
                              "raise n_envs x rollout_steps or lower batch_size")
    qmix.make_epoch(env, params, q_net, mixer, dataclasses.replace(cfg, rollout_steps=16))  # exactly one batch fits


def test_epoch_logs_its_last_updates_losses():
    """The logged TD loss and Q_tot are those of the epoch's last update (replayed here on the same buffer and keys)."""
    cfg = qmix.QMixConfig(epochs=2, n_envs=1, rollout_steps=32, batch_size=16, updates_per_epoch=3, target_every=8, mixer_embed=8)
    env, params, state, q_net, mixer = _qmix_setup(cfg)
    new, metrics = jax.jit(qmix.make_epoch(env, params, q_net, mixer, cfg))(state)
    key, _, k_upd = jax.random.split(state.key, 3)
    update = qmix.make_update(q_net, mixer, cfg, env.n_nodes, env.m_out)
    _, aux = jax.jit(lambda s: jax.lax.scan(update, s, jax.random.split(k_upd, 3)))(state.replace(buffer=new.buffer, key=key))
    for name, per_update in aux.items():
        assert abs(float(per_update[2]) - float(per_update[1])) > 1e-6, name  # the updates differ, so the pick shows
        assert float(metrics[name]) == pytest.approx(float(per_update[2]), rel=1e-5), name


def test_epsilon_falls_linearly_over_its_decay_then_stays():
    cfg = qmix.QMixConfig(epochs=10, eps_start=1.0, eps_end=0.1, eps_decay_frac=0.5)  # 5 epochs of decay
    got = [float(qmix.epsilon(jnp.float32(k), cfg)) for k in (0, 2, 5, 9)]
    np.testing.assert_allclose(got, [1.0, 1.0 + 0.4 * (0.1 - 1.0), 0.1, 0.1], rtol=1e-6)


def test_agents_not_yet_departed_hold_no_decision():
    """With staggered departures, an agent enters the mixer only once it has chosen an edge (its held decision)."""
    cfg = qmix.QMixConfig(epochs=2, n_envs=1, rollout_steps=32, batch_size=16, updates_per_epoch=1, mixer_embed=8)
    env, params, state, q_net, mixer = _qmix_setup(cfg)
    params = params.replace(agent_depart=jnp.array([0, 40, 90], jnp.int32))
    new, _ = jax.jit(qmix.make_epoch(env, params, q_net, mixer, cfg))(state)
    x = jax.tree.map(lambda z: np.asarray(z[0, : cfg.rollout_steps]), new.buffer.experience)
    assert not x["active"][0, 1:].any() and x["active"][0, 0]  # at the first step only agent 0 has departed and chosen
    assert (~x["active"]).any(axis=0)[2] and x["active"].any(axis=0).all()  # later starters are inactive, then active
    assert x["mask"][x["active"]].any(-1).all()  # every active agent holds a real observation's decision


def test_rollout_holds_each_agents_decision_until_it_chooses_again():
    cfg = qmix.QMixConfig(epochs=2, n_envs=1, rollout_steps=64, batch_size=32, updates_per_epoch=1, mixer_embed=8)
    env, params, state, q_net, mixer = _qmix_setup(cfg)
    new, _ = jax.jit(qmix.make_epoch(env, params, q_net, mixer, cfg))(state)
    x = jax.tree.map(lambda z: np.asarray(z[0, : cfg.rollout_steps]), new.buffer.experience)  # one env: item t is step t
    active, nxt_active, nxt_acting, done = x["active"], x["next_active"], x["next_acting"], x["done"]
    # A held decision is always a legal edge of the junction where it was taken.
    assert np.take_along_axis(x["mask"], x["action"][..., None], -1)[..., 0][active].all()
    assert not (nxt_active & nxt_acting).any()
    # An agent still driving at t+1 without choosing carries the very same decision into t+1's mixer input.
    held = nxt_active[:-1] & ~done[:-1, None]
    assert held.sum() > 10
    t, i = np.nonzero(held)
    assert active[t + 1, i].all()
    np.testing.assert_array_equal(x["features"][t + 1, i], x["features"][t, i])
    np.testing.assert_array_equal(x["action"][t + 1, i], x["action"][t, i])


def test_td_target_bootstraps_from_the_target_networks():
    """Q_tot comes from the online networks; y = r + gamma Q_tot^- uses the target agent networks (max at s',
    held decisions) and the target mixer, never the online ones."""
    cfg = qmix.QMixConfig(mixer_embed=8, gamma=0.9)
    env, _, state, q_net, mixer = _qmix_setup(cfg)
    g_dim = global_state_dim(env.n_agents, env.n_edges)
    online_q, online_mix = state.params.policy, state.mixer
    target_q = jax.tree.map(lambda z: -0.7 * z, online_q)
    target_mix = mixer.init(jax.random.PRNGKey(5), jnp.zeros((env.n_agents,)), jnp.zeros((g_dim,)))
    batch = _batch(jax.random.PRNGKey(2), 16, env.n_agents, env.m_out, env.n_nodes, g_dim, jnp.array([True, True, False]))
    batch = {**batch, "next_acting": jnp.broadcast_to(jnp.array([True, False, False]), (16, 3)),
             "next_active": jnp.broadcast_to(jnp.array([False, True, False]), (16, 3)), "done": jnp.arange(16) % 5 == 0}
    loss = jax.jit(lambda tq, tm: qmix.qmix_loss(online_q, online_mix, tq, tm, batch, q_net, mixer, cfg, env.n_nodes, env.m_out))
    q = lambda p, f, m: qmix._q_values(q_net, p, observe(f, env.m_out), m)  # noqa: E731
    chosen = lambda qs: jnp.take_along_axis(qs, batch["action"][..., None], -1)[..., 0]  # noqa: E731
    q_tot = mixer.apply(online_mix, jnp.where(batch["active"], chosen(q(online_q, batch["features"], batch["mask"])), 0.0), batch["state"])
    y = batch["reward"] + 0.9 * (1.0 - batch["done"]) * mixer.apply(target_mix, jnp.where(
        batch["next_acting"], q(target_q, batch["next_features"], batch["next_mask"]).max(-1),
        jnp.where(batch["next_active"], chosen(q(target_q, batch["features"], batch["mask"])), 0.0)), batch["next_state"])
    value, aux = loss(target_q, target_mix)
    np.testing.assert_allclose(float(value), float(jnp.mean((q_tot - y) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(float(aux["q_tot"]), float(q_tot.mean()), rtol=1e-5)
    assert abs(float(loss(online_q, online_mix)[0]) - float(value)) > 1e-3  # the targets matter


def test_target_networks_are_copied_every_target_every_updates():
    cfg = qmix.QMixConfig(mixer_embed=8, batch_size=16, target_every=3)
    env, _, state, q_net, mixer = _qmix_setup(cfg)
    g_dim = global_state_dim(env.n_agents, env.n_edges)
    items = _batch(jax.random.PRNGKey(3), 64, env.n_agents, env.m_out, env.n_nodes, g_dim, jnp.array([True, True, True]))
    state = state.replace(buffer=qmix.make_buffer(cfg).add(state.buffer, items))
    update = jax.jit(qmix.make_update(q_net, mixer, cfg, env.n_nodes, env.m_out))
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    last_copy = (state.target_q, state.target_mixer)
    for n in range(1, 8):
        before = state
        state, _ = update(state, jax.random.PRNGKey(100 + n))
        assert int(state.updates) == n
        assert not same(state.params.policy, before.params.policy) and not same(state.mixer, before.mixer)  # both learn
        if n % 3 == 0:
            assert same(state.target_q, state.params.policy) and same(state.target_mixer, state.mixer), n
            last_copy = (state.target_q, state.target_mixer)
        else:
            assert same((state.target_q, state.target_mixer), last_copy), n  # fixed between copies
            assert not same(state.target_q, state.params.policy), n
