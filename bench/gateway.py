#!/usr/bin/env python3
"""The /kv-store gateway's latency against the Python library's, on the same ring (issue 12).

Run from the repository root::

    python bench/gateway.py              # 2,000 operations per row
    python bench/gateway.py --ops 200    # quicker

Three real ``sdht-storage`` nodes (n=3, r=2, w=2, default min work) on free loopback ports in a
temporary directory, as bench/bench.py starts them. One client, one operation at a time, keys of
16 bytes, values of 100 characters. The library rows call :class:`sdht.Ring` and its sessions;
the gateway rows send HTTP requests (one keep-alive ``requests.Session``) to the nodes in turn,
each coordinating through its own ring client. A gateway PUT is a read then a write (it answers
whether it replaced a value). Reads with a context send it in the body: the context a PUT of
the key answered (read your writes, through another node), or a session's of 1,000 keys (the
bound: 100 KB each way). Prints the machine, then p50 and p99 per row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import requests  # noqa: E402

import sdht  # noqa: E402
from bench import Procs, machine, start_node  # noqa: E402

VALUE = "v" * 100
WARMUP = 50


def timed(fn: Callable[[int], object], ops: int) -> list[float]:
    """Milliseconds of each of ``ops`` calls ``fn(i)``, after :data:`WARMUP` untimed ones."""
    for i in range(WARMUP):
        fn(i)
    out = []
    for i in range(ops):
        began = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - began) * 1000)
    return out


def row(name: str, ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"workload": name, "p50": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))], "ops/s": len(ms) / (sum(ms) / 1000)}


def run(ops: int) -> list[dict]:
    """Measure every row on a fresh three-node ring."""
    with tempfile.TemporaryDirectory(prefix="sdht-gateway-bench-") as tmp:
        procs = Procs(Path(tmp))
        try:
            nodes = [start_node(procs, f"node{i}")[1] for i in range(3)]
            ring = sdht.Ring(nodes[:1])
            for node in nodes:
                ring.join(node)
            return measure(ring, nodes, ops)
        finally:
            procs.stop_all()


def measure(ring: sdht.Ring, nodes: list[str], ops: int) -> list[dict]:
    keys = [f"gw-{i:012d}" for i in range(ops + WARMUP)]
    http = requests.Session()

    def url(i: int, key: str, shift: int = 0) -> str:
        return f"http://{nodes[(i + shift) % len(nodes)]}/kv-store/keys/{key}"

    written: dict[int, dict] = {}   # the context each PUT answered, of its one key

    def put(i: int, prefix: str) -> None:
        resp = http.put(url(i, prefix + keys[i]), json={"value": VALUE}, timeout=10)
        assert resp.status_code in (200, 201), resp.text
        written[i] = resp.json()["causal-context"]

    def get(i: int, prefix: str, r: int, ctx: dict | None = None, shift: int = 0) -> None:
        # The context in the body, as the seed's clients send it: a header holds 8 KiB at most.
        resp = http.get(url(i, prefix + keys[i], shift), params={"r": str(r)}, timeout=10,
                        json={"causal-context": ctx} if ctx else None)
        assert resp.status_code == 200, resp.text

    rows = []
    try:
        rows.append(row("library set", timed(lambda i: ring.set("l" + keys[i], VALUE), ops)))
        rows.append(row("library get (r=2)", timed(lambda i: ring.get("l" + keys[i]), ops)))
        s = ring.session()
        for i in range(ops + WARMUP):   # the session has seen every key: reads check it
            s.get("l" + keys[i])
        rows.append(row("library session get r=2", timed(
            lambda i: s.get("l" + keys[i], r=2), ops)))
        rows.append(row("library session get r=1", timed(
            lambda i: s.get("l" + keys[i], r=1), ops)))
        rows.append(row("library session set", timed(lambda i: s.set("l" + keys[i], VALUE),
                                                     ops)))
        rows.append(row("gateway PUT (new key)", timed(lambda i: put(i, "g"), ops)))
        rows.append(row("gateway PUT (replace)", timed(lambda i: put(i, "g"), ops)))
        rows.append(row("gateway GET r=2", timed(lambda i: get(i, "g", 2), ops)))
        rows.append(row("gateway GET r=1", timed(lambda i: get(i, "g", 1), ops)))
        rows.append(row("gateway GET r=2, its write's context", timed(
            lambda i: get(i, "g", 2, written[i], shift=1), ops)))   # through another node
        rows.append(row("gateway GET r=1, its write's context", timed(
            lambda i: get(i, "g", 1, written[i], shift=1), ops)))
        ctx = s.export()   # a context of ~ops keys (at most 1,000), decoded by every GET
        rows.append(row(f"gateway GET r=2, context of {len(s.context)} keys",
                        timed(lambda i: get(i, "l", 2, ctx), ops)))
        rows.append(row(f"gateway GET r=1, context of {len(s.context)} keys",
                        timed(lambda i: get(i, "l", 1, ctx), ops)))
    finally:
        http.close()
        ring.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="timed operations per row")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    for name, value in machine().items():
        print(f"{name}: {value}")
    print(f"ops per row: {args.ops}, one client, values of {len(VALUE)} characters\n")
    rows = run(args.ops)
    print("| workload | p50 (ms) | p99 (ms) | ops/s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workload']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['ops/s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
