"""Placement on the ring and migration planning: pure computation, property-tested."""
from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdht
from sdht.errors import ConfigError
from sdht.migration import plan_drops, plan_transfers
from sdht.ring import (JOINING, LEAVING, NORMAL, RING_SIZE, Member, Placement, RingView,
                       intervals, position, token_positions)

node_ids = st.lists(st.integers(1024, 65535).map(lambda p: f"127.0.0.1:{p}"), min_size=1,
                    max_size=7, unique=True)
positions = st.integers(0, RING_SIZE - 1)


def placement(ids, n=3, tokens=8):
    return Placement([Member(i, NORMAL, tokens) for i in ids], n)


class TestPlacement:
    def test_position_is_first_8_bytes_of_blake2b(self):
        import hashlib
        assert position("a key") == int.from_bytes(hashlib.blake2b(b"a key").digest()[:8], "big")
        assert position("a key") == position(b"a key")

    @given(node_ids, positions, st.integers(1, 5))
    def test_preference_is_n_distinct_members(self, ids, pos, n):
        prefs = placement(ids, n).preference(pos)
        assert len(prefs) == min(n, len(ids)) == len(set(prefs))
        assert set(prefs) <= set(ids)

    @given(node_ids, positions, st.randoms())
    def test_preference_ignores_member_order(self, ids, pos, rnd):
        shuffled = list(ids)
        rnd.shuffle(shuffled)
        assert placement(ids).preference(pos) == placement(shuffled).preference(pos)

    @given(node_ids, positions)
    def test_first_replica_owns_the_next_token_clockwise(self, ids, pos):
        p = placement(ids)
        tokens = sorted((t, i) for i in ids for t in token_positions(i, 8))
        after = [i for t, i in tokens if t >= pos] or [tokens[0][1]]
        assert p.preference(pos)[0] == after[0]

    @given(node_ids, st.integers(1024, 65535), positions)
    def test_adding_a_node_moves_only_what_it_takes(self, ids, port, pos):
        """Consistent hashing: a join changes a preference list by at most the newcomer in and
        one old replica out."""
        new = f"127.0.0.1:{port}"
        if new in ids:
            return
        old = placement(ids).preference(pos)
        grown = placement(ids + [new]).preference(pos)
        assert set(grown) - set(old) <= {new}
        assert len(set(old) - set(grown)) <= 1

    @given(node_ids)
    def test_intervals_tile_the_ring_with_constant_preferences(self, ids):
        p = placement(ids)
        spans = list(intervals(p.boundaries()))
        assert spans[0][0] == 0 or min(s for s, _, _ in spans) == 0
        assert sum(end - start for start, end, _ in spans) == RING_SIZE
        for start, end, probe in spans:
            assert start < end
            want = p.preference(probe)
            for pos in {start, end - 1, (start + end) // 2}:
                assert p.preference(pos) == want

    def test_load_balance_with_default_tokens_across_8_nodes(self):
        ids = [f"127.0.0.1:{7000 + i}" for i in range(8)]
        p = Placement([Member(i) for i in ids], 3)
        held = {i: 0 for i in ids}
        for k in range(20_000):
            for node in p.for_key(f"key-{k}"):
                held[node] += 1
        mean = statistics.mean(held.values())
        assert max(held.values()) <= 1.3 * mean, held

    def test_join_moves_about_a_fair_share(self):
        keys, n = [f"key-{k}" for k in range(20_000)], 3
        ids = [f"127.0.0.1:{7000 + i}" for i in range(4)]
        before = Placement([Member(i) for i in ids], n)
        after = Placement([Member(i) for i in ids + ["127.0.0.1:7100"]], n)
        moved = sum(1 for k in keys if "127.0.0.1:7100" in after.for_key(k))
        assert moved <= 1.3 * len(keys) * n / 5
        assert all(set(after.for_key(k)) - set(before.for_key(k)) <= {"127.0.0.1:7100"}
                   for k in keys)


class TestRingView:
    def test_json_round_trip(self):
        view = RingView(3, (Member("127.0.0.1:1", NORMAL, 4), Member("127.0.0.1:2", JOINING, 8)))
        assert RingView.from_json(view.to_json()) == view

    @pytest.mark.parametrize("bad", [
        {}, {"epoch": -1, "members": []}, {"epoch": "1", "members": []},
        {"epoch": 1, "members": [{"id": "nope"}]},
        {"epoch": 1, "members": [{"id": "h:1", "state": "weird"}]},
        {"epoch": 1, "members": [{"id": "h:1"}, {"id": "h:1"}]},
        {"epoch": 1, "members": [], "params": {"n": 0}},
        {"epoch": 1, "members": [], "params": {"r": 4}},
        {"epoch": 1, "members": [{"id": "h:1", "tokens": float("inf")}]},
        {"epoch": 1, "members": [], "params": "not a map"},
    ])
    def test_malformed_rings_are_refused(self, bad):
        with pytest.raises(ConfigError):
            RingView.from_json(bad)

    def test_readers_and_writers_by_state(self):
        view = RingView(1, (Member("h:1"), Member("h:2", JOINING), Member("h:3", LEAVING)))
        assert view.readers.node_ids == ["h:1", "h:3"]
        assert view.future.node_ids == ["h:1", "h:2"]


def apply(plan, holdings, keys):
    """Simulate streaming: each transfer copies the keys its sources hold in its range."""
    for t in plan:
        for src in t.sources:
            holdings[t.target] |= {k for k in holdings[src] if t.start <= position(k) < t.end}


class TestMigrationPlan:
    keys = [f"k{i}" for i in range(300)]

    @settings(max_examples=60, deadline=None)
    @given(node_ids, st.integers(1024, 65535), st.integers(1, 4))
    def test_join_gives_every_new_replica_its_keys(self, ids, port, n):
        new = f"127.0.0.1:{port}"
        if new in ids:
            return
        before, after = placement(ids, n), placement(ids + [new], n)
        holdings = {i: set() for i in ids + [new]}
        for k in self.keys:
            for node in before.for_key(k):
                holdings[node].add(k)
        apply(plan_transfers(before, after), holdings, self.keys)
        for k in self.keys:
            assert all(k in holdings[node] for node in after.for_key(k))

    @settings(max_examples=60, deadline=None)
    @given(node_ids.filter(lambda ids: len(ids) >= 2), st.data(), st.integers(1, 4),
           st.booleans())
    def test_remove_keeps_every_key_on_its_new_replicas(self, ids, data, n, dead):
        gone = data.draw(st.sampled_from(ids))
        rest = [i for i in ids if i != gone]
        before, after = placement(ids, n), placement(rest, n)
        holdings = {i: set() for i in ids}
        for k in self.keys:
            for node in before.for_key(k):
                holdings[node].add(k)
        if dead:
            holdings[gone] = set()  # nothing can be read from a dead node
        apply(plan_transfers(before, after, {gone} if dead else ()), holdings, self.keys)
        for k in self.keys:
            if dead and set(before.for_key(k)) == {gone}:
                continue  # its only replica died: nothing to copy from
            assert all(k in holdings[node] for node in after.for_key(k))

    @given(node_ids, st.integers(1024, 65535))
    def test_drops_are_exactly_the_lost_ranges(self, ids, port):
        new = f"127.0.0.1:{port}"
        if new in ids:
            return
        before, after = placement(ids), placement(ids + [new])
        for drop in plan_drops(before, after):
            for pos in (drop.start, drop.end - 1):
                assert drop.target in before.preference(pos)
                assert drop.target not in after.preference(pos)


def test_public_names_match_all():
    import inspect
    exported = {name for name in dir(sdht) if not name.startswith("_")
                and not inspect.ismodule(getattr(sdht, name)) and name != "annotations"}
    assert set(sdht.__all__) == exported


@given(st.lists(st.sampled_from([f"10.0.0.{i}:7000" for i in range(8)]), min_size=1,
                max_size=8, unique=True),
       st.integers(1, 16), st.integers(1, 5),
       st.lists(st.integers(0, RING_SIZE - 1), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_preference_walks_are_remembered_exactly(ids, tokens, n, positions):
    """A placement remembers each token's walk: every answer, asked first or again, is the
    walk computed afresh (n distinct owners clockwise, a token at exactly pos owning it)."""
    placement = Placement([Member(i, NORMAL, tokens) for i in ids], n)

    def fresh(pos: int) -> list[str]:
        tokens_ = sorted((p, o) for p, o in zip(placement.positions, placement.owners))
        after = [o for p, o in tokens_ if p >= pos] + [o for p, o in tokens_ if p < pos]
        return list(dict.fromkeys(after))[:min(n, len(ids))]

    for pos in positions + positions:
        assert placement.preference(pos) == fresh(pos)
    placement.preference(positions[0]).append("mutated")   # a copy: the memory is untouched
    assert placement.preference(positions[0]) == fresh(positions[0])
