"""
:class:`PostgresStore`: one queue in PostgreSQL, shared by several nodes.

Any node can accept a message and any node can deliver it.  What makes
that safe (the tables are in :mod:`txsmtp.queue.pgschema`, the SQL in
:mod:`txsmtp.queue.pgqueries`, the threads in
:mod:`txsmtp.queue.pgconnections`):

- **Bodies** are written in chunks of :data:`CHUNK_SIZE` as they arrive
  (committed without waiting for the disk; see :mod:`txsmtp.queue.pgwriter`), and the rows that make the
  message visible are committed with its last chunk, durably.  The WAL is
  written in order, so that commit makes the earlier chunks durable too;
  only then does :meth:`~txsmtp.queue.pgwriter.PostgresWriter.commit` fire and a server answer
  250.  A writer holds at most a chunk in memory, plus
  :data:`~txsmtp.queue.pgwriter.WRITES_IN_FLIGHT` being written; :meth:`PostgresStore.openBody`
  copies a body into a spooled temporary file a few chunks at a time.
- **Claims** take due recipients with ``FOR UPDATE SKIP LOCKED`` and lease
  them under a random token; outcomes are recorded only while the token
  holds, so a node whose lease lapsed (it died, stalled, or lost the
  database) cannot overwrite a newer claim; its recipients are claimed
  again by any node once the lease has lapsed.  Claims, renewals and
  outcomes commit with ``synchronous_commit = off`` (as the SQLite store
  commits them without ``fsync``): a crash of PostgreSQL itself may forget
  the last of them, which means a recipient tried again, never lost.
- **Wake-ups**: a commit, a flush and a release send a notification on the
  queue's channel, and every node's :class:`~txsmtp.queue.pgconnections.Listener`
  wakes its scheduler; since a notification sent while a node was away is
  lost, nodes also poll every ``pollInterval`` seconds.
- **Node names**: leases are taken under :attr:`PostgresStore.node`; the
  node holds an advisory lock on its name while open, so a second live
  process with the same name is refused, and opening ends the leases its
  previous run left.
- **Destination slots**: :attr:`PostgresStore.slots` keeps the scheduler's
  per-destination limit across every node.

Times are the nodes' clocks: they must agree to well within a lease.
"""

from __future__ import annotations

import builtins
import socket
import tempfile
from collections.abc import Callable, Iterable
from typing import IO, Any

from twisted.internet import defer, task, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp.queue import pgqueries as queries
from txsmtp.queue.errors import QueueError
from txsmtp.queue.interfaces import IQueueStore
from txsmtp.queue.model import Lease, QueuedMessage, RecipientOutcome
from txsmtp.queue.pgconnections import (
    ConnectionPool,
    DestinationSlots,
    Listener,
    asQueueError,
    connect,
    takeNode,
)
from txsmtp.queue.pgschema import migrate
from txsmtp.queue.pgwriter import CHUNK_SIZE, PostgresWriter
from txsmtp.queue.sqlitebody import validId
from txsmtp.queue.wakeups import WakeListeners

__all__ = ["PostgresStore", "isPostgresURL", "redactURL", "CHUNK_SIZE"]

_log = Logger(namespace="txsmtp.queue.postgres")

#: A body up to this size is copied into memory by openBody; larger ones spill to a file.
SPOOL_SIZE = 1024 * 1024
#: Chunks whose message never came (a writer that died) are removed after this long.
ORPHAN_AGE = 86400.0
#: How often the orphans are looked for (seconds).
ORPHAN_INTERVAL = 3600.0


def isPostgresURL(text: str) -> bool:
    """Whether ``--queue`` names a PostgreSQL database rather than a directory."""
    return text.startswith(("postgresql://", "postgres://"))


def redactURL(url: str) -> str:
    """``url`` without its password, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@implementer(IQueueStore)
class PostgresStore(WakeListeners):
    """
    A queue store (:class:`~txsmtp.queue.interfaces.IQueueStore`) in a
    PostgreSQL database, which several nodes may share.

    :param url: a libpq URL (``postgresql://USER:PASSWORD@HOST:PORT/DB``;
        ``?options=-c%20search_path%3DNAME`` puts the queue in schema
        ``NAME``).
    :param clock: whose ``seconds()`` is now (the reactor by default).
    :param reactor: the reactor the threads answer through.
    :param node: the name leases are taken under, one per live node
        (default: the host name).
    :param poolSize: connections (and threads) for the store's work; a
        node uses two more, the listener's and the slots'.
    :param pollInterval: seconds between polls for work that a lost
        notification would have announced.

    :ivar node: the lease owner name.
    :ivar slots: the :class:`~txsmtp.queue.pgconnections.DestinationSlots`
        (for the scheduler), once open.
    :ivar schema: the schema the queue lives in, once open.
    """

    def __init__(
        self,
        url: str,
        clock: Any = None,
        reactor: Any = None,
        node: str | None = None,
        poolSize: int = 10,
        pollInterval: float = 5.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.url = url
        self.clock = clock if clock is not None else reactor
        self._reactor = reactor
        self.node = node or socket.gethostname()
        self.poolSize = poolSize
        self.pollInterval = pollInterval
        self.schema: str | None = None
        self.channel: str | None = None
        self.slots: DestinationSlots | None = None
        self._state = "new"
        self._pool: ConnectionPool | None = None
        self._listener: Listener | None = None
        WakeListeners.__init__(self)
        self._cleaner: task.LoopingCall | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redactURL(self.url)!r}, node={self.node!r})"

    # -- opening and closing ------------------------------------------------------------------

    def open(self) -> Deferred[None]:
        """
        Create or migrate the schema (under an advisory lock), take the
        node's lock and listen for notifications, end the leases this node
        left, and remove chunks orphaned long ago; in a thread.

        :return: a Deferred; it fails with
            :class:`~txsmtp.queue.errors.QueueLockedError` when a live
            process uses this node name, or
            :class:`~txsmtp.queue.errors.QueueError` (unreachable, refused).
        """
        if self._state != "new":
            return defer.fail(QueueError(f"{self!r} was already opened"))
        self._state = "opening"
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._openBlocking)

        def failed(f: Failure) -> Failure:
            self._state = "closed"
            return f

        return d.addCallbacks(self._started, failed)

    def openNow(self) -> None:
        """
        :meth:`open` on the calling thread, waiting for the database: for
        start-up, before the reactor runs, so that a refusal is reported at
        once.

        :raise QueueLockedError: a live process uses this node name.
        :raise QueueError: the database cannot be reached or used.
        """
        if self._state != "new":
            raise QueueError(f"{self!r} was already opened")
        self._state = "opening"
        try:
            opened = self._openBlocking()
        except BaseException:
            self._state = "closed"
            raise
        self._started(opened)

    def _openBlocking(self) -> tuple[Any, str]:
        connection = None
        try:
            connection = connect(self.url)
            schema, before, after = migrate(connection)
            channel = f"txsmtp_queue.{schema}"
            takeNode(connection, channel, f"node:{self.node}")
            with connection.transaction():
                ended = queries.clearLeases(connection, self.node)
            with connection.transaction():
                orphans = queries.removeOrphanChunks(connection, ORPHAN_AGE)
        except BaseException as e:
            if connection is not None:
                connection.close()
            if isinstance(e, Exception) and not isinstance(e, QueueError):
                raise asQueueError(e, "opening the queue") from e
            raise
        if before != after:
            _log.info(
                "queue {store}: schema {schema} migrated from version {before} to {after}",
                store=self,
                schema=schema,
                before=before,
                after=after,
            )
        if ended or orphans:
            _log.info(
                "queue {store}: ended {leases} leases of this node's previous run, removed "
                "{orphans} chunks of bodies never committed",
                store=self,
                leases=ended,
                orphans=orphans,
            )
        return connection, schema

    def _started(self, opened: tuple[Any, str]) -> None:
        connection, schema = opened
        self.schema = schema
        self.channel = f"txsmtp_queue.{schema}"
        self._listener = Listener(
            self.url, self.channel, f"node:{self.node}", self._reactor,
            self._notified, self._wake, self._wake, self.pollInterval,
        )  # fmt: skip
        self._listener.start(connection)
        self._pool = ConnectionPool(self.url, self.poolSize, self._reactor, "txsmtp-pg")
        self._pool.start()
        self.slots = DestinationSlots(self.url, self._reactor)
        self.slots.start()
        if self._state != "opening":  # closed meanwhile
            self._stop()
            return
        self._state = "open"
        self._cleaner = task.LoopingCall(self._removeOrphans)
        self._cleaner.clock = self._reactor
        self._cleaner.start(ORPHAN_INTERVAL, now=False).addErrback(
            lambda f: _log.failure("queue {store}: removing orphan chunks", f, store=self)
        )

    def close(self) -> Deferred[None]:
        """Let the work asked for finish, then close every connection (ending the node's lock)."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return defer.succeed(None)
        self._state = "closed"
        return self._stop()

    def _stop(self) -> Deferred[None]:
        cleaner, self._cleaner = self._cleaner, None
        if cleaner is not None and cleaner.running:
            cleaner.stop()
        stops = [part.stop() for part in (self.slots, self._listener, self._pool) if part is not None]
        return defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def _removeOrphans(self) -> Deferred[None]:
        d = self._run(queries.removeOrphanChunks, ORPHAN_AGE)

        def done(n: int) -> None:
            if n:
                _log.info("queue {store}: removed {n} chunks of bodies never committed", store=self, n=n)

        def failed(f: Failure) -> None:
            _log.warn("queue {store}: removing orphan chunks failed: {error}", store=self, error=f.getErrorMessage())

        return d.addCallbacks(done, failed)

    # -- running work -------------------------------------------------------------------------

    def _notOpen(self) -> QueueError | None:
        if self._state != "open":
            return QueueError(f"the queue {redactURL(self.url)} is not open")
        return None

    def _run(self, function: Callable[..., Any], *args: Any, durable: bool = True, isolation: str | None = None) -> Deferred[Any]:
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        assert self._pool is not None
        return self._pool.run(function, *args, durable=durable, isolation=isolation)

    def _notified(self, payload: str) -> None:
        # This node's own commits woke it already.
        if payload != self.node:
            self._wake()

    # -- new messages -------------------------------------------------------------------------

    def newMessage(self) -> PostgresWriter:
        """A :class:`~txsmtp.queue.pgwriter.PostgresWriter` for a new message."""
        return PostgresWriter(self)

    # -- claims and outcomes ------------------------------------------------------------------

    def claim(self, owner: str, limit: int, leaseSeconds: float) -> Deferred[list[Lease]]:
        """
        Lease up to ``limit`` due recipients (not held, due, not under a
        live lease), skipping those another node is claiming this instant;
        one lease per message, the earliest due first.
        """
        now = self.clock.seconds()
        return self._run(queries.claim, owner, limit, now, now + leaseSeconds, durable=False)

    def renew(self, lease: Lease, leaseSeconds: float) -> Deferred[bool]:
        """Extend ``lease`` to now plus ``leaseSeconds``: ``False`` when its token no longer holds."""
        expires = self.clock.seconds() + leaseSeconds

        def renewed(held: bool) -> bool:
            if held:
                lease.expires = expires
            return held

        return self._run(queries.renew, lease, expires, durable=False).addCallback(renewed)

    def record(self, lease: Lease, outcomes: Iterable[RecipientOutcome]) -> Deferred[bool]:
        """
        Record ``outcomes`` if the lease's token holds on every one of
        their recipients, else nothing (``False``); the rules are
        :meth:`txsmtp.queue.sqlite.SQLiteStore.record`'s.
        """
        return self._run(queries.record, lease, list(outcomes), self.clock.seconds(), durable=False)

    # -- reading ------------------------------------------------------------------------------

    def openBody(self, messageId: str) -> Deferred[IO[bytes]]:
        """
        The body, copied (a few chunks at a time, in one snapshot) into a
        temporary file kept in memory up to :data:`SPOOL_SIZE`; fails with
        :class:`KeyError` for an unknown id.
        """
        error = self._notOpen()
        if error is not None:
            return defer.fail(error)
        if not validId(messageId):
            return defer.fail(KeyError(messageId))
        return self._run(_readBody, messageId, isolation="REPEATABLE READ")

    def nextDue(self) -> Deferred[float | None]:
        """When the earliest recipient not held can be claimed (``None``: none)."""
        return self._run(queries.nextDue)

    def list(self) -> Deferred[builtins.list[QueuedMessage]]:
        """Every message with its recipients, oldest (by arrival) first."""
        return self._run(queries.messages, None, isolation="REPEATABLE READ")

    def stats(self) -> Deferred[dict[str, Any]]:
        """Counts by state and the oldest arrival, without reading the messages."""
        return self._run(queries.stats, isolation="REPEATABLE READ")

    def show(self, messageId: str) -> Deferred[QueuedMessage | None]:
        """One message with its recipients, or ``None``."""
        d = self._run(queries.messages, messageId, isolation="REPEATABLE READ")
        return d.addCallback(lambda found: found[0] if found else None)

    # -- the operator's commands --------------------------------------------------------------

    def hold(self, messageId: str) -> Deferred[bool]:
        """Hold every recipient of the message."""
        return self._run(queries.hold, messageId)

    def release(self, messageId: str) -> Deferred[bool]:
        """Release a held message: due now; every node is woken."""
        return self._run(self._withNotify(queries.release), messageId, self.clock.seconds()).addCallback(self._wake)

    def delete(self, messageId: str) -> Deferred[bool]:
        """Remove a message, body and all, without any report."""
        return self._run(queries.delete, messageId)

    def flush(self, messageId: str | None = None) -> Deferred[int]:
        """Deferred recipients (of one message, or all) due now; every node is woken."""
        return self._run(self._withNotify(queries.flush), messageId, self.clock.seconds()).addCallback(self._wake)

    def _withNotify(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def withNotify(db: Any, *args: Any) -> Any:
            result = function(db, *args)
            assert self.channel is not None
            queries.notify(db, self.channel, self.node)
            return result

        return withNotify


def _readBody(db: Any, messageId: str) -> IO[bytes]:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_SIZE, prefix="txsmtp-body-")
    try:
        if not queries.readBody(db, messageId, spool):
            raise KeyError(messageId)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool
