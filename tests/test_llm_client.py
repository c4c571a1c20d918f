"""The OpenAI-compatible client and the expert service against a real local HTTP server."""

import dataclasses
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from llm.client import ChatClient, LLMBadResponse, LLMConfig, LLMHTTPError, LLMTimeout, LLMUnavailable
from llm.service import ExpertConfig, ExpertService

GOOD_PLAN = "```python\nif agent_id == 0:\n    move_to_by_shortest_path(2)\nmove_to_by_shortest_time(get_destination())\n```"


def _completion(content, usage=(120, 30)):
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                       "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}).encode()


class FakeLLM:
    """An OpenAI-style /v1/chat/completions server on 127.0.0.1 answering from a script of replies."""

    def __init__(self):
        self.script = []  # each: (status, body bytes, headers, delay s, s between body bytes); the last one repeats
        self.requests = []
        self.in_flight = self.most_in_flight = 0  # requests being answered at once
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                owner.requests.append((self.path, json.loads(body)))
                status, payload, headers, delay, trickle = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                with lock:
                    owner.in_flight += 1
                    owner.most_in_flight = max(owner.most_in_flight, owner.in_flight)
                time.sleep(delay)
                with lock:
                    owner.in_flight -= 1
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    if not trickle:
                        self.wfile.write(payload)
                    for k in range(len(payload) if trickle else 0):  # a server that sends its answer byte by byte
                        self.wfile.write(payload[k : k + 1])
                        self.wfile.flush()
                        time.sleep(trickle)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, content=None, status=200, body=None, headers=None, delay=0.0, trickle=0.0):
        self.script.append((status, body if body is not None else _completion(content), headers or {}, delay, trickle))
        return self

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm_server():
    server = FakeLLM()
    yield server
    server.close()


def _config(url, **kw):
    return LLMConfig(base_url=url, model="fake", timeout_s=kw.pop("timeout_s", 2.0), backoff_s=0.01, max_retries=kw.pop("max_retries", 2), **kw)


def _service(network, url, **kw):
    return ExpertService(network, np.array([0, 3]), np.array([3, 0]), config=ExpertConfig(backend="llm", llm=_config(url, **kw)))


def test_success_compiles_plans_and_records_usage(line_network, llm_server):
    llm_server.reply(GOOD_PLAN)
    svc = _service(line_network, llm_server.url)
    (out,) = svc.plan([(0, 1)])
    np.testing.assert_array_equal(np.asarray(out.compiled.tensors.target)[:, :2], [[2, 3], [0, 0]])
    assert svc.stats.execution_rate == 1.0 and svc.stats.n_fallbacks == 0
    assert svc.stats.prompt_tokens == 120 and svc.stats.completion_tokens == 30 and svc.stats.latency_s[0] > 0
    path, payload = llm_server.requests[0]
    assert path == "/v1/chat/completions"
    assert payload["messages"][0]["role"] == "system" and "move_to_by_shortest_time" in payload["messages"][0]["content"]
    assert payload["response_format"]["type"] == "json_schema"


def test_invalid_plan_falls_back_and_the_reason_is_fed_back(line_network, llm_server):
    llm_server.reply("```python\nimport os\nmove_to_by_shortest_time(1)\n```").reply(GOOD_PLAN)
    svc = _service(line_network, llm_server.url)
    (out,) = svc.plan([(0, 1)])
    assert svc.stats.fallbacks["invalid_plan"] == 2 and svc.stats.execution_rate == 0.0
    # Fallback: live shortest time straight to the destination.
    np.testing.assert_array_equal(np.asarray(out.compiled.tensors.target)[:, 0], [3, 0])
    np.testing.assert_array_equal(np.asarray(out.compiled.tensors.mode)[:, 0], [1, 1])
    svc.plan([(0, 1)])
    last_user = llm_server.requests[1][1]["messages"][-1]["content"]
    assert "Rejected plans" in last_user and "imports are not allowed" in last_user
    assert svc.stats.plans_executed == 2


@pytest.mark.parametrize(
    "reply,error,kind",
    [
        (dict(body=b"this is not json"), LLMBadResponse, "llm:LLMBadResponse"),
        (dict(body=json.dumps({"choices": []}).encode()), LLMBadResponse, "llm:LLMBadResponse"),
        (dict(status=500, body=b"boom"), LLMHTTPError, "llm:LLMHTTPError"),
        (dict(status=401, body=b"bad key"), LLMHTTPError, "llm:LLMHTTPError"),
    ],
)
def test_server_errors_are_typed_and_counted(line_network, llm_server, reply, error, kind):
    llm_server.reply(**reply)
    client = ChatClient(_config(llm_server.url))
    with pytest.raises(error):
        client.complete([{"role": "user", "content": "hi"}])
    n_client = len(llm_server.requests)
    assert n_client == (3 if reply.get("status") == 500 else 1)  # 5xx retried max_retries times, 4xx never
    svc = _service(line_network, llm_server.url)
    (out,) = svc.plan([(0, 1)])
    assert svc.stats.fallbacks[kind] == 2
    assert np.asarray(out.compiled.tensors.length).tolist() == [1, 1]


def test_429_is_retried_then_succeeds(llm_server):
    llm_server.reply(status=429, body=b"slow down", headers={"Retry-After": "0"}).reply("ok")
    result = ChatClient(_config(llm_server.url)).complete([{"role": "user", "content": "hi"}])
    assert result.text == "ok" and result.attempts == 2 and len(llm_server.requests) == 2


def test_timeout_and_dead_server(line_network, llm_server):
    llm_server.reply(GOOD_PLAN, delay=1.0)
    with pytest.raises(LLMTimeout):
        ChatClient(_config(llm_server.url, timeout_s=0.2, max_retries=0)).complete([{"role": "user", "content": "hi"}])
    svc = _service(line_network, llm_server.url, timeout_s=0.2, max_retries=0)
    svc.plan([(0,), (1,)])
    assert svc.stats.fallbacks["llm:LLMTimeout"] == 2

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LLMUnavailable):
        ChatClient(_config(dead, max_retries=1)).complete([{"role": "user", "content": "hi"}])
    svc = _service(line_network, dead, max_retries=0)
    (out,) = svc.plan([(0, 1)])
    assert svc.stats.fallbacks["llm:LLMUnavailable"] == 2 and out.compiled.tensors.target.shape[0] == 2


def test_structured_output_downgrade_cache_and_concurrency(tmp_path, llm_server):
    rejected = b"response_format.type: input should be text or json_object"
    llm_server.reply(status=500, body=rejected).reply(status=400, body=rejected).reply("plan A").reply("plan B")
    client = ChatClient(_config(llm_server.url, cache_dir=str(tmp_path)))
    msgs = [{"role": "user", "content": "one"}]
    first = client.complete(msgs, schema={"type": "object"})
    client.keep(first)  # the caller keeps answers that parsed (the expert service does)
    formats = [req[1].get("response_format", {}).get("type") for req in llm_server.requests]
    assert first.text == "plan A" and formats == ["json_schema", "json_object", None] and first.attempts == 1
    again = client.complete(msgs, schema={"type": "object"})
    assert again.cached and again.text == "plan A" and len(llm_server.requests) == 3
    results = client.complete_many([([{"role": "user", "content": "two"}], None), ([{"role": "user", "content": "three"}], None)])
    assert sorted(r.text for r in results) == ["plan B", "plan B"] and len(llm_server.requests) == 5
    for r in results:
        client.keep(r)
    # A fresh client (a rerun) reproduces the run from the cache without the server.
    llm_server.close()
    rerun = ChatClient(_config(llm_server.url, cache_dir=str(tmp_path)))
    assert rerun.complete(msgs, schema={"type": "object"}).text == "plan A"


def test_missing_endpoint_is_a_clear_error():
    with pytest.raises(Exception, match="RELED_LLM_BASE_URL"):
        ChatClient(LLMConfig(base_url=""))


def test_retry_after_and_backoff_set_the_waits_between_attempts(llm_server, monkeypatch):
    """Waits: the larger of the doubling backoff and the server's Retry-After seconds, capped at max_backoff_s;
    a Retry-After that is not a number of seconds (an HTTP date) leaves the backoff alone."""
    from llm import client as client_module

    waits = []
    monkeypatch.setattr(client_module, "time", SimpleNamespace(perf_counter=time.perf_counter, sleep=waits.append))
    (llm_server.reply(status=429, body=b"slow down", headers={"Retry-After": "7"})
               .reply(status=503, body=b"busy")
               .reply(status=429, body=b"slow down", headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})
               .reply(status=503, body=b"busy", headers={"Retry-After": "100"})
               .reply("ok"))
    cfg = LLMConfig(base_url=llm_server.url, model="fake", timeout_s=2.0, backoff_s=0.5, max_backoff_s=30.0, max_retries=4)
    result = ChatClient(cfg).complete([{"role": "user", "content": "hi"}])
    assert result.text == "ok" and result.attempts == 5 and len(llm_server.requests) == 5
    assert waits == [7.0, 1.0, 2.0, 30.0]  # Retry-After 7 > 0.5; backoff 1; backoff 2 (date ignored); Retry-After 100 capped
    # Retries exhausted: the last error is raised after max_retries waits, with no wait after the last attempt.
    waits.clear()
    llm_server.script.clear()
    llm_server.reply(status=503, body=b"busy")
    with pytest.raises(LLMHTTPError, match="503"):
        ChatClient(dataclasses.replace(cfg, max_retries=2)).complete([{"role": "user", "content": "hi"}])
    assert waits == [0.5, 1.0]


def test_bad_completions_say_what_was_wrong(llm_server):
    client = ChatClient(_config(llm_server.url, max_retries=0))
    ask = lambda: client.complete([{"role": "user", "content": "hi"}])  # noqa: E731
    long_garbage = "x" * 300
    for body, message in [
        (b"this is not json", "LLM answered HTTP 200 without a chat completion (JSONDecodeError): 'this is not json'"),
        (json.dumps({"choices": []}).encode(), "LLM answered HTTP 200 without a chat completion (IndexError): '{\"choices\": []}'"),
        (long_garbage.encode(), f"LLM answered HTTP 200 without a chat completion (JSONDecodeError): '{'x' * 200}'"),  # the first 200 characters
        (json.dumps({"choices": [{"message": {"content": 5}}]}).encode(), "LLM completion content is int, not text"),
    ]:
        llm_server.script.clear()
        llm_server.reply(body=body)
        with pytest.raises(LLMBadResponse) as err:
            ask()
        assert str(err.value) == message
    # A completion without usage counts no tokens.
    llm_server.script.clear()
    llm_server.reply(body=json.dumps({"choices": [{"message": {"content": "plan"}}]}).encode())
    result = ask()
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("plan", 0, 0)


def test_requests_carry_the_configured_model_sampling_and_output_format(llm_server):
    """The exact JSON body of each structured-output form; a missing model name is sent as "default"."""
    schema = {"type": "object", "properties": {"plans": {"type": "array"}}}
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    llm_server.reply("ok")
    cfg = LLMConfig(base_url=llm_server.url, model="fake", temperature=0.7, max_tokens=99, seed=5, timeout_s=2.0)
    for structured, extra in [
        ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "reled_plans", "schema": schema}}}),
        ("json_object", {"response_format": {"type": "json_object", "schema": schema}}),
        ("none", {}),
    ]:
        ChatClient(dataclasses.replace(cfg, structured=structured)).complete(msgs, schema=schema)
        want = {"model": "fake", "messages": msgs, "temperature": 0.7, "max_tokens": 99, "seed": 5, **extra}
        assert llm_server.requests[-1][1] == want, structured
    ChatClient(dataclasses.replace(cfg, model="", seed=None)).complete(msgs)  # no schema: no response_format
    assert llm_server.requests[-1][1] == {"model": "default", "messages": msgs, "temperature": 0.7, "max_tokens": 99}


def test_the_cache_answers_only_the_same_request_and_says_so(tmp_path, llm_server):
    """A hit returns the stored text and token counts with no latency and no attempt; other messages or another
    schema are different requests and go to the server."""
    from llm.client import ChatResult

    llm_server.reply(body=_completion("first", usage=(11, 7))).reply(body=_completion("second", usage=(3, 2)))
    client = ChatClient(_config(llm_server.url, cache_dir=str(tmp_path)))
    msgs, schema = [{"role": "user", "content": "one"}], {"type": "object"}
    fresh = client.complete(msgs, schema=schema)
    client.keep(fresh)
    assert (fresh.text, fresh.prompt_tokens, fresh.completion_tokens, fresh.cached, fresh.attempts) == ("first", 11, 7, False, 1)
    assert client.complete(msgs, schema=schema) == ChatResult("first", 0.0, 11, 7, cached=True, attempts=0)
    assert len(llm_server.requests) == 1
    other_messages = client.complete([{"role": "user", "content": "two"}], schema=schema)
    other_schema = client.complete(msgs, schema=None)
    assert not other_messages.cached and not other_schema.cached and len(llm_server.requests) == 3


def test_errors_carry_status_time_lost_and_what_happened(llm_server):
    """An HTTP error keeps its status code; every raised error carries the seconds spent on it (for the stats)."""
    for status, retries in [(401, 2), (503, 1)]:
        llm_server.script.clear()
        llm_server.reply(status=status, body=b"nope")
        start = time.perf_counter()
        with pytest.raises(LLMHTTPError) as err:
            ChatClient(_config(llm_server.url, max_retries=retries)).complete([{"role": "user", "content": "hi"}])
        assert err.value.status == status
        assert str(err.value) == f"LLM at {llm_server.url} answered HTTP {status}: nope"
        assert 0.0 < err.value.latency_s <= time.perf_counter() - start
    llm_server.script.clear()
    llm_server.reply("late", delay=1.0)
    with pytest.raises(LLMTimeout) as err:
        ChatClient(_config(llm_server.url, timeout_s=0.2, max_retries=0)).complete([{"role": "user", "content": "hi"}])
    assert str(err.value) == f"LLM at {llm_server.url} did not answer within 0.2 s per read and 120 s in all (ReadTimeout)"
    assert 0.2 <= err.value.latency_s < 1.0


def test_422_rejection_downgrades_and_an_old_cache_entry_without_token_counts_reads_as_zero(tmp_path, llm_server):
    from llm.cache import ResponseCache

    llm_server.reply(status=422, body=b"unknown field response_format").reply("ok")
    client = ChatClient(_config(llm_server.url, cache_dir=str(tmp_path)))
    assert client.complete([{"role": "user", "content": "a"}], schema={"type": "object"}).attempts == 1
    assert [req[1].get("response_format", {}).get("type") for req in llm_server.requests] == ["json_schema", "json_object"]
    assert [req[1]["messages"] for req in llm_server.requests] == [[{"role": "user", "content": "a"}]] * 2
    msgs = [{"role": "user", "content": "b"}]
    ResponseCache(tmp_path).put(client._payload(msgs, None, "json_schema"), {"text": "from an older run"})
    hit = client.complete(msgs)
    assert (hit.text, hit.prompt_tokens, hit.completion_tokens, hit.cached) == ("from an older run", 0, 0, True)


def test_latencies_are_the_time_spent_and_a_dead_server_is_named(llm_server):
    llm_server.reply("ok", delay=0.2)
    start = time.perf_counter()
    result = ChatClient(_config(llm_server.url)).complete([{"role": "user", "content": "hi"}])
    assert 0.2 <= result.latency_s <= time.perf_counter() - start
    llm_server.script.clear()
    llm_server.reply(body=b"not json", delay=0.2)
    start = time.perf_counter()
    with pytest.raises(LLMBadResponse) as err:
        ChatClient(_config(llm_server.url)).complete([{"role": "user", "content": "hi"}])
    assert 0.2 <= err.value.latency_s <= time.perf_counter() - start
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(LLMUnavailable) as err:
        ChatClient(_config(dead, max_retries=0)).complete([{"role": "user", "content": "hi"}])
    assert str(err.value).startswith(f"cannot reach LLM at {dead}: ConnectError: ")


def test_two_requests_are_sent_at_once(llm_server):
    llm_server.reply("ok", delay=0.5)
    results = ChatClient(_config(llm_server.url)).complete_many([([{"role": "user", "content": str(i)}], None) for i in range(2)])
    assert [r.text for r in results] == ["ok", "ok"] and llm_server.most_in_flight == 2


def test_a_timed_out_request_is_retried(llm_server):
    llm_server.reply("too late", delay=0.6).reply("ok")
    result = ChatClient(_config(llm_server.url, timeout_s=0.2, max_retries=1)).complete([{"role": "user", "content": "hi"}])
    assert (result.text, result.attempts) == ("ok", 2) and len(llm_server.requests) == 2


def test_an_answer_that_is_not_kept_is_not_cached(tmp_path, llm_server):
    llm_server.reply("garbage").reply("asked again")
    msgs = [{"role": "user", "content": "one"}]
    assert ChatClient(_config(llm_server.url, cache_dir=str(tmp_path))).complete(msgs).text == "garbage"
    rerun = ChatClient(_config(llm_server.url, cache_dir=str(tmp_path))).complete(msgs)
    assert rerun.text == "asked again" and not rerun.cached and len(llm_server.requests) == 2


def test_the_service_caches_only_answers_that_gave_a_plan(tmp_path, line_network, llm_server):
    llm_server.reply("no plan in this text").reply(GOOD_PLAN)
    for expected_requests in (1, 2):
        svc = _service(line_network, llm_server.url, cache_dir=str(tmp_path))
        svc.plan([(0,)])
        svc.close()
        assert len(llm_server.requests) == expected_requests  # the garbage was asked again, not read back
    svc = _service(line_network, llm_server.url, cache_dir=str(tmp_path))
    (out,) = svc.plan([(0,)])
    svc.close()
    assert len(llm_server.requests) == 2 and out.plans[0].executed and svc.stats.cached == 1


def test_a_request_ends_at_its_deadline_however_the_server_trickles_or_stalls(llm_server):
    """Connect, every read and the retries share one deadline: a server that sends a byte every 50 ms (a 10 s
    answer) or never answers costs about deadline_s, not timeout_s per read times the retries."""
    llm_server.reply("x" * 150, trickle=0.05)
    with pytest.raises(LLMTimeout) as err:
        ChatClient(_config(llm_server.url, timeout_s=5.0, deadline_s=1.0, max_retries=3)).complete([{"role": "user", "content": "hi"}])
    assert err.value.latency_s < 2.5 and "1 s in all" in str(err.value)
    llm_server.script.clear()
    llm_server.reply("late", delay=30.0)
    with pytest.raises(LLMTimeout) as err:
        ChatClient(_config(llm_server.url, timeout_s=5.0, deadline_s=1.0, max_retries=3)).complete([{"role": "user", "content": "hi"}])
    assert err.value.latency_s < 2.5 and len(llm_server.requests) == 2  # one attempt each: no retry after the deadline


def test_a_lone_surrogate_in_an_answer_is_replaced_and_later_requests_still_go_out(llm_server):
    body = b'{"choices": [{"message": {"content": "plan \\ud800 here"}}]}'
    llm_server.reply(body=body).reply("second")
    client = ChatClient(_config(llm_server.url))
    first = client.complete([{"role": "user", "content": "one"}])
    assert first.text == "plan ? here"
    second = client.complete([{"role": "user", "content": "one"}, {"role": "assistant", "content": first.text}, {"role": "user", "content": "two"}])
    assert second.text == "second"


def test_an_unreachable_endpoint_is_said_once_per_round_on_stderr(line_network, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    svc = _service(line_network, dead, max_retries=0)
    svc.plan([(0,), (1,)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reled-jax: warning: expert round 0: 2 of 2 requests failed (cannot reach LLM at")
