"""Minting: finding a nonce that gives a record the work it declares (hashcash style).

The canonical prefix ``(k, v, t, w, d)`` is hashed once; each try copies that hash state and
feeds only the 8-byte nonce, so a try costs one blake2b compression (DESIGN: "The record").
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

from .record import DIGEST_PERSON, Record, canonical, now_us, work_target

_TWO_256 = 1 << 256


def target_bytes(w: float) -> bytes | None:
    """Return the work target as 32 big-endian bytes, or None when any digest meets it.

    Comparing digests as bytes is the same as comparing them as big-endian integers, and
    much cheaper than converting every digest to an int.
    """
    target = work_target(w)
    return None if target >= _TWO_256 else target.to_bytes(32, "big")


def find_nonce(prefix: bytes, w: float, start: int | None = None,
               limit: int | None = None) -> tuple[bytes, bytes] | None:
    """Search nonces for one whose digest over ``prefix + nonce`` shows work ``w``.

    :param prefix: the canonical bytes of the record (see :func:`sdht.record.canonical`).
    :param start: first nonce counter to try (random when None).
    :param limit: number of tries before giving up (unbounded when None).
    :returns: ``(nonce, digest)``, or None when ``limit`` tries found nothing.
    """
    base = hashlib.blake2b(prefix, digest_size=32, person=DIGEST_PERSON)
    target = target_bytes(w)
    counter = int.from_bytes(os.urandom(8), "little") if start is None else start
    stop = None if limit is None else counter + limit
    copy = base.copy
    while stop is None or counter < stop:
        nonce = (counter & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        h = copy()
        h.update(nonce)
        digest = h.digest()
        if target is None or digest < target:
            return nonce, digest
        counter += 1
    return None


def mint(key: str, value: Any, w: float, t: int | None = None, deleted: bool = False) -> Record:
    """Return a new record for ``key`` that carries a valid proof of work ``w``.

    Expected cost is ``e**w`` hashes. ``t`` defaults to now (microseconds).
    """
    t = now_us() if t is None else t
    found = find_nonce(canonical(key, value, t, w, deleted), w)
    assert found is not None  # an unbounded search always returns
    rec = Record(key, value, t, w, found[0], deleted)
    rec._digest = found[1]
    return rec
