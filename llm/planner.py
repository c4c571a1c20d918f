"""The offline `planner` expert: deterministic plans in the LLM's own output format, no model needed.

What it does, per request (one agent subset):

1. Costs: each edge's current travel time from the request's congestion
   estimate (free flow if none).
2. Spreading: agents are routed one at a time (by departure, then id). Each
   edge an earlier agent of the subset already uses costs
   (1 + spread_penalty * users / lanes) times more, so agents that would pile
   onto the same bottleneck are pushed to alternatives, but only onto a route
   at most `detour_tolerance` times slower than the agent's own best.
3. Feedback (refinement): for each reward-instruction pair (Eq. 19), roads
   into the junctions where other agents lost reward get twice the cost for
   that agent from then on (it stops blocking them); for each
   policy-divergence pair (Eq. 24), if the road the learned policy prefers at
   that junction costs at most `divergence_tolerance` times the plan's route,
   the plan adopts it (smaller policy shift for the same reward). No
   correction makes a route slower than `detour_tolerance` times the best.
4. Output: an agent whose route is just its live shortest-time route gets
   `move_to_by_shortest_time(get_destination())`, which keeps adapting to
   congestion during the episode; others get the fewest shortest-distance
   waypoints that reproduce their route. In the routes setting (no
   interfaces) it answers with complete junction routes as JSON.
"""

from __future__ import annotations

import json

import numpy as np
from scipy.sparse.csgraph import dijkstra

from llm.backends import OfflineBackend
from llm.interface import AgentTrips, congestion_graph
from llm.prompts import ExpertRequest
from sim.network import RoadNetwork


class PlannerBackend(OfflineBackend):
    name = "planner"

    def __init__(self, network: RoadNetwork, trips: AgentTrips, *, interfaces: bool = True, spread_penalty: float = 0.5,
                 detour_tolerance: float = 1.25, divergence_tolerance: float = 1.15):
        self.network = network
        self.origin, self.dest, self.depart = trips.origin, trips.dest, trips.depart
        self.edge_index = {(int(u), int(v)): e for e, (u, v) in enumerate(zip(network.edge_from, network.edge_to))}
        self.interfaces = interfaces
        self.spread_penalty = spread_penalty
        self.detour_tolerance = detour_tolerance
        self.divergence_tolerance = divergence_tolerance
        # Per-agent memory built from feedback: extra cost factors per edge, preferred next junctions.
        self.avoid: dict[int, np.ndarray] = {}
        self.prefer: dict[int, dict[int, int]] = {}

    def state_dict(self) -> dict:
        return {"avoid": {a: v.copy() for a, v in self.avoid.items()}, "prefer": {a: dict(v) for a, v in self.prefer.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.avoid, self.prefer = dict(state["avoid"]), dict(state["prefer"])

    # ------------------------------------------------------------------ planning
    def respond(self, request: ExpertRequest) -> str:
        net = self.network
        base = net.edge_free_time.astype(float) if request.edge_time is None else np.asarray(request.edge_time, float)
        self._absorb_feedback(request)
        users = np.zeros(net.n_edges)
        routes, notes = {}, {}
        for agent in sorted(request.agents, key=lambda a: (self.depart[a], a)):
            o, d = self.origin[agent], self.dest[agent]
            best = _route(net, base, o, d)
            budget = self.detour_tolerance * _cost(self.edge_index, base, best)
            own = base * self.avoid.get(agent, 1.0)
            spread = own * (1.0 + self.spread_penalty * users / net.edge_lanes)
            # Prefer spreading, then the agent's own corrected costs, but never a route slower than the budget.
            route, note = best, "live shortest time"
            for candidate, why in ((_route(net, spread, o, d), "detour off roads shared with earlier agents"), (_route(net, own, o, d), "")):
                if _cost(self.edge_index, base, candidate) <= budget:
                    route = candidate
                    if candidate != best and why:
                        note = why
                    break
            route, adopted = self._adopt_preferences(agent, route, base)
            if adopted:
                note = f"follows the learned policy at junction(s) {', '.join(map(str, adopted))}"
            if agent in self.avoid:
                note += "; avoids junctions where it hurt other agents"
            routes[agent], notes[agent] = route, note
            for e in _route_edges(self.edge_index, route):
                users[e] += 1
        if not self.interfaces:
            return json.dumps({"plans": [{"agent": a, "route": routes[a]} for a in request.agents]})
        return self._code(request, routes, notes, base)

    def _absorb_feedback(self, request: ExpertRequest) -> None:
        fb = request.feedback
        if fb is None:
            return
        net = self.network
        for pair in fb.reward_pairs:
            factor = self.avoid.setdefault(pair.agent, np.ones(net.n_edges))
            for _, junction, _ in pair.victims:
                factor[net.edge_to == junction] = 2.0  # set, not compounded: one flag doubles the cost once
        for pair in fb.divergence_pairs:
            if pair.policy_next >= 0 and pair.policy_next != pair.expert_next:
                self.prefer.setdefault(pair.agent, {})[pair.junction] = pair.policy_next

    def _adopt_preferences(self, agent: int, route: list[int], cost: np.ndarray) -> tuple[list[int], list[int]]:
        adopted = []
        for junction, nxt in self.prefer.get(agent, {}).items():
            if junction not in route[:-1] or nxt in route[route.index(junction) + 1 : route.index(junction) + 2]:
                continue
            k = route.index(junction)
            tail = _route(self.network, cost, nxt, self.dest[agent])
            if not tail or junction in tail:
                continue
            candidate = route[: k + 1] + tail
            if _cost(self.edge_index, cost, candidate) <= self.divergence_tolerance * _cost(self.edge_index, cost, route) and candidate != route:
                route = candidate
                adopted.append(junction)
        return route, adopted

    def _code(self, request: ExpertRequest, routes: dict, notes: dict, base: np.ndarray) -> str:
        lines = [f"# Offline planner, round {request.round}: live shortest time, waypoints where agents are spread or corrected."]
        for agent in request.agents:
            route = routes[agent]
            live = _route(self.network, base, self.origin[agent], self.dest[agent])
            # One flat `if` per agent, not an elif chain: an elif nests one level deeper per agent, and the
            # sandbox refuses code nested over 40 deep, so 36+ agents in a subset all fell back to
            # live shortest time instead of the planned routes.
            lines.append(f"if agent_id == {agent}:")
            lines.append(f"    # {notes[agent]}")
            if route == live:
                lines.append("    move_to_by_shortest_time(get_destination())")
                continue
            for waypoint in _waypoints(self.network, route):
                target = "get_destination()" if waypoint == self.dest[agent] else str(waypoint)
                lines.append(f"    move_to_by_shortest_path({target})")
        return "```python\n" + "\n".join(lines) + "\n```"


def _route(net: RoadNetwork, cost: np.ndarray, origin: int, dest: int) -> list[int]:
    """Junction sequence of the cheapest route (empty if unreachable)."""
    _, pred = dijkstra(congestion_graph(net, cost), indices=int(origin), return_predecessors=True)
    if origin != dest and pred[dest] < 0:
        return []
    route = [int(dest)]
    while route[-1] != origin:
        route.append(int(pred[route[-1]]))
    return route[::-1]


def _route_edges(edge_index: dict, route: list[int]) -> list[int]:
    return [edge_index[(u, v)] for u, v in zip(route[:-1], route[1:])]


def _cost(edge_index: dict, cost: np.ndarray, route: list[int]) -> float:
    return float(sum(cost[e] for e in _route_edges(edge_index, route))) if len(route) > 1 else 0.0


def _static_path(net: RoadNetwork, u: int, v: int) -> list[int]:
    """The route `move_to_by_shortest_path(v)` takes from u (static next-hop table)."""
    path = [u]
    while path[-1] != v and len(path) <= net.n_nodes:
        slot = net.next_slot_dist[path[-1], v]
        if slot < 0:
            break
        path.append(int(net.edge_to[net.out_edges[path[-1], slot]]))
    return path


def _waypoints(net: RoadNetwork, route: list[int]) -> list[int]:
    """Fewest shortest-distance waypoints whose legs reproduce `route` (greedy longest legs)."""
    points, i = [], 0
    while i < len(route) - 1:
        j = i + 1
        while j + 1 < len(route) and _static_path(net, route[i], route[j + 1]) == route[i : j + 2]:
            j += 1
        points.append(route[j])
        i = j
    return points
