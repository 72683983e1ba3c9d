"""The node's LMDB store: records keyed by ``position || key``, plus the node's metadata.

Sub-databases:

* ``data``: ``position (8 bytes, big-endian) || UTF-8 key`` -> a 49-byte header ``t, w, digest,
  tombstone flag`` then the packed record, so one ring range is one cursor scan and the accept
  rule, the hash tree and anti-entropy read the header alone, never decoding a stored record;
* ``meta``: the node's ring view (JSON) and counters (accepted writes, stored bytes, sync);
* ``tree``: the hash tree over positions (:mod:`storage.tree`), updated in the same write
  transaction as the records, so anti-entropy never rescans the store.

Every read-compare-write of the accept rule runs inside one LMDB write transaction, which LMDB
serialises across threads and processes, so concurrent writers cannot lose the higher score.
Commits are synchronous by default: an acknowledged write survives ``kill -9``.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple

import lmdb

from sdht.errors import ConfigError
from sdht.kinds.register import Record, outranks, score
from sdht.ring import RING_SIZE, RingView, position
from sdht.sync import node_range

from .tree import Tree

_U64 = struct.Struct(">Q")
_REVISION, _BYTES, _RING = b"revision", b"bytes", b"ring"
_SYNC_ROUNDS, _SYNC_DIFFS, _PURGED = b"sync_rounds", b"sync_differences", b"tombstones_purged"

#: Outcomes of a write.
STORED, SAME, SUPERSEDED = "stored", "same", "superseded"


@dataclass
class WriteResult:
    """What happened to one incoming record, and what the node holds afterwards."""

    status: str
    held: Held


def data_key(key: str) -> bytes:
    """Return the LMDB key of ``key``: its ring position then its UTF-8 bytes."""
    raw = key.encode("utf-8")
    return _U64.pack(position(raw)) + raw


#: The header before every stored record: t (int64), w (float64), digest (32 bytes), deleted.
_HEAD = struct.Struct(">qd32s?")
HEADER_BYTES = _HEAD.size
#: Version of the on-disk layout, kept in meta; a store of another layout is refused.
FORMAT = b"2"


class Held(NamedTuple):
    """What a node holds for a key, as read from the stored header alone."""

    t: int
    w: float
    digest: bytes
    deleted: bool

    def score(self, decay: float) -> float:
        """The held record's score (see :func:`sdht.kinds.register.score`)."""
        return score(self.w, self.t, decay)


def held(raw: bytes) -> Held:
    """Return the header of a stored value."""
    return Held(*_HEAD.unpack_from(raw))


def packed(raw: bytes) -> bytes:
    """Return the packed record of a stored value (what travels on the wire)."""
    return bytes(raw[_HEAD.size:])


def stored(rec: Record) -> bytes:
    """Return the stored value of ``rec``: its header then its packed bytes."""
    return _HEAD.pack(rec.t, rec.w, rec.digest, rec.deleted) + rec.pack()


class Store:
    """One LMDB environment. Open it in the process that uses it (never across a fork)."""

    def __init__(self, path: str, map_size: int = 4 << 30, sync: bool = True) -> None:
        os.makedirs(path, exist_ok=True)
        # map_size is address space, not disk: 4 GiB by default (py-lmdb's own is 10 MiB).
        self.env = lmdb.open(path, map_size=map_size, max_dbs=4, sync=sync, metasync=sync)
        self.data = self.env.open_db(b"data")
        self.meta = self.env.open_db(b"meta")
        self.tree = Tree(self.env.open_db(b"tree"))
        self._ring_cache: tuple[bytes, RingView] | None = None
        self._check_format()

    def _check_format(self) -> None:
        """Mark a new store with :data:`FORMAT`; refuse one written in another layout."""
        with self.env.begin(write=True) as txn:
            found = txn.get(b"format", db=self.meta)
            if found is None and txn.stat(self.data)["entries"] == 0:
                txn.put(b"format", FORMAT, db=self.meta)
            elif found != FORMAT:
                raise ConfigError(f"{self.env.path()} holds data in another sdht layout "
                                  f"({found!r}, this version reads {FORMAT!r})")

    def close(self) -> None:
        """Close the environment."""
        self.env.close()

    # -- ring view ----------------------------------------------------------------------------

    def ring(self) -> RingView | None:
        """Return the latest ring view this node has stored, or None."""
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(_RING)
        if raw is None:
            return None
        cached = self._ring_cache
        if cached is None or cached[0] != raw:
            cached = (raw, RingView.from_json(json.loads(raw)))
            self._ring_cache = cached
        return cached[1]

    def replace_ring(self, view: RingView) -> tuple[bool, RingView | None]:
        """Store ``view`` only if its epoch is higher than the stored one's.

        :returns: ``(replaced, view held afterwards)``.
        """
        with self.env.begin(db=self.meta, write=True) as txn:
            raw = txn.get(_RING)
            current = RingView.from_json(json.loads(raw)) if raw is not None else None
            if current is not None and view.epoch <= current.epoch:
                return False, current
            txn.put(_RING, json.dumps(view.to_json(), sort_keys=True).encode())
        return True, view

    # -- records ------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """Return the packed record of ``key``, or None."""
        return self.get_many([key])[0]

    def get_many(self, keys: Iterable[str]) -> list[bytes | None]:
        """Return the packed records of ``keys`` (None for missing), in one read transaction."""
        with self.env.begin(db=self.data) as txn:
            raws = [txn.get(data_key(k)) for k in keys]
        return [None if raw is None else packed(raw) for raw in raws]

    def put_many(self, records: list[Record], params: Mapping[str, Any]) -> list[WriteResult]:
        """Apply the accept rule to each record in one write transaction.

        Every record must already have passed :func:`sdht.kinds.register.check_work` and the time
        check (the caller validates the whole batch first, so a bad batch changes nothing).
        """
        results = []
        decay = params["decay"]
        tree_changes = []
        with self.env.begin(write=True) as txn:
            added_bytes, accepted = 0, 0
            for rec in records:
                lkey = data_key(rec.key)
                old_raw = txn.get(lkey, db=self.data)
                old = held(old_raw) if old_raw is not None else None
                if old is not None and old.digest == rec.digest:
                    results.append(WriteResult(SAME, old))
                elif old is None or outranks(rec.score(decay), rec.digest, old.score(decay),
                                             old.digest):
                    value = stored(rec)
                    txn.put(lkey, value, db=self.data)
                    tree_changes.append((lkey, old.digest if old else None, rec.digest))
                    added_bytes += (len(value) - len(old_raw) if old_raw is not None
                                    else len(lkey) + len(value))
                    accepted += 1
                    results.append(WriteResult(STORED, held(value)))
                else:
                    results.append(WriteResult(SUPERSEDED, old))
            if accepted:
                self.tree.update_many(txn, tree_changes)
                self._add(txn, _REVISION, accepted)
                self._add(txn, _BYTES, added_bytes)
        return results

    def scan(self, start: int, end: int, after: bytes | None = None,
             limit: int = 1000) -> tuple[list[bytes], bytes | None]:
        """Return packed records with positions in ``[start, end)``, in LMDB key order.

        :param after: resume after this LMDB key (the cursor a previous page returned).
        :returns: ``(records, cursor)``; the cursor is None when the range is exhausted.
        """
        first = _U64.pack(start)
        if after is not None and after >= first:
            first = after + b"\x00"
        out: list[bytes] = []
        last = None
        with self.env.begin(db=self.data) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(first):
                return out, None
            for lkey, value in cursor:
                if end < RING_SIZE and _U64.unpack_from(lkey)[0] >= end:
                    return out, None
                if len(out) == limit:
                    return out, last
                out.append(packed(value))
                last = lkey
        return out, None

    def delete_range(self, start: int, end: int) -> int:
        """Delete every record with a position in ``[start, end)``; return how many."""
        deleted, freed = 0, 0
        tree_changes: list[tuple[bytes, bytes | None, bytes | None]] = []
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self.data)
            if cursor.set_range(_U64.pack(start)):
                while True:
                    lkey = cursor.key()
                    if not lkey or (end < RING_SIZE and _U64.unpack_from(lkey)[0] >= end):
                        break
                    raw = cursor.value()
                    freed += len(lkey) + len(raw)
                    tree_changes.append((bytes(lkey), held(raw).digest, None))
                    deleted += 1
                    if not cursor.delete():
                        break
            if deleted:
                self.tree.update_many(txn, tree_changes)
                self._add(txn, _BYTES, -freed)
        return deleted

    # -- anti-entropy -------------------------------------------------------------------------

    def tree_hashes(self, nodes: Iterable[tuple[int, int]]) -> list[bytes]:
        """Return the hash-tree hash of each ``(level, index)`` node."""
        with self.env.begin() as txn:
            return self.tree.hashes(txn, nodes)

    def entries(self, level: int, index: int, ranges: Iterable[tuple[int, int]],
                limit: int) -> list[tuple[str, bytes]]:
        """Return ``(key, digest)`` of the records under tree node ``(level, index)`` whose
        positions fall in one of ``ranges``, in position order, at most ``limit`` of them."""
        low, high = node_range(level, index)
        out: list[tuple[str, bytes]] = []
        with self.env.begin(db=self.data) as txn:
            cursor = txn.cursor()
            for start, end in ranges:
                start, end = max(start, low), min(end, high)
                if start >= end or not cursor.set_range(_U64.pack(start)):
                    continue
                for lkey, raw in cursor:
                    if _U64.unpack_from(lkey)[0] >= end or len(out) >= limit:
                        break
                    out.append((bytes(lkey[8:]).decode("utf-8"), held(raw).digest))
        return out

    def purge_tombstones(self, before_us: int) -> int:
        """Delete tombstones written before ``before_us`` (past the tombstone grace), keeping
        the hash tree in step; return how many were purged."""
        purged, freed = 0, 0
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self.data)
            if cursor.first():
                while cursor.key():
                    lkey, raw = bytes(cursor.key()), cursor.value()
                    head = held(raw)
                    if head.deleted and head.t < before_us:
                        self.tree.update(txn, lkey, head.digest, None)
                        freed += len(lkey) + len(raw)
                        purged += 1
                        if not cursor.delete():  # positioned on the next record, or at the end
                            break
                    elif not cursor.next():
                        break
            if purged:
                self._add(txn, _BYTES, -freed)
                self._add(txn, _PURGED, purged)
        return purged

    def add_sync_counts(self, rounds: int, differences: int) -> None:
        """Add to the node's counters of background sync rounds and differences found."""
        with self.env.begin(write=True) as txn:
            self._add(txn, _SYNC_ROUNDS, rounds)
            self._add(txn, _SYNC_DIFFS, differences)

    # -- counters -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Return ``records`` (count), ``bytes`` (keys and records), ``revision`` and the
        anti-entropy counters ``sync_rounds``, ``sync_differences``, ``tombstones_purged``."""
        with self.env.begin() as txn:
            records = txn.stat(self.data)["entries"]
            return {"records": records, "bytes": self._read(txn, _BYTES),
                    "revision": self._read(txn, _REVISION),
                    "sync_rounds": self._read(txn, _SYNC_ROUNDS),
                    "sync_differences": self._read(txn, _SYNC_DIFFS),
                    "tombstones_purged": self._read(txn, _PURGED)}

    def _read(self, txn: lmdb.Transaction, name: bytes) -> int:
        raw = txn.get(name, db=self.meta)
        return _U64.unpack(raw)[0] if raw else 0

    def _add(self, txn: lmdb.Transaction, name: bytes, delta: int) -> None:
        txn.put(name, _U64.pack(max(0, self._read(txn, name) + delta)), db=self.meta)
