"""RELED's Hybrid Expert-Agent Policy Optimization (paper III-E, Algorithm 1 lines 4 and 18-24), IPPO and MAPPO.

One jitted `epoch` does: reset the environments, roll out the current joint
policy (tau^a), compute bootstrapped returns and advantages for agent and
expert samples (Eqs. 26-28), the per-agent DTW weight alpha (Eq. 30), and a
clipped-PPO update of every agent's policy and two value functions on the
hybrid objective (Eqs. 27, 29-31). All agents are one `vmap` over stacked
parameters. The expert samples tau^e are an input: the SED module
(reled_jax.sed) refreshes them every q epochs on the host.

Signs. The paper writes objectives to be maximised: L^x (Eq. 29) is the
clipped surrogate, L_mix = alpha*L^a + (1-alpha)*L^e (Eq. 30), and Eq. 31
adds +beta*H. We minimise loss = -(L_mix + beta*H) + c_v*(L_value(V^a) +
L_value(V^e)): the surrogate terms push up the probability of actions with
positive advantage (agent's own, and expert's under V^e), the entropy term
pushes towards uniform (exploration), and the value terms pull V^a and V^e to
their returns (Eq. 27). The agent-loss weight w -> 1 weights the agent's own
experience, w -> 0 imitation of the expert. Which way Eq. 30's alpha sets w is
`HybridPPOConfig.alpha_schedule` (`agent_weight`): the paper's equation and its text
disagree; the default ("text") follows the text, imitation first.

Expert advantages in paper form are not centred (the paper never normalises
A^e) but divided by the agent minibatch's advantage spread (`agent_loss`).

Expert advantages. Eq. 28 measures A^e against the expert's own value V^e.
Once V^e fits the demonstrations, their advantages are noise around zero,
and PPO-normalised noise moves a policy away from the expert as often as
towards it (benchmarks/expert_agreement.py measures this). `reled-va` is a
variant outside the paper: A^e = R^e - V^a(o^e), uncentred, i.e. how much
better the expert did than the agent expects to do from the same state, so
agents imitate while the expert is better and stop as they catch up.
`reled-va-norefine`, `reled-va-alpha0.2`, ... are Table IV's ablations with
that expert advantage.

IPPO is alpha = 1 without expert samples. MAPPO is IPPO with a centralised
critic: V^a of agent i sees the global state beside its own observation
(reled_jax/mappo.py); samples then carry the critic input `cx`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from tyro.conf import Suppress
from flax import struct

from reled_jax.dtw import dtw_batch
from reled_jax.mappo import critic_input, global_state
from reled_jax.methods import METHODS, Method, method
from reled_jax.networks import MLP, AgentParams, masked_logits, observe
from sim.env import EnvParams, RouteChoiceEnv
from sim.policies import random_policy

ALPHA_SCHEDULES = ("text", "eq30", "expert-weight")
SEED_AXIS = "seeds"  # the vmap axis of `batched_epoch`


@dataclasses.dataclass(frozen=True)
class HybridPPOConfig:
    """RELED's Hybrid expert-agent Policy Optimization (the paper's "HPO", III-E) on PPO, and IPPO/MAPPO as its
    expert-free cases: what one seed's jitted epoch needs (`make_epoch`)."""

    method: Suppress[str] = "reled"  # a training run sets it from its own method (TrainConfig.method): no flag here
    epochs: int = 40  # K
    n_envs: int = 8
    rollout_steps: int = 1024  # environment steps per environment per epoch (each consumes 0..A decisions; long enough for whole episodes)
    gamma: float = 0.99
    gae_lambda: float = 1.0  # 1.0 = the paper's bootstrapped return (Eq. 26) and advantage (Eq. 28)
    clip_eps: float = 0.2
    entropy_coef: float = 0.01  # beta (Eq. 31)
    value_coef: float = 0.5
    lr: float = 3e-4
    max_grad_norm: float = 0.5  # per agent
    update_epochs: int = 8
    n_minibatches: int = 8
    reward_scale: float = 0.01  # rewards are O(100); values and returns are learned on this scale
    # Eq. 30's D_DTW: raw DTW sums metres over ~30 matched junctions (several km), which makes
    # alpha ~ 0 for the whole run (pure imitation). We use D = DTW / max(len) / dtw_scale_m: the
    # mean distance between matched junctions in units of a typical block (200 m), so identical
    # routes give 0 and routes a block apart on average give alpha = exp(-k/K) (e^-1 at the end).
    dtw_scale_m: float = 200.0
    max_trajectory: int = 64  # junctions kept per trajectory for DTW
    # Paper form (False): A^e is not centred (the paper never normalises it) but divided by the agent
    # minibatch's advantage spread, so both surrogates are on one scale. True: A^e standardised on its own
    # per minibatch like the agent's (the behaviour before issue 17, kept as a flag).
    center_expert_advantages: bool = False
    # Which reading of Eq. 30 sets the weights of Eq. 31 (issue 17). The paper contradicts itself:
    #   "eq30": literal, alpha = exp(-(k/K) D) on the agent loss, k = 0, 1, ...: no imitation at first,
    #           more as k grows, i.e. most imitation once A^e is noise;
    #   "text": imitation first, alpha rising as DTW falls, as the text around Fig. 2, III-E's end and
    #           V-B2/V-D describe: alpha = exp(-(1 - k/K) D) on the agent loss, k = 1..K;
    #   "expert-weight": Eq. 30's alpha as the expert loss's weight, as Table IV names it
    #           ("alpha = 0.5 an overly large expert weight"): L = (1 - alpha) L^a + alpha L^e, k = 1..K.
    # Table IV's fixed alpha (reled-alpha0.2, -alpha0.5) is the expert's weight under "text" and
    # "expert-weight" (what Table IV means), the agent's under "eq30".
    alpha_schedule: str = "text"
    # Baseline of the expert advantage A^e = R^e - V(o^e). "expert": V^e, as Eq. 28 writes it. "agent": V^a,
    # a variant outside the paper: demonstrations then score how much better the expert did than the agent
    # expects to do from the same observation (uncentred: imitation while the agent is worse than the
    # expert, fading as it catches up). V^e is trained on its returns either way (Eq. 27). Methods
    # "reled-va*" are RELED's variants with both switches set (agent baseline, uncentred), whatever these fields say.
    expert_baseline: str = "expert"
    # Only decision rows carry samples (an env step is one agent's decision among A, or none), so the
    # update runs on each agent's decision rows, compacted to the front, in `decision_share` of its
    # rows (rounded to whole minibatches). An epoch in which some agent of some seed has more
    # decisions than that runs the update on all rows instead (a second compiled branch of a
    # `lax.switch`, chosen outside the seeds' vmap): no decision is ever dropped. 1.0: all rows.
    decision_share: float = 0.0  # 0: not given (the trainer measures it; used directly, all rows)
    # Gradient accumulation (> 0): each PPO minibatch is an equal share of every agent's decision rows,
    # in random order, and its gradient is summed over blocks of `update_block` rows in a `while_loop`
    # that runs as many blocks as the busiest agent's minibatch needs. The update then costs what the
    # epoch's decisions cost, with one compiled update and no capacity switch (decision_share is unused).
    # The losses and gradients are the whole minibatch's (`agent_loss`'s `stats`); what differs from 0
    # is only which rows share a minibatch: real rows only, not a random cut of the padded capacity.
    # 0: minibatches cut from the rows compacted to the capacity (decision_share), as before issue 16.
    update_block: int = 0
    # Environments in lockstep (RouteChoiceEnv.step_batch: no tick wasted waiting for the slowest
    # environment's decision; some env steps then hold no decision) instead of vmap(step).
    lockstep: bool = False
    # Environments carry over from epoch to epoch (PureJaxRL): rollouts may be shorter than an
    # episode, so many environments can share one epoch's interaction budget. False: every
    # epoch starts from fresh resets (episodes longer than the rollout are cut at its end).
    carry_envs: bool = False
    # Carried environments start `stagger_steps` env steps apart (0: all from one reset). Lockstep
    # environments reset together and tick together; while some agent of every episode runs to
    # T_max, every episode lasts exactly T_max and they stay in phase, so an epoch's batch is 64
    # copies of one moment of the episode (the departures once every ~37 epochs, the stragglers
    # in between). Environment e is reset at step e * stagger_steps / E of a random-policy warm-up,
    # so the phases spread over the warm-up. Off in the paper preset: on one seed it changed
    # RELED's test return within the seed-to-seed spread (benchmarks/results/paper_preset.json).
    stagger_steps: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {tuple(METHODS)}")
        if self.stagger_steps < 0:
            raise ValueError(f"stagger_steps must be >= 0 (0: environments start together), got {self.stagger_steps}")
        if self.update_block < 0:
            raise ValueError(f"update_block must be >= 0 (0: no gradient accumulation), got {self.update_block}")
        if not 0.0 <= self.decision_share <= 1.0:
            raise ValueError(f"decision_share must be in [0, 1] (0: all rows), got {self.decision_share}")
        if self.alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(f"unknown alpha_schedule {self.alpha_schedule!r}; choose one of {ALPHA_SCHEDULES}")
        if self.expert_baseline not in ("expert", "agent"):
            raise ValueError(f"unknown expert_baseline {self.expert_baseline!r}; choose 'expert' (Eq. 28) or 'agent'")

    @property
    def spec(self) -> Method:
        """What the method is (reled_jax/methods.py): expert or not, fixed alpha, baseline of A^e, critic."""
        return method(self.method)

    @property
    def uses_expert(self) -> bool:
        return self.spec.uses_expert

    @property
    def expert_advantage_baseline(self) -> str:
        return "agent" if self.spec.agent_baseline else self.expert_baseline

    @property
    def expert_advantage_norm(self) -> str:
        """How `agent_loss` scales A^e: "given" (reled-va), "center" (flag), "agent-spread" (paper form)."""
        if self.spec.agent_baseline:
            return "given"
        return "center" if self.center_expert_advantages else "agent-spread"

    @property
    def centralised_critic(self) -> bool:
        return self.spec.centralised_critic

    @property
    def fixed_alpha(self) -> float | None:
        return 1.0 if not self.uses_expert else self.spec.fixed_alpha


@struct.dataclass
class Samples:
    """Per-agent samples, agent axis first: [A, N, ...]. `valid` marks real decisions."""

    x: jax.Array  # [A, N, D] encoded observations
    mask: jax.Array  # [A, N, M]
    action: jax.Array  # [A, N]
    reward: jax.Array  # [A, N] reward realised during the step (scaled)
    decided: jax.Array  # [A, N] the agent decided at this step
    done: jax.Array  # [A, N] the agent's episode ended at this step
    last_x: jax.Array  # [A, S, D] observation after the last step of each of S segments (bootstrap)
    cx: jax.Array | None = None  # [A, N, C] critic input when it is not x (MAPPO: x and the global state)
    last_cx: jax.Array | None = None  # [A, S, C]


@struct.dataclass
class EnvCarry:
    """Environments between epochs (HybridPPOConfig.carry_envs), [E, ...]: where every episode in progress stands."""

    obs: object
    state: object
    path_nodes: jax.Array  # [E, A, L] junctions the agent decided at so far in its episode in progress
    path_len: jax.Array  # [E, A]
    reward_sum: jax.Array  # [E, A] its reward so far in that episode (unscaled)


@struct.dataclass
class TrainState:
    params: AgentParams
    opt_state: optax.OptState
    key: jax.Array
    epoch: jax.Array
    envs: EnvCarry | None = None  # only with carry_envs


def clipped_adam(lr: float, max_grad_norm: float) -> optax.GradientTransformation:
    """Adam after global-norm clipping: every method's optimiser (QMIX's too), per agent where vmapped."""
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr, eps=1e-5))


def make_optimizer(cfg: HybridPPOConfig) -> optax.GradientTransformation:
    """Adam after global-norm clipping. Without an expert (IPPO, MAPPO) V^e never gets a gradient, so it
    keeps no Adam state and takes no step: the same updates (its gradients are zero, adding nothing to
    the norm) at about a third less optimiser work."""
    adam = clipped_adam(cfg.lr, cfg.max_grad_norm)
    if cfg.uses_expert:
        return adam
    labels = AgentParams(policy="train", value_agent="train", value_expert="frozen")
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


# ----------------------------------------------------------------------------- returns (Eqs. 26, 28)
def decision_returns(reward, decided, done, values, last_value, gamma: float, lam: float):
    """Returns and advantages of one agent's decisions along one time axis [T].

    Rewards realised at a step belong to the agent's latest decision at or
    before it (the environment consumes actions before it ticks). Returns are
    discounted per decision: R_t = r_t + gamma * R_{t'} with t' the agent's
    next decision, cut at `done` (arrival or episode end) and bootstrapped
    with `last_value` at the end of the window (Eq. 26); the advantage is
    R_t - V(o_t) (Eq. 28). With lam < 1 it is GAE(lambda) over decisions.
    Rows without a decision get return 0 and advantage 0.
    """

    def back(carry, inp):
        next_ret, next_value, acc = carry
        r, d, dn, v = inp
        next_ret = jnp.where(dn, 0.0, next_ret)
        next_value = jnp.where(dn, 0.0, next_value)
        acc = jnp.where(dn, 0.0, acc) + r
        # GAE form: delta = acc + gamma*V_next - V; return = V + adv, adv = delta + gamma*lam*adv_next
        adv_next = next_ret - next_value
        adv = acc + gamma * next_value - v + gamma * lam * adv_next
        ret = adv + v
        out_ret = jnp.where(d, ret, 0.0)
        out_adv = jnp.where(d, adv, 0.0)
        carry = (jnp.where(d, ret, next_ret), jnp.where(d, v, next_value), jnp.where(d, 0.0, acc))
        return carry, (out_ret, out_adv)

    init = (last_value, last_value, jnp.zeros_like(last_value))
    _, (ret, adv) = jax.lax.scan(back, init, (reward, decided, done, values), reverse=True)
    return ret, adv


# ----------------------------------------------------------------------------- losses (Eqs. 27, 29-31)
def masked_mean(x, mask, count=None):
    """Mean of x over the rows `mask` marks. `count`: the denominator when the rows are one block of a
    larger minibatch of `count` rows (gradient accumulation: the blocks' sums add up to its mean)."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask) if count is None else count, 1.0)


def clipped_surrogate(logp, old_logp, adv, valid, clip_eps, count=None):
    """L^x (Eq. 29): E[min(w A, clip(w, 1-eps, 1+eps) A)], to be maximised; also the clip fraction."""
    ratio = jnp.exp(logp - old_logp)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    return masked_mean(surrogate, valid, count), masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), valid, count)


def entropy(logits, mask):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.where(mask, jnp.exp(logp) * logp, 0.0), axis=-1)


def dtw_alpha(dtw_km: jax.Array, epoch: jax.Array, total_epochs: int) -> jax.Array:
    """alpha = exp(-(k/K) * D_DTW) (Eq. 30)."""
    return jnp.exp(-(epoch / total_epochs) * dtw_km)


def agent_weight(d_dtw: jax.Array, epoch: jax.Array, cfg: HybridPPOConfig) -> tuple[jax.Array, jax.Array]:
    """(alpha, w): Eq. 30's alpha under `cfg.alpha_schedule` and the weight w of the agent's own loss in
    Eq. 31, L = w L^a + (1 - w) L^e. `epoch` counts finished epochs (0 in the first); see HybridPPOConfig.

        eq30           alpha = exp(-(k/K) D),      k = epoch    w = alpha
        text           alpha = exp(-(1 - k/K) D),  k = epoch+1  w = alpha
        expert-weight  alpha = exp(-(k/K) D),      k = epoch+1  w = 1 - alpha
    A fixed alpha (Table IV) is the agent's weight under eq30 and the expert's under the other two.
    Expert-free methods have w = 1 (and alpha 1, or 0 as an expert weight)."""
    k = jnp.asarray(epoch, jnp.float32)
    on_expert = cfg.alpha_schedule == "expert-weight" or (cfg.alpha_schedule == "text" and cfg.fixed_alpha is not None)
    if not cfg.uses_expert:
        alpha = jnp.full_like(d_dtw, 0.0 if cfg.alpha_schedule == "expert-weight" else 1.0)
        return alpha, jnp.ones_like(d_dtw)
    if cfg.fixed_alpha is not None:
        alpha = jnp.full_like(d_dtw, cfg.fixed_alpha)
    elif cfg.alpha_schedule == "eq30":
        alpha = dtw_alpha(d_dtw, k, cfg.epochs)
    elif cfg.alpha_schedule == "text":
        alpha = jnp.exp(-(1.0 - (k + 1.0) / cfg.epochs) * d_dtw)
    else:
        alpha = dtw_alpha(d_dtw, k + 1.0, cfg.epochs)
    return alpha, (1.0 - alpha if on_expert else alpha)


def hybrid_alpha(agent_points: tuple, expert_points: tuple, epoch: jax.Array, cfg: HybridPPOConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Eq. 30's weight of every agent from the DTW between its own and its expert trajectories.

    agent_points, expert_points: ([E, A, L, 2] junction coordinates in metres, [E, A] lengths), as
    `trajectory_points` returns them (one first episode per environment). Agent i is compared with
    expert row i of the same environment index, over the environments both have. D_DTW is the DTW
    in metres divided by the longer trajectory's length and by `dtw_scale_m` (HybridPPOConfig), averaged
    over the pairs with a finite DTW (an empty trajectory against a non-empty one has none).
    Returns (alpha, agent-loss weight w, mean DTW in metres, D_DTW), each [A] (`agent_weight`).
    """
    a_xy, a_len = agent_points
    e_xy, e_len = expert_points
    n_agents = a_xy.shape[1]
    n_pairs = min(a_xy.shape[0], e_xy.shape[0])
    flat = lambda z: z[:n_pairs].reshape((-1,) + z.shape[2:])  # noqa: E731
    dist = dtw_batch(flat(a_xy), flat(e_xy), flat(a_len), flat(e_len)).reshape(n_pairs, n_agents)
    norm = dist / jnp.maximum(jnp.maximum(a_len[:n_pairs], e_len[:n_pairs]), 1) / cfg.dtw_scale_m
    ok = jnp.isfinite(dist)
    count = jnp.maximum(ok.sum(0), 1)
    dtw_m = jnp.sum(jnp.where(ok, dist, 0.0), 0) / count
    d_dtw = jnp.sum(jnp.where(ok, norm, 0.0), 0) / count
    alpha, weight = agent_weight(d_dtw, epoch, cfg)
    return alpha, weight, dtw_m, d_dtw


def _moments(adv, valid):
    mean = masked_mean(adv, valid)
    return mean, jnp.sqrt(masked_mean((adv - mean) ** 2, valid) + 1e-8)


def minibatch_stats(adv_a, valid_a, adv_e, valid_e) -> dict:
    """What `agent_loss` normalises by, taken over a whole minibatch: its numbers of real agent and expert
    rows and the moments of their advantages. One agent's [rows] arrays."""
    (mean_a, std_a), (mean_e, std_e) = _moments(adv_a, valid_a), _moments(adv_e, valid_e)
    return dict(n_a=valid_a.sum().astype(jnp.float32), n_e=valid_e.sum().astype(jnp.float32), mean_a=mean_a, std_a=std_a, mean_e=mean_e, std_e=std_e)


def agent_loss(params_i, policy: MLP, value: MLP, batch_a: dict, batch_e: dict, alpha, cfg: HybridPPOConfig, stats: dict | None = None):
    """Loss of one agent on one minibatch; returns (loss, aux). batch_* hold x, mask, action, old_logp, adv, ret, valid.

    `alpha`: the weight of the agent's own surrogate in Eq. 31 (`agent_weight`'s w), forced to 1 when the
    minibatch holds no expert row. Agent advantages are centred and scaled per minibatch as usual in
    PPO. Expert advantages (`HybridPPOConfig.expert_advantage_norm`): "agent-spread" (paper form) divides them
    by the agent minibatch's spread, uncentred; "center" standardises them on their own; "given" uses
    them as they come (reled-va: already divided by their whole batch's spread in `expert_advantages`).

    `stats` (`minibatch_stats`): when the batches are one block of a larger minibatch, that minibatch's
    counts and moments. Every term is then the block's share of the minibatch's mean, so the losses and
    gradients of its blocks add up to the whole minibatch's (HybridPPOConfig.update_block). None: this batch's own.
    """
    if stats is None:
        stats = minibatch_stats(batch_a["adv"], batch_a["valid"], batch_e["adv"], batch_e["valid"])
    n_a, n_e = stats["n_a"], stats["n_e"]

    def policy_terms(batch, adv, count):
        logits = masked_logits(policy, params_i.policy, batch["x"], batch["mask"])
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["action"][..., None], axis=-1)[..., 0]
        surrogate, clipfrac = clipped_surrogate(logp, batch["old_logp"], adv, batch["valid"], cfg.clip_eps, count)
        return surrogate, clipfrac, logits

    adv_e = batch_e["adv"]
    if cfg.expert_advantage_norm == "center":
        adv_e = (adv_e - stats["mean_e"]) / stats["std_e"]
    elif cfg.expert_advantage_norm == "agent-spread":
        adv_e = adv_e / stats["std_a"]
    l_agent, clip_a, logits_a = policy_terms(batch_a, (batch_a["adv"] - stats["mean_a"]) / stats["std_a"], n_a)
    l_expert, clip_e, _ = policy_terms(batch_e, adv_e, n_e)
    alpha = jnp.where(n_e > 0, alpha, 1.0)
    ent = masked_mean(entropy(logits_a, batch_a["mask"]), batch_a["valid"], n_a)
    objective = alpha * l_agent + (1.0 - alpha) * l_expert + cfg.entropy_coef * ent  # Eq. 31, maximised
    v_a = value.apply(params_i.value_agent, batch_a.get("cx", batch_a["x"]))[..., 0]
    v_e = value.apply(params_i.value_expert, batch_e["x"])[..., 0]
    value_loss = masked_mean((v_a - batch_a["ret"]) ** 2, batch_a["valid"], n_a) + masked_mean((v_e - batch_e["ret"]) ** 2, batch_e["valid"], n_e)
    loss = -objective + cfg.value_coef * value_loss
    return loss, {"l_agent": l_agent, "l_expert": l_expert, "entropy": ent, "value_loss": value_loss, "clipfrac": clip_a,
                  "clipfrac_expert": clip_e, "expert_weight": 1.0 - alpha, "expert_share": expert_share(l_agent, l_expert, alpha)}


LOSS_TERMS = ("l_agent", "l_expert", "entropy", "value_loss", "clipfrac", "clipfrac_expert", "expert_weight", "expert_share")  # agent_loss's aux


def expert_share(l_agent, l_expert, alpha):
    """The expert term's share of the policy objective's magnitude, |(1-w) L^e| / (|w L^a| + |(1-w) L^e|)."""
    return jnp.abs((1.0 - alpha) * l_expert) / jnp.maximum(jnp.abs(alpha * l_agent) + jnp.abs((1.0 - alpha) * l_expert), 1e-8)


# ----------------------------------------------------------------------------- rollout
def policy_apply(policy: MLP, policy_params, x, mask):
    """Logits of every agent on its own observation: x [A, ..., D] with parameters [A, ...]."""
    return jax.vmap(lambda p, xi, mi: masked_logits(policy, p, xi, mi))(policy_params, x, mask)


def make_epoch(env: RouteChoiceEnv, env_params: EnvParams, policy: MLP, value: MLP, cfg: HybridPPOConfig) -> Callable:
    """`epoch(state, expert, expert_dtw_nodes) -> (state, metrics)` for one seed; jit/vmap it."""
    tx = make_optimizer(cfg)
    n_agents, m_out = env.n_agents, env.m_out
    enc = lambda f: observe(f, m_out)  # noqa: E731
    node_m = env_params.node_xy

    def batch_step(keys, state, action, axis_name):
        if cfg.lockstep:
            return env.step_batch(keys, state, action, env_params, axis_name=axis_name)
        return jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, action, env_params)

    def initial_envs(key) -> EnvCarry:
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, cfg.n_envs), env_params)
        zeros = jnp.zeros((cfg.n_envs, n_agents), jnp.int32)
        return EnvCarry(obs, state, jnp.zeros((cfg.n_envs, n_agents, cfg.max_trajectory), jnp.int32), zeros, zeros.astype(jnp.float32))

    def carried_envs(key, axis_name: str | None = None) -> EnvCarry:
        """The environments a carry_envs run starts from: `initial_envs`, then `cfg.stagger_steps` steps of
        the random policy in which environment e is reset once more, at step e * stagger_steps // E (its
        episode in progress ends there, for the bookkeeping). The episodes in progress (paths, reward
        sums) carry over, so the first episode of each environment began under the random policy."""
        if not cfg.stagger_steps:
            return initial_envs(key)
        k_init, k_run = jax.random.split(key)
        start = initial_envs(k_init)
        offset = (jnp.arange(cfg.n_envs) * cfg.stagger_steps) // cfg.n_envs

        def one(carry, inp):
            obs, state = carry
            t, step_key = inp
            k_act, k_env, k_reset = jax.random.split(step_key, 3)
            action = jax.vmap(random_policy, in_axes=(0, 0, None))(jax.random.split(k_act, cfg.n_envs), obs, env_params)
            obs2, state2, reward, done, info = batch_step(jax.random.split(k_env, cfg.n_envs), state, action, axis_name)
            forced = offset == t  # [E]: this environment's episode is cut here and restarts
            obs_re, state_re = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, cfg.n_envs), env_params)
            pick = lambda a, b: jnp.where(forced.reshape(forced.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
            obs2, state2 = jax.tree.map(pick, obs_re, obs2), jax.tree.map(pick, state_re, state2)
            ended = info["episode_done"] | forced
            rec = dict(node=state.veh_node[:, :n_agents], decided=info["decided"], done=done | forced[:, None], reward=reward, ended=ended)
            return (obs2, state2), rec

        steps = jnp.arange(cfg.stagger_steps)
        (obs, state), traj = jax.lax.scan(one, (start.obs, start.state), (steps, jax.random.split(k_run, cfg.stagger_steps)))
        path = episode_in_progress(traj["node"], traj["decided"], traj["done"], (start.path_nodes, start.path_len), cfg.max_trajectory)
        reward_sum = _episode_sums(traj["reward"], traj["ended"], start.reward_sum)[-1]
        return EnvCarry(obs, state, *path, jnp.where(traj["ended"][-1][:, None], 0.0, reward_sum))

    def rollout(params: AgentParams, key, start: EnvCarry, axis_name: str | None = None):
        """tau^a of one seed: `cfg.rollout_steps` env steps of every environment. `axis_name`: the
        seeds' vmap axis, when there is one (`RouteChoiceEnv.step_batch`)."""
        obs, state = start.obs, start.state
        _, k_run = jax.random.split(key)

        def one(carry, step_key):
            obs, state = carry
            k_act, k_env = jax.random.split(step_key)
            x = enc(obs.features)  # [E, A, D]
            logits = policy_apply(policy, params.policy, jnp.swapaxes(x, 0, 1), jnp.swapaxes(obs.action_mask, 0, 1))  # [A, E, M]
            logits = jnp.swapaxes(logits, 0, 1)
            action = jax.random.categorical(k_act, logits, axis=-1)
            # Old log-probabilities and values are computed after the rollout, in one batch per agent (epoch).
            cx = critic_input(x, jax.vmap(global_state, in_axes=(0, None, None))(state, env_params, n_agents)) if cfg.centralised_critic else None
            obs2, state2, reward, done, info = batch_step(jax.random.split(k_env, cfg.n_envs), state, action, axis_name)
            rec = dict(
                x=x, cx=cx, mask=obs.action_mask, action=action, reward=reward, decided=info["decided"], done=done,
                node=state.veh_node[:, :n_agents], episode_done=info["episode_done"], travel_time=info["travel_time"], arrived=info["arrived"],
            )
            return (obs2, state2), rec

        (obs, state), traj = jax.lax.scan(one, (obs, state), jax.random.split(k_run, cfg.rollout_steps))
        return traj, obs, state

    def to_samples(traj, final_obs, final_state) -> Samples:
        """[T, E, A, ...] -> per-agent [A, E*T, ...] rows ordered by (env, time)."""
        rows = lambda z: agent_rows(jnp.swapaxes(z, 0, 1))  # noqa: E731
        last_x = enc(final_obs.features)  # [E, A, D]
        if cfg.centralised_critic:
            last_cx = critic_input(last_x, jax.vmap(global_state, in_axes=(0, None, None))(final_state, env_params, n_agents))
            critic = dict(cx=rows(traj["cx"]), last_cx=jnp.swapaxes(last_cx, 0, 1))
        else:
            critic = {}
        return Samples(
            x=rows(traj["x"]), mask=rows(traj["mask"]), action=rows(traj["action"]),
            reward=rows(traj["reward"]) * cfg.reward_scale, decided=rows(traj["decided"]), done=rows(traj["done"]),
            last_x=jnp.swapaxes(last_x, 0, 1), **critic,
        )

    def advantages(samples: Samples, value_params, n_segments: int, rows: jax.Array, blocks: tuple | None = None):
        """Eqs. 26 and 28 for every agent and segment, with that agent's value function, on the rows
        `rows` [A, C] (`decision_rows`): values are computed there only (the other rows' values are
        never read: returns and advantages exist at decisions) and the results are taken there.
        `blocks` = (count [A], n_blocks): values in n_blocks blocks of `update_block` rows, over each agent's
        first `count` rows only (`blockwise`)."""
        x, last_x = (samples.x, samples.last_x) if samples.cx is None else (samples.cx, samples.last_cx)
        n = x.shape[1]
        values_at = lambda r: jax.vmap(lambda p, x: value.apply(p, x)[..., 0])(value_params, take_rows(x, r))  # noqa: E731
        v_rows = values_at(rows) if blocks is None else blockwise(values_at, rows, *blocks, cfg.update_block)  # [A, C]
        v = jax.vmap(lambda r, vr: jnp.zeros(n).at[r].set(vr, mode="drop"))(rows, v_rows)  # [A, N]
        v_last = jax.vmap(lambda p, x: value.apply(p, x)[..., 0])(value_params, last_x)  # [A, S]
        shape = (n_agents, n_segments, -1)
        ret, adv = jax.vmap(jax.vmap(lambda r, d, dn, vv, lv: decision_returns(r, d, dn, vv, lv, cfg.gamma, cfg.gae_lambda)))(
            samples.reward.reshape(shape), samples.decided.reshape(shape), samples.done.reshape(shape), v.reshape(shape), v_last
        )
        return take_rows(ret.reshape(n_agents, -1), rows), take_rows(adv.reshape(n_agents, -1), rows)

    def expert_advantages(expert: Samples, params: AgentParams, rows: tuple | None = None, blocks: tuple | None = None):
        """R^e (Eq. 26, bootstrapped with V^e) and A^e = R^e - V^e(o^e) (Eq. 28), or R^e - V^a(o^e) (reled-va),
        on the expert's rows `rows` = (indices, real) from `decision_rows`, or on all rows in order.

        Uncentred expert advantages (reled-va) leave here already divided by their spread; centred
        ones are standardised per minibatch in `agent_loss` like the agent's.
        """
        rows, valid = decision_rows(expert.decided, None) if rows is None else rows
        ret_e, adv_e = advantages(expert, params.value_expert, expert.last_x.shape[1], rows, blocks)
        if cfg.expert_advantage_baseline == "agent" and cfg.uses_expert:  # V^e keeps R^e as its target either way
            v_agent = jax.vmap(lambda p, x: value.apply(p, x)[..., 0])(params.value_agent, take_rows(expert.x, rows))
            adv_e = jnp.where(valid, ret_e - v_agent, 0.0)
        if cfg.expert_advantage_norm == "given":  # reled-va: scaled by each agent's spread over all its expert decisions (a minibatch may hold one)
            spread = jax.vmap(lambda a, v: jnp.sqrt(masked_mean((a - masked_mean(a, v)) ** 2, v)))(adv_e, valid)
            adv_e = adv_e / jnp.maximum(spread, 1e-6)[:, None]
        return ret_e, adv_e

    def prepare(state: TrainState, expert: Samples, expert_nodes: tuple):
        """One seed's rollout and alpha, and the rows its update needs (the most decisions of any agent)."""
        key, k_roll, k_perm = jax.random.split(state.key, 3)
        start = state.envs if cfg.carry_envs else initial_envs(jax.random.split(k_roll)[0])
        traj, final_obs, final_state = rollout(state.params, k_roll, start, SEED_AXIS)
        agent = to_samples(traj, final_obs, final_state)
        # alpha per agent (Eq. 30): DTW between each agent's own and expert first-episode trajectories.
        agent_points = trajectory_points(traj["node"], traj["decided"], traj["done"], node_m, cfg.max_trajectory, (start.path_nodes, start.path_len))
        alpha, weight, dtw_m, d_dtw = hybrid_alpha(agent_points, expert_nodes, state.epoch, cfg)
        need = jnp.maximum(agent.decided.sum(1).max(), expert.decided.sum(1).max())
        return dict(key=key, k_perm=k_perm, start=start, traj=traj, final_obs=final_obs, final_state=final_state, agent=agent,
                    alpha=alpha, weight=weight, dtw_m=dtw_m, d_dtw=d_dtw), need

    def action_logp(policy_params, batch: dict) -> jax.Array:
        """log pi(a | o) of every agent's rows [A, N] of batch (x, mask, action): the update's old log-probabilities."""
        logits = policy_apply(policy, policy_params, batch["x"], batch["mask"])
        return jnp.take_along_axis(jax.nn.log_softmax(logits), batch["action"][..., None], axis=-1)[..., 0]

    def learn(params: AgentParams, opt_state, expert: Samples, prep: dict, capacity: int):
        """One seed's update (Eqs. 26-31) on every agent's decision rows, compacted to `capacity` rows."""
        agent = prep["agent"]
        rows_a, valid_a = decision_rows(agent.decided, min(capacity, agent.decided.shape[1]))
        ret_a, adv_a = advantages(agent, params.value_agent, cfg.n_envs, rows_a)
        rows_e, valid_e = decision_rows(expert.decided, min(capacity, expert.decided.shape[1]))
        ret_e, adv_e = expert_advantages(expert, params, (rows_e, valid_e))

        def old_logp(batch):
            return action_logp(params.policy, batch)

        batch_a = take_rows(dict(x=agent.x, mask=agent.mask, action=agent.action) | ({} if agent.cx is None else {"cx": agent.cx}), rows_a)
        batch_a |= dict(adv=adv_a, ret=ret_a, valid=valid_a)
        batch_e = take_rows(dict(x=expert.x, mask=expert.mask, action=expert.action), rows_e) | dict(adv=adv_e, ret=ret_e, valid=valid_e)
        batch_a["old_logp"] = old_logp(batch_a)
        batch_e["old_logp"] = old_logp(batch_e)
        return update(params, opt_state, batch_a, batch_e, prep["weight"], prep["k_perm"])

    def learn_blocks(params: AgentParams, opt_state, expert: Samples, prep: dict, trips: dict):
        """`learn` in gradient-accumulation form (HybridPPOConfig.update_block): values, old log-probabilities
        and gradients computed in blocks over each agent's decision rows only, as many blocks as `trips`
        (`block_trips`, the same for every seed) says."""
        agent = prep["agent"]
        rows_a, valid_a = decision_rows(agent.decided, agent.decided.shape[1])
        rows_e, valid_e = decision_rows(expert.decided, expert.decided.shape[1])
        n_a, n_e = valid_a.sum(1), valid_e.sum(1)  # [A] decisions of each agent
        ret_a, adv_a = advantages(agent, params.value_agent, cfg.n_envs, rows_a, (n_a, trips["agent"]))
        ret_e, adv_e = expert_advantages(expert, params, (rows_e, valid_e), (n_e, trips["expert"]))

        def old_logp(samples, rows, count, n_blocks):
            def at(r):
                return action_logp(params.policy, take_rows(dict(x=samples.x, mask=samples.mask, action=samples.action), r))
            return blockwise(at, rows, count, n_blocks, cfg.update_block)

        fields_a = dict(x=agent.x, mask=agent.mask, action=agent.action) | ({} if agent.cx is None else {"cx": agent.cx})
        side_a = dict(rows=rows_a, n=n_a, adv=adv_a, ret=ret_a, old_logp=old_logp(agent, rows_a, n_a, trips["agent"]))
        side_e = dict(rows=rows_e, n=n_e, adv=adv_e, ret=ret_e, old_logp=old_logp(expert, rows_e, n_e, trips["expert"]))
        expert_fields = dict(x=expert.x, mask=expert.mask, action=expert.action)
        return update_blocks(params, opt_state, (fields_a, side_a), (expert_fields, side_e), prep["weight"], prep["k_perm"], trips["minibatch"])

    def update_blocks(params, opt_state, agent, expert, alpha, key, minibatch_blocks):
        """PPO epochs x minibatches (Eq. 31) where minibatch j of agent i is the j-th of n_minibatches equal
        shares of its decisions in a random order, and its gradient is summed over blocks of rows."""
        block, n_mb = cfg.update_block, cfg.n_minibatches
        n_pos = agent[1]["rows"].shape[1], expert[1]["rows"].shape[1]

        def shuffled(k, side, n_rows):
            """Each agent's decision positions (the first n of the compacted rows) in a random order, first."""
            real = jnp.arange(n_rows)[None, :] < side["n"][:, None]
            return jnp.argsort(jnp.where(real, jax.random.uniform(k, real.shape), 2.0), axis=1)

        def block_batch(fields, side, order, lo, hi, b):
            """Block b of the minibatch at shuffled positions [lo, hi) of every agent: [A, block] rows."""
            pos = lo[:, None] + b * block + jnp.arange(block)[None, :]
            real = pos < hi[:, None]
            at = jnp.take_along_axis(order, jnp.minimum(pos, order.shape[1] - 1), axis=1)  # compacted positions
            batch = take_rows(fields, jnp.take_along_axis(side["rows"], at, axis=1))
            return batch | {k: jnp.take_along_axis(side[k], at, axis=1) for k in ("adv", "ret", "old_logp")} | {"valid": real}

        def one_epoch(carry, k):
            params, opt_state = carry
            k_a, k_e = jax.random.split(k)
            order_a, order_e = shuffled(k_a, agent[1], n_pos[0]), shuffled(k_e, expert[1], n_pos[1])

            def one_minibatch(carry, mb):
                params, opt_state = carry
                j, n_blocks = mb  # unbatched across seeds: the loop below has one trip count, no selects
                lo_a, hi_a = j * agent[1]["n"] // n_mb, (j + 1) * agent[1]["n"] // n_mb
                lo_e, hi_e = j * expert[1]["n"] // n_mb, (j + 1) * expert[1]["n"] // n_mb

                def in_minibatch(side, order, lo, hi):
                    pos = jnp.arange(order.shape[1])[None, :]
                    return jnp.take_along_axis(side["adv"], order, axis=1), (pos >= lo[:, None]) & (pos < hi[:, None])

                stats = jax.vmap(minibatch_stats)(*in_minibatch(agent[1], order_a, lo_a, hi_a), *in_minibatch(expert[1], order_e, lo_e, hi_e))

                def body(c):
                    b, grads, aux = c
                    mb_a = block_batch(*agent, order_a, lo_a, hi_a, b)
                    mb_e = block_batch(*expert, order_e, lo_e, hi_e, b)
                    g, a = jax.vmap(lambda p, x, y, al, st: jax.grad(agent_loss, has_aux=True)(p, policy, value, x, y, al, cfg, st))(params, mb_a, mb_e, alpha, stats)
                    return b + 1, jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, aux, a)

                zero_aux = {k: jnp.zeros_like(alpha) for k in LOSS_TERMS}
                _, grads, aux = jax.lax.while_loop(lambda c: c[0] < n_blocks, body, (jnp.int32(0), jax.tree.map(jnp.zeros_like, params), zero_aux))
                updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
                w = jnp.where(stats["n_e"] > 0, alpha, 1.0)  # the terms that are not sums over rows, from the sums
                aux = aux | {"expert_weight": 1.0 - w, "expert_share": expert_share(aux["l_agent"], aux["l_expert"], w), "update_rows": (n_blocks * block).astype(jnp.float32)}
                return (params, opt_state), aux

            return jax.lax.scan(one_minibatch, (params, opt_state), (jnp.arange(n_mb), minibatch_blocks))

        (params, opt_state), aux = jax.lax.scan(one_epoch, (params, opt_state), jax.random.split(key, cfg.update_epochs))
        return params, opt_state, jax.tree.map(lambda z: z.mean((0, 1)), aux)

    def finish(state: TrainState, prep: dict, params, opt_state, aux, capacity) -> tuple[TrainState, dict]:
        traj, start, agent = prep["traj"], prep["start"], prep["agent"]
        reward_sums = _episode_sums(traj["reward"], traj["episode_done"], start.reward_sum)
        envs = None
        if cfg.carry_envs:
            path = episode_in_progress(traj["node"], traj["decided"], traj["done"], (start.path_nodes, start.path_len), cfg.max_trajectory)
            envs = EnvCarry(prep["final_obs"], prep["final_state"], *path, jnp.where(traj["episode_done"][-1][:, None], 0.0, reward_sums[-1]))
        metrics = {
            **rollout_statistics(traj["reward"], traj["episode_done"], traj["travel_time"], traj["arrived"], traj["decided"], reward_sums),
            "alpha": prep["alpha"].mean(),
            "dtw_m": prep["dtw_m"].mean(),
            "d_dtw": prep["d_dtw"].mean(),
            **({} if capacity is None else {"update_rows": capacity}),  # blocks: in aux (rows the blocks covered)
            "decision_share_max": (agent.decided.sum(axis=1) / agent.decided.shape[1]).max(),
            **{k: v.mean() for k, v in aux.items()},
        }
        return TrainState(params, opt_state, prep["key"], state.epoch + 1, envs), metrics

    def batched_epoch(states: TrainState, experts: Samples, expert_nodes: tuple) -> tuple[TrainState, dict]:
        """One epoch of every seed (leading axis): rollouts and alphas vmapped; then the smallest row
        capacity that holds every seed's and agent's decisions, chosen outside the vmap so that only
        that branch runs; then the updates vmapped at that capacity."""
        prep, need = jax.vmap(prepare, axis_name=SEED_AXIS)(states, experts, expert_nodes)
        if cfg.update_block:  # gradient accumulation: one update, in proportion to the decisions
            trips = block_trips(prep["agent"].decided.sum(2), experts.decided.sum(2), cfg.update_block, cfg.n_minibatches)
            learn_seeds = jax.vmap(learn_blocks, in_axes=(0, 0, 0, 0, None))
            params, opt_state, aux = learn_seeds(states.params, states.opt_state, experts, {k: prep[k] for k in ("agent", "weight", "k_perm")}, trips)
            return jax.vmap(finish, in_axes=(0, 0, 0, 0, 0, None))(states, prep, params, opt_state, aux, None)
        capacities = update_capacities(max(prep["agent"].decided.shape[2], experts.decided.shape[2]), cfg.decision_share or 1.0, cfg.n_minibatches)
        branch = jnp.minimum(jnp.searchsorted(jnp.asarray(capacities), need.max()), len(capacities) - 1)
        branches = [lambda ops, c=c: jax.vmap(lambda p, o, e, pr: learn(p, o, e, pr, c))(*ops) for c in capacities]
        needed = (states.params, states.opt_state, experts, {k: prep[k] for k in ("agent", "weight", "k_perm")})
        params, opt_state, aux = jax.lax.switch(branch, branches, needed)
        capacity = jnp.asarray(capacities)[branch]
        return jax.vmap(finish, in_axes=(0, 0, 0, 0, 0, None))(states, prep, params, opt_state, aux, capacity)

    def epoch(state: TrainState, expert: Samples, expert_nodes: tuple) -> tuple[TrainState, dict]:
        """One seed's epoch: `batched_epoch` on a seed axis of one."""
        one = lambda tree: jax.tree.map(lambda z: z[None], tree)  # noqa: E731
        return jax.tree.map(lambda z: z[0], batched_epoch(one(state), one(expert), one(expert_nodes)))

    def update(params, opt_state, batch_a, batch_e, alpha, key):
        n_a = batch_a["action"].shape[1]
        n_e = batch_e["action"].shape[1]

        def one_epoch(carry, k):
            params, opt_state = carry
            k_a, k_e = jax.random.split(k)
            perm_a = jax.random.permutation(k_a, n_a)[: (n_a // cfg.n_minibatches) * cfg.n_minibatches].reshape(cfg.n_minibatches, -1)
            perm_e = jax.random.permutation(k_e, n_e)[: (n_e // cfg.n_minibatches) * cfg.n_minibatches].reshape(cfg.n_minibatches, -1)

            def one_minibatch(carry, idx):
                params, opt_state = carry
                ia, ie = idx
                mb_a = jax.tree.map(lambda z: z[:, ia], batch_a)
                mb_e = jax.tree.map(lambda z: z[:, ie], batch_e)
                params, opt_state, aux = agents_update(params, opt_state, mb_a, mb_e, alpha)
                return (params, opt_state), aux

            (params, opt_state), aux = jax.lax.scan(one_minibatch, (params, opt_state), (perm_a, perm_e))
            return (params, opt_state), aux

        (params, opt_state), aux = jax.lax.scan(one_epoch, (params, opt_state), jax.random.split(key, cfg.update_epochs))
        return params, opt_state, jax.tree.map(lambda z: z.mean((0, 1)), aux)  # every minibatch's terms, averaged

    def agents_update(params, opt_state, mb_a, mb_e, alpha):
        """One gradient step for every agent, vmapped over the stacked agent axis (independent updates)."""

        def single(p, o, a_mb, e_mb, al):
            grads, aux = jax.grad(agent_loss, has_aux=True)(p, policy, value, a_mb, e_mb, al, cfg)
            updates, o = tx.update(grads, o, p)
            return optax.apply_updates(p, updates), o, aux

        return jax.vmap(single)(params, opt_state, mb_a, mb_e, alpha)

    epoch.batched = batched_epoch  # every seed at once (the trainer's chunks)
    epoch.initial_envs = carried_envs  # TrainState.envs of a carry_envs run (vmapped over seeds: pass axis_name=SEED_AXIS)
    # Timed alone by benchmarks; under jax.vmap(..., axis_name=SEED_AXIS) pass axis_name=SEED_AXIS.
    epoch.rollout = lambda state, axis_name=None: rollout(state.params, state.key, state.envs if cfg.carry_envs else initial_envs(state.key), axis_name)
    epoch.agents_update = agents_update  # exposed for tests
    epoch.expert_advantages = expert_advantages
    return epoch


def update_capacities(n_rows: int, share: float, n_minibatches: int) -> tuple[int, ...]:
    """The update's row capacities, ascending: `share` of n_rows rounded up to whole minibatches, and
    every row (for the epochs that need more)."""
    usual = n_rows if share >= 1.0 else min(n_rows, max(1, math.ceil(share * n_rows / n_minibatches)) * n_minibatches)
    return tuple(sorted({usual, n_rows}))


def decision_rows(valid: jax.Array, capacity: int | None) -> tuple[jax.Array, jax.Array]:
    """Indices [A, C] of each agent's valid rows, in row order, padded to `capacity` with row 0, and
    which of them are real [A, C]. capacity None: every row in order (all marked real where valid).
    Padding indices point at row 0 for reads; `take_rows` and the value scatter treat them as padding."""
    if capacity is None:
        rows = jnp.broadcast_to(jnp.arange(valid.shape[1]), valid.shape)
        return rows, valid
    count = valid.sum(axis=1)
    real = jnp.arange(capacity)[None, :] < count[:, None]
    rows = jax.vmap(lambda v: jnp.nonzero(v, size=capacity, fill_value=valid.shape[1])[0])(valid)  # padding: out of range
    return rows, real


def block_trips(n_agent: jax.Array, n_expert: jax.Array, block: int, n_minibatches: int) -> dict:
    """How many blocks of `block` rows the gradient-accumulation update runs, from every seed's and agent's
    numbers of agent and expert decisions [S, A]: over all of them ("agent", "expert"), and for each
    minibatch ("minibatch" [n_minibatches]), whose shares of an agent's n decisions are fixed (j n / M to
    (j + 1) n / M). One count for all seeds, so the loops are not batched by the seeds' vmap (a batched
    `while_loop` selects its whole carry, the accumulated gradients, at every trip)."""
    def blocks(n):
        return (n.max() + block - 1) // block

    j = jnp.arange(n_minibatches)[:, None, None]
    share = lambda n: (j + 1) * n[None] // n_minibatches - j * n[None] // n_minibatches  # noqa: E731  [M, S, A]
    per_minibatch = (jnp.maximum(share(n_agent), share(n_expert)).max(axis=(1, 2)) + block - 1) // block
    return {"agent": blocks(n_agent), "expert": blocks(n_expert), "minibatch": per_minibatch}


def blockwise(fn: Callable, rows: jax.Array, count: jax.Array, n_blocks: jax.Array, block: int) -> jax.Array:
    """fn(rows [A, block]) -> [A, block] applied to each agent's first `count` [A] of its compacted `rows`
    [A, C], in `n_blocks` blocks (at least ceil(max(count) / block); `block_trips`) of a `while_loop`, so the
    work follows the busiest agent's decisions, not C. Returns [A, C]; positions from `count` on hold 0."""
    n_agents, n_rows = rows.shape
    padded = jnp.concatenate([rows, jnp.broadcast_to(rows[:, -1:], (n_agents, block))], axis=1)  # a last block may run past C
    out_dtype = jax.eval_shape(fn, padded[:, :block]).dtype

    def body(carry):
        b, out = carry
        start = b * block
        values = fn(jax.lax.dynamic_slice_in_dim(padded, start, block, axis=1))
        return b + 1, jax.lax.dynamic_update_slice_in_dim(out, values.astype(out_dtype), start, axis=1)

    _, out = jax.lax.while_loop(lambda c: c[0] < n_blocks, body, (jnp.int32(0), jnp.zeros((n_agents, n_rows + block), out_dtype)))
    return jnp.where(jnp.arange(n_rows)[None, :] < count[:, None], out[:, :n_rows], 0)


def take_rows(tree, rows: jax.Array):
    """tree leaves [A, N, ...] -> [A, C, ...] at rows [A, C] (out-of-range padding rows read row N-1)."""
    return jax.tree.map(lambda z: jax.vmap(lambda zi, r: zi[jnp.minimum(r, zi.shape[0] - 1)])(z, rows), tree)


def compact_rows(batch: dict, valid: jax.Array, capacity: int) -> tuple[dict, jax.Array]:
    """Each agent's valid rows first, cut to `capacity`: batch leaves [A, N, ...] -> [A, C, ...].

    Invalid rows carry nothing into a masked mean, so a loss over the compacted batch equals the
    loss over the full one (tests/test_reled.py). Returns the batch, whose "valid" marks real
    rows, and each agent's number of valid rows that did not fit [A].
    """
    rows, real = decision_rows(valid, capacity)
    out = take_rows(batch, rows)
    out["valid"] = real
    return out, jnp.maximum(valid.sum(axis=1) - capacity, 0)


def measure_decision_share(env: RouteChoiceEnv, env_params: EnvParams, n_envs: int, n_steps: int, lockstep: bool, key, skip: int = 0) -> float:
    """Largest share of env steps at which one agent decides, over n_steps of a uniform-random rollout
    after `skip` steps (the initial policies are near-uniform): what HybridPPOConfig.decision_share should hold."""
    batch_step = env.step_batch if lockstep else jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, n_envs), env_params)

        def one(carry, k):
            obs, state = carry
            k_act, k_env = jax.random.split(k)
            actions = jax.vmap(random_policy, in_axes=(0, 0, None))(jax.random.split(k_act, n_envs), obs, env_params)
            obs, state, _, _, info = batch_step(jax.random.split(k_env, n_envs), state, actions, env_params)
            return (obs, state), info["decided"]

        decided = jax.lax.scan(one, (obs, state), jax.random.split(k_run, skip + n_steps))[1][skip:]  # [T, E, A]
        return decided.sum(axis=(0, 1)).max() / (n_steps * n_envs)

    return float(jax.jit(run)(key))


def agent_rows(z: jax.Array) -> jax.Array:
    """[E, T, A, ...] -> [A, E*T, ...]: each agent's rows, ordered by (environment, time), as Samples holds them."""
    z = jnp.moveaxis(z, 2, 0)
    return z.reshape((z.shape[0], z.shape[1] * z.shape[2]) + z.shape[3:])


def trajectory_points(node, decided, done, node_km, max_len: int, prefix: tuple | None = None):
    """Coordinates of the junctions where each agent decided in its first episode of a rollout.

    node, decided, done: [T, E, A]. `prefix`: ([E, A, L] junctions, [E, A] lengths) of the episode in
    progress when the rollout started (carried environments), which the first episode continues.
    Returns ([E, A, max_len, 2] padded coordinates, [E, A] lengths): the trajectories tau^{x,i}
    whose DTW sets alpha (Eq. 30).
    """
    node, decided, done = (jnp.moveaxis(z, 0, -1) for z in (node, decided, done))  # [E, A, T]
    before_end = (jnp.cumsum(done, axis=-1) - done) == 0  # up to and including the first done
    nodes, length = _append_path(prefix, node, decided & before_end, max_len)
    return node_km[nodes], length


def episode_in_progress(node, decided, done, prefix: tuple, max_len: int) -> tuple[jax.Array, jax.Array]:
    """([E, A, L] junctions, [E, A] lengths) each agent decided at in its episode still in progress at a
    rollout's end: the decisions after its last `done`, after `prefix` if it had none. node...: [T, E, A]."""
    node, decided, done = (jnp.moveaxis(z, 0, -1) for z in (node, decided, done))  # [E, A, T]
    after_last = jnp.flip(jnp.cumsum(jnp.flip(done, -1), -1), -1) == 0  # no done at this step or later
    any_done = done.any(-1)
    kept = (jnp.where(any_done[..., None], 0, prefix[0]), jnp.where(any_done, 0, prefix[1]))
    return _append_path(kept, node, decided & after_last, max_len)


def _append_path(prefix: tuple | None, node, keep, max_len: int):
    """prefix junctions followed by node[..., t] where keep[..., t] ([E, A, T]), cut to max_len."""
    start = jnp.zeros(node.shape[:-1], jnp.int32) if prefix is None else prefix[1]
    pos = start[..., None] + jnp.cumsum(keep, axis=-1) - 1
    length = jnp.minimum(start + keep.sum(-1), max_len)
    slot = jnp.where(keep & (pos < max_len), pos, max_len)
    buf = jnp.zeros(node.shape[:-1] + (max_len + 1,), jnp.int32)
    if prefix is not None:
        buf = buf.at[..., :max_len].set(prefix[0])
    buf = jax.vmap(jax.vmap(lambda b, s, n: b.at[s].set(n)))(buf, slot, node)[..., :max_len]
    return buf, length


def rollout_statistics(reward, ended, travel_time, arrived, decided, reward_sums=None) -> dict:
    """Interaction steps and per-agent statistics of the episodes that ended inside a rollout.

    reward, travel_time, arrived, decided: [T, E, A]; ended: [T, E]. `reward_sums`: `_episode_sums`
    (with the rewards episodes had before the rollout, when environments carry over); default from
    `reward` alone. NaN statistics when no episode ended inside the rollout.
    """
    reward_sums = _episode_sums(reward, ended) if reward_sums is None else reward_sums
    n_ended = ended.sum() * reward.shape[-1]
    per_episode = lambda z: jnp.sum(jnp.where(ended[..., None], z, 0.0)) / n_ended  # noqa: E731
    return {
        "interaction_steps": decided.sum(),
        "episodes": ended.sum(),
        "episode_reward": per_episode(reward_sums),
        "travel_time": per_episode(travel_time),
        "arrival_rate": per_episode(arrived.astype(jnp.float32)),
    }


def _episode_sums(reward, ended, before=None):
    """Sum of rewards of the episode that ended at each step, per agent: [T, E, A]. `before` [E, A]:
    what the episodes in progress at the first step had gained earlier."""

    def scan(acc, inp):
        r, e = inp
        acc = acc + r
        out = acc
        acc = jnp.where(e[..., None], 0.0, acc)
        return acc, out

    _, sums = jax.lax.scan(scan, jnp.zeros(reward.shape[1:]) if before is None else before, (reward, ended))
    return sums


def init_state(key, params: AgentParams, cfg: HybridPPOConfig) -> TrainState:
    tx = make_optimizer(cfg)
    return TrainState(params=params, opt_state=jax.jit(jax.vmap(tx.init))(params), key=key, epoch=jnp.int32(0))


def empty_expert(n_agents: int, input_dim: int, m_out: int, n_rows: int = 8) -> Samples:
    """Expert samples with no valid rows (IPPO, or before the first demonstration)."""
    z = lambda *s, dt=jnp.float32: jnp.zeros((n_agents,) + s, dt)  # noqa: E731
    return Samples(
        x=z(n_rows, input_dim), mask=jnp.ones((n_agents, n_rows, m_out), bool), action=z(n_rows, dt=jnp.int32),
        reward=z(n_rows), decided=z(n_rows, dt=bool), done=z(n_rows, dt=bool), last_x=z(1, input_dim),
    )

