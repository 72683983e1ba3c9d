"""A key's replica sets while the ring may be changing, and the write rules over them.

While a member joins or leaves, a key has two placements: the current one (where it is read)
and the future one (where it will be read once the change commits). A write goes to the union
of both and is acknowledged only when ``w`` of *each* acknowledged (docs/design.md, "Flows",
join); a name's phase needs a majority of each. Every write path (one key in
:mod:`sdht.quorum`, batches in :mod:`sdht.batch`, sequence ops in
:mod:`sdht.sequence_replicas`) and the proposer (:mod:`sdht.names`) take the sets from here.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from .ring import Placement, RingView


def placements(view: RingView) -> list[Placement]:
    """The placements a write must satisfy: the current one, and the future one too while a
    membership change is staged (a view without one has the same placement for both)."""
    return [view.readers] if view.future is view.readers else [view.readers, view.future]


def replica_sets(view: RingView, key: str) -> list[list[str]]:
    """``key``'s replicas in each of :func:`placements` (the same nodes twice are one set)."""
    now, *later = [placement.for_key(key) for placement in placements(view)]
    return [now] if not later or set(now) == set(later[0]) else [now, later[0]]


def union(sets: Iterable[Sequence[str]]) -> list[str]:
    """Every node of ``sets`` once, in the order first met (the current placement's first)."""
    return list(dict.fromkeys(n for members in sets for n in members))


def write_plan(sets: Iterable[Sequence[str]],
               is_suspect: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """Where a write goes: ``(first, spare)``. Every node of the union of ``sets`` not under
    suspicion is written at once; suspects only when the write is still short without them
    (a stopped replica must not hold every write for a timeout)."""
    targets = union(sets)
    suspect = [n for n in targets if is_suspect(n)]
    return [n for n in targets if n not in suspect], suspect


def write_shortfall(sets: Iterable[Sequence[str]], acked: Iterable[str],
                    w: int) -> tuple[int, int] | None:
    """The write quorum: ``w`` acknowledgements (or all, on a smaller set) from each of
    ``sets``, current and future. Returns ``(got, needed)`` of the first set short of it, or
    None when the write is acknowledged."""
    acked = set(acked)
    for members in sets:
        got, need = sum(1 for n in members if n in acked), min(w, len(members))
        if got < need:
            return got, need
    return None
