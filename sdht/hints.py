"""Hinted handoff, the client's side: hand a write that missed a replica to one that has it.

The client coordinates writes (docs/design.md, "Flows"). When a write has its ``w``
acknowledgements but a replica of the key was skipped (suspect), failed, or is still silent
:data:`HINT_AFTER` seconds later, :class:`Hinter` sends the record to a replica that stored it
(``POST /v1/hints?target=...``), which keeps it and replays it to the missing replica when that
one answers again (:mod:`storage.hints`, :mod:`storage.handoff`).

Hints do **not** count toward ``w`` (no sloppy quorum): a write succeeds only with ``w`` real
replicas of the key, so ``r + w > n`` still gives read-your-writes, and hints only shorten the
time until all ``n`` hold the write (docs/operating.md, "Hinted handoff"). Sending is
asynchronous and batched per holder and target in one background thread; the queue is bounded
(:data:`MAX_QUEUED`), and what it drops (or a holder refuses) is left to anti-entropy.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Callable, Mapping

from .errors import SDHTError
from .kinds import Entry
from .nodeapi import MSGPACK
from .wire import BATCH, packed_array

log = logging.getLogger(__name__)

#: Seconds a replica may stay silent after the quorum was met before its write is hinted.
HINT_AFTER = 1.0
#: Hints waiting to be sent, at most; more are dropped (anti-entropy repairs them).
MAX_QUEUED = 100_000
#: Seconds the sending thread lingers with nothing to do before it ends.
IDLE_EXIT = 2.0
#: Seconds between looks at writes still outstanding.
TICK = 0.05
#: Seconds a process exiting waits for its clients' hints to be sent (a short script's writes
#: are hinted too); what is left is repaired by anti-entropy.
EXIT_FLUSH = 2.0

#: Every client's hinter with hints still to send, flushed at exit (weakly held).
_LIVE: "weakref.WeakSet[Hinter]" = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    deadline = time.monotonic() + EXIT_FLUSH
    for hinter in list(_LIVE):
        hinter.flush(max(0.0, deadline - time.monotonic()))


class Hinter:
    """The hints one client owes: watched writes, and a queue per ``(holder, target)``.

    :param request: the transport's ``request`` (sends ``POST /v1/hints``, signed).
    :param missed: called with a target each time a hint for it is queued (the health
        figures: the node is behind for a while).
    """

    def __init__(self, request: Callable, missed: Callable[[str], None] = lambda n: None) -> None:
        self.request, self.missed = request, missed
        self._watched: list[tuple[float, Future, str, Entry, list[str]]] = []
        self._queue: dict[str, list[tuple[Entry, list[str]]]] = {}   # target -> items
        self._queued = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        #: Counts since this client started: hints sent, and dropped (queue full, refused).
        self.sent = self.dropped = 0

    def hint(self, target: str, rec: Entry, holders: list[str]) -> None:
        """Queue ``rec`` (a register, or a sequence op: an entry of a kind clients write) as a
        hint for ``target``, to be kept by the first of ``holders`` that answers."""
        if not holders:
            return
        with self._cond:
            if self._queued >= MAX_QUEUED:
                self.dropped += 1
                return
            self._queue.setdefault(target, []).append((rec, holders))
            self._queued += 1
            self._wake()
        self.missed(target)

    def missing(self, rec: Entry, targets: list[str], acked: list[str],
                running: Mapping[str, Future]) -> None:
        """For a write that made its quorum: hint ``rec`` for each of ``targets`` that did
        not acknowledge it, at once when it was skipped or failed, or when its write (in
        ``running``) fails or stays silent :data:`HINT_AFTER` seconds; kept by one of
        ``acked``. Hints do not count toward ``w``."""
        for node in targets:
            if node in acked:
                continue
            if node in running:
                self.watch(node, rec, acked, running[node])
            else:
                self.hint(node, rec, acked)

    def watch(self, target: str, rec: Entry, holders: list[str], future: Future) -> None:
        """Hint ``rec`` for ``target`` unless ``future`` (its write there) succeeds within
        :data:`HINT_AFTER` seconds."""
        if not holders:
            return
        with self._cond:
            self._watched.append((time.monotonic() + HINT_AFTER, future, target, rec, holders))
            # No notify: the thread looks at watched writes every TICK, far within HINT_AFTER,
            # and waking it for each write (most sets watch their third replica) cost 5% of a
            # set's client time.
            self._start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued and watched hint is sent (or ``timeout`` passed); return
        whether all were."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queued or self._watched or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, TICK))
        return True

    def pending(self) -> int:
        """Hints queued or watched, not yet sent."""
        with self._cond:
            return self._queued + len(self._watched)

    # -- the sending thread -------------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the thread to send what is queued, starting it if it ended (the caller holds
        the lock)."""
        self._cond.notify_all()
        self._start()

    def _start(self) -> None:
        """Start the thread if it ended (the caller holds the lock)."""
        _LIVE.add(self)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="sdht-hints", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._cond:
                self._sort_watched()
                batch, self._queue, self._queued = self._queue, {}, 0
                self._busy = bool(batch)
                if not batch:
                    if not self._watched and time.monotonic() - idle_since > IDLE_EXIT:
                        self._thread = None
                        return
                    self._cond.wait(TICK)
                    continue
            for target, items in batch.items():
                self._send(target, items)
            idle_since = time.monotonic()
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _sort_watched(self) -> None:
        """Move watched writes that failed or stayed silent to the queue; forget those that
        succeeded (the caller holds the lock)."""
        now, keep = time.monotonic(), []
        for item in self._watched:
            due, fut, target, rec, holders = item
            if fut.done():
                if not fut.cancelled() and fut.exception() is None:
                    continue   # the replica took it
            elif now < due:
                keep.append(item)
                continue
            self._queue.setdefault(target, []).append((rec, holders))
            self._queued += 1
            self.missed(target)
        self._watched = keep

    def _send(self, target: str, items: list[tuple[Entry, list[str]]]) -> None:
        """Send ``target``'s hints, grouped by first holder, in batches; a holder that fails
        passes its share to the next holder of each record."""
        while items:
            by_holder: dict[str, list[tuple[Entry, list[str]]]] = {}
            for rec, holders in items:
                by_holder.setdefault(holders[0], []).append((rec, holders[1:]))
            items = []
            for holder, recs in by_holder.items():
                for i in range(0, len(recs), BATCH):
                    part = recs[i:i + BATCH]
                    try:
                        self.request(holder, "POST", "/v1/hints", params={"target": target},
                                     data=packed_array([r.pack() for r, _ in part]),
                                     headers=MSGPACK, admin=True)
                        self.sent += len(part)
                    except SDHTError as exc:
                        log.debug("hints for %s not kept by %s: %s", target, holder, exc)
                        rest = [(r, more) for r, more in part if more]
                        self.dropped += len(part) - len(rest)
                        items += rest
