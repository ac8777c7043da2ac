"""
Output back-pressure: a client that pipelines commands but never reads the
replies must not make the server buffer replies without bound.
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from txsmtp.delivery import BaseDelivery, BaseDeliverySession
from txsmtp.testing import MemoryDelivery, ServerHarness, runServer


class _Greeted(protocol.Protocol):
    def __init__(self) -> None:
        self.greeted: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted.called and data.startswith(b"220 "):
            self.greeted.callback(None)


class _SlowSenderSession(BaseDeliverySession):
    """Holds up every MAIL FROM until the test fires the Deferred."""

    def checkSender(self, sender, parameters):  # type: ignore[no-untyped-def]
        d: defer.Deferred[None] = defer.Deferred()
        self.delivery.held.append(d)
        return d


class _SlowSender(BaseDelivery):
    sessionFactory = _SlowSenderSession

    def __init__(self) -> None:
        self.held: list[defer.Deferred[None]] = []


class OutputBackPressureTests(unittest.TestCase):
    async def test_sessionIsTheProducerOfItsReplies(self) -> None:
        """On plain TCP the session registers itself as a streaming producer."""
        server = runServer(self, MemoryDelivery())
        client = _Greeted()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        transport = (await endpoint.connect(protocol.Factory.forProtocol(lambda: client))).transport
        self.addCleanup(transport.loseConnection)
        await client.greeted
        [session] = server.factory.protocols
        self.assertIs(session.transport.producer, session)
        self.assertTrue(session.transport.streamingProducer)

    def test_pausedWhileRepliesAreNotRead(self) -> None:
        """When Twisted says the output buffer is full, the session stops reading input."""
        h = ServerHarness()
        h.command(b"EHLO client.example")
        h.protocol.pauseProducing()
        self.assertEqual(h.transport.producerState, "paused")
        h.protocol.resumeProducing()
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_otherPausesOutliveOutputResume(self) -> None:
        """Resuming output does not resume reading while input is still held for another reason."""
        delivery = _SlowSender()
        h = ServerHarness(delivery)
        # A slow checkSender, and more pipelined input than the session holds.
        h.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n" + b"NOOP\r\n" * 50_000)
        self.assertEqual(h.transport.producerState, "paused")
        h.protocol.pauseProducing()
        h.protocol.resumeProducing()
        self.assertEqual(h.transport.producerState, "paused")
        delivery.held[0].callback(None)
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(len(h.replies()), 50_002)
