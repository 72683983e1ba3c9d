"""The seed's clients against sdht (issue 12): nodes started the seed's way (``VIEW``,
``REPL_FACTOR``, ``ADDRESS``, ``PORT`` and nothing else), driven as spencer-p/key-value-store's
own tests and clients drive it, translated only in their addresses.

The seed's flows (pkg/handlers/handlers_test.go: repeated PUTs, bad inputs, the canonical
example; the shard and view-change routes of pkg/handlers) run against real gunicorn nodes,
from Python and from curl. The one flow translated beyond addresses: the seed's "missing value"
is ``"value": ""`` (Go cannot tell an empty string from no value); sdht stores ``""``, so a
missing value here is a body without ``value``.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from conftest import ROOT, NodeProcess, curl, free_port, wait_for
from sdht.cli import processes

CTX = "causal-context"


class SeedNode(NodeProcess):
    """A node started only from the seed's environment: ``python -m storage.server`` with
    ``VIEW``, ``REPL_FACTOR``, ``ADDRESS`` and ``PORT``, in its own working directory (where
    it keeps its data, ``sdht-data-PORT``)."""

    def __init__(self, base: Path, port: int, view: list[str], factor: int) -> None:
        work = base / f"seed-{port}"
        work.mkdir(parents=True, exist_ok=True)
        super().__init__(work / f"sdht-data-{port}", port=port, workers=1)
        self.work, self.view, self.factor = work, view, factor

    def launch(self) -> "SeedNode":
        """Start the process without waiting for it."""
        self.log = open(self.work / "node.log", "ab")
        env = {"PYTHONPATH": str(ROOT), "VIEW": ",".join(self.view),
               "REPL_FACTOR": str(self.factor), "ADDRESS": self.id, "PORT": str(self.port),
               "SDHT_SYNC_INTERVAL": "2", "SDHT_SYNC": "0"}
        self.proc = processes.spawn([sys.executable, "-m", "storage.server", "--workers", "1"],
                                    self.log, env, cwd=self.work)
        return self

    def start(self, timeout: float = 30.0) -> "SeedNode":
        self.launch()
        self.wait(timeout)
        return self

    def wait(self, timeout: float = 30.0) -> None:
        processes.wait_healthy(self.proc, self.id, timeout, log=self.log.name)


@pytest.fixture
def seed_nodes(tmp_path):
    """Factory: ``seed_nodes(count, factor, view=None)`` starts ``count`` seed-style nodes of
    ``view`` (by default, of themselves) in a random order, all at once; stopped at teardown."""
    started: list[SeedNode] = []

    def make(count: int, factor: int, view: list[str] | None = None,
             ports: list[int] | None = None) -> list[SeedNode]:
        ports = ports or [free_port() for _ in range(count)]
        view = view or [f"127.0.0.1:{p}" for p in ports]
        nodes = [SeedNode(tmp_path, p, view, factor) for p in ports]
        started.extend(nodes)
        for node in random.sample(nodes, len(nodes)):
            node.launch()
        for node in nodes:
            node.wait()
        return nodes

    yield make
    for node in started:
        node.stop()


def call(node, method: str, path: str, ctx=None, **body) -> tuple[int, dict]:
    """One request as the seed's clients make it: a JSON body with the causal context."""
    body.setdefault(CTX, ctx if ctx is not None else {})
    resp = requests.request(method, f"{node.url}/kv-store/{path}", json=body, timeout=60)
    out = resp.json()
    assert CTX in out, out
    return resp.status_code, out


def shard_counts(node) -> dict[int, int]:
    """``{shard id: key-count}`` as a seed client reads them: the shards, then each one."""
    _, out = call(node, "GET", "shards")
    return {sid: call(node, "GET", f"shards/{sid}")[1]["key-count"] for sid in out["shards"]}


def replicas_agree(nodes) -> bool:
    """Every node's key-count equals the count of its shard's other replicas."""
    by_shard: dict[int, set[int]] = {}
    for node in nodes:
        _, out = call(node, "GET", "key-count")
        by_shard.setdefault(out["shard-id"], set()).add(out["key-count"])
    return all(len(counts) == 1 for counts in by_shard.values())


class TestSeedStart:
    def test_nodes_started_in_any_order_agree_on_one_ring(self, seed_nodes):
        nodes = seed_nodes(4, 2)
        rings = [requests.get(f"{n.url}/v1/ring", timeout=5).json() for n in nodes]
        assert all(r == rings[0] for r in rings) and rings[0]["epoch"] == 1
        assert sorted(m["id"] for m in rings[0]["members"]) == sorted(n.id for n in nodes)
        for node in nodes:
            _, out = call(node, "GET", "shards")
            assert out["shards"] == [1, 2]
        replicas = [call(nodes[0], "GET", f"shards/{i}")[1]["replicas"] for i in (1, 2)]
        assert sorted(sum(replicas, [])) == sorted(n.id for n in nodes)
        assert all(len(r) == 2 for r in replicas)
        ctx = {}
        for i, writer in enumerate(nodes):     # every key through every node
            status, out = call(writer, "PUT", f"keys/start{i}", ctx, value=str(i))
            assert status == 201, out
            ctx = out[CTX]
            for reader in nodes:
                status, out = call(reader, "GET", f"keys/start{i}", ctx)
                assert (status, out["value"]) == (200, str(i))

    def test_a_node_outside_its_peers_ring_waits_to_be_joined(self, seed_nodes):
        a, b = seed_nodes(2, 1)
        late = seed_nodes(1, 1, view=[a.id, b.id, f"127.0.0.1:{free_port()}"])[0]
        status, out = call(late, "GET", "shards")
        assert out["shards"] == []         # in no ring: its peers are on another one
        status, out = call(late, "PUT", "keys/x", value="1")
        assert (status, out["error"]) == (503, "Unable to satisfy request")

    def test_keyed_nodes_refuse_a_ring_from_the_environment(self, tmp_path, operator):
        port = free_port()
        env = {"VIEW": f"127.0.0.1:{port}", "REPL_FACTOR": "1", "ADDRESS": f"127.0.0.1:{port}",
               "PORT": str(port), **operator.node_env(f"127.0.0.1:{port}")}
        done = subprocess.run([sys.executable, "-m", "storage.server"], cwd=tmp_path,
                              env={**dict(__import__("os").environ), **env,
                                   "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and "operator" in done.stderr


class TestSeedFlows:
    """pkg/handlers/handlers_test.go, TestPut, against a 4-node seed-style cluster."""

    def test_repeated_puts_bad_inputs_and_the_canonical_example(self, seed_nodes):
        nodes = seed_nodes(4, 2)
        a, b = nodes[0], nodes[3]
        expect = [  # (node, method, key, value, status, fields)
            (a, "PUT", "mykey", "myvalue", 201, {"message": "Added successfully",
                                                  "replaced": False}),
            (b, "PUT", "mykey", "value2", 200, {"message": "Updated successfully",
                                                 "replaced": True}),
            (a, "PUT", "a-new-key", "myvalue", 201, {"message": "Added successfully"}),
            (b, "PUT", "1234567890" * 5 + "123456789", "myvalue", 400,
             {"error": "Key is too long", "message": "Error in PUT"}),
            (a, "PUT", "", "myvalue", 400, {"error": "Key is missing", "message": "Error in PUT"}),
            (b, "PUT", "abc", None, 400, {"error": "Value is missing",
                                          "message": "Error in PUT"}),
            (a, "PUT", "x", "1", 201, {"message": "Added successfully", "replaced": False}),
            (b, "GET", "y", None, 404, {"error": "Key does not exist", "message": "Error in GET",
                                        "doesExist": False}),
            (a, "GET", "x", None, 200, {"message": "Retrieved successfully", "value": "1",
                                        "doesExist": True}),
            (b, "PUT", "x", "2", 200, {"message": "Updated successfully", "replaced": True}),
            (a, "GET", "x", None, 200, {"message": "Retrieved successfully", "value": "2",
                                        "doesExist": True}),
            (b, "DELETE", "x", None, 200, {"message": "Deleted successfully",
                                           "doesExist": True}),
            (a, "GET", "x", None, 404, {"error": "Key does not exist", "doesExist": False}),
            (b, "DELETE", "x", None, 404, {"error": "Key does not exist", "doesExist": False}),
        ]
        ctx = {}
        for i, (node, method, key, value, status, fields) in enumerate(expect):
            body = {} if value is None else {"value": value}
            got, out = call(node, method, f"keys/{key}", ctx, **body)
            assert got == status, (i, out)
            assert {k: out.get(k) for k in fields} == fields, (i, out)
            ctx = out[CTX]

    def test_key_counts_per_shard_sum_agree_and_balance(self, seed_nodes):
        nodes = seed_nodes(4, 2)
        ctx, total = {}, 400
        for i in range(total):
            status, out = call(nodes[i % 4], "PUT", f"keys/count-{i}", ctx, value=str(i))
            assert status == 201, out
            ctx = out[CTX]
        wait_for(lambda: replicas_agree(nodes), 30, what="replicas of a shard agree")
        counts = shard_counts(nodes[1])
        assert sum(counts.values()) == total
        for count in counts.values():
            assert abs(count - total / len(counts)) <= 0.25 * total / len(counts), counts
        for node in nodes:    # a node's count is its shard's
            _, out = call(node, "GET", "key-count")
            assert out["key-count"] == counts[out["shard-id"]]


def view_change(node, view: list[str], factor: int) -> dict:
    status, out = call(node, "PUT", "view-change", view=view, **{"repl-factor": factor})
    assert (status, out["message"]) == (200, "View change successful"), out
    return out


class TestViewChange:
    def test_two_to_four_to_three_members_with_data_kept(self, seed_nodes):
        ports = [free_port() for _ in range(4)]
        ids = [f"127.0.0.1:{p}" for p in ports]
        a, b = seed_nodes(2, 2, ports=ports[:2])
        c, d = seed_nodes(2, 2, view=ids, ports=ports[2:])   # started for the view change
        ctx, keys = {}, 60
        for i in range(keys):
            status, out = call(a, "PUT", f"keys/vc-{i}", ctx, value=f"v{i}")
            ctx = out[CTX]
        out = view_change(d, ids, 2)   # through a node that waits to be joined
        assert [s["shard-id"] for s in out["shards"]] == [1, 2]
        assert sum(s["key-count"] for s in out["shards"]) == keys
        assert sorted(sum((s["replicas"] for s in out["shards"]), [])) == sorted(ids)
        self.check_all(keys, [a, b, c, d], ctx)
        out = view_change(c, ids[1:], 1)      # a leaves; three shards of one replica
        assert [len(s["replicas"]) for s in out["shards"]] == [1, 1, 1]
        self.check_all(keys, [b, c, d], ctx)
        ring = requests.get(f"{a.url}/v1/ring", timeout=5).json()
        assert sorted(m["id"] for m in ring["members"]) == sorted(ids[1:])

    def test_a_restart_with_the_old_environment_keeps_the_newer_ring(self, seed_nodes):
        ports = [free_port() for _ in range(3)]
        ids = [f"127.0.0.1:{p}" for p in ports]
        a, b = seed_nodes(2, 1, ports=ports[:2])
        c = seed_nodes(1, 1, view=ids, ports=ports[2:])[0]
        view_change(a, ids, 1)
        newer = requests.get(f"{c.url}/v1/ring", timeout=5).json()
        assert newer["epoch"] > 1
        b.stop()
        b.start()     # VIEW still names two nodes: the ring it holds wins
        assert requests.get(f"{b.url}/v1/ring", timeout=5).json() == newer
        c.stop()
        shutil.rmtree(c.data_dir)   # a node that lost its disk takes its peers' ring
        c.start()
        assert requests.get(f"{c.url}/v1/ring", timeout=5).json() == newer

    @staticmethod
    def check_all(keys: int, nodes, ctx) -> None:
        for node in nodes:
            for i in range(0, keys, 7):
                status, out = call(node, "GET", f"keys/vc-{i}", ctx)
                assert (status, out["value"]) == (200, f"v{i}"), (node.id, out)
        wait_for(lambda: replicas_agree(nodes), 30, what="replicas of a shard agree")
        assert sum(shard_counts(nodes[0]).values()) == keys

    def test_resharding_under_load_keeps_every_acknowledged_write(self, seed_nodes):
        """A writer keeps writing through the nodes while the view changes (the seed hangs
        here); every write it saw acknowledged reads back afterwards."""
        ports = [free_port() for _ in range(3)]
        ids = [f"127.0.0.1:{p}" for p in ports]
        a, b = seed_nodes(2, 1, ports=ports[:2])
        c = seed_nodes(1, 1, view=ids, ports=ports[2:])[0]
        acked: dict[str, str] = {}
        stop, changing = threading.Event(), threading.Event()
        during = []    # writes acknowledged while the view change ran

        def writer() -> None:
            ctx, i = {}, 0
            while not stop.is_set() and i < 5000:
                key, node = f"load-{i % 150}", (a, b)[i % 2]
                try:
                    status, out = call(node, "PUT", f"keys/{key}", ctx, value=str(i))
                except requests.RequestException:
                    status = 0
                if status in (200, 201):
                    acked[key], ctx = str(i), out[CTX]
                    if changing.is_set():
                        during.append(i)
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_for(lambda: len(acked) >= 20, 30, what="writes before the change")
            changing.set()
            view_change(b, ids, 1)
            changing.clear()
            after = len(during)
            wait_for(lambda: len(acked) >= 150, 60, what="writes after the change")
        finally:
            stop.set()
            thread.join(60)
        assert after > 0, "no write was acknowledged while the view changed"
        for node in (a, b, c):
            for key, value in acked.items():
                status, out = call(node, "GET", f"keys/{key}", {}, )
                assert (status, out.get("value")) == (200, value), (node.id, key, out)



@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
class TestCurl:
    def test_the_seed_flows_and_a_view_change_from_curl(self, seed_nodes):
        ports = [free_port() for _ in range(3)]
        ids = [f"127.0.0.1:{p}" for p in ports]
        a, b = seed_nodes(2, 2, ports=ports[:2])
        c = seed_nodes(1, 2, view=ids, ports=ports[2:])[0]
        put = ["-X", "PUT", "-H", "Content-Type: application/json"]
        status, out = curl(*put, "-d", '{"value":"1","causal-context":{}}',
                           f"{a.url}/kv-store/keys/x")
        assert (status, out["message"], out["replaced"]) == (201, "Added successfully", False)
        ctx = json.dumps({CTX: out[CTX]})
        status, out = curl("-X", "GET", "-d", ctx, f"{b.url}/kv-store/keys/x")
        assert (status, out["value"], out["doesExist"]) == (200, "1", True)
        status, out = curl(f"{a.url}/kv-store/shards")
        assert (status, out["shards"]) == (200, [1])
        status, out = curl(f"{a.url}/kv-store/shards/1")
        assert (status, sorted(out["replicas"])) == (200, sorted(ids[:2]))
        status, out = curl(*put, "-d", json.dumps({"view": ",".join(ids), "repl-factor": 1}),
                           f"{a.url}/kv-store/view-change")
        assert (status, out["message"]) == (200, "View change successful"), out
        assert sum(s["key-count"] for s in out["shards"]) == 1
        status, out = curl(f"{c.url}/kv-store/keys/x")
        assert (status, out["value"]) == (200, "1")
        status, out = curl(f"{c.url}/kv-store/shards/9")
        assert (status, out["error"]) == (404, "Shard does not exist")
        status, out = curl(*put, "-d", '{"view": [], "repl-factor": 1}',
                           f"{a.url}/kv-store/view-change")
        assert (status, out["error"]) == (400, "Failed to parse request body")
