"""Who may do what on a node (docs/security.md).

A node started with the operator's public key (``SDHT_OPERATOR_PUBKEY``) and its own derived
key (``SDHT_NODE_KEY``) accepts only rings the operator signed, and serves the routes that dump,
delete or trigger work (range scans and deletes, tree reads, entry reads by reference, the sync
report) only to requests signed by the operator or, where peers need them, by a member listed in
its ring. The page's writes need the node's page token. Data reads and writes need no key: the
proof of work prices writes.

A node without keys is in development mode ("development mode, no key"): it accepts unsigned
rings and serves only loopback clients, so a development node cannot be reached, or wiped, from
another machine.
"""
from __future__ import annotations

import hmac
from typing import Any, Mapping

from flask import Flask, current_app, request

from sdht.errors import ConfigError, Unauthorized, UntrustedRing
from sdht.ring import RingView
from sdht.trust import DEV_MODE, Keys, is_loopback, page_token
from sdht.wire import PAGE_TOKEN_HEADER

from .http import ApiError, ring_view


def init_app(app: Flask) -> Keys:
    """Build the node's keys from its settings; in development mode, refuse every request
    that does not come from loopback.

    :raises ConfigError: for a malformed key, or an operator key without a node key.
    """
    cfg = app.config
    keys = node_keys(cfg)
    if not keys.development and keys.private is None:
        raise ConfigError("SDHT_OPERATOR_PUBKEY needs SDHT_NODE_KEY too: the node signs its "
                          "requests to peers with it (sdht keygen --node HOST:PORT)")
    app.extensions["sdht.keys"] = keys
    if keys.development:
        app.before_request(_loopback_only)
    return keys


def node_keys(cfg: Mapping[str, Any]) -> Keys:
    """Return a node's keys from its settings (``OPERATOR_PUBKEY``, ``NODE_KEY``)."""
    return Keys.of(cfg["NODE_KEY"], cfg["OPERATOR_PUBKEY"], cfg["NODE_ID"] or "")


def keys() -> Keys:
    """Return the keys of the node serving this request."""
    return current_app.extensions["sdht.keys"]


def mode() -> str:
    """Return the node's trust mode, as its health and page show it."""
    return DEV_MODE if keys().development else "signed rings"


def serves(remote_addr: str) -> bool:
    """Whether this node serves a client at ``remote_addr`` at all (in development mode:
    loopback clients only)."""
    return not keys().development or is_loopback(remote_addr)


def _loopback_only() -> None:
    if not serves(request.remote_addr or ""):
        raise ApiError(403, "development_mode", f"this node is in {DEV_MODE}: it serves "
                       "loopback clients only (start it with SDHT_OPERATOR_PUBKEY and "
                       "SDHT_NODE_KEY to serve others)")


def require_authority(members: bool = True) -> str:
    """Answer 401/403 unless the request is signed by the operator (or, with ``members``, by
    a member of the ring this node holds). Returns who signed; in development mode, where
    only loopback is served, returns ``"development"``."""
    if keys().development:
        return "development"
    target = request.path + (f"?{request.query_string.decode('latin-1')}"
                             if request.query_string else "")
    return authority(request.method, target, request.get_data(cache=True), request.headers,
                     members)


def authority(method: str, target: str, body: bytes, headers: Mapping[str, str],
              members: bool = True) -> str:
    """:func:`require_authority` of a request given by its parts (``target``: its path and
    query), for a caller without Flask's request (:mod:`storage.fastphases`).

    :raises ApiError: 401 when it is not signed so."""
    node_keys = keys()
    if node_keys.development:
        return "development"
    view = ring_view()
    member_keys = {m.id: m.key for m in view.members if m.key} if view else {}
    try:
        return node_keys.check_request(method, target, body, headers, member_keys, members)
    except Unauthorized as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None


def check_ring(view: RingView) -> None:
    """Answer 403 unless ``view`` is signed by the operator (any ring in development mode)."""
    try:
        keys().check_ring(view.body(), view.signature)
    except UntrustedRing as exc:
        raise ApiError(403, "untrusted_ring", str(exc)) from None


def require_page_token() -> None:
    """Answer 401 unless the request carries this node's page token (``sdht keygen --page``);
    in development mode the page writes freely (loopback only)."""
    node_keys = keys()
    if node_keys.development:
        return
    given = request.headers.get(PAGE_TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), page_token(node_keys.private).encode()):
        raise ApiError(401, "unauthorized", f"the page writes only with this node's page "
                       f"token ({PAGE_TOKEN_HEADER})")
