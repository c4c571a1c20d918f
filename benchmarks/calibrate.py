"""Calibrate the JAX simulator's free parameters (sim.env.TrafficModel) against SUMO.

    python -m benchmarks.calibrate [--episodes 4] [--saturation-flow 0.5 0.7] [--critical-occupancy 0.2 0.4] [--teleport-s 120 180] [--speed-factor 1.0]

The reference is SUMO driving the free-flow shortest-time policy through each
scenario and regime (sim/sumo_run.py, the same initial traffic per episode key);
that policy ignores the observation, so SUMO's travel times do not depend on our
parameters and are measured once. Our simulator then runs the same episodes for
every point of the grid, and each point is scored by the mean absolute relative
error of the mean travel time over the (scenario, regime) cells, free flow (no
background traffic) included, plus `--rho-weight` times the mean shortfall of the
per-agent Spearman rho (agents' mean travel times ranked in both simulators, as
benchmarks/fidelity.py ranks them) below 1. Every point records each cell's rho,
so the trade-off between mean times and ranking is read from the JSON. The parameters
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
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import tyro

from benchmarks.common import RESULTS, machine, write_json
from reled_jax.evaluate import evaluate_policies
from reled_jax.validate_sumo import rank_correlation
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
    wide_turn_frac: tuple[float, ...] = (1.0,)  # share of the turn delay a wide turn costs (TrafficModel)
    turn_regain_m: tuple[float, ...] = (0.0,)  # edges shorter than this charge a share of the turn delay (TrafficModel)
    accel_mps2: tuple[float, ...] = (0.0,)  # per-vehicle speed state: acceleration towards the edge's speed, 0 = none (TrafficModel)
    turn_speed_mps: tuple[float, ...] = (8.0,)  # with a speed state, the most a vehicle leaves a turn with (TrafficModel)
    queue_exit_speed_mps: tuple[float, ...] = (0.0,)  # with a speed state, the speed a vehicle behind a queue's head leaves at (TrafficModel)
    reuse_sumo: str | None = None  # a calibration JSON of the same scenarios, regimes, episodes, seed and agents: take SUMO's times from it
    rho_weight: float = 0.0  # weight of the per-agent ranking in the objective: 0 = mean travel times alone
    out: str = str(RESULTS / "calibration.json")


def load(scenario: str, regime: str, n_agents: int, traffic: TrafficModel = TrafficModel()):
    """A calibration cell; regime "free" is the moderate scenario without background traffic."""
    if regime == "free":
        return load_scenario(scenario, "moderate", n_agents=n_agents, n_background=0, traffic=traffic)
    return load_scenario(scenario, regime, n_agents=n_agents, traffic=traffic)


def sumo_reference(args: Args, workdir: Path) -> dict:
    """SUMO's travel times of the shortest-time policy per cell: the mean, and each agent's mean over the episodes."""
    reference = {}
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.episodes)
    for scenario, regime in itertools.product(args.scenarios, args.regimes):
        network, env, params = load(scenario, regime, args.n_agents)
        runner = SumoRouteChoice(network, env, params, workdir / f"{network.name}-{regime}")
        travel = np.stack([runner.run_episode(shortest_time_numpy(params), k, sumo_seed=e).travel_time for e, k in enumerate(keys)])
        reference[f"{scenario}/{regime}"] = {"mean": float(travel.mean()), "agents": travel.mean(0).tolist()}
        print(f"SUMO {scenario}/{regime}: shortest-time policy, mean travel time {travel.mean():.1f} s")
    return reference


def reused_reference(args: Args) -> dict:
    """SUMO's times from an earlier calibration (`--reuse-sumo`), which must have run the same cells on the same keys.
    SUMO's side does not depend on our parameters, so this only skips re-running it; a file of other keys is refused."""
    earlier = json.loads(Path(args.reuse_sumo).read_text())
    same = ("scenarios", "regimes", "episodes", "seed", "n_agents")
    ours = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(args).items()}
    if any(earlier["config"][k] != ours[k] for k in same):
        theirs = ", ".join(f"{k}={earlier['config'][k]}" for k in same)
        raise SystemExit(f"--reuse-sumo {args.reuse_sumo} ran other cells or keys ({theirs}); "
                         "run without --reuse-sumo, or give it a calibration of the same " + ", ".join(same))
    return {cell: {"mean": mean, "agents": earlier["sumo_agent_travel_time_s"][cell]} for cell, mean in earlier["sumo_travel_time_s"].items()}


def jax_travel_time(scenario: str, regime: str, traffic: TrafficModel, args: Args) -> dict:
    """Ours on the same keys, as `sumo_reference` has it."""
    _, env, params = load(scenario, regime, args.n_agents, traffic)
    policy = {"shortest": lambda k, o: shortest_time_policy(k, o, params)}
    result = evaluate_policies(env, params, policy, args.episodes, args.seed, max_steps=3000)["shortest"]
    return {"mean": result["travel_time_s"][0], "agents": np.mean(result["per_agent"]["travel_time_s"], axis=0).tolist()}


def score(ours: dict, reference: dict, rho_weight: float) -> dict:
    """One grid point's errors against SUMO: per cell, the relative error of the mean travel time and the
    Spearman rho of the agents' mean times; the objective is the mean |error| plus `rho_weight` times the
    mean of (1 - rho) over the cells (a cell whose agents all take one time ranks nothing and counts 0)."""
    errors = {cell: (ours[cell]["mean"] - ref["mean"]) / ref["mean"] for cell, ref in reference.items()}
    rho = {cell: rank_correlation(np.array(ours[cell]["agents"]), np.array(ref["agents"])) for cell, ref in reference.items()}
    shortfall = [1.0 - r for r in rho.values() if np.isfinite(r)]
    objective = float(np.mean(np.abs(list(errors.values())))) + rho_weight * (float(np.mean(shortfall)) if shortfall else 0.0)
    return {"rel_error": errors, "spearman": rho, "objective": objective}


def plot(rows: list[dict], args: Args, path: Path) -> None:
    """Heat maps over the first two parameters the grid varies, at the best point over the others in each cell:
    the objective, and the lowest per-agent rho of the loaded cells at that point (what the mean hides)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = [("accel_mps2", args.accel_mps2, "acceleration (m/s^2, 0 = no speed state)"), ("turn_speed_mps", args.turn_speed_mps, "turn speed (m/s)"),
            ("queue_exit_speed_mps", args.queue_exit_speed_mps, "queue exit speed (m/s)"),
            ("wide_turn_frac", args.wide_turn_frac, "wide turn / tight turn delay"), ("turn_regain_m", args.turn_regain_m, "turn regain distance (m)"),
            ("turn_delay_s", args.turn_delay_s, "turn delay (s)"), ("startup_loss_s", args.startup_loss_s, "start-up loss (s)"),
            ("teleport_s", args.teleport_s, "gridlock release teleport_s (s)"), ("saturation_flow", args.saturation_flow, "saturation flow (veh/s/lane)"),
            ("critical_occupancy", args.critical_occupancy, "critical occupancy"), ("min_speed_frac", args.min_speed_frac, "jam speed / free speed")]
    varied = [a for a in axes if len(a[1]) > 1] + [a for a in axes if len(a[1]) == 1]
    (xk, xs, xl), (yk, ys, yl) = varied[0], varied[1]
    best = [[min((r for r in rows if (r["traffic"][xk], r["traffic"][yk]) == (x, y)), key=lambda r: r["objective"]) for x in xs] for y in ys]
    objective = np.array([[r["objective"] for r in row] for row in best])
    loaded_rho = np.array([[min((v for c, v in r["spearman"].items() if not c.endswith("/free")), default=np.nan) for r in row] for row in best])
    as_share = args.rho_weight == 0
    panels = [(objective * 100, "viridis_r", "mean |travel time error| vs SUMO (%)", lambda v: f"{v:.1f}%") if as_share else
              (objective, "viridis_r", f"mean |error| + {args.rho_weight:g} x mean (1 - rho)", lambda v: f"{v:.3f}"),
              (loaded_rho, "viridis", "lowest per-agent Spearman rho, loaded cells", lambda v: f"{v:.2f}")]
    fig, axs = plt.subplots(1, 2, figsize=(2.4 * len(xs) + 6.0, 0.9 * len(ys) + 2.8))
    for ax, (values, cmap, label, fmt) in zip(axs, panels):
        image = ax.imshow(values, origin="lower", cmap=cmap, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, fmt(v), ha="center", va="center", color="white" if (v < np.nanmean(values)) == (cmap == "viridis") else "black")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        fig.colorbar(image, ax=ax, label=label)
    fig.suptitle("Calibration of the JAX simulator against SUMO (shortest-time policy; best point over the other parameters)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    start = time.perf_counter()
    if args.reuse_sumo:
        reference = reused_reference(args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            reference = sumo_reference(args, Path(tmp))
    rows = []
    # Every TrafficModel parameter has an Args field of its name holding the values to try, in the model's order.
    names = [f.name for f in dataclasses.fields(TrafficModel)]
    grid = list(itertools.product(*(getattr(args, name) for name in names)))
    for n, values in enumerate(grid):
        traffic = TrafficModel(**dict(zip(names, values)))
        ours = {cell: jax_travel_time(*cell.split("/"), traffic, args) for cell in reference}
        scored = score(ours, reference, args.rho_weight)
        rows.append({"traffic": dataclasses.asdict(traffic), "jax_travel_time_s": {c: o["mean"] for c, o in ours.items()},
                     "jax_agent_travel_time_s": {c: o["agents"] for c, o in ours.items()}, **scored})
        print(f"[{n + 1}/{len(grid)}] {traffic}: " + ", ".join(f"{c} {e:+.1%} (rho {scored['spearman'][c]:.2f})" for c, e in scored["rel_error"].items())
              + f" -> {scored['objective']:.3f}")
    best = min(rows, key=lambda r: r["objective"])
    out = Path(args.out)
    report = {"config": dataclasses.asdict(args), "sumo_travel_time_s": {c: r["mean"] for c, r in reference.items()},
              "sumo_agent_travel_time_s": {c: r["agents"] for c, r in reference.items()}, "grid": rows, "best": best,
              "wall_s": time.perf_counter() - start, "machine": machine()}
    write_json(out, report)
    plot(rows, args, out.with_suffix(".png"))
    print(f"best {best['traffic']} (objective {best['objective']:.3f}); wrote {out} and {out.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
