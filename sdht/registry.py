"""Who proposes a client's unique names, and the claim it proposes (docs/names.md, "Trust").

A name's acceptors take phase messages only from the operator or a member of the ring
(signed requests, :mod:`storage.names_routes`), and acceptor state whole only from them too
(the kind is not ``PUBLIC``): otherwise any client could send accepts of its own and overwrite a
registered name. So:

* a client that holds the operator's key (or a node's), or any client of a development ring
  (unsigned; its nodes serve loopback only), runs the proposer itself
  (:class:`sdht.names.Proposer`);
* any other client (one with no key at all too, on a keyed cluster) mints its claim itself, paying its proof of work as for a write, and asks a
  member to propose it (:class:`Relay`): ``POST /v1/names/register`` ``{a: claim, d: seconds}``
  answers ``{a: the chosen claim}``, ``POST /v1/names/lookup`` ``{k, d}`` answers ``{a: claim or
  nil}``. The member runs the same rounds as any proposer, within ``d`` seconds.

What a member answers is checked like an acceptor's answer: the claim must be for the name
and show its work. Whether this call registered the name is read from the chosen claim's owner,
never from the member's word.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

from . import params as cluster_params
from .errors import (InvalidRecord, NodeError, OutcomeUnknown, QuorumError, SDHTError,
                     TransportError)
from .kinds import common
from .kinds.common import MAX_WORK
from .kinds.name import OWNER_BYTES, Claim, canonical, claim_from_wire
from .pow import find_nonce
from .quorum import Quorum
from .ring import RingView
from .trust import Keys
from .wire import MSGPACK, now_us, packb

#: Seconds ``register`` and ``lookup`` keep trying before they give up.
DEADLINE = 10.0
#: The member routes of :class:`Relay`.
REGISTER_ROUTE, LOOKUP_ROUTE = "/v1/names/register", "/v1/names/lookup"
#: Seconds a relayed call leaves for its answer to come back, beyond the member's rounds.
RELAY_MARGIN = 1.0
_HEADERS = {"Content-Type": MSGPACK}


def proposes_itself(keys: Keys, view: RingView | None) -> bool:
    """Whether a client holding ``keys`` runs the proposer itself on the ring ``view``: when it
    holds a key the acceptors take phase messages from (the operator's or a node's), or the
    ring is a development ring (unsigned: its nodes take anyone's, on loopback)."""
    return keys.private is not None or view is None or view.signature is None


class Names:
    """A client's unique names: proposed by ``proposer`` (this client) where the acceptors
    take its phase messages (:func:`proposes_itself`, asked of the ring in force at each
    call), else relayed by a member (:class:`Relay`)."""

    def __init__(self, proposer: Any, quorum: Quorum) -> None:
        self.proposer, self.relay, self.quorum = proposer, Relay(quorum), quorum

    def via(self) -> Any:
        """The proposer of the next call: :attr:`proposer` or :attr:`relay`."""
        handle = self.quorum.handle
        return (self.proposer if proposes_itself(handle.transport.keys, handle.current())
                else self.relay)

    def claim(self, key: str, value: Any = None, owner: bytes | None = None,
              work: float | None = None, deadline: float = DEADLINE) -> tuple[bool, Claim]:
        """Register ``key`` for ``value`` if it is free (:meth:`sdht.names.Proposer.claim`)."""
        return self.via().claim(key, value, owner, work, deadline)

    def lookup(self, key: str, deadline: float = DEADLINE) -> Claim | None:
        """The claim chosen for ``key``, or None (:meth:`sdht.names.Proposer.lookup`)."""
        return self.via().lookup(key, deadline)

    def propose(self, mine: Claim, deadline: float = DEADLINE) -> tuple[bool, Claim]:
        """Propose a claim already minted as this client (a member, for a relayed call)."""
        return self.proposer.propose(mine, deadline)


def new_claim(key: str, value: Any, owner: bytes | None, work: float | None,
              p: Mapping[str, Any]) -> Claim:
    """A claim of ``key`` for ``value`` by call ``owner`` (fresh when None) showing ``work``
    (``min_work`` when None), its arguments checked against ``p`` (:class:`InvalidRecord`)."""
    common.check_key(key, p)
    common.check_value(value, p)
    owner = os.urandom(OWNER_BYTES) if owner is None else owner
    if type(owner) is not bytes or len(owner) != OWNER_BYTES:
        raise InvalidRecord(f"an owner id is {OWNER_BYTES} bytes")
    w, t = p["min_work"] if work is None else cluster_params.check_work(work, p), now_us()
    found = find_nonce(canonical(key, value, owner, t, w), w)
    assert found is not None  # an unbounded search always answers
    return Claim(key, value, owner, t, w, found[0], found[1])


def chosen_from_wire(obj: Any, key: str, p: Mapping[str, Any]) -> Claim | None:
    """The claim a member's answer ``{a: claim or nil}`` reports for ``key``, checked: for
    ``key``, showing its work (its clock was checked when it was accepted, maybe long ago).

    :raises InvalidRecord: otherwise."""
    if not isinstance(obj, dict) or set(obj) != {"a"}:
        raise InvalidRecord("not an answer {a: claim or nil}")
    if obj["a"] is None:
        return None
    claim = claim_from_wire(obj["a"], p)
    if claim.key != key:
        raise InvalidRecord("the answer's claim names another name")
    common.check_work(claim.w, claim.digest, p["min_work"], MAX_WORK)
    return claim


class Relay:
    """The names of a client that may not propose: each call is proposed by a member, the
    name's replicas first (then any member), each tried once within the deadline. The same
    interface as :class:`sdht.names.Proposer`."""

    def __init__(self, quorum: Quorum) -> None:
        self.quorum = quorum

    def claim(self, key: str, value: Any = None, owner: bytes | None = None,
              work: float | None = None, deadline: float = DEADLINE) -> tuple[bool, Claim]:
        """Register ``key`` for ``value`` if it is free, through a member: ``(registered by
        this call, the chosen claim)``, as :meth:`sdht.names.Proposer.claim`.

        :raises OutcomeUnknown: when a member may have proposed it but none answered.
        :raises QuorumError: when no member could be asked."""
        p = self.quorum.handle.current().params
        mine = new_claim(key, value, owner, work, p)
        chosen = self._ask(key, REGISTER_ROUTE, {"a": mine.to_wire()}, deadline, mine)
        if chosen is None:
            raise NodeError(f"a member answered that {key!r} is free after proposing it")
        return chosen.owner == mine.owner, chosen

    def lookup(self, key: str, deadline: float = DEADLINE) -> Claim | None:
        """The claim chosen for ``key``, or None (free), read by a member."""
        common.check_key(key, self.quorum.handle.current().params)
        return self._ask(key, LOOKUP_ROUTE, {"k": key}, deadline, None)

    def _ask(self, key: str, route: str, message: dict[str, Any], deadline: float,
             mine: Claim | None) -> Claim | None:
        """Ask members in turn until one answers; past ``deadline``, or when every one failed,
        :class:`OutcomeUnknown` if one may have proposed ``mine``, else :class:`QuorumError`."""
        view = self.quorum.handle.current()
        members = [m.id for m in view.members]
        order = list(dict.fromkeys(self.quorum.health.order(view.readers.for_key(key))
                                   + self.quorum.health.order(members)))
        end, errors, maybe = time.monotonic() + deadline, {}, False
        transport = self.quorum.handle.transport
        for node in order:
            # The member's rounds must end before this client stops waiting for its answer.
            left = min(end - time.monotonic(), transport.timeout[1] - RELAY_MARGIN)
            if left <= 0:
                break
            body = packb({**message, "d": left})
            try:
                reply = self.quorum.call(node, lambda: transport.request(
                    node, "POST", route, data=body, headers=_HEADERS))
                return chosen_from_wire(reply.body, key, view.params)
            except InvalidRecord as exc:
                errors[node] = f"answered wrongly: {exc}"
            except NodeError as exc:
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    raise   # our request is wrong: another member will say the same
                maybe = maybe or (isinstance(exc.body, dict)
                                  and exc.body.get("error") == "outcome_unknown")
                errors[node] = str(exc)[:300]
            except TransportError as exc:   # it may have proposed before it failed
                maybe, errors[node] = maybe or mine is not None, str(exc)[:300]
            except SDHTError as exc:
                errors[node] = str(exc)[:300]
        what = f"{'registration' if mine else 'lookup'} of {key!r} through a member"
        if mine is not None and maybe:
            raise OutcomeUnknown(f"{what}: no member answered after it was proposed; it may or "
                                 f"may not be registered", key, mine.owner, errors)
        raise QuorumError(f"{what}: no member answered", key, errors=errors)
