"""Faults survived, with real node processes: kill -9, SIGSTOP, a lost disk, a dead node's
removal and write-write conflicts across a partition (DESIGN: "anti-entropy")."""
from __future__ import annotations

import shutil
import signal
import threading
import time

import pytest
from conftest import wait_for

import sdht
from sdht.kinds.register import beats
from sdht.ring import RING_SIZE
from storage.layout import data_key

INTERVAL = "0.5"   # seconds between the nodes' own anti-entropy passes


def root(transport, node: str) -> bytes:
    return transport.tree(node, [(0, 0)])[0]["hashes"][0]


def converged(ring, nodes) -> bool:
    return len({root(ring.transport, n.id) for n in nodes}) == 1


@pytest.fixture
def cluster(cluster):
    """Single-worker nodes syncing every INTERVAL seconds, and a short client timeout."""
    def make(count, params=None, timeout=(0.5, 1.0)):
        return cluster(count, params, timeout, workers=1, env={"SDHT_SYNC_INTERVAL": INTERVAL})
    return make


class Writer(threading.Thread):
    """Writes fresh keys until stopped; remembers the records that were acknowledged."""

    def __init__(self, ring, prefix: str) -> None:
        super().__init__(daemon=True)
        self.ring, self.prefix = ring, prefix
        self.acked: dict[str, sdht.Record] = {}
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            key = f"{self.prefix}{i}"
            try:
                self.acked[key] = self.ring.set(key, i)
            except sdht.SDHTError:
                self.failed += 1
            i += 1

    def stop(self) -> None:
        """Stop writing; fail if the thread is still running 30 s later (a hung request)."""
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), f"writer {self.prefix!r} still running 30s after stop"


class TestFaults:
    def test_kill_9_a_replica_under_a_writer(self, cluster):
        ring, nodes = cluster(3)
        writer = Writer(ring, "w")
        writer.start()
        wait_for(lambda: len(writer.acked) >= 30, what="writes before the kill")
        nodes[2].kill()
        before = len(writer.acked)
        wait_for(lambda: len(writer.acked) >= before + 30, what="writes with a replica dead")
        nodes[2].start()
        wait_for(lambda: len(writer.acked) >= before + 60, what="writes after the restart")
        writer.stop()
        for key, rec in writer.acked.items():
            assert ring.get_record(key) == rec
        wait_for(lambda: converged(ring, nodes), 30, what="anti-entropy to converge")

    def test_a_stopped_replica_slows_no_request_beyond_its_timeout(self, cluster):
        ring, nodes = cluster(3)     # timeout (0.5, 1.0): connect, read
        nodes[1].signal(signal.SIGSTOP)
        try:
            slowest = 0.0
            for i in range(30):
                began = time.monotonic()
                ring.set(f"s{i}", i)
                assert ring.get(f"s{i}") == i
                slowest = max(slowest, time.monotonic() - began)
            assert slowest < 2.5, slowest
        finally:
            nodes[1].signal(signal.SIGCONT)
        wait_for(lambda: converged(ring, nodes), 30, what="the stopped replica to catch up")
        assert ring.transport.get_record(nodes[1].id, "s29")[0] is not None

    def test_a_node_that_lost_its_disk_is_refilled(self, cluster):
        ring, nodes = cluster(3)
        ring.set_many({f"d{i}": i for i in range(150)})
        nodes[0].kill()
        shutil.rmtree(nodes[0].data_dir)
        nodes[0].start()
        wait_for(lambda: converged(ring, nodes), 30, what="peers to give back ring and data")
        assert ring.transport.get_ring(nodes[0].id).epoch == ring.refresh().epoch
        assert ring.transport.health(nodes[0].id)["records"] == 150

    def test_a_dead_node_removed_leaves_n_copies_of_every_key(self, cluster):
        ring, nodes = cluster(4)
        ring.set_many({f"r{i}": i for i in range(200)})
        nodes[3].kill()
        ring.remove(nodes[3].id, dead=True)
        survivors = [n.id for n in nodes[:3]]
        assert sorted(ring.nodes) == sorted(survivors)
        for i in range(200):
            copies = [n for n in survivors
                      if ring.transport.get_record(n, f"r{i}")[0] is not None]
            assert len(copies) == 3, (i, copies)

    def test_write_write_conflicts_across_a_partition_converge_to_the_winner(self, cluster):
        params = {"n": 3, "r": 1, "w": 1}
        ring, (a, b, c) = cluster(3, params=params)
        other = sdht.Ring([b.id], timeout=(0.5, 1.0))
        keys = [f"p{i}" for i in range(10)]
        written: dict[str, list[sdht.Record]] = {k: [] for k in keys}
        try:
            for node in (b, c):
                node.signal(signal.SIGSTOP)
            for i, key in enumerate(keys):   # side one: half the keys rented with more work
                written[key].append(ring.set(key, "one", work=3.0 + 6 if i % 2 else None))
            a.signal(signal.SIGSTOP)
            for node in (b, c):
                node.signal(signal.SIGCONT)
            for key in keys:                 # side two, later: wins unless the key is rented
                try:
                    written[key].append(other.set(key, "two"))
                except sdht.WriteConflict:
                    pass   # side one's write reached b or c already and holds the key
        finally:
            for node in (a, b, c):
                node.signal(signal.SIGCONT)
        ring.repair()
        wait_for(lambda: converged(ring, [a, b, c]), 30, what="replicas to converge")
        decay = ring.params["decay"]
        for key, recs in written.items():
            best = recs[0]
            for rec in recs[1:]:
                best = rec if beats(rec, best, decay) else best
            for node in (a, b, c):
                assert ring.transport.get_record(node.id, key)[0] == best, key
        other.close()


def test_root_hash_covers_the_whole_ring(cluster):
    ring, nodes = cluster(1)
    ring.set("x", 1)
    body, _ = ring.transport.tree(nodes[0].id, [(0, 0)], [(0, 0)], [(0, RING_SIZE)])
    assert [ref for ref, _ in body["entries"][0]] == [data_key(0, "x")]


def test_soak_smoke():
    """bench/soak.py runs a few seconds of writers, readers and faults and finds no loss."""
    import subprocess
    import sys
    from conftest import ROOT
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "4",
                          "--spares", "0", "--fault-every", "1", "2", "--seed", "1"],
                         capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "acknowledged writes lost: 0; replicas divergent: 0" in out.stdout
