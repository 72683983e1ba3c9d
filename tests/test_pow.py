"""Minting: the nonce search finds the proofs a brute force finds, in one or more processes."""
from __future__ import annotations

import hashlib
import importlib.util
import math
import shutil
import sys

import pytest
from hypothesis import given, settings, strategies as st

import sdht.pow as pow_
from sdht.errors import InvalidRecord, SDHTError
from sdht.pow import SMALL_WORK_TRIES, find_nonce, mint, nonce_bytes, target_bytes
from sdht.kinds.common import check_work as _gate, realised_work
from sdht.kinds.register import DIGEST_PERSON, canonical
from conftest import ROOT

PREFIX = canonical("key", {"a": [1, 2]}, 1_700_000_000_000_000, 2.0, False)
UNREACHABLE = 200.0


def valid_counters(prefix: bytes, w: float, start: int, count: int) -> list[int]:
    """Brute force: the counters in ``[start, start + count)`` (mod 2**64) that show ``w``."""
    target = int.from_bytes(target_bytes(w), "big")
    found = []
    for i in range(count):
        counter = (start + i) % 2**64
        digest = hashlib.blake2b(prefix + nonce_bytes(counter), digest_size=32,
                                 person=DIGEST_PERSON).digest()
        if int.from_bytes(digest, "big") < target:
            found.append(counter)
    return found


class TestFindNonce:
    # w=2 (one counter in 7.4 qualifies) takes the plain loop for small work; w=4.5 (one in
    # 90) the block search. Ranges both with and without a proof occur, and ranges crossing
    # 256-counter blocks and the 2**64 wrap are covered.
    @pytest.mark.parametrize("w", [2.0, 4.5])
    @settings(max_examples=60, deadline=None)
    @given(start=st.one_of(st.integers(0, 2**16), st.integers(2**64 - 600, 2**64 - 1),
                           st.integers(0, 2**64 - 1)),
           count=st.integers(0, 700))
    def test_agrees_with_brute_force_across_blocks_and_wraparound(self, w, start, count):
        assert (math.exp(w) <= SMALL_WORK_TRIES) == (w == 2.0)   # one case per search path
        expected = valid_counters(PREFIX, w, start, count)
        found = find_nonce(PREFIX, w, start=start, limit=count)
        if not expected:
            assert found is None
        else:
            assert found is not None
            nonce, digest = found
            assert int.from_bytes(nonce, "big") in expected
            assert digest == hashlib.blake2b(PREFIX + nonce, digest_size=32,
                                             person=DIGEST_PERSON).digest()

    def test_limit_zero_and_unreachable_work_find_nothing(self):
        assert find_nonce(PREFIX, 0.0, start=5, limit=0) is None
        assert find_nonce(PREFIX, UNREACHABLE, start=5, limit=3000) is None

    def test_zero_work_takes_the_first_nonce(self):
        nonce, _ = find_nonce(PREFIX, 0.0, start=77)
        assert nonce == nonce_bytes(77)
        assert target_bytes(0.0) is None and target_bytes(-1.0) is None
        assert target_bytes(1.0) is not None

    def test_same_start_same_answer(self):
        assert find_nonce(PREFIX, 6.0, start=1000) == find_nonce(PREFIX, 6.0, start=1000)


class TestMint:
    @pytest.mark.parametrize("w", [0.0, 0.5, 3.0, 7.5, 10.0])
    def test_minted_record_shows_its_work(self, w):
        rec = mint("k", ["v", 1], w)
        _gate(rec.w, rec.digest, 0.0)
        assert realised_work(rec.digest) >= w
        assert rec.w == w and len(rec.nonce) == 8

    def test_tombstone_and_explicit_time(self):
        rec = mint("k", None, 3.0, t=123, deleted=True)
        assert (rec.t, rec.deleted, rec.value) == (123, True, None)
        _gate(rec.w, rec.digest, 3.0)
        with pytest.raises(InvalidRecord):
            _gate(rec.w, rec.digest, 3.5)  # declares 3, whatever it happens to realise


class TestParallel:
    """``processes=2`` searches disjoint ranges in child processes (no fork of this process).

    ``fallback=False`` throughout: otherwise an unbounded search whose children all fail is
    done again in this process, and these tests would pass with the children broken.
    """

    @pytest.fixture(autouse=True)
    def always_parallel(self, monkeypatch):
        # The threshold keeps cheap work in-process; lower it so small work exercises children.
        monkeypatch.setattr(pow_, "PARALLEL_MIN_TRIES", 0)

    def test_parallel_mint_is_valid(self):
        rec = mint("rented", {"x": 1}, 9.0, processes=2, fallback=False)
        _gate(rec.w, rec.digest, 9.0)

    def test_parallel_search_covers_exactly_the_range(self):
        start, count = 2**64 - 300, 900  # the two children's ranges straddle the wrap
        expected = valid_counters(PREFIX, 2.0, start, count)
        nonce, _ = find_nonce(PREFIX, 2.0, start=start, limit=count, processes=2,
                              fallback=False)
        assert int.from_bytes(nonce, "big") in expected
        assert find_nonce(PREFIX, UNREACHABLE, start=start, limit=count, processes=2,
                          fallback=False) is None

    def test_failed_children_raise_without_fallback_and_are_covered_with_it(self, monkeypatch):
        monkeypatch.setattr(sys, "executable", shutil.which("false"))  # children exit 1, mute
        with pytest.raises(SDHTError, match="search process failed"):
            find_nonce(PREFIX, 2.0, start=0, processes=2, fallback=False)
        assert find_nonce(PREFIX, 2.0, start=0, processes=2) == find_nonce(PREFIX, 2.0, start=0)

    def test_a_childs_answer_is_checked_not_trusted(self):
        assert pow_._parse_child(b"00000000000000ff " + b"00" * 32 + b"\n", PREFIX, 60.0) is None
        assert pow_._parse_child(b"-\n", PREFIX, 1.0) is None
        assert pow_._parse_child(b"", PREFIX, 1.0) is None


class TestBench:
    def test_bench_runs_with_tiny_sizes(self, capsys):
        spec = importlib.util.spec_from_file_location("bench_pow", ROOT / "bench" / "bench_pow.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        result = bench.main(["--tries", "300", "--repeats", "1", "--parallel-tries", "0"])
        out = capsys.readouterr().out
        assert "python" in out and "mint / raw copy" in out
        for name in ("raw_fresh", "raw_copy", "mint", "ratio_fresh", "ratio_copy"):
            assert result[name] > 0
