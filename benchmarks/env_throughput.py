"""Simulator throughput: env-steps/s, agent decisions/s and vehicle-steps/s vs parallel environments.

Two measurements per (scenario, n_envs), each one jitted program with the
compile time reported separately from the run time:

* `tick`: `vmap` over environments of a `lax.scan` of 1-second simulator ticks
  (pure traffic simulation). vehicle-steps = n_envs * vehicles * ticks.
* `step`: `vmap` over environments of a `lax.scan` of decision-driven env
  steps with auto-reset, actions from the uniform random policy. Reports
  env-steps/s, agent decisions/s (interaction steps) and the vehicle-steps/s
  implied by the ticks those steps advanced. Under vmap each step's tick loop
  runs until the slowest environment's next decision.
* `lockstep`: the same with `env.step_batch`, which ticks all environments
  together until any has a decision (no tick wasted; some steps hold no
  decision). `lockstep_over_tick` is its vehicle-steps/s over the tick loop's.

    python -m benchmarks.env_throughput                      # full sweep, writes JSON
    python -m benchmarks.env_throughput --scenarios oakland --n-envs 1 64 --ticks 50 --steps 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.common import RESULTS, machine, write_json
from sim.policies import random_policy
from sim.scenarios import load_scenario



def _timed(fn, *args, repeats: int):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    return out, compile_s, best


def bench(scenario: str, regime: str, n_envs: int, n_ticks: int, n_steps: int, repeats: int) -> dict:
    _, env, params = load_scenario(scenario, regime)
    keys = jax.random.split(jax.random.PRNGKey(0), n_envs)
    _, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)

    def run_ticks(state):
        final = jax.lax.scan(lambda s, _: (env.tick(s, params), None), state, None, length=n_ticks)[0]
        # Reduce every leaf so XLA cannot drop any part of the simulation as dead code.
        return sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in jax.tree.leaves(final))

    def run_steps(key, state):
        def body(carry, _):
            key, state, obs = carry
            key, k_act, k_step = jax.random.split(key, 3)
            actions = random_policy(k_act, obs, params)
            obs, state, _, _, info = env.step(k_step, state, actions, params)
            return (key, state, obs), (info["ticks"], info["n_decisions"])

        obs = env.get_obs(state, params)
        _, (ticks, decisions) = jax.lax.scan(body, (key, state, obs), None, length=n_steps)
        return ticks.sum(), decisions.sum()

    def run_lockstep(key, state):
        def body(carry, _):
            key, state, obs = carry
            key, k_act, k_step = jax.random.split(key, 3)
            actions = jax.vmap(random_policy, in_axes=(0, 0, None))(jax.random.split(k_act, n_envs), obs, params)
            obs, state, _, _, info = env.step_batch(jax.random.split(k_step, n_envs), state, actions, params)
            return (key, state, obs), (info["ticks"][0], info["n_decisions"].sum())

        obs = jax.vmap(env.get_obs, in_axes=(0, None))(state, params)
        _, (ticks, decisions) = jax.lax.scan(body, (key, state, obs), None, length=n_steps * lockstep_factor)
        return ticks.sum() * n_envs, decisions.sum()

    # Lockstep steps are shorter (the batch stops at any environment's decision): run more of them.
    lockstep_factor = max(1, min(8, n_envs // 8))
    _, tick_compile, tick_s = _timed(jax.vmap(run_ticks), states, repeats=repeats)
    (ticks, decisions), step_compile, step_s = _timed(jax.vmap(run_steps), keys, states, repeats=repeats)
    (l_ticks, l_decisions), lock_compile, lock_s = _timed(run_lockstep, jax.random.PRNGKey(1), states, repeats=repeats)
    total_ticks, total_decisions = int(ticks.sum()), int(decisions.sum())
    tick_rate = n_envs * n_ticks * env.n_vehicles / tick_s
    return {
        "scenario": scenario,
        "regime": regime,
        "n_envs": n_envs,
        "vehicles_per_env": env.n_vehicles,
        "tick": {
            "ticks_per_env": n_ticks,
            "compile_s": round(tick_compile, 3),
            "run_s": round(tick_s, 4),
            "env_ticks_per_s": n_envs * n_ticks / tick_s,
            "vehicle_steps_per_s": n_envs * n_ticks * env.n_vehicles / tick_s,
        },
        "step": {
            "steps_per_env": n_steps,
            "compile_s": round(step_compile, 3),
            "run_s": round(step_s, 4),
            "env_steps_per_s": n_envs * n_steps / step_s,
            "agent_decisions_per_s": total_decisions / step_s,
            "vehicle_steps_per_s": total_ticks * env.n_vehicles / step_s,
            "mean_ticks_per_step": total_ticks / (n_envs * n_steps),
            "step_over_tick": total_ticks * env.n_vehicles / step_s / tick_rate,
        },
        "lockstep": {
            "steps_per_env": n_steps * lockstep_factor,
            "compile_s": round(lock_compile, 3),
            "run_s": round(lock_s, 4),
            "env_steps_per_s": n_envs * n_steps * lockstep_factor / lock_s,
            "agent_decisions_per_s": int(l_decisions) / lock_s,
            "vehicle_steps_per_s": int(l_ticks) * env.n_vehicles / lock_s,
            "mean_ticks_per_step": int(l_ticks) / (n_envs * n_steps * lockstep_factor),
            "lockstep_over_tick": int(l_ticks) * env.n_vehicles / lock_s / tick_rate,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", "--scenario", "--osm", nargs="+", default=["hongkong", "grid", "oakland"],
                        help="built-in names, scenario files (.toml) or OSM extracts (.osm, .osm.bz2, .osm.xml)")
    parser.add_argument("--regime", default="moderate")
    parser.add_argument("--n-envs", nargs="+", type=int, default=[1, 64, 1024, 4096])
    parser.add_argument("--ticks", type=int, default=200, help="simulator seconds per environment in the tick benchmark")
    parser.add_argument("--steps", type=int, default=50, help="env steps per environment in the step benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "env_throughput.json")
    args = parser.parse_args()

    report = {
        "benchmark": "env_throughput",
        **machine(),
        "command": "python -m benchmarks.env_throughput " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "out"
        ),
        "results": [],
    }
    for scenario in args.scenarios:
        for n_envs in args.n_envs:
            row = bench(scenario, args.regime, n_envs, args.ticks, args.steps, args.repeats)
            report["results"].append(row)
            print(
                f"{scenario:9s} n_envs={n_envs:5d}  tick: {row['tick']['vehicle_steps_per_s'] / 1e6:8.2f} M veh-steps/s "
                f"(compile {row['tick']['compile_s']:.1f}s)  step: {row['step']['env_steps_per_s']:10.0f} env-steps/s "
                f"{row['step']['agent_decisions_per_s']:10.0f} decisions/s "
                f"{row['step']['vehicle_steps_per_s'] / 1e6:7.2f} M veh-steps/s ({row['step']['step_over_tick']:.0%} of ticks)  "
                f"lockstep: {row['lockstep']['agent_decisions_per_s']:10.0f} decisions/s "
                f"{row['lockstep']['vehicle_steps_per_s'] / 1e6:7.2f} M veh-steps/s ({row['lockstep']['lockstep_over_tick']:.0%} of ticks)",
                flush=True,
            )
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
