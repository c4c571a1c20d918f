"""The expert service: requests plans for agent subsets, validates them, falls back, compiles.

`ExpertService.plan(subsets, feedback, edge_time)` is the one call the
trainer makes every q epochs (Algorithm 1, lines 7-13). For each subset A_j it
asks the backend (all subsets concurrently for an LLM), parses and sandboxes
the answers, and compiles one `CompiledPlans` per subset. It never raises
because of the backend: an LLM that is down, slow, answers garbage or plans
badly leaves the affected agents on a fallback plan (their last executed plan,
else live shortest time to the destination), and `stats` counts every case.
An endpoint that cannot be reached, or a round in which most plans fell back,
is said in one warning line on stderr. Backend text (an LLM's) is checked and
run in a worker process under OS limits (`llm.isolation`); the rejection
reasons that go back into the next prompt are cut to `MAX_REASON_CHARS`.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Callable, Sequence

import numpy as np

from llm.backends import BackendReply, ExpertBackend, LLMBackend
from llm.client import LLMConfig
from llm.compile import CompiledPlans, compile_plans
from llm.feedback import Feedback
from llm.interface import AgentTrips, Instruction
from llm.isolation import IsolationLimits, PlanWorker
from llm.logit import LogitBackend
from llm.planner import PlannerBackend
from llm.plans import AgentPlan, PlanRequestContext, fallback_plan, parse_response
from llm.prompts import ExpertRequest, render_system
from llm.sandbox import SandboxLimits
from sim.network import RoadNetwork

BACKENDS = ("planner", "llm", "logit")
ISOLATION = ("auto", "process", "inline")  # auto: a worker process for LLM text, inline for our own backends
MAX_REASON_CHARS = 300  # of one rejection reason, as the next prompt and the stats show it
UNREACHABLE = ("LLMUnavailable", "LLMTimeout")


def warn_stderr(message: str) -> None:
    print(f"reled-jax: warning: {message}", file=sys.stderr, flush=True)


def brief(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    backend: str = "planner"  # planner | llm | logit
    interfaces: bool = True  # False: ask for complete routes (Table III's "w/o IFs")
    refine: bool = True  # False: requests never carry feedback (Table III's "w/o Refn.")
    max_instructions: int = 32  # per agent with interfaces (routes: up to N); compiled width is this + 1
    token_budget: int = 10_000
    llm: LLMConfig = LLMConfig()
    logit_theta: float = 10.0
    seed: int = 0
    limits: SandboxLimits = SandboxLimits()
    warn_fallback_share: float = 0.5  # warn when more than this share of a round's plans fall back
    isolation: str = "auto"  # auto | process | inline: where backend text is checked and run (llm.isolation)
    isolation_limits: IsolationLimits = IsolationLimits()

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown expert backend {self.backend!r}; choose one of {BACKENDS}")
        if self.max_instructions < 1:
            raise ValueError("max_instructions must be at least 1")
        if self.isolation not in ISOLATION:
            raise ValueError(f"unknown isolation {self.isolation!r}; choose one of {ISOLATION}")

    @property
    def isolated(self) -> bool:
        return self.isolation == "process" or (self.isolation == "auto" and self.backend == "llm")


@dataclasses.dataclass
class ExpertStats:
    requests: int = 0  # backend requests (one per subset per refinement)
    plans_requested: int = 0  # agent plans asked for
    plans_executed: int = 0  # ... that ran to a valid instruction sequence (Table III "Exec.")
    completed: int = 0  # executed plans that needed a final move to the destination
    fallbacks: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # by reason kind
    latency_s: list = dataclasses.field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0
    last_errors: list = dataclasses.field(default_factory=list)

    @property
    def execution_rate(self) -> float:
        return self.plans_executed / self.plans_requested if self.plans_requested else float("nan")

    @property
    def n_fallbacks(self) -> int:
        return sum(self.fallbacks.values())

    def as_dict(self) -> dict:
        lat = np.asarray(self.latency_s, float)
        return {
            "requests": self.requests,
            "plans_requested": self.plans_requested,
            "plans_executed": self.plans_executed,
            "execution_rate": self.execution_rate,
            "completed": self.completed,
            "fallbacks": dict(self.fallbacks),
            "latency_mean_s": float(lat.mean()) if lat.size else 0.0,
            "latency_sd_s": float(lat.std()) if lat.size else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached": self.cached,
        }


@dataclasses.dataclass(frozen=True)
class SubsetPlans:
    """The outcome for one subset: compiled plans of all agents (only the subset's rows are new)."""

    subset: tuple[int, ...]
    compiled: CompiledPlans
    plans: dict[int, AgentPlan]  # what the backend produced (error set when it was rejected)
    latency_s: float


class ExpertService:
    def __init__(
        self,
        network: RoadNetwork,
        agent_origin,
        agent_dest,
        agent_depart=None,
        config: ExpertConfig = ExpertConfig(),
        *,
        t_max: int = 2400,
        backend: ExpertBackend | None = None,
        transport=None,
        warn: Callable[[str], None] = warn_stderr,
    ):
        self.network = network
        self.trips = AgentTrips.of(agent_origin, agent_dest, agent_depart)
        self.origin, self.dest, self.depart = self.trips.origin, self.trips.dest, self.trips.depart
        self.config = config
        self.n_agents = len(self.origin)
        # Route-format plans (no interfaces, or the Logit expert) list every junction: up to N moves.
        routes = not config.interfaces or config.backend == "logit"
        self.max_instructions = max(config.max_instructions, network.n_nodes) if routes else config.max_instructions
        self.system_prompt = render_system(
            network, self.origin, self.dest, self.depart, interfaces=config.interfaces, max_instructions=config.max_instructions, t_max=t_max
        )
        self.backend = backend or self._make_backend(transport)
        self.stats = ExpertStats()
        self.round = 0
        self.current: dict[int, tuple[Instruction, ...]] = {}  # last executed plan per agent
        self.errors: dict[int, str] = {}
        self.warn = warn
        self.worker: PlanWorker | None = None  # started with the first isolated response

    def _make_backend(self, transport) -> ExpertBackend:
        cfg = self.config
        if cfg.backend == "planner":
            return PlannerBackend(self.network, self.trips, interfaces=cfg.interfaces)
        if cfg.backend == "logit":
            return LogitBackend(self.network, self.trips, theta=cfg.logit_theta, seed=cfg.seed)
        return LLMBackend(self.network, self.system_prompt, cfg.llm, interfaces=cfg.interfaces, token_budget=cfg.token_budget, transport=transport)

    def plan(self, subsets: Sequence[Sequence[int]], feedback: Sequence[Feedback | None] | None = None, edge_time: np.ndarray | None = None) -> list[SubsetPlans]:
        """Plans for each subset (one backend request each); never raises because of the backend."""
        subsets = [tuple(int(a) for a in s) for s in subsets]
        for s in subsets:
            bad = [a for a in s if not 0 <= a < self.n_agents]
            if bad:
                raise ValueError(f"agents {bad} are not in 0..{self.n_agents - 1}")
        if feedback is None or not self.config.refine:
            feedback = [None] * len(subsets)
        requests = [
            ExpertRequest(
                round=self.round,
                agents=s,
                edge_time=None if edge_time is None else np.asarray(edge_time, float),
                feedback=fb,
                previous={a: self.current[a] for a in s if a in self.current},
                errors={a: self.errors[a] for a in s if a in self.errors},
            )
            for s, fb in zip(subsets, feedback)
        ]
        try:
            replies = self.backend.generate(requests)
        except Exception as err:  # a backend bug must not kill training either
            replies = [BackendReply(None, f"backend {self.backend.name} failed: {type(err).__name__}: {err}", "BackendError")] * len(requests)
        ctx = PlanRequestContext(self.network, self.origin, self.dest, edge_time, self.max_instructions, self.config.limits)
        out = [self._absorb(s, reply, ctx) for s, reply in zip(subsets, replies)]
        self._warn_about(replies, out)
        self.round += 1
        return out

    def _warn_about(self, replies: list[BackendReply], out: list[SubsetPlans]) -> None:
        """One line on stderr when the endpoint cannot be reached, or when most of this round's plans fell back."""
        unreachable = [r for r in replies if r.error_kind in UNREACHABLE]
        if unreachable:
            self.warn(f"expert round {self.round}: {len(unreachable)} of {len(replies)} requests failed ({brief(unreachable[0].error or '', 160)}); "
                      f"those agents follow fallback plans ({self.stats.n_fallbacks} fallbacks so far)")
            return
        plans = [p for subset in out for p in subset.plans.values()]
        failed = [p for p in plans if not p.executed]
        if plans and len(failed) / len(plans) > self.config.warn_fallback_share:
            self.warn(f"expert round {self.round}: {len(failed)} of {len(plans)} plans were rejected and fell back "
                      f"(first reason: {brief(failed[0].error or 'no plan', 160)})")

    def _absorb(self, subset: tuple[int, ...], reply: BackendReply, ctx: PlanRequestContext) -> SubsetPlans:
        st = self.stats
        st.requests += 1
        st.plans_requested += len(subset)
        st.latency_s.append(reply.latency_s)
        st.prompt_tokens += reply.prompt_tokens
        st.completion_tokens += reply.completion_tokens
        st.cached += int(reply.cached)
        if reply.text is None:
            plans = {a: AgentPlan(a, error=f"LLM failed: {reply.error}") for a in subset}
            kind = f"llm:{reply.error_kind}"
        else:
            try:
                plans = self._parse(reply.text, subset, ctx)
            except Exception as err:  # a checker bug or a Python error no check foresaw: the plan's failure, not training's
                plans = {a: AgentPlan(a, error=f"plan could not be checked: {type(err).__name__}: {brief(str(err), 200)}") for a in subset}
            kind = "invalid_plan"
            if reply.keep is not None and any(p.executed for p in plans.values()):
                reply.keep()  # only answers that gave a plan are cached
        for a, p in plans.items():
            if p.executed:
                st.plans_executed += 1
                self.current[a] = p.instructions
                self.errors.pop(a, None)
            else:
                st.fallbacks[kind] += 1
                self.errors[a] = brief(p.error or "no plan")
                st.last_errors = (st.last_errors + [f"agent {a}: {self.errors[a]}"])[-20:]
        compiled = self.compiled_current()
        st.completed += int(sum(compiled.completed[a] for a in subset if plans[a].executed))
        return SubsetPlans(subset, compiled, plans, reply.latency_s)

    def _parse(self, text: str, subset: tuple[int, ...], ctx: PlanRequestContext) -> dict[int, AgentPlan]:
        if not self.config.isolated:
            return parse_response(text, subset, ctx)
        if self.worker is None:
            self.worker = PlanWorker(ctx, self.config.isolation_limits)
        return self.worker.parse(text, subset, ctx.edge_time)

    def compiled_current(self) -> CompiledPlans:
        """All agents' current plans compiled, without asking the backend (for plans generated once)."""
        rows = [
            AgentPlan(a, self.current[a]) if a in self.current else fallback_plan(a, self.dest[a], "no executed plan yet")
            for a in range(self.n_agents)
        ]
        return compile_plans(rows, self.origin, self.dest, self.max_instructions + 1)

    def state_dict(self) -> dict:
        """Everything needed to resume: round, current plans, errors, stats, and the backend's own memory."""
        backend_state = getattr(self.backend, "state_dict", lambda: {})()
        return {"round": self.round, "current": dict(self.current), "errors": dict(self.errors), "stats": self.stats, "backend": backend_state}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.current, self.errors, self.stats = state["round"], dict(state["current"]), dict(state["errors"]), state["stats"]
        if hasattr(self.backend, "load_state_dict"):
            self.backend.load_state_dict(state["backend"])

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
