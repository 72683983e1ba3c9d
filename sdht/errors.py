"""Errors raised by sdht.

Every exception the library raises on purpose derives from :class:`SDHTError`::

    SDHTError
    ├── ConfigError(ValueError)          bad settings, parameters or addresses
    ├── InvalidRecord(ValueError)        a record fails validation (types, sizes, work, skew)
    │   └── ValueTooLarge                a key or value is over its size limit
    ├── KeyNotFound(KeyError)            ``ring[key]`` on a missing or deleted key
    ├── RingError                        the ring cannot serve the request
    │   ├── NoNodes                      the ring has no members, or none could be reached
    │   ├── RingBusy                     another membership change is in progress
    │   ├── NotAMember                   the named node is not in the ring
    │   └── UntrustedRing                a ring the operator did not sign
    ├── Unauthorized                     a request needs authority this party lacks
    ├── QuorumError                      fewer replicas answered than ``r`` or ``w`` require
    │   ├── CausalTimeout                no replica reached a session's version in time
    │   └── OutcomeUnknown               a name's registration may or may not have happened
    ├── WriteConflict                    a higher-priority version holds the key
    ├── NodeError                        one node answered with an error
    ├── TransportError                   a node could not be reached
    │   ├── NodeUnavailable              connection refused, reset or closed
    │   └── Timeout                      no answer within the timeout
    ├── ClusterError                     the local demo cluster cannot do as asked
    │   ├── WaitTimeout(TimeoutError)    a process did not become ready in time
    │   └── ProcessExited(RuntimeError)  a process exited while it was awaited
    └── InvalidContext(ValueError)       a causal context that is malformed or implausible

Each carries the context that helps a caller decide what to do (the key, the node).
"""
from __future__ import annotations

from typing import Any


class SDHTError(Exception):
    """Root of every error sdht raises on purpose."""


class ConfigError(SDHTError, ValueError):
    """Raised when settings, cluster parameters or a node address are invalid."""


class InvalidRecord(SDHTError, ValueError):
    """Raised when a record or value fails validation (types, sizes, work, timestamp)."""


class ValueTooLarge(InvalidRecord):
    """Raised when a key or value is larger than the configured limit."""


class KeyNotFound(SDHTError, KeyError):
    """Raised by ``ring[key]`` when the key is missing or deleted."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class RingError(SDHTError):
    """Raised when the ring cannot serve a request."""


class NoNodes(RingError):
    """Raised when the ring has no members, or no seed could be reached."""


class RingBusy(RingError):
    """Raised when a membership change is refused because another one is in progress."""


class NotAMember(RingError):
    """Raised when an operation names a node that is not in the ring."""


class QuorumError(SDHTError):
    """Raised when fewer replicas acknowledged than the quorum (``r`` or ``w``) needs."""

    def __init__(self, message: str, key: str | None = None, needed: int = 0, got: int = 0,
                 errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.needed = needed
        self.got = got
        self.errors = errors or {}


class WriteConflict(SDHTError):
    """Raised when a write loses to a stored version of higher priority (e.g. rented work)."""

    def __init__(self, message: str, key: str | None = None, score: float | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.score = score


class NodeError(SDHTError):
    """Raised when a node answers a request with an error status."""

    def __init__(self, message: str, node: str | None = None, status: int | None = None,
                 body: Any = None) -> None:
        super().__init__(message)
        self.node = node
        self.status = status
        self.body = body


class TransportError(SDHTError):
    """Raised when a node cannot be reached."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class NodeUnavailable(TransportError):
    """Raised when a connection to a node is refused, reset or closed."""


class Timeout(TransportError):
    """Raised when a node does not answer within the request timeout."""


class UntrustedRing(RingError):
    """Raised when a ring is not signed by the operator key this party trusts."""


class Unauthorized(SDHTError):
    """Raised when a request needs authority (the operator key, a member key, a page token)
    that the caller does not have or did not prove."""


class ClusterError(SDHTError):
    """Raised when the local demo cluster (``sdht cluster``) cannot do as asked."""


class WaitTimeout(ClusterError, TimeoutError):
    """Raised when a process's readiness condition is still false at its deadline."""


class ProcessExited(ClusterError, RuntimeError):
    """Raised while waiting for a process that has already exited."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class InvalidContext(SDHTError, ValueError):
    """Raised when a causal context (:mod:`sdht.session`) is malformed, larger than its
    bounds, or names versions no node could have accepted."""


class CausalTimeout(QuorumError):
    """Raised when a session's read found no replica at its context's version of the key (or
    too few replies) before its deadline: an older version is never returned instead."""


class OutcomeUnknown(QuorumError):
    """Raised by ``register`` when its deadline passed after it proposed its claim to a name's
    acceptors, without a majority's answer: the name may or may not be registered to it
    (docs/names.md). It never guesses. ``owner`` is the call's id: pass it to ``register``
    again to retry, and a retry that finds the earlier claim chosen returns True."""

    def __init__(self, message: str, key: str | None = None, owner: bytes = b"",
                 errors: dict[str, str] | None = None) -> None:
        super().__init__(message, key, errors=errors)
        self.owner = owner
