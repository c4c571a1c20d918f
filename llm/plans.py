"""LLM response text -> one validated instruction sequence per agent.

Accepted response formats (the prompts ask for the first; the others are what
models produce anyway, or what the no-interface ablation asks for):

1. Python code, fenced (```python ... ```) or bare. The program is run once per
   requested agent by the sandbox with `agent_id` set, so one program can plan
   every agent (`if agent_id == 3: ...`).
2. JSON `{"plans": [{"agent": 3, "code": "..."}, ...]}`: a program per agent.
3. JSON `{"plans": [{"agent": 3, "instructions": [{"op": "move_to_by_shortest_time", "node": 12}, ...]}]}`.
4. JSON `{"plans": [{"agent": 3, "route": [origin, n1, n2, ..., destination]}]}`:
   a complete junction route (the paper's "without IFs" setting). Consecutive
   junctions must be joined by a road.
5. JSON `{"code": "..."}`: one program for all agents.

Every path goes through the same `PlanContext` checks, so an unknown junction
or a non-adjacent route hop is rejected the same way whatever the format.
A plan is *executed* (Table III's execution rate) when it runs to a non-empty
valid instruction sequence; otherwise `AgentPlan.error` says why.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.sparse import csr_matrix

from llm.interface import MOVE_OPS, Instruction, PlanContext, PlanError, congestion_graph
from llm.sandbox import SandboxLimits, parse_program, run_program
from sim.network import RoadNetwork

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_LLM_OPS = ("move_to_by_shortest_path", "move_to_by_shortest_time")


@dataclasses.dataclass(frozen=True)
class AgentPlan:
    """The instruction sequence e^i for one agent, or why the LLM's plan was rejected."""

    agent: int
    instructions: tuple[Instruction, ...] = ()
    fmt: str = "code"  # code | instructions | route | fallback
    error: str | None = None

    @property
    def executed(self) -> bool:
        return self.error is None and len(self.instructions) > 0


@dataclasses.dataclass(frozen=True)
class PlanRequestContext:
    """What plan execution needs to know about the agents and the network."""

    network: RoadNetwork
    agent_origin: np.ndarray  # [A]
    agent_dest: np.ndarray  # [A]
    edge_time: np.ndarray | None = None  # [E] congestion estimate for get_shortest_time (free flow if None)
    max_instructions: int = 63
    limits: SandboxLimits = SandboxLimits()

    def time_graph(self) -> csr_matrix:
        times = self.network.edge_free_time if self.edge_time is None else self.edge_time
        return congestion_graph(self.network, times)

    def context(self, agent: int, graph: csr_matrix) -> PlanContext:
        return PlanContext(
            self.network, int(self.agent_origin[agent]), int(self.agent_dest[agent]),
            max_instructions=self.max_instructions, time_graph=graph,
        )


def parse_response(text: str, agents: Sequence[int], ctx: PlanRequestContext) -> dict[int, AgentPlan]:
    """Turn one LLM response into a plan (or a rejection) for each requested agent."""
    return dict(iter_plans(text, agents, ctx))


def iter_plans(text: str, agents: Sequence[int], ctx: PlanRequestContext) -> Iterator[tuple[int, AgentPlan]]:
    """`parse_response` one agent at a time, in `agents` order (llm.isolation puts a deadline on each)."""
    agents = [int(a) for a in agents]
    if not isinstance(text, str) or not text.strip():
        yield from ((a, AgentPlan(a, error="empty response")) for a in agents)
        return
    payload = _json_payload(text)
    graph = ctx.time_graph()
    if payload is not None:
        yield from _from_json(payload, agents, ctx, graph)
        return
    if text.lstrip().startswith(("{", "[")):
        why = "response looks like JSON but is not a valid JSON object (truncated or malformed)"
        yield from ((a, AgentPlan(a, error=why)) for a in agents)
        return
    code = _python_code(text)
    yield from ((a, _run_code(code, a, ctx, graph, "code")) for a in agents)


def _json_payload(text: str):
    """The JSON object in the response, if it is one (bare or in a ```json fence)."""
    candidates = [text.strip()]
    candidates += [body for lang, body in _FENCE.findall(text) if lang.lower() in ("json", "")]
    for candidate in candidates:
        candidate = candidate.strip()
        if not candidate.startswith("{"):
            continue
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):  # ValueError: malformed, or an integer of more than 4,300 digits
            continue
        if isinstance(value, dict):
            return value
    return None


def _python_code(text: str) -> str:
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("python", "py", "")]
    return "\n".join(blocks) if blocks else text


def _from_json(payload: dict, agents: list[int], ctx: PlanRequestContext, graph) -> Iterator[tuple[int, AgentPlan]]:
    if isinstance(payload.get("code"), str) and "plans" not in payload:
        yield from ((a, _run_code(payload["code"], a, ctx, graph, "code")) for a in agents)
        return
    items = payload.get("plans")
    if not isinstance(items, list):
        why = 'JSON response has no "plans" list'
        yield from ((a, AgentPlan(a, error=why)) for a in agents)
        return
    by_agent: dict[int, dict] = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("agent"), int) and not isinstance(item.get("agent"), bool):
            by_agent.setdefault(item["agent"], item)  # first plan for an agent wins
    for a in agents:
        item = by_agent.get(a)
        if item is None:
            yield a, AgentPlan(a, error=f"response has no plan for agent {a}")
        elif isinstance(item.get("code"), str):
            yield a, _run_code(item["code"], a, ctx, graph, "code")
        elif "instructions" in item:
            yield a, _run_steps(item["instructions"], a, ctx, graph)
        elif "route" in item:
            yield a, _run_route(item["route"], a, ctx, graph)
        else:
            yield a, AgentPlan(a, error=f'plan for agent {a} has none of "code", "instructions", "route"')


def _finish(agent: int, pctx: PlanContext, fmt: str) -> AgentPlan:
    if not pctx.instructions:
        return AgentPlan(agent, fmt=fmt, error=f"plan issued no move instruction for agent {agent}")
    return AgentPlan(agent, tuple(pctx.instructions), fmt=fmt)


def _run_code(code: str, agent: int, ctx: PlanRequestContext, graph, fmt: str) -> AgentPlan:
    pctx = ctx.context(agent, graph)
    try:
        tree = parse_program(code, ctx.limits)
        run_program(tree, pctx.functions(), {"agent_id": agent}, ctx.limits, on_line=lambda line: setattr(pctx, "line", line))
    except PlanError as err:
        return AgentPlan(agent, fmt=fmt, error=str(err))
    return _finish(agent, pctx, fmt)


def _run_steps(steps, agent: int, ctx: PlanRequestContext, graph) -> AgentPlan:
    pctx = ctx.context(agent, graph)
    try:
        if not isinstance(steps, list):
            raise PlanError('"instructions" must be a list')
        for k, step in enumerate(steps):
            if isinstance(step, dict):
                op, node = step.get("op"), step.get("node")
            elif isinstance(step, list) and len(step) == 2:
                op, node = step
            else:
                raise PlanError(f'instruction {k} must be {{"op": ..., "node": ...}}')
            if op not in _LLM_OPS:
                raise PlanError(f"instruction {k}: unknown op {op!r:.40}; use one of {list(_LLM_OPS)}")
            pctx.line = k + 1
            getattr(pctx, op)(node)
    except PlanError as err:
        return AgentPlan(agent, fmt="instructions", error=str(err))
    return _finish(agent, pctx, "instructions")


def _run_route(route, agent: int, ctx: PlanRequestContext, graph) -> AgentPlan:
    pctx = ctx.context(agent, graph)
    try:
        if not isinstance(route, list) or len(route) < 2:
            raise PlanError('"route" must be a list of at least two junction ids, origin first')
        start = pctx._node(route[0], "route")
        if start != pctx.origin:
            raise PlanError(f"route starts at node {start}, but agent {agent} starts at node {pctx.origin}")
        for k, node in enumerate(route[1:], start=1):
            pctx.line = k
            pctx.follow_edge(node)
    except PlanError as err:
        return AgentPlan(agent, fmt="route", error=str(err))
    return _finish(agent, pctx, "route")


def fallback_plan(agent: int, destination: int, reason: str) -> AgentPlan:
    """The plan used when the LLM gave none: live shortest time to the destination."""
    return AgentPlan(agent, (Instruction("move_to_by_shortest_time", int(destination)),), fmt="fallback", error=reason)


def plan_to_json(plan: AgentPlan) -> dict:
    """An AgentPlan as plain JSON data (what a plan worker sends back: never a pickle)."""
    return {"agent": plan.agent, "instructions": [[i.op, i.node, i.line] for i in plan.instructions], "fmt": plan.fmt, "error": plan.error}


def plan_from_json(data: dict, agent: int) -> AgentPlan:
    """The AgentPlan of `plan_to_json` for `agent`, checked: anything malformed is a rejection, not an error."""
    try:
        if data["agent"] != agent:
            raise ValueError(f"a plan for agent {data['agent']}")
        steps = tuple(Instruction(str(op), int(node), int(line)) for op, node, line in data["instructions"])
        if any(i.op not in MOVE_OPS for i in steps):
            raise ValueError("an unknown instruction")
        error = data["error"]
        return AgentPlan(agent, steps, str(data["fmt"]), None if error is None else str(error))
    except (KeyError, TypeError, ValueError) as err:
        return AgentPlan(agent, error=f"plan worker sent a malformed result ({err})")


__all__ = ["AgentPlan", "PlanRequestContext", "parse_response", "iter_plans", "fallback_plan", "plan_to_json", "plan_from_json"]
