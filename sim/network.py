"""Road graph -> static, jittable network arrays (second stage of OSM -> arrays -> env).

`RoadNetwork` holds only NumPy arrays and Python scalars; `sim.env` turns it into
device arrays. Everything the simulator and the expert need is precomputed here
once per scenario: the padded out-edge table that defines the action space
(paper Table I), all-pairs shortest distance and free-flow time with next-hop
tables (used by the reference policies and the expert's `move_to_*`
instructions, paper Table II), storage capacities, and derived signal plans.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from sim.osm import NetworkError

# Free speeds (km/h) by OSM highway type, used where a way carries no maxspeed tag.
DEFAULT_SPEED_KPH = {
    "motorway": 80.0, "motorway_link": 50.0, "trunk": 70.0, "trunk_link": 40.0,
    "primary": 50.0, "primary_link": 40.0, "secondary": 50.0, "secondary_link": 40.0,
    "tertiary": 40.0, "tertiary_link": 30.0, "unclassified": 30.0,
    "residential": 30.0, "living_street": 20.0,
}
# Lanes per direction by highway type, used where a way carries no lanes tag.
DEFAULT_LANES = {"motorway": 2, "trunk": 2, "primary": 2, "secondary": 1}
ARTERIAL_HIGHWAYS = frozenset(
    {"motorway", "motorway_link", "trunk", "trunk_link", "primary", "primary_link", "secondary", "secondary_link"}
)
CAR_LENGTH_M, MIN_GAP_M = 5.0, 2.5  # SUMO's default car: 5 m long, stops 2.5 m behind the one ahead
JAM_SPACING_M = CAR_LENGTH_M + MIN_GAP_M  # metres of lane per stopped vehicle
# How edge storage is counted (build_network), as recorded with every result (sim.env.simulator_model).
STORAGE_RULE = f"lanes * floor((length + {MIN_GAP_M:g} m) / {JAM_SPACING_M:g} m), at least 1"


@dataclasses.dataclass(frozen=True)
class SignalConfig:
    """How fixed-time signals are derived (the extracts tag few real signals).

    Rule: a junction gets a signal if at least `min_legs` distinct road segments
    meet there (T-junctions and crossings with the default 3) and at least two
    edges enter it; junctions tagged `highway=traffic_signals` in OSM are also
    signalized when `use_osm_tags`. Incoming edges are split into two phases by
    approach axis (edges within 45 degrees of the first approach's axis, and the
    rest). Each phase gets `green_s` of green then `clearance_s` of all-red;
    cycle = 2 * (green_s + clearance_s). Offsets are drawn per junction from
    `offset_seed` so neighbouring signals are not all in step.
    """

    min_legs: int = 3
    green_s: int = 25
    clearance_s: int = 3
    use_osm_tags: bool = True
    offset_seed: int = 0
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class RoadNetwork:
    """Static arrays of one road network. N junctions, E directed edges, M = m_out."""

    name: str
    node_xy: np.ndarray  # [N, 2] float32 metres, shifted so the minimum corner is (0, 0)
    node_osmid: np.ndarray  # [N] int64, -1 for hand-built networks
    edge_from: np.ndarray  # [E] int32
    edge_to: np.ndarray  # [E] int32
    edge_length: np.ndarray  # [E] float32 metres
    edge_speed: np.ndarray  # [E] float32 free speed m/s
    edge_lanes: np.ndarray  # [E] int32 lanes in this direction
    edge_storage: np.ndarray  # [E] int32 vehicles the edge holds at jam density
    edge_arterial: np.ndarray  # [E] bool
    out_edges: np.ndarray  # [N, M] int32 edge index, -1 padding
    shortest_dist: np.ndarray  # [N, N] float32 metres (inf if unreachable)
    shortest_time: np.ndarray  # [N, N] float32 free-flow seconds (inf if unreachable)
    next_slot_dist: np.ndarray  # [N, N] int32 out-edge slot of the first hop by distance, -1 if none
    next_slot_time: np.ndarray  # [N, N] int32 out-edge slot of the first hop by free-flow time
    signal_cycle: np.ndarray  # [E] int32 cycle length (1 = unsignalized, always green)
    signal_green_start: np.ndarray  # [E] int32 start of this approach's green within the cycle
    signal_green_dur: np.ndarray  # [E] int32 green duration
    signal_offset: np.ndarray  # [E] int32 junction offset added to the clock
    node_signalized: np.ndarray  # [N] bool
    utm_origin: tuple[float, float] = (0.0, 0.0)  # added back to node_xy for the projected CRS
    crs: str | None = None
    lefthand: bool = False  # traffic drives on the left (SUMO: netconvert --lefthand)

    @property
    def n_nodes(self) -> int:
        return int(self.node_xy.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_from.shape[0])

    @property
    def m_out(self) -> int:
        return int(self.out_edges.shape[1])

    @property
    def edge_free_time(self) -> np.ndarray:
        return self.edge_length / self.edge_speed

    def area_km2(self) -> float:
        span = self.node_xy.max(0) - self.node_xy.min(0)
        return float(span[0] * span[1] / 1e6)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "junctions": self.n_nodes,
            "edges": self.n_edges,
            "signalized_junctions": int(self.node_signalized.sum()),
            "m_out": self.m_out,
            "bbox_km2": round(self.area_km2(), 3),
            "total_length_km": round(float(self.edge_length.sum()) / 1000, 2),
            "storage_vehicles": int(self.edge_storage.sum()),
            "one_way_share": round(self.one_way_share(), 3),
        }

    def one_way_share(self) -> float:
        pairs = set(zip(self.edge_from.tolist(), self.edge_to.tolist()))
        return sum((v, u) not in pairs for u, v in pairs) / max(len(pairs), 1)

    def check_reachable(self, origins: Sequence[int], destinations: Sequence[int]) -> None:
        """Raise NetworkError naming every origin-destination pair that cannot be driven."""
        origins = np.asarray(origins, dtype=np.int64)
        destinations = np.asarray(destinations, dtype=np.int64)
        bad_ids = [int(n) for n in np.concatenate([origins, destinations]) if not 0 <= n < self.n_nodes]
        if bad_ids:
            raise NetworkError(
                f"junction ids {sorted(set(bad_ids))} are not in network {self.name!r} "
                f"(valid ids: 0..{self.n_nodes - 1}). Pick origins/destinations from the network."
            )
        unreachable = [(int(o), int(d)) for o, d in zip(origins, destinations) if not np.isfinite(self.shortest_dist[o, d])]
        if unreachable:
            raise NetworkError(
                f"no drivable route for origin->destination pairs {unreachable[:10]}"
                f"{' ...' if len(unreachable) > 10 else ''} in network {self.name!r}. "
                "Choose pairs inside one strongly connected component (the OSM loader keeps only the largest one)."
            )


def build_network(
    name: str,
    node_xy: np.ndarray,
    edges: Sequence[tuple[int, int, float, float, int]],
    *,
    arterial: Sequence[bool] | None = None,
    node_osmid: Sequence[int] | None = None,
    signal_tagged: Sequence[bool] | None = None,
    signals: SignalConfig = SignalConfig(),
    utm_origin: tuple[float, float] = (0.0, 0.0),
    crs: str | None = None,
    lefthand: bool = False,
    m_out: int = 0,
    max_table_gib: float = 4.0,
) -> RoadNetwork:
    """Build a RoadNetwork from junction coordinates and (from, to, length_m, speed_mps, lanes) edges.

    This is the single constructor: OSM graphs go through `network_from_graph`,
    which calls it, and tests use it directly with hand-built networks.
    Parallel edges between the same junctions keep the shortest; self-loops are dropped.
    `m_out` is the number of action slots per junction (0: the widest junction's outgoing roads; more: padded);
    a network whose all-pairs tables would need more than `max_table_gib` is refused before they are built.
    """
    node_xy = np.asarray(node_xy, dtype=np.float64)
    n_nodes = node_xy.shape[0]
    if node_xy.ndim != 2 or node_xy.shape[1] != 2 or n_nodes < 2:
        raise NetworkError(f"network {name!r}: need node coordinates of shape [N>=2, 2], got {node_xy.shape}.")
    if len(edges) == 0:
        raise NetworkError(f"network {name!r} has no roads. Give at least one directed edge.")
    arterial = [False] * len(edges) if arterial is None else list(arterial)
    best: dict[tuple[int, int], tuple[float, float, int, bool]] = {}
    for (u, v, length, speed, lanes), art in zip(edges, arterial):
        u, v = int(u), int(v)
        if not (0 <= u < n_nodes and 0 <= v < n_nodes):
            raise NetworkError(f"network {name!r}: edge ({u}, {v}) names a junction outside 0..{n_nodes - 1}.")
        if u == v:
            continue
        if not (length > 0 and speed > 0 and lanes >= 1):
            raise NetworkError(
                f"network {name!r}: edge ({u}, {v}) needs length > 0, speed > 0, lanes >= 1; got {length}, {speed}, {lanes}."
            )
        if (u, v) not in best or length < best[(u, v)][0]:
            best[(u, v)] = (float(length), float(speed), int(lanes), bool(art))
    keys = sorted(best)
    edge_from = np.array([u for u, _ in keys], dtype=np.int32)
    edge_to = np.array([v for _, v in keys], dtype=np.int32)
    edge_length = np.array([best[k][0] for k in keys], dtype=np.float32)
    edge_speed = np.array([best[k][1] for k in keys], dtype=np.float32)
    edge_lanes = np.array([best[k][2] for k in keys], dtype=np.int32)
    edge_arterial = np.array([best[k][3] for k in keys], dtype=bool)
    # Vehicles a lane holds when jammed, counted as SUMO counts them: n cars and the n - 1 gaps between them
    # fit when n * 5 m + (n - 1) * 2.5 m <= length (issue 21: length / 7.5 m left a 14 m link between the two
    # halves of a divided junction one car, where SUMO fits two, and the second car waited a whole cycle).
    per_lane = np.floor((edge_length + MIN_GAP_M) / JAM_SPACING_M)
    edge_storage = np.maximum(1, edge_lanes * per_lane).astype(np.int32)

    out_lists: list[list[int]] = [[] for _ in range(n_nodes)]
    for e, u in enumerate(edge_from):
        out_lists[u].append(e)
    widest = int(np.argmax([len(lst) for lst in out_lists]))
    needed = len(out_lists[widest])
    if m_out and m_out < needed:
        where = f"OSM node {node_osmid[widest]}" if node_osmid is not None else f"junction {widest}"
        raise NetworkError(f"network {name!r}: {where} has {needed} outgoing roads but m_out = {m_out} action slots; set m_out >= {needed} "
                           f"(or 0 for the widest junction's {needed}), or crop that junction out")
    m_out = max(m_out, needed)
    need_gib = table_memory_gib(n_nodes)
    if need_gib > max_table_gib:
        raise NetworkError(f"network {name!r}: {n_nodes} junctions need about {need_gib:.2g} GiB to build the all-pairs tables (N^2 shortest "
                           f"distances, times and next hops), more than max_table_gib = {max_table_gib:g}; crop the extract to fewer junctions "
                           f"(about {max_junctions(max_table_gib):,} fit), or raise max_table_gib if the machine has the memory")
    out_edges = np.full((n_nodes, m_out), -1, dtype=np.int32)
    for n, lst in enumerate(out_lists):
        out_edges[n, : len(lst)] = lst

    shortest_dist, next_slot_dist = _all_pairs(n_nodes, edge_from, edge_to, edge_length, out_edges)
    shortest_time, next_slot_time = _all_pairs(n_nodes, edge_from, edge_to, edge_length / edge_speed, out_edges)

    tagged = np.zeros(n_nodes, bool) if signal_tagged is None else np.asarray(signal_tagged, bool)
    plan = _derive_signals(node_xy, edge_from, edge_to, tagged, signals)

    return RoadNetwork(
        name=name,
        node_xy=(node_xy - node_xy.min(0)).astype(np.float32),
        node_osmid=np.full(n_nodes, -1, np.int64) if node_osmid is None else np.asarray(node_osmid, np.int64),
        edge_from=edge_from,
        edge_to=edge_to,
        edge_length=edge_length,
        edge_speed=edge_speed,
        edge_lanes=edge_lanes,
        edge_storage=edge_storage,
        edge_arterial=edge_arterial,
        out_edges=out_edges,
        shortest_dist=shortest_dist,
        shortest_time=shortest_time,
        next_slot_dist=next_slot_dist,
        next_slot_time=next_slot_time,
        utm_origin=(float(utm_origin[0] + node_xy.min(0)[0]), float(utm_origin[1] + node_xy.min(0)[1])),
        crs=crs,
        lefthand=lefthand,
        **plan,
    )


# Peak bytes per junction pair while the all-pairs tables are built (_all_pairs, twice): SciPy's float64 costs and
# int32 predecessors, their float32/int32 copies, the slot table and row indices (int64), the kept tables (16 bytes).
TABLE_BYTES_PER_PAIR = 48


def table_memory_gib(n_nodes: int) -> float:
    return TABLE_BYTES_PER_PAIR * n_nodes**2 / 2**30


def max_junctions(max_table_gib: float) -> int:
    return int(math.sqrt(max_table_gib * 2**30 / TABLE_BYTES_PER_PAIR))


def write_network(path, network: RoadNetwork) -> None:
    """A RoadNetwork as a data-only .npz (no pickle: reading it runs no code), written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f.name: getattr(network, f.name) for f in dataclasses.fields(network) if isinstance(getattr(network, f.name), np.ndarray)}
    meta = {f.name: getattr(network, f.name) for f in dataclasses.fields(network) if f.name not in arrays}
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    os.replace(tmp, path)


def read_network(path) -> RoadNetwork:
    """A RoadNetwork written by `write_network` (ValueError or KeyError if the file is not one)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["__meta__"]).decode())
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
    meta["utm_origin"] = tuple(meta["utm_origin"])
    return RoadNetwork(**meta, **arrays)


def _all_pairs(n_nodes, edge_from, edge_to, weight, out_edges):
    """All-pairs shortest costs and the out-edge slot of the first hop.

    Dijkstra on the transposed graph from every destination d gives, for every
    source s, the predecessor of s in the tree rooted at d: that is exactly the
    next junction after s on a shortest s->d path.
    """
    matrix = csr_matrix((weight.astype(np.float64), (edge_from, edge_to)), shape=(n_nodes, n_nodes))
    cost_to_dest, pred = dijkstra(matrix.T.tocsr(), directed=True, return_predecessors=True)
    cost = cost_to_dest.T.astype(np.float32)  # cost[s, d]
    next_node = pred.T  # next_node[s, d], -9999 where none
    # slot_of[s, v] = index of edge s->v in out_edges[s]
    slot_of = np.full((n_nodes, n_nodes), -1, dtype=np.int32)
    for s in range(n_nodes):
        for slot, e in enumerate(out_edges[s]):
            if e >= 0:
                slot_of[s, edge_to[e]] = slot
    rows = np.repeat(np.arange(n_nodes), n_nodes).reshape(n_nodes, n_nodes)
    next_slot = np.where(next_node >= 0, slot_of[rows, np.maximum(next_node, 0)], -1).astype(np.int32)
    return cost, next_slot


def _derive_signals(node_xy, edge_from, edge_to, tagged, cfg: SignalConfig) -> dict:
    n_nodes, n_edges = node_xy.shape[0], edge_from.shape[0]
    cycle = np.ones(n_edges, np.int32)
    green_start = np.zeros(n_edges, np.int32)
    green_dur = np.ones(n_edges, np.int32)
    offset = np.zeros(n_edges, np.int32)
    signalized = np.zeros(n_nodes, bool)
    if not cfg.enabled:
        return dict(signal_cycle=cycle, signal_green_start=green_start, signal_green_dur=green_dur,
                    signal_offset=offset, node_signalized=signalized)
    legs = [set() for _ in range(n_nodes)]
    incoming: list[list[int]] = [[] for _ in range(n_nodes)]
    for e, (u, v) in enumerate(zip(edge_from, edge_to)):
        legs[u].add(int(v))
        legs[v].add(int(u))
        incoming[v].append(e)
    rng = np.random.default_rng(cfg.offset_seed)
    period = 2 * (cfg.green_s + cfg.clearance_s)
    node_offsets = rng.integers(0, period, size=n_nodes)
    for n in range(n_nodes):
        if len(incoming[n]) < 2 or not (len(legs[n]) >= cfg.min_legs or (cfg.use_osm_tags and tagged[n])):
            continue
        signalized[n] = True
        # Axis of each approach in [0, 180): opposite approaches share a phase.
        axes = [math.degrees(math.atan2(*(node_xy[n] - node_xy[edge_from[e]])[::-1])) % 180.0 for e in incoming[n]]
        phases = [0 if min(abs(a - axes[0]), 180.0 - abs(a - axes[0])) < 45.0 else 1 for a in axes]
        if len(set(phases)) == 1:  # all approaches on one axis: alternate them so each still gets red
            phases = [i % 2 for i in range(len(phases))]
        for e, p in zip(incoming[n], phases):
            cycle[e] = period
            green_start[e] = p * (cfg.green_s + cfg.clearance_s)
            green_dur[e] = cfg.green_s
            offset[e] = node_offsets[n]
    return dict(signal_cycle=cycle, signal_green_start=green_start, signal_green_dur=green_dur,
                signal_offset=offset, node_signalized=signalized)


def _parse_int(value) -> int | None:
    value = _first_tag(value)
    if value is None:
        return None
    try:
        return int(float(str(value).split(";")[0]))
    except ValueError:
        return None


def _first_tag(value):
    if isinstance(value, list):
        return value[0] if value else None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


_HIGHWAY_RANK = {h: k for k, h in enumerate(DEFAULT_SPEED_KPH)}  # most important class first


def _canonical_tags(graph: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """Sort list-valued edge tags so the network does not depend on Python's hash seed.

    osmnx's simplification merges the tags of the ways it joins into lists built
    from sets, so their order changes with PYTHONHASHSEED, and osmnx (and we)
    read the first element. Sorting makes the first `highway` the most important
    class and the first `lanes` the fewest, the same in every process.
    """
    graph = graph.copy()
    for _, _, data in graph.edges(data=True):
        for key, value in data.items():
            if not isinstance(value, list):
                continue
            if key == "highway":
                data[key] = sorted(value, key=lambda h: (_HIGHWAY_RANK.get(str(h), len(_HIGHWAY_RANK)), str(h)))
            elif key == "lanes":
                data[key] = sorted(value, key=lambda x: (_parse_int(x) is None, _parse_int(x) or 0, str(x)))
            else:
                data[key] = sorted(value, key=str)
    return graph


def network_from_graph(name: str, graph: nx.MultiDiGraph, signals: SignalConfig = SignalConfig(), *, lefthand: bool = False, m_out: int = 0,
                       max_table_gib: float = 4.0) -> RoadNetwork:
    """Convert a projected osmnx graph (from `sim.osm.load_osm_graph`) to a RoadNetwork.

    Speeds: the way's `maxspeed` where tagged, else DEFAULT_SPEED_KPH by highway type.
    Lanes per direction: the `lanes` tag (halved on two-way roads), else DEFAULT_LANES.
    """
    import osmnx as ox

    graph = _canonical_tags(graph)
    graph = ox.routing.add_edge_speeds(graph, hwy_speeds=DEFAULT_SPEED_KPH, fallback=30.0)
    osmids = sorted(graph.nodes)
    index = {osmid: i for i, osmid in enumerate(osmids)}
    node_xy = np.array([[graph.nodes[o]["x"], graph.nodes[o]["y"]] for o in osmids], dtype=np.float64)
    tagged = np.array([_first_tag(graph.nodes[o].get("highway")) == "traffic_signals" for o in osmids])
    edges, arterial = [], []
    for u, v, data in graph.edges(data=True):
        highway = _first_tag(data.get("highway")) or "unclassified"
        lanes = _parse_int(data.get("lanes"))
        oneway = bool(_first_tag(data.get("oneway")))
        if lanes is None:
            lanes = DEFAULT_LANES.get(highway.replace("_link", ""), 1)
        elif not oneway:
            lanes = max(1, lanes // 2)
        speed_mps = float(data["speed_kph"]) / 3.6
        edges.append((index[u], index[v], max(float(data["length"]), 1.0), speed_mps, max(1, min(lanes, 6))))
        arterial.append(highway in ARTERIAL_HIGHWAYS)
    return build_network(
        name, node_xy, edges, arterial=arterial, node_osmid=osmids, signal_tagged=tagged, signals=signals,
        crs=str(graph.graph.get("crs")), lefthand=lefthand, m_out=m_out, max_table_gib=max_table_gib,
    )
