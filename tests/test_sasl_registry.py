"""
Public registration of SASL mechanisms (:func:`txsmtp.sasl.registerMechanism`):
a mechanism registered by an application is offered in EHLO by a real
server when the portal has a checker for its credentials, and runs through
AUTH like the built-in ones.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import Attribute, implementer

from txsmtp import sasl
from txsmtp.auth import makePortal
from txsmtp.sasl import (
    MECHANISMS,
    Challenge,
    Credentials,
    Mechanism,
    SASLError,
    registerMechanism,
    unregisterMechanism,
    usableMechanism,
)
from txsmtp.server import SMTPFactory
from txsmtp.testing import MemoryDelivery, ServerHarness


class IToyCredentials(ICredentials):
    """What the toy mechanism produces: a user name and a reversed token."""

    username = Attribute("bytes")
    token = Attribute("bytes")


@implementer(IToyCredentials)
class ToyCredentials:
    def __init__(self, username: bytes, token: bytes) -> None:
        self.username = username
        self.token = token


class Toy(Mechanism):
    """X-TOY: the server says ``name?``, the client answers ``user:token``."""

    name = "X-TOY"

    def start(self, initial: bytes | None) -> Challenge | Credentials:
        if initial:
            return self.respond(initial)
        return Challenge(b"name?")

    def respond(self, response: bytes) -> Credentials:
        user, sep, token = response.partition(b":")
        if not sep or not user:
            raise SASLError("X-TOY wants user:token")
        return Credentials(ToyCredentials(user, token))


@implementer(ICredentialsChecker)
class ToyChecker:
    """Accepts a user whose token is the user name reversed."""

    credentialInterfaces = (IToyCredentials,)

    def requestAvatarId(self, credentials: ToyCredentials) -> defer.Deferred[Any]:
        if credentials.token == credentials.username[::-1]:
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin())


def PasswordChecker() -> InMemoryUsernamePasswordDatabaseDontUse:
    """A checker with passwords: it takes IUsernamePassword and IUsernameHashedPassword."""
    return InMemoryUsernamePasswordDatabaseDontUse(bob=b"pencil")


def offered(reply: object) -> list[str]:
    for line in reply.lines[1:]:  # type: ignore[attr-defined]
        if line.startswith("AUTH "):
            return line.split()[1:]
    return []


def authenticated(h: ServerHarness) -> Any:
    return h.protocol.connection.authenticated  # type: ignore[union-attr]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class RegisterMechanismTests(unittest.TestCase):
    def register(self, *args: object, **kwargs: object) -> None:
        registerMechanism(*args, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(unregisterMechanism, args[0])  # type: ignore[arg-type]

    def harness(self, checkers: list[object], **kwargs: Any) -> ServerHarness:
        delivery = MemoryDelivery()
        return ServerHarness(
            delivery,
            portal=makePortal(delivery, checkers),  # type: ignore[arg-type]
            allowInsecureAuth=True,
            authFailureDelay=0,
            **kwargs,
        )

    def test_offeredWhenCheckable(self) -> None:
        """
        A registered mechanism is offered in EHLO, after the built-in ones,
        by a server whose portal has a checker for its credentials, and an
        AUTH exchange with it logs in.
        """
        self.register("X-TOY", Toy, [IToyCredentials])
        h = self.harness([ToyChecker()])
        self.assertEqual(offered(h.command(b"EHLO client.example")), ["X-TOY"])
        self.assertEqual(h.command(b"AUTH X-TOY").code, 334)
        reply = h.command(b64(b"alice:ecila"))
        self.assertEqual((reply.code, reply.enhanced), (235, "2.7.0"))
        self.assertEqual(authenticated(h), "alice")

    def test_failedLogin(self) -> None:
        self.register("X-TOY", Toy, [IToyCredentials])
        h = self.harness([ToyChecker()])
        h.command(b"EHLO client.example")
        reply = h.command(b"AUTH X-TOY " + b64(b"alice:alice"))
        self.assertEqual((reply.code, reply.enhanced), (535, "5.7.8"))
        reply = h.command(b"AUTH X-TOY " + b64(b"no-colon"))
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.2"))

    def test_besideBuiltIns(self) -> None:
        """With password and toy checkers, every mechanism is offered, the toy one last."""
        self.register("X-TOY", Toy, [IToyCredentials])
        h = self.harness([PasswordChecker(), ToyChecker()])
        self.assertEqual(
            offered(h.command(b"EHLO client.example")), ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN", "X-TOY"]
        )

    def test_notOfferedWithoutChecker(self) -> None:
        """A portal that cannot check the mechanism's credentials does not offer it."""
        self.register("X-TOY", Toy, [IToyCredentials])
        h = self.harness([PasswordChecker()])
        self.assertNotIn("X-TOY", offered(h.command(b"EHLO client.example")))
        self.assertEqual(h.command(b"AUTH X-TOY").code, 504)
        self.assertFalse(usableMechanism("X-TOY", makePortal(MemoryDelivery(), [PasswordChecker()])))
        self.assertTrue(usableMechanism("X-TOY", makePortal(MemoryDelivery(), [ToyChecker()])))

    def test_before(self) -> None:
        """``before=`` places a mechanism ahead of another in the advertised order."""
        self.register("X-TOY", Toy, [IToyCredentials, IUsernamePassword], before="PLAIN")
        self.assertEqual(list(MECHANISMS), ["SCRAM-SHA-256", "CRAM-MD5", "X-TOY", "PLAIN", "LOGIN"])
        h = self.harness([PasswordChecker()])
        self.assertEqual(
            offered(h.command(b"EHLO client.example")), ["SCRAM-SHA-256", "CRAM-MD5", "X-TOY", "PLAIN", "LOGIN"]
        )

    def test_namedInAuthMechanisms(self) -> None:
        """A factory may be told to offer only the registered mechanism."""
        self.register("X-TOY", Toy, [IToyCredentials])
        h = self.harness([PasswordChecker(), ToyChecker()], authMechanisms=("X-TOY",))
        self.assertEqual(offered(h.command(b"EHLO client.example")), ["X-TOY"])

    def test_unregister(self) -> None:
        """Once unregistered, a factory refuses the name as unknown."""
        registerMechanism("X-TOY", Toy, [IToyCredentials])
        unregisterMechanism("X-TOY")
        self.assertNotIn("X-TOY", MECHANISMS)
        self.assertRaises(ValueError, SMTPFactory, MemoryDelivery(), "mx.example", authMechanisms=("X-TOY",))
        self.assertRaises(KeyError, unregisterMechanism, "X-TOY")

    def test_badRegistrations(self) -> None:
        """
        Names follow RFC 4422 §3.1 (1 to 20 of A-Z, 0-9, ``-`` and ``_``); a
        name is registered once unless ``replace=True``; at least one
        credential interface; ``before`` must name a registered mechanism.
        """
        for name in ("", "x-toy", "X TOY", "A" * 21, "X.TOY"):
            self.assertRaises(ValueError, registerMechanism, name, Toy, [IToyCredentials])
        self.assertRaises(ValueError, registerMechanism, "PLAIN", Toy, [IToyCredentials])
        self.assertRaises(ValueError, registerMechanism, "X-TOY", Toy, [])
        self.assertRaises(ValueError, registerMechanism, "X-TOY", Toy, [IToyCredentials], before="NOPE")
        self.assertNotIn("X-TOY", MECHANISMS)

    def test_replace(self) -> None:
        """``replace=True`` swaps the factory of a registered name, in its place."""
        original = MECHANISMS["LOGIN"]
        credentials = sasl.credentialInterfacesOf("LOGIN")
        self.addCleanup(registerMechanism, "LOGIN", original, credentials, replace=True)

        class Login2(sasl.Login):
            pass

        registerMechanism("LOGIN", Login2, [IUsernamePassword], replace=True)
        self.assertIs(MECHANISMS["LOGIN"], Login2)
        self.assertEqual(list(MECHANISMS)[-1], "LOGIN")

    def test_builtIns(self) -> None:
        """The built-in mechanisms declare what their checkers must take."""
        from twisted.cred.credentials import IUsernameHashedPassword

        self.assertEqual(sasl.credentialInterfacesOf("PLAIN"), (IUsernamePassword,))
        self.assertEqual(sasl.credentialInterfacesOf("CRAM-MD5"), (IUsernameHashedPassword,))
        self.assertEqual(
            sasl.credentialInterfacesOf("SCRAM-SHA-256"), (IUsernamePassword, sasl.IScramCredentials)
        )


class DocumentedExampleTests(unittest.TestCase):
    def test_tokenMechanism(self) -> None:
        """The X-TOKEN example of docs/auth.rst registers, is offered, and logs in."""
        from tests.test_docs import rstBlocks

        [block] = [b for b in rstBlocks("auth.rst") if "X-TOKEN" in b]
        namespace: dict[str, object] = {}
        exec(block, namespace)
        self.addCleanup(unregisterMechanism, "X-TOKEN")
        delivery = MemoryDelivery()
        checker = namespace["TokenChecker"]({"alice": b"s3cret"})  # type: ignore[operator]
        h = ServerHarness(delivery, portal=makePortal(delivery, [checker]), allowInsecureAuth=True, authFailureDelay=0)
        self.assertEqual(offered(h.command(b"EHLO client.example")), ["X-TOKEN"])
        self.assertEqual(h.command(b"AUTH X-TOKEN " + b64(b"alice\0wrong")).code, 535)
        self.assertEqual(h.command(b"AUTH X-TOKEN").code, 334)
        self.assertEqual(h.command(b64(b"alice\0s3cret")).code, 235)
        self.assertEqual(authenticated(h), "alice")
