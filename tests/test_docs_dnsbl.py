"""
docs/operations/dnsbl.rst says what ``--dnsbl`` does, and its examples
work as printed: every ``twistd ... smtp ...`` command line is parsed by
``twistd smtp``'s option parser and builds the lists it describes, and
the refusal printed is the one the guard gives for a listed client asked
over real DNS.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from tests.dnsserver import startDNSServer
from tests.test_docs_relay import commandLines, readPage
from txsmtp.dnsbl import DNSListGuard
from txsmtp.envelope import ConnectionInfo
from txsmtp.errors import SMTPError
from txsmtp.tap import Options
from txsmtp.tapoperations import buildOperations


class DNSBLPageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.page = readPage(os.path.join("operations", "dnsbl.rst"))
        self.spool = os.path.abspath(self.mktemp())

    def guards(self) -> list[DNSListGuard]:
        guards = []
        for words in commandLines(self.page):
            options = Options()
            options.parseOptions([w.replace("/var/spool/txsmtp", self.spool) for w in words])
            self.assertEqual(options["relaySetup"].dnsServer, ("127.0.0.1", 53))
            [guard] = [g for g in buildOperations(options).guards if isinstance(g, DNSListGuard)]
            guards.append(guard)
        return guards

    def test_commandLines(self) -> None:
        """Both examples parse; the second is the weighted setup the page describes."""
        one, weighted = self.guards()
        self.assertEqual([(dl.zone, dl.weight) for dl in one.lists], [("zen.spamhaus.org", 1)])
        self.assertEqual(
            [(dl.zone, dl.weight) for dl in weighted.lists],
            [("zen.spamhaus.org", 3), ("bl.spamcop.net", 2), ("b.barracudacentral.org", 2), ("list.dnswl.org", -4)],
        )
        self.assertEqual(weighted.threshold, 3)

    async def test_weightedSetupAndReply(self) -> None:
        """
        Asked over real DNS: the first list alone refuses, one of the two
        others alone does not, two of them do, an allowlist entry outweighs
        any one blocklist; the reply is the one printed.
        """
        dns = startDNSServer(self, {})
        [_, weighted] = self.guards()
        guard = DNSListGuard(weighted.lists, dns.resolver(), task.Clock(), threshold=weighted.threshold)

        async def refused(listedBy: dict[str, str]) -> SMTPError | None:
            dns.zones.clear()
            guard.cache = type(guard.cache)(task.Clock())
            for zone, answer in listedBy.items():
                dns.zones[f"1.2.0.192.{zone}"] = {"A": [answer], "TXT": ["the list's text"]}
            try:
                await guard.checkConnection(ConnectionInfo(peer=_peer("192.0.2.1")))
            except SMTPError as e:
                return e
            return None

        e = await refused({"zen.spamhaus.org": "127.0.0.4"})
        assert e is not None
        printed = next(line.strip() for line in self.page.splitlines() if line.strip().startswith("554 "))
        self.assertEqual(
            f"{e.code} mx.example.com {e.text}", printed.replace("<the list's text>", "the list's text")
        )
        self.assertIsNone(await refused({"bl.spamcop.net": "127.0.0.2"}))
        self.assertIsNotNone(await refused({"bl.spamcop.net": "127.0.0.2", "b.barracudacentral.org": "127.0.0.2"}))
        self.assertIsNone(await refused({"zen.spamhaus.org": "127.0.0.2", "list.dnswl.org": "127.0.15.2"}))
        self.assertIsNone(await refused({"zen.spamhaus.org": "127.255.255.254"}), "an error code")


def _peer(host: str) -> Any:
    from twisted.internet.address import IPv4Address

    assert ipaddress.ip_address(host).version == 4
    return IPv4Address("TCP", host, 25)
