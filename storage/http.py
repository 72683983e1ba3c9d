"""The node's plumbing: its store per process, its error type and renderer, request parsing.

Every route of the node uses these; :mod:`storage.app` only assembles them. One renderer answers
every error as ``{"error": code, "message": ...}`` JSON with a 4xx (or 5xx) status: the node's
own :class:`ApiError`, Flask's HTTP errors, input nested too deep, and the library's errors when
a route runs the ring library (the page, later the gateway).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Mapping

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from sdht import kinds, params as cluster_params
from sdht.kinds.common import check_key as _check_key
from sdht.errors import (InvalidRecord, QuorumError, RingError, SDHTError, TransportError,
                         ValueTooLarge, WriteConflict)
from sdht.ring import RingView
from sdht.wire import EPOCH_HEADER, MSGPACK, NODE_HEADER, RING_SIZE, unpack_items, unpackb

from .commits import Busy
from .store import Store

_OPEN_LOCK = threading.Lock()


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": ...}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def init_app(app: Flask) -> None:
    """Install the one error renderer and the epoch stamp on every answer of ``app``."""
    app.register_error_handler(ApiError, _render)
    app.register_error_handler(HTTPException, _render)
    app.register_error_handler(SDHTError, _render)
    # Only input nested past Python's recursion limit (JSON bodies, a JSON value to store)
    # recurses that deep here: it is the client's error, not the node's.
    app.register_error_handler(RecursionError, _render)
    app.register_error_handler(Busy, _render)
    app.after_request(_stamp_epoch)


def as_api_error(exc: Exception) -> ApiError:
    """Return the :class:`ApiError` that answers ``exc``."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        return ApiError(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"),
                        exc.description or "")
    if isinstance(exc, RecursionError):
        return ApiError(400, "too_deep", "the input nests too deeply")
    if isinstance(exc, Busy):   # no write transaction in time (storage/commits.py)
        return ApiError(503, "busy", str(exc))
    if isinstance(exc, ValueTooLarge):
        return ApiError(413, "too_large", str(exc))
    if isinstance(exc, InvalidRecord):
        return ApiError(400, "invalid", str(exc))
    if isinstance(exc, WriteConflict):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, (RingError, QuorumError, TransportError)):
        return ApiError(503, "unavailable", str(exc))
    return ApiError(502, "ring_error", str(exc))


def _render(exc: Exception) -> tuple[Response, int]:
    err = as_api_error(exc)
    return jsonify({"error": err.code, "message": err.message, **err.extra}), err.status


# -- the store and the ring, per process ----------------------------------------------------------

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


def params(view: RingView | None = None) -> dict[str, Any]:
    """Return the cluster parameters in force: the ring's (``view``, else the stored one's),
    else this node's configured defaults."""
    view = view if view is not None else ring_view()
    if view is not None:
        return view.params
    return {**cluster_params.DEFAULTS, **current_app.config["PARAMS"]}


def stamp_headers(view: RingView | None = None) -> list[tuple[str, str]]:
    """The headers every answer of the node carries: the epoch of its ring (``view``, when the
    caller has just read it; else the stored one), and its id."""
    if view is None:
        try:
            view = ring_view()
        except Exception:  # a broken store must not turn every answer into a 500
            view = None
    out = [(EPOCH_HEADER, str(view.epoch if view else 0))]
    if current_app.config["NODE_ID"]:
        out.append((NODE_HEADER, current_app.config["NODE_ID"]))
    return out


def _stamp_epoch(response: Response) -> Response:
    for name, value in stamp_headers():
        response.headers[name] = value
    return response


# -- requests and answers -------------------------------------------------------------------------

def msgpack_response(body: bytes, status: int = 200) -> Response:
    """Answer ``body`` (already msgpack) with the msgpack content type."""
    return Response(body, status=status, mimetype=MSGPACK)


def body(items: bool = False, with_bytes: bool = False) -> Any:
    """Decode the request body as strict msgpack (with ``items``: an array, each item with its
    own bytes, see :func:`sdht.wire.unpack_items`; with ``with_bytes``: ``(decoded, body)``).

    :raises ApiError: 400 for an empty or malformed body.
    """
    data = request.get_data(cache=False)
    if not data:
        raise ApiError(400, "empty_body", "the request needs a msgpack body")
    try:
        decoded = unpack_items(data) if items else unpackb(data)
    except InvalidRecord as exc:
        raise ApiError(400, "malformed_body", str(exc)) from None
    return (decoded, data) if with_bytes else decoded


def batch(obj: Any, what: str) -> list:
    """Check that ``obj`` is a list within the node's ``MAX_BATCH``; return it.

    :raises ApiError: 400 when it is not a list, 413 when it is too long.
    """
    limit = current_app.config["MAX_BATCH"]
    if not isinstance(obj, list):
        raise ApiError(400, "bad_batch", f"the body must be a msgpack array of {what}")
    if len(obj) > limit:
        raise ApiError(413, "batch_too_large", f"{len(obj)} {what}; the limit is {limit}")
    return obj


def int_arg(name: str, low: int, high: int, default: int | None = None) -> int:
    """Return query argument ``name`` as an integer in ``[low, high]`` (or ``default``).

    :raises ApiError: 400 when it is missing (without a default) or not such an integer.
    """
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


def range_args() -> tuple[int, int]:
    """Return the ``start`` and ``end`` query arguments: a non-empty ring range.

    :raises ApiError: 400 when they are missing, out of range or inverted.
    """
    start = int_arg("start", 0, RING_SIZE - 1)
    end = int_arg("end", 1, RING_SIZE)
    if start >= end:
        raise ApiError(400, "inverted_range", f"start ({start}) must be below end ({end})")
    return start, end


def admit(obj: Any, p: Mapping[str, Any], raw: bytes | None = None) -> kinds.Entry:
    """Admit one decoded entry through its kind (:func:`sdht.kinds.admit`), or answer 4xx."""
    try:
        return kinds.admit(obj, p, raw)
    except ValueTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except InvalidRecord as exc:
        raise ApiError(400, "invalid_record", str(exc)) from None


def check_key(key: Any, p: Mapping[str, Any]) -> str:
    """Check a key a request names; return it, or answer 400 (413 when too long)."""
    try:
        _check_key(key, p)
    except ValueTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except InvalidRecord as exc:
        raise ApiError(400, "bad_key", str(exc)) from None
    return key
