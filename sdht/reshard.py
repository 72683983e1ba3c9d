"""A view change: make the ring exactly a list of members with replica groups of a size
(the seed's ``PUT /kv-store/view-change``; docs/http-api.md, "View change").

It is a sequence of the ordinary membership changes of :mod:`sdht.migration`, each moving its
data before the next: the new members join one by one, then the parameters change (replica
groups of ``repl_factor`` members, with quorums that overlap in every group), then the members
that are not in the view are removed one by one (as dead when they do not answer). Every step
is published to every member, so an interrupted view change resumes when run again.

A change of parameters moves data too (a key's replicas change with the group size): every
range a node gains is copied to it before the new ring is published, and copied again after,
for the writes acknowledged on the old replicas in between; then the old replicas drop what
they lost. Between the publication and the end of the second copy, a quorum read may miss a
write acknowledged during the first copy (a session's read does not: it waits for its
context); the second copy closes the window.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import params as cluster_params
from .errors import ConfigError, NoNodes, RingBusy, SDHTError, TransportError
from .groups import group_params
from .handle import RingHandle
from .migration import (MigrationReport, _publish, _stream, join, plan_drops, plan_transfers,
                        remove)
from .ring import NORMAL, RingView, parse_node_id

log = logging.getLogger(__name__)

#: The most members a view may list (the parameter table bounds ``n`` at 16 already).
MAX_VIEW = 256


@dataclass
class ViewChangeReport:
    """What a view change did."""

    joined: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    params_changed: bool = False
    moved: int = 0
    epoch: int = 0


def check_view(members: Iterable[str], repl_factor: Any) -> list[str]:
    """Return the view's members (``host:port``, duplicates dropped, in order) after checking
    them and the factor: 1 to 16 replicas, no more than the members.

    :raises ConfigError: naming what is wrong.
    """
    out = list(dict.fromkeys(str(m).strip() for m in members if str(m).strip()))
    if not out:
        raise ConfigError("the view is empty")
    if len(out) > MAX_VIEW:
        raise ConfigError(f"the view lists {len(out)} members; the limit is {MAX_VIEW}")
    for m in out:
        parse_node_id(m)
    high = cluster_params.TABLE["n"].high
    if type(repl_factor) is not int or not 1 <= repl_factor <= min(high, len(out)):
        raise ConfigError(f"repl-factor must be an integer from 1 to {min(high, len(out))} "
                          f"(the view's size): {repl_factor!r}")
    return out


def view_change(handle: RingHandle, members: Iterable[str], repl_factor: int,
                progress: Callable[[int], None] | None = None) -> ViewChangeReport:
    """Make the ring exactly ``members`` in replica groups of ``repl_factor``, moving data.

    :raises ConfigError: for a bad view or factor (:func:`check_view`).
    :raises RingBusy: when another change is in progress.
    :raises SDHTError: when a step fails (a new member that cannot be reached, say); the
        steps done stay done, and running the same change again resumes it.
    """
    wanted = check_view(members, repl_factor)
    report = ViewChangeReport()
    # The view's members may know the ring when the caller does not (a node waiting to be
    # joined); with no ring anywhere, the first join starts one. The seeds stay bounded: the
    # client's first seed and this view.
    handle.seeds = list(dict.fromkeys([*handle.seeds[:1], *wanted]))
    try:
        view: RingView | None = handle.current()
    except NoNodes:
        view = None
    for node in wanted:
        member = view.member(node) if view is not None else None
        if member is None or member.state != NORMAL:
            report.moved += join(handle, node, None, progress).moved
            report.joined.append(node)
            view = handle.current()
    target = group_params(view.params, len(wanted), repl_factor)
    if target != view.params:
        report.moved += change_params(handle, target, progress).moved
        report.params_changed = True
    for member in [m for m in handle.current().members if m.id not in wanted]:
        report.moved += remove(handle, member.id, not _answers(handle, member.id),
                               progress).moved
        report.removed.append(member.id)
    report.epoch = handle.current().epoch
    return report


def change_params(handle: RingHandle, params: dict[str, Any],
                  progress: Callable[[int], None] | None = None) -> MigrationReport:
    """Publish the ring with new parameters, moving every range whose replicas change (see the
    module's docstring for the order and its window).

    :raises RingBusy: when a member is joining or leaving.
    """
    report = MigrationReport("*", "params")
    view = handle.refresh() or handle.current()
    busy = [m.id for m in view.members if m.state != NORMAL]
    if busy:
        raise RingBusy(f"a membership change is in progress: {', '.join(busy)}")
    after = RingView(view.epoch + 1, view.members, cluster_params.check(params))
    plan = plan_transfers(view.readers, after.readers)
    for transfer in plan:
        _stream(handle, transfer, report, progress)
    _publish(handle, after, [])
    for transfer in plan:   # the writes acknowledged on the old replicas meanwhile
        _stream(handle, transfer, report, progress)
    for drop in plan_drops(view.readers, after.readers):
        try:
            report.dropped += handle.transport.delete_range(drop.target, drop.start, drop.end)
        except SDHTError as exc:  # leftover copies waste space but lose nothing
            log.warning("could not drop a moved range on %s: %s", drop.target, exc)
    report.ranges, report.epoch = len(plan), after.epoch
    return report


def _answers(handle: RingHandle, node: str) -> bool:
    try:
        handle.transport.get_ring(node)
        return True
    except TransportError:
        return False
