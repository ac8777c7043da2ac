"""
docs/operations/limits.rst says what txsmtp does: every ``twistd ... smtp``
command line of the page is parsed by ``twistd smtp``'s option parser and
builds the limits the page says; the replies and log lines it quotes are
the ones the code writes.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from tests.certs import certificates
from tests.test_docs_relay import commandLines, parseCommand, readPage
from tests.test_limits import conn
from txsmtp.errors import SMTPError
from txsmtp.limits import AuthLimiter, LimitsGuard, Rate
from txsmtp.tap import Options
from txsmtp.tapoperations import buildOperations


class LimitsPageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.text = readPage(os.path.join("operations", "limits.rst"))
        c = certificates()
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "vhosts"))
        passwd = os.path.join(base, "passwd")
        with open(passwd, "w") as f:
            f.write("alice:Wonder-l4nd-pw\n")
        self.paths = {
            "/etc/txsmtp/tls/fullchain.pem": c.chain,
            "/etc/txsmtp/tls/privkey.pem": c.key,
            "/etc/txsmtp/passwd": passwd,
            "/var/mail/vhosts": os.path.join(base, "vhosts"),
        }

    def parse(self, words: list[str]) -> Options:
        return parseCommand(words, self.paths)

    def test_commandLines(self) -> None:
        mx, submission, off = [buildOperations(self.parse(words)) for words in commandLines(self.text)]
        [guard] = mx.guards
        self.assertEqual((guard.maxConnections, guard.connections.rate), (20, Rate(60, 60)))
        self.assertEqual(mx.authLimiter.failures.rate, Rate(10, 900))
        self.assertEqual(
            mx.summary, ["limits 20 connections per address; connections 60 per minute; AUTH failures 10 per 15 minutes"]
        )
        self.assertIn(
            "``limits 20 connections per address; connections 60 per minute; AUTH\nfailures 10 per 15 minutes``",
            self.text,
        )
        [guard] = submission.guards
        self.assertEqual(guard.userMessages.rate, Rate(200, 3600))
        self.assertEqual(submission.authLimiter.lockout, 3600)
        self.assertTrue(guard.exempt(conn("198.51.100.20")))
        self.assertFalse(guard.exempt(conn("192.0.2.20")))
        self.assertEqual((off.guards, off.authLimiter), ([], None))

    def test_quotedReplies(self) -> None:
        """The three refusals and the lockout line the page prints."""
        clock = Clock()
        guard = LimitsGuard(
            clock, maxConnections=0, messageRate=Rate(100, 3600), recipientRate=Rate(500, 3600)
        )
        with self.assertRaises(SMTPError) as e:
            guard.checkConnection(conn())
        self.assertIn(f"421 mx.example.com {e.exception.text.replace('(limit 0', '(limit 20')}\n", self.text)
        self.assertIn(f"refused connect from 192.0.2.7: 421 4.7.0 {e.exception.text.replace('(limit 0', '(limit 20')}\n", self.text)
        for _ in range(100):
            guard.checkSender(conn(), None, None)  # type: ignore[arg-type]
        with self.assertRaises(SMTPError) as e:
            guard.checkSender(conn(), None, None)  # type: ignore[arg-type]
        self.assertIn(f"451 4.7.1 {e.exception.text}\n", self.text)
        v6 = conn("2001:db8:1:2::99")
        for _ in range(500):
            guard.checkRecipient(v6, None, None)  # type: ignore[arg-type]
        with self.assertRaises(SMTPError) as e:
            guard.checkRecipient(v6, None, None)  # type: ignore[arg-type]
        self.assertIn("450 4.7.1 Too many recipients from 2001:db8:1:2::/64 (limit 500 per hour, --recipient-rate)", self.text)
        self.assertIn("try again in 8 seconds", e.exception.text)
        limiter = AuthLimiter(clock, Rate(10, 900), 900, exempt=[ipaddress.ip_network("127.0.0.0/8")])
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
        try:
            for _ in range(10):
                limiter.failed(conn())
        finally:
            globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]
        [line] = [e["text"] for e in events if e.get("log_namespace") == "txsmtp.limits"]
        self.assertIn(f"    {line}\n", self.text)
        clock.advance(60)
        refusal = limiter.refusal(conn())
        assert refusal is not None
        self.assertIn(f"refused AUTH from 192.0.2.7: 421 4.7.0 {refusal.text}\n", self.text)
