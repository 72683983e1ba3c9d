"""The client's replication delay: acknowledgement to the last replica, or hinted."""
from __future__ import annotations

import time
from concurrent.futures import Future

from sdht.lag import Lag


class TestLag:
    def test_the_delay_ends_with_the_last_replica(self):
        lag = Lag()
        first, last = Future(), Future()
        lag.track(time.monotonic() - 0.03, [first, last])
        first.set_result(None)
        assert lag.snapshot()["writes"] == 0            # one replica still to answer
        last.set_result(None)
        snap = lag.snapshot()
        assert snap["writes"] == 1 and 0.03 <= snap["max_s"] < 1.0
        assert 0.025 < snap["p99_s"] <= snap["max_s"]

    def test_all_answered_is_zero_and_a_failure_or_a_skip_is_hinted(self):
        lag = Lag()
        lag.track(time.monotonic(), [])
        failed = Future()
        lag.track(time.monotonic(), [failed])
        failed.set_exception(OSError("down"))
        lag.track(time.monotonic(), [], skipped=1)
        assert lag.snapshot() == {"writes": 1, "hinted": 2, "p50_s": 0.0, "p99_s": 0.0,
                                  "max_s": 0.0}
