"""Expert backends: anything that answers `ExpertRequest`s with plan *text*.

Every backend's text goes through the same parser, sandbox and compiler
(llm.plans, llm.sandbox, llm.compile), so the offline planner and the Logit
expert are held to exactly the contract an LLM is.

* `LLMBackend`: an OpenAI-compatible chat endpoint (llm.client), with the
  token-budgeted history (llm.history) and the templates (llm.prompts).
* `PlannerBackend` (llm.planner): deterministic, offline, the default.
* `LogitBackend` (llm.logit): the paper's RELED-Logit ablation expert.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

from llm.client import PLAN_SCHEMA, ROUTE_SCHEMA, ChatClient, ChatResult, LLMConfig, LLMError, sanitize_text
from llm.history import ChatHistory, make_token_counter
from llm.prompts import ExpertRequest, render_user
from sim.network import RoadNetwork


@dataclasses.dataclass(frozen=True)
class BackendReply:
    text: str | None  # None when the backend failed (then `error` says why)
    error: str | None = None
    error_kind: str | None = None  # class name of the LLMError
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    keep: Callable[[], None] | None = None  # store the answer in the response cache (the service calls it once it parsed)


class ExpertBackend(Protocol):
    name: str

    def generate(self, requests: list[ExpertRequest]) -> list[BackendReply]: ...


class LLMBackend:
    """Asks an OpenAI-compatible endpoint; one concurrent request per subset."""

    name = "llm"

    def __init__(self, network: RoadNetwork, system_prompt: str, config: LLMConfig, *, interfaces: bool = True, token_budget: int = 10_000, transport=None):
        self.network = network
        self.client = ChatClient(config, transport=transport)
        count, self.tokenizer = make_token_counter()
        self.history = ChatHistory(system_prompt, token_budget, count)
        self.schema = PLAN_SCHEMA if interfaces else ROUTE_SCHEMA

    def generate(self, requests: list[ExpertRequest]) -> list[BackendReply]:
        users = [render_user(r, self.network) for r in requests]
        batch = [(self.history.messages(u), self.schema) for u in users]
        results = self.client.complete_many(batch)
        replies = []
        for user, result in zip(users, results):
            if isinstance(result, LLMError):
                replies.append(BackendReply(None, str(result), type(result).__name__, latency_s=result.latency_s))
                continue
            assert isinstance(result, ChatResult)
            self.history.record(user, result.text)
            keep = (lambda result=result: self.client.keep(result)) if result.cache_key is not None else None
            replies.append(BackendReply(result.text, None, None, result.latency_s, result.prompt_tokens, result.completion_tokens, result.cached, keep))
        return replies

    def state_dict(self) -> dict:
        return {"turns": list(self.history.turns), "dropped": self.history.dropped}

    def load_state_dict(self, state: dict) -> None:
        # Sanitised again: a checkpoint written before responses were sanitised may hold a lone surrogate.
        self.history.turns = [dict(t, content=sanitize_text(t["content"])) for t in state["turns"]]
        self.history.dropped = state["dropped"]

    def close(self) -> None:
        self.client.close()


class OfflineBackend:
    """Base of the model-free backends: answers each request with `respond(request) -> text`, timed."""

    name = "offline"

    def respond(self, request: ExpertRequest) -> str:
        raise NotImplementedError

    def generate(self, requests: list[ExpertRequest]) -> list[BackendReply]:
        replies = []
        for request in requests:
            start = time.perf_counter()
            text = self.respond(request)
            replies.append(BackendReply(text, latency_s=time.perf_counter() - start))
        return replies
