"""HTTP transport from the ring library to storage nodes.

One :class:`Transport` holds a keep-alive connection pool per node and a small thread pool for
parallel fan-out to replicas, so a request costs neither a new TCP connection nor a new thread.
The pool is a few :class:`http.client.HTTPConnection` per node rather than ``requests``: a bare
round trip to a gunicorn node costs about half as much that way (``bench/bench.py``). Every call
has a timeout (:data:`DEFAULT_TIMEOUT`) and returns the node's ring epoch alongside the answer,
so callers notice a newer ring (docs/design.md, "The ring"). The routes themselves, and the
checks of every answer, are :class:`sdht.nodeapi.NodeAPI`'s; requests that need authority are
signed with this party's keys (:mod:`sdht.trust`).
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import urlencode

from . import params as cluster_params, wire
from .errors import NodeError, NodeUnavailable, Timeout
from .nodeapi import NodeAPI, PutOutcome, Reply
from .trust import Keys
from .wire import EPOCH_HEADER, unpackb

log = logging.getLogger(__name__)

#: (connect, read) seconds for every request to a node.
DEFAULT_TIMEOUT = (2.0, 10.0)

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
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
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
                headers: dict[str, str] | None = None, ok: Iterable[int] = (200,)) -> Reply:
        """Send one request and decode the answer (msgpack or JSON); with ``admin`` the
        request is signed with :attr:`keys`.

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
        return self._reply(node, f"{method} {path}", status, answer_headers, raw, ok)

    def _reply(self, node: str, route: str, status: int, headers: Mapping[str, str],
               raw: bytes, ok: Iterable[int]) -> Reply:
        """Decode an answer by its content type and check its status (one rule for every
        transport)."""
        body = _decode(node, route, headers.get("Content-Type", ""), raw)
        epoch_text = headers.get(EPOCH_HEADER, "0")
        epoch = int(epoch_text) if epoch_text.isascii() and epoch_text.isdigit() \
            and len(epoch_text) < 20 else 0
        if status not in ok:
            message = body.get("message") if isinstance(body, dict) else None
            raise NodeError(f"{node} answered {status} to {route}: {str(message or body)[:300]}",
                            node, status, body)
        return Reply(status, body, epoch)

    def _exchange(self, node: str, method: str, target: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        """Send one HTTP request to ``node``; return its status, headers and raw body."""
        # A pooled connection the node closed while idle (keep-alive expiry, restart) fails
        # before any answer was read; retry such a request once on a fresh connection. Writes
        # are safe to resend: the accept rule makes them idempotent (docs/design.md, "The record").
        for attempt in (0, 1):
            conn, fresh = self._checkout(node, reuse=not attempt)
            try:
                if fresh:
                    conn.connect()
                    conn.sock.settimeout(self.timeout[1])
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (TimeoutError, socket.timeout) as exc:
                conn.close()
                raise Timeout(f"{node} did not answer {method} {target[:100]} in time: {exc}",
                              node) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if fresh or attempt:
                    raise NodeUnavailable(f"{node} is unreachable: {exc.__class__.__name__}",
                                          node) from None
                continue
            break
        if resp.will_close:
            conn.close()
        else:
            self._checkin(node, conn)
        return resp.status, resp.headers, raw

    def _checkout(self, node: str, reuse: bool = True) -> tuple[http.client.HTTPConnection, bool]:
        """Take an idle connection to ``node`` (newest first) when ``reuse``, else or when
        there is none a new one, not yet connected. Returns it and whether it is new."""
        with self._lock:
            idle = self._idle.get(node)
            if idle and reuse:
                return idle.pop(), False
        host, _, port = node.rpartition(":")
        return http.client.HTTPConnection(host, int(port), timeout=self.timeout[0]), True

    def _checkin(self, node: str, conn: http.client.HTTPConnection) -> None:
        """Keep ``conn`` for reuse, up to ``max_idle`` per node; close the rest (and any that
        a fan-out thread returns after :meth:`close`)."""
        with self._lock:
            idle = self._idle.setdefault(node, [])
            if len(idle) < self.max_idle and not self._closed:
                idle.append(conn)
                return
        conn.close()

def _close_idle(idle: dict[str, list[http.client.HTTPConnection]]) -> None:
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
