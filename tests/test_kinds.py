"""Kinds of entries: the registry, the one admission path, and a new kind that travels through
the store, migration and anti-entropy without any of them being changed.

The new kind here is a toy grow-only set (entries ``{x, k, i}`` under a key, one per item,
merged by union), registered for the test only. The nodes are real ``create_app()`` apps in this
process (sdht.inprocess), so the registration reaches both the nodes and the client.
"""
from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

from sdht import kinds
from sdht.errors import InvalidRecord
from sdht.kinds import common, register
from sdht.params import DEFAULTS
from sdht.pow import mint
from sdht.ring import position
from sdht.sync import sync_range
from sdht.wire import RING_SIZE, STORED, packb

TOY_TAG = 200


class ToyItem:
    """One member of a toy set: identity and digest are its content's hash."""

    TAG = TOY_TAG

    def __init__(self, key: str, item: str) -> None:
        self.key, self.item = key, item
        self.digest = hashlib.blake2b(packb([key, item]), digest_size=32,
                                      person=b"sdht-test-toy").digest()
        self.sub = self.digest   # many entries under one key, one per item

    def pack(self) -> bytes:
        return packb({"x": TOY_TAG, "k": self.key, "i": self.item})


def _from_wire(obj: Any, params: Any) -> ToyItem:
    common.check_fields(obj, frozenset("xki"), "toy")
    common.check_key(obj["k"], params)
    if type(obj["i"]) is not str:
        raise InvalidRecord("i must be a str")
    return ToyItem(obj["k"], obj["i"])


TOY = SimpleNamespace(
    TAG=TOY_TAG, NAME="toy", SYNCED=True, PUBLIC=True, HEAD_BYTES=0,
    from_wire=_from_wire,
    check=lambda entry, params, now=None: None,
    supersedes=lambda incoming, held, params: held is None,   # union: add what is missing
    expired=lambda version, cutoff: False,
    head=lambda entry: b"",
    held=lambda digest, header: SimpleNamespace(digest=digest),
    describe=lambda version, params: {"digest": version.digest},
)


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, TOY_TAG, TOY)
    return TOY


def holdings(ring, node: str) -> set[tuple[int, str, Any]]:
    """Every entry ``node`` holds, as ``(kind tag, key, item or value)``."""
    out, cursor = set(), None
    while True:
        page, cursor = ring.transport.scan(node, 0, RING_SIZE, cursor)
        out |= {(e.TAG, e.key, getattr(e, "item", None)) for e in page}
        if cursor is None:
            return out


class TestRegistry:
    def test_register_is_kind_zero_and_its_entries_say_so(self):
        assert kinds.kind_of(0) is register
        assert msgpack.unpackb(mint("k", 1, 3.0).pack())["x"] == 0

    @pytest.mark.parametrize("tag", [None, 7, -1, "0", 0.0, True, [0]])
    def test_unknown_or_malformed_kind_is_refused(self, tag):
        obj = {**mint("k", 1, 3.0).to_wire(), "x": tag}
        with pytest.raises(InvalidRecord):
            kinds.admit(obj, DEFAULTS)

    def test_admit_checks_the_proof_of_work_gate(self):
        rec = mint("k", 1, 3.0)
        assert kinds.admit(rec.to_wire(), DEFAULTS).digest == rec.digest
        with pytest.raises(InvalidRecord, match="work"):
            kinds.admit(rec.to_wire(), {**DEFAULTS, "min_work": 20.0})

    def test_node_answers_an_unknown_kind_with_400_and_stores_nothing(self, client):
        obj = {**mint("k", 1, 3.0).to_wire(), "x": 9}
        resp = client.put("/v1/record", data=packb(obj), content_type="application/msgpack")
        assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_record"
        assert client.get("/v1/health").get_json()["records"] == 0


class TestANewKindTravels:
    """A second kind needs a module and an entry in kinds.KINDS: nothing else changes."""

    def test_store_keeps_many_entries_under_one_key_beside_its_register(self, toy_kind,
                                                                        inprocess_cluster):
        ring, apps = inprocess_cluster(1)
        node = ring.nodes[0]
        ring.set("tags", "a register under the same key")
        items = [ToyItem("tags", f"t{i}") for i in range(5)]
        outcomes, _ = ring.transport.put_many(node, items + items[:2])
        assert [o.status for o in outcomes] == [STORED] * 5 + ["same"] * 2
        assert holdings(ring, node) == ({(TOY_TAG, "tags", f"t{i}") for i in range(5)}
                                        | {(0, "tags", None)})
        assert ring.get("tags") == "a register under the same key"

    def test_migration_moves_it(self, toy_kind, inprocess_cluster, node_apps):
        ring, apps = inprocess_cluster(2, params={"n": 2, "w": 1, "r": 1})
        keys = [f"set{i}" for i in range(40)]
        for key in keys:
            for node in ring.preference(key):
                ring.transport.put_many(node, [ToyItem(key, "member")])
        (new,) = node_apps(1, into=apps)
        ring.join(new)
        expected = {(TOY_TAG, k, "member") for k in keys if new in ring.preference(k)}
        assert expected and holdings(ring, new) == expected

    def test_anti_entropy_copies_it_both_ways(self, toy_kind, inprocess_cluster):
        ring, apps = inprocess_cluster(2, params={"n": 2, "w": 1, "r": 1})
        a, b = ring.nodes
        ring.transport.put_many(a, [ToyItem("s", f"a{i}") for i in range(30)])
        ring.transport.put_many(b, [ToyItem("s", f"b{i}") for i in range(30)]
                                + [ToyItem("t", "only b")])
        report = sync_range(ring.transport, a, b, 0, RING_SIZE, ring.params)
        assert report.pushed_to_a == 31 and report.pushed_to_b == 30
        assert holdings(ring, a) == holdings(ring, b) and len(holdings(ring, a)) == 61
        again = sync_range(ring.transport, a, b, 0, RING_SIZE, ring.params)
        assert again.differences == 0

    def test_a_refused_entry_of_the_new_kind_refuses_its_batch(self, toy_kind,
                                                                 inprocess_cluster):
        ring, _ = inprocess_cluster(1)
        node = ring.nodes[0]
        good, bad = ToyItem("s", "fine"), ToyItem("s", "x")
        bad.pack = lambda: packb({"x": TOY_TAG, "k": "s", "i": 5})   # i must be a str
        with pytest.raises(Exception) as caught:
            ring.transport.put_many(node, [good, bad])
        assert getattr(caught.value, "status", None) == 400
        assert holdings(ring, node) == set()

    def test_range_delete_is_kind_agnostic(self, toy_kind, inprocess_cluster):
        ring, _ = inprocess_cluster(1)
        node = ring.nodes[0]
        ring.transport.put_many(node, [ToyItem(f"k{i}", "m") for i in range(20)])
        ring.set("reg", 1)
        cut = sorted(position(f"k{i}") for i in range(20))[10]
        dropped = ring.transport.delete_range(node, 0, cut)
        left = holdings(ring, node)
        assert dropped == 20 + 1 - len(left)
        assert all(position(key) >= cut for _, key, _ in left)
