"""
Connections made and pooled: :class:`SMTPClientFactory`, :class:`Mailer`
(a bounded pool of connections to one server) and :func:`sendmail` (one
message, one connection).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO, ClassVar

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.client.errors import (
    SendResult,
    SMTPClientError,
    SMTPConnectError,
    SMTPConnectionLost,
    SMTPServerRefused,
    SMTPTLSError,
    _reasonText,
)
from txsmtp.client.message import OutgoingMessage, RecipientDSN
from txsmtp.client.options import ClientOptions
from txsmtp.client.protocol import ESMTPClient, LMTPClient, _fire
from txsmtp.client.session import _State

__all__ = ["Mailer", "SMTPClientFactory", "sendmail"]

_log = Logger(namespace="txsmtp.client")


class SMTPClientFactory(ClientFactory):
    """
    Makes client connections with shared :class:`ClientOptions`.

    Use it with any client endpoint::

        factory = SMTPClientFactory(ClientOptions(host="mail.example.com"))
        proto = await factory.connect()
        result = await proto.sendMessage("me@example.com", ["you@example.net"], message)
        await proto.quit()

    The protocol reports to its factory through three methods, which
    :class:`Mailer` overrides to run its pool: :meth:`messageDone`,
    :meth:`clientIdle` and :meth:`clientConnectionClosed`; and asks it for
    more work with :meth:`nextMessage`.
    """

    protocol: type[ESMTPClient] = ESMTPClient  # type: ignore[assignment]
    # A pool starts and stops its factory whenever its connection count
    # leaves or reaches zero: "Starting factory" lines would say nothing.
    noisy = False

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        if options.lmtp and not issubclass(self.protocol, LMTPClient):
            if self.protocol is not ESMTPClient:
                raise TypeError(f"lmtp=True needs an LMTPClient subclass, not {self.protocol.__name__}")
            self.protocol = LMTPClient

    def buildProtocol(self, addr: Any) -> ESMTPClient:  # type: ignore[override]
        proto = self.protocol(self.options)
        proto.factory = self
        return proto

    def messageDone(self, protocol: ESMTPClient, job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
        """
        A message is finished: fire its Deferred with ``outcome``.
        """
        _fire(job, outcome)

    def nextMessage(self, protocol: ESMTPClient) -> OutgoingMessage | None:
        """
        Return a message for ``protocol`` to pipeline behind the one it is
        finishing (RFC 2920 allows the next MAIL to follow the end of data),
        or ``None``.
        """
        return None

    def clientIdle(self, protocol: ESMTPClient) -> None:
        """``protocol`` finished its messages and can take another."""

    def clientConnectionClosed(self, protocol: ESMTPClient, reason: SMTPClientError | None) -> None:
        """``protocol`` closed; ``reason`` is ``None`` after a clean QUIT."""

    def endpoint(self) -> Any:
        """The endpoint connections are made with."""
        o = self.options
        if o.endpoint is not None:
            return o.endpoint
        # An address literal needs no resolver (HostnameEndpoint would use
        # a thread for it).
        if isIPAddress(o.host):
            return TCP4ClientEndpoint(o.reactor, o.host, o.port, timeout=o.timeouts.connect)
        if isIPv6Address(o.host):
            return TCP6ClientEndpoint(o.reactor, o.host, o.port, timeout=o.timeouts.connect)
        return HostnameEndpoint(o.reactor, o.host, o.port, timeout=o.timeouts.connect)

    def connect(self) -> defer.Deferred[ESMTPClient]:
        """
        Connect and set up a session: a Deferred firing with the protocol
        once it is :attr:`~ESMTPClient.ready`.
        """
        d = self.endpoint().connect(self)

        def connected(proto: ESMTPClient) -> defer.Deferred[ESMTPClient]:
            return proto.ready

        def failed(f: Failure) -> Failure:
            if f.check(SMTPClientError):
                return f
            o = self.options
            raise SMTPConnectError(f"cannot connect to {o.host}:{o.port}: {_reasonText(f)}")

        return d.addCallbacks(connected, failed)


# ---------------------------------------------------------------------------
# Mailer and sendmail


class Mailer:
    """
    A long-lived sender to one server, with a bounded pool of connections.

    :param host: the server (a smart host, a local MTA, an LMTP store).
    :param port: its port; 465 means implicit TLS.
    :param poolSize: at most this many connections at once; messages beyond
        them wait in a queue.
    :param idleTimeout: say QUIT on a connection idle this long.
    :param options: the keyword arguments of :class:`ClientOptions`.

    With PIPELINING, a connection sends the next queued message's MAIL,
    RCPT and DATA together with the end of the current message, so a busy
    connection costs one round trip per message.

    A connection that breaks is replaced, and the message it carried is
    sent again once, unless the end of the message had already gone out (the
    server may have taken it; sending again could deliver it twice).  A
    ``421`` (the server going away) is retried once too, even as the reply
    to the end of the message: a 4xx reply means the message was not taken.
    """

    #: The factory class; subclass it (or its ``protocol``) to customise.
    factoryClass: ClassVar[type[SMTPClientFactory]] = SMTPClientFactory

    def __init__(
        self, host: str, port: int = 25, *, poolSize: int = 4, idleTimeout: float = 30.0, **options: Any
    ) -> None:
        if poolSize < 1:
            raise ValueError("poolSize must be at least 1")
        self.options = ClientOptions(host=host, port=port, **options)
        self.poolSize = poolSize
        self.idleTimeout = idleTimeout
        factoryClass = type(f"Mailer{self.factoryClass.__name__}", (_MailerHooks, self.factoryClass), {})
        self._factory = factoryClass(self.options)
        self._factory.bind(self)
        self._queue: deque[OutgoingMessage] = deque()
        self._idle: list[ESMTPClient] = []
        self._busy: set[ESMTPClient] = set()
        self._quitting: set[ESMTPClient] = set()
        self._connecting = 0
        # Set when a connection fails while others are up (the server may
        # limit connections per client): no new ones until one closes.
        self._holdConnects = False
        self._closing = False
        self._closeWaiters: list[defer.Deferred[None]] = []
        self._pumping = False
        self._pumpAgain = False

    def send(
        self,
        sender: str,
        recipients: Iterable[str],
        message: bytes | BinaryIO,
        *,
        ret: str | None = None,
        envid: str | None = None,
        notify: Iterable[str] | None = None,
        orcpt: str | None = None,
        recipientParams: Sequence[RecipientDSN] | None = None,
        size: int | None = None,
        eightBit: bool | None = None,
        requireTLS: bool = False,
    ) -> defer.Deferred[SendResult]:
        """
        Send a message; see :func:`sendmail` for the arguments and the
        result, and :meth:`OutgoingMessage.prepare
        <txsmtp.client.message.OutgoingMessage.prepare>` for ``size`` and
        ``eightBit``.
        """
        if self._closing:
            return defer.fail(SMTPClientError("this Mailer is closed"))
        try:
            job = OutgoingMessage.prepare(
                sender,
                recipients,
                message,
                ret=ret,
                envid=envid,
                notify=notify,
                orcpt=orcpt,
                recipientParams=recipientParams,
                size=size,
                eightBit=eightBit,
                requireTLS=requireTLS,
            )
        except SMTPClientError as e:
            return defer.fail(e)
        d: defer.Deferred[SendResult] = defer.Deferred()
        job.deferred = d
        self._queue.append(job)
        if self._idle or not (self._holdConnects or self.connections >= self.poolSize):
            self._pump()
        # (Otherwise there is nothing to do: every connection is busy, and
        # each takes the next queued message as it finishes one.)
        return d

    def close(self) -> defer.Deferred[None]:
        """
        Stop taking messages; fire once every queued message is sent (or has
        failed) and every connection has said QUIT.
        """
        self._closing = True
        d: defer.Deferred[None] = defer.Deferred()
        self._closeWaiters.append(d)
        self._pump()
        return d

    @property
    def connections(self) -> int:
        """How many connections are open or being opened."""
        return len(self._idle) + len(self._busy) + len(self._quitting) + self._connecting

    @property
    def queued(self) -> int:
        """How many messages wait for a connection."""
        return len(self._queue)

    # -- internals --------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            # Called again from inside (a message failed at once); the outer
            # call loops.
            self._pumpAgain = True
            return
        self._pumping = True
        try:
            self._pumpAgain = True
            while self._pumpAgain:
                self._pumpAgain = False
                self._pumpOnce()
        finally:
            self._pumping = False
        self._checkClosed()

    def _pumpOnce(self) -> None:
        queue = self._queue
        idle = self._idle
        while queue and idle:
            proto = idle.pop()
            if proto.state is not _State.IDLE:
                # It timed out and is saying QUIT.
                self._quitting.add(proto)
                continue
            job = self._nextMessage(proto)
            assert job is not None
            self._busy.add(proto)
            proto.sendMessage(job)
        while queue and not self._holdConnects and self.connections < self.poolSize and self._connecting < len(queue):
            self._connect()
        if self._closing and not queue:
            while idle:
                proto = idle.pop()
                self._quitting.add(proto)
                proto.quit()

    def _connect(self) -> None:
        self._connecting += 1
        d = self._factory.connect()
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, proto: ESMTPClient) -> None:
        self._connecting -= 1
        self._holdConnects = False
        proto.setIdleTimeout(self.idleTimeout)
        if proto.state is _State.IDLE:
            self._idle.append(proto)
        self._pump()

    def _connectFailed(self, f: Failure) -> None:
        self._connecting -= 1
        err = f.value if isinstance(f.value, SMTPClientError) else SMTPConnectError(_reasonText(f))
        _log.info(
            "connection to {host}:{port} failed: {err}", host=self.options.host, port=self.options.port, err=str(err)
        )
        if err.permanent:
            # A refused session, TLS or AUTH: every message would meet it.
            while self._queue:
                _fire(self._queue.popleft(), err)
        elif self._idle or self._busy:
            # The server may limit connections per client: the open ones
            # carry on, and no new attempt until one of them closes.
            self._holdConnects = True
        elif self._queue:
            job = self._queue.popleft()
            job.attempts += 1
            # A TLS handshake that failed (opportunistic TLS) would fail the
            # same way again with the same server: no second try.
            if job.attempts < 2 and not isinstance(err, SMTPTLSError):
                self._queue.appendleft(job)
            else:
                _fire(job, err)
        self._pump()

    def _nextMessage(self, protocol: ESMTPClient) -> OutgoingMessage | None:
        if not self._queue:
            return None
        job = self._queue.popleft()
        job.attempts += 1
        return job

    def _messageDone(self, protocol: ESMTPClient, job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
        if type(outcome) is SendResult:
            d = job.deferred
            if d is not None and not d.called:
                d.callback(outcome)
            return
        if isinstance(outcome, SMTPClientError) and self._shouldRetry(job, outcome):
            # The connection broke before the end of the message went out:
            # the server has not taken it, so try once more on another.
            _log.info(
                "sending a message to {host}:{port} again after: {err}",
                host=self.options.host,
                port=self.options.port,
                err=str(outcome),
            )
            job.rewind()
            self._queue.appendleft(job)
            self._pump()
            return
        _fire(job, outcome)

    def _shouldRetry(self, job: OutgoingMessage, err: SMTPClientError) -> bool:
        if job.attempts >= 2:
            return False
        if isinstance(err, SMTPConnectionLost):
            retry = not err.afterData
        elif isinstance(err, SMTPServerRefused):
            # A 421: the server is going away and has not accepted the
            # message (a 4xx reply, even to the final dot, says so).
            retry = not err.permanent
        else:
            return False
        return retry and (isinstance(job.message, bytes) or _seekable(job.message))

    def _protocolIdle(self, proto: ESMTPClient) -> None:
        self._busy.discard(proto)
        if proto.state is _State.IDLE:
            self._idle.append(proto)
        self._pump()

    def _protocolClosed(self, proto: ESMTPClient, reason: SMTPClientError | None) -> None:
        self._busy.discard(proto)
        self._quitting.discard(proto)
        if proto in self._idle:
            self._idle.remove(proto)
        self._holdConnects = False
        self._pump()

    def _checkClosed(self) -> None:
        if not self._closing or self._queue or self.connections:
            return
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)


class _MailerHooks:
    """
    Mixed into :attr:`Mailer.factoryClass`: the factory reports to its
    Mailer.  (A subclass may still override :meth:`SMTPClientFactory.endpoint`,
    ``buildProtocol`` or ``protocol``.)
    """

    mailer: Mailer

    def bind(self, mailer: Mailer) -> None:
        """Report to ``mailer``; the two calls made for every message go to it directly."""
        self.mailer = mailer
        self.messageDone = mailer._messageDone  # type: ignore[method-assign]
        self.nextMessage = mailer._nextMessage  # type: ignore[method-assign]

    def messageDone(self, protocol: ESMTPClient, job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
        self.mailer._messageDone(protocol, job, outcome)

    def nextMessage(self, protocol: ESMTPClient) -> OutgoingMessage | None:
        return self.mailer._nextMessage(protocol)

    def clientIdle(self, protocol: ESMTPClient) -> None:
        self.mailer._protocolIdle(protocol)

    def clientConnectionClosed(self, protocol: ESMTPClient, reason: SMTPClientError | None) -> None:
        self.mailer._protocolClosed(protocol, reason)


def sendmail(
    host: str,
    sender: str,
    recipients: Iterable[str],
    message: bytes | BinaryIO,
    *,
    port: int = 25,
    ret: str | None = None,
    envid: str | None = None,
    notify: Iterable[str] | None = None,
    orcpt: str | None = None,
    recipientParams: Sequence[RecipientDSN] | None = None,
    requireTLS: bool = False,
    **options: Any,
) -> defer.Deferred[SendResult]:
    """
    Send one message to ``host`` and say QUIT.

    :param host: the server's name or address.
    :param sender: the reverse-path, e.g. ``"me@example.com"`` (``""`` for
        the null sender ``<>``).
    :param recipients: the forward-paths.
    :param message: the whole message (headers and body) as bytes, or a
        binary file, which is streamed from its current position.  Line
        ends are normalised to CRLF.
    :param port: the port; 465 means implicit TLS (RFC 8314).
    :param ret: DSN (RFC 3461): ``"FULL"`` or ``"HDRS"``.
    :param envid: DSN envelope identifier.
    :param notify: DSN ``NOTIFY`` for every recipient.
    :param orcpt: DSN original recipient.
    :param recipientParams: instead of ``notify`` and ``orcpt``, one
        ``(notify, orcpt)`` pair per recipient (see
        :meth:`OutgoingMessage.prepare`).
    :param requireTLS: send with REQUIRETLS (RFC 8689): only over TLS with
        a verified certificate, to a server that offers it.
    :param options: the other keyword arguments of :class:`ClientOptions`:
        ``tls``, ``trustRoot``, ``username``, ``password``, ``lmtp``, ...
    :return: a Deferred firing with a :class:`SendResult` once the message
        is accepted for at least one recipient and the connection is closed;
        it fails with a :class:`SMTPClientError` otherwise.
    """
    mailer = Mailer(host, port, poolSize=1, **options)
    d = mailer.send(
        sender,
        recipients,
        message,
        ret=ret,
        envid=envid,
        notify=notify,
        orcpt=orcpt,
        recipientParams=recipientParams,
        requireTLS=requireTLS,
    )
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    closed = mailer.close()
    return closed.addCallback(lambda _: outcome[0])


# ---------------------------------------------------------------------------


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False
