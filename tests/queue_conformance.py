"""
The conformance tests every queue store passes
(:class:`txsmtp.queue.interfaces.IQueueStore`).

A store's test module mixes :class:`StoreConformanceMixin` into a
``twisted.trial.unittest.TestCase`` and defines :meth:`makeStore
<StoreConformanceMixin.makeStore>`::

    class SQLiteConformanceTests(StoreConformanceMixin, unittest.TestCase):
        def makeStore(self):
            return SQLiteStore(self.mktemp(), clock=self.clock)

The store's clock is :attr:`StoreConformanceMixin.clock`, a
``task.Clock``: time moves only when a test advances it.
"""

from __future__ import annotations

import string
from typing import Any

from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from txsmtp.queue.errors import QueueError
from txsmtp.queue.interfaces import IQueueStore, IQueueWriter
from txsmtp.queue.model import (
    Lease,
    QueuedMessage,
    QueuedRecipient,
    RecipientOutcome,
    RecipientState,
    Result,
)

__all__ = ["StoreConformanceMixin", "START"]

#: The clock's time when a test begins (2023-11-14T22:13:20Z).
START = 1_700_000_000.0

_ID_CHARACTERS = set(string.ascii_letters + string.digits)


def recipients(*addresses: str) -> list[QueuedRecipient]:
    """New recipients (their index is the store's to set)."""
    return [QueuedRecipient(index=-1, address=a) for a in addresses]


class StoreConformanceMixin:
    """
    Tests of the :class:`~txsmtp.queue.interfaces.IQueueStore` contract.
    Mix into a trial ``TestCase``; define :meth:`makeStore`.

    :ivar clock: the store's clock, at :data:`START` when a test begins.
    :ivar store: the store under test, open (closed after the test).
    """

    clock: task.Clock
    store: Any

    def makeStore(self) -> Any:
        """A new, not yet opened store whose clock is :attr:`clock`."""
        raise NotImplementedError

    def setUp(self) -> defer.Deferred[None]:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.store = self.makeStore()
        self.wakes = 0
        self.store.addWakeListener(self._woken)
        d: defer.Deferred[None] = defer.maybeDeferred(self.store.open)
        self.addCleanup(lambda: self.store.close())
        return d

    def _woken(self) -> None:
        self.wakes += 1

    # -- helpers ----------------------------------------------------------------------------

    async def enqueue(
        self,
        *addresses: str,
        body: bytes = b"Subject: test\r\n\r\nHello.\r\n",
        sender: str = "sender@example.org",
        envelope: dict[str, Any] | None = None,
        arrival: float | None = None,
        rcpts: list[QueuedRecipient] | None = None,
    ) -> str:
        writer = self.store.newMessage()
        for i in range(0, len(body), 7):
            writer.write(body[i : i + 7])
        if rcpts is None:
            rcpts = recipients(*(addresses or ("rcpt@example.com",)))
        return await writer.commit(sender, rcpts, envelope or {}, arrival)

    async def claimOne(self, leaseSeconds: float = 600) -> Lease:
        leases = await self.store.claim("node1", 100, leaseSeconds)
        self.assertEqual(len(leases), 1)
        lease: Lease = leases[0]
        return lease

    async def body(self, messageId: str) -> bytes:
        f = await self.store.openBody(messageId)
        try:
            return bytes(f.read())
        finally:
            f.close()

    async def state(self) -> list[dict[str, Any]]:
        """What the store holds, as ``toJSON`` gives it."""
        return [m.toJSON() for m in await self.store.list()]

    # -- interfaces and commits ---------------------------------------------------------------

    def test_interfaces(self) -> None:
        """The store provides IQueueStore, its writers IQueueWriter; the clock is the one given."""
        self.assertTrue(verifyObject(IQueueStore, self.store))
        writer = self.store.newMessage()
        self.assertTrue(verifyObject(IQueueWriter, writer))
        writer.abort()
        self.assertIs(self.store.clock, self.clock)

    async def test_commitAndShow(self) -> None:
        """A committed message: its envelope, its recipients, queued and due at arrival."""
        envelope = {
            "sender": "sender@example.org",
            "parameters": {"ret": "HDRS", "envid": "QQ314159"},
            "recipients": [{"address": "dropped"}],
            "connection": {"peer": "192.0.2.1"},
        }
        rcpts = [
            QueuedRecipient(7, "one@example.com", notify=("SUCCESS", "FAILURE")),
            QueuedRecipient(7, "two@example.net", orcpt=("rfc822", "Two@Example.net")),
        ]
        body = b"Subject: hi\r\n\r\n" + b"x" * 10_000 + b"\r\n"
        self.clock.advance(5)
        messageId = await self.enqueue(body=body, envelope=envelope, rcpts=rcpts)
        self.assertIsInstance(messageId, str)
        self.assertGreaterEqual(len(messageId), 16)
        self.assertTrue(set(messageId) <= _ID_CHARACTERS, messageId)
        m = await self.store.show(messageId)
        self.assertIsInstance(m, QueuedMessage)
        self.assertEqual(m.id, messageId)
        self.assertEqual(m.sender, "sender@example.org")
        self.assertEqual(m.arrival, START + 5)
        self.assertEqual(m.size, len(body))
        self.assertEqual(m.ret, "HDRS")
        self.assertEqual(m.envid, "QQ314159")
        self.assertNotIn("recipients", m.envelope)
        self.assertEqual(m.envelope["connection"], {"peer": "192.0.2.1"})
        self.assertEqual(
            m.recipients,
            [
                QueuedRecipient(0, "one@example.com", ("SUCCESS", "FAILURE"), None,
                                RecipientState.QUEUED, 0, START + 5, None, False),
                QueuedRecipient(1, "two@example.net", None, ("rfc822", "Two@Example.net"),
                                RecipientState.QUEUED, 0, START + 5, None, False),
            ],
        )
        self.assertEqual(await self.body(messageId), body)

    async def test_arrivalGiven(self) -> None:
        """``arrival`` given: the message arrived then, and is due then."""
        messageId = await self.enqueue("a@example.com", arrival=START - 100, sender="")
        m = await self.store.show(messageId)
        self.assertEqual((m.arrival, m.recipients[0].nextAttempt, m.sender), (START - 100, START - 100, ""))

    async def test_idsUnique(self) -> None:
        """Ids are unique, also for messages committed together."""
        ids = await defer.gatherResults([defer.Deferred.fromCoroutine(self.enqueue()) for _ in range(20)])
        ids += [await self.enqueue() for _ in range(5)]
        self.assertEqual(len(set(ids)), 25)
        self.assertEqual(sorted(m.id for m in await self.store.list()), sorted(ids))

    async def test_emptyBody(self) -> None:
        """A message with no write at all has an empty body."""
        writer = self.store.newMessage()
        messageId = await writer.commit("", recipients("a@example.com"), {})
        self.assertEqual(await self.body(messageId), b"")
        self.assertEqual((await self.store.show(messageId)).size, 0)

    async def test_bodySeekable(self) -> None:
        """openBody gives a binary file that can be read again from 0."""
        messageId = await self.enqueue(body=b"0123456789")
        f = await self.store.openBody(messageId)
        try:
            self.assertEqual(f.read(4), b"0123")
            f.seek(0)
            self.assertEqual(f.read(), b"0123456789")
        finally:
            f.close()

    async def test_unknownId(self) -> None:
        """Unknown ids: show None, openBody KeyError, hold/release/delete False, flush 0."""
        await self.enqueue()
        self.assertIsNone(await self.store.show("NoSuchMessage0000"))
        await self.assertFailure(self.store.openBody("NoSuchMessage0000"), KeyError)
        await self.assertFailure(self.store.openBody("../queue.sqlite"), KeyError)
        self.assertFalse(await self.store.hold("NoSuchMessage0000"))
        self.assertFalse(await self.store.release("NoSuchMessage0000"))
        self.assertFalse(await self.store.delete("NoSuchMessage0000"))
        self.assertEqual(await self.store.flush("NoSuchMessage0000"), 0)
        self.assertEqual(len(await self.store.list()), 1)

    async def test_abort(self) -> None:
        """An aborted message leaves nothing; it cannot be committed after."""
        writer = self.store.newMessage()
        writer.write(b"Subject: x\r\n\r\nbody\r\n")
        writer.abort()
        await self.assertFailure(writer.commit("a@example.org", recipients("b@example.com"), {}), QueueError)
        self.assertEqual(await self.store.list(), [])
        self.assertIsNone(await self.store.nextDue())

    async def test_commitTwice(self) -> None:
        """A writer commits once."""
        writer = self.store.newMessage()
        writer.write(b"x\r\n")
        await writer.commit("a@example.org", recipients("b@example.com"), {})
        await self.assertFailure(writer.commit("a@example.org", recipients("b@example.com"), {}), QueueError)
        self.assertEqual(len(await self.store.list()), 1)

    async def test_noRecipients(self) -> None:
        """A message needs a recipient: the commit fails and nothing is queued."""
        writer = self.store.newMessage()
        writer.write(b"x\r\n")
        await self.assertFailure(writer.commit("a@example.org", [], {}), QueueError)
        self.assertEqual(await self.store.list(), [])

    async def test_wakeAfterCommit(self) -> None:
        """The wake listeners are called after the commit has fired, until removed."""
        events: list[str] = []
        woken: defer.Deferred[None] = defer.Deferred()

        def listener() -> None:
            events.append("wake")
            if not woken.called:
                woken.callback(None)

        self.store.addWakeListener(listener)
        writer = self.store.newMessage()
        writer.write(b"x\r\n")
        d = writer.commit("a@example.org", recipients("b@example.com"), {})
        d.addCallback(lambda _: events.append("committed"))
        await woken
        self.assertEqual(events, ["committed", "wake"])
        self.assertEqual(self.wakes, 1)
        self.store.removeWakeListener(listener)
        self.store.removeWakeListener(self._woken)
        await self.enqueue()
        await self.store.list()  # a later turn of the reactor: after any wake
        self.assertEqual((events, self.wakes), (["committed", "wake"], 1))

    # -- claims -------------------------------------------------------------------------------

    async def test_claim(self) -> None:
        """A claim leases due recipients, one lease per message; they are not claimed twice."""
        first = await self.enqueue("a@example.com", "b@example.com")
        self.clock.advance(1)
        second = await self.enqueue("c@example.com")
        leases = await self.store.claim("node1", 10, 300)
        self.assertEqual([lease.message.id for lease in leases], [first, second])
        self.assertEqual([[r.address for r in lease.message.recipients] for lease in leases],
                         [["a@example.com", "b@example.com"], ["c@example.com"]])
        self.assertEqual([r.index for r in leases[0].message.recipients], [0, 1])
        for lease in leases:
            self.assertEqual(lease.owner, "node1")
            self.assertEqual(lease.expires, START + 1 + 300)
            self.assertGreaterEqual(len(lease.token), 16)
        self.assertNotEqual(leases[0].token, leases[1].token)
        self.assertEqual(leases[0].message.sender, "sender@example.org")
        self.assertEqual(await self.store.claim("node2", 10, 300), [])

    async def test_claimLimit(self) -> None:
        """``limit`` counts recipients; the rest stays due for the next claim."""
        messageId = await self.enqueue(*(f"r{i}@example.com" for i in range(5)))
        leases = await self.store.claim("node1", 3, 300)
        self.assertEqual([r.index for r in leases[0].message.recipients], [0, 1, 2])
        leases = await self.store.claim("node1", 3, 300)
        self.assertEqual([(lease.message.id, [r.index for r in lease.message.recipients]) for lease in leases],
                         [(messageId, [3, 4])])
        self.assertEqual(await self.store.claim("node1", 3, 300), [])

    async def test_claimOldestDueFirst(self) -> None:
        """Leases come in the order their recipients fell due, earliest first."""
        late = await self.enqueue("late@example.com", arrival=START - 10)
        early = await self.enqueue("early@example.com", arrival=START - 20)
        future = await self.enqueue("future@example.com", arrival=START + 50)
        leases = await self.store.claim("node1", 10, 300)
        self.assertEqual([lease.message.id for lease in leases], [early, late])
        leases = await self.store.claim("node1", 1, 300)
        self.assertEqual(leases, [])
        self.clock.advance(50)
        leases = await self.store.claim("node1", 10, 300)
        self.assertEqual([lease.message.id for lease in leases], [future])

    async def test_expiredLeaseClaimableAgain(self) -> None:
        """A lease that expired is claimable again, with a new token."""
        await self.enqueue("a@example.com")
        first = await self.claimOne(leaseSeconds=60)
        self.clock.advance(59)
        self.assertEqual(await self.store.claim("node2", 10, 60), [])
        self.clock.advance(1)
        second = await self.claimOne(leaseSeconds=60)
        self.assertEqual(second.message.id, first.message.id)
        self.assertNotEqual(second.token, first.token)

    async def test_recordOldToken(self) -> None:
        """A record with a token that no longer holds answers False and changes nothing."""
        messageId = await self.enqueue("a@example.com", "b@example.com")
        old = await self.claimOne(leaseSeconds=60)
        self.clock.advance(61)
        new = await self.claimOne(leaseSeconds=60)
        before = await self.state()
        self.assertFalse(await self.store.record(old, [RecipientOutcome(0, Result.DELIVERED)]))
        self.assertFalse(await self.store.record(
            old, [RecipientOutcome(1, Result.DEFERRED, START + 1000, "try later")]))
        self.assertFalse(await self.store.renew(old, 600))
        self.assertEqual(await self.state(), before)
        self.assertEqual(await self.body(messageId), b"Subject: test\r\n\r\nHello.\r\n")
        self.assertTrue(await self.store.record(new, [RecipientOutcome(0, Result.DELIVERED),
                                                      RecipientOutcome(1, Result.DELIVERED)]))
        self.assertEqual(await self.store.list(), [])

    async def test_recordAllOrNothing(self) -> None:
        """One outcome for a recipient outside the lease: nothing of the record is kept."""
        await self.enqueue("a@example.com", "b@example.com")
        leases = await self.store.claim("node1", 1, 300)
        lease = leases[0]
        before = await self.state()
        self.assertFalse(await self.store.record(
            lease, [RecipientOutcome(0, Result.DELIVERED), RecipientOutcome(1, Result.DELIVERED)]))
        self.assertEqual(await self.state(), before)

    async def test_recordFinal(self) -> None:
        """Final results remove their recipients; the message and its body go with the last one."""
        messageId = await self.enqueue("a@example.com", "b@example.com", "c@example.com")
        lease = await self.claimOne()
        self.assertTrue(await self.store.record(
            lease, [RecipientOutcome(0, Result.DELIVERED), RecipientOutcome(2, Result.FAILED)]))
        m = await self.store.show(messageId)
        self.assertEqual([r.address for r in m.recipients], ["b@example.com"])
        self.assertEqual(m.recipients[0].index, 1)
        self.assertEqual(await self.body(messageId), b"Subject: test\r\n\r\nHello.\r\n")
        # The lease still holds the recipient not recorded yet.
        self.assertEqual(await self.store.claim("node2", 10, 300), [])
        self.assertTrue(await self.store.record(lease, [RecipientOutcome(1, Result.RELAYED)]))
        self.assertIsNone(await self.store.show(messageId))
        await self.assertFailure(self.store.openBody(messageId), KeyError)
        self.assertEqual(await self.store.list(), [])
        self.assertIsNone(await self.store.nextDue())

    async def test_recordTwice(self) -> None:
        """A record ends the lease on its recipients: a second record of them answers False."""
        await self.enqueue("a@example.com", "b@example.com")
        lease = await self.claimOne()
        outcome = RecipientOutcome(0, Result.DEFERRED, START + 100, "451 4.3.0 later")
        self.assertTrue(await self.store.record(lease, [outcome]))
        self.assertFalse(await self.store.record(lease, [outcome]))
        self.assertFalse(await self.store.record(lease, [RecipientOutcome(0, Result.DELIVERED)]))
        self.assertTrue(await self.store.record(lease, [RecipientOutcome(1, Result.DELIVERED)]))

    async def test_recordDeferred(self) -> None:
        """DEFERRED: one more attempt, the next attempt, the error, delayReported; then due again."""
        messageId = await self.enqueue("a@example.com")
        lease = await self.claimOne()
        self.assertTrue(await self.store.record(lease, [RecipientOutcome(
            0, Result.DEFERRED, START + 300, "mx.example.com said: 451 4.3.0 later", True)]))
        r = (await self.store.show(messageId)).recipients[0]
        self.assertEqual(
            (r.state, r.attempts, r.nextAttempt, r.lastError, r.delayReported),
            (RecipientState.DEFERRED, 1, START + 300, "mx.example.com said: 451 4.3.0 later", True),
        )
        self.assertEqual(await self.store.claim("node1", 10, 300), [])
        self.assertEqual(await self.store.nextDue(), START + 300)
        self.clock.advance(300)
        lease = await self.claimOne()
        self.assertEqual(lease.message.recipients[0].attempts, 1)
        self.assertEqual(lease.message.recipients[0].state, RecipientState.DEFERRED)
        self.assertTrue(await self.store.record(lease, [RecipientOutcome(
            0, Result.DEFERRED, START + 900, "again", False)]))
        r = (await self.store.show(messageId)).recipients[0]
        # Once a delay report was sent, it stays sent.
        self.assertEqual((r.attempts, r.nextAttempt, r.lastError, r.delayReported), (2, START + 900, "again", True))

    async def test_renew(self) -> None:
        """renew extends a lease still held: not claimable until the new expiry."""
        await self.enqueue("a@example.com")
        lease = await self.claimOne(leaseSeconds=60)
        self.clock.advance(50)
        self.assertTrue(await self.store.renew(lease, 60))
        self.assertEqual(lease.expires, START + 110)
        self.clock.advance(50)
        self.assertEqual(await self.store.claim("node2", 10, 60), [])
        self.assertEqual(await self.store.nextDue(), START + 110)
        self.clock.advance(10)
        other = await self.claimOne()
        self.assertFalse(await self.store.renew(lease, 60))
        self.assertTrue(await self.store.renew(other, 60))

    async def test_nextDue(self) -> None:
        """nextDue: the earliest time a claim could take a recipient; None when none could."""
        self.assertIsNone(await self.store.nextDue())
        await self.enqueue("a@example.com", arrival=START + 30)
        await self.enqueue("b@example.com", arrival=START + 20)
        self.assertEqual(await self.store.nextDue(), START + 20)
        self.clock.advance(20)
        lease = await self.claimOne(leaseSeconds=600)
        # The leased one counts from its lease's end.
        self.assertEqual(await self.store.nextDue(), START + 30)
        self.clock.advance(10)
        await self.claimOne(leaseSeconds=100)
        self.assertEqual(await self.store.nextDue(), START + 130)
        await self.store.record(lease, [RecipientOutcome(0, Result.DELIVERED)])
        self.assertEqual(await self.store.nextDue(), START + 130)

    # -- hold, release, delete, flush ---------------------------------------------------------

    async def test_heldNeverClaimed(self) -> None:
        """A held message is never claimed, whatever the time; nextDue ignores it."""
        held = await self.enqueue("a@example.com", "b@example.com")
        other = await self.enqueue("c@example.com", arrival=START + 1000)
        self.assertTrue(await self.store.hold(held))
        m = await self.store.show(held)
        self.assertEqual([r.state for r in m.recipients], [RecipientState.HELD] * 2)
        self.assertEqual(await self.store.nextDue(), START + 1000)
        self.clock.advance(10 * 86400)
        leases = await self.store.claim("node1", 100, 300)
        self.assertEqual([lease.message.id for lease in leases], [other])
        self.assertTrue(await self.store.record(leases[0], [RecipientOutcome(0, Result.DELIVERED)]))
        self.assertEqual(await self.store.flush(), 0)
        self.assertEqual(await self.store.claim("node1", 100, 300), [])
        self.assertIsNone(await self.store.nextDue())

    async def test_release(self) -> None:
        """release: held recipients are due now (queued, or deferred when tried), and wake."""
        messageId = await self.enqueue("a@example.com", "b@example.com")
        lease = await self.claimOne()
        await self.store.record(lease, [RecipientOutcome(1, Result.DEFERRED, START + 5000, "later")])
        self.assertTrue(await self.store.hold(messageId))
        # A record while held keeps the recipient held.
        await self.store.record(lease, [RecipientOutcome(0, Result.DEFERRED, START + 5000, "later")])
        self.assertEqual([r.state for r in (await self.store.show(messageId)).recipients],
                         [RecipientState.HELD] * 2)
        self.clock.advance(60)
        wakes = self.wakes
        self.assertTrue(await self.store.release(messageId))
        self.assertEqual(self.wakes, wakes + 1)
        m = await self.store.show(messageId)
        self.assertEqual([(r.state, r.nextAttempt) for r in m.recipients],
                         [(RecipientState.DEFERRED, START + 60)] * 2)
        lease = await self.claimOne()
        self.assertEqual([r.index for r in lease.message.recipients], [0, 1])

    async def test_stats(self) -> None:
        """stats: recipients by state, messages, the oldest arrival; empty once all are gone."""
        self.assertEqual(
            await self.store.stats(),
            {"recipients": {"queued": 0, "deferred": 0, "held": 0}, "messages": 0, "oldestArrival": None},
        )
        first = await self.enqueue("a@example.com", "b@example.com", arrival=START - 30)
        held = await self.enqueue("c@example.com", arrival=START - 10)
        self.assertTrue(await self.store.hold(held))
        lease = (await self.store.claim("node1", 2, 300))[0]
        self.assertEqual(lease.message.id, first)
        await self.store.record(lease, [RecipientOutcome(0, Result.DEFERRED, START + 60, "later")])
        self.assertEqual(
            await self.store.stats(),
            {"recipients": {"queued": 1, "deferred": 1, "held": 1}, "messages": 2, "oldestArrival": START - 30},
        )

    async def test_releaseNeverTried(self) -> None:
        """A held recipient never tried is queued again when released."""
        messageId = await self.enqueue("a@example.com", arrival=START + 500)
        await self.store.hold(messageId)
        self.assertTrue(await self.store.release(messageId))
        r = (await self.store.show(messageId)).recipients[0]
        self.assertEqual((r.state, r.nextAttempt), (RecipientState.QUEUED, START))

    async def test_delete(self) -> None:
        """delete: the message and its body are gone; a lease on it is lost."""
        messageId = await self.enqueue("a@example.com")
        keep = await self.enqueue("b@example.com", arrival=START + 1)
        leases = await self.store.claim("node1", 1, 300)
        self.assertTrue(await self.store.delete(messageId))
        self.assertIsNone(await self.store.show(messageId))
        await self.assertFailure(self.store.openBody(messageId), KeyError)
        self.assertFalse(await self.store.record(leases[0], [RecipientOutcome(0, Result.DELIVERED)]))
        self.assertFalse(await self.store.delete(messageId))
        self.assertEqual([m.id for m in await self.store.list()], [keep])

    async def test_flush(self) -> None:
        """flush: deferred recipients due now, held ones stay; answers how many; wakes."""
        a = await self.enqueue("a@example.com", "b@example.com")
        b = await self.enqueue("c@example.com")
        c = await self.enqueue("d@example.com")
        for lease in await self.store.claim("node1", 10, 300):
            await self.store.record(lease, [RecipientOutcome(r.index, Result.DEFERRED, START + 3000, "later")
                                            for r in lease.message.recipients])
        await self.store.hold(c)
        self.clock.advance(10)
        wakes = self.wakes
        self.assertEqual(await self.store.flush(a), 2)
        self.assertEqual(self.wakes, wakes + 1)
        leases = await self.store.claim("node1", 10, 300)
        self.assertEqual([lease.message.id for lease in leases], [a])
        self.assertEqual(await self.store.flush(), 1)
        self.assertEqual(self.wakes, wakes + 2)
        m = await self.store.show(b)
        self.assertEqual((m.recipients[0].nextAttempt, m.recipients[0].attempts), (START + 10, 1))
        self.assertEqual([lease.message.id for lease in await self.store.claim("node1", 10, 300)], [b])
        self.assertEqual((await self.store.show(c)).recipients[0].state, RecipientState.HELD)
        self.assertEqual(await self.store.flush(), 0)

    # -- list ---------------------------------------------------------------------------------

    async def test_listOrder(self) -> None:
        """list: every message, oldest arrival first, recipients in order."""
        ids = {}
        for name, arrival in [("b", START - 5), ("c", START), ("a", START - 50)]:
            ids[name] = await self.enqueue(f"{name}1@example.com", f"{name}2@example.com", arrival=arrival)
        messages = await self.store.list()
        self.assertEqual([m.id for m in messages], [ids["a"], ids["b"], ids["c"]])
        self.assertEqual([[r.index for r in m.recipients] for m in messages], [[0, 1]] * 3)
        self.assertEqual(messages[0].recipients[1].address, "a2@example.com")

    async def test_toJSON(self) -> None:
        """The shape ``txsmtp queue list --json`` prints."""
        messageId = await self.enqueue("a@example.com", "b@example.com", body=b"12345")
        lease = await self.claimOne()
        await self.store.record(lease, [RecipientOutcome(1, Result.DEFERRED, START + 300, "451 later")])
        [m] = await self.store.list()
        self.assertEqual(m.toJSON(), {
            "id": messageId,
            "sender": "sender@example.org",
            "arrival": "2023-11-14T22:13:20+00:00",
            "size": 5,
            "recipients": [
                {"address": "a@example.com", "state": "queued", "attempts": 0,
                 "next_attempt": "2023-11-14T22:13:20+00:00", "last_error": None},
                {"address": "b@example.com", "state": "deferred", "attempts": 1,
                 "next_attempt": "2023-11-14T22:18:20+00:00", "last_error": "451 later"},
            ],
        })

    async def test_closed(self) -> None:
        """After close, work fails with QueueError (and close again is harmless)."""
        messageId = await self.enqueue()
        writer = self.store.newMessage()
        writer.write(b"late\r\n")
        await self.store.close()
        await self.assertFailure(writer.commit("a@example.org", recipients("b@example.com"), {}), QueueError)
        await self.assertFailure(self.store.claim("node1", 10, 300), QueueError)
        await self.assertFailure(self.store.show(messageId), QueueError)
        await self.store.close()
