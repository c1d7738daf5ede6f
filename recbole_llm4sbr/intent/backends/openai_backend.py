"""Stage-1 backend for any OpenAI-compatible ``/v1/chat/completions`` endpoint, on the stdlib only.

Works with ``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server``, llama.cpp's server,
TGI, Ollama's OpenAI API, or the OpenAI API itself. The server applies the chat template.

Settings read:

* ``openai_base_url`` (e.g. ``http://127.0.0.1:8000/v1``; ``/chat/completions`` is appended),
* ``openai_model`` (the served model name; default ``intent_model``),
* ``openai_api_key_env`` (name of the environment variable holding the key; optional: no header
  when the variable is unset or empty),
* ``openai_concurrency`` (requests in flight at most), ``openai_timeout`` (seconds, per request:
  connect and every socket read), ``openai_max_retries`` (retries after the first try),
  ``openai_backoff`` (first back-off in seconds, default 0.5; doubled each retry, plus up to as much
  random jitter, capped at ``openai_backoff_max``, default 30; a ``Retry-After`` header wins when
  larger),
* ``intent_max_tokens``, ``intent_temperature``, ``intent_top_p``, ``intent_seed``.

Retried: timeouts, connection errors, HTTP 429 and 5xx, and a 2xx whose body is not the expected
JSON. Not retried: any other 4xx (bad request, auth, unknown model...). Answers come back in the
prompts' order.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from .base import Backend
from ..errors import IntentError
from ..registry import SAMPLING_KEYS, register_backend

__all__ = ["OpenAIBackend", "OpenAIBackendError"]


class OpenAIBackendError(RuntimeError):
    """A request failed for good (non-retryable status, or retries exhausted)."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


def _snippet(body: bytes, n: int = 300) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= n else text[:n] + "..."


def _retry_after(headers) -> Optional[float]:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class OpenAIBackend(Backend):
    """``intent_backend: openai``."""

    name = "openai"

    def __init__(self, settings: Dict[str, Any]):
        super().__init__(settings)
        s = self.settings
        self.base_url = str(s.get("openai_base_url") or "http://127.0.0.1:8000/v1").rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise IntentError(f"openai_base_url={self.base_url!r}: expected http(s)://host[:port]/v1. "
                              "Fix: e.g. --openai_base_url=http://localhost:8000/v1")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = (parts.path.rstrip("/") or "") + "/chat/completions"
        self.model = s.get("openai_model") or s.get("intent_model")
        if not self.model:
            raise IntentError("openai backend: no model name. Fix: set openai_model (or intent_model) to the "
                              "served model name")
        self.model = str(self.model)
        self.api_key_env = s.get("openai_api_key_env") or None
        self.concurrency = max(1, int(s.get("openai_concurrency", 8) or 1))
        self.timeout = float(s.get("openai_timeout", 60) or 60)
        self.max_retries = max(0, int(s.get("openai_max_retries", 4) or 0))
        self.backoff = float(s.get("openai_backoff", 0.5))
        self.backoff_max = float(s.get("openai_backoff_max", 30.0))
        self.max_tokens = int(s.get("intent_max_tokens", 32))
        self.temperature = float(s.get("intent_temperature", 0.0) or 0.0)
        top_p = s.get("intent_top_p", 1.0)
        self.top_p = 1.0 if top_p is None else float(top_p)
        seed = s.get("intent_seed", None)
        self.seed = None if seed is None else int(seed)
        self._local = threading.local()
        self._conns: List[http.client.HTTPConnection] = []
        self._conns_lock = threading.Lock()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._rng = random.Random()
        #: counters since construction: requests sent, retries, failures (for logs and tests)
        self.stats = {"requests": 0, "retries": 0, "completion_tokens": 0, "prompt_tokens": 0}
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    @classmethod
    def describe_settings(cls, settings: Mapping[str, Any]) -> Dict[str, Any]:
        return cls(dict(settings)).describe()  # the constructor opens no connection

    def describe(self) -> Dict[str, Any]:
        sampling: Dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                                    "top_p": self.top_p, "seed": self.seed}
        sampling["strategy"] = "greedy" if self.temperature == 0 else "sample"
        return {"backend": self.name, "model": self.model, "base_url": self.base_url,
                "sampling": sampling}

    def _headers(self) -> Dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(str(self.api_key_env), "")
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    def _payload(self, prompt: str) -> bytes:
        body: Dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "n": 1,
            "stream": False,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return json.dumps(body).encode("utf-8")

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._scheme == "https":
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
            self._local.conn = None

    def _request_once(self, payload: bytes, headers: Dict[str, str]) -> str:
        """One POST; returns the answer, raises _Retryable or _Fatal."""
        where = f"{self._scheme}://{self._host}:{self._port}{self._path}"
        try:
            try:
                reused = getattr(self._local, "conn", None) is not None
                conn = self._connection()
                conn.request("POST", self._path, body=payload, headers=headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # the server closed an idle keep-alive connection: reconnect once, at no cost
                self._drop_connection()
                conn = self._connection()
                conn.request("POST", self._path, body=payload, headers=headers)
                resp = conn.getresponse()
            status = resp.status
            body = resp.read()
            resp_headers = resp.headers
        except (socket.timeout, TimeoutError) as err:
            self._drop_connection()
            raise _Retryable(f"timed out after {self.timeout:g} s ({where}): {err}") from err
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            self._drop_connection()
            raise _Retryable(f"connection error ({where}): {type(err).__name__}: {err}") from err
        if resp_headers.get("Connection", "").lower() == "close":
            self._drop_connection()
        with self._stats_lock:
            self.stats["requests"] += 1
        if status == 429 or 500 <= status < 600:
            raise _Retryable(f"HTTP {status} from {where}: {_snippet(body)}", _retry_after(resp_headers))
        if not 200 <= status < 300:
            raise _Fatal(f"HTTP {status} from {where} (not retried): {_snippet(body)}")
        try:
            data = json.loads(body.decode("utf-8"))
            message = data["choices"][0]["message"]
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise _Retryable(f"malformed JSON response from {where} ({type(err).__name__}: {err}); "
                             f"expected {{'choices': [{{'message': {{'content': ...}}}}]}}, "
                             f"got: {_snippet(body)}") from err
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            with self._stats_lock:
                self.stats["completion_tokens"] += int(usage.get("completion_tokens") or 0)
                self.stats["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
        return (content or "").strip()

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        base = min(self.backoff_max, self.backoff * (2 ** attempt))
        delay = min(self.backoff_max, base + self._rng.uniform(0, base))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _complete(self, prompt: str) -> str:
        payload = self._payload(prompt)
        headers = self._headers()
        last: Optional[_Retryable] = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._stats_lock:
                    self.stats["retries"] += 1
                time.sleep(self._delay(attempt - 1, last.retry_after if last else None))
            try:
                return self._request_once(payload, headers)
            except _Fatal as err:
                raise OpenAIBackendError(str(err)) from None
            except _Retryable as err:
                last = err
        raise OpenAIBackendError(f"request failed after {self.max_retries + 1} tries "
                                 f"(openai_max_retries={self.max_retries}): {last}") from None

    def generate(self, prompts: Sequence[str]) -> List[str]:
        prompts = list(prompts)
        if not prompts:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                            thread_name_prefix="llm4sbr-openai")
        futures = [self._pool.submit(self._complete, p) for p in prompts]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.close()
                except Exception:
                    pass
            self._conns.clear()


register_backend("openai", f"{__name__}:OpenAIBackend",
                 keys=("intent_model", "openai_model", "openai_base_url") + SAMPLING_KEYS,
                 key_prefixes=("openai_",), reuse_order=1)
