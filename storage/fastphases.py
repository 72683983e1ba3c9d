"""The acceptor's two phases, ``POST /v1/names/prepare`` and ``/v1/names/accept``, without
Flask's dispatch (issue 13).

An uncontended ``register`` is one accept to each of the name's three replicas, so a
registration costs three node requests, and Flask's request context, routing and hooks were
about a third of a phase request's Python time (docs/benchmarks.md, "Unique names"). This WSGI
middleware sits behind :class:`storage.fastpath.HotPath` (and so behind :mod:`storage.limits`,
which has read the body) and answers the plain case itself with the route's own functions
(:mod:`storage.names_routes`): the same authority rule (:func:`storage.auth.authority`: signed
by the operator or a member; in development mode, loopback only, :func:`storage.auth.serves`),
the same message check (:func:`~storage.names_routes.parse_message`: the ballot fenced against
the future, the claim's proof-of-work gate), the same store transaction
(:func:`~storage.names_routes.apply`, where the epoch fence is), the same count and answer
(:func:`~storage.names_routes.answered`), the epoch and node headers
(:func:`storage.http.stamp_headers`) and the request metrics under the route's own labels. A
phase answered 200 makes no event (:func:`storage.eventlog.classify`), so none is logged here.

Everything before the phase runs changes nothing, so any request that is not the plain case
goes to Flask unchanged, which answers it as before (its JSON errors, event and metrics): a
request the limits refused, the test-only faults on, a client the node does not serve, a
request not signed by someone it trusts, a body that is empty, malformed or not a phase
message. Once the phase has run, its answer comes from here, never from a second run: if it
failed (the commit failed, or no transaction took it in time, when it may yet be applied),
Flask answers that error (:data:`storage.names_routes.FAILED`) without running it again.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

from flask import Flask
from werkzeug.datastructures import EnvironHeaders

from sdht.wire import MSGPACK, unpackb

from . import acceptor, auth, metrics, names_routes
from .fastpath import Answer, faulty, held_body
from .http import params, stamp_headers, store


#: Where :func:`init_app` leaves the app's phases, in ``app.extensions``: the worker's group
#: commit runs phases through it (:mod:`storage.groupcommit`).
EXTENSION = "sdht.phases"


def init_app(app: Flask) -> None:
    """Put the phases' fast path in front of ``app``'s WSGI callable (before
    :func:`storage.fastpath.init_app`, whose path then runs in front of this one)."""
    phases = app.extensions[EXTENSION] = Phases(app, app.wsgi_app)
    app.wsgi_app = phases  # type: ignore[method-assign]


class Phases:
    """Answers a phase request of a client the node serves, signed as the route needs it and
    carrying a well-formed message; hands every other request to ``wsgi``."""

    def __init__(self, app: Flask, wsgi: Any) -> None:
        self.app, self.wsgi = app, wsgi

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        route = environ.get("PATH_INFO")
        phase = names_routes.PHASES.get(route) if isinstance(route, str) else None
        # A phase that ran and failed (the worker's group commit) is Flask's to answer.
        if phase is not None and environ.get("REQUEST_METHOD") == "POST" \
                and "sdht.refused" not in environ and names_routes.FAILED not in environ:
            answer = self.answer(phase, environ)
            if answer is not None:
                start_response(answer[0], answer[1])
                return [answer[2]]
        return self.wsgi(environ, start_response)

    def answer(self, phase: str, environ: dict) -> Answer | None:
        """The answer of ``phase`` requested by ``environ``, or None when Flask must answer
        (then either nothing ran, or the phase's error is in ``environ`` for Flask)."""
        got = self.answer_group([(phase, environ)])[0]
        if isinstance(got, Exception):   # it may be applied yet: never run it again
            environ[names_routes.FAILED] = got
            return None
        return got

    def answer_group(self, asked: list[tuple[str, dict]]) -> list[Answer | Exception | None]:
        """The answers of several phases (``(phase, environ)`` each), run in one write
        transaction in the order given (the worker's group commit, :mod:`storage.groupcommit`):
        for each, its answer; None when Flask must answer it and nothing ran; or the error it
        failed with once run, which Flask must answer without running it again."""
        out: list[Answer | Exception | None] = [None] * len(asked)
        with self.app.app_context():
            admitted = [(i, self._admit(phase, environ)) for i, (phase, environ) in
                        enumerate(asked)]
            admitted = [(i, got) for i, got in admitted if got is not None]
            if not admitted:
                return out
            ops = [names_routes.operation(asked[i][0], message, p)
                   for i, (message, p, _) in admitted]
            try:
                ran = acceptor.run_together(store(), ops)
            except Exception as exc:  # noqa: BLE001  none known to have run: never rerun
                ran = [(None, exc)] * len(ops)
            for (i, (_, _, began)), (answer, error) in zip(admitted, ran):
                phase, environ = asked[i]
                try:   # it ran: whatever happens now, Flask may only answer, never rerun it
                    out[i] = error if error is not None else \
                        self._answered(phase, environ, answer, began)
                except Exception as exc:  # noqa: BLE001
                    out[i] = exc
        return out

    def _admit(self, phase: str, environ: dict) -> tuple[Any, Any, float] | None:
        """``(message, params, when it began)`` of a phase request the route would run, or None
        when Flask must answer it. Runs in the app's context."""
        began = time.perf_counter()
        if faulty(self.app):
            return None
        data = held_body(environ)
        if data is None:
            return None
        route = environ["PATH_INFO"]
        # Nothing has changed yet, so Flask may do any of this again: whatever fails here (a
        # 4xx of the route, input nested too deep, a bug), Flask answers its way.
        try:
            if not auth.serves(environ.get("REMOTE_ADDR") or ""):
                return None
            query = environ.get("QUERY_STRING") or ""
            # The route's order: who asks, then the message.
            auth.authority("POST", route + (f"?{query}" if query else ""), data,
                           EnvironHeaders(environ))
            p = params()
            return names_routes.parse_message(unpackb(data), p, phase == "accept"), p, began
        except Exception:  # noqa: BLE001
            return None

    def _answered(self, phase: str, environ: dict, answer: Any, began: float) -> Answer:
        """The answer of ``phase`` that ran: from here this is the only answer."""
        body = names_routes.answered(phase, answer)
        headers = [("Content-Type", MSGPACK), ("Content-Length", str(len(body))),
                   *stamp_headers()]
        route = environ["PATH_INFO"]
        metrics.current().observe_request(route, "POST", "200", time.perf_counter() - began)
        return "200 OK", headers, body
