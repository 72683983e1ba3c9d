"""A node's background loop: a pass every interval in a daemon thread of the gunicorn master,
until stopped; a pass that fails is logged and the next one runs as planned.

The anti-entropy syncer (:mod:`storage.syncer`) and the hint replayer (:mod:`storage.handoff`)
are such loops: each defines :meth:`Loop.run_pass` and names itself.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Any, Self

from sdht.errors import SDHTError

log = logging.getLogger(__name__)


class Loop:
    """Run :meth:`run_pass` every ``interval`` seconds (± :attr:`JITTER` of it) once started."""

    #: The thread's name, and what a pass is called in the log.
    NAME, WHAT = "sdht-loop", "background pass"
    #: Spread of the wait as a fraction of ``interval``: nodes started together drift apart.
    JITTER = 0.0
    #: The level a pass skipped for a library error is logged at (the node itself restarting,
    #: a peer away: expected, and retried next time).
    SKIPPED = logging.INFO

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> Self:
        """Run passes in a daemon thread until :meth:`stop`; return this loop."""
        self.thread = threading.Thread(target=self._loop, name=self.NAME, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to end after the current pass (a pass checks :attr:`stopped` between
        its steps)."""
        self.stopped.set()

    def run_pass(self) -> Any:
        """One pass (defined by each loop)."""
        raise NotImplementedError

    def _loop(self) -> None:
        spread = self.JITTER
        while not self.stopped.wait(self.interval * random.uniform(1 - spread, 1 + spread)):
            try:
                self.run_pass()
            except SDHTError as exc:   # our own node is restarting, or a peer is away
                log.log(self.SKIPPED, "%s skipped: %s", self.WHAT, exc)
            except Exception:   # the loop must outlive any one bad pass
                log.exception("%s failed", self.WHAT)
