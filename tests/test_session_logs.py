"""
What a session logs: the line of each transaction (txsmtp/session/logs.py).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent
from twisted.trial import unittest

from tests.test_testing import _RefusingDelivery
from tests.twistd_helpers import LogEvents
from txsmtp.errors import SMTPError
from txsmtp.lmtp import LMTPFactory
from txsmtp.testing import MemoryDelivery, ServerHarness

BODY = b"Subject: x\r\n\r\nhi\r\n"


class TransactionLineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events = LogEvents(self)

    def transactions(self) -> list[dict[str, Any]]:
        return [e for e in self.events.events if "queueId" in e and "result" in e]

    def test_acceptedNamesRecipients(self) -> None:
        """The recipients by address (no count alone), the size; a list field for observers."""
        h = ServerHarness()
        replies = h.sendMessage(b"a@example.com", [b"b@example.org", b"c@example.net"], BODY)
        self.assertEqual(replies[-1].code, 250)
        [event] = self.transactions()
        text = formatEvent(event)
        self.assertIn(" from=<a@example.com> to=<b@example.org>,<c@example.net> size=", text)
        self.assertNotIn("rcpts=", text)
        self.assertEqual(event["recipients"], ["b@example.org", "c@example.net"])
        self.assertEqual(event["rcpts"], 2)
        self.assertNotIn("recipientResults", event)
        self.assertIsInstance(event["size"], int)

    def test_lmtpPartialNamesWhichAndWhy(self) -> None:
        """LMTP, stored for one of two: which one, and the other's reply."""
        delivery = MemoryDelivery()
        delivery.results = lambda message: [
            SMTPError(452, "4.2.2", "Mailbox full") if r == "b@example.org" else None for r in message.recipients
        ]
        h = ServerHarness(factory=LMTPFactory(delivery, "lmtp.test"))
        h.command(b"LHLO client.example")
        replies = h.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        self.assertEqual([r.code for r in replies], [250, 250, 250, 354])
        self.assertEqual([r.code for r in h.send(BODY + b".\r\n")], [250, 452])
        [event] = self.transactions()
        text = formatEvent(event)
        self.assertIn("accepted for 1 of 2 ", text)
        self.assertIn(" to=<c@example.net> ok, <b@example.org> [452 4.2.2 Mailbox full] size=", text)
        self.assertEqual(event["recipientResults"], [None, "452 4.2.2 Mailbox full"])
        self.assertEqual(event["recipients"], ["c@example.net", "b@example.org"])

    def test_refusedAtDataHasNoSize(self) -> None:
        """A message refused when opened: no size=None in the line."""
        h = ServerHarness(_RefusingDelivery())
        replies = h.sendMessage(b"a@example.com", [b"b@example.org"], BODY)
        self.assertEqual(replies[-1].code, 452)
        [event] = self.transactions()
        text = formatEvent(event)
        self.assertTrue(text.startswith("refused "), text)
        self.assertNotIn("size=", text)
        self.assertIn(" to=<b@example.org> ", text)
        self.assertIn("reason=[452 4.3.1 no room]", text)

    def test_abortedHasNoSize(self) -> None:
        """A client that leaves during DATA: the line names the recipient, with no size=None."""
        h = ServerHarness()
        h.command(b"EHLO client.example")
        h.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n")
        h.disconnect()
        [event] = self.transactions()
        text = formatEvent(event)
        self.assertNotIn("None", text)
        self.assertIn(" to=<b@example.org> ", text)


class RefusalLineTests(unittest.TestCase):
    """The first refusals of a connection are logged one by one, the rest counted."""

    def setUp(self) -> None:
        self.events = LogEvents(self)

    def lines(self) -> list[str]:
        # (Not the connection's line, which counts them too.)
        return [formatEvent(e) for e in self.events.events if "refused" in formatEvent(e) and "end" not in e]

    def refuse(self, h: ServerHarness, n: int) -> None:
        for i in range(n):
            self.assertEqual(h.command(b"XYZZY%d" % i).code, 500)

    def test_firstFiveThenSummary(self) -> None:
        h = ServerHarness(maxErrors=100)
        h.command(b"EHLO client.example")
        self.refuse(h, 8)
        lines = self.lines()
        self.assertEqual(len(lines), 5)
        self.assertTrue(all(line.startswith("refused command from 192.0.2.7: 500") for line in lines), lines)
        h.disconnect()
        [summary] = self.lines()[5:]
        self.assertEqual(summary, "3 more refused commands from 192.0.2.7 not logged (8 in all on this connection)")
        [event] = [e for e in self.events.events if "refusalsNotLogged" in e]
        self.assertEqual((event["refusalsNotLogged"], event["refusals"]), (3, 8))

    def test_noSummaryWithinTheLimit(self) -> None:
        h = ServerHarness(maxErrors=100)
        h.command(b"EHLO client.example")
        self.refuse(h, 5)
        h.disconnect()
        self.assertEqual(len(self.lines()), 5)
        self.assertEqual([e for e in self.events.events if "refusalsNotLogged" in e], [])

    def test_perConnection(self) -> None:
        """Each connection has its own allowance; every kind of refusal counts."""
        delivery = MemoryDelivery()
        delivery.refusedRecipients["no@example.org"] = SMTPError(550, "5.1.1", "no such user")
        first = ServerHarness(delivery, maxErrors=100)
        first.command(b"EHLO client.example")
        self.refuse(first, 6)
        second = ServerHarness(delivery, maxErrors=100)
        second.command(b"EHLO client.example")
        second.command(b"MAIL FROM:<a@example.com>")
        for _ in range(3):
            self.assertEqual(second.command(b"RCPT TO:<no@example.org>").code, 550)
        self.assertEqual(second.command(b"RSET").code, 250)
        self.refuse(second, 3)
        lines = self.lines()
        self.assertEqual(len(lines), 10)
        self.assertEqual(sum("refused RCPT" in line for line in lines), 3)
        second.disconnect()
        first.disconnect()
        summaries = [line for line in self.lines() if "not logged" in line]
        self.assertEqual(
            summaries,
            [
                "1 more refused command from 192.0.2.7 not logged (6 in all on this connection)",
                "1 more refused command from 192.0.2.7 not logged (6 in all on this connection)",
            ],
        )

    def test_serverCloses(self) -> None:
        """When the server closes the connection (too many errors) the summary still comes."""
        h = ServerHarness(maxErrors=7)
        h.command(b"EHLO client.example")
        replies = h.send(b"".join(b"XYZZY\r\n" for _ in range(7)))
        self.assertEqual(replies[-1].code, 421)
        self.assertTrue(h.closed)
        h.disconnect()
        [summary] = [line for line in self.lines() if "not logged" in line]
        self.assertTrue(summary.startswith("2 more refused commands"), summary)


class StoredLocationTests(unittest.TestCase):
    """The transaction line names where the delivery stored the message (issue 12, item 7)."""

    def test_maildirPathLogged(self) -> None:
        import os

        from twisted.logger import globalLogPublisher

        from txsmtp.maildir import MaildirDelivery
        from txsmtp.testing import ServerHarness

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path = os.path.abspath(self.mktemp())
        h = ServerHarness(MaildirDelivery(path, threads=0))
        h.command(b"EHLO c.example")
        replies = h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual(replies[-1].code, 250)
        [stored] = [os.path.join(path, "new", n) for n in os.listdir(os.path.join(path, "new"))]
        [event] = [e for e in events if e.get("result") == "accepted"]
        self.assertEqual(event["stored"], [stored])
        self.assertIn(f" stored={stored} ", event["text"] + " ")

    def test_noLocationNoField(self) -> None:
        """A receiver that says nothing of where it stored: no stored= at all."""
        from twisted.logger import globalLogPublisher

        from txsmtp.testing import ServerHarness

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = ServerHarness()
        h.command(b"EHLO c.example")
        h.sendMessage(b"a@example.com", [b"b@example.com"], b"hi\r\n")
        [event] = [e for e in events if e.get("result") == "accepted"]
        self.assertNotIn("stored", event)
        self.assertNotIn("stored=", event["text"])
