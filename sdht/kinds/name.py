"""The name kind: one CASPaxos acceptor per unique name (docs/names.md).

A name's replicas are its acceptors. Each holds a :class:`State`: the ballot it promised, the
ballot it last accepted and the :class:`Claim` accepted with it. Proposers (:mod:`sdht.names`)
run the two phases; the rules an acceptor applies are the pure functions :func:`on_prepare` and
:func:`on_accept` here, which the node runs inside one LMDB write transaction.

* A **ballot** is ``(counter, proposer id)``, compared as a tuple. The counter is a
  microsecond clock reading (fast-forwarded past conflicts), and an acceptor refuses one more
  than ``max_skew`` ahead of its clock: a proposer cannot lock a name with a huge ballot.
* Every message carries the proposer's ring **epoch**; an acceptor holding a newer ring answers
  ``stale`` and changes nothing, so no proposal with an old replica set lands once a change is
  staged (the fence that keeps migration's copy complete).
* A **claim** (the value a proposal carries) pays the proof-of-work gate like a register write.
  ``digest = blake2b-256(packb(["sdht-name", k, v, t, w, o]) + n)``; ``o`` is the id of the
  ``register`` call that proposed it, so a retry recognises its own claim.

The state is its own kind (tag 1: register merges and read repair never touch it), not ``SYNCED``
(anti-entropy never copies it) and not ``PUBLIC``: only the operator's migration moves it (batch
write route, :func:`supersedes` keeps the highest accepted ballot) and only members propose.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Mapping

from . import common
from .common import MAX_WORK
from ..errors import InvalidRecord
from ..wire import packb
from .register import DIGEST_PERSON

TAG = 1
NAME = "name"
#: Anti-entropy never copies acceptor state: only migration moves it, by the max-ballot rule.
SYNCED = False
#: Only the operator or a member may write it, whole or by phase (docs/security.md).
PUBLIC = False
#: The node's routes for the two phases (msgpack in and out).
PREPARE_ROUTE, ACCEPT_ROUTE = "/v1/names/prepare", "/v1/names/accept"
#: Bytes of a proposer id, and of a claim's owner id (the id of one ``register`` call).
PROPOSER_BYTES, OWNER_BYTES = 8, 16
#: A ballot: ``(counter, proposer id)``; nothing is ever promised or accepted at ZERO.
Ballot = tuple[int, bytes]
ZERO: Ballot = (0, bytes(PROPOSER_BYTES))
OK, CONFLICT, STALE = "ok", "conflict", "stale"   # what an acceptor answers
_STATE_PERSON = b"sdht-name-st-v1"
_CLAIM_FIELDS, _STATE_FIELDS = frozenset("kvotwn"), frozenset("xkpba")


class Claim:
    """A proposed value: ``v`` for name ``k``, by the call ``o``, with its proof of work."""

    __slots__ = ("key", "value", "owner", "t", "w", "nonce", "digest")

    def __init__(self, key: str, value: Any, owner: bytes, t: int, w: float, nonce: bytes,
                 digest: bytes | None = None) -> None:
        self.key, self.value, self.owner, self.t, self.w, self.nonce = (key, value, owner, t,
                                                                         float(w), nonce)
        self.digest = digest or claim_digest(canonical(key, value, owner, t, w), nonce)

    def to_wire(self) -> dict[str, Any]:
        """The claim's msgpack-ready map ``{k, v, o, t, w, n}``."""
        return dict(k=self.key, v=self.value, o=self.owner, t=self.t, w=self.w, n=self.nonce)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Claim) and self.digest == other.digest

    __hash__ = None  # type: ignore[assignment]


def canonical(key: str, value: Any, owner: bytes, t: int, w: float) -> bytes:
    """The bytes a claim's digest covers (the minting prefix, :func:`sdht.pow.find_nonce`)."""
    return packb(["sdht-name", key, value, t, float(w), owner])


def claim_digest(prefix: bytes, nonce: bytes) -> bytes:
    """``blake2b-256(prefix + nonce)``, personalised as the proof-of-work search hashes."""
    h = hashlib.blake2b(prefix, digest_size=32, person=DIGEST_PERSON)
    h.update(nonce)
    return h.digest()


def claim_from_wire(obj: Any, params: Mapping[str, Any]) -> Claim:
    """A claim from its wire map, its fields' types and sizes checked (work: :func:`check_claim`).

    :raises InvalidRecord: for a malformed claim; :raises ValueTooLarge: past the ring's limits.
    """
    common.check_fields(obj, _CLAIM_FIELDS, "claim")
    common.check_key(obj["k"], params)
    common.check_timestamp_field(obj["t"])
    common.check_nonce_field(obj["n"])
    if type(obj["o"]) is not bytes or len(obj["o"]) != OWNER_BYTES:
        raise InvalidRecord(f"o must be {OWNER_BYTES} bytes")
    common.check_value(obj["v"], params)
    return Claim(obj["k"], obj["v"], obj["o"], obj["t"], common.check_work_field(obj["w"]),
                 obj["n"])


def check_claim(claim: Claim, params: Mapping[str, Any], now: int | None = None) -> None:
    """The proof-of-work gate and the clock, as for a register write.

    :raises InvalidRecord: when the work is not shown or the claim is from the future.
    """
    common.check_work(claim.w, claim.digest, params["min_work"], params["max_work"])
    common.check_time(claim.t, params["max_skew"], now)


def ballot_from_wire(obj: Any) -> Ballot:
    """A ballot from its wire form ``[counter, proposer id]``.

    :raises InvalidRecord: when it is not one.
    """
    if (not isinstance(obj, (list, tuple)) or len(obj) != 2 or type(obj[0]) is not int
            or not 0 <= obj[0] < 2**63 or type(obj[1]) is not bytes
            or len(obj[1]) != PROPOSER_BYTES):
        raise InvalidRecord(f"a ballot must be [counter, {PROPOSER_BYTES}-byte proposer id]")
    return obj[0], obj[1]


def check_ballot(ballot: Ballot, params: Mapping[str, Any], now: int | None = None) -> None:
    """Refuse (:class:`InvalidRecord`) a ballot more than ``max_skew`` ahead of the clock."""
    common.check_time(ballot[0], params["max_skew"], now)


# -- the acceptor's state: the entry this kind stores ---------------------------------------------

class State:
    """What one acceptor holds for a name: promised ballot, accepted ballot and claim."""

    __slots__ = ("key", "promised", "accepted", "value", "_packed", "_digest")
    TAG = TAG
    sub = b""

    def __init__(self, key: str, promised: Ballot = ZERO, accepted: Ballot = ZERO,
                 value: Claim | None = None) -> None:
        self.key, self.promised, self.accepted, self.value = key, promised, accepted, value
        self._packed: bytes | None = None
        self._digest: bytes | None = None

    @property
    def digest(self) -> bytes:
        """The state's digest: ballots and the claim's digest (identical states, same digest)."""
        if self._digest is None:
            h = hashlib.blake2b(packb([self.key, list(self.promised), list(self.accepted)]),
                                digest_size=32, person=_STATE_PERSON)
            h.update(self.value.digest if self.value is not None else b"")
            self._digest = h.digest()
        return self._digest

    def pack(self) -> bytes:
        """The state as it rests and travels: ``{x, k, p, b, a}``."""
        if self._packed is None:
            self._packed = packb({"x": TAG, "k": self.key, "p": list(self.promised),
                                  "b": list(self.accepted),
                                  "a": self.value.to_wire() if self.value else None})
        return self._packed


@dataclass(frozen=True)
class Held:
    """A stored state as its header tells it, without decoding the entry."""

    promised: Ballot
    accepted: Ballot
    digest: bytes


def from_wire(obj: Any, params: Mapping[str, Any]) -> State:
    """A state from its wire map, every field checked (the claim's work: :func:`check`).

    :raises InvalidRecord: for a malformed state; :raises ValueTooLarge: past the limits.
    """
    common.check_fields(obj, _STATE_FIELDS, NAME)
    if obj["x"] != TAG or type(obj["x"]) is not int:
        raise InvalidRecord(f"not a name entry (kind {obj['x']!r})")
    common.check_key(obj["k"], params)
    value = None if obj["a"] is None else claim_from_wire(obj["a"], params)
    if value is not None and value.key != obj["k"]:
        raise InvalidRecord("the claim names another name")
    return State(obj["k"], ballot_from_wire(obj["p"]), ballot_from_wire(obj["b"]), value)


def check(state: State, params: Mapping[str, Any], now: int | None = None) -> None:
    """Admission of a state written whole (migration): it must hold an accepted claim that
    passes the proof-of-work gate, at ballots no further ahead than ``max_skew``. A bare
    promise is not copied: once a change is staged it binds no proposer (docs/names.md).

    :raises InvalidRecord: otherwise.
    """
    if state.value is None or state.accepted == ZERO:
        raise InvalidRecord("a name entry must hold an accepted claim")
    check_claim(state.value, params, now)
    check_ballot(max(state.promised, state.accepted), params, now)


def supersedes(incoming: State, held: Held | None, params: Mapping[str, Any]) -> bool:
    """The merge of moved state: the higher accepted ballot wins (CASPaxos's rule for moving
    acceptor state, Rystsov 2018 §2.3.3), and on a tie the state moved in: at the fast
    ballot, a gainer's own claim must yield to the one its range's replicas accepted."""
    return held is None or incoming.accepted >= held.accepted


def expired(version: Any, cutoff_us: int) -> bool:
    """Acceptor state never expires: a name, once chosen, is kept."""
    return False


_HEAD = struct.Struct(f">Q{PROPOSER_BYTES}sQ{PROPOSER_BYTES}s")
HEAD_BYTES = _HEAD.size


def head(state: State) -> bytes:
    """The header a node stores beside the digest: promised and accepted ballots."""
    return _HEAD.pack(*state.promised, *state.accepted)


def held(digest: bytes, header: bytes) -> Held:
    """The held state a digest and a :func:`head` header describe."""
    pc, pid, ac, aid = _HEAD.unpack(header)
    return Held((pc, pid), (ac, aid), digest)


def describe(version: Held, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a node tells a writer whose state lost: the accepted ballot it holds."""
    return {"digest": version.digest, "ballot": [version.accepted[0], version.accepted[1].hex()]}


# -- the acceptor's rules -------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """An acceptor's reply. ``ok``: ``ballot`` and ``value`` are what it had accepted (for a
    prepare); ``conflict``: ``ballot`` is the higher one it holds (fast-forward past it), and
    to an accept ``value`` its claim; ``stale``: ``epoch`` is its newer ring's."""

    status: str
    ballot: Ballot = ZERO
    value: Claim | None = None
    epoch: int = 0


def on_prepare(state: State | None, key: str, ballot: Ballot, epoch: int,
               node_epoch: int) -> tuple[State | None, Answer]:
    """Phase 1 at one acceptor: promise ``ballot`` unless it has seen one as high (an equal
    ballot is refused too: each prepare needs a fresh one). Returns the state to store
    (``state`` itself when nothing changes) and the answer."""
    if epoch < node_epoch:
        return state, Answer(STALE, epoch=node_epoch)
    cur = state or State(key)
    highest = max(cur.promised, cur.accepted)
    if ballot <= highest:
        return state, Answer(CONFLICT, highest)
    return (State(key, ballot, cur.accepted, cur.value),
            Answer(OK, cur.accepted, cur.value))


def on_accept(state: State | None, key: str, ballot: Ballot, claim: Claim, epoch: int,
              node_epoch: int) -> tuple[State | None, Answer]:
    """Phase 2 at one acceptor: accept ``claim`` at ``ballot`` unless it promised a higher
    ballot or accepted one as high. The same accept again is confirmed, unchanged (a
    retried request); another claim at the accepted ballot is a conflict."""
    if epoch < node_epoch:
        return state, Answer(STALE, epoch=node_epoch)
    cur = state or State(key)
    highest = max(cur.promised, cur.accepted)
    if ballot == cur.accepted and cur.value is not None:
        return state, Answer(OK, ballot) if cur.value == claim else Answer(CONFLICT, highest,
                                                                           cur.value)
    if ballot < cur.promised or ballot <= cur.accepted:
        return state, Answer(CONFLICT, highest, cur.value)
    return State(key, ballot, ballot, claim), Answer(OK, ballot)


# -- the two phases on the wire (both sides) ------------------------------------------------------

def answer_to_wire(answer: Answer) -> dict[str, Any]:
    """An answer's msgpack-ready map ``{s, b, a, e}``."""
    return {"s": answer.status, "b": list(answer.ballot), "e": answer.epoch,
            "a": answer.value.to_wire() if answer.value is not None else None}


def answer_from_wire(obj: Any, key: str, params: Mapping[str, Any]) -> Answer:
    """An acceptor's answer for ``key``, checked: a claim it reports must be for ``key`` and
    pass the proof-of-work gate (a faulty acceptor cannot make up a registration).

    :raises InvalidRecord: otherwise.
    """
    if not isinstance(obj, dict) or obj.get("s") not in (OK, CONFLICT, STALE) \
            or type(obj.get("e")) is not int:
        raise InvalidRecord("not an acceptor's answer")
    value = None if obj.get("a") is None else claim_from_wire(obj["a"], params)
    if value is not None:
        if value.key != key:
            raise InvalidRecord("the answer's claim names another name")
        # Its clock was checked when it was accepted, maybe long ago: only the work here.
        common.check_work(value.w, value.digest, params["min_work"], MAX_WORK)
    return Answer(obj["s"], ballot_from_wire(obj.get("b")), value, obj["e"])
