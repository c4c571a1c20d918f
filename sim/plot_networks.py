"""Draw each scenario's network (edges by lanes, arterials highlighted, signals marked) to docs/*.png.

    python -m sim.plot_networks            # all scenarios
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from sim.scenarios import builtin_scenarios, load_network  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


def plot_network(name: str, out: Path) -> Path:
    net = load_network(name)
    xy = net.node_xy
    segments = [(xy[u], xy[v]) for u, v in zip(net.edge_from, net.edge_to)]
    colors = ["#c0392b" if a else "#34495e" for a in net.edge_arterial]
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.6 + 0.8 * net.edge_lanes, alpha=0.8))
    sig = net.node_signalized
    ax.scatter(xy[~sig, 0], xy[~sig, 1], s=6, c="#7f8c8d", zorder=3, label="junction")
    ax.scatter(xy[sig, 0], xy[sig, 1], s=16, c="#27ae60", zorder=4, label="derived signal")
    ax.plot([], [], color="#c0392b", label="arterial")
    ax.plot([], [], color="#34495e", label="other road")
    s = net.summary()
    ax.set_title(
        f"{name}: {s['junctions']} junctions, {s['edges']} edges, {s['signalized_junctions']} signals, "
        f"m_out={s['m_out']}\n{s['bbox_km2']} km², {s['total_length_km']} km of road, "
        f"{s['one_way_share']:.0%} one-way",
        fontsize=10,
    )
    ax.set_aspect("equal")
    ax.autoscale()
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="lower right", fontsize=8)
    ax.text(0.01, 0.01, "© OpenStreetMap contributors (ODbL)", transform=ax.transAxes, fontsize=7, color="#555")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=builtin_scenarios())
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    args = parser.parse_args()
    for name in args.scenarios:
        print(plot_network(name, args.out_dir / f"network_{name}.png"))


if __name__ == "__main__":
    main()
