"""The ring client: :class:`Ring` places keys, replicates, reads with repair and changes members.

``Ring`` is the API; the module-level functions in :mod:`sdht` are thin wrappers over a default
``Ring`` bootstrapped from ``SDHT_SEEDS``. The ring itself (members, states, parameters, epoch)
lives on the nodes, so any process can find it again from one member (docs/design.md, "Flows").

``Ring`` is a facade. The work is done by: :mod:`sdht.handle` (the ring view and transport),
:mod:`sdht.quorum` (parallel replica requests and the read and write quorums), :mod:`sdht.batch`
(many keys at once), :mod:`sdht.migration` (join and remove), :mod:`sdht.sync` (anti-entropy),
:mod:`sdht.sequences` (sequence CRDTs) and :mod:`sdht.pow` (minting).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from . import (batch, migration, names, params as cluster_params, registry,
               repair as ring_repair, sequences, sessions)
from .errors import KeyNotFound, WriteConflict
from .handle import RingHandle
from .health import NodeHealth
from .kinds import common, register
from .kinds.register import Record
from .pow import mint
from .quorum import MAX_REROUTES, Quorum
from .ring import Node, RingView
from .transport import DEFAULT_TIMEOUT, Transport
from .trust import Keys
from .wire import collector_paused, now_us

__all__ = ["AUTO_WORK_MARGIN", "MAX_REROUTES", "Node", "Ring"]

#: A write that lost to a stored version re-mints once, unless that needs more than this much
#: work above ``min_work`` (e**4 ~ 55 times the minimum): beyond it, the key is "rented".
AUTO_WORK_MARGIN = 4.0


class Ring:
    """A client's handle on one ring.

    :param seeds: ``host:port`` addresses (or Nodes) to learn the ring from.
    :param params: cluster parameters for a ring this client creates (ignored when joining an
        existing ring, whose parameters win).
    :param timeout: ``(connect, read)`` seconds per request.
    :param keys: the operator keys (:class:`sdht.trust.Keys`) this client trusts rings from and,
        for operators, signs with; by default from ``SDHT_OPERATOR_KEY`` / ``_PUBKEY``, and
        none of them means development mode (unsigned rings, loopback nodes).
    :param transport: an injected :class:`~sdht.transport.Transport` (tests), with its keys.
    """

    def __init__(self, seeds: Iterable["Node | str"] = (), *,
                 params: Mapping[str, Any] | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 keys: Keys | None = None, transport: Transport | None = None) -> None:
        if transport is None:
            transport = Transport(timeout, keys if keys is not None else Keys.from_env())
        #: What migration, sync and status work through: the view and the transport.
        self.handle = RingHandle(transport, [Node.parse(s).id for s in seeds],
                                 cluster_params.with_defaults(params))
        #: The replica requests, with their failure memory (:attr:`health`).
        self.quorum = Quorum(self.handle)
        #: Unique names (:meth:`register`, :meth:`lookup`): proposed here, or by a member.
        self.names = registry.Names(names.Proposer(self.quorum), self.quorum)

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
    def health(self) -> NodeHealth:
        """Which nodes failed lately; requests avoid them while others can make the quorum."""
        return self.quorum.health

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

    def session(self, context: Any = None, **options: Any) -> sessions.Session:
        """A causal session over this ring: :class:`~sdht.sessions.Session` (``r``, ``wait``)."""
        return sessions.Session(self, context, **options)

    def sequence(self, key: str, **options: Any) -> sequences.Sequence:
        """The sequence CRDT under ``key`` (:class:`~sdht.sequences.Sequence`)."""
        return sequences.Sequence(self.quorum, key, **options)

    def set(self, key: str, value: Any, work: float | None = None, *,
            acked: list[str] | None = None) -> Record:
        """Store ``value`` under ``key`` on the key's replicas; return the written record.

        Mints ``min_work`` (or ``work``, up to the ring's ``max_work``, to "rent" the key
        against cheaper writes). When a replica holds a version of higher priority, re-mints
        once with just enough work to beat it, unless that would cost more than
        ``AUTO_WORK_MARGIN`` above ``min_work``. Last writer wins: when a concurrent write
        lands after this one, ``set`` still returns this record, which that later write has
        superseded (a ``get`` then returns the later value), as in any last-writer-wins store.

        :raises InvalidRecord: for a bad key, value (``ValueTooLarge``: too large) or work.
        :raises WriteConflict: for a rented key: one held by more work than this write pays.
        :raises QuorumError: when fewer than ``w`` replicas acknowledged.
        :param acked: a list to set to the nodes that acknowledged the write.
        """
        return self._write(key, value, work, deleted=False, acked=acked)

    def delete(self, key: str, work: float | None = None, *, acked: list | None = None) -> Record:
        """Write a tombstone for ``key`` (same rules and ``acked`` as :meth:`set`); return it."""
        return self._write(key, None, work, deleted=True, acked=acked)

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
        return self.quorum.read(key)

    def _write(self, key: str, value: Any, work: float | None, deleted: bool,
               after: int = 0, above: float = -math.inf, acked: list | None = None) -> Record:
        p = self.handle.current().params
        common.check_key(key, p)
        common.check_value(value, p)
        w = p["min_work"] if work is None else cluster_params.check_work(work, p)
        rec = mint(key, value, w, t=max(now_us(), after + 1), deleted=deleted)
        lost = self.quorum.replicate(rec, acked) if rec.score(p["decay"]) > above else above
        if lost is None:
            return rec
        # A replica holds a higher score, or a session saw one (``above``; its writes come
        # ``after`` all it saw): re-mint once to beat it, at a fresh time (design.md, "Flows").
        t = max(now_us(), rec.t + 1)
        needed = register.work_to_beat(lost, t, p["decay"])
        budget = (p["min_work"] + AUTO_WORK_MARGIN) if work is None else w
        if needed > budget:
            raise WriteConflict(f"{key!r} is held by a version of higher priority (score "
                                f"{lost:.6f}); beating it needs work {needed:.2f} > {budget:.2f}",
                                key, lost)
        rec = mint(key, value, max(w, math.ceil(needed * 1000) / 1000), t=t, deleted=deleted)
        lost = self.quorum.replicate(rec, acked)
        if lost is not None:
            # Lost again, to a version written meanwhile. If plain work would beat it now, it
            # is simply a later write: last writer wins, and this write is done (superseded,
            # as any write may be a moment later). Only a rented key is a conflict.
            needed = register.work_to_beat(lost, max(now_us(), rec.t + 1), p["decay"])
            if needed > budget:
                raise WriteConflict(f"{key!r} was rented meanwhile by a version of higher "
                                    f"priority (score {lost:.6f})", key, lost)
        return rec

    # -- batches ------------------------------------------------------------------------------

    def set_many(self, items: Mapping[str, Any], work: float | None = None) -> int:
        """Store many keys: one batch request per replica node, nodes in parallel.

        Same quorum rule as :meth:`set` for every key; a key that loses to a stored version of
        higher priority falls back to :meth:`set` (which re-mints once). Returns the number
        of keys written.

        :raises QuorumError: naming the keys that fewer than ``w`` replicas acknowledged.
        """
        p, records = self.handle.current().params, {}
        w = p["min_work"] if work is None else cluster_params.check_work(work, p)
        with collector_paused():   # its rescans of a batch's objects cost ~20% (no cycles)
            for key, value in items.items():
                common.check_key(key, p)
                common.check_value(value, p)
                records[key] = mint(key, value, w)
            lost = batch.write_many(self.quorum, records)
        for key in lost:   # lost to a higher version: re-minted once, as a single set
            self._write(key, records[key].value, work, records[key].deleted)
        return len(records)

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
        with collector_paused():   # as in set_many: 6-10% of a batch's client CPU
            return batch.read_many(self.quorum, keys)

    # -- unique names (docs/names.md) ---------------------------------------------------------

    def register(self, name: str, value: Any = None, owner: bytes | None = None) -> bool:
        """Register ``name`` for ``value`` if it is free, atomically: True when this call
        registered it (or ``owner``'s earlier call did), False when it was taken.

        :raises OutcomeUnknown: when the outcome stays unknown at the deadline (retry with its
            ``owner``); :raises QuorumError: when no majority answered (nothing proposed)."""
        return self.names.claim(name, value, owner)[0]

    def lookup(self, name: str) -> Any:
        """Return the value ``name`` is registered with, or None when it is free."""
        chosen = self.names.lookup(name)
        return None if chosen is None else chosen.value

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
        rec = self.get_record(key) if isinstance(key, str) else None
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

    def repair(self, progress: Callable[[int, int], None] | None = None) -> ring_repair.RepairReport:
        """Run anti-entropy over the whole ring now: sync every interval's replicas.

        Members holding an older ring (or none, after losing their disk) get the current one.

        :param progress: called with ``(ranges done, ranges in all)``.
        :returns: a :class:`~sdht.repair.RepairReport` of what was compared and fixed; nodes
            that could not be reached are listed in its ``errors``.
        """
        return ring_repair.repair(self.handle, progress)
