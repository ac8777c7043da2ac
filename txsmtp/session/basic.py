"""
The greeting and EHLO/HELO/LHLO, the small commands of RFC 5321 §4.1.1
(RSET, NOOP, QUIT, VRFY, EXPN, HELP) and STARTTLS (RFC 3207), as part of
:class:`~txsmtp.session.core.ServerSession`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.session.base import SessionBase
from txsmtp.session.table import State
from txsmtp.wire.reply import formatReply

__all__ = ["BasicCommands"]

_log = Logger(namespace="txsmtp.server")

_VRFY_252 = "Cannot VRFY user, but will accept message and attempt delivery"


class BasicCommands(SessionBase):
    """The greeting, EHLO/HELO/LHLO, RSET, NOOP, QUIT, VRFY, EXPN, HELP and STARTTLS."""

    if not TYPE_CHECKING:
        __slots__ = ()

    # -- the small commands ------------------------------------------------------

    def do_RSET(self, verb: str, argument: bytes) -> None:
        if argument.strip():
            self.commandError(501, "5.5.4", "Syntax: RSET takes no argument")
            return
        self._endTransaction("transaction reset")
        self.reply(250, "2.0.0", "OK")
        self.afterTransaction()

    def do_NOOP(self, verb: str, argument: bytes) -> None:
        self.reply(250, "2.0.0", "OK")

    def do_QUIT(self, verb: str, argument: bytes) -> None:
        self.reply(221, "2.0.0", f"{self.config.hostname} Bye")
        self._endTransaction("client quit")
        self.close("quit")

    def do_VRFY(self, verb: str, argument: bytes) -> None:
        text = argument.strip().decode("utf-8", "replace")
        if not text:
            self.commandError(501, "5.5.4", "Syntax: VRFY <address>")
            return
        session = self.deliverySession
        if getattr(session, "verify", None) is None:
            # RFC 5321 §7.3: 252 tells nothing about who exists.
            self.reply(252, "2.5.0", _VRFY_252)
            return

        def then(value: Any, failure: Failure | None) -> None:
            if failure is not None:
                self.replyError(self.errorFromFailure(failure, "verify"))
            elif value is None:
                self.reply(252, "2.5.0", _VRFY_252)
            else:
                self.reply(250, "2.1.5", str(value))

        self.call(session, "verify", (text,), then)

    def do_EXPN(self, verb: str, argument: bytes) -> None:
        # RFC 5321 §7.3: disabling EXPN is allowed; say so clearly.
        self.reply(502, "5.5.1", "EXPN is not available on this server")

    def do_HELP(self, verb: str, argument: bytes) -> None:
        topic = argument.strip().decode("ascii", "replace").upper()
        helpTexts = self.host.helpTexts
        names = self._commands.names
        if topic:
            text = helpTexts.get(topic)
            if text is None or topic not in names:
                if topic in names:
                    text = f"{topic} -- see the RFC that defines it"
                else:
                    self.reply(504, "5.5.1", f"No help for {topic[:20]}: not a command here")
                    return
            self.reply(214, "2.0.0", text)
            return
        commands = " ".join(sorted(names))
        self.reply(
            214, "2.0.0", [f"Commands: {commands}", "HELP <command> for details; see RFC 5321"]
        )

    # -- the greeting and EHLO ----------------------------------------------------

    def _sessionOpened(self, session: Any, failure: Failure | None) -> None:
        if failure is not None:
            err = self.errorFromFailure(failure, "opening a session")
            self.state = State.REFUSED
            self._say(formatReply(err.code, f"{self.config.hostname} {err.text}"))
            self.logRefusal("connect", err)
            if err.code == 421:
                # RFC 5321 §3.8: 421 closes the transmission channel.
                self.close("refused-at-connect")
            return
        self.deliverySession = session
        self._say(formatReply(220, self.host.greeting()))

    def _greet(self, argument: bytes, verb: str, esmtp: bool) -> str | None:
        """Common part of EHLO, HELO and LHLO: check the name, start afresh."""
        name = argument.strip()
        if not name or b" " in name:
            self.commandError(501, "5.5.4", f"Syntax: {verb} your.host.name")
            return None
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            self.commandError(501, "5.5.4", f"Syntax: {verb} your.host.name (not valid UTF-8)")
            return None
        # RFC 5321 §4.1.4: EHLO in a transaction resets it.
        self._endTransaction("new greeting")
        self.connection.heloName = text
        self.connection.esmtp = esmtp
        self.state = State.READY
        return f"{self.config.hostname} Hello {text} [{self.connection.peerHost}]"

    def do_EHLO(self, verb: str, argument: bytes) -> None:
        if self.lmtp:
            self.commandError(500, "5.5.1", "This is an LMTP server: use LHLO (RFC 2033)")
            return
        hello = self._greet(argument, verb, verb != "HELO")
        if hello is None:
            return
        if verb == "HELO":
            self.reply(250, None, hello)
        else:
            self.reply(250, None, [hello, *self.host.extensions()])
        self.afterTransaction()

    do_HELO = do_EHLO

    def do_LHLO(self, verb: str, argument: bytes) -> None:
        hello = self._greet(argument, "LHLO", True)
        if hello is not None:
            self.reply(250, None, [hello, *self.host.extensions()])
            self.afterTransaction()
