"""The node's background anti-entropy: one loop per node, in the gunicorn master.

Every ``SDHT_SYNC_INTERVAL`` seconds (30 by default, 0 turns it off; jittered by ±20% so nodes
do not sync in lockstep) the loop

1. reads the ring the node stores and exchanges it with the other members: a member holding an
   older ring, or none (a node restarted on an empty disk), is given this one; a newer ring held
   by a member is adopted. So a node that lost its disk learns the ring from its peers;
2. syncs each peer it shares ring ranges with, over all those ranges at once
   (:func:`sdht.sync.sync_ranges`), through the ordinary HTTP routes of both nodes: what a node
   sends, to a peer or to itself, passes the normal validation and the accept rule;
3. reports the pass to its own node (``POST /v1/sync/pass``), which adds to the ``sync_rounds``
   and ``sync_differences`` counters shown in health and, at most every
   ``min(tombstone_grace / 2, 1 hour)``, purges tombstones older than the grace.

It runs as one thread of the gunicorn master (started by :mod:`storage.gunicorn_conf`), so there
is one loop per node however many workers serve it, and it dies with the master. It never opens
LMDB itself: an environment must not cross the forks by which the master starts workers.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field

from sdht.errors import SDHTError
from sdht.ring import RingView
from sdht.repair import shared_ranges, spread_ring
from sdht.sync import sync_ranges
from sdht.transport import DEFAULT_TIMEOUT, Transport
from sdht.trust import Keys

log = logging.getLogger(__name__)

#: Upper bound between tombstone purges, in seconds.
MAX_PURGE_EVERY = 3600.0


@dataclass
class PassReport:
    """What one background pass did."""

    syncs: int = 0             # peers synced ("sync rounds")
    differences: int = 0       # keys that differed
    pushed: int = 0            # records stored on either side
    purged: int = 0            # tombstones purged on this node
    rings_pushed: int = 0      # peers given this node's (newer) ring
    errors: list[str] = field(default_factory=list)


class Syncer:
    """Background anti-entropy for the node served at ``address``.

    :param address: ``host:port`` where this node answers (its own HTTP routes are used).
    :param node_id: the node's name in the ring (usually the same).
    :param interval: seconds between passes.
    """

    def __init__(self, address: str, node_id: str, interval: float,
                 keys: Keys | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.address, self.node_id, self.interval = address, node_id, interval
        # The node's own keys: peers accept its tree and entry reads as a member's, and rings
        # it learns from peers are checked against the operator key like any other.
        self.transport = Transport(timeout, keys, max_parallel=4)
        self.stopped = threading.Event()
        self.last_purge: float | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> "Syncer":
        """Run passes in a daemon thread until :meth:`stop`."""
        self.thread = threading.Thread(target=self._loop, name="sdht-sync", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to end after the current step."""
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval * random.uniform(0.8, 1.2)):
            try:
                self.run_pass()
            except SDHTError as exc:  # our own node is down or restarting: try next time
                log.info("anti-entropy pass skipped: %s", exc)
            except Exception:  # the loop must outlive any one bad pass
                log.exception("anti-entropy pass failed")

    def run_pass(self) -> PassReport:
        """Run one pass now (see the module docstring) and return what it did."""
        report = PassReport()
        view = self.transport.get_ring(self.address)
        if view is None:
            return report  # not in a ring yet: a peer gives us one when we are a member
        view = self._exchange_rings(view, report)
        peers: dict[str, list[tuple[int, int]]] = {}
        if view.member(self.node_id) is not None:
            for replicas, (ranges, _) in shared_ranges(view, self.node_id).items():
                for peer in replicas - {self.node_id}:
                    peers.setdefault(peer, []).extend(ranges)
        for peer, ranges in sorted(peers.items()):
            if self.stopped.is_set():
                break
            try:
                rep = sync_ranges(self.transport, self.address, peer, ranges, view.params)
            except SDHTError as exc:
                report.errors.append(str(exc))
                log.info("anti-entropy with %s skipped: %s", peer, exc)
                continue
            report.syncs += 1
            report.differences += rep.differences
            report.pushed += rep.pushed_to_a + rep.pushed_to_b
        every = min(view.params["tombstone_grace"] / 2, MAX_PURGE_EVERY)
        purge = self.last_purge is None or time.monotonic() - self.last_purge >= every
        report.purged = self.transport.sync_pass(self.address, report.syncs,
                                                 report.differences, purge)
        if purge:
            self.last_purge = time.monotonic()
        if report.differences:
            log.info("anti-entropy: %d keys differed, %d records stored", report.differences,
                     report.pushed)
        return report

    def _exchange_rings(self, view: RingView, report: PassReport) -> RingView:
        """Give members with an older ring ours; adopt a newer one a member holds."""
        spread = spread_ring(self.transport, view, skip={self.node_id})
        report.rings_pushed = spread.pushed
        report.errors += spread.unreachable.values()
        if spread.newest is not view:
            self.transport.put_ring(self.address, spread.newest)
        return spread.newest


def start_from_config(bind: str) -> Syncer | None:
    """Start the background sync for a node bound at ``bind`` (settings from the environment).

    :returns: the running :class:`Syncer`, or None when ``SDHT_SYNC_INTERVAL`` is 0.
    """
    from .auth import node_keys
    from .config import load_config
    cfg = load_config()
    if cfg["SYNC_INTERVAL"] <= 0:
        return None
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    address = f"{host}:{port}"
    cfg["NODE_ID"] = cfg["NODE_ID"] or address
    return Syncer(address, cfg["NODE_ID"], cfg["SYNC_INTERVAL"], node_keys(cfg)).start()
