"""
What the client reports: :class:`SendResult` for a message the server took,
and the :class:`SMTPClientError` family for everything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import error as ineterror
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from txsmtp.client.options import ClientOptions

from txsmtp.wire.reply import Reply

__all__ = [
    "SMTPAddressError",
    "SMTPAuthError",
    "SMTPBadReplyError",
    "SMTPClientError",
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
]



class SendResult:
    """
    What happened to a message the server accepted for at least one recipient.

    :ivar reply: the server's reply to the end of the data (for LMTP, the
        reply for the first accepted recipient).
    :ivar recipients: every recipient, in the order given, with the reply
        that decided its fate: the reply to the data for an accepted one
        (its own reply under LMTP), the reply to RCPT for a refused one.
    :ivar dsn: whether the server offered DSN (RFC 3461) in its EHLO
        reply, so that the DSN parameters were passed on; a relay that
        hands a message to a server without it owes the sender a "relayed"
        report when success was asked for (RFC 3461 §6.2.1.d).  Not part
        of equality.
    :ivar tls: the TLS version the message went under (``"TLSv1.3"``), or
        ``None`` without TLS (for the delivery's log line).  Not part of
        equality.
    """

    __slots__ = ("reply", "recipients", "dsn", "tls")

    def __init__(
        self, reply: Reply, recipients: dict[str, Reply] | None = None, dsn: bool = False, tls: str | None = None
    ) -> None:
        self.reply = reply
        self.recipients = recipients if recipients is not None else {}
        self.dsn = dsn
        self.tls = tls

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


def _reasonText(reason: Failure | BaseException | None) -> str:
    if reason is None:
        return "unknown reason"
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, ineterror.ConnectionDone):
        return "the server closed the connection"
    text = str(value) or type(value).__name__
    return text


def _tlsFailureText(reason: Failure | BaseException | None, options: ClientOptions) -> str:
    """
    Why a TLS handshake failed, in words, and for a certificate that did
    not verify, what to do about it (the options of :class:`ClientOptions`
    that would make it work).
    """
    value = reason.value if isinstance(reason, Failure) else reason
    text = _reasonText(reason)
    args = getattr(value, "args", None)
    if args and isinstance(args[0], list):
        # pyOpenSSL's SSL.Error: [(library, function, reason), ...]
        reasons = [r[2] for r in args[0] if isinstance(r, tuple) and len(r) == 3 and r[2]]
        if reasons:
            text = "; ".join(reasons)
    if "certificate verify failed" in text and options.tlsCreator is not None:
        text += " (the certificate does not match the server's DANE TLSA records, RFC 7672)"
    elif "certificate verify failed" in text:
        where = "the trustRoot given" if options.trustRoot is not None else "the platform's authorities"
        text += (
            f" (the server's certificate is not signed by {where}, as with a self-signed"
            " certificate): pass trustRoot= the certificate or its authority to trust it, or"
            ' tls="opportunistic" to encrypt without checking it'
        )
    elif type(value).__name__ == "VerificationError":
        # service_identity: the certificate is valid but for another name.
        name = options.tlsHostname or options.host
        text = (
            f"the server's certificate is not valid for {name!r} ({text}): pass tlsHostname= the name it"
            ' carries, or tls="opportunistic" to encrypt without checking it'
        )
    return text
