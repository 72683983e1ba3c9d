"""What the library and the nodes agree on (sdht/wire.py)."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, strategies as st

from sdht.errors import InvalidRecord
from sdht.wire import (DEPTH, FANOUT, MAX_TREE_RANGES, RING_SIZE, decode_ranges, encode_ranges,
                       is_tree_node, node_range, packed_array, packb, tombstone_cutoff,
                       unpackb)

positions = st.integers(0, RING_SIZE - 1)


@st.composite
def ranges(draw):
    start = draw(positions)
    return start, draw(st.integers(start + 1, RING_SIZE))


@given(st.lists(ranges(), max_size=20))
def test_ranges_survive_the_wire(items):
    wire = unpackb(packb(encode_ranges(items)))
    assert decode_ranges(wire) == sorted(items)


@pytest.mark.parametrize("bad", [[[1, 0]], [[0, RING_SIZE]], [[-1, 5]], [[0, 1, 2]], [["0", 1]],
                                 "0-1", [[0, 1]] * (MAX_TREE_RANGES + 1)])
def test_malformed_ranges_are_refused(bad):
    with pytest.raises(InvalidRecord):
        decode_ranges(bad)


def test_tree_nodes_tile_the_ring_at_every_level():
    for level in range(DEPTH + 1):
        last = FANOUT ** level - 1
        assert node_range(level, 0)[0] == 0 and node_range(level, last)[1] == RING_SIZE
        assert is_tree_node(level, last) and not is_tree_node(level, last + 1)
    assert not is_tree_node(DEPTH + 1, 0) and not is_tree_node(True, 0)


def test_packed_array_is_an_array_of_the_items():
    items = [packb({"a": 1}), None, packb("x")]
    assert unpackb(packed_array(items)) == [{"a": 1}, None, "x"]


def test_tombstone_cutoff_is_the_grace_before_now():
    assert tombstone_cutoff({"tombstone_grace": 2.5}, now=10_000_000) == 7_500_000


def test_decoding_pauses_the_collector_and_restores_it():
    import gc
    import threading
    body = packb([[[]] * 10] * 20_000)
    seen = []

    def decode() -> None:
        seen.append(unpackb(body) is not None)

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert seen == [True] * 4 and gc.isenabled()
    gc.disable()
    try:
        unpackb(body)
        assert not gc.isenabled()   # a program that turned it off keeps it off
    finally:
        gc.enable()


@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
                    | st.text(max_size=20) | st.binary(max_size=20),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=5), kids, max_size=4), max_leaves=20))
def test_packb_is_msgpacks_encoding_even_after_a_failed_pack(obj):
    """The per-thread packer encodes as ``msgpack.packb(use_bin_type=True)`` does, also right
    after an object it cannot encode: a failed pack leaves nothing behind in its buffer."""
    with pytest.raises((TypeError, ValueError)):
        packb([obj, object()])
    assert packb(obj) == msgpack.packb(obj, use_bin_type=True)
