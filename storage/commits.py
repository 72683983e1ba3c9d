"""Shared write transactions: the threads of one process that want a write transaction at the
same moment share one durable commit (issue 16).

Every entry the store writes goes through here (:meth:`storage.store.Store.put_many`): batch
writes (``POST /v1/records``: clients' batches, migration, anti-entropy, hint replay) and
one-record writes on the worker's pool threads, the loop's turn-end group
(:mod:`storage.groupcommit`), and the acceptor's phases. The store's housekeeping (a ring's
replacement, a range's deletion, purges, the hash tree's fold) takes transactions of its own.

The first caller to arrive leads: it runs every operation queued meanwhile in one LMDB write
transaction, in the order they were queued, and commits once (one durable commit, one pair of
fsyncs, for all of them); only then are their callers answered. Then the lead passes to the
next caller queued. A lone caller runs at once, as it would alone.

Each operation of a shared transaction runs in a nested transaction of its own, so one that
fails is rolled back alone: its caller gets its error and nothing of it is stored, and the
others are committed. If the commit itself fails, nothing of the group was stored and every
caller gets that error. LMDB serialises write transactions across processes (gunicorn's
workers); this shares them within one.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import lmdb

#: Seconds a caller waits for the transaction that carries it, twice at most: first for a
#: leader to take it, then for that leader's commit.
WAIT = 30.0

#: One operation: ``fn(txn)`` reads and writes in the write transaction ``txn``; its result
#: is its caller's once committed.
Operation = Callable[[Any], Any]
#: What an operation came to: ``(result, None)``, or ``(None, the error)`` (nothing of it stored).
Outcome = tuple[Any, "BaseException | None"]


class Busy(Exception):
    """No write transaction carried the operation in time (the node answers 503 ``busy``)."""


class Commits:
    """The write transactions of one LMDB environment in one process, shared by the callers
    that wait for one at once."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.lock = threading.Lock()
        self.queue: list[_Ticket] = []
        self.leading = False

    def run(self, fn: Operation) -> Any:
        """Run ``fn(txn)`` in a committed write transaction; return its result, or raise its
        error (then nothing of it was stored).

        :raises Busy: when no transaction carried it in time."""
        [(result, error)] = self.run_all([fn])
        if error is not None:
            raise error
        return result

    def run_all(self, fns: list[Operation]) -> list[Outcome]:
        """Run ``fns`` in order, in the same committed write transaction; what each came to.

        :raises Busy: when no transaction carried them in time."""
        ticket = _Ticket(fns)
        with self.lock:
            self.queue.append(ticket)
            leads, self.leading = not self.leading, True
        # Set by the leader that committed it, or that hands this ticket the lead.
        if not leads and not ticket.done.wait(WAIT):
            with self.lock:
                # Still queued and not handed the lead (the hand-off sets it under this lock):
                # no leader took it, so it leaves the queue unrun.
                if ticket in self.queue and not ticket.done.is_set():
                    self.queue.remove(ticket)
                    raise Busy(f"no write transaction in {WAIT:.0f}s")
            if not ticket.done.wait(WAIT):   # it is being committed: the outcome is on its way
                raise Busy(f"no commit in {2 * WAIT:.0f}s")
        if ticket.outcomes is None:   # this caller leads
            with self.lock:
                group, self.queue = self.queue, []
            try:
                self.commit(group)
            finally:
                with self.lock:
                    if self.queue:
                        self.queue[0].done.set()   # the next one leads
                    else:
                        self.leading = False
        assert ticket.outcomes is not None
        return ticket.outcomes

    def commit(self, group: list["_Ticket"]) -> None:
        """One write transaction for every operation of ``group``, each in a nested one of its
        own when it has company; every ticket's outcomes are set and its caller woken."""
        fns = [fn for ticket in group for fn in ticket.fns]
        outcomes: list[Outcome] = []
        try:
            with self.env.begin(write=True) as txn:
                if len(fns) == 1:   # alone: its failure aborts the transaction, which is its own
                    outcomes.append((fns[0](txn), None))
                else:
                    outcomes = [self._nested(txn, fn) for fn in fns]
        except Exception as exc:   # noqa: BLE001  not committed: nothing of the group was stored
            outcomes = [(None, exc)] * len(fns)
        for ticket in group:
            ticket.outcomes, outcomes = outcomes[:len(ticket.fns)], outcomes[len(ticket.fns):]
            ticket.done.set()

    def _nested(self, txn: Any, fn: Operation) -> Outcome:
        """``fn`` in a nested transaction of ``txn``: its writes join ``txn`` only if it
        returns."""
        try:
            with self.env.begin(write=True, parent=txn) as child:
                return fn(child), None
        except Exception as exc:   # noqa: BLE001  rolled back: its caller gets the error
            return None, exc


class _Ticket:
    """One caller's operations, waiting for their transaction, and what they came to."""

    def __init__(self, fns: list[Operation]) -> None:
        self.fns = fns
        self.done = threading.Event()
        self.outcomes: list[Outcome] | None = None
