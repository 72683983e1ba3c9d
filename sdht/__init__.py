"""sdht: a ring DHT with proof-of-work priority (see DESIGN.md)."""
from __future__ import annotations

from .errors import (ConfigError, InvalidRecord, KeyNotFound, NodeError, NodeUnavailable,
                     NoNodes, NotAMember, QuorumError, RingBusy, RingError, SDHTError, Timeout,
                     TransportError, ValueTooLarge, WriteConflict)

__version__ = "0.1.0"
from .client import Node, Ring
from .migration import MigrationReport
from .api import connect, default_ring, delete, get, join, remove, set, set_default_ring
