"""The storage node's routes as the library calls them, with every answer checked.

:class:`NodeAPI` turns each route into a method (``get_record``, ``put_many``, ``tree``, ...)
over one primitive, :meth:`NodeAPI.request`, which a transport provides (HTTP in
:mod:`sdht.transport`, in-process WSGI in :mod:`sdht.inprocess`). Nothing a node answers is
trusted: a body of the wrong shape, a count that does not match the request, or an entry that
fails its kind's checks raises an :class:`~sdht.errors.SDHTError`, never a ``KeyError`` or
``TypeError`` (docs/security.md).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from . import kinds, wire
from .errors import InvalidRecord, NodeError, SDHTError
from .kinds.register import Record
from .ring import RingView
from .wire import (BATCH, MIGRATION_HEADER, OUTCOMES, SUPERSEDED, encode_ranges, packb,
                   packed_array, unpack_items)

MSGPACK = {"Content-Type": wire.MSGPACK}
JSON_BODY = {"Content-Type": wire.JSON}


@dataclass
class Reply:
    """A node's answer: HTTP status, decoded body and the ring epoch the node holds."""

    status: int
    body: Any
    epoch: int


@dataclass
class PutOutcome:
    """What a node did with one written entry: ``stored``, ``same`` or ``superseded``.

    For ``superseded`` the score and digest are those of the higher version the node holds.
    """

    status: str
    score: float | None = None
    digest: bytes | None = None


class Call(NamedTuple):
    """One request of a route and what its answer becomes (``then``, which does no I/O), that
    :mod:`sdht.fanout` sends to many replicas before it reads any answer."""

    method: str
    path: str
    params: dict | None
    data: bytes | None
    headers: dict | None
    ok: tuple[int, ...]
    then: Callable[[Reply], Any]


@contextmanager
def answer_of(node: str, route: str) -> Iterator[None]:
    """Turn a malformed answer from ``node`` into a :class:`NodeError` (sdht errors, such as
    an entry failing its kind's checks, pass through as they are)."""
    try:
        yield
    except SDHTError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise NodeError(f"{node} answered {route} with a malformed body "
                        f"({exc.__class__.__name__}: {str(exc)[:200]})", node) from None


def _count(node: str, items: Any, expected: int, route: str) -> list:
    if not isinstance(items, list) or len(items) != expected:
        raise NodeError(f"{node} answered {route} with {len(items) if isinstance(items, list) else 'no'}"
                        f" items for {expected} asked", node)
    return items


class NodeAPI:
    """Route methods over :meth:`request`. Entries that come back are decoded against the
    ring's limits, the same limits the nodes applied when they accepted them: ``params`` when
    given, else :attr:`params`, which the Ring owning the transport keeps at its ring's."""

    params: Mapping[str, Any]

    def request(self, node: str, method: str, path: str, *, params: dict | None = None,
                data: bytes | None = None, admin: bool = False,
                headers: dict[str, str] | None = None, ok: Iterable[int] = (200,),
                undecoded: bool = False) -> Reply:
        """Send one request to ``node`` and decode its answer (provided by a transport); with
        ``undecoded`` a successful answer's body stays bytes."""
        raise NotImplementedError

    # -- entries --------------------------------------------------------------------------------

    def run(self, node: str, call: Call) -> Any:
        """Send ``call``'s request to ``node`` and return what its answer becomes."""
        return call.then(self.request(node, call.method, call.path, params=call.params,
                                      data=call.data, headers=call.headers, ok=call.ok))

    def get_record(self, node: str, key: str,
                   params: Mapping[str, Any] | None = None) -> tuple[Record | None, int]:
        """Return the register ``node`` holds for ``key`` (or None) and the node's epoch."""
        return self.run(node, self.get_record_call(node, key, params))

    def get_record_call(self, node: str, key: str,
                        params: Mapping[str, Any] | None = None) -> Call:
        """:meth:`get_record` as a :class:`Call`."""
        p = params or self.params

        def then(reply: Reply) -> tuple[Record | None, int]:
            if reply.status == 404:
                return None, reply.epoch
            with answer_of(node, "GET /v1/record"):
                return kinds.register.from_wire(reply.body, p), reply.epoch
        return Call("GET", "/v1/record", {"key": key}, None, None, (200, 404), then)

    def put_record(self, node: str, entry: kinds.Entry) -> tuple[PutOutcome, int]:
        """Write one entry; return the node's outcome and epoch."""
        return self.run(node, self.put_record_call(node, entry))

    def put_record_call(self, node: str, entry: kinds.Entry) -> Call:
        """:meth:`put_record` as a :class:`Call`."""
        def then(reply: Reply) -> tuple[PutOutcome, int]:
            with answer_of(node, "PUT /v1/record"):
                if reply.status == 409:
                    return PutOutcome(SUPERSEDED, float(reply.body["score"]),
                                      bytes.fromhex(reply.body["digest"])), reply.epoch
                return PutOutcome(_outcome(reply.body["status"])), reply.epoch
        return Call("PUT", "/v1/record", None, entry.pack(), MSGPACK, (200, 201, 409), then)

    def get_many(self, node: str, keys: list[str],
                 params: Mapping[str, Any] | None = None,
                 decoded: dict[bytes, Record] | None = None) -> tuple[list[Record | None], int]:
        """Batch read: the registers ``node`` holds for ``keys`` (None where missing). A batch
        whose answer would pass the node's answer limit is asked again in halves.

        :param decoded: records already decoded, by the exact bytes they came in, shared by
            the replicas of one batch read: a record two replicas answer byte for byte the
            same is decoded and checked once (it was half a batch read's client time). Only
            byte-identical answers are shared, so no replica's answer is taken for another's.
        """
        p = params or self.params
        memo = {} if decoded is None else decoded

        def read(part: list[str]) -> tuple[list, int]:
            reply = self.request(node, "POST", "/v1/records/get", data=packb(part),
                                 headers=MSGPACK, undecoded=True)
            try:
                items = unpack_items(reply.body)
            except InvalidRecord as exc:
                raise NodeError(f"{node} answered POST /v1/records/get with a body that does "
                                f"not decode: {str(exc)[:200]}", node) from None
            with answer_of(node, "POST /v1/records/get"):
                _count(node, items, len(part), "POST /v1/records/get")
                out: list[Record | None] = []
                for obj, raw in items:
                    rec = None if obj is None else memo.get(raw)
                    if rec is None and obj is not None:
                        rec = memo[raw] = kinds.register.from_wire(obj, p)
                    out.append(rec)
                return out, reply.epoch
        return _in_halves(read, keys)

    def get_entries(self, node: str, refs: list[bytes],
                    params: Mapping[str, Any] | None = None) -> list[kinds.Entry | None]:
        """Batch read of entries of any kind by the references tree listings name (asked
        again in halves when the answer would pass the node's answer limit)."""
        p = params or self.params

        def read(part: list[bytes]) -> tuple[list, int]:
            reply = self.request(node, "POST", "/v1/entries/get", data=packb(part),
                                 headers=MSGPACK, admin=True)
            with answer_of(node, "POST /v1/entries/get"):
                items = _count(node, reply.body, len(part), "POST /v1/entries/get")
                return ([None if obj is None else kinds.from_wire(obj, p) for obj in items],
                        reply.epoch)
        return _in_halves(read, refs)[0]

    def put_many(self, node: str, entries: list[kinds.Entry],
                 migration: bool = False) -> tuple[list[PutOutcome], int]:
        """Batch write of entries of any kind, each under its accept rule; one outcome each.
        ``migration``: entries moved by a join or remove (the node's migration metric)."""
        body = packed_array([e.pack() for e in entries])
        headers = {**MSGPACK, MIGRATION_HEADER: "1"} if migration else MSGPACK
        # Signed when it carries acceptor state: only the operator or a member may move it.
        reply = self.request(node, "POST", "/v1/records", data=body, headers=headers,
                             admin=not all(kinds.kind_of(e.TAG).PUBLIC for e in entries))
        with answer_of(node, "POST /v1/records"):
            items = _count(node, reply.body, len(entries), "POST /v1/records")
            return ([PutOutcome(_outcome(o["s"]), o.get("score"), o.get("digest"))
                     for o in items], reply.epoch)

    def scan(self, node: str, start: int, end: int, after: str | None = None,
             limit: int = BATCH, params: Mapping[str, Any] | None = None
             ) -> tuple[list[kinds.Entry], str | None]:
        """One page of the entries ``node`` holds in ``[start, end)``, and the next cursor
        (a range scan needs authority: it dumps what the node holds)."""
        query: dict[str, Any] = {"start": start, "end": end, "limit": limit}
        if after:
            query["after"] = after
        reply = self.request(node, "GET", "/v1/range", params=query, admin=True)
        p = params or self.params
        with answer_of(node, "GET /v1/range"):
            items, cursor = reply.body["records"], reply.body["next"]
            if not isinstance(items, list) or len(items) > limit:
                raise ValueError(f"a page of more than {limit} entries")
            if cursor is not None and not (isinstance(cursor, str) and len(cursor) <= 1024):
                raise ValueError("a malformed cursor")
            return [kinds.from_wire(obj, p) for obj in items], cursor

    def delete_range(self, node: str, start: int, end: int) -> int:
        """Drop every entry ``node`` holds in ``[start, end)``; return how many."""
        reply = self.request(node, "DELETE", "/v1/range", params={"start": start, "end": end},
                             admin=True)
        with answer_of(node, "DELETE /v1/range"):
            return int(reply.body["deleted"])

    # -- anti-entropy ---------------------------------------------------------------------------

    def tree(self, node: str, nodes: list[tuple[int, int]], listed: list[tuple[int, int]] = (),
             ranges: list[tuple[int, int]] | None = None) -> tuple[Any, int]:
        """Hash-tree hashes of ``nodes`` and ``(reference, digest)`` listings of ``listed``
        within ``ranges`` (half-open ``(start, end)`` pairs); see ``POST /v1/tree``.

        :returns: the checked body and the node's epoch.
        """
        body: dict[str, Any] = {"nodes": [list(n) for n in nodes],
                                "list": [list(n) for n in listed]}
        if ranges is not None:
            body["ranges"] = encode_ranges(ranges)
        reply = self.request(node, "POST", "/v1/tree", data=packb(body), headers=MSGPACK,
                             admin=True)
        with answer_of(node, "POST /v1/tree"):
            answer = reply.body
            _count(node, answer["hashes"], len(nodes), "POST /v1/tree")
            for listing in _count(node, answer["entries"], len(listed), "POST /v1/tree"):
                for ref, digest in listing:
                    if type(ref) is not bytes or type(digest) is not bytes:
                        raise TypeError("a listing of non-bytes")
            return answer, reply.epoch

    def sync_pass(self, node: str, rounds: int, differences: int, purge: bool) -> int:
        """Report a background sync pass to ``node`` (admin); it purges expired tombstones
        when ``purge``. Returns how many it purged."""
        body = json.dumps({"rounds": rounds, "differences": differences, "purge": purge})
        reply = self.request(node, "POST", "/v1/sync/pass", data=body.encode(), admin=True,
                             headers=JSON_BODY)
        with answer_of(node, "POST /v1/sync/pass"):
            return int(reply.body["purged"])

    # -- ring and health ------------------------------------------------------------------------

    def get_ring(self, node: str) -> RingView | None:
        """Return the ring ``node`` stores, or None if it has not joined one. Whether the ring
        is trusted (signed by the operator) is for the caller to check."""
        reply = self.request(node, "GET", "/v1/ring", ok=(200, 404))
        return None if reply.status == 404 else RingView.from_json(reply.body)

    def put_ring(self, node: str, view: RingView) -> RingView:
        """Offer ``view`` to ``node``; return the ring it holds afterwards (maybe a newer one)."""
        reply = self.request(node, "PUT", "/v1/ring", data=json.dumps(view.to_json()).encode(),
                             headers=JSON_BODY, admin=True, ok=(200, 409))
        if reply.status == 200:
            return view
        with answer_of(node, "PUT /v1/ring"):
            return RingView.from_json(reply.body["ring"])

    def health(self, node: str) -> dict[str, Any]:
        """Return the node's health JSON."""
        body = self.request(node, "GET", "/v1/health").body
        if not isinstance(body, dict):
            raise NodeError(f"{node} answered GET /v1/health with a malformed body", node)
        return body


def _in_halves(read: Any, items: list) -> tuple[list, int]:
    """``read(items)``, or when the node answers 413 ``answer_too_large`` (the entries would
    pass its answer limit) the two halves read the same way, joined in order."""
    try:
        return read(items)
    except NodeError as exc:
        too_large = (exc.status == 413 and isinstance(exc.body, dict)
                     and exc.body.get("error") == "answer_too_large")
        if not too_large or len(items) < 2:
            raise
    half = len(items) // 2
    first, _ = _in_halves(read, items[:half])
    second, epoch = _in_halves(read, items[half:])
    return first + second, epoch


def _outcome(status: Any) -> str:
    if status not in OUTCOMES:
        raise ValueError(f"unknown outcome {str(status)[:40]!r}")
    return status
