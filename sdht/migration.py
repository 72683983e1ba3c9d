"""Membership changes: join and remove, with live data migration (docs/design.md, "Flows").

A change goes through three ring epochs, each published to every member before the next step:

1. **staged**: the node is marked ``joining`` (writes reach it, reads do not) or ``leaving``
   (reads still use it). Clients write to the union of the current and future replicas and
   need ``w`` acknowledgements from each, so no write acknowledged during the move can miss
   the future replicas.
2. **stream**: every range a node gains is copied to it, in pages, from the replica that loses
   that range. Copying from the loser keeps the number of copies of every acknowledged write:
   what the loser held moves to the gainer. When the loser is dead, the range is copied from
   every surviving replica instead and merged by the accept rule.
3. **final**: the node becomes ``normal`` (or is dropped), then replicas that lost ranges
   delete them.

An interrupted change leaves the staged ring in place; running the same join or remove again
resumes it, since copying merges idempotently.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from .errors import NotAMember, RingBusy, RingError, SDHTError, TransportError, UntrustedRing
from .handle import RingHandle
from .ring import JOINING, LEAVING, NORMAL, Member, Placement, RingView, intervals
from .sync import admissible
from .wire import BATCH, STORED

log = logging.getLogger(__name__)


@dataclass
class MigrationReport:
    """What a join or remove did."""

    node: str
    action: str
    epoch: int = 0
    ranges: int = 0        # ranges streamed
    moved: int = 0         # records copied to gaining nodes
    stored: int = 0        # of those, records the gainers did not already hold
    dropped: int = 0       # records deleted from nodes that lost ranges
    seconds: float = 0.0


@dataclass(frozen=True)
class Transfer:
    """Copy ``[start, end)`` from each of ``sources`` to ``target``."""

    sources: tuple[str, ...]
    target: str
    start: int
    end: int


def plan_transfers(before: Placement, after: Placement,
                   dead: Iterable[str] = ()) -> list[Transfer]:
    """Return the copies that give every node of ``after`` the ranges it lacks in ``before``.

    Each gained range is copied from the node that loses it; from every surviving old replica
    when a loser is dead; from one old replica when nobody loses it (a small ring growing).
    """
    dead = set(dead)
    plan: list[Transfer] = []
    for start, end, probe in intervals(sorted(set(before.positions) | set(after.positions))):
        old, new = before.preference(probe), after.preference(probe)
        alive_old = [n for n in old if n not in dead]
        losers = [n for n in old if n not in new]
        for gainer in (n for n in new if n not in old):
            if any(n in dead for n in losers):
                sources = tuple(n for n in alive_old if n != gainer)
            elif losers:
                sources = (losers[0],)
            else:
                sources = tuple(alive_old[:1])
            if sources:
                plan.append(Transfer(sources, gainer, start, end))
    return _merge(plan)


def plan_drops(before: Placement, after: Placement) -> list[Transfer]:
    """Return the ranges each node replicates in ``before`` but no longer in ``after``
    (as transfers with no sources; ``target`` is the node that drops the range)."""
    drops = []
    for start, end, probe in intervals(sorted(set(before.positions) | set(after.positions))):
        new = after.preference(probe)
        drops += [Transfer((), n, start, end) for n in before.preference(probe) if n not in new]
    return _merge(drops)


def _merge(plan: list[Transfer]) -> list[Transfer]:
    """Join ranges that touch and share their sources and target: fewer, longer scans."""
    merged: dict[tuple, list[Transfer]] = {}
    for t in sorted(plan, key=lambda t: (t.sources, t.target, t.start)):
        runs = merged.setdefault((t.sources, t.target), [])
        if runs and runs[-1].end == t.start:
            runs[-1] = Transfer(t.sources, t.target, runs[-1].start, t.end)
        else:
            runs.append(t)
    return [t for runs in merged.values() for t in runs]


def join(handle: RingHandle, node: str, tokens: int | None,
         progress: Callable[[int], None] | None) -> MigrationReport:
    """Add ``node`` to the ring (see :meth:`sdht.Ring.join`)."""
    report = MigrationReport(node, "join")
    began = time.monotonic()
    try:
        view = handle.refresh()
    except UntrustedRing:
        raise   # a ring this client cannot check is not "no ring": never start a second one
    except RingError:
        view = None
    own = handle.ring_of(node)  # also proves the node is up
    if (view is None or not view.members) and own is not None and own.member(node):
        view = own                       # the node already belongs to a ring: adopt it
        handle.adopt(own)
    if view is None or not view.members:
        first = RingView(max(own.epoch if own else 0, view.epoch if view else 0) + 1,
                         (Member(node, NORMAL, tokens or handle.new_ring_params["tokens"],
                                 handle.member_key(node)),),
                         dict(view.params if view else handle.new_ring_params))
        _publish(handle, first, [])
        report.epoch, report.seconds = first.epoch, time.monotonic() - began
        return report
    if own is not None and own.member(node) and view.member(node) is None:
        raise RingError(f"{node} is a member of another ring (epoch {own.epoch})")
    member = view.member(node)
    if member is not None and member.state == NORMAL:
        report.epoch = view.epoch
        return report
    if member is not None and member.state != JOINING:
        raise RingBusy(f"{node} is {member.state}; finish that change first")
    _check_idle(view, node)
    tokens = tokens or (member.tokens if member else view.params["tokens"])
    key = member.key if member else handle.member_key(node)
    staged = view if member is not None else _bump(
        view.with_member(Member(node, JOINING, tokens, key)), own)
    return _complete(handle, staged, staged.with_member(Member(node, NORMAL, tokens, key)),
                     report, (), progress, began)


def remove(handle: RingHandle, node: str, dead: bool,
           progress: Callable[[int], None] | None) -> MigrationReport:
    """Take ``node`` out of the ring (see :meth:`sdht.Ring.remove`)."""
    report = MigrationReport(node, "remove")
    began = time.monotonic()
    view = handle.refresh()
    member = view.member(node) if view else None
    if view is None or member is None:
        raise NotAMember(f"{node} is not a member of the ring")
    if member.state == JOINING:
        raise RingBusy(f"{node} is still joining; finish the join first")
    _check_idle(view, node)
    staged = view if member.state == LEAVING else view.with_member(
        Member(node, LEAVING, member.tokens, member.key))
    return _complete(handle, staged, staged.without_member(node), report,
                     (node,) if dead else (), progress, began)


def _complete(handle: RingHandle, staged: RingView, final: RingView, report: MigrationReport,
              dead: tuple[str, ...], progress: Callable[[int], None] | None,
              began: float) -> MigrationReport:
    """Publish ``staged``, stream what moves, publish ``final``, drop what was lost."""
    _publish(handle, staged, dead)  # again on resume: a crash may have left some nodes behind
    for transfer in plan_transfers(staged.readers, staged.future, dead):
        report.ranges += 1
        _stream(handle, transfer, report, progress)
    # The removed node also learns the final ring, so it redirects stale clients.
    _publish(handle, final, dead, also=[m.id for m in staged.members if m.id not in dead])
    for drop in plan_drops(staged.readers, final.readers):
        if drop.target in dead:
            continue
        try:
            report.dropped += handle.transport.delete_range(drop.target, drop.start, drop.end)
        except SDHTError as exc:  # leftover copies waste space but lose nothing
            log.warning("could not drop a moved range on %s: %s", drop.target, exc)
    report.epoch, report.seconds = final.epoch, time.monotonic() - began
    return report


def _stream(handle: RingHandle, transfer: Transfer, report: MigrationReport,
            progress: Callable[[int], None] | None) -> None:
    """Copy one range page by page from each source to the target."""
    for source in transfer.sources:
        cursor: str | None = None
        while True:
            params = handle.view.params
            records, cursor = handle.transport.scan(source, transfer.start, transfer.end,
                                                  cursor, BATCH, params)
            records = [r for r in records if admissible(r, params, source)]
            if records:
                outcomes, _ = handle.transport.put_many(transfer.target, records,
                                                      migration=True)
                report.moved += len(records)
                report.stored += sum(1 for o in outcomes if o.status == STORED)
                if progress:
                    progress(report.moved)
            if cursor is None:
                break


def _check_idle(view: RingView, node: str) -> None:
    busy = [f"{m.id} ({m.state})" for m in view.members if m.state != NORMAL and m.id != node]
    if busy:
        # The staged change is recorded in the ring, so re-running it picks it up where it
        # stopped (join and remove resume, see :func:`join`).
        raise RingBusy(f"another membership change is in progress: {', '.join(busy)}; "
                       f"re-running that same join or remove resumes it")


def _bump(view: RingView, other: RingView | None) -> RingView:
    """Make ``view``'s epoch exceed ``other``'s, so a node that saw a higher epoch accepts it."""
    if other is not None and other.epoch >= view.epoch:
        return RingView(other.epoch + 1, view.members, view.params)
    return view


def _publish(handle: RingHandle, view: RingView, dead: Iterable[str],
             also: Iterable[str] = ()) -> None:
    """Store ``view`` on every member (and ``also``), skipping ``dead`` ones.

    :raises RingBusy: when a node already holds a newer ring (a concurrent change).
    :raises TransportError: when a live member cannot be reached; nothing moves until all
        members have the staged ring, so stale clients are redirected before data moves.
    """
    view = handle.sign(view)
    targets = [n for n in dict.fromkeys([*(m.id for m in view.members), *also])
               if n not in set(dead)]
    futures = {n: handle.transport.submit(handle.transport.put_ring, n, view) for n in targets}
    for node, fut in futures.items():
        try:
            held = fut.result()
        except TransportError as exc:
            if node in also and view.member(node) is None:
                continue  # a departed node that is gone already needs no ring
            raise TransportError(f"cannot publish ring epoch {view.epoch} to {node}: {exc}. "
                                 f"If it is gone for good, remove it with dead=True.",
                                 node) from None
        if held.epoch > view.epoch or (held.epoch == view.epoch and held != view):
            raise RingBusy(f"{node} holds a newer ring (epoch {held.epoch}): another change "
                           f"raced this one; refresh and retry")
    handle.adopt(view)
