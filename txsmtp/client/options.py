"""
How the client reaches a server and talks to it: :class:`ClientOptions`,
with its :class:`TLSPolicy` and :class:`Timeouts`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from txsmtp.client.message import _checkText, _checkToken

__all__ = ["ClientOptions", "TLSPolicy", "Timeouts"]

class TLSPolicy(enum.Enum):
    """When the client uses STARTTLS and how it checks the server."""

    #: TLS must happen, with a certificate that verifies; a server that
    #: does not offer STARTTLS is an error.
    REQUIRE = "require"
    #: The default: STARTTLS whenever the server offers it, and then the
    #: certificate must verify; plaintext only with a server that does not
    #: offer STARTTLS at all.
    VERIFY = "verify"
    #: STARTTLS whenever offered, without checking the certificate (what
    #: MTAs do between MX hosts without DANE or MTA-STS); continue in
    #: plaintext if STARTTLS is refused.
    OPPORTUNISTIC = "opportunistic"
    #: Never STARTTLS.
    NONE = "none"


@dataclass
class Timeouts:
    """
    How long, in seconds, to wait for each reply (RFC 5321 §4.5.3.2 gives
    the defaults).
    """

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0
    block: float = 180.0
    final: float = 600.0
    quit: float = 30.0


_POLICIES = {p.value: p for p in TLSPolicy}


@dataclass
class ClientOptions:
    """
    How to reach a server and how to talk to it; shared by every
    connection a :class:`SMTPClientFactory` makes.  The keyword arguments
    of :func:`sendmail` and :class:`Mailer` fill it in.

    :ivar host: the server's name or address; also the name its
        certificate is checked against unless ``tlsHostname`` is given.
    :ivar port: its port.
    :ivar endpoint: an ``IStreamClientEndpoint`` to use instead of
        ``host``/``port`` (for example a UNIX socket for LMTP).
    :ivar tls: the :class:`TLSPolicy` for STARTTLS.
    :ivar implicitTLS: start TLS as soon as the connection is made (port
        465, RFC 8314); ``None`` means "when the port is 465".
    :ivar trustRoot: the certificate authorities to trust (see
        :func:`twisted.internet.ssl.optionsForClientTLS`); ``None`` uses the
        platform's.
    :ivar tlsHostname: the name the certificate must carry.
    :ivar tlsCreator: an
        :class:`~twisted.internet.interfaces.IOpenSSLClientConnectionCreator`
        to use instead of the one ``tls`` and ``trustRoot`` describe (for
        example a :class:`txsmtp.tlspolicy.daneclient.DANEClientCreator`);
        it counts as verifying the server unless its ``authenticated``
        attribute is false.
    :ivar clientCertificate: a :class:`twisted.internet.ssl.PrivateCertificate`
        to present.
    :ivar username: log in with AUTH as this user.
    :ivar password: the password (for SCRAM-SHA-256, CRAM-MD5, PLAIN, LOGIN).
    :ivar oauthToken: an OAuth 2 bearer token (for XOAUTH2).
    :ivar allowPlaintextAuth: allow credentials over a connection without TLS.
    :ivar authMechanisms: only use these mechanisms (``None``: any, the
        strongest the server offers first).
    :ivar heloName: the name to give in EHLO; by default the host name if it
        is fully qualified, else the address literal of the local end
        (RFC 5321 §4.1.4).
    :ivar lmtp: speak LMTP (RFC 2033).
    :ivar chunking: use BDAT when the server offers CHUNKING and PIPELINING.
    :ivar timeouts: a :class:`Timeouts`.
    :ivar maxReplyLength: the most octets one reply may take.
    :ivar reactor: the reactor (also the clock for timeouts).
    """

    host: str = "localhost"
    port: int = 25
    endpoint: Any = None
    tls: TLSPolicy = TLSPolicy.VERIFY
    implicitTLS: bool | None = None
    trustRoot: Any = None
    tlsHostname: str | None = None
    tlsCreator: Any = None
    clientCertificate: Any = None
    username: str | None = None
    password: str | None = None
    oauthToken: str | None = None
    allowPlaintextAuth: bool = False
    authMechanisms: Sequence[str] | None = None
    heloName: str | None = None
    lmtp: bool = False
    chunking: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    maxReplyLength: int = 65536
    reactor: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.tls, str):
            try:
                self.tls = _POLICIES[self.tls.lower()]
            except KeyError:
                raise ValueError(f"unknown TLS policy {self.tls!r}; use one of {sorted(_POLICIES)}") from None
        if self.implicitTLS is None:
            self.implicitTLS = self.port == 465 and self.endpoint is None
        if self.heloName is not None:
            _checkToken(self.heloName, "EHLO name")
        if self.username is not None:
            _checkText(self.username, "user name")
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor

    @property
    def verifiesTLS(self) -> bool:
        """Whether a TLS session made with these options has a verified server (REQUIRETLS needs one)."""
        if self.tlsCreator is not None:
            return bool(getattr(self.tlsCreator, "authenticated", True))
        return self.tls in (TLSPolicy.REQUIRE, TLSPolicy.VERIFY)

    def tlsOptions(self) -> Any:
        """
        The client TLS options for this server: verified for
        :attr:`TLSPolicy.REQUIRE` and :attr:`TLSPolicy.VERIFY` (through
        service_identity), unverified for :attr:`TLSPolicy.OPPORTUNISTIC`;
        :attr:`tlsCreator` itself when it is set.
        """
        from twisted.internet import ssl

        if self.tlsCreator is not None:
            return self.tlsCreator
        if self.tls is TLSPolicy.OPPORTUNISTIC:
            extra = {}
            if self.clientCertificate is not None:
                extra = {
                    "privateKey": self.clientCertificate.privateKey.original,
                    "certificate": self.clientCertificate.original,
                }
            return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2, **extra)
        name = self.tlsHostname or self.host
        return ssl.optionsForClientTLS(
            name,
            trustRoot=self.trustRoot,
            clientCertificate=self.clientCertificate,
        )

