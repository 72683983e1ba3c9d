"""The node as a CASPaxos acceptor: each prepare or accept on a name is one LMDB write
transaction (docs/names.md).

The transaction reads the name's state and the ring's epoch, applies the pure rule of
:mod:`sdht.kinds.name` and writes the new state, so the epoch fence and the state change are
one atomic step against a ring replacement (also a write transaction): once a staged ring is
stored, no proposal of an older ring lands here, and migration, which scans after every member
stored the staged ring, copies every claim accepted before. The state is stored as an entry of
the name kind, under its own LMDB key, so it moves with its range like any entry.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping

from sdht import params as cluster_params
from sdht.kinds import name
from sdht.kinds.name import Answer, State
from sdht.wire import unpackb

from .layout import data_key, packed, stored
from .store import Store

#: Limits stored states are decoded with: they were admitted once, under limits the ring may
#: have lowered since, and must still be read.
_STORED_LIMITS = {"max_key_bytes": cluster_params.TABLE["max_key_bytes"].high,
                  "max_value_bytes": cluster_params.TABLE["max_value_bytes"].high}
#: The meta keys the store keeps its ring and byte count under (storage/store.py).
_RING, _BYTES = b"ring", b"bytes"
#: Seconds a worker reuses its count of names: counting reads every key the node holds.
COUNT_TTL = 5.0
_count_cache: dict[str, tuple[float, int]] = {}

Rule = Callable[[State | None, int], tuple[State | None, Answer]]


def prepare(store: Store, key: str, ballot: name.Ballot, epoch: int,
            params: Mapping[str, Any]) -> Answer:
    """Phase 1 on ``key`` (:func:`sdht.kinds.name.on_prepare`), in one write transaction."""
    return _apply(store, key, params,
                  lambda state, node_epoch: name.on_prepare(state, key, ballot, epoch,
                                                            node_epoch))


def accept(store: Store, key: str, ballot: name.Ballot, claim: name.Claim, epoch: int,
           params: Mapping[str, Any]) -> Answer:
    """Phase 2 on ``key`` (:func:`sdht.kinds.name.on_accept`), in one write transaction."""
    return _apply(store, key, params,
                  lambda state, node_epoch: name.on_accept(state, key, ballot, claim, epoch,
                                                           node_epoch))


def _apply(store: Store, key: str, params: Mapping[str, Any], rule: Rule) -> Answer:
    lkey = data_key(name.TAG, key)
    with store.env.begin(write=True) as txn:
        raw = txn.get(lkey, db=store.data)
        state = None if raw is None else name.from_wire(
            unpackb(packed(lkey, raw)), {**params, **_STORED_LIMITS})
        ring = txn.get(_RING, db=store.meta)
        node_epoch = json.loads(bytes(ring))["epoch"] if ring is not None else 0
        new, answer = rule(state, node_epoch)
        if new is not state and new is not None:
            value = stored(new)
            txn.put(lkey, value, db=store.data)
            grown = len(value) - len(raw) if raw is not None else len(lkey) + len(value)
            # The node's byte count covers every entry (storage/store.py keeps it).
            store._add(txn, _BYTES, grown)
    return answer


def count_names(store: Store, cache_key: str = "") -> int:
    """Names this node holds an accepted claim for, counted at most once per
    :data:`COUNT_TTL` seconds per process and ``cache_key`` (the data directory)."""
    when, count = _count_cache.get(cache_key, (float("-inf"), 0))
    if time.monotonic() - when < COUNT_TTL:
        return count
    count = 0
    with store.env.begin(db=store.data) as txn:
        for lkey, raw in txn.cursor():
            if lkey[8] == name.TAG and name.held(bytes(raw[:32]),
                                                 bytes(raw[32:32 + name.HEAD_BYTES])
                                                 ).accepted != name.ZERO:
                count += 1
    _count_cache[cache_key] = (time.monotonic(), count)
    return count
