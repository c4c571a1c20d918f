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

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from jax.experimental import multihost_utils
from tqdm import tqdm

from llm.service import ExpertService
from reled_jax import checkpoint
from reled_jax import qmix
from reled_jax.cluster import join_cluster, seed_placement, to_host
from reled_jax.config import CONFIG_FILE, PRESETS, TrainConfig, comparable, flags_given, read_config, saved_config, write_config  # noqa: F401 (PRESETS: the CLI's presets)
from reled_jax.evaluate import MAX_TEST_STEPS, evaluate_policies, evaluate_seeds_modes, reference_policies
from reled_jax.networks import init_env_agents, input_dim as observation_dim
from reled_jax.mappo import global_state_dim
from reled_jax.records import closing_table, fmt_mean, jsonable, plot_run, run_summary, write_metrics
from reled_jax.reled import SEED_AXIS, empty_expert, init_state, make_epoch, measure_decision_share
from reled_jax.sed import SED
from sim.cli import usage_errors  # noqa: F401 (re-exported: every CLI's one-line refusals)
from sim.env import describe_model, simulator_model
from sim.scenarios import load_scenario

def train(cfg: TrainConfig) -> dict:
    cfg = cfg.resolved()
    # Refusals about the output directory first, before anything is built or compiled.
    if (cfg.out_dir / "checkpoint.pkl").exists():
        raise SystemExit(f"{cfg.out_dir} holds a pickle checkpoint from before issue 18, which is never loaded (it could run code); use another --out")
    if not cfg.run.resume and (cfg.out_dir / checkpoint.FILENAME).exists():
        raise SystemExit(f"{cfg.out_dir} already holds a run; pass --resume to continue it or --out to start elsewhere")
    network, env, env_params = load_scenario(cfg.env.scenario, cfg.env.regime, n_agents=cfg.env.n_agents, seed=cfg.scenario_seed)
    probe_s = time.perf_counter()
    if cfg.spec.trainer != "qmix" and not cfg.ppo.decision_share and not cfg.ppo.update_block:
        # The row capacity of the update's usual branch (HybridPPOConfig.decision_share): 1.5 times what a
        # random policy's rollout needs, one rollout after the reset when environments carry over. An
        # epoch that needs more (the first epoch's burst of departures) runs the all-rows branch.
        steps = min(cfg.ppo.rollout_steps, 256)
        measured = measure_decision_share(env, env_params, cfg.ppo.n_envs, steps, cfg.ppo.lockstep, jax.random.PRNGKey(cfg.scenario_seed), skip=steps if cfg.ppo.carry_envs else 0)
        cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, decision_share=round(min(1.0, 1.5 * measured + 0.01), 4)))
    probe_s = time.perf_counter() - probe_s
    hpo = cfg.ppo_config()
    input_dim = observation_dim(env.m_out)
    seeds = [cfg.run.seed + s for s in range(cfg.run.seeds)]
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
        start_envs = jax.vmap(lambda k: epoch_fn.initial_envs(k, SEED_AXIS), axis_name=SEED_AXIS)
        state = state.replace(envs=jax.jit(start_envs)(jnp.stack([jax.random.PRNGKey(20_000 + s) for s in seeds])))

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

    place = seed_placement(len(seeds)) if cfg.run.shard_seeds else (lambda tree: tree)
    writer = jax.process_index() == 0  # with several processes, process 0 alone writes the run directory
    log = print if writer else (lambda *args: None)
    state, expert, expert_nodes = place((state, expert, expert_nodes))

    # A host callback inside a program sharded over several devices hangs (jax 0.10.2, CPU): there
    # the bar moves after every chunk instead.
    n_dev = len(jax.devices())
    sharded = cfg.run.shard_seeds and n_dev > 1 and len(seeds) % n_dev == 0
    per_epoch_bar = not sharded and (cfg.run.progress == "epoch" or (cfg.run.progress == "auto" and sys.stderr.isatty()))

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
    keep_buffer = cfg.spec.trainer == "qmix" and cfg.run.qmix_keep_buffer  # what the checkpoints hold (saved_state)
    rows: list[dict] = []
    sed_log: list[dict] = []
    start_epoch, wall_offset, steps_done = 0, 0.0, np.zeros(len(seeds))
    if cfg.run.resume and ckpt_path.exists():
        ck, arrays = checkpoint.read(ckpt_path)
        if comparable(ck["config"]) != comparable(cfg):
            raise SystemExit(f"{ckpt_path} was written by a different configuration; use another --out or drop --resume")
        if ck.get("simulator") != simulator_model():  # the same configuration trained under other dynamics
            raise SystemExit(f"{ckpt_path} was trained on another simulator model ({describe_model(ck.get('simulator'))}); "
                             f"this code's is {describe_model(simulator_model())}. Train it again under another --out")
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
    log(f"{cfg.method} on {cfg.env.scenario_name}/{cfg.env.regime}: {network.n_nodes} junctions, {env.n_agents} agents, "
          f"{len(seeds)} seed(s), {cfg.ppo.epochs} epochs of {cfg.ppo.n_envs} envs x {cfg.ppo.rollout_steps} steps; expert: "
          f"{cfg.expert.backend if uses_expert else 'none'}; output {out}")
    wall_start = time.perf_counter() - wall_offset
    bar = tqdm(total=cfg.ppo.epochs, initial=start_epoch, unit="epoch", desc=cfg.method, disable=not writer, smoothing=0.1)
    # Where the wall-clock goes (summary.json "timing"; benchmarks/train_throughput.py).
    timing = {"probe_s": probe_s, "compile_s": 0.0, "chunks_s": 0.0, "expert_s": 0.0, "checkpoint_s": 0.0}
    compiled = {}  # chunk length -> executable, compiled ahead of time so compilation is timed on its own
    epoch = start_epoch
    while epoch < cfg.ppo.epochs:
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
        length = min(cfg.sed.q, cfg.ppo.epochs - epoch)
        t1 = time.perf_counter()
        timing["expert_s"] += t1 - t0
        if jax.process_count() > 1:  # ahead-of-time compilation hangs across processes (jax 0.10.2): compile on call
            compiled.setdefault(length, lambda *args, n=length: run_chunk(*args, n))
        try:  # a configuration too big for this machine's memory is refused in words, not a traceback
            if length not in compiled:
                compiled[length] = run_chunk.lower(state, expert, expert_nodes, length).compile()
            t2 = time.perf_counter()
            timing["compile_s"] += t2 - t1
            state, metrics = compiled[length](state, expert, expert_nodes)
            metrics = to_host(metrics)  # [length, seeds] (an error inside the chunk surfaces here)
        except jax.errors.JaxRuntimeError as err:
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            bar.close()
            raise SystemExit(out_of_memory(cfg, len(seeds), epoch, out if epoch > 0 else None, err)) from None
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
                "config": saved_config(cfg), "simulator": simulator_model(), "epoch": epoch, "wall": wall, "replay_buffer": keep_buffer, "steps": steps_done, "rows": rows, "sed_log": sed_log,
                "seds": [{"service": sed.service.state_dict(), "feedback": sed.feedback, "history": sed.history} for sed in seds],
            }, arrays)
        timing["checkpoint_s"] += time.perf_counter() - t3
    bar.close()
    for sed in seds:
        sed.service.close()
    summary = run_summary(cfg, rows, seds)
    summary["timing"] = {k: round(v, 3) for k, v in timing.items()}
    summary["decision_share"] = cfg.ppo.decision_share
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


def out_of_memory(cfg: TrainConfig, n_seeds: int, epoch: int, saved: Path | None, err: Exception) -> str:
    """The refusal of a training chunk that ran out of device memory: what was asked for, how to make it fit, and
    what is kept (`saved`: the run directory holding the checkpoint of `epoch`; None when nothing was saved)."""
    asked = re.search(r"allocating (\d+) bytes", str(err))
    size = f" ({int(asked.group(1)) / 2**30:.1f} GiB in one allocation)" if asked else ""
    kept = f"{saved} keeps its epoch-{epoch} checkpoint: continue it with --resume" if saved else "nothing was trained"
    return (f"{cfg.method} with {cfg.env.n_agents} agents, {n_seeds} seed(s) and {cfg.ppo.n_envs} environments each ran out of "
            f"{jax.default_backend()} memory at epoch {epoch}{size}: train fewer --seeds at once, fewer --n-envs or --n-agents, "
            f"or on a machine with more memory; {kept}")


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
    if cfg.spec.trainer == "qmix" and not with_buffer and ck["epoch"] < cfg.ppo.epochs:
        raise SystemExit(f"{path} holds no replay buffer (QMIX checkpoints leave it out unless --qmix-keep-buffer), so the run "
                         f"cannot resume from epoch {ck['epoch']} to the same result; retrain it, with --qmix-keep-buffer to make it resumable")
    return with_buffer


def od_pairs_note(cfg: TrainConfig) -> str | None:
    """What happens when there are more agents than the scenario's origin-destination pairs (said, not an error)."""
    n_pairs, n_agents = cfg.env.spec().n_od_pairs, cfg.env.check_scenario().n_agents
    if n_agents <= n_pairs:
        return None
    return (f"note: {n_agents} agents on {cfg.env.scenario_name}'s set of {n_pairs} origin-destination pairs: each agent draws a pair "
            "with replacement, so some agents share an origin and a destination")


def final_tests(cfg: TrainConfig) -> dict[str, dict]:
    """`cfg.run.test_episodes` test episodes on one set of keys: the run's policies greedy and sampled (each the
    mean over seeds) and the shortest-time and random references (`reled_jax.evaluate`)."""
    cfg = cfg.resolved()
    ck = checkpoint.read_checkpoint(cfg.out_dir / checkpoint.FILENAME)
    _, env, params = load_scenario(cfg.env.scenario, cfg.env.regime, n_agents=cfg.env.n_agents, seed=cfg.scenario_seed)
    greedy, sampled = evaluate_seeds_modes(env, params, ck["policy"], cfg.run.test_episodes, cfg.run.test_seed, MAX_TEST_STEPS, (False, True))
    refs = evaluate_policies(env, params, reference_policies(params), cfg.run.test_episodes, cfg.run.test_seed, MAX_TEST_STEPS)

    def over_seeds(rows: list[dict]) -> dict:
        return {"reward_per_agent": [float(np.mean([r["reward_per_agent"][0] for r in rows]))], "travel_time_s": [float(np.mean([r["travel_time_s"][0] for r in rows]))],
                "arrival_rate": float(np.mean([r["arrival_rate"] for r in rows])), "per_agent": rows[0]["per_agent"]}

    return {f"{cfg.method}, greedy": over_seeds(greedy), f"{cfg.method}, sampled": over_seeds(sampled),
            "shortest-time (reference)": refs["shortest"], "random (reference)": refs["random"]}


def main() -> None:
    with usage_errors():
        argv = sys.argv[1:]
        from_file = TrainConfig()
        if "--config" in argv or any(a.startswith("--config=") for a in argv):
            # `--config FILE` sets the defaults (a run directory's config.json, or TOML); flags then override them.
            at = next(i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config="))
            path = argv[at].split("=", 1)[1] if "=" in argv[at] else (argv[at + 1] if at + 1 < len(argv) else "")
            if not path:
                raise SystemExit("--config needs a file: --config runs/NAME/config.json (or a .toml of TrainConfig fields)")
            from_file = read_config(path)
            argv = argv[:at] + argv[at + (1 if "=" in argv[at] else 2):]
        try:
            cfg = tyro.cli(TrainConfig, description=__doc__ + CONFIG_HELP, default=from_file, args=argv)
        except ValueError as err:  # a group's own check (e.g. HybridPPOConfig: an unknown --alpha-schedule)
            raise SystemExit(str(err)) from None
        cfg = dataclasses.replace(cfg, explicit=tuple(dict.fromkeys((*from_file.explicit, *flags_given(argv)))))
        join_cluster(cfg.cluster)
        summary = train(cfg)
        if jax.process_index() == 0:
            tests = final_tests(cfg) if cfg.run.test_episodes else {}
            print(closing_table(summary, tests, cfg.resolved().out_dir))


CONFIG_HELP = ("\n\n--config FILE: a run directory's config.json or a TOML file of the tree ([ppo], [sed], [qmix], [expert], ...; "
               "or flag names at the top level) sets the defaults; flags override it.")


if __name__ == "__main__":
    main()
