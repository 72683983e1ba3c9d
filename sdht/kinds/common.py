"""Checks every kind of entry shares: the key, plain values, the proof-of-work gate, the clock.

Every entry pays the proof-of-work gate (docs/design.md, "Kinds of entries"): its digest, a
blake2b-256 personalised by its kind, must stay under ``2**256 * exp(-w)`` for the work ``w`` it
declares, and ``w`` must be at least the ring's ``min_work``. The kinds call these functions; none
of them writes a check again.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

from ..errors import InvalidRecord, ValueTooLarge
from ..wire import now_us, packb

#: The most work a 256-bit digest can show: ln(2**256).
MAX_WORK = 256 * math.log(2)
#: Largest timestamp accepted (microseconds): keeps ``t`` inside a signed 64-bit msgpack int.
MAX_TIME_US = 2**63 - 1
#: Longest nonce, in bytes.
MAX_NONCE_BYTES = 64
#: Deepest nesting of lists and maps accepted inside a value.
MAX_DEPTH = 32


@functools.lru_cache(maxsize=256)   # a cluster uses a handful of work values: min_work, rents
def work_target(w: float) -> int:
    """Return the bound a digest (as a big-endian integer) must stay under to show work ``w``."""
    return int(math.ldexp(math.exp(-w), 256))


def realised_work(digest: bytes) -> float:
    """Return ``ln(2**256) - ln(digest + 1)``: the work a digest actually shows."""
    return MAX_WORK - math.log(int.from_bytes(digest, "big") + 1)


def check_work(w: float, digest: bytes, min_work: float, max_work: float = MAX_WORK) -> None:
    """The proof-of-work gate: ``w`` is between ``min_work`` and ``max_work`` (the ring's
    ceiling on rent; a reader of stored entries leaves it at ``MAX_WORK``), and ``digest``
    shows it.

    :raises InvalidRecord: when the declared work is out of range or the digest does not meet it.
    """
    if not (math.isfinite(w) and min_work <= w <= min(max_work, MAX_WORK)):
        raise InvalidRecord(f"declared work {w!r} is outside [{min_work}, "
                            f"{min(max_work, MAX_WORK):.2f}]")
    if int.from_bytes(digest, "big") >= work_target(w):
        raise InvalidRecord(f"digest does not show the declared work {w:.3f} "
                            f"(it shows {realised_work(digest):.3f})")


def check_time(t: int, max_skew: float, now: int | None = None) -> None:
    """Check that ``t`` (microseconds) is not more than ``max_skew`` seconds ahead of ``now``.

    :raises InvalidRecord: when the timestamp is too far in the future.
    """
    now = now_us() if now is None else now
    if t > now + int(max_skew * 1e6):
        raise InvalidRecord(f"timestamp is {(t - now) / 1e6:.3f}s in the future "
                            f"(max_skew {max_skew}s)")


def check_timestamp_field(t: Any) -> int:
    """Check the type and range of a wire timestamp (microseconds since the epoch).

    :raises InvalidRecord: when it is not an integer in ``[0, MAX_TIME_US]``.
    """
    if type(t) is not int or not 0 <= t <= MAX_TIME_US:
        raise InvalidRecord("t must be an integer number of microseconds since the epoch")
    return t


def check_nonce_field(nonce: Any) -> bytes:
    """Check a wire nonce: 1 to :data:`MAX_NONCE_BYTES` bytes.

    :raises InvalidRecord: otherwise.
    """
    if type(nonce) is not bytes or not 0 < len(nonce) <= MAX_NONCE_BYTES:
        raise InvalidRecord(f"n must be 1 to {MAX_NONCE_BYTES} bytes")
    return nonce


def check_work_field(w: Any) -> float:
    """Check a wire work figure: a finite number. Returns it as a float.

    :raises InvalidRecord: otherwise.
    """
    if type(w) not in (int, float) or not math.isfinite(w):
        raise InvalidRecord("w must be a finite number")
    return float(w)


def check_fields(obj: Any, fields: frozenset[str], kind: str) -> None:
    """Check that a decoded wire entry is a map with exactly ``fields``.

    :raises InvalidRecord: naming what is missing and what is extra.
    """
    if not isinstance(obj, dict):
        raise InvalidRecord(f"a {kind} entry must be a msgpack map")
    keys = set(obj)
    if keys != fields:
        missing = sorted(str(k) for k in fields - keys)
        extra = sorted(repr(k) for k in keys - fields)
        raise InvalidRecord(f"{kind} fields must be {','.join(sorted(fields))} "
                            f"(missing {missing}, extra {extra})")


def check_key(key: Any, params: Mapping[str, Any]) -> bytes:
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


def check_value(value: Any, params: Mapping[str, Any]) -> int:
    """Check that ``value`` is plain msgpack data within ``max_value_bytes``; return its size.

    :raises InvalidRecord: for unsupported types or nesting deeper than :data:`MAX_DEPTH`.
    :raises ValueTooLarge: when its encoding is over the limit.
    """
    check_plain(value)
    return check_size(len(encode(packb, value)), params)


def check_size(size: int, params: Mapping[str, Any]) -> int:
    """Check an encoded value's size against ``max_value_bytes``; return it.

    :raises ValueTooLarge: when it is over the limit.
    """
    if size > params["max_value_bytes"]:
        raise ValueTooLarge(f"value is {size} bytes; the limit is {params['max_value_bytes']}")
    return size


def encode(encoder: Any, *args: Any) -> bytes:
    """Run ``encoder(*args)``, turning an encoding failure into :class:`InvalidRecord`."""
    try:
        return encoder(*args)
    except (ValueError, OverflowError, UnicodeEncodeError) as exc:
        raise InvalidRecord(f"value cannot be encoded: {exc}") from None


_SCALARS = (type(None), bool, int, float, str, bytes)


def check_plain(value: Any, depth: int = 0) -> None:
    """Check that ``value`` is plain msgpack data: None, bool, 64-bit int, float, str, bytes,
    and lists and maps of them, nested at most :data:`MAX_DEPTH` deep.

    :raises InvalidRecord: naming the first thing that is not.
    """
    if depth > MAX_DEPTH:
        raise InvalidRecord(f"value nests deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind in _SCALARS:
        if kind is int and not -2**63 <= value < 2**64:
            raise InvalidRecord("integers must fit in 64 bits")
        return
    if kind in (list, tuple):
        for item in value:
            check_plain(item, depth + 1)
        return
    if kind is dict:
        for k, item in value.items():
            if type(k) not in _SCALARS or type(k) is float:
                raise InvalidRecord("map keys must be str, bytes, int, bool or nil")
            check_plain(k, depth + 1)
            check_plain(item, depth + 1)
        return
    raise InvalidRecord(f"values of type {kind.__name__} cannot be stored")
