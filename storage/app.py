"""The storage node's application factory.

``create_app(config)`` builds a node (settings: :mod:`storage.config`) from its parts: the
plumbing of :mod:`storage.http` (store, errors, epoch stamp), the data routes of
:mod:`storage.routes`, anti-entropy's :mod:`storage.sync_routes`, :mod:`storage.metrics` and the
page of :mod:`storage.web`. Nothing opens files or sockets at import.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from flask import Flask

from sdht.wire import EPOCH_HEADER  # noqa: F401  (re-exported for tests and tools)

from . import (auth, fastpath, gateway, hint_routes, http, limits, metrics, names_routes,
               routes, sequence_gateway, sequence_routes, sync_routes, web)
from . import fastphases, shards, viewchange
from .config import load_config
from .store import Store


class NodeFlask(Flask):
    """Flask, remembering which views and hooks need wrapping for WSGI: Flask inspects each of
    them on every call (``ensure_sync``: is it a coroutine?), nine times a request here."""

    #: Callables whose answer is remembered (views, hooks and handlers: a few dozen).
    MAX_REMEMBERED = 256

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        remembered = self.__dict__.setdefault("_sdht_sync", {})
        sync = remembered.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if len(remembered) < self.MAX_REMEMBERED:
                remembered[func] = sync
        return sync


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build a storage node application.

    :param config: settings that override ``SDHT_*`` environment variables and defaults.
    :raises ConfigError: when the settings are invalid or the data directory holds another
        sdht data layout.
    """
    app = NodeFlask(__name__)
    settings = load_config(config)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_BYTES"]
    app.config["STARTED"] = time.time()
    # Fail at start, not on the first request, when the data dir is unusable (another layout);
    # an older layout is upgraded here. The environment is closed again: LMDB must not cross
    # the fork into gunicorn's workers, which open it themselves (storage.http.store).
    Store(settings["DATA_DIR"], settings["MAP_SIZE"], settings["SYNC"]).close()
    app.extensions["sdht.store"] = None
    http.init_app(app)
    auth.init_app(app)     # keys: signed rings, signed admin requests, or loopback only
    app.register_blueprint(routes.bp)
    app.register_blueprint(sync_routes.bp)
    app.register_blueprint(names_routes.bp)  # unique names: acceptor, gateway registry
    app.register_blueprint(sequence_routes.bp)   # a sequence's ops in one range read
    app.register_blueprint(sequence_gateway.bp)  # /kv-store/sequences
    app.register_blueprint(hint_routes.bp)   # hinted handoff: hints kept for other replicas
    metrics.init_app(app)  # request figures and /metrics
    web.init_app(app)      # the page at / and its /v1/ui routes
    gateway.init_app(app)  # the /kv-store JSON API (docs/http-api.md) and its access limits
    shards.init_app(app)   # /kv-store/key-count and the seed's shards
    viewchange.init_app(app)  # PUT /kv-store/view-change
    fastphases.init_app(app)  # the acceptor's phases' common case without Flask's dispatch
    fastpath.init_app(app)  # GET/PUT /v1/record's common case without Flask's dispatch
    limits.init_app(app)   # bodies read whole under deadlines and the size cap, answers sliced
    return app
