"""Module-level convenience functions over a default :class:`~sdht.Ring` (like ``requests.get``).

The default ring is bootstrapped from ``SDHT_SEEDS`` (comma-separated ``host:port``) when set,
and otherwise learns the ring from the first node it joins.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Mapping

from .client import Ring
from .kinds.register import Record
from .migration import MigrationReport
from .ring import Node
from .sequence_cache import SequenceCache
from .sequences import Sequence

_default: Ring | None = None
_appended = SequenceCache()   # sdht.append's sequences
_lock = threading.Lock()


def seeds_from_env() -> list[str]:
    """Return the addresses listed in ``SDHT_SEEDS``."""
    return [s.strip() for s in os.environ.get("SDHT_SEEDS", "").split(",") if s.strip()]


def default_ring() -> Ring:
    """Return the process-wide default ring, creating it on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = Ring(seeds_from_env())   # keys, if any, from SDHT_OPERATOR_KEY/PUBKEY
        return _default


def set_default_ring(ring: Ring | None) -> None:
    """Replace the default ring (None: create a new one from ``SDHT_SEEDS`` on next use)."""
    global _default
    with _lock:
        _default = ring


def connect(*addresses: "str | Node", **kwargs: Any) -> Ring:
    """Return a new :class:`Ring` that has learnt the whole ring from any of ``addresses``.

    :raises NoNodes: when none of them can be reached.
    """
    ring = Ring(addresses or seeds_from_env(), **kwargs)
    ring.refresh()
    return ring


def join(node: "Node | str", **kwargs: Any) -> MigrationReport:
    """Add ``node`` to the default ring; see :meth:`Ring.join`."""
    return default_ring().join(node, **kwargs)


def remove(node: "Node | str", dead: bool = False,
           progress: Callable[[int], None] | None = None) -> MigrationReport:
    """Remove ``node`` from the default ring; see :meth:`Ring.remove`."""
    return default_ring().remove(node, dead, progress)


def set(key: str, value: Any, work: float | None = None) -> Record:  # noqa: A001
    """Store ``value`` under ``key`` in the default ring; see :meth:`Ring.set`."""
    return default_ring().set(key, value, work)


def get(key: str, default: Any = None) -> Any:
    """Read ``key`` from the default ring; see :meth:`Ring.get`."""
    return default_ring().get(key, default)


def delete(key: str) -> Record:
    """Delete ``key`` in the default ring; see :meth:`Ring.delete`."""
    return default_ring().delete(key)


def set_many(items: Mapping[str, Any], work: float | None = None) -> int:
    """Store many keys in the default ring; see :meth:`Ring.set_many`."""
    return default_ring().set_many(items, work)


def get_many(keys: Iterable[str]) -> dict[str, Any]:
    """Read many keys from the default ring; see :meth:`Ring.get_many`."""
    return default_ring().get_many(keys)


def register(name: str, value: Any = None, owner: bytes | None = None) -> bool:
    """Register a unique name in the default ring if it is free; see :meth:`Ring.register`."""
    return default_ring().register(name, value, owner)


def lookup(name: str) -> Any:
    """The value a unique name is registered with, or None; see :meth:`Ring.lookup`."""
    return default_ring().lookup(name)


def sequence(key: str, **options: Any) -> Sequence:
    """The sequence CRDT under ``key`` in the default ring; see :meth:`Ring.sequence`."""
    return default_ring().sequence(key, **options)


def append(key: str, item: Any) -> bytes:
    """Append ``item`` to the sequence under ``key`` in the default ring; return its id (see
    :meth:`sdht.sequences.Sequence.append`). The last sequences appended to are kept, so a run
    of appends reads the replicas only now and then."""
    return _appended.get(default_ring(), key).append(item)
