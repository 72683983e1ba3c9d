"""The wire between the library and the nodes: one module both sides import.

It holds what the two sides must agree on and nothing else: header names, content types, the
names of write outcomes, request limits, the encoding of position ranges, the hash tree's shape,
the tombstone cutoff, and sdht's one strict msgpack codec. Neither side writes any of these
again (docs/design.md lists the homes of every rule).
"""
from __future__ import annotations

import contextlib
import gc
import threading
import time
from typing import Any, Iterable, Iterator, Mapping

import msgpack

from .errors import InvalidRecord

# -- headers and content types --------------------------------------------------------------------

#: Every node answer carries the ring epoch the node holds, so clients notice a newer ring.
EPOCH_HEADER = "X-SDHT-Epoch"
#: Every node answer names the node (its ring id), when it has one.
NODE_HEADER = "X-SDHT-Node"
#: A signed request (sdht/trust.py): who signed it, when (Unix seconds), and the signature.
SIGNER_HEADER = "X-SDHT-Signer"
DATE_HEADER = "X-SDHT-Date"
SIGNATURE_HEADER = "X-SDHT-Signature"
#: The token a node's page sends with writes, when the node has keys.
PAGE_TOKEN_HEADER = "X-SDHT-Page-Token"
#: Marks a batch write of entries moved by a join or remove (counted by the node's metrics).
MIGRATION_HEADER = "X-SDHT-Migration"
MSGPACK = "application/msgpack"
JSON = "application/json"

# -- what a node did with one written entry -------------------------------------------------------

STORED = "stored"          # accepted: the node now holds it
SAME = "same"              # the node already held this very entry
SUPERSEDED = "superseded"  # the node holds an entry that the order puts above it
OUTCOMES = (STORED, SAME, SUPERSEDED)

# -- request limits -------------------------------------------------------------------------------

#: Entries or keys the library puts in one batch request (reads, writes, migration pages).
BATCH = 1000
#: Entries or keys a node accepts in one batch request by default (``SDHT_MAX_BATCH``).
MAX_BATCH = 10_000
#: Position ranges one hash-tree request may restrict to, on both sides.
MAX_TREE_RANGES = 1024
#: Work one hash-tree request may ask of a node by default: its ``nodes``, plus for each node
#: of its ``list`` the ranges that meet that node (the node merges overlapping ranges first).
#: A request naming distinct tree nodes, at most ``MAX_BATCH`` of each, over disjoint ranges
#: stays within it; the node answers 413 ``tree_too_costly`` above it (``2 * SDHT_MAX_BATCH +
#: MAX_TREE_RANGES`` on a node with another batch limit).
MAX_TREE_WORK = 2 * MAX_BATCH + MAX_TREE_RANGES
#: Bytes of entries a node puts in one answer by default (``SDHT_MAX_ANSWER_BYTES``), as it
#: puts at most ``SDHT_MAX_BODY_BYTES`` in a request. Past it a page of ``/v1/range`` ends early
#: (its cursor resumes), a tree listing ends ``truncated``, and a batch read of more than one
#: key answers 413 ``answer_too_large``: ask for fewer keys at a time.
MAX_ANSWER_BYTES = 64 << 20
#: Bytes of body the library reads of one answer before it gives up on the node: a little
#: above the largest legitimate answer (``MAX_ANSWER_BYTES`` of entries, plus their framing).
#: ``Content-Length`` is never trusted: the body is read in chunks and counted.
MAX_ANSWER_READ = 80 << 20

# -- the hash tree's shape ------------------------------------------------------------------------

#: Children per tree node, and levels below the root: 16**4 = 65536 leaves, each the top 16 bits
#: of a position. The node's tree (storage/tree.py) and the sync walk (sdht/sync.py) share it.
FANOUT, DEPTH = 16, 4
_LEVEL_BITS = 4   # log2(FANOUT)


def node_range(level: int, index: int) -> tuple[int, int]:
    """Return the position range ``[start, end)`` of tree node ``(level, index)``."""
    shift = 64 - _LEVEL_BITS * level
    return index << shift, (index + 1) << shift


def is_tree_node(level: Any, index: Any) -> bool:
    """Return whether ``(level, index)`` names a node of the tree."""
    return (type(level) is int and type(index) is int and 0 <= level <= DEPTH
            and 0 <= index < FANOUT ** level)


# -- position ranges ------------------------------------------------------------------------------

#: Positions are 64-bit: the ring is ``[0, RING_SIZE)``.
RING_SIZE = 1 << 64


def ref_position(ref: bytes) -> int:
    """The ring position of the entry a tree listing's reference names: a reference is the
    entry's LMDB key, which starts with its position (8 bytes, big-endian; storage/layout.py)."""
    return int.from_bytes(ref[:8], "big")


def encode_ranges(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Encode half-open ``[start, end)`` ranges as inclusive ``[first, last]`` pairs: the end of
    the ring, 2**64, does not fit a msgpack integer."""
    return [[start, end - 1] for start, end in ranges]


def decode_ranges(items: Any, limit: int = MAX_TREE_RANGES) -> list[tuple[int, int]]:
    """Decode :func:`encode_ranges`'s form back to sorted half-open ranges.

    :raises InvalidRecord: when it is not a list of at most ``limit`` ordered position pairs.
    """
    if not isinstance(items, list) or len(items) > limit:
        raise InvalidRecord(f"ranges must be a list of at most {limit} [first, last] pairs")
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and all(type(x) is int for x in item)
                and 0 <= item[0] <= item[1] < RING_SIZE):
            raise InvalidRecord(f"not a position range [first, last]: {item!r}")
        out.append((item[0], item[1] + 1))
    return sorted(out)


# -- time -----------------------------------------------------------------------------------------

def now_us() -> int:
    """Return the current wall-clock time in integer microseconds since the epoch."""
    return time.time_ns() // 1000


def tombstone_cutoff(params: Mapping[str, Any], now: int | None = None) -> int:
    """Return the time (microseconds) before which a tombstone is past ``tombstone_grace``:
    a node may purge it, and anti-entropy no longer copies it."""
    return (now_us() if now is None else now) - int(params["tombstone_grace"] * 1e6)


# -- msgpack --------------------------------------------------------------------------------------

#: One msgpack packer per thread: ``msgpack.packb`` builds a new one every call, which is more
#: than half of what encoding a small record costs (1.16 vs 0.50 us).
_PACKERS = threading.local()


def packb(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack the one way sdht does (bin type for bytes, float64)."""
    packer = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)   # a failed pack leaves the packer empty (msgpack resets it)


def unpackb(data: bytes) -> Any:
    """Decode msgpack strictly: str stays str, bytes stay bytes, no extension types.

    :raises InvalidRecord: on malformed, truncated or trailing data, or extension types.
    """
    try:
        with collector_paused():
            return msgpack.unpackb(data, **_STRICT)
    except InvalidRecord:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:  # the msgpack errors all derive from ValueError
        raise _malformed(exc) from None


def unpack_items(data: bytes) -> list[tuple[Any, bytes]]:
    """Decode a msgpack array as strictly as :func:`unpackb`, keeping each item's own bytes.

    A node stores an entry as the bytes it arrived as, so it never encodes it again.

    :raises InvalidRecord: when ``data`` is not exactly one well-formed array.
    """
    unpacker = msgpack.Unpacker(**_STRICT, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        count = unpacker.read_array_header()
    except (ValueError, msgpack.OutOfData):
        raise InvalidRecord("the body must be a msgpack array") from None
    try:
        with collector_paused():
            items = _unpack_each(unpacker, data, count)
    except InvalidRecord:
        raise
    except (ValueError, TypeError, msgpack.OutOfData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise _malformed(exc) from None
    if unpacker.tell() != len(data):
        raise InvalidRecord("malformed msgpack: trailing bytes after the array")
    return items


def _unpack_each(unpacker: Any, data: bytes, count: int) -> list[tuple[Any, bytes]]:
    items = []
    for _ in range(count):
        start = unpacker.tell()
        obj = unpacker.unpack()
        items.append((obj, data[start:unpacker.tell()]))
    return items


_GC_LOCK = threading.Lock()
_GC_PAUSES = 0
_GC_WAS_ON = True


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector while decoding (and for a whole ``set_many`` or
    ``get_many``, :mod:`sdht.client`): a body of many small containers makes it rescan every
    object again and again (a 5.5 MB one: 4.2 s with it, 1.1 s without). Decoded data holds no
    cycles. Counted, so threads decoding at once share one pause; it lasts as long as the call
    (a request's deadline)."""
    global _GC_PAUSES, _GC_WAS_ON
    with _GC_LOCK:
        _GC_PAUSES += 1
        if _GC_PAUSES == 1:
            _GC_WAS_ON = gc.isenabled()   # a program that turned it off keeps it off
            gc.disable()
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_PAUSES -= 1
            if _GC_PAUSES == 0 and _GC_WAS_ON:
                gc.enable()


def packed_array(items: list[bytes | None]) -> bytes:
    """Encode already-packed items (None as nil) as one msgpack array, without decoding them."""
    head = msgpack.Packer().pack_array_header(len(items))
    return head + b"".join(b"\xc0" if item is None else item for item in items)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise InvalidRecord(f"msgpack extension type {code} is not allowed")


# max_ext_len=0: msgpack decodes extension type -1 (timestamp) itself, without asking
# ext_hook, so the length limit is what refuses it; ext_hook catches empty extensions.
_STRICT: dict[str, Any] = {"raw": False, "strict_map_key": False, "max_ext_len": 0,
                           "timestamp": 0, "ext_hook": _refuse_ext}


def _malformed(exc: Exception) -> InvalidRecord:
    if "max_ext_len" in str(exc) or "timestamp" in str(exc):
        return InvalidRecord("msgpack extension types are not allowed")
    return InvalidRecord(f"malformed msgpack: {exc or exc.__class__.__name__}")

# -- causal contexts (sdht/session.py, the /kv-store gateway) --------------------------------------

#: The JSON field of every /kv-store request and answer that carries the causal context, and the
#: query argument a client that cannot send a GET body puts it in.
CONTEXT_FIELD = "causal-context"
#: The header that can carry the context instead (JSON text).
CONTEXT_HEADER = "X-Causal-Context"
#: Keys one context remembers at most; past it the oldest versions are dropped.
CONTEXT_MAX_KEYS = 1000
#: Bytes of entries one context holds at most (each key: its JSON length plus 96).
CONTEXT_MAX_BYTES = 128 << 10
#: Bytes of a version's digest a context keeps (hex in its JSON form).
CONTEXT_DIGEST_BYTES = 16
