"""
:class:`CommitRunner`: the thread pool a delivery owns for the work that
waits for the disk (flush, ``fsync``, rename, ``fsync``), so that the
reactor thread, and every other session, goes on meanwhile.  Used by the
Maildir deliveries (:mod:`txsmtp.maildir`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["CommitRunner"]


_T = TypeVar("_T")


def _daemonThread(*args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(*args, **kwargs)
    # A program that never stops its reactor (a script, a test run) must
    # still be able to exit.  Nothing acknowledged is lost when such a
    # thread dies mid-commit: the 250 comes only after the commit.
    thread.daemon = True
    return thread


class _CommitPool(ThreadPool):
    threadFactory = staticmethod(_daemonThread)  # type: ignore[assignment]


class CommitRunner:
    """
    Runs the blocking end of Maildir deliveries (flush, ``fsync``, rename)
    in a thread pool of its own, off the reactor thread.

    :param threads: the most threads at once (``fsync`` calls of several
        messages then overlap, and the file system commits them together);
        ``0`` runs the work at once on the calling thread (the reactor's),
        for tests that drive a server by hand.
    :param reactor: the reactor the results are delivered through.

    :ivar pool: the :class:`~twisted.python.threadpool.ThreadPool` while it
        runs, else ``None``.
    """

    def __init__(self, threads: int = 4, reactor: Any = None) -> None:
        if threads < 0:
            raise ValueError("threads must be 0 or more")
        self.threads = threads
        self._reactor = reactor
        self.pool: ThreadPool | None = None
        self._trigger: Any = None

    def run(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """
        ``work(*args)`` in the pool: a Deferred that fires with its result
        (or its exception) in the reactor thread.  With ``threads=0`` the
        work runs at once, and the Deferred has fired on return.
        """
        if not self.threads:
            return defer.maybeDeferred(work, *args)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        if self.pool is None:
            self.pool = _CommitPool(0, self.threads, name="txsmtp-maildir")
            self.pool.start()
            # Like the reactor's own pool: never left running at exit.
            self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return deferToThreadPool(reactor, self.pool, work, *args)

    def stop(self) -> None:
        """
        Finish the work under way and end the threads (call it once no more
        messages come: after the server's shutdown).  A later :meth:`run`
        starts a new pool.
        """
        pool, self.pool = self.pool, None
        if pool is None:
            return
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            try:
                reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass  # already run: this is the shutdown trigger
        pool.stop()


