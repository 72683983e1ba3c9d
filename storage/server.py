"""``sdht-storage``: run one storage node under gunicorn.

The command replaces itself with gunicorn (same PID, so a supervisor or test can stop it by PID)
running ``storage.app:create_app()`` with settings passed through ``SDHT_*`` variables. gunicorn's
``preload_app`` stays off, so each worker imports the app and opens LMDB after the fork. The
worker class, the server hooks and the control socket come from :mod:`storage.gunicorn_conf`.

It also starts the seed's way (spencer-p/key-value-store): with ``VIEW`` (comma-separated
``host:port``), ``REPL_FACTOR``, ``ADDRESS`` (this node's ``host:port`` in the view) and
``PORT`` in the environment, and no other option. Every node of the view then stores the same
epoch-1 ring of replica groups (:func:`storage.shards.seed_ring`, a pure function of ``VIEW``
and ``REPL_FACTOR``) before it serves, so all of them agree with no other step, whichever
starts first. A node that finds its peers already on another ring (a view change moved on, or
it was started for a view change) takes their ring if it is a member, and otherwise waits to be
joined. Development mode only: a ring built from the environment is unsigned, and a keyed
cluster accepts only rings the operator signed (docs/http-api.md, "Seed-style start").
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from dataclasses import dataclass
from typing import Mapping

import click

from sdht.errors import ConfigError
from sdht.ring import parse_node_id
from sdht.trust import DEV_MODE, Keys, is_loopback


@dataclass(frozen=True)
class SeedStart:
    """The seed's environment: this node's ``address``, its ``port``, the ``view`` and the
    replication factor."""

    address: str
    port: int
    view: list[str]
    repl_factor: int


def seed_start(environ: Mapping[str, str], port: int | None) -> SeedStart | None:
    """Return the seed-style start the environment asks for (``VIEW`` set), else None.

    :raises click.UsageError: when ``ADDRESS``, ``PORT`` or ``REPL_FACTOR`` are missing or
        malformed.
    """
    raw_view = environ.get("VIEW")
    if raw_view is None:
        return None
    address = environ.get("ADDRESS", "").strip()
    raw_port = str(port) if port is not None else environ.get("PORT", "")
    if not address:
        raise click.UsageError("VIEW needs ADDRESS: this node's host:port in the view")
    if ":" not in address:
        address = f"{address}:{raw_port}"
    try:
        host, own_port = parse_node_id(address)
        factor = int(environ.get("REPL_FACTOR", ""))
    except (ConfigError, ValueError):
        raise click.UsageError(f"ADDRESS must be HOST:PORT and REPL_FACTOR an integer "
                               f"(ADDRESS={address!r})") from None
    view = [m.strip() for m in raw_view.split(",") if m.strip()]
    return SeedStart(address, int(raw_port) if raw_port.isdigit() else own_port, view, factor)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=None,
              help="TCP port (required; with VIEW, $PORT or ADDRESS's port).")
@click.option("--host", default=None, help="Address to bind [default: 127.0.0.1; with VIEW, "
              "ADDRESS's host].")
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False),
              help="LMDB data directory, created if missing (required; with VIEW, "
                   "$SDHT_DATA_DIR or ./sdht-data-PORT).")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="gunicorn worker processes.")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Threads per worker (gthread keeps client connections alive).")
@click.option("--node-id", default=None, envvar="SDHT_NODE_ID",
              help="Name in the ring, or $SDHT_NODE_ID [default: HOST:PORT].")
@click.option("--timeout", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds before gunicorn restarts a silent worker.")
@click.option("--location", default=None, help="Free-form location label shown in health.")
@click.option("--control-socket", type=click.Path(dir_okay=False), default=None,
              envvar="SDHT_CONTROL_SOCKET",
              help="This node's own gunicorn control socket, for gunicornc (gunicorn 25.1 and "
                   "later), or $SDHT_CONTROL_SOCKET [default: none].")
def main(port: int | None, host: str | None, data_dir: str | None, workers: int, threads: int,
         node_id: str | None, timeout: int, location: str | None,
         control_socket: str | None) -> None:
    """Start a storage node on HOST:PORT keeping its records in DATA.

    Or the seed's way: VIEW, REPL_FACTOR, ADDRESS and PORT in the environment.
    """
    seed = seed_start(os.environ, port)
    if seed is not None:
        port, node_id = seed.port, node_id or seed.address
        host = host or parse_node_id(seed.address)[0]
        data_dir = data_dir or os.environ.get("SDHT_DATA_DIR") or f"sdht-data-{port}"
    if port is None or not data_dir:
        raise click.UsageError("Missing option '-p' / '--port' or '--data' (or start the "
                               "seed's way, with VIEW, REPL_FACTOR, ADDRESS and PORT)")
    host = host or "127.0.0.1"
    node_id = node_id or f"{host}:{port}"
    try:
        parse_node_id(node_id)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    check_keys(host, node_id)
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as exc:  # one line for the operator, not a traceback
        raise click.BadParameter(f"cannot create {data_dir!r}: {exc.strerror}",
                                 param_hint="'--data'") from None
    if seed is not None:
        install_seed_ring(os.path.abspath(data_dir), node_id, seed)
    env = dict(os.environ, SDHT_DATA_DIR=os.path.abspath(data_dir), SDHT_NODE_ID=node_id)
    if location:
        env["SDHT_LOCATION"] = location
    env.pop("SDHT_CONTROL_SOCKET", None)
    if control_socket:
        if not has_control_socket():
            raise click.UsageError("this gunicorn has no control socket (gunicorn 25.1 and "
                                   "later have one)")
        env["SDHT_CONTROL_SOCKET"] = os.path.abspath(control_socket)
    # Per-node metrics shared by the workers (storage/metrics.py); stale files from an earlier
    # run would inflate the counters, so the directory starts empty.
    metrics_dir = os.path.join(os.path.abspath(data_dir), "prometheus")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir)
    env.update(PROMETHEUS_MULTIPROC_DIR=metrics_dir, SDHT_STARTED=repr(time.time()))
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}",
            "--workers", str(workers), "--threads", str(threads),
            "--timeout", str(timeout), "--graceful-timeout", "10", "--keep-alive", "30",
            "--name", f"sdht-storage-{port}",
            # The worker class (gthread handing threads whole requests only), the server hooks
            # (the node's background anti-entropy runs in the master), no shared control socket.
            "--config", "python:storage.gunicorn_conf", "storage.app:create_app()"]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def check_keys(host: str, node_id: str) -> None:
    """Refuse to serve another address than loopback without keys; say so when a node runs
    in development mode (docs/security.md)."""
    try:
        keys = Keys.of(os.environ.get("SDHT_NODE_KEY"), os.environ.get("SDHT_OPERATOR_PUBKEY"),
                       node_id)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not keys.development:
        if keys.private is None:
            raise click.UsageError("SDHT_OPERATOR_PUBKEY needs SDHT_NODE_KEY too: the node "
                                   "signs its requests to peers with it (sdht keygen --node)")
        return
    if not is_loopback(host):
        raise click.UsageError(f"a node without keys serves loopback only; to bind {host}, "
                               "set SDHT_OPERATOR_PUBKEY and SDHT_NODE_KEY (sdht keygen)")
    click.echo(f"sdht-storage {node_id}: {DEV_MODE}: serving loopback clients only", err=True)


def install_seed_ring(data_dir: str, node_id: str, seed: SeedStart) -> None:
    """Store the seed-style ring before the node serves (see the module's docstring).

    :raises click.UsageError: on a keyed node, or for a bad view or factor.
    """
    from storage.config import load_config
    from storage.shards import adopt_seed_ring
    if os.environ.get("SDHT_OPERATOR_PUBKEY"):
        raise click.UsageError("VIEW starts development clusters only: a keyed cluster accepts "
                               "only rings the operator signed (start the nodes, then "
                               "`sdht join` them with the operator key)")
    try:
        config = load_config({"DATA_DIR": data_dir})
        held = adopt_seed_ring(config, node_id, seed.view, seed.repl_factor)
    except ConfigError as exc:
        raise click.UsageError(f"VIEW / REPL_FACTOR: {exc}") from None
    click.echo(f"sdht-storage {node_id}: " + (f"ring epoch {held.epoch}, {len(held.members)} "
               f"members" if held else "not in its peers' ring: waiting to be joined "
               "(PUT /kv-store/view-change)"), err=True)


def has_control_socket() -> bool:
    """Whether the installed gunicorn has a control socket (gunicorn 25.1 and later)."""
    from gunicorn.config import Config
    return "control_socket_disable" in Config().settings


if __name__ == "__main__":  # pragma: no cover
    main()
