"""The ring's limits hold on both sides: what the nodes accept, the client can read back and
migrate, and what the client would never finish, it refuses at once."""
from __future__ import annotations

import threading

import pytest

import sdht
from sdht.wire import RING_SIZE

BIG = 3 << 20   # a ring that allows 3 MiB values; the default limit is 1 MiB


def test_a_value_over_the_default_limit_reads_back_and_migrates(inprocess_cluster, node_apps):
    ring, apps = inprocess_cluster(2, params={"max_value_bytes": BIG, "n": 2, "w": 2, "r": 2})
    value = "v" * (2 << 20)
    ring.set("big", value)
    assert ring.get("big") == value                      # was ValueTooLarge: default limits
    assert ring.get_many(["big"]) == {"big": value}
    new_apps = node_apps(1, into=apps)
    (new,) = new_apps
    ring.join(new)
    for node in ring.preference("big"):                  # migration scanned and moved it
        rec, _ = ring.transport.get_record(node, "big", ring.params)
        assert rec is not None and rec.value == value
    ring.remove(ring.preference("big")[0])               # and back off a leaving node
    assert ring.get("big") == value
    assert ring.repair().errors == []


def test_a_read_of_a_value_over_the_rings_limit_is_refused(inprocess_cluster):
    ring, _ = inprocess_cluster(1, params={"max_value_bytes": BIG})
    ring.set("big", "v" * (2 << 20))
    node = ring.nodes[0]
    with pytest.raises(sdht.ValueTooLarge):   # a reader holding the defaults refuses it
        ring.transport.get_record(node, "big", sdht.params.DEFAULTS)
    page, _ = ring.transport.scan(node, 0, RING_SIZE, params=ring.params)
    assert len(page) == 1


@pytest.mark.parametrize("work", [1000, 60.5, 2.0])
def test_batch_writes_refuse_work_out_of_range_at_once(inprocess_cluster, work):
    ring, _ = inprocess_cluster(1)
    outcome: list = []

    def attempt() -> None:
        try:
            ring.set_many({"a": 1, "b": 2}, work=work)
            outcome.append("written")
        except sdht.InvalidRecord as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)   # minting work 1000 would never end
    assert not thread.is_alive(), "set_many kept minting"
    assert isinstance(outcome[0], sdht.InvalidRecord)
    assert ring.get_many(["a", "b"]) == {}
