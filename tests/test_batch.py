"""sdht/batch.py: a batch read answers what the quorum rule of each key answers, and a batch
write reads back, whatever the replicas held (real client, real in-process apps over real
LMDB)."""
from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings, strategies as st

from sdht.pow import mint
from sdht.wire import now_us

#: What one replica holds of a key: nothing, an older version, or an older tombstone.
OLDER = st.sampled_from(["absent", "older", "older tombstone"])
#: A key's newest version (or none anywhere) and the replicas that hold it: at least two of
#: three, so any two replicas a read asks include one that has it.
KEYS = st.lists(st.tuples(st.sampled_from(["value", "tombstone", "nowhere"]),
                          st.sampled_from([(0, 1), (0, 2), (1, 2), (0, 1, 2)]),
                          st.tuples(OLDER, OLDER, OLDER)),
                min_size=1, max_size=12)
_fresh = itertools.count()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=KEYS)
def test_a_batch_read_answers_the_newest_version_a_quorum_holds(inprocess_cluster, keys):
    ring, _ = _cluster(inprocess_cluster)
    w, t = ring.params["min_work"], now_us()
    expected, asked = {}, []
    for i, (newest, holders, others) in enumerate(keys):
        key = f"key-{next(_fresh)}"
        asked.append(key)
        replicas = ring.view.readers.for_key(key)
        if newest != "nowhere":
            top = mint(key, None if newest == "tombstone" else f"new {i}", w, t=t,
                       deleted=newest == "tombstone")
            if newest == "value":
                expected[key] = top.value
        for r, node in enumerate(replicas):
            if newest == "nowhere":   # on no replica, and no older version either
                break
            if r in holders:
                ring.transport.put_record(node, top)
            elif others[r] != "absent":
                tomb = others[r] == "older tombstone"
                ring.transport.put_record(node, mint(key, None if tomb else f"old {i}", w,
                                                     t=t - 1000 - r, deleted=tomb))
    assert ring.get_many(asked) == expected
    assert ring.get_many(asked) == {k: v for k in asked if (v := ring.get(k)) is not None}


_CLUSTERS: dict[int, tuple] = {}


def _cluster(inprocess_cluster):
    """One three-node cluster for all the examples of one test (each example's keys are
    fresh), made by that test's fixture."""
    if id(inprocess_cluster) not in _CLUSTERS:
        _CLUSTERS.clear()
        _CLUSTERS[id(inprocess_cluster)] = inprocess_cluster(3)
    return _CLUSTERS[id(inprocess_cluster)]



@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(st.integers(0, 1000), st.sets(st.integers(0, 2), max_size=3)),
                      min_size=1, max_size=12))
def test_a_batch_write_is_read_back_whatever_the_replicas_held(inprocess_cluster, items):
    """set_many over keys some replicas hold an older version of: every key reads back as
    written, by a batch read and by single reads."""
    ring, _ = _cluster(inprocess_cluster)
    w, written = ring.params["min_work"], {}
    for value, stale in items:
        key = f"key-{next(_fresh)}"
        written[key] = value
        for r in stale:
            node = ring.view.readers.for_key(key)[r]
            ring.transport.put_record(node, mint(key, "stale", w, t=now_us() - 10_000))
    assert ring.set_many(written) == len(written)
    assert ring.get_many(list(written)) == written
    assert all(ring.get(key) == value for key, value in written.items())
