"""The /kv-store JSON API (storage/gateway.py) against real gunicorn nodes: the seed's scenarios,
every key through every node, causal sessions with replicas paused or left behind, curl, and the
access limits (storage/access.py)."""
from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.parse

import pytest
import requests

import sdht
from sdht import session as cs
from sdht.pow import mint

from conftest import NodeProcess, curl, wait_for

CTX = "causal-context"


@pytest.fixture(scope="module")
def kv(tmp_path_factory):
    """Four real nodes in one ring (n=3, r=2, w=2: each key has one node without a copy), and
    the test's own ring client. Shared by the module: tests use their own keys."""
    base = tmp_path_factory.mktemp("kv")
    nodes = []
    try:
        for i in range(4):
            nodes.append(NodeProcess(base / f"node{i}"))
            nodes[-1].start()
        ring = sdht.Ring([nodes[0].id], timeout=(2.0, 10.0))
        for node in nodes:
            ring.join(node.id)
        yield ring, nodes
        ring.close()
    finally:
        for node in nodes:
            node.stop()


def call(node, method: str, key: str | None, ctx=None, how: str = "body", r: int | None = None,
         path: str | None = None, **body) -> tuple[int, dict]:
    """One request to ``node``'s gateway; the context goes in the body, header or query."""
    url = f"{node.url}/kv-store/" + (path or f"keys/{urllib.parse.quote(key, safe='')}")
    params, headers = {}, {}
    if r is not None:
        params["r"] = str(r)
    if ctx is not None and how == "body":
        body[CTX] = ctx
    elif ctx is not None and how == "header":
        headers["X-Causal-Context"] = json.dumps(ctx)
    elif ctx is not None:
        params[CTX] = json.dumps(ctx)
    resp = requests.request(method, url, params=params, headers=headers,
                            json=body if body else None, timeout=15)
    out = resp.json()
    assert CTX in out, out
    return resp.status_code, out


def without_ctx(out: dict) -> dict:
    return {k: v for k, v in out.items() if k not in (CTX, "address")}


class TestSeedScenarios:
    def test_put_then_put(self, kv):
        _, (a, *_) = kv
        assert without_ctx(call(a, "PUT", "pp", value="1")[1]) == \
            {"message": "Added successfully", "replaced": False}
        status, out = call(a, "PUT", "pp", value="2")
        assert status == 200 and without_ctx(out) == \
            {"message": "Updated successfully", "replaced": True}

    def test_the_canonical_sequence(self, kv):
        _, (a, b, c, d) = kv
        ctx = {}
        steps = [
            (a, "PUT", "x", {"value": "1"}, 201, {"message": "Added successfully",
                                                   "replaced": False}),
            (b, "GET", "y", {}, 404, {"error": "Key does not exist", "doesExist": False,
                                      "message": "Error in GET"}),
            (c, "GET", "x", {}, 200, {"message": "Retrieved successfully", "value": "1",
                                      "doesExist": True}),
            (d, "PUT", "x", {"value": "2"}, 200, {"message": "Updated successfully",
                                                   "replaced": True}),
            (a, "GET", "x", {}, 200, {"message": "Retrieved successfully", "value": "2",
                                      "doesExist": True}),
            (b, "DELETE", "x", {}, 200, {"message": "Deleted successfully", "doesExist": True}),
            (c, "GET", "x", {}, 404, {"error": "Key does not exist", "doesExist": False,
                                      "message": "Error in GET"}),
        ]
        for node, method, key, body, status, expected in steps:
            got, out = call(node, method, key, ctx, **body)
            assert (got, without_ctx(out)) == (status, expected), (method, key)
            ctx = out[CTX]
        assert set(cs.decode(ctx).keys) == {"x"}   # y was never found: nothing to remember

    def test_idempotent_deletes(self, kv):
        _, (a, b, *_) = kv
        assert call(a, "DELETE", "never")[0] == 404
        call(a, "PUT", "del", value=[1])
        assert call(b, "DELETE", "del")[0] == 200
        for node in (a, b):
            status, out = call(node, "DELETE", "del")
            assert status == 404 and without_ctx(out) == {
                "error": "Key does not exist", "doesExist": False, "message": "Error in DELETE"}
        assert call(a, "GET", "del")[0] == 404
        assert call(a, "PUT", "del", value=2)[0] == 201   # deleted: added again

    @pytest.mark.parametrize("method,key,body,error", [
        ("PUT", "k" * 51, {"value": 1}, "Key is too long"),
        ("GET", "k" * 51, {}, "Key is too long"),
        ("DELETE", "k" * 51, {}, "Key is too long"),
        ("PUT", "k", {}, "Value is missing"),
        ("PUT", "k", {"value": None}, "Value is missing"),
        ("PUT", "k", {"causal-context": {}}, "Value is missing"),
        ("PUT", "k", {"value": 1, "causal-context": "x"}, "Invalid causal context"),
        ("PUT", "k", {"value": 1, "causal-context": {"v": 1}}, "Invalid causal context"),
        ("GET", "k", {"causal-context": [1]}, "Invalid causal context"),
    ])
    def test_bad_input(self, kv, method, key, body, error):
        _, (a, *_) = kv
        status, out = call(a, method, key, **body)
        assert status == 400 and out["error"] == error and out["message"] == f"Error in {method}"

    @pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"value"', b"\xff\xfe{", b"[" * 5000])
    def test_a_body_that_is_not_a_json_object(self, kv, raw):
        _, (a, *_) = kv
        for method in ("PUT", "GET", "DELETE"):
            resp = requests.request(method, f"{a.url}/kv-store/keys/k", data=raw, timeout=10)
            assert resp.status_code == 400 and resp.json() == {
                "error": "Failed to parse request body", "message": f"Error in {method}",
                CTX: {}}

    def test_other_refusals(self, kv):
        _, (a, *_) = kv
        assert call(a, "PUT", None, path="keys/", value=1)[1]["error"] == "Key is missing"
        assert call(a, "GET", None, path="keys")[1]["error"] == "Key is missing"
        assert call(a, "GET", "k", r=0)[1]["error"] == "Invalid r"
        assert call(a, "GET", "k", r=4)[1]["error"] == "Invalid r"
        resp = requests.patch(f"{a.url}/kv-store/keys/k", timeout=10)
        assert resp.status_code == 405 and {"error", "message", CTX} <= set(resp.json())
        far = {"v": 1, "t": 2**62, "keys": {}}   # a time no node could have accepted
        assert call(a, "GET", "k", far)[1]["error"] == "Invalid causal context"
        assert call(a, "PUT", "k" * 50, value=1)[0] in (200, 201)
        assert call(a, "PUT", "é" * 50, value=1)[0] in (200, 201)   # characters, not bytes

    def test_large_values_and_bodies_are_refused(self, kv):
        _, (a, *_) = kv
        status, out = call(a, "PUT", "big", value="x" * (1 << 20))
        assert (status, out["error"]) == (413, "Value is too large")
        resp = requests.put(f"{a.url}/kv-store/keys/big", data=b" " * (7 << 20), timeout=30)
        assert resp.status_code == 413 and resp.json()["error"] == "Request body is too large"

    def test_values_are_any_json(self, kv):
        _, (a, b, *_) = kv
        for i, value in enumerate([0, -1.5, True, False, "", "é\u2603", [], {}, [1, {"a": None}],
                                   {"nested": {"list": [1, 2, "3"]}}]):
            call(a, "PUT", f"json{i}", value=value)
            assert call(b, "GET", f"json{i}")[1]["value"] == value
        call(a, "PUT", "a/b c?d#e", value="odd key")
        assert call(b, "GET", "a/b c?d#e")[1]["value"] == "odd key"


class TestEveryNode:
    def test_every_key_through_every_node(self, kv):
        ring, nodes = kv
        for i in range(12):
            key = f"any{i}"
            writer = nodes[i % len(nodes)]
            status, out = call(writer, "PUT", key, value=i)
            assert status == 201
            holders = ring.preference(key)
            for node in nodes:
                status, out = call(node, "GET", key)
                assert status == 200 and out["value"] == i
                # a node without a copy names the key's first replica, as the seed did
                assert out.get("address") == (None if node.id in holders else holders[0])
        assert ring.get("any3") == 3   # and the library sees what the gateway wrote

    def test_key_count_counts_the_live_keys_each_node_holds(self, kv):
        ring, nodes = kv

        def total() -> int:
            return sum(call(n, "GET", None, path="key-count")[1]["key-count"] for n in nodes)
        before = total()
        for i in range(10):
            call(nodes[0], "PUT", f"count{i}", value=i)
        wait_for(lambda: total() == before + 30, 20, what="three copies of each key counted")
        call(nodes[1], "DELETE", "count0")
        wait_for(lambda: total() == before + 27, 20, what="the deleted key uncounted")
        status, out = call(nodes[2], "GET", None, path="key-count")
        assert out["message"] == "Key count retrieved successfully"
        # On a ring built with join each member is a shard of its own, in id order.
        assert out["shard-id"] == sorted(n.id for n in nodes).index(nodes[2].id) + 1

    def test_shards_of_a_ring_built_with_join_are_its_members(self, kv):
        ring, nodes = kv
        status, out = call(nodes[0], "GET", None, path="shards")
        assert (status, out["shards"]) == (200, [1, 2, 3, 4])
        assert out["message"] == "Shard membership retrieved successfully"
        status, out = call(nodes[0], "GET", None, path="shards/4")
        assert status == 200 and out["replicas"] == [max(n.id for n in nodes)]
        assert out["message"] == "Shard information retrieved successfully"
        # The shard's count is its member's; earlier tests' copies may still be arriving (a
        # write is acknowledged by w of n), so compare the two once the counts hold still.
        member = by_id(nodes, out["replicas"][0])
        wait_for(lambda: call(nodes[0], "GET", None, path="shards/4")[1]["key-count"]
                 == call(member, "GET", None, path="key-count")[1]["key-count"], 20,
                 what="the shard's count to be its member's")
        for bad in ("5", "0", "x", "-1", "9" * 30):
            status, out = call(nodes[1], "GET", None, path=f"shards/{bad}")
            assert (status, out["error"], out["message"]) == (404, "Shard does not exist",
                                                              "Error in GET")

    def test_a_view_change_is_refused_for_a_bad_view_or_factor(self, kv):
        ring, nodes = kv
        epoch = ring.handle.refresh().epoch
        for body in ({}, {"view": [], "repl-factor": 1}, {"view": "", "repl-factor": 1},
                     {"view": [nodes[0].id], "repl-factor": 0},
                     {"view": [nodes[0].id], "repl-factor": 2},
                     {"view": [nodes[0].id], "repl-factor": "1"},
                     {"view": ["no-port"], "repl-factor": 1}, {"view": 5, "repl-factor": 1}):
            status, out = call(nodes[0], "PUT", None, path="view-change", **body)
            assert (status, out["error"]) == (400, "Failed to parse request body"), body
        assert ring.handle.refresh().epoch == epoch


def left_behind(ring, key: str) -> tuple[sdht.Record, str]:
    """``key`` is "old" on its replicas, then "new" on one of them only."""
    ring.set(key, "old")
    holder = ring.preference(key)[0]
    rec = mint(key, "new", ring.params["min_work"])
    ring.transport.put_record(holder, rec)
    return rec, holder


def context_of(ring, key: str, rec: sdht.Record) -> dict:
    """The context of a session that wrote ``rec``."""
    return cs.encode(cs.Context({key: cs.version_of(rec, ring.params["decay"])}))


def by_id(nodes, node_id: str):
    return next(n for n in nodes if n.id == node_id)


class TestCausal:
    def test_a_paused_replica_never_turns_a_read_back(self, kv):
        ring, nodes = kv
        key = "paused"
        a = by_id(nodes, ring.preference(key)[0])
        paused = by_id(nodes, ring.preference(key)[2])
        readers = [n for n in nodes if n not in (a, paused)]
        ctx = call(a, "PUT", key, value="old")[1][CTX]
        paused.signal(signal.SIGSTOP)
        try:
            status, out = call(a, "PUT", key, ctx, value="new")
            assert status == 200
            ctx = out[CTX]
            for i in range(12):
                status, out = call(readers[i % 2], "GET", key, ctx, how=("body", "header",
                                                                           "query")[i % 3], r=1)
                assert (status, out.get("value")) in ((200, "new"), (503, None)), out
        finally:
            paused.signal(signal.SIGCONT)

    def test_a_replica_left_behind_is_caught_up_and_repaired(self, kv):
        ring, nodes = kv
        rec, holder = left_behind(ring, "behind")
        ctx = context_of(ring, "behind", rec)
        for node in nodes:
            for how in ("body", "header", "query"):
                status, out = call(node, "GET", "behind", ctx, how=how, r=1)
                assert (status, out["value"]) == (200, "new")
        # Which replicas an r=1 read asked depends on each node's memory of failures; a read
        # of all three repairs those behind.
        assert call(nodes[0], "GET", "behind", ctx, r=3)[1]["value"] == "new"
        wait_for(lambda: all(ring.transport.get_record(n, "behind")[0] == rec
                             for n in ring.preference("behind")), 10, what="read repair")

    def test_the_only_replica_with_the_version_paused_answers_503_after_the_deadline(self, kv):
        ring, nodes = kv
        rec, holder = left_behind(ring, "deadline")
        ctx = context_of(ring, "deadline", rec)
        reader = next(n for n in nodes if n.id != holder)
        by_id(nodes, holder).signal(signal.SIGSTOP)
        try:
            began = time.monotonic()
            status, out = call(reader, "GET", "deadline", ctx, r=1)
            took = time.monotonic() - began
            assert (status, out["error"]) == (503, "Unable to satisfy request")
            assert 1.9 <= took < 6.0, took
            assert out[CTX] == ctx   # the client keeps what it has seen
        finally:
            by_id(nodes, holder).signal(signal.SIGCONT)
        assert call(reader, "GET", "deadline", ctx, r=1)[1]["value"] == "new"

    def test_monotonic_reads_across_nodes(self, kv):
        ring, nodes = kv
        left_behind(ring, "mono")
        status, out = call(nodes[0], "GET", "mono", r=3)   # every replica: sees "new"
        assert out["value"] == "new"
        ctx = out[CTX]
        for _ in range(3):
            for node in nodes:
                status, out = call(node, "GET", "mono", ctx, r=1)
                assert out["value"] == "new"
                ctx = out[CTX]

    def test_two_interleaved_sessions(self, kv):
        _, (a, b, c, d) = kv
        one, two = {}, {}
        one = call(a, "PUT", "i1", one, value=1)[1][CTX]
        two = call(b, "PUT", "i2", two, value=1)[1][CTX]
        one = call(c, "PUT", "i1", one, value=2)[1][CTX]
        two = call(d, "PUT", "i2", two, value=2)[1][CTX]
        assert set(cs.decode(one).keys) == {"i1"} and set(cs.decode(two).keys) == {"i2"}
        # With r + w > n a quorum read sees every acknowledged write, other sessions' too.
        assert call(a, "GET", "i2", one)[1]["value"] == 2
        # Both contexts at once (body and header): reads under them see both histories.
        resp = requests.get(f"{d.url}/kv-store/keys/i1", params={"r": "1"},
                            json={CTX: one}, headers={"X-Causal-Context": json.dumps(two)},
                            timeout=10)
        assert resp.json()["value"] == 2
        assert set(cs.decode(resp.json()[CTX]).keys) == {"i1", "i2"}
        one = call(b, "PUT", "i2", one, value=3)[1][CTX]   # writes follow reads
        assert call(c, "GET", "i2", two, r=1)[1]["value"] == 3



@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
class TestCurl:
    def test_the_seed_flows_from_curl(self, kv):
        _, (a, b, *_) = kv
        status, out = curl("-X", "PUT", "-H", "Content-Type: application/json", "-d",
                           '{"value":"1","causal-context":{}}', f"{a.url}/kv-store/keys/cx")
        assert (status, out["message"]) == (201, "Added successfully")
        ctx = json.dumps(out[CTX])
        status, out = curl("-X", "GET", "-d", json.dumps({CTX: json.loads(ctx)}),
                           f"{b.url}/kv-store/keys/cx")
        assert (status, out["value"]) == (200, "1")
        status, out = curl("-H", f"X-Causal-Context: {ctx}", f"{b.url}/kv-store/keys/cx?r=1")
        assert (status, out["value"]) == (200, "1")
        status, out = curl("-X", "PUT", "-d", '{"value": {"any": ["json"]}}',
                           f"{b.url}/kv-store/keys/cx")
        assert (status, out["replaced"]) == (200, True)
        status, out = curl("-X", "DELETE", f"{a.url}/kv-store/keys/cx")
        assert (status, out["message"]) == (200, "Deleted successfully")
        status, out = curl(f"{a.url}/kv-store/keys/cx")
        assert (status, out["error"]) == (404, "Key does not exist")
        status, out = curl("-X", "PUT", "-d", "{oops", f"{a.url}/kv-store/keys/cx")
        assert (status, out["error"]) == (400, "Failed to parse request body")
        status, out = curl(f"{a.url}/kv-store/key-count")
        assert status == 200 and out["key-count"] >= 0

    def test_python_and_curl_share_one_session(self, kv):
        ring, nodes = kv
        rec, holder = left_behind(ring, "shared")
        with ring.session(r=1) as py:
            py.merge(context_of(ring, "shared", rec))
            py.set("shared", "from python")
            for node in nodes:   # curl, through any node, reads python's write
                status, out = curl("-H", f"X-Causal-Context: {py.export_json()}",
                                   f"{node.url}/kv-store/keys/shared?r=1")
                assert out["value"] == "from python"
            status, out = curl("-X", "PUT", "-d", json.dumps({"value": "from curl",
                                                              CTX: py.export()}),
                               f"{nodes[1].url}/kv-store/keys/shared")
            assert status == 200
            py.merge(out[CTX])
            assert py.get("shared") == "from curl"
            assert py.context == cs.decode(out[CTX])


class TestAccess:
    def test_rates_waits_and_work_are_bounded(self, cluster):
        env = {"SDHT_GATEWAY_LIMIT_LOOPBACK": "1", "SDHT_GATEWAY_WRITE_RATE": "0.01",
               "SDHT_GATEWAY_WRITE_BURST": "3", "SDHT_GATEWAY_MAX_WAITING": "0"}
        # One worker: the limits are per worker process.
        ring, (node,) = cluster(1, params={"n": 1, "r": 1, "w": 1}, env=env, workers=1)
        ghost = mint("g", "never stored", ring.params["min_work"])
        began = time.monotonic()
        status, out = call(node, "GET", "g", context_of(ring, "g", ghost))
        assert status == 503 and time.monotonic() - began < 1.5, out   # no waiting slot
        assert call(node, "PUT", "a", value=1)[0] == 201
        assert call(node, "PUT", "b", value=1)[0] == 201
        resp = requests.put(f"{node.url}/kv-store/keys/c", json={"value": 1}, timeout=10)
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"] == "Too many requests" and CTX in resp.json()
        assert call(node, "GET", "a")[1]["value"] == 1   # reads are not limited

        ring2, (priced,) = cluster(1, params={"n": 1, "r": 1, "w": 1, "min_work": 9.0})
        status, out = call(priced, "PUT", "a", value=1)
        assert (status, out["error"]) == (403, "Writes through this node are off")


class TestFuzz:
    def test_random_requests_get_documented_answers(self, kv):
        """Random bodies, contexts, keys and arguments through every route of a node in a
        ring: never a 5xx but 503 "Unable to satisfy request", always JSON with a context."""
        import random
        ring, nodes = kv
        rnd = random.Random(1212)
        real = [call(nodes[0], "PUT", f"fz{i}", value=i)[1][CTX] for i in range(3)]
        junk = [None, "", "x", 1, [], {"v": 1}, {"v": 1, "t": 0, "keys": {"k": [1, 2, "z"]}},
                {"v": 1, "t": 1, "keys": {"fz-none": [0.0, 1, "0" * 32]}}, "{" * 50,
                {"v": 1, "t": 0, "keys": {"fz0": [1e300, 1, "f" * 32]}}]
        values = [None, 1, "s", [1, {"a": None}], {"deep": [[[[1]]]]}, 1.5, True, "é" * 300]
        keys = ["fz0", "fz1", "new", "k" * 50, "k" * 51, "a/b", "%00", "é", " ", ".."]
        for i in range(300):
            node = rnd.choice(nodes)
            method = rnd.choice(["GET", "PUT", "DELETE", "GET", "PUT", "POST", "PATCH"])
            path = rnd.choice(["keys/" + urllib.parse.quote(rnd.choice(keys), safe=""),
                               "keys/", "keys", "key-count", "shards", "shards/1", "shards/9",
                               "shards/x", "view-change"])
            body: dict = {}
            if rnd.random() < 0.7:
                body["value"] = rnd.choice(values)
            if rnd.random() < 0.6:
                body[CTX] = rnd.choice(real + junk)
            data = json.dumps(body) if rnd.random() < 0.9 else rnd.choice(
                ["{", "[1]", "null", '"x"', "\x00", "{" * 3000])
            headers = {}
            if rnd.random() < 0.2:
                headers["X-Causal-Context"] = json.dumps(rnd.choice(real + junk))
            params = {}
            if rnd.random() < 0.2:
                params["r"] = rnd.choice(["1", "2", "3", "0", "-1", "x", "99", "²"])
            if rnd.random() < 0.1:
                params[CTX] = json.dumps(rnd.choice(real + junk))
            resp = requests.request(method, f"{node.url}/kv-store/{path}", data=data,
                                    headers=headers, params=params, timeout=15)
            out = resp.json()
            assert {"message", CTX} <= set(out), (i, method, path, out)
            if resp.status_code >= 400:
                assert "error" in out, (i, out)
            assert resp.status_code < 500 or (
                resp.status_code == 503 and out["error"] == "Unable to satisfy request"), (
                i, method, path, resp.status_code, out)


class TestLimitsInProcess:
    def test_buckets_refill_and_forget_the_least_recently_seen(self):
        from storage.access import Buckets
        now = [0.0]
        buckets = Buckets(rate=2.0, burst=2, max_clients=3, clock=lambda: now[0])
        assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.5]
        now[0] = 0.5                      # one token back
        assert buckets.take("a") == 0.0 and buckets.take("a") > 0
        for client in "bcd":
            buckets.take(client)
        assert len(buckets) == 3          # "a" was forgotten: it starts full again
        assert buckets.take("a") == 0.0 and buckets.take("a") == 0.0

    @pytest.mark.parametrize("name,value", [("GATEWAY_WAIT", 0.0), ("GATEWAY_WAIT", 61.0),
                                            ("GATEWAY_MAX_KEY_LENGTH", 0),
                                            ("GATEWAY_WRITE_RATE", -1.0),
                                            ("GATEWAY_WRITE_BURST", 0),
                                            ("GATEWAY_MAX_WORK", float("nan"))])
    def test_settings_out_of_range_are_refused(self, tmp_path, name, value):
        from sdht.errors import ConfigError
        from storage.config import load_config
        with pytest.raises(ConfigError):
            load_config({"DATA_DIR": str(tmp_path), name: value}, environ={})
