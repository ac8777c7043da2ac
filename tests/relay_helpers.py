"""
Helpers for the relay's end-to-end tests (:mod:`tests.test_relay_e2e`):

- :class:`DirectoryWatch` fires when a directory holds enough files, told
  by inotify (no polling);
- :func:`startSinkOn` runs Postfix's smtp-sink on a given port (to be
  stopped and started again on the same port: one ``--relay-host`` for a
  whole test), dumping each transaction into a directory;
- :func:`sinkMessages` reads those dumps.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, inotify, reactor
from twisted.python import filepath
from twisted.trial import unittest

from tests.peers import requirePeer
from tests.test_client_interop import SINK_NAME, SinkDump, _SinkProcess, freePort, parseDump
from tests.twistd_helpers import withTimeout

__all__ = [
    "DirectoryWatch",
    "RunningSink",
    "freePort",
    "shortDirectory",
    "sinkDirectory",
    "sinkMessages",
    "startSinkOn",
    "waitForDumps",
]

REACTOR: Any = reactor


class DirectoryWatch:
    """
    Watches one directory (inotify) and fires waiters once a predicate on
    its file names holds.  Stopped in the test's cleanup.
    """

    def __init__(self, testCase: unittest.TestCase, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        #: the names of the files closed after writing since the watch began
        #: (complete, for a writer that writes each file once, as smtp-sink does)
        self.closed: set[str] = set()
        self._waiters: list[tuple[Callable[[list[str]], bool], defer.Deferred[list[str]]]] = []
        self._notifier = inotify.INotify()
        self._notifier.startReading()
        mask = inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_DELETE
        self._notifier.watch(filepath.FilePath(path), mask=mask, callbacks=[self._changed])
        testCase.addCleanup(self._notifier.loseConnection)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.path))

    def _changed(self, ignored: Any, path: Any, mask: int) -> None:
        if mask & inotify.IN_CLOSE_WRITE:
            self.closed.add(os.fsdecode(path.basename()))
        elif mask & inotify.IN_DELETE:
            # smtp-sink removes the dump of a transaction that ended without a message.
            self.closed.discard(os.fsdecode(path.basename()))
        if not self._waiters:
            return
        names = self.names()
        ready, waiting = [], []
        for p, d in self._waiters:
            try:
                holds = p(names)
            except Exception:
                d.errback()
                continue
            (ready if holds else waiting).append((p, d))
        self._waiters = waiting
        for _, d in ready:
            d.callback(names)

    def waitUntil(
        self, predicate: Callable[[list[str]], bool], timeout: float, describe: Callable[[], str]
    ) -> defer.Deferred[list[str]]:
        """Fire with the names once ``predicate(names)`` holds (now or later)."""
        names = self.names()
        if predicate(names):
            return defer.succeed(names)
        d: defer.Deferred[list[str]] = defer.Deferred()
        self._waiters.append((predicate, d))
        return withTimeout(d, timeout, describe)

    def waitForCount(self, n: int, timeout: float = 30.0, describe: Callable[[], str] | None = None) -> defer.Deferred[list[str]]:
        """Fire once the directory holds at least ``n`` files."""
        return self.waitUntil(
            lambda names: len(names) >= n,
            timeout,
            describe or (lambda: f"{self.path} holds {len(self.names())} files, wanted {n}"),
        )


class RunningSink:
    def __init__(self, process: _SinkProcess, port: int, directory: str) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    @property
    def log(self) -> str:
        return self.process.text

    def stop(self) -> defer.Deferred[Any]:
        return self.process.stop()


def shortDirectory(testCase: unittest.TestCase) -> str:
    """
    A new directory with a short path, removed after the test: a queue's
    ``control.sock`` must fit in a UNIX socket address (107 octets), which
    trial's own temporary paths can exceed.
    """
    directory = tempfile.mkdtemp(prefix="txr-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


def sinkDirectory(testCase: unittest.TestCase) -> str:
    """A directory smtp-sink may write its dumps in (it runs as nobody under root)."""
    directory = tempfile.mkdtemp(prefix="txsmtp-relay-sink-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    return directory


async def startSinkOn(
    testCase: unittest.TestCase, port: int, directory: str, *flags: str
) -> RunningSink:
    """
    Run ``smtp-sink -vvv -h sink.test.invalid -d DIRECTORY/%M%S. FLAGS
    127.0.0.1:PORT 64`` and fire once it listens.  Stopped in the test's
    cleanup (if still running).
    """
    path = requirePeer("smtp-sink")
    privileges = ["-u", "nobody"] if os.geteuid() == 0 else []
    args = [path, *privileges, "-vvv", "-h", SINK_NAME, "-d", os.path.join(directory, "%M%S."), *flags]
    args += [f"127.0.0.1:{port}", "64"]
    process = _SinkProcess()
    REACTOR.spawnProcess(process, path, args, env=dict(os.environ), path=directory)
    testCase.addCleanup(process.stop)
    await withTimeout(process.whenReady(), 15, lambda: f"smtp-sink not listening: {process.text}")
    return RunningSink(process, port, directory)


def waitForDumps(watch: DirectoryWatch, n: int, timeout: float = 30.0) -> defer.Deferred[list[str]]:
    """
    Fire once smtp-sink has dumped ``n`` complete transactions into the
    watched directory (the watch must have begun before the first).
    """
    return watch.waitUntil(
        lambda names: len(sinkMessages(watch)) >= n,
        timeout,
        lambda: f"{len(sinkMessages(watch))} complete dumps in {watch.path}, wanted {n}",
    )


def sinkMessages(watch: DirectoryWatch) -> list[SinkDump]:
    """
    Every complete transaction dumped in the watched directory, in name
    order: files closed after writing that hold a message (smtp-sink also
    writes, then removes, a file for a transaction refused before DATA).
    """
    dumps = []
    for name in sorted(watch.closed):
        try:
            with open(os.path.join(watch.path, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        try:
            dumps.append(parseDump(data))
        except AssertionError:
            continue
    return dumps
