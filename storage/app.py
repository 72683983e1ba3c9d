"""The storage node: a Flask application that validates, merges, stores and serves records.

``create_app(config)`` builds the app (settings: :mod:`storage.config`). Records travel as msgpack;
errors, health and the ring as JSON. Every response carries the node's ring epoch in the
``X-SDHT-Epoch`` header so that clients notice a newer ring (DESIGN: "Storage node").
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

import msgpack
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from sdht.errors import ConfigError, InvalidRecord, ValueTooLarge
from sdht.kinds.register import (DEFAULT_PARAMS, check_key, check_time, check_work, from_wire,
                         unpack_items, unpackb)
from sdht.ring import RING_SIZE, RingView

from . import metrics, web
from .auth import require_cluster_key
from .config import load_config
from .store import STORED, SAME, Store

EPOCH_HEADER = "X-SDHT-Epoch"
NODE_HEADER = "X-SDHT-Node"
MSGPACK = "application/msgpack"

bp = Blueprint("v1", __name__, url_prefix="/v1")
_OPEN_LOCK = threading.Lock()


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": ...}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build a storage node application.

    :param config: settings that override ``SDHT_*`` environment variables and defaults.
    :raises ConfigError: when the settings are invalid or the data directory holds another
        sdht data layout.
    """
    app = Flask(__name__)
    settings = load_config(config)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_BYTES"]
    app.config["STARTED"] = time.time()
    # Fail at start, not on the first request, when the data dir is unusable (e.g. another
    # layout); the environment is closed again, as LMDB must not cross a fork.
    Store(settings["DATA_DIR"], settings["MAP_SIZE"], settings["SYNC"]).close()
    app.extensions["sdht.store"] = None  # opened lazily in the serving process (after fork)
    app.register_blueprint(bp)
    from .sync_routes import bp as sync_bp  # imported here: it builds on this module's helpers
    app.register_blueprint(sync_bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    # Only input nested past Python's recursion limit (JSON bodies, a JSON value to store)
    # recurses that deep here: it is the client's error, not the node's.
    app.register_error_handler(RecursionError, _too_deep)
    app.after_request(_stamp_epoch)
    metrics.init_app(app)  # request figures and /metrics (storage/metrics.py)
    web.init_app(app)      # the page at / and its /v1/ui routes (storage/web.py)
    return app


# -- plumbing -------------------------------------------------------------------------------------

def store() -> Store:
    """Return this process's store, opening it on first use.

    LMDB environments must not cross a fork, so the store is opened by the process that serves
    (each gunicorn worker), and reopened if the app object finds itself in a new process.
    """
    held = current_app.extensions["sdht.store"]
    if held is None or held[0] != os.getpid():
        with _OPEN_LOCK:  # two threads' first requests must not open the environment twice
            held = current_app.extensions["sdht.store"]
            if held is None or held[0] != os.getpid():
                cfg = current_app.config
                held = (os.getpid(), Store(cfg["DATA_DIR"], cfg["MAP_SIZE"], cfg["SYNC"]))
                current_app.extensions["sdht.store"] = held
    return held[1]


def ring_view() -> RingView | None:
    """Return the ring this node stores, or None before it has joined one."""
    return store().ring()


def params() -> dict[str, Any]:
    """Return the cluster parameters in force: the stored ring's, else this node's defaults."""
    view = ring_view()
    if view is not None:
        return view.params
    return {**DEFAULT_PARAMS, **current_app.config["PARAMS"]}


def _stamp_epoch(response: Response) -> Response:
    try:
        view = ring_view()
    except Exception:  # a broken store must not turn every answer into a 500
        view = None
    response.headers[EPOCH_HEADER] = str(view.epoch if view else 0)
    if current_app.config["NODE_ID"]:
        response.headers[NODE_HEADER] = current_app.config["NODE_ID"]
    return response


def _api_error(exc: ApiError) -> tuple[Response, int]:
    return jsonify({"error": exc.code, "message": exc.message, **exc.extra}), exc.status


def _too_deep(exc: RecursionError) -> tuple[Response, int]:
    return jsonify({"error": "too_deep", "message": "the input nests too deeply"}), 400


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    code = (exc.name or "error").lower().replace(" ", "_")
    return jsonify({"error": code, "message": exc.description}), exc.code or 500


def _msgpack(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, mimetype=MSGPACK)


def _body(items: bool = False) -> Any:
    """Decode the request body as strict msgpack (with ``items``: an array, each item with
    its own bytes, see :func:`sdht.kinds.register.unpack_items`)."""
    data = request.get_data(cache=False)
    if not data:
        raise ApiError(400, "empty_body", "the request needs a msgpack body")
    try:
        return unpack_items(data) if items else unpackb(data)
    except InvalidRecord as exc:
        raise ApiError(400, "malformed_body", str(exc)) from None


def _int_arg(name: str, low: int, high: int, default: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None:
        if default is None:
            raise ApiError(400, "missing_argument", f"query argument {name!r} is required")
        return default
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses; the length
    # bound keeps int() away from its 4300-digit limit (both were 500s).
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20) or not low <= int(raw) <= high:
        raise ApiError(400, "bad_argument", f"{name} must be an integer in [{low}, {high}]")
    return int(raw)


def _range_args() -> tuple[int, int]:
    start = _int_arg("start", 0, RING_SIZE - 1)
    end = _int_arg("end", 1, RING_SIZE)
    if start >= end:
        raise ApiError(400, "inverted_range", f"start ({start}) must be below end ({end})")
    return start, end


def _validate(obj: Any, p: Mapping[str, Any]):
    """Turn a decoded wire map into a checked record, or raise a 4xx ApiError."""
    try:
        rec = from_wire(obj, p)
        check_work(rec, p["min_work"])
        check_time(rec, p["max_skew"])
    except ValueTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except InvalidRecord as exc:
        raise ApiError(400, "invalid_record", str(exc)) from None
    return rec


def _batch(obj: Any, what: str) -> list:
    limit = current_app.config["MAX_BATCH"]
    if not isinstance(obj, list):
        raise ApiError(400, "bad_batch", f"the body must be a msgpack array of {what}")
    if len(obj) > limit:
        raise ApiError(413, "batch_too_large", f"{len(obj)} {what}; the limit is {limit}")
    return obj


def _packed_array(items: list[bytes | None]) -> bytes:
    """Encode already-packed records as a msgpack array without decoding them again."""
    head = msgpack.Packer().pack_array_header(len(items))
    return head + b"".join(b"\xc0" if item is None else item for item in items)


# -- routes ---------------------------------------------------------------------------------------

@bp.get("/health")
def health() -> Response:
    """Node id, ring epoch, record count, bytes, revision and uptime, as JSON."""
    view = ring_view()
    return jsonify({"node": current_app.config["NODE_ID"], "epoch": view.epoch if view else 0,
                    **store().stats(), "uptime": time.time() - current_app.config["STARTED"],
                    "location": current_app.config["LOCATION"], "pid": os.getpid(),
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
    """Replace the stored ring with a higher epoch (admin); 409 with the held ring otherwise."""
    require_cluster_key()
    try:
        view = RingView.from_json(request.get_json(force=True, silent=False))
    except HTTPException:
        raise ApiError(400, "malformed_body", "the ring must be a JSON object") from None
    except ConfigError as exc:
        raise ApiError(400, "bad_ring", str(exc) or "malformed ring") from None
    replaced, held = store().replace_ring(view)
    if not replaced:
        return jsonify({"error": "stale_epoch", "message": f"epoch {view.epoch} is not newer "
                        f"than {held.epoch}", "ring": held.to_json()}), 409
    return jsonify({"epoch": view.epoch}), 200


@bp.get("/record")
def get_record() -> Response:
    """One packed record by ``?key=``; 404 when this node holds none."""
    key = request.args.get("key")
    try:
        check_key(key, params())
    except ValueTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except InvalidRecord as exc:
        raise ApiError(400, "bad_key", str(exc)) from None
    raw = store().get(key)
    if raw is None:
        raise ApiError(404, "not_found", "no record for this key")
    return _msgpack(raw)


@bp.put("/record")
def put_record() -> tuple[Response, int]:
    """Write one record under the accept rule: 201 stored, 200 same, 409 a higher score held."""
    p = params()
    rec = _validate(_body(), p)
    result = store().put_many([rec], p)[0]
    metrics.current().count_writes([result])
    if result.status == STORED:
        return jsonify({"status": STORED}), 201
    if result.status == SAME:
        return jsonify({"status": SAME}), 200
    held = result.held
    return jsonify({"error": "superseded", "message": "a version of higher priority is stored",
                    "score": held.score(p["decay"]), "digest": held.digest.hex(),
                    "t": held.t, "w": held.w}), 409


@bp.post("/records/get")
def get_records() -> Response:
    """Batch read: a msgpack array of keys in, an array of packed records (or nil) out."""
    keys = _batch(_body(), "keys")
    p = params()
    for key in keys:
        try:
            check_key(key, p)
        except ValueTooLarge as exc:  # as GET /v1/record answers it
            raise ApiError(413, "too_large", str(exc)) from None
        except InvalidRecord as exc:
            raise ApiError(400, "bad_key", str(exc)) from None
    return _msgpack(_packed_array(store().get_many(keys)))


@bp.post("/records")
def put_records() -> Response:
    """Batch write: every record is checked first (one bad record refuses the whole batch),
    then all are merged in one transaction. Answers one ``{s, score, digest}`` per record."""
    p = params()
    records = []
    for obj, raw in _batch(_body(items=True), "records"):
        rec = _validate(obj, p)
        rec._packed = raw   # stored as it came: it decodes to this very record
        records.append(rec)
    results = store().put_many(records, p)
    metrics.current().count_writes(results)
    out = [{"s": r.status, "score": r.held.score(p["decay"]), "digest": r.held.digest}
           for r in results]
    return _msgpack(msgpack.packb(out, use_bin_type=True))


@bp.get("/range")
def scan_range() -> Response:
    """A page of packed records with positions in ``[start, end)``, resumed ``after`` a cursor."""
    start, end = _range_args()
    limit = _int_arg("limit", 1, current_app.config["MAX_BATCH"], 1000)
    after_hex = request.args.get("after")
    try:
        after = bytes.fromhex(after_hex) if after_hex else None
    except ValueError:
        raise ApiError(400, "bad_argument", "after must be a hex cursor") from None
    records, cursor = store().scan(start, end, after, limit)
    body = (msgpack.Packer().pack_map_header(2) + msgpack.packb("records")
            + _packed_array(records) + msgpack.packb("next")
            + msgpack.packb(cursor.hex() if cursor else None))
    return _msgpack(body)


@bp.delete("/range")
def delete_range() -> Response:
    """Delete every record with a position in ``[start, end)`` (admin)."""
    require_cluster_key()
    start, end = _range_args()
    return jsonify({"deleted": store().delete_range(start, end)})
