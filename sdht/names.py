"""Unique names: the CASPaxos proposer of ``register`` and ``lookup`` (docs/names.md).

A name's acceptors are its replicas on the ring (:mod:`sdht.kinds.name` holds their rules). A
round is the paper's two phases with majority quorums:

1. **prepare** a fresh ballot; a majority promises and reports what it accepted. The state is
   the claim of the highest accepted ballot among the answers, or none.
2. **accept** ``x -> x if x else claim`` (put-if-absent; ``x -> x`` for a lookup) at that
   ballot; a majority's confirmation chooses it.

When the answers of phase 1 already show one claim accepted at the same ballot by a majority,
it is chosen and phase 2 is skipped; so is it when a lookup finds nothing at a majority.
While a membership change is staged, every phase needs a majority of the current replicas *and*
of the future ones (joint consensus). A conflicting answer carries the higher ballot, and the
proposer fast-forwards past it; an acceptor on a newer ring answers ``stale`` and the proposer
re-reads the ring. Rounds repeat, with random backoff, until one completes or the deadline
passes: then :class:`~sdht.errors.OutcomeUnknown` if this call's claim was ever sent (it may
have been chosen), else :class:`~sdht.errors.QuorumError`. Never a guess.
"""
from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from functools import partial
from typing import Any, Callable

from . import params as cluster_params
from .errors import InvalidRecord, NodeError, OutcomeUnknown, QuorumError, SDHTError
from .kinds import common
from .kinds.name import (ACCEPT_ROUTE, CONFLICT, OK, OWNER_BYTES, PREPARE_ROUTE,
                         PROPOSER_BYTES, STALE, ZERO, Answer, Ballot, Claim, answer_from_wire,
                         canonical)
from .pow import find_nonce
from .quorum import Quorum
from .ring import RingView
from .wire import MSGPACK, now_us, packb

#: Seconds ``register`` and ``lookup`` keep trying before they give up.
DEADLINE = 10.0
#: Seconds of the first backoff after a lost round, doubling to the cap (randomised).
BACKOFF, BACKOFF_CAP = 0.004, 0.25
_HEADERS = {"Content-Type": MSGPACK}


def mint_claim(key: str, value: Any, owner: bytes, w: float, t: int | None = None) -> Claim:
    """Return a claim of ``key`` for ``value`` by call ``owner`` that shows work ``w``."""
    t = now_us() if t is None else t
    found = find_nonce(canonical(key, value, owner, t, w), w)
    assert found is not None  # an unbounded search always answers
    return Claim(key, value, owner, t, w, found[0], found[1])


def majority(nodes: list[str]) -> int:
    """Acceptors a phase needs of ``nodes``: a strict majority."""
    return len(nodes) // 2 + 1


class Proposer:
    """One client's proposer: its id, its ballot counter, and the rounds it runs.

    :param quorum: the replica requests of the client (its ring view, transport, health).
    """

    def __init__(self, quorum: Quorum) -> None:
        self.quorum = quorum
        self.id = os.urandom(PROPOSER_BYTES)
        self._counter = 0
        self._lock = threading.Lock()
        #: Requests in flight per node: one that still owes answers is asked last.
        self._busy: dict[str, int] = {}

    def ballot(self) -> Ballot:
        """A fresh ballot: above every one this proposer used or saw, and at least the clock."""
        with self._lock:
            self._counter = max(self._counter + 1, now_us())
            return self._counter, self.id

    def saw(self, ballot: Ballot) -> None:
        """Fast-forward past a conflicting ballot, so the next one is higher."""
        with self._lock:
            self._counter = max(self._counter, ballot[0])

    # -- the API ------------------------------------------------------------------------------

    def claim(self, key: str, value: Any = None, owner: bytes | None = None,
              work: float | None = None, deadline: float = DEADLINE) -> tuple[bool, Claim]:
        """Register ``key`` for ``value`` if it is free; return ``(registered by this call,
        the chosen claim)``. ``owner``: the id of an earlier call to retry (see
        :class:`~sdht.errors.OutcomeUnknown`).

        :raises InvalidRecord: for a bad key, value, owner or work.
        :raises OutcomeUnknown: when the deadline passed after the claim was proposed.
        :raises QuorumError: when it passed before (nothing was registered by this call).
        """
        p = self.quorum.handle.current().params
        common.check_key(key, p)
        common.check_value(value, p)
        owner = os.urandom(OWNER_BYTES) if owner is None else owner
        if type(owner) is not bytes or len(owner) != OWNER_BYTES:
            raise InvalidRecord(f"an owner id is {OWNER_BYTES} bytes")
        w = p["min_work"] if work is None else cluster_params.check_work(work, p)
        mine = mint_claim(key, value, owner, w)
        chosen = self.run(key, mine, deadline)
        assert chosen is not None  # put-if-absent never chooses nothing
        return chosen.owner == owner, chosen

    def lookup(self, key: str, deadline: float = DEADLINE) -> Claim | None:
        """Return the claim chosen for ``key``, or None when the name is free.

        :raises QuorumError: when no majority answered before the deadline.
        """
        common.check_key(key, self.quorum.handle.current().params)
        return self.run(key, None, deadline)

    # -- rounds -------------------------------------------------------------------------------

    def run(self, key: str, mine: Claim | None, seconds: float) -> Claim | None:
        """Run rounds for ``key`` until one completes: put-if-absent of ``mine``, or a
        lookup when None. Returns the chosen claim (None: a lookup found the name free)."""
        end = time.monotonic() + seconds
        proposed, lost, why = False, 0, "no round was run"
        while time.monotonic() < end:
            view = self.quorum.handle.current()
            sets = replica_sets(view, key)
            ballot = self.ballot()
            outcome, answers = self.phase(sets, key, ballot, view, None, end)
            if outcome == OK:
                oks = [a for a in answers.values() if a.status == OK]
                top = max(oks, key=lambda a: a.ballot)
                if (top.value is not None or mine is None) and chosen(sets, answers, top.ballot):
                    return top.value
                value = top.value if top.value is not None else mine
                if value is None:
                    return None
                proposed = proposed or value is mine
                outcome, answers = self.phase(sets, key, ballot, view, value, end)
                if outcome == OK:
                    return value
            why = self.settle(outcome, answers, view)
            if outcome != STALE:
                lost += 1
                time.sleep(min(max(0.0, end - time.monotonic()),
                               random.uniform(0, min(BACKOFF_CAP, BACKOFF * 2 ** lost))))
        errors = {"round": why}
        if proposed:
            raise OutcomeUnknown(f"registration of {key!r}: no majority answered in "
                                 f"{seconds:.1f}s after the claim was proposed; it may or may "
                                 f"not be registered ({why})", key, mine.owner, errors)
        raise QuorumError(f"{'registration' if mine else 'lookup'} of {key!r}: no majority "
                          f"answered in {seconds:.1f}s ({why})", key, errors=errors)

    def settle(self, outcome: str, answers: dict[str, Answer], view: RingView) -> str:
        """After a round that did not complete: fast-forward past conflicts, re-read a newer
        ring; return why the round failed."""
        if outcome == STALE:
            try:
                self.quorum.handle.refresh()
            except SDHTError as exc:   # no member answered: the next round tries again
                return f"the ring changed, and could not be read: {exc}"
            return "the ring changed"
        conflicts = [a.ballot for a in answers.values() if a.status == CONFLICT]
        if conflicts:
            self.saw(max(conflicts))
            return "a competing proposal"
        return outcome

    def phase(self, sets: list[list[str]], key: str, ballot: Ballot, view: RingView,
              value: Claim | None, end: float) -> tuple[str, dict[str, Answer]]:
        """Send one phase (prepare when ``value`` is None, else accept) to every replica of
        ``sets``; wait until a majority of each confirmed, one set can no longer make it, or
        the deadline. Returns ``(OK | CONFLICT | STALE | reason, answers by node)``."""
        msg: dict[str, Any] = {"k": key, "b": list(ballot), "e": view.epoch}
        if value is not None:
            msg["a"] = value.to_wire()
        body = packb(msg)
        route = PREPARE_ROUTE if value is None else ACCEPT_ROUTE
        nodes = list(dict.fromkeys(n for s in sets for n in s))
        # Nodes that failed lately or still owe answers are asked only when the others
        # cannot make the majorities: a hung acceptor must not hold every round.
        slow = {n for n in nodes if self.quorum.health.is_suspect(n) or self._busy.get(n)}
        if any(len([n for n in s if n not in slow]) < majority(s) for s in sets):
            slow = set()
        answers, errors = gather(
            self.quorum.handle.transport, [n for n in nodes if n not in slow],
            [n for n in nodes if n in slow], lambda n: self.send(n, route, body, key, view),
            lambda got, failed: decided(sets, got, failed), end)
        return decided(sets, answers, errors) or "; ".join(
            f"{n}: {e}" for n, e in errors.items()) or "the deadline passed", answers

    def send(self, node: str, route: str, body: bytes, key: str, view: RingView) -> Answer:
        """One phase message to one acceptor, its answer checked.

        :raises NodeError: for an answer that is not an acceptor's, or a forged claim.
        """
        transport = self.quorum.handle.transport
        with self._lock:
            self._busy[node] = self._busy.get(node, 0) + 1
        try:
            reply = self.quorum.call(node, partial(transport.request, node, "POST", route,
                                                   data=body, headers=_HEADERS))
        finally:
            with self._lock:
                self._busy[node] -= 1
        try:
            answer = answer_from_wire(reply.body, key, view.params)
        except InvalidRecord as exc:
            raise NodeError(f"{node} answered {route} for {key[:100]!r} wrongly: {exc}",
                            node) from None
        if reply.epoch > view.epoch and answer.status != STALE:
            return Answer(STALE, epoch=reply.epoch)   # it holds a newer ring: re-read it
        return answer


def replica_sets(view: RingView, key: str) -> list[list[str]]:
    """The acceptor sets a phase needs a majority of: the current replicas, and the future
    ones too while a membership change is staged."""
    now, later = view.readers.for_key(key), view.future.for_key(key)
    return [now] if set(now) == set(later) else [now, later]


def decided(sets: list[list[str]], answers: dict[str, Answer],
            errors: dict[str, str]) -> str | None:
    """What the answers so far decide: OK (a majority of every set confirmed), STALE (an
    acceptor holds a newer ring), CONFLICT (a set can no longer confirm and an answer
    conflicted), an error text (failures did that); None while undecided."""
    if any(a.status == STALE for a in answers.values()):
        return STALE
    pending = False
    for nodes in sets:
        need = majority(nodes)
        oks = sum(1 for n in nodes if n in answers and answers[n].status == OK)
        lost = sum(1 for n in nodes if n in errors or (n in answers and answers[n].status != OK))
        if len(nodes) - lost < need:   # this set can no longer confirm: the phase failed
            if any(a.status == CONFLICT for a in answers.values()):
                return CONFLICT
            return "; ".join(f"{n}: {e}" for n, e in errors.items())
        pending = pending or oks < need
    return None if pending else OK


def chosen(sets: list[list[str]], answers: dict[str, Answer], top: Ballot) -> bool:
    """Whether phase 1's answers show the state chosen already: a majority of every set
    accepted ``top`` (one claim: a ballot proposes one), or holds nothing when ``top`` is
    ZERO. The second phase would only write it again."""
    return all(sum(1 for n in nodes if n in answers and answers[n].status == OK
                   and answers[n].ballot == top) >= majority(nodes) for nodes in sets)


def gather(pool: Any, first: list[str], spares: list[str], send: Callable[[str], Answer],
           done: Callable[[dict[str, Answer], dict[str, str]], Any],
           end: float) -> tuple[dict[str, Answer], dict[str, str]]:
    """Run ``send(node)`` for the ``first`` nodes in parallel on ``pool`` (the transport's
    threads), and for the ``spares`` once the first have all answered undecided; return
    ``(answers, errors)`` once ``done(answers, errors)`` is true, all finished, or the deadline
    ``end`` (monotonic) passed. Calls still running are left to finish on their own."""
    futures: dict[Future, str] = {}
    answers: dict[str, Answer] = {}
    errors: dict[str, str] = {}

    def start(nodes: list[str]) -> set[Future]:
        started = {pool.submit(send, node): node for node in nodes}
        futures.update(started)
        return set(started)

    pending = start(first)
    while not done(answers, errors):
        if not pending and spares:
            pending, spares = start(spares), []
        left = end - time.monotonic()
        if not pending or left <= 0:
            break
        finished, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
        for fut in finished:
            try:
                answers[futures[fut]] = fut.result()
            except SDHTError as exc:
                errors[futures[fut]] = str(exc)[:300]
    return answers, errors
