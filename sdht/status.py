"""The state of a ring as operators see it: each node's share, health and agreement on the ring.

Used by ``sdht status`` and by the node's web page. A node that cannot be reached is reported as
``down``, never raised. Health is asked with a short timeout (:data:`PROBE_TIMEOUT`), all nodes
at once, so one hung node costs a command well under a second rather than a full read timeout;
:func:`screen` does the same before any CLI command, so that its requests avoid a hung node from
the start (a client's failure memory lasts one process: the CLI starts with none).
"""
from __future__ import annotations

import base64
from concurrent.futures import Future
from typing import Any, Iterable

from .errors import SDHTError
from .handle import RingHandle
from .health import NodeHealth
from .replicas import replica_sets, union
from .ring import RingView, intervals, token_positions
from .transport import Transport
from .wire import RING_SIZE

#: (connect, read) seconds of a health probe: a node answers its health in milliseconds, so
#: one silent this long is reported down (and avoided) rather than waited for.
PROBE_TIMEOUT = (0.5, 0.75)

#: Health fields copied into a node's status, as the node reports them; the last three are the
#: unique-name registry's (docs/names.md): names held, accepts answered, refused phases.
HEALTH_FIELDS = ("records", "bytes", "epoch", "revision", "mean_response_ms", "error_rate",
                 "requests", "heartbeat", "uptime", "location", "names", "name_proposals",
                 "name_conflicts", "p99_response_ms", "hints", "hints_delivered",
                 "replication_delay_p50_s", "replication_delay_p99_s")


def shares(view: RingView) -> dict[str, float]:
    """Return, for each member, the fraction of ring positions it replicates for reads.

    Within each interval between tokens the preference list is fixed (docs/design.md, "The ring"), so
    summing interval lengths per replica is exact. With ``n`` replicas the shares sum to ``n``
    (or to the number of readable members, when fewer). Joining members get 0.
    """
    placement = view.readers
    owned = {m.id: 0 for m in view.members}
    for start, end, probe in intervals(placement.boundaries()):
        for node in placement.preference(probe):
            owned[node] += end - start
    return {node: total / RING_SIZE for node, total in owned.items()}


def token_fractions(view: RingView) -> dict[str, list[float]]:
    """Return each member's token positions as fractions of the ring in [0, 1)."""
    return {m.id: [p / RING_SIZE for p in token_positions(m.id, m.tokens)] for m in view.members}


def cluster_status(handle: RingHandle) -> dict[str, Any]:
    """Refresh the ring through ``handle`` and ask every member for its health, in parallel.

    :returns: ``{"epoch", "agree", "nodes": [...]}``; each node has ``id``, ``state`` (the ring
        state, or ``down``), ``share``, the :data:`HEALTH_FIELDS`, ``agrees`` (its epoch equals
        the highest seen) and ``error`` when down.
    :raises NoNodes: when no seed can be reached at all.
    """
    view = handle.refresh()
    if view is None:
        return {"epoch": 0, "agree": True, "nodes": []}
    share = shares(view)
    probe = _prober(handle)
    try:
        futures = {m.id: probe.submit(probe.health, m.id) for m in view.members}
        nodes = _entries(view, share, futures)
    finally:
        if probe is not handle.transport:
            probe.close()
    newest = max([view.epoch, *(n["epoch"] or 0 for n in nodes)])
    for entry in nodes:
        entry["agrees"] = entry["up"] and entry["epoch"] == newest
    return {"epoch": newest, "agree": all(n["agrees"] for n in nodes if n["up"]),
            "nodes": nodes}


def _entries(view: RingView, share: dict[str, float],
             futures: dict[str, Future]) -> list[dict[str, Any]]:
    """Each member's status entry from its health answer (or its failure: down)."""
    nodes = []
    for member in view.members:
        entry: dict[str, Any] = {"id": member.id, "state": member.state,
                                 "share": share[member.id], "tokens": member.tokens}
        try:
            health = futures[member.id].result()
            entry.update({k: health.get(k) for k in HEALTH_FIELDS})
            entry["up"] = True
        except SDHTError as exc:
            entry.update({k: None for k in HEALTH_FIELDS})
            entry.update(up=False, state="down", error=str(exc))
        nodes.append(entry)
    return nodes


def screen(handle: RingHandle, health: NodeHealth, nodes: Iterable[str] = ()) -> list[str]:
    """Ask ``nodes`` (by default the seeds and the known members) for their health, all at
    once with :data:`PROBE_TIMEOUT`, and note in ``health`` who answered and who did not, so
    that the requests that follow avoid a hung node instead of waiting a read timeout on it.
    Answers update what ``health`` knows of each node (its location). Returns the nodes that
    did not answer.
    """
    known = [m.id for m in handle.view.members] if handle.view else []
    asked = list(dict.fromkeys(nodes or [*handle.seeds, *known]))
    probe = _prober(handle)
    silent = []
    try:
        futures = {n: probe.submit(probe.health, n) for n in asked}
        for node, fut in futures.items():
            try:
                health.learn(node, fut.result())
                health.answered(node)
            except SDHTError:
                health.failed(node)
                silent.append(node)
    finally:
        if probe is not handle.transport:
            probe.close()
    return silent


def _prober(handle: RingHandle) -> Transport:
    """The transport health probes go through: HTTP with :data:`PROBE_TIMEOUT` when the
    handle's is plain HTTP; an injected one (in-process nodes, a custom pool) as it is."""
    if type(handle.transport) is Transport:
        return Transport(PROBE_TIMEOUT, handle.transport.keys, max_parallel=16)
    return handle.transport


def screen_ring(handle: RingHandle, health: NodeHealth) -> list[str]:
    """:func:`screen` the seeds, learn the ring from those that answered, then screen the
    members not asked yet: what a short-lived client (the CLI) does before its first request.
    Returns the nodes that did not answer; a ring that cannot be learnt is left to the
    command to report."""
    silent = screen(handle, health)
    try:
        handle.refresh()
    except SDHTError:
        return silent
    asked = set(handle.seeds)
    rest = [m.id for m in handle.view.members if m.id not in asked] if handle.view else []
    return silent + (screen(handle, health, rest) if rest else [])


def jsonable(value: Any) -> Any:
    """Return ``value`` with bytes made JSON-safe (``{"$bytes": base64}``), recursively."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def replicas(handle: RingHandle, key: str) -> list[dict[str, Any]]:
    """Ask every node that should hold ``key`` (readers and future writers) what it holds.

    :returns: one ``{"node", "holds", "digest", "deleted"}`` per node (``error`` when down).
    """
    view = handle.current()
    nodes = union(replica_sets(view, key))
    futures = {n: handle.transport.submit(handle.transport.get_record, n, key, view.params)
               for n in nodes}
    out = []
    for node, fut in futures.items():
        try:
            rec, _ = fut.result()
        except SDHTError as exc:
            out.append({"node": node, "holds": None, "error": str(exc)})
            continue
        out.append({"node": node, "holds": rec is not None,
                    "digest": rec.digest.hex() if rec else None,
                    "deleted": bool(rec and rec.deleted)})
    return out


def lag_lines(state: dict[str, Any]) -> list[str]:
    """``sdht status --lag``: per node, the hints it keeps for each other replica (how many,
    the oldest's age) and the replication delay of the hints it delivered (p50, p99), from a
    :func:`cluster_status` answer."""
    lines = [f"{'node':<22} {'state':<8} {'delivered':>9} {'p50 s':>7} {'p99 s':>7}  "
             "hints kept (target: count, oldest)"]
    for n in state["nodes"]:
        if not n["up"]:
            lines.append(f"{n['id']:<22} {'down':<8}")
            continue
        kept = ", ".join(f"{t}: {b.get('count', 0)}, {b.get('oldest_age', 0):.1f} s"
                         for t, b in sorted((n.get("hints") or {}).items())) or "none"
        lines.append(f"{n['id']:<22} {n['state']:<8} {n.get('hints_delivered') or 0:>9} "
                     f"{n.get('replication_delay_p50_s') or 0:>7.3f} "
                     f"{n.get('replication_delay_p99_s') or 0:>7.3f}  {kept}")
    return lines
