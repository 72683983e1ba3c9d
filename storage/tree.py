"""The node's hash tree over record positions, for anti-entropy (docs/design.md, "anti-entropy").

A fixed-depth tree over the 64-bit position space with fan-out 16: level 0 is the root, level
``DEPTH`` (4) holds the 65536 leaves, one per value of the top 16 bits of a position. Tree node
``(level, index)`` covers positions ``[index << s, (index + 1) << s)`` with ``s = 64 - 4*level``.

A record contributes ``blake2b-128(lmdb_key || record digest)`` to its leaf; a leaf's hash is the
XOR of its records' contributions and an interior node's the XOR of its children, which is also
the XOR of every record below it. So a write updates the leaf and its ancestors by XOR-ing out the
old contribution and in the new one: the tree is never rebuilt by a scan. XOR is not collision
resistant against an adversary who picks records, but replicas are honest here and each
contribution is a keyed, digest-bound hash.

Hashes live in the ``tree`` sub-database under ``level (1 byte) || index (2 bytes)``; a missing
entry is the all-zero hash (an empty subtree). The exact key listing of a leaf is the data
sub-database's cursor scan of the leaf's range, since data keys start with the position.

A write does not touch the nodes: in the same LMDB write transaction as its records it appends
their XOR deltas per leaf to a log in the same sub-database (:meth:`Tree.log`: one put, after
every node's key). The log is folded into the nodes (:meth:`Tree.fold`) before the tree is read
and once it holds :data:`MAX_PENDING` changes. XOR commutes, so the nodes read after a fold are
exactly those updating them write by write gives; and the 65,536 leaves are spread over hundreds
of LMDB pages, so a batch of 100 random writes used to rewrite ~100 of them, where a fold of
thousands of changes rewrites each page once (issue 16: write amplification).
"""
from __future__ import annotations

import hashlib
import struct
from typing import Callable, Iterable

import lmdb

# The tree's shape is shared with the client's sync walk, which must agree with it exactly.
from sdht.wire import DEPTH, FANOUT

FANOUT_BITS = FANOUT.bit_length() - 1   # a tree node's index is its parent's and these bits
# A leaf is the top 16 bits of a position (read where used: bench/simsync.py tries other depths).
LEAF_BITS = FANOUT_BITS * DEPTH
HASH_BYTES = 16
ZERO = bytes(HASH_BYTES)
TREE_PERSON = b"sdht-tree-v1"

#: Changes (leaf deltas) the log holds before a write folds it: a fold of this many costs tens
#: of milliseconds, once per this many writes.
MAX_PENDING = 8192

_NODE = struct.Struct(">BH")
_U64 = struct.Struct(">Q")
# Log keys sort after every node's (levels are 0..DEPTH): the count of changes held, and the
# entries, 0xff || sequence, each the ``(leaf, delta)`` pairs of one write.
_COUNT, _LOG = b"\xfe", b"\xff"
_LOGGED = struct.Struct(">I16s")


def contribution(lmdb_key: bytes, digest: bytes | None) -> bytes:
    """Return one record's share of its leaf hash (zero for no record)."""
    if digest is None:
        return ZERO
    return hashlib.blake2b(lmdb_key + digest, digest_size=HASH_BYTES, person=TREE_PERSON).digest()


def _share(lmdb_key: bytes, digest: bytes | None) -> int:
    """:func:`contribution` as an integer (0 for no record, without hashing)."""
    if digest is None:
        return 0
    return int.from_bytes(contribution(lmdb_key, digest), "big")


def xor(a: bytes, b: bytes) -> bytes:
    """XOR two equal-length byte strings."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def leaf_of(lmdb_key: bytes) -> int:
    """The index of the leaf holding ``lmdb_key``: the top :data:`LEAF_BITS` of its position."""
    return _U64.unpack_from(lmdb_key)[0] >> (64 - LEAF_BITS)


def path(lmdb_key: bytes) -> Iterable[bytes]:
    """Yield the tree-db keys of the leaf holding ``lmdb_key`` and of all its ancestors."""
    top = leaf_of(lmdb_key)
    for level in range(DEPTH, -1, -1):
        yield _NODE.pack(level, top >> (FANOUT_BITS * (DEPTH - level)))


def _access(txn: lmdb.Transaction, db: lmdb._Database) -> tuple[Callable[[bytes], bytes | None],
                                                              Callable[[bytes, bytes], object],
                                                              Callable[[bytes], object]]:
    """``get(key)``, ``put(key, value)`` and ``delete(key)`` of the tree nodes in ``txn``.

    Through one cursor of the tree db when ``txn`` is LMDB's: py-lmdb parses a ``db=``
    keyword on every call, a third of the cost of a small get and put. ``delete`` removes the
    node the last ``get`` found, which is how :meth:`Tree.update_many` calls it. Any other
    ``txn`` (bench/simnet.py keeps trees in a dict) is called as it is, by key.
    """
    if isinstance(txn, lmdb.Transaction):
        cursor = txn.cursor(db=db)
        return cursor.get, cursor.put, lambda key: cursor.delete()
    return (lambda key: txn.get(key, db=db), lambda key, value: txn.put(key, value, db=db),
            lambda key: txn.delete(key, db=db))


def _leaf_deltas(changes: Iterable[tuple[bytes, bytes | None, bytes | None]]) -> dict[int, int]:
    """The XOR delta ``(lmdb_key, old digest, new digest)`` changes make to each leaf."""
    leaves: dict[int, int] = {}
    for lmdb_key, old, new in changes:
        delta = _share(lmdb_key, old) ^ _share(lmdb_key, new)
        if delta:
            leaf = leaf_of(lmdb_key)
            leaves[leaf] = leaves.get(leaf, 0) ^ delta
    return leaves


class Tree:
    """The hash tree of one LMDB environment, read and updated inside the caller's transactions.

    :param db: the ``tree`` sub-database handle.
    """

    def __init__(self, db: lmdb._Database) -> None:
        self.db = db

    def update(self, txn: lmdb.Transaction, lmdb_key: bytes, old: bytes | None,
               new: bytes | None) -> None:
        """Replace the contribution of ``lmdb_key`` with digest ``old`` by digest ``new``
        (either None for no record), updating the leaf and its ancestors."""
        self.update_many(txn, [(lmdb_key, old, new)])

    def update_many(self, txn: lmdb.Transaction,
                    changes: Iterable[tuple[bytes, bytes | None, bytes | None]]) -> None:
        """Apply many ``(lmdb_key, old digest, new digest)`` changes to the nodes now:
        afterwards every tree node holds what applying them one by one with :meth:`update`
        would leave (a pending log aside: XOR commutes, so it may be folded before or after)."""
        self._apply(txn, _leaf_deltas(changes))

    def log(self, txn: lmdb.Transaction,
            changes: Iterable[tuple[bytes, bytes | None, bytes | None]]) -> None:
        """Record ``(lmdb_key, old digest, new digest)`` changes in the log, in ``txn``: the
        nodes read after :meth:`fold` are as if :meth:`update_many` had applied them. Folds
        the log once it holds :data:`MAX_PENDING` changes."""
        leaves = _leaf_deltas(changes)
        if not leaves:
            return
        cursor = txn.cursor(db=self.db)
        held = cursor.get(_COUNT)
        count = (_U64.unpack(held)[0] if held is not None else 0) + len(leaves)
        seq = (_U64.unpack_from(cursor.key(), 1)[0] + 1
               if cursor.last() and cursor.key()[:1] == _LOG else 0)
        cursor.put(_LOG + _U64.pack(seq), b"".join(
            _LOGGED.pack(leaf, delta.to_bytes(HASH_BYTES, "big"))
            for leaf, delta in leaves.items()), append=True)
        cursor.put(_COUNT, _U64.pack(count))
        if count >= MAX_PENDING:
            self.fold(txn)

    def pending(self, txn: lmdb.Transaction) -> bool:
        """Whether the log holds changes not yet folded into the nodes."""
        return txn.get(_COUNT, db=self.db) is not None

    def fold(self, txn: lmdb.Transaction) -> None:
        """Apply the logged changes to the nodes and empty the log (a write transaction)."""
        cursor = txn.cursor(db=self.db)
        leaves: dict[int, int] = {}
        more = cursor.set_range(_LOG)
        while more:
            for leaf, delta in _LOGGED.iter_unpack(cursor.value()):
                leaves[leaf] = leaves.get(leaf, 0) ^ int.from_bytes(delta, "big")
            more = cursor.delete() and bool(cursor.key())   # now on the next entry, if any
        if cursor.set_key(_COUNT):
            cursor.delete()
        self._apply(txn, leaves)

    def _apply(self, txn: lmdb.Transaction, leaves: dict[int, int]) -> None:
        """XOR ``leaves`` (leaf index -> delta) into the leaves and their ancestors.

        The deltas are folded up a level at a time (a parent's delta is the XOR of its
        children's), so a batch touches each tree node once: a batch of 1,000 writes shares
        its few upper nodes instead of rewriting them 1,000 times each. The nodes are then
        read and written in key order.
        """
        level, pending = leaves, []
        for depth in range(DEPTH, -1, -1):
            parents: dict[int, int] = {}
            for index, delta in level.items():
                if delta:   # changes that cancel out leave the node (and their share above) be
                    pending.append((_NODE.pack(depth, index), delta))
                    parents[index >> FANOUT_BITS] = parents.get(index >> FANOUT_BITS, 0) ^ delta
            level = parents
        pending.sort()
        get, put, delete = _access(txn, self.db)
        for tkey, delta in pending:
            current = get(tkey)
            value = delta ^ int.from_bytes(current, "big") if current is not None else delta
            if value:
                put(tkey, value.to_bytes(HASH_BYTES, "big"))
            else:   # the whole subtree emptied: an empty subtree is a missing node
                delete(tkey)

    def hashes(self, txn: lmdb.Transaction, nodes: Iterable[tuple[int, int]]) -> list[bytes]:
        """Return the hash of each tree node (zero for an empty subtree) as the nodes hold it:
        with the log folded first (:meth:`fold`), the hash of what the store holds."""
        return [txn.get(_NODE.pack(level, index), db=self.db) or ZERO for level, index in nodes]
