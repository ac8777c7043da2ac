"""
The LMTP server (RFC 2033): SMTP for the last hop into a mail store.

LMTP differs from ESMTP in three ways, and this module is those three
differences on top of :class:`~txsmtp.server.ESMTPServer`:

- the client says ``LHLO``; ``EHLO`` and ``HELO`` are refused (RFC 2033
  §4.1), and PIPELINING and ENHANCEDSTATUSCODES are always offered;
- after the end of the message (the final dot, or ``BDAT ... LAST``) the
  server gives one reply per accepted recipient, in RCPT order (§4.2),
  each from the delivery's own result for that recipient: the receiver's
  ``finish()`` returns ``None`` (all stored) or one entry per recipient,
  ``None`` or an :class:`~txsmtp.errors.SMTPError`;
- DATA (or BDAT) with no accepted recipient gets ``503`` (§4.2).

A message refused as a whole (too big, a bare line end, ``finish()``
failing) is refused once per recipient, so the client still gets the count
of replies it waits for.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from txsmtp.envelope import Envelope
from txsmtp.errors import SMTPError
from txsmtp.server import ESMTPServer, SMTPFactory, State

__all__ = ["LMTPServer", "LMTPFactory"]

_log = Logger(namespace="txsmtp.lmtp")


class LMTPServer(ESMTPServer):
    """One LMTP session; see the module documentation."""

    receivedProtocol = "LMTP"
    noRecipientsCode = 503

    _HELP = {
        **ESMTPServer._HELP,
        "LHLO": "LHLO <hostname> -- introduce yourself and list extensions (RFC 2033)",
    }

    def greeting(self) -> str:
        return f"{self.factory.hostname} LMTP txsmtp ready"

    def do_LHLO(self, argument: bytes) -> None:
        hello = self._greet(argument, "LHLO", True)
        if hello is not None and self.state is not State.CLOSED:
            self.reply(250, None, [hello, *self.extensions()])

    def do_EHLO(self, argument: bytes) -> None:
        self._commandError(500, "5.5.1", "This is an LMTP server: use LHLO (RFC 2033)")

    do_HELO = do_EHLO

    def messageStored(self, envelope: Envelope, results: list[SMTPError | None] | None, size: int) -> None:
        recipients = envelope.recipients
        if results is None:
            results = [None] * len(recipients)
        elif len(results) != len(recipients):
            # A delivery bug; the safe answer is "not stored, try again".
            _log.error(
                "delivery returned {got} results for {want} recipients (message {queueId}); answering 451",
                got=len(results),
                want=len(recipients),
                queueId=envelope.queueId,
            )
            results = [SMTPError(451, "4.3.0", "Local error in processing; try again later")] * len(recipients)
        stored = 0
        for recipient, result in zip(recipients, results, strict=True):
            if isinstance(result, SMTPError):
                self.replyError(result)
            else:
                stored += 1
                self.reply(250, "2.0.0", f"<{recipient.address}> OK: delivered as {envelope.queueId}")
        failures = [r for r in results if isinstance(r, SMTPError)]
        if stored:
            self._logTransaction("accepted" if not failures else f"accepted for {stored} of {len(recipients)}", None, size)
        else:
            self._logTransaction("refused", failures[0], size)

    def messageRefused(self, envelope: Envelope, error: SMTPError, size: int) -> None:
        for _ in envelope.recipients:
            self.replyError(error)
        self._logTransaction("refused", error, size)


class LMTPFactory(SMTPFactory):
    """
    An :class:`~txsmtp.server.SMTPFactory` making :class:`LMTPServer`
    sessions; it takes the same arguments.
    """

    protocol = LMTPServer

    def __init__(self, delivery: Any, hostname: str | None = None, **kwargs: Any) -> None:
        super().__init__(delivery, hostname, **kwargs)
