"""The narrow handle on a ring: the transport, the ring view, and ways to refresh or replace it.

Membership changes (:mod:`sdht.migration`), anti-entropy (:mod:`sdht.sync`) and the operator's
view (:mod:`sdht.status`) need exactly this, not the read and write API of :class:`sdht.Ring`.
Handing them a :class:`RingHandle` instead of the ``Ring`` keeps the import graph acyclic:
``client`` imports those modules, and they import only this one.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from . import trust
from .errors import ConfigError, NodeError, NoNodes, TransportError, UntrustedRing
from .ring import RingView
from .transport import Transport

log = logging.getLogger(__name__)


class RingHandle:
    """One client's copy of the ring view, and the transport it reaches the members with.

    :param transport: how requests reach the nodes.
    :param seeds: node ids (``host:port``) to learn the ring from when no view is known yet.
    :param new_ring_params: checked cluster parameters for a ring this client creates (a
        first join); an existing ring's own parameters always win.
    """

    def __init__(self, transport: Transport, seeds: Iterable[str] = (),
                 new_ring_params: dict[str, Any] | None = None) -> None:
        self.transport = transport
        self.seeds = list(seeds)
        self.new_ring_params: dict[str, Any] = dict(new_ring_params or {})
        #: The newest ring this client knows; None until the first refresh finds one.
        self.view: RingView | None = None
        #: Nodes a refresh asks only when no other answered (the client's suspects, set by
        #: :class:`sdht.quorum.Quorum`): a hung node must not cost every refresh a timeout.
        self.avoid: Callable[[str], bool] = lambda node: False

    def refresh(self, prefer: Iterable[str] = ()) -> RingView | None:
        """Fetch the newest ring from the members and seeds that answer; adopt and return it.

        :param prefer: nodes to ask first (say, one that just reported a newer epoch).
        :raises NoNodes: when no member or seed could be reached.
        :raises UntrustedRing: when nodes answered only with rings this client does not trust
            (so a join never mistakes a ring it cannot check for no ring at all).
        """
        known = [m.id for m in self.view.members] if self.view else []
        candidates = sorted(dict.fromkeys([*prefer, *known, *self.seeds]), key=self.avoid)
        best, reached, untrusted = self.view, 0, []
        for node in candidates:
            if reached and best is not None and self.avoid(node):
                break   # sorted: the rest are avoided too
            try:
                view = self.ring_of(node)
            except UntrustedRing as exc:
                untrusted.append(f"{node}: {exc}")
                continue
            except (TransportError, NodeError, ConfigError) as exc:
                # ConfigError: a malformed ring is that node's fault, not the ring's
                log.debug("ring refresh: %s", exc)
                continue
            reached += 1
            if view is not None and (best is None or view.epoch > best.epoch):
                best = view
            # Stop after three answers: asking every member would cost a round trip per node.
            if reached >= 3 and best is not None:
                break
        if best is None and untrusted:
            raise UntrustedRing(f"no ring this client trusts: {'; '.join(untrusted[:3])} "
                                f"(check SDHT_OPERATOR_KEY / SDHT_OPERATOR_PUBKEY)")
        if not reached and candidates:
            raise NoNodes(f"none of {candidates} could be reached")
        self.view = best
        if best is not None:
            self.transport.params = best.params
        return best

    def current(self) -> RingView:
        """Return the known ring, refreshing it first when it has no members yet.

        :raises NoNodes: when no ring with members can be found.
        """
        if self.view is None or not self.view.members:
            self.refresh()
        if self.view is None or not self.view.members:
            raise NoNodes("the ring has no members: join a node first, or name a member "
                          "(sdht.connect('HOST:PORT') or SDHT_SEEDS=HOST:PORT)")
        return self.view

    # -- trust: rings are the operator's (sdht/trust.py) -------------------------------------

    def ring_of(self, node: str) -> RingView | None:
        """Return the ring ``node`` holds (None when it has none), if the operator signed it.

        :raises UntrustedRing: when it is not signed by an operator key this client trusts.
        """
        view = self.transport.get_ring(node)
        if view is not None:
            self.check(view)
        return view

    def check(self, view: RingView) -> None:
        """Accept ``view`` only when the operator signed it (any ring in development mode).

        :raises UntrustedRing: otherwise.
        """
        self.transport.keys.check_ring(view.body(), view.signature)

    def sign(self, view: RingView) -> RingView:
        """Return ``view`` signed with the operator key, for publishing; unsigned in
        development mode (no keys at all).

        :raises Unauthorized: when the ring has keys but this client lacks the private one.
        """
        keys = self.transport.keys
        if keys.development and keys.private is None:
            return view
        return view.signed(keys.sign_ring(view.body()))

    def member_key(self, node: str) -> str | None:
        """Return the public key ``node`` will sign its requests with (derived from the
        operator key), or None in development mode."""
        keys = self.transport.keys
        if not keys.can_sign_rings:
            return None
        return trust.public_of(trust.node_private_key(keys.private, node))

    def adopt(self, view: RingView) -> None:
        """Make ``view`` the known ring (one this client published, or found on a node).

        The transport decodes answers with the ring's parameters, so they change together.
        """
        self.view = view
        self.transport.params = view.params

    def noticed(self, epochs: Iterable[int]) -> bool:
        """Refresh the ring if any node reported a newer epoch; return whether it moved.

        Nodes stamp every answer with the epoch of the ring they hold, so a client with a
        stale ring learns of it from its next request and re-routes.
        """
        view = self.current()
        newest = max(epochs, default=0)
        if newest > view.epoch:
            before = view.epoch
            self.refresh()
            return self.current().epoch > before
        return False
