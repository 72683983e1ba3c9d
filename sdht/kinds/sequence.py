"""The sequence kind: the ops of a hashseq sequence CRDT, each an immutable entry under its key.

A sequence (a timeline) is a set of ops (:mod:`sdht.hashseq`) stored under one key. Each op is
one entry whose identity below the key (``sub``) is the op's id, the hash of its content, so
a key's replicas hold its ops side by side (one LMDB range read returns them all) and merge by
set union: an op, once stored, is never replaced by another. The order of the items is
computed by the reader from the ops (docs/sequences.md); no priority rule applies to a
sequence as a whole.

An entry wraps one op with its proof of work:

======  ================================================================
``x``   the kind's tag, 2
``k``   the sequence's key (str)
``o``   the op's wire map (:meth:`sdht.hashseq.Op.to_wire`)
``t``   write time, integer microseconds since the Unix epoch
``w``   declared work in natural-log units
``n``   nonce (bytes) found by minting
======  ================================================================

``digest = blake2b-256(packb(["sdht-seq", k, op id, t, w]) + n, person=b"sdht-record-v1")``
(:func:`canonical`, :func:`digest_of`): the work binds the op to its key. A node refuses an
entry whose op id does not match the op's content, or whose op passes the CRDT's limits on
dependencies and removed ids (:func:`sdht.hashseq_op.op_from_wire`, their one home); whose
work is not shown or time is too far ahead; whose item is over the ring's ``max_value_bytes``;
or whose key is over :data:`MAX_KEY_BYTES`.

The same op may arrive with two proofs (a writer that minted twice); the one with the smaller
digest is kept, so replicas converge on one stored entry per op and anti-entropy settles.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any, Mapping, NamedTuple

from . import common
from ..errors import InvalidRecord, ValueTooLarge
from ..hashseq_op import ID_BYTES, REMOVE, op_from_wire
from ..wire import packb
from .register import DIGEST_PERSON

TAG = 2
NAME = "sequence"
#: Anti-entropy, migration and read repair carry ops like registers; the merge is union.
SYNCED = True
#: Any client may write ops (each pays the proof-of-work gate).
PUBLIC = True
FIELDS = frozenset("xkotwn")
#: The personalisation of :func:`summary`.
SUMMARY_PERSON = b"sdht-seq-set-v1"
#: Bytes of a sequence's key: its LMDB keys hold the 32-byte op id after the key, under
#: LMDB's 511-byte limit with the layout's 11-byte head (storage/layout.py).
MAX_KEY_BYTES = 511 - 11 - ID_BYTES


class OpEntry:
    """One op of the sequence ``key`` with its proof of work."""

    __slots__ = ("key", "op", "t", "w", "nonce", "_digest", "_packed")
    TAG = TAG

    def __init__(self, key: str, op: Any, t: int, w: float, nonce: bytes,
                 digest: bytes | None = None) -> None:
        self.key, self.op, self.t, self.w, self.nonce = key, op, t, float(w), nonce
        self._digest = digest
        self._packed: bytes | None = None

    @property
    def sub(self) -> bytes:
        """The op's id: the entry's identity below the key."""
        return self.op.id

    @property
    def digest(self) -> bytes:
        """The 32-byte digest the proof of work is checked against."""
        if self._digest is None:
            self._digest = digest_of(canonical(self.key, self.op.id, self.t, self.w),
                                     self.nonce)
        return self._digest

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-ready map ``{x, k, o, t, w, n}``."""
        return {"x": TAG, "k": self.key, "o": self.op.to_wire(), "t": self.t, "w": self.w,
                "n": self.nonce}

    def pack(self) -> bytes:
        """The entry as it travels and rests (the bytes it arrived as, when it did)."""
        if self._packed is None:
            self._packed = packb(self.to_wire())
        return self._packed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpEntry) and self.key == other.key \
            and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"<op {self.op.kind} of {self.key!r} id={self.op.id[:6].hex()}>"


class Held(NamedTuple):
    """A stored op entry as its header tells it: time, work, digest."""

    t: int
    w: float
    digest: bytes


def canonical(key: str, op_id: bytes, t: int, w: float) -> bytes:
    """The bytes the digest covers before the nonce (the minting prefix of
    :func:`sdht.pow.find_nonce`, which hashes with the same personalisation)."""
    return packb(["sdht-seq", key, op_id, t, float(w)])


def digest_of(prefix: bytes, nonce: bytes) -> bytes:
    """``blake2b-256(prefix + nonce)``, personalised as the proof-of-work search hashes."""
    h = hashlib.blake2b(prefix, digest_size=32, person=DIGEST_PERSON)
    h.update(nonce)
    return h.digest()


def summary(ids: Any) -> bytes:
    """The digest of a set of op ids (the ops a replica holds): blake2b-256 of the ids sorted,
    personalised. A reader compares it with the summary of what it knows, and reads the ops
    of a replica only when they differ (storage/sequence_routes.py computes it in LMDB order,
    which is the same order)."""
    h = hashlib.blake2b(digest_size=32, person=SUMMARY_PERSON)
    for op_id in sorted(ids):
        h.update(op_id)
    return h.digest()


# -- the wire -------------------------------------------------------------------------------------

def op_of(obj: Any, params: Mapping[str, Any]) -> Any:
    """The op of a wire map, its id checked against its content and its shape against the
    CRDT's limits (:func:`sdht.hashseq.op_from_wire`: dependencies and removed ids), its item
    plain msgpack data within the ring's ``max_value_bytes``.

    :raises InvalidRecord: for a malformed op or one whose id does not match its content.
    :raises ValueTooLarge: past the limits.
    """
    if not isinstance(obj, dict):
        raise InvalidRecord("an op must be a msgpack map")
    try:
        op = op_from_wire(obj)
    except (InvalidRecord, ValueTooLarge):
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError,
            OverflowError) as exc:   # whatever a malformed op makes the decoder trip on
        raise InvalidRecord(f"malformed op ({exc.__class__.__name__})") from None
    if op.kind != REMOVE:
        common.check_value(op.item, params)
    return op


def from_wire(obj: Any, params: Mapping[str, Any]) -> OpEntry:
    """An op entry from its wire map, every field checked (work and clock: :func:`check`).

    :raises InvalidRecord: for a malformed entry or op (an id that does not match the op).
    :raises ValueTooLarge: for a key, item or op past the limits.
    """
    common.check_fields(obj, FIELDS, NAME)
    if obj["x"] != TAG or type(obj["x"]) is not int:
        raise InvalidRecord(f"not a sequence op (kind {obj['x']!r})")
    raw_key = common.check_key(obj["k"], params)
    if len(raw_key) > MAX_KEY_BYTES:
        raise ValueTooLarge(f"a sequence's key is at most {MAX_KEY_BYTES} bytes")
    t = common.check_timestamp_field(obj["t"])
    w = common.check_work_field(obj["w"])
    nonce = common.check_nonce_field(obj["n"])
    return OpEntry(obj["k"], op_of(obj["o"], params), t, w, nonce)


# -- the accept rule ------------------------------------------------------------------------------

def check(entry: OpEntry, params: Mapping[str, Any], now: int | None = None) -> None:
    """The proof-of-work gate (up to the ring's ``max_work``) and the clock.

    :raises InvalidRecord: when the work is not shown or ``t`` is too far ahead of ``now``.
    """
    common.check_work(entry.w, entry.digest, params["min_work"], params["max_work"])
    common.check_time(entry.t, params["max_skew"], now)


def supersedes(incoming: OpEntry, held: Held | None, params: Mapping[str, Any]) -> bool:
    """The merge is union: a new op is stored; an op held already (the same id, so the same
    content) is kept, unless the incoming proof has the smaller digest, so that every replica
    ends with the same entry for it."""
    return held is None or incoming.digest < held.digest


def expired(version: Any, cutoff_us: int) -> bool:
    """Ops never expire: later ops depend on them, removed items' too (tombstones stay)."""
    return False


_HEAD = struct.Struct(">qd")
HEAD_BYTES = _HEAD.size


def head(entry: OpEntry) -> bytes:
    """The header a node stores beside the digest: t and w."""
    return _HEAD.pack(entry.t, entry.w)


def held(digest: bytes, header: bytes) -> Held:
    """The held entry a digest and a :func:`head` header describe."""
    t, w = _HEAD.unpack(header)
    return Held(t, w, digest)


def describe(version: Held, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a node tells a writer whose entry it did not store: it holds the op already, with
    this proof (``score`` is its work: no priority applies to ops)."""
    return {"score": version.w, "digest": version.digest, "t": version.t, "w": version.w}
