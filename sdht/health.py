"""Which nodes failed lately, so that requests stop waiting on them.

A node that could not be reached or timed out is *suspect* for a cooldown. Requests go to
healthy replicas first and reach a suspect only when the healthy ones cannot make the quorum,
so a hung replica (SIGSTOP, a stalled disk) stops costing every request its full timeout.
Once per cooldown one request is let through to a suspect as a probe: an answer clears it.
A skipped replica misses writes meanwhile; anti-entropy brings it back in step (DESIGN:
"anti-entropy"), as Dynamo's hinted handoff and Merkle repair do for short outages.
"""
from __future__ import annotations

import threading
import time

#: Seconds a failed node is avoided before one probe is let through.
DEFAULT_COOLDOWN = 2.0


class NodeHealth:
    """Failure memory per node, shared by every request of one :class:`~sdht.Ring`.

    :param cooldown: seconds a failed node is avoided before it is probed again.
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

    def avoid(self, node: str) -> bool:
        """Return True while ``node`` is suspect. When its cooldown has run out, return False
        once (that request is the probe) and start a new cooldown."""
        with self._lock:
            until = self._until.get(node)
            if until is None:
                return False
            now = time.monotonic()
            if now < until:
                return True
            self._until[node] = now + self.cooldown
            return False

    def suspects(self) -> list[str]:
        """Return the nodes currently avoided."""
        now = time.monotonic()
        with self._lock:
            return sorted(n for n, until in self._until.items() if until > now)
