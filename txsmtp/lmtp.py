"""
The LMTP server (RFC 2033): SMTP for the last hop into a mail store.

LMTP differs from ESMTP in three ways, all of them rules of the session
(:mod:`txsmtp.session`), which this protocol switches on with ``lmtp``:

- the client says ``LHLO``; ``EHLO`` and ``HELO`` are refused (RFC 2033
  §4.1), and PIPELINING and ENHANCEDSTATUSCODES are always offered;
- after the end of the message (the final dot, or ``BDAT ... LAST``) the
  server gives one reply per accepted recipient, in RCPT order (§4.2),
  each from the delivery's own result for that recipient: the receiver's
  ``finish()`` returns ``None`` (all stored) or one entry per recipient,
  ``None`` or an :class:`~txsmtp.errors.SMTPError`;
- DATA (or BDAT) with no accepted recipient gets ``503`` (§4.2).

A message refused as a whole (at open for BDAT LAST, too big, a bare line
end, ``finish()`` failing) is refused once per recipient, so the client
always gets the number of replies it waits for.
"""

from __future__ import annotations

from typing import Any, ClassVar

from txsmtp.server import ESMTPServer, SMTPFactory

__all__ = ["LMTPServer", "LMTPFactory"]


class LMTPServer(ESMTPServer):
    """One LMTP session; see the module documentation."""

    receivedProtocol = "LMTP"
    lmtp = True

    helpTexts: ClassVar[dict[str, str]] = {
        **ESMTPServer.helpTexts,
        "LHLO": "LHLO <hostname> -- introduce yourself and list extensions (RFC 2033)",
    }

    def greeting(self) -> str:
        return f"{self.factory.hostname} LMTP txsmtp ready"


class LMTPFactory(SMTPFactory):
    """
    An :class:`~txsmtp.server.SMTPFactory` making :class:`LMTPServer`
    sessions; it takes the same arguments.
    """

    protocol = LMTPServer

    def __init__(self, delivery: Any, hostname: str | None = None, **kwargs: Any) -> None:
        super().__init__(delivery, hostname, **kwargs)
