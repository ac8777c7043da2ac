"""
The replies a client is owed, and what they decide: the client's state
machine for sending mail, without I/O.

This module knows no reactor, no transport and no clock.  The protocol
(:class:`~txsmtp.client.ESMTPClient`) gives it the server's bytes
(:meth:`Pipeline.feed`) and tells it when what it wrote has gone out
(:meth:`Pipeline.sent`); the pipeline writes commands, asks for message
bodies and reports outcomes through a :class:`PipelineSink`.

One queue of replies owed
=========================

Every command written owes one reply, and replies come back in the order
the commands went out (RFC 2920 §3.1, RFC 5321 §4.1.1).  So one FIFO of
entries, ``(handler, timeout, transaction)``, shared by the session set-up
(EHLO, STARTTLS, AUTH, QUIT: a plain handler, no transaction) and by every
message on the connection, says what each reply answers.  Two rules keep it
honest:

- *A reply is matched only to a command that has been sent.*  Commands
  written during an event are held by the protocol and leave in one write
  at its end; their entries wait in :attr:`Pipeline.unsent` until
  :meth:`Pipeline.sent` moves them to :attr:`Pipeline.owed`.  A reply that
  arrives while nothing sent is unanswered (a ``250`` read together with the
  ``354``, before the message was written) is a protocol error, whatever
  the message is made of.
- *A message's replies stay together.*  After the end of the data, LMTP
  owes one reply per accepted recipient (RFC 2033 §4.2), and a pipelining
  client may already have sent the next message's ``MAIL``, ``RCPT`` and
  ``DATA`` behind it (RFC 2920 §3.1).  The entry for those replies stays at
  the head of the queue until the last of them is in, so the next message's
  replies can never be taken for them (nor theirs for the next message's).
  The number is known by then: every ``RCPT`` reply came before them.

Each message is a :class:`Transaction`; its handlers collect the ``RCPT``
replies, decide whether to send the data, and turn the final reply (or
replies) into a :class:`~txsmtp.client.SendResult` or an error.  A
transaction that fails before the end of its data is ended with ``RSET``
once its last owed reply is in (RFC 5321 §4.1.1.5).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from txsmtp.client.errors import (
    SendResult,
    SMTPBadReplyError,
    SMTPClientError,
    SMTPMessageRefused,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerRefused,
)
from txsmtp.client.options import Timeouts
from txsmtp.errors import SMTPProtocolError
from txsmtp.wire.reply import Reply, ReplyParser

__all__ = ["Pipeline", "PipelineSink", "Transaction"]


class Transaction:
    """
    One message on the wire: what its replies have said so far.

    :ivar job: what the caller asked to send (opaque here; the protocol
        uses an :class:`~txsmtp.client.OutgoingMessage`).
    :ivar recipients: the recipients, in the order of the ``RCPT`` commands.
    :ivar bdat: whether the message goes with ``BDAT`` (RFC 3030).
    :ivar pipelined: whether its commands go out in one group (RFC 2920).
    :ivar results: each recipient answered so far, with its reply.
    :ivar accepted: the recipients whose ``RCPT`` was accepted.
    :ivar failure: the error ending the transaction, once one is known.
    :ivar finalSent: whether the end of the data has been written.
    :ivar streaming: set by the protocol while it streams the data.
    """

    __slots__ = (
        "job",
        "recipients",
        "bdat",
        "pipelined",
        "results",
        "accepted",
        "rcptIndex",
        "failure",
        "finalSent",
        "finalReplies",
        "outstanding",
        "lines",
        "streaming",
        "needsReset",
    )

    def __init__(self, job: Any, recipients: list[str], bdat: bool = False, pipelined: bool = True) -> None:
        self.job = job
        self.recipients = recipients
        self.bdat = bdat
        self.pipelined = pipelined
        self.results: dict[str, Reply] = {}
        self.accepted: list[str] = []
        self.rcptIndex = 0
        self.failure: SMTPClientError | None = None
        self.finalSent = False
        self.finalReplies: list[Reply] = []
        #: Entries of this transaction in the queue (sent or not).
        self.outstanding = 0
        #: Without PIPELINING: the RCPT commands still to send.
        self.lines: list[bytes] = []
        self.streaming = False
        self.needsReset = True


class PipelineSink(Protocol):
    """What a :class:`Pipeline` needs from the protocol that drives it."""

    def write(self, data: bytes) -> None:
        """Queue ``data`` to be sent at the end of the current event."""

    def sendData(self, txn: Transaction) -> None:
        """
        Write the message of ``txn`` (after a ``354``, or at once with
        ``BDAT``) and call :meth:`Pipeline.dataSent` once its end is written.
        """

    def stopData(self, txn: Transaction) -> None:
        """Stop streaming the message of ``txn``: it was refused."""

    def transactionDone(self, txn: Transaction, outcome: SendResult | SMTPClientError) -> None:
        """``txn`` is over (it has left :attr:`Pipeline.txns`)."""

    def fatal(self, err: SMTPClientError) -> None:
        """The session cannot go on: drop the connection, fail with ``err``."""


Handler = Callable[..., None]
Entry = tuple[Handler, float, "Transaction | None"]


class Pipeline:
    """
    The replies owed on one connection and the transactions awaiting them.

    :param sink: the protocol (see :class:`PipelineSink`).
    :param timeouts: the time allowed for each kind of reply.
    :param perRecipient: LMTP: one reply per accepted recipient after the
        data (RFC 2033 §4.2).
    :param peer: how the server is named in error messages.
    :param maxReplyLength: the most octets one reply may take.

    :ivar owed: entries for the commands sent and not yet answered, oldest
        first.
    :ivar unsent: entries for the commands written but not yet sent.
    :ivar txns: the transactions in progress, oldest first.
    :ivar closing: set once ``QUIT`` is sent: a ``421`` is then an answer
        like any other.
    """

    __slots__ = (
        "sink",
        "timeouts",
        "perRecipient",
        "peer",
        "parser",
        "maxReplyLength",
        "owed",
        "unsent",
        "txns",
        "closing",
        "_hMail",
        "_hRcpt",
        "_hData",
        "_hFinal",
    )

    def __init__(
        self,
        sink: PipelineSink,
        timeouts: Timeouts,
        perRecipient: bool = False,
        peer: str = "the server",
        maxReplyLength: int = 65536,
    ) -> None:
        self.sink = sink
        self.timeouts = timeouts
        self.perRecipient = perRecipient
        self.peer = peer
        self.maxReplyLength = maxReplyLength
        self.parser = ReplyParser(maxReplyLength=maxReplyLength)
        self.owed: deque[Entry] = deque()
        self.unsent: list[Entry] = []
        self.txns: deque[Transaction] = deque()
        self.closing = False
        # The handlers every message needs, bound once.
        self._hMail = self._onMail
        self._hRcpt = self._onRcpt
        self._hData = self._onData
        self._hFinal = self._onFinal

    # -- the queue ----------------------------------------------------------

    def expect(self, handler: Callable[[Reply], None], timeout: float) -> None:
        """Owe a reply to a command just written; ``handler`` will take it."""
        self.unsent.append((handler, timeout, None))

    def sent(self) -> bool:
        """
        Everything written so far has been sent: its replies are now owed.
        Return whether the queue went from empty to waiting (a new wait for
        the clock to measure).
        """
        unsent = self.unsent
        if not unsent:
            return False
        owed = self.owed
        wasEmpty = not owed
        owed.extend(unsent)
        unsent.clear()
        return wasEmpty

    @property
    def waiting(self) -> bool:
        """Whether a reply is owed."""
        return bool(self.owed)

    @property
    def headTimeout(self) -> float:
        """How long the oldest owed reply may take (only when :attr:`waiting`)."""
        return self.owed[0][1]

    def clear(self) -> None:
        """Forget every reply owed (only ``QUIT``'s is to come)."""
        self.owed.clear()
        self.unsent.clear()

    def stop(self) -> None:
        """
        The connection is going away: forget every reply owed, and ignore
        whatever else the server sent.
        """
        self.clear()
        self.resetParser()

    def resetParser(self) -> None:
        """
        Start parsing afresh, dropping whatever was read and not yet
        handled: after ``STARTTLS``'s ``220``, nothing the server said before
        the handshake counts (RFC 3207 §4.2).
        """
        self.parser = ReplyParser(maxReplyLength=self.maxReplyLength)

    def feed(self, data: bytes) -> int:
        """
        Parse the server's bytes and act on every complete reply; return
        how many there were.
        """
        parser = self.parser
        try:
            replies = parser.feed(data)
        except SMTPProtocolError as e:
            self._fatal(SMTPBadReplyError(f"bad reply from {self.peer}: {e}"))
            return 0
        owed = self.owed
        for reply in replies:
            if self.parser is not parser:
                # resetParser() (STARTTLS) or stop(): what follows is void.
                break
            if owed and reply.code != 421:
                # receive(), inline: the common case.
                handler, _, txn = owed.popleft()
                if txn is None:
                    handler(reply)
                else:
                    txn.outstanding -= 1
                    handler(reply, txn)
            else:
                self.receive(reply)
        return len(replies)

    def receive(self, reply: Reply) -> None:
        """Give ``reply`` to the oldest entry owed."""
        owed = self.owed
        if not owed:
            if reply.code == 421:
                self._fatal(SMTPServerRefused("the server is closing the connection", reply))
            else:
                self._fatal(SMTPBadReplyError(f"unexpected reply from {self.peer}: {reply}"))
            return
        handler, _, txn = owed.popleft()
        if reply.code == 421 and not self.closing:
            # RFC 5321 §3.8: the server is going away; whatever was pending
            # will not be answered.
            self._fatal(SMTPServerRefused(f"{self.peer} is closing the connection", reply))
            return
        if txn is None:
            handler(reply)
        else:
            txn.outstanding -= 1
            handler(reply, txn)

    def _fatal(self, err: SMTPClientError) -> None:
        self.stop()
        self.sink.fatal(err)

    def _owe(self, handler: Handler, timeout: float, txn: Transaction) -> None:
        self.unsent.append((handler, timeout, txn))
        txn.outstanding += 1

    # -- a transaction ----------------------------------------------------

    def begin(self, txn: Transaction, mail: bytes, rcpts: list[bytes]) -> None:
        """
        Start ``txn``: write ``mail`` (the whole ``MAIL`` line) and the
        ``RCPT`` lines, and ``DATA`` or the data itself.
        """
        self.txns.append(txn)
        timeouts = self.timeouts
        sink = self.sink
        if not txn.pipelined:
            # One command, one reply.
            txn.lines = rcpts
            sink.write(mail)
            self._owe(self._onMail, timeouts.mail, txn)
            return
        # RFC 2920 §3.1: MAIL, the RCPTs and DATA in one group; DATA ends it.
        # (With BDAT the chunks follow in the same group, RFC 3030 §4.2.)
        unsent = self.unsent
        unsent.append((self._hMail, timeouts.mail, txn))
        onRcpt = (self._hRcpt, timeouts.rcpt, txn)
        for _ in rcpts:
            unsent.append(onRcpt)
        if txn.bdat:
            txn.outstanding += 1 + len(rcpts)
            sink.write(mail + b"".join(rcpts))
            sink.sendData(txn)
        else:
            unsent.append((self._hData, timeouts.data, txn))
            txn.outstanding += 2 + len(rcpts)
            sink.write(mail + b"".join(rcpts) + b"DATA\r\n")

    def chunkSent(self, txn: Transaction) -> None:
        """A ``BDAT`` chunk other than the last was written: it owes a reply."""
        self._owe(self._onChunk, self.timeouts.block, txn)

    def dataSent(self, txn: Transaction) -> None:
        """The end of the data (the dot, or ``BDAT ... LAST``) was written."""
        txn.finalSent = True
        self.unsent.append((self._hFinal, self.timeouts.final, txn))
        txn.outstanding += 1

    def _stopData(self, txn: Transaction) -> None:
        txn.streaming = False
        self.sink.stopData(txn)

    def _nextCommand(self, txn: Transaction) -> None:
        # Without PIPELINING: the next RCPT, or DATA once they are all done.
        if txn.rcptIndex < len(txn.lines):
            self.sink.write(txn.lines[txn.rcptIndex])
            self._owe(self._onRcpt, self.timeouts.rcpt, txn)
            return
        self._checkRecipients(txn)
        if txn.failure is not None:
            self._refuse(txn)
            return
        self.sink.write(b"DATA\r\n")
        self._owe(self._onData, self.timeouts.data, txn)

    def _onMail(self, reply: Reply, txn: Transaction) -> None:
        if reply.code != 250:
            txn.failure = SMTPSenderRefused(f"{self.peer} refused the sender <{txn.job.sender}>", reply)
            if not txn.pipelined:
                # Nothing to reset: MAIL did not start a transaction.
                txn.needsReset = False
                self._refuse(txn)
            return
        if not txn.pipelined:
            self._nextCommand(txn)

    def _onRcpt(self, reply: Reply, txn: Transaction) -> None:
        recipient = txn.recipients[txn.rcptIndex]
        txn.rcptIndex += 1
        txn.results[recipient] = reply
        if reply.code == 250 or reply.code == 251:
            txn.accepted.append(recipient)
        if not txn.pipelined:
            self._nextCommand(txn)
        elif txn.bdat and txn.rcptIndex == len(txn.recipients):
            self._checkRecipients(txn)

    def _checkRecipients(self, txn: Transaction) -> None:
        if txn.failure is None and not txn.accepted:
            txn.failure = SMTPRecipientsRefused(f"{self.peer} refused every recipient", dict(txn.results))
        if txn.failure is not None and txn.streaming:
            # BDAT: no point sending the rest of the message.
            self._stopData(txn)
            self._abandonBdat(txn)

    def _onData(self, reply: Reply, txn: Transaction) -> None:
        if reply.code == 354 and txn.failure is None and txn.accepted:
            # The common case: go ahead with the message.
            self.sink.sendData(txn)
            return
        self._checkRecipients(txn)
        if reply.code != 354:
            if txn.failure is None:
                txn.failure = SMTPMessageRefused(f"{self.peer} refused DATA", reply)
            self._refuse(txn)
            return
        if txn.failure is not None:
            # RFC 2920 §3.1: the server took DATA although nothing else was
            # accepted; send an empty message to get back in step.
            self.sink.write(b".\r\n")
            self._owe(self._onEmptyData, self.timeouts.final, txn)
            return
        self.sink.sendData(txn)

    def _onEmptyData(self, reply: Reply, txn: Transaction) -> None:
        self._refuse(txn)

    def _onChunk(self, reply: Reply, txn: Transaction) -> None:
        if reply.code != 250 and txn.failure is None:
            txn.failure = SMTPMessageRefused(f"{self.peer} refused a BDAT chunk", reply)
            if txn.streaming:
                self._stopData(txn)
        self._abandonBdat(txn)

    def _abandonBdat(self, txn: Transaction) -> None:
        # BDAT stopped before LAST: once every reply is in, reset.
        if not txn.finalSent and not txn.streaming and not txn.outstanding and txn.failure is not None:
            self._refuse(txn)

    def _onFinal(self, reply: Reply, txn: Transaction) -> None:
        if txn.failure is not None:
            # BDAT with the sender or every recipient refused: this reply to
            # BDAT LAST is a refusal too.
            self._refuse(txn)
            return
        if self.perRecipient:
            finalReplies = txn.finalReplies
            finalReplies.append(reply)
            if len(finalReplies) < len(txn.accepted):
                # RFC 2033 §4.2: one reply per accepted recipient, in order.
                # The entry stays at the head of the queue: these replies
                # come before anything sent after this message's data.
                self.owed.appendleft((self._onFinal, self.timeouts.final, txn))
                txn.outstanding += 1
                return
            self._lmtpDone(txn)
            return
        # Every RCPT reply is in (they came first), so the results are
        # complete and in the order of the recipients.
        results = txn.results
        for recipient in txn.accepted:
            results[recipient] = reply
        if reply.code >= 400:
            self._done(txn, SMTPMessageRefused(f"{self.peer} refused the message", reply))
        else:
            self._done(txn, SendResult(reply, results))

    def _lmtpDone(self, txn: Transaction) -> None:
        results = txn.results
        finalReplies = txn.finalReplies
        for recipient, r in zip(txn.accepted, finalReplies, strict=True):
            results[recipient] = r
        if all(r.code >= 400 for r in finalReplies):
            self._done(txn, SMTPRecipientsRefused(f"{self.peer} refused the message for every recipient", results))
        else:
            self._done(txn, SendResult(finalReplies[0], results))

    def _refuse(self, txn: Transaction) -> None:
        """End a transaction that failed before the message was accepted."""
        if txn.outstanding:
            # Pipelined replies still to come; the last one ends it.
            return
        err = txn.failure
        assert err is not None
        if txn.needsReset and self.txns[-1] is txn:
            # Get the server out of the transaction before the connection
            # is used again (RFC 5321 §4.1.1.5).  Not when a later message's
            # MAIL is already on the wire (only after this one's data): the
            # server has left this transaction, and an RSET now would land
            # in the middle of the next one.
            txn.needsReset = False
            self.sink.write(b"RSET\r\n")
            self._owe(self._onReset, self.timeouts.command, txn)
        else:
            self._done(txn, err)

    def _onReset(self, reply: Reply, txn: Transaction) -> None:
        assert txn.failure is not None
        self._done(txn, txn.failure)

    def _done(self, txn: Transaction, outcome: SendResult | SMTPClientError) -> None:
        txns = self.txns
        if txns[0] is txn:
            txns.popleft()
        else:
            txns.remove(txn)
        self.sink.transactionDone(txn, outcome)

