"""
txsmtp: an SMTP/ESMTP framework for Twisted.

The names most programs need are importable from here:

- :class:`~txsmtp.errors.SMTPError`: a refusal (code, enhanced code, text);
- :class:`~txsmtp.server.SMTPFactory` and :class:`~txsmtp.server.ESMTPServer`:
  the server;
- :func:`~txsmtp.client.sendmail` and :class:`~txsmtp.client.Mailer`: the
  client, with :class:`~txsmtp.client.TLSPolicy`,
  :class:`~txsmtp.client.SendResult` and
  :class:`~txsmtp.client.SMTPClientError`;
- :class:`~txsmtp.envelope.Envelope`, :class:`~txsmtp.envelope.Recipient`,
  :class:`~txsmtp.envelope.ConnectionInfo`: what deliveries see.

MX lookups are in :mod:`txsmtp.mx`.  Deliveries live in :mod:`txsmtp.delivery`, their interfaces in
:mod:`txsmtp.interfaces`, test helpers in :mod:`txsmtp.testing`.
"""

from txsmtp.client import Mailer, SendResult, SMTPClientError, TLSPolicy, sendmail
from txsmtp.envelope import ConnectionInfo, Envelope, Recipient, TLSInfo
from txsmtp.errors import SMTPError, SMTPProtocolError, SMTPSyntaxError
from txsmtp.server import ESMTPServer, SMTPFactory, State

__version__ = "0.1.0.dev0"

__all__ = [
    "ConnectionInfo",
    "ESMTPServer",
    "Mailer",
    "SendResult",
    "SMTPClientError",
    "TLSPolicy",
    "sendmail",
    "Envelope",
    "Recipient",
    "SMTPError",
    "SMTPFactory",
    "SMTPProtocolError",
    "SMTPSyntaxError",
    "State",
    "TLSInfo",
    "__version__",
]
