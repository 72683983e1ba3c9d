"""storage/commits.py: the writes of one process that wait at once share one commit; one that
fails is rolled back alone; a waiter no leader takes gives up, and the queue never wedges (real
LMDB; a real gunicorn node stopped and resumed so that batches arrive together)."""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import lmdb
import pytest
import requests
from hypothesis import given, settings, strategies as st

from sdht import http1
from sdht.kinds import name
from sdht.kinds.name import OK
from sdht.pow import mint
from sdht.wire import MSGPACK, packed_array, unpackb
from storage import acceptor, commits
from storage.commits import Busy, Commits
from storage.store import Store

PARAMS = {"decay": 0.0}


@pytest.fixture
def store(tmp_path):
    opened = Store(str(tmp_path / "db"))
    yield opened
    opened.close()


def _counting(group: Commits) -> list[int]:
    """The sizes of the groups ``group`` commits, as it commits them."""
    sizes: list[int] = []
    commit = group.commit
    group.commit = lambda tickets: (sizes.append(sum(len(t.fns) for t in tickets)),
                                    commit(tickets))[1]
    return sizes


def test_operations_waiting_together_share_one_commit_and_fail_alone(store):
    group = store.commits
    sizes = _counting(group)
    gate = threading.Barrier(8)

    def op(i):
        def fn(txn):
            txn.put(b"k%d" % i, b"v", db=store.meta)
            if i == 13:
                raise ValueError("this one fails alone")
            time.sleep(0.002)   # a commit takes a while: others queue behind it
            return i
        return fn

    def run(i):
        if i < 8:
            gate.wait(5)
        try:
            return group.run(op(i))
        except ValueError:
            return "failed"

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, range(64)))
    assert got == [i if i != 13 else "failed" for i in range(64)]
    assert sum(sizes) == 64 and len(sizes) < 64 and max(sizes) > 1
    with store.env.begin() as txn:
        held = [i for i in range(64) if txn.get(b"k%d" % i, db=store.meta)]
    assert held == [i for i in range(64) if i != 13]   # the failed one's write rolled back
    assert not group.queue and not group.leading


def test_a_group_is_one_commit_in_order_and_a_failure_changes_nothing_else(store):
    before = store.env.info()["last_txnid"]

    def put(value):
        return lambda txn: (txn.put(b"k", value, db=store.meta), txn.get(b"k", db=store.meta))[1]

    def fails(txn):
        txn.put(b"k", b"lost", db=store.meta)
        raise RuntimeError("rolled back")

    got = store.commits.run_all([put(b"a"), fails, put(b"b")])
    assert [bytes(result) if result else None for result, _ in got] == [b"a", None, b"b"]
    assert isinstance(got[1][1], RuntimeError)
    assert store.env.info()["last_txnid"] == before + 1
    with store.env.begin() as txn:
        assert txn.get(b"k", db=store.meta) == b"b"


def test_a_transaction_that_cannot_begin_fails_every_operation(tmp_path):
    Store(str(tmp_path / "db")).close()
    readonly = lmdb.open(str(tmp_path / "db"), readonly=True, max_dbs=4)
    try:
        got = Commits(readonly).run_all([lambda txn: 1, lambda txn: 2])
    finally:
        readonly.close()
    assert [result for result, _ in got] == [None, None]
    assert all(isinstance(error, lmdb.Error) for _, error in got)


def test_a_waiter_no_leader_takes_gives_up_and_the_queue_drains(monkeypatch, store):
    monkeypatch.setattr(commits, "WAIT", 0.2)
    group, release, inside = store.commits, threading.Event(), threading.Event()

    def slow(txn):
        inside.set()
        release.wait(10)
        return "slow"

    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(group.run, slow)
        assert inside.wait(10)
        with pytest.raises(Busy):   # queued behind a commit that outlasts the wait
            group.run(lambda txn: "late")
        assert not group.queue   # it left the queue unrun
        release.set()
        assert leader.result(10) == "slow"
    assert group.run(lambda txn: "next") == "next"
    assert not group.queue and not group.leading


def test_many_waiters_timing_out_never_wedge_the_queue(monkeypatch, store):
    """Waiters give up while leads pass on (the hand-off races their timeouts): afterwards the
    queue is empty and nobody leads; every operation answered ran, and none that gave up
    waiting for a leader ran (one that gave up waiting for its commit may have)."""
    monkeypatch.setattr(commits, "WAIT", 0.01)
    ran: list[int] = []

    def op(i):
        def fn(txn):
            time.sleep(0.003)
            ran.append(i)
            return i
        return fn

    def call(i):
        try:
            return "answered", store.commits.run(op(i))
        except Busy as exc:
            return ("unrun" if "no write transaction" in str(exc) else "unknown"), i

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(call, range(200)))
    answered = {i for how, i in got if how == "answered"}
    unrun = {i for how, i in got if how == "unrun"}
    assert answered <= set(ran) and not unrun & set(ran)
    assert answered and unrun   # both paths were taken
    assert not store.commits.queue and not store.commits.leading
    assert store.commits.run(lambda txn: "after") == "after"


keys = st.sampled_from(["a", "b", "c"])
records = st.builds(lambda key, value, work: mint(key, value, work), keys,
                    st.integers(0, 3), st.sampled_from([3.0, 4.0, 5.0]))


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.lists(records, min_size=1, max_size=4), min_size=1, max_size=6))
def test_batches_written_at_once_hold_what_batches_written_one_by_one_hold(tmp_path_factory,
                                                                           batches):
    """put_many from many threads at once: the held entries are those of any serial order (the
    accept rule's order decides), and fewer or as many commits as batches were made."""
    together = Store(str(tmp_path_factory.mktemp("together")))
    alone = Store(str(tmp_path_factory.mktemp("alone")))
    try:
        before = together.env.info()["last_txnid"]
        with ThreadPoolExecutor(len(batches)) as pool:
            list(pool.map(lambda batch: together.put_many(batch, PARAMS), batches))
        assert together.env.info()["last_txnid"] - before <= len(batches)
        for batch in batches:
            alone.put_many(batch, PARAMS)
        assert together.get_many(["a", "b", "c"]) == alone.get_many(["a", "b", "c"])
    finally:
        together.close()
        alone.close()


def test_acceptor_phases_share_the_transaction_of_writes(store):
    """A phase and a batch write waiting at once go in one commit, the phase fenced by the
    ring epoch its transaction sees."""
    sizes = _counting(store.commits)
    ballot = (1, b"p" * name.PROPOSER_BYTES)
    release, inside = threading.Event(), threading.Event()

    def hold(txn):
        inside.set()
        release.wait(10)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(store.commits.run, hold)
        assert inside.wait(10)
        phase = pool.submit(acceptor.run, store,
                            acceptor.prepare(store, "user:x", ballot, 0, PARAMS))
        write = pool.submit(store.put_many, [mint("k", 1, 3.0)], PARAMS)
        deadline = time.monotonic() + 10
        while len(store.commits.queue) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        release.set()
        first.result(10)
        assert phase.result(10).status == OK
        assert write.result(10)[0].status == "stored"
    assert sizes == [1, 2]


def test_batches_that_arrive_together_at_a_real_node_share_commits(start_node):
    """Eight batch writes sent on kept-alive connections while the node is stopped (SIGSTOP):
    once it resumes, its pool threads serve them at once, every record is stored, and they
    took fewer commits than batches."""
    node = start_node(workers=1)
    batches = [[mint(f"b{b}-{i}", i, 3.0) for i in range(100)] for b in range(8)]
    conns = [http1.Connection("127.0.0.1", node.port, 10.0) for _ in batches]
    env = lmdb.open(str(node.data_dir), readonly=True, lock=True, max_dbs=4)
    try:
        for conn in conns:
            conn.connect()
            _send(conn, "GET", "/v1/health", None)
            assert conn.answer("GET").status == 200   # accepted and kept alive before
        before = env.info()["last_txnid"]
        node.signal(signal.SIGSTOP)
        try:
            for conn, batch in zip(conns, batches):
                _send(conn, "POST", "/v1/records", packed_array([r.pack() for r in batch]))
        finally:
            node.signal(signal.SIGCONT)
        answers = [conn.answer("POST") for conn in conns]
        commits_made = env.info()["last_txnid"] - before
    finally:
        env.close()
        for conn in conns:
            conn.close()
    assert [answer.status for answer in answers] == [200] * len(batches)
    assert all([item["s"] for item in unpackb(answer.body)] == ["stored"] * 100
               for answer in answers)
    assert commits_made < len(batches), commits_made
    with requests.Session() as session:
        for batch in batches:
            key = batch[-1].key
            assert session.get(f"{node.url}/v1/record", params={"key": key}).status_code == 200


def _send(conn: http1.Connection, method: str, target: str, data: bytes | None) -> None:
    headers = {"Content-Type": MSGPACK} if data else {}
    conn.send(method, target, data, headers, time.monotonic() + 30, 1 << 20)
