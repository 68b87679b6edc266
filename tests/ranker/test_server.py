"""``mixlm serve`` over real HTTP: a real uvicorn server on a free loopback port with the tiny bundle
and a store holding its records. ``mixlm serve`` runs as a subprocess where signals, exit codes and
logs matter; ``ServerThread`` runs the app in this process where a test controls the loading."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mixlm.cli import main
from mixlm.encoders import ItemEncoder
from mixlm.ranker.client import RankerClient
from mixlm.ranker.http_client import RankerHTTPClient, RequestRejected, ServerBusyError
from mixlm.ranker.serve_cli import ServerThread
from mixlm.ranker.server import create_app
from mixlm.ranker.service import bundle_client_factory
from mixlm.schemas import EmbeddingRecord, ItemEvent, UnavailableError
from mixlm.schemas.errors import EXIT_USAGE
from mixlm.store import EmbeddingStore, StoreNotFoundError
from tests.factories import make_record
from tests.ranker.test_client import ITEMS

TOKEN = "tok-3f9c2a7d51e8b640-do-not-log"
SERVE = [sys.executable, "-c", "from mixlm.cli import main; main()", "serve"]
ALL_IDS = list(ITEMS)


@pytest.fixture(scope="module")
def store_path(tiny_bundle, tmp_path_factory):
    """The tiny bundle's records for ITEMS, job-11 deleted (as in test_client)."""
    path = tmp_path_factory.mktemp("serve-store") / "store"
    encoder = ItemEncoder.from_bundle(tiny_bundle)
    store = EmbeddingStore.open(path, create=True)
    events = [ItemEvent(item_id, "upsert", 1, title, text) for item_id, (title, text) in ITEMS.items()]
    store.put_many(encoder.encode_events(events))
    store.put_many([EmbeddingRecord.tombstone("job-11", 2, encoder.encoder_id)])
    return path


@pytest.fixture(scope="module")
def local(tiny_bundle, store_path):
    """The in-process client the server's answers are held to."""
    return RankerClient.open(tiny_bundle, store_path)


class Reply:
    def __init__(self, status: int, headers: dict, body):
        self.status, self.headers, self.body = status, headers, body


def call(url: str, method: str, path: str, body=None, *, token: str | None = None, raw: bytes | None = None,
         timeout: float = 60.0) -> Reply:
    """One request on its own connection; any status comes back (no exceptions for 4xx/5xx)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    is_json = "json" in (response.getheader("Content-Type") or "")
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                 json.loads(payload) if is_json else payload.decode())


def metric(url: str, name: str, token: str | None = None, **labels) -> float:
    text = call(url, "GET", "/metrics", token=token).body
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Served:
    """A ``mixlm serve`` subprocess on a free port (``--port 0``; the URL is read from its log)."""

    def __init__(self, args: list, folder, token: str | None = None):
        self.out, self.err = folder / "serve.stdout", folder / "serve.stderr"
        self.token = token
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([*SERVE, *map(str, args), "--port", "0"], stdout=out, stderr=err,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = wait_for(self._url, "the server's address", timeout=180)

    def _url(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"mixlm serve exited {self.proc.returncode}:\n{self.logs()}")
        found = re.search(r"serving on (http://\S+)", self.err.read_text())
        return found and found.group(1)

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_for(lambda: self.call("GET", "/readyz").status == 200, "/readyz 200", timeout)

    def call(self, method: str, path: str, body=None, **kwargs) -> Reply:
        kwargs.setdefault("token", self.token)
        return call(self.url, method, path, body, **kwargs)

    def metric(self, name: str, **labels) -> float:
        return metric(self.url, name, self.token, **labels)

    def logs(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server(tiny_bundle, store_path, tmp_path_factory):
    """``mixlm serve`` with a token, a cap of 20 candidates and a 50 ms batching window."""
    folder = tmp_path_factory.mktemp("serve")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    served = Served(["--bundle", tiny_bundle, "--store", store_path, "--auth-token-file", token_file,
                     "--max-candidates", 20, "--batch-wait-ms", 50], folder, TOKEN)
    served.token_file = token_file
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()


def assert_same_ranking(body: dict, expected, atol: float = 1e-4) -> None:
    """The server's ``results`` hold the in-process result's items and values, sorted by score."""
    results = body["results"]
    assert all(set(r) == {"item_id", "title", "score", "p_yes", "log_odds"} for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    by_id = {item.item_id: item for item in expected.items}
    assert [r["item_id"] for r in results] and {r["item_id"] for r in results} == set(by_id)
    for r in results:
        item = by_id[r["item_id"]]
        np.testing.assert_allclose([r["score"], r["p_yes"], r["log_odds"]], [item.score, item.p_yes, item.log_odds],
                                   atol=atol)
        assert r["title"] == item.title
    assert body["missing"] == expected.missing


def test_healthz_readyz_and_metrics(server, local):
    health = server.call("GET", "/healthz", token=None)
    assert health.status == 200 and health.body == {"status": "alive"}
    ready = server.call("GET", "/readyz")
    assert ready.status == 200 and ready.body == {"ready": True, "encoder_id": local.ranker.encoder_id}
    page = server.call("GET", "/metrics")
    assert page.status == 200 and page.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(page.body)}
    assert {"mixlm_request_duration_seconds", "mixlm_requests", "mixlm_errors", "mixlm_items_scored",
            "mixlm_store_misses", "mixlm_batch_size_requests", "mixlm_queue_depth", "mixlm_queue_limit",
            "mixlm_ready"} <= names
    assert server.metric("mixlm_request_duration_seconds_count", endpoint="readyz") >= 1
    assert server.metric("mixlm_queue_limit") == 64 and server.metric("mixlm_ready") == 1


def test_rerank_equals_the_in_process_client(server, local):
    ids = ["job-3", "ghost", "job-1", "job-7", "job-11", "job-1", "job-9"]
    misses_before = server.metric("mixlm_store_misses_total")
    scored_before = server.metric("mixlm_items_scored_total")
    reply = server.call("POST", "/v1/rerank", {"query": "python kafka", "item_ids": ids, "top_n": 3})
    assert reply.status == 200 and set(reply.body) == {"results", "missing", "encoder_id"}
    assert reply.body["encoder_id"] == local.ranker.encoder_id
    expected = local.rank("python kafka", ids, top_k=3)
    assert_same_ranking(reply.body, expected)
    assert reply.body["missing"] == ["ghost", "job-11"]  # never stored, and deleted
    assert server.metric("mixlm_store_misses_total") == misses_before + 2
    assert server.metric("mixlm_items_scored_total") == scored_before + 4  # all found ids, not just the top 3

    bm25 = {"job-0": 1.0, "job-4": 9.0, "job-7": 3.0, "job-9": 2.0, "unused": 5.0}
    fused = server.call("POST", "/v1/rerank", {"query": "python", "item_ids": ["job-0", "job-4", "job-7", "job-9"],
                                               "first_stage_scores": bm25})
    assert fused.status == 200
    assert_same_ranking(fused.body, local.rank("python", ["job-0", "job-4", "job-7", "job-9"], first_stage_scores=bm25))


def test_score_answers_several_queries_in_one_call(server, local):
    requests = [{"query": "python", "item_ids": ["job-1", "job-2", "ghost"]},
                {"query": "a much longer query about kafka and beam", "item_ids": ALL_IDS, "top_n": 4},
                {"query": "nurse", "item_ids": []},
                {"query": "beam", "item_ids": ["job-5", "job-6"], "first_stage_scores": {"job-5": 0.5, "job-6": 2.0}}]
    reply = server.call("POST", "/v1/score", {"requests": requests})
    assert reply.status == 200 and set(reply.body) == {"results", "encoder_id"}
    assert len(reply.body["results"]) == len(requests)
    for request, body in zip(requests, reply.body["results"], strict=True):
        assert set(body) == {"results", "missing"}
        expected = local.rank(request["query"], request["item_ids"], request.get("top_n"),
                              request.get("first_stage_scores"))
        if expected.items:
            assert_same_ranking(body, expected)
        else:
            assert body == {"results": [], "missing": []}


BAD_REQUESTS = [
    ("/v1/rerank", b"{not json", 400, None),
    ("/v1/rerank", b"\xff\xfe", 400, None),
    ("/v1/rerank", b"[" * 100_000, 400, None),
    ("/v1/rerank", b'{"query": "q", "item_ids": [], "top_n": ' + b"7" * 5_000 + b"}", 400, None),
    ("/v1/rerank", [1, 2], 400, None),
    ("/v1/rerank", {"item_ids": ["job-1"]}, 400, "query"),
    ("/v1/rerank", {"query": 3, "item_ids": ["job-1"]}, 400, "query"),
    ("/v1/rerank", {"query": "   ", "item_ids": ["job-1"]}, 400, "query"),
    ("/v1/rerank", {"query": "q"}, 400, "item_ids"),
    ("/v1/rerank", {"query": "q", "item_ids": "job-1"}, 400, "item_ids"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1", 7]}, 400, "item_ids"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1"], "top_n": 0}, 400, "top_n"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1"], "top_n": "3"}, 400, "top_n"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1"], "top_n": True}, 400, "top_n"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1"], "first_stage_scores": {"job-2": 1.0}}, 400,
     "first_stage_scores"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1"], "first_stage_scores": {"job-1": "high"}}, 400,
     "first_stage_scores"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1"], "first_stage_scores": [1.0]}, 400, "first_stage_scores"),
    ("/v1/rerank", {"query": "q", "item_ids": ["job-1"], "top_k": 3}, 400, "top_k"),
    ("/v1/rerank", {"query": "q", "item_ids": [f"id-{n}" for n in range(21)]}, 413, "item_ids"),
    ("/v1/score", {}, 400, "requests"),
    ("/v1/score", {"requests": []}, 400, "requests"),
    ("/v1/score", {"requests": {"query": "q"}}, 400, "requests"),
    ("/v1/score", {"requests": [{"query": "q", "item_ids": []}, {"query": "q", "item_ids": 5}]}, 400,
     "requests[1].item_ids"),
    ("/v1/score", {"requests": [{"query": "q", "item_ids": []}, "q"]}, 400, "requests[1]"),
    ("/v1/score", {"requests": [{"query": "q", "item_ids": [f"id-{n}" for n in range(21)]}]}, 413,
     "requests[0].item_ids"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD_REQUESTS,
                         ids=[f"{p}-{s}-{f}" for p, _, s, f in BAD_REQUESTS])
def test_a_bad_request_is_answered_with_the_field_at_fault(server, path, body, status, field):
    raw = body if isinstance(body, bytes) else None
    reply = server.call("POST", path, None if raw else body, raw=raw)
    assert reply.status == status, reply.body
    assert set(reply.body) == {"error", "field"} and reply.body["field"] == field
    assert isinstance(reply.body["error"], str) and reply.body["error"]
    if raw is not None:
        assert "JSON" in reply.body["error"]


def test_duplicates_count_once_against_the_cap(server):
    ids = [f"job-{n % 10}" for n in range(25)] + [f"other-{n}" for n in range(10)]  # 20 distinct
    reply = server.call("POST", "/v1/rerank", {"query": "q", "item_ids": ids})
    assert reply.status == 200 and len(reply.body["results"]) == 10 and len(reply.body["missing"]) == 10


def test_every_endpoint_but_healthz_wants_the_token(server):
    body = {"query": "python", "item_ids": ["job-1"]}
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        for method, path, payload in (("POST", "/v1/rerank", body), ("POST", "/v1/score", {"requests": [body]}),
                                      ("GET", "/readyz", None), ("GET", "/metrics", None)):
            reply = server.call(method, path, payload, token=token)
            assert reply.status == 401, (token, path)
            assert reply.headers["www-authenticate"] == "Bearer" and reply.body["field"] is None
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", "/readyz", headers={"Authorization": f"Basic {TOKEN}"})  # the right secret, wrong scheme
    assert conn.getresponse().status == 401
    conn.close()
    assert server.call("GET", "/healthz", token=None).status == 200
    assert server.call("POST", "/v1/rerank", body).status == 200
    unknown, wrong_method = server.call("GET", "/v2/nothing"), server.call("GET", "/v1/rerank")
    assert (unknown.status, wrong_method.status) == (404, 405) and unknown.body["field"] is None
    assert server.metric("mixlm_errors_total", endpoint="rerank", status="401", reason="unauthorized") >= 4
    with pytest.raises(RequestRejected, match="401") as caught:
        RankerHTTPClient(server.url, token="wrong").rerank("python", ["job-1"])
    assert caught.value.status == 401


def test_concurrent_requests_share_forward_passes_and_equal_in_process_scores(server, local):
    queries = [f"query {n} about python and kafka" for n in range(16)]
    expected = {q: local.rank(q, ALL_IDS, top_k=5) for q in queries}
    batches_before = server.metric("mixlm_batch_size_requests_count")
    start = threading.Barrier(len(queries))

    def rerank(query):
        start.wait()
        return server.call("POST", "/v1/rerank", {"query": query, "item_ids": ALL_IDS, "top_n": 5})

    with ThreadPoolExecutor(len(queries)) as pool:
        replies = dict(zip(queries, pool.map(rerank, queries), strict=True))
    for query, reply in replies.items():
        assert reply.status == 200, reply.body
        assert_same_ranking(reply.body, expected[query])
    batches = server.metric("mixlm_batch_size_requests_count") - batches_before
    assert 1 <= batches < len(queries)  # some forward passes served several requests
    assert server.metric("mixlm_queue_depth") == 0


def _send_and_hang_up(url: str, body: dict, token: str | None, wait_s: float = 0.0) -> socket.socket:
    """A raw POST /v1/rerank whose caller hangs up after ``wait_s`` (0: at once) without reading."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    head = (f"POST /v1/rerank HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n")
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(head.encode() + data)
    if wait_s:
        time.sleep(wait_s)
    return sock


def test_a_client_that_disconnects_does_not_disturb_the_others(server, local):
    queries = [f"kafka question {n}" for n in range(8)]
    expected = {q: local.rank(q, ALL_IDS) for q in queries}

    def rerank(query):
        return server.call("POST", "/v1/rerank", {"query": query, "item_ids": ALL_IDS})

    with ThreadPoolExecutor(len(queries)) as pool:
        pending = [pool.submit(rerank, q) for q in queries]
        for _ in range(4):
            _send_and_hang_up(server.url, {"query": "leaving", "item_ids": ALL_IDS}, TOKEN, 0.01).close()
        replies = [future.result() for future in pending]
    for query, reply in zip(queries, replies, strict=True):
        assert reply.status == 200
        assert_same_ranking(reply.body, expected[query])
    wait_for(lambda: server.metric("mixlm_queue_depth") == 0, "the queue to empty")
    assert server.call("GET", "/healthz").status == 200


def test_rank_cli_through_the_server_prints_the_local_ranking(server, tiny_bundle, store_path):
    base = ["rank", "--query", "kafka and beam", "--items", "job-1,job-2,job-5,ghost,job-8", "-o", "json"]
    remote = CliRunner().invoke(main, [*base, "--server", server.url, "--auth-token-file", str(server.token_file)])
    here = CliRunner().invoke(main, [*base, "--bundle", str(tiny_bundle), "--store", str(store_path)])
    assert remote.exit_code == 0 and here.exit_code == 0, remote.output + here.output
    remote_data, local_data = json.loads(remote.stdout), json.loads(here.stdout)
    assert [i["item_id"] for i in remote_data["items"]] == [i["item_id"] for i in local_data["items"]]
    for a, b in zip(remote_data["items"], local_data["items"], strict=True):
        assert a["rank"] == b["rank"] and a["p_yes"] == pytest.approx(b["p_yes"], abs=2e-6)
        assert a["log_odds"] == pytest.approx(b["log_odds"], abs=2e-4)
    assert remote_data["missing"] == local_data["missing"] == ["ghost"]
    assert [i["title"] for i in remote_data["items"]] == [i["title"] for i in local_data["items"]]
    assert {i["item_id"]: i["title"] for i in local_data["items"]}["job-5"] == "Title 5"
    table = CliRunner().invoke(main, ["rank", "--server", server.url, "--auth-token-file", str(server.token_file),
                                      "--query", "kafka", "--items", "job-1,ghost", "--top-k", "1"])
    assert table.exit_code == 0 and "job-1" in table.stdout and "missing from the store: ghost" in table.stdout
    both = CliRunner().invoke(main, [*base, "--server", server.url, "--bundle", str(tiny_bundle)])
    assert both.exit_code == EXIT_USAGE and "exactly one of --bundle and --server" in both.stderr
    over = CliRunner().invoke(main, ["rank", "--server", server.url, "--auth-token-file", str(server.token_file),
                                     "--query", "q", "--items", ",".join(f"id-{n}" for n in range(21))])
    assert over.exit_code == 1 and "413" in over.stderr and "cap of 20" in over.stderr
    assert "Traceback" not in over.output


def test_http_client(server, local):
    client = RankerHTTPClient(server.url, token=TOKEN, timeout=30)
    result = client.rerank("python kafka", ["job-2", "ghost", "job-4"], top_n=1)
    expected = local.rank("python kafka", ["job-2", "ghost", "job-4"], top_k=1)
    assert [i.item_id for i in result.items] == [i.item_id for i in expected.items] and result.missing == ["ghost"]
    assert result.items[0].score == pytest.approx(expected.items[0].score, abs=1e-4)
    assert result.encoder_id == local.ranker.encoder_id
    many = client.score([("python", ["job-1", "job-2"]), ("beam", ["job-3"])])
    assert [len(r.items) for r in many] == [2, 1]
    assert client.ready() == (True, local.ranker.encoder_id)
    with pytest.raises(RequestRejected, match="query") as caught:
        client.rerank(" ", ["job-1"])
    assert caught.value.status == 400 and caught.value.field == "query"


def test_the_server_is_unreachable_in_one_line():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(UnavailableError, match="unreachable"):
        RankerHTTPClient(url).rerank("q", ["job-1"])
    result = CliRunner().invoke(main, ["rank", "--server", url, "--query", "q", "--items", "job-1"])
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(f"mixlm: error: ranking server {url} is unreachable")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_the_token_never_appears_in_metrics_or_logs(server):
    """Run after the tests above, which sent the token (right and wrong) many times."""
    assert TOKEN not in server.call("GET", "/metrics").body
    assert TOKEN[:12] not in server.call("GET", "/metrics").body
    logs = server.logs()
    assert '"POST /v1/rerank HTTP/1.1" 200' in logs and '"GET /readyz HTTP/1.1" 401' in logs  # the access log
    assert TOKEN not in logs and TOKEN[:12] not in logs


def test_full_queue_disconnects_and_a_graceful_sigterm(tiny_bundle, store_path, tmp_path, local):
    """``--max-queue 2`` and a 4 s batching window keep requests in flight long enough to watch."""
    served = Served(["--bundle", tiny_bundle, "--store", store_path, "--max-queue", 2, "--batch-wait-ms", 4000],
                    tmp_path)
    try:
        served.wait_ready()
        body = {"query": "python", "item_ids": ALL_IDS}
        # A caller that hangs up while its request waits: its slot is freed, its request skipped.
        leaving = _send_and_hang_up(served.url, body, None)
        wait_for(lambda: served.metric("mixlm_queue_depth") == 1, "the first request to queue")
        leaving.close()
        wait_for(lambda: served.metric("mixlm_errors_total", reason="client_disconnected") == 1
                 and served.metric("mixlm_queue_depth") == 0, "the disconnect to free its slot")
        # Two requests fill the queue; the next is refused with 429 and Retry-After.
        with ThreadPoolExecutor(2) as pool:
            in_flight = [pool.submit(served.call, "POST", "/v1/rerank", {**body, "query": f"python {n}"})
                         for n in range(2)]
            wait_for(lambda: served.metric("mixlm_queue_depth") == 2, "two requests in flight")
            full = served.call("POST", "/v1/rerank", body)
            assert full.status == 429 and full.headers["retry-after"] == "1" and "queue is full" in full.body["error"]
            with pytest.raises(ServerBusyError) as busy:
                RankerHTTPClient(served.url).rerank("python", ["job-1"])
            assert busy.value.status == 429 and busy.value.retry_after == 1.0
            too_many = served.call("POST", "/v1/score", {"requests": [body] * 3})
            assert too_many.status == 413 and too_many.body["field"] == "requests"
            assert served.metric("mixlm_errors_total", status="429", reason="queue_full") == 2
            # SIGTERM while both are in flight: they complete, then the process exits 0.
            assert served.metric("mixlm_queue_depth") == 2
            served.proc.send_signal(signal.SIGTERM)
            replies = [future.result(timeout=60) for future in in_flight]
        for n, reply in enumerate(replies):
            assert reply.status == 200
            assert_same_ranking(reply.body, local.rank(f"python {n}", ALL_IDS))
        assert served.proc.wait(timeout=60) == 0
        logs = served.logs()
        assert "Shutting down" in logs and "Finished server process" in logs and "Traceback" not in logs
        with pytest.raises(OSError):
            call(served.url, "GET", "/healthz", timeout=5)
    finally:
        served.stop()


def test_readyz_says_why_until_the_bundle_s_encoder_is_in_the_store(tiny_bundle, tmp_path):
    path = tmp_path / "other"
    other = EmbeddingStore.open(path, create=True)
    other.put_many([make_record("x", 1, encoder_id="enc-somebody-else", dim=64)])
    other.promote("enc-somebody-else")
    app = create_app(bundle_client_factory(tiny_bundle, path, max_candidates=100))
    with ServerThread(app) as running:
        reply = wait_for(lambda: (r := call(running.url, "GET", "/readyz")).body["reason"] != "loading the models"
                         and r, "the models to load")
        encoder_id = app.state.service.encoder_id
        assert reply.status == 503 and reply.body["ready"] is False
        assert encoder_id in reply.body["reason"] and "enc-somebody-else" in reply.body["reason"]
        assert "backfill" in reply.body["reason"]
        assert call(running.url, "GET", "/healthz").status == 200
        assert metric(running.url, "mixlm_ready") == 0
        # A backfill of the bundle's encoder makes it ready, without a restart.
        encoder = ItemEncoder.from_bundle(tiny_bundle)
        other.put_many(encoder.encode_events([ItemEvent("job-0", "upsert", 1, *ITEMS["job-0"])]))
        ready = call(running.url, "GET", "/readyz")
        assert ready.status == 200 and ready.body == {"ready": True, "encoder_id": encoder_id}
        scored = call(running.url, "POST", "/v1/rerank", {"query": "python", "item_ids": ["job-0", "x"]})
        assert scored.status == 200 and [r["item_id"] for r in scored.body["results"]] == ["job-0"]
        assert scored.body["missing"] == ["x"]


def test_readyz_while_loading_and_after_a_failed_load(local):
    gate = threading.Event()
    loading = create_app(lambda: gate.wait(60) and local)
    with ServerThread(loading) as running:
        waiting = call(running.url, "GET", "/readyz")
        assert waiting.status == 503 and waiting.body == {"ready": False, "reason": "loading the models"}
        early = call(running.url, "POST", "/v1/rerank", {"query": "python", "item_ids": ["job-1"]})
        assert early.status == 503 and "loading" in early.body["error"] and early.headers["retry-after"] == "1"
        assert call(running.url, "GET", "/healthz").status == 200
        gate.set()
        wait_for(lambda: call(running.url, "GET", "/readyz").status == 200, "/readyz 200")
        assert call(running.url, "POST", "/v1/rerank", {"query": "python", "item_ids": ["job-1"]}).status == 200

    def broken():
        raise StoreNotFoundError("store directory /nowhere does not exist")

    with ServerThread(create_app(broken)) as running:
        reply = wait_for(lambda: (r := call(running.url, "GET", "/readyz")).body["reason"] != "loading the models"
                         and r, "the load to fail")
        assert reply.status == 503 and reply.body["reason"] == "loading failed: store directory /nowhere does not exist"
        rerank = call(running.url, "POST", "/v1/rerank", {"query": "python", "item_ids": ["job-1"]})
        assert rerank.status == 503 and "store directory /nowhere" in rerank.body["error"]
        assert call(running.url, "GET", "/healthz").status == 200


def test_serve_refuses_bad_settings_in_one_line(tiny_bundle, store_path, tmp_path):
    base = ["serve", "--bundle", str(tiny_bundle), "--store", str(store_path), "--port", "0"]
    cases = [([*base, "--auth-token-file", str(tmp_path / "absent")], 2, "does not exist")]
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    cases.append(([*base, "--auth-token-file", str(empty)], 1, "is empty"))
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    cases.append(([*base, "--auth-token-file", str(spaced)], 1, "without spaces"))
    cases.append((["serve", "--bundle", str(tiny_bundle), "--store", str(tmp_path / "no-store")], 3, "does not exist"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases.append(([*base[:-1], str(port)], 5, "cannot listen on 127.0.0.1"))
        for args, code, message in cases:
            result = CliRunner().invoke(main, args)
            assert result.exit_code == code, (args, result.output)
            assert result.stderr.startswith("mixlm: error: ") and message in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
