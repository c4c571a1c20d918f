"""Entry point `python -m reled_jax.train`.

PLACEHOLDER until the RELED trainer lands (issue 4): this runs the two
reference policies (free-flow shortest-time routing and uniform random) on the
default scenario for a batch of vmapped episodes and prints episode statistics.
No learning happens here.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sim.policies import REFERENCE_POLICIES
from sim.scenarios import REGIMES, SCENARIOS, load_scenario


def evaluate_reference(scenario: str, regime: str, n_agents: int, n_episodes: int, seed: int, max_steps: int) -> dict:
    """Run `n_episodes` vmapped episodes per reference policy; return per-policy statistics."""
    network, env, params = load_scenario(scenario, regime, n_agents=n_agents, seed=seed)
    print(f"scenario {scenario}/{regime}: {network.summary()}")
    results = {}
    for name, policy in REFERENCE_POLICIES.items():

        def episode(key, policy=policy):
            obs, state = env.reset(key, params)

            def body(carry, _):
                key, obs, state, finished = carry
                key, k_act, k_step = jax.random.split(key, 3)
                obs, state_next, reward, _, info = env.step_env(k_step, state, policy(k_act, obs, params), params)
                # Freeze the episode once it is over (no auto-reset: one episode per key).
                state = jax.tree.map(lambda old, new: jnp.where(finished, old, new), state, state_next)
                reward = jnp.where(finished, 0.0, reward)
                n_dec = jnp.where(finished, 0, info["n_decisions"])
                return (key, obs, state, finished | info["episode_done"]), (reward, n_dec)

            (_, _, state, finished), (rewards, decisions) = jax.lax.scan(
                body, (key, obs, state, jnp.bool_(False)), None, length=max_steps
            )
            travel = jnp.where(state.agent_arrived, state.agent_travel_time, state.t.astype(jnp.float32))
            return rewards.sum(0), travel, state.agent_arrived, decisions.sum(), finished

        keys = jax.random.split(jax.random.PRNGKey(seed), n_episodes)
        t0 = time.perf_counter()
        returns, travel, arrived, decisions, finished = jax.block_until_ready(jax.jit(jax.vmap(episode))(keys))
        wall = time.perf_counter() - t0
        results[name] = {
            "reward_per_agent": (float(np.mean(returns)), float(np.std(np.mean(returns, axis=1)))),
            "travel_time_s": (float(np.mean(travel)), float(np.std(np.mean(travel, axis=1)))),
            "arrival_rate": float(np.mean(arrived)),
            "interaction_steps": int(np.sum(decisions)),
            "episodes_finished": int(np.sum(finished)),
            "wall_s_incl_compile": wall,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="hongkong", choices=sorted(SCENARIOS))
    parser.add_argument("--regime", default="moderate", choices=sorted(REGIMES))
    parser.add_argument("--n-agents", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=1500, help="env steps (agent decision rounds) per episode")
    args = parser.parse_args()
    print("reled_jax.train: PLACEHOLDER (issue 4 brings the RELED trainer). Running reference policies only.")
    results = evaluate_reference(args.scenario, args.regime, args.n_agents, args.episodes, args.seed, args.max_steps)
    print(f"\n{'policy':10s} {'reward/agent':>20s} {'travel time (s)':>20s} {'arrived':>8s} {'decisions':>10s} {'wall s':>7s}")
    for name, r in results.items():
        print(
            f"{name:10s} {r['reward_per_agent'][0]:11.1f} ± {r['reward_per_agent'][1]:6.1f} "
            f"{r['travel_time_s'][0]:11.1f} ± {r['travel_time_s'][1]:6.1f} {r['arrival_rate']:8.1%} "
            f"{r['interaction_steps']:10d} {r['wall_s_incl_compile']:7.1f}"
        )
    print("(mean over agents and episodes ± SD across episodes; an agent that never arrived counts "
          "the time until its episode ended)")


if __name__ == "__main__":
    main()
