"""Routing by score on real gunicorn nodes: a replica made slow, erroring or far away gets a
measurably smaller share of reads, and its share back once it recovers (sdht/health.py)."""
from __future__ import annotations

import pytest

import sdht
from sdht.health import NodeHealth, distance_mm

from conftest import wait_for

KEYS = [f"key{i}" for i in range(40)]
#: Anti-entropy off, so that the figures count the client's requests only.
QUIET = {"SDHT_SYNC_INTERVAL": "0"}


def requests_served(ring: sdht.Ring, nodes) -> dict[str, int]:
    """Data requests each node has answered, from its own health figures."""
    return {n.id: ring.transport.health(n.id)["requests"] for n in nodes}


def share_of_reads(ring: sdht.Ring, nodes, node, rounds: int = 3) -> float:
    """The fraction of the requests of ``rounds`` reads of every key that ``node`` served."""
    before = requests_served(ring, nodes)
    for _ in range(rounds):
        for key in KEYS:
            assert ring.get(key) == key
    after = requests_served(ring, nodes)
    total = sum(after[n] - before[n] for n in after)
    return (after[node.id] - before[node.id]) / total


def three_nodes(start_node, odd_env: dict, env: dict | None = None):
    """Three nodes holding :data:`KEYS`; the node that serves the most reads in ring order is
    restarted with ``odd_env`` and returned as the odd one, with its share of reads in ring
    order (:func:`natural_share`) and a new client that has seen nothing of any node.

    Node positions are random, so a node's share in ring order ranges from near 0 to near
    1/2: the odd node is the one with the largest, at least 1/3, so that losing it and
    getting it back are both far from noise."""
    nodes = [start_node(env={**QUIET, **(env or {})}) for _ in range(3)]
    ring = sdht.Ring([nodes[0].id])
    for n in nodes:
        ring.join(n.id)
    for key in KEYS:
        ring.set(key, key)
    odd = max(nodes, key=lambda n: natural_share(ring, n))
    natural = natural_share(ring, odd)
    ring.close()
    restart_with(odd, {**QUIET, **(env or {}), **odd_env})
    return sdht.Ring([nodes[0].id]), nodes, odd, natural


def natural_share(ring: sdht.Ring, node) -> float:
    """The share of the requests of reads of :data:`KEYS` that ``node`` serves when every
    read asks the first ``r`` replicas in ring order."""
    r = ring.params["r"]
    asked = sum(node.id in ring.preference(key)[:r] for key in KEYS)
    return asked / (r * len(KEYS))


def restart_with(node, env: dict) -> None:
    """Restart ``node`` on its data with the environment ``env``."""
    node.stop()
    node.env = env
    node.start()


class TestScoreOrdering:
    @pytest.mark.parametrize("fault", [{"SDHT_TEST_DELAY_MS": "80"},
                                       {"SDHT_TEST_ERROR_RATE": "1"}], ids=["slow", "erroring"])
    def test_a_faulty_replica_loses_its_share_and_gets_it_back(self, start_node, fault):
        ring, nodes, odd, natural = three_nodes(start_node, fault)
        try:
            assert natural >= 1 / 3
            share_of_reads(ring, nodes, odd, rounds=1)         # the client learns
            faulty = share_of_reads(ring, nodes, odd)
            assert faulty < natural / 2, f"{fault}: {faulty:.2f} of the reads"
            restart_with(odd, QUIET)
            # Old samples fade: the recovered node is tried again, and keeps its share.
            wait_for(lambda: share_of_reads(ring, nodes, odd) > natural * 0.75, timeout=60,
                     what=f"the recovered node's share of reads (natural {natural:.2f})")
        finally:
            ring.close()

    def test_a_far_replica_loses_its_share_unless_the_client_ignores_distance(self,
                                                                               start_node):
        ring, nodes, far, natural = three_nodes(start_node, {"SDHT_LOCATION": "0,90"},
                                                env={"SDHT_LOCATION": "0,0"})
        try:
            ring.health.location = (0.0, 0.0)
            wait_for(lambda: share_of_reads(ring, nodes, far, rounds=1) < natural / 4,
                     timeout=30, what="reads to leave the far node")
            assert share_of_reads(ring, nodes, far) < natural / 4
            ring.health.weights["k"] = 0.0      # this client's own weights win
            assert share_of_reads(ring, nodes, far) > natural * 0.75
        finally:
            ring.close()


class TestScore:
    def test_the_failure_cooldown_is_the_delay_term(self):
        health = NodeHealth(cooldown=2.0)
        health.failed("a:1")
        terms = health.terms("a:1")
        assert 1.5 < terms["delay"] <= 2.0 and health.is_suspect("a:1")
        assert health.score("a:1") < health.score("b:2")

    def test_ring_order_is_kept_unless_a_replica_is_more_than_b_worse(self):
        health = NodeHealth()
        for node, seconds in (("a:1", 0.004), ("b:2", 0.008), ("c:3", 0.060)):
            for _ in range(20):
                health.answered(node, seconds=seconds)
        assert health.order(["a:1", "b:2"]) == ["a:1", "b:2"]
        assert health.order(["b:2", "a:1"]) == ["b:2", "a:1"]      # within the floor: kept
        assert health.order(["c:3", "a:1", "b:2"]) == ["a:1", "b:2", "c:3"]
        health.weights["b"] = 100.0                                # a client that never moves
        assert health.order(["c:3", "a:1", "b:2"]) == ["c:3", "a:1", "b:2"]

    def test_distance_weighs_by_the_ring_parameter_or_the_clients_own(self):
        health = NodeHealth(location=(0.0, 0.0))
        health.learn("far:1", {"location": "0,90"})
        health.learn("near:2", {"location": "0.1,0.1"})
        assert 9.9 < distance_mm((0.0, 0.0), (0.0, 90.0)) < 10.1
        assert health.order(["far:1", "near:2"]) == ["near:2", "far:1"]
        health.configure({**health.params, "score_distance": 0.0})
        assert health.order(["far:1", "near:2"]) == ["far:1", "near:2"]
