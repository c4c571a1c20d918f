"""The navigation interface a plan may call (paper Table II) and the instructions it yields.

A plan is a program that calls `move_to_by_shortest_path(node)` and
`move_to_by_shortest_time(node)` (the *instructions*, the paper's set C) and may
use the six queries to decide where to go. `PlanContext` is the host-side
implementation those calls reach when the sandbox runs a plan for one agent: it
validates every argument, answers queries from the network arrays and the
current congestion estimate, and records the instruction sequence e^i.

"Where the agent is" for the distance/time queries is the plan's current
position: the agent's origin, or the target of the last move instruction, so a
plan can reason leg by leg.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from sim.network import RoadNetwork

# Instruction modes as stored in the compiled tensors (llm.compile).
MODE_SHORTEST_PATH = 0  # next hop on the shortest-distance path (static table)
MODE_SHORTEST_TIME = 1  # next hop on the shortest-time path under *live* edge travel times
MODE_FOLLOW_EDGE = 2  # take the direct edge to the target (used for route-format plans)

MOVE_OPS = {
    "move_to_by_shortest_path": MODE_SHORTEST_PATH,
    "move_to_by_shortest_time": MODE_SHORTEST_TIME,
    "follow_edge": MODE_FOLLOW_EDGE,
}


@dataclasses.dataclass(frozen=True)
class AgentTrips:
    """Every agent's origin and destination junction and departure time step, as integer arrays [A]: what
    the expert service and its offline backends plan for."""

    origin: np.ndarray
    dest: np.ndarray
    depart: np.ndarray

    @classmethod
    def of(cls, origin, dest, depart=None) -> AgentTrips:
        """From any array-likes; no departure times means everyone leaves at step 0."""
        origin = np.asarray(origin, int)
        return cls(origin, np.asarray(dest, int), np.zeros(len(origin), int) if depart is None else np.asarray(depart, int))


class PlanError(ValueError):
    """A plan was rejected; the message says why (and is fed back to the LLM)."""


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One instruction e_k^i: move to `node` by `op`. `line` is the plan line that issued it (0 if none)."""

    op: str
    node: int
    line: int = 0

    @property
    def mode(self) -> int:
        return MOVE_OPS[self.op]

    @property
    def text(self) -> str:
        return f"{self.op}({self.node})"


@dataclasses.dataclass(frozen=True)
class FunctionSpec:
    name: str
    signature: str
    description: str


# Paper Table II, in the order the prompt lists them.
TABLE_II = (
    FunctionSpec("move_to_by_shortest_path", "move_to_by_shortest_path(node_id) -> bool", "Move to target node via shortest distance path"),
    FunctionSpec("move_to_by_shortest_time", "move_to_by_shortest_time(node_id) -> bool", "Move to target node via shortest time path (live congestion)"),
    FunctionSpec("get_origin", "get_origin() -> int", "Return the current agent's origin node ID"),
    FunctionSpec("get_destination", "get_destination() -> int", "Return the current agent's destination node ID"),
    FunctionSpec("get_shortest_dist", "get_shortest_dist(target_node_id) -> float", "Shortest path distance (m) from the plan's current position to target node"),
    FunctionSpec("get_shortest_time", "get_shortest_time(target_node_id) -> float", "Shortest travel time (s) under current congestion from the plan's current position to target node"),
    FunctionSpec("get_nearest_node", "get_nearest_node(x, y) -> int", "Find node ID closest to coordinates (x, y) in metres"),
    FunctionSpec("get_node_coord", "get_node_coord(node_id) -> tuple[float, float]", "Get coordinates (x, y) in metres of specified node"),
)
INTERFACE_NAMES = frozenset(f.name for f in TABLE_II)


class PlanContext:
    """Answers one agent's interface calls during one plan execution and records its instructions."""

    def __init__(
        self,
        network: RoadNetwork,
        origin: int,
        destination: int,
        edge_time: np.ndarray | None = None,
        max_instructions: int = 15,
        time_graph: csr_matrix | None = None,
    ):
        self.network = network
        self.origin = int(origin)
        self.destination = int(destination)
        self.max_instructions = max_instructions
        self.instructions: list[Instruction] = []
        self.line = 0  # set by the interpreter before each call
        self._position = self.origin
        times = network.edge_free_time if edge_time is None else np.asarray(edge_time, float)
        self._time_graph = time_graph if time_graph is not None else congestion_graph(network, times)
        self._time_from: dict[int, np.ndarray] = {}

    # ----------------------------------------------------------- argument checks
    def _node(self, value, fn: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)):
            raise PlanError(f"{fn}: node id must be an integer, got {type(value).__name__} {short_repr(value)}")
        if isinstance(value, float) and not value.is_integer():
            raise PlanError(f"{fn}: node id must be an integer, got {short_repr(value)}")
        node = int(value)
        if not 0 <= node < self.network.n_nodes:
            raise PlanError(f"{fn}: unknown node {node} (valid junction ids are 0..{self.network.n_nodes - 1})")
        return node

    @staticmethod
    def _coord(value, fn: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PlanError(f"{fn}: coordinates must be finite numbers, got {short_repr(value)}")
        return float(value)

    # ------------------------------------------------------------ instructions
    def _move(self, op: str, node_id) -> bool:
        node = self._node(node_id, op)
        if len(self.instructions) >= self.max_instructions:
            raise PlanError(f"plan issues more than {self.max_instructions} move instructions; use fewer waypoints")
        if not np.isfinite(self.network.shortest_dist[self._position, node]):
            raise PlanError(f"{op}({node}): node {node} cannot be reached from node {self._position}")
        self.instructions.append(Instruction(op, node, self.line))
        self._position = node
        return True

    def move_to_by_shortest_path(self, node_id) -> bool:
        return self._move("move_to_by_shortest_path", node_id)

    def move_to_by_shortest_time(self, node_id) -> bool:
        return self._move("move_to_by_shortest_time", node_id)

    def follow_edge(self, node_id) -> bool:
        """Route-format plans only (not offered to the LLM): take the direct edge to `node_id`."""
        node = self._node(node_id, "route")
        out = self.network.out_edges[self._position]
        if not np.any(self.network.edge_to[out[out >= 0]] == node):
            raise PlanError(f"route: no road from node {self._position} to node {node}; consecutive route nodes must be adjacent")
        return self._move("follow_edge", node)

    # ----------------------------------------------------------------- queries
    def get_origin(self) -> int:
        return self.origin

    def get_destination(self) -> int:
        return self.destination

    def get_shortest_dist(self, target_node_id) -> float:
        node = self._node(target_node_id, "get_shortest_dist")
        return float(self.network.shortest_dist[self._position, node])

    def get_shortest_time(self, target_node_id) -> float:
        node = self._node(target_node_id, "get_shortest_time")
        if self._position not in self._time_from:
            self._time_from[self._position] = dijkstra(self._time_graph, indices=self._position)
        return float(self._time_from[self._position][node])

    def get_nearest_node(self, x, y) -> int:
        xy = np.array([self._coord(x, "get_nearest_node"), self._coord(y, "get_nearest_node")])
        return int(np.argmin(np.linalg.norm(self.network.node_xy - xy, axis=1)))

    def get_node_coord(self, node_id) -> tuple[float, float]:
        node = self._node(node_id, "get_node_coord")
        x, y = self.network.node_xy[node]
        return (round(float(x), 1), round(float(y), 1))

    def functions(self) -> dict[str, Callable]:
        """The callables a plan may reach, by name (Table II)."""
        return {name: getattr(self, name) for name in INTERFACE_NAMES}


def expanded_size(value, budget: int) -> int:
    """Elements and characters of `value` counted through every level of nesting, a repeated container once
    per appearance, stopping as soon as the count passes `budget` (so a container holding itself ends too)."""
    total, stack = 0, [value]
    while stack and total <= budget:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple)):
            total += len(v)
            stack.extend(x for x in v if isinstance(x, (list, tuple, dict, str)))
        elif isinstance(v, dict):
            total += len(v)
            stack.extend(x for x in (*v.keys(), *v.values()) if isinstance(x, (list, tuple, dict, str)))
    return total


def short_repr(value, limit: int = 40) -> str:
    """A plan's value as an error message may show it: bounded, and never the repr of a whole container (a
    plan's shared or self-referencing containers make repr exponentially long or endless)."""
    if isinstance(value, (list, tuple, dict)):
        if expanded_size(value, limit) <= limit:
            text = repr(value)  # small through all its nesting: its repr is short too
            return text if len(text) <= limit else text[: limit - 3] + "..."
        return f"a {type(value).__name__} of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, range):
        return "a range"
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    return f"a {type(value).__name__}"


def congestion_graph(network: RoadNetwork, edge_time: np.ndarray) -> csr_matrix:
    """Sparse junction graph weighted by edge travel time (build_network leaves no parallel edges)."""
    return csr_matrix(
        (np.maximum(np.asarray(edge_time, float), 1e-6), (network.edge_from, network.edge_to)),
        shape=(network.n_nodes, network.n_nodes),
    )
