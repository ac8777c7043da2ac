"""
``twistd smtp --dnsbl`` end to end: a real twistd asking a real
authoritative DNS server (tests/dnsserver.py, through ``--dns-server``)
about its clients, and real clients (swaks, smtplib) from 127.0.0.1.
"""

from __future__ import annotations

import smtplib
import subprocess
import tempfile
from typing import Any

from twisted.internet import threads
from twisted.trial import unittest

from tests.dnsserver import startDNSServer
from tests.peers import requirePeer
from tests.twistd_helpers import connectClient, runProcess, startTwistd

ZONES: dict[str, Any] = {
    "1.0.0.127.bl.test": {"A": ["127.0.0.2"], "TXT": ["Listed for testing; see https://bl.test/lookup"]},
    "1.0.0.127.wl.test": {"A": ["127.0.10.2"]},
}


def _smtplibGreeting(port: int) -> tuple[int, bytes]:
    """What smtplib sees on connecting: the greeting's code and text."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            code, text = s.helo("client.example.org")
            return 220, text
    except smtplib.SMTPConnectError as e:
        return e.smtp_code, e.smtp_error


class DNSBLTwistdTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dns = startDNSServer(self, dict(ZONES))

    async def start(self, *extra: str) -> Any:
        cwd = tempfile.mkdtemp(prefix="txsmtp-test-dnsbl-")
        self.addCleanup(subprocess.run, ["rm", "-rf", cwd])
        return await startTwistd(
            self,
            "--hostname", "mx.test", "--queue", "queue", "--local-domains", "local.test",
            "--deliver", "maildir:Maildir", "--dns-server", f"127.0.0.1:{self.dns.port}", *extra,
            cwd=cwd,
        )  # fmt: skip

    async def test_listedClientRefused(self) -> None:
        """A client listed by the --dnsbl zone gets a 554 greeting with the list's reason, and 503 after."""
        running = await self.start("--dnsbl", "bl.test=127.0.0.[2..11]", "--dnsbl-exempt", "none")
        self.assertIn("dnsbl 1 list (threshold 1)", running.log)
        code, text = await threads.deferToThread(_smtplibGreeting, running.port)
        self.assertEqual(code, 554, running.log)
        self.assertEqual(
            text,
            b"mx.test Service unavailable; client [127.0.0.1] blocked using bl.test: "
            b"Listed for testing; see https://bl.test/lookup",
        )
        client = await connectClient(self, running.port)
        self.assertEqual(client.replies[0].code, 554)
        [reply] = await client.command(b"EHLO client.example.org")
        self.assertEqual(reply.code, 503)
        # The second client came from the cache: one A and one TXT query in all.
        self.assertEqual(
            sorted(self.dns.queries), [("1.0.0.127.bl.test", "A"), ("1.0.0.127.bl.test", "TXT")]
        )
        await running.waitForLog(r"dnsbl: refused \[127\.0\.0\.1\].*listed by bl\.test")

    async def test_swaks(self) -> None:
        """swaks, refused at the greeting, says so and sends nothing."""
        swaks = requirePeer("swaks")
        running = await self.start("--dnsbl", "bl.test", "--dnsbl-exempt", "none")
        result = await runProcess(
            swaks,
            ["--server", f"127.0.0.1:{running.port}", "--to", "bob@local.test", "--from", "a@example.org",
             "--timeout", "20"],
            timeout=40,
        )  # fmt: skip
        out = result.out.decode("utf-8", "replace")
        self.assertNotEqual(result.code, 0, result.describe())
        self.assertIn("<** 554 mx.test Service unavailable; client [127.0.0.1] blocked using bl.test", out)

    async def test_allowlistedAndExempt(self) -> None:
        """A --dnswl listing outweighs the blocklist; loopback is exempt by default; so are --relay-networks."""
        running = await self.start(
            "--dnsbl", "bl.test*2", "--dnswl", "wl.test*2", "--dnsbl-exempt", "none"
        )
        self.assertIn("dnsbl 1 list + 1 dnswl (threshold 1)", running.log)
        client = await connectClient(self, running.port)
        self.assertEqual(client.replies[0].code, 220)
        await client.command(b"QUIT")
        for extra in [(), ("--dnsbl-exempt", "none", "--relay-networks", "127.0.0.1/32")]:
            self.dns.queries.clear()
            running = await self.start("--dnsbl", "bl.test", *extra)
            code, _ = await threads.deferToThread(_smtplibGreeting, running.port)
            self.assertEqual(code, 220, extra)
            self.assertEqual(self.dns.queries, [], extra)

    async def test_dnsFailureFailsOpen(self) -> None:
        """With the DNS server gone, clients are let in and the failure is logged."""
        running = await self.start("--dnsbl", "bl.test", "--dnsbl-exempt", "none", "--dnsbl-timeout", "1")
        self.dns.zones["1.0.0.127.bl.test"] = "SERVFAIL"
        client = await connectClient(self, running.port)
        self.assertEqual(client.replies[0].code, 220)
        await running.waitForLog(r"dnsbl: no answer for A 1\.0\.0\.127\.bl\.test \(server failure")
