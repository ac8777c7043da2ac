"""
DKIM signing of the mail a relay sends for its users (RFC 6376), as
``twistd smtp --dkim DOMAIN:SELECTOR:KEYFILE`` configures it.

Which messages: those from sessions that may relay (authenticated, or
from the relay networks), whose ``From:`` domain is a signing domain or
one of its subdomains; the most specific domain's key signs (``d=`` a
parent of the ``From:`` domain is aligned for DMARC's relaxed mode,
RFC 7489 §3.1.1).  Mail from elsewhere, bounces made by the server
itself, and messages without a ``From:`` field are not signed.

How: a :class:`SigningFilter` (a :class:`~txsmtp.mailauth.filters.MessageFilter`)
feeds the message to a :class:`~txsmtp.dkimsign.DKIMSigner` as it
streams in, before it is queued; the signature, known once the body has
been hashed, goes into :attr:`~txsmtp.envelope.Envelope.addedHeaders`,
which the queue keeps and puts in front of the message at delivery.
Relaxed/relaxed canonicalization and
:data:`~txsmtp.dkimsign.DEFAULT_HEADERS`; RSA or Ed25519 keys (RFC 8463),
in PEM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.logger import Logger

from txsmtp.dkimsign import DKIMSigner, DKIMSignError
from txsmtp.envelope import Envelope
from txsmtp.mailauth.dmarc import fromDomain
from txsmtp.mailauth.filters import MessageFilter

__all__ = ["DKIMKey", "SigningFilter", "SigningKeys", "parseDKIMOption", "signingFilter"]

_log = Logger(namespace="txsmtp.mailauth.signing")


@dataclass(frozen=True)
class DKIMKey:
    """
    One signing key: ``domain`` (``d=``), ``selector`` (``s=``), the PEM
    private key, and the key loaded from it (once: loading an RSA key
    checks it, some 40 ms of CPU that must not be spent per message).
    """

    domain: str
    selector: str
    pem: bytes
    key: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.key is None:
            object.__setattr__(self, "key", serialization.load_pem_private_key(self.pem, password=None))

    def __repr__(self) -> str:
        return f"DKIMKey({self.domain!r}, {self.selector!r})"


def parseDKIMOption(text: str) -> DKIMKey:
    """
    ``DOMAIN:SELECTOR:KEYFILE``: the key file read and checked now.

    :raise ValueError: with a sentence saying what is wrong.
    """
    domain, _, rest = text.partition(":")
    selector, _, path = rest.partition(":")
    domain = domain.strip().lower().rstrip(".")
    if not domain or not selector or not path or "." not in domain:
        raise ValueError(f"--dkim {text!r}: write DOMAIN:SELECTOR:KEYFILE, e.g. example.org:mail:/etc/txsmtp/dkim.pem")
    if not all(part and part.replace("-", "").replace("_", "").isalnum() for part in selector.split(".")):
        raise ValueError(f"--dkim {text!r}: the selector {selector!r} is not a DNS label")
    try:
        with open(path, "rb") as f:
            pem = f.read(1024 * 1024)
    except OSError as e:
        raise ValueError(f"--dkim {text!r}: cannot read the key file: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--dkim {text!r}: {path} is not an unencrypted PEM private key ({e})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            # RFC 8301 §3.2: verifiers refuse keys under 1024 bits.
            raise ValueError(f"--dkim {text!r}: an RSA key of {key.key_size} bits is too short (2048 advised)")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"--dkim {text!r}: a DKIM key is RSA or Ed25519")
    return DKIMKey(domain.encode("idna").decode("ascii") if not domain.isascii() else domain, selector, pem, key)


class SigningKeys:
    """The keys of ``--dkim``, found by ``From:`` domain (see the module documentation)."""

    def __init__(self, keys: Iterable[DKIMKey]) -> None:
        self.keys = list(keys)
        self._byDomain = {k.domain: k for k in self.keys}

    def keyFor(self, domain: str) -> DKIMKey | None:
        """The key for ``domain``: its own, else its closest parent's, else ``None``."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            key = self._byDomain.get(".".join(labels[i:]))
            if key is not None:
                return key
        return None

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __repr__(self) -> str:
        return f"SigningKeys({self.keys!r})"


class SigningFilter(MessageFilter):
    """
    Signs the message going by with the key for its ``From:`` domain, if
    any, and puts the ``DKIM-Signature:`` in the envelope's
    :attr:`~txsmtp.envelope.Envelope.addedHeaders`.

    :param keys: the :class:`SigningKeys`.
    :param clock: for the signature's ``t=``.
    """

    def __init__(self, inner: Any, envelope: Envelope, keys: SigningKeys, clock: Any) -> None:
        super().__init__(inner, envelope)
        self.keys = keys
        self.clock = clock
        self.signer: DKIMSigner | None = None

    def headers(self, section: bytes) -> bytes:
        domain = fromDomain(section)
        key = self.keys.keyFor(domain) if domain else None
        if key is None:
            _log.info(
                "{queueId}: not DKIM-signed: no key for the From: domain {domain}",
                queueId=self.envelope.queueId,
                domain=domain or "(none, or several From: addresses)",
            )
            return section
        try:
            signer = DKIMSigner(key.domain, key.selector, key.key, timestamp=int(self.clock.seconds()))
            signer.feed(section)
        except DKIMSignError as e:
            _log.warn("{queueId}: not DKIM-signed: {error}", queueId=self.envelope.queueId, error=str(e))
            return section
        self.signer = signer
        return section

    def body(self, chunk: bytes) -> None:
        if self.signer is not None:
            self.signer.feed(chunk)

    def done(self) -> None:
        if self.overflowed:
            _log.warn("{queueId}: not DKIM-signed: the header section is too long", queueId=self.envelope.queueId)
            return
        if self.signer is None:
            return
        try:
            signature = self.signer.signature()
        except DKIMSignError as e:
            _log.warn("{queueId}: not DKIM-signed: {error}", queueId=self.envelope.queueId, error=str(e))
            return
        self.envelope.addedHeaders.insert(0, signature)


def signingFilter(keys: SigningKeys, clock: Any) -> Any:
    """
    The filter for :class:`~txsmtp.queue.relay.RelayDelivery`'s
    ``filters``: sign what trusted sessions send.
    """

    def make(receiver: Any, envelope: Envelope, trusted: bool) -> Any:
        return SigningFilter(receiver, envelope, keys, clock) if trusted else receiver

    return make
