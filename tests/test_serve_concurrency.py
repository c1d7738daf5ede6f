"""Serving under concurrency: many threads on one loaded model, and the HTTP server
(recbole_llm4sbr.server) on 127.0.0.1 with concurrent clients, answer exactly what lone sequential
calls answer; bad inputs (Python API, HTTP, CLI) are refused with the fix and a bounded echo."""
import copy
import http.client
import json
import os
import pickle
import random
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recbole_llm4sbr import serve
from recbole_llm4sbr.serve import ServedModel, ServeError, recommend
from recbole_llm4sbr.server import make_server
from test_serve import session_prefixes, train_both

ROOT = Path(__file__).resolve().parent.parent
THREADS = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    yield train_both(tmp_path_factory.mktemp("serve_mt"))
    serve.clear_cache()


def workload(root, n=240, seed=0):
    """In-table prefixes (the dataset's) and unseen ones (shuffled item tokens), mixed, with repeats."""
    known = [p for part in ("train", "test") for p in session_prefixes_of(root, part)]
    items = [line.split("\t")[0] for line in (root / "data" / "tiny" / "tiny.itemtext").read_text().splitlines()[1:]]
    rng = random.Random(seed)
    seen = {tuple(p) for p in known}
    unseen = []
    while len(unseen) < 40:
        s = rng.sample(items, rng.randint(2, 6))
        if tuple(s) not in seen:
            unseen.append(s)
            seen.add(tuple(s))
    calls = [(rng.choice(known), rng.randint(1, 12)) for _ in range(n // 2)]
    calls += [(rng.choice(unseen), rng.randint(1, 12)) for _ in range(n - n // 2)]
    rng.shuffle(calls)
    return calls


def session_prefixes_of(root, part):
    lines = (root / "data" / "tiny" / f"tiny.{part}.inter").read_text().splitlines()[1:]
    return [line.split("\t")[1].split() for line in lines]


def same(a, b):
    """Two answers are the same: items, their order, titles, intents; scores up to float rounding."""
    assert a.items == b.items and a.titles == b.titles and a.session == b.session
    assert a.intent_source == b.intent_source and a.intents == b.intents and a.prefix_key == b.prefix_key
    assert np.allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", ["free", "semantic"])
def test_threads_on_one_model_give_the_sequential_answers(trained, which):
    root, free, semantic = trained
    ckpt = free if which == "free" else semantic
    calls = workload(root)
    lone = serve.load(ckpt)
    expected = [lone.recommend(s, k) for s, k in calls]
    if which == "semantic":
        assert {e.intent_source for e in expected} == {"table", "online"}
    # a second instance whose online cache is too small to hold the unseen sessions: online stage 1
    # itself runs concurrently with the table path, not only cache hits
    shared = ServedModel(ckpt, online_cache=4)
    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(lambda call: shared.recommend(*call), calls))
    for g, e in zip(got, expected):
        same(g, e)
    if which == "semantic":
        assert len(shared.online()._cache) <= 4  # bounded


def test_the_model_holds_no_per_call_state(trained):
    """A call's state is per thread: another thread on the same model sees none, and the model
    still deep-copies and pickles (its copies have no state either)."""
    root, _, semantic = trained
    served = serve.load(semantic)
    model = served.model
    batch = served.interaction(served.session_ids(session_prefixes(root)[0])[1], 1)
    seen = {}
    with model.call_state(batch) as mine:
        worker = threading.Thread(target=lambda: seen.update(state=model._state))
        worker.start()
        worker.join()
        assert model._state is mine and seen["state"] is None
        assert copy.deepcopy(model)._state is None
        assert pickle.loads(pickle.dumps(model))._state is None
    assert model._state is None


def test_python_api_refuses_bad_input_with_a_bounded_echo(trained):
    _, free, _ = trained
    served = serve.load(free)
    for bad in (1.7, True, "1.7", None, "ten"):
        with pytest.raises(ServeError, match="k must be a positive integer"):
            served.recommend(["101"], bad)
        with pytest.raises(ServeError, match="k must be a positive integer"):
            recommend(free, ["101"], k=bad)
    with pytest.raises(ServeError, match="decode"):
        recommend(free, b"101 104", k=3)
    for bad in (101, {"101": 1}, [1.5], [["101"]], [b"101"], [True]):
        with pytest.raises(ServeError, match="Fix"):
            served.recommend(bad, 3)
    # a string is a session of space/comma separated tokens, never a sequence of characters
    assert served.recommend("101 104", 3).session == ["101", "104"] == served.recommend("101,104", 3).session
    assert served.recommend([101, 104], 3).session == ["101", "104"]
    huge = ["x" * 10_000_000]
    for bad in (huge, ["y"] * 1_000_000, "z" * 10_000_000):
        with pytest.raises(ServeError) as err:
            served.recommend(bad, 3)
        assert len(str(err.value)) < 400 and "Fix" in str(err.value)
    with pytest.raises(ServeError) as err:
        served.recommend(["101"], "9" * 10_000)
    assert len(str(err.value)) < 400


# -- HTTP -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http_server(trained):
    _, _, semantic = trained
    served = ServedModel(semantic, online_cache=8)
    server = make_server(served, "127.0.0.1", 0, max_body=4096)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def post(conn, payload, raw=None, headers=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    conn.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_http_concurrent_clients_get_the_sequential_answers(trained, http_server):
    root, _, semantic = trained
    calls = workload(root, n=160, seed=1)
    lone = serve.load(semantic)
    expected = [lone.recommend(s, k) for s, k in calls]
    port = http_server.server_address[1]
    chunks = [calls[i::8] for i in range(8)]

    def client(part):  # one keep-alive connection per client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            return [post(conn, {"items": s, "k": k}) for s, k in part]
        finally:
            conn.close()

    with ThreadPoolExecutor(len(chunks)) as pool:
        answers = list(pool.map(client, chunks))
    by_call = {}
    for i, part in enumerate(answers):
        for j, answer in enumerate(part):
            by_call[i + 8 * j] = answer
    assert len(by_call) == len(calls)
    for i, e in enumerate(expected):
        status, got = by_call[i]
        assert status == 200, got
        assert [r["item"] for r in got["items"]] == e.items
        assert [r["title"] for r in got["items"]] == e.titles and all(e.titles)
        assert np.allclose([r["score"] for r in got["items"]], e.scores, rtol=1e-6, atol=1e-6)
        assert got["session"] == e.session and got["intent_source"] == e.intent_source
        assert got["intents"] == json.loads(json.dumps(e.intents))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    conn.close()


@pytest.mark.parametrize("payload, raw, status, needle", [
    (None, b"{not json", 400, "not valid JSON"),
    (None, b"[" * 3000, 400, "not valid JSON"),
    (None, b"\xff\xfe", 400, "not UTF-8"),
    ([1, 2], None, 400, "must be a JSON object"),
    ({"k": 3}, None, 400, "no \"items\""),
    ({"items": ["101"], "top": 3}, None, 400, "unknown keys"),
    ({"items": ["101"], "k": 1.7}, None, 400, "k must be a positive integer"),
    ({"items": ["101"], "k": True}, None, 400, "k must be a positive integer"),
    ({"items": ["101"], "k": 0}, None, 400, "at least 1"),
    ({"items": 101}, None, 400, "items must be a list"),
    ({"items": []}, None, 400, "empty"),
    ({"items": ["x" * 3000]}, None, 400, "unknown item tokens"),
    ({"items": ["101"] * 2000}, None, 413, "over the limit"),
])
def test_http_bad_requests_are_4xx_with_the_fix_and_a_bounded_echo(http_server, payload, raw, status, needle):
    conn = http.client.HTTPConnection("127.0.0.1", http_server.server_address[1], timeout=30)
    try:
        got_status, body = post(conn, payload, raw=raw)
    finally:
        conn.close()
    assert got_status == status and body["status"] == status
    assert needle in body["error"] and "Fix" in body["error"]
    assert len(body["error"]) < 400


def raw_request(port, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_http_refuses_a_huge_body_unread_and_other_requests(http_server):
    port = http_server.server_address[1]
    # 10 MB announced, none sent: refused from the header alone, connection closed
    answer = raw_request(port, b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 10000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"Fix" in answer
    answer = raw_request(port, b"POST /recommend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411")
    answer = raw_request(port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404") and len(answer) < 1000
    answer = raw_request(port, b"PUT /recommend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 501") and b"Fix" in answer
    answer = raw_request(port, b"GET /recommend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405")


def test_http_connections_over_the_limit_get_503(http_server):
    server = make_server(http_server.served, "127.0.0.1", 0, max_connections=1)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    first = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        assert post(first, {"items": ["101"], "k": 2})[0] == 200  # kept open: it holds the one slot
        answer = raw_request(server.server_address[1], b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503") and b"max_connections" in answer
        assert post(first, {"items": ["101"], "k": 2})[0] == 200  # the open one is still served
    finally:
        first.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- CLI --------------------------------------------------------------------------------------------
def test_serving_cli_exits_quietly_when_its_reader_goes_away(trained):
    root, free, _ = trained
    items = [f"--items={' '.join(p)}" for p in session_prefixes(root)[:20]]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "recbole_llm4sbr.serve", f"--checkpoint={free}", *items],
                            cwd=root, stdout=write, stderr=subprocess.PIPE, env=env)
    os.close(write)
    os.close(read)  # the reader is gone before the first line is written
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == serve.CLOSED_PIPE, err.decode()[-2000:]
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_server_cli_serves_until_sigterm(trained):
    root, free, _ = trained
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "recbole_llm4sbr.server", f"--checkpoint={free}", "--port=0"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stderr.readline()  # "serving ... on http://127.0.0.1:<port>: ..."
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()[-2000:] if proc.poll() is not None else line
        port = int(line.split("http://127.0.0.1:")[1].split(":")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        status, body = post(conn, {"items": "101 104", "k": 3})
        conn.close()
        assert status == 200 and [r["item"] for r in body["items"]] == recommend(free, "101 104", k=3).items
        assert body["items"][0]["title"].startswith("Movie number")
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_server_cli_refuses_bad_options_in_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "recbole_llm4sbr.server", f"--checkpoint={tmp_path / 'no.pth'}"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
