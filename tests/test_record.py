"""The record (DESIGN: "The record"): the order, the merge, work, time, the wire form and rent."""
from __future__ import annotations

import functools
import itertools
import math
import random

import msgpack
import pytest
from hypothesis import assume, given, settings, strategies as st

from sdht.errors import InvalidRecord, ValueTooLarge
from sdht.pow import mint
from sdht.kinds import common
from sdht.kinds.common import MAX_DEPTH, MAX_TIME_US, MAX_WORK, realised_work
from sdht.kinds.register import Record, accepts, beats, score, winner
from sdht.kinds import register
from sdht.params import DEFAULTS as DEFAULT_PARAMS
from sdht.wire import now_us, unpackb


def check_work(rec, min_work):
    common.check_work(rec.w, rec.digest, min_work)


def check_time(rec, max_skew, now=None):
    common.check_time(rec.t, max_skew, now)


def from_wire(obj, params=DEFAULT_PARAMS):
    return register.from_wire(obj, params)


def from_packed(data, params=DEFAULT_PARAMS):
    return register.from_packed(data, params)
from storage.store import Store
from sdht.wire import STORED

T0 = 1_700_000_000_000_000  # microseconds

# Few distinct works and times, so that equal scores (and the digest tie-break) occur often.
works = st.sampled_from([3.0, 4.0, 5.5, 20.0])
times = st.one_of(st.sampled_from([T0, T0 + 2_000_000, T0 + 4_000_000]),
                  st.integers(0, MAX_TIME_US))
decays = st.sampled_from([0.0, 0.0001, 0.5, 1.0])
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)


@st.composite
def versions(draw, key: str = "k") -> Record:
    """A version of ``key`` with arbitrary (not necessarily valid) work: the order ignores it."""
    deleted = draw(st.booleans())
    return Record(key, None if deleted else draw(values), draw(times), draw(works),
                  draw(st.binary(min_size=1, max_size=16)), deleted)


def order_key(rec: Record, decay: float) -> tuple[float, bytes]:
    """The order spelt out independently of :func:`beats`: higher score, then smaller digest."""
    return (-rec.score(decay), rec.digest)


def fold(records: list[Record], decay: float) -> Record | None:
    """Merge by the accept rule one record at a time, as a replica receiving them would."""
    held = None
    for rec in records:
        if beats(rec, held, decay):
            held = rec
    return held


class TestOrder:
    @given(versions(), versions(), decays)
    def test_total_and_antisymmetric(self, a, b, decay):
        assert not beats(a, a, decay)
        if a.digest == b.digest:
            assert not beats(a, b, decay) and not beats(b, a, decay)
        else:
            assert beats(a, b, decay) != beats(b, a, decay)
        assert beats(a, None, decay)

    @given(versions(), versions(), versions(), decays)
    def test_transitive(self, a, b, c, decay):
        if beats(a, b, decay) and beats(b, c, decay):
            assert beats(a, c, decay)

    @given(versions(), versions(), decays)
    def test_is_higher_score_then_smaller_digest(self, a, b, decay):
        if a.digest != b.digest:
            assert beats(a, b, decay) == (order_key(a, decay) < order_key(b, decay))

    @given(versions(), versions(), decays)
    def test_same_on_every_replica(self, a, b, decay):
        # Another replica only ever sees the packed bytes; its decoded copies must order alike,
        # whether the writer sent w as a float or as an int.
        a2, b2 = from_packed(a.pack()), from_packed(b.pack())
        assert (a2.digest, b2.digest) == (a.digest, b.digest)
        assert beats(a2, b2, decay) == beats(a, b, decay)
        assert beats(b2, a, decay) == beats(b, a, decay)
        wire = a.to_wire()
        if wire["w"] == int(wire["w"]):
            wire["w"] = int(wire["w"])
            assert from_packed(msgpack.packb(wire, use_bin_type=True)).digest == a.digest

    def test_sorting_does_not_depend_on_arrival(self):
        recs = [Record("k", i, T0 + (i % 3) * 2_000_000, 3.0 + (i % 2), bytes([i + 1]))
                for i in range(12)]
        by_beats = functools.cmp_to_key(
            lambda a, b: -1 if beats(a, b, 0.5) else (1 if beats(b, a, 0.5) else 0))
        expected = [r.digest for r in sorted(recs, key=by_beats)]
        assert len(set(r.score(0.5) for r in recs)) < len(recs)  # some scores tie
        for seed in range(5):
            shuffled = recs[:]
            random.Random(seed).shuffle(shuffled)
            assert [r.digest for r in sorted(shuffled, key=by_beats)] == expected

    def test_exact_score_tie_goes_to_smaller_digest(self):
        # decay 0.5: 3 + 0.5*2 s == 4 + 0.5*0 s exactly, so only the digest can decide.
        a = Record("k", "a", 2_000_000, 3.0, b"x")
        b = Record("k", "b", 0, 4.0, b"y")
        assert a.score(0.5) == b.score(0.5) == 4.0
        small, big = sorted([a, b], key=lambda r: r.digest)
        assert beats(small, big, 0.5) and not beats(big, small, 0.5)


class TestMerge:
    # No per-example deadline: these merge through LMDB or walk permutations, and a busy CI
    # machine must not turn that into a flaky failure.
    @settings(deadline=None)
    @given(st.lists(versions(), min_size=1, max_size=6), decays, st.randoms(use_true_random=False))
    def test_any_order_any_duplicates_same_winner(self, records, decay, rnd):
        best = min(records, key=lambda r: order_key(r, decay))
        for _ in range(5):
            shuffled = records + rnd.sample(records, rnd.randint(0, len(records)))
            rnd.shuffle(shuffled)
            assert winner(shuffled, decay) is not None
            assert winner(shuffled, decay).digest == best.digest
            assert fold(shuffled, decay).digest == best.digest
        assert winner(records + [None], decay).digest == best.digest
        assert winner([None], decay) is None and winner([], decay) is None

    @settings(deadline=None)
    @given(st.lists(versions(), min_size=1, max_size=4))
    def test_every_permutation(self, records):
        expected = winner(records, 0.0001)
        for perm in itertools.permutations(records):
            assert fold(list(perm), 0.0001).digest == expected.digest

    @settings(deadline=None)
    @given(data=st.data())
    def test_replicas_converge_whatever_the_arrival(self, data, replicas):
        # Two replicas receive the same versions in different orders and batchings, with
        # repeats (migration, repair and read repair all copy this way): both hold the winner.
        key = f"merge-{next(KEYS)}"
        records = data.draw(st.lists(versions(key), min_size=1, max_size=6))
        params = {**DEFAULT_PARAMS, "decay": data.draw(decays)}
        expected = winner(records, params["decay"])
        for replica in replicas:
            arrivals = data.draw(st.permutations(records + records[:2]))
            cut = data.draw(st.integers(0, len(arrivals)))
            replica.put_many(arrivals[:cut], params)
            for rec in arrivals[cut:]:
                replica.put_many([rec], params)
            assert from_packed(replica.get(key)).digest == expected.digest

    def test_store_reports_what_happened(self, replicas):
        merge_store = replicas[0]
        old = Record("report", 1, T0, 3.0, b"a")
        new = Record("report", 2, T0 + 1, 3.0, b"b")
        p = DEFAULT_PARAMS
        assert [r.status for r in merge_store.put_many([old], p)] == [STORED]
        assert [r.status for r in merge_store.put_many([old, new, old], p)] == [
            "same", STORED, "superseded"]
        assert merge_store.put_many([old], p)[0].held.digest == new.digest


KEYS = itertools.count()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two LMDB stores for the module (hypothesis examples use fresh keys, not fresh stores)."""
    stores = [Store(str(tmp_path_factory.mktemp("replica")), map_size=64 << 20, sync=False)
              for _ in range(2)]
    yield stores
    for store in stores:
        store.close()


class TestScore:
    @given(works, times, decays)
    def test_formula(self, w, t, decay):
        assert score(w, t, decay) == w + decay * (t / 1e6)
        assert Record("k", 1, t, w, b"n").score(decay) == score(w, t, decay)

    def test_equal_work_last_writer_wins(self):
        first = Record("k", "first", T0, 3.0, b"n")
        second = Record("k", "second", T0 + 1, 3.0, b"n")
        assert beats(second, first, 0.0001) and not beats(first, second, 0.0001)

    def test_equal_time_more_work_wins(self):
        low, high = Record("k", 1, T0, 3.0, b"n"), Record("k", 2, T0, 3.5, b"n")
        assert beats(high, low, 0.0001)

    @pytest.mark.parametrize("k", [0.5, 1.0, 3.0])
    @pytest.mark.parametrize("decay", [0.0001, 0.01])
    def test_extra_work_rents_the_key_for_k_over_decay_seconds(self, k, decay):
        params = {**DEFAULT_PARAMS, "decay": decay}
        min_work = params["min_work"]
        renter = mint("k", "renter", min_work + k, t=T0)
        hold_us = k / decay * 1e6
        for fraction, renter_holds in [(0.0, True), (0.5, True), (0.99, True),
                                       (1.01, False), (2.0, False)]:
            cheap = mint("k", "cheap", min_work, t=T0 + int(hold_us * fraction))
            # The node's clock is the cheap writer's, so the time check always passes here.
            assert accepts(cheap, renter, params, now=cheap.t) is not renter_holds, fraction


class TestWork:
    FIELDS = {"value": ("value", "tampered"), "t": ("t", T0 + 1), "w": ("w", 8.5),
              "deleted": ("deleted", True), "nonce": ("nonce", b"\x00" * 8),
              "key": ("key", "other")}

    @settings(max_examples=30, deadline=None)
    @given(st.sampled_from(sorted(FIELDS)), st.integers(0, 2**32))
    def test_tampered_record_fails(self, field, seed):
        rec = mint("k", "value", 8.0, t=T0 + seed)
        check_work(rec, 3.0)
        name, replacement = self.FIELDS[field]
        parts = {"key": rec.key, "value": rec.value, "t": rec.t, "w": rec.w,
                 "nonce": rec.nonce, "deleted": rec.deleted}
        parts[name] = replacement
        if name == "deleted":
            parts["value"] = None
        forged = Record(parts["key"], parts["value"], parts["t"], parts["w"], parts["nonce"],
                        parts["deleted"])
        # A forgery that happens to meet its work (chance e**-8) is a valid record, not a bug.
        assume(realised_work(forged.digest) < forged.w)
        with pytest.raises(InvalidRecord, match="does not show"):
            check_work(forged, 3.0)

    def test_declared_work_below_minimum_refused_even_if_realised(self):
        rec = mint("k", 1, 2.0)
        while realised_work(rec.digest) < 3.5:  # realises more than the minimum, declares less
            rec = mint("k", 1, 2.0)
        with pytest.raises(InvalidRecord, match="outside"):
            check_work(rec, 3.0)
        check_work(rec, 2.0)

    @pytest.mark.parametrize("w", [math.nan, math.inf, -math.inf, MAX_WORK + 0.01, -1.0])
    def test_impossible_work_refused(self, w):
        with pytest.raises(InvalidRecord):
            check_work(Record("k", 1, T0, w, b"n"), 0.0)

    def test_accepts_raises_on_invalid_and_declines_equal_or_lower(self):
        p = DEFAULT_PARAMS
        rec = mint("k", 1, 3.0)
        assert accepts(rec, None, p) is True
        assert accepts(rec, rec, p) is False
        assert accepts(rec, mint("k", 2, 3.0, t=rec.t + 1), p) is False
        with pytest.raises(InvalidRecord):
            accepts(Record("k", 1, rec.t, 50.0, rec.nonce), None, p)


class TestTime:
    def test_max_skew_boundary(self):
        now = T0
        skew = DEFAULT_PARAMS["max_skew"]
        check_time(Record("k", 1, now + int(skew * 1e6), 3.0, b"n"), skew, now)
        with pytest.raises(InvalidRecord, match="future"):
            check_time(Record("k", 1, now + int(skew * 1e6) + 1, 3.0, b"n"), skew, now)
        check_time(Record("k", 1, 0, 3.0, b"n"), skew, now)  # the past is never refused

    def test_accept_rule_refuses_future_record_by_the_nodes_clock(self):
        future = mint("k", 1, 3.0, t=now_us() + 60_000_000)
        with pytest.raises(InvalidRecord, match="future"):
            accepts(future, None, DEFAULT_PARAMS)


def wire(**changes) -> dict:
    base = {"x": 0, "k": "key", "v": [1, "two"], "t": T0, "w": 3.0, "n": b"nonce", "d": False}
    base.update(changes)
    return base


WRONG = {
    "k": [b"key", 1, None, "", ["k"], True],
    "t": [1.0, "1", -1, MAX_TIME_US + 1, True, None],
    "w": ["3", None, True, math.nan, math.inf, b"3"],
    "n": ["nonce", b"", b"x" * 65, 1, None, [1]],
    "d": [0, 1, None, "false", b""],
    "v": [{1.5: "float key"}, {(1, 2): 1}, set(), object(), complex(1, 2), 2**64,
          msgpack.Timestamp(1, 0),
          functools.reduce(lambda inner, _: [inner], range(MAX_DEPTH + 2), [])],  # too deep
}


class TestWire:
    @given(versions())
    def test_round_trip(self, rec):
        back = from_packed(rec.pack())
        assert back == rec
        assert (back.key, back.value, back.t, back.w, back.nonce, back.deleted) == (
            rec.key, rec.value, rec.t, rec.w, rec.nonce, rec.deleted)

    @given(st.sets(st.sampled_from("kvtwnd"), min_size=1))
    def test_missing_fields_refused(self, missing):
        obj = wire()
        for name in missing:
            del obj[name]
        with pytest.raises(InvalidRecord, match="fields"):
            from_wire(obj)

    @given(st.one_of(st.text(min_size=1, max_size=3), st.binary(max_size=3), st.integers(),
                     st.none()).filter(lambda k: k not in set("kvtwnd")), values)
    def test_extra_fields_refused(self, name, value):
        with pytest.raises(InvalidRecord, match="fields"):
            from_wire({**wire(), name: value})

    @pytest.mark.parametrize("field,bad", [(f, b) for f, bads in WRONG.items() for b in bads])
    def test_wrong_types_refused(self, field, bad):
        with pytest.raises(InvalidRecord):
            from_wire(wire(**{field: bad}))

    @given(values)
    def test_tombstone_must_have_nil_value(self, value):
        assume(value is not None)
        with pytest.raises(InvalidRecord, match="tombstone"):
            from_wire(wire(v=value, d=True))
        assert from_wire(wire(v=None, d=True)).deleted

    def test_not_a_map(self):
        for obj in ([1, 2], "k", None, 3):
            with pytest.raises(InvalidRecord, match="map"):
                from_wire(obj)

    @settings(max_examples=300)
    @given(value=st.one_of(st.binary(max_size=40), st.text(max_size=40),
                           st.lists(st.integers(-2**63, 2**64 - 1), max_size=12),
                           st.integers(-2**63, 2**64 - 1), st.none()),
           key=st.text(min_size=1, max_size=20), t=st.integers(0, MAX_TIME_US),
           limit=st.integers(0, 48))
    def test_value_limit_is_the_values_own_encoding(self, value, key, t, limit):
        """Admission checks the value's size from the canonical bytes it encodes anyway (the
        exact size only when they are long): it refuses exactly the values whose own
        encoding passes ``max_value_bytes``, whatever the key and time around them, and the
        digest is that of the canonical bytes."""
        assume(key.encode("utf-8", "surrogatepass") == key.encode("utf-8", "ignore"))
        params = {**DEFAULT_PARAMS, "max_value_bytes": limit}
        obj = wire(k=key, v=value, t=t)
        if len(msgpack.packb(value, use_bin_type=True)) > limit:
            with pytest.raises(ValueTooLarge):
                from_wire(obj, params)
        else:
            rec = from_wire(obj, params)
            assert rec.digest == register.digest_of(
                register.canonical(key, value, t, 3.0, False), b"nonce")

    def test_size_limits(self):
        params = {**DEFAULT_PARAMS, "max_key_bytes": 8, "max_value_bytes": 16}
        from_wire(wire(k="é" * 4, v="x" * 15), params)  # 8 UTF-8 bytes; 16 packed bytes
        with pytest.raises(ValueTooLarge):
            from_wire(wire(k="é" * 4 + "x"), params)
        with pytest.raises(ValueTooLarge):
            from_wire(wire(v="x" * 16), params)


class TestUnpack:
    @pytest.mark.parametrize("data", [
        b"", b"\x92\x01", b"\x81\xa1k", b"\xc1", b"\x01\x02",       # truncated, reserved, trailing
        b"\xd4\x05\x00", b"\xc7\x00\x05",                             # application extensions
        msgpack.packb(msgpack.Timestamp(1, 0)),                       # timestamp, ext -1
        msgpack.packb({"v": msgpack.Timestamp(1, 5)}),
        msgpack.packb([msgpack.Timestamp(2**40, 0)]),
        b"\xc7\x00\xff",
        b"\x81\x90\x01",                                              # unhashable map key
        b"\xa2\xff\xfe",                                              # invalid UTF-8 str
        b"\x91" * 5000,                                               # nesting bomb
        b"\xdd\xff\xff\xff\xff",                                      # array header, no items
    ])
    def test_refused(self, data):
        with pytest.raises(InvalidRecord):
            unpackb(data)

    @given(st.binary(max_size=64))
    def test_never_raises_anything_else(self, data):
        try:
            unpackb(data)
        except InvalidRecord:
            pass

    def test_str_and_bytes_stay_apart(self):
        assert unpackb(msgpack.packb(["s", b"b"], use_bin_type=True)) == ["s", b"b"]
