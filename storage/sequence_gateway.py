"""Sequences on the ``/kv-store`` gateway (docs/http-api.md, "Sequences"): timelines over curl.

* ``POST /kv-store/sequences/<key>`` with a JSON body (any JSON value: the item) appends it:
  201 ``{"key", "id"}``, the item's id in hex.
* ``GET /kv-store/sequences/<key>`` (``?limit=N``: the last N items; ``&before=ID``: those
  before that item) lists the items in order: 200 ``{"key", "items": [{"id", "value"}],
  "count"}``, ``count`` being the sequence's length. An empty sequence is an empty list.
* ``DELETE /kv-store/sequences/<key>/<id>`` removes an item: 200, or 404 when no item of
  the sequence has that id.

The node runs the ring library (:mod:`storage.ringclient`) as any client does and mints the
ops' proof of work for the caller, under the gateway's limits (:mod:`storage.access`: writes
take a token of the client's rate; a ring whose ``min_work`` is above what the node mints
refuses them, 403). Each worker keeps the last sequences it served
(:mod:`sdht.sequence_cache`): an append asks the replicas for the summaries of their ops first,
and reads ops (checking only new ones) only when they changed. Errors are ``{"error", "message"}`` with a 4xx or 503.
"""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from sdht.errors import KeyNotFound
from sdht.kinds import sequence
from sdht.sequence_cache import SequenceCache
from sdht.sequences import Item, Sequence
from sdht.status import jsonable

from .http import ApiError, check_key, int_arg, params, ring_view
from .ringclient import ring

bp = Blueprint("kv_sequences", __name__, url_prefix="/kv-store/sequences")
#: The sequences this worker keeps between requests. An append reads the replicas' summaries
#: first (``stale_after=0``): HTTP clients have no session, and an item appended through one
#: node must come after those acknowledged before it through any other.
_cache = SequenceCache(stale_after=0.0)


def _sequence(key: str) -> Sequence:
    """This worker's :class:`~sdht.sequences.Sequence` of ``key`` (checked), made on first use."""
    if ring_view() is None:
        raise ApiError(503, "unavailable", "this node has not joined a ring")
    check_key(key, params())
    if len(key.encode("utf-8")) > sequence.MAX_KEY_BYTES:
        raise ApiError(413, "too_large", f"a sequence's key is at most "
                       f"{sequence.MAX_KEY_BYTES} bytes")
    return _cache.get(ring(), key)


def _charge() -> None:
    """A write through the gateway: refused (403) when the node does not mint this ring's
    work for its clients, or (429) past the client's rate."""
    access = current_app.extensions["sdht.gateway"]
    if not access.mints(params()):
        raise ApiError(403, "forbidden", "this ring's min_work is above what the node mints "
                       "for its clients: write with the sdht library")
    retry = access.retry_after(request.remote_addr or "")
    if retry:
        g.retry_after = retry   # the gateway's answer hook sends it as Retry-After
        raise ApiError(429, "too_many_requests", f"retry in {retry}s", retry_after=retry)


def _item() -> Any:
    """The request's JSON body: the item to append."""
    limit = 6 * params()["max_value_bytes"] + 4096   # JSON text: up to six bytes per byte
    if (request.content_length or 0) > limit:
        raise ApiError(413, "too_large", f"the body must be at most {limit} bytes")
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"the body must be at most {limit} bytes")
    if not raw.strip():
        raise ApiError(400, "bad_request", "the body must be the JSON item to append")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_request", "the body must be a JSON value") from None


def _id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != sequence.ID_BYTES:
        raise ApiError(400, "bad_id", f"an item id is {sequence.ID_BYTES} bytes in hex")
    return raw


def _listed(items: list[Item]) -> list[dict[str, Any]]:
    return [{"id": it.id.hex(), "value": jsonable(it.value)} for it in items]


@bp.post("/<path:key>")
def append(key: str) -> tuple[Response, int]:
    """Append the JSON body to the sequence ``key``: 201 with the item's id."""
    seq = _sequence(key)
    item = _item()
    _charge()
    item_id = seq.append(item)
    return jsonify({"key": key, "id": item_id.hex()}), 201


@bp.get("/<path:key>")
def items(key: str) -> tuple[Response, int]:
    """The items of ``key`` in order: all, or the last ``limit`` (before ``before``)."""
    seq = _sequence(key)
    limit = int_arg("limit", 0, 1 << 31, -1)
    before = request.args.get("before")
    entries = seq.entries()
    end = len(entries)
    if before is not None:
        wanted = _id(before)
        end = next((i for i, it in enumerate(entries) if it.id == wanted), -1)
        if end < 0:
            raise ApiError(404, "not_found", "no item of this sequence has that id")
    start = 0 if limit < 0 else max(0, end - limit)
    return jsonify({"key": key, "items": _listed(entries[start:end]),
                    "count": len(entries)}), 200


@bp.delete("/<path:key>/<item_id>")
def remove(key: str, item_id: str) -> tuple[Response, int]:
    """Remove the item ``item_id`` of ``key``: 200 with its value, or 404."""
    seq = _sequence(key)
    wanted = _id(item_id)
    _charge()
    try:
        value = seq.remove_id(wanted)
    except KeyNotFound:
        raise ApiError(404, "not_found", "no item of this sequence has that id") from None
    return jsonify({"key": key, "id": item_id, "value": jsonable(value)}), 200
