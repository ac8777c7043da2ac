"""
The TLS client side of DANE: :class:`DANEClientCreator`, a pyOpenSSL
connection creator (:class:`twisted.internet.interfaces.IOpenSSLClientConnectionCreator`)
that authenticates the server with TLSA records instead of certificate
authorities.

Theory of operation: OpenSSL is told to verify the peer (so that it hands
every certificate to a verify callback) but is given no trust store: its
own verdict is ignored.  The callback keeps going while OpenSSL walks the
chain from the top down; at depth 0 (the leaf, the last call) it takes the
chain the server presented and checks it with
:func:`txsmtp.tlspolicy.dane.verifyChain`.  A mismatch returns ``False``,
which makes OpenSSL abort the handshake with an alert: the SMTP client sees
an ordinary TLS handshake failure, and the delivery to this host fails
(RFC 7672 §2.2: with DANE, TLS is mandatory and authenticated).  The name
the server is asked for with SNI is the MX host name (RFC 7672 §8.1), and
TLS 1.2 is the least version offered.

When the TLSA set has no usable record (RFC 7672 §2.2, §3.1) the creator
makes TLS mandatory without checking the certificate: the caller decides
this by passing such a set; :attr:`DANEClientCreator.authenticated` says
which case applies.

What the callback found on each connection (:class:`DANEOutcome`) is kept,
as long as the connection lives, for :meth:`DANEClientCreator.outcome`
(logs, tests).  It cannot be the connection's application data: Twisted
sets that to its TLS protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from txsmtp.tlspolicy.dane import DANEVerificationError, TLSARecord, verifyChain

__all__ = ["DANEClientCreator", "DANEOutcome"]

_log = Logger(namespace="txsmtp.tlspolicy.daneclient")


@dataclass
class DANEOutcome:
    """
    What the verify callback found on one connection.

    :ivar chain: the certificates the server presented, leaf first.
    :ivar matched: the TLSA record that authenticated the server.
    :ivar error: why it was not authenticated.
    :ivar tlsProtocol: the Twisted TLS protocol of the connection.
    """

    chain: list[x509.Certificate] = field(default_factory=list)
    matched: TLSARecord | None = None
    error: str | None = None
    tlsProtocol: Any = None


@implementer(IOpenSSLClientConnectionCreator)
class DANEClientCreator:
    """
    TLS client connections to one MX host, authenticated by its TLSA records.

    :param hostname: the MX host name: sent with SNI, and the first
        reference name for DANE-TA(2) records (RFC 7672 §3.2.2).
    :param records: the host's secure TLSA records (usually
        :attr:`txsmtp.tlspolicy.dane.TLSASet.records`).
    :param referenceNames: the names a DANE-TA(2) certificate may carry
        (default: ``hostname`` alone).
    :param clientCertificate: a :class:`twisted.internet.ssl.PrivateCertificate`
        to present, or ``None``.
    """

    def __init__(
        self,
        hostname: str,
        records: Iterable[TLSARecord],
        referenceNames: Sequence[str] | None = None,
        clientCertificate: Any = None,
    ) -> None:
        self.hostname = hostname.rstrip(".").lower()
        self.records = tuple(records)
        self.referenceNames = tuple(referenceNames) if referenceNames else (self.hostname,)
        self.authenticated = any(r.usable for r in self.records)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        if clientCertificate is not None:
            context.use_certificate(clientCertificate.original)
            context.use_privatekey(clientCertificate.privateKey.original)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        self._context = context
        self._outcomes: WeakKeyDictionary[SSL.Connection, DANEOutcome] = WeakKeyDictionary()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """Make the connection for one TLS session (SNI set, outcome attached)."""
        connection = SSL.Connection(self._context, None)
        self._outcomes[connection] = DANEOutcome(tlsProtocol=tlsProtocol)
        connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_connect_state()
        return connection

    def outcome(self, connection: SSL.Connection) -> DANEOutcome | None:
        """The :class:`DANEOutcome` of a connection this creator made."""
        return self._outcomes.get(connection)

    def _verify(self, connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        outcome = self.outcome(connection)
        if outcome is None:
            return False
        # OpenSSL calls from the top of the chain down: collect, decide at 0.
        outcome.chain.insert(0, certificate.to_cryptography())
        if depth > 0:
            return True
        presented = connection.get_peer_cert_chain(as_cryptography=True) or outcome.chain
        outcome.chain = list(presented)
        if not self.authenticated:
            # Mandatory but unauthenticated TLS (RFC 7672 §2.2, §3.1).
            return True
        try:
            outcome.matched = verifyChain(self.records, outcome.chain, self.referenceNames)
        except DANEVerificationError as e:
            outcome.error = str(e)
            _log.info("DANE: {host}: {error}", host=self.hostname, error=outcome.error)
            return False
        return True
