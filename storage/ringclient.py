"""This node's own ring client: one :class:`sdht.Ring` per worker process, seeded with this node.

The page (:mod:`storage.web`) and the ``/kv-store`` gateway (:mod:`storage.gateway`) run the
ring library server-side, as any client does: they read and write through the key's replicas,
wherever those are, and mint the proof of work for the caller. They share this one client (its
connection pool, its ring view and its memory of failed nodes).
"""
from __future__ import annotations

import os
import threading

from flask import current_app

from sdht.client import Ring
from sdht.errors import NoNodes
from sdht.transport import Transport

from .auth import keys

#: (connect, read) seconds for each request the node's ring client makes to a replica.
RING_TIMEOUT = (1.0, 5.0)
#: Threads fanning this process's ring requests out to replicas.
RING_THREADS = 16

_lock = threading.Lock()


def ring() -> Ring:
    """This process's ring client, seeded with this node (made once per worker process).

    :raises NoNodes: when the node has no ``NODE_ID`` to seed it with.
    """
    with _lock:
        held = current_app.extensions.get("sdht.ring_client")
        if held is None or held[0] != os.getpid():
            node = current_app.config["NODE_ID"]
            if not node:
                raise NoNodes("this node has no NODE_ID, so it cannot reach the ring")
            # It trusts the rings this node trusts, and signs as this member: acceptors take
            # the phases of a name it proposes for a client only from a member.
            transport = Transport(RING_TIMEOUT, keys(), max_parallel=RING_THREADS)
            held = (os.getpid(), Ring([node], transport=transport))
            current_app.extensions["sdht.ring_client"] = held
        return held[1]
