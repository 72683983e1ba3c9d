"""The node's data routes under ``/v1``: health, the ring, and entries of every kind.

Records travel as msgpack, errors, health and the ring as JSON (docs/design.md, "Storage node").
Every write goes through one admission path (:func:`storage.http.admit`: the entry's kind checks
shape, sizes, work and clock), then the store applies the kind's accept rule.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import msgpack
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from sdht import kinds
from sdht.errors import ConfigError
from sdht.ring import RingView
from sdht.wire import SAME, SIGNER_HEADER, STORED, packb, packed_array

from . import eventlog, metrics
from .auth import check_ring, keys, mode, require_authority
from .http import (ApiError, admit, batch, body, check_key, int_arg, msgpack_response, params,
                   range_args, ring_view, store)
from .layout import is_data_key

bp = Blueprint("v1", __name__, url_prefix="/v1")

#: Keys, references or entries read from the store at a time: a batch read stops at
#: ``MAX_ANSWER_BYTES`` (sdht.wire) having held at most one such slice more.
SLICE = 64


def _cap_body(item_bytes: int) -> None:
    """Refuse (413) a body longer than ``MAX_BATCH`` items of ``item_bytes`` can be, before
    it is decoded: decoding costs by the byte, and junk can cost seconds."""
    if (request.content_length or 0) > current_app.config["MAX_BATCH"] * (item_bytes + 5) + 5:
        raise ApiError(413, "batch_too_large", "the body is longer than "
                       f"{current_app.config['MAX_BATCH']} items can be")


def _read_bounded(read: Callable[[list], list[bytes | None]], keys: list) -> list[bytes | None]:
    """``read(keys)``, a slice at a time; 413 ``answer_too_large`` when the entries found pass
    ``MAX_ANSWER_BYTES`` (one entry alone always goes out)."""
    room = current_app.config["MAX_ANSWER_BYTES"]
    out: list[bytes | None] = []
    for i in range(0, len(keys), SLICE):
        for item in read(keys[i:i + SLICE]):
            room -= len(item) if item is not None else 1
            if room < 0 and out:
                raise ApiError(413, "answer_too_large", "the entries asked for pass "
                               f"{current_app.config['MAX_ANSWER_BYTES']} bytes: ask for fewer "
                               "at a time")
            out.append(item)
    return out


@bp.get("/health")
def health() -> Response:
    """Node id, ring epoch, record count, bytes, revision and uptime, as JSON."""
    view = ring_view()
    return jsonify({"node": current_app.config["NODE_ID"], "epoch": view.epoch if view else 0,
                    **store().stats(), "uptime": time.time() - current_app.config["STARTED"],
                    "location": current_app.config["LOCATION"], "pid": os.getpid(),
                    "mode": mode(),
                    **metrics.current().figures()})


@bp.get("/ring")
def get_ring() -> Response:
    """The ring this node stores (404 before it has one)."""
    view = ring_view()
    if view is None:
        raise ApiError(404, "no_ring", "this node has not joined a ring")
    return jsonify(view.to_json())


@bp.put("/ring")
def put_ring() -> tuple[Response, int]:
    """Replace the stored ring with a higher epoch, when the operator signed it (403
    otherwise); 409 with the held ring when it is not newer."""
    try:
        view = RingView.from_json(request.get_json(force=True, silent=False))
    except HTTPException:
        raise ApiError(400, "malformed_body", "the ring must be a JSON object") from None
    except ConfigError as exc:
        raise ApiError(400, "bad_ring", str(exc) or "malformed ring") from None
    check_ring(view)
    replaced, held = store().replace_ring(view)
    if not replaced:
        return jsonify({"error": "stale_epoch", "message": f"epoch {view.epoch} is not newer "
                        f"than {held.epoch}", "ring": held.to_json()}), 409
    return jsonify({"epoch": view.epoch}), 200


@bp.get("/record")
def get_record() -> Response:
    """One packed register by ``?key=``; 404 when this node holds none."""
    raw = store().get(check_key(request.args.get("key"), params()))
    if raw is None:
        raise ApiError(404, "not_found", "no record for this key")
    return msgpack_response(raw)


def write_signer(signed: bool | None = None) -> str | None:
    """Who signed this write, checked before its body is read (the signature covers it); None
    for an unsigned one. In development mode, ``"development"``: anyone on loopback.
    ``signed``: whether the request carries a signature (None: look at its headers; False
    needs no request, for :mod:`storage.fastpath`)."""
    if signed is None:
        signed = SIGNER_HEADER in request.headers
    if keys().development or signed:
        return require_authority()
    return None


def may_write(entries: list[kinds.Entry], signer: str | None) -> None:
    """Answer 403 unless ``signer`` may write ``entries``: entries of a kind that is not
    ``PUBLIC`` (a name's acceptor state) only from the operator or a member."""
    if signer is None and not all(kinds.kind_of(e.TAG).PUBLIC for e in entries):
        raise ApiError(403, "members_only", "acceptor state is written only by the operator's "
                       "migration or a member (docs/security.md)")


#: The fixed answers of a single write, encoded once (jsonify costs more than the commit's
#: bookkeeping): ``{"status": ...}`` and its HTTP status.
_PUT_ANSWERS = {status: (json.dumps({"status": status}).encode() + b"\n", code)
                for status, code in ((STORED, 201), (SAME, 200))}


def put_answer(status: str) -> Response | None:
    """The answer of a single write whose outcome is ``status`` (201 stored, 200 same), before
    the epoch stamp; None for one that needs its own answer (superseded)."""
    answer = _PUT_ANSWERS.get(status)
    if answer is None:
        return None
    return Response(answer[0], status=answer[1], mimetype="application/json")


@bp.put("/record")
def put_record() -> Response | tuple[Response, int]:
    """Write one entry under its kind's accept rule: 201 stored, 200 same, 409 when the node
    holds an entry the order puts above it (with what the kind tells about it)."""
    p = params()
    signer = write_signer()
    obj, raw = body(with_bytes=True)
    # raw: the entry is stored as the bytes it arrived in (they decode to it), not re-encoded,
    # as a batch write's entries are.
    entry = admit(obj, p, raw)
    eventlog.note_key(getattr(entry, "key", None))
    may_write([entry], signer)
    result = store().put_many([entry], p)[0]
    metrics.current().count_writes([result])
    answer = put_answer(result.status)
    if answer is not None:
        return answer
    told = kinds.kind_of(entry.TAG).describe(result.held, p)
    told["digest"] = told["digest"].hex()   # JSON: the digest as hex
    return jsonify({"error": "superseded", "message": "a version of higher priority is stored",
                    **told}), 409


@bp.post("/records/get")
def get_records() -> Response:
    """Batch read: a msgpack array of keys in, an array of packed registers (or nil) out."""
    p = params()
    _cap_body(p["max_key_bytes"])
    keys = [check_key(key, p) for key in batch(body(), "keys")]
    return msgpack_response(packed_array(_read_bounded(store().get_many, keys)))


@bp.post("/entries/get")
def get_entries() -> Response:
    """Batch read by entry reference (the LMDB keys the tree listings name, any kind): a
    msgpack array of references in, an array of packed entries (or nil) out (the operator or a
    member only: peers read what they sync)."""
    require_authority()
    _cap_body(store().env.max_key_size())   # a reference is an LMDB key
    refs = batch(body(), "references")
    if not all(is_data_key(ref) for ref in refs):
        raise ApiError(400, "bad_reference", "references must be entry keys from a tree listing")
    return msgpack_response(packed_array(_read_bounded(store().get_refs, refs)))


@bp.post("/records")
def put_records() -> Response:
    """Batch write of entries of any kind: every entry is admitted first (one bad entry refuses
    the whole batch), then all are merged in one transaction. Answers one ``{s, ...}`` per
    entry: its outcome and what its kind tells about the version held afterwards."""
    p = params()
    signer = write_signer()
    entries = [admit(obj, p, raw) for obj, raw in batch(body(items=True), "records")]
    may_write(entries, signer)
    results = store().put_many(entries, p)
    metrics.current().count_writes(results)
    out = [{"s": r.status, **kinds.kind_of(e.TAG).describe(r.held, p)}
           for e, r in zip(entries, results)]
    return msgpack_response(packb(out))


@bp.get("/range")
def scan_range() -> Response:
    """A page of packed entries with positions in ``[start, end)``, resumed ``after`` a cursor:
    at most ``limit`` entries, and no more than ``MAX_ANSWER_BYTES`` (but one entry). A dump of
    what the node holds: the operator or a member only."""
    require_authority()
    start, end = range_args()
    limit = int_arg("limit", 1, current_app.config["MAX_BATCH"], 1000)
    after_hex = request.args.get("after")
    try:
        after = bytes.fromhex(after_hex) if after_hex else None
    except ValueError:
        raise ApiError(400, "bad_argument", "after must be a hex cursor") from None
    entries, cursor = _scan_bounded(start, end, after, limit)
    # {"records": [...], "next": cursor}: the entries go out as stored, never re-encoded.
    return msgpack_response(msgpack.Packer().pack_map_header(2) + packb("records")
                            + packed_array(entries) + packb("next")
                            + packb(cursor.hex() if cursor else None))


def _scan_bounded(start: int, end: int, after: bytes | None, limit: int
                  ) -> tuple[list[bytes], bytes | None]:
    """:meth:`storage.store.Store.scan`, a slice at a time, ending the page early (with its
    cursor) before it passes ``MAX_ANSWER_BYTES``."""
    st, room = store(), current_app.config["MAX_ANSWER_BYTES"]
    entries: list[bytes] = []
    while True:
        page, cursor = st.scan(start, end, after, min(SLICE, limit - len(entries)))
        fit = 0
        for item in page:
            room -= len(item)
            if room < 0 and (entries or fit):
                break
            fit += 1
        if fit < len(page):  # the page ends inside this slice: its cursor is the fit-th key
            page, cursor = st.scan(start, end, after, fit) if fit else ([], after)
            return entries + page, cursor
        entries += page
        if cursor is None or len(entries) >= limit:
            return entries, cursor
        after = cursor


@bp.delete("/range")
def delete_range() -> Response:
    """Delete every entry with a position in ``[start, end)`` (the operator only)."""
    require_authority(members=False)
    start, end = range_args()
    return jsonify({"deleted": store().delete_range(start, end)})
