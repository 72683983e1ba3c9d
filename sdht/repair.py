"""Whole-ring repair: every interval's replicas synced now, and the ring spread to members.

:func:`repair` is what :meth:`sdht.Ring.repair` and ``sdht repair`` run; :func:`spread_ring` and
:func:`hub_plan` (who syncs which ranges with whom) are also the node's background loop's
(storage/syncer.py). The sync of two replicas itself is :mod:`sdht.sync`'s
(docs/anti-entropy.md).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import SDHTError
from .handle import RingHandle
from .ring import RingView, intervals
from .sync import merge_ranges, sync_ranges
from .transport import Transport

#: Hubs a whole-ring repair syncs at once: each keeps one request in flight to each side of
#: its current sync, so this bounds the repair's requests in flight at twice as many.
REPAIR_PARALLEL = 8


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


def hub_plan(view: RingView, down: Iterable[str] = (), hub: str | None = None
             ) -> dict[str, tuple[dict[str, list[tuple[int, int]]], int]]:
    """Who syncs what with whom in a whole-ring repair or a background pass.

    Each ring interval has one **hub**: the first of its readers (its preference list) that is
    not ``down``; the hub syncs the interval with each of its other live readers. A hub's
    ranges with one peer are merged, so a hub runs one sync per peer however many intervals
    they share: at most ``min(N - 1, (n - 1) * tokens)`` syncs per hub, and about ``N`` times
    that for the ring, never one per replica set (``~2 * C(N, 3)`` on a small ring).

    :param hub: keep only this hub's work.
    :returns: for each hub, its ranges by peer and how many ring intervals it is the hub of.
    """
    down = set(down)
    readers = view.readers
    plan: dict[str, tuple[dict[str, list[tuple[int, int]]], int]] = {}
    for start, end, probe in intervals(readers.boundaries()):
        alive = [r for r in readers.preference(probe) if r not in down]
        if not alive or (hub is not None and alive[0] != hub):
            continue
        peers, count = plan.get(alive[0], ({}, 0))
        for peer in alive[1:]:
            peers.setdefault(peer, []).append((start, end))
        plan[alive[0]] = (peers, count + 1)
    return {h: ({p: merge_ranges(r) for p, r in peers.items()}, count)
            for h, (peers, count) in plan.items()}


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


def repair(handle: RingHandle, progress: Callable[[int, int], None] | None = None,
           parallel: int = REPAIR_PARALLEL) -> RepairReport:
    """Sync every ring interval's replicas now (see :meth:`sdht.Ring.repair`).

    Members holding an older ring (or none: a node that lost its disk) are given the current
    one first; then :func:`repair_view` runs.
    """
    began = time.monotonic()
    view = handle.refresh()
    if view is None or not view.members:
        return RepairReport()
    spread = spread_ring(handle.transport, view)
    report = repair_view(handle.transport, view, set(spread.unreachable), progress, parallel)
    report.rings_pushed = spread.pushed
    report.errors[:0] = spread.unreachable.values()
    report.seconds = time.monotonic() - began
    return report


def repair_view(transport: Transport, view: RingView, down: Iterable[str] = (),
                progress: Callable[[int, int], None] | None = None,
                parallel: int = REPAIR_PARALLEL) -> RepairReport:
    """Sync every interval of ``view`` between its live replicas, hub by hub (:func:`hub_plan`),
    ``parallel`` hubs at a time: one sync per hub and peer over all the ranges they share.

    A hub syncs its peers one after another, gathering every replica's entries; the peers it
    synced before the last one that brought it something new lack that, so it syncs them once
    more. With no differences that is one sync per hub and peer, each one request to each side
    when the trees agree: the cost grows with the differing ranges, not the replica sets.
    """
    began = time.monotonic()
    report = RepairReport(epoch=view.epoch)
    plan = hub_plan(view, down)
    report.ranges = total = sum(count for _, count in plan.values())
    done, lock = 0, threading.Lock()
    if progress:
        progress(0, total)

    def run(hub: str) -> None:
        nonlocal done
        peers, count = plan[hub]
        mine = RepairReport()
        gains = [_repair_pair(transport, view, hub, p, r, mine) for p, r in sorted(peers.items())]
        last = max((i for i, gained in enumerate(gains) if gained), default=0)
        for peer, ranges in sorted(peers.items())[:last]:
            _repair_pair(transport, view, hub, peer, ranges, mine)
        with lock:
            for name in ("syncs", "hashes", "differences", "pushed"):
                setattr(report, name, getattr(report, name) + getattr(mine, name))
            report.errors += mine.errors
            done += count
            if progress:
                progress(done, total)

    # Hubs run in their own threads: each sync fans out on the transport's pool, which a
    # hub waiting on it must not occupy.
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="sdht-repair") as pool:
        for fut in [pool.submit(run, hub) for hub in sorted(plan)]:
            fut.result()
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
