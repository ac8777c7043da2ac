"""
CHUNKING and BINARYMIME (RFC 3030) and DSN parameters (RFC 3461) on the
server, as raw conversations.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from txsmtp.errors import SMTPError
from txsmtp.testing import MemoryDelivery, ServerHarness
from txsmtp.wire.params import xtextEncode

EHLO = b"EHLO client.example\r\n"
ENVELOPE = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"


def _stripReceived(stored) -> bytes:
    """The message as the client sent it: without the Received: header the server prepends."""
    header = stored.envelope.receivedHeader
    assert stored.data.startswith(header)
    return stored.data[len(header) :]


class ChunkingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = ServerHarness(maxMessageSize=1000)
        self.h.send(EHLO)

    def codes(self, data: bytes) -> list[int]:
        return [r.code for r in self.h.send(data)]

    def test_advertised(self) -> None:
        [r] = self.h.send(EHLO)
        self.assertIn("CHUNKING", r.lines)
        self.assertIn("BINARYMIME", r.lines)
        self.assertIn("DSN", r.lines)

    def test_oneChunk(self) -> None:
        """The octets are stored exactly: no unstuffing, a dot line is a dot line."""
        message = b"Subject: x\r\n\r\n.leading dot\r\n.\r\n..two\r\n"
        replies = self.h.send(ENVELOPE + b"BDAT %d LAST\r\n" % len(message) + message)
        self.assertEqual([r.code for r in replies], [250, 250, 250])
        self.assertIn("queued as", replies[-1].text)
        [stored] = self.h.delivery.messages
        self.assertEqual(_stripReceived(stored), message)

    def test_pipelinedChunks(self) -> None:
        """Several chunks in one write, and the next transaction after them."""
        parts = [b"Subject: x\r\n", b"\r\nhello\r", b"\nworld\r\n"]
        data = ENVELOPE
        for i, part in enumerate(parts):
            last = b" LAST" if i == len(parts) - 1 else b""
            data += b"BDAT %d%s\r\n" % (len(part), last) + part
        data += b"MAIL FROM:<c@example.com>\r\nRSET\r\n"
        replies = self.h.send(data)
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250, 250, 250, 250])
        self.assertEqual(replies[2].text, "12 octets received")
        [stored] = self.h.delivery.messages
        self.assertEqual(_stripReceived(stored), b"".join(parts))

    def test_byteByByte(self) -> None:
        """Chunks, commands and octets split anywhere arrive the same."""
        message = b"a\r\n.\r\nb\r\n"
        data = ENVELOPE + b"BDAT 4\r\n" + message[:4] + b"BDAT %d LAST\r\n" % (len(message) - 4) + message[4:]
        replies = []
        for i in range(len(data)):
            replies += self.h.send(data[i : i + 1])
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250])
        self.assertEqual(_stripReceived(self.h.delivery.messages[0]), message)

    def test_zeroLast(self) -> None:
        """BDAT 0 LAST ends a message whose octets came before."""
        replies = self.h.send(ENVELOPE + b"BDAT 3\r\nab\n")
        # The bare LF fails the transaction with that chunk...
        self.assertEqual([(r.code, r.enhanced) for r in replies][2:], [(550, "5.6.0")])
        # ...so the last chunk finds none.
        self.assertEqual(self.codes(b"BDAT 0 LAST\r\n"), [503])
        replies = self.h.send(ENVELOPE + b"BDAT 4\r\nab\r\nBDAT 0 LAST\r\n")
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250])
        self.assertEqual(_stripReceived(self.h.delivery.messages[0]), b"ab\r\n")

    def test_emptyMessage(self) -> None:
        self.assertEqual(self.codes(ENVELOPE + b"BDAT 0 LAST\r\n"), [250, 250, 250])
        self.assertEqual(len(self.h.delivery.messages), 1)

    def test_lastCaseInsensitive(self) -> None:
        self.assertEqual(self.codes(ENVELOPE + b"bdat 2 last\r\nx\n"), [250, 250, 550])
        self.assertEqual(self.h.delivery.messages, [])

    def test_oversize(self) -> None:
        """
        The limit applies across chunks: 552 after the chunk that crosses
        it; the following chunks are read and refused; the session stays in
        step.
        """
        chunk = b"x" * 398 + b"\r\n"
        data = ENVELOPE + b"BDAT 400\r\n" + chunk + b"BDAT 400\r\n" + chunk + b"BDAT 400\r\n" + chunk
        data += b"BDAT 400 LAST\r\n" + chunk + b"NOOP\r\n"
        replies = self.h.send(data)
        codes = [(r.code, r.enhanced) for r in replies]
        self.assertEqual(
            codes,
            [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0"), (250, "2.0.0"), (552, "5.3.4"), (503, "5.5.1"), (250, "2.0.0")],
        )
        self.assertEqual(self.h.delivery.messages, [])
        self.assertEqual(len(self.h.delivery.aborted), 1)
        # And the session goes on.
        self.assertEqual(self.codes(ENVELOPE + b"BDAT 2 LAST\r\nx\n".replace(b"x\n", b"\r\n")), [250, 250, 250])

    def test_hugeChunkConsumed(self) -> None:
        """A chunk far over the limit is read (not stored) and refused."""
        self.h.send(ENVELOPE)
        replies = self.h.send(b"BDAT 5000 LAST\r\n")
        self.assertEqual(replies, [])
        for _ in range(5):
            replies += self.h.send(b"y" * 1000)
        self.assertEqual([r.code for r in replies], [552])
        self.assertEqual(self.codes(b"NOOP\r\n"), [250])

    def test_withoutTransaction(self) -> None:
        """BDAT with no MAIL: the octets are consumed, 503."""
        replies = self.h.send(b"BDAT 10 LAST\r\nMAIL FROM:NOOP\r\n")
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(503, "5.5.1"), (250, "2.0.0")])

    def test_noRecipients(self) -> None:
        replies = self.h.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<bad>\r\nBDAT 6 LAST\r\nNOOP\r\nRSET\r\n")
        self.assertEqual([r.code for r in replies], [250, 501, 554, 250])

    def test_dataAfterBdat(self) -> None:
        """DATA in the middle of a BDAT transaction: 503, the transaction goes on."""
        replies = self.h.send(ENVELOPE + b"BDAT 4\r\nab\r\nDATA\r\n")
        self.assertEqual([r.code for r in replies], [250, 250, 250, 503])
        self.assertEqual(self.codes(b"MAIL FROM:<c@example.com>\r\n"), [503])
        self.assertEqual(self.codes(b"RSET\r\n"), [250])
        self.assertEqual(len(self.h.delivery.aborted), 1)

    def test_bdatAfterData(self) -> None:
        """Inside DATA, "BDAT" is just text of the message."""
        replies = self.h.send(ENVELOPE + b"DATA\r\nBDAT 5 LAST\r\n.\r\n")
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250])
        self.assertEqual(_stripReceived(self.h.delivery.messages[0]), b"BDAT 5 LAST\r\n")

    def test_bareLineEndsRefused(self) -> None:
        """The bare CR/LF policy of DATA applies (smuggling defence)."""
        for octets in (b"a\nb\r\n", b"a\rb\r\n", b"ab\r"):
            self.h.send(b"RSET\r\n")
            replies = self.h.send(ENVELOPE + b"BDAT %d LAST\r\n" % len(octets) + octets)
            self.assertEqual([(r.code, r.enhanced) for r in replies][-1], (550, "5.6.0"), octets)
        self.assertEqual(self.h.delivery.messages, [])

    def test_crlfAcrossChunks(self) -> None:
        """A CRLF split between two chunks is a CRLF."""
        replies = self.h.send(ENVELOPE + b"BDAT 2\r\na\rBDAT 1 LAST\r\n\n")
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250])
        self.assertEqual(_stripReceived(self.h.delivery.messages[0]), b"a\r\n")

    def test_bareLineEndsNormalized(self) -> None:
        h = ServerHarness(bareLineEnds="normalize")
        h.send(EHLO)
        replies = h.send(ENVELOPE + b"BDAT 5 LAST\r\na\nb\rc")
        self.assertEqual([r.code for r in replies], [250, 250, 250])
        self.assertEqual(_stripReceived(h.delivery.messages[0]), b"a\r\nb\r\nc")

    def test_binaryMime(self) -> None:
        """BODY=BINARYMIME: any octets, bare CR and LF included, stored as sent."""
        octets = bytes(range(256))
        replies = self.h.send(
            b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n"
            + b"BDAT %d LAST\r\n" % len(octets)
            + octets
        )
        self.assertEqual([r.code for r in replies], [250, 250, 250])
        [stored] = self.h.delivery.messages
        self.assertTrue(stored.data.endswith(octets))
        self.assertEqual(stored.envelope.parameters.body, "BINARYMIME")

    def test_badSyntax(self) -> None:
        """Without a readable size the session cannot stay in step: 501 and close."""
        for line in (b"BDAT\r\n", b"BDAT x LAST\r\n", b"BDAT 5 FIRST\r\n", b"BDAT -1\r\n", b"BDAT 1234567890123456789\r\n"):
            h = ServerHarness()
            h.send(EHLO + ENVELOPE)
            [r] = h.send(line)
            self.assertEqual((r.code, r.enhanced), (501, "5.5.4"), line)
            self.assertTrue(h.closed)

    def test_refusedRecipientStillCounts(self) -> None:
        """A refused RCPT among accepted ones does not stop BDAT."""
        h = ServerHarness()
        h.delivery.refusedRecipients["bad@example.com"] = SMTPError(550, "5.1.1", "No such user")
        h.send(EHLO)
        replies = h.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<bad@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 3 LAST\r\nx\r\n"
        )
        self.assertEqual([r.code for r in replies], [250, 550, 250, 250])
        self.assertEqual([str(r.address) for r in h.delivery.messages[0].envelope.recipients], ["b@example.com"])

    def test_openMessageRefused(self) -> None:
        """The delivery refuses the message at the first chunk: the octets are consumed."""

        from txsmtp.testing import _MemorySession

        class Refusing(_MemorySession):
            def openMessage(self, envelope):  # type: ignore[override]
                raise SMTPError(452, "4.3.1", "Out of space")

        delivery = MemoryDelivery()
        delivery.sessionFactory = Refusing  # type: ignore[assignment]
        h = ServerHarness(delivery)
        h.send(EHLO)
        replies = h.send(ENVELOPE + b"BDAT 5\r\nabcdeBDAT 3 LAST\r\nxyzNOOP\r\n")
        self.assertEqual([(r.code, r.enhanced) for r in replies][2:], [(452, "4.3.1"), (503, "5.5.1"), (250, "2.0.0")])

    def test_asyncOpenMessage(self) -> None:
        """Octets that arrive while the delivery decides wait, then go to the receiver."""
        waiting: list[defer.Deferred] = []

        from txsmtp.testing import _MemorySession

        class Slow(_MemorySession):
            def openMessage(self, envelope):  # type: ignore[override]
                d: defer.Deferred = defer.Deferred()
                waiting.append(d)
                return d.addCallback(lambda _: _MemorySession.openMessage(self, envelope))

        delivery = MemoryDelivery()
        delivery.sessionFactory = Slow  # type: ignore[assignment]
        h = ServerHarness(delivery)
        h.send(EHLO)
        # The replies wait for the whole pipelined group (RFC 2920).
        self.assertEqual(h.send(ENVELOPE + b"BDAT 4 LAST\r\nab\r\nNOOP\r\n"), [])
        self.assertEqual(h.protocol._session._lines.pending(), len(b"ab\r\nNOOP\r\n"))
        waiting[0].callback(None)
        self.assertEqual([r.code for r in h.replies()], [250, 250, 250, 250])
        self.assertEqual(_stripReceived(h.delivery.messages[0]), b"ab\r\n")

    def test_slowChunkTimesOut(self) -> None:
        h = ServerHarness()
        h.send(EHLO + ENVELOPE + b"BDAT 100 LAST\r\nabc")
        h.clock.advance(h.factory.dataTimeout + h.factory.timeoutResolution + 1)
        h.factory._sweep()
        self.assertTrue(h.closed)

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=5))
    def test_chunkingInvariant(self, octets: bytes, cuts: list[int]) -> None:
        """However a CRLF-only message is cut into chunks, it is stored as sent."""
        octets = octets.replace(b"\r", b"").replace(b"\n", b"\r\n")
        h = ServerHarness()
        h.send(EHLO + ENVELOPE)
        points = sorted({min(c, len(octets)) for c in cuts})
        pieces = [octets[a:b] for a, b in zip([0, *points], [*points, len(octets)], strict=True)]
        data = b""
        for i, piece in enumerate(pieces):
            data += b"BDAT %d%s\r\n" % (len(piece), b" LAST" if i == len(pieces) - 1 else b"") + piece
        replies = h.send(data)
        self.assertTrue(all(r.code == 250 for r in replies), replies)
        self.assertEqual(_stripReceived(h.delivery.messages[0]), octets)


class DSNTests(unittest.TestCase):
    """RFC 3461 parameters reach the delivery with the envelope."""

    def setUp(self) -> None:
        self.h = ServerHarness()
        self.h.send(EHLO)

    def test_parsed(self) -> None:
        replies = self.h.send(
            b"MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ+2B314\r\n"
            b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@example.com\r\n"
            b"RCPT TO:<c@example.com> NOTIFY=NEVER\r\n"
            b"DATA\r\nhi\r\n.\r\n"
        )
        self.assertEqual([r.code for r in replies], [250, 250, 250, 354, 250])
        [stored] = self.h.delivery.messages
        env = stored.envelope
        self.assertEqual((env.parameters.ret, env.parameters.envid), ("HDRS", "QQ+314"))
        b, c = env.recipients
        self.assertEqual(b.parameters.notify, ("SUCCESS", "DELAY"))
        self.assertEqual(b.parameters.orcpt, ("rfc822", "b+x@example.com"))
        self.assertEqual(c.parameters.notify, ("NEVER",))
        self.assertIsNone(c.parameters.orcpt)

    def test_badValues(self) -> None:
        """Bad DSN values: 501 5.5.4, and the transaction carries on."""
        self.h.send(b"MAIL FROM:<a@example.com>\r\n")
        for line in (
            b"RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS",
            b"RCPT TO:<b@example.com> NOTIFY=SOMETIMES",
            b"RCPT TO:<b@example.com> NOTIFY=",
            b"RCPT TO:<b@example.com> ORCPT=nosemicolon",
            b"RCPT TO:<b@example.com> ORCPT=rfc822;bad+zzxtext",
            b"RCPT TO:<b@example.com> NOTIFY=SUCCESS NOTIFY=FAILURE",
        ):
            r = self.h.command(line)
            self.assertEqual((r.code, r.enhanced), (501, "5.5.4"), line)
        self.h.send(b"RSET\r\n")
        for line in (
            b"MAIL FROM:<a@example.com> RET=ALL",
            b"MAIL FROM:<a@example.com> ENVID=bad+x",
            b"MAIL FROM:<a@example.com> ENVID=" + b"x" * 101,
        ):
            r = self.h.command(line)
            self.assertEqual((r.code, r.enhanced), (501, "5.5.4"), line)

    @settings(max_examples=100, deadline=None)
    @given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60))
    def test_envidRoundTrip(self, value: str) -> None:
        """Any ENVID survives xtext on the wire and reaches the envelope as it was."""
        encoded = xtextEncode(value).encode("ascii")
        if len(encoded) > 100:
            return
        h = ServerHarness()
        h.send(EHLO)
        [r] = h.send(b"MAIL FROM:<a@example.com> ENVID=" + encoded + b"\r\n")
        self.assertEqual(r.code, 250)
        self.assertEqual(h.protocol.envelope.parameters.envid, value)
