"""Anti-entropy: replicas compare hash trees and exchange what differs (docs/design.md, "anti-entropy").

Each node keeps a hash tree over the positions of its records (:mod:`storage.tree`: fan-out 16,
depth 4, 65536 leaves). :func:`sync_ranges` walks the trees of two replicas level by level, one
request to each node per level, restricted to the ring ranges they share: a tree node wholly
inside the ranges is compared by hash and descended into only when the hashes differ; one that is
only partly inside is descended into without comparing (its hash covers records outside the
ranges); at a leaf the nodes list their ``(key, digest)`` pairs within the ranges. The records
behind differing pairs are copied both ways and merged by the accept rule, through the nodes'
ordinary validated write route, so a sync can only move each replica up to the winner.

Tombstones older than ``tombstone_grace`` are not copied: past the grace a node may purge them,
and copying them back would only make them bounce. A replica that was away longer than the
grace must be wiped and refilled, not merged, or it would bring deleted values back. These
rules, and a sync's cost (16 tree hashes per level per differing key): docs/anti-entropy.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

from . import kinds, params as cluster_params
from .errors import InvalidRecord, NodeError
from .transport import Transport
from .wire import BATCH, DEPTH, FANOUT, MAX_TREE_RANGES, STORED, tombstone_cutoff

log = logging.getLogger(__name__)
#: Leaves listed per tree request: small enough that their listings fit one answer at the
#: usual densities; a request cut short is split further (see _listings).
LEAVES_PER_REQUEST = 64



@dataclass
class SyncReport:
    """What one sync between two replicas found and fixed."""

    a: str
    b: str
    hashes: int = 0          # tree hashes and (key, digest) pairs received, from both nodes
    compared: int = 0        # tree nodes whose hashes were compared
    differences: int = 0     # keys whose versions differed between the two
    pushed_to_a: int = 0     # records a stored (it lacked them or held a lower version)
    pushed_to_b: int = 0     # records b stored
    rounds: int = 0          # request rounds (one request to each node per round)
    sent_to_a: list[bytes] = field(default_factory=list)   # references a was offered

    def add(self, other: "SyncReport") -> None:
        """Add the counts of ``other`` (a sync of more ranges between the same nodes)."""
        for f in fields(self)[2:]:   # every field after the two node names adds up
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort ``[start, end)`` ranges and join those that touch or overlap."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def start_nodes(ranges: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The tree nodes a sync over the sorted, disjoint ``ranges`` starts from: the largest
    nodes wholly inside one range (compared by hash), and the leaves a range only partly
    covers (listed; their hashes cover keys outside the ranges). Computed range by range, in
    O(fan-out * depth) each: a hub shares a hundred ranges with a peer on a small ring."""
    shift = 64 - (FANOUT.bit_length() - 1) * DEPTH     # positions below a leaf's index
    mask = (1 << shift) - 1
    compare: list[tuple[int, int]] = []
    listing: list[tuple[int, int]] = []

    def partial(leaf: int) -> None:
        if not listing or listing[-1] != (DEPTH, leaf):   # two ranges may meet one leaf
            listing.append((DEPTH, leaf))

    for start, end in ranges:
        first, last = start >> shift, (end - 1) >> shift
        low, high = first, last + 1          # the leaves wholly inside: [low, high)
        if start & mask:
            partial(first)
            low = first + 1
        if end & mask and last >= low:
            partial(last)
            high = last
        while low < high:   # the largest aligned node that starts at low and fits
            level, size = DEPTH, 1
            while level > 0 and low % (size * FANOUT) == 0 and low + size * FANOUT <= high:
                level, size = level - 1, size * FANOUT
            compare.append((level, low // size))
            low += size
    return compare, listing


def sync_range(transport: Transport, a: str, b: str, start: int, end: int,
               params: Mapping[str, Any] | None = None) -> SyncReport:
    """Make replicas ``a`` and ``b`` agree on every key with a position in ``[start, end)``.

    :returns: a :class:`SyncReport` (hashes exchanged, records pushed each way, rounds).
    :raises TransportError: when either node cannot be reached.
    :raises NodeError: when either node refuses a request.
    """
    return sync_ranges(transport, a, b, [(start, end)], params)


def sync_ranges(transport: Transport, a: str, b: str, ranges: Iterable[tuple[int, int]],
                params: Mapping[str, Any] | None = None) -> SyncReport:
    """Like :func:`sync_range` over several ``[start, end)`` ranges at once (fewer rounds)."""
    params = params or cluster_params.DEFAULTS   # the ring's, when the caller has one
    merged = merge_ranges(ranges)
    report = SyncReport(a, b)
    for i in range(0, len(merged), MAX_TREE_RANGES):
        report.add(_sync(transport, a, b, merged[i:i + MAX_TREE_RANGES], params))
    return report


def _sync(transport: Transport, a: str, b: str, ranges: list[tuple[int, int]],
          params: Mapping[str, Any]) -> SyncReport:
    report = SyncReport(a, b)
    compare, listing = start_nodes(ranges)
    to_a: list[bytes] = []   # references of the entries each side lacks or holds lower
    to_b: list[bytes] = []
    while compare or listing:
        report.rounds += 1   # one level of the descent (its requests go in chunks)
        hashes_a, hashes_b, listings = [], [], []
        # A chunk of hashes and a chunk of leaves share one request: a sync of replicas that
        # agree is then one request to each side (a whole-ring repair runs thousands).
        for i in range(max(-(-len(compare) // BATCH), -(-len(listing) // LEAVES_PER_REQUEST))):
            nodes = compare[i * BATCH:(i + 1) * BATCH]
            leaves = listing[i * LEAVES_PER_REQUEST:(i + 1) * LEAVES_PER_REQUEST]
            got_a, got_b, listed = _level(transport, a, b, nodes, leaves, ranges)
            hashes_a += got_a
            hashes_b += got_b
            listings += listed
        report.compared += len(compare)
        report.hashes += 2 * len(compare)
        asked, compare, listing = compare, [], []
        for (level, index), ha, hb in zip(asked, hashes_a, hashes_b):
            if ha == hb:
                continue
            if level == DEPTH:
                listing.append((level, index))
            else:   # wholly inside the ranges, as its children are
                compare += [(level + 1, index * FANOUT + i) for i in range(FANOUT)]
        for ea, eb in listings:
            report.hashes += len(ea) + len(eb)
            da, db = dict(map(tuple, ea)), dict(map(tuple, eb))
            to_b += [k for k, d in da.items() if db.get(k) != d]
            to_a += [k for k, d in db.items() if da.get(k) != d]
    report.differences = len(set(to_a) | set(to_b))
    if to_b:
        report.pushed_to_b = _copy(transport, a, b, to_b, params)
    if to_a:
        report.pushed_to_a = _copy(transport, b, a, to_a, params)
        report.sent_to_a = to_a
    return report


def _both(transport: Transport, a: str, b: str, nodes: list, listed: list,
          ranges: list[tuple[int, int]]) -> tuple[Any, Any]:
    """The same tree request to both replicas, in parallel."""
    fut = transport.submit(transport.tree, a, nodes, listed, ranges)
    body_b, _ = transport.tree(b, nodes, listed, ranges)
    return fut.result()[0], body_b


def _level(transport: Transport, a: str, b: str, nodes: list[tuple[int, int]],
           leaves: list[tuple[int, int]], ranges: list[tuple[int, int]]
           ) -> tuple[list, list, list[tuple[list, list]]]:
    """Both replicas' hashes of ``nodes`` and listings of ``leaves``, in one request to each
    when the listings fit; a listing cut short or refused is asked again by :func:`_listings`."""
    if not leaves:
        body_a, body_b = _both(transport, a, b, nodes, [], ranges)
        return body_a["hashes"], body_b["hashes"], []
    try:
        body_a, body_b = _both(transport, a, b, nodes, leaves, ranges)
    except NodeError as exc:
        if exc.status != 413:
            raise
        body_a, body_b = _both(transport, a, b, nodes, [], ranges) if nodes else ({}, {})
        return (body_a.get("hashes", []), body_b.get("hashes", []),
                _listings(transport, a, b, leaves, ranges))
    if body_a.get("truncated") or body_b.get("truncated"):
        return body_a["hashes"], body_b["hashes"], _listings(transport, a, b, leaves, ranges)
    return body_a["hashes"], body_b["hashes"], list(zip(body_a["entries"], body_b["entries"]))


def _listings(transport: Transport, a: str, b: str, leaves: list[tuple[int, int]],
              ranges: list[tuple[int, int]]) -> list[tuple[list, list]]:
    """Both replicas' ``(reference, digest)`` listings of ``leaves``; a request the node cuts
    short (its answer limit) or refuses as too costly is asked again in halves."""
    try:
        body_a, body_b = _both(transport, a, b, [], leaves, ranges)
        cut = body_a.get("truncated") or body_b.get("truncated")
    except NodeError as exc:
        if exc.status != 413 or len(leaves) < 2:
            raise
        cut = True
    if cut and len(leaves) > 1:
        half = len(leaves) // 2
        return (_listings(transport, a, b, leaves[:half], ranges)
                + _listings(transport, a, b, leaves[half:], ranges))
    if cut:   # one leaf holds more than a node lists at once: a later pass sees the rest
        log.warning("sync %s/%s: leaf %s lists more entries than one answer holds", a, b,
                    leaves[0])
    return list(zip(body_a["entries"], body_b["entries"]))


def _copy(transport: Transport, source: str, target: str, refs: list[bytes],
          params: Mapping[str, Any]) -> int:
    """Copy the entries ``refs`` names from ``source`` to ``target``; return how many it
    stored. What its kind says has expired (old tombstones) is not copied."""
    cutoff = tombstone_cutoff(params)
    stored = 0
    for i in range(0, len(refs), BATCH):
        entries = transport.get_entries(source, refs[i:i + BATCH], params)
        live = [e for e in entries if e is not None and admissible(e, params, source)
                and not kinds.kind_of(e.TAG).expired(e, cutoff)]
        if live:
            stored += _push(transport, target, live)
    return stored


def admissible(entry: kinds.Entry, params: Mapping[str, Any], source: str) -> bool:
    """Whether ``entry``, as ``source`` answered it, passes its kind's checks (the proof-of-work
    gate, the clock). Entries that do not are logged and not copied on: the receiving node would
    refuse them anyway, and one of them would make it refuse the whole batch."""
    try:
        kinds.kind_of(entry.TAG).check(entry, params)
        return True
    except InvalidRecord as exc:
        log.warning("not copying an entry of %r from %s: %s", entry.key[:100], source, exc)
        return False


def _push(transport: Transport, node: str, records: list[kinds.Entry]) -> int:
    try:
        outcomes, _ = transport.put_many(node, records)
        return sum(1 for o in outcomes if o.status == STORED)
    except NodeError as exc:
        if exc.status not in (400, 413):
            raise
    # One record the node refuses (say min_work was raised since it was written) must not
    # block the others: fall back to one request per record.
    stored = 0
    for rec in records:
        try:
            outcome, _ = transport.put_record(node, rec)
        except NodeError as exc:
            log.warning("sync: %s refused %r: %s", node, rec.key, exc)
            continue
        stored += outcome.status == STORED
    return stored
