"""
:class:`WakeListeners`: the wake-up listeners every store keeps
(:meth:`~txsmtp.queue.interfaces.IQueueStore.addWakeListener`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["WakeListeners"]

_log = Logger(namespace="txsmtp.queue")


class WakeListeners:
    """
    A base of stores: keeps the listeners and calls them.  A store calls
    ``WakeListeners.__init__(self)`` and :meth:`_wake` when new work may be
    due (on the reactor thread).
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[], object]] = []

    def addWakeListener(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` whenever new work may be due."""
        self._listeners.append(listener)

    def removeWakeListener(self, listener: Callable[[], object]) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _wake(self, result: Any = None) -> Any:
        """Call every listener (one that fails is logged); pass ``result`` on, for callbacks."""
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                _log.failure("queue wake listener {listener} failed", listener=listener)
        return result
