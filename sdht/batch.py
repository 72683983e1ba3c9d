"""Batch reads and writes: the quorum rules of one key, for many keys at once.

Keys are grouped by replica node so that each node gets one batch request per round (see
:func:`rounds`), instead of one request per key and replica.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from .errors import QuorumError
from .kinds.register import Record, winner
from .quorum import MAX_REROUTES, Quorum, valid
from .replicas import placements, write_plan, write_shortfall
from .ring import position
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
    handle, suspect = quorum.handle, quorum.health.is_suspect
    w = handle.current().params["w"]
    for _ in range(MAX_REROUTES):
        view = handle.current()
        # Suspect replicas are written only in the second round, for keys still short.
        placed, plans = _plans(records, placements(view), lambda sets: write_plan(sets, suspect))

        def settled(key: str, got: dict[str, PutOutcome]) -> bool:
            """w of each placement acknowledged, or a replica holds a higher version."""
            first, second = plans[key]
            if len(got) == len(first) + len(second):   # every replica answered: settled
                return True
            ok = {n for n, o in got.items() if o.status != SUPERSEDED}
            return len(ok) < len(got) or write_shortfall(placed[key], ok, w) is None

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
            first, second = plans[key]
            if key not in lost and len(got) < len(first) + len(second):
                quorum.hinter.missing(records[key], first + second, list(got), {})
        return list(dict.fromkeys(lost))
    raise QuorumError("batch write: the ring kept changing")


def _plans(keys: Iterable[str], placements: list[Any], make: Callable[[Any], Any]
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each key's replica sets (one per placement) and its plan of rounds, ``make(sets)``.

    Keys with the same replica sets share one plan, made once: a batch spans a few replica sets
    (one on a ring of n nodes), so each node's health is asked once per batch, not per key."""
    placed: dict[str, Any] = {}
    plans: dict[str, Any] = {}
    made: dict[Any, Any] = {}
    walks = [p.walk for p in placements]
    for key in keys:
        pos = position(key)
        sets = placed[key] = (walks[0](pos),) if len(walks) == 1 else \
            tuple(walk(pos) for walk in walks)
        plan = made.get(sets)
        if plan is None:
            plan = made[sets] = make(sets)
        plans[key] = plan
    return placed, plans


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
        # Ask each key's first r replicas (healthy first); keys whose replicas failed, or
        # answered records that fail their checks, are asked of their others in a second round.

        def plan(sets: tuple[tuple[str, ...]]) -> tuple[list[str], list[str]]:
            ordered = order(list(sets[0]))
            first = min(p["r"], len(ordered))
            return ordered[:first], ordered[first:]

        _, plans = _plans(keys, [view.readers], plan)
        need = {k: len(plan[0]) for k, plan in plans.items()}

        def enough(key: str, got: dict[str, Any]) -> bool:
            return len(usable(got) if faulty else got) >= need[key]

        answers, errors, epochs = rounds(quorum, fetch, plans, lambda k: k, enough)
        if handle.noticed(epochs):
            continue
        errors.update(faulty)
        result: dict[str, Any] = {}
        repairs: dict[str, list[Record]] = {}
        for key, got in answers.items():
            found = usable(got) if faulty else got   # FAULTY only where a node is faulty
            if len(found) < need[key]:
                raise QuorumError(f"batch read: {len(found)} of {need[key]} replicas "
                                  f"answered for {key!r}", key, need[key], len(found), errors)
            held = list(found.values())
            first = held[0] if held else None
            if all(rec is first for rec in held):   # the same bytes everywhere: nothing behind
                if first is not None and not first.deleted:
                    result[key] = first.value
                continue
            best = winner(held, p["decay"])
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
