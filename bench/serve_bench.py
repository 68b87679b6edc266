"""``mixlm bench serve``: the ranking service under load on loopback, against in-process ranking.

The service runs as a subprocess (``mixlm serve --host 127.0.0.1 --port 0``), so its figures
include HTTP, JSON and the process boundary. Each point (N candidates, c client threads) fires
the same requests at the service through ``RankerHTTPClient`` and then through the in-process
``RankerClient``: ``rank`` directly at concurrency 1, a ``RequestBatcher`` with the server's
batching settings above it, so that both sides share forward passes alike. Every point is
bounded by a request count and by time.

In-process, as in the server, one thread at a time runs torch, never the main one: the items are
backfilled by ``mixlm backfill`` in a subprocess, the client is loaded and called on a thread of
its own, which ends before a ``RequestBatcher``'s worker takes over. On a CPU, a thread that has run
torch ops keeps an OpenMP team alive; while it lives, more OpenMP threads exist than cores, libgomp
stops spin-waiting, and torch on any other thread ran 1.7 to 1.9x slower on the project's 2-core
machine (the server, whose loader thread exits and whose main thread only runs the event loop,
never pays that, so the baseline must not either).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mixlm.bench.pipeline_bench import corpus_events, write_catalog
from mixlm.ranker.defaults import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS
from mixlm.schemas.beir import read_corpus
from mixlm.schemas.errors import InputError

MIXLM = (sys.executable, "-c", "from mixlm.cli import main; main(prog_name='mixlm')")  # the mixlm command
QUERY_POOL = 200  # corpus items after the candidates whose titles become queries
SERVER_START_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 900.0


def query_texts(titles: Sequence[str], texts: Sequence[str]) -> list[str]:
    """Distinct titles (query-like: "Sr Data Scientist"), else each text's first 12 words."""
    queries = list(dict.fromkeys(t.strip() for t in titles if t.strip()))
    if not queries:
        queries = list(dict.fromkeys(" ".join(t.split()[:12]) for t in texts if t.strip()))
    if not queries:
        raise InputError("the corpus has no titles or texts to make queries of")
    return queries


def run_serve_bench(bundle_dir: str, corpus: Path, *, sizes: Sequence[int] = (50, 250),
                    concurrency: Sequence[int] = (1, 4, 16), requests: int = 32, max_seconds: float = 120.0,
                    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict:
    """Backfill the first max(sizes) corpus items into a temporary store, then measure each point twice."""
    import torch

    from mixlm.ranker.http_client import RankerHTTPClient
    from mixlm.ranker.service import bundle_client_factory

    load_before = [round(x, 2) for x in os.getloadavg()]
    n_items = max(sizes)
    docs = list(read_corpus(corpus, n_items + QUERY_POOL))
    if len(docs) < n_items:
        raise InputError(f"{corpus} holds {len(docs)} items, fewer than the largest size {n_items}")
    others = docs[n_items:] or docs
    queries = query_texts([d.title for d in others], [d.text for d in others])
    max_candidates = max(1_000, n_items)
    rng = random.Random(seed)
    own_thread = OwnThread()
    with tempfile.TemporaryDirectory(prefix="mixlm-serve-bench-") as tmp:
        store_path = str(Path(tmp) / "store")
        log(f"backfilling {n_items} items of {corpus} into a temporary store (mixlm backfill, a subprocess)")
        backfill_subprocess(write_catalog(corpus_events(corpus, n_items), Path(tmp) / "items.jsonl"), bundle_dir,
                            store_path)
        item_ids = [d.doc_id for d in docs[:n_items]]
        # in-process torch runs on one thread at a time, never the main one (see the module's docstring)
        client = own_thread.call(bundle_client_factory(bundle_dir, store_path, max_candidates=max_candidates))
        torch_threads = own_thread.call(torch.get_num_threads)

        def local_rank(query: str, ids: list[str]):
            return own_thread.call(client.rank, query, ids)

        log("starting mixlm serve on a free loopback port")
        with ServeProcess(bundle_dir, store_path, max_candidates=max_candidates, batch_wait_ms=batch_wait_ms,
                          batch_size=batch_size, max_queue=max(64, 2 * max(concurrency))) as server:
            http = RankerHTTPClient(server.url, timeout=REQUEST_TIMEOUT_S)
            rows, score_diffs = [], []
            sides = [(_measure_service, (server, http)),
                     (_measure_in_process, (client, own_thread, batch_wait_ms, batch_size))]
            for n in sizes:
                # warm-up on both sides, and a check that both score alike
                remote = http.rerank(queries[0], item_ids[:n])
                local_scores = {s.item_id: s.score for s in local_rank(queries[0], item_ids[:n]).items}
                score_diffs.append(max(abs(s.score - local_scores[s.item_id]) for s in remote.items))
                for c in concurrency:
                    batch = [(rng.choice(queries), rng.sample(item_ids, n)) for _ in range(requests)]
                    if c == 1:  # request by request, alternating sides: drift on a shared machine hits both alike
                        before = server.batch_stats()
                        remote, local = _interleave(http.rerank, local_rank, batch, max_seconds)
                        point = [_row("service", n, c, remote, _mean_batch(before, server.batch_stats())),
                                 _row("in_process", n, c, local, 1.0)]
                    else:  # whole points, the side that goes first alternating
                        point = [measure(*args, n, c, batch, max_seconds)
                                 for measure, args in (sides if len(rows) % 4 == 0 else sides[::-1])]
                    for row in point:
                        rows.append(row)
                        log(_line(row))
    comparisons = compare(rows, sizes, concurrency)
    return {"benchmark": "serve",
            "server": "subprocess: mixlm serve --host 127.0.0.1 --port 0 (HTTP, JSON and the process boundary)",
            "client": "RankerHTTPClient (urllib), one thread per concurrent caller",
            "in_process": "RankerClient.rank on a thread of its own (not the main one) at concurrency 1, its "
                          "requests alternating with the service's; above it a RequestBatcher with the server's "
                          "settings (whole points, the side going first alternating)",
            "items_in_store": n_items, "distinct_queries": len(queries), "requests_per_point": requests,
            "max_seconds_per_point": max_seconds, "batch_wait_ms": batch_wait_ms, "batch_size": batch_size,
            "torch_threads": torch_threads, "ranker_dtype": str(client.ranker.dtype).removeprefix("torch."),
            "max_score_diff_service_vs_in_process": float(f"{max(score_diffs):.3g}"),
            "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "results": rows, "comparisons": comparisons, "goals": goals(comparisons)}


class OwnThread:
    """Calls run on one thread, not the caller's; ``end`` stops it (the next call starts a new one)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def call(self, fn: Callable, *args):
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="bench-in-process")
        return self._executor.submit(fn, *args).result()

    def end(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def backfill_subprocess(catalog: Path, bundle_dir: str, store_path: str) -> None:
    """``mixlm backfill`` of ``catalog`` into ``store_path``, in a subprocess (no Beam or torch work in this one)."""
    done = subprocess.run([*MIXLM, "backfill", "--input", str(catalog), "--bundle", str(bundle_dir),
                           "--store", str(store_path)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mixlm backfill exited {done.returncode}: {done.stderr.strip()[-2000:]}")


def _measure_service(server: ServeProcess, http, n: int, c: int, batch, max_seconds: float) -> dict:
    before = server.batch_stats()
    measured = _drive(http.rerank, batch, c, max_seconds)
    return _row("service", n, c, measured, _mean_batch(before, server.batch_stats()))


def _measure_in_process(client, own_thread: OwnThread, batch_wait_ms: float, batch_size: int, n: int, c: int,
                        batch, max_seconds: float) -> dict:
    """The same requests through a ``RequestBatcher`` set like the server's, from ``c`` threads."""
    from mixlm.ranker.client import RequestBatcher

    own_thread.end()  # the batcher's worker is then the only thread that runs torch (closing joins it)
    with RequestBatcher(client, max_wait_ms=batch_wait_ms, max_requests=batch_size) as batcher:
        measured = _drive(batcher.rank, batch, c, max_seconds)
    return _row("in_process", n, c, measured, float(np.mean(batcher.batch_sizes)))


def _interleave(first: Callable, second: Callable, batch: list[tuple[str, list[str]]], max_seconds: float):
    """Each request to both sides in turn (who goes first alternates), one at a time, until either side
    has spent ``max_seconds``; per side what ``_drive`` returns, the wall time being its requests' sum."""
    latencies: tuple[list[float], list[float]] = ([], [])
    errors: tuple[list[str], list[str]] = ([], [])
    walls = [0.0, 0.0]
    for index, request in enumerate(batch):
        if max(walls) >= max_seconds:
            break
        for side in (0, 1) if index % 2 == 0 else (1, 0):
            began = time.perf_counter()
            try:
                (first, second)[side](*request)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                errors[side].append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            else:
                latencies[side].append(time.perf_counter() - began)
            walls[side] += time.perf_counter() - began
    return [(latencies[side], errors[side], walls[side]) for side in (0, 1)]


def _drive(call: Callable, batch: list[tuple[str, list[str]]], concurrency: int,
           max_seconds: float) -> tuple[list[float], list[str], float]:
    """``concurrency`` threads take the next request until none is left or ``max_seconds`` have passed.

    Returns the latencies (s) of the requests answered, the errors, and the wall time (s).
    """
    lock = threading.Lock()
    position = iter(range(len(batch)))
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + max_seconds

    def worker() -> None:
        while True:
            with lock:
                index = next(position, None)
            if index is None or time.perf_counter() >= deadline:
                return
            began = time.perf_counter()
            try:
                call(*batch[index])
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                with lock:
                    errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            elapsed = time.perf_counter() - began
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, name=f"bench-caller-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def _row(side: str, n: int, concurrency: int, measured, mean_batch: float | None) -> dict:
    latencies, errors, wall = measured
    if not latencies:
        raise RuntimeError(f"{side} answered no request at N={n}, concurrency {concurrency}: "
                           f"{errors[0] if errors else 'none was sent in time'}")
    ms = np.array(latencies) * 1e3
    return {"side": side, "candidates": n, "concurrency": concurrency, "requests": len(latencies),
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "items_per_s": round(n * len(latencies) / wall, 1),
            "mean_batch": round(mean_batch, 2) if mean_batch is not None else None}


def _line(row: dict) -> str:
    return (f"  N={row['candidates']:<4} c={row['concurrency']:<3} {row['side']:<10} {row['requests']:>4} requests"
            f"  p50 {row['p50_ms']:>9} ms  p99 {row['p99_ms']:>9} ms  {row['items_per_s']:>8} items/s"
            f"  mean batch {row['mean_batch']}")


def compare(rows: list[dict], sizes: Sequence[int], concurrency: Sequence[int]) -> list[dict]:
    """Per N: service over in-process latency at the lowest concurrency; items/s highest over lowest concurrency."""
    at = {(r["side"], r["candidates"], r["concurrency"]): r for r in rows}
    low, high = min(concurrency), max(concurrency)
    out = []
    for n in sizes:
        service, local = at[("service", n, low)], at[("in_process", n, low)]
        out.append({
            "candidates": n, "low_concurrency": low, "high_concurrency": high,
            "service_over_in_process_p50": round(service["p50_ms"] / local["p50_ms"], 3),
            "service_over_in_process_p99": round(service["p99_ms"] / local["p99_ms"], 3),
            "service_items_per_s_high_over_low": round(at[("service", n, high)]["items_per_s"]
                                                       / service["items_per_s"], 3),
            "in_process_items_per_s_high_over_low": round(at[("in_process", n, high)]["items_per_s"]
                                                          / local["items_per_s"], 3),
        })
    return out


def goals(comparisons: list[dict]) -> dict:
    """The issue's goals: the service adds at most 10% (p50) at the lowest concurrency; items/s grows with it."""
    return {"max_service_over_in_process_p50": 1.10,
            "overhead_met": all(c["service_over_in_process_p50"] <= 1.10 for c in comparisons),
            "throughput_grows_met": all(c["service_items_per_s_high_over_low"] > 1 for c in comparisons)}


def _mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    count = after[1] - before[1]
    return (after[0] - before[0]) / count if count else None


class ServeProcess:
    """``mixlm serve`` in a subprocess on a free loopback port: ``with ServeProcess(...) as s: s.url``.

    Enter returns once ``/readyz`` says ready; exit stops it with SIGTERM (graceful), SIGKILL if stuck.
    """

    def __init__(self, bundle_dir: str, store_path: str, *, max_candidates: int, batch_wait_ms: float,
                 batch_size: int, max_queue: int):
        self.command = [*MIXLM, "serve",
                        "--bundle", str(bundle_dir), "--store", str(store_path), "--host", "127.0.0.1",
                        "--port", "0", "--max-candidates", str(max_candidates), "--batch-wait-ms", str(batch_wait_ms),
                        "--batch-size", str(batch_size), "--max-queue", str(max_queue), "--no-access-log",
                        "--log-level", "info"]
        self.url: str | None = None
        self.lines: deque[str] = deque(maxlen=40)
        self._listening = threading.Event()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._drainer = threading.Thread(target=self._drain, name="mixlm-serve-log", daemon=True)
        self._drainer.start()
        try:
            self._wait_ready(time.monotonic() + SERVER_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            found = re.search(r"serving on (http://\S+)", line)
            if found and self.url is None:
                self.url = found.group(1)
                self._listening.set()

    def _failed(self, why: str) -> RuntimeError:
        return RuntimeError(f"mixlm serve {why}; its last log lines:\n" + "\n".join(self.lines))

    def _wait_ready(self, deadline: float) -> None:
        from mixlm.ranker.http_client import RankerHTTPClient

        while not self._listening.wait(0.1):
            if self.proc.poll() is not None:
                raise self._failed(f"exited {self.proc.returncode} before listening")
            if time.monotonic() > deadline:
                raise self._failed("did not listen in time")
        http = RankerHTTPClient(self.url, timeout=10)
        while True:
            ready, why = http.ready()
            if ready:
                return
            if why.startswith("loading failed") or self.proc.poll() is not None or time.monotonic() > deadline:
                raise self._failed(f"did not get ready ({why})")
            time.sleep(0.2)

    def batch_stats(self) -> tuple[float, float]:
        """(sum, count) of the server's requests-per-forward-pass histogram."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as response:
            text = response.read().decode()
        values = dict(re.findall(r"^mixlm_batch_size_requests_(sum|count) (\S+)$", text, re.MULTILINE))
        return float(values.get("sum", 0)), float(values.get("count", 0))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drainer.join(10)  # it reads the log to its end, which comes with the server's exit
        if not self._drainer.is_alive():
            self.proc.stderr.close()


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["candidates"] for r in report["results"]))
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.5 * len(sizes), 7), squeeze=False)
    colours = {"service": "tab:blue", "in_process": "tab:orange"}
    for column, n in enumerate(sizes):
        top, bottom = axes[0][column], axes[1][column]
        for side, colour in colours.items():
            points = [r for r in report["results"] if r["candidates"] == n and r["side"] == side]
            xs = [p["concurrency"] for p in points]
            top.plot(xs, [p["items_per_s"] for p in points], marker="o", color=colour, label=side)
            bottom.plot(xs, [p["p50_ms"] for p in points], marker="o", color=colour, label=f"{side} p50")
            bottom.plot(xs, [p["p99_ms"] for p in points], marker="x", linestyle="--", color=colour,
                        label=f"{side} p99")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("concurrent callers")
        top.set_title(f"N = {n} candidates")
        top.set_ylabel("items / s")
        top.set_ylim(bottom=0)
        bottom.set_yscale("log")
        bottom.set_ylabel("request latency (ms)")
        top.legend(fontsize=8)
        bottom.legend(fontsize=7)
    fig.suptitle("mixlm serve (subprocess, loopback HTTP) against in-process RankerClient")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
