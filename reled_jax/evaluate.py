"""Evaluate a checkpoint: `python -m reled_jax.evaluate --checkpoint runs/.../checkpoint.npz [--episodes 20]`.

Runs N test episodes (vmapped, one episode per key, no auto-reset) of the
trained policies of every seed in the checkpoint, greedy by default and also
the other way ("sampled: ..." or "greedy: ..."), the untrained networks of the
run's first seed both ways, and the two reference policies (free-flow shortest
time, uniform random, which samples) on the same keys. Compare like with like:
greedy against greedy, sampled against sampled (the untrained networks score far
lower greedy than sampled, so a greedy policy below the random one says little).
Reports episode reward per agent and travel time as mean ± SD across episodes,
plus arrival rate. Writes evaluation.json next to the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import jax
import jax.numpy as jnp
import tyro

from reled_jax.checkpoint import read_checkpoint
from reled_jax.checkpoint import CheckpointError
from reled_jax.networks import MLP, init_env_agents, observe
from reled_jax.reled import policy_apply
from sim.env import EnvParams, RouteChoiceEnv
from sim.policies import REFERENCE_POLICIES
from sim.scenarios import load_scenario


# The test episodes every evaluation plays (evaluate, the sweep, expert agreement, the training CLI's table):
# the same keys, never used in training, so every method and reference is scored on the same episodes.
TEST_SEED = 12345
TEST_EPISODES = 20
MAX_TEST_STEPS = 3000  # environment steps per test episode at most


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = ""  # empty: reference policies only
    episodes: int = TEST_EPISODES
    seed: int = TEST_SEED  # evaluation keys (different from training)
    max_steps: int = MAX_TEST_STEPS
    stochastic: bool = False  # sample from the policy instead of taking its most likely action
    # Without a checkpoint: the environment of the reference policies (default hongkong / moderate / 10).
    # With one: read from it; a flag that disagrees with the checkpoint is an error.
    scenario: Annotated[str | None, tyro.conf.arg(aliases=("--osm",), help="a built-in scenario, a scenario file (.toml) or an OSM extract (--osm FILE)")] = None
    regime: str | None = None
    n_agents: int | None = None

    def check(self) -> None:
        if self.episodes < 1 or self.max_steps < 1:
            raise SystemExit(f"--episodes and --max-steps must be at least 1 (got {self.episodes}, {self.max_steps})")
        if self.n_agents is not None and self.n_agents < 1:
            raise SystemExit(f"--n-agents must be at least 1 (got {self.n_agents})")

    def environment(self, run: dict | None = None) -> tuple[str, str, int]:
        """(scenario, regime, n_agents): the checkpoint's, refusing flags that disagree with it."""
        given = {"scenario": self.scenario, "regime": self.regime, "n_agents": self.n_agents}
        if run is None:
            defaults = {"scenario": "hongkong", "regime": "moderate", "n_agents": None}  # n_agents None: the scenario's
            return tuple(defaults[k] if v is None else v for k, v in given.items())
        clash = [f"--{k.replace('_', '-')} {v} (the checkpoint has {run[k]})" for k, v in given.items() if v is not None and v != run[k]]
        if clash:
            raise SystemExit(f"{', '.join(clash)}: a checkpoint is evaluated in the environment it was trained in; drop the flag")
        return run["scenario"], run["regime"], run["n_agents"]


def test_episode(env: RouteChoiceEnv, params: EnvParams, policy: Callable, key: jax.Array, max_steps: int):
    """One test episode (no auto-reset): per-agent return, travel time and arrival, decisions, finished."""
    obs, state = env.reset(key, params)

    def body(carry, _):
        key, obs, state, finished = carry
        key, k_act, k_step = jax.random.split(key, 3)
        obs_next, state_next, reward, _, info = env.step_env(k_step, state, policy(k_act, obs), params)
        state = jax.tree.map(lambda old, new: jnp.where(finished, old, new), state, state_next)
        obs = jax.tree.map(lambda old, new: jnp.where(finished, old, new), obs, obs_next)
        reward = jnp.where(finished, 0.0, reward)
        return (key, obs, state, finished | info["episode_done"]), (reward, jnp.where(finished, 0, info["n_decisions"]))

    (_, _, state, finished), (rewards, decisions) = jax.lax.scan(body, (key, obs, state, jnp.bool_(False)), None, length=max_steps)
    travel = jnp.where(state.agent_arrived, state.agent_travel_time, state.t.astype(jnp.float32) - params.agent_depart)
    return rewards.sum(0), travel, state.agent_arrived, decisions.sum(), finished


def episode_summary(returns, travel, arrived, decisions, finished) -> dict:
    """Mean ± SD across episodes of the per-agent mean reward and travel time; raw [episodes][agents] arrays."""
    per_episode_reward, per_episode_travel = returns.mean(1), travel.mean(1)
    return {
        "reward_per_agent": [float(per_episode_reward.mean()), float(per_episode_reward.std())],
        "travel_time_s": [float(per_episode_travel.mean()), float(per_episode_travel.std())],
        "arrival_rate": float(arrived.mean()),
        "interaction_steps": int(decisions.sum()),
        "episodes_finished": int(finished.sum()),
        # [episodes][agents], for paired comparisons (reled_jax.validate_sumo, benchmarks/fidelity.py)
        "per_agent": {"reward": returns.tolist(), "travel_time_s": travel.tolist(), "arrived": arrived.tolist()},
    }


def test_keys(seed: int, n_episodes: int) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed), n_episodes)


def evaluate_policies(env: RouteChoiceEnv, params: EnvParams, policies: dict[str, Callable], n_episodes: int, seed: int, max_steps: int) -> dict:
    """Episode statistics of each `policy(key, obs) -> actions [A]` over the same `n_episodes` keys.

    Policy networks (`NetworkPolicy`) of one shape share one compiled program, their parameters and action
    mode its arguments: a checkpoint's seeds greedy and sampled, and the untrained networks, compile once."""
    keys = test_keys(seed, n_episodes)
    network_runs: dict = {}
    results = {}
    for name, policy in policies.items():
        if isinstance(policy, NetworkPolicy):
            kind = (policy.n_nodes, policy.m_out, jax.tree.structure(policy.params))
            if kind not in network_runs:
                network_runs[kind] = jax.jit(jax.vmap(
                    lambda key, p, stochastic, like=policy: test_episode(env, params, dataclasses.replace(like, params=p, stochastic=stochastic), key, max_steps),
                    in_axes=(0, None, None)))
            out = network_runs[kind](keys, policy.params, jnp.bool_(policy.stochastic))
        else:
            out = jax.jit(jax.vmap(lambda key, policy=policy: test_episode(env, params, policy, key, max_steps)))(keys)
        results[name] = episode_summary(*jax.device_get(out))
    return results


def reference_policies(params: EnvParams) -> dict[str, Callable]:
    """The shortest-time and random reference policies (sim.policies) as `policy(key, obs)` for `evaluate_policies`."""
    return {name: (lambda key, obs, ref=ref: ref(key, obs, params)) for name, ref in REFERENCE_POLICIES.items()}


def evaluate_seeds(env: RouteChoiceEnv, params: EnvParams, policy_params, n_episodes: int, seed: int, max_steps: int, stochastic: bool = False) -> list[dict]:
    """`evaluate_policies` for policies stacked on a leading seed axis, as one compiled program (seeds vmapped)."""
    return evaluate_seeds_modes(env, params, policy_params, n_episodes, seed, max_steps, (stochastic,))[0]


def evaluate_seeds_modes(env: RouteChoiceEnv, params: EnvParams, policy_params, n_episodes: int, seed: int, max_steps: int,
                         modes: tuple[bool, ...] = (False, True)) -> list[list[dict]]:
    """`evaluate_seeds` in each action mode (False: greedy, True: sampled), [mode][seed], in one compiled program."""

    def per_seed(p, stochastic):
        policy = NetworkPolicy(p, env.n_nodes, env.m_out, stochastic)
        return jax.vmap(lambda key: test_episode(env, params, policy, key, max_steps))(test_keys(seed, n_episodes))

    run = jax.jit(jax.vmap(jax.vmap(per_seed, in_axes=(0, None)), in_axes=(None, 0)))
    out = jax.device_get(run(policy_params, jnp.asarray(modes)))
    n_seeds = out[0].shape[1]
    return [[episode_summary(*(x[m, s] for x in out)) for s in range(n_seeds)] for m in range(len(modes))]


@dataclasses.dataclass(frozen=True)
class NetworkPolicy:
    """A policy network as a policy `(key, obs) -> actions`: greedy (argmax of the masked logits) or sampled."""

    params: object  # the policy network's parameters (one agent stack, no seed axis)
    n_nodes: int
    m_out: int
    stochastic: bool  # or a traced boolean (one program for both modes)

    def logits(self, obs):
        """[A, M] masked logits of every agent's network on its observation."""
        return policy_apply(MLP(self.m_out, one_hot_nodes=self.n_nodes), self.params, observe(obs.features, self.m_out), obs.action_mask)

    def __call__(self, key, obs):
        logits = self.logits(obs)
        return jnp.where(self.stochastic, jax.random.categorical(key, logits), jnp.argmax(logits, axis=-1))


def trained_policy(policy_params, n_nodes: int, m_out: int, stochastic: bool) -> NetworkPolicy:
    return NetworkPolicy(policy_params, n_nodes, m_out, stochastic)


def checkpoint_policies(ck: dict, env: RouteChoiceEnv, stochastic: bool = False) -> dict[str, Callable]:
    """One policy per seed stacked in a loaded checkpoint, named '<method> (seed s, epoch k)', seeds in order."""
    run = ck["run"]
    policy_params = ck["policy"]
    n_seeds, n_agents, n_in, _ = policy_params["params"]["Dense_0"]["kernel"].shape
    n_out = policy_params["params"]["Dense_2"]["kernel"].shape[-1]
    want = (env.n_agents, 2 * env.n_nodes + 2 * env.m_out, env.m_out)  # the first layer reads the one-hot-equivalent input
    if (n_agents, n_in, n_out) != want:
        raise CheckpointError(f"checkpoint's policy networks are for {n_agents} agents, {n_in} inputs and {n_out} actions; its environment "
                              f"({run['scenario']}, {env.n_agents} agents) needs {want[0]}, {want[1]} and {want[2]}")
    policies = {}
    for s in range(n_seeds):
        p = jax.tree.map(lambda z, s=s: jnp.asarray(z[s]), policy_params)
        policies[f"{run['method']} (seed {run['seed'] + s}, epoch {ck['epoch']})"] = trained_policy(p, env.n_nodes, env.m_out, stochastic)
    return policies


def untrained_policies(env: RouteChoiceEnv, seed: int) -> dict[str, Callable]:
    """The networks a run of `seed` starts from (`init_env_agents`), greedy and sampled."""
    policy = init_env_agents(jax.random.PRNGKey(seed), env)[0].policy
    return {f"untrained {mode}": trained_policy(policy, env.n_nodes, env.m_out, mode == "sampled") for mode in ("greedy", "sampled")}


def main(cfg: EvalConfig) -> dict:
    cfg.check()
    policies: dict[str, Callable] = {}
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        ck = read_checkpoint(path)
        run = ck["run"]
        scenario, regime, n_agents = cfg.environment(run)
        _, env, params = load_scenario(scenario, regime, n_agents=n_agents, seed=run["scenario_seed"])
        policies.update(checkpoint_policies(ck, env, cfg.stochastic))
        other = "greedy" if cfg.stochastic else "sampled"
        policies.update({f"{other}: {name}": p for name, p in checkpoint_policies(ck, env, not cfg.stochastic).items()})
        policies.update(untrained_policies(env, run["seed"]))
        out_path = path.parent / "evaluation.json"
    else:
        scenario, regime, n_agents = cfg.environment()
        _, env, params = load_scenario(scenario, regime, n_agents=n_agents)
        out_path = None
    policies |= reference_policies(params)
    results = evaluate_policies(env, params, policies, cfg.episodes, cfg.seed, cfg.max_steps)
    print(f"{'policy':52s} {'reward/agent':>20s} {'travel time (s)':>20s} {'arrived':>8s}")
    for name, r in results.items():
        print(f"{name:52s} {r['reward_per_agent'][0]:11.1f} ± {r['reward_per_agent'][1]:6.1f} {r['travel_time_s'][0]:11.1f} ± {r['travel_time_s'][1]:6.1f} {r['arrival_rate']:8.1%}")
    print(f"({cfg.episodes} test episodes; mean over agents, ± SD across episodes; trained policies {'sampled' if cfg.stochastic else 'greedy'} "
          f"unless marked; random samples: compare it with sampled policies)")
    if out_path is not None:
        out_path.write_text(json.dumps({"config": dataclasses.asdict(cfg), "results": results}, indent=1))
        print(f"wrote {out_path}")
    return results


def cli() -> None:
    from reled_jax.train import usage_errors

    with usage_errors():
        main(tyro.cli(EvalConfig, description=__doc__))


if __name__ == "__main__":
    cli()
