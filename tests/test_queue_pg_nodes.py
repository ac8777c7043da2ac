"""
Three ``twistd smtp`` nodes on one PostgreSQL queue, end to end: real
processes, Postfix's smtp-sink as the next hop, real PostgreSQL (the
shared test server of ``TXSMTP_TEST_POSTGRES``, one fresh schema per
test; a private cluster, :mod:`tests.pgcluster`, where the database is
restarted).

1. Mail sent to all three nodes is delivered exactly once.
2. ``kill -9`` of a node in the middle of deliveries: its leases expire,
   the others deliver what it held; nothing acknowledged is lost, the
   duplicates are at most its deliveries in flight (counted in the output).
3. PostgreSQL restarted under load: ``451 4.3.0`` at the end of DATA while
   it is down, nothing half queued; the nodes reconnect by themselves and
   go on; nothing acknowledged is lost.
4. ``txsmtp queue list`` and ``flush`` against the shared queue while the
   nodes run: the flush reaches the nodes through NOTIFY.

Nothing sleeps: waits are on files (inotify), log lines, processes, and
polls of the database through the reactor with deadlines.
"""

from __future__ import annotations

import re
import time

from twisted.trial import unittest

from tests.pgcluster import privateCluster
from tests.pghelpers import freshSchema, requirePostgres, withSearchPath
from tests.pgnodes import (
    Load,
    explainDuplicates,
    incomplete,
    pollUntil,
    query,
    queueCommand,
    queueEmpty,
    queueIds,
    queueList,
    rawTransaction,
    startNodes,
    tokenCounts,
)
from tests.relay_helpers import DirectoryWatch, freePort, sinkDirectory, startSinkOn
from tests.twistd_helpers import RunningTwistd, connectClient, withTimeout


def report(text: str) -> None:
    """A line in the test's output (pytest -s, trial's log)."""
    print(f"\n{text}")


def delivered(node: RunningTwistd) -> int:
    """How many deliveries ``node`` logged (``result=relayed`` or ``delivered``)."""
    return len(re.findall(r" result=(?:relayed|delivered) ", node.log))


class SharedQueueTests(unittest.TestCase):
    """1. Three nodes, one queue: every message exactly once."""

    timeout = 180

    async def test_exactly_once(self) -> None:
        total = 300
        url = freshSchema(self)
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        sink = await startSinkOn(self, freePort(), sinkDir)
        started = time.monotonic()
        nodes = await startNodes(self, url, sink.port, 3)
        load = Load([n.port for n in nodes])
        tokens = [f"once-{i}" for i in range(total)]
        await withTimeout(load.sendAll(tokens), 120, load.summary)
        await load.close()
        self.assertEqual(len(load.acked), total, load.summary())
        await watch.waitUntil(
            lambda names: set(tokenCounts(watch)) >= load.acked,
            120,
            lambda: f"{len(tokenCounts(watch))} of {total} at the sink",
        )
        await pollUntil(lambda: queueEmpty(url), 30, lambda: "the queue is not empty")
        counts = tokenCounts(watch)
        duplicates = {t: c for t, c in counts.items() if c > 1}
        perNode = [delivered(n) for n in nodes]
        report(
            f"exactly once: {total} messages through 3 nodes in {time.monotonic() - started:.1f}s, "
            f"relayed per node {perNode}, {len(duplicates)} duplicated"
        )
        self.assertEqual(set(counts), set(tokens))
        self.assertEqual(duplicates, {})
        self.assertEqual(incomplete(watch), [])
        # Every node took part: the queue is shared, not partitioned by who accepted.
        self.assertTrue(all(perNode), perNode)


class KillTests(unittest.TestCase):
    """2. kill -9 of one node while it delivers."""

    timeout = 240

    async def test_kill_one_node(self) -> None:
        total, concurrency = 60, 6
        url = freshSchema(self)
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        # Each delivery waits a second for the reply to its final dot: the
        # sink has the whole message by then, so a node killed in that second
        # leaves a message delivered but not recorded (a duplicate later).
        # Without PIPELINING (-p): smtp-sink sends the replies to commands
        # pipelined after the dot before the delayed reply to the dot.
        sink = await startSinkOn(self, freePort(), sinkDir, "-p", "-W", ".:1")
        nodes = await startNodes(self, url, sink.port, 3, lease="10s", concurrency=concurrency)
        victim, survivors = nodes[0], nodes[1:]
        load = Load([n.port for n in nodes])
        tokens = [f"kill-{i}" for i in range(total)]
        await withTimeout(load.sendAll(tokens), 90, load.summary)
        await load.close()
        self.assertEqual(len(load.acked), total, load.summary())
        # Wait until node1 holds leases (deliveries under way), then kill it.
        leased = "SELECT DISTINCT message FROM recipients WHERE lease_owner = %s"
        held: list[str] = []

        async def victimDelivers() -> bool:
            held[:] = [row[0] for row in await query(url, leased, "node1")]
            return bool(held)

        await pollUntil(victimDelivers, 60, lambda: f"node1 never held a lease:\n{victim.log[-3000:]}", 0.05)
        victim.process.signal("KILL")
        killedAt = time.monotonic()
        await victim.process.whenEnded()
        atKill = sum(tokenCounts(watch).values())
        inFlight = sorted({row[0] for row in await query(url, leased, "node1")} | set(held))
        self.assertLess(atKill, total, "the kill came after the last delivery")
        await watch.waitUntil(
            lambda names: set(tokenCounts(watch)) >= load.acked,
            120,
            lambda: f"missing: {sorted(load.acked - set(tokenCounts(watch)))}\n{survivors[0].log[-3000:]}",
        )
        await pollUntil(lambda: queueEmpty(url), 60, lambda: "the queue is not empty")
        took = time.monotonic() - killedAt
        counts = tokenCounts(watch)
        duplicates = {t: c for t, c in counts.items() if c > 1}
        # What node1 held was delivered by another node once its lease lapsed.
        logs = "".join(n.log for n in survivors)
        takenOver = [q for q in inFlight if f"{q}: to=<" in logs]
        report(
            f"kill -9: {atKill} of {total} at the sink at the kill, node1 held {len(inFlight)} "
            f"messages ({len(takenOver)} then delivered by node2/node3), "
            f"{len(duplicates)} duplicated {sorted(duplicates)}; all delivered {took:.1f}s after the kill"
        )
        self.assertEqual(set(counts), set(tokens))
        self.assertTrue(inFlight)
        self.assertEqual(sorted(takenOver), inFlight)
        # Only messages node1 held at the kill came twice: those in flight.
        ids = queueIds(watch, nodes)
        self.assertLessEqual(
            {ids[t] for t in duplicates}, set(inFlight), explainDuplicates(duplicates, ids, nodes)
        )
        self.assertLessEqual(
            len(duplicates), min(len(inFlight), concurrency), explainDuplicates(duplicates, ids, nodes)
        )
        self.assertTrue(all(c == 2 for c in duplicates.values()), explainDuplicates(duplicates, ids, nodes))
        self.assertEqual(incomplete(watch), [])


class DatabaseRestartTests(unittest.TestCase):
    """3. PostgreSQL (a private cluster) stopped and started again under load."""

    timeout = 240

    async def test_restart_under_load(self) -> None:
        requirePostgres()
        cluster = privateCluster(self)
        url = withSearchPath(cluster.url, "q")
        await query(cluster.url, "CREATE SCHEMA q")
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        sink = await startSinkOn(self, freePort(), sinkDir)
        pool = 10  # --queue-pool's default
        nodes = await startNodes(self, url, sink.port, 3, "--queue-pool", str(pool), lease="10s")
        load = Load([n.port for n in nodes], poolSize=3)
        # Phase 1: load going on; the database stops once 40 are acknowledged.
        first = load.sendAll([f"before-{i}" for i in range(120)])
        await withTimeout(load.when(lambda: len(load.acked) >= 40), 60, load.summary)
        await cluster.stop("fast")
        stoppedAt = time.monotonic()
        # While it is down each node answers 451 4.3.0 at the end of DATA.
        probes = []
        for i, node in enumerate(nodes):
            client = await connectClient(self, node.port)
            await client.command(b"EHLO client.test.invalid")
            replies = await rawTransaction(client, f"down-{i}")
            probes.append(replies)
            await client.close()
        for replies in probes:
            self.assertEqual([r.code for r in replies[:3]], [250, 250, 354], replies)
            self.assertEqual((replies[3].code, replies[3].enhanced), (451, "4.3.0"), replies[3])
        await withTimeout(first, 120, load.summary)
        refusedBefore = len(load.refused)
        # Down until every node's scheduler has tried again, and failed (it
        # polls the database every few seconds).
        claimFailed = "Queue scheduler: claiming due recipients failed"
        failedBefore = [n.log.count(claimFailed) for n in nodes]
        await pollUntil(
            lambda: all(n.log.count(claimFailed) > b for n, b in zip(nodes, failedBefore, strict=True)),
            30,
            lambda: f"a scheduler did not notice: {[n.log.count(claimFailed) for n in nodes]}",
        )
        downFor = time.monotonic() - stoppedAt
        await cluster.start()
        restartedAt = time.monotonic()
        # They reconnect by themselves: a new transaction on each is accepted.
        refusedAfter = []
        for i, node in enumerate(nodes):
            attempts = await self._acceptedAgain(node, f"node{i + 1}")
            load.acked.add(attempts[-1])
            refusedAfter.append(attempts[:-1])
        reconnected = time.monotonic() - restartedAt
        # Phase 2: the load goes on.
        second = [f"after-{i}" for i in range(90)]
        await withTimeout(load.sendAll(second), 90, load.summary)
        await load.close()
        for i, token in enumerate(second):
            if token not in load.acked:
                refusedAfter[i % len(nodes)].append(token)
        # A connection of a node's pool that was open at the stop fails when
        # next used (a 451 if a message was using it), once: then it is
        # replaced.  So at most the pool's size of refusals per node.
        self.assertTrue(all(len(r) <= pool for r in refusedAfter), (refusedAfter, load.summary()))
        await watch.waitUntil(
            lambda names: set(tokenCounts(watch)) >= load.acked,
            120,
            lambda: f"missing: {sorted(load.acked - set(tokenCounts(watch)))}",
        )
        await pollUntil(lambda: queueEmpty(url), 60, lambda: "the queue is not empty")
        # Bodies of transactions cut short (chunks written, never committed)
        # are garbage the store removes later, invisible to the schedulers.
        [(orphans,)] = await query(url, "SELECT count(DISTINCT message) FROM body_chunks")
        counts = tokenCounts(watch)
        duplicates = {t: c for t, c in counts.items() if c > 1}
        report(
            f"PostgreSQL restart: down {downFor:.2f}s ({refusedBefore} of the load refused), accepting again {reconnected:.2f}s after the start "
            f"({[len(r) for r in refusedAfter]} refused per node after the start); "
            f"load: {load.summary()}; {len(counts)} delivered, {len(duplicates)} duplicated {sorted(duplicates)}; "
            f"{orphans} uncommitted bodies left"
        )
        # Nothing refused was queued: not delivered, not left in the queue.
        refused = set(load.refused) | {f"down-{i}" for i in range(len(nodes))} | {t for r in refusedAfter for t in r}
        self.assertEqual(refused & set(counts), set())
        self.assertEqual(incomplete(watch), [])
        # Duplicates: deliveries in flight at the stop (their outcome could
        # not be recorded), at most the destination's concurrency.
        explanation = explainDuplicates(duplicates, queueIds(watch, nodes), nodes)
        self.assertLessEqual(len(duplicates), 5, explanation)
        self.assertTrue(all(c == 2 for c in duplicates.values()), explanation)

    async def _acceptedAgain(self, node: RunningTwistd, name: str) -> list[str]:
        """Send to ``node`` until a message is accepted (polling); the tokens tried, the accepted last."""
        client = await connectClient(self, node.port)
        await client.command(b"EHLO client.test.invalid")
        attempts: list[str] = []

        async def accepted() -> bool:
            attempts.append(f"up-{name}-{len(attempts)}")
            replies = await rawTransaction(client, attempts[-1])
            return bool(replies[-1].code == 250)

        await pollUntil(accepted, 60, lambda: f"{name} does not accept again:\n{node.log[-3000:]}", 0.5)
        await client.close()
        return attempts


class QueueCommandTests(unittest.TestCase):
    """4. ``txsmtp queue list`` and ``flush`` on the shared queue while the nodes run."""

    timeout = 180

    async def test_list_and_flush(self) -> None:
        url = freshSchema(self)
        port = freePort()
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        soft = await startSinkOn(self, port, sinkDir, "-r", "rcpt")
        # Retries an hour away: only a flush brings these messages out again.
        nodes = await startNodes(self, url, port, 3, "--retry-min", "1h", "--retry-max", "2h")
        load = Load([n.port for n in nodes])
        tokens = [f"flush-{i}" for i in range(6)]
        await withTimeout(load.sendAll(tokens), 60, load.summary)
        await load.close()
        self.assertEqual(load.acked, set(tokens), load.summary())

        def deferredCount() -> int:
            return sum(n.log.count("result=deferred") for n in nodes)

        await pollUntil(lambda: deferredCount() >= len(tokens), 30, lambda: f"{deferredCount()} deferred")
        listed = await queueList(url)
        self.assertEqual(len(listed), len(tokens), listed)
        for entry in listed:
            [recipient] = entry["recipients"]
            self.assertEqual(recipient["address"], "carol@remote.test")
            self.assertEqual(recipient["state"], "deferred")
            self.assertRegex(recipient["last_error"] or "", r"4\d\d")
        await soft.stop()
        await startSinkOn(self, port, sinkDir)
        flushedAt = time.monotonic()
        result = await queueCommand(url, "flush")
        self.assertEqual(result.code, 0, result.describe())
        flushTook = time.monotonic() - flushedAt
        await watch.waitUntil(
            lambda names: set(tokenCounts(watch)) >= set(tokens),
            30,
            lambda: f"{sorted(tokenCounts(watch))} at the sink after the flush",
        )
        await pollUntil(lambda: queueEmpty(url), 30, lambda: "the queue is not empty")
        self.assertEqual(await queueList(url), [])
        relayed = [delivered(n) for n in nodes]
        report(
            f"queue flush: {len(tokens)} delivered {time.monotonic() - flushedAt:.1f}s after the flush "
            f"(the command took {flushTook:.1f}s), relayed per node {relayed}"
        )
        self.assertEqual(sorted(tokenCounts(watch).values()), [1] * len(tokens))

