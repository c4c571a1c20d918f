"""Table III for any expert backend: execution rate, demonstration reward, inference time and DTW difference
at 0, 25 and 50 refinements, with and without the navigation interfaces (IFs) and refinement (Refn.).

    python -m benchmarks.llm_demos                         # offline planner (default)
    python -m benchmarks.llm_demos --backend logit
    python -m benchmarks.llm_demos --backend llm --llm-url http://127.0.0.1:8080/v1 --llm-model NAME
    python -m benchmarks.llm_demos --checkpoint runs/grid-moderate-reled-s0/checkpoint.npz   # feedback from a trained policy

Protocol (paper V-C1, on the grid scenario that stands in for Orlando): for each
setting, `repeats` independent expert services ("prompts") each plan all agents
and are refined `refinements` times. Every refinement partitions the agents at
random into m subsets; each subset follows its compiled plans for one episode
while the other agents follow the policy (sampled), and the R^j / K^j feedback
of that episode, with its RVI and PDI (Theorem 1), is sent with the next
request. The policy is a trained one with `--checkpoint` (one seed's networks;
the checkpoint sets the scenario, regime and agent count): RVI then measures
the trained agents' reward volatility and PDI (Eq. 22) the divergence between
the expert's actions and the trained policy, as RELED sees them late in
training. Without a checkpoint it is a fixed stand-in for a learned policy (a
logit choice over free-flow cost-to-go at each junction, temperature
`policy_theta`).

Reported per setting and checkpoint (mean +- SD over repeats): Exec. (% of agent
plans that ran to a valid instruction sequence), Reward (episode return of
the expert-driven agents), Time (backend seconds per request), and DTW diff.
(DTW, in metres of junction coordinates, between each agent's expert
trajectory and its trajectory at refinement 0, averaged over agents). For
reference, "(shortest)" is the same agents' return when, under identical
conditions (same partition, keys and other agents), they drive the free-flow
shortest-time policy instead of the plan. Writes JSON and a plot under
benchmarks/results/.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from tqdm import tqdm

from benchmarks.common import RESULTS, machine, write_json
from llm.client import LLMConfig
from llm.demos import make_demo_rollout
from llm.feedback import agent_routes, build_feedback, merge_feedback, volatility_threshold
from llm.service import ExpertConfig, ExpertService
from reled_jax.checkpoint import read_checkpoint
from reled_jax.dtw import dtw_reference
from reled_jax.evaluate import checkpoint_policies
from sim.policies import shortest_time_policy
from sim.scenarios import load_scenario

SETTINGS = (("IFs + Refn.", True, True), ("Refn. only (no IFs)", False, True), ("IFs only (no Refn.)", True, False))


@dataclasses.dataclass(frozen=True)
class Args:
    backend: str = "planner"  # planner | logit | llm
    scenario: str = "grid"
    regime: str = "moderate"
    n_agents: int = 10
    repeats: int = 5  # independent services per setting (the paper: 10 prompts)
    refinements: int = 50
    checkpoints: tuple[int, ...] = (0, 25, 50)
    settings: tuple[int, ...] = (0, 1, 2)  # indices into SETTINGS (the Logit expert ignores IFs and feedback: use 0)
    m: int = 2  # subsets per refinement
    n_steps: int = 512  # interaction steps per demonstration episode
    policy_theta: float = 5.0
    checkpoint: str = ""  # a training run's checkpoint.npz: its policy (seed `checkpoint_seed`) drives the other agents
    checkpoint_seed: int = 0  # which of the checkpoint's seeds (0: its first)
    seed: int = 0
    llm_url: str = ""
    llm_model: str = ""
    llm_cache: str = "cache/llm"
    llm_max_tokens: int = 1024
    token_budget: int = 10_000  # history budget (estimated tokens); keep it within the server's context
    llm_timeout_s: float = 120.0
    out: str = ""  # default benchmarks/results/llm_demos_<backend>.json


def stand_in_policy(params, shortest_time: jax.Array, theta: float):
    """Logits of a logit choice over free-flow cost-to-go: a sane stand-in for a learned policy.

    Cost-to-go of a slot = its edge's free-flow time + free-flow shortest time
    from the edge's end to the destination, relative to the best from here.
    """

    def logits(key, obs):
        del key
        node = obs.features[:, 0].astype(jnp.int32)
        dest = obs.features[:, 1].astype(jnp.int32)
        safe = jnp.maximum(params.out_edges[node], 0)
        to_go = params.edge_free_time[safe] + shortest_time[params.edge_to[safe], dest[:, None]]
        return -theta * to_go / jnp.maximum(shortest_time[node, dest], 1.0)[:, None]

    return logits


def trained_logits(ck: dict, env, seed_index: int):
    """Logits `(key, obs) -> [A, M]` of one seed's trained policy networks in a loaded checkpoint."""
    n_seeds = ck["policy"]["params"]["Dense_0"]["kernel"].shape[0]
    if not 0 <= seed_index < n_seeds:
        raise SystemExit(f"--checkpoint-seed {seed_index} is outside the checkpoint's {n_seeds} seed(s); give 0 ... {n_seeds - 1}")
    policy = list(checkpoint_policies(ck, env).values())[seed_index]
    return lambda key, obs: policy.logits(obs)


def main(args: Args) -> dict:
    ck = None
    if args.checkpoint:
        ck = read_checkpoint(args.checkpoint)  # a one-line exit when it is missing or malformed
        scenario, regime, n_agents = ck["run"]["scenario"], ck["run"]["regime"], ck["run"]["n_agents"]
        args = dataclasses.replace(args, scenario=scenario, regime=regime, n_agents=n_agents)
    network, env, params = load_scenario(args.scenario, args.regime, n_agents=args.n_agents, seed=args.seed)
    shortest_time = jnp.asarray(np.where(np.isfinite(network.shortest_time), network.shortest_time, 1e6), jnp.float32)
    origin, dest = np.asarray(params.agent_origin), np.asarray(params.agent_dest)
    rollout = jax.jit(make_demo_rollout(env, args.n_steps), static_argnums=4)
    policy = stand_in_policy(params, shortest_time, args.policy_theta) if ck is None else trained_logits(ck, env, args.checkpoint_seed)
    policy_name = "stand_in_policy" if ck is None else "trained_policy"
    shortest = lambda key, obs: jnp.where(jnp.arange(env.m_out)[None] == shortest_time_policy(key, obs, params)[:, None], 0.0, -1e9)  # noqa: E731
    none = jnp.zeros(args.n_agents, bool)

    @jax.jit
    def baseline_rollout(key, subset_mask):
        mixed = lambda kk, obs: jnp.where(subset_mask[:, None], shortest(kk, obs), policy(kk, obs))  # noqa: E731
        return make_demo_rollout(env, args.n_steps)(key, params, _dummy_plans(env, params), none, mixed)

    llm = LLMConfig.from_env(
        base_url=args.llm_url, model=args.llm_model, cache_dir=args.llm_cache, max_tokens=args.llm_max_tokens, timeout_s=args.llm_timeout_s
    )

    reference = {}
    for name, pol in [("shortest_time", shortest), (policy_name, policy)]:
        returns = []
        for r in range(args.repeats):
            demo = rollout(jax.random.PRNGKey(10_000 + r), params, _dummy_plans(env, params), none, pol)
            returns.append(float(np.asarray(demo.reward).sum(0).mean()))
        reference[name] = _stat(returns)

    coords = network.node_xy
    results = {"args": dataclasses.asdict(args), "policy": policy_name, "reference_reward": reference, "settings": {}}
    if ck is not None:
        results["checkpoint"] = {"path": args.checkpoint, "epoch": ck["epoch"], **ck["run"]}
    start = time.perf_counter()
    settings = [SETTINGS[i] for i in args.settings]
    total = len(settings) * args.repeats * (args.refinements + 1)
    with tqdm(total=total, desc=f"Table III [{args.backend}]", unit="refinement") as bar:
        for name, interfaces, refine in settings:
            curves = {k: [] for k in ("exec", "reward", "time", "dtw", "baseline_reward", "rvi", "pdi")}
            expert_stats = []
            for r in range(args.repeats):
                rng = np.random.default_rng([args.seed, r])
                config = ExpertConfig(
                    backend=args.backend, interfaces=interfaces, refine=refine, llm=llm, seed=args.seed + r, token_budget=args.token_budget
                )
                service = ExpertService(network, origin, dest, config=config, t_max=params.t_max)
                base = rollout(jax.random.PRNGKey(20_000 + r), params, _dummy_plans(env, params), none, policy)
                base = {f.name: np.asarray(getattr(base, f.name)) for f in dataclasses.fields(base)}
                feedback_by_agent: dict = {}
                first_route: dict[int, list] = {}
                exec_c, reward_c, time_c, dtw_c, base_c, rvi_c, pdi_c = [], [], [], [], [], [], []
                for k in range(args.refinements + 1):
                    subsets = np.array_split(rng.permutation(args.n_agents), args.m)
                    executed_before = service.stats.plans_executed
                    fbs = [merge_feedback(list(feedback_by_agent.values()), s) for s in subsets]
                    outs = service.plan(subsets, fbs)
                    exec_c.append((service.stats.plans_executed - executed_before) / args.n_agents)
                    time_c.append(float(np.mean([o.latency_s for o in outs])))
                    rewards, dtws, base_rewards, rvis, pdis = [], [], [], [], []
                    for j, out in enumerate(outs):
                        mask = np.zeros(args.n_agents, bool)
                        mask[list(out.subset)] = True
                        key = jax.random.PRNGKey(1_000 * r + k * args.m + j)
                        demo = rollout(key, params, out.compiled.tensors, jnp.asarray(mask), policy)
                        # Baseline under identical conditions: the subset drives free-flow shortest time instead.
                        base_returns = np.asarray(baseline_rollout(key, jnp.asarray(mask)).reward).sum(0)
                        base_rewards += [float(base_returns[a]) for a in out.subset]
                        outside = ~mask
                        threshold = volatility_threshold(base["reward"], base["arrived_now"], base["valid"], outside, params.terminal_bonus)
                        fb = build_feedback(demo, out.subset, out.compiled, network, threshold, params.terminal_bonus)
                        for a in out.subset:
                            feedback_by_agent[a] = fb
                        rvis.append(fb.rvi)
                        pdis.append(fb.pdi)
                        routes = agent_routes(demo, network)
                        returns = np.asarray(demo.reward).sum(0)
                        for a in out.subset:
                            rewards.append(float(returns[a]))
                            first_route.setdefault(a, routes[a])
                            dtws.append(dtw_reference(coords[routes[a]], coords[first_route[a]]))
                    reward_c.append(float(np.mean(rewards)))
                    base_c.append(float(np.mean(base_rewards)))
                    dtw_c.append(float(np.mean(dtws)))
                    rvi_c.append(float(np.mean(rvis)))
                    pdi_c.append(float(np.mean(pdis)))
                    bar.update(1)
                    bar.set_postfix(setting=name, exec=f"{exec_c[-1]:.0%}", reward=f"{reward_c[-1]:.0f}")
                for key, curve in zip(("exec", "reward", "time", "dtw", "baseline_reward", "rvi", "pdi"), (exec_c, reward_c, time_c, dtw_c, base_c, rvi_c, pdi_c)):
                    curves[key].append(curve)
                expert_stats.append({**service.stats.as_dict(), "last_errors": service.stats.last_errors[-5:]})
                service.close()
            table = {}
            for c in args.checkpoints:
                if c > args.refinements:
                    continue
                table[str(c)] = {
                    "exec_pct": _stat([100 * x[c] for x in curves["exec"]]),
                    "reward": _stat([x[c] for x in curves["reward"]]),
                    "shortest_time_reward": _stat([x[c] for x in curves["baseline_reward"]]),
                    "time_s": _stat([x[c] for x in curves["time"]]),
                    "dtw_diff": _stat([x[c] for x in curves["dtw"]]) if c > 0 else None,
                    # Theorem 1's indices of that refinement's episodes, per subset (the feedback the next request carries)
                    "rvi": _stat([x[c] for x in curves["rvi"]]),
                    "pdi": _stat([x[c] for x in curves["pdi"]]),
                }
            results["settings"][name] = {
                "interfaces": interfaces, "refine": refine, "table": table, "curves": curves, "expert_stats": expert_stats
            }
    results["wall_s"] = time.perf_counter() - start
    results["machine"] = machine()
    out = Path(args.out) if args.out else RESULTS / f"llm_demos_{args.backend}{'_trained' if ck is not None else ''}.json"
    write_json(out, results)
    _plot(results, out.with_suffix(".png"))
    _print_table(results)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return results


def _dummy_plans(env, params):
    """Plans nobody follows (all agents on the policy): live shortest time to the destination."""
    from llm.compile import PlanTensors

    return PlanTensors(target=params.agent_dest[:, None], mode=jnp.ones((env.n_agents, 1), jnp.int32), length=jnp.ones((env.n_agents,), jnp.int32))


def _stat(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "sd": float(v.std()), "n": int(v.size)}


def _print_table(results: dict) -> None:
    ref = results["reference_reward"]
    policy = results.get("policy", "stand_in_policy")
    print(f"reference returns: shortest-time {ref['shortest_time']['mean']:.1f}, {policy.replace('_', ' ')} {ref[policy]['mean']:.1f}")
    print(f"{'setting':24s} {'refn':>4s} {'Exec %':>14s} {'Reward':>16s} {'(shortest)':>10s} {'Time s':>14s} {'DTW diff':>16s} {'RVI':>8s} {'PDI':>8s}")
    for name, s in results["settings"].items():
        for c, row in s["table"].items():
            dtw = "-" if row["dtw_diff"] is None else f"{row['dtw_diff']['mean']:.0f} ± {row['dtw_diff']['sd']:.0f}"
            print(
                f"{name:24s} {c:>4s} {row['exec_pct']['mean']:6.1f} ± {row['exec_pct']['sd']:5.1f} "
                f"{row['reward']['mean']:7.1f} ± {row['reward']['sd']:6.1f} {row['shortest_time_reward']['mean']:10.1f} {row['time_s']['mean']:6.3f} ± {row['time_s']['sd']:5.3f} {dtw:>16s}"
                + (f" {row['rvi']['mean']:8.1f} {row['pdi']['mean']:8.3f}" if "rvi" in row else "")
            )


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, s in results["settings"].items():
        for ax, key, label in zip(axes, ("exec", "reward", "dtw"), ("execution rate (%)", "demonstration return", "DTW vs refinement 0 (m)")):
            curve = np.asarray(s["curves"][key], float)
            if key == "exec":
                curve = 100 * curve
            mean, sd = curve.mean(0), curve.std(0)
            x = np.arange(len(mean))
            ax.plot(x, mean, label=name)
            ax.fill_between(x, mean - sd, mean + sd, alpha=0.2)
            ax.set_xlabel("refinement")
            ax.set_title(label)
    axes[0].set_ylim(0, 105)
    first = next(iter(results["settings"].values()))
    axes[1].plot(np.asarray(first["curves"]["baseline_reward"]).mean(0), color="k", ls="--", lw=1, label="subset on shortest-time policy")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Expert demonstrations, backend {results['args']['backend']}, {results['args']['scenario']}-{results['args']['regime']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Args))
