"""The simulation's anti-entropy and repair cases (bench/sim.py points 3 and 6).

Both drive the project's own code over in-memory stores (bench/simnet.py): the sync descent
(sdht/sync.py), the tree (storage/tree.py), the node's tree answer (storage/sync_routes.py) and
whole-ring repair (sdht/repair.py: :func:`~sdht.repair.hub_plan`, :func:`~sdht.repair.repair_view`).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import struct
import time
from typing import Any, Iterator, Mapping

import sdht.sync as sync_mod
import sdht.wire as wire_mod
import storage.tree as tree_mod
from sdht.pow import mint
from sdht.repair import hub_plan, repair_view
from sdht.ring import Member, RingView, intervals
from sdht.sync import merge_ranges, sync_ranges
from sdht.wire import FANOUT, RING_SIZE
from simnet import Keyset, SimStore, SimTransport, build_tree


@contextlib.contextmanager
def tree_depth(depth: int) -> Iterator[None]:
    """Run with a tree of ``depth`` levels below the root (fan-out 16 kept): the constants the
    tree, the node's answer and the descent read, set for the while (an experiment, not a
    setting: sdht/wire.py's shape is the one the nodes use)."""
    saved = (wire_mod.DEPTH, sync_mod.DEPTH, tree_mod.DEPTH, tree_mod.LEAF_BITS, tree_mod._NODE)
    wire_mod.DEPTH = sync_mod.DEPTH = tree_mod.DEPTH = depth
    tree_mod.LEAF_BITS = 4 * depth
    tree_mod._NODE = struct.Struct(">BH" if FANOUT ** depth <= 1 << 16 else ">BI")
    try:
        yield
    finally:
        (wire_mod.DEPTH, sync_mod.DEPTH, tree_mod.DEPTH, tree_mod.LEAF_BITS,
         tree_mod._NODE) = saved


def anti_entropy(sizes: list[int], ks: list[int], depths: list[int],
                 params: Mapping[str, Any], log: Any = print) -> list[dict[str, Any]]:
    """Point 3: two replicas of ``n`` keys, one of which lacks ``k`` the other holds; the real
    descent between them, per ``n``, ``k`` and tree depth (depths other than the wire's only
    at the largest ``n``)."""
    rows = []
    for n in sizes:
        began = time.monotonic()
        keys = Keyset(n)
        for depth in ([wire_mod.DEPTH] + [d for d in depths if d != wire_mod.DEPTH]
                      if n == max(sizes) else [wire_mod.DEPTH]):
            with tree_depth(depth):
                base = build_tree(keys)
                log(f"  anti-entropy n={n:,} depth={depth}: tree built "
                    f"({time.monotonic() - began:.0f} s)")
                # other shapes: up to 1,000 differing keys (at 10**7 keys and depth 3 more
                # would list every key of the ring, twice)
                for k in (k for k in ks if k <= n and (depth == wire_mod.DEPTH or k <= 1000)):
                    rows.append(_one_sync(keys, base, n, k, depth, params))
    return rows


def _one_sync(keys: Keyset, base: dict, n: int, k: int, depth: int,
              params: Mapping[str, Any]) -> dict[str, Any]:
    a, b = SimStore(keys, base), SimStore(keys, base)
    b.put_many([mint(f"new-{n}-{k}-{i}", i, params["min_work"]) for i in range(k)], params)
    t = SimTransport({"a": a, "b": b}, params)
    try:
        rep = sync_ranges(t, "a", "b", [(0, RING_SIZE)], params)
    finally:
        t.close()
    if a.root() != b.root() or rep.differences != k or rep.pushed_to_a != k:
        raise AssertionError(f"the sync did not converge at n={n} k={k}: {rep}")
    bound = max(1, k) * math.log2(n)
    return {"n": n, "k": k, "depth": depth, "fanout": FANOUT,
            "keys_per_leaf": round(n / FANOUT ** depth, 1), "hashes": rep.hashes,
            "compared": rep.compared, "rounds": rep.rounds, "messages": t.traffic.messages,
            "bytes": t.traffic.bytes, "k_log2_n": round(bound),
            "ratio": round(rep.hashes / bound, 2)}


def cluster(nodes: int, tokens: int, keys: Keyset, params: Mapping[str, Any]
            ) -> tuple[RingView, dict[str, SimStore]]:
    """A ring of ``nodes`` in-memory stores, each holding the keys of the ranges it
    replicates (as after joins), with their trees."""
    members = tuple(sorted((Member(node_id(i), tokens=tokens) for i in range(nodes)),
                           key=lambda m: m.id))
    view = RingView(1, members, dict(params))
    readers = view.readers
    ranges: dict[str, list[tuple[int, int]]] = {m.id: [] for m in members}
    for start, end, probe in intervals(readers.boundaries()):
        for r in readers.preference(probe):
            ranges[r].append((start, end))
    stores = {m: SimStore(keys.subset(merge_ranges(r))) for m, r in ranges.items()}
    for store in stores.values():
        store.ring = view
    return view, stores


def node_id(i: int) -> str:
    """A made-up address for member ``i``."""
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:7000"


def repair(nodes: int, key_count: int, ks: list[int], tokens: int, params: Mapping[str, Any],
           parallel: int, rtt: float, log: Any = print) -> list[dict[str, Any]]:
    """Point 6: a whole-ring repair (sdht.repair.repair_view) of a simulated ring, with ``k``
    keys each written to one replica only, for each ``k`` in turn."""
    began = time.monotonic()
    keys = Keyset(key_count)
    view, stores = cluster(nodes, tokens, keys, params)
    log(f"  repair {nodes} nodes, {key_count:,} keys: stores built "
        f"({time.monotonic() - began:.0f} s)")
    plan = hub_plan(view)
    before = _syncs_per_replica_set(view)
    rows, rnd = [], random.Random(nodes)
    for k in ks:
        written = [mint(f"lone-{nodes}-{k}-{i}", i, params["min_work"]) for i in range(k)]
        for rec in written:
            replicas = view.readers.for_key(rec.key)
            stores[rnd.choice(replicas)].put_many([rec], params)
        t = SimTransport(stores, params, max_parallel=2 * parallel)
        cpu = time.monotonic()
        try:
            rep = repair_view(t, view, (), None, parallel)
        finally:
            t.close()
        cpu = time.monotonic() - cpu
        for rec in written:
            for r in view.readers.for_key(rec.key):
                if stores[r].get_refs([_ref(rec)])[0] is None:
                    raise AssertionError(f"repair left {rec.key} missing on {r}")
        served = [m for m, _ in t.traffic.by_node.values()]
        rows.append({
            "nodes": nodes, "tokens": tokens, "keys": key_count, "k": k,
            "syncs": rep.syncs, "syncs_one_per_replica_set": before,
            "hub_peer_pairs": sum(len(p) for p, _ in plan.values()),
            "messages": t.traffic.messages, "bytes": t.traffic.bytes,
            "differences": rep.differences, "pushed": rep.pushed,
            "max_messages_one_node": max(served),
            # one client, `parallel` hubs at once, each request pair one round trip
            "modeled_client_s": round(t.traffic.messages / 2 * rtt / parallel, 2),
            # every node its own hub in its background pass, PEERS_AT_ONCE peers at a time
            "modeled_pass_s": round(max(served) / 2 * rtt / 4, 3),
            "sim_cpu_s": round(cpu, 1)})
        log(f"  repair row {json.dumps(rows[-1])}")
    return rows


def _ref(rec: Any) -> bytes:
    from storage.layout import entry_key
    return entry_key(rec)


def _syncs_per_replica_set(view: RingView) -> int:
    """How many syncs the previous repair ran: for each distinct replica set, one per replica
    but the first (its first sweep, with no differences)."""
    readers = view.readers
    sets = {frozenset(readers.preference(p)) for _, _, p in intervals(readers.boundaries())}
    return sum(len(s) - 1 for s in sets)
