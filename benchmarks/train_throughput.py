"""Trainer throughput: a paper-budget run's wall-clock, where it goes, and how close it is to the bare simulator.

For each (method, seeds) this runs `reled_jax.train` itself (hongkong/moderate, 10 agents, the
`paper` preset unless told otherwise: 500 epochs x ~1,000 interaction steps = 5 x 10^5) and reads
the run's own timing (summary.json "timing"): probe (sizing the update's rows), compile, compiled
chunks, expert (SED on the host: plans and demonstration rollouts), checkpoints. The chunks are split
into rollout and update by timing the same rollout alone (jitted, seeds vmapped, same shapes).
Measured in the same process: the bare environment's decisions/s at the same number of environments
and the same step mode (random policy), so

    train_over_env_ratio = interaction steps/s of the compiled chunks / bare env decisions/s

says how much of the simulator's speed training keeps (1.0: training costs nothing beside it).
`paper_budget_seconds` is the whole run's wall-clock, compilation included.

    python -m benchmarks.train_throughput                                   # ippo, reled, qmix; 1 and 5 seeds
    python -m benchmarks.train_throughput --methods ippo --seeds 1 --epochs 50   # quick look
    python -m benchmarks.train_throughput --preset default                  # the default (make train) budget
    python -m benchmarks.train_throughput --methods reled --seeds 5 --n-agents 100 200 --epochs 10 \
        --out benchmarks/results/train_throughput_agents.json              # Fig. 8's large counts, projected

One row per (method, device, seeds) in benchmarks/results/train_throughput.json (`_gpu.json` on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import RESULTS, machine, write_json
from reled_jax.config import PRESETS, TrainConfig, config_from_dict
from reled_jax.train import train
from sim.policies import random_policy
from sim.scenarios import load_scenario



def bare_env_decisions_per_s(cfg: TrainConfig, repeats: int = 3) -> float:
    """Decisions/s of the environment alone at cfg's n_envs and step mode, random policy, one seed."""
    _, env, params = load_scenario(cfg.env.scenario, cfg.env.regime, n_agents=cfg.env.n_agents, seed=cfg.scenario_seed)
    n_envs, n_steps = cfg.ppo.n_envs, cfg.ppo.rollout_steps
    step = env.step_batch if cfg.ppo.lockstep else jax.vmap(env.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def run(key, state, obs):
        def one(carry, k):
            state, obs = carry
            k_act, k_env = jax.random.split(k)
            actions = jax.vmap(random_policy, in_axes=(0, 0, None))(jax.random.split(k_act, n_envs), obs, params)
            obs, state, _, _, info = step(jax.random.split(k_env, n_envs), state, actions, params)
            return (state, obs), info["n_decisions"].sum()

        (state, obs), decisions = jax.lax.scan(one, (state, obs), jax.random.split(key, n_steps))
        return state, obs, decisions.sum()

    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), n_envs), params)
    state, obs, _ = jax.block_until_ready(run(jax.random.PRNGKey(1), state, obs))  # compile, and leave the reset burst
    best = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        state, obs, decisions = jax.block_until_ready(run(jax.random.PRNGKey(2 + r), state, obs))
        best = max(best, int(decisions) / (time.perf_counter() - t0))
    return best


def rollout_seconds_per_epoch(cfg: TrainConfig, run_dir: Path, repeats: int = 3) -> float:
    """Seconds of one epoch's rollout alone (all seeds vmapped), from the run's final checkpoint state."""
    from reled_jax import checkpoint
    from reled_jax.mappo import global_state_dim
    from reled_jax.networks import init_env_agents
    from reled_jax.reled import SEED_AXIS, init_state, make_epoch

    ck, arrays = checkpoint.read(run_dir / checkpoint.FILENAME)
    cfg = cfg.resolved().set(decision_share=config_from_dict(ck["config"]).ppo.decision_share)
    _, env, params = load_scenario(cfg.env.scenario, cfg.env.regime, n_agents=cfg.env.n_agents, seed=cfg.scenario_seed)
    critic_extra = global_state_dim(env.n_agents, env.n_edges) if cfg.ppo_config().centralised_critic else 0  # MAPPO's critic, as train() builds it
    agents, policy, value = init_env_agents(jax.random.PRNGKey(0), env, critic_extra)
    epoch = make_epoch(env, params, policy, value, cfg.ppo_config())
    run = jax.jit(jax.vmap(lambda st: epoch.rollout(st, SEED_AXIS)[0]["decided"].sum(), axis_name=SEED_AXIS))
    one = init_state(jax.random.PRNGKey(0), agents, cfg.ppo_config())
    if cfg.ppo.carry_envs:
        one = one.replace(envs=jax.jit(epoch.initial_envs)(jax.random.PRNGKey(0)))
    template = jax.tree.map(lambda z: jax.ShapeDtypeStruct((cfg.run.seeds, *z.shape), z.dtype), one)  # the run's state, seeds stacked
    state = jax.tree.map(jnp.asarray, checkpoint.restore(template, arrays, "state", run_dir))
    jax.block_until_ready(run(state))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(state))
        best = min(best, time.perf_counter() - t0)
    return best


def measure(method: str, seeds: int, preset: str, epochs: int | None, overrides: dict, n_agents: int = 10) -> dict:
    cfg = TrainConfig.of(method=method, seeds=seeds, preset=preset, n_agents=n_agents)
    preset_epochs = cfg.resolved().ppo.epochs
    if epochs or overrides:  # the preset's budget with some fields changed
        cfg = cfg.resolved().set(preset="default", **overrides, **({"epochs": epochs} if epochs else {}))
    resolved = cfg.resolved()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        summary = train(cfg.set(out=str(run_dir)))
        wall = time.perf_counter() - t0
        timing = summary["timing"]
        rollout_epoch = rollout_seconds_per_epoch(cfg, run_dir) if method != "qmix" else float("nan")
    env_rate = bare_env_decisions_per_s(resolved)
    steps = summary["interaction_steps_per_seed"] * seeds
    rollout_s = rollout_epoch * resolved.ppo.epochs
    # A shortened run (--epochs) projected to the preset's epochs: chunks, expert refreshes and checkpoints
    # per epoch; the probe, compilation, set-up and closing test once. With --epochs a multiple of q (10)
    # the short run holds RELED's expert refreshes in the same share as the full run.
    per_epoch = timing["chunks_s"] + timing["expert_s"] + timing["checkpoint_s"]
    projected = wall + per_epoch * (preset_epochs / resolved.ppo.epochs - 1)
    return {
        "method": method,
        "n_agents": n_agents,
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "seeds": seeds,
        "budget": {k: resolved.get(k) for k in ("epochs", "n_envs", "rollout_steps", "update_epochs", "n_minibatches", "update_block", "lockstep", "carry_envs")},
        "decision_share": summary.get("decision_share"),
        "update_rows_mean": summary.get("update_rows_mean"),
        "interaction_steps": int(steps),
        "paper_budget_seconds": round(wall, 2),
        "projected_preset_seconds": round(projected, 1),
        "paper_budget_seconds_per_5e5_steps": round(wall * 5e5 / max(summary["interaction_steps_per_seed"], 1), 2),
        "interaction_steps_per_s": round(steps / timing["chunks_s"], 1),
        "interaction_steps_per_s_overall": round(steps / wall, 1),
        "env_decisions_per_s": round(env_rate, 1),
        "train_over_env_ratio": round(steps / timing["chunks_s"] / env_rate, 3),
        "time_split_s": {
            "probe": timing["probe_s"],
            "compile": timing["compile_s"],
            "rollout": round(rollout_s, 3) if np.isfinite(rollout_s) else None,
            "update": round(timing["chunks_s"] - rollout_s, 3) if np.isfinite(rollout_s) else None,
            "chunks": timing["chunks_s"],
            "expert_host": timing["expert_s"],
            "checkpoint_and_logs": timing["checkpoint_s"],
            "other": round(wall - sum(timing.values()), 3),
        },
        "reward_last_10pct": summary["reward_last_10pct"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["ippo", "reled", "qmix"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (a shorter look)")
    parser.add_argument("--n-agents", nargs="+", type=int, default=[10], help="agent counts to compare (Fig. 8's scale)")
    parser.add_argument("--n-envs", type=int, default=None)
    parser.add_argument("--rollout-steps", type=int, default=None)
    parser.add_argument("--update-block", nargs="+", type=int, default=[None], help="gradient accumulation block sizes to compare (0: capacity switch)")
    parser.add_argument("--out", type=Path, default=None, help="a file named here keeps its rows that this run does not measure again")
    args = parser.parse_args()
    base = {k: v for k, v in (("n_envs", args.n_envs), ("rollout_steps", args.rollout_steps)) if v}
    gpu = jax.devices()[0].platform == "gpu"
    out = args.out or RESULTS / f"train_throughput{'_gpu' if gpu else ''}.json"
    report = {
        "benchmark": "train_throughput",
        **machine(),
        "command": "python -m benchmarks.train_throughput " + " ".join(sys.argv[1:]),
        "results": [],
    }
    kept = []  # an earlier run's rows in the same file that this one does not measure again (one command per row set)
    if out.exists() and args.out:
        earlier = json.loads(out.read_text())
        kept = [r for r in earlier.get("results", []) if (r["method"], r["seeds"], r.get("n_agents", 10)) not in
                {(m, s, n) for m in args.methods for s in args.seeds for n in args.n_agents}]
        if kept:
            report["command"], report["results"] = f"{earlier['command']}; {report['command']}", kept
    for method, seeds, block, n_agents in [(m, s, b, n) for m in args.methods for s in args.seeds for b in args.update_block for n in args.n_agents]:
        overrides = base | ({} if block is None else {"update_block": block})
        row = measure(method, seeds, args.preset, args.epochs, overrides, n_agents)
        report["results"].append(row)
        print(f"{method:6s} agents={n_agents} seeds={seeds} projected {row['projected_preset_seconds']:.0f} s; update_block={row['budget']['update_block']}: {row['paper_budget_seconds']:7.1f} s for {row['interaction_steps']:,} interaction steps; "
              f"{row['interaction_steps_per_s']:8.0f} steps/s in chunks vs bare env {row['env_decisions_per_s']:8.0f}/s "
              f"(ratio {row['train_over_env_ratio']:.2f}); split {row['time_split_s']}", flush=True)
        write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
