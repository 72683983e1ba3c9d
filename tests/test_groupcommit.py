"""storage/groupcommit.py: one-record writes that arrive together share one commit, and each
is answered as if it came alone (real apps over real LMDB; a real gunicorn node, stopped and
resumed so that writes arrive together)."""
from __future__ import annotations

import signal
import time

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from sdht import http1
from sdht.pow import mint
from sdht.wire import packb
from storage import groupcommit, lean
from storage.fastpath import EXTENSION
from storage.http import store

MSGPACK = {"Content-Type": "application/msgpack"}


def _environ(data: bytes) -> dict:
    return EnvironBuilder(path="/v1/record", method="PUT", data=data, headers=MSGPACK,
                          environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()


def _alone(app, data: bytes) -> tuple[int, bytes]:
    """The app's answer to one write, served as it comes."""
    body, status, _ = run_wsgi_app(app.wsgi_app, _environ(data), buffered=True)
    return int(status[:3]), b"".join(body)


def _grouped(app, writes: list[bytes]) -> list[tuple[int, bytes]]:
    """The answers to ``writes`` arriving together: the group's, then each one it left to the
    app served alone, in order (as storage.worker serves a turn's writes)."""
    answers = app.extensions[EXTENSION].write_group([_environ(data) for data in writes])
    return [(int(answer[0][:3]), answer[2]) if answer is not None else _alone(app, data)
            for answer, data in zip(answers, writes)]


def _held(app, keys) -> list[bytes]:
    client = app.test_client()
    return [client.get(f"/v1/record?key={key}").data for key in keys]


def _counts(app) -> dict:
    samples = {}
    for family in app.extensions["sdht.metrics"].registry.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count")):
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.fixture
def two_apps(tmp_path):
    from conftest import close_node_app
    from storage.app import create_app
    made = [create_app({"DATA_DIR": str(tmp_path / name), "NODE_ID": "127.0.0.1:1"})
            for name in ("grouped", "alone")]
    yield made
    for app in made:
        close_node_app(app)


def test_a_group_is_one_commit(two_apps):
    app = two_apps[0]
    with app.app_context():
        env = store().env
    before = env.info()["last_txnid"]
    answers = _grouped(app, [mint(f"k{i}", i, 3.0).pack() for i in range(10)])
    assert [status for status, _ in answers] == [201] * 10
    assert env.info()["last_txnid"] == before + 1


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([3.0, 4.0, 5.0]), st.booleans(),
                          st.sampled_from(["new", "repeat", "junk"])), min_size=1, max_size=10))
def test_a_group_answers_and_holds_what_writes_one_by_one_do(tmp_path_factory, writes):
    """Writes of a few keys at a few works, tombstones, repeats and bodies that are no entry:
    merged as one group, each gets the status and body it gets alone, and the node ends holding
    the same entries, with the same counts."""
    from conftest import close_node_app
    from storage.app import create_app
    tmp = tmp_path_factory.mktemp("group")
    apps = [create_app({"DATA_DIR": str(tmp / name), "NODE_ID": "127.0.0.1:1"})
            for name in ("grouped", "alone")]
    try:
        last: dict[int, bytes] = {}
        bodies = []
        for key, work, deleted, how in writes:
            if how == "junk":
                data = packb({"x": 0, "k": f"key{key}"})
            elif how == "repeat" and key in last:
                data = last[key]
            else:
                data = mint(f"key{key}", None if deleted else work, work, deleted=deleted).pack()
            last.setdefault(key, data) if how == "junk" else last.__setitem__(key, data)
            bodies.append(data)
        grouped = _grouped(apps[0], bodies)
        alone = [_alone(apps[1], data) for data in bodies]
        assert [status for status, _ in grouped] == [status for status, _ in alone]
        assert [body for status, body in grouped if status < 400] == \
            [body for status, body in alone if status < 400]
        keys = [f"key{k}" for k in range(3)]
        assert _held(apps[0], keys) == _held(apps[1], keys)
        assert _counts(apps[0]) == _counts(apps[1])
    finally:
        for app in apps:
            close_node_app(app)


def test_writes_to_another_app_are_served_alone_and_groups_are_bounded():
    """No fast path (not the storage app): nothing is merged, each is served alone. A turn's
    writes are merged MAX_GROUP at a time."""
    held = [(None, lean.Request("PUT", "/v1/record", (1, 1), [], b"x"))] * 2
    assert groupcommit.answers(object(), {}, held) == [None, None]
    assert list(groupcommit.chunks(list(range(groupcommit.MAX_GROUP + 1)))) == \
        [list(range(groupcommit.MAX_GROUP)), [groupcommit.MAX_GROUP]]


def _send(conn: http1.Connection, method: str, target: str, data: bytes | None) -> None:
    conn.send(method, target, data, MSGPACK if data else {}, time.monotonic() + 30, 1 << 20)


def test_writes_that_arrive_together_at_a_real_node_share_commits(start_node):
    """Eight clients with kept-alive connections write while the node is stopped (SIGSTOP):
    once it resumes, every write is answered as if alone (stored, same, refused by its order or
    as no entry), every stored one is held, and they took fewer commits than writes."""
    node = start_node(workers=1)
    conns = [http1.Connection("127.0.0.1", node.port, 10.0) for _ in range(8)]
    for conn in conns:
        conn.connect()
        _send(conn, "GET", "/v1/health", None)
        assert conn.answer("GET").status == 200   # accepted and kept alive before the writes
    high, low = mint("same-key", "high", 6.0), mint("same-key", "low", 3.0)
    writes = [mint(f"k{i}", i, 3.0).pack() for i in range(4)] + [
        high.pack(), high.pack(), low.pack(), packb({"x": 0})]
    env = lmdb.open(str(node.data_dir), readonly=True, lock=True, max_dbs=4)
    try:
        before = env.info()["last_txnid"]
        node.signal(signal.SIGSTOP)
        try:
            for conn, data in zip(conns, writes):
                _send(conn, "PUT", "/v1/record", data)
        finally:
            node.signal(signal.SIGCONT)
        statuses = [conn.answer("PUT").status for conn in conns]
        commits = env.info()["last_txnid"] - before
    finally:
        env.close()
        for conn in conns:
            conn.close()
    assert statuses[:4] == [201] * 4
    assert sorted(statuses[4:6]) == [200, 201]   # the same record twice: stored, then same
    assert statuses[6:] == [409, 400]
    assert commits < 5, commits   # the 5 stores took 5 commits alone; together, one
    import requests
    for i, data in enumerate(writes[:4]):
        assert requests.get(f"{node.url}/v1/record?key=k{i}", timeout=10).content == data
    assert requests.get(f"{node.url}/v1/record?key=same-key", timeout=10).content == high.pack()
