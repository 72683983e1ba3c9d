"""sdht: a ring DHT with decaying proof-of-work priority (see docs/design.md).

``sdht.join/set/get/delete/remove``, ``sdht.register/lookup`` (unique names) and
``sdht.sequence/append`` (sequence CRDTs, timelines) work on a default :class:`Ring` (seeded
from ``SDHT_SEEDS``);
``sdht.connect(address)`` returns an explicit one, and ``ring.session()`` a causal
:class:`Session`. Every error derives from :class:`SDHTError`.
"""
from __future__ import annotations

from .api import (append, connect, default_ring, delete, get, get_many, join, lookup, register,
                  remove, sequence, set, set_default_ring, set_many)
from .client import Ring
from .errors import (CausalTimeout, ConfigError, InvalidContext, InvalidRecord, KeyNotFound,
                     NodeError, NodeUnavailable, NoNodes, NotAMember, OutcomeUnknown,
                     QuorumError, RingBusy, RingError, SDHTError, Timeout, TransportError,
                     ValueTooLarge, WriteConflict)
from .migration import MigrationReport
from .kinds.register import Record
from .ring import Node
from .sequences import Item, Sequence
from .sessions import Session

__version__ = "0.1.0"

__all__ = [
    "Item", "Sequence", "append", "sequence",
    "CausalTimeout", "ConfigError", "InvalidContext", "InvalidRecord", "KeyNotFound", "MigrationReport", "Node", "NodeError",
    "NodeUnavailable", "NoNodes", "NotAMember", "OutcomeUnknown", "QuorumError", "Record",
    "Ring", "RingBusy", "Session",
    "RingError", "SDHTError", "Timeout", "TransportError", "ValueTooLarge", "WriteConflict",
    "connect", "default_ring", "delete", "get", "get_many", "join", "lookup", "register",
    "remove", "set",
    "set_default_ring", "set_many",
]
