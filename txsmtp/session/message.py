"""
DATA and BDAT: opening a message, streaming its octets to the delivery's
receiver, and answering its end.  One path for both commands:

- :meth:`MessageCommands._openMessage` assigns the queue id, builds the
  ``Received:`` header and asks the delivery for a receiver;
- :meth:`MessageCommands._body` applies the limits (size, RFC 1870; bare
  CR or LF, RFC 5321 §2.3.8) to decoded octets and writes them;
- :meth:`MessageCommands._endOfMessage` waits for the receiver's pending
  writes, calls ``finish()``, and gives the replies owed
  (:func:`~txsmtp.session.transaction.finalReplies`): one over SMTP, one
  per accepted recipient under LMTP, for the final dot and BDAT LAST alike.

DATA's octets go through a :class:`~txsmtp.wire.data.DataDecoder` (the
final dot only on CRLF.CRLF, dot-unstuffing).  BDAT's own rules (octet
counting, chunks read to be thrown away) are in
:mod:`txsmtp.session.chunking`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.errors import SMTPError
from txsmtp.session.actions import Notify
from txsmtp.session.base import SessionBase
from txsmtp.session.table import State
from txsmtp.session.transaction import Transaction, finalReplies
from txsmtp.wire.data import ChunkDecoder, DataDecoder

__all__ = ["MessageCommands"]

_log = Logger(namespace="txsmtp.server")

_BARE_LINE_END = SMTPError(
    550, "5.6.0", "Message refused: bare CR or LF in the body (lines must end with CRLF)"
)


class MessageCommands(SessionBase):
    """The DATA and BDAT part of :class:`~txsmtp.session.core.ServerSession`."""

    if not TYPE_CHECKING:
        __slots__ = ()

    def tooBig(self) -> SMTPError:
        """RFC 1870: 552 5.3.4, for a declared SIZE or a body over the limit."""
        limit = self.config.maxMessageSize
        return SMTPError(
            552, "5.3.4", f"Message too big: this server accepts at most {limit} octets"
        )

    # -- opening -----------------------------------------------------------------

    def _openMessage(self, t: Transaction, opened: Any, refused: Any) -> None:
        envelope = t.envelope
        envelope.queueId = self.config.queueIds.next()
        envelope.receivedHeader = self.host.receivedHeader(envelope)

        def then(receiver: Any, failure: Failure | None) -> None:
            if failure is not None:
                refused(self.errorFromFailure(failure, "openMessage"))
                return
            t.receiver = receiver
            self._rateBytes = 0
            self._dataSince = self._rateStart = self._now
            self._write(t, envelope.receivedHeader)
            opened()

        self.call(
            self.deliverySession, "openMessage", (envelope,), then, owner=t,
            cleanup=lambda r: Notify(r, "abort", ("transaction ended",), "receiver abort()"),
        )  # fmt: skip

    def _noRecipients(self) -> SMTPError:
        # RFC 5321 §3.3: 503 or 554 when no recipient was accepted; 554 tells a
        # pipelining client exactly what happened.  RFC 2033 §4.2: LMTP says 503.
        return SMTPError(503 if self.lmtp else 554, "5.5.1", "No valid recipients")

    # -- DATA --------------------------------------------------------------------

    def do_DATA(self, verb: str, argument: bytes) -> None:
        if argument.strip():
            self.commandError(501, "5.5.4", "Syntax: DATA takes no argument")
            return
        t = self.transaction
        assert t is not None
        if not t.envelope.recipients:
            err = self._noRecipients()
            self.commandError(err.code, err.enhanced or "5.5.1", err.text)
            return
        if t.envelope.parameters.body == "BINARYMIME":
            # RFC 3030 §3: a binary body cannot be dot-stuffed; BDAT only.
            self.commandError(503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA")
            return

        def opened() -> None:
            t.decoder = DataDecoder(self.config.bareLineEnds)
            self.state = State.DATA
            self.reply(354, None, "End data with <CR><LF>.<CR><LF>")

        def refused(err: SMTPError) -> None:
            # The DATA command itself is refused: one reply, under LMTP too.
            self.replyError(err)
            self._logTransaction("refused", err)
            self._endTransaction("message refused")

        self._openMessage(t, opened, refused)

    def _dataOctets(self, t: Transaction, data: bytes) -> None:
        decoder = t.decoder
        body = decoder.feed(data)
        self._rateBytes += len(data)
        if body:
            self._body(t, decoder, body)
        if decoder.done:
            t.decoder = None
            t.size = decoder.size
            rest = decoder.rest
            if rest:
                self._lines.feed(rest)
            self._commandSince = self._now
            self._endOfMessage(t)

    # -- the body, for both --------------------------------------------------------

    def _body(self, t: Transaction, decoder: DataDecoder | ChunkDecoder, body: bytes) -> None:
        if t.error is not None:
            return
        if decoder.bareLineEnd:
            self._failMessage(t, _BARE_LINE_END, "bare line end")
        elif decoder.size > self.config.maxMessageSize:
            self._failMessage(t, self.tooBig(), "too big")
        else:
            self._write(t, body)

    def _failMessage(self, t: Transaction, error: SMTPError, why: str) -> None:
        """The message is refused; its octets are still read to the end."""
        t.error = error
        receiver, t.receiver = t.receiver, None
        if receiver is not None:
            self.emit(Notify(receiver, "abort", (why,), "receiver abort()"))

    def _write(self, t: Transaction, chunk: bytes) -> None:
        receiver = t.receiver
        if receiver is None:
            return
        t.pendingWrites += 1
        self.call(receiver, "write", (chunk,), self._written, owner=t, blocking=False)

    def _written(self, value: Any, failure: Failure | None) -> None:
        t = self.transaction
        assert t is not None
        t.pendingWrites -= 1
        if failure is not None and t.error is None:
            self._failMessage(t, self.errorFromFailure(failure, "write"), "write failed")
        if not t.pendingWrites and self._blocked == "writes":
            # The end of the message was read while writes were pending.
            self._unblock()
            self._finish(t)

    # -- the end -------------------------------------------------------------------

    def _endOfMessage(self, t: Transaction) -> None:
        if t.pendingWrites:
            # finish() only after the receiver has taken every chunk.
            self._block("writes")
            return
        self._finish(t)

    def _finish(self, t: Transaction) -> None:
        if t.error is not None:
            self._refuseMessage(t, t.error)
            return
        receiver, t.receiver = t.receiver, None

        def then(results: Any, failure: Failure | None) -> None:
            if failure is not None:
                self._refuseMessage(t, self.errorFromFailure(failure, "finish"))
            else:
                t.storedAt = getattr(receiver, "storedAt", None)
                self._messageStored(t, results)

        self.call(receiver, "finish", (), then, owner=t)

    def _messageStored(self, t: Transaction, results: list[SMTPError | None] | None) -> None:
        envelope = t.envelope
        replies, outcome, error = finalReplies(envelope, results, self.lmtp)
        for code, enhanced, text in replies:
            self.reply(code, enhanced, text)
        if results is not None and len(results) != len(envelope.recipients):
            _log.error(
                "delivery returned {got} results for {want} recipients (message {queueId}); answered 451",
                got=len(results), want=len(envelope.recipients), queueId=envelope.queueId,
            )  # fmt: skip
        elif error is not None and not self.lmtp and outcome != "refused":
            stored = [f"<{r.address}>" for r, res in zip(envelope.recipients, results or (), strict=False)
                      if not isinstance(res, SMTPError)]  # fmt: skip
            _log.error(
                "{text}",
                text=f"message {envelope.queueId} was stored for only some recipients over SMTP; answered "
                f"451 so the client tries again, and {', '.join(stored)} may receive it twice ({error})",
                queueId=envelope.queueId,
            )
        self._logTransaction(outcome, error, t.size, results)
        self._endTransaction("message answered")
        self.afterTransaction()

    def _refuseMessage(self, t: Transaction, error: SMTPError) -> None:
        """A message refused as a whole: the same reply for each reply owed."""
        for _ in range(t.repliesOwed(self.lmtp)):
            self.replyError(error)
        self._logTransaction("refused", error, t.size)
        self._endTransaction("message refused")
        self.afterTransaction()
