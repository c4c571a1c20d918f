"""How faithful is the JAX simulator to SUMO? Same demand, same policies, both simulators.

    python -m benchmarks.fidelity [--episodes 5] [--checkpoints runs/A/checkpoint.npz ...]

For each scenario and regime, the shortest-time and random policies, and every
checkpoint given for that scenario and regime, run the same episodes in both
simulators (reled_jax.validate_sumo.compare: same keys, so the same initial
traffic). Free flow is the shortest-time policy with no background traffic.
Metrics and goals (issue 5):

* free-flow travel time error |ours - SUMO| / SUMO <= 5 %;
* mean travel time error <= 20 % for every policy in both regimes;
* Spearman rank correlation of per-agent travel times >= 0.8 for deterministic
  policies, judged on each agent's mean over the episodes (which trips are slow
  and which fast); the correlation over single (episode, agent) pairs, where one
  red light more or less reorders trips, is reported beside it. Random policies
  make different choices in the two simulators, so they are not judged;
* the policies' ranking by mean travel time is the same in both simulators.

Writes benchmarks/results/fidelity.json and fidelity.png, and prints the
Markdown table that docs/sumo.md quotes.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import tyro

from benchmarks.common import RESULTS, machine, write_json
from reled_jax.checkpoint import read_checkpoint
from reled_jax.export_policy import checkpoint_arrays
from reled_jax.validate_sumo import compare, reference_pairs, trained_pair
from sim.env import TrafficModel
from sim.scenarios import load_scenario

GOALS = {"free_flow_error": 0.05, "mean_travel_time_error": 0.20, "spearman": 0.8}


@dataclasses.dataclass(frozen=True)
class Args:
    scenarios: tuple[str, ...] = ("hongkong", "grid")
    regimes: tuple[str, ...] = ("moderate", "congested")
    episodes: int = 5
    seed: int = 12345
    n_agents: int = 10
    checkpoints: tuple[str, ...] = ()  # trained policies; each joins the cell of its own scenario and regime
    traffic: TrafficModel = TrafficModel()  # the simulator's model (e.g. --traffic.turn-delay-s 0 --traffic.teleport-s 120: before issue 21)
    out: str = str(RESULTS / "fidelity.json")


def checkpoint_policies(paths, scenario: str, regime: str, n_nodes: int, m_out: int) -> dict:
    policies = {}
    for path in paths:
        ck = read_checkpoint(path)
        if (ck["run"]["scenario"], ck["run"]["regime"]) == (scenario, regime):
            run, arrays = checkpoint_arrays(ck)
            policies[f"{run['method']} (epoch {run['epoch']})"] = trained_pair(arrays, n_nodes, m_out)
    return policies


def judge(results: dict) -> dict:
    """Per-cell verdicts against GOALS."""
    names = list(results)
    ours = [results[n]["jax"]["travel_time_s"][0] for n in names]
    sumo = [results[n]["sumo"]["travel_time_s"][0] for n in names]
    deterministic = [n for n in names if n != "random"]
    return {
        "mean_travel_time_error": {n: results[n]["travel_time_rel_error"] for n in names},
        "spearman": {n: results[n]["agent_mean_spearman"] for n in deterministic},
        "spearman_pairs": {n: results[n]["travel_time_spearman"] for n in deterministic},
        "ranking_jax": [names[i] for i in np.argsort(ours)],
        "ranking_sumo": [names[i] for i in np.argsort(sumo)],
        "ranking_preserved": bool(np.array_equal(np.argsort(ours), np.argsort(sumo))),
        "meets_travel_time_goal": bool(all(abs(results[n]["travel_time_rel_error"]) <= GOALS["mean_travel_time_error"] for n in names)),
        "meets_spearman_goal": bool(all(results[n]["agent_mean_spearman"] >= GOALS["spearman"] for n in deterministic)),
    }


def shortfalls(cells: dict) -> list[str]:
    """Every goal a cell misses, with its numbers and what the split-half reliabilities say of it: when both
    simulators rank the agents consistently with themselves (split-half rho >= the goal) but not with each
    other, the difference is the model's, and more episodes would not close it; otherwise it is noise."""
    out = []
    for scenario, cell in cells.items():
        free = cell["free_flow"]
        if not free["meets_goal"]:
            out.append(f"{scenario} free flow: travel time {free['error']:+.2%} against SUMO (goal within {GOALS['free_flow_error']:.0%})")
        for regime, verdict in cell["regimes"].items():
            for name, rho in verdict["spearman"].items():
                if rho >= GOALS["spearman"]:
                    continue
                res = verdict["results"][name]
                lo, hi = res["agent_mean_spearman_ci95"]
                half = res["split_half_spearman"]
                reliable = min(half.values()) >= GOALS["spearman"]
                why = (f"model error, not noise: each simulator ranks the agents alike in two halves of the episodes (split-half rho JAX {half['jax']:.2f}, "
                       f"SUMO {half['sumo']:.2f}) but the two rank them differently" if reliable else
                       f"noise as much as model: a simulator's own split-half rho is {min(half.values()):.2f}, so more episodes would narrow it")
                out.append(f"{scenario}/{regime}, {name}: per-agent Spearman rho {rho:.2f} [{lo:.2f}, {hi:.2f}] (goal {GOALS['spearman']:.1f}); {why}")
            for name, err in verdict["mean_travel_time_error"].items():
                if abs(err) > GOALS["mean_travel_time_error"]:
                    out.append(f"{scenario}/{regime}, {name}: mean travel time {err:+.1%} against SUMO (goal within {GOALS['mean_travel_time_error']:.0%})")
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(report["cells"])
    regimes = ["free flow"] + list(next(iter(report["cells"].values()))["regimes"])
    fig, axes = plt.subplots(len(scenarios), len(regimes), figsize=(4.6 * len(regimes), 3.9 * len(scenarios)), squeeze=False)
    for row, scenario in zip(axes, scenarios):
        cell = report["cells"][scenario]
        for ax, regime in zip(row, regimes):
            results = cell["free_flow"]["results"] if regime == "free flow" else cell["regimes"][regime]["results"]
            names = list(results)
            x = np.arange(len(names))
            for offset, sim, colour, label in [(-0.2, "jax", "tab:blue", "JAX simulator"), (0.2, "sumo", "tab:orange", "SUMO")]:
                mean = [results[n][sim]["travel_time_s"][0] for n in names]
                sd = [results[n][sim]["travel_time_s"][1] for n in names]
                ax.bar(x + offset, mean, 0.4, yerr=sd, capsize=3, color=colour, label=label)
            for i, n in enumerate(names):
                err = results[n]["travel_time_rel_error"]
                ok = abs(err) <= (GOALS["free_flow_error"] if regime == "free flow" else GOALS["mean_travel_time_error"])
                top = max(results[n]["jax"]["travel_time_s"][0], results[n]["sumo"]["travel_time_s"][0])
                ax.annotate(f"{err:+.0%}", (i, top), ha="center", va="bottom", fontsize=9, color="green" if ok else "red",
                            xytext=(0, 8), textcoords="offset points")
            ax.set_xticks(x, [n.split(" (")[0] for n in names], fontsize=8)
            ax.set_title(f"{scenario} / {regime}")
            ax.set_ylabel("mean travel time (s)")
            ax.margins(y=0.15)
        row[0].legend(fontsize=8)
    fig.suptitle("JAX simulator vs SUMO: same episodes, same policies (labels: travel time error; green = within goal)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = [
        "| scenario | regime | policy | JAX travel time (s) | SUMO travel time (s) | error | Spearman ρ, agents' means [95 % CI] | ρ, single trips | split-half ρ: JAX / SUMO |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, cell in report["cells"].items():
        rows = [("free flow", cell["free_flow"]["results"])] + [(r, c["results"]) for r, c in cell["regimes"].items()]
        for regime, results in rows:
            for name, r in results.items():
                ci, half = r.get("agent_mean_spearman_ci95", [float("nan")] * 2), r.get("split_half_spearman", {})
                rho = "— | — | —" if name == "random" else (f"{r['agent_mean_spearman']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] | {r['travel_time_spearman']:.2f} | "
                                                             f"{half.get('jax', float('nan')):.2f} / {half.get('sumo', float('nan')):.2f}")
                lines.append(
                    f"| {scenario} | {regime} | {name} | {r['jax']['travel_time_s'][0]:.0f} ± {r['jax']['travel_time_s'][1]:.0f} "
                    f"| {r['sumo']['travel_time_s'][0]:.0f} ± {r['sumo']['travel_time_s'][1]:.0f} | {r['travel_time_rel_error']:+.1%} | {rho} |"
                )
    return "\n".join(lines)


def main(args: Args) -> dict:
    start = time.perf_counter()
    cells = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios:
            network, env, params = load_scenario(scenario, "moderate", n_agents=args.n_agents, n_background=0, traffic=args.traffic)
            print(f"{scenario}: free flow")
            free = compare(network, env, params, reference_pairs(["shortest"], params), episodes=args.episodes, seed=args.seed,
                           sumo_dir=Path(tmp) / f"{network.name}-free", progress=lambda _: None)
            error = free["shortest"]["travel_time_rel_error"]
            cells[scenario] = {"free_flow": {"results": free, "error": error, "meets_goal": abs(error) <= GOALS["free_flow_error"]},
                               "regimes": {}}
            for regime in args.regimes:
                network, env, params = load_scenario(scenario, regime, n_agents=args.n_agents, traffic=args.traffic)
                policies = checkpoint_policies(args.checkpoints, scenario, regime, env.n_nodes, env.m_out)
                policies |= reference_pairs(["shortest", "random"], params)
                print(f"{scenario}/{regime}: {', '.join(policies)}")
                results = compare(network, env, params, policies, episodes=args.episodes, seed=args.seed,
                                  sumo_dir=Path(tmp) / f"{network.name}-{regime}", progress=lambda _: None)
                cells[scenario]["regimes"][regime] = {"results": results, **judge(results)}
                verdict = cells[scenario]["regimes"][regime]
                print("  travel time error " + ", ".join(f"{n} {e:+.1%}" for n, e in verdict["mean_travel_time_error"].items())
                      + "; Spearman " + ", ".join(f"{n} {r:.2f}" for n, r in verdict["spearman"].items())
                      + f"; ranking preserved: {verdict['ranking_preserved']}")
    report = {"config": dataclasses.asdict(args), "goals": GOALS, "cells": cells, "shortfalls": shortfalls(cells), "wall_s": time.perf_counter() - start, "machine": machine()}
    out = Path(args.out)
    write_json(out, report)
    plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.png')} in {report['wall_s']:.0f} s")
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
