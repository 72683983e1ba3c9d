"""Whole-ring repair: every replica set's ranges synced now, and the ring spread to members.

:func:`repair` is what :meth:`sdht.Ring.repair` and ``sdht repair`` run; :func:`spread_ring` and
:func:`shared_ranges` are also the node's background loop's (storage/syncer.py). The sync of
two replicas itself is :mod:`sdht.sync`'s (docs/anti-entropy.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import SDHTError
from .handle import RingHandle
from .ring import RingView, intervals
from .sync import merge_ranges, sync_ranges
from .transport import Transport


@dataclass
class RepairReport:
    """What :meth:`sdht.Ring.repair` did across the ring."""

    epoch: int = 0
    ranges: int = 0          # ring intervals covered
    syncs: int = 0           # pairwise syncs run
    hashes: int = 0
    differences: int = 0
    pushed: int = 0          # records some replica stored
    rings_pushed: int = 0    # members that held an older ring and were given the current one
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def shared_ranges(view: RingView, node: str | None = None
                  ) -> dict[frozenset, tuple[list[tuple[int, int]], int]]:
    """Group the ring's intervals by their set of readers.

    :param node: keep only the intervals this node replicates.
    :returns: for each replica set, its merged ranges and how many ring intervals they cover.
    """
    readers = view.readers
    groups: dict[frozenset, list[tuple[int, int]]] = {}
    for start, end, probe in intervals(readers.boundaries()):
        replicas = frozenset(readers.preference(probe))
        if node is None or node in replicas:
            groups.setdefault(replicas, []).append((start, end))
    return {k: (merge_ranges(v), len(v)) for k, v in groups.items()}


@dataclass
class RingSpread:
    """What :func:`spread_ring` did: members given the ring, the newest ring seen, failures."""

    pushed: int
    newest: RingView
    unreachable: dict[str, str]


def spread_ring(transport: Transport, view: RingView, skip: Iterable[str] = ()) -> RingSpread:
    """Give ``view`` to every member (but ``skip``) that holds an older ring, or none (a node
    restarted on an empty disk), and note the newest trusted ring any member holds: a ring
    the operator did not sign is reported, never adopted, whatever its epoch."""
    pushed, newest, unreachable = 0, view, {}
    for member in view.members:
        if member.id in skip:
            continue
        try:
            held = transport.get_ring(member.id)
            if held is not None:
                transport.keys.check_ring(held.body(), held.signature)
            if held is None or held.epoch < view.epoch:
                transport.put_ring(member.id, view)
                pushed += 1
            elif held.epoch > newest.epoch:
                newest = held
        except SDHTError as exc:
            unreachable[member.id] = str(exc)
    return RingSpread(pushed, newest, unreachable)


def repair(handle: RingHandle, progress: Callable[[int, int], None] | None = None) -> RepairReport:
    """Sync every ring interval's replicas now (see :meth:`sdht.Ring.repair`).

    Members holding an older ring (or none: a node that lost its disk) are given the current
    one first. Each interval's replicas are synced against the first of them that answers
    (the hub), then those that missed what the hub learned from later ones, once more.
    """
    began = time.monotonic()
    view = handle.refresh()
    report = RepairReport()
    if view is None or not view.members:
        return report
    report.epoch = view.epoch
    spread = spread_ring(handle.transport, view)
    report.rings_pushed = spread.pushed
    report.errors += spread.unreachable.values()
    down = set(spread.unreachable)
    groups = shared_ranges(view)
    report.ranges = total = sum(count for _, count in groups.values())
    done = 0
    if progress:
        progress(0, total)
    for replicas, (ranges, count) in sorted(groups.items(), key=lambda item: item[1][0][0]):
        alive = sorted(replicas - down)
        if len(alive) > 1:
            hub, others = alive[0], alive[1:]
            # First sweep: the hub gathers every replica's records. Those synced before the
            # last one that brought the hub something new lack it: sync them once more.
            gains = [_repair_pair(handle.transport, view, hub, o, ranges, report) for o in others]
            last = max((i for i, gained in enumerate(gains) if gained), default=0)
            for other in others[:last]:
                _repair_pair(handle.transport, view, hub, other, ranges, report)
        done += count
        if progress:
            progress(done, total)
    report.seconds = time.monotonic() - began
    return report


def _repair_pair(transport: Transport, view: RingView, hub: str, other: str,
                 ranges: list[tuple[int, int]], report: RepairReport) -> bool:
    """Sync ``hub`` with ``other``; add to ``report``; return whether the hub stored anything."""
    try:
        rep = sync_ranges(transport, hub, other, ranges, view.params)
    except SDHTError as exc:
        report.errors.append(f"sync {hub} / {other}: {exc}")
        return False
    report.syncs += 1
    report.hashes += rep.hashes
    report.differences += rep.differences
    report.pushed += rep.pushed_to_a + rep.pushed_to_b
    return rep.pushed_to_a > 0
