"""SUMO export: netconvert builds our exact network, the id map round-trips, SUMO runs the scenario."""

import builtins
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from sim.export_sumo import SumoNotInstalled, export, sumo_binary
from sim.network import JAM_SPACING_M
from sim.scenarios import load_scenario


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("sumo", reason="SUMO extra not installed")
    out = tmp_path_factory.mktemp("sumo")
    return out, export("oakland", "moderate", out, n_agents=4)


def test_network_and_id_map_round_trip(exported):
    sumolib = pytest.importorskip("sumolib")
    out, paths = exported
    network, _, _ = load_scenario("oakland", "moderate", n_agents=4)
    net = sumolib.net.readNet(str(paths["net"]))
    ids = json.loads(paths["idmap"].read_text())
    assert len(net.getEdges()) == network.n_edges and len(net.getNodes()) == network.n_nodes
    for k, sid in enumerate(ids["edges"]):
        edge = net.getEdge(sid)
        assert edge.getFromNode().getID() == ids["junctions"][network.edge_from[k]]
        assert edge.getToNode().getID() == ids["junctions"][network.edge_to[k]]
        assert edge.getLaneNumber() == network.edge_lanes[k]
        assert edge.getLength() == pytest.approx(float(network.edge_length[k]), rel=1e-3)
        assert edge.getSpeed() == pytest.approx(float(network.edge_speed[k]), rel=1e-3)
    for i, sid in enumerate(ids["junctions"]):
        np.testing.assert_allclose(net.getNode(sid).getCoord(), network.node_xy[i], atol=0.01)
    lights = {tl.getID() for tl in net.getTrafficLights()}
    assert lights == {ids["junctions"][i] for i in np.nonzero(network.node_signalized)[0]}


def test_sumo_cars_fill_edges_as_our_storage_counts(exported):
    # Edge storage (sim.network) counts SUMO's jammed cars: n cars and n - 1 gaps per lane. A car of
    # another length or gap in the export would make the two simulators hold different queues.
    out, paths = exported
    network, _, _ = load_scenario("oakland", "moderate", n_agents=4)
    (car,) = ET.parse(paths["routes"]).getroot().iter("vType")
    length, gap = float(car.get("length")), float(car.get("minGap"))
    assert length + gap == JAM_SPACING_M
    per_lane = network.edge_storage // network.edge_lanes
    fits = per_lane * length + (per_lane - 1) * gap <= network.edge_length + 1e-3
    assert np.all(fits | (per_lane == 1))  # at least one car, even on a link shorter than a car
    assert np.all((per_lane + 1) * length + per_lane * gap > network.edge_length)  # and no more than fit


def test_sumo_runs_the_exported_scenario(exported):
    libsumo = pytest.importorskip("libsumo")
    out, paths = exported
    libsumo.start(["sumo", "-c", str(paths["config"])])
    try:
        arrived = set()
        for _ in range(900):
            libsumo.simulationStep()
            arrived |= set(libsumo.simulation.getArrivedIDList())
    finally:
        libsumo.close()
    assert any(v.startswith("bg") for v in arrived)  # background flows run end to end
    assert any(v.startswith("agent") for v in arrived)  # agents' trips reach their destinations


def test_signal_programs_match_ours(exported):
    """SUMO's program for every signalised junction shows our colours second by second.

    Green is 'g' (green, yield to conflicting green links): with 'G' two approaches that
    merge into one lane collide in SUMO; our simulator has no conflicts inside junctions.
    """
    libsumo = pytest.importorskip("libsumo")
    sumolib = pytest.importorskip("sumolib")
    out, paths = exported
    network, _, _ = load_scenario("oakland", "moderate", n_agents=4)
    net = sumolib.net.readNet(str(paths["net"]))
    approach = {
        tls.getID(): np.array([int(lane.getEdge().getID()[1:]) for lane, _, _ in sorted(tls.getConnections(), key=lambda c: c[2])])
        for tls in net.getTrafficLights()
    }
    assert len(approach) == int(network.node_signalized.sum()) > 0
    libsumo.start(["sumo", "-c", str(paths["config"])])
    try:
        compared = 0
        for _ in range(2 * int(network.signal_cycle.max())):
            libsumo.simulationStep()
            t = int(libsumo.simulation.getTime())
            for tls_id, edges in approach.items():
                sumo_green = np.array([c in "Gg" for c in libsumo.trafficlight.getRedYellowGreenState(tls_id)])
                # The state reported at t governed the move t-1 -> t, as our tick at t-1 does.
                phase = (t - 1 + network.signal_offset[edges]) % network.signal_cycle[edges]
                start = network.signal_green_start[edges]
                ours = (phase >= start) & (phase < start + network.signal_green_dur[edges])
                np.testing.assert_array_equal(sumo_green, ours, err_msg=f"{tls_id} at t={t}")
                compared += len(edges)
    finally:
        libsumo.close()
    assert compared > 100


def test_every_turn_we_allow_exists_in_sumo(exported):
    sumolib = pytest.importorskip("sumolib")
    out, paths = exported
    network, _, _ = load_scenario("oakland", "moderate", n_agents=4)
    net = sumolib.net.readNet(str(paths["net"]))
    for k in range(network.n_edges):
        sumo_next = {e.getID() for e in net.getEdge(f"e{k}").getOutgoing()}
        ours = {f"e{f}" for f in network.out_edges[network.edge_to[k]] if f >= 0}
        assert ours <= sumo_next, f"e{k}: SUMO lacks turns {ours - sumo_next}"


def test_missing_sumo_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_sumo(name, *args, **kwargs):
        if name == "sumo":
            raise ImportError("no sumo")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sumo)
    with pytest.raises(SumoNotInstalled, match=r"reled-jax\[sumo\]"):
        sumo_binary("netconvert")
