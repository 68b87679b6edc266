"""The ranking service's Prometheus metrics, on a registry of its own.

Each app gets its own ``CollectorRegistry`` (never the process-global one), so a test or a bench
can run several apps in one process. Labels are fixed sets (endpoint names, status codes, error
reasons): nothing a caller sends, a token least of all, becomes a label.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.latency = Histogram("mixlm_request_duration_seconds", "Time from request to response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.requests = Counter("mixlm_requests", "Requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=registry)
        self.errors = Counter("mixlm_errors", "Requests answered with an error, by endpoint, status and reason",
                              ["endpoint", "status", "reason"], registry=registry)
        self.items_scored = Counter("mixlm_items_scored", "Candidate items scored by the ranker", registry=registry)
        self.store_misses = Counter("mixlm_store_misses", "Candidate ids not in the store (never written or deleted)",
                                    registry=registry)
        self.batch_size = Histogram("mixlm_batch_size_requests", "Requests that shared one forward pass",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("mixlm_queue_depth", "Ranking requests in flight or waiting for a forward pass",
                                 registry=registry)
        self.queue_limit = Gauge("mixlm_queue_limit", "Requests the queue admits before answering 429",
                                 registry=registry)
        self.ready = Gauge("mixlm_ready", "1 when models are loaded and the store holds the bundle's encoder",
                           registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
