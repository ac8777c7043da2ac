"""
The client's queue of replies owed (:mod:`txsmtp.client.pipeline`), alone:
no reactor, no transport.  A model server reads what the pipeline writes
and answers from a script drawn by hypothesis; its bytes reach the pipeline
cut at random places, but never before the command they answer was sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

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
from txsmtp.client.pipeline import Pipeline, Transaction
from txsmtp.wire.reply import Reply

# ---------------------------------------------------------------------------
# The script: what the server says to each message.


@dataclass
class Script:
    """The server's answers to one message."""

    mail: int
    rcpts: list[int]
    data: int
    #: SMTP: one code; LMTP: one per accepted recipient (extra ones unused).
    finals: list[int]

    @property
    def accepted(self) -> list[int]:
        return [i for i, code in enumerate(self.rcpts) if code in (250, 251)]

    @property
    def valid(self) -> bool:
        return self.mail == 250 and bool(self.accepted)


@st.composite
def scripts(draw: Any, lmtp: bool) -> Script:
    n = draw(st.integers(1, 4))
    mail = draw(st.sampled_from([250, 250, 250, 451, 550]))
    rcpts = draw(st.lists(st.sampled_from([250, 250, 251, 450, 550]), min_size=n, max_size=n))
    data = draw(st.sampled_from([354, 354, 354, 451, 554]))
    finals = draw(st.lists(st.sampled_from([250, 250, 452, 552]), min_size=n if lmtp else 1, max_size=n if lmtp else 1))
    return Script(mail, rcpts, data, finals)


def text(code: int, *what: object) -> bytes:
    """A reply whose text says what it answers, so that a mix-up shows."""
    return b"%d %s\r\n" % (code, " ".join(map(str, what)).encode())


def expected(i: int, s: Script, lmtp: bool, bdat: bool) -> tuple[type, dict[str, tuple[int, str]]]:
    """The outcome of message ``i``: its type and each recipient's (code, text)."""
    recipients = [f"r{j}@m{i}" for j in range(len(s.rcpts))]
    if s.mail != 250:
        return SMTPSenderRefused, {}
    results = {r: (code, f"rcpt {j} of {i}") for j, (r, code) in enumerate(zip(recipients, s.rcpts, strict=True))}
    if not s.accepted:
        return SMTPRecipientsRefused, results
    if not bdat and s.data != 354:
        return SMTPMessageRefused, {}
    if lmtp:
        finals = s.finals[: len(s.accepted)]
        for k, j in enumerate(s.accepted):
            results[recipients[j]] = (finals[k], f"final {k} of {i}")
        if all(code >= 400 for code in finals):
            return SMTPRecipientsRefused, results
        return SendResult, results
    if s.finals[0] >= 400:
        return SMTPMessageRefused, {}
    for j in s.accepted:
        results[recipients[j]] = (s.finals[0], f"final 0 of {i}")
    return SendResult, results


class ModelServer:
    """Reads the client's bytes, answers from the scripts, in order."""

    def __init__(self, scripts: list[Script], lmtp: bool) -> None:
        self.scripts = scripts
        self.lmtp = lmtp
        self.buf = b""
        self.out = b""
        self.msg = -1
        self.rcpt = 0
        self.inData = False
        self.bdatLeft = 0
        self.bdatLast = False

    def receive(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.bdatLeft or self.bdatLast:
                take = min(self.bdatLeft, len(self.buf))
                self.buf = self.buf[take:]
                self.bdatLeft -= take
                if self.bdatLeft:
                    return
                if self.bdatLast:
                    self.bdatLast = False
                    self.final()
                else:
                    self.out += text(250, "chunk of", self.msg)
                continue
            if self.inData:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0 and self.buf.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    skip = 5
                if end < 0:
                    return
                self.buf = self.buf[end + skip :]
                self.inData = False
                self.final()
                continue
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                return
            self.buf = rest
            self.command(line)

    def command(self, line: bytes) -> None:
        verb = line.split(b":")[0].split(b" ")[0].upper()
        if verb == b"MAIL":
            self.msg += 1
            self.rcpt = 0
            self.out += text(self.script.mail, "mail of", self.msg)
        elif verb == b"RCPT":
            code = self.script.rcpts[self.rcpt]
            self.out += text(code, "rcpt", self.rcpt, "of", self.msg)
            self.rcpt += 1
        elif verb == b"DATA":
            code = self.script.data
            self.out += text(code, "data of", self.msg)
            self.inData = code == 354
        elif verb == b"BDAT":
            parts = line.split()
            self.bdatLeft = int(parts[1])
            self.bdatLast = parts[2:] == [b"LAST"]
        elif verb == b"RSET":
            self.out += text(250, "reset")
        else:
            raise AssertionError(f"unexpected command {line!r}")

    @property
    def script(self) -> Script:
        return self.scripts[self.msg]

    def final(self) -> None:
        s = self.script
        if not s.valid:
            self.out += text(554, "no valid recipients for", self.msg)
        elif self.lmtp:
            for k in range(len(s.accepted)):
                self.out += text(s.finals[k], "final", k, "of", self.msg)
        else:
            self.out += text(s.finals[0], "final 0 of", self.msg)


# ---------------------------------------------------------------------------
# The sink: plays the protocol, and a Mailer that pipelines the next message.


@dataclass
class Job:
    index: int
    sender: str
    recipients: list[str]
    message: bytes


@dataclass
class RecordingSink:
    """Collects writes and outcomes; starts queued messages as Mailer does."""

    bdat: bool
    pipelined: bool
    queue: list[Job] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)
    outcomes: dict[int, list[Any]] = field(default_factory=dict)
    fatals: list[SMTPClientError] = field(default_factory=list)
    pipeline: Pipeline = field(init=False)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def sendData(self, txn: Transaction) -> None:
        body = txn.job.message
        if txn.bdat:
            self.written.append(b"BDAT %d LAST\r\n" % len(body) + body)
        else:
            self.written.append(body + b".\r\n")
        self.pipeline.dataSent(txn)
        if len(self.pipeline.txns) < 2 and txn.pipelined:
            # RFC 2920 §3.1: the next message goes with this one's end.
            self.startNext()

    def stopData(self, txn: Transaction) -> None:
        raise AssertionError("nothing is streamed here")

    def transactionDone(self, txn: Transaction, outcome: Any) -> None:
        self.outcomes.setdefault(txn.job.index, []).append(outcome)
        if not self.pipeline.txns:
            self.startNext()

    def fatal(self, err: SMTPClientError) -> None:
        self.fatals.append(err)

    def startNext(self) -> None:
        if not self.queue:
            return
        job = self.queue.pop(0)
        txn = Transaction(job, job.recipients, self.bdat, self.pipelined)
        self.pipeline.begin(
            txn,
            b"MAIL FROM:<" + job.sender.encode() + b">\r\n",
            [b"RCPT TO:<" + r.encode() + b">\r\n" for r in job.recipients],
        )

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data


def makePipeline(lmtp: bool, bdat: bool = False, pipelined: bool = True) -> tuple[Pipeline, RecordingSink]:
    sink = RecordingSink(bdat=bdat, pipelined=pipelined)
    pipeline = Pipeline(sink, Timeouts(), perRecipient=lmtp)
    sink.pipeline = pipeline
    return pipeline, sink


def run(lmtp: bool, bdat: bool, pipelined: bool, plan: list[Script], cuts: Any) -> RecordingSink:
    """
    Send one message per script; the server's bytes arrive in pieces of the
    sizes ``cuts`` draws, each piece only once what it answers was sent.
    """
    pipeline, sink = makePipeline(lmtp, bdat, pipelined)
    server = ModelServer(plan, lmtp)
    sink.queue = [
        Job(i, "s@x", [f"r{j}@m{i}" for j in range(len(s.rcpts))], b"body %d\r\n" % i) for i, s in enumerate(plan)
    ]
    sink.startNext()
    for _ in range(10_000):
        # The protocol's flush: what was written goes out, its replies are owed.
        data = sink.take()
        pipeline.sent()
        server.receive(data)
        if not server.out or sink.fatals:
            break
        n = cuts(len(server.out))
        piece, server.out = server.out[:n], server.out[n:]
        pipeline.feed(piece)
    return sink


def check(testCase: unittest.TestCase, plan: list[Script], sink: RecordingSink, lmtp: bool, bdat: bool) -> None:
    testCase.assertEqual(sink.fatals, [])
    testCase.assertEqual(sorted(sink.outcomes), list(range(len(plan))))
    for i, s in enumerate(plan):
        [outcome] = sink.outcomes[i]
        kind, results = expected(i, s, lmtp, bdat)
        testCase.assertIsInstance(outcome, kind, (i, s, outcome))
        got = outcome.recipients if isinstance(outcome, (SendResult, SMTPRecipientsRefused)) else {}
        testCase.assertEqual({r: (reply.code, reply.text) for r, reply in got.items()}, results, (i, s))
        if isinstance(outcome, SendResult):
            first = next(r for r in got.values() if r.text.startswith("final"))
            testCase.assertEqual(outcome.reply, first)


class PropertyTests(unittest.TestCase):
    """Whatever the server answers and however its bytes are cut."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        lmtp=st.booleans(),
        bdat=st.booleans(),
        pipelined=st.booleans(),
        data=st.data(),
    )
    def test_everyMessageGetsItsOwnReplies(self, lmtp: bool, bdat: bool, pipelined: bool, data: Any) -> None:
        """
        Several messages, pipelined behind each other as Mailer does, with
        several recipients, some refused, under SMTP and LMTP: each message
        gets exactly one outcome, made of its own replies.
        """
        if bdat:
            pipelined = True
        plan = data.draw(st.lists(scripts(lmtp), min_size=1, max_size=5))
        sink = run(lmtp, bdat, pipelined, plan, lambda n: data.draw(st.integers(1, n)))
        check(self, plan, sink, lmtp, bdat)

    @settings(max_examples=300, deadline=None)
    @given(
        lmtp=st.booleans(),
        replies=st.lists(
            st.tuples(st.sampled_from([221, 250, 251, 252, 354, 421, 450, 451, 452, 500, 503, 550, 552, 554]), st.integers(1, 3)),
            max_size=30,
        ),
        count=st.integers(1, 3),
    )
    def test_randomReplies(self, lmtp: bool, replies: list[tuple[int, int]], count: int) -> None:
        """
        Any replies at all, as many as the server cares to send: the
        pipeline never raises, never reports a message twice, and a reply
        nobody is owed (or a 421) is fatal.
        """
        pipeline, sink = makePipeline(lmtp)
        sink.queue = [Job(i, "s@x", [f"r{j}@m{i}" for j in range(2)], b"m\r\n") for i in range(count)]
        sink.startNext()
        pipeline.sent()
        for code, lines in replies:
            raw = b"".join(b"%d-line\r\n" % code for _ in range(lines - 1)) + b"%d end\r\n" % code
            owed = len(pipeline.owed)
            pipeline.feed(raw)
            if sink.fatals:
                self.assertTrue(code == 421 or owed == 0, (code, owed))
                self.assertIsInstance(sink.fatals[0], (SMTPServerRefused, SMTPBadReplyError))
                self.assertEqual(len(pipeline.owed), 0)
                break
            pipeline.sent()
        for outcomes in sink.outcomes.values():
            self.assertEqual(len(outcomes), 1)
        # Whatever has not ended is still in progress, and owed something.
        self.assertTrue(sink.fatals or not pipeline.txns or pipeline.owed)


class ReplyQueueTests(unittest.TestCase):
    """The rules of the queue, one at a time."""

    def test_notOwedUntilSent(self) -> None:
        """Issue 11, bug 11: a reply to a command written but not yet sent is unexpected."""
        pipeline, sink = makePipeline(lmtp=False)
        sink.queue = [Job(0, "s@x", ["r@x"], b"m\r\n")]
        sink.startNext()
        pipeline.sent()
        pipeline.feed(b"250 mail\r\n250 rcpt\r\n354 go\r\n250 final\r\n")
        self.assertEqual(sink.outcomes, {})
        [err] = sink.fatals
        self.assertIsInstance(err, SMTPBadReplyError)
        self.assertIn("unexpected reply", str(err))

    def test_sameReadOnceSent(self) -> None:
        """Once sent, a reply in the same read is the answer."""
        pipeline, sink = makePipeline(lmtp=False)
        sink.queue = [Job(0, "s@x", ["r@x"], b"m\r\n")]
        sink.startNext()
        pipeline.sent()
        pipeline.feed(b"250 mail\r\n250 rcpt\r\n354 go\r\n")
        self.assertEqual(sink.take(), b"MAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\nDATA\r\nm\r\n.\r\n")
        pipeline.sent()
        pipeline.feed(b"250 final\r\n")
        [[result]] = sink.outcomes.values()
        self.assertEqual(result.reply, Reply(250, ("final",)))

    def test_lmtpRepliesStayWithTheirMessage(self) -> None:
        """
        Issue 11, bug 1: the next message's group went out with this one's
        data; the second per-recipient reply is still this message's.
        """
        pipeline, sink = makePipeline(lmtp=True)
        sink.queue = [Job(i, "s@x", ["a@x", "b@x"], b"m%d\r\n" % i) for i in range(2)]
        sink.startNext()
        pipeline.sent()
        sink.take()
        pipeline.feed(b"250 mail\r\n250 a\r\n250 b\r\n354 go\r\n")
        self.assertTrue(sink.take().startswith(b"m0\r\n.\r\nMAIL FROM:<s@x>\r\n"))
        pipeline.sent()
        pipeline.feed(b"250 a stored\r\n452 b over quota\r\n250 mail\r\n250 a\r\n250 b\r\n354 go\r\n")
        pipeline.sent()
        pipeline.feed(b"250 a stored 2\r\n250 b stored 2\r\n")
        r0, r1 = sink.outcomes[0][0], sink.outcomes[1][0]
        self.assertEqual({k: v.text for k, v in r0.recipients.items()}, {"a@x": "a stored", "b@x": "b over quota"})
        self.assertEqual({k: v.text for k, v in r1.recipients.items()}, {"a@x": "a stored 2", "b@x": "b stored 2"})
        self.assertEqual(sink.fatals, [])

    def test_421EndsEverything(self) -> None:
        """RFC 5321 §3.8: a 421 in place of any reply is the server leaving."""
        pipeline, sink = makePipeline(lmtp=False)
        sink.queue = [Job(0, "s@x", ["r@x"], b"m\r\n")]
        sink.startNext()
        pipeline.sent()
        pipeline.feed(b"250 mail\r\n421 4.3.2 going down\r\n250 ignored\r\n")
        [err] = sink.fatals
        self.assertIsInstance(err, SMTPServerRefused)
        self.assertFalse(pipeline.owed)

    def test_421AnswersQuit(self) -> None:
        pipeline, sink = makePipeline(lmtp=False)
        replies: list[Reply] = []
        pipeline.closing = True
        pipeline.expect(replies.append, 30.0)
        pipeline.sent()
        pipeline.feed(b"421 bye\r\n")
        self.assertEqual(replies, [Reply(421, ("bye",))])
        self.assertEqual(sink.fatals, [])

    def test_noResetInsideTheNextTransaction(self) -> None:
        """
        BDAT: the first message is refused at BDAT LAST while the second's
        MAIL is already on the wire: no RSET, which would land inside it.
        """
        pipeline, sink = makePipeline(lmtp=False, bdat=True)
        sink.queue = [Job(i, "s@x", ["r@x"], b"m\r\n") for i in range(2)]
        sink.startNext()
        pipeline.sent()
        self.assertEqual(sink.take().count(b"MAIL FROM"), 2)
        pipeline.feed(b"250 mail\r\n550 rcpt\r\n554 no valid recipients\r\n")
        self.assertEqual(sink.take(), b"")
        self.assertIsInstance(sink.outcomes[0][0], SMTPRecipientsRefused)
        pipeline.feed(b"250 mail\r\n250 rcpt\r\n250 queued\r\n")
        self.assertIsInstance(sink.outcomes[1][0], SendResult)
        self.assertFalse(pipeline.owed)
