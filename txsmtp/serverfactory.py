"""
:class:`SMTPFactory`: the settings of an SMTP server, shared by its
sessions, and the sessions' timers (one sweep for all of them) and graceful
shutdown.  :class:`txsmtp.lmtp.LMTPFactory` is the LMTP twin.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, interfaces
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from zope.interface import implementer

from txsmtp.interfaces import IDelivery
from txsmtp.sasl import MECHANISMS, usableMechanism
from txsmtp.serverevents import NO_EVENTS, ServerEvents
from txsmtp.wire.data import REJECT

if TYPE_CHECKING:
    from txsmtp.server import ESMTPServer

__all__ = ["SMTPFactory"]


class _QueueIds:
    """Short unique message identifiers: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = f"{int(time.time()) & 0xFFFFFF:06X}{secrets.token_hex(3).upper()}"
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:06X}"


@implementer(interfaces.IProtocolFactory)
class SMTPFactory(Factory):
    """
    Makes :class:`ESMTPServer` sessions that hand mail to ``delivery``.

    :param delivery: an :class:`~txsmtp.interfaces.IDelivery` provider.
    :param hostname: the name the server gives itself (greeting, EHLO,
        ``Received:``); default: this machine's fully qualified name.
    :param maxMessageSize: the largest message accepted, in octets
        (advertised with SIZE, RFC 1870).
    :param maxRecipients: recipients per transaction (RFC 5321 asks for at
        least 100).
    :param commandTimeout: seconds to wait for a command (RFC 5321
        §4.5.3.2.7: at least 5 minutes).
    :param dataTimeout: seconds to wait for the next block of a message
        (RFC 5321 §4.5.3.2.5 gives the client 3 minutes).
    :param minDataRate: during DATA, octets per second the client must
        average over each ``dataRateWindow`` seconds; ``0`` disables.
    :param bareLineEnds: ``"reject"`` (550 after the final dot) or
        ``"normalize"`` (turn bare CR and LF into CRLF).
    :param maxLineLength: the longest command line, CRLF included.
    :param maxErrors: errors in one session before ``421`` and close.
    :param tls: a TLS context factory (such as :class:`txsmtp.tls.ServerTLS`
        or :class:`twisted.internet.ssl.CertificateOptions`) to offer
        STARTTLS (RFC 3207); ``None`` offers no STARTTLS.
    :param requireTLS: refuse MAIL before STARTTLS (``530 5.7.0``).
    :param portal: a :class:`twisted.cred.portal.Portal` to offer AUTH
        (RFC 4954); see :mod:`txsmtp.auth`.  ``None`` offers no AUTH.
    :param requireAuth: refuse MAIL before AUTH (``530 5.7.0``): submission.
    :param allowInsecureAuth: offer AUTH without TLS.  Only for trusted
        transports (loopback, UNIX sockets): passwords would cross the
        network readable.
    :param authMechanisms: the SASL mechanisms to offer, strongest first
        (default: SCRAM-SHA-256, CRAM-MD5, PLAIN, LOGIN).
    :param authFailureDelay: seconds before answering the first failed AUTH;
        each further failure doubles it (at most 30 s).
    :param maxAuthFailures: failed AUTH attempts before ``421`` and close.
    :param offerRequireTLS: advertise REQUIRETLS (RFC 8689) on sessions
        under TLS.  A message sent with it has
        ``envelope.parameters.requireTLS`` set: txsmtp's own deliveries
        store it (final delivery) or keep it in the queue, which then
        delivers it only over verified TLS to a hop that offers REQUIRETLS
        too; a delivery of your own that passes mail on must do the same,
        or the factory must be built with ``offerRequireTLS=False``.
    :param clock: an :class:`~twisted.internet.interfaces.IReactorTime`
        (a :class:`~twisted.internet.task.Clock` in tests).
    """

    #: The protocol class (set by :mod:`txsmtp.server`).
    protocol: type[ESMTPServer]  # type: ignore[assignment]

    def __init__(
        self,
        delivery: IDelivery,
        hostname: str | None = None,
        *,
        maxMessageSize: int = 32 * 1024 * 1024,
        maxRecipients: int = 100,
        commandTimeout: float = 300.0,
        dataTimeout: float = 180.0,
        minDataRate: int = 256,
        dataRateWindow: float = 60.0,
        bareLineEnds: str = REJECT,
        maxLineLength: int = 512,
        maxErrors: int = 20,
        tls: Any = None,
        requireTLS: bool = False,
        portal: Any = None,
        requireAuth: bool = False,
        allowInsecureAuth: bool = False,
        authMechanisms: tuple[str, ...] | None = None,
        authFailureDelay: float = 1.0,
        maxAuthFailures: int = 3,
        offerRequireTLS: bool = True,
        clock: interfaces.IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        if hostname is None:
            import socket

            hostname = socket.getfqdn()
        if maxMessageSize < 1 or maxRecipients < 1 or maxLineLength < 512:
            raise ValueError(
                "maxMessageSize and maxRecipients must be positive; maxLineLength at least 512"
            )
        if bareLineEnds not in ("reject", "normalize"):
            raise ValueError("bareLineEnds must be 'reject' or 'normalize'")
        self.delivery = delivery
        self.hostname = hostname
        self.maxMessageSize = maxMessageSize
        self.maxRecipients = maxRecipients
        self.commandTimeout = commandTimeout
        self.dataTimeout = dataTimeout
        self.minDataRate = minDataRate
        self.dataRateWindow = dataRateWindow
        self.bareLineEnds = bareLineEnds
        self.maxLineLength = maxLineLength
        self.maxErrors = maxErrors
        self.tls = tls
        self.requireTLS = requireTLS
        self.portal = portal
        self.requireAuth = requireAuth
        self.allowInsecureAuth = allowInsecureAuth
        self.offerRequireTLS = offerRequireTLS
        #: the :class:`~txsmtp.serverevents.ServerEvents` observer (metrics, limits)
        self.events: ServerEvents = NO_EVENTS
        #: what limits AUTH attempts across connections, or ``None``: an
        #: object with ``refusal(connection)`` (an SMTPError to answer AUTH
        #: with, 421 closing, or ``None``), ``failed(connection)`` (seconds
        #: to delay the 535) and ``succeeded(connection)``
        self.authLimiter: Any = None
        if authMechanisms is None:
            authMechanisms = tuple(MECHANISMS)
        unknown = [m for m in authMechanisms if m not in MECHANISMS]
        if unknown:
            raise ValueError(
                f"unknown SASL mechanisms: {', '.join(unknown)} (known: {', '.join(MECHANISMS)})"
            )
        if portal is not None:
            # Offer only what the portal's checkers can verify.
            authMechanisms = tuple(m for m in authMechanisms if usableMechanism(m, portal))
        self.authMechanisms = tuple(authMechanisms)
        self.authFailureDelay = authFailureDelay
        self.maxAuthFailures = maxAuthFailures
        self.maxAuthLineLength = 12288
        self.clock: interfaces.IReactorTime = clock
        self.queueIds = _QueueIds()
        self.protocols: set[ESMTPServer] = set()
        self._sweeper: Any = None
        self._dateCache = (-1, "")

    #: How often, in seconds, sessions are checked for timeouts.
    timeoutResolution = 1.0

    #: Seconds a closing connection may wait for the client (TLS close_notify,
    #: unsent replies) before it is aborted.
    closeTimeout = 10.0

    def _register(self, protocol: ESMTPServer) -> None:
        self.protocols.add(protocol)
        if self._sweeper is None:
            self._sweeper = self.clock.callLater(self.timeoutResolution, self._sweep)

    def _unregister(self, protocol: ESMTPServer) -> None:
        self.protocols.discard(protocol)
        if not self.protocols and self._sweeper is not None:
            if self._sweeper.active():
                self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.clock.seconds()
        for protocol in list(self.protocols):
            protocol.checkTimeouts(now)
        if self.protocols and self._sweeper is None:
            self._sweeper = self.clock.callLater(self.timeoutResolution, self._sweep)

    def dateHeader(self) -> str:
        """The current date in RFC 5322 form, computed at most once a second."""
        now = int(self.clock.seconds())
        if self._dateCache[0] != now:
            # RFC 5322 §3.3: "+0000" for a time known to be UTC.
            self._dateCache = (now, format_datetime(datetime.fromtimestamp(now, timezone.utc)))
        return self._dateCache[1]

    def shutdown(self, grace: float = 30.0) -> Deferred[None]:
        """
        Close every connection gracefully: idle sessions at once with
        ``421 4.3.2``, sessions in a transaction once it is answered, and
        whatever is left after ``grace`` seconds by force.  Stop listening
        first (stop the listening port or service); this only handles the
        established connections.
        """
        protocols = list(self.protocols)
        if not protocols:
            return defer.succeed(None)
        waits = [p.shutdown() for p in protocols]

        def force() -> None:
            for p in list(self.protocols):
                p.forceClose()

        call = self.clock.callLater(grace, force)
        d = defer.DeferredList(waits, consumeErrors=True)

        def done(_: Any) -> None:
            if call.active():
                call.cancel()

        d.addCallback(done)
        return d  # type: ignore[return-value]
