"""
The SQL of :class:`~txsmtp.queue.postgres.PostgresStore`: one function per
operation, each given a psycopg connection inside a transaction the pool
begins and commits (:meth:`txsmtp.queue.pgconnections.ConnectionPool.run`).
Times are passed in: they are the store's clock, read on the reactor
thread (the nodes' clocks must agree, see :doc:`/deployments`).

Several nodes run these at once against one database.  What keeps them
apart:

- a claim takes recipients with ``FOR UPDATE SKIP LOCKED``: two claims
  never wait for each other and never take the same recipient;
- an outcome is recorded only while the lease's token holds on every
  recipient concerned (checked under row locks); a node whose lease
  lapsed mid-delivery records nothing;
- :func:`record` and :func:`delete` lock the message's row first, so that
  the last recipient to go takes the message and its body with it even
  when two nodes record different recipients of one message at once.
"""

from __future__ import annotations

import secrets
from typing import Any

from txsmtp.queue.model import Lease, QueuedMessage, RecipientOutcome, RecipientState, Result

# The counts are the same SQL in both dialects.
from txsmtp.queue.sqlitequeries import stats  # noqa: F401  (re-exported)
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
    "insertChunk",
    "insertMessage",
    "deleteChunks",
    "removeOrphanChunks",
    "readBody",
    "messages",
    "nextDue",
    "record",
    "release",
    "renew",
    "notify",
]

_RECIPIENT_INSERT = (
    f"INSERT INTO recipients ({RECIPIENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_R_COLUMNS = ", ".join("r." + c.strip() for c in RECIPIENT_COLUMNS.split(","))


def notify(db: Any, channel: str, payload: str) -> None:
    """Send a notification, delivered to every listener when the transaction commits."""
    db.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def insertChunk(db: Any, messageId: str, seq: int, data: bytes) -> None:
    """One chunk of a body still being received (its message row comes later)."""
    db.execute(
        "INSERT INTO body_chunks (message, seq, data) VALUES (%s, %s, %s)", (messageId, seq, data)
    )


def insertMessage(
    db: Any,
    messageId: str,
    sender: str,
    arrival: float,
    size: int,
    envelope: str,
    recipients: list[Any],
    chunk: tuple[int, bytes] | None = None,
    notifyOn: tuple[str, str] | None = None,
) -> None:
    """
    The rows that make a message visible (recipients queued, due at
    arrival), with its last chunk and a notification if given, in one
    statement (data-modifying ``WITH`` clauses all run, in one round trip).
    """
    rows = [_recipientRow(messageId, i, r, arrival) for i, r in enumerate(recipients)]
    parts = [
        f"m AS (INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (%(id)s, %(sender)s, %(arrival)s,"
        " %(size)s, %(envelope)s))",
        "r AS (INSERT INTO recipients (message, idx, address, notify, orcpt, state, next_attempt)"
        " SELECT %(id)s, u.i, u.a, u.n, u.o, 'queued', %(arrival)s"
        " FROM unnest(%(idx)s::integer[], %(address)s::text[], %(notify)s::text[], %(orcpt)s::text[])"
        " AS u(i, a, n, o))",
    ]
    params: dict[str, Any] = {
        "id": messageId,
        "sender": sender,
        "arrival": arrival,
        "size": size,
        "envelope": envelope,
        "idx": [row[1] for row in rows],
        "address": [row[2] for row in rows],
        "notify": [row[3] for row in rows],
        "orcpt": [row[4] for row in rows],
    }
    if chunk is not None:
        parts.append("c AS (INSERT INTO body_chunks (message, seq, data) VALUES (%(id)s, %(seq)s, %(data)s))")
        params["seq"], params["data"] = chunk
    final = "SELECT 1"
    if notifyOn is not None:
        final = "SELECT pg_notify(%(channel)s, %(payload)s)"
        params["channel"], params["payload"] = notifyOn
    db.execute("WITH " + ", ".join(parts) + " " + final, params)


def _recipientRow(messageId: str, index: int, r: Any, due: float) -> tuple[Any, ...]:
    values = list(recipientValues(messageId, index, r, due))
    values[-1] = bool(values[-1])  # delay_reported is a boolean here
    return tuple(values)


def deleteChunks(db: Any, messageId: str) -> None:
    """The chunks of a message that was never committed (aborted, or its commit failed)."""
    db.execute(
        "DELETE FROM body_chunks WHERE message = %s"
        " AND NOT EXISTS (SELECT 1 FROM messages WHERE id = %s)",
        (messageId, messageId),
    )


def removeOrphanChunks(db: Any, olderThan: float) -> int:
    """Chunks older than ``olderThan`` seconds whose message never came: how many went."""
    cursor = db.execute(
        "DELETE FROM body_chunks c WHERE c.written < now() - make_interval(secs => %s)"
        " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = c.message)",
        (olderThan,),
    )
    return int(cursor.rowcount)


def readBody(db: Any, messageId: str, into: Any, batch: int = 4) -> bool:
    """
    Copy a message's body into the file ``into``, ``batch`` chunks a query
    (never the whole body in memory).  Run inside a ``REPEATABLE READ``
    transaction, so that the chunks are those of one moment.

    :return: ``False`` when there is no such message.
    """
    if db.execute("SELECT 1 FROM messages WHERE id = %s", (messageId,)).fetchone() is None:
        return False
    after = -1
    while True:
        rows = db.execute(
            "SELECT seq, data FROM body_chunks WHERE message = %s AND seq > %s ORDER BY seq LIMIT %s",
            (messageId, after, batch),
        ).fetchall()
        for seq, data in rows:
            into.write(data)
            after = seq
        if len(rows) < batch:
            return True


def clearLeases(db: Any, owner: str) -> int:
    """End the leases ``owner`` held (in a previous run): how many recipients were leased."""
    cursor = db.execute(
        "UPDATE recipients SET lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
        " WHERE lease_owner = %s",
        (owner,),
    )
    return int(cursor.rowcount)


def claim(db: Any, owner: str, limit: int, now: float, expires: float) -> list[Lease]:
    """
    Lease up to ``limit`` claimable recipients, earliest ``next_attempt``
    first, skipping those another claim has locked at this moment; one
    :class:`~txsmtp.queue.model.Lease` (with a random token of its own) per
    message.

    """
    nonce = secrets.token_hex(16)
    rows = db.execute(
        "WITH due AS ("
        "  SELECT message, idx FROM recipients"
        "  WHERE state <> 'held' AND next_attempt <= %(now)s"
        "  AND (lease_expires IS NULL OR lease_expires <= %(now)s)"
        "  ORDER BY next_attempt, message, idx LIMIT %(limit)s"
        "  FOR UPDATE SKIP LOCKED)"
        " UPDATE recipients r SET lease_owner = %(owner)s,"
        "  lease_token = md5(%(nonce)s || r.message), lease_expires = %(expires)s"
        " FROM due WHERE r.message = due.message AND r.idx = due.idx"
        f" RETURNING {_R_COLUMNS}, r.lease_token",
        {"now": now, "limit": max(0, limit), "owner": owner, "nonce": nonce, "expires": expires},
    ).fetchall()
    if not rows:
        return []
    ids = sorted({row[0] for row in rows})
    found = {
        m[0]: m
        for m in db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    }
    leases: dict[str, Lease] = {}
    due: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: (r[7], r[0], r[1])):
        messageId = row[0]
        if messageId not in found:
            continue  # cannot be: recipients go with their message
        lease = leases.get(messageId)
        if lease is None:
            lease = Lease(messageFromRow(found[messageId]), owner, row[-1], expires)
            leases[messageId] = lease
            due[messageId] = float(row[7])
        lease.message.recipients.append(recipientFromRow(row[:-1]))
    return sorted(leases.values(), key=lambda lease: (due[lease.message.id], lease.message.id))


def renew(db: Any, lease: Lease, expires: float) -> bool:
    """Move the end of ``lease`` to ``expires``: whether its token still holds on any recipient."""
    cursor = db.execute(
        "UPDATE recipients SET lease_expires = %s WHERE message = %s AND lease_token = %s",
        (expires, lease.message.id, lease.token),
    )
    return bool(cursor.rowcount > 0)


def record(db: Any, lease: Lease, outcomes: list[RecipientOutcome], now: float) -> bool:
    """
    Record ``outcomes`` if the lease's token holds on every one of their
    recipients, else nothing (``False``); the rules are those of
    :func:`txsmtp.queue.sqlitequeries.record`.  The message's row is
    locked first (see the module's docstring).
    """
    messageId = lease.message.id
    if outcomes and all(Result(o.result) is not Result.DEFERRED for o in outcomes):
        # The common case in one round trip: see txsmtp_record_final.
        indexes = sorted({o.index for o in outcomes})
        done = db.execute(
            "SELECT txsmtp_record_final(%s, %s, %s)", (messageId, lease.token, indexes)
        ).fetchone()[0]
        return bool(done)
    if db.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (messageId,)).fetchone() is None:
        return False
    if not outcomes:
        held = db.execute(
            "SELECT 1 FROM recipients WHERE message = %s AND lease_token = %s LIMIT 1",
            (messageId, lease.token),
        ).fetchone()
        return held is not None
    indexes = sorted({o.index for o in outcomes})
    holding = db.execute(
        "SELECT count(*) FROM recipients WHERE message = %s AND idx = ANY(%s) AND lease_token = %s",
        (messageId, indexes, lease.token),
    ).fetchone()[0]
    if holding != len(indexes):
        return False
    deferred = [o for o in outcomes if Result(o.result) is Result.DEFERRED]
    final = [o.index for o in outcomes if Result(o.result) is not Result.DEFERRED]
    if deferred:
        with db.cursor() as cursor:
            cursor.executemany(
                "UPDATE recipients SET"
                " state = CASE WHEN state = 'held' THEN 'held' ELSE 'deferred' END,"
                " attempts = attempts + 1, next_attempt = %s, last_error = %s,"
                " delay_reported = delay_reported OR %s,"
                " lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
                " WHERE message = %s AND idx = %s",
                [
                    (
                        now if o.nextAttempt is None else o.nextAttempt,
                        o.lastError,
                        bool(o.delayReported),
                        messageId,
                        o.index,
                    )
                    for o in deferred
                ],
            )
    if final:
        db.execute(
            "DELETE FROM recipients WHERE message = %s AND idx = ANY(%s)", (messageId, final)
        )
        _removeIfDone(db, messageId)
    return True


def _removeIfDone(db: Any, messageId: str) -> None:
    if db.execute("SELECT 1 FROM recipients WHERE message = %s LIMIT 1", (messageId,)).fetchone():
        return
    db.execute("DELETE FROM body_chunks WHERE message = %s", (messageId,))
    db.execute("DELETE FROM messages WHERE id = %s", (messageId,))


def nextDue(db: Any) -> float | None:
    """
    When a claim could next take a recipient: the earliest next attempt of
    a recipient neither held nor leased, or the end of a lease if that
    comes first (then, or at its next attempt if later).
    """
    free = db.execute(
        "SELECT next_attempt FROM recipients WHERE state <> 'held' AND lease_expires IS NULL"
        " ORDER BY next_attempt LIMIT 1"
    ).fetchone()
    leased = db.execute(
        "SELECT min(greatest(next_attempt, lease_expires)) FROM recipients"
        " WHERE state <> 'held' AND lease_expires IS NOT NULL"
    ).fetchone()
    times = [float(r[0]) for r in (free, leased) if r is not None and r[0] is not None]
    return min(times) if times else None


def messages(db: Any, messageId: str | None = None) -> list[QueuedMessage]:
    """Every message (or the one named), oldest arrival first, with its recipients in order."""
    if messageId is None:
        rows = db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY arrival, id").fetchall()
        recipients = db.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients ORDER BY message, idx"
        ).fetchall()
    else:
        rows = db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = %s", (messageId,)
        ).fetchall()
        recipients = db.execute(
            f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message = %s ORDER BY idx",
            (messageId,),
        ).fetchall()
    return messagesFromRows(rows, recipients)


def _exists(db: Any, messageId: str) -> bool:
    return db.execute("SELECT 1 FROM messages WHERE id = %s", (messageId,)).fetchone() is not None


def hold(db: Any, messageId: str) -> bool:
    """Hold every recipient of a message: whether it exists."""
    db.execute(
        "UPDATE recipients SET state = %s WHERE message = %s", (RecipientState.HELD.value, messageId)
    )
    return _exists(db, messageId)


def release(db: Any, messageId: str, now: float) -> bool:
    """The held recipients of a message due at ``now`` (queued or deferred again): whether it exists."""
    db.execute(
        "UPDATE recipients SET"
        " state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END,"
        " next_attempt = %s WHERE message = %s AND state = 'held'",
        (now, messageId),
    )
    return _exists(db, messageId)


def delete(db: Any, messageId: str) -> bool:
    """Remove a message, its recipients and its body: whether it existed."""
    if db.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (messageId,)).fetchone() is None:
        return False
    db.execute("DELETE FROM recipients WHERE message = %s", (messageId,))
    db.execute("DELETE FROM body_chunks WHERE message = %s", (messageId,))
    db.execute("DELETE FROM messages WHERE id = %s", (messageId,))
    return True


def flush(db: Any, messageId: str | None, now: float) -> int:
    """Recipients not held and due after ``now`` (of one message, or all) due at ``now``: how many."""
    sql = "UPDATE recipients SET next_attempt = %s WHERE state <> 'held' AND next_attempt > %s"
    args: tuple[Any, ...] = (now, now)
    if messageId is not None:
        sql += " AND message = %s"
        args += (messageId,)
    return int(db.execute(sql, args).rowcount)
