"""
The bodies of :class:`~txsmtp.queue.sqlite.SQLiteStore`: files beside the
database, and the writer (:class:`BodyWriter`) that streams one into
``DIR/tmp/<id>``.

A body is written in ``tmp/``; at commit it is flushed and ``fsync``\\ ed,
renamed into ``bodies/``, and ``bodies/`` is ``fsync``\\ ed (once for all
the messages of a group commit) before the database row that makes the
message visible is committed.  A crash leaves at worst a file in ``tmp/``
(the message was never acknowledged) or a body in ``bodies/`` with no row
(renamed, not committed: never acknowledged either); :meth:`BodyFiles.clean`
removes both when the store opens.

Errors become :class:`~txsmtp.queue.errors.QueueError`, and a full disk
(``ENOSPC``, ``EDQUOT``, SQLite's ``SQLITE_FULL``)
:class:`~txsmtp.queue.errors.QueueFullError` (:func:`asQueueError`).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from txsmtp.queue.errors import QueueError, QueueFullError
from txsmtp.queue.interfaces import IQueueWriter
from txsmtp.queue.model import QueuedRecipient

__all__ = ["BodyFiles", "BodyWriter", "PendingMessage", "asQueueError", "envelopeJSON", "newMessageId", "validId"]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: What a full disk looks like: no space, or over quota.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: SQLite's primary result code for "database or disk is full".
_SQLITE_FULL = 13

#: The buffer of a body being written (what one message holds in memory).
BUFFER_SIZE = 128 * 1024


def _base62(n: int, width: int) -> str:
    digits = []
    for _ in range(width):
        n, d = divmod(n, 62)
        digits.append(_ALPHABET[d])
    return "".join(reversed(digits))


def newMessageId() -> str:
    """
    A new message id: 18 characters of ``[0-9A-Za-z]``, the time in
    microseconds (10 characters, so ids sort by creation time in ASCII
    order) then 8 random ones (47 bits).
    """
    return _base62(time.time_ns() // 1000, 10) + _base62(int.from_bytes(os.urandom(6), "big"), 8)


def envelopeJSON(recipients: list[QueuedRecipient], envelope: dict[str, Any]) -> str:
    """
    What every store checks at a commit: at least one recipient, and an
    envelope (without its recipients, stored apart) that JSON can hold.

    :return: the envelope as JSON text.
    :raise QueueError: with the reason.
    """
    if not recipients:
        raise QueueError("a message needs at least one recipient")
    try:
        return json.dumps({k: v for k, v in envelope.items() if k != "recipients"})
    except (TypeError, ValueError) as e:
        raise QueueError(f"the envelope cannot be stored: {e}") from e


def validId(messageId: str) -> bool:
    """Whether ``messageId`` could be one of :func:`newMessageId` (safe as a file name)."""
    return 0 < len(messageId) <= 64 and all(c in _ALPHABET for c in messageId)


def asQueueError(error: BaseException, doing: str = "") -> QueueError:
    """
    The :class:`~txsmtp.queue.errors.QueueError` for ``error`` (returned, not
    raised): :class:`~txsmtp.queue.errors.QueueFullError` for a full disk,
    the error itself when it already is one.

    :param doing: what failed, for the message (``"writing the body"``).
    """
    if isinstance(error, QueueError):
        return error
    prefix = f"{doing}: " if doing else ""
    if isinstance(error, OSError):
        detail = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
        if error.errno in _FULL:
            return QueueFullError(f"{prefix}no space left for the queue: {detail}")
        return QueueError(prefix + detail)
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL:
            return QueueFullError(f"{prefix}no space left for the queue database: {error}")
        return QueueError(f"{prefix}queue database: {error}")
    return QueueError(f"{prefix}{error!r}")


def syncDirectory(path: str) -> None:
    """``fsync`` the directory ``path``: its entries (new, renamed, removed files) become durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BodyFiles:
    """
    The body files of a queue directory: ``DIR/tmp/`` (being written) and
    ``DIR/bodies/`` (committed), each file named by its message id.

    :param path: the queue directory.
    :param sync: ``fsync`` files and directories (off only where losing
        mail on a power cut does not matter: tests).
    """

    def __init__(self, path: str, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self.tmp = os.path.join(path, "tmp")
        self.bodies = os.path.join(path, "bodies")

    def tmpPath(self, messageId: str) -> str:
        """Where the body of ``messageId`` is written."""
        return os.path.join(self.tmp, messageId)

    def bodyPath(self, messageId: str) -> str:
        """Where the body of ``messageId`` is once committed."""
        return os.path.join(self.bodies, messageId)

    def prepare(self) -> None:
        """
        Make the queue directory, ``tmp/`` and ``bodies/`` when missing, and
        ``fsync`` the directories that got them (blocking).
        """
        made = []
        for d in (self.path, self.tmp, self.bodies):
            if not os.path.isdir(d):
                os.makedirs(d, 0o700, exist_ok=True)
                made.append(d)
        if self.sync:
            for parent in dict.fromkeys(os.path.dirname(d) for d in made):
                syncDirectory(parent)

    def clean(self, known: Callable[[Iterable[str]], set[str]]) -> tuple[int, int]:
        """
        Remove what a crash left (blocking; the store's lock must be held):
        every file in ``tmp/``, and every body in ``bodies/`` that has no
        message.

        :param known: given body names, answers those that are messages.
        :return: how many files were removed from ``tmp/`` and from
            ``bodies/``.
        """
        stale = 0
        for entry in os.scandir(self.tmp):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                stale += 1
        names = [e.name for e in os.scandir(self.bodies) if e.is_file(follow_symlinks=False)]
        keep = known(names)
        orphans = 0
        for name in names:
            if name not in keep:
                os.unlink(os.path.join(self.bodies, name))
                orphans += 1
        if orphans and self.sync:
            syncDirectory(self.bodies)
        return stale, orphans

    def remove(self, messageId: str) -> None:
        """Remove the body of ``messageId`` (gone already is fine)."""
        try:
            os.unlink(self.bodyPath(messageId))
        except FileNotFoundError:
            pass


@dataclass
class PendingMessage:
    """
    A message handed to the store's writer thread by
    :meth:`BodyWriter.commit`: its body file (still open, in ``tmp/``) and
    its rows.

    :ivar envelope: the envelope, already as JSON text.
    """

    id: str
    files: BodyFiles
    #: the body file, or ``None`` when the whole body is in :attr:`head`
    #: (a small message: its file is made on the writer thread)
    file: IO[bytes] | None
    size: int
    sender: str
    recipients: list[QueuedRecipient]
    envelope: str
    arrival: float
    #: set once the body is in ``bodies/``
    renamed: bool = False
    #: the body, when it never left the writer's buffer (``file`` is ``None``)
    head: bytes = b""

    def finishBody(self) -> None:
        """
        Flush, ``fsync`` and close the body, and rename it into ``bodies/``
        (blocking).  ``bodies/`` itself is synced by the caller, once for a
        whole group of messages.  On an error the body is discarded.
        """
        files = self.files
        try:
            if self.file is None:
                fd = os.open(files.tmpPath(self.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                self.file = os.fdopen(fd, "wb", buffering=0)
                self.file.write(self.head)
            self.file.flush()
            if files.sync:
                os.fsync(self.file.fileno())
            self.file.close()
            os.rename(files.tmpPath(self.id), files.bodyPath(self.id))
            self.renamed = True
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the body wherever it is (best effort, blocking)."""
        files = self.files
        try:
            if self.file is not None:
                self.file.close()
        except OSError:
            pass
        for path in (files.bodyPath(self.id), files.tmpPath(self.id)):
            try:
                os.unlink(path)
            except OSError:
                pass


@implementer(IQueueWriter)
class BodyWriter:
    """
    One message being written into a :class:`~txsmtp.queue.sqlite.SQLiteStore`
    (its :meth:`~txsmtp.queue.sqlite.SQLiteStore.newMessage` makes them).

    :meth:`write` keeps the first :data:`BUFFER_SIZE` bytes in memory; a
    body that fits is written to ``DIR/tmp/<id>`` by the writer thread at
    the commit, a larger one is appended to that file as it comes, on the
    calling (reactor) thread, through a buffer of that size, as the Maildir
    deliveries do: the page cache takes it without waiting for the disk.  A write that fails never raises: the body is discarded and
    :meth:`commit` fails with the error (a full disk:
    :class:`~txsmtp.queue.errors.QueueFullError`).

    :param files: the store's :class:`BodyFiles`.
    :param submit: hands a :class:`PendingMessage` to the store; answers a
        Deferred firing with its id once committed.
    :param now: the store's clock (for the default arrival).
    :param error: an error every :meth:`commit` fails with (the store is
        not open).

    :ivar id: the message's id (known before the commit).
    :ivar size: how many bytes were written.
    """

    def __init__(
        self,
        files: BodyFiles,
        submit: Callable[[PendingMessage], Deferred[str]],
        now: Callable[[], float],
        error: QueueError | None = None,
    ) -> None:
        self.id = newMessageId()
        self.size = 0
        self._files = files
        self._submit = submit
        self._now = now
        self._file: IO[bytes] | None = None
        # The first BUFFER_SIZE bytes wait here: a message that fits never
        # touches the file system on this (the reactor's) thread, where
        # creating a file can wait for the journal behind the writer
        # thread's fsync calls.  A larger one goes to its file as it comes.
        self._head: list[bytes] = []
        self._error = error
        self._done = False

    def _open(self) -> IO[bytes]:
        fd = os.open(self._files.tmpPath(self.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=BUFFER_SIZE)
        head, self._head = self._head, []
        self._file.write(b"".join(head))
        return self._file

    def _fail(self, error: BaseException, doing: str) -> None:
        self._error = asQueueError(error, doing)
        self._discard()

    def _discard(self) -> None:
        self._head = []
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.close()
        except OSError:
            pass  # what did not fit in the buffer is dropped with the file
        try:
            os.unlink(self._files.tmpPath(self.id))
        except OSError:
            pass

    def write(self, chunk: bytes) -> None:
        if self._error is not None or self._done:
            return None
        self.size += len(chunk)
        if self._file is None and self.size <= BUFFER_SIZE:
            self._head.append(chunk)
            return None
        try:
            f = self._file if self._file is not None else self._open()
            f.write(chunk)
        except OSError as e:
            self._fail(e, "writing the body")
        return None

    def commit(
        self,
        sender: str,
        recipients: list[QueuedRecipient],
        envelope: dict[str, Any],
        arrival: float | None = None,
    ) -> Deferred[str]:
        if self._done:
            return defer.fail(QueueError("this message was already committed or aborted"))
        self._done = True
        if self._error is None:
            try:
                data = envelopeJSON(recipients, envelope)
            except QueueError as e:
                self._error = e
        if self._error is not None:
            self._discard()
            return defer.fail(self._error)
        # The writer thread's from now on (it makes the file of a small body).
        f, self._file = self._file, None
        head, self._head = b"".join(self._head), []
        pending = PendingMessage(
            id=self.id,
            files=self._files,
            head=head,
            file=f,
            size=self.size,
            sender=sender,
            recipients=list(recipients),
            envelope=data,
            arrival=self._now() if arrival is None else arrival,
        )
        return self._submit(pending)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._discard()
