"""
REQUIRETLS (RFC 8689) at the server and the client: offered only under
TLS, kept on the envelope, refused in the clear; the client sends it only
over verified TLS to a server that offers it.  ``openssl s_client`` is
the real peer on the server side; txsmtp's client meets txsmtp's server
over loopback with the test CA.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl as tssl
from twisted.trial import unittest

from tests.certs import certificates
from tests.peers import requirePeer
from tests.twistd_helpers import runProcess
from txsmtp.client import SMTPUnsupportedError, TLSPolicy, sendmail
from txsmtp.server import SMTPFactory
from txsmtp.testing import MemoryDelivery, ServerHarness, runServer
from txsmtp.tls import ServerTLS

SENDER = "sender@example.com"
RCPT = "rcpt@example.com"
MESSAGE = b"Subject: secret\r\n\r\nfor your eyes only\r\n"


def _factory(delivery: MemoryDelivery, **kw: Any) -> SMTPFactory:
    certs = certificates()
    return SMTPFactory(delivery, "mx.test.invalid", tls=ServerTLS(certs.chain, certs.key), **kw)


class ServerTests(unittest.TestCase):
    timeout = 60

    def test_notOfferedInTheClear(self) -> None:
        """Without TLS, EHLO does not offer REQUIRETLS and MAIL with it gets 530 5.7.10."""
        delivery = MemoryDelivery()
        harness = ServerHarness(factory=_factory(delivery))
        ehlo = harness.command(b"EHLO client.example")
        self.assertNotIn("REQUIRETLS", ehlo.lines)
        self.assertIn("STARTTLS", ehlo.lines)
        reply = harness.command(b"MAIL FROM:<sender@example.com> REQUIRETLS")
        self.assertEqual((reply.code, reply.enhanced), (530, "5.7.10"))
        self.assertIn("STARTTLS", reply.text)
        # The session goes on: MAIL without it is fine.
        self.assertEqual(harness.command(b"MAIL FROM:<sender@example.com>").code, 250)

    def test_valueRefused(self) -> None:
        """REQUIRETLS takes no value (501 5.5.4)."""
        harness = ServerHarness(factory=_factory(MemoryDelivery()))
        harness.command(b"EHLO client.example")
        reply = harness.command(b"MAIL FROM:<sender@example.com> REQUIRETLS=yes")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"))

    async def test_openssl(self) -> None:
        """
        ``openssl s_client -starttls smtp``: under TLS, EHLO offers REQUIRETLS;
        a message sent with it is accepted and its envelope says so.
        """
        openssl = requirePeer("openssl")
        delivery = MemoryDelivery()
        server = runServer(self, factory=_factory(delivery))
        script = (
            b"EHLO client.example\r\n"
            b"MAIL FROM:<sender@example.com> REQUIRETLS\r\n"
            b"RCPT TO:<rcpt@example.com>\r\n"
            b"DATA\r\n" + MESSAGE + b".\r\nQUIT\r\n"
        )
        result = await runProcess(
            openssl,
            [
                "s_client", "-starttls", "smtp", "-name", "client.example",
                "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost",
                "-CAfile", certificates().ca, "-verify_return_error", "-ign_eof", "-quiet",
            ],
            stdin=script,
            timeout=30,
        )
        out = result.out.decode("utf-8", "replace")
        self.assertRegex(out, r"(?m)^250[- ]REQUIRETLS\r?$")
        self.assertRegex(out, r"(?m)^250 2\.0\.0 .*\r?$")
        self.assertEqual(len(delivery.messages), 1, out)
        self.assertTrue(delivery.messages[0].envelope.parameters.requireTLS)
        self.assertEqual(delivery.messages[0].envelope.toDict()["parameters"]["requiretls"], True)


class ClientTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.delivery = MemoryDelivery()

    async def send(self, factory: SMTPFactory, **kw: Any) -> Any:
        server = runServer(self, factory=factory)
        return await sendmail(
            "localhost", SENDER, [RCPT], MESSAGE, port=server.port, heloName="client.test", requireTLS=True, **kw
        )

    async def test_verifiedTLS(self) -> None:
        """Over TLS verified against the CA, the message goes with REQUIRETLS."""
        trust = tssl.Certificate.loadPEM(open(certificates().ca, "rb").read())
        await self.send(_factory(self.delivery), trustRoot=trust)
        self.assertEqual(len(self.delivery.messages), 1)
        self.assertTrue(self.delivery.messages[0].envelope.parameters.requireTLS)

    async def test_unverifiedTLS(self) -> None:
        """Opportunistic TLS (certificate not checked) is not enough: nothing is sent."""
        with self.assertRaises(SMTPUnsupportedError) as caught:
            await self.send(_factory(self.delivery), tls=TLSPolicy.OPPORTUNISTIC)
        self.assertIn("RFC 8689", str(caught.exception))
        self.assertIn("verified", str(caught.exception))
        self.assertEqual(self.delivery.messages, [])

    async def test_serverWithout(self) -> None:
        """A server that does not offer REQUIRETLS does not get the message."""
        trust = tssl.Certificate.loadPEM(open(certificates().ca, "rb").read())
        with self.assertRaises(SMTPUnsupportedError) as caught:
            await self.send(_factory(self.delivery, offerRequireTLS=False), trustRoot=trust)
        self.assertTrue(re.search(r"does not offer REQUIRETLS", str(caught.exception)))
        self.assertEqual(self.delivery.messages, [])
