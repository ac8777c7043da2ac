"""
How the client's writes reach the wire: a message from a file ends in the
same write as its last chunk, and TCP connections run without Nagle's
algorithm.  Either alone avoids a small segment held behind unacknowledged
data until the server's delayed acknowledgement (some 40 ms a message: a
relay delivering from its queue files at 22 messages a second per
connection instead of thousands).
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.test_client import EHLO_PIPELINING, Harness
from txsmtp.client import ESMTPClient, TLSPolicy, sendmail
from txsmtp.client.message import CHUNK_SIZE


class FileMessageWriteTests(unittest.TestCase):
    def ready(self) -> tuple[Harness, list[bytes]]:
        h = Harness()
        h.setUp(EHLO_PIPELINING)
        self.successResultOf(h.protocol.ready)
        h.sent()
        writes: list[bytes] = []
        h.transport.write = writes.append  # type: ignore[method-assign]
        return h, writes

    def test_shortFileOneWrite(self) -> None:
        """A file shorter than a chunk: its data and the end of data in one write."""
        h, writes = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], io.BytesIO(b"Hi\r\n.dot\r\n"))
        writes.clear()
        h.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
        # StringTransport asks a pull producer for more only when told to.
        h.transport.producer.resumeProducing()
        self.assertIsNone(h.transport.producer)
        self.assertEqual(writes, [b"Hi\r\n..dot\r\n.\r\n"])
        h.server(b"250 2.0.0 ok\r\n")
        self.successResultOf(d)

    def test_longFileLastChunkWithEnd(self) -> None:
        """A file of a chunk and a bit: full chunks alone, the rest with the end of data."""
        h, writes = self.ready()
        body = b"x" * 98 + b"\r\n"
        data = body * (CHUNK_SIZE // len(body) + 3)
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], io.BytesIO(data))
        writes.clear()
        h.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
        # StringTransport asks a pull producer for more only when told to.
        while h.transport.producer is not None:
            h.transport.producer.resumeProducing()
        self.assertEqual(b"".join(writes), data + b".\r\n")
        self.assertEqual(len(writes[0]), CHUNK_SIZE)
        self.assertTrue(writes[-1].endswith(b"\r\n.\r\n"))
        self.assertGreater(len(writes[-1]), 5)
        h.server(b"250 2.0.0 ok\r\n")
        self.successResultOf(d)


class NoDelayTests(unittest.TestCase):
    def test_setOnConnect(self) -> None:
        """The client turns Nagle's algorithm off when its transport can."""
        calls: list[bool] = []
        h = Harness()
        h.transport.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
        h.protocol.connectionMade()
        self.assertEqual(calls, [True])

    @defer.inlineCallbacks
    def test_realConnection(self) -> Any:
        """On a real TCP connection the socket has TCP_NODELAY set."""
        from twisted.internet import reactor

        from txsmtp.server import SMTPFactory
        from txsmtp.testing import MemoryDelivery

        seen: list[bool] = []

        class Probe(ESMTPClient):
            def connectionMade(self) -> None:
                super().connectionMade()
                seen.append(bool(self.transport.getTcpNoDelay()))  # type: ignore[attr-defined]

        from txsmtp.client import SMTPClientFactory

        self.patch(SMTPClientFactory, "protocol", Probe)
        delivery = MemoryDelivery()
        port = reactor.listenTCP(0, SMTPFactory(delivery, "test.invalid"), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        f = io.BytesIO(b"Subject: file\r\n\r\nbody\r\n")
        result = yield sendmail("127.0.0.1", "a@example.com", ["b@example.com"], f, port=port.getHost().port, tls=TLSPolicy.NONE)
        self.assertEqual(result.accepted, ["b@example.com"])
        self.assertEqual(seen, [True])
        [stored] = delivery.messages
        self.assertTrue(stored.data.endswith(b"Subject: file\r\n\r\nbody\r\n"))


class _CountingFile(io.BytesIO):
    """A BytesIO that counts the octets read from it."""

    octetsRead = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.octetsRead += len(data)
        return data


class MeasuredHintTests(unittest.TestCase):
    """A caller that knows a file's size and 8-bit-ness spares the client a pass over it."""

    def test_hintsSkipTheScan(self) -> None:
        from txsmtp.client.message import OutgoingMessage

        body = b"Subject: x\r\n\r\n" + b"y" * (3 * CHUNK_SIZE) + b"\r\n"
        f = _CountingFile(body)
        job = OutgoingMessage.prepare("a@example.com", ["b@example.com"], f, size=len(body), eightBit=False)
        self.assertEqual((job.size, job.eightBit, job.utf8Headers, job.start), (len(body), False, False, 0))
        self.assertEqual(f.octetsRead, 0)
        unhinted = _CountingFile(body)
        job = OutgoingMessage.prepare("a@example.com", ["b@example.com"], unhinted)
        self.assertEqual((job.size, job.eightBit), (len(body), False))
        self.assertEqual(unhinted.octetsRead, len(body))

    def test_eightBitHintReadsTheHeadOnly(self) -> None:
        """8-bit: only the first chunk is read, for UTF-8 in the header section (RFC 6532)."""
        from txsmtp.client.message import OutgoingMessage

        body = "Subject: caf\u00e9\r\n\r\n".encode() + b"y" * (3 * CHUNK_SIZE)
        f = _CountingFile(b"skip" + body)
        f.seek(4)
        job = OutgoingMessage.prepare("a@example.com", ["b@example.com"], f, size=len(body), eightBit=True)
        self.assertEqual((job.size, job.eightBit, job.utf8Headers, job.start), (len(body), True, True, 4))
        self.assertEqual(f.octetsRead, CHUNK_SIZE)
        self.assertEqual(f.tell(), 4)
