"""The node as a CASPaxos acceptor: each prepare or accept on a name runs inside an LMDB write
transaction (docs/names.md), shared by the requests of the process that wait at the same time
(group commit: one fsync for all of them, and every answer only after it).

The transaction reads the name's state and the ring's epoch, applies the pure rule of
:mod:`sdht.kinds.name` and writes the new state, so the epoch fence and the state change are
one atomic step against a ring replacement (also a write transaction): once a staged ring is
stored, no proposal of an older ring lands here, and migration, which scans after every member
stored the staged ring, copies every claim accepted before. The state is stored as an entry of
the name kind, under its own LMDB key, so it moves with its range like any entry.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Mapping

from sdht import params as cluster_params
from sdht.kinds import name
from sdht.kinds.name import Answer, State
from sdht.wire import unpackb

from .http import ApiError
from .layout import data_key, packed, stored
from .store import Store

#: Limits stored states are decoded with: they were admitted once, under limits the ring may
#: have lowered since, and must still be read.
_STORED_LIMITS = {"max_key_bytes": cluster_params.TABLE["max_key_bytes"].high,
                  "max_value_bytes": cluster_params.TABLE["max_value_bytes"].high}
#: The meta keys the store keeps its ring and byte count under (storage/store.py).
_RING, _BYTES = b"ring", b"bytes"
#: Seconds an operation waits for the transaction that carries it, twice at most.
WAIT = 30.0
#: Seconds a worker reuses its count of names: counting reads every key the node holds.
COUNT_TTL = 5.0
_count_cache: dict[str, tuple[float, int]] = {}

Rule = Callable[[State | None, int], tuple[State | None, Answer]]


#: One acceptor operation: ``op(txn, node_epoch)`` applies a phase in a write transaction.
Op = Callable[[Any, int], Answer]


def prepare(store: Store, key: str, ballot: name.Ballot, epoch: int,
            params: Mapping[str, Any]) -> Op:
    """Phase 1 on ``key`` (:func:`sdht.kinds.name.on_prepare`), to :func:`run` in a write
    transaction."""
    return _operation(store, key, params,
                      lambda state, node_epoch: name.on_prepare(state, key, ballot, epoch,
                                                                node_epoch))


def accept(store: Store, key: str, ballot: name.Ballot, claim: name.Claim, epoch: int,
           params: Mapping[str, Any]) -> Op:
    """Phase 2 on ``key`` (:func:`sdht.kinds.name.on_accept`), to :func:`run` in a write
    transaction."""
    return _operation(store, key, params,
                      lambda state, node_epoch: name.on_accept(state, key, ballot, claim, epoch,
                                                               node_epoch))


def run(store: Store, op: Op) -> Answer:
    """Run ``op`` in a write transaction shared with the other operations of this process
    that wait for one at the same time (:class:`GroupCommit`); its answer, once committed."""
    return _group(store).run(op)


def run_together(store: Store, ops: list[Op]) -> list[tuple[Answer | None, Exception | None]]:
    """Run ``ops`` in one write transaction, in order (the worker's group commit,
    storage.groupcommit); each one's answer, or the error it failed with (then it may have
    been applied: it must not run again)."""
    batch = [_Op(op) for op in ops]
    _group(store).commit(batch)
    return [(op.answer, op.error) for op in batch]   # type: ignore[misc]


def _operation(store: Store, key: str, params: Mapping[str, Any], rule: Rule) -> Op:
    """The operation that applies ``rule`` to ``key``'s state and stores what it returns."""
    limits = {**params, **_STORED_LIMITS}

    def op(txn: Any, node_epoch: int) -> Answer:
        lkey = data_key(name.TAG, key)
        raw = txn.get(lkey, db=store.data)
        state = None if raw is None else name.from_wire(unpackb(packed(lkey, raw)), limits)
        new, answer = rule(state, node_epoch)
        if new is not state and new is not None:
            value = stored(new)
            txn.put(lkey, value, db=store.data)
            grown = len(value) - len(raw) if raw is not None else len(lkey) + len(value)
            # The node's byte count covers every entry (storage/store.py keeps it).
            store._add(txn, _BYTES, grown)
        return answer
    return op


def _group(store: Store) -> "GroupCommit":
    """The store's :class:`GroupCommit` (one per store: a store is opened by the process that
    uses it)."""
    group = vars(store).get("name_commits")
    if group is None:
        with _GROUPS_LOCK:
            group = vars(store).setdefault("name_commits", GroupCommit(store))
    return group


class GroupCommit:
    """Acceptor operations of one process that wait at once share one write transaction, so
    one fsync acknowledges them all (the answers go out only after it). The first to arrive
    leads: it commits everything queued, then hands the lead to the next one queued."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.queue: list[_Op] = []
        self.busy = False

    def run(self, fn: Callable[[Any, int], Answer]) -> Answer:
        """Run ``fn(txn, node_epoch)`` in a committed write transaction; return its answer."""
        op = _Op(fn)
        with self.lock:
            self.queue.append(op)
            leads, self.busy = not self.busy, True
        # Set by the leader that committed it, or that hands this op the lead.
        if not leads and not op.done.wait(WAIT):
            with self.lock:
                if op in self.queue:   # no leader took it in time: give it up
                    self.queue.remove(op)
                    raise ApiError(503, "busy", f"no write transaction in {WAIT:.0f}s")
            if not op.done.wait(WAIT):   # it is being committed: the answer is on its way
                raise ApiError(503, "busy", f"no commit in {2 * WAIT:.0f}s")
        if not op.finished:
            with self.lock:
                batch, self.queue = self.queue, []
            try:
                self.commit(batch)
            finally:
                with self.lock:
                    if self.queue:
                        self.queue[0].done.set()   # the next one leads
                    else:
                        self.busy = False
        return op.result()

    def commit(self, batch: list["_Op"]) -> None:
        """One write transaction for ``batch``; every op's answer or error is set."""
        try:
            with self.store.env.begin(write=True) as txn:
                ring = txn.get(_RING, db=self.store.meta)
                node_epoch = json.loads(bytes(ring))["epoch"] if ring is not None else 0
                for op in batch:
                    try:
                        op.answer = op.fn(txn, node_epoch)
                    except Exception as exc:   # this op's own failure: the others go on
                        op.error = exc
        except Exception as exc:   # the commit failed: nothing of the batch was stored
            for op in batch:
                op.answer, op.error = None, exc
        for op in batch:
            op.finished = True
            op.done.set()


class _Op:
    """One queued operation and its outcome."""

    def __init__(self, fn: Callable[[Any, int], Answer]) -> None:
        self.fn, self.done, self.finished = fn, threading.Event(), False
        self.answer: Answer | None = None
        self.error: BaseException | None = None

    def result(self) -> Answer:
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer


_GROUPS_LOCK = threading.Lock()


def count_names(store: Store, cache_key: str = "") -> int:
    """Names this node holds an accepted claim for, counted at most once per
    :data:`COUNT_TTL` seconds per process and ``cache_key`` (the data directory)."""
    when, count = _count_cache.get(cache_key, (float("-inf"), 0))
    if time.monotonic() - when < COUNT_TTL:
        return count
    count = 0
    with store.env.begin(db=store.data) as txn:
        for lkey, raw in txn.cursor():
            if lkey[8] == name.TAG and name.held(bytes(raw[:32]),
                                                 bytes(raw[32:32 + name.HEAD_BYTES])
                                                 ).accepted != name.ZERO:
                count += 1
    _count_cache[cache_key] = (time.monotonic(), count)
    return count
