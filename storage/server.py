"""``sdht-storage``: run one storage node under gunicorn.

The command replaces itself with gunicorn (same PID, so a supervisor or test can stop it by PID)
running ``storage.app:create_app()`` with settings passed through ``SDHT_*`` variables. gunicorn's
``preload_app`` stays off, so each worker imports the app and opens LMDB after the fork. The
worker class, the server hooks and the control socket come from :mod:`storage.gunicorn_conf`.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

import click

from sdht.errors import ConfigError
from sdht.ring import parse_node_id
from sdht.trust import DEV_MODE, Keys, is_loopback


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--port", type=click.IntRange(1, 65535), required=True, help="TCP port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="LMDB data directory (created if missing).")
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
def main(port: int, host: str, data_dir: str, workers: int, threads: int, node_id: str | None,
         timeout: int, location: str | None, control_socket: str | None) -> None:
    """Start a storage node on HOST:PORT keeping its records in DATA."""
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


def has_control_socket() -> bool:
    """Whether the installed gunicorn has a control socket (gunicorn 25.1 and later)."""
    from gunicorn.config import Config
    return "control_socket_disable" in Config().settings


if __name__ == "__main__":  # pragma: no cover
    main()
