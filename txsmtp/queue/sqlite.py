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
one directory ``fsync`` and one SQLite transaction (see
:mod:`txsmtp.queue.sqlitethreads`).  Everything that waits for the disk
runs off the reactor thread, except the buffered writes of the bodies.

The schema is versioned and migrates forward
(:mod:`txsmtp.queue.sqliteschema`).
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp.queue.errors import QueueError, QueueLockedError
from txsmtp.queue.interfaces import IQueueStore
from txsmtp.queue.model import (
    Lease,
    QueuedMessage,
    RecipientOutcome,
    RecipientState,
    Result,
)
from txsmtp.queue.sqlitebody import (
    BodyFiles,
    BodyWriter,
    PendingMessage,
    asQueueError,
    syncDirectory,
    validId,
)
from txsmtp.queue.sqliteschema import (
    MESSAGE_COLUMNS,
    RECIPIENT_COLUMNS,
    messageFromRow,
    migrate,
    recipientFromRow,
    recipientValues,
)
from txsmtp.queue.sqlitethreads import Worker

__all__ = ["SQLiteStore"]

_log = Logger(namespace="txsmtp.queue.sqlite")

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
class SQLiteStore:
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
        self._listeners: list[Callable[[], object]] = []
        self._state = "new"
        self._lockFile: int | None = None
        self._db: sqlite3.Connection | None = None
        self._readDb: sqlite3.Connection | None = None
        self._writer: Worker | None = None
        self._reader: Worker | None = None

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
            self._state = "open"

        def failed(f: Failure) -> Failure:
            self._state = "closed"
            self._stopThreads()
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
        self._writer.start()
        self._reader.start()

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
            leases = db.execute(
                "UPDATE recipients SET lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
                " WHERE lease_token IS NOT NULL"
            ).rowcount
            db.execute("COMMIT")
        finally:
            _rollback(db)

        def known(names: Iterable[str]) -> set[str]:
            found: set[str] = set()
            for name in names:
                if db.execute("SELECT 1 FROM messages WHERE id = ?", (name,)).fetchone():
                    found.add(name)
            return found

        stale, orphans = self.files.clean(known)
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

    def _write(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """``function(db, *args)`` in one write transaction, on the writer thread."""
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        assert self._writer is not None
        return self._writer.call(self._transaction, function, args)

    def _transaction(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        db = self._db
        if db is None:
            raise QueueError(f"the queue {self.path} is closed")
        try:
            db.execute("BEGIN IMMEDIATE")
            result, after = function(db, *args)
            db.execute("COMMIT")
        except (OSError, sqlite3.Error) as e:
            _rollback(db)
            raise asQueueError(e) from e
        except BaseException:
            _rollback(db)
            raise
        self.transactions += 1
        if after is not None:
            try:
                after()
            except OSError as e:
                # Committed already: what is left is removed at the next open.
                _log.error("queue {path}: {error}", path=self.path, error=e)
        return result

    def _read(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """``function(db, *args)`` in one read transaction, on the reader thread."""
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        assert self._reader is not None
        return self._reader.call(self._readTransaction, function, args)

    def _readTransaction(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._readDb is None:
            self._readDb = _connect(self.databasePath, self.sync, readOnly=True)
        db = self._readDb
        try:
            db.execute("BEGIN")
            try:
                return function(db, *args)
            finally:
                _rollback(db)
        except (OSError, sqlite3.Error) as e:
            raise asQueueError(e) from e

    def _wake(self, result: Any = None) -> Any:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                _log.failure("queue wake listener {listener} failed", listener=listener)
        return result

    def addWakeListener(self, listener: Callable[[], object]) -> None:
        self._listeners.append(listener)

    def removeWakeListener(self, listener: Callable[[], object]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

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
        for m in messages:
            try:
                m.finishBody()
                ready.append(m)
            except Exception as e:
                results[m.id] = Failure(asQueueError(e, "storing the body"))
        db = self._db
        if ready:
            try:
                if db is None:
                    raise QueueError(f"the queue {self.path} is closed")
                if self.sync:
                    syncDirectory(self.files.bodies)
                db.execute("BEGIN IMMEDIATE")
                for m in ready:
                    db.execute(
                        f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                        (m.id, m.sender, m.arrival, m.size, m.envelope),
                    )
                    db.executemany(
                        f"INSERT INTO recipients ({RECIPIENT_COLUMNS})"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [recipientValues(m.id, i, r, m.arrival) for i, r in enumerate(m.recipients)],
                    )
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
        is not after now, and any lease on it has expired.
        """
        now = self.clock.seconds()
        return self._write(self._claim, owner, limit, now, now + leaseSeconds)

    @staticmethod
    def _claim(
        db: sqlite3.Connection, owner: str, limit: int, now: float, expires: float
    ) -> tuple[list[Lease], None]:
        rows = db.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients"
            " WHERE state != 'held' AND next_attempt <= ?"
            " AND (lease_expires IS NULL OR lease_expires <= ?)"
            " ORDER BY next_attempt, message, idx LIMIT ?",
            (now, now, max(0, limit)),
        ).fetchall()
        leases: dict[str, Lease] = {}
        for row in rows:
            messageId = row[0]
            lease = leases.get(messageId)
            if lease is None:
                found = db.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (messageId,)
                ).fetchone()
                if found is None:
                    continue  # cannot be: recipients go with their message
                lease = Lease(messageFromRow(found), owner, secrets.token_hex(16), expires)
                leases[messageId] = lease
            lease.message.recipients.append(recipientFromRow(row))
        for lease in leases.values():
            db.executemany(
                "UPDATE recipients SET lease_owner = ?, lease_token = ?, lease_expires = ?"
                " WHERE message = ? AND idx = ?",
                [
                    (owner, lease.token, expires, lease.message.id, r.index)
                    for r in lease.message.recipients
                ],
            )
        return list(leases.values()), None

    def renew(self, lease: Lease, leaseSeconds: float) -> Deferred[bool]:
        """
        Extend ``lease`` to now plus ``leaseSeconds`` (its :attr:`expires
        <txsmtp.queue.model.Lease.expires>` too): ``False`` when none of its
        recipients is under its token any more.
        """
        expires = self.clock.seconds() + leaseSeconds

        def renew(db: sqlite3.Connection) -> tuple[bool, None]:
            changed = db.execute(
                "UPDATE recipients SET lease_expires = ? WHERE message = ? AND lease_token = ?",
                (expires, lease.message.id, lease.token),
            ).rowcount
            return changed > 0, None

        def renewed(held: bool) -> bool:
            if held:
                lease.expires = expires
            return held

        return self._write(renew).addCallback(renewed)

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
        now = self.clock.seconds()
        return self._write(self._record, lease, list(outcomes), now)

    def _record(
        self, db: sqlite3.Connection, lease: Lease, outcomes: list[RecipientOutcome], now: float
    ) -> tuple[bool, Callable[[], None] | None]:
        messageId = lease.message.id
        if not outcomes:
            held = db.execute(
                "SELECT 1 FROM recipients WHERE message = ? AND lease_token = ? LIMIT 1",
                (messageId, lease.token),
            ).fetchone()
            return held is not None, None
        for o in outcomes:
            if not db.execute(
                "SELECT 1 FROM recipients WHERE message = ? AND idx = ? AND lease_token = ?",
                (messageId, o.index, lease.token),
            ).fetchone():
                return False, None
        for o in outcomes:
            if Result(o.result) is Result.DEFERRED:
                db.execute(
                    "UPDATE recipients SET"
                    " state = CASE WHEN state = 'held' THEN 'held' ELSE 'deferred' END,"
                    " attempts = attempts + 1, next_attempt = ?, last_error = ?,"
                    " delay_reported = max(delay_reported, ?),"
                    " lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
                    " WHERE message = ? AND idx = ?",
                    (
                        now if o.nextAttempt is None else o.nextAttempt,
                        o.lastError,
                        int(bool(o.delayReported)),
                        messageId,
                        o.index,
                    ),
                )
            else:
                db.execute(
                    "DELETE FROM recipients WHERE message = ? AND idx = ?", (messageId, o.index)
                )
        return True, self._dropIfDone(db, messageId)

    def _dropIfDone(self, db: sqlite3.Connection, messageId: str) -> Callable[[], None] | None:
        """Delete the message row when it has no recipient left; the body goes after COMMIT."""
        if db.execute("SELECT 1 FROM recipients WHERE message = ? LIMIT 1", (messageId,)).fetchone():
            return None
        if not db.execute("DELETE FROM messages WHERE id = ?", (messageId,)).rowcount:
            return None
        # After the commit: a crash before it leaves a body with no row, removed at open.
        return lambda: self.files.remove(messageId)

    # -- reading ------------------------------------------------------------------------------

    def openBody(self, messageId: str) -> Deferred[IO[bytes]]:
        """The body, open for reading; fails with :class:`KeyError` for an unknown id."""
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        assert self._reader is not None
        return self._reader.call(self._openBody, messageId)

    def _openBody(self, messageId: str) -> IO[bytes]:
        if not validId(messageId):
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
        return self._read(self._nextDue)

    @staticmethod
    def _nextDue(db: sqlite3.Connection) -> float | None:
        free = db.execute(
            "SELECT next_attempt FROM recipients WHERE state != 'held' AND lease_expires IS NULL"
            " ORDER BY next_attempt LIMIT 1"
        ).fetchone()
        leased = db.execute(
            "SELECT min(max(next_attempt, lease_expires)) FROM recipients"
            " WHERE state != 'held' AND lease_expires IS NOT NULL"
        ).fetchone()
        times = [float(r[0]) for r in (free, leased) if r is not None and r[0] is not None]
        return min(times) if times else None

    def list(self) -> Deferred[builtins.list[QueuedMessage]]:
        """Every message with its recipients, oldest (by arrival) first."""
        return self._read(self._messages, None)

    def show(self, messageId: str) -> Deferred[QueuedMessage | None]:
        """One message with its recipients, or ``None``."""
        d = self._read(self._messages, messageId)
        return d.addCallback(lambda found: found[0] if found else None)

    @staticmethod
    def _messages(
        db: sqlite3.Connection, messageId: str | None
    ) -> builtins.list[QueuedMessage]:
        if messageId is None:
            messages = db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY arrival, id"
            ).fetchall()
            recipients = db.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients ORDER BY message, idx"
            ).fetchall()
        else:
            messages = db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (messageId,)
            ).fetchall()
            recipients = db.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message = ? ORDER BY idx",
                (messageId,),
            ).fetchall()
        byId = {row[0]: messageFromRow(row) for row in messages}
        for row in recipients:
            message = byId.get(row[0])
            if message is not None:
                message.recipients.append(recipientFromRow(row))
        return list(byId.values())

    # -- the operator's commands --------------------------------------------------------------

    def hold(self, messageId: str) -> Deferred[bool]:
        """Hold every recipient of the message: never claimed until released."""

        def hold(db: sqlite3.Connection) -> tuple[bool, None]:
            db.execute(
                "UPDATE recipients SET state = ? WHERE message = ?",
                (RecipientState.HELD.value, messageId),
            )
            return _exists(db, messageId), None

        return self._write(hold)

    def release(self, messageId: str) -> Deferred[bool]:
        """
        Release the held recipients of a message: due now, queued again (or
        deferred when they were tried before).  Wakes the listeners.
        """
        now = self.clock.seconds()

        def release(db: sqlite3.Connection) -> tuple[bool, None]:
            db.execute(
                "UPDATE recipients SET"
                " state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,"
                " next_attempt = ? WHERE message = ? AND state = 'held'",
                (now, messageId),
            )
            return _exists(db, messageId), None

        return self._write(release).addCallback(self._wake)

    def delete(self, messageId: str) -> Deferred[bool]:
        """Remove a message, body and all, without any report (a lease on it is lost)."""

        def delete(db: sqlite3.Connection) -> tuple[bool, Callable[[], None] | None]:
            db.execute("DELETE FROM recipients WHERE message = ?", (messageId,))
            if not db.execute("DELETE FROM messages WHERE id = ?", (messageId,)).rowcount:
                return False, None
            return True, lambda: self.files.remove(messageId)

        return self._write(delete)

    def flush(self, messageId: str | None = None) -> Deferred[int]:
        """
        Make every recipient that is not held and not yet due (of one
        message, or of all) due now; wakes the listeners.  Answers how many
        were made due.
        """
        now = self.clock.seconds()

        def flush(db: sqlite3.Connection) -> tuple[int, None]:
            sql = "UPDATE recipients SET next_attempt = ? WHERE state != 'held' AND next_attempt > ?"
            args: tuple[Any, ...] = (now, now)
            if messageId is not None:
                sql += " AND message = ?"
                args += (messageId,)
            return db.execute(sql, args).rowcount, None

        return self._write(flush).addCallback(self._wake)


def _exists(db: sqlite3.Connection, messageId: str) -> bool:
    return db.execute("SELECT 1 FROM messages WHERE id = ?", (messageId,)).fetchone() is not None
