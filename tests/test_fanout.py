"""sdht/fanout.py: a quorum's requests sent from the caller's thread and read there as their
answers arrive, over real gunicorn nodes; what cannot go that way goes to the fan-out pool."""
from __future__ import annotations

import threading
import time

import pytest

from hypothesis import given
from hypothesis import strategies as st

from conftest import wait_for
from sdht import fanout
from sdht.errors import WriteConflict
from sdht.fanout import trail_deadline
from sdht.pow import mint

KEYS = 5


def test_a_busy_fan_out_pool_delays_no_get_or_set(cluster):
    """Every pool thread is held, and more tasks queue behind them: gets and a set whose
    replicas answer are read by the caller, so they do not wait for the pool (the set's third
    replica is, once the pool is free)."""
    ring, nodes = cluster(3)
    ring.set("k", "v")
    # Every replica holds it, and has a kept-alive connection idle (the caller's thread sends
    # only on one: a replica with none sends the whole gather to the pool, as before).
    wait_for(lambda: all(ring.transport.get_record(n.id, "k")[0] is not None for n in nodes),
             30, what="every copy of the first write")
    release = threading.Event()
    for _ in range(64):
        ring.transport.submit(release.wait, 30)
    try:
        began = time.monotonic()
        for _ in range(KEYS):
            assert ring.get("k") == "v"   # both answers read here: no connection left behind
        ring.set("k2", "v2")              # last: its third replica may wait for the pool
        took = time.monotonic() - began
    finally:
        release.set()
    assert took < 10.0, took   # the pool was held for 30 s
    wait_for(lambda: all(ring.transport.get_record(n.id, "k2")[0] is not None for n in nodes),
             30, what="every copy of the second write")


def test_a_replica_holding_a_higher_version_must_show_it(cluster):
    """A 409 read in the caller's thread still has its replica show the version it holds
    (the pool asks for it): the write fails with that version's score."""
    ring, nodes = cluster(3)
    ring.set("warm", 1)
    held = mint("rented", "first", 10.0)   # more work than a plain write pays (3 + 4)
    for node in nodes:
        ring.transport.put_record(node.id, held)
    with pytest.raises(WriteConflict) as raised:
        ring.set("rented", "second")
    assert raised.value.score == pytest.approx(held.score(ring.params["decay"]), rel=1e-3)
    assert ring.get("rented") == "first"


SETS = 40


def test_a_set_reads_its_last_replica_in_the_callers_thread_within_the_wait(cluster,
                                                                            monkeypatch):
    """Once ``w`` replicas answered, a set still waits a little (:func:`trail_deadline`) for
    the others in the caller's thread, where their answers are read. With a wait longer than
    any of them take, every set returns with all three copies acknowledged (handed to the pool
    at once, 4 to 12 of 40 did on this ring)."""
    monkeypatch.setattr(fanout, "TRAIL_MAX", 10.0)
    monkeypatch.setattr(fanout, "TRAIL_SHARE", 1e6)
    ring, _ = cluster(3)
    ring.set("warm", 1)
    for i in range(SETS):
        acked: list[str] = []
        rec = mint(f"trail-{i}", "v", ring.params["min_work"])
        assert ring.quorum.replicate(rec, acked) is None
        assert len(acked) == 3, f"set {i}: only {acked} answered in the caller's thread"


@given(began=st.floats(0, 1e6), took=st.floats(0, 100), deadline=st.floats(0, 1e6 + 200))
def test_the_wait_for_the_last_replicas_is_short_and_bounded(began, took, deadline):
    """The wait is a share of the time so far, at most ``TRAIL_MAX``, never past the deadline."""
    now = began + took
    ends = trail_deadline(began, now, deadline)
    assert ends <= deadline
    assert ends <= now + fanout.TRAIL_MAX
    assert ends <= now + fanout.TRAIL_SHARE * took + 1e-9
    assert ends >= min(now, deadline)
