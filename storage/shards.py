"""The seed's shards on the ring: ``/kv-store/key-count``, ``/kv-store/shards[/<id>]``, and the
ring a seed-style start builds from ``VIEW`` and ``REPL_FACTOR`` (docs/http-api.md, "Shards").

On a ring of replica groups (:mod:`sdht.groups`) a shard is a group: shard ids are 1, 2, ...
in the groups' order, every node is in one shard and holds exactly its keys. On a ring built
with ``join`` (per-node tokens) every member is a shard of its own, holding the keys it
replicates: the counts then sum to ``n`` times the keys.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import requests
from flask import Blueprint, Flask, Response, current_app, jsonify

from sdht import params as cluster_params
from sdht.errors import ConfigError
from sdht.groups import group_params
from sdht.reshard import check_view
from sdht.ring import GroupPlacement, Member, RingView
from sdht.session import encode
from sdht.wire import CONTEXT_FIELD

from .gateway import UNAVAILABLE, fail, live_keys, parse_request
from .http import ring_view
from .store import Store

bp = Blueprint("kv_shards", __name__, url_prefix="/kv-store")
#: (connect, read) seconds to ask another shard's replica for its key count.
COUNT_TIMEOUT = (1.0, 3.0)
#: The first epoch: the ring a seed-style start builds (sdht-storage with VIEW).
SEED_EPOCH = 1
#: (connect, read) seconds a starting node gives each peer of its view to show its ring.
PEER_TIMEOUT = (0.5, 2.0)


def init_app(app: Flask) -> None:
    """Register the shard routes on ``app``."""
    app.register_blueprint(bp)


def seed_ring(view: Iterable[str], repl_factor: int,
              base: Mapping[str, Any] | None = None) -> RingView:
    """Return the ring of a seed-style start: epoch 1, the view's members (sorted), replica
    groups of ``repl_factor``. A pure function of its arguments, so every node of the view
    builds the same ring without asking the others.

    :raises ConfigError: for a bad view or factor (:func:`sdht.reshard.check_view`).
    """
    members = check_view(view, repl_factor)
    params = group_params(base or RingView().params, len(members), repl_factor)
    return RingView(SEED_EPOCH, tuple(Member(m) for m in sorted(members)), params)


def adopt_seed_ring(config: Mapping[str, Any], node_id: str, view: Iterable[str],
                    repl_factor: int) -> RingView | None:
    """Store the ring a seed-style start of ``node_id`` serves, and return it (None: the node
    waits to be joined). A ring the node already holds wins. Else, when a peer of the view
    holds another ring (a view change moved on, or this node was started for one), the newest
    such ring if the node is a member of it, and none if not. Else the seed ring
    (:func:`seed_ring`), when the node is in the view.

    :raises ConfigError: for a bad view or factor, or an unusable data directory.
    """
    seed = seed_ring(view, repl_factor, {**cluster_params.DEFAULTS, **config["PARAMS"]})
    store = Store(config["DATA_DIR"], config["MAP_SIZE"], config["SYNC"])
    try:
        held = store.ring()
        if held is not None:
            return held
        newest = None
        for peer in (m.id for m in seed.members if m.id != node_id):
            ring = _ring_of(peer)
            if ring is not None and ring != seed and (newest is None
                                                      or ring.epoch > newest.epoch):
                newest = ring
        chosen = seed if newest is None else newest
        if chosen.member(node_id) is None:
            return None
        store.replace_ring(chosen)
        return chosen
    finally:
        store.close()


def _ring_of(peer: str) -> RingView | None:
    """The ring ``peer`` holds, or None when it has none or does not answer in time."""
    try:
        answer = requests.get(f"http://{peer}/v1/ring", timeout=PEER_TIMEOUT)
        return RingView.from_json(answer.json()) if answer.status_code == 200 else None
    except (requests.RequestException, ValueError, ConfigError):
        return None


def shards(view: RingView | None) -> list[tuple[str, ...]]:
    """Return the ring's shards, in shard-id order: its replica groups, or one member each."""
    if view is None:
        return []
    placement = view.readers
    if isinstance(placement, GroupPlacement):
        return list(placement.groups)
    return [(m,) for m in placement.node_ids]


def shard_id(view: RingView | None, node: str) -> int | None:
    """Return the id of the shard ``node`` belongs to (None when it is in none)."""
    return next((i + 1 for i, g in enumerate(shards(view)) if node in g), None)


def shard_info(view: RingView | None, sid: int) -> dict[str, Any] | None:
    """Return ``{"shard-id", "key-count", "replicas"}`` of shard ``sid``, or None when the ring
    has no such shard. The count is this node's when it is a replica, else the first replica
    that answers.

    :raises ApiError: 503 when no replica of the shard answers.
    """
    groups = shards(view)
    if not 1 <= sid <= len(groups):
        return None
    replicas = list(groups[sid - 1])
    return {"shard-id": sid, "key-count": _count(replicas), "replicas": replicas}


# -- routes ---------------------------------------------------------------------------------------

@bp.get("/key-count")
def key_count() -> tuple[Response, int]:
    """How many live keys (not deleted) this node holds, and its shard's id."""
    ctx = parse_request()
    return jsonify({"message": "Key count retrieved successfully", "key-count": live_keys(),
                    "shard-id": shard_id(ring_view(), current_app.config["NODE_ID"]),
                    CONTEXT_FIELD: encode(ctx)}), 200


@bp.get("/shards")
def list_shards() -> tuple[Response, int]:
    """The ids of the ring's shards."""
    ctx = parse_request()
    return jsonify({"message": "Shard membership retrieved successfully",
                    "shards": list(range(1, len(shards(ring_view())) + 1)),
                    CONTEXT_FIELD: encode(ctx)}), 200


@bp.get("/shards/<sid>")
def get_shard(sid: str) -> tuple[Response, int]:
    """One shard: its id, key count and replicas; 404 for an id the ring does not have."""
    ctx = parse_request()
    info = None
    if sid.isascii() and sid.isdigit() and len(sid) <= 6:
        info = shard_info(ring_view(), int(sid))
    if info is None:
        fail(404, "Shard does not exist", ctx, detail=f"shard ids are 1 to "
             f"{len(shards(ring_view()))}")
    return jsonify({"message": "Shard information retrieved successfully", **info,
                    CONTEXT_FIELD: encode(ctx)}), 200


def _count(replicas: list[str]) -> int:
    """The live keys of a shard: this node's count when it is one of ``replicas``, else the
    first replica's that answers (the seed forwarded to the shard's first replica)."""
    if current_app.config["NODE_ID"] in replicas:
        return live_keys()
    errors = []
    for node in replicas:
        try:
            answer = requests.get(f"http://{node}/kv-store/key-count", timeout=COUNT_TIMEOUT)
            count = answer.json().get("key-count")
            if answer.status_code == 200 and type(count) is int:
                return count
            errors.append(f"{node}: status {answer.status_code}")
        except (requests.RequestException, ValueError, AttributeError) as exc:
            errors.append(f"{node}: {exc.__class__.__name__}")
    fail(503, UNAVAILABLE, parse_request(), detail="no replica of the shard answered: "
         + "; ".join(errors[:4]))
