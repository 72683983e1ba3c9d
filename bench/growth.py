#!/usr/bin/env python3
"""How sdht's cost grows with the data it holds (issue 16, "How cost grows with the data").

Loads one ring of three real ``sdht-storage`` nodes (n=3, w=2, durable LMDB, defaults) with
16-byte keys and 100-byte values through ``set_many`` of 1,000, in stages up to each of
``--sizes`` keys, and after each stage reports:

* the **load rate** over the stage, and over its last tenth (the rate at that size);
* **device bytes written per record copy**: what the node processes made the kernel write to
  storage during the stage (``write_bytes`` of ``/proc/PID/io``, page cache flushes and fsyncs
  included), over the keys loaded times n. The logical size of one copy is printed beside it;
* **device sectors per record copy**: what the block device holding the data wrote during the
  stage (``/sys/dev/block/M:m/stat``), over the same copies. ``write_bytes`` charges a whole
  page-cache folio when a write dirties part of it, and Linux 6.x's large folios made it 5-13x
  what reached the device for LMDB's scattered 4 KiB pages (bench/store_writes.py); the device
  counts every process on it, so on a shared machine it is an upper bound;
* **disk per record copy**: the blocks the nodes' data directories take, over keys held times n;
* single ``get`` p50 of keys held, and ``get_many`` of 1,000 held keys (keys/s).

The target is the load rate at the largest size ≥ 0.8× the rate at the smallest. Only this
same-run ratio means much on a shared machine; the machine is printed with the figures.

    python bench/growth.py                         # 10k, 100k, 1M keys
    python bench/growth.py --sizes 10000,100000    # quicker
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdht  # noqa: E402
from bench import machine, percentile  # noqa: E402  bench/bench.py, beside this
from sdht.cli import processes  # noqa: E402
from sdht.cli.processes import free_port, stop_group  # noqa: E402
from sdht.pow import mint  # noqa: E402

VALUE = bytes(range(100))   # 100 bytes, as bench/bench.py
BATCH = 1000                # keys per set_many
PROBES = 500                # single gets per stage
START_DEADLINE = 30.0       # seconds for a node to answer its health route
TARGET = 0.8                # load rate at the largest size over the smallest, at least


def key_of(i: int) -> str:
    """The ``i``-th key: exactly 16 bytes."""
    return f"g{i:015d}"


class Nodes:
    """Three nodes on free loopback ports, data under ``tmp``, stopped by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs, self.ids, self.logs = tmp, [], [], []
        for i in range(3):
            port = free_port()
            log = open(tmp / f"node{i}.log", "ab")
            proc = processes.start_node(port, tmp / f"node{i}", log,
                                        env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
            self.procs.append(proc)
            self.logs.append(log)
            self.ids.append(f"127.0.0.1:{port}")
            processes.wait_healthy(proc, self.ids[-1], START_DEADLINE, log.name)

    def disk(self) -> int:
        """Bytes of blocks the nodes' data directories take."""
        total = 0
        for i in range(len(self.procs)):
            for path in (self.tmp / f"node{i}").rglob("*"):
                if path.is_file():
                    total += path.stat().st_blocks * 512
        return total

    def stop(self) -> None:
        for proc, log in zip(self.procs, self.logs):
            stop_group(proc, 10.0)
            log.close()


def written_bytes(nodes: Nodes) -> int:
    """Bytes every process of the nodes (masters and workers) caused to be written to
    storage: ``write_bytes`` of ``/proc/PID/io``, summed."""
    total = 0
    for proc in nodes.procs:
        for pid, _ in processes.group_members(os.getpgid(proc.pid)):
            try:
                text = Path(f"/proc/{pid}/io").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total


def device_written(path: Path) -> int:
    """Bytes the block device holding ``path`` has written since boot (every process's)."""
    dev = os.stat(path).st_dev
    return int(Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat").read_text()
               .split()[6]) * 512


def stage(ring: sdht.Ring, nodes: Nodes, start: int, end: int, rng: random.Random) -> dict:
    """Load keys ``[start, end)`` and measure; return the stage's figures."""
    n = ring.params["n"]
    os.sync()   # the stage's device count starts from clean pages
    before, sectors = written_bytes(nodes), device_written(nodes.tmp)
    tail_from = end - max(BATCH, (end - start) // 10)
    began = time.perf_counter()
    tail_began = None
    for i in range(start, end, BATCH):
        if tail_began is None and i >= tail_from:
            tail_began = time.perf_counter()
        ring.set_many(dict.fromkeys((key_of(j) for j in range(i, min(i + BATCH, end))), VALUE))
    done = time.perf_counter()
    written = written_bytes(nodes) - before
    os.sync()
    sectors = device_written(nodes.tmp) - sectors
    lat = []
    for j in rng.sample(range(end), min(PROBES, end)):
        t0 = time.perf_counter()
        ring.get(key_of(j))
        lat.append(time.perf_counter() - t0)
    lat.sort()
    probe = [key_of(j) for j in rng.sample(range(end), min(BATCH, end))]
    t0 = time.perf_counter()
    ring.get_many(probe)
    many = len(probe) / (time.perf_counter() - t0)
    copies = (end - start) * n
    return {"keys": end, "rate": (end - start) / (done - began),
            "tail": (end - tail_from) / (done - (tail_began or began)),
            "written": written / copies, "sectors": sectors / copies, "disk": nodes.disk() / (end * n),
            "get_p50": percentile(lat, 0.5) * 1e3, "get_many": many}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="keys held after each stage, comma-separated, increasing")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    for name, value in machine().items():
        print(f"{name}: {value}", flush=True)
    logical = len(mint(key_of(0), VALUE, 3.0).pack())
    print(f"one record copy: {logical} bytes packed (16-byte key, 100-byte value)", flush=True)
    rng = random.Random(16)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdht-growth-") as tmp:
        nodes = Nodes(Path(tmp))
        ring = sdht.Ring()
        try:
            for node in nodes.ids:
                ring.join(node)
            held = 0
            for size in sizes:
                row = stage(ring, nodes, held, size, rng)
                held = size
                rows.append(row)
                print(f"  {size:>9,} keys: load {row['rate']:,.0f} keys/s (last tenth "
                      f"{row['tail']:,.0f}), device {row['written']:,.0f} B written per copy "
                      f"({row['sectors']:,.0f} B of device sectors), "
                      f"disk {row['disk']:,.0f} B per copy, get p50 {row['get_p50']:.2f} ms, "
                      f"get_many 1000 {row['get_many']:,.0f} keys/s", flush=True)
        finally:
            ring.close()
            nodes.stop()
    print()
    print("| keys held | load rate (keys/s) | last tenth | device written / copy | "
          "device sectors / copy | disk / copy | get p50 | get_many 1,000 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['keys']:,} | {row['rate']:,.0f} | {row['tail']:,.0f} | "
              f"{row['written']:,.0f} B | {row['sectors']:,.0f} B | {row['disk']:,.0f} B | {row['get_p50']:.2f} ms | "
              f"{row['get_many']:,.0f} keys/s |")
    if len(rows) > 1:
        ratio = rows[-1]["tail"] / rows[0]["rate"]
        print(f"\nload rate at {rows[-1]['keys']:,} keys (last tenth) / at {rows[0]['keys']:,}: "
              f"{ratio:.2f}× (target ≥ {TARGET}×: {'met' if ratio >= TARGET else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
