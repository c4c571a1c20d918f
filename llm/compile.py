"""Instruction sequences -> fixed-shape tensors, and their execution inside `jit` (paper Eq. 15).

`compile_plans` turns one `AgentPlan` per agent into `PlanTensors`: for each
agent a target junction and a mode per instruction, padded to L columns, and
the number of instructions. Column k of agent i is instruction e_k^i, and
`CompiledPlans.instructions[i][k]` is the host-side `Instruction` it came from
(with its plan line), which is how an executed action is traced back to the
instruction that caused it for the feedback sets R^j (Eq. 19) and K^j (Eq. 24).

`expert_actions` is the execution function f of Eq. 15: at each junction the
expert action is the next hop toward the current target (static shortest
distance, shortest time under the *current* edge travel times, or the direct
edge), and the instruction pointer advances when the agent reaches the target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from llm.interface import MODE_FOLLOW_EDGE, MODE_SHORTEST_PATH, MODE_SHORTEST_TIME, Instruction
from llm.plans import AgentPlan
from sim.env import EnvParams, EnvState, edge_travel_time


@struct.dataclass
class PlanTensors:
    """Compiled instruction sequences of all A agents (device arrays)."""

    target: jax.Array  # [A, L] int32 junction each instruction moves to (padding: the destination)
    mode: jax.Array  # [A, L] int32 MODE_* (padding: shortest time)
    length: jax.Array  # [A] int32 number of real instructions (>= 1)


@dataclasses.dataclass(frozen=True)
class CompiledPlans:
    tensors: PlanTensors
    instructions: tuple[tuple[Instruction, ...], ...]  # [A][k]: instruction behind tensor column k
    completed: np.ndarray  # [A] bool: a final move to the destination had to be appended

    @property
    def n_completed(self) -> int:
        return int(self.completed.sum())


def compile_plans(plans: Sequence[AgentPlan], agent_origin, agent_dest, max_instructions: int = 64) -> CompiledPlans:
    """Compile one plan per agent (in agent order) into PlanTensors of width `max_instructions`.

    Moves to where the agent already is (its origin, or the previous target)
    are dropped: they would yield no action. A plan that does not end at the
    agent's destination gets a final `move_to_by_shortest_time(destination)`.
    """
    n_agents = len(agent_dest)
    if len(plans) != n_agents:
        raise ValueError(f"need one plan per agent ({n_agents}), got {len(plans)}")
    target = np.repeat(np.asarray(agent_dest, np.int32)[:, None], max_instructions, axis=1)
    mode = np.full((n_agents, max_instructions), MODE_SHORTEST_TIME, np.int32)
    length = np.zeros(n_agents, np.int32)
    completed = np.zeros(n_agents, bool)
    kept_all = []
    for i, plan in enumerate(plans):
        if plan.agent != i:
            raise ValueError(f"plan {i} is for agent {plan.agent}; pass plans in agent order")
        position, kept = int(agent_origin[i]), []
        for ins in plan.instructions:
            if ins.node != position:
                kept.append(ins)
                position = ins.node
        if position != int(agent_dest[i]):
            kept.append(Instruction("move_to_by_shortest_time", int(agent_dest[i])))
            completed[i] = True
        if len(kept) > max_instructions:
            raise ValueError(f"agent {i}'s plan has {len(kept)} instructions; the compiled width is {max_instructions}")
        kept_all.append(tuple(kept))
        length[i] = len(kept)
        target[i, : len(kept)] = [ins.node for ins in kept]
        mode[i, : len(kept)] = [ins.mode for ins in kept]
    tensors = PlanTensors(target=jnp.asarray(target), mode=jnp.asarray(mode), length=jnp.asarray(length))
    return CompiledPlans(tensors, tuple(kept_all), completed)


def expert_actions(plans: PlanTensors, pointer: jax.Array, state: EnvState, params: EnvParams) -> tuple[jax.Array, jax.Array]:
    """Expert action of every agent at its current junction, and the advanced instruction pointer.

    Returns (actions [A] out-edge slots, pointer [A]). After the call,
    `pointer[i]` is the instruction that produced agent i's action. Only
    awaiting agents' actions are consumed by the environment; the pointer is
    advanced for every agent standing on its current target, which only
    happens at a decision (targets are junctions, agents are at junctions only
    when deciding). Reset the pointer to zeros with the episode.
    """
    n_agents, width = plans.target.shape
    chex.assert_shape(pointer, (n_agents,))
    node = state.veh_node[:n_agents]
    rows = jnp.arange(n_agents)
    at_target = plans.target[rows, pointer] == node
    pointer = jnp.where(at_target & (pointer < plans.length - 1), pointer + 1, pointer)
    target = plans.target[rows, pointer]
    mode = plans.mode[rows, pointer]

    out = params.out_edges[node]  # [A, M]
    exists = out >= 0
    safe = jnp.maximum(out, 0)
    slot_path = jnp.maximum(params.next_slot_dist[node, target], 0)
    direct = exists & (params.edge_to[safe] == target[:, None])
    slot_edge = jnp.where(jnp.any(direct, axis=1), jnp.argmax(direct, axis=1), slot_path)
    slot_time = _live_shortest_time_slot(node, target, state, params)
    actions = jnp.select([mode == MODE_SHORTEST_TIME, mode == MODE_FOLLOW_EDGE, mode == MODE_SHORTEST_PATH], [slot_time, slot_edge, slot_path], slot_path)
    return actions.astype(jnp.int32), pointer


def _live_shortest_time_slot(node: jax.Array, target: jax.Array, state: EnvState, params: EnvParams) -> jax.Array:
    """First hop [A] of the shortest path to `target` under current edge travel times.

    Bellman-Ford from each agent's target on the reversed graph, vectorised over
    agents; it stops as soon as no distance changes (at most N - 1 rounds).
    """
    n_nodes = params.node_xy.shape[0]
    weight = edge_travel_time(state, params)  # [E]
    dist0 = jnp.full((node.shape[0], n_nodes), jnp.inf).at[jnp.arange(node.shape[0]), target].set(0.0)

    def relax(carry):
        dist, _, rounds = carry
        cand = weight[None, :] + dist[:, params.edge_to]  # [A, E] cost via each edge
        new = dist.at[:, params.edge_from].min(cand)
        return new, jnp.any(new < dist), rounds + 1

    dist, _, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] < n_nodes), relax, (dist0, jnp.bool_(True), 0))
    out = params.out_edges[node]
    safe = jnp.maximum(out, 0)
    via = jnp.where(out >= 0, weight[safe] + jnp.take_along_axis(dist, params.edge_to[safe], axis=1), jnp.inf)
    return jnp.argmin(via, axis=1)

