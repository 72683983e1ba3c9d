"""sdht: a ring DHT with proof-of-work priority (see DESIGN.md)."""
from __future__ import annotations

from .errors import (ConfigError, InvalidRecord, KeyNotFound, NodeError, NodeUnavailable,
                     NoNodes, NotAMember, QuorumError, RingBusy, RingError, SDHTError, Timeout,
                     TransportError, ValueTooLarge, WriteConflict)

__version__ = "0.1.0"
