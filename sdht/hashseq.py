"""hashseq: a byzantine-tolerant sequence CRDT (after davidrusu/hashseq), pure, with no I/O.

A sequence is a set of content-addressed ops (:mod:`sdht.hashseq_op`). Its state is a function of
that set alone: :meth:`HashSeq.apply` is idempotent and order-free, and merge is set union. An op
whose dependencies have not arrived waits as an orphan, filed under the one id it waits for.

The ops form a tree: an ``after`` or ``before`` op hangs under its anchor, roots hang from
nowhere. The order is hashseq's depth-first walk of that tree::

    emit(n) = [emit(b) for b in sorted(befores(n))] + [n unless removed]
              + [emit(a) for a in sorted(afters(n))]
    sequence = [emit(r) for r in sorted(roots)]

so at a fork the smaller id comes first, a whole subtree comes out before its next sibling
(concurrent runs never interleave), and removed items are tombstones: skipped, their children
still walked. Positions for :meth:`HashSeq.insert` and :meth:`HashSeq.remove` come from this same
order (hashseq's separate incremental index can disagree with it after merges; not copied).
"""
from __future__ import annotations

from bisect import insort
from typing import Any, Iterable, Iterator

from .hashseq_op import (AFTER, BEFORE, BLAKE2B, DEFAULT, DOMAIN, ID_BYTES, KINDS, MAX_DEPS,
                         MAX_REMOVED, REMOVE, ROOT, Hasher, Op, Scheme, check_shape, make_op,
                         op_from_wire, sdht_preimage)
from .hashseq_order import under_after, walk

__all__ = ["HashSeq", "Op", "Scheme", "Hasher", "BLAKE2B", "DEFAULT", "DOMAIN", "ID_BYTES",
           "KINDS", "MAX_DEPS", "MAX_REMOVED", "ROOT", "AFTER", "BEFORE", "REMOVE",
           "check_shape", "make_op", "op_from_wire", "sdht_preimage"]


class HashSeq:
    """One replica of a sequence: the ops it holds and the order they give."""

    def __init__(self, scheme: Scheme = DEFAULT) -> None:
        self.scheme = scheme
        self._ops: dict[bytes, Op] = {}            # applied ops, in the order applied
        self._tips: set[bytes] = set()             # applied ids no applied op depends on
        self._roots: list[bytes] = []              # sorted
        self._afters: dict[bytes, list[bytes]] = {}    # anchor -> sorted after-children
        self._befores: dict[bytes, list[bytes]] = {}   # anchor -> sorted before-children
        self._removed: set[bytes] = set()          # tombstoned inserts
        self._detached: set[bytes] = set()         # inserts hung under a remove op: never shown
        self._orphans: dict[bytes, Op] = {}        # id -> op still missing a dependency
        self._waiting: dict[bytes, list[Op]] = {}  # missing id -> orphans waiting for it
        self._visible = 0                          # shown inserts, so len() needs no walk
        # The visible order, kept up to date while that is cheap; None = walk again when read.
        self._order: list[bytes] | None = []
        self._editing: tuple[bytes, int] | None = None  # the local edit being applied

    # -- reading ------------------------------------------------------------------------------

    def ids(self) -> list[bytes]:
        """The ids of the visible items, in the sequence's order."""
        return list(self._ordered())

    def items(self) -> list[Any]:
        """The visible items, in the sequence's order."""
        ops = self._ops
        return [ops[i].item for i in self._ordered()]

    def __len__(self) -> int:
        return self._visible

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items())

    def ops(self) -> list[Op]:
        """Every applied op, dependencies before dependents (orphans are not included)."""
        return list(self._ops.values())

    def orphan_ops(self) -> list[Op]:
        """The ops held until a dependency arrives."""
        return list(self._orphans.values())

    def op(self, op_id: bytes) -> Op:
        """The applied op with this id.

        :raises KeyError: when no such op is applied.
        """
        return self._ops[op_id]

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._ops or op_id in self._orphans

    @property
    def orphans(self) -> int:
        """How many ops wait for a dependency."""
        return len(self._orphans)

    def missing(self) -> frozenset[bytes]:
        """The ids orphans wait for (each orphan is filed under one of its missing ids)."""
        return frozenset(self._waiting)

    @property
    def tips(self) -> frozenset[bytes]:
        """The applied ids that no applied op depends on: equal tips, equal replicas."""
        return frozenset(self._tips)

    # -- local edits ----------------------------------------------------------------------------

    def insert(self, index: int, item: Any) -> Op:
        """Insert ``item`` so it lands at ``index`` of :meth:`items` (``list.insert``'s index
        rules: negative counts from the end, out of range clamps), and return the applied op."""
        return self.insert_batch(index, [item])[0]

    def append(self, item: Any) -> Op:
        """Add ``item`` at the end and return the applied op."""
        return self.insert_batch(self._visible, [item])[0]

    def insert_batch(self, index: int, items: Iterable[Any]) -> list[Op]:
        """Insert ``items`` in order from ``index`` on, as hashseq's ``insert_batch``: the
        first op follows the neighbour rules, each next one is ``after`` the previous with no
        extra deps. Returns the applied ops.
        """
        items = list(items)
        if not items:
            return []
        order = self._ordered()
        index = max(0, min(len(order), index + len(order) if index < 0 else index))
        left = order[index - 1] if index > 0 else None
        right = order[index] if index < len(order) else None
        if left is None and right is None:     # an empty sequence: a new root
            first = self._local(index, ROOT, None, items[0], self._tips)
        elif right is not None and (left is None or under_after(self._ops, left, right)):
            # An after-child of ``left`` would be ordered by hash against ``right``, which
            # hangs below ``left`` too: anchor before ``right`` instead (hashseq's rule).
            first = self._local(index, BEFORE, right, items[0], self._tips - {right})
        else:
            first = self._local(index, AFTER, left, items[0], self._tips - {left})
        out = [first]
        for offset, item in enumerate(items[1:], 1):
            out.append(self._local(index + offset, AFTER, out[-1].id, item, ()))
        return out

    def remove(self, index: int) -> Op:
        """Remove the item at ``index`` of :meth:`items` (negative counts from the end) and
        return the applied op.

        :raises IndexError: when there is no such item.
        """
        return self.remove_ids([self._ordered()[index]])

    def remove_ids(self, ids: Iterable[bytes]) -> Op:
        """Remove the visible items with these ids and return the applied op.

        :raises KeyError: when one of them is not a visible item.
        """
        targets = set(ids)
        for one in targets:
            if one not in self._ops or one in self._removed or one in self._detached \
                    or self._ops[one].kind == REMOVE:
                raise KeyError(one)
        return self._local_op(make_op(self.scheme, REMOVE, _bounded(self._tips - targets),
                                      removed=targets))

    def _local(self, index: int, kind: str, anchor: bytes | None, item: Any,
               deps: Iterable[bytes]) -> Op:
        return self._local_op(make_op(self.scheme, kind, _bounded(deps), anchor, item), index)

    def _local_op(self, op: Op, index: int = 0) -> Op:
        self._editing = (op.id, index)
        try:
            self.apply(op)
        finally:
            self._editing = None
        return op

    # -- applying -------------------------------------------------------------------------------

    def apply(self, op: Op) -> bool:
        """Apply ``op`` (its id is trusted: check foreign ops with :func:`op_from_wire`).

        Idempotent and order-free. An op with a missing dependency is held as an orphan and
        applied when that dependency is; applying an op also applies the orphans it frees.

        :returns: whether the op was new (applied now, or held as an orphan).
        """
        if op.id in self._ops or op.id in self._orphans:
            return False
        missing = self._first_missing(op)
        if missing is not None:
            self._orphans[op.id] = op
            self._waiting.setdefault(missing, []).append(op)
            return True
        ready = [op]
        while ready:   # iterative, so a long chain of orphans cannot exhaust the stack
            current = ready.pop()
            self._integrate(current)
            for waiter in self._waiting.pop(current.id, ()):
                missing = self._first_missing(waiter)
                if missing is None:
                    del self._orphans[waiter.id]
                    ready.append(waiter)
                else:
                    self._waiting.setdefault(missing, []).append(waiter)
        return True

    def apply_many(self, ops: Iterable[Op]) -> int:
        """Apply many ops at once (cheaper than one by one: the order is walked again once,
        when next read). Returns how many were new."""
        self._order = None
        return sum(self.apply(op) for op in ops)

    def merge(self, other: HashSeq) -> None:
        """Add every op ``other`` holds, applied or orphaned: the union of the two op sets."""
        self.apply_many(other.ops())
        self.apply_many(other.orphan_ops())

    def _first_missing(self, op: Op) -> bytes | None:
        ops = self._ops
        for dep in op.dependencies():
            if dep not in ops:
                return dep
        return None

    def _integrate(self, op: Op) -> None:
        op_id = op.id
        self._ops[op_id] = op
        self._tips.difference_update(op.dependencies())
        self._tips.add(op_id)
        if op.kind == REMOVE:
            self._tombstone(op)
            return
        if op.kind == ROOT:
            siblings = self._roots
        else:
            anchor = op.anchor
            if anchor in self._detached or self._ops[anchor].kind == REMOVE:
                # Only a hostile writer anchors on a remove: every replica hides it alike.
                self._detached.add(op_id)
                return
            table = self._afters if op.kind == AFTER else self._befores
            siblings = table.setdefault(anchor, [])
        insort(siblings, op_id)
        self._visible += 1
        order = self._order
        if order is None:
            return
        if self._editing is not None and self._editing[0] == op_id:
            # hashseq's rules put a local insert exactly where it was asked for (the list
            # model); the tests check this upkeep against a fresh walk.
            order.insert(self._editing[1], op_id)
        elif op.kind == AFTER and order and order[-1] == op.anchor:
            # After the last visible item, all that follows in the walk is tombstones.
            order.append(op_id)
        else:
            self._order = None    # foreign ops come in batches: walk once, when next read

    def _tombstone(self, op: Op) -> None:
        for target in op.removed:
            if target in self._removed or target in self._detached \
                    or self._ops[target].kind == REMOVE:
                continue
            self._removed.add(target)
            self._visible -= 1
            if self._order is not None:
                self._order.remove(target)

    # -- the order ------------------------------------------------------------------------------

    def _ordered(self) -> list[bytes]:
        if self._order is None:
            self._order = walk(self._roots, self._afters, self._befores, self._removed)
        return self._order


def _bounded(deps: Iterable[bytes]) -> list[bytes]:
    # An op names at most MAX_DEPS extra deps; when more tips are open, the smallest are named
    # and the rest stay tips for the next op (deps carry causality only, never the order).
    return sorted(deps)[:MAX_DEPS]
