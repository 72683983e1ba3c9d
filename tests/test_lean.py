"""The lean lane of the node's worker (storage/lean.py): it reads a plain request exactly as
gunicorn does, leaves every other to gunicorn, and a node answers byte for byte the same with
the lane on as with it off (``SDHT_LEAN=0``)."""
from __future__ import annotations

import re
import socket
import time

import gunicorn
import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi as gwsgi
from gunicorn.http.parser import RequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdht.pow import mint
from storage import lean

CLIENT, SERVER = ("127.0.0.1", 40123), ("127.0.0.1", 8000)


def config() -> Config:
    cfg = Config()
    cfg.set("workers", 2)
    return cfg


CFG = config()
LIMITS = lean.limits_of(CFG)


# -- the differential test: gunicorn's parser and wsgi.create against the lane's ---------------

def gunicorn_read(data: bytes, sock: socket.socket) -> tuple[dict, bytes] | None:
    """gunicorn's environ for the first request in ``data`` and the bytes after its body, or
    None when gunicorn refuses it."""
    parser = RequestParser(CFG, iter([data]), CLIENT)
    try:
        req = next(parser)
        _, environ = gwsgi.create(req, sock, CLIENT, SERVER, CFG)
        body = req.body.read()
    except Exception:
        return None
    environ["wsgi.input"] = body
    rest = parser.unreader.buf.getvalue() + b"".join(parser.unreader.iter or ())
    return environ, rest


def lean_read(data: bytes, sock: socket.socket) -> tuple[dict, bytes] | None:
    parsed = lean.parse(data, data.find(b"\r\n\r\n"), LIMITS)
    if parsed is None:
        return None
    req, rest = parsed
    resp = gwsgi.Response(req, sock, CFG)
    environ = lean.environ(req, gwsgi.base_environ(CFG), sock, CLIENT, SERVER, resp)
    environ["wsgi.input"] = environ["wsgi.input"].read()
    return environ, rest


#: gunicorn before 21 (Debian bookworm's 20.1, what the .deb runs) keeps the spaces after a
#: header's value, which RFC 9110 (5.5) leaves out of it; the lane leaves them out, as gunicorn
#: 21 and later do. That is the one difference the comparison allows there.
KEEPS_TRAILING_SPACE = tuple(int(part) for part in gunicorn.__version__.split(".")[:2]) < (21, 0)


def comparable(environ: dict) -> dict:
    """The environ with its per-request objects replaced by what must match: their types (and,
    under gunicorn 20, header values without trailing spaces: KEEPS_TRAILING_SPACE)."""
    out = dict(environ)
    out["wsgi.errors"] = type(environ["wsgi.errors"])
    if "wsgi.early_hints" in out:
        out["wsgi.early_hints"] = callable(environ["wsgi.early_hints"])
    if KEEPS_TRAILING_SPACE:
        for name, value in environ.items():
            if name.startswith("HTTP_") or name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                out[name] = value.rstrip(" \t")
    return out


TOKEN = "!#$%&'*+-.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7f))
names = st.one_of(
    st.sampled_from(["Host", "User-Agent", "Accept", "Content-Type", "X-SDHT-Epoch", "Cookie",
                     "Accept-Encoding", "Authorization", "connection", "X-A", "x-a"]),
    st.text(TOKEN, min_size=1, max_size=12))
values = st.text(PRINTABLE + " \t", max_size=40)
# The target: origin-form with percent escapes, odd characters, queries; plus a few not so.
segments = st.text(PRINTABLE.replace("?", "").replace("#", ""), max_size=12)
targets = st.one_of(
    st.builds(lambda parts, q: "/" + "/".join(parts) + (("?" + q) if q is not None else ""),
              st.lists(segments, max_size=4), st.none() | st.text(PRINTABLE, max_size=20)),
    st.sampled_from(["/", "//x/y", "/a#frag", "*", "http://h/x", "/%41%2f%zz?%20=1", "/a?b?c",
                     "/é", "/a b"]))


@st.composite
def plain_requests(draw) -> bytes:
    """Requests the lane should serve: each header name once, ASCII, framing by length."""
    method = draw(st.sampled_from(sorted(m.decode() for m in lean.METHODS)))
    target = draw(targets.filter(lambda t: t.startswith("/") and not t.startswith("//")
                                 and "#" not in t and " " not in t and t.isascii()))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    headers = draw(st.lists(st.tuples(names.filter(lambda n: "_" not in n), values),
                            max_size=8, unique_by=lambda h: h[0].upper()))
    headers = [(n, v) for n, v in headers if n.upper() not in lean.DIVERTED | {
        "CONTENT-LENGTH", "CONNECTION", *LIMITS.scheme_headers}]
    connection = draw(st.sampled_from([None, "close", "keep-alive", "Keep-Alive", " close "]))
    if connection:
        headers.append(("Connection", connection))
    body = draw(st.binary(max_size=30))
    if body or draw(st.booleans()):
        headers.append(("Content-Length", str(len(body))))
    trailing = draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"garbage"]))
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}:{v}\r\n" for n, v in headers)
    return (head + "\r\n").encode("latin-1") + body + trailing


@st.composite
def odd_requests(draw) -> bytes:
    """Anything near a request: odd methods, versions, targets, names, values, separators,
    duplicates, spaces before colons, folded lines, framing headers, bytes over 0x7f."""
    method = draw(st.sampled_from(["GET", "PUT", "POST", "HEAD", "get", "FOO", "CONNECT",
                                   "TRACE", "G ET", ""]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1",
                                    "HTTP/1.1 ", "HTTP/0.9"]))
    extra = st.sampled_from([("Transfer-Encoding", "chunked"), ("Content-Length", "3"),
                             ("Content-Length", "+3"), ("Content-Length", "03"),
                             ("Expect", "100-continue"), ("Upgrade", "h2c"),
                             ("Connection", "upgrade"), ("X-Forwarded-Proto", "https"),
                             ("X_A", "1"), ("X-A ", "1"), (" X-A", "1"), ("X-A", "a\x80b"),
                             ("X-A", "a\x01b"), ("SCRIPT_NAME", "/x"), ("Host", "h")])
    headers = draw(st.lists(st.one_of(st.tuples(names, values), extra), max_size=6))
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    lines = [f"{draw(st.sampled_from(['', '', '', chr(13) + chr(10)]))}{method} "
             f"{draw(targets)} {version}"]
    lines += [f"{n}:{v}" if not draw(st.integers(0, 9)) == 0 else f" {v}" for n, v in headers]
    return (eol.join(lines) + "\r\n\r\n").encode("latin-1") + draw(st.binary(max_size=8))


@pytest.fixture(scope="module")
def sock():
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=plain_requests())
def test_the_lane_reads_a_plain_request_as_gunicorn_does(data, sock):
    theirs, ours = gunicorn_read(data, sock), lean_read(data, sock)
    assert theirs is not None, data
    assert ours is not None, data                  # plain: the lane serves it
    assert comparable(ours[0]) == comparable(theirs[0])
    assert ours[1] == theirs[1]                     # a pipelined request is left as it was


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=odd_requests())
def test_what_the_lane_takes_gunicorn_takes_and_reads_the_same(data, sock):
    ours = lean_read(data, sock)
    if ours is None:
        return                                       # gunicorn's way, as before
    theirs = gunicorn_read(data, sock)
    assert theirs is not None, data                  # never more lenient than gunicorn
    assert comparable(ours[0]) == comparable(theirs[0])
    assert ours[1] == theirs[1]


HOSTILE = [
    b"GET /v1/record?key=k1 HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",                         # obs-fold
    b"POST /v1/records/get HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"GET /v1/record?key=k1 HTTP/1.1\r\nHost : x\r\n\r\n",                              # space before colon
    b"GET /v1/record?key=k1 HTTP/1.1\r\nHo(st: x\r\n\r\n",                              # not a token
    b"GET /v1/record?key=k1 HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",                           # control character
    b"GET /v1/record?key=k1 HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    b"GET /v1/record?key=k1 HTTP/1.1\nHost: x\r\n\r\n",                                 # bare LF
    b"GET http://h/v1/record?key=k1 HTTP/1.1\r\n\r\n",                                  # absolute form
    b"GET //h/ HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
    b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",                      # over limit_request_line
    b"GET /v1/record?key=k1 HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",            # over the field size
    b"GET /v1/record?key=k1 HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
    b"POST /v1/records/get HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/records/get HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/records/get HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/records/get HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    b"GET /v1/record?key=k1 HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /v1/record?key=k1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /v1/record?key=k1 HTTP/1.1\r\nX_Forwarded_For: 1\r\n\r\n",
    b"GET /v1/record?key=k1 HTTP/1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"\r\nGET /v1/record?key=k1 HTTP/1.1\r\n\r\n",
    b"GET /v1/record?key=k1  HTTP/1.1\r\n\r\n",
    b"get /v1/record?key=k1 HTTP/1.1\r\n\r\n",   # lowercase: gunicorn 20 serves it, 21+ refuse
    b"GET /v1/record?key=k1 HTTP/1.1\r\nX-A: caf\xe9\r\n\r\n",
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_heads_go_gunicorns_way(data):
    assert lean.parse(data, data.find(b"\r\n\r\n"), LIMITS) is None


@pytest.mark.parametrize("head, loop", [
    (b"GET /v1/record?key=k1 HTTP/1.1", True),
    (b"PUT /v1/record HTTP/1.1", True),
    (b"POST /v1/names/prepare HTTP/1.1", True),
    (b"POST /v1/names/accept HTTP/1.1", True),
    (b"POST /v1/records HTTP/1.1", False),          # a batch: many commits' worth
    (b"POST /v1/names/register HTTP/1.1", False),   # a round to peers
    (b"PUT /kv-store/keys/k1 HTTP/1.1", False),      # the gateway: a quorum of peers
    (b"GET /v1/health HTTP/1.1", False),
    (b"DELETE /v1/record?key=k1 HTTP/1.1", False),
])
def test_the_loop_serves_only_one_record_and_the_phases(head, loop):
    """The event loop's thread serves a request whose whole work is one local read or commit;
    what waits on peers or does many commits goes to the pool (storage.lean.inline)."""
    data = head + b"\r\nContent-Length: 0\r\n\r\n"
    request, _ = lean.parse(data, data.find(b"\r\n\r\n"), LIMITS)
    assert lean.inline(request) is loop


def test_the_switch_and_settings_the_lane_does_not_follow_turn_it_off(monkeypatch):
    assert lean.limits_of(config()) is not None
    monkeypatch.setenv(lean.SWITCH, "0")
    assert lean.limits_of(config()) is None
    monkeypatch.delenv(lean.SWITCH)
    for name, value in [("accesslog", "-"), ("proxy_protocol", True),
                        ("limit_request_line", 0)]:
        cfg = config()
        cfg.set(name, value)
        assert lean.limits_of(cfg) is None, name


# -- end to end: a node with the lane and one without answer the same bytes -----------------------

DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def conversation(port: int, items: list[bytes], deadline: float = 10.0) -> bytes:
    """Send ``items`` on one connection, each once the answer to the one before is in, and read
    after the last one until the node closes the connection."""
    out = b""
    end = time.monotonic() + deadline
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as s:
        for i, data in enumerate(items):
            s.sendall(data)
            if i == len(items) - 1:
                while time.monotonic() < end:
                    piece = s.recv(65536)
                    if not piece:
                        return out
                    out += piece
                raise TimeoutError("the node kept the connection open")
            out += one_answer(s, end, head_only=data.startswith(b"HEAD"))
            if b"\r\nConnection: close\r\n" in out.rpartition(b"HTTP/1.")[2]:
                break                                # the node refused and closes
    return out


def one_answer(s: socket.socket, end: float, head_only: bool = False) -> bytes:
    """Read one answer (its Content-Length's worth of body, after any 100 Continue) from ``s``."""
    answer = b""
    while b"\r\n\r\n" not in answer and time.monotonic() < end:
        answer += s.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 100 "):
        return head + b"\r\n\r\n" + one_answer_from(s, body, end, head_only)
    length = 0 if head_only else int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(body) < length and time.monotonic() < end:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def one_answer_from(s: socket.socket, got: bytes, end: float, head_only: bool) -> bytes:
    """:func:`one_answer`, with ``got`` of it already read."""
    class Ahead:
        def recv(self, n: int) -> bytes:
            nonlocal got
            if got:
                piece, got = got, b""
                return piece
            return s.recv(n)
    return one_answer(Ahead(), end, head_only)  # type: ignore[arg-type]


def normal(answer: bytes, node) -> bytes:
    return DATE.sub(b"\r\nDate: -\r\n", answer).replace(node.id.encode(), b"NODE")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from conftest import NodeProcess
    tmp = tmp_path_factory.mktemp("lean")
    nodes = [NodeProcess(tmp / "off", env={lean.SWITCH: "0"}), NodeProcess(tmp / "on")]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def record_put(key: str, close: bool = False) -> bytes:
    body = mint(key, b"v" * 100, 3.0).pack()
    return (b"PUT /v1/record HTTP/1.1\r\nHost: n\r\nContent-Type: application/msgpack\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n" if close
                                                else b"")) + body


GET = b"GET /v1/record?key=%s HTTP/1.1\r\nHost: n\r\n\r\n"
CLOSE = b"GET /v1/record?key=zz HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n"
CONVERSATIONS = {
    "put, then a read and a miss kept alive": [record_put("k1"), GET % b"k1", GET % b"none",
                                               CLOSE],
    "the same put again": [record_put("k1", close=True)],
    "pipelined in one send": [b"".join([record_put("k2"), GET % b"k2", GET % b"k1", CLOSE])],
    "HTTP/1.0": [b"GET /v1/record?key=k1 HTTP/1.0\r\n\r\n"],
    "HTTP/1.0 kept alive": [b"GET /v1/record?key=k1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                            CLOSE],
    "HEAD": [b"HEAD /v1/record?key=k1 HTTP/1.1\r\nHost: n\r\n\r\n", CLOSE],
    "an unknown route and a bad method": [b"GET /nope HTTP/1.1\r\n\r\n",
                                          b"PATCH /v1/record HTTP/1.1\r\n\r\n", CLOSE],
    "a batch read": [b"POST /v1/records/get HTTP/1.1\r\nContent-Type: application/msgpack\r\n"
                     b"Content-Length: 7\r\n\r\n\x92\xa2k1\xa2k2", CLOSE],
    "a body that is not msgpack": [b"PUT /v1/record HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                                   CLOSE],
    "a percent-encoded path and query": [b"GET /v1/%72ecord?key=k%31 HTTP/1.1\r\n\r\n", CLOSE],
    **{f"hostile {i}": [data, CLOSE] for i, data in enumerate(HOSTILE)},
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_a_node_answers_byte_for_byte_as_without_the_lane(pair, name):
    off, on = pair
    answers = []
    for node in pair:
        answers.append(normal(conversation(node.port, CONVERSATIONS[name]), node))
    assert answers[0] and answers[0] == answers[1]


def test_a_kept_alive_connection_serves_request_after_request(pair):
    _, on = pair
    with socket.create_connection(("127.0.0.1", on.port), timeout=10) as s:
        for i in range(20):
            s.sendall(GET % b"k1")
            head = one_answer(s, time.monotonic() + 10).partition(b"\r\n\r\n")[0]
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in head, i


def test_a_client_that_does_not_read_a_big_answer_holds_up_no_other(pair):
    """GET /v1/record is served in the event loop's thread; an answer the socket does not take
    at once goes on from a thread, so other connections are answered meanwhile, and the slow
    reader gets every byte in order when it reads."""
    _, on = pair
    value = b"b" * 900_000
    body = mint("big", value, 3.0).pack()
    put = (b"PUT /v1/record HTTP/1.1\r\nContent-Type: application/msgpack\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    assert conversation(on.port, [put]).startswith(b"HTTP/1.1 201")
    assert conversation(on.port, [record_put("small", close=True)]).startswith(b"HTTP/1.1 201")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(10)
    slow.connect(("127.0.0.1", on.port))
    with slow:
        for _ in range(4):
            slow.sendall(GET % b"big")
        with socket.create_connection(("127.0.0.1", on.port), timeout=10) as other:
            for _ in range(10):
                began = time.monotonic()
                other.sendall(GET % b"small")
                head = one_answer(other, began + 10).partition(b"\r\n\r\n")[0]
                assert head.startswith(b"HTTP/1.1 200") and time.monotonic() - began < 2
        got, end = b"", time.monotonic() + 20
        while len(answers_in(got)) < 4 and time.monotonic() < end:
            got += slow.recv(1 << 20)
        answers = answers_in(got)
        assert len(answers) == 4 and all(a.startswith(b"HTTP/1.1 200") and a.count(value) == 1
                                         for a in answers)


def answers_in(data: bytes) -> list[bytes]:
    """The whole answers at the start of ``data``, each by its Content-Length."""
    out = []
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        if len(rest) < length:
            break
        out.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return out
