"""Sessions: one client's reads and writes carried through a causal context (:mod:`sdht.session`).

``ring.session()`` returns a :class:`Session`. For every key its context holds it gives read your
writes, monotonic reads, monotonic writes and writes follow reads, whichever replicas answer
(docs/http-api.md, "Guarantees"). Its context can be exported as JSON and imported by another
session, in this process or elsewhere, or sent to any node's ``/kv-store`` gateway, which runs
the same code: a Python client and a curl client can share one session.

A read with a context (:func:`read_at_least`) asks ``r`` replicas first. When the versions they
answer are below the context's, or one fails or stays silent for :data:`HEDGE` seconds, it asks
every replica of the key, writes the version it finds back to the replicas behind, and keeps
asking until its deadline; then it raises :class:`~sdht.errors.CausalTimeout` rather than return
an older version. Its writes are minted later than every version the context has seen, and
above the context's version of their key (the ``after`` and ``above`` of the ring's writes).
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait as wait_any
from typing import Any

from .errors import CausalTimeout, SDHTError
from .kinds import common
from .kinds.register import Record, winner
from .quorum import Quorum
from .session import (EMPTY, Context, Version, decode, dumps, encode, loads, merge, observe,
                      satisfies, version_of)

#: Seconds a read waits for the replicas to reach the context's version, by default.
DEFAULT_WAIT = 2.0
#: Seconds the first ``r`` replicas have to answer before a read with a context asks the others.
HEDGE = 0.25
#: The pause before asking a replica again that answered behind (or failed): the first, then
#: doubled up to the last.
POLL_FIRST, POLL_MAX = 0.02, 0.25


class Session:
    """A causal session over a :class:`sdht.Ring` (``ring.session()``).

    :param ring: the ring to read and write through.
    :param context: a context to start from (its JSON form, JSON text, or a
        :class:`~sdht.session.Context`), as another session exported it.
    :param r: replies each read waits for (default: the ring's ``r``); ``r=1`` reads fast and
        keeps this session's guarantees through its context.
    :param wait: seconds a read may take, waiting for a replica to reach the context's
        version included.
    :raises InvalidContext: when ``context`` is not a valid causal context.
    """

    def __init__(self, ring: Any, context: Any = None, *, r: int | None = None,
                 wait: float = DEFAULT_WAIT) -> None:
        self.ring = ring
        self.r = r
        self.wait = wait
        self._lock = threading.Lock()
        self._context = EMPTY
        if context is not None:
            self.merge(context)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to release: the ring belongs to its creator, the context to the caller."""

    # -- the context ------------------------------------------------------------------------------

    @property
    def context(self) -> Context:
        """What this session has written and read."""
        return self._context

    def export(self) -> dict[str, Any]:
        """The context's JSON form (``causal-context`` of the HTTP API)."""
        return encode(self._context)

    def export_json(self) -> str:
        """The context as JSON text."""
        return dumps(self._context)

    def merge(self, context: Any) -> Context:
        """Import ``context`` (JSON form, text or Context): this session has now seen what it
        has seen too. Returns the merged context.

        :raises InvalidContext: when it is not a valid causal context.
        """
        if isinstance(context, (str, bytes)):
            context = loads(context)
        elif not isinstance(context, Context):
            context = decode(context)
        with self._lock:
            self._context = merge(self._context, context)
            return self._context

    def _observe(self, key: str, version: Version) -> None:
        with self._lock:
            self._context = observe(self._context, key, version)

    # -- reads and writes -------------------------------------------------------------------------

    def get(self, key: str, default: Any = None, *, r: int | None = None,
            wait: float | None = None) -> Any:
        """The value of ``key`` (``default`` when missing or deleted), never older than this
        session has seen. ``r`` and ``wait`` override the session's for this read.

        :raises CausalTimeout: when no replica reached the context's version of ``key`` in
            time (with ``r`` replies).
        """
        rec = self.get_record(key, r=r, wait=wait)
        return default if rec is None or rec.deleted else rec.value

    def get_record(self, key: str, *, r: int | None = None,
                   wait: float | None = None) -> Record | None:
        """The winning record of ``key`` (a tombstone included) or None, as :meth:`get`."""
        quorum: Quorum = self.ring.quorum
        decay = quorum.handle.current().params["decay"]
        rec = read_at_least(quorum, key, self._context.floor(key), r or self.r,
                            self.wait if wait is None else wait)
        if rec is not None:
            self._observe(key, version_of(rec, decay))
        return rec

    def set(self, key: str, value: Any, work: float | None = None) -> Record:
        """Write ``value`` after everything this session has seen (:meth:`sdht.Ring.set`)."""
        return self._write(key, value, work, deleted=False)

    def delete(self, key: str, work: float | None = None) -> Record:
        """Delete ``key`` after everything this session has seen (a tombstone)."""
        return self._write(key, None, work, deleted=True)

    def _write(self, key: str, value: Any, work: float | None, deleted: bool) -> Record:
        ctx = self._context
        floor = ctx.floor(key)
        # Later than all the session saw, above its version of the key; re-minted within the
        # ring's margin when that takes more work, else WriteConflict (Ring._write's rules).
        rec = self.ring._write(key, value, work, deleted, after=ctx.t,
                               above=floor.score if floor is not None else -math.inf)
        self._observe(key, version_of(rec, self.ring.params["decay"]))
        return rec


def read_at_least(quorum: Quorum, key: str, floor: Version | None, r: int | None = None,
                  wait: float = DEFAULT_WAIT) -> Record | None:
    """Read ``key`` from ``r`` replicas (default: the ring's ``r``) and return the winner (a
    tombstone included) or None, never a version below ``floor``.

    Asks the first ``r`` replicas (healthy ones first); when they answer below ``floor``, one
    fails, or they are silent for :data:`HEDGE` seconds, asks every replica, and again each
    that answered behind, until ``r`` have answered and the best answer reaches ``floor``. The
    replicas that answered behind it are then sent it (read repair).

    :raises CausalTimeout: when that has not happened within ``wait`` seconds.
    """
    handle = quorum.handle
    common.check_key(key, handle.current().params)
    start = time.monotonic()
    deadline = start + wait
    inflight: dict[str, Future] = {}
    answers: dict[str, Record | None] = {}
    errors: dict[str, str] = {}
    next_ask: dict[str, float] = {}
    pauses: dict[str, float] = {}
    best: Record | None = None
    widened, moved = False, True
    while True:
        if moved:   # where the key is, again only when a node reported a newer ring
            view = handle.current()
            p = view.params
            replicas = quorum.health.order(view.readers.for_key(key))
            need = min(r or p["r"], len(replicas))
        got = [n for n in replicas if n in answers]
        if len(got) >= need and satisfies(best, floor, p["decay"]):
            for node in got:
                _repair_if_behind(quorum, node, answers[node], best)
            for node, fut in inflight.items():   # and those that answer after this returns
                fut.add_done_callback(lambda f, node=node: _repair_if_behind(
                    quorum, node, best if f.exception() else f.result()[0], best))
            return best
        now = time.monotonic()
        if now >= deadline:
            raise CausalTimeout(
                f"read of {key!r}: {len(got)} of {need} replicas answered, and none with the "
                f"session's version, within {wait:g}s" if floor is not None else
                f"read of {key!r}: {len(got)} of {need} replicas answered within {wait:g}s",
                key, need, len(got), errors)
        # Widen to every replica once the first ones are behind, failing or slow.
        widened = widened or bool(errors) or len(got) >= need or now - start >= HEDGE
        for node in replicas if widened else replicas[:need]:
            if node not in inflight and next_ask.get(node, 0.0) <= now:
                inflight[node] = handle.transport.submit(quorum.call, node, quorum.read_one,
                                                         node, key, p)
        until = min([deadline, *(t for n, t in next_ask.items() if n not in inflight)])
        if not widened:
            until = min(until, start + HEDGE)
        if inflight:
            wait_any(list(inflight.values()), timeout=max(0.0, until - now),
                     return_when=FIRST_COMPLETED)
        else:
            time.sleep(max(0.0, until - now))
        epochs = []
        for node, fut in list(inflight.items()):
            if not fut.done():
                continue
            del inflight[node]
            pauses[node] = min(POLL_MAX, pauses.get(node, POLL_FIRST / 2) * 2)
            next_ask[node] = time.monotonic() + pauses[node]
            try:
                rec, epoch = fut.result()
            except SDHTError as exc:
                errors[node] = str(exc)
                continue
            errors.pop(node, None)
            epochs.append(epoch)
            answers[node] = rec
            best = winner([best, rec], p["decay"])
        moved = handle.noticed(epochs)   # a newer ring: the next round asks where the key is


def _repair_if_behind(quorum: Quorum, node: str, held: Record | None,
                      best: Record | None) -> None:
    """Send ``best`` to ``node`` when what it answered, ``held``, is not it (read repair)."""
    if best is not None and (held is None or held.digest != best.digest):
        try:
            quorum.handle.transport.submit(quorum.repair, node, [best])
        except RuntimeError:   # the ring was closed meanwhile: anti-entropy will do it
            pass


__all__ = ["DEFAULT_WAIT", "HEDGE", "Session", "read_at_least"]
