"""
txsmtp.queue.sqlite.SQLiteStore: the store conformance suite, and what is
the SQLite store's own: durability across instances, recovery at open
(leases, tmp/, bodies without a row), the lock, the schema versions, group
commit, the threads the blocking work runs on, and storage errors.

Faults are injected by replacing the ``os`` module txsmtp.queue.sqlitebody
uses (as tests/test_maildir.py does for txsmtp.maildir); a real full disk
is in tests/test_queue_fulldisk.py.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

import txsmtp.queue.sqlite
import txsmtp.queue.sqlitebody
import txsmtp.queue.sqliteschema
from tests.queue_conformance import START, StoreConformanceMixin, recipients
from tests.test_maildir import FailingFile, FaultyOS, enospc
from txsmtp.queue.errors import QueueError, QueueFullError, QueueLockedError
from txsmtp.queue.model import Lease, RecipientOutcome, Result
from txsmtp.queue.sqlite import SQLiteStore
from txsmtp.queue.sqlitebody import BUFFER_SIZE, asQueueError, newMessageId, validId
from txsmtp.queue.sqliteschema import currentVersion, migrate, schemaVersion

BODY = b"Subject: durable\r\n\r\n" + b"line of the body\r\n" * 1000


class SQLiteConformanceTests(StoreConformanceMixin, unittest.TestCase):
    def makeStore(self) -> SQLiteStore:
        return SQLiteStore(self.mktemp(), clock=self.clock)


class SQLiteConformanceNoSyncTests(StoreConformanceMixin, unittest.TestCase):
    """The same contract with ``sync=False``."""

    def makeStore(self) -> SQLiteStore:
        return SQLiteStore(self.mktemp(), clock=self.clock, sync=False)


def listDir(path: str) -> list[str]:
    return sorted(os.listdir(path))


class _StoreTestCase(unittest.TestCase):
    """Stores in one directory, opened and closed by the test (closed at the end in any case)."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.path = os.path.abspath(self.mktemp())

    def newStore(self, **kwargs: Any) -> SQLiteStore:
        store = SQLiteStore(self.path, clock=self.clock, **kwargs)
        self.addCleanup(store.close)
        return store

    async def openStore(self, **kwargs: Any) -> SQLiteStore:
        store = self.newStore(**kwargs)
        await store.open()
        return store

    async def enqueue(self, store: SQLiteStore, *addresses: str, body: bytes = BODY) -> str:
        writer = store.newMessage()
        for i in range(0, len(body), 4096):
            writer.write(body[i : i + 4096])
        result: str = await writer.commit(
            "sender@example.org", recipients(*(addresses or ("rcpt@example.com",))), {"queueId": "Q1"}
        )
        return result

    async def body(self, store: SQLiteStore, messageId: str) -> bytes:
        f = await store.openBody(messageId)
        try:
            return bytes(f.read())
        finally:
            f.close()

    def database(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            os.path.join(self.path, "queue.sqlite"), isolation_level=None, check_same_thread=False
        )
        self.addCleanup(db.close)
        return db


class DurabilityTests(_StoreTestCase):
    async def test_newInstanceSeesCommitted(self) -> None:
        """Once commit fired, a new store on the directory (after close) has the message and its body."""
        store = await self.openStore()
        messageId = await self.enqueue(store, "a@example.com", "b@example.com")
        await store.close()
        again = await self.openStore()
        m = await again.show(messageId)
        self.assertEqual([r.address for r in m.recipients], ["a@example.com", "b@example.com"])
        self.assertEqual((m.size, m.envelope), (len(BODY), {"queueId": "Q1"}))
        self.assertEqual(await self.body(again, messageId), BODY)

    async def test_stateSurvives(self) -> None:
        """Outcomes recorded are there after a restart; the leases of the previous run are not."""
        store = await self.openStore()
        messageId = await self.enqueue(store, "a@example.com", "b@example.com", "c@example.com")
        [lease] = await store.claim("node1", 10, 600)
        await store.record(lease, [RecipientOutcome(0, Result.DELIVERED),
                                   RecipientOutcome(1, Result.DEFERRED, START + 300, "451 later", True)])
        await store.close()
        again = await self.openStore()
        m = await again.show(messageId)
        self.assertEqual([(r.index, r.attempts, r.lastError, r.delayReported) for r in m.recipients],
                         [(1, 1, "451 later", True), (2, 0, None, False)])
        # Recipient 2 was leased by the previous run: claimable at once now.
        [lease] = await again.claim("node1", 10, 600)
        self.assertEqual([r.index for r in lease.message.recipients], [2])
        self.assertFalse(await again.record(Lease(lease.message, "node1", "old", 0),
                                            [RecipientOutcome(2, Result.DELIVERED)]))

    async def test_openNow(self) -> None:
        """openNow opens on the calling thread: the store works at once after it."""
        store = self.newStore()
        store.openNow()
        self.assertEqual(listDir(self.path), ["bodies", "lock", "queue.sqlite", "queue.sqlite-shm",
                                              "queue.sqlite-wal", "tmp"])
        messageId = await self.enqueue(store)
        self.assertEqual(await self.body(store, messageId), BODY)
        self.assertRaises(QueueError, store.openNow)

    async def test_privateFiles(self) -> None:
        """The directory and the database are readable by their owner only."""
        await self.openStore()
        for name in ("", "bodies", "tmp", "queue.sqlite", "queue.sqlite-wal", "lock"):
            mode = os.stat(os.path.join(self.path, name)).st_mode & 0o777
            self.assertEqual(mode & 0o077, 0, f"{name}: {mode:o}")

    async def test_writeStreams(self) -> None:
        """Bodies go to tmp/ as they are written, not kept in memory until commit."""
        store = await self.openStore()
        writer = store.newMessage()
        chunk = b"x" * 65536
        for _ in range(16):
            writer.write(chunk)
        tmp = os.path.join(self.path, "tmp", writer.id)
        self.assertGreaterEqual(os.path.getsize(tmp), 16 * len(chunk) - BUFFER_SIZE)
        messageId = await writer.commit("", recipients("a@example.com"), {})
        self.assertEqual(messageId, writer.id)
        self.assertEqual(listDir(os.path.join(self.path, "tmp")), [])
        self.assertEqual(listDir(os.path.join(self.path, "bodies")), [messageId])
        self.assertEqual(os.path.getsize(os.path.join(self.path, "bodies", messageId)), 16 * len(chunk))

    def test_ids(self) -> None:
        """Ids: 18 characters of [0-9A-Za-z], sorted by time, valid file names."""
        ids = [newMessageId() for _ in range(1000)]
        self.assertEqual(len(set(ids)), 1000)
        self.assertTrue(all(len(i) == 18 and validId(i) for i in ids))
        self.assertEqual([i[:10] for i in ids], sorted(i[:10] for i in ids))
        self.assertFalse(validId("../x"))
        self.assertFalse(validId(""))


class RecoveryTests(_StoreTestCase):
    async def test_orphanBodyRemoved(self) -> None:
        """A body in bodies/ with no row (a crash between rename and commit) is removed at open."""
        store = await self.openStore()
        kept = await self.enqueue(store)
        await store.close()
        orphan = newMessageId()
        with open(os.path.join(self.path, "bodies", orphan), "wb") as f:
            f.write(b"never acknowledged\r\n")
        await self.openStore()
        self.assertEqual(listDir(os.path.join(self.path, "bodies")), [kept])

    async def test_staleTmpRemoved(self) -> None:
        """Bodies left in tmp/ by an earlier run are removed at open."""
        store = await self.openStore()
        writer = store.newMessage()
        # Larger than the writer's buffer: the file is made as the body comes.
        writer.write(b"a message whose session died\r\n" * (BUFFER_SIZE // 16))
        await store.close()
        self.assertEqual(listDir(os.path.join(self.path, "tmp")), [writer.id])
        again = await self.openStore()
        self.assertEqual(listDir(os.path.join(self.path, "tmp")), [])
        self.assertEqual(await again.list(), [])


class LockTests(_StoreTestCase):
    async def test_secondStoreRefused(self) -> None:
        """A second store on the same directory: QueueLockedError naming the owner's pid."""
        first = await self.openStore()
        second = self.newStore()
        error = await self.assertFailure(second.open(), QueueLockedError)
        self.assertIn(self.path, str(error))
        self.assertIn(f"pid {os.getpid()}", str(error))
        third = self.newStore()
        self.assertRaises(QueueLockedError, third.openNow)
        # The first store is untouched by the attempts.
        messageId = await self.enqueue(first)
        await first.close()
        fourth = await self.openStore()
        self.assertEqual(await self.body(fourth, messageId), BODY)

    async def test_closedWhileOpening(self) -> None:
        """close() right after open(): the open finishes, then the lock is let go."""
        store = self.newStore()
        opening = store.open()
        await store.close()
        await opening
        await self.assertFailure(store.list(), QueueError)
        again = await self.openStore()
        self.assertEqual(await again.list(), [])

    async def test_lockedInAnotherProcess(self) -> None:
        """The lock holds against another process too (a flock on DIR/lock)."""
        import subprocess
        import sys

        store = await self.openStore()
        await store.close()
        code = (
            "import sys; from txsmtp.queue.sqlite import SQLiteStore\n"
            "from txsmtp.queue.errors import QueueLockedError\n"
            "s = SQLiteStore(sys.argv[1])\n"
            "try:\n    s.openNow()\nexcept QueueLockedError as e:\n    print('locked:', e)\n"
            "else:\n    print('opened')\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        run = lambda: subprocess.run(  # noqa: E731
            [sys.executable, "-c", code, self.path], capture_output=True, text=True, cwd=root, timeout=60
        )
        self.assertEqual(run().stdout.strip(), "opened")
        holder = await self.openStore()
        out = run().stdout.strip()
        self.assertTrue(out.startswith("locked:"), out)
        self.assertIn(f"pid {os.getpid()}", out)
        await holder.close()


class SchemaTests(_StoreTestCase):
    async def test_version(self) -> None:
        """A new database records the current schema version."""
        await self.openStore()
        self.assertEqual(schemaVersion(self.database()), currentVersion())

    async def test_migratesForward(self) -> None:
        """A database made at version 1 opens under code with a newer schema: migrated, data kept."""
        store = await self.openStore()
        messageId = await self.enqueue(store, "a@example.com")
        await store.close()
        self.assertEqual(schemaVersion(self.database()), 1)

        ran = []

        def version2(db: sqlite3.Connection) -> None:
            ran.append(True)
            db.execute("ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")

        self.patch(txsmtp.queue.sqliteschema, "MIGRATIONS", txsmtp.queue.sqliteschema.MIGRATIONS + [version2])
        again = await self.openStore()
        self.assertEqual(ran, [True])
        self.assertEqual(schemaVersion(self.database()), 2)
        self.assertEqual(self.database().execute("SELECT id, priority FROM messages").fetchall(),
                         [(messageId, 0)])
        self.assertEqual(await self.body(again, messageId), BODY)
        await again.close()
        await self.openStore()
        self.assertEqual(ran, [True])  # once only

    async def test_migrateUpTo(self) -> None:
        """migrate() takes an empty database to the version asked, then on to the newest."""
        os.makedirs(self.path)
        db = self.database()
        self.assertEqual(migrate(db, upTo=0), (0, 0))
        self.assertEqual(schemaVersion(db), 0)
        self.assertEqual(migrate(db), (0, currentVersion()))
        self.assertEqual(migrate(db), (currentVersion(), currentVersion()))

    async def test_newerRefused(self) -> None:
        """A database from a newer txsmtp is refused with a clear QueueError, and left as it was."""
        await (await self.openStore()).close()
        self.database().execute("UPDATE schema_version SET version = ?", (currentVersion() + 1,))
        store = self.newStore()
        error = await self.assertFailure(store.open(), QueueError)
        self.assertIn(f"schema version {currentVersion() + 1}", str(error))
        self.assertIn("newer txsmtp", str(error))
        self.assertEqual(schemaVersion(self.database()), currentVersion() + 1)
        # The refused store let go of the lock.
        self.database().execute("UPDATE schema_version SET version = ?", (currentVersion(),))
        await self.openStore()

    async def test_notAQueue(self) -> None:
        """An SQLite database that is not a queue is refused."""
        os.makedirs(self.path)
        self.database().execute("CREATE TABLE something (x)")
        error = await self.assertFailure(self.newStore().open(), QueueError)
        self.assertIn("not a txsmtp queue", str(error))


class SyncRecorder:
    """An ``fsync`` that records the path synced and its thread; it waits for ``gate`` first."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, fd: int) -> None:
        self.gate.wait(60)
        path = os.readlink(f"/proc/self/fd/{fd}")
        with self.lock:
            self.calls.append((path, threading.current_thread().name))
        os.fsync(fd)

    def paths(self, directory: str) -> list[str]:
        return [p for p, _ in self.calls if os.path.dirname(p) == directory or p == directory]


class GroupCommitTests(_StoreTestCase):
    async def test_concurrentCommitsGrouped(self) -> None:
        """
        N commits asked for at once: every body synced, but fewer than N
        SQLite transactions and fewer than N syncs of bodies/.
        """
        store = await self.openStore()
        synced = SyncRecorder()
        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(fsync=synced))
        # The writer thread waits at its first fsync until every commit is asked for.
        synced.gate.clear()
        transactions, groups = store.transactions, store.groups
        n = 20
        commits = [defer.Deferred.fromCoroutine(self.enqueue(store, f"r{i}@example.com", body=b"%d\r\n" % i))
                   for i in range(n)]
        synced.gate.set()
        ids = await defer.gatherResults(commits)
        self.assertEqual(len(set(ids)), n)
        bodies = os.path.join(self.path, "bodies")
        self.assertEqual(len(synced.paths(os.path.join(self.path, "tmp"))), n)
        self.assertLessEqual(store.transactions - transactions, 2)
        self.assertLessEqual(store.groups - groups, 2)
        self.assertEqual(len([p for p, _ in synced.calls if p == bodies]), store.groups - groups)
        self.assertEqual(len(await store.list()), n)
        for i, messageId in enumerate(ids):
            self.assertEqual(await self.body(store, messageId), b"%d\r\n" % i)

    async def test_offReactorThread(self) -> None:
        """Every fsync of a commit runs on the store's writer thread, not the reactor's."""
        store = await self.openStore()
        synced = SyncRecorder()
        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(fsync=synced))
        await self.enqueue(store)
        self.assertEqual(len(synced.calls), 2)  # the body, then bodies/
        self.assertEqual({t for _, t in synced.calls}, {f"txsmtp-queue-writer {self.path}"})
        self.assertNotEqual(threading.current_thread().name, f"txsmtp-queue-writer {self.path}")

    async def test_orderOfDurability(self) -> None:
        """The body is synced in tmp/, then bodies/ is synced, and only then is the row there."""
        store = await self.openStore()
        seen: list[tuple[str, int]] = []
        db = self.database()

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
            seen.append((os.path.relpath(path, self.path), rows))
            os.fsync(fd)

        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(fsync=fsync))
        messageId = await self.enqueue(store)
        self.assertEqual(seen, [(os.path.join("tmp", messageId), 0), ("bodies", 0)])
        self.assertEqual(db.execute("SELECT count(*) FROM messages").fetchone()[0], 1)

    async def test_noSync(self) -> None:
        """sync=False never calls fsync."""
        store = await self.openStore(sync=False)
        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(fsync=enospc))
        messageId = await self.enqueue(store)
        self.assertEqual(await self.body(store, messageId), BODY)


class RemoverTests(_StoreTestCase):
    async def test_bodyRemovedOffWriterBeforeClose(self) -> None:
        """
        The body of a message that left the queue is removed by the remover
        thread (not the writer); openBody refuses it at once, and by the
        time the store is closed the file is gone.
        """
        store = self.newStore()
        removedOn: list[str] = []
        real = store.files.remove

        def remove(messageId: str) -> None:
            removedOn.append(threading.current_thread().name)
            real(messageId)

        self.patch(store.files, "remove", remove)
        await store.open()
        messageId = await self.enqueue(store)
        [lease] = await store.claim("node", 10, 60)
        self.assertTrue(await store.record(lease, [RecipientOutcome(0, Result.DELIVERED)]))
        await self.assertFailure(store.openBody(messageId), KeyError)
        await store.close()
        self.assertEqual(removedOn, [f"txsmtp-queue-remover {self.path}"])
        self.assertEqual(listDir(os.path.join(self.path, "bodies")), [])


class SyncLevelTests(_StoreTestCase):
    async def test_durableOnlyWhereItMatters(self) -> None:
        """
        A new message commits with synchronous=FULL (fsync of the WAL before
        250); claims and outcomes with NORMAL (no fsync of their own: the next
        FULL commit writes them, and they survive the process being killed).
        """
        store = await self.openStore()
        levels: list[tuple[str, int]] = []
        original = store._transaction

        def transaction(function: Any, args: Any, durable: bool = True) -> Any:
            assert store._db is not None
            result = original(function, args, durable)
            levels.append((getattr(function, "__name__", "?"), store._db.execute("PRAGMA synchronous").fetchone()[0]))
            return result

        self.patch(store, "_transaction", transaction)
        messageId = await self.enqueue(store)
        assert store._db is not None
        self.assertEqual(store._db.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL
        [lease] = await store.claim("node", 10, 60)
        self.assertTrue(await store.record(lease, [RecipientOutcome(0, Result.DEFERRED, START + 60)]))
        self.assertTrue(await store.hold(messageId))
        # claim (wrapped), record: NORMAL (1); hold: FULL (2).
        self.assertEqual([level for _, level in levels], [1, 1, 2])
        await self.enqueue(store)
        self.assertEqual(store._db.execute("PRAGMA synchronous").fetchone()[0], 2)


class StorageErrorTests(_StoreTestCase):
    """Errors while writing or committing: the commit fails, nothing is left half-queued."""

    async def assertNothingQueued(self, store: SQLiteStore) -> None:
        self.assertEqual(listDir(os.path.join(self.path, "tmp")), [])
        self.assertEqual(listDir(os.path.join(self.path, "bodies")), [])
        self.assertEqual(await store.list(), [])
        self.assertEqual(self.database().execute("SELECT count(*) FROM recipients").fetchone()[0], 0)

    async def test_writeFull(self) -> None:
        """ENOSPC while writing: write does not raise; commit fails with QueueFullError."""
        store = await self.openStore()
        real = os.fdopen
        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(
            fdopen=lambda *a, **k: FailingFile(real(*a, **k), failWrite=lambda n, size: n >= 3)))
        writer = store.newMessage()
        # Beyond the writer's buffer: written to the file as it comes.
        for _ in range(6):
            self.assertIsNone(writer.write(b"x" * (BUFFER_SIZE // 3)))
        error = await self.assertFailure(writer.commit("", recipients("a@example.com"), {}), QueueFullError)
        self.assertIn("no space", str(error))
        await self.assertNothingQueued(store)
        self.patch(txsmtp.queue.sqlitebody, "os", os)
        messageId = await self.enqueue(store)
        self.assertEqual(await self.body(store, messageId), BODY)

    async def test_smallBodyFullAtCommit(self) -> None:
        """A body that fits the buffer meets a full disk at the commit: QueueFullError, nothing left."""
        store = await self.openStore()
        real = os.fdopen
        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(
            fdopen=lambda *a, **k: FailingFile(real(*a, **k), failWrite=lambda n, size: True)))
        writer = store.newMessage()
        self.assertIsNone(writer.write(b"small\r\n"))
        await self.assertFailure(writer.commit("", recipients("a@example.com"), {}), QueueFullError)
        await self.assertNothingQueued(store)

    async def test_smallBodyFileMadeOffReactor(self) -> None:
        """
        A body within the buffer is not written on the calling thread: its
        file is made, written and synced by the writer thread at the commit
        (creating a file can wait for the journal behind other fsync calls).
        """
        store = await self.openStore()
        opened: list[str] = []

        def recordingOpen(path: str, *args: Any) -> int:
            opened.append(threading.current_thread().name)
            return os.open(path, *args)

        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(open=recordingOpen))
        writer = store.newMessage()
        writer.write(BODY)
        self.assertEqual(opened, [])
        messageId = await writer.commit("", recipients("a@example.com"), {})
        # The body file, then bodies/ to sync it: both on the writer thread.
        self.assertEqual(len(opened), 2)
        self.assertEqual(set(opened), {f"txsmtp-queue-writer {self.path}"})
        self.assertEqual(await self.body(store, messageId), BODY)

    async def test_quotaAtFlush(self) -> None:
        """EDQUOT when the buffer is flushed at commit: QueueFullError too."""
        store = await self.openStore()
        real = os.fdopen
        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(
            fdopen=lambda *a, **k: QuotaFile(real(*a, **k))))
        writer = store.newMessage()
        writer.write(b"small\r\n")
        await self.assertFailure(writer.commit("", recipients("a@example.com"), {}), QueueFullError)
        await self.assertNothingQueued(store)

    async def test_fsyncFull(self) -> None:
        """ENOSPC from the body's fsync: QueueFullError, nothing left."""
        store = await self.openStore()
        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(fsync=enospc))
        writer = store.newMessage()
        writer.write(b"x\r\n")
        await self.assertFailure(writer.commit("", recipients("a@example.com"), {}), QueueFullError)
        await self.assertNothingQueued(store)

    async def test_directorySyncFails(self) -> None:
        """EIO syncing bodies/: every message of the group fails with QueueError (not full), no body left."""
        store = await self.openStore()
        bodies = os.path.join(self.path, "bodies")

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}") == bodies:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.fsync(fd)

        self.patch(txsmtp.queue.sqlitebody, "os", FaultyOS(fsync=fsync))
        commits = [defer.Deferred.fromCoroutine(self.enqueue(store, body=b"%d\r\n" % i)) for i in range(3)]
        for d in commits:
            error = await self.assertFailure(d, QueueError)
            self.assertNotIsInstance(error, QueueFullError)
            self.assertIn("Input/output error", str(error))
        await self.assertNothingQueued(store)

    async def test_databaseError(self) -> None:
        """The rows cannot be committed (the database is locked): QueueError, no body left."""
        # Another connection holds the write lock longer than the store waits.
        self.patch(txsmtp.queue.sqlite, "_BUSY_TIMEOUT", 0.05)
        store = await self.openStore()
        blocker = self.database()
        blocker.execute("BEGIN IMMEDIATE")
        writer = store.newMessage()
        writer.write(b"x\r\n")
        error = await self.assertFailure(writer.commit("", recipients("a@example.com"), {}), QueueError)
        self.assertIn("locked", str(error))
        blocker.execute("ROLLBACK")
        await self.assertNothingQueued(store)
        messageId = await self.enqueue(store)
        self.assertEqual(await self.body(store, messageId), BODY)

    def test_asQueueError(self) -> None:
        """Which errors mean a full queue."""
        self.assertIsInstance(asQueueError(OSError(errno.ENOSPC, "No space left")), QueueFullError)
        self.assertIsInstance(asQueueError(OSError(errno.EDQUOT, "Quota")), QueueFullError)
        self.assertNotIsInstance(asQueueError(OSError(errno.EIO, "I/O")), QueueFullError)
        full = sqlite3.OperationalError("database or disk is full")
        full.sqlite_errorcode = 13  # type: ignore[attr-defined]
        self.assertIsInstance(asQueueError(full), QueueFullError)
        self.assertNotIsInstance(asQueueError(sqlite3.OperationalError("locked")), QueueFullError)
        error = QueueError("as is")
        self.assertIs(asQueueError(error), error)

    async def test_notOpen(self) -> None:
        """A store not yet opened: commits fail, as does every call."""
        store = self.newStore()
        writer = store.newMessage()
        writer.write(b"x")
        await self.assertFailure(writer.commit("", recipients("a@example.com"), {}), QueueError)
        await self.assertFailure(store.claim("n", 1, 1), QueueError)
        await self.assertFailure(store.list(), QueueError)


class QuotaFile:
    """A file whose flush fails with EDQUOT (writes fit in its buffer)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def flush(self) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
