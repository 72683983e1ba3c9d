"""storage/groupcommit.py: one-record writes that arrive together share one commit, and each
is answered as if it came alone (real apps over real LMDB; a real gunicorn node, stopped and
resumed so that writes arrive together)."""
from __future__ import annotations

import signal
import time

import lmdb
from hypothesis import HealthCheck, given, settings, strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from sdht import http1
from sdht.pow import mint
from sdht.wire import packb, unpackb
from sdht.kinds import name
from sdht.names import FAST
from storage import acceptor, fastphases, groupcommit, lean, names_routes
from storage.fastpath import EXTENSION
from storage.http import ApiError, store
from test_fastpath import Twins, metric_counts
from test_fastphases import CLAIMS, PROPOSER, _message, _states

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


def test_a_group_is_one_commit(app):
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
            if how == "junk":
                last.setdefault(key, data)
            else:
                last[key] = data
            bodies.append(data)
        grouped = _grouped(apps[0], bodies)
        alone = [_alone(apps[1], data) for data in bodies]
        assert [status for status, _ in grouped] == [status for status, _ in alone]
        assert [body for status, body in grouped if status < 400] == \
            [body for status, body in alone if status < 400]
        keys = [f"key{k}" for k in range(3)]
        assert _held(apps[0], keys) == _held(apps[1], keys)
        assert metric_counts(apps[0]) == metric_counts(apps[1])
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


def _phase_environ(route: str, data: bytes) -> dict:
    return EnvironBuilder(path=route, method="POST", data=data, headers=MSGPACK,
                          environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()


PHASE_POOL = [
    (name.ACCEPT_ROUTE, ("user:a", FAST, 7, CLAIMS["user:a"][0])),
    (name.ACCEPT_ROUTE, ("user:a", FAST, 7, CLAIMS["user:a"][1])),        # taken: conflict
    (name.PREPARE_ROUTE, ("user:a", (FAST[0] + 5, PROPOSER), 7, None)),
    (name.ACCEPT_ROUTE, ("user:a", (FAST[0] + 5, PROPOSER), 6, CLAIMS["user:a"][1])),  # stale
    (name.ACCEPT_ROUTE, ("user:b", FAST, 7, CLAIMS["user:b"][0])),
    (name.PREPARE_ROUTE, ("user:b", (FAST[0] - 1, PROPOSER), 7, None)),
    (name.ACCEPT_ROUTE, ("user:a", FAST, 7, None)),                       # no claim: Flask's 400
]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, len(PHASE_POOL) - 1), min_size=1, max_size=8))
def test_phases_run_together_answer_as_they_do_one_by_one(tmp_path_factory, picks):
    """Prepares and accepts of two names (taken, stale, refused among them): run as one group,
    each is answered what it is answered alone, and both nodes end with the same acceptor
    states and counts."""
    twins = Twins(tmp_path_factory.mktemp("phases"))
    try:
        asked = [(route, _message(*PHASE_POOL[i][1][:3], PHASE_POOL[i][1][3]))
                 for i in picks for route in [PHASE_POOL[i][0]]]
        ran = twins.fast.extensions[fastphases.EXTENSION].answer_group(
            [(names_routes.PHASES[route], _phase_environ(route, data)) for route, data in asked])
        grouped = []
        for (route, data), outcome in zip(asked, ran):
            app = twins.fast.wsgi_app if outcome is None else \
                groupcommit.answering(outcome, twins.fast.wsgi_app)
            body, status, _ = run_wsgi_app(app, _phase_environ(route, data), buffered=True)
            grouped.append((status, b"".join(body)))
        alone = []
        for route, data in asked:
            body, status, _ = run_wsgi_app(twins.flask.wsgi_app, _phase_environ(route, data),
                                           buffered=True)
            alone.append((status, b"".join(body)))
        assert grouped == alone
        assert _states(twins, CLAIMS)[0] == _states(twins, CLAIMS)[1]
        assert twins.counts()[0] == twins.counts()[1]
    finally:
        twins.close()


def test_a_phase_that_failed_in_its_group_is_answered_its_error_and_not_run_again(
        app, monkeypatch):
    """A phase that ran and failed (it may be applied) is answered by the app with that error,
    and the acceptor is not asked again."""
    data = _message("user:a", FAST, 0, CLAIMS["user:a"][0])
    busy = ApiError(503, "busy", "no commit in 60s")
    calls = []
    monkeypatch.setattr(acceptor, "run", lambda *args: calls.append("alone"))
    monkeypatch.setattr(acceptor, "run_together", lambda *args: calls.append("together"))
    body, status, _ = run_wsgi_app(groupcommit.answering(busy, app.wsgi_app),
                                   _phase_environ(name.ACCEPT_ROUTE, data), buffered=True)
    assert status.startswith("503") and b'"busy"' in b"".join(body)
    assert calls == []


def _send(conn: http1.Connection, method: str, target: str, data: bytes | None) -> None:
    conn.send(method, target, data, MSGPACK if data else {}, time.monotonic() + 30, 1 << 20)


def test_writes_that_arrive_together_at_a_real_node_share_commits(start_node):
    """Ten clients with kept-alive connections write records and accept names while the node is
    stopped (SIGSTOP): once it resumes, every request is answered as if alone (stored, same,
    refused by its order or as no entry; accepted), every stored record is held, and they took
    fewer commits than the writes."""
    node = start_node(workers=1)
    conns = [http1.Connection("127.0.0.1", node.port, 10.0) for _ in range(10)]
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
            for conn, key in zip(conns[8:], ("user:a", "user:b")):
                _send(conn, "POST", name.ACCEPT_ROUTE, _message(key, FAST, 0, CLAIMS[key][0]))
        finally:
            node.signal(signal.SIGCONT)
        answers = [conn.answer("POST") for conn in conns]
        statuses = [answer.status for answer in answers]
        commits = env.info()["last_txnid"] - before
    finally:
        env.close()
        for conn in conns:
            conn.close()
    assert statuses[:4] == [201] * 4
    assert sorted(statuses[4:6]) == [200, 201]   # the same record twice: stored, then same
    assert statuses[6:8] == [409, 400]
    assert statuses[8:] == [200, 200]
    assert [unpackb(answer.body)["s"] for answer in answers[8:]] == [name.OK, name.OK]
    assert commits < 5, commits   # the 5 stores and 2 accepts took 7 commits alone; here, 2
    import requests
    for i, data in enumerate(writes[:4]):
        assert requests.get(f"{node.url}/v1/record?key=k{i}", timeout=10).content == data
    assert requests.get(f"{node.url}/v1/record?key=same-key", timeout=10).content == high.pack()
