#!/usr/bin/env python3
"""Many clients writing at once: sdht's set against etcd's put, in the same run (issue 16).

``bench/bench.py`` measures one client, one operation at a time. Users run many: this starts
three real ``sdht-storage`` nodes (durable LMDB, defaults: n=3, w=2) and a three-member etcd
(``bench/etcd.py``: Raft, WAL fsynced by a majority before the ack), then for each count of
``--clients`` runs that many client processes at once for ``--seconds``, each writing fresh
16-byte keys with 100-byte values in a loop: sdht through its own ``Ring``, etcd through
etcd3gw (each client on one member, spread over the three). It prints writes per second, the
p50 and p99 of one write, and sdht's CPU per write (its three nodes' processes), and repeats
everything ``--runs`` times, alternating the systems, so each ratio compares figures of the
same minutes on this shared machine.

``--batch N`` makes each write a batch of N keys: sdht's ``set_many`` against an etcd txn of N
puts (at most 128, etcd's ``--max-txn-ops``); the figures are then keys per second and the
latency of one batch.

With several writers, the writes that reach a node together share one durable commit
(storage/groupcommit.py, storage/commits.py); etcd batches its Raft entries and its backend
commits too.

    python bench/many_clients.py                     # 1 and 8 clients, 3 runs
    python bench/many_clients.py --clients 1,4,16 --seconds 3
    python bench/many_clients.py --batch 100
"""
from __future__ import annotations

import argparse
import array
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdht  # noqa: E402
from bench import VALUE, Procs, machine, percentile, start_node  # noqa: E402  beside this
from etcd import DURABILITY, MAX_TXN_OPS, put_txn, start_etcd  # noqa: E402
from sdht.cli.processes import group_members  # noqa: E402

#: Seconds a client process has to report once its time is up.
REPORT_DEADLINE = 60.0


def _sdht_writer(nodes: list[str], batch: int) -> Callable[[str], Any]:
    ring = sdht.Ring(nodes)
    if batch == 1:
        return lambda key: ring.set(key, VALUE)
    return lambda key: ring.set_many({f"{key}-{i:03d}": VALUE for i in range(batch)})


def _etcd_writer(port: int, batch: int) -> Callable[[str], Any]:
    import etcd3gw
    client = etcd3gw.client(host="127.0.0.1", port=port, timeout=10)
    if batch == 1:
        return lambda key: client.put(key, VALUE)
    return lambda key: put_txn(client, {f"{key}-{i:03d}": VALUE for i in range(batch)})


def _client(make: Callable[..., Callable[[str], Any]], arg: Any, batch: int, prefix: str,
            seconds: float, start: Any, out: Any) -> None:
    """One client process: write fresh keys (batches of ``batch``) from ``start`` (a shared
    event) for ``seconds``; send its latencies (seconds, as doubles: no pickling) on the pipe
    end ``out``."""
    write = make(arg, batch)
    write(f"{prefix}-warm")
    start.wait()
    took: list[float] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        began = time.perf_counter()
        write(f"{prefix}-{len(took):09d}")
        took.append(time.perf_counter() - began)
    out.send_bytes(array.array("d", took).tobytes())


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of the process groups led by ``pids``."""
    ticks = sum(int(f[11]) + int(f[12]) for pid in pids for _, f in group_members(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(name: str, make: Callable, args_of: Callable[[int], Any], clients: int,
            seconds: float, run: int, pids: list[int], batch: int = 1) -> dict[str, float]:
    """Run ``clients`` writer processes at once; their keys written per second, the p50 and
    p99 of one write (a batch of ``batch`` keys), and the CPU per key of ``pids``' process
    groups (0 when none are given)."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    pipes = [ctx.Pipe(duplex=False) for _ in range(clients)]
    procs = [ctx.Process(target=_client, args=(make, args_of(i), batch,
                                               f"{name}{run}c{clients}w{i}", seconds, start,
                                               pipes[i][1]))
             for i in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(1.0)   # every client has made its connections and written its warm-up key
    cpu = _cpu(pids) if pids else 0.0
    start.set()
    took: list[float] = []
    for reader, _ in pipes:
        if not reader.poll(seconds + REPORT_DEADLINE):
            raise SystemExit(f"a {name} client did not report in time")
        took += array.array("d", reader.recv_bytes())
    cpu = (_cpu(pids) - cpu) if pids else 0.0
    for proc in procs:
        proc.join(REPORT_DEADLINE)
    took.sort()
    keys = len(took) * batch
    return {"rate": keys / seconds, "p50": percentile(took, 0.5) * 1e3,
            "p99": percentile(took, 0.99) * 1e3, "cpu": cpu / keys * 1e3 if pids else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs, alternating the systems")
    parser.add_argument("--batch", type=int, default=1,
                        help=f"keys per write: set_many against an etcd txn (≤ {MAX_TXN_OPS})")
    parser.add_argument("--no-peers", action="store_true", help="measure sdht only (no etcd)")
    args = parser.parse_args()
    if not 1 <= args.batch <= MAX_TXN_OPS:
        parser.error(f"--batch must be 1 to {MAX_TXN_OPS} (etcd's --max-txn-ops)")
    unit = "writes" if args.batch == 1 else f"keys (batches of {args.batch})"
    counts = [int(c) for c in args.clients.split(",")]
    for name, value in machine().items():
        print(f"{name}: {value}", flush=True)
    for system in ("sdht",) if args.no_peers else ("sdht", "etcd"):
        print(f"durability of {system}: {DURABILITY[system]}")
    with tempfile.TemporaryDirectory(prefix="sdht-concurrent-") as tmp:
        procs = Procs(Path(tmp))
        try:
            started = [start_node(procs, f"node{i}") for i in range(3)]
            nodes = [node for _, node in started]
            ring = sdht.Ring()
            for node in nodes:
                ring.join(node)
            ring.close()
            ports = [] if args.no_peers else start_etcd(procs)
            pids = [proc.proc.pid for proc, _ in started]
            systems = [("sdht", _sdht_writer, lambda i: nodes, pids)]
            if ports:
                systems.append(("etcd", _etcd_writer, lambda i: ports[i % len(ports)], []))
            figures: dict[tuple[str, int], list[dict]] = {}
            for run in range(args.runs):
                for clients in counts:
                    for system, make, arg_of, owned in systems:
                        got = measure(system, make, arg_of, clients, args.seconds, run, owned,
                                      args.batch)
                        figures.setdefault((system, clients), []).append(got)
                        print(f"run {run + 1}, {clients} clients, {system}: "
                              f"{got['rate']:,.0f} {unit}/s, p50 {got['p50']:.2f} ms, "
                              f"p99 {got['p99']:.2f} ms"
                              + (f", node CPU {got['cpu']:.2f} ms/key" if owned else ""),
                              flush=True)
        finally:
            procs.stop_all()
    per = "writes" if args.batch == 1 else "keys"
    print(f"\n| clients | sdht {per}/s | etcd {per}/s | sdht/etcd (each run) | "
          "sdht p50 / p99 ms | etcd p50 / p99 ms | sdht node CPU ms/key |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for clients in counts:
        ours, theirs = figures[("sdht", clients)], figures.get(("etcd", clients))
        if theirs is None:   # --no-peers
            theirs = [{key: float("nan") for key in run} for run in ours]
        ratios = [a["rate"] / b["rate"] for a, b in zip(ours, theirs)]
        med = {key: {k: statistics.median(f[k] for f in runs) for k in runs[0]}
               for key, runs in (("sdht", ours), ("etcd", theirs))}
        print(f"| {clients} | {med['sdht']['rate']:,.0f} | {med['etcd']['rate']:,.0f} | "
              f"{statistics.median(ratios):.2f}× ({', '.join(f'{r:.2f}' for r in ratios)}) | "
              f"{med['sdht']['p50']:.2f} / {med['sdht']['p99']:.2f} | "
              f"{med['etcd']['p50']:.2f} / {med['etcd']['p99']:.2f} | "
              f"{med['sdht']['cpu']:.2f} |")


if __name__ == "__main__":
    main()
