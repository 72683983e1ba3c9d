"""Replica requests sent from the caller's thread and read as their answers arrive (issue 16).

A quorum call run on the fan-out pool costs the client two thread hand-overs, there and back:
0.39 ms of client CPU in a ``set`` of three calls (docs/benchmarks.md). For the requests every
``get`` and ``set`` makes (:meth:`sdht.nodeapi.NodeAPI.get_record_call`,
``put_record_call``), :class:`Polled` sends each replica's request from the caller's thread on
a kept-alive connection (:meth:`sdht.transport.Transport.begin`), waits on their sockets with
``poll(2)``, and reads an answer once it is whole: the caller never waits on one replica's
socket while another has answered.

Everything else goes to the pool, as :meth:`sdht.quorum.Quorum.gather` runs it: all of a
gather's requests when one of them cannot be sent so (no idle connection, a large body, a
failed send); and, once one answer fails or needs another request (``after``) or the deadline
passes, every request still running. A gather that has enough answers waits a moment more for
the rest (:data:`TRAIL_SHARE`: a set's third replica is usually just behind), then hands the
requests still running to the pool too: their answers are read there, for the hints and the
replication delay.
"""
from __future__ import annotations

import select
import time
from concurrent.futures import Future
from typing import Any, Callable, Mapping

from .errors import SDHTError
from .nodeapi import Call

#: Poll events of a socket with something to read (an answer, or its end).
_READY = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
#: Answers read per gather at most, all replicas together: every loop is bounded (a replica
#: trickling its answer a byte per wake-up goes to the pool past it).
MAX_WAKES = 64
#: Once a gather has enough answers, how long it still waits here for the rest: this share of
#: the time the answers so far took, and at most ``TRAIL_MAX`` seconds (``poll(2)`` counts
#: whole milliseconds: a shorter wait for a silent replica lasts one). A set's third replica
#: answers 0.2 ms after the second at the median, 0.8 ms at p99; read here, it costs the client
#: less than a pool thread's hand-over and that thread's contest for the GIL with the caller's
#: next call: 0.82x the client's CPU per set, the same sets/s (docs/benchmarks.md, session 9).
TRAIL_SHARE = 0.5
TRAIL_MAX = 0.002

#: ``after(node, result)``: None when ``result`` is the call's, else the pool call ``(fn, *args)``
#: whose result is (a write's 409, whose higher version the replica must show).
After = Callable[[str, Any], "tuple | None"]


def trail_deadline(began: float, now: float, deadline: float) -> float:
    """When a gather that began at ``began`` and had enough answers at ``now`` stops waiting
    for the rest: :data:`TRAIL_SHARE` of its time so far, at most :data:`TRAIL_MAX`, and never
    past its ``deadline``."""
    return min(deadline, now + min(TRAIL_MAX, TRAIL_SHARE * max(0.0, now - began)))


class Polled:
    """The requests of one gather, sent from the caller's thread when every one of ``calls``
    (by node) can be: then :attr:`sent` holds them all, else none (the others were handed to
    the pool at once and are in :attr:`handed`)."""

    def __init__(self, quorum: Any, calls: Mapping[str, Call], after: After | None) -> None:
        self.quorum, self.after = quorum, after
        # node -> (Sent, the health's request id, when it was sent)
        self.sent: dict[str, tuple[Any, int, float]] = {}
        #: Requests sent here and then handed to the pool, by node.
        self.handed: dict[str, Future] = {}
        health = quorum.health
        self.began = time.monotonic()
        begin = getattr(quorum.handle.transport, "begin", None)   # a transport that can
        for node, call in calls.items():
            sent = begin(node, call) if begin is not None else None
            if sent is None:
                self.hand_over()
                return
            self.sent[node] = (sent, health.started(node), time.monotonic())

    def gather(self, met: Callable[[], bool], results: dict[str, Any], errors: dict[str, str],
               epochs: list[int]) -> None:
        """Read answers into ``results`` (errors into ``errors``, epochs into ``epochs``) until
        ``met()`` and a short wait for the rest (:data:`TRAIL_SHARE`) are over, or nothing is
        left here; what is left goes to the pool (:attr:`handed`)."""
        poller = select.poll()
        for sent, _, _ in self.sent.values():
            poller.register(sent.fileno(), select.POLLIN)
        by_fd = {sent.fileno(): node for node, (sent, _, _) in self.sent.items()}
        deadline = time.monotonic() + self.quorum.handle.transport.timeout[1]
        trailing = False
        for _ in range(MAX_WAKES):
            if not self.sent:
                break
            if not trailing and met():
                trailing, deadline = True, trail_deadline(self.began, time.monotonic(), deadline)
            left = deadline - time.monotonic()
            events = poller.poll(max(0.0, left) * 1000.0) if left > 0 else []
            if not events:
                break   # the deadline passed: the pool reads the Timeout
            woke = time.monotonic()   # when these answers were in (reading one delays the next)
            for fd, mask in events:
                node = by_fd[fd]
                whole = self.sent[node][0].whole() if mask & _READY else None
                if whole is False:
                    continue    # part of the answer: wait for the rest
                poller.unregister(fd)
                if whole is None or not self._finish(node, woke, results, errors, epochs):
                    self.hand_over()   # a failure, or another framing: the pool reads it
                    return
        # Answers already whole are read here, not by a pool thread (the third replica of a
        # write often is); the rest goes to the pool.
        woke = time.monotonic()
        for node in [n for n, (sent, _, _) in self.sent.items() if sent.whole() is True]:
            if not self._finish(node, woke, results, errors, epochs):
                break
        self.hand_over()

    def _finish(self, node: str, woke: float, results: dict[str, Any], errors: dict[str, str],
                epochs: list[int]) -> bool:
        """Read ``node``'s whole answer, in by ``woke``; False when the gather must go on with
        the pool (it failed, or needs another request, handed over)."""
        sent, rid, began = self.sent.pop(node)
        try:
            result = self._value(node, sent, rid, woke - began)
        except SDHTError as exc:
            errors[node] = str(exc)
            return False
        follow = self.after(node, result) if self.after else None
        if follow is not None:
            self.handed[node] = self.quorum.handle.transport.submit(self.quorum.call, node,
                                                                    *follow)
            return False
        results[node], epoch = result
        epochs.append(epoch)
        return True

    def hand_over(self) -> None:
        """Hand every request still sent here to the pool, which reads its answer."""
        submit = self.quorum.handle.transport.submit
        for node, (sent, rid, _) in self.sent.items():
            fut = self.handed[node] = submit(self._in_pool, node, sent, rid)
            # A transport closed first cancels it: its connection is closed, not left open.
            fut.add_done_callback(lambda f, sent=sent: f.cancelled() and sent.close())
        self.sent.clear()

    def _in_pool(self, node: str, sent: Any, rid: int) -> Any:
        result = self._value(node, sent, rid)
        follow = self.after(node, result) if self.after else None
        return result if follow is None else self.quorum.call(node, *follow)

    def _value(self, node: str, sent: Any, rid: int, took: float | None = None) -> Any:
        """The call's result from ``sent``'s answer, noted in the health by
        :meth:`sdht.quorum.Quorum.ended` (``took``: its time, when not until now)."""
        return self.quorum.ended(node, rid, sent.finish, took=took)
