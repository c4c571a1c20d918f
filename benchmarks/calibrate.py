"""Calibrate the JAX simulator's free parameters (sim.env.TrafficModel) against SUMO.

    python -m benchmarks.calibrate [--episodes 4] [--saturation-flow 0.5 0.7] [--critical-occupancy 0.2 0.4] [--teleport-s 120 180] [--speed-factor 1.0]

The reference is SUMO driving the free-flow shortest-time policy through each
scenario and regime (sim/sumo_run.py, the same initial traffic per episode key);
that policy ignores the observation, so SUMO's travel times do not depend on our
parameters and are measured once. Our simulator then runs the same episodes for
every point of the grid, and each point is scored by the mean absolute relative
error of the mean travel time over the (scenario, regime) cells, free flow (no
background traffic) included. The parameters
are TrafficModel's: saturation flow, critical occupancy, jam speed and the
gridlock release time `teleport_s` and free-speed factor (SUMO's own is 300 s, but SUMO also untangles
queues by using its lanes, which ours cannot; releasing earlier stands in for that). The keys differ
from benchmarks/fidelity.py's, so fidelity is measured on episodes the
calibration did not see. Writes benchmarks/results/calibration.json and .png;
the best point becomes TrafficModel's default by hand (with the JSON cited).
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import tyro

from benchmarks.common import RESULTS, machine, write_json
from reled_jax.evaluate import evaluate_policies
from sim.env import TrafficModel
from sim.policies import shortest_time_policy
from sim.scenarios import load_scenario
from sim.sumo_run import SumoRouteChoice, shortest_time_numpy



@dataclasses.dataclass(frozen=True)
class Args:
    scenarios: tuple[str, ...] = ("hongkong", "grid")
    regimes: tuple[str, ...] = ("free", "moderate", "congested")  # free: no background traffic
    episodes: int = 4
    seed: int = 777  # calibration keys; fidelity.py evaluates on others
    n_agents: int = 10
    saturation_flow: tuple[float, ...] = (0.5, 0.7)
    critical_occupancy: tuple[float, ...] = (0.2, 0.4)
    min_speed_frac: tuple[float, ...] = (0.05,)
    teleport_s: tuple[int, ...] = (120, 180)
    speed_factor: tuple[float, ...] = (1.0,)
    turn_delay_s: tuple[float, ...] = (0.0,)  # seconds a turn at a junction costs the turning vehicle (issue 21)
    startup_loss_s: tuple[float, ...] = (0.0,)  # seconds a start from a stop costs the starting vehicle (issue 21)
    out: str = str(RESULTS / "calibration.json")


def load(scenario: str, regime: str, n_agents: int, traffic: TrafficModel = TrafficModel()):
    """A calibration cell; regime "free" is the moderate scenario without background traffic."""
    if regime == "free":
        return load_scenario(scenario, "moderate", n_agents=n_agents, n_background=0, traffic=traffic)
    return load_scenario(scenario, regime, n_agents=n_agents, traffic=traffic)


def sumo_reference(args: Args, workdir: Path) -> dict:
    """SUMO's mean travel time of the shortest-time policy per cell (and its per-agent array)."""
    reference = {}
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.episodes)
    for scenario, regime in itertools.product(args.scenarios, args.regimes):
        network, env, params = load(scenario, regime, args.n_agents)
        runner = SumoRouteChoice(network, env, params, workdir / f"{network.name}-{regime}")
        travel = np.stack([runner.run_episode(shortest_time_numpy(params), k, sumo_seed=e).travel_time for e, k in enumerate(keys)])
        reference[f"{scenario}/{regime}"] = float(travel.mean())
        print(f"SUMO {scenario}/{regime}: shortest-time policy, mean travel time {travel.mean():.1f} s")
    return reference


def jax_travel_time(scenario: str, regime: str, traffic: TrafficModel, args: Args) -> float:
    _, env, params = load(scenario, regime, args.n_agents, traffic)
    policy = {"shortest": lambda k, o: shortest_time_policy(k, o, params)}
    result = evaluate_policies(env, params, policy, args.episodes, args.seed, max_steps=3000)
    return result["shortest"]["travel_time_s"][0]


def plot(rows: list[dict], args: Args, path: Path) -> None:
    """Heat map of the objective over the first two parameters the grid varies (the best over the others in each cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = [("turn_delay_s", args.turn_delay_s, "turn delay (s)"), ("startup_loss_s", args.startup_loss_s, "start-up loss (s)"),
            ("teleport_s", args.teleport_s, "gridlock release teleport_s (s)"), ("saturation_flow", args.saturation_flow, "saturation flow (veh/s/lane)"),
            ("critical_occupancy", args.critical_occupancy, "critical occupancy"), ("min_speed_frac", args.min_speed_frac, "jam speed / free speed")]
    varied = [a for a in axes if len(a[1]) > 1] + [a for a in axes if len(a[1]) == 1]
    (xk, xs, xl), (yk, ys, yl) = varied[0], varied[1]
    grid = np.array([[min(r["objective"] for r in rows if (r["traffic"][xk], r["traffic"][yk]) == (x, y)) for x in xs] for y in ys])
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 3.5, 0.9 * len(ys) + 2.8))
    image = ax.imshow(grid * 100, origin="lower", cmap="viridis_r", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.1%}", ha="center", va="center", color="white" if v > grid.mean() else "black")
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    fig.colorbar(image, ax=ax, label="mean |travel time error| vs SUMO (%)")
    ax.set_title("Calibration of the JAX simulator against SUMO (shortest-time policy)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reference = sumo_reference(args, Path(tmp))
    rows = []
    grid = list(itertools.product(args.saturation_flow, args.critical_occupancy, args.min_speed_frac, args.teleport_s, args.speed_factor,
                                  args.turn_delay_s, args.startup_loss_s))
    for n, (sf, co, msf, tp, spf, td, sl) in enumerate(grid):
        traffic = TrafficModel(saturation_flow=sf, critical_occupancy=co, min_speed_frac=msf, teleport_s=tp, speed_factor=spf, turn_delay_s=td, startup_loss_s=sl)
        ours = {cell: jax_travel_time(*cell.split("/"), traffic, args) for cell in reference}
        errors = {cell: (ours[cell] - reference[cell]) / reference[cell] for cell in reference}
        objective = float(np.mean(np.abs(list(errors.values()))))
        rows.append({"traffic": dataclasses.asdict(traffic), "jax_travel_time_s": ours, "rel_error": errors, "objective": objective})
        print(f"[{n + 1}/{len(grid)}] {traffic}: " + ", ".join(f"{c} {e:+.1%}" for c, e in errors.items()) + f" -> {objective:.1%}")
    best = min(rows, key=lambda r: r["objective"])
    out = Path(args.out)
    report = {"config": dataclasses.asdict(args), "sumo_travel_time_s": reference, "grid": rows, "best": best,
              "wall_s": time.perf_counter() - start, "machine": machine()}
    write_json(out, report)
    plot(rows, args, out.with_suffix(".png"))
    print(f"best {best['traffic']} (mean |error| {best['objective']:.1%}); wrote {out} and {out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
