"""Causal contexts (sdht/session.py) and sessions (sdht/sessions.py).

The context's merge laws are property tests; sessions run against in-process nodes, with
replicas left behind by writing to one of them directly.
"""
from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings, strategies as st

from sdht import session as cs
from sdht.errors import CausalTimeout, InvalidContext
from sdht.pow import mint
from sdht.session import EMPTY, Context, Version, bound, decode, dumps, encode, loads, merge
from sdht.wire import CONTEXT_MAX_BYTES, CONTEXT_MAX_KEYS, now_us

from conftest import wait_for

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
        assert len(out) <= KEYS and size(out) <= BYTES and out.size == size(out)
        assert out.t == max(a.t, b.t)
        for key, v in out.keys.items():   # every version kept is the later one of the two
            for side in (a, b):
                if key in side.keys:
                    assert v.covers(side.keys[key])

    @given(st.text(max_size=30))
    def test_a_key_costs_its_json_length(self, key):
        assert cs.cost(key) == len(json.dumps(key)) + cs.ENTRY_OVERHEAD

    @given(contexts(), keys, versions)
    def test_observe_is_a_merge(self, a, key, v):
        one = cs.observe(a, key, v)
        assert one == merge(a, Context({key: v})) and one.size == size(one)

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


# -- sessions against in-process nodes ------------------------------------------------------------

def behind(ring, key: str, value) -> tuple:
    """Write ``value`` to one replica of ``key`` only: the others are left behind. Returns the
    record and the node holding it."""
    node = ring.preference(key)[-1]
    rec = mint(key, value, ring.params["min_work"])
    ring.transport.put_record(node, rec)
    return rec, node


class TestSession:
    def test_reads_its_writes_and_exports_the_context(self, inprocess_cluster):
        ring, _ = inprocess_cluster(3)
        with ring.session() as s:
            rec = s.set("a", {"x": [1, 2]})
            assert s.get("a") == {"x": [1, 2]}
            assert s.context.floor("a") == cs.version_of(rec, ring.params["decay"])
            s.delete("a")
            assert s.get("a", "gone") == "gone"
            exported = s.export_json()
        other = ring.session(exported, r=1)
        assert other.context == loads(exported) and other.get("a") is None

    def test_a_read_behind_asks_every_replica_and_repairs(self, inprocess_cluster):
        ring, _ = inprocess_cluster(3)
        ring.set("k", "old")
        rec, holder = behind(ring, "k", "new")
        s = ring.session(r=1)
        s.merge(Context({"k": cs.version_of(rec, ring.params["decay"])}))
        assert ring.session().get("k") in ("old", "new")   # no context: either
        for _ in range(5):
            assert s.get("k") == "new"
        assert ring.get("k") == "new"

        def repaired() -> bool:
            return all(ring.transport.get_record(n, "k", ring.params)[0] == rec
                       for n in ring.preference("k"))
        wait_for(repaired, 5.0, "read repair of the replicas behind")

    def test_a_version_no_replica_has_times_out(self, inprocess_cluster):
        ring, _ = inprocess_cluster(3)
        ring.set("k", "old")
        ghost = mint("k", "never stored", ring.params["min_work"])
        s = ring.session(wait=0.3)
        s.merge(Context({"k": cs.version_of(ghost, ring.params["decay"])}))
        started = time.monotonic()
        with pytest.raises(CausalTimeout):
            s.get("k", r=1)
        assert 0.3 <= time.monotonic() - started < 2.0
        assert s.context.floor("k") == cs.version_of(ghost, ring.params["decay"])

    def test_writes_are_ordered_even_without_decay(self, inprocess_cluster):
        ring, _ = inprocess_cluster(3, params={"decay": 0.0})
        s = ring.session()
        for i in range(20):   # equal scores would leave it to the digests: half would lose
            s.set("k", i)
            assert ring.get("k") == i

    def test_writes_follow_a_rented_read(self, inprocess_cluster):
        ring, _ = inprocess_cluster(3)
        ring.set("k", "rented", work=6.0)
        s = ring.session()
        assert s.get("k") == "rented"
        s.set("k", "mine")
        assert ring.get("k") == "mine"

    def test_writes_follow_a_version_no_replica_holds(self, inprocess_cluster):
        # The session has seen a version (a later time, more work) that has not reached the
        # replicas: its write must still be ordered after it.
        ring, _ = inprocess_cluster(3)
        ahead = mint("k", "seen elsewhere", 5.0, t=now_us() + 500_000)
        s = ring.session(Context({"k": cs.version_of(ahead, ring.params["decay"])}))
        rec = s.set("k", "mine")
        assert rec.t > ahead.t and rec.score(ring.params["decay"]) > \
            ahead.score(ring.params["decay"])
        ring.transport.put_record(ring.preference("k")[0], ahead)
        assert ring.get("k") == "mine"

    def test_two_clients_share_one_session(self, inprocess_cluster):
        ring, apps = inprocess_cluster(3)
        import sdht
        from sdht.inprocess import WSGITransport
        with sdht.Ring(list(apps)[:1], transport=WSGITransport(apps)) as second:
            a = ring.session()
            a.set("shared", 1)
            b = second.session(a.export())
            assert b.get("shared", r=1) == 1
            b.set("shared", 2)
            a.merge(b.export())
            assert a.get("shared", r=1) == 2
