"""
Tests for :mod:`txsmtp.mailauth.dkimcanon`, against values worked out from
RFC 6376 §3.4-3.5 (the signer and verifier built on it are tested against
other implementations in tests/test_dkimsign.py and
tests/test_mailauth_dkimverify.py).
"""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import TestCase

from txsmtp.mailauth.dkimcanon import (
    BodyHasher,
    HeaderReader,
    HeaderSectionTooLong,
    canonHeader,
    parseCanonicalization,
    selectFields,
    splitFields,
)


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, position, index = [], 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        chunks.append(data[position:position + size])
        position += size
        index += 1
    return chunks


class BodyHasherTests(TestCase):
    """The body hash with l= (RFC 6376 §3.5), against known values."""

    def digest(self, body: bytes, canon: str, limit: int | None, sizes: list[int]) -> BodyHasher:
        hasher = BodyHasher(canon, "sha256", limit)
        for chunk in chunked(body, sizes):
            hasher.update(chunk)
        hasher.digest()
        return hasher

    def test_limit(self) -> None:
        body = b"abc  def \r\n\r\n\r\nghi\r\n\r\n"
        cases = [
            ("relaxed", None, b"abc def\r\n\r\n\r\nghi\r\n"),
            ("relaxed", 5, b"abc d"),
            ("relaxed", 10, b"abc def\r\n\r"),
            ("relaxed", 13, b"abc def\r\n\r\n\r\n"),
            ("simple", 11, b"abc  def \r\n"),
            ("simple", 0, b""),
            ("relaxed", 1000, b"abc def\r\n\r\n\r\nghi\r\n"),
        ]
        for canon, limit, canonical in cases:
            for sizes in ([1], [3, 7], [len(body)]):
                hasher = self.digest(body, canon, limit, sizes)
                self.assertEqual(hasher.digest(), hashlib.sha256(canonical).digest(), (canon, limit, sizes))
                self.assertEqual(hasher.length, len(canonical))
        # Past the limit nothing more is read.
        hasher = BodyHasher("simple", "sha256", 4)
        hasher.update(b"abcdef\r\n")
        self.assertTrue(hasher.full)
        hasher.update(b"x" * 100000)
        self.assertEqual(hasher.carry, b"")
        self.assertEqual(hasher.digest(), hashlib.sha256(b"abcd").digest())

    def test_emptyBodies(self) -> None:
        """An empty body: CRLF for "simple", nothing for "relaxed" (§3.4.3-3.4.4)."""
        for body in (b"", b"\r\n", b"\r\n\r\n"):
            self.assertEqual(self.digest(body, "simple", None, [1]).digest(), hashlib.sha256(b"\r\n").digest())
            self.assertEqual(self.digest(body, "relaxed", None, [1]).digest(), hashlib.sha256(b"").digest())


class HeaderTests(TestCase):
    def test_selectBottomUp(self) -> None:
        """RFC 6376 §5.4.2: instances from the bottom up; names without one left sign nothing."""
        fields = splitFields(b"To: one\r\nFrom: f\r\nto : two\r\n folded\r\nSubject: s")
        self.assertEqual(fields, [b"To: one", b"From: f", b"to : two\r\n folded", b"Subject: s"])
        self.assertEqual(
            selectFields(fields, ["from", "To", "TO", "to", "Reply-To"]),
            [b"From: f", b"to : two\r\n folded", b"To: one"],
        )

    def test_canonHeader(self) -> None:
        field = b"SubJect \t:  Hello  \t there \r\n  again  "
        self.assertEqual(canonHeader(field, "relaxed"), b"subject:Hello there again\r\n")
        self.assertEqual(canonHeader(field, "simple"), field + b"\r\n")

    def test_parseCanonicalization(self) -> None:
        self.assertEqual(parseCanonicalization("relaxed"), ("relaxed", "simple"))
        self.assertEqual(parseCanonicalization("Relaxed/Relaxed"), ("relaxed", "relaxed"))
        self.assertEqual(parseCanonicalization(""), ("simple", "simple"))
        self.assertRaises(ValueError, parseCanonicalization, "nofws/simple")

    def test_reader(self) -> None:
        message = b"A: 1\r\nB: 2\r\n\r\nbody\r\n"
        for size in range(1, len(message)):
            reader = HeaderReader(100)
            body = b""
            for chunk in chunked(message, [size]):
                body += chunk if reader.done else (reader.feed(chunk) or b"")
            self.assertEqual((reader.block, body), (b"A: 1\r\nB: 2", b"body\r\n"), size)
        reader = HeaderReader(10)
        with self.assertRaises(HeaderSectionTooLong) as caught:
            for chunk in chunked(b"A: " + b"x" * 100, [4]):
                reader.feed(chunk)
        self.assertEqual(caught.exception.partial, (b"A: " + b"x" * 100)[:10])
        self.assertTrue(reader.done)
        reader = HeaderReader(100)
        reader.feed(b"A: 1\r\n")
        reader.finish()
        self.assertEqual(reader.block, b"A: 1")
