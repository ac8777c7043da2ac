"""
The PostgreSQL store (:class:`txsmtp.queue.postgres.PostgresStore`) against
a real PostgreSQL server (``TXSMTP_TEST_POSTGRES``, see
:mod:`tests.pghelpers`): the store conformance suite, then what only a
shared store has: two stores (nodes) on one queue, node names, wake-ups
across nodes, destination slots, chunked bodies, the database going away.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from tests.pghelpers import freshSchema
from tests.queue_conformance import START, StoreConformanceMixin, recipients
from tests.twistd_helpers import withTimeout
from txsmtp.queue.errors import QueueError
from txsmtp.queue.model import AttemptResult, RecipientOutcome, Result


class PostgresConformanceTests(StoreConformanceMixin, unittest.TestCase):
    """The store contract, on PostgreSQL."""

    def makeStore(self) -> Any:
        from txsmtp.queue.postgres import PostgresStore

        return PostgresStore(freshSchema(self), clock=self.clock, node="node1", pollInterval=3600)


class _Nodes(unittest.TestCase):
    """Stores (nodes) on one fresh schema, closed after the test; a shared task.Clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.url = freshSchema(self)

    def node(self, name: str, **kwargs: Any) -> Any:
        from txsmtp.queue.postgres import PostgresStore

        kwargs.setdefault("pollInterval", 3600)
        store = PostgresStore(self.url, clock=self.clock, node=name, **kwargs)
        self.addCleanup(store.close)
        return store

    async def openNode(self, name: str, **kwargs: Any) -> Any:
        store = self.node(name, **kwargs)
        await store.open()
        return store

    async def enqueue(self, store: Any, *addresses: str, body: bytes = b"Subject: t\r\n\r\nHi.\r\n") -> str:
        writer = store.newMessage()
        writer.write(body)
        messageId: str = await writer.commit("s@example.org", recipients(*(addresses or ("r@example.com",))), {})
        return messageId

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """A query on the test schema, on a connection of the test's own (blocking)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            cursor = db.execute(query, args or None)
            return cursor.fetchall() if cursor.description else []


class SharedQueueTests(_Nodes):
    """What two nodes on one queue may and may not do to each other."""

    async def test_claimsDisjoint(self) -> None:
        """Two nodes claiming at once never take the same recipient, and together take all."""
        a, b = await self.openNode("a"), await self.openNode("b")
        ids = [await self.enqueue(a, "x@example.com", "y@example.com") for _ in range(30)]
        claimed: list[tuple[str, int]] = []
        while True:
            results = await defer.gatherResults(
                [a.claim("a", 7, 300), b.claim("b", 7, 300), a.claim("a", 5, 300), b.claim("b", 5, 300)]
            )
            got = [(lease.message.id, r.index) for leases in results for lease in leases for r in lease.message.recipients]
            if not got:
                break
            claimed += got
        self.assertEqual(len(claimed), len(set(claimed)))
        self.assertEqual(sorted(claimed), sorted((i, n) for i in ids for n in (0, 1)))

    async def test_nodeNameTaken(self) -> None:
        """A second live process under one node name is refused; once the first closes, it opens."""
        from txsmtp.queue.errors import QueueLockedError

        first = await self.openNode("same")
        second = self.node("same")
        error = await self.assertFailure(second.open(), QueueLockedError)
        self.assertIn("'same'", str(error))
        await first.close()
        third = await self.openNode("same")
        self.assertEqual(await third.list(), [])

    async def test_reopenEndsOwnLeasesOnly(self) -> None:
        """Opening ends the leases this node's previous run left, not another node's."""
        a, b = await self.openNode("a"), await self.openNode("b")
        await self.enqueue(a, "1@example.com")
        await self.enqueue(a, "2@example.com")
        (leaseA,) = await a.claim("a", 1, 600)
        (leaseB,) = await b.claim("b", 1, 600)
        await a.close()
        again = await self.openNode("a")
        self.assertEqual(
            self.sql("SELECT lease_owner FROM recipients ORDER BY lease_owner NULLS FIRST"), [(None,), ("b",)]
        )
        # a's recipient is free again (with a new token); b's lease still holds.
        (retaken,) = await again.claim("a", 10, 600)
        self.assertEqual(retaken.message.id, leaseA.message.id)
        self.assertNotEqual(retaken.token, leaseA.token)
        self.assertFalse(await again.record(leaseA, [RecipientOutcome(0, Result.DELIVERED)]))
        self.assertTrue(await b.record(leaseB, [RecipientOutcome(0, Result.DELIVERED)]))

    async def test_wakeAcrossNodes(self) -> None:
        """A commit on one node, and a flush on another, wake the other nodes' listeners."""
        a, b = await self.openNode("a"), await self.openNode("b")
        woken: list[defer.Deferred[None]] = [defer.Deferred()]

        def listener() -> None:
            if not woken[-1].called:
                woken[-1].callback(None)

        b.addWakeListener(listener)
        await self.enqueue(a)
        await withTimeout(woken[-1], 10, lambda: "node b was not woken by node a's commit")
        woken.append(defer.Deferred())
        self.assertEqual(await a.flush(), 0)
        await withTimeout(woken[-1], 10, lambda: "node b was not woken by node a's flush")

    async def test_pollingFallback(self) -> None:
        """With no notification at all, a node is woken every pollInterval (real) seconds."""
        store = await self.openNode("a", pollInterval=0.2)
        woken: defer.Deferred[None] = defer.Deferred()
        store.addWakeListener(lambda: woken.called or woken.callback(None))
        await withTimeout(woken, 10, lambda: "no poll")

    async def test_recordSameMessageTwoNodes(self) -> None:
        """Two nodes recording the last recipients of one message at once: the message goes, body too."""
        a, b = await self.openNode("a"), await self.openNode("b")
        messageId = await self.enqueue(a, "1@example.com", "2@example.com")
        (lease,) = await a.claim("a", 1, 600)
        (other,) = await b.claim("b", 1, 600)
        self.assertEqual({lease.message.id, other.message.id}, {messageId})
        done = await defer.gatherResults(
            [
                a.record(lease, [RecipientOutcome(lease.message.recipients[0].index, Result.DELIVERED)]),
                b.record(other, [RecipientOutcome(other.message.recipients[0].index, Result.DELIVERED)]),
            ]
        )
        self.assertEqual(done, [True, True])
        self.assertEqual(self.sql("SELECT count(*) FROM messages")[0][0], 0)
        self.assertEqual(self.sql("SELECT count(*) FROM body_chunks")[0][0], 0)

    async def test_migrationsTogether(self) -> None:
        """Nodes opening together on an empty schema take turns: one migrates, all open."""
        stores = [self.node(f"n{i}") for i in range(4)]
        await defer.gatherResults([s.open() for s in stores])
        self.assertEqual(self.sql("SELECT version FROM schema_version"), [(1,)])

    async def test_newerSchemaRefused(self) -> None:
        """A queue written by a newer txsmtp is refused, and left as it is."""
        await (await self.openNode("a")).close()
        self.sql("UPDATE schema_version SET version = 99")
        error = await self.assertFailure(self.node("b").open(), QueueError)
        self.assertIn("newer", str(error))
        self.assertEqual(self.sql("SELECT version FROM schema_version"), [(99,)])


class BodyTests(_Nodes):
    """Bodies in chunks: streamed in with back-pressure, read back whole, removed with the message."""

    async def test_largeBody(self) -> None:
        from txsmtp.queue.postgres import CHUNK_SIZE

        store = await self.openNode("a")
        writer = store.newMessage()
        body = bytes(range(256)) * (CHUNK_SIZE * 5 // 256) + b"tail\r\n"
        waited = 0
        for i in range(0, len(body), 65536):
            d = writer.write(body[i : i + 65536])
            if isinstance(d, defer.Deferred):
                waited += 1
                await d
        self.assertGreater(waited, 0, "the writer never asked to wait")
        messageId = await writer.commit("s@example.org", recipients("r@example.com"), {})
        chunks = self.sql("SELECT seq, length(data) FROM body_chunks ORDER BY seq")
        self.assertEqual([c[0] for c in chunks], list(range(6)))
        self.assertEqual(sum(c[1] for c in chunks), len(body))
        self.assertEqual(max(c[1] for c in chunks), CHUNK_SIZE)
        f = await store.openBody(messageId)
        try:
            self.assertEqual(f.read(), body)
            f.seek(3)
            self.assertEqual(f.read(4), body[3:7])
        finally:
            f.close()
        (lease,) = await store.claim("a", 10, 60)
        self.assertTrue(await store.record(lease, [RecipientOutcome(0, Result.DELIVERED)]))
        self.assertEqual(self.sql("SELECT count(*) FROM body_chunks"), [(0,)])

    async def readBody(self, store: Any, messageId: str) -> bytes:
        f = await store.openBody(messageId)
        try:
            return bytes(f.read())
        finally:
            f.close()

    async def test_abortRemovesChunks(self) -> None:
        from txsmtp.queue.postgres import CHUNK_SIZE

        store = await self.openNode("a")
        writer = store.newMessage()
        for _ in range(3):
            d = writer.write(b"x" * CHUNK_SIZE)
            if d is not None:
                await d
        writer.abort()
        await self.enqueue(store)  # a later turn: the removal was asked for before
        await store.list()
        self.assertEqual(self.sql("SELECT count(*) FROM body_chunks WHERE message = %s", writer.id), [(0,)])
        self.assertEqual(len(await store.list()), 1)

    async def test_orphansRemovedAtOpen(self) -> None:
        """Chunks of a writer that died (no message row) are removed at an open a day later."""
        await (await self.openNode("a")).close()
        self.sql(
            "INSERT INTO body_chunks (message, seq, data, written) VALUES"
            " ('dead', 0, 'x', now() - interval '2 days'), ('young', 0, 'y', now())"
        )
        await self.openNode("b")
        self.assertEqual(self.sql("SELECT message FROM body_chunks"), [("young",)])


class DatabaseFailureTests(_Nodes):
    """The database away: clear errors, nothing half-queued, and the store goes on once it is back."""

    async def test_unreachable(self) -> None:
        from txsmtp.queue.postgres import PostgresStore

        store = PostgresStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=3", clock=self.clock, node="x")
        error = await self.assertFailure(store.open(), QueueError)
        self.assertIn("unreachable", str(error))

    async def test_connectionsKilled(self) -> None:
        """
        The node's connections killed (as a restart of PostgreSQL does):
        work asked for afterwards finds its connection dead at BEGIN, and
        is done on a new one; nothing fails.
        """
        name = "txsmtp-test-" + self.url.rpartition("%3D")[2]  # this test's connections only
        self.url += f"&application_name={name}"
        store = await self.openNode("a", poolSize=2)
        await self.enqueue(store)
        killed = self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND state = 'idle'",
            name,
        )
        self.assertGreaterEqual(len(killed), 2)
        await defer.gatherResults([defer.Deferred.fromCoroutine(self.enqueue(store)) for _ in range(4)])
        self.assertEqual(len(await store.list()), 5)

    async def test_failureInTransaction(self) -> None:
        """An error inside a transaction fails that work only (QueueError); nothing of it stays."""
        store = await self.openNode("a", poolSize=1)
        self.sql("ALTER TABLE recipients ADD CONSTRAINT short CHECK (length(address) < 30)")
        writer = store.newMessage()
        writer.write(b"x\r\n")
        error = await self.assertFailure(
            writer.commit("s@example.org", recipients("a-very-long-address-indeed@example.com"), {}), QueueError
        )
        self.assertIn("short", str(error))
        self.assertEqual(self.sql("SELECT count(*) FROM messages"), [(0,)])
        self.assertEqual(self.sql("SELECT count(*) FROM body_chunks"), [(0,)])
        await self.enqueue(store)
        self.assertEqual(len(await store.list()), 1)


class DestinationSlotTests(_Nodes):
    """destinationConcurrency across nodes: advisory-lock slots."""

    async def acquireWithin(self, slots: Any, key: str, limit: int, seconds: float = 10) -> Any:
        """A slot as soon as one is free: a slot given back is free once the server has done the unlock."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + seconds  # type: ignore[attr-defined]
        while (slot := await slots.acquire(key, limit)) is None:
            self.assertLess(reactor.seconds(), deadline, f"no slot of {key} was freed")  # type: ignore[attr-defined]
            await task.deferLater(reactor, 0.05, lambda: None)
        return slot

    async def test_slotsShared(self) -> None:
        a, b = await self.openNode("a"), await self.openNode("b")
        one = await a.slots.acquire("mx:example.com", 2)
        two = await a.slots.acquire("mx:example.com", 2)
        self.assertEqual((one.number, two.number), (0, 1))
        self.assertIsNone(await b.slots.acquire("mx:example.com", 2))
        self.assertIsNone(await a.slots.acquire("mx:example.com", 2))
        self.assertIsNotNone(await b.slots.acquire("mx:other.example", 2))
        a.slots.release(one)
        self.assertEqual((await self.acquireWithin(b.slots, "mx:example.com", 2)).number, 0)
        await a.close()  # its connection goes, and its slots with it, once its backend has ended
        self.assertEqual((await self.acquireWithin(b.slots, "mx:example.com", 2)).number, 1)


class SharedSchedulerTests(_Nodes):
    """Two schedulers on two nodes of one queue: destinationConcurrency holds for both together."""

    describe: Any = staticmethod(lambda: "")

    async def until(self, condition: Any, what: str, timeout: float = 15.0) -> None:
        """
        Wait (on the reactor, bounded) until ``condition()`` holds, the
        schedulers' clock moving on by a slot retry at each look.
        """
        from twisted.internet import reactor

        from txsmtp.queue.scheduler import SLOT_RETRY

        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while not condition():
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                self.fail(f"timed out waiting for {what}: {self.describe()}")
            await task.deferLater(reactor, 0.02, lambda: None)
            self.clock.advance(SLOT_RETRY)

    def stopScheduler(self, scheduler: Any) -> defer.Deferred[None]:
        d: defer.Deferred[None] = scheduler.stopService()
        self.clock.advance(scheduler.stopTimeout)  # attempts still waiting are cancelled
        return d

    async def test_destinationConcurrencyAcrossNodes(self) -> None:
        from tests.queuefakes import FakeOutbound, StaticRouter
        from txsmtp.queue.scheduler import SLOT_RETRY, Scheduler

        a, b = await self.openNode("a"), await self.openNode("b")
        outbounds = [FakeOutbound(), FakeOutbound()]
        schedulers = [
            # At most 3 recipients each: both nodes hold work for example.com.
            Scheduler(
                store, StaticRouter(), outbound, None, owner=store.node, destinationConcurrency=2,
                concurrency=3, maxRecipients=1,
            )  # fmt: skip
            for store, outbound in zip((a, b), outbounds, strict=True)
        ]
        for i in range(6):
            await self.enqueue(a if i % 2 else b, f"r{i}@example.com")
        for s in schedulers:
            s.startService()
            self.addCleanup(self.stopScheduler, s)

        self.describe = lambda: (
            f"attempts {[len(o.attempts) for o in outbounds]}, waiting {[len(o.waiting) for o in outbounds]},"
            f" scheduler waiting {[s.waiting for s in schedulers]}, in flight {[s.inFlight for s in schedulers]},"
            f" blocked {[list(s._blocked) for s in schedulers]}"
        )

        def waiting() -> list[Any]:
            return outbounds[0].waiting + outbounds[1].waiting

        def started() -> int:
            return len(outbounds[0].attempts) + len(outbounds[1].attempts)

        delivered = 0
        while delivered < 6:
            expected = min(2, 6 - delivered)
            await self.until(lambda n=expected: len(waiting()) == n, "two attempts under way")
            # Both nodes hold claimed work, but no third attempt starts,
            # however often the slot timer fires.
            for _ in range(3):
                self.clock.advance(SLOT_RETRY)
                await b.list()
                await a.list()
            self.assertEqual(len(waiting()), expected)
            attempt = waiting()[0]
            attempt.deferred.callback([AttemptResult(Result.DELIVERED, "2.0.0")] * len(attempt.recipients))
            delivered += 1
        self.assertEqual(started(), 6)
        self.assertEqual(sorted(len(o.attempts) > 0 for o in outbounds), [True, True], "one node did all")
        await self.until(lambda: not self.sql("SELECT 1 FROM messages"), "the queue to empty")
