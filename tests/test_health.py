"""Node health: a failed node is avoided for a cooldown, probed once per cooldown, then trusted
again when it answers; with a hung replica, requests stop waiting on it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import sdht
from sdht.health import NodeHealth

from conftest import ROOT, wait_for


class TestNodeHealth:
    def test_a_failed_node_is_avoided_for_a_cooldown(self):
        health = NodeHealth(cooldown=0.2)
        assert not health.is_suspect("a:1")
        health.failed("a:1")
        assert health.is_suspect("a:1") and health.suspects() == ["a:1"]
        assert health.order(["a:1", "b:2", "c:3"]) == ["b:2", "c:3", "a:1"]
        wait_for(lambda: not health.is_suspect("a:1"), timeout=5, what="the cooldown to end")
        health.failed("a:1")                 # the probe after the cooldown failed again
        assert health.is_suspect("a:1")
        health.answered("a:1")
        assert not health.is_suspect("a:1") and health.suspects() == []


def handled(ring: sdht.Ring, node: str) -> int:
    """Data requests ``node`` has answered, from its own health figures."""
    return ring.transport.health(node)["requests"]


class TestHungReplica:
    def test_requests_stop_waiting_on_a_stopped_replica(self, cluster):
        # No anti-entropy and no hint replay: the node's request count is this client's only
        # (a replayer's batch sent while it hangs is served when it resumes).
        ring, nodes = cluster(3, timeout=(0.5, 0.5),
                              env={"SDHT_SYNC_INTERVAL": "0", "SDHT_HANDOFF_INTERVAL": "0"})
        ring.health.cooldown = 30.0          # no probes during the test: count exactly
        hung = nodes[2]
        before = handled(ring, hung.id)
        hung.signal(signal.SIGSTOP)
        try:
            # Until its first request times out, writes still go to it (at most one each).
            found_out = []
            wait_for(lambda: found_out.append(ring.set(f"early{len(found_out)}", 1))
                     or ring.health.suspects() == [hung.id], what="the hung node to be suspect")
            keys = [f"k{i}" for i in range(40)]
            for key in keys:
                ring.set(key, key)         # n=3 on 3 nodes: every key has a replica on it
            assert all(ring.get(k) == k for k in keys)
            assert ring.health.suspects() == [hung.id]
        finally:
            hung.signal(signal.SIGCONT)
        # None of the 80 operations after it was found out was sent to it.
        wait_for(lambda: ring.transport.health(hung.id), what="the node to resume")
        assert handled(ring, hung.id) - before <= len(found_out)
        # It answers again. A suspicion lasts the cooldown in force when it was recorded (30 s
        # here), so record one as a failed probe would under a short cooldown: the first probe
        # after it must clear it, which is seen as a request the node handled.
        resumed = handled(ring, hung.id)
        ring.health.cooldown = 0.05
        ring.health.failed(hung.id)
        wait_for(lambda: ring.set("probe", 1) and not ring.health.suspects()
                 and handled(ring, hung.id) > resumed,
                 what="the recovered node to be trusted again")


def sdht_cli(tmp_path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Run the ``sdht`` command (a fresh process: no failure memory); return its wall time."""
    env = {k: v for k, v in os.environ.items() if k != "SDHT_SEEDS"}
    env.update(PYTHONPATH=str(ROOT), SDHT_CLUSTER_DIR=str(tmp_path / "no-demo"))
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from sdht.cli import main; main()", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return time.monotonic() - began, proc


class TestCliWithAHungNode:
    def test_commands_answer_within_2s_and_status_shows_it_down(self, cluster, tmp_path):
        ring, nodes = cluster(3, env={"SDHT_SYNC_INTERVAL": "0"})
        seeds = ",".join(n.id for n in nodes)
        ring.set("k", "before")
        startup, _ = sdht_cli(tmp_path, "--help")   # the interpreter and imports alone
        hung = nodes[1]
        hung.signal(signal.SIGSTOP)
        try:
            for args in (("set", "k", "during"), ("get", "k"), ("status", "--json")):
                took, proc = sdht_cli(tmp_path, "--seeds", seeds, *args)
                assert proc.returncode == 0, proc.stderr
                assert took - startup < 2.0, f"sdht {' '.join(args)} took {took:.2f} s"
            state = json.loads(proc.stdout)
            down = [n["id"] for n in state["nodes"] if not n["up"]]
            assert down == [hung.id]
        finally:
            hung.signal(signal.SIGCONT)


def test_a_batch_orders_each_replica_list_as_order_does():
    """``orders()`` gives every preference list the order :meth:`order` gives it, computing
    each distinct list once, and hands out copies."""
    health = NodeHealth()
    nodes = [f"n{i}:1" for i in range(5)]
    health.failed(nodes[1])
    health.answered(nodes[2], seconds=0.5)
    order = health.orders()
    for replicas in (nodes[:3], nodes[1:4], nodes[:3], nodes[2:], nodes[::-1]):
        assert order(replicas) == health.order(replicas)
    mine = order(nodes[:3])
    mine.clear()
    assert order(nodes[:3]) == health.order(nodes[:3])
