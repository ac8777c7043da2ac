"""
The examples in the documentation run, and do what the text says.

Code blocks are read from the .rst and README files at import time; test
classes defined in docs/testing.rst become test classes of this module, so
trial and pytest run them as they are printed.
"""

from __future__ import annotations

import os
import re
import textwrap

from twisted.trial import unittest

from txsmtp.testing import ServerHarness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rstBlocks(name: str) -> list[str]:
    """The ``.. code-block:: python`` blocks of docs/NAME."""
    with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", text)
    return [textwrap.dedent(b) for b in blocks]


def markdownBlocks(name: str) -> list[str]:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


# docs/testing.rst: its test classes run as part of this module.
_testing = rstBlocks("testing.rst")
exec(_testing[0], globals())  # WelcomeTests
exec(_testing[2], globals())  # HarnessTests
WelcomeTests.__module__ = HarnessTests.__module__ = __name__  # type: ignore[name-defined]  # noqa: F821


def _spoolTransaction(testCase: unittest.TestCase, namespace: dict) -> None:
    spool = testCase.mktemp()
    delivery = namespace["SpoolDelivery"](spool, ["alice@example.com"])
    h = ServerHarness(delivery)
    h.command(b"EHLO client.example")
    h.command(b"MAIL FROM:<bob@example.net>")
    refused = h.command(b"RCPT TO:<mallory@example.com>")
    testCase.assertEqual((refused.code, refused.enhanced), (550, "5.1.1"))
    testCase.assertEqual(h.command(b"RCPT TO:<Alice@example.com>").code, 250)
    testCase.assertEqual(h.command(b"DATA").code, 354)
    [done] = h.send(b"Subject: spool\r\n\r\n..dot\r\n.\r\n")
    testCase.assertEqual(done.code, 250)
    [name] = os.listdir(spool)
    with open(os.path.join(spool, name), "rb") as f:
        stored = f.read()
    testCase.assertTrue(stored.startswith(b"Received: from client.example"))
    testCase.assertTrue(stored.endswith(b"Subject: spool\r\n\r\n.dot\r\n"))


class DeliveryExampleTests(unittest.TestCase):
    """The complete example of docs/delivery.rst and the README's."""

    def test_deliveryChapter(self) -> None:
        namespace: dict = {"__name__": "spool"}
        exec(rstBlocks("delivery.rst")[0], namespace)
        self.assertEqual(namespace["factory"].hostname, "mx.example.com")
        _spoolTransaction(self, namespace)

    def test_readme(self) -> None:
        namespace: dict = {"__name__": "readme"}
        exec(markdownBlocks("README.md")[0], namespace)
        _spoolTransaction(self, namespace)

    def test_readmeSending(self) -> None:
        """The README's sending example compiles and names real API."""
        import txsmtp

        code = markdownBlocks("README.md")[1]
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        self.assertIs(namespace["sendmail"], txsmtp.sendmail)
        self.assertIs(namespace["Mailer"], txsmtp.Mailer)
        self.assertTrue(callable(namespace["notify"]))

    def test_protocolExtension(self) -> None:
        namespace: dict = {"__name__": "xstatus"}
        exec(rstBlocks("delivery.rst")[-1], namespace)
        from twisted.internet.task import Clock

        from txsmtp.testing import MemoryDelivery

        h = ServerHarness(factory=namespace["XStatusFactory"](MemoryDelivery(), "test.invalid", clock=Clock()))
        before = h.command(b"XSTATUS")
        self.assertEqual((before.code, before.enhanced), (503, "5.5.1"))
        ehlo = h.command(b"EHLO client.example")
        self.assertIn("XSTATUS", ehlo.lines)
        self.assertEqual(h.command(b"XSTATUS").code, 250)
