"""Batch reads and writes: the quorum rules of one key, for many keys at once.

Keys are grouped by replica node so that each node gets one batch request per round (see
:func:`rounds`), instead of one request per key and replica.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from .errors import QuorumError
from .kinds.register import Record, winner
from .quorum import MAX_REROUTES, Quorum, valid, write_shortfall
from .transport import PutOutcome
from .wire import BATCH, SUPERSEDED, now_us

#: A replica's answer for one key that failed its checks (:func:`sdht.quorum.check_answer`):
#: counted as that replica's error for that key, never as an answer.
FAULTY = object()
#: ``(answers by key then node, errors by node, epochs seen)``, as :func:`rounds` returns them.
BatchAnswers = tuple[dict[str, dict[str, Any]], dict[str, str], list[int]]


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
        answers, errors, epochs = rounds(
            quorum, handle.transport.put_many, plans, records.__getitem__, settled)
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
        answers, errors, epochs = rounds(
            quorum, fetch,
            {k: (replicas[:need[k]], replicas[need[k]:]) for k, replicas in placed.items()},
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


def rounds(quorum: Quorum, fn: Callable[[str, list], tuple[list, int]],
           plans: Mapping[str, tuple[list[str], list[str]]],
           item: Callable[[str], Any],
           satisfied: Callable[[str, dict[str, Any]], bool]) -> BatchAnswers:
    """Batch requests in up to two rounds: each key to its first nodes, then the keys
    not yet ``satisfied`` to their other nodes. One batch per node per round (in chunks of
    :data:`BATCH`), nodes in parallel.

    :param fn: sends one chunk to a node: ``fn(node, items) -> (answers, epoch)``.
    :param plans: per key, ``(nodes of the first round, nodes of the second)``.
    :param item: what to send for a key (the key itself, or its record).
    :param satisfied: whether a key's answers so far (by node) are enough.
    :returns: ``(answers by key then node, errors by node, epochs seen)``.
    """
    answers: dict[str, dict[str, Any]] = {key: {} for key in plans}
    errors: dict[str, str] = {}
    epochs: list[int] = []

    def run(node: str, items: list) -> tuple[list, int]:
        out: list = []
        epoch = 0
        for i in range(0, len(items), BATCH):
            part, epoch = fn(node, items[i:i + BATCH])
            out += part
        return out, epoch

    for round_ in (0, 1):
        by_node: dict[str, list[str]] = {}
        for key, nodes in plans.items():
            if round_ == 0 or not satisfied(key, answers[key]):
                for node in nodes[round_]:
                    by_node.setdefault(node, []).append(key)
        if not by_node:
            break
        replies, failed, seen = quorum.gather(
            {node: (run, node, [item(k) for k in ks]) for node, ks in by_node.items()},
            len(by_node))
        errors.update(failed)
        epochs += seen
        for node, values in replies.items():
            for key, value in zip(by_node[node], values):
                answers[key][node] = value
    return answers, errors, epochs
