"""
Tests for the helpers of :mod:`txsmtp.testing` themselves.
"""

from __future__ import annotations

from twisted.trial import unittest

from txsmtp.envelope import Envelope
from txsmtp.errors import SMTPError
from txsmtp.testing import MemoryDelivery, ServerHarness, _MemorySession


class _RefusingSession(_MemorySession):
    def openMessage(self, envelope: Envelope) -> object:
        raise SMTPError(452, "4.3.1", "no room")


class _RefusingDelivery(MemoryDelivery):
    sessionFactory = _RefusingSession


class SendMessageTests(unittest.TestCase):
    def test_accepted(self) -> None:
        h = ServerHarness()
        replies = h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual([r.code for r in replies], [250, 250, 250, 354, 250])
        self.assertEqual(len(h.delivery.messages), 1)

    def test_stopsWhenOpenMessageRefuses(self) -> None:
        """
        When the delivery refuses the message at DATA, the body is not sent:
        the replies end with the refusal, with no 500 per body line.
        """
        h = ServerHarness(_RefusingDelivery())
        replies = h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: x\r\n\r\nline one\r\nline two\r\n")
        self.assertEqual([r.code for r in replies], [250, 250, 250, 452])
        self.assertEqual(h.replies(), [])
        # The session is still usable: the next command is answered normally.
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_stopsWhenNoRecipient(self) -> None:
        """With every recipient refused, DATA is refused and no body follows."""
        delivery = MemoryDelivery()
        delivery.refusedRecipients["b@example.com"] = SMTPError(550, "5.1.1", "no such user")
        h = ServerHarness(delivery)
        replies = h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual([r.code for r in replies][:3], [250, 250, 550])
        self.assertEqual(len(replies), 4)
        self.assertTrue(500 <= replies[-1].code < 600 and replies[-1].code != 500, replies)
        self.assertEqual(h.replies(), [])
        self.assertEqual(h.command(b"NOOP").code, 250)
