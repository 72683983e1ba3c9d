"""Shared fixtures: real ``sdht-storage`` processes on free loopback ports with temp LMDB dirs.

Each node runs in its own process group (gunicorn master and workers), is polled for readiness
with a deadline, and is stopped by PID: SIGTERM to the group, then SIGKILL after a deadline.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sdht.cli import processes
# free_port and wait_for are imported from here by the tests; wait_for raises WaitTimeout.
from sdht.cli.processes import free_port, stop_group, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


class NodeProcess:
    """One real storage node: ``python -m storage.server`` (gunicorn) in its own process group."""

    def __init__(self, data_dir: Path, port: int | None = None, workers: int = 2,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.workers = workers
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.id}"

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        """Start the node and wait until it answers its health route; a node that does not
        come up is stopped before the error is raised."""
        self.log = open(self.data_dir.parent / f"node-{self.port}.log", "ab")
        self.proc = processes.start_node(self.port, self.data_dir, self.log, self.workers,
                                         env={"PYTHONPATH": str(ROOT), **self.env}, cwd=ROOT)
        try:
            processes.wait_healthy(self.proc, self.id, timeout, log=self.log.name)
        except Exception:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        """Whether the node answers its health route; raises ProcessExited if it exited."""
        assert self.proc is not None, f"node {self.id} was never started"
        processes.check_running(self.proc, f"node {self.id}", self.log.name)
        return processes.answers_health(self.id)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's whole process group (master and workers)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 the whole process group and reap it."""
        if self.proc is not None:
            stop_group(self.proc, graceful=False)
            self.log.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it if it has not exited by ``timeout``."""
        if self.proc is not None:
            stop_group(self.proc, timeout)
            self.log.close()

    def restart(self, timeout: float = 30.0) -> "NodeProcess":
        """Start the node again on its port and data (after :meth:`kill` or :meth:`stop`)."""
        return self.start(timeout)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory fixture: ``start_node(name=None, operator=None, **kw)`` starts a real node (with
    keys derived from ``operator``'s when given); all are stopped at teardown."""
    started: list[NodeProcess] = []

    def factory(name: str | None = None, operator: "Operator | None" = None,
                **kwargs) -> NodeProcess:
        data = tmp_path / (name or f"node{len(started)}")
        node = NodeProcess(data, **kwargs)
        if operator is not None:   # a keyed node: the operator's public key and its own key
            node.env = {**node.env, **operator.node_env(node.id)}
        started.append(node)   # before start: a node that fails to come up is stopped too
        return node.start()

    yield factory
    for node in started:
        node.stop()


@pytest.fixture
def cluster(start_node) -> Iterator[Callable[..., tuple]]:
    """Factory: ``cluster(count, params=None, timeout=(2, 10), workers=2, env=None,
    operator=None)`` starts ``count`` real nodes (keyed by ``operator`` when given), joins them
    into one ring (signed with the operator key) and returns ``(ring, nodes)``."""
    import sdht
    from sdht.trust import Keys
    rings = []

    def make(count: int, params: dict | None = None, timeout: tuple = (2.0, 10.0),
             workers: int = 2, env: dict[str, str] | None = None,
             operator: "Operator | None" = None) -> tuple:
        nodes = [start_node(workers=workers, env=env, operator=operator) for _ in range(count)]
        keys = operator.keys() if operator is not None else Keys()
        ring = sdht.Ring([nodes[0].id], params=params, timeout=timeout, keys=keys)
        rings.append(ring)
        for n in nodes:
            ring.join(n.id)
        return ring, nodes

    yield make
    for ring in rings:
        ring.close()


@pytest.fixture
def node(start_node) -> NodeProcess:
    """One running storage node."""
    return start_node()


@pytest.fixture
def app(tmp_path):
    """An in-process storage app (real ``create_app`` over a real LMDB dir), closed after."""
    from storage.app import create_app
    made = create_app({"DATA_DIR": str(tmp_path / "lmdb"), "NODE_ID": "127.0.0.1:1"})
    yield made
    close_node_app(made)


@pytest.fixture
def client(app):
    """A Flask test client of :func:`app`."""
    return app.test_client()


# -- in-process nodes (sdht.inprocess): real apps over real LMDB dirs, no processes or sockets --

def close_node_app(app) -> None:
    """Close the LMDB environment an in-process storage app opened (``storage.http.store``)."""
    held = app.extensions.get("sdht.store")
    app.extensions["sdht.store"] = None
    if held is not None:
        held[1].close()


@pytest.fixture
def node_apps(tmp_path: Path) -> Iterator[Callable[..., dict]]:
    """Factory: ``node_apps(count, into=None, per_node=None, **config)`` builds ``count``
    storage apps in this process, each with its own LMDB dir and a made-up ``127.0.0.1:<port>``
    id (no socket is opened), and the settings ``per_node(node_id)`` returns, if given. Returns ``{node id: app}`` of the new apps, also added to ``into`` when given (a
    transport's mapping, to reach them); every app's store is closed at teardown."""
    import itertools
    from storage.app import create_app
    ports = itertools.count(20001)
    made: list = []

    def make(count: int, into: dict | None = None, per_node: Callable | None = None,
             **config) -> dict:
        apps = {}
        for _ in range(count):
            port = next(ports)
            node_id = f"127.0.0.1:{port}"
            own = per_node(node_id) if per_node else {}   # say, the node's own key
            apps[node_id] = create_app({"DATA_DIR": str(tmp_path / f"inproc-{port}"),
                                        "NODE_ID": node_id, **config, **own})
            made.append(apps[node_id])
        if into is not None:
            into.update(apps)
        return apps

    yield make
    for app in made:
        close_node_app(app)


@pytest.fixture
def inprocess_cluster(node_apps) -> Iterator[Callable[..., tuple]]:
    """Factory: ``inprocess_cluster(count, params=None)`` builds ``count`` in-process nodes,
    joins them into one ring over a :class:`sdht.inprocess.WSGITransport` and returns
    ``(ring, apps)``. ``apps`` is the transport's own mapping: add ``node_apps(k)`` to it to
    reach more nodes. The rings are closed (in-flight repairs awaited) before the apps."""
    yield from joined_rings(node_apps)


def joined_rings(node_apps, operator: "Operator | None" = None) -> Iterator[Callable[..., tuple]]:
    """The factory behind :func:`inprocess_cluster` and :func:`keyed_cluster`: nodes made by
    ``node_apps`` (keyed by ``operator`` when given) joined by a ring (holding the operator
    key); the rings are closed when the generator ends."""
    import sdht
    from sdht.inprocess import WSGITransport
    from sdht.trust import Keys
    rings = []

    def make(count: int, params: dict | None = None) -> tuple:
        per_node = operator.node_config if operator is not None else None
        apps = node_apps(count, per_node=per_node)
        keys = operator.keys() if operator is not None else Keys()
        ring = sdht.Ring(list(apps)[:1], params=params,
                         transport=WSGITransport(apps, keys=keys))
        rings.append(ring)
        for node_id in list(apps):
            ring.join(node_id)
        return ring, apps

    yield make
    for ring in rings:
        ring.close()


# -- keys (sdht.trust): an operator key pair and the node settings derived from it -------------

class Operator:
    """A test operator: its key pair, the keys its tools hold, and each node's settings."""

    def __init__(self) -> None:
        from sdht import trust
        self.private = trust.new_private_key()
        self.public = trust.public_of(self.private)

    def keys(self):
        """The keys of the operator's own tools (they sign rings and admin requests)."""
        from sdht.trust import Keys
        return Keys((self.public,), self.private)

    def node_private(self, node_id: str) -> str:
        from sdht.trust import node_private_key
        return node_private_key(self.private, node_id)

    def node_config(self, node_id: str) -> dict:
        """``create_app`` settings of a keyed node."""
        return {"OPERATOR_PUBKEY": self.public, "NODE_KEY": self.node_private(node_id)}

    def node_env(self, node_id: str) -> dict:
        """Environment of a keyed ``sdht-storage`` process."""
        return {"SDHT_OPERATOR_PUBKEY": self.public, "SDHT_NODE_KEY": self.node_private(node_id)}


@pytest.fixture
def operator() -> Operator:
    """A fresh operator key pair."""
    return Operator()


@pytest.fixture
def keyed_cluster(node_apps, operator) -> Iterator[Callable[..., tuple]]:
    """Factory: ``keyed_cluster(count, params=None)``: in-process nodes that hold the operator's
    public key and their own derived keys, joined by a ring holding the operator key.
    Returns ``(ring, apps)``."""
    yield from joined_rings(node_apps, operator)


# -- curl, as a user types it ------------------------------------------------------------------

def curl(*args: str, timeout: float = 120) -> tuple[int, dict]:
    """Run curl as a user would (``curl -s ARGS``); return the status and the JSON answer."""
    import json
    import subprocess
    done = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True,
                          text=True, timeout=timeout, check=True)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


# -- the run's summary: skipped tests are named, with what installs what they need -------------

def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """At the end of every run, list the tests that were skipped and why (their reasons say
    what installs what they need), so a skip is not mistaken for a pass."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    terminalreporter.section(f"{len(skipped)} test(s) skipped: NOT run", sep="-", yellow=True,
                             bold=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")
    terminalreporter.write_line("Install what they need (bash .ci/run installs .ci/apt-packages "
                                "as root) and run again to run them.")
