"""
:class:`PostgresWriter`: one message being written into a
:class:`~txsmtp.queue.postgres.PostgresStore`.

Full chunks of :data:`CHUNK_SIZE` go to the database as they fill, each in
a transaction committed without waiting for the disk; the commit writes
the last chunk, the rows that make the message visible and the
notification to the other nodes in one statement, in a transaction that
waits for the disk.  The WAL is written in order, so that durable commit
covers the chunks before it: only then does :meth:`PostgresWriter.commit`
fire, and a server answer 250.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp.queue import pgqueries as queries
from txsmtp.queue.errors import QueueError
from txsmtp.queue.interfaces import IQueueWriter
from txsmtp.queue.model import QueuedRecipient
from txsmtp.queue.sqlitebody import envelopeJSON, newMessageId

if TYPE_CHECKING:
    from txsmtp.queue.postgres import PostgresStore

__all__ = ["PostgresWriter", "CHUNK_SIZE", "WRITES_IN_FLIGHT"]

_log = Logger(namespace="txsmtp.queue.postgres")

#: The size of a body chunk (the last one of a message may be shorter).
CHUNK_SIZE = 256 * 1024
#: How many chunks of one message may be on their way to the database
#: before :meth:`PostgresWriter.write` asks its caller to wait.
WRITES_IN_FLIGHT = 2


@implementer(IQueueWriter)
class PostgresWriter:
    """
    One message being written into a :class:`PostgresStore`: full chunks
    go to the database as they fill, the rest with the commit.

    :ivar id: the message's id (known before the commit).
    :ivar size: how many bytes were written.
    """

    def __init__(self, store: PostgresStore) -> None:
        self.id = newMessageId()
        self.size = 0
        self._store = store
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._seq = 0
        self._inFlight: list[Deferred[None]] = []
        self._error: QueueError | None = store._notOpen()
        self._done = False

    def write(self, chunk: bytes) -> Deferred[None] | None:
        if self._error is not None or self._done:
            return None
        self.size += len(chunk)
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered < CHUNK_SIZE:
            return None
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        while len(data) >= CHUNK_SIZE:
            self._send(data[:CHUNK_SIZE])
            data = data[CHUNK_SIZE:]
        if data:
            self._buffer, self._buffered = [data], len(data)
        if len(self._inFlight) > WRITES_IN_FLIGHT:
            # Back-pressure: the caller waits for the oldest write.
            waiting: Deferred[None] = Deferred()
            self._inFlight[0].addBoth(lambda _: waiting.callback(None))
            return waiting
        return None

    def _send(self, data: bytes) -> None:
        seq, self._seq = self._seq, self._seq + 1
        d = self._store._run(queries.insertChunk, self.id, seq, data, durable=False)
        self._inFlight.append(d)

        def done(result: Any) -> None:
            self._inFlight.remove(d)
            if isinstance(result, Failure) and self._error is None:
                self._error = QueueError(f"writing the body: {result.getErrorMessage()}")

        d.addBoth(done)

    def commit(
        self,
        sender: str,
        recipients: list[QueuedRecipient],
        envelope: dict[str, Any],
        arrival: float | None = None,
    ) -> Deferred[str]:
        if self._done:
            return defer.fail(QueueError("this message was already committed or aborted"))
        self._done = True
        return Deferred.fromCoroutine(self._commit(sender, list(recipients), envelope, arrival))

    async def _commit(
        self, sender: str, recipients: list[QueuedRecipient], envelope: dict[str, Any], arrival: float | None
    ) -> str:
        store = self._store
        data = ""
        if self._error is None:
            try:
                data = envelopeJSON(recipients, envelope)
            except QueueError as e:
                self._error = e
        while self._inFlight:
            await defer.DeferredList(list(self._inFlight), consumeErrors=True)
        if self._error is not None:
            self._dropChunks()
            raise self._error
        last = b"".join(self._buffer)
        self._buffer = []
        when = store.clock.seconds() if arrival is None else arrival
        try:
            await store._run(
                _commitMessage, store, self.id, self._seq, last, sender, when, self.size, data, recipients
            )
        except Exception as e:
            self._dropChunks()
            raise (e if isinstance(e, QueueError) else QueueError(f"committing to the queue: {e}")) from e
        # The listeners are woken after the commit's Deferred has fired.
        store._reactor.callLater(0, store._wake)
        return self.id

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._buffer = []
            d = defer.DeferredList(list(self._inFlight), consumeErrors=True)
            d.addCallback(lambda _: self._dropChunks())

    def _dropChunks(self) -> None:
        if self._seq == 0 or self._store._notOpen() is not None:
            return  # nothing written, or orphans for the periodic clean-up
        self._store._run(queries.deleteChunks, self.id).addErrback(
            lambda f: _log.warn(
                "queue: could not remove the chunks of {queueId}: {error}; they go within a day",
                queueId=self.id,
                error=f.getErrorMessage(),
            )
        )


def _commitMessage(
    db: Any,
    store: PostgresStore,
    messageId: str,
    seq: int,
    last: bytes,
    sender: str,
    arrival: float,
    size: int,
    envelope: str,
    recipients: builtins.list[QueuedRecipient],
) -> None:
    # One transaction, committed durably (synchronous_commit on): the last
    # chunk, the rows that make the message visible, the notification.
    assert store.channel is not None
    queries.insertMessage(
        db, messageId, sender, arrival, size, envelope, recipients,
        chunk=(seq, last) if last or seq == 0 else None,
        notifyOn=(store.channel, store.node),
    )  # fmt: skip
