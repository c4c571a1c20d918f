"""Chat history kept within a token budget (paper IV-C1: 10,000 tokens, system prompt always kept).

Tokens are counted with `tiktoken` when it is installed and its encoding is
available offline; otherwise with a documented estimate of one token per
three characters. Our prompts are dense with numbers (coordinates, ids), which
tokenise at roughly 2.5-3.5 characters per token rather than English prose's
4, so the estimate errs towards dropping history a little early for
OpenAI-style tokenizers. Tokenizers that split numbers into single digits
(SmolLM2's, for one) produce about twice as many tokens: set the budget to fit
the server's context window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

CHARS_PER_TOKEN_ESTIMATE = 3.0
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per chat message


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


def make_token_counter() -> tuple[Callable[[str], int], str]:
    """(count, name): a real tokenizer if one can be loaded offline, else the estimate."""
    try:
        import tiktoken  # optional

        encoding = tiktoken.get_encoding("cl100k_base")
        return (lambda text: len(encoding.encode(text, disallowed_special=()))), "tiktoken/cl100k_base"
    except Exception:  # not installed, or its encoding files cannot be fetched offline
        return estimate_tokens, f"estimate ({CHARS_PER_TOKEN_ESTIMATE:g} chars/token)"


@dataclasses.dataclass
class ChatHistory:
    """System prompt plus alternating user/assistant turns, trimmed oldest-first to a budget."""

    system: str
    token_budget: int = 10_000
    count: Callable[[str], int] = estimate_tokens
    turns: list[dict] = dataclasses.field(default_factory=list)
    dropped: int = 0  # turns dropped so far

    def tokens(self, messages: list[dict]) -> int:
        return sum(self.count(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages)

    def messages(self, user: str) -> list[dict]:
        """Messages for a request with this new user turn: the system prompt, as much recent history as fits, the turn."""
        head = [{"role": "system", "content": self.system}]
        tail = [{"role": "user", "content": user}]
        room = self.token_budget - self.tokens(head + tail)
        kept: list[dict] = []
        # Whole user/assistant pairs, newest first, so the model never sees an answer without its question.
        for k in range(len(self.turns) - 2, -1, -2):
            pair = self.turns[k : k + 2]
            cost = self.tokens(pair)
            if cost > room:
                break
            kept = pair + kept
            room -= cost
        return head + kept + tail

    def record(self, user: str, assistant: str) -> None:
        """Store a completed exchange, then drop the oldest pairs beyond the budget."""
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        base = self.tokens([{"role": "system", "content": self.system}])
        while self.turns and base + self.tokens(self.turns) > self.token_budget:
            self.turns = self.turns[2:]
            self.dropped += 2
