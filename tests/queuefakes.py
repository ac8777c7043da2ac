"""
In-memory stand-ins for the queue's parts, for unit tests of the scheduler
and the reports: :class:`FakeStore` (an :class:`IQueueStore` in a dict, on a
:class:`~twisted.internet.task.Clock`), :class:`FakeOutbound` (an
:class:`IOutbound` whose attempts the test answers by hand),
:class:`StaticRouter` and :class:`ReadRecorder` (a body file that records
the size of every read).

The real store (SQLite) and the real outbound delivery are tested with the
conformance suite and real peers; these fakes only keep the rules the
scheduler depends on (due times, leases and their tokens, wake listeners).
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from zope.interface import implementer

from txsmtp.queue.interfaces import IOutbound, IQueueStore, IQueueWriter
from txsmtp.queue.model import (
    AttemptResult,
    Lease,
    NextHop,
    QueuedMessage,
    QueuedRecipient,
    RecipientOutcome,
    RecipientState,
    Result,
)


class ReadRecorder(io.BufferedIOBase):
    """A readable, seekable binary file over ``data`` that records every read's size."""

    def __init__(self, data: bytes) -> None:
        self._raw = io.BytesIO(data)
        self.reads: list[int] = []
        self.closedBy: list[str] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(-1 if size is None else size)
        return self._raw.read(size)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readline(self, size: int | None = -1) -> bytes:
        self.reads.append(-1 if size is None else size)
        return self._raw.readline(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


@dataclass
class _Row:
    message: QueuedMessage
    body: bytes
    held: set[int] = field(default_factory=set)
    # recipient index -> (token, expires)
    leases: dict[int, tuple[str, float]] = field(default_factory=dict)


@implementer(IQueueWriter)
class FakeWriter:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.chunks: list[bytes] = []
        self.aborted = False

    def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))

    def commit(
        self, sender: str, recipients: list[QueuedRecipient], envelope: dict[str, Any], arrival: float | None = None
    ) -> Deferred[str]:
        if self.store.commitError is not None:
            self.abort()
            return defer.fail(self.store.commitError)
        return defer.succeed(self.store.add(sender, recipients, envelope, b"".join(self.chunks), arrival))

    def abort(self) -> None:
        self.aborted = True
        self.chunks = []


@implementer(IQueueStore)
class FakeStore:
    """
    A store in memory.  Every method answers at once (fired Deferreds).

    :ivar claims: the ``limit`` of every :meth:`claim` call.
    :ivar records: every ``(lease, outcomes)`` recorded (or refused).
    :ivar bodies: every file :meth:`openBody` handed out.
    :ivar events: the order of interesting calls, as strings
        (``"record <id>"``), for tests of ordering.
    """

    def __init__(self, clock: task.Clock | None = None) -> None:
        self.clock = clock if clock is not None else task.Clock()
        self.rows: dict[str, _Row] = {}
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []
        self.claims: list[int] = []
        self.records: list[tuple[Lease, list[RecipientOutcome], bool]] = []
        self.bodies: list[ReadRecorder] = []
        self.events: list[str] = []
        self.claimError: Exception | None = None
        self.commitError: Exception | None = None
        self.renewals = 0

    # -- helpers for tests -------------------------------------------------

    def add(
        self,
        sender: str,
        recipients: list[QueuedRecipient] | list[str],
        envelope: dict[str, Any] | None = None,
        body: bytes = b"Subject: test\r\n\r\nHello\r\n",
        arrival: float | None = None,
        wake: bool = True,
    ) -> str:
        """Queue a message now (at once durable), and wake the listeners."""
        messageId = f"M{next(self._ids):04d}"
        now = self.clock.seconds()
        rows = []
        for i, r in enumerate(recipients):
            rcpt = QueuedRecipient(i, r) if isinstance(r, str) else copy.copy(r)
            rcpt.index = i
            rcpt.nextAttempt = now if arrival is None else arrival
            rows.append(rcpt)
        message = QueuedMessage(
            messageId, sender, now if arrival is None else arrival, len(body), dict(envelope or {}), rows
        )
        self.rows[messageId] = _Row(message, body)
        self.events.append(f"commit {messageId}")
        if wake:
            self._wake()
        return messageId

    def recipient(self, messageId: str, index: int) -> QueuedRecipient | None:
        row = self.rows.get(messageId)
        if row is None:
            return None
        for r in row.message.recipients:
            if r.index == index:
                return r
        return None

    def leased(self) -> int:
        """How many recipients are under a live lease now."""
        now = self.clock.seconds()
        return sum(1 for row in self.rows.values() for _, exp in row.leases.values() if exp > now)

    def _wake(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _claimable(self, row: _Row, r: QueuedRecipient, now: float) -> bool:
        if r.index in row.held:
            return False
        lease = row.leases.get(r.index)
        return lease is None or lease[1] <= now

    # -- IQueueStore ---------------------------------------------------------

    def open(self) -> Deferred[None]:
        for row in self.rows.values():
            row.leases.clear()
        return defer.succeed(None)

    def close(self) -> Deferred[None]:
        return defer.succeed(None)

    def newMessage(self) -> FakeWriter:
        return FakeWriter(self)

    def claim(self, owner: str, limit: int, leaseSeconds: float) -> Deferred[list[Lease]]:
        self.claims.append(limit)
        self.events.append(f"claim {limit}")
        if self.claimError is not None:
            return defer.fail(self.claimError)
        now = self.clock.seconds()
        due = [
            (r.nextAttempt, row.message.arrival, row.message.id, r)
            for row in self.rows.values()
            for r in row.message.recipients
            if r.nextAttempt <= now and self._claimable(row, r, now)
        ]
        due.sort(key=lambda t: (t[0], t[1], t[2], t[3].index))
        chosen: dict[str, list[QueuedRecipient]] = {}
        for _, _, messageId, r in due[:limit]:
            chosen.setdefault(messageId, []).append(r)
        leases = []
        for messageId, recipients in chosen.items():
            row = self.rows[messageId]
            token = f"T{next(self._tokens)}"
            for r in recipients:
                row.leases[r.index] = (token, now + leaseSeconds)
            m = row.message
            claimed = QueuedMessage(
                m.id, m.sender, m.arrival, m.size, copy.deepcopy(m.envelope), [copy.copy(r) for r in recipients]
            )
            leases.append(Lease(claimed, owner, token, now + leaseSeconds))
        return defer.succeed(leases)

    def _holds(self, lease: Lease) -> list[int]:
        """The indexes of the lease's recipients still under its token."""
        row = self.rows.get(lease.message.id)
        if row is None:
            return []
        now = self.clock.seconds()
        return [
            r.index
            for r in lease.message.recipients
            if row.leases.get(r.index, ("", 0.0))[0] == lease.token and row.leases[r.index][1] > now
        ]

    def renew(self, lease: Lease, leaseSeconds: float) -> Deferred[bool]:
        self.renewals += 1
        held = self._holds(lease)
        if not held:
            return defer.succeed(False)
        row = self.rows[lease.message.id]
        expires = self.clock.seconds() + leaseSeconds
        for index in held:
            row.leases[index] = (lease.token, expires)
        lease.expires = expires
        return defer.succeed(True)

    def record(self, lease: Lease, outcomes: list[RecipientOutcome]) -> Deferred[bool]:
        held = set(self._holds(lease))
        ok = bool(outcomes) and all(o.index in held for o in outcomes)
        self.records.append((lease, list(outcomes), ok))
        self.events.append(f"record {lease.message.id} {'ok' if ok else 'lost'}")
        if not ok:
            return defer.succeed(False)
        row = self.rows[lease.message.id]
        for o in outcomes:
            del row.leases[o.index]
            r = self.recipient(lease.message.id, o.index)
            assert r is not None
            r.attempts += 1
            if o.result == Result.DEFERRED:
                r.state = RecipientState.DEFERRED
                assert o.nextAttempt is not None
                r.nextAttempt = o.nextAttempt
                r.lastError = o.lastError
                r.delayReported = o.delayReported
            else:
                row.message.recipients.remove(r)
        if not row.message.recipients:
            del self.rows[lease.message.id]
        return defer.succeed(True)

    def openBody(self, messageId: str) -> Deferred[BinaryIO]:
        row = self.rows.get(messageId)
        if row is None:
            return defer.fail(KeyError(messageId))
        f = ReadRecorder(row.body)
        self.bodies.append(f)
        return defer.succeed(f)  # type: ignore[arg-type]

    def nextDue(self) -> Deferred[float | None]:
        now = self.clock.seconds()
        times = [
            r.nextAttempt
            for row in self.rows.values()
            for r in row.message.recipients
            if self._claimable(row, r, now)
        ]
        return defer.succeed(min(times) if times else None)

    def list(self) -> Deferred[list[QueuedMessage]]:
        return defer.succeed([copy.deepcopy(row.message) for row in self.rows.values()])

    def show(self, messageId: str) -> Deferred[QueuedMessage | None]:
        row = self.rows.get(messageId)
        return defer.succeed(copy.deepcopy(row.message) if row else None)

    def hold(self, messageId: str) -> Deferred[bool]:
        row = self.rows.get(messageId)
        if row is None:
            return defer.succeed(False)
        row.held = {r.index for r in row.message.recipients}
        for r in row.message.recipients:
            r.state = RecipientState.HELD
        return defer.succeed(True)

    def release(self, messageId: str) -> Deferred[bool]:
        row = self.rows.get(messageId)
        if row is None:
            return defer.succeed(False)
        row.held.clear()
        for r in row.message.recipients:
            r.state = RecipientState.DEFERRED if r.attempts else RecipientState.QUEUED
            r.nextAttempt = self.clock.seconds()
        self._wake()
        return defer.succeed(True)

    def delete(self, messageId: str) -> Deferred[bool]:
        return defer.succeed(self.rows.pop(messageId, None) is not None)

    def flush(self, messageId: str | None = None) -> Deferred[int]:
        count = 0
        now = self.clock.seconds()
        for row in self.rows.values():
            if messageId is not None and row.message.id != messageId:
                continue
            for r in row.message.recipients:
                if r.index not in row.held and r.nextAttempt > now:
                    r.nextAttempt = now
                    count += 1
        self._wake()
        return defer.succeed(count)

    def addWakeListener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def removeWakeListener(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


@dataclass
class Attempt:
    """One call of :meth:`FakeOutbound.deliver`, waiting for the test's answer."""

    hop: NextHop
    message: QueuedMessage
    recipients: list[QueuedRecipient]
    body: bytes
    bodyFile: Any
    deferred: Deferred[list[AttemptResult]]

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.recipients]

    def answer(self, result: Result, status: str = "", reason: str = "") -> None:
        """Answer the same result for every recipient."""
        default = {Result.DELIVERED: "2.0.0", Result.RELAYED: "2.0.0", Result.FAILED: "5.0.0", Result.DEFERRED: "4.0.0"}
        status = status or default[result]
        code = {"2": "250", "4": "451", "5": "550"}[status[0]]
        self.deferred.callback(
            [
                AttemptResult(
                    result,
                    status,
                    diagnostic=f"smtp; {code} {status} {reason or 'ok'}",
                    remoteMTA="dns; mx.example.net",
                    reason=f"mx.example.net[192.0.2.1] said: {code} {status} {reason or 'ok'}",
                )
                for _ in self.recipients
            ]
        )

    def answerEach(self, results: list[AttemptResult]) -> None:
        self.deferred.callback(results)


@implementer(IOutbound)
class FakeOutbound:
    """
    An outbound delivery whose attempts wait for the test: each call is an
    :class:`Attempt` in :attr:`attempts` (and in :attr:`waiting` until
    answered).  With ``auto`` set, every attempt is answered at once with
    that result.
    """

    def __init__(self, auto: Result | None = None) -> None:
        self.attempts: list[Attempt] = []
        self.auto = auto
        self.error: Exception | None = None

    @property
    def waiting(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.deferred.called]

    def deliver(
        self, hop: NextHop, message: QueuedMessage, recipients: list[QueuedRecipient], body: BinaryIO
    ) -> Deferred[list[AttemptResult]]:
        if self.error is not None:
            raise self.error
        data = body.read()
        attempt = Attempt(hop, message, list(recipients), data, body, Deferred())
        self.attempts.append(attempt)
        if self.auto is not None:
            attempt.answer(self.auto)
        return attempt.deferred


class StaticRouter:
    """Routes every domain to its MX (``NextHop("mx", domain)``) but those given in ``routes``."""

    def __init__(self, routes: dict[str, NextHop] | None = None) -> None:
        self.routes = dict(routes or {})
        self.error: Exception | None = None

    def route(self, address: str) -> NextHop:
        if self.error is not None:
            raise self.error
        domain = address.rpartition("@")[2].lower()
        return self.routes.get(domain, NextHop("mx", domain))
