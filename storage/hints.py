"""Hinted handoff, the holder's side: hints ``(target, entry)`` kept in the node's own LMDB.

A client whose write could not reach one of a key's replicas (down, or silent past
:data:`sdht.hints.HINT_AFTER`) sends the entry to a replica that did store it, as a hint for
the missing one (``POST /v1/hints``, :mod:`storage.hint_routes`). The holder keeps it here until
its background replayer (:mod:`storage.handoff`) has delivered it to the target, which merges it
under the ordinary accept rule, so a replayed hint can never regress a newer version.

One sub-database, ``hints``, holds two kinds of keys:

* ``b"h" || target length (1) || target || sequence (8, big-endian)`` ->
  ``created, microseconds (8) || the packed entry``: hints in arrival order per target, so the
  oldest is the first key of the target's prefix;
* ``b"s" || target`` -> ``count (8) || bytes (8)``: each target's totals, kept in the same write
  transaction, so health reads the backlog without a scan.

The caps (:data:`DEFAULT_MAX_BYTES` in all, :data:`DEFAULT_MAX_AGE` per hint; settings
``SDHT_HINT_MAX_BYTES`` and ``SDHT_HINT_MAX_AGE``) bound what a node keeps: past them new hints
are dropped and expired ones deleted, and anti-entropy is the fallback (docs/operating.md).
"""
from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import lmdb

#: Bytes of hints a node keeps for all targets together (64 MiB); past it, new hints are
#: dropped (anti-entropy repairs what they would have).
DEFAULT_MAX_BYTES = 64 << 20
#: Seconds a hint is kept: Cassandra's ``max_hint_window`` is 3 hours. An older one is deleted
#: undelivered; a replica down that long is brought back by anti-entropy.
DEFAULT_MAX_AGE = 3 * 3600.0
#: The longest target name (``host:port``) a hint may carry.
MAX_TARGET_BYTES = 255

_U64 = struct.Struct(">Q")
_STAT = struct.Struct(">QQ")
_SEQ = b"\x00seq"
_OPEN_LOCK = threading.Lock()


@dataclass
class Backlog:
    """What a node holds for one target: hints, their bytes, and the oldest one's age (s)."""

    count: int
    bytes: int
    oldest_age: float

    def to_json(self) -> dict[str, Any]:
        """The backlog as health shows it."""
        return {"count": self.count, "bytes": self.bytes,
                "oldest_age": round(self.oldest_age, 3)}


def _prefix(target: str) -> bytes:
    raw = target.encode("utf-8")
    return b"h" + bytes([len(raw)]) + raw


def _now_us() -> int:
    return time.time_ns() // 1000


class Hints:
    """The hints of one store's environment (open it where the store is open: per worker).

    :param env: the node's LMDB environment (:attr:`storage.store.Store.env`).
    :param max_bytes: bytes of hints kept in all; :param max_age: seconds one is kept.
    """

    def __init__(self, env: lmdb.Environment, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age: float = DEFAULT_MAX_AGE) -> None:
        self.env = env
        # In a write transaction begun first: open_db() alone waits for LMDB's write lock
        # holding the GIL, and a thread holding that lock (a write in progress) needs the GIL
        # to finish it: the worker would hang. begin() waits without the GIL.
        with env.begin(write=True) as txn:
            self.db = env.open_db(b"hints", txn=txn)
        self.max_bytes, self.max_age = max_bytes, max_age

    # -- keeping ----------------------------------------------------------------------------

    def add(self, target: str, packed: list[bytes], now_us: int | None = None) -> int:
        """Keep ``packed`` entries (already admitted) as hints for ``target``, in one write
        transaction; return how many were kept: the rest would pass :attr:`max_bytes`."""
        now_us = _now_us() if now_us is None else now_us
        prefix, kept, added = _prefix(target), 0, 0
        with self.env.begin(write=True, db=self.db) as txn:
            room = self.max_bytes - self._total(txn)
            seq = _U64.unpack(txn.get(_SEQ) or _U64.pack(0))[0]
            for item in packed:
                size = len(item) + len(prefix) + 16
                if size > room:
                    break
                seq += 1
                txn.put(prefix + _U64.pack(seq), _U64.pack(now_us) + item)
                room -= size
                kept += 1
                added += size
            if kept:
                txn.put(_SEQ, _U64.pack(seq))
                self._count(txn, target, kept, added)
        return kept

    def take(self, target: str, limit: int, now_us: int | None = None
             ) -> tuple[list[tuple[int, int, bytes]], int]:
        """Return up to ``limit`` of ``target``'s oldest hints as ``(sequence, created us,
        packed entry)``, and how many expired ones (older than :attr:`max_age`) were deleted
        on the way."""
        now_us = _now_us() if now_us is None else now_us
        cutoff = now_us - int(self.max_age * 1e6)
        prefix, out, expired = _prefix(target), [], []
        with self.env.begin(db=self.db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix) or len(out) >= limit:
                        break
                    seq, created = _U64.unpack(key[len(prefix):])[0], _U64.unpack(value[:8])[0]
                    (expired if created < cutoff else out).append(
                        (seq, created, bytes(value[8:])))
        if expired:
            self.done(target, [seq for seq, _, _ in expired])
        return out, len(expired)

    def done(self, target: str, seqs: list[int]) -> list[int]:
        """Delete ``target``'s hints ``seqs`` (delivered, or expired); return the creation
        times (us) of those that were still there."""
        prefix, created, freed = _prefix(target), [], 0
        with self.env.begin(write=True, db=self.db) as txn:
            for seq in seqs:
                key = prefix + _U64.pack(seq)
                value = txn.pop(key)
                if value is not None:
                    created.append(_U64.unpack(value[:8])[0])
                    freed += len(value) - 8 + len(prefix) + 16
            if created:
                self._count(txn, target, -len(created), -freed)
        return created

    # -- reading ----------------------------------------------------------------------------

    def backlog(self, now_us: int | None = None) -> dict[str, Backlog]:
        """Return each target's backlog (targets with hints only)."""
        now_us = _now_us() if now_us is None else now_us
        out: dict[str, Backlog] = {}
        with self.env.begin(db=self.db) as txn:
            cursor = txn.cursor()
            stats = []
            if cursor.set_range(b"s"):
                for key, value in cursor:
                    if not key.startswith(b"s"):
                        break
                    stats.append((bytes(key[1:]).decode("utf-8"), *_STAT.unpack(value)))
            for target, count, size in stats:
                if not count:
                    continue
                first = cursor.set_range(_prefix(target)) and cursor.value()
                created = _U64.unpack(first[:8])[0] if first else now_us
                out[target] = Backlog(count, size, max(0.0, (now_us - created) / 1e6))
        return out

    def _total(self, txn: lmdb.Transaction) -> int:
        total = 0
        cursor = txn.cursor()
        if cursor.set_range(b"s"):
            for key, value in cursor:
                if not key.startswith(b"s"):
                    break
                total += _STAT.unpack(value)[1]
        return total

    def _count(self, txn: lmdb.Transaction, target: str, count: int, size: int) -> None:
        key = b"s" + target.encode("utf-8")
        raw = txn.get(key)
        old_count, old_size = _STAT.unpack(raw) if raw else (0, 0)
        new = (max(0, old_count + count), max(0, old_size + size))
        if new[0]:
            txn.put(key, _STAT.pack(*new))
        else:
            txn.delete(key)


def node_hints() -> Hints:
    """The hints of the store of the node serving this request, with the node's caps
    (``SDHT_HINT_MAX_BYTES``, ``SDHT_HINT_MAX_AGE``)."""
    from flask import current_app

    from .http import store
    cfg = current_app.config
    return hints_of(store(), cfg["HINT_MAX_BYTES"], cfg["HINT_MAX_AGE"])


def hints_of(store: Any, max_bytes: int = DEFAULT_MAX_BYTES,
             max_age: float = DEFAULT_MAX_AGE) -> Hints:
    """Return the :class:`Hints` of ``store`` (a :class:`storage.store.Store`), opened once
    per store object: the store is opened per process, and so are its hints."""
    held = getattr(store, "_hints", None)
    if held is None:
        with _OPEN_LOCK:
            held = getattr(store, "_hints", None)
            if held is None:
                held = Hints(store.env, max_bytes, max_age)
                store._hints = held
    return held
