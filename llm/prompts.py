"""What the expert is asked (`ExpertRequest`) and how it is worded (templates in llm/prompts/).

The system prompt (the paper's initial prompt d_init, IV-C1) carries the
network topology (junction coordinates and directed adjacency), every agent's
origin, destination and departure time, the Table II interface and the output
contract. A user turn then asks for plans for one subset A_j: the first time
with the current congestion, later as the feedback prompt d_fb (IV-C2) with
the R^j and K^j pairs, RVI/PDI and a summary of the expert trajectories.
Wording lives in the .md templates; this module only fills them in.
"""

from __future__ import annotations

import dataclasses
import functools
import string
from importlib import resources

import numpy as np

from llm.feedback import Feedback
from llm.interface import TABLE_II, Instruction
from sim.network import RoadNetwork


@dataclasses.dataclass(frozen=True)
class ExpertRequest:
    """One request for plans for a subset of agents (structured; backends word it or read it)."""

    round: int  # 0: initial plans; r > 0: r-th refinement
    agents: tuple[int, ...]  # the subset A_j
    edge_time: np.ndarray | None = None  # [E] current congestion estimate (s); None = free flow
    feedback: Feedback | None = None
    previous: dict[int, tuple[Instruction, ...]] = dataclasses.field(default_factory=dict)
    errors: dict[int, str] = dataclasses.field(default_factory=dict)  # why an agent's last plan was rejected


@functools.lru_cache(maxsize=None)
def template(name: str) -> string.Template:
    return string.Template(resources.files("llm").joinpath("prompts", f"{name}.md").read_text(encoding="utf-8"))


def render_system(
    network: RoadNetwork,
    agent_origin,
    agent_dest,
    agent_depart,
    *,
    interfaces: bool = True,
    max_instructions: int = 15,
    t_max: int = 2400,
) -> str:
    """The system prompt d_init; `interfaces=False` asks for complete routes (Table III's no-IFs setting)."""
    coordinates = "; ".join(f"{n}:{x:.0f},{y:.0f}" for n, (x, y) in enumerate(network.node_xy))
    adjacency = "; ".join(
        f"{n}->{','.join(str(int(network.edge_to[e])) for e in row if e >= 0)}" for n, row in enumerate(network.out_edges)
    )
    agents = "\n".join(
        f"agent {i}: origin {int(o)}, destination {int(d)}, departs at {int(t)} s"
        for i, (o, d, t) in enumerate(zip(agent_origin, agent_dest, agent_depart))
    )
    if interfaces:
        interface = "\n".join(f"- `{f.signature}`: {f.description}" for f in TABLE_II)
        contract = template("contract_interfaces").substitute(interface=interface, max_instructions=max_instructions)
    else:
        contract = template("contract_routes").substitute()
    return template("system").substitute(
        terminal_bonus=f"{0.1 * t_max:g}",
        t_max=t_max,
        network_name=network.name,
        n_nodes=network.n_nodes,
        max_node=network.n_nodes - 1,
        n_edges=network.n_edges,
        coordinates=coordinates,
        adjacency=adjacency,
        agents=agents,
        contract=contract,
    )


def render_user(request: ExpertRequest, network: RoadNetwork, top_edges: int = 10) -> str:
    """The user turn: initial request, or the feedback prompt d_fb when the request carries feedback."""
    agents = ", ".join(str(a) for a in request.agents)
    congestion = render_congestion(network, request.edge_time, top_edges)
    errors = ""
    if request.errors:
        errors = "\n## Rejected plans\n" + "\n".join(f"- agent {a}: {why}" for a, why in sorted(request.errors.items())) + "\n"
    fb = request.feedback
    if fb is None:
        return template("initial").substitute(agents=agents, congestion=congestion, errors=errors)
    trajectories = "\n".join(
        f"agent {s.agent}: {'arrived' if s.arrived else 'did NOT arrive'} after {s.travel_time:g} s, return {s.reward:g}, "
        f"route {_route_text(s.route)}"
        for s in fb.trajectories
    ) or "(none)"
    reward_pairs = "\n".join(
        f"- agent {p.agent}, instruction {p.instruction} `{p.text}`: others' reward {-p.reward:g} at t={p.sim_time} s "
        f"({p.n_steps} step(s) flagged); hit: "
        + ", ".join(f"agent {x} at junction {n} ({r:g})" for x, n, r in p.victims)
        for p in fb.reward_pairs
    ) or "- none: no step fell below the threshold."
    divergence_pairs = "\n".join(
        f"- agent {p.agent}, instruction {p.instruction} `{p.text}`: D_KL^max = {p.kl_max:g} at junction {p.junction}; "
        f"plan went to {p.expert_next}, policy prefers {p.policy_next} (it gave the plan's road probability {p.policy_prob:g})"
        for p in fb.divergence_pairs
    ) or "- none."
    return template("feedback").substitute(
        round=request.round,
        agents=agents,
        trajectories=trajectories,
        rvi=f"{fb.rvi:g}",
        threshold=f"{fb.threshold:g}",
        reward_pairs=reward_pairs,
        pdi=f"{fb.pdi:g}",
        divergence_pairs=divergence_pairs,
        errors=errors,
        congestion=congestion,
    )


def render_congestion(network: RoadNetwork, edge_time: np.ndarray | None, top_edges: int = 10) -> str:
    if edge_time is None:
        return "Traffic: no congestion estimate yet (assume free flow)."
    ratio = np.asarray(edge_time) / network.edge_free_time
    worst = [e for e in np.argsort(-ratio)[:top_edges] if ratio[e] > 1.2]
    if not worst:
        return "Traffic: all roads near free flow."
    lines = [
        f"- {int(network.edge_from[e])}->{int(network.edge_to[e])}: {edge_time[e]:.0f} s (free flow {network.edge_free_time[e]:.0f} s)"
        for e in worst
    ]
    return "Most congested roads now:\n" + "\n".join(lines)


def _route_text(route, limit: int = 40) -> str:
    nodes = [str(n) for n in route]
    if len(nodes) > limit:
        nodes = nodes[: limit // 2] + ["..."] + nodes[-limit // 2 :]
    return "-".join(nodes) if nodes else "(no decisions)"
