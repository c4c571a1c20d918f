"""Entry point: `python -m reled_jax.train` (paper Algorithm 1, all methods of the ablation).

    python -m reled_jax.train                                  # RELED, hongkong/moderate, offline planner expert
    python -m reled_jax.train --method ippo --seeds 3
    python -m reled_jax.train --scenario grid --regime congested --expert.backend llm --expert.llm.base-url http://127.0.0.1:8080/v1
    python -m reled_jax.train --preset paper                   # the paper's budget: 500 epochs x ~1000 interaction steps
    python -m reled_jax.train --seeds 16 --cluster.enabled     # one process per host (SLURM, Open MPI, ... detected)

Data flow: scenario -> env params -> per-seed states (stacked) -> every q epochs the
SED module asks the expert service for plans and rolls out demonstrations (host:
the only round trip) -> q epochs of rollout + HPO update as one compiled program,
seeds vmapped -> metrics (CSV, JSONL), checkpoint, progress bar -> plots and summary.
A killed run resumes from its last checkpoint (`--resume`) to the same result.

Devices: the seed axis is split across every visible device (`seed_placement`); with
`--cluster.enabled` every host runs this same program, `jax.distributed` joins their
devices into one mesh, and process 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from jax.experimental import multihost_utils
from tqdm import tqdm

from llm.client import LLMConfig, LLMError
from llm.service import ExpertConfig, ExpertService
from reled_jax import checkpoint
from reled_jax import qmix
from reled_jax.cluster import ClusterConfig, join_cluster, seed_placement, to_host
from reled_jax.evaluate import MAX_TEST_STEPS, TEST_SEED, evaluate_policies, evaluate_seeds_modes, reference_policies
from reled_jax.networks import init_env_agents, input_dim as observation_dim
from reled_jax.mappo import global_state_dim
from reled_jax.methods import METHODS, method
from reled_jax.records import closing_table, fmt_mean, jsonable, plot_run, run_summary, write_metrics
from reled_jax.reled import ALPHA_SCHEDULES, HybridPPOConfig, empty_expert, init_state, make_epoch, measure_decision_share
from reled_jax.sed import SED, SEDConfig
from sim.scenarios import REGIMES, SCENARIOS, load_scenario

PRESETS = {
    # Finishes on a 2-core CPU in a few minutes and visibly learns.
    "default": {},
    # Paper IV-A2: 500 epochs x 1,000 interaction steps. 64 environments in lockstep, carried from epoch
    # to epoch. 32 env steps made ~1,000 decisions an epoch of the first (random) policy on hongkong with
    # 10 agents, but a learned policy decides about half as often: 500 epochs x 32 steps made 240-257 k
    # interaction steps (benchmarks/results/train_throughput.json); 64 steps made 315 k in 203 s
    # (train_throughput_paper64.json), nearer the paper's 5 x 10^5 but not there: the count follows the
    # policy, and a fixed count needs a rollout that stops at a number of decisions (not built).
    # One environment x 864 steps of its own was ~13x slower.
    # PPO's epochs and minibatches are not in the paper: 4 x 2 give minibatches of ~50-100 decisions per
    # agent. benchmarks/train_throughput.py measures this preset.
    "paper": {"epochs": 500, "n_envs": 64, "rollout_steps": 64, "n_demo_envs": 1, "lockstep": True, "carry_envs": True,
              "update_epochs": 4, "n_minibatches": 2},
    # The paper budget as first run here: one environment of its own x 864 steps, fresh every epoch, 8 x 8 updates.
    "paper-1env": {"epochs": 500, "n_envs": 1, "rollout_steps": 864, "n_demo_envs": 1},
    # Seconds, for tests and smoke checks.
    "smoke": {"epochs": 4, "n_envs": 2, "rollout_steps": 32, "decision_share": 1.0},  # no probe, one update branch
}


# TrainConfig's algorithm fields take their defaults from the algorithm configs, which declare each one once:
# HybridPPOConfig (RELED, IPPO, MAPPO), SEDConfig (the expert refreshes) and QMixConfig (fields prefixed qmix_).
# tests/test_methods.py walks the dataclasses and checks that same-named fields agree and every one reaches the CLI.
_P, _S, _Q = HybridPPOConfig, SEDConfig, qmix.QMixConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # The environment and the run
    scenario: str = "hongkong"
    regime: str = "moderate"
    method: str = "reled"  # reled | reled-norefine | reled-alpha0.2 | reled-alpha0.5 | reled-logit | reled-va (and reled-va-norefine, -alpha0.2, -alpha0.5, -logit) | ippo | mappo | qmix
    n_agents: int = 10
    seed: int = 0
    seeds: int = 1  # seeds seed, seed+1, ... vmapped in one program
    preset: str = "default"  # default | paper | paper-1env | smoke (sets the budget fields you leave at their defaults)
    # The budget and PPO (HybridPPOConfig; QMIX takes the same budget, learning rate, gamma, clipping and reward scale)
    epochs: int = _P.epochs  # K
    n_envs: int = _P.n_envs
    rollout_steps: int = _P.rollout_steps  # environment steps per environment per epoch
    lr: float = _P.lr
    gamma: float = _P.gamma
    gae_lambda: float = _P.gae_lambda
    clip_eps: float = _P.clip_eps
    entropy_coef: float = _P.entropy_coef  # beta (Eq. 31)
    value_coef: float = _P.value_coef
    max_grad_norm: float = _P.max_grad_norm
    update_epochs: int = _P.update_epochs
    n_minibatches: int = _P.n_minibatches
    reward_scale: float = _P.reward_scale
    # RELED's hybrid objective (HybridPPOConfig)
    alpha_schedule: str = _P.alpha_schedule  # text | eq30 | expert-weight: which reading of Eq. 30
    center_expert_advantages: bool = _P.center_expert_advantages  # True: A^e standardised on its own (before issue 17)
    expert_baseline: str = _P.expert_baseline  # expert: Eq. 28's V^e | agent: V^a (reled-va* always use V^a)
    dtw_scale_m: float = _P.dtw_scale_m  # Eq. 30's D in units of this many metres
    max_trajectory: int = _P.max_trajectory  # junctions kept per trajectory for DTW
    # The expert refreshes (SEDConfig). The paper's q and m, also reachable by what they mean (FLAG_ALIASES).
    q: Annotated[int, tyro.conf.arg(aliases=("--refresh-every",), help="q: epochs between expert refreshes (new plans, demonstrations and feedback; Algorithm 1)")] = _S.q
    m: Annotated[int, tyro.conf.arg(aliases=("--subsets",), help="m: agent subsets the expert is asked about at each refresh (the partition A_1..A_m, III-D)")] = _S.m
    n_demo_envs: int = _S.n_demo_envs  # expert episodes per subset
    demo_steps: int = _S.demo_steps  # environment steps per expert episode
    expert: ExpertConfig = ExpertConfig()
    # QMIX only (QMixConfig)
    qmix_updates_per_epoch: int = _Q.updates_per_epoch  # minibatch updates per epoch
    qmix_target_every: int = _Q.target_every  # updates between target-network copies
    qmix_buffer_size: int = _Q.buffer_size
    qmix_batch_size: int = _Q.batch_size  # capped at one epoch's transitions for small budgets
    qmix_eps_start: float = _Q.eps_start
    qmix_eps_end: float = _Q.eps_end
    qmix_eps_decay_frac: float = _Q.eps_decay_frac  # of the epochs
    qmix_mixer_embed: int = _Q.mixer_embed
    # QMIX only: checkpoints hold the replay buffer (~150 MB at the default size), so an unfinished run can
    # resume to the same result. Off: checkpoints hold the networks only, and only a finished run resumes.
    qmix_keep_buffer: bool = False
    # Speed (benchmarks/train_throughput.py; none changes what an interaction step is):
    decision_share: float = _P.decision_share  # rows per agent of the update's usual branch; 0: measured on a random rollout
    update_block: int = _P.update_block  # > 0: gradient accumulation over blocks of this many decision rows; no probe, no capacity
    lockstep: bool = _P.lockstep  # environments tick together until any has a decision (RouteChoiceEnv.step_batch)
    carry_envs: bool = _P.carry_envs  # episodes continue across epochs, so rollouts may be shorter than an episode
    # Devices, output, progress
    shard_seeds: bool = True  # split the seed axis across all visible devices when they divide it
    cluster: ClusterConfig = ClusterConfig()  # several hosts: see join_cluster
    out: str = ""  # default runs/<scenario>-<regime>-<method>-s<seed>
    resume: bool = False
    # auto: the bar moves after every epoch when it is shown on a terminal, after every compiled chunk otherwise.
    # A per-epoch host callback keeps JAX's persistent compilation cache from storing the chunk (tests rely on it).
    progress: str = "auto"  # auto | epoch | chunk
    test_episodes: int = 10  # the CLI ends with this many test episodes per policy on one set of keys (0: none)
    test_seed: int = TEST_SEED  # their keys (the sweep's and evaluate's)
    # Fields the user set (the CLI fills it from the command line): the preset never overrides them, even
    # where they equal the default (`--preset paper --epochs 40` trains 40 epochs). Fields not named here
    # are overridden by the preset where they are left at their defaults. Cleared once resolved.
    explicit: tyro.conf.Suppress[tuple[str, ...]] = ()

    def resolved(self) -> TrainConfig:
        if self.preset not in PRESETS:
            raise SystemExit(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.scenario not in SCENARIOS:
            raise SystemExit(f"unknown scenario {self.scenario!r}; choose one of {sorted(SCENARIOS)}")
        if self.regime not in REGIMES:
            raise SystemExit(f"unknown regime {self.regime!r}; choose one of {sorted(REGIMES)}")
        if self.method not in METHODS:
            raise SystemExit(f"unknown method {self.method!r}; choose one of {tuple(METHODS)}")
        preset = PRESETS[self.preset]
        if self.spec.trainer == "qmix" and preset.get("carry_envs"):
            # QMIX's rollouts start from fresh resets every epoch: its paper budget is one environment x 864 steps.
            preset = PRESETS[f"{self.preset}-1env"]
        # Explicit flags win: the preset sets only the fields left at their defaults and not named in `explicit`.
        defaults = TrainConfig()
        cfg = dataclasses.replace(self, explicit=(), **{k: v for k, v in preset.items() if k not in self.explicit and getattr(self, k) == getattr(defaults, k)})
        if cfg.spec.expert not in (None, "planner"):  # the method fixes its expert (reled-logit: the Logit model)
            cfg = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, backend=cfg.spec.expert))
        if cfg.expert.backend == "llm":
            # Flags win; RELED_LLM_BASE_URL / RELED_LLM_MODEL / RELED_LLM_API_KEY fill what they leave empty.
            llm = cfg.expert.llm
            env = LLMConfig.from_env()
            llm = dataclasses.replace(llm, base_url=llm.base_url or env.base_url, model=llm.model or env.model, api_key=llm.api_key or env.api_key)
            try:
                llm.check()
            except LLMError as err:
                raise SystemExit(str(err)) from None
            cfg = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, llm=llm))
        if cfg.spec.trainer == "qmix" and (cfg.lockstep or cfg.carry_envs):
            raise SystemExit("--lockstep and --carry-envs are PPO-family options; QMIX rolls out with vmap(step) and fresh resets")
        if cfg.alpha_schedule not in ALPHA_SCHEDULES:
            raise SystemExit(f"unknown --alpha-schedule {cfg.alpha_schedule!r}; choose one of {ALPHA_SCHEDULES}")
        if cfg.test_episodes < 0:
            raise SystemExit(f"--test-episodes must be >= 0 (0: no closing test), got {cfg.test_episodes}")
        if cfg.progress not in ("auto", "epoch", "chunk"):
            raise SystemExit(f"unknown --progress {cfg.progress!r}; choose auto, epoch or chunk")
        if cfg.update_block < 0:
            raise SystemExit(f"--update-block must be >= 0 (0: no gradient accumulation), got {cfg.update_block}")
        if not 0.0 <= cfg.decision_share <= 1.0:
            raise SystemExit(f"--decision-share must be in [0, 1] (0: measured), got {cfg.decision_share}")
        counts = ("n_agents", "epochs", "n_envs", "rollout_steps", "q", "m", "n_demo_envs", "demo_steps", "seeds", "update_epochs", "n_minibatches",
                  "qmix_updates_per_epoch", "qmix_target_every")
        bad = [f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in counts if getattr(cfg, k) < 1]
        if bad:
            raise SystemExit(f"{', '.join(bad)}: counts must be at least 1")
        if cfg.q < 1 or cfg.m < 1 or cfg.m > cfg.n_agents or cfg.seeds < 1 or cfg.epochs < 1:
            raise SystemExit(f"need q >= 1, 1 <= m <= n_agents, seeds >= 1, epochs >= 1 (got q={cfg.q}, m={cfg.m}, seeds={cfg.seeds}, epochs={cfg.epochs})")
        if not (cfg.lr > 0 and cfg.entropy_coef >= 0):
            raise SystemExit(f"--lr must be positive and --entropy-coef not negative (got {cfg.lr:g}, {cfg.entropy_coef:g})")
        for path in (cfg.out_dir, *cfg.out_dir.parents):
            if path.exists() and not path.is_dir():
                raise SystemExit(f"--out {cfg.out_dir}: {path} is a file, not a directory; choose another --out")
        return cfg

    @property
    def spec(self):
        """What the method is (reled_jax/methods.py)."""
        return method(self.method)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.scenario}-{self.regime}-{self.method}-s{self.seed}")

    def qmix_config(self) -> qmix.QMixConfig:
        """QMIX with the same budget (epochs, environments, steps), learning rate, gamma, clipping and reward scale
        as the PPO methods, and its own fields from the qmix_* flags."""
        per_epoch = self.n_envs * self.rollout_steps  # small budgets (smoke) sample smaller batches
        own = {f.name: getattr(self, f"qmix_{f.name}") for f in dataclasses.fields(qmix.QMixConfig) if hasattr(self, f"qmix_{f.name}")}
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(qmix.QMixConfig) if f.name in TRAIN_FIELDS}
        return qmix.QMixConfig(**{**shared, **own, "batch_size": min(self.qmix_batch_size, per_epoch)})

    def ppo_config(self) -> HybridPPOConfig:
        """Every HybridPPOConfig field from the field of the same name (a decision share of 0, measured by `train`, is all rows here)."""
        return HybridPPOConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(HybridPPOConfig) if f.name in TRAIN_FIELDS})

    def sed_config(self) -> SEDConfig:
        return SEDConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SEDConfig) if f.name in TRAIN_FIELDS}, refine=self.spec.refine)


TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def train(cfg: TrainConfig) -> dict:
    cfg = cfg.resolved()
    # Refusals about the output directory first, before anything is built or compiled.
    if (cfg.out_dir / "checkpoint.pkl").exists():
        raise SystemExit(f"{cfg.out_dir} holds a pickle checkpoint from before issue 18, which is never loaded (it could run code); use another --out")
    if not cfg.resume and (cfg.out_dir / checkpoint.FILENAME).exists():
        raise SystemExit(f"{cfg.out_dir} already holds a run; pass --resume to continue it or --out to start elsewhere")
    network, env, env_params = load_scenario(cfg.scenario, cfg.regime, n_agents=cfg.n_agents, seed=cfg.seed)
    probe_s = time.perf_counter()
    if cfg.spec.trainer != "qmix" and not cfg.decision_share and not cfg.update_block:
        # The row capacity of the update's usual branch (HybridPPOConfig.decision_share): 1.5 times what a
        # random policy's rollout needs, one rollout after the reset when environments carry over. An
        # epoch that needs more (the first epoch's burst of departures) runs the all-rows branch.
        steps = min(cfg.rollout_steps, 256)
        measured = measure_decision_share(env, env_params, cfg.n_envs, steps, cfg.lockstep, jax.random.PRNGKey(cfg.seed), skip=steps if cfg.carry_envs else 0)
        cfg = dataclasses.replace(cfg, decision_share=round(min(1.0, 1.5 * measured + 0.01), 4))
    probe_s = time.perf_counter() - probe_s
    hpo = cfg.ppo_config()
    input_dim = observation_dim(env.m_out)
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    uses_expert = cfg.spec.uses_expert
    critic_extra = global_state_dim(env.n_agents, env.n_edges) if hpo.centralised_critic else 0

    # Per-seed initial states, stacked on a leading seed axis.
    states, policy, value = [], None, None
    for s in seeds:
        params, policy, value = init_env_agents(jax.random.PRNGKey(s), env, critic_extra)
        if cfg.spec.trainer == "qmix":  # the same initial networks serve as the agents' Q networks
            qmix_state, q_net, mixer = qmix.init_state(jax.random.PRNGKey(10_000 + s), env, cfg.qmix_config(), params.policy)
            states.append(qmix_state)
        else:
            states.append(init_state(jax.random.PRNGKey(10_000 + s), params, hpo))
    state = jax.tree.map(lambda *z: jnp.stack(z), *states)
    epoch_fn = qmix.make_epoch(env, env_params, q_net, mixer, cfg.qmix_config()) if cfg.spec.trainer == "qmix" else make_epoch(env, env_params, policy, value, hpo)
    if hpo.carry_envs:  # every seed's environments, reset once; epochs continue their episodes
        state = state.replace(envs=jax.jit(jax.vmap(epoch_fn.initial_envs))(jnp.stack([jax.random.PRNGKey(20_000 + s) for s in seeds])))

    seds = []
    if uses_expert:
        for s in seeds:
            service = ExpertService(network, np.asarray(env_params.agent_origin), np.asarray(env_params.agent_dest), config=dataclasses.replace(cfg.expert, seed=s), t_max=env_params.t_max)
            sed_cfg = cfg.sed_config()
            seds.append(SED(env, env_params, network, policy, hpo, sed_cfg, service, seed=s))
    no_expert = empty_expert(env.n_agents, input_dim, env.m_out)
    no_nodes = (jnp.zeros((1, env.n_agents, hpo.max_trajectory, 2)), jnp.zeros((1, env.n_agents), jnp.int32))
    expert = jax.tree.map(lambda *z: jnp.stack(z), *[no_expert] * len(seeds))
    expert_nodes = jax.tree.map(lambda *z: jnp.stack(z), *[no_nodes] * len(seeds))

    place = seed_placement(len(seeds)) if cfg.shard_seeds else (lambda tree: tree)
    writer = jax.process_index() == 0  # with several processes, process 0 alone writes the run directory
    log = print if writer else (lambda *args: None)
    state, expert, expert_nodes = place((state, expert, expert_nodes))

    # A host callback inside a program sharded over several devices hangs (jax 0.10.2, CPU): there
    # the bar moves after every chunk instead.
    n_dev = len(jax.devices())
    sharded = cfg.shard_seeds and n_dev > 1 and len(seeds) % n_dev == 0
    per_epoch_bar = not sharded and (cfg.progress == "epoch" or (cfg.progress == "auto" and sys.stderr.isatty()))

    def epoch_done(epoch, metrics):
        """Host callback after every compiled epoch: the bar moves (and estimates) inside a chunk.
        Idempotent (it sets the bar to the epoch reached), as a sharded program may call it per device."""
        done = int(np.max(epoch))
        if done > bar.n:
            bar.update(done - bar.n)
        bar.set_postfix(reward=fmt_mean(metrics["episode_reward"]), travel=fmt_mean(metrics["travel_time"]) + "s", alpha=f"{np.mean(metrics['alpha']):.2f}")

    run_chunk = make_run_chunk(jax.vmap(epoch_fn) if cfg.spec.trainer == "qmix" else epoch_fn.batched, epoch_done if per_epoch_bar else None)

    out = cfg.out_dir
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out / CONFIG_FILE, cfg)
    ckpt_path = out / checkpoint.FILENAME
    keep_buffer = cfg.spec.trainer == "qmix" and cfg.qmix_keep_buffer  # what the checkpoints hold (saved_state)
    rows: list[dict] = []
    sed_log: list[dict] = []
    start_epoch, wall_offset, steps_done = 0, 0.0, np.zeros(len(seeds))
    if cfg.resume and ckpt_path.exists():
        ck, arrays = checkpoint.read(ckpt_path)
        if _comparable(ck["config"]) != _comparable(dataclasses.asdict(cfg)):
            raise SystemExit(f"{ckpt_path} was written by a different configuration; use another --out or drop --resume")
        with_buffer = resumable(ck, cfg, ckpt_path)
        # The template is this run's fresh state: the checkpoint must fill every leaf with the same shape.
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (saved_state(state, with_buffer), expert, expert_nodes))
        restored = (checkpoint.restore(template[0], arrays, "state", ckpt_path),
                    *(checkpoint.restore(t, arrays, name, ckpt_path, same_shapes=False) for t, name in zip(template[1:], ("expert", "expert_nodes"))))
        if cfg.spec.trainer == "qmix" and not with_buffer:  # a finished QMIX run: nothing will be trained, the fresh buffer stands in
            restored = (restored[0].replace(buffer=state.buffer), *restored[1:])
        state, expert, expert_nodes = place(restored)
        rows, sed_log, start_epoch, wall_offset, steps_done = ck["rows"], ck["sed_log"], ck["epoch"], ck["wall"], ck["steps"]
        for sed, st in zip(seds, ck["seds"]):
            sed.service.load_state_dict(st["service"])
            sed.feedback, sed.history = st["feedback"], st["history"]
        log(f"resumed {out} at epoch {start_epoch}")

    if (note := od_pairs_note(cfg)) is not None:
        log(note)
    log(f"{cfg.method} on {cfg.scenario}/{cfg.regime}: {network.n_nodes} junctions, {env.n_agents} agents, "
          f"{len(seeds)} seed(s), {cfg.epochs} epochs of {cfg.n_envs} envs x {cfg.rollout_steps} steps; expert: "
          f"{cfg.expert.backend if uses_expert else 'none'}; output {out}")
    wall_start = time.perf_counter() - wall_offset
    bar = tqdm(total=cfg.epochs, initial=start_epoch, unit="epoch", desc=cfg.method, disable=not writer, smoothing=0.1)
    # Where the wall-clock goes (summary.json "timing"; benchmarks/train_throughput.py).
    timing = {"probe_s": probe_s, "compile_s": 0.0, "chunks_s": 0.0, "expert_s": 0.0, "checkpoint_s": 0.0}
    compiled = {}  # chunk length -> executable, compiled ahead of time so compilation is timed on its own
    epoch = start_epoch
    while epoch < cfg.epochs:
        t0 = time.perf_counter()
        if uses_expert:
            policy_params = to_host(state.params.policy)
            refreshed = [sed.refresh(jax.tree.map(lambda z, i=i: z[i], policy_params), epoch) for i, sed in enumerate(seds)]
            expert = jax.tree.map(lambda *z: np.stack(z), *[r[0] for r in refreshed])
            expert_nodes = jax.tree.map(lambda *z: np.stack(z), *[r[1] for r in refreshed])
            if jax.process_count() > 1:  # an LLM may answer each host differently: every host takes process 0's plans
                expert, expert_nodes = multihost_utils.broadcast_one_to_all((expert, expert_nodes))
            sed_log += [{**r[2], "seed": s} for r, s in zip(refreshed, seeds)]
            expert, expert_nodes = place((expert, expert_nodes))
        length = min(cfg.q, cfg.epochs - epoch)
        t1 = time.perf_counter()
        timing["expert_s"] += t1 - t0
        if jax.process_count() > 1:  # ahead-of-time compilation hangs across processes (jax 0.10.2): compile on call
            compiled.setdefault(length, lambda *args, n=length: run_chunk(*args, n))
        elif length not in compiled:
            compiled[length] = run_chunk.lower(state, expert, expert_nodes, length).compile()
        t2 = time.perf_counter()
        timing["compile_s"] += t2 - t1
        state, metrics = compiled[length](state, expert, expert_nodes)
        metrics = to_host(metrics)  # [length, seeds]
        if not per_epoch_bar:
            epoch_done(epoch + length, {k: metrics[k][-1] for k in BAR_METRICS})
        t3 = time.perf_counter()
        timing["chunks_s"] += t3 - t2
        chunk_start = rows[-1]["wall_s"] if rows else wall_offset
        wall = time.perf_counter() - wall_start
        for k in range(length):
            for si, s in enumerate(seeds):
                steps_done[si] += metrics["interaction_steps"][k, si]
                # Wall-clock (expert time included) is measured per chunk and spread evenly over its epochs.
                at = chunk_start + (wall - chunk_start) * (k + 1) / length
                row = {"epoch": epoch + k + 1, "seed": s, "interaction_steps": int(steps_done[si]), "wall_s": round(at, 2)}
                row.update({name: float(v[k, si]) for name, v in metrics.items() if name != "interaction_steps"})
                if uses_expert:
                    last = seds[si].history[-1]
                    row.update(rvi=last["rvi"], pdi=last["pdi"], expert_reward=last["expert_reward"], execution_rate=last["execution_rate"], expert_fallbacks=last["fallbacks"])
                rows.append(row)
        epoch += length
        arrays = to_host({"state": saved_state(state, keep_buffer), "expert": expert, "expert_nodes": expert_nodes})  # every process gathers
        if writer:
            write_metrics(out, rows)
            checkpoint.write(ckpt_path, {
                "config": saved_config(cfg), "epoch": epoch, "wall": wall, "replay_buffer": keep_buffer, "steps": steps_done, "rows": rows, "sed_log": sed_log,
                "seds": [{"service": sed.service.state_dict(), "feedback": sed.feedback, "history": sed.history} for sed in seds],
            }, arrays)
        timing["checkpoint_s"] += time.perf_counter() - t3
    bar.close()
    for sed in seds:
        sed.service.close()
    summary = run_summary(cfg, rows, seds)
    summary["timing"] = {k: round(v, 3) for k, v in timing.items()}
    summary["decision_share"] = cfg.decision_share
    if cfg.spec.trainer != "qmix":  # the update's row capacity, chosen every epoch (HybridPPOConfig.decision_share)
        summary["update_rows_mean"] = float(np.mean([r["update_rows"] for r in rows]))
    if writer:
        (out / "sed.json").write_text(json.dumps(sed_log, indent=1, default=jsonable))
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=jsonable))
        plot_run(out)
        print(f"wrote {out}/{CONFIG_FILE}, metrics.csv, metrics.jsonl, sed.json, summary.json, training.png, {checkpoint.FILENAME}")
    if jax.process_count() > 1:  # nobody reads the run directory before process 0 has finished it
        multihost_utils.sync_global_devices("reled_jax.train finished")
    return summary


BAR_METRICS = ("episode_reward", "travel_time", "alpha")


def make_run_chunk(batched_epoch, on_epoch=None):
    """`run_chunk(state, expert, nodes, length) -> (state, metrics [length, seeds])`, jitted: `length`
    epochs of every seed (`batched_epoch`: all seeds at once, e.g. a vmapped epoch) as one compiled scan. `on_epoch(epochs [seeds], metrics)`, when given,
    runs on the host after every epoch (`jax.debug.callback`), so a progress bar can move inside the chunk."""

    def run_chunk(state, expert, nodes, length):
        def body(st, _):
            st, metrics = batched_epoch(st, expert, nodes)
            if on_epoch is not None:
                jax.debug.callback(on_epoch, st.epoch, {k: metrics[k] for k in BAR_METRICS})
            return st, metrics

        return jax.lax.scan(body, state, None, length=length)

    return jax.jit(run_chunk, static_argnums=3)


def saved_state(state, keep_buffer: bool):
    """The training state a checkpoint holds: QMIX's without its replay buffer unless it is kept."""
    return state.replace(buffer=None) if hasattr(state, "buffer") and not keep_buffer else state


def resumable(ck: dict, cfg: TrainConfig, path: Path) -> bool:
    """Whether the checkpoint holds QMIX's replay buffer (older ones always did); refuses to resume an
    unfinished QMIX run without it, which could not reach the result the whole run would."""
    with_buffer = ck.get("replay_buffer", True) if cfg.spec.trainer == "qmix" else False
    if cfg.spec.trainer == "qmix" and not with_buffer and ck["epoch"] < cfg.epochs:
        raise SystemExit(f"{path} holds no replay buffer (QMIX checkpoints leave it out unless --qmix-keep-buffer), so the run "
                         f"cannot resume from epoch {ck['epoch']} to the same result; retrain it, with --qmix-keep-buffer to make it resumable")
    return with_buffer


def od_pairs_note(cfg: TrainConfig) -> str | None:
    """What happens when there are more agents than the scenario's origin-destination pairs (said, not an error)."""
    n_pairs = SCENARIOS[cfg.scenario].n_od_pairs
    if cfg.n_agents <= n_pairs:
        return None
    return (f"note: {cfg.n_agents} agents on {cfg.scenario}'s set of {n_pairs} origin-destination pairs: each agent draws a pair "
            "with replacement, so some agents share an origin and a destination")


CONFIG_FILE = "config.json"  # in every run directory: `python -m reled_jax.train --config runs/NAME/config.json --out ...` reruns it


def saved_config(cfg: TrainConfig) -> dict:
    """The resolved configuration as a run directory and its checkpoint keep it: every field, nested ones as
    tables, but never an API key (a resumed or rerun LLM run takes it from the flags or the environment again)."""
    data = dataclasses.asdict(cfg)
    data.pop("explicit", None)
    return _without_api_key(data)


def _without_api_key(config: dict) -> dict:
    """A configuration dict with its LLM API key (if it has one) blanked."""
    if not config.get("expert", {}).get("llm", {}).get("api_key"):
        return config
    expert = config["expert"]
    return {**config, "expert": {**expert, "llm": {**expert["llm"], "api_key": ""}}}


def write_config(path: Path, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(saved_config(cfg), indent=1))
    os.replace(tmp, path)


def read_config(path: str | Path) -> tuple[TrainConfig, tuple[str, ...]]:
    """A TrainConfig from a JSON file (a run directory's config.json) or a TOML file, and the top-level fields it
    sets (they count as given, like flags: a preset does not override them). Unknown fields are an error."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--config {path}: cannot read it ({type(err).__name__}: {str(err)[:100]}); pass a .json or .toml file") from None
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: expected a table of TrainConfig fields, got {type(data).__name__}")
    return _dataclass_from(TrainConfig, data, str(path)), tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name in data)


def _dataclass_from(cls, data: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - {"explicit"})
    if unknown:
        raise SystemExit(f"--config {where}: unknown field(s) {unknown} for {cls.__name__}; `python -m reled_jax.train --help` lists them")
    values, defaults = {}, cls()
    for name, value in data.items():
        if name == "explicit":
            continue
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            values[name] = _dataclass_from(type(default), value, f"{where} [{name}]")
        else:
            values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _comparable(config: dict) -> dict:
    """The fields that decide a run's result (not where it is written or whether it resumes). A field a
    checkpoint's configuration lacks (written before the field existed) counts as its default value; API keys
    are never kept, so they never count."""
    defaults, config = saved_config(TrainConfig()), _without_api_key(config)
    return {k: config.get(k, v) for k, v in defaults.items() if k not in ("resume", "out", "shard_seeds", "cluster", "progress", "explicit", "test_episodes", "test_seed", "qmix_keep_buffer")}


def final_tests(cfg: TrainConfig) -> dict[str, dict]:
    """`cfg.test_episodes` test episodes on one set of keys: the run's policies greedy and sampled (each the
    mean over seeds) and the shortest-time and random references (`reled_jax.evaluate`)."""
    cfg = cfg.resolved()
    ck = checkpoint.read_checkpoint(cfg.out_dir / checkpoint.FILENAME)
    _, env, params = load_scenario(cfg.scenario, cfg.regime, n_agents=cfg.n_agents, seed=cfg.seed)
    greedy, sampled = evaluate_seeds_modes(env, params, ck["policy"], cfg.test_episodes, cfg.test_seed, MAX_TEST_STEPS, (False, True))
    refs = evaluate_policies(env, params, reference_policies(params), cfg.test_episodes, cfg.test_seed, MAX_TEST_STEPS)

    def over_seeds(rows: list[dict]) -> dict:
        return {"reward_per_agent": [float(np.mean([r["reward_per_agent"][0] for r in rows]))], "travel_time_s": [float(np.mean([r["travel_time_s"][0] for r in rows]))],
                "arrival_rate": float(np.mean([r["arrival_rate"] for r in rows])), "per_agent": rows[0]["per_agent"]}

    return {f"{cfg.method}, greedy": over_seeds(greedy), f"{cfg.method}, sampled": over_seeds(sampled),
            "shortest-time (reference)": refs["shortest"], "random (reference)": refs["random"]}


def main() -> None:
    with usage_errors():
        argv = sys.argv[1:]
        from_file, file_fields = TrainConfig(), ()
        if "--config" in argv or any(a.startswith("--config=") for a in argv):
            # `--config FILE` sets the defaults (a run directory's config.json, or TOML); flags then override them.
            at = next(i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config="))
            path = argv[at].split("=", 1)[1] if "=" in argv[at] else (argv[at + 1] if at + 1 < len(argv) else "")
            if not path:
                raise SystemExit("--config needs a file: --config runs/NAME/config.json (or a .toml of TrainConfig fields)")
            from_file, file_fields = read_config(path)
            argv = argv[:at] + argv[at + (1 if "=" in argv[at] else 2):]
        cfg = tyro.cli(TrainConfig, description=__doc__ + CONFIG_HELP, default=from_file, args=argv)
        cfg = dataclasses.replace(cfg, explicit=tuple(dict.fromkeys((*file_fields, *flags_given(TrainConfig, argv)))))
        join_cluster(cfg.cluster)
        summary = train(cfg)
        if jax.process_index() == 0:
            tests = final_tests(cfg) if cfg.test_episodes else {}
            print(closing_table(summary, tests, cfg.resolved().out_dir))


CONFIG_HELP = "\n\n--config FILE: a run directory's config.json or a TOML file of these fields (nested ones as tables) sets the defaults; flags override it."
FLAG_ALIASES = {"refresh_every": "q", "subsets": "m"}  # descriptive names of TrainConfig's paper-symbol flags


def flags_given(config_type, argv: list[str]) -> tuple[str, ...]:
    """The top-level fields of `config_type` that `argv` sets (`--n-envs 8`, `--n_envs=8`, `--lockstep`, `--no-lockstep`,
    `--refresh-every 5` for q)."""
    given = set()
    for arg in argv:
        flag = arg.split("=", 1)[0].removeprefix("--").removeprefix("no-").replace("-", "_") if arg.startswith("--") else ""
        given.add(FLAG_ALIASES.get(flag, flag))
    return tuple(f.name for f in dataclasses.fields(config_type) if f.name in given)


@contextlib.contextmanager
def usage_errors():
    """A CLI's refusal (`SystemExit` with a message) as one line on stderr and exit status 2, as for a bad flag."""
    try:
        yield
    except SystemExit as err:
        if isinstance(err.code, str):
            print(f"error: {err.code}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
