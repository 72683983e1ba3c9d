"""Point 7 of ``bench/sim.py``: routing by score and hint bookkeeping at scale.

Both drive the project's own code: the client's :class:`sdht.health.NodeHealth` orders every
simulated read's preference list (sdht/ring.py's placement), and the hints a write would leave
are kept in a real :class:`storage.hints.Hints` over an LMDB in a temporary directory. The
network is a stand-in: a dead node's request fails at once (a real one costs its timeout), a
slow one answers in :data:`SLOW` seconds, the others in :data:`FAST`.
"""
from __future__ import annotations

import random
import tempfile
import time
import tracemalloc
from collections import Counter
from typing import Any

import lmdb

from sdht.health import NodeHealth
from sdht.pow import mint
from sdht.ring import Placement, position
from storage.config import DEFAULT_CONFIG
from storage.hints import DEFAULT_MAX_BYTES, Hints

#: Seconds a simulated healthy and slow node take to answer.
FAST, SLOW = 0.001, 0.020


def routing(pl: Placement, params: dict[str, Any], reads: int, dead: int, slow: int,
            seed: int = 7) -> dict[str, Any]:
    """``reads`` reads (r=1: the first node the score orders is asked; a failure moves on)
    with ``dead`` nodes down and ``slow`` nodes slow: the failures paid, the slow nodes' share
    of first choices against their share in ring order, and the cost of one ordering."""
    rnd = random.Random(seed)
    down = set(rnd.sample(pl.node_ids, dead))
    sluggish = set(rnd.sample([n for n in pl.node_ids if n not in down], slow))
    # The run stands for less than one failure cooldown, whatever the machine's speed: a dead
    # node is found out once, and no probe after a cooldown is simulated.
    health = NodeHealth(cooldown=3600.0)
    health.configure(params)
    tracemalloc.start()
    failures, first_half, unavailable = 0, 0, 0
    asked, natural, spent = Counter(), Counter(), 0.0
    for i in range(reads):
        pref = pl.preference(rnd.randrange(1 << 64))
        live = [n for n in pref if n not in down]
        if not live:              # every replica dead: no order helps
            unavailable += 1
            continue
        natural[live[0]] += 1
        began = time.perf_counter()
        order = health.order(pref)
        spent += time.perf_counter() - began
        for node in order:
            rid = health.started(node)
            if node in down:
                health.failed(node, rid)
                failures += 1
                first_half += i < reads // 2
                continue
            health.answered(node, rid, SLOW if node in sluggish else FAST)
            asked[node] += 1
            break
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    fair = sum(natural[n] for n in sluggish) / reads
    return {"nodes": len(pl.node_ids), "reads": reads, "dead": dead, "slow": slow,
            "unavailable": unavailable, "failures": failures,
            "failures_first_half": first_half,
            "slow_share": sum(asked[n] for n in sluggish) / reads, "slow_fair_share": fair,
            "order_us": spent / reads * 1e6, "health_bytes": memory}


def hints(pl: Placement, params: dict[str, Any], writes: int, dead: int,
          seed: int = 11) -> dict[str, Any]:
    """``writes`` writes with ``dead`` nodes down: how many succeed (``w`` live replicas), the
    hints they leave (one per missing replica, kept by the first replica that took it), how
    they spread over holders, and what the busiest holder keeps, measured in a real
    :class:`Hints` store, against its byte cap and the replay rate."""
    rnd = random.Random(seed)
    down = set(rnd.sample(pl.node_ids, dead))
    kept: dict[str, list[tuple[str, str]]] = {}
    failed = 0
    for i in range(writes):
        key = f"key{i:012d}"
        pref = pl.preference(position(key))
        live = [n for n in pref if n not in down]
        if len(live) < params["w"]:
            failed += 1
            continue
        for target in pref:
            if target in down:
                kept.setdefault(live[0], []).append((target, key))
    per_holder = sorted(len(v) for v in kept.values())
    busiest = max(kept, key=lambda h: len(kept[h]), default=None)
    stored, seconds, held_bytes = 0, 0.0, 0
    if busiest is not None:
        with tempfile.TemporaryDirectory() as tmp:
            env = lmdb.open(tmp, max_dbs=4, map_size=1 << 30)
            store = Hints(env)
            by_target: dict[str, list[bytes]] = {}
            for target, key in kept[busiest]:
                by_target.setdefault(target, []).append(
                    mint(key, bytes(100), params["min_work"]).pack())
            began = time.perf_counter()
            for target, packed in by_target.items():
                stored += store.add(target, packed)
            seconds = time.perf_counter() - began
            held_bytes = sum(b.bytes for b in store.backlog().values())
            env.close()
    busiest_hints = per_holder[-1] if per_holder else 0
    return {"nodes": len(pl.node_ids), "writes": writes, "dead": dead, "failed_writes": failed,
            "hints": sum(per_holder), "holders": len(per_holder),
            "hints_per_holder_max": busiest_hints,
            "hints_per_holder_mean": sum(per_holder) / len(per_holder) if per_holder else 0,
            "busiest_kept": stored, "busiest_bytes": held_bytes,
            "busiest_add_s": seconds, "cap_bytes": DEFAULT_MAX_BYTES,
            "replay_s_at_rate": busiest_hints / DEFAULT_CONFIG["HINT_RATE"]}
