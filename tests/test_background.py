"""storage/background.py: a node's background loop outlives any one bad pass and ends when
stopped."""
from __future__ import annotations

import logging

from sdht.errors import NodeError
from storage.background import Loop

from conftest import wait_for


class Flaky(Loop):
    NAME, WHAT = "sdht-test-loop", "test pass"

    def __init__(self) -> None:
        super().__init__(0.01)
        self.passes = 0

    def run_pass(self) -> int:
        self.passes += 1
        if self.passes == 1:
            raise NodeError("the node is restarting", "127.0.0.1:1")
        if self.passes == 2:
            raise ValueError("a bug in one pass")
        return self.passes


def test_a_pass_that_fails_is_logged_and_the_next_one_runs(caplog):
    caplog.set_level(logging.INFO, logger="storage.background")
    loop = Flaky().start()
    try:
        wait_for(lambda: loop.passes >= 4, timeout=10, what="passes after two failures")
    finally:
        loop.stop()
    loop.thread.join(10)
    assert not loop.thread.is_alive() and loop.thread.name == "sdht-test-loop"
    messages = [record.getMessage() for record in caplog.records]
    assert "test pass skipped: the node is restarting" in messages[0]
    assert any(m == "test pass failed" for m in messages)


def test_a_stopped_loop_runs_no_more_passes():
    loop = Flaky()
    loop.stop()
    loop.start().thread.join(10)
    assert loop.passes == 0
