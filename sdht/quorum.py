"""Quorums: ask a key's replicas in parallel and decide when enough of them have answered.

A read needs ``r`` replicas, a write ``w`` acknowledgements from each placement, current and
future (docs/design.md, "Flows"). :class:`Quorum` runs the requests (one per node; batches:
:func:`sdht.batch.rounds`), notes in :class:`~sdht.health.NodeHealth` which nodes answered,
re-routes when a node reports a newer ring, and raises :class:`~sdht.errors.QuorumError` when
too few answered.
"""
from __future__ import annotations

import logging
import queue
import time
from concurrent.futures import Future
from typing import Any, Callable, Mapping, TypeVar

from .errors import NodeError, QuorumError, SDHTError, TransportError
from .answers import check_answer, valid
from .fanout import After, Polled
from .handle import RingHandle
from .health import NodeHealth
from .hints import Hinter
from .lag import Lag
from .kinds import register
from .kinds.register import Record, winner
from .nodeapi import Call, PutOutcome
from .replicas import replica_sets, write_plan, write_shortfall
from .wire import SUPERSEDED

log = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["MAX_REROUTES", "Quorum", "check_answer", "valid"]

#: How many times an operation is re-routed after a node reports a newer ring.
MAX_REROUTES = 3

#: ``(results by node, errors by node, epochs seen)``, as :meth:`Quorum.gather` returns them.
Gathered = tuple[dict[str, Any], dict[str, str], list[int]]


class Quorum:
    """The replica requests of one client: parallel, health-aware, re-routed on a newer ring.

    :param handle: the ring view and transport to route by.
    :param health: failure memory shared by every request (a new one when None).
    """

    def __init__(self, handle: RingHandle, health: NodeHealth | None = None) -> None:
        self.handle = handle
        #: What this client saw of each node: the score that orders replicas, and the
        #: failure cooldown (docs/operating.md, "Routing by score").
        self.health = health or NodeHealth.from_env()
        handle.avoid = self.health.is_suspect   # a ring refresh asks suspects last
        #: Writes that missed a replica, handed to one that has them (hinted handoff).
        self.hinter = Hinter(handle.transport.request, self.health.missed)
        #: Replication delay as this client sees it (acknowledgement to the last replica).
        self.lag = Lag()

    # -- one key ------------------------------------------------------------------------------

    def read(self, key: str) -> Record | None:
        """Read ``key`` from ``r`` replicas; return the winner (a tombstone included) or None.

        Replicas that answered with an older version are sent the winner in the background
        (read repair).

        :raises QuorumError: when fewer than ``r`` replicas answered.
        """
        transport = self.handle.transport
        for _ in range(MAX_REROUTES):
            view = self.handle.current()
            p = view.params
            self.health.configure(p)
            replicas = view.readers.for_key(key)
            for node in filter(self.health.figures_due, replicas):   # every FIGURES_EVERY s
                transport.submit(self.learn, node)
            need = min(p["r"], len(replicas))
            # Ask r replicas (docs/design.md, "Flows", get), healthy ones first; the others only if
            # one of those fails, or answers a record that fails its checks (then it is faulty).
            calls = {node: (self.read_one, node, key, p) for node in self.health.order(replicas)}
            first = dict(list(calls.items())[:need])
            replies, errors, epochs = self.gather(
                first, need, spares={n: c for n, c in calls.items() if n not in first},
                split={n: self.read_call(n, key, p) for n in first})
            if self.handle.noticed(epochs):
                continue
            if len(replies) < need:
                raise QuorumError(f"read of {key!r}: {len(replies)} of {need} replicas answered",
                                  key, need, len(replies), errors)
            best = winner(list(replies.values()), p["decay"])
            if best is not None:
                for node, rec in replies.items():
                    if rec is None or rec.digest != best.digest:  # behind: the order is total
                        transport.submit(self.repair, node, [best])
            return best
        raise QuorumError(f"read of {key!r}: the ring kept changing", key)

    def replicate(self, rec: Record, acked: list[str] | None = None) -> float | None:
        """Write ``rec`` to its replicas until ``w`` of the current and of the future
        placement acknowledged. Returns None on success, or the higher score that beat it.

        :param acked: a list to set to the nodes that acknowledged ``rec`` (stored or held it).
        :raises QuorumError: when fewer than ``w`` of a placement acknowledged.
        """
        for _ in range(MAX_REROUTES):
            view = self.handle.current()
            w = view.params["w"]
            sets = replica_sets(view, rec.key)
            first, spare = write_plan(sets, self.health.is_suspect)
            targets = first + spare
            # Return once w of each placement answered, and a moment (sdht/fanout.py). Answers
            # in (superseded too) count.
            calls = {node: (self.write_one, node, rec, view.params) for node in targets}
            running: dict[str, Future] = {}
            replies, errors, epochs = self.gather(
                {n: calls[n] for n in first}, len(targets),
                spares={n: calls[n] for n in spare}, running=running,
                enough=lambda got: write_shortfall(sets, got, w) is None,
                split={n: self.handle.transport.put_record_call(n, rec) for n in first},
                after=lambda node, got: None if got[0].status != SUPERSEDED
                else (self.shown, node, rec, view.params, *got))
            if self.handle.noticed(epochs):
                continue  # placement moved while we wrote: write again where it is now
            if acked is not None:
                acked[:] = [n for n, o in replies.items() if o.status != SUPERSEDED]
            lost = [o.score for o in replies.values() if o.status == SUPERSEDED]
            if lost:
                return max(s for s in lost if s is not None)
            short = write_shortfall(sets, replies, w)
            if short is not None:
                got, need = short
                raise QuorumError(f"write of {rec.key!r}: {got} of {need} replicas "
                                  f"acknowledged", rec.key, need, got, errors)
            self.hinter.missing(rec, targets, list(replies), running)   # hinted handoff
            self.lag.track(time.monotonic(), running.values(),
                           skipped=len(targets) - len(replies) - len(running))
            return None
        raise QuorumError(f"write of {rec.key!r}: the ring kept changing", rec.key)

    def learn(self, node: str) -> None:
        """Learn what ``node`` publishes of itself (its ``/v1/health``: location) for the
        score; in the background, at most every :data:`sdht.health.FIGURES_EVERY` seconds."""
        try:
            self.health.learn(node, self.handle.transport.health(node))
        except SDHTError as exc:
            log.debug("figures of %s: %s", node, exc)

    def read_one(self, node: str, key: str,
                 params: Mapping[str, Any]) -> tuple[Record | None, int]:
        """One replica's answer for ``key`` (and its epoch), checked by :func:`check_answer`.

        :raises NodeError: when the answer fails its checks: the replica is faulty.
        """
        return self.handle.transport.run(node, self.read_call(node, key, params))

    def read_call(self, node: str, key: str, params: Mapping[str, Any]) -> Call:
        """:meth:`read_one` as a :class:`~sdht.nodeapi.Call` (:mod:`sdht.fanout` sends it)."""
        call = self.handle.transport.get_record_call(node, key, params)

        def then(reply: Any) -> tuple[Record | None, int]:
            rec, epoch = call.then(reply)
            check_answer(node, rec, key, params)
            return rec, epoch
        return call._replace(then=then)

    def write_one(self, node: str, rec: Record,
                  params: Mapping[str, Any]) -> tuple[PutOutcome, int]:
        """Write ``rec`` to one replica. A replica that says it holds a higher version must
        show it: the record it then answers must pass :func:`check_answer` and outrank
        ``rec``, and its score, not the one claimed, is what the write lost to (a faulty
        replica must not make writes fail or re-mint).

        :raises NodeError: when the replica cannot show the version it claimed.
        """
        return self.shown(node, rec, params, *self.handle.transport.put_record(node, rec))

    def shown(self, node: str, rec: Record, params: Mapping[str, Any], outcome: PutOutcome,
              epoch: int) -> tuple[PutOutcome, int]:
        """:meth:`write_one`'s result from ``node``'s answer ``(outcome, epoch)`` to the write
        of ``rec``: a superseded one is checked against the version the node then shows."""
        if outcome.status != SUPERSEDED:
            return outcome, epoch
        held, _ = self.handle.transport.get_record(node, rec.key, params)
        check_answer(node, held, rec.key, params)
        if held is None or not register.beats(held, rec, params["decay"]):
            raise NodeError(f"{node} claimed a version of {rec.key!r} above the write, and "
                            f"does not show one", node)
        return PutOutcome(SUPERSEDED, held.score(params["decay"]), held.digest), epoch

    def repair(self, node: str, records: list[Record]) -> None:
        """Read repair: write the winners back to a replica that answered behind. Best
        effort: anti-entropy catches what this misses."""
        try:
            self.handle.transport.put_many(node, records)
        except SDHTError as exc:
            log.debug("read repair of %d keys on %s failed: %s", len(records), node, exc)

    # -- running requests ---------------------------------------------------------------------

    def call(self, node: str, fn: Callable[..., T], *args: Any) -> T:
        """Run one request to ``node``, noting in :attr:`health` how long it took, or that
        it failed (unreachable or silent: a cooldown; an error answer: the error rate)."""
        return self.ended(node, self.health.started(node), fn, *args)

    def ended(self, node: str, rid: int, fn: Callable[..., T], *args: Any,
              took: float | None = None) -> T:
        """Run ``fn(*args)``, the rest of request ``rid`` to ``node``; note in :attr:`health`
        how it ended, as :meth:`call` does (``took``: its time, when not until now)."""
        try:
            result = fn(*args)
        except TransportError:
            self.health.failed(node, rid)
            raise
        except SDHTError:
            self.health.erred(node, rid)
            raise
        self.health.answered(node, rid, took)
        return result

    def gather(self, calls: dict[str, tuple], need: int,
               enough: Callable[[dict[str, Any]], bool] | None = None,
               spares: dict[str, tuple] | None = None,
               running: dict[str, Future] | None = None,
               split: Mapping[str, Call] | None = None, after: After | None = None) -> Gathered:
        """Run one call per node in parallel; return once ``need`` succeeded (or ``enough``
        of the results so far is true) or all finished; the others are left running.

        :param calls: per node, ``(fn, *args)``; ``fn`` returns ``(value, epoch)``.
        :param spares: calls started only when ``calls`` can no longer succeed without them
            (replicas beyond the first ``r`` of a read, suspect nodes of a write).
        :param running: when given, filled with the calls still running at the return, by
            node (a write hints those that then fail or stay silent).
        :param split: per node of ``calls``, the same call as a :class:`~sdht.nodeapi.Call`:
            then :class:`sdht.fanout.Polled` sends them from this thread when it can, and
            ``after`` tells which of their results need another request.
        :returns: ``(results by node, errors by node, epochs seen)``.
        """
        futures: dict[Future, str] = {}
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        epochs: list[int] = []
        spares = dict(spares or {})
        # Calls hand their futures here as they end (concurrent.futures.wait arms a waiter on
        # every future at every turn: 15% of a gather's CPU).
        finished: "queue.SimpleQueue[Future]" = queue.SimpleQueue()

        def watch(started: dict[Future, str]) -> set[Future]:
            futures.update(started)
            for fut in started:
                fut.add_done_callback(finished.put)
            return set(started)

        def start(batch: dict[str, tuple]) -> set[Future]:
            return watch({self.handle.transport.submit(self.call, node, fn, *args): node
                          for node, (fn, *args) in batch.items()})

        def met() -> bool:
            return enough(results) if enough else len(results) >= need

        if split is not None and split.keys() == calls.keys():
            polled = Polled(self, split, after)
            if polled.sent:
                polled.gather(met, results, errors, epochs)
            pending = watch({f: n for n, f in polled.handed.items()}) | start(
                {n: c for n, c in calls.items() if n not in polled.handed
                 and n not in results and n not in errors})
        else:
            pending = start(calls)
        while not met():
            short = not pending or (enough is None and len(results) + len(pending) < need)
            if short and spares:
                pending |= start(spares)
                spares = {}
            if not pending:
                break
            fut = finished.get()   # every call ends: each request has its own deadline
            pending.discard(fut)
            node = futures[fut]
            try:
                value, epoch = fut.result()
            except SDHTError as exc:
                errors[node] = str(exc)
                continue
            results[node] = value
            epochs.append(epoch)
        if running is not None:
            running.update({futures[f]: f for f in pending})
        return results, errors, epochs

