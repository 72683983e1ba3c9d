"""The demo cluster's supervisor: restarts nodes that crashed, at a bounded rate.

As the scuttlebutt-style design's monitor does for its hosts, it looks at every node of the
cluster each ``interval`` and starts again those no process serves any more (killed, crashed,
exited), on their port and data. It also checks each node's heartbeat (its health route): a
node that has not answered for ``HUNG_AFTER`` seconds (``START_GRACE`` after it started) is
hung, and is stopped, to be started again as a crashed one. A node that keeps dying is not restarted in a tight loop:
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
from .processes import answers_health

#: Restarts allowed per node within WINDOW seconds; past them, the node waits.
MAX_RESTARTS = 5
WINDOW = 60.0
#: Delay before the second restart of a node within the window; it doubles at each one after.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
#: Seconds between two looks at the nodes.
INTERVAL = 0.5
#: Seconds without an answer after which a running node counts as hung (START_GRACE for one
#: that has not answered since it started), and how long one look waits for the answer.
HUNG_AFTER = 15.0
START_GRACE = localcluster.START_DEADLINE
HEALTH_TIMEOUT = 2.0


class Heartbeats:
    """When each node last answered its health route, per process serving it."""

    def __init__(self, hung_after: float = HUNG_AFTER, grace: float = START_GRACE) -> None:
        self.hung_after, self.grace = hung_after, grace
        #: node id -> (pid, since when it has been waited for, whether it ever answered)
        self.heard: dict[str, tuple[int, float, bool]] = {}

    def silent_for(self, node: str, pid: int, answered: bool, now: float) -> float | None:
        """Note one look at ``node`` (served by ``pid``); return how long it has been silent
        when that is past its limit (it is hung), else None."""
        seen = self.heard.get(node)
        if seen is None or seen[0] != pid:   # a process not seen before: its grace begins
            self.heard[node] = (pid, now, answered)
            return None
        if answered:
            self.heard[node] = (pid, now, True)
            return None
        silent = now - seen[1]
        return silent if silent > (self.hung_after if seen[2] else self.grace) else None

    def forget(self, node: str) -> None:
        """Start afresh for ``node`` (it was stopped)."""
        self.heard.pop(node, None)


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
    beats = Heartbeats()
    while True:
        _stop_hung(data_dir, beats, say)
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


def _stop_hung(data_dir: Path, beats: Heartbeats, say: Callable[[str], None]) -> None:
    """Check every running node's heartbeat (outside the lock: a hung node takes the whole
    timeout to not answer) and stop those silent for too long."""
    state = read_state(data_dir) or {"nodes": []}
    hung = []
    for node in state["nodes"]:
        if not demonode.recorded_alive(node):
            beats.forget(node["id"])   # down, or restarted by hand: the crash path decides
            continue
        answered = answers_health(node["id"], HEALTH_TIMEOUT)
        silent = beats.silent_for(node["id"], node["pid"], answered, time.monotonic())
        if silent is not None:
            hung.append((node["id"], node["pid"], silent))
    for node_id, pid, silent in hung:
        with locked(data_dir):
            current = read_state(data_dir)
            if current is None:
                return
            record = next((n for n in current["nodes"] if n["id"] == node_id), None)
            if record is None or record["pid"] != pid:   # changed meanwhile: look again
                continue
            demonode.stop(data_dir, record)
        beats.forget(node_id)
        say(f"{node_id} has not answered for {silent:.0f}s; stopped it, to be restarted")


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
