"""Which nodes failed lately, so that requests stop waiting on them.

A node that could not be reached or timed out is *suspect* for a cooldown. Requests go to
healthy replicas first and reach a suspect only when the healthy ones cannot make the quorum,
so a hung replica (SIGSTOP, a stalled disk) stops costing every request its full timeout.
After the cooldown the node is asked again like any other: an answer clears it, a failure
starts another cooldown.
A skipped replica misses writes meanwhile; anti-entropy brings it back in step
(docs/anti-entropy.md), as Dynamo's hinted handoff and Merkle repair do for short outages.
"""
from __future__ import annotations

import threading
import time

#: Seconds a failed node is avoided before one probe is let through.
DEFAULT_COOLDOWN = 2.0


class NodeHealth:
    """Failure memory per node, shared by every request of one :class:`~sdht.Ring`.

    :param cooldown: seconds a failed node is avoided before it is asked again.
    """

    def __init__(self, cooldown: float = DEFAULT_COOLDOWN) -> None:
        self.cooldown = cooldown
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def failed(self, node: str) -> None:
        """Record that ``node`` could not be reached or did not answer in time."""
        with self._lock:
            self._until[node] = time.monotonic() + self.cooldown

    def answered(self, node: str) -> None:
        """Record that ``node`` answered: it is healthy again."""
        if node in self._until:
            with self._lock:
                self._until.pop(node, None)

    def is_suspect(self, node: str) -> bool:
        """Return True while ``node`` is within the cooldown of its last failure. Afterwards
        it is asked again like any node: that request is the probe, and a new failure starts
        a new cooldown."""
        until = self._until.get(node)
        return until is not None and time.monotonic() < until

    def order(self, nodes: list[str]) -> list[str]:
        """Return ``nodes`` healthy first, each group in its given (preference) order."""
        return sorted(nodes, key=self.is_suspect)

    def suspects(self) -> list[str]:
        """Return the nodes currently avoided."""
        now = time.monotonic()
        with self._lock:
            return sorted(n for n, until in self._until.items() if until > now)
