"""
The scheduler: takes due recipients out of a store, hands them to an
outbound delivery, and records what became of them.

- It wakes at once when the store says new work may be due (a commit, a
  flush, a release), and otherwise at the earliest due time the store gives
  (its ``nextDue()``); it never polls in a loop.
- It claims only what it has room for: at most ``maxRecipients`` per free
  attempt slot, and never more than ``concurrency * maxRecipients``
  recipients waiting in memory.  Claimed recipients are grouped by message
  and next hop (:attr:`~txsmtp.queue.model.NextHop.key`), at most
  ``maxRecipients`` per transaction, and started while the hop has fewer
  than ``destinationConcurrency`` attempts under way and the scheduler
  fewer than ``concurrency``.
- Each result becomes a :class:`~txsmtp.queue.model.RecipientOutcome`: a
  temporary failure is tried again at the time the
  :class:`~txsmtp.queue.retry.RetryPolicy` gives, or bounced with status
  ``4.4.7`` once the message is older than its lifetime.  Reports are
  queued (:class:`~txsmtp.queue.reports.Reporter`) before the outcomes are
  recorded: a crash in between sends a report twice, never not at all.
- With a store shared by several nodes (one with ``slots``), an attempt
  also takes one of the destination's slots, shared by all the nodes
  (:mod:`txsmtp.queue.handoff`); when none is free, the batch waits for an
  attempt of this node to that destination to end, or :data:`SLOT_RETRY`.
- Leases of recipients waiting or under way are renewed before they
  lapse (:mod:`txsmtp.queue.leases`); one that lapsed before its body was
  read is not delivered.  When anything fails (the store, the outbound
  delivery, the reporter), the error is logged and the recipients stay
  leased until the lease lapses.

Every attempt is told to the scheduler's ``events`` (a
:class:`~txsmtp.queue.events.QueueEvents`, for metrics) and logged in one
line per outcome (``txsmtp.queue`` namespace), e.g.::

    M0001: to=<a@example.com>,<b@example.com> hop=mx:example.com
      result=deferred status=4.3.0 attempts=2 next=2026-12-06T22:40:00Z
      reason="mx.example.com[192.0.2.1] said: 451 4.3.0 try later"
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.queue.attempts import logAttempt
from txsmtp.queue.attempts import logStoreError as _logError
from txsmtp.queue.events import NO_QUEUE_EVENTS, QueueEvents
from txsmtp.queue.handoff import SlotHandoff
from txsmtp.queue.leases import Batch as _Batch
from txsmtp.queue.leases import HeldLease as _Held
from txsmtp.queue.leases import LeaseRenewals
from txsmtp.queue.model import (
    AttemptResult,
    Lease,
    NextHop,
    QueuedRecipient,
    RecipientOutcome,
    Result,
)
from txsmtp.queue.prefixed import openMessage
from txsmtp.queue.retry import RetryPolicy, outcomeFor

if TYPE_CHECKING:
    from txsmtp.queue.reports import Reporter

__all__ = ["Scheduler", "IRouter"]

_log = Logger(namespace="txsmtp.queue")

_T = TypeVar("_T")

#: Seconds to wait before claiming again after the store failed.
ERROR_BACKOFF = 10.0
#: The shortest timer: a store whose next due time is already past (a race
#: with a lease that just lapsed) is asked again after this, never at once.
MINIMUM_TIMER = 1.0
#: Seconds before a destination whose shared slots were all taken (by the
#: nodes of a shared store) is tried again.
SLOT_RETRY = 1.0


class IRouter(Protocol):
    """What the scheduler needs of a router (such as ``txsmtp.queue.routing.Router``)."""

    def route(self, address: str) -> NextHop:
        """The next hop for ``address``."""


class Scheduler(LeaseRenewals, service.Service):
    """
    Runs the queue: see the module's description.

    :param store: the :class:`~txsmtp.queue.interfaces.IQueueStore`.
    :param router: an object with ``route(address) -> NextHop``
        (:class:`IRouter`).
    :param outbound: the :class:`~txsmtp.queue.interfaces.IOutbound`.
    :param reporter: the :class:`~txsmtp.queue.reports.Reporter`, or
        ``None`` for no reports at all.  Give it the same lifetime as
        ``retry``.
    :param retry: the :class:`~txsmtp.queue.retry.RetryPolicy` (default:
        Postfix's schedule).
    :param clock: the :class:`~twisted.internet.interfaces.IReactorTime`
        for timers and "now" (default: the store's ``clock``, else the
        reactor).
    :param owner: the name leases are taken under.
    :param maxRecipients: the most recipients in one transaction.
    :param destinationConcurrency: the most attempts under way at once
        toward one next hop (:attr:`~txsmtp.queue.model.NextHop.key`).
    :param concurrency: the most attempts under way at once in all.
    :param leaseSeconds: how long a claim lasts before it is renewed.
    :param delayWarning: the age in seconds after which a delay report is
        sent (once) for a recipient still deferred; ``None``: never.
    :param stopTimeout: how long :meth:`stopService` waits for attempts
        under way before cancelling them.
    """

    def __init__(
        self,
        store: Any,
        router: IRouter,
        outbound: Any,
        reporter: Reporter | None = None,
        *,
        retry: RetryPolicy | None = None,
        clock: IReactorTime | None = None,
        owner: str = "local",
        maxRecipients: int = 50,
        destinationConcurrency: int = 20,
        concurrency: int = 100,
        leaseSeconds: float = 600,
        delayWarning: float | None = None,
        stopTimeout: float = 30.0,
    ) -> None:
        if maxRecipients < 1 or destinationConcurrency < 1 or concurrency < 1:
            raise ValueError("maxRecipients, destinationConcurrency and concurrency must be at least 1")
        if leaseSeconds < 1:
            raise ValueError("leaseSeconds must be at least 1")
        self.store = store
        self.router = router
        self.outbound = outbound
        self.reporter = reporter
        self.retry = retry if retry is not None else RetryPolicy()
        if clock is None:
            clock = getattr(store, "clock", None)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.owner = owner
        self.maxRecipients = maxRecipients
        self.destinationConcurrency = destinationConcurrency
        self.concurrency = concurrency
        self.leaseSeconds = float(leaseSeconds)
        self.delayWarning = delayWarning
        self.stopTimeout = stopTimeout
        #: told of every attempt (:class:`~txsmtp.queue.events.QueueEvents`)
        self.events: QueueEvents = NO_QUEUE_EVENTS
        self._waiting: dict[str, deque[_Batch]] = {}
        self._waitingRecipients = 0
        self._active: dict[str, int] = {}
        self._inFlight: set[_Batch] = set()
        #: destinations whose shared slots were all taken: until an attempt
        #: of this node to it ends, or a timer
        self._blocked: dict[str, IDelayedCall] = {}
        self._handoff: SlotHandoff | None = None
        self._held: dict[str, _Held] = {}
        self._timer: IDelayedCall | None = None
        self._timerDue: float | None = None
        self._renewTimer: IDelayedCall | None = None
        self._claiming = False
        self._wanted = False
        self._dispatching = False
        self._dispatchAgain = False
        self._starved = False
        self._stopping = False
        self._idle: list[Deferred[None]] = []

    # -- the service -----------------------------------------------------

    def startService(self) -> None:
        """Listen to the store's wake-ups and claim what is due now."""
        service.Service.startService(self)
        self._stopping = False
        # A store shared by several nodes keeps destinationConcurrency for
        # all of them together (PostgresStore.slots, there once it is open).
        slots = getattr(self.store, "slots", None)
        self._handoff = SlotHandoff(slots) if slots is not None else None
        self.store.addWakeListener(self.wake)
        self.wake()

    def stopService(self) -> Deferred[None]:
        """
        Stop claiming and starting attempts, and wait (up to
        ``stopTimeout``) for the attempts under way, cancelling those still
        running then.  Recipients claimed but not started stay leased
        (a store ends those leases when it is opened again).
        """
        service.Service.stopService(self)
        self._stopping = True
        self.store.removeWakeListener(self.wake)
        self._cancelTimer()
        for blocked in self._blocked.values():
            blocked.cancel()
        self._blocked.clear()
        for queue in self._waiting.values():
            for batch in queue:
                self._batchDone(batch)
        self._waiting.clear()
        self._waitingRecipients = 0
        if not self._inFlight:
            self._cancelRenewals()
            return defer.succeed(None)
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)

        def timedOut() -> None:
            _log.warn(
                "Queue scheduler stopping: cancelling {count} attempts still under way after {timeout}s",
                count=len(self._inFlight),
                timeout=self.stopTimeout,
            )
            for batch in list(self._inFlight):
                if batch.deferred is not None:
                    batch.deferred.cancel()

        guard = self.clock.callLater(self.stopTimeout, timedOut)

        def done(result: None) -> None:
            if guard.active():
                guard.cancel()
            self._cancelRenewals()

        idle.addCallback(done)
        return idle

    # -- waking and claiming ---------------------------------------------

    def wake(self) -> None:
        """Claim due recipients now (the store's wake listener)."""
        if not self.running or self._stopping:
            return
        self._wanted = True
        if self._claiming:
            return
        self._claiming = True
        self._run(self._claimLoop(), "claiming")

    def _run(self, coroutine: Coroutine[Any, Any, _T], what: str) -> Deferred[_T | None]:
        """Run ``coroutine``; log its error (it never reaches the caller)."""

        def failed(f: Failure) -> None:
            if f.check(defer.CancelledError) and self._stopping:
                _log.warn("Queue scheduler: cancelled while {what} (stopping)", what=what)
            else:
                _logError(_log, f, what, "; the recipients stay leased")

        return Deferred.fromCoroutine(coroutine).addErrback(failed)

    def _claimLimit(self) -> int:
        free = self.concurrency - len(self._inFlight)
        room = self.concurrency * self.maxRecipients - self._waitingRecipients
        return max(0, min(free * self.maxRecipients, room))

    async def _claimLoop(self) -> None:
        try:
            while self._wanted and self.running and not self._stopping:
                self._wanted = False
                limit = self._claimLimit()
                if limit <= 0:
                    # Full: the next attempt that ends wakes the scheduler.
                    self._starved = True
                    return
                self._cancelTimer()
                try:
                    leases = await self.store.claim(self.owner, limit, self.leaseSeconds)
                except Exception:
                    _logError(_log, Failure(), "claiming due recipients")
                    self._setTimer(self.clock.seconds() + ERROR_BACKOFF)
                    return
                claimed = sum(len(lease.message.recipients) for lease in leases)
                for lease in leases:
                    self._accept(lease)
                self._dispatch()
                if self._stopping:
                    return
                if claimed >= limit:
                    # There may be more due: claim again (room permitting).
                    self._wanted = True
                    continue
                if self._wanted:
                    continue
                try:
                    due = await self.store.nextDue()
                except Exception:
                    _logError(_log, Failure(), "asking the store for the next due time")
                    due = self.clock.seconds() + ERROR_BACKOFF
                if self._wanted or self._stopping:
                    continue
                self._setTimer(due)
        finally:
            self._claiming = False

    def _setTimer(self, due: float | None) -> None:
        """
        Wake at ``due`` (or at the latest after one lease period: a lease
        left by a failed attempt lapses unseen by the store's wake-ups).
        """
        now = self.clock.seconds()
        latest = now + self.leaseSeconds
        when = latest if due is None else min(max(due, now + MINIMUM_TIMER), latest)
        if self._timer is not None and self._timer.active():
            if self._timerDue is not None and self._timerDue <= when:
                return
            self._timer.cancel()
        self._timerDue = when
        self._timer = self.clock.callLater(when - now, self._timerFired)

    def _timerFired(self) -> None:
        self._timer = None
        self._timerDue = None
        self.wake()

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timerDue = None

    # -- grouping and starting -------------------------------------------

    def _accept(self, lease: Lease) -> None:
        """Group a lease's recipients into batches by next hop, and queue them."""
        held = _Held(lease)
        groups: dict[str, tuple[NextHop, list[QueuedRecipient]]] = {}
        try:
            for rcpt in lease.message.recipients:
                hop = self.router.route(rcpt.address)
                groups.setdefault(hop.key, (hop, []))[1].append(rcpt)
        except Exception:
            _log.failure(
                "Queue scheduler: routing the recipients of {queueId} failed; they stay leased",
                queueId=lease.message.id,
            )
            return
        for key, (hop, recipients) in groups.items():
            for start in range(0, len(recipients), self.maxRecipients):
                batch = _Batch(lease, hop, recipients[start : start + self.maxRecipients])
                held.batches.append(batch)
                self._waiting.setdefault(key, deque()).append(batch)
                self._waitingRecipients += len(batch.recipients)
        if held.batches:
            self._held[lease.token] = held
            self._scheduleRenewals()

    def _dispatch(self) -> None:
        """Start every waiting batch that the concurrency limits allow."""
        if self._stopping:
            return
        if self._dispatching:
            # Called back by an attempt that ended at once: the loop below
            # goes round again.
            self._dispatchAgain = True
            return
        self._dispatching = True
        try:
            self._dispatchAgain = True
            while self._dispatchAgain and not self._stopping:
                self._dispatchAgain = False
                for key in list(self._waiting):
                    if len(self._inFlight) >= self.concurrency:
                        break
                    if key in self._blocked:
                        continue
                    queue = self._waiting.get(key)
                    while queue and len(self._inFlight) < self.concurrency:
                        if self._active.get(key, 0) >= self.destinationConcurrency:
                            break
                        batch = queue.popleft()
                        self._waitingRecipients -= len(batch.recipients)
                        if not queue:
                            del self._waiting[key]
                        self._start(batch)
        finally:
            self._dispatching = False

    def _start(self, batch: _Batch) -> None:
        key = batch.hop.key
        self._active[key] = self._active.get(key, 0) + 1
        self._inFlight.add(batch)
        d = self._run(self._attempt(batch), f"delivering {batch.lease.message.id}")
        if batch in self._inFlight:
            batch.deferred = d
        d.addBoth(lambda _: self._finished(batch))

    def _finished(self, batch: _Batch) -> None:
        key = batch.hop.key
        self._active[key] -= 1
        if not self._active[key]:
            del self._active[key]
        self._inFlight.discard(batch)
        batch.deferred = None
        if batch.noSlot and not self._stopping:
            # Every node's slots for this destination are taken: wait in
            # line (still leased and renewed) until an attempt of this node
            # to it ends, or when there is none, for a moment.
            batch.noSlot = False
            self._waiting.setdefault(key, deque()).appendleft(batch)
            self._waitingRecipients += len(batch.recipients)
            if key not in self._blocked:
                self._blocked[key] = self.clock.callLater(SLOT_RETRY, self._unblock, key)
            self._dispatch()
            return
        blocked = self._blocked.pop(key, None)
        if blocked is not None:
            blocked.cancel()  # this attempt's slot is for the batches waiting
        self._batchDone(batch)
        if self._stopping:
            self._releaseSpare(key)
            if not self._inFlight:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)
            return
        self._dispatch()
        # A slot that no batch waiting for its destination took goes back.
        self._releaseSpare(key)
        if self._starved:
            # Due work was left unclaimed for want of room; there is some now.
            # (Otherwise the store's wake-ups and the timer cover what is due.)
            self._starved = False
            self.wake()

    def _releaseSpare(self, key: str) -> None:
        if self._handoff is not None:
            self._handoff.giveBack(key)

    def _unblock(self, key: str) -> None:
        self._blocked.pop(key, None)
        self._dispatch()

    def _batchDone(self, batch: _Batch) -> None:
        held = self._held.get(batch.lease.token)
        if held is None:
            return
        if batch in held.batches:
            held.batches.remove(batch)
        if not held.batches:
            del self._held[batch.lease.token]
            if not self._held:
                self._cancelRenewals()

    # -- one attempt -------------------------------------------------------

    async def _attempt(self, batch: _Batch) -> None:
        handoff, key = self._handoff, batch.hop.key
        if handoff is None:
            return await self._deliver(batch)
        slot = await handoff.take(key, self.destinationConcurrency)
        if slot is None:
            batch.noSlot = True
            return None
        try:
            return await self._deliver(batch)
        finally:
            handoff.keep(key, slot)  # _finished gives it back if no batch takes it

    async def _deliver(self, batch: _Batch) -> None:
        lease, hop, recipients = batch.lease, batch.hop, batch.recipients
        message = lease.message
        body = await openMessage(self.store, message)
        held = self._held.get(lease.token)
        if (held is not None and held.lost) or lease.expires <= self.clock.seconds():  # the store was away
            body.close()  # another claim may deliver it: delivering too would be a duplicate
            _log.warn("{queueId}: lease lapsed while the body was read; left to another claim", queueId=message.id)
            return
        started = self.clock.seconds()
        try:
            results = await defer.maybeDeferred(self.outbound.deliver, hop, message, recipients, body)
        finally:
            body.close()
        if len(results) != len(recipients):
            raise RuntimeError(
                f"the outbound delivery answered {len(results)} results for {len(recipients)} recipients"
            )
        now = self.clock.seconds()
        outcomes: list[RecipientOutcome] = []
        final: list[AttemptResult] = []
        reportable: list[tuple[QueuedRecipient, AttemptResult]] = []
        for rcpt, result in zip(recipients, results, strict=True):
            outcome, report = outcomeFor(
                self.retry, self.delayWarning if self.reporter is not None else None, message.arrival, rcpt, result, now
            )
            outcomes.append(outcome)
            final.append(report if report is not None else result)
            if report is not None:
                reportable.append((rcpt, report))
        logAttempt(_log, message.id, hop, recipients, final, outcomes, now - started)
        self.events.attemptDone(hop, final, now - started)
        if self.reporter is not None and reportable:
            # Reports first (RFC 3461 §6.2 wants one when asked for): a
            # crash between the two gives a duplicate report, never none.
            try:
                await self.reporter.report(message, reportable, lambda: openMessage(self.store, message))
            except Exception:
                # A failure report that could not be queued (a full queue):
                # those recipients stay leased and are tried, and reported,
                # again once the lease ends.  The others are recorded all the
                # same: a lost success or delay notice is better than the
                # message delivered twice.
                _log.failure("{queueId}: could not queue a delivery report", queueId=message.id)
                unreported = {r.index for r, res in reportable if res.result == Result.FAILED}
                outcomes = [o for o in outcomes if o.index not in unreported]
                if not outcomes:
                    return
        if not await self.store.record(lease, outcomes):
            _log.warn(
                "{queueId}: lease lost before the outcomes were recorded (to={recipients} hop={hop}); "
                "another claim will try them again",
                queueId=message.id,
                recipients=",".join(f"<{r.address}>" for r in recipients),
                hop=hop.key,
            )
            held = self._held.get(lease.token)
            if held is not None:
                held.lost = True
            return
        deferred = [o.nextAttempt for o in outcomes if o.result == Result.DEFERRED and o.nextAttempt is not None]
        if deferred and not self._stopping:
            self._setTimer(min(deferred))

    # -- for tests and the control socket ---------------------------------

    @property
    def inFlight(self) -> int:
        """How many attempts are under way."""
        return len(self._inFlight)

    @property
    def waiting(self) -> int:
        """How many claimed recipients wait in memory for a free slot."""
        return self._waitingRecipients

