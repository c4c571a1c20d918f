"""The paper's experiments (Section V) as sweeps: methods x scenarios x regimes x agent counts x seeds.

    python -m benchmarks.sweep --experiment fig4   --budget small   # Fig. 4, 5, 7: all methods, both maps, both regimes
    python -m benchmarks.sweep --experiment table4 --budget small   # Fig. 9 and Table IV: the ablation variants
    python -m benchmarks.sweep --experiment fig8   --budget small   # Fig. 8: 5 ... 200 agents
    python -m benchmarks.sweep --experiment fig4   --budget paper   # the paper's 500 epochs x ~1,000 steps (GPU)

Every cell is one `reled_jax.train` run with all its seeds vmapped in one
compiled program (and split across devices when several are visible, on one
host or on several with `--cluster.enabled`: see `reled_jax.cluster.seed_placement`); with `--seed-runs separate`, one
run per seed, one after another, for cells whose seeds do not fit memory together. Then 20 test episodes per
seed, greedy and sampled on the same keys (`reled_jax.evaluate.evaluate_seeds_modes`) and, once per environment, the
shortest-time and random reference policies on the same test keys.

A cell's run directory is its cache: rerunning a sweep resumes unfinished runs
and reuses finished ones (an ablation shares its RELED and IPPO runs with
Fig. 4). After every cell the results JSON is rewritten, so a long sweep shows
its progress and keeps what it finished; two sweeps may fill one file at once (one
per core, with different --methods), each keeping the other's cells.
`python -m benchmarks.report` turns
the JSON files into plots and REPORT.md.

Nothing is tuned per method: every method gets the same budget, learning
rate, network sizes and evaluation (paper IV-A2).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import time
from pathlib import Path

import jax
import numpy as np
import tyro

from benchmarks.common import RESULTS, machine, write_json
from reled_jax.evaluate import MAX_TEST_STEPS, TEST_EPISODES, TEST_SEED, evaluate_policies, evaluate_seeds_modes, reference_policies, untrained_policies
from reled_jax import checkpoint
from reled_jax.checkpoint import read_checkpoint
from reled_jax.methods import METHODS, PAPER_BASELINES, PAPER_RELED, VA_RELED
from reled_jax.reled import HybridPPOConfig
from reled_jax.cluster import ClusterConfig, join_cluster
from reled_jax.config import TrainConfig, comparable
from reled_jax.train import train, usage_errors
from sim.env import describe_model, simulator_model
from sim.scenarios import ScenarioChoice, load_scenario

ABLATIONS = (*PAPER_RELED, "ippo")

EXPERIMENTS = {
    # Fig. 4 (reward and travel time vs interaction steps), Fig. 5 (vs wall-clock), Fig. 7 (DTW and alpha).
    # reled-va (our variant of the expert advantage, not the paper's Eq. 28) runs beside them, reported apart.
    "fig4": {"methods": (*PAPER_BASELINES, "reled-va"), "scenarios": ("grid", "hongkong"), "regimes": ("moderate", "congested"), "n_agents": (10,)},
    # Fig. 9 and Table IV: ablations on the moderate regime of both maps.
    "table4": {"methods": ABLATIONS, "scenarios": ("grid", "hongkong"), "regimes": ("moderate",), "n_agents": (10,)},
    # The same ablations on top of reled-va's expert advantages (ours, not the paper's): does refinement or
    # the DTW-adaptive alpha matter once the expert term imitates?
    "table4-va": {"methods": (*VA_RELED, "ippo"), "scenarios": ("grid", "hongkong"), "regimes": ("moderate",), "n_agents": (10,)},
    # Fig. 8: agent counts, the paper's 5-20 and beyond.
    "fig8": {"methods": PAPER_BASELINES, "scenarios": ("hongkong",), "regimes": ("moderate",), "n_agents": (5, 10, 15, 20, 50, 100, 200)},
}

BUDGETS = {
    # Fits the 2-core CPU: 20 epochs x 2 envs x 1,024 steps (~50k interaction steps per seed, a tenth of the paper's).
    "small": {"epochs": 20, "n_envs": 2, "rollout_steps": 1024, "n_demo_envs": 2},
    # `python -m reled_jax.train`'s default: 40 x 8 x 1,024 (~380k interaction steps per seed).
    "default": {},
    # Paper IV-A2: 500 epochs x ~1,000 interaction steps.
    "paper": {"preset": "paper"},
    # Seconds: for tests.
    "smoke": {"preset": "smoke"},
}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    experiment: str = "fig4"  # fig4 | table4 | table4-va | fig8
    budget: str = "small"  # small | default | paper | smoke
    seeds: int = 5  # seeds 0..seeds-1, vmapped in each run
    methods: tuple[str, ...] = ()  # empty: the experiment's
    scenarios: tuple[str, ...] = ()  # built-in names, scenario files (.toml) or OSM extracts; empty: the experiment's
    regimes: tuple[str, ...] = ()
    n_agents: tuple[int, ...] = ()
    episodes: int = TEST_EPISODES  # test episodes per seed, greedy and sampled
    eval_seed: int = TEST_SEED
    max_steps: int = MAX_TEST_STEPS
    runs_dir: str = "runs/sweep"
    tag: str = ""  # results file suffix, e.g. "gpu": sweep_fig4_small_gpu.json
    out: str = ""  # default benchmarks/results/sweep_<experiment>_<budget>[_<tag>].json
    cluster: ClusterConfig = ClusterConfig()  # several hosts train each cell together; process 0 writes
    alpha_schedule: str = HybridPPOConfig.alpha_schedule  # which reading of Eq. 30; give others their own --runs-dir and --tag
    # Re-read the training curves of finished cells from their run directories (where they still exist), e.g.
    # after CURVE_KEYS gained a metric; tests and everything else in a cell stay as they were.
    refresh_curves: bool = False
    # QMIX checkpoints hold the replay buffer (~150 MB per seed at the default size), so an interrupted QMIX cell
    # resumes mid-run to the same result; without it a QMIX cell restarts from epoch 0.
    qmix_keep_buffer: bool = False
    # joint: a cell's seeds train vmapped in one run (one program, the fastest). separate: each seed in a run of its
    # own, one after another, on the cell's scenario (`--scenario-seed 0`), for cells whose seeds do not fit memory
    # together (MAPPO with 200 agents asks 61 GiB in one allocation for 5 seeds, 11.4 GB at most for one). The same
    # training, keys and tests, with one difference (docs/experiments.md): a joint run pads every seed's update to
    # the largest row count among its seeds (`batched_epoch`), a separate run to its own, which changes which rows
    # share a minibatch. A cell trained separately says so ("seed_runs"); a finished cell is reused either way.
    seed_runs: str = "joint"  # joint | separate
    # Say where the sweep stands and train nothing: each cell tested, trained to some epoch, or not started, with
    # an estimate of the training left (`plan`).
    plan: bool = False

    def grid(self) -> list[tuple[str, str, int, str]]:
        if self.experiment not in EXPERIMENTS:
            raise SystemExit(f"unknown experiment {self.experiment!r}; choose one of {sorted(EXPERIMENTS)}")
        if self.budget not in BUDGETS:
            raise SystemExit(f"unknown budget {self.budget!r}; choose one of {sorted(BUDGETS)}")
        if self.episodes < 1 or self.max_steps < 1 or any(n < 1 for n in self.n_agents or ()):
            raise SystemExit(f"--episodes, --max-steps and --n-agents must be at least 1 (got {self.episodes}, {self.max_steps}, {list(self.n_agents or ())})")
        spec = EXPERIMENTS[self.experiment]
        methods = self.methods or spec["methods"]
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {tuple(METHODS)}")
        if self.seeds < 2:
            raise SystemExit("a sweep needs --seeds >= 2 for its confidence intervals (5 or more recommended)")
        if self.seed_runs not in SEED_RUNS:
            raise SystemExit(f"unknown --seed-runs {self.seed_runs!r}; choose one of {SEED_RUNS}")
        return [
            (scenario, regime, n, method)
            for scenario in (self.scenarios or spec["scenarios"])
            for regime in (self.regimes or spec["regimes"])
            for n in (self.n_agents or spec["n_agents"])
            for method in methods
        ]

    @property
    def out_path(self) -> Path:
        name = f"sweep_{self.experiment}_{self.budget}" + (f"_{self.tag}" if self.tag else "")
        return Path(self.out) if self.out else RESULTS / f"{name}.json"

    def train_config(self, scenario: str, regime: str, n_agents: int, method: str) -> TrainConfig:
        """The cell's joint run: all its seeds vmapped in one."""
        name = ScenarioChoice(scenario).scenario_name  # a scenario file's or extract's name, not its path
        run = Path(self.runs_dir) / self.budget / f"{name}-{regime}-a{n_agents}-{method}-x{self.seeds}"
        return dataclasses.replace(TrainConfig.of(scenario=scenario, regime=regime, method=method, n_agents=n_agents, seeds=self.seeds, seed=0, out=str(run), resume=True,
                                                  alpha_schedule=self.alpha_schedule, qmix_keep_buffer=self.qmix_keep_buffer,
                                                  **BUDGETS[self.budget]), cluster=self.cluster)

    def seed_configs(self, scenario: str, regime: str, n_agents: int, method: str) -> list[TrainConfig]:
        """The cell's runs as `--seed-runs` says: the joint run, or one run per seed (seed k alone on the joint
        run's scenario, in <the joint run's directory>-separate/seed<k>)."""
        joint = self.train_config(scenario, regime, n_agents, method)
        if self.seed_runs == "joint":
            return [joint]
        base = Path(f"{joint.out_dir}-separate")
        return [dataclasses.replace(joint, run=dataclasses.replace(joint.run, seed=k, seeds=1, scenario_seed=0, out=str(seed_run_dir(base, k))))
                for k in range(self.seeds)]


SEED_RUNS = ("joint", "separate")

CURVE_KEYS = ("interaction_steps", "wall_s", "episode_reward", "travel_time", "arrival_rate", "dtw_m", "alpha", "expert_reward", "execution_rate", "entropy", "expert_share")


def curves(run_dirs: list[Path], seeds: int) -> dict[str, list[list[float]]]:
    """Per-epoch training metrics of a cell's run(s) as [seed][epoch] lists (NaN where a metric is absent or undefined)."""
    rows = [json.loads(line) for d in run_dirs for line in (d / "metrics.jsonl").read_text().splitlines()]
    by_seed = [[r for r in rows if r["seed"] == s] for s in range(seeds)]
    return {k: [[float(r.get(k, float("nan"))) for r in rs] for rs in by_seed] for k in CURVE_KEYS}


def seed_run_dir(separate_dir: Path | str, k: int) -> Path:
    """Where seed k of a cell trained one seed at a time runs: below the cell's `-separate` directory."""
    return Path(separate_dir) / f"seed{k}"


def cell_run_dirs(c: dict) -> list[Path]:
    """The run directories a results file's cell was trained in: its run_dir, or one per seed below it."""
    if c.get("seed_runs", "joint") == "joint":
        return [Path(c["run_dir"])]
    return [seed_run_dir(c["run_dir"], k) for k in range(c["seeds"])]


def evaluate_cell(cfg: SweepConfig, runs: list[tuple[TrainConfig, dict]], t0: float) -> dict:
    """A trained cell's curves and greedy and sampled test episodes (process 0 only: it holds the run directories).
    `runs`: (configuration, `train`'s summary) of its joint run, or of each seed's run in seed order."""
    tcfg = runs[0][0]
    scenario, regime, n_agents, method = tcfg.env.scenario, tcfg.env.regime, tcfg.env.n_agents, tcfg.method
    separate = len(runs) > 1
    run_dirs = [t.out_dir for t, _ in runs]
    # Every seed's policy on a leading seed axis, as the joint run's checkpoint holds them.
    policies = [read_checkpoint(d / "checkpoint.npz")["policy"] for d in run_dirs]
    policy = jax.tree.map(lambda *z: np.concatenate(z), *policies)
    _, env, params = load_scenario(scenario, regime, n_agents=n_agents, seed=0)
    tests, sampled = evaluate_seeds_modes(env, params, policy, cfg.episodes, cfg.eval_seed, cfg.max_steps, (False, True))
    return {
        "method": method, "scenario": scenario, "regime": regime, "n_agents": n_agents, "seeds": cfg.seeds,
        "run_dir": str(run_dirs[0].parent if separate else run_dirs[0]),
        **({"seed_runs": "separate", "train_wall_s_per_seed": [s["wall_s"] for _, s in runs]} if separate else {}),
        # Separate runs trained one after another: the cell's training time is their sum.
        "train_wall_s": float(sum(s["wall_s"] for _, s in runs)), "cell_wall_s": round(time.perf_counter() - t0, 1),
        "interaction_steps_per_seed": int(np.mean([s["interaction_steps_per_seed"] for _, s in runs])),
        "expert": [e for _, s in runs for e in s.get("expert", [])],
        "curves": curves(run_dirs, cfg.seeds),
        # Per seed: mean over the test episodes of the per-agent reward / travel time, and the raw episode means;
        # greedy ("test") and sampled ("test_sampled") actions on the same keys.
        "test": [_test_row(t) for t in tests],
        "test_sampled": [_test_row(t) for t in sampled],
    }


def _test_row(t: dict) -> dict:
    return {"reward": t["reward_per_agent"][0], "travel_time_s": t["travel_time_s"][0], "arrival_rate": t["arrival_rate"],
            "episode_reward": np.mean(t["per_agent"]["reward"], axis=1).tolist(),
            "episode_travel_time_s": np.mean(t["per_agent"]["travel_time_s"], axis=1).tolist()}


def references(cfg: SweepConfig, scenario: str, regime: str, n_agents: int) -> dict:
    """Shortest-time and random (sampling) policies, and seed 0's untrained networks greedy and sampled, on
    the same test keys as the trained ones."""
    _, env, params = load_scenario(scenario, regime, n_agents=n_agents, seed=0)
    policies = reference_policies(params) | untrained_policies(env, 0)
    res = evaluate_policies(env, params, policies, cfg.episodes, cfg.eval_seed, cfg.max_steps)
    return {name: {"reward": r["reward_per_agent"][0], "travel_time_s": r["travel_time_s"][0], "arrival_rate": r["arrival_rate"],
                   "episode_reward": np.mean(r["per_agent"]["reward"], axis=1).tolist()} for name, r in res.items()}


def grid_key(scenario: str, regime: str, n_agents: int, method: str) -> str:
    """A cell's name in a results file: "grid/moderate/a10/reled"."""
    return f"{scenario}/{regime}/a{n_agents}/{method}"


def cell_key(c: dict) -> str:
    return grid_key(c["scenario"], c["regime"], c["n_agents"], c["method"])


def sweep(cfg: SweepConfig) -> dict:
    grid = cfg.grid()
    out = cfg.out_path
    budget = budget_key(cfg)
    result = {
        "benchmark": "sweep", "experiment": cfg.experiment, "budget": cfg.budget, "budget_config": budget, "seeds": cfg.seeds,
        "episodes": cfg.episodes, "simulator": simulator_model(), "machine": machine(), "command": "python -m benchmarks.sweep " + _cli_args(cfg),
        "cells": [], "references": {},
    }
    if out.exists():  # keep finished cells of an earlier, interrupted sweep with the same settings
        result = merged(json.loads(out.read_text()), result, out)
    if cfg.refresh_curves:
        for c in result["cells"]:
            if all((d / "metrics.jsonl").exists() for d in cell_run_dirs(c)):
                c["curves"] = curves(cell_run_dirs(c), c["seeds"])
    done = {cell_key(c) for c in result["cells"]}
    writer = jax.process_index() == 0  # other processes of a cluster only train their share of each cell's seeds
    t_start = time.perf_counter()
    for i, (scenario, regime, n_agents, method) in enumerate(grid):
        key = grid_key(scenario, regime, n_agents, method)
        env_key = f"{scenario}/{regime}/a{n_agents}"
        print(f"[sweep {cfg.experiment}/{cfg.budget}] cell {i + 1}/{len(grid)}: {key} ({time.perf_counter() - t_start:.0f} s so far)", flush=True)
        if writer and env_key not in result["references"]:
            result["references"][env_key] = references(cfg, scenario, regime, n_agents)
        if key not in done:
            t0 = time.perf_counter()
            runs = [(tcfg, train(tcfg)) for tcfg in cfg.seed_configs(scenario, regime, n_agents, method)]
            if writer:
                result["cells"].append(evaluate_cell(cfg, runs, t0))
            done.add(key)
        if writer:
            result = write_merged(out, result)
    if writer:
        print(f"wrote {out} ({len(result['cells'])} cells); plots and report: python -m benchmarks.report")
    return result


def same_settings(a: dict, b: dict) -> bool:
    """Whether two sweep results files were made with the same budget key, seed count and test episodes."""
    return all(a.get(k) == b.get(k) for k in ("budget_config", "seeds", "episodes"))


def merged(disk: dict, result: dict, out: Path) -> dict:
    """`result` with the cells, references and commands of the results file `disk` that it lacks (its own win).

    A file of another budget, seed count or episode count is not merged: the sweep replaces it. A file made
    under another simulator model (sim.env.simulator_model) is refused instead, before anything is trained:
    its cells are results too, and tabling them beside this model's would compare unlike with like."""
    if not same_settings(disk, result):
        return result
    if disk.get("simulator") != result["simulator"]:
        raise SystemExit(f"{out} holds cells made under another simulator model ({describe_model(disk.get('simulator'))}); this code's is "
                         f"{describe_model(result['simulator'])}. Write this sweep elsewhere: --tag NAME (or --out FILE) and --runs-dir DIR")
    ours = {cell_key(c) for c in result["cells"]}
    return result | {
        "cells": result["cells"] + [c for c in disk["cells"] if cell_key(c) not in ours],
        "references": disk["references"] | result["references"],
        "command": "; ".join(dict.fromkeys(disk["command"].split("; ") + result["command"].split("; "))),
    }


def budget_key(cfg: SweepConfig) -> dict:
    """What a results file is keyed by: the budget as RELED resolves it, whatever the sweep's methods. QMIX resolves
    the same budget to its own rollout shape (one environment x 864 steps), and a QMIX-only sweep keyed by that
    replaced the file its other methods had filled. The method's form is part of the key: cells of another form
    are not reused (sweeps from before issue 17 have neither field, and were made with eq30 and centred A^e)."""
    scenario, regime, n_agents, _ = cfg.grid()[0]
    resolved = cfg.train_config(scenario, regime, n_agents, "reled").resolved()
    budget = {k: resolved.get(k) for k in ("epochs", "n_envs", "rollout_steps", "q", "m", "n_demo_envs", "demo_steps", "lr", "preset",
                                           "alpha_schedule", "center_expert_advantages")}
    if resolved.get("stagger_steps"):  # keyed only when set, so sweeps from before the option keep their cells
        budget["stagger_steps"] = resolved.get("stagger_steps")
    return budget


def write_merged(out: Path, result: dict) -> dict:
    """Write the results file, keeping the cells another sweep has written to it since this one started.

    Two sweeps may fill one file at once (one per core, or one per machine, each with its own --methods or
    --scenarios): each re-reads the file under a lock and merges it (`merged`) before writing, so neither
    drops the other's cells."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            result = merged(json.loads(out.read_text()), result, out)
        write_json(out, result)
    return result


def plan(cfg: SweepConfig) -> dict:
    """Where a sweep stands, trained nothing: for each cell of its grid, "tested" (in the results file),
    "partial" (its run directory's checkpoint reached some epoch: the sweep resumes there, or "trained" when it
    reached the last and only the test episodes are left), "foreign" (a checkpoint of another configuration,
    which training refuses) or "not started"; and the training time left.

    The estimate is rough: a partial cell's recent seconds per epoch (`recent_pace`) times the epochs left; a cell not
    started, the mean training time of the tested cells of the same method at the nearest agent count in every
    sweep file of the same settings in the results folder, scaled in proportion to the agents (else the mean of
    all those cells; else unknown). Cells that shared the cores with other work took longer."""
    grid = cfg.grid()
    out = cfg.out_path
    disk = json.loads(out.read_text()) if out.exists() else {}
    settings = {"budget_config": budget_key(cfg), "seeds": cfg.seeds, "episodes": cfg.episodes}
    tested = {cell_key(c): c for c in disk.get("cells", [])} if disk and same_settings(disk, settings) else {}
    runs: dict[str, dict] = {}  # by run directory: a cell two experiments share is counted once
    for path in sorted(out.parent.glob("sweep_*.json")):  # this budget's other experiments share its pace
        other = json.loads(path.read_text())
        runs |= {c["run_dir"]: c for c in other.get("cells", [])} if same_settings(other, settings) else {}
    walls: dict[str, list[tuple[int, float]]] = {}  # method -> (agents, training seconds) of its tested cells
    for c in runs.values():
        walls.setdefault(c["method"], []).append((c["n_agents"], c["train_wall_s"]))
    every = [w for ws in walls.values() for _, w in ws]
    rows = []
    for scenario, regime, n_agents, method in grid:
        key = grid_key(scenario, regime, n_agents, method)
        tcfgs = [t.resolved() for t in cfg.seed_configs(scenario, regime, n_agents, method)]
        row = {"cell": key, "epochs": tcfgs[0].ppo.epochs, "epoch": 0, "left_s": None, "basis": ""}
        if key in tested:
            row |= {"state": "tested", "epoch": tcfgs[0].ppo.epochs, "left_s": 0.0, "train_wall_s": tested[key]["train_wall_s"]}
        else:
            runs = [run_state(t) for t in tcfgs]
            if any(r["state"] == "foreign" for r in runs):
                row |= next(r for r in runs if r["state"] == "foreign")
            elif len(runs) == 1 and runs[0]["state"] != "not started":
                row |= {k: v for k, v in runs[0].items() if k != "wall"}  # a row's times are what is left
            elif len(runs) > 1 and any(r["state"] != "not started" for r in runs):
                row |= separate_state(runs)
            else:
                row["state"] = "not started"
                if method in walls:
                    row |= price_by_agents(walls[method], n_agents, method)
                elif every:
                    row |= {"left_s": float(np.mean(every)), "basis": f"mean of all {len(every)} tested cell(s) of this budget"}
                if len(runs) > 1 and row["left_s"] is not None:
                    row["basis"] += ": the time of all its seeds trained together, a lower bound for them one after another"
        rows.append(row)
    known = [r["left_s"] for r in rows if r["left_s"] is not None]
    return {"out": str(out), "rows": rows, "tested": sum(r["state"] == "tested" for r in rows), "left_s": float(sum(known)),
            "unknown": sum(r["left_s"] is None for r in rows),
            "other_model": bool(disk) and disk.get("simulator") != simulator_model(), "file_model": disk.get("simulator")}


def run_state(tcfg: TrainConfig) -> dict:
    """One run directory's state for `plan`: "not started", "foreign", or "partial"/"trained" with its epoch and
    the seconds left at its recent pace."""
    ckpt = tcfg.out_dir / checkpoint.FILENAME
    if not ckpt.exists():
        return {"state": "not started", "epoch": 0}
    meta, _ = checkpoint.read(ckpt, with_arrays=False)
    theirs, ours = comparable(meta["config"]), comparable(tcfg)
    if not tcfg.ppo.decision_share:  # measured when training starts (reled_jax.train), so a checkpoint holds the measured share
        theirs.pop("decision_share", None), ours.pop("decision_share", None)
    if theirs != ours:
        return {"state": "foreign", "basis": f"{ckpt} was written by another configuration: move it away or use another --runs-dir"}
    epoch = meta["epoch"]
    pace, basis = recent_pace(meta.get("rows", []), epoch, meta["wall"])
    return {"state": "trained" if epoch >= tcfg.ppo.epochs else "partial", "epoch": epoch,
            "left_s": pace * (tcfg.ppo.epochs - epoch), "basis": basis, "wall": meta["wall"]}


def separate_state(runs: list[dict]) -> dict:
    """A cell trained one seed at a time, some of whose seeds have started (`run_state` of each, in seed order):
    the started seeds' time left, and each seed not started priced at the mean time of the started ones
    projected to their last epoch (their wall so far plus their time left)."""
    started = [r for r in runs if r["state"] != "not started"]
    per_seed = float(np.mean([r["wall"] + r["left_s"] for r in started]))
    waiting = len(runs) - len(started)
    at = ", ".join(f"seed {k} {'trained' if r['state'] == 'trained' else 'at epoch ' + str(r['epoch'])}" for k, r in enumerate(runs) if r["state"] != "not started")
    return {"state": "trained" if all(r["state"] == "trained" for r in runs) else "partial", "epoch": min(r["epoch"] for r in runs),
            "seeds_at": at, "left_s": sum(r["left_s"] for r in started) + waiting * per_seed,
            "basis": f"separate seed runs: {at}" + (f"; {waiting} not started, at the started seeds' mean of {per_seed:,.0f} s each" if waiting else "")}


RECENT_EPOCHS = 50


def recent_pace(rows: list[dict], epoch: int, wall: float) -> tuple[float, str]:
    """A partial cell's seconds per epoch over its last `RECENT_EPOCHS` epochs (from the metrics rows its checkpoint
    holds), else over the whole run. An epoch's cost moves as the agents learn: a step ticks the traffic until the
    next decision, so once agents arrive sooner and decide less, an epoch simulates more time (IPPO with 100 agents
    went from 8 s an epoch to 17–22 s as its decisions per epoch fell from ~15,000 to ~1,200), and the latest stretch
    predicts the rest better than the average."""
    walls = {0: 0.0} | {r["epoch"]: r["wall_s"] for r in rows}
    start = max(0, epoch - RECENT_EPOCHS)
    if epoch > start and epoch in walls and start in walls:
        return (walls[epoch] - walls[start]) / (epoch - start), f"its pace over epochs {start + 1}-{epoch}"
    return wall / max(epoch, 1), "its own pace"


def price_by_agents(walls: list[tuple[int, float]], n_agents: int, method: str) -> dict:
    """A cell not started, priced from the tested cells of its method at the agent count nearest its own (by
    ratio): their mean training time scaled in proportion to the agents, since an epoch's decisions and
    per-agent updates grow with them (benchmarks/train_throughput.py --n-agents measures the larger counts)."""
    nearest = min({n for n, _ in walls}, key=lambda n: (abs(np.log(n_agents / n)), -n))
    near = [w for n, w in walls if n == nearest]
    scaled = f", scaled x{n_agents / nearest:.3g} for the agents" if nearest != n_agents else ""
    return {"left_s": float(np.mean(near)) * n_agents / nearest, "basis": f"mean of {len(near)} tested {method} cell(s) at {nearest} agents{scaled}"}


def print_plan(cfg: SweepConfig, p: dict) -> None:
    print(f"[sweep {cfg.experiment}/{cfg.budget}] {p['out']}: {p['tested']} of {len(p['rows'])} cells tested")
    width = max(len(r["cell"]) for r in p["rows"])
    for r in p["rows"]:
        partial = "seeds in part trained, separately" if "seeds_at" in r else f"trained to epoch {r['epoch']} of {r['epochs']}"
        state = {"tested": f"tested (trained in {r.get('train_wall_s', 0):,.0f} s)", "partial": partial,
                 "trained": "trained, not tested", "foreign": "another configuration's checkpoint", "not started": "not started"}[r["state"]]
        left = "" if r["state"] in ("tested", "foreign") else ("unknown" if r["left_s"] is None else f"~{r['left_s']:,.0f} s")
        basis = f"  ({r['basis']})" if r["basis"] and r["state"] != "foreign" else ""
        print(f"  {r['cell']:<{width}}  {state:<36} {left}{basis}")
        if r["state"] == "foreign":
            print(f"  {'':<{width}}  {r['basis']}")
    unknown = f", and {p['unknown']} cell(s) with no estimate" if p["unknown"] else ""
    print(f"training left: ~{p['left_s'] / 3600:.1f} h{unknown} (rough: paces differ with what else shares the machine)")
    if p["other_model"]:
        print(f"note: this file's cells were made under another simulator model ({describe_model(p['file_model'])}); this code's is "
              f"{describe_model(simulator_model())}, so it will not add cells to it: continue it from a checkout of that model, or "
              "write elsewhere with --tag NAME (or --out FILE) and --runs-dir DIR")


def _cli_args(cfg: SweepConfig) -> str:
    args = [f"--experiment {cfg.experiment}", f"--budget {cfg.budget}", f"--seeds {cfg.seeds}"]
    for name in ("methods", "scenarios", "regimes", "n_agents"):
        if getattr(cfg, name):
            args.append(f"--{name.replace('_', '-')} " + " ".join(map(str, getattr(cfg, name))))
    if cfg.tag:
        args.append(f"--tag {cfg.tag}")
    if cfg.alpha_schedule != SweepConfig.alpha_schedule:
        args.append(f"--alpha-schedule {cfg.alpha_schedule}")
    if cfg.runs_dir != SweepConfig.runs_dir:
        args.append(f"--runs-dir {cfg.runs_dir}")
    if cfg.refresh_curves:
        args.append("--refresh-curves")
    if cfg.qmix_keep_buffer:
        args.append("--qmix-keep-buffer")
    if cfg.seed_runs != SweepConfig.seed_runs:
        args.append(f"--seed-runs {cfg.seed_runs}")
    return " ".join(args)


def main() -> None:
    with usage_errors():
        cfg = tyro.cli(SweepConfig, description=__doc__)
        if cfg.plan:
            print_plan(cfg, plan(cfg))
            return
        join_cluster(cfg.cluster)
        sweep(cfg)


if __name__ == "__main__":
    main()
