"""The register kind: one version per key, merged by the decaying proof-of-work priority.

This is the one home of the register's rules: its encoding, digest, score, order and accept
rule; the node and the library both call them (docs/design.md, "The record"). A record is one
stored version of a key:

======  ================================================================
``x``   the kind's tag, 0
``k``   the key (str)
``v``   the value: None, bool, int, float, str, bytes, list or dict
``t``   write time, integer microseconds since the Unix epoch
``w``   declared work in natural-log units (work 15 ~ e**15 hashes)
``n``   nonce (bytes) found by minting
``d``   True for a tombstone; ``v`` is then None
======  ================================================================

``digest = blake2b-256(canonical(k, v, t, w, d) + n, person=b"sdht-record-v1")``, and the record
passes the proof-of-work gate (:func:`sdht.kinds.common.check_work`) when the digest shows ``w``
and ``w >= min_work``. ``score = w + decay * t_seconds``; the higher score wins and equal scores
go to the smaller digest, so every replica orders two versions the same way.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any, Mapping, NamedTuple, Protocol

from . import common
from ..errors import InvalidRecord
from ..wire import packb, unpackb

TAG = 0
NAME = "register"
#: Anti-entropy, migration and read repair carry registers and merge them by the accept rule.
SYNCED = True
#: Any client may write registers (the proof of work prices them).
PUBLIC = True
#: blake2b personalisation: the domain tag that keeps record digests apart from other hashes.
DIGEST_PERSON = b"sdht-record-v1"
FIELDS = frozenset("xkvtwnd")


class Record:
    """One version of a key. Immutable by convention; the digest is computed once, on demand."""

    __slots__ = ("key", "value", "t", "w", "nonce", "deleted", "_digest", "_packed")
    TAG = TAG
    #: A register is the only entry of its key: no identity below the key.
    sub = b""

    def __init__(self, key: str, value: Any, t: int, w: float, nonce: bytes,
                 deleted: bool = False) -> None:
        self.key = key
        self.value = value
        self.t = t
        self.w = float(w)
        self.nonce = nonce
        self.deleted = deleted
        self._digest: bytes | None = None
        self._packed: bytes | None = None  # the bytes it arrived as, when it came off the wire

    @property
    def digest(self) -> bytes:
        """The record's 32-byte blake2b digest, which its work is checked against."""
        if self._digest is None:
            self._digest = digest_of(canonical(self.key, self.value, self.t, self.w,
                                               self.deleted), self.nonce)
        return self._digest

    def score(self, decay: float) -> float:
        """Return ``w + decay * t`` (t in seconds): the record's priority in log units."""
        return score(self.w, self.t, decay)

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map ``{x, k, v, t, w, n, d}``."""
        return {"x": TAG, "k": self.key, "v": self.value, "t": self.t, "w": self.w,
                "n": self.nonce, "d": self.deleted}

    def pack(self) -> bytes:
        """Return the record encoded as a msgpack map, as it travels and rests (the bytes it
        was decoded from, when it came off the wire: they decode to this very record)."""
        if self._packed is None:
            self._packed = packb(self.to_wire())
        return self._packed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self.key == other.key and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        kind = "tombstone" if self.deleted else "record"
        return f"<{kind} {self.key!r} t={self.t} w={self.w:.3f} digest={self.digest[:6].hex()}>"


class Held(NamedTuple):
    """What a node holds for a key, as read from the stored header alone (no decoding)."""

    t: int
    w: float
    digest: bytes
    deleted: bool

    def score(self, decay: float) -> float:
        """The held record's score (see :func:`score`)."""
        return score(self.w, self.t, decay)


class Version(Protocol):
    """A record or a held header: what the order needs."""

    t: int
    w: float
    digest: bytes
    deleted: bool

    def score(self, decay: float) -> float: ...


# -- digest, score and order ----------------------------------------------------------------------

def canonical(key: str, value: Any, t: int, w: float, deleted: bool) -> bytes:
    """Return the canonical bytes of ``(key, v, t, w, d)`` that the digest covers."""
    return packb([key, value, t, float(w), bool(deleted)])


def digest_of(canonical_bytes: bytes, nonce: bytes) -> bytes:
    """Return ``blake2b-256(canonical_bytes + nonce)`` personalised with :data:`DIGEST_PERSON`."""
    h = hashlib.blake2b(canonical_bytes, digest_size=32, person=DIGEST_PERSON)
    h.update(nonce)
    return h.digest()


def score(w: float, t: int, decay: float) -> float:
    """Return the priority score ``w + decay * t / 1e6`` (t in microseconds)."""
    return w + decay * (t / 1e6)


def work_to_beat(held_score: float, t: int, decay: float) -> float:
    """Return the least work a record written at ``t`` needs for a score above
    ``held_score``: the inverse of :func:`score`, plus a margin for float rounding."""
    return held_score - decay * (t / 1e6) + 1e-6


def outranks(score_a: float, digest_a: bytes, score_b: float, digest_b: bytes) -> bool:
    """The order itself, on scores and digests: higher score first, then smaller digest."""
    if score_a != score_b:
        return score_a > score_b
    return digest_a < digest_b


def beats(a: Version, b: Version | None, decay: float) -> bool:
    """Return True when ``a`` has strictly higher priority than ``b`` (None loses to anything).

    Works on records and on held headers alike. The order is total, and the same on every
    replica because it does not read the local clock.
    """
    if b is None:
        return True
    if a.digest == b.digest:   # the same record does not beat itself (and this is cheap)
        return False
    return outranks(a.score(decay), a.digest, b.score(decay), b.digest)


def winner(records: list[Record | None], decay: float) -> Record | None:
    """Return the highest-priority record of ``records`` (None entries ignored), or None."""
    best: Record | None = None
    for rec in records:
        if rec is not None and beats(rec, best, decay):
            best = rec
    return best


# -- the accept rule ------------------------------------------------------------------------------

def check(rec: Record, params: Mapping[str, Any], now: int | None = None) -> None:
    """Check what the order cannot: the proof-of-work gate (up to the ring's ``max_work``)
    and the clock.

    :raises InvalidRecord: when the work is not shown or ``t`` is too far ahead of ``now``.
    """
    common.check_work(rec.w, rec.digest, params["min_work"], params["max_work"])
    common.check_time(rec.t, params["max_skew"], now)


def supersedes(incoming: Version, stored: Version | None, params: Mapping[str, Any]) -> bool:
    """The merge: does ``incoming`` replace ``stored``? (:func:`beats` at the ring's decay.)"""
    return beats(incoming, stored, params["decay"])


def accepts(incoming: Record, stored: Version | None, params: Mapping[str, Any],
            now: int | None = None) -> bool:
    """The accept rule: is ``incoming`` to replace ``stored``?

    Returns True iff ``incoming`` is valid, not too far in the future (:func:`check`), and
    beats ``stored`` (:func:`supersedes`); False when ``stored`` is the same record or beats
    it. A node applies it in two halves: :func:`check` when it admits a batch (so a bad batch
    changes nothing), :func:`supersedes` inside the write transaction.

    :raises InvalidRecord: when ``incoming`` is invalid or too far ahead of the clock.
    """
    check(incoming, params, now)
    return supersedes(incoming, stored, params)


def expired(version: Version, cutoff_us: int) -> bool:
    """Return whether ``version`` is a tombstone written before ``cutoff_us``
    (:func:`sdht.wire.tombstone_cutoff`): it may be purged and is no longer copied."""
    return version.deleted and version.t < cutoff_us


# -- how a node stores it -------------------------------------------------------------------------

#: What a node keeps beside the digest, so the order never decodes a stored record.
_HEAD = struct.Struct(">qd?")
HEAD_BYTES = _HEAD.size


def head(rec: Record) -> bytes:
    """Return the fixed-size header a node stores after the digest: t, w, tombstone flag."""
    return _HEAD.pack(rec.t, rec.w, rec.deleted)


def held(digest: bytes, header: bytes) -> Held:
    """Return the held version described by a digest and a :func:`head` header."""
    t, w, deleted = _HEAD.unpack(header)
    return Held(t, w, digest, deleted)


def describe(version: Version, params: Mapping[str, Any]) -> dict[str, Any]:
    """Return what a node tells a writer about the version that superseded its write."""
    return {"score": version.score(params["decay"]), "digest": version.digest,
            "t": version.t, "w": version.w}


# -- the wire -------------------------------------------------------------------------------------

def from_wire(obj: Any, params: Mapping[str, Any]) -> Record:
    """Build a record from a decoded wire map, checking every field's type and size against
    the ring's limits in ``params``. Work and time are checked by :func:`check`.

    :raises InvalidRecord: for missing or extra fields or wrong types.
    :raises ValueTooLarge: for a key or value over the limits in ``params``.
    """
    common.check_fields(obj, FIELDS, NAME)
    if obj["x"] != TAG or type(obj["x"]) is not int:
        raise InvalidRecord(f"not a register (kind {obj['x']!r})")
    key, value, t, w, nonce, deleted = (obj["k"], obj["v"], obj["t"], obj["w"], obj["n"],
                                        obj["d"])
    common.check_key(key, params)
    common.check_timestamp_field(t)
    common.check_work_field(w)
    common.check_nonce_field(nonce)
    if type(deleted) is not bool:
        raise InvalidRecord("d must be a boolean")
    if deleted and value is not None:
        raise InvalidRecord("a tombstone (d=true) must have v=nil")
    # Encode the value once: the canonical bytes give both its size and the digest.
    common.check_plain(value)
    canon = common.encode(canonical, key, value, t, w, deleted)
    if len(canon) > params["max_value_bytes"]:
        # The value's own encoding is shorter than the canonical bytes holding it, so only a
        # long one needs its exact size: the bytes around it are those of a nil value's.
        common.check_size(len(canon) - len(canonical(key, None, t, w, deleted)) + 1, params)
    rec = Record(key, value, t, w, nonce, deleted)   # nil above packs as 1 byte
    rec._digest = digest_of(canon, nonce)
    return rec


def from_packed(data: bytes, params: Mapping[str, Any]) -> Record:
    """Decode a packed record (the inverse of :meth:`Record.pack`)."""
    rec = from_wire(unpackb(data), params)
    rec._packed = bytes(data)
    return rec

