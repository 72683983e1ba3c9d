"""Replication delay: from a write's acknowledgement until all n replicas hold it (issue 15).

Starts its own 3 loopback nodes (n=3, r=w=2) twice, in the same run:

* **hints**: hinted handoff on, background anti-entropy off (only hints can repair);
* **anti-entropy**: hinted handoff off, anti-entropy every ``--sync`` seconds (the peer: how
  sdht caught up before hints).

In each, it writes at ``--rate`` writes per second for ``--healthy`` seconds with every node up
(the delay is the client's: acknowledgement until the last replica acknowledged,
``Ring.quorum.lag``), then pauses one node (SIGSTOP; with ``--kill``, kill -9 and a restart
once it is over) for ``--outage`` seconds while writing on, resumes it and polls it until it holds every key written meanwhile: the delay after the outage
is counted from the resume (when the replica could first take a copy) and, for reference, from
each write's acknowledgement. Prints the machine, p50/p99/max of each, and the ratios.

    python bench/replication_delay.py --outage 30
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sdht  # noqa: E402
from sdht.cli.processes import free_port, start_node, stop_group, wait_healthy  # noqa: E402


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(values: list[float]) -> str:
    return (f"p50 {pct(values, 0.5) * 1000:8.1f} ms  p99 {pct(values, 0.99) * 1000:8.1f} ms  "
            f"max {max(values, default=0) * 1000:8.1f} ms  (n={len(values)})")


class Cluster:
    """Three ``sdht-storage`` processes with the given environment, and a ring over them."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base, self.env, self.procs, self.ids = base, env, [], []
        for _ in range(3):
            self.procs.append(None)
            self.ids.append(f"127.0.0.1:{free_port()}")
            self.start(len(self.ids) - 1)
        self.ring = sdht.Ring([self.ids[0]], timeout=(1.0, 3.0))
        for node in self.ids:
            self.ring.join(node)

    def start(self, i: int) -> None:
        """Start node ``i`` (again) on its port and data, and wait until it answers."""
        port = int(self.ids[i].rpartition(":")[2])
        log = open(self.base / f"node-{port}.log", "ab")
        self.procs[i] = start_node(port, self.base / f"node-{port}", log, workers=2, cwd=ROOT,
                                   env={"PYTHONPATH": str(ROOT), **self.env})
        wait_healthy(self.procs[i], self.ids[i], 60, log.name, interval=0.1)

    def stop(self) -> None:
        self.ring.close()
        for proc in self.procs:
            stop_group(proc)


def write_for(ring: sdht.Ring, prefix: str, seconds: float, rate: float) -> dict[str, float]:
    """Write ``rate`` keys a second for ``seconds``; return each key's acknowledgement time."""
    acked: dict[str, float] = {}
    began = time.monotonic()
    i = 0
    while time.monotonic() - began < seconds:
        key = f"{prefix}{i}"
        ring.set(key, i)
        acked[key] = time.monotonic()
        i += 1
        pause = began + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return acked


def catch_up(ring: sdht.Ring, node: str, acked: dict[str, float], limit: float) -> dict[str, float]:
    """Poll ``node`` until it holds every key of ``acked`` (or ``limit`` seconds); return
    when each key was first seen there."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + limit
    while len(seen) < len(acked) and time.monotonic() < deadline:
        missing = [k for k in acked if k not in seen]
        for i in range(0, len(missing), 1000):
            part = missing[i:i + 1000]
            try:
                records, _ = ring.transport.get_many(node, part)
            except sdht.SDHTError:
                break
            now = time.monotonic()
            seen.update({k: now for k, r in zip(part, records) if r is not None})
        time.sleep(0.01)
    return seen


def run(name: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, list[float]]:
    base = Path(tempfile.mkdtemp(prefix=f"sdht-lag-{name}-"))
    cluster = Cluster(base, env)
    out: dict[str, list[float]] = {}
    try:
        ring = cluster.ring
        write_for(ring, "healthy-", args.healthy, args.rate)
        time.sleep(0.5)   # the last writes' remaining replicas answer
        snap = ring.quorum.lag.snapshot()
        print(f"[{name}] healthy: client lag p50 {snap['p50_s'] * 1000:.1f} ms, p99 "
              f"{snap['p99_s'] * 1000:.1f} ms, max {snap['max_s'] * 1000:.1f} ms "
              f"({snap['writes']} writes, {snap['hinted']} hinted)", flush=True)
        out["healthy_p99"] = [snap["p99_s"]]
        if args.kill:   # kill -9, and a restart once the outage is over
            stop_group(cluster.procs[2], graceful=False)
            acked = write_for(ring, "outage-", args.outage, args.rate)
            cluster.start(2)
        else:           # SIGSTOP, and SIGCONT once the outage is over
            paused = cluster.procs[2]
            os.killpg(paused.pid, signal.SIGSTOP)
            try:
                acked = write_for(ring, "outage-", args.outage, args.rate)
            finally:
                os.killpg(paused.pid, signal.SIGCONT)
        resumed = time.monotonic()
        seen = catch_up(ring, cluster.ids[2], acked, args.limit)
        missing = len(acked) - len(seen)
        out["from_resume"] = [max(0.0, t - max(resumed, acked[k])) for k, t in seen.items()]
        out["from_ack"] = [t - acked[k] for k, t in seen.items()]
        print(f"[{name}] {'kill -9' if args.kill else 'SIGSTOP'} outage {args.outage:.0f} s, "
              f"{len(acked)} writes meanwhile, "
              f"{missing} still missing after {args.limit:.0f} s", flush=True)
        print(f"[{name}]   from the resume: {figures(out['from_resume'])}", flush=True)
        print(f"[{name}]   from the ack:    {figures(out['from_ack'])}", flush=True)
        health = [ring.transport.health(n) for n in cluster.ids[:2]]
        print(f"[{name}]   holders' hint delivery p99 (bucket bound): "
              f"{max(h.get('replication_delay_p99_s') or 0 for h in health):.2f} s", flush=True)
    finally:
        cluster.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--healthy", type=float, default=10.0, help="seconds of healthy writes")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds a node is paused")
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second")
    parser.add_argument("--sync", type=float, default=10.0,
                        help="anti-entropy interval of the peer run, seconds")
    parser.add_argument("--kill", action="store_true",
                        help="kill -9 the node and restart it (default: SIGSTOP, SIGCONT)")
    parser.add_argument("--limit", type=float, default=120.0,
                        help="seconds to wait for the resumed node to catch up")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"python {platform.python_version()} {platform.system()} {platform.release()}")
    print(f"load average: {os.getloadavg()}; n=3 r=2 w=2; {args.rate:.0f} writes/s")
    hints = run("hints", {"SDHT_SYNC_INTERVAL": "0"}, args)
    peer = run("anti-entropy", {"SDHT_SYNC_INTERVAL": str(args.sync),
                                "SDHT_HANDOFF_INTERVAL": "0"}, args)
    for what in ("from_resume", "from_ack"):
        a, b = pct(hints[what], 0.99), pct(peer[what], 0.99)
        print(f"p99 {what}: hints {a:.3f} s, anti-entropy {b:.3f} s: "
              f"{b / a if a else float('inf'):.1f}x faster with hints")
    print(f"median of from_resume, hints: {statistics.median(hints['from_resume'] or [0]):.3f} s")


if __name__ == "__main__":
    main()
