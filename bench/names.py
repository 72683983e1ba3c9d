"""Unique names: sdht's ``register`` against etcd's put-if-absent, in one run (issue 13).

sdht: three real ``sdht-storage`` nodes (as ``bench/bench.py`` starts them), ring n=3, one
``sdht.Ring`` per client thread. etcd: a three-member cluster of Debian's
``etcd-server`` (``/usr/bin/etcd``), durable (its default fsync per commit), each member on
free 127.0.0.1 ports with a temporary data directory, stopped by PID; its put-if-absent is
etcd3gw's ``create``: a ``Txn`` comparing ``create_revision == 0``, then the put. One etcd3gw
client per thread (a ``requests`` session is not shared), threads spread over the members.

Workloads, each timed per call (p50, p99) and as a rate (calls per second of wall time), in
``--runs`` runs (3) whose medians are reported; within a run each workload runs on both
systems back to back, the first one alternating between runs:

* uncontended, 1 client: fresh names one after another;
* uncontended, 8 clients: 8 threads, each on names of its own;
* hot name, 8 contenders: rounds in which all 8 threads register one fresh name at once
  (a barrier starts them); every round must have exactly one winner.

::

    apt-get install -y etcd-server && pip install etcd3gw   # the peer, if absent
    python bench/names.py                  # the figures in docs/benchmarks.md
    python bench/names.py --names 100 --rounds 10          # quicker
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from bench import ROOT, Procs, machine, percentile, start_node  # bench/bench.py, beside this
from etcd import start_etcd  # bench/etcd.py

import sdht  # noqa: E402

THREADS = 8
CALL_DEADLINE = 30.0   # seconds a worker waits at the round's barrier before the run fails


def run_threads(count: int, work: Callable[[int], list[tuple[float, Any]]]
                ) -> tuple[list[tuple[float, Any]], float]:
    """Run ``work(i)`` in ``count`` threads; return every ``(seconds, result)`` and the wall
    time they took together."""
    results: list[list[tuple[float, Any]]] = [[] for _ in range(count)]
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as exc:   # reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    return [r for rs in results for r in rs], wall


def timed(op: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = op()
    return time.perf_counter() - began, result


def uncontended(register: Callable[[int, str], bool], threads: int, names: int,
                prefix: str) -> dict[str, Any]:
    """``names`` fresh names split over ``threads``; every call must win."""
    per = names // threads

    def work(i: int) -> list[tuple[float, Any]]:
        return [timed(lambda j=j: register(i, f"{prefix}:{i}:{j}")) for j in range(per)]

    calls, wall = run_threads(threads, work)
    assert all(won is True for _, won in calls), "an uncontended name was refused"
    return summary(calls, wall)


def hot(register: Callable[[int, str], bool], threads: int, rounds: int,
        prefix: str) -> dict[str, Any]:
    """``rounds`` names, each raced by all ``threads`` at once; one winner per round."""
    barrier = threading.Barrier(threads, timeout=CALL_DEADLINE)

    def work(i: int) -> list[tuple[float, Any]]:
        out = []
        for r in range(rounds):
            barrier.wait()
            out.append(timed(lambda r=r: (r, register(i, f"{prefix}:{r}"))))
        return out

    calls, wall = run_threads(threads, work)
    wins = [sum(1 for _, (r, won) in calls if r == rnd and won) for rnd in range(rounds)]
    assert wins == [1] * rounds, f"winners per round: {wins}"
    return summary(calls, wall)


def summary(calls: list[tuple[float, Any]], wall: float) -> dict[str, Any]:
    times = sorted(s for s, _ in calls)
    return {"calls": len(times), "p50_ms": 1000 * percentile(times, 0.50),
            "p99_ms": 1000 * percentile(times, 0.99), "mean_ms": 1000 * statistics.mean(times),
            "rate": len(times) / wall}


def bench(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every workload on both systems; figures by ``system/workload``."""
    import etcd3gw
    tmp = Path(tempfile.mkdtemp(prefix="sdht-bench-names-"))
    procs = Procs(tmp)
    out: dict[str, dict[str, Any]] = {}
    try:
        nodes = [start_node(procs, f"node{i}")[1] for i in range(3)]
        ring = sdht.Ring([nodes[0]], timeout=(2.0, 10.0))
        for node in nodes:
            ring.join(node)
        etcd_ports = start_etcd(procs)
        clients = [etcd3gw.client(host="127.0.0.1", port=etcd_ports[i % len(etcd_ports)],
                                  timeout=10) for i in range(THREADS)]

        # One client per thread on both sides, as etcd3gw needs: a Ring per thread.
        rings = [sdht.Ring(nodes, timeout=(2.0, 10.0)) for _ in range(THREADS)]

        def sdht_register(i: int, name: str) -> bool:
            return rings[i].register(name, "v")

        def etcd_register(i: int, name: str) -> bool:
            return clients[i].create(name, "v")

        systems = {"sdht": sdht_register, "etcd": etcd_register}
        workloads = {
            "uncontended, 1 client": lambda reg, tag: uncontended(reg, 1, args.names // 2, tag),
            "uncontended, 8 clients": lambda reg, tag: uncontended(reg, THREADS, args.names,
                                                                   tag),
            "hot name, 8 contenders": lambda reg, tag: hot(reg, THREADS, args.rounds, tag)}
        for system, register in systems.items():
            # Every client thread's connections, every server worker, the leader, caches.
            uncontended(register, THREADS, 8 * THREADS, f"{system}:warm")
        runs: dict[str, list[dict[str, Any]]] = {}
        for run in range(args.runs):
            # Each workload on both systems back to back, the first one alternating: a
            # machine whose load drifts then weighs on both alike.
            for workload, measure in workloads.items():
                for system in (["sdht", "etcd"] if run % 2 == 0 else ["etcd", "sdht"]):
                    runs.setdefault(f"{system}/{workload}", []).append(
                        measure(systems[system], f"{system}:{run}:{workload}"))
        for key, figures in runs.items():
            out[key] = {name: statistics.median(f[name] for f in figures)
                        for name in figures[0]}
            out[key]["spread"] = (min(f["rate"] for f in figures),
                                  max(f["rate"] for f in figures))
        for r in [ring, *rings]:
            r.close()
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(figures: dict[str, dict[str, Any]], about: dict[str, str], runs: int) -> str:
    """The figures as a text table, with sdht's rate as a multiple of etcd's."""
    lines = [f"{k}: {v}" for k, v in about.items()]
    lines.append("")
    lines.append(f"{'workload':<24}{'system':<7}{'calls':>6}{'p50 ms':>8}{'p99 ms':>8}"
                 f"{'calls/s':>9}{'(min-max)':>14}{'vs etcd':>9}")
    for key, fig in figures.items():
        system, workload = key.split("/")
        etcd = figures.get(f"etcd/{workload}")
        ratio = f"{fig['rate'] / etcd['rate']:.2f}x" if system == "sdht" and etcd else ""
        low, high = fig["spread"]
        lines.append(f"{workload:<24}{system:<7}{fig['calls']:>6.0f}{fig['p50_ms']:>8.2f}"
                     f"{fig['p99_ms']:>8.2f}{fig['rate']:>9.1f}{f'{low:.0f}-{high:.0f}':>14}"
                     f"{ratio:>9}")
    lines.append(f"medians of {runs} runs; calls per run")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", type=int, default=800,
                        help="uncontended names with 8 clients (half as many with 1)")
    parser.add_argument("--rounds", type=int, default=100, help="hot names, 8 contenders each")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if not 8 <= args.names <= 100_000 or not 1 <= args.rounds <= 10_000 \
            or not 1 <= args.runs <= 20:
        parser.error("--names in [8, 100000], --rounds in [1, 10000], --runs in [1, 20]")
    about = machine()
    about["etcd"] = _etcd_version()
    figures = bench(args)
    print(report(figures, about, args.runs))
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


def _etcd_version() -> str:
    import importlib.metadata
    import subprocess
    etcd = shutil.which("etcd")
    server = subprocess.run([etcd, "--version"], capture_output=True, text=True,
                            timeout=10).stdout.split("\n")[0] if etcd else "absent"
    return f"{server}, etcd3gw {importlib.metadata.version('etcd3gw')}"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
