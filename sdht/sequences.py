"""Sequences on the ring: a hashseq CRDT (:mod:`sdht.hashseq`) whose ops live under one key.

``ring.sequence(key)`` returns a :class:`Sequence`: a list many writers edit at once. Every edit
is an op, minted with the ring's proof of work and written to the key's replicas like a
register (``w`` acknowledgements of the current and of the future placement); a read asks ``r``
replicas for the summary of the op ids they hold, reads the ops (one range read, ``GET
/v1/sequence``) of each whose summary differs from what it knows, merges them by union and
computes the order, then sends each replica the ops it missed (read repair).
Concurrent appends never vanish and never interleave (docs/sequences.md).

A :class:`Sequence` keeps the ops it has seen. An append anchors after the last item it knows,
reading the replicas first when its knowledge is older than ``stale_after`` seconds (an
append therefore costs a write, like ``set``, and now and then a read); ``insert`` and
``remove`` by position always read first, as do ``items()``, ``len()`` and ``page()``. An op
whose write fails stays pending and goes out with the next write (or :meth:`Sequence.flush`):
the ops after it depend on it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, Mapping, NamedTuple

from . import hashseq
from .errors import InvalidRecord, KeyNotFound, NodeError, QuorumError, TransportError
from .kinds import common, sequence
from .kinds.sequence import OpEntry
from .quorum import MAX_REROUTES, Quorum
from .sequence_replicas import fetch, fetch_new, mint_op, repair, summarize, write
from .wire import now_us

log = logging.getLogger(__name__)

#: Seconds an append trusts what the Sequence last read before reading again.
STALE_AFTER = 2.0


class Item(NamedTuple):
    """One item of a sequence: its id (the op that inserted it) and its value."""

    id: bytes
    value: Any


class Sequence:
    """The sequence CRDT stored under ``key`` (use :meth:`sdht.Ring.sequence`).

    :param quorum: the ring's replica requests.
    :param key: the sequence's key (at most :data:`sdht.kinds.sequence.MAX_KEY_BYTES`).
    :param stale_after: seconds an append trusts the ops it last read.
    """

    def __init__(self, quorum: Quorum, key: str, stale_after: float = STALE_AFTER) -> None:
        self.quorum = quorum
        self.handle = quorum.handle
        p = self.handle.current().params
        raw = common.check_key(key, p)
        if len(raw) > sequence.MAX_KEY_BYTES:
            raise InvalidRecord(f"a sequence's key is at most {sequence.MAX_KEY_BYTES} bytes")
        self.key = key
        self.stale_after = stale_after
        self._seq = hashseq.HashSeq()
        self._entries: dict[bytes, OpEntry] = {}      # op id -> its entry
        self._proofs: dict[tuple, bytes] = {}         # (nonce, t, w) -> op id, checked once
        self._pending: list[OpEntry] = []             # written, not yet acknowledged
        self._read_at = -float("inf")
        self._summarised: tuple[int, bytes] = (-1, b"")
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<Sequence {self.key!r}: {len(self._entries)} ops known>"

    # -- reading ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the ops of ``r`` replicas, merge them into what this Sequence knows, and send
        each replica that answered the ops it lacks (read repair, in the background).

        :raises QuorumError: when fewer than ``r`` replicas answered.
        """
        with self._lock:
            self._refresh()

    def items(self) -> list[Any]:
        """The items in order, after a read (:meth:`refresh`)."""
        with self._lock:
            self._refresh()
            return self._seq.items()

    def entries(self) -> list[Item]:
        """The items in order with their ids, after a read."""
        with self._lock:
            self._refresh()
            return self._entries_known()

    def page(self, limit: int, before: bytes | str | None = None) -> list[Item]:
        """The newest ``limit`` items first (a timeline's page), after a read; with
        ``before`` (an item id, or its hex), the ones that come before that item.

        :raises KeyNotFound: when ``before`` names no visible item.
        :raises InvalidRecord: when ``before`` is not an id.
        """
        if type(limit) is not int or limit < 0:
            raise InvalidRecord("limit must be a non-negative integer")
        items = self.entries()
        end = len(items)
        if before is not None:
            try:
                wanted = bytes.fromhex(before) if isinstance(before, str) else bytes(before)
            except (TypeError, ValueError):
                raise InvalidRecord("before must be an item id (bytes, or hex)") from None
            end = next((i for i, it in enumerate(items) if it.id == wanted), -1)
            if end < 0:
                raise KeyNotFound(f"no item {wanted.hex()[:64]} in {self.key!r}")
        return items[max(0, end - limit):end][::-1]

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._seq)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items())

    def __getitem__(self, index: int) -> Any:
        return self.items()[index]

    # -- writing ------------------------------------------------------------------------------

    def append(self, item: Any) -> bytes:
        """Add ``item`` after the last item known (reading first when that knowledge is older
        than ``stale_after``); return the new item's id once ``w`` replicas hold it.

        :raises InvalidRecord: for an item that is not plain msgpack data
            (``ValueTooLarge`` past ``max_value_bytes``).
        :raises QuorumError: when fewer than ``w`` replicas acknowledged (the op stays
            pending and is written with the next write).
        """
        self._check_item(item)
        with self._lock:
            if time.monotonic() - self._read_at > self.stale_after:
                self._refresh()
            return self._write(self._seq.append(item))

    def insert(self, index: int, item: Any) -> bytes:
        """Insert ``item`` at position ``index`` (as ``list.insert``) of the sequence as read
        now; return its id."""
        self._check_item(item)
        with self._lock:
            self._refresh()
            n = len(self._seq)
            index = max(0, min(n, index + n if index < 0 else index))
            return self._write(self._seq.insert(index, item))

    def remove(self, index: int) -> Any:
        """Remove the item at ``index`` of the sequence as read now; return its value (a
        tombstone stays, docs/sequences.md).

        :raises IndexError: when there is no such position.
        """
        with self._lock:
            self._refresh()
            items = self._seq.items()
            value = items[index]    # IndexError as a list's
            self._write(self._seq.remove(index % len(items)))
            return value

    def remove_id(self, item_id: bytes) -> Any:
        """Remove the item whose id is ``item_id``; return its value.

        :raises KeyNotFound: when no visible item has that id.
        """
        with self._lock:
            self._refresh()
            ids = self._seq.ids()
            if item_id not in ids:
                raise KeyNotFound(f"no item {item_id.hex()[:64]} in {self.key!r}")
            index = ids.index(item_id)
            value = self._seq.items()[index]
            self._write(self._seq.remove(index))
            return value

    def flush(self) -> None:
        """Write the ops whose write failed earlier, until ``w`` replicas hold them.

        :raises QuorumError: when they still do not.
        """
        with self._lock:
            if self._pending:
                write(self.quorum, self.key, list(self._pending))
                self._pending.clear()

    # -- inside -------------------------------------------------------------------------------

    def _check_item(self, item: Any) -> None:
        common.check_value(item, self.handle.current().params)

    def _entries_known(self) -> list[Item]:
        ids = self._seq.ids()
        return [Item(i, v) for i, v in zip(ids, self._seq.items())]

    def _write(self, op: Any) -> bytes:
        entry = mint_op(self.key, op, self.handle.current().params["min_work"])
        self._entries[op.id] = entry
        self._pending.append(entry)
        write(self.quorum, self.key, list(self._pending))
        self._pending.clear()
        return op.id

    def _refresh(self) -> None:
        """Ask ``r`` replicas for the summary of their ops; read the ops of those whose
        summary differs from what this Sequence knows, one at a time, merging each (the next
        may match by then); repair the replicas that lack ops."""
        for _ in range(MAX_REROUTES):
            view = self.handle.current()
            p = view.params
            replicas = view.readers.for_key(self.key)
            need = min(p["r"], len(replicas))
            calls = {n: (summarize, self.quorum, n, self.key)
                     for n in self.quorum.health.order(replicas)}
            first = dict(list(calls.items())[:need])
            replies, errors, epochs = self.quorum.gather(
                first, need, spares={n: c for n, c in calls.items() if n not in first})
            if self.handle.noticed(epochs):
                continue
            held: dict[str, set[bytes]] = {}
            for node, digest in replies.items():
                self._hold(node, digest, p, held, errors)
            for node in (n for n in calls if n not in replies):   # a faulty one's stand-in
                if len(held) >= need:
                    break
                try:
                    digest, _ = self.quorum.call(node, summarize, self.quorum, node, self.key)
                except (NodeError, TransportError) as exc:
                    errors[node] = str(exc)
                    continue
                self._hold(node, digest, p, held, errors)
            if len(held) < need:
                raise QuorumError(f"read of sequence {self.key!r}: {len(held)} of {need} "
                                  "replicas answered", self.key, need, len(held), errors)
            repair(self.quorum, held, self._entries)
            self._read_at = time.monotonic()
            return
        raise QuorumError(f"read of sequence {self.key!r}: the ring kept changing", self.key)

    def _hold(self, node: str, digest: bytes, params: Mapping[str, Any],
              held: dict[str, set[bytes]], errors: dict[str, str]) -> None:
        """Note in ``held`` the ops ``node`` holds: what this Sequence knows when its summary
        is ``digest``, else the ops it reads from it, checked and merged. A replica whose ops
        cannot be read, or fail their checks, is noted in ``errors`` instead."""
        known = set(self._entries)
        if digest == self._summary():
            held[node] = known
            return
        try:   # knowing ops already, read its ids and then only the ops missing
            if known:
                objs, ids = self.quorum.call(node, fetch_new, self.quorum, node, self.key, known)
                held[node] = ids | self._merge(objs, params)
            else:
                objs, _ = self.quorum.call(node, fetch, self.quorum, node, self.key)
                held[node] = self._merge(objs, params)
        except (InvalidRecord, NodeError, TransportError) as exc:
            errors[node] = str(exc)
            log.warning("ignoring %s's ops of %r: %s", node, self.key[:100], exc)

    def _summary(self) -> bytes:
        # Ops are only ever added: the count says whether the summary is still current.
        if self._summarised[0] != len(self._entries):
            self._summarised = (len(self._entries), sequence.summary(self._entries))
        return self._summarised[1]

    def _merge(self, objs: list, params: Mapping[str, Any]) -> set[bytes]:
        """Check and apply the ops one replica answered; return the ids it holds. Each proof
        is checked once (key, op id, work and clock), then remembered.

        :raises InvalidRecord: when one fails: the replica is faulty.
        """
        ids = set()
        now = now_us()
        for obj in objs:
            proof = (obj.get("n"), obj.get("t"), obj.get("w"))
            plain = type(proof[0]) is bytes and type(proof[1]) is int \
                and type(proof[2]) in (int, float)
            known = self._proofs.get(proof) if plain else None
            if known is not None:
                ids.add(known)
                continue
            entry = sequence.from_wire(obj, params)
            if entry.key != self.key:
                raise InvalidRecord(f"an op of another key, {entry.key[:100]!r}")
            sequence.check(entry, params, now)
            self._proofs[proof] = entry.op.id
            ids.add(entry.op.id)
            if entry.op.id not in self._entries:
                self._entries[entry.op.id] = entry
                self._seq.apply(entry.op)
        return ids
