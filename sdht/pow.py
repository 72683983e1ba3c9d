"""Minting: finding a nonce that gives a record the work it declares (hashcash style).

The canonical prefix ``(k, v, t, w, d)`` is hashed once. A nonce is an 8-byte big-endian counter;
the search walks the counter in blocks of 256 that share their first seven bytes, so each block
copies the prefix state once, feeds it those seven bytes, and then each try copies that state and
feeds one byte. The per-try work runs inside C iterators (``map``, ``any``, ``min``) rather than
Python bytecode, which keeps the search close to the speed of a bare hashing loop (issue 7: at
least 0.9x; ``bench/bench_pow.py`` measures it).

Expensive work (renting a key, docs/design.md, "The record") can use several cores: ``processes=``
searches disjoint counter ranges in separate processes and takes the first proof found.
"""
from __future__ import annotations

import hashlib
import math
import os
import selectors
import subprocess
import sys
from itertools import repeat
from typing import Any

from .errors import SDHTError
from .kinds.common import work_target
from .kinds.register import DIGEST_PERSON, Record, canonical
from .wire import now_us

_TWO_256 = 1 << 256
#: Directory holding the ``sdht`` package, put on the search children's path.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MASK64 = (1 << 64) - 1
#: Tries per block: the counters that share the nonce's first seven bytes.
BLOCK = 256
#: The last nonce byte of each try in a block, built once (a slice of it costs no Python loop).
_TAILS = [bytes((i,)) for i in range(BLOCK)]
#: Up to this many expected tries (work ~4.2), a plain loop is faster than the block search.
SMALL_WORK_TRIES = 64
#: Below this many expected tries, starting processes costs more than it saves (~0.2 s of work).
PARALLEL_MIN_TRIES = 1 << 20

# Unbound methods of the hash type, so that map() can call them without a Python frame.
_copy = hashlib.blake2b.copy
_update = hashlib.blake2b.update
_digest = hashlib.blake2b.digest


def target_bytes(w: float) -> bytes | None:
    """Return the work target as 32 big-endian bytes, or None when any digest meets it.

    Comparing digests as bytes is the same as comparing them as big-endian integers, and
    much cheaper than converting every digest to an int.
    """
    target = work_target(w)
    return None if target >= _TWO_256 else target.to_bytes(32, "big")


def nonce_bytes(counter: int) -> bytes:
    """Return the nonce of search counter ``counter``: 8 bytes, big-endian, modulo 2**64."""
    return (counter & _MASK64).to_bytes(8, "big")


def find_nonce(prefix: bytes, w: float, start: int | None = None, limit: int | None = None,
               processes: int = 1, fallback: bool = True) -> tuple[bytes, bytes] | None:
    """Search nonces for one whose digest over ``prefix + nonce`` shows work ``w``.

    :param prefix: the canonical bytes of the record (see :func:`sdht.kinds.register.canonical`).
    :param w: the declared work to meet.
    :param start: first nonce counter to try (random when None).
    :param limit: number of tries before giving up (unbounded when None).
    :param processes: worker processes to search with. More than one is used only when the
        expected ``e**w`` tries make it pay (:data:`PARALLEL_MIN_TRIES`); each process searches
        its own counter range.
    :param fallback: what to do when a search process fails (exits without an answer). True:
        carry on; an unbounded search that no process answered is done again in this process
        (slower, but it answers). False: raise :class:`~sdht.errors.SDHTError`, so that a
        caller (a test, a benchmark) knows the processes did the work.
    :returns: ``(nonce, digest)``, or None when ``limit`` tries found nothing.
    """
    counter = int.from_bytes(os.urandom(8), "big") if start is None else start & _MASK64
    if processes > 1 and _expected_tries(w) >= PARALLEL_MIN_TRIES:
        return _find_parallel(prefix, w, counter, limit, processes, fallback)
    return _search(prefix, w, counter, limit)


def mint(key: str, value: Any, w: float, t: int | None = None, deleted: bool = False,
         processes: int = 1, fallback: bool = True) -> Record:
    """Return a new record for ``key`` that carries a valid proof of work ``w``.

    Expected cost is ``e**w`` hashes. ``t`` defaults to now (microseconds); ``processes`` and
    ``fallback`` as in :func:`find_nonce`.
    """
    t = now_us() if t is None else t
    found = find_nonce(canonical(key, value, t, w, deleted), w, processes=processes,
                       fallback=fallback)
    assert found is not None  # an unbounded search always returns
    rec = Record(key, value, t, w, found[0], deleted)
    rec._digest = found[1]
    return rec


def _expected_tries(w: float) -> float:
    return math.exp(min(w, 700.0))  # exp() overflows past ~709; any such work is unreachable


def _search(prefix: bytes, w: float, counter: int,
            limit: int | None) -> tuple[bytes, bytes] | None:
    """Search ``limit`` counters from ``counter`` in this process."""
    base = hashlib.blake2b(prefix, digest_size=32, person=DIGEST_PERSON)
    target = target_bytes(w)
    if target is None:  # any digest shows this work
        nonce = nonce_bytes(counter)
        return (nonce, _hash(base, nonce)) if limit is None or limit > 0 else None
    expected = _expected_tries(w)
    if expected <= SMALL_WORK_TRIES:
        return _search_small(base, target, counter, limit)
    step = min(BLOCK, math.ceil(expected))
    left = math.inf if limit is None else limit
    while left > 0:
        head = (counter >> 8) & 0xFFFFFFFFFFFFFF
        block = base.copy()
        block.update(head.to_bytes(7, "big"))
        lo = counter & 0xFF
        while lo < BLOCK and left > 0:
            hi = int(min(BLOCK, lo + step, lo + left))
            # One copy, one 1-byte update and one digest per try, all driven from C.
            states = list(map(_copy, repeat(block, hi - lo)))
            any(map(_update, states, _TAILS[lo:hi]))
            best = min(map(_digest, states))
            if best < target:   # once per search: finding the index again costs one block
                i = [_digest(s) for s in states].index(best)
                return head.to_bytes(7, "big") + _TAILS[lo + i], best
            left -= hi - lo
            lo = hi
        counter = (head + 1) << 8 & _MASK64
    return None


def _search_small(base: Any, target: bytes, counter: int,
                  limit: int | None) -> tuple[bytes, bytes] | None:
    """Try counters one by one: for small work (the common ``min_work`` write) a plain loop
    beats the block search, whose fixed cost per block outweighs its cheaper tries."""
    stop = math.inf if limit is None else counter + limit
    while counter < stop:
        nonce = nonce_bytes(counter)
        h = base.copy()
        h.update(nonce)
        digest = h.digest()
        if digest < target:
            return nonce, digest
        counter += 1
    return None


def _hash(base: Any, nonce: bytes) -> bytes:
    h = base.copy()
    h.update(nonce)
    return h.digest()


def _find_parallel(prefix: bytes, w: float, counter: int, limit: int | None,
                   processes: int, fallback: bool = True) -> tuple[bytes, bytes] | None:
    """Split the counter space into ``processes`` disjoint ranges and search them at once.

    Each range is searched by a fresh ``python -c`` child that reads its job from the command
    line and prints one line. Plain subprocesses rather than :mod:`multiprocessing`: nothing is
    pickled, no threaded caller (a gunicorn worker holding LMDB) is forked, and a script without
    a ``__main__`` guard is not re-imported by the children.
    """
    span = (1 << 64) // processes if limit is None else -(-limit // processes)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    children = []
    try:
        for i in range(processes):
            share = "-" if limit is None else str(max(0, min(span, limit - i * span)))
            argv = [sys.executable, "-c", "from sdht.pow import _child; _child()", prefix.hex(),
                    repr(float(w)), str((counter + i * span) & _MASK64), share]
            children.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, env=env))
        with selectors.DefaultSelector() as sel:
            for child in children:
                sel.register(child.stdout, selectors.EVENT_READ)
            while sel.get_map():
                for ready, _ in sel.select():
                    sel.unregister(ready.fileobj)
                    line = ready.fileobj.readline()
                    found = _parse_child(line, prefix, w)
                    if found is not None:
                        return found
                    if not fallback and line != b"-\n":   # "-": its share held no proof
                        raise SDHTError(f"a nonce search process failed (it said {line!r}); "
                                        f"its error, if any, is on stderr")
        # Every child exhausted its share, or died: an unbounded search must still answer.
        if limit is None and not fallback:
            raise SDHTError("no nonce search process found a proof in an unbounded search")
        return None if limit is not None else _search(prefix, w, counter, None)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()


def _parse_child(line: bytes, prefix: bytes, w: float) -> tuple[bytes, bytes] | None:
    """Read a child's answer, and check it rather than trust it (a crashed child says nothing)."""
    parts = line.split()
    if len(parts) != 2:
        return None
    nonce = bytes.fromhex(parts[0].decode())
    digest = _hash(hashlib.blake2b(prefix, digest_size=32, person=DIGEST_PERSON), nonce)
    target = target_bytes(w)
    return (nonce, digest) if target is None or digest < target else None


def _child() -> None:
    """Entry point of a search child: ``PREFIX_HEX W START LIMIT|-`` in argv, one line out."""
    prefix_hex, w, start, limit = sys.argv[1:5]
    found = _search(bytes.fromhex(prefix_hex), float(w), int(start),
                    None if limit == "-" else int(limit))
    sys.stdout.write(f"{found[0].hex()} {found[1].hex()}\n" if found else "-\n")
    sys.stdout.flush()
