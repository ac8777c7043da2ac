"""
What the queue tells its observers, for counting (``--metrics``):
:class:`QueueEvents`, the base with every method a no-op.  A
:class:`~txsmtp.queue.scheduler.Scheduler` and a
:class:`~txsmtp.queue.reports.Reporter` each have an ``events``
attribute holding one (:data:`NO_QUEUE_EVENTS` by default).

The calls are made on the reactor thread, once per attempt or report: an
observer must answer at once and never raise.
"""

from __future__ import annotations

from collections.abc import Sequence

from txsmtp.queue.model import AttemptResult, NextHop

__all__ = ["QueueEvents", "NO_QUEUE_EVENTS"]


class QueueEvents:
    """The observer interface, with nothing done; override what you count."""

    def attemptDone(self, hop: NextHop, results: Sequence[AttemptResult], seconds: float) -> None:
        """
        A delivery attempt through ``hop`` ended after ``seconds``, with
        one result per recipient (as logged: a deferred result past the
        message's lifetime is already a failure).
        """

    def reportQueued(self, kind: str) -> None:
        """A delivery status notification of ``kind`` (``"failure"``, ``"delay"``, ``"success"``) was queued."""


#: The observer of a queue nobody observes.
NO_QUEUE_EVENTS = QueueEvents()
