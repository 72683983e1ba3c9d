"""Which replica to ask first: the seed's score over what this client saw of each node.

The scuttlebutt-style seed picks a host by
``s = 1 / (i·delay + j·response_time + k·distance + l·error_rate)``. :class:`NodeHealth` keeps,
per node, the samples behind each term and orders replicas by it (docs/operating.md, "Routing
by score"):

* **response_time**: a moving average of this client's request times, in seconds; a request
  still outstanding counts with its age, so a hung node looks slow before it times out;
* **error_rate**: a moving average of failed requests (0 or 1 each);
* **delay**: how far behind the node is likely to be, in seconds: the rest of its *failure
  cooldown* (a node that could not be reached or timed out is treated as ``cooldown`` seconds
  behind, falling to 0), plus the time its hints may still take after it missed a write;
* **distance**: between this client's location and the node's, in thousands of km (both
  ``lat,lon``; the node's from its ``/v1/health``).

``i, j, k, l`` and the badness threshold ``b`` are ring parameters (:mod:`sdht.params`:
``score_delay``, ``score_response``, ``score_distance``, ``score_errors``, ``score_badness``),
which a client may override (:attr:`NodeHealth.weights`). Ordering keeps the ring's natural
order unless a replica is more than ``b`` worse than the one the score would put in its place
(Cassandra's dynamic snitch), so caches and proposer affinity stay put. Samples fade with a
half-life of :data:`HALF_LIFE` seconds, so a node that was slow is tried again.

A node is *suspect* while its failure cooldown runs or a request to it has been outstanding for
more than :data:`SLOW_AFTER` seconds: the same samples, read as a yes or no. Requests reach a
suspect only when the others cannot make the quorum; a write that skipped it leaves a hint.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import params as cluster_params

#: Seconds a failed node is treated as behind (and avoided) before it is asked again.
DEFAULT_COOLDOWN = 2.0
#: Seconds a request may stay outstanding before its node is suspect (a hung node, found out
#: before its timeout).
SLOW_AFTER = 0.5
#: Requests outstanding to one node, all older than :data:`CROWD_AFTER` seconds, that make it
#: suspect at once: a hung node must not take every thread of the fan-out pool meanwhile.
CROWD, CROWD_AFTER = 4, 0.05
#: Seconds after which a sample counts half: a node slow a while ago is tried again.
HALF_LIFE = 2.0
#: Seconds between two looks at what a node publishes of itself (its location).
FIGURES_EVERY = 30.0
#: Environment variable naming a client's location, ``lat,lon`` in degrees.
LOCATION_ENV = "SDHT_CLIENT_LOCATION"
#: Weight of a new sample in the moving averages.
ALPHA = 0.2
#: Seconds a node that missed a write is taken to be behind (its hints take about that long).
BEHIND_AFTER_MISS = 2.0
#: The badness below which nodes are not told apart (seconds): jitter of a few milliseconds
#: is noise, and must not reorder replicas.
FLOOR = 0.01
#: The score's parameters as ring parameters name them, by the seed's letter.
WEIGHT_PARAMS = {"i": "score_delay", "j": "score_response", "k": "score_distance",
                 "l": "score_errors", "b": "score_badness"}


@dataclass
class _Samples:
    """What one client saw of one node."""

    latency: float = 0.0          # moving average, seconds
    errors: float = 0.0           # moving average of failures (0/1)
    sampled: float = 0.0          # monotonic time of the last sample
    until: float = 0.0            # end of the failure cooldown (monotonic)
    behind_until: float = 0.0     # missed writes may be in flight until then (monotonic)
    probing: bool = False         # failed, and not answered since: one probe at a time
    location: tuple[float, float] | None = None
    looked: float = -FIGURES_EVERY  # monotonic time of the last look at its figures
    outstanding: dict[int, float] = field(default_factory=dict)   # request id -> start


def parse_location(text: str | None) -> tuple[float, float] | None:
    """``"lat,lon"`` in degrees as a pair, or None when empty or malformed."""
    if not text or not isinstance(text, str):
        return None
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def distance_mm(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
    """Great-circle distance between two ``(lat, lon)`` in thousands of km (0 if unknown)."""
    if a is None or b is None:
        return 0.0
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = (math.sin((la2 - la1) / 2) ** 2
         + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h))) / 1000.0


class NodeHealth:
    """Samples per node and the score over them, shared by every request of one client.

    :param cooldown: seconds a failed node is avoided before it is asked again.
    :param location: this client's ``(lat, lon)``, for the distance term.
    :param weights: per-client overrides of the ring's ``i, j, k, l, b`` (by letter).
    """

    def __init__(self, cooldown: float = DEFAULT_COOLDOWN,
                 location: tuple[float, float] | None = None,
                 weights: Mapping[str, float] | None = None) -> None:
        self.cooldown = cooldown
        self.location = location
        #: This client's overrides of the ring's score parameters, by letter (i, j, k, l, b).
        self.weights: dict[str, float] = dict(weights or {})
        #: The ring's parameters (set by the requests, :meth:`configure`).
        self.params: Mapping[str, Any] = cluster_params.DEFAULTS
        self._nodes: dict[str, _Samples] = {}
        self._lock = threading.Lock()
        self._ids = iter(range(1 << 62))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "NodeHealth":
        """A :class:`NodeHealth` located at ``SDHT_CLIENT_LOCATION`` (``lat,lon``), if set."""
        environ = os.environ if environ is None else environ
        return cls(location=parse_location(environ.get(LOCATION_ENV)))

    def configure(self, params: Mapping[str, Any]) -> None:
        """Use the ring's ``params`` for the score (a client's :attr:`weights` still win)."""
        self.params = params

    def weight(self, letter: str) -> float:
        """The score parameter ``letter`` (i, j, k, l or b): the client's, else the ring's."""
        if letter in self.weights:
            return float(self.weights[letter])
        name = WEIGHT_PARAMS[letter]
        return float(self.params.get(name, cluster_params.DEFAULTS[name]))

    def _get(self, node: str) -> _Samples:
        s = self._nodes.get(node)
        if s is None:
            with self._lock:
                s = self._nodes.setdefault(node, _Samples())
        return s

    # -- samples ------------------------------------------------------------------------------

    def started(self, node: str) -> int:
        """Note a request to ``node`` begins; return its id for :meth:`answered` or
        :meth:`failed`."""
        rid = next(self._ids)
        self._get(node).outstanding[rid] = time.monotonic()
        return rid

    def answered(self, node: str, rid: int | None = None, seconds: float | None = None) -> None:
        """Record that ``node`` answered (in ``seconds``): its cooldown ends."""
        s, now = self._get(node), time.monotonic()
        began = s.outstanding.pop(rid, None) if rid is not None else None
        took = seconds if seconds is not None else (now - began if began is not None else None)
        with self._lock:
            self._fade(s, now)
            if took is not None:
                s.latency += ALPHA * (took - s.latency)
            s.errors -= ALPHA * s.errors
            s.until, s.probing = 0.0, False

    def failed(self, node: str, rid: int | None = None) -> None:
        """Record that ``node`` could not be reached or did not answer in time: it is behind
        for a cooldown."""
        s, now = self._get(node), time.monotonic()
        if rid is not None:
            s.outstanding.pop(rid, None)
        with self._lock:
            self._fade(s, now)
            s.errors += ALPHA * (1.0 - s.errors)
            s.until, s.probing = now + self.cooldown, True

    def erred(self, node: str, rid: int | None = None) -> None:
        """Record that ``node`` answered with an error of its own (a 5xx, a bad answer): it
        counts in the error rate, without a cooldown."""
        s = self._get(node)
        if rid is not None:
            s.outstanding.pop(rid, None)
        with self._lock:
            self._fade(s, time.monotonic())
            s.errors += ALPHA * (1.0 - s.errors)

    def missed(self, node: str) -> None:
        """Record that ``node`` missed a write (hinted): it may be behind for a while."""
        self._get(node).behind_until = time.monotonic() + BEHIND_AFTER_MISS

    def learn(self, node: str, figures: Mapping[str, Any]) -> None:
        """Take what a node publishes about itself (its ``/v1/health``): its location."""
        s = self._get(node)
        s.looked = time.monotonic()
        loc = parse_location(figures.get("location"))
        if loc is not None:
            s.location = loc

    def figures_due(self, node: str) -> bool:
        """Whether to look at ``node``'s published figures now (at most every
        :data:`FIGURES_EVERY` seconds, and not while it is suspect: a look must not wait on a
        hung node); noted as looked at."""
        s, now = self._get(node), time.monotonic()
        if self.is_suspect(node):
            return False
        with self._lock:
            if now - s.looked < FIGURES_EVERY:
                return False
            s.looked = now
            return True

    def _fade(self, s: _Samples, now: float) -> None:
        """Let old samples count less (half-life :data:`HALF_LIFE`)."""
        if s.sampled:
            keep = 0.5 ** ((now - s.sampled) / HALF_LIFE)
            s.latency *= keep
            s.errors *= keep
        s.sampled = now

    # -- the score ----------------------------------------------------------------------------

    def terms(self, node: str, now: float | None = None) -> dict[str, float]:
        """The score's terms for ``node`` now: ``delay``, ``response_time``, ``distance``,
        ``error_rate`` (faded to now)."""
        now = time.monotonic() if now is None else now
        s = self._get(node)
        keep = 0.5 ** ((now - s.sampled) / HALF_LIFE) if s.sampled else 1.0
        oldest = min(s.outstanding.values(), default=now)
        return {"delay": max(0.0, s.until - now) + max(0.0, s.behind_until - now),
                "response_time": max(s.latency * keep, now - oldest),
                "distance": distance_mm(self.location, s.location),
                "error_rate": s.errors * keep}

    def badness(self, node: str, now: float | None = None) -> float:
        """``i·delay + j·response_time + k·distance + l·error_rate`` (the score's inverse)."""
        t = self.terms(node, now)
        return (self.weight("i") * t["delay"] + self.weight("j") * t["response_time"]
                + self.weight("k") * t["distance"] + self.weight("l") * t["error_rate"])

    def score(self, node: str) -> float:
        """The seed's score ``s = 1 / badness`` (badness floored at :data:`FLOOR`)."""
        return 1.0 / max(self.badness(node), FLOOR)

    def is_suspect(self, node: str) -> bool:
        """Whether ``node`` is within the cooldown of its last failure, has had a request
        outstanding longer than :data:`SLOW_AFTER` (or :data:`CROWD` of them for a moment), or
        is being probed. After the cooldown it is asked again like any node: that request is
        the probe, the node stays suspect while it runs, an answer clears it and a new failure
        starts a new cooldown."""
        s = self._nodes.get(node)
        if s is None:
            return False
        now = time.monotonic()
        starts = sorted(s.outstanding.values())
        if not starts:
            return now < s.until
        return (now < s.until or s.probing or now - starts[0] > SLOW_AFTER
                or (len(starts) >= CROWD and now - starts[CROWD - 1] > CROWD_AFTER))

    def order(self, nodes: list[str]) -> list[str]:
        """Return ``nodes`` (a preference list, in ring order) in the order to ask them:
        suspects last; the others in ring order unless one is more than ``b`` worse than the
        node the score puts in its place, then by score."""
        now = time.monotonic()
        bad = {n: max(self.badness(n, now), FLOOR) for n in nodes}
        healthy = [n for n in nodes if not self.is_suspect(n)]
        suspect = [n for n in nodes if n not in healthy]
        by_score = sorted(healthy, key=bad.__getitem__)
        b = self.weight("b")
        if any(bad[n] > (1.0 + b) * bad[best] for n, best in zip(healthy, by_score)):
            healthy = by_score
        return healthy + sorted(suspect, key=bad.__getitem__)

    def orders(self) -> Callable[[list[str]], list[str]]:
        """:meth:`order` for the many keys of one batch: each distinct preference list is
        ordered once, as at the first call, and every key with it gets that order (a batch of
        1,000 keys over a few replica sets spent half its client time re-scoring the same
        nodes)."""
        memo: dict[tuple[str, ...], list[str]] = {}

        def order(nodes: list[str]) -> list[str]:
            key = tuple(nodes)
            found = memo.get(key)
            if found is None:
                found = memo[key] = self.order(nodes)
            return list(found)
        return order

    def suspects(self) -> list[str]:
        """Return the nodes currently avoided."""
        return sorted(n for n in list(self._nodes) if self.is_suspect(n))

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Each node's terms and score, for status and tests."""
        return {n: {**self.terms(n), "score": self.score(n)} for n in sorted(self._nodes)}
