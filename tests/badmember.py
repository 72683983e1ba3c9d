"""A fake bad ring member for tests: a real HTTP server on 127.0.0.1 that answers as told.

:class:`BadMember` speaks just enough of a storage node's routes (docs/design.md) to sit in a
ring, and misbehaves in the way its :attr:`BadMember.mode` names (:data:`MODES`). Forging modes
answer well-formed HTTP carrying records that must not be believed; HTTP modes break the
framing itself. Whatever it streams or trickles ends by itself (:data:`HOLD`, :data:`STREAM_CAP`)
and at :meth:`BadMember.stop`, so a client that does not cut it off fails its test instead of
hanging it. It counts the body bytes it got out (:attr:`BadMember.sent`) before the client left.
"""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sdht.kinds.common import work_target
from sdht.kinds.register import Record
from sdht.params import DEFAULTS
from sdht.pow import mint
from sdht.wire import EPOCH_HEADER, JSON, MSGPACK, now_us, packb, unpackb

#: The value of every record the bad member makes up: a client must never return it.
FORGED = "forged by the bad member"
TEN_YEARS_US = 10 * 365 * 86400 * 10**6
#: Longest a streaming or trickling answer lasts (seconds), and most bytes it sends.
HOLD = 8.0
STREAM_CAP = 256 << 20
#: One byte every this many seconds, in the trickling modes.
TRICKLE = 0.5

#: Modes whose reads answer well-formed records that must be refused.
FORGING = ("future", "other_key", "bad_work", "shape")
#: Modes that break HTTP itself or the body's encoding, on every route.
BROKEN = ("huge_length", "endless", "endless_chunked", "trickle", "trickle_head", "garbage",
          "content_type", "not_http", "many_headers", "long_line", "deep", "short_body")
#: Every mode: also ``superseded`` (claims to hold a higher version of every write), ``epoch``
#: (stamps a huge epoch on its answers and serves :attr:`BadMember.ring`) and ``drop_idle``
#: (closes every connection after answering, without saying so: the pool's connections go stale).
MODES = FORGING + BROKEN + ("superseded", "epoch", "drop_idle", "honest")


def forged_record(mode: str, key: str, params: dict[str, Any]) -> Any:
    """A record for ``key`` as forging ``mode`` makes it up (as its wire map)."""
    w = params["min_work"]
    if mode == "future":   # real work, dated ten years ahead
        return mint(key, FORGED, w, t=now_us() + TEN_YEARS_US).to_wire()
    if mode == "other_key":   # a valid record, of another key
        return mint("not " + key, FORGED, w).to_wire()
    if mode == "bad_work":   # declares work its digest does not show
        for _ in range(100):   # all but one digest in e**(w + 20) fails: the first, in practice
            rec = Record(key, FORGED, now_us(), w + 20, os.urandom(8))
            if int.from_bytes(rec.digest, "big") >= work_target(w + 20):
                return rec.to_wire()
        raise AssertionError("a hundred random digests all showed the work")
    return {"x": 0, "k": key, "v": FORGED}   # shape: fields missing


class BadMember:
    """A misbehaving member on a free loopback port, served by threads until :meth:`stop`.

    :param mode: one of :data:`MODES`; may be changed while it runs.
    :param params: the ring parameters its forged records are made for.
    """

    def __init__(self, mode: str = "honest", params: dict[str, Any] | None = None) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.params = {**DEFAULTS, **(params or {})}
        #: What ``GET /v1/ring`` answers (a JSON-ready dict), None for 404.
        self.ring: Any = None
        #: The epoch stamped on every answer in mode ``epoch``.
        self.epoch = 10**15
        self.sent = 0
        self.requests = 0
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.member = self   # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def id(self) -> str:
        """Its node id, ``127.0.0.1:port``."""
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "BadMember":
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """End every trickle and stream, stop serving and close the port."""
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the nodes: the client's pool is in play

    def log_message(self, *args: Any) -> None:   # quiet
        pass

    def do_GET(self) -> None:
        self._serve()

    do_PUT = do_POST = do_DELETE = do_GET

    @property
    def member(self) -> BadMember:
        return self.server.member   # type: ignore[attr-defined]

    def _serve(self) -> None:
        m = self.member
        m.requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = unpackb(raw) if raw and self.headers.get("Content-Type") == MSGPACK else None
        except ValueError:
            body = None
        if m.mode in BROKEN:
            return self._broken(m.mode)
        route = f"{self.command} {urlsplit(self.path).path}"
        status, answer = self._route(m, route, body)
        self._answer(status, answer, route in ("GET /v1/record", "POST /v1/records/get",
                                               "POST /v1/entries/get", "POST /v1/records",
                                               "POST /v1/tree", "GET /v1/range"))

    def _route(self, m: BadMember, route: str, body: Any) -> tuple[int, Any]:
        """The answer to ``route``: honest-shaped, except what the mode forges."""
        forging = m.mode in FORGING
        count = len(body) if isinstance(body, list) else 1
        if route == "GET /v1/record":
            key = parse_qs(urlsplit(self.path).query).get("key", ["?"])[0]
            return (200, forged_record(m.mode, key, m.params)) if forging else (404, None)
        if route == "POST /v1/records/get":
            keys = body if isinstance(body, list) else []
            return 200, [forged_record(m.mode, k, m.params) if forging else None for k in keys]
        if route == "POST /v1/entries/get":
            return 200, [forged_record(m.mode, "k", m.params) if forging else None
                         for _ in range(count)]
        # Writes: forging modes claim to store (a lie a client cannot see), others refuse, so
        # that reads after a write need no luck: every acknowledged write is on the honest.
        if route == "PUT /v1/record":
            if m.mode == "superseded":
                return 409, {"error": "superseded", "score": 1e300, "digest": "00" * 32}
            if forging:
                return 201, {} if m.mode == "shape" else {"status": "stored"}
            return 503, {"error": "unavailable"}
        if route == "POST /v1/records":
            if m.mode == "superseded":
                return 200, [{"s": "superseded", "score": 1e300, "digest": bytes(32)}] * count
            if forging:
                return 200, [{} if m.mode == "shape" else {"s": "stored"}] * count
            return 503, {"error": "unavailable"}
        if route == "POST /v1/tree":   # everything differs; each leaf lists one entry
            ask = body if isinstance(body, dict) else {}
            return 200, {"hashes": [b"\1" * 32] * len(ask.get("nodes", [])),
                         "entries": [[[b"forged-ref", b"\2" * 32]]] * len(ask.get("list", []))}
        if route == "GET /v1/range":
            return 200, {"records": [forged_record(m.mode, "k", m.params)] if forging else [],
                         "next": None}
        if route == "GET /v1/ring":
            return (200, m.ring) if m.ring is not None else (404, {"error": "no_ring"})
        if route == "PUT /v1/ring":
            return 200, {"epoch": 1}
        if route == "DELETE /v1/range":
            return 200, {"deleted": 0}
        if route == "POST /v1/sync/pass":
            return 200, {"purged": 0}
        if route == "GET /v1/health":
            return 200, {"node": m.id, "epoch": 0, "status": "ok"}
        return 404, {"error": "not_found"}

    def _answer(self, status: int, answer: Any, as_msgpack: bool) -> None:
        data = packb(answer) if as_msgpack and status == 200 else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", MSGPACK if as_msgpack and status == 200 else JSON)
        self.send_header("Content-Length", str(len(data)))
        epoch = self.member.epoch if self.member.mode == "epoch" else 0
        self.send_header(EPOCH_HEADER, str(epoch))
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = self.member.mode == "drop_idle"

    # -- modes that break the HTTP or the encoding ---------------------------------------------

    def _broken(self, mode: str) -> None:
        self.close_connection = True
        out = self.wfile
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {MSGPACK}\r\n"
        try:
            if mode == "huge_length":   # a TiB announced, one byte sent, then nothing
                out.write(f"{head}Content-Length: {1 << 40}\r\n\r\n".encode() + b"\xc0")
                self.member.stopping.wait(HOLD)
            elif mode in ("endless", "endless_chunked"):
                chunked = mode == "endless_chunked"
                framing = "Transfer-Encoding: chunked" if chunked else "Connection: close"
                out.write(f"{head}{framing}\r\n\r\n".encode())
                block = b"\xc0" * (64 << 10)
                frame = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
                while self.member.sent < STREAM_CAP and not self.member.stopping.is_set():
                    out.write(frame)
                    self.member.sent += len(block)
            elif mode in ("trickle", "trickle_head"):
                start = head + ("Content-Length: 64\r\n\r\n" if mode == "trickle" else "X-Slow: ")
                out.write(start.encode())
                for _ in range(int(HOLD / TRICKLE)):
                    if self.member.stopping.wait(TRICKLE):
                        break
                    out.write(b"\xc0" if mode == "trickle" else b"a")
                    self.member.sent += 1
            else:
                out.write(self._malformed(mode, head))
        except OSError:
            pass   # the client hung up: what it should do

    def _malformed(self, mode: str, head: str) -> bytes:
        if mode == "garbage":   # 0xc1 is never used in msgpack
            body = b"\xc1" + os.urandom(31)
        elif mode == "content_type":
            head, body = head.replace(MSGPACK, "text/html; charset=utf-8"), b"<html>\xff\xfe"
        elif mode == "deep":   # nested a thousand deep: str() of it raises RecursionError
            body = b"\x81\xa6status" + b"\x91" * 1000 + b"\xc0"
            head = head.replace("200 OK", "500 Internal Server Error")
        elif mode == "short_body":   # announces more than it sends, then closes
            return f"{head}Content-Length: 100\r\n\r\n".encode() + b"\xc0" * 10
        elif mode == "not_http":
            return b"SSH-2.0-OpenSSH_9.2\r\n"
        elif mode == "many_headers":
            return (head + "".join(f"X-H{i}: {i}\r\n" for i in range(200)) + "\r\n").encode()
        else:   # long_line
            return (head + "X-Long: " + "a" * 70000 + "\r\n\r\n").encode()
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
