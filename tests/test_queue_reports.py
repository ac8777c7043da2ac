"""
Delivery status notifications (txsmtp.queue.reports): each report is queued
in a store and parsed back with Python's email package (policy.default), so
that what is checked is what a mail reader sees: the multipart/report
structure, every RFC 3464 field, the echo of ENVID and ORCPT, the returned
message (whole for RET=FULL failures, headers otherwise), NOTIFY honoured,
no report about a report, and a large body copied a chunk at a time.
"""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from tests.queuefakes import FakeStore, ReadRecorder
from txsmtp.queue.errors import QueueFullError
from txsmtp.queue.model import AttemptResult, QueuedMessage, QueuedRecipient, Result
from txsmtp.queue.reports import CHUNK, HEADER_LIMIT, Reporter

NOW = 1_800_000_000.0
BODY = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: lunch on Friday\r\n"
    b"Message-ID: <original.1@example.org>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"SECRET-BODY-LINE\r\n"
)


def failed(status: str = "5.1.1", text: str = "no such user") -> AttemptResult:
    return AttemptResult(
        Result.FAILED,
        status,
        diagnostic=f"smtp; 550 {status} {text}",
        remoteMTA="dns; mx.example.com",
        reason=f"mx.example.com[192.0.2.7] said: 550 {status} {text}",
    )


def deferred() -> AttemptResult:
    return AttemptResult(
        Result.DEFERRED,
        "4.4.1",
        remoteMTA=None,
        reason="connection to mx.example.com[192.0.2.7]:25 refused",
    )


def delivered(result: Result = Result.DELIVERED) -> AttemptResult:
    return AttemptResult(result, "2.0.0", diagnostic="smtp; 250 2.0.0 ok", remoteMTA="dns; mx.example.com", reason="ok")


class ReporterTestsMixin:
    store: FakeStore
    clock: task.Clock
    reporter: Reporter

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.store = FakeStore(self.clock)
        self.reporter = Reporter(self.store, "mail.example.net", self.clock, lifetime=5 * 86400)

    def queue(
        self,
        recipients: list[QueuedRecipient],
        sender: str = "alice@example.org",
        body: bytes = BODY,
        **parameters: Any,
    ) -> QueuedMessage:
        """A message in the store (arrived an hour ago), as a lease would give it."""
        # body_ stands for the BODY parameter (body is the message itself).
        envelope = {"parameters": {("body" if k == "body_" else k): v for k, v in parameters.items()}}
        messageId = self.store.add(sender, recipients, envelope, body, arrival=NOW - 3600, wake=False)
        message = self.store.rows[messageId].message
        return QueuedMessage(message.id, sender, message.arrival, len(body), envelope, list(message.recipients))

    def report(self, message: QueuedMessage, results: list[tuple[QueuedRecipient, AttemptResult]]) -> list[str]:
        d = self.reporter.report(message, results, lambda: self.store.openBody(message.id))
        return self.successResultOf(d)  # type: ignore[attr-defined,no-any-return]

    def parsed(self, reportId: str) -> EmailMessage:
        msg = email.message_from_bytes(self.store.rows[reportId].body, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def status(self, msg: Message) -> list[Message]:
        """The blocks of the message/delivery-status part: per message, then per recipient."""
        part = msg.get_payload()[1]
        assert part.get_content_type() == "message/delivery-status"
        blocks = part.get_payload()
        assert isinstance(blocks, list)
        return blocks


class StructureTests(ReporterTestsMixin, unittest.TestCase):
    def test_failureReport(self) -> None:
        """A failure report: multipart/report from MAILER-DAEMON, three parts, queued from <> to the sender."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")])
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        msg = self.parsed(reportId)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(
            [p.get_content_type() for p in msg.get_payload()],
            ["text/plain", "message/delivery-status", "text/rfc822-headers"],
        )
        self.assertEqual(msg["From"].addresses[0].addr_spec, "MAILER-DAEMON@mail.example.net")
        self.assertEqual(msg["To"].addresses[0].addr_spec, "alice@example.org")
        self.assertIn("could not be delivered", msg["Subject"])
        self.assertEqual(msg["Date"].datetime.timestamp(), NOW)
        self.assertTrue(msg["Message-ID"].endswith("@mail.example.net>"))
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertEqual(msg["MIME-Version"], "1.0")
        self.assertEqual(msg.defects, [])
        # Queued like any mail: from <> to the original sender, no NOTIFY.
        row = self.store.rows[reportId].message
        self.assertEqual(row.sender, "")
        self.assertEqual([(r.address, r.notify) for r in row.recipients], [("alice@example.org", None)])
        self.assertEqual(row.envelope["parameters"]["body"], None)
        self.assertFalse(row.envelope["parameters"]["smtputf8"])

    def test_humanText(self) -> None:
        """The text part names each recipient, says why in plain words, and what to do."""
        message = self.queue([QueuedRecipient(0, "bob@example.com"), QueuedRecipient(1, "carol@example.com")])
        [reportId] = self.report(
            message,
            [(message.recipients[0], failed()), (message.recipients[1], failed("5.2.2", "mailbox full"))],
        )
        text = self.parsed(reportId).get_payload()[0].get_content()
        self.assertIn("mail.example.net", text)
        self.assertIn("<bob@example.com>", text)
        self.assertIn("does not exist", text)
        self.assertIn("<carol@example.com>", text)
        self.assertIn("mailbox is full", text)
        self.assertIn("550 5.1.1 no such user", text)
        self.assertIn("What you can do", text)
        self.assertIn("typing mistakes", text)
        self.assertIn(message.id, text)

    def test_deliveryStatusFields(self) -> None:
        """Every RFC 3464 field of a failure, with ENVID and ORCPT echoed as given."""
        rcpt = QueuedRecipient(0, "bob@example.com", notify=("FAILURE",), orcpt=("rfc822", "Bob+list@Example.COM"))
        message = self.queue([rcpt], envid="QQ314159", ret="HDRS")
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        perMessage, perRecipient = self.status(self.parsed(reportId))
        self.assertEqual(perMessage["Reporting-MTA"], "dns; mail.example.net")
        self.assertEqual(perMessage["Original-Envelope-Id"], "QQ314159")
        self.assertEqual(parsedate_to_datetime(perMessage["Arrival-Date"]).timestamp(), NOW - 3600)
        self.assertEqual(perRecipient["Original-Recipient"], "rfc822; Bob+list@Example.COM")
        self.assertEqual(perRecipient["Final-Recipient"], "rfc822; bob@example.com")
        self.assertEqual(perRecipient["Action"], "failed")
        self.assertEqual(perRecipient["Status"], "5.1.1")
        self.assertEqual(perRecipient["Remote-MTA"], "dns; mx.example.com")
        self.assertEqual(perRecipient["Diagnostic-Code"], "smtp; 550 5.1.1 no such user")
        self.assertEqual(parsedate_to_datetime(perRecipient["Last-Attempt-Date"]).timestamp(), NOW)
        self.assertIsNone(perRecipient["Will-Retry-Until"])

    def test_withoutEnvidOrcpt(self) -> None:
        """Without ENVID and ORCPT, their fields are absent (not empty)."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")])
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        perMessage, perRecipient = self.status(self.parsed(reportId))
        self.assertIsNone(perMessage["Original-Envelope-Id"])
        self.assertIsNone(perRecipient["Original-Recipient"])

    def test_oneBlockPerRecipient(self) -> None:
        message = self.queue([QueuedRecipient(i, f"u{i}@example.com") for i in range(3)])
        [reportId] = self.report(message, [(r, failed()) for r in message.recipients])
        blocks = self.status(self.parsed(reportId))
        self.assertEqual([b["Final-Recipient"] for b in blocks[1:]], [f"rfc822; u{i}@example.com" for i in range(3)])

    def test_fieldsStayOnOneLine(self) -> None:
        """A diagnostic with line breaks or control characters cannot break the fields."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")])
        bad = failed(text="no\r\nAction: delivered\x00")
        [reportId] = self.report(message, [(message.recipients[0], bad)])
        _, perRecipient = self.status(self.parsed(reportId))
        self.assertEqual(perRecipient.get_all("Action"), ["failed"])
        self.assertEqual(perRecipient["Diagnostic-Code"], "smtp; 550 5.1.1 no Action: delivered?")


class ReturnedMessageTests(ReporterTestsMixin, unittest.TestCase):
    def test_retFull(self) -> None:
        """RET=FULL: the failure report returns the whole message as message/rfc822."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")], ret="FULL")
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        msg = self.parsed(reportId)
        returned = msg.get_payload()[2]
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        [inner] = returned.get_payload()
        self.assertEqual(inner["Subject"], "lunch on Friday")
        self.assertEqual(inner["Message-ID"], "<original.1@example.org>")
        self.assertIn("SECRET-BODY-LINE", inner.get_content())
        self.assertIn(b"\r\n\r\nShall we meet at noon?\r\nSECRET-BODY-LINE\r\n\r\n--", self.store.rows[reportId].body)
        self.assertIn("attached below, in full", msg.get_payload()[0].get_content())

    def test_retHdrs(self) -> None:
        """RET=HDRS: the header section only, as text/rfc822-headers."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")], ret="HDRS")
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        returned = self.parsed(reportId).get_payload()[2]
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        headers = returned.get_content()
        self.assertIn("Subject: lunch on Friday", headers)
        self.assertIn("Message-ID: <original.1@example.org>", headers)
        self.assertNotIn("SECRET-BODY-LINE", headers)
        self.assertNotIn(b"SECRET-BODY-LINE", self.store.rows[reportId].body)

    def test_requireTLSHeadersOnly(self) -> None:
        """
        REQUIRETLS (RFC 8689 §5): even with RET=FULL the report holds the
        header section only, and is itself queued with REQUIRETLS.
        """
        message = self.queue([QueuedRecipient(0, "bob@example.com")], ret="FULL", requiretls=True)
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        returned = self.parsed(reportId).get_payload()[2]
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"SECRET-BODY-LINE", self.store.rows[reportId].body)
        self.assertIs(self.store.rows[reportId].message.envelope["parameters"]["requiretls"], True)
        # And without REQUIRETLS the same message comes back in full.
        plain = self.queue([QueuedRecipient(0, "bob@example.com")], ret="FULL")
        [plainId] = self.report(plain, [(plain.recipients[0], failed())])
        self.assertIn(b"SECRET-BODY-LINE", self.store.rows[plainId].body)
        self.assertNotIn("requiretls", self.store.rows[plainId].message.envelope["parameters"])

    def test_defaultIsHeaders(self) -> None:
        """Without RET, headers only."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")])
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        self.assertEqual(self.parsed(reportId).get_payload()[2].get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"SECRET-BODY-LINE", self.store.rows[reportId].body)

    def test_successHeadersOnly(self) -> None:
        """A success report carries headers only, even with RET=FULL (RFC 3461 §4.3)."""
        rcpt = QueuedRecipient(0, "bob@example.com", notify=("SUCCESS",))
        message = self.queue([rcpt], ret="FULL")
        [reportId] = self.report(message, [(message.recipients[0], delivered())])
        msg = self.parsed(reportId)
        self.assertEqual(msg.get_payload()[2].get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"SECRET-BODY-LINE", self.store.rows[reportId].body)
        _, perRecipient = self.status(msg)
        self.assertEqual(perRecipient["Action"], "delivered")
        self.assertEqual(perRecipient["Status"], "2.0.0")
        self.assertIn("was delivered", msg["Subject"])

    def test_noSuccessReportWhenPassedOn(self) -> None:
        """
        Delivered to a next hop that offers DSN and took NOTIFY=SUCCESS: no
        report from here (RFC 3461 §6.2.1), the next hop sends it; a failure
        of another recipient in the same call is still reported.
        """
        ok = QueuedRecipient(0, "bob@example.com", notify=("SUCCESS",))
        bad = QueuedRecipient(1, "carol@example.com", notify=("SUCCESS", "FAILURE"))
        message = self.queue([ok, bad])
        passed = delivered()
        passed.passedOn = True
        failure = AttemptResult(Result.FAILED, "5.1.1", "smtp; 550 5.1.1 no such user", "dns; mx.example.com", "no")
        [reportId] = self.report(message, [(ok, passed), (bad, failure)])
        _, perRecipient = self.status(self.parsed(reportId))
        self.assertEqual(perRecipient["Final-Recipient"], "rfc822; carol@example.com")
        self.assertEqual(self.report(message, [(ok, passed)]), [])

    def test_relayed(self) -> None:
        rcpt = QueuedRecipient(0, "bob@example.com", notify=("SUCCESS", "FAILURE"))
        message = self.queue([rcpt])
        [reportId] = self.report(message, [(message.recipients[0], delivered(Result.RELAYED))])
        msg = self.parsed(reportId)
        _, perRecipient = self.status(msg)
        self.assertEqual(perRecipient["Action"], "relayed")
        self.assertIn("passed on", msg["Subject"])
        self.assertIn("does not send delivery notices", " ".join(msg.get_payload()[0].get_content().split()))

    def test_delayReport(self) -> None:
        """A delay report: Action delayed, a 4.x.x status and Will-Retry-Until (arrival + lifetime)."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")], ret="FULL")
        [reportId] = self.report(message, [(message.recipients[0], deferred())])
        msg = self.parsed(reportId)
        self.assertIn("not been delivered yet", msg["Subject"])
        self.assertEqual(msg.get_payload()[2].get_content_type(), "text/rfc822-headers")
        _, perRecipient = self.status(msg)
        self.assertEqual(perRecipient["Action"], "delayed")
        self.assertEqual(perRecipient["Status"], "4.4.1")
        self.assertIsNone(perRecipient["Diagnostic-Code"])
        self.assertEqual(
            parsedate_to_datetime(perRecipient["Will-Retry-Until"]).timestamp(), NOW - 3600 + 5 * 86400
        )
        text = msg.get_payload()[0].get_content()
        self.assertIn("do not send the message again", text)
        self.assertIn("connection to mx.example.com[192.0.2.7]:25 refused", text)

    def test_headerSectionBounded(self) -> None:
        """A huge header section is returned cut at a line within HEADER_LIMIT, read a chunk at a time."""
        for size in (3 * HEADER_LIMIT, HEADER_LIMIT + 1000):
            self.checkHeaderLimit(size)
            self.store.bodies.clear()

    def checkHeaderLimit(self, size: int) -> None:
        header = b"X-Filler: " + b"x" * 70 + b"\r\n"
        body = header * (size // len(header)) + b"\r\nbody\r\n"
        message = self.queue([QueuedRecipient(0, "bob@example.com")], body=body)
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        headers = self.parsed(reportId).get_payload()[2].get_content()
        self.assertLessEqual(len(headers), HEADER_LIMIT)
        self.assertGreater(len(headers), HEADER_LIMIT - 2 * len(header))
        self.assertTrue(headers.endswith("x\n") or headers.endswith("x\r\n"))
        [opened] = self.store.bodies
        self.assertTrue(opened.closed)
        self.assertTrue(all(0 < n <= CHUNK for n in opened.reads))


class NotifyTests(ReporterTestsMixin, unittest.TestCase):
    def test_nullSender(self) -> None:
        """Never a report about a message from <>."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")], sender="")
        self.assertEqual(self.report(message, [(message.recipients[0], failed())]), [])
        self.assertEqual(self.store.rows.keys(), {message.id})
        self.assertEqual(self.store.bodies, [])

    def test_never(self) -> None:
        """NOTIFY=NEVER: no report of any kind."""
        rcpt = QueuedRecipient(0, "bob@example.com", notify=("NEVER",))
        message = self.queue([rcpt])
        r = message.recipients[0]
        self.assertEqual(self.report(message, [(r, failed())]), [])
        self.assertEqual(self.report(message, [(r, deferred())]), [])
        self.assertEqual(self.report(message, [(r, delivered())]), [])
        self.assertEqual(self.store.rows.keys(), {message.id})

    def test_defaultNotify(self) -> None:
        """No NOTIFY: failures and delays are reported, successes are not."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")])
        r = message.recipients[0]
        self.assertEqual(self.report(message, [(r, delivered())]), [])
        self.assertEqual(len(self.report(message, [(r, failed())])), 1)
        self.assertEqual(len(self.report(message, [(r, deferred())])), 1)

    def test_notifyListHonoured(self) -> None:
        """NOTIFY=SUCCESS alone: no failure or delay report; NOTIFY=FAILURE: no delay report."""
        success = QueuedRecipient(0, "bob@example.com", notify=("SUCCESS",))
        failure = QueuedRecipient(1, "carol@example.com", notify=("FAILURE",))
        message = self.queue([success, failure])
        s, f = message.recipients
        self.assertEqual(self.report(message, [(s, failed()), (s, deferred()), (f, deferred())]), [])

    def test_oneReportPerKind(self) -> None:
        """Failures and successes of one call: one failure report and one success report."""
        rcpts = [
            QueuedRecipient(0, "a@example.com", notify=("SUCCESS", "FAILURE")),
            QueuedRecipient(1, "b@example.com"),
            QueuedRecipient(2, "c@example.com", notify=("SUCCESS",)),
        ]
        message = self.queue(rcpts)
        a, b, c = message.recipients
        ids = self.report(message, [(a, delivered()), (b, failed()), (c, delivered())])
        self.assertEqual(len(ids), 2)
        failure, success = (self.status(self.parsed(i)) for i in ids)
        self.assertEqual([blk["Final-Recipient"] for blk in failure[1:]], ["rfc822; b@example.com"])
        self.assertEqual(
            [blk["Final-Recipient"] for blk in success[1:]], ["rfc822; a@example.com", "rfc822; c@example.com"]
        )

    def test_commitFailureAborts(self) -> None:
        """A report that cannot be queued fails, and leaves nothing behind."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")])
        self.store.commitError = QueueFullError("disk full")
        d = self.reporter.report(message, [(message.recipients[0], failed())], lambda: self.store.openBody(message.id))
        self.failureResultOf(d, QueueFullError)
        self.assertEqual(self.store.rows.keys(), {message.id})


class StreamingTests(ReporterTestsMixin, unittest.TestCase):
    def test_largeBodyStreamed(self) -> None:
        """A 5 MB message is returned whole, read CHUNK octets at a time and written in pieces."""
        line = b"0123456789" * 7 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (5 * 1024 * 1024 // len(line))
        self.assertGreater(len(body), 5 * 1000 * 1000)
        message = self.queue([QueuedRecipient(0, "bob@example.com")], body=body, ret="FULL")
        writers: list[Any] = []
        newMessage = self.store.newMessage

        def recordWriter() -> Any:
            writers.append(newMessage())
            return writers[-1]

        self.store.newMessage = recordWriter  # type: ignore[method-assign]
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        [opened] = self.store.bodies
        self.assertIsInstance(opened, ReadRecorder)
        self.assertTrue(opened.closed)
        self.assertGreater(len(opened.reads), 5 * 1024 * 1024 // CHUNK)
        self.assertTrue(all(0 < n <= CHUNK for n in opened.reads), "a read asked for more than a chunk")
        self.assertLessEqual(max(len(c) for c in writers[0].chunks), CHUNK)
        [inner] = self.parsed(reportId).get_payload()[2].get_payload()
        self.assertEqual(inner["Subject"], "big")
        self.assertIn(body, self.store.rows[reportId].body)


class InternationalTests(ReporterTestsMixin, unittest.TestCase):
    def test_smtputf8(self) -> None:
        """An SMTPUTF8 original: message/global-headers, the report queued with SMTPUTF8 and 8BITMIME."""
        body = "Subject: déjeuner\r\nFrom: josé@exemple.fr\r\n\r\nà midi\r\n".encode()
        rcpt = QueuedRecipient(0, "brigitte@exemple.fr", orcpt=("utf-8", "brigitte@exemple.fr"))
        message = self.queue([rcpt], sender="josé@exemple.fr", body=body, smtputf8=True, body_="8BITMIME")
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        msg = self.parsed(reportId)
        self.assertEqual(msg.get_payload()[2].get_content_type(), "message/global-headers")
        self.assertIn("déjeuner".encode(), self.store.rows[reportId].body)
        envelope = self.store.rows[reportId].message.envelope["parameters"]
        self.assertTrue(envelope["smtputf8"])
        self.assertEqual(envelope["body"], "8BITMIME")
        self.assertEqual(self.store.rows[reportId].message.recipients[0].address, "josé@exemple.fr")
        _, perRecipient = self.status(msg)
        self.assertEqual(perRecipient["Original-Recipient"], "utf-8; brigitte@exemple.fr")
        self.assertEqual(perRecipient["Final-Recipient"], "rfc822; brigitte@exemple.fr")

    def test_utf8Address(self) -> None:
        """A non-ASCII recipient goes in the 7-bit status part as utf-8-addr-xtext (RFC 6533 §3)."""
        message = self.queue([QueuedRecipient(0, "müller+x@exemple.de")], smtputf8=True)
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        _, perRecipient = self.status(self.parsed(reportId))
        self.assertEqual(perRecipient["Final-Recipient"], "utf-8; m\\x{FC}ller\\x{2B}x@exemple.de")
        text = self.parsed(reportId).get_payload()[0]
        self.assertEqual(text["Content-Transfer-Encoding"], "quoted-printable")
        self.assertIn("<müller+x@exemple.de>", text.get_content())

    def test_8bitmimeFull(self) -> None:
        """An 8BITMIME original returned in full: message/rfc822 marked 8bit, the report queued 8BITMIME."""
        body = "Subject: caf\u00e9\r\n\r\ncaf\u00e9 cr\u00e8me\r\n".encode("latin-1")
        message = self.queue([QueuedRecipient(0, "bob@example.com")], body=body, ret="FULL", body_="8BITMIME")
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        returned = self.parsed(reportId).get_payload()[2]
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertEqual(returned["Content-Transfer-Encoding"], "8bit")
        self.assertIn(body, self.store.rows[reportId].body)
        self.assertEqual(self.store.rows[reportId].message.envelope["parameters"]["body"], "8BITMIME")

    def test_binarymimeHeadersOnly(self) -> None:
        """A BINARYMIME original is returned as headers only, even with RET=FULL, and the text says why."""
        message = self.queue([QueuedRecipient(0, "bob@example.com")], ret="FULL", body_="BINARYMIME")
        [reportId] = self.report(message, [(message.recipients[0], failed())])
        msg = self.parsed(reportId)
        self.assertEqual(msg.get_payload()[2].get_content_type(), "text/rfc822-headers")
        self.assertIn("binary form", msg.get_payload()[0].get_content())
