"""QMIX (Rashid et al., 2018): per-agent Q networks mixed monotonically into a team Q.

    python -m reled_jax.train --method qmix

* Agent networks: every agent its own Q network Q_i(o_i, .) with IPPO's sizes
  (reled_jax/networks.py: 2 x 128, tanh), stacked on the agent axis; action masks
  set unavailable edges to -inf. They are stored where the policies of the PPO
  methods are (`params.policy`), so evaluation, NumPy export and SUMO validation
  take the greedy action of QMIX exactly as they take a policy's.
* Mixer: Q_tot = w2(s) . elu(W1(s)^T q + b1(s)) + b2(s), the weights produced by
  hypernetworks on the global state s (reled_jax/mappo.py) and made
  non-negative with abs, so dQ_tot/dQ_i >= 0 (monotonicity: each agent's greedy
  action is the team's).
* Decisions in this environment are asynchronous: at an environment step only
  the agents at a junction act, and a chosen edge is a macro-action that lasts
  until the agent's next junction. As in macro-action QMIX (MacDec-POMDP, Xiao
  et al., 2020), every agent on its way holds its last decision: the mixer takes
  Q_i(o_i, a_i) of that decision for every *active* agent (departed, not yet
  arrived) and 0 for the others, and the target takes max_a Q_i^-(o'_i, a) for
  the agents that act at the next step and Q_i^-(o_i, a_i) of the held decision
  for the agents still on their way. Without holding, Q_tot at a step covered
  only the few agents that acted and the bootstrap dropped the value of every
  agent in transit, and QMIX did not learn (docs/training.md). Team reward = sum
  of the agents' Eq. 32 rewards at the step (scaled by `reward_scale`).
* TD target y = r + gamma (1 - done) Q_tot^-(s', max q'), with target networks
  (agent and mixer) copied every `target_every` updates; loss (Q_tot - y)^2.
* Replay: a flashbax item buffer of transitions; epsilon-greedy exploration over
  available edges, epsilon decaying linearly over the first half of training.

One `epoch(state, expert, nodes) -> (state, metrics)` (the same signature as the
PPO methods, the expert arguments unused) collects `n_envs x rollout_steps`
transitions and runs `updates_per_epoch` minibatch updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flashbax as fbx
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from tyro.conf import Suppress
from flax import struct

from reled_jax.mappo import global_state, global_state_dim
from reled_jax.networks import MLP, NEG_INF, AgentParams, observe
from reled_jax.reled import HybridPPOConfig, clipped_adam, rollout_statistics
from sim.env import EnvParams, RouteChoiceEnv


@dataclasses.dataclass(frozen=True)
class QMixConfig:
    # The budget and knobs QMIX shares with the PPO methods (SHARED_WITH_PPO): their defaults are
    # HybridPPOConfig's, and a training run sets them from its PPO group (TrainConfig.qmix_config), so
    # they are no flags of their own.
    epochs: Suppress[int] = HybridPPOConfig.epochs
    n_envs: Suppress[int] = HybridPPOConfig.n_envs
    rollout_steps: Suppress[int] = HybridPPOConfig.rollout_steps  # environment steps per environment per epoch
    gamma: Suppress[float] = HybridPPOConfig.gamma
    lr: Suppress[float] = HybridPPOConfig.lr
    max_grad_norm: Suppress[float] = HybridPPOConfig.max_grad_norm
    reward_scale: Suppress[float] = HybridPPOConfig.reward_scale
    buffer_size: int = 50_000
    batch_size: int = 256
    updates_per_epoch: int = 128
    target_every: int = 32  # updates between target-network copies
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_frac: float = 0.5  # of the epochs
    mixer_embed: int = 32


SHARED_WITH_PPO = ("epochs", "n_envs", "rollout_steps", "gamma", "lr", "max_grad_norm", "reward_scale")


class Mixer(nn.Module):
    """Monotonic mixing network with hypernetworks on the global state."""

    n_agents: int
    embed: int = 32

    @nn.compact
    def __call__(self, q: jax.Array, s: jax.Array) -> jax.Array:
        """q [..., A] chosen agent Q-values, s [..., G] global state -> Q_tot [...]."""
        w1 = jnp.abs(nn.Dense(self.n_agents * self.embed, name="hyper_w1")(s)).reshape(s.shape[:-1] + (self.n_agents, self.embed))
        b1 = nn.Dense(self.embed, name="hyper_b1")(s)
        hidden = nn.elu(jnp.einsum("...a,...ae->...e", q, w1) + b1)
        w2 = jnp.abs(nn.Dense(self.embed, name="hyper_w2")(s))
        b2 = nn.Dense(1, name="hyper_b2_out")(nn.relu(nn.Dense(self.embed, name="hyper_b2")(s)))[..., 0]
        return jnp.sum(hidden * w2, axis=-1) + b2


@struct.dataclass
class QMixState:
    params: AgentParams  # Q networks in .policy (value fields unused), as the PPO methods store policies
    mixer: dict
    target_q: dict
    target_mixer: dict
    opt_state: optax.OptState
    buffer: fbx.flat_buffer.TrajectoryBufferState
    key: jax.Array
    epoch: jax.Array
    updates: jax.Array


def _q_values(q_net: MLP, q_params, x, mask):
    """Masked Q-values of every agent on its own observation: x [..., A, D] -> [..., A, M]."""
    lead = x.ndim - 2
    xa = jnp.moveaxis(x, lead, 0)
    ma = jnp.moveaxis(mask, lead, 0)
    q = jax.vmap(lambda p, xi: q_net.apply(p, xi))(q_params, xa)
    return jnp.moveaxis(jnp.where(ma, q, NEG_INF), 0, lead)


def td_target(reward, done, next_q_max, next_acting, held_q, next_active, next_state, mixer: Mixer, target_mixer_params, gamma: float):
    """y = r + gamma * (1 - done) * Q_tot^-(s', q') with q'_i = max_a Q_i^-(o'_i, a) for agents acting next,
    Q_i^-(o_i, a_i) of the held decision for agents still on their way, 0 for agents not on the road."""
    q_next = jnp.where(next_acting, next_q_max, jnp.where(next_active, held_q, 0.0))
    return reward + gamma * (1.0 - done.astype(jnp.float32)) * mixer.apply(target_mixer_params, q_next, next_state)


def qmix_loss(q_params, mixer_params, target_q, target_mixer, batch: dict, q_net: MLP, mixer: Mixer, cfg: QMixConfig, n_nodes: int, m_out: int):
    x = observe(batch["features"], m_out)
    x_next = observe(batch["next_features"], m_out)
    q = _q_values(q_net, q_params, x, batch["mask"])  # [B, A, M]
    chosen = jnp.take_along_axis(q, batch["action"][..., None], axis=-1)[..., 0]
    chosen = jnp.where(batch["active"], chosen, 0.0)
    q_tot = mixer.apply(mixer_params, chosen, batch["state"])
    next_q = _q_values(q_net, target_q, x_next, batch["next_mask"]).max(-1)
    q_target = _q_values(q_net, target_q, x, batch["mask"])
    held_q = jnp.take_along_axis(q_target, batch["action"][..., None], axis=-1)[..., 0]
    y = td_target(batch["reward"], batch["done"], next_q, batch["next_acting"], held_q, batch["next_active"], batch["next_state"], mixer, target_mixer, cfg.gamma)
    td = q_tot - jax.lax.stop_gradient(y)
    return jnp.mean(td**2), {"td_loss": jnp.mean(td**2), "q_tot": jnp.mean(q_tot)}


def make_buffer(cfg: QMixConfig):
    return fbx.make_item_buffer(max_length=cfg.buffer_size, min_length=cfg.batch_size, sample_batch_size=cfg.batch_size, add_batches=True)


def init_state(key: jax.Array, env: RouteChoiceEnv, cfg: QMixConfig, q_params: dict) -> tuple[QMixState, MLP, Mixer]:
    q_net = MLP(env.m_out, one_hot_nodes=env.n_nodes)
    mixer = Mixer(env.n_agents, cfg.mixer_embed)
    g_dim = global_state_dim(env.n_agents, env.n_edges)
    k_mix, key = jax.random.split(key)
    mixer_params = mixer.init(k_mix, jnp.zeros((env.n_agents,)), jnp.zeros((g_dim,)))
    f_dim = 2 * env.m_out + 2
    item = {
        "features": jnp.zeros((env.n_agents, f_dim)), "mask": jnp.zeros((env.n_agents, env.m_out), bool),
        "action": jnp.zeros((env.n_agents,), jnp.int32), "active": jnp.zeros((env.n_agents,), bool),
        "reward": jnp.zeros(()), "done": jnp.zeros((), bool), "state": jnp.zeros((g_dim,)),
        "next_features": jnp.zeros((env.n_agents, f_dim)), "next_mask": jnp.zeros((env.n_agents, env.m_out), bool),
        "next_acting": jnp.zeros((env.n_agents,), bool), "next_active": jnp.zeros((env.n_agents,), bool), "next_state": jnp.zeros((g_dim,)),
    }
    tx = make_optimizer(cfg)
    state = QMixState(
        params=AgentParams(policy=q_params, value_agent={}, value_expert={}), mixer=mixer_params, target_q=q_params,
        target_mixer=mixer_params, opt_state=tx.init((q_params, mixer_params)), buffer=make_buffer(cfg).init(item),
        key=key, epoch=jnp.int32(0), updates=jnp.int32(0),
    )
    return state, q_net, mixer


def make_optimizer(cfg: QMixConfig) -> optax.GradientTransformation:
    return clipped_adam(cfg.lr, cfg.max_grad_norm)


def epsilon(epoch, cfg: QMixConfig):
    frac = jnp.clip(epoch / jnp.maximum(cfg.eps_decay_frac * cfg.epochs, 1.0), 0.0, 1.0)
    return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)


def make_update(q_net: MLP, mixer: Mixer, cfg: QMixConfig, n_nodes: int, m_out: int) -> Callable:
    """`update(state, key) -> (state, aux)`: one minibatch from the replay buffer, one Adam step on the TD loss.

    The agent networks and the mixer step together; the target networks become copies of
    both after every `target_every`-th update (hard copies, as in QMIX) and stay fixed between.
    """
    tx = make_optimizer(cfg)
    buffer = make_buffer(cfg)

    def update(state: QMixState, key: jax.Array) -> tuple[QMixState, dict]:
        batch = buffer.sample(state.buffer, key).experience
        grads, aux = jax.grad(qmix_loss, argnums=(0, 1), has_aux=True)(
            state.params.policy, state.mixer, state.target_q, state.target_mixer, batch, q_net, mixer, cfg, n_nodes, m_out
        )
        updates, opt_state = tx.update(grads, state.opt_state, (state.params.policy, state.mixer))
        q_params, mixer_params = optax.apply_updates((state.params.policy, state.mixer), updates)
        n = state.updates + 1
        copy = (n % cfg.target_every) == 0
        target_q = jax.tree.map(lambda t, o: jnp.where(copy, o, t), state.target_q, q_params)
        target_mixer = jax.tree.map(lambda t, o: jnp.where(copy, o, t), state.target_mixer, mixer_params)
        state = state.replace(params=state.params.replace(policy=q_params), mixer=mixer_params, target_q=target_q,
                              target_mixer=target_mixer, opt_state=opt_state, updates=n)
        return state, aux

    return update


def make_epoch(env: RouteChoiceEnv, env_params: EnvParams, q_net: MLP, mixer: Mixer, cfg: QMixConfig) -> Callable:
    if cfg.n_envs * cfg.rollout_steps < cfg.batch_size:
        raise ValueError(f"QMIX samples batches of {cfg.batch_size} transitions but an epoch collects only "
                         f"{cfg.n_envs * cfg.rollout_steps}; raise n_envs x rollout_steps or lower batch_size")
    buffer = make_buffer(cfg)
    n_agents, n_nodes, m_out = env.n_agents, env.n_nodes, env.m_out
    g_of = jax.vmap(global_state, in_axes=(0, None, None))

    def rollout(state: QMixState, key):
        k_reset, k_run = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, cfg.n_envs), env_params)
        eps = epsilon(state.epoch.astype(jnp.float32), cfg)

        def one(carry, step_key):
            obs, env_state, held = carry
            k_greedy, k_rand, k_pick, k_env = jax.random.split(step_key, 4)
            q = _q_values(q_net, state.params.policy, observe(obs.features, m_out), obs.action_mask)  # [E, A, M]
            greedy = jnp.argmax(q, -1)
            random = jax.random.categorical(k_rand, jnp.where(obs.action_mask, 0.0, NEG_INF), axis=-1)
            action = jnp.where(jax.random.uniform(k_pick, greedy.shape) < eps, random, greedy)
            g = g_of(env_state, env_params, n_agents)
            obs2, env_state2, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, cfg.n_envs), env_state, action, env_params
            )
            # Agents that decided now replace their held decision; every agent on the road keeps one.
            dec = info["decided"]
            pick = lambda new, old: jnp.where(dec.reshape(dec.shape + (1,) * (new.ndim - dec.ndim)), new, old)  # noqa: E731
            held = {"features": pick(obs.features, held["features"]), "mask": pick(obs.action_mask, held["mask"]),
                    "action": pick(action.astype(jnp.int32), held["action"]), "active": (held["active"] | dec) & ~env_state.agent_arrived}
            still_on_road = held["active"] & ~env_state2.agent_arrived & ~info["episode_done"][:, None]
            # After an episode ends, obs2/env_state2 are the reset; the target is cut by `done` anyway.
            item = {
                **held, "reward": reward.sum(-1) * cfg.reward_scale, "done": info["episode_done"], "state": g,
                "next_features": obs2.features, "next_mask": obs2.action_mask, "next_acting": obs2.awaiting,
                "next_active": still_on_road & ~obs2.awaiting, "next_state": g_of(env_state2, env_params, n_agents),
            }
            held = {**held, "active": still_on_road}
            stats = dict(reward=reward, ended=info["episode_done"], travel_time=info["travel_time"], arrived=info["arrived"], decided=info["decided"])
            return (obs2, env_state2, held), (item, stats)

        held = {"features": jnp.zeros_like(obs.features), "mask": jnp.zeros_like(obs.action_mask),
                "action": jnp.zeros(obs.awaiting.shape, jnp.int32), "active": jnp.zeros(obs.awaiting.shape, bool)}
        _, (items, stats) = jax.lax.scan(one, (obs, env_state, held), jax.random.split(k_run, cfg.rollout_steps))
        return items, stats, eps

    update = make_update(q_net, mixer, cfg, n_nodes, m_out)

    def epoch(state: QMixState, expert=None, expert_nodes=None) -> tuple[QMixState, dict]:
        del expert, expert_nodes
        key, k_roll, k_upd = jax.random.split(state.key, 3)
        items, stats, eps = rollout(state, k_roll)
        flat = jax.tree.map(lambda z: z.reshape((-1,) + z.shape[2:]), items)  # [T*E, ...]
        state = state.replace(buffer=buffer.add(state.buffer, flat), key=key)
        state, aux = jax.lax.scan(update, state, jax.random.split(k_upd, cfg.updates_per_epoch))
        metrics = {
            **rollout_statistics(stats["reward"], stats["ended"], stats["travel_time"], stats["arrived"], stats["decided"]),
            "alpha": jnp.float32(1.0),
            "dtw_m": jnp.float32(jnp.nan),
            "d_dtw": jnp.float32(jnp.nan),
            "epsilon": eps,
            **{k: v[-1] for k, v in aux.items()},
        }
        return state.replace(epoch=state.epoch + 1), metrics

    return epoch
