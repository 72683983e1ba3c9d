"""Anti-entropy routes of the storage node: hash-tree reads and the background sync's report.

``POST /v1/tree`` (msgpack) answers hashes of tree nodes and ``(reference, digest)`` listings of
nodes restricted to position ranges, which :mod:`sdht.sync` compares between replicas
(docs/anti-entropy.md). ``POST /v1/sync/pass`` (admin, JSON) is called by the node's own background
sync after each pass: it purges tombstones past the grace and adds to the sync counters, so the
sync loop itself never opens LMDB (it runs in the gunicorn master, across worker forks).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from sdht.errors import InvalidRecord
from sdht.wire import (MAX_TREE_RANGES, RING_SIZE, decode_ranges, encode_ranges, is_tree_node,
                       node_range, packb, tombstone_cutoff)

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


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join sorted ``[start, end)`` ranges that overlap or touch: the same positions, each
    listed once, and sorted ends too."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _meeting(listed: list[tuple[int, int]], ranges: list[tuple[int, int]]
             ) -> list[tuple[int, int]]:
    """For each listed tree node, the slice ``(first, stop)`` of the (disjoint, sorted)
    ``ranges`` that meet it."""
    starts, ends = [s for s, _ in ranges], [e for _, e in ranges]
    out = []
    for level, index in listed:
        low, high = node_range(level, index)
        out.append((bisect_right(ends, low), bisect_left(starts, high)))
    return out


@bp.post("/tree")
def tree() -> Response:
    """Hashes of ``nodes`` and ``(reference, digest)`` listings of ``list`` within ``ranges``.

    Body: ``{"nodes": [[level, index], ...], "list": [[level, index], ...],
    "ranges": [[first, last], ...]}`` (inclusive position ranges; the whole ring by default).
    Answer: ``{"hashes": [bytes, ...], "entries": [[[ref, digest], ...], ...],
    "truncated": bool}``, where ``ref`` is an entry's reference for ``/v1/entries/get``.
    The operator or a member only: listings reveal what the node holds.

    What one request costs is bounded: its work, ``nodes`` plus for each node of ``list`` the
    ranges that meet it, at most ``2 * MAX_BATCH + MAX_TREE_RANGES`` (413 ``tree_too_costly``,
    see :data:`sdht.wire.MAX_TREE_WORK`); the listings, at most ``MAX_BATCH`` entries and
    ``MAX_ANSWER_BYTES`` bytes, past which they end and the answer says ``truncated``.
    """
    require_authority()
    cfg = current_app.config
    # Far above what MAX_BATCH nodes of each kind and MAX_TREE_RANGES ranges take (5 and 19
    # bytes each): a bigger body is refused before it is decoded.
    if (request.content_length or 0) > 16 * 2 * cfg["MAX_BATCH"] + 32 * MAX_TREE_RANGES + 4096:
        raise ApiError(413, "tree_too_costly", "the tree request body is too large")
    obj = body()
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_tree_request", "the body must be a msgpack map")
    nodes, listed, ranges = _nodes(obj, "nodes"), _nodes(obj, "list"), _merge(_ranges(obj))
    meeting = _meeting(listed, ranges)
    work = len(nodes) + sum(max(1, stop - first) for first, stop in meeting)
    if work > 2 * cfg["MAX_BATCH"] + MAX_TREE_RANGES:
        raise ApiError(413, "tree_too_costly", f"the request asks for {work} hashes and "
                       f"listed ranges; the limit is {2 * cfg['MAX_BATCH'] + MAX_TREE_RANGES}")
    answer = tree_answer(store(), nodes, listed, ranges, cfg["MAX_BATCH"],
                         cfg["MAX_ANSWER_BYTES"])
    return msgpack_response(packb(answer))


def tree_answer(st: Any, nodes: list[tuple[int, int]], listed: list[tuple[int, int]],
                ranges: list[tuple[int, int]], max_batch: int,
                max_answer_bytes: int) -> dict[str, Any]:
    """The ``POST /v1/tree`` answer from a store (anything with ``tree_hashes`` and
    ``entries``, as :class:`storage.store.Store`): hashes of ``nodes``, and listings of
    ``listed`` within the merged, sorted ``ranges``, at most ``max_batch`` entries and about
    ``max_answer_bytes`` bytes in all, past which it ends ``truncated``. No HTTP here, so the
    simulation (bench/sim.py) answers exactly as a node does."""
    budget, room, truncated = max_batch, max_answer_bytes, False
    entries: list[list[list[bytes]]] = []
    for (level, index), (first, stop) in zip(listed, _meeting(listed, ranges)):
        listing: list[list[bytes]] = []
        entries.append(listing)
        if truncated or first >= stop:
            continue
        found = st.entries(level, index, ranges[first:stop], budget + 1)
        for ref, digest in found:
            room -= len(ref) + len(digest) + 8   # msgpack framing included, roughly
            if budget == 0 or room < 0:
                truncated = True
                break
            listing.append([ref, digest])
            budget -= 1
    return {"hashes": st.tree_hashes(nodes), "entries": entries, "truncated": truncated}


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
