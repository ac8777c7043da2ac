"""
Tests for :mod:`txsmtp.wire.reply`: reply formatting and parsing
(RFC 5321 §4.2, §4.5.3.1.5; enhanced status codes RFC 2034 / RFC 3463).
"""

from __future__ import annotations

import re

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.chunks import split
from tests.strategies import mutated, replies
from txsmtp.errors import SMTPProtocolError
from txsmtp.wire.reply import ENHANCED_RE, Reply, ReplyParser, formatReply


class FormatTests(unittest.TestCase):
    def test_singleLine(self):
        self.assertEqual(formatReply(250, "OK"), b"250 OK\r\n")

    def test_multiLineList(self):
        self.assertEqual(
            formatReply(250, ["mx.example.com", "PIPELINING", "SIZE 1000"]),
            b"250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
        )

    def test_multiLineString(self):
        self.assertEqual(formatReply(550, "one\ntwo"), b"550-one\r\n550 two\r\n")

    def test_enhancedOnEveryLine(self):
        """RFC 2034 §4: the enhanced code starts the text of every line."""
        self.assertEqual(
            formatReply(550, ["no such user", "try again"], "5.1.1"),
            b"550-5.1.1 no such user\r\n550 5.1.1 try again\r\n",
        )

    def test_emptyText(self):
        self.assertEqual(formatReply(250), b"250 \r\n")
        self.assertEqual(formatReply(250, "", "2.0.0"), b"250 2.0.0\r\n")
        self.assertEqual(formatReply(250, []), b"250 \r\n")

    def test_codeIsThreeDigits(self):
        self.assertTrue(formatReply(354, "go ahead").startswith(b"354 "))

    def test_utf8Text(self):
        self.assertEqual(formatReply(250, "caf\u00e9"), "250 caf\u00e9\r\n".encode())

    def test_crlfInTextMakesSeparateLines(self):
        """
        RFC 5321 §4.2.1: reply text is ``textstring`` (HT and printable
        characters); CR and LF appear only as the line end.  Text with
        a CRLF must not carry a stray CR into the reply.
        """
        out = formatReply(451, "first\r\nsecond", "4.3.0")
        self.assertEqual(out, b"451-4.3.0 first\r\n451 4.3.0 second\r\n")

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(200, 599),
        st.one_of(st.text(max_size=40), st.lists(st.text(max_size=20), max_size=5)),
        st.sampled_from([None, "2.0.0", "5.1.1"]),
    )
    def test_noBareCROrLFInOutput(self, code, text, enhanced):
        """Whatever the text, every output line is CODE SP/- text CRLF with no CR or LF inside."""
        out = formatReply(code, text, enhanced)
        event("multi-line reply" if out.count(b"\r\n") > 1 else "one-line reply")
        self.assertTrue(out.endswith(b"\r\n"))
        lines = out[:-2].split(b"\r\n")
        for n, line in enumerate(lines):
            self.assertNotIn(b"\r", line)
            self.assertNotIn(b"\n", line)
            self.assertEqual(line[:3], b"%03d" % code)
            self.assertEqual(line[3:4], b" " if n == len(lines) - 1 else b"-")


class ParseTests(unittest.TestCase):
    def test_singleLine(self):
        self.assertEqual(ReplyParser().feed(b"250 OK\r\n"), [Reply(250, ("OK",), None)])

    def test_noText(self):
        self.assertEqual(ReplyParser().feed(b"250\r\n"), [Reply(250, ("",), None)])

    def test_multiLine(self):
        replies = ReplyParser().feed(b"250-mx.example.com Hello\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
        self.assertEqual(len(replies), 1)
        self.assertEqual(replies[0].code, 250)
        self.assertEqual(replies[0].lines, ("mx.example.com Hello", "PIPELINING", "SIZE 100"))
        self.assertEqual(replies[0].text, "mx.example.com Hello\nPIPELINING\nSIZE 100")

    def test_enhanced(self):
        [r] = ReplyParser().feed(b"550-5.1.1 no such user\r\n550 5.1.1 here\r\n")
        self.assertEqual(r.enhanced, "5.1.1")
        self.assertEqual(r.lines, ("no such user", "here"))
        self.assertFalse(r.positive)
        self.assertEqual(str(r), "550 5.1.1 no such user / here")

    def test_enhancedClassMustMatchCode(self):
        """RFC 3463 §2: the class digit matches the reply's first digit; otherwise it is just text."""
        [r] = ReplyParser().feed(b"250 5.1.1 odd\r\n")
        self.assertIsNone(r.enhanced)
        self.assertEqual(r.lines, ("5.1.1 odd",))

    def test_enhancedOnlyText(self):
        [r] = ReplyParser().feed(b"250 2.0.0\r\n")
        self.assertEqual(r.enhanced, "2.0.0")
        self.assertEqual(r.lines, ("",))

    def test_severalRepliesInOneRead(self):
        replies = ReplyParser().feed(b"250 a\r\n251 b\r\n354 c\r\n")
        self.assertEqual([r.code for r in replies], [250, 251, 354])
        self.assertTrue(all(r.positive for r in replies))

    def test_partialReplyWaits(self):
        p = ReplyParser()
        self.assertEqual(p.feed(b"250-a\r\n250-b"), [])
        self.assertEqual(p.feed(b"\r\n250 c\r"), [])
        self.assertEqual(p.feed(b"\n"), [Reply(250, ("a", "b", "c"), None)])

    def test_roundTripFormat(self):
        [r] = ReplyParser().feed(formatReply(452, ["too many", "recipients"], "4.5.3"))
        self.assertEqual(r, Reply(452, ("too many", "recipients"), "4.5.3"))

    def test_enhancedRegex(self):
        self.assertTrue(ENHANCED_RE.match("2.0.0"))
        self.assertTrue(ENHANCED_RE.match("5.123.456"))
        self.assertFalse(ENHANCED_RE.match("3.0.0"))
        self.assertFalse(ENHANCED_RE.match("5.1"))


class MalformedTests(unittest.TestCase):
    def assertProtocolError(self, data: bytes, **kw):
        self.assertRaises(SMTPProtocolError, ReplyParser(**kw).feed, data)

    def test_garbage(self):
        for junk in (b"hello\r\n", b"25\r\n", b"2500 x\r\n", b"25x ok\r\n", b"\r\n", b"abc-def\r\n", b" 250 x\r\n"):
            self.assertProtocolError(junk)

    def test_codeOutOfRange(self):
        self.assertProtocolError(b"199 x\r\n")
        self.assertProtocolError(b"600 x\r\n")
        self.assertProtocolError(b"099 x\r\n")

    def test_codeMismatchInContinuation(self):
        self.assertProtocolError(b"250-first\r\n251 second\r\n")
        self.assertProtocolError(b"250-first\r\n250-second\r\n550 third\r\n")

    def test_100KBReplyLine(self):
        self.assertProtocolError(b"250 " + b"x" * 100_000 + b"\r\n")

    def test_100KBReplyLineWithoutCRLF(self):
        """The bound holds before the line is complete (no unbounded buffer)."""
        self.assertProtocolError(b"250 " + b"x" * 100_000)

    def test_100KBReplyLineInPieces(self):
        p = ReplyParser()
        with self.assertRaises(SMTPProtocolError):
            for _ in range(100):
                p.feed(b"x" * 1000)

    def test_100KBMultiLineReply(self):
        """Many short continuation lines: RFC 5321 does not bound the count, the parser must."""
        self.assertProtocolError(b"250-" + b"y" * 70 + b"\r\n" * 1 + (b"250-" + b"y" * 70 + b"\r\n") * 1500)

    def test_100KBMultiLineReplyInPieces(self):
        p = ReplyParser()
        with self.assertRaises(SMTPProtocolError):
            for _ in range(1500):
                p.feed(b"250-" + b"y" * 70 + b"\r\n")

    def test_lineLimitConfigurable(self):
        self.assertProtocolError(b"250 " + b"x" * 600 + b"\r\n", maxLineLength=512)
        [r] = ReplyParser(maxLineLength=512).feed(b"250 " + b"x" * 506 + b"\r\n")
        self.assertEqual(len(r.lines[0]), 506)


_replies = st.lists(
    st.tuples(
        st.integers(200, 599),
        st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30), min_size=1, max_size=4),
        st.sampled_from([None, "0.0.0", "1.2.3"]),
    ),
    max_size=6,
)


_wellFormedStream = st.lists(replies(), min_size=1, max_size=4).map(lambda rs: b"".join(r[0] for r in rs))
_REPLY_SPECIAL = [b"\r\n", b"\r", b"\n", b"-", b" ", b"0", b"1", b"9", b"2.0.0 ", b"\xff", b"\x00"]


class ChunkedParsingTests(unittest.TestCase):
    @settings(max_examples=250, deadline=None)
    @given(_replies, st.lists(st.integers(0, 10_000), max_size=20))
    def test_chunkingDoesNotMatter(self, specs, cuts):
        data = b""
        for code, lines, enh in specs:
            enhanced = None if enh is None else f"{code // 100}.{enh[2:]}"
            data += formatReply(code, lines, enhanced)
        expected = ReplyParser().feed(data)
        event("a multi-line reply" if any(len(r.lines) > 1 for r in expected) else "no multi-line reply")
        self.assertEqual(len(expected), len(specs))
        p = ReplyParser()
        got = []
        for piece in split(data, cuts):
            got.extend(p.feed(piece))
        self.assertEqual(got, expected)
        for reply, (code, lines, _enh) in zip(got, specs, strict=True):
            self.assertEqual(reply.code, code)
            self.assertEqual(len(reply.lines), len(lines))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(replies(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=10))
    def test_handWrittenReplies(self, specs, cuts):
        """Replies written out by hand (not by formatReply), single- and multi-line, however split."""
        data = b"".join(wire for wire, _code, _n, _enh in specs)
        p = ReplyParser()
        got = []
        for piece in split(data, cuts):
            got.extend(p.feed(piece))
        self.assertEqual(len(got), len(specs))
        for reply, (_wire, code, n, enhanced) in zip(got, specs, strict=True):
            self.assertEqual(reply.code, code)
            self.assertEqual(len(reply.lines), n)
            if enhanced is not None:
                self.assertEqual(reply.enhanced, enhanced)
        event("a multi-line reply" if any(n > 1 for _w, _c, n, _e in specs) else "single-line replies only")
        event("enhanced codes" if any(e for _w, _c, _n, e in specs) else "no enhanced code")

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=200),
            _wellFormedStream,
            mutated(_wellFormedStream, _REPLY_SPECIAL),
        )
    )
    def test_arbitraryInputOnlyProtocolError(self, data):
        p = ReplyParser()
        try:
            replies = p.feed(data)
        except SMTPProtocolError:
            event("parser: protocol error")
            return
        event(f"parser: {min(len(replies), 2)} replies" if replies else "parser: no reply")
        for r in replies:
            self.assertTrue(200 <= r.code <= 599)
            self.assertTrue(r.enhanced is None or re.match(r"^[245]\.\d{1,3}\.\d{1,3}$", r.enhanced))
            self.assertEqual(int(r.enhanced[0]) if r.enhanced else r.code // 100, r.code // 100)
            self.assertGreaterEqual(len(r.lines), 1)
        # Every complete line was used: what is left is less than a line.
        self.assertNotIn(b"\r\n", p._buf)
