"""Do trained policies imitate the expert? Agreement with the planner's demonstrations, per method.

    python -m benchmarks.expert_agreement --budget small --scenario hongkong --regime moderate

RELED's hybrid loss (Eqs. 28-30) is meant to move each agent from imitating
the expert towards its own exploration. This measures how far imitation got:
every agent follows the offline planner expert's compiled plans (the expert
that trained the RELED runs) for `episodes` demonstration episodes, and at each
of the expert's decisions we score the trained policy of that agent on the
same observation: the probability it gives the expert's action, pi(u^e | o),
and whether its most likely action is the expert's (argmax agreement). Beside
them, each policy's greedy test reward on the sweep's 20 test episodes (the
same keys, so sweep runs give the sweep's numbers). For QMIX the "policy" is
its greedy Q network: argmax agreement is meaningful, a probability is not.

Rows: the untrained networks every run starts from (same seeds), then every
method whose sweep run exists under runs/sweep/<budget>/. Run after
`python -m benchmarks.sweep --experiment table4` (or fig4) with the same
budget (or point --runs-dir/--budget at runs of a training variant and say
what it is with --label). Writes
benchmarks/results/expert_agreement_<budget>_<scenario>-<regime>.json and a
bar chart beside it; `python -m benchmarks.report` tables it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import tyro

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import RESULTS, ci95, machine, write_json  # noqa: E402
from llm.demos import make_demo_rollout  # noqa: E402
from llm.service import ExpertConfig, ExpertService  # noqa: E402
from reled_jax.evaluate import MAX_TEST_STEPS, TEST_EPISODES, TEST_SEED, evaluate_seeds  # noqa: E402
from reled_jax.checkpoint import read_checkpoint  # noqa: E402
from reled_jax.networks import MLP, init_env_agents, observe  # noqa: E402
from reled_jax.methods import METHODS  # noqa: E402
from reled_jax.reled import policy_apply  # noqa: E402
from sim.scenarios import ScenarioChoice, load_scenario  # noqa: E402

INITIAL = "initial"  # the untrained networks (train's initialisation of each seed)


@dataclasses.dataclass(frozen=True)
class AgreementConfig(ScenarioChoice):
    budget: str = "small"
    seeds: int = 5
    methods: tuple[str, ...] = tuple(METHODS)  # those without a run directory are skipped
    episodes: int = 4  # demonstration episodes per seed
    demo_steps: int = 1024
    key_seed: int = 777
    test_episodes: int = TEST_EPISODES  # greedy test episodes per seed, on the sweep's keys
    eval_seed: int = TEST_SEED
    max_steps: int = MAX_TEST_STEPS
    runs_dir: str = "runs/sweep"
    label: str = ""  # what these runs are, when they are not a plain sweep
    out: str = ""

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out else RESULTS / f"expert_agreement_{self.budget}_{self.scenario_name}-{self.regime}.json"

    def run_dir(self, method: str) -> Path:
        return Path(self.runs_dir) / self.budget / f"{self.scenario_name}-{self.regime}-a{self.n_agents}-{method}-x{self.seeds}"


def agreement_scores(decided, valid, policy_logp, policy_best, action) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Agreement of a policy with the expert over the expert's decisions in demonstration records.

    decided, policy_logp, policy_best, action: [..., T, A] (DemoRollout fields, every agent following
    the expert), valid: [..., T]. Returns (mean probability the policy gives the expert's action,
    share of decisions where the policy's most likely action is the expert's, number of decisions).
    """
    decided = decided & valid[..., None]
    n = jnp.maximum(decided.sum(), 1)
    p_expert = jnp.sum(jnp.where(decided, jnp.exp(policy_logp), 0.0)) / n
    agree = jnp.sum(decided & (policy_best == action)) / n
    return p_expert, agree, decided.sum()


def planner_plans(network, env_params, seed: int = 0):
    """The offline planner expert's compiled plans for every agent (one subset, no feedback): PlanTensors."""
    service = ExpertService(network, np.asarray(env_params.agent_origin), np.asarray(env_params.agent_dest),
                            config=ExpertConfig(backend="planner", seed=seed), t_max=env_params.t_max)
    return service.plan([tuple(range(len(service.dest)))], None)[0].compiled.tensors


def make_agreement_scorer(env, env_params, demo_steps: int):
    """A jitted `score(policy_params, plans, keys) -> (p_expert, agreement, decisions, expert reward)`.

    Every agent follows the expert's `plans` for one demonstration episode per key; the policy with
    per-agent (stacked) parameters is scored at the expert's decisions (agreement_scores).
    """
    demo = make_demo_rollout(env, demo_steps)
    everyone = jnp.ones(env.n_agents, bool)
    policy = MLP(env.m_out, one_hot_nodes=env.n_nodes)

    @jax.jit
    def score(policy_params, plans, keys):
        def logits(_key, obs):
            return policy_apply(policy, policy_params, observe(obs.features, env.m_out), obs.action_mask)

        d = jax.vmap(lambda k: demo(k, env_params, plans, everyone, logits))(keys)
        return (*agreement_scores(d.decided, d.valid, d.policy_logp, d.policy_best, d.action), d.reward.sum(1).mean())

    return score


def agreement(cfg: AgreementConfig) -> dict:
    cfg = cfg.check_scenario()
    counts = {"--n-agents": cfg.n_agents, "--seeds": cfg.seeds, "--episodes": cfg.episodes, "--demo-steps": cfg.demo_steps,
              "--test-episodes": cfg.test_episodes, "--max-steps": cfg.max_steps}
    bad = [f"{k} {v}" for k, v in counts.items() if v < 1]
    if bad:
        raise SystemExit(f"{', '.join(bad)}: counts must be at least 1")
    network, env, env_params = load_scenario(cfg.scenario, cfg.regime, n_agents=cfg.n_agents, seed=0)
    methods = [m for m in cfg.methods if (cfg.run_dir(m) / "checkpoint.npz").exists()]
    if not methods:
        raise SystemExit(
            f"no sweep runs under {cfg.run_dir('<method>')}; run python -m benchmarks.sweep --experiment table4 --budget {cfg.budget} first"
        )
    score = make_agreement_scorer(env, env_params, cfg.demo_steps)
    plans = [planner_plans(network, env_params, seed=s) for s in range(cfg.seeds)]  # they depend on the seed only through the expert's own
    rows = {}
    for method in [INITIAL, *methods]:
        if method == INITIAL:
            stacked = None
        else:
            ck = read_checkpoint(cfg.run_dir(method) / "checkpoint.npz")
            stacked = ck["policy"]
        per_seed, seed_params = [], []
        for s in range(cfg.seeds):
            init, _, _ = init_env_agents(jax.random.PRNGKey(s), env)
            params = init.policy if stacked is None else jax.tree.map(lambda z, s=s: jnp.asarray(z[s]), stacked)
            seed_params.append(params)
            keys = jax.random.split(jax.random.PRNGKey(cfg.key_seed + s), cfg.episodes)
            p, agree, n, expert_reward = score(params, plans[s], keys)
            per_seed.append({"p_expert_action": float("nan") if method == "qmix" else float(p), "argmax_agreement": float(agree),
                             "decisions": int(n), "expert_reward": float(expert_reward)})
        tests = evaluate_seeds(env, env_params, jax.tree.map(lambda *z: jnp.stack(z), *seed_params), cfg.test_episodes, cfg.eval_seed, cfg.max_steps)
        for row, t in zip(per_seed, tests):
            row["test_reward"], row["test_arrival_rate"] = t["reward_per_agent"][0], t["arrival_rate"]
        rows[method] = {"per_seed": per_seed, **{k: ci95([r[k] for r in per_seed]) for k in ("p_expert_action", "argmax_agreement", "test_reward")}}
        print(f"{method:16s} pi(u_e|o) {rows[method]['p_expert_action'][0]:.3f}  argmax agreement {rows[method]['argmax_agreement'][0]:.3f}  "
              f"test reward {rows[method]['test_reward'][0]:,.0f}", flush=True)
    result = {
        "benchmark": "expert_agreement", "budget": cfg.budget, "scenario": cfg.scenario, "regime": cfg.regime, "n_agents": cfg.n_agents,
        "seeds": cfg.seeds, "episodes": cfg.episodes, "test_episodes": cfg.test_episodes, "expert": "planner", "label": cfg.label, "machine": machine(),
        "command": f"python -m benchmarks.expert_agreement --budget {cfg.budget} --scenario {cfg.scenario} --regime {cfg.regime} --seeds {cfg.seeds}"
                   + (f" --runs-dir {cfg.runs_dir}" if cfg.runs_dir != "runs/sweep" else "") + (f" --label '{cfg.label}'" if cfg.label else ""),
        "methods": rows,
    }
    write_json(cfg.out_path, result)
    plot(result, cfg.out_path.with_suffix(".png"))
    print(f"wrote {cfg.out_path}")
    return result


def plot(result: dict, path: Path) -> None:
    names = list(result["methods"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), sharey=False)
    for ax, key, label in zip(axes, ("argmax_agreement", "p_expert_action", "test_reward"),
                              ("most likely action = expert's", "probability of the expert's action", "greedy test reward per agent")):
        mean = [result["methods"][n][key][0] for n in names]
        half = [np.nan_to_num(result["methods"][n][key][1]) for n in names]
        colors = ["0.6" if n == INITIAL else ("tab:red" if n.startswith("reled") else "tab:blue") for n in names]  # grey: untrained, red: RELED variants, blue: baselines
        ax.bar(range(len(names)), mean, yerr=half, color=colors, capsize=3)
        ax.axhline(mean[0], color="0.4", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), ["untrained" if n == INITIAL else n for n in names], rotation=30, ha="right")
        if key != "test_reward":
            ax.set_ylim(0, 1)
        ax.set_title(label)
    what = result["label"] or f"{result['budget']} budget"
    fig.suptitle(f"Agreement with the planner expert at its decisions: {result['scenario']}/{result['regime']}, "
                 f"{what}, mean and 95% CI over {result['seeds']} seeds (dashed: untrained)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    from reled_jax.train import usage_errors

    with usage_errors():
        agreement(tyro.cli(AgreementConfig, description=__doc__))


if __name__ == "__main__":
    main()
