"""
A small IQueueStore in memory, for the tests of the parts around a store
(the control channel, the command line): messages and recipients in dicts,
bodies as bytes, every answer a fired Deferred.  It is not durable and
takes no lock; ``locked=True`` makes :meth:`MemoryStore.open` fail as a
store owned by another process does.
"""

from __future__ import annotations

import copy
import io
import itertools
import uuid
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from txsmtp.queue.errors import QueueLockedError
from txsmtp.queue.interfaces import IQueueStore, IQueueWriter
from txsmtp.queue.model import (
    Lease,
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
    Result,
    statsOf,
)

__all__ = ["MemoryStore"]

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@implementer(IQueueWriter)
class _Writer:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def commit(self, sender: str, recipients: list[QueuedRecipient], envelope: dict[str, Any], arrival: float | None = None) -> defer.Deferred[str]:
        store = self.store
        now = store.clock.seconds()
        arrival = now if arrival is None else arrival
        messageId = store.newId()
        body = b"".join(self.chunks)
        rows = []
        for index, r in enumerate(recipients):
            r = copy.copy(r)
            r.index = index
            r.nextAttempt = arrival
            rows.append(r)
        envelope = {k: v for k, v in envelope.items() if k != "recipients"}
        store.messages[messageId] = QueuedMessage(messageId, sender, arrival, len(body), envelope, rows)
        store.bodies[messageId] = body
        store.wake()
        return defer.succeed(messageId)

    def abort(self) -> None:
        self.chunks = []


@implementer(IQueueStore)
class MemoryStore:
    """An :class:`~txsmtp.queue.interfaces.IQueueStore` in memory."""

    def __init__(self, clock: Any = None, locked: bool = False) -> None:
        self.clock = clock if clock is not None else Clock()
        self.locked = locked
        self.opened = False
        self.closed = False
        self.messages: dict[str, QueuedMessage] = {}
        self.bodies: dict[str, bytes] = {}
        self.leases: dict[tuple[str, int], tuple[str, float]] = {}
        self.listeners: list[Any] = []
        self.wakes = 0
        self._serial = itertools.count(1)

    def newId(self) -> str:
        """16 characters of [0-9A-Za-z], sortable by time: milliseconds, then a serial number."""

        def base62(n: int, width: int) -> str:
            digits = []
            while n:
                n, d = divmod(n, 62)
                digits.append(_DIGITS[d])
            return "".join(reversed(digits)).rjust(width, "0")

        return base62(int(self.clock.seconds() * 1000), 8) + base62(next(self._serial), 8)

    def add(self, sender: str, addresses: list[str], envelope: dict[str, Any] | None = None, body: bytes = b"Subject: t\r\n\r\nhi\r\n", arrival: float | None = None, **recipientFields: Any) -> str:
        """Queue a message at once (synchronously); :return: its id."""
        writer = self.newMessage()
        writer.write(body)
        recipients = [QueuedRecipient(0, a, **recipientFields) for a in addresses]
        ids: list[str] = []
        writer.commit(sender, recipients, envelope or {}, arrival).addCallback(ids.append)
        return ids[0]

    def wake(self) -> None:
        self.wakes += 1
        for listener in list(self.listeners):
            listener()

    def open(self) -> defer.Deferred[None]:
        if self.locked:
            return defer.fail(QueueLockedError("the queue is locked by another process"))
        self.opened = True
        self.leases.clear()
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    def newMessage(self) -> _Writer:
        return _Writer(self)

    def _leased(self, key: tuple[str, int], now: float) -> bool:
        lease = self.leases.get(key)
        return lease is not None and lease[1] > now

    def claim(self, owner: str, limit: int, leaseSeconds: float) -> defer.Deferred[list[Lease]]:
        now = self.clock.seconds()
        due = []
        for message in self.messages.values():
            for r in message.recipients:
                if r.state != RecipientState.HELD and r.nextAttempt <= now and not self._leased((message.id, r.index), now):
                    due.append((r.nextAttempt, message, r))
        due.sort(key=lambda t: t[0])
        byMessage: dict[str, Lease] = {}
        for _, message, r in due[:limit]:
            lease = byMessage.get(message.id)
            if lease is None:
                m = copy.deepcopy(message)
                m.recipients = []
                lease = byMessage[message.id] = Lease(m, owner, uuid.uuid4().hex, now + leaseSeconds)
            lease.message.recipients.append(copy.deepcopy(r))
            self.leases[(message.id, r.index)] = (lease.token, lease.expires)
        return defer.succeed(list(byMessage.values()))

    def _holds(self, lease: Lease) -> bool:
        now = self.clock.seconds()
        return all(self.leases.get((lease.message.id, r.index), ("", 0))[0] == lease.token and self._leased((lease.message.id, r.index), now) for r in lease.message.recipients)

    def renew(self, lease: Lease, leaseSeconds: float) -> defer.Deferred[bool]:
        if not self._holds(lease):
            return defer.succeed(False)
        lease.expires = self.clock.seconds() + leaseSeconds
        for r in lease.message.recipients:
            self.leases[(lease.message.id, r.index)] = (lease.token, lease.expires)
        return defer.succeed(True)

    def record(self, lease: Lease, outcomes: list[Any]) -> defer.Deferred[bool]:
        if not self._holds(lease):
            return defer.succeed(False)
        message = self.messages[lease.message.id]
        rows = {r.index: r for r in message.recipients}
        for outcome in outcomes:
            self.leases.pop((message.id, outcome.index), None)
            if outcome.result == Result.DEFERRED:
                row = rows[outcome.index]
                row.state = RecipientState.DEFERRED
                row.attempts += 1
                row.nextAttempt = outcome.nextAttempt
                row.lastError = outcome.lastError
                row.delayReported = row.delayReported or outcome.delayReported
            else:
                rows.pop(outcome.index, None)
        message.recipients = [r for r in message.recipients if r.index in rows]
        if not message.recipients:
            del self.messages[message.id]
            del self.bodies[message.id]
        return defer.succeed(True)

    def openBody(self, messageId: str) -> defer.Deferred[io.BytesIO]:
        if messageId not in self.bodies:
            return defer.fail(KeyError(messageId))
        return defer.succeed(io.BytesIO(self.bodies[messageId]))

    def nextDue(self) -> defer.Deferred[float | None]:
        now = self.clock.seconds()
        times = [r.nextAttempt for m in self.messages.values() for r in m.recipients if r.state != RecipientState.HELD and not self._leased((m.id, r.index), now)]
        return defer.succeed(min(times) if times else None)

    def list(self) -> defer.Deferred[list[QueuedMessage]]:
        return defer.succeed([copy.deepcopy(m) for m in sorted(self.messages.values(), key=lambda m: (m.arrival, m.id))])

    def stats(self) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed(statsOf(list(self.messages.values())))

    def show(self, messageId: str) -> defer.Deferred[QueuedMessage | None]:
        message = self.messages.get(messageId)
        return defer.succeed(copy.deepcopy(message) if message is not None else None)

    def hold(self, messageId: str) -> defer.Deferred[bool]:
        message = self.messages.get(messageId)
        if message is None:
            return defer.succeed(False)
        for r in message.recipients:
            r.state = RecipientState.HELD
        return defer.succeed(True)

    def release(self, messageId: str) -> defer.Deferred[bool]:
        message = self.messages.get(messageId)
        if message is None:
            return defer.succeed(False)
        now = self.clock.seconds()
        for r in message.recipients:
            if r.state == RecipientState.HELD:
                r.state = RecipientState.DEFERRED if r.attempts else RecipientState.QUEUED
                r.nextAttempt = now
        self.wake()
        return defer.succeed(True)

    def delete(self, messageId: str) -> defer.Deferred[bool]:
        if self.messages.pop(messageId, None) is None:
            return defer.succeed(False)
        del self.bodies[messageId]
        for key in [k for k in self.leases if k[0] == messageId]:
            del self.leases[key]
        return defer.succeed(True)

    def flush(self, messageId: str | None = None) -> defer.Deferred[int]:
        now = self.clock.seconds()
        count = 0
        for message in self.messages.values():
            if messageId is not None and message.id != messageId:
                continue
            for r in message.recipients:
                if r.state == RecipientState.DEFERRED and r.nextAttempt > now:
                    r.nextAttempt = now
                    count += 1
        self.wake()
        return defer.succeed(count)

    def addWakeListener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def removeWakeListener(self, listener: Any) -> None:
        self.listeners.remove(listener)
