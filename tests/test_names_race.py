"""Unique names with real gunicorn nodes (issue 13, docs/names.md): the race under faults, the
HTTP registry, partitions (in a private network namespace when one can be made, and by
pausing processes), and the seed's flow.

The race: 5 nodes; 8 client threads in 2 processes register the same 50 names with distinct
values, all 8 on one name at a time (a name every ``PACE`` seconds), then keep re-registering and
looking names up, while a nemesis kills a node with ``kill -9`` and restarts it, stops one with
SIGSTOP (always continued), joins a sixth node and removes one. Every outcome is logged with its
wall-clock times, and the checks run on the logs: one owner per name, every True is that owner,
no name has two True callers, every lookup agrees with the owner, and a name never disappears
once registered. The counts are printed.

This file is also the client processes' program: ``python tests/test_names_race.py SPEC_JSON``.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = [f"user:{i:02d}" for i in range(50)]
PACE = 0.35            # seconds between two names of the first pass
RUN = 32.0             # seconds the clients run in all
SETTLE = 40.0          # seconds one operation keeps retrying an unknown outcome or no majority


# -- the client processes -------------------------------------------------------------------------

def attempt(ring, name: str, value: str) -> dict:
    """Register ``name`` for ``value``: retries an unknown outcome with its owner id, and no
    majority afresh, until it settles or :data:`SETTLE` seconds pass."""
    from sdht.errors import OutcomeUnknown, SDHTError
    owner, unknowns, began = None, 0, time.time()
    result: object = "unavailable"
    while time.time() - began < SETTLE:
        try:
            result = ring.register(name, value, owner=owner)
            break
        except OutcomeUnknown as exc:
            owner, unknowns, result = exc.owner, unknowns + 1, "unknown"
        except SDHTError:
            result = "unknown" if owner else "unavailable"
            time.sleep(0.1)
    return {"op": "register", "name": name, "value": value, "result": result,
            "unknowns": unknowns, "t0": began, "t1": time.time()}


def look(ring, name: str) -> dict:
    """Look ``name`` up, retrying while no majority answers."""
    from sdht.errors import SDHTError
    began = time.time()
    while time.time() - began < SETTLE:
        try:
            return {"op": "lookup", "name": name, "value": ring.lookup(name), "t0": began,
                    "t1": time.time()}
        except SDHTError:
            time.sleep(0.1)
    return {"op": "lookup", "name": name, "value": "unavailable", "t0": began, "t1": time.time()}


def client(spec: dict) -> None:
    """One client process: ``threads`` threads, each racing every name at its turn, then
    re-registering and looking up names at random until the end; events to ``out``."""
    import sdht
    ring = sdht.Ring(spec["seeds"], timeout=(1.0, 2.0))
    events: list[dict] = []
    lock = threading.Lock()

    def thread(t: int) -> None:
        mine: list[dict] = []
        rnd = random.Random(f"{spec['proc']}.{t}")
        for i, name in enumerate(NAMES):
            time.sleep(max(0.0, spec["start"] + i * PACE - time.time()))
            mine.append(attempt(ring, name, f"{spec['proc']}.{t}.{i}"))
            mine.append(look(ring, name))
        n = 0
        while time.time() < spec["end"]:
            name = rnd.choice(NAMES)
            n += 1
            mine.append(attempt(ring, name, f"{spec['proc']}.{t}.again{n}"))
            mine.append(look(ring, name))
        with lock:
            events.extend(mine)

    workers = [threading.Thread(target=thread, args=(t,)) for t in range(spec["threads"])]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ring.close()
    Path(spec["out"]).write_text(json.dumps(events))


def tc(*args: str) -> None:
    """Run ``tc`` on this network namespace's own loopback."""
    subprocess.run(["tc", *args], check=True, capture_output=True)


def cut(ports: list[int]) -> None:
    """Drop every packet to ``ports`` on this namespace's loopback (a leaf queue of length 0
    behind a u32 classifier: the only tc parts this kernel offers without action modules);
    an empty list heals."""
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
    if not ports:
        return
    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "20")
    for cls in ("1:10", "1:20"):
        tc("class", "add", "dev", "lo", "parent", "1:", "classid", cls, "htb", "rate", "10gbit")
    tc("qdisc", "add", "dev", "lo", "parent", "1:10", "handle", "10:", "pfifo", "limit", "0")
    for port in ports:
        tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
           "match", "ip", "dport", str(port), "0xffff", "flowid", "1:10")


def partition(spec: dict) -> None:
    """Inside a private network namespace: three nodes on its own 127.0.0.1; a client cut off
    from a name's majority cannot register it, one cut off from its minority can."""
    import sdht
    from sdht.cli import processes
    from sdht.errors import OutcomeUnknown, QuorumError
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    procs, out = {}, {}
    try:
        for i in range(3):
            port = processes.free_port()
            log = open(Path(spec["dir"]) / f"node{i}.log", "wb")
            procs[f"127.0.0.1:{port}"] = processes.start_node(
                port, Path(spec["dir"]) / f"node{i}", log, 1, {"PYTHONPATH": str(ROOT)}, ROOT)
            Path(spec["pids"]).write_text(json.dumps([p.pid for p in procs.values()]))
        for node, proc in procs.items():
            processes.wait_healthy(proc, node)
        ring = sdht.Ring(list(procs)[:1], timeout=(0.5, 1.0))
        for node in procs:
            ring.join(node)
        key = "user:cut"
        a, b, c = ring.preference(key)
        cut([int(a.rpartition(":")[2]), int(b.rpartition(":")[2])])
        owner = None
        try:
            ring.names.claim(key, "minority", deadline=3.0)
            out["minority"] = "registered"
        except OutcomeUnknown as exc:   # its claim reached the one replica it sees
            out["minority"], owner = "unknown", exc.owner
        except QuorumError:
            out["minority"] = "no majority"
        cut([int(c.rpartition(":")[2])])
        out["majority"] = ring.register(key, "majority")
        cut([])
        out["lookup"], out["late"] = ring.lookup(key), ring.register(key, "late")
        # The minority's retry settles its unknown outcome: the name went to the majority.
        out["minority retried"] = owner and ring.register(key, "minority", owner=owner)
        ring.close()
    finally:
        cut([])
        for proc in procs.values():
            processes.stop_group(proc, 5.0)
        Path(spec["pids"]).write_text("[]")   # all gone: the test has nothing left to kill
    print(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1] == "partition":
        partition(json.loads(sys.argv[2]))
    else:
        client(json.loads(sys.argv[1]))
    sys.exit(0)


# -- the tests ------------------------------------------------------------------------------------

import pytest  # noqa: E402

from conftest import wait_for  # noqa: E402
from sdht.errors import QuorumError, SDHTError  # noqa: E402


class Nemesis(threading.Thread):
    """Applies the faults at their times after ``start``; records what it did."""

    def __init__(self, ring, nodes, spare, start: float) -> None:
        super().__init__(daemon=True)
        self.ring, self.nodes, self.spare, self.start_at = ring, nodes, spare, start
        self.done: list[str] = []
        self.error: BaseException | None = None

    def at(self, offset: float) -> None:
        time.sleep(max(0.0, self.start_at + offset - time.time()))

    def change(self, what: str, fn, *args) -> None:
        """A membership change, resumed until it completes (a node may be slow to answer)."""
        ends = time.monotonic() + 60
        while True:
            try:
                fn(*args)
                self.done.append(what)
                return
            except SDHTError:
                if time.monotonic() > ends:
                    raise
                time.sleep(0.5)

    def run(self) -> None:
        killed, stopped, leaving = self.nodes[1], self.nodes[2], self.nodes[3]
        try:
            self.at(1.5)
            killed.kill()
            self.done.append(f"kill -9 {killed.id}")
            self.at(3.5)
            killed.restart()
            self.done.append(f"restart {killed.id}")
            self.at(6.0)
            stopped.signal(signal.SIGSTOP)
            self.done.append(f"SIGSTOP {stopped.id}")
            try:
                self.at(9.0)
            finally:
                stopped.signal(signal.SIGCONT)
            self.done.append(f"SIGCONT {stopped.id}")
            self.at(10.5)
            self.change(f"join {self.spare.id}", self.ring.join, self.spare.id)
            self.change(f"remove {leaving.id}", self.ring.remove, leaving.id)
        except BaseException as exc:   # reported by the test
            self.error = exc
            stopped.signal(signal.SIGCONT)


def check(events: list[dict], final: dict[str, object]) -> dict[str, int]:
    """The race's checks on every logged outcome; returns the counts."""
    regs = [e for e in events if e["op"] == "register"]
    looks = [e for e in events if e["op"] == "lookup"]
    counts = Counter(str(e["result"]) for e in regs)
    doubles = lost = wrong_true = wrong_lookup = 0
    for name in NAMES:
        owner = final[name]
        assert owner is not None, f"{name} has no owner"
        wins = {e["value"] for e in regs if e["name"] == name and e["result"] is True}
        doubles += len(wins) > 1                      # two callers were told True
        wrong_true += len(wins - {owner})             # a True that is not the owner
        registered_at = min([e["t1"] for e in regs if e["name"] == name and e["result"] is True]
                            + [e["t1"] for e in looks if e["name"] == name
                               and e["value"] not in (None, "unavailable")], default=None)
        for e in looks:
            if e["name"] != name or e["value"] == "unavailable":
                continue
            if e["value"] is None:
                # Free is a fine answer only before anyone learned the name was registered.
                lost += registered_at is not None and e["t0"] > registered_at
            else:
                wrong_lookup += e["value"] != owner
    out = {"names": len(NAMES), "registers": len(regs), "true": counts["True"],
           "false": counts["False"], "unknown_settled_by_retry": sum(
               1 for e in regs if e["unknowns"] and e["result"] in (True, False)),
           "unknown_at_deadline": counts["unknown"], "no_majority": counts["unavailable"],
           "lookups": len(looks), "double_registrations": doubles, "lost_names": lost,
           "true_not_owner": wrong_true, "lookups_not_owner": wrong_lookup}
    return out


def test_the_race_under_faults(cluster, start_node, tmp_path, capsys):
    ring, nodes = cluster(5, timeout=(1.0, 2.0))
    spare = start_node()
    start = time.time() + 4.0   # the client processes import and find the ring meanwhile
    procs, outs = [], []
    for p in range(2):
        out = tmp_path / f"client{p}.json"
        spec = {"seeds": [n.id for n in nodes], "start": start, "end": start + RUN,
                "proc": p, "threads": 4, "out": str(out)}
        log = open(tmp_path / f"client{p}.log", "wb")
        procs.append((subprocess.Popen([sys.executable, __file__, json.dumps(spec)],
                                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)}), log))
        outs.append(out)
    nemesis = Nemesis(ring, nodes, spare, start)
    nemesis.start()
    try:
        for proc, log in procs:
            proc.wait(timeout=RUN + 4 * SETTLE)
            log.close()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        nemesis.join(120)
        nemesis.nodes[2].signal(signal.SIGCONT)
    assert nemesis.error is None, f"the nemesis failed: {nemesis.error!r}"
    assert [p.returncode for p, _ in procs] == [0, 0], \
        [(tmp_path / f"client{i}.log").read_text()[-2000:] for i in range(2)]
    events = [e for out in outs for e in json.loads(out.read_text())]
    ring.refresh()
    final = {name: wait_for(lambda name=name: ring.lookup(name), timeout=30,
                            what=f"a lookup of {name}") for name in NAMES}
    counts = check(events, final)
    with capsys.disabled():
        print(f"\nnames race under faults ({', '.join(nemesis.done)}): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert len(nemesis.done) == 6, nemesis.done
    assert counts["double_registrations"] == counts["lost_names"] == 0
    assert counts["true_not_owner"] == counts["lookups_not_owner"] == 0
    assert counts["true"] >= 1


# -- partitions, the HTTP registry, the seed's flow -----------------------------------------------

def netns_unusable() -> str | None:
    """Why a network namespace with tc on its loopback cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to make a network namespace"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "needs ip and tc (iproute2)"
    name = f"sdht-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        probe = subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo",
                                "root", "handle", "1:", "htb"], capture_output=True, text=True)
        return f"tc cannot shape in a namespace: {probe.stderr.strip()}" if probe.returncode \
            else None
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_partition_in_a_network_namespace(tmp_path):
    """A real network partition: the nodes and the client share a private network namespace
    (its own 127.0.0.1, nothing outside it touched), and tc drops the packets to the cut
    nodes' ports."""
    why = netns_unusable()
    if why:
        pytest.skip(f"no partition by network namespace: {why}; "
                    "test_a_minority_cannot_register_and_the_majority_can pauses processes")
    name = f"sdht-names-{os.getpid()}"
    pids = tmp_path / "pids.json"
    spec = {"dir": str(tmp_path), "pids": str(pids)}
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, __file__,
                               "partition", json.dumps(spec)], cwd=ROOT, capture_output=True,
                              text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for pid in json.loads(pids.read_text()) if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert out["minority"] in ("no majority", "unknown") and not out["minority retried"]
    assert (out["majority"], out["lookup"], out["late"]) == (True, "majority", False)


def test_a_minority_cannot_register_and_the_majority_can(cluster):
    """Partitions by pausing processes: with two of three replicas stopped a client cannot
    register (its claim may still land when they resume: a paused process reads its queued
    requests, a partition drops them); with one stopped, the other two register names."""
    from sdht.errors import OutcomeUnknown
    ring, nodes = cluster(3, timeout=(0.5, 1.0))
    first, second, third = nodes
    owner = None
    for node in (first, second):
        node.signal(signal.SIGSTOP)
    try:
        with pytest.raises(QuorumError) as caught:
            ring.names.claim("user:minority", "minority", deadline=2.0)
        owner = caught.value.owner if isinstance(caught.value, OutcomeUnknown) else None
    finally:
        for node in (first, second):
            node.signal(signal.SIGCONT)
    third.signal(signal.SIGSTOP)
    try:
        assert [ring.register(f"user:majority{i}", i) for i in range(5)] == [True] * 5
        assert ring.lookup("user:majority3") == 3
    finally:
        third.signal(signal.SIGCONT)
    # An unknown outcome settles on retry: nobody else wanted the name, so it is this call's.
    if owner is not None:
        assert ring.register("user:minority", "minority", owner=owner) is True
        assert ring.lookup("user:minority") == "minority"
    assert ring.register("user:majority3", "late") is False


def test_the_gateway_registry(cluster):
    import requests
    _, nodes = cluster(3)
    url = f"{nodes[0].url}/kv-store/names/user:alice"
    assert requests.get(url, timeout=10).status_code == 404
    first = requests.put(url, json={"value": {"bio": "hi"}}, timeout=10)
    assert first.status_code == 201 and first.json()["registered"] is True
    taken = requests.put(f"{nodes[1].url}/kv-store/names/user:alice", json={"value": 2},
                         timeout=10)
    assert taken.status_code == 409 and taken.json()["error"] == "taken"
    assert taken.json()["value"] == {"bio": "hi"}
    assert requests.get(f"{nodes[2].url}/kv-store/names/user:alice",
                        timeout=10).json()["value"] == {"bio": "hi"}
    retry = requests.put(url, json={"value": {"bio": "hi"}, "owner": first.json()["owner"]},
                         timeout=10)
    assert retry.status_code == 201                   # a retry finds its own claim
    bare = requests.put(f"{nodes[0].url}/kv-store/names/post:empty", timeout=10)
    assert bare.status_code == 201 and requests.get(
        f"{nodes[0].url}/kv-store/names/post:empty", timeout=10).json()["value"] is None
    assert requests.put(url, data="[1]", timeout=10).status_code == 400


def test_the_seeds_flow(cluster):
    """Sign-up registers ``user:<name>`` and then writes the user record; an anonymous post
    registers ``post:<slug>``, drawing another slug until one is free."""
    ring, _ = cluster(3)

    def sign_up(user: str, profile: dict) -> bool:
        if not ring.register(f"user:{user}", {"since": time.time()}):
            return False
        ring.set(f"profile:{user}", profile)
        return True

    assert sign_up("alice", {"bio": "first"}) is True
    assert sign_up("alice", {"bio": "impostor"}) is False
    assert ring.get("profile:alice") == {"bio": "first"}
    rnd = random.Random(7)
    slugs = [f"{rnd.choice(['red', 'blue'])}-{rnd.choice(['fox', 'owl'])}" for _ in range(200)]

    def post(text: str) -> str:
        for slug in slugs:   # 4 possible slugs: collisions come soon
            if ring.register(f"post:{slug}", text):
                return slug
        raise AssertionError("no free slug")

    made = [post(f"post {i}") for i in range(4)]
    assert len(set(made)) == 4
    assert {ring.lookup(f"post:{s}") for s in made} == {f"post {i}" for i in range(4)}
    with pytest.raises(AssertionError, match="no free slug"):
        post("a fifth")
