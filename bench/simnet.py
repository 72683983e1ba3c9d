"""In-memory stand-ins for the disks and the network of a simulated sdht cluster (bench/sim.py).

Only the I/O is replaced. The hash tree is :class:`storage.tree.Tree` over a dict instead of an
LMDB sub-database; a node's answer to ``POST /v1/tree`` is :func:`storage.sync_routes.tree_answer`
over a :class:`SimStore`; merges are the kinds' own ``supersedes``; the sync descent, repair,
placement and migration planning that drive these stand-ins are the project's modules, unchanged.

A :class:`Keyset` is many keys held cheaply: a sorted array of positions and the key numbers
behind them. Its keys are never read as entries (they never differ between replicas), so each
carries a synthetic digest; the entries that do differ are real minted records, kept per store.
"""
from __future__ import annotations

import bisect
import hashlib
import threading
from array import array
from typing import Any, Iterable, Iterator, Mapping

from sdht import kinds
from sdht.kinds import register
from sdht.nodeapi import PutOutcome
from sdht.ring import RingView, position
from sdht.transport import Transport
from sdht.wire import MAX_ANSWER_BYTES, MAX_BATCH, SAME, STORED, SUPERSEDED, encode_ranges, \
    node_range, packb
from storage.layout import data_key, entry_key, key_position
from storage.sync_routes import tree_answer
from storage.tree import Tree

_KEY = "key-{}"


def base_key(i: int) -> bytes:
    """The LMDB key of key number ``i`` of a keyset."""
    return data_key(register.TAG, _KEY.format(i))


def base_digest(lkey: bytes) -> bytes:
    """The synthetic digest of a keyset key (never read as an entry: it never differs)."""
    return hashlib.blake2b(lkey, digest_size=32, person=b"sdht-sim").digest()


class Keyset:
    """``count`` keys ``key-0 ...``: their positions, sorted, and the key number of each."""

    def __init__(self, count: int) -> None:
        pos = [position(_KEY.format(i)) for i in range(count)]
        order = sorted(range(count), key=pos.__getitem__)
        self.pos = array("Q", (pos[i] for i in order))
        self.idx = array("I", order)

    def __len__(self) -> int:
        return len(self.pos)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The slice of the sorted arrays whose positions fall in ``[start, end)``."""
        return bisect.bisect_left(self.pos, start), bisect.bisect_left(self.pos, end)

    def count(self, start: int, end: int) -> int:
        """How many keys have a position in ``[start, end)``."""
        first, stop = self.span(start, end)
        return stop - first

    def subset(self, ranges: Iterable[tuple[int, int]]) -> "Keyset":
        """The keys in ``ranges`` (sorted, disjoint), as a keyset of their own."""
        sub = Keyset(0)
        for start, end in ranges:
            first, stop = self.span(start, end)
            sub.pos.extend(self.pos[first:stop])
            sub.idx.extend(self.idx[first:stop])
        return sub


class _DictTxn:
    """The stand-in for an LMDB transaction over the tree sub-database: a dict."""

    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.table = table

    def get(self, key: bytes, db: Any = None) -> bytes | None:
        return self.table.get(key)

    def put(self, key: bytes, value: bytes, db: Any = None) -> None:
        self.table[key] = value

    def delete(self, key: bytes, db: Any = None) -> None:
        self.table.pop(key, None)


def build_tree(keys: Keyset) -> dict[bytes, bytes]:
    """The tree (storage.tree.Tree) of a store holding exactly ``keys``, as a dict."""
    table: dict[bytes, bytes] = {}
    txn, tree = _DictTxn(table), Tree(None)
    step = 100_000
    for i in range(0, len(keys), step):
        lkeys = [base_key(j) for j in keys.idx[i:i + step]]
        tree.update_many(txn, ((k, None, base_digest(k)) for k in lkeys))
    return table


class SimStore:
    """One node's disk: a keyset it holds, its tree, and real entries written since."""

    def __init__(self, keys: Keyset, tree: dict[bytes, bytes] | None = None) -> None:
        self.keys = keys
        self.table = dict(tree) if tree is not None else build_tree(keys)
        self.tree = Tree(None)
        self.extra: dict[bytes, kinds.Entry] = {}   # lmdb key -> entry written later
        self.extra_pos: list[bytes] = []           # their lmdb keys, sorted
        self.ring: RingView | None = None
        self.lock = threading.Lock()

    def tree_hashes(self, nodes: Iterable[tuple[int, int]]) -> list[bytes]:
        """As :meth:`storage.store.Store.tree_hashes`."""
        with self.lock:
            return self.tree.hashes(_DictTxn(self.table), nodes)

    def entries(self, level: int, index: int, ranges: Iterable[tuple[int, int]],
                limit: int) -> list[tuple[bytes, bytes]]:
        """As :meth:`storage.store.Store.entries`: ``(reference, digest)`` in key order."""
        low, high = node_range(level, index)
        out: list[tuple[bytes, bytes]] = []
        with self.lock:
            for start, end in ranges:
                start, end = max(start, low), min(end, high)
                if start >= end:
                    continue
                first, stop = self.keys.span(start, end)
                found = [(k, base_digest(k))
                         for k in map(base_key, self.keys.idx[first:min(stop, first + limit)])]
                lo = bisect.bisect_left(self.extra_pos, start.to_bytes(8, "big"))
                for lkey in self.extra_pos[lo:]:
                    if key_position(lkey) >= end:
                        break
                    found.append((lkey, self.extra[lkey].digest))
                out += sorted(found)
                if len(out) >= limit:
                    break
        return out[:limit]

    def get_refs(self, refs: Iterable[bytes]) -> list[kinds.Entry | None]:
        """The entries written since (a keyset key never differs, so is never asked)."""
        with self.lock:
            return [self.extra.get(ref) for ref in refs]

    def put_many(self, entries: list[kinds.Entry], params: Mapping[str, Any]) -> list[str]:
        """Merge each entry by its kind's rule, updating the tree: as Store.put_many."""
        out, changes = [], []
        with self.lock:
            for entry in entries:
                lkey = entry_key(entry)
                old = self.extra.get(lkey)
                if old is not None and old.digest == entry.digest:
                    out.append(SAME)
                elif kinds.kind_of(entry.TAG).supersedes(entry, old, params):
                    if old is None:
                        bisect.insort(self.extra_pos, lkey)
                    self.extra[lkey] = entry
                    changes.append((lkey, old.digest if old else None, entry.digest))
                    out.append(STORED)
                else:
                    out.append(SUPERSEDED)
            self.tree.update_many(_DictTxn(self.table), changes)
        return out

    def root(self) -> bytes:
        """The root hash."""
        return self.tree_hashes([(0, 0)])[0]


class Traffic:
    """Messages and bytes, in all and by node."""

    def __init__(self) -> None:
        self.messages = self.bytes = 0
        self.by_node: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    def add(self, node: str, sent: int, received: int) -> None:
        with self.lock:
            self.messages += 1
            self.bytes += sent + received
            mine = self.by_node.setdefault(node, [0, 0])
            mine[0] += 1
            mine[1] += sent + received


class SimTransport(Transport):
    """The ring library's transport, answered by :class:`SimStore` objects in this process.

    Only the routes anti-entropy and repair use are served; each call counts one message and
    the bytes its request and answer take in msgpack, as on the wire.
    """

    def __init__(self, stores: Mapping[str, SimStore], params: Mapping[str, Any],
                 max_parallel: int = 16) -> None:
        super().__init__(max_parallel=max_parallel)
        self.stores, self.ring_params = stores, params
        self.traffic = Traffic()

    def tree(self, node: str, nodes: list[tuple[int, int]], listed: list[tuple[int, int]] = (),
             ranges: list[tuple[int, int]] | None = None) -> tuple[Any, int]:
        body = {"nodes": [list(n) for n in nodes], "list": [list(n) for n in listed],
                "ranges": encode_ranges(ranges or [])}
        answer = tree_answer(self.stores[node], list(nodes), list(listed), list(ranges or []),
                             MAX_BATCH, MAX_ANSWER_BYTES)
        self.traffic.add(node, len(packb(body)), _answer_bytes(answer))
        return answer, 0

    def get_entries(self, node: str, refs: list[bytes],
                    params: Mapping[str, Any] | None = None) -> list[kinds.Entry | None]:
        found = self.stores[node].get_refs(refs)
        self.traffic.add(node, sum(len(r) + 2 for r in refs),
                         sum(len(e.pack()) if e else 1 for e in found))
        return found

    def put_many(self, node: str, entries: list[kinds.Entry],
                 migration: bool = False) -> tuple[list[PutOutcome], int]:
        outcomes = self.stores[node].put_many(entries, self.ring_params)
        self.traffic.add(node, sum(len(e.pack()) for e in entries), 4 * len(entries))
        return [PutOutcome(o, None, None) for o in outcomes], 0

    def get_ring(self, node: str) -> RingView | None:
        ring = self.stores[node].ring
        self.traffic.add(node, 16, len(packb(ring.to_json())) if ring else 8)
        return ring

    def put_ring(self, node: str, view: RingView) -> RingView:
        self.stores[node].ring = view
        self.traffic.add(node, len(packb(view.to_json())), 16)
        return view


def _answer_bytes(answer: Mapping[str, Any]) -> int:
    """The answer's msgpack size, counted without building it (listings can be large)."""
    size = 16 + 18 * len(answer["hashes"])
    for listing in answer["entries"]:
        size += 3 + sum(len(ref) + len(digest) + 5 for ref, digest in listing)
    return size


def chunks(items: list, size: int) -> Iterator[list]:
    """``items`` in pieces of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
