"""
CHUNKING (RFC 3030): ``BDAT n [LAST]``, as part of
:class:`~txsmtp.session.core.ServerSession`.

BDAT is followed by exactly the announced number of octets, which are read
whatever happens to them: a chunk refused (no transaction, no recipient,
the message refused at open) is still consumed, so the next command is
read where the client put it.  A chunk's octets go through a
:class:`~txsmtp.wire.data.ChunkDecoder` (the bare CR/LF policy of DATA,
no dot-stuffing) into the same path to the receiver as DATA's
(:mod:`txsmtp.session.message`), and BDAT LAST ends the message the way
DATA's final dot does, with the same replies owed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from txsmtp.errors import SMTPError
from txsmtp.session.base import SessionBase
from txsmtp.session.table import State
from txsmtp.wire.data import ChunkDecoder

__all__ = ["ChunkingCommands"]

#: ``BDAT chunk-size [LAST]`` (RFC 3030 §2); the size has at most 18 digits.
_BDAT = re.compile(rb" *([0-9]{1,18})( +LAST)? *", re.IGNORECASE)


class ChunkingCommands(SessionBase):
    """BDAT."""

    if not TYPE_CHECKING:
        __slots__ = ()

    # -- BDAT (RFC 3030) -----------------------------------------------------------

    def do_BDAT(self, verb: str, argument: bytes) -> None:
        m = _BDAT.fullmatch(argument)
        if m is None:
            # Without a size the octets that follow cannot be told from
            # commands: the session cannot go on in step.
            self.reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]; closing the connection")
            self.logRefusal("BDAT", SMTPError(501, "5.5.4", "malformed BDAT"))
            self.close("bad-bdat")
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
