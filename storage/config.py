"""Node settings: one documented defaults mapping, then ``SDHT_*`` environment, then arguments."""
from __future__ import annotations

import os
from typing import Any, Mapping

from sdht.errors import ConfigError
from sdht import params as cluster_params
from sdht.wire import MAX_ANSWER_BYTES, MAX_BATCH

from . import hints

#: Every node setting, its default, and (in the comment) its environment variable.
DEFAULT_CONFIG: dict[str, Any] = {
    "DATA_DIR": None,              # SDHT_DATA_DIR: the LMDB directory (required)
    "NODE_ID": None,               # SDHT_NODE_ID: this node's host:port, as the ring names it
    # SDHT_OPERATOR_PUBKEY: the operator's public key(s), comma-separated: rings must be signed
    # by one (several while a key is rotated). Unset: development mode, loopback clients only.
    "OPERATOR_PUBKEY": None,
    "NODE_KEY": None,              # SDHT_NODE_KEY: this node's private key, or its file
    "MAP_SIZE": 4 << 30,           # SDHT_MAP_SIZE: LMDB map size in bytes (4 GiB)
    "SYNC": True,                  # SDHT_SYNC: fsync every commit (durable acknowledgements)
    "MAX_BATCH": MAX_BATCH,        # SDHT_MAX_BATCH: records or keys in one batch request
    "MAX_BODY_BYTES": 64 << 20,    # SDHT_MAX_BODY_BYTES: request body limit (64 MiB)
    "MAX_ANSWER_BYTES": MAX_ANSWER_BYTES,  # SDHT_MAX_ANSWER_BYTES: entries in one answer (64 MiB)
    # SDHT_READ_TIMEOUT: seconds a client has to send a request's headers, and the longest it
    # may go silent while sending a body or reading an answer (storage.limits, docs/security.md)
    "READ_TIMEOUT": 10.0,
    "LOCATION": None,              # SDHT_LOCATION: an optional label shown in health
    "SYNC_INTERVAL": 30.0,         # SDHT_SYNC_INTERVAL: seconds between sync passes (0: off)
    # Hinted handoff (storage/hints.py, storage/handoff.py, docs/operating.md):
    "HINT_MAX_BYTES": hints.DEFAULT_MAX_BYTES,  # SDHT_HINT_MAX_BYTES: hints kept, all targets
    "HINT_MAX_AGE": hints.DEFAULT_MAX_AGE,      # SDHT_HINT_MAX_AGE: seconds one is kept
    "HANDOFF_INTERVAL": 0.25,      # SDHT_HANDOFF_INTERVAL: seconds between replays (0: off)
    "HINT_RATE": 20_000.0,         # SDHT_HINT_RATE: hints replayed per second per target
    # SDHT_TEST_DELAY_MS, SDHT_TEST_ERROR_RATE: milliseconds added to every answer but health,
    # and the fraction answered 503 (test-only faults for the tests of routing by score)
    "TEST_DELAY_MS": 0.0,
    "TEST_ERROR_RATE": 0.0,
    # The /kv-store gateway (storage/gateway.py, docs/http-api.md):
    "GATEWAY_MAX_KEY_LENGTH": 50,  # SDHT_GATEWAY_MAX_KEY_LENGTH: longest key, in characters
    "GATEWAY_WAIT": 2.0,           # SDHT_GATEWAY_WAIT: seconds a read may take (its context)
    # SDHT_GATEWAY_MAX_WAITING: reads per worker process waiting past the first half second
    # for a context at once; more are answered 503 at once (each holds a thread)
    "GATEWAY_MAX_WAITING": 2,
    # SDHT_GATEWAY_WRITE_RATE, SDHT_GATEWAY_WRITE_BURST: writes (and long waits) per second
    # and in a burst per client address and worker process (rate 0: no limit); loopback
    # clients are not limited unless SDHT_GATEWAY_LIMIT_LOOPBACK is set
    "GATEWAY_WRITE_RATE": 20.0,
    "GATEWAY_WRITE_BURST": 100,
    "GATEWAY_LIMIT_LOOPBACK": False,
    # SDHT_GATEWAY_MAX_WORK: gateway writes are refused (403) on a ring whose min_work is above
    # this: the node would mint that work for anyone who asks
    "GATEWAY_MAX_WORK": 8.0,
    # Cluster parameters used until the node stores a ring (which then carries its own):
    # SDHT_DECAY, SDHT_MIN_WORK, SDHT_MAX_SKEW, SDHT_MAX_KEY_BYTES, SDHT_MAX_VALUE_BYTES, ...
    "PARAMS": {},
}

_TYPES = {"MAP_SIZE": int, "SYNC": bool, "MAX_BATCH": int, "MAX_BODY_BYTES": int,
          "MAX_ANSWER_BYTES": int, "READ_TIMEOUT": float, "SYNC_INTERVAL": float,
          "HINT_MAX_BYTES": int, "HINT_MAX_AGE": float, "HANDOFF_INTERVAL": float,
          "HINT_RATE": float, "TEST_DELAY_MS": float, "TEST_ERROR_RATE": float,
          "GATEWAY_MAX_KEY_LENGTH": int, "GATEWAY_WAIT": float, "GATEWAY_MAX_WAITING": int,
          "GATEWAY_WRITE_RATE": float, "GATEWAY_WRITE_BURST": int,
          "GATEWAY_LIMIT_LOOPBACK": bool, "GATEWAY_MAX_WORK": float}
#: The numeric settings checked against inclusive ranges.
_RANGES = {"GATEWAY_MAX_KEY_LENGTH": (1, 65536), "GATEWAY_WAIT": (0.1, 60.0),
                   "GATEWAY_MAX_WAITING": (0, 1024), "GATEWAY_WRITE_RATE": (0.0, 1e6),
                   "GATEWAY_WRITE_BURST": (1, 10**6), "GATEWAY_MAX_WORK": (0.0, 60.0),
                   # hinted handoff and the test delay: same check, same message
                   "HINT_MAX_BYTES": (0, 1 << 40), "HINT_MAX_AGE": (0.0, 30 * 86400.0),
                   "HANDOFF_INTERVAL": (0.0, 3600.0), "HINT_RATE": (1.0, 1e7),
                   "TEST_DELAY_MS": (0.0, 60_000.0), "TEST_ERROR_RATE": (0.0, 1.0)}


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def load_config(config: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Merge defaults, ``SDHT_*`` environment variables and ``config``, in that order.

    :raises ConfigError: when a value does not parse or the data directory is missing.
    """
    environ = os.environ if environ is None else environ
    merged = dict(DEFAULT_CONFIG)
    params: dict[str, Any] = {}
    for name in DEFAULT_CONFIG:
        raw = environ.get(f"SDHT_{name}")
        if raw is not None and name != "PARAMS":
            merged[name] = _parse(f"SDHT_{name}", raw, _TYPES.get(name, str))
    for name in cluster_params.TABLE:
        raw = environ.get(f"SDHT_{name.upper()}")
        if raw is not None:
            params[name] = cluster_params.parse(name, raw, f"SDHT_{name.upper()}")
    explicit = dict(config or {})
    params.update(explicit.pop("PARAMS", {}) or {})
    merged.update(explicit)
    merged["PARAMS"] = params
    if not 0 < merged["READ_TIMEOUT"] <= 3600:  # 0 would make client sockets non-blocking
        raise ConfigError(f"READ_TIMEOUT={merged['READ_TIMEOUT']!r} must be in (0, 3600] seconds")
    for name, (low, high) in _RANGES.items():
        if not low <= merged[name] <= high:
            raise ConfigError(f"{name}={merged[name]!r} must be in [{low}, {high}]")
    if not merged["DATA_DIR"]:
        raise ConfigError("no data directory: set SDHT_DATA_DIR or pass DATA_DIR")
    # The same checks a ring's parameters get: SDHT_DECAY=inf, say, would give NaN scores and
    # break the total order that replicas rely on.
    cluster_params.with_defaults(params)
    return merged
