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

:class:`ESMTPClient` is a protocol glued around a
:class:`~txsmtp.client.pipeline.Pipeline`, the I/O-free queue of the
replies the connection is owed.  Every command written adds an entry
``(handler, timeout, transaction)`` to that queue, which becomes owed once
the write has gone out; every reply the
:class:`~txsmtp.wire.reply.ReplyParser` completes is given to the handler
at the head.  Because replies come back in the order the commands went out
(RFC 2920 §3.1), pipelining is nothing more than writing several commands
before the first reply has arrived: MAIL, every RCPT and DATA leave in one
write when the server offers PIPELINING, and one at a time when it does not.
SMTP and LMTP share the queue: the replies LMTP gives after the data, one
per accepted recipient, are taken by that message's entry before any later
message's.

The package's modules follow its ideas: :mod:`~txsmtp.client.pipeline`
(the replies owed and what they decide, no I/O), :mod:`~txsmtp.client.protocol`
(the Twisted glue), :mod:`~txsmtp.client.session` (greeting, EHLO, STARTTLS,
AUTH), :mod:`~txsmtp.client.mailer` (the factory, the pool, :func:`sendmail`),
:mod:`~txsmtp.client.message` (checking and measuring a message),
:mod:`~txsmtp.client.options` and :mod:`~txsmtp.client.errors`.  Everything
public is importable from :mod:`txsmtp.client` itself.

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

from txsmtp.client.errors import (
    SendResult,
    SMTPAddressError,
    SMTPAuthError,
    SMTPBadReplyError,
    SMTPClientError,
    SMTPConnectError,
    SMTPConnectionLost,
    SMTPMessageRefused,
    SMTPRecipientsRefused,
    SMTPReplyError,
    SMTPSenderRefused,
    SMTPServerRefused,
    SMTPTimeoutError,
    SMTPTLSError,
    SMTPUnsupportedError,
)
from txsmtp.client.mailer import Mailer, SMTPClientFactory, sendmail
from txsmtp.client.message import CHUNK_SIZE, OutgoingMessage, RecipientDSN
from txsmtp.client.options import ClientOptions, Timeouts, TLSPolicy
from txsmtp.client.protocol import ESMTPClient, LMTPClient

__all__ = [
    "CHUNK_SIZE",
    "ClientOptions",
    "ESMTPClient",
    "LMTPClient",
    "Mailer",
    "OutgoingMessage",
    "RecipientDSN",
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
