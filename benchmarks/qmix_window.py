"""How much of an episode QMIX's paper-budget rollout sees, per agent count (issue 21, Fig. 8).

    python -m benchmarks.qmix_window
    # -> benchmarks/results/qmix_window.json, qmix_window.png

QMIX's paper budget is one environment x `rollout_steps` interaction steps from a fresh reset every
epoch (`--preset paper-1env`, reled_jax/config.py), where IPPO, MAPPO and RELED carry 64 environments
from epoch to epoch and so see whole episodes. An interaction step ends when some agent awaits a
decision, so the more agents, the less simulated time a fixed number of steps covers. This plays that
rollout with the two reference policies (sim/policies.py) and reports, per agent count and policy,
whether the episode ends inside it, the simulator clock at its end (of T_max) and the share of agents
that arrived. The random policy stands in for an exploring one (QMIX's epsilon starts at 1); the
shortest-time policy for one that routes everyone home. Nothing is trained here.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import RESULTS, machine, write_json  # noqa: E402
from reled_jax.config import PRESETS  # noqa: E402
from sim.policies import REFERENCE_POLICIES  # noqa: E402
from sim.scenarios import load_scenario  # noqa: E402


def make_window(env, params, policy, n_steps: int):
    """A pure function key -> (clock [T], episode_done [T], arrived count [T]) of one fresh rollout.

    `info` is read before the environment's auto-reset, so it holds the ending episode's clock and
    arrivals; after the first episode end the rollout goes on into a new one, as QMIX's does."""

    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = env.reset(k_reset, params)

        def one(carry, step_key):
            obs, state = carry
            k_act, k_env = jax.random.split(step_key)
            obs2, state2, _, _, info = env.step(k_env, state, policy(k_act, obs, params), params)
            return (obs2, state2), (info["sim_time"], info["episode_done"], info["arrived"].sum())

        _, out = jax.lax.scan(one, (obs, state), jax.random.split(k_run, n_steps))
        return out

    return jax.jit(jax.vmap(run))


def window(scenario: str, regime: str, n_agents: int, policy: str, n_steps: int, n_keys: int) -> dict:
    _, env, params = load_scenario(scenario, regime, n_agents=n_agents, seed=0)
    clock, done, arrived = (np.asarray(x) for x in make_window(env, params, REFERENCE_POLICIES[policy], n_steps)(
        jax.random.split(jax.random.PRNGKey(0), n_keys)))
    rows = []
    for c, d, a in zip(clock, done, arrived):
        end = int(np.argmax(d)) if d.any() else None  # the first episode's end, if it comes inside the rollout
        last = end if end is not None else n_steps - 1
        rows.append({"episode_end_step": end, "clock_s": int(c[last]), "arrived_share": float(a[last]) / n_agents})
    return {"n_agents": n_agents, "policy": policy, "t_max": int(params.t_max), "keys": rows,
            "ended_share": float(np.mean([r["episode_end_step"] is not None for r in rows])),
            "clock_mean_s": float(np.mean([r["clock_s"] for r in rows])),
            "arrived_share_mean": float(np.mean([r["arrived_share"] for r in rows]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="hongkong")
    parser.add_argument("--regime", default="moderate")
    parser.add_argument("--n-agents", type=int, nargs="+", default=[5, 10, 15, 20, 50, 100, 200])
    parser.add_argument("--keys", type=int, default=5, help="fresh resets per cell (the env's salt and each step's key)")
    parser.add_argument("--out", default=str(RESULTS / "qmix_window.json"))
    args = parser.parse_args()
    n_steps = PRESETS["paper-1env"]["rollout_steps"]
    cells = []
    for n in args.n_agents:
        for policy in ("random", "shortest"):
            cell = window(args.scenario, args.regime, n, policy, n_steps, args.keys)
            cells.append(cell)
            print(f"{n:4d} agents, {policy:8s}: episode ends in {cell['ended_share']:.0%} of rollouts; clock {cell['clock_mean_s']:.0f} s "
                  f"of {cell['t_max']}; arrived {cell['arrived_share_mean']:.0%}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    argv = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out")
    result = {"benchmark": "qmix_window", "command": f"python -m benchmarks.qmix_window {argv}", "commit": commit,
              "scenario": args.scenario, "regime": args.regime, "rollout_steps": n_steps, "machine": machine(), "cells": cells}
    out = Path(args.out)
    write_json(out, result)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for policy, (marker, color) in (("random", ("o", "C0")), ("shortest", ("s", "C1"))):
        mine = [c for c in cells if c["policy"] == policy]
        ax.plot([c["n_agents"] for c in mine], [c["clock_mean_s"] for c in mine], color=color, label=f"{policy} policy")
        for c in mine:  # filled: the episode ended inside the rollout; hollow: the steps ran out first
            ax.plot(c["n_agents"], c["clock_mean_s"], marker, color=color, mfc=color if c["ended_share"] == 1.0 else "white")
    ax.axhline(cells[0]["t_max"], color="grey", lw=1, ls=":", label="episode limit T_max")
    ax.set_xscale("log")
    ax.set_xlabel("agents")
    ax.set_ylabel("simulated seconds reached (mean over resets)")
    ax.set_title(f"QMIX's rollout ({n_steps} steps from a fresh reset): how far into an episode\n"
                 "filled: the episode ended inside it; hollow: the steps ran out first", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
