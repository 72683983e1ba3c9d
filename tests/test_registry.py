"""Who proposes unique names (sdht/registry.py): on a keyed cluster only the operator and the
members talk to acceptors, so no client can overwrite a registered name; any other client
registers through a member, which proposes the claim the client minted."""
from __future__ import annotations

import pytest

import sdht
from sdht import registry
from sdht.errors import InvalidRecord, NodeError
from sdht.kinds import name
from sdht.params import DEFAULTS
from sdht.trust import Keys, new_private_key, public_of
from sdht.wire import MSGPACK, now_us, packb, packed_array, unpackb

from test_names import claim, node_state

HOSTILE_BALLOT = [now_us(), b"\x66" * name.PROPOSER_BYTES]


def phase_messages(key: str, epoch: int, hostile: name.Claim) -> list[tuple[str, dict]]:
    """An attacker's round: prepare, then accept its own claim, at a high ballot."""
    return [(name.PREPARE_ROUTE, {"k": key, "b": HOSTILE_BALLOT, "e": epoch}),
            (name.ACCEPT_ROUTE, {"k": key, "b": HOSTILE_BALLOT, "e": epoch,
                                 "a": hostile.to_wire()})]


class TestWhoProposes:
    def test_signers_and_development_rings_propose_themselves(self):
        from sdht.ring import RingView
        operator = new_private_key()
        signed, unsigned = RingView(1, signature="00"), RingView(1)
        assert registry.proposes_itself(Keys(), unsigned)                  # a development ring
        assert registry.proposes_itself(Keys.of(operator, None), signed)   # the operator
        assert registry.proposes_itself(Keys((public_of(operator),), new_private_key(),
                                              "127.0.0.1:1"), signed)     # a member
        assert not registry.proposes_itself(Keys((public_of(operator),)), signed)   # others
        assert not registry.proposes_itself(Keys(), signed)   # no key at all, on a keyed ring

    def test_a_ring_picks_its_proposer_by_its_keys_and_the_ring(self, keyed_cluster,
                                                                 inprocess_cluster, operator):
        from sdht.inprocess import WSGITransport
        ring, apps = keyed_cluster(3)
        assert ring.names.via() is ring.names.proposer                     # the operator
        for keys in (Keys((operator.public,)), Keys()):
            with sdht.Ring(ring.nodes[:1], transport=WSGITransport(apps, keys=keys)) as other:
                assert other.names.via() is other.names.relay
        dev, _ = inprocess_cluster(1)
        assert dev.names.via() is dev.names.proposer                       # unsigned ring


class TestAcceptorsTakeOnlyMembers:
    def test_a_clients_own_phase_messages_are_refused_and_change_nothing(self, keyed_cluster):
        ring, apps = keyed_cluster(3)
        assert ring.register("user:alice", "alice") is True      # the operator proposes
        for node in ring.preference("user:alice"):
            client = apps[node].test_client()
            for route, message in phase_messages("user:alice", ring.view.epoch,
                                                 claim("user:alice", "mallory")):
                answer = client.post(route, data=packb(message), content_type=MSGPACK)
                assert answer.status_code == 401, answer.data
                assert answer.get_json()["error"] == "unauthorized"
        assert ring.lookup("user:alice") == "alice"
        held = [node_state(apps, n, "user:alice") for n in ring.preference("user:alice")]
        assert all(s is None or s.value.value == "alice" for s in held)

    def test_acceptor_state_written_whole_needs_the_operator_or_a_member(self, keyed_cluster):
        ring, apps = keyed_cluster(1)
        node = ring.nodes[0]
        forged = name.State("user:bob", tuple(HOSTILE_BALLOT), tuple(HOSTILE_BALLOT),
                            claim("user:bob", "mallory"))
        client = apps[node].test_client()
        for route, data in (("/v1/record", forged.pack()),
                            ("/v1/records", packed_array([forged.pack()]))):
            method = client.put if route == "/v1/record" else client.post
            answer = method(route, data=data, content_type=MSGPACK)
            assert answer.status_code == 403, answer.data
            assert answer.get_json()["error"] == "members_only"
        assert node_state(apps, node, "user:bob") is None
        # The operator's migration may move it: the library signs a batch that carries it.
        outcomes, _ = ring.transport.put_many(node, [forged])
        assert outcomes[0].status == "stored"
        assert node_state(apps, node, "user:bob").digest == forged.digest

    def test_registers_stay_open_to_every_client(self, keyed_cluster, operator):
        ring, apps = keyed_cluster(3)
        from sdht.inprocess import WSGITransport
        with sdht.Ring(ring.nodes[:1], transport=WSGITransport(
                apps, keys=Keys((operator.public,)))) as anyone:
            anyone.set("k", "v")
            assert ring.get("k") == "v"


class TestTheMembersAnswer:
    P = dict(DEFAULTS)

    def test_a_chosen_claim_is_checked(self):
        good = claim("user:carol", "carol")
        assert registry.chosen_from_wire({"a": good.to_wire()}, "user:carol", self.P) == good
        assert registry.chosen_from_wire({"a": None}, "user:carol", self.P) is None
        lazy = name.Claim("user:carol", "x", b"o" * name.OWNER_BYTES, now_us(), 20.0, b"n")
        for bad in ({"a": good.to_wire()} | {"r": True}, ["a"], {"a": lazy.to_wire()}):
            with pytest.raises(InvalidRecord):
                registry.chosen_from_wire(bad, "user:carol", self.P)
        with pytest.raises(InvalidRecord):   # a claim for another name
            registry.chosen_from_wire({"a": good.to_wire()}, "user:dave", self.P)


class TestThroughAMember:
    """Real keyed gunicorn nodes; a client that holds only the operator's public key."""

    def test_register_lookup_and_retry_through_a_member(self, cluster, operator):
        ring, nodes = cluster(3, operator=operator)
        with sdht.Ring([nodes[0].id], keys=Keys((operator.public,))) as client:
            assert client.names.via() is client.names.relay
            assert client.lookup("user:erin") is None
            assert client.register("user:erin", {"bio": "first"}) is True
            assert client.register("user:erin", {"bio": "second"}) is False
            assert client.lookup("user:erin") == {"bio": "first"}
            assert ring.lookup("user:erin") == {"bio": "first"}      # the operator agrees
            mine, chosen = client.names.claim("user:frank", "f")
            assert mine is True
            # A retry of that call (its owner) finds its own claim: True, nothing new chosen.
            again, same = client.names.claim("user:frank", "f2", owner=chosen.owner)
            assert again is True and same == chosen

    def test_a_client_with_no_key_registers_through_a_member(self, cluster, operator):
        ring, nodes = cluster(3, operator=operator)
        with sdht.Ring([nodes[0].id], keys=Keys()) as client:      # as the README's example
            assert client.register("user:ivan", "ivan") is True
            assert client.register("user:ivan", "other") is False
            assert ring.lookup("user:ivan") == "ivan"

    def test_a_hostile_client_cannot_overwrite_a_registered_name(self, cluster, operator):
        ring, nodes = cluster(3, operator=operator)
        with sdht.Ring([nodes[0].id], keys=Keys((operator.public,))) as client:
            assert client.register("user:grace", "grace") is True
            transport = client.transport
            for node in client.preference("user:grace"):
                for route, message in phase_messages("user:grace", client.view.epoch,
                                                     claim("user:grace", "mallory")):
                    with pytest.raises(NodeError) as refused:
                        transport.request(node, "POST", route, data=packb(message),
                                          headers={"Content-Type": MSGPACK})
                    assert refused.value.status == 401
            assert client.lookup("user:grace") == "grace"

    def test_a_member_refuses_a_claim_without_its_work(self, cluster, operator):
        ring, nodes = cluster(1, operator=operator)
        lazy = name.Claim("user:heidi", "x", b"o" * name.OWNER_BYTES, now_us(), 20.0, b"n")
        with sdht.Ring([nodes[0].id], keys=Keys((operator.public,))) as client:
            with pytest.raises(NodeError) as refused:
                client.transport.request(nodes[0].id, "POST", registry.REGISTER_ROUTE,
                                         data=packb({"a": lazy.to_wire(), "d": 2.0}),
                                         headers={"Content-Type": MSGPACK})
            assert refused.value.status == 400
            reply = client.transport.request(nodes[0].id, "POST", registry.LOOKUP_ROUTE,
                                             data=packb({"k": "user:heidi", "d": 2.0}),
                                             headers={"Content-Type": MSGPACK})
            assert unpackb(packb(reply.body)) == {"a": None}
