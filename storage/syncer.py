"""The node's background anti-entropy: one loop per node, in the gunicorn master.

Every ``SDHT_SYNC_INTERVAL`` seconds (30 by default, 0 turns it off; jittered by ±20% so nodes
do not sync in lockstep) the loop

1. reads the ring the node stores and exchanges it with the other members: a member holding an
   older ring, or none (a node restarted on an empty disk), is given this one; a newer ring held
   by a member is adopted. So a node that lost its disk learns the ring from its peers;
2. syncs the ring intervals it is the hub of (the first reachable replica,
   :func:`sdht.repair.hub_plan`) with their other replicas: one sync per peer over all the
   ranges they share (:func:`sdht.sync.sync_ranges`), ``PEERS_AT_ONCE`` peers at a time and no
   new one past the pass's time, through the ordinary HTTP routes of both nodes: what a node
   sends, to a peer or to itself, passes the normal validation and the accept rule. Every
   interval has one hub, so each pair of replicas is synced once per pass, not once by each;
3. reports the pass to its own node (``POST /v1/sync/pass``), which adds to the ``sync_rounds``
   and ``sync_differences`` counters shown in health and, at most every
   ``min(tombstone_grace / 2, 1 hour)``, purges tombstones older than the grace.

It runs as one thread of the gunicorn master (started by :mod:`storage.gunicorn_conf`), so there
is one loop per node however many workers serve it, and it dies with the master. It never opens
LMDB itself: an environment must not cross the forks by which the master starts workers.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sdht.errors import SDHTError
from sdht.ring import RingView
from sdht.repair import hub_plan, spread_ring
from sdht.sync import sync_ranges
from sdht.transport import DEFAULT_TIMEOUT, Transport
from sdht.trust import Keys

from .background import Loop

log = logging.getLogger(__name__)

#: Upper bound between tombstone purges, in seconds.
MAX_PURGE_EVERY = 3600.0
#: Peers one node syncs at once in its pass: a bound on the background work of one node.
PEERS_AT_ONCE = 4
#: A pass starts no new sync after ``max(interval, this)`` seconds: one pass never runs into
#: the next, and the next goes on with what is left.
MIN_PASS_SECONDS = 5.0


@dataclass
class PassReport:
    """What one background pass did."""

    syncs: int = 0             # peers synced ("sync rounds")
    differences: int = 0       # keys that differed
    pushed: int = 0            # records stored on either side
    purged: int = 0            # tombstones purged on this node
    rings_pushed: int = 0      # peers given this node's (newer) ring
    errors: list[str] = field(default_factory=list)


class Syncer(Loop):
    """Background anti-entropy for the node served at ``address``.

    :param address: ``host:port`` where this node answers (its own HTTP routes are used).
    :param node_id: the node's name in the ring (usually the same).
    :param interval: seconds between passes.
    """

    NAME, WHAT, JITTER = "sdht-sync", "anti-entropy pass", 0.2

    def __init__(self, address: str, node_id: str, interval: float,
                 keys: Keys | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__(interval)
        self.address, self.node_id = address, node_id
        # The node's own keys: peers accept its tree and entry reads as a member's, and rings
        # it learns from peers are checked against the operator key like any other.
        self.transport = Transport(timeout, keys, max_parallel=4)
        self.last_purge: float | None = None
        self.turn = 0

    def run_pass(self) -> PassReport:
        """Run one pass now (see the module docstring) and return what it did."""
        report = PassReport()
        view = self.transport.get_ring(self.address)
        if view is None:
            return report  # not in a ring yet: a peer gives us one when we are a member
        view, down = self._exchange_rings(view, report)
        peers: dict[str, list[tuple[int, int]]] = {}
        if view.member(self.node_id) is not None:
            peers = hub_plan(view, down, self.node_id).get(self.node_id, ({}, 0))[0]
        deadline = time.monotonic() + max(self.interval, MIN_PASS_SECONDS)

        def sync(peer: str) -> None:
            if self.stopped.is_set() or time.monotonic() > deadline:
                return   # the next pass goes on where this one stopped
            try:
                rep = sync_ranges(self.transport, self.address, peer, peers[peer], view.params)
            except SDHTError as exc:
                report.errors.append(str(exc))
                log.info("anti-entropy with %s skipped: %s", peer, exc)
                return
            with lock:
                report.syncs += 1
                report.differences += rep.differences
                report.pushed += rep.pushed_to_a + rep.pushed_to_b

        lock = threading.Lock()
        # The peers of the ranges this node is the hub of, a few at a time: each sync keeps one
        # request in flight to this node and one to the peer, whatever the ring's size.
        with ThreadPoolExecutor(PEERS_AT_ONCE, thread_name_prefix="sdht-sync-peer") as pool:
            order = sorted(peers)
            turn = self.turn % len(order) if order else 0
            list(pool.map(sync, order[turn:] + order[:turn]))
        self.turn += report.syncs   # a pass cut short: the next one starts with the rest
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

    def _exchange_rings(self, view: RingView, report: PassReport) -> tuple[RingView, set[str]]:
        """Give members with an older ring ours; adopt a newer one a member holds. Returns
        the ring and the members that could not be reached (their ranges go to the next
        replica as hub, :func:`sdht.repair.hub_plan`)."""
        spread = spread_ring(self.transport, view, skip={self.node_id})
        report.rings_pushed = spread.pushed
        report.errors += spread.unreachable.values()
        if spread.newest is not view:
            self.transport.put_ring(self.address, spread.newest)
        return spread.newest, set(spread.unreachable)


def start_from_config(bind: str) -> Syncer | None:
    """Start the background sync for a node bound at ``bind`` (settings from the environment).

    :returns: the running :class:`Syncer`, or None when ``SDHT_SYNC_INTERVAL`` is 0.
    """
    from .auth import node_keys
    from .config import load_config
    cfg = load_config()
    if cfg["SYNC_INTERVAL"] <= 0:
        return None
    address = local_address(bind)
    cfg["NODE_ID"] = cfg["NODE_ID"] or address
    return Syncer(address, cfg["NODE_ID"], cfg["SYNC_INTERVAL"], node_keys(cfg)).start()


def local_address(bind: str) -> str:
    """Return the ``host:port`` where the node bound at ``bind`` answers its own loops
    (a wildcard bind is reached on loopback)."""
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"
