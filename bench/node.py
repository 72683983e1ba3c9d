"""One storage node's hot record routes, before and after: a same-run A/B bench (issue 16).

Starts two real ``sdht-storage`` nodes (gunicorn, durable LMDB, defaults) on free loopback
ports: the *baseline* from a pristine ``git worktree`` of ``HEAD`` in which the node's hot-path
files (``--files``) are put back as they were at ``--base``, and the *candidate* from this
working tree. (Others commit to the shared tree meanwhile: a worktree of ``--base`` alone
would measure their changes too.) ``--with-working`` copies files of the working tree into the
baseline, to measure one change alone. Each node has joined a one-member ring of itself, as a
node in service has. One client (:class:`sdht.transport.Transport`, what the library uses)
then alternates request by request between the two, so both see the same load of the machine,
and reports p50/p99 latency and the node's CPU per request (its processes' user + system time)
of

* ``PUT /v1/record`` (a fresh record each time),
* ``GET /v1/record`` (a key held),
* ``POST /v1/records`` with 100 fresh records, and ``POST /v1/records/get`` of 100 keys,

and the ratio candidate/baseline of each (below 1: the candidate is faster). Only these
same-run ratios mean anything on a shared machine; ``--repeats`` repeats the whole run with
fresh nodes and the spread of the ratios is printed.

    python bench/node.py --base 9ec5200 --repeats 3

``--baseline-env NAME=VALUE`` instead runs both nodes from the working tree, the baseline with
that variable set: a switch's A/B, such as the lean lane's (``SDHT_LEAN=0``, storage/lean.py).

    python bench/node.py --baseline-env SDHT_LEAN=0 --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine, percentile  # noqa: E402  bench/bench.py, beside this
from sdht.cli import processes  # noqa: E402
from sdht.cli.processes import free_port, group_stats, stop_group  # noqa: E402
from sdht.pow import mint  # noqa: E402
from sdht.ring import Member, RingView  # noqa: E402
from sdht.transport import Transport  # noqa: E402

VALUE = bytes(range(100))  # 100 bytes, as bench/bench.py
WORK = 3.0                 # the default min_work: minting stays cheap next to the requests
BATCH = 100
#: The files of the node's hot record routes (issue 16): what the A/B compares (a module added
#: since ``--base``, such as storage/fastpath.py, is unused there: its app.py does not wire it).
HOT_FILES = ["storage/routes.py", "storage/store.py", "storage/http.py", "storage/app.py",
             "storage/metrics.py", "storage/web.py", "storage/eventlog.py",
             "storage/gunicorn_conf.py", "storage/worker.py", "storage/auth.py",
             # the batch write's merge, hash tree (and its layout version) and admission
             "storage/tree.py", "storage/layout.py", "sdht/kinds/register.py"]
START_DEADLINE = 30.0      # seconds for a node to answer its health route
STOP_DEADLINE = 10.0       # seconds between SIGTERM and SIGKILL


class Node:
    """A node started from source tree ``tree`` (its own PYTHONPATH and cwd)."""

    def __init__(self, name: str, tree: Path, tmp: Path, workers: int,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.id = f"127.0.0.1:{self.port}"
        self.log = open(tmp / f"{name}.log", "ab")
        self.proc = processes.start_node(self.port, tmp / name, self.log, workers,
                                         env={"PYTHONPATH": str(tree), **(env or {})}, cwd=tree)
        processes.wait_healthy(self.proc, self.id, START_DEADLINE, self.log.name)

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the node's processes (master and workers) have used."""
        return _group_cpu(self.proc.pid)

    def stop(self) -> None:
        stop_group(self.proc, STOP_DEADLINE)
        self.log.close()


def _group_cpu(pgid: int) -> float:
    """utime + stime of every live process in group ``pgid``, from /proc (seconds)."""
    ticks = sum(int(fields[11]) + int(fields[12]) for fields in group_stats(pgid))
    return ticks / os.sysconf("SC_CLK_TCK")


def _records(prefix: str, count: int) -> list:
    return [mint(f"{prefix}{i:08d}", VALUE, WORK) for i in range(count)]


def _time(op: Callable[[], Any]) -> float:
    began = time.perf_counter()
    op()
    return (time.perf_counter() - began) * 1000.0


@contextlib.contextmanager
def twin_nodes(base_tree: Path, workers: int, prefix: str,
               base_env: dict[str, str] | None = None
               ) -> Iterator[tuple[dict[str, Node], Transport]]:
    """The baseline node (from ``base_tree``, with ``base_env``) and the candidate (from this
    tree), each in a one-member ring of itself, and one client; all stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_name:
        tmp = Path(tmp_name)
        nodes: dict[str, Node] = {}
        tr = Transport()
        try:
            nodes["baseline"] = Node("baseline", base_tree, tmp, workers, base_env)
            nodes["candidate"] = Node("candidate", ROOT, tmp, workers)
            for n in nodes.values():
                tr.put_ring(n.id, RingView(1, (Member(n.id),)))
            yield nodes, tr
        finally:
            tr.close()
            for n in nodes.values():
                n.stop()


def run_once(base_tree: Path, workers: int, ops: int, batches: int,
             base_env: dict[str, str] | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Start both nodes, measure every route interleaved, stop them; return latencies (ms)
    and the nodes' CPU per request (ms), per route and system."""
    with twin_nodes(base_tree, workers, "sdht-node-bench-", base_env) as (nodes, tr):
        lat: dict[str, dict[str, list[float]]] = {}
        cpu_ms: dict[str, dict[str, float]] = {}
        names = list(nodes)

        def interleave(route: str, count: int, make: Callable[[str, int], Callable]) -> None:
            out = lat.setdefault(route, {s: [] for s in names})
            # CPU the node spent per request: far steadier than latency on a shared
            # machine (it leaves out the time waiting for a core or the disk).
            cpu = {s: nodes[s].cpu_seconds() for s in names}
            for i in range(count):
                order = names if i % 2 == 0 else names[::-1]  # neither always goes first
                for s in order:
                    out[s].append(_time(make(s, i)))
            cpu_ms[route] = {s: (nodes[s].cpu_seconds() - cpu[s]) * 1000.0 / count
                             for s in names}

        # Fresh records per system, minted before the clock runs.
        singles = {s: _records(f"{s}-one-", ops) for s in names}
        interleave("PUT /v1/record", ops,
                   lambda s, i: lambda: tr.put_record(nodes[s].id, singles[s][i]))
        interleave("GET /v1/record", ops,
                   lambda s, i: lambda: tr.get_record(nodes[s].id, singles[s][i].key))
        batch = {s: [_records(f"{s}-b{j}-", BATCH) for j in range(batches)] for s in names}
        interleave(f"POST /v1/records ({BATCH})", batches,
                   lambda s, j: lambda: tr.put_many(nodes[s].id, batch[s][j]))
        keys = {s: [r.key for r in batch[s][0]] for s in names}
        interleave(f"POST /v1/records/get ({BATCH})", batches,
                   lambda s, j: lambda: tr.get_many(nodes[s].id, keys[s]))
        return lat, cpu_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="commit of the baseline's --files")
    ap.add_argument("--files", nargs="*", default=HOT_FILES,
                    help="files the baseline takes from --base (the rest: HEAD)")
    ap.add_argument("--with-working", nargs="*", default=[],
                    help="files the baseline takes from the working tree, to measure the "
                    "change in --files alone")
    ap.add_argument("--ops", type=int, default=1000, help="single requests per route and node")
    ap.add_argument("--batches", type=int, default=100, help="batches per node")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers per node")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-env", nargs="*", default=[], metavar="NAME=VALUE",
                    help="run both nodes from the working tree, the baseline with these "
                    "variables set (a switch's A/B); --base and --files are then unused")
    args = ap.parse_args()
    for k, v in machine().items():
        print(f"{k}: {v}")
    if args.baseline_env:
        base_env = dict(item.split("=", 1) for item in args.baseline_env)
        print(f"baseline: the working tree with {' '.join(args.baseline_env)}; candidate: "
              "the working tree", flush=True)
        report(args, lambda: run_once(ROOT, args.workers, args.ops, args.batches, base_env))
        return
    with baseline_tree(args.base, args.files, args.with_working) as tree:
        report(args, lambda: run_once(tree, args.workers, args.ops, args.batches))


@contextlib.contextmanager
def baseline_tree(base: str, files: list[str], working: list[str] = ()) -> Iterator[Path]:
    """A git worktree of HEAD with ``files`` as they were at ``base`` and ``working`` copied
    from the working tree (one change alone: the others on both sides); removed afterwards."""
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", base],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"baseline: a git worktree of HEAD with {' '.join(files)} from {short}; "
          "candidate: the working tree", flush=True)
    with tempfile.TemporaryDirectory(prefix="sdht-bench-base-") as wt_name:
        tree = Path(wt_name) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), "HEAD"],
                       check=True, capture_output=True)
        try:
            # A file added since base (storage/worker.py, split out of gunicorn_conf.py) stays
            # as it is: the base's own files do not use it.
            there = [f for f in files if subprocess.run(
                ["git", "-C", str(ROOT), "cat-file", "-e", f"{short}:{f}"]).returncode == 0]
            if there:
                subprocess.run(["git", "-C", str(tree), "checkout", short, "--", *there],
                               check=True, capture_output=True)
            for name in working:
                shutil.copyfile(ROOT / name, tree / name)
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)


def report(args: argparse.Namespace, measure: Callable[[], tuple[dict, dict]]) -> None:
    """Run ``measure`` (fresh nodes each time) ``args.repeats`` times; print each run and the
    spread of the new/old ratios."""
    ratios: dict[str, list[tuple[float, float]]] = {}
    for rep in range(args.repeats):
        lat, cpu = measure()
        print(f"\nrun {rep + 1}: p50 / p99 / node CPU per request, in ms")
        for route, by in lat.items():
            row = {s: sorted(v) for s, v in by.items()}
            p = {s: (percentile(v, 0.5), percentile(v, 0.99), cpu[route][s])
                 for s, v in row.items()}
            # A run too short for a clock tick of CPU has no CPU ratio (nan), not a crash.
            r = tuple(p["candidate"][i] / p["baseline"][i] if p["baseline"][i] else math.nan
                      for i in range(3))
            ratios.setdefault(route, []).append(r)
            print(f"  {route:<28} baseline {'/'.join(f'{x:.3f}' for x in p['baseline'])}"
                  f"  candidate {'/'.join(f'{x:.3f}' for x in p['candidate'])}"
                  f"  new/old {r[0]:.2f}× {r[1]:.2f}× cpu {r[2]:.2f}×", flush=True)
    print("\nnew/old over the runs (median, min–max); below 1 is faster")
    print("| route | p50 ratio | p99 ratio | node CPU ratio |\n|---|---:|---:|---:|")
    for route, rs in ratios.items():
        cells = []
        for i in range(3):
            v = [r[i] for r in rs]
            cells.append(f"{statistics.median(v):.2f}× ({min(v):.2f}–{max(v):.2f})")
        print(f"| {route} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
