"""
MX delivery under MTA-STS and DANE from ``twistd -n smtp`` itself: a
relayed message for a domain with a policy goes through the queue to the
domain's MX host.

twistd connects to MX hosts on port 25 and fetches MTA-STS policies on
port 443 (no option changes either), so the test binds the MX server
(txsmtp's own, STARTTLS with a certificate from the test CA) and the
HTTPS policy server to those ports on an address of 127.0.0.0/8 of its
own (``127.R.S.25`` and ``127.R.S.43``, ``R``, ``S`` drawn at random so
that concurrent runs do not collide), and the DNS answers point there.
That needs the right to bind low ports: without it the tests skip (and
fail under ``TXSMTP_REQUIRE_PEERS=1``).  The DNS server is the test
one (:mod:`tests.dnsserver`) for MTA-STS, unbound in front of nsd
(:mod:`tests.unboundpeer`) for ``--dane``.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from tests.certs import certificates
from tests.dnsserver import startDNSServer
from tests.outbound_helpers import listen
from tests.peers import PEERS_REQUIRED
from tests.test_queue_mxtls import RecordingDelivery, certificateFor, policyText
from tests.test_queue_mxtls_dane import spkiSHA256
from tests.test_tlspolicy_mtasts import PolicyServer
from tests.twistd_helpers import connectClient, startTwistd
from tests.unboundpeer import Zone, startUnbound
from txsmtp.tls import ServerTLS

_REACTOR: Any = reactor
_NET = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
MX_ADDRESS = f"{_NET}.25"
POLICY_ADDRESS = f"{_NET}.43"
DOMAIN = "dest.example"
MX_HOST = "mx.dest.example"
POLICY_HOST = "mta-sts.dest.example"


def _cannotBind(e: BaseException) -> None:
    message = f"cannot listen on a low port of 127.0.0.0/8 here: {e}"
    if PEERS_REQUIRED:
        raise AssertionError(message)
    raise unittest.SkipTest(message)


class _Base(unittest.TestCase):
    timeout = 120

    def mx(self, certificate: tuple[str, str]) -> Any:
        """The MX host: txsmtp's server on ``MX_ADDRESS:25``."""
        try:
            return listen(self, MX_ADDRESS, 25, delivery=RecordingDelivery(), tls=ServerTLS(*certificate))
        except CannotListenError as e:
            _cannotBind(e)

    async def relay(self, *args: str) -> Any:
        """twistd relaying for 127.0.0.0/8, the given options added; a message to ``bob@DOMAIN`` sent in."""
        running = await startTwistd(
            self,
            "--hostname", "relay.test.invalid", "--queue", "queue", "--relay-networks", "127.0.0.0/8",
            "--retry-min", "60", "--retry-max", "120", *args,
        )  # fmt: skip
        client = await connectClient(self, running.port)
        for line in (b"EHLO client.test", b"MAIL FROM:<alice@client.test>", f"RCPT TO:<bob@{DOMAIN}>".encode(), b"DATA"):
            [reply] = await client.command(line)
            self.assertLess(reply.code, 400, reply)
        [done] = await client.command(b"Subject: under policy\r\n\r\nhello\r\n.")
        self.assertEqual(done.code, 250, done)
        await client.command(b"QUIT")
        return running


class MTASTSTwistdTests(_Base):
    """``--dns-server`` (the test DNS server) and ``--mta-sts-ca`` (the test CA)."""

    def setUp(self) -> None:
        self.dns = startDNSServer(
            self,
            {
                DOMAIN: {"MX": [(10, MX_HOST)]},
                MX_HOST: {"A": [MX_ADDRESS]},
                f"_mta-sts.{DOMAIN}": {"TXT": ["v=STSv1; id=2026120703"]},
                POLICY_HOST: {"A": [POLICY_ADDRESS]},
            },
        )
        try:
            self.policyServer = PolicyServer(self, *certificateFor(POLICY_HOST), port=443, interface=POLICY_ADDRESS)
        except CannotListenError as e:
            _cannotBind(e)
        self.policyServer.serve(policyText("enforce", MX_HOST), host=POLICY_HOST)

    def args(self) -> list[str]:
        return ["--dns-server", f"127.0.0.1:{self.dns.port}", "--mta-sts-ca", certificates().ca]

    async def test_enforceDelivered(self) -> None:
        """An enforce policy, the MX host's certificate valid for its name: delivered over TLS."""
        mx = self.mx(certificateFor(MX_HOST))
        running = await self.relay(*self.args())
        match = await running.waitForLog(rf"to=<bob@{DOMAIN}>.*result=delivered.*", timeout=60)
        self.assertIn(f"delivered to {MX_HOST}[{MX_ADDRESS}]:25 (mta-sts)", match.group(0))
        [stored] = mx.delivery.messages
        self.assertEqual(stored.recipients, [f"bob@{DOMAIN}"])
        self.assertIn(b"Subject: under policy", stored.body)
        self.assertIsNotNone(stored.envelope.connection.tls)
        self.assertEqual(mx.delivery.mailCommands, [("alice@client.test", True)])
        self.assertEqual(self.policyServer.requests, [(POLICY_HOST, b"/.well-known/mta-sts.txt")])

    async def test_enforceWrongCertificate(self) -> None:
        """The certificate names another host: deferred 4.7.5, never sent in plaintext."""
        mx = self.mx(certificateFor("elsewhere.example.net"))
        running = await self.relay(*self.args())
        match = await running.waitForLog(rf"to=<bob@{DOMAIN}>.*result=deferred.*", timeout=60)
        self.assertIn("4.7.5", match.group(0))
        self.assertEqual(mx.delivery.messages, [])
        self.assertEqual(mx.delivery.mailCommands, [])
        self.assertEqual(len(mx.connections), 1)

    async def test_noMTASTS(self) -> None:
        """``--no-mta-sts``: no policy fetched; opportunistic TLS delivers to the mismatched host."""
        mx = self.mx(certificateFor("elsewhere.example.net"))
        running = await self.relay("--dns-server", f"127.0.0.1:{self.dns.port}", "--no-mta-sts")
        await running.waitForLog(rf"to=<bob@{DOMAIN}>.*result=delivered", timeout=60)
        self.assertEqual(len(mx.delivery.messages), 1)
        self.assertEqual(self.policyServer.requests, [])


class DANETwistdTests(_Base):
    """``--dane`` with ``--dns-server`` pointing at unbound validating nsd's signed zone."""

    async def test_daneDelivered(self) -> None:
        """TLSA 3 1 1 of the MX server's key (its certificate names another host): delivered."""
        certificate = certificateFor("elsewhere.example.net")
        zone = Zone(
            DOMAIN,
            [f"@ IN MX 10 {MX_HOST}.", f"mx IN A {MX_ADDRESS}", f"_25._tcp.mx IN TLSA 3 1 1 {spkiSHA256(certificate[0])}"],
        )
        unbound = await startUnbound(self, [zone])
        mx = self.mx(certificate)
        running = await self.relay("--dns-server", f"{unbound.host}:{unbound.port}", "--dane")
        match = await running.waitForLog(rf"to=<bob@{DOMAIN}>.*result=delivered.*", timeout=60)
        self.assertIn(f"delivered to {MX_HOST}[{MX_ADDRESS}]:25 (dane)", match.group(0))
        [stored] = mx.delivery.messages
        self.assertIsNotNone(stored.envelope.connection.tls)
        self.assertEqual(mx.delivery.mailCommands, [("alice@client.test", True)])

    async def test_daneMismatch(self) -> None:
        """TLSA of another key: deferred 4.7.5, nothing sent."""
        zone = Zone(
            DOMAIN,
            [
                f"@ IN MX 10 {MX_HOST}.",
                f"mx IN A {MX_ADDRESS}",
                f"_25._tcp.mx IN TLSA 3 1 1 {spkiSHA256(certificateFor(MX_HOST)[0])}",
            ],
        )
        unbound = await startUnbound(self, [zone])
        mx = self.mx(certificateFor("elsewhere.example.net"))
        running = await self.relay("--dns-server", f"{unbound.host}:{unbound.port}", "--dane")
        match = await running.waitForLog(rf"to=<bob@{DOMAIN}>.*result=deferred.*", timeout=60)
        self.assertIn("4.7.5", match.group(0))
        self.assertEqual(mx.delivery.mailCommands, [])
        self.assertEqual(mx.delivery.messages, [])
