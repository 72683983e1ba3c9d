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

import contextlib
import json
import os
import threading
import time
from typing import Any

import msgpack
from flask import Request, Response, g

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


#: Log files a process keeps open at once (one per data directory it serves; in-process
#: clusters of tests hold several).
MAX_OPEN = 8
_open: dict[str, int] = {}      # path -> this process's O_APPEND descriptor of it
_open_lock = threading.Lock()   # a thread must not write to a descriptor another one closes


def append(data_dir: str, kind: str, text: str, max_bytes: int = MAX_BYTES) -> None:
    """Add one event (``kind`` is one of :data:`KINDS`) to the log in ``data_dir``."""
    line = json.dumps({"t": round(time.time(), 3), "kind": kind, "text": text[:MAX_TEXT],
                       "pid": os.getpid()}) + "\n"
    path = os.path.join(data_dir, FILE)
    with _open_lock:
        fd = _open.get(path)
        if fd is None:
            fd = _open_fd(path)
        # O_APPEND: lines of several workers never overwrite each other. The descriptor stays
        # open (a write and an fstat an event, not four calls): it is closed once its file is
        # full, or was rotated or removed under it, and the next event opens the file anew.
        os.write(fd, line.encode())
        st = os.fstat(fd)
        if st.st_size <= max_bytes and st.st_nlink:
            return
        os.close(_open.pop(path))
    with contextlib.suppress(FileNotFoundError):   # gone: another worker rotated it first
        if st.st_nlink and os.stat(path).st_ino == st.st_ino:
            os.replace(path, path + ".1")


def _open_fd(path: str) -> int:
    if len(_open) >= MAX_OPEN:
        os.close(_open.pop(next(iter(_open))))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    _open[path] = fd
    return fd


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


def note_key(key: str | None) -> None:
    """Name the key the current request writes, for its event (the route that decoded the
    entry knows it; a request refused before that is logged as an error, without its key)."""
    g.sdht_written_key = key if isinstance(key, str) else None


def noted_key() -> str | None:
    """The key :func:`note_key` named in the current request, or None."""
    return g.get("sdht_written_key")


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
    if status >= 500 or (400 <= status < 500 and status not in (404, 409)):
        message = _json(response).get("message") or response.status
        return "error", f"{method} {path} answered {status}: {message}"
    if path == "/v1/record" and method == "PUT":
        return single_write(key, status)
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


def single_write(key: Any, status: int) -> tuple[str, str]:
    """The event of a ``PUT /v1/record`` of ``key`` (not a str: not known) answered
    ``status`` (not an error), whether Flask or :mod:`storage.fastpath` answered it."""
    named = f"{key!r} " if isinstance(key, str) else "a record "
    outcome = {201: "stored", 200: "already held", 409: "refused: a higher version is held"}
    return "write", f"{named}{outcome.get(status, status)}"


def keep(data_dir: str, event: tuple[str, str] | None) -> None:
    """Append ``event`` (from :func:`classify`), if any, to the log in ``data_dir``."""
    if event is None:
        return
    try:
        append(data_dir, *event)
    except OSError:   # the log is for people; a full disk must not fail the request
        pass


def _array_length(data: bytes) -> int | None:
    unpacker = msgpack.Unpacker()
    unpacker.feed(data[:16])
    try:
        return unpacker.read_array_header()
    except (ValueError, msgpack.OutOfData, msgpack.FormatError, msgpack.StackError):
        return None
