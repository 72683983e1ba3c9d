"""The node's read of a sequence: every op it holds under one key, in one range read.

``GET /v1/sequence?key=K`` (``&after=HEX`` to resume, ``&limit=N``) answers the msgpack map
``{"ops": [op entry, ...], "next": cursor or nil}``; with ``&summary=1``, ``{"count": N,
"summary": DIGEST}`` of the op ids held (:func:`sdht.kinds.sequence.summary`), a walk over LMDB
keys alone, so a reader that knows the same ops reads nothing more; with ``&ids=1``, ``{"ids":
the op ids held, concatenated (32 bytes each), "next": cursor or nil}``. ``POST /v1/sequence/get``
``{"k": KEY, "i": [op id, ...]}`` answers those ops (nil for each not held), so a reader that
knows most ops reads only the others. A sequence's ops share the
LMDB key prefix ``position || tag || key length || key`` (storage/layout.py) and differ only in
the op id after it, so they are one cursor walk; the entries go out as stored, never decoded or
re-encoded. A page ends at ``limit`` ops (at most ``MAX_BATCH``) or ``MAX_ANSWER_BYTES``
(but one op), and its cursor is the last op id sent. Data reads need no key, as ``/v1/record``.
Ops are written through the ordinary ``/v1/records`` batch route, under the kind's admission.
"""
from __future__ import annotations

import hashlib

import msgpack
from flask import Blueprint, Response, current_app, request

from sdht.kinds import sequence
from sdht.wire import packb, packed_array

from .http import ApiError, batch, body, check_key, int_arg, msgpack_response, params, store
from .layout import data_key, packed

bp = Blueprint("sequence", __name__, url_prefix="/v1")
#: The node's route, as the library calls it (sdht/sequence_replicas.py).
ROUTE = "/sequence"
#: Ops read from the store at a time by ``POST /v1/sequence/get``.
SLICE = 64


def ops_of(key: str, after: bytes | None, limit: int, room: int
           ) -> tuple[list[bytes], bytes | None]:
    """The packed ops this node holds for the sequence ``key``, in op id order, after the op
    id ``after``: at most ``limit`` of them and ``room`` bytes (but one). Returns them and the
    cursor to resume from (None when there are no more)."""
    prefix = data_key(sequence.TAG, key)
    first = prefix + after + b"\x00" if after is not None else prefix
    out: list[bytes] = []
    last: bytes | None = None
    st = store()
    with st.env.begin(db=st.data) as txn:
        cursor = txn.cursor()
        if not cursor.set_range(first):
            return out, None
        for lkey, raw in cursor:
            if not lkey.startswith(prefix):   # the prefix holds the key's length: no other key
                return out, None
            item = packed(lkey, raw)
            if len(out) == limit or (out and room - len(item) < 0):
                return out, last
            room -= len(item)
            out.append(item)
            last = bytes(lkey[len(prefix):])
    return out, None


def ids_of(key: str, after: bytes | None, limit: int) -> tuple[bytes, bytes | None]:
    """The op ids this node holds for ``key`` after ``after``, concatenated, at most ``limit``
    of them, and the cursor to resume from (None when there are no more)."""
    prefix = data_key(sequence.TAG, key)
    out: list[bytes] = []
    st = store()
    with st.env.begin(db=st.data) as txn:
        cursor = txn.cursor()
        if cursor.set_range(prefix + after + b"\x00" if after is not None else prefix):
            for lkey in cursor.iternext(keys=True, values=False):
                if not lkey.startswith(prefix):
                    break
                if len(out) == limit:
                    return b"".join(out), out[-1]
                out.append(bytes(lkey[len(prefix):]))
    return b"".join(out), None


def summary_of(key: str) -> tuple[int, bytes]:
    """How many ops this node holds for ``key``, and the summary of their ids."""
    prefix = data_key(sequence.TAG, key)
    h = hashlib.blake2b(digest_size=32, person=sequence.SUMMARY_PERSON)
    count = 0
    st = store()
    with st.env.begin(db=st.data) as txn:
        cursor = txn.cursor()
        if cursor.set_range(prefix):
            for lkey in cursor.iternext(keys=True, values=False):
                if not lkey.startswith(prefix):
                    break
                h.update(lkey[len(prefix):])   # LMDB order: the ids sorted
                count += 1
    return count, h.digest()


@bp.get(ROUTE)
def get_sequence() -> Response:
    """A page of the ops held for ``?key=``, resumed ``after`` an op id (hex)."""
    p = params()
    key = check_key(request.args.get("key"), p)
    if request.args.get("summary") == "1":
        count, digest = summary_of(key)
        return msgpack_response(packb({"count": count, "summary": digest}))
    limit = int_arg("limit", 1, current_app.config["MAX_BATCH"], current_app.config["MAX_BATCH"])
    after = _after()
    if request.args.get("ids") == "1":
        ids, cursor = ids_of(key, after, limit)
        return msgpack_response(packb({"ids": ids, "next": cursor.hex() if cursor else None}))
    ops, cursor = ops_of(key, after, limit, current_app.config["MAX_ANSWER_BYTES"])
    return msgpack_response(msgpack.Packer().pack_map_header(2) + packb("ops")
                            + packed_array(ops) + packb("next")
                            + packb(cursor.hex() if cursor else None))


def _after() -> bytes | None:
    after_hex = request.args.get("after")
    try:
        after = bytes.fromhex(after_hex) if after_hex else None
    except ValueError:
        after = b""
    if after is not None and len(after) != sequence.ID_BYTES:
        raise ApiError(400, "bad_argument", f"after must be an op id: {sequence.ID_BYTES} "
                       "bytes in hex")
    return after


@bp.post(ROUTE + "/get")
def get_ops() -> Response:
    """The ops held for ``k`` among the ids ``i`` (nil for each not held); 413
    ``answer_too_large`` past ``MAX_ANSWER_BYTES`` (ask for fewer)."""
    obj = body()
    if not isinstance(obj, dict) or set(obj) != {"k", "i"}:
        raise ApiError(400, "bad_request", 'the body is {"k": key, "i": [op id, ...]}')
    key = check_key(obj["k"], params())
    ids = batch(obj["i"], "op ids")
    if not all(type(i) is bytes and len(i) == sequence.ID_BYTES for i in ids):
        raise ApiError(400, "bad_request", f"op ids are {sequence.ID_BYTES} bytes")
    prefix = data_key(sequence.TAG, key)
    room, found = current_app.config["MAX_ANSWER_BYTES"], []
    for start in range(0, len(ids), SLICE):   # a slice at a time: never more than the limit held
        for op in store().get_refs([prefix + i for i in ids[start:start + SLICE]]):
            room -= len(op) if op is not None else 1
            if room < 0 and found:
                raise ApiError(413, "answer_too_large", "the ops asked for pass "
                               f"{current_app.config['MAX_ANSWER_BYTES']} bytes: ask for fewer")
            found.append(op)
    return msgpack_response(packed_array(found))
