"""Who is trusted: the operator's key signs the ring; node keys derived from it sign requests.

The operator holds an Ed25519 private key. Nodes and clients hold its public key, and accept a
ring only when the operator signed it, whatever its epoch or where it came from (a PUT, gossip,
an answer), so a member cannot forge membership or parameters. Each member's own key pair is
derived from the operator's key and its node id (HKDF), and the signed ring lists every member's
public key: a node checks a peer's signed request against the ring it holds. Operators sign the
requests that change or dump what a node holds with the operator key (docs/security.md).

A party with no operator public key is in **development mode**: it accepts unsigned rings, and a
node in that mode serves only loopback (:func:`sdht.trust.is_loopback`).

Keys are written as 64 hex digits: a private key as its 32-byte seed, a public key raw.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError, Unauthorized, UntrustedRing
from .wire import DATE_HEADER, SIGNATURE_HEADER, SIGNER_HEADER

#: The signer name of the operator in request signatures.
OPERATOR = "operator"
#: How far a signed request's time may be from the verifier's clock, in seconds.
REQUEST_WINDOW = 60
_RING_DOMAIN = b"sdht-ring-v1\x00"
_REQUEST_DOMAIN = b"sdht-request-v1\x00"
_NODE_KEY_SALT = b"sdht-node-key-v1"
_UI_TOKEN_DOMAIN = b"sdht-page-token-v1"
DEV_MODE = "development mode, no key"


# -- keys -----------------------------------------------------------------------------------------

def new_private_key() -> str:
    """Return a new operator private key (hex of its 32-byte seed)."""
    return os.urandom(32).hex()


def _private(hex_seed: str) -> Ed25519PrivateKey:
    try:
        seed = bytes.fromhex(hex_seed.strip())
        if len(seed) != 32:
            raise ValueError("wrong length")
    except (ValueError, AttributeError):
        raise ConfigError("a private key must be 64 hex digits") from None
    return Ed25519PrivateKey.from_private_bytes(seed)


def _public(hex_key: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(hex_key.strip())
        if len(raw) != 32:
            raise ValueError("wrong length")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, AttributeError):
        raise ConfigError(f"not a public key (64 hex digits): {str(hex_key)[:80]!r}") from None


def public_of(hex_seed: str) -> str:
    """Return the public key (hex) of a private key (hex)."""
    return _private(hex_seed).public_key().public_bytes(serialization.Encoding.Raw,
                                                        serialization.PublicFormat.Raw).hex()


def node_private_key(operator_private: str, node_id: str) -> str:
    """Return the private key (hex) of member ``node_id``, derived from the operator's key."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=_NODE_KEY_SALT,
                info=node_id.encode("utf-8")).derive(bytes.fromhex(operator_private.strip()))
    return seed.hex()


def page_token(node_private: str) -> str:
    """Return the token a node's page asks for before it writes (derived from the node key)."""
    return hmac.new(bytes.fromhex(node_private.strip()), _UI_TOKEN_DOMAIN,
                    hashlib.sha256).hexdigest()[:32]


def read_key(text_or_path: str) -> str:
    """Return a key given as hex digits, or as the path of a file holding them."""
    text = text_or_path.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text
    try:
        with open(text, encoding="ascii") as f:
            return f.read(1024).strip()   # a key file is 65 bytes; bound what a typo reads
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read a key from {text!r}: {exc}") from None


#: Addresses whose loopback check is remembered: a node asks it of every request's client
#: (parsing the address was 9% of a single write's Python), and has few clients.
LOOPBACK_CACHE = 1024


@functools.lru_cache(maxsize=LOOPBACK_CACHE)
def is_loopback(host: str) -> bool:
    """Return whether ``host`` (an address or ``localhost``) is a loopback address."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- what one party holds -------------------------------------------------------------------------

@dataclass
class Keys:
    """The keys one party holds.

    :param operator_public: the operator public keys whose ring signatures are accepted (more
        than one while a key is rotated); empty in development mode.
    :param private: this party's private key: the operator's (for operators' tools), or this
        node's own (for a node); None when it only reads.
    :param name: who signs with ``private``: :data:`OPERATOR` or the node's id.
    """

    operator_public: tuple[str, ...] = ()
    private: str | None = None
    name: str = OPERATOR
    _verifiers: list[Ed25519PublicKey] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.operator_public = tuple(k.strip().lower() for k in self.operator_public if k.strip())
        self._verifiers = [_public(k) for k in self.operator_public]
        if self.private is not None:
            _private(self.private)   # refuse a malformed key now, not at the first request

    @classmethod
    def of(cls, private: str | None, public: str | None, name: str = OPERATOR) -> "Keys":
        """Keys from settings: ``private`` a key or its file, ``public`` comma-separated
        operator public keys (each a key or its file). An operator's tool that gives only its private key trusts its
        own public key."""
        own = read_key(private) if private else None
        trusted = [read_key(k) for k in (public or "").split(",") if k.strip()]
        if own and not trusted and name == OPERATOR:
            trusted = [public_of(own)]
        return cls(tuple(trusted), own, name)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Keys":
        """Keys of an operator's tool from ``SDHT_OPERATOR_KEY`` (the private key or its
        file) and ``SDHT_OPERATOR_PUBKEY`` (see :meth:`of`)."""
        env = os.environ if environ is None else environ
        return cls.of(env.get("SDHT_OPERATOR_KEY"), env.get("SDHT_OPERATOR_PUBKEY"))

    @property
    def development(self) -> bool:
        """True in development mode: no operator public key, unsigned rings accepted."""
        return not self.operator_public

    @property
    def can_sign_rings(self) -> bool:
        """True when this party holds the operator key (it may publish rings)."""
        return self.private is not None and self.name == OPERATOR

    # -- rings --------------------------------------------------------------------------------

    def sign_ring(self, body: Mapping[str, Any]) -> str:
        """Return the operator's signature (hex) of a ring's JSON body (without signature).

        :raises Unauthorized: when this party does not hold the operator key.
        """
        if not self.can_sign_rings:
            raise Unauthorized("changing the ring needs the operator key (SDHT_OPERATOR_KEY)")
        return _private(self.private).sign(_RING_DOMAIN + canonical_json(body)).hex()

    def check_ring(self, body: Mapping[str, Any], signature: str | None) -> None:
        """Accept a ring's JSON body only when an operator key signed it (any ring in
        development mode).

        :raises UntrustedRing: for an unsigned ring, or one no operator key signed.
        """
        if self.development:
            return
        if not signature:
            raise UntrustedRing("the ring is not signed by the operator")
        if not _verify(self._verifiers, bytes_of(signature), _RING_DOMAIN + canonical_json(body)):
            raise UntrustedRing("the ring's signature is not the operator's")

    # -- requests -----------------------------------------------------------------------------

    def sign_request(self, method: str, target: str, body: bytes | None) -> dict[str, str]:
        """Return the headers that sign a request (empty when this party holds no key)."""
        if self.private is None:
            return {}
        date = str(int(time.time()))
        message = _request_message(method, target, date, body or b"")
        return {SIGNER_HEADER: self.name, DATE_HEADER: date,
                SIGNATURE_HEADER: _private(self.private).sign(message).hex()}

    def check_request(self, method: str, target: str, body: bytes, headers: Mapping[str, str],
                      members: Mapping[str, str], allow_members: bool = True) -> str:
        """Check a signed request; return who signed it (:data:`OPERATOR` or a member id).

        :param members: the public key (hex) of each member, from the ring this node holds.
        :param allow_members: False when only the operator may make this request.
        :raises Unauthorized: when the request is unsigned, stale, or signed by nobody trusted.
        """
        signer, date, signature = (headers.get(SIGNER_HEADER), headers.get(DATE_HEADER),
                                   headers.get(SIGNATURE_HEADER))
        if not (signer and date and signature):
            raise Unauthorized("this route needs a request signed by the operator"
                               + (" or a member" if allow_members else ""))
        if not date.isdigit() or abs(int(date) - time.time()) > REQUEST_WINDOW:
            raise Unauthorized(f"the request's signature date is more than {REQUEST_WINDOW}s "
                               f"from this node's clock")
        if signer == OPERATOR:
            keys = self._verifiers
        elif allow_members and signer in members:
            keys = [_public(members[signer])]
        else:
            raise Unauthorized(f"{signer[:80]!r} may not make this request")
        if not _verify(keys, bytes_of(signature), _request_message(method, target, date, body)):
            raise Unauthorized("the request's signature does not verify")
        return signer


def canonical_json(obj: Any) -> bytes:
    """Return the one encoding of a JSON object that signatures cover."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def bytes_of(hex_text: Any) -> bytes:
    """Return the bytes of a hex signature, or b"" when it is not hex."""
    try:
        return bytes.fromhex(hex_text) if isinstance(hex_text, str) and len(hex_text) <= 256 \
            else b""
    except ValueError:
        return b""


def _request_message(method: str, target: str, date: str, body: bytes) -> bytes:
    return b"\x00".join([_REQUEST_DOMAIN, method.upper().encode(), target.encode("utf-8"),
                         date.encode(), hashlib.sha256(body).digest()])


def _verify(keys: Iterable[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False
