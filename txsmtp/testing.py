"""
Helpers for testing code that sends or receives mail, in trial (or pytest).

- :class:`MemoryDelivery` records every envelope and message it accepts.
- :func:`runServer` starts a real txsmtp server on an ephemeral loopback
  port for the duration of one test.
- :class:`ServerHarness` drives a server protocol over an in-memory
  transport with a fake clock: no sockets, no waiting.

Example (a trial test that sends with the standard library in a thread)::

    import smtplib
    from twisted.internet import threads
    from twisted.trial import unittest
    from txsmtp.testing import MemoryDelivery, runServer

    class SendTests(unittest.TestCase):
        async def test_send(self):
            delivery = MemoryDelivery()
            server = runServer(self, delivery)

            def send():
                with smtplib.SMTP("127.0.0.1", server.port) as client:
                    client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n")

            await threads.deferToThread(send)
            self.assertEqual(delivery.messages[0].recipients, ["b@example.com"])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from txsmtp.delivery import BaseDelivery, BaseDeliverySession
from txsmtp.envelope import Envelope, Recipient
from txsmtp.errors import SMTPError
from txsmtp.interfaces import IMessageReceiver
from txsmtp.server import ESMTPServer, SMTPFactory
from txsmtp.wire.reply import Reply, ReplyParser

__all__ = ["MemoryDelivery", "StoredMessage", "RunningServer", "runServer", "ServerHarness"]


class StoredMessage:
    """
    A message a :class:`MemoryDelivery` accepted.

    :ivar envelope: its :class:`~txsmtp.envelope.Envelope`.
    :ivar data: the message as received, ``Received:`` header first.
    """

    def __init__(self, envelope: Envelope, data: bytes) -> None:
        self.envelope = envelope
        self.data = data

    @property
    def sender(self) -> str:
        """The sender as text (empty for ``<>``)."""
        return str(self.envelope.sender) if self.envelope.sender is not None else ""

    @property
    def recipients(self) -> list[str]:
        """The recipients as text, in RCPT order."""
        return [str(r.address) for r in self.envelope.recipients]

    @property
    def body(self) -> bytes:
        """The message without the ``Received:`` header the server added."""
        return self.data[len(self.envelope.receivedHeader) :]

    def __repr__(self) -> str:
        return f"StoredMessage(sender={self.sender!r}, recipients={self.recipients!r}, {len(self.data)} octets)"


@implementer(IMessageReceiver)
class _MemoryReceiver:
    def __init__(self, delivery: MemoryDelivery, envelope: Envelope) -> None:
        self.delivery = delivery
        self.envelope = envelope
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> Any:
        message = StoredMessage(self.envelope, b"".join(self.chunks))
        self.delivery.messages.append(message)
        return self.delivery.results(message)

    def abort(self, reason: str) -> None:
        self.delivery.aborted.append((self.envelope, reason))


class _MemorySession(BaseDeliverySession):
    delivery: MemoryDelivery

    def checkSender(self, sender: Any, parameters: Any) -> None:
        refusal = self.delivery.refusedSenders.get(str(sender) if sender is not None else "")
        if refusal is not None:
            raise refusal

    def checkRecipient(self, recipient: Recipient, envelope: Envelope) -> None:
        refusal = self.delivery.refusedRecipients.get(str(recipient.address))
        if refusal is not None:
            raise refusal

    def openMessage(self, envelope: Envelope) -> _MemoryReceiver:
        return _MemoryReceiver(self.delivery, envelope)

    def close(self) -> None:
        self.delivery.closedSessions += 1


class MemoryDelivery(BaseDelivery):
    """
    A delivery that keeps everything in memory, for tests.

    :ivar messages: the :class:`StoredMessage` objects, in arrival order.
    :ivar aborted: ``(envelope, reason)`` for every message abandoned.
    :ivar sessions: the connection facts of every session opened.
    :ivar refusedSenders: maps a sender (text; ``""`` for ``<>``) to the
        :class:`~txsmtp.errors.SMTPError` to refuse it with.
    :ivar refusedRecipients: maps a recipient (text) to an
        :class:`~txsmtp.errors.SMTPError`.
    :ivar results: called with each :class:`StoredMessage`; its return
        value is what the receiver's ``finish`` returns (``None`` by
        default; a list of per-recipient results for LMTP tests).
    """

    sessionFactory = _MemorySession

    def __init__(self) -> None:
        self.messages: list[StoredMessage] = []
        self.aborted: list[tuple[Envelope, str]] = []
        self.sessions: list[Any] = []
        self.closedSessions = 0
        self.refusedSenders: dict[str, SMTPError] = {}
        self.refusedRecipients: dict[str, SMTPError] = {}
        self.results: Callable[[StoredMessage], Any] = lambda message: None

    def openSession(self, connection: Any) -> Any:
        self.sessions.append(connection)
        return super().openSession(connection)


class RunningServer:
    """
    A server started by :func:`runServer`.

    :ivar port: the TCP port it listens on (on 127.0.0.1).
    :ivar host: ``"127.0.0.1"``.
    :ivar factory: the :class:`~txsmtp.server.SMTPFactory`.
    :ivar delivery: the delivery given to it.
    :ivar listeningPort: the :class:`~twisted.internet.interfaces.IListeningPort`.
    """

    def __init__(self, factory: SMTPFactory, listeningPort: Any) -> None:
        self.factory = factory
        self.delivery = factory.delivery
        self.listeningPort = listeningPort
        self.host = "127.0.0.1"
        self.port: int = listeningPort.getHost().port

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and close every connection at once."""
        d = defer.maybeDeferred(self.listeningPort.stopListening)
        d.addCallback(lambda _: self.factory.shutdown(grace=0))
        return d


def runServer(testCase: Any, delivery: Any = None, *, factory: SMTPFactory | None = None, **factoryArgs: Any) -> RunningServer:
    """
    Listen on an ephemeral port of 127.0.0.1 for the rest of ``testCase``
    (the server stops in the test's cleanup).

    :param testCase: a :class:`twisted.trial.unittest.TestCase`.
    :param delivery: the :class:`~txsmtp.interfaces.IDelivery` (default: a
        new :class:`MemoryDelivery`).
    :param factory: a ready factory to use instead (``delivery`` and
        ``factoryArgs`` are then ignored).
    :param factoryArgs: keyword arguments for
        :class:`~txsmtp.server.SMTPFactory` (``hostname`` defaults to
        ``"test.invalid"``).
    """
    from twisted.internet import reactor

    if factory is None:
        factoryArgs.setdefault("hostname", "test.invalid")
        factory = SMTPFactory(delivery if delivery is not None else MemoryDelivery(), **factoryArgs)
    # SMTPFactory is a Factory, where listenTCP is typed to want a ServerFactory.
    listeningPort = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    server = RunningServer(factory, listeningPort)
    testCase.addCleanup(server.stop)
    return server


class ServerHarness:
    """
    A server protocol on an in-memory transport, driven by hand.

    :param delivery: the delivery (default: a new :class:`MemoryDelivery`).
    :param factory: a ready factory to use instead (its clock is replaced by
        :attr:`clock` unless it already is a
        :class:`~twisted.internet.task.Clock`).
    :param factoryArgs: keyword arguments for
        :class:`~txsmtp.server.SMTPFactory`; ``clock`` defaults to
        :attr:`clock`, ``hostname`` to ``"test.invalid"``.

    :ivar clock: the :class:`~twisted.internet.task.Clock` that times the
        session: ``harness.clock.advance(301)`` triggers a timeout.
    :ivar transport: the :class:`~twisted.internet.testing.StringTransport`.
    :ivar protocol: the server protocol.

    >>> h = ServerHarness()
    >>> h.greeting.code
    220
    >>> h.command(b"EHLO client.example").code
    250
    """

    def __init__(self, delivery: Any = None, *, factory: SMTPFactory | None = None, connect: bool = True, **factoryArgs: Any) -> None:
        self.clock = Clock()
        if factory is None:
            factoryArgs.setdefault("clock", self.clock)
            factoryArgs.setdefault("hostname", "test.invalid")
            factory = SMTPFactory(delivery if delivery is not None else MemoryDelivery(), **factoryArgs)
        elif isinstance(factory.clock, Clock):
            self.clock = factory.clock
        else:
            # The harness owns time: no timer may reach the real reactor.
            factory.clock = self.clock
        self.factory = factory
        self.delivery = factory.delivery
        self._parser = ReplyParser(maxReplyLength=1 << 20)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 25), peerAddress=IPv4Address("TCP", "192.0.2.7", 40000)
        )
        protocol = factory.buildProtocol(self.transport.getPeer())
        assert isinstance(protocol, ESMTPServer), protocol
        self.protocol: ESMTPServer = protocol
        self.greeting: Reply | None = None
        if connect:
            self.connect()

    def connect(self) -> None:
        """Connect the protocol (done by the constructor unless ``connect=False``)."""
        self.protocol.makeConnection(self.transport)
        replies = self.replies()
        self.greeting = replies[0] if replies else None

    def send(self, data: bytes) -> list[Reply]:
        """Deliver ``data`` to the server and return the replies it wrote."""
        self.protocol.dataReceived(data)
        return self.replies()

    def command(self, line: bytes) -> Reply:
        """Send one command line (CRLF added) and return its single reply."""
        replies = self.send(line + b"\r\n")
        if len(replies) != 1:
            raise AssertionError(f"expected one reply to {line!r}, got {replies!r}")
        return replies[0]

    def replies(self) -> list[Reply]:
        """The replies written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return self._parser.feed(data)

    @property
    def closed(self) -> bool:
        """Whether the server asked to close the connection."""
        return bool(self.transport.disconnecting)

    def disconnect(self) -> None:
        """Simulate the client vanishing."""
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionLost()))

    def sendMessage(self, sender: bytes, recipients: list[bytes], body: bytes, *, ehlo: bytes = b"client.example") -> list[Reply]:
        """
        Run a whole transaction (EHLO, MAIL, RCPT..., DATA, body, final dot)
        in one pipelined write and return every reply.  ``body`` is sent as
        is: stuff dots and end it with CRLF yourself.

        When the server refuses ``DATA`` (no recipient accepted, the
        delivery's ``openMessage`` failed, ...) the body is not sent: the
        replies so far are returned, the refusal last.
        """
        parts = [b"EHLO " + ehlo + b"\r\n", b"MAIL FROM:<" + sender + b">\r\n"]
        parts += [b"RCPT TO:<" + r + b">\r\n" for r in recipients]
        parts.append(b"DATA\r\n")
        replies = self.send(b"".join(parts))
        if len(replies) == len(recipients) + 3 and replies[-1].code != 354:
            # DATA answered, and not with "go ahead": the body would only
            # come back as one refused command per line.
            return replies
        return replies + self.send(body + b".\r\n")
