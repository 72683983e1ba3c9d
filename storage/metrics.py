"""Node metrics: Prometheus counters and histograms, and the per-node figures of ``/v1/health``.

Under gunicorn a node is several worker processes, but its figures must be the node's, not one
worker's. ``sdht-storage`` therefore points ``PROMETHEUS_MULTIPROC_DIR`` at a per-node directory
(``DATA/prometheus``, cleared at start): every worker writes its counters to memory-mapped files
there and any worker can sum them all (prometheus_client's multiprocess mode). Without that
variable (an app made in-process, e.g. by tests) each app keeps its own ``CollectorRegistry``,
never the global default one, so two apps in one process do not clash.

Gauges of the store (records, bytes, revision, epoch) are read from LMDB at scrape time, which is
already per node, and so are the anti-entropy counts the store keeps (exported as counters).
Other parts of the node increment the objects of :class:`Metrics` through :func:`current`, e.g.
``metrics.current().writes.labels("stored").inc()``.
"""
from __future__ import annotations

import collections
import os
import random
import time
from typing import Any, Iterable

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest

from sdht.wire import MIGRATION_HEADER

from .acceptor import count_names
from .collectors import StoreGauges, WorkerFiles
from .hints import node_hints
from .http import ApiError, ring_view, store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Routes left out of the health figures (mean response time, error rate): polling a node's
#: health or scraping it must not dilute the figures of the work it serves.
#: The hint replayer's poll of its own node's backlog (``/v1/hints``, four times a second) too.
QUIET_ROUTES = frozenset({"/v1/health", "/metrics", "/", "/static/<path:filename>",
                          "/v1/hints"})
#: Answers that are normal outcomes rather than errors: a missing key, a superseded write.
NOT_ERRORS = frozenset({404, 409})
#: Endpoints whose 4xx answers count as refused (invalid) writes.
WRITE_ENDPOINTS = frozenset({"v1.put_record", "v1.put_records"})
#: The record routes, where the test-only faults apply (joins and rings stay unaffected).
DATA_ROUTES = frozenset({"/v1/record", "/v1/records", "/v1/records/get"})
#: Label sets of the request metrics whose children a process keeps at hand.
MAX_CACHED_LABELS = 1024
#: Buckets of the replication delay histograms, in seconds (the target: p99 under 2 s).
DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                 1800.0, float("inf"))


class Metrics:
    """The metric objects of one node app.

    :param multiprocess_dir: the shared directory of multiprocess mode, or None for a private
        registry.
    """

    def __init__(self, multiprocess_dir: str | None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # In multiprocess mode the values live in the directory's files, so the objects need
        # no registry; otherwise this app's own registry (never the global default one).
        self.registry = None if multiprocess_dir else CollectorRegistry()
        reg = self.registry
        self.requests = Counter("sdht_requests", "HTTP requests answered, by route, method and "
                                "status.", ["route", "method", "status"], registry=reg)
        self.latency = Histogram("sdht_request_duration_seconds", "Time to answer a request, by "
                                 "route, method and status.", ["route", "method", "status"],
                                 registry=reg)
        self.writes = Counter("sdht_writes", "Records offered for writing, by outcome: stored "
                              "(accepted), same (already held), superseded (a higher score is "
                              "held), invalid (refused request).", ["outcome"], registry=reg)
        self.migrated = Counter("sdht_migration_records_received", "Records received in batch "
                                "writes marked as migration (join or remove).", registry=reg)
        self.names = Counter("sdht_name_messages", "Unique-name phase messages this acceptor "
                             "answered, by phase (prepare, accept) and answer (ok, conflict, "
                             "stale).", ["phase", "outcome"], registry=reg)
        self.hints = Counter("sdht_hints", "Hints for other replicas, by outcome: kept, "
                             "dropped (past the byte cap), delivered, expired (past the age "
                             "cap).", ["outcome"], registry=reg)
        self.hint_delivery = Histogram("sdht_hint_delivery_seconds", "Time from a hint's "
                                       "arrival until its target acknowledged it (replication "
                                       "delay after an outage).", buckets=DELAY_BUCKETS,
                                       registry=reg)
        # The request counter's and histogram's children by labels: labels() takes a lock
        # and builds a key each call, which is most of counting a request.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe_request(self, rule: str, method: str, status: str, seconds: float) -> None:
        """Count one answered request and its time under ``(rule, method, status)``."""
        labels = (rule, method, status)
        children = self._children.get(labels)
        if children is None:
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            if len(self._children) < MAX_CACHED_LABELS:  # clients choose methods: bounded
                self._children[labels] = children
        children[0].inc()
        children[1].observe(seconds)

    # -- reading --------------------------------------------------------------------------------

    def source(self) -> Any:
        """Return a collector of every worker's values (or this app's registry)."""
        if self.multiprocess_dir:
            return WorkerFiles(self.multiprocess_dir)
        return self.registry

    def figures(self) -> dict[str, Any]:
        """Return the node's request figures since it started, summed over its workers.

        ``requests`` and ``errors`` count answers outside :data:`QUIET_ROUTES`; an error is a
        status of 400 or more other than those in :data:`NOT_ERRORS`.
        """
        count = errors = proposals = conflicts = 0
        seconds = 0.0
        buckets: dict[str, dict[float, float]] = {"latency": {}, "delivery": {}}
        for family in self.source().collect():
            for sample in family.samples:
                if sample.name == "sdht_hint_delivery_seconds_bucket":
                    le = float(sample.labels["le"])
                    buckets["delivery"][le] = buckets["delivery"].get(le, 0.0) + sample.value
                    continue
                if sample.name == "sdht_name_messages_total":
                    proposals += int(sample.value) if sample.labels["phase"] == "accept" else 0
                    conflicts += int(sample.value) if sample.labels["outcome"] == "conflict" \
                        else 0
                    continue
                if sample.labels.get("route") in QUIET_ROUTES:
                    continue
                if sample.name == "sdht_requests_total":
                    count += int(sample.value)
                    status = int(sample.labels.get("status", "0"))
                    if status >= 400 and status not in NOT_ERRORS:
                        errors += int(sample.value)
                elif sample.name == "sdht_request_duration_seconds_sum":
                    seconds += sample.value
                elif sample.name == "sdht_request_duration_seconds_bucket":
                    le = float(sample.labels["le"])
                    buckets["latency"][le] = buckets["latency"].get(le, 0.0) + sample.value
        return {"requests": count, "errors": errors,
                "error_rate": errors / count if count else 0.0,
                "mean_response_ms": 1000.0 * seconds / count if count else 0.0,
                "p99_response_ms": 1000.0 * quantile(buckets["latency"], 0.99),
                # Replication (issue 15): the hints this node keeps per target, and how long
                # delivered ones waited (the replication delay after an outage, bucketed).
                "hints": {t: b.to_json() for t, b in node_hints().backlog().items()},
                "hints_delivered": int(max(buckets["delivery"].values(), default=0)),
                "replication_delay_p50_s": quantile(buckets["delivery"], 0.5),
                "replication_delay_p99_s": quantile(buckets["delivery"], 0.99),
                "window": "since_start", "heartbeat": time.time(),
                # The unique-name registry (docs/names.md): names this node holds a claim for,
                # accepts it answered, and phase messages it refused for a higher ballot.
                "names": names_held(), "name_proposals": proposals,
                "name_conflicts": conflicts}

    def exposition(self, stats: dict[str, Any]) -> bytes:
        """Return the Prometheus text exposition of every metric plus the store's gauges."""
        node = CollectorRegistry()
        node.register(StoreGauges(stats))
        return generate_latest(self.source()) + generate_latest(node)

    # -- counting -------------------------------------------------------------------------------

    def count_writes(self, results: Iterable[Any], migrated: bool | None = None) -> None:
        """Count the outcomes of the records of one write request (``WriteResult`` objects);
        ``migrated``: whether it moves data for a join or remove (None: ask its header)."""
        # One inc per outcome, not per record: a batch holds up to thousands of records. A
        # single write (the commonest request) skips the tally.
        outcomes = {results[0].status: 1} if isinstance(results, list) and len(results) == 1 \
            else collections.Counter(result.status for result in results)
        for status, count in outcomes.items():
            self.writes.labels(status).inc(count)
        total = sum(outcomes.values())
        if migrated is None:
            migrated = request.headers.get(MIGRATION_HEADER) == "1"
        if total and migrated:
            self.migrated.inc(total)


def quantile(cumulative: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the ``q`` quantile of a histogram given as
    cumulative counts by upper bound (0 when empty; the largest finite bound past it)."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if not total:
        return 0.0
    finite = [b for b in bounds if b != float("inf")]
    for bound in bounds:
        if cumulative[bound] >= q * total:
            return bound if bound != float("inf") else (finite[-1] if finite else 0.0)
    return 0.0


def current() -> Metrics:
    """Return the metrics of the app serving the current request."""
    return current_app.extensions["sdht.metrics"]


def names_held() -> int:
    """Names the serving node holds an accepted claim for (counted every few seconds)."""
    return count_names(store(), current_app.config["DATA_DIR"])


def init_app(app: Flask) -> Metrics:
    """Attach metrics to ``app``: request timing hooks and the ``/metrics`` route."""
    metrics = Metrics(os.environ.get(MULTIPROC_ENV) or None)
    app.extensions["sdht.metrics"] = metrics
    started = os.environ.get("SDHT_STARTED")  # set by sdht-storage: the node's, not a worker's
    if started:
        try:
            app.config["STARTED"] = float(started)
        except ValueError:
            pass
    app.before_request(_start_timer)
    app.after_request(_observe)
    app.add_url_rule("/metrics", "metrics", _metrics_route)
    return metrics


def _start_timer() -> None:
    g.sdht_started = time.perf_counter()
    cfg = current_app.config
    if (cfg["TEST_DELAY_MS"] or cfg["TEST_ERROR_RATE"]) and request.url_rule is not None \
            and request.url_rule.rule in DATA_ROUTES:
        # Test-only faults (SDHT_TEST_DELAY_MS, SDHT_TEST_ERROR_RATE): a slow or erroring
        # node for the tests of routing by score; both 0 in production.
        time.sleep(cfg["TEST_DELAY_MS"] / 1000.0)
        if random.random() < cfg["TEST_ERROR_RATE"]:
            raise ApiError(503, "test_error", "SDHT_TEST_ERROR_RATE: a test-made error")


def _observe(response: Response) -> Response:
    began = g.get("sdht_started")
    if began is None:
        return response
    metrics = current()
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.observe_request(rule, request.method, str(response.status_code),
                            time.perf_counter() - began)
    if (request.endpoint in WRITE_ENDPOINTS and 400 <= response.status_code < 500
            and response.status_code not in NOT_ERRORS):
        metrics.writes.labels("invalid").inc()
    return response


def _metrics_route() -> Response:
    view = ring_view()
    stats = {**store().stats(), "epoch": view.epoch if view else 0, "names": names_held(),
             "uptime": time.time() - current_app.config["STARTED"],
             "hints": node_hints().backlog(), "location": current_app.config["LOCATION"]}
    return Response(current().exposition(stats), mimetype=None,
                    content_type=CONTENT_TYPE_LATEST)
