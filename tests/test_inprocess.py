"""The in-process transport (sdht.inprocess): real storage apps called as WSGI apps, no sockets."""
from __future__ import annotations

import threading

import lmdb
import pytest

import sdht
from sdht.inprocess import WSGITransport

from conftest import close_node_app


def holds(transport: WSGITransport, node: str, key: str) -> bool:
    """Whether ``node`` stores a record (a tombstone included) for ``key``."""
    reply = transport.request(node, "GET", "/v1/record", params={"key": key}, ok=(200, 404))
    return reply.status == 200


class TestTransport:
    def test_set_get_round_trip_through_real_apps(self, inprocess_cluster):
        ring, apps = inprocess_cluster(3)
        assert sorted(ring.nodes) == sorted(apps)
        ring.set("k", {"a": [1, b"\x00", "ü"]})
        assert ring.get("k") == {"a": [1, b"\x00", "ü"]}
        t = ring.transport
        assert sum(holds(t, n, "k") for n in ring.preference("k")) >= 2
        health = t.health(ring.nodes[0])
        assert health["node"] == ring.nodes[0] and health["epoch"] == ring.view.epoch
        ring.delete("k")
        assert ring.get("k", "gone") == "gone"

    def test_answers_carry_the_epoch_and_errors_their_status(self, inprocess_cluster):
        ring, apps = inprocess_cluster(1)
        node = ring.nodes[0]
        reply = ring.transport.request(node, "GET", "/v1/ring")
        assert reply.status == 200 and reply.epoch == ring.view.epoch == reply.body["epoch"]
        with pytest.raises(sdht.NodeError) as info:
            ring.transport.request(node, "GET", "/v1/range", params={"start": 5, "end": 4})
        assert info.value.status == 400 and info.value.node == node
        assert info.value.body["error"] == "inverted_range"

    def test_admin_routes_are_signed_with_the_transports_keys(self, node_apps, operator):
        apps = node_apps(1, per_node=operator.node_config)
        node = next(iter(apps))
        keyless, keyed = WSGITransport(apps), WSGITransport(apps, keys=operator.keys())
        with pytest.raises(sdht.NodeError) as info:
            keyless.delete_range(node, 0, 1 << 64)
        assert info.value.status == 401
        assert keyed.delete_range(node, 0, 1 << 64) == 0
        keyless.close()
        keyed.close()

    def test_an_absent_or_down_node_is_unavailable(self, inprocess_cluster):
        ring, apps = inprocess_cluster(2)
        t = ring.transport
        with pytest.raises(sdht.NodeUnavailable) as info:
            t.health("127.0.0.1:9")
        assert info.value.node == "127.0.0.1:9"
        down = ring.nodes[1]
        t.mark_down(down)
        with pytest.raises(sdht.NodeUnavailable, match="marked down"):
            t.health(down)
        t.mark_up(down)
        assert t.health(down)["node"] == down

    def test_close_waits_for_calls_in_flight(self, node_apps):
        apps = node_apps(1)
        node = next(iter(apps))
        t = WSGITransport(apps)
        started, release = threading.Event(), threading.Event()

        def slow() -> dict:
            started.set()
            release.wait(10)
            return t.health(node)

        fut = t.submit(slow)
        assert started.wait(10)
        threading.Timer(0.2, release.set).start()
        t.close()
        assert fut.done() and fut.result()["node"] == node

    def test_close_waits_for_app_calls_from_any_thread_and_refuses_later_ones(self, node_apps):
        """A ring's hint sender calls apps from a thread of its own: close waits for those
        calls too, since the caller closes the stores next (a store closed under a write in
        another thread leaves LMDB's write lock held, and the next close waits forever)."""
        apps = node_apps(1)
        node, inner = next(iter(apps.items()))
        entered, release, inflight = threading.Event(), threading.Event(), []

        def app(environ, start_response):
            inflight.append(node)
            entered.set()
            release.wait(10)
            try:
                return inner(environ, start_response)
            finally:
                inflight.pop()

        t = WSGITransport({node: app})
        sender = threading.Thread(target=t.health, args=(node,))   # not the pool's
        sender.start()
        assert entered.wait(10)
        threading.Timer(0.2, release.set).start()
        t.close()
        assert not inflight
        with pytest.raises(sdht.NodeUnavailable):
            t.health(node)
        sender.join(10)

    def test_closing_an_app_closes_its_store(self, node_apps):
        apps = node_apps(1)
        node, app = next(iter(apps.items()))
        t = WSGITransport(apps)
        t.health(node)   # the first request opens the store
        t.close()
        env = app.extensions["sdht.store"][1].env
        close_node_app(app)
        assert app.extensions["sdht.store"] is None
        with pytest.raises(lmdb.Error):
            env.stat()


class TestQuorumWithADeadReplica:
    def test_one_dead_replica_of_three_still_makes_r_and_w(self, inprocess_cluster):
        ring, _ = inprocess_cluster(3)   # n=3, r=2, w=2: every node is a replica of every key
        t = ring.transport
        dead = ring.preference("k")[0]
        t.mark_down(dead)
        ring.set("k", "v")
        assert ring.get("k") == "v"
        t.mark_up(dead)   # back with what it had (nothing): anti-entropy refills it
        assert not holds(t, dead, "k")
        assert ring.repair().errors == []
        assert holds(t, dead, "k") and ring.get("k") == "v"

    def test_two_dead_replicas_of_three_fail_the_quorum(self, inprocess_cluster):
        ring, _ = inprocess_cluster(3)
        ring.set("k", "v")
        t = ring.transport
        dead = ring.preference("k")[:2]
        for node in dead:
            t.mark_down(node)
        with pytest.raises(sdht.QuorumError) as info:
            ring.set("k", "v2")
        assert (info.value.needed, info.value.got) == (2, 1)
        assert set(info.value.errors) == set(dead)
        assert all("unreachable" in message for message in info.value.errors.values())
        with pytest.raises(sdht.QuorumError) as info:
            ring.get("k")
        assert (info.value.needed, info.value.got) == (2, 1)
        for node in dead:
            t.mark_up(node)
        # A write short of its quorum is not undone: the replica it reached keeps v2, which a
        # read (healthy replicas first, the survivor among them) finds and returns.
        assert ring.get("k") == "v2"
