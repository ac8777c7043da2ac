"""
The scheduler (txsmtp.queue.scheduler) on a task.Clock, with the in-memory
store and outbound delivery of tests/queuefakes.py: waking at once on new
mail, the timer for the next due time (and no busy loop), grouping and the
per-transaction limit, the concurrency limits, the retry schedule and the
expiry to a 4.4.7 failure, delay warnings, reports queued before outcomes
are recorded, lost leases and renewals, errors that do not stop it, and
stopping.
"""

from __future__ import annotations

import email
from email import policy
from typing import Any

from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.queuefakes import FakeOutbound, FakeStore, StaticRouter
from txsmtp.queue.errors import QueueError, QueueFullError
from txsmtp.queue.model import AttemptResult, NextHop, QueuedRecipient, Result
from txsmtp.queue.reports import Reporter
from txsmtp.queue.retry import RetryPolicy
from txsmtp.queue.scheduler import ERROR_BACKOFF, Scheduler

NOW = 1_800_000_000.0


class SchedulerTestsMixin:
    clock: task.Clock
    store: FakeStore
    outbound: FakeOutbound
    router: StaticRouter
    scheduler: Scheduler

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.store = FakeStore(self.clock)
        self.outbound = FakeOutbound()
        self.router = StaticRouter()
        self.logged: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if str(event.get("log_namespace", "")).startswith("txsmtp.queue"):
                self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)  # type: ignore[attr-defined]

    def start(self, reporter: bool = False, **kwargs: Any) -> Scheduler:
        kwargs.setdefault("retry", RetryPolicy(jitter=0))
        lifetime = kwargs["retry"].lifetime
        self.scheduler = Scheduler(
            self.store,
            self.router,
            self.outbound,
            Reporter(self.store, "mail.example.net", lifetime=lifetime) if reporter else None,
            **kwargs,
        )
        self.scheduler.startService()
        self.addCleanup(self.stop)  # type: ignore[attr-defined]
        return self.scheduler

    def stop(self) -> None:
        if self.scheduler.running:
            d = self.scheduler.stopService()
            for a in self.outbound.waiting:
                a.deferred.cancel()
            self.clock.advance(self.scheduler.stopTimeout)
            self.successResultOf(d)  # type: ignore[attr-defined]
        self.flushLoggedErrors(defer.CancelledError)  # type: ignore[attr-defined]

    def advance(self, seconds: int) -> None:
        """Let ``seconds`` pass one at a time (each timer then runs when it is due, not later)."""
        for _ in range(seconds):
            self.clock.advance(1)

    def attemptsFor(self, sender: str | None = None) -> list[Any]:
        return [a for a in self.outbound.attempts if sender is None or a.message.sender == sender]

    def reports(self) -> list[Any]:
        return [row for row in self.store.rows.values() if row.message.sender == ""]


class WakingTests(SchedulerTestsMixin, unittest.TestCase):
    def test_wakeOnEnqueue(self) -> None:
        """New mail is tried at once: no timer, no polling delay."""
        self.start()
        self.assertEqual(self.outbound.attempts, [])
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        [attempt] = self.outbound.attempts
        self.assertEqual(attempt.message.id, messageId)
        self.assertEqual(attempt.addresses, ["bob@example.com"])
        self.assertEqual(attempt.hop, NextHop("mx", "example.com"))
        self.assertEqual(attempt.body, b"Subject: test\r\n\r\nHello\r\n")
        attempt.answer(Result.DELIVERED)
        self.assertNotIn(messageId, self.store.rows)

    def test_dueAtStart(self) -> None:
        """Mail already due when the service starts is tried at once."""
        self.store.add("alice@example.org", ["bob@example.com"])
        self.start()
        self.assertEqual(len(self.outbound.attempts), 1)

    def test_bodyClosed(self) -> None:
        """The body file is open while the attempt runs, and closed after it."""
        self.start()
        self.store.add("alice@example.org", ["bob@example.com"])
        [body] = self.store.bodies
        self.assertFalse(body.closed)
        self.outbound.attempts[0].answer(Result.DEFERRED)
        self.assertTrue(body.closed)

    def test_timerForNextDue(self) -> None:
        """A deferred recipient is tried again when due, by a timer at that time."""
        self.start()
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.outbound.attempts[0].answer(Result.DEFERRED, "4.3.0", "try later")
        rcpt = self.store.recipient(messageId, 0)
        assert rcpt is not None
        self.assertEqual(rcpt.nextAttempt, NOW + 300)
        self.assertEqual(rcpt.lastError, "mx.example.net[192.0.2.1] said: 451 4.3.0 try later")
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [NOW + 300])
        self.clock.advance(299)
        self.assertEqual(len(self.outbound.attempts), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.outbound.attempts), 2)

    def test_flushWakes(self) -> None:
        """A flush (a wake-up of the store) makes a deferred recipient be tried at once."""
        self.start()
        self.store.add("alice@example.org", ["bob@example.com"])
        self.outbound.attempts[0].answer(Result.DEFERRED)
        self.clock.advance(10)
        self.successResultOf(self.store.flush())
        self.assertEqual(len(self.outbound.attempts), 2)

    def test_noBusyLoop(self) -> None:
        """An idle queue is not polled: one claim at start, then one per lease period at most."""
        self.start(leaseSeconds=600)
        self.assertEqual(len(self.store.claims), 1)
        for _ in range(3600):
            self.clock.advance(1)
        self.assertLessEqual(len(self.store.claims), 7)
        self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)

    def test_timerReset(self) -> None:
        """An earlier due time replaces a later timer; there is only ever one timer."""
        self.start(retry=RetryPolicy(minimum=100, maximum=4000, jitter=0), leaseSeconds=10000)
        self.store.add("alice@example.org", ["a@example.com"], arrival=NOW - 3000)
        self.outbound.attempts[0].answer(Result.DEFERRED)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [NOW + 3000])
        self.store.add("alice@example.org", ["b@example.com"])
        self.outbound.attempts[1].answer(Result.DEFERRED)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [NOW + 100])


class GroupingTests(SchedulerTestsMixin, unittest.TestCase):
    def test_groupsByHopAndLimit(self) -> None:
        """One transaction per (message, hop), at most maxRecipients (50) recipients each."""
        self.start()
        recipients = [f"u{i}@example.com" for i in range(120)] + ["x@example.org", "y@EXAMPLE.org"]
        self.store.add("alice@example.org", recipients)
        sizes = sorted((a.hop.key, len(a.recipients)) for a in self.outbound.attempts)
        self.assertEqual(
            sizes, [("mx:example.com", 20), ("mx:example.com", 50), ("mx:example.com", 50), ("mx:example.org", 2)]
        )
        for a in self.outbound.attempts:
            self.assertEqual({r.domain for r in a.recipients}, {a.hop.destination})
        seen = sorted(r.index for a in self.outbound.attempts for r in a.recipients)
        self.assertEqual(seen, list(range(122)))
        for a in self.outbound.attempts:
            a.answer(Result.DELIVERED)
        self.assertEqual(self.store.rows, {})

    def test_maxRecipientsSetting(self) -> None:
        self.start(maxRecipients=2)
        self.store.add("alice@example.org", ["a@example.com", "b@example.com", "c@example.com"])
        self.assertEqual([len(a.recipients) for a in self.outbound.attempts], [2, 1])

    def test_messagesNotMixed(self) -> None:
        """Two messages to one destination are two transactions."""
        self.start()
        self.store.add("alice@example.org", ["a@example.com"])
        self.store.add("alice@example.org", ["b@example.com"])
        self.assertEqual([a.addresses for a in self.outbound.attempts], [["a@example.com"], ["b@example.com"]])

    def test_routes(self) -> None:
        """The router's hop is what the attempt gets (a local domain to the local hop)."""
        self.router.routes["example.net"] = NextHop("local", "")
        self.start()
        self.store.add("alice@example.org", ["a@example.net", "b@example.com"])
        self.assertEqual(sorted(a.hop.key for a in self.outbound.attempts), ["local:", "mx:example.com"])


class ConcurrencyTests(SchedulerTestsMixin, unittest.TestCase):
    def test_destinationConcurrency(self) -> None:
        """At most destinationConcurrency attempts to one hop; others go on meanwhile."""
        self.start(destinationConcurrency=2)
        for i in range(5):
            self.store.add("alice@example.org", [f"u{i}@example.com"])
        self.store.add("alice@example.org", ["v@example.org"])
        self.assertEqual(sorted(a.hop.key for a in self.outbound.waiting), ["mx:example.com"] * 2 + ["mx:example.org"])
        self.assertEqual(self.scheduler.waiting, 3)
        self.outbound.waiting[0].answer(Result.DELIVERED)
        self.assertEqual(sorted(a.hop.key for a in self.outbound.waiting), ["mx:example.com"] * 2 + ["mx:example.org"])
        self.assertEqual([a.addresses for a in self.outbound.attempts if a.hop.destination == "example.com"],
                         [[f"u{i}@example.com"] for i in range(3)])
        while self.outbound.waiting:
            self.outbound.waiting[0].answer(Result.DELIVERED)
        self.assertEqual(len(self.outbound.attempts), 6)
        self.assertEqual(self.store.rows, {})

    def test_overallConcurrency(self) -> None:
        """At most concurrency attempts in all; the claims ask only for what there is room for."""
        self.start(concurrency=3, maxRecipients=5)
        self.assertEqual(self.store.claims, [15])
        for i in range(5):
            self.store.add("alice@example.org", [f"u@d{i}.example"])
        self.assertEqual(len(self.outbound.waiting), 3)
        self.assertLessEqual(self.scheduler.inFlight, 3)
        claims = len(self.store.claims)
        self.store.add("alice@example.org", ["more@example.com"])
        self.assertTrue(all(limit > 0 for limit in self.store.claims))
        self.outbound.waiting[0].answer(Result.DELIVERED)
        self.assertEqual(len(self.outbound.waiting), 3)
        self.assertGreater(len(self.store.claims), claims)
        while self.outbound.waiting:
            self.outbound.waiting[0].answer(Result.DELIVERED)
        self.assertEqual(len(self.outbound.attempts), 6)
        self.assertEqual(self.store.rows, {})

    def test_fullNoClaim(self) -> None:
        """With every slot busy, new mail does not make the scheduler claim (it waits for a slot)."""
        self.start(concurrency=1, maxRecipients=1)
        self.store.add("alice@example.org", ["a@example.com"])
        before = list(self.store.claims)
        self.store.add("alice@example.org", ["b@example.com"])
        self.assertEqual(self.store.claims, before)
        self.assertEqual(self.store.leased(), 1)
        self.outbound.attempts[0].answer(Result.DELIVERED)
        self.assertEqual([a.addresses for a in self.outbound.attempts], [["a@example.com"], ["b@example.com"]])


class RetryTests(SchedulerTestsMixin, unittest.TestCase):
    def test_retrySchedule(self) -> None:
        """Deferred again and again: attempts at 0, 300, 600, 1200, 2400 s (the message's age)."""
        self.start()
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        times = []
        for _ in range(5):
            [attempt] = self.outbound.waiting
            times.append(self.clock.seconds() - NOW)
            attempt.answer(Result.DEFERRED)
            rcpt = self.store.recipient(messageId, 0)
            assert rcpt is not None
            self.clock.advance(rcpt.nextAttempt - self.clock.seconds())
        self.assertEqual(times, [0, 300, 600, 1200, 2400])
        rcpt = self.store.recipient(messageId, 0)
        assert rcpt is not None
        self.assertEqual(rcpt.attempts, 5)

    def test_expiry(self) -> None:
        """Deferred past the lifetime: FAILED with 4.4.7, the message leaves, a failure report says why."""
        self.start(reporter=True, retry=RetryPolicy(minimum=10, maximum=20, lifetime=60, jitter=0))
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        while self.store.recipient(messageId, 0) is not None:
            [attempt] = self.attemptsFor("alice@example.org")[-1:]
            attempt.answer(Result.DEFERRED, "4.4.1", "connection refused")
            rcpt = self.store.recipient(messageId, 0)
            if rcpt is not None:
                self.clock.advance(rcpt.nextAttempt - self.clock.seconds())
        self.assertEqual(self.clock.seconds() - NOW, 60)
        self.assertEqual(self.store.records[-1][1][0].result, Result.FAILED)
        [report] = self.reports()
        msg = email.message_from_bytes(report.body, policy=policy.default)
        block = msg.get_payload()[1].get_payload()[1]
        self.assertEqual(block["Action"], "failed")
        self.assertEqual(block["Status"], "4.4.7")
        self.assertEqual(block["Diagnostic-Code"], "smtp; 451 4.4.1 connection refused")
        text = " ".join(msg.get_payload()[0].get_content().split())
        self.assertIn("too long in the queue", text)
        self.assertIn("connection refused", text)
        self.assertTrue(any("result=failed status=4.4.7" in line and "too long in the queue" in line
                            for line in self.logged))

    def test_failedNoRetry(self) -> None:
        self.start()
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.outbound.attempts[0].answer(Result.FAILED, "5.1.1", "no such user")
        self.assertNotIn(messageId, self.store.rows)
        self.clock.advance(10000)
        self.assertEqual(len(self.outbound.attempts), 1)


class ReportTests(SchedulerTestsMixin, unittest.TestCase):
    def test_reportBeforeRecord(self) -> None:
        """The report is queued before the outcome is recorded."""
        self.start(reporter=True)
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.outbound.attempts[0].answer(Result.FAILED, "5.1.1", "no such user")
        [report] = self.reports()
        events = self.store.events
        self.assertLess(events.index(f"commit {report.message.id}"), events.index(f"record {messageId} ok"))
        self.assertEqual(report.message.recipients[0].address, "alice@example.org")
        # The report is mail like any other: tried at once, from <> to the sender.
        [attempt] = self.attemptsFor("")
        self.assertEqual(attempt.addresses, ["alice@example.org"])
        self.assertEqual(attempt.hop, NextHop("mx", "example.org"))

    def test_noReportAboutReport(self) -> None:
        """A report that bounces is dropped without a report of its own."""
        self.start(reporter=True)
        self.store.add("", ["alice@example.org"])
        self.outbound.attempts[0].answer(Result.FAILED, "5.1.1", "no such user")
        self.assertEqual(self.store.rows, {})
        self.assertEqual(len(self.outbound.attempts), 1)

    def test_delayWarningOnce(self) -> None:
        """With delayWarning, one delay report once the message is that old, never again."""
        self.start(reporter=True, delayWarning=600)
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        ages = []
        for _ in range(5):
            [attempt] = self.attemptsFor("alice@example.org")[-1:]
            attempt.answer(Result.DEFERRED, "4.3.0", "busy")
            ages.append((self.clock.seconds() - NOW, len(self.reports())))
            rcpt = self.store.recipient(messageId, 0)
            assert rcpt is not None
            self.clock.advance(rcpt.nextAttempt - self.clock.seconds())
        self.assertEqual(ages, [(0, 0), (300, 0), (600, 1), (1200, 1), (2400, 1)])
        rcpt = self.store.recipient(messageId, 0)
        assert rcpt is not None
        self.assertTrue(rcpt.delayReported)
        [report] = self.reports()
        msg = email.message_from_bytes(report.body, policy=policy.default)
        self.assertEqual(msg.get_payload()[1].get_payload()[1]["Action"], "delayed")

    def test_noDelayWarningByDefault(self) -> None:
        self.start(reporter=True)
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        for _ in range(6):
            self.attemptsFor("alice@example.org")[-1].answer(Result.DEFERRED)
            rcpt = self.store.recipient(messageId, 0)
            assert rcpt is not None
            self.clock.advance(rcpt.nextAttempt - self.clock.seconds())
        self.assertEqual(self.reports(), [])

    def test_reportErrorLeavesLeased(self) -> None:
        """A report that cannot be queued: nothing recorded, the recipient is tried again after its lease."""
        self.start(reporter=True, leaseSeconds=60)
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.store.commitError = QueueFullError("disk full")
        self.outbound.attempts[0].answer(Result.FAILED, "5.1.1", "no such user")
        self.assertEqual(len(self.flushLoggedErrors(QueueFullError)), 1)
        self.assertEqual(self.store.records, [])
        self.assertEqual(self.store.leased(), 1)
        self.store.commitError = None
        self.clock.advance(60)
        self.assertEqual(len(self.outbound.attempts), 2)
        self.outbound.attempts[1].answer(Result.FAILED, "5.1.1", "no such user")
        self.assertNotIn(messageId, self.store.rows)
        self.assertEqual(len(self.reports()), 1)


    def test_successReportErrorStillRecords(self) -> None:
        """
        A success report that cannot be queued is logged, and the delivery is
        recorded all the same: a lost notice, never the message delivered twice.
        """
        self.start(reporter=True, leaseSeconds=60)
        rcpt = QueuedRecipient(0, "bob@example.com", notify=("SUCCESS",))
        messageId = self.store.add("alice@example.org", [rcpt])
        self.store.commitError = QueueFullError("disk full")
        self.outbound.attempts[0].answer(Result.DELIVERED, "2.0.0", "ok")
        self.assertEqual(len(self.flushLoggedErrors(QueueFullError)), 1)
        self.assertNotIn(messageId, self.store.rows)
        self.assertEqual(self.store.leased(), 0)
        self.store.commitError = None
        self.clock.advance(120)
        self.assertEqual(len(self.outbound.attempts), 1)


class FailureTests(SchedulerTestsMixin, unittest.TestCase):
    def test_leaseLost(self) -> None:
        """A record refused (lease lost) is logged and dropped; the scheduler goes on."""
        self.start()
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.store.rows[messageId].leases[0] = ("someone-else", NOW + 1000)
        self.outbound.attempts[0].answer(Result.DELIVERED)
        self.assertEqual(self.store.records[-1][2], False)
        self.assertTrue(any("lease lost" in line and messageId in line for line in self.logged))
        self.store.add("alice@example.org", ["carol@example.com"])
        self.assertEqual(len(self.outbound.attempts), 2)

    def test_bodyReadAfterLeaseLapsed(self) -> None:
        """
        The store answers the body read only after the lease lapsed (it was
        away, as a PostgreSQL cut off is, and the renewals went unanswered):
        nothing is delivered from that claim, since another claim may
        deliver the message meanwhile (here, this scheduler's own next
        one): it is delivered once.
        """
        self.start(leaseSeconds=60)
        bodyReads: list[defer.Deferred[Any]] = []
        openBody, renew = self.store.openBody, self.store.renew

        def firstReadHangs(messageId: str) -> defer.Deferred[Any]:
            if bodyReads:
                return openBody(messageId)
            d: defer.Deferred[Any] = defer.Deferred()
            bodyReads.append(d)
            return d

        self.store.openBody = firstReadHangs  # type: ignore[method-assign]
        self.store.renew = lambda *a: defer.Deferred()  # type: ignore[method-assign]
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.advance(61)
        # The lease lapsed: a second claim took the message and delivers it.
        [attempt] = self.outbound.attempts
        self.assertEqual(attempt.message.id, messageId)
        # Then the first body read answers: that claim delivers nothing.
        bodyReads[0].callback(self.successResultOf(openBody(messageId)))
        self.assertEqual(len(self.outbound.attempts), 1)
        self.assertTrue(any("lease lapsed while the body was read" in line for line in self.logged), self.logged)
        self.store.renew = renew  # type: ignore[method-assign]
        attempt.answer(Result.DELIVERED)
        self.assertNotIn(messageId, self.store.rows)
        self.advance(120)
        self.assertEqual(len(self.outbound.attempts), 1)

    def test_outboundException(self) -> None:
        """An outbound delivery that raises is logged; the recipients are tried again after the lease."""
        self.start(leaseSeconds=60)
        self.outbound.error = RuntimeError("boom")
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.store.leased(), 1)
        self.assertEqual(self.scheduler.inFlight, 0)
        self.outbound.error = None
        self.store.add("alice@example.org", ["carol@example.com"])
        self.assertEqual([a.addresses for a in self.outbound.attempts], [["carol@example.com"]])
        self.advance(60)
        self.assertEqual(self.outbound.attempts[-1].message.id, messageId)

    def test_failedAttemptDeferred(self) -> None:
        """An attempt whose Deferred fails is logged like an exception."""
        self.start(leaseSeconds=60)
        self.store.add("alice@example.org", ["bob@example.com"])
        self.outbound.attempts[0].deferred.errback(RuntimeError("lost"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(60)
        self.assertEqual(len(self.outbound.attempts), 2)

    def test_wrongResultCount(self) -> None:
        self.start()
        self.store.add("alice@example.org", ["a@example.com", "b@example.com"])
        self.outbound.attempts[0].answerEach([AttemptResult(Result.DELIVERED, "2.0.0")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.store.records, [])

    def test_routingError(self) -> None:
        self.start(leaseSeconds=60)
        self.router.error = ValueError("bad route")
        self.store.add("alice@example.org", ["bob@example.com"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.router.error = None
        self.clock.advance(60)
        self.assertEqual(len(self.outbound.attempts), 1)

    def test_claimErrorBacksOff(self) -> None:
        """A store that fails to claim is asked again after a pause, not in a loop."""
        self.store.claimError = QueueError("database is locked")
        self.start()
        # A store error is one line, without a traceback.
        self.assertEqual(self.flushLoggedErrors(QueueError), [])
        self.assertIn("claiming due recipients failed: database is locked", "\n".join(self.logged))
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [NOW + ERROR_BACKOFF])
        self.store.claimError = None
        self.store.add("alice@example.org", ["bob@example.com"], wake=False)
        self.clock.advance(ERROR_BACKOFF)
        self.assertEqual(len(self.outbound.attempts), 1)

    def test_logLine(self) -> None:
        """One line per attempt with the queue id, recipients, hop, result and reason."""
        self.start()
        messageId = self.store.add("alice@example.org", ["a@example.com", "b@example.com"])
        self.outbound.attempts[0].answer(Result.DEFERRED, "4.3.0", "try later")
        [line] = [line for line in self.logged if "result=" in line]
        self.assertIn(f"{messageId}: to=<a@example.com>,<b@example.com> hop=mx:example.com result=deferred", line)
        self.assertIn("status=4.3.0 attempts=1 next=2027-01-15T08:05:00Z", line)
        self.assertIn('reason="mx.example.net[192.0.2.1] said: 451 4.3.0 try later"', line)


class LeaseTests(SchedulerTestsMixin, unittest.TestCase):
    def test_renewedWhileInFlight(self) -> None:
        """A long attempt keeps its lease: it is renewed before it lapses."""
        self.start(leaseSeconds=60)
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        self.advance(300)
        self.assertGreater(self.store.renewals, 3)
        self.assertEqual(self.store.leased(), 1)
        self.assertEqual(len(self.outbound.attempts), 1)
        self.outbound.attempts[0].answer(Result.DELIVERED)
        self.assertEqual(self.store.records[-1][2], True)
        self.assertNotIn(messageId, self.store.rows)
        renewals = self.store.renewals
        self.clock.advance(300)
        self.assertEqual(self.store.renewals, renewals)

    def test_renewedWhileWaiting(self) -> None:
        """Recipients claimed but waiting for a slot keep their lease too."""
        self.start(leaseSeconds=60, destinationConcurrency=1)
        self.store.add("alice@example.org", ["a@example.com"])
        second = self.store.add("alice@example.org", ["b@example.com"])
        self.advance(200)
        self.assertEqual(self.store.leased(), 2)
        self.outbound.attempts[0].answer(Result.DELIVERED)
        self.assertEqual(self.outbound.attempts[1].message.id, second)
        self.outbound.attempts[1].answer(Result.DELIVERED)
        self.assertEqual([ok for _, _, ok in self.store.records], [True, True])


class RenewalLossTests(SchedulerTestsMixin, unittest.TestCase):
    def test_waitingLeaseLost(self) -> None:
        """A waiting lease that cannot be renewed is dropped (logged); the recipients are claimed again later."""
        self.start(leaseSeconds=60, destinationConcurrency=1)
        self.store.add("alice@example.org", ["a@example.com"])
        second = self.store.add("alice@example.org", ["b@example.com"])
        self.store.rows[second].leases[0] = ("someone-else", NOW + 100)
        self.advance(50)
        self.assertEqual(self.scheduler.waiting, 0)
        self.assertTrue(any("lease lost" in line and second in line for line in self.logged))
        self.outbound.attempts[0].answer(Result.DELIVERED)
        self.assertEqual(len(self.outbound.attempts), 1)
        # The other claim lapses at +100; the scheduler looks again at the
        # latest one lease period after its last look (+60, then +120).
        self.advance(70)
        self.assertEqual([a.message.id for a in self.outbound.attempts[1:]], [second])


class StopTests(SchedulerTestsMixin, unittest.TestCase):
    def test_stopWaitsForAttempts(self) -> None:
        """stopService fires once the attempts under way are recorded; nothing new starts."""
        self.start()
        messageId = self.store.add("alice@example.org", ["bob@example.com"])
        d = self.scheduler.stopService()
        self.assertNoResult(d)
        self.store.add("alice@example.org", ["carol@example.com"])
        self.assertEqual(len(self.outbound.attempts), 1)
        self.outbound.attempts[0].answer(Result.DELIVERED)
        self.successResultOf(d)
        self.assertNotIn(messageId, self.store.rows)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopIdle(self) -> None:
        self.start()
        self.successResultOf(self.scheduler.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopBounded(self) -> None:
        """An attempt that does not end is cancelled after stopTimeout; its recipient stays leased."""
        self.start(stopTimeout=5)
        self.store.add("alice@example.org", ["bob@example.com"])
        d = self.scheduler.stopService()
        self.clock.advance(4)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(self.store.records, [])
        self.assertEqual(self.store.leased(), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waitingDropped(self) -> None:
        """Recipients claimed but not started are left leased at stop (the store resets them at open)."""
        self.start(destinationConcurrency=1)
        self.store.add("alice@example.org", ["a@example.com"])
        self.store.add("alice@example.org", ["b@example.com"])
        d = self.scheduler.stopService()
        self.outbound.attempts[0].answer(Result.DELIVERED)
        self.successResultOf(d)
        self.assertEqual(len(self.outbound.attempts), 1)
        self.assertEqual(self.store.leased(), 1)
        self.successResultOf(self.store.open())
        self.assertEqual(self.store.leased(), 0)

    def test_restart(self) -> None:
        """A stopped scheduler started again goes on with the queue."""
        self.start()
        self.successResultOf(self.scheduler.stopService())
        self.store.add("alice@example.org", ["bob@example.com"])
        self.assertEqual(self.outbound.attempts, [])
        self.scheduler.startService()
        self.assertEqual(len(self.outbound.attempts), 1)


class ArgumentTests(unittest.TestCase):
    def test_badLimits(self) -> None:
        store = FakeStore()
        for kwargs in ({"maxRecipients": 0}, {"concurrency": 0}, {"destinationConcurrency": 0}, {"leaseSeconds": 0}):
            self.assertRaises(ValueError, Scheduler, store, StaticRouter(), FakeOutbound(), **kwargs)

    def test_defaults(self) -> None:
        store = FakeStore()
        s = Scheduler(store, StaticRouter(), FakeOutbound())
        self.assertEqual(
            (s.maxRecipients, s.destinationConcurrency, s.concurrency, s.leaseSeconds, s.delayWarning),
            (50, 20, 100, 600, None),
        )
        self.assertEqual((s.retry.minimum, s.retry.maximum, s.retry.lifetime), (300, 4000, 5 * 86400))
        self.assertIs(s.clock, store.clock)
        self.assertEqual(QueuedRecipient(0, "a@B.example").domain, "b.example")
