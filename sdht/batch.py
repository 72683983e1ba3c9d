"""Batch reads and writes: the quorum rules of one key, for many keys at once.

Keys are grouped by replica node so that each node gets one batch request per round (see
:meth:`sdht.quorum.Quorum.batch_rounds`), instead of one request per key and replica.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .errors import QuorumError
from .kinds.register import Record, winner
from .quorum import MAX_REROUTES, Quorum, valid, write_shortfall
from .transport import PutOutcome
from .wire import SUPERSEDED, now_us

#: A replica's answer for one key that failed its checks (:func:`sdht.quorum.check_answer`):
#: counted as that replica's error for that key, never as an answer.
FAULTY = object()


def write_many(quorum: Quorum, records: Mapping[str, Record]) -> list[str]:
    """Write ``records`` (by key) to their replicas, with the write quorum of every key.

    :returns: the keys that lost to a stored version of higher priority (not written); the
        caller decides whether to re-mint them.
    :raises QuorumError: naming the keys that fewer than ``w`` replicas acknowledged.
    """
    handle, health = quorum.handle, quorum.health
    w = handle.current().params["w"]
    for _ in range(MAX_REROUTES):
        view = handle.current()
        placed = {k: (view.readers.for_key(k), view.future.for_key(k)) for k in records}

        def settled(key: str, got: dict[str, PutOutcome]) -> bool:
            """w of each placement acknowledged, or a replica holds a higher version."""
            ok = {n for n, o in got.items() if o.status != SUPERSEDED}
            return len(ok) < len(got) or write_shortfall(placed[key], ok, w) is None

        plans = {}
        for key, (now_set, next_set) in placed.items():
            targets = list(dict.fromkeys(now_set + next_set))
            # Suspect nodes are written only in the second round, for keys still short.
            suspect = [n for n in targets if health.is_suspect(n)]
            plans[key] = ([n for n in targets if n not in suspect], suspect)
        answers, errors, epochs = quorum.batch_rounds(
            handle.transport.put_many, plans, records.__getitem__, settled)
        if handle.noticed(epochs):
            continue
        lost = [k for k, got in answers.items()
                if any(o.status == SUPERSEDED for o in got.values())]
        short = [k for k, got in answers.items() if k not in lost and not settled(k, got)]
        if short:
            raise QuorumError(f"batch write: {len(short)} keys got fewer than w "
                              f"acknowledgements (first: {short[0]!r})", short[0],
                              w, 0, errors)
        for key, got in answers.items():   # hinted handoff for replicas skipped or failed
            if key not in lost:
                quorum.hinter.missing(records[key], plans[key][0] + plans[key][1],
                                      list(got), {})
        return list(dict.fromkeys(lost))
    raise QuorumError("batch write: the ring kept changing")


def read_many(quorum: Quorum, keys: Iterable[str]) -> dict[str, Any]:
    """Read ``keys`` from ``r`` replicas each; return the values found.

    Missing and deleted keys are left out. Replicas that answered behind are sent the winners
    in the background (read repair), one batch per node.

    :raises QuorumError: when fewer than ``r`` replicas answered for some key.
    """
    keys = list(dict.fromkeys(keys))
    handle = quorum.handle
    p = handle.current().params
    faulty: dict[str, str] = {}
    # Replicas mostly answer the same bytes for a key: each distinct answer is decoded once
    # (by its bytes), and checked against its key once (by the record decoded and the key).
    decoded: dict[bytes, Record] = {}
    passed: set[tuple[int, str]] = set()

    def fetch(node: str, part: list[str]) -> tuple[list[Any], int]:
        """One batch from ``node``, each answer checked against its key before any use."""
        recs, epoch = handle.transport.get_many(node, part, p, decoded)
        now = now_us()
        checked = []
        for key, rec in zip(part, recs):
            if rec is not None and (id(rec), key) not in passed:
                if not valid(rec, key, p, now, node):
                    rec = FAULTY
                else:
                    passed.add((id(rec), key))   # decoded keeps rec alive: its id stays its own
            checked.append(rec)
        if any(rec is FAULTY for rec in checked):
            faulty[node] = f"{node} answered records that fail their checks"
        return checked, epoch

    def usable(got: dict[str, Any]) -> dict[str, Any]:
        return {node: rec for node, rec in got.items() if rec is not FAULTY}

    for _ in range(MAX_REROUTES):
        view = handle.current()
        order = quorum.health.orders()
        placed = {k: order(view.readers.for_key(k)) for k in keys}
        need = {k: min(p["r"], len(replicas)) for k, replicas in placed.items()}
        # Ask each key's first r replicas (healthy first); keys whose replicas failed, or
        # answered records that fail their checks, are asked of their others in a second round.
        answers, errors, epochs = quorum.batch_rounds(
            fetch, {k: (replicas[:need[k]], replicas[need[k]:]) for k, replicas in placed.items()},
            lambda k: k, lambda k, got: len(usable(got)) >= need[k])
        if handle.noticed(epochs):
            continue
        errors.update(faulty)
        seen = {key: usable(got) for key, got in answers.items()}
        result: dict[str, Any] = {}
        repairs: dict[str, list[Record]] = {}
        for key, found in seen.items():
            if len(found) < need[key]:
                raise QuorumError(f"batch read: {len(found)} of {need[key]} replicas "
                                  f"answered for {key!r}", key, need[key], len(found), errors)
            best = winner(list(found.values()), p["decay"])
            if best is None:
                continue
            if not best.deleted:
                result[key] = best.value
            for node, rec in found.items():
                if rec is None or rec.digest != best.digest:  # behind: the order is total
                    repairs.setdefault(node, []).append(best)
        for node, recs in repairs.items():
            handle.transport.submit(quorum.repair, node, recs)
        return result
    raise QuorumError("batch read: the ring kept changing")
