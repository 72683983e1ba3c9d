"""Cluster parameters: one table of every parameter, its default, its range and its meaning.

A ring carries its parameters (:class:`sdht.ring.RingView`), so every node and client apply the
same ones. The node (:mod:`storage.config`), the client (:class:`sdht.Ring`) and the command line
all check parameters through :func:`check` here, and no limit below is written anywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError, InvalidRecord

#: The most a cluster may set as min_work or max_work: e**60 hashes is already far beyond any
#: machine, so a larger figure is a mistake.
WORK_CEILING = 60.0


@dataclass(frozen=True)
class Param:
    """One cluster parameter: its default, inclusive range ``[low, high]`` and meaning."""

    name: str
    default: int | float
    low: int | float
    high: int | float
    doc: str

    @property
    def type(self) -> type:
        """``int`` or ``float``: how the parameter is parsed from text."""
        return type(self.default)


TABLE: dict[str, Param] = {p.name: p for p in (
    Param("decay", 0.0001, 0.0, 1.0,
          "logwork per second a record's priority grows with its time: one unit of rent "
          "holds ~2.8 hours"),
    Param("min_work", 3.0, 0.0, WORK_CEILING,
          "least work (natural-log units) every entry must show: ~20 hashes, ~10 us to mint"),
    Param("max_work", 12.0, 0.0, WORK_CEILING,
          "most work an entry may declare: rent holds a key at most (max_work - min_work) / "
          "decay seconds (9 / 0.0001 s = 25 h by default; e**12 hashes, ~0.2 s to mint)"),
    Param("max_skew", 2.0, 0.0, 86400.0,
          "seconds a timestamp may run ahead of a node's clock"),
    Param("n", 3, 1, 16, "replicas per key"),
    Param("r", 2, 1, 16, "replies a read waits for"),
    Param("w", 2, 1, 16, "acknowledgements a write waits for"),
    Param("tokens", 128, 1, 4096, "virtual nodes per member, for balance"),
    Param("groups", 0, 0, 1,
          "placement: 0, each member owns its tokens; 1, replica groups of n members own "
          "the ring's slots and a key's replicas are its group (the seed's shards, "
          "sdht/groups.py)"),
    Param("max_key_bytes", 1024, 1, 65536, "longest key, in UTF-8 bytes"),
    Param("max_value_bytes", 1 << 20, 1, 1 << 30, "largest value, msgpack-encoded (1 MiB)"),
    Param("tombstone_grace", 7 * 86400.0, 0.0, 10 * 365 * 86400.0,
          "seconds a tombstone is kept before it may be purged (docs/anti-entropy.md)"),
    # Routing by score, s = 1/(i*delay + j*response_time + k*distance + l*error_rate)
    # (sdht/health.py, docs/operating.md): a client may override each.
    Param("score_delay", 1.0, 0.0, 1e6, "i: weight of a replica's delay (seconds behind)"),
    Param("score_response", 1.0, 0.0, 1e6, "j: weight of its response time (seconds)"),
    Param("score_distance", 0.01, 0.0, 1e6,
          "k: weight of its distance in 1000 km (0.01: 1000 km count as 10 ms)"),
    Param("score_errors", 1.0, 0.0, 1e6,
          "l: weight of its error rate (0..1; 1: a 10% rate counts as 100 ms)"),
    Param("score_badness", 0.5, 0.0, 1e6,
          "b: keep the ring's order unless a replica is more than b (50%) worse than the best"),
)}

#: Every parameter's default, as a ring created without overrides carries them.
DEFAULTS: dict[str, Any] = {name: p.default for name, p in TABLE.items()}
#: Parameters added after rings were first signed: a ring's signed body leaves each out while
#: it holds its default, so a ring signed before it existed keeps the body its signature covers.
LATE = frozenset({"groups", "score_delay", "score_response", "score_distance", "score_errors",
                  "score_badness"})


def check(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a full set of parameters: every one present, of a number type and in range, and
    ``r, w <= n``. Returns them as a new dict.

    :raises ConfigError: naming the first bad parameter.
    """
    for name, p in TABLE.items():
        value = params.get(name)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not p.low <= value <= p.high):
            raise ConfigError(f"cluster parameter {name}={value!r} must be in "
                              f"[{p.low}, {p.high}]: {p.doc}")
    unknown = sorted(set(params) - set(TABLE))
    if unknown:
        raise ConfigError(f"unknown cluster parameter(s): {', '.join(map(str, unknown))}")
    if params["r"] > params["n"] or params["w"] > params["n"]:
        raise ConfigError("r and w must not exceed n")
    if params["max_work"] < params["min_work"]:
        raise ConfigError("max_work must not be below min_work")
    return dict(params)


def with_defaults(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the defaults updated by ``overrides``, checked (see :func:`check`)."""
    return check({**DEFAULTS, **(overrides or {})})


def parse(name: str, text: str, label: str | None = None) -> int | float:
    """Parse one parameter from text (an environment variable, a command-line option); errors
    name it as ``label`` (the variable or option), else by its own name.

    :raises ConfigError: for an unknown name or text that is not a number of its type.
    """
    p = TABLE.get(name)
    if p is None:
        raise ConfigError(f"unknown cluster parameter {name!r}")
    try:
        return p.type(text)
    except ValueError:
        raise ConfigError(f"{label or name}={text!r} is not a valid {p.type.__name__}") from None


def check_work(w: float, params: Mapping[str, Any]) -> float:
    """Check work a caller asks to mint: between the ring's ``min_work`` and ``max_work``.
    Returns it as a float.

    :raises InvalidRecord: when it is outside that range.
    """
    w = float(w)
    if not params["min_work"] <= w <= params["max_work"]:
        raise InvalidRecord(f"work {w} must be between min_work ({params['min_work']}) and "
                            f"max_work ({params['max_work']})")
    return w
