"""
The threads of :class:`~txsmtp.queue.sqlite.SQLiteStore`: two
:class:`Worker` threads, each with a queue of work and its own SQLite
connection, the writer (every change, commits grouped) and the reader
(``list``, ``show``, ``nextDue``, ``openBody``), whose results come back to
the reactor thread through ``callFromThread``; and a :class:`Remover` that
deletes the bodies of messages that left the queue.

The writer does group commit: each time it wakes it takes *all* the work
queued at that moment; the messages to commit among it are committed
together (each body synced and renamed, then one ``fsync`` of
``bodies/`` and one SQLite transaction for all), then the other work runs
in order.  Work queued together was all asked for before any of it was
answered, so no caller can tell the order apart: committing first is one
of the orders that could have happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txsmtp.queue.errors import QueueError
from txsmtp.queue.sqlitebody import PendingMessage

__all__ = ["Worker", "Call", "Commit", "Remover"]


class Call:
    """Work for a :class:`Worker`: ``function(*args)``, its result to ``deferred``."""

    __slots__ = ("function", "args", "deferred")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.function = function
        self.args = args
        self.deferred: Deferred[Any] = Deferred()


class Commit:
    """Work for the writer: one message to commit, its id to ``deferred``."""

    __slots__ = ("message", "deferred")

    def __init__(self, message: PendingMessage) -> None:
        self.message = message
        self.deferred: Deferred[str] = Deferred()


class _Stop:
    """The last work of a :class:`Worker`: ``function()`` then the thread ends."""

    __slots__ = ("function", "deferred")

    def __init__(self, function: Callable[[], None]) -> None:
        self.function = function
        self.deferred: Deferred[None] = Deferred()


#: What a batch of commits answers: for each, its Deferred and its id or failure.
CommitResults = list[tuple["Deferred[str]", "str | Failure"]]


class Worker:
    """
    One thread running the work put to it in order, with results delivered
    on the reactor thread.

    :param name: the thread's name.
    :param reactor: delivers the results (``callFromThread``).
    :param commitBatch: for the writer: commits a list of
        :class:`PendingMessage` in one group and answers, for each, its id
        or a :class:`~twisted.python.failure.Failure`.  ``None`` for a
        worker that takes no commits.
    :param committed: called on the reactor thread after the Deferreds of a
        batch of commits have fired (the store wakes its listeners).
    """

    def __init__(
        self,
        name: str,
        reactor: Any,
        commitBatch: Callable[[list[PendingMessage]], list[str | Failure]] | None = None,
        committed: Callable[[], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._commitBatch = commitBatch
        self._committed = committed
        self._jobs: queue.SimpleQueue[Call | Commit | _Stop] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = False
        self._started = False

    def start(self) -> None:
        """Start the thread (work queued before runs once it starts)."""
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called: new work fails at once."""
        return self._stopping

    def call(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``function(*args)`` in the thread: a Deferred for its result."""
        job = Call(function, args)
        self._put(job)
        return job.deferred

    def commit(self, message: PendingMessage) -> Deferred[str]:
        """Commit ``message`` in the next group: a Deferred for its id."""
        job = Commit(message)
        self._put(job)
        return job.deferred

    def stop(self, function: Callable[[], None]) -> Deferred[None]:
        """
        Run the work queued so far, then ``function()``, then end the
        thread.  :return: a Deferred that fires once ``function`` ran.
        """
        job = _Stop(function)
        self._put(job)
        self._stopping = True
        return job.deferred

    def _put(self, job: Call | Commit | _Stop) -> None:
        if self._stopping:
            if isinstance(job, Commit):
                job.message.discard()
            job.deferred.errback(QueueError("the queue is closed"))
            return
        self._jobs.put(job)

    # -- in the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            while True:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if self._runBatch(jobs):
                return

    def _runBatch(self, jobs: list[Call | Commit | _Stop]) -> bool:
        commits = [j for j in jobs if isinstance(j, Commit)]
        if commits:
            self._runCommits(commits)
        stopped = False
        for job in jobs:
            if isinstance(job, Commit):
                continue
            if stopped:
                self._deliver(job.deferred, Failure(QueueError("the queue is closed")))
                continue
            try:
                result: Any = job.function(*job.args) if isinstance(job, Call) else job.function()
            except BaseException:
                result = Failure()
            self._deliver(job.deferred, result)
            stopped = isinstance(job, _Stop)
        return stopped

    def _runCommits(self, commits: list[Commit]) -> None:
        results: list[str | Failure]
        assert self._commitBatch is not None, "this worker takes no commits"
        try:
            results = self._commitBatch([c.message for c in commits])
        except BaseException:
            failure = Failure()
            results = [failure] * len(commits)
        batch: CommitResults = [(c.deferred, r) for c, r in zip(commits, results, strict=True)]
        self._reactor.callFromThread(self._fireCommits, batch)

    def _deliver(self, d: Deferred[Any], result: Any) -> None:
        if isinstance(result, Failure):
            self._reactor.callFromThread(d.errback, result)
        else:
            self._reactor.callFromThread(d.callback, result)

    # -- on the reactor thread --------------------------------------------------------------

    def _fireCommits(self, batch: CommitResults) -> None:
        for d, result in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        if self._committed is not None and any(not isinstance(r, Failure) for _, r in batch):
            self._committed()


class Remover:
    """
    A thread that removes the bodies of messages whose rows are gone, so
    that the writer does not wait for it: removing a file can wait for the
    file system's journal behind other threads' ``fsync`` calls.  Best
    effort, without results: a body left behind (a crash, an error) has no
    row and is removed the next time the store is opened.

    :param name: the thread's name.
    :param remove: removes the body of one message id (blocking).
    """

    def __init__(self, name: str, remove: Callable[[str], None]) -> None:
        self._remove = remove
        self._ids: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, messageId: str) -> None:
        """Remove the body of ``messageId`` soon (from any thread)."""
        self._ids.put(messageId)

    def stop(self, timeout: float = 30.0) -> None:
        """Remove what was put so far, then end the thread (blocking, at most ``timeout`` s)."""
        self._ids.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            messageId = self._ids.get()
            if messageId is None:
                return
            try:
                self._remove(messageId)
            except OSError:
                pass  # removed at the next open
