"""The record: its encoding, digest, work, score and the accept rule.

This is the one place these rules live; both the ring library and the storage node import it
(DESIGN: "The record"). A record is one stored version of a key:

======  ================================================================
``k``   the key (str)
``v``   the value: None, bool, int, float, str, bytes, list or dict
``t``   write time, integer microseconds since the Unix epoch
``w``   declared work in natural-log units (work 15 ~ e**15 hashes)
``n``   nonce (bytes) found by minting
``d``   True for a tombstone; ``v`` is then None
======  ================================================================

``digest = blake2b-256(canonical(k, v, t, w, d) + n, person=b"sdht-record-v1")`` and the record
is valid when ``digest < 2**256 * exp(-w)`` (that is ``ln(2**256) - ln(digest + 1) >= w`` up to
float rounding) and ``w >= min_work``. ``score = w + decay * t_seconds``; the higher score wins and
equal scores go to the smaller digest, so every replica orders two versions the same way.
"""
from __future__ import annotations

import functools
import hashlib
import math
import time
from typing import Any, Mapping

import msgpack

from ..errors import InvalidRecord, ValueTooLarge

#: blake2b personalisation: the domain tag that keeps record digests apart from other hashes.
DIGEST_PERSON = b"sdht-record-v1"
#: The most work a 256-bit digest can show: ln(2**256).
MAX_WORK = 256 * math.log(2)
#: Largest timestamp accepted (microseconds): keeps ``t`` inside a signed 64-bit msgpack int.
MAX_TIME_US = 2**63 - 1
MAX_NONCE_BYTES = 64
#: Deepest nesting of lists and maps accepted inside a value.
MAX_DEPTH = 32

#: Cluster parameters and limits, with their defaults. They live in the ring metadata so that
#: every node and client apply the same ones (DESIGN: "Cluster parameters").
DEFAULT_PARAMS: dict[str, Any] = {
    "decay": 0.0001,              # logwork per second: one unit of rent holds ~2.8 hours
    "min_work": 3.0,              # ~20 hashes, ~10 us to mint: far below one round trip
    "max_skew": 2.0,              # seconds a timestamp may run ahead of a node's clock
    "n": 3,                       # replicas per key
    "r": 2,                       # replies a read waits for
    "w": 2,                       # acknowledgements a write waits for
    "tokens": 128,                # virtual nodes per member
    "max_key_bytes": 1024,        # UTF-8 bytes
    "max_value_bytes": 1 << 20,   # 1 MiB, msgpack-encoded
    "tombstone_grace": 7 * 86400.0,  # seconds a tombstone is kept before it may be purged
}

_WIRE_FIELDS = frozenset("kvtwnd")


def now_us() -> int:
    """Return the current wall-clock time in integer microseconds since the epoch."""
    return time.time_ns() // 1000


class Record:
    """One version of a key. Immutable by convention; the digest is computed once, on demand."""

    __slots__ = ("key", "value", "t", "w", "nonce", "deleted", "_digest", "_packed")

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
        """Return the msgpack-ready map ``{k, v, t, w, n, d}``."""
        return {"k": self.key, "v": self.value, "t": self.t, "w": self.w,
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


def packb(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack the one way sdht does (bin type for bytes, float64)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode msgpack strictly: str stays str, bytes stay bytes, no extension types.

    :raises InvalidRecord: on malformed, truncated or trailing data, or extension types.
    """
    try:
        return msgpack.unpackb(data, **_STRICT)
    except InvalidRecord:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:  # the msgpack errors all derive from ValueError
        raise _malformed(exc) from None


def unpack_items(data: bytes) -> list[tuple[Any, bytes]]:
    """Decode a msgpack array as strictly as :func:`unpackb`, keeping each item's own bytes.

    A node stores a record as the bytes it arrived as, so it never encodes it again.

    :raises InvalidRecord: when ``data`` is not exactly one well-formed array.
    """
    unpacker = msgpack.Unpacker(**_STRICT, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        count = unpacker.read_array_header()
    except (ValueError, msgpack.OutOfData):
        raise InvalidRecord("the body must be a msgpack array") from None
    try:
        items = []
        for _ in range(count):
            start = unpacker.tell()
            obj = unpacker.unpack()
            items.append((obj, data[start:unpacker.tell()]))
    except InvalidRecord:
        raise
    except (ValueError, TypeError, msgpack.OutOfData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise _malformed(exc) from None
    if unpacker.tell() != len(data):
        raise InvalidRecord("malformed msgpack: trailing bytes after the array")
    return items


# max_ext_len=0: msgpack decodes extension type -1 (timestamp) itself, without asking
# ext_hook, so the length limit is what refuses it; ext_hook catches empty extensions.
_STRICT: dict[str, Any] = {"raw": False, "strict_map_key": False, "max_ext_len": 0,
                           "timestamp": 0}


def _malformed(exc: Exception) -> InvalidRecord:
    if "max_ext_len" in str(exc) or "timestamp" in str(exc):
        return InvalidRecord("msgpack extension types are not allowed")
    return InvalidRecord(f"malformed msgpack: {exc or exc.__class__.__name__}")


def _refuse_ext(code: int, data: bytes) -> Any:
    raise InvalidRecord(f"msgpack extension type {code} is not allowed")


_STRICT["ext_hook"] = _refuse_ext


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


@functools.lru_cache(maxsize=256)   # a cluster uses a handful of work values: min_work, rents
def work_target(w: float) -> int:
    """Return the bound a digest (as a big-endian integer) must stay under to show work ``w``."""
    return int(math.ldexp(math.exp(-w), 256))


def realised_work(digest: bytes) -> float:
    """Return ``ln(2**256) - ln(digest + 1)``: the work a digest actually shows."""
    return MAX_WORK - math.log(int.from_bytes(digest, "big") + 1)


def beats(a: Record, b: Record | None, decay: float) -> bool:
    """Return True when ``a`` has strictly higher priority than ``b`` (None loses to anything).

    Higher score wins; equal scores go to the smaller digest. The order is total, and the same
    on every replica because it does not read the local clock.
    """
    if b is None:
        return True
    if a.digest == b.digest:   # the same record does not beat itself (and this is cheap)
        return False
    return outranks(a.score(decay), a.digest, b.score(decay), b.digest)


def outranks(score_a: float, digest_a: bytes, score_b: float, digest_b: bytes) -> bool:
    """The order itself, on scores and digests: higher score first, then smaller digest."""
    if score_a != score_b:
        return score_a > score_b
    return digest_a < digest_b


def winner(records: list[Record | None], decay: float) -> Record | None:
    """Return the highest-priority record of ``records`` (None entries ignored), or None."""
    best: Record | None = None
    for rec in records:
        if rec is not None and beats(rec, best, decay):
            best = rec
    return best


def check_work(rec: Record, min_work: float) -> None:
    """Check that ``rec`` declares at least ``min_work`` and that its digest shows it.

    :raises InvalidRecord: when the declared work is out of range or the digest does not meet it.
    """
    if not (math.isfinite(rec.w) and min_work <= rec.w <= MAX_WORK):
        raise InvalidRecord(f"declared work {rec.w!r} is outside [{min_work}, {MAX_WORK:.2f}]")
    if int.from_bytes(rec.digest, "big") >= work_target(rec.w):
        raise InvalidRecord(f"digest does not show the declared work {rec.w:.3f} "
                            f"(it shows {realised_work(rec.digest):.3f})")


def check_time(rec: Record, max_skew: float, now: int | None = None) -> None:
    """Check that ``rec.t`` is not more than ``max_skew`` seconds ahead of ``now`` (microseconds).

    :raises InvalidRecord: when the timestamp is too far in the future.
    """
    now = now_us() if now is None else now
    if rec.t > now + int(max_skew * 1e6):
        raise InvalidRecord(f"timestamp is {(rec.t - now) / 1e6:.3f}s in the future "
                            f"(max_skew {max_skew}s)")


def accepts(incoming: Record, stored: Record | None, params: Mapping[str, Any],
            now: int | None = None) -> bool:
    """The accept rule: is ``incoming`` to replace ``stored``?

    Returns True iff ``incoming`` is valid, not too far in the future, and beats ``stored``;
    False when ``stored`` is the same record or beats it.

    :raises InvalidRecord: when ``incoming`` is invalid or too far ahead of the clock.
    """
    check_work(incoming, params["min_work"])
    check_time(incoming, params["max_skew"], now)
    return beats(incoming, stored, params["decay"])


def from_wire(obj: Any, params: Mapping[str, Any] = DEFAULT_PARAMS) -> Record:
    """Build a record from a decoded wire map, checking every field's type and size.

    The work and timestamp are not checked here (see :func:`accepts`).

    :raises InvalidRecord: for missing or extra fields or wrong types.
    :raises ValueTooLarge: for a key or value over the limits in ``params``.
    """
    if not isinstance(obj, dict):
        raise InvalidRecord("a record must be a msgpack map")
    keys = set(obj)
    if keys != _WIRE_FIELDS:
        missing = sorted(str(k) for k in _WIRE_FIELDS - keys)
        extra = sorted(repr(k) for k in keys - _WIRE_FIELDS)
        raise InvalidRecord(f"record fields must be k,v,t,w,n,d (missing {missing}, extra {extra})")
    key, value, t, w, nonce, deleted = (obj["k"], obj["v"], obj["t"], obj["w"], obj["n"],
                                        obj["d"])
    check_key(key, params)
    if type(t) is not int or not 0 <= t <= MAX_TIME_US:
        raise InvalidRecord("t must be an integer number of microseconds since the epoch")
    if type(w) not in (int, float) or not math.isfinite(w):
        raise InvalidRecord("w must be a finite number")
    if type(nonce) is not bytes or not 0 < len(nonce) <= MAX_NONCE_BYTES:
        raise InvalidRecord(f"n must be 1 to {MAX_NONCE_BYTES} bytes")
    if type(deleted) is not bool:
        raise InvalidRecord("d must be a boolean")
    if deleted and value is not None:
        raise InvalidRecord("a tombstone (d=true) must have v=nil")
    # Encode the value once: the canonical bytes give both its size and the digest.
    _check_plain(value, 0)
    canon = _encode(canonical, key, value, t, w, deleted)
    size = len(canon) - len(canonical(key, None, t, w, deleted)) + 1   # nil packs as 1 byte
    if size > params["max_value_bytes"]:
        raise ValueTooLarge(f"value is {size} bytes; the limit is {params['max_value_bytes']}")
    rec = Record(key, value, t, w, nonce, deleted)
    rec._digest = digest_of(canon, nonce)
    return rec


def from_packed(data: bytes, params: Mapping[str, Any] = DEFAULT_PARAMS) -> Record:
    """Decode a packed record (the inverse of :meth:`Record.pack`)."""
    rec = from_wire(unpackb(data), params)
    rec._packed = bytes(data)
    return rec


def check_key(key: Any, params: Mapping[str, Any] = DEFAULT_PARAMS) -> bytes:
    """Check that ``key`` is a non-empty str within ``max_key_bytes``; return its UTF-8 bytes.

    :raises InvalidRecord: when the key is not a str or is empty.
    :raises ValueTooLarge: when it is longer than the limit.
    """
    if type(key) is not str or not key:
        raise InvalidRecord("a key must be a non-empty str")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord("a key must be valid Unicode (no lone surrogates)") from None
    if len(raw) > params["max_key_bytes"]:
        raise ValueTooLarge(f"key is {len(raw)} bytes; the limit is {params['max_key_bytes']}")
    return raw


def check_value(value: Any, params: Mapping[str, Any] = DEFAULT_PARAMS) -> int:
    """Check that ``value`` is plain msgpack data within ``max_value_bytes``; return its size.

    :raises InvalidRecord: for unsupported types or nesting deeper than :data:`MAX_DEPTH`.
    :raises ValueTooLarge: when its encoding is over the limit.
    """
    _check_plain(value, 0)
    size = len(_encode(packb, value))
    if size > params["max_value_bytes"]:
        raise ValueTooLarge(f"value is {size} bytes; the limit is {params['max_value_bytes']}")
    return size


def _encode(encoder: Any, *args: Any) -> bytes:
    try:
        return encoder(*args)
    except (ValueError, OverflowError, UnicodeEncodeError) as exc:
        raise InvalidRecord(f"value cannot be encoded: {exc}") from None


_SCALARS = (type(None), bool, int, float, str, bytes)


def _check_plain(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidRecord(f"value nests deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind in _SCALARS:
        if kind is int and not -2**63 <= value < 2**64:
            raise InvalidRecord("integers must fit in 64 bits")
        return
    if kind in (list, tuple):
        for item in value:
            _check_plain(item, depth + 1)
        return
    if kind is dict:
        for k, item in value.items():
            if type(k) not in _SCALARS or type(k) is float:
                raise InvalidRecord("map keys must be str, bytes, int, bool or nil")
            _check_plain(k, depth + 1)
            _check_plain(item, depth + 1)
        return
    raise InvalidRecord(f"values of type {kind.__name__} cannot be stored")
