"""Slow and heavy clients: the limits that keep them from stalling a storage node.

docs/security.md ("Slow and heavy clients") tells the whole of it. Two parts live here:

* :class:`Incoming`, a request as its bytes arrive, for the event loop of the node's gunicorn
  worker (:class:`storage.worker.Worker`), which hands a connection to a thread only once
  its request is whole. It says when that is, and refuses (:class:`Refused`): a head over
  :data:`MAX_HEADER_BYTES` (431), a body over ``MAX_BODY_BYTES`` (413; a chunked one as soon as
  its chunks pass it, framing counted), framing it cannot follow (400). The worker adds 408 for
  a client past its deadline and 503 when its buffers would pass :data:`BUFFER_BYTES`.
* :func:`init_app`, a WSGI middleware that reads each request body before the route runs, with
  a deadline on every read (408) and the size cap (413), and sends answers in slices of
  :data:`SLICE_BYTES`, each written under the same deadline. Behind the worker the body is
  already in memory; the middleware bounds bodies under any other server or worker.

Deadlines, with ``READ_TIMEOUT`` as T: a request's head must be in within T; a body may pause
at most T and must average :data:`MIN_RATE` bytes a second after its first T seconds.
"""
from __future__ import annotations

import contextlib
import io
import json
import socket
import string
import time
from typing import Any, Iterable, Iterator

from flask import Flask, request

from .http import ApiError

#: Largest request head (request line and headers) a worker buffers.
MAX_HEADER_BYTES = 64 << 10
#: Bytes a worker may hold, all connections together, in requests still arriving.
BUFFER_BYTES = 256 << 20
#: Bytes a second a body must average once its first ``READ_TIMEOUT`` seconds are over.
MIN_RATE = 64 << 10
#: Answers go out in slices of at most this many bytes, each within ``READ_TIMEOUT``.
SLICE_BYTES = 256 << 10
#: Seconds a refused connection is drained after its error answer, before it is closed.
LINGER = 2.0
#: Set on gunicorn's request body object when the connection must close after the answer.
CLOSE = "sdht_close"

#: Bytes read from a client at a time.
RECV_BYTES = 256 << 10
_HEX = frozenset(string.hexdigits.encode())
_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


# -- the middleware -------------------------------------------------------------------------------

def init_app(app: Flask) -> None:
    """Read every request body of ``app`` under its limits first, and slice its answers."""
    app.wsgi_app = _Limits(app.wsgi_app, app.config)  # type: ignore[method-assign]
    app.before_request(_answer_refusal)


def _answer_refusal() -> None:
    refused = request.environ.get("sdht.refused")
    if refused:
        raise ApiError(*refused)


class _Limits:
    def __init__(self, app: Any, config: Any) -> None:
        self.app, self.config = app, config

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        timeout = self.config["READ_TIMEOUT"]
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(timeout)  # every read and write of this request, answer included
        refused = read_body(environ, self.config["MAX_BODY_BYTES"], timeout)
        if refused:
            environ["sdht.refused"] = refused  # answered by the app, as every error is
        answer = self.app(environ, start_response)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and isinstance(answer, wrapper):
            return answer  # a file: gunicorn sends it with sendfile, under the socket timeout
        return _Sliced(answer)


def read_body(environ: dict, limit: int, timeout: float) -> tuple[int, str, str] | None:
    """Read the request body into memory, which becomes ``wsgi.input``.

    :returns: None, or the refusal ``(status, code, message)``: the body is over ``limit``
        bytes, or the client went silent for ``timeout`` seconds or sent it slower than
        :data:`MIN_RATE`. A refused connection is closed after the answer.
    """
    stream = environ.get("wsgi.input")
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    length = environ.get("CONTENT_LENGTH") or "0"
    length = int(length) if length.isdigit() else 0
    if stream is None or not (length or chunked):
        return None
    refused = None
    want = limit + 1 if chunked else length
    parts, got, began = [], 0, time.monotonic()
    if not chunked and length > limit:
        refused, want = (413, "body_too_large", f"the body is over {limit} bytes"), 0
    try:
        while got < want:
            piece = stream.read(min(RECV_BYTES, want - got))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
            if time.monotonic() > began + timeout + got / MIN_RATE:
                raise TimeoutError
    except (TimeoutError, socket.timeout):
        refused = (408, "request_timeout", f"the body did not arrive in time ({got} bytes)")
    if got > limit:
        refused = (413, "body_too_large", f"the body is over {limit} bytes")
    if refused:
        parts = []
        with contextlib.suppress(AttributeError):
            setattr(stream, CLOSE, True)  # the rest of the body is unread: close, don't reuse
    body = b"".join(parts)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return refused


class _Sliced:
    """An answer's iterable cut into slices of at most :data:`SLICE_BYTES` bytes."""

    def __init__(self, answer: Iterable[bytes]) -> None:
        self.answer = answer

    def __iter__(self) -> Iterator[bytes]:
        for item in self.answer:
            for i in range(0, len(item), SLICE_BYTES):  # a short item goes as it is (a slice of
                yield item[i:i + SLICE_BYTES]           # all of a bytes object is the object)

    def close(self) -> None:
        close = getattr(self.answer, "close", None)
        if close is not None:
            close()


# -- a request arriving, for the worker's event loop ----------------------------------------------

def framing(head: bytes) -> tuple[int, bool, bool]:
    """Return ``(content length, chunked, expects 100-continue)`` of a request head.

    :raises ValueError: on a framing the worker could read otherwise than gunicorn does.
    """
    length, chunked, expect = None, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ValueError("bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            if chunked or value != b"chunked":
                raise ValueError("only one Transfer-Encoding: chunked is understood")
            chunked = True
        elif name == b"expect":
            expect = value == b"100-continue"
    if chunked and length is not None:
        raise ValueError("both Content-Length and Transfer-Encoding")
    return length or 0, chunked, expect


class Refused(Exception):
    """A request the worker answers itself, then closes: ``status``, ``code``, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def answer(self, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """The HTTP answer: JSON ``{"error", "message"}``, ``headers``, ``Connection: close``."""
        body = json.dumps({"error": self.code, "message": str(self)}).encode()
        lines = [f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}",
                 "Connection: close", *(f"{name}: {value}" for name, value in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Incoming:
    """The bytes of one request as they arrive, and whether it is whole (no I/O here). The head
    is kept in one buffer, what follows as the pieces it came in: no buffer grows past what
    arrived. ``limit`` is ``MAX_BODY_BYTES``, ``timeout`` ``READ_TIMEOUT``."""

    def __init__(self, limit: int, timeout: float, now: float, data: bytes = b"") -> None:
        self.limit, self.timeout = limit, timeout
        self.head = bytearray()            # the head, until its end is found
        self.pieces: list[bytes] = []      # what came after it
        self.size = self.received = 0      # bytes held; bytes after the head
        self.length: int | None = None     # the body's length; None: chunked, or head unread
        self.chunked = self.expect = False # expect: the client waits for "100 Continue"
        self.started, self.deadline = now, now + timeout  # the head's; then the body's
        # Chunked framing, followed piece by piece: what is awaited, the line being read, the
        # chunk bytes still to come, the body's size so far, pieces scanned, the end seen.
        self.state, self.line, self.remaining = "size", bytearray(), 0
        self.body = self.scanned = 0
        self.done = False
        if data:
            self.add(data, now)

    def add(self, data: bytes, now: float) -> None:
        """Take bytes that arrived at ``now``; a body's deadline moves with them."""
        self.size += len(data)
        if self.length is None and not self.chunked:
            self.head += data
            return
        self.pieces.append(data)
        self.received += len(data)
        self.deadline = min(now + self.timeout,
                            self.started + self.timeout + self.received / MIN_RATE)

    def data(self) -> bytes:
        """Everything received, in one piece."""
        return b"".join([bytes(self.head), *self.pieces])

    def whole(self, now: float) -> bool:
        """Whether the request is all here (a pipelined next one may follow it).

        :raises Refused: when it is over a limit or its framing cannot be followed.
        """
        if self.length is None and not self.chunked:
            end = self.head.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end < 0:
                if len(self.head) > MAX_HEADER_BYTES:
                    raise Refused(431, "headers_too_large",
                                  f"the request head is over {MAX_HEADER_BYTES} bytes")
                return False
            try:
                length, self.chunked, self.expect = framing(bytes(self.head[:end]))
            except ValueError as exc:
                raise Refused(400, "bad_framing", str(exc)) from None
            if length > self.limit:
                raise Refused(413, "body_too_large", f"the body is over {self.limit} bytes")
            self.length = None if self.chunked else length
            rest = bytes(self.head[end + 4:])
            del self.head[end + 4:]
            self.started, self.deadline = now, now + self.timeout
            if rest:
                self.pieces.append(rest)
                self.received = len(rest)
        if self.length is not None:
            return self.received >= self.length
        try:
            while self.scanned < len(self.pieces) and not self.done and self.body <= self.limit:
                self._scan(self.pieces[self.scanned])
                self.scanned += 1
        except ValueError as exc:
            raise Refused(400, "bad_framing", str(exc)) from None
        # Chunk framing counts too: a byte of body may come with a kilobyte of extension.
        if self.body > self.limit or self.received > self.limit + MAX_HEADER_BYTES:
            raise Refused(413, "body_too_large", f"the body is over {self.limit} bytes")
        return self.done

    def _scan(self, data: bytes) -> None:
        """Follow the chunked framing through ``data``; ``body`` grows by each chunk's size
        as soon as its size line is in (so a chunk past the limit is refused unsent)."""
        i, n = 0, len(data)
        while i < n and not self.done and self.body <= self.limit:
            if self.state == "data":
                take = min(self.remaining, n - i)
                i, self.remaining = i + take, self.remaining - take
                self.state = "data" if self.remaining else "crlf"
            elif self.state == "crlf":
                take = min(2 - len(self.line), n - i)
                self.line += data[i:i + take]
                i += take
                if len(self.line) == 2:
                    if self.line != b"\r\n":
                        raise ValueError("a chunk does not end with CRLF")
                    self.state = "size"
                    self.line.clear()
            else:  # a chunk's size line, or the trailers: up to a line's end
                j = data.find(b"\n", i)
                stop = n if j < 0 else j + 1
                self.line += data[i:stop]
                i = stop
                if len(self.line) > (1024 if self.state == "size" else MAX_HEADER_BYTES):
                    raise ValueError(f"chunk {self.state} line too long")
                if j < 0:
                    continue
                if self.state == "trailers":
                    self.done = self.line == b"\r\n" or self.line.endswith(b"\r\n\r\n")
                    continue
                digits = bytes(self.line).split(b";", 1)[0].strip()
                if not self.line.endswith(b"\r\n") or not digits or not _HEX.issuperset(digits):
                    raise ValueError("bad chunk size")
                size = int(digits, 16)
                self.line.clear()
                self.body += size
                self.state, self.remaining = ("data", size) if size else ("trailers", 0)
