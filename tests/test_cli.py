"""The ``sdht`` command line, run as a real subprocess against a real demo cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import ROOT, NodeProcess
from sdht.cli.processes import group_alive


def run(cluster_dir: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``sdht ARGS`` with the demo cluster's directory; check the exit status when ``ok``."""
    env = {k: v for k, v in os.environ.items() if k != "SDHT_SEEDS"}
    env.update(PYTHONPATH=str(ROOT), SDHT_CLUSTER_DIR=str(cluster_dir))
    # What the ``sdht`` entry point runs (sdht.cli has no __main__ module for ``-m``).
    proc = subprocess.run([sys.executable, "-c", "from sdht.cli import main; main()", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def start_demo(cluster_dir: Path) -> Iterator[tuple[Path, dict, str]]:
    """Start a 3-node demo cluster with ``sdht cluster start`` on free ports; yield its
    directory, state file and output; stop it afterwards unless a test already did."""
    started = run(cluster_dir, "cluster", "start", "-n", "3", "--base-port", "0",
                  "--workers", "1")
    state = json.loads((cluster_dir / "cluster.json").read_text())
    yield cluster_dir, state, started.stdout
    if (cluster_dir / "cluster.json").exists():
        run(cluster_dir, "cluster", "stop", ok=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo cluster shared by the module's tests. Each test writes the keys it reads, and
    none stops the cluster or leaves a member behind, so they pass in any order."""
    yield from start_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def own_demo(tmp_path_factory):
    """A demo cluster of the test's own, for a test that stops it."""
    yield from start_demo(tmp_path_factory.mktemp("own-demo"))


def test_start_prints_the_seeds_and_every_node_serves(demo):
    cluster_dir, state, out = demo
    ids = [n["id"] for n in state["nodes"]]
    assert f"export SDHT_SEEDS={','.join(ids)}" in out
    for node in state["nodes"]:
        assert (cluster_dir / f"{node['port']}.log").exists()
        assert requests.get(f"http://{node['id']}/v1/health", timeout=5).json()["epoch"] >= 3


def test_set_get_delete_json_and_raw_values(demo):
    cluster_dir = demo[0]
    run(cluster_dir, "set", "doc", '{"a": [1, 2], "b": null}')
    assert json.loads(run(cluster_dir, "get", "doc").stdout) == {"a": [1, 2], "b": None}
    run(cluster_dir, "set", "number", "42")
    assert json.loads(run(cluster_dir, "get", "number", "--json").stdout) == {
        "key": "number", "found": True, "value": 42}
    run(cluster_dir, "set", "text", "42", "--raw")
    assert json.loads(run(cluster_dir, "get", "text", "--json").stdout)["value"] == "42"
    run(cluster_dir, "set", "plain", "hello world", "--work", "4")
    assert run(cluster_dir, "get", "plain").stdout == "hello world\n"

    run(cluster_dir, "delete", "doc")
    missing = run(cluster_dir, "get", "doc", ok=False)
    assert missing.returncode == 1 and "not set" in one_error_line(missing)
    as_json = run(cluster_dir, "get", "doc", "--json", ok=False)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["found"] is False


def test_fill_and_status(demo):
    cluster_dir, state, _ = demo
    filled = run(cluster_dir, "fill", "150", "--prefix", "f-", "--batch", "40")  # 4 batches
    assert "150 keys" in filled.stderr
    assert json.loads(run(cluster_dir, "get", "f-000149").stdout) == {"n": 149, "note": "demo"}
    table = run(cluster_dir, "status").stdout.splitlines()
    assert table[0].split()[:4] == ["NODE", "STATE", "SHARE", "RECORDS"]
    for node in state["nodes"]:
        row = next(line for line in table if line.startswith(node["id"]))
        assert " normal " in row and "100.0%" in row and row.endswith("ok")
    assert "3 of 3 nodes up" in table[-1] and "agree" in table[-1]

    status = json.loads(run(cluster_dir, "status", "--json").stdout)
    assert status["agree"] is True
    assert {n["id"] for n in status["nodes"]} == {n["id"] for n in state["nodes"]}
    for n in status["nodes"]:
        assert n["up"] and n["records"] >= 150 and n["share"] == 1.0
        assert n["mean_response_ms"] > 0 and n["heartbeat"] > 0


def test_join_and_remove_show_progress(demo, tmp_path):
    cluster_dir = demo[0]
    run(cluster_dir, "fill", "150", "--prefix", "j-", "--batch", "50")  # something to move
    extra = NodeProcess(tmp_path / "extra", workers=1).start()
    removed = False
    try:
        joined = run(cluster_dir, "join", extra.id)
        assert "records moved" in joined.stderr and "/s" in joined.stderr
        assert f"joined {extra.id}" in joined.stdout
        moved = int(joined.stdout.split("moved ")[1].split(",")[0])
        assert moved > 0
        status = json.loads(run(cluster_dir, "status", "--json").stdout)
        assert len(status["nodes"]) == 4
        assert abs(sum(n["share"] for n in status["nodes"]) - 3.0) < 1e-9

        removal = run(cluster_dir, "remove", extra.id)
        removed = True
        assert "records moved" in removal.stderr and f"removed {extra.id}" in removal.stdout
        assert len(json.loads(run(cluster_dir, "status", "--json").stdout)["nodes"]) == 3
        assert run(cluster_dir, "get", "j-000007").stdout.strip() == '{"n": 7, "note": "demo"}'
    finally:
        if not removed:   # leave the shared cluster as it was, for the other tests
            run(cluster_dir, "remove", extra.id, ok=False)
        extra.stop()


def test_errors_are_one_line(demo, tmp_path):
    cluster_dir = demo[0]
    unreachable = run(cluster_dir, "--seeds", "127.0.0.1:1", "get", "k", ok=False)
    assert "could be reached" in one_error_line(unreachable)
    assert "Missing argument" in one_error_line(run(cluster_dir, "set", "k", ok=False))
    assert "no seeds" in one_error_line(run(tmp_path / "none", "get", "k", ok=False))
    not_member = run(cluster_dir, "remove", "127.0.0.1:9", ok=False)
    assert "not a member" in one_error_line(not_member)
    again = run(cluster_dir, "cluster", "start", "--base-port", "0", ok=False)
    assert "already running" in one_error_line(again)


def test_stop_kills_exactly_its_processes(own_demo, tmp_path):
    cluster_dir, state, _ = own_demo
    bystander = NodeProcess(tmp_path / "bystander", workers=1).start()
    try:
        out = run(cluster_dir, "cluster", "stop").stdout
        assert "stopped 3 node(s)" in out
        for node in state["nodes"]:
            assert not group_alive(node["pid"])
        assert not (cluster_dir / "cluster.json").exists()
        assert bystander.healthy()
        assert "no demo cluster" in one_error_line(run(cluster_dir, "cluster", "stop", ok=False))
    finally:
        bystander.stop()


def test_keys_the_first_join_and_keygen(tmp_path, start_node):
    """With the operator key in the environment, the first join of a fresh keyed node makes a
    signed ring; keygen derives that node's key and page token."""
    from conftest import Operator
    operator = Operator()
    node = start_node(operator=operator)
    key_file = tmp_path / "operator.key"
    key_file.write_text(operator.private)
    env_dir = tmp_path / "no-demo"
    joined = run(env_dir, "--operator-key", str(key_file), "--seeds", node.id, "join", node.id)
    assert f"joined {node.id}" in joined.stdout
    ring = requests.get(f"{node.url}/v1/ring", timeout=5).json()
    assert ring["signature"] and ring["members"][0]["key"]
    derived = run(env_dir, "--operator-key", str(key_file), "keygen", "--node", node.id)
    assert operator.node_private(node.id) in derived.stdout and "page token" in derived.stdout
    made = run(env_dir, "keygen", "--out", str(tmp_path / "new.key"))
    assert "public key" in made.stdout and (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    # A CLI holding another key trusts nothing this cluster serves: one line, non-zero exit.
    other = tmp_path / "other.key"
    other.write_text("ab" * 32)
    line = one_error_line(run(env_dir, "--operator-key", str(other), "--seeds", node.id,
                              "get", "k", ok=False))
    assert "trust" in line
