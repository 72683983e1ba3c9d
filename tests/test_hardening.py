"""Slow and heavy clients cannot stall a node (docs/security.md, "Slow and heavy clients").

Each attack an outside test found becomes a test against real gunicorn nodes: slowloris sockets
and stalled uploads while normal reads go on, a chunked body past the size limit, a hash-tree
request that asked for seconds of CPU, and the control socket every node shared. Then the
pieces on their own: the worker's request framing (storage.limits.Incoming), the body
middleware, and the answer byte caps of the batch routes.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import select
import socket
import time
from pathlib import Path

import pytest
import requests

from sdht.pow import mint
from sdht.wire import MAX_TREE_RANGES, RING_SIZE, packb, unpackb
from storage import limits
from storage.app import create_app
from storage.limits import Incoming, Refused
from storage.server import has_control_socket

MSGPACK = {"Content-Type": "application/msgpack"}


# -- helpers: raw sockets and the node's worker processes -----------------------------------------

def connect(node, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=timeout)


def answer_of(sock: socket.socket, timeout: float) -> bytes:
    """Everything ``sock`` receives until the node closes it, or ``timeout`` seconds."""
    data, ends = b"", time.monotonic() + timeout
    while time.monotonic() < ends:
        ready, _, _ = select.select([sock], [], [], max(0.0, ends - time.monotonic()))
        if not ready:
            break
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    return data


def workers(node) -> list[int]:
    """PIDs of the node's gunicorn workers (children of its master)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == node.proc.pid:
                    pids.append(int(entry.name))
    assert pids, "the node has no workers"
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """The most memory (bytes) the process has held at once (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def put_record(node, key: str) -> None:
    resp = requests.put(f"{node.url}/v1/record", data=mint(key, "value", 3.0).pack(),
                        headers=MSGPACK, timeout=10)
    assert resp.status_code == 201, resp.text


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


# -- slow clients ---------------------------------------------------------------------------------

def test_slowloris_and_stalled_uploads_leave_reads_answering_within_a_second(start_node):
    """200 sockets sending a header byte a second and 8 uploads that declare 60 MB and stop
    after 1 MB made every GET time out: gthread gave each a thread. Now reads answer at once."""
    node = start_node()
    put_record(node, "k")
    socks: list[socket.socket] = []
    try:
        for _ in range(200):
            socks.append(connect(node))
        for _ in range(8):
            up = connect(node)
            socks.append(up)
            up.sendall(b"PUT /v1/record HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack"
                       b"\r\nContent-Length: 60000000\r\n\r\n")
            up.sendall(bytes(1_000_000))
        slow_head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
        latencies = []
        ends = time.monotonic() + 8   # under READ_TIMEOUT (10 s): every attacker stays open
        for i in range(100):
            if time.monotonic() > ends:
                break
            began = time.monotonic()
            for sock in socks[:200]:
                with contextlib.suppress(OSError):
                    sock.send(slow_head[i:i + 1])
            for path in ("/v1/health", "/v1/record?key=k"):
                sent = time.monotonic()
                resp = requests.get(node.url + path, timeout=1)
                latencies.append(time.monotonic() - sent)
                assert resp.status_code == 200
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        assert len(latencies) >= 10 and max(latencies) < 1.0, latencies
    finally:
        for sock in socks:
            sock.close()
    assert node.healthy()


def test_slow_and_stalled_clients_get_408_and_are_closed(start_node):
    """A head that never ends and an upload that stops are answered 408 after READ_TIMEOUT."""
    node = start_node(env={"SDHT_READ_TIMEOUT": "1.5"})
    with connect(node) as slow, connect(node) as stalled, connect(node) as quiet:
        slow.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        stalled.sendall(b"PUT /v1/record HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
        began = time.monotonic()
        for sock in (slow, stalled):
            answer = answer_of(sock, 10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b'"error": "request_timeout"' in answer
        assert answer_of(quiet, 10) == b""           # it sent nothing: closed without a word
        assert time.monotonic() - began < 8


# -- heavy bodies ---------------------------------------------------------------------------------

@needs_proc
def test_a_chunked_body_is_cut_at_the_limit_without_buffering_past_it(start_node):
    """A chunked upload bypassed the 413: the node read 68 MB and a worker grew by 90 MB."""
    limit = 16 << 20
    node = start_node(env={"SDHT_MAX_BODY_BYTES": str(limit)})
    pids = workers(node)
    before = {pid: peak_rss(pid) for pid in pids}
    chunk = b"%x\r\n" % (256 << 10) + bytes(256 << 10) + b"\r\n"
    with connect(node, timeout=10) as sock:
        sock.sendall(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack"
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        with contextlib.suppress(OSError):   # the node may reset a sender that will not stop
            while sent < 96 << 20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += len(chunk)
        answer = answer_of(sock, 10)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert set(json.loads(body)) == {"error", "message"}
    assert sent < 96 << 20, "the node read the whole oversized body"
    # What the worker held at most: the limit, one read past it and the chunk framing, and a
    # little of its own besides (it grew by 90 MB reading 68 MB before).
    growth = max(peak_rss(pid) - before[pid] for pid in pids)
    assert growth <= limit + (4 << 20), f"a worker grew by {growth >> 20} MiB for a " \
        f"{limit >> 20} MiB limit"
    assert node.healthy()


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(start_node):
    node = start_node(env={"SDHT_MAX_BODY_BYTES": "65536"})
    with connect(node) as sock:
        sock.sendall(b"PUT /v1/record HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n")
        answer = answer_of(sock, 5)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"body_too_large" in answer
    assert b"X-SDHT-Epoch: 0" in answer   # like every answer of the node


# -- heavy requests -------------------------------------------------------------------------------

@needs_proc
def test_a_hash_tree_request_costs_bounded_cpu(start_node):
    """One 124 KB POST /v1/tree cost 10 s of CPU: every listed node against every range."""
    node = start_node()
    pids = workers(node)
    step = RING_SIZE // MAX_TREE_RANGES
    ranges = [[i * step, i * step + 10] for i in range(MAX_TREE_RANGES)]
    leaves = random.Random(5).sample(range(16 ** 4), 10_000)
    costly = {"list": [[0, 0]] * 10_000, "ranges": ranges}
    largest = {"nodes": [[4, i] for i in leaves], "list": [[4, i] for i in leaves],
               "ranges": ranges}
    for body, status in ((costly, 413), (largest, 200)):
        cpu = cpu_seconds(pids)
        resp = requests.post(f"{node.url}/v1/tree", data=packb(body), headers=MSGPACK,
                             timeout=10)
        used = cpu_seconds(pids) - cpu
        assert resp.status_code == status, resp.text[:200]
        assert used < 0.5, f"{used:.2f} s of CPU for one tree request"
    assert resp.status_code == 200 and len(unpackb(resp.content)["entries"]) == 10_000
    assert requests.post(f"{node.url}/v1/tree", data=packb(costly), headers=MSGPACK,
                         timeout=10).json()["error"] == "tree_too_costly"


# -- the control socket ---------------------------------------------------------------------------

def test_each_node_has_its_own_control_socket_or_none(start_node, tmp_path):
    """gunicorn 25.1+ put every node's control socket at one path (~/.gunicorn/gunicorn.ctl)."""
    plain = start_node()
    log = Path(plain.log.name)
    assert "Booting worker" in log.read_text()
    assert "Control socket" not in log.read_text()
    if not has_control_socket():
        return
    path = tmp_path / "node.ctl"
    own = start_node(env={"SDHT_CONTROL_SOCKET": str(path)})
    for _ in range(100):   # the master opens it once it is up
        if path.exists():
            break
        time.sleep(0.05)
    assert path.exists() and str(path) in Path(own.log.name).read_text()


# -- the pieces -----------------------------------------------------------------------------------

def whole(data: bytes, limit: int = 1000, step: int | None = None) -> bool:
    """Feed ``data`` to an Incoming, ``step`` bytes at a time (all at once by default)."""
    incoming, now = Incoming(limit, 10.0, 0.0), 0.0
    step = step or len(data)
    done = False
    for i in range(0, len(data), step):
        incoming.add(data[i:i + step], now)
        done = incoming.whole(now)
    return done


CHUNKED = (b"POST /v1/records HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: yes\r\n\r\n")


@pytest.mark.parametrize("step", [None, 1, 7])
def test_incoming_knows_when_a_request_is_whole(step):
    head = b"PUT /v1/record HTTP/1.1\r\nContent-Length: 4\r\n\r\n"
    assert whole(head + b"abcd", step=step) and not whole(head + b"abc", step=step)
    assert whole(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", step=step)
    assert not whole(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n", step=step)
    assert whole(CHUNKED, step=step) and not whole(CHUNKED[:-1], step=step)


@pytest.mark.parametrize("data,status", [
    (b"GET / HTTP/1.1\r\nX: " + b"x" * (70 << 10), 431),
    (b"PUT / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", 413),
    (b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", 400),
    # refused on the chunk's size, before its bytes come
    (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", 413),
    # chunk framing counts: a byte of body per kilobyte of chunk extension
    (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
     + (b"1;" + b"e" * 1000 + b"\r\nx\r\n") * 100, 413),
])
def test_incoming_refuses_what_it_cannot_take(data, status):
    with pytest.raises(Refused) as refused:
        whole(data, limit=1000)
    assert refused.value.status == status
    answer = refused.value.answer([("X-SDHT-Epoch", "3")])
    assert answer.startswith(b"HTTP/1.1 %d " % status) and b"\r\nX-SDHT-Epoch: 3\r\n" in answer


def test_incoming_deadlines_follow_the_body():
    incoming = Incoming(10 << 20, 10.0, 100.0, b"PUT / HTTP/1.1\r\nContent-Length: 9000000\r\n")
    assert incoming.deadline == 110.0 and not incoming.whole(105.0)   # the head: 10 s in all
    incoming.add(b"\r\n", 105.0)
    assert not incoming.whole(105.0) and incoming.deadline == 115.0   # the body starts
    incoming.add(bytes(1 << 20), 106.0)
    assert incoming.deadline == 116.0                                 # a pause of 10 s at most
    incoming.add(b"x", 125.0)                                         # ...and MIN_RATE overall
    assert incoming.deadline == 105.0 + 10.0 + ((1 << 20) + 1) / limits.MIN_RATE


def test_the_middleware_reads_bodies_under_the_cap():
    def environ(body: bytes, **extra) -> dict:
        return {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)), **extra}

    env = environ(b"abc")
    assert limits.read_body(env, 10, 1.0) is None and env["wsgi.input"].read() == b"abc"
    env = environ(b"x" * 11, CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked")
    stream = env["wsgi.input"]
    assert limits.read_body(env, 10, 1.0)[:2] == (413, "body_too_large")
    assert getattr(stream, limits.CLOSE) and env["wsgi.input"].read() == b""
    assert limits.read_body(environ(b"x" * 11), 10, 1.0)[0] == 413


@pytest.fixture
def small(tmp_path):
    """An app that answers at most 4000 bytes of entries, holding 20 records of ~500 bytes."""
    app = create_app({"DATA_DIR": str(tmp_path / "small"), "MAX_ANSWER_BYTES": 4000,
                      "PARAMS": {"min_work": 0.0}})
    client = app.test_client()
    for i in range(20):
        resp = client.put("/v1/record", data=mint(f"k{i}", "v" * 500, 0.0).pack(),
                          headers=MSGPACK)
        assert resp.status_code == 201
    return client


def test_a_range_page_ends_at_the_answer_cap_and_resumes(small):
    seen, after, pages = [], "", 0
    while pages < 20:
        resp = small.get(f"/v1/range?start=0&end={RING_SIZE}&limit=100"
                         + (f"&after={after}" if after else ""))
        assert resp.status_code == 200 and len(resp.data) < 4000 + 600
        page = unpackb(resp.data)
        seen += [rec["k"] for rec in page["records"]]
        pages += 1
        after = page["next"]
        if not after:
            break
    assert sorted(seen) == sorted(f"k{i}" for i in range(20)) and pages > 2


def test_batch_reads_past_the_answer_cap_are_refused(small):
    keys = [f"k{i}" for i in range(20)]
    resp = small.post("/v1/records/get", data=packb(keys), headers=MSGPACK)
    assert resp.status_code == 413 and resp.json["error"] == "answer_too_large"
    resp = small.post("/v1/records/get", data=packb(keys[:5]), headers=MSGPACK)
    assert resp.status_code == 200 and len(unpackb(resp.data)) == 5
    listed = unpackb(small.post("/v1/tree", data=packb({"list": [[0, 0]]}),
                                headers=MSGPACK).data)["entries"][0]
    refs = [ref for ref, _ in listed]
    assert len(refs) == 20
    assert small.post("/v1/entries/get", data=packb(refs), headers=MSGPACK).status_code == 413
    assert small.post("/v1/entries/get", data=packb(refs[:1]), headers=MSGPACK).status_code == 200


def test_a_tree_listing_ends_truncated_at_the_answer_cap(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "t"), "MAX_ANSWER_BYTES": 300,
                      "PARAMS": {"min_work": 0.0}})
    client = app.test_client()
    for i in range(20):
        client.put("/v1/record", data=mint(f"k{i}", "v", 0.0).pack(), headers=MSGPACK)
    answer = unpackb(client.post("/v1/tree", data=packb({"list": [[1, i] for i in range(16)]}),
                                 headers=MSGPACK).data)
    assert answer["truncated"] and 0 < sum(map(len, answer["entries"])) < 20
