"""
Stale files in a Maildir's ``tmp/``: what a crash leaves behind (a file
opened for a message whose transaction never ended) and how the Maildir
deliveries of :mod:`txsmtp.maildir` sweep it away, off the reactor thread
and on a schedule (:meth:`~txsmtp.maildir.MaildirDelivery.startCleanup`).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

if TYPE_CHECKING:
    from txsmtp.maildir import CommitRunner

__all__ = ["CLEANUP_INTERVAL", "STALE_AGE", "TmpCleanup", "cleanTmp"]

_log = Logger(namespace="txsmtp.delivery")



STALE_AGE = 36 * 3600.0
"""
Seconds a file in ``tmp/`` must have been neither read nor written before
:func:`cleanTmp` removes it: 36 hours, the Maildir convention.  A delivery
under way writes its file within the command timeout, so it is never that
old.
"""

CLEANUP_INTERVAL = 6 * 3600.0
"""Seconds between two sweeps of ``tmp/`` (see :meth:`MaildirDelivery.startCleanup`)."""


class TmpCleanup:
    """
    What sweeps of ``tmp/`` did.

    :ivar removed: Maildir path to the number of files removed from its
        ``tmp/`` (only Maildirs that had some).
    :ivar errors: the errors met (a file or directory that could not be
        read or removed); the sweep went on past each.
    :ivar vanished: stale files that were gone when their turn came
        (removed meanwhile by someone else): not errors.
    :ivar maildirs: how many Maildirs were swept.
    """

    def __init__(self) -> None:
        self.removed: dict[str, int] = {}
        self.errors: list[OSError] = []
        self.vanished = 0
        self.maildirs = 0

    @property
    def total(self) -> int:
        """How many files were removed in all."""
        return sum(self.removed.values())


def cleanTmp(
    path: str,
    maxAge: float = STALE_AGE,
    now: float | None = None,
    result: TmpCleanup | None = None,
    stopping: threading.Event | None = None,
) -> TmpCleanup:
    """
    Remove the files in the ``tmp/`` of the Maildir ``path`` that have been
    neither accessed nor modified for more than ``maxAge`` seconds: what a
    crash left of the messages being written then.  Blocking: run it in a
    thread.  ``new/`` and ``cur/`` are not touched, nor are directories,
    symbolic links or other things that are not regular files in ``tmp/``.
    Errors are collected in the result, never raised.

    :param now: the time to measure ages against (``time.time()``).
    :param result: a :class:`TmpCleanup` to add to (a new one by default).
    :param stopping: when set, the sweep ends early (the delivery stops).
    """
    if result is None:
        result = TmpCleanup()
    if now is None:
        now = time.time()
    tmp = os.path.join(path, "tmp")
    removed = 0
    try:
        entries = list(os.scandir(tmp))
    except FileNotFoundError:
        return result  # no tmp/ (yet): nothing to clean
    except OSError as e:
        result.errors.append(e)
        return result
    result.maildirs += 1
    for entry in entries:
        if stopping is not None and stopping.is_set():
            break
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - max(st.st_atime, st.st_mtime) <= maxAge:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            result.vanished += 1
            continue
        except OSError as e:
            if not e.filename:
                e.filename = entry.path
            result.errors.append(e)
            continue
        removed += 1
    if removed:
        result.removed[path] = result.removed.get(path, 0) + removed
    return result


def _describeError(error: OSError) -> str:
    return f"{error.strerror or error} ({getattr(error, 'filename', '') or ''})"


class _TmpSweeper:
    """
    The periodic sweep of a delivery's Maildirs: ``sweep(stopping)`` runs in
    the delivery's :class:`CommitRunner`, and what it did is logged on the
    reactor thread, one line per sweep.
    """

    def __init__(
        self, runner: CommitRunner, sweep: Callable[[float, threading.Event], TmpCleanup], where: str
    ) -> None:
        self.runner = runner
        self.sweep = sweep
        self.where = where
        self.maxAge = STALE_AGE
        self.loop: task.LoopingCall | None = None
        self.stopping = threading.Event()

    def start(self, clock: Any, interval: float, maxAge: float) -> None:
        if self.loop is not None and self.loop.running:
            return
        self.maxAge = maxAge
        if clock is None:
            clock = self.runner._reactor
            if clock is None:
                from twisted.internet import reactor as clock
        self.stopping.clear()
        self.loop = task.LoopingCall(self.once)
        self.loop.clock = clock
        # The first sweep at once (start-up), then every interval.
        self.loop.start(interval, now=True).addErrback(self._loopFailed)

    def once(self) -> Deferred[TmpCleanup | None]:
        d: Deferred[Any] = self.runner.run(self.sweep, self.maxAge, self.stopping)
        d.addCallback(self._report)
        d.addErrback(self._failed)
        return d

    def _report(self, result: TmpCleanup) -> TmpCleanup:
        if result.removed:
            where = sorted(result.removed.items())
            shown = ", ".join(f"{path} ({count})" for path, count in where[:10])
            if len(where) > 10:
                shown += f", and {len(where) - 10} more"
            _log.info(
                "Maildir clean-up: removed {count} stale file(s) from tmp/ (untouched for over "
                "{hours:g} hours, left by interrupted deliveries) of {maildirs}",
                count=result.total,
                hours=self.maxAge / 3600,
                maildirs=shown,
            )
        if result.errors:
            _log.warn(
                "Maildir clean-up of {where}: {count} error(s), first: {errors}",
                where=self.where,
                count=len(result.errors),
                errors="; ".join(_describeError(e) for e in result.errors[:3]),
            )
        if result.vanished:
            _log.debug(
                "Maildir clean-up of {where}: {count} stale file(s) vanished before removal",
                where=self.where,
                count=result.vanished,
            )
        return result

    def _failed(self, failure: Any) -> None:
        # A bug, not a disk error (those are in the result): logged, and the
        # next sweep runs anyway.
        _log.failure("Maildir clean-up of {where} failed", failure, where=self.where)
        return None

    def _loopFailed(self, failure: Any) -> None:
        _log.failure("Maildir clean-up of {where} stopped", failure, where=self.where)

    def stop(self) -> None:
        self.stopping.set()
        loop, self.loop = self.loop, None
        if loop is not None and loop.running:
            loop.stop()




def _cleanVirtual(root: str, maxAge: float, stopping: threading.Event) -> TmpCleanup:
    """
    :func:`cleanTmp` for every mailbox under ``root`` that
    :meth:`VirtualMaildirDelivery.mailboxFor` can name: ``root/postmaster``
    and ``root/<domain>/<local part>`` (no names with a leading dot).
    """
    result = TmpCleanup()
    now = time.time()
    try:
        domains = list(os.scandir(root))
    except OSError as e:
        result.errors.append(e)
        return result
    for domain in domains:
        if stopping.is_set():
            break
        if domain.name.startswith("."):
            continue
        try:
            if not domain.is_dir():
                continue
            if domain.name == "postmaster":
                cleanTmp(domain.path, maxAge, now, result, stopping)
                continue
            mailboxes = list(os.scandir(domain.path))
        except FileNotFoundError:
            continue
        except OSError as e:
            result.errors.append(e)
            continue
        for mailbox in mailboxes:
            if stopping.is_set():
                break
            try:
                if mailbox.name.startswith(".") or not mailbox.is_dir():
                    continue
            except OSError as e:
                result.errors.append(e)
                continue
            cleanTmp(mailbox.path, maxAge, now, result, stopping)
    return result


