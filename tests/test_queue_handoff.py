"""
The scheduler with a store that has shared destination slots
(:mod:`txsmtp.queue.handoff`), on a task.Clock with in-memory slots: an
attempt's slot goes to the next batch to its destination without a round
trip, what no batch takes is given back, and a batch that found every
slot taken waits for an attempt of this node to end (or a moment), not
for a poll.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.test_queue_scheduler import SchedulerTestsMixin
from txsmtp.queue.handoff import SlotHandoff
from txsmtp.queue.model import Result
from txsmtp.queue.scheduler import SLOT_RETRY


class MemorySlots:
    """Slots as PostgresStore.slots gives them, in memory; ``others`` are held by other nodes."""

    def __init__(self) -> None:
        self.held: dict[str, set[int]] = {}
        self.others: dict[str, int] = {}
        self.acquired = 0
        self.released = 0

    def acquire(self, key: str, limit: int) -> defer.Deferred[Any]:
        self.acquired += 1
        taken = self.held.setdefault(key, set())
        for n in range(self.others.get(key, 0), limit):
            if n not in taken:
                taken.add(n)
                return defer.succeed((key, n))
        return defer.succeed(None)

    def release(self, slot: Any) -> None:
        self.released += 1
        self.held[slot[0]].remove(slot[1])


class SlotHandoffTests(unittest.TestCase):
    def test_spareFirst(self) -> None:
        slots = MemorySlots()
        handoff = SlotHandoff(slots)
        slot = self.successResultOf(handoff.take("mx:a", 2))
        handoff.keep("mx:a", slot)
        self.assertEqual(self.successResultOf(handoff.take("mx:a", 2)), slot)
        self.assertEqual(slots.acquired, 1)
        handoff.keep("mx:a", slot)
        handoff.giveBack("mx:b")
        self.assertEqual(slots.released, 0)
        handoff.giveBack("mx:a")
        self.assertEqual((slots.released, slots.held["mx:a"]), (1, set()))


class SchedulerSlotTests(SchedulerTestsMixin, unittest.TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.slots = MemorySlots()
        self.store.slots = self.slots  # type: ignore[attr-defined]

    def test_handedOn(self) -> None:
        """Ten messages, two slots: two round trips to take them, none per attempt after."""
        self.start(destinationConcurrency=2)
        for i in range(10):
            self.store.add("alice@example.org", [f"r{i}@example.com"])
        self.assertEqual(len(self.outbound.waiting), 2)
        for _ in range(10):
            self.assertLessEqual(len(self.outbound.waiting), 2)
            self.outbound.waiting[0].answer(Result.DELIVERED)
        self.assertEqual(len(self.outbound.attempts), 10)
        self.assertEqual(self.slots.acquired, 2)
        self.assertEqual((self.slots.released, self.slots.held["mx:example.com"]), (2, set()))

    def test_othersHoldEverySlot(self) -> None:
        """Every slot held by other nodes: the batch waits SLOT_RETRY, then goes once one is free."""
        self.slots.others["mx:example.com"] = 2
        self.start(destinationConcurrency=2)
        self.store.add("alice@example.org", ["bob@example.com"])
        self.assertEqual((self.outbound.attempts, self.slots.acquired), ([], 1))
        self.clock.advance(SLOT_RETRY)
        self.assertEqual((self.outbound.attempts, self.slots.acquired), ([], 2))
        self.slots.others["mx:example.com"] = 1
        self.clock.advance(SLOT_RETRY)
        self.assertEqual(len(self.outbound.waiting), 1)

    def test_ownAttemptEndsUnblocks(self) -> None:
        """Slots taken by this node and one other: the end of this node's attempt starts the next at once."""
        self.slots.others["mx:example.com"] = 1
        self.start(destinationConcurrency=2)
        self.store.add("alice@example.org", ["a@example.com"])
        self.store.add("alice@example.org", ["b@example.com"])
        self.assertEqual(len(self.outbound.waiting), 1)
        self.outbound.waiting[0].answer(Result.DELIVERED)
        self.assertEqual(len(self.outbound.waiting), 1)  # without waiting for SLOT_RETRY
        self.outbound.waiting[0].answer(Result.DELIVERED)
        self.assertEqual(self.slots.held["mx:example.com"], set())
