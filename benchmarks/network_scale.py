"""How big a network the project takes: build time and peak memory of the N^2 all-pairs tables, against the
estimate `sim.network.table_memory_gib` that refuses networks over `max_table_gib`.

    python -m benchmarks.network_scale                      # square street grids of 500 ... 3,000 junctions

Each size runs in its own process (so its peak resident memory is its own): a two-way square grid of N
junctions (`sim.network.build_network`), then one reset and 50 random-policy steps of the environment with
10 agents. Writes benchmarks/results/network_scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RESULTS, machine, write_json

CHILD = """
import json, math, resource, time
import numpy as np
t0 = time.perf_counter()
from sim.network import build_network, table_memory_gib
side = int(round(math.sqrt({n})))
xy = np.array([[100.0 * c, 100.0 * r] for r in range(side) for c in range(side)])
edges = []
for r in range(side):
    for c in range(side):
        i = r * side + c
        for j in ([i + 1] if c + 1 < side else []) + ([i + side] if r + 1 < side else []):
            edges += [(i, j, 100.0, 13.9, 1), (j, i, 100.0, 13.9, 1)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.perf_counter()
net = build_network("grid{n}", xy, edges)
build_s = time.perf_counter() - t1
peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import jax
from sim.env import make_env, make_params
from sim.policies import random_policy
rng = np.random.default_rng(0)
pairs = rng.choice(net.n_nodes, size=(40, 2), replace=True)
pairs = pairs[pairs[:, 0] != pairs[:, 1]]
env = make_env(net, 10, 50)
params = make_params(net, pairs[:10, 0], pairs[:10, 1], pairs[:, 0], pairs[:, 1], n_background=50)
t2 = time.perf_counter()
def run(key):
    obs, state = env.reset(key, params)
    def body(c, k):
        obs, state = c
        obs, state, *_ = env.step(k, state, random_policy(k, obs, params), params)
        return (obs, state), None
    return jax.lax.scan(body, (obs, state), jax.random.split(key, 50))[0][1].t
jax.block_until_ready(jax.jit(run)(jax.random.PRNGKey(0)))
env_s = time.perf_counter() - t2
print(json.dumps({{"junctions": net.n_nodes, "edges": net.n_edges, "build_s": round(build_s, 2), "env_compile_and_run_s": round(env_s, 2),
                   "rss_before_build_mib": round(base / 1024), "peak_rss_build_mib": round(peak_build / 1024),
                   "peak_rss_total_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                   "estimate_mib": round(table_memory_gib(net.n_nodes) * 1024), "total_s": round(time.perf_counter() - t0, 2)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--junctions", nargs="+", type=int, default=[500, 1000, 2000, 3000])
    parser.add_argument("--out", default=str(RESULTS / "network_scale.json"))
    args = parser.parse_args()
    rows = []
    for n in args.junctions:
        out = subprocess.run([sys.executable, "-c", CHILD.format(n=n)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{n} junctions failed: {out.stderr[-1500:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["build_over_estimate"] = round((row["peak_rss_build_mib"] - row["rss_before_build_mib"]) / max(row["estimate_mib"], 1), 2)
        rows.append(row)
        print(row, flush=True)
    write_json(Path(args.out), {"benchmark": "network_scale", "command": "python -m benchmarks.network_scale --junctions "
                          + " ".join(map(str, args.junctions)), "machine": machine(), "rows": rows,
                          "note": "build_over_estimate: the peak resident memory the build added, over table_memory_gib's estimate (<= 1: the estimate is safe)"})


if __name__ == "__main__":
    main()
