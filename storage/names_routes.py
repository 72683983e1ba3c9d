"""Unique names on the node (docs/names.md): the acceptor's two phases under ``/v1/names``, and
the gateway's registry under ``/kv-store/names``.

* ``POST /v1/names/prepare`` ``{k, b, e}`` and ``POST /v1/names/accept`` ``{k, b, e, a}``
  (msgpack): one LMDB write transaction each (:mod:`storage.acceptor`); the answer is
  ``{s: ok|conflict|stale, b, a, e}``. An accept's claim passes the proof-of-work gate first.
  Both need a request signed by the operator or a member (docs/security.md).
* ``POST /v1/names/register`` ``{a, d}`` and ``POST /v1/names/lookup`` ``{k, d}`` (msgpack): this
  node proposes a client's claim (minted by the client) or looks a name up, as a member, within
  ``d`` seconds, for a client that may not propose (:class:`sdht.registry.Relay`); ``{a}`` is
  the chosen claim (or nil).
* ``PUT /kv-store/names/<name>`` with an optional JSON body ``{"value": V, "owner": HEX}``
  registers the name if it is free: 201 ``{registered: true}``, or 409 ``taken`` with the
  current value. The node proposes through its own ring client, as any client does, and mints
  the claim's work. ``owner`` (32 hex digits) retries an earlier call whose outcome was
  unknown (503 ``outcome_unknown`` names it).
* ``GET /kv-store/names/<name>``: 200 with the value, or 404.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from flask import Blueprint, Response, current_app, jsonify, request

from sdht.errors import InvalidRecord, OutcomeUnknown, ValueTooLarge
from sdht import registry
from sdht.kinds import name
from sdht.status import jsonable
from sdht.wire import packb

from . import acceptor, metrics
from .auth import require_authority
from .http import ApiError, body, check_key, msgpack_response, params, ring_view, store
from .ringclient import ring

bp = Blueprint("names", __name__)
#: Largest JSON body a registration through the gateway takes.
MAX_REGISTER_BODY = 1 << 20


# -- the acceptor ---------------------------------------------------------------------------------

#: The WSGI environ key under which :mod:`storage.fastphases` hands Flask the error of a phase
#: it ran (the store may have applied it): the route answers that error instead of running the
#: phase a second time.
FAILED = "sdht.phase_failed"
#: Each phase route's phase, as the metrics label it.
PHASES = {name.PREPARE_ROUTE: "prepare", name.ACCEPT_ROUTE: "accept"}

#: A checked phase message: key, ballot, epoch and (accept) the claim.
Message = tuple[str, name.Ballot, int, name.Claim | None]


def parse_message(obj: Any, p: Mapping[str, Any], with_claim: bool) -> Message:
    """The phase message ``obj`` (decoded), checked: key, ballot, epoch and (for accept) the
    claim; the ballot is not from the future, the claim pays the proof-of-work gate.

    :raises ApiError: 400 (413 for a key or value too long) when it is not such a message."""
    if not isinstance(obj, dict) or set(obj) != ({"k", "b", "e", "a"} if with_claim
                                                 else {"k", "b", "e"}):
        raise ApiError(400, "bad_message", "a phase message is {k, b, e} (prepare) or "
                       "{k, b, e, a} (accept)")
    key = check_key(obj["k"], p)
    if type(obj["e"]) is not int or obj["e"] < 0:
        raise ApiError(400, "bad_message", "e must be a ring epoch")
    claim = None
    try:
        ballot = name.ballot_from_wire(obj["b"])
        name.check_ballot(ballot, p)
        if with_claim:
            claim = name.claim_from_wire(obj["a"], p)
            name.check_claim(claim, p)
            if claim.key != key:
                raise InvalidRecord("the claim names another name")
    except ValueTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except InvalidRecord as exc:
        raise ApiError(400, "invalid_record", str(exc)) from None
    return key, ballot, obj["e"], claim


def apply(phase: str, message: Message, p: Mapping[str, Any]) -> name.Answer:
    """Run ``phase`` (``prepare`` or ``accept``) of ``message`` in this node's acceptor: one
    write transaction, committed before this returns (:mod:`storage.acceptor`)."""
    return acceptor.run(store(), operation(phase, message, p))


def operation(phase: str, message: Message, p: Mapping[str, Any]) -> acceptor.Op:
    """``phase`` of ``message`` as an acceptor operation, not yet run (:func:`apply` runs it
    alone, the worker's group commit with others: :mod:`storage.groupcommit`)."""
    key, ballot, epoch, claim = message
    if phase == "prepare":
        return acceptor.prepare(store(), key, ballot, epoch, p)
    assert claim is not None
    return acceptor.accept(store(), key, ballot, claim, epoch, p)


def answered(phase: str, answer: name.Answer) -> bytes:
    """Count ``answer`` to ``phase`` in the node's metrics; return the answer's body."""
    metrics.current().names.labels(phase, answer.status).inc()
    return packb(name.answer_to_wire(answer))


def _phase(phase: str) -> Response:
    failed = request.environ.get(FAILED)
    if failed is not None:   # the fast path ran this phase already: answer how it failed
        raise failed
    # Only the operator or a member proposes (docs/security.md): a client goes through
    # ``/v1/names/register`` (below).
    require_authority()
    p = params()
    message = parse_message(body(), p, phase == "accept")
    return msgpack_response(answered(phase, apply(phase, message, p)))


@bp.post(name.PREPARE_ROUTE)
def prepare() -> Response:
    """Phase 1: promise the ballot, or answer the higher one held (or ``stale``)."""
    return _phase("prepare")


@bp.post(name.ACCEPT_ROUTE)
def accept() -> Response:
    """Phase 2: accept the claim at the ballot, or answer the higher one held."""
    return _phase("accept")


# -- proposing for a client (sdht.registry.Relay) -------------------------------------------------

def _relayed(fields: set[str]) -> tuple[dict[str, Any], float]:
    """The body of a relayed call, with the seconds ``d`` the caller waits (bounded)."""
    _rate_limit()
    obj = body()
    if not isinstance(obj, dict) or set(obj) != fields | {"d"} or \
            type(obj["d"]) not in (int, float) or not obj["d"] > 0:
        raise ApiError(400, "bad_message", f"the message is {{{', '.join(sorted(fields))}, d}}")
    return obj, min(float(obj["d"]), registry.DEADLINE)


@bp.post(registry.REGISTER_ROUTE)
def relay_register() -> Response:
    """Propose a client's claim (minted by it: its work is checked here) as this member; the
    answer ``{a}`` is the claim chosen, whoever's it is."""
    obj, seconds = _relayed({"a"})
    p = params()
    try:
        claim = name.claim_from_wire(obj["a"], p)
        name.check_claim(claim, p)
    except ValueTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except InvalidRecord as exc:
        raise ApiError(400, "invalid_record", str(exc)) from None
    try:
        _, chosen = ring().names.propose(claim, seconds)
    except OutcomeUnknown as exc:
        raise ApiError(503, "outcome_unknown", str(exc), owner=exc.owner.hex()) from None
    return msgpack_response(packb({"a": chosen.to_wire()}))


@bp.post(registry.LOOKUP_ROUTE)
def relay_lookup() -> Response:
    """Look a name up as this member: ``{a}``, the claim chosen or nil."""
    obj, seconds = _relayed({"k"})
    chosen = ring().names.lookup(check_key(obj["k"], params()), seconds)
    return msgpack_response(packb({"a": chosen.to_wire() if chosen is not None else None}))


# -- the gateway ----------------------------------------------------------------------------------

def _name(key: str) -> str:
    if ring_view() is None:
        raise ApiError(503, "unavailable", "this node has not joined a ring")
    return check_key(key, params())


def _register_body() -> dict[str, Any]:
    if (request.content_length or 0) > MAX_REGISTER_BODY:
        raise ApiError(413, "too_large", f"the body must be at most {MAX_REGISTER_BODY} bytes")
    raw = request.get_data(cache=False)
    if not raw.strip():
        return {}
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict) or set(obj) - {"value", "owner"}:
        raise ApiError(400, "bad_request", 'send nothing, or a JSON object {"value": V} '
                       '(and "owner": the hex id of a call to retry)')
    return obj


def _limits() -> None:
    """The gateway's own limits, when it runs on this node (storage/gateway.py): what work
    it mints for anyone, and each client's rate."""
    access = current_app.extensions.get("sdht.gateway")
    if access is not None and not access.mints(params()):
        raise ApiError(403, "forbidden", "this ring's min_work is above what the node mints "
                       "for its clients: register with the sdht library")
    _rate_limit()


def _rate_limit() -> None:
    """Each client's rate of calls that make this node run rounds (storage/access.py)."""
    access = current_app.extensions.get("sdht.gateway")
    if access is None:
        return
    retry = access.retry_after(request.remote_addr or "")
    if retry:
        raise ApiError(429, "too_many_requests", f"retry in {retry}s", retry_after=retry)


@bp.put("/kv-store/names/<path:key>")
def register(key: str) -> tuple[Response, int]:
    """Register ``key`` if it is free: 201, or 409 ``taken`` with the current value."""
    key = _name(key)
    obj = _register_body()
    _limits()
    owner = obj.get("owner")
    try:
        owner = bytes.fromhex(owner) if owner is not None else None
    except (TypeError, ValueError):
        raise ApiError(400, "bad_request", "owner must be hex") from None
    try:
        mine, chosen = ring().names.claim(key, obj.get("value"), owner)
    except OutcomeUnknown as exc:
        raise ApiError(503, "outcome_unknown", str(exc), owner=exc.owner.hex()) from None
    if mine:
        return jsonify({"name": key, "registered": True, "value": jsonable(chosen.value),
                        "owner": chosen.owner.hex()}), 201
    return jsonify({"error": "taken", "message": f"{key!r} is registered already",
                    "name": key, "value": jsonable(chosen.value)}), 409


@bp.get("/kv-store/names/<path:key>")
def lookup(key: str) -> tuple[Response, int]:
    """The value ``key`` is registered with: 200, or 404 when it is free."""
    key = _name(key)
    chosen = ring().names.lookup(key)
    if chosen is None:
        raise ApiError(404, "not_found", f"{key!r} is not registered")
    return jsonify({"name": key, "value": jsonable(chosen.value)}), 200
