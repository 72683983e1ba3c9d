"""Placement on the hash ring: positions, tokens and the successor walk (docs/design.md, "The ring").

This module is pure computation (no I/O) and is imported by the storage node too, which keys
its LMDB records by position so that a ring range is one cursor scan.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from . import groups as replica_groups, params as cluster_params
from .errors import ConfigError
from .wire import RING_SIZE

#: Node states. Readers use normal and leaving nodes; writers also write to joining nodes.
JOINING, NORMAL, LEAVING = "joining", "normal", "leaving"
STATES = (JOINING, NORMAL, LEAVING)


def position(key: str | bytes) -> int:
    """Return a key's ring position: the first 8 bytes of blake2b(key), big-endian unsigned."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(raw).digest()[:8], "big")


def token_positions(node_id: str, count: int) -> list[int]:
    """Return the ``count`` ring positions (virtual nodes) of ``node_id``, derived from its name."""
    return [position(f"{node_id}#{i}") for i in range(count)]


@dataclass(frozen=True)
class Member:
    """A node as the ring sees it: its id (``host:port``), state, number of tokens, and the
    public key (hex) it signs its requests with, when the ring has keys (sdht/trust.py)."""

    id: str
    state: str = NORMAL
    tokens: int = cluster_params.DEFAULTS["tokens"]
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the member's JSON form (``key`` only when it has one)."""
        out: dict[str, Any] = {"id": self.id, "state": self.state, "tokens": self.tokens}
        if self.key is not None:
            out["key"] = self.key
        return out


@dataclass(frozen=True)
class RingView:
    """The ring's membership, cluster parameters and epoch, as every node stores it, and the
    operator's signature of all that (None on an unsigned, development ring)."""

    epoch: int = 0
    members: tuple[Member, ...] = ()
    params: dict[str, Any] = field(default_factory=lambda: dict(cluster_params.DEFAULTS))
    signature: str | None = None

    def body(self) -> dict[str, Any]:
        """Return the JSON form without the signature: what the operator signs.

        Parameters added later (:data:`sdht.params.LATE`: ``groups``, the score's weights)
        are left out while at their default, so rings signed before they existed keep the
        body their signature covers (:meth:`from_json` puts the defaults back).
        """
        params = {k: v for k, v in self.params.items()
                  if k not in cluster_params.LATE or v != cluster_params.DEFAULTS[k]}
        return {"epoch": self.epoch, "params": params,
                "members": [m.to_json() for m in self.members]}

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored on nodes and served at ``/v1/ring``."""
        out = self.body()
        if self.signature is not None:
            out["signature"] = self.signature
        return out

    def signed(self, signature: str) -> "RingView":
        """Return this ring carrying ``signature``."""
        return RingView(self.epoch, self.members, self.params, signature)

    @classmethod
    def from_json(cls, obj: Any) -> "RingView":
        """Parse and check the JSON form.

        :raises ConfigError: when a field is missing or of the wrong type.
        """
        try:
            epoch = obj["epoch"]
            members = tuple(Member(str(m["id"]), m.get("state", NORMAL),
                                   int(m.get("tokens", cluster_params.DEFAULTS["tokens"])),
                                   m.get("key"))
                            for m in obj["members"])
            params = {**cluster_params.DEFAULTS, **obj.get("params", {})}
            signature = obj.get("signature")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                RecursionError) as exc:
            # OverflowError: int(float("inf")), as from a JSON "tokens": Infinity
            raise ConfigError(f"malformed ring: {exc!r}") from None
        if type(epoch) is not int or epoch < 0:
            raise ConfigError("ring epoch must be a non-negative integer")
        tokens = cluster_params.TABLE["tokens"]
        for m in members:
            if m.state not in STATES or not tokens.low <= m.tokens <= tokens.high:
                raise ConfigError(f"member {m.id}: bad state or token count")
            if m.key is not None and not _is_hex(m.key, 64):
                raise ConfigError(f"member {m.id}: a key must be 64 hex digits")
            parse_node_id(m.id)
        if signature is not None and not _is_hex(signature, 128):
            raise ConfigError("a ring signature must be 128 hex digits")
        if len({m.id for m in members}) != len(members):
            raise ConfigError("ring lists a member twice")
        return cls(epoch, members, cluster_params.check(params), signature)

    def member(self, node_id: str) -> Member | None:
        """Return the member with this id, or None."""
        return next((m for m in self.members if m.id == node_id), None)

    def with_member(self, member: Member) -> "RingView":
        """Return the next epoch of this ring with ``member`` added or replaced."""
        others = tuple(m for m in self.members if m.id != member.id)
        return RingView(self.epoch + 1, tuple(sorted(others + (member,), key=lambda m: m.id)),
                        self.params)

    def without_member(self, node_id: str) -> "RingView":
        """Return the next epoch of this ring with ``node_id`` dropped."""
        return RingView(self.epoch + 1, tuple(m for m in self.members if m.id != node_id),
                        self.params)

    def placement(self, states: Iterable[str]) -> "Placement":
        """Return the placement over members in ``states``.

        Placements are cached by their members and ``n``: building one sorts every token
        (hashing 128 names per member), which per key would dominate a client's time (issue 7).
        """
        wanted = set(states)
        return _placement(tuple(m for m in self.members if m.state in wanted),
                          self.params["n"], bool(self.params.get("groups")))

    @functools.cached_property  # a view never changes; works on a frozen dataclass
    def readers(self) -> "Placement":
        """Placement of reads: the members that hold complete data (normal and leaving)."""
        return self.placement((NORMAL, LEAVING))

    @functools.cached_property
    def future(self) -> "Placement":
        """Placement once pending changes complete (normal and joining members)."""
        return self.placement((NORMAL, JOINING))


def _is_hex(text: Any, length: int) -> bool:
    return (isinstance(text, str) and len(text) == length
            and all(c in "0123456789abcdef" for c in text))


def parse_node_id(text: str) -> tuple[str, int]:
    """Split ``host:port`` into its parts.

    :raises ConfigError: when it is not of that form or the port is out of range.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"not a host:port address: {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class Node:
    """A storage node's address. ``Node("127.0.0.1", 8000)``; the port may be a str."""

    host: str
    port: int | str

    def __post_init__(self) -> None:
        try:
            port = int(self.port)
        except (TypeError, ValueError):
            raise ConfigError(f"port must be an integer: {self.port!r}") from None
        if not 0 < port < 65536 or not self.host:
            raise ConfigError(f"not a valid node address: {self.host!r}:{self.port!r}")
        object.__setattr__(self, "port", port)

    @property
    def id(self) -> str:
        """The node's name in the ring: ``host:port``."""
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, address: "str | Node") -> "Node":
        """Return a Node for ``host:port`` (or the Node itself)."""
        if isinstance(address, Node):
            return address
        host, port = parse_node_id(address)
        return cls(host, port)

    def __str__(self) -> str:
        return self.id


@functools.lru_cache(maxsize=64)
def _placement(members: tuple[Member, ...], n: int, grouped: bool) -> "Placement":
    return GroupPlacement(list(members), n) if grouped else Placement(list(members), n)


class Placement:
    """Sorted tokens of a set of members, and the successor walk over them."""

    def __init__(self, members: list[Member], n: int) -> None:
        tokens = sorted((pos, m.id) for m in members for pos in token_positions(m.id, m.tokens))
        self.positions = [pos for pos, _ in tokens]
        self.owners = [owner for _, owner in tokens]
        self.node_ids = sorted({m.id for m in members})
        self.n = min(n, len(self.node_ids))
        # The walk from each token, once it was taken: batches place thousands of keys on the
        # same few hundred tokens (at most one list per token, so memory stays the ring's).
        self._walks: dict[int, tuple[str, ...]] = {}

    def preference(self, pos: int) -> list[str]:
        """Return the first ``n`` distinct nodes clockwise from ring position ``pos``, walking
        successors (docs/design.md, "The ring"); a token at exactly ``pos`` owns it."""
        return list(self.walk(pos))

    def walk(self, pos: int) -> tuple[str, ...]:
        """:meth:`preference` as a tuple, the same object for every position of one token's
        range: a batch groups its keys by it without building a list per key."""
        count = len(self.positions)
        if not count:
            return ()
        start = bisect.bisect_left(self.positions, pos) % count
        walk = self._walks.get(start)
        if walk is None:
            walk = self._walks[start] = tuple(self._walk(start))
        return walk

    def _walk(self, start: int) -> list[str]:
        """The first ``n`` distinct owners of the tokens from index ``start`` on, clockwise."""
        found: list[str] = []
        count = len(self.positions)
        for i in range(count):
            owner = self.owners[(start + i) % count]
            if owner not in found:
                found.append(owner)
                if len(found) == self.n:
                    break
        return found

    def for_key(self, key: str) -> list[str]:
        """Return the preference list of ``key``."""
        return self.preference(position(key))

    def boundaries(self) -> list[int]:
        """Return the sorted distinct token positions."""
        return sorted(set(self.positions))


class GroupPlacement(Placement):
    """Replica groups own the ring (sdht/groups.py): a key's preference list is its whole
    group. The same interface as :class:`Placement`, so quorums, migration and anti-entropy
    work unchanged: the tokens are the ends of runs of slots, each owned by one group."""

    def __init__(self, members: list[Member], n: int) -> None:
        #: The groups, in shard order (shard id = index + 1).
        self.groups = replica_groups.groups_of([m.id for m in members], n)
        runs = replica_groups.slot_runs(len(self.groups)) if self.groups else ()
        self.positions = [end for end, _ in runs]
        self.owners = [g for _, g in runs]    # a group's index, not a member id
        self.node_ids = sorted(m.id for m in members)
        self.n = max((len(g) for g in self.groups), default=0)

    def walk(self, pos: int) -> tuple[str, ...]:
        """Every member of the group owning ring position ``pos`` (its preference list)."""
        if not self.positions:
            return ()
        i = bisect.bisect_left(self.positions, pos) % len(self.positions)
        return tuple(self.groups[self.owners[i]])


def intervals(boundaries: list[int]) -> Iterator[tuple[int, int, int]]:
    """Yield ``(start, end, probe)`` half-open ranges ``[start, end)`` that cover the ring.

    Within one range every placement built from ``boundaries`` gives the same preference list,
    which ``preference(probe)`` returns. Wrapping ranges are split at zero.
    """
    if not boundaries:
        yield 0, RING_SIZE, 0
        return
    # A token at position p owns (previous token, p], that is [previous + 1, p + 1).
    for prev, cur in zip([boundaries[-1]] + boundaries[:-1], boundaries):
        start, end = (prev + 1) % RING_SIZE, cur + 1
        if len(boundaries) == 1 or start >= end:   # wraps past zero
            if start < RING_SIZE and not (len(boundaries) == 1 and start == 0):
                yield start, RING_SIZE, cur
            yield 0, end, cur
        else:
            yield start, end, cur
