"""etcd as a peer of the benchmarks: a durable, replicated store a user would pick instead.

One home for starting it (``bench/bench.py``, ``paired.py`` and ``names.py`` use it): a
three-member cluster of Debian's ``etcd-server`` (``/usr/bin/etcd``) with its defaults (Raft,
fsync of the WAL before a commit is acknowledged by a majority), each member on free 127.0.0.1
ports with a data directory under the bench's temporary directory, stopped by PID with the
other servers.
The client is etcd3gw (etcd's JSON gateway, one ``requests`` session per client).

::

    apt-get install -y etcd-server && pip install etcd3gw   # or bench.py --install-peers
"""
from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.request
from typing import Any

from sdht.cli.processes import free_port

#: How each system of ``bench/bench.py`` acknowledges a write: printed beside its figures.
DURABILITY = {
    "sdht": "w=2 of n=3 replicas committed LMDB with fsync before the ack",
    "etcd": "Raft majority (2 of 3 members) fsynced the WAL before the ack",
    "redis": "memory only (no AOF, no RDB): lost on restart",
    "memcached": "memory only: lost on restart",
    "kademlia": "memory only on k peers: lost on restart",
    "bare http": "no storage",
    "lmdb": "one LMDB write transaction, fsynced at commit (the floor of an sdht replica)",
}
#: etcd's default ``--max-txn-ops``: a txn of more operations is refused.
MAX_TXN_OPS = 128
#: Seconds every member has to report healthy.
HEALTHY_DEADLINE = 30.0


def start_etcd(procs: Any, members: int = 3) -> list[int]:
    """Start an etcd cluster of ``members`` on free loopback ports through ``procs``
    (``bench.Procs``); return the client ports once every member reports healthy."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("etcd is not installed: apt-get install -y etcd-server")
    ports = [(free_port(), free_port()) for _ in range(members)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    for i, (client, peer) in enumerate(ports):
        argv = [etcd, "--name", f"m{i}", "--data-dir", str(procs.tmp / f"etcd{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "sdht-bench"]
        # Members start without waiting: the first cannot be healthy before a quorum is up.
        procs.start(f"etcd{i}", argv, ready=lambda: True)
    for client, _ in ports:
        ends = time.monotonic() + HEALTHY_DEADLINE
        while not healthy(client):
            if time.monotonic() > ends:
                raise SystemExit(f"etcd on port {client} did not become healthy")
            time.sleep(0.1)
    return [client for client, _ in ports]


def start_client(procs: Any) -> Any:
    """A 3-member cluster (:func:`start_etcd`) and an etcd3gw client of its first member, or
    None (and a line saying so) when etcd or etcd3gw is not installed."""
    try:
        import etcd3gw
    except ImportError:
        print("  etcd3gw is not installed: skipped (see --install-peers)", flush=True)
        return None
    if shutil.which("etcd") is None:
        print("  etcd is not installed: skipped (see --install-peers)", flush=True)
        return None
    return etcd3gw.client(host="127.0.0.1", port=start_etcd(procs)[0], timeout=10)


def healthy(port: int) -> bool:
    """Whether the etcd member with client port ``port`` reports healthy."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def put_txn(client: Any, items: dict[str, bytes]) -> None:
    """Put every item in one etcd transaction (at most :data:`MAX_TXN_OPS`)."""
    assert len(items) <= MAX_TXN_OPS, "etcd refuses a txn of more than --max-txn-ops"
    client.transaction({"compare": [], "failure": [], "success": [
        {"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in items.items()]})


def get_txn(client: Any, keys: list[str]) -> dict[str, bytes]:
    """Read every key in one etcd transaction (a serialisable snapshot, as a batch read)."""
    assert len(keys) <= MAX_TXN_OPS, "etcd refuses a txn of more than --max-txn-ops"
    answer = client.transaction({"compare": [], "failure": [], "success": [
        {"request_range": {"key": _b64(k)}} for k in keys]})
    out = {}
    for response in answer.get("responses", []):
        for kv in response.get("response_range", {}).get("kvs", []):
            out[base64.b64decode(kv["key"]).decode()] = base64.b64decode(kv["value"])
    return out


def bench_etcd(table: Any, procs: Any, args: Any, single_ops: Any, batched_ops: Any,
               make_keys: Any, value: bytes) -> None:
    """etcd's put, get, and txns of 100 puts and of 100 gets, as ``bench.py`` measures sdht
    (one client, sequential); skipped when etcd or etcd3gw is absent."""
    client = start_client(procs)
    if client is None:
        return
    single = make_keys("s", args.single_keys)
    single_ops(table, "etcd", "set", lambda i: client.put(single[i], value), len(single),
               args.runs)
    single_ops(table, "etcd", "get", lambda i: client.get(single[i]), len(single), args.runs)
    keys = make_keys("b", args.keys)
    batched_ops(table, "etcd", "set_many", lambda c: put_txn(client, dict.fromkeys(c, value)),
                keys, 100, args.runs)
    batched_ops(table, "etcd", "get_many", lambda c: get_txn(client, c), keys, 100, args.runs)
