"""Unique names (issue 13): the acceptor's rules, the name kind, and a model of CASPaxos rounds
under message loss, duplication and reordering (sdht/kinds/name.py; docs/names.md).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from sdht import kinds
from sdht.errors import InvalidRecord
from sdht.kinds import name
from sdht.kinds.name import (CONFLICT, OK, STALE, ZERO, Claim, State, answer_from_wire,
                             answer_to_wire, on_accept, on_prepare)
from sdht.params import DEFAULTS
from sdht.pow import find_nonce
from sdht.wire import now_us, unpackb

P1, P2 = b"\x01" * 8, b"\x02" * 8


def claim(key: str = "user:alice", value: object = "alice", owner: bytes | None = None,
          w: float = DEFAULTS["min_work"]) -> Claim:
    """A claim showing work ``w`` (minted here: the rules never look at work)."""
    owner = owner or os.urandom(name.OWNER_BYTES)
    t = now_us()
    nonce, digest = find_nonce(name.canonical(key, value, owner, t, w), w)
    return Claim(key, value, owner, t, w, nonce, digest)


class TestPrepare:
    def test_an_empty_acceptor_promises_and_reports_nothing_accepted(self):
        state, answer = on_prepare(None, "n", (5, P1), 0, 0)
        assert answer == name.Answer(OK, ZERO, None)
        assert state.promised == (5, P1) and state.accepted == ZERO and state.value is None

    def test_an_equal_ballot_is_refused_with_that_ballot(self):
        held, _ = on_prepare(None, "n", (5, P1), 0, 0)
        state, answer = on_prepare(held, "n", (5, P1), 0, 0)
        assert answer.status == CONFLICT and answer.ballot == (5, P1) and state is held

    def test_a_lower_ballot_gets_the_higher_one_back_to_fast_forward(self):
        held, _ = on_prepare(None, "n", (9, P1), 0, 0)
        state, answer = on_prepare(held, "n", (7, P2), 0, 0)
        assert (answer.status, answer.ballot) == (CONFLICT, (9, P1)) and state is held

    def test_the_proposer_id_breaks_a_counter_tie(self):
        held, _ = on_prepare(None, "n", (5, P1), 0, 0)
        _, answer = on_prepare(held, "n", (5, P2), 0, 0)
        assert answer.status == OK

    def test_it_reports_what_it_accepted(self):
        c = claim()
        held, _ = on_accept(None, "n", (3, P1), c, 0, 0)
        state, answer = on_prepare(held, "n", (4, P2), 0, 0)
        assert (answer.status, answer.ballot, answer.value) == (OK, (3, P1), c)
        assert state.promised == (4, P2) and state.accepted == (3, P1) and state.value == c

    def test_a_stale_epoch_changes_nothing(self):
        held, _ = on_prepare(None, "n", (5, P1), 0, 0)
        state, answer = on_prepare(held, "n", (50, P2), 3, 4)
        assert (answer.status, answer.epoch) == (STALE, 4) and state is held
        assert on_prepare(None, "n", (1, P1), 3, 4) == (None, name.Answer(STALE, epoch=4))


class TestAccept:
    def test_accepts_at_its_promise(self):
        c = claim()
        held, _ = on_prepare(None, "n", (5, P1), 0, 0)
        state, answer = on_accept(held, "n", (5, P1), c, 0, 0)
        assert answer.status == OK and state.accepted == state.promised == (5, P1)
        assert state.value == c

    def test_the_same_accept_again_is_confirmed_unchanged(self):
        c = claim()
        held, _ = on_accept(None, "n", (5, P1), c, 0, 0)
        state, answer = on_accept(held, "n", (5, P1), c, 0, 0)
        assert answer.status == OK and state is held

    def test_another_claim_at_the_accepted_ballot_conflicts(self):
        held, _ = on_accept(None, "n", (5, P1), claim(), 0, 0)
        state, answer = on_accept(held, "n", (5, P1), claim(value="eve"), 0, 0)
        assert answer.status == CONFLICT and state is held

    def test_below_the_promise_is_refused_with_the_promise(self):
        held, _ = on_prepare(None, "n", (9, P2), 0, 0)
        state, answer = on_accept(held, "n", (8, P1), claim(), 0, 0)
        assert (answer.status, answer.ballot) == (CONFLICT, (9, P2)) and state is held

    def test_above_the_promise_without_a_prepare_here_is_accepted(self):
        held, _ = on_prepare(None, "n", (4, P2), 0, 0)
        state, answer = on_accept(held, "n", (6, P1), claim(), 0, 0)
        assert answer.status == OK and state.promised == state.accepted == (6, P1)

    def test_below_an_accepted_ballot_is_refused(self):
        held, _ = on_accept(None, "n", (6, P1), claim(), 0, 0)
        _, answer = on_accept(held, "n", (5, P2), claim(), 0, 0)
        assert (answer.status, answer.ballot) == (CONFLICT, (6, P1))

    def test_a_stale_epoch_changes_nothing(self):
        assert on_accept(None, "n", (6, P1), claim(), 1, 2) == (None, name.Answer(STALE,
                                                                                  epoch=2))


class TestTheKind:
    def test_it_is_registered_unsynced_with_its_own_tag(self):
        assert kinds.kind_of(name.TAG) is name and name.TAG != kinds.register.TAG
        assert name.SYNCED is False

    def test_state_travels_and_rests_as_it_was(self):
        c = claim(value={"bio": "hi", "n": [1, 2]})
        state = State("user:alice", (9, P2), (7, P1), c)
        back = kinds.admit(unpackb(state.pack()), DEFAULTS)
        assert isinstance(back, State) and back.digest == state.digest
        assert (back.promised, back.accepted, back.value) == ((9, P2), (7, P1), c)
        held = name.held(state.digest, name.head(state))
        assert (held.promised, held.accepted) == ((9, P2), (7, P1))

    def test_a_bare_promise_is_not_admitted(self):
        with pytest.raises(InvalidRecord, match="accepted claim"):
            kinds.admit(unpackb(State("n", (9, P2)).pack()), DEFAULTS)

    def test_the_claim_pays_the_proof_of_work_gate(self):
        state = State("user:alice", (9, P2), (9, P2), claim())
        kinds.admit(unpackb(state.pack()), DEFAULTS)
        with pytest.raises(InvalidRecord, match="work"):
            kinds.admit(unpackb(state.pack()), {**DEFAULTS, "min_work": 30.0})
        lazy = Claim("user:alice", "x", b"o" * 16, now_us(), 20.0, b"n")   # declares, no work
        with pytest.raises(InvalidRecord, match="work"):
            kinds.admit(unpackb(State("user:alice", (9, P2), (9, P2), lazy).pack()), DEFAULTS)

    def test_a_claim_for_another_name_is_refused(self):
        with pytest.raises(InvalidRecord, match="another name"):
            name.from_wire(unpackb(State("user:bob", (9, P2), (9, P2), claim()).pack()),
                           DEFAULTS)

    def test_ballots_from_the_far_future_are_refused(self):
        far = now_us() + 10**9
        with pytest.raises(InvalidRecord, match="future"):
            name.check(State("user:alice", (far, P1), (5, P1), claim()), DEFAULTS)

    def test_moved_state_keeps_the_highest_accepted_ballot(self):
        low = State("n", (50, P1), (5, P1), claim("n"))
        high = State("n", (6, P1), (6, P1), claim("n"))
        as_held = lambda s: name.held(s.digest, name.head(s))  # noqa: E731
        assert name.supersedes(high, as_held(low), DEFAULTS)
        assert not name.supersedes(low, as_held(high), DEFAULTS)
        assert not name.supersedes(high, as_held(high), DEFAULTS)
        assert name.supersedes(low, None, DEFAULTS)

    def test_answers_are_checked_on_the_way_back(self):
        c = claim()
        wire = unpackb(__import__("sdht.wire").wire.packb(answer_to_wire(
            name.Answer(OK, (3, P1), c))))
        assert answer_from_wire(wire, "user:alice", DEFAULTS) == name.Answer(OK, (3, P1), c)
        with pytest.raises(InvalidRecord, match="another name"):
            answer_from_wire(wire, "user:bob", DEFAULTS)
        with pytest.raises(InvalidRecord, match="work"):
            answer_from_wire(wire, "user:alice", {**DEFAULTS, "min_work": 30.0})
        with pytest.raises(InvalidRecord):
            answer_from_wire({"s": "yes", "e": 0, "b": [1, P1]}, "user:alice", DEFAULTS)


# -- a model of rounds over three acceptors -------------------------------------------------------

VALUES = [claim("n", f"v{i}", bytes([i]) * 16) for i in range(3)]


class Model:
    """Three acceptors and three proposers exchanging messages that the schedule delivers,
    drops, duplicates or reorders; proposers restart rounds at will (timeouts)."""

    def __init__(self) -> None:
        self.acceptors: list[State | None] = [None, None, None]
        self.net: list[tuple] = []
        self.counter = [0, 0, 0]
        self.round: list[tuple | None] = [None, None, None]   # (ballot, phase, oks, value)
        self.accepted: dict[tuple, set[tuple[int, bytes]]] = {}   # ballot -> {(acc, digest)}
        self.learned: list[Claim] = []

    def start(self, p: int) -> None:
        self.counter[p] += 1
        ballot = (self.counter[p], bytes([p + 1]) * 8)
        self.round[p] = (ballot, "prepare", {}, None)
        self.net += [("prepare", a, p, ballot, None) for a in range(3)]

    def deliver(self, i: int) -> None:
        msg = self.net.pop(i)
        if msg[0] in ("prepare", "accept"):
            kind, a, p, ballot, value = msg
            if kind == "prepare":
                self.acceptors[a], answer = on_prepare(self.acceptors[a], "n", ballot, 0, 0)
            else:
                self.acceptors[a], answer = on_accept(self.acceptors[a], "n", ballot, value,
                                                      0, 0)
                if answer.status == OK:
                    self.accepted.setdefault(ballot, set()).add((a, value.digest))
            self.net.append(("reply", a, p, ballot, (kind, answer)))
            return
        _, a, p, ballot, (kind, answer) = msg
        if answer.status == CONFLICT:   # fast-forward past the conflicting ballot
            self.counter[p] = max(self.counter[p], answer.ballot[0])
        current = self.round[p]
        if current is None or current[0] != ballot or current[1] != kind or answer.status != OK:
            return
        oks = current[2]
        oks[a] = answer
        if len(oks) < 2:
            return
        if kind == "accept":
            self.learned.append(current[3])
            self.round[p] = None
            return
        top = max(oks.values(), key=lambda ans: ans.ballot)
        if top.value is not None and all(ans.ballot == top.ballot for ans in oks.values()):
            self.learned.append(top.value)   # phase 1 shows it chosen: no phase 2
            self.round[p] = None
            return
        value = top.value or VALUES[p]       # x -> x if x else v
        self.round[p] = (ballot, "accept", {}, value)
        self.net += [("accept", b, p, ballot, value) for b in range(3)]

    def chosen(self) -> set[bytes]:
        """Digests of the claims a majority accepted at one ballot."""
        out = set()
        for pairs in self.accepted.values():
            for digest in {d for _, d in pairs}:
                if len({a for a, d in pairs if d == digest}) >= 2:
                    out.add(digest)
        return out


steps = st.lists(st.tuples(st.sampled_from(["start", "deliver", "deliver", "deliver", "drop",
                                            "dup"]),
                           st.integers(0, 2), st.integers(0, 10**6)), max_size=250)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_no_two_values_are_ever_chosen(schedule):
    model = Model()
    for action, p, i in schedule:
        if action == "start":
            model.start(p)
        elif model.net and action == "deliver":
            model.deliver(i % len(model.net))
        elif model.net and action == "drop":
            model.net.pop(i % len(model.net))
        elif model.net and action == "dup":
            model.net.append(model.net[i % len(model.net)])
        chosen = model.chosen()
        assert len(chosen) <= 1, "two different claims were chosen"
        # Every round that completed learned the chosen claim: put-if-absent has one winner.
        assert {c.digest for c in model.learned} <= chosen
