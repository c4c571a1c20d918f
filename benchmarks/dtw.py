"""DTW throughput: the JAX wavefront kernel (jit + vmap) against `dtaidistance`'s C implementation.

    python -m benchmarks.dtw [--batches 1000 10000 100000] [--length 32]

Pairs of 2-D trajectories with random true lengths in [length/2, length],
padded to `length`. JAX time excludes compilation (reported separately) and
includes moving the result to the host. dtaidistance is called pair by pair
(`dtw_ndim.distance_fast`, C, no Python per cell), which is how a trainer
without batching would call it. Both compute the same quantity (its
sqrt-of-squared-distances convention; the kernel's `metric="dtaidistance"`),
and the run checks they agree. Writes benchmarks/results/dtw.json and .png.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from benchmarks.common import RESULTS, machine, write_json
from reled_jax.dtw import dtw_batch



@dataclasses.dataclass(frozen=True)
class Args:
    batches: tuple[int, ...] = (1_000, 10_000, 100_000)
    length: int = 32
    repeats: int = 3
    seed: int = 0
    out: str = ""


def main(args: Args) -> dict:
    try:
        from dtaidistance import dtw_ndim
    except ImportError:
        dtw_ndim = None
        print("dtaidistance is not installed (pip install dtaidistance): timing the JAX kernel only")
    rng = np.random.default_rng(args.seed)
    kernel = jax.jit(lambda a, b, la, lb: dtw_batch(a, b, la, lb, metric="dtaidistance"))
    rows = []
    for batch in args.batches:
        a = rng.random((batch, args.length, 2)) * 1000.0
        b = rng.random((batch, args.length, 2)) * 1000.0
        la = rng.integers(args.length // 2, args.length + 1, batch)
        lb = rng.integers(args.length // 2, args.length + 1, batch)
        ja, jb, jla, jlb = map(jnp.asarray, (a, b, la, lb))
        start = time.perf_counter()
        out = np.asarray(kernel(ja, jb, jla, jlb))
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = np.asarray(kernel(ja, jb, jla, jlb))
            times.append(time.perf_counter() - start)
        row = {"pairs": batch, "length": args.length, "jax_s": min(times), "jax_first_call_s": compile_s, "jax_pairs_per_s": batch / min(times)}
        if dtw_ndim is not None:
            start = time.perf_counter()
            ref = np.array([dtw_ndim.distance_fast(a[i, : la[i]], b[i, : lb[i]]) for i in range(batch)])
            row["dtaidistance_s"] = time.perf_counter() - start
            row["dtaidistance_pairs_per_s"] = batch / row["dtaidistance_s"]
            row["speedup"] = row["jax_pairs_per_s"] / row["dtaidistance_pairs_per_s"]
            row["max_rel_diff"] = float(np.max(np.abs(out - ref) / np.maximum(ref, 1e-9)))
        rows.append(row)
        print(
            f"{batch:>7d} pairs: JAX {row['jax_pairs_per_s']:>12,.0f} pairs/s (first call {compile_s:.2f} s)"
            + (f", dtaidistance {row['dtaidistance_pairs_per_s']:>10,.0f} pairs/s, speed-up {row['speedup']:.1f}x, max rel diff {row['max_rel_diff']:.1e}" if dtw_ndim else "")
        )
    result = {
        "args": dataclasses.asdict(args),
        "rows": rows,
        "machine": machine(),
    }
    out_path = Path(args.out) if args.out else RESULTS / f"dtw_{jax.default_backend()}.json"
    write_json(out_path, result)
    _plot(result, out_path.with_suffix(".png"))
    print(f"wrote {out_path}")
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    pairs = [r["pairs"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(pairs, [r["jax_pairs_per_s"] for r in rows], "o-", label=f"JAX wavefront ({result['machine']['jax_backend']})")
    if "dtaidistance_pairs_per_s" in rows[0]:
        ax.plot(pairs, [r["dtaidistance_pairs_per_s"] for r in rows], "s--", label="dtaidistance (C, per pair)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pairs per batch")
    ax.set_ylabel("pairs / s")
    ax.set_title(f"DTW throughput, trajectories of {rows[0]['length']} points")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Args))
