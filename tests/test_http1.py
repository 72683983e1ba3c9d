"""sdht.http1: the client's HTTP/1.1 exchange reads what http.client read, and no more.

Answers go over a real socket pair, sent in pieces from a thread; http.client, which the
transport used before, is the reference for every well-formed answer (hypothesis)."""
from __future__ import annotations

import http.client
import io
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdht import http1

LIMIT = 1 << 20
TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
                min_size=1, max_size=12)
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=30)
FRAMED = ("content-length", "transfer-encoding", "connection", "keep-alive")


class Peer:
    """A connection whose other end sends ``pieces`` (bytes, or a float: seconds of pause) once
    the request has arrived, then closes when ``close``; what it received is :attr:`request`."""

    def __init__(self, pieces: list, close: bool = True) -> None:
        ours, self.theirs = socket.socketpair()
        self.conn = http1.Connection("127.0.0.1", 1, 1.0)
        self.conn.sock = ours
        self.request = b""
        self.thread = threading.Thread(target=self._play, args=(pieces, close), daemon=True)
        self.thread.start()

    def _play(self, pieces: list, close: bool) -> None:
        self.theirs.settimeout(10)
        try:
            while b"\r\n\r\n" not in self.request:
                self.request += self.theirs.recv(65536)
            for piece in pieces:
                if isinstance(piece, float):
                    time.sleep(piece)   # the node's pace, which the client must not depend on
                else:
                    self.theirs.sendall(piece)
            if close:
                self.theirs.shutdown(socket.SHUT_WR)
        except OSError:
            pass   # the client gave up and closed: what a node sees

    def ask(self, method: str = "GET", seconds: float = 5.0, limit: int = LIMIT,
            target: str = "/v1/record?key=k", body: bytes | None = None,
            headers: dict | None = None) -> http1.Answer:
        """One exchange; then both ends are closed."""
        try:
            return self.conn.exchange(method, target, body, headers or {},
                                      time.monotonic() + seconds, limit)
        finally:
            self.conn.close()
            self.thread.join(10)
            self.theirs.close()


def reference(data: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """What http.client reads of ``data``: status, headers (joined, by lower-case name) and
    body."""
    class Sock:
        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(data)

    resp = http.client.HTTPResponse(Sock(), method=method)  # type: ignore[arg-type]
    resp.begin()
    headers = {name.lower(): ", ".join(v.strip(" \t") for v in resp.headers.get_all(name))
               for name in resp.headers.keys()}
    return resp.status, headers, resp.read()


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A well-formed answer as a node may frame it, and the pieces it is sent in."""
    status = draw(st.sampled_from([200, 201, 204, 400, 404, 409, 413, 500, 503]))
    fields = draw(st.lists(st.tuples(TOKEN.filter(lambda n: n.lower() not in FRAMED), VALUE),
                           max_size=8))
    body = b"" if status == 204 else draw(st.binary(max_size=3000))
    framing = draw(st.sampled_from(["length", "chunked"]))
    interim = draw(st.booleans())
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    head += [f"{n}: {v}" for n, v in fields]
    if status == 204:
        payload = b""
    elif framing == "length":
        head.append(f"Content-Length: {len(body)}")
        payload = body
    else:
        head.append("Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        payload = b"".join(b"%x\r\n%s\r\n" % (b - a, body[a:b]) for a, b in
                           zip([0] + cuts, cuts + [len(body)]) if b > a) + b"0\r\n\r\n"
    data = (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + \
        "\r\n".join(head).encode() + b"\r\n\r\n" + payload
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return data, [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


@settings(max_examples=150, deadline=None)
@given(answers())
def test_a_well_formed_answer_reads_as_http_client_read_it(answer):
    data, pieces = answer
    got = Peer(pieces, close=False).ask()
    assert (got.status, got.headers, got.body) == reference(data)
    assert not got.close


def test_the_request_is_one_plain_http_1_1_request():
    peer = Peer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert peer.ask("PUT", target="/v1/record", body=b"body",
                    headers={"Content-Type": "application/msgpack"}).body == b"ok"
    assert peer.request == (b"PUT /v1/record HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"
                            b"Content-Length: 4\r\nContent-Type: application/msgpack\r\n\r\nbody")


@pytest.mark.parametrize("target, headers", [
    ("/v1/record?key=a b", {}),
    ("/v1/record\r\nX-Evil: 1", {}),
    ("/v1/record", {"X-A": "1\r\nX-Evil: 1"}),
    ("/v1/record", {"X-A\n": "1"}),
])
def test_a_request_that_would_split_is_not_sent(target, headers):
    ours, theirs = socket.socketpair()
    conn = http1.Connection("127.0.0.1", 1, 1.0)
    conn.sock = ours
    with pytest.raises(http1.Unsendable):
        conn.exchange("GET", target, None, headers, time.monotonic() + 5, LIMIT)
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(10)   # nothing was sent
    conn.close()
    theirs.close()


def test_a_bracketed_ipv6_host_is_reached_without_its_brackets():
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    with listener:
        conn = http1.Connection("[::1]", listener.getsockname()[1], 5.0)
        conn.connect()
        peer, _ = listener.accept()
        with peer:
            peer.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            got = conn.exchange("GET", "/", None, {}, time.monotonic() + 5, LIMIT)
            assert got.status == 204 and peer.recv(200).split(b"\r\n")[1] == (
                b"Host: [::1]:%d" % listener.getsockname()[1])
        conn.close()


def test_one_connection_carries_request_after_request():
    ours, theirs = socket.socketpair()
    conn = http1.Connection("127.0.0.1", 1, 1.0)
    conn.sock = ours
    for i in range(3):
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i)
        got = conn.exchange("GET", "/", None, {}, time.monotonic() + 5, LIMIT)
        assert (got.body, got.close) == (b"%d" % i, False)
    conn.close()
    theirs.close()


@pytest.mark.parametrize("data, close", [
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK", True),   # unasked bytes
    (b"HTTP/1.1 200 OK\r\n\r\nto the end", True),                             # close-framed
])
def test_when_the_connection_closes_after_an_answer(data, close):
    assert Peer([data]).ask().close is close


def test_a_head_answer_and_a_304_have_no_body():
    assert Peer([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"]).ask("HEAD").body == b""
    assert Peer([b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"]).ask().body == b""


@pytest.mark.parametrize("data", [
    b"garbage\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",                # obsolete line folding
    b"HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",  # no CRLF after it
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * (http1.MAX_FIELDS + 1) + b"\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * http1.MAX_HEAD + b"\r\n\r\n",
])
def test_an_answer_that_is_not_http_1_1_is_malformed(data):
    """(Each is cut to its first 30 bytes in the test's id.)"""
    with pytest.raises(http1.Malformed):
        Peer([data]).ask()


def test_a_head_that_never_ends_is_cut_off_at_its_limit():
    peer = Peer([b"HTTP/1.1 200 OK\r\n"] + [b"X-A: " + b"a" * 1000 + b"\r\n"] * 200)
    with pytest.raises(http1.Malformed):
        peer.ask()
    assert peer.conn.received < 2 * http1.MAX_HEAD


CHUNK = b"3000\r\n" + bytes(0x3000) + b"\r\n"


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n",   # announced: nothing read
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNK * 2,
    b"HTTP/1.1 200 OK\r\n\r\n" + bytes(1 << 15),
], ids=["announced", "chunked", "close-framed"])
def test_a_body_past_the_limit_is_too_large(data):
    with pytest.raises(http1.TooLarge):
        Peer([data]).ask(limit=1 << 14)


def test_endless_small_chunks_end_at_the_wire_budget():
    chunks = b"1\r\na\r\n" * 50_000
    with pytest.raises(http1.TooLarge):
        Peer([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"] + [chunks] * 4).ask(
            limit=1 << 14)


def test_a_trickling_node_cannot_hold_the_request_past_its_deadline():
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        Peer([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"] + [0.1, b"a"] * 50).ask(
            seconds=0.5)
    assert time.monotonic() - began < 2


@pytest.mark.parametrize("data", [
    b"",
    b"HTTP/1.1 200 OK\r\nContent-",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
])
def test_a_node_that_closes_before_its_answer_is_whole_reset_it(data):
    peer = Peer([data])
    with pytest.raises(ConnectionResetError):
        peer.ask()
    assert peer.conn.received == len(data)


@settings(max_examples=150, deadline=None)
@given(answers())
def test_whole_is_true_once_a_length_framed_answer_is_all_in_and_never_before(answer):
    """What sdht.fanout relies on: ``whole()`` is never True before the last byte of an answer
    framed by Content-Length, True once it is in, None for another framing; ``answer()`` then
    reads it from what arrived, without waiting for the node (which sends nothing more)."""
    data, pieces = answer
    ours, theirs = socket.socketpair()
    conn = http1.Connection("127.0.0.1", 1, 1.0)
    conn.sock = ours
    try:
        conn.send("GET", "/v1/record?key=k", None, {}, time.monotonic() + 5, LIMIT)
        theirs.recv(65536)
        sent, whole = 0, False
        for piece in pieces:
            theirs.sendall(piece)   # a socket pair: in our buffer once sent
            sent += len(piece)
            conn.pull()
            whole = conn.whole()
            if sent < len(data):
                assert whole is not True
        length_framed = b"\r\nContent-Length:" in data and not data.startswith(b"HTTP/1.1 1")
        assert whole is (True if length_framed else None)
        got = conn.answer("GET")
        assert (got.status, got.headers, got.body) == reference(data)
    finally:
        conn.close()
        theirs.close()


@pytest.mark.parametrize("data, whole", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcd", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", False),
    (b"HTTP/1.1 200 OK\r\ncontent-length:\t5 \r\n\r\nabcde", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nabcde", None),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nabcde", None),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * http1.MAX_HEAD, None),
])
def test_whole_leaves_to_answer_what_it_cannot_tell_simply(data, whole):
    ours, theirs = socket.socketpair()
    conn = http1.Connection("127.0.0.1", 1, 1.0)
    conn.sock = ours
    try:
        conn.send("GET", "/", None, {}, time.monotonic() + 5, LIMIT)
        theirs.sendall(data)
        for _ in range(1 + len(data) // http1.RECV_BYTES):
            conn.pull()
        assert conn.whole() is whole
    finally:
        conn.close()
        theirs.close()
