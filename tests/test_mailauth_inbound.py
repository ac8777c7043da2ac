"""
:class:`txsmtp.mailauth.inbound.CheckingFilter` alone, between a session
and a recording receiver, its DNS answered by the test's authoritative
server: the header section cut anywhere, forged fields, and the bound on
the header section.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from tests.dnsserver import startDNSServer
from txsmtp.envelope import ConnectionInfo, Envelope
from txsmtp.errors import SMTPError
from txsmtp.mailauth.filters import HEADER_LIMIT
from txsmtp.mailauth.inbound import CheckingFilter, InboundChecks
from txsmtp.wire.address import parsePath

ZONES = {"lax.example": {"TXT": ["v=spf1 ip4:192.0.2.7 -all"]}, "_dmarc.lax.example": {"TXT": ["v=DMARC1; p=none"]}}


class Recording:
    """A receiver that keeps what it is given."""

    def __init__(self) -> None:
        self.data = b""
        self.finished = False
        self.aborted: str | None = None

    def write(self, chunk: bytes) -> None:
        self.data += chunk

    def finish(self) -> None:
        self.finished = True

    def abort(self, reason: str) -> None:
        self.aborted = reason


class CheckingFilterTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dns = startDNSServer(self, ZONES)
        self.checks = InboundChecks(self.dns.resolver(), "mx.local.test", reactor)

    def envelope(self) -> Envelope:
        connection = ConnectionInfo(IPv4Address("TCP", "192.0.2.7", 25))
        connection.heloName = "client.lax.example"
        return Envelope(parsePath(b"<a@lax.example>"), connection=connection, queueId="Q1")

    async def feed(self, message: bytes, step: int) -> tuple[Recording, Envelope, Any]:
        inner, envelope = Recording(), self.envelope()
        f = CheckingFilter(inner, envelope, self.checks)
        for i in range(0, len(message), step):
            f.write(message[i : i + step])
        try:
            await f.finish()
        except SMTPError as e:
            return inner, envelope, e
        return inner, envelope, None

    async def test_forgedRemovedAnyCut(self) -> None:
        """Whatever the chunks, the forged field goes, the rest passes as it was, and the results are set."""
        message = (
            b"Received: from x by y\r\n"
            b"Authentication-Results: (comment) MX.Local.Test;\r\n\tdkim=pass header.d=bank.example\r\n"
            b"Authentication-Results: other.example; spf=pass\r\n"
            b"From: <a@lax.example>\r\nSubject: hi\r\n\r\nbody\r\n.line\r\n"
        )
        expected = message.replace(
            b"Authentication-Results: (comment) MX.Local.Test;\r\n\tdkim=pass header.d=bank.example\r\n", b""
        )
        for step in (1, 7, 64, len(message)):
            inner, envelope, error = await self.feed(message, step)
            self.assertIsNone(error)
            self.assertEqual(inner.data, expected, step)
            self.assertTrue(inner.finished)
            assert envelope.authentication is not None
            results = {r.method: r.result for r in envelope.authentication.results}
            self.assertEqual(results, {"spf": "pass", "dkim": "none", "dmarc": "pass"})
            [added] = envelope.addedHeaders
            self.assertTrue(added.startswith(b"Authentication-Results: mx.local.test;"), added)

    async def test_headerSectionTooLong(self) -> None:
        """A header section past the bound: passed on, then refused 552 5.3.4 and the inner receiver aborted."""
        message = b"From: <a@lax.example>\r\n" + b"X-Filler: " + b"a" * 70 + b"\r\n"
        message *= 2 * HEADER_LIMIT // len(message)
        message += b"\r\nbody\r\n"
        inner, envelope, error = await self.feed(message, 8192)
        assert error is not None
        self.assertEqual((error.code, error.enhanced), (552, "5.3.4"))
        self.assertIsNotNone(inner.aborted)
        self.assertFalse(inner.finished)
        self.assertEqual(envelope.addedHeaders, [])
