"""The key-value-store JSON API on every node, ``/kv-store`` (docs/http-api.md).

Any node serves any key. It coordinates through the ring library (the node's own ring client,
:mod:`storage.ringclient`), so a request is answered from the key's replicas whether or not this
node holds a copy, and the node mints the proof of work for writes. Routes, statuses and
messages are those of the store sdht descends from (spencer-p/key-value-store); values are
any JSON. Error bodies have ``error`` (the seed's text) and ``message`` (``Error in METHOD``).

Every answer carries ``causal-context``. A request's context comes from its JSON body, the
``X-Causal-Context`` header or the ``causal-context`` query argument (merged when several), and
the request runs as a :class:`sdht.sessions.Session` of it: reads never go below it (they wait
up to ``GATEWAY_WAIT``, then answer 503), writes are minted after it. The answer carries the
context updated with what the request wrote or read (:mod:`sdht.session` has the format). What
a client may make a node spend is bounded by :mod:`storage.access`.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from sdht.errors import (CausalTimeout, InvalidContext, InvalidRecord, SDHTError,
                         ValueTooLarge, WriteConflict)
from sdht.kinds import register
from sdht.kinds.common import check_key
from sdht.kinds.register import Record
from sdht.session import EMPTY, Context, check_plausible, decode, encode, loads, merge_all
from sdht.sessions import Session
from sdht.status import jsonable
from sdht.wire import CONTEXT_FIELD, CONTEXT_HEADER, CONTEXT_MAX_BYTES, now_us

from .access import FIRST_WAIT, Access
from .http import ApiError, params, ring_view, store
from .layout import held_of
from .ringclient import ring

bp = Blueprint("kv", __name__, url_prefix="/kv-store")
#: Seconds a worker reuses its count of live keys: counting reads every key the node holds.
COUNT_TTL = 1.0
UNAVAILABLE = "Unable to satisfy request"
NOT_FOUND = "Key does not exist"


def init_app(app: Flask) -> None:
    """Register the gateway's routes and its per-process limits on ``app``."""
    app.extensions["sdht.gateway"] = Access(app.config)
    app.extensions["sdht.key_count"] = (float("-inf"), 0)
    app.register_blueprint(bp)
    app.after_request(_finish)


# -- routes ---------------------------------------------------------------------------------------

@bp.get("/keys/<path:key>")
def get_key(key: str) -> tuple[Response, int]:
    """Read ``key``: 200 with ``value``, or 404 ``Key does not exist``."""
    session = _session(_key(key))
    with _errors(session):
        rec = _read(session, key)
    if rec is None or rec.deleted:
        fail(404, NOT_FOUND, session.context, doesExist=False, **_where(session, key))
    return _answer(200, session, key, message="Retrieved successfully",
                   value=jsonable(rec.value), doesExist=True)


@bp.put("/keys/<path:key>")
def put_key(key: str) -> tuple[Response, int]:
    """Write ``{"value": V}`` to ``key``: 201 when it was missing, 200 when it replaced one."""
    ctx = _key(key)
    if g.body.get("value") is None:
        fail(400, "Value is missing", ctx)
    session = _session(ctx)
    _charge_write(session)
    with _errors(session):
        rec = _read(session, key)
        session.set(key, g.body["value"])
    if rec is not None and not rec.deleted:
        return _answer(200, session, key, message="Updated successfully", replaced=True)
    return _answer(201, session, key, message="Added successfully", replaced=False)


@bp.delete("/keys/<path:key>")
def delete_key(key: str) -> tuple[Response, int]:
    """Delete ``key`` (a tombstone): 200, or 404 when it does not exist (nothing is written)."""
    session = _session(_key(key))
    _charge_write(session)
    with _errors(session):
        rec = _read(session, key)
        if rec is None or rec.deleted:
            fail(404, NOT_FOUND, session.context, doesExist=False, **_where(session, key))
        session.delete(key)
    return _answer(200, session, key, message="Deleted successfully", doesExist=True)


@bp.route("/keys", methods=["GET", "PUT", "DELETE"])
@bp.route("/keys/", methods=["GET", "PUT", "DELETE"])
def missing_key() -> NoReturn:
    """A request that names no key."""
    fail(400, "Key is missing", parse_request())


# -- requests -------------------------------------------------------------------------------------

def parse_request() -> Context:
    """Read a ``/kv-store`` request: its JSON body (an object, or nothing) into ``g.body``, and its causal
    context, merged from the body, the header and the query argument."""
    raw = request.get_data(cache=True)
    g.body = {}
    # Parse no more JSON than a request can need: the largest value the ring takes (its JSON
    # text up to six bytes per encoded byte, as escapes) and a context in full.
    limit = 6 * params()["max_value_bytes"] + 2 * CONTEXT_MAX_BYTES + 4096
    if len(raw) > limit:
        fail(413, "Request body is too large", EMPTY, detail=f"the limit is {limit} bytes")
    if raw.strip():
        try:
            g.body = json.loads(raw)
        except (ValueError, RecursionError):
            g.body = None
        if not isinstance(g.body, dict):
            g.body = {}
            fail(400, "Failed to parse request body", EMPTY)
    texts = [request.headers.get(CONTEXT_HEADER), request.args.get(CONTEXT_FIELD)]
    try:
        ctx = merge_all([decode(g.body.get(CONTEXT_FIELD)), *(loads(t) for t in texts if t)])
        check_plausible(ctx, params(), now_us())
    except InvalidContext as exc:
        fail(400, "Invalid causal context", EMPTY, detail=str(exc))
    return ctx


def _key(key: str) -> Context:
    """Parse the request (:func:`_parse`) and check ``key``; return the request's context."""
    ctx = parse_request()
    if len(key) > current_app.config["GATEWAY_MAX_KEY_LENGTH"]:
        fail(400, "Key is too long", ctx)
    try:
        check_key(key, params())
    except ValueTooLarge:
        fail(400, "Key is too long", ctx)
    except InvalidRecord as exc:
        fail(400, "Key is invalid", ctx, detail=str(exc))
    return ctx


def _session(ctx: Context) -> Session:
    """The session this request runs as: its context, its ``r`` (query argument), the node's
    wait. 503 when this node is in no ring."""
    raw, n = request.args.get("r"), params()["n"]
    r = None
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 2 and 1 <= int(raw) <= n):
            fail(400, "Invalid r", ctx, detail=f"r must be an integer from 1 to n ({n})")
        r = int(raw)
    if ring_view() is None:
        fail(503, UNAVAILABLE, ctx, detail="this node has not joined a ring")
    try:
        return Session(ring(), ctx, r=r, wait=current_app.config["GATEWAY_WAIT"])
    except SDHTError as exc:
        fail(503, UNAVAILABLE, ctx, detail=str(exc))


def _access() -> Access:
    return current_app.extensions["sdht.gateway"]


def _charge_write(session: Session) -> None:
    """Refuse a write this node will not mint (403), or one past the client's rate (429)."""
    p = params()
    if not _access().mints(p):
        fail(403, "Writes through this node are off", session.context,
              detail=f"this ring's min_work ({p['min_work']}) is above what the node mints for "
                     f"its clients ({_access().max_work}): write with the sdht library")
    _take_token(session)


def _take_token(session: Session) -> None:
    retry = _access().retry_after(request.remote_addr or "")
    if retry:
        g.retry_after = retry
        fail(429, "Too many requests", session.context,
              detail=f"this client's rate on this node is spent: retry in {retry}s")


def _read(session: Session, key: str) -> Record | None:
    """The session's read of ``key``. Past :data:`~storage.access.FIRST_WAIT` seconds the wait
    costs the client a token and takes a waiting slot (:mod:`storage.access`)."""
    total = current_app.config["GATEWAY_WAIT"]
    try:
        return session.get_record(key, wait=min(FIRST_WAIT, total))
    except CausalTimeout:
        if total <= FIRST_WAIT:
            raise
    _take_token(session)
    if not _access().wait_slot():
        fail(503, UNAVAILABLE, session.context,
              detail="too many reads wait for their causal context on this node")
    try:
        return session.get_record(key, wait=total - FIRST_WAIT)
    finally:
        _access().release()


@contextmanager
def _errors(session: Session) -> Iterator[None]:
    """Answer the library's errors as the API's."""
    try:
        yield
    except WriteConflict as exc:
        fail(409, "Key is held by a write of higher priority", session.context,
              detail=str(exc))
    except ValueTooLarge as exc:
        fail(413, "Value is too large", session.context, detail=str(exc))
    except InvalidRecord as exc:
        fail(400, "Value is invalid", session.context, detail=str(exc))
    except SDHTError as exc:  # quorums, the deadline, unreachable or faulty nodes
        fail(503, UNAVAILABLE, session.context, detail=str(exc))


# -- answers --------------------------------------------------------------------------------------

def fail(status: int, error: str, ctx: Context, **extra: Any) -> NoReturn:
    """Answer ``{"error", "message": "Error in METHOD", "causal-context", ...}``."""
    raise ApiError(status, error, f"Error in {request.method}",
                   **{CONTEXT_FIELD: encode(ctx)}, **extra)


def _where(session: Session, key: str) -> dict[str, str]:
    """``address``, the key's first replica, when this node holds no copy of it (the seed
    named the node it forwarded to)."""
    try:
        nodes = session.ring.preference(key)
    except SDHTError:
        return {}
    return {"address": nodes[0]} if nodes and current_app.config["NODE_ID"] not in nodes else {}


def _answer(status: int, session: Session, key: str, **fields: Any) -> tuple[Response, int]:
    return jsonify({**fields, **_where(session, key), CONTEXT_FIELD: session.export()}), status


def _finish(response: Response) -> Response:
    """Every ``/kv-store`` answer carries a context, refusals made before the gateway read the
    request too (405, 413: an empty one); a 429 says when to retry."""
    if not request.path.startswith(bp.url_prefix or "/kv-store"):
        return response
    if response.status_code == 429 and "retry_after" in g:
        response.headers["Retry-After"] = str(g.retry_after)
    if response.status_code >= 400 and response.is_json:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and CONTEXT_FIELD not in body:
            body[CONTEXT_FIELD] = {}
            response.set_data(json.dumps(body))
    return response


def live_keys() -> int:
    """Live keys (registers that are not tombstones) this node holds, counted at most once
    per :data:`COUNT_TTL` seconds per worker."""
    when, count = current_app.extensions["sdht.key_count"]
    if time.monotonic() - when < COUNT_TTL:
        return count
    st, count = store(), 0
    with st.env.begin(db=st.data) as txn:
        for lkey, raw in txn.cursor():
            if lkey[8] == register.TAG and not held_of(lkey, raw).deleted:
                count += 1
    current_app.extensions["sdht.key_count"] = (time.monotonic(), count)
    return count
