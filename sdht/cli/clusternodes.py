"""Changing the nodes of a running demo cluster: restart some, add one, retire one.

Each change is made under the cluster's lock (:func:`sdht.cli.localcluster.locked`), so a
supervisor running meanwhile (:mod:`sdht.cli.supervisor`) never sees a node half-changed and
restarts it twice. Joining and removing nodes from the *ring* is the ring library's job; the
``sdht cluster add`` and ``remove`` commands do that around these calls.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ClusterError
from . import demonode, localcluster
from .demonode import NodeRecord
from .localcluster import find_node, locked, required_state, write_state

#: gunicorn workers per node when the state file does not say (a cluster of an older sdht).
DEFAULT_WORKERS = 2


def _operator(data_dir: Path) -> str:
    operator = localcluster.operator_key(data_dir)
    if operator is None:
        raise ClusterError(f"{data_dir} has no operator key ({localcluster.OPERATOR_KEY_FILE})")
    return operator


def restart(data_dir: Path, nodes: list[str] | None = None,
            deadline: float = localcluster.START_DEADLINE) -> list[NodeRecord]:
    """Stop (when running, however it was started) and start again each of ``nodes`` (ids or
    ports; all of the cluster's when None) on its port and data; wait until they answer.

    :returns: their new records.
    :raises ClusterError: for an unknown node, or one that does not come back in time.
    """
    operator = _operator(data_dir)
    with locked(data_dir):
        state = required_state(data_dir)
        targets = [find_node(state, n) for n in nodes] if nodes else list(state["nodes"])
        for node in targets:
            demonode.stop(data_dir, node)
            node.update(demonode.spawn(data_dir, node["port"], operator,
                                       node.get("workers", DEFAULT_WORKERS)))
            write_state(data_dir, state)
    localcluster.wait_up(data_dir, targets, deadline)
    return targets


def add(data_dir: Path, workers: int | None = None,
        deadline: float = localcluster.START_DEADLINE) -> NodeRecord:
    """Start one more node (on the port after the highest, or a free one), record it and wait
    until it answers. It is not joined here.

    :raises ClusterError: when it does not come up in time (it is then stopped and dropped).
    """
    operator = _operator(data_dir)
    with locked(data_dir):
        state = required_state(data_dir)
        if workers is None:
            workers = state["nodes"][0].get("workers", DEFAULT_WORKERS) if state["nodes"] \
                else DEFAULT_WORKERS
        node = demonode.spawn(data_dir, localcluster.next_port(state), operator, workers)
        state["nodes"].append(node)
        write_state(data_dir, state)
    localcluster.wait_up(data_dir, [node], deadline,
                         on_failure=lambda: retire(data_dir, node["id"]))
    return node


def retire(data_dir: Path, node: str) -> list[int]:
    """Stop ``node`` (however it was started) and drop it from the cluster's state; its data
    directory stays. Returns the PIDs signalled (empty when it was not running).

    :raises ClusterError: when the cluster has no such node.
    """
    with locked(data_dir):
        state = required_state(data_dir)
        record = find_node(state, node)
        stopped = demonode.stop(data_dir, record)
        state["nodes"] = [n for n in state["nodes"] if n["id"] != record["id"]]
        write_state(data_dir, state)
    return stopped
