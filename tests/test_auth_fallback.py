"""
AUTH failures when a client falls back from one mechanism to the next:
Python's smtplib.login() tries CRAM-MD5, PLAIN, then LOGIN in turn, so one
wrong password is three refusals.  Mechanisms tried in a row with the same
user name, with no other command between them, count as one failure and
are delayed once; another user name, a mechanism tried again, or another
command in between makes a new failure.
"""

from __future__ import annotations

import smtplib

from twisted.internet import threads
from twisted.logger import formatEvent
from twisted.trial import unittest

from tests.test_sasl import cramResponse
from tests.test_tls_auth import (
    PASSWORD,
    USER,
    TrackingDelivery,
    authHarness,
    b64,
    codes,
    passwordChecker,
    unb64,
)
from tests.twistd_helpers import LogEvents
from txsmtp.auth import makePortal
from txsmtp.testing import ServerHarness, runServer


def cram(h: ServerHarness, user: str, password: str) -> bytes:
    """AUTH CRAM-MD5 up to the response line (not sent)."""
    challenge = unb64(h.command(b"AUTH CRAM-MD5"))
    return b64(cramResponse(user.encode(), password.encode(), challenge)) + b"\r\n"


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + b64(f"\0{user}\0{password}") + b"\r\n"


class FallbackHarnessTests(unittest.TestCase):
    """Over the session harness, with a fake clock."""

    def smtplibAttempt(self, h: ServerHarness, user: str, password: str, delay: float) -> list[int]:
        """What smtplib.login sends: CRAM-MD5, PLAIN, LOGIN; the codes of the final replies."""
        got: list[int] = []
        got += codes(h.send(cram(h, user, password)))
        h.clock.advance(delay)
        got += codes(h.replies())
        got += codes(h.send(plain(user, password)))
        self.assertEqual(unb64(h.command(b"AUTH LOGIN " + b64(user))), b"Password:")
        got += codes(h.send(b64(password) + b"\r\n"))
        return got

    def test_smtplibFallbackIsOneFailure(self) -> None:
        """
        One wrong password through three mechanisms: one failure, one delay
        (the first), no 421; the second such attempt is failure 2 (delay
        doubled) and the third closes the connection.
        """
        events = LogEvents(self)
        h = authHarness(authFailureDelay=1.0, maxAuthFailures=3)
        self.assertEqual(self.smtplibAttempt(h, USER, "wrong", 1.0), [535, 535, 535])
        self.assertFalse(h.closed)
        # The first try of the next attempt waits 2 s: it is failure 2.
        self.assertEqual(h.send(cram(h, USER, "wrong2")), [])
        h.clock.advance(1.99)
        self.assertEqual(h.replies(), [])
        h.clock.advance(0.01)
        self.assertEqual(codes(h.replies()), [535])
        self.assertEqual(codes(h.send(plain(USER, "wrong2"))), [535])
        self.assertFalse(h.closed)
        texts = [formatEvent(e) for e in events.events if "authentication failed" in formatEvent(e)]
        self.assertEqual(len(texts), 5)
        self.assertIn("(failure 1 of 3)", texts[0])
        self.assertIn("(failure 1 of 3, the same attempt as with CRAM-MD5)", texts[1])
        self.assertIn("(failure 1 of 3, the same attempt as with CRAM-MD5, PLAIN)", texts[2])
        self.assertIn("(failure 2 of 3)", texts[3])
        # Then a right password still works.
        self.assertEqual(h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")).code, 235)

    def test_fallbackDoesNotTrip421(self) -> None:
        """
        With maxAuthFailures=2 a fallback chain is answered with 535s and no
        421; trying one of its mechanisms again is the second failure.
        """
        h = authHarness(authFailureDelay=0, maxAuthFailures=2)
        self.assertEqual(self.smtplibAttempt(h, USER, "wrong", 0), [535, 535, 535])
        self.assertFalse(h.closed)
        self.assertEqual(codes(h.send(plain(USER, "wrong"))), [535, 421])
        self.assertTrue(h.closed)

    def test_sameMechanismAgainCounts(self) -> None:
        """The same mechanism twice in a row is two failures (a guess each)."""
        h = authHarness(authFailureDelay=0, maxAuthFailures=2)
        self.assertEqual(codes(h.send(plain(USER, "one"))), [535])
        replies = h.send(plain(USER, "two"))
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(535, "5.7.8"), (421, "4.7.0")])
        self.assertTrue(h.closed)

    def test_otherUserCounts(self) -> None:
        """Another user name with another mechanism is a new failure."""
        h = authHarness(authFailureDelay=0, maxAuthFailures=2)
        self.assertEqual(codes(h.send(plain(USER, "one"))), [535])
        self.assertEqual(unb64(h.command(b"AUTH LOGIN " + b64("mallory"))), b"Password:")
        self.assertEqual(codes(h.send(b64("x") + b"\r\n")), [535, 421])
        self.assertTrue(h.closed)

    def test_commandBetweenCounts(self) -> None:
        """Any other command between two mechanisms makes the second a new failure."""
        for between in (b"NOOP", b"RSET", b"EHLO client.example", b"XYZZY"):
            h = authHarness(authFailureDelay=0, maxAuthFailures=2)
            self.assertEqual(codes(h.send(plain(USER, "one"))), [535])
            h.command(between)
            self.assertEqual(codes(h.send(cram(h, USER, "two"))), [535, 421], between)
            self.assertTrue(h.closed)

    def test_fallbackIsNotDelayedAgain(self) -> None:
        """The first failure waits; the fallbacks after it are answered at once."""
        h = authHarness(authFailureDelay=3.0, maxAuthFailures=5)
        self.assertEqual(h.send(plain(USER, "one")), [])
        h.clock.advance(3)
        self.assertEqual(codes(h.replies()), [535])
        self.assertEqual(codes(h.send(cram(h, USER, "one"))), [535])


class SmtplibLoginTests(unittest.TestCase):
    """Python's smtplib.login against a server over loopback (AUTH without TLS allowed)."""

    timeout = 30

    async def test_wrongPasswordOnce(self) -> None:
        """
        smtplib.login with a wrong password tries every mechanism it knows:
        one failure for the server, no 421, and the connection goes on (a
        second login with the right password succeeds).
        """
        events = LogEvents(self)
        delivery = TrackingDelivery()
        portal = makePortal(delivery, [passwordChecker()])
        server = runServer(
            self, delivery, portal=portal, allowInsecureAuth=True, authFailureDelay=0.01, maxAuthFailures=2
        )

        def login() -> tuple[str, list[int], int]:
            with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example", timeout=10) as c:
                c.ehlo()
                try:
                    c.login(USER, "wrong")
                except smtplib.SMTPAuthenticationError as e:
                    refused = e.smtp_code
                else:
                    raise AssertionError("login succeeded")
                tried = c.esmtp_features["auth"]
                code, _ = c.noop()
                c.user, c.password = USER, PASSWORD
                ok, _ = c.auth("PLAIN", c.auth_plain)
                return tried, [refused, code], ok

        tried, refusedThenNoop, ok = await threads.deferToThread(login)
        for mechanism in ("CRAM-MD5", "PLAIN", "LOGIN"):
            self.assertIn(mechanism, tried.split())
        self.assertEqual(refusedThenNoop, [535, 250])
        self.assertEqual(ok, 235)
        texts = [formatEvent(e) for e in events.events if "authentication failed" in formatEvent(e)]
        self.assertEqual(len(texts), 3)
        self.assertTrue(all("(failure 1 of 2" in t for t in texts), texts)
