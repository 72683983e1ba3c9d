"""Anti-entropy: the hash tree kept by the store, the tree route, sync_range and repair."""
from __future__ import annotations

import math

import pytest
from conftest import wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

import sdht
from sdht.pow import mint
from sdht.params import DEFAULTS as DEFAULT_PARAMS
from sdht.wire import now_us
from sdht.ring import RING_SIZE
from sdht.inprocess import WSGITransport
from sdht.sync import sync_range
from sdht.transport import Transport
from sdht.kinds.register import from_packed
from storage.store import Store, packed
from storage.tree import ZERO, contribution, xor

FULL = (0, RING_SIZE)


def rebuilt_root(store: Store) -> bytes:
    """The root hash recomputed from scratch over every stored record's content (not its
    stored header, so a header out of step with its record shows)."""
    h = ZERO
    with store.env.begin(db=store.data) as txn:
        for lkey, raw in txn.cursor():
            h = xor(h, contribution(bytes(lkey), from_packed(packed(bytes(lkey), raw), DEFAULT_PARAMS).digest))
    return h


def root(transport: Transport, node: str) -> bytes:
    return transport.tree(node, [(0, 0)])[0]["hashes"][0]


class TestTree:
    def test_incremental_tree_matches_a_rebuild(self, tmp_path):
        store = Store(str(tmp_path / "db"), 1 << 26, sync=False)
        store.put_many([mint(f"k{i}", i, 3.0) for i in range(300)], DEFAULT_PARAMS)
        store.put_many([mint(f"k{i}", "new", 3.0) for i in range(0, 300, 3)], DEFAULT_PARAMS)
        old = mint("gone", None, 3.0, t=now_us() - 10**12, deleted=True)
        store.put_many([old, mint("k1", None, 3.0, deleted=True)], DEFAULT_PARAMS)
        assert store.tree_hashes([(0, 0)])[0] == rebuilt_root(store)
        assert store.purge_tombstones(now_us() - 10**9) == 1      # only the old tombstone
        assert store.tree_hashes([(0, 0)])[0] == rebuilt_root(store)
        assert store.delete_range(0, 1 << 62) > 0
        assert store.tree_hashes([(0, 0)])[0] == rebuilt_root(store)
        level1 = store.tree_hashes([(1, i) for i in range(16)])
        assert xor_all(level1) == store.tree_hashes([(0, 0)])[0]
        store.close()
        reopened = Store(str(tmp_path / "db"), 1 << 26, sync=False)
        assert reopened.tree_hashes([(0, 0)])[0] == rebuilt_root(reopened)

    def test_tree_route_checks_its_input(self, client):
        from sdht.wire import packb
        post = lambda body: client.post("/v1/tree", data=packb(body),  # noqa: E731
                                        content_type="application/msgpack")
        assert post({"nodes": [[5, 0]]}).status_code == 400
        assert post({"nodes": [[1, 16]]}).status_code == 400
        assert post({"ranges": [[5, 4]]}).status_code == 400
        assert post([1, 2]).status_code == 400
        ok = post({"nodes": [[0, 0]], "list": [[4, 7]], "ranges": [[0, RING_SIZE - 1]]})
        assert ok.status_code == 200


def xor_all(hashes):
    out = ZERO
    for h in hashes:
        out = xor(out, h)
    return out


@pytest.fixture
def cluster(cluster):
    """``cluster(count, params=..., interval=...)``: single-worker nodes in one ring, for the
    nodes' own background sync (in their gunicorn master); other tests use in-process nodes."""
    def make(count, params=None, interval="0", timeout=(0.5, 2.0)):
        return cluster(count, params, timeout, workers=1, env={"SDHT_SYNC_INTERVAL": interval})
    return make


class TestSyncRange:
    def test_cost_is_a_constant_factor_of_k_log_n(self, node_apps, capsys):
        apps = node_apps(2)
        a, b = apps
        t = WSGITransport(apps)
        n = 10_000
        base = [mint(f"key-{i}", i, 3.0) for i in range(n)]
        for node in (a, b):
            for i in range(0, n, 5000):
                t.put_many(node, base[i:i + 5000])
        assert root(t, a) == root(t, b)
        figures = []
        for k in (1, 10, 100):
            extra = [mint(f"new-{k}-{i}", i, 3.0) for i in range(k)]
            t.put_many(b, extra)
            report = sync_range(t, a, b, *FULL)
            assert (report.differences, report.pushed_to_a, report.pushed_to_b) == (k, k, 0)
            bound = k * math.log2(n)
            figures.append((k, report.hashes, report.compared, round(bound), report.rounds))
            assert report.hashes <= 12 * bound, figures
            assert root(t, a) == root(t, b)
        again = sync_range(t, a, b, *FULL)
        assert (again.differences, again.hashes, again.rounds) == (0, 2, 1)
        with capsys.disabled():
            print("\nsync cost at n=10k: (k, hashes, tree nodes compared, k*log2 n, rounds)",
                  figures)
        t.close()

    def test_range_is_respected_and_both_directions_merge(self, node_apps):
        apps = node_apps(2)
        a, b = apps
        t = WSGITransport(apps)
        recs = [mint(f"k{i}", i, 3.0) for i in range(400)]
        t.put_many(a, recs[:200])
        t.put_many(b, recs[200:])
        newer = mint("k5", "newer", 3.0)          # a holds k5's older version, b the newer
        t.put_many(b, [newer])
        start, end = 1 << 62, 3 << 62
        inside = lambda key: start <= sdht.ring.position(key) < end  # noqa: E731
        report = sync_range(t, a, b, start, end)
        assert report.pushed_to_a + report.pushed_to_b == sum(1 for r in recs if inside(r.key))
        for i, rec in enumerate(recs):
            held = [t.get_record(node, rec.key)[0] is not None for node in (a, b)]
            assert held == ([True, True] if inside(rec.key) or i == 5 else [i < 200, i >= 200])
        sync_range(t, a, b, *FULL)
        assert root(t, a) == root(t, b)
        assert t.get_record(a, "k5")[0] == newer
        t.close()


class TestRepair:
    def test_repair_converges_every_replica_and_reports_progress(self, inprocess_cluster):
        ring, apps = inprocess_cluster(3)
        nodes = list(apps)
        ring.set_many({f"k{i}": i for i in range(100)})   # returns once every replica answered
        t = ring.transport
        t.delete_range(nodes[1], 0, RING_SIZE)
        t.put_record(nodes[2], mint("only-here", "x", 3.0))
        seen = []
        report = ring.repair(progress=lambda done, total: seen.append((done, total)))
        assert report.errors == [], report.errors
        assert report.differences >= 101
        assert seen[-1][0] == seen[-1][1] == report.ranges
        assert len({root(t, n) for n in nodes}) == 1
        assert ring.repair().differences == 0


class CountingTransport(WSGITransport):
    """The in-process transport, counting the tree requests it sends."""

    def __init__(self, apps):
        super().__init__(apps)
        self.trees = 0

    def tree(self, node, nodes, listed=(), ranges=None):
        self.trees += 1
        return super().tree(node, nodes, listed, ranges)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 9), tokens=st.integers(1, 6), n=st.integers(1, 4),
       down=st.sets(st.integers(0, 8), max_size=3))
def test_hub_plan_gives_every_interval_one_hub_that_meets_every_live_replica(count, tokens, n,
                                                                             down):
    from sdht.repair import hub_plan
    from sdht.ring import Member, RingView, intervals
    members = tuple(Member(f"10.0.0.{i}:1", tokens=tokens) for i in range(count))
    view = RingView(1, members, {**DEFAULT_PARAMS, "n": n, "r": 1, "w": 1})
    gone = {f"10.0.0.{i}:1" for i in down}
    plan = hub_plan(view, gone)
    covered = 0
    for start, end, probe in intervals(view.readers.boundaries()):
        alive = [r for r in view.readers.preference(probe) if r not in gone]
        if not alive:
            continue
        covered += 1
        peers, _ = plan[alive[0]]     # the first live replica is the hub
        for peer in alive[1:]:
            assert any(s <= start and end <= e for s, e in peers[peer]), (start, end, peer)
    assert sum(c for _, c in plan.values()) == covered
    assert not gone & set(plan) and not any(gone & set(p) for p, _ in plan.values())
    # one sync per hub and peer: never more than the pairs of live members
    assert sum(len(p) for p, _ in plan.values()) <= count * (count - 1)
    assert all(hub_plan(view, gone, h) == {h: plan[h]} for h in plan)


def _inside(low, high, ranges):
    return any(s <= low and high <= e for s, e in ranges)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, RING_SIZE),
                          st.integers(0, 1 << 16).map(lambda i: i << 48),
                          st.integers(0, 1 << 16).map(lambda i: max(0, (i << 48) - 1))),
                max_size=12))
def test_a_sync_starts_from_the_largest_nodes_inside_and_lists_the_leaves_cut(points):
    from sdht.sync import start_nodes, merge_ranges
    from sdht.wire import DEPTH, node_range
    points = sorted(set(points))
    ranges = merge_ranges([(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)])
    compare, listing = start_nodes(ranges)
    spans = sorted(node_range(*n) for n in compare)
    for (level, index), (low, high) in zip(sorted(compare), map(lambda n: node_range(*n),
                                                                 sorted(compare))):
        assert _inside(low, high, ranges)
        if level:   # the largest: its parent is not wholly inside
            assert not _inside(*node_range(level - 1, index // 16), ranges)
    for (level, index) in listing:
        low, high = node_range(level, index)
        assert level == DEPTH and not _inside(low, high, ranges)
        assert any(s < high and low < e for s, e in ranges)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))       # disjoint
    assert len(set(listing)) == len(listing)
    # together they cover every range
    cover = merge_ranges(spans + [node_range(*leaf) for leaf in listing])
    assert all(any(s <= start and end <= e for s, e in cover) for start, end in ranges)


def test_replicas_that_agree_sync_in_one_request_each(node_apps):
    apps = node_apps(2)
    a, b = apps
    t = CountingTransport(apps)
    recs = [mint(f"k{i}", i, 3.0) for i in range(500)]
    for node in (a, b):
        t.put_many(node, recs)
    # many ranges, each with partial leaves at both ends: hashes and listings in one request
    ranges = [(i << 58, (i << 58) + (1 << 57) + 12345) for i in range(0, 64, 3)]
    report = sdht.sync.sync_ranges(t, a, b, ranges)
    assert (report.differences, report.rounds, t.trees) == (0, 1, 2)
    t.put_many(b, [mint("late", 1, 3.0)])
    assert sdht.sync.sync_ranges(t, a, b, [FULL]).pushed_to_a == 1
    t.close()


def test_a_repair_with_nothing_to_do_asks_each_replica_about_once_per_hub(node_apps):
    from sdht.repair import hub_plan, repair_view
    apps = node_apps(5)
    t = CountingTransport(apps)
    ring = sdht.Ring(list(apps)[:1], transport=t)
    try:
        for node in apps:
            ring.join(node)
        ring.set_many({f"k{i}": i for i in range(300)})
        view = ring.handle.refresh()
        plan = hub_plan(view)
        pairs = sum(len(peers) for peers, _ in plan.values())
        t.trees = 0
        for hub, (peers, _) in plan.items():
            for peer, ranges in peers.items():
                sdht.sync.sync_ranges(t, hub, peer, ranges)
        pairwise, t.trees = t.trees, 0
        report = repair_view(t, view)
        assert (report.differences, report.errors, report.syncs) == (0, [], pairs)
        # each peer asked, and each hub once for all its peers: not both sides of every pair
        assert t.trees <= 0.8 * pairwise, (t.trees, pairwise)
        t.put_many(list(apps)[2], [mint("late", 1, 3.0)])
        assert repair_view(t, view).pushed == 2 and repair_view(t, view).differences == 0
    finally:
        ring.close()


def test_repair_syncs_around_a_node_that_is_down(inprocess_cluster):
    ring, apps = inprocess_cluster(5)
    nodes = list(apps)
    t = ring.transport
    ring.set_many({f"k{i}": i for i in range(200)})
    gone = nodes[0]
    t.mark_down(gone)
    # records each written to one live replica only, some of them where the dead node is hub
    view = ring.handle.view
    lone = [mint(f"lone{i}", i, 3.0) for i in range(40)]
    for rec in lone:
        live = [r for r in view.readers.for_key(rec.key) if r != gone]
        t.put_record(live[-1], rec)
    report = ring.repair()
    assert any(gone in e for e in report.errors)
    assert report.syncs <= 2 * 4 * 3   # per live hub and peer: one sync, and one more at most
    for rec in lone:
        for node in view.readers.for_key(rec.key):
            if node != gone:
                assert t.get_record(node, rec.key)[0] == rec, (rec.key, node)
    assert ring.repair().differences == 0


class TestBackgroundSync:
    def test_nodes_refill_a_replica_by_themselves(self, cluster):
        ring, nodes = cluster(3, interval="0.3")
        ring.set_many({f"k{i}": i for i in range(200)})
        t = ring.transport
        assert t.delete_range(nodes[0].id, 0, RING_SIZE) > 0
        wait_for(lambda: len({root(t, n.id) for n in nodes}) == 1, 20,
                 what="anti-entropy to refill the emptied replica")
        # A pass reports its counts to its node after its syncs: wait for that report too.
        wait_for(lambda: sum(t.health(n.id)["sync_differences"] for n in nodes) >= 200, 10,
                 what="the pass that refilled it to report its differences")
        assert sum(t.health(n.id)["sync_rounds"] for n in nodes) > 0

    def test_tombstones_are_purged_after_the_grace(self, cluster):
        ring, nodes = cluster(3, params={"tombstone_grace": 1.0}, interval="0.3")
        ring.set("doomed", 1)
        ring.set("kept", 2)
        ring.delete("doomed")
        t = ring.transport
        wait_for(lambda: all(t.get_record(n.id, "doomed")[0] is None for n in nodes), 20,
                 what="every replica to purge the expired tombstone")
        assert ring.get("doomed") is None and ring.get("kept") == 2
        assert len({root(t, n.id) for n in nodes}) == 1


def test_a_sync_splits_what_a_node_would_cut_or_refuse(node_apps):
    """5,000 records against an empty replica, on nodes that answer at most 2 KB of entries:
    the levels go in chunks, cut listings and oversized batch reads are asked again in halves,
    and the empty replica ends up with everything."""
    from sdht.inprocess import WSGITransport
    apps = node_apps(2, MAX_ANSWER_BYTES=2048)
    a, b = list(apps)
    t = WSGITransport(apps)
    try:
        recs = [mint(f"bulk{i}", i, 3.0) for i in range(5000)]
        for i in range(0, len(recs), 1000):
            t.put_many(a, recs[i:i + 1000])
        report = sync_range(t, a, b, *FULL)
        assert report.pushed_to_b == 5000 and report.pushed_to_a == 0
        assert root(t, a) == root(t, b)
        assert sync_range(t, a, b, *FULL).differences == 0
    finally:
        t.close()
