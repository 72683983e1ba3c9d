"""The ``sdht`` command line: a local demo cluster, keys, membership, repair and status.

Where the ring is: ``--seeds`` (or ``SDHT_SEEDS``), comma-separated ``host:port``; without them,
the nodes of the demo cluster recorded in ``$SDHT_CLUSTER_DIR`` (see :mod:`sdht.cli.localcluster`).
Errors are one line on stderr and a non-zero exit status, never a traceback (set
``SDHT_DEBUG=1`` to see one).
"""
from __future__ import annotations

import json
import os
import sys

import click

from . import localcluster
from .cluster import cluster, keygen
from .options import seeds_here, split_seeds, value_of
from .output import (Progress, progress_callback, report_line, show_value, status_lines,
                     stored_line)
from ..client import Ring
from ..errors import SDHTError
from ..migration import plan_transfers
from ..ring import JOINING, LEAVING, Member
from ..status import cluster_status, jsonable, lag_lines, screen_ring
from ..transport import DEFAULT_TIMEOUT
from ..trust import Keys
from ..wire import RING_SIZE

CONTEXT = {"help_option_names": ["-h", "--help"]}


# -- helpers --------------------------------------------------------------------------------------

def _ring(ctx: click.Context) -> Ring:
    obj = ctx.ensure_object(dict)
    if "ring" not in obj:
        seeds = obj["seeds"] or localcluster.seeds(localcluster.default_dir())
        if not seeds:
            raise click.ClickException("no seeds: pass --seeds HOST:PORT, set SDHT_SEEDS, or "
                                       "start a demo cluster with 'sdht cluster start'")
        obj["ring"] = ctx.with_resource(Ring(seeds, timeout=obj["timeout"], keys=obj["keys"]))
        # A hung node must not cost every command a read timeout: probe all nodes briefly
        # first, so requests avoid the silent ones (sdht/status.py, issue 15).
        screen_ring(obj["ring"].handle, obj["ring"].health)
        ctx.call_on_close(obj["ring"].quorum.hinter.flush)   # hints sent before exit
    return obj["ring"]


def _estimate(ring: Ring, node: str, action: str, dead: bool = False) -> int | None:
    """Estimate how many records a join or remove of ``node`` will copy (for the ETA)."""
    try:
        state = cluster_status(ring.handle)
        view = ring.view
        if view is None or not view.members:
            return None   # the first join of a ring moves nothing
        held = sum(n["records"] or 0 for n in state["nodes"])
        copies = max(1, min(view.params["n"], len(view.readers.node_ids)))
        member = view.member(node)
        tokens = member.tokens if member else view.params["tokens"]
        staged = view.with_member(Member(node, JOINING if action == "join" else LEAVING, tokens))
        plan = plan_transfers(staged.readers, staged.future, [node] if dead else [])
        moving = sum((t.end - t.start) * len(t.sources) for t in plan) / RING_SIZE
        return int(held / copies * moving) or None
    except (SDHTError, ValueError, KeyError, TypeError):
        return None


# -- the command group ----------------------------------------------------------------------------

@click.group(context_settings=CONTEXT)
@click.option("--seeds", envvar="SDHT_SEEDS", default="", metavar="HOST:PORT[,...]",
              help="Nodes to learn the ring from [env SDHT_SEEDS; default: the demo cluster].")
@click.option("--operator-key", envvar="SDHT_OPERATOR_KEY", default=None, metavar="FILE",
              help="The operator's private key (file or hex), for join, remove, repair and "
                   "keygen --node [env SDHT_OPERATOR_KEY; default: the demo cluster's].")
@click.option("--operator-pubkey", envvar="SDHT_OPERATOR_PUBKEY", default=None, metavar="HEX",
              help="Operator public key(s) to trust rings from, comma-separated [env "
                   "SDHT_OPERATOR_PUBKEY; default: the operator key's own].")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=DEFAULT_TIMEOUT[1],
              show_default=True, help="Seconds to wait for a node's answer.")
@click.version_option(package_name="sdht", message="sdht %(version)s")
@click.pass_context
def cli(ctx: click.Context, seeds: str, operator_key: str | None,
        operator_pubkey: str | None, timeout: float) -> None:
    """Operate an sdht ring: a demo cluster, keys, members, repair and status.

    Options go before the command (sdht --seeds HOST:PORT status); --seeds may also follow
    it (sdht status --seeds HOST:PORT). Every option also has an environment variable.
    """
    ctx.ensure_object(dict).update(
        seeds=split_seeds(seeds),
        keys=_keys(operator_key, operator_pubkey),
        timeout=(min(DEFAULT_TIMEOUT[0], timeout), timeout))


def _keys(operator_key: str | None, operator_pubkey: str | None) -> Keys:
    """The CLI's keys: as given, else the demo cluster's operator key when it has one."""
    if not operator_key and not operator_pubkey:
        operator_key = localcluster.operator_key(localcluster.default_dir())
    return Keys.of(operator_key, operator_pubkey)


cli.add_command(cluster)
cli.add_command(keygen)


# -- keys -----------------------------------------------------------------------------------------

@cli.command("set")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--file", "path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Read the value from this file (VALUE then must be left out).")
@click.option("--work", type=float, default=None, help="Logwork to mint (default min_work).")
@click.option("--raw", is_flag=True, help="Store VALUE as a string even if it parses as JSON.")
@seeds_here
@click.pass_context
def set_(ctx: click.Context, key: str, value: str | None, path: str | None, work: float | None,
         raw: bool) -> None:
    """Store VALUE (JSON when it parses, else a string) under KEY.

    VALUE '-' reads the value from stdin, and --file PATH from a file, exactly as they are
    (a trailing newline included); text that is not UTF-8 is stored as bytes. Prints the
    replicas that acknowledged the write.
    """
    ring = _ring(ctx)
    parsed = value_of(value, path, raw, ring.params["max_value_bytes"])
    acked: list[str] = []
    rec = ring.set(key, parsed, work, acked=acked)
    click.echo(stored_line(key, acked, ring.preference(key), rec.w))


@cli.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print {key, found, value} as JSON.")
@seeds_here
@click.pass_context
def get(ctx: click.Context, key: str, as_json: bool) -> None:
    """Print the value of KEY (exit status 1 when it is not set)."""
    rec = _ring(ctx).get_record(key)
    found = rec is not None and not rec.deleted
    if as_json:
        click.echo(json.dumps({"key": key, "found": found,
                               "value": jsonable(rec.value) if found else None}))
    elif found:
        click.echo(show_value(rec.value))
    if not found:
        if not as_json:
            click.echo(f"error: {key!r} is not set", err=True)
        ctx.exit(1)


@cli.command("delete")
@click.argument("key")
@seeds_here
@click.pass_context
def delete(ctx: click.Context, key: str) -> None:
    """Delete KEY (write a tombstone). A key that is not set is left alone and said so; the
    exit status is 0 either way, as ``rm -f`` (the key is gone afterwards)."""
    ring = _ring(ctx)
    rec = ring.get_record(key)
    if rec is None or rec.deleted:
        click.echo(f"{key!r} was not set; nothing to delete")
        return
    acked: list[str] = []
    ring.delete(key, acked=acked)
    click.echo(f"deleted {key!r} on {', '.join(acked)}")


@cli.command("fill")
@click.argument("count", type=click.IntRange(1, 10_000_000))
@click.option("--prefix", default="demo-", show_default=True, help="Key prefix.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="Keys per batch write (one request per replica node).")
@seeds_here
@click.pass_context
def fill(ctx: click.Context, count: int, prefix: str, batch: int) -> None:
    """Write COUNT demo keys PREFIX000000... with small JSON values."""
    ring = _ring(ctx)
    ring.refresh()
    progress = Progress("writing", count, "keys")
    width = max(6, len(str(count - 1)))
    for start in range(0, count, batch):
        stop = min(count, start + batch)
        ring.set_many({f"{prefix}{i:0{width}d}": {"n": i, "note": "demo"}
                       for i in range(start, stop)})
        progress.update(stop)
    progress.finish()


# -- membership and repair ------------------------------------------------------------------------

@cli.command("join")
@click.argument("node")
@click.option("--tokens", type=click.IntRange(1, 4096), default=None,
              help="Virtual nodes (default: the ring's).")
@seeds_here
@click.pass_context
def join(ctx: click.Context, node: str, tokens: int | None) -> None:
    """Add NODE (HOST:PORT, a running sdht-storage) to the ring, moving data to it."""
    ring = _ring(ctx)
    progress = Progress(f"joining {node}, records moved", _estimate(ring, node, "join"))
    report = ring.join(node, tokens, progress=progress_callback(progress))
    progress.finish()
    click.echo(f"joined {node}: {report_line(report)}")


@cli.command("remove")
@click.argument("node")
@click.option("--dead", is_flag=True, help="NODE is gone: copy its ranges from the survivors.")
@seeds_here
@click.pass_context
def remove(ctx: click.Context, node: str, dead: bool) -> None:
    """Take NODE out of the ring, moving its data to the nodes that gain its ranges."""
    ring = _ring(ctx)
    progress = Progress(f"removing {node}, records moved", _estimate(ring, node, "remove", dead))
    report = ring.remove(node, dead, progress_callback(progress))
    progress.finish()
    click.echo(f"removed {node}: {report_line(report)}")


@cli.command("repair")
@seeds_here
@click.pass_context
def repair(ctx: click.Context) -> None:
    """Compare replicas and copy what is missing (anti-entropy), with progress."""
    ring = _ring(ctx)
    if not hasattr(ring, "repair"):
        raise click.ClickException("repair is not available in this version of sdht")
    progress = Progress("repairing", None, "ranges")
    report = ring.repair(progress=progress_callback(progress))
    progress.finish()
    errors = list(getattr(report, "errors", None) or [])
    click.echo(f"repaired: {report_line(report, skip=('errors',)) or report}")
    if errors:   # a repair that could not reach every replica did not finish its job
        for error in errors:
            click.echo(f"error: {error}", err=True)
        click.echo(f"error: repair incomplete: {len(errors)} error(s)", err=True)
        ctx.exit(1)


# -- status ---------------------------------------------------------------------------------------

@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--lag", is_flag=True, help="Show replication: hints kept per target and the "
              "delay of delivered ones.")
@seeds_here
@click.pass_context
def status(ctx: click.Context, as_json: bool, lag: bool = False) -> None:
    """Show every node: state, ring share, records, bytes, epoch, revision, response time,
    error rate, heartbeat, and whether it holds the newest ring."""
    state = cluster_status(_ring(ctx).handle)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    for line in (lag_lines if lag else status_lines)(state):
        click.echo(line)


# -- entry point ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Run the command line; turn every error into one line on stderr and an exit status."""
    try:
        code = cli.main(argv, prog_name="sdht", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            click.echo(exc.ctx.get_help())
            sys.exit(2)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except SDHTError as exc:
        if os.environ.get("SDHT_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the promise is: no tracebacks for operators
        if os.environ.get("SDHT_DEBUG"):
            raise
        click.echo(f"error: {exc.__class__.__name__}: {exc} (SDHT_DEBUG=1 shows a traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
