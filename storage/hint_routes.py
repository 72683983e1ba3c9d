"""Hinted handoff's routes: keep hints for a missing replica, hand them to the replayer.

* ``POST /v1/hints?target=HOST:PORT``: a msgpack array of entries to keep for ``target``
  (a client's write that did not reach it); answers ``{"kept", "dropped"}`` (dropped: past the
  byte cap);
* ``GET /v1/hints``: the backlog per target, as JSON;
* ``POST /v1/hints/take?target=&limit=``: the target's oldest hints, for the replayer
  (``{"seqs": [...], "entries": [bytes...]}``);
* ``POST /v1/hints/done?target=``: a msgpack array of sequences delivered, deleted here; their
  delivery delay goes to the ``sdht_hint_delivery_seconds`` histogram.

Every one needs the authority of node-to-node routes (:func:`storage.auth.require_authority`:
the operator or a member; loopback in development mode), so a stranger can neither fill a
node's hint space nor read it. Every hinted entry passes the ordinary admission path first, and
only the kinds clients write are hinted (``PUBLIC``: registers, sequence ops): a name's Paxos
state must never be written outside its ballots.
"""
from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify, request

from sdht import kinds
from sdht.wire import MAX_ANSWER_BYTES, packb

from . import metrics
from .auth import require_authority
from .hints import MAX_TARGET_BYTES, node_hints
from .http import ApiError, admit, batch, body, int_arg, msgpack_response, params, ring_view

bp = Blueprint("hints", __name__, url_prefix="/v1/hints")


def _target(member: bool = True) -> str:
    """The ``target`` argument: a ``host:port`` that (with ``member``) is another member of
    the ring this node holds."""
    target = request.args.get("target", "")
    if not target or len(target.encode("utf-8")) > MAX_TARGET_BYTES:
        raise ApiError(400, "bad_target", "target must name a node (host:port)")
    if member:
        view = ring_view()
        if view is None or view.member(target) is None or target == current_app.config["NODE_ID"]:
            raise ApiError(400, "bad_target", f"{target[:100]!r} is not another member of "
                           "this node's ring")
    return target


@bp.post("")
def keep() -> Response:
    """Keep the body's entries as hints for ``target``: all are admitted first (one bad
    entry refuses the batch), and only entries of the kinds clients write are accepted."""
    require_authority()
    target, p = _target(), params()
    entries = [(admit(obj, p, raw), raw) for obj, raw in batch(body(items=True), "records")]
    if not all(kinds.kind_of(entry.TAG).PUBLIC for entry, _ in entries):
        raise ApiError(400, "not_hintable", "only registers and sequence ops are hinted: a "
                       "name's state moves only under its ballots")
    kept = node_hints().add(target, [raw for _, raw in entries])
    metrics.current().hints.labels("kept").inc(kept)
    if kept < len(entries):
        metrics.current().hints.labels("dropped").inc(len(entries) - kept)
    return jsonify({"kept": kept, "dropped": len(entries) - kept})


@bp.get("")
def backlog() -> Response:
    """Each target's backlog: ``{target: {count, bytes, oldest_age}}``."""
    require_authority()
    return jsonify({t: b.to_json() for t, b in node_hints().backlog().items()})


@bp.post("/take")
def take() -> Response:
    """The oldest hints for ``target`` (at most ``limit``, and about half the answer limit in
    bytes); expired ones are deleted on the way."""
    require_authority()
    target = _target(member=False)   # a target that left the ring still has hints to expire
    limit = int_arg("limit", 1, current_app.config["MAX_BATCH"], 500)
    found, expired = node_hints().take(target, limit)
    if expired:
        metrics.current().hints.labels("expired").inc(expired)
    seqs, entries, room = [], [], MAX_ANSWER_BYTES // 2
    for seq, _, raw in found:
        room -= len(raw)
        if room < 0 and entries:
            break
        seqs.append(seq)
        entries.append(raw)
    return msgpack_response(packb({"seqs": seqs, "entries": entries}))


@bp.post("/done")
def done() -> Response:
    """Delete ``target``'s delivered hints (a msgpack array of sequences)."""
    require_authority()
    target = _target(member=False)
    seqs = batch(body(), "sequences")
    if not all(type(s) is int and 0 <= s < 1 << 64 for s in seqs):
        raise ApiError(400, "bad_batch", "sequences must be unsigned 64-bit integers")
    created = node_hints().done(target, seqs)
    now_us = time.time_ns() // 1000
    m = metrics.current()
    m.hints.labels("delivered").inc(len(created))
    for c in created:
        m.hint_delivery.observe(max(0.0, (now_us - c) / 1e6))
    return jsonify({"deleted": len(created)})
