"""
:class:`SQLiteStore`: the queue of one machine, in one directory.

::

    DIR/queue.sqlite    envelopes and recipients (SQLite, WAL, synchronous=FULL)
    DIR/bodies/<id>     the bodies, one file each
    DIR/tmp/<id>        bodies being written
    DIR/lock            held (flock) by the one process that owns DIR

A message is durable before its commit fires: its body is written to
``tmp/``, flushed and ``fsync``\\ ed, renamed into ``bodies/``,
``bodies/`` is ``fsync``\\ ed, and then the rows that make it visible are
committed; only then does :meth:`BodyWriter.commit
<txsmtp.queue.sqlitebody.BodyWriter.commit>` fire, and only then may a
server answer 250.  Concurrent commits are grouped: the writer thread
takes every commit waiting when it wakes and does them together, with
the bodies synced side by side, one directory ``fsync`` and one SQLite
transaction (see :mod:`txsmtp.queue.sqlitethreads`).  Everything that
waits for the disk runs off the reactor thread, but for the buffered
writes of bodies larger than 128 KiB.

The schema is versioned and migrates forward
(:mod:`txsmtp.queue.sqliteschema`); the SQL of each operation is in
:mod:`txsmtp.queue.sqlitequeries`.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp.queue import sqlitequeries as queries
from txsmtp.queue.errors import QueueError, QueueLockedError
from txsmtp.queue.interfaces import IQueueStore
from txsmtp.queue.model import Lease, QueuedMessage, RecipientOutcome
from txsmtp.queue.sqlitebody import (
    BodyFiles,
    BodyWriter,
    PendingMessage,
    asQueueError,
    syncDirectory,
    validId,
)
from txsmtp.queue.sqliteschema import migrate
from txsmtp.queue.sqlitethreads import Remover, Worker
from txsmtp.queue.wakeups import WakeListeners

__all__ = ["SQLiteStore"]

_log = Logger(namespace="txsmtp.queue.sqlite")

#: How many bodies of one group of commits are synced at once.
SYNC_THREADS = 8
#: How long a connection waits for a lock held by the other one (seconds).
_BUSY_TIMEOUT = 30.0


def _connect(path: str, sync: bool, readOnly: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        if readOnly:
            db.execute("PRAGMA query_only = ON")
        else:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueError(f"{path}: SQLite would not use WAL (journal mode {mode})")
        # FULL: each commit's WAL frames are fsynced before COMMIT returns.
        db.execute(f"PRAGMA synchronous = {'FULL' if sync else 'OFF'}")
    except BaseException:
        db.close()
        raise
    return db


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


@implementer(IQueueStore)
class SQLiteStore(WakeListeners):
    """
    A queue store (:class:`~txsmtp.queue.interfaces.IQueueStore`) in the
    directory ``path``, for one machine: SQLite for envelopes and recipient
    state, the bodies as files beside it.

    :param path: the queue directory (made when missing, mode 0700).
    :param clock: the :class:`~twisted.internet.interfaces.IReactorTime`
        whose ``seconds()`` is now (the reactor by default; a
        :class:`~twisted.internet.task.Clock` in tests).
    :param reactor: the reactor the threads answer through (the global one
        by default).
    :param sync: ``fsync`` bodies and directories and run SQLite with
        ``synchronous=FULL``; ``False`` (tests, benchmarks of everything
        else) loses acknowledged mail on a power cut.

    :ivar path: the queue directory, absolute.
    :ivar databasePath: ``DIR/queue.sqlite``.
    :ivar files: the :class:`~txsmtp.queue.sqlitebody.BodyFiles` of the bodies.
    :ivar transactions: how many SQLite transactions the writer thread has
        committed (one per group of commits, one per claim, record, ...).
    :ivar groups: how many groups of messages were committed.
    """

    def __init__(
        self, path: str, clock: Any = None, reactor: Any = None, sync: bool = True
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.path = os.path.abspath(path)
        self.sync = sync
        self.clock = clock if clock is not None else reactor
        self._reactor = reactor
        self.files = BodyFiles(self.path, sync)
        self.databasePath = os.path.join(self.path, "queue.sqlite")
        self.transactions = 0
        self.groups = 0
        # Whether the writer connection runs with synchronous=FULL (it opens so).
        self._durable = True
        WakeListeners.__init__(self)
        self._state = "new"
        self._lockFile: int | None = None
        self._db: sqlite3.Connection | None = None
        self._readDb: sqlite3.Connection | None = None
        self._writer: Worker | None = None
        self._reader: Worker | None = None
        self._remover: Remover | None = None
        self._syncPool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- opening and closing ------------------------------------------------------------------

    def open(self) -> Deferred[None]:
        """
        Take the lock on ``DIR/lock``, create or migrate the database, end
        every lease of a previous run, and remove what a crash left (bodies
        being written; bodies renamed but never committed), in the writer
        thread.

        :return: a Deferred; it fails with
            :class:`~txsmtp.queue.errors.QueueLockedError` when another
            process (or another store in this one) owns the directory, or
            :class:`~txsmtp.queue.errors.QueueError`.
        """
        if self._state != "new":
            return defer.fail(QueueError(f"{self!r} was already opened"))
        self._state = "opening"
        self._startThreads()
        assert self._writer is not None
        d = self._writer.call(self._openBlocking)

        def opened(result: None) -> None:
            if self._state == "opening":  # not closed meanwhile
                self._state = "open"

        def failed(f: Failure) -> Failure:
            self._state = "closed"
            self._stopThreads().addErrback(
                lambda e: _log.failure("closing {store} after a failed open", e, store=self)
            )
            return f

        return d.addCallbacks(opened, failed)

    def openNow(self) -> None:
        """
        :meth:`open` on the calling thread, waiting for the disk: for
        start-up, before the reactor runs, so that a locked queue is
        reported at once.

        :raise QueueLockedError: another process owns the directory.
        :raise QueueError: the directory or database cannot be used.
        """
        if self._state != "new":
            raise QueueError(f"{self!r} was already opened")
        self._state = "opening"
        try:
            self._openBlocking()
        except BaseException:
            self._state = "closed"
            raise
        self._startThreads()
        self._state = "open"

    def close(self) -> Deferred[None]:
        """
        Let the work already asked for finish, then close the database and
        release the lock.  Commits asked for after this fail.
        """
        if self._state in ("new", "closed"):
            self._state = "closed"
            return defer.succeed(None)
        self._state = "closed"
        return self._stopThreads()

    def _startThreads(self) -> None:
        self._writer = Worker(
            f"txsmtp-queue-writer {self.path}", self._reactor, self._commitGroup, self._wake
        )
        self._reader = Worker(f"txsmtp-queue-reader {self.path}", self._reactor)
        self._remover = Remover(f"txsmtp-queue-remover {self.path}", self.files.remove)
        if self.sync:
            self._syncPool = ThreadPoolExecutor(SYNC_THREADS, f"txsmtp-queue-sync {self.path}")
        self._writer.start()
        self._reader.start()
        self._remover.start()

    def _stopThreads(self) -> Deferred[None]:
        stops = []
        if self._reader is not None and not self._reader.stopping:
            stops.append(self._reader.stop(self._closeReader))
        if self._writer is not None and not self._writer.stopping:
            stops.append(self._writer.stop(self._closeWriter))
        d = defer.gatherResults(stops, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _openBlocking(self) -> None:
        try:
            self.files.prepare()
            self._lock()
            try:
                # Mode 0600 before SQLite makes it (its -wal and -shm files take the same mode).
                os.close(os.open(self.databasePath, os.O_RDWR | os.O_CREAT, 0o600))
                self._db = _connect(self.databasePath, self.sync)
                self._durable = True
                before, after = migrate(self._db, self.databasePath)
                if before != after:
                    _log.info(
                        "queue {path}: schema migrated from version {before} to {after}",
                        path=self.path,
                        before=before,
                        after=after,
                    )
                self._recover()
            except BaseException:
                self._closeWriter()
                raise
        except (OSError, sqlite3.Error) as e:
            raise asQueueError(e, f"opening the queue {self.path}") from e

    def _lock(self) -> None:
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise QueueLockedError(
                    f"the queue {self.path} is in use by another process"
                    + (f" (pid {holder})" if holder else "")
                ) from e
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._lockFile = fd

    def _recover(self) -> None:
        """What a previous run left: its leases, its bodies in tmp/, bodies with no row."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            leases = queries.clearLeases(db)
            db.execute("COMMIT")
        finally:
            _rollback(db)
        stale, orphans = self.files.clean(lambda names: queries.knownMessages(db, names))
        if self.sync:
            # The database, its WAL and the subdirectories are entries of DIR.
            syncDirectory(self.path)
        if leases or stale or orphans:
            _log.info(
                "queue {path}: ended {leases} leases of the previous run, removed {stale}"
                " unfinished bodies from tmp/ and {orphans} uncommitted bodies from bodies/",
                path=self.path,
                leases=leases,
                stale=stale,
                orphans=orphans,
            )

    def _closeWriter(self) -> None:
        # The bodies of messages gone go before the lock: a new owner finds none.
        remover, self._remover = self._remover, None
        if remover is not None:
            remover.stop()
        pool, self._syncPool = self._syncPool, None
        if pool is not None:
            pool.shutdown(wait=True)
        db, self._db = self._db, None
        if db is not None:
            db.close()
        fd, self._lockFile = self._lockFile, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _closeReader(self) -> None:
        db, self._readDb = self._readDb, None
        if db is not None:
            db.close()

    # -- running work -------------------------------------------------------------------------

    def _notOpen(self) -> QueueError | None:
        if self._state != "open":
            return QueueError(f"the queue {self.path} is not open")
        return None

    def _write(self, function: Callable[..., Any], *args: Any, durable: bool = True) -> Deferred[Any]:
        """
        ``function(db, *args)`` in one write transaction, on the writer
        thread; it answers ``(result, removed)``, ``removed`` the id of a
        message whose body to remove after the commit, or ``None``.

        ``durable=False`` (claims, renewals, outcomes) commits without
        ``fsync``: in WAL mode that survives a killed process, and the next
        durable commit writes it with its own; a power failure can lose the
        last ones, which means a recipient tried again, never a loss
        (Postfix, too, crosses recipients off without ``fsync``).
        """
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        assert self._writer is not None
        return self._writer.call(self._transaction, function, args, durable)

    def _transaction(self, function: Callable[..., Any], args: tuple[Any, ...], durable: bool = True) -> Any:
        db = self._db
        if db is None:
            raise QueueError(f"the queue {self.path} is closed")
        try:
            self._setSync(db, durable)
            db.execute("BEGIN IMMEDIATE")
            result, removed = function(db, *args)
            db.execute("COMMIT")
        except (OSError, sqlite3.Error) as e:
            _rollback(db)
            raise asQueueError(e) from e
        except BaseException:
            _rollback(db)
            raise
        self.transactions += 1
        if removed is not None and self._remover is not None:
            # After the commit, on a thread of its own (a row-less body goes at open).
            self._remover.put(removed)
        return result

    def _setSync(self, db: sqlite3.Connection, durable: bool) -> None:
        # Between transactions: FULL fsyncs the WAL at COMMIT, NORMAL leaves
        # its frames to the next FULL commit (or checkpoint).
        if self.sync and durable != self._durable:
            db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def _read(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """``function(db, *args)`` in one read transaction, on the reader thread."""
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        assert self._reader is not None
        return self._reader.call(self._readTransaction, function, args)

    def _readTransaction(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        try:
            if self._readDb is None:
                self._readDb = _connect(self.databasePath, self.sync, readOnly=True)
            db = self._readDb
            db.execute("BEGIN")
            try:
                return function(db, *args)
            finally:
                _rollback(db)
        except (OSError, sqlite3.Error) as e:
            raise asQueueError(e) from e

    # -- new messages -------------------------------------------------------------------------

    def newMessage(self) -> BodyWriter:
        """
        A :class:`~txsmtp.queue.sqlitebody.BodyWriter` for a new message.
        When the store is not open, its commit fails with
        :class:`~txsmtp.queue.errors.QueueError`.
        """
        return BodyWriter(self.files, self._submitCommit, self.clock.seconds, self._notOpen())

    def _submitCommit(self, message: PendingMessage) -> Deferred[str]:
        error = self._notOpen()
        if error is not None:
            message.discard()
            return defer.fail(error)
        assert self._writer is not None
        return self._writer.commit(message)

    def _commitGroup(self, messages: list[PendingMessage]) -> list[str | Failure]:
        """
        In the writer thread: make ``messages`` durable together.  Each
        body is synced and renamed (a failure fails that message only);
        then ``bodies/`` is synced once and the rows of all are inserted in
        one transaction.  When that fails, every body of the group is
        removed and every message fails.
        """
        results: dict[str, str | Failure] = {}
        ready: list[PendingMessage] = []

        def finish(m: PendingMessage) -> Exception | None:
            try:
                m.finishBody()
            except Exception as e:
                return e
            return None

        # The bodies are synced side by side: the file system commits
        # concurrent fsync calls together, one after the other it would
        # commit its journal once for each.
        pool = self._syncPool
        errors = list(pool.map(finish, messages)) if pool is not None and len(messages) > 1 else map(finish, messages)
        for m, error in zip(messages, errors, strict=True):
            if error is None:
                ready.append(m)
            else:
                results[m.id] = Failure(asQueueError(error, "storing the body"))
        db = self._db
        if ready:
            try:
                if db is None:
                    raise QueueError(f"the queue {self.path} is closed")
                if self.sync:
                    syncDirectory(self.files.bodies)
                self._setSync(db, True)
                db.execute("BEGIN IMMEDIATE")
                queries.insertMessages(db, ready)
                db.execute("COMMIT")
                self.transactions += 1
                self.groups += 1
                for m in ready:
                    results[m.id] = m.id
            except Exception as e:
                if db is not None:
                    _rollback(db)
                failure = Failure(asQueueError(e, "committing to the queue"))
                for m in ready:
                    m.discard()
                    results[m.id] = failure
        return [results[m.id] for m in messages]

    # -- claims and outcomes ------------------------------------------------------------------

    def claim(self, owner: str, limit: int, leaseSeconds: float) -> Deferred[list[Lease]]:
        """
        Lease up to ``limit`` due recipients, grouped in one
        :class:`~txsmtp.queue.model.Lease` per message (each with a token of
        its own), the message whose first recipient was due earliest first.
        A recipient is due when it is queued or deferred, its next attempt
        is not after now, and any lease on it has expired.  Runs on the
        writer thread (a claim writes the leases).
        """
        now = self.clock.seconds()
        return self._write(_noRemoval(queries.claim), owner, limit, now, now + leaseSeconds, durable=False)

    def renew(self, lease: Lease, leaseSeconds: float) -> Deferred[bool]:
        """
        Extend ``lease`` to now plus ``leaseSeconds`` (its :attr:`expires
        <txsmtp.queue.model.Lease.expires>` too): ``False`` when none of its
        recipients is under its token any more.
        """
        expires = self.clock.seconds() + leaseSeconds

        def renewed(held: bool) -> bool:
            if held:
                lease.expires = expires
            return held

        return self._write(_noRemoval(queries.renew), lease, expires, durable=False).addCallback(renewed)

    def record(self, lease: Lease, outcomes: Iterable[RecipientOutcome]) -> Deferred[bool]:
        """
        Record ``outcomes`` and end the lease on their recipients, if every
        one of them is still under the lease's token (a token holds until
        the recipient is claimed again after the lease expired, recorded,
        deleted, or the store reopened); else change nothing and answer
        ``False``.  ``DEFERRED`` adds an attempt and sets the next attempt
        (now when not given), the last error and ``delayReported`` (which
        stays set once set); a held recipient stays held.  Other results
        remove the recipient; the message and its body go with the last.
        """
        return self._write(queries.record, lease, list(outcomes), self.clock.seconds(), durable=False)

    # -- reading ------------------------------------------------------------------------------

    def openBody(self, messageId: str) -> Deferred[IO[bytes]]:
        """The body, open for reading; fails with :class:`KeyError` for an unknown id."""
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        if not validId(messageId):
            return defer.fail(KeyError(messageId))
        return self._read(self._openBody, messageId)

    def _openBody(self, db: sqlite3.Connection, messageId: str) -> IO[bytes]:
        # The row decides: a body whose message left the queue may still be
        # on disk for a moment (the remover thread deletes it).
        if db.execute("SELECT 1 FROM messages WHERE id = ?", (messageId,)).fetchone() is None:
            raise KeyError(messageId)
        try:
            return open(self.files.bodyPath(messageId), "rb")
        except FileNotFoundError:
            raise KeyError(messageId) from None
        except OSError as e:
            raise asQueueError(e, "opening a body") from e

    def nextDue(self) -> Deferred[float | None]:
        """
        When the earliest recipient that is not held can be claimed: its
        next attempt, or the end of the lease on it if that is later.
        ``None`` when the queue holds no such recipient.
        """
        return self._read(queries.nextDue)

    def list(self) -> Deferred[builtins.list[QueuedMessage]]:
        """Every message with its recipients, oldest (by arrival) first."""
        return self._read(queries.messages, None)

    def stats(self) -> Deferred[dict[str, Any]]:
        """Counts by state and the oldest arrival, without reading the messages."""
        return self._read(queries.stats)

    def show(self, messageId: str) -> Deferred[QueuedMessage | None]:
        """One message with its recipients, or ``None``."""
        d = self._read(queries.messages, messageId)
        return d.addCallback(lambda found: found[0] if found else None)

    # -- the operator's commands --------------------------------------------------------------

    def hold(self, messageId: str) -> Deferred[bool]:
        """Hold every recipient of the message: never claimed until released."""
        return self._write(_noRemoval(queries.hold), messageId)

    def release(self, messageId: str) -> Deferred[bool]:
        """
        Release the held recipients of a message: due now, queued again (or
        deferred when they were tried before).  Wakes the listeners.
        """
        d = self._write(_noRemoval(queries.release), messageId, self.clock.seconds())
        return d.addCallback(self._wake)

    def delete(self, messageId: str) -> Deferred[bool]:
        """Remove a message, body and all, without any report (a lease on it is lost)."""
        return self._write(queries.delete, messageId)

    def flush(self, messageId: str | None = None) -> Deferred[int]:
        """
        Make every recipient that is not held and not yet due (of one
        message, or of all) due now; wakes the listeners.  Answers how many
        were made due.
        """
        d = self._write(_noRemoval(queries.flush), messageId, self.clock.seconds())
        return d.addCallback(self._wake)


def _noRemoval(function: Callable[..., Any]) -> Callable[..., tuple[Any, None]]:
    """``function`` answering as the ones that may remove a message do: ``(result, None)``."""

    def wrapper(db: sqlite3.Connection, *args: Any) -> tuple[Any, None]:
        return function(db, *args), None

    return wrapper
