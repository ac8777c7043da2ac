"""
The ESMTP server protocol and its factory.

Theory of operation
===================

:class:`ESMTPServer` is an explicit state machine over :class:`State`::

    INITIAL --EHLO/HELO--> READY --MAIL--> MAIL --RCPT--> RCPT --DATA--> DATA
       ^                     ^                                             |
       |                     +-------- final dot answered, RSET -----------+
    (STARTTLS resets here)

``DATA`` is the only state in which input is not split into lines: bytes go
to a :class:`~txsmtp.wire.data.DataDecoder` and straight on to the
delivery's receiver, so a message is never held whole.

Input is processed strictly in order.  A delivery hook may answer later (a
Deferred or a coroutine): the protocol is then *blocked*; later input waits
in the line reader (bounded: the transport is paused when too much
accumulates) and processing resumes when the hook answers.

Replies are collected in a list and written in one ``write`` when the input
is drained, that is when every complete command received so far has been
answered.  This is what RFC 2920 (PIPELINING) asks of a server, and it is
also what makes the common non-pipelined case cost one write per command.

Adding a command takes a method ``do_VERB(self, argument: bytes)``; adding
an extension keyword takes an override of :meth:`ESMTPServer.extensions`.
:class:`State` and :attr:`ESMTPServer.allowedStates` make the sequencing
rules for new commands one line each.
"""

from __future__ import annotations

import base64
import binascii
import enum
import inspect
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, ClassVar

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer, interfaces
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp._io import canWriteDirectly, writeNow
from txsmtp._proxy import compactPeer, forwardHandshake, pendingProxyHeader, whenProxyHeaderRead
from txsmtp.envelope import ConnectionInfo, Envelope, Recipient, TLSInfo
from txsmtp.errors import SMTPError
from txsmtp.interfaces import IDelivery, IDeliverySession
from txsmtp.sasl import (
    MECHANISMS,
    Challenge,
    IScramCredentials,
    IScramKeyStore,
    NeedKeys,
    SASLError,
    ScramSHA256,
    usableMechanism,
)
from txsmtp.tls import tlsInfo
from txsmtp.wire.address import parsePath, splitPathAndParameters
from txsmtp.wire.data import REJECT, ChunkDecoder, DataDecoder
from txsmtp.wire.lines import TOO_LONG, LineReader
from txsmtp.wire.params import (
    MAIL_KEYWORDS,
    RCPT_KEYWORDS,
    MailParameters,
    parseMailParameters,
    parseRecipientParameters,
)
from txsmtp.wire.reply import formatReply

__all__ = ["ESMTPServer", "SMTPFactory", "State"]

_log = Logger(namespace="txsmtp.server")


class State(enum.Enum):
    """The states of an SMTP server session."""

    #: Connected; no EHLO/HELO yet.
    INITIAL = "initial"
    #: Greeted; no transaction.
    READY = "ready"
    #: MAIL accepted; no recipient yet.
    MAIL = "mail"
    #: At least one recipient accepted.
    RCPT = "rcpt"
    #: Reading the message after ``354``.
    DATA = "data"
    #: BDAT chunks received, more to come (RFC 3030).
    BDAT = "bdat"
    #: Inside an AUTH exchange: lines are SASL responses, not commands.
    AUTH = "auth"
    #: The delivery refused the connection; only QUIT is useful.
    REFUSED = "refused"
    #: QUIT answered, or closing for another reason.
    CLOSED = "closed"


#: ``BDAT chunk-size [LAST]`` (RFC 3030 §2); the size has at most 18 digits.
_BDAT = re.compile(rb" *([0-9]{1,18})( +LAST)? *", re.IGNORECASE)

_PAUSE_INPUT = 1
_PAUSE_RECEIVER = 2
_PAUSE_OUTPUT = 4



def _callQuietly(function: Callable[[], Any], what: str) -> None:
    """Call a clean-up function; log (never raise) what it raises."""
    try:
        function()
    except Exception:
        _log.failure("{what} failed", what=what)


def _asDeferred(result: object) -> Deferred[Any] | None:
    """A hook's Deferred or coroutine as a Deferred; ``None`` for a plain value."""
    if isinstance(result, Deferred):
        return result
    if inspect.iscoroutine(result):
        return defer.ensureDeferred(result)
    return None


class _QueueIds:
    """Short unique message identifiers: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = f"{int(time.time()) & 0xFFFFFF:06X}{secrets.token_hex(3).upper()}"
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:06X}"


@implementer(interfaces.IHandshakeListener, interfaces.IPushProducer)
class ESMTPServer(Protocol):
    """
    One ESMTP server session.

    Configuration comes from the :class:`SMTPFactory` (``self.factory``).
    Subclasses add commands with ``do_VERB`` methods and extensions by
    overriding :meth:`extensions`; the rest of the public surface is
    :meth:`reply`, :meth:`resetTransaction`, :attr:`state`,
    :attr:`connection` and :attr:`session`.
    """

    #: The states in which a command may be used.  A command missing from
    #: this mapping is allowed in every state but DATA.  A command used in
    #: another state is answered ``503 5.5.1``.
    allowedStates: ClassVar[dict[str, frozenset[State]]] = {
        "MAIL": frozenset({State.READY}),
        "RCPT": frozenset({State.MAIL, State.RCPT}),
        "DATA": frozenset({State.MAIL, State.RCPT}),
        "AUTH": frozenset({State.READY}),
        "STARTTLS": frozenset({State.INITIAL, State.READY, State.MAIL, State.RCPT}),
    }

    #: MAIL and RCPT parameter keywords this protocol understands.
    #: (AUTH= only when a portal is configured; DSN's RET, ENVID, NOTIFY and
    #: ORCPT always, RFC 3461.)
    mailKeywords: ClassVar[frozenset[str]] = MAIL_KEYWORDS - {"AUTH"}
    rcptKeywords: ClassVar[frozenset[str]] = RCPT_KEYWORDS

    #: The word in ``Received: ... with`` (RFC 3848), before S/A suffixes.
    receivedProtocol = "ESMTP"

    #: The reply to DATA or BDAT when no recipient was accepted (RFC 5321
    #: §3.3 allows 503 or 554; LMTP asks for 503).
    noRecipientsCode = 554

    #: Pause reading when this many octets of pipelined input wait unprocessed.
    maxPendingInput = 256 * 1024

    #: On a plain TCP transport with nothing queued, hand replies to the
    #: socket at once instead of waiting for the reactor's next write cycle.
    directWrites = True

    factory: SMTPFactory
    state: State
    session: Any
    connection: ConnectionInfo
    envelope: Envelope | None

    # Slots keep an idle session small (a few hundred octets instead of a
    # dict of forty entries).  Subclasses without __slots__ get a __dict__
    # as usual for their own attributes.
    __slots__ = (
        "factory", "transport", "connected", "state", "session", "envelope", "connection",
        "_out", "_blocked", "_paused", "_errors", "_receiver", "_decoder", "_dataError", "_writesPending",
        "_blockedOnWrites", "_messageSize", "_timeoutValue", "_lastActivity", "_dataStarted", "_rateBytes",
        "_shuttingDown", "_disconnected", "_closeDeferreds", "_directWrites", "_mechanism", "_pendingLogin",
        "_authFailures", "_anonymousSession", "_logout", "_lines", "_clock", "_handshakePending", "_closingSince",
        "_chunkLeft", "_chunkLast", "_chunkSize", "_chunkDecoder", "_chunkError",
    )  # fmt: skip

    def __init__(self) -> None:
        self.factory = None  # type: ignore[assignment]
        self.transport = None
        self.connected = 0
        self.state = State.INITIAL
        self.session = None
        self.envelope = None
        self._out: list[bytes] = []
        self._blocked = 0
        self._paused = 0
        self._errors = 0
        self._receiver: Any = None
        self._decoder: DataDecoder | None = None
        self._dataError: SMTPError | None = None
        self._writesPending = 0
        self._blockedOnWrites = False
        self._messageSize = 0
        self._timeoutValue = 0.0
        self._lastActivity = 0.0
        self._dataStarted = 0.0
        self._rateBytes = 0
        self._shuttingDown = False
        self._disconnected = False
        self._closeDeferreds: list[Deferred[None]] | None = None
        self._directWrites = False
        self._mechanism: Any = None
        self._pendingLogin: Any = None
        self._handshakePending = False
        self._closingSince = 0.0
        self._authFailures = 0
        self._anonymousSession: Any = None
        self._logout: Any = None
        # BDAT: octets of the current chunk still to read, whether it is the
        # last, its size, the checker of the transaction's octets, and the
        # reply owed for a chunk that is read only to be thrown away.
        self._chunkLeft = 0
        self._chunkLast = False
        self._chunkSize = 0
        self._chunkDecoder: ChunkDecoder | None = None
        self._chunkError: SMTPError | None = None

    # -- connection life -----------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self._directWrites = self.directWrites and canWriteDirectly(self.transport)
        self._lines = LineReader(f.maxLineLength)
        self._clock = f.clock
        self.connection = ConnectionInfo(
            self.transport.getPeer(), None, self.receivedProtocol[-4:], f.queueIds.next(), self.transport
        )
        if interfaces.ISSLTransport.providedBy(self.transport):
            # Implicit TLS (port 465): the facts arrive with handshakeCompleted.
            self.connection.tls = TLSInfo()
            self._handshakePending = True
        f._register(self)
        if self._directWrites:
            # On plain TCP the session is the producer of its own replies: a
            # client that pipelines commands but never reads the answers
            # fills the transport's buffer, and Twisted then pauses us (we
            # stop reading).  Not under TLS, where a paused reader would
            # stall the handshake.
            self.transport.registerProducer(self, True)
        self._setTimeout(f.commandTimeout)
        proxy = pendingProxyHeader(self.transport)
        if proxy is not None:
            # Behind a PROXY-protocol listener: no greeting and no session
            # before the header names the client.
            whenProxyHeaderRead(proxy, self._proxyHeaderRead)
            return
        self._hook("openSession", f.delivery.openSession, (self.connection,), self._sessionOpened)
        if not self._blocked:
            self._flush()

    def _proxyHeaderRead(self) -> None:
        self.connection.peer = compactPeer(self.transport.getPeer())
        self._lastActivity = self._clock.seconds()
        self._hook("openSession", self.factory.delivery.openSession, (self.connection,), self._sessionOpened)
        if not self._blocked:
            self._flush()

    def _sessionOpened(self, session: Any, failure: Failure | None) -> None:
        if failure is not None:
            err = self._errorFromFailure(failure, "opening a session")
            self.state = State.REFUSED
            self._send(formatReply(err.code, f"{self.factory.hostname} {err.text}"))
            self._logRefusal("connect", err)
            return
        self.session = session
        self._send(formatReply(220, self.greeting()))

    def greeting(self) -> str:
        """The text of the ``220`` greeting."""
        return f"{self.factory.hostname} ESMTP txsmtp ready"

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._lastActivity = self._clock.seconds()
        if self._blocked:
            self._lines.feed(data)
        elif self._decoder is not None:
            self._dataChunk(data)
        elif self._chunkLeft:
            self._bdatOctets(data)
        else:
            self._lines.feed(data)
        self._process()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._disconnected = True
        if self._handshakePending:
            # Worth seeing for an MX: a sender that cannot do TLS with us.
            _log.info(
                "{text}",
                text=f"TLS handshake with {self.connection.peerHost} did not complete: "
                f"{reason.getErrorMessage() if reason is not None else 'connection closed'}",
                peer=self.connection.peerHost,
                session=self.connection.sessionId,
            )
        self._cancelTimeouts()
        if self._receiver is not None:
            self._abortReceiver("client disconnected")
            if self.envelope is not None:
                self._logTransaction("disconnected", None)
        self.state = State.CLOSED
        self.factory._unregister(self)
        if self._mechanism is not None:
            self._authDone()
        # An authenticated session's avatar is closed by its logout; the
        # anonymous session it replaced, and any other session, by close().
        logout, self._logout = self._logout, None
        anonymous, self._anonymousSession = self._anonymousSession, None
        session, self.session = self.session, None
        if logout is not None:
            _callQuietly(logout, "avatar logout")
        elif session is not None:
            _callQuietly(session.close, "delivery session close()")
        if anonymous is not None and anonymous is not session:
            _callQuietly(anonymous.close, "delivery session close()")
        waiting, self._closeDeferreds = self._closeDeferreds, None
        for d in waiting or ():
            d.callback(None)

    # -- processing ------------------------------------------------------------

    def _process(self) -> None:
        """Handle buffered input until it runs out or a hook makes us wait."""
        lines = self._lines
        while not self._blocked and self.state is not State.CLOSED:
            if self._decoder is not None:
                rest = lines.takeRest()
                if not rest:
                    break
                self._dataChunk(rest)
                continue
            if self._chunkLeft:
                rest = lines.takeRest()
                if not rest:
                    break
                self._bdatOctets(rest)
                continue
            line = lines.readLine()
            if line is None:
                break
            if line is TOO_LONG:
                if self.state is State.AUTH:
                    self._authDone()
                    self._commandError(500, "5.5.6", "Authentication exchange line is too long")
                    continue
                self._commandError(500, "5.5.2", f"Line too long (at most {lines.maxLength} octets including CRLF)")
                continue
            self.lineReceived(line)  # type: ignore[arg-type]
        if not self._blocked:
            self._flush()
            if self._paused & _PAUSE_INPUT:
                self._resume(_PAUSE_INPUT)
        elif lines.pending() > self.maxPendingInput:
            self._pause(_PAUSE_INPUT)

    def lineReceived(self, line: bytes) -> None:
        """Dispatch one command line."""
        if self.state is State.AUTH:
            self._authResponse(line)
            return
        verb, _, argument = line.partition(b" ")
        entry = self._dispatch.get(verb)
        if entry is None:
            # Not spelled as the table has it: mixed case, or not a command.
            try:
                name = verb.decode("ascii").upper()
            except UnicodeDecodeError:
                name = ""
            entry = self._dispatch.get(name.encode("ascii"))
            if entry is None:
                if b"\r" in line or b"\n" in line:
                    self._commandError(500, "5.5.2", "Syntax error: bare CR or LF in a command (lines end with CRLF)")
                elif name.isalpha():
                    self._commandError(500, "5.5.1", f"Command not recognized: {name[:20]}")
                else:
                    self._commandError(500, "5.5.2", "Syntax error: command not recognized")
                return
        name, handler, states = entry
        if b"\r" in argument or b"\n" in argument or b"\0" in argument:
            self._commandError(500, "5.5.2", "Syntax error: bare CR or LF in a command (lines end with CRLF)")
            return
        state = self.state
        if state is State.REFUSED and name != "QUIT":
            self._commandError(503, "5.5.1", "Service refused; only QUIT is accepted")
            return
        if states is not None and state not in states:
            self._sequenceError(name)
            return
        handler(self, argument)

    def _sequenceError(self, name: str) -> None:
        state = self.state
        if state is State.INITIAL:
            text = f"Send EHLO or HELO first (before {name})"
        elif name == "MAIL":
            text = "Sender already given; send RSET to start over"
        elif state in (State.MAIL, State.RCPT):
            text = f"{name} is not allowed during a mail transaction; send RSET first"
        else:
            text = f"Bad sequence of commands: {name} needs MAIL first"
        self._commandError(503, "5.5.1", text)

    def _commandError(self, code: int, enhanced: str, text: str) -> None:
        self.reply(code, enhanced, text)
        self._errors += 1
        self._logRefusal("command", SMTPError(code, enhanced, text))
        if self._errors >= self.factory.maxErrors:
            self.reply(421, "4.7.0", f"{self.factory.hostname} Too many errors, closing connection")
            self._close()

    # -- replies ---------------------------------------------------------------

    def reply(self, code: int, enhanced: str | None, text: str | list[str]) -> None:
        """
        Queue a reply; it is written when the input is drained.

        :param enhanced: the enhanced status code, or ``None`` for none.
        :param text: a line, or a list of lines for a multi-line reply.
        """
        self._out.append(formatReply(code, text, enhanced))

    def replyError(self, error: SMTPError) -> None:
        """Queue the reply an :class:`~txsmtp.errors.SMTPError` describes."""
        enhanced = error.enhanced or f"{error.code // 100}.0.0"
        self._out.append(formatReply(error.code, error.text, enhanced))

    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        if self._directWrites:
            # Saves the reactor a writability round trip per reply batch.
            writeNow(self.transport, data)
        else:
            self.transport.write(data)

    def _close(self) -> None:
        """Write what is queued and close once it is sent."""
        self._flush()
        self.state = State.CLOSED
        self._cancelTimeouts()
        self._closingSince = self._clock.seconds()
        if getattr(self.transport, "producer", None) is self:
            # A registered producer would keep Twisted from closing once the
            # buffer drains.
            self.transport.unregisterProducer()
        if self._handshakePending:
            # A TLS handshake that never finished: nothing can be said to
            # this client, and a graceful close would wait for it forever.
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- waiting for hooks -----------------------------------------------------

    def _block(self) -> None:
        self._blocked += 1

    def _unblock(self) -> None:
        self._blocked -= 1
        if not self._blocked:
            # The client was waiting for us, not idle: its clock restarts now.
            self._lastActivity = self._clock.seconds()

    def _hook(
        self, what: str, hook: Callable[..., Any], args: tuple[Any, ...], then: Callable[[Any, Failure | None], None]
    ) -> None:
        """
        Run a delivery hook and continue with ``then(value, None)`` or
        ``then(None, failure)``.  A hook that answers at once costs nothing
        more; a Deferred or coroutine blocks processing until it fires.
        """
        try:
            result = hook(*args)
        except Exception:
            then(None, Failure())
            return
        d = _asDeferred(result)
        if d is None:
            then(result, None)
            return
        self._block()
        sync = []

        def done(value: Any) -> None:
            self._unblock()
            if self._disconnected:
                if isinstance(value, Failure) and not value.check(SMTPError):
                    _log.failure("delivery {what} failed after the client left", value, what=what)
                return
            if isinstance(value, Failure):
                then(None, value)
            else:
                then(value, None)
            if sync:
                # Fired later, from the reactor: resume where input stopped.
                self._process()

        d.addBoth(done)
        sync.append(True)

    def _errorFromFailure(self, failure: Failure, what: str) -> SMTPError:
        if failure.check(SMTPError):
            return failure.value  # type: ignore[return-value]
        _log.failure(
            "{what} failed in the delivery for {peer}; the client gets a temporary failure",
            failure,
            what=what,
            peer=self.connection.peerHost,
        )
        return SMTPError(451, "4.3.0", "Local error in processing; try again later")

    def _pause(self, reason: int) -> None:
        if not self._paused:
            self.transport.pauseProducing()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        self._paused &= ~reason
        if not self._paused and not self._disconnected and self.state is not State.CLOSED:
            self.transport.resumeProducing()

    # IPushProducer, for the transport's output buffer.

    def pauseProducing(self) -> None:
        """The client is not reading its replies: stop reading its commands."""
        self._pause(_PAUSE_OUTPUT)

    def resumeProducing(self) -> None:
        """The replies have drained: read commands again."""
        if self._paused & _PAUSE_OUTPUT:
            self._resume(_PAUSE_OUTPUT)

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the rest."""

    # -- timeouts --------------------------------------------------------------

    # No timer per connection: the factory sweeps its sessions once every
    # ``timeoutResolution`` seconds and calls checkTimeouts().  Input only
    # records the time of the last read.  That keeps an idle session small
    # and a busy one free of timer bookkeeping.

    def _setTimeout(self, seconds: float) -> None:
        """Use ``seconds`` as the idle timeout from now on."""
        self._lastActivity = self._clock.seconds()
        self._timeoutValue = seconds

    def checkTimeouts(self, now: float) -> None:
        """
        Close the session if the client has been idle too long, or sends its
        message too slowly.  Called by the factory's sweep.
        """
        if self._disconnected:
            return
        if self.state is State.CLOSED:
            # Closing: under TLS, Twisted waits for the client's close_notify
            # before it closes the socket.  RFC 5321 §3.8 has the server
            # close, so a client that never answers is cut off.
            if now - self._closingSince >= self.factory.closeTimeout:
                self.transport.abortConnection()
            return
        if self._blocked or self._writesPending:
            # Waiting for the delivery (a hook, or back-pressure from the
            # receiver): the client is not idle by its own choice.
            return
        if now >= self._lastActivity + self._timeoutValue:
            self.timeoutConnection()
            return
        f = self.factory
        if (self._decoder is not None or self._chunkLeft) and f.minDataRate:
            # RFC 5321 gives a data block 3 minutes; a client trickling a few
            # octets a minute could hold a session for days.  Ask for an
            # average rate once the first window has passed.
            elapsed = now - self._dataStarted
            if elapsed >= f.dataRateWindow and self._rateBytes < f.minDataRate * elapsed:
                self._giveUp(f"{f.hostname} Data arriving too slowly, closing connection", "data too slow")

    def _cancelTimeouts(self) -> None:
        self._timeoutValue = float("inf")

    def timeoutConnection(self) -> None:
        """The client said nothing for too long: ``421 4.4.2`` and close."""
        self._giveUp(f"{self.factory.hostname} Timeout waiting for the client, closing connection", "timeout")

    def _giveUp(self, text: str, why: str, enhanced: str = "4.4.2") -> None:
        _log.info("closing connection from {peer}: {why}", peer=self.connection.peerHost, why=why, session=self.connection.sessionId)
        if self._receiver is not None:
            self._abortReceiver(why)
            if self.envelope is not None:
                self._logTransaction(why, None)
        self._out = []
        self.reply(421, enhanced, text)
        self._close()

    # -- commands --------------------------------------------------------------

    def extensions(self) -> list[str]:
        """
        The EHLO keywords to advertise, one string each.  Override and extend
        in a subclass to add an extension.
        """
        f = self.factory
        extensions = [
            "PIPELINING",
            f"SIZE {f.maxMessageSize}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
            "BINARYMIME",
            "DSN",
            "HELP",
        ]
        if f.tls is not None and self.connection.tls is None:
            extensions.append("STARTTLS")
        mechanisms = self.authMechanisms()
        if mechanisms:
            extensions.append("AUTH " + " ".join(mechanisms))
        return extensions

    def _greet(self, argument: bytes, verb: str, esmtp: bool) -> str | None:
        """Common part of EHLO and HELO: check the name, start afresh."""
        name = argument.strip()
        if not name or b" " in name:
            self._commandError(501, "5.5.4", f"Syntax: {verb} your.host.name")
            return None
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            self._commandError(501, "5.5.4", f"Syntax: {verb} your.host.name (not valid UTF-8)")
            return None
        self.resetTransaction()
        self.connection.heloName = text
        self.connection.esmtp = esmtp
        self.state = State.READY
        self._afterTransaction()
        return f"{self.factory.hostname} Hello {text} [{self.connection.peerHost}]"

    def do_EHLO(self, argument: bytes) -> None:
        hello = self._greet(argument, "EHLO", True)
        if hello is not None and self.state is not State.CLOSED:
            self.reply(250, None, [hello, *self.extensions()])

    def do_HELO(self, argument: bytes) -> None:
        hello = self._greet(argument, "HELO", False)
        if hello is not None and self.state is not State.CLOSED:
            self.reply(250, None, hello)

    def do_MAIL(self, argument: bytes) -> None:
        if argument[:5].upper() != b"FROM:":
            self._commandError(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
            return
        f = self.factory
        if f.requireTLS and self.connection.tls is None:
            self._commandError(530, "5.7.0", "Must issue a STARTTLS command first")
            return
        if f.requireAuth and not self.connection.authenticated:
            self._commandError(530, "5.7.0", "Authentication required")
            return
        try:
            path, rawParams = splitPathAndParameters(argument[5:])
            smtputf8 = any(p.upper() == b"SMTPUTF8" for p in rawParams)
            keywords = self.mailKeywords | {"AUTH"} if f.portal is not None else self.mailKeywords
            params = parseMailParameters(rawParams, keywords, smtputf8)
            sender = parsePath(path, utf8=params.smtputf8, nullOK=True)
            self.checkMailParameters(params)
        except SMTPError as e:
            self.replyError(e)
            self._logRefusal("MAIL", e)
            return
        if params.size is not None and params.size > f.maxMessageSize:
            e = self._tooBig()
            self.replyError(e)
            self._logRefusal("MAIL", e)
            return

        def then(value: Any, failure: Failure | None) -> None:
            if failure is not None:
                err = self._errorFromFailure(failure, "checkSender")
                self.replyError(err)
                self._logRefusal("MAIL", err, sender=sender)
                return
            self.envelope = Envelope(sender, params, self.connection)
            self.state = State.MAIL
            self.reply(250, "2.1.0", f"Sender <{sender if sender is not None else ''}> OK")

        self._hook("checkSender", self.session.checkSender, (sender, params), then)

    def checkMailParameters(self, params: MailParameters) -> None:
        """
        Validate MAIL parameters beyond their syntax; raise
        :class:`~txsmtp.errors.SMTPError` to refuse.  Subclasses that add
        parameters extend this.
        """
        if params.body == "BINARYMIME" and "CHUNKING" not in self.extensions():
            raise SMTPError(555, "5.5.4", "BODY=BINARYMIME needs CHUNKING, which this server does not offer")

    def do_RCPT(self, argument: bytes) -> None:
        if argument[:3].upper() != b"TO:":
            self._commandError(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
            return
        envelope = self.envelope
        assert envelope is not None
        f = self.factory
        try:
            path, rawParams = splitPathAndParameters(argument[3:])
            params = parseRecipientParameters(rawParams, self.rcptKeywords, envelope.parameters.smtputf8)
            address = parsePath(path, utf8=envelope.parameters.smtputf8, postmasterOK=True)
        except SMTPError as e:
            self.replyError(e)
            self._logRefusal("RCPT", e)
            return
        assert address is not None
        if len(envelope.recipients) >= f.maxRecipients:
            # RFC 5321 §4.5.3.1.10: too many recipients is 452, so the client
            # sends the rest in another transaction.
            e = SMTPError(452, "4.5.3", f"Too many recipients (at most {f.maxRecipients} per message)")
            self.replyError(e)
            self._logRefusal("RCPT", e, recipient=address)
            return
        recipient = Recipient(address, params)

        def then(value: Any, failure: Failure | None) -> None:
            if failure is not None:
                err = self._errorFromFailure(failure, "checkRecipient")
                self.replyError(err)
                self._logRefusal("RCPT", err, recipient=address)
                return
            if self.envelope is not envelope:
                return
            envelope.recipients.append(recipient)
            self.state = State.RCPT
            self.reply(250, "2.1.5", f"Recipient <{address}> OK")

        self._hook("checkRecipient", self.session.checkRecipient, (recipient, envelope), then)

    def do_DATA(self, argument: bytes) -> None:
        if argument.strip():
            self._commandError(501, "5.5.4", "Syntax: DATA takes no argument")
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.recipients:
            # RFC 5321 §3.3: 503 or 554 when no recipient was accepted; 554
            # tells a pipelining client exactly what happened.
            self._commandError(self.noRecipientsCode, "5.5.1", "No valid recipients")
            return
        if envelope.parameters.body == "BINARYMIME":
            # RFC 3030 §3: a binary body cannot be dot-stuffed; BDAT only.
            self._commandError(503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA")
            return
        envelope.queueId = self.factory.queueIds.next()
        envelope.receivedHeader = self.receivedHeader(envelope)

        def then(receiver: Any, failure: Failure | None) -> None:
            if failure is not None:
                err = self._errorFromFailure(failure, "openMessage")
                self.replyError(err)
                self._logTransaction("refused", err)
                self.resetTransaction()
                return
            self.startMessage(receiver)

        self._hook("openMessage", self.session.openMessage, (envelope,), then)

    def startMessage(self, receiver: Any) -> None:
        """
        Switch to reading a message body into ``receiver`` and answer ``354``.
        """
        f = self.factory
        assert self.envelope is not None
        self._receiver = receiver
        self._decoder = DataDecoder(f.bareLineEnds)
        self._dataError = None
        self.state = State.DATA
        self._setTimeout(f.dataTimeout)
        self._rateBytes = 0
        self._dataStarted = self._lastActivity
        self._write(self.envelope.receivedHeader)
        self.reply(354, None, "End data with <CR><LF>.<CR><LF>")

    def _write(self, chunk: bytes) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        try:
            result = receiver.write(chunk)
        except Exception:
            self._receiverFailed(Failure())
            return
        d = _asDeferred(result)
        if d is None or (d.called and not isinstance(d.result, Failure)):  # type: ignore[attr-defined]
            return
        self._writesPending += 1
        self._pause(_PAUSE_RECEIVER)

        def written(value: Any) -> None:
            self._writesPending -= 1
            if isinstance(value, Failure):
                self._receiverFailed(value)
            if not self._writesPending:
                # Time spent paused is ours: restart the idle and rate clocks.
                self._lastActivity = self._dataStarted = self._clock.seconds()
                self._rateBytes = 0
                self._resume(_PAUSE_RECEIVER)
                if self._blockedOnWrites and not self._disconnected:
                    # The end of data was seen while writes were pending.
                    self._finishMessage()
                    self._process()

        d.addBoth(written)

    def _tooBig(self) -> SMTPError:
        """RFC 1870: 552 5.3.4, for a declared SIZE or a body over the limit."""
        limit = self.factory.maxMessageSize
        return SMTPError(552, "5.3.4", f"Message too big: this server accepts at most {limit} octets")

    def _receiverFailed(self, failure: Failure) -> None:
        if self._dataError is None:
            self._dataError = self._errorFromFailure(failure, "write")
            self._abortReceiver("write failed")

    def _abortReceiver(self, why: str) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            try:
                receiver.abort(why)
            except Exception:
                _log.failure("receiver abort() failed")

    def _dataChunk(self, data: bytes) -> None:
        decoder = self._decoder
        assert decoder is not None
        body = decoder.feed(data)
        self._rateBytes += len(data)
        if body and self._dataError is None:
            f = self.factory
            if decoder.bareLineEnd:
                self._dataError = SMTPError(
                    550, "5.6.0", "Message refused: bare CR or LF in the body (lines must end with CRLF)"
                )
                self._abortReceiver("bare line end")
            elif decoder.size > f.maxMessageSize:
                self._dataError = self._tooBig()
                self._abortReceiver("too big")
            else:
                self._write(body)
        if decoder.done:
            self._decoder = None
            self._messageSize = decoder.size
            self._setTimeout(self.factory.commandTimeout)
            rest = decoder.rest
            if rest:
                self._lines.feed(rest)
            if self._writesPending:
                # finish() only after the receiver has taken every chunk.
                self._block()
                self._blockedOnWrites = True
            else:
                self._finishMessage()

    def _finishMessage(self) -> None:
        if self._blockedOnWrites:
            self._blockedOnWrites = False
            self._unblock()
        envelope = self.envelope
        assert envelope is not None
        size = self._messageSize
        if self._dataError is not None:
            self.messageRefused(envelope, self._dataError, size)
            self.resetTransaction()
            self._afterTransaction()
            return
        receiver, self._receiver = self._receiver, None

        def then(result: Any, failure: Failure | None) -> None:
            if failure is not None:
                self.messageRefused(envelope, self._errorFromFailure(failure, "finish"), size)
            else:
                self.messageStored(envelope, result, size)
            self.resetTransaction()
            self._afterTransaction()

        self._hook("finish", receiver.finish, (), then)

    def messageStored(self, envelope: Envelope, results: list[SMTPError | None] | None, size: int) -> None:
        """
        Answer the final dot.  ``results`` is what the receiver's ``finish``
        gave: ``None`` or one entry per recipient.  SMTP gives one reply:
        250 if any recipient got the message, else the first refusal.
        """
        if results:
            failures = [r for r in results if isinstance(r, SMTPError)]
            if len(failures) == len(envelope.recipients):
                self.replyError(failures[0])
                self._logTransaction("refused", failures[0], size)
                return
            if failures:
                # One reply cannot refuse some recipients: once 250 is said,
                # the others are the delivery's to bounce.  A delivery should
                # store all or nothing under SMTP; say loudly that it did not.
                lost = [
                    f"<{r.address}> ({result})"
                    for r, result in zip(envelope.recipients, results, strict=False)
                    if isinstance(result, SMTPError)
                ]
                _log.error(
                    "{text}",
                    text=f"message {envelope.queueId} accepted over SMTP but the delivery failed for "
                    f"{len(lost)} recipient(s), which no reply can report: {', '.join(lost)}",
                    queueId=envelope.queueId,
                )
        self.reply(250, "2.0.0", f"OK: queued as {envelope.queueId}")
        self._logTransaction("accepted", None, size)

    # -- BDAT (RFC 3030) -------------------------------------------------------
    #
    # ``BDAT n [LAST]`` is followed by exactly n octets, which are read
    # whatever happens to them: a chunk refused (no transaction, no
    # recipient, the message already too big) is still consumed, so the
    # next command is read where the client put it.  The octets go through
    # a ChunkDecoder (the bare CR/LF policy of DATA) to the same receiver
    # DATA uses.  Each chunk gets its reply once its octets are in; the
    # last one gets the reply to the message.

    def do_BDAT(self, argument: bytes) -> None:
        m = _BDAT.fullmatch(argument)
        if m is None:
            # Without a size the octets that follow cannot be told from
            # commands: the session cannot go on in step.
            self.reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]; closing the connection")
            self._logRefusal("BDAT", SMTPError(501, "5.5.4", "malformed BDAT"))
            self._close()
            return
        size = int(m.group(1))
        last = m.group(2) is not None
        state = self.state
        envelope = self.envelope
        if state not in (State.MAIL, State.RCPT, State.BDAT) or envelope is None:
            self._skipChunk(size, SMTPError(503, "5.5.1", "Bad sequence of commands: MAIL first"))
            return
        if not envelope.recipients:
            self._skipChunk(size, SMTPError(self.noRecipientsCode, "5.5.1", "No valid recipients"))
            return
        if state is State.BDAT:
            self._readChunk(size, last)
            return
        # The first chunk: open the message as DATA would.
        envelope.queueId = self.factory.queueIds.next()
        envelope.receivedHeader = self.receivedHeader(envelope)

        def then(receiver: Any, failure: Failure | None) -> None:
            if failure is not None:
                err = self._errorFromFailure(failure, "openMessage")
                self._logTransaction("refused", err)
                self.resetTransaction()
                self._skipChunk(size, err)
                return
            self._receiver = receiver
            self._dataError = None
            self._chunkDecoder = ChunkDecoder(
                self.factory.bareLineEnds, binary=envelope.parameters.body == "BINARYMIME"
            )
            self.state = State.BDAT
            self._write(envelope.receivedHeader)
            self._readChunk(size, last)

        self._hook("openMessage", self.session.openMessage, (envelope,), then)

    def _skipChunk(self, size: int, error: SMTPError) -> None:
        """Read and throw away ``size`` octets, then answer ``error``."""
        self._chunkError = error
        self._chunkLast = False
        self._startChunk(size)

    def _readChunk(self, size: int, last: bool) -> None:
        self._chunkError = None
        self._chunkLast = last
        self._startChunk(size)

    def _startChunk(self, size: int) -> None:
        self._chunkSize = size
        self._chunkLeft = size
        self._setTimeout(self.factory.dataTimeout)
        self._rateBytes = 0
        self._dataStarted = self._lastActivity
        if not size:
            self._chunkDone()

    def _bdatOctets(self, data: bytes) -> None:
        left = self._chunkLeft
        if len(data) > left:
            # The rest is the next command (pipelined): back to the reader.
            self._lines.feed(data[left:])
            data = data[:left]
        self._chunkLeft = left - len(data)
        self._rateBytes += len(data)
        decoder = self._chunkDecoder
        if decoder is not None and self._chunkError is None:
            self._chunkBody(decoder, decoder.feed(data))
        if not self._chunkLeft:
            self._chunkDone()

    def _chunkBody(self, decoder: ChunkDecoder, body: bytes) -> None:
        if not body or self._dataError is not None:
            return
        if decoder.bareLineEnd:
            self._dataError = SMTPError(
                550, "5.6.0", "Message refused: bare CR or LF in the body (lines must end with CRLF)"
            )
            self._abortReceiver("bare line end")
        elif decoder.size > self.factory.maxMessageSize:
            self._dataError = self._tooBig()
            self._abortReceiver("too big")
        else:
            self._write(body)

    def _chunkDone(self) -> None:
        self._setTimeout(self.factory.commandTimeout)
        error, self._chunkError = self._chunkError, None
        if error is not None:
            self.replyError(error)
            self._logRefusal("BDAT", error)
            return
        decoder = self._chunkDecoder
        assert decoder is not None
        if self._chunkLast:
            self._chunkBody(decoder, decoder.finish())
        if self._dataError is not None and not self._chunkLast:
            # RFC 3030 §2: the transaction fails with this chunk; later
            # chunks meet no transaction and are consumed and refused.
            err = self._dataError
            self.replyError(err)
            self._logTransaction("refused", err, decoder.size)
            self.resetTransaction()
            self._afterTransaction()
            return
        if not self._chunkLast:
            self.reply(250, "2.0.0", f"{self._chunkSize} octets received")
            return
        self._chunkDecoder = None
        self._messageSize = decoder.size
        if self._writesPending:
            # finish() only after the receiver has taken every chunk.
            self._block()
            self._blockedOnWrites = True
        else:
            self._finishMessage()

    def messageRefused(self, envelope: Envelope, error: SMTPError, size: int) -> None:
        """
        Answer the end of a message refused as a whole (too big, bare line
        ends, the delivery's ``finish`` failed): one reply for SMTP.
        """
        self.replyError(error)
        self._logTransaction("refused", error, size)

    def _afterTransaction(self) -> None:
        if self._shuttingDown:
            self.reply(421, "4.3.2", f"{self.factory.hostname} Service shutting down, closing connection")
            self._close()

    def resetTransaction(self) -> None:
        """Forget the current transaction (and tell the session)."""
        if self._receiver is not None:
            self._abortReceiver("transaction reset")
        self._decoder = None
        self._dataError = None
        if self.envelope is not None or self.state in (State.MAIL, State.RCPT, State.DATA, State.BDAT):
            self.envelope = None
            if self.session is not None:
                try:
                    self.session.reset()
                except Exception:
                    _log.failure("delivery session reset() failed")
        self._chunkDecoder = None
        if self.state in (State.MAIL, State.RCPT, State.DATA, State.BDAT):
            self.state = State.READY

    def do_RSET(self, argument: bytes) -> None:
        if argument.strip():
            self._commandError(501, "5.5.4", "Syntax: RSET takes no argument")
            return
        self.resetTransaction()
        self.reply(250, "2.0.0", "OK")
        self._afterTransaction()

    def do_NOOP(self, argument: bytes) -> None:
        self.reply(250, "2.0.0", "OK")

    def do_QUIT(self, argument: bytes) -> None:
        self.reply(221, "2.0.0", f"{self.factory.hostname} Bye")
        self.resetTransaction()
        self._close()

    def do_VRFY(self, argument: bytes) -> None:
        text = argument.strip().decode("utf-8", "replace")
        if not text:
            self._commandError(501, "5.5.4", "Syntax: VRFY <address>")
            return
        session = self.session
        verify = getattr(session, "verify", None)
        if verify is None:
            self.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
            return

        def then(value: Any, failure: Failure | None) -> None:
            if failure is not None:
                self.replyError(self._errorFromFailure(failure, "verify"))
            elif value is None:
                self.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
            else:
                self.reply(250, "2.1.5", str(value))

        self._hook("verify", verify, (text,), then)

    def do_EXPN(self, argument: bytes) -> None:
        # RFC 5321 §7.3: disabling EXPN is allowed; say so clearly.
        self.reply(502, "5.5.1", "EXPN is not available on this server")

    _HELP: ClassVar[dict[str, str]] = {
        "EHLO": "EHLO <hostname> -- introduce yourself and list extensions",
        "HELO": "HELO <hostname> -- introduce yourself (no extensions)",
        "MAIL": "MAIL FROM:<sender> [SIZE=n] [BODY=8BITMIME|BINARYMIME] [SMTPUTF8] [RET=FULL|HDRS]"
        " [ENVID=id] -- start a message",
        "RCPT": "RCPT TO:<recipient> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=rfc822;address] -- add a recipient",
        "DATA": "DATA -- send the message, end it with a line holding a single dot",
        "RSET": "RSET -- abandon the current message",
        "NOOP": "NOOP -- do nothing",
        "QUIT": "QUIT -- close the session",
        "VRFY": "VRFY <address> -- verify an address (answered 252 here)",
        "HELP": "HELP [command] -- this text",
        "STARTTLS": "STARTTLS -- switch to TLS (RFC 3207), then EHLO again",
        "AUTH": "AUTH <mechanism> [initial-response] -- authenticate (RFC 4954), under TLS",
        "BDAT": "BDAT <size> [LAST] -- send the next <size> octets of the message (RFC 3030)",
    }

    def do_HELP(self, argument: bytes) -> None:
        topic = argument.strip().decode("ascii", "replace").upper()
        if topic:
            text = self._HELP.get(topic)
            if text is None:
                if topic in self._handlers:
                    text = f"{topic} -- see the RFC that defines it"
                else:
                    self.reply(504, "5.5.1", f"No help for {topic[:20]}: not a command here")
                    return
            self.reply(214, "2.0.0", text)
            return
        commands = " ".join(sorted(self._handlers))
        self.reply(214, "2.0.0", [f"Commands: {commands}", "HELP <command> for details; see RFC 5321"])

    # -- STARTTLS (RFC 3207) -----------------------------------------------------

    def do_STARTTLS(self, argument: bytes) -> None:
        f = self.factory
        if argument.strip():
            self._commandError(501, "5.5.4", "Syntax: STARTTLS takes no argument")
            return
        if self.connection.tls is not None:
            self._commandError(503, "5.5.1", "TLS is already active")
            return
        if f.tls is None:
            self._commandError(454, "4.7.0", "TLS not available")
            return
        # RFC 3207 §4.2 and the STARTTLS injection attacks (CVE-2011-0411 and
        # kin): anything the client sent after STARTTLS in plaintext must
        # never run inside the TLS session.  Drop it.
        injected = self._lines.takeRest()
        if injected:
            _log.warn(
                "{text}",
                text=f"discarded {len(injected)} octets sent after STARTTLS before the TLS handshake "
                f"from {self.connection.peerHost} (possible command injection)",
                peer=self.connection.peerHost,
                octets=len(injected),
                session=self.connection.sessionId,
            )
        self.reply(220, "2.0.0", "Ready to start TLS")
        self._flush()
        self.resetTransaction()
        self._forgetClient()
        self.connection.tls = TLSInfo()
        self._handshakePending = True
        if getattr(self.transport, "producer", None) is self:
            self.transport.unregisterProducer()
        if self._paused & _PAUSE_OUTPUT:
            self._resume(_PAUSE_OUTPUT)
        forwardHandshake(self.transport, self)
        self.transport.startTLS(f.tls)

    def _forgetClient(self) -> None:
        """RFC 3207 §4.2: after TLS starts, forget all the client said before."""
        conn = self.connection
        conn.heloName = None
        conn.esmtp = False
        self.state = State.INITIAL
        if conn.authenticated:
            conn.authenticated = None
            self._restoreAnonymousSession()

    def handshakeCompleted(self) -> None:
        """Twisted's ``IHandshakeListener``: record the TLS facts."""
        self._handshakePending = False
        self.connection.tls = tlsInfo(self.transport)

    # -- AUTH (RFC 4954) ---------------------------------------------------------

    def authMechanisms(self) -> list[str]:
        """
        The SASL mechanisms offered now: none without a portal or once
        authenticated, and none before TLS unless the factory allows
        authentication in the clear.
        """
        f = self.factory
        if f.portal is None or self.connection.authenticated:
            return []
        if self.connection.tls is None and not f.allowInsecureAuth:
            return []
        return list(f.authMechanisms)

    def do_AUTH(self, argument: bytes) -> None:
        f = self.factory
        conn = self.connection
        if f.portal is None:
            self._commandError(502, "5.5.1", "AUTH is not available on this server")
            return
        if conn.authenticated:
            self._commandError(503, "5.5.1", "Already authenticated")
            return
        parts = argument.split()
        if not parts or len(parts) > 2:
            self._commandError(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
            return
        name = parts[0].decode("ascii", "replace").upper()
        if conn.tls is None and not f.allowInsecureAuth:
            # RFC 4954 §6: 538 when the mechanism needs an encrypted session.
            self._commandError(538, "5.7.11", "Encryption required for requested authentication mechanism")
            return
        if name not in f.authMechanisms:
            self._commandError(504, "5.5.4", f"Unrecognized authentication type: {name[:20]}")
            return
        initial = None
        if len(parts) == 2:
            initial = self._decodeSASL(parts[1], allowEquals=True)
            if initial is None:
                return
        self._mechanism = MECHANISMS[name](f.hostname)
        self.state = State.AUTH
        # RFC 4954 §4: responses may be up to 12288 octets.
        self._lines.maxLength = f.maxAuthLineLength
        try:
            step = self._mechanism.start(initial)
        except SASLError as e:
            self._authDone()
            self._commandError(501, "5.5.2", f"Malformed authentication data: {e}")
            return
        self._authStep(step)

    def _decodeSASL(self, data: bytes, allowEquals: bool = False) -> bytes | None:
        if allowEquals and data == b"=":
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self._authDone()
            self._commandError(501, "5.5.2", "Invalid base64 data in authentication exchange")
            return None

    def _authResponse(self, line: bytes) -> None:
        pending = self._pendingLogin
        if pending is not None and not line:
            # The client accepted SCRAM's server-final message: only now is
            # the AUTH command a success.
            self._pendingLogin = None
            self._install(*pending)
            self._authSucceeded()
            return
        if line == b"*":
            self._authDone()
            self._commandError(501, "5.7.0", "Authentication cancelled")
            return
        if pending is not None:
            self._authDone()
            self._commandError(501, "5.5.2", "Expected an empty response to the server's final message")
            return
        data = self._decodeSASL(line)
        if data is None:
            return
        try:
            step = self._mechanism.respond(data)
        except SASLError as e:
            self._authDone()
            self._commandError(501, "5.5.2", f"Malformed authentication data: {e}")
            return
        self._authStep(step)

    def _authStep(self, step: Any) -> None:
        if isinstance(step, Challenge):
            self._send(b"334 " + base64.b64encode(step.data) + b"\r\n")
        elif isinstance(step, NeedKeys):
            store = self._scramKeyStore()
            if store is None:
                self._authStep(self._mechanism.useRandomSalt())
                return

            def then(keys: Any, failure: Failure | None) -> None:
                if failure is not None:
                    self._authDone()
                    self._errorFromFailure(failure, "scramKeys")
                    self.reply(454, "4.7.0", "Temporary authentication failure")
                    return
                # An unknown user gets a random salt, so the exchange does
                # not tell who exists; the proof then fails.
                if keys is None:
                    self._authStep(self._mechanism.useRandomSalt())
                else:
                    self._authStep(self._mechanism.keysFound(keys.salt, keys.iterations))

            self._hook("scramKeys", store.scramKeys, (step.username, self._mechanism.name), then)
        else:
            self._login(step.credentials)

    def _scramKeyStore(self) -> Any:
        checker = self.factory.portal.checkers.get(IScramCredentials)
        return checker if IScramKeyStore.providedBy(checker) else None

    def _login(self, credentials: Any) -> None:
        portal = self.factory.portal

        def then(result: Any, failure: Failure | None) -> None:
            if failure is not None:
                # A realm may have noted the user before failing.
                self.connection.authenticated = None
                if failure.check(UnauthorizedLogin, UnhandledCredentials):
                    self._authFailed(credentials)
                elif failure.check(SMTPError):
                    # The delivery refused this user its session (say, a
                    # disabled account): its own words reach the client.
                    self._authDone()
                    self.replyError(failure.value)  # type: ignore[arg-type]
                else:
                    self._authDone()
                    self._errorFromFailure(failure, "login")
                    self.reply(454, "4.7.0", "Temporary authentication failure")
                return
            _, avatar, logout = result
            self._authenticated(credentials, avatar, logout)

        self._hook("login", portal.login, (credentials, self.connection, IDeliverySession), then)

    def _authenticated(self, credentials: Any, avatar: Any, logout: Any) -> None:
        username = self.connection.authenticated
        if not username:
            username = getattr(credentials, "username", b"")
            username = username.decode("utf-8", "replace") if isinstance(username, bytes) else str(username)
        if isinstance(self._mechanism, ScramSHA256):
            # RFC 4954 §4: additional data with success goes in a 334
            # challenge, answered by an empty line; until then the client is
            # not authenticated.
            self.connection.authenticated = None
            self._pendingLogin = (username, avatar, logout)
            self._send(b"334 " + base64.b64encode(self._mechanism.serverFinal()) + b"\r\n")
            return
        self._install(username, avatar, logout)
        self._authSucceeded()

    def _install(self, username: str, avatar: Any, logout: Any) -> None:
        """Make the realm's avatar the session's delivery policy."""
        self.connection.authenticated = username
        old, self.session = self.session, avatar
        if self._anonymousSession is None:
            self._anonymousSession = old
        self._logout = logout

    def _authSucceeded(self) -> None:
        name = self._mechanism.name if self._mechanism is not None else "?"
        self._authDone()
        self.reply(235, "2.7.0", "Authentication successful")
        _log.info(
            "{text}",
            text=f"authenticated {self.connection.authenticated} with {name} from {self.connection.peerHost}",
            user=self.connection.authenticated,
            mechanism=name,
            peer=self.connection.peerHost,
            session=self.connection.sessionId,
        )

    def _authFailed(self, credentials: Any) -> None:
        f = self.factory
        name = self._mechanism.name if self._mechanism is not None else "?"
        username = getattr(credentials, "username", b"")
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        self._authDone()
        self._authFailures += 1
        failures = self._authFailures
        # Passwords never reach the log; the user name does (for fail2ban).
        _log.info(
            "{text}",
            text=f"authentication failed for {username!r} with {name} from {self.connection.peerHost} "
            f"(failure {failures} of {f.maxAuthFailures})",
            user=username,
            mechanism=name,
            peer=self.connection.peerHost,
            failures=failures,
            session=self.connection.sessionId,
        )
        # Brute force: each failure is answered later than the one before,
        # and the connection is closed after maxAuthFailures.
        delay = min(f.authFailureDelay * 2 ** (failures - 1), 30.0)

        def answer() -> None:
            self.reply(535, "5.7.8", "Authentication credentials invalid")
            if failures >= f.maxAuthFailures:
                self.reply(421, "4.7.0", f"{f.hostname} Too many authentication failures, closing connection")
                self._close()

        if delay <= 0:
            answer()
            return

        def later() -> None:
            self._unblock()
            if self._disconnected or self.state is State.CLOSED:
                return
            answer()
            if self.state is not State.CLOSED:
                self._process()

        self._block()
        self._clock.callLater(delay, later)

    def _authDone(self) -> None:
        """Leave the AUTH exchange (success or not)."""
        self._mechanism = None
        pending, self._pendingLogin = self._pendingLogin, None
        if pending is not None:
            # An exchange abandoned after the checker said yes: log out again.
            _callQuietly(pending[2], "avatar logout")
        self._lines.maxLength = self.factory.maxLineLength
        if self.state is State.AUTH:
            self.state = State.READY

    def _restoreAnonymousSession(self) -> None:
        anonymous, self._anonymousSession = self._anonymousSession, None
        if anonymous is not None and anonymous is not self.session:
            logout, self._logout = self._logout, None
            if logout is not None:
                _callQuietly(logout, "avatar logout")
            self.session = anonymous

    # -- Received: and logging -------------------------------------------------

    def withKeyword(self, envelope: Envelope) -> str:
        """
        The ``with`` protocol name for ``Received:``: RFC 3848 (SMTP, ESMTP,
        ESMTPS, ESMTPA, ESMTPSA, LMTP...) and RFC 6531 §4.3 (UTF8SMTP,
        UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA, and the LMTP forms).
        """
        conn = self.connection
        tls = conn.tls is not None
        auth = bool(conn.authenticated)
        if envelope.parameters.smtputf8:
            base = "UTF8LMTP" if self.receivedProtocol == "LMTP" else "UTF8SMTP"
        elif self.receivedProtocol == "LMTP":
            base = "LMTP"
        elif conn.esmtp or tls or auth:
            base = "ESMTP"
        else:
            return "SMTP"
        return base + ("S" if tls else "") + ("A" if auth else "")

    def receivedHeader(self, envelope: Envelope) -> bytes:
        """Build the ``Received:`` header (RFC 5321 §4.4) for ``envelope``."""
        conn = self.connection
        peer = conn.peerHost
        if ":" in peer:
            literal = f"[IPv6:{peer}]"
        elif peer[:1].isdigit():
            literal = f"[{peer}]"
        else:
            literal = peer
        forPart = ""
        if len(envelope.recipients) == 1:
            forPart = f"\r\n\tfor <{envelope.recipients[0].address}>"
        header = (
            f"Received: from {conn.heloName} ({literal})\r\n"
            f"\tby {self.factory.hostname} (txsmtp) with {self.withKeyword(envelope)} id {envelope.queueId}"
            f"{forPart}; {self.factory.dateHeader()}\r\n"
        )
        return header.encode("utf-8")

    # Log events carry their fields for structured observers, and a text
    # already formatted (cheaper than twisted.logger's field formatting, which
    # matters at thousands of messages a second).

    def _logRefusal(self, command: str, error: SMTPError, **extra: Any) -> None:
        conn = self.connection
        detail = "".join(f" {k}=<{v}>" for k, v in extra.items())
        _log.info(
            "{text}",
            text=f"refused {command} from {conn.peerHost}: {error.code} {error.enhanced} {error.text}{detail}",
            command=command,
            peer=conn.peerHost,
            code=error.code,
            enhanced=error.enhanced,
            reason=error.text,
            session=conn.sessionId,
        )

    def _logTransaction(self, result: str, error: SMTPError | None, size: int | None = None) -> None:
        envelope = self.envelope
        if envelope is None:
            return
        conn = self.connection
        tls = f" tls={conn.tls.version}/{conn.tls.cipher}" if conn.tls is not None else ""
        auth = f" auth={conn.authenticated}" if conn.authenticated else ""
        reason = f" reason=[{error}]" if error is not None else ""
        _log.info(
            "{text}",
            text=(
                f"{result} id={envelope.queueId} from={envelope.returnPath} rcpts={len(envelope.recipients)} "
                f"size={size} peer={conn.peerHost} helo={conn.heloName}{tls}{auth}{reason}"
            ),
            result=result,
            queueId=envelope.queueId,
            sender=envelope.returnPath,
            recipients=len(envelope.recipients),
            size=size,
            peer=conn.peerHost,
            helo=conn.heloName,
            tlsVersion=conn.tls.version if conn.tls is not None else None,
            tlsCipher=conn.tls.cipher if conn.tls is not None else None,
            authenticated=conn.authenticated,
            session=conn.sessionId,
        )

    # -- shutdown --------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """
        Close gracefully: at once when no transaction is under way, else
        after the current transaction is answered.  Fires when the
        connection is closed.
        """
        d: Deferred[None] = Deferred()
        if self._disconnected:
            d.callback(None)
            return d
        if self._closeDeferreds is None:
            self._closeDeferreds = []
        self._closeDeferreds.append(d)
        self._shuttingDown = True
        if self.state in (State.INITIAL, State.READY, State.REFUSED) and not self._blocked:
            self.reply(421, "4.3.2", f"{self.factory.hostname} Service shutting down, closing connection")
            self._close()
        return d

    def forceClose(self) -> None:
        """Close now, abandoning any transaction (``421 4.3.2``)."""
        if not self._disconnected and self.state is not State.CLOSED:
            self._giveUp(f"{self.factory.hostname} Service shutting down, closing connection", "shutdown", "4.3.2")
        elif not self._disconnected:
            self.transport.abortConnection()


def _collectHandlers(cls: type) -> dict[str, Callable[..., None]]:
    return {name[3:]: getattr(cls, name) for name in dir(cls) if name.startswith("do_") and name[3:].isalpha()}


class _HandlersDescriptor:
    """
    ``self._handlers`` (verb to ``do_VERB``) and ``self._dispatch`` (the verb
    as bytes, upper and lower case, to ``(verb, handler, allowed states)``),
    built once per class.
    """

    def __init__(self, dispatch: bool) -> None:
        self.dispatch = dispatch

    def __get__(self, instance: Any, owner: type) -> Any:
        tables = owner.__dict__.get("_handlerTables")
        if tables is None:
            handlers = _collectHandlers(owner)
            allowed = owner.allowedStates  # type: ignore[attr-defined]
            dispatch = {}
            for verb, handler in handlers.items():
                entry = (verb, handler, allowed.get(verb))
                dispatch[verb.encode("ascii")] = entry
                dispatch[verb.lower().encode("ascii")] = entry
            tables = (handlers, dispatch)
            owner._handlerTables = tables  # type: ignore[attr-defined]
        return tables[1] if self.dispatch else tables[0]


ESMTPServer._handlers = _HandlersDescriptor(False)  # type: ignore[attr-defined]
ESMTPServer._dispatch = _HandlersDescriptor(True)  # type: ignore[attr-defined]


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
    :param clock: an :class:`~twisted.internet.interfaces.IReactorTime`
        (a :class:`~twisted.internet.task.Clock` in tests).
    """

    protocol: type[ESMTPServer] = ESMTPServer

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
        clock: interfaces.IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        if hostname is None:
            import socket

            hostname = socket.getfqdn()
        if maxMessageSize < 1 or maxRecipients < 1 or maxLineLength < 512:
            raise ValueError("maxMessageSize and maxRecipients must be positive; maxLineLength at least 512")
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
        if authMechanisms is None:
            authMechanisms = tuple(MECHANISMS)
        unknown = [m for m in authMechanisms if m not in MECHANISMS]
        if unknown:
            raise ValueError(f"unknown SASL mechanisms: {', '.join(unknown)} (known: {', '.join(MECHANISMS)})")
        if portal is not None:
            # Offer only what the portal's checkers can verify.
            authMechanisms = tuple(m for m in authMechanisms if usableMechanism(m, portal))
        self.authMechanisms = tuple(authMechanisms)
        self.authFailureDelay = authFailureDelay
        self.maxAuthFailures = maxAuthFailures
        self.maxAuthLineLength = 12288
        self.clock = clock
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
