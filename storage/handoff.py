"""The node's hint replayer: hinted handoff's delivery loop, one per node, in the gunicorn master.

Every ``SDHT_HANDOFF_INTERVAL`` seconds (0.25 by default, 0 turns it off) the loop asks its own
node for the hint backlog (``GET /v1/hints``) and, for each target not failing lately, takes the
oldest hints in batches (``POST /v1/hints/take``), writes them to the target through its ordinary
batch write (``POST /v1/records``: admission and the accept rule, so a replayed hint can never
regress a newer version) and deletes them once the target answered (``POST /v1/hints/done``).
A target may take at most ``SDHT_HINT_RATE`` hints per second, so a node coming back is not
flooded. A batch the target refuses outright (4xx: say, the ring's limits changed) is dropped
and left to anti-entropy.

Like :mod:`storage.syncer` it never opens LMDB (an environment must not cross gunicorn's
forks): it works through its node's routes, signed with the node's own key.
"""
from __future__ import annotations

import logging

from sdht.errors import NodeError, SDHTError, TransportError
from sdht.health import NodeHealth
from sdht.nodeapi import MSGPACK
from sdht.transport import Transport
from sdht.trust import Keys
from sdht.wire import packb, packed_array

from .background import Loop

log = logging.getLogger(__name__)

#: (connect, read) seconds of a replay request: short, so a target that hangs is retried soon
#: after it resumes (a request sent while it hung is answered when it resumes).
REPLAY_TIMEOUT = (1.0, 1.0)
#: Seconds a target that failed is left alone before the next attempt.
RETRY_AFTER = 0.25
#: (connect, read) seconds of the health probe sent to a target that failed before its hints
#: (long: one probe waits out a pause rather than many queue up behind it);
#: probes queued while it hung cost it nothing to answer when it resumes, where queued batches
#: of hints would each be merged first.
PROBE_TIMEOUT = (0.5, 2.0)
#: Hints per replay batch.
BATCH = 500


class Replayer(Loop):
    """Delivers the hints the node at ``address`` holds.

    :param address: ``host:port`` where this node answers.
    :param interval: seconds between passes; :param rate: hints per second per target.
    :param keys: the node's keys (its routes and peers' need a member's signature).
    :param transport: an injected transport (in-process tests); by default HTTP with
        :data:`REPLAY_TIMEOUT` and ``keys``.
    """

    NAME, WHAT, SKIPPED = "sdht-handoff", "hint replay", logging.DEBUG

    def __init__(self, address: str, interval: float, rate: float,
                 keys: Keys | None = None, transport: Transport | None = None) -> None:
        super().__init__(interval)
        self.address, self.rate = address, rate
        #: How it reaches its node and the targets (injected by in-process tests).
        self.transport = transport or Transport(REPLAY_TIMEOUT, keys, max_parallel=8)
        self.probe = transport or Transport(PROBE_TIMEOUT, keys, max_parallel=8)
        #: Targets whose last attempt failed: probed before hints are sent again.
        self.behind: set[str] = set()
        #: Targets that failed lately (the client's failure memory, with a short cooldown).
        self.health = NodeHealth(cooldown=RETRY_AFTER)

    def run_pass(self) -> int:
        """Replay to every target with hints (in parallel) once; return how many were
        delivered."""
        backlog = self.transport.request(self.address, "GET", "/v1/hints", admin=True).body
        if not isinstance(backlog, dict):
            return 0
        targets = [t for t in backlog if isinstance(t, str) and not self.health.is_suspect(t)]
        futures = [self.transport.submit(self.deliver, t) for t in targets]
        return sum(f.result() for f in futures)

    def deliver(self, target: str) -> int:
        """Deliver ``target``'s hints, oldest first, up to this pass's share of the rate;
        return how many the target acknowledged."""
        budget = max(1, int(self.rate * max(self.interval, 0.05)))
        delivered = 0
        if target in self.behind:
            try:
                self.probe.health(target)
            except SDHTError:
                self.health.failed(target)
                return 0
            self.behind.discard(target)
        while budget > 0 and not self.stopped.is_set():
            reply = self.transport.request(self.address, "POST", "/v1/hints/take",
                                           params={"target": target,
                                                   "limit": min(BATCH, budget)}, admin=True)
            seqs, entries = _taken(reply.body)
            if not seqs:
                break
            try:
                self.transport.request(target, "POST", "/v1/records", headers=MSGPACK,
                                       data=packed_array(entries))
            except TransportError as exc:
                self.health.failed(target)
                self.behind.add(target)
                log.debug("hints for %s wait: %s", target, exc)
                break
            except NodeError as exc:
                if exc.status is None or exc.status >= 500 or exc.status in (401, 403, 429):
                    self.health.failed(target)   # busy, or not trusting us yet: later
                    self.behind.add(target)
                    break
                log.warning("hints for %s refused, left to anti-entropy: %s", target, exc)
            self.health.answered(target)
            self.transport.request(self.address, "POST", "/v1/hints/done",
                                   params={"target": target}, data=packb(seqs),
                                   headers=MSGPACK, admin=True)
            delivered += len(seqs)
            budget -= len(seqs)
        return delivered


def _taken(body: object) -> tuple[list[int], list[bytes]]:
    """The sequences and packed entries of a ``/v1/hints/take`` answer (empty when odd)."""
    if not isinstance(body, dict):
        return [], []
    seqs, entries = body.get("seqs"), body.get("entries")
    if not (isinstance(seqs, list) and isinstance(entries, list) and len(seqs) == len(entries)
            and all(isinstance(e, bytes) for e in entries)):
        return [], []
    return seqs, entries


def start_from_config(address: str) -> Replayer | None:
    """Start the replayer of the node answering at ``address`` (settings from the
    environment); None when ``SDHT_HANDOFF_INTERVAL`` is 0."""
    from .auth import node_keys
    from .config import load_config
    cfg = load_config()
    if cfg["HANDOFF_INTERVAL"] <= 0:
        return None
    cfg["NODE_ID"] = cfg["NODE_ID"] or address
    return Replayer(address, cfg["HANDOFF_INTERVAL"], cfg["HINT_RATE"], node_keys(cfg)).start()


__all__ = ["BATCH", "REPLAY_TIMEOUT", "Replayer", "start_from_config"]
