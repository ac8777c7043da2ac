"""
The README's delivery example runs as written, behind a real server.

Its python block is executed as printed, the ``SpoolDelivery`` it defines
is served by :func:`txsmtp.testing.runServer` on a loopback port, and
:mod:`smtplib` (in a thread) sends it one message, which must end up in
the spool directory the delivery was given, which nobody created
beforehand.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import threads
from twisted.trial import unittest

from tests.test_docs import markdownBlocks
from txsmtp.testing import runServer


class ReadmeSpoolTests(unittest.TestCase):
    async def test_spoolOverTCP(self) -> None:
        namespace: dict = {"__name__": "readme"}
        exec(compile(markdownBlocks("README.md")[0], "README.md", "exec"), namespace)
        spool = os.path.join(self.mktemp(), "spool")
        self.assertFalse(os.path.exists(spool))
        server = runServer(self, namespace["SpoolDelivery"](spool, ["alice@example.com"]))
        message = b"Subject: spool\r\n\r\nhello from the README\r\n"

        def send() -> dict:
            with smtplib.SMTP(server.host, server.port, timeout=30) as client:
                return client.sendmail("bob@example.net", ["alice@example.com"], message)

        refused = await threads.deferToThread(send)
        self.assertEqual(refused, {})
        [name] = os.listdir(spool)
        self.assertFalse(name.endswith(".tmp"))
        with open(os.path.join(spool, name), "rb") as f:
            stored = f.read()
        self.assertTrue(stored.startswith(b"Received: "))
        self.assertTrue(stored.endswith(message))
