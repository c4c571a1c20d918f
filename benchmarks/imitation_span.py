"""How long RELED imitates its expert, read from finished runs (issue 17): per epoch, over seeds.

    python -m benchmarks.imitation_span runs/alpha-text/small/grid-moderate-a10-reled-x5 runs/alpha-text/small/hongkong-moderate-a10-reled-x5
    # -> benchmarks/results/alpha_schedule/imitation_span.json, imitation_span.png

For each run directory, the seed means per epoch of: alpha, the expert term's effective weight
(`expert_weight`, 0 in minibatches without an expert row), the expert's share of the objective's weight
(`expert_share`), the expert loss `l_expert` (its size is what A^e, measured against V^e, still carries)
and the expert clip fraction; and three spans: epochs with the expert weight >= 0.5, epochs with the
expert's share >= 0.5, and epochs with |l_expert| >= 0.1 (the expert term still moves the policy).
Nothing is trained here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import RESULTS, write_json  # noqa: E402

KEYS = ("alpha", "expert_weight", "expert_share", "l_expert", "clipfrac_expert", "episode_reward")


def span(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = sorted({r["epoch"] for r in rows})
    per_epoch = {k: [float(np.nanmean([r.get(k, np.nan) for r in rows if r["epoch"] == e])) if any(np.isfinite(r.get(k, np.nan)) for r in rows if r["epoch"] == e)
                     else float("nan") for e in epochs] for k in KEYS}
    w, share, loss = (np.asarray(per_epoch[k]) for k in ("expert_weight", "expert_share", "l_expert"))
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    return {
        "run_dir": str(run_dir), "epochs": epochs, "per_epoch": per_epoch, "run": {k: summary.get(k) for k in ("method", "scenario", "regime", "epochs", "seeds")},
        "epochs_expert_weight_ge_0.5": [e for e, v in zip(epochs, w) if v >= 0.5],
        "epochs_expert_share_ge_0.5": [e for e, v in zip(epochs, share) if v >= 0.5],
        "epochs_abs_l_expert_ge_0.1": [e for e, v in zip(epochs, loss) if abs(v) >= 0.1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default=str(RESULTS / "alpha_schedule" / "imitation_span.json"))
    args = parser.parse_args()
    result = {"benchmark": "imitation_span", "command": "python -m benchmarks.imitation_span " + " ".join(args.runs), "runs": [span(Path(r)) for r in args.runs]}
    out = Path(args.out)
    write_json(out, result)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for run in result["runs"]:
        label = Path(run["run_dir"]).name
        for ax, key in zip(axes, ("expert_weight", "expert_share", "l_expert")):
            ax.plot(run["epochs"], run["per_epoch"][key], marker="o", ms=3, label=label)
            ax.set_title(key)
            ax.set_xlabel("epoch")
    axes[2].set_yscale("symlog", linthresh=0.1)
    axes[0].legend(fontsize=7)
    fig.suptitle("How long RELED imitates (mean over seeds)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    for run in result["runs"]:
        print(f"{run['run_dir']}: expert weight >= 0.5 in epochs {run['epochs_expert_weight_ge_0.5']}; share >= 0.5 in {run['epochs_expert_share_ge_0.5']}; "
              f"|l_expert| >= 0.1 in {run['epochs_abs_l_expert_ge_0.1']}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
