"""The ``sdht`` command line, run as a real subprocess against a real demo cluster."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import ROOT, NodeProcess, wait_for
from sdht.cli.processes import answers_health, group_alive


def run(cluster_dir: Path, *args: str, ok: bool = True,
        stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run ``sdht ARGS`` with the demo cluster's directory; check the exit status when ``ok``."""
    env = {k: v for k, v in os.environ.items() if k != "SDHT_SEEDS"}
    env.update(PYTHONPATH=str(ROOT), SDHT_CLUSTER_DIR=str(cluster_dir))
    # What the ``sdht`` entry point runs.
    proc = subprocess.run([sys.executable, "-c", "from sdht.cli import main; main()", *args],
                          cwd=ROOT, env=env, capture_output=True, timeout=120,
                          input=stdin if stdin is not None else b"")
    proc.stdout, proc.stderr = (proc.stdout.decode(errors="replace"),
                                proc.stderr.decode(errors="replace"))
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

    deleted = run(cluster_dir, "delete", "doc").stdout
    assert deleted.startswith("deleted 'doc' on 127.0.0.1:")
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
        assert "stopped 3 node(s)" in out and "by hand" not in out
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


# -- issue 17: what a new user trips on ------------------------------------------------------

def test_the_port_check_ignores_connections_closing_after_a_stop():
    """A server that closed its side first leaves its port in TIME_WAIT for up to a minute; a
    new server binds it (gunicorn sets SO_REUSEADDR), so the check must say it is free."""
    import socket
    from sdht.cli.processes import port_free
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()          # the server's side closes first: its end goes to TIME_WAIT
    server.close()
    client.close()
    with socket.socket() as plain:   # without SO_REUSEADDR (the old check) the port is taken
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert port_free(port)


def test_delete_of_a_key_never_set_says_so(demo):
    cluster_dir = demo[0]
    out = run(cluster_dir, "delete", "never-set-key").stdout
    assert "was not set" in out and "deleted" not in out


def test_seeds_before_and_after_the_command(demo, tmp_path):
    seeds = ",".join(n["id"] for n in demo[1]["nodes"])
    elsewhere = tmp_path / "no-demo"   # no demo cluster here: only --seeds finds the ring
    run(elsewhere, "--seeds", seeds, "set", "seeded", "1")
    assert run(elsewhere, "get", "seeded", "--seeds", seeds).stdout == "1\n"
    assert "3 of 3 nodes up" in run(elsewhere, "status", "--seeds", seeds).stdout


def test_a_500_kb_value_from_stdin_and_from_a_file(demo, tmp_path):
    cluster_dir = demo[0]
    text = ("0123456789abcdef" * 32_000)[:500_000]
    out = run(cluster_dir, "set", "big", "-", stdin=text.encode()).stdout
    assert out.startswith("stored 'big' on ")
    assert run(cluster_dir, "get", "big").stdout == text + "\n"
    blob = bytes(range(256)) * 8 + b"\xff\xfe"   # not UTF-8: stored as bytes
    (tmp_path / "blob").write_bytes(blob)
    run(cluster_dir, "set", "blob", "--file", str(tmp_path / "blob"))
    import base64
    got = json.loads(run(cluster_dir, "get", "blob", "--json").stdout)["value"]
    assert base64.b64decode(got["$bytes"]) == blob
    (tmp_path / "doc.json").write_text('{"from": "a file"}\n')
    run(cluster_dir, "set", "doc-file", "--file", str(tmp_path / "doc.json"))
    assert json.loads(run(cluster_dir, "get", "doc-file").stdout) == {"from": "a file"}
    both = run(cluster_dir, "set", "k", "v", "--file", str(tmp_path / "blob"), ok=False)
    assert "not both" in one_error_line(both)


def test_cluster_add_and_remove(demo):
    cluster_dir, state, _ = demo
    added = run(cluster_dir, "cluster", "add").stdout
    node = added.split()[1]
    assert added.startswith(f"added {node} (pid ") and "moved" in added
    status = json.loads(run(cluster_dir, "status", "--json").stdout)
    assert node in {n["id"] for n in status["nodes"]} and len(status["nodes"]) == 4
    record = next(n for n in json.loads((cluster_dir / "cluster.json").read_text())["nodes"]
                  if n["id"] == node)
    removed = run(cluster_dir, "cluster", "remove", node).stdout
    assert f"removed {node} from the ring" in removed and f"stopped {node}" in removed
    assert not group_alive(record["pid"])
    assert len(json.loads(run(cluster_dir, "status", "--json").stdout)["nodes"]) == 3
    assert node not in (cluster_dir / "cluster.json").read_text()


def kill9(node: dict) -> None:
    """kill -9 a demo node's whole process group and wait until it no longer answers."""
    os.killpg(node["pid"], signal.SIGKILL)
    wait_for(lambda: not group_alive(node["pid"]), 10, what=f"{node['id']} to die")


def test_a_dead_node_set_repair_and_restart(own_demo):
    """With one replica killed: set names only the nodes that acknowledged, repair fails
    with a non-zero status, and cluster restart brings the node back."""
    cluster_dir, state, _ = own_demo
    dead = state["nodes"][2]
    kill9(dead)
    out = run(cluster_dir, "set", "while-down", "1").stdout
    acked = out.split(" (work")[0]
    assert dead["id"] not in acked, out
    assert all(n["id"] in acked for n in state["nodes"][:2]), out
    assert f"not acknowledged by {dead['id']}" in out

    failed = run(cluster_dir, "repair", ok=False)
    assert failed.returncode == 1 and "repair incomplete" in failed.stderr
    assert "Traceback" not in failed.stderr

    restarted = run(cluster_dir, "cluster", "restart", str(dead["port"])).stdout
    assert f"restarted {dead['id']}" in restarted
    assert requests.get(f"http://{dead['id']}/v1/health", timeout=5).ok
    run(cluster_dir, "repair")   # every replica reachable again: exit status 0


def test_stop_stops_a_node_restarted_by_hand_and_start_follows_at_once(own_demo):
    """A node restarted by hand with sdht-storage on its port and data is the cluster's node:
    stop stops it and says so. Then start binds the same ports at once (no 'in use')."""
    cluster_dir, state, _ = own_demo
    node = state["nodes"][1]
    kill9(node)
    key = (cluster_dir / f"{node['port']}.key").read_text().strip()
    pub = (cluster_dir / "operator.pub").read_text().strip()
    by_hand = NodeProcess(cluster_dir / str(node["port"]), port=node["port"], workers=1,
                          env={"SDHT_OPERATOR_PUBKEY": pub, "SDHT_NODE_KEY": key}).start()
    try:
        with requests.Session() as kept:   # open keep-alive connections, closed by the stop
            for n in state["nodes"]:
                kept.get(f"http://{n['id']}/v1/health", timeout=5)
            out = run(cluster_dir, "cluster", "stop").stdout
        assert "stopped 3 node(s)" in out and f"{node['id']} (restarted by hand, pid " in out
        wait_for(lambda: by_hand.proc.poll() is not None, 10, what="the hand-started node")
        first = state["nodes"][0]["port"]
        again = run(cluster_dir, "cluster", "start", "-n", "1", "--base-port", str(first),
                    "--workers", "1")
        assert f"127.0.0.1:{first}" in again.stdout
    finally:
        by_hand.stop()
    assert "stopped 1 node(s)" in run(cluster_dir, "cluster", "stop").stdout


def test_the_supervisor_restarts_a_node_killed_with_kill_9(tmp_path):
    cluster_dir = tmp_path / "supervised"
    started = run(cluster_dir, "cluster", "start", "-n", "2", "--base-port", "0",
                  "--workers", "1", "--supervise")
    try:
        assert "supervisor: pid" in started.stdout
        state = json.loads((cluster_dir / "cluster.json").read_text())
        supervisor = state["supervisor"]["pid"]
        victim = state["nodes"][0]
        kill9(victim)

        def back() -> bool:
            now = json.loads((cluster_dir / "cluster.json").read_text())["nodes"][0]
            return now["pid"] != victim["pid"] and answers_health(victim["id"])
        wait_for(back, 30, interval=0.2, what="the supervisor to restart the node")
        assert "restarted it" in (cluster_dir / "supervisor.log").read_text()
    finally:
        out = run(cluster_dir, "cluster", "stop").stdout
    assert "stopped 2 node(s)" in out and f"stopped the supervisor (pid {supervisor})" in out
    assert not group_alive(supervisor)


def test_the_restart_budget_backs_off_and_caps_the_rate():
    from sdht.cli.supervisor import RestartBudget
    budget = RestartBudget(limit=3, window=60, first=1, cap=30)
    assert budget.wait("a", 0) == 0
    budget.spend("a", 0)
    assert budget.wait("a", 0.5) == 0.5          # 1 s after the first restart
    budget.spend("a", 1)
    assert budget.wait("a", 1) == 2              # then 2 s
    budget.spend("a", 3)
    assert budget.wait("a", 3) == 57             # 3 in the window: wait until it slides
    assert budget.wait("b", 3) == 0              # per node
    assert budget.wait("a", 61) == 0              # the first two slid out; 1 s after 3 passed


def test_ring_busy_says_rerunning_resumes():
    from sdht.errors import RingBusy
    from sdht.migration import _check_idle
    from sdht.ring import JOINING, NORMAL, Member, RingView
    view = RingView(3, (Member("127.0.0.1:1", NORMAL, 4), Member("127.0.0.1:2", JOINING, 4)))
    with pytest.raises(RingBusy, match="re-running that same join or remove resumes it"):
        _check_idle(view, "127.0.0.1:3")


def test_the_docs_link_what_exists_and_build_the_deb_in_a_copy():
    readme = (ROOT / "README.md").read_text()
    init = (ROOT / "sdht" / "__init__.py").read_text()
    assert "DESIGN.md" not in readme and "DESIGN.md" not in init
    assert "docs/design.md" in init
    deb = next(line for line in readme.splitlines() if "dpkg-buildpackage" in line)
    assert "copy" in deb
    python_example = readme.split("```python", 1)[1].split("```", 1)[0]
    assert "sdht.remove(Node(\"127.0.0.1\", 5555))" not in python_example


def test_the_readme_python_example_leaves_the_demo_cluster_whole(demo):
    """Run the README's Python example against the demo cluster (its ports for 5555-5557), as
    a new user would with SDHT_SEEDS exported: every demo node is still a member after."""
    cluster_dir, state, _ = demo
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```python", 1)[1].split("```", 1)[0]
    for i, node in enumerate(state["nodes"]):
        example = example.replace(f'"127.0.0.1", {5555 + i}', f'"127.0.0.1", {node["port"]}')
        example = example.replace(f"127.0.0.1:{5555 + i}", node["id"])
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SDHT_SEEDS": ",".join(n["id"] for n in state["nodes"])}
    ran = subprocess.run([sys.executable, "-c", example], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    members = {n["id"] for n in json.loads(run(cluster_dir, "status", "--json").stdout)["nodes"]}
    assert members == {n["id"] for n in state["nodes"]}


def test_heartbeats_find_a_silent_node_after_its_grace():
    from sdht.cli.supervisor import Heartbeats
    beats = Heartbeats(hung_after=10, grace=30)
    assert beats.silent_for("a", 100, False, 0) is None       # just started: grace
    assert beats.silent_for("a", 100, False, 29) is None
    assert beats.silent_for("a", 100, False, 31) == 31         # never answered in 30 s
    assert beats.silent_for("a", 200, False, 31) is None       # a new process: grace again
    assert beats.silent_for("a", 200, True, 32) is None
    assert beats.silent_for("a", 200, False, 41) is None
    assert beats.silent_for("a", 200, False, 43) == 11         # silent 11 s after answering


def test_the_supervisor_replaces_a_hung_node(tmp_path):
    """A node stopped with SIGSTOP keeps its process but answers nothing: after its
    heartbeat has been silent for HUNG_AFTER seconds the supervisor stops it and starts it
    again."""
    cluster_dir = tmp_path / "hung"
    run(cluster_dir, "cluster", "start", "-n", "1", "--base-port", "0", "--workers", "1",
        "--supervise")
    try:
        node = json.loads((cluster_dir / "cluster.json").read_text())["nodes"][0]
        os.killpg(node["pid"], signal.SIGSTOP)

        def replaced() -> bool:
            now = json.loads((cluster_dir / "cluster.json").read_text())["nodes"][0]
            return now["pid"] != node["pid"] and answers_health(node["id"])
        wait_for(replaced, 90, interval=0.5, what="the hung node to be replaced")
        assert not group_alive(node["pid"])
        assert "has not answered for" in (cluster_dir / "supervisor.log").read_text()
    finally:
        run(cluster_dir, "cluster", "stop", ok=False)
