"""The node's web page (``GET /``) and the small JSON routes behind it.

The page draws the ring and this node's health, and gets, sets and deletes keys *through the
ring*: the browser cannot cheaply mint proof of work, so ``/v1/ui/*`` run the ring library
server-side (the node's own ring client, :mod:`storage.ringclient`) and answer the value
together with the key's preference list and what each replica holds. The routes take small JSON
bodies only.

The page arrives with what this node knows without asking anyone (its stored ring, its own
health figures, its recent events), so its first paint shows the ring and the figures; the
other members' figures follow from the first fetch, at once. Links at its top lead to every
member's page, and at its bottom is the node's log (:mod:`storage.eventlog`), fed by the
request hooks registered here.
"""
from __future__ import annotations

import json
from typing import Any

from flask import (Blueprint, Flask, Response, current_app, jsonify, render_template,
                   request)

from sdht.client import Ring
from sdht.errors import NoNodes
from sdht.ring import position
from sdht.wire import RING_SIZE
from sdht.status import cluster_status, jsonable, replicas, shares, token_fractions

from . import eventlog, routes
from .auth import keys, mode, require_page_token
from .http import ApiError, ring_view
from .ringclient import ring as _ring

#: Largest JSON body the page's routes accept (bytes); values are small on this page.
UI_MAX_BODY = 64 << 10
#: Events the page shows at its bottom (``/v1/ui/log`` gives up to eventlog.MAX_EVENTS).
PAGE_EVENTS = 50

ui = Blueprint("ui", __name__)


def init_app(app: Flask) -> None:
    """Register the page and its routes on ``app``."""
    app.register_blueprint(ui)


def _request_json() -> dict[str, Any]:
    if (request.content_length or 0) > UI_MAX_BODY:
        raise ApiError(413, "too_large", f"the body must be at most {UI_MAX_BODY} bytes")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("key"), str) or not body["key"]:
        raise ApiError(400, "bad_request", 'send a JSON object with a non-empty "key" string')
    return body


def _answer(ring: Ring, key: str, **extra: Any) -> Response:
    return jsonify({"key": key, "position": position(key) / RING_SIZE,
                    "preference": ring.preference(key),
                    "replicas": replicas(ring.handle, key), "epoch": ring.view.epoch if ring.view
                    else 0, **extra})


@ui.after_app_request
def _log_event(response: Response) -> Response:
    """Keep the request in the node's log when it is a write, sync, membership change or
    error (:func:`storage.eventlog.classify`)."""
    # The key of a single-record write, as its route noted it (eventlog.note_key).
    eventlog.keep(current_app.config["DATA_DIR"],
                  eventlog.classify(request, response, eventlog.noted_key()))
    return response


def initial_state() -> dict[str, Any]:
    """What the page draws first, from this node alone (no request to any other node): the
    ring it stores, with each member's tokens and share, its own health figures (as
    ``GET /v1/health``) and its recent events."""
    node_id = current_app.config["NODE_ID"]
    view = ring_view()
    health = routes.health().get_json()
    nodes = []
    if view is not None:
        share, tokens = shares(view), token_fractions(view)
        for m in view.members:
            mine = m.id == node_id
            nodes.append({"id": m.id, "state": m.state, "share": share[m.id],
                          "positions": tokens[m.id], "up": True if mine else None,
                          "records": health["records"] if mine else None,
                          "epoch": view.epoch if mine else None})
    return {"ring": {"self": node_id, "epoch": view.epoch if view else 0, "agree": True,
                     "nodes": nodes, "initial": True},
            "health": health,
            "log": eventlog.recent(current_app.config["DATA_DIR"], PAGE_EVENTS)}


@ui.get("/")
def index() -> str:
    """The node's page, with its initial state (:func:`initial_state`)."""
    dev = keys().development
    state = initial_state()
    return render_template("index.html", node=current_app.config["NODE_ID"] or "this node",
                           needs_key=not dev, dev_mode=dev, mode=mode(), state=state,
                           members=[n["id"] for n in state["ring"]["nodes"]])


@ui.get("/v1/ui/log")
def ui_log() -> Response:
    """The node's recent events, newest first: ``{"node", "events": [{t, kind, text, pid}]}``;
    ``?limit=`` (default 50, at most 500)."""
    try:
        limit = int(request.args.get("limit", PAGE_EVENTS))
    except ValueError:
        raise ApiError(400, "bad_argument", "limit must be an integer") from None
    if not 1 <= limit <= eventlog.MAX_EVENTS:
        raise ApiError(400, "bad_argument", f"limit must be in 1..{eventlog.MAX_EVENTS}")
    return jsonify({"node": current_app.config["NODE_ID"],
                    "events": eventlog.recent(current_app.config["DATA_DIR"], limit)})


@ui.get("/v1/ui/ring")
def ring_state() -> Response:
    """The ring as the page draws it: members, token fractions, shares and health."""
    ring = _ring()
    try:
        state = cluster_status(ring.handle)
    except NoNodes:
        return jsonify({"self": current_app.config["NODE_ID"], "epoch": 0, "nodes": []})
    tokens = token_fractions(ring.view) if ring.view else {}
    for node in state["nodes"]:
        node["positions"] = tokens.get(node["id"], [])
    return jsonify({"self": current_app.config["NODE_ID"], **state})


@ui.post("/v1/ui/get")
def ui_get() -> Response:
    """Read ``{"key"}`` through the ring: ``{"found", "value", "preference", "replicas"}``."""
    key = _request_json()["key"]
    ring = _ring()
    rec = ring.get_record(key)
    found = rec is not None and not rec.deleted
    return _answer(ring, key, found=found, value=jsonable(rec.value) if found else None)


@ui.post("/v1/ui/set")
def ui_set() -> Response:
    """Write ``{"key", "value"}`` through the ring; ``"raw": true`` keeps a string as is,
    otherwise a string that parses as JSON is stored as the parsed value."""
    require_page_token()
    body = _request_json()
    value = body.get("value")
    if isinstance(value, str) and not body.get("raw"):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    ring = _ring()
    rec = ring.set(body["key"], value)
    return _answer(ring, body["key"], found=True, value=jsonable(rec.value), work=rec.w)


@ui.post("/v1/ui/delete")
def ui_delete() -> Response:
    """Delete ``{"key"}`` through the ring (writes a tombstone)."""
    require_page_token()
    key = _request_json()["key"]
    ring = _ring()
    ring.delete(key)
    return _answer(ring, key, found=False, value=None)
