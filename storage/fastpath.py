"""A lighter dispatch for the node's hottest routes, ``GET`` and ``PUT /v1/record`` (issue 16).

A read of one record costs the node about a millisecond of CPU, a write about two, and Flask's
request context, routing and nine hooks were about 40% of a read and a third of a write's
Python time (py-spy of a worker; docs/benchmarks.md, "The node's hot path"). This WSGI
middleware sits in front of Flask (behind :mod:`storage.limits`, which has read the body and
slices the answer) and answers the common case itself, with the same code and rules as the
routes of :mod:`storage.routes`:

* a **read**: the key's check (:func:`storage.http.check_key`) and the store;
* a **write**: who wrote it (:func:`storage.routes.write_signer`), the body decoded strictly
  (:func:`sdht.wire.unpackb`), the entry's admission (:func:`storage.http.admit`), who may
  write its kind (:func:`storage.routes.may_write`), the store's merge, the write counts
  (:meth:`storage.metrics.Metrics.count_writes`), the route's prebuilt answer
  (:func:`storage.routes.put_answer`) and the event (:func:`storage.eventlog.single_write`);

and for both the epoch and node headers (:func:`storage.http.stamp_headers`) and the request
metrics (:meth:`storage.metrics.Metrics.observe_request`) under the route's own labels.

Everything else goes on unchanged (to the acceptor's phases' path, :mod:`storage.fastphases`,
then Flask), and Flask answers it as before (its error bodies, its event log): another route or method, a request the limits refused, a client the node does not
serve (:func:`storage.auth.serves`), a node with the test-only faults on; a read whose query is
not a plain ``key=`` or whose key fails its check or is not held; a write that is signed (its
signature is checked by Flask's route), has no body or one that is not a msgpack entry, that
admission or the kind's access refuses, or that the store found superseded (409, with what it
holds). A read changes nothing, so handing it over after a look costs only the look. A write is
handed over only when the store has not changed: before the merge, or when the merge applied
nothing (superseded: Flask merges it again and answers what it then holds; or the merge's
transaction failed and was rolled back). A merge that stored it is answered here, once.

A hook that Flask runs on every answer must be mirrored here: tests/test_fastpath.py compares
both answers byte for byte, and the event log and metrics they leave, so such a hook shows
there first.
"""
from __future__ import annotations

import io
import re
import time
from typing import Any, Iterable, NamedTuple
from urllib.parse import unquote

from flask import Flask

from sdht.wire import MIGRATION_HEADER, MSGPACK, SAME, SIGNER_HEADER, STORED, unpackb

from . import auth, eventlog, metrics, routes
from .http import ApiError, admit, check_key, params, stamp_headers, store

#: The route answered here, and its rule as the metrics label it.
PATH = "/v1/record"
#: A query of one ``key=`` of unreserved or %-escaped characters (what
#: :class:`sdht.transport.Transport` sends for most keys); any other goes to Flask.
_QUERY = re.compile(r"key=([A-Za-z0-9._~%-]+)")
#: Where :func:`init_app` leaves the app's fast path, in ``app.extensions``: the worker's group
#: commit writes through it (:mod:`storage.groupcommit`).
EXTENSION = "sdht.hotpath"
#: The outcomes of a write answered here. Only STORED changes the store: every other outcome
#: may go to Flask to be merged again, and so must STORED never.
_ANSWERED = (STORED, SAME)

#: ``(status line, headers, body)``: the answer, before the epoch stamp.
Answer = tuple[str, list[tuple[str, str]], bytes]


def _environ_name(header: str) -> str:
    """The WSGI environ key of request header ``header`` (as werkzeug reads headers)."""
    return "HTTP_" + header.upper().replace("-", "_")


_SIGNED, _MIGRATION = _environ_name(SIGNER_HEADER), _environ_name(MIGRATION_HEADER)


def init_app(app: Flask) -> None:
    """Put the fast path in front of ``app``'s WSGI callable (after the acceptor's phases',
    :mod:`storage.fastphases`: the record routes are asked first)."""
    hot = app.extensions[EXTENSION] = HotPath(app, app.wsgi_app)
    app.wsgi_app = hot  # type: ignore[method-assign]


class HotPath:
    """Answers ``GET /v1/record`` of a held key and ``PUT /v1/record`` of an entry stored or
    already held; hands every other request to ``wsgi``."""

    def __init__(self, app: Flask, wsgi: Any) -> None:
        self.app, self.wsgi = app, wsgi
        # The app's own metrics (attached before this layer), without a context lookup each time.
        self.metrics: metrics.Metrics = app.extensions["sdht.metrics"]
        # The route's own answers, taken apart once: a status line and headers per outcome
        # (an outcome the route stops answering so fails here, when the app is made).
        self.written: dict[str, Answer] = {}
        for status in _ANSWERED:
            made: Any = routes.put_answer(status)
            self.written[status] = (made.status, made.headers.to_wsgi_list(), made.get_data())

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PATH and "sdht.refused" not in environ:
            method = environ.get("REQUEST_METHOD")
            answer = self._read(environ) if method == "GET" \
                else self._write(environ) if method == "PUT" else None
            if answer is not None:
                start_response(answer[0], answer[1])
                return [answer[2]]
        return self.wsgi(environ, start_response)

    def _read(self, environ: dict) -> Answer | None:
        """The answer of a read, or None when Flask must answer."""
        began = time.perf_counter()
        if faulty(self.app):
            return None
        found = _QUERY.fullmatch(environ.get("QUERY_STRING", ""))
        if found is None:
            return None
        try:
            key = unquote(found.group(1), errors="strict")
        except UnicodeDecodeError:
            return None
        with self.app.app_context():
            if not auth.serves(environ.get("REMOTE_ADDR") or ""):
                return None
            try:
                held = store()
                view = held.ring()   # read once: the key's limits and the epoch stamp
                raw = held.get(check_key(key, params(view)))
            except ApiError:
                return None
            if raw is None:
                return None   # Flask answers the 404
            headers = [("Content-Type", MSGPACK), ("Content-Length", str(len(raw))),
                       *stamp_headers(view)]
            self.metrics.observe_request(PATH, "GET", "200", time.perf_counter() - began)
        return "200 OK", headers, raw

    def _write(self, environ: dict) -> Answer | None:
        """The answer of a write the store took or already held, or None when Flask must
        answer (and nothing has changed)."""
        return self.write_group([environ])[0]

    def write_group(self, environs: list[dict]) -> list[Answer | None]:
        """The answers of several writes, merged in one store transaction (one durable commit:
        the worker's group commit, :mod:`storage.groupcommit`) in the order given, each answered
        as if it came alone; None for each that Flask must answer, whose entry is not merged.

        A write is merged here only if it is admitted (:meth:`_admit`) under the same ring
        parameters as the first one admitted; a later ring's writes go to Flask. If the
        transaction fails, nothing was applied and every write goes to Flask.
        """
        answers: list[Answer | None] = [None] * len(environs)
        with self.app.app_context():
            admitted = [self._admit(environ) for environ in environs]
            first = next((a for a in admitted if a is not None), None)
            if first is None:
                return answers
            p = first.params
            chosen = [i for i, a in enumerate(admitted)
                      if a is not None and (a.params is p or a.params == p)]
            try:
                results = store().put_many([admitted[i].entry for i in chosen], p)
            except Exception:  # noqa: BLE001  its transaction was rolled back: nothing applied
                return answers
            for i, result in zip(chosen, results):
                answers[i] = self._written(environs[i], admitted[i], result)
        return answers

    def _admit(self, environ: dict) -> Admitted | None:
        """A write's entry and ring, admitted as the route admits it, or None when Flask must
        answer it (nothing changes before the merge, so Flask may do any of it again). Runs in
        the app's context."""
        began = time.perf_counter()
        if faulty(self.app) or _SIGNED in environ:
            return None
        data = held_body(environ)
        if data is None or not auth.serves(environ.get("REMOTE_ADDR") or ""):
            return None
        # Whatever fails here (a 4xx of the route, input nested too deep, a bug), Flask
        # answers its way, with its JSON body, event and metrics.
        try:
            # In the route's order: who writes, the body, admission, access. The ring is read
            # once: for the limits and for the epoch stamp.
            view = store().ring()
            p = params(view)
            signer = routes.write_signer(signed=False)
            entry = admit(unpackb(data), p, data)
            routes.may_write([entry], signer)
        except Exception:  # noqa: BLE001
            return None
        return Admitted(entry, view, p, began)

    def _written(self, environ: dict, written: Admitted, result: Any) -> Answer | None:
        """The answer of an admitted write the store merged with ``result``; None when it was
        superseded (nothing applied, :data:`_ANSWERED`: Flask answers the 409)."""
        answer = self.written.get(result.status)
        if answer is None:
            return None
        # The store has it: from here this is the only answer.
        mets = self.metrics
        mets.count_writes([result], migrated=environ.get(_MIGRATION) == "1")
        status, headers, body = answer
        headers = [*headers, *stamp_headers(written.view)]
        code = status[:3]
        eventlog.keep(self.app.config["DATA_DIR"],
                      eventlog.single_write(getattr(written.entry, "key", None), int(code)))
        mets.observe_request(PATH, "PUT", code, time.perf_counter() - written.began)
        return status, headers, body


class Admitted(NamedTuple):
    """A write the fast path admitted, not merged yet: its entry, the ring it was admitted
    under and that ring's parameters, and when its answer began (for the latency metric)."""

    entry: Any
    view: Any
    params: Any
    began: float


def faulty(app: Flask) -> bool:
    """Whether ``app``'s test-only faults are on: Flask's hook makes them (storage.metrics),
    so a fast path hands every request to Flask then."""
    cfg = app.config
    return bool(cfg["TEST_DELAY_MS"] or cfg["TEST_ERROR_RATE"])


def held_body(environ: dict) -> bytes | None:
    """The request body as :mod:`storage.limits` left it in memory, without consuming it (Flask
    may still read it); None when there is none, or it is not held as that middleware holds it."""
    stream, length = environ.get("wsgi.input"), environ.get("CONTENT_LENGTH") or ""
    if not isinstance(stream, io.BytesIO) or not length.isdigit() or stream.tell():
        return None
    data = stream.getvalue()
    return data if data and len(data) == int(length) else None
