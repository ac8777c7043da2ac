"""The LMTP server (RFC 2033), driven by hand."""

from __future__ import annotations

import os

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from txsmtp.delivery import VirtualMaildirDelivery
from txsmtp.errors import SMTPError
from txsmtp.lmtp import LMTPFactory, LMTPServer
from txsmtp.testing import MemoryDelivery, ServerHarness

LHLO = b"LHLO client.example\r\n"


def harness(delivery=None, **kwargs) -> ServerHarness:
    factory = LMTPFactory(delivery if delivery is not None else MemoryDelivery(), "lmtp.test", **kwargs)
    h = ServerHarness(factory=factory)
    return h


def errorsLogged(testCase: unittest.TestCase) -> list[tuple[str, str]]:
    """
    Record, until the test ends, the (namespace, text) of each error-level
    event txsmtp logs.  These are messages, not Failures: trial's own check
    (flushLoggedErrors) never sees them, so a test names the ones it expects.
    """
    seen: list[tuple[str, str]] = []

    def observer(event: dict) -> None:
        if event.get("log_level") is LogLevel.error and event.get("log_namespace", "").startswith("txsmtp"):
            seen.append((event["log_namespace"], formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return seen


class LMTPTests(unittest.TestCase):
    def test_greetingAndLHLO(self) -> None:
        h = harness()
        self.assertIn("LMTP", h.greeting.text)
        [r] = h.send(LHLO)
        self.assertEqual(r.code, 250)
        # RFC 2033 §5: PIPELINING and ENHANCEDSTATUSCODES are required.
        self.assertIn("PIPELINING", r.lines)
        self.assertIn("ENHANCEDSTATUSCODES", r.lines)
        self.assertIsInstance(h.protocol, LMTPServer)

    def test_ehloAndHeloRefused(self) -> None:
        h = harness()
        for line in (b"EHLO x\r\n", b"HELO x\r\n"):
            [r] = h.send(line)
            self.assertEqual((r.code, r.enhanced), (500, "5.5.1"))
            self.assertIn("LHLO", r.text)
        [r] = h.send(b"MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(r.code, 503)

    def test_oneReplyPerRecipient(self) -> None:
        """After the dot, one reply per accepted recipient, in RCPT order (§4.2)."""
        d = MemoryDelivery()
        d.refusedRecipients["gone@example.com"] = SMTPError(550, "5.1.1", "No such user")
        d.results = lambda m: [None, SMTPError(452, "4.2.2", "Mailbox full"), None]
        h = harness(d)
        h.send(LHLO)
        replies = h.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<gone@example.com>\r\n"
            b"RCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\nhello\r\n.\r\n"
        )
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies],
            [(250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"), (250, "2.1.5"), (354, None),
             (250, "2.0.0"), (452, "4.2.2"), (250, "2.0.0")],
        )  # fmt: skip
        self.assertIn("<b@example.com>", replies[6].text)
        self.assertIn("<d@example.com>", replies[8].text)

    def test_bdatLast(self) -> None:
        """BDAT LAST is answered per recipient too; earlier chunks once."""
        d = MemoryDelivery()
        d.results = lambda m: [None, SMTPError(550, "5.2.1", "Mailbox disabled")]
        h = harness(d)
        h.send(LHLO)
        replies = h.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
            b"BDAT 3\r\nab\rBDAT 1 LAST\r\n\n"
        )
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250, 250, 550])
        self.assertTrue(d.messages[0].data.endswith(b"\r\nab\r\n"))

    def test_refusedAsAWhole(self) -> None:
        """A message refused as a whole still gets one reply per recipient."""
        h = harness(maxMessageSize=10)
        h.send(LHLO)
        replies = h.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
            b"DATA\r\n" + b"x" * 20 + b"\r\n.\r\nNOOP\r\n"
        )
        self.assertEqual([(r.code, r.enhanced) for r in replies][4:], [(552, "5.3.4"), (552, "5.3.4"), (250, "2.0.0")])

    def test_finishFails(self) -> None:
        d = MemoryDelivery()

        def fail(message):
            raise SMTPError(451, "4.3.0", "Disk full")

        d.results = fail
        h = harness(d)
        h.send(LHLO)
        replies = h.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertEqual([r.code for r in replies][3:], [354, 451, 451])

    def test_wrongNumberOfResults(self) -> None:
        """A delivery that returns the wrong count: 451 for everyone (never a false 250)."""
        d = MemoryDelivery()
        d.results = lambda m: [None]
        h = harness(d)
        errors = errorsLogged(self)
        h.send(LHLO)
        replies = h.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertEqual([r.code for r in replies][3:], [354, 451, 451])
        # The delivery bug is logged once, as an error message (no Failure is logged),
        # by the session (which serves SMTP and LMTP alike).
        [(namespace, text)] = errors
        self.assertEqual(namespace, "txsmtp.server")
        self.assertIn("delivery returned 1 results for 2 recipients", text)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_noRecipients(self) -> None:
        """§4.2: DATA without an accepted recipient is 503."""
        h = harness()
        h.send(LHLO)
        replies = h.send(b"MAIL FROM:<a@example.com>\r\nDATA\r\n")
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(250, "2.1.0"), (503, "5.5.1")])
        replies = h.send(b"BDAT 2 LAST\r\nabNOOP\r\n")
        self.assertEqual([r.code for r in replies], [503, 250])

    def test_receivedWithLMTP(self) -> None:
        h = harness()
        h.send(LHLO)
        h.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        [m] = h.delivery.messages
        self.assertIn(b" with LMTP id ", m.data.split(b"\r\n\r\n")[0] + m.data[:200])
        self.assertEqual(m.envelope.connection.protocol, "LMTP")


class VirtualLMTPTests(unittest.TestCase):
    """virtual:DIR under LMTP stores into each mailbox and reports each."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        for box in ("example.com/alice", "example.com/bob", "example.com/carol"):
            os.makedirs(os.path.join(self.root, box))

    def breakMailbox(self, box: str) -> str:
        """Make a mailbox unable to take the message it is receiving: "new" becomes a file."""
        path = os.path.join(self.root, "example.com", box)
        os.rmdir(os.path.join(path, "new"))
        with open(os.path.join(path, "new"), "w") as f:
            f.write("not a directory")
        return path

    def newFiles(self, box: str) -> list[bytes]:
        new = os.path.join(self.root, "example.com", box, "new")
        if not os.path.isdir(new):
            return []
        out = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out

    def test_mixedMailboxes(self) -> None:
        h = harness(VirtualMaildirDelivery(self.root, threads=0))
        errors = errorsLogged(self)
        h.send(LHLO)
        replies = h.send(
            b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<nobody@example.com>\r\n"
            b"RCPT TO:<carol@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: hi\r\n\r\n..body\r\n"
        )
        carol = self.breakMailbox("carol")
        replies += h.send(b".\r\n")
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies],
            [(250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"), (250, "2.1.5"), (354, None),
             (250, "2.0.0"), (451, "4.3.0"), (250, "2.0.0")],
        )  # fmt: skip
        self.assertIn("alice@example.com", replies[6].text)
        self.assertIn("bob@example.com", replies[8].text)
        [alice] = self.newFiles("alice")
        [bob] = self.newFiles("bob")
        self.assertIn(b"Delivered-To: alice@example.com\r\n", alice)
        self.assertNotIn(b"bob@example.com", alice.split(b"Received:")[0])
        self.assertTrue(alice.endswith(b"Subject: hi\r\n\r\n.body\r\n"))
        self.assertTrue(bob.endswith(b"Subject: hi\r\n\r\n.body\r\n"))
        # Nothing left behind in carol's tmp.
        self.assertEqual(os.listdir(os.path.join(carol, "tmp")), [])
        # carol's storage error is logged once, as a message naming the cause.
        [(namespace, text)] = errors
        self.assertEqual(namespace, "txsmtp.delivery")
        self.assertIn("Maildir commit failed", text)
        self.assertIn("Not a directory", text)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_smtpIsAllOrNothing(self) -> None:
        """Over SMTP the same failure refuses the message for everyone (one reply)."""
        from txsmtp.server import SMTPFactory

        h = ServerHarness(factory=SMTPFactory(VirtualMaildirDelivery(self.root, threads=0), "smtp.test"))
        errors = errorsLogged(self)
        h.send(b"EHLO c\r\n")
        replies = h.send(
            b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<carol@example.com>\r\n"
            b"DATA\r\nx\r\n"
        )
        self.breakMailbox("carol")
        replies += h.send(b".\r\n")
        self.assertEqual([r.code for r in replies][3:], [354, 451])
        self.assertEqual(self.newFiles("alice"), [])
        [(namespace, text)] = errors
        self.assertEqual(namespace, "txsmtp.delivery")
        self.assertIn("Maildir commit failed", text)
        self.assertEqual(self.flushLoggedErrors(), [])
