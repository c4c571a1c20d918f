"""Simulation speed, SUMO vs the JAX simulator, on the same scenario and vehicle count.

    python -m benchmarks.vs_sumo [--scenario hongkong] [--regime moderate] [--n-envs 1 64 1024]

SUMO (libsumo, in process), two loops over `--seconds` simulated seconds from the
same initial traffic as the JAX reset:
* `read_roads`: every second, step and read every vehicle's road
  (vehicle.getRoadID), the least an RL environment must do; background vehicles
  that arrive depart again, as in the JAX simulator;
* `agents`: the full validation environment (sim/sumo_run.py) with the agents
  choosing at junctions by the shortest-time policy.
JAX: benchmarks/env_throughput.bench for each environment count, both the pure
simulation (`tick`) and decision-driven env steps with auto-reset (`step`).
All in vehicle-steps/s (vehicles x simulated seconds per wall second), with the
JAX/SUMO ratio. Writes benchmarks/results/vs_sumo_<device>.json and .png.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import tyro

from benchmarks.common import RESULTS, machine, write_json
from benchmarks.env_throughput import bench
from sim.scenarios import ScenarioChoice, load_scenario
from sim.sumo_run import SumoRouteChoice, shortest_time_numpy



@dataclasses.dataclass(frozen=True)
class Args(ScenarioChoice):
    seconds: int = 1800  # simulated seconds of each SUMO run
    n_envs: tuple[int, ...] = (1, 64, 1024)
    ticks: int = 200  # per environment, JAX tick benchmark
    steps: int = 50  # per environment, JAX step benchmark
    repeats: int = 3
    out: str = ""  # default benchmarks/results/vs_sumo_<cpu|gpu>.json


def sumo_read_roads(runner: SumoRouteChoice, key: jax.Array, seconds: int) -> dict:
    """Plain SUMO stepping, every vehicle's road read each second."""
    sumo = runner.sumo
    _, state = jax.device_get(runner._reset(key, runner.params))
    rng = np.random.default_rng(0)
    runner.start(0)
    try:
        # Agents drive their free-flow routes too, so SUMO carries as many vehicles as the JAX environment.
        for i in range(runner.env.n_agents):
            runner.add_vehicle(f"agent{i}", runner.route_edges(int(runner.origin[i]), int(runner.dest[i])), depart_pos="base")
        runner.insert_background(state)
        vehicle_steps, roads = 0, 0
        t0 = time.perf_counter()
        for _ in range(seconds):
            sumo.simulationStep()
            ids = sumo.vehicle.getIDList()
            roads += len([sumo.vehicle.getRoadID(v) for v in ids])
            vehicle_steps += len(ids)
            for vid in sumo.simulation.getArrivedIDList():
                if vid.startswith("bg"):
                    runner.reinject(vid, rng)
        wall = time.perf_counter() - t0
    finally:
        sumo.close()
    return {"seconds": seconds, "wall_s": wall, "vehicle_steps": vehicle_steps, "vehicle_steps_per_s": vehicle_steps / wall,
            "mean_vehicles": vehicle_steps / seconds, "roads_read": roads}


def sumo_agents(runner: SumoRouteChoice, key: jax.Array) -> dict:
    """The validation environment: agents steered at junctions by the shortest-time policy."""
    episode = runner.run_episode(shortest_time_numpy(runner.params), key)
    return {"seconds": episode.sim_seconds, "wall_s": episode.wall_s, "vehicle_steps": episode.vehicle_steps,
            "vehicle_steps_per_s": episode.vehicle_steps / episode.wall_s, "decisions": int(episode.decisions.sum())}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = ["SUMO\nread roads", "SUMO\nagents"]
    values = [report["sumo"]["read_roads"]["vehicle_steps_per_s"], report["sumo"]["agents"]["vehicle_steps_per_s"]]
    colours = ["tab:orange", "tab:orange"]
    for row in report["jax"]:
        for kind, colour in (("tick", "tab:blue"), ("step", "tab:cyan")):
            labels.append(f"JAX {kind}\n{row['n_envs']} env{'s' if row['n_envs'] > 1 else ''}")
            values.append(row[kind]["vehicle_steps_per_s"])
            colours.append(colour)
    ax.bar(range(len(values)), values, color=colours)
    ax.set_yscale("log")
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("vehicle-steps per second (log)")
    for i, v in enumerate(values):
        ax.annotate(f"{v / values[0]:.3g}x", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_title(f"{report['scenario']}/{report['regime']}, {report['vehicles']} vehicles, {report['device']} (labels: ratio to SUMO)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    args = args.check_scenario()
    network, env, params = load_scenario(args.scenario, args.regime, n_agents=args.n_agents)
    device = jax.devices()[0]
    key = jax.random.PRNGKey(0)
    with tempfile.TemporaryDirectory() as tmp:
        runner = SumoRouteChoice(network, env, params, Path(tmp))
        sumo = {"read_roads": sumo_read_roads(runner, key, args.seconds), "agents": sumo_agents(runner, key)}
    print(f"SUMO read roads: {sumo['read_roads']['vehicle_steps_per_s']:,.0f} vehicle-steps/s; "
          f"with agents: {sumo['agents']['vehicle_steps_per_s']:,.0f}")
    rows = []
    for n_envs in args.n_envs:
        row = bench(args.scenario, args.regime, n_envs, args.ticks, args.steps, args.repeats)
        for kind in ("tick", "step"):
            row[kind]["ratio_to_sumo"] = row[kind]["vehicle_steps_per_s"] / sumo["read_roads"]["vehicle_steps_per_s"]
        rows.append(row)
        print(f"JAX {n_envs:5d} envs: tick {row['tick']['vehicle_steps_per_s']:,.0f} ({row['tick']['ratio_to_sumo']:.1f}x SUMO), "
              f"step {row['step']['vehicle_steps_per_s']:,.0f} ({row['step']['ratio_to_sumo']:.1f}x)", flush=True)
    report = {
        "benchmark": "vs_sumo",
        "scenario": args.scenario,
        "regime": args.regime,
        "vehicles": env.n_vehicles,
        **machine(),
        "config": dataclasses.asdict(args),
        "sumo": sumo,
        "jax": rows,
    }
    out = Path(args.out) if args.out else RESULTS / f"vs_sumo_{device.platform}.json"
    write_json(out, report)
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
