"""
The tables of :class:`~txsmtp.queue.sqlite.SQLiteStore` and how they
migrate forward, with the conversions between their rows and the objects
of :mod:`txsmtp.queue.model`.

A queue database records its schema version in the table
``schema_version``.  Opening a database runs, in one transaction, every
migration of :data:`MIGRATIONS` past the version it has; a database
written by a newer txsmtp (a version this code does not know) is refused
with a :class:`~txsmtp.queue.errors.QueueError`, never changed: a downgrade
must not corrupt the queue of the newer release.

Two tables hold the queue:

- ``messages``: one row per message (``id``, ``sender``, ``arrival``,
  ``size``, and the envelope as JSON);
- ``recipients``: one row per recipient still queued, named by
  ``(message, idx)``, with its state, attempts, next attempt, last error
  and the lease on it (``lease_owner``, ``lease_token``,
  ``lease_expires``; all ``NULL`` when not leased).

The body of a message is not in the database: it is the file
``bodies/<id>`` beside it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from txsmtp.queue.errors import QueueError
from txsmtp.queue.model import QueuedMessage, QueuedRecipient, RecipientState

__all__ = [
    "MIGRATIONS",
    "currentVersion",
    "migrate",
    "schemaVersion",
    "messageFromRow",
    "messagesFromRows",
    "recipientFromRow",
    "recipientValues",
    "MESSAGE_COLUMNS",
    "RECIPIENT_COLUMNS",
]


def _version1(db: sqlite3.Connection) -> None:
    """The first schema: messages, recipients, and the indexes claims use."""
    db.execute(
        """
        CREATE TABLE messages (
            id TEXT PRIMARY KEY NOT NULL,
            sender TEXT NOT NULL,
            arrival REAL NOT NULL,
            size INTEGER NOT NULL,
            envelope TEXT NOT NULL
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX messages_arrival ON messages (arrival, id)")
    db.execute(
        """
        CREATE TABLE recipients (
            message TEXT NOT NULL,
            idx INTEGER NOT NULL,
            address TEXT NOT NULL,
            notify TEXT,
            orcpt TEXT,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_error TEXT,
            delay_reported INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_token TEXT,
            lease_expires REAL,
            PRIMARY KEY (message, idx)
        ) WITHOUT ROWID
        """
    )
    # What claim() and nextDue() scan: the recipients that can be due, by time.
    db.execute("CREATE INDEX recipients_due ON recipients (next_attempt) WHERE state != 'held'")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_version1]
"""
The migrations, in order: ``MIGRATIONS[n]`` takes a database from version
``n`` to version ``n + 1`` (the first one creates the tables of an empty
database).  A new release appends to it, and never changes an entry that
was released: the newest version is ``len(MIGRATIONS)``.
"""


def currentVersion() -> int:
    """The schema version this code writes: ``len(MIGRATIONS)``."""
    return len(MIGRATIONS)


def schemaVersion(db: sqlite3.Connection) -> int | None:
    """The version recorded in ``db``, or ``None`` when it has no ``schema_version`` table."""
    if not db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone():
        return None
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row is not None else 0


def migrate(db: sqlite3.Connection, path: str = "", upTo: int | None = None) -> tuple[int, int]:
    """
    Bring ``db`` (a connection in autocommit mode, ``isolation_level=None``)
    to version ``upTo`` (default: :func:`currentVersion`), in one
    transaction.

    :param path: the database's file, for error messages.
    :return: the versions before and after.
    :raise QueueError: when the database is newer than this code, or is
        not a queue database (it has tables, but no ``schema_version``).
    """
    target = currentVersion() if upTo is None else upTo
    db.execute("BEGIN IMMEDIATE")
    try:
        version = schemaVersion(db)
        if version is None:
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise QueueError(f"{path or 'the database'} is not a txsmtp queue database")
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        if version > currentVersion():
            raise QueueError(
                f"the queue database {path or ''} has schema version {version}, written by a "
                f"newer txsmtp; this one knows versions up to {currentVersion()}: run the newer "
                "txsmtp, or give this one another queue directory"
            )
        before = version
        while version < target:
            MIGRATIONS[version](db)
            version += 1
        if version != before:
            db.execute("UPDATE schema_version SET version = ?", (version,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return before, version


# -- rows and objects -------------------------------------------------------------------------

MESSAGE_COLUMNS = "id, sender, arrival, size, envelope"
"""The columns :func:`messageFromRow` reads, in order."""

RECIPIENT_COLUMNS = (
    "message, idx, address, notify, orcpt, state, attempts, next_attempt, last_error, delay_reported"
)
"""The columns :func:`recipientFromRow` reads, in order."""


def messageFromRow(row: Sequence[Any]) -> QueuedMessage:
    """A :class:`~txsmtp.queue.model.QueuedMessage` (no recipients yet) from :data:`MESSAGE_COLUMNS`."""
    messageId, sender, arrival, size, envelope = row
    return QueuedMessage(
        id=messageId,
        sender=sender,
        arrival=float(arrival),
        size=int(size),
        envelope=json.loads(envelope),
    )


def messagesFromRows(rows: Sequence[Sequence[Any]], recipients: Sequence[Sequence[Any]]) -> list[QueuedMessage]:
    """
    The messages of ``rows`` (:data:`MESSAGE_COLUMNS`, in their order),
    each with its ``recipients`` (:data:`RECIPIENT_COLUMNS`, in theirs);
    recipients of other messages are left out.
    """
    byId = {row[0]: messageFromRow(row) for row in rows}
    for row in recipients:
        message = byId.get(row[0])
        if message is not None:
            message.recipients.append(recipientFromRow(row))
    return list(byId.values())


def recipientFromRow(row: Sequence[Any]) -> QueuedRecipient:
    """A :class:`~txsmtp.queue.model.QueuedRecipient` from :data:`RECIPIENT_COLUMNS`."""
    _, index, address, notify, orcpt, state, attempts, nextAttempt, lastError, delayReported = row
    orcptValue = json.loads(orcpt) if orcpt is not None else None
    return QueuedRecipient(
        index=int(index),
        address=address,
        notify=tuple(json.loads(notify)) if notify is not None else None,
        orcpt=(str(orcptValue[0]), str(orcptValue[1])) if orcptValue is not None else None,
        state=RecipientState(state),
        attempts=int(attempts),
        nextAttempt=float(nextAttempt),
        lastError=lastError,
        delayReported=bool(delayReported),
    )


def recipientValues(messageId: str, index: int, r: QueuedRecipient, due: float) -> tuple[Any, ...]:
    """
    The values of a new recipient row (the columns of
    :data:`RECIPIENT_COLUMNS`): state queued, no attempts, due at ``due``.
    """
    return (
        messageId,
        index,
        r.address,
        json.dumps(list(r.notify)) if r.notify is not None else None,
        json.dumps(list(r.orcpt)) if r.orcpt is not None else None,
        RecipientState.QUEUED.value,
        0,
        due,
        None,
        0,
    )
