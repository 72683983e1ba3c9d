"""The node's hash tree over record positions, for anti-entropy (docs/design.md, "anti-entropy").

A fixed-depth tree over the 64-bit position space with fan-out 16: level 0 is the root, level
``DEPTH`` (4) holds the 65536 leaves, one per value of the top 16 bits of a position. Tree node
``(level, index)`` covers positions ``[index << s, (index + 1) << s)`` with ``s = 64 - 4*level``.

A record contributes ``blake2b-128(lmdb_key || record digest)`` to its leaf; a leaf's hash is the
XOR of its records' contributions and an interior node's the XOR of its children, which is also
the XOR of every record below it. So a write updates the leaf and its ancestors by XOR-ing out the
old contribution and in the new one, inside the same LMDB write transaction as the record: the
tree is never rebuilt by a scan. XOR is not collision resistant against an adversary who picks
records, but replicas are honest here and each contribution is a keyed, digest-bound hash.

Hashes live in the ``tree`` sub-database under ``level (1 byte) || index (2 bytes)``; a missing
entry is the all-zero hash (an empty subtree). The exact key listing of a leaf is the data
sub-database's cursor scan of the leaf's range, since data keys start with the position.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Iterable

import lmdb

# The tree's shape is shared with the client's sync walk, which must agree with it exactly.
from sdht.wire import DEPTH

LEAF_BITS = 4 * DEPTH          # a leaf is the top 16 bits of a position
HASH_BYTES = 16
ZERO = bytes(HASH_BYTES)
TREE_PERSON = b"sdht-tree-v1"

_NODE = struct.Struct(">BH")
_U64 = struct.Struct(">Q")


def contribution(lmdb_key: bytes, digest: bytes | None) -> bytes:
    """Return one record's share of its leaf hash (zero for no record)."""
    if digest is None:
        return ZERO
    return hashlib.blake2b(lmdb_key + digest, digest_size=HASH_BYTES, person=TREE_PERSON).digest()


def xor(a: bytes, b: bytes) -> bytes:
    """XOR two equal-length byte strings."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def path(lmdb_key: bytes) -> Iterable[bytes]:
    """Yield the tree-db keys of the leaf holding ``lmdb_key`` and of all its ancestors."""
    top = _U64.unpack_from(lmdb_key)[0] >> (64 - LEAF_BITS)
    for level in range(DEPTH, -1, -1):
        yield _NODE.pack(level, top >> (4 * (DEPTH - level)))


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
        """Apply many ``(lmdb_key, old digest, new digest)`` changes at once.

        The XOR deltas are gathered per tree node first, so a batch touches each node once:
        a batch of 1,000 writes shares its few upper nodes instead of rewriting them 1,000
        times each.
        """
        deltas: dict[bytes, int] = {}
        for lmdb_key, old, new in changes:
            delta = (int.from_bytes(contribution(lmdb_key, old), "big")
                     ^ int.from_bytes(contribution(lmdb_key, new), "big"))
            if delta:
                for tkey in path(lmdb_key):
                    deltas[tkey] = deltas.get(tkey, 0) ^ delta
        for tkey, delta in deltas.items():
            if not delta:
                continue
            current = txn.get(tkey, db=self.db)
            value = delta ^ int.from_bytes(current, "big") if current is not None else delta
            if value:
                txn.put(tkey, value.to_bytes(HASH_BYTES, "big"), db=self.db)
            else:
                txn.delete(tkey, db=self.db)

    def hashes(self, txn: lmdb.Transaction, nodes: Iterable[tuple[int, int]]) -> list[bytes]:
        """Return the hash of each tree node (zero for an empty subtree)."""
        return [txn.get(_NODE.pack(level, index), db=self.db) or ZERO for level, index in nodes]
