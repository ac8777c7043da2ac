"""
Tests for :mod:`txsmtp.wire.data`: DATA transparency (RFC 5321 §4.5.2),
the end-of-data sequence (§4.1.1.4) and SMTP smuggling (CVE-2023-51764 and
friends; see SMTP-NOTES §2).
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.chunks import SMUGGLING, split
from txsmtp.wire.data import NORMALIZE, REJECT, DataDecoder, DataEncoder

SMUGGLED = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nForged\r\n"




def decode(pieces: list[bytes], mode: str = REJECT) -> tuple[DataDecoder, bytes]:
    """Feed ``pieces`` until done; return the decoder and the body."""
    d = DataDecoder(mode)
    out = []
    for piece in pieces:
        if d.done:
            # What follows the terminator belongs to the command phase.
            d.rest += piece
            continue
        out.append(d.feed(piece))
    return d, b"".join(out)


def dotLineEvent(x: bytes) -> None:
    """Record whether ``x`` has a line starting with a dot (stuffing exercised)."""
    lines = x.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    event("has a line starting with a dot" if any(line.startswith(b".") for line in lines) else "no dot line")


def encode(pieces: list[bytes]) -> bytes:
    e = DataEncoder()
    return b"".join(e.encode(p) for p in pieces) + e.finish()


def normalised(x: bytes) -> bytes:
    """``x`` with every line end as CRLF and a final CRLF (when non-empty)."""
    n = x.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if n and not n.endswith(b"\r\n"):
        n += b"\r\n"
    return n


# A body made of CRLF-terminated lines, with the awkward ones well represented.
_line = st.one_of(
    st.sampled_from([b"", b".", b"..", b"...", b". ", b".\t", b"Subject: x", b"QUIT", b".\x00"]),
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.binary(max_size=10).map(lambda b: b"." + b.replace(b"\r", b"").replace(b"\n", b"")),
)
_bodies = st.lists(_line, max_size=25).map(lambda lines: b"".join(line + b"\r\n" for line in lines))
_cuts = st.lists(st.integers(min_value=0, max_value=100_000), max_size=30)
# Any octets, with line ends (bare or not), dots at line starts and
# would-be terminators well represented: random binary almost never has them.
_messy = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"\r\n.", b"\n.", b"\r.", b"\r\n.\r\n", b"\r\n..\r\n"]),
            st.binary(max_size=12),
        ),
        max_size=40,
    ).map(b"".join),
)


class DecoderBasicsTests(unittest.TestCase):
    def test_emptyMessage(self):
        d = DataDecoder()
        self.assertEqual(d.feed(b".\r\n"), b"")
        self.assertTrue(d.done)
        self.assertEqual(d.rest, b"")
        self.assertEqual(d.size, 0)

    def test_emptyMessageByteByByte(self):
        d = DataDecoder()
        for b in (b".", b"\r"):
            self.assertEqual(d.feed(b), b"")
            self.assertFalse(d.done)
        self.assertEqual(d.feed(b"\n"), b"")
        self.assertTrue(d.done)

    def test_unstuffFirstLine(self):
        d = DataDecoder()
        body = d.feed(b"..hidden\r\n.\r\n")
        self.assertEqual(body, b".hidden\r\n")
        self.assertTrue(d.done)
        self.assertEqual(d.size, 9)

    def test_unstuffFirstLineInPieces(self):
        d, body = decode([b".", b".", b"x\r", b"\n.", b"\r", b"\n"])
        self.assertTrue(d.done)
        self.assertEqual(body, b".x\r\n")

    def test_firstLineDoubleDotOnly(self):
        """``..`` alone is a line holding one dot, not the end."""
        d, body = decode([b"..\r\n.\r\n"])
        self.assertEqual(body, b".\r\n")
        self.assertTrue(d.done)

    def test_unstuffEveryLine(self):
        d, body = decode([b"a\r\n..b\r\n...c\r\n..\r\nd.e\r\n.\r\n"])
        self.assertEqual(body, b"a\r\n.b\r\n..c\r\n.\r\nd.e\r\n")

    def test_dotNotAtLineStartUntouched(self):
        d, body = decode([b"a..b\r\n x.\r\n.\r\n"])
        self.assertEqual(body, b"a..b\r\n x.\r\n")

    def test_sizeCountsDecodedOctets(self):
        d, body = decode([b"..a\r\n..b\r\n.\r\n"])
        self.assertEqual(d.size, len(body))
        self.assertEqual(d.size, 8)

    def test_restHoldsPipelinedCommands(self):
        d = DataDecoder()
        body = d.feed(b"Subject: x\r\n\r\nhi\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")
        self.assertTrue(d.done)
        self.assertEqual(body, b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual(d.rest, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")

    def test_restWhenTerminatorSplit(self):
        d = DataDecoder()
        d.feed(b"hi\r\n.\r")
        self.assertFalse(d.done)
        d.feed(b"\nQUIT\r\n")
        self.assertTrue(d.done)
        self.assertEqual(d.rest, b"QUIT\r\n")

    def test_feedAfterDone(self):
        d = DataDecoder()
        d.feed(b".\r\n")
        self.assertRaises(RuntimeError, d.feed, b"x")

    def test_badMode(self):
        self.assertRaises(ValueError, DataDecoder, "ignore")

    def test_noBareLineEndInCleanBody(self):
        d, _ = decode([b"a\r\nb\r\n.\r\n"])
        self.assertFalse(d.bareLineEnd)

    def test_crlfBeforeTerminatorWithBareCR(self):
        """A real CRLF.CRLF ends the data even after a bare CR (and it is flagged)."""
        d, body = decode([b"a\r\r\n.\r\n"])
        self.assertTrue(d.done)
        self.assertTrue(d.bareLineEnd)


class LongLineTests(unittest.TestCase):
    """A long line never changes the decoder's state (twisted.mail.smtp bug)."""

    def test_100KBLineWithCommandsInside(self):
        line = (b"QUIT MAIL FROM:<x@y> . " * 5000)[:100_000]
        d = DataDecoder()
        out = []
        for i in range(0, len(line), 4096):
            out.append(d.feed(line[i : i + 4096]))
            self.assertFalse(d.done)
            self.assertFalse(d.bareLineEnd)
        out.append(d.feed(b"\r\nafter\r\n.\r\nNOOP\r\n"))
        self.assertTrue(d.done)
        self.assertEqual(b"".join(out), line + b"\r\nafter\r\n")
        self.assertEqual(d.rest, b"NOOP\r\n")
        self.assertEqual(d.size, len(line) + 9)

    def test_100KBLineInOneChunk(self):
        line = b"x" * 100_000
        d = DataDecoder()
        body = d.feed(line)
        self.assertFalse(d.done)
        self.assertEqual(body + d.feed(b"\r\n.\r\n"), line + b"\r\n")


class SmugglingTests(unittest.TestCase):
    """
    RFC 5321 §4.1.1.4 and §2.3.8: only CRLF "." CRLF ends the data.  Every
    near miss must neither end the data nor reach a delivery unflagged.
    """

    def assertNotEnded(self, stream: bytes, mode: str) -> DataDecoder:
        # Every single split point: the decoder's state must not depend on it.
        for cut in range(len(stream) + 1):
            d, body = decode([stream[:cut], stream[cut:]], mode)
            self.assertFalse(d.done, f"ended on {stream!r} split at {cut}")
            if mode == REJECT:
                self.assertTrue(d.bareLineEnd, f"bare line end not seen in {stream!r} split at {cut}")
            else:
                self.assertFalse(d.bareLineEnd)
                # Whatever is passed on has CRLF line ends only.
                self.assertEqual(body.count(b"\r"), body.count(b"\n"))
        return d

    def test_rejectMode(self):
        for seq in SMUGGLING:
            stream = b"Subject: hi\r\n\r\nhello" + seq + SMUGGLED
            self.assertNotEnded(stream, REJECT)

    def test_rejectModeSequenceAtStart(self):
        for seq in SMUGGLING:
            self.assertNotEnded(seq + SMUGGLED, REJECT)

    def test_rejectModeThenRealEnd(self):
        """After a near miss, the real terminator ends the data, and only it."""
        for seq in SMUGGLING:
            stream = b"hello" + seq + SMUGGLED + b".\r\nQUIT\r\n"
            d, body = decode([stream])
            self.assertTrue(d.done, seq)
            self.assertTrue(d.bareLineEnd, seq)
            self.assertEqual(d.rest, b"QUIT\r\n", seq)
            self.assertIn(b"RCPT TO:<victim@example.com>", body)

    def test_normalizeMode(self):
        for seq in SMUGGLING:
            stream = b"Subject: hi\r\n\r\nhello" + seq + SMUGGLED
            self.assertNotEnded(stream, NORMALIZE)

    def test_normalizeModeOutputHasOnlyCRLF(self):
        for seq in SMUGGLING:
            stream = b"hello" + seq + SMUGGLED + b".\r\n"
            d, body = decode([stream], NORMALIZE)
            self.assertTrue(d.done)
            self.assertFalse(d.bareLineEnd)
            self.assertEqual(body.count(b"\r"), body.count(b"\r\n"), seq)
            self.assertEqual(body.count(b"\n"), body.count(b"\r\n"), seq)
            self.assertIn(b"RCPT TO:<victim@example.com>", body)

    def test_normalizeTurnsBareEndsIntoCRLF(self):
        d, body = decode([b"a\nb\rc\r\n.\r\n"], NORMALIZE)
        self.assertEqual(body, b"a\r\nb\r\nc\r\n")
        self.assertEqual(d.size, len(body))
        self.assertFalse(d.bareLineEnd)

    def test_rejectModePassesBareEndsUnchanged(self):
        d, body = decode([b"a\nb\r\n.\r\n"], REJECT)
        self.assertTrue(d.bareLineEnd)
        self.assertEqual(body, b"a\nb\r\n")


class DecoderPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(_bodies, st.binary(max_size=40), _cuts)
    def test_roundTripAtEveryChunking(self, body, following, cuts):
        dotLineEvent(body)
        wire = encode([body])
        stream = wire + following
        d, got = decode(split(stream, cuts))
        self.assertTrue(d.done)
        self.assertEqual(got, body)
        self.assertEqual(d.rest, following)
        self.assertEqual(d.size, len(body))
        self.assertFalse(d.bareLineEnd)

    @settings(max_examples=300, deadline=None)
    @given(_messy, _cuts, _cuts)
    def test_decodeEncodeIsNormalised(self, x, encodeCuts, decodeCuts):
        dotLineEvent(x)
        event("bare CR or LF in input" if x.count(b"\r") + x.count(b"\n") > 2 * x.count(b"\r\n") else "no bare line end")
        wire = encode(split(x, encodeCuts))
        d, got = decode(split(wire, decodeCuts))
        self.assertTrue(d.done)
        self.assertEqual(d.rest, b"")
        self.assertEqual(got, normalised(x))
        self.assertFalse(d.bareLineEnd)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"\r\n.\r\n"]), max_size=30).map(b"".join),
        _cuts,
    )
    def test_rejectModeChunkingInvariant(self, stream, cuts):
        """done, rest, body and the bare-line-end flag never depend on TCP chunking."""
        whole, wholeBody = decode([stream], REJECT)
        d, body = decode(split(stream, cuts), REJECT)
        event(f"done={whole.done} bareLineEnd={whole.bareLineEnd}")
        self.assertEqual((d.done, d.rest, body, d.bareLineEnd, d.size),
                         (whole.done, whole.rest, wholeBody, whole.bareLineEnd, whole.size))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"\r\n.\r\n"]), max_size=30).map(b"".join),
        _cuts,
    )
    def test_normalizeModeChunkingInvariant(self, stream, cuts):
        """
        The same octets on the wire must give the same stored message however
        TCP splits them (bareLineEnds="normalize" too).
        """
        whole, wholeBody = decode([stream], NORMALIZE)
        d, body = decode(split(stream, cuts), NORMALIZE)
        event(f"done={whole.done}")
        self.assertEqual((d.done, d.rest, body, d.size), (whole.done, whole.rest, wholeBody, whole.size))

    def test_normalizeModeBareLFBeforeDotAtChunkEnd(self):
        """Minimal case of the property above: ``a LF`` then ``.b CRLF`` in the next read."""
        _, whole = decode([b"a\n.b\r\n.\r\n"], NORMALIZE)
        _, pieces = decode([b"a\n", b".b\r\n.\r\n"], NORMALIZE)
        self.assertEqual(pieces, whole)


class EncoderTests(unittest.TestCase):
    def test_stuffing(self):
        self.assertEqual(encode([b"a\r\n.b\r\n"]), b"a\r\n..b\r\n.\r\n")

    def test_messageStartingWithDot(self):
        self.assertEqual(encode([b".hidden\r\n"]), b"..hidden\r\n.\r\n")
        self.assertEqual(encode([b".\r\n"]), b"..\r\n.\r\n")

    def test_emptyMessage(self):
        self.assertEqual(encode([]), b".\r\n")
        self.assertEqual(encode([b""]), b".\r\n")

    def test_finalCRLFAdded(self):
        self.assertEqual(encode([b"no newline"]), b"no newline\r\n.\r\n")

    def test_finalCRAtEnd(self):
        self.assertEqual(encode([b"text\r"]), b"text\r\n.\r\n")

    def test_lfOnlyNormalised(self):
        self.assertEqual(encode([b"a\nb\n.c\n"]), b"a\r\nb\r\n..c\r\n.\r\n")

    def test_bareCRNormalised(self):
        self.assertEqual(encode([b"a\rb\r\n"]), b"a\r\nb\r\n.\r\n")

    def test_crlfSplitAcrossChunks(self):
        self.assertEqual(encode([b"a\r", b"\n", b".b\r\n"]), b"a\r\n..b\r\n.\r\n")

    def test_crThenDotAcrossChunks(self):
        self.assertEqual(encode([b"a\r", b".b"]), b"a\r\n..b\r\n.\r\n")

    def test_dotLineAtEvery16KiBBoundary(self):
        """
        twisted.mail.smtp stuffed per 16 KiB chunk: a "." line at a chunk
        boundary ended the message early.  Stuffing must be per line.
        """
        chunkSize = 16 * 1024
        line = b"x" * 1022 + b"\r\n"
        block = line * 16  # exactly 16 KiB
        self.assertEqual(len(block), chunkSize)
        message = (block + b".\r\n" + b"y" * (chunkSize - 3)) * 4 + b"\r\n"
        pieces = [message[i : i + chunkSize] for i in range(0, len(message), chunkSize)]
        # Each piece after the first starts with a lone "." line.
        self.assertTrue(all(p.startswith(b".\r\n") for p in pieces[1::2]))
        wire = encode(pieces)
        self.assertNotIn(b"\r\n.\r\n", wire[:-5])
        self.assertTrue(wire.endswith(b"\r\n.\r\n"))
        d, got = decode([wire[i : i + chunkSize] for i in range(0, len(wire), chunkSize)])
        self.assertTrue(d.done)
        self.assertEqual(got, message)

    def test_dotAtStartOfEveryChunk(self):
        wire = encode([b"a\r\n", b".", b"\r\n", b".b\r\n", b"..\r\n"])
        self.assertEqual(wire, b"a\r\n..\r\n..b\r\n...\r\n.\r\n")

    def test_finishResets(self):
        e = DataEncoder()
        self.assertEqual(e.encode(b"abc"), b"abc")
        self.assertEqual(e.finish(), b"\r\n.\r\n")
        self.assertEqual(e.encode(b".x\r\n"), b"..x\r\n")

    @settings(max_examples=300, deadline=None)
    @given(_messy, _cuts)
    def test_wireNeverHasEarlyTerminator(self, x, cuts):
        dotLineEvent(x)
        wire = encode(split(x, cuts))
        self.assertEqual(wire.find(b"\r\n.\r\n", 0), len(wire) - 5 if len(wire) > 3 else -1)
        # Only CRLF line ends on the wire.
        self.assertEqual(wire.count(b"\r"), wire.count(b"\r\n"))
        self.assertEqual(wire.count(b"\n"), wire.count(b"\r\n"))


class BdatEncoderTests(unittest.TestCase):
    """DataEncoder(dotStuffing=False): BDAT sends octets as they are (RFC 3030)."""

    def encode(self, pieces):
        e = DataEncoder(dotStuffing=False)
        return b"".join(e.encode(p) for p in pieces) + e.finish()

    def test_noStuffing(self):
        self.assertEqual(self.encode([b".a\r\n.\r\n"]), b".a\r\n.\r\n")

    def test_lineEndsNormalised(self):
        self.assertEqual(self.encode([b"a\nb\r", b"\n.c\rd"]), b"a\r\nb\r\n.c\r\nd\r\n")

    def test_emptyMessage(self):
        self.assertEqual(self.encode([]), b"")

    @settings(max_examples=200, deadline=None)
    @given(_messy, _cuts)
    def test_sameAsDataWithoutStuffing(self, x, cuts):
        """The BDAT form is the DATA form unstuffed, without the terminator."""
        dotLineEvent(x)
        wire = encode(split(x, cuts))
        d, unstuffed = decode([wire])
        self.assertTrue(d.done)
        self.assertEqual(self.encode(split(x, cuts)), unstuffed)
