"""Whole-ring repair: every interval's replicas synced now, and the ring spread to members.

:func:`repair` is what :meth:`sdht.Ring.repair` and ``sdht repair`` run; :func:`spread_ring` and
:func:`hub_plan` (who syncs which ranges with whom) are also the node's background loop's
(storage/syncer.py). The sync of two replicas itself is :mod:`sdht.sync`'s
(docs/anti-entropy.md).
"""
from __future__ import annotations

import bisect
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import SDHTError
from .handle import RingHandle
from .ring import RingView, intervals
from .sync import LEAVES_PER_REQUEST, merge_ranges, start_nodes, sync_ranges
from .transport import Transport
from .wire import BATCH, MAX_TREE_RANGES, ref_position

#: Hubs a whole-ring repair works on at once. Their requests share the transport's fan-out
#: pool, whose size bounds the requests in flight (a hub asks all its peers at once first).
REPAIR_PARALLEL = 8


@dataclass
class RepairReport:
    """What :meth:`sdht.Ring.repair` did across the ring."""

    epoch: int = 0
    ranges: int = 0          # ring intervals covered
    syncs: int = 0           # hub-peer pairs compared (settled at once, or synced in full)
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

    A hub first asks itself once and each peer once whether they agree (:func:`_settled`);
    it syncs the others one after another, gathering every replica's entries; the peers that
    saw it before its last gain, and share a range where it gained, are synced once more. With
    no differences that is about ``1 + peers`` requests per hub: the cost grows with the
    ranges that differ, not with the replica sets.
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
        settled = _settled(transport, hub, peers)
        mine.syncs = len(settled)
        rest = sorted(p for p in peers if p not in settled)
        gains = [_repair_pair(transport, view, hub, p, peers[p], mine) for p in rest]
        if any(gains):   # peers that saw the hub before its last gain lack it, where they
            last = max(i for i, gained in enumerate(gains) if gained)   # share those ranges
            news = sorted(pos for gained in gains for pos in gained)
            for peer in sorted(settled) + rest[:last]:
                if _meets(news, peers[peer]):
                    _repair_pair(transport, view, hub, peer, peers[peer], mine)
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


def _settled(transport: Transport, hub: str, peers: dict[str, list[tuple[int, int]]]
             ) -> set[str]:
    """The peers that already agree with ``hub`` on every range they share with it.

    The hub is asked once for all its peers (its hashes do not depend on the peer; its
    listings, over all the ranges, are cut to each peer's), each peer once, in parallel: a hub
    whose replicas agree costs about ``1 + peers`` requests, not two per peer. A peer this
    cannot settle at once (a difference, a listing cut short, an error) is left to a full sync.
    """
    starts = {p: start_nodes(r) for p, r in peers.items()}
    union = merge_ranges(r for ranges in peers.values() for r in ranges)
    if len(union) > MAX_TREE_RANGES or any(len(r) > MAX_TREE_RANGES for r in peers.values()):
        return set()
    asked = {p: transport.submit(_tree_all, transport, p, c, ls, peers[p])
             for p, (c, ls) in starts.items()}
    mine = _tree_all(transport, hub, sorted({n for c, _ in starts.values() for n in c}),
                     sorted({leaf for _, ls in starts.values() for leaf in ls}), union)
    settled = set()
    for p, fut in asked.items():
        theirs = fut.result()
        if mine is None or theirs is None:
            continue
        compare, cut = starts[p]
        if all(mine[0][n] == theirs[0][n] for n in compare) and all(
                _within(mine[1][leaf], peers[p]) == theirs[1][leaf] for leaf in cut):
            settled.add(p)
    return settled


def _tree_all(transport: Transport, node: str, nodes: list[tuple[int, int]],
              leaves: list[tuple[int, int]], ranges: list[tuple[int, int]]
              ) -> tuple[dict, dict] | None:
    """``node``'s hashes of ``nodes`` and listings of ``leaves`` within ``ranges``, as dicts
    (a listing as ``{reference: digest}``), in requests of at most ``BATCH`` hashes and
    ``LEAVES_PER_REQUEST`` leaves; None when an answer is cut short or the node fails."""
    hashes: dict[tuple[int, int], bytes] = {}
    listed: dict[tuple[int, int], dict[bytes, bytes]] = {}
    try:
        for i in range(max(-(-len(nodes) // BATCH), -(-len(leaves) // LEAVES_PER_REQUEST))):
            part = nodes[i * BATCH:(i + 1) * BATCH]
            cut = leaves[i * LEAVES_PER_REQUEST:(i + 1) * LEAVES_PER_REQUEST]
            body, _ = transport.tree(node, part, cut, ranges)
            if body.get("truncated"):
                return None
            hashes.update(zip(part, body["hashes"]))
            listed.update((leaf, {bytes(r): bytes(d) for r, d in entries})
                          for leaf, entries in zip(cut, body["entries"]))
    except SDHTError:
        return None
    return hashes, listed


def _within(listing: dict[bytes, bytes], ranges: list[tuple[int, int]]) -> dict[bytes, bytes]:
    """The entries of ``listing`` whose positions lie in the sorted ``ranges``."""
    starts = [s for s, _ in ranges]
    out = {}
    for ref, digest in listing.items():
        pos = ref_position(ref)
        i = bisect.bisect_right(starts, pos) - 1
        if i >= 0 and pos < ranges[i][1]:
            out[ref] = digest
    return out


def _meets(positions: list[int], ranges: list[tuple[int, int]]) -> bool:
    """Whether any of the sorted ``positions`` lies in one of ``ranges``."""
    return any(bisect.bisect_left(positions, start) < bisect.bisect_left(positions, end)
               for start, end in ranges)


def _repair_pair(transport: Transport, view: RingView, hub: str, other: str,
                 ranges: list[tuple[int, int]], report: RepairReport) -> list[int]:
    """Sync ``hub`` with ``other``; add to ``report``; return the positions of what the hub
    stored (empty when it stored nothing)."""
    try:
        rep = sync_ranges(transport, hub, other, ranges, view.params)
    except SDHTError as exc:
        report.errors.append(f"sync {hub} / {other}: {exc}")
        return []
    report.syncs += 1
    report.hashes += rep.hashes
    report.differences += rep.differences
    report.pushed += rep.pushed_to_a + rep.pushed_to_b
    return [ref_position(ref) for ref in rep.sent_to_a] if rep.pushed_to_a else []
