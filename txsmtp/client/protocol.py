"""
The client protocol: :class:`ESMTPClient` and :class:`LMTPClient`.

The protocol is glue around a :class:`~txsmtp.client.pipeline.Pipeline`,
which holds the replies owed and decides what each means.  The protocol
does the I/O: it hands the pipeline the bytes it reads, writes what the
pipeline and the session set-up (:mod:`txsmtp.client.session`) produced in
one write at the end of each event, streams message bodies, starts TLS and
keeps the timer.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from twisted.internet import defer
from twisted.internet import error as ineterror
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp import saslclient
from txsmtp._io import canWriteDirectly, writeNow
from txsmtp.client._producer import _MessageProducer
from txsmtp.client.errors import (
    SendResult,
    SMTPClientError,
    SMTPConnectError,
    SMTPConnectionLost,
    SMTPTimeoutError,
    SMTPTLSError,
    SMTPUnsupportedError,
    _reasonText,
    _tlsFailureText,
)
from txsmtp.client.message import OutgoingMessage, encodeWhole
from txsmtp.client.options import ClientOptions, TLSPolicy
from txsmtp.client.pipeline import Pipeline, Transaction
from txsmtp.client.session import _SessionSetup, _State
from txsmtp.tls import tlsInfo
from txsmtp.wire.reply import Reply

if TYPE_CHECKING:
    from txsmtp.client.mailer import SMTPClientFactory

__all__ = ["ESMTPClient", "LMTPClient"]

#: Messages held as bytes up to this size go out in one write; larger ones
#: are streamed like files, so the data-block timeout measures progress.
_ONE_WRITE = 1 << 20


class _Sink:
    """What the pipeline calls: the protocol's own methods, bound once."""

    __slots__ = ("write", "sendData", "stopData", "transactionDone", "fatal")

    def __init__(self, protocol: ESMTPClient) -> None:
        # The protocol's list of pending writes (never replaced, only cleared).
        self.write = protocol._out.append
        self.sendData = protocol._sendData
        self.stopData = protocol._stopData
        self.transactionDone = protocol._transactionDone
        self.fatal = protocol._fatal


@implementer(IHandshakeListener)
class ESMTPClient(_SessionSetup, Protocol):
    """
    One client connection to an SMTP server.

    Made by :class:`~txsmtp.client.SMTPClientFactory`, which gives it its
    :class:`~txsmtp.client.ClientOptions`.  Use :attr:`ready`,
    :meth:`sendMessage` and :meth:`quit`; subclasses may override
    :meth:`chooseMechanism`, :meth:`mailParameters` and
    :meth:`helloReceived`.

    :ivar ready: a Deferred that fires with this protocol once the session
        is set up (greeting, EHLO, STARTTLS, AUTH) or fails with a
        :class:`~txsmtp.client.SMTPClientError`.
    :ivar extensions: the server's EHLO keywords (upper case) and their
        parameters, as learnt after the last EHLO.
    :ivar tls: whether the connection is encrypted.
    :ivar authenticated: the mechanism used to log in, or ``None``.
    """

    #: The greeting verb; LMTP uses LHLO.
    helloVerb: ClassVar[bytes] = b"EHLO"
    #: Whether one reply per recipient follows the data (LMTP).
    perRecipientReplies: ClassVar[bool] = False

    factory: SMTPClientFactory | None = None

    def __init__(self, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        self.clock = self.options.reactor
        self.ready: defer.Deferred[ESMTPClient] = defer.Deferred()
        self.extensions: dict[str, str] = {}
        self.tls = False
        #: the TLS version once the handshake completed
        self.tlsVersion: str | None = None
        self.authenticated: str | None = None
        self.state = _State.CONNECTING
        self.esmtp = True
        t = self.options.timeouts
        self._out: list[bytes] = []
        self._pipeline = Pipeline(
            _Sink(self),
            t,
            perRecipient=self.perRecipientReplies,
            peer=self._peerName(),
            maxReplyLength=self.options.maxReplyLength,
        )
        self._headSince = 0.0
        self._timer: Any = None
        self._tick = min(t.greeting, t.command, t.mail, t.rcpt, t.data, t.block, t.final, t.quit)
        self._idleSince = 0.0
        self._idleTimeout: float | None = None
        self._discard = False
        self._mechanism: saslclient.ClientMechanism | None = None
        # AUTH: an initial response too long for the AUTH line, sent after
        # the first 334 (RFC 4954 §4).
        self._pendingInitial: bytes | None = None
        self._streaming: _MessageProducer | None = None
        self._progressAt = 0.0
        self._closeWaiters: list[defer.Deferred[None]] = []
        self._timedOut = False
        self._error: SMTPClientError | None = None
        self._heloTried = False
        self._tlsStarting = False
        self._sizeLimit: int | None = None
        self._direct = False

    # -- Twisted protocol -------------------------------------------------

    def connectionMade(self) -> None:
        self._direct = canWriteDirectly(self.transport)
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            # The client gathers each burst (a pipelined group, the end of a
            # message with the next one's commands) into one write itself;
            # Nagle's algorithm would hold a short write that follows a
            # longer one until the peer's delayed acknowledgement, some
            # 40 ms, on every message.
            try:
                setNoDelay(True)
            except OSError:
                pass
        self.state = _State.GREETING
        if self.options.implicitTLS:
            self._startTLS()
        # The greeting is owed as if a command had been sent.
        self._pipeline.owed.append((self._onGreeting, self.options.timeouts.greeting, None))
        self._headSince = self.clock.seconds()
        if self._timer is None:
            self._arm(self.options.timeouts.greeting)

    def dataReceived(self, data: bytes) -> None:
        if self._discard:
            return
        if self._pipeline.feed(data):
            # The wait for the next reply starts now (the timer finds out).
            self._headSince = self.clock.seconds()
            if self._out:
                self._flush(self._headSince)
        elif self._out:
            self._flush()

    def handshakeCompleted(self) -> None:
        self._tlsStarting = False
        self.tlsVersion = tlsInfo(self.transport).version or "TLS"

    def connectionLost(self, reason: Failure = ineterror.ConnectionDone) -> None:  # type: ignore[assignment]
        previous = self.state
        self.state = _State.CLOSED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pipeline = self._pipeline
        pipeline.stop()
        if self._streaming is not None:
            self._streaming.stopped = True
            self._streaming = None
        if self._error is not None:
            err = self._error
        elif self._timedOut:
            err = SMTPTimeoutError(f"{self._peerName()} did not reply in time")
        elif self._tlsStarting:
            # Under OPPORTUNISTIC a failed handshake is no verdict on the
            # message: another server (the next MX) may do better.
            err = SMTPTLSError(
                f"TLS with {self._peerName()} failed: {_tlsFailureText(reason, self.options)}",
                permanent=self.options.tls is not TLSPolicy.OPPORTUNISTIC,
            )
        elif previous in (_State.CONNECTING, _State.GREETING):
            err = SMTPConnectError(f"{self._peerName()} closed the connection before its greeting")
        else:
            err = SMTPConnectionLost(f"connection to {self._peerName()} lost: {_reasonText(reason)}")
        if not self.ready.called:
            self.ready.errback(err)
        txns = list(pipeline.txns)
        pipeline.txns.clear()
        for txn in txns:
            if txn.finalSent and isinstance(err, (SMTPConnectionLost, SMTPTimeoutError)):
                # The server may have the message: say so, so that nobody
                # sends it again blindly.
                self._messageDone(
                    txn.job,
                    type(err)(f"{err} after the end of the message was sent: it may have been delivered", afterData=True),
                )
            else:
                self._messageDone(txn.job, err)
        if self.factory is not None:
            self.factory.clientConnectionClosed(self, err if previous is not _State.QUIT else None)
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)

    # -- public API --------------------------------------------------------

    def sendMessage(
        self,
        sender: str | OutgoingMessage,
        recipients: Iterable[str] = (),
        message: bytes | BinaryIO = b"",
        **dsn: Any,
    ) -> defer.Deferred[SendResult]:
        """
        Send one message on this (idle, ready) connection.

        :param sender: the reverse-path (``""`` for ``<>``), or an
            :class:`~txsmtp.client.OutgoingMessage` (then the other
            arguments are ignored).
        :param recipients: the forward-paths.
        :param message: the message: bytes, or a binary file read from its
            current position in chunks.
        :param dsn: ``ret``, ``envid``, ``notify``, ``orcpt``,
            ``recipientParams``; see
            :meth:`~txsmtp.client.OutgoingMessage.prepare`.
        :return: a Deferred firing with a :class:`~txsmtp.client.SendResult`.
        """
        if isinstance(sender, OutgoingMessage):
            job = sender
        else:
            try:
                job = OutgoingMessage.prepare(sender, recipients, message, **dsn)
            except SMTPClientError as e:
                return defer.fail(e)
        if job.deferred is None:
            job.deferred = defer.Deferred()
        d = job.deferred
        if self.state is not _State.IDLE:
            self._messageDone(job, SMTPClientError(f"connection is not idle ({self.state.value})"))
        else:
            self._start(job)
            self._flush()
        return d

    def quit(self) -> defer.Deferred[None]:
        """
        Say QUIT (when idle) and close; the Deferred fires once the
        connection is closed.
        """
        if self.state is _State.CLOSED:
            return defer.succeed(None)
        if self.state is _State.IDLE:
            self.state = _State.QUIT
            self._pipeline.closing = True
            self._write(b"QUIT\r\n")
            self._expect(self._onQuit, self.options.timeouts.quit)
            self._flush()
        elif self.state is not _State.QUIT:
            self.transport.loseConnection()
        d: defer.Deferred[None] = defer.Deferred()
        self._closeWaiters.append(d)
        return d

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.state is not _State.CLOSED:
            self.transport.abortConnection()

    def setIdleTimeout(self, seconds: float | None) -> None:
        """Say QUIT after ``seconds`` idle (used by :class:`~txsmtp.client.Mailer`)."""
        self._idleTimeout = seconds
        if seconds is not None and seconds < self._tick:
            self._tick = seconds
            timer = self._timer
            if timer is not None and timer.active():
                # Armed for the old, longer tick: it would fire too late
                # for this timeout.  (When it fires, it works out the
                # deadlines again.)
                timer.cancel()
                self._timer = None
                self._arm(seconds)
        if self.state is _State.IDLE:
            self._becomeIdle()

    @property
    def maxMessageSize(self) -> int | None:
        """The server's SIZE limit (RFC 1870), or ``None`` when it gave none."""
        return self._sizeLimit

    # -- hooks for subclasses ---------------------------------------------

    def helloReceived(self, reply: Reply) -> None:
        """
        Called with the reply to EHLO (or HELO) once :attr:`extensions` is
        set; override to look at the server's capabilities.
        """

    def chooseMechanism(self, offered: list[str]) -> saslclient.ClientMechanism | None:
        """
        Return the SASL mechanism to log in with among ``offered``: by
        default the strongest one the credentials allow.
        """
        o = self.options
        return saslclient.chooseMechanism(
            offered,
            username=o.username or "",
            password=o.password,
            oauthToken=o.oauthToken,
            allowed=o.authMechanisms,
        )

    def mailParameters(self, job: OutgoingMessage, bdat: bool) -> bytes:
        """
        Return the parameters for MAIL FROM, each with its leading space:
        SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531) and
        the DSN ones (RFC 3461), as far as the server supports them.
        """
        ext = self.extensions
        params = b""
        if job.size is not None and "SIZE" in ext:
            params += b" SIZE=%d" % job.size
        if job.eightBit is not False and "8BITMIME" in ext:
            params += b" BODY=8BITMIME"
        if job.utf8 or (job.utf8Headers and "SMTPUTF8" in ext):
            params += b" SMTPUTF8"
        if job.mailDSN and "DSN" in ext:
            params += job.mailDSN
        if job.requireTLS:
            params += b" REQUIRETLS"
        return params

    # -- output --------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        # Commands are batched and sent by _flush, at the end of whatever
        # event produced them: a pipelined group leaves in one write.
        self._out.append(data)

    def _flush(self, now: float | None = None) -> None:
        out = self._out
        if not out or self.state is _State.CLOSED:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self._direct and self._streaming is None:
            writeNow(self.transport, data)
        else:
            # A pull producer is asked for more only when the transport's
            # buffer drains, so while one streams, everything goes through
            # that buffer.
            self.transport.write(data)
        # Only now are the replies to these commands owed.
        if self._pipeline.sent():
            self._headSince = self.clock.seconds() if now is None else now
            if self._timer is None:
                self._arm(self._pipeline.headTimeout)

    def _fatal(self, err: SMTPClientError) -> None:
        """Fail whatever is going on with ``err`` and drop the connection."""
        if self._error is None:
            self._error = err
        self._pipeline.stop()
        self._out.clear()
        self._discard = True
        if self.transport is not None and self.state is not _State.CLOSED:
            self.transport.abortConnection()

    # -- timer ----------------------------------------------------------------

    # The timer is never armed for longer than the shortest timeout
    # (``_tick``), and when it fires it works out the deadline of whatever
    # the connection waits for and re-arms for what is left.  Since every
    # deadline is at least ``_tick`` after the wait began, the timer never
    # fires late, and replies never have to touch it.

    def _arm(self, delay: float) -> None:
        self._timer = self.clock.callLater(max(0.0, min(delay, self._tick)), self._timerFired)

    def _timerFired(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        if self.state is _State.CLOSED:
            return
        pipeline = self._pipeline
        if pipeline.owed:
            deadline = self._headSince + pipeline.headTimeout
        elif self._streaming is not None:
            deadline = self._progressAt + self.options.timeouts.block
        elif self.state is _State.IDLE and self._idleTimeout is not None:
            deadline = self._idleSince + self._idleTimeout
            if now >= deadline:
                self.quit()
                return
        else:
            return
        if now >= deadline:
            self._timedOut = True
            waiting = "a reply" if pipeline.owed else "the message to be taken"
            self._fatal(SMTPTimeoutError(f"timed out waiting for {waiting} from {self._peerName()}"))
            return
        self._arm(deadline - now)

    def _becomeIdle(self) -> None:
        self.state = _State.IDLE
        self._idleSince = self.clock.seconds()
        if self._idleTimeout is not None and self._timer is None:
            self._arm(self._idleTimeout)

    # -- transactions -------------------------------------------------------

    def _start(self, job: OutgoingMessage) -> None:
        """Begin ``job``, or report why it cannot be sent on this connection."""
        try:
            self._begin(job)
        except SMTPClientError as e:
            if not self._pipeline.txns and self.factory is not None:
                self.factory.clientIdle(self)
            self._messageDone(job, e)

    def _begin(self, job: OutgoingMessage) -> None:
        ext = self.extensions
        unfit = job.unfitFor(ext, self._sizeLimit, self.tls and self.options.verifiesTLS)
        if unfit is not None:
            raise SMTPUnsupportedError(unfit.format(server=self._peerName()))
        # RFC 2033 §4.2: every LMTP server supports PIPELINING.
        pipelining = "PIPELINING" in ext or self.perRecipientReplies
        txn = Transaction(job, job.recipients, self.options.chunking and pipelining and "CHUNKING" in ext, pipelining)
        self.state = _State.TRANSACTION
        mail = b"MAIL FROM:" + job.senderPath + self.mailParameters(job, txn.bdat) + b"\r\n"
        paths = job.recipientPaths
        rcptDSN = job.rcptDSN
        if rcptDSN and "DSN" in ext:
            rcpts = [b"RCPT TO:" + path + dsn + b"\r\n" for path, dsn in zip(paths, rcptDSN, strict=True)]
        elif len(paths) == 1:
            rcpts = [b"RCPT TO:" + paths[0] + b"\r\n"]
        else:
            rcpts = [b"RCPT TO:" + path + b"\r\n" for path in paths]
        self._pipeline.begin(txn, mail, rcpts)

    def _sendData(self, txn: Transaction) -> None:
        """Write the message (the pipeline saw the 354, or BDAT needs no reply)."""
        message = txn.job.message
        if type(message) is bytes and len(message) <= _ONE_WRITE:
            body, tail = encodeWhole(message, not txn.bdat)
            out = self._out
            if txn.bdat:
                out.append(b"BDAT %d LAST\r\n" % (len(body) + len(tail)))
            out.append(body)
            out.append(tail)
            self._dataSent(txn)
            return
        if isinstance(message, bytes):
            message = io.BytesIO(message)
        producer = _MessageProducer(self, txn, message)
        txn.streaming = True
        self._streaming = producer
        self._progressAt = self.clock.seconds()
        if self._timer is None:
            self._arm(self.options.timeouts.block)
        self._flush()
        self.transport.registerProducer(producer, False)

    def _writeChunk(self, txn: Transaction, data: bytes, last: bool) -> None:
        """Called by the producer with the next piece of the encoded message."""
        self._progressAt = self.clock.seconds()
        if txn.bdat:
            if data or last:
                self._write(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b""))
                self._write(data)
                if not last:
                    self._pipeline.chunkSent(txn)
        elif data:
            self._write(data)
        if last:
            txn.streaming = False
            self._streaming = None
            self.transport.unregisterProducer()
            self._dataSent(txn)
        self._flush()

    def _stopData(self, txn: Transaction) -> None:
        """The pipeline gives up on a message being streamed (BDAT refused)."""
        producer = self._streaming
        if producer is not None and producer.txn is txn:
            producer.stopped = True
            self._streaming = None
            if self.state is not _State.CLOSED:
                self.transport.unregisterProducer()

    def _dataSent(self, txn: Transaction) -> None:
        pipeline = self._pipeline
        pipeline.dataSent(txn)
        if len(pipeline.txns) < 2 and txn.pipelined and self.factory is not None:
            # RFC 2920 §3.1: the message may start a new group, so the next
            # message's MAIL, RCPTs and DATA go out with this one's end.
            job = self.factory.nextMessage(self)
            if job is not None:
                self._start(job)

    def _transactionDone(self, txn: Transaction, outcome: SendResult | SMTPClientError) -> None:
        if type(outcome) is SendResult:
            outcome.dsn = "DSN" in self.extensions
            if self.tls:
                outcome.tls = self.tlsVersion or "TLS"
        if not self._pipeline.txns:
            self._becomeIdle()
            if self.factory is not None:
                self.factory.clientIdle(self)
        factory = self.factory
        if factory is not None:
            factory.messageDone(self, txn.job, outcome)
        else:
            _fire(txn.job, outcome)

    def _messageDone(self, job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
        if self.factory is not None:
            self.factory.messageDone(self, job, outcome)
        else:
            _fire(job, outcome)

    # -- helpers ----------------------------------------------------------

    def _heloName(self) -> str:
        if self.options.heloName:
            return self.options.heloName
        name = socket.gethostname()
        if "." in name and name.isascii() and not name.endswith(".localdomain"):
            return name
        # RFC 5321 §4.1.4: without a usable name, the address literal.
        host = self.transport.getHost() if self.transport is not None else None
        addr = getattr(host, "host", None)
        if not addr:
            return "localhost"
        return f"[IPv6:{addr}]" if ":" in addr else f"[{addr}]"

    def _peerName(self) -> str:
        o = self.options
        if o.endpoint is not None and o.host == "localhost":
            return "the server"
        return f"{o.host}:{o.port}"


class LMTPClient(ESMTPClient):
    """
    An LMTP client (RFC 2033): LHLO instead of EHLO, and after the data one
    reply per accepted recipient, each in :attr:`SendResult.recipients
    <txsmtp.client.SendResult.recipients>`.
    """

    helloVerb = b"LHLO"
    perRecipientReplies = True


def _fire(job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
    d = job.deferred
    if d is None or d.called:
        return
    if isinstance(outcome, SendResult):
        d.callback(outcome)
    else:
        d.errback(outcome)
