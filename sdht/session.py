"""Causal contexts: what a session has written and read, as one bounded JSON object. Pure: no I/O.

A session (:class:`sdht.sessions.Session`, the node's ``/kv-store`` gateway) carries a context
through its requests. For each key it has written or read, the context holds the newest version
of it the session has seen. A key's versions are totally ordered (:mod:`sdht.kinds.register`:
higher score, then smaller digest), so one version per key is all a session needs
(docs/http-api.md, "The causal context"):

* a read must not return a version below the context's version of that key (read your writes,
  monotonic reads);
* a write is minted later than every version the context has seen, and above the context's
  version of its key (monotonic writes, writes follow reads).

Its JSON form is ``{"v": 1, "t": T, "keys": {key: [score, t, digest], ...}}``, or ``{}`` when
empty. ``score`` is the version's score, ``t`` its time (microseconds), ``digest`` the hex of
the first :data:`~sdht.wire.CONTEXT_DIGEST_BYTES` bytes of its digest. ``T`` is the latest time
the session has seen, dropped keys included.

It is bounded: at most :data:`~sdht.wire.CONTEXT_MAX_KEYS` keys, and each key costs its JSON
length plus :data:`ENTRY_OVERHEAD` bytes, at most :data:`~sdht.wire.CONTEXT_MAX_BYTES` in all.
Past either bound the *oldest* versions are dropped: the lowest in the register's order (at
the ring's decay, the lowest score is the oldest write of the same work), until it fits. A
session loses its guarantees for the keys dropped, and only for them; ``T`` keeps its writes
later than everything it saw. :func:`merge` is commutative, associative and idempotent, bound
included (tests/test_session.py checks it).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping, NamedTuple

from .errors import InvalidContext
from .kinds.common import MAX_TIME_US
from .kinds.register import Record, outranks
from .wire import CONTEXT_DIGEST_BYTES, CONTEXT_MAX_BYTES, CONTEXT_MAX_KEYS

#: The format's version, the ``v`` of its JSON form.
FORMAT = 1
#: Bytes an entry may take besides its key's JSON: ``:[score,t,"digest"],`` with the longest
#: score (24 characters) and time (19 digits) there can be. The cost of a key depends on the
#: key alone, so the bound keeps the same keys whatever versions they hold.
ENTRY_OVERHEAD = 96
#: Seconds a context's times may run ahead of this clock beyond the ring's ``max_skew``: the
#: nodes that accepted them have clocks of their own.
CLOCK_GRACE = 1.0
_DIGEST = re.compile(f"[0-9a-f]{{{2 * CONTEXT_DIGEST_BYTES}}}")
#: Maps a digest's hex to one whose order is reversed (the smaller digest ranks higher).
_FLIP = str.maketrans("0123456789abcdef", "fedcba9876543210")


class Version(NamedTuple):
    """One version of a key as a context holds it."""

    score: float
    t: int
    digest: str

    def rank(self) -> tuple[float, str, int]:
        """Its place in the register's order (higher ranks later); ``t`` only breaks the tie
        of a forged pair, so the order is total on every tuple."""
        return self.score, self.digest.translate(_FLIP), self.t

    def covers(self, other: "Version") -> bool:
        """Whether this version is ``other`` or one the register's order puts above it."""
        return not outranks(other.score, other.digest, self.score, self.digest)


def version_of(rec: Record, decay: float) -> Version:
    """The version of ``rec`` a context holds, at the ring's ``decay``."""
    return Version(rec.score(decay), rec.t, rec.digest[:CONTEXT_DIGEST_BYTES].hex())


def satisfies(rec: Record | None, floor: Version | None, decay: float) -> bool:
    """Whether ``rec`` (None: nothing found) may be returned to a session whose context holds
    ``floor`` for its key: it is that version or a later one."""
    if floor is None:
        return True
    return rec is not None and version_of(rec, decay).covers(floor)


class Context:
    """An immutable causal context: the newest version seen per key, and the latest time."""

    __slots__ = ("keys", "t", "size")

    def __init__(self, keys: Mapping[str, Version] | None = None, t: int = 0) -> None:
        self.keys: dict[str, Version] = dict(keys or {})
        self.t = max([t, *(v.t for v in self.keys.values())])
        #: What its keys count for against the byte bound (:func:`cost`).
        self.size = sum(map(cost, self.keys))

    @classmethod
    def _of(cls, keys: dict[str, Version], t: int, size: int) -> "Context":
        # Merges keep t and size as they go: a session's context is read on every request,
        # and recounting a thousand keys each time would cost milliseconds.
        ctx = cls.__new__(cls)
        ctx.keys, ctx.t, ctx.size = keys, t, size
        return ctx

    def floor(self, key: str) -> Version | None:
        """The version of ``key`` a read must reach, or None."""
        return self.keys.get(key)

    def __len__(self) -> int:
        return len(self.keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and (self.keys, self.t) == (other.keys, other.t)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Context {len(self.keys)} keys t={self.t}>"


def cost(key: str) -> int:
    """Bytes ``key`` counts for against :data:`~sdht.wire.CONTEXT_MAX_BYTES`."""
    if key.isascii() and key.isprintable() and '"' not in key and "\\" not in key:
        return len(key) + 2 + ENTRY_OVERHEAD   # its JSON: itself in quotes
    return len(json.dumps(key)) + ENTRY_OVERHEAD


EMPTY = Context()


def bound(keys: Mapping[str, Version], t: int = 0, max_keys: int = CONTEXT_MAX_KEYS,
          max_bytes: int = CONTEXT_MAX_BYTES) -> Context:
    """The context of ``keys`` within the bounds: the highest-ranked versions, as many as fit
    (the first that does not fit ends it, so the kept set never depends on the order of
    arrival). ``t`` becomes the latest time of all, the dropped ones included."""
    t = max([t, *(v.t for v in keys.values())])
    return _bounded(dict(keys), t, sum(map(cost, keys)), max_keys, max_bytes)


def _bounded(keys: dict[str, Version], t: int, size: int, max_keys: int,
             max_bytes: int) -> Context:
    """:func:`bound` of ``keys`` (which it may change), their ``size`` known. Dropping the
    lowest-ranked until the rest fits keeps the same prefix as the sort: one scan per key
    dropped when a few are (a new key in a full context), a sort past that."""
    for _ in range(4):
        if len(keys) <= max_keys and size <= max_bytes:
            return Context._of(keys, t, size)
        floor = min(v.score for v in keys.values())   # the full rank only among the lowest
        lowest = min((k for k, v in keys.items() if v.score == floor),
                     key=lambda k: (keys[k].rank(), k))
        size -= cost(lowest)
        del keys[lowest]
    kept: dict[str, Version] = {}
    room = max_bytes
    for key, v in sorted(keys.items(), key=lambda kv: (kv[1].rank(), kv[0]), reverse=True):
        room -= cost(key)
        if len(kept) == max_keys or room < 0:
            break
        kept[key] = v
    return Context._of(kept, t, sum(map(cost, kept)))


def merge(a: Context, b: Context, max_keys: int = CONTEXT_MAX_KEYS,
          max_bytes: int = CONTEXT_MAX_BYTES) -> Context:
    """The context that has seen what ``a`` and ``b`` have: the later version of every key,
    the latest time, within the bounds."""
    if not a.keys and a.t <= b.t and len(b.keys) <= max_keys and b.size <= max_bytes:
        return b   # a session's first merge: the context a request brought
    keys, size = a.keys, a.size
    for key, v in b.keys.items():
        held = keys.get(key)
        if held is None or v.rank() > held.rank():
            if keys is a.keys:
                keys = dict(a.keys)   # copied on the first change only
            keys[key] = v
            size += cost(key) if held is None else 0
    t = max(a.t, b.t)
    if keys is a.keys and t == a.t and len(keys) <= max_keys and size <= max_bytes:
        return a   # nothing new: the common case of reading a version already seen
    return _bounded(dict(keys) if keys is a.keys else keys, t, size, max_keys, max_bytes)


def observe(ctx: Context, key: str, version: Version) -> Context:
    """``ctx`` after the session wrote or read ``version`` of ``key``."""
    return merge(ctx, Context._of({key: version}, version.t, cost(key)))


def merge_all(contexts: Iterable[Context]) -> Context:
    """The merge of every context given (:data:`EMPTY` for none)."""
    out = EMPTY
    for ctx in contexts:
        out = merge(out, ctx)
    return out


# -- the JSON form --------------------------------------------------------------------------------

def encode(ctx: Context) -> dict[str, Any]:
    """The JSON-ready form of ``ctx`` (``{}`` when it is empty)."""
    if not ctx.keys and not ctx.t:
        return {}
    return {"v": FORMAT, "t": ctx.t,
            "keys": {key: [v.score, v.t, v.digest] for key, v in sorted(ctx.keys.items())}}


def dumps(ctx: Context) -> str:
    """``ctx`` as compact JSON text."""
    return json.dumps(encode(ctx), separators=(",", ":"), sort_keys=True)


def decode(obj: Any, max_keys: int = CONTEXT_MAX_KEYS,
           max_bytes: int = CONTEXT_MAX_BYTES) -> Context:
    """The context of a decoded JSON form; ``None``, ``""`` and ``{}`` are the empty one.

    Everything is checked before use: the shape, every type and range, and the bounds (a
    context larger than they allow was not made by sdht, and is refused rather than trimmed).

    :raises InvalidContext: naming what is wrong.
    """
    if obj is None or obj == "" or obj == {}:
        return EMPTY
    if not isinstance(obj, dict) or set(obj) != {"v", "t", "keys"}:
        raise InvalidContext('a causal context is {} or {"v": 1, "t": ..., "keys": {...}}, '
                             "as a response carried it")
    if type(obj["v"]) is not int or obj["v"] != FORMAT:
        raise InvalidContext(f"unknown causal-context format {str(obj['v'])[:20]!r}")
    t, keys = _time(obj["t"]), obj["keys"]
    if not isinstance(keys, dict):
        raise InvalidContext("the context's keys must be an object")
    if len(keys) > max_keys:
        raise InvalidContext(f"the context holds {len(keys)} keys; at most {max_keys}")
    out, room = {}, max_bytes
    for key, item in keys.items():
        room -= cost(key)   # a JSON object's keys are strings: cost() never fails
        if room < 0:
            raise InvalidContext(f"the context is larger than {max_bytes} bytes")
        out[_key(key)] = _version(item)
    return Context._of(out, max([t, *(v.t for v in out.values())]), max_bytes - room)


def loads(text: str | bytes) -> Context:
    """The context of JSON text (:func:`dumps`'s form).

    :raises InvalidContext: when it is not JSON or not a valid context.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidContext("the causal context is not valid JSON") from None
    return decode(obj)


def check_plausible(ctx: Context, params: Mapping[str, Any], now: int) -> None:
    """Refuse versions no node could have accepted: times past ``max_skew`` (and
    :data:`CLOCK_GRACE`) ahead of ``now``, scores above ``max_work`` at their time. Such a
    context would make every read wait out its deadline, or every write fail.

    :raises InvalidContext: naming the first such key.
    """
    ahead = now + int((params["max_skew"] + CLOCK_GRACE) * 1e6)
    if ctx.t > ahead:
        raise InvalidContext("the context's time is ahead of this clock by more than max_skew")
    for key, v in ctx.keys.items():
        if v.score > params["max_work"] + params["decay"] * v.t / 1e6 + 1e-6:
            raise InvalidContext(f"the context's version of {key[:100]!r} shows more work "
                                 "than the ring allows")


def _time(t: Any) -> int:
    # An integral float is accepted: a client that re-encodes numbers as doubles (Go, JS)
    # keeps a microsecond time exact up to 2**53, past the year 2255.
    if type(t) is float and t.is_integer():
        t = int(t)
    if type(t) is not int or not 0 <= t <= MAX_TIME_US:
        raise InvalidContext("a context's times are integer microseconds since the epoch")
    return t


def _key(key: str) -> str:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidContext("a context's keys must be valid Unicode") from None
    if not key:
        raise InvalidContext("a context's keys must not be empty")
    return key


def _version(item: Any) -> Version:
    if not isinstance(item, list) or len(item) != 3:
        raise InvalidContext("a context's version is [score, t, digest]")
    score, t, digest = item
    if type(score) not in (int, float) or not math.isfinite(score):
        raise InvalidContext("a context's score must be a finite number")
    if type(digest) is not str or not _DIGEST.fullmatch(digest):
        raise InvalidContext(f"a context's digest is {2 * CONTEXT_DIGEST_BYTES} lowercase hex "
                             "digits")
    return Version(float(score), _time(t), digest)
