#!/usr/bin/env python3
"""Issue 16's ratios measured in pairs of short, alternating blocks (``bench/bench.py`` measures
each system in one long stretch, minutes apart from its peer's).

Run from the repository root::

    python bench/paired.py                 # 15 pairs of each comparison
    python bench/paired.py --pairs 30      # more pairs, tighter quartiles

On a shared 2-core machine the load changes from minute to minute, and a ratio of two figures
taken minutes apart moves with it (``docs/benchmarks.md``: the same target met in one run of
``bench.py`` and missed in the next). Here each comparison is a series of pairs: one block of
sdht, then one block of its peer on the same machine seconds later, the order swapped every
other pair so that neither side always runs first. Each pair gives one ratio; the median and
the quartiles of those ratios are the result, beside ``bench.TARGETS``.

Workloads and systems are those of ``bench.py``: one client, keys of 16 bytes, values of 100
bytes, sdht on three real nodes at default durability, etcd as three members through etcd3gw,
three memcached servers through pymemcache's ``HashClient``. A peer that is not installed is
skipped with a line saying so (``--install-peers`` in ``bench.py`` installs them). Kademlia is
left out: its client runs on an event loop in the bench's own process, which ``bench.py``
measures on its own.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  bench/bench.py, beside this
import etcd  # noqa: E402
import sdht  # noqa: E402

#: One block: a callable that does ``count`` units of work on one system.
Block = Callable[[int], None]


def single(op: Callable[[str], Any], keys: list[str]) -> Block:
    """A block of ``count`` single operations ``op(key)``, each on the next key of ``keys``
    (cycling)."""
    state = {"next": 0}

    def block(count: int) -> None:
        for _ in range(count):
            op(keys[state["next"] % len(keys)])
            state["next"] += 1
    return block


def writing(put: Callable[[str, bytes], Any]) -> Callable[[str], Any]:
    """``put(key, value)`` as an operation of one key, writing :data:`bench.VALUE`."""
    return lambda key: put(key, bench.VALUE)


def filling(put_many: Callable[[dict[str, bytes]], Any]) -> Callable[[list[str]], Any]:
    """``put_many(items)`` as an operation of a chunk of keys, each written
    :data:`bench.VALUE`."""
    return lambda chunk: put_many(dict.fromkeys(chunk, bench.VALUE))


def batched(op: Callable[[list[str]], Any], keys: list[str], size: int) -> Block:
    """A block of ``count`` keys in batches of ``size`` (``count`` rounds up to whole ones)."""
    chunks = [keys[i:i + size] for i in range(0, len(keys), size)]
    state = {"next": 0}

    def block(count: int) -> None:
        for _ in range(max(1, count // size)):
            op(chunks[state["next"] % len(chunks)])
            state["next"] += 1
    return block


def timed(block: Block, count: int) -> float:
    """Run ``block(count)``; return units per second."""
    start = time.perf_counter()
    block(count)
    return count / (time.perf_counter() - start)


def pair_up(name: str, ours: Block, theirs: Block, count: int, pairs: int) -> list[float]:
    """``pairs`` ratios of sdht's rate over the peer's, each from two blocks of ``count`` units
    run back to back, in an order that alternates from pair to pair."""
    ours(count), theirs(count)   # a warm-up block each: connections, caches, first writes
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            a = timed(ours, count)
            b = timed(theirs, count)
        else:
            b = timed(theirs, count)
            a = timed(ours, count)
        ratios.append(a / b)
        print(f"  {name}, pair {i + 1}: {a:,.0f} / {b:,.0f} = {a / b:.2f}×", flush=True)
    return ratios


def summary(name: str, ratios: list[float], target: float) -> dict[str, Any]:
    """The median and the quartiles of one comparison's ratios, and how many pairs met it."""
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"what": name, "median": median, "q1": q1, "q3": q3, "target": target,
            "met": median >= target, "pairs_met": sum(r >= target for r in ratios),
            "ratios": ratios}


def render(rows: list[dict[str, Any]]) -> str:
    out = ["| sdht / peer | median | quartiles | pairs ≥ target | target | met |",
           "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['what']} | {r['median']:.2f}× | {r['q1']:.2f}–{r['q3']:.2f}× | "
                   f"{r['pairs_met']} of {len(r['ratios'])} | ≥ {r['target']}× | "
                   f"{'yes' if r['met'] else '**no**'} |")
    return "\n".join(out)


def comparisons(procs: bench.Procs, ring: sdht.Ring, args: argparse.Namespace
                ) -> list[tuple[str, Block, Block, int]]:
    """Each comparison this machine can run: its name (a key of ``bench.TARGETS``), sdht's
    block, the peer's block and the units per block."""
    keys = bench.make_keys("s", args.keys)
    found = []
    client = None if args.no_peers else etcd.start_client(procs)
    if client is not None:
        for key in keys:   # the gets read keys that exist, on both sides
            ring.set(key, bench.VALUE)
            client.put(key, bench.VALUE)
        found += [
            ("set etcd", single(writing(ring.set), keys), single(writing(client.put), keys),
             args.single),
            ("get etcd", single(ring.get, keys), single(client.get, keys), args.single),
            ("set_many 100 etcd", batched(filling(ring.set_many), keys, 100),
             batched(filling(lambda items: etcd.put_txn(client, items)), keys, 100),
             args.batch)]
    memcached = None if args.no_peers else bench.start_memcached(procs)
    if memcached is not None:
        mc = memcached[0]
        mc.set_many(dict.fromkeys(keys, bench.VALUE))
        found += [
            ("set_many 1000 memcached", batched(filling(ring.set_many), keys, 1000),
             batched(filling(mc.set_many), keys, 1000), args.batch),
            ("get_many 1000 memcached", batched(ring.get_many, keys, 1000),
             batched(mc.get_many, keys, 1000), args.batch)]
    if not found:   # no peer: sdht against itself, so the script still runs end to end
        found.append(("set sdht", single(writing(ring.set), keys),
                      single(writing(ring.set), keys), args.single))
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=15, help="pairs per comparison")
    parser.add_argument("--single", type=int, default=300, help="single ops per block")
    parser.add_argument("--batch", type=int, default=3_000, help="keys per batched block")
    parser.add_argument("--keys", type=int, default=3_000, help="distinct keys per system")
    parser.add_argument("--no-peers", action="store_true",
                        help="no peer: sdht's set against itself (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the pairs and summaries here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = bench.machine()
    for name, value in info.items():
        print(f"{name}: {value}", flush=True)
    print(f"{args.pairs} pairs per comparison, {args.single} single ops or {args.batch:,} "
          f"batched keys per block, {args.keys:,} keys", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="sdht-paired-"))
    procs = bench.Procs(tmp)
    ring = sdht.Ring()
    rows = []
    try:
        for i in range(3):
            ring.join(bench.start_node(procs, f"sdht{i}")[1])
        for name, ours, theirs, count in comparisons(procs, ring, args):
            workload, peer = name.rsplit(" ", 1)
            target = bench.TARGETS.get((workload, peer), 1.0)
            rows.append(summary(name, pair_up(name, ours, theirs, count, args.pairs), target))
    finally:
        ring.close()
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(render(rows))
    print("\n| system | durability of an acknowledged write |\n|---|---|")
    for system in dict.fromkeys(["sdht"] + [r["what"].rsplit(" ", 1)[1] for r in rows]):
        print(f"| {system} | {etcd.DURABILITY[system]} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
