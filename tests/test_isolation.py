"""Plans in a worker process under OS limits: what the interpreter's budgets miss costs at most the worker's limits."""

import numpy as np
import pytest

from llm.backends import BackendReply
from llm.isolation import IsolationLimits, PlanWorker
from llm.plans import PlanRequestContext, parse_response
from llm.sandbox import SandboxLimits
from llm.service import ExpertConfig, ExpertService

# Budgets the interpreter would never reach, so that only the worker's OS limits can stop these plans.
UNBOUNDED = SandboxLimits(max_steps=10**12, max_seconds=10**6, max_items=10**9, max_total_items=10**12, max_expanded_items=10**12)
SPIN = "```python\nx = 0\nfor i in range(10**12):\n    x = x + 1\n```"
GOOD = "```python\nif agent_id == 0:\n    move_to_by_shortest_path(2)\nmove_to_by_shortest_time(get_destination())\n```"


@pytest.fixture
def ctx(line_network):
    return PlanRequestContext(line_network, np.array([0, 3, 0]), np.array([3, 0, 3]), max_instructions=8, limits=UNBOUNDED)


@pytest.fixture
def make_worker(ctx):
    """PlanWorker(ctx, limits), every one closed (its process killed) when the test ends."""
    workers = []

    def make(limits=IsolationLimits()):
        workers.append(PlanWorker(ctx, limits))
        return workers[-1]

    yield make
    for worker in workers:
        worker.close()


def test_worker_gives_what_the_inline_parser_gives(ctx, make_worker):
    worker = make_worker()
    edge_time = np.asarray(ctx.network.edge_free_time) * np.linspace(1.0, 3.0, ctx.network.n_edges)
    for text in (GOOD, '{"plans": [{"agent": 1, "route": [3, 2, 1, 0]}]}', "no plan here"):
        assert worker.parse(text, [0, 1, 2], edge_time) == parse_response(text, [0, 1, 2], PlanRequestContext(**{**ctx.__dict__, "edge_time": edge_time}))
    assert worker.started == 1  # one process for every request


def test_a_plan_past_its_deadline_is_killed_and_the_next_request_gets_a_fresh_worker(make_worker):
    worker = make_worker(IsolationLimits(deadline_s=0.5))
    plans = worker.parse(SPIN, [0, 1])
    assert plans[0].error == "plan ran past its 0.5 s deadline (agent 0); the worker was replaced"
    assert plans[1].error == "not run: the response's plan for agent 0 ran past its 0.5 s deadline"
    assert worker.killed == 1
    # the replacement is already starting (while training goes on), not at the next request
    assert worker.started == 2 and worker.proc is not None and worker.proc.poll() is None
    assert worker.parse(GOOD, [0])[0].executed and worker.started == 2


def test_a_plan_past_its_memory_cap_is_rejected_and_the_worker_lives_on(make_worker):
    worker = make_worker(IsolationLimits(memory_mb=64, deadline_s=20))
    plan = worker.parse("```python\nx = [0] * (10**8)\nmove_to_by_shortest_time(3)\n```", [0])[0]  # 800 MB of list
    assert plan.error == "plan ran out of memory"
    assert worker.parse(GOOD, [0])[0].executed and worker.started == 1


def test_a_plan_past_its_cpu_seconds_is_stopped_by_the_kernel(make_worker):
    worker = make_worker(IsolationLimits(cpu_s=1, deadline_s=30))
    plan = worker.parse(SPIN, [0])[0]
    assert plan.error == "plan used up its 1 s of CPU (agent 0); the worker was replaced"


def test_the_service_runs_llm_text_in_the_worker_and_training_goes_on(line_network):
    class Hostile:
        name = "llm"

        def generate(self, requests):
            return [BackendReply(SPIN) for _ in requests]

    warnings = []
    cfg = ExpertConfig(isolation="process", limits=UNBOUNDED, isolation_limits=IsolationLimits(deadline_s=0.3))
    service = ExpertService(line_network, np.array([0, 3, 0]), np.array([3, 0, 3]), config=cfg, backend=Hostile(), warn=warnings.append)
    try:
        out = service.plan([[0, 1], [2]])
        assert service.stats.fallbacks["invalid_plan"] == 3 and service.stats.plans_executed == 0
        assert all("deadline" in p.error for s in out for p in s.plans.values())
        # every agent still has a plan to follow: the fallback, live shortest time to its destination
        assert np.asarray(out[0].compiled.tensors.target)[:, 0].tolist() == [3, 0, 3]
        assert len(warnings) == 1 and "3 of 3 plans were rejected" in warnings[0]
    finally:
        service.close()
    assert service.worker.proc is None


def test_isolation_is_the_default_for_llm_text_only():
    assert ExpertConfig(backend="llm").isolated and not ExpertConfig().isolated and not ExpertConfig(backend="logit").isolated
    assert ExpertConfig(isolation="process").isolated and not ExpertConfig(backend="llm", isolation="inline").isolated
    with pytest.raises(ValueError, match="unknown isolation"):
        ExpertConfig(isolation="container")


def test_the_hostile_corpus_never_raises_and_every_plan_in_it_is_rejected(line_network):
    """benchmarks/hostile_plans.py through the trainer's call, isolated, default limits: all rejected but the one
    valid program that sits beside a JSON block with a 5,000-digit integer."""
    from benchmarks.hostile_plans import CORPUS

    class Corpus:
        name = "llm"
        text = ""

        def generate(self, requests):
            return [BackendReply(self.text) for _ in requests]

    backend = Corpus()
    service = ExpertService(line_network, np.array([0, 3]), np.array([3, 0]), config=ExpertConfig(isolation="process"), backend=backend, warn=lambda m: None)
    executed = []
    try:
        for name, text in CORPUS:
            backend.text = text
            (out,) = service.plan([(0, 1)])
            if any(p.executed for p in out.plans.values()):
                executed.append(name)
            assert all(p.executed or p.error for p in out.plans.values())
    finally:
        service.close()
    assert executed == ["huge-json-int-beside-plan"]
    assert service.stats.plans_requested == 2 * len(CORPUS) and service.stats.n_fallbacks == 2 * (len(CORPUS) - 1)
