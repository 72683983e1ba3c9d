"""One HTTP/1.1 exchange with a storage node over a kept-alive socket, read strictly (issue 16).

http.client parsed every answer's head with the ``email`` package: about 50 µs an answer, a
tenth of the client's CPU per ``set`` (docs/benchmarks.md). A node's answer is plain, so this
module writes the request in one send and reads the answer as RFC 9112 frames it: a body framed
by ``Transfer-Encoding: chunked`` (decoded), by ``Content-Length``, or by the node closing; none
for ``HEAD``, 1xx, 204 and 304; interim 1xx answers skipped. A head has at most
:data:`MAX_HEAD` bytes and :data:`MAX_FIELDS` lines, field names are tokens, no obsolete line
folding, one ``Content-Length`` (repeats must agree), no other transfer coding: anything else
is :class:`Malformed`.

Nothing a node sends is trusted: every receive waits only until the request's ``deadline``
(:class:`TimeoutError`); a body past the request's ``limit``, or an answer whose bytes on the
wire run past ``limit`` + :data:`FRAMING_BYTES`, is :class:`TooLarge`, however slowly or
endlessly the node sends; a node that closes before its answer is whole raises
:class:`ConnectionResetError`.
"""
from __future__ import annotations

import os
import re
import socket
import time
from typing import NamedTuple

MAX_HEAD, MAX_FIELDS = 64 << 10, 100   #: bytes of a status line and headers; header lines
MAX_CHUNK_LINE = 4096   #: bytes of one chunk-size line (with its extensions) of a chunked body
#: Bytes asked of the socket at a time, into one buffer per connection (not per claimed length).
RECV_BYTES = 64 << 10
#: Bytes of framing an answer may add on the wire to its body's limit: its head, interim
#: answers' heads, chunk size lines.
FRAMING_BYTES = 4 * MAX_HEAD
_STATUS = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
#: Header field lines: a token name, a colon, a value of visible characters, space and tab.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_LENGTH = re.compile(rb"\r\ncontent-length:[\t ]*([0-9]{1,18})[\t ]*\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[\t ]*(?:;[\t\x20-\x7e]*)?")
# What http.client refused in a request: control characters and spaces in the target, CR and
# LF (header splitting) in a header.
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BAD_HEADER = re.compile(r"[\r\n\x00]")


class Malformed(ValueError):
    """An answer that is not HTTP/1.1 as this module reads it."""


class Unsendable(ValueError):
    """A request not sent: a control character in its target, CR, LF or NUL in a header."""


class TooLarge(Exception):   # not an OSError: a lost socket is another failure
    """An answer that ran past the bytes its request may receive."""


class Answer(NamedTuple):
    """A node's answer: status, headers by lower-case name, body, whether to close after it."""

    status: int
    headers: dict[str, str]
    body: bytes
    close: bool


class Connection:
    """One HTTP/1.1 connection to ``host:port``, opened by :meth:`connect` within
    ``connect_timeout`` seconds. Not thread-safe: one exchange at a time."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        # A bracketed IPv6 host ("[::1]") is connected to without its brackets, as http.client
        # did; the Host header keeps them.
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.port, self.connect_timeout = port, connect_timeout
        self.sock: socket.socket | None = None
        self.received = 0   #: bytes received in the current exchange (0: none yet)
        self._host = f"{host}:{port}".encode("idna")
        self._buffer = bytearray()
        self._scratch = memoryview(bytearray(RECV_BYTES))
        self._deadline = 0.0
        self._limit = self._budget = 0
        self._armed: float | None = None

    def connect(self) -> None:
        """Open the connection (:class:`OSError` when the node cannot be reached)."""
        self.sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._armed = self.connect_timeout

    def close(self) -> None:
        """Close the connection (a later exchange needs :meth:`connect` first)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buffer.clear()

    def exchange(self, method: str, target: str, body: bytes | None,
                 headers: dict[str, str], deadline: float, limit: int) -> Answer:
        """Send one request and read its whole answer before ``deadline`` (a
        :func:`time.monotonic` time), with a body of at most ``limit`` bytes.

        :raises TimeoutError, TooLarge, Malformed, OSError: (ConnectionResetError when the node
            closed before the answer was whole), Unsendable: (nothing was sent).
        """
        self.send(method, target, body, headers, deadline, limit)
        return self.answer(method)

    def send(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
             deadline: float, limit: int) -> None:
        """Send one request, the first half of :meth:`exchange` (its answer is read by
        :meth:`answer`): the deadline and limit are the whole exchange's."""
        assert self.sock is not None, "connect() first"
        self._deadline, self._limit, self.received = deadline, limit, 0
        self._budget = limit + FRAMING_BYTES
        self._buffer.clear()
        data = _request(method, target, body, headers, self._host)
        self._arm()
        self.sock.sendall(data)   # its timeout, the time left, bounds the whole send

    def pull(self) -> None:
        """Receive what has arrived of the answer without waiting (TooLarge, OSError)."""
        try:   # not recv, which waits first on a socket with a timeout (non-blocking: readv not)
            got = os.readv(self.sock.fileno(), [self._scratch])  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        self._count(got)
        if not got:
            raise ConnectionResetError("the node closed the connection before its answer")

    def whole(self) -> bool | None:
        """Whether the bytes received hold a whole ``Content-Length`` answer (:meth:`answer` reads
        it without waiting); None: not told so (another framing, 1xx, head past MAX_HEAD)."""
        end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            return None if len(self._buffer) >= MAX_HEAD else False
        head = bytes(self._buffer[:end + 2]).lower()
        length = _LENGTH.search(head)
        if length is None or b"\r\ntransfer-encoding:" in head or head[9:10] == b"1":
            return None
        return len(self._buffer) >= end + 4 + int(length.group(1))

    def answer(self, method: str) -> Answer:
        """Read the whole answer to the request :meth:`send` sent (the second half of
        :meth:`exchange`, which names what it raises)."""
        while True:
            status, version, fields = self._head()
            if not 100 <= status < 200:
                break
            if status == 101:
                raise Malformed("101 Switching Protocols to a request that asked for none")
        close = _closes(version, fields)
        if method == "HEAD" or status in (204, 304):
            data = b""
        elif "transfer-encoding" in fields:
            if fields["transfer-encoding"].lower() != "chunked":
                raise Malformed(f"unknown Transfer-Encoding {fields['transfer-encoding'][:40]!r}")
            data = self._chunked()
        elif "content-length" in fields:
            data = self._exactly(_length(fields["content-length"], self._limit))
        else:
            data, close = self._until_closed(), True
        return Answer(status, fields, data, close or bool(self._buffer))

    # -- sending and receiving ------------------------------------------------------------------

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        # settimeout is a syscall: re-arm only when the armed timeout is 10 ms off the time left.
        if self._armed is None or abs(self._armed - left) > 0.01:
            self.sock.settimeout(left)  # type: ignore[union-attr]
            self._armed = left

    def _receive(self) -> bool:
        """Receive what the node sends next into the buffer; False when it closed."""
        self._arm()
        got = self.sock.recv_into(self._scratch)  # type: ignore[union-attr]
        self._count(got)
        return got > 0

    def _count(self, got: int) -> None:
        """Take ``got`` bytes received into the scratch buffer, within the byte budget."""
        self.received += got
        if self.received > self._budget:
            raise TooLarge("the answer is too long")
        self._buffer += self._scratch[:got]

    def _take(self, size: int) -> bytes:
        """The first ``size`` bytes of the buffer, taken out of it (one copy)."""
        with memoryview(self._buffer) as view:
            data = bytes(view[:size])
        del self._buffer[:size]
        return data

    def _find(self, end: bytes, limit: int, what: str) -> int:
        """Where ``end`` first stands in the buffer, receiving until it does: the ``what`` before
        it may take at most ``limit`` bytes."""
        start = 0
        while (at := self._buffer.find(end, start)) < 0:
            if len(self._buffer) > limit:
                break
            start = max(0, len(self._buffer) - len(end) + 1)
            if not self._receive():
                raise ConnectionResetError(f"the node closed the connection in the {what}")
        if not 0 <= at <= limit:
            raise Malformed(f"a {what} longer than {limit} bytes")
        return at

    def _line(self, limit: int, what: str) -> bytes:
        """The next CRLF-ended line (without its CRLF), at most ``limit`` bytes."""
        return self._take(self._find(b"\r\n", limit, what) + 2)[:-2]

    def _head(self) -> tuple[int, int, dict[str, str]]:
        """The status line and header fields of the next answer."""
        end = self._find(b"\r\n\r\n", MAX_HEAD, "head")
        head = self._take(end + 4)
        matched = _STATUS.fullmatch(head, 0, first := head.find(b"\r\n"))
        if matched is None:
            raise Malformed(f"not an HTTP/1.x status line: {head[:min(first, 60)]!r}")
        block = head[first + 2:-2]   # the field lines, each with its CRLF
        # One match checks every line (10 µs an answer less than a match per name and value).
        if block.count(b"\r\n") > MAX_FIELDS or _FIELDS.fullmatch(block) is None:
            raise Malformed(f"more than {MAX_FIELDS} header lines, or one not a field (obs-fold "
                            f"included): {block[:60]!r}")
        fields: dict[str, str] = {}
        for line in block.decode("latin-1").split("\r\n")[:-1]:
            name, _, value = line.partition(":")   # a name is a token: ASCII, no colon
            key, text = name.lower(), value.strip(" \t")
            if key == "content-length" and fields.get(key, text) != text:
                raise Malformed("Content-Length given twice, differently")
            if key in fields and key != "content-length":
                text = f"{fields[key]}, {text}"   # a list field, joined (RFC 9110 5.3)
            fields[key] = text
        return int(matched.group(2)), int(matched.group(1)), fields

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._receive():
                raise ConnectionResetError("the node closed the connection mid-answer")
        return self._take(size)

    def _chunked(self) -> bytes:
        parts, total = [], 0
        for _ in range(self._budget):   # each chunk takes at least one byte of the budget
            line = self._line(MAX_CHUNK_LINE, "chunk size line")
            matched = _CHUNK_SIZE.fullmatch(line)
            if matched is None:
                raise Malformed(f"not a chunk size line: {line[:40]!r}")
            size = int(matched.group(1), 16)
            if size == 0:
                break
            total += size
            if total > self._limit:
                raise TooLarge(f"chunks of more than {self._limit} bytes")
            parts.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise Malformed("a chunk not followed by CRLF")
        for _ in range(MAX_FIELDS + 1):   # the trailer section, ignored
            if not self._line(MAX_CHUNK_LINE, "trailer line"):
                return b"".join(parts)
        raise Malformed(f"more than {MAX_FIELDS} trailer lines")

    def _until_closed(self) -> bytes:
        while len(self._buffer) <= self._limit:
            if not self._receive():
                return self._take(len(self._buffer))
        raise TooLarge(f"more than {self._limit} bytes of body")


def _request(method: str, target: str, body: bytes | None, headers: dict[str, str],
             host: bytes) -> bytes:
    """The request's bytes: request line, ``Host``, ``Content-Length`` (as http.client sends
    it), the headers, then the body."""
    if _BAD_TARGET.search(target) or not method.isalpha():
        raise Unsendable(f"a control character in the request line: {target[:60]!r}")
    head = [f"{method} {target} HTTP/1.1".encode("ascii"), b"Host: " + host]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        head.append(b"Content-Length: %d" % len(body or b""))
    for name, value in headers.items():
        if _BAD_HEADER.search(name) or _BAD_HEADER.search(value) or ":" in name:
            raise Unsendable(f"CR, LF or NUL in the header {name[:40]!r}")
        head.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")


def _length(text: str, limit: int) -> int:
    if not _DIGITS.fullmatch(text.encode("latin-1")):
        raise Malformed(f"a Content-Length that is not a number: {text[:40]!r}")
    if int(text) > limit:
        raise TooLarge(f"it announced a Content-Length of {text}")
    return int(text)


def _closes(version: int, fields: dict[str, str]) -> bool:
    """Whether the connection closes after this answer (RFC 9112 9.3)."""
    tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    return "close" in tokens or (version == 0 and "keep-alive" not in tokens)
