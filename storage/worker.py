"""The storage node's gunicorn worker (``worker_class`` in :mod:`storage.gunicorn_conf`):
gunicorn's ``gthread``, handed whole requests only (docs/security.md), with the lean lane
(:mod:`storage.lean`) in front of gunicorn's parser. One class serves every gunicorn from 20.1
(Debian bookworm's) to 27.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import selectors
import socket
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.http import wsgi as gwsgi
from gunicorn.workers.gthread import ThreadWorker

from sdht.wire import EPOCH_HEADER, NODE_HEADER
from storage import groupcommit, lean
from storage.config import DEFAULT_CONFIG
from storage.limits import BUFFER_BYTES, CLOSE, LINGER, RECV_BYTES, Incoming, Refused

#: Seconds between a worker's heartbeats to the arbiter (far below the 60 s ``--timeout``).
HEARTBEAT = 1.0
# gthread's handle returns (keepalive, conn) up to gunicorn 23, where finish_request takes fs alone
_HANDLE_PAIRS = list(inspect.signature(ThreadWorker.finish_request).parameters) == ["self", "fs"]


class Worker(ThreadWorker):
    """gunicorn's ``gthread`` worker, handing a connection to a thread only once its request is
    whole (:mod:`storage.limits`, docs/security.md).

    gthread gives a thread every connection that turns readable, and the thread then blocks
    until the request has arrived: a client sending a header byte a second, or an upload that
    stops, holds a thread each, and a few hundred of them hold them all. Here the event loop
    reads requests without blocking (:class:`storage.limits.Incoming`) under the node's
    deadlines and limits, and refuses those it must itself. A slow client costs a socket and
    its buffer, never a thread; threads run whole requests only.

    It overrides what gthread of every gunicorn from 20.1 to 27 has: ``enqueue_req``, where a
    connection goes to the thread pool (new, kept alive or with a pipelined request);
    ``murder_keepalived``, called at every turn of the event loop (where the turn's writes and
    phases are served together, :mod:`storage.groupcommit`); ``handle_request``, to
    close a connection whose body the app refused unread; ``handle``, where a thread serves a
    plain request in the lean lane (:mod:`storage.lean`; a one-record read or write, or an
    acceptor's phase, the loop serves itself) instead of gunicorn's parser; and, before
    gunicorn 24, ``finish_request``, which left a pipelined request unanswered. TLS connections
    go the usual way.

    A connection it closes, the loop drains for :data:`storage.limits.LINGER` seconds first,
    without blocking: closing with unread bytes would reset it before the client read the
    answer, and gunicorn 27 drains such a connection in the loop's own thread, blocking it for
    up to two seconds (a client that asks ``Connection: close`` and stays could stall it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arriving: dict[Any, Incoming] = {}
        self._writes: list[groupcommit.Held] = []   # whole this turn, to share a commit
        # Connections closing: when to close them, and whether nr_conns still counts them.
        self._draining: dict[Any, tuple[float, bool]] = {}
        self._held = 0                          # bytes in the buffers of self._arriving
        self._swept = 0.0
        self._limits: tuple[int, float] | None = None
        self._lean: lean.Limits | None | bool = False  # False: not decided yet
        self._base: dict = {}

    def notify(self) -> None:
        """Tell the arbiter this worker is alive, at most every :data:`HEARTBEAT` seconds:
        gthread calls it at every turn of its event loop, a syscall on the heartbeat file for
        every request, where the arbiter only needs one within ``--timeout`` (60 s)."""
        now = time.monotonic()
        if now - getattr(self, "_beat", -HEARTBEAT) >= HEARTBEAT:
            self._beat = now
            super().notify()

    def limits(self) -> tuple[int, float]:
        """``(MAX_BODY_BYTES, READ_TIMEOUT)`` of the app this worker serves."""
        if self._limits is None:
            config = getattr(self.wsgi, "config", None) or DEFAULT_CONFIG
            self._limits = (int(config.get("MAX_BODY_BYTES", DEFAULT_CONFIG["MAX_BODY_BYTES"])),
                            float(config.get("READ_TIMEOUT", DEFAULT_CONFIG["READ_TIMEOUT"])))
        return self._limits

    def _poller(self, method: Any, *args: Any) -> None:
        lock = getattr(self, "_lock", None)  # gunicorn < 21: the pool's threads use the poller
        with lock if lock is not None else contextlib.nullcontext():
            method(*args)

    def enqueue_req(self, conn: Any) -> None:
        if self.cfg.is_ssl:
            return super().enqueue_req(conn)
        data = b""
        if conn.parser is not None:  # bytes read past the last request (a pipelined one)
            data = conn.parser.unreader.buf.getvalue()
            conn.parser.unreader.buf = io.BytesIO()
        incoming = Incoming(*self.limits(), time.monotonic(), data)
        self._arriving[conn] = incoming
        self._held += len(data)
        conn.sock.setblocking(False)
        self._poller(self.poller.register, conn.sock, selectors.EVENT_READ,
                     partial(self._readable, conn))
        # A kept-alive connection comes here readable: most requests are whole at once.
        self._readable(conn, conn.sock) if not data else self._advance(conn, incoming)

    def _readable(self, conn: Any, _sock: Any) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        try:
            incoming = self._arriving.get(conn)
            if not data or (incoming is None and len(data) == RECV_BYTES):
                self._drop(conn)  # the client left, or floods after its refusal
            elif incoming is not None:
                incoming.add(data, time.monotonic())
                self._held += len(data)
                self._advance(conn, incoming)
        except Exception:  # one connection must never stop the event loop
            self.log.exception("receiving a request")
            self._drop(conn)

    def _advance(self, conn: Any, incoming: Incoming) -> None:
        try:
            if incoming.whole(time.monotonic()):
                return self._hand_over(conn, incoming)
            if self._held > BUFFER_BYTES:
                raise Refused(503, "busy", "the node is receiving too much; try again")
        except Refused as refused:
            return self._refuse(conn, refused)
        if incoming.expect:
            incoming.expect = False
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _forget(self, conn: Any) -> bool:
        """Stop watching ``conn``; return whether nr_conns counts it."""
        incoming = self._arriving.pop(conn, None)
        counted = self._draining.pop(conn, (0, True))[1]
        if incoming is not None:
            self._held -= incoming.size
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poller(self.poller.unregister, conn.sock)
        return counted

    def _hand_over(self, conn: Any, incoming: Incoming) -> None:
        self._forget(conn)
        conn.init()  # blocking again; makes a new connection's parser
        data = incoming.data()
        plain = self._plain(conn, data)
        conn.sdht_lean = plain and plain[0]  # for handle, in the thread
        conn.parser.unreader.unread(plain[1] if plain else data)  # pipelined ones stay
        conn.close = partial(self._linger, conn, False)  # however gunicorn closes it
        if plain and not plain[1] and groupcommit.joins(plain[0]):
            return self._writes.append((conn, plain[0]))  # served at the turn's end
        if plain and not plain[1] and lean.inline(plain[0]):
            return self._serve_inline(conn, plain[0])
        super().enqueue_req(conn)

    def _plain(self, conn: Any, data: bytes) -> tuple[lean.Request, bytes] | None:
        """The request in ``data`` if the lean lane serves it, and what follows it."""
        if self._lean is False:
            self._lean = lean.limits_of(self.cfg)
            self._base = gwsgi.base_environ(self.cfg)
        if self._lean is None or not isinstance(conn.server, tuple) \
                or conn.parser.unreader.buf.getvalue():
            return None
        return lean.parse(data, data.find(b"\r\n\r\n"), self._lean)

    def _commit_held(self) -> None:
        """Serve the writes held this turn, each group in one commit (storage.groupcommit)."""
        held, self._writes = self._writes, []
        for group in groupcommit.chunks(held):
            answers: list = [None] * len(group)
            try:
                if len(group) > 1:
                    answers = groupcommit.answers(self.wsgi, self._base, group)
            except Exception:  # each is served alone: none ran, or a write is held already
                self.log.exception("committing a group of writes")
            for (conn, request), answer in zip(group, answers):
                self._serve_inline(conn, request, answer)

    def _serve_inline(self, conn: Any, request: lean.Request, answer: Any = None) -> None:
        """Serve ``request`` in the event loop's thread (:func:`storage.lean.inline`), or
        answer ``answer`` (its group's) if given, then keep or close the connection as gthread
        does after a thread served it; an answer the client does not take at once is sent on
        from a thread."""
        conn.sdht_lean = None
        app = groupcommit.answering(answer, self.wsgi) if answer is not None else None
        keepalive, unsent = lean.serve(self, conn, request, self._base, inline=True, app=app)
        if unsent:
            conn.sdht_unsent = (unsent, keepalive)
            return super().enqueue_req(conn)
        done: Any = futures.Future()
        done.set_result((keepalive, conn) if _HANDLE_PAIRS else keepalive)
        if _HANDLE_PAIRS:
            done.conn = conn  # gunicorn < 24
        return self.finish_request(done) if _HANDLE_PAIRS else self.finish_request(conn, done)

    def finish_request(self, *args: Any) -> None:
        """gunicorn before 24 (Debian bookworm's 20.1) arms a kept-alive connection for reading
        even when its next, pipelined request is in the buffer already, and the client then
        waits forever. Such a connection is armed for writing, ready at once: at its next turn
        the loop takes the request up (:meth:`_resume`)."""
        fs = args[-1]
        if _HANDLE_PAIRS and not self.cfg.is_ssl and not fs.cancelled() and not fs.exception():
            keepalive, conn = fs.result()
            if keepalive and self.alive and conn.parser and conn.parser.unreader.buf.tell():
                conn.sock.setblocking(False)
                return self._poller(self.poller.register, conn.sock, selectors.EVENT_WRITE,
                                    partial(self._resume, conn))
        return super().finish_request(*args)

    def _resume(self, conn: Any, _sock: Any) -> None:
        self._poller(self.poller.unregister, conn.sock)
        self.enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Serve the connection's request: in the lean lane when :meth:`_hand_over` found it
        plain, else gunicorn's way; or send the rest of an answer served inline."""
        request = getattr(conn, "sdht_lean", None)
        unsent = getattr(conn, "sdht_unsent", None)
        if unsent is not None:
            conn.sdht_unsent = None
            keepalive = lean.send_rest(conn.sock, *unsent, self.limits()[1])
        elif request is not None:
            conn.sdht_lean = None
            keepalive = lean.serve(self, conn, request, self._base)[0]
        else:
            return super().handle(conn)
        return (keepalive, conn) if _HANDLE_PAIRS else keepalive

    def _linger(self, conn: Any, counted: bool, graceful: bool = False) -> None:
        """Close ``conn`` after a moment of draining (the class docstring); gunicorn has
        stopped counting it when it calls this as ``conn.close``. Thread-safe."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self._draining[conn] = (time.monotonic() + LINGER, counted)
            self._poller(self.poller.register, conn.sock, selectors.EVENT_READ,
                         partial(self._readable, conn))
        except Exception:  # gone already: close now (and never raise into gunicorn)
            self._draining.pop(conn, None)
            if counted:
                self.nr_conns -= 1
            type(conn).close(conn)

    def _drop(self, conn: Any) -> None:
        if self._forget(conn):
            self.nr_conns -= 1
        type(conn).close(conn)

    def _refuse(self, conn: Any, refused: Refused) -> None:
        """Answer ``refused``, then linger and close."""
        self.log.debug("refused %s from %s: %s", refused.status, conn.client, refused)
        self._forget(conn)
        try:
            conn.sock.send(refused.answer(self._stamp()))
        except OSError:
            return self._drop(conn)
        self._linger(conn, True)

    def _stamp(self) -> list[tuple[str, str]]:
        """The epoch and node headers that every answer of the node carries (storage.http)."""
        from storage.http import ring_view
        app = self.wsgi
        try:
            with app.app_context():
                view, node = ring_view(), app.config["NODE_ID"]
        except Exception:  # not the storage app, or its store is broken: no stamp
            return []
        return [(EPOCH_HEADER, str(view.epoch if view else 0))] + (
            [(NODE_HEADER, node)] if node else [])

    def murder_keepalived(self, *args: Any, **kwargs: Any) -> None:
        self._commit_held()   # gthread calls this after each turn's events, in every version
        super().murder_keepalived(*args, **kwargs)
        force = bool(args and args[0]) or kwargs.get("force", False)
        now = time.monotonic()
        if now - self._swept < 0.25 and not force:
            return
        self._swept = now
        for conn, (until, _) in list(self._draining.items()):
            if force or now >= until:
                self._drop(conn)
        for conn, incoming in list(self._arriving.items()):
            if force or (not incoming.size and (now >= incoming.deadline or not self.alive)):
                self._drop(conn)  # nothing sent: nothing to answer
            elif now >= incoming.deadline:
                self._refuse(conn, Refused(408, "request_timeout",
                                           "the request did not arrive in time"))

    def handle_request(self, req: Any, conn: Any) -> bool:
        keepalive = super().handle_request(req, conn)
        return bool(keepalive) and not getattr(req.body, CLOSE, False)
