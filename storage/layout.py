"""The node's on-disk layout: how an entry's LMDB key and value are made, and upgrades.

Data keys are ``position (8 bytes, big-endian) || kind tag (1) || key length (2) || UTF-8 key ||
sub-id``, so one ring range is one cursor scan whatever the kinds. Values are ``digest (32) ||
the kind's header || the packed entry``: the kind's header (a register's t, w and tombstone
flag) lets its accept rule, the hash tree and anti-entropy work without decoding the entry.

:data:`FORMAT` names this layout in the store's meta. A store of layout 2 (sdht 0.1: registers
only, ``position || key`` -> ``t, w, digest, deleted || record``) is upgraded in place when a
node opens it, one of layout 3 (this one without the tree's log) is marked 4; any other layout
is refused.
"""
from __future__ import annotations

import struct
from typing import Any

import lmdb

from sdht.kinds import Entry, kind_of, register
from sdht.ring import position
from sdht.wire import ref_position, unpackb

_U64 = struct.Struct(">Q")
_KEY_HEAD = struct.Struct(">QBH")   # position, kind tag, key length
DIGEST_BYTES = 32
#: The longest key LMDB stores (its default build).
MAX_KEY_BYTES = 511
#: The layout's version, kept in meta under ``format``. 4: the tree sub-database may hold a log
#: of changes not yet folded into its nodes (storage/tree.py), which layout 3's code would not
#: read; a layout-3 store has none, so it is taken as it is.
FORMAT = b"4"


def data_key(tag: int, key: str, sub: bytes = b"") -> bytes:
    """Return the LMDB key of an entry: position, kind, key length, key, sub-id."""
    raw = key.encode("utf-8")
    return _KEY_HEAD.pack(position(raw), tag, len(raw)) + raw + sub


def entry_key(entry: Entry) -> bytes:
    """Return the LMDB key of ``entry``."""
    return data_key(entry.TAG, entry.key, entry.sub)


def seek_key(pos: int) -> bytes:
    """Return the smallest LMDB key at ring position ``pos``: where a range scan starts."""
    return _U64.pack(pos)


def key_position(lmdb_key: bytes) -> int:
    """Return the ring position an LMDB data key starts with (the rule the library reads
    references by: :func:`sdht.wire.ref_position`)."""
    return ref_position(lmdb_key)


def is_data_key(ref: Any) -> bool:
    """Return whether ``ref`` is shaped like an LMDB data key (a reference a peer may send)."""
    if type(ref) is not bytes or not _KEY_HEAD.size < len(ref) <= MAX_KEY_BYTES:
        return False
    _, _, length = _KEY_HEAD.unpack_from(ref)
    return len(ref) >= _KEY_HEAD.size + length


def held_of(lmdb_key: bytes, raw: bytes) -> Any:
    """Return the held version of a stored value, read by its kind from the header alone."""
    kind = kind_of(lmdb_key[8])
    return kind.held(bytes(raw[:DIGEST_BYTES]),
                     bytes(raw[DIGEST_BYTES:DIGEST_BYTES + kind.HEAD_BYTES]))


def packed(lmdb_key: bytes, raw: bytes) -> bytes:
    """Return the packed entry of a stored value (what travels on the wire)."""
    return bytes(raw[DIGEST_BYTES + kind_of(lmdb_key[8]).HEAD_BYTES:])


def stored(entry: Entry) -> bytes:
    """Return the stored value of ``entry``: its digest, its kind's header, its packed bytes."""
    return entry.digest + kind_of(entry.TAG).head(entry) + entry.pack()


# -- upgrades -------------------------------------------------------------------------------------

_V2_HEAD = struct.Struct(">qd32s?")   # layout 2's value header: t, w, digest, deleted


def upgrade(store: Any, txn: lmdb.Transaction, found: bytes | None) -> bool:
    """Bring a store of an older layout to :data:`FORMAT` inside ``txn``; return False when
    ``found`` names no layout this version can upgrade.

    Layout 2 held registers only: each is re-keyed with its kind, its value re-headed and its
    record given the kind tag, and the hash tree is rebuilt (its leaves hash the LMDB keys).
    Digests do not change, so the records stay valid and replicas agree afterwards.
    """
    if found == b"3":   # the same layout, without a tree log yet
        txn.put(b"format", FORMAT, db=store.meta)
        return True
    if found != b"2":
        return False
    old = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.data)]
    txn.drop(store.data, delete=False)
    txn.drop(store.tree.db, delete=False)
    changes = []
    for lkey, value in old:
        t, w, digest, deleted = _V2_HEAD.unpack_from(value)
        obj = unpackb(value[_V2_HEAD.size:])
        rec = register.Record(obj["k"], obj["v"], t, w, obj["n"], deleted)
        rec._digest = digest
        new_key = entry_key(rec)
        txn.put(new_key, stored(rec), db=store.data)
        changes.append((new_key, None, digest))
    store.tree.update_many(txn, changes)
    txn.put(b"format", FORMAT, db=store.meta)
    return True


__all__ = ["DIGEST_BYTES", "FORMAT", "data_key", "entry_key", "held_of", "is_data_key",
           "key_position", "packed", "seek_key", "stored", "upgrade"]
