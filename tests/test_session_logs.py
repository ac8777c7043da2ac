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
