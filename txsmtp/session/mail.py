"""
MAIL and RCPT (RFC 5321 §4.1.1.2, §4.1.1.3): the envelope of a transaction,
as part of :class:`~txsmtp.session.core.ServerSession`.  The
:class:`~txsmtp.session.transaction.Transaction` is created by MAIL, before
the delivery's ``checkSender`` answers, so that whatever ends the session
while that hook runs ends the transaction with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from txsmtp.envelope import Envelope, Recipient
from txsmtp.errors import SMTPError
from txsmtp.session.base import SessionBase
from txsmtp.session.table import State
from txsmtp.session.transaction import Transaction
from txsmtp.wire.address import parsePath, splitPathAndParameters
from txsmtp.wire.params import parseMailParameters, parseRecipientParameters

__all__ = ["MailCommands"]


class MailCommands(SessionBase):
    """MAIL and RCPT."""

    if not TYPE_CHECKING:
        __slots__ = ()

    # -- MAIL and RCPT -----------------------------------------------------------

    def do_MAIL(self, verb: str, argument: bytes) -> None:
        if argument[:5].upper() != b"FROM:":
            self.commandError(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
            return
        f = self.config
        conn = self.connection
        if f.requireTLS and conn.tls is None:
            self.commandError(530, "5.7.0", "Must issue a STARTTLS command first")
            return
        if f.requireAuth and not conn.authenticated:
            self.commandError(530, "5.7.0", "Authentication required")
            return
        host = self.host
        try:
            path, rawParams = splitPathAndParameters(argument[5:])
            smtputf8 = any(p.upper() == b"SMTPUTF8" for p in rawParams)
            keywords = host.mailKeywords | {"AUTH"} if f.portal is not None else host.mailKeywords
            params = parseMailParameters(rawParams, keywords, smtputf8)
            sender = parsePath(path, utf8=params.smtputf8, nullOK=True)
            host.checkMailParameters(params)
            if params.size is not None and params.size > f.maxMessageSize:
                raise self.tooBig()
        except SMTPError as e:
            self.replyError(e)
            self.logRefusal("MAIL", e)
            return
        # The transaction exists from here, so that what ends the session
        # while checkSender runs (a timeout, a disconnect) also ends it.
        t = self.transaction = Transaction(Envelope(sender, params, conn))

        def then(value: Any, failure: Failure | None) -> None:
            if failure is not None:
                err = self.errorFromFailure(failure, "checkSender")
                self.replyError(err)
                self.logRefusal("MAIL", err, sender=sender)
                self._endTransaction("sender refused", notify=False)
                return
            self.state = State.MAIL
            self.reply(250, "2.1.0", f"Sender <{sender if sender is not None else ''}> OK")

        self.call(self.deliverySession, "checkSender", (sender, params), then, owner=t)

    def do_RCPT(self, verb: str, argument: bytes) -> None:
        if argument[:3].upper() != b"TO:":
            self.commandError(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
            return
        t = self.transaction
        assert t is not None
        envelope = t.envelope
        maxRecipients = self.config.maxRecipients
        try:
            path, rawParams = splitPathAndParameters(argument[3:])
            params = parseRecipientParameters(
                rawParams, self.host.rcptKeywords, envelope.parameters.smtputf8
            )
            address = parsePath(path, utf8=envelope.parameters.smtputf8, postmasterOK=True)
            if len(envelope.recipients) >= maxRecipients:
                # RFC 5321 §4.5.3.1.10: too many recipients is 452, so the
                # client sends the rest in another transaction.
                raise SMTPError(
                    452, "4.5.3", f"Too many recipients (at most {maxRecipients} per message)"
                )
        except SMTPError as e:
            self.replyError(e)
            self.logRefusal("RCPT", e)
            return
        assert address is not None
        recipient = Recipient(address, params)

        def then(value: Any, failure: Failure | None) -> None:
            if failure is not None:
                err = self.errorFromFailure(failure, "checkRecipient")
                self.replyError(err)
                self.logRefusal("RCPT", err, recipient=address)
                return
            envelope.recipients.append(recipient)
            self.state = State.RCPT
            self.reply(250, "2.1.5", f"Recipient <{address}> OK")

        self.call(self.deliverySession, "checkRecipient", (recipient, envelope), then, owner=t)
