"""
Stale files in a Maildir's ``tmp/`` (issue 12): a crash leaves the file of
each transaction under way there, and nothing else removes it.  The
deliveries remove files of ``tmp/`` untouched for more than 36 hours (the
Maildir convention) at start-up and every 6 hours, in their commit thread
pool, logging one line per sweep that removed anything.

Ages are faked with ``os.utime``; the period runs on a
:class:`~twisted.internet.task.Clock`; ``threads=0`` runs a sweep at once
on the calling thread, except in the test of the thread pool itself.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

from twisted.internet import task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

import txsmtp.delivery  # noqa: F401  (first: txsmtp.maildir is imported through it)
import txsmtp.maildir
import txsmtp.maildirtmp
from tests.test_maildir import FaultyOS
from txsmtp.delivery import Maildir, MaildirDelivery, VirtualMaildirDelivery
from txsmtp.maildir import CLEANUP_INTERVAL, STALE_AGE, cleanTmp

HOUR = 3600.0


def put(path: str, age: float, atime: float | None = None) -> str:
    """A file at ``path`` last modified ``age`` seconds ago (and accessed ``atime`` seconds ago)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"Return-Path: <a@example.com>\r\n")
    now = time.time()
    os.utime(path, (now - (age if atime is None else atime), now - age))
    return path


def listing(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


def captureLog(testCase: unittest.TestCase) -> list[dict[str, Any]]:
    """The events txsmtp logs about the clean-up until the test ends."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "txsmtp.delivery" and "clean-up" in event.get("log_format", ""):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def lines(events: list[dict[str, Any]], level: LogLevel) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] is level]


class CleanTmpTests(unittest.TestCase):
    """cleanTmp() on one Maildir."""

    def setUp(self) -> None:
        self.path = Maildir(self.mktemp()).path
        self.tmp = os.path.join(self.path, "tmp")

    def test_onlyStaleFilesOfTmp(self) -> None:
        """
        Files of tmp/ untouched for more than 36 hours go; younger ones (a
        message being written) stay; new/ and cur/ are never touched, not
        even their old files; directories in tmp/ stay.
        """
        put(os.path.join(self.tmp, "stale1"), 37 * HOUR)
        put(os.path.join(self.tmp, "stale2"), 400 * HOUR)
        put(os.path.join(self.tmp, "fresh"), 0)
        put(os.path.join(self.tmp, "almost"), 35 * HOUR)
        # Read recently, though written long ago: still in use.
        put(os.path.join(self.tmp, "readRecently"), 40 * HOUR, atime=HOUR)
        put(os.path.join(self.path, "new", "oldNew"), 1000 * HOUR)
        put(os.path.join(self.path, "cur", "oldCur:2,S"), 1000 * HOUR)
        os.mkdir(os.path.join(self.tmp, "aDirectory"))
        os.utime(os.path.join(self.tmp, "aDirectory"), (0, 0))

        result = cleanTmp(self.path)

        self.assertEqual(listing(self.tmp), ["aDirectory", "almost", "fresh", "readRecently"])
        self.assertEqual(listing(os.path.join(self.path, "new")), ["oldNew"])
        self.assertEqual(listing(os.path.join(self.path, "cur")), ["oldCur:2,S"])
        self.assertEqual(result.removed, {self.path: 2})
        self.assertEqual(result.total, 2)
        self.assertEqual(result.errors, [])
        self.assertEqual(result.maildirs, 1)

    def test_boundary(self) -> None:
        """Exactly 36 hours is not more than 36 hours."""
        put(os.path.join(self.tmp, "f"), 0)
        now = os.stat(os.path.join(self.tmp, "f")).st_mtime
        self.assertEqual(cleanTmp(self.path, now=now + STALE_AGE).total, 0)
        self.assertEqual(cleanTmp(self.path, now=now + STALE_AGE + 1).total, 1)

    def test_noTmp(self) -> None:
        """A Maildir without tmp/ (never delivered to) is no error."""
        os.rmdir(self.tmp)
        result = cleanTmp(self.path)
        self.assertEqual((result.total, result.errors, result.maildirs), (0, [], 0))

    def test_vanishedFile(self) -> None:
        """A file removed by someone else between listing and removal: counted, no error."""
        put(os.path.join(self.tmp, "gone"), 40 * HOUR)
        put(os.path.join(self.tmp, "stale"), 40 * HOUR)

        def unlink(path: str) -> None:
            if path.endswith("gone"):
                os.unlink(path)
            os.unlink(path)  # raises FileNotFoundError for "gone"

        self.patch(txsmtp.maildirtmp, "os", FaultyOS(unlink=unlink))
        result = cleanTmp(self.path)
        self.assertEqual(listing(self.tmp), [])
        self.assertEqual((result.total, result.vanished, result.errors), (1, 1, []))

    def test_permissionError(self) -> None:
        """A file that cannot be removed is an error in the result; the others still go."""
        put(os.path.join(self.tmp, "locked"), 40 * HOUR)
        put(os.path.join(self.tmp, "stale"), 40 * HOUR)

        def unlink(path: str) -> None:
            if path.endswith("locked"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            os.unlink(path)

        self.patch(txsmtp.maildirtmp, "os", FaultyOS(unlink=unlink))
        result = cleanTmp(self.path)
        self.assertEqual(listing(self.tmp), ["locked"])
        self.assertEqual(result.total, 1)
        [error] = result.errors
        self.assertEqual(error.errno, errno.EACCES)
        self.assertEqual(error.filename, os.path.join(self.tmp, "locked"))

    def test_unreadableTmp(self) -> None:
        def scandir(path: str) -> Any:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

        self.patch(txsmtp.maildirtmp, "os", FaultyOS(scandir=scandir))
        result = cleanTmp(self.path)
        self.assertEqual(result.total, 0)
        self.assertEqual([e.errno for e in result.errors], [errno.EACCES])

    def test_stopping(self) -> None:
        """A delivery that stops ends the sweep early."""
        put(os.path.join(self.tmp, "stale"), 40 * HOUR)
        stopping = threading.Event()
        stopping.set()
        self.assertEqual(cleanTmp(self.path, stopping=stopping).total, 0)
        self.assertEqual(listing(self.tmp), ["stale"])


class MaildirDeliveryCleanupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.delivery = MaildirDelivery(self.mktemp(), threads=0)
        self.addCleanup(self.delivery.stop)
        self.path = self.delivery.maildir.path
        self.tmp = os.path.join(self.path, "tmp")
        self.log = captureLog(self)

    def test_startUpAndPeriodic(self) -> None:
        """
        startCleanup() sweeps at once, then every 6 hours, each sweep with
        one log line naming the count and the Maildir; stop() ends it.
        """
        put(os.path.join(self.tmp, "crash1"), 50 * HOUR)
        put(os.path.join(self.tmp, "crash2"), 50 * HOUR)
        put(os.path.join(self.tmp, "writing"), 0)
        put(os.path.join(self.path, "new", "delivered"), 50 * HOUR)

        self.delivery.startCleanup(self.clock)

        self.assertEqual(listing(self.tmp), ["writing"])
        self.assertEqual(listing(os.path.join(self.path, "new")), ["delivered"])
        [line] = lines(self.log, LogLevel.info)
        self.assertIn("removed 2 stale file(s) from tmp/", line)
        self.assertIn(self.path, line)
        self.assertIn("36 hours", line)

        # Nothing to remove: no line.
        self.clock.advance(CLEANUP_INTERVAL)
        self.assertEqual(len(lines(self.log, LogLevel.info)), 1)

        put(os.path.join(self.tmp, "crash3"), 50 * HOUR)
        self.clock.advance(CLEANUP_INTERVAL - 1)
        self.assertIn("crash3", listing(self.tmp))
        self.clock.advance(1)
        self.assertEqual(listing(self.tmp), ["writing"])
        self.assertIn("removed 1 stale file(s)", lines(self.log, LogLevel.info)[-1])

        # Starting again while running does not add a second loop.
        self.delivery.startCleanup(self.clock)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

        self.delivery.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        put(os.path.join(self.tmp, "crash4"), 50 * HOUR)
        self.clock.advance(10 * CLEANUP_INTERVAL)
        self.assertIn("crash4", listing(self.tmp))

        # And it can be started again (a restarted service).
        self.delivery.startCleanup(self.clock)
        self.assertEqual(listing(self.tmp), ["writing"])

    def test_intervalAndAge(self) -> None:
        put(os.path.join(self.tmp, "f"), 2 * HOUR)
        self.delivery.startCleanup(self.clock, interval=60, maxAge=3 * HOUR)
        self.assertEqual(listing(self.tmp), ["f"])
        os.utime(os.path.join(self.tmp, "f"), (time.time() - 4 * HOUR,) * 2)
        self.clock.advance(60)
        self.assertEqual(listing(self.tmp), [])
        self.assertIn("3 hours", lines(self.log, LogLevel.info)[-1])

    def test_errorsLoggedNotRaised(self) -> None:
        """
        A permission error is one warning line naming the file; a file
        vanished meanwhile is only a debug line; the loop goes on.
        """
        put(os.path.join(self.tmp, "locked"), 40 * HOUR)
        put(os.path.join(self.tmp, "gone"), 40 * HOUR)
        put(os.path.join(self.tmp, "stale"), 40 * HOUR)

        def unlink(path: str) -> None:
            if path.endswith("locked"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            if path.endswith("gone"):
                os.unlink(path)
            os.unlink(path)

        self.patch(txsmtp.maildirtmp, "os", FaultyOS(unlink=unlink))
        self.delivery.startCleanup(self.clock)

        self.assertEqual(listing(self.tmp), ["locked"])
        [info] = lines(self.log, LogLevel.info)
        self.assertIn("removed 1 stale file(s)", info)
        [warning] = lines(self.log, LogLevel.warn)
        self.assertIn("1 error(s)", warning)
        self.assertIn(os.path.join(self.tmp, "locked"), warning)
        self.assertIn(os.strerror(errno.EACCES), warning)
        [debug] = lines(self.log, LogLevel.debug)
        self.assertIn("1 stale file(s) vanished", debug)
        # Still scheduled.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_unexpectedErrorKeepsLoop(self) -> None:
        """A bug in a sweep is logged as a failure; the next sweep still runs."""
        calls = []

        def broken(maxAge: float, stopping: threading.Event) -> Any:
            calls.append(maxAge)
            raise RuntimeError("bug")

        self.delivery._sweeper.sweep = broken
        self.delivery.startCleanup(self.clock)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(CLEANUP_INTERVAL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(calls), 2)

    async def test_inThreadPool(self) -> None:
        """With threads, the sweep runs in the delivery's commit pool, not on the reactor thread."""
        delivery = MaildirDelivery(self.mktemp(), threads=2)
        self.addCleanup(delivery.stop)
        tmp = os.path.join(delivery.maildir.path, "tmp")
        put(os.path.join(tmp, "stale"), 40 * HOUR)
        threads = []

        def unlink(path: str) -> None:
            threads.append(threading.current_thread())
            os.unlink(path)

        self.patch(txsmtp.maildirtmp, "os", FaultyOS(unlink=unlink))
        result = await delivery.cleanTmp()
        assert result is not None
        self.assertEqual(result.total, 1)
        self.assertEqual(listing(tmp), [])
        [thread] = threads
        self.assertIsNot(thread, threading.current_thread())
        assert delivery.runner.pool is not None
        self.assertIn(thread, delivery.runner.pool.threads)

    def test_stopCutsSweepShort(self) -> None:
        """
        stop() during a sweep in the pool: the sweep ends after the file at
        hand, and stop() returns once the thread has ended.
        """
        delivery = MaildirDelivery(self.mktemp(), threads=1)
        self.addCleanup(delivery.stop)
        tmp = os.path.join(delivery.maildir.path, "tmp")
        for i in range(5):
            put(os.path.join(tmp, f"crash{i}"), 40 * HOUR)
        started = threading.Event()

        def unlink(path: str) -> None:
            started.set()
            # Hold the first removal until stop() has been asked for.
            delivery._sweeper.stopping.wait(10)
            os.unlink(path)

        self.patch(txsmtp.maildirtmp, "os", FaultyOS(unlink=unlink))
        delivery.startCleanup(self.clock)
        self.assertTrue(started.wait(10))
        pool = delivery.runner.pool
        assert pool is not None
        threads = list(pool.threads)
        self.assertEqual(len(threads), 1)
        delivery.stop()
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(len(listing(tmp)), 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class VirtualCleanupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.mkdir(self.root)
        self.clock = task.Clock()
        self.log = captureLog(self)

    def test_everyMailbox(self) -> None:
        """
        The tmp/ of every existing mailbox (and of DIR/postmaster) is
        swept; one line names the Maildirs with their counts; mailboxes
        without tmp/, hidden directories and stray files are left alone.
        """
        alice = Maildir(os.path.join(self.root, "example.com", "alice")).path
        bob = Maildir(os.path.join(self.root, "example.org", "bob")).path
        postmaster = Maildir(os.path.join(self.root, "postmaster")).path
        os.makedirs(os.path.join(self.root, "example.com", "carol"))  # no tmp/ yet
        hidden = Maildir(os.path.join(self.root, "example.com", ".hidden")).path
        put(os.path.join(self.root, "example.com", "notes"), 100 * HOUR)
        put(os.path.join(self.root, ".trash", "x", "tmp", "old"), 100 * HOUR)
        for i in range(3):
            put(os.path.join(alice, "tmp", f"crash{i}"), 40 * HOUR)
        put(os.path.join(alice, "tmp", "writing"), 0)
        put(os.path.join(alice, "new", "old"), 100 * HOUR)
        put(os.path.join(bob, "tmp", "writing"), HOUR)
        put(os.path.join(bob, "cur", "old:2,S"), 100 * HOUR)
        put(os.path.join(postmaster, "tmp", "crash"), 40 * HOUR)
        put(os.path.join(hidden, "tmp", "old"), 100 * HOUR)

        delivery = VirtualMaildirDelivery(self.root, threads=0)
        self.addCleanup(delivery.stop)
        delivery.startCleanup(self.clock)

        self.assertEqual(listing(os.path.join(alice, "tmp")), ["writing"])
        self.assertEqual(listing(os.path.join(alice, "new")), ["old"])
        self.assertEqual(listing(os.path.join(bob, "tmp")), ["writing"])
        self.assertEqual(listing(os.path.join(bob, "cur")), ["old:2,S"])
        self.assertEqual(listing(os.path.join(postmaster, "tmp")), [])
        self.assertEqual(listing(os.path.join(hidden, "tmp")), ["old"])
        self.assertTrue(os.path.exists(os.path.join(self.root, "example.com", "notes")))
        self.assertTrue(os.path.exists(os.path.join(self.root, ".trash", "x", "tmp", "old")))
        self.assertFalse(os.path.exists(os.path.join(self.root, "example.com", "carol", "tmp")))
        [line] = lines(self.log, LogLevel.info)
        self.assertIn("removed 4 stale file(s)", line)
        self.assertIn(f"{alice} (3)", line)
        self.assertIn(f"{postmaster} (1)", line)
        self.assertNotIn(bob, line)

        # A mailbox made later is swept by the next periodic sweep.
        dave = Maildir(os.path.join(self.root, "example.org", "dave")).path
        put(os.path.join(dave, "tmp", "crash"), 40 * HOUR)
        self.clock.advance(CLEANUP_INTERVAL)
        self.assertEqual(listing(os.path.join(dave, "tmp")), [])
        self.assertIn(f"{dave} (1)", lines(self.log, LogLevel.info)[-1])

    def test_manyMailboxesOneLine(self) -> None:
        """Past ten Maildirs the line says how many more."""
        for i in range(12):
            path = Maildir(os.path.join(self.root, "example.com", f"u{i:02}")).path
            put(os.path.join(path, "tmp", "crash"), 40 * HOUR)
        delivery = VirtualMaildirDelivery(self.root, threads=0)
        self.addCleanup(delivery.stop)
        delivery.startCleanup(self.clock)
        [line] = lines(self.log, LogLevel.info)
        self.assertIn("removed 12 stale file(s)", line)
        self.assertIn("and 2 more", line)

    def test_unreadableDomainLogged(self) -> None:
        """A domain directory that cannot be listed is a warning; the other domains are swept."""
        alice = Maildir(os.path.join(self.root, "example.com", "alice")).path
        Maildir(os.path.join(self.root, "example.net", "bob"))
        put(os.path.join(alice, "tmp", "crash"), 40 * HOUR)
        broken = os.path.join(self.root, "example.net")

        def scandir(path: str) -> Any:
            if path == broken:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return os.scandir(path)

        self.patch(txsmtp.maildirtmp, "os", FaultyOS(scandir=scandir))
        delivery = VirtualMaildirDelivery(self.root, threads=0)
        self.addCleanup(delivery.stop)
        delivery.startCleanup(self.clock)
        self.assertEqual(listing(os.path.join(alice, "tmp")), [])
        [warning] = lines(self.log, LogLevel.warn)
        self.assertIn(broken, warning)
        self.assertIn(self.root, warning)
