"""A local demo cluster: storage nodes on loopback ports, started and stopped by ``sdht cluster``.

Each node is ``python -m storage.server`` (gunicorn) in its own session and process group, with
its LMDB data in ``DIR/PORT``, its log in ``DIR/PORT.log`` and its key in ``DIR/PORT.key``; the
operator key that signs the demo ring is ``DIR/operator.key``. The state file ``DIR/cluster.json``
records each node's port, PID and process start time, so ``stop`` signals exactly those process
groups and never a process that merely reused a PID.

The default directory is ``$SDHT_CLUSTER_DIR``, else ``$XDG_STATE_HOME/sdht/cluster`` (that is
``~/.local/state/sdht/cluster``): one place, whatever the current directory.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from .. import trust
from ..errors import ClusterError, ConfigError
# stop_group lives in .processes; it stays importable from here (tests/test_web.py uses it).
from .processes import (STOP_DEADLINE, ProcessExited, WaitTimeout, answers_health,  # noqa: F401
                        check_running, free_port, group_alive, signal_group, start_node,
                        stop_group, wait_for)

STATE_FILE = "cluster.json"
#: The demo cluster's operator key, made by its first start: the CLI signs with it.
OPERATOR_KEY_FILE = "operator.key"
#: Seconds to wait for a node to answer its health route (STOP_DEADLINE: for one to exit).
START_DEADLINE = 30.0


def default_dir() -> Path:
    """Return the demo cluster's directory (see the module docstring)."""
    if os.environ.get("SDHT_CLUSTER_DIR"):
        return Path(os.environ["SDHT_CLUSTER_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "sdht" / "cluster"


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """Return the state file's contents, or None when there is none."""
    try:
        return json.loads((data_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ClusterError(f"{data_dir / STATE_FILE} is not valid JSON: {exc}") from None


def seeds(data_dir: Path) -> list[str]:
    """Return the node ids of the demo cluster recorded in ``data_dir`` (empty if none)."""
    state = read_state(data_dir)
    return [n["id"] for n in state["nodes"]] if state else []


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_ports(count: int, base_port: int) -> list[int]:
    """Return ``count`` ports from ``base_port`` up, or free ones chosen by the OS when 0.

    :raises ClusterError: when a port in the range is taken.
    """
    if base_port == 0:
        ports: list[int] = []
        while len(ports) < count:
            port = free_port()
            if port not in ports:
                ports.append(port)
        return ports
    ports = list(range(base_port, base_port + count))
    if ports[-1] > 65535:
        raise ConfigError(f"ports {ports[0]}..{ports[-1]} run past 65535")
    taken = [p for p in ports if not _port_free(p)]
    if taken:
        raise ClusterError(f"port(s) {', '.join(map(str, taken))} are in use; pick another "
                           f"--base-port (0 picks free ports)")
    return ports


def _start_time(pid: int) -> str | None:
    """Return the kernel's start time of ``pid`` (Linux ``/proc``), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _ours(node: dict[str, Any]) -> bool:
    """Whether the process recorded for ``node`` is still the one we started (not a reuse)."""
    pid = node["pid"]
    try:
        if os.getpgid(pid) != pid:
            return False
    except ProcessLookupError:
        return False
    started = _start_time(pid)
    return started is None or node.get("start_time") in (None, started)


def start(data_dir: Path, count: int, base_port: int, workers: int = 2,
          deadline: float = START_DEADLINE) -> dict[str, Any]:
    """Spawn ``count`` nodes, record them in the state file, and wait until all answer.

    The nodes are not joined here (see ``sdht cluster start``).

    :raises ClusterError: when a cluster is already running there, a port is taken, or a node
        does not come up in time (the ones started are stopped again).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    old = read_state(data_dir)
    if old and any(_ours(n) and group_alive(n["pid"]) for n in old["nodes"]):
        raise ClusterError(f"a demo cluster is already running from {data_dir}; "
                           f"stop it first (sdht cluster stop --data {data_dir})")
    ports = pick_ports(count, base_port)
    state: dict[str, Any] = {"data": str(data_dir.resolve()), "nodes": []}
    procs = []
    operator = operator_key(data_dir, create=True)
    for port in ports:
        # Every demo node runs with keys: the operator's public key, and its own derived key.
        node_key = write_secret(data_dir / f"{port}.key",
                                trust.node_private_key(operator, f"127.0.0.1:{port}"))
        env = {"SDHT_OPERATOR_PUBKEY": trust.public_of(operator), "SDHT_NODE_KEY": str(node_key)}
        with open(data_dir / f"{port}.log", "ab") as log:
            proc = start_node(port, data_dir / str(port), log, workers, env=env)
        procs.append(proc)
        state["nodes"].append({"id": f"127.0.0.1:{port}", "port": port, "pid": proc.pid,
                               "start_time": _start_time(proc.pid),
                               "log": str(data_dir / f"{port}.log")})
        # Written after each spawn, so that stop finds every node even if start fails midway.
        (data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    waiting = {n["id"]: (proc, n["log"]) for n, proc in zip(state["nodes"], procs)}

    def all_answer() -> bool:
        for node, (proc, log) in list(waiting.items()):
            check_running(proc, f"node {node}", log)
            if answers_health(node):
                del waiting[node]
        return not waiting
    try:
        wait_for(all_answer, deadline, interval=0.1, what="the nodes to answer")
    except ProcessExited as exc:
        stop(data_dir)
        raise ClusterError(str(exc)) from None
    except WaitTimeout:
        stop(data_dir)
        raise ClusterError(f"node(s) {', '.join(waiting)} did not answer in time; see their "
                           f"logs in {state['data']}") from None
    return state


def operator_key(data_dir: Path, create: bool = False) -> str | None:
    """Return the demo cluster's operator key (``DIR/operator.key``), made when ``create``
    and missing; None when there is none."""
    path = data_dir / OPERATOR_KEY_FILE
    if path.exists():
        return trust.read_key(str(path))
    if not create:
        return None
    private = trust.new_private_key()
    write_secret(path, private)
    (data_dir / "operator.pub").write_text(trust.public_of(private) + "\n")
    return private


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only; return the path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def stop(data_dir: Path, deadline: float = STOP_DEADLINE) -> list[str]:
    """Stop the nodes recorded in ``data_dir``: SIGTERM to each process group, SIGKILL to
    those still running after ``deadline`` seconds. Returns the ids of the nodes stopped.

    :raises ClusterError: when there is no state file.
    """
    state = read_state(data_dir)
    if state is None:
        raise ClusterError(f"no demo cluster recorded in {data_dir}")
    running = [n for n in state["nodes"] if _ours(n) and group_alive(n["pid"])]
    for node in running:
        signal_group(node["pid"], signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        signal_group(node["pid"], signal.SIGTERM)
    ends = time.monotonic() + deadline
    while any(group_alive(n["pid"]) for n in running) and time.monotonic() < ends:
        time.sleep(0.05)
    for node in running:
        if group_alive(node["pid"]):
            signal_group(node["pid"], signal.SIGKILL)
    ends = time.monotonic() + deadline
    while any(group_alive(n["pid"]) for n in running) and time.monotonic() < ends:
        time.sleep(0.05)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return [n["id"] for n in running]
