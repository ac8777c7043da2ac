"""
What a server session asks of the protocol that runs it, and so what a
subclass of :class:`~txsmtp.server.ESMTPServer` changes to change the
server: the greeting, the EHLO keywords, the SASL mechanisms offered, the
MAIL parameters accepted, the ``Received:`` header, the HELP texts.
:class:`SessionHost` is the part of :class:`~txsmtp.server.ESMTPServer`
that holds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from txsmtp.envelope import ConnectionInfo, Envelope
from txsmtp.errors import SMTPError
from txsmtp.wire.params import MAIL_KEYWORDS, RCPT_KEYWORDS, MailParameters

if TYPE_CHECKING:
    from txsmtp.serverfactory import SMTPFactory

__all__ = ["SessionHost"]


class SessionHost:
    """The overridable policy of a server protocol (see the module documentation)."""

    factory: SMTPFactory
    connection: ConnectionInfo
    receivedProtocol: str

    #: MAIL and RCPT parameter keywords this protocol understands.
    #: (AUTH= only when a portal is configured; DSN's RET, ENVID, NOTIFY and
    #: ORCPT always, RFC 3461.)
    mailKeywords: ClassVar[frozenset[str]] = MAIL_KEYWORDS - {"AUTH"}
    rcptKeywords: ClassVar[frozenset[str]] = RCPT_KEYWORDS

    helpTexts: ClassVar[dict[str, str]] = {
        "EHLO": "EHLO <hostname> -- introduce yourself and list extensions",
        "HELO": "HELO <hostname> -- introduce yourself (no extensions)",
        "MAIL": "MAIL FROM:<sender> [SIZE=n] [BODY=8BITMIME|BINARYMIME] [SMTPUTF8] [RET=FULL|HDRS]"
        " [ENVID=id] [REQUIRETLS] -- start a message",
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

    # -- what a subclass may change ----------------------------------------------

    def greeting(self) -> str:
        """The text of the ``220`` greeting."""
        return f"{self.factory.hostname} ESMTP txsmtp ready"

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
        if self.connection.tls is not None and f.offerRequireTLS:
            # RFC 8689 §3: offered only on a session under TLS.
            extensions.append("REQUIRETLS")
        mechanisms = self.authMechanisms()
        if mechanisms:
            extensions.append("AUTH " + " ".join(mechanisms))
        return extensions

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

    def checkMailParameters(self, params: MailParameters) -> None:
        """
        Validate MAIL parameters beyond their syntax; raise
        :class:`~txsmtp.errors.SMTPError` to refuse.  Subclasses that add
        parameters extend this.
        """
        if params.body == "BINARYMIME" and "CHUNKING" not in self.extensions():
            raise SMTPError(
                555, "5.5.4", "BODY=BINARYMIME needs CHUNKING, which this server does not offer"
            )
        if params.requireTLS:
            if self.connection.tls is None:
                # RFC 8689 §4.1: REQUIRETLS only on a session under TLS.
                raise SMTPError(530, "5.7.10", "REQUIRETLS needs a session under TLS: say STARTTLS first")
            if not self.factory.offerRequireTLS:
                raise SMTPError(555, "5.5.4", "REQUIRETLS is not offered by this server")

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
