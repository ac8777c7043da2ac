"""
The server side of an SMTP or LMTP session, without I/O.

Theory of operation
===================

A :class:`ServerSession` is the whole of one SMTP conversation as a state
machine that never touches a socket, a reactor or a clock.  Its inputs are
octets (:meth:`~ServerSession.receive`), the results of the hooks it asked
for (:meth:`~ServerSession.hookDone`, :meth:`~ServerSession.hookFailed`),
the time (passed in with every input, and :meth:`~ServerSession.checkTime`),
and the end of the connection (:meth:`~ServerSession.connectionLost`).
Its outputs are reply octets (:meth:`~ServerSession.takeOutput`) and
*actions* (:meth:`~ServerSession.nextAction`, see
:mod:`txsmtp.session.actions`): hook calls to make, clean-ups, STARTTLS,
close.  The Twisted protocol (:class:`txsmtp.server.ESMTPServer`) is the
glue that carries bytes and actions between the two; the tests drive the
session directly.

States.  :class:`~txsmtp.session.table.State` and the table of which
command is allowed in which state are data, in
:mod:`txsmtp.session.table`::

    INITIAL --EHLO/HELO/LHLO--> READY --MAIL--> MAIL --RCPT--> RCPT --DATA--> DATA
       ^                          ^  \\                     \\--BDAT--> BDAT   |
       |                          |   AUTH <-> READY                   |      |
       |                          +--- final reply, RSET, EHLO --------+------+
    (STARTTLS resets here)

Order.  Input is handled strictly in order.  A hook that answers later (a
Deferred or a coroutine) leaves a *blocking* call outstanding: the session
reads nothing more until its result arrives, and later input waits in the
line reader (bounded: the glue pauses the transport when too much waits,
see :attr:`~ServerSession.wantsInputPaused`).  Replies are appended to one
buffer, which the glue writes when the session has nothing more to do:
that is when every complete command received so far is answered, as RFC
2920 asks, and one write per command in the ordinary case.

Ownership.  Every hook call has an owner (a
:class:`~txsmtp.session.actions.Scope`): the session's lifetime, or the
current :class:`~txsmtp.session.transaction.Transaction`.  Ending the owner
(the final reply, RSET, EHLO, STARTTLS, disconnect, timeout, shutdown)
cancels what it has in flight and aborts its receiver; a result that
arrives for a dead owner is cleaned up (receiver aborted, session closed,
avatar logged out) and never acted on.

Replies owed.  A command gets one reply, except the end of a message under
LMTP, which gets one per accepted recipient (RFC 2033 §4.2): the rule lives
in :meth:`Transaction.repliesOwed` and :func:`finalReplies` and serves DATA
and BDAT alike (:mod:`txsmtp.session.message`).

Time.  RFC 5321 §4.5.3.2.7 times a *command*, not silence: each command
line has a deadline counted from its first octet (or from the moment the
session became ready for it), so a client trickling one octet at a time
gains nothing.  Message octets have the data-block timeout and a minimum
average rate.  A hook that never answers is given up on after the
command timeout as well.

Where things live: the input loop, dispatch and hook plumbing here; MAIL
and RCPT in :mod:`txsmtp.session.mail`; DATA and the path of a message's
octets to the receiver in :mod:`txsmtp.session.message`; BDAT in
:mod:`txsmtp.session.chunking`; AUTH in :mod:`txsmtp.session.auth`;
STARTTLS in :mod:`txsmtp.session.starttls`; the greeting and the small
commands in :mod:`txsmtp.session.basic`; time in
:mod:`txsmtp.session.timing`; the log in :mod:`txsmtp.session.logs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.envelope import ConnectionInfo
from txsmtp.errors import SMTPError
from txsmtp.session.actions import Action, Call, Close, Notify, Scope
from txsmtp.session.auth import AuthCommands
from txsmtp.session.basic import BasicCommands
from txsmtp.session.chunking import ChunkingCommands
from txsmtp.session.commands import CommandDispatch, CommandTable, Handler
from txsmtp.session.logs import SessionLog
from txsmtp.session.mail import MailCommands
from txsmtp.session.message import MessageCommands
from txsmtp.session.starttls import StartTLSCommand
from txsmtp.session.table import COMMANDS, TRANSACTION_STATES, State
from txsmtp.session.timing import Timeouts
from txsmtp.session.transaction import Transaction
from txsmtp.wire.lines import TOO_LONG, LineReader
from txsmtp.wire.reply import formatReply

__all__ = ["ServerSession"]

_log = Logger(namespace="txsmtp.server")


class ServerSession(
    CommandDispatch,
    MailCommands,
    MessageCommands,
    ChunkingCommands,
    AuthCommands,
    StartTLSCommand,
    BasicCommands,
    Timeouts,
    SessionLog,
    Scope,
):
    """
    One SMTP (or, with ``lmtp=True``, LMTP) server session without I/O.

    :param config: the settings (an :class:`~txsmtp.server.SMTPFactory`:
        host name, limits, timeouts, the delivery, TLS and AUTH settings).
    :param host: the protocol that runs the session; it supplies what a
        subclass may change (``extensions()``, ``greeting()``,
        ``receivedHeader(envelope)``, ``checkMailParameters(params)``,
        ``authMechanisms()``) and runs its own ``do_VERB`` commands.
    :param connection: the :class:`~txsmtp.envelope.ConnectionInfo`.
    :param commands: the command table (built-in and the host's verbs).
    :param execute: carry out each action at once instead of queueing it
        for :meth:`nextAction` (the glue's fast path: a hook that answers
        at once costs no trip through the queue).  The order of effects is
        the same either way.
    """

    __slots__ = (
        "config", "host", "connection", "state", "deliverySession", "transaction",
        "_commands", "_lines", "_out", "_actions", "_execute", "_late", "_blocked", "_errors", "_now",
        "_commandSince", "_blockedSince", "_dataSince", "_rateStart", "_rateBytes",
        "_shuttingDown", "_mechanism", "_pendingLogin", "_authFailures", "_authChain", "_anonymousSession", "_logout", "_refusals",
        "_chunkLeft", "_chunkLast", "_chunkSize", "_chunkError",
        "_since", "_endReason", "_accepted", "_refused", "proxyPeer",
    )  # fmt: skip

    def __init__(
        self,
        config: Any,
        host: Any,
        connection: ConnectionInfo,
        commands: CommandTable,
        now: float = 0.0,
        execute: Callable[[Action], None] | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.connection = connection
        self.state = State.INITIAL
        self.deliverySession: Any = None
        self.transaction: Transaction | None = None
        self._commands = commands
        self._lines = LineReader(config.maxLineLength)
        self._out: list[bytes] | None = None
        # Actions queued for nextAction(); with execute= there are none.
        self._actions: list[Action] | None = None
        self._execute = execute
        self._late = 0
        self._blocked: Call | str | None = None
        # The session is the scope of the calls made for it (a Scope itself).
        self.alive = True
        self.calls = None
        self._errors = 0
        self._now = now
        self._commandSince = now
        self._blockedSince = now
        self._dataSince = now
        self._rateStart = now
        self._rateBytes = 0
        self._shuttingDown = False
        self._mechanism: Any = None
        self._pendingLogin: Any = None
        self._authFailures = 0
        self._authChain: tuple[str, list[str]] | None = None
        self._refusals = 0
        self._anonymousSession: Any = None
        self._logout: Any = None
        self._chunkLeft = 0
        self._chunkLast = False
        self._chunkSize = 0
        self._chunkError: tuple[SMTPError, int] | None = None
        self.startConnectionLog(now)

    @property
    def lmtp(self) -> bool:
        """Whether this is an LMTP session (RFC 2033)."""
        return self._commands.lmtp

    # -- inputs ------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The connection is ready (behind a proxy: its header was read): open the delivery session."""
        self._now = self._commandSince = now
        self.call(
            self.config.delivery,
            "openSession",
            (self.connection,),
            self._sessionOpened,
            cleanup=_closeSession,
        )

    def receive(self, data: bytes, now: float) -> None:
        """Octets from the client."""
        if self.state is State.CLOSED:
            return
        self._now = now
        if self._chunkLeft or (
            self.transaction is not None and self.transaction.decoder is not None
        ):
            self._dataSince = now
        elif not self._lines.pending():
            # The first octet of a command line starts its clock.
            self._commandSince = now
        self._lines.feed(data)

    def hookDone(self, call: Call, value: Any, now: float | None = None) -> None:
        """The result of ``call``."""
        if call.late or not call.owner.alive:
            self._resolve(call, value, None, now)
            return
        # The common case, a hook that answered at once: kept short.
        if now is not None:
            self._now = now
        if call.blocking and self._blocked is call:
            self._blocked = None
            self._commandSince = self._dataSince = self._now
        then = call.then
        if then is not None:
            then(value, None)

    def hookPending(self, call: Call) -> None:
        """The result of ``call`` will come later (its Deferred has not fired)."""
        call.late = True
        self._late += 1
        owner = call.owner
        calls = owner.calls
        if calls is None:
            owner.calls = {call: None}
        else:
            calls[call] = None
        if not call.blocking and isinstance(owner, Transaction) and owner.alive:
            # A receiver pushing back: stop reading until it catches up.
            if not owner.slowWrites:
                self._blockedSince = self._now
            owner.slowWrites += 1

    def hookFailed(self, call: Call, failure: Failure, now: float | None = None) -> None:
        """``call`` raised or its Deferred failed."""
        self._resolve(call, None, failure, now)

    def _resolve(self, call: Call, value: Any, failure: Failure | None, now: float | None) -> None:
        if now is not None:
            self._now = now
        owner = call.owner
        if call.late:
            self._late -= 1
            if owner.calls:
                owner.calls.pop(call, None)
        if not owner.alive:
            # A result for a dead transaction or a closed connection.
            if failure is None and call.cleanup is not None:
                action = call.cleanup(value)
                if action is not None:
                    self.emit(action)
            elif failure is not None and not isinstance(failure.value, (SMTPError, *_CANCELLED)):
                _log.failure("{what} failed after its transaction ended", failure, what=call.name)
            return
        if call.blocking:
            if self._blocked is call:
                self._unblock()
        elif call.late:
            owner.slowWrites -= 1  # type: ignore[attr-defined]
            if not owner.slowWrites:  # type: ignore[attr-defined]
                # Time spent waiting for the receiver is ours: the client's
                # idle and rate clocks start again.
                self._dataSince = self._rateStart = self._now
                self._rateBytes = 0
        then = call.then
        if then is not None:
            then(value, failure)

    def connectionLost(self, now: float, error: str | None = None) -> None:
        """
        The connection is gone: end the transaction and the session.

        :param error: why the transport closed, when not a clean close.
        """
        self._now = now
        error = self.noteConnectionLost(error)
        self._abandonTransaction("disconnected", "client disconnected", notify=False)
        self.state = State.CLOSED
        self._blocked = None
        emit = self.emit
        if self.calls:
            for action in Scope.end(self):
                emit(action)
        else:
            self.alive = False
        if self._mechanism is not None or self._pendingLogin is not None:
            self._authDone()
        if self._refusals > self.refusalsLogged:
            self.logRefusalsNotLogged()
        self.logConnection(error)
        # An authenticated session's avatar is closed by its logout; the
        # anonymous session it replaced, and any other session, by close().
        logout, self._logout = self._logout, None
        anonymous, self._anonymousSession = self._anonymousSession, None
        session, self.deliverySession = self.deliverySession, None
        if logout is not None:
            emit(Notify(None, "logout", (logout,), "avatar logout"))
        elif session is not None:
            emit(Notify(session, "close", (), "delivery session close()"))
        if anonymous is not None and anonymous is not session:
            emit(Notify(anonymous, "close", (), "delivery session close()"))

    # -- outputs -----------------------------------------------------------------

    def nextAction(self) -> Action | None:
        """
        The next thing for the glue to do, or ``None`` when the session waits
        (for input, or for the result of a blocking call).
        """
        actions = self._actions
        if actions is None:
            actions = self._actions = []
        while True:
            if not actions and self._blocked is None:
                self._process()
            if not actions:
                return None
            action = actions.pop(0)
            if type(action) is Call and not action.owner.alive:
                continue  # queued for a transaction that has ended since
            return action

    def advance(self) -> bytes:
        """
        With ``execute=`` (actions carried out as they are emitted): handle
        buffered input as far as it goes, then return the replies to write
        now; ``b""`` while a blocking call is outstanding (RFC 2920: replies
        go out when every command received so far is answered).
        """
        if self._blocked is None:
            self._process()
            if self._blocked is None:
                out = self._out
                if not out:
                    return b""
                self._out = None
                return out[0] if len(out) == 1 else b"".join(out)
        return b""

    def takeOutput(self) -> bytes:
        """The reply octets produced so far (and forget them)."""
        out = self._out
        if not out:
            return b""
        self._out = None
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def inFlight(self) -> bool:
        """Whether a hook call's result is still to come (even for an ended transaction)."""
        return self._late > 0

    def detach(self) -> None:
        """
        After the connection is gone and nothing is in flight: drop the
        references to the glue, so that the session and its protocol are
        freed at once rather than by the cycle collector.
        """
        self.host = None
        self._execute = None

    @property
    def waiting(self) -> bool:
        """Whether a blocking hook call (or the receiver's writes) holds up the input."""
        return self._blocked is not None

    @property
    def wantsInputPaused(self) -> bool:
        """Whether the glue should stop reading: input piles up, or the receiver pushes back."""
        t = self.transaction
        if t is not None and t.slowWrites:
            return True
        return self._blocked is not None and self._lines.pending() > self.host.maxPendingInput

    # -- hooks -------------------------------------------------------------------

    def emit(self, action: Action) -> None:
        """Hand ``action`` to the glue: at once, or through :meth:`nextAction`."""
        execute = self._execute
        if execute is not None:
            execute(action)
        elif self._actions is None:
            self._actions = [action]
        else:
            self._actions.append(action)

    def call(
        self,
        target: Any,
        method: str,
        args: tuple[Any, ...],
        then: Any,
        *,
        owner: Scope | None = None,
        blocking: bool = True,
        cleanup: Any = None,
        what: str | None = None,
    ) -> Call:
        """Ask the glue for ``target.method(*args)``; ``then(value, failure)`` gets the result."""
        c = Call(
            target,
            method,
            args,
            owner if owner is not None else self,
            then,
            blocking,
            cleanup,
            what,
        )
        if blocking:
            self._blocked = c
            self._blockedSince = self._now
        execute = self._execute
        if execute is not None:
            execute(c)
        else:
            self.emit(c)
        return c

    def _block(self, reason: Call | str) -> None:
        self._blocked = reason
        self._blockedSince = self._now

    def _unblock(self) -> None:
        self._blocked = None
        # The client was waiting for us, not idle: its clock restarts now.
        self._commandSince = self._dataSince = self._now

    def errorFromFailure(self, failure: Failure, what: str) -> SMTPError:
        """An :class:`SMTPError` as is; anything else is logged and becomes ``451 4.3.0``."""
        if isinstance(failure.value, SMTPError):
            return failure.value
        _log.failure(
            "{what} failed in the delivery for {peer}; the client gets a temporary failure",
            failure,
            what=what,
            peer=self.connection.peerHost,
        )
        return SMTPError(451, "4.3.0", "Local error in processing; try again later")

    # -- the input loop ----------------------------------------------------------

    def _process(self) -> None:
        """Handle buffered input until it runs out or a hook makes us wait."""
        lines = self._lines
        while self._blocked is None and self.state is not State.CLOSED and not self._actions:
            t = self.transaction
            if t is not None and t.decoder is not None and not t.chunked:
                rest = lines.takeRest()
                if not rest:
                    break
                self._dataOctets(t, rest)
                continue
            if self._chunkLeft:
                rest = lines.takeRest()
                if not rest:
                    break
                self._bdatOctets(rest)
                continue
            line = lines.readLine()
            if line is None:
                break
            if line is TOO_LONG:
                if self.state is State.AUTH:
                    self._authDone()
                    self.commandError(500, "5.5.6", "Authentication exchange line is too long")
                    continue
                self.commandError(
                    500, "5.5.2", f"Line too long (at most {lines.maxLength} octets including CRLF)"
                )
                continue
            self.lineReceived(line)  # type: ignore[arg-type]
            if not lines.pending():
                # Every command received is answered: the clock of the next
                # one starts now (or with its first octet, in receive()).
                self._commandSince = self._now

    # -- replies -----------------------------------------------------------------

    def reply(self, code: int, enhanced: str | None, text: str | list[str]) -> None:
        """Queue a reply (``text``: a line, or the lines of a multi-line reply)."""
        if self.state is not State.CLOSED:
            self._say(formatReply(code, text, enhanced))

    def _say(self, data: bytes) -> None:
        """Queue reply octets (the reply buffer exists only while it holds some)."""
        out = self._out
        if out is None:
            self._out = [data]
        else:
            out.append(data)

    def replyError(self, error: SMTPError) -> None:
        """Queue the reply an :class:`~txsmtp.errors.SMTPError` describes."""
        self.reply(error.code, error.enhanced or f"{error.code // 100}.0.0", error.text)

    def close(self, why: str = "closed") -> None:
        """
        Send what is queued, then close (the end of the session).

        :param why: a word for the connection's log line (``quit``,
            ``timeout``, ``too-many-errors``...).
        """
        if self.state is State.CLOSED:
            return
        self.noteConnectionEnd(why)
        if self.transaction is not None:
            self._endTransaction("connection closing")
        self.state = State.CLOSED
        self._blockedSince = self._now  # now the time the closing began
        self.emit(Close())

    # -- the transaction ---------------------------------------------------------

    def _endTransaction(self, why: str, notify: bool = True) -> None:
        """End the current transaction (if any) and tell the delivery session."""
        t, self.transaction = self.transaction, None
        self._chunkLeft = 0
        self._chunkError = None
        if self.state in TRANSACTION_STATES:
            self.state = State.READY
        if t is None:
            return
        for action in t.end(why):
            self.emit(action)
        if self._blocked == "writes":
            self._unblock()
        if notify and self.deliverySession is not None:
            self.emit(Notify(self.deliverySession, "reset", (), "delivery session reset()"))

    def _abandonTransaction(self, result: str, why: str, notify: bool = True) -> None:
        """End a transaction nobody answers; log it once its receiver is aborted."""
        t = self.transaction
        if t is None:
            return
        self._endTransaction(why, notify)
        self.emit(Notify(self, "logTransaction", (result, None, None, t), "logging"))

    def resetTransaction(self) -> None:
        """Forget the current transaction (and tell the delivery session)."""
        self._endTransaction("transaction reset")

    def afterTransaction(self) -> None:
        """A transaction was answered: close now if a shutdown waits for it."""
        if self._shuttingDown:
            self.reply(
                421, "4.3.2", f"{self.config.hostname} Service shutting down, closing connection"
            )
            self.close("shutdown")


_CANCELLED = (CancelledError,)


def _closeSession(session: Any) -> Notify:
    """The clean-up of a delivery session that arrived too late."""
    return Notify(session, "close", (), "delivery session close()")


#: The built-in commands: verb -> handler, with the states from the table.
BUILTIN: dict[str, Handler] = {
    "EHLO": ServerSession.do_EHLO,
    "HELO": ServerSession.do_HELO,
    "LHLO": ServerSession.do_LHLO,
    "MAIL": ServerSession.do_MAIL,
    "RCPT": ServerSession.do_RCPT,
    "DATA": ServerSession.do_DATA,
    "BDAT": ServerSession.do_BDAT,
    "RSET": ServerSession.do_RSET,
    "NOOP": ServerSession.do_NOOP,
    "QUIT": ServerSession.do_QUIT,
    "VRFY": ServerSession.do_VRFY,
    "EXPN": ServerSession.do_EXPN,
    "HELP": ServerSession.do_HELP,
    "STARTTLS": ServerSession.do_STARTTLS,
    "AUTH": ServerSession.do_AUTH,
}
assert set(BUILTIN) == set(COMMANDS)
