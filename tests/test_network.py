"""OSM loading and network arrays: shapes, shortest paths, signals, and clear errors on bad input."""

import bz2

import numpy as np
import pytest

from sim.env import make_params
from sim.network import SignalConfig, build_network
from sim.osm import NetworkError, load_osm_graph
from sim.scenarios import load_network, load_scenario


def test_line_network_arrays(line_network):
    net = line_network
    assert net.n_nodes == 4 and net.n_edges == 6
    assert net.m_out == 2  # B and C have two outgoing edges
    # Padding: A has one outgoing edge, the second slot is -1.
    assert (net.out_edges[0] >= 0).sum() == 1 and net.out_edges[0, 1] == -1
    assert np.isclose(net.shortest_dist[0, 3], 330.0)
    assert np.isclose(net.shortest_time[0, 3], 30.0)
    # The first hop from A to D leads to B; from D to A it leads to C.
    assert net.edge_to[net.out_edges[0, net.next_slot_time[0, 3]]] == 1
    assert net.edge_to[net.out_edges[3, net.next_slot_dist[3, 0]]] == 2
    assert net.next_slot_time[2, 2] == -1
    # Storage: lanes * floor((length + 2.5 m) / 7.5 m): 100 m holds 13 cars.
    e = int(np.flatnonzero((net.edge_from == 0) & (net.edge_to == 1))[0])
    assert net.edge_storage[e] == 13
    assert not net.node_signalized.any()


def test_storage_counts_cars_and_the_gaps_between_them_per_lane_as_sumo_does():
    """n cars of 5 m with 2.5 m between them fit in 7.5 n - 2.5 m of each lane; never fewer than one car."""
    lengths_lanes = [(4.0, 1), (12.4, 1), (12.5, 1), (14.0, 1), (14.0, 2), (20.0, 1), (20.0, 3), (100.0, 1)]
    xy = np.array([[0.0, 0.0], [10.0, 0.0]] + [[10.0 * k, 50.0] for k in range(len(lengths_lanes))])
    edges = [(0, 2 + k, length, 10.0, lanes) for k, (length, lanes) in enumerate(lengths_lanes)]
    net = build_network("storage", xy, edges, signals=SignalConfig(enabled=False))
    storage = {(round(float(net.edge_length[e]), 2), int(net.edge_lanes[e])): int(net.edge_storage[e]) for e in range(net.n_edges)}
    # A 14 m link (the two halves of a divided junction) holds two cars, as in SUMO; length / 7.5 m gave one.
    assert storage == {(4.0, 1): 1, (12.4, 1): 1, (12.5, 1): 2, (14.0, 1): 2, (14.0, 2): 4, (20.0, 1): 3, (20.0, 3): 9, (100.0, 1): 13}


def test_shortest_time_prefers_fast_detour():
    # 0 -> 2 directly is 300 m at 5 m/s (60 s); via 1 it is 400 m at 20 m/s (20 s).
    xy = np.array([[0, 0], [100, 100], [300, 0]], float)
    edges = [(0, 2, 300, 5, 1), (0, 1, 200, 20, 1), (1, 2, 200, 20, 1), (2, 0, 300, 5, 1), (1, 0, 200, 20, 1)]
    net = build_network("detour", xy, edges)
    assert net.edge_to[net.out_edges[0, net.next_slot_dist[0, 2]]] == 2
    assert net.edge_to[net.out_edges[0, net.next_slot_time[0, 2]]] == 1
    assert np.isclose(net.shortest_time[0, 2], 20.0)


def test_signals_two_phases_by_axis(cross_network):
    net = cross_network
    assert net.node_signalized.tolist() == [True, False, False, False, False]
    incoming = {int(net.edge_from[e]): e for e in np.flatnonzero(net.edge_to == 0)}
    start = {arm: int(net.signal_green_start[e]) for arm, e in incoming.items()}
    # Opposite approaches (east/west, north/south) share a phase; crossing ones do not.
    assert start[1] == start[3] and start[2] == start[4] and start[1] != start[2]
    assert all(net.signal_cycle[e] == 50 and net.signal_green_dur[e] == 20 for e in incoming.values())
    # Edges into the arms are not signalized: always green.
    assert all(net.signal_cycle[e] == 1 for e in np.flatnonzero(net.edge_to != 0))


def test_signals_configurable(cross_network):
    xy = np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 200.0], [-200.0, 0.0], [0.0, -200.0]])
    edges = [(0, a, 200.0, 10.0, 1) for a in (1, 2, 3, 4)] + [(a, 0, 200.0, 10.0, 1) for a in (1, 2, 3, 4)]
    assert not build_network("x", xy, edges, signals=SignalConfig(enabled=False)).node_signalized.any()
    assert not build_network("x", xy, edges, signals=SignalConfig(min_legs=5)).node_signalized.any()


def test_oakland_extract_is_drivable_scc_in_metres():
    net = load_network("oakland")
    assert net.n_nodes >= 5
    assert np.isfinite(net.shortest_dist).all(), "largest strongly connected component: every pair reachable"
    span = net.node_xy.max(0) - net.node_xy.min(0)
    assert 100 < span.min() and span.max() < 2000, "projected to metres (the extract is ~0.4 x 0.3 km)"
    out_degree = np.bincount(net.edge_from, minlength=net.n_nodes)
    assert net.m_out == out_degree.max()
    assert (out_degree >= 1).all()
    assert net.crs and "326" in net.crs  # UTM zone


def test_unreachable_od_pair_is_a_clear_error():
    # 2 is a dead end reachable from 1, but nothing leaves it.
    xy = np.array([[0, 0], [100, 0], [200, 0]], float)
    net = build_network("deadend", xy, [(0, 1, 100, 10, 1), (1, 0, 100, 10, 1), (1, 2, 100, 10, 1)])
    with pytest.raises(NetworkError, match=r"no drivable route.*\(2, 0\)"):
        make_params(net, [2], [0], [0], [1])
    with pytest.raises(NetworkError, match="not in network"):
        net.check_reachable([0], [7])


def _write(tmp_path, name, text, compress=False):
    path = tmp_path / name
    path.write_bytes(bz2.compress(text.encode()) if compress else text.encode())
    return path


def test_malformed_osm_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "broken.osm.bz2", "<osm version='0.6'><node id='1' lat='1' lon='1'><tag k=", compress=True)
    with pytest.raises(NetworkError, match="malformed OSM XML"):
        load_osm_graph(path)


def test_empty_osm_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "empty.osm", "<?xml version='1.0'?><osm version='0.6'></osm>")
    with pytest.raises(NetworkError, match="no usable map data|no OSM nodes"):
        load_osm_graph(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(NetworkError, match="not found"):
        load_osm_graph(tmp_path / "nope.osm")


def test_osm_without_drivable_roads_is_a_clear_error(tmp_path):
    nodes = "".join(f"<node id='{i}' lat='37.80{i}' lon='-122.30{i}'/>" for i in range(1, 4))
    ways = "<way id='10'><nd ref='1'/><nd ref='2'/><nd ref='3'/><tag k='highway' v='footway'/></way>"
    path = _write(tmp_path, "paths.osm", f"<?xml version='1.0'?><osm version='0.6'>{nodes}{ways}</osm>")
    with pytest.raises(NetworkError, match="no drivable roads"):
        load_osm_graph(path)


def test_demand_that_does_not_fit_is_a_clear_error():
    with pytest.raises(NetworkError, match="do not fit"):
        load_scenario("oakland", "moderate", n_agents=10, n_background=400)
    with pytest.raises(NetworkError, match="unknown scenario"):
        load_scenario("atlantis")
    with pytest.raises(NetworkError, match="has no regime 'rush-hour'"):
        load_scenario("oakland", "rush-hour")


def test_agent_od_pairs_fixed_per_seed():
    _, _, p0 = load_scenario("oakland", n_agents=6, n_background=20, seed=0)
    _, _, p0b = load_scenario("oakland", n_agents=6, n_background=20, seed=0)
    _, _, p1 = load_scenario("oakland", n_agents=6, n_background=20, seed=1)
    assert (np.asarray(p0.agent_origin) == np.asarray(p0b.agent_origin)).all()
    assert (np.asarray(p0.agent_dest) == np.asarray(p0b.agent_dest)).all()
    pairs0 = set(zip(np.asarray(p0.agent_origin).tolist(), np.asarray(p0.agent_dest).tolist()))
    pairs1 = set(zip(np.asarray(p1.agent_origin).tolist(), np.asarray(p1.agent_dest).tolist()))
    assert pairs0 != pairs1
    assert (np.asarray(p0.agent_origin) != np.asarray(p0.agent_dest)).all()


def test_network_does_not_depend_on_python_hash_seed():
    """osmnx merges tags into hash-ordered lists; the arrays must be the same in every process."""
    import subprocess
    import sys

    code = (
        "import dataclasses, hashlib, numpy as np\n"
        "from sim.scenarios import load_network\n"
        "net = load_network('grid')\n"
        "arrays = [getattr(net, f.name) for f in dataclasses.fields(net) if isinstance(getattr(net, f.name), np.ndarray)]\n"
        "print(hashlib.sha256(b''.join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest())\n"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
