"""Anti-entropy routes of the storage node: hash-tree reads and the background sync's report.

``POST /v1/tree`` (msgpack) answers hashes of tree nodes and ``(reference, digest)`` listings of
nodes restricted to position ranges, which :mod:`sdht.sync` compares between replicas
(docs/anti-entropy.md). ``POST /v1/sync/pass`` (admin, JSON) is called by the node's own background
sync after each pass: it purges tombstones past the grace and adds to the sync counters, so the
sync loop itself never opens LMDB (it runs in the gunicorn master, across worker forks).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from sdht.errors import InvalidRecord
from sdht.wire import RING_SIZE, decode_ranges, encode_ranges, is_tree_node, packb, tombstone_cutoff

from .auth import require_authority
from .http import ApiError, body, msgpack_response, params, store

bp = Blueprint("v1_sync", __name__, url_prefix="/v1")


def _nodes(obj: Any, name: str) -> list[tuple[int, int]]:
    items = obj.get(name, [])
    if not isinstance(items, list) or len(items) > current_app.config["MAX_BATCH"]:
        raise ApiError(400, "bad_tree_request", f"{name} must be a list of at most "
                       f"{current_app.config['MAX_BATCH']} [level, index] pairs")
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and is_tree_node(item[0], item[1])):
            raise ApiError(400, "bad_tree_request", f"not a tree node: {item!r}")
        out.append((item[0], item[1]))
    return out


def _ranges(obj: Any) -> list[tuple[int, int]]:
    try:
        return decode_ranges(obj.get("ranges", encode_ranges([(0, RING_SIZE)])))
    except InvalidRecord as exc:
        raise ApiError(400, "bad_tree_request", str(exc)) from None


@bp.post("/tree")
def tree() -> Response:
    """Hashes of ``nodes`` and ``(reference, digest)`` listings of ``list`` within ``ranges``.

    Body: ``{"nodes": [[level, index], ...], "list": [[level, index], ...],
    "ranges": [[first, last], ...]}`` (inclusive position ranges; the whole ring by default).
    Answer: ``{"hashes": [bytes, ...], "entries": [[[ref, digest], ...], ...],
    "truncated": bool}``, where ``ref`` is an entry's reference for ``/v1/entries/get``.
    The operator or a member only: listings reveal what the node holds.
    """
    require_authority()
    obj = body()
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_tree_request", "the body must be a msgpack map")
    nodes, listed, ranges = _nodes(obj, "nodes"), _nodes(obj, "list"), _ranges(obj)
    st = store()
    budget = current_app.config["MAX_BATCH"]
    entries = []
    for level, index in listed:
        found = st.entries(level, index, ranges, budget + 1)
        budget -= len(found)
        entries.append([[ref, digest] for ref, digest in found])
    answer = {"hashes": st.tree_hashes(nodes), "entries": entries, "truncated": budget < 0}
    return msgpack_response(packb(answer))


@bp.post("/sync/pass")
def sync_pass() -> Response:
    """Record a finished background sync pass (admin): add ``rounds`` and ``differences`` to
    the counters and, when ``purge`` is true, drop tombstones older than ``tombstone_grace``."""
    require_authority()
    obj = request.get_json(force=True, silent=True)
    if not isinstance(obj, dict):
        raise ApiError(400, "malformed_body", "the body must be a JSON object")
    counts = [obj.get("rounds", 0), obj.get("differences", 0)]
    if not all(type(c) is int and 0 <= c < 2**32 for c in counts):
        raise ApiError(400, "bad_argument", "rounds and differences must be small integers")
    st = store()
    st.add_sync_counts(*counts)
    purged = 0
    if obj.get("purge") is True:
        purged = st.purge_tombstones(tombstone_cutoff(params()))
    return jsonify({"purged": purged})
