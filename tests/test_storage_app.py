"""The storage node in process (real ``create_app`` over real LMDB): strict input, the routes.

DESIGN "Storage node": bad input gets a clear 4xx with a JSON body, never a 500, and changes
nothing; every response carries the node's ring epoch.
"""
from __future__ import annotations

import json
import math

import msgpack
import pytest

from sdht.errors import ConfigError
from sdht.pow import mint
from sdht.kinds.register import from_packed
from sdht.params import DEFAULTS as DEFAULT_PARAMS
from sdht.wire import now_us
from sdht.ring import RING_SIZE, position
from storage.app import EPOCH_HEADER, create_app
from storage.layout import entry_key, stored

MSGPACK = {"Content-Type": "application/msgpack"}
LIMITS = {"max_key_bytes": 32, "max_value_bytes": 64}


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def state(client) -> tuple[int, int, int]:
    """``(records, revision, bytes)`` from health: what a refused request must leave alone."""
    health = client.get("/v1/health").get_json()
    return health["records"], health["revision"], health["bytes"]


def assert_refused(resp, status: int) -> dict:
    """Check a refusal: the status, a JSON ``{"error", "message"}`` body and the epoch header."""
    assert resp.status_code == status, resp.get_data()[:300]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str)
    assert EPOCH_HEADER in resp.headers
    return body


@pytest.fixture
def make_app(tmp_path):
    """Factory: ``make_app(**config)`` builds an app on its own LMDB directory."""
    count = iter(range(100))

    def factory(**config):
        config.setdefault("PARAMS", LIMITS)
        return create_app({"DATA_DIR": str(tmp_path / f"lmdb{next(count)}"),
                           "NODE_ID": "127.0.0.1:9", **config})
    return factory


@pytest.fixture
def small(make_app):
    """A client of a node with small key and value limits (32 and 64 bytes) and one record."""
    client = make_app(MAX_BODY_BYTES=4096, MAX_BATCH=50).test_client()
    assert client.put("/v1/record", data=mint("seed", 1, 3.0).pack()).status_code == 201
    return client


def wire(**changes) -> dict:
    """A valid record's wire map (minted at min_work), with ``changes`` applied."""
    obj = mint("key", "value", DEFAULT_PARAMS["min_work"]).to_wire()
    obj.update(changes)
    return obj


def forged(rec_changes: dict, w: float = 12.0) -> bytes:
    """A record minted at ``w`` then altered: its digest no longer shows its work (odds e**-w)."""
    obj = mint("key", "value", w).to_wire()
    obj.update(rec_changes)
    return pack(obj)


def bad_records() -> list[tuple[str, bytes, int]]:
    """``(name, body, status)`` for every kind of bad record a writer can send."""
    valid = mint("key", "value", 3.0).pack()
    now = now_us()
    cases = [
        ("empty body", b"", 400),
        ("reserved byte", b"\xc1", 400),
        ("truncated", valid[:-3], 400),
        ("trailing bytes", valid + b"\x00", 400),
        ("not a map", pack(["k", "v"]), 400),
        ("nested too deep", b"\x91" * 3000, 400),
        ("missing field", pack({k: v for k, v in wire().items() if k != "n"}), 400),
        ("extra field", pack({**wire(), "x": 1}), 400),
        ("ext type in value", pack(wire(v=[1, msgpack.ExtType(5, b"data")])), 400),
        ("timestamp ext as value", pack(wire(v=msgpack.Timestamp(1, 0))), 400),
        ("timestamp ext as t", pack(wire(t=msgpack.Timestamp(1, 0))), 400),
        ("key too long", pack(wire(k="k" * 33)), 413),
        ("value too large", pack(wire(v="x" * 64)), 413),
        ("tombstone with a value", pack(wire(d=True)), 400),
        ("insufficient work", mint("key", "value", 1.0).pack(), 400),
        ("fake work", pack(wire(w=40.0)), 400),
        ("work above the maximum", pack(wire(w=500.0)), 400),
        ("tampered value", forged({"v": "other"}), 400),
        ("tampered time", forged({"t": now - 1}), 400),
        # A year ahead: the cases are built at collection, and must stay in the future however
        # long the suite runs before they are sent.
        ("timestamp beyond max_skew", mint("key", "v", 3.0, t=now + 365 * 86400 * 10**6).pack(),
         400),
        ("body over MAX_BODY_BYTES", b"\x00" * 5000, 413),
    ]
    for field, bad in [("k", 1), ("k", b"key"), ("k", ""), ("t", 1.5), ("t", -1), ("t", True),
                       ("w", "3"), ("w", None), ("n", "nonce"), ("n", b""), ("n", b"x" * 65),
                       ("d", 0), ("d", None), ("v", {1.5: 1})]:
        cases.append((f"{field}={bad!r}", pack(wire(**{field: bad})), 400))
    return cases


BAD_RANGES = [
    "", "?start=0", "?end=5", "?start=5&end=5", "?start=6&end=5", "?start=-1&end=5",
    "?start=0&end=0", f"?start=0&end={RING_SIZE + 1}", f"?start={RING_SIZE}&end={RING_SIZE}",
    "?start=%C2%B2&end=5", "?start=1e3&end=5000", "?start=0x10&end=99", "?start= 1&end=5",
    "?start=0&end=" + "9" * 5000, "?start=0&end=5&limit=0", "?start=0&end=5&limit=x",
    "?start=0&end=5&limit=50000", "?start=0&end=5&after=zz", "?start=0&end=5&after=%FF"]

BAD = bad_records()
#: The bad records that can sit inside a batch (an empty or oversized body is not a record).
BATCHABLE = [case for case in BAD if case[1] and len(case[1]) < 4096]


class TestRefusals:
    @pytest.mark.parametrize("name,body,status", BAD, ids=[c[0] for c in BAD])
    def test_bad_record_is_refused_and_changes_nothing(self, small, name, body, status):
        before = state(small)
        assert_refused(small.put("/v1/record", data=body, headers=MSGPACK), status)
        assert state(small) == before

    @pytest.mark.parametrize("name,body,status", BATCHABLE, ids=[c[0] for c in BATCHABLE])
    def test_one_bad_record_refuses_the_whole_batch(self, small, name, body, status):
        good = mint("batch-good", 1, 3.0).pack()
        before = state(small)
        batch = msgpack.Packer().pack_array_header(2) + good + body
        resp = small.post("/v1/records", data=batch, headers=MSGPACK)
        assert_refused(resp, status)
        assert state(small) == before
        assert small.get("/v1/record?key=batch-good").status_code == 404

    @pytest.mark.parametrize("body,status", [
        (pack({"k": "v"}), 400), (pack([1]), 400), (pack(["k" * 33]), 413), (pack([""]), 400),
        (pack([b"bytes"]), 400), (pack(["k"] * 51), 413), (b"\x92\xa1k", 400), (b"", 400)],
        ids=lambda v: repr(v)[:30])
    def test_bad_batch_reads(self, small, body, status):
        assert_refused(small.post("/v1/records/get", data=body, headers=MSGPACK), status)

    def test_batch_of_records_over_the_limit(self, small):
        before = state(small)
        body = pack([mint(f"k{i}", i, 3.0).to_wire() for i in range(51)])
        assert_refused(small.post("/v1/records", data=body, headers=MSGPACK), 413)
        assert state(small) == before

    @pytest.mark.parametrize("query,status", [
        ("", 400), ("?key=", 400), ("?key=" + "k" * 33, 413), ("?key=absent", 404)])
    def test_bad_single_reads(self, small, query, status):
        assert_refused(small.get("/v1/record" + query), status)

    @pytest.mark.parametrize("method,query", [("get", q) for q in BAD_RANGES] + [
        ("delete", q) for q in BAD_RANGES if "limit" not in q and "after" not in q],
        ids=lambda v: v[:40])
    def test_malformed_or_inverted_ranges(self, small, method, query):
        before = state(small)
        body = assert_refused(getattr(small, method)("/v1/range" + query), 400)
        if "start=6&end=5" in query or "start=5&end=5" in query:
            assert body["error"] == "inverted_range"
        assert state(small) == before

    @pytest.mark.parametrize("method,path,status", [
        ("get", "/v1/nope", 404), ("get", "/nope/deeper", 404), ("put", "/v1", 404),
        ("post", "/v1/health", 405), ("delete", "/v1/record", 405), ("patch", "/v1/ring", 405),
        ("get", "/v1/records", 405), ("put", "/v1/range", 405)])
    def test_unknown_routes_and_methods(self, small, method, path, status):
        assert_refused(getattr(small, method)(path), status)


def ring(epoch: int, **params) -> dict:
    """A ring's JSON as a node serves it: late parameters at their default are left out."""
    from sdht.params import LATE
    given = {**DEFAULT_PARAMS, **params}
    return {"epoch": epoch, "members": [{"id": "127.0.0.1:9", "state": "normal", "tokens": 4}],
            "params": {k: v for k, v in given.items()
                       if k not in LATE or v != DEFAULT_PARAMS[k]}}


class TestRing:
    def test_only_a_higher_epoch_replaces_it(self, make_app):
        client = make_app().test_client()
        assert_refused(client.get("/v1/ring"), 404)
        assert client.get("/v1/health").headers[EPOCH_HEADER] == "0"
        assert client.put("/v1/ring", json=ring(3)).status_code == 200
        for stale in (3, 2, 0):
            body = assert_refused(client.put("/v1/ring", json=ring(stale, n=1, r=1, w=1)), 409)
            assert body["ring"]["epoch"] == 3 and body["ring"]["params"]["n"] == 3
        assert client.put("/v1/ring", json=ring(4, n=1, r=1, w=1)).status_code == 200
        got = client.get("/v1/ring")
        assert got.get_json()["epoch"] == 4 and got.get_json()["params"]["n"] == 1
        assert got.headers[EPOCH_HEADER] == "4"

    @pytest.mark.parametrize("body", [
        b"", b"not json", b"[1, 2]", b"null", b'{"members": []}', b'{"epoch": -1, "members": []}',
        b'{"epoch": 1.5, "members": []}', b'{"epoch": 9, "members": 5}',
        b'{"epoch": 9, "members": [{"id": "nohost"}]}',
        b'{"epoch": 9, "members": [{"id": "a:1"}, {"id": "a:1"}]}',
        b'{"epoch": 9, "members": [{"id": "a:1", "tokens": Infinity}]}',
        b'{"epoch": 9, "members": [{"id": "a:1", "tokens": NaN}]}',
        b'{"epoch": 9, "members": [{"id": "a:1", "state": "gone"}]}',
        b'{"epoch": 9, "members": [], "params": {"decay": Infinity}}',
        b'{"epoch": 9, "members": [], "params": {"n": 1, "r": 2}}',
        b'{"epoch": 9, "members": [], "params": [1]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"epoch": 1' + b"0" * 5000 + b', "members": []}'], ids=lambda b: repr(b[:40]))
    def test_bad_rings_are_refused(self, make_app, body):
        client = make_app().test_client()
        assert client.put("/v1/ring", json=ring(2)).status_code == 200
        assert_refused(client.put("/v1/ring", data=body,
                                  headers={"Content-Type": "application/json"}), 400)
        assert client.get("/v1/ring").get_json() == ring(2)

    def test_records_held_before_a_ring_lowers_the_limits_stay_writable(self, make_app):
        # Bug: the store re-checked the held record against the new limits, a 500 on write.
        client = make_app(PARAMS={}).test_client()
        assert client.put("/v1/record", data=mint("big", "x" * 500, 3.0).pack()).status_code == 201
        assert client.put("/v1/ring", json=ring(1, max_value_bytes=100)).status_code == 200
        assert client.put("/v1/record", data=mint("big", "small", 3.0).pack()).status_code == 201
        assert from_packed(client.get("/v1/record?key=big").get_data(), DEFAULT_PARAMS).value == "small"

    def test_the_ring_params_rule_writes(self, make_app):
        client = make_app(PARAMS={}).test_client()
        assert client.put("/v1/ring", json=ring(1, min_work=5.0)).status_code == 200
        assert_refused(client.put("/v1/record", data=mint("k", 1, 4.0).pack()), 400)
        assert client.put("/v1/record", data=mint("k", 1, 5.0).pack()).status_code == 201


class TestData:
    def test_write_outcomes(self, make_app):
        client = make_app().test_client()
        old = mint("k", "old", 3.0)
        new = mint("k", "new", 3.0, t=old.t + 1)
        assert client.put("/v1/record", data=new.pack()).status_code == 201
        assert client.put("/v1/record", data=new.pack()).get_json() == {"status": "same"}
        body = assert_refused(client.put("/v1/record", data=old.pack()), 409)
        assert body["error"] == "superseded"
        assert body["score"] == new.score(DEFAULT_PARAMS["decay"])
        assert body["digest"] == new.digest.hex() and (body["t"], body["w"]) == (new.t, new.w)
        assert client.get("/v1/record?key=k").get_data() == new.pack()

    def test_batch_write_and_read(self, make_app):
        client = make_app().test_client()
        records = [mint(f"key{i}", {"i": i}, 3.0) for i in range(40)]
        out = msgpack.unpackb(client.post("/v1/records", data=pack(
            [r.to_wire() for r in records])).get_data())
        assert [o["s"] for o in out] == ["stored"] * 40
        assert [o["digest"] for o in out] == [r.digest for r in records]
        newer = [mint(r.key, "newer", 3.0, t=r.t + 1) for r in records[:5]]
        older = [mint(r.key, "older", 3.0, t=r.t - 1) for r in records[5:10]]
        out = msgpack.unpackb(client.post("/v1/records", data=pack(
            [r.to_wire() for r in newer + older + records[10:12]])).get_data())
        assert [o["s"] for o in out] == ["stored"] * 5 + ["superseded"] * 5 + ["same"] * 2
        assert [o["digest"] for o in out[5:10]] == [r.digest for r in records[5:10]]
        keys = [r.key for r in records] + ["absent"]
        got = msgpack.unpackb(client.post("/v1/records/get", data=pack(keys)).get_data())
        assert got[-1] is None
        held = {r.key: r for r in records} | {r.key: r for r in newer}
        assert ([from_packed(pack(g), DEFAULT_PARAMS).digest for g in got[:-1]]
                == [held[k].digest for k in keys[:-1]])
        health = client.get("/v1/health").get_json()
        assert health["records"] == 40 and health["revision"] == 45

    def test_range_pages_cover_every_record_exactly_once(self, make_app):
        client = make_app().test_client()
        records = [mint(f"r{i}", i, 3.0) for i in range(120)]
        client.post("/v1/records", data=pack([r.to_wire() for r in records]))
        positions = sorted(position(r.key) for r in records)
        lo, hi = positions[30], positions[90]  # a sub-range: [lo, hi) holds records 30..89
        for start, end, expected in [(0, RING_SIZE, positions), (lo, hi, positions[30:90]),
                                     (hi, hi + 1, positions[90:91]), (0, 1, [])]:
            for limit in (1, 7, 60, 1000):
                seen = scan(client, start, end, limit)
                assert [position(r.key) for r in seen] == expected

    def test_delete_range(self, make_app):
        client = make_app().test_client()
        records = [mint(f"d{i}", i, 3.0) for i in range(60)]
        client.post("/v1/records", data=pack([r.to_wire() for r in records]))
        positions = sorted(position(r.key) for r in records)
        lo, hi = positions[10], positions[40]
        assert client.delete(f"/v1/range?start={lo}&end={hi}").get_json() == {"deleted": 30}
        left = scan(client, 0, RING_SIZE, 1000)
        assert [position(r.key) for r in left] == positions[:10] + positions[40:]
        health = client.get("/v1/health").get_json()
        assert health["records"] == 30
        total = sum(len(stored(r)) + len(entry_key(r)) for r in left)
        assert health["bytes"] == total
        assert client.delete(f"/v1/range?start=0&end={RING_SIZE}").get_json() == {"deleted": 30}
        assert client.get("/v1/health").get_json()["bytes"] == 0


def scan(client, start: int, end: int, limit: int) -> list:
    """Follow ``/v1/range`` pages to the end; return the decoded records in order."""
    out, after, pages = [], None, 0
    while True:
        query = f"/v1/range?start={start}&end={end}&limit={limit}"
        resp = client.get(query + (f"&after={after}" if after else ""))
        assert resp.status_code == 200 and resp.mimetype == "application/msgpack"
        page = msgpack.unpackb(resp.get_data())
        assert len(page["records"]) <= limit
        out += [from_packed(pack(r), DEFAULT_PARAMS) for r in page["records"]]
        after, pages = page["next"], pages + 1
        assert pages <= len(out) + 2, "the cursor does not advance"
        if after is None:
            return out


class TestHealthAndHeaders:
    def test_health_fields(self, make_app):
        client = make_app().test_client()
        client.put("/v1/record", data=mint("k", "v", 3.0).pack())
        resp = client.get("/v1/health")
        health = resp.get_json()
        assert health["node"] == "127.0.0.1:9" and health["epoch"] == 0
        assert (health["records"], health["revision"]) == (1, 1)
        assert health["bytes"] > 0 and isinstance(health["bytes"], int)
        assert isinstance(health["uptime"], float) and 0 <= health["uptime"] < 600
        assert resp.headers[EPOCH_HEADER] == "0"

    def test_every_response_carries_the_epoch(self, make_app):
        client = make_app(PARAMS=LIMITS, MAX_BODY_BYTES=1024).test_client()
        assert client.put("/v1/ring", json=ring(7, **LIMITS)).status_code == 200
        responses = [
            client.get("/v1/health"), client.get("/v1/ring"), client.put("/v1/ring", json=ring(1)),
            client.put("/v1/record", data=mint("k", 1, 3.0).pack()),
            client.put("/v1/record", data=b"\xc1"), client.put("/v1/record", data=b"x" * 2000),
            client.get("/v1/record?key=k"), client.get("/v1/record?key=nope"),
            client.post("/v1/records/get", data=pack(["k"])),
            client.get(f"/v1/range?start=0&end={RING_SIZE}"), client.get("/v1/range"),
            client.get("/v1/unknown"), client.post("/v1/health")]
        assert {r.status_code for r in responses} >= {200, 201, 400, 404, 405, 409, 413}
        for resp in responses:
            assert resp.headers[EPOCH_HEADER] == "7", (resp.status_code, resp.request.path)


class TestConfig:
    @pytest.mark.parametrize("params", [{"decay": math.inf}, {"min_work": -1.0},
                                        {"n": 2, "r": 3}, {"max_value_bytes": 0}])
    def test_bad_cluster_parameters_are_refused_at_start(self, tmp_path, params):
        with pytest.raises(ConfigError):
            create_app({"DATA_DIR": str(tmp_path), "PARAMS": params})

    def test_environment_then_arguments(self, tmp_path, monkeypatch):
        monkeypatch.setenv("SDHT_MAX_VALUE_BYTES", "100")
        monkeypatch.setenv("SDHT_DECAY", "inf")
        with pytest.raises(ConfigError):
            create_app({"DATA_DIR": str(tmp_path)})
        monkeypatch.setenv("SDHT_DECAY", "0.001")
        client = create_app({"DATA_DIR": str(tmp_path)}).test_client()
        assert_refused(client.put("/v1/record", data=mint("k", "x" * 100, 3.0).pack()), 413)
        client = create_app({"DATA_DIR": str(tmp_path / "b"),
                             "PARAMS": {"max_value_bytes": 200}}).test_client()
        assert client.put("/v1/record", data=mint("k", "x" * 100, 3.0).pack()).status_code == 201
        assert json.loads(client.get("/v1/health").get_data())["records"] == 1

    def test_a_data_dir_of_another_layout_is_refused_at_start(self, tmp_path):
        from storage.store import Store
        store = Store(str(tmp_path))
        store.put_many([mint("k", 1, 3.0)], DEFAULT_PARAMS)
        with store.env.begin(write=True) as txn:
            txn.put(b"format", b"1", db=store.meta)   # as an older sdht would have left it
        store.close()
        with pytest.raises(ConfigError, match="another sdht layout"):
            create_app({"DATA_DIR": str(tmp_path)})


class TestPageRoutes:
    """The page's JSON routes: bounded input (their authority: tests/test_trust.py)."""

    DEEP = "[" * 30_000

    @pytest.mark.parametrize("body", [
        DEEP, '{"key": ' + DEEP + "}", json.dumps({"key": "k", "value": DEEP})])
    def test_deeply_nested_json_is_a_400_not_a_500(self, client, body):
        resp = client.post("/v1/ui/set", data=body, content_type="application/json")
        assert resp.status_code == 400 and resp.get_json()["error"] in ("too_deep", "bad_request")

    def test_deep_json_ring_is_a_400(self, client):
        resp = client.put("/v1/ring", data=self.DEEP, content_type="application/json")
        assert resp.status_code == 400 and "error" in resp.get_json()
