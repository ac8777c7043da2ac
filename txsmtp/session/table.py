"""
The states of a server session and the table of which command is allowed
in which state: the sequencing rules of RFC 5321 §4.1.4, RFC 3030 §2
(BDAT), RFC 3207 (STARTTLS), RFC 4954 (AUTH) and RFC 2033 (LMTP), as data.

``COMMANDS`` maps each built-in verb to the set of states in which it may be
used; a verb used in any other state is answered ``503 5.5.1``.  A verb not
in the table (a subclass's ``do_VERB``) is allowed in every command state
unless its protocol says otherwise (``ESMTPServer.allowedStates``).

``TRANSITIONS`` lists where each successful command leads.  Commands that
do not appear there leave the state as it is.  The few moves that depend on
more than the command (RSET, and any end of a transaction, returning to
``READY`` only from a transaction state; the end of a message; a refused
transaction) are spelled out in
:mod:`txsmtp.session.core` next to the code that makes them.

``tests/test_session_table.py`` prints this table and checks it against the
RFCs' rules.
"""

from __future__ import annotations

import enum

__all__ = ["COMMANDS", "COMMAND_STATES", "TRANSACTION_STATES", "TRANSITIONS", "State"]


class State(enum.Enum):
    """The states of an SMTP or LMTP server session."""

    #: Connected; no EHLO/HELO/LHLO yet (also after STARTTLS, RFC 3207 §4.2).
    INITIAL = "initial"
    #: Greeted; no transaction.
    READY = "ready"
    #: MAIL accepted; no recipient yet.
    MAIL = "mail"
    #: At least one recipient accepted.
    RCPT = "rcpt"
    #: Reading the message after ``354``.
    DATA = "data"
    #: BDAT chunks received, more to come (RFC 3030).
    BDAT = "bdat"
    #: Inside an AUTH exchange: lines are SASL responses, not commands.
    AUTH = "auth"
    #: The delivery refused the connection; only QUIT is useful.
    REFUSED = "refused"
    #: QUIT answered, or closing for another reason.
    CLOSED = "closed"

    # Members are singletons: hash them by identity, in C, rather than by
    # name in Python (Enum's default), since states are looked up in sets
    # for every command.
    __hash__ = object.__hash__


_S = State

#: The states in which commands are read as commands (not message octets or
#: SASL responses).
COMMAND_STATES = frozenset({_S.INITIAL, _S.READY, _S.MAIL, _S.RCPT, _S.BDAT, _S.REFUSED})

#: The states of an open mail transaction.
TRANSACTION_STATES = frozenset({_S.MAIL, _S.RCPT, _S.DATA, _S.BDAT})

_ANY = frozenset({_S.INITIAL, _S.READY, _S.MAIL, _S.RCPT, _S.BDAT})

#: verb -> states in which it may be used.
COMMANDS: dict[str, frozenset[State]] = {
    # RFC 5321 §4.1.4: EHLO/HELO may come at any time and reset the
    # transaction; LHLO is their LMTP form (RFC 2033 §4.1).
    "EHLO": _ANY,
    "HELO": _ANY,
    "LHLO": _ANY,
    # §3.3: MAIL starts a transaction; only one at a time.
    "MAIL": frozenset({_S.READY}),
    "RCPT": frozenset({_S.MAIL, _S.RCPT}),
    "DATA": frozenset({_S.MAIL, _S.RCPT}),
    # RFC 3030 §2: BDAT is checked by its own rules, since its octets must be
    # consumed even when the command is refused (see session/message.py).
    "BDAT": _ANY,
    "RSET": _ANY,
    "NOOP": _ANY,
    "QUIT": _ANY | {_S.REFUSED},
    "VRFY": _ANY,
    "EXPN": _ANY,
    "HELP": _ANY,
    # RFC 3207 §4: STARTTLS before a transaction or in one (which it resets).
    "STARTTLS": frozenset({_S.INITIAL, _S.READY, _S.MAIL, _S.RCPT}),
    # RFC 4954 §4: AUTH is not permitted during a mail transaction.
    "AUTH": frozenset({_S.READY}),
}

#: verb -> the state a successful command leads to.
TRANSITIONS: dict[str, State] = {
    "EHLO": _S.READY,
    "HELO": _S.READY,
    "LHLO": _S.READY,
    "MAIL": _S.MAIL,
    "RCPT": _S.RCPT,
    "DATA": _S.DATA,
    "BDAT": _S.BDAT,
    "STARTTLS": _S.INITIAL,
    "AUTH": _S.AUTH,
    "QUIT": _S.CLOSED,
}
