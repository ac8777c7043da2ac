"""
The pull producer that streams a message file to the server, encoded
(dot-stuffed for DATA, as is for BDAT), one chunk each time the transport
asks for more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from txsmtp.client.message import CHUNK_SIZE
from txsmtp.wire.data import DataEncoder

if TYPE_CHECKING:
    from txsmtp.client.pipeline import Transaction
    from txsmtp.client.protocol import ESMTPClient

__all__: list[str] = []


@implementer(IPullProducer)
class _MessageProducer:
    """Reads a message file in chunks and hands them to the protocol, encoded."""

    __slots__ = ("protocol", "txn", "message", "encoder", "stopped")

    def __init__(self, protocol: ESMTPClient, txn: Transaction, message: BinaryIO) -> None:
        self.protocol = protocol
        self.txn = txn
        self.message = message
        self.encoder = DataEncoder(dotStuffing=not txn.bdat)
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        chunk = self.message.read(CHUNK_SIZE)
        if len(chunk) == CHUNK_SIZE:
            self.protocol._writeChunk(self.txn, self.encoder.encode(chunk), False)
            return
        if chunk:
            # A short read: most likely the end.  If so, the end of data goes
            # out in the same write as the last chunk: written one turn later
            # on its own, it would be a small segment behind unacknowledged
            # data, which Nagle's algorithm holds until the peer's delayed
            # acknowledgement (some 40 ms a message).
            more = self.message.read(CHUNK_SIZE)
            if more:
                self.protocol._writeChunk(self.txn, self.encoder.encode(chunk) + self.encoder.encode(more), False)
                return
            data = self.encoder.encode(chunk)
        else:
            data = b""
        self.stopped = True
        self.protocol._writeChunk(self.txn, data + self.encoder.finish(), True)

    def stopProducing(self) -> None:
        self.stopped = True
