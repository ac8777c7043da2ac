"""
:func:`txsmtp.mx.sendmailMX` with the real client and real servers on
loopback: a certificate that does not verify at the first mail exchanger
sends the message to the next one (the default, verifying, TLS policy).

The two exchangers listen on the same port of 127.0.0.1 and 127.0.0.2, as
two MX hosts would on port 25; DNS answers come from the fake resolver of
tests/test_mx.py.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet import ssl as tssl
from twisted.trial import unittest

from tests.certs import certificates
from tests.test_mx import FakeResolver, mxRecords
from txsmtp.client import SMTPTLSError
from txsmtp.mx import sendmailMX
from txsmtp.server import SMTPFactory
from txsmtp.testing import MemoryDelivery
from txsmtp.tls import ServerTLS


def freePort() -> int:
    """A port free on both 127.0.0.1 and 127.0.0.2 (checked by listening there)."""
    for _ in range(20):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.2", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")


class CertificateFailureAtFirstMXTests(unittest.TestCase):
    def listen(self, address: str, port: int, tls: ServerTLS) -> MemoryDelivery:
        delivery = MemoryDelivery()
        factory = SMTPFactory(delivery, "mx.test.invalid", tls=tls)
        listening: Any = reactor.listenTCP(port, factory, interface=address)  # type: ignore[attr-defined,arg-type]
        self.addCleanup(listening.stopListening)
        self.addCleanup(factory.shutdown, 0)
        return delivery

    def trustRoot(self) -> Any:
        with open(certificates().ca, "rb") as f:
            return tssl.Certificate.loadPEM(f.read())

    async def test_expiredCertificateThenGoodOne(self) -> None:
        """
        mx1 serves an expired certificate, mx2 a good one: the message goes
        to mx2, with the default TLS policy (verify), and mx1 gets nothing.
        """
        c = certificates()
        port = freePort()
        first = self.listen("127.0.0.1", port, ServerTLS(c.expiredChain, c.expiredKey))
        second = self.listen("127.0.0.2", port, ServerTLS(c.chain, c.key))
        resolver = FakeResolver({b"example.com": mxRecords((10, "127.0.0.1"), (20, "127.0.0.2"))})
        result = await sendmailMX(
            "me@example.org",
            ["you@example.com"],
            b"Subject: hi\r\n\r\nhello\r\n",
            resolver=resolver,
            port=port,
            trustRoot=self.trustRoot(),
            tlsHostname="localhost",
        )
        self.assertEqual(result.refused, {})
        self.assertEqual(first.messages, [])
        [message] = second.messages
        self.assertEqual(message.recipients, ["you@example.com"])
        self.assertIsNotNone(message.envelope.connection.tls)

    async def test_onlyExchangerFailsVerification(self) -> None:
        """With no other exchanger, the TLS failure is transient: queue, do not bounce."""
        c = certificates()
        port = freePort()
        only = self.listen("127.0.0.1", port, ServerTLS(c.expiredChain, c.expiredKey))
        resolver = FakeResolver({b"example.com": mxRecords((10, "127.0.0.1"))})
        with self.assertRaises(SMTPTLSError) as caught:
            await sendmailMX(
                "me@example.org",
                ["you@example.com"],
                b"Subject: hi\r\n\r\nhello\r\n",
                resolver=resolver,
                port=port,
                trustRoot=self.trustRoot(),
                tlsHostname="localhost",
            )
        self.assertIs(caught.exception.permanent, False)
        self.assertEqual(only.messages, [])
