"""gunicorn settings and server hooks of a storage node
(``gunicorn -c python:storage.gunicorn_conf``); its worker is :class:`storage.worker.Worker`.

``sdht-storage`` passes this module to gunicorn; a hand-run ``gunicorn 'storage.app:create_app()'``
can pass it too, or go without the background sync and the request buffering. gunicorn takes
from it the names of its settings and ignores the names it does not know (gunicorn 20.1 knows no
control socket), so one module serves every gunicorn from 20.1 on.
"""
from __future__ import annotations

import os
from typing import Any

# -- settings -------------------------------------------------------------------------------------

#: The worker (storage/worker.py): gunicorn's threads, handed whole requests only.
worker_class = "storage.worker.Worker"

# gunicorn 25.1 and later open a control socket (for gunicornc: worker counts, reloads, stops),
# by default at one path for every gunicorn of the user, $XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl, so the nodes of a host would take it from each other. A node opens
# none, unless SDHT_CONTROL_SOCKET (sdht-storage --control-socket) names its own path.
control_socket_disable = not os.environ.get("SDHT_CONTROL_SOCKET")
if not control_socket_disable:
    control_socket = os.environ["SDHT_CONTROL_SOCKET"]


# -- server hooks ---------------------------------------------------------------------------------

def when_ready(server: Any) -> None:
    """Start the node's background loops in the master: anti-entropy (storage.syncer) and
    hint replay (storage.handoff)."""
    from storage.syncer import start_from_config
    bind = server.cfg.bind[0] if server.cfg.bind else ""
    if bind.startswith("unix:"):
        server.log.warning("anti-entropy needs a TCP bind; background sync is off")
        return
    syncer = start_from_config(bind)
    if syncer is not None:
        server.log.info("anti-entropy every %ss as %s", syncer.interval, syncer.node_id)
    # Hinted handoff's replayer (storage/handoff.py), in the master like the sync loop.
    from storage import handoff
    from storage.syncer import local_address
    replayer = handoff.start_from_config(local_address(bind))
    if replayer is not None:
        server.log.info("hint replay every %ss", replayer.interval)
