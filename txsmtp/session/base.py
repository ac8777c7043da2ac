"""
What the parts of a :class:`~txsmtp.session.core.ServerSession` know of
each other, for the type checker: the session is one object assembled from
parts (:mod:`~txsmtp.session.message`, :mod:`~txsmtp.session.auth`,
:mod:`~txsmtp.session.chunking`, :mod:`~txsmtp.session.starttls`,
:mod:`~txsmtp.session.basic`, :mod:`~txsmtp.session.timing`,
:mod:`~txsmtp.session.logs`), and each part sees the others' state and
methods through this base.  Nothing here exists at run time beyond an
empty class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SessionBase"]

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from txsmtp.envelope import ConnectionInfo
    from txsmtp.errors import SMTPError
    from txsmtp.session.actions import Action, Call, Scope
    from txsmtp.session.commands import CommandTable
    from txsmtp.session.table import State
    from txsmtp.session.transaction import Transaction
    from txsmtp.wire.lines import LineReader


class SessionBase:
    """The shared view of a session's state (declarations only)."""

    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:
        config: Any
        host: Any
        connection: ConnectionInfo

        @property
        def lmtp(self) -> bool: ...

        state: State
        deliverySession: Any
        transaction: Transaction | None
        _commands: CommandTable
        _lines: LineReader
        _out: list[bytes] | None
        _actions: list[Action] | None
        _blocked: Call | str | None
        alive: bool
        calls: dict[Call, None] | None
        _errors: int
        _now: float
        _commandSince: float
        _blockedSince: float
        _dataSince: float
        _rateStart: float
        _rateBytes: int
        _shuttingDown: bool
        _mechanism: Any
        _pendingLogin: Any
        _authFailures: int
        _authChain: tuple[str, list[str]] | None
        _refusals: int
        _since: float
        _endReason: str | None
        _accepted: int
        _refused: int
        proxyPeer: str | None
        refusalsLogged: int
        _anonymousSession: Any
        _logout: Any
        _chunkLeft: int
        _chunkLast: bool
        _chunkSize: int
        _chunkError: tuple[SMTPError, int] | None

        # core
        def emit(self, action: Action) -> None: ...
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
        ) -> Call: ...
        def reply(self, code: int, enhanced: str | None, text: str | list[str]) -> None: ...
        def replyError(self, error: SMTPError) -> None: ...
        def _say(self, data: bytes) -> None: ...
        def commandError(self, code: int, enhanced: str, text: str) -> None: ...
        def errorFromFailure(self, failure: Failure, what: str) -> SMTPError: ...
        def close(self, why: str = ...) -> None: ...
        def afterTransaction(self) -> None: ...
        def _block(self, reason: Call | str) -> None: ...
        def _unblock(self) -> None: ...
        def _endTransaction(self, why: str, notify: bool = True) -> None: ...
        def _abandonTransaction(self, result: str, why: str, notify: bool = True) -> None: ...

        # message
        def tooBig(self) -> SMTPError: ...
        def _noRecipients(self) -> SMTPError: ...
        def _openMessage(self, t: Transaction, opened: Any, refused: Any) -> None: ...
        def _body(self, t: Transaction, decoder: Any, body: bytes) -> None: ...
        def _endOfMessage(self, t: Transaction) -> None: ...
        def _dataOctets(self, t: Transaction, data: bytes) -> None: ...
        def _bdatOctets(self, data: bytes) -> None: ...

        # auth
        def _authResponse(self, line: bytes) -> None: ...
        def _authDone(self) -> None: ...
        def restoreAnonymousSession(self) -> None: ...

        # logs
        def logRefusal(self, command: str, error: SMTPError, **extra: Any) -> None: ...
        def logRefusalsNotLogged(self) -> None: ...
        def logConnection(self, error: str | None = None) -> None: ...
        def _logTransaction(
            self,
            result: str,
            error: SMTPError | None,
            size: int | None = None,
            results: list[SMTPError | None] | None = None,
        ) -> None: ...
