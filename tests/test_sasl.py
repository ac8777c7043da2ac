"""
Tests for :mod:`txsmtp.sasl`: the SASL mechanisms without any I/O.

PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195)
and SCRAM-SHA-256 (RFC 5802, RFC 7677), against clients written here from
the RFCs (:class:`ScramClient` is also used by the server tests), plus
SASLprep (RFC 4013) and a hypothesis check that malformed input only ever
raises :class:`~txsmtp.sasl.SASLError`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.trial import unittest

from txsmtp import sasl
from txsmtp.sasl import (
    MECHANISMS,
    Challenge,
    CramMD5,
    Credentials,
    IScramCredentials,
    Login,
    NeedKeys,
    Plain,
    SASLError,
    ScramCredentials,
    ScramSHA256,
    saslprep,
    scramKeys,
)

__all__ = ["ScramClient", "cramResponse"]


# -- clients written from the RFCs -------------------------------------------------------


def _h(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _escapeName(name: str) -> str:
    # RFC 5802 §5.1: "=" first, then ",".
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    """
    A SCRAM-SHA-256 client (RFC 5802 §3, §5; RFC 7677), without channel
    binding: ``first()``, then ``final(serverFirst)``, then
    ``verify(serverFinal)``.
    """

    def __init__(
        self, user: str, password: str, nonce: str | None = None, authzid: str | None = None
    ) -> None:
        self.user = user
        self.password = password
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode("ascii")
        gs2 = "n," + (f"a={_escapeName(authzid)}" if authzid is not None else "") + ","
        self.gs2Header = gs2
        self.clientFirstBare = f"n={_escapeName(user)},r={self.nonce}"
        self.serverSignature: bytes | None = None
        self.salt: bytes | None = None
        self.iterations: int | None = None

    def first(self) -> bytes:
        return (self.gs2Header + self.clientFirstBare).encode("utf-8")

    def final(self, serverFirst: bytes) -> bytes:
        text = serverFirst.decode("ascii")
        m = re.fullmatch(r"r=([^,]+),s=([^,]+),i=(\d+)", text)
        if m is None:
            raise AssertionError(f"malformed server-first-message {text!r}")
        nonce, salt, iterations = m.group(1), base64.b64decode(m.group(2)), int(m.group(3))
        if not nonce.startswith(self.nonce) or len(nonce) == len(self.nonce):
            raise AssertionError(f"server nonce {nonce!r} does not extend {self.nonce!r}")
        self.salt, self.iterations = salt, iterations
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode("utf-8"), salt, iterations)
        clientKey = _h(salted, b"Client Key")
        storedKey = hashlib.sha256(clientKey).digest()
        serverKey = _h(salted, b"Server Key")
        channel = base64.b64encode(self.gs2Header.encode("utf-8")).decode("ascii")
        withoutProof = f"c={channel},r={nonce}"
        authMessage = f"{self.clientFirstBare},{text},{withoutProof}".encode()
        clientSignature = _h(storedKey, authMessage)
        proof = bytes(a ^ b for a, b in zip(clientKey, clientSignature, strict=True))
        self.serverSignature = _h(serverKey, authMessage)
        return f"{withoutProof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def verify(self, serverFinal: bytes) -> bool:
        assert self.serverSignature is not None
        return serverFinal == b"v=" + base64.b64encode(self.serverSignature)


def cramResponse(user: bytes, password: bytes, challenge: bytes) -> bytes:
    """The CRAM-MD5 response (RFC 2195 §2): user, space, hex HMAC-MD5 of the challenge."""
    return user + b" " + hmac.new(password, challenge, hashlib.md5).hexdigest().encode("ascii")


def runScram(
    client: ScramClient, mechanism: ScramSHA256 | None = None, keys: sasl.ScramKeys | None = None
) -> tuple[ScramSHA256, ScramCredentials]:
    """Run an exchange up to the credentials (made-up salt, or ``keys``' salt)."""
    mechanism = mechanism or ScramSHA256("mx.example")
    step = mechanism.start(client.first())
    assert isinstance(step, NeedKeys), step
    if keys is None:
        challenge = mechanism.useRandomSalt()
    else:
        challenge = mechanism.keysFound(keys.salt, keys.iterations)
    assert isinstance(challenge, Challenge), challenge
    done = mechanism.respond(client.final(challenge.data))
    assert isinstance(done, Credentials), done
    return mechanism, done.credentials


# RFC 7677 §3.
RFC7677_USER = "user"
RFC7677_PASSWORD = "pencil"
RFC7677_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_NONCE = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = f"r={RFC7677_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC7677_CLIENT_FINAL_NO_PROOF = f"c=biws,r={RFC7677_NONCE}"
RFC7677_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC7677_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


# -- SASLprep --------------------------------------------------------------------------------


class SASLprepTests(unittest.TestCase):
    """saslprep against the examples of RFC 4013 §3 and its prohibitions."""

    def test_rfc4013_examples(self) -> None:
        """The mapping examples of RFC 4013 §3."""
        self.assertEqual(saslprep("I\u00adX"), "IX")  # soft hyphen mapped to nothing
        self.assertEqual(saslprep("user"), "user")
        self.assertEqual(saslprep("USER"), "USER")  # case preserved
        self.assertEqual(saslprep("\u00aa"), "a")  # NFKC
        self.assertEqual(saslprep("\u2168"), "IX")  # NFKC

    def test_rfc4013_errors(self) -> None:
        """RFC 4013 §3: a control character and bidi text ending in a digit are refused."""
        for text in ["\u0007", "\u0627\u0031"]:
            with self.assertRaises(SASLError, msg=repr(text)):
                saslprep(text)

    def test_non_ascii_space_is_space(self) -> None:
        """RFC 4013 §2.1: non-ASCII spaces (C.1.2) map to SPACE."""
        self.assertEqual(saslprep("pass\u00a0word"), "pass word")
        self.assertEqual(saslprep("pass\u2003word"), "pass word")

    def test_prohibited(self) -> None:
        """RFC 4013 §2.3: controls, private use, non-characters, unassigned, mixed bidi."""
        for text in ["a\x7fb", "a\x00b", "\ue000", "\ufffe", "a\u0221", "a\u0627", "\u200e"]:
            with self.assertRaises(SASLError, msg=repr(text)):
                saslprep(text)

    def test_right_to_left(self) -> None:
        """All-RandALCat text is allowed."""
        self.assertEqual(saslprep("\u0627\u0628"), "\u0627\u0628")

    def test_printable_ascii_unchanged(self) -> None:
        self.assertEqual(saslprep("p@ss w0rd!~"), "p@ss w0rd!~")


# -- the registry --------------------------------------------------------------------------


class RegistryTests(unittest.TestCase):
    def test_mechanisms(self) -> None:
        """Strongest first; the names match the classes; PLAIN and LOGIN are plaintext."""
        self.assertEqual(list(MECHANISMS), ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"])
        for name, cls in MECHANISMS.items():
            self.assertEqual(cls.name, name)
        self.assertEqual(
            {name for name, cls in MECHANISMS.items() if cls.plaintext}, {"PLAIN", "LOGIN"}
        )


# -- PLAIN ---------------------------------------------------------------------------------------


class PlainTests(unittest.TestCase):
    """PLAIN (RFC 4616): message = [authzid] UTF8NUL authcid UTF8NUL passwd."""

    def credentials(self, message: bytes) -> object:
        step = Plain("mx.example").start(message)
        self.assertIsInstance(step, Credentials)
        return step.credentials  # type: ignore[union-attr]

    def test_no_initial_response(self) -> None:
        """Without an initial response the server sends an empty challenge."""
        mechanism = Plain()
        self.assertEqual(mechanism.start(None), Challenge(b""))
        step = mechanism.respond(b"\0tim\0tanstaaftanstaaf")
        self.assertIsInstance(step, Credentials)
        self.assertEqual(
            (step.credentials.username, step.credentials.password), (b"tim", b"tanstaaftanstaaf")
        )
        self.assertIsNone(step.final)

    def test_empty_authzid(self) -> None:
        creds = self.credentials(b"\0tim\0tanstaaftanstaaf")
        self.assertTrue(IUsernamePassword.providedBy(creds))
        self.assertEqual((creds.username, creds.password), (b"tim", b"tanstaaftanstaaf"))
        self.assertTrue(creds.checkPassword(b"tanstaaftanstaaf"))
        self.assertFalse(creds.checkPassword(b"tanstaaftanstaaF"))

    def test_authzid_equal_to_authcid(self) -> None:
        """RFC 4616 §2: an authzid equal to the authcid is the same as none."""
        creds = self.credentials(b"tim\0tim\0pw")
        self.assertEqual((creds.username, creds.password), (b"tim", b"pw"))

    def test_authzid_other_user_refused(self) -> None:
        """Acting as someone else is not supported: refused, never silently granted."""
        with self.assertRaises(SASLError):
            Plain().start(b"Ursel\0Kurt\0xipj3plmq")

    def test_missing_parts(self) -> None:
        for message in [
            b"",
            b"tim",
            b"\0tim",
            b"tim\0pw",
            b"\0\0pw",
            b"\0tim\0",
            b"\0\0",
            b"a\0b\0c\0d",
        ]:
            with self.assertRaises(SASLError, msg=repr(message)):
                Plain().start(message)

    def test_not_utf8(self) -> None:
        """RFC 4616 §2: every part is UTF-8."""
        for message in [b"\xff\0tim\0pw", b"\0t\xc3im\0pw", b"\0tim\0p\xe9w"]:
            with self.assertRaises(SASLError, msg=repr(message)):
                Plain().start(message)

    def test_saslprep_applied(self) -> None:
        """RFC 4616 §2: authcid and password are prepared with SASLprep."""
        creds = self.credentials("\0\u2168\0I\u00adX pass\u00a0word".encode())
        self.assertEqual((creds.username, creds.password), (b"IX", b"IX pass word"))
        self.assertEqual(self.credentials("\0j\u00f6rg\0p".encode()).username, "j\u00f6rg".encode())

    def test_prohibited_characters_refused(self) -> None:
        for message in [b"\0tim\0pass\x07", b"\0ti\x01m\0pw"]:
            with self.assertRaises(SASLError, msg=repr(message)):
                Plain().start(message)

    def test_plaintext(self) -> None:
        self.assertTrue(Plain.plaintext)


# -- LOGIN -----------------------------------------------------------------------------------------


class LoginTests(unittest.TestCase):
    """LOGIN: "Username:", then "Password:"."""

    def test_steps(self) -> None:
        mechanism = Login()
        self.assertEqual(mechanism.start(None), Challenge(b"Username:"))
        self.assertEqual(mechanism.respond(b"alice"), Challenge(b"Password:"))
        step = mechanism.respond(b"s3cret")
        self.assertIsInstance(step, Credentials)
        self.assertEqual(
            (step.credentials.username, step.credentials.password), (b"alice", b"s3cret")
        )
        self.assertTrue(step.credentials.checkPassword(b"s3cret"))

    def test_initial_response_is_the_user_name(self) -> None:
        mechanism = Login()
        self.assertEqual(mechanism.start(b"alice"), Challenge(b"Password:"))
        step = mechanism.respond(b"pw")
        self.assertEqual(step.credentials.username, b"alice")  # type: ignore[union-attr]

    def test_empty_user_name(self) -> None:
        with self.assertRaises(SASLError):
            Login().start(b"")
        mechanism = Login()
        mechanism.start(None)
        with self.assertRaises(SASLError):
            mechanism.respond(b"")

    def test_empty_password_is_a_credential(self) -> None:
        """An empty password is for the checker to refuse, not a syntax error."""
        mechanism = Login()
        mechanism.start(b"alice")
        step = mechanism.respond(b"")
        self.assertIsInstance(step, Credentials)
        self.assertFalse(step.credentials.checkPassword(b"x"))  # type: ignore[union-attr]

    def test_not_utf8(self) -> None:
        mechanism = Login()
        with self.assertRaises(SASLError):
            mechanism.start(b"\xff\xfe")
        mechanism = Login()
        mechanism.start(b"alice")
        with self.assertRaises(SASLError):
            mechanism.respond(b"pass\xc3")

    def test_saslprep_applied(self) -> None:
        mechanism = Login()
        mechanism.start("\u2168".encode())
        step = mechanism.respond("pass\u00a0word".encode())
        self.assertEqual(
            (step.credentials.username, step.credentials.password), (b"IX", b"pass word")
        )

    def test_plaintext(self) -> None:
        self.assertTrue(Login.plaintext)


# -- CRAM-MD5 ---------------------------------------------------------------------------------------


class CramMD5Tests(unittest.TestCase):
    """CRAM-MD5 (RFC 2195)."""

    def test_challenge_is_a_msg_id(self) -> None:
        """RFC 2195 §2: the challenge is a msg-id, unique, naming the server."""
        first = CramMD5("mx.example").start(None)
        second = CramMD5("mx.example").start(None)
        self.assertIsInstance(first, Challenge)
        self.assertRegex(first.data, rb"^<[^<>@\s]+@mx\.example>$")
        self.assertNotEqual(first.data, second.data)

    def test_rfc2195_digest(self) -> None:
        """The example of RFC 2195 §2, through twisted.cred's checkPassword."""
        from twisted.cred.credentials import CramMD5Credentials

        challenge = b"<1896.697170952@postoffice.reston.mci.net>"
        response = cramResponse(b"tim", b"tanstaaftanstaaf", challenge)
        self.assertEqual(response, b"tim b913a602c7eda7a495b4e6e7334d3890")
        creds = CramMD5Credentials("postoffice.reston.mci.net")
        creds.challenge = challenge
        creds.setResponse(response)
        self.assertTrue(creds.checkPassword(b"tanstaaftanstaaf"))

    def test_exchange(self) -> None:
        mechanism = CramMD5("mx.example")
        challenge = mechanism.start(None)
        step = mechanism.respond(cramResponse(b"alice", b"s3cret", challenge.data))  # type: ignore[union-attr]
        self.assertIsInstance(step, Credentials)
        creds = step.credentials
        self.assertEqual(creds.username, b"alice")
        self.assertTrue(creds.checkPassword(b"s3cret"))
        self.assertFalse(creds.checkPassword(b"s3creT"))
        # And through a twisted.cred checker holding the plaintext password.
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"s3cret")
        self.assertEqual(self.successResultOf(checker.requestAvatarId(creds)), b"alice")

    def test_digest_of_another_challenge_fails(self) -> None:
        """A digest replayed from another exchange does not verify."""
        old = CramMD5("mx.example").start(None)
        mechanism = CramMD5("mx.example")
        mechanism.start(None)
        step = mechanism.respond(cramResponse(b"alice", b"s3cret", old.data))  # type: ignore[union-attr]
        self.assertFalse(step.credentials.checkPassword(b"s3cret"))  # type: ignore[union-attr]

    def test_no_initial_response(self) -> None:
        """RFC 2195: the server speaks first; an initial response is an error."""
        with self.assertRaises(SASLError):
            CramMD5().start(b"alice 0123456789abcdef0123456789abcdef")
        # An empty initial response ("=") is the same as none.
        self.assertIsInstance(CramMD5().start(b""), Challenge)

    def test_malformed_responses(self) -> None:
        for response in [
            b"",
            b"alice",
            b"alice ",
            b" 0123456789abcdef0123456789abcdef",
            b"alice 0123456789abcdef0123456789abcde",
            b"alice 0123456789abcdef0123456789abcdef0",
            b"alice 0123456789abcdef0123456789abcdeg",
            b"alice\t0123456789abcdef0123456789abcdef",
        ]:
            mechanism = CramMD5()
            mechanism.start(None)
            with self.assertRaises(SASLError, msg=repr(response)):
                mechanism.respond(response)

    def test_not_plaintext(self) -> None:
        self.assertFalse(CramMD5.plaintext)


# -- SCRAM-SHA-256 ----------------------------------------------------------------------------------


class ScramTests(unittest.TestCase):
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) against :class:`ScramClient`."""

    def test_rfc7677_vector_proof_math(self) -> None:
        """
        The exchange of RFC 7677 §3 checked by ScramCredentials: the
        password verifies the client proof, and the server signature is the
        one in the RFC's server-final-message.
        """
        clientFirstBare = RFC7677_CLIENT_FIRST[3:]
        authMessage = (
            f"{clientFirstBare},{RFC7677_SERVER_FIRST},{RFC7677_CLIENT_FINAL_NO_PROOF}"
        ).encode()
        creds = ScramCredentials(
            b"user", RFC7677_SALT, 4096, authMessage, base64.b64decode(RFC7677_PROOF)
        )
        self.assertTrue(creds.checkPassword(b"pencil"))
        self.assertEqual(
            b"v=" + base64.b64encode(creds.serverSignature), RFC7677_SERVER_FINAL.encode()
        )
        # The same through stored keys (a key store never sees the password).
        keys = scramKeys("pencil", RFC7677_SALT, 4096)
        creds2 = ScramCredentials(
            b"user", RFC7677_SALT, 4096, authMessage, base64.b64decode(RFC7677_PROOF)
        )
        self.assertTrue(creds2.checkKeys(keys.storedKey, keys.serverKey))
        self.assertEqual(creds2.serverSignature, creds.serverSignature)
        # A wrong password or tampered proof fails, and leaves no signature.
        self.assertFalse(creds.checkPassword(b"pencil2"))
        self.assertIsNone(creds.serverSignature)
        bad = bytearray(base64.b64decode(RFC7677_PROOF))
        bad[0] ^= 1
        creds3 = ScramCredentials(b"user", RFC7677_SALT, 4096, authMessage, bytes(bad))
        self.assertFalse(creds3.checkPassword(b"pencil"))
        self.assertFalse(
            ScramCredentials(b"user", RFC7677_SALT, 4096, authMessage, b"short").checkPassword(
                b"pencil"
            )
        )

    def test_rfc7677_vector_client(self) -> None:
        """The client here computes the RFC 7677 §3 proof and server signature."""
        client = ScramClient(RFC7677_USER, RFC7677_PASSWORD, nonce=RFC7677_CLIENT_NONCE)
        self.assertEqual(client.first(), RFC7677_CLIENT_FIRST.encode())
        final = client.final(RFC7677_SERVER_FIRST.encode())
        self.assertEqual(final, f"{RFC7677_CLIENT_FINAL_NO_PROOF},p={RFC7677_PROOF}".encode())
        self.assertTrue(client.verify(RFC7677_SERVER_FINAL.encode()))

    def test_rfc7677_salt_through_the_mechanism(self) -> None:
        """
        The mechanism with the RFC's client nonce and salt (keysFound) and a
        fixed random source: the server-first-message carries that salt and
        count and extends the client nonce; the RFC's password verifies and
        the server-final-message is the client's expected signature.
        """
        mechanism = ScramSHA256("mx.example")
        with mock.patch.object(sasl.os, "urandom", lambda n: b"\x01" * n):
            step = mechanism.start(RFC7677_CLIENT_FIRST.encode())
            self.assertEqual(step, NeedKeys("user"))
            challenge = mechanism.keysFound(RFC7677_SALT, 4096)
        suffix = base64.b64encode(b"\x01" * 18).decode()
        self.assertEqual(
            challenge.data,
            f"r={RFC7677_CLIENT_NONCE}{suffix},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode(),
        )
        client = ScramClient("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
        done = mechanism.respond(client.final(challenge.data))
        self.assertIsInstance(done, Credentials)
        self.assertIsNone(done.final)
        with self.assertRaises(SASLError):
            mechanism.serverFinal()  # not verified yet
        self.assertTrue(done.credentials.checkPassword(b"pencil"))
        self.assertTrue(client.verify(mechanism.serverFinal()))

    def test_random_salt_and_plaintext_checker(self) -> None:
        """With a plaintext-password checker: a made-up salt (stable per user), 4096 iterations, IUsernamePassword."""
        client = ScramClient("alice", "s3cret")
        mechanism, creds = runScram(client)
        self.assertEqual(client.iterations, 4096)
        self.assertEqual(len(client.salt or b""), 16)
        # Checkers that hold passwords take IUsernamePassword.
        self.assertTrue(IUsernamePassword.providedBy(creds))
        self.assertEqual(creds.username, b"alice")
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"s3cret")
        self.assertEqual(self.successResultOf(checker.requestAvatarId(creds)), b"alice")
        self.assertTrue(client.verify(mechanism.serverFinal()))
        # Another exchange gets another nonce; the salt, derived from the
        # user name, is the same (see test_fake_salt_is_stable).
        other = ScramClient("alice", "s3cret")
        runScram(other)
        self.assertNotEqual(other.nonce, client.nonce)
        self.assertEqual(other.salt, client.salt)

    def test_fake_salt_is_stable(self) -> None:
        """
        Without stored keys (an unknown user of a key store, or a password
        checker) the salt is derived from a server secret and the user
        name: the same user gets the same salt on every attempt, as a
        known user does, and with the server's usual count; another user
        gets another salt of the same length.  A random salt per attempt
        would tell an unknown user from a known one.
        """
        salts = []
        for _ in range(3):
            client = ScramClient("mallory", "guess")
            runScram(client)
            salts.append((client.salt, client.iterations))
        self.assertEqual(salts, [salts[0]] * 3)
        salt, iterations = salts[0]
        self.assertEqual(len(salt or b""), 16)
        self.assertEqual(iterations, ScramSHA256.iterations)
        other = ScramClient("trudy", "guess")
        runScram(other)
        self.assertNotEqual(other.salt, salt)
        self.assertEqual(len(other.salt or b""), 16)

    def test_fake_salt_secret(self) -> None:
        """The salt depends on the secret: a server may set its own, stable across restarts."""
        client = ScramClient("mallory", "guess")
        runScram(client)
        self.patch(ScramSHA256, "fakeSaltSecret", b"this server's own secret")
        first, second = ScramClient("mallory", "guess"), ScramClient("mallory", "guess")
        runScram(first)
        runScram(second)
        self.assertEqual(first.salt, second.salt)
        self.assertNotEqual(first.salt, client.salt)
        self.assertEqual(
            first.salt, hmac.new(b"this server's own secret", b"mallory", hashlib.sha256).digest()[:16]
        )

    def test_wrong_password(self) -> None:
        client = ScramClient("alice", "wrong")
        mechanism, creds = runScram(client)
        self.assertFalse(creds.checkPassword(b"s3cret"))
        with self.assertRaises(SASLError):
            mechanism.serverFinal()

    def test_key_store(self) -> None:
        """With stored keys: the stored salt and count are sent, and checkKeys verifies."""
        keys = scramKeys("s3cret", b"0123456789abcdef", 8192)
        client = ScramClient("alice", "s3cret")
        mechanism, creds = runScram(client, keys=keys)
        self.assertEqual((client.salt, client.iterations), (b"0123456789abcdef", 8192))
        # Key stores take IScramCredentials.
        self.assertTrue(IScramCredentials.providedBy(creds))
        self.assertTrue(creds.checkKeys(keys.storedKey, keys.serverKey))
        self.assertTrue(client.verify(mechanism.serverFinal()))
        wrong = scramKeys("other", b"0123456789abcdef", 8192)
        self.assertFalse(creds.checkKeys(wrong.storedKey, wrong.serverKey))

    def test_scram_keys(self) -> None:
        """scramKeys: RFC 5802 §3 StoredKey = H(HMAC(SaltedPassword, "Client Key"))."""
        keys = scramKeys("pencil", RFC7677_SALT, 4096)
        salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC7677_SALT, 4096)
        self.assertEqual(keys.storedKey, hashlib.sha256(_h(salted, b"Client Key")).digest())
        self.assertEqual(keys.serverKey, _h(salted, b"Server Key"))
        self.assertEqual((keys.salt, keys.iterations), (RFC7677_SALT, 4096))
        self.assertEqual(len(scramKeys("x").salt), 16)
        self.assertNotEqual(scramKeys("x").salt, scramKeys("x").salt)
        # SASLprep: the soft hyphen is mapped to nothing.
        self.assertEqual(scramKeys("pen\u00adcil", RFC7677_SALT, 4096), keys)

    def test_user_name_escapes(self) -> None:
        """RFC 5802 §5.1: "=2C" and "=3D" in n= are "," and "="."""
        client = ScramClient("a,b=c", "pw")
        self.assertIn(b"n=a=2Cb=3Dc,", client.first())
        mechanism = ScramSHA256()
        self.assertEqual(mechanism.start(client.first()), NeedKeys("a,b=c"))

    def test_authzid_and_y_flag(self) -> None:
        """An authzid equal to the user, and the "y" flag (client could bind, server cannot), work."""
        client = ScramClient("alice", "pw", authzid="alice")
        mechanism, creds = runScram(client)
        self.assertTrue(creds.checkPassword(b"pw"))
        client = ScramClient("alice", "pw")
        client.gs2Header = "y,,"
        mechanism, creds = runScram(client)
        self.assertTrue(creds.checkPassword(b"pw"))

    def test_empty_initial_response_asks_for_client_first(self) -> None:
        mechanism = ScramSHA256()
        self.assertEqual(mechanism.start(None), Challenge(b""))
        self.assertEqual(ScramSHA256().start(b""), Challenge(b""))
        client = ScramClient("alice", "pw")
        self.assertEqual(mechanism.respond(client.first()), NeedKeys("alice"))

    def test_malformed_client_first(self) -> None:
        mechanism = ScramSHA256()
        mechanism.start(None)
        with self.assertRaises(SASLError):
            mechanism.respond(b"")  # an empty client-first in answer to the empty challenge
        for message in [
            b"n",
            b"n,,",
            b"n,,n=alice",
            b"n,,r=abc",
            b"n,,r=abc,n=alice",
            b"p=tls-unique,,n=alice,r=abc",  # channel binding: not offered
            b"x,,n=alice,r=abc",
            b"n,b=alice,n=alice,r=abc",  # authzid without a=
            b"n,a=bob,n=alice,r=abc",  # acting as another user
            b"n,,m=ext,n=alice,r=abc",  # mandatory extension
            b"n,,n=,r=abc",
            b"n,,n=alice,r=",
            b"n,,n=al=41ice,r=abc",  # bad escape
            b"n,,n=alice=,r=abc",
            b"n,,n=al\x07ice,r=abc",  # SASLprep prohibits
            b"n,,n=\xffalice,r=abc",  # not UTF-8
        ]:
            with self.assertRaises(SASLError, msg=repr(message)):
                ScramSHA256().start(message)

    def _fixedServerFirst(self, client: ScramClient) -> tuple[ScramSHA256, bytes]:
        """A mechanism after server-first, with a fixed random source (so every run is the same)."""
        mechanism = ScramSHA256()
        with mock.patch.object(sasl.os, "urandom", lambda n: b"\x02" * n):
            mechanism.start(client.first())
            serverFirst = mechanism.useRandomSalt().data
        return mechanism, serverFirst

    def test_malformed_client_final(self) -> None:
        client = ScramClient("alice", "pw")
        mechanism, serverFirst = self._fixedServerFirst(client)
        good = client.final(serverFirst)
        # The fixed random source gives every mechanism the same server-first,
        # so the well-formed message is accepted by a fresh one:
        self.assertIsInstance(mechanism.respond(good), Credentials)
        withoutProof, _, proof = good.decode().rpartition(",p=")
        channel, nonce = withoutProof.split(",")
        for message in [
            b"",
            withoutProof.encode(),  # no proof
            f"{nonce},{channel},p={proof}".encode(),  # order
            f"c=eSws,{nonce},p={proof}".encode(),  # binds "y,," but the header was "n,,"
            f"c=biws,r={client.nonce},p={proof}".encode(),  # the client's nonce alone
            f"c=biws,{nonce}x,p={proof}".encode(),
            f"c=bi*s,{nonce},p={proof}".encode(),  # bad base64
            f"{withoutProof},p=not*base64".encode(),
            f"c=biws,p={proof}".encode(),
            b"\xff" + good,  # not UTF-8
            good + b"\xff",
        ]:
            mechanism, _ = self._fixedServerFirst(client)
            with self.assertRaises(SASLError, msg=repr(message)):
                mechanism.respond(message)

    def test_client_final_with_another_exchanges_nonce(self) -> None:
        """A client-final-message answering another server-first is refused."""
        client = ScramClient("alice", "pw", nonce="fixednonce")
        _, serverFirst = self._fixedServerFirst(client)
        final = client.final(serverFirst)
        mechanism = ScramSHA256()
        mechanism.start(client.first())
        mechanism.useRandomSalt()  # a new server nonce
        with self.assertRaises(SASLError):
            mechanism.respond(final)

    def test_out_of_order(self) -> None:
        """Calls in the wrong state raise SASLError, never something else."""
        mechanism = ScramSHA256()
        mechanism.start(ScramClient("alice", "pw").first())
        with self.assertRaises(SASLError):
            mechanism.respond(b"c=biws,r=x,p=AAAA")  # before the keys were looked up
        with self.assertRaises(SASLError):
            ScramSHA256().keysFound(b"salt", 4096)  # before client-first
        with self.assertRaises(SASLError):
            ScramSHA256().useRandomSalt()
        client = ScramClient("alice", "pw")
        mechanism, creds = runScram(client)
        with self.assertRaises(SASLError):
            mechanism.respond(b"")  # after the exchange
        with self.assertRaises(SASLError):
            mechanism.keysFound(b"salt", 4096)

    def test_not_plaintext(self) -> None:
        self.assertFalse(ScramSHA256.plaintext)


# -- arbitrary input ---------------------------------------------------------------------------------


def _drive(name: str, messages: list[bytes], keys: bool) -> None:
    """Feed ``messages`` to a mechanism as a client would; only SASLError may escape."""
    mechanism = MECHANISMS[name]("mx.example")
    try:
        step = mechanism.start(messages[0] if messages else None)
        for message in messages[1:]:
            if isinstance(step, NeedKeys):
                assert isinstance(mechanism, ScramSHA256)
                step = mechanism.keysFound(b"salt", 1) if keys else mechanism.useRandomSalt()
                continue
            if isinstance(step, Credentials):
                creds = step.credentials
                # A checker may call this with anything it stores.
                creds.checkPassword(message)
                return
            step = mechanism.respond(message)
    except SASLError:
        return


_scramAlphabet = st.sampled_from(
    [
        b"n",
        b"y",
        b"p",
        b",",
        b"=",
        b"a=",
        b"n=",
        b"r=",
        b"c=",
        b"p=",
        b"s=",
        b"m=",
        b"biws",
        b"=2C",
        b"=3D",
        b"AAAA",
        b"x",
        b"\xff",
        b"\xc3\xa9",
        b"\x00",
        "\u0627".encode(),
    ]
)


class ArbitraryInputTests(unittest.TestCase):
    """Whatever a client sends, a mechanism raises SASLError or carries on: nothing else."""

    @settings(max_examples=300, deadline=None)
    @given(
        name=st.sampled_from(sorted(MECHANISMS)),
        messages=st.lists(st.binary(max_size=80), max_size=5),
        keys=st.booleans(),
    )
    def test_arbitrary_bytes(self, name: str, messages: list[bytes], keys: bool) -> None:
        _drive(name, messages, keys)

    @settings(max_examples=300, deadline=None)
    @given(
        messages=st.lists(
            st.lists(_scramAlphabet, max_size=12).map(b"".join), min_size=1, max_size=4
        ),
        keys=st.booleans(),
    )
    def test_scram_shaped_input(self, messages: list[bytes], keys: bool) -> None:
        """Input made of SCRAM's own pieces reaches the deeper branches."""
        _drive("SCRAM-SHA-256", [b"n,,n=alice,r=abc", *messages] if keys else messages, keys)

    @settings(max_examples=200, deadline=None)
    @given(
        user=st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
        ),
        password=st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
        ),
    )
    def test_plain_round_trip(self, user: str, password: str) -> None:
        """Any printable ASCII user name and password come through PLAIN unchanged."""
        step = Plain().start(b"\0" + user.encode() + b"\0" + password.encode())
        self.assertEqual(
            (step.credentials.username, step.credentials.password),  # type: ignore[union-attr]
            (user.encode(), password.encode()),
        )

    @settings(max_examples=30, deadline=None)
    @given(
        user=st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
        ),
        password=st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12
        ),
    )
    def test_scram_round_trip(self, user: str, password: str) -> None:
        """Any printable ASCII user name (commas and equals signs too) and password authenticate."""
        mechanism = ScramSHA256()
        client = ScramClient(user, password)
        self.assertEqual(mechanism.start(client.first()), NeedKeys(user))
        challenge = mechanism.keysFound(b"salt", 2)
        done = mechanism.respond(client.final(challenge.data))
        self.assertTrue(done.credentials.checkPassword(password.encode()))  # type: ignore[union-attr]
        self.assertTrue(client.verify(mechanism.serverFinal()))
