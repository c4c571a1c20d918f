"""Export a scenario to SUMO: `python -m sim.export_sumo --scenario S --regime R --out DIR`.

Writes the exact network the JAX simulator uses as SUMO plain XML (one SUMO
junction per junction, one SUMO edge per directed edge, with our lengths,
speeds and lane counts; junctions we signalise become traffic lights), builds
`<scenario>.net.xml` with `netconvert` from the `eclipse-sumo` package, and
writes the 1:1 id map (`idmap.json`: our index -> SUMO id), the demand
(`<scenario>.rou.xml`: the agents' trips, and background flows over the same
origin-destination set with the same weights) and a `.sumocfg`. Hong Kong
drives on the left (`--lefthand`).

Background demand: the JAX simulator keeps `n_background` vehicles in the
network by re-injecting each arrival at a new OD origin. SUMO gets Poisson
flows whose total rate keeps the same number on the road at free flow:
rate_k = n_background * w_k / sum_j (w_j * T_j), with T the free-flow trip time.
Signal timing is netconvert's static default for now (calibrating it against
ours is part of the fidelity work still to do).
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

from sim.network import RoadNetwork
from sim.scenarios import REGIMES, SCENARIOS, load_scenario

LEFTHAND = {"hongkong"}
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


def write_plain_xml(network: RoadNetwork, out: Path, name: str) -> tuple[Path, Path]:
    nodes = [
        f'  <node id="{junction_id(i)}" x="{x:.2f}" y="{y:.2f}" type="{"traffic_light" if network.node_signalized[i] else "priority"}"/>'
        for i, (x, y) in enumerate(network.node_xy)
    ]
    edges = [
        f'  <edge id="{edge_id(k)}" from="{junction_id(int(network.edge_from[k]))}" to="{junction_id(int(network.edge_to[k]))}" '
        f'numLanes="{int(network.edge_lanes[k])}" speed="{float(network.edge_speed[k]):.3f}" length="{float(network.edge_length[k]):.2f}"/>'
        for k in range(network.n_edges)
    ]
    nod, edg = out / f"{name}.nod.xml", out / f"{name}.edg.xml"
    nod.write_text("<nodes>\n" + "\n".join(nodes) + "\n</nodes>\n")
    edg.write_text("<edges>\n" + "\n".join(edges) + "\n</edges>\n")
    return nod, edg


def build_net(network: RoadNetwork, out: Path, name: str, lefthand: bool) -> Path:
    """Plain XML -> <name>.net.xml with netconvert; coordinates, ids and junctions kept as ours."""
    nod, edg = write_plain_xml(network, out, name)
    net = out / f"{name}.net.xml"
    cmd = [
        sumo_binary("netconvert"), "--node-files", str(nod), "--edge-files", str(edg), "--output-file", str(net),
        "--offset.disable-normalization", "true", "--geometry.remove", "false", "--junctions.join", "false",
        "--tls.guess", "false", "--no-warnings", "true",
    ]
    if lefthand:
        cmd.append("--lefthand")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not net.exists():
        raise RuntimeError(f"netconvert failed for {name} (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return net


def write_demand(network: RoadNetwork, params, out: Path, name: str, od_weight: np.ndarray, n_background: int, t_max: int) -> Path:
    origin, dest = np.asarray(params.agent_origin), np.asarray(params.agent_dest)
    depart = np.asarray(params.agent_depart)
    od_o, od_d = np.asarray(params.od_origin), np.asarray(params.od_dest)
    trip_time = network.shortest_time[od_o, od_d]
    rate = n_background * od_weight / np.sum(od_weight * trip_time)
    lines = ['<routes>', '  <vType id="car" length="5" minGap="2.5" maxSpeed="50"/>']
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


def export(scenario: str, regime: str, out: Path, n_agents: int = 10, seed: int = 0) -> dict:
    """Everything SUMO needs for one scenario and regime; returns the written paths."""
    network, env, params = load_scenario(scenario, regime, n_agents=n_agents, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{scenario}-{regime}"
    net = build_net(network, out, name, lefthand=scenario in LEFTHAND)
    od_table = np.asarray(params.od_table)
    od_weight = np.bincount(od_table, minlength=len(np.asarray(params.od_origin))).astype(float)
    rou = write_demand(network, params, out, name, od_weight, env.n_background, params.t_max)
    idmap = out / "idmap.json"
    idmap.write_text(json.dumps({
        "junctions": [junction_id(i) for i in range(network.n_nodes)],
        "edges": [edge_id(k) for k in range(network.n_edges)],
        "agents": [f"agent{i}" for i in range(env.n_agents)],
    }))
    cfg = out / f"{name}.sumocfg"
    cfg.write_text(
        "<configuration>\n"
        f"  <input><net-file value={quoteattr(net.name)}/><route-files value={quoteattr(rou.name)}/></input>\n"
        f"  <time><begin value=\"0\"/><end value=\"{params.t_max}\"/><step-length value=\"1\"/></time>\n"
        "  <routing><junction-taz value=\"true\"/></routing>\n"
        "  <report><no-warnings value=\"true\"/><no-step-log value=\"true\"/></report>\n"
        "</configuration>\n"
    )
    return {"net": net, "routes": rou, "config": cfg, "idmap": idmap}


@dataclasses.dataclass(frozen=True)
class Args:
    scenario: str = "hongkong"
    regime: str = "moderate"
    out: str = "sumo"
    n_agents: int = 10
    seed: int = 0


def main(args: Args) -> None:
    if args.scenario not in SCENARIOS or args.regime not in REGIMES:
        raise SystemExit(f"choose --scenario from {sorted(SCENARIOS)} and --regime from {sorted(REGIMES)}")
    try:
        paths = export(args.scenario, args.regime, Path(args.out), args.n_agents, args.seed)
    except SumoNotInstalled as err:
        raise SystemExit(str(err)) from None
    for kind, path in paths.items():
        print(f"{kind:7s} {path}")


if __name__ == "__main__":
    main(tyro.cli(Args))
