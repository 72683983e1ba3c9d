"""HTTP transport from the ring library to storage nodes.

One :class:`Transport` holds a keep-alive connection pool per node and a small thread pool for
parallel fan-out to replicas, so a request costs neither a new TCP connection nor a new thread.
The pool is a few :class:`sdht.http1.Connection` per node rather than ``requests`` or
http.client: a bare round trip to a gunicorn node costs about half as much as with ``requests``
(``bench/bench.py``), and reading the answer's head without the ``email`` package less again
(:mod:`sdht.http1`). Every call returns the node's ring epoch alongside the answer, so callers
notice a newer ring (docs/design.md, "The ring"). The routes, and the checks of every answer,
are :class:`sdht.nodeapi.NodeAPI`'s; requests that need authority are signed with this party's
keys (:mod:`sdht.trust`).

Nothing a node sends is trusted, not even its HTTP framing: a request has one deadline however
slowly the node trickles bytes, an answer is cut off past :data:`sdht.wire.MAX_ANSWER_READ`
whatever its ``Content-Length`` says (both :mod:`sdht.http1`), and every failure is an
:class:`~sdht.errors.SDHTError`.
"""
from __future__ import annotations

import json
import logging
import reprlib
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import urlencode

from . import http1, params as cluster_params, wire
from .errors import NodeError, NodeUnavailable, SDHTError, Timeout
from .nodeapi import Call, NodeAPI, PutOutcome, Reply
from .trust import Keys
from .wire import EPOCH_HEADER, MAX_ANSWER_READ, unpackb

log = logging.getLogger(__name__)

#: (connect, read) seconds for every request: connecting a new connection may take the first,
#: sending the request and reading the whole answer together the second.
DEFAULT_TIMEOUT = (2.0, 10.0)
#: Largest body :meth:`Transport.begin` sends from the caller's thread (a larger one could wait).
BEGIN_BYTES = 16 << 10
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
        self._idle: dict[str, list[http1.Connection]] = {}
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
        target = _target(path, params)
        hdrs = dict(headers or {})
        if admin:
            hdrs.update(self.keys.sign_request(method, target, data))
        status, answer_headers, raw = self._exchange(node, method, target, data, hdrs)
        return self._reply(node, f"{method} {path}", status, answer_headers, raw, ok, undecoded)

    def begin(self, node: str, call: Call) -> "Sent | None":
        """Send ``call``'s request to ``node`` on an idle kept-alive connection, and return
        without waiting for its answer (:class:`Sent` reads it). None when :meth:`run` had
        better make it: no idle connection (connecting could wait), a body over
        :data:`BEGIN_BYTES`, or a send that failed (a pooled connection the node closed)."""
        if call.data is not None and len(call.data) > BEGIN_BYTES:
            return None
        with self._lock:
            idle = self._idle.get(node)
            if not idle:
                return None
            conn = idle.pop()
        target = _target(call.path, call.params)
        try:
            conn.send(call.method, target, call.data, dict(call.headers or {}),
                      time.monotonic() + self.timeout[1], MAX_ANSWER_READ)
        except (OSError, ValueError):   # nothing was answered: run() sends it anew
            conn.close()
            return None
        return Sent(self, node, conn, call, f"{call.method} {target[:100]}")

    def _reply(self, node: str, route: str, status: int, headers: Mapping[str, str],
               raw: bytes, ok: Iterable[int], undecoded: bool = False) -> Reply:
        """Decode an answer by its content type (not an ``undecoded`` one in ``ok``) and check
        its status (one rule for every transport)."""
        kind = headers.get("content-type", "")
        body = raw if undecoded and status in ok else _decode(node, route, kind, raw)
        stamp = headers.get(EPOCH_HEADER.lower(), "0")
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
        """Send one HTTP request to ``node``; return its status, headers (by lower-case name)
        and raw body.

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
            fresh = conn.sock is None
            try:
                if fresh:
                    began = time.monotonic()
                    conn.connect()
                    deadline += time.monotonic() - began   # connecting has its own timeout
                answer = conn.exchange(method, target, data, headers, deadline, MAX_ANSWER_READ)
            except (OSError, ValueError, http1.TooLarge) as exc:   # Malformed, Unsendable
                conn.close()
                if fresh or attempt or not _stale(conn, exc):
                    raise _failure(node, f"{method} {target[:100]}", exc) from None
                continue
            break
        self._release(node, conn, answer)
        return answer.status, answer.headers, answer.body

    def _release(self, node: str, conn: http1.Connection, answer: http1.Answer) -> None:
        """Keep ``conn`` for reuse after ``answer``, or close it when the answer says so."""
        if answer.close:
            conn.close()
        else:
            self._checkin(node, conn)

    def _checkout(self, node: str, reuse: bool = True) -> http1.Connection:
        """Take an idle connection to ``node`` (newest first) when ``reuse``, else or when
        there is none a new one, not yet connected (its ``sock`` is None).

        :raises NodeUnavailable: when ``node`` is not ``host:port``."""
        with self._lock:
            idle = self._idle.get(node)
            if idle and reuse:
                return idle.pop()
        host, _, port = node.rpartition(":")
        try:
            return http1.Connection(host, int(port), self.timeout[0])
        except ValueError:
            raise NodeUnavailable(f"{node!r} is not a node address (host:port)", node) from None

    def _checkin(self, node: str, conn: http1.Connection) -> None:
        """Keep ``conn`` for reuse, up to ``max_idle`` per node; close the rest (and any that
        a fan-out thread returns after :meth:`close`)."""
        with self._lock:
            idle = self._idle.setdefault(node, [])
            if len(idle) < self.max_idle and not self._closed:
                idle.append(conn)
                return
        conn.close()


class Sent:
    """A request :meth:`Transport.begin` sent, whose answer :meth:`finish` reads."""

    def __init__(self, transport: Transport, node: str, conn: http1.Connection, call: Call,
                 what: str) -> None:
        self.transport, self.node, self.conn, self.call, self.what = \
            transport, node, conn, call, what

    def close(self) -> None:   # its answer unread: the transport closed meanwhile
        self.conn.close()

    def fileno(self) -> int:
        """The connection's socket, to wait on for the answer."""
        return self.conn.sock.fileno()  # type: ignore[union-attr]

    def whole(self) -> bool | None:
        """Take what has arrived, without waiting; whether :meth:`finish` now reads the whole
        answer at once. None: only it can tell (a failed connection, another framing)."""
        try:
            self.conn.pull()
        except (OSError, http1.TooLarge):
            return None
        return self.conn.whole()

    def finish(self) -> Any:
        """Read the answer (waiting for it until the request's deadline) and return what the
        call makes of it. When the pooled connection went stale (:func:`_stale`) the call is
        made again by :meth:`Transport.run`, with its own retry (writes are idempotent).

        :raises SDHTError: as :meth:`Transport.request` and the call's ``then`` raise."""
        conn, node, tr = self.conn, self.node, self.transport
        try:
            answer = conn.answer(self.call.method)
        except (OSError, ValueError, http1.TooLarge) as exc:   # Malformed
            conn.close()
            if not _stale(conn, exc):
                raise _failure(node, self.what, exc) from None
            return tr.run(node, self.call)
        tr._release(node, conn, answer)
        route = f"{self.call.method} {self.call.path}"
        return self.call.then(tr._reply(node, route, answer.status, answer.headers,
                                        answer.body, self.call.ok))


def _target(path: str, params: dict | None) -> str:
    """The request target of ``path`` with ``params`` (those not None) as its query."""
    query = urlencode([(k, v) for k, v in (params or {}).items() if v is not None])
    return f"{path}?{query}" if query else path


def _stale(conn: http1.Connection, exc: Exception) -> bool:
    """Whether pooled ``conn`` failed with ``exc`` as one the node closed while idle does: before
    the node sent a byte, not by timing out. Only such a request is sent again."""
    return not conn.received and isinstance(exc, OSError) and not isinstance(exc, TimeoutError)


def _failure(node: str, what: str, exc: Exception) -> SDHTError:
    """The :class:`~sdht.errors.SDHTError` that an exchange failing with ``exc`` raises."""
    if isinstance(exc, TimeoutError):   # socket.timeout is TimeoutError
        return Timeout(f"{node} did not answer {what} in time: {exc}", node)
    if isinstance(exc, http1.TooLarge):
        return NodeError(f"{node} answered {what} with more than {MAX_ANSWER_READ} bytes "
                         f"({exc})", node)
    if isinstance(exc, OSError):   # refused, reset, or closed before the answer was whole
        return NodeUnavailable(f"{node} is unreachable: {exc.__class__.__name__}", node)
    if isinstance(exc, http1.Unsendable):
        return NodeError(f"{what} was not sent to {node}: {exc}", node)
    # A status line, headers or chunks that are not HTTP/1.1 as sdht.http1 reads it.
    return NodeError(f"{node} answered {what} with malformed HTTP: {exc.__class__.__name__}: "
                     f"{str(exc)[:100]}", node)


def _close_idle(idle: dict[str, list[http1.Connection]]) -> None:
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


__all__ = ["DEFAULT_TIMEOUT", "PutOutcome", "Reply", "Sent", "Transport"]
