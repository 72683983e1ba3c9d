"""A replica's answer for one key, checked before any use: the client trusts no answer
(docs/design.md, "Trust"). Used by every read path (:mod:`sdht.quorum`, :mod:`sdht.batch`,
:mod:`sdht.sessions`).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from .errors import InvalidRecord, NodeError
from .kinds import register
from .kinds.register import Record

log = logging.getLogger(__name__)


def check_answer(node: str, rec: Any, key: str, params: Mapping[str, Any],
                 now: int | None = None) -> None:
    """Check a replica's answer for ``key`` before any use: None (it holds nothing), or a
    register of that very key that passes its kind's checks at the ring's ``params`` (the
    proof-of-work gate at ``min_work``, a time at most ``max_skew`` ahead of this client's
    clock, ``now``). Its shape was checked as it was decoded (:mod:`sdht.nodeapi`).

    :raises NodeError: naming ``node``, when it fails: the record is forged or the replica
        faulty, and it is neither returned nor written back anywhere.
    """
    if rec is None:
        return
    try:
        if not isinstance(rec, Record):
            raise InvalidRecord(f"the answer is not a register: {type(rec).__name__}")
        if rec.key != key:
            raise InvalidRecord(f"the answer is a record of {rec.key[:100]!r}")
        register.check(rec, params, now)
    except InvalidRecord as exc:
        raise NodeError(f"{node} answered a record for {key[:100]!r} that fails its checks: "
                        f"{exc}", node) from None


def valid(rec: Any, key: str, params: Mapping[str, Any], now: int | None = None,
          node: str = "a replica") -> bool:
    """Whether a replica's answer for ``key`` is usable (see :func:`check_answer`); a failing
    one is logged and must be counted as that replica's error."""
    try:
        check_answer(node, rec, key, params, now)
        return True
    except NodeError as exc:
        log.warning("ignoring an answer: %s", exc)
        return False
