"""
MX delivery under DANE (RFC 7672), end to end: nsd serves DNSSEC-signed
(and unsigned, and broken) zones, unbound validates them
(:mod:`tests.unboundpeer`); :class:`~txsmtp.queue.outbound.Outbound` asks
unbound for everything, its MX and address lookups (``dnsServer``) and its
DNSSEC-aware ones (:class:`~txsmtp.tlspolicy.securedns.SecureResolver` in
:class:`~txsmtp.queue.mxtls.MXSecurity`); the MX host is txsmtp's own
server with STARTTLS.

The server's certificate is for a name that is none of the MX host names:
only the TLSA records can authenticate it (DANE-EE ignores names, RFC 7672
§3.1.1), so a delivery that succeeds under a mandatory policy shows that
DANE, not PKIX, decided.  The TLSA records are at ``_25._tcp`` (the MX
port of real life) while the test server listens on another port: the
client looks them up by the name and port 25 whatever ``mxPort`` is.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, task
from twisted.names import client as dnsclient
from twisted.trial import unittest

from tests.outbound_helpers import BODY, body, freePort, listen, queued
from tests.test_queue_mxtls import (
    RecordingDelivery,
    certificateFor,
    policyText,
    requireTLS,
    trustRoot,
)
from tests.test_tlspolicy_mtasts import PolicyServer
from tests.unboundpeer import RunningUnbound, Zone, startUnbound
from txsmtp.queue.model import AttemptResult, NextHop, QueuedMessage, Result
from txsmtp.queue.mxtls import MXSecurity
from txsmtp.queue.outbound import Outbound
from txsmtp.tls import ServerTLS
from txsmtp.tlspolicy.mtasts import MTASTS
from txsmtp.tlspolicy.securedns import SecureResolver

_REACTOR: Any = reactor

#: the name on the MX server's certificate: no MX host's
CERT_NAME = "elsewhere.example.net"


def spkiSHA256(chainPath: str) -> str:
    """The ``3 1 1`` association data (SHA-256 of the leaf's SubjectPublicKeyInfo) of a PEM chain."""
    with open(chainPath, "rb") as f:
        leaf = x509.load_pem_x509_certificates(f.read())[0]
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def zones() -> list[Zone]:
    right = spkiSHA256(certificateFor(CERT_NAME)[0])
    wrong = spkiSHA256(certificateFor("mx1.example.com")[0])
    return [
        Zone(
            "dane.test",
            [
                # dane.test: the TLSA record matches the server's key.
                "@ IN MX 10 mx.dane.test.",
                "mx IN A 127.0.0.1",
                f"_25._tcp.mx IN TLSA 3 1 1 {right}",
                # wrong.dane.test: it matches another key.
                "wrong IN MX 10 mxw.dane.test.",
                "mxw IN A 127.0.0.1",
                f"_25._tcp.mxw IN TLSA 3 1 1 {wrong}",
                # two.dane.test: the preferred host's record does not match, the other's does.
                "two IN MX 10 mxw.dane.test.",
                "two IN MX 20 mx.dane.test.",
                # mixed.dane.test: a DANE host whose record does not match, then a host without DANE.
                "mixed IN MX 10 mxw.dane.test.",
                "mixed IN MX 20 mx.insecure.test.",
                # pkix.dane.test: secure TLSA records, none usable (PKIX-EE).
                "pkix IN MX 10 mxp.dane.test.",
                "mxp IN A 127.0.0.1",
                f"_25._tcp.mxp IN TLSA 1 1 1 {right}",
                # sts.dane.test: DANE and an MTA-STS policy for the same host.
                "sts IN MX 10 mx.dane.test.",
                '_mta-sts.sts IN TXT "v=STSv1; id=2026120702"',
                "mta-sts.sts IN A 127.0.0.1",
            ],
        ),
        # Unsigned: the TLSA record (which would not match) is not secure, so ignored.
        Zone(
            "insecure.test",
            [
                "@ IN MX 10 mx.insecure.test.",
                "mx IN A 127.0.0.1",
                f"_25._tcp.mx IN TLSA 3 1 1 {wrong}",
                # An insecure MX answer naming a host of the signed zone.
                "other IN MX 10 mxw.dane.test.",
            ],
            signed=False,
        ),
        # Signed, but the TLSA record's signature does not verify: bogus.
        Zone(
            "bogus.test",
            ["@ IN MX 10 mx.bogus.test.", "mx IN A 127.0.0.1", f"_25._tcp.mx IN TLSA 3 1 1 {right}"],
            corrupt=("_25._tcp.mx", "TLSA"),
        ),
    ]


class DANEDeliveryTests(unittest.TestCase):
    timeout = 90

    async def start(self, mtasts: bool = False) -> None:
        self.unbound: RunningUnbound = await startUnbound(self, zones())
        self.port = freePort()
        self.mx = listen(self, "127.0.0.1", self.port, delivery=RecordingDelivery(), tls=ServerTLS(*certificateFor(CERT_NAME)))
        policy = None
        if mtasts:
            self.policyServer = PolicyServer(self, *certificateFor("mta-sts.sts.dane.test"))
            resolver = dnsclient.Resolver(servers=[(self.unbound.host, self.unbound.port)], reactor=_REACTOR)
            policy = MTASTS(resolver, _REACTOR, clock=task.Clock(), trustRoot=trustRoot(), timeout=10, port=self.policyServer.port)
        secure = SecureResolver(self.unbound.host, self.unbound.port, timeouts=(2, 3))
        self.outbound = Outbound(
            "relay.test.invalid",
            dnsServer=(self.unbound.host, self.unbound.port),
            mxPort=self.port,
            mxSecurity=MXSecurity(policy, secure),
            mxTrustRoot=trustRoot(),
        )
        self.addCleanup(self.outbound.close)

    async def deliver(self, domain: str, message: QueuedMessage | None = None) -> AttemptResult:
        message = message or queued([f"rcpt@{domain}"])
        [result] = await self.outbound.deliver(NextHop("mx", domain), message, message.recipients, body())
        return result

    async def test_matching(self) -> None:
        """TLSA ``3 1 1`` of the server's key: delivered over TLS although the certificate names another host."""
        await self.start()
        result = await self.deliver("dane.test")
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertIn("(dane)", result.reason)
        [stored] = self.mx.delivery.messages
        self.assertEqual(stored.body, BODY)
        self.assertIsNotNone(stored.envelope.connection.tls)
        self.assertEqual(self.mx.delivery.mailCommands, [("sender@example.org", True)])

    async def test_notMatching(self) -> None:
        """The TLSA record matches another key: deferred ``4.7.5``, nothing sent, no plaintext retry."""
        await self.start()
        result = await self.deliver("wrong.dane.test")
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.7.5"), result.reason)
        self.assertEqual(self.mx.delivery.messages, [])
        self.assertEqual(self.mx.delivery.mailCommands, [])
        self.assertEqual(len(self.mx.connections), 1)

    async def test_insecureZone(self) -> None:
        """An unsigned zone: its TLSA records do not count; opportunistic TLS, delivered."""
        await self.start()
        result = await self.deliver("insecure.test")
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertNotIn("(dane", result.reason)
        self.assertEqual(len(self.mx.delivery.messages), 1)

    async def test_nextHostAfterMismatch(self) -> None:
        """The preferred host's TLSA record does not match: no MAIL there, the next host (matching) gets it."""
        await self.start()
        result = await self.deliver("two.dane.test")
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mx.dane.test"), result.reason)
        self.assertEqual(len(self.mx.connections), 2)
        self.assertEqual(self.mx.delivery.mailCommands, [("sender@example.org", True)])

    async def test_insecureMXAnswer(self) -> None:
        """
        The MX answer is insecure although the host's zone is signed: DANE
        does not apply (RFC 7672 §2.2.1), so the host's non-matching TLSA
        record is not used; opportunistic TLS, delivered.
        """
        await self.start()
        result = await self.deliver("other.insecure.test")
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mxw.dane.test"), result.reason)
        self.assertNotIn("(dane", result.reason)
        self.assertEqual(len(self.mx.delivery.messages), 1)

    async def test_bogusTLSA(self) -> None:
        """TLSA records that fail validation: the host is not used now, ``4.7.5``, no connection (RFC 7672 §2.1.1)."""
        await self.start()
        result = await self.deliver("bogus.test")
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.7.5"), result.reason)
        self.assertIn("DNSSEC", result.reason)
        self.assertEqual(self.mx.connections, [])

    async def test_requireTLS(self) -> None:
        """A REQUIRETLS message to a DANE-authenticated host: delivered, with REQUIRETLS."""
        await self.start()
        result = await self.deliver("dane.test", requireTLS(queued(["rcpt@dane.test"])))
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        [stored] = self.mx.delivery.messages
        self.assertTrue(stored.envelope.parameters.requireTLS)

    async def test_requireTLSNotOffered(self) -> None:
        """DANE-authenticated, but the server does not offer REQUIRETLS: failed ``5.7.10``, nothing stored."""
        await self.start()
        self.mx.factory.offerRequireTLS = False
        result = await self.deliver("dane.test", requireTLS(queued(["rcpt@dane.test"])))
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.7.10"), result.reason)
        self.assertEqual(self.mx.delivery.messages, [])

    async def test_noUsableRecords(self) -> None:
        """
        Secure TLSA records, none usable: TLS is mandatory but not
        authenticated (RFC 7672 §2.2): delivered over TLS; a REQUIRETLS
        message is not (``5.7.10``, no connection).
        """
        await self.start()
        result = await self.deliver("pkix.dane.test")
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertIn("(dane-unauthenticated)", result.reason)
        self.assertEqual(self.mx.delivery.mailCommands, [("sender@example.org", True)])
        result = await self.deliver("pkix.dane.test", requireTLS(queued(["rcpt@pkix.dane.test"])))
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.7.10"), result.reason)
        self.assertEqual(len(self.mx.connections), 1)

    async def test_requireTLSTransientFirst(self) -> None:
        """
        REQUIRETLS; the one authenticated host fails now (its TLSA record
        does not match), the other is not authenticated: the message waits
        (``4.7.5``), it does not bounce on the second host's ``5.7.10``
        (the first may work at the next attempt); nothing was sent.
        """
        await self.start()
        result = await self.deliver("mixed.dane.test", requireTLS(queued(["rcpt@mixed.dane.test"])))
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.7.5"), result.reason)
        self.assertEqual(len(self.mx.connections), 1)
        self.assertEqual(self.mx.delivery.mailCommands, [])

    async def test_requireTLSInsecure(self) -> None:
        """A REQUIRETLS message to the insecure zone: failed ``5.7.10``, no connection."""
        await self.start()
        result = await self.deliver("insecure.test", requireTLS(queued(["rcpt@insecure.test"])))
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.7.10"), result.reason)
        self.assertEqual(self.mx.connections, [])

    async def test_daneWinsOverMTASTS(self) -> None:
        """
        An enforce MTA-STS policy lists the host, whose certificate is not
        valid for its name (PKIX would refuse it); DANE covers the host and
        wins (RFC 8461 §2): delivered.
        """
        await self.start(mtasts=True)
        self.policyServer.serve(policyText("enforce", "mx.dane.test"), host="mta-sts.sts.dane.test")
        result = await self.deliver("sts.dane.test")
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertIn("(dane)", result.reason)
        self.assertEqual(len(self.mx.delivery.messages), 1)
        # The policy was fetched all the same (its mx list still applies).
        self.assertEqual(self.policyServer.requests, [("mta-sts.sts.dane.test", b"/.well-known/mta-sts.txt")])
