"""
Tests for :mod:`txsmtp.saslclient`: the client-side SASL mechanisms.

Known answers from the specifications (RFC 4616 §4, RFC 2195 §2,
RFC 7677 §3, Google's XOAUTH2 description), round trips against the
server-side mechanisms of :mod:`txsmtp.sasl` and a twisted.cred checker,
:func:`~txsmtp.saslclient.chooseMechanism`, and hypothesis checks that
whatever a server sends, the mechanisms raise
:class:`~txsmtp.saslclient.SASLClientError` or carry on: nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.error import UnauthorizedLogin
from twisted.trial import unittest

from txsmtp import sasl
from txsmtp.saslclient import (
    MECHANISM_PREFERENCE,
    ClientMechanism,
    CramMD5,
    Login,
    Plain,
    SASLClientError,
    ScramSHA256,
    XOAuth2,
    chooseMechanism,
)

# RFC 7677 §3.
RFC7677_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_NONCE = b"rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_SERVER_FIRST = b"r=" + RFC7677_NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC7677_CLIENT_FINAL = (
    b"c=biws,r=" + RFC7677_NONCE + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# RFC 2195 §2.
RFC2195_CHALLENGE_B64 = b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
RFC2195_RESPONSE_B64 = b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"

# Google's XOAUTH2 description: the initial client response and error challenge.
XOAUTH2_USER = "someuser@example.com"
XOAUTH2_TOKEN = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
XOAUTH2_INITIAL_B64 = (
    b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
    b"YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
)
XOAUTH2_ERROR_B64 = (
    b"eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9t"
    b"YWlsLmdvb2dsZS5jb20vIn0K"
)

ALL_NAMES = ("SCRAM-SHA-256", "XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN")


def scramAgainst(
    clientNonce: str = RFC7677_CLIENT_NONCE,
    serverFirst: bytes = RFC7677_SERVER_FIRST,
    user: str = "user",
    password: str = "pencil",
) -> tuple[ScramSHA256, bytes]:
    """A client that sent its first message and answered ``serverFirst``."""
    client = ScramSHA256(user, password, nonce=clientNonce)
    client.initialResponse()
    return client, client.respond(serverFirst)


def serverFirst(
    nonce: bytes = RFC7677_NONCE,
    salt: bytes = b"W22ZaJ0SNY7soEsUEjb6gQ==",
    iterations: bytes = b"4096",
) -> bytes:
    return b"r=" + nonce + b",s=" + salt + b",i=" + iterations


# -- known answers --------------------------------------------------------------------------


class KnownAnswerTests(unittest.TestCase):
    """The examples printed in the specifications."""

    def test_scram_rfc7677(self) -> None:
        """
        The RFC 7677 §3 exchange: client-first, client-final with the RFC's
        proof, and the RFC's server-final accepted, as a challenge and again
        at success.
        """
        client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
        self.assertEqual(client.initialResponse(), RFC7677_CLIENT_FIRST)
        self.assertEqual(client.respond(RFC7677_SERVER_FIRST), RFC7677_CLIENT_FINAL)
        self.assertEqual(client.respond(RFC7677_SERVER_FINAL), b"")
        self.assertIsNone(client.verifySuccess(None))
        self.assertIsNone(client.verifySuccess(RFC7677_SERVER_FINAL))

    def test_scram_rfc7677_final_at_success(self) -> None:
        """The server-final-message may reach the client only with the 235."""
        client, final = scramAgainst()
        self.assertEqual(final, RFC7677_CLIENT_FINAL)
        self.assertIsNone(client.verifySuccess(RFC7677_SERVER_FINAL))

    def test_cram_md5_rfc2195(self) -> None:
        """The RFC 2195 §2 example: tim, tanstaaftanstaaf."""
        client = CramMD5("tim", "tanstaaftanstaaf")
        self.assertIsNone(client.initialResponse())
        response = client.respond(base64.b64decode(RFC2195_CHALLENGE_B64))
        self.assertEqual(response, b"tim b913a602c7eda7a495b4e6e7334d3890")
        self.assertEqual(base64.b64encode(response), RFC2195_RESPONSE_B64)

    def test_plain_rfc4616(self) -> None:
        """The two messages of RFC 4616 §4."""
        self.assertEqual(
            Plain("tim", "tanstaaftanstaaf").initialResponse(), b"\0tim\0tanstaaftanstaaf"
        )
        self.assertEqual(
            Plain("Kurt", "xipj3plmq", authzid="Ursel").initialResponse(),
            b"Ursel\0Kurt\0xipj3plmq",
        )

    def test_xoauth2_google(self) -> None:
        """Google's example initial client response, byte for byte after base64."""
        client = XOAuth2(XOAUTH2_USER, XOAUTH2_TOKEN)
        self.assertEqual(base64.b64encode(client.initialResponse()), XOAUTH2_INITIAL_B64)
        self.assertEqual(
            client.initialResponse(),
            b"user=someuser@example.com\x01auth=Bearer " + XOAUTH2_TOKEN.encode() + b"\x01\x01",
        )

    def test_login_usual_prompts(self) -> None:
        """The usual SMTP prompts, base64 ``VXNlcm5hbWU6`` and ``UGFzc3dvcmQ6``."""
        client = Login("alice", "secret")
        self.assertEqual(client.respond(base64.b64decode(b"VXNlcm5hbWU6")), b"alice")
        self.assertEqual(client.respond(base64.b64decode(b"UGFzc3dvcmQ6")), b"secret")


# -- PLAIN ---------------------------------------------------------------------------------


class PlainTests(unittest.TestCase):
    def test_attributes(self) -> None:
        self.assertEqual(Plain.name, "PLAIN")
        self.assertTrue(Plain.plaintext)

    def test_empty_challenge_without_initial_response(self) -> None:
        """A server asking with an empty 334 gets the message, once."""
        client = Plain("alice", "secret")
        self.assertEqual(client.respond(b""), b"\0alice\0secret")
        self.assertRaises(SASLClientError, client.respond, b"")

    def test_non_empty_challenge(self) -> None:
        self.assertRaises(SASLClientError, Plain("alice", "secret").respond, b"what?")

    def test_utf8(self) -> None:
        self.assertEqual(
            Plain("jürgen", "pässwörd").initialResponse(),
            "\0jürgen\0pässwörd".encode(),
        )

    def test_unsendable_credentials(self) -> None:
        """NUL separates the fields; empty user names and passwords are not in RFC 4616's grammar."""
        for args in [
            ("al\0ice", "secret", ""),
            ("alice", "sec\0ret", ""),
            ("alice", "secret", "bo\0b"),
            ("", "secret", ""),
            ("alice", "", ""),
            ("alice", "\ud800", ""),
        ]:
            self.assertRaises(SASLClientError, Plain, *args)

    def test_verify_success_accepts(self) -> None:
        self.assertIsNone(Plain("alice", "secret").verifySuccess(None))


# -- LOGIN ---------------------------------------------------------------------------------


class LoginTests(unittest.TestCase):
    def test_attributes(self) -> None:
        self.assertEqual(Login.name, "LOGIN")
        self.assertTrue(Login.plaintext)
        self.assertIsNone(Login("alice", "secret").initialResponse())

    def test_answers_by_position(self) -> None:
        """The prompt text is ignored, even when it says the opposite."""
        client = Login("alice", "secret")
        self.assertEqual(client.respond(b"Password:"), b"alice")
        self.assertEqual(client.respond(b""), b"secret")

    def test_third_challenge(self) -> None:
        client = Login("alice", "secret")
        client.respond(b"Username:")
        client.respond(b"Password:")
        self.assertRaises(SASLClientError, client.respond, b"Again:")

    def test_utf8(self) -> None:
        client = Login("jürgen", "pässwörd")
        self.assertEqual(client.respond(b"Username:"), "jürgen".encode())
        self.assertEqual(client.respond(b"Password:"), "pässwörd".encode())


# -- CRAM-MD5 ------------------------------------------------------------------------------


class CramMD5Tests(unittest.TestCase):
    def test_attributes(self) -> None:
        self.assertEqual(CramMD5.name, "CRAM-MD5")
        self.assertFalse(CramMD5.plaintext)

    def test_empty_challenge(self) -> None:
        self.assertRaises(SASLClientError, CramMD5("tim", "x").respond, b"")

    def test_second_challenge(self) -> None:
        client = CramMD5("tim", "tanstaaftanstaaf")
        client.respond(b"<1.2@example.com>")
        self.assertRaises(SASLClientError, client.respond, b"<1.2@example.com>")

    def test_digest_depends_on_challenge(self) -> None:
        one = CramMD5("tim", "pw").respond(b"<1@example.com>")
        two = CramMD5("tim", "pw").respond(b"<2@example.com>")
        self.assertNotEqual(one, two)
        self.assertRegex(one.decode(), r"^tim [0-9a-f]{32}$")


# -- SCRAM-SHA-256 -------------------------------------------------------------------------


class ScramTests(unittest.TestCase):
    def test_attributes(self) -> None:
        self.assertEqual(ScramSHA256.name, "SCRAM-SHA-256")
        self.assertFalse(ScramSHA256.plaintext)
        self.assertEqual((ScramSHA256.minIterations, ScramSHA256.maxIterations), (4096, 1_000_000))

    def test_random_nonce(self) -> None:
        """Without an injected nonce each exchange gets a fresh printable one."""
        one = ScramSHA256("user", "pencil").initialResponse()
        two = ScramSHA256("user", "pencil").initialResponse()
        self.assertNotEqual(one, two)
        for message in (one, two):
            self.assertTrue(message.startswith(b"n,,n=user,r="))
            nonce = message[len(b"n,,n=user,r=") :].decode("ascii")
            self.assertEqual(len(nonce), 24)
            self.assertNotIn(",", nonce)
            self.assertTrue(all(c in string.printable and not c.isspace() for c in nonce))

    def test_bad_injected_nonce(self) -> None:
        for nonce in ["", "a,b", "a b", "é", "\x7f"]:
            self.assertRaises(ValueError, ScramSHA256, "user", "pencil", nonce=nonce)

    def test_user_name_escapes(self) -> None:
        """RFC 5802 §5.1: "=" as =3D, "," as =2C (and =2C is not escaped twice)."""
        client = ScramSHA256("a=b,c=2C", "pencil", nonce="abc")
        self.assertEqual(client.initialResponse(), b"n,,n=a=3Db=2Cc=3D2C,r=abc")

    def test_saslprep(self) -> None:
        """RFC 4013 §3 examples: soft hyphen dropped, U+2168 becomes IX."""
        client = ScramSHA256("I\u00adX", "\u2168", nonce="abc")
        self.assertEqual(client.initialResponse(), b"n,,n=IX,r=abc")
        # The password went through SASLprep too: "IX" derives the same keys.
        keys = sasl.scramKeys("IX", b"0123456789abcdef", 4096)
        server = sasl.ScramSHA256()
        server.start(client.initialResponse())
        challenge = server.keysFound(keys.salt, keys.iterations)
        done = server.respond(client.respond(challenge.data))
        self.assertTrue(done.credentials.checkKeys(keys.storedKey, keys.serverKey))

    def test_prohibited_credentials(self) -> None:
        """What SASLprep refuses (RFC 4013 §3: U+0007), or an empty user name."""
        self.assertRaises(SASLClientError, ScramSHA256, "user\u0007", "pencil")
        self.assertRaises(SASLClientError, ScramSHA256, "user", "pen\u0007cil")
        self.assertRaises(SASLClientError, ScramSHA256, "\u00ad", "pencil")

    def test_empty_first_challenge(self) -> None:
        """An empty 334 before the exchange asks for the client-first-message."""
        client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
        self.assertEqual(client.respond(b""), RFC7677_CLIENT_FIRST)
        self.assertEqual(client.respond(RFC7677_SERVER_FIRST), RFC7677_CLIENT_FINAL)
        # Only once: a second empty challenge is a malformed server-first-message.
        client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
        client.respond(b"")
        self.assertRaises(SASLClientError, client.respond, b"")

    def test_server_first_extensions_go_into_auth_message(self) -> None:
        """
        Extensions after i= are accepted, and the server-first-message goes
        into AuthMessage verbatim: the server's side accepts the proof.
        """
        first = RFC7677_SERVER_FIRST + b",x=ext=value"
        client, final = scramAgainst(serverFirst=first)
        withoutProof, _, proof = final.partition(b",p=")
        authMessage = RFC7677_CLIENT_FIRST[3:] + b"," + first + b"," + withoutProof
        creds = sasl.ScramCredentials(
            b"user", RFC7677_SALT, 4096, authMessage, base64.b64decode(proof)
        )
        self.assertTrue(creds.checkPassword(b"pencil"))
        self.assertNotEqual(final, RFC7677_CLIENT_FINAL)
        self.assertEqual(
            client.respond(b"v=" + base64.b64encode(creds.serverSignature)),  # type: ignore[arg-type]
            b"",
        )

    def test_malformed_server_first(self) -> None:
        bad = [
            b"r=" + RFC7677_NONCE,
            b"r=" + RFC7677_NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==",
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=" + RFC7677_NONCE + b",i=4096",
            b"r=" + RFC7677_NONCE + b",i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            b"m=ext," + RFC7677_SERVER_FIRST,
            b"\xff" + RFC7677_SERVER_FIRST,
            RFC7677_SERVER_FIRST.replace(b"%", b"\xc3\xa9"),
            RFC7677_SERVER_FIRST.replace(b"%", b" "),
            serverFirst(salt=b"W22ZaJ0SNY7soEsUEjb6gQ="),
            serverFirst(salt=b"W22ZaJ0SNY7soEsU*jb6gQ=="),
            serverFirst(salt=b""),
            serverFirst(iterations=b""),
            serverFirst(iterations=b"04096"),
            serverFirst(iterations=b"4096.0"),
            serverFirst(iterations=b"-4096"),
            serverFirst(iterations=b"40960000000000000000000000000000"),
        ]
        for message in bad:
            client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
            client.initialResponse()
            self.assertRaises(SASLClientError, client.respond, message)

    def test_nonce_must_extend_ours(self) -> None:
        """RFC 5802 §5.1: the server nonce starts with the client's, and adds to it."""
        for nonce in [b"rOprNGfwEbeRWgbNEkqO", b"XrOprNGfwEbeRWgbNEkqO%hv", b"rOprNGfwEbeRWgbNEkq"]:
            client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
            self.assertRaises(SASLClientError, client.respond, serverFirst(nonce=nonce))

    def test_iteration_count_bounds(self) -> None:
        """RFC 7677 §4: at least 4096; and not so many that a server can burn our CPU."""
        for count in [b"1", b"4095", b"1000001", b"9999999999"]:
            client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
            with self.assertRaises(SASLClientError) as caught:
                client.respond(serverFirst(iterations=count))
            self.assertIn("iteration count", str(caught.exception))

    def test_iteration_bounds_are_adjustable(self) -> None:
        """A subclass may accept a smaller count (e.g. a test server)."""

        class Cheap(ScramSHA256):
            minIterations = 2

        client = Cheap("user", "pencil", nonce="abc")
        self.assertTrue(
            client.respond(b"r=abcdef,s=c2FsdA==,i=2").startswith(b"c=biws,r=abcdef,p=")
        )

    def test_server_error_in_server_first(self) -> None:
        """RFC 5802 errata 5271: e= may come in place of the server-first-message."""
        client = ScramSHA256("user", "pencil")
        with self.assertRaises(SASLClientError) as caught:
            client.respond(b"e=unknown-user")
        self.assertIn("unknown-user", str(caught.exception))

    def test_server_error_in_server_final(self) -> None:
        client, _ = scramAgainst()
        with self.assertRaises(SASLClientError) as caught:
            client.respond(b"e=invalid-proof")
        self.assertIn("invalid-proof", str(caught.exception))
        self.assertRaises(SASLClientError, client.verifySuccess, None)

    def test_server_error_at_success(self) -> None:
        client, _ = scramAgainst()
        self.assertRaises(SASLClientError, client.verifySuccess, b"e=other-error")

    def test_malformed_server_final(self) -> None:
        for final in [
            b"",
            b"x=1",
            b"v=",
            b"v=!!!!",
            b"\xff",
            RFC7677_SERVER_FINAL[:-1],
            b"r=" + RFC7677_SERVER_FINAL,
        ]:
            client, _ = scramAgainst()
            self.assertRaises(SASLClientError, client.respond, final)
            # A failed exchange stays failed.
            self.assertRaises(SASLClientError, client.verifySuccess, RFC7677_SERVER_FINAL)

    def test_server_final_extensions_ignored(self) -> None:
        client, _ = scramAgainst()
        self.assertEqual(client.respond(RFC7677_SERVER_FINAL + b",x=1"), b"")
        self.assertIsNone(client.verifySuccess(None))

    def test_tampered_signature(self) -> None:
        signature = bytearray(base64.b64decode(RFC7677_SERVER_FINAL[2:]))
        signature[-1] ^= 1
        tampered = b"v=" + base64.b64encode(bytes(signature))
        client, _ = scramAgainst()
        self.assertRaises(SASLClientError, client.respond, tampered)
        client, _ = scramAgainst()
        self.assertRaises(SASLClientError, client.verifySuccess, tampered)
        # A correct signature earlier does not excuse a wrong one at success.
        client, _ = scramAgainst()
        client.respond(RFC7677_SERVER_FINAL)
        self.assertRaises(SASLClientError, client.verifySuccess, tampered)

    def test_success_without_signature(self) -> None:
        """A 235 without the server-final-message proves nothing about the server."""
        client, _ = scramAgainst()
        with self.assertRaises(SASLClientError) as caught:
            client.verifySuccess(None)
        self.assertIn("signature", str(caught.exception))

    def test_success_before_proof(self) -> None:
        """A 235 straight after client-first, with or without data."""
        client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
        client.initialResponse()
        self.assertRaises(SASLClientError, client.verifySuccess, None)
        client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
        client.initialResponse()
        self.assertRaises(SASLClientError, client.verifySuccess, RFC7677_SERVER_FINAL)

    def test_challenge_after_the_end(self) -> None:
        client, _ = scramAgainst()
        client.respond(RFC7677_SERVER_FINAL)
        self.assertRaises(SASLClientError, client.respond, RFC7677_SERVER_FINAL)
        self.assertRaises(SASLClientError, client.respond, b"")

    def test_failed_exchange_stays_failed(self) -> None:
        client = ScramSHA256("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
        self.assertRaises(SASLClientError, client.respond, b"garbage")
        self.assertRaises(SASLClientError, client.respond, RFC7677_SERVER_FIRST)
        self.assertRaises(SASLClientError, client.verifySuccess, None)


# -- XOAUTH2 -------------------------------------------------------------------------------


class XOAuth2Tests(unittest.TestCase):
    def test_attributes(self) -> None:
        self.assertEqual(XOAuth2.name, "XOAUTH2")
        self.assertTrue(XOAuth2.plaintext)

    def test_error_challenge(self) -> None:
        """Google's example error: answered with an empty response, kept for diagnostics."""
        client = XOAuth2(XOAUTH2_USER, XOAUTH2_TOKEN)
        client.initialResponse()
        challenge = base64.b64decode(XOAUTH2_ERROR_B64)
        self.assertEqual(client.respond(challenge), b"")
        self.assertEqual(
            client.error,
            {"status": "401", "schemes": "bearer mac", "scope": "https://mail.google.com/"},
        )
        self.assertEqual(client.errorChallenge, challenge)
        self.assertRaises(SASLClientError, client.respond, challenge)

    def test_non_json_error(self) -> None:
        for challenge in [b"not json", b"[1, 2]"]:
            client = XOAuth2("alice", "token")
            self.assertEqual(client.respond(challenge), b"")
            self.assertIsNone(client.error)
            self.assertEqual(client.errorChallenge, challenge)

    def test_empty_first_challenge(self) -> None:
        client = XOAuth2("alice", "token")
        self.assertEqual(client.respond(b""), b"user=alice\x01auth=Bearer token\x01\x01")
        self.assertIsNone(client.error)

    def test_unsendable_credentials(self) -> None:
        for user, token in [("", "t"), ("a", ""), ("a\x01", "t"), ("a", "t\x01")]:
            self.assertRaises(SASLClientError, XOAuth2, user, token)


# -- against the server-side mechanisms --------------------------------------------------------


def runExchange(
    client: ClientMechanism,
    server: sasl.Mechanism,
    *,
    sendInitial: bool = True,
    keys: sasl.ScramKeys | None = None,
) -> Any:
    """Drive ``client`` against ``server`` up to the credentials; returns them."""
    step = server.start(client.initialResponse() if sendInitial else None)
    for _ in range(5):
        if isinstance(step, sasl.NeedKeys):
            assert isinstance(server, sasl.ScramSHA256)
            if keys is None:
                step = server.useRandomSalt()
            else:
                step = server.keysFound(keys.salt, keys.iterations)
        elif isinstance(step, sasl.Challenge):
            step = server.respond(client.respond(step.data))
        else:
            assert isinstance(step, sasl.Credentials), step
            return step.credentials
    raise AssertionError("the exchange did not end")


class RoundTripTests(unittest.TestCase):
    """Each client mechanism against its server counterpart in :mod:`txsmtp.sasl`."""

    def setUp(self) -> None:
        self.checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")

    def assertAccepted(self, credentials: Any) -> None:
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(credentials)), b"alice")

    def assertRefused(self, credentials: Any) -> None:
        self.failureResultOf(self.checker.requestAvatarId(credentials), UnauthorizedLogin)

    def test_plain(self) -> None:
        for sendInitial in (True, False):
            self.assertAccepted(
                runExchange(Plain("alice", "secret"), sasl.Plain(), sendInitial=sendInitial)
            )
        self.assertRefused(runExchange(Plain("alice", "wrong"), sasl.Plain()))

    def test_login(self) -> None:
        self.assertAccepted(runExchange(Login("alice", "secret"), sasl.Login()))
        self.assertRefused(runExchange(Login("alice", "wrong"), sasl.Login()))

    def test_cram_md5(self) -> None:
        self.assertAccepted(runExchange(CramMD5("alice", "secret"), sasl.CramMD5("mx.example")))
        self.assertRefused(runExchange(CramMD5("alice", "wrong"), sasl.CramMD5("mx.example")))

    def test_scram_password_checker(self) -> None:
        """
        Random salt: the checker's checkPassword verifies the proof, and the
        server's signature satisfies the client, as a 334 and at success.
        """
        for sendInitial in (True, False):
            client = ScramSHA256("alice", "secret")
            server = sasl.ScramSHA256("mx.example")
            creds = runExchange(client, server, sendInitial=sendInitial)
            self.assertIsInstance(creds, sasl.ScramPasswordCredentials)
            self.assertAccepted(creds)
            final = server.serverFinal()
            self.assertEqual(client.respond(final), b"")
            self.assertIsNone(client.verifySuccess(None))
            self.assertIsNone(client.verifySuccess(final))

    def test_scram_key_store(self) -> None:
        """Stored keys: checkKeys verifies the proof; the signature is the server's."""
        keys = sasl.scramKeys("secret", b"0123456789abcdef", 4096)
        client = ScramSHA256("alice", "secret")
        server = sasl.ScramSHA256("mx.example")
        creds = runExchange(client, server, keys=keys)
        self.assertIsInstance(creds, sasl.ScramCredentials)
        self.assertTrue(creds.checkKeys(keys.storedKey, keys.serverKey))
        self.assertIsNone(client.verifySuccess(server.serverFinal()))

    def test_scram_wrong_password(self) -> None:
        """The proof fails, the server has no signature, the client accepts no success."""
        client = ScramSHA256("alice", "wrong")
        server = sasl.ScramSHA256("mx.example")
        creds = runExchange(client, server)
        self.assertRefused(creds)
        self.assertRaises(sasl.SASLError, server.serverFinal)
        self.assertRaises(SASLClientError, client.verifySuccess, None)

    def test_scram_server_with_other_keys(self) -> None:
        """
        A server that does not know the password (it signs with the
        ServerKey of another one) cannot produce a signature the client
        accepts, though the exchange is otherwise well formed.
        """
        keys = sasl.scramKeys("secret", b"0123456789abcdef", 4096)
        other = sasl.scramKeys("other", keys.salt, 4096)
        client = ScramSHA256("alice", "secret")
        server = sasl.ScramSHA256("mx.example")
        first = client.initialResponse()
        server.start(first)
        challenge = server.keysFound(keys.salt, keys.iterations)
        final = client.respond(challenge.data)
        authMessage = first[3:] + b"," + challenge.data + b"," + final.rpartition(b",p=")[0]
        forged = hmac.new(other.serverKey, authMessage, hashlib.sha256).digest()
        self.assertRaises(SASLClientError, client.verifySuccess, b"v=" + base64.b64encode(forged))
        # The same computation with the right ServerKey is what the client wants.
        client2 = ScramSHA256("alice", "secret", nonce="abc")
        server2 = sasl.ScramSHA256("mx.example")
        first = client2.initialResponse()
        server2.start(first)
        challenge = server2.keysFound(keys.salt, keys.iterations)
        final = client2.respond(challenge.data)
        authMessage = first[3:] + b"," + challenge.data + b"," + final.rpartition(b",p=")[0]
        genuine = hmac.new(keys.serverKey, authMessage, hashlib.sha256).digest()
        self.assertIsNone(client2.verifySuccess(b"v=" + base64.b64encode(genuine)))

    def test_scram_tampered_signature(self) -> None:
        client = ScramSHA256("alice", "secret")
        server = sasl.ScramSHA256("mx.example")
        self.assertAccepted(runExchange(client, server))
        signature = bytearray(base64.b64decode(server.serverFinal()[2:]))
        signature[0] ^= 0x80
        self.assertRaises(
            SASLClientError, client.respond, b"v=" + base64.b64encode(bytes(signature))
        )
        self.assertRaises(SASLClientError, client.verifySuccess, None)

    def test_scram_escaped_and_prepared_names(self) -> None:
        """Commas, equals signs and non-ASCII (SASLprep on both sides) survive the trip."""
        user, password = "a=b,c\u00a0d", "p\u00e4ss\u2003w\u00f6rd"
        client = ScramSHA256(user, password)
        server = sasl.ScramSHA256("mx.example")
        creds = runExchange(client, server)
        self.assertEqual(server.username, "a=b,c d")
        self.assertTrue(creds.checkPassword(password.encode()))
        self.assertIsNone(client.verifySuccess(server.serverFinal()))

    @settings(max_examples=15, deadline=None)
    @given(
        user=st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
        ),
        password=st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12
        ),
    )
    def test_scram_any_printable(self, user: str, password: str) -> None:
        """Any printable ASCII user name and password authenticate both ways."""
        client = ScramSHA256(user, password)
        server = sasl.ScramSHA256("mx.example")
        creds = runExchange(client, server)
        self.assertEqual(server.username, user)
        self.assertTrue(creds.checkPassword(password.encode()))
        self.assertIsNone(client.verifySuccess(server.serverFinal()))

    @settings(max_examples=100, deadline=None)
    @given(
        user=st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
        ),
        password=st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
        ),
    )
    def test_plain_and_login_any_printable(self, user: str, password: str) -> None:
        """Any printable ASCII user name and password arrive unchanged."""
        for client, server in [
            (Plain(user, password), sasl.Plain()),
            (Login(user, password), sasl.Login()),
        ]:
            creds = runExchange(client, server)
            self.assertEqual((creds.username, creds.password), (user.encode(), password.encode()))


# -- chooseMechanism -----------------------------------------------------------------------


class ChooseMechanismTests(unittest.TestCase):
    def test_preference(self) -> None:
        self.assertEqual(MECHANISM_PREFERENCE, ALL_NAMES)

    def test_strongest_first_with_a_password(self) -> None:
        """Dropping the strongest offered each time walks down the list (XOAUTH2 needs a token)."""
        expected = [ScramSHA256, CramMD5, CramMD5, Plain, Login]
        for i, kind in enumerate(expected):
            offered = ALL_NAMES[i:]
            chosen = chooseMechanism(offered, username="alice", password="secret")
            self.assertIsInstance(chosen, kind, offered)

    def test_token(self) -> None:
        chosen = chooseMechanism(ALL_NAMES, username="alice", oauthToken="tok")
        self.assertIsInstance(chosen, XOAuth2)
        assert chosen is not None
        self.assertEqual(chosen.initialResponse(), b"user=alice\x01auth=Bearer tok\x01\x01")
        self.assertIsNone(chooseMechanism(["PLAIN", "LOGIN"], username="alice", oauthToken="tok"))

    def test_password_and_token(self) -> None:
        """With both, SCRAM-SHA-256 still wins; without it, XOAUTH2 beats CRAM-MD5."""
        both = {"username": "alice", "password": "secret", "oauthToken": "tok"}
        self.assertIsInstance(chooseMechanism(ALL_NAMES, **both), ScramSHA256)
        self.assertIsInstance(chooseMechanism(ALL_NAMES[1:], **both), XOAuth2)

    def test_case_insensitive(self) -> None:
        self.assertIsInstance(
            chooseMechanism(["plain", "Cram-Md5"], username="a", password="b"), CramMD5
        )
        self.assertIsInstance(
            chooseMechanism(["PLAIN", "CRAM-MD5"], username="a", password="b", allowed=["plain"]),
            Plain,
        )

    def test_string_of_names(self) -> None:
        """A whole EHLO AUTH value as one string is split, not iterated by character."""
        self.assertIsInstance(chooseMechanism("LOGIN PLAIN", username="a", password="b"), Plain)
        self.assertIsInstance(
            chooseMechanism("LOGIN PLAIN", username="a", password="b", allowed="LOGIN"), Login
        )

    def test_allowed(self) -> None:
        """E.g. no plaintext mechanisms without TLS, or only plaintext ones."""
        noPlaintext = [n for n in ALL_NAMES if n not in ("PLAIN", "LOGIN", "XOAUTH2")]
        self.assertIsNone(
            chooseMechanism(["PLAIN", "LOGIN"], username="a", password="b", allowed=noPlaintext)
        )
        self.assertIsInstance(
            chooseMechanism(ALL_NAMES, username="a", password="b", allowed=["LOGIN", "PLAIN"]),
            Plain,
        )
        self.assertIsNone(chooseMechanism(ALL_NAMES, username="a", password="b", allowed=[]))

    def test_nothing_usable(self) -> None:
        self.assertIsNone(chooseMechanism([], username="a", password="b"))
        self.assertIsNone(
            chooseMechanism(["GSSAPI", "NTLM", "SCRAM-SHA-1"], username="a", password="b")
        )
        self.assertIsNone(chooseMechanism(ALL_NAMES, username="a"))

    def test_fresh_objects(self) -> None:
        one = chooseMechanism(["PLAIN"], username="a", password="b")
        two = chooseMechanism(["PLAIN"], username="a", password="b")
        self.assertIsNot(one, two)
        assert one is not None and two is not None
        self.assertEqual(one.initialResponse(), b"\0a\0b")
        self.assertEqual(one.respond(b""), b"\0a\0b")
        self.assertEqual(two.respond(b""), b"\0a\0b")

    def test_unusable_credentials_skip(self) -> None:
        """A password SASLprep refuses rules out SCRAM-SHA-256; one with NUL rules out PLAIN too."""
        self.assertIsInstance(chooseMechanism(ALL_NAMES, username="a", password="b\u0007"), CramMD5)
        self.assertIsInstance(
            chooseMechanism(["SCRAM-SHA-256", "PLAIN", "LOGIN"], username="a", password="b\0"),
            Login,
        )
        self.assertIsNone(chooseMechanism(["PLAIN"], username="a", password=""))


# -- whatever the server sends -------------------------------------------------------------


def _mechanism(name: str) -> ClientMechanism:
    if name == "XOAUTH2":
        return XOAuth2("alice", "token")
    if name == "SCRAM-SHA-256":
        return ScramSHA256("alice", "secret", nonce="clientnonce")
    return {"CRAM-MD5": CramMD5, "PLAIN": Plain, "LOGIN": Login}[name]("alice", "secret")


VALID_SERVER_FIRST = b"r=clientnonceSERVER,s=c2FsdA==,i=4096"

_scramPieces = st.sampled_from(
    [
        b"r=clientnonce",
        b"r=clientnonceSERVER",
        b"r=other",
        b"s=c2FsdA==",
        b"s=",
        b"s=c2FsdA",
        b"i=4096",
        b"i=4095",
        b"i=0",
        b"i=1000001",
        b"i=x",
        b"v=",
        b"v=c2lnbmF0dXJl",
        b"e=other-error",
        b"m=x",
        b"x=ext",
        b",",
        b"=",
        b"\xff",
        b"\x00",
    ]
)


class ArbitraryChallengeTests(unittest.TestCase):
    """Whatever a server sends, a mechanism raises SASLClientError or carries on."""

    def check(
        self, mechanism: ClientMechanism, challenges: list[bytes], final: bytes | None
    ) -> None:
        for challenge in challenges:
            try:
                response = mechanism.respond(challenge)
            except SASLClientError:
                continue
            self.assertIsInstance(response, bytes)
        if isinstance(mechanism, ScramSHA256):
            # No arbitrary input can carry the server signature.
            self.assertRaises(SASLClientError, mechanism.verifySuccess, final)
        else:
            self.assertIsNone(mechanism.verifySuccess(final))

    @settings(max_examples=300, deadline=None)
    @given(
        name=st.sampled_from(ALL_NAMES),
        initial=st.booleans(),
        challenges=st.lists(st.binary(max_size=80), max_size=5),
        final=st.none() | st.binary(max_size=60),
    )
    def test_arbitrary_bytes(
        self, name: str, initial: bool, challenges: list[bytes], final: bytes | None
    ) -> None:
        mechanism = _mechanism(name)
        if initial:
            mechanism.initialResponse()
        self.check(mechanism, challenges, final)

    @settings(max_examples=200, deadline=None)
    @given(
        first=st.sampled_from([b"", VALID_SERVER_FIRST, VALID_SERVER_FIRST + b",x=ext"]),
        challenges=st.lists(
            st.lists(_scramPieces, max_size=8).map(b",".join), min_size=1, max_size=4
        ),
        final=st.none() | st.lists(_scramPieces, max_size=4).map(b",".join),
    )
    def test_scram_shaped(self, first: bytes, challenges: list[bytes], final: bytes | None) -> None:
        """
        SCRAM's own pieces reach the deeper branches: after a valid
        server-first-message (sometimes), nothing but the server signature
        completes the exchange.
        """
        mechanism = _mechanism("SCRAM-SHA-256")
        mechanism.initialResponse()
        if first:
            response = mechanism.respond(first)
            self.assertTrue(response.startswith(b"c=biws,r=clientnonceSERVER,p="))
        for challenge in challenges:
            try:
                response = mechanism.respond(challenge)
            except SASLClientError:
                continue
            self.assertIsInstance(response, bytes)
            if response.startswith(b"c="):
                # A client-final only for a well-formed server-first.
                self.assertTrue(challenge.startswith(VALID_SERVER_FIRST))
                self.assertTrue(response.startswith(b"c=biws,r=clientnonceSERVER,p="))
        self.assertRaises(SASLClientError, mechanism.verifySuccess, final)
