"""`httpx` client for any OpenAI-compatible `/v1/chat/completions` endpoint.

Works with OpenAI, vLLM, llama.cpp's server and Ollama. Configuration comes
from arguments or the environment (RELED_LLM_BASE_URL, RELED_LLM_MODEL,
RELED_LLM_API_KEY, falling back to OPENAI_API_KEY). Every failure is one of
the typed `LLMError`s below; 429, 5xx, timeouts and connection errors are
retried with exponential backoff (honouring Retry-After) before giving up,
all within one overall deadline per request (`deadline_s`: connect, every read
of a body that trickles in, and the retries), so a server that accepts and
never answers costs at most that long.
Structured output is requested where the server supports it: `json_schema`
(OpenAI-style servers, vLLM) or `json_object` with a `schema` (llama.cpp's
server); a server that rejects a format is asked again with the next one
(json_schema -> json_object -> none), and the client remembers what worked.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from llm.cache import ResponseCache

def _plans_schema(item: dict) -> dict:
    """JSON schema of a plan response: {"plans": [item, ...]} (see llm.plans for the formats accepted)."""
    props = {"agent": {"type": "integer"}, **item}
    return {
        "type": "object",
        "properties": {"plans": {"type": "array", "items": {"type": "object", "properties": props, "required": sorted(props)}}},
        "required": ["plans"],
    }


PLAN_SCHEMA = _plans_schema({"code": {"type": "string"}})  # one program per agent
ROUTE_SCHEMA = _plans_schema({"route": {"type": "array", "items": {"type": "integer"}}})  # no-interface setting


_DOWNGRADE = {"json_schema": "json_object", "json_object": "none", "none": "none"}


class LLMError(Exception):
    """Base of every failure to get a usable chat completion."""

    latency_s: float = 0.0


class LLMUnavailable(LLMError):
    """The server could not be reached (connection refused, DNS, reset)."""


class LLMTimeout(LLMError):
    """The server did not answer within the timeout."""


class LLMHTTPError(LLMError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class LLMBadResponse(LLMError):
    """The server answered, but not with a chat completion (malformed JSON, no content)."""


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    base_url: str = ""  # e.g. http://127.0.0.1:8080/v1
    model: str = ""
    api_key: str = ""
    timeout_s: float = 60.0  # per connect or read
    deadline_s: float = 120.0  # per request, all attempts and reads together
    max_retries: int = 3
    backoff_s: float = 1.0  # first retry waits this long, then doubles
    max_backoff_s: float = 30.0
    temperature: float = 0.2
    max_tokens: int = 2048
    seed: int | None = 0
    structured: str = "json_schema"  # json_schema | json_object | none
    cache_dir: str | None = None  # on-disk response cache; None disables it
    concurrency: int = 4

    @classmethod
    def from_env(cls, **overrides) -> LLMConfig:
        env = {
            "base_url": os.environ.get("RELED_LLM_BASE_URL", ""),
            "model": os.environ.get("RELED_LLM_MODEL", ""),
            "api_key": os.environ.get("RELED_LLM_API_KEY", os.environ.get("OPENAI_API_KEY", "")),
        }
        env.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return cls(**env)

    def check(self) -> None:
        if not self.base_url:
            raise LLMError("no LLM endpoint configured: pass --expert.llm.base-url (e.g. http://127.0.0.1:8080/v1) or set RELED_LLM_BASE_URL")
        if not self.base_url.startswith(("http://", "https://")):
            raise LLMError(f"LLM base URL {self.base_url!r} must start with http:// or https://")
        if not (self.timeout_s > 0 and self.deadline_s > 0):
            raise LLMError(f"timeout_s={self.timeout_s:g} and deadline_s={self.deadline_s:g} must be positive")
        if self.structured not in ("json_schema", "json_object", "none"):
            raise LLMError(f"structured={self.structured!r}; choose json_schema, json_object or none")


@dataclasses.dataclass(frozen=True)
class ChatResult:
    text: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    attempts: int = 1
    cache_key: dict | None = None  # what `keep` stores this answer under (None: cached already, or no cache)


class ChatClient:
    """Synchronous, thread-safe chat client; `complete_many` sends requests concurrently."""

    def __init__(self, config: LLMConfig, transport: httpx.BaseTransport | None = None):
        config.check()
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.Client(
            base_url=config.base_url.rstrip("/") + "/", headers=headers, timeout=config.timeout_s, transport=transport
        )
        self._cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self._structured = config.structured

    def close(self) -> None:
        self._http.close()

    def _payload(self, messages: list[dict], schema: dict | None, structured: str | None = None) -> dict:
        structured = structured or self._structured
        payload = {
            "model": self.config.model or "default",
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self.config.seed is not None:
            payload["seed"] = self.config.seed
        if schema is not None and structured == "json_schema":
            payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "reled_plans", "schema": schema}}
        elif schema is not None and structured == "json_object":
            payload["response_format"] = {"type": "json_object", "schema": schema}
        return payload

    def keep(self, result: ChatResult) -> None:
        """Store an answer in the response cache. The caller decides: an answer that does not parse is never
        kept, so a resumed run asks again instead of reading the same garbage back."""
        if self._cache is not None and result.cache_key is not None:
            self._cache.put(result.cache_key, {"text": result.text, "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens})

    def _post(self, payload: dict, deadline: float) -> httpx.Response:
        """One POST, read in full, streamed so that the overall deadline is checked between chunks; each
        connect and read waits at most what is left of it."""
        left = deadline - time.perf_counter()
        if left <= 0:
            raise httpx.TimeoutException("deadline passed before the request was sent")
        timeout = httpx.Timeout(min(self.config.timeout_s, left))
        chunks = []
        with self._http.stream("POST", "chat/completions", json=payload, timeout=timeout) as response:
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.perf_counter() > deadline:
                    raise httpx.ReadTimeout("the answer was still arriving at the deadline")
            return httpx.Response(response.status_code, headers=response.headers, content=b"".join(chunks))

    def complete(self, messages: list[dict], schema: dict | None = None) -> ChatResult:
        """One chat completion; raises a typed LLMError after retries are exhausted or past `deadline_s`."""
        payload = self._payload(messages, schema)
        # Keyed by the request as configured, so a server's structured-output downgrade does not change the key.
        cache_key = self._payload(messages, schema, self.config.structured)
        if self._cache is not None:
            hit = self._cache.get(cache_key)
            if hit is not None:
                return ChatResult(hit["text"], 0.0, hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0), cached=True, attempts=0)
        start = time.perf_counter()
        deadline = start + self.config.deadline_s
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._post(payload, deadline)
            except httpx.TimeoutException as err:
                error: LLMError = LLMTimeout(f"LLM at {self.config.base_url} did not answer within {self.config.timeout_s:g} s per read "
                                             f"and {self.config.deadline_s:g} s in all ({type(err).__name__})")
                retry_after = None
            except httpx.TransportError as err:
                error = LLMUnavailable(f"cannot reach LLM at {self.config.base_url}: {type(err).__name__}: {err}")
                retry_after = None
            else:
                if response.status_code == 200:
                    try:
                        text, usage = _parse_completion(response)
                    except LLMBadResponse as err:
                        err.latency_s = time.perf_counter() - start
                        raise
                    return ChatResult(text, time.perf_counter() - start, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), attempts=attempt,
                                      cache_key=cache_key if self._cache is not None else None)
                unsupported = response.status_code in (400, 422, 500) and "response_format" in response.text
                if unsupported and "response_format" in payload:
                    # The server does not support this structured-output form: json_schema -> json_object
                    # (llama.cpp's form) -> none, remembered for later requests; not counted as a retry.
                    self._structured = _DOWNGRADE[self._structured]
                    payload = self._payload(messages, schema)
                    attempt -= 1
                    continue
                error = LLMHTTPError(response.status_code, f"LLM at {self.config.base_url} answered HTTP {response.status_code}: {response.text[:200]}")
                if response.status_code != 429 and response.status_code < 500:
                    error.latency_s = time.perf_counter() - start
                    raise error  # a client error will not fix itself
                retry_after = _retry_after(response)
            delay = min(max(self.config.backoff_s * 2 ** (attempt - 1), retry_after or 0.0), self.config.max_backoff_s)
            if attempt > self.config.max_retries or time.perf_counter() + delay >= deadline:
                error.latency_s = time.perf_counter() - start  # time lost to the failure, for the stats
                raise error
            time.sleep(delay)

    def complete_many(self, requests: list[tuple[list[dict], dict | None]]) -> list[ChatResult | LLMError]:
        """Send several requests concurrently (one per agent subset); each result is a ChatResult or the LLMError."""

        def one(req):
            try:
                return self.complete(*req)
            except LLMError as err:
                return err

        if len(requests) <= 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(requests))) as pool:
            return list(pool.map(one, requests))


def _parse_completion(response: httpx.Response) -> tuple[str, dict]:
    try:
        body = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise LLMBadResponse(f"LLM answered HTTP 200 without a chat completion ({type(err).__name__}): {response.text[:200]!r}") from None
    if not isinstance(content, str):
        raise LLMBadResponse(f"LLM completion content is {type(content).__name__}, not text")
    content = sanitize_text(content)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return content, {k: int(v) for k, v in usage.items() if isinstance(v, (int, float))}


def sanitize_text(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (JSON's \\ud800 escapes allow one) would make every later
    request that carries it in its history fail to encode, and the cache and checkpoint that store it."""
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
