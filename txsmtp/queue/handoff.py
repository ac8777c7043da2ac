"""
:class:`SlotHandoff`: a scheduler's use of a shared store's destination
slots (:class:`~txsmtp.queue.pgconnections.DestinationSlots`), which keep
``destinationConcurrency`` for every node of the store together.

Taking a slot is a round trip to the database, and so is giving it back.
An attempt that ends keeps its slot as a *spare* for a moment: a batch to
the same destination started next (in the same turn of the scheduler)
takes it without asking the database; what no batch took is given back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

__all__ = ["SlotHandoff"]


class SlotHandoff:
    """
    :param slots: the store's slots: ``acquire(key, limit)`` answering a
        Deferred slot or ``None``, and ``release(slot)``.
    """

    def __init__(self, slots: Any) -> None:
        self.slots = slots
        self._spare: dict[str, list[Any]] = {}

    def take(self, key: str, limit: int) -> Deferred[Any]:
        """A slot of ``key`` (a spare one first), or ``None`` when all ``limit`` are taken."""
        spare = self._spare.get(key)
        if spare:
            slot = spare.pop()
            if not spare:
                del self._spare[key]
            return defer.succeed(slot)
        d: Deferred[Any] = self.slots.acquire(key, limit)
        return d

    def keep(self, key: str, slot: Any) -> None:
        """An attempt to ``key`` ended: keep its slot for the next batch."""
        self._spare.setdefault(key, []).append(slot)

    def giveBack(self, key: str) -> None:
        """Give back the spare slots of ``key`` that no batch took."""
        for slot in self._spare.pop(key, []):
            self.slots.release(slot)
