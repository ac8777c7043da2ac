"""
Tests for txsmtp.dkimsign: signatures checked by dkimpy's verifier and by
OpenDKIM's ``opendkim-testmsg``.

The keys are made here with ``cryptography``; dkimpy is given the public
key record through its ``dnsfunc`` hook, and opendkim-testmsg gets it from
a DNS server of the test in a private network namespace
(tests/opendkimpeer.py), so no real DNS is used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, TestCase

from tests.peers import PEERS_REQUIRED, requirePeer
from txsmtp.dkimsign import DEFAULT_HEADERS, DKIMSigner, DKIMSignError, HeadersTooLong

try:
    import dkim
except ImportError:  # pragma: no cover
    dkim = None

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_ED = ed25519.Ed25519PrivateKey.generate()
KEYS = {"rsa": _RSA, "ed25519": _ED}


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """
    The TXT record publishing ``key``'s public half (RFC 6376 §3.6.1;
    RFC 8463 §4 for Ed25519: the raw 32 bytes).
    """
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


def verify(message: bytes, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bool:
    if dkim is None:
        raise SkipTest("dkimpy is not installed (pip install dkimpy pynacl)")

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        if isinstance(name, bytes):
            name = name.decode()
        assert name.rstrip(".") == "sel._domainkey.example.org", name
        return record(key)

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


def sign(
    message: bytes,
    keyName: str = "rsa",
    canonicalization: str = "relaxed/relaxed",
    chunks: list[int] | None = None,
    **kwargs: object,
) -> bytes:
    """
    Sign ``message`` fed in pieces of the sizes ``chunks`` (cycled), or
    whole; return the signature header field.
    """
    signer = DKIMSigner(
        "example.org", "sel", pem(KEYS[keyName]),
        canonicalization=canonicalization, **kwargs,  # type: ignore[arg-type]
    )
    if chunks is None:
        signer.feed(message)
    else:
        position = 0
        index = 0
        while position < len(message):
            size = chunks[index % len(chunks)]
            signer.feed(message[position:position + size])
            position += size
            index += 1
    return signer.signature()


HEADERS = (
    b"Received: from a by b; Mon, 7 Dec 2026 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com,\r\n"
    b"  carol@example.com\r\n"
    b"Subject:   Hello   \t there  \r\n"
    b"Date: Mon, 7 Dec 2026 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
)

BODIES = {
    "plain": b"Hello  world \r\n\tindented\t line\t\r\n\r\nbye\r\n",
    "trailingEmpty": b"text\r\n\r\n\r\n\r\n",
    "onlyCRLF": b"\r\n\r\n\r\n",
    "empty": b"",
    "noFinalCRLF": b"line one\r\nline  two \t",
    "eightBit": "caf\xe9 \u00fcber na\u00efve\r\n".encode("utf-8") + b"\xff\xfe raw\r\n",
    "spacesOnly": b"a\r\n   \r\n\t\r\n",
    "bareCR": b"a\rb \r\n c\r\r\n",
}

CANONS = ("relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed")


class VerifiedTests(TestCase):
    """
    Signed messages pass dkimpy's verification, for both key types, every
    canonicalization, and bodies with awkward ends.
    """

    def test_allCombinations(self) -> None:
        for keyName in KEYS:
            for canon in CANONS:
                for bodyName, body in BODIES.items():
                    message = HEADERS + b"\r\n" + body
                    signature = sign(message, keyName, canon)
                    self.assertTrue(
                        verify(signature + message, KEYS[keyName]),
                        (keyName, canon, bodyName, signature),
                    )

    def test_byteByByte(self) -> None:
        """
        Fed one byte at a time: CR and LF always in different chunks, every
        header cut, and the same signature as fed whole (both are
        deterministic for Ed25519).
        """
        for canon in CANONS:
            for body in BODIES.values():
                message = HEADERS + b"\r\n" + body
                whole = sign(message, "ed25519", canon)
                self.assertEqual(sign(message, "ed25519", canon, chunks=[1]), whole)
                self.assertTrue(verify(whole + message, _ED))

    @settings(max_examples=60, deadline=None)
    @given(
        lines=st.lists(
            st.lists(st.sampled_from([b"a", b"z", b" ", b"\t", b"\r", b"\xe9", b"x" * 40]),
                     max_size=12).map(b"".join),
            max_size=12,
        ),
        finalCRLF=st.booleans(),
        trailing=st.integers(0, 3),
        sizes=st.lists(st.integers(1, 20), min_size=1, max_size=8),
        canon=st.sampled_from(CANONS),
    )
    def test_randomChunks(
        self, lines: list[bytes], finalCRLF: bool, trailing: int, sizes: list[int], canon: str
    ) -> None:
        """
        Random bodies (runs of WSP, bare CRs, trailing empty lines) fed in
        random chunks give the same signature as fed whole, and it verifies.
        """
        body = b"\r\n".join(lines) + (b"\r\n" if finalCRLF else b"") + b"\r\n" * trailing
        message = HEADERS + b"\r\n" + body
        whole = sign(message, "ed25519", canon)
        self.assertEqual(sign(message, "ed25519", canon, chunks=sizes), whole)
        self.assertTrue(verify(whole + message, _ED), (canon, body))

    def test_longLine(self) -> None:
        """
        A body line longer than the part of a line the signer keeps (hashed
        in pieces), with runs of spaces across the pieces.
        """
        line = (b"word " + b" " * 300 + b"\t") * 200
        for canon in CANONS:
            for tail in (b"\r\n", b"   \r\n", b" \r\r\n"):
                message = HEADERS + b"\r\n" + line + tail + b"end\r\n"
                whole = sign(message, "ed25519", canon)
                self.assertEqual(sign(message, "ed25519", canon, chunks=[4093]), whole)
                self.assertTrue(verify(whole + message, _ED), canon)

    def test_longLineCutAtCR(self) -> None:
        """
        A long line whose CR ends one part and LF starts the next; and a
        long line of WSP only, which "relaxed" makes empty (so dropped at
        the end of the body).
        """
        for line in (b"x" * 10000, b" \t" * 6000, b"y " + b" " * 10000):
            for end in (b"", b"next\r\n"):
                head = HEADERS + b"\r\nfirst\r\n" + line + b"\r"
                message = head + b"\n" + end
                for canon in CANONS:
                    signer = DKIMSigner("example.org", "sel", pem(_ED), canonicalization=canon)
                    signer.feed(head)
                    signer.feed(message[len(head):])
                    signature = signer.signature()
                    self.assertEqual(signature, sign(message, "ed25519", canon))
                    self.assertTrue(verify(signature + message, _ED), (canon, end))

    def test_repeatedHeaders(self) -> None:
        """
        A repeated field is listed in h= once per instance (RFC 6376
        §5.4.2) and the signature covers every instance.
        """
        message = (
            b"From: a@example.org\r\nTo: b@example.com\r\nSubject: one\r\n"
            b"To: c@example.com\r\nX-Other: not signed\r\n\r\nbody\r\n"
        )
        for canon in CANONS:
            signature = sign(message, "rsa", canon)
            self.assertIn(b"h=From:Subject:To:To;", signature.replace(b"\r\n ", b""))
            self.assertTrue(verify(signature + message, _RSA))
            # Changing the first To (signed, bottom-up second) breaks it.
            changed = message.replace(b"b@example.com", b"x@example.com")
            self.assertFalse(verify(signature + changed, _RSA))

    def test_longFoldedHeaders(self) -> None:
        recipients = ",\r\n ".join(f"user{i}@example.com" for i in range(60)).encode()
        message = (
            b"From: a@example.org\r\nTo: " + recipients + b"\r\n"
            b"Subject: " + b"long subject " * 30 + b"\r\n\r\nbody\r\n"
        )
        for canon in CANONS:
            for keyName in KEYS:
                signature = sign(message, keyName, canon, chunks=[7])
                self.assertTrue(verify(signature + message, KEYS[keyName]))

    def test_tamperedBody(self) -> None:
        """
        A changed body fails: the verifier really checks bh=.
        """
        message = HEADERS + b"\r\nThe amount is 100 euros.\r\n"
        for keyName in KEYS:
            signature = sign(message, keyName)
            self.assertTrue(verify(signature + message, KEYS[keyName]))
            tampered = message.replace(b"100", b"900")
            self.assertFalse(verify(signature + tampered, KEYS[keyName]))

    def test_relaxedToleratesWhitespace(self) -> None:
        """
        relaxed/relaxed survives what it is meant to survive: changed
        runs of WSP and trailing empty lines.
        """
        message = HEADERS + b"\r\nsome  text here\r\n"
        signature = sign(message)
        changed = message.replace(b"some  text", b"some \t text") + b"\r\n\r\n"
        self.assertTrue(verify(signature + changed, _RSA))


class HeaderFieldTests(TestCase):
    """
    The form of the DKIM-Signature field.
    """

    def test_tags(self) -> None:
        message = HEADERS + b"\r\nbody\r\n"
        signature = sign(message, "ed25519", timestamp=1796601600)
        unfolded = signature.replace(b"\r\n ", b" ")
        self.assertTrue(unfolded.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256; "))
        self.assertIn(b" c=relaxed/relaxed;", unfolded)
        self.assertIn(b" d=example.org;", unfolded)
        self.assertIn(b" s=sel;", unfolded)
        self.assertIn(b" t=1796601600;", unfolded)
        self.assertIn(b" h=From:Subject:Date:To:Message-ID;", unfolded)
        self.assertTrue(signature.endswith(b"\r\n"))
        self.assertTrue(verify(signature + message, _ED))
        self.assertNotIn(b" t=", sign(message, "rsa").replace(b"\r\n ", b" "))
        self.assertIn(b"a=rsa-sha256;", sign(message, "rsa"))

    def test_bodyHash(self) -> None:
        """
        bh= is the SHA-256 of the canonical body: the known values of
        RFC 6376 §3.4.3-3.4.4 examples for an empty body.
        """
        message = b"From: a@example.org\r\n\r\n"
        relaxed = sign(message, "rsa", "relaxed/relaxed")
        simple = sign(message, "rsa", "simple/simple")
        emptyHash = base64.b64encode(hashlib.sha256(b"").digest())
        crlfHash = base64.b64encode(hashlib.sha256(b"\r\n").digest())
        self.assertIn(b"bh=" + emptyHash + b";", relaxed)
        self.assertIn(b"bh=" + crlfHash + b";", simple)

    def test_unterminatedLastLine(self) -> None:
        """
        A body not ending with CRLF gets one (RFC 6376 §3.4.3, §3.4.4); for
        "relaxed", what follows the last CRLF is not a line, so its WSP runs
        are reduced but WSP at its end is kept, as dkimpy reads it.
        (OpenDKIM 2.11 disagrees with both on such bodies, so OpenDKIMTests
        leaves them out.)
        """
        message = b"From: a@example.org\r\n\r\nline one\r\nline  two \t"
        relaxed = sign(message, "rsa", "relaxed/relaxed", chunks=[3])
        simple = sign(message, "rsa", "simple/simple", chunks=[3])
        relaxedHash = hashlib.sha256(b"line one\r\nline two \r\n").digest()
        simpleHash = hashlib.sha256(b"line one\r\nline  two \t\r\n").digest()
        self.assertIn(b"bh=" + base64.b64encode(relaxedHash) + b";", relaxed)
        self.assertIn(b"bh=" + base64.b64encode(simpleHash) + b";", simple)

    def test_foldedLines(self) -> None:
        signature = sign(HEADERS + b"\r\nbody\r\n", "rsa", timestamp=1)
        for line in signature.split(b"\r\n"):
            self.assertLessEqual(len(line), 78, line)

    def test_defaultCanonicalizationOfOneName(self) -> None:
        """
        ``c=relaxed`` alone means relaxed/simple (RFC 6376 §3.5).
        """
        message = HEADERS + b"\r\nbody  \r\n"
        signature = sign(message, "rsa", "relaxed")
        self.assertIn(b"c=relaxed/simple;", signature)
        self.assertTrue(verify(signature + message, _RSA))


class ErrorTests(TestCase):
    def test_noFrom(self) -> None:
        self.assertRaises(DKIMSignError, sign, b"To: b@example.com\r\n\r\nbody\r\n")
        signer = DKIMSigner("example.org", "sel", pem(_ED), canonicalization="simple")
        signer.feed(b"To: b@example.com\r\n\r\n")
        self.assertRaises(DKIMSignError, signer.signature)
        self.assertRaises(DKIMSignError, signer.signature)
        # The body hash is not changed by the second attempt.
        self.assertEqual(signer._finishBody(), hashlib.sha256(b"\r\n").digest())

    def test_noBlankLine(self) -> None:
        """
        A message of header fields only: the body is empty.
        """
        message = b"From: a@example.org\r\nSubject: x\r\n"
        for canon in CANONS:
            signature = sign(message, "rsa", canon)
            self.assertTrue(verify(signature + message, _RSA))

    def test_headersTooLong(self) -> None:
        big = b"From: a@example.org\r\n" + b"X-Filler: " + b"x" * 200 + b"\r\n"
        signer = DKIMSigner("example.org", "sel", pem(_ED), maxHeaderBytes=1000)
        with self.assertRaises(HeadersTooLong):
            for _ in range(10):
                signer.feed(big)

    def test_headersTooLongInOneChunk(self) -> None:
        message = b"From: a@example.org\r\nX: " + b"x" * 2000 + b"\r\n\r\nbody\r\n"
        signer = DKIMSigner("example.org", "sel", pem(_ED), maxHeaderBytes=1000)
        self.assertRaises(HeadersTooLong, signer.feed, message)

    def test_bodyNotBounded(self) -> None:
        """
        The bound is on the header section only; a large body is hashed
        without being kept.
        """
        signer = DKIMSigner("example.org", "sel", pem(_ED), maxHeaderBytes=1000)
        signer.feed(b"From: a@example.org\r\n\r\n")
        line = b"y" * 998 + b"\r\n"
        for _ in range(2000):
            signer.feed(line)
        self.assertLess(len(signer._carry), 10)
        signer.signature()

    def test_manyEmptyLines(self) -> None:
        """
        A long run of empty lines (deferred as a count) before more text,
        and at the end (dropped).
        """
        for tail in (b"end\r\n", b""):
            message = HEADERS + b"\r\nstart\r\n" + b"\r\n" * 10000 + tail
            for canon in CANONS:
                signature = sign(message, "ed25519", canon, chunks=[4096])
                self.assertTrue(verify(signature + message, _ED), (canon, tail))

    def test_feedAfterSignature(self) -> None:
        signer = DKIMSigner("example.org", "sel", pem(_ED))
        signer.feed(b"From: a@example.org\r\n\r\nx\r\n")
        first = signer.signature()
        self.assertEqual(signer.signature(), first)
        self.assertRaises(DKIMSignError, signer.feed, b"more")

    def test_badCanonicalization(self) -> None:
        self.assertRaises(
            ValueError, DKIMSigner, "example.org", "sel", pem(_ED), canonicalization="nofws"
        )

    def test_unsupportedKey(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        self.assertRaises(ValueError, DKIMSigner, "example.org", "sel", pem(key))  # type: ignore[arg-type]



_PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "opendkimpeer.py")


class OpenDKIMTests(TestCase):
    """
    OpenDKIM (libopendkim, through ``opendkim-testmsg`` from Debian's
    opendkim-tools) verifies the signatures: an implementation independent
    of both dkimpy and this one.
    """

    def setUp(self) -> None:
        self.program = requirePeer("opendkim-testmsg")
        unshare = requirePeer("unshare")
        self.unshare = [unshare, "--mount", "--net"]
        probe = subprocess.run(self.unshare + ["true"], capture_output=True)
        if probe.returncode != 0:
            message = "unshare --mount --net is not permitted here: " + probe.stderr.decode()
            if PEERS_REQUIRED:
                raise AssertionError(message)
            raise SkipTest(message)

    def opendkimVerify(self, message: bytes, keyName: str) -> tuple[int, bytes]:
        result = subprocess.run(
            self.unshare + [
                sys.executable, _PEER_SCRIPT, self.program,
                "sel._domainkey.example.org", record(KEYS[keyName]).hex(),
            ],
            input=message, capture_output=True, timeout=60,
        )
        return result.returncode, result.stderr

    def test_verified(self) -> None:
        """
        Both key types and canonicalizations, awkward bodies, a long folded
        field, and a repeated field (Received: OpenDKIM refuses as bad
        syntax a message with two To fields, which RFC 5322 §3.6 forbids).
        """
        recipients = ",\r\n ".join(f"user{i}@example.com" for i in range(30)).encode()
        headers = (
            b"Received: from c by d; Mon, 7 Dec 2026 00:00:01 +0000\r\n"
            + HEADERS + b"Cc: " + recipients + b"\r\n"
        )
        names = DEFAULT_HEADERS + ("Received",)
        for keyName in KEYS:
            for canon in ("relaxed/relaxed", "simple/simple"):
                for bodyName in ("plain", "trailingEmpty", "onlyCRLF", "empty", "eightBit"):
                    message = headers + b"\r\n" + BODIES[bodyName]
                    signature = sign(message, keyName, canon, chunks=[5, 1, 13], headers=names)
                    self.assertIn(b":Received:Received;", signature.replace(b"\r\n ", b""))
                    status, errors = self.opendkimVerify(signature + message, keyName)
                    self.assertEqual(status, 0, (keyName, canon, bodyName, errors))

    def test_tamperedBody(self) -> None:
        message = HEADERS + b"\r\nThe amount is 100 euros.\r\n"
        for keyName in KEYS:
            signature = sign(message, keyName)
            status, errors = self.opendkimVerify(
                signature + message.replace(b"100", b"900"), keyName
            )
            self.assertNotEqual(status, 0)
            self.assertIn(b"Bad signature", errors)
