"""The cluster key. When a node has one (``SDHT_CLUSTER_KEY``), the routes that change what it
holds without a proof of work need it: admin routes (ring replace, range delete, sync pass) and
the page's writes, which the node mints on the caller's behalf."""
from __future__ import annotations

import hmac

from flask import abort, current_app, request

from sdht.wire import KEY_HEADER


def require_cluster_key() -> None:
    """Answer 403 unless the request carries the configured cluster key (constant-time compare);
    do nothing when the node has no key."""
    expected = current_app.config["CLUSTER_KEY"]
    if expected:
        given = request.headers.get(KEY_HEADER, "")
        if not hmac.compare_digest(given.encode(), str(expected).encode()):
            abort(403, description=f"this route needs the cluster key ({KEY_HEADER})")
