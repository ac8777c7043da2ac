"""
The pure wire layer: no reactor, no I/O, no Twisted.

Everything the protocols need to read and write SMTP lives here, so it can
be tested in isolation and fuzzed:

- :mod:`txsmtp.wire.lines`: bounded CRLF line splitting;
- :mod:`txsmtp.wire.data`: DATA decoding (unstuffing, end of data, bare line
  ends) and encoding (stuffing);
- :mod:`txsmtp.wire.reply`: reply formatting and parsing;
- :mod:`txsmtp.wire.address`: paths and mailboxes;
- :mod:`txsmtp.wire.params`: MAIL/RCPT parameters and xtext.
"""

from txsmtp.wire.address import Address, parsePath, splitPathAndParameters
from txsmtp.wire.data import NORMALIZE, REJECT, DataDecoder, DataEncoder
from txsmtp.wire.lines import TOO_LONG, LineReader
from txsmtp.wire.params import (
    MailParameters,
    RecipientParameters,
    parseMailParameters,
    parseRecipientParameters,
    xtextDecode,
    xtextEncode,
)
from txsmtp.wire.reply import Reply, ReplyParser, formatReply

__all__ = [
    "Address",
    "DataDecoder",
    "DataEncoder",
    "LineReader",
    "MailParameters",
    "NORMALIZE",
    "REJECT",
    "RecipientParameters",
    "Reply",
    "ReplyParser",
    "TOO_LONG",
    "formatReply",
    "parseMailParameters",
    "parsePath",
    "parseRecipientParameters",
    "splitPathAndParameters",
    "xtextDecode",
    "xtextEncode",
]
