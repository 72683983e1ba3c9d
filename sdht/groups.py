"""Replica groups: the seed's shards as a placement (docs/http-api.md, "Shards").

On a ring with the ``groups`` parameter set, members are not placed one by one. They form
disjoint **groups** (the seed's shards), and a key's replicas are every member of its group, as
in Redis Cluster or MongoDB's shards. So every node belongs to one shard, holds exactly that
shard's keys, and the replicas of a shard hold the same keys.

The rules, all pure functions of the member ids and ``n`` (so every node and client computes
the same groups with no coordination):

- **Groups.** Sort the member ids; there are ``max(1, members // n)`` groups; cut the sorted
  list into that many consecutive runs whose sizes differ by at most one (the first ones get
  the extra members). So a group has ``n`` to ``2n - 1`` members, and every member is in one.
- **Slots.** The ring is cut into :data:`SLOTS` equal slots (Redis Cluster's hash slots). Slot
  ``s`` belongs to group ``jump(s, groups)``: Lamping and Veach's jump consistent hash, which
  splits the slots about evenly (see :data:`SLOTS`) and, when the group count grows from g to g + 1, moves only the
  ~1/(g + 1) of the slots that the new group takes.
- **Quorums.** A group can have up to ``2n - 1`` members, so :func:`quorum_sizes` picks ``r``
  and ``w`` (at most ``n``) with ``r + w`` above the largest group: a quorum read meets every
  acknowledged write in every group.

:class:`sdht.ring.GroupPlacement` turns these into the placement interface (positions and
preference lists) that quorums, migration and anti-entropy use unchanged.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Mapping, Sequence

from . import params as cluster_params
from .wire import RING_SIZE

#: Slots the ring is cut into (Redis Cluster has 16384; 4096 keeps a placement cheap to build,
#: ~30 ms once per group count and process). Measured shares of the ring: within 0.5 % of an
#: even split for 2 or 3 groups, 4 % for 4, 7 % for 8, 14 % for 16, 24 % for 32.
SLOTS = 4096
#: Ring positions per slot (2**52): slot ``s`` covers ``[s * SLOT_WIDTH, (s + 1) * SLOT_WIDTH)``.
SLOT_WIDTH = RING_SIZE // SLOTS


def group_count(members: int, n: int) -> int:
    """Return how many groups ``members`` members form with ``n`` replicas per group (at
    least one, so a ring smaller than ``n`` is one group of all its members)."""
    return max(1, members // max(1, n))


def groups_of(node_ids: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Return the groups of these members: sorted ids cut into :func:`group_count`
    consecutive runs of sizes differing by at most one. Empty for no members."""
    ids = sorted(set(node_ids))
    if not ids:
        return []
    count = group_count(len(ids), n)
    base, extra = divmod(len(ids), count)
    out, start = [], 0
    for g in range(count):
        size = base + (1 if g < extra else 0)
        out.append(tuple(ids[start:start + size]))
        start += size
    return out


def jump(key: int, buckets: int) -> int:
    """Return the bucket in ``[0, buckets)`` of a 64-bit ``key`` by jump consistent hashing
    (Lamping and Veach, 2014): even, and minimal movement when ``buckets`` grows."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % RING_SIZE
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


@functools.lru_cache(maxsize=32)
def slot_runs(groups: int) -> tuple[tuple[int, int], ...]:
    """Return ``(last position, group index)`` for each run of consecutive slots of one group,
    in ring order: the tokens of a group placement (a token owns the positions since the
    previous one, up to and including its own)."""
    runs: list[tuple[int, int]] = []
    for s in range(SLOTS):
        # The slot's own hash, not its number, feeds jump: neighbouring slots land apart.
        g = jump(int.from_bytes(hashlib.blake2b(s.to_bytes(2, "big"),
                                                digest_size=8).digest(), "big"), groups)
        end = (s + 1) * SLOT_WIDTH - 1
        if runs and runs[-1][1] == g:
            runs[-1] = (end, g)
        else:
            runs.append((end, g))
    return tuple(runs)


def quorum_sizes(members: int, n: int) -> tuple[int, int]:
    """Return ``(r, w)`` for a group ring of ``members`` members and ``n`` replicas: ``w`` a
    majority of the largest group and ``r`` the rest, so ``r + w`` exceeds every group's size
    (both at most ``n``, as the parameter table requires)."""
    n = max(1, n)
    largest = -(-members // group_count(members, n)) if members else n
    w = min(n, largest // 2 + 1)
    return min(n, largest - w + 1), w


def shard_of(groups: Sequence[Sequence[str]], node_id: str) -> int | None:
    """Return the shard id (1-based, as the seed numbers shards) of ``node_id``, or None."""
    return next((i + 1 for i, g in enumerate(groups) if node_id in g), None)


def group_params(base: Mapping[str, Any], members: int, repl_factor: int) -> dict[str, Any]:
    """Return ``base`` with replica groups of ``repl_factor`` members and quorums that overlap
    in the largest group of ``members`` (:func:`quorum_sizes`), checked.

    :raises ConfigError: when ``repl_factor`` is out of the parameter table's range.
    """
    r, w = quorum_sizes(members, repl_factor)
    return cluster_params.check({**base, "groups": 1, "n": repl_factor, "r": r, "w": w})
