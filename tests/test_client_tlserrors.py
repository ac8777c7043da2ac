"""
The client's message when a server's certificate does not verify: it names
the server and points to the options that fix it (``trustRoot``, ``tls``),
against txsmtp's server with a self-signed certificate over loopback.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import ssl as tssl
from twisted.trial import unittest

from tests.certs import _build, _certPEM, _key, _keyPEM, _write
from txsmtp.client import SMTPTLSError, TLSPolicy, sendmail
from txsmtp.server import SMTPFactory
from txsmtp.testing import MemoryDelivery, runServer
from txsmtp.tls import ServerTLS

SENDER = "sender@example.com"
RCPT = "rcpt@example.com"
MESSAGE = b"Subject: self-signed\r\n\r\nhello\r\n"


def _selfSigned(testCase: unittest.TestCase) -> tuple[str, str, str]:
    """A self-signed server certificate for "localhost": (cert, key, PEM text)."""
    directory = tempfile.mkdtemp(prefix="txsmtp-test-selfsigned-")

    def remove() -> None:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)

    testCase.addCleanup(remove)
    key = _key()
    cert = _build("localhost", key, None, key, server=True)
    pem = _certPEM(cert)
    return (
        _write(directory, "cert.pem", pem),
        _write(directory, "key.pem", _keyPEM(key), private=True),
        pem.decode("ascii"),
    )


class SelfSignedTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        certPath, keyPath, self.pem = _selfSigned(self)
        self.delivery = MemoryDelivery()
        factory = SMTPFactory(self.delivery, "mx.test.invalid", tls=ServerTLS(certPath, keyPath))
        self.server = runServer(self, factory=factory)

    async def send(self, **kw: Any) -> Any:
        return await sendmail("localhost", SENDER, [RCPT], MESSAGE, port=self.server.port, heloName="client.test", **kw)

    async def test_messageNamesHostAndOptions(self) -> None:
        """
        The default policy (verify) against a self-signed certificate: the
        SMTPTLSError names the host and port, says what failed, and points
        to ``trustRoot`` and ``tls``.
        """
        with self.assertRaises(SMTPTLSError) as caught:
            await self.send()
        text = str(caught.exception)
        self.assertIn(f"localhost:{self.server.port}", text)
        self.assertIn("certificate verify failed", text)
        self.assertIn("trustRoot", text)
        self.assertIn("tls=", text)
        self.assertTrue(caught.exception.permanent)
        self.assertEqual(self.delivery.messages, [])

    async def test_implicitTLS(self) -> None:
        """The same message when the handshake is the first thing (implicit TLS)."""
        from tests.test_tls_auth import listenImplicitTLS

        port = listenImplicitTLS(self, self.server.factory)
        with self.assertRaises(SMTPTLSError) as caught:
            await sendmail("localhost", SENDER, [RCPT], MESSAGE, port=port, implicitTLS=True, heloName="client.test")
        text = str(caught.exception)
        self.assertIn(f"localhost:{port}", text)
        self.assertIn("trustRoot", text)

    async def test_followingTheAdvice(self) -> None:
        """Both ways out the message names work: trusting the certificate, or not checking it."""
        result = await self.send(trustRoot=tssl.Certificate.loadPEM(self.pem))
        self.assertEqual(result.recipients[RCPT].code, 250)
        result = await self.send(tls=TLSPolicy.OPPORTUNISTIC)
        self.assertEqual(result.recipients[RCPT].code, 250)
        self.assertEqual(len(self.delivery.messages), 2)

    async def test_wrongName(self) -> None:
        """A trusted certificate for another name: the message points to ``tlsHostname``."""
        with self.assertRaises(SMTPTLSError) as caught:
            await self.send(trustRoot=tssl.Certificate.loadPEM(self.pem), tlsHostname="wrong.example")
        text = str(caught.exception)
        self.assertIn(f"localhost:{self.server.port}", text)
        self.assertIn("'wrong.example'", text)
        self.assertIn("tlsHostname", text)
        self.assertEqual(self.delivery.messages, [])
