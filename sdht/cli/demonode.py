"""One node of the local demo cluster: start it, find the processes that serve it, stop them.

A demo node is ``sdht-storage`` on ``127.0.0.1:PORT`` with its data in ``DIR/PORT``, its log in
``DIR/PORT.log`` and its key in ``DIR/PORT.key`` (:mod:`sdht.cli.localcluster` keeps the list).
The processes serving a node are the process group recorded when the cluster started it, and
any process listening on its port whose data directory (``SDHT_DATA_DIR`` in its environment,
as ``sdht-storage`` sets it) is the node's: a node restarted by hand is still the cluster's node.
A process on the port serving other data is a stranger, reported and never signalled.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from .. import trust
from .processes import (STOP_DEADLINE, group_alive, listeners, signal_group, start_node)

#: One node record of the state file: ``{"id", "port", "pid", "start_time", "log"}``.
NodeRecord = dict[str, Any]


def data_of(data_dir: Path, port: int) -> Path:
    """The node's LMDB directory in the cluster directory."""
    return (data_dir / str(port)).resolve()


def start_time(pid: int) -> str | None:
    """Return the kernel's start time of ``pid`` (Linux ``/proc``), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only; return the path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def spawn(data_dir: Path, port: int, operator: str, workers: int) -> NodeRecord:
    """Start the demo node on ``port`` with keys derived from ``operator`` (it does not wait).

    :returns: its record for the state file.
    """
    # Every demo node runs with keys: the operator's public key, and its own derived key.
    node_id = f"127.0.0.1:{port}"
    key_file = write_secret(data_dir / f"{port}.key", trust.node_private_key(operator, node_id))
    env = {"SDHT_OPERATOR_PUBKEY": trust.public_of(operator), "SDHT_NODE_KEY": str(key_file)}
    log = data_dir / f"{port}.log"
    with open(log, "ab") as out:
        proc = start_node(port, data_dir / str(port), out, workers, env=env)
    # The child is reaped by whoever waits for it; the CLI exits soon and the supervisor
    # reaps its children (sdht.cli.supervisor), so no zombie lingers.
    return {"id": node_id, "port": port, "pid": proc.pid, "start_time": start_time(proc.pid),
            "log": str(log), "workers": workers}


def recorded_alive(node: NodeRecord) -> bool:
    """Whether the process group recorded for ``node`` runs and is still the one the cluster
    started (it leads its group and has the recorded start time: not a reused PID)."""
    pid = node["pid"]
    try:
        if os.getpgid(pid) != pid:
            return False
    except ProcessLookupError:
        return False
    started = start_time(pid)
    return (started is None or node.get("start_time") in (None, started)) and group_alive(pid)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _serves(pid: int, data: Path) -> bool:
    held = _environ(pid).get("SDHT_DATA_DIR")
    try:
        return held is not None and Path(held).resolve() == data
    except OSError:
        return False


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def hand_started(data_dir: Path, node: NodeRecord) -> tuple[list[int], list[int]]:
    """Processes on the node's port outside its recorded group: ``(ours, strangers)``.

    ``ours`` are the top processes (gunicorn masters, not their workers) serving the node's
    data directory: the node restarted by hand. ``strangers`` serve something else.
    """
    held = [p for p in listeners(node["port"])
            if not (recorded_alive(node) and _pgid(p) == node["pid"])]
    mine = {p for p in held if _serves(p, data_of(data_dir, node["port"]))}
    ours = sorted(p for p in mine if _parent(p) not in mine)
    return ours, sorted(p for p in held if p not in mine)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return 0


def running(data_dir: Path, node: NodeRecord) -> bool:
    """Whether some process of the cluster serves ``node`` (recorded, or started by hand)."""
    return recorded_alive(node) or bool(hand_started(data_dir, node)[0])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(data_dir: Path, node: NodeRecord, deadline: float = STOP_DEADLINE) -> list[int]:
    """Stop every process of the cluster serving ``node``: SIGTERM, then SIGKILL to what is
    left after ``deadline`` seconds. The recorded process group is signalled as a group; a
    node restarted by hand is signalled by its master's PID only (its group may be the shell's
    job). Returns the PIDs signalled (empty when the node was not running)."""
    groups = [node["pid"]] if recorded_alive(node) else []
    masters = hand_started(data_dir, node)[0]
    stop_processes(groups, masters, deadline)
    return groups + masters


def stop_processes(groups: list[int], masters: list[int],
                   deadline: float = STOP_DEADLINE) -> None:
    """SIGTERM the process ``groups`` and the single processes ``masters``; SIGKILL what is
    left of them after ``deadline`` seconds; return once they are gone (or another deadline
    passed)."""
    for sig in (signal.SIGCONT, signal.SIGTERM):   # a stopped process cannot act on SIGTERM
        for pgid in groups:
            signal_group(pgid, sig)
        for pid in masters:
            _signal(pid, sig)

    def gone() -> bool:
        return not any(group_alive(g) for g in groups) and not any(_alive(p) for p in masters)
    if not _wait(gone, deadline):
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        for pid in masters:
            _signal(pid, signal.SIGKILL)
        _wait(gone, deadline)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait(done: Any, deadline: float) -> bool:
    ends = time.monotonic() + deadline
    while not done():
        if time.monotonic() > ends:
            return False
        time.sleep(0.05)
    return True
