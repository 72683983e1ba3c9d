"""Group commit: one-record writes (and acceptor phases) that arrive together share one durable
commit (issue 16).

The worker's event loop serves a one-record write itself (:func:`storage.lean.inline`), and
each used to be its own LMDB transaction: a durable commit, two waits for the disk. One node
could then take at most one write per commit time, however many clients wrote at once. Now the
writes that turn whole during one turn of the loop are held until the turn's end
(:class:`storage.worker.Worker`), then admitted one by one, merged in one transaction in the
order they arrived (:meth:`storage.fastpath.HotPath.write_group`), and answered after its one
commit, each as it would have been answered alone. A lone write is served as before. The
acceptor's phases, also served in the loop, are held alike and run together in one transaction
of their own (:meth:`storage.fastphases.Phases.answer_group`,
:func:`storage.acceptor.run_together`); one that failed once run is answered its error by the
app, never run again.

Both go through the process's shared write transactions (:mod:`storage.commits`), so the pool
threads' writes waiting at that moment join them too. Nothing is acknowledged before the commit
that holds it. A write the fast path would not answer
alone (refused, superseded, signed, on a changed ring: :mod:`storage.fastpath`) is not merged
in the group; it is served on its own after the group's commit, by Flask, exactly as before.
Writes that arrive together are concurrent, so merging them in arrival order is one of the
orders they could have had; the accept rule's order makes the held entry the same in any order.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from sdht.kinds.name import ACCEPT_ROUTE, PREPARE_ROUTE
from storage import fastpath, fastphases, lean, names_routes
from storage.fastpath import Answer

#: The requests a turn's group holds: a one-record write, and the acceptor's two phases
#: (their own transaction: storage.acceptor).
WRITE = ("PUT", fastpath.PATH)
GROUPED = frozenset({WRITE, ("POST", PREPARE_ROUTE), ("POST", ACCEPT_ROUTE)})
#: Requests run in one transaction at most; a larger turn's take several commits (a commit's
#: pages and the answers' wait stay bounded).
MAX_GROUP = 64

#: ``(conn, request)``: a held request and the connection it came on.
Held = tuple[Any, lean.Request]
#: What the group made of one request: its answer; None, to serve it alone (nothing of it ran);
#: or the error of a phase that ran, which the app answers without running it again.
Outcome = Answer | Exception | None


def joins(request: lean.Request) -> bool:
    """Whether ``request`` waits for the end of the turn, to share its commit."""
    return (request.method, request.path) in GROUPED


def chunks(held: list[Held]) -> Iterable[list[Held]]:
    """``held`` in groups of at most :data:`MAX_GROUP`, in arrival order."""
    for i in range(0, len(held), MAX_GROUP):
        yield held[i:i + MAX_GROUP]


def answers(wsgi: Any, base: dict, group: list[Held]) -> list[Outcome]:
    """Run the requests of ``group`` for app ``wsgi``: its writes merged in one transaction,
    its phases in another; what each came to (:data:`Outcome`). ``base``: the worker's base
    environ (:func:`storage.lean.environ`)."""
    extensions = getattr(wsgi, "extensions", {})
    hot, phases = extensions.get(fastpath.EXTENSION), extensions.get(fastphases.EXTENSION)
    out: list[Outcome] = [None] * len(group)
    if hot is None or phases is None:   # not the storage app: serve each the usual way
        return out
    environs = [lean.environ(request, base, conn.sock, conn.client, conn.server, None)
                for conn, request in group]
    kinds = [(request.method, request.path) == WRITE for _, request in group]
    writes = [i for i, write in enumerate(kinds) if write]
    asked = [i for i, write in enumerate(kinds) if not write]
    if writes:
        for i, answer in zip(writes, hot.write_group([environs[i] for i in writes])):
            out[i] = answer
    if asked:
        ran = phases.answer_group([(names_routes.PHASES[group[i][1].path], environs[i])
                                   for i in asked])
        for i, outcome in zip(asked, ran):
            out[i] = outcome
    return out


def answering(outcome: Answer | Exception, wsgi: Any) -> Callable[[dict, Any], Any]:
    """A WSGI app that answers ``outcome`` (:data:`Outcome`, not None), for
    :func:`storage.lean.serve` to write as it writes every answer: the group's answer, or for
    a phase that failed once run, app ``wsgi``'s answer of that error."""
    if isinstance(outcome, Exception):
        def failed(environ: dict, start_response: Any) -> Any:
            environ[names_routes.FAILED] = outcome   # the route answers it, never reruns it
            return wsgi(environ, start_response)
        return failed
    status, headers, body = outcome

    def app(_environ: dict, start_response: Any) -> list[bytes]:
        start_response(status, headers)
        return [body]
    return app
