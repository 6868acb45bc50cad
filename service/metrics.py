"""Prometheus metrics, named as operators of other serving tools chart them.

Per-token latencies are recorded once per batched step with a count (all rows
of a step share the interval), so the hot path costs a few operations per step,
not per token: `WeightedHistogram` is a histogram whose `observe` takes a count.
"""
from __future__ import annotations

import bisect
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily

from .engine import Metrics

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WeightedHistogram:
    def __init__(self, name: str, doc: str, buckets=LATENCY_BUCKETS):
        self.name, self.doc, self.bounds = name, doc, list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, count: int = 1) -> None:
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self.counts[i] += count
            self.sum += value * count

    def collect(self):
        with self._lock:
            counts, total = list(self.counts), self.sum
        cum, buckets = 0, []
        for bound, c in zip(self.bounds + [float("inf")], counts):
            cum += c
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
        fam = HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=total)
        yield fam


class ServiceMetrics(Metrics):
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rnnserve_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("rnnserve_request_duration_seconds", "HTTP request duration",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.generated = Counter("rnnserve_generation_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("rnnserve_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.finish = Counter("rnnserve_request_finished", "Generation requests ended, by reason",
                              ["reason"], registry=r)
        self.batch = Histogram("rnnserve_batch_size", "Rows in each decode step",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.classify_batch = Histogram("rnnserve_classify_batch_size", "Texts in each batch sent to the "
                                        "classifier worker", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                                        registry=r)
        self.step_seconds = Histogram("rnnserve_step_duration_seconds", "Duration of one decode step "
                                      "(ONNX Runtime call and sampling) for the whole batch",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.prefill_seconds = Histogram("rnnserve_prefill_duration_seconds", "Duration of one prefill call",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("rnnserve_time_to_first_token_seconds", "From request arrival to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = WeightedHistogram("rnnserve_inter_token_latency_seconds", "Time between consecutive tokens "
                                     "of a stream")
        r.register(self.itl)
        self.active = Gauge("rnnserve_active_streams", "Requests in the running batch", registry=r)
        self.queued = Gauge("rnnserve_queued_requests", "Requests waiting for a slot or being prefilled",
                            registry=r)
        self.sessions = Gauge("rnnserve_sessions", "Sessions held", registry=r)
        self.session_bytes = Gauge("rnnserve_session_bytes", "Bytes of recurrent state held by sessions",
                                   registry=r)

    def bind(self, engines: list, store) -> None:
        self.active.set_function(lambda: sum(len(e.active) for e in engines))
        self.queued.set_function(lambda: sum(e.queued for e in engines))
        self.sessions.set_function(lambda: store.stats()["sessions"])
        self.session_bytes.set_function(lambda: store.stats()["bytes"])

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # engine hooks
    def step(self, batch: int, seconds: float) -> None:
        self.batch.observe(batch)
        self.step_seconds.observe(seconds)

    def prefill(self, rows: int, tokens: int, seconds: float) -> None:
        self.prompt_tokens.inc(tokens)
        self.prefill_seconds.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float, count: int) -> None:
        self.itl.observe(seconds, count)

    def tokens(self, n: int) -> None:
        self.generated.inc(n)

    def finished(self, reason: str) -> None:
        self.finish.labels(reason).inc()
