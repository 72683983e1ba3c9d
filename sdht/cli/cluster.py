"""``sdht cluster`` (a local demo cluster, with keys) and ``sdht keygen`` (keys for operators)."""
from __future__ import annotations

from pathlib import Path

import click

from . import localcluster
from .. import trust
from ..client import Ring
from ..trust import Keys

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
def cluster() -> None:
    """Start and stop a local demo cluster."""


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
@_data_option
@click.pass_context
def cluster_start(ctx: click.Context, count: int, base_port: int, workers: int,
                  data_dir: Path | None) -> None:
    """Start COUNT nodes on 127.0.0.1, with keys, and join them into one ring."""
    data_dir = data_dir or localcluster.default_dir()
    state = localcluster.start(data_dir, count, base_port, workers)
    ids = [n["id"] for n in state["nodes"]]
    operator = localcluster.operator_key(data_dir)
    keys = Keys((trust.public_of(operator),), operator)
    with Ring(ids[:1], timeout=ctx.obj["timeout"], keys=keys) as ring:
        for node in ids:
            ring.join(node)
    click.echo(f"started {count} nodes in {data_dir} (logs: {data_dir}/PORT.log)")
    for node in state["nodes"]:
        click.echo(f"  {node['id']}  pid {node['pid']}  http://{node['id']}/")
    click.echo(f"seeds: export SDHT_SEEDS={','.join(ids)}")
    click.echo(f"operator key: {data_dir / localcluster.OPERATOR_KEY_FILE} "
               f"(sdht uses it for this cluster; elsewhere: export SDHT_OPERATOR_KEY=FILE)")


@cluster.command("stop")
@_data_option
def cluster_stop(data_dir: Path | None) -> None:
    """Stop the demo cluster's nodes (only the processes it started)."""
    data_dir = data_dir or localcluster.default_dir()
    stopped = localcluster.stop(data_dir)
    click.echo(f"stopped {len(stopped)} node(s)" + (f": {', '.join(stopped)}" if stopped else ""))


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
