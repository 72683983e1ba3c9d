"""The demo cluster's supervisor: restarts nodes that crashed, at a bounded rate.

As the scuttlebutt-style design's monitor does for its hosts, it looks at every node of the
cluster each ``interval`` and starts again those no process serves any more (killed, crashed,
exited), on their port and data. A node that keeps dying is not restarted in a tight loop:
:class:`RestartBudget` allows ``MAX_RESTARTS`` restarts of one node per ``WINDOW`` seconds, each
after a delay that doubles from ``FIRST_DELAY`` up to ``MAX_DELAY``.

Run it in the foreground (``sdht cluster supervise``) or in the background (``sdht cluster start
--supervise``, which runs ``python -m sdht.cli.supervisor DIR`` with its log in
``DIR/supervisor.log``). Either way it is recorded in the state file, and it exits when the
cluster is stopped (``sdht cluster stop`` also signals a background one) or another supervisor
takes over.
"""
from __future__ import annotations

import collections
import os
import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import ClusterError
from . import demonode, localcluster
from .localcluster import locked, read_state, write_state

#: Restarts allowed per node within WINDOW seconds; past them, the node waits.
MAX_RESTARTS = 5
WINDOW = 60.0
#: Delay before the second restart of a node within the window; it doubles at each one after.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
#: Seconds between two looks at the nodes.
INTERVAL = 0.5


class RestartBudget:
    """How often each node may be restarted: at most ``limit`` times per ``window`` seconds,
    the k-th restart within the window no sooner than ``first · 2**(k-2)`` seconds (capped at
    ``cap``) after the one before."""

    def __init__(self, limit: int = MAX_RESTARTS, window: float = WINDOW,
                 first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        self.limit, self.window, self.first, self.cap = limit, window, first, cap
        self.times: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=limit))

    def wait(self, node: str, now: float) -> float:
        """Seconds until ``node`` may be restarted (0: now)."""
        times = self.times[node]
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            return 0.0
        if len(times) >= self.limit:
            return times[0] + self.window - now
        delay = min(self.cap, self.first * 2 ** (len(times) - 1))
        return max(0.0, times[-1] + delay - now)

    def spend(self, node: str, now: float) -> None:
        """Note that ``node`` was restarted at ``now``."""
        self.times[node].append(now)


def supervise(data_dir: Path, interval: float = INTERVAL,
              say: Callable[[str], None] = print, budget: RestartBudget | None = None) -> None:
    """Restart the cluster's crashed nodes until the cluster is stopped (its state file is
    gone) or another supervisor is recorded. Records this process as the supervisor."""
    budget = budget or RestartBudget()
    me = {"pid": os.getpid(), "start_time": demonode.start_time(os.getpid())}
    with locked(data_dir):
        state = localcluster.required_state(data_dir)
        state["supervisor"] = me
        write_state(data_dir, state)
    say(f"supervising {len(state['nodes'])} node(s) in {data_dir} (pid {me['pid']})")
    waiting: set[str] = set()
    while True:
        with locked(data_dir):
            state = read_state(data_dir)
            if state is None or state.get("supervisor", {}).get("pid") != me["pid"]:
                say("the cluster was stopped or another supervisor took over; exiting")
                return
            operator = localcluster.operator_key(data_dir)
            changed = False
            for node in state["nodes"]:
                if operator is None or demonode.running(data_dir, node):
                    continue
                wait = budget.wait(node["id"], time.monotonic())
                if wait > 0:
                    if node["id"] not in waiting:
                        say(f"{node['id']} is down; next restart in {wait:.1f}s (at most "
                            f"{budget.limit} per {budget.window:.0f}s)")
                        waiting.add(node["id"])
                    continue
                waiting.discard(node["id"])
                node.update(demonode.spawn(data_dir, node["port"], operator,
                                           node.get("workers", 2)))
                budget.spend(node["id"], time.monotonic())
                changed = True
                say(f"{node['id']} was down; restarted it (pid {node['pid']})")
            if changed:
                write_state(data_dir, state)
        _reap()
        time.sleep(interval)


def _reap() -> None:
    """Collect the exit status of nodes this process started and that ended (no zombies)."""
    for _ in range(1000):   # bounded: there are never this many children
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> None:
    """``python -m sdht.cli.supervisor DIR``: supervise the cluster in DIR (see the module)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m sdht.cli.supervisor CLUSTER_DIR")
    try:
        supervise(Path(args[0]), say=lambda line: print(line, flush=True))
    except ClusterError as exc:   # the cluster was stopped before this process began
        print(f"not supervising: {exc}", flush=True)


if __name__ == "__main__":
    main()
