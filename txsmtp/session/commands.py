"""
The command table of one kind of session (each verb, spelled as clients
send it, mapped to its handler and the states in which it is allowed), and
the dispatch of a command line through it (:class:`CommandDispatch`, part
of :class:`~txsmtp.session.core.ServerSession`).

Built once per protocol class (and kept), from the built-in commands of
:mod:`txsmtp.session.core` with their states from
:data:`txsmtp.session.table.COMMANDS`, and the protocol's own ``do_VERB``
methods with their states from its ``allowedStates``.  A protocol method
named like a built-in command replaces the built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from txsmtp.errors import SMTPError
from txsmtp.session.base import SessionBase
from txsmtp.session.table import COMMANDS, TRANSACTION_STATES, State

__all__ = ["CommandDispatch", "CommandTable", "Handler"]

#: ``handler(session, verb, argument)``
Handler = Callable[[Any, str, bytes], None]

Entry = tuple[str, Handler, "frozenset[State] | None"]


class CommandTable:
    """
    :ivar dispatch: the verb as bytes (upper and lower case) to
        ``(verb, handler, states)``; ``states`` ``None`` means any state in
        which commands are read.
    :ivar names: the verbs this session offers (for HELP).
    :ivar lmtp: whether this is an LMTP session (RFC 2033).
    """

    __slots__ = ("dispatch", "names", "lmtp")

    def __init__(
        self,
        builtin: Mapping[str, Handler],
        extra: Mapping[str, frozenset[State] | None],
        extraHandler: Handler,
        lmtp: bool,
    ) -> None:
        self.lmtp = lmtp
        entries: dict[str, Entry] = {}
        for verb, handler in builtin.items():
            if verb == "LHLO" and not lmtp:
                continue
            entries[verb] = (verb, handler, COMMANDS[verb])
        for verb, states in extra.items():
            if states is None:
                states = COMMANDS.get(verb)
            entries[verb] = (verb, extraHandler, states)
        self.dispatch: dict[bytes, Entry] = {}
        for verb, entry in entries.items():
            self.dispatch[verb.encode("ascii")] = entry
            self.dispatch[verb.lower().encode("ascii")] = entry
        hidden = {"EHLO", "HELO"} if lmtp else set()
        self.names = frozenset(v for v in entries if v not in hidden)


class CommandDispatch(SessionBase):
    """A command line through the table: its checks, and the replies to what is refused."""

    if not TYPE_CHECKING:
        __slots__ = ()

    def lineReceived(self, line: bytes) -> None:
        """Dispatch one command line (or, inside AUTH, one SASL response)."""
        if self.state is State.AUTH:
            self._authResponse(line)
            return
        verb, _, argument = line.partition(b" ")
        if self._authChain is not None and verb.upper() != b"AUTH":
            # Another command ends a client's run of AUTH mechanisms.
            self._authChain = None
        table = self._commands.dispatch
        entry = table.get(verb)
        if entry is None:
            # Not spelled as the table has it: mixed case, or not a command.
            try:
                name = verb.decode("ascii").upper()
            except UnicodeDecodeError:
                name = ""
            entry = table.get(name.encode("ascii"))
            if entry is None:
                if b"\r" in line or b"\n" in line:
                    self.commandError(
                        500,
                        "5.5.2",
                        "Syntax error: bare CR or LF in a command (lines end with CRLF)",
                    )
                elif name.isalpha():
                    self.commandError(500, "5.5.1", f"Command not recognized: {name[:20]}")
                else:
                    self.commandError(500, "5.5.2", "Syntax error: command not recognized")
                return
        name, handler, states = entry
        if b"\r" in argument or b"\n" in argument or b"\0" in argument:
            self.commandError(
                500, "5.5.2", "Syntax error: bare CR or LF in a command (lines end with CRLF)"
            )
            return
        state = self.state
        if state is State.REFUSED and name != "QUIT":
            self.commandError(503, "5.5.1", "Service refused; only QUIT is accepted")
            return
        if states is not None and state not in states:
            self._sequenceError(name)
            return
        handler(self, name, argument)

    def _sequenceError(self, name: str) -> None:
        state = self.state
        if state is State.INITIAL:
            text = f"Send {'LHLO' if self.lmtp else 'EHLO or HELO'} first (before {name})"
        elif name == "MAIL":
            text = "Sender already given; send RSET to start over"
        elif state in TRANSACTION_STATES:
            text = f"{name} is not allowed during a mail transaction; send RSET first"
        else:
            text = f"Bad sequence of commands: {name} needs MAIL first"
        self.commandError(503, "5.5.1", text)

    def commandError(self, code: int, enhanced: str, text: str) -> None:
        """Refuse a command, count the error, and close after too many."""
        self.reply(code, enhanced, text)
        self._errors += 1
        self.logRefusal("command", SMTPError(code, enhanced, text))
        if self._errors >= self.config.maxErrors:
            self.reply(421, "4.7.0", f"{self.config.hostname} Too many errors, closing connection")
            self.close("too-many-errors")

    def _extraCommand(self, name: str, argument: bytes) -> None:
        """A verb of the protocol's own (``do_VERB``): ask the glue to run it, in order."""
        self.call(None, "command", (name, argument), None, what=f"do_{name}")

