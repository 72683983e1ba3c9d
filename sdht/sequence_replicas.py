"""A sequence's replica requests: minting an op, writing ops with ``w`` acknowledgements,
asking a replica for the summary of the ops it holds, and reading them all (``GET
/v1/sequence``, one range read per page).

:class:`sdht.sequences.Sequence` runs these through the ring's :class:`~sdht.quorum.Quorum`, so
they share its health memory, its parallel fan-out and its re-routing on a newer ring.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Mapping

from .errors import NodeError, QuorumError
from .kinds import sequence
from .hashseq_op import ID_BYTES
from .kinds.sequence import OpEntry
from .nodeapi import MSGPACK, answer_of
from .pow import find_nonce
from .quorum import MAX_REROUTES, Quorum
from .replicas import replica_sets, write_plan, write_shortfall
from .wire import BATCH, now_us, packb

#: The node's route that returns a page of a key's ops (storage/sequence_routes.py).
ROUTE = "/v1/sequence"
#: Pages of ops one read of one replica follows at most (a page is up to ``MAX_BATCH`` ops).
MAX_PAGES = 1000
#: Op ids asked for in one ``POST /v1/sequence/get``.
ASK = 256


def mint_op(key: str, op: Any, w: float, t: int | None = None) -> OpEntry:
    """Return the entry of ``op`` under the sequence ``key``, showing work ``w``."""
    t = now_us() if t is None else t
    found = find_nonce(sequence.canonical(key, op.id, t, w), w)
    assert found is not None  # an unbounded search always answers
    return OpEntry(key, op, t, w, found[0], found[1])


def write(quorum: Quorum, key: str, entries: list[OpEntry]) -> None:
    """Write ``entries`` (ops of ``key``) until ``w`` of the current and of the future
    placement hold them all. Any outcome counts: the merge is union, so a node that answered
    holds each op (``same`` or ``superseded``: with another proof of the same op). A replica
    skipped, failed or silent gets the ops as hints, as a register's write does.

    :raises QuorumError: when fewer than ``w`` of a placement acknowledged.
    """
    handle = quorum.handle
    for _ in range(MAX_REROUTES):
        view = handle.current()
        w = view.params["w"]
        sets = replica_sets(view, key)
        first, spare = write_plan(sets, quorum.health.is_suspect)
        targets = first + spare
        running: dict[str, Future] = {}
        replies, errors, epochs = quorum.gather(
            {n: (_put, quorum, n, entries) for n in first}, len(targets),
            spares={n: (_put, quorum, n, entries) for n in spare}, running=running,
            enough=lambda got: write_shortfall(sets, got, w) is None)
        if handle.noticed(epochs):
            continue
        short = write_shortfall(sets, replies, w)
        if short is not None:
            raise QuorumError(f"write to sequence {key!r}: {short[0]} of {short[1]} replicas "
                              "acknowledged", key, short[1], short[0], errors)
        for entry in entries:   # hinted handoff, as for a register's write (sdht/hints.py)
            quorum.hinter.missing(entry, targets, list(replies), running)
        return
    raise QuorumError(f"write to sequence {key!r}: the ring kept changing", key)


def _put(quorum: Quorum, node: str, entries: list[OpEntry]) -> tuple[int, int]:
    epoch = 0
    for i in range(0, len(entries), BATCH):
        _, epoch = quorum.handle.transport.put_many(node, entries[i:i + BATCH])
    return len(entries), epoch


def fetch(quorum: Quorum, node: str, key: str) -> tuple[list[dict], int]:
    """Every op ``node`` holds for ``key``, as decoded maps (the caller checks each op), and
    the node's epoch.

    :raises NodeError: for a malformed answer, or one of more than :data:`MAX_PAGES` pages.
    """
    out: list[dict] = []
    cursor, epoch = None, 0
    for _ in range(MAX_PAGES):
        reply = quorum.handle.transport.request(node, "GET", ROUTE,
                                                params={"key": key, "after": cursor})
        epoch = reply.epoch
        with answer_of(node, "GET " + ROUTE):
            ops, cursor = reply.body["ops"], reply.body["next"]
            if not isinstance(ops, list) or not all(isinstance(o, dict) for o in ops):
                raise TypeError("ops must be a list of maps")
            if cursor is not None and not (isinstance(cursor, str) and len(cursor) == 64):
                raise ValueError("a malformed cursor")
        out += ops
        if cursor is None:
            return out, epoch
    raise NodeError(f"{node} answered more than {MAX_PAGES} pages of {key!r}", node)


def fetch_new(quorum: Quorum, node: str, key: str,
              known: Any) -> tuple[list[dict], set[bytes]]:
    """The ops ``node`` holds for ``key`` that are not in ``known`` (ids), as decoded maps,
    and the ids it holds: its ids first (32 bytes each), then only the ops missing.

    :raises NodeError: for a malformed answer, or one of more than :data:`MAX_PAGES` pages.
    """
    ids: set[bytes] = set()
    cursor = None
    for _ in range(MAX_PAGES):
        reply = quorum.handle.transport.request(node, "GET", ROUTE,
                                                params={"key": key, "ids": "1", "after": cursor})
        with answer_of(node, "GET " + ROUTE):
            blob, cursor = reply.body["ids"], reply.body["next"]
            if type(blob) is not bytes or len(blob) % ID_BYTES:
                raise ValueError("malformed ids")
            if cursor is not None and not (isinstance(cursor, str) and len(cursor) == 64):
                raise ValueError("a malformed cursor")
        ids.update(blob[i:i + ID_BYTES] for i in range(0, len(blob), ID_BYTES))
        if cursor is None:
            break
    else:
        raise NodeError(f"{node} answered more than {MAX_PAGES} pages of {key!r}", node)
    missing = [i for i in ids if i not in known]
    out: list[dict] = []
    for i in range(0, len(missing), ASK):
        part = missing[i:i + ASK]
        reply = quorum.handle.transport.request(
            node, "POST", ROUTE + "/get", data=packb({"k": key, "i": part}), headers=MSGPACK)
        with answer_of(node, "POST " + ROUTE + "/get"):
            if not isinstance(reply.body, list) or len(reply.body) != len(part):
                raise ValueError("not one answer per op asked")
            out += [obj for obj in reply.body if obj is not None]
    if not all(isinstance(o, dict) for o in out):
        raise NodeError(f"{node} answered ops that are not maps", node)
    return out, ids


def summarize(quorum: Quorum, node: str, key: str) -> tuple[bytes, int]:
    """The summary of the op ids ``node`` holds for ``key``
    (:func:`sdht.kinds.sequence.summary`), and the node's epoch.

    :raises NodeError: for a malformed answer.
    """
    reply = quorum.handle.transport.request(node, "GET", ROUTE,
                                            params={"key": key, "summary": "1"})
    with answer_of(node, "GET " + ROUTE):
        digest = reply.body["summary"]
        if type(digest) is not bytes or len(digest) != 32:
            raise ValueError("a malformed summary")
    return digest, reply.epoch


def repair(quorum: Quorum, held: Mapping[str, set[bytes]],
           entries: Mapping[bytes, OpEntry]) -> None:
    """Send each replica in ``held`` (node -> the op ids it holds) the ``entries`` (op id ->
    entry) it lacks, in the background (best effort: anti-entropy catches what this misses)."""
    for node, ids in held.items():
        missing = [e for i, e in entries.items() if i not in ids]
        for i in range(0, len(missing), BATCH):
            quorum.handle.transport.submit(quorum.repair, node, missing[i:i + BATCH])
