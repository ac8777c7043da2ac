"""
Maildir durability and the reactor thread:

- a Maildir made on the way (a new virtual mailbox's ``tmp``, ``new`` and
  ``cur``; ``maildir:DIR`` with missing parents) is durable before a
  message is answered 250: the directories holding new entries are
  ``fsync``\\ ed, not only the file and ``new/``;
- the commit (flush, ``fsync`` of the file, rename, ``fsync`` of ``new/``)
  runs in the delivery's thread pool, never on the reactor thread, and
  ``finish()`` fires once it is done;
- the pool is the delivery's: :meth:`stop` ends it, and ``twistd smtp``'s
  service stops it after the last session.

``fsync`` calls are recorded by replacing the ``os`` module that
txsmtp.maildir uses (see tests/test_maildir.py); the directory synced is
read back from ``/proc/self/fd``.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

import txsmtp.delivery
import txsmtp.maildir
from tests.test_maildir import FaultyOS, envelope
from tests.twistd_helpers import maildirFiles, readAll
from txsmtp.client import sendmail
from txsmtp.delivery import MaildirDelivery, VirtualMaildirDelivery
from txsmtp.envelope import ConnectionInfo
from txsmtp.errors import SMTPError
from txsmtp.testing import ServerHarness, runServer


def inTmp(stored: str) -> str:
    """Where a file of new/ was when it was synced: in tmp/, before the rename."""
    directory, name = os.path.split(stored)
    return os.path.join(os.path.dirname(directory), "tmp", name)


class SyncRecorder:
    """An ``fsync`` that records the path of each descriptor and the thread it ran on."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        with self.lock:
            self.paths.append(path)
            self.threads.add(threading.current_thread())
        os.fsync(fd)


class NewDirectoriesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.synced = SyncRecorder()
        self.patch(txsmtp.maildir, "os", FaultyOS(fsync=self.synced))
        self.top = os.path.abspath(self.mktemp())
        os.makedirs(self.top)

    def test_newVirtualMailbox(self) -> None:
        """
        The first message into a mailbox whose ``tmp``, ``new`` and ``cur``
        do not exist yet: the mailbox directory, which gets those entries,
        is synced before the 250, or a power cut could lose ``new/`` and the
        message in it.
        """
        box = os.path.join(self.top, "example.com", "alice")
        os.makedirs(box)
        h = ServerHarness(VirtualMaildirDelivery(self.top, threads=0))
        replies = h.sendMessage(b"s@example.org", [b"alice@example.com"], b"Subject: first\r\n\r\nhi\r\n")
        self.assertEqual(replies[-1].code, 250, [str(r) for r in replies])
        self.assertEqual(len(maildirFiles(box)), 1)
        self.assertIn(box, self.synced.paths)
        self.assertIn(os.path.join(box, "new"), self.synced.paths)

    def test_existingMailboxNotResynced(self) -> None:
        """Once the Maildir is complete, a message syncs only its file and ``new/``."""
        box = os.path.join(self.top, "example.com", "alice")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(box, sub))
        h = ServerHarness(VirtualMaildirDelivery(self.top, threads=0))
        replies = h.sendMessage(b"s@example.org", [b"alice@example.com"], b"Subject: again\r\n\r\nhi\r\n")
        self.assertEqual(replies[-1].code, 250)
        [stored] = maildirFiles(box)
        self.assertEqual(sorted(self.synced.paths), sorted([inTmp(stored), os.path.join(box, "new")]))

    def test_newMaildirWithParents(self) -> None:
        """``maildir:DIR`` with missing parents: every directory that got a new entry is synced."""
        path = os.path.join(self.top, "a", "b", "Maildir")
        MaildirDelivery(path)
        self.assertEqual(
            set(self.synced.paths),
            {self.top, os.path.join(self.top, "a"), os.path.join(self.top, "a", "b"), path},
        )

    def test_directorySyncFails(self) -> None:
        """
        When the new mailbox cannot be synced (EIO), RCPT is answered 451
        and the directories made for it are removed, so the next attempt
        makes (and syncs) them again.
        """
        box = os.path.join(self.top, "example.com", "alice")
        os.makedirs(box)

        def fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        patch = self.patch(txsmtp.maildir, "os", FaultyOS(fsync=fsync))
        h = ServerHarness(VirtualMaildirDelivery(self.top, threads=0))
        h.command(b"EHLO client.example")
        h.command(b"MAIL FROM:<s@example.org>")
        reply = h.command(b"RCPT TO:<alice@example.com>")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertEqual(os.listdir(box), [])
        patch.restore()
        self.assertEqual(h.command(b"RCPT TO:<alice@example.com>").code, 250)
        self.assertEqual(sorted(os.listdir(box)), ["cur", "new", "tmp"])
        self.flushLoggedErrors()


class OffTheReactorThreadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.synced = SyncRecorder()
        self.patch(txsmtp.maildir, "os", FaultyOS(fsync=self.synced))
        self.path = os.path.abspath(self.mktemp())

    def delivery(self, **kwargs: Any) -> MaildirDelivery:
        delivery = MaildirDelivery(self.path, **kwargs)
        self.addCleanup(delivery.stop)
        self.synced.paths.clear()
        self.synced.threads.clear()
        return delivery

    async def test_finishInThreadPool(self) -> None:
        """
        finish() returns a Deferred; the fsyncs run on a thread of the
        delivery's pool; the Deferred fires (with None) once the file is
        in new/ and both syncs are done.
        """
        delivery = self.delivery()
        receiver = delivery.openSession(ConnectionInfo()).openMessage(envelope("a@example.com", ["b@example.com"]))
        receiver.write(b"Subject: threaded\r\n\r\nhi\r\n")
        d = receiver.finish()
        self.assertIsInstance(d, defer.Deferred)
        self.assertIsNone(await d)
        [stored] = maildirFiles(self.path)
        self.assertEqual(sorted(self.synced.paths), sorted([inTmp(stored), os.path.join(self.path, "new")]))
        self.assertNotIn(threading.main_thread(), self.synced.threads)
        self.assertEqual(maildirFiles(self.path, "tmp"), [])

    async def test_threadedFailure(self) -> None:
        """A disk error in the pool fails finish() with 451 4.3.0 and leaves nothing behind."""
        delivery = self.delivery()

        def fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.patch(txsmtp.maildir, "os", FaultyOS(fsync=fsync))
        receiver = delivery.openSession(ConnectionInfo()).openMessage(envelope("a@example.com", ["b@example.com"]))
        receiver.write(b"x\r\n")
        d = receiver.finish()
        assert isinstance(d, defer.Deferred)
        with self.assertRaises(SMTPError) as caught:
            await d
        self.assertEqual((caught.exception.code, caught.exception.enhanced), (451, "4.3.0"))
        self.assertEqual(maildirFiles(self.path) + maildirFiles(self.path, "tmp"), [])
        self.flushLoggedErrors()

    async def test_perRecipientInThreadPool(self) -> None:
        """LMTP's per-mailbox results come back from the pool too: one stored, one 451."""
        top = os.path.abspath(self.mktemp())
        for box in ("alice", "bob"):
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(top, "example.com", box, sub))
        delivery = VirtualMaildirDelivery(top)
        self.addCleanup(delivery.stop)
        env = envelope("s@example.org", ["alice@example.com", "bob@example.com"])
        for r in env.recipients:
            r.data = delivery.mailboxFor(r.address)
        bobNew = os.path.join(top, "example.com", "bob", "new")
        real = os.rename

        def rename(source: str, target: str) -> None:
            if target.startswith(bobNew):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(source, target)

        self.patch(txsmtp.maildir, "os", FaultyOS(fsync=self.synced, rename=rename))
        receiver = txsmtp.maildir.MaildirReceiver(
            [(r.data, [r]) for r in env.recipients], env, perRecipient=True, runner=delivery.runner
        )
        receiver.write(b"x\r\n")
        d = receiver.finish()
        assert isinstance(d, defer.Deferred)
        results: Any = await d
        self.assertIsNone(results[0])
        self.assertEqual(results[1].code, 451)
        self.assertEqual(len(maildirFiles(os.path.join(top, "example.com", "alice"))), 1)
        self.assertEqual(maildirFiles(os.path.join(top, "example.com", "bob")), [])
        self.assertEqual(maildirFiles(os.path.join(top, "example.com", "bob"), "tmp"), [])
        self.flushLoggedErrors()

    async def test_realServerAnswersAfterSync(self) -> None:
        """Over a real connection, the 250 arrives after the syncs, which ran off the reactor thread."""
        delivery = self.delivery()
        server = runServer(self, delivery)
        result = await sendmail(
            "127.0.0.1", "a@example.com", ["b@example.com"], b"Subject: real\r\n\r\nhi\r\n", port=server.port, tls="none"
        )
        self.assertEqual(result.refused, {})
        [stored] = maildirFiles(self.path)
        self.assertIn(b"Subject: real", readAll([stored])[0])
        self.assertIn(inTmp(stored), self.synced.paths)
        self.assertNotIn(threading.main_thread(), self.synced.threads)

    async def test_stop(self) -> None:
        """
        stop() ends the pool's threads; a later commit starts a new pool;
        stopping twice, or a delivery that never started one, is fine.
        """
        delivery = MaildirDelivery(self.path)
        delivery.stop()
        self.assertEqual(await delivery.runner.run(lambda: 42), 42)
        pool = delivery.runner.pool
        assert pool is not None
        self.assertTrue(pool.started)
        delivery.stop()
        delivery.stop()
        self.assertFalse(pool.started)
        self.assertFalse(any(t.is_alive() for t in pool.threads))
        self.assertIsNone(delivery.runner.pool)
        self.assertEqual(await delivery.runner.run(lambda: 43), 43)
        delivery.stop()
