"""
The SMTP, ESMTP and LMTP client.

Most programs need one of two calls:

- :func:`sendmail` sends one message over one connection and says QUIT;
- :class:`Mailer` keeps a small pool of connections to one server (a smart
  host, a local MTA, an LMTP store) and sends many messages through it.

Both return a Deferred that fires with a :class:`SendResult` (the reply to
each recipient) or fails with a :class:`SMTPClientError` saying what went
wrong and whether trying again later could help (``permanent``).

Theory of operation
===================

:class:`ESMTPClient` is a protocol that holds an explicit queue of the
replies it is waiting for.  Every command it writes appends an entry
``(handler, timeout)`` to that queue; every reply the
:class:`~txsmtp.wire.reply.ReplyParser` completes is given to the handler
at the head.  Because replies come back in the order the commands went out
(RFC 2920 §3.1), pipelining is nothing more than writing several commands
before the first reply has arrived: MAIL, every RCPT and DATA leave in one
write when the server offers PIPELINING, and one at a time when it does not.

A connection goes through these states::

    CONNECTING -> GREETING -> HELLO -> (STARTTLS -> HELLO) -> (AUTH) -> IDLE
    IDLE -> TRANSACTION -> IDLE ... -> QUIT -> CLOSED

Setting up the session (greeting, EHLO, STARTTLS, EHLO again, AUTH) fires
:attr:`ESMTPClient.ready`.  :meth:`ESMTPClient.sendMessage` runs one
transaction on an idle connection.  Whatever happens to a transaction, the
connection is either left idle and in sync with the server, or closed.

Timeouts follow RFC 5321 §4.5.3.2 (5 minutes for the greeting, MAIL and
RCPT, 2 for DATA, 3 for each block of data, 10 for the reply to the final
dot).  One timer per connection serves them all: it is armed for the
deadline of the reply at the head of the queue and, when it fires early,
re-armed for what is left.

Security rules the code keeps:

- every address and parameter is checked for control characters before
  anything is written (RFC 5321 §4.1.2; a CR or LF there would let a
  caller inject commands);
- message bodies are dot-stuffed per line with state carried across
  chunks, and line ends normalised to CRLF (:class:`~txsmtp.wire.data.DataEncoder`);
- anything the server sends after its ``220`` to STARTTLS and before the
  handshake is thrown away (RFC 3207 §4.2, "STARTTLS response injection"),
  and everything learnt before TLS is forgotten;
- credentials are only sent over TLS unless the caller allows otherwise;
- replies are bounded in size (:class:`~txsmtp.wire.reply.ReplyParser`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import io
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar

from twisted.internet import defer
from twisted.internet import error as ineterror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener, IPullProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp import saslclient
from txsmtp._io import canWriteDirectly, writeNow
from txsmtp.errors import SMTPError, SMTPProtocolError
from txsmtp.wire.address import parsePath
from txsmtp.wire.data import DataEncoder
from txsmtp.wire.params import xtextEncode
from txsmtp.wire.reply import Reply, ReplyParser

__all__ = [
    "ClientOptions",
    "ESMTPClient",
    "LMTPClient",
    "Mailer",
    "OutgoingMessage",
    "SMTPAddressError",
    "SMTPAuthError",
    "SMTPBadReplyError",
    "SMTPClientError",
    "SMTPClientFactory",
    "SMTPConnectError",
    "SMTPConnectionLost",
    "SMTPMessageRefused",
    "SMTPRecipientsRefused",
    "SMTPReplyError",
    "SMTPSenderRefused",
    "SMTPServerRefused",
    "SMTPTLSError",
    "SMTPTimeoutError",
    "SMTPUnsupportedError",
    "SendResult",
    "TLSPolicy",
    "Timeouts",
    "sendmail",
]

_log = Logger(namespace="txsmtp.client")

#: How much of a file is read, encoded and written at a time.
CHUNK_SIZE = 65536

#: Messages held as bytes up to this size go out in one write; larger ones
#: are streamed like files, so the data-block timeout measures progress.
_ONE_WRITE = 1 << 20


# ---------------------------------------------------------------------------
# Results and errors


class SendResult:
    """
    What happened to a message the server accepted for at least one recipient.

    :ivar reply: the server's reply to the end of the data (for LMTP, the
        reply for the first accepted recipient).
    :ivar recipients: every recipient, in the order given, with the reply
        that decided its fate: the reply to the data for an accepted one
        (its own reply under LMTP), the reply to RCPT for a refused one.
    """

    __slots__ = ("reply", "recipients")

    def __init__(self, reply: Reply, recipients: dict[str, Reply] | None = None) -> None:
        self.reply = reply
        self.recipients = recipients if recipients is not None else {}

    def __repr__(self) -> str:
        return f"SendResult({self.reply!r}, {self.recipients!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendResult):
            return NotImplemented
        return (self.reply, self.recipients) == (other.reply, other.recipients)

    __hash__ = None  # type: ignore[assignment]

    @property
    def accepted(self) -> list[str]:
        """The recipients the server took responsibility for."""
        return [r for r, reply in self.recipients.items() if reply.code < 400]

    @property
    def refused(self) -> dict[str, Reply]:
        """The recipients the server refused, with its reply to each."""
        return {r: reply for r, reply in self.recipients.items() if reply.code >= 400}


class SMTPClientError(Exception):
    """
    Base class of everything the client fails with.

    :ivar permanent: ``True`` when sending the same message the same way
        again cannot succeed (a 5xx refusal, a certificate that does not
        verify, an address the server cannot take); ``False`` when a later
        try, or another server, might.
    """

    permanent: bool = False
    #: Whether the end of the message had been sent (see
    #: :class:`SMTPConnectionLost` and :class:`SMTPTimeoutError`).
    afterData: bool = False

    def __init__(self, message: str, *, permanent: bool | None = None) -> None:
        super().__init__(message)
        if permanent is not None:
            self.permanent = permanent


class SMTPConnectError(SMTPClientError):
    """The connection could not be made, or was lost before the greeting."""


class SMTPConnectionLost(SMTPClientError):
    """
    The connection was lost in the middle of the session.

    :ivar afterData: ``True`` when the end of the message had already been
        sent: the server may have accepted it, so sending it again could
        deliver it twice.
    """

    def __init__(self, message: str, *, afterData: bool = False) -> None:
        super().__init__(message)
        self.afterData = afterData


class SMTPTimeoutError(SMTPClientError):
    """
    The server did not reply within the time RFC 5321 §4.5.3.2 allows.

    :ivar afterData: ``True`` when it was the reply to the end of the
        message that never came: the server may have the message.
    """

    def __init__(self, message: str, *, afterData: bool = False) -> None:
        super().__init__(message)
        self.afterData = afterData


class SMTPTLSError(SMTPClientError):
    """
    TLS was required but not offered, or the handshake or the verification
    of the server's certificate failed.
    """

    permanent = True


class SMTPAuthError(SMTPClientError):
    """
    Authentication failed or could not be attempted.

    :ivar reply: the server's refusal, or ``None`` when the client gave up
        on its own (no usable mechanism, no TLS).
    """

    permanent = True

    def __init__(self, message: str, reply: Reply | None = None, *, permanent: bool | None = None) -> None:
        if permanent is None and reply is not None:
            permanent = reply.code >= 500
        super().__init__(message, permanent=permanent)
        self.reply = reply


class SMTPUnsupportedError(SMTPClientError):
    """
    The server lacks something the message needs: SMTPUTF8 for a non-ASCII
    address, 8BITMIME for an 8-bit body, or a SIZE limit large enough.
    """

    permanent = True


class SMTPAddressError(SMTPClientError, ValueError):
    """An address or parameter is malformed; nothing was sent."""

    permanent = True


class SMTPBadReplyError(SMTPClientError):
    """The server sent something that is not a valid SMTP reply (or one too long)."""


class SMTPReplyError(SMTPClientError):
    """
    The server refused something; :attr:`reply` is its reply.

    :ivar reply: the :class:`~txsmtp.wire.reply.Reply`.
    """

    def __init__(self, message: str, reply: Reply) -> None:
        super().__init__(f"{message}: {reply}", permanent=reply.code >= 500)
        self.reply = reply

    @property
    def code(self) -> int:
        """The reply code."""
        return self.reply.code

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code, if the server gave one."""
        return self.reply.enhanced

    @property
    def text(self) -> str:
        """The text of the reply."""
        return self.reply.text


class SMTPServerRefused(SMTPReplyError):
    """The server refused the session: a 554 greeting, a 421, EHLO and HELO refused."""


class SMTPSenderRefused(SMTPReplyError):
    """The server refused MAIL FROM."""


class SMTPRecipientsRefused(SMTPReplyError):
    """
    The server refused every recipient.

    :ivar recipients: each recipient with the reply refusing it.
    """

    def __init__(self, message: str, recipients: dict[str, Reply]) -> None:
        first = next(iter(recipients.values()))
        super().__init__(message, first)
        # Permanent only if every refusal is.
        self.permanent = all(r.code >= 500 for r in recipients.values())
        self.recipients = recipients


class SMTPMessageRefused(SMTPReplyError):
    """The server refused DATA or the message itself."""


# ---------------------------------------------------------------------------
# Options


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

    def tlsOptions(self) -> Any:
        """
        The client TLS options for this server: verified for
        :attr:`TLSPolicy.REQUIRE` and :attr:`TLSPolicy.VERIFY` (through
        service_identity), unverified for :attr:`TLSPolicy.OPPORTUNISTIC`.
        """
        from twisted.internet import ssl

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


# ---------------------------------------------------------------------------
# Validation


def _checkText(value: str, what: str) -> None:
    # RFC 5321 §4.1.2: command arguments are printable; a CR or LF here
    # would let the caller's data run as commands (bpo-43124).
    for ch in value:
        if ch < " " or ch == "\x7f":
            raise SMTPAddressError(f"{what} contains a control character: {value!r}")


def _checkToken(value: str, what: str) -> None:
    _checkText(value, what)
    if not value or " " in value:
        raise SMTPAddressError(f"{what} must be one word: {value!r}")


@functools.lru_cache(maxsize=512)
def _path(address: str, *, sender: bool) -> bytes:
    _checkText(address, "sender" if sender else "recipient")
    path = b"<" + address.encode("utf-8") + b">"
    try:
        parsePath(path, utf8=True, nullOK=sender, postmasterOK=not sender)
    except SMTPError as e:
        raise SMTPAddressError(f"bad {'sender' if sender else 'recipient'} address {address!r}: {e.text}") from None
    return path


_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _notifyParam(notify: Iterable[str]) -> bytes:
    values = [n.upper() for n in notify]
    # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
    if values == ["NEVER"]:
        return b" NOTIFY=NEVER"
    if not values or len(set(values)) != len(values) or not set(values) <= _NOTIFY:
        raise SMTPAddressError(f"NOTIFY must be NEVER alone or some of SUCCESS, FAILURE, DELAY: {notify!r}")
    return b" NOTIFY=" + ",".join(values).encode("ascii")


def _orcptParam(orcpt: str) -> bytes:
    _checkText(orcpt, "ORCPT")
    addrType, sep, address = orcpt.partition(";")
    if not sep:
        addrType, address = "rfc822", orcpt
    if not addrType.isascii() or not addrType.replace("-", "").isalnum():
        raise SMTPAddressError(f"bad ORCPT address type: {addrType!r}")
    # RFC 3461 §4.2: the address is xtext-encoded.
    return b" ORCPT=" + f"{addrType};{xtextEncode(address)}".encode("ascii")


@dataclass
class OutgoingMessage:
    """
    A message ready to send: the envelope checked and its commands built.

    Made by :meth:`prepare`; :meth:`ESMTPClient.sendMessage` and
    :class:`Mailer` make one from their arguments.

    :ivar sender: the reverse-path (``""`` for ``<>``).
    :ivar recipients: the forward-paths, in order.
    :ivar message: the message, bytes or a binary file.
    :ivar size: its size in octets, when known.
    :ivar eightBit: whether it contains octets above 127 (``None``: unknown).
    :ivar utf8: whether an address needs SMTPUTF8.
    """

    sender: str
    recipients: list[str]
    message: bytes | BinaryIO
    size: int | None
    eightBit: bool | None
    utf8: bool
    senderPath: bytes
    recipientPaths: list[bytes]
    mailDSN: bytes = b""
    rcptDSN: list[bytes] = field(default_factory=list)
    start: int = 0
    #: UTF-8 in the header section (RFC 6532): SMTPUTF8 is declared when
    #: the server offers it (without it the message still goes, as 8-bit).
    utf8Headers: bool = False
    #: How many times this message has been tried (by :class:`Mailer`).
    attempts: int = 0
    deferred: defer.Deferred[SendResult] | None = None

    @classmethod
    def prepare(
        cls,
        sender: str,
        recipients: Iterable[str],
        message: bytes | BinaryIO,
        *,
        ret: str | None = None,
        envid: str | None = None,
        notify: Iterable[str] | None = None,
        orcpt: str | None = None,
    ) -> OutgoingMessage:
        """
        Check the envelope and the DSN parameters (RFC 3461) and measure the
        message.

        :param ret: ``"FULL"`` or ``"HDRS"``.
        :param envid: the envelope identifier (xtext-encoded for you).
        :param notify: ``["NEVER"]`` or some of ``SUCCESS``, ``FAILURE``, ``DELAY``,
            for every recipient.
        :param orcpt: the original recipient (``"rfc822;a@example.com"``, or
            just the address), for every recipient.
        :raises SMTPAddressError: for anything malformed; nothing is sent.
        """
        if isinstance(sender, bytes) or isinstance(recipients, (str, bytes)):
            raise TypeError("sender is a str and recipients an iterable of str")
        recipients = list(recipients)
        if not recipients:
            raise SMTPAddressError("no recipients")
        senderPath = _path(sender, sender=True)
        recipientPaths = [_path(r, sender=False) for r in recipients]
        utf8 = not sender.isascii() or not "".join(recipients).isascii()
        mailDSN = b""
        if ret is not None:
            if ret.upper() not in ("FULL", "HDRS"):
                raise SMTPAddressError(f"RET must be FULL or HDRS: {ret!r}")
            mailDSN += b" RET=" + ret.upper().encode("ascii")
        if envid is not None:
            _checkText(envid, "ENVID")
            mailDSN += b" ENVID=" + xtextEncode(envid).encode("ascii")
        rcpt = b""
        if notify is not None:
            rcpt += _notifyParam(notify)
        if orcpt is not None:
            rcpt += _orcptParam(orcpt)
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)
        size, eightBit, start, utf8Headers = _measure(message)
        return cls(
            sender=sender,
            recipients=recipients,
            message=message,
            size=size,
            eightBit=eightBit,
            utf8=utf8,
            senderPath=senderPath,
            recipientPaths=recipientPaths,
            mailDSN=mailDSN,
            rcptDSN=[rcpt] * len(recipients) if rcpt else [],
            start=start,
            utf8Headers=utf8Headers,
        )

    def rewind(self) -> None:
        """Go back to the start of a file message, to send it again."""
        if not isinstance(self.message, bytes):
            self.message.seek(self.start)


def _nonASCIIHeaders(head: bytes) -> bool:
    """Whether the header section at the start of ``head`` has non-ASCII octets (RFC 6532)."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    return not (head if end < 0 else head[:end]).isascii()


def _measure(message: bytes | BinaryIO) -> tuple[int | None, bool | None, int, bool]:
    """The size, whether there are 8-bit octets, the start and whether the headers are UTF-8."""
    if isinstance(message, bytes):
        eightBit = not message.isascii()
        return len(message), eightBit, 0, eightBit and _nonASCIIHeaders(message)
    if not hasattr(message, "read"):
        raise TypeError(f"message must be bytes or a binary file, not {type(message).__name__}")
    try:
        start = message.tell()
        end = message.seek(0, os.SEEK_END)
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None, None, 0, False
    # One pass to learn whether the body needs 8BITMIME (RFC 6152), then
    # back to where the caller left the file.
    message.seek(start)
    eightBit = utf8Headers = False
    first = True
    while True:
        chunk = message.read(CHUNK_SIZE)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise TypeError("message must be opened in binary mode")
        if not chunk.isascii():
            eightBit = True
            utf8Headers = first and _nonASCIIHeaders(chunk)
            break
        first = False
    message.seek(start)
    return end - start, eightBit, start, utf8Headers


# ---------------------------------------------------------------------------
# The protocol


class _State(enum.Enum):
    CONNECTING = "connecting"
    GREETING = "greeting"
    HELLO = "hello"
    STARTTLS = "starttls"
    AUTH = "auth"
    IDLE = "idle"
    TRANSACTION = "transaction"
    QUIT = "quit"
    CLOSED = "closed"


class _Transaction:
    """The state of one message on the wire."""

    __slots__ = (
        "job",
        "results",
        "accepted",
        "rcptIndex",
        "failure",
        "finalSent",
        "finalReplies",
        "bdat",
        "pipelined",
        "outstanding",
        "lines",
        "producer",
        "needsReset",
    )

    def __init__(self, job: OutgoingMessage, bdat: bool, pipelined: bool) -> None:
        self.job = job
        self.results: dict[str, Reply] = {}
        self.accepted: list[str] = []
        self.rcptIndex = 0
        self.failure: SMTPClientError | None = None
        self.finalSent = False
        self.finalReplies: list[Reply] = []
        self.bdat = bdat
        self.pipelined = pipelined
        #: Replies still expected for this transaction.
        self.outstanding = 0
        #: Without PIPELINING: the RCPT commands still to send.
        self.lines: list[bytes] = []
        self.producer: _MessageProducer | None = None
        self.needsReset = True


@implementer(IHandshakeListener)
class ESMTPClient(Protocol):
    """
    One client connection to an SMTP server.

    Made by :class:`SMTPClientFactory`, which gives it its
    :class:`ClientOptions`.  Use :attr:`ready`, :meth:`sendMessage` and
    :meth:`quit`; subclasses may override :meth:`chooseMechanism`,
    :meth:`mailParameters` and :meth:`helloReceived`.

    :ivar ready: a Deferred that fires with this protocol once the session
        is set up (greeting, EHLO, STARTTLS, AUTH) or fails with a
        :class:`SMTPClientError`.
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
        self.authenticated: str | None = None
        self.state = _State.CONNECTING
        self.esmtp = True
        self._parser = ReplyParser(maxReplyLength=self.options.maxReplyLength)
        self._pending: deque[tuple[Callable[..., None], float, _Transaction | None]] = deque()
        self._out: list[bytes] = []
        self._headSince = 0.0
        self._timer: Any = None
        t = self.options.timeouts
        self._tick = min(t.greeting, t.command, t.mail, t.rcpt, t.data, t.block, t.final, t.quit)
        self._idleSince = 0.0
        self._idleTimeout: float | None = None
        self._discard = False
        self._mechanism: saslclient.ClientMechanism | None = None
        # AUTH: an initial response too long for the AUTH line, sent after
        # the first 334 (RFC 4954 §4).
        self._pendingInitial: bytes | None = None
        self._txns: deque[_Transaction] = deque()
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
        self.state = _State.GREETING
        if self.options.implicitTLS:
            self._startTLS()
        self._expect(self._onGreeting, self.options.timeouts.greeting)
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        if self._discard:
            return
        parser = self._parser
        try:
            replies = parser.feed(data)
        except SMTPProtocolError as e:
            self._fatal(SMTPBadReplyError(f"bad reply from {self._peerName()}: {e}"))
            return
        for reply in replies:
            if self._parser is not parser or self._discard:
                # STARTTLS replaced the parser: RFC 3207 §4.2, nothing the
                # server said between its 220 and the handshake counts.
                break
            self._reply(reply)
        self._flush()

    def handshakeCompleted(self) -> None:
        self._tlsStarting = False

    def connectionLost(self, reason: Failure = ineterror.ConnectionDone) -> None:  # type: ignore[assignment]
        previous = self.state
        self.state = _State.CLOSED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._pending.clear()
        if self._streaming is not None:
            self._streaming.stop()
            self._streaming = None
        if self._error is not None:
            err = self._error
        elif self._timedOut:
            err = SMTPTimeoutError(f"{self._peerName()} did not reply in time")
        elif self._tlsStarting:
            # Under OPPORTUNISTIC a failed handshake is no verdict on the
            # message: another server (the next MX) may do better.
            err = SMTPTLSError(
                f"TLS with {self._peerName()} failed: {_reasonText(reason)}",
                permanent=self.options.tls is not TLSPolicy.OPPORTUNISTIC,
            )
        elif previous in (_State.CONNECTING, _State.GREETING):
            err = SMTPConnectError(f"{self._peerName()} closed the connection before its greeting")
        else:
            err = SMTPConnectionLost(f"connection to {self._peerName()} lost: {_reasonText(reason)}")
        if not self.ready.called:
            self.ready.errback(err)
        txns, self._txns = self._txns, deque()
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
            self.factory.clientConnectionClosed(self, err if previous not in (_State.QUIT,) else None)
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
            :class:`OutgoingMessage` (then the other arguments are ignored).
        :param recipients: the forward-paths.
        :param message: the message: bytes, or a binary file read from its
            current position in chunks.
        :param dsn: ``ret``, ``envid``, ``notify``, ``orcpt``; see
            :meth:`OutgoingMessage.prepare`.
        :return: a Deferred firing with a :class:`SendResult`.
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
        """Say QUIT after ``seconds`` idle (used by :class:`Mailer`)."""
        self._idleTimeout = seconds
        if seconds is not None:
            self._tick = min(self._tick, seconds)
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
        return params

    # -- reply dispatch -----------------------------------------------------

    def _write(self, data: bytes) -> None:
        # Commands are batched and sent by _flush, at the end of whatever
        # event produced them: a pipelined group leaves in one write.
        self._out.append(data)

    def _flush(self) -> None:
        out = self._out
        if not out or self.state is _State.CLOSED:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        if self._direct and self._streaming is None:
            writeNow(self.transport, data)
        else:
            # A pull producer is asked for more only when the transport's
            # buffer drains, so while one streams, everything goes through
            # that buffer.
            self.transport.write(data)

    def _expect(self, handler: Callable[..., None], timeout: float, txn: _Transaction | None = None) -> None:
        pending = self._pending
        if not pending:
            self._headSince = self.clock.seconds()
            if self._timer is None:
                self._arm(timeout)
        pending.append((handler, timeout, txn))
        if txn is not None:
            txn.outstanding += 1

    def _reply(self, reply: Reply) -> None:
        if not self._pending:
            if reply.code == 421:
                self._fatal(SMTPServerRefused("the server is closing the connection", reply))
            else:
                self._fatal(SMTPBadReplyError(f"unexpected reply from {self._peerName()}: {reply}"))
            return
        handler, _, txn = self._pending.popleft()
        if self._pending:
            # The next reply's time starts now (the timer finds out).
            self._headSince = self.clock.seconds()
        if reply.code == 421 and self.state is not _State.QUIT:
            # RFC 5321 §3.8: the server is going away; whatever was pending
            # will not be answered.
            self._fatal(SMTPServerRefused(f"{self._peerName()} is closing the connection", reply))
            return
        if txn is None:
            handler(reply)
        else:
            txn.outstanding -= 1
            handler(reply, txn)

    def _fatal(self, err: SMTPClientError) -> None:
        """Fail whatever is going on with ``err`` and drop the connection."""
        if self._error is None:
            self._error = err
        self._pending.clear()
        self._out = []
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
        if self._pending:
            deadline = self._headSince + self._pending[0][1]
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
            waiting = "a reply" if self._pending else "the message to be taken"
            self._fatal(SMTPTimeoutError(f"timed out waiting for {waiting} from {self._peerName()}"))
            return
        self._arm(deadline - now)

    # -- session setup ------------------------------------------------------

    def _onGreeting(self, reply: Reply) -> None:
        if reply.code != 220:
            # RFC 5321 §3.1: 554 means "no service here"; say QUIT and go.
            self._setupFailed(SMTPServerRefused(f"{self._peerName()} refused the session", reply), quit=True)
            return
        self._hello()

    def _hello(self) -> None:
        self.state = _State.HELLO
        self._write(self.helloVerb + b" " + self._heloName().encode("utf-8") + b"\r\n")
        self._expect(self._onEhlo, self.options.timeouts.command)

    def _onEhlo(self, reply: Reply) -> None:
        if reply.code == 250:
            self.esmtp = True
            self._setExtensions(reply)
            self._afterHello(reply)
        elif reply.code >= 500 and self.helloVerb == b"EHLO" and not self._heloTried:
            # RFC 5321 §3.2: a server that does not know EHLO; fall back.
            self._heloTried = True
            self._write(b"HELO " + self._heloName().encode("utf-8") + b"\r\n")
            self._expect(self._onHelo, self.options.timeouts.command)
        else:
            self._setupFailed(SMTPServerRefused(f"{self._peerName()} refused {self.helloVerb.decode()}", reply), quit=True)

    def _onHelo(self, reply: Reply) -> None:
        if reply.code != 250:
            self._setupFailed(SMTPServerRefused(f"{self._peerName()} refused HELO", reply), quit=True)
            return
        self.esmtp = False
        self.extensions = {}
        self._sizeLimit = None
        self._afterHello(reply)

    def _setExtensions(self, reply: Reply) -> None:
        ext: dict[str, str] = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            if "=" in keyword and keyword.upper().startswith("AUTH="):
                # Old servers say "AUTH=LOGIN PLAIN".
                keyword, params = "AUTH", keyword[5:] + " " + params
            if keyword:
                key = keyword.upper()
                ext[key] = (ext[key] + " " + params).strip() if key in ext else params.strip()
        self.extensions = ext
        self._sizeLimit = None
        size = ext.get("SIZE", "")
        if size.isdigit() and int(size) > 0:
            self._sizeLimit = int(size)

    def _afterHello(self, reply: Reply) -> None:
        self.helloReceived(reply)
        policy = self.options.tls
        if not self.tls and policy is not TLSPolicy.NONE:
            if "STARTTLS" in self.extensions:
                self.state = _State.STARTTLS
                self._write(b"STARTTLS\r\n")
                self._expect(self._onStartTLS, self.options.timeouts.command)
                return
            if policy is TLSPolicy.REQUIRE:
                self._setupFailed(SMTPTLSError(f"{self._peerName()} does not offer STARTTLS and TLS is required"), quit=True)
                return
        self._authenticate()

    def _onStartTLS(self, reply: Reply) -> None:
        if reply.code != 220:
            if self.options.tls is TLSPolicy.OPPORTUNISTIC:
                _log.info("STARTTLS refused by {peer} ({reply}); going on without TLS", peer=self._peerName(), reply=str(reply))
                self._authenticate()
                return
            self._setupFailed(
                SMTPTLSError(f"{self._peerName()} refused STARTTLS: {reply}", permanent=reply.code >= 500),
                quit=True,
            )
            return
        # RFC 3207 §4.2: forget everything, and ignore anything that came
        # with the 220.
        self._parser = ReplyParser(maxReplyLength=self.options.maxReplyLength)
        self._startTLS()
        if self._error is not None:
            return
        self._heloTried = False
        self.extensions = {}
        self._sizeLimit = None
        self._hello()

    def _startTLS(self) -> None:
        self._flush()
        self._tlsStarting = True
        self.tls = True
        try:
            options = self.options.tlsOptions()
        except Exception as e:
            self._fatal(SMTPTLSError(f"cannot set up TLS for {self.options.tlsHostname or self.options.host}: {e}"))
            return
        self.transport.startTLS(options)

    def _authenticate(self) -> None:
        o = self.options
        if o.username is None:
            self._becomeReady()
            return
        if not self.tls and not o.allowPlaintextAuth:
            self._setupFailed(
                SMTPAuthError(f"not sending credentials to {self._peerName()} without TLS (allowPlaintextAuth is off)"),
                quit=True,
            )
            return
        if "AUTH" not in self.extensions:
            self._setupFailed(SMTPAuthError(f"{self._peerName()} does not offer AUTH"), quit=True)
            return
        offered = self.extensions["AUTH"].upper().split()
        mechanism = self.chooseMechanism(offered)
        if mechanism is None:
            self._setupFailed(
                SMTPAuthError(f"no usable AUTH mechanism: {self._peerName()} offers {' '.join(offered) or 'none'}"),
                quit=True,
            )
            return
        self.state = _State.AUTH
        self._mechanism = mechanism
        try:
            initial = mechanism.initialResponse()
        except saslclient.SASLClientError as e:
            self._setupFailed(SMTPAuthError(f"AUTH {mechanism.name}: {e}"), quit=True)
            return
        line = b"AUTH " + mechanism.name.encode("ascii")
        if initial is not None:
            encoded = _b64(initial)
            # RFC 4954 §4: an empty initial response is "="; one that would
            # make the line longer than 512 octets waits for the 334.
            if len(line) + 1 + len(encoded) + 2 <= 512:
                line += b" " + encoded
                initial = None
        self._pendingInitial = initial
        self._write(line + b"\r\n")
        self._expect(self._onAuth, self.options.timeouts.command)

    def _onAuth(self, reply: Reply) -> None:
        mechanism = self._mechanism
        assert mechanism is not None
        if reply.code == 334:
            initial = self._pendingInitial
            if initial is not None:
                self._pendingInitial = None
                response = initial
            else:
                try:
                    challenge = _unb64(reply.lines[0].strip() if reply.lines else "")
                    response = mechanism.respond(challenge)
                except (binascii.Error, ValueError, saslclient.SASLClientError) as e:
                    # RFC 4954 §4: "*" cancels the exchange.
                    err = SMTPAuthError(f"AUTH {mechanism.name}: {e}")
                    self._write(b"*\r\n")
                    self._expect(lambda r: self._setupFailed(err, quit=True), self.options.timeouts.command)
                    return
            self._write(_b64(response) if response else b"")
            self._write(b"\r\n")
            self._expect(self._onAuth, self.options.timeouts.command)
            return
        if reply.code == 235:
            try:
                mechanism.verifySuccess(None)
            except saslclient.SASLClientError as e:
                # The server did not prove it knows the password.
                self._setupFailed(SMTPAuthError(f"AUTH {mechanism.name}: the server's proof is wrong: {e}"), quit=True)
                return
            self.authenticated = mechanism.name
            self._becomeReady()
            return
        self._setupFailed(SMTPAuthError(f"{self._peerName()} refused AUTH {mechanism.name}: {reply}", reply), quit=True)

    def _becomeReady(self) -> None:
        self._becomeIdle()
        if not self.ready.called:
            self.ready.callback(self)

    def _setupFailed(self, err: SMTPClientError, quit: bool = False) -> None:
        self._error = err
        if quit and self.state is not _State.CLOSED:
            self.state = _State.QUIT
            self._pending.clear()
            self._write(b"QUIT\r\n")
            self._expect(self._onQuit, self.options.timeouts.quit)
        else:
            self._fatal(err)

    def _onQuit(self, reply: Reply) -> None:
        self._flush()
        self.transport.loseConnection()

    def _becomeIdle(self) -> None:
        self.state = _State.IDLE
        self._idleSince = self.clock.seconds()
        if self._idleTimeout is not None and self._timer is None:
            self._arm(self._idleTimeout)

    # -- transaction ------------------------------------------------------

    def _start(self, job: OutgoingMessage) -> None:
        """Begin ``job``, or report why it cannot be sent on this connection."""
        try:
            self._begin(job)
        except SMTPClientError as e:
            if not self._txns and self.factory is not None:
                self.factory.clientIdle(self)
            self._messageDone(job, e)

    def _begin(self, job: OutgoingMessage) -> None:
        ext = self.extensions
        if job.utf8 and "SMTPUTF8" not in ext:
            raise SMTPUnsupportedError(
                f"{self._peerName()} does not offer SMTPUTF8, which a non-ASCII address needs (RFC 6531)"
            )
        if job.eightBit and "8BITMIME" not in ext:
            raise SMTPUnsupportedError(
                f"{self._peerName()} does not offer 8BITMIME and the message has 8-bit octets (RFC 6152 §3)"
            )
        limit = self._sizeLimit
        if limit is not None and job.size is not None and job.size > limit:
            raise SMTPUnsupportedError(
                f"the message ({job.size} octets) is larger than {self._peerName()} accepts"
                f" ({limit} octets, RFC 1870)"
            )
        pipelining = self._pipelining
        txn = _Transaction(job, self.options.chunking and pipelining and "CHUNKING" in ext, pipelining)
        self._txns.append(txn)
        self.state = _State.TRANSACTION
        timeouts = self.options.timeouts
        mail = b"MAIL FROM:" + job.senderPath + self.mailParameters(job, txn.bdat) + b"\r\n"
        rcptDSN = job.rcptDSN if "DSN" in ext else None
        rcpts = [
            b"RCPT TO:" + path + (rcptDSN[i] if rcptDSN else b"") + b"\r\n"
            for i, path in enumerate(job.recipientPaths)
        ]
        if not pipelining:
            # One command, one reply.
            txn.lines = rcpts
            self._write(mail)
            self._expect(self._onMail, timeouts.mail, txn)
            return
        # RFC 2920 §3.1: MAIL, the RCPTs and DATA in one group; DATA ends it.
        # (With BDAT the chunks follow in the same group, RFC 3030 §4.2.)
        self._expect(self._onMail, timeouts.mail, txn)
        pending = self._pending
        onRcpt = (self._onRcpt, timeouts.rcpt, txn)
        for _ in rcpts:
            pending.append(onRcpt)
        txn.outstanding += len(rcpts)
        if txn.bdat:
            self._out += (mail, *rcpts)
            self._startData(txn)
        else:
            pending.append((self._onData, timeouts.data, txn))
            txn.outstanding += 1
            self._out += (mail, *rcpts, b"DATA\r\n")

    def _nextCommand(self, txn: _Transaction) -> None:
        # Without PIPELINING: the next RCPT, or DATA once they are all done.
        if txn.rcptIndex < len(txn.lines):
            self._write(txn.lines[txn.rcptIndex])
            self._expect(self._onRcpt, self.options.timeouts.rcpt, txn)
            return
        self._checkRecipients(txn)
        if txn.failure is not None:
            self._refuseTransaction(txn)
            return
        self._write(b"DATA\r\n")
        self._expect(self._onData, self.options.timeouts.data, txn)

    def _onMail(self, reply: Reply, txn: _Transaction) -> None:
        if reply.code != 250:
            txn.failure = SMTPSenderRefused(f"{self._peerName()} refused the sender <{txn.job.sender}>", reply)
            if not txn.pipelined:
                # Nothing to reset: MAIL did not start a transaction.
                txn.needsReset = False
                self._refuseTransaction(txn)
            return
        if not txn.pipelined:
            self._nextCommand(txn)

    def _onRcpt(self, reply: Reply, txn: _Transaction) -> None:
        recipient = txn.job.recipients[txn.rcptIndex]
        txn.rcptIndex += 1
        txn.results[recipient] = reply
        if reply.code in (250, 251):
            txn.accepted.append(recipient)
        if not txn.pipelined:
            self._nextCommand(txn)
        elif txn.bdat and txn.rcptIndex == len(txn.job.recipients):
            self._checkRecipients(txn)

    def _checkRecipients(self, txn: _Transaction) -> None:
        if txn.failure is None and not txn.accepted:
            txn.failure = SMTPRecipientsRefused(f"{self._peerName()} refused every recipient", dict(txn.results))
        if txn.failure is not None and txn.producer is not None:
            # BDAT: no point sending the rest of the message.
            txn.producer.stop()

    def _onData(self, reply: Reply, txn: _Transaction) -> None:
        self._checkRecipients(txn)
        if reply.code != 354:
            if txn.failure is None:
                txn.failure = SMTPMessageRefused(f"{self._peerName()} refused DATA", reply)
            self._refuseTransaction(txn)
            return
        if txn.failure is not None:
            # RFC 2920 §3.1: the server took DATA although nothing else was
            # accepted; send an empty message to get back in step.
            self._write(b".\r\n")
            self._expect(self._onEmptyData, self.options.timeouts.final, txn)
            return
        self._startData(txn)

    def _onEmptyData(self, reply: Reply, txn: _Transaction) -> None:
        self._refuseTransaction(txn)

    def _startData(self, txn: _Transaction) -> None:
        message = txn.job.message
        if isinstance(message, bytes) and len(message) <= _ONE_WRITE:
            encoder = DataEncoder(dotStuffing=not txn.bdat)
            body = encoder.encode(message) + encoder.finish()
            if txn.bdat:
                self._write(b"BDAT %d LAST\r\n" % len(body))
            self._write(body)
            self._dataSent(txn)
            return
        if isinstance(message, bytes):
            message = io.BytesIO(message)
        txn.producer = _MessageProducer(self, txn, message)
        self._streaming = txn.producer
        self._progressAt = self.clock.seconds()
        if self._timer is None:
            self._arm(self.options.timeouts.block)
        self._flush()
        self.transport.registerProducer(txn.producer, False)

    def _writeChunk(self, txn: _Transaction, data: bytes, last: bool) -> None:
        """Called by the producer with the next piece of the encoded message."""
        self._progressAt = self.clock.seconds()
        if txn.bdat:
            if data or last:
                self._write(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b""))
                self._write(data)
                if not last:
                    self._expect(self._onChunk, self.options.timeouts.block, txn)
        elif data:
            self._write(data)
        if last:
            txn.producer = None
            self._streaming = None
            self.transport.unregisterProducer()
            self._dataSent(txn)
        self._flush()

    def _onChunk(self, reply: Reply, txn: _Transaction) -> None:
        if reply.code != 250 and txn.failure is None:
            txn.failure = SMTPMessageRefused(f"{self._peerName()} refused a BDAT chunk", reply)
            if txn.producer is not None:
                txn.producer.stop()
        self._abandonBdat(txn)

    def _abandonBdat(self, txn: _Transaction) -> None:
        # BDAT stopped before LAST: once every reply is in, reset.
        if not txn.finalSent and txn.producer is None and not txn.outstanding and txn.failure is not None:
            self._refuseTransaction(txn)

    def _dataSent(self, txn: _Transaction) -> None:
        txn.finalSent = True
        self._expect(self._onFinal, self.options.timeouts.final, txn)
        if len(self._txns) < 2 and txn.pipelined and self.factory is not None:
            # RFC 2920 §3.1: the message may start a new group, so the next
            # message's MAIL, RCPTs and DATA go out with this one's end.
            job = self.factory.nextMessage(self)
            if job is not None:
                self._start(job)

    def _onFinal(self, reply: Reply, txn: _Transaction) -> None:
        if txn.failure is not None:
            # BDAT with the sender or every recipient refused: this reply to
            # BDAT LAST is a refusal too.
            self._refuseTransaction(txn)
            return
        txn.finalReplies.append(reply)
        if self.perRecipientReplies and len(txn.finalReplies) < len(txn.accepted):
            # RFC 2033 §4.2: one reply per accepted recipient, in order.
            self._expect(self._onFinal, self.options.timeouts.final, txn)
            return
        results = txn.results
        if self.perRecipientReplies:
            for recipient, r in zip(txn.accepted, txn.finalReplies, strict=True):
                results[recipient] = r
        else:
            for recipient in txn.accepted:
                results[recipient] = reply
        first = txn.finalReplies[0]
        ordered = {r: results[r] for r in txn.job.recipients}
        if all(r.code >= 400 for r in txn.finalReplies):
            if self.perRecipientReplies:
                err: SMTPClientError = SMTPRecipientsRefused(
                    f"{self._peerName()} refused the message for every recipient", ordered
                )
            else:
                err = SMTPMessageRefused(f"{self._peerName()} refused the message", first)
            self._transactionDone(txn, err)
        else:
            self._transactionDone(txn, SendResult(first, ordered))

    def _refuseTransaction(self, txn: _Transaction) -> None:
        """End a transaction that failed before the message was accepted."""
        if txn.outstanding:
            # Pipelined replies still to come; the last one ends it.
            return
        err = txn.failure
        assert err is not None
        if txn.needsReset:
            # Get the server out of the transaction before the connection
            # is used again (RFC 5321 §4.1.1.5).
            txn.needsReset = False
            self._write(b"RSET\r\n")
            self._expect(self._onReset, self.options.timeouts.command, txn)
        else:
            self._transactionDone(txn, err)

    def _onReset(self, reply: Reply, txn: _Transaction) -> None:
        assert txn.failure is not None
        self._transactionDone(txn, txn.failure)

    def _transactionDone(self, txn: _Transaction, outcome: SendResult | SMTPClientError) -> None:
        self._txns.remove(txn)
        if not self._txns:
            self._becomeIdle()
            if self.factory is not None:
                self.factory.clientIdle(self)
        self._messageDone(txn.job, outcome)

    def _messageDone(self, job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
        if self.factory is not None:
            self.factory.messageDone(self, job, outcome)
        else:
            _fire(job, outcome)

    @property
    def _pipelining(self) -> bool:
        # RFC 2033 §4.2: every LMTP server supports PIPELINING.
        return "PIPELINING" in self.extensions or self.perRecipientReplies

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


@implementer(IPullProducer)
class _MessageProducer:
    """Reads a message file in chunks and hands them to the protocol, encoded."""

    def __init__(self, protocol: ESMTPClient, txn: _Transaction, message: BinaryIO) -> None:
        self.protocol = protocol
        self.txn = txn
        self.message = message
        self.encoder = DataEncoder(dotStuffing=not txn.bdat)
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        chunk = self.message.read(CHUNK_SIZE)
        if chunk:
            self.protocol._writeChunk(self.txn, self.encoder.encode(chunk), False)
        else:
            self.stopped = True
            self.protocol._writeChunk(self.txn, self.encoder.finish(), True)

    def stopProducing(self) -> None:
        self.stopped = True

    def stop(self) -> None:
        """Stop early (the message was refused): BDAT LAST is never sent."""
        if self.stopped:
            return
        self.stopped = True
        protocol, txn = self.protocol, self.txn
        txn.producer = None
        if protocol._streaming is self:
            protocol._streaming = None
            if protocol.state is not _State.CLOSED:
                protocol.transport.unregisterProducer()
                protocol._abandonBdat(txn)


def _fire(job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
    d = job.deferred
    if d is None or d.called:
        return
    if isinstance(outcome, SendResult):
        d.callback(outcome)
    else:
        d.errback(outcome)


class LMTPClient(ESMTPClient):
    """
    An LMTP client (RFC 2033): LHLO instead of EHLO, and after the data one
    reply per accepted recipient, each in :attr:`SendResult.recipients`.
    """

    helloVerb = b"LHLO"
    perRecipientReplies = True


# ---------------------------------------------------------------------------
# Factory


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

    protocol: type[ESMTPClient] = ESMTPClient

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        if options.lmtp and not issubclass(self.protocol, LMTPClient):
            if self.protocol is not ESMTPClient:
                raise TypeError(f"lmtp=True needs an LMTPClient subclass, not {self.protocol.__name__}")
            self.protocol = LMTPClient

    def buildProtocol(self, addr: Any) -> ESMTPClient:
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
        self._factory.mailer = self
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
    ) -> defer.Deferred[SendResult]:
        """
        Send a message; see :func:`sendmail` for the arguments and the result.
        """
        if self._closing:
            return defer.fail(SMTPClientError("this Mailer is closed"))
        try:
            job = OutgoingMessage.prepare(sender, recipients, message, ret=ret, envid=envid, notify=notify, orcpt=orcpt)
        except SMTPClientError as e:
            return defer.fail(e)
        d: defer.Deferred[SendResult] = defer.Deferred()
        job.deferred = d
        self._queue.append(job)
        self._pump()
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
            if job.attempts < 2:
                self._queue.appendleft(job)
            else:
                _fire(job, err)
        self._pump()

    def _nextMessage(self, proto: ESMTPClient) -> OutgoingMessage | None:
        if not self._queue:
            return None
        job = self._queue.popleft()
        job.attempts += 1
        return job

    def _messageDone(self, proto: ESMTPClient, job: OutgoingMessage, outcome: SendResult | SMTPClientError) -> None:
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
    :param options: the other keyword arguments of :class:`ClientOptions`:
        ``tls``, ``trustRoot``, ``username``, ``password``, ``lmtp``, ...
    :return: a Deferred firing with a :class:`SendResult` once the message
        is accepted for at least one recipient and the connection is closed;
        it fails with a :class:`SMTPClientError` otherwise.
    """
    mailer = Mailer(host, port, poolSize=1, **options)
    d = mailer.send(sender, recipients, message, ret=ret, envid=envid, notify=notify, orcpt=orcpt)
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


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data) if data else b"="


def _unb64(text: str) -> bytes:
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError(f"the server's challenge is not base64: {text[:40]!r}") from None


def _reasonText(reason: Failure | BaseException | None) -> str:
    if reason is None:
        return "unknown reason"
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, ineterror.ConnectionDone):
        return "the server closed the connection"
    text = str(value) or type(value).__name__
    return text
