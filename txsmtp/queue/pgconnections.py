"""
The connections of :class:`~txsmtp.queue.postgres.PostgresStore`, each
owned by a thread of its own: psycopg 3's blocking API is driven from
threads, as Twisted applications (Synapse among them) drive their
databases, so that the store works on whichever reactor the application
runs (psycopg's asyncio API would impose the asyncio reactor).

- :class:`ConnectionPool`: ``size`` threads sharing one queue of work, each
  with its own connection, made when first needed and made again after a
  failure.  :meth:`ConnectionPool.run` runs a function in one transaction
  and delivers its result on the reactor thread.
- :class:`Listener`: one thread with one connection that holds the node's
  advisory lock (two live processes with one node name would end each
  other's leases) and ``LISTEN``\\ s on the queue's channel; it calls back
  on every notification, on every (re)connection (notifications sent
  while it was away are lost) and every ``pollInterval`` seconds (the
  polling fallback).
- :class:`DestinationSlots`: one thread (a
  :class:`~txsmtp.queue.sqlitethreads.Worker`) with one connection holding the
  destination slots as session-level advisory locks, so that
  ``--destination-concurrency`` holds across every node: a node that dies
  loses its connection, and its slots with it.

Database errors become :class:`~txsmtp.queue.errors.QueueError` (a full
disk :class:`~txsmtp.queue.errors.QueueFullError`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.queue.errors import QueueError, QueueFullError, QueueLockedError, QueueUnreachableError
from txsmtp.queue.sqlitethreads import Worker

__all__ = ["ConnectionPool", "Listener", "DestinationSlots", "connect", "asQueueError", "Slot", "takeNode"]

_log = Logger(namespace="txsmtp.queue.postgres")

#: libpq settings used unless the URL gives its own: a dead peer is noticed
#: within about half a minute, not after the kernel's two hours.
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "txsmtp",
}


#: How often (seconds) the listener's thread looks whether it was stopped.
STOP_CHECK = 0.25


#: The server's side of the same (session settings): PostgreSQL ends the
#: session of a node cut off from it within about half a minute, and frees
#: the node's name and destination slots, rather than after the kernel's
#: two hours.  Any the URL's ``options`` name are left to it.
SERVER_SESSION_DEFAULTS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def connect(url: str) -> Any:
    """A new psycopg connection to ``url`` in autocommit mode (blocking)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(url)
    extra: dict[str, Any] = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
    options = str(given.get("options", ""))
    settings = [k for k in SERVER_SESSION_DEFAULTS if k not in options]
    if str(given.get("host", "")).startswith("/"):
        extra.pop("tcp_user_timeout", None)
        settings = []  # a UNIX socket has no TCP timers
    connection = psycopg.connect(url, autocommit=True, **extra)
    if settings:
        try:
            connection.execute("; ".join(f"SET {k} = {SERVER_SESSION_DEFAULTS[k]}" for k in settings))
        except BaseException:
            connection.close()
            raise
    return connection


def asQueueError(error: BaseException, doing: str = "") -> QueueError:
    """The :class:`~txsmtp.queue.errors.QueueError` for a database error (returned, not raised)."""
    if isinstance(error, QueueError):
        return error
    import psycopg

    prefix = f"{doing}: " if doing else ""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, psycopg.errors.DiskFull):
        return QueueFullError(f"{prefix}the queue database is out of space: {detail}")
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return QueueUnreachableError(f"{prefix}the queue database is unreachable: {detail}")
    return QueueError(f"{prefix}the queue database failed: {detail}")


def _broken(error: BaseException, connection: Any) -> bool:
    """Whether ``connection`` must be dropped after ``error``."""
    import psycopg

    return bool(
        isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
        or connection is None
        or connection.closed
        or connection.broken
    )


class ConnectionPool:
    """
    ``size`` threads, each with its own connection to ``url``, taking work
    from one queue.

    :param url: a libpq URL or connection string.
    :param size: how many threads (and connections, at most).
    :param reactor: delivers the results (``callFromThread``).
    :param name: names the threads.
    """

    def __init__(self, url: str, size: int, reactor: Any, name: str = "txsmtp-pg") -> None:
        if size < 1:
            raise ValueError("a connection pool needs at least one connection")
        self.url = url
        self.size = size
        self._reactor = reactor
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any], dict[str, Any]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._running = 0

    def start(self) -> None:
        """Start the threads."""
        for i in range(self.size):
            t = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            self._threads.append(t)
            self._running += 1
            t.start()

    def run(
        self,
        function: Callable[..., Any],
        *args: Any,
        durable: bool = True,
        isolation: str | None = None,
    ) -> Deferred[Any]:
        """
        ``function(connection, *args)`` in one transaction, on a pool
        thread: a Deferred for its result.

        :param durable: ``False`` commits with ``synchronous_commit = off``:
            the commit does not wait for the WAL to reach the disk (it
            survives anything but a crash of PostgreSQL itself, and a
            later durable commit writes it with its own).
        :param isolation: e.g. ``"REPEATABLE READ"`` (default: the server's).
        """
        d: Deferred[Any] = Deferred()
        if self._stopping:
            d.errback(QueueError("the queue is closed"))
            return d
        self._jobs.put((function, args, d, {"durable": durable, "isolation": isolation}))
        return d

    def stop(self) -> Deferred[None]:
        """Let the work queued so far finish, close every connection, end the threads."""
        if self._stopped is None:
            self._stopping = True
            self._stopped = Deferred()
            for _ in self._threads:
                self._jobs.put(None)
            if not self._running:
                self._stopped.callback(None)
        return self._stopped

    def _threadEnded(self) -> None:
        self._running -= 1
        if self._running == 0 and self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    # -- in the threads -----------------------------------------------------------------------

    def _work(self) -> None:
        connection: Any = None
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                function, args, d, options = job
                try:
                    try:
                        fresh = connection is None
                        if connection is None:
                            connection = connect(self.url)
                        result = _transaction(connection, function, args, **options)
                    except _StaleConnection as stale:
                        # The server went away since this connection's last
                        # use (a restart): nothing of this job was done, so
                        # it is run once more on a new connection.
                        _close(connection)
                        connection = None
                        if fresh:
                            raise stale.error from None
                        connection = connect(self.url)
                        result = _transaction(connection, function, args, **options)
                except _StaleConnection as stale:
                    _close(connection)
                    connection = None
                    self._reactor.callFromThread(d.errback, Failure(asQueueError(stale.error)))
                except BaseException as e:
                    if _broken(e, connection):
                        _close(connection)
                        connection = None
                    failure = Failure(asQueueError(e)) if _isDatabaseError(e) else Failure()
                    self._reactor.callFromThread(d.errback, failure)
                else:
                    self._reactor.callFromThread(d.callback, result)
        finally:
            _close(connection)
            self._reactor.callFromThread(self._threadEnded)


def _isDatabaseError(e: BaseException) -> bool:
    import psycopg

    return isinstance(e, psycopg.Error)


class _StaleConnection(Exception):
    """The connection failed at ``BEGIN``: nothing of the transaction was done."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


#: The isolation levels :meth:`ConnectionPool.run` takes.
_ISOLATION = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")


def _transaction(
    connection: Any,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    durable: bool = True,
    isolation: str | None = None,
) -> Any:
    """
    ``function(connection, *args)`` between ``BEGIN`` and ``COMMIT``.  The
    transaction's settings go with ``BEGIN`` in one round trip (a simple
    query may hold several statements); when that fails, the connection
    was dead before anything was done (:class:`_StaleConnection`).
    """
    import psycopg

    begin = "BEGIN"
    if isolation is not None:
        if isolation not in _ISOLATION:
            raise ValueError(f"unknown isolation level {isolation!r}")
        begin += f" ISOLATION LEVEL {isolation}"
    if not durable:
        begin += "; SET LOCAL synchronous_commit = off"
    try:
        connection.execute(begin)
    except (psycopg.OperationalError, psycopg.InterfaceError) as e:
        raise _StaleConnection(e) from e
    try:
        result = function(connection, *args)
    except BaseException:
        if not connection.closed and not connection.broken:
            try:
                connection.execute("ROLLBACK")
            except psycopg.Error:
                pass
        raise
    connection.execute("COMMIT")
    return result


def _close(connection: Any) -> None:
    if connection is not None:
        try:
            connection.close()
        except Exception:
            pass


class Listener:
    """
    The thread that holds the node's lock and listens on the queue's
    channel.

    :param url: the database.
    :param channel: the channel to ``LISTEN`` on.
    :param lockKey: the advisory lock that says this node is alive (text,
        hashed by the server), or ``None``.
    :param reactor: where the callbacks run (``callFromThread``).
    :param notified: called with the payload of each notification.
    :param connected: called after each reconnection, once listening again.
    :param poll: called every ``pollInterval`` seconds.
    :param pollInterval: seconds between polls (and the longest the thread
        takes to notice :meth:`stop`, at most :data:`STOP_CHECK` of it).
    """

    def __init__(
        self,
        url: str,
        channel: str,
        lockKey: str | None,
        reactor: Any,
        notified: Callable[[str], object],
        connected: Callable[[], object],
        poll: Callable[[], object],
        pollInterval: float,
    ) -> None:
        self.url = url
        self.channel = channel
        self.lockKey = lockKey
        self._reactor = reactor
        self._notified = notified
        self._connected = connected
        self._poll = poll
        self.pollInterval = pollInterval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended: Deferred[None] = Deferred()

    def start(self, connection: Any) -> None:
        """
        Start the thread with ``connection``, which already holds the
        node's lock and listens (:func:`takeNode`); when it fails, the
        thread connects again, and again takes the lock and listens.
        """
        self._thread = threading.Thread(
            target=self._run, args=(connection,), name=f"txsmtp-pg-listen {self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self) -> Deferred[None]:
        """End the thread (its connection closes, releasing the node's lock)."""
        self._stop.set()
        if self._thread is None and not self._ended.called:
            self._ended.callback(None)
        return self._ended

    def _run(self, connection: Any) -> None:
        backoff = 1.0
        try:
            while not self._stop.is_set():
                try:
                    if connection is None:
                        connection = connect(self.url)
                        takeNode(connection, self.channel, self.lockKey)
                        # What was notified while this node was away is lost.
                        _log.info("queue: listening for the database's notifications again")
                        self._reactor.callFromThread(self._connected)
                    backoff = 1.0
                    self._listen(connection)
                except BaseException as e:
                    if not self._stop.is_set():
                        _log.warn(
                            "queue: lost the database's notifications ({error}); polling until it "
                            "reconnects",
                            error=e if isinstance(e, QueueError) else asQueueError(e),
                        )
                        self._reactor.callFromThread(self._poll)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 30.0)
                finally:
                    _close(connection)
                    connection = None
        finally:
            self._reactor.callFromThread(self._fireEnded)

    def _fireEnded(self) -> None:
        if not self._ended.called:
            self._ended.callback(None)

    def _listen(self, connection: Any) -> None:
        import time

        nextPoll = time.monotonic() + self.pollInterval
        while not self._stop.is_set():
            timeout = max(0.0, min(STOP_CHECK, nextPoll - time.monotonic()))
            for n in connection.notifies(timeout=timeout):
                self._reactor.callFromThread(self._notified, n.payload)
            if time.monotonic() >= nextPoll:
                nextPoll = time.monotonic() + self.pollInterval
                self._reactor.callFromThread(self._poll)


def takeNode(connection: Any, channel: str, lockKey: str | None) -> None:
    """
    On ``connection``: take the node's advisory lock (a ``bigint`` key
    hashed from the schema and ``lockKey``) and ``LISTEN`` on ``channel``
    (blocking).

    :raise QueueLockedError: another live session holds the lock.
    """
    from psycopg import sql

    if lockKey is not None:
        taken = connection.execute(
            "SELECT pg_try_advisory_lock(hashtext(current_schema() || ':' || %s)::bigint)",
            (lockKey,),
        ).fetchone()[0]
        if not taken:
            raise QueueLockedError(
                f"another live process uses the queue under the node name "
                f"{lockKey.partition(':')[2]!r}: give each node its own (--queue-node)"
            )
    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


class Slot:
    """One destination slot taken by :class:`DestinationSlots`."""

    __slots__ = ("key", "number", "generation")

    def __init__(self, key: str, number: int, generation: int) -> None:
        self.key = key
        self.number = number
        self.generation = generation


class DestinationSlots:
    """
    Up to ``limit`` slots per destination across every node: each slot is a
    session-level advisory lock held by the connection of one thread (a
    :class:`~txsmtp.queue.sqlitethreads.Worker`).

    :param url: the database.
    :param reactor: delivers results.
    """

    def __init__(self, url: str, reactor: Any) -> None:
        self.url = url
        self._worker = Worker("txsmtp-pg-slots", reactor)
        self._connection: Any = None
        #: a new generation with each connection: slots of an older one are gone
        self._generation = 0
        self._held: dict[str, set[int]] = {}

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> Deferred[None]:
        """End the thread; its connection closes, which releases every slot."""
        if self._worker.stopping:
            return defer.succeed(None)
        return self._worker.stop(self._close)

    def acquire(self, key: str, limit: int) -> Deferred[Slot | None]:
        """A free slot of ``key`` (one of ``limit``), or ``None`` when all are taken (or on an error)."""
        if self._worker.stopping:
            return defer.succeed(None)
        d: Deferred[Slot | None] = self._worker.call(self._guarded, self._acquire, key, limit)
        return d

    def release(self, slot: Slot) -> None:
        """Give ``slot`` back (best effort: a lost connection released it already)."""
        if not self._worker.stopping:
            self._worker.call(self._guarded, self._release, slot)

    # -- in the thread ------------------------------------------------------------------------

    def _guarded(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except Exception as e:
            # Its slots went with the connection; the next call connects again.
            _log.warn("queue: destination slots: {error}", error=asQueueError(e))
            self._close()
            return None

    def _close(self) -> None:
        _close(self._connection)
        self._connection = None
        self._held.clear()

    def _acquire(self, key: str, limit: int) -> Slot | None:
        if self._connection is None:
            self._connection = connect(self.url)
            self._generation += 1
        held = self._held.setdefault(key, set())
        number = self._connection.execute(
            "SELECT txsmtp_take_slot(%s, %s, %s)", (key, limit, sorted(held))
        ).fetchone()[0]
        if number is None:
            return None
        held.add(number)
        return Slot(key, int(number), self._generation)

    def _release(self, slot: Slot) -> None:
        if self._connection is None or slot.generation != self._generation:
            return
        self._connection.execute(
            "SELECT pg_advisory_unlock(hashtext(current_schema() || ':' || %s), %s)",
            (slot.key, slot.number),
        )
        self._held.get(slot.key, set()).discard(slot.number)
