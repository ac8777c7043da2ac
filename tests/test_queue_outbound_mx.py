"""
:class:`txsmtp.queue.outbound.Outbound` delivering through mail exchangers,
with the answers of a real DNS server (:mod:`tests.dnsserver`, twisted.names
on loopback) and txsmtp's own servers as the exchangers, on 127.0.0.1 and
127.0.0.2 at one port (``mxPort``), as MX hosts would listen on port 25.

- preference order, the next exchanger after a connection refused or a 4xx,
  none after a 5xx;
- null MX (5.1.10), a domain that does not exist (5.1.2), SERVFAIL (4.4.3),
  the implicit MX of a domain with only an A record;
- opportunistic TLS: used when offered, the certificate not checked; after
  a failed handshake, a new connection without STARTTLS.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.trial import unittest
from zope.interface import implementer

from tests.certs import certificates
from tests.dnsserver import SERVFAIL, startDNSServer
from tests.outbound_helpers import BODY, body, freePort, listen, queued
from txsmtp.errors import SMTPError
from txsmtp.queue.interfaces import IOutbound
from txsmtp.queue.model import AttemptResult, NextHop, Result
from txsmtp.queue.outbound import Outbound
from txsmtp.testing import MemoryDelivery
from txsmtp.tls import ServerTLS

ZONES: dict[str, Any] = {
    "example.com": {"MX": [(20, "mx2.example.com"), (10, "mx1.example.com")]},
    "mx1.example.com": {"A": ["127.0.0.2"]},
    "mx2.example.com": {"A": ["127.0.0.1"]},
    "nullmx.example": {"MX": [(0, ".")]},
    "implicit.example": {"A": ["127.0.0.1"]},
    "broken.example": SERVFAIL,
    "lost.example": {"MX": [(10, "nowhere.example")]},
}


class MXTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dns = startDNSServer(self, ZONES)
        self.port = freePort()

    def outbound(self, **kw: Any) -> Outbound:
        outbound = Outbound("relay.test.invalid", dnsServer=self.dns.address, mxPort=self.port, **kw)
        self.addCleanup(outbound.close)
        return outbound

    async def deliver(self, domain: str, recipients: list[Any] | None = None, **kw: Any) -> list[AttemptResult]:
        recipients = recipients or [f"rcpt@{domain}"]
        outbound = self.outbound(**kw)
        self.assertTrue(IOutbound.providedBy(outbound))
        message = queued(recipients)
        return await outbound.deliver(NextHop("mx", domain), message, message.recipients, body())

    async def test_preferenceOrder(self) -> None:
        """Both exchangers up: the message goes to the preferred one (mx1) only."""
        mx1 = listen(self, "127.0.0.2", self.port)
        mx2 = listen(self, "127.0.0.1", self.port)
        [result] = await self.deliver("example.com")
        self.assertEqual(result.result, Result.DELIVERED)
        self.assertEqual(result.remoteMTA, "dns; mx1.example.com")
        self.assertEqual(result.status, "2.0.0")
        self.assertTrue(result.diagnostic.startswith("smtp; 250 2.0.0 "), result.diagnostic)
        self.assertTrue(result.reason.startswith(f"delivered to mx1.example.com[127.0.0.2]:{self.port}: 250"))
        [stored] = mx1.delivery.messages
        self.assertEqual(stored.recipients, ["rcpt@example.com"])
        self.assertEqual(stored.body, BODY)
        self.assertEqual(mx2.delivery.messages, [])
        self.assertIn(("example.com", "MX"), self.dns.queries)
        self.assertIn(("mx1.example.com", "A"), self.dns.queries)

    async def test_firstExchangerDown(self) -> None:
        """Nothing listens at mx1: mx2 takes it."""
        mx2 = listen(self, "127.0.0.1", self.port)
        [result] = await self.deliver("example.com")
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mx2.example.com"))
        self.assertEqual(len(mx2.delivery.messages), 1)

    async def test_transientThenNext(self) -> None:
        """mx1 refuses the sender with 451: mx2 is tried and takes it."""
        mx1 = listen(self, "127.0.0.2", self.port)
        mx1.delivery.refusedSenders["sender@example.org"] = SMTPError(451, "4.3.0", "try later")
        mx2 = listen(self, "127.0.0.1", self.port)
        [result] = await self.deliver("example.com")
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mx2.example.com"))
        self.assertEqual(len(mx2.delivery.messages), 1)

    async def test_everyExchangerTransient(self) -> None:
        """Both say 451: deferred, with the last one's reply."""
        for address in ("127.0.0.2", "127.0.0.1"):
            mx = listen(self, address, self.port)
            mx.delivery.refusedSenders["sender@example.org"] = SMTPError(451, "4.3.0", f"busy {address}")
        [result] = await self.deliver("example.com")
        self.assertEqual(result.result, Result.DEFERRED)
        self.assertEqual(result.status, "4.3.0")
        self.assertEqual(result.diagnostic, "smtp; 451 4.3.0 busy 127.0.0.1")
        self.assertEqual(result.reason, f"mx2.example.com[127.0.0.1]:{self.port} said: 451 4.3.0 busy 127.0.0.1")

    async def test_refusedSessionThenNext(self) -> None:
        """
        mx1 greets with 554 (it takes no mail now): that says nothing about
        the recipients, so mx2 is tried and takes it (RFC 5321 §3.1).
        """

        class Refusing(MemoryDelivery):
            def openSession(self, connection: Any) -> Any:
                raise SMTPError(554, "5.3.2", "not accepting mail")

        mx1 = listen(self, "127.0.0.2", self.port, delivery=Refusing())
        mx2 = listen(self, "127.0.0.1", self.port)
        [result] = await self.deliver("example.com")
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mx2.example.com"))
        self.assertEqual(len(mx2.delivery.messages), 1)
        self.assertEqual(mx1.delivery.messages, [])

    async def test_everyExchangerRefusesSession(self) -> None:
        """Every exchanger greets with 554: the message waits, it does not bounce."""

        class Refusing(MemoryDelivery):
            def openSession(self, connection: Any) -> Any:
                raise SMTPError(554, "5.3.2", "not accepting mail")

        for address in ("127.0.0.2", "127.0.0.1"):
            listen(self, address, self.port, delivery=Refusing())
        [result] = await self.deliver("example.com")
        # (No enhanced code is read from a greeting: ENHANCEDSTATUSCODES is
        # only known after EHLO, RFC 2034.)
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.0.0"))
        self.assertTrue(result.diagnostic.startswith("smtp; 554 "), result.diagnostic)
        self.assertIn("refused the session", result.reason)

    async def test_permanentStops(self) -> None:
        """
        mx1 refuses one recipient with 550 and takes the other: that one
        fails, the other is delivered, and mx2 is never asked.
        """
        mx1 = listen(self, "127.0.0.2", self.port)
        mx1.delivery.refusedRecipients["nobody@example.com"] = SMTPError(550, "5.1.1", "no such user")
        mx2 = listen(self, "127.0.0.1", self.port)
        results = await self.deliver("example.com", ["nobody@example.com", "rcpt@example.com"])
        self.assertEqual([r.result for r in results], [Result.FAILED, Result.DELIVERED])
        self.assertEqual(results[0].status, "5.1.1")
        self.assertEqual(results[0].diagnostic, "smtp; 550 5.1.1 no such user")
        self.assertEqual(results[0].remoteMTA, "dns; mx1.example.com")
        self.assertEqual(mx2.connections, [])

    async def test_everyRecipientRefusedPermanently(self) -> None:
        """Every recipient 550 at mx1: failed, mx2 not asked."""
        mx1 = listen(self, "127.0.0.2", self.port)
        mx1.delivery.refusedRecipients["rcpt@example.com"] = SMTPError(550, None, "go away")
        mx2 = listen(self, "127.0.0.1", self.port)
        [result] = await self.deliver("example.com")
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.0.0"))
        self.assertEqual(mx2.connections, [])

    async def test_nullMX(self) -> None:
        """RFC 7505: a null MX fails every recipient with 5.1.10, no connection tried."""
        results = await self.deliver("nullmx.example", ["a@nullmx.example", "b@nullmx.example"])
        for result in results:
            self.assertEqual((result.result, result.status), (Result.FAILED, "5.1.10"))
            self.assertIn("null MX", result.reason)
            self.assertIsNone(result.diagnostic)

    async def test_noSuchDomain(self) -> None:
        """NXDOMAIN: failed, 5.1.2."""
        [result] = await self.deliver("nx.example")
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.1.2"))
        self.assertIn("does not exist", result.reason)

    async def test_servfail(self) -> None:
        """SERVFAIL: deferred, 4.4.3, the reason in words."""
        [result] = await self.deliver("broken.example")
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.4.3"))
        self.assertIn("SERVFAIL", result.reason)
        self.assertNotIn("<Message", result.reason)

    async def test_exchangerWithoutAddress(self) -> None:
        """The only exchanger's name does not exist: deferred, 4.4.3."""
        [result] = await self.deliver("lost.example")
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.4.3"))
        self.assertIn("nowhere.example", result.reason)

    async def test_implicitMX(self) -> None:
        """No MX, an A record: the domain itself is the exchanger (RFC 5321 §5.1)."""
        server = listen(self, "127.0.0.1", self.port)
        [result] = await self.deliver("implicit.example")
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; implicit.example"))
        self.assertEqual(server.delivery.messages[0].recipients, ["rcpt@implicit.example"])

    async def test_addressLiteral(self) -> None:
        """An address literal needs no DNS."""
        server = listen(self, "127.0.0.1", self.port)
        [result] = await self.deliver("[127.0.0.1]", ["rcpt@[127.0.0.1]"])
        self.assertEqual(result.result, Result.DELIVERED)
        self.assertEqual(len(server.delivery.messages), 1)
        self.assertEqual(self.dns.queries, [])

    async def test_opportunisticTLS(self) -> None:
        """
        STARTTLS offered with an expired certificate: TLS is used all the
        same (RFC 7435: the certificate is not checked).
        """
        c = certificates()
        server = listen(self, "127.0.0.1", self.port, tls=ServerTLS(c.expiredChain, c.expiredKey))
        [result] = await self.deliver("implicit.example")
        self.assertEqual(result.result, Result.DELIVERED)
        [stored] = server.delivery.messages
        self.assertIsNotNone(stored.envelope.connection.tls)

    async def test_failedHandshakeReconnects(self) -> None:
        """
        STARTTLS offered, but the handshake fails (the server has no
        certificate): the client says nothing more on that connection and
        delivers on a new one without STARTTLS.
        """
        server = listen(self, "127.0.0.1", self.port, tls=NoCertificateTLS())
        [result] = await self.deliver("implicit.example")
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        [stored] = server.delivery.messages
        self.assertIsNone(stored.envelope.connection.tls)
        self.assertEqual(len(server.connections), 2)
        # The first connection started TLS; the second did not.
        first, second = server.delivery.sessions
        self.assertIsNotNone(first.tls)
        self.assertIs(stored.envelope.connection, second)


@implementer(IOpenSSLContextFactory)
class NoCertificateTLS:
    """A server TLS configuration whose handshakes fail: a context without certificate."""

    def getContext(self) -> SSL.Context:
        return SSL.Context(SSL.TLS_METHOD)
