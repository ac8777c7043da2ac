"""
The tables of :class:`~txsmtp.queue.postgres.PostgresStore` and how they
migrate forward.

Everything lives in the first schema of the connection's ``search_path``
(``public`` unless the URL says otherwise, e.g.
``?options=-c%20search_path%3Dmail``), so one database can hold several
queues.  The schema version is in the table ``schema_version``.  Opening
a store runs, in one transaction and under a transaction-level advisory
lock (so that nodes starting together take turns: the second finds the
work done), every migration of :data:`MIGRATIONS` past the version found.
A database written by a newer txsmtp is refused, never changed.

Three tables hold the queue:

- ``messages``: one row per message (``id``, ``sender``, ``arrival``,
  ``size``, the envelope as JSON text).  A message exists for the
  schedulers only once this row is committed, which happens in the same
  transaction as the last chunk of its body;
- ``recipients``: one row per recipient still queued, named by
  ``(message, idx)``, with its state, attempts, next attempt, last error
  and the lease on it (``lease_owner``, ``lease_token``,
  ``lease_expires``; all ``NULL`` when not leased);
- ``body_chunks``: the body, in chunks numbered from 0 (``message``,
  ``seq``, ``data``), and when each was written.  Chunks of a message
  still being received are written before its ``messages`` row; chunks
  that never got one (an aborted or crashed writer) are removed a day
  later.

And two functions: ``txsmtp_take_slot(key, slots, held)``, the
destination slots (see :mod:`txsmtp.queue.pgconnections`), and
``txsmtp_record_final(message, token, indexes)``, the final outcomes of
:func:`txsmtp.queue.pgqueries.record` in one round trip.

The rows convert to and from :mod:`txsmtp.queue.model` objects with the
same functions as the SQLite store's (:mod:`txsmtp.queue.sqliteschema`):
the columns are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txsmtp.queue.errors import QueueError

__all__ = ["MIGRATIONS", "currentVersion", "migrate", "MIGRATION_LOCK"]

#: The advisory lock (one ``bigint`` key, hashed with the schema's name)
#: that migrations run under.
MIGRATION_LOCK = "txsmtp-queue-migrations"


_VERSION_1 = [
    """
    CREATE TABLE messages (
        id text PRIMARY KEY,
        sender text NOT NULL,
        arrival double precision NOT NULL,
        size bigint NOT NULL,
        envelope text NOT NULL
    )
    """,
    "CREATE INDEX messages_arrival ON messages (arrival, id)",
    """
    CREATE TABLE recipients (
        message text NOT NULL,
        idx integer NOT NULL,
        address text NOT NULL,
        notify text,
        orcpt text,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt double precision NOT NULL,
        last_error text,
        delay_reported boolean NOT NULL DEFAULT false,
        lease_owner text,
        lease_token text,
        lease_expires double precision,
        PRIMARY KEY (message, idx)
    )
    """,
    # What claim() and nextDue() scan: the recipients that can be due, by time.
    "CREATE INDEX recipients_due ON recipients (next_attempt) WHERE state <> 'held'",
    "CREATE INDEX recipients_owner ON recipients (lease_owner) WHERE lease_owner IS NOT NULL",
    """
    CREATE TABLE body_chunks (
        message text NOT NULL,
        seq integer NOT NULL,
        data bytea NOT NULL,
        written timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (message, seq)
    )
    """,
    # Mail is mostly text, but compressing each chunk costs the database's
    # CPU for little: keep them as they are, out of line.
    "ALTER TABLE body_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
    # Final outcomes for the recipients ``p_idx`` of message ``p_message``
    # under the lease ``p_token`` (pgqueries.record): with the message's row locked, if
    # the token holds on all of them, remove them, and the message with its
    # body once no recipient is left; else change nothing.  Whether done.
    """
    CREATE FUNCTION txsmtp_record_final(p_message text, p_token text, p_idx integer[])
    RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM 1 FROM messages WHERE id = p_message FOR UPDATE;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        IF (SELECT count(*) FROM recipients
            WHERE message = p_message AND idx = ANY(p_idx) AND lease_token = p_token)
           <> cardinality(p_idx) THEN
            RETURN false;
        END IF;
        DELETE FROM recipients WHERE message = p_message AND idx = ANY(p_idx);
        IF NOT EXISTS (SELECT 1 FROM recipients WHERE message = p_message) THEN
            DELETE FROM body_chunks WHERE message = p_message;
            DELETE FROM messages WHERE id = p_message;
        END IF;
        RETURN true;
    END
    $$
    """,
    # A free slot among ``slots`` for the destination ``key``, as a
    # session-level advisory lock (two int4 keys: the hash of the schema and
    # key, and the slot), or NULL when all are taken.  ``held``: the slots this
    # session holds already (an advisory lock is reentrant within a session).
    """
    CREATE FUNCTION txsmtp_take_slot(key text, slots integer, held integer[])
    RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        k integer := hashtext(current_schema() || ':' || key);
    BEGIN
        FOR s IN 0 .. slots - 1 LOOP
            IF NOT (s = ANY(held)) AND pg_try_advisory_lock(k, s) THEN
                RETURN s;
            END IF;
        END LOOP;
        RETURN NULL;
    END
    $$
    """,
]


def _statements(statements: list[str]) -> Callable[[Any], None]:
    def run(db: Any) -> None:
        for sql in statements:
            db.execute(sql)

    return run


MIGRATIONS: list[Callable[[Any], None]] = [_statements(_VERSION_1)]
"""
The migrations, in order: ``MIGRATIONS[n]`` takes a schema from version
``n`` to ``n + 1`` (given a psycopg connection inside the migration's
transaction).  A release appends to it and never changes a released entry.
"""


def currentVersion() -> int:
    """The schema version this code writes: ``len(MIGRATIONS)``."""
    return len(MIGRATIONS)


def migrate(db: Any, upTo: int | None = None) -> tuple[str, int, int]:
    """
    Bring the queue in ``db``'s current schema (a psycopg connection in
    autocommit mode) to version ``upTo`` (default: :func:`currentVersion`),
    in one transaction holding the migration lock.

    :return: the schema's name and the versions before and after.
    :raise QueueError: no schema to create tables in, a schema that holds
        other tables but no queue, or a queue newer than this code.
    """
    target = currentVersion() if upTo is None else upTo
    with db.transaction():
        schema = db.execute("SELECT current_schema()").fetchone()[0]
        if schema is None:
            raise QueueError(
                "the queue database has no schema to create the queue in: the search_path names "
                "no schema that exists (create it, or fix the options of the URL)"
            )
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':' || %s))",
            (MIGRATION_LOCK,),
        )
        exists = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
        if not exists:
            queueTables = db.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename IN ('messages', 'recipients', 'body_chunks')"
            ).fetchone()[0]
            if queueTables:
                raise QueueError(
                    f"the schema {schema!r} holds tables named as the queue's but no schema_version:"
                    " it is not a txsmtp queue"
                )
            db.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        else:
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = int(row[0]) if row is not None else 0
        if version > currentVersion():
            raise QueueError(
                f"the queue in schema {schema!r} has schema version {version}, written by a newer "
                f"txsmtp; this one knows versions up to {currentVersion()}: run the newer txsmtp"
            )
        before = version
        while version < target:
            MIGRATIONS[version](db)
            version += 1
        if version != before:
            db.execute("UPDATE schema_version SET version = %s", (version,))
    return schema, before, version
