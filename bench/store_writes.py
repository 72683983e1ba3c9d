#!/usr/bin/env python3
"""Where one node's write bytes go as its store grows (issue 16, "How cost grows with the data").

One :class:`storage.store.Store` in this process (durable, as a node opens it), loaded with
16-byte keys and 100-byte values through ``put_many`` of ``--batch`` entries (one write
transaction each, as a node runs one ``POST /v1/records``), in stages up to each of ``--sizes``.
Per stage it prints:

* **handed** bytes per record: ``wchar`` of ``/proc/self/io``, the bytes this process passed to
  write calls, i.e. the pages LMDB's commits wrote (nothing else writes here);
* **accounted** bytes per record: ``write_bytes`` of ``/proc/self/io``, what bench/growth.py
  reads. The kernel charges it when a page-cache folio turns dirty, the *whole* folio;
* **device** bytes per record: sectors the block device holding the store wrote
  (``/sys/dev/block/M:m/stat``, after a ``sync``). The whole device: other processes on a
  shared machine add to it, so it is an upper bound;
* CPU per record (user and system) and wall time per record;
* pages per sub-database (branch, leaf, overflow), ``last_pgno`` and the free pages (the file's
  pages that no sub-database holds: LMDB's freelist and its two meta pages).

``--folios`` first shows the kernel's accounting on a plain file: 1,000 random 4 KiB writes into
a file written in 4 KiB pieces, and into one written in 1 MiB pieces (large folios).
``--cold`` ends with gets of a cold store (its file dropped from the page cache) read with the
kernel's read-around and without (LMDB's ``readahead``): bytes read per get.
``--lmdb NAME=0|1`` overrides one ``lmdb.open`` flag for an A/B (e.g. ``writemap=1``).

    python bench/store_writes.py --sizes 10000,100000 --folios --cold
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

import lmdb  # noqa: E402

from bench import machine  # noqa: E402  bench/bench.py, beside this
from sdht.params import with_defaults  # noqa: E402
from sdht.pow import mint  # noqa: E402
from storage.store import Store  # noqa: E402

VALUE = bytes(range(100))   # as bench/growth.py
COLD_GETS = 300
PAGE = 4096


def key_of(i: int) -> str:
    """The ``i``-th key: exactly 16 bytes, as bench/growth.py."""
    return f"g{i:015d}"


def io_field(name: str) -> int:
    """One field of ``/proc/self/io``."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def device_written(path: str) -> int:
    """Bytes the block device holding ``path`` has written since boot (all processes)."""
    dev = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat").read_text().split()
    return int(stat[6]) * 512


def pages(store: Store) -> dict:
    """Pages per sub-database, ``last_pgno`` and the pages none holds (free + 2 meta)."""
    out = {"last_pgno": store.env.info()["last_pgno"]}
    held = 0
    with store.env.begin() as txn:
        for name, db in (("data", store.data), ("tree", store.tree.db), ("meta", store.meta)):
            s = txn.stat(db)
            out[name] = (s["branch_pages"], s["leaf_pages"], s["overflow_pages"], s["depth"])
            held += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
    main = store.env.stat()
    held += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
    out["free"] = out["last_pgno"] + 1 - held
    return out


def folios(tmp: str) -> None:
    """Accounted against device bytes of 1,000 random 4 KiB writes into small and large folios."""
    size = 256 << 20
    for piece in (PAGE, 1 << 20):
        path = os.path.join(tmp, "folios.bin")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            for off in range(0, size, piece):
                os.pwrite(fd, b"x" * piece, off)
            os.fsync(fd)
            rng = random.Random(1)
            acc, dev = io_field("write_bytes"), device_written(tmp)
            for _ in range(1000):
                os.pwrite(fd, b"y" * PAGE, rng.randrange(size // PAGE) * PAGE)
            os.fsync(fd)
            print(f"  file written in {piece:>7,}-byte pieces, 1,000 random 4 KiB writes: "
                  f"accounted {(io_field('write_bytes') - acc) / 1e6:,.1f} MB, device "
                  f"{(device_written(tmp) - dev) / 1e6:,.1f} MB", flush=True)
        finally:
            os.close(fd)
            os.unlink(path)


def load(store: Store, start: int, end: int, batch: int) -> dict:
    """Put keys ``[start, end)`` in batches; return the figures per record."""
    params = with_defaults({})
    entries = [mint(key_of(j), VALUE, 3.0) for j in range(start, end)]
    os.sync()
    handed, acc = io_field("wchar"), io_field("write_bytes")
    dev = device_written(store.env.path())
    cpu, began = os.times(), time.perf_counter()
    for i in range(0, len(entries), batch):
        store.put_many(entries[i:i + batch], params)
    wall = time.perf_counter() - began
    cpu_end = os.times()
    os.sync()
    n = end - start
    return {"handed": (io_field("wchar") - handed) / n,
            "accounted": (io_field("write_bytes") - acc) / n,
            "device": (device_written(store.env.path()) - dev) / n,
            "user": (cpu_end.user - cpu.user) / n * 1e6,
            "sys": (cpu_end.system - cpu.system) / n * 1e6, "wall": wall / n * 1e6}


def cold_gets(path: str, held: int) -> None:
    """Bytes read per get of a store whose file was dropped from the page cache."""
    for readahead in (True, False):
        os.sync()
        fd = os.open(os.path.join(path, "data.mdb"), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        store = Store(path)
        store.env.close()   # reopened with the flag under test, as Store opens it otherwise
        store.env = lmdb.open(path, max_dbs=4, map_size=4 << 30, readahead=readahead)
        store.data = store.env.open_db(b"data")
        rng = random.Random(5)
        before, began = io_field("read_bytes"), time.perf_counter()
        for _ in range(COLD_GETS):
            assert store.get(key_of(rng.randrange(held))) is not None
        took = time.perf_counter() - began
        print(f"  readahead={readahead!s:<5}: {COLD_GETS} cold gets of a "
              f"{os.path.getsize(os.path.join(path, 'data.mdb')) / 1e6:,.0f} MB store read "
              f"{(io_field('read_bytes') - before) / COLD_GETS / 1024:,.0f} KiB per get "
              f"({took:.2f} s in all)", flush=True)
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="records held after each stage")
    parser.add_argument("--batch", type=int, default=1000, help="entries per put_many")
    parser.add_argument("--lmdb", action="append", default=[], metavar="NAME=0|1",
                        help="override an lmdb.open flag (A/B)")
    parser.add_argument("--folios", action="store_true", help="show the folio accounting first")
    parser.add_argument("--cold", action="store_true", help="end with cold gets, read-around on/off")
    args = parser.parse_args(argv)
    for name, value in machine().items():
        print(f"{name}: {value}", flush=True)
    flags = {name: value == "1" for name, value in (f.split("=", 1) for f in args.lmdb)}
    if flags:
        real_open = lmdb.open
        lmdb.open = lambda path, **kw: real_open(path, **{**kw, **flags})
    with tempfile.TemporaryDirectory(prefix="sdht-store-writes-") as tmp:
        if args.folios:
            folios(tmp)
        store, held = Store(os.path.join(tmp, "store")), 0
        print(f"batch {args.batch}, lmdb overrides {flags or 'none'}")
        print("| records held | LMDB wrote / record | accounted / record | device / record | user µs | sys µs | "
              "wall µs | data pages (br/leaf) | tree pages | last_pgno | free pages |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in (int(s) for s in args.sizes.split(",")):
            row = load(store, held, size, args.batch)
            held = size
            p = pages(store)
            print(f"| {size:,} | {row['handed']:,.0f} B | {row['accounted']:,.0f} B | {row['device']:,.0f} B | "
                  f"{row['user']:.1f} | {row['sys']:.1f} | {row['wall']:.1f} | "
                  f"{p['data'][0]:,}/{p['data'][1]:,} | {sum(p['tree'][:3]):,} | "
                  f"{p['last_pgno']:,} | {p['free']:,} |", flush=True)
        store.close()
        if args.cold:
            cold_gets(os.path.join(tmp, "store"), held)
    return 0


if __name__ == "__main__":
    sys.exit(main())
