"""Sequences on the ring (issue 14): the sequence kind (sdht/kinds/sequence.py), the node's range
read (storage/sequence_routes.py), the Python API (sdht/sequences.py) and the gateway routes
(storage/sequence_gateway.py), against real in-process nodes."""
from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import sdht
from sdht import kinds
from sdht.errors import InvalidRecord, KeyNotFound, ValueTooLarge
from sdht.hashseq import HashSeq
from sdht.hashseq_op import MAX_DEPS, make_op, DEFAULT as SCHEME
from sdht.kinds import sequence
from sdht.kinds.sequence import OpEntry
from sdht.params import DEFAULTS
from sdht.ring import position
from sdht.sequence_replicas import ROUTE, mint_op
from sdht.wire import MSGPACK, now_us, packb, packed_array, unpackb

from conftest import curl, wait_for

KEY = "timeline:test"


def an_op(item: object = "hello", seq: HashSeq | None = None):
    return (seq or HashSeq()).append(item)


def entry(item: object = "hello", key: str = KEY, w: float = DEFAULTS["min_work"]) -> OpEntry:
    return mint_op(key, an_op(item), w)


def moved(obj: dict) -> dict:
    """``obj`` moved to another key whose digest does not show its work (the work shown by
    chance, e**-w of the time, would prove nothing)."""
    for i in itertools.count():
        key = f"elsewhere{i}"
        digest = sequence.digest_of(sequence.canonical(key, obj["o"]["id"], obj["t"], obj["w"]),
                                    obj["n"])
        if int.from_bytes(digest, "big") >= kinds.common.work_target(obj["w"]):
            return {**obj, "k": key}
    raise AssertionError("unreachable")


def held_ops(apps: dict, node: str, key: str = KEY) -> list[dict]:
    """The ops ``node`` holds for ``key``, read through its route."""
    reply = apps[node].test_client().get(ROUTE, query_string={"key": key})
    assert reply.status_code == 200
    return unpackb(reply.data)["ops"]


def ids_on(apps: dict, node: str, key: str = KEY) -> set[bytes]:
    return {obj["o"]["id"] for obj in held_ops(apps, node, key)}


def settle(ring, apps: dict, count: int, key: str = KEY) -> None:
    """Wait until every replica of ``key`` holds ``count`` ops (a write returns after ``w``
    of them; the others may still be storing)."""
    wait_for(lambda: all(len(ids_on(apps, n, key)) == count for n in ring.preference(key)),
             10, what=f"{count} ops on every replica of {key!r}")


# -- the kind -------------------------------------------------------------------------------------

class TestTheKind:
    def test_an_entry_round_trips_and_passes_its_checks(self):
        e = entry({"post": "hi", "n": [1, 2]})
        back = kinds.from_packed(e.pack(), DEFAULTS)
        assert isinstance(back, OpEntry) and back.op == e.op and back.digest == e.digest
        assert back.sub == e.op.id and back.TAG == sequence.TAG == 2
        kinds.admit(unpackb(e.pack()), DEFAULTS)   # the gate and the clock pass

    def test_the_merge_is_union_and_converges_on_one_proof_per_op(self):
        a, b = entry("x"), entry("y")
        assert sequence.supersedes(a, None, DEFAULTS)
        again = mint_op(KEY, a.op, DEFAULTS["min_work"])       # the same op, another proof
        small, large = sorted([a, again], key=lambda e: e.digest)
        head = lambda e: sequence.held(e.digest, sequence.head(e))   # noqa: E731
        assert sequence.supersedes(small, head(large), DEFAULTS)
        assert not sequence.supersedes(large, head(small), DEFAULTS)
        assert not sequence.expired(head(b), now_us() * 2)      # ops never expire

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def test_any_delivery_order_stores_the_same_entries(self, data):
        ops = [an_op(i) for i in range(4)]
        proofs = [mint_op(KEY, op, DEFAULTS["min_work"], t=1 + i)
                  for op in ops for i in range(2)]
        delivered = data.draw(st.lists(st.sampled_from(proofs), min_size=1, max_size=20))
        order = data.draw(st.permutations(delivered))

        def fold(seq):
            held: dict[bytes, OpEntry] = {}
            for e in seq:
                old = held.get(e.sub)
                if old is None or (old.digest != e.digest and sequence.supersedes(
                        e, sequence.held(old.digest, sequence.head(old)), DEFAULTS)):
                    held[e.sub] = e
            return {k: v.digest for k, v in held.items()}
        assert fold(delivered) == fold(order) == fold(delivered + order)

    def test_hostile_entries_are_refused(self):
        good = unpackb(entry().pack())
        forged_id = {**good, "o": {**good["o"], "item": "changed"}}
        with pytest.raises(InvalidRecord, match="does not match"):
            kinds.admit(forged_id, DEFAULTS)
        with pytest.raises(InvalidRecord, match="work"):   # the proof binds the op to its key
            kinds.admit(moved(good), DEFAULTS)
        with pytest.raises(InvalidRecord):
            kinds.admit({**good, "o": "not a map"}, DEFAULTS)
        with pytest.raises(InvalidRecord):
            kinds.admit({**good, "extra": 1}, DEFAULTS)
        with pytest.raises(ValueTooLarge):
            kinds.admit({**good, "k": "k" * (sequence.MAX_KEY_BYTES + 1)}, DEFAULTS)

    def test_the_item_and_the_deps_are_bounded(self):
        big = entry("x" * 200)
        with pytest.raises(ValueTooLarge):
            kinds.admit(unpackb(big.pack()), {**DEFAULTS, "max_value_bytes": 100})
        deps = [bytes([i // 256, i % 256]) + bytes(30) for i in range(MAX_DEPS + 1)]
        wire = make_op(SCHEME, "root", deps[:MAX_DEPS], item=1).to_wire()
        wire["deps"] = deps   # one more than the limit
        with pytest.raises(InvalidRecord):
            sequence.op_of(wire, DEFAULTS)

    def test_the_proof_of_work_gate_applies_to_every_op(self):
        cheap = entry(w=0.0)
        with pytest.raises(InvalidRecord, match="outside"):
            kinds.admit(unpackb(cheap.pack()), {**DEFAULTS, "min_work": 5.0})
        future = mint_op(KEY, an_op(), DEFAULTS["min_work"], t=now_us() + 3_600_000_000)
        with pytest.raises(InvalidRecord, match="future"):
            kinds.admit(unpackb(future.pack()), DEFAULTS)


# -- the node -------------------------------------------------------------------------------------

def store_appends(client, count: int) -> list:
    """Append ``count`` items to a fresh sequence under KEY and write its ops to the node of
    ``client`` (a test client) in one batch; return the ops."""
    seq = HashSeq()
    ops = [mint_op(KEY, seq.append(i), DEFAULTS["min_work"]) for i in range(count)]
    client.post("/v1/records", data=packed_array([e.pack() for e in ops]),
                content_type=MSGPACK)
    return ops


class TestTheNode:
    def test_hostile_ops_are_answered_4xx_and_nothing_is_stored(self, app):
        client = app.test_client()
        good = unpackb(entry().pack())
        bad = [{**good, "o": {**good["o"], "item": "forged"}},     # id does not match
               moved(good),                                         # proof of another key
               {**good, "w": 0.5},                                  # work not shown
               unpackb(mint_op(KEY, an_op(), 0.0).pack()),         # below min_work
               {**good, "o": {**good["o"], "kind": "sideways"}},
               {**good, "o": [1, 2, 3]}]
        for obj in bad:
            one = client.put("/v1/record", data=packb(obj), content_type=MSGPACK)
            assert 400 <= one.status_code < 500, obj
            assert set(one.get_json()) >= {"error", "message"}
            many = client.post("/v1/records", data=packed_array([entry("ok").pack(),
                                                                 packb(obj)]),
                               content_type=MSGPACK)
            assert 400 <= many.status_code < 500   # one bad op refuses the whole batch
        held = client.get(ROUTE, query_string={"key": KEY})
        assert unpackb(held.data) == {"ops": [], "next": None}

    def test_one_range_read_returns_every_op_of_the_key_and_only_those(self, app):
        client = app.test_client()
        seq, other = HashSeq(), HashSeq()
        mine = [mint_op(KEY, seq.append(i), DEFAULTS["min_work"]) for i in range(30)]
        theirs = [mint_op(KEY + "x", other.append(i), DEFAULTS["min_work"]) for i in range(5)]
        body = packed_array([e.pack() for e in mine + theirs])
        assert client.post("/v1/records", data=body, content_type=MSGPACK).status_code == 200
        first = unpackb(client.get(ROUTE, query_string={"key": KEY, "limit": 7}).data)
        assert len(first["ops"]) == 7 and first["next"]
        got, cursor = list(first["ops"]), first["next"]
        while cursor:
            page = unpackb(client.get(ROUTE, query_string={"key": KEY, "after": cursor}).data)
            got, cursor = got + page["ops"], page["next"]
        assert sorted(o["o"]["id"] for o in got) == sorted(e.op.id for e in mine)

    def test_the_summary_is_the_digest_of_the_ids_held(self, app):
        client = app.test_client()
        ops = store_appends(client, 5)
        got = unpackb(client.get(ROUTE, query_string={"key": KEY, "summary": "1"}).data)
        assert got == {"count": 5, "summary": sequence.summary(e.op.id for e in ops)}
        empty = unpackb(client.get(ROUTE, query_string={"key": "none", "summary": "1"}).data)
        assert empty == {"count": 0, "summary": sequence.summary([])}

    def test_ids_then_only_the_ops_missing(self, app):
        client = app.test_client()
        ops = store_appends(client, 5)
        listed = unpackb(client.get(ROUTE, query_string={"key": KEY, "ids": "1"}).data)
        assert listed["next"] is None
        assert listed["ids"] == b"".join(sorted(e.op.id for e in ops))
        page = unpackb(client.get(ROUTE, query_string={"key": KEY, "ids": "1", "limit": 2}).data)
        assert len(page["ids"]) == 64 and page["next"] == page["ids"][32:].hex()
        asked = {"k": KEY, "i": [ops[3].op.id, bytes(32)]}
        got = unpackb(client.post(ROUTE + "/get", data=packb(asked),
                                  content_type=MSGPACK).data)
        assert got[0]["o"]["id"] == ops[3].op.id and got[1] is None
        for bad in ({"k": KEY}, {"k": KEY, "i": [b"short"]}, {"k": "", "i": []}, [1],
                    {"k": KEY, "i": "x"}):
            answer = client.post(ROUTE + "/get", data=packb(bad), content_type=MSGPACK)
            assert answer.status_code == 400, bad

    @pytest.mark.parametrize("query", [{}, {"key": ""}, {"key": KEY, "after": "zz"},
                                       {"key": KEY, "after": "ab"}, {"key": KEY, "limit": "0"},
                                       {"key": KEY, "limit": "x"}])
    def test_bad_reads_are_400(self, app, query):
        reply = app.test_client().get(ROUTE, query_string=query)
        assert reply.status_code == 400 and set(reply.get_json()) >= {"error", "message"}


# -- on the ring: the API, replicas, migration, repair --------------------------------------------

@pytest.fixture
def ring3(inprocess_cluster):
    return inprocess_cluster(3)


class TestTheAPI:
    def test_it_behaves_as_a_list(self, ring3):
        ring, _ = ring3
        seq = ring.sequence(KEY)
        assert seq.items() == [] and len(seq) == 0
        seq.append("b")
        seq.insert(0, "a")
        seq.append({"c": [1]})
        seq.insert(-1, "between")
        assert seq.items() == ["a", "b", "between", {"c": [1]}] == list(seq)
        assert seq.remove(1) == "b" and seq.remove(-1) == {"c": [1]}
        assert seq.items() == ["a", "between"] and seq[1] == "between"
        with pytest.raises(IndexError):
            seq.remove(5)
        assert ring.sequence(KEY).items() == ["a", "between"]   # another reader, same list

    @settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.sampled_from(["append", "insert", "remove"]),
                              st.integers(-6, 6), st.integers(-1000, 1000)), max_size=12))
    def test_random_edits_match_a_python_list(self, ring3, edits):
        ring, _ = ring3
        key = f"list:{next(_keys)}"
        seq, model = ring.sequence(key), []
        for what, index, value in edits:
            if what == "append":
                seq.append(value)
                model.append(value)
            elif what == "insert":
                seq.insert(index, value)
                model.insert(index, value)
            elif model and -len(model) <= index < len(model):
                assert seq.remove(index) == model.pop(index)
        assert seq.items() == model
        assert ring.sequence(key).items() == model

    def test_page_is_newest_first_and_pages_back(self, ring3):
        ring, _ = ring3
        seq = ring.sequence(KEY)
        for i in range(7):
            seq.append(i)
        first = seq.page(3)
        assert [it.value for it in first] == [6, 5, 4]
        assert [it.value for it in seq.page(3, before=first[-1].id)] == [3, 2, 1]
        assert [it.value for it in seq.page(10, before=first[-1].id.hex())] == [3, 2, 1, 0]
        with pytest.raises(KeyNotFound):
            seq.page(3, before=bytes(32))
        with pytest.raises(InvalidRecord):
            seq.page(3, before="not hex")

    def test_concurrent_writers_lose_nothing_and_never_interleave(self, ring3):
        ring, _ = ring3
        writers = [ring.sequence(KEY, stale_after=0.0) for _ in range(3)]
        for w in writers:
            w.refresh()   # all start from the same (empty) state: their runs are concurrent

        def post(n: int) -> None:
            for i in range(8):
                writers[n].append(f"{n}:{i}")
        threads = [threading.Thread(target=post, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        items = ring.sequence(KEY).items()
        assert sorted(items) == sorted(f"{n}:{i}" for n in range(3) for i in range(8))
        for n in range(3):   # each writer's posts keep their order
            assert [x for x in items if x.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(8)]

    def test_forty_concurrent_appends_are_all_kept(self, ring3):
        # The case: 40 read-modify-write appends to a list in a register kept 24.
        ring, _ = ring3
        barrier = threading.Barrier(40)

        def one(i: int) -> None:
            seq = ring.sequence(KEY)
            seq.refresh()
            barrier.wait(30)
            seq.append(i)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(ring.sequence(KEY).items()) == list(range(40))

    def test_module_functions_use_the_default_ring(self, ring3):
        ring, _ = ring3
        sdht.set_default_ring(ring)
        try:
            first = sdht.append(KEY, "one")
            sdht.append(KEY, "two")
            assert sdht.sequence(KEY).items() == ["one", "two"]
            assert sdht.sequence(KEY).page(1)[0].value == "two" and len(first) == 32
        finally:
            sdht.set_default_ring(None)

    def test_the_cache_keeps_the_last_sequences(self, ring3):
        from sdht.sequence_cache import SequenceCache
        ring, _ = ring3
        cache = SequenceCache(2)
        first = cache.get(ring, "a")
        assert cache.get(ring, "a") is first
        cache.get(ring, "b")
        cache.get(ring, "c")
        assert len(cache) == 2 and cache.get(ring, "a") is not first

    def test_bad_items_and_keys_are_refused_before_any_write(self, ring3):
        ring, _ = ring3
        seq = ring.sequence(KEY)
        with pytest.raises(InvalidRecord):
            seq.append({1.5: "float keys"})
        with pytest.raises(ValueTooLarge):
            seq.append("x" * (DEFAULTS["max_value_bytes"] + 1))
        with pytest.raises(InvalidRecord):
            ring.sequence("k" * (sequence.MAX_KEY_BYTES + 1))
        with pytest.raises(InvalidRecord):
            seq.page(-1)
        assert seq.items() == []


_keys = itertools.count()


class TestReplicas:
    def test_a_write_reaches_w_replicas_and_a_read_repairs_one_that_missed_it(
            self, inprocess_cluster):
        ring, apps = inprocess_cluster(3, params={"r": 3})
        seq = ring.sequence(KEY)
        for i in range(5):
            seq.append(i)
        settle(ring, apps, 5)
        victim = ring.preference(KEY)[0]
        pos = position(KEY)
        assert ring.transport.delete_range(victim, pos, pos + 1) == 5
        assert ids_on(apps, victim) == set()
        assert ring.sequence(KEY).items() == [0, 1, 2, 3, 4]     # merged from the others
        full = ids_on(apps, ring.preference(KEY)[1])
        wait_for(lambda: ids_on(apps, victim) == full, 10, what="read repair")

    def test_anti_entropy_copies_the_ops_a_replica_misses(self, inprocess_cluster):
        ring, apps = inprocess_cluster(3)
        seq = ring.sequence(KEY)
        for i in range(6):
            seq.append(i)
        settle(ring, apps, 6)
        victim = ring.preference(KEY)[2]
        pos = position(KEY)
        ring.transport.delete_range(victim, pos, pos + 1)
        ring.repair()
        assert ids_on(apps, victim) == ids_on(apps, ring.preference(KEY)[0])
        assert len(ids_on(apps, victim)) == 6

    def test_migration_carries_ops_to_a_joining_node(self, inprocess_cluster, node_apps):
        ring, apps = inprocess_cluster(3)
        keys = [f"tl:{i}" for i in range(12)]
        for key in keys:
            seq = ring.sequence(key)
            for i in range(3):
                seq.append(i)
            settle(ring, apps, 3, key)
        new = next(iter(node_apps(1, into=apps)))
        ring.join(new)
        gained = [k for k in keys if new in ring.preference(k)]
        assert gained   # with 4 nodes and n=3, the new node holds most keys
        for key in gained:
            assert len(ids_on(apps, new, key)) == 3
        ring.remove(ring.nodes[0])
        for key in keys:
            assert ring.sequence(key).items() == [0, 1, 2]

    def test_a_replica_holding_a_forged_op_is_not_believed(self, inprocess_cluster):
        from storage.http import store
        ring, apps = inprocess_cluster(3, params={"r": 2})
        seq = ring.sequence(KEY)
        seq.append("true")
        local = HashSeq()
        local.apply(next(iter(seq._entries.values())).op)
        real = local.append("real")
        forged = dataclasses.replace(real, item="a lie")      # the id no longer matches
        liar = ring.health.order(ring.preference(KEY))[0]     # one a read asks first
        with apps[liar].app_context():   # planted under the node's admission, as a bad disk
            store().put_many([mint_op(KEY, forged, DEFAULTS["min_work"])], ring.params)
        assert forged.id in ids_on(apps, liar)
        assert ring.sequence(KEY).items() == ["true"]   # read from the two honest replicas

    def test_a_reader_that_knows_ops_reads_only_the_new_ones(self, inprocess_cluster):
        from sdht.sequence_replicas import fetch_new
        ring, _ = inprocess_cluster(3)
        writer = ring.sequence(KEY)
        for i in range(5):
            writer.append(i)
        known = set(writer._entries)
        writer.append(5)
        node = ring.preference(KEY)[0]   # a write returns after w: this one may still store
        objs, ids = wait_for(lambda: (lambda got: got if len(got[1]) == 6 else None)(
            fetch_new(ring.quorum, node, KEY, known)), 10, what="the sixth op on the replica")
        assert [o["o"]["item"] for o in objs] == [5] and known < ids

    def test_a_failed_write_stays_pending_and_goes_out_with_the_next(self, inprocess_cluster):
        ring, apps = inprocess_cluster(3)
        seq = ring.sequence(KEY)
        seq.append("first")
        for node in ring.preference(KEY)[:2]:
            ring.transport.mark_down(node)
        with pytest.raises(sdht.QuorumError):
            seq.append("second")
        for node in ring.preference(KEY)[:2]:
            ring.transport.mark_up(node)
        seq.append("third")
        assert ring.sequence(KEY).items() == ["first", "second", "third"]


class TestAKeyedCluster:
    def test_any_client_appends_and_reads(self, keyed_cluster, operator):
        from sdht.inprocess import WSGITransport
        from sdht.trust import Keys
        ring, apps = keyed_cluster(3)
        with sdht.Ring(ring.nodes[:1], transport=WSGITransport(
                apps, keys=Keys((operator.public,)))) as anyone:   # no private key at all
            seq = anyone.sequence(KEY)
            seq.append("from anyone")
            seq.insert(0, "first")
            assert anyone.sequence(KEY).items() == ["first", "from anyone"]
        assert ring.sequence(KEY).items() == ["first", "from anyone"]


# -- the gateway ----------------------------------------------------------------------------------

class TestTheGateway:
    @pytest.fixture
    def gateway(self, inprocess_cluster, monkeypatch):
        import storage.sequence_gateway as routes
        ring, apps = inprocess_cluster(3)
        monkeypatch.setattr(routes, "ring", lambda: ring)
        return ring, apps[ring.nodes[0]].test_client()

    def test_append_list_and_remove(self, gateway):
        ring, client = gateway
        url = "/kv-store/sequences/timeline:public"
        assert client.get(url).get_json()["items"] == []
        made = client.post(url, data='{"post": "hi"}')   # as curl -d sends it
        assert made.status_code == 201 and len(made.get_json()["id"]) == 64
        client.post(url, json=["second", 2])
        client.post(url, data='"third"', content_type="application/json")
        listed = client.get(url).get_json()
        assert [it["value"] for it in listed["items"]] == [{"post": "hi"}, ["second", 2], "third"]
        assert listed["count"] == 3 and listed["items"][0]["id"] == made.get_json()["id"]
        last = client.get(url + "?limit=2").get_json()["items"]
        assert [it["value"] for it in last] == [["second", 2], "third"]
        before = client.get(url, query_string={"limit": 5, "before": last[0]["id"]})
        assert [it["value"] for it in before.get_json()["items"]] == [{"post": "hi"}]
        gone = client.delete(f"{url}/{made.get_json()['id']}")
        assert gone.status_code == 200 and gone.get_json()["value"] == {"post": "hi"}
        again = client.delete(f"{url}/{made.get_json()['id']}")
        assert again.status_code == 404 and set(again.get_json()) >= {"error", "message"}
        assert ring.sequence("timeline:public").items() == [["second", 2], "third"]

    def test_a_key_with_slashes(self, gateway):
        ring, client = gateway
        made = client.post("/kv-store/sequences/alice/posts/", data="1")
        assert made.status_code == 201
        item = made.get_json()["id"]
        assert client.delete(f"/kv-store/sequences/alice/posts//{item}").status_code == 200
        assert ring.sequence("alice/posts/").items() == []

    def test_writes_pay_the_gateways_limits(self, gateway):
        from storage.access import Access
        ring, client = gateway
        app = client.application
        app.extensions["sdht.gateway"] = Access({
            "GATEWAY_WRITE_RATE": 0.001, "GATEWAY_WRITE_BURST": 1,
            "GATEWAY_LIMIT_LOOPBACK": True, "GATEWAY_MAX_WORK": 8, "GATEWAY_MAX_WAITING": 1})
        assert client.post("/kv-store/sequences/limited", data="1").status_code == 201
        refused = client.post("/kv-store/sequences/limited", data="2")
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        app.extensions["sdht.gateway"].max_work = ring.params["min_work"] - 1
        assert client.post("/kv-store/sequences/limited", data="3").status_code == 403
        assert client.get("/kv-store/sequences/limited").get_json()["count"] == 1

    @pytest.mark.parametrize("method,path,body", [
        ("POST", "/kv-store/sequences/k", ""),
        ("POST", "/kv-store/sequences/k", "{not json"),
        ("POST", "/kv-store/sequences/k", "[" * 100_000),
        ("POST", "/kv-store/sequences/" + "k" * 600, "1"),
        ("DELETE", "/kv-store/sequences/k/zz", ""),
        ("DELETE", "/kv-store/sequences/k/" + "ab" * 32, ""),
        ("GET", "/kv-store/sequences/k?limit=-1", ""),
        ("GET", "/kv-store/sequences/k?before=00", ""),
        ("GET", "/kv-store/sequences/k?before=" + "00" * 32, ""),
    ])
    def test_bad_input_is_a_4xx_with_error_and_message(self, gateway, method, path, body):
        _, client = gateway
        reply = client.open(path, method=method, data=body)
        assert 400 <= reply.status_code < 500, reply.get_json()
        assert set(reply.get_json()) >= {"error", "message"}

    @pytest.mark.parametrize("body,status", [
        ("NaN", 201), ('"\\ud800"', 400), ("[" * 40 + "]" * 40, 400), ("1" * 30, 400),
        ('{"a": 1, "a": 2}', 201), ("null", 201)])
    def test_awkward_json(self, gateway, body, status):
        _, client = gateway
        assert client.post("/kv-store/sequences/awkward", data=body).status_code == status

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=200))
    def test_fuzzed_bodies_never_make_a_500(self, gateway, body):
        _, client = gateway
        reply = client.post("/kv-store/sequences/fuzz", data=body)
        assert reply.status_code in (201, 400, 413)
        if reply.status_code == 201:   # compared as JSON text: NaN is not equal to itself
            stored = client.get("/kv-store/sequences/fuzz").get_json()["items"][-1]["value"]
            assert json.dumps(stored, sort_keys=True) == json.dumps(json.loads(body),
                                                                    sort_keys=True)



@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_timeline_over_curl_through_every_node(cluster):
    ring, nodes = cluster(3)
    url = "/kv-store/sequences/timeline:curl"
    ids = []
    for i, node in enumerate(nodes * 2):   # each node appends, in turn
        status, out = curl("-X", "POST", "-d", json.dumps({"post": i}), node.url + url)
        assert status == 201, out
        ids.append(out["id"])
    status, out = curl(nodes[2].url + url + "?limit=3")
    assert status == 200 and out["count"] == 6
    assert [it["value"]["post"] for it in out["items"]] == [3, 4, 5]
    status, out = curl("-X", "DELETE", f"{nodes[1].url}{url}/{ids[0]}")
    assert (status, out["value"]) == (200, {"post": 0})
    status, out = curl("-X", "DELETE", f"{nodes[0].url}{url}/{ids[0]}")
    assert status == 404 and {"error", "message"} <= set(out)
    status, out = curl("-X", "POST", "-d", "{oops", nodes[0].url + url)
    assert status == 400 and {"error", "message"} <= set(out)
    assert [v["post"] for v in ring.sequence("timeline:curl").items()] == [1, 2, 3, 4, 5]
