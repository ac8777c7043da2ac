"""The exceptions of the queue."""

from __future__ import annotations

__all__ = ["QueueError", "QueueFullError", "QueueLockedError", "QueueUnreachableError"]


class QueueError(Exception):
    """A store could not do what was asked (the message, if any, was not queued)."""


class QueueFullError(QueueError):
    """No space left for the queue (a server answers ``452 4.3.1``)."""


class QueueLockedError(QueueError):
    """Another process owns this queue (its lock is taken)."""


class QueueUnreachableError(QueueError):
    """The store's database cannot be reached, for now (a server answers ``451 4.3.0``)."""
