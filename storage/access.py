"""What a client may make the ``/kv-store`` gateway spend (docs/http-api.md, "Access").

The gateway mints proof of work for its callers, and a read may hold a thread while it waits for
the replicas to reach its causal context. An open cluster must not let a client turn that into
unbounded work, so a node bounds three things:

* **the work it mints**: gateway writes are refused (403) on a ring whose ``min_work`` is above
  ``GATEWAY_MAX_WORK``: an operator who prices writes that high wants writers to pay, and
  they can (the library, ``/v1/record``). Otherwise a write costs at most ``e**(min_work + 4)``
  hashes (the library's re-mint margin), 0.5 ms at the default ``min_work``;
* **the rate**: a token bucket per client address and worker process, ``GATEWAY_WRITE_RATE``
  tokens a second up to ``GATEWAY_WRITE_BURST``. A write, and a read that waits past its first
  :data:`FIRST_WAIT` seconds, take a token; with none left the answer is 429 with
  ``Retry-After``. Loopback clients are not limited (``GATEWAY_LIMIT_LOOPBACK`` limits them
  too: behind a proxy on the same machine every client is loopback);
* **the waiting**: at most ``GATEWAY_MAX_WAITING`` reads per worker process wait past
  :data:`FIRST_WAIT` at once; another is answered 503 at once.

The buckets are bounded: at most :data:`MAX_CLIENTS` per process, the least recently seen
forgotten first (a forgotten client starts with a full bucket, as a new one does).
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Callable, Mapping

from sdht.trust import is_loopback

#: Client addresses whose buckets a worker process keeps.
MAX_CLIENTS = 10_000
#: Seconds a gateway read waits for its context before it counts as a long wait (a token and a
#: waiting slot); most reads are done well within it.
FIRST_WAIT = 0.5


class Buckets:
    """Token buckets by client: ``rate`` tokens a second, ``burst`` at most, for at most
    ``max_clients`` clients."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._held: collections.OrderedDict[str, tuple[float, float]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0.0 when it had one, else the seconds until it will."""
        now = self.clock()
        with self._lock:
            tokens, last = self._held.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._held[client] = (tokens, now)   # now the most recently seen
            while len(self._held) > self.max_clients:
                self._held.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._held)


class Access:
    """One worker process's gateway limits, from the node's settings."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        rate = config["GATEWAY_WRITE_RATE"]
        self.buckets = Buckets(rate, config["GATEWAY_WRITE_BURST"]) if rate > 0 else None
        self.limit_loopback = config["GATEWAY_LIMIT_LOOPBACK"]
        self.max_work = config["GATEWAY_MAX_WORK"]
        self.waiting = threading.BoundedSemaphore(max(1, config["GATEWAY_MAX_WAITING"]))
        self.may_wait = config["GATEWAY_MAX_WAITING"] > 0

    def retry_after(self, client: str) -> int:
        """Take a token for ``client``; 0 when it may go on, else whole seconds to wait."""
        if self.buckets is None or (is_loopback(client) and not self.limit_loopback):
            return 0
        wait = self.buckets.take(client)
        return math.ceil(wait) if wait > 0 else 0

    def mints(self, params: Mapping[str, Any]) -> bool:
        """Whether this node mints for gateway writes on a ring of ``params``."""
        return params["min_work"] <= self.max_work

    def wait_slot(self) -> bool:
        """Take a waiting slot without blocking; False when none is free (then answer 503).
        Give it back with :meth:`release`."""
        return self.may_wait and self.waiting.acquire(blocking=False)

    def release(self) -> None:
        """Give back a slot :meth:`wait_slot` took."""
        self.waiting.release()
