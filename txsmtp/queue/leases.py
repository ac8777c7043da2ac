"""
What a :class:`~txsmtp.queue.scheduler.Scheduler` holds between a claim
and the record of the outcomes, and the renewal of its leases.

- A :class:`Batch` is the recipients of one message for one next hop: one
  transaction.  A :class:`HeldLease` is a claimed lease with its batches
  not yet done.
- :class:`LeaseRenewals` (a base of the scheduler) renews, every third of
  the lease period, each held lease with less than half of it left.  A
  lease the store no longer honours is lost: its batches still waiting are
  dropped (another claim will take those recipients once it lapses), and
  one that is under way records nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txsmtp.queue.model import Lease, NextHop, QueuedRecipient

__all__ = ["Batch", "HeldLease", "LeaseRenewals"]

_log = Logger(namespace="txsmtp.queue")


@dataclass(eq=False)
class Batch:
    """Recipients of one message for one hop: one transaction."""

    lease: Lease
    hop: NextHop
    recipients: list[QueuedRecipient]
    deferred: Deferred[Any] | None = None
    #: the store's destination slots were all taken: wait and try again
    noSlot: bool = False


@dataclass(eq=False)
class HeldLease:
    """A lease the scheduler holds, with how many of its batches are not done."""

    lease: Lease
    batches: list[Batch] = field(default_factory=list)
    lost: bool = False


class LeaseRenewals:
    """The scheduler's lease renewals (a base class: see the module's description)."""

    # What it uses of the scheduler.
    store: Any
    clock: IReactorTime
    leaseSeconds: float
    _held: dict[str, HeldLease]
    _waiting: dict[str, deque[Batch]]
    _waitingRecipients: int
    _renewTimer: IDelayedCall | None

    def _run(self, coroutine: Coroutine[Any, Any, Any], what: str) -> Deferred[Any]:
        raise NotImplementedError

    def _batchDone(self, batch: Batch) -> None:
        raise NotImplementedError

    def _scheduleRenewals(self) -> None:
        if self._renewTimer is None or not self._renewTimer.active():
            self._renewTimer = self.clock.callLater(max(self.leaseSeconds / 3, 0.5), self._renew)

    def _cancelRenewals(self) -> None:
        if self._renewTimer is not None and self._renewTimer.active():
            self._renewTimer.cancel()
        self._renewTimer = None

    def _renew(self) -> None:
        self._renewTimer = None
        now = self.clock.seconds()
        for held in list(self._held.values()):
            if held.lost or held.lease.expires - now > self.leaseSeconds / 2:
                continue
            self._run(self._renewOne(held), f"renewing the lease of {held.lease.message.id}")
        if self._held:
            self._scheduleRenewals()

    async def _renewOne(self, held: HeldLease) -> None:
        lease = held.lease
        if await self.store.renew(lease, self.leaseSeconds):
            lease.expires = max(lease.expires, self.clock.seconds() + self.leaseSeconds)
            return
        held.lost = True
        _log.warn(
            "{queueId}: lease lost (it lapsed before it was renewed); its waiting recipients are dropped for another claim",
            queueId=lease.message.id,
        )
        for batch in list(held.batches):
            queue = self._waiting.get(batch.hop.key)
            if queue is not None and batch in queue:
                queue.remove(batch)
                self._waitingRecipients -= len(batch.recipients)
                if not queue:
                    del self._waiting[batch.hop.key]
                self._batchDone(batch)
