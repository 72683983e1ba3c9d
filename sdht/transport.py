"""HTTP transport from the ring library to storage nodes.

One :class:`Transport` holds a keep-alive connection pool per node and a small thread pool for
parallel fan-out to replicas, so a request costs neither a new TCP connection nor a new thread.
The pool is a few :class:`http.client.HTTPConnection` per node rather than ``requests``: a bare
round trip to a gunicorn node costs about half as much that way (``bench/bench.py``). Every call
returns the node's ring epoch alongside the answer, so callers notice a newer ring
(docs/design.md, "The ring"). The routes themselves, and the checks of every answer, are
:class:`sdht.nodeapi.NodeAPI`'s; requests that need authority are signed with this party's keys
(:mod:`sdht.trust`).

Nothing a node sends is trusted, not even its HTTP framing: a request has one deadline however
slowly the node trickles bytes, an answer is cut off past :data:`sdht.wire.MAX_ANSWER_READ`
whatever its ``Content-Length`` says, and every failure is an :class:`~sdht.errors.SDHTError`.
"""
from __future__ import annotations

import http.client
import json
import logging
import reprlib
import socket
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import urlencode

from . import params as cluster_params, wire
from .errors import NodeError, NodeUnavailable, SDHTError, Timeout
from .nodeapi import NodeAPI, PutOutcome, Reply
from .trust import Keys
from .wire import EPOCH_HEADER, MAX_ANSWER_READ, unpackb

log = logging.getLogger(__name__)

#: (connect, read) seconds for every request: connecting a new connection may take the first,
#: sending the request and reading the whole answer together the second.
DEFAULT_TIMEOUT = (2.0, 10.0)
#: Bytes of an answer's body read at a time: one allocation per chunk, never per claimed length.
_CHUNK = 1 << 20
#: Bytes one answer may take on the wire: the body, plus the status line and headers as far as
#: http.client bounds them (100 lines of 64 KiB), so streaming forever in any framing (endless
#: chunks, trailers, 100-continues) is cut off.
_WIRE_BUDGET = MAX_ANSWER_READ + 101 * (65536 + 2)
#: Summaries of unexpected bodies in error messages: bounded in length and depth.
_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 300

T = TypeVar("T")


class Transport(NodeAPI):
    """Talks HTTP to storage nodes named ``host:port``.

    :param timeout: ``(connect, read)`` seconds for each request.
    :param keys: this party's keys: admin requests are signed with them, and rings are
        checked against their operator keys (:class:`sdht.trust.Keys`; none: development).
    :param max_parallel: threads for fanning requests out to replicas.
    """

    def __init__(self, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 keys: Keys | None = None, max_parallel: int = 16) -> None:
        self.timeout = timeout
        self.keys = keys or Keys()
        #: The ring's parameters, for decoding answers (see :meth:`get_record`).
        self.params: Mapping[str, Any] = cluster_params.DEFAULTS
        self.max_idle = max_parallel
        self._idle: dict[str, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._closed = False
        # A transport dropped without close() still closes its idle sockets.
        weakref.finalize(self, _close_idle, self._idle)
        self.pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="sdht-io")

    def close(self) -> None:
        """Close pooled connections and stop the fan-out threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
            _close_idle(self._idle)

    def submit(self, fn: Callable[..., T], *args: Any) -> "Future[T]":
        """Run ``fn(*args)`` on the fan-out pool."""
        return self.pool.submit(fn, *args)

    # -- the wire -----------------------------------------------------------------------------

    def request(self, node: str, method: str, path: str, *, params: dict | None = None,
                data: bytes | None = None, admin: bool = False,
                headers: dict[str, str] | None = None, ok: Iterable[int] = (200,),
                undecoded: bool = False) -> Reply:
        """Send one request and decode the answer (msgpack or JSON; with ``undecoded``, one
        with a status in ``ok`` stays bytes); with ``admin`` it is signed with :attr:`keys`.

        :raises NodeUnavailable: when the node cannot be reached.
        :raises Timeout: when it does not answer within the timeout.
        :raises NodeError: when it answers with a status not in ``ok``, or a malformed body.
        """
        query = urlencode([(k, v) for k, v in (params or {}).items() if v is not None])
        target = f"{path}?{query}" if query else path
        hdrs = dict(headers or {})
        if admin:
            hdrs.update(self.keys.sign_request(method, target, data))
        status, answer_headers, raw = self._exchange(node, method, target, data, hdrs)
        return self._reply(node, f"{method} {path}", status, answer_headers, raw, ok, undecoded)

    def _reply(self, node: str, route: str, status: int, headers: Mapping[str, str],
               raw: bytes, ok: Iterable[int], undecoded: bool = False) -> Reply:
        """Decode an answer by its content type (not an ``undecoded`` one in ``ok``) and check
        its status (one rule for every transport)."""
        kind = headers.get("Content-Type", "")
        body = raw if undecoded and status in ok else _decode(node, route, kind, raw)
        stamp = headers.get(EPOCH_HEADER, "0")
        epoch = int(stamp) if stamp.isascii() and stamp.isdigit() and len(stamp) < 20 else 0
        if status not in ok:
            message = body.get("message") if isinstance(body, dict) else None
            text = message if isinstance(message, str) and message else body
            # reprlib, not str(): a body nested a thousand deep must not raise RecursionError.
            text = text[:300] if isinstance(text, str) else _BRIEF.repr(text)
            raise NodeError(f"{node} answered {status} to {route}: {text}", node, status, body)
        return Reply(status, body, epoch)

    def _exchange(self, node: str, method: str, target: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        """Send one HTTP request to ``node``; return its status, headers and raw body.

        :raises Timeout: when the answer is not complete ``timeout[1]`` seconds after the
            request began (connecting a new connection has its own ``timeout[0]``).
        :raises NodeUnavailable: when the node cannot be reached or drops the connection.
        :raises NodeError: when it answers malformed HTTP or more than ``MAX_ANSWER_READ``.
        """
        # One deadline for the whole request, not per socket read: trickling cannot stretch it.
        deadline = time.monotonic() + self.timeout[1]
        # A pooled connection the node closed while idle (keep-alive expiry, restart) fails before
        # any answer: retry once on a fresh one. Writes are idempotent (design.md, "The record").
        for attempt in (0, 1):
            conn = self._checkout(node, reuse=not attempt)
            fresh, sock, resp = conn.sock is None, None, None
            try:
                if fresh:
                    began = time.monotonic()
                    conn.connect()
                    deadline += time.monotonic() - began   # connecting has its own timeout
                sock = conn.sock
                sock.deadline, sock.budget = deadline, _WIRE_BUDGET
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                raw = _read_body(resp)
            except (OSError, http.client.HTTPException, ValueError, _TooLarge) as exc:
                conn.close()
                if resp is not None:
                    resp.close()   # and the socket with it, when http.client handed it over
                # Retry only a pooled connection that failed before the node sent a byte.
                if (fresh or attempt or sock is None or sock.budget < _WIRE_BUDGET
                        or isinstance(exc, (TimeoutError, _TooLarge))):
                    raise _failure(node, f"{method} {target[:100]}", exc) from None
                continue
            break
        if resp.will_close:
            conn.close()
        else:
            self._checkin(node, conn)
        return resp.status, resp.headers, raw

    def _checkout(self, node: str, reuse: bool = True) -> "_Connection":
        """Take an idle connection to ``node`` (newest first) when ``reuse``, else or when
        there is none a new one, not yet connected (its ``sock`` is None).

        :raises NodeUnavailable: when ``node`` is not ``host:port``."""
        with self._lock:
            idle = self._idle.get(node)
            if idle and reuse:
                return idle.pop()
        host, _, port = node.rpartition(":")
        try:
            return _Connection(host, int(port), timeout=self.timeout[0])
        except (ValueError, http.client.InvalidURL):
            raise NodeUnavailable(f"{node!r} is not a node address (host:port)", node) from None

    def _checkin(self, node: str, conn: "_Connection") -> None:
        """Keep ``conn`` for reuse, up to ``max_idle`` per node; close the rest (and any that
        a fan-out thread returns after :meth:`close`)."""
        with self._lock:
            idle = self._idle.setdefault(node, [])
            if len(idle) < self.max_idle and not self._closed:
                idle.append(conn)
                return
        conn.close()


class _TooLarge(Exception):   # not an OSError: http.client must not take it for a lost socket
    """An answer ran past the bytes it may take."""


class _DeadlineSocket(socket.socket):
    """A socket whose every send and receive waits only until the request's ``deadline``
    (a :func:`time.monotonic` time) and whose receives spend a byte ``budget``, both set by
    :meth:`Transport._exchange` before each request. http.client reads only through
    ``makefile()``, which calls :meth:`recv_into`, and writes only with :meth:`sendall`."""

    __slots__ = ("deadline", "budget")

    @classmethod
    def adopt(cls, sock: socket.socket) -> "_DeadlineSocket":
        """Take over the connected ``sock`` (same descriptor; ``sock`` is left detached)."""
        timeout, new = sock.gettimeout(), cls(sock.family, sock.type, sock.proto, sock.detach())
        new.settimeout(timeout)   # the descriptor stays non-blocking: keep the object in step
        new.deadline, new.budget = 0.0, 0
        return new

    def _wait(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        # settimeout is a syscall: re-arm only when the armed timeout is 10 ms off the time left.
        if abs((self.gettimeout() or -1.0) - left) > 0.01:   # None: blocking, never armed
            self.settimeout(left)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into ``buffer`` until the deadline, counting against the budget."""
        self._wait()
        got = socket.socket.recv_into(self, buffer, nbytes, flags)
        self.budget -= got
        if self.budget < 0:
            raise _TooLarge("the answer is too long")
        return got

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data`` before the deadline (sendall's timeout bounds its total)."""
        self._wait()
        socket.socket.sendall(self, data, flags)


class _Connection(http.client.HTTPConnection):
    """An HTTP connection over a :class:`_DeadlineSocket`."""

    def connect(self) -> None:
        """Connect within the connect timeout, then hand the socket to the deadline wrapper."""
        super().connect()
        self.sock = _DeadlineSocket.adopt(self.sock)


def _read_body(resp: http.client.HTTPResponse) -> bytes:
    """Read an answer's body in chunks, at most :data:`MAX_ANSWER_READ` bytes whatever its
    ``Content-Length`` says (one claiming a TiB must not allocate one): else :class:`_TooLarge`.

    :raises http.client.IncompleteRead: when the node closes before the length it announced.
    """
    if resp.length is not None and resp.length > MAX_ANSWER_READ:   # None: chunked, or close
        raise _TooLarge(f"it announced a Content-Length of {resp.length}")
    parts, got = [], 0
    while part := resp.read(_CHUNK):
        got += len(part)
        if got > MAX_ANSWER_READ:
            raise _TooLarge(f"more than {MAX_ANSWER_READ} bytes of body")
        parts.append(part)
    if resp.length:   # what is left of an announced length: the node closed early
        raise http.client.IncompleteRead(b"", resp.length)
    return b"".join(parts)


def _failure(node: str, what: str, exc: Exception) -> SDHTError:
    """The :class:`~sdht.errors.SDHTError` that an exchange failing with ``exc`` raises."""
    if isinstance(exc, TimeoutError):   # socket.timeout is TimeoutError
        return Timeout(f"{node} did not answer {what} in time: {exc}", node)
    if isinstance(exc, _TooLarge):
        return NodeError(f"{node} answered {what} with more than {MAX_ANSWER_READ} bytes "
                         f"({exc})", node)
    if isinstance(exc, (OSError, http.client.IncompleteRead)):   # RemoteDisconnected too
        return NodeUnavailable(f"{node} is unreachable: {exc.__class__.__name__}", node)
    # A status line, headers or chunks that are not HTTP, or more headers than http.client takes.
    return NodeError(f"{node} answered {what} with malformed HTTP: {exc.__class__.__name__}: "
                     f"{str(exc)[:100]}", node)


def _close_idle(idle: dict[str, list[_Connection]]) -> None:
    for conns in list(idle.values()):
        for conn in conns:
            conn.close()
    idle.clear()


def _decode(node: str, route: str, kind: str, raw: bytes) -> Any:
    """Decode a body by its content type: msgpack, JSON, else text.

    :raises NodeError: for a msgpack or JSON body that does not decode.
    """
    try:
        if kind.startswith(wire.MSGPACK):
            return unpackb(raw)
        text = raw.decode("utf-8", "replace")
        return json.loads(text) if kind.startswith(wire.JSON) else text
    except (ValueError, RecursionError) as exc:   # InvalidRecord is a ValueError
        raise NodeError(f"{node} answered {route} with a body that does not decode: "
                        f"{str(exc)[:200]}", node) from None


__all__ = ["DEFAULT_TIMEOUT", "PutOutcome", "Reply", "Transport"]
