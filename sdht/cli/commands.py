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
import time
from pathlib import Path
from typing import Any, Callable

import click

from . import localcluster
from ..client import Ring
from ..errors import SDHTError
from ..migration import plan_transfers
from ..ring import JOINING, LEAVING, Member
from ..wire import RING_SIZE
from ..status import cluster_status, jsonable
from ..transport import DEFAULT_TIMEOUT

CONTEXT = {"help_option_names": ["-h", "--help"]}


# -- helpers --------------------------------------------------------------------------------------

class Progress:
    """A one-line progress display on stderr: count, rate and, when a total is known, ETA.

    On a terminal the line redraws in place (10 times a second at most); otherwise a line is
    printed every few seconds, so logs stay short.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "records") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.began = self.last = time.monotonic()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        """Show that ``done`` items are finished."""
        self.done = done
        if self.total is not None and done > self.total:
            self.total = done  # the estimate was low
        now = time.monotonic()
        if now - self.last >= (0.1 if self.tty else 2.0):
            self.last = now
            self._show(final=False)

    def finish(self) -> None:
        """Print the final line."""
        self._show(final=True)

    def _show(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self.began, 1e-6)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done:,}"
        if self.total and not final:
            text += f" / ~{self.total:,} {self.unit} {min(100, 100 * self.done // self.total)}%"
        else:
            text += f" {self.unit}"
        text += f"  {rate:,.0f}/s"
        if final:
            text += f"  in {elapsed:.1f}s"
        elif self.total and rate > 0:
            text += f"  ETA {max(0.0, (self.total - self.done) / rate):.0f}s"
        if self.tty:
            click.echo("\r\x1b[K" + text, err=True, nl=final)
        else:
            click.echo(text, err=True)


def parse_value(text: str, raw: bool) -> Any:
    """Return ``text`` parsed as JSON when it parses (and ``raw`` is false), else the text."""
    if raw:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise click.BadParameter("the JSON value nests too deeply") from None


def show_value(value: Any) -> str:
    """Render a value for a terminal: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(jsonable(value))


def _ring(ctx: click.Context) -> Ring:
    obj = ctx.ensure_object(dict)
    if "ring" not in obj:
        seeds = obj["seeds"] or localcluster.seeds(localcluster.default_dir())
        if not seeds:
            raise click.ClickException("no seeds: pass --seeds HOST:PORT, set SDHT_SEEDS, or "
                                       "start a demo cluster with 'sdht cluster start'")
        obj["ring"] = ctx.with_resource(Ring(seeds, timeout=obj["timeout"],
                                             cluster_key=obj["cluster_key"]))
    return obj["ring"]


def _estimate(ring: Ring, node: str, action: str, dead: bool = False) -> int | None:
    """Estimate how many records a join or remove of ``node`` will copy (for the ETA)."""
    try:
        state = cluster_status(ring.handle)
        view = ring.view
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


def _progress_callback(progress: Progress) -> Callable[..., None]:
    def callback(*args: Any, **kwargs: Any) -> None:
        counts = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if len(counts) > 1:  # (done, total), as repair reports ranges
            progress.total = counts[1]
        if counts:
            progress.update(counts[0])
    return callback


def _report(report: Any) -> str:
    fields = getattr(report, "__dict__", None) or {}
    return ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in fields.items() if k not in ("node", "action"))


# -- the command group ----------------------------------------------------------------------------

@click.group(context_settings=CONTEXT)
@click.option("--seeds", envvar="SDHT_SEEDS", default="", metavar="HOST:PORT[,...]",
              help="Nodes to learn the ring from [env SDHT_SEEDS; default: the demo cluster].")
@click.option("--cluster-key", envvar="SDHT_CLUSTER_KEY", default=None,
              help="Key for admin routes, when the nodes require one [env SDHT_CLUSTER_KEY].")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=DEFAULT_TIMEOUT[1],
              show_default=True, help="Seconds to wait for a node's answer.")
@click.version_option(package_name="sdht", message="sdht %(version)s")
@click.pass_context
def cli(ctx: click.Context, seeds: str, cluster_key: str | None, timeout: float) -> None:
    """Operate an sdht ring: a demo cluster, keys, members, repair and status."""
    ctx.ensure_object(dict).update(
        seeds=[s.strip() for s in seeds.split(",") if s.strip()], cluster_key=cluster_key,
        timeout=(min(DEFAULT_TIMEOUT[0], timeout), timeout))


# -- demo cluster ---------------------------------------------------------------------------------

@cli.group(context_settings=CONTEXT)
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
    """Start COUNT nodes on 127.0.0.1 and join them into one ring."""
    data_dir = data_dir or localcluster.default_dir()
    state = localcluster.start(data_dir, count, base_port, workers)
    ids = [n["id"] for n in state["nodes"]]
    with Ring(ids[:1], timeout=ctx.obj["timeout"], cluster_key=ctx.obj["cluster_key"]) as ring:
        for node in ids:
            ring.join(node)
    click.echo(f"started {count} nodes in {data_dir} (logs: {data_dir}/PORT.log)")
    for node in state["nodes"]:
        click.echo(f"  {node['id']}  pid {node['pid']}  http://{node['id']}/")
    click.echo(f"seeds: export SDHT_SEEDS={','.join(ids)}")


@cluster.command("stop")
@_data_option
def cluster_stop(data_dir: Path | None) -> None:
    """Stop the demo cluster's nodes (only the processes it started)."""
    data_dir = data_dir or localcluster.default_dir()
    stopped = localcluster.stop(data_dir)
    click.echo(f"stopped {len(stopped)} node(s)" + (f": {', '.join(stopped)}" if stopped else ""))


# -- keys -----------------------------------------------------------------------------------------

@cli.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--work", type=float, default=None, help="Logwork to mint (default min_work).")
@click.option("--raw", is_flag=True, help="Store VALUE as a string even if it parses as JSON.")
@click.pass_context
def set_(ctx: click.Context, key: str, value: str, work: float | None, raw: bool) -> None:
    """Store VALUE (JSON when it parses, else a string) under KEY."""
    ring = _ring(ctx)
    rec = ring.set(key, parse_value(value, raw), work)
    click.echo(f"stored {key!r} on {', '.join(ring.preference(key))} (work {rec.w:g})")


@cli.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print {key, found, value} as JSON.")
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
@click.pass_context
def delete(ctx: click.Context, key: str) -> None:
    """Delete KEY (write a tombstone)."""
    _ring(ctx).delete(key)
    click.echo(f"deleted {key!r}")


@cli.command("fill")
@click.argument("count", type=click.IntRange(1, 10_000_000))
@click.option("--prefix", default="demo-", show_default=True, help="Key prefix.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="Keys per batch write (one request per replica node).")
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
@click.pass_context
def join(ctx: click.Context, node: str, tokens: int | None) -> None:
    """Add NODE (HOST:PORT, a running sdht-storage) to the ring, moving data to it."""
    ring = _ring(ctx)
    progress = Progress(f"joining {node}, records moved", _estimate(ring, node, "join"))
    report = ring.join(node, tokens, progress=_progress_callback(progress))
    progress.finish()
    click.echo(f"joined {node}: {_report(report)}")


@cli.command("remove")
@click.argument("node")
@click.option("--dead", is_flag=True, help="NODE is gone: copy its ranges from the survivors.")
@click.pass_context
def remove(ctx: click.Context, node: str, dead: bool) -> None:
    """Take NODE out of the ring, moving its data to the nodes that gain its ranges."""
    ring = _ring(ctx)
    progress = Progress(f"removing {node}, records moved", _estimate(ring, node, "remove", dead))
    report = ring.remove(node, dead, _progress_callback(progress))
    progress.finish()
    click.echo(f"removed {node}: {_report(report)}")


@cli.command("repair")
@click.pass_context
def repair(ctx: click.Context) -> None:
    """Compare replicas and copy what is missing (anti-entropy), with progress."""
    ring = _ring(ctx)
    if not hasattr(ring, "repair"):
        raise click.ClickException("repair is not available in this version of sdht")
    progress = Progress("repairing", None, "ranges")
    report = ring.repair(progress=_progress_callback(progress))
    progress.finish()
    click.echo(f"repaired: {_report(report) or report}")


# -- status ---------------------------------------------------------------------------------------

COLUMNS = ("NODE", "STATE", "SHARE", "RECORDS", "BYTES", "EPOCH", "REV", "MEAN ms", "ERR %",
           "HEARTBEAT", "RING")


def _row(n: dict[str, Any]) -> tuple[str, ...]:
    if not n["up"]:
        return (n["id"], "down", f"{100 * n['share']:.1f}%") + ("-",) * 7 + ("?",)
    beat = time.strftime("%H:%M:%S", time.localtime(n["heartbeat"])) if n["heartbeat"] else "-"
    return (n["id"], n["state"], f"{100 * n['share']:.1f}%", f"{n['records']:,}",
            f"{n['bytes']:,}", str(n["epoch"]), f"{n['revision']:,}",
            f"{n['mean_response_ms'] or 0:.2f}", f"{100 * (n['error_rate'] or 0):.2f}", beat,
            "ok" if n["agrees"] else "STALE")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show every node: state, ring share, records, bytes, epoch, revision, response time,
    error rate, heartbeat, and whether it holds the newest ring."""
    state = cluster_status(_ring(ctx).handle)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    rows = [COLUMNS] + [_row(n) for n in state["nodes"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    up = sum(1 for n in state["nodes"] if n["up"])
    click.echo(f"{up} of {len(state['nodes'])} nodes up; ring epoch {state['epoch']}; "
               + ("all nodes agree on the ring" if state["agree"] else
                  "some nodes hold an older ring"))


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
