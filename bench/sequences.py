"""Sequences (timelines) against registers on the same ring, in one run (issue 14).

Three real ``sdht-storage`` nodes (as ``bench/bench.py`` starts them), ring n=3, r=2, w=2, one
``sdht.Ring``. In ``--runs`` runs (3), medians reported, each measures side by side:

* **append vs set**: ``--appends`` appends to a warm sequence (one that has read its
  replicas within ``stale_after``: its appends read again only every 2 s), and as many
  ``ring.set`` of fresh keys; also appends to a sequence that reads its replicas before each
  append (``stale_after=0``); the three taken call by call in turns. Target: append <= 1.5x
  set.
* **reading a 10,000-item timeline** (``--items``): ``items()`` of a new ``Sequence`` (the
  summaries of r replicas, then every op of one replica in one range read, checked, merged,
  ordered), against one ``get_many`` of 1,000 keys, each ``--repeat`` times interleaved;
  ``page(50)`` of a new ``Sequence``, then of the same one again (nothing new: summaries only),
  then after another writer appended one op (one replica's ops read, one op checked).
  Target: reading <= 10x get_many.
* **merge of two 10,000-op replicas** (pure CRDT, no I/O): two replicas of ``--items`` ops
  written apart (no common op), merged; and applying 10,000 ops to an empty replica.

It also reports what a timeline costs on disk: the node's stored bytes per op.

::

    python bench/sequences.py              # the figures in docs/benchmarks.md
    python bench/sequences.py --runs 1 --items 2000 --appends 50     # quicker
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench import Procs, machine, percentile, start_node  # bench/bench.py, beside this

import sdht  # noqa: E402
from sdht.hashseq import HashSeq  # noqa: E402
from sdht.sequence_replicas import fetch, mint_op, write  # noqa: E402


def timed(op: Callable[[int], Any], count: int) -> dict[str, float]:
    """``op(i)`` for i in range(count): p50, p99 and mean in milliseconds."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        op(i)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"p50_ms": 1000 * percentile(times, 0.5), "p99_ms": 1000 * percentile(times, 0.99),
            "mean_ms": 1000 * statistics.mean(times)}


def once(op: Callable[[], Any]) -> dict[str, float]:
    start = time.perf_counter()
    op()
    ms = 1000 * (time.perf_counter() - start)
    return {"p50_ms": ms, "p99_ms": ms, "mean_ms": ms}


def load_timeline(ring: sdht.Ring, key: str, items: int) -> None:
    """Write a timeline of ``items`` appends, built locally and written in batches (the
    ops are those ``items`` appends by one writer would make)."""
    seq = HashSeq()
    ops = [seq.append({"post": i, "by": f"user{i % 97}", "text": "x" * 40})
           for i in range(items)]
    w = ring.params["min_work"]
    for i in range(0, items, 1000):
        write(ring.quorum, key, [mint_op(key, op, w) for op in ops[i:i + 1000]])


def bench_merge(items: int) -> dict[str, dict[str, float]]:
    a, b = HashSeq(), HashSeq()
    for i in range(items):
        a.append(("a", i))
        b.append(("b", i))
    ops = a.ops()
    merged = HashSeq()
    merged.merge(a)
    out = {f"merge two {items:,}-op replicas": once(lambda: merged.merge(b))}
    assert len(merged) == 2 * items
    out[f"apply {items:,} ops to an empty replica"] = once(lambda: HashSeq().apply_many(ops))
    return out


def run_once(ring: sdht.Ring, args: argparse.Namespace, run: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    warm = ring.sequence(f"bench:append:{run}")
    warm.append("first")
    cold = ring.sequence(f"bench:cold:{run}", stale_after=0.0)
    pairs = [("set", lambda i: ring.set(f"bench:set:{run}:{i}", {"post": i, "text": "x" * 40})),
             ("append (warm sequence)", lambda i: warm.append({"post": i, "text": "x" * 40})),
             ("append (reads first)", lambda i: cold.append({"post": i, "text": "x" * 40}))]
    # Call by call in turns, so that load drifting on a shared machine weighs on all alike.
    times: dict[str, list[float]] = {name: [] for name, _ in pairs}
    for i in range(args.appends):
        for name, op in (pairs if i % 2 == 0 else pairs[::-1]):
            start = time.perf_counter()
            op(i)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        values.sort()
        out[name] = {"p50_ms": 1000 * percentile(values, 0.5),
                     "p99_ms": 1000 * percentile(values, 0.99),
                     "mean_ms": 1000 * statistics.mean(values)}

    keys = [f"bench:many:{run}:{i}" for i in range(1000)]
    ring.set_many({k: {"post": i, "text": "x" * 40} for i, k in enumerate(keys)})
    key = f"bench:timeline:{run}"
    load_timeline(ring, key, args.items)
    settled(ring, key, args.items)
    got: list = []
    # Each read --repeat times, the two interleaved: load that drifts weighs on both alike.
    reads = {"get_many 1,000 keys": lambda _: ring.get_many(keys),
             f"read a {args.items:,}-item timeline": lambda _: got.append(
                 ring.sequence(key).items())}
    samples: dict[str, list[dict]] = {name: [] for name in reads}
    for _ in range(args.repeat):
        for name, op in reads.items():
            samples[name].append(timed(op, 1))
    for name, figs in samples.items():
        out[name] = {k: statistics.median(f[k] for f in figs) for k in figs[0]}
    assert len(got[0]) == args.items
    fresh = ring.sequence(key)
    out["page(50), new Sequence"] = once(lambda: fresh.page(50))
    out["page(50), same Sequence, nothing new"] = once(lambda: fresh.page(50))
    ring.sequence(key).append({"post": "one more"})
    out["page(50), same Sequence, one op new"] = once(lambda: fresh.page(50))
    out.update(bench_merge(args.items))
    return out


def stored_bytes(ring: sdht.Ring) -> int:
    return sum(ring.transport.health(node)["bytes"] for node in ring.nodes)


def settled(ring: sdht.Ring, key: str, items: int, deadline: float = 120.0) -> None:
    """Wait until every replica holds the ``items`` ops of ``key`` (a write returns after
    ``w`` of them; the last one may still be storing)."""
    ends = time.monotonic() + deadline
    while any(len(fetch(ring.quorum, node, key)[0]) < items for node in ring.preference(key)):
        if time.monotonic() > ends:
            raise SystemExit(f"the replicas of {key!r} did not all store its ops")
        time.sleep(0.2)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sdht-bench-seq-"))
    procs = Procs(tmp)
    try:
        nodes = [start_node(procs, f"node{i}")[1] for i in range(3)]
        ring = sdht.Ring([nodes[0]], timeout=(2.0, 30.0))
        for node in nodes:
            ring.join(node)
        warm = ring.sequence("bench:warmup")
        for i in range(20):   # connections, workers, caches
            ring.set(f"bench:warm:{i}", i)
            warm.append(i)
        runs = [run_once(ring, args, run) for run in range(args.runs)]
        figures = {name: {k: statistics.median(r[name][k] for r in runs) for k in runs[0][name]}
                   for name in runs[0]}
        before = stored_bytes(ring)
        load_timeline(ring, "bench:size", args.items)
        settled(ring, "bench:size", args.items)
        size = {"bytes per op, all replicas": (stored_bytes(ring) - before) / args.items,
                "replicas": ring.params["n"]}
        ring.close()
    finally:
        procs.stop_all()
    return {"figures": figures, "size": size}


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    f = result["figures"]
    lines = ["| workload | p50 ms | p99 ms | mean ms |", "|---|---|---|---|"]
    for name, fig in f.items():
        lines.append(f"| {name} | {fig['p50_ms']:.2f} | {fig['p99_ms']:.2f} | "
                     f"{fig['mean_ms']:.2f} |")
    append = f["append (warm sequence)"]["mean_ms"] / f["set"]["mean_ms"]
    read = (f[f"read a {args.items:,}-item timeline"]["mean_ms"]
            / f["get_many 1,000 keys"]["mean_ms"])
    lines += ["", f"append / set (mean): {append:.2f}x (target <= 1.5x)",
              f"read {args.items:,}-item timeline / get_many 1,000: {read:.2f}x (target <= 10x)",
              f"stored bytes per op: {result['size']['bytes per op, all replicas']:.0f} "
              f"over {result['size']['replicas']} replicas"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="reads per run, median kept")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    for k, v in machine().items():
        print(f"{k}: {v}")
    result = bench(args)
    print(report(result, args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
