"""The client's transport, before and after: a same-run A/B on the same nodes (issue 16).

Starts three real ``sdht-storage`` nodes (as ``bench/bench.py`` does) and two ``sdht.Ring``
clients of them: the *baseline* with ``sdht/transport.py`` as it was at ``--base`` (loaded
from git as a module of its own, on this tree's other modules), the *candidate* with this
tree's. The two alternate in blocks of ``--block`` operations (the first of each pair
alternating too), so both see the same load of the machine; for each of ``set``, ``get`` and
``register`` it reports the median rate and the client's CPU per operation (this process's
user + system time), and candidate/baseline.

    python bench/transport_ab.py --base aa2c0c5

``--pool-only`` instead makes the baseline this tree's transport with every replica request
run on the fan-out pool, as before ``sdht/fanout.py`` (its ``begin`` never sends): that
change's A/B.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import VALUE, Procs, machine, start_node  # noqa: E402  bench/bench.py, beside this
import sdht  # noqa: E402
from sdht.transport import Transport  # noqa: E402


def baseline_transport(base: str, into: Path) -> type:
    """``Transport`` of ``sdht/transport.py`` at commit ``base``, its relative imports made
    absolute (it runs on this tree's other modules)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:sdht/transport.py"],
                            check=True, capture_output=True, text=True).stdout
    source = source.replace("from . import ", "from sdht import ").replace("from .", "from sdht.")
    path = into / "baseline_transport.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_transport", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.Transport


class PoolOnly(Transport):
    """This tree's transport, but every replica request runs on the fan-out pool."""

    def begin(self, node: str, call: Any) -> None:
        return None


def measure(rings: dict[str, sdht.Ring], op: str, blocks: int, size: int) -> dict[str, dict]:
    """Alternate ``op`` in blocks of ``size`` between the rings; per ring, every block's rate
    (ops/s) and client CPU (ms per op)."""
    out: dict[str, dict] = {name: {"rate": [], "cpu": []} for name in rings}
    for block in range(blocks):
        order = list(rings.items()) if block % 2 else list(reversed(rings.items()))
        for name, ring in order:
            keys = [f"{op}-{name}-{block}-{i}" for i in range(size)]
            if op == "get":
                for key in keys:
                    ring.set(key, VALUE)
            call = {"set": lambda k: ring.set(k, VALUE), "get": ring.get,
                    "register": lambda k: ring.register(k, VALUE)}[op]
            wall, cpu = time.perf_counter(), time.process_time()
            for key in keys:
                call(key)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[name]["rate"].append(size / wall)
            out[name]["cpu"].append(cpu / size * 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="commit of the baseline's transport.py")
    ap.add_argument("--blocks", type=int, default=10, help="blocks per client and operation")
    ap.add_argument("--block", type=int, default=200, help="operations per block")
    ap.add_argument("--pool-only", action="store_true",
                    help="baseline: this tree's transport, every request on the pool")
    args = ap.parse_args()
    for key, value in machine().items():
        print(f"{key}: {value}")
    base = "every replica request on the fan-out pool" if args.pool_only \
        else f"sdht/transport.py at {args.base}"
    print(f"baseline: {base}; candidate: the working tree\n")
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        rings: dict[str, sdht.Ring] = {}
        try:
            nodes = [start_node(procs, f"node{i}")[1] for i in range(3)]
            old = PoolOnly if args.pool_only else baseline_transport(args.base, Path(tmp))
            rings = {"baseline": sdht.Ring(transport=old()),
                     "candidate": sdht.Ring(transport=Transport())}
            for ring in rings.values():
                for node in nodes:
                    ring.join(node)
            print("| operation | baseline ops/s | candidate ops/s | rate new/old | baseline "
                  "client CPU ms/op | candidate | CPU new/old |\n|---|---:|---:|---:|---:|---:|---:|")
            for op in ("set", "get", "register"):
                got = measure(rings, op, args.blocks, args.block)
                (rate_a, cpu_a), (rate_b, cpu_b) = (
                    (statistics.median(got[n]["rate"]), statistics.median(got[n]["cpu"]))
                    for n in ("baseline", "candidate"))
                print(f"| {op} | {rate_a:.0f} | {rate_b:.0f} | {rate_b / rate_a:.2f}× | "
                      f"{cpu_a:.3f} | {cpu_b:.3f} | {cpu_b / cpu_a:.2f}× |", flush=True)
        finally:
            for ring in rings.values():
                ring.close()
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
