"""The order of a hashseq sequence (:mod:`sdht.hashseq`): walks of its tree of inserts.

Each insert hangs under its anchor as an after-child or a before-child; children are kept in
sorted lists (smaller id first). The order is hashseq's depth-first walk (``hashseq_iter.rs``):
a node's before-children's subtrees, the node unless it is a tombstone, its after-children's
subtrees. Every walk here is iterative, so a 10,000-deep chain of appends is fine. Pure.
"""
from __future__ import annotations

from typing import Any, Mapping

from .hashseq_op import AFTER


def walk(roots: list[bytes], afters: Mapping[bytes, list[bytes]],
         befores: Mapping[bytes, list[bytes]], removed: set[bytes] | frozenset[bytes]
         ) -> list[bytes]:
    """The visible ids in order: every root's subtree, smaller root first, tombstones left out
    (their children still walked)."""
    out: list[bytes] = []
    stack: list[Any] = list(reversed(roots))
    while stack:
        node = stack.pop()
        if type(node) is tuple:   # a marker: the node's befores are out, now the node itself
            if node[0] not in removed:
                out.append(node[0])
            continue
        children = afters.get(node)
        if children:
            stack.extend(reversed(children))
        children = befores.get(node)
        if children:
            stack.append((node,))
            stack.extend(reversed(children))
        elif node not in removed:
            out.append(node)
    return out


def under_after(ops: Mapping[bytes, Any], left: bytes, right: bytes) -> bool:
    """Whether ``right`` lies in the subtree of one of ``left``'s after-children (hashseq's
    ``is_causally_before``): then an op after ``left`` would be ordered by hash against
    ``right``'s branch, so a local insert between them anchors before ``right`` instead.

    ``ops`` maps ids to ops with ``kind`` and ``anchor``; the walk goes up from ``right``,
    one parent per node.
    """
    node = right
    while True:
        op = ops[node]
        if op.anchor is None:
            return False
        if op.anchor == left:
            return op.kind == AFTER
        node = op.anchor
