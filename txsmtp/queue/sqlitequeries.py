"""
The SQL of :class:`~txsmtp.queue.sqlite.SQLiteStore`: one function per
operation, each given a connection (on the store's writer or reader
thread) inside a transaction the store begins and ends.  Times are passed
in (the store reads its clock on the reactor thread).

The functions that may remove a message answer ``(result, removed)``,
where ``removed`` is the id of a message whose rows are gone (its body is
then removed by the store *after* the commit: a crash in between leaves a
body with no row, which the next open removes) or ``None``.

The lease rules (see :class:`~txsmtp.queue.model.Lease`): a recipient is
claimable when it is not held, its ``next_attempt`` is not after now, and
it has no lease or an expired one.  A lease's token holds on a recipient
until the recipient is claimed again, recorded, deleted, or the store is
reopened (:func:`clearLeases`).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable
from typing import Any

from txsmtp.queue.model import Lease, QueuedMessage, RecipientOutcome, RecipientState, Result
from txsmtp.queue.sqlitebody import PendingMessage
from txsmtp.queue.sqliteschema import (
    MESSAGE_COLUMNS,
    RECIPIENT_COLUMNS,
    messageFromRow,
    messagesFromRows,
    recipientFromRow,
    recipientValues,
)

__all__ = [
    "claim",
    "clearLeases",
    "delete",
    "flush",
    "hold",
    "insertMessages",
    "knownMessages",
    "messages",
    "nextDue",
    "record",
    "release",
    "renew",
]


def insertMessages(db: sqlite3.Connection, pending: Iterable[PendingMessage]) -> None:
    """The rows of new messages; their recipients are queued, due at arrival."""
    for m in pending:
        db.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (m.id, m.sender, m.arrival, m.size, m.envelope),
        )
        db.executemany(
            f"INSERT INTO recipients ({RECIPIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [recipientValues(m.id, i, r, m.arrival) for i, r in enumerate(m.recipients)],
        )


def knownMessages(db: sqlite3.Connection, ids: Iterable[str]) -> set[str]:
    """Those of ``ids`` that are messages."""
    return {
        i for i in ids if db.execute("SELECT 1 FROM messages WHERE id = ?", (i,)).fetchone()
    }


def clearLeases(db: sqlite3.Connection) -> int:
    """End every lease (a previous run's): how many recipients were leased."""
    return db.execute(
        "UPDATE recipients SET lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
        " WHERE lease_token IS NOT NULL"
    ).rowcount


def claim(
    db: sqlite3.Connection, owner: str, limit: int, now: float, expires: float
) -> list[Lease]:
    """
    Lease up to ``limit`` claimable recipients, earliest ``next_attempt``
    first, in one :class:`~txsmtp.queue.model.Lease` (with a new random
    token) per message.
    """
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
            [(owner, lease.token, expires, lease.message.id, r.index) for r in lease.message.recipients],
        )
    return list(leases.values())


def renew(db: sqlite3.Connection, lease: Lease, expires: float) -> bool:
    """Move the end of ``lease`` to ``expires``: whether its token still holds on any recipient."""
    return (
        db.execute(
            "UPDATE recipients SET lease_expires = ? WHERE message = ? AND lease_token = ?",
            (expires, lease.message.id, lease.token),
        ).rowcount
        > 0
    )


def record(
    db: sqlite3.Connection, lease: Lease, outcomes: list[RecipientOutcome], now: float
) -> tuple[bool, str | None]:
    """
    Record ``outcomes`` if the lease's token holds on every one of their
    recipients, else nothing (``False``).  ``DEFERRED``: one more attempt,
    the next attempt (``now`` when not given), the last error, and
    ``delayReported`` (once set, it stays set); a recipient held meanwhile
    stays held.  Any other result removes the recipient, and the message
    with its last one.  Recorded recipients leave the lease.
    """
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
            db.execute("DELETE FROM recipients WHERE message = ? AND idx = ?", (messageId, o.index))
    if db.execute("SELECT 1 FROM recipients WHERE message = ? LIMIT 1", (messageId,)).fetchone():
        return True, None
    db.execute("DELETE FROM messages WHERE id = ?", (messageId,))
    return True, messageId


def nextDue(db: sqlite3.Connection) -> float | None:
    """
    When a claim could next take a recipient: the earliest next attempt of
    a recipient neither held nor leased, or the end of a lease if that
    comes first (then, or at its next attempt if later).
    """
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


def stats(db: Any) -> dict[str, Any]:
    """How many recipients in each state, how many messages, and the oldest arrival (see ``IQueueStore.stats``)."""
    counts = dict(db.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())
    messages, oldest = db.execute("SELECT count(*), min(arrival) FROM messages").fetchone()
    return {
        "recipients": {s.value: int(counts.get(s.value, 0)) for s in RecipientState},
        "messages": int(messages),
        "oldestArrival": float(oldest) if oldest is not None else None,
    }


def messages(db: sqlite3.Connection, messageId: str | None = None) -> list[QueuedMessage]:
    """Every message (or the one named), oldest arrival first, with its recipients in order."""
    if messageId is None:
        rows = db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY arrival, id").fetchall()
        recipients = db.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients ORDER BY message, idx"
        ).fetchall()
    else:
        rows = db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (messageId,)
        ).fetchall()
        recipients = db.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message = ? ORDER BY idx",
            (messageId,),
        ).fetchall()
    return messagesFromRows(rows, recipients)


def _exists(db: sqlite3.Connection, messageId: str) -> bool:
    return db.execute("SELECT 1 FROM messages WHERE id = ?", (messageId,)).fetchone() is not None


def hold(db: sqlite3.Connection, messageId: str) -> bool:
    """Hold every recipient of a message: whether it exists."""
    db.execute(
        "UPDATE recipients SET state = ? WHERE message = ?", (RecipientState.HELD.value, messageId)
    )
    return _exists(db, messageId)


def release(db: sqlite3.Connection, messageId: str, now: float) -> bool:
    """
    The held recipients of a message due at ``now``: queued (never tried)
    or deferred (tried before).  Whether the message exists.
    """
    db.execute(
        "UPDATE recipients SET"
        " state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,"
        " next_attempt = ? WHERE message = ? AND state = 'held'",
        (now, messageId),
    )
    return _exists(db, messageId)


def delete(db: sqlite3.Connection, messageId: str) -> tuple[bool, str | None]:
    """Remove a message's rows: whether it existed."""
    db.execute("DELETE FROM recipients WHERE message = ?", (messageId,))
    if not db.execute("DELETE FROM messages WHERE id = ?", (messageId,)).rowcount:
        return False, None
    return True, messageId


def flush(db: sqlite3.Connection, messageId: str | None, now: float) -> int:
    """Recipients not held and due after ``now`` (of one message, or all) due at ``now``: how many."""
    sql = "UPDATE recipients SET next_attempt = ? WHERE state != 'held' AND next_attempt > ?"
    args: tuple[Any, ...] = (now, now)
    if messageId is not None:
        sql += " AND message = ?"
        args += (messageId,)
    return db.execute(sql, args).rowcount
