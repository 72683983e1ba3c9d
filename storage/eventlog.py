"""The node's recent events, for its page: writes, syncs, membership changes and errors.

As nasci4's page had at its bottom. Kept in a small file in the node's data directory,
``DATA/events.log``, one JSON object a line, so every gunicorn worker appends to the same log
(an in-memory buffer per worker would show each page load a different worker's part). The log
is bounded: past ``MAX_BYTES`` the file becomes ``events.log.1`` (replacing the one before), so
at most ``2 · MAX_BYTES`` are kept on disk. It is a view for people, not a record: an event
lost in a crash or in two workers rotating at once is of no consequence, and nothing is synced.

Events are noted from the request hooks of :mod:`storage.web`: every request is classified by
its route and answer (:func:`classify`), and only the four kinds are kept; reads are not.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import msgpack
from flask import Request, Response

FILE = "events.log"
#: Size past which the log file is rotated (bytes): 256 KiB, ~1,500 events.
MAX_BYTES = 256 << 10
#: The most events :func:`recent` returns, how much of each file it reads at most (bytes), and
#: how much it reads per event wanted (a line is ~120 bytes, MAX_TEXT characters at most).
MAX_EVENTS = 500
READ_BYTES = 256 << 10
LINE_BYTES = 512
#: Longest text kept for one event (characters).
MAX_TEXT = 300
KINDS = ("write", "sync", "membership", "error")


def append(data_dir: str, kind: str, text: str, max_bytes: int = MAX_BYTES) -> None:
    """Add one event (``kind`` is one of :data:`KINDS`) to the log in ``data_dir``."""
    line = json.dumps({"t": round(time.time(), 3), "kind": kind, "text": text[:MAX_TEXT],
                       "pid": os.getpid()}) + "\n"
    path = os.path.join(data_dir, FILE)
    # O_APPEND: lines of several workers never overwrite each other.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > max_bytes:
        try:
            os.replace(path, path + ".1")
        except FileNotFoundError:   # another worker rotated it first
            pass


def recent(data_dir: str, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` events (at most :data:`MAX_EVENTS`), newest first."""
    limit = max(0, min(limit, MAX_EVENTS))
    path = os.path.join(data_dir, FILE)
    events: list[dict[str, Any]] = []
    for name in (path, path + ".1"):
        if len(events) >= limit:
            break
        events += _tail(name, limit - len(events))
    return events


def _tail(path: str, count: int) -> list[dict[str, Any]]:
    """The last ``count`` events of ``path``, newest first, read from its end only (about
    LINE_BYTES an event, READ_BYTES at most)."""
    want = min(READ_BYTES, count * LINE_BYTES)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - want)
            f.seek(start)
            chunk = f.read(want)
    except FileNotFoundError:
        return []
    lines = chunk.split(b"\n")
    if start > 0:
        lines = lines[1:]   # the first line was cut by the seek
    out: list[dict[str, Any]] = []
    for line in reversed(lines):
        if len(out) >= count:
            break
        try:
            event = json.loads(line)
        except ValueError:   # an empty line, or one a crash cut short
            continue
        if isinstance(event, dict) and event.get("kind") in KINDS:
            out.append(event)
    return out


def record_key(data: bytes) -> str | None:
    """The key of a packed record (its ``k`` field), read from the first bytes only; None
    when it cannot be told cheaply."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=4096)
    unpacker.feed(data[:4096])
    try:
        for _ in range(min(unpacker.read_map_header(), 8)):
            field = unpacker.unpack()
            if field == "k":
                key = unpacker.unpack()
                return key if isinstance(key, str) else None
            unpacker.skip()
    except (ValueError, msgpack.OutOfData, msgpack.ExtraData, TypeError,
            msgpack.FormatError, msgpack.StackError):
        return None
    return None


def _json(response: Response) -> dict[str, Any]:
    if response.is_json and (response.content_length or 0) <= 4096:
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            return body
    return {}


def classify(request: Request, response: Response, key: str | None) -> tuple[str, str] | None:
    """The event a request makes, as ``(kind, text)``, or None when it is not one worth
    keeping. ``key`` is the written key when the hook could tell it."""
    method, path, status = request.method, request.path, response.status_code
    named = f"{key!r} " if key is not None else "a record "
    if status >= 500 or (400 <= status < 500 and status not in (404, 409)):
        message = _json(response).get("message") or response.status
        return "error", f"{method} {path} answered {status}: {message}"
    if path == "/v1/record" and method == "PUT":
        outcome = {201: "stored", 200: "already held", 409: "refused: a higher version is held"}
        return "write", f"{named}{outcome.get(status, status)}"
    if path == "/v1/records" and method == "POST":
        moved = request.headers.get("X-SDHT-Migration") == "1"
        count = _array_length(response.get_data()) if not response.direct_passthrough else None
        what = f"{count} entries" if count is not None else "entries"
        return ("membership", f"received {what} moved by a join or remove") if moved \
            else ("write", f"batch write of {what}")
    if path.startswith("/kv-store/keys/") and method in ("PUT", "DELETE") and status < 300:
        verb = "set" if method == "PUT" else "delete"
        return "write", f"{verb} {path[len('/kv-store/keys/'):]!r} through this node's gateway"
    if path == "/v1/ring" and method == "PUT" and status == 200:
        return "membership", f"new ring, epoch {_json(response).get('epoch')}"
    if path == "/v1/range" and method == "DELETE" and status == 200:
        return "membership", f"dropped a range it no longer replicates " \
                             f"({_json(response).get('deleted')} records)"
    if path == "/v1/sync/pass" and method == "POST" and status == 200:
        sent = request.get_json(silent=True) or {}
        return "sync", (f"anti-entropy pass: {sent.get('rounds', 0)} rounds, "
                        f"{sent.get('differences', 0)} differences")
    return None


def _array_length(data: bytes) -> int | None:
    unpacker = msgpack.Unpacker()
    unpacker.feed(data[:16])
    try:
        return unpacker.read_array_header()
    except (ValueError, msgpack.OutOfData, msgpack.FormatError, msgpack.StackError):
        return None
