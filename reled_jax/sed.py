"""Stationarity-Aware Expert Demonstration (paper III-D, Algorithm 1 lines 6-17), host side of the loop.

Every q epochs, for one seed: partition the agents at random into m subsets
(line 7); ask the expert service for plans (line 8: the first time the initial
prompt, later the feedback prompt); for each subset roll out n_demo_envs
episodes where the subset follows its compiled plans and everyone else its
current policy (line 11, jitted); compute R^j and K^j and the Theorem 1
indices RVI and PDI (line 12); keep them as the next request's feedback
(lines 13, 16); and return the subset agents' transitions as tau^e (line 14),
laid out like the agent samples so HPO treats both alike.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
from tyro.conf import Suppress, arg

from llm.demos import make_demo_rollout
from llm.feedback import build_feedback, merge_feedback, volatility_threshold
from llm.service import ExpertService
from reled_jax.networks import MLP, observe
from reled_jax.reled import HybridPPOConfig, Samples, agent_rows, policy_apply, trajectory_points
from sim.env import EnvParams, RouteChoiceEnv
from sim.network import RoadNetwork


@dataclasses.dataclass(frozen=True)
class SEDConfig:
    # The paper's q and m, also reachable on the command line by what they mean (--refresh-every, --subsets).
    q: Annotated[int, arg(aliases=("--refresh-every",), help="q: epochs between expert refreshes (new plans, demonstrations and feedback; Algorithm 1)")] = 10
    m: Annotated[int, arg(aliases=("--subsets",), help="m: agent subsets the expert is asked about at each refresh (the partition A_1..A_m, III-D)")] = 2
    n_demo_envs: int = 4  # expert episodes per subset
    demo_steps: int = 1024  # environment steps per expert episode (cut there if not finished)
    refine: Suppress[bool] = True  # False: plans generated once and reused (reled-norefine); the method decides it, no flag


class SED:
    def __init__(self, env: RouteChoiceEnv, env_params: EnvParams, network: RoadNetwork, policy: MLP, hpo: HybridPPOConfig, cfg: SEDConfig, service: ExpertService, seed: int):
        self.env, self.env_params, self.network, self.hpo, self.cfg, self.service, self.seed = env, env_params, network, hpo, cfg, service, seed
        self.feedback: dict[int, object] = {}  # latest Feedback per agent
        self.history: list[dict] = []
        m_out = env.m_out
        demo = make_demo_rollout(env, cfg.demo_steps)

        def rollouts(key, policy_params, plans, expert_mask):
            def logits(k, obs):
                return policy_apply(policy, policy_params, observe(obs.features, m_out), obs.action_mask)

            keys = jax.random.split(key, cfg.n_demo_envs)
            return jax.vmap(lambda k: demo(k, env_params, plans, expert_mask, logits))(keys)

        self._rollouts = jax.jit(rollouts)

    def refresh(self, policy_params, epoch: int) -> tuple[Samples, tuple, dict]:
        """New expert samples tau^e (per agent), their trajectories for DTW, and a log record."""
        n_agents = self.env.n_agents
        subsets = partition_agents(n_agents, self.cfg.m, self.seed, epoch)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), epoch)
        k_base, k_demo = jax.random.split(key)

        first = self.service.round == 0
        if first or self.cfg.refine:
            feedback = [merge_feedback(list(self.feedback.values()), s) for s in subsets] if self.cfg.refine else None
            outs = self.service.plan(subsets, feedback)
            compiled = [o.compiled for o in outs]
        else:
            compiled = [self.service.compiled_current()] * len(subsets)

        # tau~: everybody on the current policy, for the threshold of Eq. 18.
        nobody = jnp.zeros(n_agents, bool)
        base = self._rollouts(k_base, policy_params, compiled[0].tensors, nobody)
        base = {f.name: np.asarray(getattr(base, f.name)) for f in dataclasses.fields(base)}

        demos, records = [], []
        for j, (subset, plans) in enumerate(zip(subsets, compiled)):
            mask = np.zeros(n_agents, bool)
            mask[list(subset)] = True
            demo = self._rollouts(jax.random.fold_in(k_demo, j), policy_params, plans.tensors, jnp.asarray(mask))
            demos.append(demo)
            threshold = volatility_threshold(base["reward"], base["arrived_now"], base["valid"], ~mask, self.env_params.terminal_bonus)
            first_env = jax.tree.map(lambda z: np.asarray(z[0]), demo)
            fb = build_feedback(first_env, subset, plans, self.network, threshold, self.env_params.terminal_bonus)
            for a in subset:
                self.feedback[a] = fb
            records.append({"subset": subset, "rvi": fb.rvi, "pdi": fb.pdi, "threshold": fb.threshold, "n_reward_pairs": len(fb.reward_pairs)})

        subset_of = np.zeros(n_agents, int)
        for j, s in enumerate(subsets):
            subset_of[list(s)] = j
        samples, nodes = expert_samples(demos, subset_of, self.env, self.env_params, self.hpo)
        stats = self.service.stats
        log = {
            "epoch": epoch,
            "round": self.service.round,
            "rvi": float(np.mean([r["rvi"] for r in records])),
            "pdi": float(np.mean([r["pdi"] for r in records])),
            "execution_rate": stats.execution_rate,
            "fallbacks": stats.n_fallbacks,
            "expert_reward": float(np.mean([np.asarray(d.reward).sum(1)[:, list(s)].mean() for d, s in zip(demos, subsets)])),
            "subsets": records,
        }
        self.history.append(log)
        return samples, nodes, log


def partition_agents(n_agents: int, m: int, seed: int, epoch: int) -> list[tuple[int, ...]]:
    """Algorithm 1, line 7: a random partition of the agents into m disjoint subsets of near-equal size.

    Drawn from (seed, epoch) alone, so a resumed run repeats the partition of the run it continues.
    """
    rng = np.random.default_rng([seed, epoch])
    return [tuple(int(a) for a in s) for s in np.array_split(rng.permutation(n_agents), m)]


def expert_samples(demos, subset_of: np.ndarray, env: RouteChoiceEnv, env_params: EnvParams, hpo: HybridPPOConfig) -> tuple[Samples, tuple]:
    """tau^e (Algorithm 1, line 14): each agent's rows from the rollout of its own subset, as [A, E'*T] Samples.

    demos: one DemoRollout batch [E', T, ...] per subset j, in which subset j followed its plans;
    subset_of[a] is agent a's subset. Only agent a's rows of demos[subset_of[a]] are its expert
    samples (in the other subsets' rollouts it followed its policy). Also returns the trajectories of
    those rows for DTW: ([E', A, L, 2] junction coordinates, [E', A] lengths).
    """
    stacked = jax.tree.map(lambda *z: jnp.stack(z), *demos)  # [m, E', T, A, ...]
    pick = jnp.asarray(subset_of)
    own = lambda z: _own_subset(z, pick)  # noqa: E731  [m, E', T, A, ...] -> [E', T, A, ...]
    x = own(observe(stacked.obs, env.m_out))
    valid = own(stacked.decided & stacked.valid[..., None])
    samples = Samples(
        x=agent_rows(x), mask=agent_rows(own(stacked.mask)), action=agent_rows(own(stacked.action)),
        reward=agent_rows(own(stacked.reward)) * hpo.reward_scale, decided=agent_rows(valid),
        done=agent_rows(own(stacked.done)),
        last_x=jnp.swapaxes(x[:, -1], 0, 1),  # [A, E', D]
    )
    node, decided, done = (jnp.swapaxes(z, 0, 1) for z in (own(stacked.node), valid, own(stacked.done)))  # [T, E', A]
    xy, length = trajectory_points(node, decided, done, env_params.node_xy, hpo.max_trajectory)
    return samples, (xy, length)


def _own_subset(z, pick):
    """[m, E', T, A, ...] -> [E', T, A, ...], taking for agent a the rollout of its own subset pick[a]."""
    z = jnp.moveaxis(z, 3, 0)  # [A, m, E', T, ...]
    z = jax.vmap(lambda zi, j: zi[j])(z, pick)  # [A, E', T, ...]
    return jnp.moveaxis(z, 0, 2)
