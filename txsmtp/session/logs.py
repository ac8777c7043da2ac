"""
What a session logs: one line per refused command (the first
:attr:`SessionLog.refusalsLogged` of a connection, then one line at its end
for the rest), one per transaction, and one per connection at its end,
each an event with its fields for structured observers and a ready-made
text for the operator's log.  Every line names the connection's
``session=`` id; a transaction's line names its own ``id=`` (the one in the
250 reply and the ``Received:`` field) and, when the queue took the
message, the queue's ``stored=`` id, which the queue's lines begin with:
so ``grep`` follows a message from the connection to its deliveries
(docs/operations/logs.rst).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

from txsmtp.errors import SMTPError
from txsmtp.session.base import SessionBase
from txsmtp.session.transaction import Transaction

__all__ = ["SessionLog"]

_NAMESPACE = "txsmtp.server"
_log = Logger(namespace=_NAMESPACE)


def _emit(fields: dict[str, Any]) -> None:
    """
    One info event of the server's namespace with ``fields`` (``text`` the
    line), handed to the logger's observer as ``Logger.emit`` would (the
    event keys twisted.logger documents) without its per-call level lookup:
    these are the lines of every message and connection.
    """
    fields.update(
        log_logger=_log,
        log_level=LogLevel.info,
        log_namespace=_NAMESPACE,
        log_source=None,
        log_format="{text}",
        log_time=time.time(),
    )
    _log.observer(fields)


class SessionLog(SessionBase):
    """The logging part of a session."""

    if not TYPE_CHECKING:
        __slots__ = ()

    # -- logging -----------------------------------------------------------------
    #
    # Log events carry their fields for structured observers, and a text
    # already formatted (cheaper than twisted.logger's field formatting,
    # which matters at thousands of messages a second).

    #: How many refused commands of one connection are logged one by one;
    #: the others are counted, and one line at the end of the connection
    #: says how many were left out (a client that repeats a refused command
    #: in a loop does not flood the log).
    refusalsLogged = 5

    # -- the connection's line: what it keeps until the end ----------------------

    def startConnectionLog(self, now: float) -> None:
        """
        Begin the record the connection's line reports: when it began, why
        it ended, its messages accepted and refused, and the PROXY sender's
        address (set by the glue once a PROXY header named the client).
        """
        self._since = now
        self._endReason = None
        self._accepted = 0
        self._refused = 0
        self.proxyPeer = None

    def noteConnectionEnd(self, why: str) -> None:
        """The server is closing the connection, for ``why`` (the first reason given stands)."""
        if self._endReason is None:
            self._endReason = why

    def noteConnectionLost(self, error: str | None) -> str | None:
        """
        The transport closed (``error``: how, when not cleanly).  Return the
        error worth logging: none when the server had closed it already.
        """
        if self._endReason is None:
            self._endReason = "client-closed" if error is None else "lost"
            return error
        return None

    def logRefusal(self, command: str, error: SMTPError, **extra: Any) -> None:
        self.config.events.commandRefused(self.connection, command, error.code)
        self._refusals += 1
        if self._refusals > self.refusalsLogged:
            return
        conn = self.connection
        detail = "".join(f" {k}=<{v}>" for k, v in extra.items())
        _log.info(
            "{text}",
            text=f"refused {command} from {conn.peerHost}: {error.code} {error.enhanced} {error.text}{detail}",
            command=command,
            peer=conn.peerHost,
            code=error.code,
            enhanced=error.enhanced,
            reason=error.text,
            session=conn.sessionId,
        )

    def logRefusalsNotLogged(self) -> None:
        """At the end of a connection: how many refused commands were not logged."""
        conn = self.connection
        count = self._refusals - self.refusalsLogged
        _log.info(
            "{text}",
            text=f"{count} more refused command{'s' if count != 1 else ''} from {conn.peerHost} not logged "
            f"({self._refusals} in all on this connection)",
            peer=conn.peerHost,
            refusalsNotLogged=count,
            refusals=self._refusals,
            session=conn.sessionId,
        )

    def _logTransaction(
        self,
        result: str,
        error: SMTPError | None,
        size: int | None = None,
        results: list[SMTPError | None] | None = None,
    ) -> None:
        self.logTransaction(result, error, size, self.transaction, results)

    def logTransaction(
        self,
        result: str,
        error: SMTPError | None,
        size: int | None,
        t: Transaction | None,
        results: list[SMTPError | None] | None = None,
    ) -> None:
        """
        Log the outcome of transaction ``t``: one line an operator can follow.

        The line names the recipients; when the delivery answered for each
        (LMTP, or a message stored for some only) each with its result:
        ``to=<a@example.com> ok, <b@example.org> [452 4.2.2 Mailbox full]``.
        When the receiver said where it stored the message (``storedAt``),
        ``stored=`` names it.  A field that is not known (the size of a
        message refused before its end) is left out.
        """
        if t is None:
            return
        if result.startswith("accepted"):
            self._accepted += 1
        else:
            self._refused += 1
        envelope = t.envelope
        conn = self.connection
        self.config.events.messageDone(conn, envelope, error.code if error is not None else 250, size)
        tls = conn.tls
        tlsText = f" tls={tls.version}/{tls.cipher}" if tls is not None else ""
        auth = f" auth={conn.authenticated}" if conn.authenticated else ""
        reason = f" reason=[{error}]" if error is not None else ""
        sizeText = f" size={size}" if size is not None else ""
        peer = conn.peerHost
        returnPath = envelope.returnPath
        addresses = [str(r.address) for r in envelope.recipients]
        fields: dict[str, Any] = {}
        if (
            results is not None
            and len(results) == len(addresses)
            and any([isinstance(r, SMTPError) for r in results])
        ):
            # Which recipients have the message and why the others do not.
            errors = [str(r) if isinstance(r, SMTPError) else None for r in results]
            to = ", ".join(
                [f"<{a}> [{e}]" if e is not None else f"<{a}> ok" for a, e in zip(addresses, errors, strict=True)]
            )
            fields["recipientResults"] = errors
        else:
            to = ",".join([f"<{a}>" for a in addresses])
        stored = t.storedAt
        if stored:
            locations = [stored] if isinstance(stored, str) else [str(x) for x in stored]
            fields["stored"] = locations
            storedText = f" stored={','.join(locations)}"
        else:
            storedText = ""
        # The one event per message.
        _emit(
            {
                "text": f"{result} id={envelope.queueId} from={returnPath} to={to}"
                f"{sizeText} peer={peer} helo={conn.heloName}{tlsText}{auth}{storedText} session={conn.sessionId}{reason}",
                "result": result,
                "queueId": envelope.queueId,
                "sender": returnPath,
                "recipients": addresses,
                "rcpts": len(addresses),
                "size": size,
                "peer": peer,
                "helo": conn.heloName,
                "tlsVersion": tls.version if tls is not None else None,
                "tlsCipher": tls.cipher if tls is not None else None,
                "authenticated": conn.authenticated,
                "session": conn.sessionId,
                **fields,
            }
        )

    def logConnection(self, error: str | None = None) -> None:
        """
        The connection's line, at its end: ``connection session=ID
        peer=ADDRESS [proxy=ADDRESS] helo=NAME [tls=VERSION] [auth=USER]
        duration=SECONDS accepted=N refused=N refusedCommands=N end=WHY
        [error=[TEXT]]``.

        ``end`` is why it ended: ``quit``, ``client-closed`` (the client
        closed without QUIT), ``lost`` (a network error, named by
        ``error``), ``timeout``, ``data-too-slow``, ``delivery-timeout``,
        ``shutdown``, ``too-many-errors``, ``auth-failures``,
        ``auth-limit``, ``refused-at-connect``, ``bad-bdat``, or ``closed``
        (closed by a ``do_VERB`` of a subclass).
        """
        conn = self.connection
        tls = conn.tls
        tlsVersion = tls.version if tls is not None else None
        proxy = self.proxyPeer
        duration = round(self._now - self._since, 3)
        end = self._endReason or "closed"
        text = (
            f"connection session={conn.sessionId} peer={conn.peerHost}"
            f"{f' proxy={proxy}' if proxy else ''} helo={conn.heloName}"
            f"{f' tls={tlsVersion}' if tlsVersion else ''}"
            f"{f' auth={conn.authenticated}' if conn.authenticated else ''}"
            f" duration={duration:.3f} accepted={self._accepted} refused={self._refused}"
            f" refusedCommands={self._refusals} end={end}"
            f"{f' error=[{error}]' if error else ''}"
        )
        _emit(
            {
                "text": text,
                "session": conn.sessionId,
                "peer": conn.peerHost,
                "proxy": proxy,
                "helo": conn.heloName,
                "tlsVersion": tlsVersion,
                "authenticated": conn.authenticated,
                "duration": duration,
                "accepted": self._accepted,
                "refused": self._refused,
                "refusedCommands": self._refusals,
                "end": end,
                "error": error,
            }
        )
