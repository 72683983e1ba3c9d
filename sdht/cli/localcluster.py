"""A local demo cluster: storage nodes on loopback ports, started and stopped by ``sdht cluster``.

Each node is ``python -m storage.server`` (gunicorn) in its own session and process group, with
its LMDB data in ``DIR/PORT``, its log in ``DIR/PORT.log`` and its key in ``DIR/PORT.key``
(:mod:`sdht.cli.demonode`); the operator key that signs the demo ring is ``DIR/operator.key``.
The state file ``DIR/cluster.json`` records each node's port, PID and process start time, and
the supervisor's when one runs (:mod:`sdht.cli.supervisor`), so ``stop`` signals exactly those
processes (and a node restarted by hand on its port and data) and never a process that merely
reused a PID. Every change of the state file is made under a lock (``DIR/cluster.lock``), so
the supervisor and the commands never overwrite each other's changes.

The default directory is ``$SDHT_CLUSTER_DIR``, else ``$XDG_STATE_HOME/sdht/cluster`` (that is
``~/.local/state/sdht/cluster``): one place, whatever the current directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .. import trust
from ..errors import ClusterError, ConfigError
from . import demonode
from .demonode import NodeRecord, write_secret
from .processes import (STOP_DEADLINE, ProcessExited, WaitTimeout, answers_health, free_port,
                        port_free, wait_for)

STATE_FILE = "cluster.json"
LOCK_FILE = "cluster.lock"
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


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically (write a temporary file, then rename it)."""
    tmp = data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, data_dir / STATE_FILE)


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """Hold the cluster's lock: one change of the state file at a time, across processes."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def required_state(data_dir: Path) -> dict[str, Any]:
    """The state file's contents.

    :raises ClusterError: when there is none.
    """
    state = read_state(data_dir)
    if state is None:
        raise ClusterError(f"no demo cluster recorded in {data_dir} (sdht cluster start)")
    return state


def seeds(data_dir: Path) -> list[str]:
    """Return the node ids of the demo cluster recorded in ``data_dir`` (empty if none)."""
    state = read_state(data_dir)
    return [n["id"] for n in state["nodes"]] if state else []


def find_node(state: dict[str, Any], node: str) -> NodeRecord:
    """The record of ``node`` (``HOST:PORT`` or just the port) in the state.

    :raises ClusterError: when the cluster has no such node.
    """
    for n in state["nodes"]:
        if node in (n["id"], str(n["port"])):
            return n
    raise ClusterError(f"{node} is not a node of this demo cluster (its nodes: "
                       f"{', '.join(n['id'] for n in state['nodes'])})")


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
    taken = [p for p in ports if not port_free(p)]
    if taken:
        raise ClusterError(f"port(s) {', '.join(map(str, taken))} are in use; pick another "
                           f"--base-port (0 picks free ports)")
    return ports


def next_port(state: dict[str, Any]) -> int:
    """A port for one more node: the one after the highest in use when it is free, else one
    the OS picks."""
    port = max(n["port"] for n in state["nodes"]) + 1 if state["nodes"] else 0
    return port if 0 < port <= 65535 and port_free(port) else free_port()


def start(data_dir: Path, count: int, base_port: int, workers: int = 2,
          deadline: float = START_DEADLINE) -> dict[str, Any]:
    """Spawn ``count`` nodes, record them in the state file, and wait until all answer.

    The nodes are not joined here (see ``sdht cluster start``).

    :raises ClusterError: when a cluster is already running there, a port is taken, or a node
        does not come up in time (the ones started are stopped again).
    """
    with locked(data_dir):
        old = read_state(data_dir)
        if old and any(demonode.running(data_dir, n) for n in old["nodes"]):
            raise ClusterError(f"a demo cluster is already running from {data_dir}; "
                               f"stop it first (sdht cluster stop --data {data_dir})")
        ports = pick_ports(count, base_port)
        state: dict[str, Any] = {"data": str(data_dir.resolve()), "nodes": []}
        operator = operator_key(data_dir, create=True)
        for port in ports:
            state["nodes"].append(demonode.spawn(data_dir, port, operator, workers))
            # Written after each spawn, so that stop finds every node even if start fails.
            write_state(data_dir, state)
    wait_up(data_dir, state["nodes"], deadline, on_failure=lambda: stop(data_dir))
    return state


def wait_up(data_dir: Path, nodes: list[NodeRecord], deadline: float = START_DEADLINE,
            on_failure: Any = None) -> None:
    """Wait until every one of ``nodes`` answers its health route.

    :raises ClusterError: when one exits or does not answer in time (after ``on_failure()``).
    """
    waiting = {n["id"]: n for n in nodes}

    def all_answer() -> bool:
        for node_id, n in list(waiting.items()):
            if not demonode.running(data_dir, n):
                raise ProcessExited(f"node {node_id} exited; see {n['log']}")
            if answers_health(node_id):
                del waiting[node_id]
        return not waiting
    try:
        wait_for(all_answer, deadline, interval=0.1, what="the nodes to answer")
    except (ProcessExited, WaitTimeout) as exc:
        if on_failure is not None:
            on_failure()
        if isinstance(exc, ProcessExited):
            raise ClusterError(str(exc)) from None
        raise ClusterError(f"node(s) {', '.join(waiting)} did not answer in time; see their "
                           f"logs in {data_dir}") from None


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


def stop_supervisor(state: dict[str, Any], deadline: float = STOP_DEADLINE) -> int | None:
    """Stop the cluster's supervisor, if one runs; return its PID then, else None."""
    sup = state.pop("supervisor", None)
    if not sup or not demonode.recorded_alive(sup):
        return None
    demonode.stop_processes([sup["pid"]], [], deadline)
    return sup["pid"]


def stop(data_dir: Path, deadline: float = STOP_DEADLINE) -> dict[str, Any]:
    """Stop the supervisor, then every node of the cluster, whichever process serves it: the
    recorded one, or one restarted by hand on the node's port and data. The state file is
    removed. Returns what happened: ``{"stopped": [ids], "by_hand": {id: [pids]}, "down":
    [ids not running], "strangers": {id: [pids of other programs on its port]},
    "supervisor": pid or None}``.

    :raises ClusterError: when there is no state file.
    """
    with locked(data_dir):
        state = required_state(data_dir)
        report: dict[str, Any] = {"stopped": [], "by_hand": {}, "down": [], "strangers": {},
                                  "supervisor": stop_supervisor(state, deadline)}
        for node in state["nodes"]:
            by_hand, strangers = demonode.hand_started(data_dir, node)
            if strangers:
                report["strangers"][node["id"]] = strangers
            if demonode.stop(data_dir, node, deadline):
                report["stopped"].append(node["id"])
                if by_hand:
                    report["by_hand"][node["id"]] = by_hand
            else:
                report["down"].append(node["id"])
        (data_dir / STATE_FILE).unlink(missing_ok=True)
    return report
