"""Feedback for the expert: reward-instruction pairs R^j (Eqs. 17-19), policy-divergence pairs K^j
(Eqs. 20-24), the Theorem 1 indices, and trajectory summaries. Host-side NumPy on rollout records.

Conventions (paper Section III-D, with the choices the paper leaves open):

* r_t^{A-j} is the summed Eq. 32 reward of the agents *outside* A_j at
  interaction step t (as in Corollary 1's |sum_{j != i} r_t^j|). The 0.1*T_max
  arrival bonus is left out: it is a constant for finishing, not volatility,
  and with it the threshold max|r| would be >= 240 and T^j nearly always empty.
* Eq. 18: T^j = {t in tau_hat : r_t^{A-j} < -max_{tau~} |r_t^{A-j}|}, where
  tau~ are rollouts under the current joint policy and tau_hat the expert
  rollout of subset j.
* Eq. 19 pairs each t in T^j with the instruction e_k^i that agent i in A_j was
  executing at t (l_{k-1} <= t < l_k); pairs are grouped per instruction, the
  worst first.
* Eqs. 22-24: D_KL^max = max_t -ln pi~(u_t | o_t) over agent i's expert
  decisions, t* its argmax, paired with the instruction active at t*.
* Theorem 1 indices per subset: RVI_j = max_t |r_t^{A-j}| over tau_hat, and
  PDI_j = sum_{i in A_j} D_KL^max(pi_hat^i || pi~^i).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from llm.compile import CompiledPlans
from sim.network import RoadNetwork


@dataclasses.dataclass(frozen=True)
class RewardInstructionPair:
    """An element of R^j (Eq. 19), grouped over the steps the instruction was active."""

    agent: int  # i in A_j
    instruction: int  # k
    text: str  # e_k^i
    reward: float  # worst |r_t^{A-j}| among the flagged steps
    n_steps: int  # |flagged steps| while e_k^i was active
    sim_time: int  # simulator second of the worst step
    victims: tuple[tuple[int, int, float], ...]  # (external agent, its junction, its reward) at the worst step


@dataclasses.dataclass(frozen=True)
class DivergencePair:
    """An element of K^j (Eq. 24)."""

    agent: int
    instruction: int
    text: str
    kl_max: float  # D_KL^max (Eq. 22)
    junction: int  # where t* happened
    expert_next: int  # junction the expert's edge leads to
    policy_next: int  # junction the policy's most likely edge leads to
    policy_prob: float  # pi~(u_{t*} | o_{t*})


@dataclasses.dataclass(frozen=True)
class TrajectorySummary:
    agent: int
    route: tuple[int, ...]  # junctions visited, origin first
    travel_time: float
    reward: float  # episode return (Eq. 32, bonus included)
    arrived: bool


@dataclasses.dataclass(frozen=True)
class Feedback:
    """Everything one feedback prompt (d_fb) carries for one subset A_j."""

    subset: tuple[int, ...]
    reward_pairs: tuple[RewardInstructionPair, ...]
    divergence_pairs: tuple[DivergencePair, ...]
    trajectories: tuple[TrajectorySummary, ...]
    rvi: float
    pdi: float
    threshold: float  # max_{tau~} |r_t^{A-j}| used in Eq. 18


def external_step_rewards(reward: np.ndarray, arrived_now: np.ndarray, valid: np.ndarray, outside: np.ndarray, terminal_bonus: float) -> np.ndarray:
    """r_t^{A-j} [T]: summed per-step reward of agents outside the subset, arrival bonus removed."""
    step = np.asarray(reward, float) - terminal_bonus * np.asarray(arrived_now, float)
    return np.where(valid, (step * outside[None, :]).sum(axis=1), 0.0)


def volatility_threshold(agent_rewards: np.ndarray, agent_arrived_now: np.ndarray, agent_valid: np.ndarray, outside: np.ndarray, terminal_bonus: float) -> float:
    """max_{tau~} |r_t^{A-j}| over agent rollouts [..., T, A] under the current joint policy (Eq. 17)."""
    r = external_step_rewards(
        np.reshape(agent_rewards, (-1, agent_rewards.shape[-1])),
        np.reshape(agent_arrived_now, (-1, agent_rewards.shape[-1])),
        np.reshape(agent_valid, (-1,)),
        outside,
        terminal_bonus,
    )
    return float(np.abs(r).max()) if r.size else 0.0


def build_feedback(
    demo,
    subset: Sequence[int],
    compiled: CompiledPlans,
    network: RoadNetwork,
    threshold: float,
    terminal_bonus: float,
    max_pairs: int = 8,
) -> Feedback:
    """R^j, K^j, RVI, PDI and trajectory summaries from one expert rollout (a DemoRollout or a dict of its arrays)."""
    d = _as_numpy(demo)
    n_agents = d["reward"].shape[1]
    subset = tuple(int(i) for i in subset)
    inside = np.zeros(n_agents, bool)
    inside[list(subset)] = True
    outside = ~inside
    valid = d["valid"].astype(bool)
    r_ext = external_step_rewards(d["reward"], d["arrived_now"], valid, outside, terminal_bonus)
    rvi = float(np.abs(r_ext).max()) if r_ext.size else 0.0

    # Eqs. 18-19: flagged steps, paired with the instruction each subset agent was executing.
    flagged = np.nonzero(valid & (r_ext < -threshold))[0]
    groups: dict[tuple[int, int], list[int]] = {}
    for t in flagged:
        for i in subset:
            groups.setdefault((i, int(d["instruction"][t, i])), []).append(int(t))
    reward_pairs = []
    for (i, k), steps in groups.items():
        worst = min(steps, key=lambda t: r_ext[t])
        step_r = d["reward"][worst] - terminal_bonus * d["arrived_now"][worst]
        victims = tuple(
            (int(x), int(d["node"][worst, x]), round(float(step_r[x]), 1)) for x in np.argsort(step_r) if outside[x] and step_r[x] < 0
        )[:3]
        reward_pairs.append(
            RewardInstructionPair(i, k, _text(compiled, i, k), round(float(-r_ext[worst]), 2), len(steps), int(d["sim_time"][worst]), victims)
        )
    reward_pairs.sort(key=lambda p: -p.reward)

    # Eqs. 22-24: largest -ln pi~ over each subset agent's expert decisions.
    divergence_pairs, pdi = [], 0.0
    for i in subset:
        steps = np.nonzero(valid & d["decided"][:, i])[0]
        if len(steps) == 0:
            continue
        nll = -d["policy_logp"][steps, i]
        t_star = int(steps[int(np.argmax(nll))])
        kl_max = float(nll.max())
        pdi += kl_max
        node = int(d["node"][t_star, i])
        expert_next = _edge_end(network, node, int(d["action"][t_star, i]))
        best = int(d["policy_best"][t_star, i])
        k = int(d["instruction"][t_star, i])
        divergence_pairs.append(
            DivergencePair(i, k, _text(compiled, i, k), round(kl_max, 3), node, expert_next, _edge_end(network, node, best), round(float(np.exp(-kl_max)), 3))
        )
    divergence_pairs.sort(key=lambda p: -p.kl_max)

    trajectories = tuple(_summary(d, i, network) for i in subset)
    return Feedback(subset, tuple(reward_pairs[:max_pairs]), tuple(divergence_pairs[:max_pairs]), trajectories, round(rvi, 2), round(pdi, 3), round(threshold, 2))


def agent_routes(demo, network: RoadNetwork) -> list[list[int]]:
    """Junction sequence of each agent's trajectory (decision junctions, then the destination if reached)."""
    d = _as_numpy(demo)
    return [_route(d, i, network) for i in range(d["reward"].shape[1])]


def _as_numpy(demo) -> dict[str, np.ndarray]:
    items = demo.items() if isinstance(demo, dict) else ((f.name, getattr(demo, f.name)) for f in dataclasses.fields(demo))
    return {k: np.asarray(v) for k, v in items}


def _route(d, i, network) -> list[int]:
    steps = np.nonzero(d["valid"].astype(bool) & d["decided"][:, i])[0]
    route = [int(d["node"][t, i]) for t in steps]
    if len(steps):
        last = _edge_end(network, route[-1], int(d["action"][steps[-1], i]))
        if last >= 0:
            route.append(last)
    return route


def _summary(d, i, network) -> TrajectorySummary:
    return TrajectorySummary(
        i, tuple(_route(d, i, network)), round(float(d["travel_time"][i]), 1), round(float(d["reward"][:, i].sum()), 1), bool(d["arrived"][i])
    )


def _edge_end(network: RoadNetwork, node: int, slot: int) -> int:
    if not 0 <= slot < network.m_out:
        return -1
    edge = int(network.out_edges[node, slot])
    return int(network.edge_to[edge]) if edge >= 0 else -1


def _text(compiled: CompiledPlans, agent: int, k: int) -> str:
    seq = compiled.instructions[agent]
    return seq[min(k, len(seq) - 1)].text if seq else "?"


def merge_feedback(feedbacks: Sequence[Feedback], agents: Sequence[int]) -> Feedback | None:
    """The parts of earlier feedback (possibly from other subsets) that concern `agents`.

    The partition changes every refinement (Algorithm 1, line 7), so the
    feedback for a new subset collects each member's pairs and trajectory
    from wherever it was last evaluated. RVI is the largest among the sources;
    PDI is recomputed over the kept divergence pairs.
    """
    keep = set(int(a) for a in agents)
    sources = [f for f in feedbacks if f is not None and keep & set(f.subset)]
    if not sources:
        return None
    reward_pairs = tuple(sorted((p for f in sources for p in f.reward_pairs if p.agent in keep), key=lambda p: -p.reward))
    divergence = tuple(sorted((p for f in sources for p in f.divergence_pairs if p.agent in keep), key=lambda p: -p.kl_max))
    trajectories = tuple(sorted((t for f in sources for t in f.trajectories if t.agent in keep), key=lambda t: t.agent))
    return Feedback(
        tuple(sorted(keep)), reward_pairs, divergence, trajectories,
        max(f.rvi for f in sources), round(sum(p.kl_max for p in divergence), 3), max(f.threshold for f in sources),
    )
