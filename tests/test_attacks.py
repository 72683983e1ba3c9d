"""The hostile test's attacks on a keyed cluster of real gunicorn nodes: each gives a 4xx or a
refusal and changes nothing (docs/security.md). Before keys, every one of them succeeded.

The cluster runs its background anti-entropy every 0.3 s, so a forged ring or parameter that
got through anywhere would spread within a second: each test waits several passes before it
checks that nothing moved.
"""
from __future__ import annotations

import requests

from conftest import wait_for
from sdht import trust
from sdht.params import DEFAULTS
from sdht.pow import mint
from sdht.ring import Member, RingView
from sdht.wire import RING_SIZE, now_us
from storage.store import Store

TIMEOUT = 5
EVERYTHING = f"/v1/range?start=0&end={RING_SIZE}"


def keyed(cluster, operator, count=3):
    ring, nodes = cluster(count, workers=1, env={"SDHT_SYNC_INTERVAL": "0.3"}, operator=operator)
    ring.set_many({f"k{i}": i for i in range(100)})
    return ring, nodes


def epochs(nodes) -> set[int]:
    return {requests.get(f"{n.url}/v1/health", timeout=TIMEOUT).json()["epoch"] for n in nodes}


def passes_go_by(nodes, count: int = 3) -> None:
    """Wait until every node's background loop has reported ``count`` more passes."""
    def rounds() -> list[int]:
        return [requests.get(f"{n.url}/v1/health", timeout=TIMEOUT).json()["sync_rounds"]
                for n in nodes]
    start = rounds()
    wait_for(lambda: all(now >= then + count for now, then in zip(rounds(), start)), 20,
             what=f"{count} anti-entropy passes on every node")


def forged_ring(view: RingView, epoch: int, signer: trust.Keys | None, **params) -> dict:
    body = RingView(epoch, view.members, {**view.params, **params})
    return (body.signed(signer.sign_ring(body.body())) if signer else body).to_json()


def test_range_delete_and_dump_need_authority(cluster, operator):
    ring, nodes = keyed(cluster, operator)
    stranger = trust.Keys((), trust.new_private_key())
    for node in nodes:
        for headers in ({}, stranger.sign_request("DELETE", EVERYTHING, b"")):
            resp = requests.delete(node.url + EVERYTHING, headers=headers, timeout=TIMEOUT)
            assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
        assert requests.get(node.url + EVERYTHING, timeout=TIMEOUT).status_code == 401
    member = nodes[1]   # a member may read what it syncs, but never delete
    member_keys = trust.Keys((operator.public,), operator.node_private(member.id), member.id)
    resp = requests.delete(nodes[0].url + EVERYTHING, timeout=TIMEOUT,
                           headers=member_keys.sign_request("DELETE", EVERYTHING, b""))
    assert resp.status_code == 401
    assert ring.get_many([f"k{i}" for i in range(100)]) == {f"k{i}": i for i in range(100)}


def test_an_unsigned_ring_with_zero_work_spreads_nowhere(cluster, operator):
    ring, nodes = keyed(cluster, operator)
    before = ring.refresh()
    attack = forged_ring(before, before.epoch + 1, None, min_work=0.0, max_skew=86400.0)
    resp = requests.put(f"{nodes[0].url}/v1/ring", json=attack, timeout=TIMEOUT)
    assert resp.status_code == 403 and resp.json()["error"] == "untrusted_ring"
    passes_go_by(nodes)
    assert epochs(nodes) == {before.epoch}
    ahead = mint("k1", "from the future, for free", 0.0, t=now_us() + 22 * 3600 * 10**6)
    for node in nodes:
        resp = requests.put(f"{node.url}/v1/record", data=ahead.pack(), timeout=TIMEOUT,
                            headers={"Content-Type": "application/msgpack"})
        assert resp.status_code == 400
    assert ring.get("k1") == 1


def test_a_huge_epoch_pointing_nowhere_cannot_take_the_cluster_offline(cluster, operator):
    ring, nodes = keyed(cluster, operator)
    before = ring.refresh()
    nowhere = RingView(10**9, (Member("127.0.0.1:1", tokens=4),), dict(DEFAULTS))
    stranger = trust.Keys((), trust.new_private_key())
    for signer in (None, stranger):
        signed = nowhere.signed(signer.sign_ring(nowhere.body())) if signer else nowhere
        for node in nodes:
            resp = requests.put(f"{node.url}/v1/ring", json=signed.to_json(), timeout=TIMEOUT)
            assert resp.status_code == 403
    passes_go_by(nodes)
    assert epochs(nodes) == {before.epoch}
    ring.set("still", "online")
    assert ring.get("still") == "online"


def test_a_member_serving_a_forged_ring_is_not_followed(cluster, operator):
    """A properly joined member rewrites its own ring (here: on its own disk, as a malicious
    member could) to a higher epoch with min_work 0, signed with its own member key. The
    honest members' gossip sees it and never adopts it."""
    ring, nodes = keyed(cluster, operator, 3)
    before = ring.refresh()
    evil = nodes[2]
    evil.kill()
    member_keys = trust.Keys((), operator.node_private(evil.id))
    forged = RingView.from_json(forged_ring(before, before.epoch + 5, member_keys,
                                            min_work=0.0, max_skew=86400.0))
    store = Store(str(evil.data_dir))
    try:
        assert store.replace_ring(forged)[0]
    finally:
        store.close()
    evil.restart()
    assert requests.get(f"{evil.url}/v1/ring", timeout=TIMEOUT).json()["epoch"] \
        == before.epoch + 5
    honest = nodes[:2]
    passes_go_by(honest)
    assert epochs(honest) == {before.epoch}
    ahead = mint("k2", "free and early", 0.0, t=now_us() + 3600 * 10**6)
    for node in honest:
        resp = requests.put(f"{node.url}/v1/record", data=ahead.pack(), timeout=TIMEOUT,
                            headers={"Content-Type": "application/msgpack"})
        assert resp.status_code == 400
    # A client holding the operator key never adopts it either, and still reads the data.
    assert ring.refresh().epoch == before.epoch
    assert ring.get("k2") == 2
