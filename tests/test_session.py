"""Causal contexts (sdht/session.py): the merge laws are property tests."""
from __future__ import annotations

import json
import pytest
from hypothesis import given, settings, strategies as st

from sdht import session as cs
from sdht.errors import InvalidContext
from sdht.session import EMPTY, Context, Version, bound, decode, dumps, encode, loads, merge
from sdht.wire import CONTEXT_MAX_BYTES, CONTEXT_MAX_KEYS, now_us

# Small bounds, so that the properties exercise dropping.
KEYS, BYTES = 5, 700
DIGESTS = ["0" * 32, "1" * 32, "8" * 32, "f" * 32, "0123456789abcdef" * 2]

versions = st.builds(Version, st.sampled_from([0.0, 3.0, 3.5, 1e9, 12.25]),
                     st.integers(0, 2**53), st.sampled_from(DIGESTS))
keys = st.text(alphabet="abcé\"\\/ ", min_size=1, max_size=60)


@st.composite
def contexts(draw) -> Context:
    return bound(draw(st.dictionaries(keys, versions, max_size=12)),
                 draw(st.integers(0, 2**53)), KEYS, BYTES)


def m(a: Context, b: Context) -> Context:
    return merge(a, b, KEYS, BYTES)


def size(ctx: Context) -> int:
    return sum(cs.cost(k) for k in ctx.keys)


class TestMergeLaws:
    @given(contexts(), contexts())
    def test_commutative(self, a, b):
        assert m(a, b) == m(b, a)

    @given(contexts(), contexts(), contexts())
    def test_associative(self, a, b, c):
        assert m(m(a, b), c) == m(a, m(b, c))

    @given(contexts())
    def test_idempotent_and_empty_is_neutral(self, a):
        assert m(a, a) == a
        assert m(a, EMPTY) == a

    @given(contexts(), contexts())
    def test_bounded_and_never_older(self, a, b):
        out = m(a, b)
        assert len(out) <= KEYS and size(out) <= BYTES
        assert out.t == max(a.t, b.t)
        for key, v in out.keys.items():   # every version kept is the later one of the two
            for side in (a, b):
                if key in side.keys:
                    assert v.covers(side.keys[key])

    @given(contexts())
    def test_json_round_trip(self, a):
        assert decode(json.loads(json.dumps(encode(a))), KEYS, BYTES) == a
        assert loads(dumps(a)) == a

    def test_past_the_bound_the_oldest_go_and_t_stays(self):
        full = {f"k{i:04d}": Version(3.0 + i, 10 + i, "0" * 32) for i in range(1500)}
        ctx = bound(full)
        assert len(ctx) == CONTEXT_MAX_KEYS and ctx.t == 10 + 1499
        assert min(v.score for v in ctx.keys.values()) == 3.0 + 500   # the oldest dropped
        wide = bound({"k" * 900 + str(i): Version(1.0, i, "0" * 32) for i in range(200)})
        assert size(wide) <= CONTEXT_MAX_BYTES < size(wide) + cs.cost("k" * 903)
        assert len(dumps(wide)) <= CONTEXT_MAX_BYTES + 64


class TestDecode:
    @pytest.mark.parametrize("obj", [None, "", {}])
    def test_empty_forms(self, obj):
        assert decode(obj) == EMPTY

    @pytest.mark.parametrize("obj", [
        [], "x", 5, {"v": 1}, {"v": 2, "t": 0, "keys": {}}, {"v": True, "t": 0, "keys": {}},
        {"v": 1, "t": -1, "keys": {}}, {"v": 1, "t": 1.5, "keys": {}},
        {"v": 1, "t": 2**63, "keys": {}}, {"v": 1, "t": 0, "keys": []},
        {"v": 1, "t": 0, "keys": {"k": [1.0, 1]}},
        {"v": 1, "t": 0, "keys": {"k": ["1", 1, "0" * 32]}},
        {"v": 1, "t": 0, "keys": {"k": [float("nan"), 1, "0" * 32]}},
        {"v": 1, "t": 0, "keys": {"k": [1.0, 1, "0" * 31]}},
        {"v": 1, "t": 0, "keys": {"k": [1.0, 1, "G" * 32]}},
        {"v": 1, "t": 0, "keys": {"": [1.0, 1, "0" * 32]}},
        {"v": 1, "t": 0, "keys": {"\ud800": [1.0, 1, "0" * 32]}},
        {"v": 1, "t": 0, "keys": {"k": [1.0, 1, "0" * 32]}, "x": 1},
        {"v": 1, "t": 0, "keys": {str(i): [1.0, 1, "0" * 32] for i in range(1001)}},
    ])
    def test_hostile_forms_are_refused(self, obj):
        with pytest.raises(InvalidContext):
            decode(obj)

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                        max_leaves=20))
    @settings(max_examples=300)
    def test_anything_else_is_invalid_context_or_a_context(self, obj):
        try:
            assert isinstance(decode(obj), Context)
        except InvalidContext:
            pass

    def test_text_that_is_not_json(self):
        for text in ("{", "[" * 100000, b"\xff"):
            with pytest.raises(InvalidContext):
                loads(text)

    def test_times_as_doubles_are_kept(self):
        # A client that re-encodes numbers as doubles (Go, JavaScript) sends them back so.
        ctx = decode({"v": 1, "t": 1.7e15, "keys": {"k": [3, 1.7e15, "0" * 32]}})
        assert ctx.t == 1_700_000_000_000_000 and ctx.keys["k"].score == 3.0

    def test_implausible_versions_are_refused(self):
        p = {"max_skew": 2.0, "max_work": 12.0, "decay": 0.0001}
        now = now_us()
        cs.check_plausible(Context({"k": Version(3.0 + 0.0001 * now / 1e6, now, "0" * 32)}),
                           p, now)
        with pytest.raises(InvalidContext):
            cs.check_plausible(Context({}, now + 10 * 10**6), p, now)
        with pytest.raises(InvalidContext):
            cs.check_plausible(Context({"k": Version(1e9, now, "0" * 32)}), p, now)
