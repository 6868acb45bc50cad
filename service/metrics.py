"""Prometheus metrics, named as operators of other serving tools chart them, summed over every worker.

With several worker processes each writes its counters and histograms to prometheus-client's
multiprocess files (PROMETHEUS_MULTIPROC_DIR, set by the supervisor) and whichever worker answers
/metrics reads them all: a counter is the sum over workers, dead ones included; the running-stream and
queue gauges are summed over live workers. Session figures come from the shared store itself, read by
the answering worker, so they are never counted twice.

Per-token latencies are recorded once per batched step with a count (all rows of a step share the
interval), so the hot path costs a few operations per step, not per token (`observe_many`).
"""
from __future__ import annotations

import bisect
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .engine import Metrics

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def observe_many(h: Histogram, value: float, count: int) -> None:
    """`count` observations of the same value in one call: what `Histogram.observe` does, `count` times
    (prometheus-client keeps a value per bucket, non-cumulative, and the sum)."""
    if count <= 0:
        return
    h._sum.inc(value * count)
    h._buckets[bisect.bisect_left(h._upper_bounds, value)].inc(count)


class StoreCollector:
    """Session figures from the store, read at scrape time by the answering process."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        up, stats = bool(self.store.describe().get("up", True)), {"sessions": 0, "bytes": 0}
        if up:
            try:
                stats = self.store.stats()
            except Exception:  # noqa: BLE001 — an unreachable store is reported, not raised
                up = False
        yield GaugeMetricFamily("rnnserve_sessions", "Sessions held (all workers)", value=stats["sessions"])
        yield GaugeMetricFamily("rnnserve_session_bytes", "Bytes of recurrent state held by sessions",
                                value=stats["bytes"])
        yield GaugeMetricFamily("rnnserve_session_store_up", "1 when the session store answers", value=float(up))


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
        self.batch = Histogram("rnnserve_batch_size", "Rows in each decode step", buckets=SIZE_BUCKETS, registry=r)
        self.classify_batch = Histogram("rnnserve_classify_batch_size", "Texts in each batch sent to the "
                                        "classifier worker", buckets=SIZE_BUCKETS, registry=r)
        self.step_seconds = Histogram("rnnserve_step_duration_seconds", "Duration of one decode step "
                                      "(ONNX Runtime call and sampling) for the whole batch",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.prefill_seconds = Histogram("rnnserve_prefill_duration_seconds", "Duration of one prefill call",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("rnnserve_time_to_first_token_seconds", "From request arrival to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("rnnserve_inter_token_latency_seconds", "Time between consecutive tokens of a stream",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.active = Gauge("rnnserve_active_streams", "Requests in the running batch", registry=r,
                            multiprocess_mode="livesum")
        self.queued = Gauge("rnnserve_queued_requests", "Requests waiting for a slot or being prefilled",
                            registry=r, multiprocess_mode="livesum")
        self.workers_up = Gauge("rnnserve_workers_up", "Worker processes up (as the answering worker sees them)",
                                registry=r, multiprocess_mode="mostrecent")
        self.prefix_hits = Counter("rnnserve_prefix_cache_hits", "Fresh generation requests that started from a "
                                   "cached prefix state", registry=r)
        self.prefix_misses = Counter("rnnserve_prefix_cache_misses", "Fresh generation requests with no cached "
                                     "prefix", registry=r)
        self.prefix_tokens = Counter("rnnserve_prefix_cache_tokens_saved", "Prompt tokens not prefilled: read from "
                                     "the prefix cache", registry=r)
        self.prefix_bytes = Gauge("rnnserve_prefix_cache_bytes", "Bytes held by the prefix-state caches", registry=r,
                                  multiprocess_mode="livesum")
        self._cache = None
        self._engines: list = []
        self._store_collector: StoreCollector | None = None

    def bind(self, engines: list, store, cache=None) -> None:
        self._engines = engines
        self._cache = cache
        self._store_collector = StoreCollector(store)
        if not multiprocess():
            self.registry.register(self._store_collector)

    def refresh(self) -> None:
        """Set this worker's gauges from its engines (every heartbeat, and before each scrape)."""
        self.active.set(sum(len(e.active) for e in self._engines))
        self.queued.set(sum(e.queued for e in self._engines))
        if self._cache is not None:
            self.prefix_bytes.set(self._cache.bytes)

    def render(self) -> bytes:
        self.refresh()
        if not multiprocess():
            return generate_latest(self.registry)
        from prometheus_client import multiprocess as mp
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        if self._store_collector is not None:
            registry.register(self._store_collector)
        return generate_latest(registry)

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
        observe_many(self.itl, seconds, count)

    def tokens(self, n: int) -> None:
        self.generated.inc(n)

    def finished(self, reason: str) -> None:
        self.finish.labels(reason).inc()

    def prefix(self, tokens: int) -> None:
        if tokens:
            self.prefix_hits.inc()
            self.prefix_tokens.inc(tokens)
        else:
            self.prefix_misses.inc()
