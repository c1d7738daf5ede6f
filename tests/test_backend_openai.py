"""OpenAIBackend against a stdlib fake /v1/chat/completions server on 127.0.0.1 (ephemeral port)."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recbole_llm4sbr.intent.backends.openai_backend import OpenAIBackend, OpenAIBackendError


class FakeServer:
    """Answers ``echo: <prompt>``; ``behaviour(prompt, n)`` (n = 1 for the first request of that
    prompt) may return ``(status, body_bytes, delay_s, headers)`` to override."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.counts = {}
        self.requests = []
        self.behaviour = None
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                req = json.loads(raw)
                prompt = req["messages"][0]["content"]
                with state.lock:
                    state.in_flight += 1
                    state.max_in_flight = max(state.max_in_flight, state.in_flight)
                    n = state.counts[prompt] = state.counts.get(prompt, 0) + 1
                    state.requests.append({"path": self.path, "body": req,
                                           "auth": self.headers.get("Authorization")})
                try:
                    status, body, delay, headers = 200, None, 0.0, {}
                    if state.behaviour is not None:
                        out = state.behaviour(prompt, n)
                        if out is not None:
                            status, body, delay, headers = out
                    if body is None:
                        body = json.dumps({"choices": [{"index": 0, "message": {
                            "role": "assistant", "content": f" echo: {prompt} "}}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
                    if delay:
                        time.sleep(delay)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with state.lock:
                        state.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = FakeServer()
    yield srv
    srv.close()


def make_backend(server, **over):
    settings = dict(intent_model="tiny", openai_base_url=server.base_url, openai_concurrency=4,
                    openai_timeout=5, openai_max_retries=3, openai_backoff=0.01,
                    openai_api_key_env="LLM4SBR_TEST_KEY", intent_max_tokens=16,
                    intent_temperature=0.0, intent_top_p=1.0, intent_seed=7)
    settings.update(over)
    return OpenAIBackend(settings)


def test_success_request_shape_and_key(server, monkeypatch):
    monkeypatch.setenv("LLM4SBR_TEST_KEY", "sk-test")
    b = make_backend(server)
    try:
        assert b.generate(["a", "b"]) == ["echo: a", "echo: b"]
        assert b.generate([]) == []
    finally:
        b.close()
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "tiny" and body["max_tokens"] == 16 and body["temperature"] == 0.0
    assert body["top_p"] == 1.0 and body["seed"] == 7 and body["messages"][0]["role"] == "user"
    assert b.stats["completion_tokens"] == 4
    d = b.describe()
    assert d["model"] == "tiny" and d["base_url"] == server.base_url
    assert d["sampling"]["max_tokens"] == 16 and d["sampling"]["strategy"] == "greedy"
    json.dumps(d)


def test_no_key_no_header(server, monkeypatch):
    monkeypatch.delenv("LLM4SBR_TEST_KEY", raising=False)
    b = make_backend(server, openai_model="served-name")
    try:
        assert b.generate(["x"]) == ["echo: x"]
    finally:
        b.close()
    assert server.requests[0]["auth"] is None
    assert server.requests[0]["body"]["model"] == "served-name"


def test_order_under_concurrency(server):
    prompts = [f"p{i}" for i in range(20)]
    # later prompts answer first
    server.behaviour = lambda p, n: (200, None, 0.002 * (20 - int(p[1:])), {})
    b = make_backend(server, openai_concurrency=8)
    try:
        assert b.generate(prompts) == [f"echo: {p}" for p in prompts]
    finally:
        b.close()


def test_bounded_concurrency(server):
    server.behaviour = lambda p, n: (200, None, 0.03, {})
    b = make_backend(server, openai_concurrency=3)
    try:
        out = b.generate([f"q{i}" for i in range(18)])
    finally:
        b.close()
    assert len(out) == 18
    assert 2 <= server.max_in_flight <= 3


def test_timeout_then_retry_success(server):
    server.behaviour = lambda p, n: (200, None, 1.0, {}) if n == 1 else None
    b = make_backend(server, openai_timeout=0.25)
    try:
        t0 = time.monotonic()
        assert b.generate(["slow"]) == ["echo: slow"]
        assert time.monotonic() - t0 < 1.0
    finally:
        b.close()
    assert server.counts["slow"] == 2
    assert b.stats["retries"] == 1


def test_500_then_success(server):
    server.behaviour = lambda p, n: (500, b'{"error": "boom"}', 0, {}) if n <= 2 else None
    b = make_backend(server)
    try:
        assert b.generate(["x", "y"]) == ["echo: x", "echo: y"]
    finally:
        b.close()
    assert server.counts == {"x": 3, "y": 3}


def test_429_retry_after_then_success(server):
    server.behaviour = lambda p, n: (429, b'{"error": "slow down"}', 0, {"Retry-After": "0.05"}) \
        if n == 1 else None
    b = make_backend(server)
    try:
        assert b.generate(["r"]) == ["echo: r"]
    finally:
        b.close()
    assert server.counts["r"] == 2


def test_400_not_retried(server):
    server.behaviour = lambda p, n: (400, b'{"error": "bad model"}', 0, {})
    b = make_backend(server)
    try:
        with pytest.raises(OpenAIBackendError, match=r"HTTP 400.*not retried.*bad model"):
            b.generate(["z"])
    finally:
        b.close()
    assert server.counts["z"] == 1


def test_5xx_exhausts_retries(server):
    server.behaviour = lambda p, n: (503, b"overloaded", 0, {})
    b = make_backend(server, openai_max_retries=2)
    try:
        with pytest.raises(OpenAIBackendError, match=r"after 3 tries.*HTTP 503"):
            b.generate(["o"])
    finally:
        b.close()
    assert server.counts["o"] == 3


def test_malformed_json_error(server):
    server.behaviour = lambda p, n: (200, b"this is {not json", 0, {})
    b = make_backend(server, openai_max_retries=1)
    try:
        with pytest.raises(OpenAIBackendError, match=r"malformed JSON.*this is \{not json"):
            b.generate(["m"])
    finally:
        b.close()
    assert server.counts["m"] == 2


def test_wrong_json_shape_then_ok(server):
    server.behaviour = lambda p, n: (200, b'{"choices": []}', 0, {}) if n == 1 else None
    b = make_backend(server)
    try:
        assert b.generate(["s"]) == ["echo: s"]
    finally:
        b.close()


def test_connection_refused_retries_then_fails():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    b = OpenAIBackend(dict(intent_model="m", openai_base_url=f"http://127.0.0.1:{port}/v1",
                           openai_max_retries=2, openai_backoff=0.01, openai_timeout=2))
    try:
        with pytest.raises(OpenAIBackendError, match=r"after 3 tries.*connection error"):
            b.generate(["c"])
    finally:
        b.close()


def test_bad_base_url():
    with pytest.raises(ValueError, match="openai_base_url"):
        OpenAIBackend(dict(intent_model="m", openai_base_url="127.0.0.1:8000"))
