"""The paper's Fig. 6: traffic flow of the expert's demonstrations beside the trained agents' trajectories, on the map.

    python -m benchmarks.flow_map --checkpoint runs/hongkong-moderate-reled-s0/checkpoint.npz      # make fig6
    python -m benchmarks.flow_map --checkpoint RUN/checkpoint.npz --episodes 20 --greedy

From a training checkpoint: its scenario, regime, agents and first seed's policy. The expert is the run's
backend (the offline planner, or the Logit model; an LLM run is drawn with the planner, which needs no
endpoint, and says so), all agents following its plans. The agents drive `--episodes` episodes with the
trained policy, sampled as in training (`--greedy`: its most likely actions), on the same keys as the
demonstrations. Flow is the mean number of agent traversals of each road per episode, drawn on one
log-normalised scale, log(1 + flow) / log(1 + the largest flow in either panel), so the panels compare.
Writes benchmarks/results/fig6_<scenario>-<regime>.png and .json (flows, their agreement, the command).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from benchmarks.common import RESULTS, machine, write_json
from llm.demos import DemoRollout, make_demo_rollout
from llm.service import ExpertConfig, ExpertService
from reled_jax.checkpoint import read_checkpoint
from reled_jax.evaluate import TEST_SEED
from reled_jax.networks import MLP, observe
from reled_jax.reled import policy_apply
from sim.env import simulator_model
from sim.render import road_segments
from sim.scenarios import load_scenario


@dataclasses.dataclass(frozen=True)
class FlowArgs:
    checkpoint: str  # a training checkpoint (reled_jax.train)
    episodes: int = 10  # demonstration and agent episodes, on the same keys
    seed: int = TEST_SEED  # their keys
    steps: int = 1024  # interaction steps per episode at most
    greedy: bool = False  # the agents' most likely actions instead of sampling as in training
    out: str = ""  # default benchmarks/results/fig6_<scenario>-<regime>.png (and .json beside it)


def expert_plans(network, env_params, backend: str, seed: int):
    """Every agent's compiled plan from an offline expert backend (one subset, no feedback): PlanTensors."""
    service = ExpertService(network, np.asarray(env_params.agent_origin), np.asarray(env_params.agent_dest),
                            config=ExpertConfig(backend=backend, seed=seed), t_max=env_params.t_max)
    try:
        return service.plan([tuple(range(len(service.dest)))], None)[0].compiled.tensors
    finally:
        service.close()


def agent_edge_flows(rollout: DemoRollout, out_edges: jax.Array, n_edges: int) -> jax.Array:
    """[A, E] how often each agent entered each road in one episode: the out-edge each decision chose."""
    edges = out_edges[rollout.node, rollout.action]  # [T, A]
    taken = rollout.decided & rollout.valid[:, None] & (edges >= 0)
    one_hot = jax.nn.one_hot(jnp.where(taken, edges, n_edges), n_edges + 1)[..., :n_edges]  # [T, A, E]
    return one_hot.sum(0)


def make_flows(env, env_params, plans, policy_params, steps: int, greedy: bool):
    """A jitted `flows(keys, expert_mask) -> [episodes, A, E]` road entries per agent and episode: the agents in
    `expert_mask` on the expert's plans, the others on the policy. One program serves both panels."""
    demo = make_demo_rollout(env, steps)
    net = MLP(env.m_out, one_hot_nodes=env.n_nodes)

    def logits(_key, obs):
        raw = policy_apply(net, policy_params, observe(obs.features, env.m_out), obs.action_mask)
        return raw * 1e4 if greedy else raw  # sharpened to its argmax: the rollout samples from these

    @jax.jit
    def run(keys, mask):
        return jax.vmap(lambda k: agent_edge_flows(demo(k, env_params, plans, mask, logits), env_params.out_edges, env.n_edges))(keys)

    return lambda keys, mask: np.asarray(run(keys, mask))


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """How alike the expert's flow `a` and the agents' `b` are: cosine similarity, the roads each uses and both use,
    and the share of the expert's flow that runs on roads the agents use too (its corridors, replicated)."""
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return {"cosine": round(cosine, 4), "roads_expert": int((a > 0).sum()), "roads_agents": int((b > 0).sum()), "roads_both": int(((a > 0) & (b > 0)).sum()),
            "expert_flow_on_agent_roads": round(float(a[b > 0].sum() / max(a.sum(), 1e-12)), 4)}


def plot(network, env_params, flow_expert: np.ndarray, flow_agents: np.ndarray, titles: tuple[str, str], suptitle: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection

    xy = network.node_xy
    segments = road_segments(network)
    top = np.log1p(max(flow_expert.max(), flow_agents.max(), 1e-9))
    cmap = colormaps["inferno_r"]
    origin, dest = np.asarray(env_params.agent_origin), np.asarray(env_params.agent_dest)
    fig, axes = plt.subplots(1, 2, figsize=(14, 7))
    for ax, flow, title in zip(axes, (flow_expert, flow_agents), titles):
        level = np.log1p(flow) / top
        used = flow > 0
        ax.add_collection(LineCollection(segments[~used], colors="#d5d5d5", linewidths=1.0, zorder=1))
        order = np.argsort(level[used])  # heavier roads drawn on top
        ax.add_collection(LineCollection(segments[used][order], colors=cmap(0.15 + 0.85 * level[used][order]),
                                         linewidths=1.5 + 4.5 * level[used][order], zorder=2))
        ax.scatter(xy[origin, 0], xy[origin, 1], s=40, c="#1f77b4", edgecolors="white", zorder=3, label="origins")
        ax.scatter(xy[dest, 0], xy[dest, 1], s=90, marker="*", c="#2ca02c", edgecolors="black", linewidths=0.5, zorder=3, label="destinations")
        ax.set_title(title, fontsize=11)
        ax.set_aspect("equal")
        ax.autoscale()
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="lower left", fontsize=8)
    sm = plt.cm.ScalarMappable(cmap=matplotlib.colors.LinearSegmentedColormap.from_list("flow", cmap(np.linspace(0.15, 1, 256))),
                               norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=axes, fraction=0.025, pad=0.01, label="log-normalised flow: log(1 + flow) / log(1 + max flow)")
    fig.text(0.01, 0.01, "© OpenStreetMap contributors (ODbL)", fontsize=7, color="#555")
    fig.suptitle(suptitle, fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(args: FlowArgs) -> dict:
    if args.episodes < 1 or args.steps < 1:
        raise SystemExit(f"--episodes and --steps must be at least 1 (got {args.episodes}, {args.steps})")
    ck = read_checkpoint(args.checkpoint)
    run, config = ck["run"], ck["config"]
    network, env, env_params = load_scenario(run["scenario"], run["regime"], n_agents=run["n_agents"], seed=run["scenario_seed"])
    backend = config.get("expert", {}).get("backend", "planner")
    if backend not in ("planner", "logit"):
        print(f"note: the run's expert is {backend!r}; the demonstrations here are the offline planner's", file=sys.stderr)
        backend = "planner"
    policy_params = jax.tree.map(lambda z: jnp.asarray(z[0]), ck["policy"])
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.episodes)
    plans = expert_plans(network, env_params, backend, run["seed"])
    flows = make_flows(env, env_params, plans, policy_params, args.steps, args.greedy)
    per_expert, per_agents = flows(keys, jnp.ones(env.n_agents, bool)), flows(keys, jnp.zeros(env.n_agents, bool))
    flow_expert, flow_agents = per_expert.sum(1).mean(0), per_agents.sum(1).mean(0)
    mode = "greedy" if args.greedy else "sampled"
    name = f"{network.name}-{run['regime']}"
    out = Path(args.out) if args.out else RESULTS / f"fig6_{name}.png"
    score = agreement(flow_expert, flow_agents)
    titles = (f"expert demonstrations ({backend}), {args.episodes} episodes",
              f"trained agents ({run['method']}, epoch {ck['epoch']}, {mode}), {args.episodes} episodes")
    plot(network, env_params, flow_expert, flow_agents, titles,
         f"Traffic flow of {env.n_agents} agents on {name} (Fig. 6): flow agreement (cosine) {score['cosine']:.2f}, "
         f"roads used {score['roads_expert']} / {score['roads_agents']}, both {score['roads_both']}", out)
    result = {
        "benchmark": "flow_map", "checkpoint": str(args.checkpoint), "scenario": run["scenario"], "regime": run["regime"], "method": run["method"],
        "epoch": ck["epoch"], "expert": backend, "episodes": args.episodes, "agents": mode, "agreement": score,
        "flow_expert": flow_expert.round(4).tolist(), "flow_agents": flow_agents.round(4).tolist(), "machine": machine(),
        # The dynamics the flows were played on (this code's), and those the policy was trained on (its checkpoint's).
        "simulator": simulator_model(), "trained_on": ck["meta"].get("simulator"),
        "command": f"python -m benchmarks.flow_map --checkpoint {args.checkpoint} --episodes {args.episodes}" + (" --greedy" if args.greedy else ""),
    }
    write_json(out.with_suffix(".json"), result)
    print(f"wrote {out} and {out.with_suffix('.json')}: flow agreement (cosine) {score['cosine']:.3f}; roads used: expert {score['roads_expert']}, "
          f"agents {score['roads_agents']}, both {score['roads_both']}")
    return result


if __name__ == "__main__":
    from sim.cli import usage_errors

    with usage_errors():
        main(tyro.cli(FlowArgs, description=__doc__))
