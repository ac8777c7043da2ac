"""
Maildir deliveries: :class:`MaildirDelivery` (``maildir:DIR``, every
message into one Maildir) and :class:`VirtualMaildirDelivery`
(``virtual:DIR``, ``DIR/<domain>/<local part>/``, unknown recipients
refused at RCPT), with :class:`Maildir` and :class:`MaildirReceiver`.

A file is written in ``tmp/``, flushed and ``fsync``\\ ed, renamed into
``new/``, and the directory is ``fsync``\\ ed; only then does the server
answer 250.  A disk error answers ``451 4.3.0`` and leaves nothing behind.
Directories made on the way are ``fsync``\\ ed in their parents.  The end
of a message runs in a thread pool of the delivery's own
(:class:`CommitRunner`), so the other sessions go on meanwhile.

Files left in ``tmp/`` by deliveries a crash interrupted are removed by
:func:`cleanTmp` once untouched for 36 hours (the Maildir convention): at
:meth:`MaildirDelivery.startCleanup` and every 6 hours after, in the same
thread pool.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from txsmtp.commitrunner import CommitRunner
from txsmtp.delivery import BaseDelivery, BaseDeliverySession
from txsmtp.envelope import Envelope, Recipient
from txsmtp.errors import SMTPError
from txsmtp.interfaces import IMessageReceiver
from txsmtp.maildirtmp import (
    CLEANUP_INTERVAL,
    STALE_AGE,
    TmpCleanup,
    _cleanVirtual,
    _TmpSweeper,
    cleanTmp,
)
from txsmtp.wire.address import Address

__all__ = [
    "CommitRunner",
    "Maildir",
    "MaildirDelivery",
    "MaildirReceiver",
    "TmpCleanup",
    "VirtualMaildirDelivery",
    "cleanTmp",
]

_log = Logger(namespace="txsmtp.delivery")


# -- Maildir --------------------------------------------------------------------

_counter = itertools.count(1)


def _hostnameForMaildir() -> str:
    # The Maildir convention replaces "/" and ":" in the host name.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


_HOST = _hostnameForMaildir()


def _syncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makeDirectories(paths: list[tuple[str, int]], sync: bool) -> None:
    """
    Make the missing ones of ``paths`` (each with its mode), and the
    missing parents of each (with the default mode), as ``os.makedirs``
    does; with ``sync``, ``fsync`` every directory that got a new entry,
    so that what was made survives a power cut.  A new directory is an
    entry in its parent, and only syncing the parent makes it durable
    (fsync(2)): without that, a message synced into a new ``new/`` could
    vanish with the directory.

    :raise OSError: when a directory cannot be made or synced; what was
        made is then removed again (best effort), so a later attempt makes
        and syncs it anew.
    """
    made: list[str] = []
    try:
        for path, mode in paths:
            missing = []
            p = path
            while not os.path.isdir(p):
                missing.append(p)
                parent = os.path.dirname(p)
                if parent == p:
                    break
                p = parent
            for d in reversed(missing):
                try:
                    os.mkdir(d, mode if d == path else 0o777)
                except FileExistsError:
                    if not os.path.isdir(d):
                        raise
                    continue  # made meanwhile by someone else, who syncs it
                made.append(d)
        if sync:
            for parent in dict.fromkeys(os.path.dirname(d) for d in made):
                _syncDirectory(parent)
    except OSError:
        for d in reversed(made):
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise


class Maildir:
    """
    One Maildir directory (with ``tmp``, ``new`` and ``cur``).

    :param path: the directory.
    :param create: create the directory and its three subdirectories when
        missing (mode 0700).
    :param sync: ``fsync`` the directories that get new subdirectories, so
        that they are durable before any message is stored in them.
    """

    def __init__(self, path: str, create: bool = True, sync: bool = True) -> None:
        self.path = os.path.abspath(path)
        if create:
            subdirectories = [os.path.join(self.path, sub) for sub in ("tmp", "new", "cur")]
            if not all(os.path.isdir(d) for d in subdirectories):
                _makeDirectories([(d, 0o700) for d in subdirectories], sync)

    def uniqueName(self) -> str:
        """A file name no other delivery on this host will choose."""
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{os.urandom(4).hex()}.{_HOST}"

    def __repr__(self) -> str:
        return f"Maildir({self.path!r})"


class _MaildirFile:
    """One file being written in a Maildir's tmp/."""

    __slots__ = ("maildir", "name", "tmpPath", "file", "stored")

    def __init__(self, maildir: Maildir, header: bytes) -> None:
        self.maildir = maildir
        self.name = maildir.uniqueName()
        self.tmpPath = os.path.join(maildir.path, "tmp", self.name)
        #: The file's path in new/ once committed.
        self.stored: str | None = None
        fd = os.open(self.tmpPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file = os.fdopen(fd, "wb", buffering=256 * 1024)
        try:
            self.file.write(header)
        except BaseException:
            self.discard()
            raise

    def commit(self, sync: bool) -> str:
        f = self.file
        f.flush()
        if sync:
            os.fsync(f.fileno())
        f.close()
        newPath = os.path.join(self.maildir.path, "new", self.name)
        os.rename(self.tmpPath, newPath)
        if sync:
            try:
                _syncDirectory(os.path.join(self.maildir.path, "new"))
            except OSError:
                # Not durable, so not delivered: the client will retry, and a
                # copy left in new/ would then be a duplicate.
                try:
                    os.unlink(newPath)
                except OSError:
                    pass
                raise
        self.stored = newPath
        return newPath

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmpPath)
        except OSError:
            pass


def _traceHeaders(envelope: Envelope, recipients: Iterable[Recipient]) -> bytes:
    """``Return-Path:`` and ``Delivered-To:`` (RFC 5321 §4.4, final delivery)."""
    lines = [f"Return-Path: {envelope.returnPath}\r\n"]
    lines.extend(f"Delivered-To: {r.address}\r\n" for r in recipients)
    return "".join(lines).encode("utf-8")


@implementer(IMessageReceiver)
class MaildirReceiver:
    """
    Streams one message into one or more Maildirs.

    :param targets: ``(maildir, recipients)`` pairs: each Maildir gets one
        copy whose ``Delivered-To:`` headers name those recipients.
    :param envelope: the message's envelope.
    :param sync: ``fsync`` file and directory before answering (keep it on
        unless losing mail on a power cut is acceptable).
    :param perRecipient: report each Maildir's fate separately (LMTP,
        RFC 2033 §4.2): a storage error fails only the recipients of that
        Maildir, and :meth:`finish` returns one result per recipient.
        Otherwise a message is stored everywhere or nowhere.
    :param runner: the :class:`CommitRunner` whose threads commit the
        message; ``None`` commits on the calling thread, and
        :meth:`finish` returns its result at once.
    """

    def __init__(
        self,
        targets: list[tuple[Maildir, list[Recipient]]],
        envelope: Envelope,
        sync: bool = True,
        perRecipient: bool = False,
        runner: CommitRunner | None = None,
    ) -> None:
        self.envelope = envelope
        self.sync = sync
        self.perRecipient = perRecipient
        self._runner = runner
        self._files: list[_MaildirFile] = []
        self._error: OSError | None = None
        # perRecipient: each file's recipients, and the recipients whose
        # copy failed.
        self._recipientsOf: dict[int, list[Recipient]] = {}
        self._failed: set[int] = set()
        for maildir, recipients in targets:
            try:
                f = _MaildirFile(maildir, _traceHeaders(envelope, recipients))
            except OSError as e:
                if not perRecipient:
                    self._fail(e, "create")
                    raise self._smtpError() from e
                self._logError(e, "create")
                self._failed.update(id(r) for r in recipients)
                continue
            self._files.append(f)
            self._recipientsOf[id(f)] = recipients
        if perRecipient and not self._files:
            raise self._smtpError()

    def _logError(self, error: OSError, what: str) -> None:
        _log.error(
            "Maildir {what} failed for message {queueId}: {error}; answering 451",
            what=what,
            queueId=self.envelope.queueId,
            error=f"{error.strerror or error} ({getattr(error, 'filename', '') or ''})",
        )

    def _failOne(self, f: _MaildirFile, error: OSError, what: str) -> None:
        self._logError(error, what)
        f.discard()
        self._files.remove(f)
        self._failed.update(id(r) for r in self._recipientsOf.pop(id(f), []))

    def _fail(self, error: OSError, what: str) -> None:
        self._error = error
        self._logError(error, what)
        for f in self._files:
            f.discard()
        self._files = []

    @staticmethod
    def _smtpError() -> SMTPError:
        return SMTPError(
            451, "4.3.0", "Mailbox temporarily unavailable (local storage error); try again later"
        )

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            return
        if self.perRecipient:
            for f in list(self._files):
                try:
                    f.file.write(chunk)
                except OSError as e:
                    self._failOne(f, e, "write")
            return
        try:
            for f in self._files:
                f.file.write(chunk)
        except OSError as e:
            self._fail(e, "write")

    def finish(self) -> Deferred[list[SMTPError | None] | None] | list[SMTPError | None] | None:
        """
        Commit every copy (in the runner's thread pool, when there is one)
        and fire once they are durable: ``None``, or one result per
        recipient with ``perRecipient``.
        """
        if self._error is not None:
            raise self._smtpError()
        files, self._files = self._files, []
        if self._runner is None or not self._runner.threads:
            return self._finished(files, _commitAll(files, self.sync, self.perRecipient))
        d = self._runner.run(_commitAll, files, self.sync, self.perRecipient)
        return d.addCallback(lambda errors: self._finished(files, errors))

    def _finished(
        self, files: list[_MaildirFile], errors: list[OSError | None]
    ) -> list[SMTPError | None] | None:
        """Back on the reactor thread: log what failed and give the results."""
        # Where the copies went, for the server's log line (IMessageReceiver.storedAt).
        self.storedAt = [f.stored for f in files if f.stored is not None]
        if self.perRecipient:
            for f, error in zip(files, errors, strict=True):
                if error is not None:
                    self._logError(error, "commit")
                    self._failed.update(id(r) for r in self._recipientsOf.pop(id(f), []))
            return [
                SMTPError(
                    451,
                    "4.3.0",
                    f"<{r.address}>: mailbox temporarily unavailable (local storage error); try again later",
                )
                if id(r) in self._failed
                else None
                for r in self.envelope.recipients
            ]
        for error in errors:
            if error is not None:
                self._error = error
                self._logError(error, "commit")
                raise self._smtpError() from error
        return None

    def abort(self, reason: str) -> None:
        # Once finish() has begun, the files belong to the commit.
        for f in self._files:
            f.discard()
        self._files = []


def _commitAll(files: list[_MaildirFile], sync: bool, each: bool) -> list[OSError | None]:
    """
    Commit ``files`` (in a pool thread, or on the caller's): one error (or
    ``None``) per file.  A file that failed is discarded.  Unless ``each``,
    the message is stored everywhere or nowhere: after the first failure
    the copies already in ``new/`` are removed and the others discarded.
    """
    errors: list[OSError | None] = []
    done: list[str] = []
    for f in files:
        if errors and errors[-1] is not None and not each:
            f.discard()
            errors.append(None)
            continue
        try:
            done.append(f.commit(sync))
            errors.append(None)
        except OSError as e:
            f.discard()
            errors.append(e)
            if not each:
                for path in done:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
    return errors


class _MaildirSession(BaseDeliverySession):
    delivery: MaildirDelivery

    def openMessage(self, envelope: Envelope) -> MaildirReceiver:
        d = self.delivery
        return MaildirReceiver(
            [(d.maildir, envelope.recipients)], envelope, d.sync, runner=d.runner
        )


class _SweptDelivery(BaseDelivery):
    """What both Maildir deliveries share: the commit pool and the sweeps of ``tmp/``."""

    runner: CommitRunner
    _sweeper: _TmpSweeper

    def startCleanup(
        self, clock: Any = None, interval: float = CLEANUP_INTERVAL, maxAge: float = STALE_AGE
    ) -> None:
        """
        Remove what crashes left in ``tmp/`` (files untouched for more than
        ``maxAge`` seconds, 36 hours by default; see :func:`cleanTmp`): at
        once, then every ``interval`` seconds (6 hours) until :meth:`stop`.
        Each sweep runs in the commit thread pool, and logs one line when it
        removed anything.  Starting it again while it runs does nothing.
        For ``virtual:``, every existing mailbox with a ``tmp/`` is swept
        (``DIR/<domain>/<local part>/`` and ``DIR/postmaster/``).

        :param clock: what schedules the sweeps (the delivery's reactor by
            default; a :class:`~twisted.internet.task.Clock` in tests).
        """
        self._sweeper.start(clock, interval, maxAge)

    def cleanTmp(self) -> Deferred[TmpCleanup | None]:
        """One sweep now (logged as the periodic ones are): fires with what it did."""
        return self._sweeper.once()

    def stop(self) -> None:
        """
        Stop the sweeps of ``tmp/`` and end the commit threads, once the
        servers using this delivery have stopped.
        """
        self._sweeper.stop()
        self.runner.stop()


class MaildirDelivery(_SweptDelivery):
    """
    Every accepted message, whatever its recipients, into one Maildir (a
    catch-all), with ``Return-Path:`` and one ``Delivered-To:`` per
    recipient.

    :param path: the Maildir; created when missing.
    :param sync: ``fsync`` before answering 250 (default).
    :param threads: how many messages may be committed at once, in the
        delivery's thread pool (see :class:`CommitRunner`); ``0`` commits
        on the reactor thread.
    :param reactor: the reactor (the global one by default).

    :ivar runner: the :class:`CommitRunner`.
    """

    sessionFactory = _MaildirSession

    def __init__(
        self, path: str, sync: bool = True, *, threads: int = 4, reactor: Any = None
    ) -> None:
        self.maildir = Maildir(path, sync=sync)
        self.sync = sync
        self.runner = CommitRunner(threads, reactor)
        self._sweeper = _TmpSweeper(self.runner, self._sweep, self.maildir.path)

    def _sweep(self, maxAge: float, stopping: threading.Event) -> TmpCleanup:
        return cleanTmp(self.maildir.path, maxAge, stopping=stopping)


class _VirtualSession(BaseDeliverySession):
    delivery: VirtualMaildirDelivery

    def checkRecipient(self, recipient: Recipient, envelope: Envelope) -> None:
        maildir = self.delivery.mailboxFor(recipient.address)
        if maildir is None:
            raise SMTPError(550, "5.1.1", f"<{recipient.address}>: no such mailbox here")
        recipient.data = maildir

    def openMessage(self, envelope: Envelope) -> MaildirReceiver:
        byMaildir: dict[str, tuple[Maildir, list[Recipient]]] = {}
        for r in envelope.recipients:
            maildir = r.data
            byMaildir.setdefault(maildir.path, (maildir, []))[1].append(r)
        # Under LMTP each mailbox's fate is reported on its own.
        perRecipient = envelope.connection.protocol == "LMTP"
        d = self.delivery
        return MaildirReceiver(
            list(byMaildir.values()), envelope, d.sync, perRecipient, runner=d.runner
        )


class VirtualMaildirDelivery(_SweptDelivery):
    """
    One Maildir per address: ``DIR/<domain>/<local part>/``.

    A mailbox exists when its directory exists (its ``tmp``, ``new`` and
    ``cur`` are created on first delivery).  The domain is matched in lower
    case, the local part as given and then in lower case.  The bare
    ``<Postmaster>`` recipient (RFC 5321 §4.5.1) goes to ``DIR/postmaster/``.
    Recipients with no mailbox are refused at RCPT with ``550 5.1.1``.

    ``sync``, ``threads`` and ``reactor`` are as for
    :class:`MaildirDelivery`.  Making a new mailbox's ``tmp``, ``new`` and
    ``cur`` (and syncing the mailbox directory) happens at the first RCPT
    for it, on the reactor thread: once per mailbox.
    """

    sessionFactory = _VirtualSession

    def __init__(
        self, path: str, sync: bool = True, *, threads: int = 4, reactor: Any = None
    ) -> None:
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise ValueError(f"virtual mailbox directory does not exist: {self.path}")
        self.sync = sync
        self.runner = CommitRunner(threads, reactor)
        self._sweeper = _TmpSweeper(self.runner, self._sweep, self.path)

    def _sweep(self, maxAge: float, stopping: threading.Event) -> TmpCleanup:
        return _cleanVirtual(self.path, maxAge, stopping)

    def mailboxFor(self, address: Address) -> Maildir | None:
        """The :class:`Maildir` for ``address``, or ``None`` when there is none."""
        if not address.domain:
            candidates = [os.path.join(self.path, "postmaster")]
        else:
            domain = address.domain.lower()
            local = address.unquotedLocalPart
            if not _safeName(domain) or not _safeName(local) or domain == "postmaster":
                # DIR/postmaster is the Maildir of the bare <Postmaster>, not a domain.
                return None
            candidates = [os.path.join(self.path, domain, local)]
            if local.lower() != local:
                candidates.append(os.path.join(self.path, domain, local.lower()))
        for path in candidates:
            if os.path.isdir(path):
                try:
                    return Maildir(path, sync=self.sync)
                except OSError as e:
                    _log.error("cannot prepare mailbox {path}: {error}", path=path, error=e)
                    raise SMTPError(
                        451, "4.3.0", "Mailbox temporarily unavailable; try again later"
                    ) from e
        return None


def _safeName(name: str) -> bool:
    """A path component that cannot escape its directory."""
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")
