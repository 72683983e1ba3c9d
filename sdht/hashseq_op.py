"""The ops of the hashseq sequence CRDT: their shape, their content-addressed id, their wire form.

An op is one edit of a sequence (:mod:`sdht.hashseq`), after davidrusu/hashseq's ``HashNode``:
``root`` (the first item of an empty sequence), ``after`` / ``before`` an anchor item, or
``remove`` of some items. ``deps`` are its extra dependencies: the tips the writer saw, minus the
anchor (or the removed ids). Its id is the hash of a fixed, domain-separated preimage of its
content, so an op can be checked by anyone and identical edits made in identical contexts
collapse into one (this is how hashseq deduplicates a common prefix).

The hash function and the preimage are a :class:`Scheme`: sdht uses blake2b-256 over its own
preimage (:data:`DEFAULT`); the tests plug in BLAKE3 and hashseq's exact preimage to check that
the merged orders match hashseq's byte for byte. Pure: no I/O.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Any, Callable

from .errors import InvalidRecord
from .wire import packb

#: Bytes of an op id (a 256-bit digest).
ID_BYTES = 32
#: At most this many extra dependencies per op. A writer that sees more tips names the smallest
#: ones (an op's deps only carry causality; the order never reads them).
MAX_DEPS = 256
#: At most this many ids removed by one op.
MAX_REMOVED = 1024
ROOT, AFTER, BEFORE, REMOVE = "root", "after", "before", "remove"
KINDS = (ROOT, AFTER, BEFORE, REMOVE)
INSERTS = (ROOT, AFTER, BEFORE)
#: The domain tag that starts every sdht op preimage: no other sdht digest can equal an op id.
DOMAIN = b"sdht.hashseq.v1"
_KIND_TAG = {ROOT: b"\x00", AFTER: b"\x01", BEFORE: b"\x02", REMOVE: b"\x03"}

#: A hash function: bytes in, a 32-byte digest out.
Hasher = Callable[[bytes], bytes]


def _blake2b_256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=ID_BYTES).digest()


#: blake2b with a 256-bit digest (the domain tag is in sdht's preimage, not in the hasher).
BLAKE2B: Hasher = _blake2b_256


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    """One edit of a sequence. Build ops with :func:`make_op` (which computes ``id``) or
    :func:`op_from_wire` (which checks it); :class:`sdht.hashseq.HashSeq` trusts ``id``."""

    id: bytes
    deps: tuple[bytes, ...]
    kind: str
    anchor: bytes | None = None
    item: Any = None
    removed: tuple[bytes, ...] = ()

    def __hash__(self) -> int:
        return hash(self.id)

    def dependencies(self) -> tuple[bytes, ...]:
        """Every id this op needs applied first: its deps, its anchor, the ids it removes."""
        if self.anchor is not None:
            return self.deps + (self.anchor,)
        return self.deps + self.removed

    def to_wire(self) -> dict[str, Any]:
        """The op as a msgpack-able map: its content and its claimed id, nothing derived."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "deps": list(self.deps)}
        if self.kind == REMOVE:
            out["removed"] = list(self.removed)
        else:
            if self.anchor is not None:
                out["anchor"] = self.anchor
            out["item"] = self.item
        return out


def sdht_preimage(op: Op) -> bytes:
    """sdht's preimage of an op's id (``op.id`` is not read).

    ``DOMAIN ‖ u32 #deps ‖ deps ‖ kind byte ‖ [anchor] ‖ u32 len ‖ msgpack(item)`` for inserts,
    ``DOMAIN ‖ u32 #deps ‖ deps ‖ kind byte ‖ u32 #removed ‖ removed`` for removes. Ids are fixed
    at 32 bytes and everything variable is counted, so two different ops never share a preimage.

    :raises TypeError: when the item is not a msgpack value.
    """
    parts = [DOMAIN, struct.pack(">I", len(op.deps)), *op.deps, _KIND_TAG[op.kind]]
    if op.kind == REMOVE:
        parts += [struct.pack(">I", len(op.removed)), *op.removed]
    else:
        if op.anchor is not None:
            parts.append(op.anchor)
        item = packb(op.item)
        parts += [struct.pack(">I", len(item)), item]
    return b"".join(parts)


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How op ids are computed: ``hash(preimage(op))``."""

    hash: Hasher
    preimage: Callable[[Op], bytes]

    def op_id(self, op: Op) -> bytes:
        """The id ``op``'s content hashes to (whatever ``op.id`` claims)."""
        return self.hash(self.preimage(op))


#: sdht's scheme: blake2b-256 over :func:`sdht_preimage`.
DEFAULT = Scheme(BLAKE2B, sdht_preimage)


def make_op(scheme: Scheme, kind: str, deps: Any = (), anchor: bytes | None = None,
            item: Any = None, removed: Any = ()) -> Op:
    """A well-formed op with its id computed by ``scheme``; ``deps`` and ``removed`` may be
    given in any order (they are sorted).

    :raises InvalidRecord: when the shape is wrong (see :func:`check_shape`).
    """
    op = Op(b"", tuple(sorted(deps)), kind, anchor, item, tuple(sorted(removed)))
    check_shape(op)
    try:
        op_id = scheme.op_id(op)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecord(f"the op's item cannot be hashed: {exc}") from None
    return dataclasses.replace(op, id=op_id)


def check_shape(op: Op) -> None:
    """Check everything about ``op`` that needs no other op: kind, id sizes, sorted unique
    deps and removed ids within their limits, an anchor exactly for ``after``/``before``.

    :raises InvalidRecord: naming the first thing wrong.
    """
    if type(op.kind) is not str or op.kind not in KINDS:
        raise InvalidRecord(f"an op's kind is one of {', '.join(KINDS)}")
    _check_ids("deps", op.deps, MAX_DEPS, allow_empty=True)
    if op.kind in (AFTER, BEFORE):
        if type(op.anchor) is not bytes or len(op.anchor) != ID_BYTES:
            raise InvalidRecord(f"an {op.kind} op's anchor is a {ID_BYTES}-byte id")
        if op.anchor in op.deps:
            raise InvalidRecord("an op's anchor is not among its extra deps")
    elif op.anchor is not None:
        raise InvalidRecord(f"a {op.kind} op has no anchor")
    if op.kind == REMOVE:
        _check_ids("removed", op.removed, MAX_REMOVED, allow_empty=False)
        if op.item is not None:
            raise InvalidRecord("a remove op has no item")
        if set(op.removed).intersection(op.deps):
            raise InvalidRecord("the ids a remove op removes are not among its extra deps")
    elif op.removed:
        raise InvalidRecord(f"a {op.kind} op removes nothing")


def _check_ids(name: str, ids: Any, limit: int, allow_empty: bool) -> None:
    if type(ids) is not tuple:
        raise InvalidRecord(f"an op's {name} is a sequence of ids")
    if len(ids) > limit:
        raise InvalidRecord(f"an op names at most {limit} {name}, not {len(ids)}")
    if not ids and not allow_empty:
        raise InvalidRecord(f"an op's {name} is not empty")
    previous = b""
    for one in ids:
        if type(one) is not bytes or len(one) != ID_BYTES:
            raise InvalidRecord(f"an op's {name} are {ID_BYTES}-byte ids")
        if one <= previous:
            raise InvalidRecord(f"an op's {name} are sorted, without repeats")
        previous = one


_WIRE_KEYS = {
    ROOT: {"id", "kind", "deps", "item"},
    AFTER: {"id", "kind", "deps", "anchor", "item"},
    BEFORE: {"id", "kind", "deps", "anchor", "item"},
    REMOVE: {"id", "kind", "deps", "removed"},
}


def op_from_wire(obj: Any, scheme: Scheme = DEFAULT) -> Op:
    """The op a wire map (:meth:`Op.to_wire`) describes, once its claimed id is checked.

    Meant for hostile input: exact types, exactly the fields of its kind, at most
    :data:`MAX_DEPS` deps and :data:`MAX_REMOVED` removed ids, sorted and unique.

    :raises InvalidRecord: when the map is malformed or its id does not match its content.
    """
    if type(obj) is not dict:
        raise InvalidRecord("an op is a map")
    kind = obj.get("kind")
    if type(kind) is not str or kind not in KINDS:
        raise InvalidRecord(f"an op's kind is one of {', '.join(KINDS)}")
    if set(obj) != _WIRE_KEYS[kind]:
        raise InvalidRecord(f"a {kind} op has exactly the fields {sorted(_WIRE_KEYS[kind])}")
    claimed = obj["id"]
    if type(claimed) is not bytes or len(claimed) != ID_BYTES:
        raise InvalidRecord(f"an op's id is a {ID_BYTES}-byte digest")
    op = Op(b"", _id_tuple(obj["deps"], "deps", MAX_DEPS), kind, obj.get("anchor"),
            obj.get("item"), _id_tuple(obj.get("removed", ()), "removed", MAX_REMOVED))
    check_shape(op)
    try:
        actual = scheme.op_id(op)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecord(f"the op's item cannot be hashed: {exc}") from None
    if actual != claimed:
        raise InvalidRecord("an op's id does not match its content")
    return dataclasses.replace(op, id=actual)


def _id_tuple(ids: Any, name: str, limit: int) -> tuple[bytes, ...]:
    # Bounded before it is copied: a hostile list of a million ids costs nothing more here.
    if type(ids) not in (list, tuple):
        raise InvalidRecord(f"an op's {name} is an array of ids")
    if len(ids) > limit:
        raise InvalidRecord(f"an op names at most {limit} {name}, not {len(ids)}")
    return tuple(ids)
