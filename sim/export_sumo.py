"""Export a scenario to SUMO: `python -m sim.export_sumo --scenario S --regime R --out DIR`
(S: a built-in name, a scenario file, or `--osm FILE` for an OSM extract).

Writes the exact network the JAX simulator uses as SUMO plain XML (one SUMO
junction per junction, one SUMO edge per directed edge, with our lengths,
speeds and lane counts; junctions we signalise become traffic lights), builds
`<scenario>.net.xml` with `netconvert` from the `eclipse-sumo` package, and
writes the 1:1 id map (`idmap.json`: our index -> SUMO id), the demand
(`<scenario>.rou.xml`: the agents' trips, and background flows over the same
origin-destination set with the same weights) and a `.sumocfg`. A scenario with
`lefthand = true` (Hong Kong) drives on the left (`netconvert --lefthand`).

Background demand: the JAX simulator keeps `n_background` vehicles in the
network by re-injecting each arrival at a new OD origin. SUMO gets Poisson
flows whose total rate keeps the same number on the road at free flow:
rate_k = n_background * w_k / sum_j (w_j * T_j), with T the free-flow trip time.
Junctions are points, as in our simulator (`--no-internal-links`): SUMO adds
no extra distance or curve speed limit inside a junction, while its right of
way between conflicting approaches stays.

Connections: every (incoming edge, outgoing edge) pair our simulator allows at
a junction, U-turns included, is written to `<scenario>.con.xml`, so netconvert
cannot drop a turn an agent may choose.

Signals: `<scenario>.tll.xml` holds one fixed-time program per signalised
junction with our cycle, phase split and offset (SignalConfig): each approach
group is green for `green_s` ('g': yield to conflicting green links, since two
approaches merging into one lane under 'G' collide in SUMO), then yellow ('y', SUMO's clearance, where
ours is all-red) for `clearance_s`. SUMO runs a program at position
(t - offset) mod cycle, ours at (t + offset) mod cycle, so the exported offset
is the negated one. The state SUMO reports after stepping to second t is the one
that governed the move from t-1 to t, as our tick at t-1 does;
`tests/test_sumo_export.py` checks the two agree link by link over two cycles.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import tyro

from sim.network import CAR_LENGTH_M, MIN_GAP_M, RoadNetwork
from sim.osm import NetworkError
from sim.scenarios import ScenarioChoice, load_scenario

SUMO_EXTRA = "pip install 'reled-jax[sumo]' (eclipse-sumo, libsumo, sumolib)"


class SumoNotInstalled(RuntimeError):
    """SUMO's tools are missing; the message names the extra to install."""


def sumo_binary(name: str) -> str:
    """Path of a SUMO tool (netconvert, sumo) from the eclipse-sumo package, or a clear error."""
    try:
        import sumo  # the eclipse-sumo package
    except ImportError:
        raise SumoNotInstalled(f"SUMO is not installed: {SUMO_EXTRA}") from None
    candidates = [Path(sumo.SUMO_HOME) / "bin" / name, shutil.which(name)]
    for path in candidates:
        if path and Path(path).exists():
            return str(path)
    raise SumoNotInstalled(f"SUMO's {name} was not found under {sumo.SUMO_HOME}: reinstall with {SUMO_EXTRA}")


def junction_id(i: int) -> str:
    return f"n{i}"


def edge_id(k: int) -> str:
    return f"e{k}"


def write_plain_xml(network: RoadNetwork, out: Path, name: str) -> tuple[Path, Path, Path]:
    nodes = [
        f'  <node id="{junction_id(i)}" x="{x:.2f}" y="{y:.2f}" type="{"traffic_light" if network.node_signalized[i] else "priority"}"/>'
        for i, (x, y) in enumerate(network.node_xy)
    ]
    edges = [
        f'  <edge id="{edge_id(k)}" from="{junction_id(int(network.edge_from[k]))}" to="{junction_id(int(network.edge_to[k]))}" '
        f'numLanes="{int(network.edge_lanes[k])}" speed="{float(network.edge_speed[k]):.3f}" length="{float(network.edge_length[k]):.2f}"/>'
        for k in range(network.n_edges)
    ]
    connections = [
        f'  <connection from="{edge_id(k)}" to="{edge_id(int(f))}"/>'
        for k in range(network.n_edges)
        for f in network.out_edges[network.edge_to[k]]
        if f >= 0
    ]
    nod, edg, con = out / f"{name}.nod.xml", out / f"{name}.edg.xml", out / f"{name}.con.xml"
    nod.write_text("<nodes>\n" + "\n".join(nodes) + "\n</nodes>\n")
    edg.write_text("<edges>\n" + "\n".join(edges) + "\n</edges>\n")
    con.write_text("<connections>\n" + "\n".join(connections) + "\n</connections>\n")
    return nod, edg, con


def build_net(network: RoadNetwork, out: Path, name: str) -> Path:
    """Plain XML -> <name>.net.xml with netconvert; coordinates, ids and junctions kept as ours."""
    nod, edg, con = write_plain_xml(network, out, name)
    net = out / f"{name}.net.xml"
    cmd = [
        sumo_binary("netconvert"), "--node-files", str(nod), "--edge-files", str(edg), "--connection-files", str(con),
        "--output-file", str(net),
        "--offset.disable-normalization", "true", "--geometry.remove", "false", "--junctions.join", "false",
        "--tls.guess", "false", "--no-warnings", "true", "--no-internal-links", "true",
    ]
    if network.lefthand:
        cmd.append("--lefthand")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not net.exists():
        raise RuntimeError(f"netconvert failed for {name} (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return net


def signal_colours(network: RoadNetwork, edges: np.ndarray) -> list[str]:
    """SUMO link states for each second of our cycle position (t + offset) mod cycle.

    Link j (approach edge k) is green ('g') while our tick sees it green, yellow for
    the clearance that follows (cycle / 2 - green of a two-phase plan), red otherwise.
    """
    cycle = int(network.signal_cycle[edges[0]])
    start, green = network.signal_green_start[edges], network.signal_green_dur[edges]
    clearance = cycle // 2 - green
    colours = []
    for p in range(cycle):
        since = (p - start) % cycle  # seconds since this approach's green began
        colours.append("".join(np.where(since < green, "g", np.where(since < green + clearance, "y", "r"))))
    return colours


def write_signals(network: RoadNetwork, net_file: Path, out: Path, name: str) -> Path:
    """Fixed-time programs equal to ours for every signalised junction (see module doc)."""
    import sumolib

    net = sumolib.net.readNet(str(net_file))
    edge_index = {edge_id(k): k for k in range(network.n_edges)}
    lines = ["<additional>"]
    for tls in sorted(net.getTrafficLights(), key=lambda x: x.getID()):
        links = sorted((idx, edge_index[lane_in.getEdge().getID()]) for lane_in, _, idx in tls.getConnections())
        if [idx for idx, _ in links] != list(range(len(links))):
            raise RuntimeError(f"traffic light {tls.getID()}: link indices are not 0..{len(links) - 1}")
        edges = np.array([k for _, k in links])
        cycle, offset = int(network.signal_cycle[edges[0]]), int(network.signal_offset[edges[0]])
        colours = signal_colours(network, edges)
        lines.append(f'  <tlLogic id="{tls.getID()}" type="static" programID="reled" offset="{(-offset) % cycle}">')
        begin = 0
        for p in range(1, cycle + 1):
            if p == cycle or colours[p] != colours[begin]:
                lines.append(f'    <phase duration="{p - begin}" state="{colours[begin]}"/>')
                begin = p
        lines.append("  </tlLogic>")
    lines.append("</additional>")
    tll = out / f"{name}.tll.xml"
    tll.write_text("\n".join(lines) + "\n")
    return tll


def write_demand(network: RoadNetwork, params, out: Path, name: str, od_weight: np.ndarray, n_background: int, t_max: int) -> Path:
    origin, dest = np.asarray(params.agent_origin), np.asarray(params.agent_dest)
    depart = np.asarray(params.agent_depart)
    od_o, od_d = np.asarray(params.od_origin), np.asarray(params.od_dest)
    trip_time = network.shortest_time[od_o, od_d]
    rate = n_background * od_weight / np.sum(od_weight * trip_time)
    # The car edge storage is counted in (sim.network): the two simulators must hold the same queues.
    lines = ['<routes>', f'  <vType id="car" length="{CAR_LENGTH_M:g}" minGap="{MIN_GAP_M:g}" maxSpeed="50"/>']
    for i in np.argsort(depart, kind="stable"):
        lines.append(f'  <trip id="agent{i}" type="car" depart="{int(depart[i])}" fromJunction="{junction_id(int(origin[i]))}" toJunction="{junction_id(int(dest[i]))}"/>')
    for k in range(len(od_o)):
        lines.append(
            f'  <flow id="bg{k}" type="car" begin="0" end="{t_max}" period="exp({rate[k]:.6f})" '
            f'fromJunction="{junction_id(int(od_o[k]))}" toJunction="{junction_id(int(od_d[k]))}"/>'
        )
    lines.append("</routes>")
    rou = out / f"{name}.rou.xml"
    rou.write_text("\n".join(lines) + "\n")
    return rou


def export(scenario: str, regime: str, out: Path, n_agents: int | None = None, seed: int = 0) -> dict:
    """Everything SUMO needs for one scenario (built-in name, scenario file or OSM extract) and regime; returns
    the written paths."""
    network, env, params = load_scenario(scenario, regime, n_agents=n_agents, seed=seed)
    return export_network(network, env, params, out, f"{network.name}-{regime}")


def export_network(network: RoadNetwork, env, params, out: Path, name: str) -> dict:
    """Network, signals, demand, id map and config for any (network, env, params) triple."""
    out.mkdir(parents=True, exist_ok=True)
    net = build_net(network, out, name)
    od_table = np.asarray(params.od_table)
    od_weight = np.bincount(od_table, minlength=len(np.asarray(params.od_origin))).astype(float)
    rou = write_demand(network, params, out, name, od_weight, env.n_background, params.t_max)
    tll = write_signals(network, net, out, name)
    idmap = out / "idmap.json"
    idmap.write_text(json.dumps({
        "junctions": [junction_id(i) for i in range(network.n_nodes)],
        "edges": [edge_id(k) for k in range(network.n_edges)],
        "agents": [f"agent{i}" for i in range(env.n_agents)],
    }))
    cfg = out / f"{name}.sumocfg"
    cfg.write_text(
        "<configuration>\n"
        f"  <input><net-file value={quoteattr(net.name)}/><route-files value={quoteattr(rou.name)}/>"
        f"<additional-files value={quoteattr(tll.name)}/></input>\n"
        f"  <time><begin value=\"0\"/><end value=\"{params.t_max}\"/><step-length value=\"1\"/></time>\n"
        "  <routing><junction-taz value=\"true\"/></routing>\n"
        "  <report><no-warnings value=\"true\"/><no-step-log value=\"true\"/></report>\n"
        "</configuration>\n"
    )
    return {"net": net, "routes": rou, "signals": tll, "config": cfg, "idmap": idmap}


@dataclasses.dataclass(frozen=True)
class Args(ScenarioChoice):
    out: str = "sumo"
    seed: int = 0


def main(args: Args) -> None:
    args = args.check_scenario()
    try:
        paths = export(args.scenario, args.regime, Path(args.out), args.n_agents, args.seed)
    except (SumoNotInstalled, NetworkError) as err:
        raise SystemExit(str(err)) from None
    for kind, path in paths.items():
        print(f"{kind:7s} {path}")


if __name__ == "__main__":
    from sim.cli import usage_errors

    with usage_errors():
        main(tyro.cli(Args))
