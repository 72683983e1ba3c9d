"""The ring client: :class:`Ring` places keys, replicates, reads with repair and changes members.

``Ring`` is the API; the module-level functions in :mod:`sdht` are thin wrappers over a default
``Ring`` bootstrapped from ``SDHT_SEEDS``. The ring itself (members, states, parameters, epoch)
lives on the nodes, so any process can find it again from one member (DESIGN: "Flows").
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Iterable, Mapping, TypeVar

from . import migration, sync
from .errors import (InvalidRecord, KeyNotFound, QuorumError, SDHTError, TransportError,
                     WriteConflict)
from .handle import RingHandle
from .health import NodeHealth
from .pow import mint
from . import params as cluster_params
from .kinds import common, register
from .kinds.register import Record, winner
from .ring import Node, RingView
from .transport import DEFAULT_TIMEOUT, PutOutcome, Transport
from .wire import BATCH, SUPERSEDED, now_us

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How many times an operation is re-routed after a node reports a newer ring.
MAX_REROUTES = 3
#: A write that lost to a stored version re-mints once, unless that needs more than this much
#: work above ``min_work`` (e**4 ~ 55 times the minimum): beyond it, the key is "rented".
AUTO_WORK_MARGIN = 4.0


class Ring:
    """A client's handle on one ring.

    :param seeds: ``host:port`` addresses (or Nodes) to learn the ring from.
    :param params: cluster parameters for a ring this client creates (ignored when joining an
        existing ring, whose parameters win).
    :param timeout: ``(connect, read)`` seconds per request.
    :param cluster_key: key for admin routes, when the nodes require one.
    :param transport: an injected :class:`~sdht.transport.Transport` (tests, custom pools).
    """

    def __init__(self, seeds: Iterable["Node | str"] = (), *,
                 params: Mapping[str, Any] | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 cluster_key: str | None = None, transport: Transport | None = None) -> None:
        #: What migration, sync and status work through: the view and the transport.
        self.handle = RingHandle(transport or Transport(timeout, cluster_key),
                                 [Node.parse(s).id for s in seeds],
                                 cluster_params.with_defaults(params))
        #: Which nodes failed lately; requests avoid them while others can make the quorum.
        self.health = NodeHealth()

    def close(self) -> None:
        """Release connections and threads."""
        self.transport.close()

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ring view ------------------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        """How requests reach the nodes."""
        return self.handle.transport

    @property
    def view(self) -> RingView | None:
        """The newest ring this client knows (None before the first refresh)."""
        return self.handle.view

    @view.setter
    def view(self, view: RingView | None) -> None:
        self.handle.view = view

    def refresh(self, prefer: Iterable[str] = ()) -> RingView | None:
        """Fetch the newest ring from the members and seeds that answer; return it.

        :raises NoNodes: when no member or seed could be reached.
        """
        return self.handle.refresh(prefer)

    @property
    def params(self) -> dict[str, Any]:
        """The cluster parameters in force."""
        return self.handle.current().params

    @property
    def nodes(self) -> list[str]:
        """Ids of the ring's members."""
        return [m.id for m in self.handle.current().members]

    def preference(self, key: str) -> list[str]:
        """The nodes that serve reads of ``key``, in preference order."""
        return self.handle.current().readers.for_key(key)

    # -- reads and writes ---------------------------------------------------------------------

    def set(self, key: str, value: Any, work: float | None = None) -> Record:
        """Store ``value`` under ``key`` on the key's replicas; return the written record.

        Mints ``min_work`` (or ``work``, to "rent" the key against cheaper writes). When a
        replica holds a version of higher priority, re-mints once with just enough work to beat
        it, unless that would cost more than ``AUTO_WORK_MARGIN`` above ``min_work``.

        :raises InvalidRecord: for a bad key or value (``ValueTooLarge`` for one too large).
        :raises WriteConflict: when a higher-priority version holds the key.
        :raises QuorumError: when fewer than ``w`` replicas acknowledged.
        """
        return self._write(key, value, work, deleted=False)

    def delete(self, key: str, work: float | None = None) -> Record:
        """Write a tombstone for ``key`` (same rules as :meth:`set`); return it."""
        return self._write(key, None, work, deleted=True)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, or ``default`` when it is missing or deleted.

        Reads ``r`` replicas, returns the highest-priority version and writes it back to the
        replicas that answered with an older one (read repair).

        :raises QuorumError: when fewer than ``r`` replicas answered.
        """
        rec = self.get_record(key)
        return default if rec is None or rec.deleted else rec.value

    def get_record(self, key: str) -> Record | None:
        """Return the winning record of ``key`` (a tombstone included), or None."""
        common.check_key(key, self.handle.current().params)
        for _ in range(MAX_REROUTES):
            view = self.handle.current()
            p = view.params
            replicas = view.readers.for_key(key)
            need = min(p["r"], len(replicas))
            # Ask r replicas (DESIGN: "Flows", get), healthy ones first; the others only if
            # one of those fails.
            calls = {node: (self.transport.get_record, node, key, p)
                     for node in self.health.order(replicas)}
            first = dict(list(calls.items())[:need])
            replies, errors, epochs = self._gather(
                first, need, spares={n: c for n, c in calls.items() if n not in first})
            if self.handle.noticed(epochs):
                continue
            if len(replies) < need:
                raise QuorumError(f"read of {key!r}: {len(replies)} of {need} replicas answered",
                                  key, need, len(replies), errors)
            found = {node: rec for node, rec in replies.items() if _valid(rec, key, p)}
            best = winner(list(found.values()), p["decay"])
            if best is not None:
                for node, rec in found.items():
                    if rec is None or rec.digest != best.digest:  # behind: the order is total
                        self.transport.submit(self._repair, node, [best])
            return best
        raise QuorumError(f"read of {key!r}: the ring kept changing", key)

    def _write(self, key: str, value: Any, work: float | None, deleted: bool) -> Record:
        p = self.handle.current().params
        common.check_key(key, p)
        common.check_value(value, p)
        w = p["min_work"] if work is None else cluster_params.check_work(work, p)
        rec = mint(key, value, w, deleted=deleted)
        lost = self._replicate(rec)
        if lost is None:
            return rec
        # A replica holds a higher score: mint once more with just enough work to beat it,
        # at a fresh timestamp (DESIGN: "Flows", set).
        t = max(now_us(), rec.t + 1)
        needed = register.work_to_beat(lost, t, p["decay"])
        budget = (p["min_work"] + AUTO_WORK_MARGIN) if work is None else w
        if needed > budget:
            raise WriteConflict(f"{key!r} is held by a version of higher priority (score "
                                f"{lost:.6f}); beating it needs work {needed:.2f} > {budget:.2f}",
                                key, lost)
        rec = mint(key, value, max(w, math.ceil(needed * 1000) / 1000), t=t, deleted=deleted)
        lost = self._replicate(rec)
        if lost is not None:
            raise WriteConflict(f"{key!r}: lost twice to a higher-priority version", key, lost)
        return rec

    def _replicate(self, rec: Record) -> float | None:
        """Write ``rec`` to its replicas until ``w`` of the current and of the future
        placement acknowledged. Returns None on success, or the higher score that beat it.
        """
        for _ in range(MAX_REROUTES):
            view = self.handle.current()
            w = view.params["w"]
            now_set = view.readers.for_key(rec.key)
            next_set = view.future.for_key(rec.key)
            targets = list(dict.fromkeys(now_set + next_set))
            # Return once w of each placement answered: a stopped replica must not hold every
            # write for a full timeout. Answers already in (a superseded one too) still count.
            calls = {node: (self.transport.put_record, node, rec) for node in targets}
            suspects = {n: calls.pop(n) for n in targets if self.health.is_suspect(n)}
            replies, errors, epochs = self._gather(
                calls, len(targets), spares=suspects,
                enough=lambda got: _write_shortfall((now_set, next_set), got, w) is None)
            if self.handle.noticed(epochs):
                continue  # placement moved while we wrote: write again where it is now
            lost = [o.score for o in replies.values() if o.status == SUPERSEDED]
            if lost:
                return max(s for s in lost if s is not None)
            short = _write_shortfall((now_set, next_set), replies, w)
            if short is not None:
                got, need = short
                raise QuorumError(f"write of {rec.key!r}: {got} of {need} replicas "
                                  f"acknowledged", rec.key, need, got, errors)
            return None
        raise QuorumError(f"write of {rec.key!r}: the ring kept changing", rec.key)

    def _gather(self, calls: dict[str, tuple], need: int,
                enough: Callable[[dict[str, Any]], bool] | None = None,
                spares: dict[str, tuple] | None = None
                ) -> tuple[dict[str, Any], dict[str, str], list[int]]:
        """Run one call per node in parallel; return once ``need`` succeeded (or ``enough``
        of the results so far is true) or all finished; the others are left running.

        :param spares: calls started only when ``calls`` can no longer succeed without them
            (replicas beyond the first ``r`` of a read, suspect nodes of a write).
        :returns: ``(results by node, errors by node, epochs seen)``.
        """
        futures: dict[Future, str] = {}
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        epochs: list[int] = []
        spares = dict(spares or {})

        def start(batch: dict[str, tuple]) -> set[Future]:
            started = {self.transport.submit(self._call, node, fn, *args): node
                       for node, (fn, *args) in batch.items()}
            futures.update(started)
            return set(started)

        pending = start(calls)
        while not (enough(results) if enough else len(results) >= need):
            short = not pending or (enough is None and len(results) + len(pending) < need)
            if short and spares:
                pending |= start(spares)
                spares = {}
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                node = futures[fut]
                try:
                    value, epoch = fut.result()
                except SDHTError as exc:
                    errors[node] = str(exc)
                    continue
                results[node] = value
                epochs.append(epoch)
        return results, errors, epochs

    # -- batches ------------------------------------------------------------------------------

    def set_many(self, items: Mapping[str, Any], work: float | None = None) -> int:
        """Store many keys: one batch request per replica node, nodes in parallel.

        Same quorum rule as :meth:`set` for every key; a key that loses to a stored version of
        higher priority falls back to :meth:`set` (which re-mints once). Returns the number
        of keys written.

        :raises QuorumError: naming the keys that fewer than ``w`` replicas acknowledged.
        """
        p = self.handle.current().params
        w = p["min_work"] if work is None else cluster_params.check_work(work, p)
        records = {}
        for key, value in items.items():
            common.check_key(key, p)
            common.check_value(value, p)
            records[key] = mint(key, value, w)
        for _ in range(MAX_REROUTES):
            view = self.handle.current()
            placed = {k: (view.readers.for_key(k), view.future.for_key(k)) for k in records}

            def settled(key: str, got: dict[str, PutOutcome]) -> bool:
                """w of each placement acknowledged, or a replica holds a higher version."""
                ok = {n for n, o in got.items() if o.status != SUPERSEDED}
                return len(ok) < len(got) or _write_shortfall(placed[key], ok, p["w"]) is None

            plans = {}
            for key, (now_set, next_set) in placed.items():
                targets = list(dict.fromkeys(now_set + next_set))
                suspect = [n for n in targets if self.health.is_suspect(n)]
                plans[key] = ([n for n in targets if n not in suspect], suspect)
            answers, errors, epochs = self._batch_rounds(
                self.transport.put_many, plans, records.__getitem__, settled)
            if self.handle.noticed(epochs):
                continue
            lost = [k for k, got in answers.items()
                    if any(o.status == SUPERSEDED for o in got.values())]
            short = [k for k, got in answers.items() if k not in lost and not settled(k, got)]
            if short:
                raise QuorumError(f"batch write: {len(short)} keys got fewer than w "
                                  f"acknowledgements (first: {short[0]!r})", short[0],
                                  p["w"], 0, errors)
            for key in dict.fromkeys(lost):
                rec = records[key]
                self._write(key, rec.value, work, rec.deleted)
            return len(records)
        raise QuorumError("batch write: the ring kept changing")

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Read many keys: one batch request per replica node, nodes in parallel.

        Returns a dict of the keys found (missing and deleted keys are left out). Same quorum
        and read-repair rules as :meth:`get`.

        :raises QuorumError: when fewer than ``r`` replicas answered for some key.
        """
        keys = list(dict.fromkeys(keys))
        p = self.handle.current().params
        for key in keys:
            common.check_key(key, p)
        for _ in range(MAX_REROUTES):
            view = self.handle.current()
            placed = {k: self.health.order(view.readers.for_key(k)) for k in keys}
            need = {k: min(p["r"], len(replicas)) for k, replicas in placed.items()}
            # Ask each key's first r replicas (healthy first); keys whose replicas failed are
            # asked of their other replicas in a second round.
            answers, errors, epochs = self._batch_rounds(
                lambda node, part: self.transport.get_many(node, part, p),
                {k: (replicas[:need[k]], replicas[need[k]:]) for k, replicas in placed.items()},
                lambda k: k, lambda k, got: len(got) >= need[k])
            if self.handle.noticed(epochs):
                continue
            seen = {key: {node: rec for node, rec in got.items() if _valid(rec, key, p)}
                    for key, got in answers.items()}
            result: dict[str, Any] = {}
            repairs: dict[str, list[Record]] = {}
            for key, found in seen.items():
                if len(found) < need[key]:
                    raise QuorumError(f"batch read: {len(found)} of {need[key]} replicas "
                                      f"answered for {key!r}", key, need[key], len(found), errors)
                best = winner(list(found.values()), p["decay"])
                if best is None:
                    continue
                if not best.deleted:
                    result[key] = best.value
                for node, rec in found.items():
                    if rec is None or rec.digest != best.digest:  # behind: the order is total
                        repairs.setdefault(node, []).append(best)
            for node, recs in repairs.items():
                self.transport.submit(self._repair, node, recs)
            return result
        raise QuorumError("batch read: the ring kept changing")

    def _repair(self, node: str, records: list[Record]) -> None:
        """Read repair: write the winners back to a replica that answered behind. Best
        effort: anti-entropy catches what this misses."""
        try:
            self.transport.put_many(node, records)
        except SDHTError as exc:
            log.debug("read repair of %d keys on %s failed: %s", len(records), node, exc)

    def _call(self, node: str, fn: Callable[..., T], *args: Any) -> T:
        """Run one request to ``node``, noting in :attr:`health` whether it answered."""
        try:
            result = fn(*args)
        except TransportError:
            self.health.failed(node)
            raise
        self.health.answered(node)
        return result

    def _batch_rounds(self, fn: Callable, plans: Mapping[str, tuple[list[str], list[str]]],
                      item: Callable[[str], Any], satisfied: Callable[[str, dict], bool]
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[int]]:
        """Batch requests in up to two rounds: each key to its first nodes, then the keys
        not yet ``satisfied`` to their other nodes. One batch per node per round (in chunks of
        :data:`BATCH`), nodes in parallel.

        :param plans: per key, ``(nodes of the first round, nodes of the second)``.
        :param item: what to send for a key (the key itself, or its record).
        :returns: ``(answers by key then node, errors by node, epochs seen)``.
        """
        answers: dict[str, dict[str, Any]] = {key: {} for key in plans}
        errors: dict[str, str] = {}
        epochs: list[int] = []

        def run(node: str, items: list) -> tuple[list, int]:
            out: list = []
            epoch = 0
            for i in range(0, len(items), BATCH):
                part, epoch = fn(node, items[i:i + BATCH])
                out += part
            return out, epoch

        for round_ in (0, 1):
            by_node: dict[str, list[str]] = {}
            for key, nodes in plans.items():
                if round_ == 0 or not satisfied(key, answers[key]):
                    for node in nodes[round_]:
                        by_node.setdefault(node, []).append(key)
            if not by_node:
                break
            replies, failed, seen = self._gather(
                {node: (run, node, [item(k) for k in ks]) for node, ks in by_node.items()},
                len(by_node))
            errors.update(failed)
            epochs += seen
            for node, values in replies.items():
                for key, value in zip(by_node[node], values):
                    answers[key][node] = value
        return answers, errors, epochs

    # -- dict-like access ---------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        rec = self.get_record(key)
        if rec is None or rec.deleted:
            raise KeyNotFound(key)
        return rec.value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        rec = self.get_record(key)
        return rec is not None and not rec.deleted

    # -- membership ---------------------------------------------------------------------------

    def join(self, node: "Node | str", tokens: int | None = None,
             progress: Callable[[int], None] | None = None) -> migration.MigrationReport:
        """Add ``node`` to the ring and stream it the data of the ranges it gains.

        A node that already belongs to a ring is adopted with its ring (no fork); a join that
        was interrupted resumes. Reads and writes keep working throughout.

        :param progress: called with the number of records moved so far.
        :raises RingBusy: when another node is joining or leaving.
        """
        return migration.join(self.handle, Node.parse(node).id, tokens, progress)

    def remove(self, node: "Node | str", dead: bool = False,
               progress: Callable[[int], None] | None = None) -> migration.MigrationReport:
        """Take ``node`` out of the ring after streaming its ranges to the nodes that gain them.

        :param dead: the node is gone; copy its ranges from the surviving replicas instead.
        :raises NotAMember: when the node is not in the ring.
        :raises RingBusy: when another node is joining or leaving.
        """
        return migration.remove(self.handle, Node.parse(node).id, dead, progress)

    def repair(self, progress: Callable[[int, int], None] | None = None) -> "sync.RepairReport":
        """Run anti-entropy over the whole ring now: sync every interval's replicas.

        Members holding an older ring (or none, after losing their disk) get the current one.

        :param progress: called with ``(ranges done, ranges in all)``.
        :returns: a :class:`~sdht.sync.RepairReport` of what was compared and fixed; nodes
            that could not be reached are listed in its ``errors``.
        """
        return sync.repair(self.handle, progress)


def _write_shortfall(placements: Iterable[list[str]], acked: Iterable[str],
                     w: int) -> tuple[int, int] | None:
    """The write quorum: ``w`` acknowledgements (or all, on a smaller list) from each
    placement, current and future (DESIGN: "Flows", join). Returns ``(got, needed)`` of the
    first placement short of it, or None when the write is acknowledged."""
    acked = set(acked)
    for members in placements:
        got, need = sum(1 for n in members if n in acked), min(w, len(members))
        if got < need:
            return got, need
    return None


def _valid(rec: Record | None, key: str, params: Mapping[str, Any]) -> bool:
    """Is a replica's answer for ``key`` usable? None (it holds nothing) is; a record must be
    of that key and pass the proof-of-work gate, or it is ignored as forged."""
    if rec is None:
        return True
    try:
        if rec.key != key:
            raise InvalidRecord(f"the answer is a record of {rec.key!r}")
        common.check_work(rec.w, rec.digest, params["min_work"])
        return True
    except InvalidRecord as exc:
        log.warning("ignoring an answer for %r: %s", key, exc)
        return False

