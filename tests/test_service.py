"""The expert service's bookkeeping with a scripted backend: fallbacks, what each request carries, resuming."""

import numpy as np
import pytest

from llm.backends import BackendReply
from llm.feedback import Feedback
from llm.interface import MODE_SHORTEST_PATH, MODE_SHORTEST_TIME
from llm.service import ExpertConfig, ExpertService

VIA_2 = "```python\nif agent_id == 0:\n    move_to_by_shortest_path(2)\n    move_to_by_shortest_time(get_destination())\n```"
# Agent 1 plans to its destination; agent 2 stops at node 1, so the service appends the move home (a "completed" plan).
BOTH = "```python\nmove_to_by_shortest_path(1)\nif agent_id == 1:\n    move_to_by_shortest_time(get_destination())\n```"


class ScriptedBackend:
    """Answers each request with the next scripted reply (text, a BackendReply, or an exception to raise)."""

    name = "scripted"

    def __init__(self, *replies):
        self.replies = list(replies)
        self.requests = []
        self.memory = {"turns": 0}

    def generate(self, requests):
        self.requests.append(list(requests))
        self.memory["turns"] += 1
        out = []
        for _ in requests:
            reply = self.replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            out.append(reply if isinstance(reply, BackendReply) else BackendReply(reply, latency_s=0.25, prompt_tokens=10, completion_tokens=5))
        return out

    def state_dict(self):
        return dict(self.memory)

    def load_state_dict(self, state):
        self.memory = dict(state)


def _service(network, backend, **config):
    # Agents 0 and 2 go A (0) -> D (3), agent 1 D -> A.
    return ExpertService(network, np.array([0, 3, 0]), np.array([3, 0, 3]), config=ExpertConfig(**config), backend=backend)


def _targets(out, agent):
    """(targets, modes) of an agent's compiled instructions, from a SubsetPlans or a CompiledPlans."""
    t = getattr(out, "compiled", out).tensors
    return np.asarray(t.target)[agent, : int(t.length[agent])].tolist(), np.asarray(t.mode)[agent, : int(t.length[agent])].tolist()


def test_failed_plans_fall_back_to_the_last_executed_plan_else_to_the_destination(line_network):
    backend = ScriptedBackend(
        VIA_2, BackendReply(None, "no answer in 2 s", "LLMTimeout", latency_s=2.0),  # round 0: subsets (0, 1) and (2,)
        "I am sorry, I cannot plan routes.", BOTH,  # round 1: subsets (0,) and (1, 2)
    )
    svc = _service(line_network, backend)
    first = svc.plan([(0, 1), (2,)])
    # Agent 0 executed its plan; agent 1 (no move for it) and agent 2 (LLM timed out) never had one: live shortest time home.
    assert _targets(first[0], 0) == ([2, 3], [MODE_SHORTEST_PATH, MODE_SHORTEST_TIME])
    assert _targets(first[0], 1) == ([0], [MODE_SHORTEST_TIME]) and _targets(first[1], 2) == ([3], [MODE_SHORTEST_TIME])
    st = svc.stats
    assert (st.requests, st.plans_requested, st.plans_executed, dict(st.fallbacks)) == (2, 3, 1, {"invalid_plan": 1, "llm:LLMTimeout": 1})
    assert st.latency_s == [0.25, 2.0] and (st.prompt_tokens, st.completion_tokens) == (10, 5)
    assert svc.errors == {1: "plan issued no move instruction for agent 1", 2: "LLM failed: no answer in 2 s"}
    assert st.last_errors == ["agent 1: plan issued no move instruction for agent 1", "agent 2: LLM failed: no answer in 2 s"]
    assert [o.latency_s for o in first] == [0.25, 2.0] and [sorted(o.plans) for o in first] == [[0, 1], [2]]
    assert all(p.agent == a for o in first for a, p in o.plans.items()) and first[1].plans[2].error == "LLM failed: no answer in 2 s"
    assert st.completed == 0  # agent 0's plan ends at its destination
    # Compiled width: the configured instruction budget plus that appended move.
    assert np.asarray(first[0].compiled.tensors.target).shape == (3, ExpertConfig().max_instructions + 1)

    second = svc.plan([(0,), (1, 2)])
    # The next requests carry each agent's last executed plan and why its last plan was rejected.
    r0, r12 = backend.requests[1]
    assert (r0.round, r0.agents, [i.node for i in r0.previous[0]], r0.errors) == (1, (0,), [2, 3], {})
    assert (r12.agents, r12.previous, r12.errors) == ((1, 2), {}, {1: "plan issued no move instruction for agent 1", 2: "LLM failed: no answer in 2 s"})
    # Agent 0's garbage answer keeps its last executed plan (via 2), not a plan straight home.
    assert _targets(second[0], 0) == ([2, 3], [MODE_SHORTEST_PATH, MODE_SHORTEST_TIME])
    assert _targets(second[1], 1) == ([1, 0], [MODE_SHORTEST_PATH, MODE_SHORTEST_TIME]) and _targets(second[1], 2) == ([1, 3], [MODE_SHORTEST_PATH, MODE_SHORTEST_TIME])
    assert dict(svc.stats.fallbacks) == {"invalid_plan": 2, "llm:LLMTimeout": 1} and svc.stats.plans_executed == 3
    assert set(svc.errors) == {0} and svc.round == 2
    assert (svc.stats.requests, svc.stats.plans_requested, svc.stats.completed, svc.stats.cached) == (4, 6, 1, 0)
    assert (svc.stats.prompt_tokens, svc.stats.completion_tokens) == (30, 15)
    # Each subset's compiled plans hold every agent's current plan, the subset's rows new.
    assert _targets(second[1], 0) == _targets(second[0], 0)
    backend.replies.append(BOTH)
    svc.plan([(1, 2)])
    assert svc.stats.completed == 2  # counted over rounds: agent 2's plan needs the move home again


def test_a_backend_that_raises_is_a_counted_fallback(line_network):
    svc = _service(line_network, ScriptedBackend(RuntimeError("connection pool exhausted")))
    out = svc.plan([(0, 2), (1,)])
    assert [o.subset for o in out] == [(0, 2), (1,)]
    assert dict(svc.stats.fallbacks) == {"llm:BackendError": 3} and svc.stats.plans_executed == 0
    assert svc.errors[1] == "LLM failed: backend scripted failed: RuntimeError: connection pool exhausted"
    assert _targets(out[1], 1) == ([0], [MODE_SHORTEST_TIME])


def test_cached_replies_are_counted(line_network):
    cached = BackendReply(VIA_2, cached=True)
    svc = _service(line_network, ScriptedBackend(cached, cached, VIA_2))
    svc.plan([(0,), (1,)])
    svc.plan([(2,)])
    assert (svc.stats.cached, svc.stats.requests) == (2, 3)


def test_requests_carry_feedback_only_when_refining(line_network):
    fb = Feedback((0,), (), (), (), rvi=3.0, pdi=1.0, threshold=2.0)
    edge_time = list(range(line_network.n_edges))  # integer seconds: requests carry them as floats
    backend = ScriptedBackend(VIA_2, VIA_2)
    svc = _service(line_network, backend)
    svc.plan([(0,)], [fb], edge_time=edge_time)
    request = backend.requests[0][0]
    assert request.feedback is fb and np.array_equal(request.edge_time, edge_time) and request.edge_time.dtype == float
    no_refine = _service(line_network, backend, refine=False)
    no_refine.plan([(0,)], [fb])
    assert backend.requests[1][0].feedback is None and backend.requests[1][0].edge_time is None
    with pytest.raises(ValueError, match=r"agents \[3\] are not in 0..2"):
        svc.plan([(0, 3)])


def test_state_dict_resumes_the_service_where_it_stopped(line_network):
    svc = _service(line_network, ScriptedBackend(VIA_2, "garbage"))
    svc.plan([(0, 1)])
    svc.plan([(2,)])
    state = svc.state_dict()
    resumed = _service(line_network, ScriptedBackend())
    resumed.load_state_dict(state)
    assert (resumed.round, resumed.current, resumed.errors) == (2, svc.current, svc.errors) and resumed.round == 2
    assert resumed.stats.as_dict() == svc.stats.as_dict() and resumed.backend.memory == {"turns": 2}
    for field in ("target", "mode", "length"):
        np.testing.assert_array_equal(getattr(resumed.compiled_current().tensors, field), getattr(svc.compiled_current().tensors, field))
    assert _targets(resumed.compiled_current(), 0)[0] == [2, 3]


def test_a_backend_without_memory_saves_an_empty_state_and_resumes(line_network):
    """state_dict/load_state_dict are optional for a backend: one without them is saved as {} and still resumes."""

    class Stateless:  # answers like ScriptedBackend, keeps nothing between rounds
        name = "stateless"

        def __init__(self, *replies):
            self.generate = ScriptedBackend(*replies).generate

    svc = _service(line_network, Stateless(VIA_2))
    svc.plan([(0, 1)])
    state = svc.state_dict()
    assert state["backend"] == {} and state["round"] == 1
    resumed = _service(line_network, Stateless())
    resumed.load_state_dict(state)
    assert (resumed.round, resumed.current) == (1, svc.current)


def test_the_configured_sandbox_limits_apply_and_only_the_last_20_errors_are_kept(line_network):
    from llm.sandbox import SandboxLimits

    tight = SandboxLimits(max_source_chars=len(VIA_2) - 20)  # VIA_2's program alone is longer than this
    svc = _service(line_network, ScriptedBackend(*[VIA_2] * 11), limits=tight)
    for _ in range(11):
        svc.plan([(0, 1, 2)])  # three agents rejected per round: 33 errors in all
    st = svc.stats
    assert st.fallbacks["invalid_plan"] == 33 and len(st.last_errors) == 20
    assert all(e.startswith("agent ") and "characters; at most" in e for e in st.last_errors)
    assert _service(line_network, ScriptedBackend(VIA_2)).plan([(0,)])[0].plans[0].error is None  # default limits let it run



def test_rejection_reasons_are_cut_before_they_reach_the_next_prompt(line_network):
    from llm.service import MAX_REASON_CHARS

    # The interpreter bounds what it shows of a plan's value ...
    long_key = "```python\nd = {}\nx = d['" + "k" * 5000 + "']\n```"
    # ... and the service any reason, here a backend's 5,000-character error.
    backend = ScriptedBackend(long_key, BackendReply(None, "e" * 5000, "LLMBadResponse"), VIA_2)
    svc = _service(line_network, backend)
    svc.plan([[0]])
    assert svc.errors[0] == "line 2: KeyError: '" + "k" * 40 + "'..."
    svc.plan([[0]])
    assert len(svc.errors[0]) == MAX_REASON_CHARS and svc.errors[0].startswith("LLM failed: eee") and svc.errors[0].endswith("...")
    svc.plan([[0]])
    assert backend.requests[2][0].errors[0] == svc.stats.last_errors[-1].removeprefix("agent 0: ")  # what the prompt carries
    assert len(backend.requests[2][0].errors[0]) == MAX_REASON_CHARS
