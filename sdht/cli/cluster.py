"""``sdht cluster`` (a local demo cluster, with keys) and ``sdht keygen`` (keys for operators)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import clusternodes, demonode, localcluster, processes, supervisor
from .output import report_line
from .. import trust
from ..client import Ring
from ..errors import ClusterError, NotAMember, SDHTError
from ..trust import Keys

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
def cluster() -> None:
    """Start, stop, restart, grow, shrink and supervise a local demo cluster."""


_data_option = click.option(
    "--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Cluster directory [env SDHT_CLUSTER_DIR; default ~/.local/state/sdht/cluster].")


@cluster.command("start")
@click.option("-n", "--nodes", "count", type=click.IntRange(1, 32), default=3, show_default=True,
              help="How many nodes.")
@click.option("--base-port", type=click.IntRange(0, 65535), default=5555, show_default=True,
              help="Port of the first node; the others follow. 0 picks free ports.")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="gunicorn workers per node.")
@click.option("--supervise", is_flag=True,
              help="Also start a supervisor in the background that restarts crashed or hung "
                   "nodes (log: DIR/supervisor.log).")
@_data_option
@click.pass_context
def cluster_start(ctx: click.Context, count: int, base_port: int, workers: int,
                  supervise: bool, data_dir: Path | None) -> None:
    """Start COUNT nodes on 127.0.0.1, with keys, and join them into one ring."""
    data_dir = data_dir or localcluster.default_dir()
    state = localcluster.start(data_dir, count, base_port, workers)
    ids = [n["id"] for n in state["nodes"]]
    with _demo_ring(ctx, data_dir, ids[:1]) as ring:
        for node in ids:
            ring.join(node)
    click.echo(f"started {count} nodes in {data_dir} (logs: {data_dir}/PORT.log)")
    for node in state["nodes"]:
        click.echo(f"  {node['id']}  pid {node['pid']}  http://{node['id']}/")
    click.echo(f"seeds: export SDHT_SEEDS={','.join(ids)}")
    click.echo(f"operator key: {data_dir / localcluster.OPERATOR_KEY_FILE} "
               f"(sdht uses it for this cluster; elsewhere: export SDHT_OPERATOR_KEY=FILE)")
    if supervise:
        pid = _start_supervisor(data_dir)
        click.echo(f"supervisor: pid {pid}, restarts crashed nodes "
                   f"(log: {data_dir / 'supervisor.log'})")


def _demo_ring(ctx: click.Context, data_dir: Path, seeds: list[str]) -> Ring:
    """A ring client holding the demo cluster's operator key."""
    operator = localcluster.operator_key(data_dir)
    keys = Keys((trust.public_of(operator),), operator) if operator else Keys()
    return Ring(seeds, timeout=ctx.obj["timeout"], keys=keys)


def _start_supervisor(data_dir: Path) -> int:
    """Spawn ``python -m sdht.cli.supervisor DIR`` in the background and record it."""
    with open(data_dir / "supervisor.log", "ab") as log:
        proc = processes.spawn([sys.executable, "-m", "sdht.cli.supervisor", str(data_dir)],
                               log)
    with localcluster.locked(data_dir):   # recorded at once, so that stop finds it
        state = localcluster.required_state(data_dir)
        state["supervisor"] = {"pid": proc.pid, "start_time": demonode.start_time(proc.pid)}
        localcluster.write_state(data_dir, state)
    return proc.pid


@cluster.command("stop")
@_data_option
@click.pass_context
def cluster_stop(ctx: click.Context, data_dir: Path | None) -> None:
    """Stop the supervisor and every node of the demo cluster, including a node restarted by
    hand on the cluster's port and data; nothing else on the machine is touched."""
    data_dir = data_dir or localcluster.default_dir()
    report = localcluster.stop(data_dir)
    stopped = [n + (f" (restarted by hand, pid {', '.join(map(str, report['by_hand'][n]))})"
                    if n in report["by_hand"] else "") for n in report["stopped"]]
    click.echo(f"stopped {len(stopped)} node(s)" + (f": {', '.join(stopped)}" if stopped else ""))
    if report["down"]:
        click.echo(f"not running: {', '.join(report['down'])}")
    if report["supervisor"]:
        click.echo(f"stopped the supervisor (pid {report['supervisor']})")
    for node, pids in report["strangers"].items():
        click.echo(f"warning: port {node.rsplit(':', 1)[1]} is held by pid "
                   f"{', '.join(map(str, pids))}, not a node of this cluster; left running",
                   err=True)


@cluster.command("restart")
@click.argument("nodes", nargs=-1, metavar="[NODE]...")
@_data_option
def cluster_restart(nodes: tuple[str, ...], data_dir: Path | None) -> None:
    """Stop and start again NODE (HOST:PORT or PORT; every node when none is named), on its
    port and data, however it was started; wait until it answers."""
    data_dir = data_dir or localcluster.default_dir()
    for node in clusternodes.restart(data_dir, list(nodes) or None):
        click.echo(f"restarted {node['id']} (pid {node['pid']})")


@cluster.command("add")
@click.option("--workers", type=click.IntRange(1, 16), default=None,
              help="gunicorn workers [default: as the first node].")
@_data_option
@click.pass_context
def cluster_add(ctx: click.Context, workers: int | None, data_dir: Path | None) -> None:
    """Start one more node (the port after the highest) and join it to the ring."""
    data_dir = data_dir or localcluster.default_dir()
    node = clusternodes.add(data_dir, workers)
    with _demo_ring(ctx, data_dir, localcluster.seeds(data_dir)) as ring:
        try:
            report = ring.join(node["id"])
        except SDHTError as exc:
            raise ClusterError(f"{node['id']} started (pid {node['pid']}) but its join "
                               f"failed: {exc}; re-run 'sdht join {node['id']}' to resume, or "
                               f"'sdht cluster remove {node['id']}'") from None
    click.echo(f"added {node['id']} (pid {node['pid']}): {report_line(report)}")


@cluster.command("remove")
@click.argument("node")
@_data_option
@click.pass_context
def cluster_remove(ctx: click.Context, node: str, data_dir: Path | None) -> None:
    """Remove NODE (HOST:PORT or PORT) from the ring, moving its data, then stop it."""
    data_dir = data_dir or localcluster.default_dir()
    record = localcluster.find_node(localcluster.required_state(data_dir), node)
    with _demo_ring(ctx, data_dir, localcluster.seeds(data_dir)) as ring:
        try:
            line = f"removed {record['id']} from the ring: {report_line(ring.remove(record['id']))}"
        except NotAMember:
            line = f"{record['id']} was not in the ring"
    stopped = clusternodes.retire(data_dir, record["id"])
    click.echo(line)
    click.echo(f"stopped {record['id']} (pid {', '.join(map(str, stopped))})" if stopped
               else f"{record['id']} was not running")


@cluster.command("supervise")
@_data_option
def cluster_supervise(data_dir: Path | None) -> None:
    """Watch the demo cluster in the foreground and restart nodes that crash or hang (no
    heartbeat for 15 s), at most 5 restarts of a node per minute with a doubling delay;
    Ctrl-C ends it."""
    supervisor.supervise(data_dir or localcluster.default_dir(), say=click.echo)


@click.command("keygen", context_settings=CONTEXT)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the private key to this file (mode 0600) instead of printing it.")
@click.option("--node", "node_id", default=None, metavar="HOST:PORT",
              help="Derive NODE's key from the operator key (SDHT_OPERATOR_KEY or "
                   "--operator-key) instead of making an operator key.")
@click.pass_context
def keygen(ctx: click.Context, out: Path | None, node_id: str | None) -> None:
    """Make an operator key pair, or derive a node's key from the operator key.

    An operator key signs the ring: give its public key to every node
    (SDHT_OPERATOR_PUBKEY) and keep the private key for sdht join, remove and repair
    (SDHT_OPERATOR_KEY). A node's key goes to that node (SDHT_NODE_KEY); its page token
    unlocks the writes of the node's page.
    """
    if node_id is None:
        private = trust.new_private_key()
        lines = [f"public key: {trust.public_of(private)}"]
    else:
        operator = ctx.obj["keys"].private if ctx.obj["keys"].can_sign_rings else None
        if operator is None:
            raise click.ClickException("deriving a node key needs the operator key: "
                                       "--operator-key FILE or SDHT_OPERATOR_KEY")
        private = trust.node_private_key(operator, node_id)
        lines = [f"node {node_id}", f"page token: {trust.page_token(private)}"]
    if out is not None:
        localcluster.write_secret(out, private)
        lines.append(f"private key written to {out}")
    else:
        lines.append(f"private key: {private}")
    click.echo("\n".join(lines))
