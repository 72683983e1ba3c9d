"""What a scrape of a node collects besides this process's own registry: every worker's
counters from their files (multiprocess mode), and the store's gauges read at scrape time.
:mod:`storage.metrics` defines the metrics and serves ``/metrics`` and the health figures."""
from __future__ import annotations

import glob
import os
from typing import Any, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector


class WorkerFiles:
    """Every worker's values, summed from the memory-mapped files in ``path``, as
    prometheus_client's ``MultiProcessCollector`` sums them, except a file still empty.

    prometheus_client creates a worker's file and sizes it only afterwards. A scrape that
    reads it in between raises (prometheus/client_python#1199), and it answered the health
    of a node whose worker was just starting with a 500. An empty file holds no values yet,
    so leaving it out loses nothing."""

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        files = [f for f in glob.glob(os.path.join(self.path, "*.db")) if _sized(f)]
        return MultiProcessCollector.merge(files, accumulate=True)


def _sized(path: str) -> bool:
    """Whether the file at ``path`` has any bytes (a file gone meanwhile has none)."""
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


class StoreGauges:
    """Gauges read from the node's store at scrape time."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, key, doc in (("sdht_records", "records", "Records stored (tombstones too)."),
                               ("sdht_bytes", "bytes", "Bytes of keys and records stored."),
                               ("sdht_revision", "revision", "Writes this node has accepted."),
                               ("sdht_ring_epoch", "epoch", "Epoch of the ring the node holds."),
                               ("sdht_names", "names", "Unique names this node holds an "
                                                       "accepted claim for."),
                               ("sdht_uptime_seconds", "uptime", "Seconds since the node "
                                                                 "started.")):
            yield GaugeMetricFamily(name, doc, value=float(self.stats.get(key) or 0))
        # Anti-entropy keeps its counts in the store (per node already): exported as counters.
        # Replication backlog (issue 15): hints kept per target, and the oldest one's age.
        pending = GaugeMetricFamily("sdht_hints_pending", "Hints this node keeps for another "
                                    "replica, by target.", labels=["target"])
        oldest = GaugeMetricFamily("sdht_hints_oldest_seconds", "Age of the oldest hint kept "
                                   "for a target.", labels=["target"])
        for target, backlog in sorted((self.stats.get("hints") or {}).items()):
            pending.add_metric([target], backlog.count)
            oldest.add_metric([target], backlog.oldest_age)
        yield pending
        yield oldest
        if self.stats.get("location"):
            info = GaugeMetricFamily("sdht_node_location", "The node's configured location "
                                     "(SDHT_LOCATION), as a label; always 1.",
                                     labels=["location"])
            info.add_metric([str(self.stats["location"])], 1.0)
            yield info
        for name, key, doc in (("sdht_sync_rounds", "sync_rounds", "Anti-entropy rounds "
                                "reported to this node."),
                               ("sdht_sync_differences", "sync_differences", "Differing keys "
                                "anti-entropy reported for this node."),
                               ("sdht_tombstones_purged", "tombstones_purged", "Expired "
                                "tombstones this node purged.")):
            if key in self.stats:
                yield CounterMetricFamily(name, doc, value=float(self.stats[key]))
