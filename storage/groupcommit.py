"""Group commit: one-record writes that arrive together share one durable commit (issue 16).

The worker's event loop serves a one-record write itself (:func:`storage.lean.inline`), and
each used to be its own LMDB transaction: a durable commit, two waits for the disk. One node
could then take at most one write per commit time, however many clients wrote at once. Now the
writes that turn whole during one turn of the loop are held until the turn's end
(:class:`storage.worker.Worker`), then admitted one by one, merged in one transaction in the
order they arrived (:meth:`storage.fastpath.HotPath.write_group`), and answered after its one
commit, each as it would have been answered alone. A lone write is served as before.

Nothing is acknowledged before the commit that holds it. A write the fast path would not answer
alone (refused, superseded, signed, on a changed ring: :mod:`storage.fastpath`) is not merged
in the group; it is served on its own after the group's commit, by Flask, exactly as before.
Writes that arrive together are concurrent, so merging them in arrival order is one of the
orders they could have had; the accept rule's order makes the held entry the same in any order.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from storage import lean
from storage.fastpath import PATH as RECORD_PATH
from storage.fastpath import EXTENSION, Answer, HotPath

#: The requests a turn's group holds: a one-record write.
GROUPED = ("PUT", RECORD_PATH)
#: Writes merged in one transaction at most; a larger turn's writes take several commits
#: (a commit's pages and the answers' wait stay bounded).
MAX_GROUP = 64

#: ``(conn, request)``: a held write and the connection it came on.
Held = tuple[Any, lean.Request]


def joins(request: lean.Request) -> bool:
    """Whether ``request`` waits for the end of the turn, to share its commit."""
    return (request.method, request.path) == GROUPED


def chunks(held: list[Held]) -> Iterable[list[Held]]:
    """``held`` in groups of at most :data:`MAX_GROUP`, in arrival order."""
    for i in range(0, len(held), MAX_GROUP):
        yield held[i:i + MAX_GROUP]


def answers(wsgi: Any, base: dict, group: list[Held]) -> list[Answer | None]:
    """Merge the writes of ``group`` in one transaction of app ``wsgi``; their answers, None
    for each one the app must serve on its own (it was not merged). ``base``: the worker's
    base environ (:func:`storage.lean.environ`)."""
    hot: HotPath | None = getattr(wsgi, "extensions", {}).get(EXTENSION)
    if hot is None:   # not the storage app: serve each the usual way
        return [None] * len(group)
    environs = [lean.environ(request, base, conn.sock, conn.client, conn.server, None)
                for conn, request in group]
    return hot.write_group(environs)


def answering(answer: Answer) -> Callable[[dict, Any], list[bytes]]:
    """A WSGI app that answers ``answer`` (the group's answer of one write), for
    :func:`storage.lean.serve` to write as it writes every answer."""
    status, headers, body = answer

    def app(_environ: dict, start_response: Any) -> list[bytes]:
        start_response(status, headers)
        return [body]
    return app
