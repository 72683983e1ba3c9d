"""A lighter dispatch for the node's hottest read, ``GET /v1/record`` (issue 16).

A read of one record costs the node about a millisecond of CPU, and Flask's request context,
routing and nine hooks were about 40% of it (py-spy of a worker; docs/benchmarks.md, "The
node's hot path"). This WSGI middleware sits in front of Flask (behind :mod:`storage.limits`,
which has read the body and slices the answer) and answers the common case itself, with the
same code and rules as the route: the key's check (:func:`storage.http.check_key`), the store,
the epoch and node headers (:func:`storage.http.stamp_headers`) and the request metrics
(:meth:`storage.metrics.Metrics.observe_request`) under the route's own labels.

Everything else goes to Flask unchanged, which answers it as before (its error bodies, its
event log): another route or method, a request the limits refused, a query it does not read
as a plain ``key=``, a key that fails its check or is not held, a client the node does not
serve (:func:`storage.auth.serves`), a node with the test-only faults on. A read changes
nothing, so handing it over after a look costs only the look. A hook that Flask runs on every
answer must be mirrored here: tests/test_fastpath.py compares both answers byte for byte, so
such a hook shows there first.
"""
from __future__ import annotations

import re
import time
from typing import Any, Iterable
from urllib.parse import unquote

from flask import Flask

from sdht.wire import MSGPACK

from . import auth, metrics
from .http import ApiError, check_key, params, stamp_headers, store

#: The route answered here, and its rule as the metrics label it.
PATH = "/v1/record"
#: A query of one ``key=`` of unreserved or %-escaped characters (what
#: :class:`sdht.transport.Transport` sends for most keys); any other goes to Flask.
_QUERY = re.compile(r"key=([A-Za-z0-9._~%-]+)")


def init_app(app: Flask) -> None:
    """Put the fast path in front of ``app``'s WSGI callable."""
    app.wsgi_app = HotReads(app, app.wsgi_app)  # type: ignore[method-assign]


class HotReads:
    """Answers ``GET /v1/record`` of a held key; hands every other request to ``wsgi``."""

    def __init__(self, app: Flask, wsgi: Any) -> None:
        self.app, self.wsgi = app, wsgi

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO") == PATH \
                and "sdht.refused" not in environ:
            answer = self._answer(environ)
            if answer is not None:
                start_response("200 OK", answer[0])
                return [answer[1]]
        return self.wsgi(environ, start_response)

    def _answer(self, environ: dict) -> tuple[list[tuple[str, str]], bytes] | None:
        """The headers and body of the answer, or None when Flask must answer."""
        began = time.perf_counter()
        cfg = self.app.config
        if cfg["TEST_DELAY_MS"] or cfg["TEST_ERROR_RATE"]:
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
                raw = store().get(check_key(key, params()))
            except ApiError:
                return None
            if raw is None:
                return None   # Flask answers the 404
            headers = [("Content-Type", MSGPACK), ("Content-Length", str(len(raw))),
                       *stamp_headers()]
            metrics.current().observe_request(PATH, "GET", "200", time.perf_counter() - began)
        return headers, raw
