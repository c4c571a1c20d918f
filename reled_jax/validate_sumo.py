"""Run policies in SUMO and in the JAX simulator side by side.

    python -m reled_jax.validate_sumo --checkpoint runs/NAME/checkpoint.npz [--episodes 5]
    python -m reled_jax.validate_sumo --scenario hongkong --regime congested --policies shortest random

Every policy (the checkpoint's trained policy of one seed, run greedily from its
NumPy export, and the reference policies named by `--policies`) runs the same
N episodes in both simulators: episode e uses the same key, hence the same
initial background traffic, in both (see sim/sumo_run.py). Per policy and
simulator it reports Eq. 32 reward per agent, travel time and arrival rate, and
per pair the travel-time error and the Spearman rank correlation of per-agent
travel times (over (episode, agent) pairs, and over agents' means across episodes). Writes `sumo_validation.json` and `sumo_validation.png` (next to
the checkpoint, or under `--out`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from scipy.stats import spearmanr

from reled_jax.evaluate import evaluate_policies, trained_policy
from reled_jax.checkpoint import read_checkpoint
from reled_jax.export_policy import NumpyPolicy, checkpoint_arrays
from sim.env import EnvParams, RouteChoiceEnv
from sim.export_sumo import SumoNotInstalled
from sim.network import RoadNetwork
from sim.policies import REFERENCE_POLICIES
from sim.scenarios import ScenarioChoice, load_scenario
from sim.sumo_run import SumoRouteChoice, random_numpy, shortest_time_numpy


@dataclasses.dataclass(frozen=True)
class ValidateConfig(ScenarioChoice):
    """Without a checkpoint: --scenario, --regime and --n-agents choose the environment of the reference policies."""

    checkpoint: str = ""  # a training checkpoint; its scenario, regime and agents are used
    seed_index: int = 0  # which of the checkpoint's seeds
    policies: tuple[str, ...] = ("shortest", "random")  # reference policies run alongside
    episodes: int = 5
    seed: int = 12345  # episode keys (same in both simulators)
    lookahead_m: float = 75.0  # an agent chooses its next edge this far before the junction (SUMO)
    out: str = ""  # default: next to the checkpoint, else runs/validate_<scenario>-<regime>


@dataclasses.dataclass
class PolicyPair:
    """One policy in both forms: JAX (key, obs) -> actions, and NumPy (features, mask, rng) -> actions."""

    jax_fn: Callable
    numpy_fn: Callable


def reference_pairs(names, params: EnvParams) -> dict[str, PolicyPair]:
    numpy_forms = {"shortest": shortest_time_numpy(params), "random": random_numpy}
    unknown = set(names) - set(numpy_forms)
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}; choose from {sorted(numpy_forms)}")
    return {
        name: PolicyPair(lambda key, obs, ref=REFERENCE_POLICIES[name]: ref(key, obs, params), numpy_forms[name])
        for name in names
    }


def trained_pair(arrays: dict, n_nodes: int, m_out: int) -> PolicyPair:
    """The exported NumPy policy in SUMO, the same weights through the JAX network in our simulator."""
    numpy_policy = NumpyPolicy(arrays)
    n_agents = numpy_policy.n_agents
    stacked = {"params": {f"Dense_{layer}": {
        "kernel": jnp.stack([jnp.asarray(arrays[f"a{i}_w{layer}"]) for i in range(n_agents)]),
        "bias": jnp.stack([jnp.asarray(arrays[f"a{i}_b{layer}"]) for i in range(n_agents)]),
    } for layer in range(3)}}
    return PolicyPair(trained_policy(stacked, n_nodes, m_out, stochastic=False), lambda f, m, rng: numpy_policy.act(f, m))


def compare(
    network: RoadNetwork,
    env: RouteChoiceEnv,
    params: EnvParams,
    policies: dict[str, PolicyPair],
    *,
    episodes: int,
    seed: int,
    sumo_dir: Path,
    lookahead_m: float = 75.0,
    progress: Callable[[str], None] = print,
) -> dict:
    """Both simulators, every policy, the same `episodes` keys; per-policy summaries and paired metrics."""
    jax_results = evaluate_policies(env, params, {n: p.jax_fn for n, p in policies.items()}, episodes, seed, max_steps=3000)
    runner = SumoRouteChoice(network, env, params, sumo_dir, lookahead_m=lookahead_m)
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    results = {}
    for name, pair in policies.items():
        runs = []
        for e, key in enumerate(keys):
            runs.append(runner.run_episode(pair.numpy_fn, key, sumo_seed=e))
            progress(f"  SUMO {name}: episode {e + 1}/{episodes}, {runs[-1].sim_seconds} s simulated in {runs[-1].wall_s:.1f} s")
        sumo = {
            "reward": np.stack([r.reward for r in runs]),
            "travel_time_s": np.stack([r.travel_time for r in runs]),
            "arrived": np.stack([r.arrived for r in runs]),
        }
        ours = {k: np.asarray(v) for k, v in jax_results[name]["per_agent"].items()}
        results[name] = {
            "jax": summarise(ours),
            "sumo": summarise(sumo) | {
                "teleports": int(sum(r.teleports for r in runs)),
                "route_ran_out": int(sum(r.route_ran_out for r in runs)),
                "wall_s": float(sum(r.wall_s for r in runs)),
                "sim_seconds": int(sum(r.sim_seconds for r in runs)),
            },
            "travel_time_rel_error": relative_error(ours["travel_time_s"].mean(), sumo["travel_time_s"].mean()),
            "travel_time_spearman": rank_correlation(ours["travel_time_s"], sumo["travel_time_s"]),
            # Each agent's travel time averaged over the episodes first: signal-phase luck averages out.
            "agent_mean_spearman": rank_correlation(ours["travel_time_s"].mean(0), sumo["travel_time_s"].mean(0)),
            "agent_mean_spearman_ci95": bootstrap_agent_mean_spearman(ours["travel_time_s"], sumo["travel_time_s"]),
            # How well each simulator ranks the agents against itself (two halves of the episodes, Spearman-Brown
            # corrected to all of them): the ceiling that signal and demand noise put on the cross-simulator rho.
            "split_half_spearman": {"jax": split_half_reliability(ours["travel_time_s"]), "sumo": split_half_reliability(sumo["travel_time_s"])},
        }
    return results


def summarise(per_agent: dict) -> dict:
    """Mean ± SD across episodes of the per-episode agent means, plus the raw [episodes][agents] arrays."""
    reward, travel = per_agent["reward"].mean(1), per_agent["travel_time_s"].mean(1)
    return {
        "reward_per_agent": [float(reward.mean()), float(reward.std())],
        "travel_time_s": [float(travel.mean()), float(travel.std())],
        "arrival_rate": float(np.mean(per_agent["arrived"])),
        "per_agent": {k: np.asarray(v).tolist() for k, v in per_agent.items()},
    }


def relative_error(ours: float, sumo: float) -> float:
    """(ours - SUMO) / SUMO: positive where our simulator is slower."""
    return float((ours - sumo) / sumo)


def bootstrap_agent_mean_spearman(ours: np.ndarray, sumo: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95 % percentile interval of the agents'-means Spearman rho over episodes resampled with replacement (the
    same episodes in both simulators: they are paired)."""
    rng = np.random.default_rng(seed)
    n = ours.shape[0]
    rhos = [rank_correlation(ours[idx].mean(0), sumo[idx].mean(0)) for idx in rng.integers(0, n, size=(n_boot, n))]
    rhos = np.asarray([r for r in rhos if np.isfinite(r)])
    return [float(np.quantile(rhos, 0.025)), float(np.quantile(rhos, 0.975))] if rhos.size else [float("nan")] * 2


def split_half_reliability(travel: np.ndarray) -> float:
    """Spearman rho between the agents' mean travel times over the even and the odd episodes, Spearman-Brown
    corrected to the whole set (2 r / (1 + r)): how reproducible the agents' ranking is within one simulator."""
    if travel.shape[0] < 2:
        return float("nan")
    r = rank_correlation(travel[0::2].mean(0), travel[1::2].mean(0))
    return float(2 * r / (1 + r)) if np.isfinite(r) and r > -1 else r


def rank_correlation(ours: np.ndarray, sumo: np.ndarray) -> float:
    """Spearman correlation of paired per-agent values (episode e, agent i) from both simulators."""
    ours, sumo = np.ravel(ours), np.ravel(sumo)
    if np.ptp(ours) == 0 or np.ptp(sumo) == 0:
        return float("nan")
    return float(spearmanr(ours, sumo).statistic)


def plot(results: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(len(names))
    for ax, metric, label in [(axes[0], "travel_time_s", "mean travel time (s)"), (axes[1], "reward_per_agent", "episode reward per agent (Eq. 32)")]:
        for offset, sim, colour in [(-0.2, "jax", "tab:blue"), (0.2, "sumo", "tab:orange")]:
            mean = [results[n][sim][metric][0] for n in names]
            sd = [results[n][sim][metric][1] for n in names]
            ax.bar(x + offset, mean, 0.4, yerr=sd, capsize=3, color=colour, label="JAX simulator" if sim == "jax" else "SUMO")
        ax.set_xticks(x, names)
        ax.set_ylabel(label)
        ax.legend()
    ax = axes[2]
    top = 0.0
    for n in names:
        ours = np.ravel(results[n]["jax"]["per_agent"]["travel_time_s"])
        sumo = np.ravel(results[n]["sumo"]["per_agent"]["travel_time_s"])
        ax.scatter(ours, sumo, s=12, alpha=0.6, label=f"{n} (ρ = {results[n]['travel_time_spearman']:.2f})")
        top = max(top, ours.max(), sumo.max())
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--")
    ax.set_xlabel("travel time in the JAX simulator (s)")
    ax.set_ylabel("travel time in SUMO (s)")
    ax.set_title("same episode, same agent")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict) -> None:
    print(f"{'policy':28s} {'sim':5s} {'reward/agent':>17s} {'travel time (s)':>17s} {'arrived':>8s}")
    for name, r in results.items():
        for sim in ("jax", "sumo"):
            s = r[sim]
            print(f"{name:28s} {sim:5s} {s['reward_per_agent'][0]:9.1f} ± {s['reward_per_agent'][1]:5.1f} "
                  f"{s['travel_time_s'][0]:9.1f} ± {s['travel_time_s'][1]:5.1f} {s['arrival_rate']:8.1%}")
        print(f"{'':28s} travel time error {r['travel_time_rel_error']:+.1%}, Spearman ρ {r['travel_time_spearman']:.2f}, "
              f"agents' means ρ {r['agent_mean_spearman']:.2f}, SUMO teleports {r['sumo']['teleports']}")


def main(cfg: ValidateConfig) -> dict:
    policies: dict[str, PolicyPair] = {}
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        run, arrays = checkpoint_arrays(read_checkpoint(path), cfg.seed_index)
        scenario, regime = run["scenario"], run["regime"]
        network, env, params = load_scenario(scenario, regime, n_agents=run["n_agents"], seed=run["scenario_seed"])
        policies[f"{run['method']} (epoch {run['epoch']})"] = trained_pair(arrays, env.n_nodes, env.m_out)
        out = Path(cfg.out) if cfg.out else path.parent
    else:
        choice = cfg.check_scenario()
        scenario, regime = choice.scenario, choice.regime
        network, env, params = load_scenario(scenario, regime, n_agents=choice.n_agents)
        out = Path(cfg.out) if cfg.out else Path("runs") / f"validate_{network.name}-{regime}"
    policies |= reference_pairs(cfg.policies, params)
    if not policies:
        raise SystemExit("nothing to validate: pass --checkpoint or at least one of --policies shortest random")
    out.mkdir(parents=True, exist_ok=True)
    print(f"{scenario}/{regime}: {len(policies)} policies x {cfg.episodes} episodes in the JAX simulator and in SUMO")
    try:
        results = compare(network, env, params, policies, episodes=cfg.episodes, seed=cfg.seed, sumo_dir=out / "sumo",
                          lookahead_m=cfg.lookahead_m)
    except SumoNotInstalled as err:
        raise SystemExit(str(err)) from None
    print_table(results)
    report = {"config": dataclasses.asdict(cfg), "scenario": scenario, "regime": regime, "results": results}
    (out / "sumo_validation.json").write_text(json.dumps(report, indent=1))
    plot(results, f"{scenario}/{regime}: {cfg.episodes} episodes, same keys in both simulators", out / "sumo_validation.png")
    print(f"wrote {out / 'sumo_validation.json'} and {out / 'sumo_validation.png'}")
    return report


if __name__ == "__main__":
    from reled_jax.train import usage_errors

    with usage_errors():
        main(tyro.cli(ValidateConfig))
