"""A key's replica sets during a change, and the write rules over them (sdht/replicas.py)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sdht.replicas import replica_sets, union, write_plan, write_shortfall
from sdht.ring import JOINING, LEAVING, NORMAL, Member, RingView

NODES = [f"127.0.0.1:{port}" for port in range(9000, 9008)]
node_sets = st.lists(st.lists(st.sampled_from(NODES), min_size=1, max_size=5, unique=True),
                     min_size=1, max_size=2)


@given(node_sets, st.sets(st.sampled_from(NODES)))
def test_a_write_goes_to_every_node_once_with_suspects_held_back(sets, suspects):
    first, spare = write_plan(sets, suspects.__contains__)
    everyone = [n for s in sets for n in s]
    assert sorted(first + spare) == sorted(set(everyone))          # each node once, none left
    assert set(spare) == suspects & set(everyone)                  # suspects only as spares
    assert first == [n for n in union(sets) if n not in suspects]  # in placement order
    assert union(sets)[:len(sets[0])] == sets[0]                   # current placement first


@given(node_sets, st.sets(st.sampled_from(NODES)), st.integers(1, 5))
def test_a_write_is_acknowledged_only_by_w_of_every_set(sets, acked, w):
    short = write_shortfall(sets, acked, w)
    counts = [(len(set(s) & acked), min(w, len(s))) for s in sets]
    if short is None:
        assert all(got >= need for got, need in counts)
    else:
        assert short == next((got, need) for got, need in counts if got < need)


def test_a_staged_join_adds_the_future_placement_and_a_settled_ring_has_one():
    settled = RingView(1, tuple(Member(n, NORMAL, 8) for n in NODES[:3]))
    joining = settled.with_member(Member(NODES[3], JOINING, 8))
    leaving = RingView(2, (*settled.members[:2], Member(NODES[2], LEAVING, 8)))
    moved = 0
    for i in range(200):
        key = f"key-{i}"
        assert replica_sets(settled, key) == [settled.readers.for_key(key)]
        for view in (joining, leaving):
            now, later = view.readers.for_key(key), view.future.for_key(key)
            sets = replica_sets(view, key)
            assert sets == ([now] if set(now) == set(later) else [now, later])
            moved += len(sets) == 2
    assert moved > 0   # the change moves some keys: both placements are written for them
