"""Minting speed against the raw blake2b hash rate, measured in one run (issue 7).

Issue 7 asks that minting run at >= 0.9x the hash rate of a tight ``hashlib.blake2b`` loop over
the same message on one core. Two raw loops are measured, because "a tight loop" can mean either:

* ``fresh``: ``blake2b(prefix + nonce, digest_size=32, person=...).digest()`` per try, the loop a
  newcomer would write;
* ``copy``: the prefix hashed once, then ``copy(); update(nonce); digest()`` per try: the fastest
  loop plain Python bytecode can drive, and the stricter baseline.

The mint rate is :func:`sdht.pow.find_nonce` searching a fixed number of tries for work it cannot
find (w=200), so every try is counted. Each figure is the median of ``--repeats`` runs, and the
loops are interleaved so that a busy machine slows them alike. Usage::

    python bench/bench_pow.py [--tries N] [--repeats R] [--parallel-tries N]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdht.pow import find_nonce  # noqa: E402
from sdht.kinds.register import DIGEST_PERSON, canonical  # noqa: E402

#: The record whose minting is measured: a short key and a small map, as most writes are.
PREFIX = canonical("bench key", {"user": 42, "tags": ["a", "b"]}, 1_700_000_000_000_000, 200.0,
                   False)
NONCE = (123456789).to_bytes(8, "big")
UNREACHABLE_WORK = 200.0  # e**200 tries: never met, so a limited search counts every try


def machine_info() -> dict[str, Any]:
    """Return the platform, CPU model, core count and Python version, for the report."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "python": f"{platform.python_implementation()} {platform.python_version()}"}


def raw_fresh(tries: int) -> float:
    """Return hashes per second of a loop that hashes the whole message afresh each try."""
    message, blake2b, person = PREFIX + NONCE, hashlib.blake2b, DIGEST_PERSON
    began = time.perf_counter()
    for _ in range(tries):
        blake2b(message, digest_size=32, person=person).digest()
    return tries / (time.perf_counter() - began)


def raw_copy(tries: int) -> float:
    """Return hashes per second of a loop over a copied prefix state (one update, one digest)."""
    copy, nonce = hashlib.blake2b(PREFIX, digest_size=32, person=DIGEST_PERSON).copy, NONCE
    began = time.perf_counter()
    for _ in range(tries):
        h = copy()
        h.update(nonce)
        h.digest()
    return tries / (time.perf_counter() - began)


def mint_rate(tries: int, processes: int = 1) -> float:
    """Return tries per second of :func:`sdht.pow.find_nonce` (process start-up included).

    ``fallback=False``: a search child that failed would otherwise count as tries done.
    """
    began = time.perf_counter()
    found = find_nonce(PREFIX, UNREACHABLE_WORK, start=0, limit=tries, processes=processes,
                       fallback=False)
    elapsed = time.perf_counter() - began
    assert found is None, "an unreachable work was met"
    return tries / elapsed


def median_rates(loops: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run each loop ``repeats`` times, interleaved, and return each one's median rate."""
    runs: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            runs[name].append(loop())
    return {name: statistics.median(rates) for name, rates in runs.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure and print the rates and ratios; return them as a dict.

    :param argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tries", type=int, default=500_000, help="hashes per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--parallel-tries", type=int, default=8_000_000,
                        help="tries for the multi-process run (0 to skip it)")
    args = parser.parse_args(argv)
    info = machine_info()
    for name, value in info.items():
        print(f"{name:>10}: {value}")
    rates = median_rates({"raw_fresh": lambda: raw_fresh(args.tries),
                          "raw_copy": lambda: raw_copy(args.tries),
                          "mint": lambda: mint_rate(args.tries)}, args.repeats)
    result: dict[str, Any] = {**info, **rates,
                              "ratio_fresh": rates["mint"] / rates["raw_fresh"],
                              "ratio_copy": rates["mint"] / rates["raw_copy"]}
    print(f"raw blake2b, fresh hash per try : {rates['raw_fresh']:>12,.0f} /s")
    print(f"raw blake2b, copied prefix state: {rates['raw_copy']:>12,.0f} /s")
    print(f"sdht mint (find_nonce, 1 core)  : {rates['mint']:>12,.0f} /s")
    print(f"mint / raw fresh                : {result['ratio_fresh']:>12.3f}")
    print(f"mint / raw copy (issue 7: >=0.9): {result['ratio_copy']:>12.3f}")
    cores = info["cores"] or 1
    if args.parallel_tries and cores > 1:
        par = median_rates({"mint_parallel": lambda: mint_rate(args.parallel_tries, cores)},
                           max(1, args.repeats // 2))["mint_parallel"]
        result["mint_parallel"] = par
        result["parallel_speedup"] = par / rates["mint"]
        print(f"sdht mint, processes={cores:<2}        : {par:>12,.0f} /s "
              f"({result['parallel_speedup']:.2f}x one core, start-up included, "
              f"{args.parallel_tries:,} tries)")
    return result


if __name__ == "__main__":
    main()
