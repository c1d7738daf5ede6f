"""A long-running HTTP server for one checkpoint: JSON in, JSON out (standard library only).

    python -m recbole_llm4sbr.server --checkpoint=saved/X.pth [--host=127.0.0.1] [--port=8000]

Endpoints:

* ``POST /recommend`` with ``{"items": ["50", "172", "133"], "k": 10}`` (items oldest first: a list
  of tokens, or one string separated by spaces or commas; ``k`` optional, default 10) answers
  ``{"items": [{"item", "title", "score"}, ...], "session", "prefix_key", "intents", "intent_source",
  "model", "semantic_at_inference"}``, best item first; titles come from ``<ds>.itemtext``.
* ``GET /health`` answers ``{"status": "ok", "model", "semantic_at_inference", "items"}``.

A bad request is a 4xx whose JSON ``{"error", "status"}`` names the fix and quotes at most
``serve.ECHO_CHARS`` characters of the input: 400 (not JSON, not an object, unknown keys, bad
``items`` or ``k``, unknown item tokens, a new session with online stage 1 off), 404, 405, 411 (no
``Content-Length``), 413 (a body over ``--max_body`` bytes, refused unread), 415 (not JSON), 503
(``--max_connections`` connections already open). Anything else is a 500 whose traceback goes to
the server's stderr, not to the client.

One ``serve.ServedModel`` answers every request (``ThreadingHTTPServer``: a thread per connection,
HTTP/1.1 keep-alive); it is thread-safe and its answers are those of a lone ``serve.recommend``
call. Online stage 1 keeps the intents of the last ``--online_cache`` new sessions.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from recbole_llm4sbr.errors import LLM4SBRError, run_command
from recbole_llm4sbr.serve import ECHO_CHARS, ONLINE_CACHE, ServedModel, clip, load

#: the largest request body read (bytes): a session is a few hundred bytes
MAX_BODY = 64 << 10
#: connections open at once (each holds a thread); more get 503
MAX_CONNECTIONS = 64
#: seconds a connection may stay silent (an idle keep-alive connection is closed after it)
TIMEOUT_S = 30.0
#: the keys a /recommend body may have
REQUEST_KEYS = ("items", "k")


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message with the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


def parse_request(body: bytes) -> Tuple[Any, Any]:
    """``(items, k)`` of a ``/recommend`` body; RequestError (400) naming the fix otherwise."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 text. Fix: send JSON such as "
                                "{\"items\": [\"50\", \"172\"], \"k\": 10}.") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError; [[[[... nests too deep
        where = f" (line {err.lineno}, column {err.colno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise RequestError(400, f"the body is not valid JSON{where}: {clip(body.decode('utf-8', 'replace'))}. "
                                "Fix: send {\"items\": [\"50\", \"172\"], \"k\": 10}.") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(data).__name__} {clip(data)}. "
                                "Fix: send {\"items\": [\"50\", \"172\"], \"k\": 10}.")
    unknown = [key for key in data if key not in REQUEST_KEYS]
    if unknown:
        raise RequestError(400, f"unknown keys {clip(unknown)} in the body. Fix: use only "
                                f"{', '.join(REQUEST_KEYS)} (e.g. {{\"items\": [\"50\", \"172\"], \"k\": 10}}).")
    if "items" not in data:
        raise RequestError(400, "the body has no \"items\". Fix: send the session's item tokens, oldest first: "
                                "{\"items\": [\"50\", \"172\"], \"k\": 10}.")
    return data["items"], data.get("k", 10)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share one connection
    server_version = "recbole-llm4sbr"
    timeout = TIMEOUT_S
    # headers and body leave in two writes: without TCP_NODELAY the body waits for the client's
    # delayed ACK (~40 ms a request)
    disable_nagle_algorithm = True
    server: "RecommendServer"

    # -- plumbing ------------------------------------------------------------------------------
    def _send(self, status: int, payload: Dict[str, Any], close: bool = False) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        message = " ".join(str(message).split())
        limit = 4 * ECHO_CHARS + 300  # the messages' own words plus their clipped quotes, at most
        self._send(status, {"error": message[:limit], "status": status}, close=close)
        if close and self.command == "POST":
            self._linger()

    def _linger(self, limit: int = 1 << 20, seconds: float = 1.0) -> None:
        """Before closing on a body left unread: end our side and discard what the client still sends
        (at most ``limit`` bytes, ``seconds`` of silence), so that it reads our answer instead of a reset."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(seconds)
            total = 0
            while total < limit:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                total += len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise RequestError(411, "chunked bodies are not read. Fix: send a Content-Length header.")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "the request has no Content-Length. Fix: send the JSON body with its length.")
        try:
            size = int(length)
        except ValueError:
            raise RequestError(400, f"Content-Length {clip(length)} is not a number. Fix: send the body's "
                                    "length in bytes.") from None
        if size < 0:
            raise RequestError(400, f"Content-Length {size} is negative. Fix: send the body's length in bytes.")
        if size > self.server.max_body:
            raise RequestError(413, f"the body is {size} bytes, over the limit of {self.server.max_body}. Fix: send "
                                    "one session per request (its last items are the ones the model reads).")
        content_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", "text/json", ""):
            raise RequestError(415, f"Content-Type {clip(content_type)} is not JSON. Fix: send "
                                    "Content-Type: application/json.")
        return self.rfile.read(size)

    # -- endpoints -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/health":
            served = self.server.served
            self._send(200, {"status": "ok", "model": served.model_name,
                             "semantic_at_inference": bool(served.semantic),
                             "items": int(served.dataset.item_num - 1)})
        elif self.path.split("?")[0] == "/recommend":
            self._error(405, "/recommend takes POST. Fix: POST {\"items\": [\"50\", \"172\"], \"k\": 10}.")
        else:
            self._not_found()

    def do_POST(self) -> None:
        if self.path.split("?")[0] != "/recommend":
            # the body is left unread: the connection cannot be reused
            return self._not_found() if self.path.split("?")[0] != "/health" else self._error(
                405, "/health takes GET. Fix: GET /health.", close=True)
        body = None
        try:
            body = self._read_body()
            items, k = parse_request(body)
            rec = self.server.served.recommend(items, k)
        except RequestError as err:
            # a body refused unread (411, 413, 415, a bad length): close rather than read the next
            # request from its bytes
            return self._error(err.status, str(err), close=body is None)
        except LLM4SBRError as err:  # ServeError, IntentError: bad items, k, ... (the message has the fix)
            return self._error(400, str(err))
        except Exception as err:  # a bug: the traceback stays here
            traceback.print_exc(file=sys.stderr)
            return self._error(500, f"internal error ({type(err).__name__}); the server's log has the traceback.")
        answer = {"items": rec.ranked(), "session": rec.session, "prefix_key": rec.prefix_key,
                  "intents": rec.intents, "intent_source": rec.intent_source,
                  "model": rec.model, "semantic_at_inference": rec.semantic_at_inference}
        self._send(200, answer)

    def _not_found(self) -> None:
        self._error(404, f"no endpoint {clip(self.path)}. Fix: POST /recommend or GET /health.", close=True)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own refusals (a request line too long, an unknown method): JSON too."""
        try:
            self._error(int(code), f"{message or HTTPStatus(code).phrase}. Fix: POST /recommend with a JSON "
                                   "body, or GET /health.", close=True)
        except OSError:
            pass


class RecommendServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` around one ``ServedModel``, with a bound on open connections."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: Tuple[str, int], served: ServedModel, max_body: int = MAX_BODY,
                 max_connections: int = MAX_CONNECTIONS, log_requests: bool = False):
        self.served = served
        self.max_body = int(max_body)
        self.log_requests = log_requests
        self._slots = threading.BoundedSemaphore(int(max_connections))
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"error": "too many open connections. Fix: retry later, or start the server with "
                                        "a larger --max_connections.", "status": 503}).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(served: ServedModel, host: str = "127.0.0.1", port: int = 8000, **options) -> RecommendServer:
    """A bound, not yet serving, server (``port=0``: a free one; ``server.url`` says which). Run it with
    ``serve_forever()`` (in a thread, for a test) and stop it with ``shutdown()`` + ``server_close()``."""
    if served.semantic:
        served.table()  # the intent table's index, read before the first request rather than in it
    return RecommendServer((host, int(port)), served, **options)


def _positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise LLM4SBRError(f"--{name}={clip(value)} is not an integer. Fix: give a whole number.") from None
    if number < (0 if name in ("port", "online_cache") else 1) or (name == "port" and number > 65535):
        raise LLM4SBRError(f"--{name}={number} is out of range. Fix: give a positive number"
                           f"{' up to 65535' if name == 'port' else ''}.")
    return number


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_llm4sbr.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a .pth saved by training")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", default="8000", help="port (default 8000; 0: a free one)")
    parser.add_argument("--data_path", default=None, help="folder holding the dataset (default: the checkpoint's)")
    parser.add_argument("--no_online", action="store_true",
                        help="never run stage 1 for a new session (semantic models answer 400 on new sessions)")
    parser.add_argument("--online_cache", default=str(ONLINE_CACHE),
                        help=f"new sessions whose online intents are kept, most recent (default {ONLINE_CACHE})")
    parser.add_argument("--max_body", default=str(MAX_BODY), help=f"largest request body in bytes (default {MAX_BODY})")
    parser.add_argument("--max_connections", default=str(MAX_CONNECTIONS),
                        help=f"connections open at once; more get 503 (default {MAX_CONNECTIONS})")
    parser.add_argument("--log_requests", action="store_true", help="one stderr line per request")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    port = _positive("port", args.port)
    served = load(args.checkpoint, args.data_path, online=not args.no_online,
                  online_cache=_positive("online_cache", args.online_cache))
    try:
        server = make_server(served, args.host, port, max_body=_positive("max_body", args.max_body),
                             max_connections=_positive("max_connections", args.max_connections),
                             log_requests=args.log_requests)
    except OSError as err:
        raise LLM4SBRError(f"cannot listen on {args.host}:{port} ({err.strerror or err}). Fix: pick another "
                           "--port (or --port=0 for a free one) or --host.") from None

    def stop(signum, frame):  # SIGTERM ends it as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"serving {served.model_name} ({served.path.name}) on {server.url}: POST /recommend, GET /health "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()
    return 0


def main(argv=None) -> int:
    """The server's command line; a user error is one stderr line and exit code 2 (``errors.run_command``)."""
    return run_command(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
