"""Replica groups (sdht/groups.py) and their placement (sdht.ring.GroupPlacement)."""
from __future__ import annotations

from collections import Counter

from hypothesis import given, settings, strategies as st

from sdht import groups, params as cluster_params
from sdht.migration import plan_drops, plan_transfers
from sdht.ring import (JOINING, LEAVING, NORMAL, GroupPlacement, Member, Placement, RingView,
                       position)
from sdht.wire import RING_SIZE

ids = st.lists(st.integers(1, 65535).map(lambda p: f"127.0.0.1:{p}"), min_size=1, max_size=24,
               unique=True)
factors = st.integers(1, 5)


def ring(node_ids, n, epoch=1) -> RingView:
    r, w = groups.quorum_sizes(len(node_ids), n)
    return RingView(epoch, tuple(Member(i) for i in sorted(node_ids)),
                    cluster_params.with_defaults({"groups": 1, "n": n, "r": r, "w": w}))


class TestGroups:
    @given(ids, factors)
    def test_every_node_is_in_exactly_one_group_of_n_to_2n_minus_1(self, node_ids, n):
        made = groups.groups_of(node_ids, n)
        assert sorted(i for g in made for i in g) == sorted(node_ids)
        assert len(made) == groups.group_count(len(node_ids), n)
        sizes = [len(g) for g in made]
        assert max(sizes) - min(sizes) <= 1
        if len(node_ids) >= n:
            assert n <= min(sizes) and max(sizes) <= 2 * n - 1

    @given(ids, factors)
    def test_groups_do_not_depend_on_the_order_of_the_view(self, node_ids, n):
        assert groups.groups_of(node_ids, n) == groups.groups_of(list(reversed(node_ids)), n)

    @given(st.integers(1, 64), factors)
    def test_quorums_overlap_in_the_largest_group(self, members, n):
        r, w = groups.quorum_sizes(members, n)
        largest = max(len(g) for g in groups.groups_of([f"h:{i}" for i in range(members)], n))
        assert 1 <= r <= n and 1 <= w <= n
        assert r + w > largest
        cluster_params.with_defaults({"groups": 1, "n": n, "r": r, "w": w})

    def test_jump_is_even_and_moves_only_what_the_new_bucket_takes(self):
        for count in (1, 2, 3, 5, 8):
            owners = [g for g in (groups.jump(k * 7919, count) for k in range(4000))]
            assert set(owners) == set(range(count))
            grown = [groups.jump(k * 7919, count + 1) for k in range(4000)]
            assert all(a == b or b == count for a, b in zip(owners, grown))

    @given(st.integers(1, 16))
    @settings(max_examples=16, deadline=None)
    def test_slots_split_the_ring_evenly(self, count):
        """Within 15 % of an even split up to 16 groups (the figures of groups.SLOTS)."""
        share, prev = Counter(), -1
        for end, g in groups.slot_runs(count):
            share[g] += end - prev
            prev = end
        assert prev == RING_SIZE - 1
        for g in range(count):
            assert abs(share[g] / RING_SIZE - 1 / count) < 0.15 / count


class TestGroupPlacement:
    @given(ids, factors, st.lists(st.text(max_size=20), min_size=1, max_size=30))
    @settings(max_examples=50, deadline=None)
    def test_a_keys_replicas_are_its_group(self, node_ids, n, keys):
        view = ring(node_ids, n)
        made = groups.groups_of(node_ids, n)
        placement = view.readers
        assert isinstance(placement, GroupPlacement)
        for key in keys:
            assert tuple(placement.for_key(key)) in made
            assert placement.for_key(key) == placement.preference(position(key))

    def test_keys_spread_evenly_over_groups(self):
        view = ring([f"127.0.0.1:{8000 + i}" for i in range(6)], 2)
        counts = Counter(tuple(view.readers.for_key(f"key-{i}")) for i in range(6000))
        assert len(counts) == 3
        assert all(abs(c - 2000) < 2000 * 0.1 for c in counts.values())

    def test_tokens_stay_the_default(self):
        view = RingView(1, (Member("127.0.0.1:1"), Member("127.0.0.1:2")))
        assert type(view.readers) is Placement and view.params["groups"] == 0
        assert "groups" not in view.body()["params"]   # signatures of older rings still hold
        assert RingView.from_json(view.to_json()) == view
        grouped = ring(["127.0.0.1:1", "127.0.0.1:2"], 2)
        assert grouped.body()["params"]["groups"] == 1
        assert RingView.from_json(grouped.to_json()) == grouped

    @given(ids, factors, st.integers(1, 65535).map(lambda p: f"10.0.0.1:{p}"))
    @settings(max_examples=30, deadline=None)
    def test_migration_plans_move_every_range_a_join_or_remove_regroups(self, node_ids, n,
                                                                         extra):
        """A join (and a remove) regroups; the migration plan covers every range a node
        gains, through the placement interface alone."""
        base = ring(node_ids, n)
        staged = base.with_member(Member(extra, JOINING))
        before, after = staged.readers, staged.future
        plan = plan_transfers(before, after)
        probes = [position(f"k{i}") for i in range(200)]
        for pos in probes:
            for gainer in set(after.preference(pos)) - set(before.preference(pos)):
                assert any(t.target == gainer and t.start <= pos < t.end for t in plan)
        leaving = base.with_member(Member(sorted(node_ids)[0], LEAVING))
        final = leaving.without_member(sorted(node_ids)[0])
        drops = plan_drops(leaving.readers, final.readers)
        for pos in probes:
            for loser in set(leaving.readers.preference(pos)) - set(final.readers.preference(pos)):
                assert any(d.target == loser and d.start <= pos < d.end for d in drops)
        assert all(m.state == NORMAL for m in base.members)
