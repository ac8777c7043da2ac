"""
The server session without I/O: the rules of an SMTP or LMTP conversation
as a state machine (see :mod:`txsmtp.session.core` for its theory of
operation).

- :mod:`txsmtp.session.table`: the states and which command is allowed in
  which state, as data;
- :mod:`txsmtp.session.core`: :class:`ServerSession`: the input loop,
  dispatch, hook calls and their results;
- :mod:`txsmtp.session.mail`: MAIL and RCPT;
- :mod:`txsmtp.session.message`: DATA, and one path to the receiver for
  DATA and BDAT;
- :mod:`txsmtp.session.chunking`: BDAT (RFC 3030);
- :mod:`txsmtp.session.auth`: the AUTH exchange;
- :mod:`txsmtp.session.starttls`: STARTTLS (RFC 3207);
- :mod:`txsmtp.session.basic`: the greeting, EHLO, and the small commands;
- :mod:`txsmtp.session.transaction`: the :class:`Transaction` and the
  replies owed at its end;
- :mod:`txsmtp.session.actions`: what the session asks of its glue.
"""

from txsmtp.session.actions import Call, Cancel, Close, Notify, Scope, StartTLS
from txsmtp.session.commands import CommandTable
from txsmtp.session.core import ServerSession
from txsmtp.session.table import COMMANDS, State
from txsmtp.session.transaction import Transaction, finalReplies

__all__ = [
    "COMMANDS",
    "Call",
    "Cancel",
    "Close",
    "CommandTable",
    "Notify",
    "Scope",
    "ServerSession",
    "StartTLS",
    "State",
    "Transaction",
    "finalReplies",
]
