"""
:class:`txsmtp.guards.GuardedDelivery` in front of a memory delivery,
driven through the server (:class:`txsmtp.testing.ServerHarness`): each
stage's guard, the order, refusals as replies, 421 at the greeting
closing the connection, and the bookkeeping calls.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from txsmtp.errors import SMTPError
from txsmtp.guards import GuardedDelivery
from txsmtp.testing import MemoryDelivery, ServerHarness


class Recorder:
    """A guard that records its calls and refuses what it is told to."""

    def __init__(self, name: str, calls: list[str], refuse: dict[str, SMTPError] | None = None) -> None:
        self.name, self.calls, self.refuse = name, calls, refuse or {}

    def _check(self, stage: str) -> None:
        self.calls.append(f"{self.name}.{stage}")
        if stage in self.refuse:
            raise self.refuse[stage]

    def checkConnection(self, connection: Any) -> defer.Deferred[None]:
        self._check("connection")
        return defer.succeed(None)

    async def checkSender(self, connection: Any, sender: Any, parameters: Any) -> None:
        self._check("sender")

    def checkRecipient(self, connection: Any, recipient: Any, envelope: Any) -> None:
        self._check("recipient")

    def checkData(self, connection: Any, envelope: Any) -> None:
        self._check("data")

    def checkMessage(self, connection: Any, envelope: Any) -> None:
        self._check("message")

    def messageAccepted(self, connection: Any, envelope: Any) -> None:
        self.calls.append(f"{self.name}.accepted")

    def connectionClosed(self, connection: Any) -> None:
        self.calls.append(f"{self.name}.closed")


class GuardTests(unittest.TestCase):
    def harness(self, *guards: Any) -> tuple[ServerHarness, MemoryDelivery]:
        inner = MemoryDelivery()
        return ServerHarness(GuardedDelivery(inner, guards)), inner

    def test_everyStageInOrder(self) -> None:
        """Each stage asks every guard in order, then the delivery; the message is stored."""
        calls: list[str] = []
        h, inner = self.harness(Recorder("a", calls), Recorder("b", calls))
        assert h.greeting is not None
        self.assertEqual(h.greeting.code, 220)
        replies = h.sendMessage(b"s@example.org", [b"r@example.com"], b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual([r.code for r in replies][-1], 250, replies)
        self.assertEqual(len(inner.messages), 1)
        h.disconnect()
        self.assertEqual(
            calls,
            [
                "a.connection", "b.connection", "a.sender", "b.sender", "a.recipient", "b.recipient",
                "a.data", "b.data", "a.message", "b.message", "a.accepted", "b.accepted", "a.closed", "b.closed",
            ],
        )  # fmt: skip

    def test_refusalAtRCPT(self) -> None:
        """The first refusal is the reply; later guards and the delivery are not asked."""
        calls: list[str] = []
        refuse = {"recipient": SMTPError(450, "4.7.1", "Too many recipients from your address; try later")}
        h, inner = self.harness(Recorder("a", calls, refuse), Recorder("b", calls))
        h.command(b"EHLO client.example")
        h.command(b"MAIL FROM:<s@example.org>")
        reply = h.command(b"RCPT TO:<r@example.com>")
        self.assertEqual((reply.code, reply.enhanced), (450, "4.7.1"))
        self.assertNotIn("b.recipient", calls)

    def test_refusalAtEndOfData(self) -> None:
        """A refusal after the final dot is the reply, and nothing is stored."""
        calls: list[str] = []
        refuse = {"message": SMTPError(554, "5.7.1", "No")}
        h, inner = self.harness(Recorder("a", calls, refuse))
        replies = h.sendMessage(b"s@example.org", [b"r@example.com"], b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (554, "5.7.1"))
        self.assertEqual(inner.messages, [])
        self.assertNotIn("a.accepted", calls)

    def test_421ClosesAtGreeting(self) -> None:
        """421 as the greeting closes the connection (RFC 5321 §3.8); the guards hear it closed."""
        calls: list[str] = []
        refuse = {"connection": SMTPError(421, "4.7.0", "Too many connections from your address")}
        h, _ = self.harness(Recorder("a", calls, refuse))
        assert h.greeting is not None
        self.assertEqual(h.greeting.code, 421)
        self.assertIn("Too many connections", h.greeting.text)
        self.assertTrue(h.closed)
        self.assertEqual(calls, ["a.connection", "a.closed"])

    def test_554AtGreeting(self) -> None:
        """554 as the greeting: the connection stays for QUIT, every other command gets 503."""
        calls: list[str] = []
        refuse = {"connection": SMTPError(554, "5.7.1", "Listed at zen.example")}
        h, _ = self.harness(Recorder("a", calls, refuse))
        assert h.greeting is not None
        self.assertEqual(h.greeting.code, 554)
        self.assertFalse(h.closed)
        self.assertEqual(h.command(b"EHLO client.example").code, 503)
