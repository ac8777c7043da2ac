"""
Helpers shared by the tests of :mod:`txsmtp.queue.outbound`: queued
messages as the store hands them out, and txsmtp servers listening on a
chosen loopback address.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from tests.test_mx_tls import freePort  # noqa: F401  (re-exported for the queue tests)
from txsmtp.envelope import Envelope
from txsmtp.queue.model import QueuedMessage, QueuedRecipient
from txsmtp.server import SMTPFactory
from txsmtp.testing import MemoryDelivery
from txsmtp.wire.address import parsePath
from txsmtp.wire.params import MailParameters

REACTOR: Any = reactor

SENDER = "sender@example.org"
BODY = b"Received: from client.example by mx.test.invalid\r\nSubject: queued\r\n\r\n.dot\r\nhello\r\n"


def queued(
    recipients: list[Any],
    *,
    sender: str = SENDER,
    ret: str | None = None,
    envid: str | None = None,
    messageId: str = "0123456789abcdefQ",
) -> QueuedMessage:
    """
    A message as a store hands it out: ``recipients`` are addresses, or
    ``(address, notify, orcpt)`` tuples; the envelope is what
    :meth:`Envelope.toDict` gives for a message received with RET and ENVID.
    """
    envelope = Envelope(
        parsePath(b"<" + sender.encode() + b">", nullOK=True) if sender else None,
        MailParameters(ret=ret, envid=envid, size=len(BODY)),
        queueId="QID1",
    )
    data = envelope.toDict()
    rows = []
    for index, r in enumerate(recipients):
        address, notify, orcpt = (r, None, None) if isinstance(r, str) else r
        rows.append(QueuedRecipient(index, address, notify=notify, orcpt=orcpt))
    return QueuedMessage(messageId, sender, 1_700_000_000.0, len(BODY), data, rows)


def body() -> io.BytesIO:
    return io.BytesIO(BODY)




class Listening:
    """A txsmtp server listening on one address (see :func:`listen`)."""

    def __init__(self, factory: SMTPFactory, port: Any) -> None:
        self.factory = factory
        self.delivery: MemoryDelivery = factory.delivery  # type: ignore[assignment]
        self.port = port.getHost().port
        self.connections: list[Any] = []
        build = factory.buildProtocol

        def counting(addr: Any) -> Any:
            self.connections.append(addr)
            return build(addr)

        factory.buildProtocol = counting  # type: ignore[method-assign]


def listen(
    testCase: unittest.TestCase, address: str = "127.0.0.1", port: int = 0, **factoryArgs: Any
) -> Listening:
    """txsmtp's server with a :class:`MemoryDelivery` on ``address:port``; stopped in cleanup."""
    delivery = factoryArgs.pop("delivery", None) or MemoryDelivery()
    factory = SMTPFactory(delivery, "mx.test.invalid", **factoryArgs)
    listening = REACTOR.listenTCP(port, factory, interface=address)
    testCase.addCleanup(listening.stopListening)
    testCase.addCleanup(factory.shutdown, 0)
    return Listening(factory, listening)
