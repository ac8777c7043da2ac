"""
txsmtp.queue.sqlite.SQLiteStore on a really full disk: the queue directory
is a small tmpfs (``mount -t tmpfs -o size=1m``, which needs root or
CAP_SYS_ADMIN).  A message that does not fit, or whose rows do not fit,
fails with QueueFullError and leaves nothing behind; the store then still
queues a message that fits.

Without the right to mount, the tests are skipped, unless
``TXSMTP_REQUIRE_PEERS=1`` (tests/peers.py), where they fail.
"""

from __future__ import annotations

import errno
import os
import subprocess

from twisted.internet import task
from twisted.trial import unittest
from twisted.trial.unittest import SkipTest

from tests.peers import PEERS_REQUIRED
from tests.queue_conformance import START, recipients
from txsmtp.queue.errors import QueueFullError
from txsmtp.queue.sqlite import SQLiteStore

SMALL = b"Subject: small\r\n\r\nIt fits.\r\n"


def mountTmpfs(path: str, size: str) -> None:
    """Mount a tmpfs of ``size`` on ``path``, or skip (fail under TXSMTP_REQUIRE_PEERS=1)."""
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        problem = ""
        if result.returncode:
            problem = result.stderr.strip() or f"mount: exit status {result.returncode}"
    except OSError as e:
        problem = str(e)
    if problem:
        message = (
            f"cannot mount a tmpfs for the full-disk test ({problem}); it needs root or CAP_SYS_ADMIN"
        )
        if PEERS_REQUIRED:
            raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
        raise SkipTest(message)


def unmount(path: str) -> None:
    if subprocess.run(["umount", path], capture_output=True, timeout=60).returncode:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=60)


class FullDiskTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        os.makedirs(self.path)
        mountTmpfs(self.path, "1m")
        self.addCleanup(unmount, self.path)
        clock = task.Clock()
        clock.advance(START)
        self.store = SQLiteStore(self.path, clock=clock)
        self.addCleanup(self.store.close)
        return self.store.open()

    async def assertNothingQueued(self) -> None:
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.path, "bodies")), [])
        self.assertEqual(await self.store.list(), [])
        self.assertIsNone(await self.store.nextDue())

    async def assertStillQueues(self) -> None:
        writer = self.store.newMessage()
        writer.write(SMALL)
        messageId = await writer.commit("a@example.org", recipients("b@example.com"), {})
        self.assertEqual([m.id for m in await self.store.list()], [messageId])
        f = await self.store.openBody(messageId)
        with f:
            self.assertEqual(f.read(), SMALL)
        self.assertEqual(os.listdir(os.path.join(self.path, "bodies")), [messageId])

    async def test_bodyDoesNotFit(self) -> None:
        """A 2 MiB message into a 1 MiB queue: QueueFullError, nothing half-queued, then a small one fits."""
        writer = self.store.newMessage()
        chunk = b"x" * 65535 + b"\n"
        for _ in range(32):
            self.assertIsNone(writer.write(chunk))
        error = await self.assertFailure(
            writer.commit("a@example.org", recipients("b@example.com"), {}), QueueFullError
        )
        self.assertIn("no space", str(error))
        await self.assertNothingQueued()
        await self.assertStillQueues()

    async def test_rowsDoNotFit(self) -> None:
        """
        The disk is full to the last block: an empty body can still be
        made (an inode), but SQLite cannot grow its log: QueueFullError,
        no body left; with room again, the store goes on.
        """
        filler = os.path.join(self.path, "filler")
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)
        writer = self.store.newMessage()
        error = await self.assertFailure(
            writer.commit("a@example.org", recipients("b@example.com"), {}), QueueFullError
        )
        self.assertIn("database", str(error))
        await self.assertNothingQueued()
        os.unlink(filler)
        await self.assertStillQueues()
