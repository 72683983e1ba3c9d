"""Unique names: the CASPaxos proposer of ``register`` and ``lookup`` (docs/names.md).

A name's acceptors are its replicas (:mod:`sdht.kinds.name`). ``register`` first tries the
**fast round** (its claim accepted at :data:`FAST` by every replica: chosen in one round
trip); otherwise, and for ``lookup``, classic rounds: **prepare** (:func:`assess` reads the
state), then **accept** ``x -> x if x else claim`` (``x -> x`` for a lookup) by a majority of
the current replicas and, while a change is staged, of the future ones. Past the deadline
:class:`~sdht.errors.OutcomeUnknown` if this call's claim may have landed, else
:class:`~sdht.errors.QuorumError`. Never a guess.
"""
from __future__ import annotations

import contextlib
import os
import queue
import random
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import Any, Callable

from .errors import InvalidRecord, NodeError, OutcomeUnknown, QuorumError, SDHTError
from .kinds import common
from .kinds.name import (ACCEPT_ROUTE, CONFLICT, OK, PREPARE_ROUTE, PROPOSER_BYTES, STALE,
                         ZERO, Answer, Ballot, Claim, answer_from_wire)
from .quorum import Quorum
from .registry import DEADLINE, new_claim
from .replicas import replica_sets, union
from .ring import RingView
from .wire import MSGPACK, now_us, packb

#: Seconds of the first backoff after a lost round, doubling to the cap (randomised).
BACKOFF, BACKOFF_CAP = 0.004, 0.25
#: The fast round's ballot: below every classic ballot (their counters start at 1), above
#: ZERO, and the same for every proposer. Seconds it waits for every replica's answer.
FAST: Ballot = (0, b"\xff" * PROPOSER_BYTES)
FAST_WAIT = 0.5
#: Seconds a split fast round's losers let the holder of the smallest claim held settle it.
YIELD = 0.05
#: Seconds an acceptor may owe an answer before rounds stop waiting on it first.
SLOW = 0.5
_HEADERS = {"Content-Type": MSGPACK}


def majority(nodes: list[str]) -> int:
    """Acceptors a phase needs of ``nodes``: a strict majority."""
    return len(nodes) // 2 + 1


class Proposer:
    """One client's proposer over ``quorum`` (its ring view, transport, health): its id, its
    ballot counter, and the rounds it runs."""

    def __init__(self, quorum: Quorum) -> None:
        self.quorum = quorum
        self.id = os.urandom(PROPOSER_BYTES)
        self._counter = 0
        self._lock = threading.Lock()
        #: When each request in flight began, per node (:meth:`slow`).
        self._inflight: dict[str, list[float]] = {}

    def ballot(self) -> Ballot:
        """A fresh ballot: above every one this proposer used or saw, and at least the clock."""
        with self._lock:
            self._counter = max(self._counter + 1, now_us())
            return self._counter, self.id

    def slow(self, node: str) -> bool:
        """Whether ``node`` failed lately or owes an answer for :data:`SLOW` s (maybe hung)."""
        with self._lock:
            began = self._inflight.get(node)
            owes = bool(began) and time.monotonic() - began[0] > SLOW
        return owes or self.quorum.health.is_suspect(node)

    def saw(self, ballot: Ballot) -> None:
        """Fast-forward past a conflicting ballot, so the next one is higher."""
        with self._lock:
            self._counter = max(self._counter, ballot[0])

    def claim(self, key: str, value: Any = None, owner: bytes | None = None,
              work: float | None = None, deadline: float = DEADLINE) -> tuple[bool, Claim]:
        """Register ``key`` for ``value`` if it is free: ``(registered by this call, the chosen
        claim)``. ``owner``: the id of an earlier call to retry (:class:`OutcomeUnknown`).
        :raises InvalidRecord, OutcomeUnknown (claim proposed), QuorumError (not proposed):"""
        return self.propose(new_claim(key, value, owner, work,
                                      self.quorum.handle.current().params), deadline)

    def propose(self, mine: Claim, deadline: float = DEADLINE) -> tuple[bool, Claim]:
        """:meth:`claim` of a claim already minted (a member proposing a client's, checked)."""
        chosen = self.run(mine.key, mine, deadline)
        assert chosen is not None  # put-if-absent never chooses nothing
        return chosen.owner == mine.owner, chosen

    def lookup(self, key: str, deadline: float = DEADLINE) -> Claim | None:
        """The claim chosen for ``key``, or None (free); :class:`QuorumError` past ``deadline``."""
        common.check_key(key, self.quorum.handle.current().params)
        return self.run(key, None, deadline)

    def run(self, key: str, mine: Claim | None, seconds: float) -> Claim | None:
        """Rounds for ``key`` until one completes: put-if-absent of ``mine`` (a lookup when
        None). Returns the chosen claim (None: a lookup found the name free)."""
        end = time.monotonic() + seconds
        fast = self.fast(key, mine, end) if mine is not None else None
        if isinstance(fast, Claim):
            return fast
        proposed, lost, why = fast is not None, 0, "no round was run"
        while time.monotonic() < end:
            sets = replica_sets(view := self.quorum.handle.current(), key)
            ballot = self.ballot()
            outcome, answers = self.phase(sets, key, ballot, view, None, end)
            if outcome == OK:
                settled, value = assess(sets, answers)
                if value is None and mine is None:
                    return None                        # a lookup of a free name
                if settled and value is not None:
                    return value                       # chosen already: no phase 2
                # Nothing chosen: any claim is safe; contenders settle sooner on the same one.
                value = value or min((a.value for a in answers.values() if a.status == OK
                                      and a.ballot == FAST), key=lambda c: c.digest, default=mine)
                proposed = proposed or value is mine
                outcome, answers = self.phase(sets, key, ballot, view, value, end)
                if outcome == OK:
                    return value
            why = self.settle(outcome, answers)
            if outcome != STALE:
                lost += 1
                time.sleep(min(max(0.0, end - time.monotonic()),
                               random.uniform(0, min(BACKOFF_CAP, BACKOFF * 2 ** lost))))
        what = f"{'registration' if mine else 'lookup'} of {key!r}: no majority in {seconds}s"
        if proposed:
            raise OutcomeUnknown(f"{what} after the claim was proposed: it may or may not be "
                                 f"registered ({why})", key, mine.owner, {"round": why})
        raise QuorumError(f"{what} ({why})", key, errors={"round": why})

    def fast(self, key: str, mine: Claim, end: float) -> Claim | bool | None:
        """The fast round: ``mine`` as an accept at :data:`FAST` to every replica. Returns the
        claim chosen there (:func:`held_by_all`), None when ``mine`` surely landed nowhere (or
        was not sent: a replica is slow), else False."""
        sets = replica_sets(view := self.quorum.handle.current(), key)
        if any(self.slow(n) for s in sets for n in s):
            return None
        outcome, answers = self.phase(sets, key, FAST, view, mine,
                                      min(end, time.monotonic() + FAST_WAIT), every=True)
        self.settle(outcome, answers) if outcome == STALE else None
        won = held_by_all(sets, answers, mine)   # on a split, yield unless mine is held and
        if not won and (OK not in {a.status for a in answers.values()} or any(   # smallest
                a.status == CONFLICT and a.ballot == FAST and a.value.digest < mine.digest
                for a in answers.values())):  # type: ignore[union-attr]
            time.sleep(random.uniform(0.5, 1) * YIELD)
        return won or (None if all(
            n in answers and answers[n].status != OK for ns in sets for n in ns) else False)

    def settle(self, outcome: str, answers: dict[str, Answer]) -> str:
        """After a failed round: fast-forward past conflicts, re-read a newer ring; why."""
        if outcome == STALE:
            with contextlib.suppress(SDHTError):   # none answered: the next round retries
                self.quorum.handle.refresh()
            return "the ring changed"
        if conflicts := [a.ballot for a in answers.values() if a.status == CONFLICT]:
            self.saw(max(conflicts))
        return "a competing proposal" if conflicts else outcome

    def phase(self, sets: list[list[str]], key: str, ballot: Ballot, view: RingView,
              value: Claim | None, end: float,
              every: bool = False) -> tuple[str, dict[str, Answer]]:
        """One phase (prepare when ``value`` is None, else accept) to ``sets``, until
        :func:`decided` or the deadline: ``(OK | CONFLICT | STALE | why, answers by node)``."""
        body = packb({"k": key, "b": list(ballot), "e": view.epoch,
                      **({"a": value.to_wire()} if value is not None else {})})
        route = PREPARE_ROUTE if value is None else ACCEPT_ROUTE
        nodes = union(sets)
        slow = {n for n in nodes if self.slow(n)}   # a hung acceptor must not hold every round
        if every or any(len([n for n in s if n not in slow]) < majority(s) for s in sets):
            slow = set()
        answers, errors = gather(
            self.quorum.handle.transport, [n for n in nodes if n not in slow],
            [n for n in nodes if n in slow], lambda n: self.send(n, route, body, key, view),
            lambda got, failed: decided(sets, got, failed, every), end)
        return decided(sets, answers, errors, every) or "; ".join(
            f"{n}: {e}" for n, e in errors.items()) or "the deadline passed", answers

    def send(self, node: str, route: str, body: bytes, key: str, view: RingView) -> Answer:
        """One phase message to one acceptor, its answer checked (:class:`NodeError` for one
        that is not an acceptor's answer, or a forged claim)."""
        # Signed: acceptors take phases only from the operator or a member (docs/security.md).
        request = partial(self.quorum.handle.transport.request, node, "POST", route, data=body,
                          headers=_HEADERS, admin=True)
        began = time.monotonic()
        with self._lock:
            self._inflight.setdefault(node, []).append(began)
        try:
            reply = self.quorum.call(node, request)
        finally:
            with self._lock:
                self._inflight[node].remove(began)
        try:
            answer = answer_from_wire(reply.body, key, view.params)
        except InvalidRecord as exc:
            raise NodeError(f"{node} answered {route} for {key[:100]!r} wrongly: {exc}",
                            node) from None
        if reply.epoch > view.epoch and answer.status != STALE:
            return Answer(STALE, epoch=reply.epoch)   # it holds a newer ring: re-read it
        return answer


def decided(sets: list[list[str]], answers: dict[str, Answer],
            errors: dict[str, str], every: bool = False) -> str | None:
    """What the answers so far decide: OK (a majority of every set, all with ``every``,
    confirmed), STALE (a node has a newer ring), CONFLICT (a set can no longer confirm, with
    ``every`` once all answered, and one conflicted), an error text; None: undecided."""
    if any(a.status == STALE for a in answers.values()):
        return STALE
    pending = False
    for nodes in sets:
        need = len(nodes) if every else majority(nodes)
        oks = sum(1 for n in nodes if n in answers and answers[n].status == OK)
        lost = sum(1 for n in nodes if n in errors or (n in answers and answers[n].status != OK))
        if len(nodes) - lost < need and not (every and oks + lost < len(nodes)):
            return CONFLICT if any(a.status == CONFLICT for a in answers.values()) else \
                "; ".join(f"{n}: {e}" for n, e in errors.items())
        pending = pending or oks < need
    return None if pending else OK


def assess(sets: list[list[str]], answers: dict[str, Answer]) -> tuple[bool, Claim | None]:
    """Phase 1's answers: ``(settled, claim)``, the claim to carry forward (None: nothing can
    have been chosen) and whether it is chosen already. A classic ballot has one claim: the
    highest's, chosen when a majority of every set answered that ballot. At :data:`FAST` a
    claim is chosen only if every replica took it: it is carried forward when every answer of
    the current replicas holds it (one that did not promised higher; future replicas may lack
    the moved state yet), chosen when every replica of every set holds it."""
    oks = {n: a for n, a in answers.items() if a.status == OK}
    top = max(a.ballot for a in oks.values())
    if top == ZERO:
        return True, None
    if top == FAST:   # the current replicas' answers: sets[0]
        held = {a.value.digest if a.ballot == FAST else b"" for n, a in oks.items()
                if n in sets[0]}
        if len(held) != 1 or b"" in held:
            return False, None
        claim = next(a.value for n, a in oks.items() if n in sets[0])
        return all(n in oks and oks[n].ballot == FAST and oks[n].value == claim
                   for nodes in sets for n in nodes), claim
    claim = next(a.value for a in oks.values() if a.ballot == top)
    return all(sum(1 for n in nodes if n in oks and oks[n].ballot == top) >= majority(nodes)
               for nodes in sets), claim


def held_by_all(sets: list[list[str]], answers: dict[str, Answer],
                mine: Claim) -> Claim | None:
    """The claim every replica answered the fast round holding at :data:`FAST` (``ok``:
    ``mine``; a conflict: the claim it holds): chosen there. None when there is none."""
    held = [(a.value or mine) if a and a.status != STALE and a.ballot == FAST else None
            for a in (answers.get(n) for nodes in sets for n in nodes)]
    return held[0] if None not in held and len({c.digest for c in held}) == 1 else None


def gather(pool: Any, first: list[str], spares: list[str], send: Callable[[str], Answer],
           done: Callable[[dict[str, Answer], dict[str, str]], Any],
           end: float) -> tuple[dict[str, Answer], dict[str, str]]:
    """``send(node)`` for the ``first`` nodes in parallel on ``pool``, for the ``spares`` once
    the first all answered undecided: ``(answers, errors)`` once ``done(answers, errors)``, all
    finished, or the deadline ``end`` passed (calls still running finish on their own)."""
    finished: "queue.SimpleQueue[Future]" = queue.SimpleQueue()   # as Quorum.gather

    def start(nodes: list[str]) -> dict[Future, str]:
        started = {pool.submit(send, node): node for node in nodes}
        for fut in started:
            fut.add_done_callback(finished.put)
        return started

    futures = start(first)
    pending, answers, errors = set(futures), {}, {}   # type: ignore[var-annotated]
    while not done(answers, errors):
        if not pending and spares:
            started = start(spares)
            futures.update(started)
            pending, spares = set(started), []
        left = end - time.monotonic()
        if not pending or left <= 0:
            break
        try:
            fut = finished.get(timeout=left)
        except queue.Empty:
            break
        pending.discard(fut)
        try:
            answers[futures[fut]] = fut.result()
        except SDHTError as exc:
            errors[futures[fut]] = str(exc)[:300]
    return answers, errors
