"""
The inbound checks end to end: ``twistd -n smtp --verify-inbound`` (and
``--dmarc-reject``) in a subprocess, its DNS questions answered by the
test's authoritative twisted.names server (SPF, DKIM keys, DMARC records
as zones), messages signed by an independent signer (dkimpy), and the
``Authentication-Results:`` field the server adds read back by an
independent parser (the ``authres`` package).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Any

from twisted.trial import unittest

from tests.dnsserver import startDNSServer
from tests.relay_helpers import DirectoryWatch
from tests.test_dkimsign import KEYS, pem, record
from tests.test_relay_e2e import transaction
from tests.twistd_helpers import connectClient, startTwistd

try:
    import authres
    import dkim
except ImportError:  # pragma: no cover
    authres = dkim = None

HOSTNAME = "mx.local.test"

ZONES = {
    # example.org: SPF allows the test client, DKIM key published, DMARC reject.
    "example.org": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "MX": [(10, "mx.example.org")]},
    "sel._domainkey.example.org": {"TXT": [record(KEYS["rsa"]).decode()]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
    # forged.example: SPF names another address, no key, DMARC reject.
    "forged.example": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"], "A": ["192.0.2.1"]},
    "_dmarc.forged.example": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=s"]},
    # lax.example: SPF fails too, DMARC p=none: annotated, never refused.
    "lax.example": {"TXT": ["v=spf1 -all"]},
    "_dmarc.lax.example": {"TXT": ["v=DMARC1; p=none"]},
}


def message(sender: str, subject: str, extra: bytes = b"") -> bytes:
    return (
        f"From: Sender <{sender}>\r\nTo: bob@local.test\r\nSubject: {subject}\r\n"
        f"Date: Mon, 7 Dec 2026 04:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}@test>\r\n"
    ).encode() + extra + b"\r\nHello Bob,\r\n.dot line\r\nbye\r\n"


def signed(data: bytes) -> bytes:
    """``data`` signed by dkimpy for example.org (selector sel, relaxed/relaxed)."""
    signature = dkim.sign(
        data, b"sel", b"example.org", pem(KEYS["rsa"]), canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )  # fmt: skip
    return signature + data


class InboundChecksTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        if dkim is None or authres is None:
            raise unittest.SkipTest("dkimpy and authres are needed (pip install '.[test]')")
        self.dns = startDNSServer(self, ZONES)

    async def start(self, *extra: str) -> Any:
        cwd = tempfile.mkdtemp(prefix="txsmtp-test-inbound-")
        self.addCleanup(subprocess.run, ["rm", "-rf", cwd])
        running = await startTwistd(
            self,
            "--hostname", HOSTNAME, "--queue", "queue", "--local-domains", "local.test",
            "--deliver", "maildir:Maildir", "--dns-server", f"127.0.0.1:{self.dns.port}",
            "--retry-min", "1", "--retry-max", "2", *extra,
            cwd=cwd,
        )  # fmt: skip
        os.makedirs(os.path.join(cwd, "Maildir", "new"), exist_ok=True)
        self.watch = DirectoryWatch(self, os.path.join(cwd, "Maildir", "new"))
        return running

    async def send(self, running: Any, sender: str, data: bytes) -> Any:
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.example.org")
        replies = await transaction(client, sender, ["bob@local.test"], data)
        await client.command(b"QUIT")
        return replies[-1]

    async def delivered(self, n: int) -> list[bytes]:
        names = await self.watch.waitForCount(n)
        out = []
        for name in sorted(names):
            with open(os.path.join(self.watch.path, name), "rb") as f:
                out.append(f.read())
        return out

    def results(self, stored: bytes) -> Any:
        """The server's own Authentication-Results field, parsed by authres."""
        head = stored.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
        fields = [line for line in head.split(b"\r\n") if line.lower().startswith(b"authentication-results:")]
        own = [f for f in fields if f.split(b":", 1)[1].strip().split(b";")[0].strip() == HOSTNAME.encode()]
        self.assertEqual(len(own), 1, fields)
        return authres.AuthenticationResultsHeader.parse(own[0].decode()), fields

    def byMethod(self, parsed: Any) -> dict[str, Any]:
        return {r.method: r for r in parsed.results}

    async def test_passes(self) -> None:
        """SPF, DKIM (signed by dkimpy) and DMARC pass; the field names the server and each identity."""
        running = await self.start("--verify-inbound")
        reply = await self.send(running, "alice@example.org", signed(message("alice@example.org", "all good")))
        self.assertEqual(reply.code, 250, reply)
        [stored] = await self.delivered(1)
        parsed, _ = self.results(stored)
        self.assertEqual(parsed.authserv_id, HOSTNAME)
        methods = self.byMethod(parsed)
        self.assertEqual(methods["spf"].result, "pass")
        self.assertEqual(methods["dkim"].result, "pass")
        self.assertEqual(methods["dmarc"].result, "pass")
        self.assertEqual(methods["dkim"].header_d, "example.org")
        dmarcProperties = [(p.type, p.name, p.value) for p in methods["dmarc"].properties]
        self.assertEqual(dmarcProperties, [("header", "from", "example.org")])
        # The field goes above everything the message had; the signature still verifies after it.
        self.assertTrue(stored.startswith(b"Return-Path:") or stored.startswith(b"Authentication-Results:"), stored[:200])
        self.assertTrue(dkim.verify(stored.split(b"\r\n", 1)[1] if stored.startswith(b"Return-Path:") else stored,
                                    dnsfunc=lambda name, timeout=5: record(KEYS["rsa"])))
        self.assertRegex(running.log, r"spf=pass \(smtp\.mailfrom=alice@example\.org\) dkim=pass")

    async def test_forgedFieldRemoved(self) -> None:
        """A field claiming this server's name is taken out; another server's stays."""
        running = await self.start("--verify-inbound")
        extra = (
            f"Authentication-Results: {HOSTNAME.upper()} (forged); dkim=pass header.d=paypal.example\r\n"
            "Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n"
        ).encode()
        reply = await self.send(running, "someone@lax.example", message("someone@lax.example", "forged", extra))
        self.assertEqual(reply.code, 250, reply)
        [stored] = await self.delivered(1)
        parsed, fields = self.results(stored)
        self.assertEqual(len(fields), 2, fields)
        self.assertNotIn(b"paypal.example", stored)
        self.assertIn(b"other.example; spf=pass", stored)
        self.assertEqual(self.byMethod(parsed)["dmarc"].result, "fail")
        self.assertIn("removed 1 forged Authentication-Results", running.log)

    async def test_dmarcFailAnnotatedByDefault(self) -> None:
        """Without --dmarc-reject, mail failing DMARC under p=reject is delivered, marked fail."""
        running = await self.start("--verify-inbound")
        reply = await self.send(running, "ceo@forged.example", message("ceo@forged.example", "wire money"))
        self.assertEqual(reply.code, 250, reply)
        [stored] = await self.delivered(1)
        methods = self.byMethod(self.results(stored)[0])
        self.assertEqual((methods["spf"].result, methods["dkim"].result, methods["dmarc"].result), ("fail", "none", "fail"))

    async def test_dmarcReject(self) -> None:
        """With --dmarc-reject: 550 5.7.1 after the final dot, nothing queued; p=none mail still passes through."""
        running = await self.start("--dmarc-reject")
        reply = await self.send(running, "ceo@forged.example", message("ceo@forged.example", "wire money"))
        self.assertEqual((reply.code, reply.enhanced), (550, "5.7.1"), reply)
        self.assertIn("DMARC", reply.text)
        ok = await self.send(running, "someone@lax.example", message("someone@lax.example", "lax"))
        self.assertEqual(ok.code, 250, ok)
        [stored] = await self.delivered(1)
        self.assertIn(b"Subject: lax", stored)
        self.assertEqual(self.byMethod(self.results(stored)[0])["dmarc"].result, "fail")

    async def test_trustedNotChecked(self) -> None:
        """Mail from the relay networks is the server's own users': no check, no field, no DNS question."""
        running = await self.start("--verify-inbound", "--relay-networks", "127.0.0.0/8")
        reply = await self.send(running, "ceo@forged.example", message("ceo@forged.example", "internal"))
        self.assertEqual(reply.code, 250, reply)
        [stored] = await self.delivered(1)
        self.assertNotIn(b"Authentication-Results:", stored)
        self.assertEqual([q for q in self.dns.queries if "forged" in q[0]], [])

    async def test_ownReportsNotChecked(self) -> None:
        """
        A delivery report the server makes itself (NOTIFY=SUCCESS) reaches
        the local sender without going through the checks; the message it
        reports on was checked.
        """
        running = await self.start("--verify-inbound")
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.example.org")
        for line in (b"MAIL FROM:<carol@local.test>", b"RCPT TO:<bob@local.test> NOTIFY=SUCCESS", b"DATA"):
            [reply] = await client.command(line)
            self.assertLess(reply.code, 400, reply)
        [done] = await client.command(message("carol@local.test", "tell me") + b".")
        self.assertEqual(done.code, 250, done)
        stored = await self.delivered(2)
        reports = [m for m in stored if b"multipart/report" in m]
        originals = [m for m in stored if b"Subject: tell me" in m and b"multipart/report" not in m]
        self.assertEqual((len(reports), len(originals)), (1, 1), [m[:300] for m in stored])
        self.assertNotIn(b"Authentication-Results:", reports[0].split(b"\r\n\r\n", 1)[0])
        self.assertIn(b"Authentication-Results: " + HOSTNAME.encode(), originals[0])
