"""HTTP transport from the ring library to storage nodes.

One :class:`Transport` holds a keep-alive connection pool per node and a small thread pool for
parallel fan-out to replicas, so a request costs neither a new TCP connection nor a new thread.
The pool is a few :class:`http.client.HTTPConnection` per node rather than ``requests``: a bare
round trip to a gunicorn node costs about half as much that way (issue 7, ``bench/bench.py``).
Every call has a timeout (:data:`DEFAULT_TIMEOUT`) and returns the node's ring epoch alongside
the answer, so callers notice a newer ring (docs/design.md, "The ring").
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import urlencode

from . import kinds, params as cluster_params, wire
from .errors import NodeError, NodeUnavailable, Timeout
from .kinds.register import Record
from .ring import RingView
from .wire import (BATCH, EPOCH_HEADER, KEY_HEADER, MIGRATION_HEADER, SUPERSEDED, encode_ranges,
                   packb, packed_array, unpackb)

log = logging.getLogger(__name__)

#: (connect, read) seconds for every request to a node.
DEFAULT_TIMEOUT = (2.0, 10.0)
MSGPACK = {"Content-Type": wire.MSGPACK}
JSON_BODY = {"Content-Type": wire.JSON}

T = TypeVar("T")


@dataclass
class Reply:
    """A node's answer: HTTP status, decoded body and the ring epoch the node holds."""

    status: int
    body: Any
    epoch: int


@dataclass
class PutOutcome:
    """What a node did with one written record: ``stored``, ``same`` or ``superseded``.

    For ``superseded`` the score and digest are those of the higher record the node holds.
    """

    status: str
    score: float | None = None
    digest: bytes | None = None


class Transport:
    """Talks HTTP to storage nodes named ``host:port``.

    :param timeout: ``(connect, read)`` seconds for each request.
    :param cluster_key: sent on admin routes (ring replace, range delete).
    :param max_parallel: threads for fanning requests out to replicas.
    """

    def __init__(self, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 cluster_key: str | None = None, max_parallel: int = 16) -> None:
        self.timeout = timeout
        self.cluster_key = cluster_key
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
        """Send one request and decode the answer (msgpack or JSON).

        :raises NodeUnavailable: when the node cannot be reached.
        :raises Timeout: when it does not answer within the timeout.
        :raises NodeError: when it answers with a status not in ``ok``.
        """
        hdrs = dict(headers or {})
        if admin and self.cluster_key:
            hdrs[KEY_HEADER] = self.cluster_key
        if params:
            query = urlencode([(k, v) for k, v in params.items() if v is not None])
            target = f"{path}?{query}" if query else path
        else:
            target = path
        # A pooled connection the node closed while idle (keep-alive expiry, restart) fails
        # before any answer was read; retry such a request once on a fresh connection. Writes
        # are safe to resend: the accept rule makes them idempotent (docs/design.md, "The record").
        for attempt in (0, 1):
            conn, fresh = self._checkout(node, reuse=not attempt)
            try:
                if fresh:
                    conn.connect()
                    conn.sock.settimeout(self.timeout[1])
                conn.request(method, target, body=data, headers=hdrs)
                resp = conn.getresponse()
                raw = resp.read()
            except (TimeoutError, socket.timeout) as exc:
                conn.close()
                raise Timeout(f"{node} did not answer {method} {path} in time: {exc}",
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
        body = _decode(resp.getheader("Content-Type", ""), raw)
        try:
            epoch = int(resp.getheader(EPOCH_HEADER, "0"))
        except ValueError:
            epoch = 0
        if resp.status not in ok:
            message = body.get("message") if isinstance(body, dict) else None
            raise NodeError(f"{node} answered {resp.status} to {method} {path}: "
                            f"{message or body!r}", node, resp.status, body)
        return Reply(resp.status, body, epoch)

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

    # -- records ------------------------------------------------------------------------------

    # Entries that come back are decoded against the ring's limits, the same limits the nodes
    # applied when they accepted them: ``params`` when given, else :attr:`params`, which the
    # Ring owning this transport keeps at its current ring's.

    def get_record(self, node: str, key: str,
                   params: Mapping[str, Any] | None = None) -> tuple[Record | None, int]:
        """Return the register ``node`` holds for ``key`` (or None) and the node's epoch."""
        reply = self.request(node, "GET", "/v1/record", params={"key": key}, ok=(200, 404))
        if reply.status == 404:
            return None, reply.epoch
        return kinds.register.from_wire(reply.body, params or self.params), reply.epoch

    def put_record(self, node: str, entry: kinds.Entry) -> tuple[PutOutcome, int]:
        """Write one entry; return the node's outcome and epoch."""
        reply = self.request(node, "PUT", "/v1/record", data=entry.pack(), headers=MSGPACK,
                             ok=(200, 201, 409))
        if reply.status == 409:
            return PutOutcome(SUPERSEDED, reply.body.get("score"),
                              bytes.fromhex(reply.body["digest"])), reply.epoch
        return PutOutcome(reply.body["status"]), reply.epoch

    def get_many(self, node: str, keys: list[str],
                 params: Mapping[str, Any] | None = None) -> tuple[list[Record | None], int]:
        """Batch read: the registers ``node`` holds for ``keys`` (None where missing)."""
        reply = self.request(node, "POST", "/v1/records/get", data=packb(keys), headers=MSGPACK)
        p = params or self.params
        return ([None if obj is None else kinds.register.from_wire(obj, p) for obj in reply.body],
                reply.epoch)

    def get_entries(self, node: str, refs: list[bytes],
                    params: Mapping[str, Any] | None = None) -> list[kinds.Entry | None]:
        """Batch read of entries of any kind by the references tree listings name."""
        reply = self.request(node, "POST", "/v1/entries/get", data=packb(refs), headers=MSGPACK)
        p = params or self.params
        return [None if obj is None else kinds.from_wire(obj, p) for obj in reply.body]

    def put_many(self, node: str, entries: list[kinds.Entry],
                 migration: bool = False) -> tuple[list[PutOutcome], int]:
        """Batch write of entries of any kind, each under its accept rule; one outcome each.

        :param migration: mark the batch as entries moved by a join or remove, which the node
            counts in its ``sdht_migration_records_received`` metric.
        """
        body = packed_array([e.pack() for e in entries])
        headers = {**MSGPACK, MIGRATION_HEADER: "1"} if migration else MSGPACK
        reply = self.request(node, "POST", "/v1/records", data=body, headers=headers)
        return ([PutOutcome(o["s"], o.get("score"), o.get("digest")) for o in reply.body],
                reply.epoch)

    def scan(self, node: str, start: int, end: int, after: str | None = None,
             limit: int = BATCH, params: Mapping[str, Any] | None = None
             ) -> tuple[list[kinds.Entry], str | None]:
        """One page of the entries ``node`` holds in ``[start, end)``, and the next cursor."""
        query: dict[str, Any] = {"start": start, "end": end, "limit": limit}
        if after:
            query["after"] = after
        reply = self.request(node, "GET", "/v1/range", params=query)
        p = params or self.params
        return ([kinds.from_wire(obj, p) for obj in reply.body["records"]],
                reply.body["next"])

    def delete_range(self, node: str, start: int, end: int) -> int:
        """Drop every record ``node`` holds in ``[start, end)``; return how many."""
        reply = self.request(node, "DELETE", "/v1/range", params={"start": start, "end": end},
                             admin=True)
        return int(reply.body["deleted"])

    # -- anti-entropy -------------------------------------------------------------------------

    def tree(self, node: str, nodes: list[tuple[int, int]], listed: list[tuple[int, int]] = (),
             ranges: list[tuple[int, int]] | None = None) -> tuple[Any, int]:
        """Hash-tree hashes of ``nodes`` and ``(key, digest)`` listings of ``listed`` within
        ``ranges`` (half-open ``(start, end)`` pairs); see ``POST /v1/tree``.

        :returns: the decoded body and the node's epoch.
        """
        body: dict[str, Any] = {"nodes": [list(n) for n in nodes],
                                "list": [list(n) for n in listed]}
        if ranges is not None:
            body["ranges"] = encode_ranges(ranges)
        reply = self.request(node, "POST", "/v1/tree", data=packb(body), headers=MSGPACK)
        return reply.body, reply.epoch

    def sync_pass(self, node: str, rounds: int, differences: int, purge: bool) -> int:
        """Report a background sync pass to ``node`` (admin); it purges expired tombstones
        when ``purge``. Returns how many it purged."""
        body = json.dumps({"rounds": rounds, "differences": differences, "purge": purge})
        reply = self.request(node, "POST", "/v1/sync/pass", data=body.encode(), admin=True,
                             headers=JSON_BODY)
        return int(reply.body["purged"])

    # -- ring and health ----------------------------------------------------------------------

    def get_ring(self, node: str) -> RingView | None:
        """Return the ring ``node`` stores, or None if it has not joined one."""
        reply = self.request(node, "GET", "/v1/ring", ok=(200, 404))
        return None if reply.status == 404 else RingView.from_json(reply.body)

    def put_ring(self, node: str, view: RingView) -> RingView:
        """Offer ``view`` to ``node``; return the ring it holds afterwards (maybe a newer one)."""
        reply = self.request(node, "PUT", "/v1/ring", data=json.dumps(view.to_json()).encode(),
                             headers=JSON_BODY, admin=True,
                             ok=(200, 409))
        return view if reply.status == 200 else RingView.from_json(reply.body["ring"])

    def health(self, node: str) -> dict[str, Any]:
        """Return the node's health JSON."""
        return self.request(node, "GET", "/v1/health").body


def _close_idle(idle: dict[str, list[http.client.HTTPConnection]]) -> None:
    for conns in list(idle.values()):
        for conn in conns:
            conn.close()
    idle.clear()


def _decode(kind: str, raw: bytes) -> Any:
    """Decode a body by its content type: msgpack, JSON, else text."""
    if kind.startswith(wire.MSGPACK):
        return unpackb(raw)
    text = raw.decode("utf-8", "replace")
    if kind.startswith(wire.JSON):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
