"""storage/fastphases.py: the acceptor's phases answered without Flask's dispatch, exactly as
the routes answer them (status, headers, body, event log, metrics, acceptor state), every
request that is not the plain case left to Flask, and no phase ever run twice (twin nodes over
real LMDB: :class:`test_fastpath.Twins`)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sdht.kinds import name
from sdht.names import FAST
from sdht.wire import now_us, packb, unpackb
from storage import acceptor
from storage.http import ApiError

import test_fastpath
from test_fastpath import Twins
from test_names import claim

keyed = test_fastpath.keyed   # the twin keyed nodes, a fixture

PROPOSER = b"\x01" * name.PROPOSER_BYTES
#: Claims minted once (proof of work): two per name, the same every run.
CLAIMS = {key: [claim(key, f"v{i}", owner=bytes([i + 1]) * name.OWNER_BYTES, t=1_700_000_000_000_000)
                for i in range(2)] for key in ("user:a", "user:b")}


def _message(key: str, ballot, epoch: int = 7, value: name.Claim | None = None,
             **changes) -> bytes:
    obj = {"k": key, "b": list(ballot), "e": epoch,
           **({"a": value.to_wire()} if value is not None else {})}
    obj.update(changes)
    return packb(obj)


def _prepare(twins: Twins, key: str, ballot, epoch: int = 7, **kw) -> tuple:
    return twins.send("POST", name.PREPARE_ROUTE, _message(key, ballot, epoch), **kw)


def _accept(twins: Twins, key: str, ballot, value: name.Claim, epoch: int = 7, **kw) -> tuple:
    return twins.send("POST", name.ACCEPT_ROUTE, _message(key, ballot, epoch, value), **kw)


def _answer(answer: tuple) -> dict:
    assert answer[0] == "200 OK", answer
    assert ("Content-Type", "application/msgpack") in answer[1]
    return unpackb(answer[2])


def _states(twins: Twins, keys) -> list[list]:
    """Each twin's stored acceptor state of each of ``keys`` (the raw LMDB value)."""
    from storage.http import store
    from storage.layout import data_key
    out = []
    for app in twins.apps:
        with app.app_context():
            with store().env.begin(db=store().data) as txn:
                out.append([txn.get(data_key(name.TAG, key)) for key in keys])
    return out


def _alike(twins: Twins) -> None:
    assert twins.events()[0] == twins.events()[1]
    assert twins.counts()[0] == twins.counts()[1]
    assert _states(twins, CLAIMS)[0] == _states(twins, CLAIMS)[1]


@pytest.fixture
def twins(tmp_path):
    made = Twins(tmp_path)
    yield made
    made.close()


def test_ok_conflict_and_stale_are_answered_as_the_routes_answer_them(twins):
    mine, other = CLAIMS["user:a"]
    ok = _answer(_accept(twins, "user:a", FAST, mine, fast=True))
    assert ok["s"] == name.OK
    assert ("X-SDHT-Epoch", "7") in _accept(twins, "user:a", FAST, mine, fast=True)[1]
    taken = _answer(_accept(twins, "user:a", FAST, other, fast=True))
    assert taken["s"] == name.CONFLICT and taken["a"] == mine.to_wire()
    high = (now_us(), PROPOSER)
    assert _answer(_prepare(twins, "user:a", high, fast=True))["s"] == name.OK
    assert _answer(_prepare(twins, "user:a", (high[0] - 1, PROPOSER), fast=True))["s"] == \
        name.CONFLICT
    stale = _answer(_accept(twins, "user:a", high, other, epoch=6, fast=True))
    assert stale["s"] == name.STALE and stale["e"] == 7
    _alike(twins)
    fast, _ = twins.counts()
    assert fast[("sdht_name_messages_total", (("outcome", "ok"), ("phase", "accept")))] == 2
    assert fast[("sdht_requests_total", (("method", "POST"), ("route", name.ACCEPT_ROUTE),
                                         ("status", "200")))] == 4


BALLOT = (1_700_000_000_000_000, PROPOSER)


@pytest.mark.parametrize("route, data, status", [
    (name.ACCEPT_ROUTE, b"", 400),                                        # no body
    (name.ACCEPT_ROUTE, b"\xc1", 400),                                    # malformed msgpack
    (name.PREPARE_ROUTE, packb([1, 2]), 400),                             # not a map
    (name.PREPARE_ROUTE, _message("user:a", BALLOT, x=1), 400),           # a field too many
    (name.ACCEPT_ROUTE, _message("user:a", BALLOT), 400),                 # accept, no claim
    (name.PREPARE_ROUTE, _message("user:a", BALLOT, epoch=-1), 400),      # not an epoch
    (name.PREPARE_ROUTE, _message("user:a", (1, b"x")), 400),             # not a ballot
    (name.PREPARE_ROUTE, _message("k" * 100_000, BALLOT), 413),           # key too long
    (name.ACCEPT_ROUTE, _message("user:b", BALLOT, value=CLAIMS["user:a"][0]), 400),  # its key
    (name.ACCEPT_ROUTE, _message("user:a", BALLOT, value=CLAIMS["user:a"][0],
                                 a={**CLAIMS["user:a"][0].to_wire(), "n": 0}), 400),  # no work
    (name.PREPARE_ROUTE, b"\x91" * 100_000 + b"\x01", 400),               # nested too deep
    (name.ACCEPT_ROUTE, b"\x00" * (3 << 20), 413),                        # over the limits
])
def test_a_refused_phase_is_answered_by_flask_with_its_json_error(twins, route, data, status):
    answer = twins.send("POST", route, data, fast=False)
    assert int(answer[0][:3]) == status
    assert ("Content-Type", "application/json") in answer[1]
    _alike(twins)
    assert _states(twins, CLAIMS)[0] == [None, None]


def test_a_ballot_from_the_future_is_refused_by_flask(twins):
    data = _message("user:a", (now_us() + 3_600_000_000, PROPOSER))
    answer = twins.send("POST", name.PREPARE_ROUTE, data, fast=False, exact=False)
    assert answer[0].startswith("400") and b'"invalid_record"' in answer[2]
    assert twins.counts()[0] == twins.counts()[1]
    assert _states(twins, CLAIMS)[0] == [None, None]


def test_another_host_and_the_test_faults_go_to_flask(tmp_path, twins):
    answer = _accept(twins, "user:a", FAST, CLAIMS["user:a"][0], remote="10.1.2.3", fast=False)
    assert answer[0].startswith("403")
    faulty = Twins(tmp_path / "faulty", TEST_DELAY_MS=1)
    try:
        assert _answer(_accept(faulty, "user:a", FAST, CLAIMS["user:a"][0], fast=False))["s"] \
            == name.OK
        _alike(faulty)
    finally:
        faulty.close()


def test_a_phase_that_ran_and_failed_is_answered_by_flask_without_running_it_again(
        twins, monkeypatch):
    """A phase may be applied and still fail (no commit within the wait): Flask answers the
    error the fast path met, and the acceptor ran it once."""
    runs = []
    alone, together = acceptor.run, acceptor.run_together
    busy = ApiError(503, "busy", "no commit in 60s")

    def ran_alone_then_failed(store, op):   # Flask's route (names_routes.apply)
        runs.append("alone")
        alone(store, op)
        raise busy

    def ran_together_then_failed(store, ops):   # the fast path (and the worker's group commit)
        runs.append("together")
        together(store, ops)
        return [(None, busy)] * len(ops)
    monkeypatch.setattr(acceptor, "run", ran_alone_then_failed)
    monkeypatch.setattr(acceptor, "run_together", ran_together_then_failed)
    mine = CLAIMS["user:a"][0]
    answer = _accept(twins, "user:a", FAST, mine, fast=False)
    assert answer[0].startswith("503") and b'"busy"' in answer[2]
    assert sorted(runs) == ["alone", "together"]   # once per twin: no rerun by the fast twin
    _alike(twins)
    assert _states(twins, ["user:a"])[0][0] is not None


class TestAKeyedNode:
    def test_a_phase_signed_by_the_operator_is_answered_fast(self, keyed, operator):
        data = _message("user:a", FAST, 0, CLAIMS["user:a"][0])
        signed = operator.keys().sign_request("POST", name.ACCEPT_ROUTE, data)
        answer = keyed.send("POST", name.ACCEPT_ROUTE, data, headers=signed, remote="10.1.2.3",
                            fast=True)
        assert _answer(answer)["s"] == name.OK
        _alike(keyed)

    def test_unsigned_forged_and_misaddressed_phases_go_to_flask(self, keyed, operator):
        data = _message("user:a", FAST, 0, CLAIMS["user:a"][0])
        assert keyed.send("POST", name.ACCEPT_ROUTE, data, fast=False)[0].startswith("401")
        signed = operator.keys().sign_request("POST", name.ACCEPT_ROUTE, data)
        forged = {**signed, "X-SDHT-Signature": "00" * 64}
        assert keyed.send("POST", name.ACCEPT_ROUTE, data, headers=forged,
                          fast=False)[0].startswith("401")
        # Signed for the other phase's route: the signature covers the target.
        assert keyed.send("POST", name.PREPARE_ROUTE, _message("user:a", FAST, 0),
                          headers=signed, fast=False)[0].startswith("401")
        _alike(keyed)
        assert _states(keyed, CLAIMS)[0] == [None, None]


_PHASES = st.tuples(st.sampled_from(["prepare", "accept"]), st.sampled_from(sorted(CLAIMS)),
                    st.sampled_from([None, 0, 1, 2]), st.integers(0, 1), st.sampled_from([6, 7, 8]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_PHASES, min_size=1, max_size=10))
def test_any_run_of_phases_leaves_the_same_acceptor_state(tmp_path_factory, phases):
    """Prepares and accepts of two names at the fast ballot and a few classic ones, stale
    epochs among them: the twins answer each alike, from the fast path, and end with the same
    state, log and counts."""
    twins = Twins(tmp_path_factory.mktemp("phases"))
    try:
        base = now_us()
        for phase, key, counter, which, epoch in phases:
            ballot = FAST if counter is None else (base + counter, PROPOSER)
            if phase == "prepare":
                _prepare(twins, key, ballot, epoch, fast=True)
            else:
                _accept(twins, key, ballot, CLAIMS[key][which], epoch, fast=True)
        _alike(twins)
    finally:
        twins.close()


def test_a_real_node_answers_and_counts_each_phase_once(start_node):
    """Under gunicorn (its worker, the limits, two workers): an accept and a prepare, each
    answered and counted once, and the state they left read back by a classic prepare."""
    import requests
    node = start_node()
    mine = CLAIMS["user:a"][0]

    def post(route: str, data: bytes) -> dict:
        answer = requests.post(f"{node.url}{route}", data=data, timeout=10,
                               headers={"Content-Type": "application/msgpack"})
        assert answer.status_code == 200 and answer.headers["X-SDHT-Node"] == node.id
        return unpackb(answer.content)

    assert post(name.ACCEPT_ROUTE, _message("user:a", FAST, 0, mine))["s"] == name.OK
    held = post(name.PREPARE_ROUTE, _message("user:a", (now_us(), PROPOSER), 0))
    assert held["s"] == name.OK and held["a"] == mine.to_wire()
    text = requests.get(f"{node.url}/metrics", timeout=10).text
    for phase in ("accept", "prepare"):
        assert f'sdht_name_messages_total{{outcome="ok",phase="{phase}"}} 1.0' in text, phase
        assert (f'sdht_requests_total{{method="POST",route="/v1/names/{phase}",status="200"}} '
                f'1.0' in text), phase
