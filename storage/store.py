"""The node's LMDB store: entries of every kind keyed by position, plus the node's metadata.

Sub-databases:

* ``data``: every entry, under the key and value :mod:`storage.layout` makes (a ring range is
  one cursor scan whatever the kinds; accept rules read a stored entry's header, not the entry);
* ``meta``: the node's ring view (JSON), counters (accepted writes, stored bytes, sync) and the
  layout's version;
* ``tree``: the hash tree over positions (:mod:`storage.tree`) of the kinds that anti-entropy
  carries: its changes are logged in the same write transaction as the entries, and folded
  into its nodes before it is read.

Every read-compare-write of an accept rule runs inside one LMDB write transaction (shared by
the writes of the process that wait at once: :mod:`storage.commits`), which LMDB serialises
across processes, so concurrent writers cannot lose the higher entry.
Commits are synchronous by default: an acknowledged write survives ``kill -9``. The store never
decides what wins: it asks the entry's kind (:mod:`sdht.kinds`).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import lmdb

from sdht.errors import ConfigError
from sdht.kinds import KINDS, Entry, kind_of, register
from sdht.ring import RingView
from sdht.wire import RING_SIZE, SAME, STORED, SUPERSEDED, node_range

from .commits import Commits
from .layout import (DIGEST_BYTES, FORMAT, data_key, entry_key, held_of, key_position, packed,
                     seek_key, stored, upgrade)
from .tree import Tree

_U64 = struct.Struct(">Q")
_REVISION, _BYTES, _RING = b"revision", b"bytes", b"ring"
_SYNC_ROUNDS, _SYNC_DIFFS, _PURGED = b"sync_rounds", b"sync_differences", b"tombstones_purged"


@dataclass
class WriteResult:
    """What happened to one incoming entry, and what the node holds afterwards (as the
    entry's kind reads its stored header)."""

    status: str
    held: Any


class Store:
    """One LMDB environment. Open it in the process that uses it (never across a fork)."""

    def __init__(self, path: str, map_size: int = 4 << 30, sync: bool = True) -> None:
        os.makedirs(path, exist_ok=True)
        # map_size is address space, not disk: 4 GiB by default (py-lmdb's own is 10 MiB).
        # readahead=False (MDB_NORDAHEAD): keys sit at hashed positions, so reads scatter, and
        # the kernel's read-around (read_ahead_kb, 8 MiB on the bench host) read ~380 KiB per
        # cold get of a 134 MB store instead of ~7 KiB, filling the page cache with large folios
        # that later 4 KiB writes dirty whole (docs/benchmarks.md, "Where the bytes go"). Never
        # writemap: a write through the map dirties and writes back whole folios (7x the bytes).
        self.env = lmdb.open(path, map_size=map_size, max_dbs=4, sync=sync, metasync=sync,
                             readahead=False)
        self.data = self.env.open_db(b"data")
        self.meta = self.env.open_db(b"meta")
        self.tree = Tree(self.env.open_db(b"tree"))
        self._ring_cache: tuple[bytes, RingView] | None = None
        #: Writes of this process that wait at once share a transaction (storage/commits.py).
        self.commits = Commits(self.env)
        self._check_format()

    def _check_format(self) -> None:
        """Mark a new store with :data:`FORMAT`, upgrade an older layout, refuse another."""
        with self.env.begin(write=True) as txn:
            found = txn.get(b"format", db=self.meta)
            if found is None and txn.stat(self.data)["entries"] == 0:
                txn.put(b"format", FORMAT, db=self.meta)
            elif found != FORMAT and not upgrade(self, txn, found):
                raise ConfigError(f"{self.env.path()} holds data in another sdht layout "
                                  f"({found!r}, this version reads {FORMAT!r})")

    def close(self) -> None:
        """Close the environment."""
        self.env.close()

    # -- ring view ----------------------------------------------------------------------------

    def ring(self) -> RingView | None:
        """Return the latest ring view this node has stored, or None."""
        with self.env.begin() as txn:
            return self.ring_in(txn)

    def ring_in(self, txn: lmdb.Transaction) -> RingView | None:
        """Return the ring view stored as ``txn`` sees it, or None."""
        raw = txn.get(_RING, db=self.meta)
        if raw is None:
            return None
        cached = self._ring_cache
        if cached is None or cached[0] != raw:
            cached = (raw, RingView.from_json(json.loads(raw)))
            self._ring_cache = cached
        return cached[1]

    def replace_ring(self, view: RingView) -> tuple[bool, RingView | None]:
        """Store ``view`` only if its epoch is higher than the stored one's; return
        ``(replaced, the view held afterwards)``."""
        with self.env.begin(db=self.meta, write=True) as txn:
            raw = txn.get(_RING)
            current = RingView.from_json(json.loads(raw)) if raw is not None else None
            if current is not None and view.epoch <= current.epoch:
                return False, current
            txn.put(_RING, json.dumps(view.to_json(), sort_keys=True).encode())
        return True, view

    # -- entries ------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """Return the packed register of ``key``, or None."""
        return self.get_many([key])[0]

    def get_many(self, keys: Iterable[str]) -> list[bytes | None]:
        """Return the packed registers of ``keys`` (None for missing), in one transaction."""
        return self.get_refs([data_key(register.TAG, k) for k in keys])

    def get_refs(self, refs: Iterable[bytes]) -> list[bytes | None]:
        """Return the packed entries under LMDB keys ``refs`` (None for missing)."""
        with self.env.begin(db=self.data) as txn:
            found = [(ref, txn.get(ref)) for ref in refs]
        return [None if raw is None else packed(ref, raw) for ref, raw in found]

    def put_many(self, entries: list[Entry], params: Mapping[str, Any]) -> list[WriteResult]:
        """Merge each entry into what the node holds, in one transaction (shared with the
        writes of this process that wait at the same time: storage/commits.py): the second half
        of its kind's accept rule (``supersedes``). The caller has admitted every entry first
        (:func:`sdht.kinds.admit`, the first half), so a bad batch changes nothing.

        Returns one result per entry, in the order given. Entries of the same key meet the
        rule in the order given too (a later one is compared with what an earlier one left),
        so the outcome is that of merging them one by one, in order."""
        return self.commits.run(lambda txn: self._merge(txn, entries, params))

    def _merge(self, txn: lmdb.Transaction, entries: list[Entry],
               params: Mapping[str, Any]) -> list[WriteResult]:
        lkeys = [entry_key(entry) for entry in entries]
        # Merged in LMDB key order (a stable sort: the same key keeps the batch's order): the
        # B-tree walks of neighbouring keys share their pages. Every result is the same as in
        # batch order, since different keys do not meet.
        order = sorted(range(len(entries)), key=lkeys.__getitem__)
        results: list[WriteResult] = [None] * len(entries)  # type: ignore[list-item]
        tree_changes = []
        added_bytes, accepted = 0, 0
        data, get, put = self.data, txn.get, txn.put
        for i in order:
            entry, lkey = entries[i], lkeys[i]
            kind = KINDS[entry.TAG]   # admitted: its tag names a kind
            old_raw = get(lkey, db=data)
            old = held_of(lkey, old_raw) if old_raw is not None else None
            if old is not None and old.digest == entry.digest:
                results[i] = WriteResult(SAME, old)
            elif kind.supersedes(entry, old, params):
                value = stored(entry)
                put(lkey, value, db=data)
                if kind.SYNCED:
                    tree_changes.append((lkey, old.digest if old else None, entry.digest))
                added_bytes += (len(value) - len(old_raw) if old_raw is not None
                                else len(lkey) + len(value))
                accepted += 1
                results[i] = WriteResult(STORED, held_of(lkey, value))
            else:
                results[i] = WriteResult(SUPERSEDED, old)
        if accepted:
            self.tree.log(txn, tree_changes)
            self._add(txn, _REVISION, accepted)
            self._add(txn, _BYTES, added_bytes)
        return results

    def scan(self, start: int, end: int, after: bytes | None = None,
             limit: int = 1000) -> tuple[list[bytes], bytes | None]:
        """Return packed entries with positions in ``[start, end)``, in LMDB key order.

        :param after: resume after this LMDB key (the cursor a previous page returned).
        :returns: ``(entries, cursor)``; the cursor is None when the range is exhausted.
        """
        first = seek_key(start)
        if after is not None and after >= first:
            first = after + b"\x00"
        out: list[bytes] = []
        last = None
        with self.env.begin(db=self.data) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(first):
                return out, None
            for lkey, value in cursor:
                if end < RING_SIZE and key_position(lkey) >= end:
                    return out, None
                if len(out) == limit:
                    return out, last
                out.append(packed(lkey, value))
                last = lkey
        return out, None

    def delete_range(self, start: int, end: int) -> int:
        """Delete every entry with a position in ``[start, end)``; return how many."""
        return self._delete_where(start, end, lambda lkey, raw: True)

    def purge_tombstones(self, cutoff_us: int) -> int:
        """Delete what each kind says has expired before ``cutoff_us`` (a register's tombstones
        past the grace), keeping the hash tree in step; return how many were purged."""
        def expired(lkey: bytes, raw: bytes) -> bool:
            return kind_of(lkey[8]).expired(held_of(lkey, raw), cutoff_us)

        return self._delete_where(0, RING_SIZE, expired, _PURGED)

    def _delete_where(self, start: int, end: int, doomed: Any,
                      counter: bytes | None = None) -> int:
        """Delete the entries in ``[start, end)`` for which ``doomed(lmdb_key, raw)`` holds."""
        deleted, freed = 0, 0
        tree_changes: list[tuple[bytes, bytes | None, bytes | None]] = []
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self.data)
            more = cursor.set_range(seek_key(start))
            while more:
                lkey, raw = bytes(cursor.key()), cursor.value()
                if end < RING_SIZE and key_position(lkey) >= end:
                    break
                if not doomed(lkey, raw):
                    more = cursor.next()
                    continue
                freed += len(lkey) + len(raw)
                if kind_of(lkey[8]).SYNCED:
                    tree_changes.append((lkey, held_of(lkey, raw).digest, None))
                deleted += 1
                more = cursor.delete() and bool(cursor.key())  # now on the next entry, if any
            if deleted:
                self.tree.log(txn, tree_changes)
                self._add(txn, _BYTES, -freed)
                if counter:
                    self._add(txn, counter, deleted)
        return deleted

    # -- anti-entropy -------------------------------------------------------------------------

    def tree_hashes(self, nodes: Iterable[tuple[int, int]]) -> list[bytes]:
        """Return the hash-tree hash of each ``(level, index)`` node: that of the entries
        held now (the tree's log is folded first, in a write transaction, when it holds any)."""
        with self.env.begin() as txn:
            if not self.tree.pending(txn):
                return self.tree.hashes(txn, nodes)
        with self.env.begin(write=True) as txn:
            self.tree.fold(txn)
            return self.tree.hashes(txn, nodes)

    def entries(self, level: int, index: int, ranges: Iterable[tuple[int, int]],
                limit: int) -> list[tuple[bytes, bytes]]:
        """Return ``(lmdb key, digest)`` of the synced entries under tree node
        ``(level, index)`` whose positions fall in one of ``ranges``, in position order, at
        most ``limit`` of them."""
        low, high = node_range(level, index)
        out: list[tuple[bytes, bytes]] = []
        with self.env.begin(db=self.data) as txn:
            cursor = txn.cursor()
            for start, end in ranges:
                start, end = max(start, low), min(end, high)
                if start >= end or not cursor.set_range(seek_key(start)):
                    continue
                for lkey, raw in cursor:
                    if key_position(lkey) >= end or len(out) >= limit:
                        break
                    if kind_of(lkey[8]).SYNCED:
                        out.append((bytes(lkey), bytes(raw[:DIGEST_BYTES])))
        return out

    def add_sync_counts(self, rounds: int, differences: int) -> None:
        """Add to the node's counters of background sync rounds and differences found."""
        with self.env.begin(write=True) as txn:
            self._add(txn, _SYNC_ROUNDS, rounds)
            self._add(txn, _SYNC_DIFFS, differences)

    # -- counters -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Return ``records`` (entries, tombstones too), ``bytes`` (keys and entries),
        ``revision`` and the anti-entropy counters ``sync_rounds``, ``sync_differences``,
        ``tombstones_purged``."""
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
