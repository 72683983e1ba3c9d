"""Sequences kept between calls: :class:`SequenceCache`, bounded, least recently used first out.

A :class:`~sdht.sequences.Sequence` that has read its ops appends without reading them again
for ``stale_after`` seconds, and later reads check only new ops. Callers that make a sequence
per call (``sdht.append``, the ``/kv-store/sequences`` gateway) keep them here instead.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from .sequences import Sequence

#: Sequences one cache keeps by default.
CACHED = 64


class SequenceCache:
    """The last ``size`` sequences asked for, by ring client and key, made with ``options``
    (``stale_after``: :class:`~sdht.sequences.Sequence`)."""

    def __init__(self, size: int = CACHED, **options: Any) -> None:
        self.size, self.options = size, options
        self._held: collections.OrderedDict[tuple[int, str], tuple[Any, Sequence]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, ring: Any, key: str) -> Sequence:
        """The sequence ``key`` of ``ring`` (a :class:`sdht.Ring`), made on first use.

        :raises InvalidRecord: for a key a sequence cannot have.
        """
        with self._lock:
            held = self._held.pop((id(ring), key), None)
            if held is None or held[0] is not ring:   # an id reused by another ring
                held = (ring, ring.sequence(key, **self.options))
            self._held[(id(ring), key)] = held
            while len(self._held) > self.size:
                self._held.popitem(last=False)
        return held[1]

    def __len__(self) -> int:
        return len(self._held)
