"""What a run leaves behind besides its checkpoint: per-epoch metrics (CSV, JSONL), the summary, the
training plot, and the short table `python -m reled_jax.train` ends with."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np


def fmt_mean(values) -> str:
    values = [v for v in values if np.isfinite(v)]
    return f"{np.mean(values):.0f}" if values else "-"


def run_summary(cfg, rows: list[dict], seds: list) -> dict:
    epochs = cfg.ppo.epochs
    first = [r for r in rows if r["epoch"] <= max(1, epochs // 10)]
    last = [r for r in rows if r["epoch"] > epochs - max(1, epochs // 10)]
    def stat(rs, k):
        v = np.array([r[k] for r in rs], float)
        v = v[np.isfinite(v)]
        return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))

    out = {
        "method": cfg.method, "scenario": cfg.env.scenario_name, "regime": cfg.env.regime, "seeds": cfg.run.seeds, "epochs": epochs,
        "interaction_steps_per_seed": int(np.mean([r["interaction_steps"] for r in rows if r["epoch"] == epochs])),
        "wall_s": rows[-1]["wall_s"],
        "reward_first_10pct": stat(first, "episode_reward"), "reward_last_10pct": stat(last, "episode_reward"),
        "travel_time_first_10pct": stat(first, "travel_time"), "travel_time_last_10pct": stat(last, "travel_time"),
        "arrival_rate_first_10pct": stat(first, "arrival_rate"), "arrival_rate_last_10pct": stat(last, "arrival_rate"), "alpha_last": stat(last, "alpha"),
    }
    if seds:
        out["expert"] = [sed.service.stats.as_dict() for sed in seds]
    return out


def write_metrics(out: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "metrics.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out / "metrics.csv.tmp", out / "metrics.csv")
    (out / "metrics.jsonl.tmp").write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(out / "metrics.jsonl.tmp", out / "metrics.jsonl")


def jsonable(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def plot_run(out: Path) -> None:
    """Reward and travel time vs interaction steps and wall-clock; DTW and alpha vs epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seeds = sorted({r["seed"] for r in rows})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for s in seeds:
        rs = [r for r in rows if r["seed"] == s]
        get = lambda k: np.array([r[k] for r in rs], float)  # noqa: E731
        for col, xkey, xlabel in ((0, "interaction_steps", "interaction steps"), (1, "wall_s", "wall-clock (s)")):
            axes[0, col].plot(get(xkey), get("episode_reward"), ".-", label=f"seed {s}")
            axes[1, col].plot(get(xkey), get("travel_time"), ".-", label=f"seed {s}")
            axes[1, col].set_xlabel(xlabel)
        axes[0, 2].plot(get("epoch"), get("dtw_m"), ".-", label=f"DTW seed {s}")
        axes[1, 2].plot(get("epoch"), get("alpha"), ".-", label=f"alpha seed {s}")
    for ax in axes[:, 0]:
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
    axes[0, 0].set_ylabel("episode reward (per agent)")
    axes[1, 0].set_ylabel("travel time (s)")
    axes[0, 2].set_ylabel("DTW agent vs expert (m)")
    axes[1, 2].set_ylabel("alpha (Eq. 30)")
    axes[1, 2].set_xlabel("epoch")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{out.name}")
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)


def closing_table(summary: dict, tests: dict[str, dict], out: Path) -> str:
    """The few lines a person reads when a run ends: training reward, travel time and arrival over the first
    and last 10 % of epochs (mean over seeds), then test episodes on one set of keys for the trained
    policies (greedy and sampled) beside the shortest-time and random references, and where the files are.

    `tests`: name -> `episode_summary` dict (reward_per_agent, travel_time_s: (mean, SD); arrival_rate)."""
    def pair(stat, pct=False):
        mean = stat[0]
        return "-" if not np.isfinite(mean) else f"{mean:.0%}" if pct else f"{mean:,.0f}"

    rows = [("", "reward/agent", "travel time (s)", "arrived"),
            ("training, first 10 % of epochs", pair(summary["reward_first_10pct"]), pair(summary["travel_time_first_10pct"]), pair(summary["arrival_rate_first_10pct"], pct=True)),
            ("training, last 10 % of epochs", pair(summary["reward_last_10pct"]), pair(summary["travel_time_last_10pct"]), pair(summary["arrival_rate_last_10pct"], pct=True))]
    for name, r in tests.items():
        rows.append((f"test: {name}", pair(r["reward_per_agent"]), pair(r["travel_time_s"]), f"{r['arrival_rate']:.0%}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{summary['method']} on {summary['scenario']}/{summary['regime']}: {summary['seeds']} seed(s), {summary['epochs']} epochs, "
             f"{summary['interaction_steps_per_seed']:,} interaction steps per seed, {summary['wall_s']:.0f} s"]
    for k, row in enumerate(rows):
        lines.append("  " + row[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(row[1:], widths[1:])))
        if k == 0:
            lines.append("  " + "-" * (sum(widths) + 6))
    if tests:
        n = len(next(iter(tests.values()))["per_agent"]["reward"])
        lines.append(f"  (test: {n} episodes on the same keys for every row, trained rows averaged over seeds; random samples, so read it beside 'sampled')")
    lines.append(f"files: {out}/ (config.json, metrics.csv, metrics.jsonl, summary.json, training.png, checkpoint.npz, sed.json)")
    return "\n".join(lines)
