"""
Tests for :mod:`txsmtp.mailauth.dnsquery`, against the test DNS server
(:mod:`tests.dnsserver`) over real UDP.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns
from twisted.trial import unittest

from tests.dnsserver import SERVFAIL, startDNSServer
from txsmtp.mailauth.dnsquery import DNSTemporaryError, query, txtStrings

ZONES = {
    "example.org": {"TXT": ["v=spf1 -all", ("two ", "strings"), "x" * 300], "A": ["192.0.2.1"]},
    "broken.example": SERVFAIL,
}


class QueryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = startDNSServer(self, ZONES)
        self.resolver = self.dns.resolver()

    def ask(self, name: str, rrType: int) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(query(self.resolver, name, rrType, timeout=(2,)))

    @defer.inlineCallbacks
    def test_txt(self) -> object:
        """TXT records come back one per record, their strings joined without spaces."""
        answer = yield self.ask("example.org", dns.TXT)
        self.assertFalse(answer.nxdomain)
        self.assertEqual(
            sorted(txtStrings(r) for r in answer.records),
            sorted([b"v=spf1 -all", b"two strings", b"x" * 300]),
        )

    @defer.inlineCallbacks
    def test_otherTypesLeftOut(self) -> object:
        """Only the records of the type asked are returned."""
        answer = yield self.ask("example.org", dns.A)
        self.assertEqual([r.dottedQuad() for r in answer.records], ["192.0.2.1"])

    @defer.inlineCallbacks
    def test_nodata(self) -> object:
        """A name without records of the type: no records, and the name exists."""
        answer = yield self.ask("example.org", dns.MX)
        self.assertEqual((answer.records, answer.nxdomain), ([], False))

    @defer.inlineCallbacks
    def test_nxdomain(self) -> object:
        """A name that does not exist is told apart from one without records."""
        answer = yield self.ask("nowhere.example.org", dns.TXT)
        self.assertEqual((answer.records, answer.nxdomain), ([], True))

    @defer.inlineCallbacks
    def test_servfail(self) -> object:
        """SERVFAIL raises DNSTemporaryError, with a sentence that says so."""
        with self.assertRaises(DNSTemporaryError) as caught:
            yield self.ask("broken.example", dns.TXT)
        self.assertIn("SERVFAIL", str(caught.exception))
