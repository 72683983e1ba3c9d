"""The lean lane of a node's gunicorn worker: a whole, plain request served without gunicorn's
request parser (issue 16).

The worker (:class:`storage.worker.Worker`) holds every request whole before serving
it. For a plain one, :func:`parse` reads the head more strictly than gunicorn and :func:`environ`
builds the environ gunicorn's ``wsgi.create`` would (tests/test_lean.py checks both); gunicorn's
``Response`` writes the answer. What :func:`parse` does not fully understand goes gunicorn's
way, which accepts it or answers 400 as before. The event loop's thread serves one record's
read or write and an acceptor's phase (:func:`inline`), the pool's threads the rest.

Plain: ``GET HEAD PUT POST DELETE PATCH OPTIONS``; an origin-form target (``/``, not ``//``,
printable ASCII, no ``#``); ``HTTP/1.1`` or ``HTTP/1.0``; CRLF line ends, no empty line first;
header names RFC 9110 tokens without ``_`` (it would map onto another's environ key), each once,
no space before the colon; values of printable ASCII, space, tab; lines and count below
gunicorn's limits; no ``Transfer-Encoding``, ``Expect``, ``Upgrade``, ``HTTP2-Settings``, none
of gunicorn's scheme headers (``X-Forwarded-Proto`` ...); ``Connection`` only ``close`` or
``keep-alive``; at most one ``Content-Length``, digits only. ``SDHT_LEAN=0`` in the node's
environment turns the lane off (A/B runs, diagnosis).
"""
from __future__ import annotations

import errno
import io
import os
import re
import socket
from typing import Any, NamedTuple

from gunicorn.http import wsgi as gwsgi
from gunicorn.http.message import Message
from gunicorn.util import unquote_to_wsgi_str

from sdht.kinds.name import ACCEPT_ROUTE, PREPARE_ROUTE
from storage.fastpath import PATH as RECORD_PATH
from storage.limits import CLOSE, SLICE_BYTES

#: Environment variable that turns the lane off when "0".
SWITCH = "SDHT_LEAN"
#: An answer's bytes are gathered into one send up to this size; past it they go as gunicorn
#: sends them, each ``sendall`` under the socket's timeout (storage.limits slices answers).
GATHER_BYTES = 64 << 10
#: The methods the lane serves; any other goes gunicorn's way.
METHODS = frozenset((b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"PATCH", b"OPTIONS"))
#: Header names that always go gunicorn's way: framing, protocol switches, interim answers.
DIVERTED = frozenset(("TRANSFER-ENCODING", "EXPECT", "UPGRADE", "HTTP2-SETTINGS", "TE",
                      "TRAILER"))
#: ``(method, path)`` of the requests the event loop's thread serves (:func:`inline`).
INLINE = frozenset({("GET", RECORD_PATH), ("PUT", RECORD_PATH), ("POST", PREPARE_ROUTE),
                    ("POST", ACCEPT_ROUTE)})
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}
_NAME = re.compile(rb"[!#$%&'*+\-.^`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e]*")
_TARGET = re.compile(rb"/[\x21\x22\x24-\x7e]*")   # origin-form, printable, no "#"
_DIGITS = re.compile(rb"[0-9]{1,18}")


class Limits(NamedTuple):
    """gunicorn's head limits (``limit_request_line``, ``limit_request_fields``,
    ``limit_request_field_size``) and the scheme header names, from its config."""

    line: int
    fields: int
    field_size: int
    scheme_headers: frozenset


class Request:
    """A request read by :func:`parse`: what gunicorn's ``Response`` and the app need of it.
    Its ``should_close`` is gunicorn's own rule (``Message.should_close``)."""

    should_close = Message.should_close
    scheme = "http"
    must_close = False
    _expected_100_continue = False

    def __init__(self, method: str, uri: str, version: tuple[int, int],
                 headers: list[tuple[str, str]], body: bytes) -> None:
        self.method, self.uri, self.version, self.headers = method, uri, version, headers
        self.path, _, self.query = uri.partition("?")
        self.body = Input(body)

    def force_close(self) -> None:  # gunicorn's Message.force_close
        self.must_close = True


class Gathered:
    """The socket as gunicorn's ``Response`` sees it: its writes, the same bytes in order, go in
    one ``sendall`` (head and small body: one syscall); past the limit, each goes at once."""

    def __init__(self, sock: socket.socket, limit: float = GATHER_BYTES) -> None:
        self.sock, self.parts, self.size, self.limit = sock, [], 0, limit

    def sendall(self, data: bytes) -> None:
        """Gather ``data``, or send what is gathered and ``data`` when over the limit."""
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.limit:
            self.flush()

    def send_now(self) -> bytes:
        """Send what is gathered without blocking; return what the socket did not take."""
        data = memoryview(b"".join(self.parts))
        self.parts, self.size = [], 0
        self.sock.setblocking(False)
        try:
            while data:
                data = data[self.sock.send(data):]
        except (BlockingIOError, InterruptedError):
            pass
        return bytes(data)

    def flush(self) -> None:
        """Send what is gathered."""
        if self.parts:
            data, self.parts, self.size = b"".join(self.parts), [], 0
            self.sock.sendall(data)

    def sendfile(self, *args: Any, **kwargs: Any) -> Any:
        """The socket's ``sendfile``, after what is gathered."""
        self.flush()
        return self.sock.sendfile(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class Input(io.BytesIO):
    """``wsgi.input``: the body in memory, marked as gunicorn's ``Body`` is (storage.limits)."""


def limits_of(cfg: Any) -> Limits | None:
    """The limits for a worker with gunicorn config ``cfg``, or None when the lane must stay off
    there: switched off (:data:`SWITCH`), TLS, PROXY protocol, HTTP/2, uwsgi, an access log or
    request hooks (the lane does not call them), ``SCRIPT_NAME`` set, or limits off (0)."""
    from gunicorn.config import Config
    defaults = Config()
    if os.environ.get(SWITCH, "1") == "0" or os.environ.get("SCRIPT_NAME"):
        return None
    if cfg.is_ssl or getattr(cfg, "proxy_protocol", "off") not in ("off", False) or "h2" in (
            getattr(cfg, "http_protocols", None) or ()) or getattr(cfg, "protocol", "http") != "http":
        return None
    if (cfg.accesslog or cfg.logconfig or getattr(cfg, "logconfig_dict", None)
            or getattr(cfg, "logconfig_json", None) or cfg.syslog):
        return None
    for hook in ("pre_request", "post_request"):
        if getattr(cfg, hook) is not getattr(defaults, hook):
            return None
    line, fields, size = cfg.limit_request_line, cfg.limit_request_fields, \
        cfg.limit_request_field_size
    if min(line, fields, size) <= 0:
        return None
    return Limits(min(line, 8190), min(fields, 32768), size,
                  frozenset(name.upper() for name in cfg.secure_scheme_headers))


def parse(data: bytes, end: int, limits: Limits) -> tuple[Request, bytes] | None:
    """Read the request in ``data`` whose head ends at ``end`` (the index of its CRLFCRLF).

    :returns: ``(request, what follows it)``, or None when the request is not plain (the
        module's docstring) or its body is not all in ``data``.
    """
    lines = data[:end].split(b"\r\n")
    line = lines[0]
    if len(line) >= limits.line or len(lines) > limits.fields:
        return None
    parts = line.split(b" ")
    version = _VERSIONS.get(parts[2]) if len(parts) == 3 else None
    if version is None or parts[0] not in METHODS or parts[1].startswith(b"//") \
            or not _TARGET.fullmatch(parts[1]):
        return None
    headers: list[tuple[str, str]] = []
    seen, length = set(), 0
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        if not colon or len(raw) + 2 >= limits.field_size or not _NAME.fullmatch(name) \
                or not _VALUE.fullmatch(value):
            return None
        key = name.decode("ascii").upper()
        if key in seen or key in DIVERTED or key in limits.scheme_headers:
            return None
        seen.add(key)
        text = value.decode("ascii").strip(" \t")
        if key == "CONNECTION" and text.lower() not in ("close", "keep-alive"):
            return None
        if key == "CONTENT-LENGTH":
            if not _DIGITS.fullmatch(text.encode()):
                return None
            length = int(text)
        headers.append((key, text))
    start = end + 4
    if len(data) < start + length:
        return None
    request = Request(parts[0].decode("ascii"), parts[1].decode("ascii"), version, headers,
                      data[start:start + length])
    return request, data[start + length:]


def environ(request: Request, base: dict, sock: Any, client: Any, server: Any,
            response: Any) -> dict:
    """The WSGI environ gunicorn's ``wsgi.create`` builds for ``request`` (before the worker
    sets ``wsgi.multithread``), from ``base``, a copy of which is made: ``wsgi.base_environ``
    of the worker's config. ``server`` is the listener's ``(host, port, ...)``."""
    env = base.copy()
    env["wsgi.input"] = request.body
    env["gunicorn.socket"] = sock
    env["REQUEST_METHOD"] = request.method
    env["QUERY_STRING"] = request.query
    env["RAW_URI"] = request.uri
    env["SERVER_PROTOCOL"] = "HTTP/%d.%d" % request.version
    for name, value in request.headers:
        if name == "CONTENT-TYPE":
            env["CONTENT_TYPE"] = value
        elif name == "CONTENT-LENGTH":
            env["CONTENT_LENGTH"] = value
        else:
            env["HTTP_" + name.replace("-", "_")] = value
    env["wsgi.url_scheme"] = "http"
    if isinstance(client, (str, bytes)):
        env["REMOTE_ADDR"] = client.decode() if isinstance(client, bytes) else client
    else:
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = client[0], str(client[1])
    env["SERVER_NAME"], env["SERVER_PORT"] = server[0], str(server[1])
    env["PATH_INFO"] = unquote_to_wsgi_str(request.path)
    env["SCRIPT_NAME"] = ""
    if _EARLY_HINTS is not None:  # gunicorn 24 and later
        env["wsgi.early_hints"] = _EARLY_HINTS(request, sock, response)
    return env


def inline(request: Request) -> bool:
    """Whether the event loop's thread serves ``request`` (:data:`INLINE`: one local read or
    commit; a pool thread's hand-over costs more). Calls to peers and batches go to the pool."""
    return (request.method, request.path) in INLINE


def serve(worker: Any, conn: Any, req: Request, base: dict, inline: bool = False,
          app: Any = None) -> tuple[bool, bytes]:
    """Serve ``req`` on ``conn`` for gthread ``worker``, as its ``handle`` and
    ``handle_request`` would, without the parser, access log or request hooks (:func:`limits_of`
    keeps the lane off where those are set) by ``app`` (the worker's app if None); the answer is
    gunicorn's ``Response``. ``inline`` (the event loop's thread): the answer is sent without
    blocking, whatever the socket does not take at once is returned, for a thread to send on
    (:func:`send_rest`).

    :returns: whether the connection stays open (keep-alive), and the answer's unsent bytes.
    """
    resp = None
    try:
        conn.sock.setblocking(True)  # a kept-alive socket comes back non-blocking
        out = Gathered(conn.sock, float("inf") if inline else GATHER_BYTES)
        resp = gwsgi.Response(req, out, worker.cfg)
        env = environ(req, base, conn.sock, conn.client, conn.server, resp)
        env["wsgi.multithread"] = True
        worker.log.debug("%s %s", req.method, req.path)  # gunicorn's default pre_request
        worker.nr += 1
        if worker.nr >= worker.max_requests:
            if worker.alive:
                worker.log.info("Autorestarting worker after current request.")
                worker.alive = False
            resp.force_close()
        kept = getattr(worker, "keepalived_conns", getattr(worker, "_keep", ()))  # _keep: < 24
        if not worker.alive or not worker.cfg.keepalive or len(kept) >= worker.max_keepalived:
            resp.force_close()
        respiter = (app or worker.wsgi)(env, resp.start_response)
        try:
            if isinstance(respiter, gwsgi.FileWrapper):
                resp.write_file(respiter)
            else:
                for item in respiter:
                    resp.write(item)
            resp.close()
            unsent = out.send_now() if inline else out.flush()
        finally:
            if hasattr(respiter, "close"):
                respiter.close()
        return not resp.should_close() and not getattr(req.body, CLOSE, False), unsent or b""
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            worker.log.exception("Socket error processing request.")
    except Exception as exc:
        if resp is not None and resp.headers_sent:
            worker.log.exception("Error handling request")  # half an answer: just close
        else:
            worker.handle_error(req, conn.sock, conn.client, exc)
    return False, b""


def send_rest(sock: socket.socket, data: bytes, keepalive: bool, timeout: float) -> bool:
    """Send the rest of an answer served inline, in slices each within ``timeout`` seconds (as
    storage.limits sends answers); return whether to keep the connection."""
    try:
        sock.settimeout(timeout)
        for i in range(0, len(data), SLICE_BYTES):
            sock.sendall(data[i:i + SLICE_BYTES])
    except OSError:
        return False
    return keepalive


_EARLY_HINTS = getattr(gwsgi, "_make_early_hints_callback", None)
