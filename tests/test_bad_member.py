"""A client that trusts nothing it receives: a bad member (tests/badmember.py) in a real ring.

The honest members are in-process nodes (real apps, real LMDB); the bad member is a real HTTP
server, reached over sockets by :class:`MixedTransport`, so the HTTP transport's own defences
(deadline, size caps, framing) are what is tested. One test runs real gunicorn nodes beside it.
"""
from __future__ import annotations

import time
import tracemalloc

import pytest

import sdht
from badmember import FORGED, FORGING, MODES, STREAM_CAP, BadMember
from conftest import wait_for
from sdht import migration, trust
from sdht.errors import NodeError, SDHTError, Timeout, WriteConflict
from sdht.inprocess import WSGITransport
from sdht.params import DEFAULTS
from sdht.pow import mint
from sdht.ring import NORMAL, Member, RingView
from sdht.sync import sync_range
from sdht.transport import Transport
from sdht.wire import MAX_ANSWER_READ, RING_SIZE, now_us, unpack_items, unpackb

FAST = (1.0, 1.5)      # (connect, read) seconds of the test clients
MARGIN = 0.75          # slack on a deadline, for a loaded machine


class MixedTransport(WSGITransport):
    """In-process honest nodes, and over real HTTP the nodes named in ``remote``. Records
    every request sent to an in-process node, as ``(node, method, target, body)``."""

    def __init__(self, apps, remote, **kwargs) -> None:
        super().__init__(apps, timeout=FAST, **kwargs)
        self.remote = set(remote)
        self.sent: list[tuple[str, str, str, bytes | None]] = []

    def _exchange(self, node, method, target, data, headers):
        if node in self.remote:
            return Transport._exchange(self, node, method, target, data, headers)
        self.sent.append((node, method, target, data))
        return super()._exchange(node, method, target, data, headers)

    def pushed(self) -> list:
        """The values of every entry written to an in-process node."""
        values = []
        for _, method, target, data in self.sent:
            if (method, target) == ("POST", "/v1/records"):
                values += [obj.get("v") for obj, _ in unpack_items(data)]
            elif (method, target) == ("PUT", "/v1/record"):
                values.append(unpackb(data).get("v"))
        return values


@pytest.fixture
def bad_member():
    """Factory: ``bad_member(mode)`` starts a :class:`BadMember`; all stop at teardown."""
    made: list[BadMember] = []

    def make(mode: str = "honest") -> BadMember:
        made.append(BadMember(mode).start())
        return made[-1]

    yield make
    for member in made:
        member.stop()


@pytest.fixture
def hostile_ring(node_apps, bad_member):
    """Factory: ``hostile_ring(mode, operator=None)``: two honest in-process nodes and a bad
    member in one signed (or development) ring, n=3 r=2 w=2. Returns ``(ring, bad, apps)``."""
    rings = []

    def make(mode: str, operator=None):
        config = {"per_node": operator.node_config} if operator else {}
        apps = node_apps(2, **config)
        bad = bad_member("honest")
        keys = operator.keys() if operator else None
        transport = MixedTransport(apps, {bad.id}, keys=keys)
        key_of = (lambda n: trust.public_of(operator.node_private(n))) if operator else None
        members = tuple(Member(n, NORMAL, 8, key_of(n) if key_of else None)
                        for n in sorted([*apps, bad.id]))
        view = RingView(1, members, dict(DEFAULTS))
        view = view.signed(keys.sign_ring(view.body())) if keys else view
        for node in apps:
            transport.put_ring(node, view)
        bad.ring, bad.mode = view.to_json(), mode
        ring = sdht.Ring(list(apps)[:1], transport=transport)
        rings.append(ring)
        return ring, bad, apps

    yield make
    for ring in rings:
        ring.close()


def run_operations(ring, count: int) -> tuple[int, int]:
    """Write ``count`` keys, read each back one by one and all in one batch; return
    ``(forged values returned, values wrong or lost)``. Any error fails the test: the two
    honest replicas make every quorum on their own."""
    expected = {f"key-{i}": f"value-{i}" for i in range(count)}
    for key, value in expected.items():
        ring.set(key, value)
    got = [ring.get(key) for key in expected] + [ring[key] for key in expected]
    got += list(ring.get_many(expected).values())
    forged = sum(1 for value in got if value == FORGED)
    wrong = sum(1 for key in expected if ring.get(key) != expected[key])
    return forged, wrong + 3 * count - len(got)


@pytest.mark.parametrize("mode", FORGING + ("garbage", "content_type", "deep", "not_http",
                                            "many_headers", "long_line", "short_body"))
def test_reads_never_return_what_a_bad_member_forged(hostile_ring, mode):
    ring, bad, _ = hostile_ring(mode)
    forged, wrong = run_operations(ring, 25)
    assert (forged, wrong) == (0, 0)
    # It was asked, and ignored (an unreachable-looking one is then avoided: health.py).
    assert bad.requests > (25 if mode in FORGING else 0)


def test_the_transport_decodes_and_the_quorum_checks(hostile_ring):
    """A record dated ten years ahead decodes; the read refuses it, as the replica's error."""
    ring, bad, _ = hostile_ring("future")
    rec, _ = ring.transport.get_record(bad.id, "k", ring.params)
    assert rec.value == FORGED and rec.t > now_us() + 1e6 * ring.params["max_skew"]
    with pytest.raises(NodeError, match="in the future"):
        ring.quorum.read_one(bad.id, "k", ring.params)


@pytest.mark.parametrize("mode", MODES)
def test_every_failure_is_an_sdht_error(bad_member, mode):
    """Every route against every misbehaviour returns or raises an SDHTError: no MemoryError,
    KeyError, TypeError, RecursionError, http.client or OSError escapes."""
    bad = bad_member(mode)
    transport = Transport((0.5, 1.0))
    rec = mint("k", "v", DEFAULTS["min_work"])
    view = RingView(1, (Member(bad.id, NORMAL, 8),), dict(DEFAULTS))
    calls = [lambda: transport.get_record(bad.id, "k"), lambda: transport.put_record(bad.id, rec),
             lambda: transport.get_many(bad.id, ["a", "b"]),
             lambda: transport.get_entries(bad.id, [b"ref"]),
             lambda: transport.put_many(bad.id, [rec]), lambda: transport.scan(bad.id, 0, 99),
             lambda: transport.delete_range(bad.id, 0, 99),
             lambda: transport.tree(bad.id, [(0, 0)], [(4, 1)], [(0, RING_SIZE)]),
             lambda: transport.sync_pass(bad.id, 1, 0, False), lambda: transport.get_ring(bad.id),
             lambda: transport.put_ring(bad.id, view), lambda: transport.health(bad.id)]
    try:
        for call in calls:
            began = time.monotonic()
            try:
                call()
            except SDHTError:
                pass
            assert time.monotonic() - began < 1.0 + MARGIN
    finally:
        transport.close()


@pytest.mark.parametrize("mode", ["trickle", "trickle_head"])
def test_a_trickling_member_cannot_hold_a_call_past_the_deadline(bad_member, hostile_ring, mode):
    bad = bad_member(mode)
    transport = Transport(FAST)
    try:
        for _ in range(2):   # a fresh connection, then (after the timeout closed it) another
            began = time.monotonic()
            with pytest.raises(Timeout):
                transport.get_record(bad.id, "k")
            assert time.monotonic() - began < FAST[1] + MARGIN
    finally:
        transport.close()
    # In a ring, the slow member costs a read one deadline at most, then it is avoided.
    ring, slow, _ = hostile_ring(mode)
    began = time.monotonic()
    forged, wrong = run_operations(ring, 10)
    assert (forged, wrong) == (0, 0)
    assert time.monotonic() - began < 4 * (FAST[1] + MARGIN)


def test_a_huge_content_length_is_refused_without_allocating(bad_member):
    bad = bad_member("huge_length")
    transport = Transport(FAST)
    tracemalloc.start()
    try:
        began = time.monotonic()
        with pytest.raises(NodeError, match="Content-Length"):
            transport.get_record(bad.id, "k")
        assert time.monotonic() - began < FAST[1]   # refused at once, not timed out
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
        transport.close()


@pytest.mark.parametrize("mode", ["endless", "endless_chunked"])
def test_an_endless_answer_is_cut_off_at_the_cap(bad_member, mode):
    bad = bad_member(mode)
    transport = Transport((1.0, 5.0))
    try:
        with pytest.raises(NodeError, match="more than"):
            transport.get_record(bad.id, "k")
    finally:
        transport.close()
    last = [-1]

    def settled() -> bool:   # the member stops writing once the client hung up
        before, last[0] = last[0], bad.sent
        time.sleep(0.1)
        return before == bad.sent
    wait_for(settled, timeout=10)
    assert bad.sent < MAX_ANSWER_READ + (16 << 20) < STREAM_CAP


def test_a_pooled_connection_the_member_dropped_is_retried_once(bad_member):
    """The pool's one retry stays: a connection dropped while idle fails before any byte."""
    bad = bad_member("drop_idle")
    transport = Transport(FAST)
    try:
        for i in range(5):
            assert transport.get_record(bad.id, "k") == (None, 0)
            assert len(transport._idle[bad.id]) == 1   # pooled, and dropped by the member
        assert bad.requests == 5
    finally:
        transport.close()


def test_a_false_claim_of_a_higher_version_does_not_fail_writes(hostile_ring):
    ring, bad, _ = hostile_ring("superseded")
    try:
        forged, wrong = run_operations(ring, 10)
        ring.set_many({f"many-{i}": i for i in range(20)})
    except WriteConflict as exc:
        pytest.fail(f"a lying replica made a write fail: {exc}")
    assert (forged, wrong) == (0, 0)
    assert ring.get_many([f"many-{i}" for i in range(20)]) == {f"many-{i}": i for i in range(20)}


def ring_served_by(view: RingView, how: str, operator) -> dict | str:
    """What the bad member serves at /v1/ring: ``view`` moved to a huge epoch, unsigned,
    signed by another operator, or not a ring at all."""
    huge = RingView(10**15, view.members, {**view.params, "min_work": 0.0})
    if how == "unsigned":
        return huge.to_json()
    if how == "other operator":
        other = trust.new_private_key()
        return huge.signed(trust.Keys((trust.public_of(other),), other)
                           .sign_ring(huge.body())).to_json()
    return {"epoch": 10**15, "members": "everyone"}


@pytest.mark.parametrize("how", ["unsigned", "other operator", "malformed"])
def test_a_forged_ring_is_never_adopted_and_writes_reach_the_honest(hostile_ring, operator, how):
    ring, bad, apps = hostile_ring("epoch", operator)
    signed = ring.handle.current()
    bad.ring = ring_served_by(signed, how, operator)
    forged, wrong = run_operations(ring, 15)
    assert (forged, wrong) == (0, 0)
    assert ring.view == signed
    for node in apps:   # every write is on both honest replicas
        for i in range(15):
            rec, _ = ring.transport.get_record(node, f"key-{i}", signed.params)
            assert rec is not None and rec.value == f"value-{i}"


@pytest.mark.parametrize("mode", ["future", "bad_work"])
def test_moves_and_sync_do_not_push_on_forged_entries(hostile_ring, mode):
    ring, bad, apps = hostile_ring(mode)
    honest = sorted(apps)[0]
    transport = ring.transport
    report = migration.MigrationReport(honest, "join")
    ring.handle.current()   # the ring view, as a join has it when it streams
    migration._stream(ring.handle, migration.Transfer((bad.id,), honest, 0, RING_SIZE),
                      report, None)
    assert report.moved == 0
    synced = sync_range(transport, honest, bad.id, 0, 1 << 40, ring.params)
    assert synced.pushed_to_a == 0
    assert FORGED not in transport.pushed()


def test_real_nodes_beside_a_bad_member(start_node, bad_member):
    """The same over real sockets everywhere: two gunicorn nodes and the bad member."""
    nodes = [start_node(), start_node()]
    bad = bad_member("honest")
    ring = sdht.Ring([nodes[0].id], timeout=FAST)
    try:
        view = RingView(1, tuple(Member(n, NORMAL, 8) for n in sorted(
            [nodes[0].id, nodes[1].id, bad.id])), dict(DEFAULTS))
        for node in (nodes[0].id, nodes[1].id):
            ring.transport.put_ring(node, view)
        # Over real sockets the replicas' answers are read in the caller's thread as they
        # come (sdht/fanout.py): a member that trickles, drops, claims or breaks its answer
        # must not hold or fool that either.
        for mode in ("future", "other_key", "bad_work", "garbage", "trickle", "trickle_head",
                     "short_body", "not_http", "superseded", "drop_idle", "endless"):
            bad.mode = mode
            assert run_operations(ring, 10) == (0, 0), mode
    finally:
        ring.close()
