"""``PUT /kv-store/view-change``: the seed's view change, as ring membership changes
(docs/http-api.md, "View change").

The node runs :func:`sdht.reshard.view_change` with its own ring client: the new members join,
the parameters become replica groups of ``repl-factor``, the members not in the view leave, and
data moves at every step. It answers once the ring is exactly the view. Any node serves it, one
in no ring too (it finds the ring through the view's members; with no ring anywhere, the view
becomes the first one).

**Authority.** A view change rewrites the ring, which only the operator may sign. A node in
development mode (no keys: loopback clients only) publishes unsigned rings, so a demo cluster
just works. A keyed node holds no operator key and cannot sign a ring: it answers 403, and the
operator changes the view with its own key (``sdht join`` / ``sdht remove``, or
``sdht.reshard.view_change`` from Python).
"""
from __future__ import annotations

import threading
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify

from sdht.errors import ConfigError, RingBusy, SDHTError
from sdht.reshard import check_view, view_change
from sdht.session import encode
from sdht.wire import CONTEXT_FIELD

from .auth import keys
from .gateway import UNAVAILABLE, fail, parse_request
from .ringclient import ring
from .shards import shard_info, shards

bp = Blueprint("kv_view_change", __name__, url_prefix="/kv-store")
BAD_VIEW = "Failed to parse request body"   # the seed's answer to an empty view or factor
#: One view change at a time per worker process; others are refused at once (409).
_running = threading.Lock()


def init_app(app: Flask) -> None:
    """Register the view-change route on ``app``."""
    app.register_blueprint(bp)


def parse_view(body: dict[str, Any]) -> tuple[list[str], Any]:
    """Return the request's view (a JSON list, or ``"a,b,c"`` as the seed's ``VIEW``) and its
    ``repl-factor`` (unchecked: :func:`sdht.reshard.check_view` checks both)."""
    raw = body.get("view")
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        raise ConfigError("view must be a list of HOST:PORT or a comma-separated string")
    return raw, body.get("repl-factor")


@bp.put("/view-change")
def change_view() -> tuple[Response, int]:
    """Make the ring exactly the view: 200 ``View change successful`` with the new shards."""
    ctx = parse_request()
    try:
        view, factor = parse_view(g.body)
        check_view(view, factor)
    except ConfigError as exc:
        fail(400, BAD_VIEW, ctx, detail=str(exc))
    if not keys().development:
        fail(403, "View change needs the operator", ctx,
             detail="a keyed node cannot sign rings: change the view with the operator key "
                    "(sdht join / sdht remove)")
    if not _running.acquire(blocking=False):
        fail(409, "A view change is in progress", ctx)
    try:
        report = view_change(ring().handle, view, factor)
    except RingBusy as exc:
        fail(409, "A view change is in progress", ctx, detail=str(exc))
    except SDHTError as exc:
        fail(503, UNAVAILABLE, ctx, detail=f"{exc} (the steps done stay done: send the same "
                                           f"view change again to finish it)")
    finally:
        _running.release()
    final = ring().handle.current()
    # Count afresh: this worker's count may be from before the data moved.
    current_app.extensions["sdht.key_count"] = (float("-inf"), 0)
    return jsonify({"message": "View change successful",
                    "shards": [shard_info(final, i) for i in range(1, len(shards(final)) + 1)],
                    "epoch": report.epoch, "joined": report.joined, "removed": report.removed,
                    CONTEXT_FIELD: encode(ctx)}), 200
