"""The node's web page (``GET /``) and the small JSON routes behind it.

The page draws the ring and this node's health, and gets, sets and deletes keys *through the
ring*: the browser cannot cheaply mint proof of work, so ``/v1/ui/*`` run the ring library
server-side (the node's own ring client, :mod:`storage.ringclient`) and answer the value
together with the key's preference list and what each replica holds. The routes take small JSON
bodies only.
"""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from sdht.client import Ring
from sdht.errors import NoNodes
from sdht.ring import position
from sdht.wire import RING_SIZE
from sdht.status import cluster_status, jsonable, replicas, token_fractions

from .auth import keys, mode, require_page_token
from .http import ApiError
from .ringclient import ring as _ring

#: Largest JSON body the page's routes accept (bytes); values are small on this page.
UI_MAX_BODY = 64 << 10

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


@ui.get("/")
def index() -> str:
    """The node's page."""
    dev = keys().development
    return render_template("index.html", node=current_app.config["NODE_ID"] or "this node",
                           needs_key=not dev, dev_mode=dev, mode=mode())


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
