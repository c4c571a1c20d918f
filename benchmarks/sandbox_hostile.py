"""What a hostile plan can cost: the corpus of benchmarks/hostile_plans.py through `ExpertService.plan`.

    python -m benchmarks.sandbox_hostile   # -> benchmarks/results/sandbox_hostile.json

Every response is answered for 2 agents on the `line`-sized `oakland` network by the trainer's call,
`ExpertService.plan`, with plans in a worker process (`llm.isolation`, default limits: 3 s per plan,
256 MB, 30 CPU s). Two passes: `interpreter+os` (the default: the interpreter's own budgets, then the
worker's), and `os-only` (the interpreter's budgets lifted, so only the worker's OS limits stop a plan).
Per case: seconds for the whole `plan()` call, whether every agent was rejected (and fell back), the
rejection reason, and the worker's peak resident memory. Nothing may raise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import RESULTS, machine, write_json
from benchmarks.hostile_plans import CORPUS
from llm.backends import BackendReply
from llm.isolation import IsolationLimits
from llm.sandbox import SandboxLimits
from llm.service import ExpertConfig, ExpertService
from sim.scenarios import load_scenario

LIFTED = SandboxLimits(max_steps=10**12, max_seconds=10**6, max_items=10**12, max_total_items=10**15, max_expanded_items=10**15,
                       max_int_bits=10**9, max_call_args=10**6, max_round_digits=10**30, max_format_width=10**12)


class Corpus:
    name = "llm"

    def __init__(self):
        self.text = ""

    def generate(self, requests):
        return [BackendReply(self.text) for _ in requests]


def run_pass(label: str, limits: SandboxLimits, isolation: IsolationLimits) -> dict:
    network, env, params = load_scenario("oakland", "moderate", n_agents=2)
    backend = Corpus()
    service = ExpertService(network, np.asarray(params.agent_origin), np.asarray(params.agent_dest),
                            config=ExpertConfig(isolation="process", limits=limits, isolation_limits=isolation), backend=backend, warn=lambda m: None)
    rows = []
    try:
        for name, text in CORPUS:
            backend.text = text
            service.worker and setattr(service.worker, "peak_mb", 0.0)
            start = time.perf_counter()
            try:
                (out,) = service.plan([(0, 1)])
                raised = None
            except Exception as err:  # the promise is that this never happens
                out, raised = None, f"{type(err).__name__}: {err}"
            seconds = time.perf_counter() - start
            plans = [] if out is None else list(out.plans.values())
            rows.append({"case": name, "seconds": round(seconds, 3), "raised": raised,
                         "rejected": bool(plans) and all(not p.executed for p in plans),
                         "executed": sum(p.executed for p in plans), "reason": (plans[0].error or "")[:160] if plans else raised,
                         "worker_peak_mb": round(service.worker.peak_mb, 1) if service.worker else None})
            print(f"[{label}] {name:28s} {seconds:7.3f} s  {rows[-1]['worker_peak_mb']} MB  {rows[-1]['reason']}", flush=True)
    finally:
        service.close()
    return {
        "label": label, "cases": len(rows), "rejected": sum(r["rejected"] for r in rows), "executed_any": sum(r["executed"] > 0 for r in rows),
        "raised": sum(r["raised"] is not None for r in rows), "max_seconds": max(r["seconds"] for r in rows),
        "max_mb": max(r["worker_peak_mb"] or 0.0 for r in rows), "workers_started": service.worker.started if service.worker else 0,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "sandbox_hostile.json"))
    args = parser.parse_args()
    isolation = IsolationLimits()
    passes = [run_pass("interpreter+os", SandboxLimits(), isolation), run_pass("os-only", LIFTED, isolation)]
    result = {"benchmark": "sandbox_hostile", "command": "python -m benchmarks.sandbox_hostile", "machine": machine(),
              "isolation_limits": vars(isolation), "passes": passes}
    write_json(__import__("pathlib").Path(args.out), result)
    for p in passes:
        print(f"{p['label']}: {p['cases']} cases, {p['rejected']} rejected, {p['executed_any']} with a plan, {p['raised']} raised; "
              f"max {p['max_seconds']:.2f} s, max {p['max_mb']:.0f} MB, {p['workers_started']} workers started")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
