"""
Tests for :mod:`txsmtp.mailauth.dkimverify`.

The messages are signed by three independent signers: dkimpy (its
``dkim.sign`` and its ``dkimsign`` program), OpenDKIM's
``opendkim-testmsg`` (which signs rsa-sha1 only, so its signatures must be
refused, RFC 8301, but are checked piece by piece) and txsmtp's own
:class:`~txsmtp.dkimsign.DKIMSigner`.  The public keys are served by the
test DNS server (:mod:`tests.dnsserver`) over real UDP on loopback.
"""

from __future__ import annotations

import base64
import functools
import os
import random
import subprocess
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from tests.dnsserver import SERVFAIL, startDNSServer
from tests.peers import requirePeer
from txsmtp.dkimsign import DKIMSigner
from txsmtp.mailauth.dkimcanon import BodyHasher, fieldName, splitFields
from txsmtp.mailauth.dkimverify import (
    DKIMVerifier,
    parseTagList,
    passingDomains,
    signedHeaderData,
    verifyMessage,
)
from txsmtp.mailauth.results import MethodResult

try:
    import dkim
except ImportError:  # pragma: no cover
    dkim = None

Key = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)


def pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL
        if isinstance(key, rsa.RSAPrivateKey) else serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def record(key: Key, extra: str = "") -> str:
    """The TXT record of ``key`` (RFC 6376 §3.6.1, RFC 8463 §4)."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa;{extra} p=" + base64.b64encode(der).decode()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519;{extra} p=" + base64.b64encode(raw).decode()


def zones() -> dict[str, Any]:
    domainkey = "._domainkey.example.org"
    return {
        "rsa" + domainkey: {"TXT": [record(RSA)]},
        "ed" + domainkey: {"TXT": [record(ED)]},
        "rsa._domainkey.example.net": {"TXT": [record(OTHER_RSA)]},
        "revoked" + domainkey: {"TXT": ["v=DKIM1; k=rsa; p="]},
        "broken" + domainkey: SERVFAIL,
        "nodata" + domainkey: {"A": ["192.0.2.1"]},
        "two" + domainkey: {"TXT": [record(RSA), record(RSA)]},
        "testing" + domainkey: {"TXT": [record(RSA, " t=y;")]},
        "strict" + domainkey: {"TXT": [record(RSA, " t=s;")]},
        "sha1only" + domainkey: {"TXT": [record(RSA, " h=sha1;")]},
        "notmail" + domainkey: {"TXT": [record(RSA, " s=tlsrpt;")]},
        "mismatch" + domainkey: {"TXT": [record(RSA)]},  # signed with ED
        "garbage" + domainkey: {"TXT": ["v=DKIM1; k=rsa; p=AAAA"]},
        "badsyntax" + domainkey: {"TXT": ["v=DKIM1; k=rsa; p"]},
        "unknownk" + domainkey: {"TXT": ["v=DKIM1; k=dsa; p=AAAA"]},
        "shorted" + domainkey: {"TXT": ["v=DKIM1; k=ed25519; p=AAAA"]},
        # The bare RSAPublicKey (PKCS#1), which RFC 6376 §3.6.1 also names.
        "pkcs1" + domainkey: {"TXT": ["k=rsa; p=" + base64.b64encode(RSA.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1)).decode()]},
        "v2" + domainkey: {"TXT": [record(RSA).replace("DKIM1", "DKIM2")]},
    }


def asyncTest(f: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., defer.Deferred[None]]:
    @functools.wraps(f)
    def wrapper(self: TestCase) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(f(self))

    return wrapper


MESSAGE = (
    b"Received: from a by b; Mon, 7 Dec 2026 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com,\r\n"
    b"  carol@example.com\r\n"
    b"Subject:   Hello   \t there  \r\n"
    b"Date: Mon, 7 Dec 2026 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hello  world \r\n\tindented\t line\t\r\n\r\nThe amount is 100 euros.\r\n\r\n\r\n"
)

CANONS = ("relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed")


def ownSign(message: bytes, key: Key, selector: str, canon: str = "relaxed/relaxed",
            domain: str = "example.org", **kwargs: Any) -> bytes:
    """Sign with txsmtp's DKIMSigner; return the signed message."""
    signer = DKIMSigner(domain, selector, pem(key), canonicalization=canon, **kwargs)
    signer.feed(message)
    return signer.signature() + message


def dkimpySign(message: bytes, key: Key, selector: str, canon: str = "relaxed/simple",
               **kwargs: Any) -> bytes:
    """Sign with dkimpy's ``dkim.sign``; return the signed message."""
    if dkim is None:
        raise SkipTest("dkimpy is not installed (pip install dkimpy[ed25519])")
    if isinstance(key, rsa.RSAPrivateKey):
        private, algorithm = pem(key), b"rsa-sha256"
    else:
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        private, algorithm = base64.b64encode(raw), b"ed25519-sha256"
    header, body = canon.encode().split(b"/")
    signature = dkim.sign(message, selector.encode(), b"example.org", private,
                          canonicalize=(header, body), signature_algorithm=algorithm, **kwargs)
    return bytes(signature) + message


def chunked(message: bytes, sizes: list[int]) -> list[bytes]:
    chunks, position, index = [], 0, 0
    while position < len(message):
        size = sizes[index % len(sizes)]
        chunks.append(message[position:position + size])
        position += size
        index += 1
    return chunks


class _DNSTestCase(TestCase):
    def setUp(self) -> None:
        self.dns = startDNSServer(self, zones())
        self.resolver = self.dns.resolver()

    async def verify(self, message: bytes | list[bytes], **kwargs: Any) -> list[MethodResult]:
        verifier = DKIMVerifier(**kwargs)
        for chunk in [message] if isinstance(message, bytes) else message:
            verifier.feed(chunk)
        return await verifier.verify(self.resolver, timeout=(2,))

    async def assertResults(self, message: bytes, expected: list[str], *reasons: str,
                            **kwargs: Any) -> list[MethodResult]:
        results = await self.verify(message, **kwargs)
        self.assertEqual([r.result for r in results], expected, results)
        for result, reason in zip(results, reasons, strict=False):
            self.assertIn(reason, result.reason or "", results)
        return results


class SignersTests(_DNSTestCase):
    """Signatures made by independent signers verify; changed messages do not."""

    @asyncTest
    async def test_dkimpy(self) -> None:
        """dkim.sign, both key types, every canonicalization, with and without l=."""
        for key, selector in ((RSA, "rsa"), (ED, "ed")):
            for canon in CANONS:
                for length in (False, True):
                    signed = dkimpySign(MESSAGE, key, selector, canon, length=length)
                    results = await self.assertResults(signed, ["pass"])
                    props = dict(results[0].properties)
                    self.assertEqual(props["header.d"], "example.org")
                    self.assertEqual(props["header.s"], selector)
                    self.assertEqual(props["header.i"], "@example.org")
                    self.assertEqual(props["header.a"], "rsa-sha256" if key is RSA else "ed25519-sha256")
                    sigField = splitFields(signed.partition(b"\r\n\r\n")[0])[0]
                    b = parseTagList(sigField.partition(b":")[2].decode())["b"]
                    self.assertEqual(props["header.b"], b.replace("\r\n ", "")[:8])

    @asyncTest
    async def test_dkimpyLength(self) -> None:
        """
        With l=, text appended after the signed length still passes; without,
        it fails.
        """
        for key, selector in ((RSA, "rsa"), (ED, "ed")):
            for canon in ("relaxed/relaxed", "simple/simple"):
                limited = dkimpySign(MESSAGE, key, selector, canon, length=True)
                await self.assertResults(limited + b"appended\r\n", ["pass"])
                whole = dkimpySign(MESSAGE, key, selector, canon)
                await self.assertResults(whole + b"appended\r\n", ["fail"], "body hash")
                # A body cut shorter than l= fails.
                await self.assertResults(limited[:-40], ["fail"], "body")

    @asyncTest
    async def test_dkimsignProgram(self) -> None:
        """dkimpy's dkimsign program, a separate process reading a key file."""
        program = requirePeer("dkimsign")
        raw = ED.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                               serialization.NoEncryption())
        for selector, data, algorithm in (
            ("rsa", pem(RSA), "rsa-sha256"), ("ed", base64.b64encode(raw), "ed25519-sha256")
        ):
            with tempfile.NamedTemporaryFile(suffix=".key") as keyFile:
                keyFile.write(data)
                keyFile.flush()
                for hcanon, bcanon in (("relaxed", "relaxed"), ("simple", "simple")):
                    result = subprocess.run(
                        [program, "--hcanon", hcanon, "--bcanon", bcanon, "--signalg", algorithm,
                         selector, "example.org", keyFile.name],
                        input=MESSAGE, capture_output=True, timeout=60, check=True,
                    )
                    signed = result.stdout
                    self.assertTrue(signed.startswith(b"DKIM-Signature:"), signed[:100])
                    self.assertTrue(signed.endswith(MESSAGE))
                    await self.assertResults(signed, ["pass"])

    @asyncTest
    async def test_ownSigner(self) -> None:
        """txsmtp's DKIMSigner, both key types, every canonicalization."""
        for key, selector in ((RSA, "rsa"), (ED, "ed")):
            for canon in CANONS:
                await self.assertResults(ownSign(MESSAGE, key, selector, canon, timestamp=1), ["pass"])

    @asyncTest
    async def test_tamperedBody(self) -> None:
        for signed in (dkimpySign(MESSAGE, RSA, "rsa"), ownSign(MESSAGE, ED, "ed")):
            await self.assertResults(signed.replace(b"100", b"900"), ["fail"], "body hash did not verify")

    @asyncTest
    async def test_tamperedHeader(self) -> None:
        for signed in (dkimpySign(MESSAGE, RSA, "rsa"), ownSign(MESSAGE, ED, "ed")):
            await self.assertResults(signed.replace(b"Hello   \t there", b"Hi there"), ["fail"],
                                     "signature did not verify")

    @asyncTest
    async def test_relaxedToleratesWhitespace(self) -> None:
        signed = ownSign(MESSAGE, RSA, "rsa", "relaxed/relaxed")
        changed = signed.replace(b"Hello   \t there", b"Hello there").replace(b"Hello  world", b"Hello world")
        await self.assertResults(changed + b"\r\n\r\n", ["pass"])
        simple = ownSign(MESSAGE, RSA, "rsa", "simple/simple")
        await self.assertResults(simple.replace(b"Hello   \t there", b"Hello there"), ["fail"])

    @asyncTest
    async def test_addedHeaders(self) -> None:
        """
        A field not signed may be added; a field h= names, even one absent
        when signed ("nonexistent", RFC 6376 §5.4), may not: dkimpy lists
        From once more than there are, so a second From breaks it.
        """
        for signed in (dkimpySign(MESSAGE, RSA, "rsa"), ownSign(MESSAGE, ED, "ed")):
            await self.assertResults(b"X-Added: yes\r\n" + signed, ["pass"])
            head, _, body = signed.partition(b"\r\n\r\n")
            await self.assertResults(head + b"\r\nX-Spam: no\r\n\r\n" + body, ["pass"])
        signed = dkimpySign(MESSAGE, RSA, "rsa")
        head, _, body = signed.partition(b"\r\n\r\n")
        await self.assertResults(head + b"\r\nFrom: mallory@example.net\r\n\r\n" + body, ["fail"])
        # An h= naming a field twice selects both instances, bottom up.
        signed = ownSign(MESSAGE.replace(b"Date:", b"To: dave@example.com\r\nDate:"), RSA, "rsa")
        self.assertIn(b"To:To", signed.replace(b"\r\n ", b""))
        await self.assertResults(signed, ["pass"])
        await self.assertResults(signed.replace(b"dave@", b"eve@"), ["fail"])

    @asyncTest
    async def test_signedSignature(self) -> None:
        """
        A signature may sign an older DKIM-Signature field, and name one
        more (nonexistent) to forbid adding one; the field being verified is
        not among those h= selects.
        """
        if dkim is None:
            raise SkipTest("dkimpy is not installed (pip install dkimpy[ed25519])")
        first = ownSign(MESSAGE, ED, "ed")
        signer = dkim.DKIM(first)
        signer.should_not_sign.discard(b"dkim-signature")  # dkimpy refuses by default
        second = signer.sign(b"rsa", b"example.org", pem(RSA), canonicalize=(b"relaxed", b"relaxed"),
                             include_headers=[b"from", b"dkim-signature", b"dkim-signature"]) + first
        self.assertIn(b"dkim-signature : dkim-signature", second.partition(b"\r\n\r\n")[0].replace(b"\r\n ", b" "))
        await self.assertResults(second, ["pass", "pass"])
        # The older signature changed: the newer one fails with it.
        changed = second.replace(b"a=ed25519-sha256;", b"a=ed25519-sha256; z=x;")
        await self.assertResults(changed, ["fail", "fail"], "signature did not verify")

    @asyncTest
    async def test_multipleSignatures(self) -> None:
        """
        Signatures with different c= each get their own body pass; those
        with the same share one.  Each result is in the order of the fields.
        """
        once = dkimpySign(MESSAGE, RSA, "rsa", "relaxed/relaxed")
        twice = ownSign(once, ED, "ed", "simple/simple")
        thrice = ownSign(twice, OTHER_RSA, "rsa", "relaxed/relaxed", domain="example.net")
        verifier = DKIMVerifier()
        verifier.feed(thrice)
        results = await verifier.verify(self.resolver, timeout=(2,))
        self.assertEqual([r.result for r in results], ["pass"] * 3)
        self.assertEqual([r.get("header.d") for r in results], ["example.net", "example.org", "example.org"])
        self.assertEqual([r.get("header.s") for r in results], ["rsa", "ed", "rsa"])
        self.assertEqual(len(verifier._hashers), 2)
        self.assertEqual(passingDomains(results), ["example.net", "example.org"])
        # The body changed: all three fail.
        await self.assertResults(thrice.replace(b"100", b"900"), ["fail"] * 3)

    @asyncTest
    async def test_maxSignatures(self) -> None:
        """Only the first (topmost) maxSignatures fields are checked."""
        signed = MESSAGE
        for _ in range(4):
            signed = ownSign(signed, ED, "ed")
        verifier = DKIMVerifier(maxSignatures=3)
        verifier.feed(signed)
        results = await verifier.verify(self.resolver, timeout=(2,))
        self.assertEqual([r.result for r in results], ["pass"] * 3)
        self.assertEqual(verifier.ignoredSignatures, 1)
        # One query per key name, however many signatures use it.
        self.assertEqual(self.dns.queries, [("ed._domainkey.example.org", "TXT")])

    @asyncTest
    async def test_none(self) -> None:
        self.assertEqual(await self.verify(MESSAGE), [])
        self.assertEqual(await verifyMessage(self.resolver, b"", timeout=(2,)), [])
        self.assertEqual(self.dns.queries, [])

    @asyncTest
    async def test_noBody(self) -> None:
        """A message of header fields only (no empty line) has an empty body."""
        message = b"From: a@example.org\r\nSubject: x\r\n"
        for canon in CANONS:
            await self.assertResults(ownSign(message, RSA, "rsa", canon), ["pass"])
            await self.assertResults(dkimpySign(message, ED, "ed", canon), ["pass"])


class ChunkTests(_DNSTestCase):
    """The message may be cut anywhere: the results do not change."""

    @asyncTest
    async def test_byteByByte(self) -> None:
        for signed in (
            dkimpySign(MESSAGE, RSA, "rsa", "relaxed/relaxed", length=True),
            ownSign(MESSAGE, ED, "ed", "simple/simple"),
            ownSign(MESSAGE, ED, "ed", "relaxed/relaxed").replace(b"100", b"900"),
        ):
            whole = await self.verify(signed)
            self.assertEqual(await self.verify(list(signed[i:i + 1] for i in range(len(signed)))), whole)

    @asyncTest
    async def test_randomChunks(self) -> None:
        """Random bodies (WSP runs, bare CRs, empty lines) in random chunks."""
        rng = random.Random(6376)
        pieces = [b"a", b"z", b" ", b"\t", b"\r", b"\r\n", b"\r\n\r\n", b"x" * 40, b"\xe9"]
        for _ in range(20):
            body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
            message = MESSAGE.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" + body + b"\r\n"
            canon = rng.choice(CANONS)
            signed = ownSign(dkimpySign(message, RSA, "rsa", canon, length=rng.random() < 0.5), ED, "ed", canon)
            whole = await self.verify(signed)
            self.assertEqual([r.result for r in whole], ["pass", "pass"], (canon, body))
            sizes = [rng.randint(1, 30) for _ in range(rng.randint(1, 6))]
            self.assertEqual(await self.verify(chunked(signed, sizes)), whole, (canon, body, sizes))

    @asyncTest
    async def test_longLines(self) -> None:
        """Body lines longer than the part of a line kept (hashed in pieces)."""
        line = (b"word " + b" " * 300 + b"\t") * 100
        message = MESSAGE + line + b" \r\n" + b"y" * 20000 + b"\r\nend\r\n"
        for canon in CANONS:
            signed = dkimpySign(message, RSA, "rsa", canon)
            self.assertEqual(await self.verify(chunked(signed, [4093])), [await self.verify(signed)][0])
            await self.assertResults(signed, ["pass"])


class HeaderBoundTests(_DNSTestCase):
    """The header section is kept up to a bound, never more."""

    @asyncTest
    async def test_tooLong(self) -> None:
        signed = ownSign(MESSAGE, ED, "ed")
        head, _, body = signed.partition(b"\r\n\r\n")
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 200) for i in range(400))
        message = head + b"\r\n" + filler + b"\r\n" + body
        verifier = DKIMVerifier(maxHeaderBytes=65536)
        for chunk in chunked(message, [1000]):
            verifier.feed(chunk)
            self.assertLessEqual(len(verifier._reader._head or b""), 65536 + 1000)
        self.assertTrue(verifier._reader.done)
        verifier.feed(b"more body\r\n" * 100)  # ignored, nothing kept
        results = await verifier.verify(self.resolver, timeout=(2,))
        self.assertEqual([r.result for r in results], ["permerror"])
        self.assertIn("header too long", results[0].reason or "")
        self.assertEqual(results[0].get("header.s"), "ed")
        self.assertEqual(self.dns.queries, [])

    @asyncTest
    async def test_tooLongWithoutSignature(self) -> None:
        """Over the bound with no signature seen: one permerror, no properties."""
        message = b"From: a@example.org\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\nbody\r\n"
        results = await self.verify(message)
        self.assertEqual([(r.result, r.properties) for r in results], [("permerror", ())])
        # Without an empty line, at the end.
        results = await self.verify(message[:-8], maxHeaderBytes=1000)
        self.assertEqual([r.result for r in results], ["permerror"])


def _field(tags: str) -> bytes:
    return b"DKIM-Signature: " + tags.encode() + b"\r\n"


class ErrorTests(_DNSTestCase):
    """Everything that makes a signature unusable, and the DNS outcomes."""

    def signedWith(self, selector: str, key: Key = RSA, **kwargs: Any) -> bytes:
        return ownSign(MESSAGE, key, selector, **kwargs)

    @asyncTest
    async def test_dnsOutcomes(self) -> None:
        await self.assertResults(self.signedWith("missing"), ["permerror"], "no key")
        await self.assertResults(self.signedWith("nodata"), ["permerror"], "no key")
        await self.assertResults(self.signedWith("broken"), ["temperror"], "SERVFAIL")
        await self.assertResults(self.signedWith("two"), ["permerror"], "2 key records")

    @asyncTest
    async def test_keyRecords(self) -> None:
        await self.assertResults(self.signedWith("revoked"), ["permerror"], "revoked")
        await self.assertResults(self.signedWith("mismatch", ED), ["permerror"], "does not match")
        await self.assertResults(self.signedWith("sha1only"), ["permerror"], "sha256")
        await self.assertResults(self.signedWith("notmail"), ["permerror"], "not for email")
        await self.assertResults(self.signedWith("garbage"), ["permerror"], "bad RSA key")
        await self.assertResults(self.signedWith("badsyntax"), ["permerror"], "syntax")
        await self.assertResults(self.signedWith("unknownk"), ["permerror"], "unknown key type")
        await self.assertResults(self.signedWith("shorted", ED), ["permerror"], "not 32 bytes")
        await self.assertResults(self.signedWith("v2"), ["permerror"], "v=DKIM2")
        await self.assertResults(self.signedWith("pkcs1"), ["pass"])

    @asyncTest
    async def test_testingKey(self) -> None:
        """t=y: a pass stays a pass, a failure is only neutral."""
        signed = self.signedWith("testing")
        await self.assertResults(signed, ["pass"])
        await self.assertResults(signed.replace(b"100", b"900"), ["neutral"], "testing")

    @asyncTest
    async def test_strictIdentity(self) -> None:
        """t=s: i= must be in d= itself, not a subdomain."""
        signed = dkimpySign(MESSAGE, RSA, "strict", identity=b"alice@example.org")
        await self.assertResults(signed, ["pass"])
        signed = dkimpySign(MESSAGE, RSA, "strict", identity=b"alice@mail.example.org")
        await self.assertResults(signed, ["permerror"], "t=s")
        signed = dkimpySign(MESSAGE, RSA, "rsa", identity=b"alice@mail.example.org")
        await self.assertResults(signed, ["pass"])

    @asyncTest
    async def test_shortKey(self) -> None:
        """RFC 8301 §3.2: an RSA key under 1024 bits is refused."""
        openssl = requirePeer("openssl")
        result = subprocess.run([openssl, "genrsa", "768"], capture_output=True, check=True, timeout=60)
        short = serialization.load_pem_private_key(result.stdout, password=None)
        assert isinstance(short, rsa.RSAPrivateKey)
        dns = startDNSServer(self, {"short._domainkey.example.org": {"TXT": [record(short)]}})
        signed = ownSign(MESSAGE, short, "short")
        verifier = DKIMVerifier()
        verifier.feed(signed)
        results = await verifier.verify(dns.resolver(), timeout=(2,))
        self.assertEqual([r.result for r in results], ["permerror"])
        self.assertIn("768 bits", results[0].reason or "")

    @asyncTest
    async def test_signatureSyntax(self) -> None:
        """The checks of RFC 6376 §6.1.1, before any DNS query."""
        signed = self.signedWith("rsa", timestamp=1000)
        sigField, rest = signed.split(b"\r\nReceived:", 1)
        tags = parseTagList(sigField.partition(b":")[2].decode())
        rest = b"Received:" + rest

        def variant(**changes: str | None) -> bytes:
            new = dict(tags)
            for name, value in changes.items():
                if value is None:
                    del new[name]
                else:
                    new[name] = value
            return _field("; ".join(f"{k}={v}" for k, v in new.items())) + rest

        cases = [
            (variant(v="2"), "version"),
            (variant(a="rsa-sha1"), "rsa-sha1"),
            (variant(a="rsa-sha512"), "unknown algorithm"),
            (variant(c="nofws"), "canonicalization"),
            (variant(h="Subject:To"), "From"),
            (variant(i="@example.com"), "i= is not within d="),
            (variant(i="@notexample.org"), "i= is not within d="),
            (variant(bh=None, s=None), "missing tags: bh=, s="),
            (variant(l="-1"), "l="),
            (variant(q="https"), "query method"),
            (variant(x="999"), "x= is before t="),
            (variant(b="!!!"), "not base64"),
            (variant(d="exa mple.org"), "d="),
            (_field(f"v=1; v=1; a={tags['a']}") + rest, "twice"),
            (_field("v=1; garbage") + rest, "syntax"),
        ]
        for message, reason in cases:
            await self.assertResults(message, ["permerror"], reason)
        self.assertEqual(self.dns.queries, [])
        # x= in the past with the verifier's clock; in the future: pass.
        await self.assertResults(variant(x="2000"), ["permerror"], "expired", now=3000)
        valid = ownSign(MESSAGE, RSA, "rsa", timestamp=1000)
        await self.assertResults(valid, ["pass"], now=10**10)

    @asyncTest
    async def test_unsignedSignatureField(self) -> None:
        """A DKIM-Signature field that is not UTF-8."""
        await self.assertResults(b"DKIM-Signature: v=1; d=\xff\r\n" + MESSAGE, ["permerror"], "UTF-8")


class OpenDKIMTests(_DNSTestCase):
    """
    OpenDKIM's opendkim-testmsg signs with rsa-sha1 only (relaxed/simple):
    such a signature must not be valid (RFC 8301 §3.1).  Its parts are then
    checked with this module's pieces: the body hash (SHA-1 of the body as
    BodyHasher canonicalizes it) and the signed header data (as
    signedHeaderData builds it) match what OpenDKIM signed.
    """

    def openDKIMSign(self, message: bytes) -> bytes:
        program = requirePeer("opendkim-testmsg")
        with tempfile.TemporaryDirectory() as directory:
            keyPath = os.path.join(directory, "key.pem")
            with open(keyPath, "wb") as f:
                f.write(pem(RSA))
            result = subprocess.run(
                [program, "-C", "-d", "example.org", "-s", "rsa", "-k", keyPath, "-t", directory],
                input=message, capture_output=True, timeout=60,
            )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    @asyncTest
    async def test_rsaSha1Refused(self) -> None:
        message = MESSAGE.replace(b"Received: from a by b; Mon, 7 Dec 2026 00:00:00 +0000\r\n", b"")
        signed = self.openDKIMSign(message)
        self.assertTrue(signed.endswith(message))
        results = await self.assertResults(signed, ["permerror"], "rsa-sha1")
        self.assertEqual(results[0].get("header.a"), "rsa-sha1")

        fields = splitFields(signed.partition(b"\r\n\r\n")[0])
        sigField = fields[0]
        self.assertEqual(fieldName(sigField), "dkim-signature")
        tags = parseTagList(sigField.partition(b":")[2].decode())
        self.assertEqual((tags["a"], tags["c"]), ("rsa-sha1", "relaxed/simple"))
        hasher = BodyHasher("simple", "sha1")
        for chunk in chunked(message.partition(b"\r\n\r\n")[2], [7]):
            hasher.update(chunk)
        self.assertEqual(base64.b64encode(hasher.digest()).decode(), tags["bh"])
        data = signedHeaderData(sigField, fields, [n.strip() for n in tags["h"].split(":")], "relaxed")
        signature = base64.b64decode("".join(tags["b"].split()))
        RSA.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA1())
        with self.assertRaises(InvalidSignature):
            RSA.public_key().verify(signature, data + b" ", padding.PKCS1v15(), hashes.SHA1())

