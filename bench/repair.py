"""Whole-ring repair on real nodes: ``Ring.repair()`` against the previous scheme, same run.

Starts ``--nodes`` sdht-storage processes on loopback (one worker each, background sync off),
joins them, writes ``--keys`` keys (n=3), then times

* ``Ring.repair()`` (sdht/repair.py: one sync per hub and peer, ``--parallel`` hubs at once),
  with no differences and with ``--k`` keys each written to one replica only;
* the previous repair, for the ratio: one sync per distinct replica set, hub against each other
  replica, one after another from one client (over today's sdht.sync).

    python bench/repair.py --nodes 24 --keys 300000

Figures go in docs/scaling.md. Stops every node it started.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sdht  # noqa: E402
from sdht.cli.processes import free_port, start_node, stop_group, wait_healthy  # noqa: E402
from sdht.pow import mint  # noqa: E402
from sdht.repair import repair as ring_repair  # noqa: E402
from sdht.ring import intervals  # noqa: E402
from sdht.sync import merge_ranges, sync_ranges  # noqa: E402


def previous_repair(ring: sdht.Ring) -> tuple[float, int]:
    """The repair before issue 18: intervals grouped by replica set, each set's hub synced with
    each other replica in turn, one set after another. Returns seconds and syncs."""
    began = time.monotonic()
    view = ring.handle.refresh()
    readers = view.readers
    groups: dict[frozenset, list[tuple[int, int]]] = {}
    for start, end, probe in intervals(readers.boundaries()):
        groups.setdefault(frozenset(readers.preference(probe)), []).append((start, end))
    syncs = 0
    for replicas, ranges in groups.items():
        hub, *others = sorted(replicas)
        for other in others:
            sync_ranges(ring.transport, hub, other, merge_ranges(ranges), view.params)
            syncs += 1
    return time.monotonic() - began, syncs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--keys", type=int, default=300_000)
    ap.add_argument("--k", type=int, default=100, help="keys written to one replica only")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python "
          f"{platform.python_version()}, load {os.getloadavg()}")
    base = Path(tempfile.mkdtemp(prefix="sdht-repair-"))
    procs, ids = [], []
    try:
        for i in range(args.nodes):
            port = free_port()
            log = open(base / f"node-{port}.log", "ab")
            procs.append(start_node(port, base / f"node-{port}", log, workers=1,
                                    env={"PYTHONPATH": str(ROOT), "SDHT_SYNC_INTERVAL": "0"},
                                    cwd=ROOT))
            ids.append(f"127.0.0.1:{port}")
        for proc, node in zip(procs, ids):
            wait_healthy(proc, node, 60, interval=0.1)
        ring = sdht.Ring([ids[0]], timeout=(5.0, 60.0))
        for node in ids:
            ring.join(node)
        began = time.monotonic()
        for i in range(0, args.keys, 5000):
            ring.set_many({f"key-{j}": j for j in range(i, min(args.keys, i + 5000))})
        print(f"{args.nodes} nodes, {args.keys:,} keys written in "
              f"{time.monotonic() - began:.0f} s")
        ring.repair()   # warm: connections, page cache
        now = []
        for _ in range(args.runs):
            rep = ring_repair(ring.handle, None, args.parallel)
            assert rep.differences == 0 and not rep.errors, rep
            now.append(rep.seconds)
        before = [previous_repair(ring) for _ in range(args.runs)]
        view, rnd = ring.handle.view, random.Random(18)
        for i in range(args.k):
            rec = mint(f"lone-{i}", i, view.params["min_work"])
            ring.transport.put_many(rnd.choice(view.readers.for_key(rec.key)), [rec])
        lone = ring.repair()
        print(f"\nrepair, k=0 ({args.runs} runs): median {statistics.median(now):.2f} s "
              f"{[round(s, 2) for s in now]}, {rep.syncs} syncs, {rep.ranges} intervals")
        print(f"previous repair, k=0: median {statistics.median(b[0] for b in before):.2f} s "
              f"{[round(b[0], 2) for b in before]}, {before[0][1]} syncs")
        print(f"ratio previous / now: "
              f"{statistics.median(b[0] for b in before) / statistics.median(now):.1f}x")
        print(f"repair, k={args.k}: {lone.seconds:.2f} s, {lone.syncs} syncs, "
              f"{lone.differences} differences, {lone.pushed} stored")
        ring.close()
    finally:
        for proc in procs:
            stop_group(proc)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
