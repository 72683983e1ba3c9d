"""The node's batch write (storage/store.py ``put_many``, storage/tree.py ``update_many``) gives
what the straightforward rule gives: merge the entries one by one in the order they came, each
by its kind's ``supersedes``, and hash every stored entry into its leaf and the leaf's ancestors
(issue 16: the batch path merges in key order and folds the tree a level at a time)."""
from __future__ import annotations

import tempfile
from typing import Iterable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sdht.kinds import register
from sdht.kinds.register import Record
from sdht.params import DEFAULTS as PARAMS
from sdht.wire import SAME, STORED, SUPERSEDED
from storage.layout import entry_key, held_of, stored
from storage.store import Store
from storage import tree as tree_module
from storage.tree import HASH_BYTES, Tree, contribution, path

T0 = 1_700_000_000_000_000  # microseconds

# A small pool of keys, times, work and values, so batches hold duplicates, the same key at
# older and newer versions, exact repeats and tombstones.
records = st.builds(
    lambda key, dt, rent, value, deleted, nonce: Record(
        key, None if deleted else value, T0 + dt, PARAMS["min_work"] + rent,
        bytes([nonce]), deleted),
    st.sampled_from(["a", "b", "c", "ключ", "k" * 40]),
    st.sampled_from([0, 1, 10**6, 10**9]),
    st.sampled_from([0.0, 0.5, 2.0]),
    st.one_of(st.integers(0, 3), st.binary(max_size=8)),
    st.booleans(),
    st.integers(0, 2))
batches = st.lists(records, max_size=30)


def reference(held: dict[bytes, Record], batch: list[Record]) -> list[tuple[str, object]]:
    """The rule, one entry at a time in batch order, over ``held`` (updated in place): the
    status and the held version's header each write reports."""
    out = []
    for rec in batch:
        lkey = entry_key(rec)
        old = held.get(lkey)
        old_held = held_of(lkey, stored(old)) if old is not None else None
        if old is not None and old.digest == rec.digest:
            out.append((SAME, old_held))
        elif register.supersedes(rec, old_held, PARAMS):
            held[lkey] = rec
            out.append((STORED, held_of(lkey, stored(rec))))
        else:
            out.append((SUPERSEDED, old_held))
    return out


def reference_tree(changes: Iterable[tuple[bytes, bytes | None, bytes | None]]
                   ) -> dict[bytes, bytes]:
    """Every non-empty tree node's hash, from scratch, after ``(lmdb key, old digest, new
    digest)`` changes to an empty tree: the XOR of their shares along each key's path."""
    nodes: dict[bytes, int] = {}
    for lkey, old, new in changes:
        share = (int.from_bytes(contribution(lkey, old), "big")
                 ^ int.from_bytes(contribution(lkey, new), "big"))
        for tkey in path(lkey):
            nodes[tkey] = nodes.get(tkey, 0) ^ share
    return {k: v.to_bytes(HASH_BYTES, "big") for k, v in nodes.items() if v}


def held_changes(held: dict[bytes, Record]) -> list[tuple[bytes, None, bytes]]:
    """The changes that write ``held`` into an empty tree."""
    return [(lkey, None, rec.digest) for lkey, rec in held.items()]


def dump(store: Store, db) -> dict[bytes, bytes]:
    with store.env.begin(db=db) as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


def nodes(store: Store) -> dict[bytes, bytes]:
    """The tree's nodes as a read finds them: a read folds the log first, and leaves none."""
    store.tree_hashes([(0, 0)])
    found = dump(store, store.tree.db)
    assert all(len(key) == 3 for key in found), "the log was not folded"
    return found


@pytest.fixture(scope="module")
def stores():
    """A fresh store per example would cost a directory each: one store, emptied between."""
    with tempfile.TemporaryDirectory() as path:
        store = Store(path, sync=False)
        yield store
        store.close()


def emptied(store: Store) -> Store:
    with store.env.begin(write=True) as txn:
        for db in (store.data, store.meta, store.tree.db):
            txn.drop(db, delete=False)
    return store


class TestPutMany:
    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(earlier=batches, batch=batches)
    def test_same_as_one_by_one_in_order(self, stores, earlier, batch):
        """Results (in batch order), stored bytes, counters and every tree node equal the
        rule applied one entry at a time, after an earlier batch left older or newer
        versions."""
        store, held, accepted = emptied(stores), {}, 0
        for part in (earlier, batch):
            expected = reference(held, part)
            got = [(r.status, r.held) for r in store.put_many(part, PARAMS)]
            assert got == expected
            accepted += sum(status == STORED for status, _ in expected)
        assert dump(store, store.data) == {k: stored(r) for k, r in held.items()}
        assert nodes(store) == reference_tree(held_changes(held))
        stats = store.stats()
        assert stats["bytes"] == sum(len(k) + len(stored(r)) for k, r in held.items())
        assert stats["revision"] == accepted

    def test_results_keep_batch_order_with_a_key_twice(self, stores):
        """A batch's second version of a key meets what its first left, whatever the sort."""
        store = emptied(stores)
        old = Record("z", 1, T0, PARAMS["min_work"], b"\x01")
        new = Record("z", 2, T0 + 10**6, PARAMS["min_work"], b"\x01")
        other = Record("a", 3, T0, PARAMS["min_work"], b"\x01")
        statuses = [r.status for r in store.put_many([new, other, old, new], PARAMS)]
        assert statuses == [STORED, STORED, SUPERSEDED, SAME]
        assert store.get("z") == new.pack()


class TestTreeBatch:
    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3), st.integers(0, 3)),
                        max_size=60))
    def test_batch_equals_one_change_at_a_time(self, stores, ops):
        """``update_many`` leaves every node as ``update`` one by one does, including changes
        that cancel (a key written then put back, a leaf emptied): nodes XOR-ed to zero are
        deleted, never stored as zero."""
        store = emptied(stores)
        keys = [entry_key(Record(f"key{i}", 0, T0, 1.0, b"n")) for i in range(41)]
        digests = [None, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]
        changes = [(keys[k], digests[a], digests[b]) for k, a, b in ops]
        with store.env.begin(write=True) as txn:
            store.tree.update_many(txn, changes)
        batched = dump(store, store.tree.db)
        emptied(store)
        with store.env.begin(write=True) as txn:
            for lkey, old, new in changes:
                store.tree.update(txn, lkey, old, new)
        assert batched == dump(store, store.tree.db)
        assert batched == reference_tree(changes)
        assert all(value != bytes(HASH_BYTES) for value in batched.values())


def test_tree_runs_over_any_transaction_with_get_put_delete():
    """bench/simnet.py keeps trees in dicts: the tree needs only get, put and delete."""
    table: dict[bytes, bytes] = {}

    class DictTxn:
        def get(self, key, db=None):
            return table.get(key)

        def put(self, key, value, db=None):
            table[key] = value

        def delete(self, key, db=None):
            table.pop(key, None)

    lkey = entry_key(Record("k", 0, T0, 1.0, b"n"))
    Tree(None).update_many(DictTxn(), [(lkey, None, b"\x05" * 32)])
    assert len(table) == 5
    Tree(None).update_many(DictTxn(), [(lkey, b"\x05" * 32, None)])
    assert table == {}


class TestTreeLog:
    @settings(max_examples=100, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(batches=st.lists(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3),
                                               st.integers(0, 3)), max_size=12), max_size=8),
           limit=st.integers(1, 20), now=st.sets(st.integers(0, 7)))
    def test_logged_then_folded_equals_applied(self, stores, batches, limit, now):
        """Writes log their changes (folded whenever the log passes ``MAX_PENDING``), some
        are applied at once (as an upgrade does): after a fold the nodes are those of every
        change applied one by one."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tree_module, "MAX_PENDING", limit)
            self.write(emptied(stores), batches, now)

    @staticmethod
    def write(store, batches, now):
        keys = [entry_key(Record(f"key{i}", 0, T0, 1.0, b"n")) for i in range(41)]
        digests = [None, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]
        written = []
        for number, batch in enumerate(batches):
            changes = [(keys[k], digests[a], digests[b]) for k, a, b in batch]
            with store.env.begin(write=True) as txn:
                if number in now:
                    store.tree.update_many(txn, changes)
                else:
                    store.tree.log(txn, changes)
            written += changes
        assert nodes(store) == reference_tree(written)

    def test_a_full_log_is_folded_by_the_write_that_fills_it(self, stores, monkeypatch):
        monkeypatch.setattr(tree_module, "MAX_PENDING", 5)
        store = emptied(stores)
        batch = [Record(f"k{i}", i, T0, PARAMS["min_work"], b"\x01") for i in range(6)]
        store.put_many(batch[:4], PARAMS)
        with store.env.begin() as txn:
            assert store.tree.pending(txn)
        store.put_many(batch[4:], PARAMS)
        with store.env.begin() as txn:
            assert not store.tree.pending(txn)
        assert nodes(store) == reference_tree(held_changes({entry_key(r): r for r in batch}))



def test_a_layout_3_store_opens_as_4_and_keeps_its_tree(tmp_path):
    """Layout 4 is layout 3 plus the tree's log: a layout-3 store is taken as it is (and an
    older node, which would not read the log, refuses the store afterwards)."""
    recs = [Record(f"k{i}", i, T0, PARAMS["min_work"], b"\x01") for i in range(20)]
    store = Store(str(tmp_path), sync=False)
    store.put_many(recs, PARAMS)
    root = store.tree_hashes([(0, 0)])
    with store.env.begin(write=True) as txn:
        txn.put(b"format", b"3", db=store.meta)
    store.close()
    store = Store(str(tmp_path), sync=False)
    try:
        with store.env.begin(db=store.meta) as txn:
            assert txn.get(b"format") == b"4"
        assert store.tree_hashes([(0, 0)]) == root
        assert nodes(store) == reference_tree(held_changes({entry_key(r): r for r in recs}))
    finally:
        store.close()


def test_the_store_reads_without_read_around_and_writes_without_the_map(tmp_path):
    """Keys sit at hashed positions, so the kernel's read-around of a page fault brings in
    pages no one asked for (issue 16: ~380 KiB per cold get instead of ~7 KiB), and writes
    through the map would dirty whole large folios: the store opens with neither."""
    store = Store(str(tmp_path / "s"))
    try:
        flags = store.env.flags()
        assert flags["readahead"] is False
        assert flags["writemap"] is False
        assert flags["sync"] and flags["metasync"]   # an acknowledged write stays fsynced
    finally:
        store.close()
