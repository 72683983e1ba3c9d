"""The node's on-disk layout (storage/layout.py): entries keyed by kind, and the upgrade of a
store written by sdht 0.1 (layout 2) in place, with nothing lost."""
from __future__ import annotations

import struct

import lmdb
import pytest

from sdht.errors import ConfigError
from sdht.kinds import register
from sdht.params import DEFAULTS
from sdht.pow import mint
from sdht.ring import position
from sdht.wire import RING_SIZE, packb
from storage.app import create_app
from storage.layout import FORMAT, data_key, is_data_key
from storage.store import Store
from storage.tree import ZERO, contribution, xor


def write_layout_2(path: str, records: list[register.Record]) -> None:
    """A store as sdht 0.1 wrote it: ``position || key`` -> ``t, w, digest, deleted || record``
    (the record without a kind field), format 2, and its hash tree."""
    env = lmdb.open(path, max_dbs=4, map_size=64 << 20)
    data, meta = env.open_db(b"data"), env.open_db(b"meta")
    env.open_db(b"tree")
    with env.begin(write=True) as txn:
        for rec in records:
            raw = rec.key.encode()
            old = {"k": rec.key, "v": rec.value, "t": rec.t, "w": rec.w, "n": rec.nonce,
                   "d": rec.deleted}
            txn.put(struct.pack(">Q", position(raw)) + raw,
                    struct.pack(">qd32s?", rec.t, rec.w, rec.digest, rec.deleted) + packb(old),
                    db=data)
        txn.put(b"format", b"2", db=meta)
    env.close()


def rebuilt_root(store: Store) -> bytes:
    h = ZERO
    with store.env.begin(db=store.data) as txn:
        for lkey, raw in txn.cursor():
            h = xor(h, contribution(bytes(lkey), bytes(raw[:32])))
    return h


def test_a_layout_2_store_is_upgraded_in_place_with_nothing_lost(tmp_path):
    records = [mint(f"k{i}", {"i": i}, 3.0) for i in range(50)]
    records.append(mint("gone", None, 3.0, deleted=True))
    write_layout_2(str(tmp_path), records)
    store = Store(str(tmp_path))
    try:
        for rec in records:
            got = register.from_packed(store.get(rec.key), DEFAULTS)
            assert (got.digest, got.value, got.deleted) == (rec.digest, rec.value, rec.deleted)
        assert store.stats()["records"] == len(records)
        assert store.tree_hashes([(0, 0)])[0] == rebuilt_root(store) != ZERO
        with store.env.begin(db=store.meta) as txn:
            assert txn.get(b"format") == FORMAT
    finally:
        store.close()
    # A node opens the upgraded store as any other, and serves the records.
    client = create_app({"DATA_DIR": str(tmp_path), "NODE_ID": "127.0.0.1:1"}).test_client()
    assert client.get("/v1/record?key=k7").status_code == 200


def test_an_unknown_layout_is_refused_and_left_alone(tmp_path):
    write_layout_2(str(tmp_path), [mint("k", 1, 3.0)])
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"format", b"9")
    env.close()
    with pytest.raises(ConfigError, match="another sdht layout"):
        Store(str(tmp_path))
    with pytest.raises(ConfigError):
        create_app({"DATA_DIR": str(tmp_path)})


def test_a_key_sorts_by_position_then_kind():
    assert data_key(0, "k")[:8] == position("k").to_bytes(8, "big")
    assert data_key(0, "k") < data_key(1, "k")
    assert is_data_key(data_key(0, "k", b"sub")) and is_data_key(data_key(0, "é" * 40))
    for bad in (b"", b"short", "str", data_key(0, "key")[:-1], b"x" * 600, None):
        assert not is_data_key(bad)


def test_scan_covers_every_kind_in_position_order(tmp_path):
    store = Store(str(tmp_path), sync=False)
    try:
        recs = [mint(f"s{i}", i, 3.0) for i in range(30)]
        store.put_many(recs, DEFAULTS)
        page, cursor = store.scan(0, RING_SIZE, limit=100)
        assert cursor is None
        got = [register.from_packed(p, DEFAULTS).key for p in page]
        assert got == sorted((r.key for r in recs), key=lambda k: position(k))
    finally:
        store.close()
