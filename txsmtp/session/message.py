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
final dot only on CRLF.CRLF, dot-unstuffing).  BDAT (RFC 3030 §2) is
followed by exactly the announced number of octets, which are read
whatever happens to them: a chunk refused (no transaction, no recipient,
the message refused at open) is still consumed, so the next command is
read where the client put it.
"""

from __future__ import annotations

import re
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

#: ``BDAT chunk-size [LAST]`` (RFC 3030 §2); the size has at most 18 digits.
_BDAT = re.compile(rb" *([0-9]{1,18})( +LAST)? *", re.IGNORECASE)

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
        self._logTransaction(outcome, error, t.size)
        self._endTransaction("message answered")
        self.afterTransaction()

    def _refuseMessage(self, t: Transaction, error: SMTPError) -> None:
        """A message refused as a whole: the same reply for each reply owed."""
        for _ in range(t.repliesOwed(self.lmtp)):
            self.replyError(error)
        self._logTransaction("refused", error, t.size)
        self._endTransaction("message refused")
        self.afterTransaction()

    # -- BDAT (RFC 3030) -----------------------------------------------------------

    def do_BDAT(self, verb: str, argument: bytes) -> None:
        m = _BDAT.fullmatch(argument)
        if m is None:
            # Without a size the octets that follow cannot be told from
            # commands: the session cannot go on in step.
            self.reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]; closing the connection")
            self.logRefusal("BDAT", SMTPError(501, "5.5.4", "malformed BDAT"))
            self.close()
            return
        size = int(m.group(1))
        last = m.group(2) is not None
        t = self.transaction
        if self.state not in (State.MAIL, State.RCPT, State.BDAT) or t is None:
            self._skipChunk(size, SMTPError(503, "5.5.1", "Bad sequence of commands: MAIL first"))
            return
        if not t.envelope.recipients:
            self._skipChunk(size, self._noRecipients())
            return
        if self.state is State.BDAT:
            self._readChunk(size, last)
            return

        def opened() -> None:
            t.chunked = True
            t.decoder = ChunkDecoder(
                self.config.bareLineEnds, binary=t.envelope.parameters.body == "BINARYMIME"
            )
            self.state = State.BDAT
            self._readChunk(size, last)

        def refused(err: SMTPError) -> None:
            # BDAT LAST ends the message: under LMTP each recipient is owed
            # a reply (RFC 2033 §4.2), whatever stage refused it.
            owed = t.repliesOwed(self.lmtp) if last else 1
            self._logTransaction("refused", err)
            self._endTransaction("message refused")
            self._skipChunk(size, err, owed)

        self._openMessage(t, opened, refused)

    def _skipChunk(self, size: int, error: SMTPError, owed: int = 1) -> None:
        """Read and throw away ``size`` octets, then answer ``error`` (``owed`` times)."""
        self._chunkError = (error, owed)
        self._startChunk(size, False)

    def _readChunk(self, size: int, last: bool) -> None:
        self._chunkError = None
        self._startChunk(size, last)

    def _startChunk(self, size: int, last: bool) -> None:
        self._chunkLast = last
        self._chunkSize = size
        self._chunkLeft = size
        self._rateBytes = 0
        self._dataSince = self._rateStart = self._now
        if not size:
            self._chunkDone()

    def _bdatOctets(self, data: bytes) -> None:
        left = self._chunkLeft
        if len(data) > left:
            # The rest is the next command (pipelined): back to the reader.
            self._lines.feed(data[left:])
            data = data[:left]
        self._chunkLeft = left - len(data)
        self._rateBytes += len(data)
        t = self.transaction
        if t is not None and self._chunkError is None:
            decoder = t.decoder
            body = decoder.feed(data)
            if body:
                self._body(t, decoder, body)
        if not self._chunkLeft:
            self._chunkDone()

    def _chunkDone(self) -> None:
        self._commandSince = self._now
        skipped, self._chunkError = self._chunkError, None
        if skipped is not None:
            error, owed = skipped
            for _ in range(owed):
                self.replyError(error)
            self.logRefusal("BDAT", error)
            return
        t = self.transaction
        assert t is not None
        decoder = t.decoder
        last = self._chunkLast
        if last:
            tail = decoder.finish()
            if tail:
                self._body(t, decoder, tail)
        if not last:
            if t.error is not None:
                # RFC 3030 §2: the transaction fails with this chunk; later
                # chunks meet no transaction and are consumed and refused.
                err = t.error
                self.replyError(err)
                self._logTransaction("refused", err, decoder.size)
                self._endTransaction("message refused")
                self.afterTransaction()
                return
            self.reply(250, "2.0.0", f"{self._chunkSize} octets received")
            return
        t.decoder = None
        t.size = decoder.size
        self._endOfMessage(t)
