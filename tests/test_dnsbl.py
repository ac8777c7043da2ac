"""
Tests for :mod:`txsmtp.dnsbl`: the list syntax, the query names, and the
guard asking a real authoritative DNS server (tests/dnsserver.py) over
UDP on loopback.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.names import client
from twisted.trial import unittest

from tests.dnsserver import SERVFAIL, startDNSServer
from txsmtp.dnsbl import (
    MAX_TTL,
    AnswerCache,
    DNSList,
    DNSListGuard,
    parseDNSList,
    queryName,
    sanitizeReason,
)
from txsmtp.envelope import ConnectionInfo
from txsmtp.errors import SMTPError

_REACTOR: Any = reactor

CLIENT = "192.0.2.1"
REVERSED = "1.2.0.192"

ZONES: dict[str, Any] = {
    # bl.example lists the client with code 127.0.0.2 and says why.
    f"{REVERSED}.bl.example": {"A": ["127.0.0.2"], "TXT": ["Listed: see https://bl.example/q?192.0.2.1"]},
    # codes.example answers 127.0.0.10 (e.g. "dynamic address" on a composite list).
    f"{REVERSED}.codes.example": {"A": ["127.0.0.10"], "TXT": ["dynamic\r\nrange"]},
    # wl.example vouches for the client.
    f"{REVERSED}.wl.example": {"A": ["127.0.10.3"]},
    # broken.example fails every query.
    f"{REVERSED}.broken.example": SERVFAIL,
    # an error code as some lists answer through public resolvers
    f"{REVERSED}.errors.example": {"A": ["127.255.255.254"]},
    # clean.example: nothing (NXDOMAIN for the client).
    "clean.example": {"A": ["192.0.2.53"]},
}


def connection(host: str = CLIENT) -> ConnectionInfo:
    peer = IPv6Address("TCP", host, 2525) if ":" in host else IPv4Address("TCP", host, 2525)
    return ConnectionInfo(peer=peer, sessionId="t1")


class SyntaxTests(unittest.TestCase):
    def test_zoneOnly(self) -> None:
        dl = parseDNSList("bl.example")
        self.assertEqual((dl.zone, dl.filter, dl.weight), ("bl.example", None, 1))

    def test_filterAndWeight(self) -> None:
        dl = parseDNSList("BL.example.=127.0.0.[2..11]*3")
        self.assertEqual((dl.zone, dl.weight), ("bl.example", 3))
        self.assertTrue(dl.matches(ipaddress.IPv4Address("127.0.0.2")))
        self.assertTrue(dl.matches(ipaddress.IPv4Address("127.0.0.11")))
        self.assertFalse(dl.matches(ipaddress.IPv4Address("127.0.0.12")))
        self.assertFalse(dl.matches(ipaddress.IPv4Address("127.0.1.2")))

    def test_filterLists(self) -> None:
        """``[a;b..c]`` in any octet, as postscreen writes it."""
        dl = parseDNSList("wl.example=127.0.[0..255].[1;3]", allowlist=True)
        self.assertEqual(dl.weight, -1)
        self.assertTrue(dl.matches(ipaddress.IPv4Address("127.0.10.3")))
        self.assertFalse(dl.matches(ipaddress.IPv4Address("127.0.10.2")))

    def test_allowlistWeight(self) -> None:
        self.assertEqual(parseDNSList("wl.example*5", allowlist=True).weight, -5)
        self.assertEqual(parseDNSList("bl.example*-2").weight, -2)

    def test_defaultFilter(self) -> None:
        """Without a filter: 127.0.0.0/8, but not the 127.255.255.x error codes."""
        dl = parseDNSList("bl.example")
        self.assertTrue(dl.matches(ipaddress.IPv4Address("127.0.0.2")))
        self.assertTrue(dl.matches(ipaddress.IPv4Address("127.1.0.4")))
        self.assertFalse(dl.matches(ipaddress.IPv4Address("127.255.255.254")))
        self.assertFalse(dl.matches(ipaddress.IPv4Address("192.0.2.1")))

    def test_errors(self) -> None:
        for text, words in [
            ("", "is not a DNS zone"),
            ("localhost", "is not a DNS zone"),
            ("bl example", "is not a DNS zone"),
            ("bl.example=127.0.0", "four octets"),
            ("bl.example=127.0.0.[2..300]", "0..255"),
            ("bl.example=127.0.0.[11..2]", "0..255"),
            ("bl.example=127.0.0.x", "is not an octet"),
            ("bl.example*two", "whole number"),
            ("bl.example*0", "no effect"),
        ]:
            with self.assertRaises(ValueError, msg=text) as e:
                parseDNSList(text)
            self.assertIn(words, str(e.exception))
            self.assertIn("--dnsbl", str(e.exception))
        with self.assertRaises(ValueError) as e:
            parseDNSList("wl.example*-3", allowlist=True)
        self.assertIn("--dnswl", str(e.exception))


class QueryNameTests(unittest.TestCase):
    def test_ipv4(self) -> None:
        """RFC 5782 §2.1: the octets reversed."""
        self.assertEqual(queryName(ipaddress.ip_address("192.0.2.99"), "bl.example"), "99.2.0.192.bl.example")

    def test_ipv6(self) -> None:
        """RFC 5782 §2.4: the 32 nibbles reversed, zeros written out (its example)."""
        self.assertEqual(
            queryName(ipaddress.ip_address("2001:db8:1:2:3:4:567:89ab"), "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com",
        )


class SanitizeTests(unittest.TestCase):
    def test_controlsAndLength(self) -> None:
        self.assertEqual(sanitizeReason(b"a\r\n550 b\x00\xffc"), "a 550 b c")
        long = sanitizeReason("x" * 500)
        self.assertEqual(len(long), 200)
        self.assertTrue(long.endswith("..."))


class CacheTests(unittest.TestCase):
    def test_expiryAndBound(self) -> None:
        clock = task.Clock()
        cache = AnswerCache(clock, size=2)
        cache.put(("a", 1), "A", 10)
        cache.put(("b", 1), "B", 10 * MAX_TTL)
        self.assertEqual(cache.get(("a", 1)), "A")
        cache.put(("c", 1), "C", 10)  # b is the least recently used
        self.assertIsNone(cache.get(("b", 1)))
        self.assertEqual(len(cache), 2)
        clock.advance(10)
        self.assertIsNone(cache.get(("a", 1)))
        cache.put(("d", 1), "D", 10 * MAX_TTL)
        clock.advance(MAX_TTL)
        self.assertIsNone(cache.get(("d", 1)), "TTLs are capped")


class _Silent(protocol.DatagramProtocol):
    """A DNS server that never answers."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pass


class GuardTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dns = startDNSServer(self, dict(ZONES))
        self.clock = task.Clock()

    def guard(self, *texts: str, threshold: int = 1, **kwargs: Any) -> DNSListGuard:
        lists = [parseDNSList(t[3:], allowlist=True) if t.startswith("wl:") else parseDNSList(t) for t in texts]
        return DNSListGuard(lists, self.dns.resolver(), self.clock, threshold=threshold, **kwargs)

    async def refusal(self, guard: DNSListGuard, host: str = CLIENT) -> SMTPError | None:
        try:
            await guard.checkConnection(connection(host))
        except SMTPError as e:
            return e
        return None

    async def test_listed(self) -> None:
        """A listed client is refused 554 5.7.1, naming the list and its TXT reason."""
        e = await self.refusal(self.guard("bl.example"))
        assert e is not None
        self.assertEqual((e.code, e.enhanced), (554, "5.7.1"))
        self.assertEqual(
            e.text,
            "Service unavailable; client [192.0.2.1] blocked using bl.example: "
            "Listed: see https://bl.example/q?192.0.2.1",
        )
        self.assertIn(("1.2.0.192.bl.example", "TXT"), self.dns.queries)

    async def test_reasonSanitized(self) -> None:
        """The CR LF of a TXT record does not reach the reply."""
        e = await self.refusal(self.guard("codes.example"))
        assert e is not None
        self.assertTrue(e.text.endswith("blocked using codes.example: dynamic range"), e.text)

    async def test_notListed(self) -> None:
        self.assertIsNone(await self.refusal(self.guard("bl.example", "clean.example"), host="192.0.2.77"))
        self.assertIsNone(await self.refusal(self.guard("clean.example")))
        self.assertEqual([t for _, t in self.dns.queries], ["A", "A", "A"], "no TXT for a client not refused")

    async def test_nonMatchingAnswer(self) -> None:
        """An answer outside the filter does not count; nor does an error code under the default filter."""
        self.assertIsNone(await self.refusal(self.guard("codes.example=127.0.0.[2..4]")))
        self.assertIsNone(await self.refusal(self.guard("errors.example")))
        self.assertIsNotNone(await self.refusal(self.guard("codes.example=127.0.0.[2..4;10]")))

    async def test_weightsAndThreshold(self) -> None:
        """The weights of the lists listing the client add up to the threshold."""
        self.assertIsNone(await self.refusal(self.guard("bl.example", "codes.example", "clean.example", threshold=3)))
        e = await self.refusal(self.guard("bl.example", "codes.example*2", "clean.example*5", threshold=3))
        assert e is not None
        self.assertIn("blocked using codes.example:", e.text, "the heaviest list is named")
        verdict = await self.guard("bl.example", "codes.example*2", "clean.example*5").verdict(
            ipaddress.ip_address(CLIENT)
        )
        self.assertEqual(verdict.score, 3)
        self.assertEqual([dl.zone for dl in verdict.listedBy], ["bl.example", "codes.example"])

    async def test_allowlist(self) -> None:
        """A --dnswl listing takes its weight away from the score."""
        self.assertIsNone(await self.refusal(self.guard("bl.example*2", "wl:wl.example*2", threshold=1)))
        self.assertIsNotNone(await self.refusal(self.guard("bl.example*2", "wl:wl.example", threshold=1)))
        self.assertIsNone(
            await self.refusal(self.guard("bl.example*2", "wl:wl.example=127.0.[0..255].[2;3]*5")),
        )

    async def test_parallel(self) -> None:
        """Every list is asked before any answer arrives: the queries go out together."""
        queries: list[str] = []
        inner = self.dns.resolver()
        waiting: list[defer.Deferred[Any]] = []

        class Holding:
            def query(self, q: Any, timeout: Any) -> defer.Deferred[Any]:
                queries.append(q.name.name.decode())
                d = inner.query(q, timeout)
                gate: defer.Deferred[Any] = defer.Deferred()
                waiting.append(gate)
                gate.addCallback(lambda _: d)
                return gate

        guard = DNSListGuard(
            [parseDNSList("bl.example"), parseDNSList("clean.example")], Holding(), self.clock
        )
        checking = defer.Deferred.fromCoroutine(guard.verdict(ipaddress.ip_address(CLIENT)))
        self.assertEqual(queries, ["1.2.0.192.bl.example", "1.2.0.192.clean.example"])
        for gate in waiting:
            gate.callback(None)
        verdict = await checking
        self.assertEqual(verdict.score, 1)

    async def test_servfailFailsOpen(self) -> None:
        """A list answering SERVFAIL counts as not listing; the others still count; it is logged."""
        logged: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.assertIsNone(await self.refusal(self.guard("broken.example")))
        verdict = await self.guard("broken.example", "bl.example").verdict(ipaddress.ip_address(CLIENT))
        self.assertEqual((verdict.score, [dl.zone for dl in verdict.failed]), (1, ["broken.example"]))
        warnings = [e for e in logged if e.get("log_namespace") == "txsmtp.dnsbl"]
        self.assertTrue(any("SERVFAIL" in e["error"] and e["name"] == "1.2.0.192.broken.example" for e in warnings))

    async def test_timeoutFailsOpen(self) -> None:
        """A server that never answers: the guard lets the client in after the timeout."""
        port = _REACTOR.listenUDP(0, _Silent(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)], reactor=_REACTOR)
        guard = DNSListGuard([parseDNSList("bl.example")], resolver, self.clock, timeout=0.3)
        started = _REACTOR.seconds()
        self.assertIsNone(await self.refusal(guard))
        self.assertLess(_REACTOR.seconds() - started, 5)

    async def test_cache(self) -> None:
        """A reconnecting client costs no query, listed or not, until the TTL (60 s here) ends."""
        guard = self.guard("bl.example", "clean.example")
        self.assertIsNotNone(await self.refusal(guard))
        self.assertEqual(len(self.dns.queries), 3)  # two A, one TXT
        self.assertIsNotNone(await self.refusal(guard))
        self.assertEqual(len(self.dns.queries), 3)
        self.clock.advance(59)
        self.assertIsNotNone(await self.refusal(guard))
        self.assertEqual(len(self.dns.queries), 3)
        self.clock.advance(1)
        self.assertIsNotNone(await self.refusal(guard))
        # bl.example's answers expired (TTL 60); clean.example's NXDOMAIN is kept longer.
        self.assertEqual(
            self.dns.queries[3:], [("1.2.0.192.bl.example", "A"), ("1.2.0.192.bl.example", "TXT")]
        )

    async def test_failureNotCached(self) -> None:
        guard = self.guard("broken.example")
        await self.refusal(guard)
        await self.refusal(guard)
        self.assertEqual(len(self.dns.queries), 2)

    async def test_exempt(self) -> None:
        """Exempt networks and non-IP clients are not looked up."""
        guard = self.guard("bl.example", exempt=[ipaddress.ip_network("192.0.2.0/24")])
        self.assertIsNone(await self.refusal(guard))
        await guard.checkConnection(ConnectionInfo(peer=UNIXAddress(b"/tmp/s")))
        self.assertEqual(self.dns.queries, [])

    async def test_ipv6Client(self) -> None:
        """An IPv6 client is asked by nibbles; an IPv4-mapped one by its IPv4 address."""
        v6 = "2001:db8::1"
        name = queryName(ipaddress.ip_address(v6), "bl.example")
        self.dns.zones[name] = {"A": ["127.0.0.2"]}
        e = await self.refusal(self.guard("bl.example"), host=v6)
        assert e is not None
        self.assertEqual(e.text, "Service unavailable; client [2001:db8::1] blocked using bl.example")
        self.assertIsNotNone(await self.refusal(self.guard("bl.example"), host="::ffff:192.0.2.1"))
        self.assertEqual(self.dns.queries[0], (name, "A"))
        self.assertIn(("1.2.0.192.bl.example", "A"), self.dns.queries)

    def test_repr(self) -> None:
        self.assertIn("bl.example*2", repr(self.guard("bl.example*2", threshold=2)))
        self.assertIsInstance(DNSList("x.example"), DNSList)


class OptionsTests(unittest.TestCase):
    """``twistd smtp``'s --dnsbl options."""

    def parse(self, *args: str) -> Any:
        from txsmtp.tap import Options

        options = Options()
        options.parseOptions(list(args))
        return options

    def test_built(self) -> None:
        from txsmtp.tapoperations import buildOperations

        options = self.parse(
            "--dnsbl", "bl.example=127.0.0.[2..11]*2", "--dnswl", "wl.example*3", "--dnsbl-threshold", "2",
            "--relay-networks", "192.0.2.0/24",
        )  # fmt: skip
        built = buildOperations(options)
        [guard] = [g for g in built.guards if isinstance(g, DNSListGuard)]
        self.assertIsInstance(guard, DNSListGuard)
        self.assertEqual([(dl.zone, dl.weight) for dl in guard.lists], [("bl.example", 2), ("wl.example", -3)])
        self.assertEqual(guard.threshold, 2)
        self.assertTrue(guard.isExempt(ipaddress.ip_address("127.0.0.1")))
        self.assertTrue(guard.isExempt(ipaddress.ip_address("::1")))
        self.assertTrue(guard.isExempt(ipaddress.ip_address("192.0.2.9")))
        self.assertFalse(guard.isExempt(ipaddress.ip_address("198.51.100.1")))
        self.assertIn("dnsbl 1 list + 1 dnswl (threshold 2)", built.summary)

    def test_noneByDefault(self) -> None:
        from txsmtp.tapoperations import buildOperations

        self.assertEqual([g for g in buildOperations(self.parse()).guards if isinstance(g, DNSListGuard)], [])

    def test_errors(self) -> None:
        from twisted.python.usage import UsageError

        for args, words in [
            (["--dnswl", "wl.example"], "give at least one --dnsbl"),
            (["--dnsbl", "bl.example", "--dnsbl-threshold", "0"], "--dnsbl-threshold must be 1 or more"),
            (["--dnsbl", "bl.example", "--dnsbl-timeout", "0"], "--dnsbl-timeout"),
            (["--dnsbl", "bl.example", "--dnsbl-exempt", "10.0.0.1/8"], "--dnsbl-exempt"),
            (["--dnsbl", "bl.example", "--dnswl", "BL.example."], "given twice"),
            (["--dnsbl", "bl.example=127.0.0.[2..]"], "is not an octet"),
        ]:
            with self.assertRaises(UsageError, msg=args) as e:
                self.parse(*args)
            self.assertIn(words, str(e.exception))


class SharedQueryTests(unittest.TestCase):
    timeout = 30

    async def test_concurrentClientsShareQueries(self) -> None:
        """Clients from one address connecting at once cost one query per list."""
        dns = startDNSServer(self, dict(ZONES))
        guard = DNSListGuard([parseDNSList("bl.example"), parseDNSList("clean.example")], dns.resolver(), task.Clock())
        checks = [defer.Deferred.fromCoroutine(guard.checkConnection(connection())) for _ in range(5)]
        results = await defer.DeferredList(checks, consumeErrors=True)
        self.assertTrue(all(not ok and f.check(SMTPError) for ok, f in results))
        self.assertEqual(
            sorted(dns.queries),
            [("1.2.0.192.bl.example", "A"), ("1.2.0.192.bl.example", "TXT"), ("1.2.0.192.clean.example", "A")],
        )
        self.assertEqual(guard._pending, {})
