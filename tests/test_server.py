"""
Tests for :mod:`txsmtp.server`: the ESMTP server state machine, driven over
an in-memory transport with a fake clock (:class:`txsmtp.testing.ServerHarness`).
"""

from __future__ import annotations

import gc
import re
from email.utils import parsedate_to_datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.chunks import SMUGGLING
from txsmtp.delivery import BaseDelivery, BaseDeliverySession
from txsmtp.errors import SMTPError
from txsmtp.server import ESMTPServer, SMTPFactory, State
from txsmtp.testing import MemoryDelivery, ServerHarness
from txsmtp.wire.data import DataEncoder

SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\n"
    b"RCPT TO:<victim@example.com>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.com\r\n\r\nForged\r\n"
)


def codes(replies) -> list[int]:
    return [r.code for r in replies]


def harness(delivery: Any = None, **kw: Any) -> ServerHarness:
    return ServerHarness(delivery, **kw)


def begin(testCase: unittest.TestCase, h: ServerHarness, recipients=(b"rcpt@example.com",), ehlo=b"EHLO client.example"):
    """EHLO, MAIL, RCPT..., DATA in one pipelined write; asserts 354."""
    data = ehlo + b"\r\nMAIL FROM:<sender@example.org>\r\n"
    data += b"".join(b"RCPT TO:<" + r + b">\r\n" for r in recipients)
    data += b"DATA\r\n"
    replies = h.send(data)
    testCase.assertEqual(codes(replies), [250, 250] + [250] * len(recipients) + [354])
    return replies


def encodeBody(body: bytes) -> bytes:
    e = DataEncoder()
    return e.encode(body) + e.finish()


def countWrites(h: ServerHarness) -> list[bytes]:
    """Record every transport.write the server makes from now on."""
    writes: list[bytes] = []
    original = h.transport.write

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    h.transport.write = write  # type: ignore[method-assign]
    return writes


# -- deliveries used by the tests ---------------------------------------------


class Receiver:
    """A receiver that records everything and may hold writes back."""

    def __init__(self, delivery: HookDelivery, envelope: Any) -> None:
        self.delivery = delivery
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.pendingWrites: list[Deferred[None]] = []
        self.finished = False
        self.finishedWithPendingWrites = False
        self.aborted: str | None = None

    def write(self, chunk: bytes) -> Any:
        self.chunks.append(chunk)
        if self.delivery.holdWrites:
            d: Deferred[None] = Deferred()
            self.pendingWrites.append(d)
            return d
        if self.delivery.writeError is not None:
            raise self.delivery.writeError
        return None

    def finish(self) -> Any:
        self.finished = True
        self.finishedWithPendingWrites = any(not d.called for d in self.pendingWrites)
        return self.delivery.finishResult(self)

    def abort(self, reason: str) -> None:
        self.aborted = reason


class HookSession(BaseDeliverySession):
    delivery: HookDelivery

    def checkSender(self, sender, parameters):
        return self.delivery.onSender(sender, parameters)

    def checkRecipient(self, recipient, envelope):
        return self.delivery.onRecipient(recipient, envelope)

    def openMessage(self, envelope):
        result = self.delivery.onOpen(envelope)
        if result is not None:
            return result
        r = Receiver(self.delivery, envelope)
        self.delivery.receivers.append(r)
        return r


class HookDelivery(BaseDelivery):
    """A delivery whose every hook is a replaceable callable."""

    sessionFactory = HookSession

    def __init__(self) -> None:
        self.onSender = lambda sender, params: None
        self.onRecipient = lambda recipient, envelope: None
        self.onOpen = lambda envelope: None
        self.finishResult = lambda receiver: None
        self.receivers: list[Receiver] = []
        self.holdWrites = False
        self.writeError: Exception | None = None
        self.pending: list[Deferred[Any]] = []

    def later(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


# -- greeting and EHLO ----------------------------------------------------------


class GreetingTests(unittest.TestCase):
    def test_greeting(self):
        h = harness()
        self.assertEqual(h.greeting.code, 220)
        self.assertTrue(h.greeting.text.startswith("test.invalid "))
        self.assertFalse(h.closed)

    def test_ehloAdvertises(self):
        h = harness(maxMessageSize=123456)
        r = h.command(b"EHLO client.example")
        self.assertEqual(r.code, 250)
        self.assertTrue(r.lines[0].startswith("test.invalid"))
        self.assertIn("client.example", r.lines[0])
        keywords = set(r.lines[1:])
        for k in ("PIPELINING", "SIZE 123456", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "HELP"):
            self.assertIn(k, keywords)
        self.assertTrue(h.protocol.connection.esmtp)
        self.assertEqual(h.protocol.connection.heloName, "client.example")

    def test_helo(self):
        h = harness()
        r = h.command(b"HELO client.example")
        self.assertEqual(r.code, 250)
        self.assertEqual(len(r.lines), 1)
        self.assertFalse(h.protocol.connection.esmtp)
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com>").code, 250)

    def test_ehloNeedsName(self):
        h = harness()
        r = h.command(b"EHLO")
        self.assertEqual((r.code, r.enhanced), (501, "5.5.4"))
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com>").code, 503)

    def test_ehloLowerCase(self):
        h = harness()
        self.assertEqual(h.command(b"ehlo client.example").code, 250)

    def test_secondEhloResetsTransaction(self):
        h = harness()
        h.command(b"EHLO a.example")
        h.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual(h.command(b"EHLO b.example").code, 250)
        self.assertEqual(h.command(b"RCPT TO:<b@example.com>").code, 503)
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com>").code, 250)

    def test_refusedConnection(self):
        """IDelivery.openSession raising SMTPError: greeted with it; only QUIT works."""

        class Refusing(MemoryDelivery):
            def openSession(self, connection):
                raise SMTPError(554, "5.7.1", "go away")

        h = harness(Refusing())
        self.assertEqual(h.greeting.code, 554)
        self.assertIn("go away", h.greeting.text)
        self.assertEqual(h.command(b"EHLO client.example").code, 503)
        self.assertEqual(h.command(b"QUIT").code, 221)
        self.assertTrue(h.closed)


# -- command sequencing and syntax -------------------------------------------------


class SequenceTests(unittest.TestCase):
    def setUp(self):
        self.h = harness()

    def assertReply(self, line: bytes, code: int, enhanced: str | None = None):
        r = self.h.command(line)
        self.assertEqual(r.code, code, f"{line!r} -> {r}")
        if enhanced is not None:
            self.assertEqual(r.enhanced, enhanced, f"{line!r} -> {r}")
        return r

    def test_mailBeforeEhlo(self):
        self.assertReply(b"MAIL FROM:<a@example.com>", 503, "5.5.1")
        self.assertReply(b"RCPT TO:<a@example.com>", 503, "5.5.1")
        self.assertReply(b"DATA", 503, "5.5.1")

    def test_nestedMail(self):
        self.h.command(b"EHLO c.example")
        self.assertReply(b"MAIL FROM:<a@example.com>", 250, "2.1.0")
        self.assertReply(b"MAIL FROM:<b@example.com>", 503, "5.5.1")
        self.assertReply(b"RCPT TO:<r@example.com>", 250, "2.1.5")
        self.assertReply(b"MAIL FROM:<b@example.com>", 503, "5.5.1")

    def test_rcptBeforeMail(self):
        self.h.command(b"EHLO c.example")
        self.assertReply(b"RCPT TO:<r@example.com>", 503, "5.5.1")

    def test_dataBeforeMail(self):
        self.h.command(b"EHLO c.example")
        self.assertReply(b"DATA", 503, "5.5.1")

    def test_dataWithoutRecipients(self):
        """RFC 5321 §3.3: DATA with no accepted recipient is 554 (or 503)."""
        self.h.delivery.refusedRecipients["nobody@example.com"] = SMTPError(550, "5.1.1", "no such user")
        self.h.command(b"EHLO c.example")
        self.h.command(b"MAIL FROM:<a@example.com>")
        self.assertReply(b"RCPT TO:<nobody@example.com>", 550, "5.1.1")
        self.assertReply(b"DATA", 554)
        # Still in the transaction: a good recipient makes DATA work.
        self.assertReply(b"RCPT TO:<r@example.com>", 250)
        self.assertReply(b"DATA", 354)

    def test_badMailSyntax(self):
        self.h.command(b"EHLO c.example")
        for line in (
            b"MAIL FROM:a@example.com",
            b"MAIL TO:<a@example.com>",
            b"MAIL <a@example.com>",
            b"MAIL FROM:<a@example.com>SIZE=10",
            b"MAIL FROM:<a@@example.com>",
            b"MAIL FROM:<a@example.com",
            b"MAIL",
        ):
            self.assertReply(line, 501, None)
        self.assertReply(b"MAIL FROM:<a@example.com> SIZE=abc", 501, "5.5.4")
        self.assertReply(b"MAIL FROM:<a@example.com>", 250)

    def test_badRcptSyntax(self):
        self.h.command(b"EHLO c.example")
        self.h.command(b"MAIL FROM:<a@example.com>")
        self.assertReply(b"RCPT TO:b@example.com", 501, "5.5.4")
        self.assertReply(b"RCPT FROM:<b@example.com>", 501, "5.5.4")
        self.assertReply(b"RCPT TO:<>", 501)

    def test_unknownParameter(self):
        """RFC 5321 §4.1.1.11: 555 for an unrecognised MAIL/RCPT parameter."""
        self.h.command(b"EHLO c.example")
        self.assertReply(b"MAIL FROM:<a@example.com> FOO=BAR", 555, "5.5.4")
        self.assertReply(b"MAIL FROM:<a@example.com>", 250)
        self.assertReply(b"RCPT TO:<b@example.com> FOO=BAR", 555, "5.5.4")

    def test_sizeParameter(self):
        """RFC 1870 §6.1: SIZE over the limit is 552 5.3.4 at MAIL."""
        h = harness(maxMessageSize=1000)
        h.command(b"EHLO c.example")
        r = h.command(b"MAIL FROM:<a@example.com> SIZE=1001")
        self.assertEqual((r.code, r.enhanced), (552, "5.3.4"))
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com> SIZE=1000").code, 250)

    def test_bodyParameter(self):
        self.h.command(b"EHLO c.example")
        self.assertReply(b"MAIL FROM:<a@example.com> BODY=8BITMIME", 250)
        self.h.command(b"RSET")
        # BINARYMIME is offered with CHUNKING (RFC 3030 §3), and then only
        # BDAT can carry the message.
        self.assertReply(b"MAIL FROM:<a@example.com> BODY=BINARYMIME", 250)
        self.assertReply(b"RCPT TO:<b@example.com>", 250)
        self.assertReply(b"DATA", 503, "5.5.1")

    def test_nullSender(self):
        self.h.command(b"EHLO c.example")
        self.assertReply(b"MAIL FROM:<>", 250, "2.1.0")

    def test_utf8AddressNeedsSMTPUTF8(self):
        """RFC 6531 §3.5: 553 5.6.7 without the SMTPUTF8 parameter."""
        self.h.command(b"EHLO c.example")
        self.assertReply("MAIL FROM:<jos\u00e9@example.com>".encode(), 553, "5.6.7")
        self.assertReply("MAIL FROM:<jos\u00e9@example.com> SMTPUTF8".encode(), 250)
        self.assertReply("RCPT TO:<\u7528\u6237@\u4f8b\u5b50.example>".encode(), 250)

    def test_postmasterAnyCase(self):
        """RFC 5321 §4.5.1: RCPT TO:<Postmaster> without a domain must be accepted."""
        self.h.command(b"EHLO c.example")
        self.h.command(b"MAIL FROM:<a@example.com>")
        for form in (b"Postmaster", b"postmaster", b"POSTMASTER", b"pOsTmAsTeR"):
            self.assertReply(b"RCPT TO:<" + form + b">", 250)

    def test_tooManyRecipients(self):
        """RFC 5321 §4.5.3.1.10: too many recipients is 452 (4.5.3), not 552."""
        h = harness(maxRecipients=3)
        replies = h.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n"
            + b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(5))
            + b"DATA\r\n"
        )
        self.assertEqual(codes(replies), [250, 250, 250, 250, 250, 452, 452, 354])
        self.assertEqual(replies[5].enhanced, "4.5.3")
        replies = h.send(b"hi\r\n.\r\n")
        self.assertEqual(codes(replies), [250])
        self.assertEqual(h.delivery.messages[0].recipients, ["r0@example.com", "r1@example.com", "r2@example.com"])

    def test_unknownCommand(self):
        self.assertReply(b"FROBNICATE now", 500, "5.5.1")
        self.assertFalse(self.h.closed)
        self.assertReply(b"NOOP", 250)
        self.assertReply(b"MAIL_FROM:<a@b>", 500)

    def test_tooManyErrors(self):
        h = harness(maxErrors=3)
        self.assertEqual(h.command(b"BAD1").code, 500)
        self.assertEqual(h.command(b"BAD2").code, 500)
        replies = h.send(b"BAD3\r\nNOOP\r\n")
        self.assertEqual(codes(replies), [500, 421])
        self.assertTrue(h.closed)

    def test_overLongCommandLine(self):
        """RFC 5321 §4.5.3.1.4: 512 octets; longer is 500 (5.5.2), then the session goes on."""
        r = self.h.command(b"NOOP " + b"x" * 2000)
        self.assertEqual((r.code, r.enhanced), (500, "5.5.2"))
        self.assertReply(b"NOOP " + b"x" * 505, 250)  # exactly 512 with CRLF
        self.assertReply(b"NOOP " + b"x" * 506, 500, "5.5.2")
        self.assertReply(b"NOOP", 250)

    def test_overLongCommandLineStreamed(self):
        """A 100 KB line arriving in pieces gets one 500 and nothing else."""
        for _ in range(100):
            self.assertEqual(self.h.send(b"QUIT" * 256), [])
        self.assertEqual(codes(self.h.send(b"\r\nNOOP\r\n")), [500, 250])
        self.assertFalse(self.h.closed)

    def test_bareLFInCommand(self):
        """RFC 5321 §2.3.8: only CRLF ends a line; the QUIT here is not a command."""
        replies = self.h.send(b"NOOP\nQUIT\r\n")
        self.assertEqual(codes(replies), [500])
        self.assertFalse(self.h.closed)
        self.assertReply(b"NOOP", 250)

    def test_bareCRInCommand(self):
        replies = self.h.send(b"EHLO c.example\rQUIT\r\n")
        self.assertEqual(codes(replies), [500])
        self.assertFalse(self.h.closed)

    def test_nulInCommand(self):
        self.assertReply(b"NOOP\x00", 500)

    def test_noop(self):
        self.assertReply(b"NOOP", 250, "2.0.0")
        self.assertReply(b"noop anything", 250)

    def test_rsetForgetsTransaction(self):
        self.h.command(b"EHLO c.example")
        self.h.command(b"MAIL FROM:<a@example.com>")
        self.h.command(b"RCPT TO:<b@example.com>")
        self.assertReply(b"RSET", 250, "2.0.0")
        self.assertIsNone(self.h.protocol.envelope)
        self.assertReply(b"RCPT TO:<b@example.com>", 503)
        self.assertReply(b"DATA", 503)
        self.assertReply(b"MAIL FROM:<c@example.com>", 250)
        self.assertReply(b"RCPT TO:<d@example.com>", 250)
        self.assertReply(b"DATA", 354)
        self.assertEqual(codes(self.h.send(b"x\r\n.\r\n")), [250])
        self.assertEqual(self.h.delivery.messages[0].sender, "c@example.com")
        self.assertEqual(self.h.delivery.messages[0].recipients, ["d@example.com"])

    def test_vrfy(self):
        """RFC 5321 §7.3: 252 when VRFY is disabled for privacy."""
        self.assertReply(b"VRFY user@example.com", 252)
        self.assertReply(b"VRFY", 501)

    def test_expn(self):
        self.assertReply(b"EXPN staff", 502)

    def test_help(self):
        r = self.assertReply(b"HELP", 214)
        self.assertIn("MAIL", r.text)
        self.assertReply(b"HELP mail", 214)
        self.assertReply(b"HELP FROBNICATE", 504)

    def test_quit(self):
        self.h.command(b"EHLO c.example")
        self.assertReply(b"QUIT", 221, "2.0.0")
        self.assertTrue(self.h.closed)
        self.assertEqual(self.h.send(b"NOOP\r\n"), [])

    def test_quitDiscardsTransaction(self):
        self.h.command(b"EHLO c.example")
        self.h.command(b"MAIL FROM:<a@example.com>")
        self.assertReply(b"QUIT", 221)
        self.h.disconnect()
        self.assertEqual(self.h.delivery.closedSessions, 1)
        self.assertEqual(self.h.factory.protocols, set())


# -- PIPELINING ------------------------------------------------------------------


class PipeliningTests(unittest.TestCase):
    def test_transactionInOneWrite(self):
        """RFC 2920 §3.1: reply in order, and flush when the input is drained."""
        h = harness()
        writes = countWrites(h)
        replies = h.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"RCPT TO:<c@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(codes(replies), [250, 250, 250, 250, 354])
        self.assertEqual(len(writes), 1)
        writes.clear()
        replies = h.send(b"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<d@example.com>\r\nRCPT TO:<e@example.com>\r\nQUIT\r\n")
        self.assertEqual(codes(replies), [250, 250, 250, 221])
        self.assertEqual(len(writes), 1)
        self.assertEqual(len(h.delivery.messages), 1)

    def test_wholeSessionInOneWrite(self):
        h = harness()
        writes = countWrites(h)
        replies = h.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            b"hello\r\n.\r\nNOOP\r\nQUIT\r\n"
        )
        self.assertEqual(codes(replies), [250, 250, 250, 354, 250, 250, 221])
        self.assertEqual(len(writes), 1)

    def test_errorsInPipelineKeepOrder(self):
        h = harness()
        h.delivery.refusedRecipients["bad@example.com"] = SMTPError(550, "5.1.1", "no such user")
        replies = h.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<bad@example.com>\r\n"
            b"RCPT TO:<good@example.com>\r\nBOGUS\r\nDATA\r\n"
        )
        self.assertEqual(codes(replies), [250, 250, 550, 250, 500, 354])

    def test_nothingWrittenBeforeInputDrained(self):
        """Replies are not written line by line: a partial command waits with the rest."""
        h = harness()
        writes = countWrites(h)
        self.assertEqual(codes(h.send(b"EHLO c.example\r\nNOOP\r\nNO")), [250, 250])
        self.assertEqual(len(writes), 1)
        self.assertEqual(codes(h.send(b"OP\r\n")), [250])

    def _deferredRecipients(self):
        delivery = HookDelivery()

        def onRecipient(recipient, envelope):
            d = delivery.later()
            if recipient.address.localPart == "bad":
                d.addCallback(lambda _: defer.fail(SMTPError(550, "5.1.1", "no such user")))
            return d

        delivery.onRecipient = onRecipient
        return delivery

    def test_deferredHookRepliesInOrder(self):
        """A checkRecipient Deferred that fires later: replies stay in order, and come out when it fires."""
        delivery = self._deferredRecipients()
        h = harness(delivery)
        replies = h.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<one@example.com>\r\n"
            b"RCPT TO:<bad@example.com>\r\nRCPT TO:<three@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(len(delivery.pending), 1)
        delivery.pending[0].callback(None)
        replies += h.replies()
        self.assertEqual(len(delivery.pending), 2, "the next RCPT was not processed when the first hook fired")
        delivery.pending[1].callback(None)
        replies += h.replies()
        self.assertEqual(len(delivery.pending), 3)
        delivery.pending[2].callback(None)
        replies += h.replies()
        # Everything is answered without the client sending anything more.
        self.assertEqual(codes(replies), [250, 250, 250, 550, 250, 354])

    def test_deferredHookSingleCommand(self):
        """A client that waits for each reply (no pipelining) gets it when the hook fires."""
        delivery = HookDelivery()
        delivery.onSender = delivery.later
        h = harness(delivery)
        h.command(b"EHLO c.example")
        self.assertEqual(h.send(b"MAIL FROM:<a@example.com>\r\n"), [])
        delivery.pending[0].callback(None)
        self.assertEqual(codes(h.replies()), [250])

    def test_asyncDefHook(self):
        delivery = HookDelivery()

        async def onRecipient(recipient, envelope):
            await delivery.later()
            if recipient.address.localPart == "bad":
                raise SMTPError(550, "5.1.1", "no such user")

        delivery.onRecipient = onRecipient
        h = harness(delivery)
        replies = h.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<bad@example.com>\r\n"
            b"RCPT TO:<two@example.com>\r\nDATA\r\n"
        )
        fired = 0
        while fired < len(delivery.pending):
            delivery.pending[fired].callback(None)
            fired += 1
            replies += h.replies()
        self.assertEqual(fired, 2)
        self.assertEqual(codes(replies), [250, 250, 550, 250, 354])

    def test_asyncDefHookNoAwait(self):
        delivery = HookDelivery()

        async def onSender(sender, params):
            if str(sender) == "bad@example.com":
                raise SMTPError(550, "5.7.1", "not you")

        delivery.onSender = onSender
        h = harness(delivery)
        replies = h.send(
            b"EHLO c.example\r\nMAIL FROM:<bad@example.com>\r\nMAIL FROM:<ok@example.com>\r\nRCPT TO:<r@example.com>\r\n"
        )
        self.assertEqual(codes(replies), [250, 550, 250, 250])

    def test_inputPausedWhileBlocked(self):
        """
        While a hook is pending, pipelined input is buffered up to a bound and
        then the transport is paused; it resumes, and everything is answered,
        when the hook fires.
        """
        delivery = HookDelivery()
        delivery.onSender = delivery.later
        h = harness(delivery)
        n = 50_000  # 300 KB of NOOPs
        self.assertEqual(h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n" + b"NOOP\r\n" * n), [])
        self.assertEqual(h.transport.producerState, "paused")
        delivery.pending[0].callback(None)
        replies = h.replies()
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(len(replies), n + 2)
        self.assertEqual(set(codes(replies)), {250})

    def test_clientLeavesWhileHookPending(self):
        delivery = HookDelivery()
        delivery.onRecipient = lambda recipient, envelope: delivery.later()
        h = harness(delivery)
        h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        h.disconnect()
        delivery.pending[0].callback(None)
        self.assertEqual(h.replies(), [])
        self.assertEqual(delivery.receivers, [])
        delivery2 = HookDelivery()
        delivery2.onRecipient = lambda recipient, envelope: delivery2.later()
        h2 = harness(delivery2)
        h2.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        h2.disconnect()
        delivery2.pending[0].errback(SMTPError(550, "5.1.1", "no"))
        self.assertEqual(h2.replies(), [])

    def test_manyPipelinedCommandsWithFiredDeferreds(self):
        """
        Hooks that return already-fired Deferreds (defer.succeed) for a long
        pipelined burst: every command is answered, in order.  The input
        buffer allows 256 KiB of pipelined commands.
        """
        def cleanup():
            # If the server recursed, the failures are logged from Deferreds
            # that die later: collect them here, not in some other test.
            gc.collect()
            self.flushLoggedErrors(RecursionError)

        self.addCleanup(cleanup)
        delivery = HookDelivery()
        delivery.onSender = lambda sender, params: defer.succeed(None)
        h = harness(delivery, maxErrors=10_000)
        h.command(b"EHLO c.example")
        n = 300
        replies = h.send(b"MAIL FROM:<a@example.com>\r\nRSET\r\n" * n)
        self.assertEqual(codes(replies), [250] * (2 * n))
        self.assertEqual(h.command(b"NOOP").code, 250)


# -- DATA ----------------------------------------------------------------------------


class DataTests(unittest.TestCase):
    def test_bodyStoredUnstuffed(self):
        body = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n\r\nend.\r\n"
        h = harness()
        begin(self, h)
        replies = h.send(encodeBody(body))
        self.assertEqual(codes(replies), [250])
        self.assertEqual(replies[0].enhanced, "2.0.0")
        self.assertEqual(h.delivery.messages[0].body, body)

    def test_emptyBody(self):
        h = harness()
        begin(self, h)
        self.assertEqual(codes(h.send(b".\r\n")), [250])
        self.assertEqual(h.delivery.messages[0].body, b"")

    def test_bodyByteByByte(self):
        body = b"Subject: x\r\n\r\n..a\r\nb\r\n"
        h = harness()
        begin(self, h)
        wire = encodeBody(body)
        replies = []
        for i in range(len(wire)):
            replies += h.send(wire[i : i + 1])
            if i < len(wire) - 1:
                self.assertEqual(replies, [])
        self.assertEqual(codes(replies), [250])
        self.assertEqual(h.delivery.messages[0].body, body)

    def test_receivedHeader(self):
        """RFC 5321 §4.4: a Received: line is prepended; existing ones are not touched."""
        body = b"Received: from old.example by older.example; Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: x\r\n\r\nhi\r\n"
        h = harness()
        replies = h.sendMessage(b"a@example.com", [b"rcpt@example.com"], body)
        self.assertEqual(codes(replies), [250, 250, 250, 354, 250])
        m = re.search(r"queued as (\S+)", replies[-1].text)
        self.assertIsNotNone(m)
        queueId = m.group(1)
        msg = h.delivery.messages[0]
        self.assertEqual(msg.envelope.queueId, queueId)
        header = msg.envelope.receivedHeader
        self.assertTrue(msg.data.startswith(header))
        self.assertEqual(msg.body, body)
        text = header.decode()
        self.assertTrue(text.startswith("Received: from client.example ([192.0.2.7])\r\n"), text)
        self.assertTrue(text.endswith("\r\n"))
        lines = text[:-2].split("\r\n")
        self.assertTrue(all(line[:1] in (" ", "\t") for line in lines[1:]), "continuation lines must be folded")
        self.assertIn("by test.invalid", text)
        self.assertRegex(text, r"\swith ESMTP\s")
        self.assertRegex(text, rf"\sid {re.escape(queueId)}\b")
        self.assertIn("for <rcpt@example.com>", text)
        date = parsedate_to_datetime(text.rsplit(";", 1)[1].strip())
        self.assertEqual(date.timestamp(), h.clock.seconds())

    def test_receivedHeaderSeveralRecipients(self):
        h = harness()
        h.sendMessage(b"a@example.com", [b"r1@example.com", b"r2@example.com"], b"hi\r\n")
        header = h.delivery.messages[0].envelope.receivedHeader
        self.assertNotIn(b"for <", header)

    def test_receivedHeaderAfterHelo(self):
        """RFC 3848: "with SMTP" after HELO."""
        h = harness()
        self.assertEqual(
            codes(h.send(b"HELO old.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")),
            [250, 250, 250, 354],
        )
        h.send(b"hi\r\n.\r\n")
        header = h.delivery.messages[0].envelope.receivedHeader.decode()
        self.assertTrue(header.startswith("Received: from old.example ([192.0.2.7])"))
        self.assertRegex(header, r"\swith SMTP\s")

    def test_receivedHeaderUTF8(self):
        """RFC 6531 §4.3: "with UTF8SMTP" for an SMTPUTF8 transaction."""
        h = harness()
        h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        h.send(b"hi\r\n.\r\n")
        self.assertRegex(h.delivery.messages[0].envelope.receivedHeader.decode(), r"\swith UTF8SMTP\s")

    def test_queueIdsDiffer(self):
        h = harness()
        h.sendMessage(b"a@example.com", [b"b@example.com"], b"one\r\n")
        h.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        h.send(b"two\r\n.\r\n")
        ids = [m.envelope.queueId for m in h.delivery.messages]
        self.assertEqual(len(ids), 2)
        self.assertNotEqual(ids[0], ids[1])

    def test_pipelinedCommandsAfterDot(self):
        h = harness()
        begin(self, h)
        replies = h.send(b"body\r\n.\r\nMAIL FROM:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n")
        self.assertEqual(codes(replies), [250, 250, 250, 354])
        self.assertEqual(codes(h.send(b"second\r\n.\r\n")), [250])
        self.assertEqual([m.body for m in h.delivery.messages], [b"body\r\n", b"second\r\n"])

    def test_messageTooBig(self):
        """RFC 1870 §6.3: 552 5.3.4 after the final dot; the data is read to its end."""
        h = harness(maxMessageSize=1000)
        begin(self, h)
        for _ in range(10):
            self.assertEqual(h.send(b"y" * 498 + b"\r\n"), [])
        self.assertEqual(len(h.delivery.aborted), 1)
        replies = h.send(b"QUIT\r\n.\r\nNOOP\r\n")
        self.assertEqual(codes(replies), [552, 250])
        self.assertEqual(replies[0].enhanced, "5.3.4")
        self.assertEqual(h.delivery.messages, [])
        self.assertFalse(h.closed)
        self.assertEqual(h.protocol.state, State.READY)

    def test_messageExactlyMaxSize(self):
        h = harness(maxMessageSize=1000)
        begin(self, h)
        self.assertEqual(codes(h.send(b"z" * 998 + b"\r\n.\r\n")), [250])
        self.assertEqual(len(h.delivery.messages[0].body), 1000)

    def test_longDataLineStaysInData(self):
        """
        An over-long line inside DATA must never switch back to command mode
        (twisted.mail.smtp's 16 KiB line limit did).
        """
        h = harness()
        begin(self, h)
        longLine = b"x" * 40_000 + b"QUIT\t.\tQUIT" + b"y" * 60_000
        body = b"Subject: long\r\n\r\n" + longLine + b"\r\nend\r\n"
        for i in range(0, len(body), 4096):
            self.assertEqual(h.send(body[i : i + 4096]), [])
            self.assertFalse(h.closed)
            self.assertEqual(h.protocol.state, State.DATA)
        replies = h.send(b".\r\nNOOP\r\n")
        self.assertEqual(len(replies), 2)
        self.assertEqual(replies[1].code, 250)
        if replies[0].code == 250:
            self.assertEqual(h.delivery.messages[0].body, body)
        else:
            self.assertEqual(replies[0].code // 100, 5)
            self.assertEqual(h.delivery.messages, [])
        self.assertFalse(h.closed)

    def test_clientVanishesInData(self):
        h = harness()
        begin(self, h)
        h.send(b"Subject: partial\r\n\r\nsome of the")
        h.disconnect()
        self.assertEqual(h.delivery.messages, [])
        self.assertEqual(len(h.delivery.aborted), 1)
        self.assertEqual(h.delivery.closedSessions, 1)
        self.assertEqual(h.protocol.state, State.CLOSED)
        self.assertEqual(h.factory.protocols, set())
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.active()], [])

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.sampled_from([b"", b".", b"..", b".x", b"QUIT", b"MAIL FROM:<a@b.example>"]),
                st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
            ),
            max_size=20,
        ).map(lambda lines: b"".join(line + b"\r\n" for line in lines)),
        st.lists(st.integers(0, 100_000), max_size=15),
    )
    def test_anyBodyAnyChunking(self, body, cuts):
        h = harness()
        wire = (
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            + encodeBody(body)
            + b"NOOP\r\n"
        )
        points = sorted({c % (len(wire) + 1) for c in cuts})
        replies = []
        start = 0
        for p in [*points, len(wire)]:
            replies += h.send(wire[start:p])
            start = p
        self.assertEqual(codes(replies), [250, 250, 250, 354, 250, 250])
        self.assertEqual(h.delivery.messages[0].body, body)


class SmugglingTests(unittest.TestCase):
    """
    SMTP smuggling (SEC Consult 2023; CVE-2023-51764 and others): only
    CRLF "." CRLF ends DATA (RFC 5321 §4.1.1.4); a message with a bare CR or
    LF is refused (550 5.6.0) by default, after the real final dot.
    """

    def test_smugglingRefused(self):
        for seq in SMUGGLING:
            h = harness()
            body = b"Subject: hi\r\n\r\nhello" + seq + SMUGGLED
            replies = h.sendMessage(b"a@example.com", [b"rcpt@example.com"], body)
            self.assertEqual(codes(replies), [250, 250, 250, 354, 550], seq)
            self.assertEqual(replies[-1].enhanced, "5.6.0", seq)
            self.assertEqual(h.delivery.messages, [], seq)
            self.assertEqual(len(h.delivery.aborted), 1, seq)
            # The smuggled commands were data, not commands.
            self.assertEqual(h.protocol.state, State.READY, seq)
            self.assertEqual(h.command(b"NOOP").code, 250)
            self.assertEqual(h.command(b"RCPT TO:<x@example.com>").code, 503)

    def test_smugglingByteByByte(self):
        for seq in SMUGGLING:
            h = harness()
            begin(self, h)
            wire = b"hello" + seq + SMUGGLED + b".\r\nNOOP\r\n"
            replies = []
            for i in range(len(wire)):
                replies += h.send(wire[i : i + 1])
            self.assertEqual(codes(replies), [550, 250], seq)
            self.assertEqual(h.delivery.messages, [], seq)

    def test_smugglingNormalized(self):
        for seq in SMUGGLING:
            h = harness(bareLineEnds="normalize")
            body = b"Subject: hi\r\n\r\nhello" + seq + SMUGGLED
            replies = h.sendMessage(b"a@example.com", [b"rcpt@example.com"], body)
            self.assertEqual(codes(replies), [250, 250, 250, 354, 250], seq)
            self.assertEqual(len(h.delivery.messages), 1, seq)
            stored = h.delivery.messages[0].body
            self.assertIn(b"RCPT TO:<victim@example.com>", stored)
            self.assertEqual(stored.count(b"\r"), stored.count(b"\r\n"), seq)
            self.assertEqual(stored.count(b"\n"), stored.count(b"\r\n"), seq)
            self.assertEqual(h.delivery.messages[0].recipients, ["rcpt@example.com"])

    def test_normalizeStoresCRLF(self):
        h = harness(bareLineEnds="normalize")
        replies = h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: x\n\na\rb\r\n")
        self.assertEqual(codes(replies)[-1], 250)
        self.assertEqual(h.delivery.messages[0].body, b"Subject: x\r\n\r\na\r\nb\r\n")

    def test_bareLFRefusedByDefault(self):
        h = harness()
        replies = h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: x\n\nhello\r\n")
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (550, "5.6.0"))
        self.assertEqual(h.delivery.messages, [])


# -- delivery hooks --------------------------------------------------------------


class DeliveryHookTests(unittest.TestCase):
    def test_senderRefused(self):
        h = harness()
        h.delivery.refusedSenders["spam@example.com"] = SMTPError(550, "5.7.1", "go away")
        h.command(b"EHLO c.example")
        r = h.command(b"MAIL FROM:<spam@example.com>")
        self.assertEqual((r.code, r.enhanced, r.text), (550, "5.7.1", "go away"))
        self.assertEqual(h.command(b"MAIL FROM:<ok@example.com>").code, 250)

    def test_recipientRefused(self):
        h = harness()
        h.delivery.refusedRecipients["gone@example.com"] = SMTPError(550, "5.1.1", "no such user")
        h.command(b"EHLO c.example")
        h.command(b"MAIL FROM:<a@example.com>")
        r = h.command(b"RCPT TO:<gone@example.com>")
        self.assertEqual((r.code, r.enhanced), (550, "5.1.1"))

    def test_refusalWithoutEnhancedCode(self):
        h = harness()
        h.delivery.refusedSenders[""] = SMTPError(421, None, "later")
        h.command(b"EHLO c.example")
        r = h.command(b"MAIL FROM:<>")
        self.assertEqual((r.code, r.enhanced), (421, "4.0.0"))

    def test_plainExceptionIs451(self):
        delivery = HookDelivery()

        def onSender(sender, params):
            raise ValueError("secret-internal-detail")

        delivery.onSender = onSender
        h = harness(delivery)
        h.command(b"EHLO c.example")
        r = h.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual((r.code, r.enhanced), (451, "4.3.0"))
        self.assertNotIn("secret-internal-detail", r.text)
        self.assertNotIn("Traceback", r.text)
        self.assertNotIn("ValueError", r.text)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertFalse(h.closed)
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_failedDeferredIs451(self):
        delivery = HookDelivery()
        delivery.onRecipient = lambda recipient, envelope: defer.fail(KeyError("secret-internal-detail"))
        h = harness(delivery)
        replies = h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        self.assertEqual(codes(replies), [250, 250, 451, 554])
        self.assertNotIn("secret-internal-detail", replies[2].text)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_asyncExceptionIs451(self):
        delivery = HookDelivery()

        async def onRecipient(recipient, envelope):
            await delivery.later()
            raise RuntimeError("secret-internal-detail")

        delivery.onRecipient = onRecipient
        h = harness(delivery)
        replies = h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        delivery.pending[0].callback(None)
        logged = self.flushLoggedErrors(RuntimeError)
        replies += h.replies()
        self.assertEqual(codes(replies), [250, 250, 451])
        self.assertNotIn("secret-internal-detail", replies[-1].text)
        self.assertEqual(len(logged), 1)

    def test_openMessageRefused(self):
        delivery = HookDelivery()

        def onOpen(envelope):
            raise SMTPError(554, "5.7.1", "no messages today")

        delivery.onOpen = onOpen
        h = harness(delivery)
        replies = h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        self.assertEqual(codes(replies), [250, 250, 250, 554])
        self.assertEqual(replies[-1].enhanced, "5.7.1")
        # The body that a client might send anyway is read as commands: the
        # transaction is over.
        self.assertEqual(h.protocol.state, State.READY)
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com>").code, 250)

    def test_openMessageLater(self):
        delivery = HookDelivery()
        opened: list[Deferred[Any]] = []

        def onOpen(envelope):
            d: Deferred[Any] = Deferred()
            opened.append(d)
            return d

        delivery.onOpen = onOpen
        h = harness(delivery)
        replies = h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        receiver = Receiver(delivery, None)
        opened[0].callback(receiver)
        replies += h.replies()
        self.assertEqual(codes(replies), [250, 250, 250, 354])
        self.assertEqual(codes(h.send(b"hi\r\n.\r\n")), [250])
        self.assertTrue(receiver.finished)
        self.assertEqual(b"".join(receiver.chunks[1:]), b"hi\r\n")

    def test_finishAllRecipientsFail(self):
        """SMTP gives one reply: when every recipient failed, the first failure."""
        h = harness()
        h.delivery.results = lambda m: [SMTPError(550, "5.1.1", "gone"), SMTPError(452, "4.2.2", "full")]
        replies = h.sendMessage(b"a@example.com", [b"r1@example.com", b"r2@example.com"], b"hi\r\n")
        self.assertEqual((replies[-1].code, replies[-1].enhanced, replies[-1].text), (550, "5.1.1", "gone"))

    def test_finishSomeRecipientsFail(self):
        """
        SMTP has one reply, and RFC 5321 §6.1 forbids losing a message once
        it is accepted: a message stored for only some recipients is refused
        as a whole with a 451 (the client sends it again), and an error in
        the log names the recipients who may get it twice.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = harness()
        h.delivery.results = lambda m: [SMTPError(550, "5.1.1", "gone"), None]
        replies = h.sendMessage(b"a@example.com", [b"r1@example.com", b"r2@example.com"], b"hi\r\n")
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (451, "4.3.0"))
        self.assertIn("some may receive it twice", replies[-1].text)
        [partial] = [e for e in events if "stored for only some recipients" in e.get("text", "")]
        self.assertEqual(partial["log_level"].name, "error")
        self.assertIn("<r2@example.com> may receive it twice", partial["text"])
        self.assertIn("550 5.1.1 gone", partial["text"])
        [logged] = [e for e in events if e.get("result", "").startswith("refused")]
        self.assertEqual(logged["queueId"], h.delivery.messages[0].envelope.queueId)
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_finishRaisesSMTPError(self):
        h = harness()

        def results(message):
            raise SMTPError(452, "4.3.1", "disk full")

        h.delivery.results = results
        replies = h.sendMessage(b"a@example.com", [b"r@example.com"], b"hi\r\n")
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (452, "4.3.1"))
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_finishFailsLater(self):
        delivery = HookDelivery()
        delivery.finishResult = lambda receiver: delivery.later()
        h = harness(delivery)
        begin(self, h)
        self.assertEqual(h.send(b"hi\r\n.\r\nNOOP\r\n"), [])
        delivery.pending[0].errback(OSError("disk on fire"))
        logged = self.flushLoggedErrors(OSError)
        replies = h.replies()
        self.assertEqual(codes(replies), [451, 250])
        self.assertNotIn("disk on fire", replies[0].text)
        self.assertEqual(len(logged), 1)

    def test_receiverWriteRaises(self):
        delivery = HookDelivery()
        h = harness(delivery)
        begin(self, h)
        delivery.writeError = OSError("no space")
        replies = h.send(b"hello\r\n.\r\n")
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (451, "4.3.0"))
        self.assertIsNotNone(delivery.receivers[0].aborted)
        self.assertFalse(delivery.receivers[0].finished)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_sessionClosedOnDisconnect(self):
        h = harness()
        h.command(b"EHLO c.example")
        h.disconnect()
        self.assertEqual(h.delivery.closedSessions, 1)


# -- back-pressure -----------------------------------------------------------------


class BackPressureTests(unittest.TestCase):
    def test_receiverPausesTransport(self):
        delivery = HookDelivery()
        delivery.holdWrites = True
        h = harness(delivery)
        begin(self, h)
        receiver = delivery.receivers[0]
        # The Received: header write is pending: reading is paused.
        self.assertEqual(h.transport.producerState, "paused")
        receiver.pendingWrites[0].callback(None)
        self.assertEqual(h.transport.producerState, "producing")

        self.assertEqual(h.send(b"Subject: x\r\n\r\nhello\r\n"), [])
        self.assertEqual(h.transport.producerState, "paused")
        self.assertEqual(h.send(b".\r\nNOOP\r\n"), [])
        self.assertFalse(receiver.finished, "finish() called before pending writes completed")

        for d in list(receiver.pendingWrites):
            if not d.called:
                d.callback(None)
        replies = h.replies()
        self.assertTrue(receiver.finished)
        self.assertFalse(receiver.finishedWithPendingWrites)
        self.assertEqual(codes(replies), [250, 250])
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(b"".join(receiver.chunks[1:]), b"Subject: x\r\n\r\nhello\r\n")

    def test_backPressureIsNotAClientTimeout(self):
        """
        While the server has stopped reading because its receiver is slow,
        the client cannot send: neither the data timeout nor the minimum
        data rate may blame it (the session must survive and finish).
        """
        delivery = HookDelivery()
        delivery.holdWrites = True
        h = harness(delivery, dataTimeout=180, minDataRate=256, dataRateWindow=60)
        begin(self, h)
        receiver = delivery.receivers[0]
        receiver.pendingWrites[0].callback(None)
        h.send(b"x" * 20_000 + b"\r\n")
        self.assertEqual(h.transport.producerState, "paused")
        h.clock.advance(240)
        self.assertEqual(h.replies(), [])
        self.assertFalse(h.closed)
        self.assertIsNone(receiver.aborted)
        for d in list(receiver.pendingWrites):
            if not d.called:
                d.callback(None)
        self.assertEqual(codes(h.send(b"y" * 20_000 + b"\r\n.\r\n")), [])
        for d in list(receiver.pendingWrites):
            if not d.called:
                d.callback(None)
        self.assertEqual(codes(h.replies()), [250])
        self.assertTrue(receiver.finished)

    def test_failedPendingWrite(self):
        delivery = HookDelivery()
        delivery.holdWrites = True
        h = harness(delivery)
        begin(self, h)
        receiver = delivery.receivers[0]
        receiver.pendingWrites[0].callback(None)
        h.send(b"hello\r\n.\r\n")
        for d in list(receiver.pendingWrites):
            if not d.called:
                d.errback(OSError("disk gone"))
        replies = h.replies()
        self.assertEqual(codes(replies), [451])
        self.assertFalse(receiver.finished)
        self.assertIsNotNone(receiver.aborted)
        self.assertEqual(h.transport.producerState, "producing")
        self.flushLoggedErrors(OSError)


# -- timeouts ------------------------------------------------------------------------


class TimeoutTests(unittest.TestCase):
    def test_idleTimeout(self):
        """RFC 5321 §4.5.3.2.7: wait at least 5 minutes; then 421 and close."""
        h = harness()
        h.command(b"EHLO c.example")
        h.clock.advance(299)
        self.assertEqual(h.replies(), [])
        self.assertFalse(h.closed)
        h.clock.advance(1.5)
        replies = h.replies()
        self.assertEqual(codes(replies), [421])
        self.assertEqual(replies[0].enhanced, "4.4.2")
        self.assertTrue(h.closed)

    def test_idleTimeoutBeforeEhlo(self):
        h = harness()
        h.clock.advance(301)
        self.assertEqual(codes(h.replies()), [421])
        self.assertTrue(h.closed)

    def test_activityResetsTimeout(self):
        h = harness()
        for _ in range(5):
            h.clock.advance(200)
            self.assertEqual(h.command(b"NOOP").code, 250)
        self.assertFalse(h.closed)
        h.clock.advance(301)
        self.assertTrue(h.closed)

    def test_timeoutInTransactionAbandonsIt(self):
        h = harness()
        h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        h.clock.advance(301)
        self.assertEqual(codes(h.replies()), [421])
        h.disconnect()
        self.assertEqual(h.delivery.messages, [])

    def test_dataTimeout(self):
        h = harness(dataTimeout=60, minDataRate=0)
        begin(self, h)
        h.clock.advance(59)
        self.assertEqual(h.send(b"some data\r\n"), [])
        h.clock.advance(59)
        self.assertFalse(h.closed)
        h.clock.advance(2)
        replies = h.replies()
        self.assertEqual(codes(replies), [421])
        self.assertTrue(h.closed)
        self.assertEqual(len(h.delivery.aborted), 1)
        self.assertEqual(h.delivery.messages, [])

    def test_minDataRate(self):
        h = harness(minDataRate=100, dataRateWindow=10, dataTimeout=180)
        begin(self, h)
        closedAt = None
        for step in range(10):
            h.send(b"x" * 48 + b"\r\n")
            h.clock.advance(2)
            if h.closed:
                closedAt = step
                break
        self.assertIsNotNone(closedAt, "a trickling client was not cut off")
        self.assertEqual(codes(h.replies()), [421])
        self.assertEqual(len(h.delivery.aborted), 1)
        self.assertEqual(h.delivery.messages, [])

    def test_fastClientNotCut(self):
        h = harness(minDataRate=100, dataRateWindow=10, dataTimeout=180)
        begin(self, h)
        for _ in range(3):
            h.send(b"x" * 1998 + b"\r\n")
            h.clock.advance(9)
        self.assertFalse(h.closed)
        self.assertEqual(codes(h.send(b".\r\n")), [250])

    def test_rateCheckEndsWithData(self):
        h = harness(minDataRate=100, dataRateWindow=10)
        begin(self, h)
        self.assertEqual(codes(h.send(b"x" * 100 + b"\r\n.\r\n")), [250])
        h.clock.advance(11)
        self.assertEqual(h.replies(), [])
        self.assertFalse(h.closed)
        h.clock.advance(300)
        self.assertTrue(h.closed)

    def test_noTimeoutWhileHookPending(self):
        """The client waiting for a slow delivery hook is not idle."""
        delivery = HookDelivery()
        delivery.onSender = delivery.later
        h = harness(delivery)
        h.command(b"EHLO c.example")
        h.send(b"MAIL FROM:<a@example.com>\r\n")
        h.clock.advance(290)
        self.assertFalse(h.closed)
        delivery.pending[0].callback(None)
        h.clock.advance(299)
        self.assertFalse(h.closed)
        h.clock.advance(2)
        self.assertTrue(h.closed)
        self.assertEqual(codes(h.replies()), [250, 421])

    def test_hookThatNeverAnswers(self):
        """
        A hook that never answers does not hold the connection for ever:
        after the command timeout the client gets 421 4.3.0 and the hook's
        Deferred is cancelled.
        """
        delivery = HookDelivery()
        delivery.onSender = delivery.later
        h = harness(delivery)
        h.command(b"EHLO c.example")
        h.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        h.clock.advance(301)
        replies = h.replies()
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(421, "4.3.0")])
        self.assertTrue(h.closed)
        # Cancelled: the CancelledError went to the session, which dropped it.
        self.assertTrue(delivery.pending[0].called)
        self.assertIsNone(self.successResultOf(delivery.pending[0]))

    def test_timeoutsCancelledOnClose(self):
        h = harness()
        h.command(b"QUIT")
        h.disconnect()
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.active()], [])


# -- graceful shutdown -------------------------------------------------------------


class ShutdownTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.factory = SMTPFactory(MemoryDelivery(), hostname="test.invalid", clock=self.clock)

    def session(self) -> ServerHarness:
        return ServerHarness(factory=self.factory)

    def test_noSessions(self):
        d = self.factory.shutdown()
        self.assertIsNone(self.successResultOf(d))

    def test_idleClosedAtOnceBusyWaits(self):
        idle = self.session()
        idle.command(b"EHLO c.example")
        fresh = self.session()
        busy = self.session()
        begin(self, busy)
        busy.send(b"Subject: x\r\n\r\npart one\r\n")

        d = self.factory.shutdown(grace=30)
        for s in (idle, fresh):
            replies = s.replies()
            self.assertEqual(codes(replies), [421])
            self.assertEqual(replies[0].enhanced, "4.3.2")
            self.assertTrue(s.closed)
        self.assertEqual(busy.replies(), [])
        self.assertFalse(busy.closed)
        self.assertNoResult(d)

        replies = busy.send(b"part two\r\n.\r\nMAIL FROM:<a@example.com>\r\n")
        self.assertEqual(codes(replies), [250, 421])
        self.assertEqual(replies[1].enhanced, "4.3.2")
        self.assertTrue(busy.closed)
        self.assertEqual(self.factory.delivery.messages[0].body, b"Subject: x\r\n\r\npart one\r\npart two\r\n")

        for s in (idle, fresh, busy):
            s.disconnect()
        self.successResultOf(d)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_forceAfterGrace(self):
        busy = self.session()
        begin(self, busy)
        busy.send(b"part one\r\n")
        d = self.factory.shutdown(grace=30)
        self.clock.advance(29)
        self.assertEqual(busy.replies(), [])
        self.assertFalse(busy.closed)
        self.clock.advance(1)
        replies = busy.replies()
        self.assertEqual(codes(replies), [421])
        self.assertTrue(busy.closed)
        self.assertEqual(len(self.factory.delivery.aborted), 1)
        self.assertEqual(self.factory.delivery.messages, [])
        self.assertNoResult(d)
        busy.disconnect()
        self.successResultOf(d)

    def test_shutdownThenRset(self):
        """
        A session in MAIL/RCPT when shutdown starts: once the client drops
        the transaction (RSET) it is idle, and must be closed with 421 rather
        than allowed to start a new transaction.
        """
        s = self.session()
        s.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n")
        s.replies()
        self.factory.shutdown(grace=30)
        self.assertEqual(s.replies(), [])
        replies = s.send(b"RSET\r\nMAIL FROM:<b@example.com>\r\n")
        self.assertEqual(codes(replies), [250, 421])
        self.assertEqual(replies[1].enhanced, "4.3.2")
        self.assertTrue(s.closed)

    def test_shutdownDuringHook(self):
        """A session waiting on a hook is not cut short; it closes after its transaction."""
        delivery = HookDelivery()
        delivery.onSender = delivery.later
        factory = SMTPFactory(delivery, hostname="test.invalid", clock=self.clock)
        s = ServerHarness(factory=factory)
        s.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        factory.shutdown(grace=30)
        self.assertFalse(s.closed)
        delivery.pending[0].callback(None)
        replies = s.replies()
        self.assertEqual(codes(replies), [250, 250, 250, 354])
        self.assertEqual(codes(s.send(b"hi\r\n.\r\n")), [250, 421])
        self.assertTrue(s.closed)


class ExtensionCommandTests(unittest.TestCase):
    """A subclass's own commands, through the public API (docs/architecture.rst)."""

    def _harness(self) -> tuple[ServerHarness, list[Deferred[None]]]:
        waiting: list[Deferred[None]] = []

        class XWaitServer(ESMTPServer):
            allowedStates = {"XWAIT": frozenset({State.READY})}

            def extensions(self) -> list[str]:
                return super().extensions() + ["XWAIT"]

            async def do_XWAIT(self, argument: bytes) -> None:
                d: Deferred[None] = Deferred()
                waiting.append(d)
                await d
                self.reply(250, "2.0.0", f"waited {argument.decode()}")

            def do_XNOW(self, argument: bytes) -> None:
                self.reply(250, "2.0.0", "now")

        class XWaitFactory(SMTPFactory):
            protocol = XWaitServer

        h = ServerHarness(factory=XWaitFactory(MemoryDelivery(), "test.invalid", clock=Clock()))
        return h, waiting

    def test_asyncVerbKeepsPipelinedOrder(self) -> None:
        """An ``async def`` command holds the replies that follow it until it answers."""
        h, waiting = self._harness()
        ehlo = h.command(b"EHLO c.example")
        self.assertIn("XWAIT", ehlo.lines)
        self.assertEqual(h.send(b"XWAIT 1\r\nNOOP\r\nXNOW\r\nXWAIT 2\r\nRSET\r\n"), [])
        waiting[0].callback(None)
        self.assertEqual(len(waiting), 2)  # the second XWAIT runs only after the first answered
        self.assertEqual(h.replies(), [])  # nothing is written while XWAIT 2 is pending
        waiting[1].callback(None)
        replies = h.replies()
        self.assertEqual(
            [(r.code, r.text) for r in replies],
            [(250, "waited 1"), (250, "OK"), (250, "now"), (250, "waited 2"), (250, "OK")],
        )

    def test_verbStates(self) -> None:
        """``allowedStates`` applies: XWAIT before EHLO is a sequence error."""
        h, waiting = self._harness()
        reply = h.command(b"XWAIT 1")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"))
        self.assertEqual(waiting, [])
        self.assertEqual(h.command(b"XNOW").code, 250)  # no states given: allowed anywhere
