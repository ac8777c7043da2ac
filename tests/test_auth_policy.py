"""
AUTH policy details: which mechanisms are offered, several checkers for one
kind of credentials, refusals from the realm, and the option checks of
``twistd smtp`` that keep AUTH under TLS.
"""

from __future__ import annotations

import base64

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.python import usage
from twisted.trial import unittest

from tests.test_sasl import ScramClient
from txsmtp.auth import CheckerChain, ScramKeyChecker, makePortal
from txsmtp.delivery import BaseDeliverySession
from txsmtp.errors import SMTPError
from txsmtp.sasl import scramKeys
from txsmtp.tap import Options
from txsmtp.testing import MemoryDelivery, ServerHarness


def memory(**users: str) -> InMemoryUsernamePasswordDatabaseDontUse:
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in users.items():
        checker.addUser(name.encode(), password.encode())
    return checker


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode())


def harness(checkers: list, delivery: MemoryDelivery | None = None) -> ServerHarness:
    delivery = delivery if delivery is not None else MemoryDelivery()
    h = ServerHarness(delivery, portal=makePortal(delivery, checkers), allowInsecureAuth=True, authFailureDelay=0)
    return h


class OfferedMechanismTests(unittest.TestCase):
    def test_passwordCheckerOffersAll(self) -> None:
        h = harness([memory(alice="secret")])
        ehlo = h.command(b"EHLO client.example")
        self.assertIn("AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN", ehlo.lines)

    def test_keyStoreOffersOnlySCRAM(self) -> None:
        """A store without passwords cannot check PLAIN, LOGIN or CRAM-MD5: they are not offered."""
        h = harness([ScramKeyChecker({"bob": scramKeys("pencil")})])
        ehlo = h.command(b"EHLO client.example")
        self.assertIn("AUTH SCRAM-SHA-256", ehlo.lines)
        reply = h.command(b"AUTH PLAIN " + base64.b64encode(b"\0bob\0pencil"))
        self.assertEqual((reply.code, reply.enhanced), (504, "5.5.4"))


def serverFirst(checkers: list, user: str) -> tuple[bytes | None, int | None]:
    """The salt and iteration count a fresh server session sends ``user`` in SCRAM."""
    h = harness(checkers)
    h.command(b"EHLO client.example")
    client = ScramClient(user, "guess")
    first = h.command(b"AUTH SCRAM-SHA-256 " + base64.b64encode(client.first()))
    assert first.code == 334, first
    client.final(base64.b64decode(first.text))
    return client.salt, client.iterations


class ScramUserProbingTests(unittest.TestCase):
    def test_unknownUserLooksKnown(self) -> None:
        """
        A key store's unknown user gets the same salt on every attempt, as a
        known user does, of the same length and with the same iteration
        count: the server-first-message does not tell who has an account.
        """
        checkers = [ScramKeyChecker({"bob": scramKeys("pencil")})]
        known = [serverFirst(checkers, "bob") for _ in range(2)]
        unknown = [serverFirst(checkers, "mallory") for _ in range(2)]
        self.assertEqual(known[0], known[1])
        self.assertEqual(unknown[0], unknown[1])
        salt, iterations = unknown[0]
        self.assertEqual((len(salt or b""), iterations), (len(known[0][0] or b""), known[0][1]))
        self.assertNotEqual(serverFirst(checkers, "trudy")[0], salt)


class CheckerChainTests(unittest.TestCase):
    def test_twoCheckersForOneInterface(self) -> None:
        """--auth given twice: users of both checkers can log in (a Portal alone keeps one)."""
        checkers = [memory(alice="a-pass"), memory(carol="c-pass")]
        portal = makePortal(MemoryDelivery(), checkers)
        self.assertIsInstance(portal.checkers[next(iter(portal.checkers))], CheckerChain)
        for user, password in (("alice", "a-pass"), ("carol", "c-pass")):
            h = harness(checkers)
            h.command(b"EHLO client.example")
            self.assertEqual(h.command(plain(user, password)).code, 235, user)
        h = harness(checkers)
        h.command(b"EHLO client.example")
        self.assertEqual(h.command(plain("alice", "c-pass")).code, 535)


class RealmRefusalTests(unittest.TestCase):
    def test_sessionRefusedForUser(self) -> None:
        """A delivery that refuses an authenticated user's session gets its own reply through."""

        class Session(BaseDeliverySession):
            def openMessage(self, envelope):  # pragma: no cover - not reached
                raise AssertionError

        class Delivery(MemoryDelivery):
            def openSession(self, connection):
                if connection.authenticated == "alice":
                    raise SMTPError(535, "5.7.8", "Account disabled")
                return super().openSession(connection)

        delivery = Delivery()
        h = harness([memory(alice="secret")], delivery)
        h.command(b"EHLO client.example")
        reply = h.command(plain("alice", "secret"))
        self.assertEqual((reply.code, reply.enhanced, reply.text), (535, "5.7.8", "Account disabled"))
        self.assertIsNone(h.protocol.connection.authenticated)


class CommandTextTests(unittest.TestCase):
    def test_authInTransaction(self) -> None:
        h = harness([memory(alice="secret")])
        h.command(b"EHLO client.example")
        h.command(b"MAIL FROM:<a@example.com>")
        reply = h.command(plain("alice", "secret"))
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"))
        self.assertIn("during a mail transaction", reply.text)

    def test_helpKnowsAuthAndStartTLS(self) -> None:
        h = harness([memory(alice="secret")])
        for topic in (b"AUTH", b"STARTTLS"):
            reply = h.command(b"HELP " + topic)
            self.assertEqual(reply.code, 214)
            self.assertIn(topic.decode(), reply.text)


class OptionTests(unittest.TestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--deliver", "discard", *args])
        return options

    def test_authNeedsTLS(self) -> None:
        """Without TLS AUTH would never be offered: say so at start-up instead."""
        error = self.assertRaises(usage.UsageError, self.parse, "--auth", "memory:alice:secret")
        self.assertIn("--allow-insecure-auth", str(error))
        self.assertIn("--tls-cert", str(error))

    def test_authOverTrustedTransport(self) -> None:
        options = self.parse("--auth", "memory:alice:secret", "--allow-insecure-auth")
        self.assertTrue(options["allow-insecure-auth"])
