"""The RELED-Logit ablation expert (paper V-D): a logit (softmax) choice over shortest-path costs.

For each agent it takes the k cheapest loop-free routes under the current
congestion estimate (networkx's Yen-style `shortest_simple_paths`) and samples
one with probability proportional to exp(-theta * (c_r - c_min) / c_min), so a
route 10% slower than the best is e^-1 as likely at theta = 10. Sampling is
seeded by (seed, round, agent): same seed, same plans. It answers in the
route format, through the same parser and compiler as an LLM.
"""

from __future__ import annotations

import itertools
import json

import networkx as nx
import numpy as np

from llm.backends import OfflineBackend
from llm.interface import AgentTrips
from llm.prompts import ExpertRequest
from sim.network import RoadNetwork


class LogitBackend(OfflineBackend):
    name = "logit"

    def __init__(self, network: RoadNetwork, trips: AgentTrips, *, theta: float = 10.0, k_routes: int = 5, seed: int = 0):
        self.network = network
        self.origin, self.dest = trips.origin, trips.dest
        self.theta = theta
        self.k_routes = k_routes
        self.seed = seed

    def respond(self, request: ExpertRequest) -> str:
        net = self.network
        cost = net.edge_free_time if request.edge_time is None else np.asarray(request.edge_time, float)
        graph = nx.DiGraph()
        graph.add_weighted_edges_from(zip(net.edge_from.tolist(), net.edge_to.tolist(), cost.tolist()))
        plans = []
        for agent in request.agents:
            routes = list(itertools.islice(nx.shortest_simple_paths(graph, int(self.origin[agent]), int(self.dest[agent]), weight="weight"), self.k_routes))
            costs = np.array([nx.path_weight(graph, r, weight="weight") for r in routes])
            p = route_probabilities(costs, self.theta)
            rng = np.random.default_rng([self.seed, request.round, agent])
            plans.append({"agent": int(agent), "route": [int(n) for n in routes[rng.choice(len(routes), p=p)]]})
        return json.dumps({"plans": plans})


def route_probabilities(costs: np.ndarray, theta: float) -> np.ndarray:
    """Logit choice probabilities over route costs (softmax of -theta * relative excess cost)."""
    costs = np.asarray(costs, float)
    z = -theta * (costs - costs.min()) / max(costs.min(), 1e-9)
    w = np.exp(z - z.max())
    return w / w.sum()
