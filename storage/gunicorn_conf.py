"""gunicorn server hooks for a storage node (``gunicorn -c python:storage.gunicorn_conf``).

``sdht-storage`` passes this module to gunicorn; a hand-run ``gunicorn 'storage.app:create_app()'``
can pass it too, or go without the background sync.
"""
from __future__ import annotations

from typing import Any


def when_ready(server: Any) -> None:
    """Start the node's one background anti-entropy loop, in the master (storage.syncer)."""
    from storage.syncer import start_from_config
    bind = server.cfg.bind[0] if server.cfg.bind else ""
    if bind.startswith("unix:"):
        server.log.warning("anti-entropy needs a TCP bind; background sync is off")
        return
    syncer = start_from_config(bind)
    if syncer is not None:
        server.log.info("anti-entropy every %ss as %s", syncer.interval, syncer.node_id)
