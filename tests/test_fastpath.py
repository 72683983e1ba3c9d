"""storage/fastpath.py: ``GET`` and ``PUT /v1/record`` answered without Flask's dispatch,
exactly as the routes answer them (status, headers, body, event log, metrics), and every other
request left to Flask (real apps over real LMDB)."""
from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from werkzeug.test import run_wsgi_app, EnvironBuilder

from sdht.errors import InvalidRecord
from sdht.kinds import register
from sdht.params import DEFAULTS
from sdht.pow import mint
from sdht.wire import now_us, packb
from storage.fastpath import HotPath

MSGPACK = {"Content-Type": "application/msgpack"}


def _both(app, path: str, **environ) -> tuple:
    """The answer of the app as it runs (fast path in front) and of Flask alone behind it."""
    answers = []
    inner = _inner(app)
    for wsgi in (app.wsgi_app, inner):
        env = EnvironBuilder(path=path, environ_base={"REMOTE_ADDR": "127.0.0.1",
                                                       **environ}).get_environ()
        body, status, headers = run_wsgi_app(wsgi, env, buffered=True)
        answers.append((status, sorted(headers.items()), b"".join(body)))
    return answers[0], answers[1]


def _fast(app) -> HotPath:
    """The fast path, under the limits middleware."""
    layer = app.wsgi_app
    while not isinstance(layer, HotPath):
        layer = layer.app
    return layer


def _inner(app):
    """Flask's WSGI callable, behind the fast path."""
    return _fast(app).wsgi


def _answered_fast(app, path: str) -> bool:
    env = EnvironBuilder(path=path, environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()
    return _fast(app)._read(env) is not None


def _requests(client, status: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    line = f'sdht_requests_total{{method="GET",route="/v1/record",status="{status}"}}'
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


@pytest.mark.parametrize("key", ["plain-key_1.x~", "héllo wörld", "a/b?c&d=e"])
def test_a_held_key_is_answered_as_the_route_answers_it(app, client, key):
    rec = mint(key, b"v" * 50, 3.0)
    assert client.put("/v1/record", data=rec.pack(), headers=MSGPACK).status_code == 201
    path = "/v1/record?" + urlencode({"key": key})
    fast, flask = _both(app, path)
    assert fast == flask
    assert _answered_fast(app, path) == ("+" not in path)   # a space arrives as "+": Flask
    assert fast[0].startswith("200") and fast[2] == rec.pack()


@pytest.mark.parametrize("query", ["key=missing", "key=", "", "key=%ff", "key=a&key=b",
                                   "x=1", "key=" + "k" * 600])
def test_anything_else_is_left_to_flask(app, client, query):
    fast, flask = _both(app, "/v1/record?" + query)
    assert fast == flask
    assert not _answered_fast(app, "/v1/record?" + query)
    assert not fast[0].startswith("200")


def test_the_fast_path_counts_its_answers_in_the_route_metrics(client):
    rec = mint("counted", b"v", 3.0)
    client.put("/v1/record", data=rec.pack(), headers=MSGPACK)
    before = _requests(client, "200")
    assert client.get("/v1/record?key=counted").status_code == 200
    assert _requests(client, "200") == before + 1


def test_a_development_node_still_refuses_other_hosts(app, client):
    rec = mint("local", b"v", 3.0)
    client.put("/v1/record", data=rec.pack(), headers=MSGPACK)
    answer = client.get("/v1/record?key=local", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert answer.status_code == 403
    assert answer.get_json()["error"] == "development_mode"


# -- PUT /v1/record -------------------------------------------------------------------------------
#
# A write changes the store, so the two answers come from twins: two nodes with the same id,
# settings and ring, one as it runs (the fast path in front), the other with the fast path
# taken out of its WSGI chain (the limits in front of Flask alone), sent the same requests.

NODE = "127.0.0.1:1"
BODY_LIMIT = 2 << 20   # MAX_BODY_BYTES of the twins: a 1 MiB value passes it, 3 MiB do not


class Twins:
    """Two nodes answering the same requests: ``fast`` as it runs, ``flask`` without the fast
    paths (:mod:`storage.fastpath`, :mod:`storage.fastphases`). ``handed`` counts the requests
    the fast twin's paths handed to Flask."""

    def __init__(self, tmp_path, **config) -> None:
        from storage.app import create_app
        self.apps = [create_app({"DATA_DIR": str(tmp_path / name), "NODE_ID": NODE,
                                 "MAX_BODY_BYTES": BODY_LIMIT, **config})
                     for name in ("fast", "flask")]
        self.fast, self.flask = self.apps
        phases = _fast(self.fast).wsgi     # the record routes' path, then the phases' path
        inner, self.handed = phases.wsgi, []

        def counted(environ, start_response):
            self.handed.append(environ["REQUEST_METHOD"])
            return inner(environ, start_response)
        phases.wsgi = counted
        limits_layer = self.flask.wsgi_app       # the limits, then the fast paths: skip them
        limits_layer.app = _fast(self.flask).wsgi.wsgi
        if config.get("OPERATOR_PUBKEY") is None:   # a development node holds a ring
            view = {"epoch": 7, "members": [{"id": NODE, "state": "normal"}]}
            for app in self.apps:
                assert app.test_client().put("/v1/ring", json=view).status_code == 200

    def send(self, method: str, path: str, data: bytes, headers: dict | None = None,
             remote: str = "127.0.0.1", fast: bool | None = None, exact: bool = True) -> tuple:
        """Send the request to both; assert the answers are byte for byte the same (not
        ``exact``: but for the body, which tells the time), and (with ``fast``) whether the
        fast twin's paths answered it; return the answer."""
        before = len(self.handed)
        answers = []
        for app in self.apps:
            env = EnvironBuilder(path=path, method=method, data=data,
                                 headers={**MSGPACK, **(headers or {})},
                                 environ_base={"REMOTE_ADDR": remote}).get_environ()
            body, status, got = run_wsgi_app(app.wsgi_app, env, buffered=True)
            answers.append((status, sorted(got.items()), b"".join(body)))
        assert answers[0] == answers[1] if exact else answers[0][:2] == answers[1][:2]
        if fast is not None:
            assert len(self.handed) == before + (0 if fast else 1), answers[0]
        return answers[0]

    def put(self, data: bytes, **kw) -> tuple:
        """PUT ``data`` to both (:meth:`send`)."""
        return self.send("PUT", "/v1/record", data, **kw)

    def put_fast(self, data: bytes, **kw) -> tuple:
        """:meth:`put`, asserting the fast path answered it."""
        return self.put(data, fast=True, **kw)

    def put_handed(self, data: bytes, **kw) -> tuple:
        """:meth:`put`, asserting the fast path handed it to Flask."""
        return self.put(data, fast=False, **kw)

    def events(self) -> list[list[tuple[str, str]]]:
        """Each twin's event log, (kind, text) newest first."""
        from storage import eventlog
        return [[(e["kind"], e["text"]) for e in eventlog.recent(app.config["DATA_DIR"], 500)]
                for app in self.apps]

    def counts(self) -> list[dict]:
        """Each twin's counters and histogram counts (not its times)."""
        return [metric_counts(app) for app in self.apps]

    def close(self) -> None:
        from conftest import close_node_app
        for app in self.apps:
            close_node_app(app)


def metric_counts(app) -> dict:
    """An app's counters and histogram counts (not its times), by name and labels."""
    samples = {}
    for family in app.extensions["sdht.metrics"].registry.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count")):
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.fixture
def twins(tmp_path):
    made = Twins(tmp_path)
    yield made
    made.close()


def _status(answer: tuple) -> int:
    return int(answer[0][:3])


def test_a_write_stored_and_then_same_is_answered_as_the_route_answers_it(twins):
    rec = mint("k1", {"v": [1, 2]}, 3.0)
    stored = twins.put_fast(rec.pack())
    assert _status(stored) == 201 and json.loads(stored[2]) == {"status": "stored"}
    assert ("X-SDHT-Epoch", "7") in stored[1] and ("X-SDHT-Node", NODE) in stored[1]
    same = twins.put_fast(rec.pack())
    assert _status(same) == 200 and json.loads(same[2]) == {"status": "same"}
    fast_events, flask_events = twins.events()
    assert fast_events == flask_events
    assert [text for _, text in fast_events[:2]] == ["'k1' already held", "'k1' stored"]
    fast_counts, flask_counts = twins.counts()
    assert fast_counts == flask_counts
    assert fast_counts[("sdht_writes_total", (("outcome", "stored"),))] == 1
    assert fast_counts[("sdht_requests_total", (("method", "PUT"), ("route", "/v1/record"),
                                                ("status", "201")))] == 1
    for app in twins.apps:   # and the store holds it, as the route stored it
        assert app.test_client().get("/v1/record?key=k1").data == rec.pack()


def test_a_superseded_write_is_answered_by_flask_with_what_the_node_holds(twins):
    high, low = mint("k2", "high", 6.0), mint("k2", "low", 3.0)
    twins.put_fast(high.pack())
    refused = twins.put_handed(low.pack())
    assert _status(refused) == 409 and json.loads(refused[2])["error"] == "superseded"
    assert twins.events()[0] == twins.events()[1]
    assert twins.counts()[0] == twins.counts()[1]
    for app in twins.apps:
        assert app.test_client().get("/v1/record?key=k2").data == high.pack()


def test_a_migrated_write_is_counted_as_one(twins):
    twins.put_fast(mint("moved", 1, 3.0).pack(), headers={"X-SDHT-Migration": "1"})
    fast, flask = twins.counts()
    assert fast == flask and fast[("sdht_migration_records_received_total", ())] == 1


def _junk_record(**changes) -> bytes:
    """A record's wire form with ``changes`` made to it (not minted again)."""
    wire = mint("junk", "v", 3.0).to_wire()
    wire.update(changes)
    return packb(wire)


def _unworked_record() -> bytes:
    """A record whose nonce does not show its work. (A fixed nonce did by chance, one time in
    eight at work 3: the record's time changes from run to run.)"""
    for i in range(1000):   # each nonce fails with probability 7/8
        data = _junk_record(n=i.to_bytes(8, "big"))
        try:
            register.check(register.from_packed(data, DEFAULTS), DEFAULTS)
        except InvalidRecord:
            return data
    raise AssertionError("a thousand nonces in a row showed the work")


@pytest.mark.parametrize("data, status", [
    (b"", 400),                                   # no body
    (b"\xc1", 400),                               # malformed msgpack
    (packb([1, 2, 3]), 400),                      # msgpack, not an entry
    (packb({"k": "x"}), 400),                     # a map, not a record
    (_unworked_record(), 400),                    # its work does not hold
    (_junk_record(w=50.0), 400),                  # work it does not show
    (b"\x91" * 100_000 + b"\x01", 400),           # nested deeper than anyone's stack
    (packb("k" * 10_000), 400),                   # a long string
    (b"\x00" * (3 << 20), 413),                   # over the body limit: refused by the limits
])
def test_a_refused_write_is_answered_by_flask_with_its_json_error(twins, data, status):
    answer = twins.put_handed(data)
    assert _status(answer) == status
    assert ("Content-Type", "application/json") in answer[1]
    assert isinstance(json.loads(answer[2])["error"], str)
    assert twins.events()[0] == twins.events()[1]
    assert twins.counts()[0] == twins.counts()[1]
    for app in twins.apps:
        assert app.test_client().get("/v1/health").get_json()["records"] == 0


def test_an_oversized_value_is_refused_by_flask(twins):
    answer = twins.put_handed(mint("big", b"x" * ((1 << 20) + 1), 3.0).pack())
    assert _status(answer) == 413 and json.loads(answer[2])["error"] == "too_large"
    assert twins.events()[0] == twins.events()[1]


def test_another_host_and_the_test_faults_go_to_flask(tmp_path, twins):
    answer = twins.put_handed(mint("far", 1, 3.0).pack(), remote="10.1.2.3")
    assert _status(answer) == 403 and json.loads(answer[2])["error"] == "development_mode"
    faulty = Twins(tmp_path / "faulty", TEST_DELAY_MS=1)
    try:
        assert _status(faulty.put_handed(mint("slow", 1, 3.0).pack())) == 201
        assert faulty.counts()[0] == faulty.counts()[1]
    finally:
        faulty.close()


@pytest.fixture
def keyed(tmp_path, operator):
    """Twin keyed nodes (the operator's keys): tests/test_fastphases.py uses them too."""
    made = Twins(tmp_path, **operator.node_config(NODE))
    yield made
    made.close()


class TestAKeyedNode:
    def test_an_unsigned_register_write_is_answered_fast(self, keyed):
        assert _status(keyed.put_fast(mint("open", 1, 3.0).pack(), remote="10.1.2.3")) == 201
        assert keyed.events()[0] == keyed.events()[1]

    def test_signed_writes_go_to_flask(self, keyed, operator):
        data = mint("signed", 1, 3.0).pack()
        signed = operator.keys().sign_request("PUT", "/v1/record", data)
        assert _status(keyed.put_handed(data, headers=signed)) == 201
        forged = {**signed, "X-SDHT-Signature": "00" * 64}
        answer = keyed.put_handed(mint("forged", 1, 3.0).pack(), headers=forged)
        assert _status(answer) == 401 and json.loads(answer[2])["error"] == "unauthorized"
        assert keyed.events()[0] == keyed.events()[1]
        assert keyed.counts()[0] == keyed.counts()[1]

    def test_acceptor_state_from_anyone_is_refused_by_flask(self, keyed):
        from test_names import claim
        from sdht.kinds import name
        ballot = (now_us(), b"\x66" * name.PROPOSER_BYTES)
        forged = name.State("user:bob", ballot, ballot, claim("user:bob", "mallory"))
        answer = keyed.put_handed(forged.pack(), remote="10.1.2.3")
        assert _status(answer) == 403 and json.loads(answer[2])["error"] == "members_only"
        assert keyed.events()[0] == keyed.events()[1]
        assert keyed.counts()[0] == keyed.counts()[1]


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([3.0, 4.0, 5.0]), st.booleans(),
                          st.booleans()), min_size=1, max_size=8))
def test_any_run_of_writes_is_answered_and_logged_alike(tmp_path_factory, writes):
    """Writes of a few keys at a few works, tombstones and repeats among them: the twins answer
    each the same, and leave the same log, counts and store."""
    twins = Twins(tmp_path_factory.mktemp("run"))
    try:
        last: dict[int, bytes] = {}
        for key, work, deleted, repeat in writes:
            data = last[key] if repeat and key in last else \
                mint(f"key{key}", None if deleted else work, work, deleted=deleted).pack()
            last[key] = data
            twins.put(data)
        assert twins.events()[0] == twins.events()[1]
        assert twins.counts()[0] == twins.counts()[1]
        for key in last:
            got = [app.test_client().get(f"/v1/record?key=key{key}").data for app in twins.apps]
            assert got[0] == got[1]
    finally:
        twins.close()


def test_a_real_node_answers_writes_logs_and_counts_them(start_node):
    """Under gunicorn (its worker, the limits, two workers): stored, same and superseded, each
    answered, logged and counted once."""
    import requests
    node = start_node()
    high, low = mint("e2e", "high", 6.0), mint("e2e", "low", 3.0)
    answers = [requests.put(f"{node.url}/v1/record", data=rec.pack(), headers=MSGPACK,
                            timeout=10) for rec in (high, high, low)]
    assert [a.status_code for a in answers] == [201, 200, 409]
    assert [a.json().get("status") for a in answers[:2]] == ["stored", "same"]
    assert answers[2].json()["error"] == "superseded"
    assert all(a.headers["X-SDHT-Node"] == node.id and a.headers["X-SDHT-Epoch"] == "0"
               for a in answers)
    log = requests.get(f"{node.url}/v1/ui/log", timeout=10).json()["events"]
    assert [e["text"] for e in log[:3]] == ["'e2e' refused: a higher version is held",
                                           "'e2e' already held", "'e2e' stored"]
    text = requests.get(f"{node.url}/metrics", timeout=10).text
    for outcome in ("stored", "same", "superseded"):
        assert f'sdht_writes_total{{outcome="{outcome}"}} 1.0' in text, outcome
    for status in ("201", "200", "409"):
        assert (f'sdht_requests_total{{method="PUT",route="/v1/record",status="{status}"}} 1.0'
                in text), status
    assert requests.get(f"{node.url}/v1/record?key=e2e", timeout=10).content == high.pack()
