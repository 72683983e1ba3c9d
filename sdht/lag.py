"""Replication delay as one client sees it: from a write's acknowledgement until its last
replica acknowledged.

A write returns once ``w`` replicas acknowledged (:mod:`sdht.quorum`) and the others had a
moment more (:func:`sdht.fanout.trail_deadline`); its requests to those still silent go on.
:class:`Lag` notes when each of those ends: the delay of the write is the time from its return
until the last one succeeded (0 when all had answered by then). A write one of whose replicas
failed or stayed silent is counted as *hinted* instead: its delay is the hint's, which the
holder measures (``sdht_hint_delivery_seconds``, docs/operating.md).
"""
from __future__ import annotations

import bisect
import threading
import time
from concurrent.futures import Future
from typing import Any, Iterable

#: Upper bounds of the delay buckets, in seconds (as the nodes' histograms).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
           30.0, 60.0, float("inf"))


class Lag:
    """A histogram of one client's replication delays (bounded: counts per bucket)."""

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.hinted = 0
        self.max = 0.0
        self._lock = threading.Lock()

    def track(self, acked_at: float, running: Iterable[Future], skipped: int = 0) -> None:
        """Note a write acknowledged at ``acked_at`` (a :func:`time.monotonic` time) whose
        requests ``running`` still run; its delay is recorded when the last one ends. With
        ``skipped`` replicas not written (failed, or suspect), it counts as hinted."""
        left = list(running)
        if skipped > 0:
            with self._lock:
                self.hinted += 1
            return
        if not left:
            self.record(0.0)
            return
        state = {"left": len(left), "failed": False}
        lock = threading.Lock()

        def done(fut: Future) -> None:
            with lock:
                state["left"] -= 1
                state["failed"] |= fut.cancelled() or fut.exception() is not None
                last = state["left"] == 0
            if last:
                if state["failed"]:
                    with self._lock:
                        self.hinted += 1
                else:
                    self.record(time.monotonic() - acked_at)

        for fut in left:
            fut.add_done_callback(done)

    def record(self, seconds: float) -> None:
        """Count one write whose last replica acknowledged ``seconds`` after its return."""
        with self._lock:
            self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the ``q`` quantile (0 with no writes)."""
        with self._lock:
            total, seen = sum(self.counts), 0
            for bound, count in zip(BUCKETS, self.counts):
                seen += count
                if total and seen >= q * total:
                    return min(bound, self.max)
        return 0.0

    def snapshot(self) -> dict[str, Any]:
        """``{"writes", "hinted", "p50_s", "p99_s", "max_s"}`` so far."""
        return {"writes": sum(self.counts), "hinted": self.hinted, "p50_s": self.quantile(0.5),
                "p99_s": self.quantile(0.99), "max_s": self.max}
