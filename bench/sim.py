"""A 1,000-node sdht in one process: the real placement, migration planning, tree and sync code
over in-memory stand-ins for the network and the disks (issue 18; figures in docs/scaling.md).

    python bench/sim.py --quick              # under a minute: small sizes, same tables
    python bench/sim.py --json out.json      # the full run (1,000 nodes, 10**7 keys)

It prints one table per point:

1. balance: most loaded node / mean and p99 / mean (keys held, n replicas), by ring size and
   by tokens per node; the placement's memory and a lookup's time (sdht/ring.py);
2. a membership change: records moved by one join and one remove against the fair share, the
   sources streaming, the largest single transfer, over sequential churn (sdht/migration.py);
3. anti-entropy: hashes and rounds of the sync descent for k differing keys among n, against
   k*log2 n, and other tree depths at the largest n (sdht/sync.py, storage/tree.py);
4. ring metadata: the size of a signed ring, a client's refresh, the epoch traffic
   (sdht/ring.py, sdht/trust.py, sdht/repair.py's spread);
5. failures: keys with 0, 1, 2 live copies after f simultaneous losses, against the
   hypergeometric expectation;
6. whole-ring repair of a simulated ring (sdht/repair.py) with k differing keys;
7. routing by score and hints at scale: the failures a client pays and the share a slow node
   keeps (sdht/health.py), the hints f dead nodes leave and their spread over holders, kept in
   a real hints store (storage/hints.py) (``bench/simroute.py``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from sdht import params as cluster_params  # noqa: E402
from sdht.migration import plan_transfers  # noqa: E402
from sdht.ring import JOINING, LEAVING, NORMAL, Member, Placement, RingView, intervals  # noqa: E402
from sdht.trust import Keys, new_private_key, node_private_key, public_of  # noqa: E402
from simnet import Keyset  # noqa: E402
from simroute import hints, routing  # noqa: E402
from simsync import anti_entropy, node_id, repair  # noqa: E402

SIZES = {  # what --quick shrinks, and the full run
    "quick": {"keys": 100_000, "balance_nodes": [100, 1000], "token_nodes": 200,
              "tokens": [16, 128, 512], "churn_nodes": 100, "churn": 5,
              "ae_sizes": [10_000, 100_000], "ae_k": [1, 10, 100, 1000], "depths": [3, 5],
              "ring_nodes": 1000, "fail_nodes": 200, "fail_trials": 3,
              "repair": [(24, 30_000)], "repair_k": [0, 100],
              "route_nodes": 200, "reads": 20_000, "writes": 20_000},
    "full": {"keys": 10_000_000, "balance_nodes": [100, 1000, 5000], "token_nodes": 1000,
             "tokens": [16, 32, 64, 128, 256, 512], "churn_nodes": 1000, "churn": 100,
             "ae_sizes": [10_000, 100_000, 1_000_000, 10_000_000],
             "ae_k": [1, 10, 100, 1000, 10_000], "depths": [3, 5],
             "ring_nodes": 1000, "fail_nodes": 1000, "fail_trials": 20,
             "repair": [(24, 300_000), (100, 1_000_000), (1000, 1_000_000)],
             "repair_k": [0, 100, 10_000],
             "route_nodes": 1000, "reads": 200_000, "writes": 1_000_000},
}


def members(count: int, tokens: int, first: int = 0) -> list[Member]:
    """``count`` members with made-up addresses."""
    return [Member(node_id(i), tokens=tokens) for i in range(first, first + count)]


def loads(pl: Placement, keys: Keyset) -> list[int]:
    """Keys each node holds (as one of n replicas), sorted."""
    held = dict.fromkeys(pl.node_ids, 0)
    for start, end, probe in intervals(pl.boundaries()):
        count = keys.count(start, end)
        for node in pl.preference(probe):
            held[node] += count
    return sorted(held.values())


def balance_row(nodes: int, tokens: int, keys: Keyset, n: int) -> dict[str, Any]:
    """Point 1 for one ring size and token count."""
    began = time.perf_counter()
    pl = Placement(members(nodes, tokens), n)
    build = time.perf_counter() - began
    held = loads(pl, keys)
    mean = sum(held) / len(held)
    memory = (sys.getsizeof(pl.positions) + sum(map(sys.getsizeof, pl.positions))
              + sys.getsizeof(pl.owners))
    rnd = random.Random(1)
    probes = [rnd.getrandbits(64) for _ in range(20_000)]
    began = time.perf_counter()
    for p in probes:
        pl.preference(p)
    lookup = (time.perf_counter() - began) / len(probes)
    return {"nodes": nodes, "tokens": tokens, "max_over_mean": round(held[-1] / mean, 3),
            "p99_over_mean": round(held[int(0.99 * (len(held) - 1))] / mean, 3),
            "min_over_mean": round(held[0] / mean, 3), "placement_mb": round(memory / 2**20, 1),
            "build_s": round(build, 2), "lookup_us": round(lookup * 1e6, 1)}


def change_cost(staged: RingView, node: str, keys: Keyset) -> dict[str, Any]:
    """Records moved by the staged change of ``node`` (sdht.migration.plan_transfers)."""
    per_pair: dict[tuple[str, str], int] = {}
    for t in plan_transfers(staged.readers, staged.future):
        count = keys.count(t.start, t.end)
        for source in t.sources:
            per_pair[(source, t.target)] = per_pair.get((source, t.target), 0) + count
    moved = sum(per_pair.values())
    nodes = len(staged.members) - (staged.member(node).state == JOINING)
    fair = len(keys) / nodes
    n = staged.params["n"]
    return {"moved": moved, "over_keys_per_node": round(moved / fair, 3),
            "over_fair_share": round(moved / (n * fair), 3),
            "sources": len({s for s, _ in per_pair}),
            "largest_transfer": max(per_pair.values(), default=0)}


def churn(start_nodes: int, steps: int, tokens: int, keys: Keyset,
          params: dict[str, Any]) -> dict[str, Any]:
    """Point 2: ``steps`` joins, then ``steps`` removes of random members, one at a time."""
    view = RingView(1, tuple(members(start_nodes, tokens)), params)
    rnd, out = random.Random(2), {"join": [], "remove": []}
    for i in range(steps):
        new = Member(node_id(start_nodes + i), JOINING, tokens)
        staged = view.with_member(new)
        out["join"].append(change_cost(staged, new.id, keys))
        view = staged.with_member(Member(new.id, NORMAL, tokens))
    for _ in range(steps):
        gone = rnd.choice(view.members)
        staged = view.with_member(Member(gone.id, LEAVING, tokens))
        out["remove"].append(change_cost(staged, gone.id, keys))
        view = staged.without_member(gone.id)
    return {action: _summary(rows) for action, rows in out.items()}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max of each figure over a churn's changes."""
    out: dict[str, Any] = {"changes": len(rows)}
    for name in ("over_keys_per_node", "over_fair_share", "sources", "largest_transfer"):
        values = [r[name] for r in rows]
        out[name] = {"mean": round(sum(values) / len(values), 3), "max": max(values)}
    return out


def ring_metadata(nodes: int, tokens: int, params: dict[str, Any]) -> dict[str, Any]:
    """Point 4: a signed ring of ``nodes`` members with keys; a client's refresh; the traffic
    of spreading an epoch."""
    operator = new_private_key()
    keys = Keys.of(operator, None)
    ms = tuple(Member(node_id(i), NORMAL, tokens, public_of(node_private_key(operator,
                                                                             node_id(i))))
               for i in range(nodes))
    began = time.perf_counter()
    view = RingView(1, ms, params)
    view = view.signed(keys.sign_ring(view.body()))
    sign = time.perf_counter() - began
    text = json.dumps(view.to_json())
    began = time.perf_counter()
    parsed = RingView.from_json(json.loads(text))
    keys.check_ring(parsed.body(), parsed.signature)
    check = time.perf_counter() - began
    began = time.perf_counter()
    Placement(list(parsed.members), parsed.params["n"])
    place = time.perf_counter() - began
    size = len(text)
    return {"nodes": nodes, "tokens": tokens, "ring_bytes": size,
            "unsigned_bytes": len(json.dumps(RingView(1, tuple(Member(m.id, m.state, m.tokens)
                                                               for m in ms), params).to_json())),
            "sign_ms": round(sign * 1e3, 1), "parse_check_ms": round(check * 1e3, 1),
            "placement_ms": round(place * 1e3, 1),
            "refresh_ms": round((check + place) * 1e3, 1),
            "publish": {"messages": nodes, "bytes": nodes * size, "rounds": 1},
            "background_pass_all_nodes": {"messages": nodes * (nodes - 1),
                                          "bytes": nodes * (nodes - 1) * size},
            "gossip_push_pull": _gossip(nodes, size)}


def _gossip(nodes: int, size: int, trials: int = 20) -> dict[str, Any]:
    """A push-pull gossip of one new epoch (each node asks one random peer per round; a peer
    with the newer epoch sends the ring): rounds until every node has it. Not what sdht does
    today (see docs/scaling.md): the alternative to its all-to-all background exchange."""
    rnd, rounds = random.Random(4), []
    for _ in range(trials):
        knows = [False] * nodes
        knows[0] = True
        r = 0
        while not all(knows):
            r += 1
            now = knows[:]
            for i in range(nodes):
                j = rnd.randrange(nodes)
                if knows[i] or knows[j]:
                    now[i] = now[j] = True
            knows = now
        rounds.append(r)
    return {"rounds_mean": round(sum(rounds) / trials, 1), "rounds_max": max(rounds),
            "messages_per_round": nodes, "epoch_bytes_per_message": 24,
            "ring_transfers": nodes - 1, "bytes": (nodes - 1) * size + nodes * 24 * max(rounds)}


def failures(nodes: int, tokens: int, keys: Keyset, trials: int, n: int = 3
             ) -> list[dict[str, Any]]:
    """Point 5: keys with 0, 1, 2 live copies after f random losses, against the expectation."""
    pl = Placement(members(nodes, tokens), n)
    spans = [(keys.count(s, e), pl.preference(p)) for s, e, p in intervals(pl.boundaries())]
    total, rnd, rows = len(keys), random.Random(5), []
    for f in (1, 2, 5, 10):
        seen = [0] * (n + 1)
        for _ in range(trials):
            dead = set(rnd.sample(pl.node_ids, f))
            for count, pref in spans:
                seen[sum(1 for r in pref if r not in dead)] += count
        row: dict[str, Any] = {"f": f}
        for live in range(n):
            lost = n - live
            expected = (math.comb(n, lost) * math.comb(nodes - n, f - lost) / math.comb(nodes, f)
                        if lost <= f else 0.0)
            row[f"live{live}"] = seen[live] / (total * trials)
            row[f"live{live}_expected"] = expected
        rows.append(row)
    return rows


def table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` as an aligned table under ``title``."""
    print(f"\n{title}")
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value else f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return "/".join(_cell(v) for v in value.values())
    return str(value)


def run(size: dict[str, Any], sections: set[int], rtt: float, parallel: int) -> dict[str, Any]:
    """Run the chosen points at ``size``; print each table as it is done."""
    params = dict(cluster_params.DEFAULTS)
    tokens, n = params["tokens"], params["n"]
    out: dict[str, Any] = {"machine": machine(), "sizes": size, "params": params}
    began = time.monotonic()
    keys = Keyset(size["keys"]) if sections & {1, 2, 5} else Keyset(0)
    print(f"{len(keys):,} keys placed ({time.monotonic() - began:.0f} s)")
    if 1 in sections:
        rows = [balance_row(nodes, tokens, keys, n) for nodes in size["balance_nodes"]]
        rows += [balance_row(size["token_nodes"], t, keys, n) for t in size["tokens"]
                 if t != tokens or size["token_nodes"] not in size["balance_nodes"]]
        out["balance"] = rows
        table(f"1. balance, {len(keys):,} keys, n={n} (keys held / mean)", rows)
    if 2 in sections:
        out["churn"] = churn(size["churn_nodes"], size["churn"], tokens, keys, params)
        table(f"2. membership changes from {size['churn_nodes']} nodes, {len(keys):,} keys "
              "(mean/max over the churn; fair share = n * keys / nodes)",
              [{"change": a, **v} for a, v in out["churn"].items()])
    if 3 in sections:
        out["anti_entropy"] = anti_entropy(size["ae_sizes"], size["ae_k"], size["depths"],
                                           params)
        table("3. anti-entropy between two replicas (k differing keys among n)",
              out["anti_entropy"])
    if 4 in sections:
        meta = ring_metadata(size["ring_nodes"], tokens, params)
        out["ring_metadata"] = meta
        table("4. ring metadata", [{k: v for k, v in meta.items() if not isinstance(v, dict)}])
        table("   epoch traffic", [{"how": k, **v} for k, v in meta.items() if isinstance(v, dict)])
    if 5 in sections:
        out["failures"] = failures(size["fail_nodes"], tokens, keys, size["fail_trials"], n)
        table(f"5. failures at {size['fail_nodes']} nodes, n={n}: fraction of keys by live "
              "copies (measured, expected)", out["failures"])
    if 6 in sections:
        rows = []
        for nodes, count in size["repair"]:
            rows += repair(nodes, count, size["repair_k"], tokens, params, parallel, rtt)
        out["repair"] = rows
        table(f"6. whole-ring repair (sdht.repair.repair_view, {parallel} hubs at once; "
              f"modeled with {rtt * 1e3:g} ms per request round trip)", rows)
    if 7 in sections:
        pl = Placement(members(size["route_nodes"], tokens), n)
        out["routing"] = [routing(pl, params, size["reads"], d, s)
                          for d, s in ((0, 0), (1, 0), (10, 0), (0, 10))]
        table(f"7. reads routed by score at {size['route_nodes']} nodes, r=1 (dead nodes "
              "fail at once, slow ones take 20 ms)", out["routing"])
        out["hints"] = [hints(pl, params, size["writes"], d) for d in (1, 2, 10)]
        table(f"   hints left by {size['writes']:,} writes with f dead nodes, n={n} "
              f"w={params['w']}", out["hints"])
    out["seconds"] = round(time.monotonic() - began, 1)
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "system": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    ap.add_argument("--keys", type=int, help="keys for points 1, 2 and 5")
    ap.add_argument("--only", default="1,2,3,4,5,6,7", help="points to run, e.g. 1,3")
    ap.add_argument("--rtt", type=float, default=0.001,
                    help="seconds per request round trip in point 6's model")
    ap.add_argument("--parallel", type=int, default=8, help="hubs a repair syncs at once")
    ap.add_argument("--repair", action="append", metavar="NODES:KEYS",
                    help="point 6's ring sizes instead of the defaults (repeatable)")
    ap.add_argument("--repair-k", help="point 6's differing keys, e.g. 0,100")
    ap.add_argument("--ae-sizes", help="point 3's key counts, e.g. 10000,1000000")
    args = ap.parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.keys:
        size["keys"] = args.keys
    if args.ae_sizes:
        size["ae_sizes"] = [int(n) for n in args.ae_sizes.split(",")]
    if args.repair_k:
        size["repair_k"] = [int(k) for k in args.repair_k.split(",")]
    if args.repair:
        size["repair"] = [tuple(int(x) for x in r.split(":")) for r in args.repair]
    print("machine:", machine())
    out = run(size, {int(x) for x in args.only.split(",")}, args.rtt, args.parallel)
    print(f"\ndone in {out['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
