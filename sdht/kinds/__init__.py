"""Kinds of entries. A key holds entries of a kind, and the kind decides validation and merge.

Each kind's accept rule has two halves: ``check`` (shape aside, what admission verifies: the
proof-of-work gate, the clock), run on a whole batch before anything is written, and
``supersedes`` (the merge), run against the held entry inside the write transaction.

Each kind is one module with the same names (the :class:`Kind` protocol below), imported by both
the node and the library. The store, migration, anti-entropy and read repair never look inside
an entry: they call its kind through :func:`kind_of`, so a new kind is a new module added to
:data:`KINDS` and nothing else changes. Kinds: :mod:`.register` (tag 0, last writer wins by
proof-of-work priority), :mod:`.name` (tag 1, a CASPaxos acceptor per unique name) and
:mod:`.sequence` (tag 2, the immutable ops of a sequence CRDT, merged by union).

Every entry on the wire is a msgpack map whose field ``x`` is its kind's tag.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

from ..errors import InvalidRecord
from ..wire import unpackb
from . import name, register, sequence


class Entry(Protocol):
    """What every kind's entries have."""

    TAG: int
    key: str
    #: Identity below the key (b"" when the kind keeps one entry per key).
    sub: bytes
    digest: bytes

    def pack(self) -> bytes: ...


class Kind(Protocol):
    """The names every kind module defines."""

    TAG: int
    NAME: str
    #: Whether anti-entropy compares and copies entries of this kind.
    SYNCED: bool
    #: Whether any client may write entries of this kind; else only the operator or a member.
    PUBLIC: bool
    HEAD_BYTES: int

    def from_wire(self, obj: Any, params: Mapping[str, Any]) -> Entry: ...
    def check(self, entry: Any, params: Mapping[str, Any], now: int | None = None) -> None: ...
    def supersedes(self, incoming: Any, stored: Any, params: Mapping[str, Any]) -> bool: ...
    def expired(self, version: Any, cutoff_us: int) -> bool: ...
    def head(self, entry: Any) -> bytes: ...
    def held(self, digest: bytes, header: bytes) -> Any: ...
    def describe(self, version: Any, params: Mapping[str, Any]) -> dict[str, Any]: ...


#: Every kind, by tag.
KINDS: dict[int, Kind] = {register.TAG: register, name.TAG: name,  # type: ignore[dict-item]
                         sequence.TAG: sequence}


def kind_of(tag: Any) -> Kind:
    """Return the kind with tag ``tag``.

    :raises InvalidRecord: for a tag no kind has.
    """
    kind = KINDS.get(tag) if type(tag) is int else None
    if kind is None:
        raise InvalidRecord(f"unknown kind of entry: {tag!r}")
    return kind


def from_wire(obj: Any, params: Mapping[str, Any]) -> Entry:
    """Build an entry of any kind from a decoded wire map, checking its shape and sizes
    against the ring's ``params`` (not its work: see :func:`admit`).

    :raises InvalidRecord: for a map of no known kind, or a malformed one.
    :raises ValueTooLarge: for a key or value over the ring's limits.
    """
    if not isinstance(obj, dict):
        raise InvalidRecord("an entry must be a msgpack map")
    return kind_of(obj.get("x")).from_wire(obj, params)


def from_packed(data: bytes, params: Mapping[str, Any]) -> Entry:
    """Decode one packed entry of any kind (the inverse of its ``pack()``)."""
    entry = from_wire(unpackb(data), params)
    entry._packed = bytes(data)  # type: ignore[attr-defined]
    return entry


def admit(obj: Any, params: Mapping[str, Any], raw: bytes | None = None,
          now: int | None = None) -> Entry:
    """The one admission path: decode ``obj`` as an entry of its kind and check it (shape,
    sizes, the proof-of-work gate, the clock). ``raw``, the bytes it arrived as, is kept so the
    entry is stored without encoding it again.

    :raises InvalidRecord: when the entry is malformed or fails its kind's checks.
    :raises ValueTooLarge: for a key or value over the ring's limits.
    """
    entry = from_wire(obj, params)
    kind_of(entry.TAG).check(entry, params, now)
    if raw is not None:
        entry._packed = raw  # type: ignore[attr-defined]
    return entry


__all__ = ["Entry", "KINDS", "Kind", "admit", "from_packed", "from_wire", "kind_of", "name",
           "register", "sequence"]
