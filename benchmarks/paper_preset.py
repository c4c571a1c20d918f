"""Why the paper preset learned less than the default one, variant by variant (issue 21).

    python -m benchmarks.paper_preset                       # every variant, seed 0, RELED on hongkong/moderate
    python -m benchmarks.paper_preset --variants staggered --seeds 2

The paper's budget (IV-A2, 500 epochs x ~1,000 interaction steps) is the `paper` preset: 64
environments in lockstep, 64 steps an epoch, carried from epoch to epoch. Its first 5-seed cell
(sweep_fig4_paper.json) tested at -647 ... +144 greedy where `make train`'s default (40 epochs x 8
fresh environments x 1,024 steps, about as many interaction steps) reaches ~1,100. Each variant here
changes one thing, trains the same seeds on the same scenario, and is tested like a sweep cell (20
episodes per seed, greedy and sampled, on the sweep's keys). Runs live under --runs-dir and are
reused when finished. Writes benchmarks/results/paper_preset.json and .png.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from benchmarks.common import RESULTS, machine, write_json  # noqa: E402
from benchmarks.sweep import SweepConfig, evaluate_cell  # noqa: E402
from reled_jax.config import TrainConfig  # noqa: E402
from reled_jax.train import train, usage_errors  # noqa: E402

# name -> (what it changes, the flags it sets). "synchronized" is the paper preset (as its sweep cells run it).
VARIANTS = {
    "synchronized": ("the paper preset: 64 environments x 64 lockstep steps, all from one reset", {"preset": "paper", "stagger_steps": 0}),
    "staggered": ("the same, environments restarted 2,400 / 64 steps apart before training (--stagger-steps 2400)", {"preset": "paper", "stagger_steps": 2400}),
    "staggered-1mb": ("staggered, one minibatch per update epoch (4 x 1 instead of 4 x 2)", {"preset": "paper", "stagger_steps": 2400, "n_minibatches": 1}),
    "16x256": ("16 environments x 256 steps, staggered: episodes cut 4x less often, as many steps an epoch", {"preset": "paper", "n_envs": 16, "rollout_steps": 256, "stagger_steps": 2400}),
    "8x256": ("8 environments x 256 steps, staggered: fewer, longer rollouts (~610 interaction steps an epoch)", {"preset": "paper", "n_envs": 8, "rollout_steps": 256, "stagger_steps": 2400}),
    "demos-4": ("the paper preset with 4 demonstration episodes per subset and refresh (the default's; the preset has 1)", {"preset": "paper", "n_demo_envs": 4}),
    "eq30": ("the paper preset with Eq. 30 read literally (no imitation at first, more as k grows)", {"preset": "paper", "alpha_schedule": "eq30"}),
    "default": ("make train's budget: 40 epochs x 8 fresh environments x 1,024 steps", {"preset": "default"}),
}


@dataclasses.dataclass(frozen=True)
class PresetProbeConfig:
    variants: tuple[str, ...] = tuple(VARIANTS)
    method: str = "reled"
    scenario: str = "hongkong"
    regime: str = "moderate"
    seeds: int = 1
    episodes: int = 20  # test episodes per seed, greedy and sampled (the sweep's keys)
    runs_dir: str = "runs/paper_preset"
    out: str = str(RESULTS / "paper_preset.json")


def probe(cfg: PresetProbeConfig) -> dict:
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {tuple(VARIANTS)}")
    sweep_cfg = SweepConfig(seeds=cfg.seeds, episodes=cfg.episodes)
    args = "" if cfg.variants == tuple(VARIANTS) else " --variants " + " ".join(cfg.variants)
    args += "" if cfg.seeds == 1 else f" --seeds {cfg.seeds}"
    result = {"benchmark": "paper_preset", "machine": machine(), "command": "python -m benchmarks.paper_preset" + args,
              "method": cfg.method, "scenario": cfg.scenario, "regime": cfg.regime, "seeds": cfg.seeds, "episodes": cfg.episodes, "variants": {}}
    out = Path(cfg.out)
    if out.exists():  # variants measured earlier with the same method, scenario and seeds stay
        old = json.loads(out.read_text())
        if all(old.get(k) == result[k] for k in ("method", "scenario", "regime", "seeds", "episodes")):
            result["variants"] = {k: v for k, v in old["variants"].items() if k in VARIANTS}
    for name in cfg.variants:
        what, flags = VARIANTS[name]
        print(f"[paper_preset] {name}: {what}", flush=True)
        tcfg = TrainConfig.of(scenario=cfg.scenario, regime=cfg.regime, method=cfg.method, seed=0, seeds=cfg.seeds, resume=True, test_episodes=0,
                              out=str(Path(cfg.runs_dir) / name), **flags)
        t0 = time.perf_counter()
        cell = evaluate_cell(sweep_cfg, [(tcfg, train(tcfg))], t0)
        result["variants"][name] = {"what": what, "flags": flags, "command": f"python -m benchmarks.paper_preset --variants {name}" + ("" if cfg.seeds == 1 else f" --seeds {cfg.seeds}"),
                                    **{k: cell[k] for k in ("train_wall_s", "interaction_steps_per_seed", "curves", "test", "test_sampled")}}
        write_json(out, result)
    plot(result, out.with_suffix(".png"))
    return result


def windowed(values: list[list[float]], steps: list[list[float]], n_windows: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean of a per-epoch metric over n_windows equal windows of epochs: (interaction steps at each
    window's end, the window's mean over the epochs in which episodes ended; windows without any are left out)."""
    v, s = np.asarray(values, float).mean(0), np.asarray(steps, float).mean(0)
    edges = np.linspace(0, len(v), min(n_windows, len(v)) + 1).astype(int)
    x = np.array([s[b - 1] for b in edges[1:]])
    y = np.array([np.nanmean(v[a:b]) if np.isfinite(v[a:b]).any() else np.nan for a, b in zip(edges[:-1], edges[1:])])
    return x[np.isfinite(y)], y[np.isfinite(y)]


def plot(result: dict, path: Path) -> None:
    fig, (ax_curve, ax_test) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    names = list(result["variants"])
    for name in names:
        v = result["variants"][name]
        x, y = windowed(v["curves"]["episode_reward"], v["curves"]["interaction_steps"])
        ax_curve.plot(x / 1e3, y, marker=".", label=name)
    ax_curve.set(xlabel="interaction steps per seed (thousands)", ylabel="training episode reward per agent", title=f"{result['method']} on {result['scenario']}/{result['regime']}: training")
    ax_curve.legend()
    ax_curve.grid(alpha=0.3)
    for j, mode in enumerate(("test", "test_sampled")):
        vals = [[row["reward"] for row in result["variants"][n][mode]] for n in names]
        xs = np.arange(len(names)) + (j - 0.5) * 0.38
        ax_test.bar(xs, [np.mean(v) for v in vals], width=0.38, label="greedy" if mode == "test" else "sampled")
        for x, v in zip(xs, vals):
            ax_test.scatter([x] * len(v), v, color="k", s=8, zorder=3)
    ax_test.set_xticks(np.arange(len(names)), names, rotation=20)
    ax_test.axhline(0, color="grey", lw=0.5)
    ax_test.set(ylabel="test reward per agent", title=f"test: {result['episodes']} episodes per seed")
    ax_test.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    with usage_errors():
        probe(tyro.cli(PresetProbeConfig, description=__doc__))


if __name__ == "__main__":
    main()
