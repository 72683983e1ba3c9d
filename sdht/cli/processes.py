"""Local processes, one way for everyone: the demo cluster, the tests and the benchmarks.

* :func:`free_port` picks a loopback port, :func:`port_free` checks one (the one home of that
  check); :func:`listeners` names the processes listening on a port; :func:`wait_for` polls a
  condition with a deadline.
* :func:`spawn` starts a server in a session (and process group) of its own with its output in
  a log file; :func:`start_node` does so for one ``sdht-storage`` node
  (``python -m storage.server``), and :func:`wait_healthy` waits until it answers
  ``GET /v1/health``, failing at once if it exited.
* :func:`stop_group` stops such a process and everything in its group (gunicorn's workers too).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping, Sequence, TypeVar

import requests

from ..errors import ProcessExited, WaitTimeout

#: Seconds :func:`stop_group` waits after SIGTERM before SIGKILL, and again for the group to go.
STOP_DEADLINE = 10.0
T = TypeVar("T")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a port on 127.0.0.1 that was free a moment ago (bound from port 0).

    :param kind: ``socket.SOCK_STREAM`` for a TCP port, ``socket.SOCK_DGRAM`` for UDP.
    """
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``host:port`` (TCP) right now.

    The probe sets ``SO_REUSEADDR``, as gunicorn does for its listening socket: connections of
    a server that just stopped linger in TIME_WAIT for up to a minute, and they do not stop a
    new server from binding, so they must not fail this check either.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


#: The most processes :func:`listeners` looks through (a bound on its /proc walk).
MAX_PROCESSES = 100_000


def listeners(port: int) -> list[int]:
    """PIDs of this user's processes holding a TCP socket that listens on ``port`` (IPv4 or
    IPv6), read from Linux ``/proc``; empty elsewhere or when none."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address "ADDR:PORT" in hex, state 0A is LISTEN, field 9 the socket inode
            if (len(fields) > 9 and fields[3] == "0A"
                    and int(fields[1].rsplit(":", 1)[1], 16) == port):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return []
    pids = []
    for seen, entry in enumerate(Path("/proc").iterdir()):
        if seen >= MAX_PROCESSES:
            break
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:   # another user's process, or gone
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(pids)


def command_line(pid: int) -> list[str]:
    """The argument vector of process ``pid`` (empty when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value; return it.

    Exceptions from ``predicate`` propagate (so it can fail early).

    :raises WaitTimeout: when ``timeout`` seconds passed and it is still falsy; the message
        names ``what`` was waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def check_running(proc: subprocess.Popen, what: str, log: str | os.PathLike | None = None) -> None:
    """Raise :class:`ProcessExited` (naming ``what`` and the ``log`` file) if ``proc`` exited."""
    code = proc.poll()
    if code is not None:
        see = f"; see {log}" if log is not None else ""
        raise ProcessExited(f"{what} exited with status {code}{see}", code)


def wait_ready(proc: subprocess.Popen, ready: Callable[[], object], timeout: float,
               what: str, log: str | os.PathLike | None = None,
               interval: float = 0.05) -> None:
    """Wait until ``ready()`` is truthy, as :func:`wait_for`, but fail as soon as ``proc`` exits.

    :raises ProcessExited: when ``proc`` exited first.
    :raises WaitTimeout: when ``timeout`` seconds passed.
    """
    def poll() -> object:
        check_running(proc, what, log)
        return ready()
    wait_for(poll, timeout, interval, what=f"{what} to start")


def spawn(argv: Sequence[str], log: IO[bytes], env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new session (its own process group), stdin from /dev/null and
    stdout and stderr into the open file ``log`` (the caller may close its copy at once).

    :param env: variables set on top of this process's environment.
    """
    return subprocess.Popen(list(argv), cwd=cwd, env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_node(port: int, data_dir: str | os.PathLike, log: IO[bytes], workers: int = 2,
               env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
               extra_args: Sequence[str] = ()) -> subprocess.Popen:
    """Start one storage node, ``python -m storage.server -p PORT --data DIR --workers N``
    (plus ``extra_args``), with :func:`spawn`. It does not wait: see :func:`wait_healthy`."""
    argv = [sys.executable, "-m", "storage.server", "-p", str(port), "--data",
            str(data_dir), "--workers", str(workers), *extra_args]
    return spawn(argv, log, env, cwd)


def answers_health(node: str, timeout: float = 1.0) -> bool:
    """Whether ``node`` (``host:port``) answers ``GET /v1/health`` with 200 right now."""
    try:
        return requests.get(f"http://{node}/v1/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def wait_healthy(proc: subprocess.Popen, node: str, timeout: float = 30.0,
                 log: str | os.PathLike | None = None, interval: float = 0.05) -> None:
    """Wait until the node ``proc`` runs answers its health route (:func:`answers_health`).

    :raises ProcessExited: as soon as ``proc`` has exited.
    :raises WaitTimeout: when it did not answer within ``timeout`` seconds.
    """
    wait_ready(proc, lambda: answers_health(node), timeout, f"node {node}", log, interval)


def group_stats(pgid: int) -> Iterator[list[str]]:
    """The ``/proc/PID/stat`` fields after the command name (state, ppid, pgrp, ...) of each
    process in group ``pgid`` (none where there is no ``/proc``)."""
    for _, fields in group_members(pgid):
        yield fields


def group_members(pgid: int) -> Iterator[tuple[int, list[str]]]:
    """``(PID, stat fields)`` of each process in group ``pgid``, as :func:`group_stats`."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            yield int(entry.name), fields


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process remains in process group ``pgid``."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    return any(fields[0] != "Z" for fields in group_stats(pgid))


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is already gone is no error."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, deadline: float = STOP_DEADLINE,
               graceful: bool = True) -> None:
    """Stop ``proc``, started in a session of its own, and everything in its process group.

    SIGCONT first (a stopped process cannot act on SIGTERM), then SIGTERM; after ``deadline``
    seconds SIGKILL to whatever is left of the group, such as gunicorn workers whose master
    was killed. With ``graceful=False``, SIGKILL at once (``kill -9``, as fault tests want).
    Returns once the group is gone (or a second deadline passed).
    """
    if graceful and proc.poll() is None:
        signal_group(proc.pid, signal.SIGCONT)
        signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(deadline)
    signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(deadline)
    ends = time.monotonic() + deadline
    while group_alive(proc.pid) and time.monotonic() < ends:
        time.sleep(0.02)
