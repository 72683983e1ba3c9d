"""Soak test: writers and readers against a loopback ring while faults are injected.

Starts its own storage nodes on free loopback ports (temporary data dirs), runs writers,
readers, and one fault thread that, one fault at a time, kill -9s a node and restarts it, joins
a spare node or removes a member, for ``--seconds``. Then it stops the faults, lets
anti-entropy finish (``Ring.repair``), and checks:

* acknowledged writes lost: keys whose winning record is older than the last acknowledged
  write (a later unacknowledged attempt of the same writer may win; nothing older may);
* replicas divergent: keys whose replicas (the ring's readers) hold different versions.

Exits 1 when either is non-zero. Bounded in time and count; stops every node it started.

    python bench/soak.py --seconds 120
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sdht  # noqa: E402
from sdht.cli.processes import free_port, start_node, stop_group, wait_healthy  # noqa: E402
from sdht.kinds.register import beats  # noqa: E402


class Node:
    """One ``sdht-storage`` process in its own process group."""

    def __init__(self, base: Path, sync_interval: float) -> None:
        self.port = free_port()
        self.data = base / f"node-{self.port}"
        self.env = {"PYTHONPATH": str(ROOT), "SDHT_SYNC_INTERVAL": str(sync_interval)}
        self.proc: subprocess.Popen | None = None
        self.log = open(base / f"node-{self.port}.log", "ab")

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self.proc = start_node(self.port, self.data, self.log, workers=1, env=self.env, cwd=ROOT)
        wait_healthy(self.proc, self.id, timeout, self.log.name, interval=0.1)

    def kill(self) -> None:
        """kill -9 the node's whole process group."""
        if self.proc:
            stop_group(self.proc, graceful=False)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a deadline."""
        if self.proc:
            stop_group(self.proc)



class Soak:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.nodes = [Node(base, args.sync_interval) for _ in range(args.nodes + args.spares)]
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, sdht.Record] = {}
        self.ops = {"writes": 0, "write_errors": 0, "reads": 0, "read_errors": 0}
        self.faults = {"kill9": 0, "join": 0, "remove": 0, "change_retries": 0}

    def ring(self) -> sdht.Ring:
        return sdht.Ring([n.id for n in self.nodes], timeout=(0.5, 2.0))

    def count(self, name: str) -> None:
        with self.lock:
            self.ops[name] += 1

    def writer(self, wid: int) -> None:
        ring, i = self.ring(), 0
        while not self.halt.is_set() and i < self.args.max_ops:
            key = f"w{wid}-{i % self.args.keys}"
            try:
                rec = ring.set(key, i)
                with self.lock:
                    self.acked[key] = rec
                self.count("writes")
            except sdht.SDHTError:
                self.count("write_errors")
            i += 1
        ring.close()

    def reader(self) -> None:
        ring, i = self.ring(), 0
        while not self.halt.is_set() and i < self.args.max_ops:
            with self.lock:
                keys = list(self.acked)
            if not keys:
                time.sleep(0.05)
                continue
            try:
                ring.get(self.rng.choice(keys))
                self.count("reads")
            except sdht.SDHTError:
                self.count("read_errors")
            i += 1
        ring.close()

    def change(self, ring: sdht.Ring, fn, node: Node) -> None:
        """Run a membership change to completion, resuming it after errors."""
        deadline = time.monotonic() + 120
        while True:
            try:
                fn(node.id)
                return
            except sdht.SDHTError as exc:
                self.faults["change_retries"] += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"membership change of {node.id} stuck: {exc}")
                time.sleep(0.5)

    def faulter(self) -> None:
        ring = self.ring()
        while not self.halt.wait(self.rng.uniform(*self.args.fault_every)):
            ring.refresh()
            members = set(ring.nodes)
            inside = [n for n in self.nodes if n.id in members]
            outside = [n for n in self.nodes if n.id not in members]
            action = self.rng.choice(["kill9", "kill9", "join", "remove"])
            if action == "join" and outside:
                self.change(ring, ring.join, self.rng.choice(outside))
            elif action == "remove" and len(inside) > self.args.nodes:
                self.change(ring, ring.remove, self.rng.choice(inside))
            else:
                action = "kill9"
                victim = self.rng.choice(inside)
                victim.kill()
                time.sleep(self.rng.uniform(0.5, 2.0))   # down for a while, then back
                victim.start()
            self.faults[action] += 1
        ring.close()

    def run(self) -> int:
        began = time.monotonic()
        for node in self.nodes:
            node.start()
        ring = self.ring()
        for node in self.nodes[:self.args.nodes]:
            ring.join(node.id)
        threads = [threading.Thread(target=self.writer, args=(i,), daemon=True)
                   for i in range(self.args.writers)]
        threads += [threading.Thread(target=self.reader, daemon=True)
                    for _ in range(self.args.readers)]
        faulter = threading.Thread(target=self.faulter, daemon=True)
        for t in threads + [faulter]:
            t.start()
        self.halt.wait(self.args.seconds)
        self.halt.set()
        for t in threads + [faulter]:
            t.join(180)
        ran = time.monotonic() - began
        repairs = [ring.repair() for _ in range(2)]
        lost, divergent = self.check(ring)
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
              f"Python {platform.python_version()}, {platform.platform()}")
        print(f"ran {ran:.1f}s with {self.args.nodes}+{self.args.spares} nodes, "
              f"{self.args.writers} writers, {self.args.readers} readers")
        print(f"ops: {self.ops}")
        print(f"faults injected: {self.faults}")
        print(f"repair after: {[(r.differences, r.pushed) for r in repairs]} "
              f"(differences, records pushed) per pass")
        print(f"keys checked: {len(self.acked)}; acknowledged writes lost: {lost}; "
              f"replicas divergent: {divergent}")
        ring.close()
        return 1 if lost or divergent else 0

    def check(self, ring: sdht.Ring) -> tuple[int, int]:
        lost = divergent = 0
        decay = ring.params["decay"]
        for key, acked in self.acked.items():
            held = [ring.transport.get_record(n, key)[0] for n in ring.preference(key)]
            if len({r.digest if r else None for r in held}) != 1:
                divergent += 1
            best = held[0]
            if best is None or not (best == acked or beats(best, acked, decay)):
                lost += 1
        return lost, divergent

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
            node.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--nodes", type=int, default=3, help="members at the start (min)")
    parser.add_argument("--spares", type=int, default=1, help="extra nodes to join/remove")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--keys", type=int, default=300, help="keys per writer")
    parser.add_argument("--max-ops", type=int, default=200_000, help="per thread")
    parser.add_argument("--sync-interval", type=float, default=2.0)
    parser.add_argument("--fault-every", type=float, nargs=2, default=(2.0, 5.0))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sdht-soak-"))
    soak = Soak(args, base)
    try:
        return soak.run()
    finally:
        soak.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
