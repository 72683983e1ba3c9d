"""An in-process transport: the ring library talks to WSGI apps called directly, no sockets.

In the spirit of httpx's ``WSGITransport``: :class:`WSGITransport` maps node ids (``host:port``)
to WSGI applications, typically real storage nodes built by ``storage.app.create_app`` over real
LMDB directories, and answers :meth:`~sdht.transport.Transport.request` by calling the app with a
proper WSGI environ (werkzeug's ``EnvironBuilder``). Everything above ``request`` is the ordinary
:class:`~sdht.transport.Transport`: the same routes, encodings and fan-out thread pool, so a real
:class:`sdht.Ring` runs unchanged::

    apps = {"127.0.0.1:1": create_app({"DATA_DIR": d1, "NODE_ID": "127.0.0.1:1"}), ...}
    ring = sdht.Ring(["127.0.0.1:1"], transport=WSGITransport(apps))

A node id absent from the mapping, or marked down with :meth:`WSGITransport.mark_down`, raises
:class:`~sdht.errors.NodeUnavailable`, as a refused connection does. Nothing here times out or
fails half-way: tests of hung nodes, killed processes and durability need real nodes.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Mapping

from werkzeug.test import EnvironBuilder, run_wsgi_app

from .errors import NodeUnavailable
from .transport import DEFAULT_TIMEOUT, Transport
from .trust import Keys

#: A WSGI application: ``app(environ, start_response) -> iterable of bytes``.
WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]
#: Seconds :meth:`WSGITransport.close` waits at most for app calls in flight to end.
CLOSE_WAIT = 30.0


class WSGITransport(Transport):
    """A :class:`~sdht.transport.Transport` whose nodes are WSGI apps in this process.

    :param apps: node id (``host:port``) to WSGI app. The mapping is kept, not copied, so
        nodes added to it later (a node about to join) are reachable at once.
    :param keys: this party's keys, as for the HTTP transport.
    :param max_parallel: threads for fanning requests out to replicas.
    :param timeout: kept for the interface; in-process calls do not time out.
    """

    def __init__(self, apps: Mapping[str, WSGIApp], *, keys: Keys | None = None,
                 max_parallel: int = 16,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout, keys, max_parallel)
        self.apps = apps
        self.down: set[str] = set()
        # App calls in flight from any thread (the pool's, a ring's hint sender's), and
        # whether close() has begun: from then on no app is called.
        self._calls, self._closing = 0, False
        self._calls_done = threading.Condition()

    def mark_down(self, node: str) -> None:
        """Make ``node`` unreachable: its requests raise NodeUnavailable until :meth:`mark_up`."""
        self.down.add(node)

    def mark_up(self, node: str) -> None:
        """Make ``node`` reachable again (its data is as it was)."""
        self.down.discard(node)

    def close(self) -> None:
        """Wait for the calls in flight (read repairs, hints being sent, say), then stop.

        Unlike the HTTP transport, this waits: once it returns no thread calls an app through
        this transport (later calls raise NodeUnavailable), so the caller may close the apps'
        stores. A store closed under a write in another thread leaves LMDB's write lock held.
        """
        self.pool.shutdown(wait=True, cancel_futures=True)   # its tasks may still call
        with self._calls_done:
            self._closing = True
            self._calls_done.wait_for(lambda: self._calls == 0, CLOSE_WAIT)
        super().close()

    def _exchange(self, node: str, method: str, target: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        """Call ``node``'s app with one request; return its status, headers and raw body.

        :raises NodeUnavailable: when ``node`` is not in :attr:`apps` or is marked down.
        """
        app = None if node in self.down else self.apps.get(node)
        if app is None:
            why = "marked down" if node in self.down else "not served in this process"
            raise NodeUnavailable(f"{node} is unreachable: {why}", node)
        with self._calls_done:
            if self._closing:
                raise NodeUnavailable(f"{node} is unreachable: the transport is closed", node)
            self._calls += 1
        try:
            return self._call(app, node, method, target, data, headers)
        finally:
            with self._calls_done:
                self._calls -= 1
                self._calls_done.notify_all()

    def _call(self, app: WSGIApp, node: str, method: str, target: str, data: bytes | None,
              headers: dict[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        path, _, query = target.partition("?")
        builder = EnvironBuilder(path=path, base_url=f"http://{node}", query_string=query,
                                 method=method, data=data, headers=list(headers.items()),
                                 multithread=True,
                                 # a caller in this process is a loopback caller
                                 environ_base={"REMOTE_ADDR": "127.0.0.1"})
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        app_iter, status_line, answer = run_wsgi_app(app, environ, buffered=True)
        return int(status_line.split(None, 1)[0]), answer, b"".join(app_iter)
