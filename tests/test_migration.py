"""Joins and removes under a racing writer and reader on real nodes; resuming a join and the
cost of a change against in-process nodes (sdht.inprocess: real apps and LMDB, no sockets)."""
from __future__ import annotations

import random
import statistics
import threading

import pytest

import sdht
from sdht.errors import RingBusy


class TestLiveMigration:
    def test_writer_and_reader_across_joins_and_removes(self, cluster, start_node):
        """No acknowledged write is lost and every acknowledged key stays readable while
        nodes join and leave (ANCHORS: riak_kv#1754 lost writes during handoff)."""
        admin, nodes = cluster(3)
        spare = [start_node() for _ in range(2)]
        acked: dict[str, int] = {}
        failures: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def writer():
            ring = sdht.connect(nodes[0].id)
            i = 0
            while not stop.is_set():
                key = f"w{i % 400}"   # overwrite keys, so stale versions would show
                try:
                    ring.set(key, i)
                except sdht.SDHTError as exc:
                    failures.append(f"set {key}: {exc}")
                else:
                    with lock:
                        acked[key] = i
                i += 1
            ring.close()

        def reader():
            ring = sdht.connect(nodes[1].id)
            rnd = random.Random(7)
            while not stop.is_set():
                with lock:
                    if not acked:
                        continue
                    key = rnd.choice(list(acked))
                    floor = acked[key]
                try:
                    got = ring.get(key)
                except sdht.SDHTError as exc:
                    failures.append(f"get {key}: {exc}")
                    continue
                if got is None or got < floor:
                    failures.append(f"get {key}: {got!r}, acknowledged {floor}")
            ring.close()

        # Daemon threads: one that outlives its join timeout fails the test below instead of
        # keeping pytest from exiting.
        threads = [threading.Thread(target=writer, name="writer", daemon=True),
                   threading.Thread(target=reader, name="reader", daemon=True)]
        for t in threads:
            t.start()
        try:
            reports = [admin.join(spare[0].id), admin.join(spare[1].id),
                       admin.remove(nodes[0].id), admin.remove(nodes[2].id)]
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        for t in threads:   # after the finally: a failed change's own error is not masked
            assert not t.is_alive(), f"the {t.name} still running 60 s after stop"
        assert failures == []
        assert all(r.moved > 0 for r in reports)
        assert len(acked) > 50
        check = sdht.connect(spare[1].id)
        assert check.get_many(list(acked)) == acked
        for key in acked:   # after the dust settles, n copies of every acknowledged write
            prefs = check.preference(key)
            assert len(prefs) == 3
            held = [check.transport.get_record(n, key)[0] for n in prefs]
            assert all(r is not None and r.value == acked[key] for r in held), key
        check.close()

    def test_interrupted_join_resumes_and_changes_do_not_overlap(self, inprocess_cluster,
                                                                  node_apps):
        ring, apps = inprocess_cluster(3)
        ring.set_many({f"k{i}": i for i in range(300)})
        (newcomer,) = node_apps(1, into=apps)
        # Stage the join by hand, as a client that crashed after publishing it would leave it.
        from sdht.migration import _publish
        from sdht.ring import JOINING, Member
        _publish(ring.handle, ring.view.with_member(Member(newcomer, JOINING, 128)), ())
        (other,) = node_apps(1, into=apps)
        with pytest.raises(RingBusy):
            ring.join(other)
        report = ring.join(newcomer)   # resumes
        assert report.moved > 0
        assert ring.view.member(newcomer).state == "normal"
        assert ring.get_many([f"k{i}" for i in range(300)]) == {f"k{i}": i for i in range(300)}

    def test_cost_of_a_join_is_the_new_nodes_fair_share(self, inprocess_cluster, node_apps):
        """20k keys on 4 nodes (n=3): a 5th node receives about keys*n/5 records."""
        ring, apps = inprocess_cluster(4)
        keys = 20_000
        ring.set_many({f"key-{i}": i for i in range(keys)})
        (fifth,) = node_apps(1, into=apps)
        report = ring.join(fifth)
        fair = keys * 3 / 5
        print(f"\njoin moved {report.moved} records (fair share {fair:.0f}, "
              f"ratio {report.moved / fair:.3f}) in {report.seconds:.2f}s, "
              f"dropped {report.dropped}")
        assert report.moved <= 1.3 * fair
        assert report.dropped == report.stored   # losers drop exactly what moved
        counts = [ring.transport.health(n)["records"] for n in ring.nodes]
        assert sum(counts) == keys * 3
        assert max(counts) <= 1.3 * statistics.mean(counts)
