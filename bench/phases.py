"""The acceptor's phase routes before and after: a same-run A/B of one node's CPU per request
(issue 13).

As ``bench/node.py`` (whose :class:`Node` it starts): two real ``sdht-storage`` nodes
(gunicorn, durable LMDB, defaults, each in a one-member ring of itself), the *baseline* from a
``git worktree`` of ``HEAD`` with the phase routes' files (``--files``) as they were at
``--base``, the *candidate* from this working tree. One client (:class:`sdht.transport.Transport`,
as :mod:`sdht.names` sends phases) alternates request by request between them and reports p50
latency and the node's CPU per request (its processes' user + system time) of

* ``POST /v1/names/accept`` at the fast ballot of a fresh name (what an uncontended
  ``register`` sends each replica),
* ``POST /v1/names/prepare`` at a fresh classic ballot of a name held,

and the ratio candidate/baseline (below 1: the candidate is cheaper). ::

    python bench/phases.py --base 94658e3 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine, percentile  # noqa: E402  bench/bench.py, beside this
from node import _time, baseline_tree, twin_nodes  # noqa: E402  bench/node.py, beside this
from sdht.kinds import name  # noqa: E402
from sdht.names import FAST  # noqa: E402
from sdht.params import DEFAULTS  # noqa: E402
from sdht.registry import new_claim  # noqa: E402
from sdht.wire import MSGPACK, now_us, packb  # noqa: E402

#: The files of the phase routes' path (issue 13): what the A/B compares.
PHASE_FILES = ["storage/fastpath.py", "storage/names_routes.py", "storage/auth.py"]
PROPOSER = b"\x02" * name.PROPOSER_BYTES


def run_once(tree: Path, ops: int) -> tuple[dict, dict]:
    """Both nodes, each phase interleaved; latencies (ms) and CPU per request (ms)."""
    with twin_nodes(tree, 2, "sdht-phases-bench-") as (nodes, tr):
        names = list(nodes)
        lat: dict[str, dict[str, list[float]]] = {}
        cpu_ms: dict[str, dict[str, float]] = {}

        def post(s: str, route: str, body: bytes) -> None:
            reply = tr.request(nodes[s].id, "POST", route, data=body,
                               headers={"Content-Type": MSGPACK}, admin=True)
            assert reply.body, reply

        def interleave(what: str, bodies: dict[str, list[bytes]], route: str) -> None:
            out = lat.setdefault(what, {s: [] for s in names})
            cpu = {s: nodes[s].cpu_seconds() for s in names}
            for i in range(ops):
                for s in (names if i % 2 == 0 else names[::-1]):
                    out[s].append(_time(lambda: post(s, route, bodies[s][i])))
            cpu_ms[what] = {s: (nodes[s].cpu_seconds() - cpu[s]) * 1000.0 / ops
                            for s in names}

        claims = {s: [new_claim(f"{s}:{i}", "v", None, None, DEFAULTS) for i in range(ops)]
                  for s in names}
        accepts = {s: [packb({"k": c.key, "b": list(FAST), "e": 1, "a": c.to_wire()})
                       for c in claims[s]] for s in names}
        interleave("accept (fast ballot)", accepts, name.ACCEPT_ROUTE)
        prepares = {s: [packb({"k": c.key, "b": [now_us(), PROPOSER], "e": 1})
                        for c in claims[s]] for s in names}
        interleave("prepare", prepares, name.PREPARE_ROUTE)
        return lat, cpu_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="commit of the baseline's --files")
    ap.add_argument("--files", nargs="*", default=PHASE_FILES)
    ap.add_argument("--ops", type=int, default=500, help="requests per phase and node")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not 10 <= args.ops <= 100_000 or not 1 <= args.repeats <= 20:
        ap.error("--ops in [10, 100000], --repeats in [1, 20]")
    for k, v in machine().items():
        print(f"{k}: {v}")
    with baseline_tree(args.base, args.files) as tree:
        report(args.repeats, lambda: run_once(tree, args.ops))


def report(repeats: int, measure: Callable[[], tuple[dict, dict]]) -> None:
    """Each run's figures, then the median and spread of the candidate/baseline ratios."""
    ratios: dict[str, list[tuple[float, float]]] = {}
    for rep in range(repeats):
        lat, cpu = measure()
        print(f"run {rep + 1}:")
        for what, by in lat.items():
            p50 = {s: percentile(sorted(v), 0.5) for s, v in by.items()}
            r = (cpu[what]["candidate"] / cpu[what]["baseline"],
                 p50["candidate"] / p50["baseline"])
            ratios.setdefault(what, []).append(r)
            print(f"  {what:<22} cpu ms {cpu[what]['baseline']:.3f} -> "
                  f"{cpu[what]['candidate']:.3f} ({r[0]:.2f}x)  p50 ms "
                  f"{p50['baseline']:.2f} -> {p50['candidate']:.2f} ({r[1]:.2f}x)", flush=True)
    print("candidate/baseline, median (min-max) of the runs:")
    for what, rs in ratios.items():
        c, p = [x[0] for x in rs], [x[1] for x in rs]
        print(f"  {what:<22} cpu {statistics.median(c):.2f}x ({min(c):.2f}-{max(c):.2f})  "
              f"p50 {statistics.median(p):.2f}x ({min(p):.2f}-{max(p):.2f})")


if __name__ == "__main__":
    main()
