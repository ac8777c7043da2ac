"""
Tests for :mod:`txsmtp.wire.lines`: bounded CRLF line splitting.

RFC 5321 §2.3.8 (only CRLF ends a line) and §4.5.3.1.4 (a command line is
at most 512 octets including the CRLF).
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.chunks import split as chunked
from txsmtp.wire.lines import TOO_LONG, LineReader


def readAll(reader: LineReader) -> list:
    """Every line the reader can give now."""
    out = []
    while True:
        line = reader.readLine()
        if line is None:
            return out
        out.append(line)




class LineEndTests(unittest.TestCase):
    """Only CR LF ends a line."""

    def test_crlfEndsLine(self):
        r = LineReader()
        r.feed(b"EHLO a\r\nNOOP\r\n")
        self.assertEqual(readAll(r), [b"EHLO a", b"NOOP"])

    def test_bareLFIsPartOfTheLine(self):
        r = LineReader()
        r.feed(b"NOOP\nQUIT\r\n")
        self.assertEqual(readAll(r), [b"NOOP\nQUIT"])

    def test_bareCRIsPartOfTheLine(self):
        r = LineReader()
        r.feed(b"NOOP\rQUIT\r\n")
        self.assertEqual(readAll(r), [b"NOOP\rQUIT"])

    def test_lfCrIsNotALineEnd(self):
        r = LineReader()
        r.feed(b"a\n\rb\r\n")
        self.assertEqual(readAll(r), [b"a\n\rb"])

    def test_incompleteLineWaits(self):
        r = LineReader()
        r.feed(b"NOOP")
        self.assertIsNone(r.readLine())
        self.assertEqual(r.pending(), 4)
        r.feed(b"\r\n")
        self.assertEqual(readAll(r), [b"NOOP"])
        self.assertEqual(r.pending(), 0)

    def test_emptyLine(self):
        r = LineReader()
        r.feed(b"\r\n\r\n")
        self.assertEqual(readAll(r), [b"", b""])

    def test_crAtChunkEndLfInNext(self):
        r = LineReader()
        r.feed(b"NOOP\r")
        self.assertIsNone(r.readLine())
        r.feed(b"\nQUIT\r\n")
        self.assertEqual(readAll(r), [b"NOOP", b"QUIT"])

    def test_crAtChunkEndNotFollowedByLf(self):
        r = LineReader()
        r.feed(b"NO\r")
        self.assertIsNone(r.readLine())
        r.feed(b"OP\r\n")
        self.assertEqual(readAll(r), [b"NO\rOP"])

    def test_tooSmallLimitRefused(self):
        self.assertRaises(ValueError, LineReader, 2)


class LimitTests(unittest.TestCase):
    """RFC 5321 §4.5.3.1.4: 512 octets including the CRLF."""

    def test_exactly512(self):
        r = LineReader(512)
        line = b"x" * 510
        r.feed(line + b"\r\n")
        self.assertEqual(readAll(r), [line])

    def test_513IsTooLong(self):
        r = LineReader(512)
        r.feed(b"x" * 511 + b"\r\nNOOP\r\n")
        self.assertEqual(readAll(r), [TOO_LONG, b"NOOP"])

    def test_exactly512InPieces(self):
        """The limit holds however the line arrives (CR last in one read)."""
        r = LineReader(512)
        r.feed(b"x" * 510 + b"\r")
        self.assertIsNone(r.readLine())
        self.assertFalse(r.discarding)
        r.feed(b"\n")
        self.assertEqual(readAll(r), [b"x" * 510])

    def test_513InPieces(self):
        r = LineReader(512)
        r.feed(b"x" * 511 + b"\r")
        self.assertIsNone(r.readLine())
        r.feed(b"\nNOOP\r\n")
        self.assertEqual(readAll(r), [TOO_LONG, b"NOOP"])

    def test_overLongLineReportedOnceThenNextLineOK(self):
        r = LineReader(512)
        r.feed(b"MAIL FROM:<" + b"a" * 5000 + b"@example.com>\r\nNOOP\r\n")
        self.assertEqual(readAll(r), [TOO_LONG, b"NOOP"])
        self.assertIsNone(r.readLine())

    def test_overLongLineStreamedIsNotBuffered(self):
        """A 100 KB line fed in pieces never makes the reader hold more than the limit."""
        r = LineReader(512)
        seen = []
        for _ in range(100):
            r.feed(b"QUIT" + b"y" * 1020)
            seen.extend(readAll(r))
            self.assertLessEqual(r.pending(), 512)
        self.assertTrue(r.discarding)
        self.assertEqual(seen, [])
        r.feed(b"\r\nNOOP\r\n")
        self.assertEqual(readAll(r), [TOO_LONG, b"NOOP"])
        self.assertFalse(r.discarding)

    def test_overLongLineCrAtChunkEnd(self):
        """While discarding, a CR at the end of a read still pairs with the next LF."""
        r = LineReader(512)
        r.feed(b"z" * 600 + b"\r")
        self.assertIsNone(r.readLine())
        self.assertTrue(r.discarding)
        r.feed(b"\nNOOP\r\n")
        self.assertEqual(readAll(r), [TOO_LONG, b"NOOP"])

    def test_overLongLineCrNotFollowedByLf(self):
        r = LineReader(512)
        r.feed(b"z" * 600 + b"\r")
        self.assertIsNone(r.readLine())
        r.feed(b"more\r\nNOOP\r\n")
        self.assertEqual(readAll(r), [TOO_LONG, b"NOOP"])

    def test_twoOverLongLines(self):
        r = LineReader(16)
        r.feed(b"a" * 40 + b"\r\n" + b"b" * 40 + b"\r\nok\r\n")
        self.assertEqual(readAll(r), [TOO_LONG, TOO_LONG, b"ok"])

    def test_authLimit(self):
        """A larger limit (RFC 4954 §4: 12288 for AUTH) is honoured."""
        r = LineReader(12288)
        r.feed(b"A" * 12286 + b"\r\n" + b"B" * 12287 + b"\r\n")
        self.assertEqual(readAll(r), [b"A" * 12286, TOO_LONG])

    def test_tooLongIsTruthyAndNamed(self):
        self.assertTrue(TOO_LONG)
        self.assertEqual(repr(TOO_LONG), "TOO_LONG")


class TakeRestTests(unittest.TestCase):
    def test_takeRestAfterLine(self):
        r = LineReader()
        r.feed(b"DATA\r\nSubject: hi\r\n\r\nbody")
        self.assertEqual(r.readLine(), b"DATA")
        self.assertEqual(r.takeRest(), b"Subject: hi\r\n\r\nbody")
        self.assertEqual(r.pending(), 0)
        self.assertIsNone(r.readLine())
        self.assertEqual(r.takeRest(), b"")

    def test_takeRestKeepsCompleteLines(self):
        r = LineReader()
        r.feed(b"A\r\nB\r\nC")
        self.assertEqual(r.readLine(), b"A")
        self.assertEqual(r.takeRest(), b"B\r\nC")

    def test_takeRestEndsDiscarding(self):
        r = LineReader(16)
        r.feed(b"x" * 100)
        self.assertIsNone(r.readLine())
        self.assertTrue(r.discarding)
        r.takeRest()
        self.assertFalse(r.discarding)
        r.feed(b"NOOP\r\n")
        self.assertEqual(readAll(r), [b"NOOP"])

    def test_feedAfterTakeRest(self):
        r = LineReader()
        r.feed(b"A\r\nB")
        self.assertEqual(r.readLine(), b"A")
        r.takeRest()
        r.feed(b"C\r\n")
        self.assertEqual(readAll(r), [b"C"])


# CRLF is drawn more often than the rest, so that most streams hold complete lines.
_streams = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\n", b"\r\n", b"a", b"bc", b"NOOP", b"x" * 7, b" "]), max_size=60
).map(b"".join)


class ChunkingPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(_streams, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20), st.sampled_from([3, 5, 8, 12, 20, 40]))
    def test_anyChunkingGivesTheSameLines(self, stream, cuts, limit):
        whole = LineReader(limit)
        whole.feed(stream)
        expected = readAll(whole)
        event("a line too long" if TOO_LONG in expected else "no line too long")
        event("complete lines read" if any(line is not TOO_LONG for line in expected) else "no complete line")

        r = LineReader(limit)
        got = []
        for piece in chunked(stream, cuts):
            r.feed(piece)
            got.extend(readAll(r))
            # Once every complete line is read, less than one line is held.
            self.assertLess(r.pending(), limit)
        self.assertEqual(got, expected)
        self.assertEqual(r.takeRest(), whole.takeRest())

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=20).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")), max_size=10))
    def test_linesRoundTrip(self, lines):
        event(f"{min(len(lines), 2)} lines")
        r = LineReader(64)
        r.feed(b"".join(line + b"\r\n" for line in lines))
        self.assertEqual(readAll(r), lines)
