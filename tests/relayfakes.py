"""
A fake for the relay's server-side tests: a queue store that keeps
messages in memory (only the writer side: what the relay uses).

The store is not a stand-in for a store users run: the relay's tests use
it to see exactly what was committed and to make the writer fail on
demand (a full disk, a broken database), and to hold a commit back so that
a test can see that no ``250`` is given before the commit fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txsmtp.queue.errors import QueueError, QueueFullError
from txsmtp.queue.interfaces import IQueueWriter
from txsmtp.queue.model import QueuedRecipient

__all__ = ["Committed", "MemoryQueueStore", "MemoryWriter"]


@dataclass
class Committed:
    """A message committed into a :class:`MemoryQueueStore`."""

    id: str
    sender: str
    recipients: list[QueuedRecipient]
    envelope: dict[str, Any]
    body: bytes


@implementer(IQueueWriter)
class MemoryWriter:
    def __init__(self, store: MemoryQueueStore) -> None:
        self.store = store
        self.chunks: list[bytes] = []
        self.aborted = False
        self.committed = False

    def write(self, chunk: bytes) -> Any:
        assert not self.aborted and not self.committed, "write after the end"
        if self.store.failWrite is not None:
            raise self.store.failWrite
        self.chunks.append(chunk)
        return self.store.writeResult

    def commit(
        self, sender: str, recipients: list[QueuedRecipient], envelope: dict[str, Any], arrival: Any = None
    ) -> defer.Deferred[str]:
        assert not self.aborted and not self.committed, "commit after the end"
        self.committed = True
        store = self.store
        if store.failCommit is not None:
            self.store.writers.remove(self)
            return defer.fail(store.failCommit)
        d: defer.Deferred[str] = defer.Deferred()
        message = Committed(
            f"Q{len(store.messages) + len(store.pending) + 1:016d}",
            sender,
            recipients,
            envelope,
            b"".join(self.chunks),
        )

        def publish() -> None:
            store.pending.remove(message)
            store.messages.append(message)
            store.writers.remove(self)
            d.callback(message.id)

        store.pending.append(message)
        if store.holdCommits:
            store.held.append(publish)
        else:
            publish()
        return d

    def abort(self) -> None:
        self.aborted = True
        if self in self.store.writers:
            self.store.writers.remove(self)


class MemoryQueueStore:
    """
    :ivar messages: every :class:`Committed` message.
    :ivar writers: the writers open (not committed nor aborted).
    :ivar failNew / failWrite / failCommit: an exception to fail
        ``newMessage``, ``write`` or ``commit`` with (``None``: succeed).
    :ivar holdCommits: keep commits pending until :meth:`releaseCommits`.
    """

    def __init__(self) -> None:
        self.messages: list[Committed] = []
        self.pending: list[Committed] = []
        self.writers: list[MemoryWriter] = []
        self.held: list[Any] = []
        self.failNew: Exception | None = None
        self.failWrite: Exception | None = None
        self.failCommit: Exception | None = None
        self.writeResult: Any = None
        self.holdCommits = False
        self.opened = 0

    def newMessage(self) -> MemoryWriter:
        if self.failNew is not None:
            raise self.failNew
        self.opened += 1
        writer = MemoryWriter(self)
        self.writers.append(writer)
        return writer

    def releaseCommits(self) -> None:
        held, self.held = self.held, []
        for publish in held:
            publish()

    def full(self) -> None:
        self.failCommit = QueueFullError("No space left on device")

    def broken(self) -> None:
        self.failCommit = QueueError("database is locked")
