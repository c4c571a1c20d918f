"""The update's two forms side by side: the capacity switch (`--update-block 0`) and gradient accumulation
(`--update-block B`), on the same seeds, keys and budget: what each costs and whether they learn alike.

    python -m benchmarks.update_forms                                 # IPPO, paper preset at 32 env steps, 200 epochs, 5 seeds
    python -m benchmarks.update_forms --seeds 1 --epochs 500          # one seed

Both forms are the same PPO update on different minibatch partitions (real rows in equal shares, or a
random cut of the padded capacity), so they train different networks from the same start. Learning is
compared on the episodes that end: with 64 carried environments in lockstep, all 64 end together about
every 75 epochs, so each seed has one reward per such batch. Cost is the compiled chunks' seconds per
interaction step (the policies decide at different rates, so steps, not epochs, are the unit).

Runs are kept under --runs-dir and reused when their summary.json exists (delete one to re-run it).
Writes benchmarks/results/update_forms.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ci95, machine, write_json
from reled_jax.config import TrainConfig
from reled_jax.train import train


def run(method: str, block: int, seeds: int, epochs: int, rollout_steps: int, runs_dir: Path) -> dict:
    out = runs_dir / f"{method}-b{block}-x{seeds}-e{epochs}-r{rollout_steps}"
    if not (out / "summary.json").exists():  # an interrupted run continues (resume starts afresh where nothing was written)
        train(TrainConfig.of(method=method, preset="paper", rollout_steps=rollout_steps, epochs=epochs, seeds=seeds, update_block=block, out=str(out),
                             progress="chunk", resume=True))
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_seed = []
    for s in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == s]
        ended = [(r["epoch"], r["episode_reward"], r["travel_time"], r["arrival_rate"]) for r in mine if np.isfinite(r["episode_reward"])]
        per_seed.append({"seed": s, "interaction_steps": mine[-1]["interaction_steps"], "ended_episodes": [
            {"epoch": e, "reward": round(rw, 1), "travel_time_s": round(tt, 1), "arrival_rate": round(ar, 3)} for e, rw, tt, ar in ended]})
    steps = sum(p["interaction_steps"] for p in per_seed)
    chunks = summary["timing"]["chunks_s"]
    # The last batch of episodes every seed finished (the same epochs in both forms: the environments' clocks
    # run on the simulator, so batches end near the same epochs), one reward per seed.
    last = [p["ended_episodes"][-1]["reward"] for p in per_seed] if all(p["ended_episodes"] for p in per_seed) else []
    mean, half = ci95(last) if last else (float("nan"), float("nan"))
    return {"method": method, "update_block": block, "seeds": seeds, "epochs": epochs, "rollout_steps": rollout_steps,
            "chunks_s": chunks, "compile_s": summary["timing"]["compile_s"], "interaction_steps": steps,
            "chunk_ms_per_interaction_step": round(1e3 * chunks / steps, 4), "update_rows_mean": summary.get("update_rows_mean"),
            "last_ended_episode_reward": {"mean": round(mean, 1), "ci95": round(half, 1), "per_seed": last}, "per_seed": per_seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="ippo")
    parser.add_argument("--blocks", nargs="+", type=int, default=[0, 64])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--rollout-steps", type=int, default=32)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/update_forms"))
    parser.add_argument("--out", type=Path, default=RESULTS / "update_forms.json")
    args = parser.parse_args()
    if args.seeds < 1 or args.epochs < 1 or args.rollout_steps < 1 or any(b < 0 for b in args.blocks):
        raise SystemExit("error: --seeds, --epochs and --rollout-steps must be at least 1 and --blocks at least 0")
    previous = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    key = lambda r: (r["method"], r["update_block"], r["seeds"], r["epochs"], r["rollout_steps"])  # noqa: E731
    report = {"benchmark": "update_forms", **machine(), "command": "python -m benchmarks.update_forms " + " ".join(sys.argv[1:]), "results": []}
    mine = set()
    for block in args.blocks:
        row = run(args.method, block, args.seeds, args.epochs, args.rollout_steps, args.runs_dir)
        mine.add(key(row))
        report["results"].append(row)
        r = row["last_ended_episode_reward"]
        print(f"{args.method} update_block={block} seeds={args.seeds}: {row['chunk_ms_per_interaction_step']:.3f} ms per interaction step in chunks "
              f"({row['interaction_steps']:,} steps in {row['chunks_s']:.1f} s); last ended episodes' reward {r['mean']:.0f} ± {r['ci95']:.0f}", flush=True)
    report["results"] += [r for r in previous if key(r) not in mine]  # other settings measured before stay
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
