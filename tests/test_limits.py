"""
:mod:`txsmtp.limits`: the counting (token buckets, connection counts,
memory bounds) on a :class:`twisted.internet.task.Clock`, the guard and
the AUTH limiter through the server (:class:`txsmtp.testing.ServerHarness`),
and the twistd options.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from txsmtp.envelope import ConnectionInfo, TLSInfo
from txsmtp.errors import SMTPError
from txsmtp.guards import GuardedDelivery
from txsmtp.limits import (
    AuthLimiter,
    ConnectionCounter,
    LimitsGuard,
    Rate,
    TokenBucket,
    addressKey,
    formatDuration,
    parseDuration,
    parseRate,
)
from txsmtp.tap import Options
from txsmtp.tapoperations import buildOperations
from txsmtp.testing import MemoryDelivery, ServerHarness


def conn(host: str = "192.0.2.7", user: str | None = None) -> ConnectionInfo:
    peer: Any
    if ":" in host:
        peer = IPv6Address("TCP", host, 25)
    elif host.startswith("/"):
        peer = UNIXAddress(host)
    else:
        peer = IPv4Address("TCP", host, 40000)
    c = ConnectionInfo(peer=peer)
    c.authenticated = user
    return c


def connectFrom(factory: Any, host: str) -> ServerHarness:
    """A new harness connection to ``factory`` from ``host``."""
    h = ServerHarness(factory=factory, connect=False)
    h.transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 25), peerAddress=IPv4Address("TCP", host, 40000)
    )
    h.protocol = factory.buildProtocol(h.transport.getPeer())
    h.connect()
    return h


class ParsingTests(unittest.TestCase):
    def test_durations(self) -> None:
        self.assertEqual(
            [parseDuration(t) for t in ("90", "30s", "10m", "1h", "2d", "m", "1.5m")],
            [90, 30, 600, 3600, 172800, 60, 90],
        )
        for bad in ("", "x", "10y", "-1", "0"):
            self.assertRaises(ValueError, parseDuration, bad)

    def test_rates(self) -> None:
        self.assertEqual(parseRate("10/1m"), Rate(10, 60))
        self.assertEqual(parseRate("100/h"), Rate(100, 3600))
        self.assertIsNone(parseRate("off"))
        for bad in ("10", "x/1m", "0/1m", "10/", "10/1y"):
            with self.assertRaises(ValueError) as e:
                parseRate(bad)
            self.assertRegex(str(e.exception), "is not a rate|is not a duration|at least 1")
        self.assertEqual(str(Rate(10, 60)), "10 per minute")
        self.assertEqual(str(Rate(5, 90)), "5 per 90 seconds")

    def test_formatDuration(self) -> None:
        self.assertEqual(
            [formatDuration(s) for s in (0.2, 1, 59.5, 120, 899.5, 3600, 3 * 3600 - 1, 86400 * 2)],
            ["1 second", "1 second", "60 seconds", "2 minutes", "15 minutes", "1 hour", "3 hours", "2 days"],
        )

    def test_addressKey(self) -> None:
        """IPv6 clients count per /64 (or the prefix given); mapped IPv4 is IPv4; no IP, no key."""
        self.assertEqual(addressKey(conn("192.0.2.7")), "192.0.2.7")
        self.assertEqual(addressKey(conn("2001:db8:1:2:aa::1")), "2001:db8:1:2::/64")
        self.assertEqual(addressKey(conn("2001:db8:1:2:aa::1"), 128), "2001:db8:1:2:aa::1")
        self.assertEqual(addressKey(conn("2001:db8:1:2:aa::1"), 48), "2001:db8:1::/48")
        self.assertEqual(addressKey(conn("::ffff:192.0.2.9")), "192.0.2.9")
        self.assertIsNone(addressKey(conn("/run/smtp.sock")))


class TokenBucketTests(unittest.TestCase):
    def test_rate(self) -> None:
        """N at once, then one more each period/N seconds; a refusal takes nothing."""
        clock = Clock()
        bucket = TokenBucket(Rate(3, 60), clock)
        self.assertEqual([bucket.take("a") for _ in range(3)], [None, None, None])
        self.assertAlmostEqual(bucket.take("a") or 0, 20.0)
        clock.advance(10)
        self.assertAlmostEqual(bucket.take("a") or 0, 10.0)
        clock.advance(10)
        self.assertIsNone(bucket.take("a"))
        self.assertIsNotNone(bucket.take("a"))
        # Another key has its own bucket.
        self.assertIsNone(bucket.take("b"))

    def test_expiry(self) -> None:
        """A bucket that refilled is forgotten: the table holds only recent keys."""
        clock = Clock()
        bucket = TokenBucket(Rate(2, 10), clock)
        for i in range(100):
            bucket.take(f"k{i}")
        self.assertEqual(len(bucket), 100)
        clock.advance(5.01)
        bucket.take("new")
        self.assertEqual(len(bucket), 1)

    def test_cap(self) -> None:
        """Beyond maxTracked keys the least recently used is forgotten (which only forgives)."""
        clock = Clock()
        bucket = TokenBucket(Rate(1, 3600), clock, maxTracked=10)
        for i in range(1000):
            self.assertIsNone(bucket.take(f"k{i}"))
        self.assertEqual(len(bucket), 10)
        self.assertIsNotNone(bucket.take("k999"))
        self.assertIsNone(bucket.take("k0"))

    def test_connectionCounter(self) -> None:
        counter = ConnectionCounter()
        self.assertEqual([counter.opened("a"), counter.opened("a"), counter.opened("b")], [1, 2, 1])
        counter.closed("a")
        counter.closed("a")
        counter.closed("a")
        self.assertEqual((counter.count("a"), counter.count("b"), len(counter)), (0, 1, 1))


class GuardUnitTests(unittest.TestCase):
    def test_maxConnections(self) -> None:
        guard = LimitsGuard(Clock(), maxConnections=2)
        a, b, c = conn(), conn(), conn()
        guard.checkConnection(a)
        guard.checkConnection(b)
        with self.assertRaises(SMTPError) as e:
            guard.checkConnection(c)
        self.assertEqual((e.exception.code, e.exception.enhanced), (421, "4.7.0"))
        self.assertIn("--max-connections-per-ip", e.exception.text)
        # The refused one was never counted: closing it frees nothing.
        guard.connectionClosed(c)
        self.assertRaises(SMTPError, guard.checkConnection, conn())
        guard.connectionClosed(a)
        guard.checkConnection(conn())
        # Another address, loopback, a UNIX socket: not limited by 192.0.2.7's count.
        guard.checkConnection(conn("192.0.2.8"))
        for _ in range(5):
            guard.checkConnection(conn("127.0.0.1"))
            guard.checkConnection(conn("/run/smtp.sock"))

    def test_exemptNetworks(self) -> None:
        guard = LimitsGuard(Clock(), maxConnections=1, exempt=[ipaddress.ip_network("198.51.100.0/24")])
        for _ in range(3):
            guard.checkConnection(conn("198.51.100.4"))
        # Loopback is limited when not in the exempt list.
        guard.checkConnection(conn("127.0.0.1"))
        self.assertRaises(SMTPError, guard.checkConnection, conn("127.0.0.1"))

    def test_ipv6Grouped(self) -> None:
        guard = LimitsGuard(Clock(), maxConnections=1)
        guard.checkConnection(conn("2001:db8::1"))
        with self.assertRaises(SMTPError) as e:
            guard.checkConnection(conn("2001:db8::2"))
        self.assertIn("2001:db8::/64", e.exception.text)
        guard.checkConnection(conn("2001:db8:0:1::2"))

    def test_connectionRate(self) -> None:
        clock = Clock()
        guard = LimitsGuard(clock, connectionRate=Rate(2, 60))
        guard.checkConnection(conn())
        guard.checkConnection(conn())
        with self.assertRaises(SMTPError) as e:
            guard.checkConnection(conn())
        self.assertEqual(e.exception.code, 421)
        self.assertIn("limit 2 per minute, --connection-rate); try again in 30 seconds", e.exception.text)
        clock.advance(30)
        guard.checkConnection(conn())

    def test_messageAndRecipientRates(self) -> None:
        clock = Clock()
        guard = LimitsGuard(clock, messageRate=Rate(1, 60), recipientRate=Rate(2, 60), userMessageRate=Rate(1, 3600))
        c = conn()
        guard.checkSender(c, None, None)  # type: ignore[arg-type]
        with self.assertRaises(SMTPError) as e:
            guard.checkSender(c, None, None)  # type: ignore[arg-type]
        self.assertEqual((e.exception.code, e.exception.enhanced), (451, "4.7.1"))
        self.assertIn("--message-rate", e.exception.text)
        guard.checkRecipient(c, None, None)  # type: ignore[arg-type]
        guard.checkRecipient(c, None, None)  # type: ignore[arg-type]
        with self.assertRaises(SMTPError) as e:
            guard.checkRecipient(c, None, None)  # type: ignore[arg-type]
        self.assertEqual((e.exception.code, e.exception.enhanced), (450, "4.7.1"))
        self.assertIn("--recipient-rate", e.exception.text)
        # An authenticated user counts as the user, from any address.
        guard.checkSender(conn(user="alice"), None, None)  # type: ignore[arg-type]
        with self.assertRaises(SMTPError) as e:
            guard.checkSender(conn("198.51.100.1", user="alice"), None, None)  # type: ignore[arg-type]
        self.assertIn("user alice", e.exception.text)
        self.assertIn("try again in 1 hour", e.exception.text)
        guard.checkSender(conn(user="bob"), None, None)  # type: ignore[arg-type]
        guard.checkRecipient(conn(user="alice"), None, None)  # type: ignore[arg-type]


class AuthLimiterUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)  # type: ignore[arg-type]

    def lockouts(self) -> list[str]:
        return [e["text"] for e in self.events if e.get("log_namespace") == "txsmtp.limits"]

    def test_delaysThenLockout(self) -> None:
        """Delays double per recent failure (capped); the N-th locks out, logged once; it ends."""
        clock = Clock()
        limiter = AuthLimiter(clock, Rate(5, 600), 900, baseDelay=1, maxDelay=4)
        c = conn()
        self.assertIsNone(limiter.refusal(c))
        self.assertEqual([limiter.failed(c) for _ in range(4)], [1, 2, 4, 4])
        self.assertIsNone(limiter.refusal(c))
        limiter.failed(c)
        refusal = limiter.refusal(c)
        assert refusal is not None
        self.assertEqual((refusal.code, refusal.enhanced), (421, "4.7.0"))
        self.assertIn("try again in 15 minutes", refusal.text)
        limiter.failed(c)
        self.assertEqual(len(self.lockouts()), 1)
        self.assertIn("AUTH locked out for 192.0.2.7 for 15 minutes", self.lockouts()[0])
        # Others are not locked; success elsewhere does not unlock.
        self.assertIsNone(limiter.refusal(conn("192.0.2.8")))
        limiter.succeeded(conn("192.0.2.8"))
        limiter.succeeded(c)
        self.assertIsNotNone(limiter.refusal(c))
        clock.advance(899)
        self.assertIsNotNone(limiter.refusal(c))
        clock.advance(1)
        self.assertIsNone(limiter.refusal(c))

    def test_decay(self) -> None:
        """Failures spread out over the period never lock out."""
        clock = Clock()
        limiter = AuthLimiter(clock, Rate(3, 60), 900)
        c = conn()
        for _ in range(50):
            limiter.failed(c)
            clock.advance(30)
            self.assertIsNone(limiter.refusal(c))

    def test_exempt(self) -> None:
        limiter = AuthLimiter(Clock(), Rate(1, 60), 900)
        for _ in range(5):
            self.assertEqual(limiter.failed(conn("127.0.0.1")), 0)
        self.assertIsNone(limiter.refusal(conn("127.0.0.1")))


class HarnessTests(unittest.TestCase):
    """The guard through the server."""

    def connect(self, factory: Any, host: str) -> ServerHarness:
        return connectFrom(factory, host)

    def test_connectionCapAtGreeting(self) -> None:
        """The third connection from one address gets 421 and is closed; after one closes, a new one is let in."""
        clock = Clock()
        guard = LimitsGuard(clock, maxConnections=2)
        first = ServerHarness(GuardedDelivery(MemoryDelivery(), [guard]), clock=clock)
        factory = first.factory
        second = self.connect(factory, "192.0.2.7")
        third = self.connect(factory, "192.0.2.7")
        assert first.greeting and second.greeting and third.greeting
        self.assertEqual([first.greeting.code, second.greeting.code, third.greeting.code], [220, 220, 421])
        # No enhanced code in a greeting: the client has not said EHLO (RFC 2034 §3).
        self.assertIn("Too many connections from 192.0.2.7", third.greeting.text)
        self.assertTrue(third.closed)
        third.disconnect()
        other = self.connect(factory, "192.0.2.99")
        assert other.greeting is not None
        self.assertEqual(other.greeting.code, 220)
        first.command(b"QUIT")
        first.disconnect()
        again = self.connect(factory, "192.0.2.7")
        assert again.greeting is not None
        self.assertEqual(again.greeting.code, 220)

    def test_ratesAtMailAndRcpt(self) -> None:
        clock = Clock()
        guard = LimitsGuard(clock, messageRate=Rate(2, 3600), recipientRate=Rate(3, 3600))
        h = ServerHarness(GuardedDelivery(MemoryDelivery(), [guard]), clock=clock)
        replies = h.sendMessage(b"s@example.org", [b"a@example.com", b"b@example.com"], b"Subject: 1\r\n\r\nx\r\n")
        self.assertEqual(replies[-1].code, 250, replies)
        replies = h.sendMessage(b"s@example.org", [b"c@example.com", b"d@example.com"], b"Subject: 2\r\n\r\nx\r\n")
        self.assertEqual([r.code for r in replies[2:4]], [250, 450], replies)
        self.assertIn("--recipient-rate", replies[3].text)
        self.assertEqual(replies[-1].code, 250)
        reply = h.command(b"MAIL FROM:<s@example.org>")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.1"))
        self.assertIn("Too many messages from 192.0.2.7 (limit 2 per hour, --message-rate)", reply.text)


class OptionsTests(unittest.TestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """On by default: the cap of 20 connections per address and the AUTH limiter; the rates are off."""
        built = buildOperations(self.parse())
        [guard] = built.guards
        self.assertIsInstance(guard, LimitsGuard)
        self.assertEqual(guard.maxConnections, 20)
        self.assertEqual([guard.connections, guard.messages, guard.recipients, guard.userMessages], [None] * 4)
        self.assertEqual(built.authLimiter.failures.rate, Rate(10, 900))
        self.assertEqual(built.authLimiter.lockout, 900)
        self.assertTrue(guard.exempt(conn("127.0.0.1")))
        self.assertFalse(guard.exempt(conn("192.0.2.1")))

    def test_allOff(self) -> None:
        built = buildOperations(self.parse("--max-connections-per-ip", "off", "--auth-failures", "off"))
        self.assertEqual((built.guards, built.authLimiter), ([], None))
        self.assertEqual(built.summary, ["limits off"])

    def test_relayNetworksExempt(self) -> None:
        options = self.parse("--relay-networks", "198.51.100.0/24", "--queue", self.mktemp(), "--message-rate", "10/1m")
        built = buildOperations(options)
        self.assertTrue(built.guards[0].exempt(conn("198.51.100.7")))
        self.assertTrue(built.authLimiter.exempt(conn("198.51.100.7")))
        options = self.parse("--relay-networks", "198.51.100.0/24", "--queue", self.mktemp(), "--limits-exempt", "none")
        built = buildOperations(options)
        self.assertFalse(built.guards[0].exempt(conn("198.51.100.7")))
        self.assertFalse(built.guards[0].exempt(conn("127.0.0.1")))

    def test_errors(self) -> None:
        from twisted.python.usage import UsageError

        for args, words in [
            (("--max-connections-per-ip", "many"), "--max-connections-per-ip 'many': write a number"),
            (("--message-rate", "10"), "--message-rate: '10' is not a rate"),
            (("--auth-lockout", "soon"), "--auth-lockout: 'soon' is not a duration"),
            (("--limits-exempt", "10.0.0.1/8"), "--limits-exempt: '10.0.0.1/8' has host bits set"),
            (("--limits-ipv6-prefix", "200"), "--limits-ipv6-prefix '200'"),
        ]:
            with self.assertRaises(UsageError) as e:
                self.parse(*args)
            self.assertIn(words, str(e.exception))


class AuthLimiterHarnessTests(unittest.TestCase):
    """The AUTH limiter through the server: failures on several connections of one address add up."""

    def test_acrossConnections(self) -> None:
        from tests.test_auth_fallback import plain
        from tests.test_tls_auth import PASSWORD, USER, authHarness

        first = authHarness()
        factory = first.factory
        factory.authLimiter = AuthLimiter(first.clock, Rate(3, 600), 900, baseDelay=1, maxDelay=8)

        def another(host: str = "192.0.2.7") -> ServerHarness:
            h = connectFrom(factory, host)

            h.protocol.connection.tls = TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256")
            self.assertEqual(h.command(b"EHLO client.example").code, 250)
            return h

        second, third = another(), another()
        # Each connection's own first failure (its own delay: 0 here), the
        # address's 1st, 2nd, 3rd: answered after 1, 2, 4 seconds.
        for h, delay in ((first, 1), (second, 2), (third, 4)):
            self.assertEqual(h.send(plain(USER, "wrong")), [])
            first.clock.advance(delay - 0.01)
            self.assertEqual(h.replies(), [])
            first.clock.advance(0.01)
            self.assertEqual([r.code for r in h.replies()], [535])
        # Locked out: AUTH on any connection of the address is 421 and closes, right password or not.
        for h, password in ((first, "wrong"), (second, PASSWORD)):
            [reply] = h.send(plain(USER, password))
            self.assertEqual((reply.code, reply.enhanced), (421, "4.7.0"))
            self.assertIn("Too many authentication failures from 192.0.2.7", reply.text)
            self.assertTrue(h.closed)
        # Another address is not.
        other = another("198.51.100.7")
        self.assertEqual([r.code for r in other.send(plain(USER, PASSWORD))], [235])


class AuthenticatedSessionTests(unittest.TestCase):
    def test_authDoesNotCountTwice(self) -> None:
        """
        After AUTH the realm opens the user's session on the same
        connection: still one connection, and none left once it closes.
        """
        from tests.test_auth_fallback import plain
        from tests.test_tls_auth import PASSWORD, USER, authHarness

        clock = Clock()
        guard = LimitsGuard(clock, maxConnections=1, userMessageRate=Rate(1, 3600))
        h = authHarness(GuardedDelivery(MemoryDelivery(), [guard]), clock=clock)
        self.assertEqual([r.code for r in h.send(plain(USER, PASSWORD))], [235])
        self.assertEqual(guard.open.count("192.0.2.7"), 1)
        self.assertEqual(h.command(b"MAIL FROM:<alice@example.org>").code, 250)
        self.assertEqual(h.command(b"RSET").code, 250)
        reply = h.command(b"MAIL FROM:<alice@example.org>")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.1"))
        self.assertIn(f"user {USER}", reply.text)
        h.command(b"QUIT")
        h.disconnect()
        self.assertEqual((guard.open.count("192.0.2.7"), len(guard.open)), (0, 0))
