"""
The queue's parts together, in one process, with nothing faked: the
SQLite store, the scheduler, the outbound delivery and the reporter,
delivering into Postfix's smtp-sink; and the ``txsmtp queue`` command on
that real store, through the control socket and directly.

- a message committed to the store wakes the scheduler and reaches the sink
  byte-exact, and leaves the store;
- a soft refusal (smtp-sink ``-r RCPT``) defers the recipient with its
  reason, shown by ``txsmtp queue list --json``; ``flush`` through the
  control socket makes it due again;
- a hard refusal (``-f RCPT``) bounces: a failure report (RFC 3464) from
  ``<>`` is queued for the sender, with the original returned.
"""

from __future__ import annotations

import email
import io
import json
import os
import shutil
import tempfile
from email import policy
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.test_client_interop import startSmtpSink
from tests.twistd_helpers import withTimeout
from txsmtp import cli
from txsmtp.queue.control import listenControl
from txsmtp.queue.model import NextHop, QueuedRecipient, RecipientState
from txsmtp.queue.outbound import Outbound
from txsmtp.queue.reports import Reporter
from txsmtp.queue.retry import RetryPolicy
from txsmtp.queue.routing import Router
from txsmtp.queue.scheduler import Scheduler
from txsmtp.queue.sqlite import SQLiteStore

BODY = b"Received: from client.example by relay.test.invalid; Sun, 6 Dec 2026 22:00:00 +0000\r\n" \
    b"From: alice@local.test\r\nTo: bob@remote.test\r\nSubject: through the queue\r\n\r\nHello.\r\n..two dots\r\n"


def shortTempDir(case: unittest.TestCase) -> str:
    # A UNIX socket's path must stay short: not under _trial_temp.
    directory = tempfile.mkdtemp(prefix="txqp-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


class PipelineTests(unittest.TestCase):
    timeout = 60

    async def setUpPipeline(self, *sinkFlags: str) -> None:
        self.sink = await startSmtpSink(self, *sinkFlags)
        self.directory = shortTempDir(self)
        self.store = SQLiteStore(self.directory)
        await self.store.open()
        self.addCleanup(self.store.close)
        hop = NextHop("smtp", f"[127.0.0.1]:{self.sink.port}", (("tls", "none"),))
        router = Router(localDomains=frozenset({"local.test"}), relayHost=hop)
        self.outbound = Outbound("relay.test.invalid")
        self.addCleanup(self.outbound.close)
        self.reporter = Reporter(self.store, "relay.test.invalid")
        self.scheduler = Scheduler(
            self.store, router, self.outbound, self.reporter, retry=RetryPolicy(minimum=300, maximum=300, jitter=0)
        )
        self.scheduler.startService()
        self.addCleanup(self.scheduler.stopService)
        self.recorded: list[Any] = []
        original = self.store.record

        self.waiters: dict[str, list[defer.Deferred[list[Any]]]] = {}

        def recorded(ok: bool, lease: Any, outcomes: Any) -> bool:
            self.recorded.append((lease.message.id, outcomes, ok))
            for d in self.waiters.pop(lease.message.id, []):
                d.callback(outcomes)
            return ok

        def record(lease: Any, outcomes: Any) -> Any:
            return original(lease, outcomes).addCallback(recorded, lease, outcomes)

        self.store.record = record  # type: ignore[method-assign]

    async def enqueue(
        self, sender: str, recipients: list[str], body: bytes = BODY, extra: dict[str, Any] | None = None, **rcpt: Any
    ) -> str:
        writer = self.store.newMessage()
        writer.write(body)
        envelope = {"parameters": {"ret": "FULL", "envid": "env-1"}, "connection": {"peer": "192.0.2.1"}, **(extra or {})}
        return await writer.commit(sender, [QueuedRecipient(0, r, **rcpt) for r in recipients], envelope)

    async def waitRecorded(self, messageId: str) -> list[Any]:
        """Wait for the scheduler to record the message's outcomes (fired by the record hook)."""
        for queueId, outcomes, _ok in self.recorded:
            if queueId == messageId:
                return outcomes  # type: ignore[no-any-return]
        d: defer.Deferred[list[Any]] = defer.Deferred()
        self.waiters.setdefault(messageId, []).append(d)
        return await withTimeout(d, 20, lambda: f"no outcome recorded for {messageId}: {self.sink.log[-2000:]}")

    async def txsmtp(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = await cli.run([*args, "--queue", self.directory], reactor, out, err)
        return status, out.getvalue(), err.getvalue()

    async def test_delivered(self) -> None:
        """Committed, delivered to the sink byte-exact, gone from the store."""
        await self.setUpPipeline()
        messageId = await self.enqueue("alice@local.test", ["bob@remote.test"])
        [outcome] = await self.waitRecorded(messageId)
        self.assertEqual(outcome.result.value, "delivered")
        [dump] = self.sink.newDumps()
        self.assertEqual([a.split()[0] for a in dump.rcptArgs], [b"<bob@remote.test>"])
        self.assertEqual(dump.mailArgs.split()[:1], [b"<alice@local.test>"])
        self.assertIn(b"ENVID=env-1", dump.mailArgs)
        self.assertEqual(dump.body, BODY.replace(b"\r\n", b"\n"))
        self.assertIsNone(await self.store.show(messageId))

    async def test_bodyReadOnce(self) -> None:
        """
        With the 8-bit-ness the relay recorded in the envelope, an attempt
        reads the body file once, to send it, and not first through to
        measure it.
        """
        await self.setUpPipeline()
        reads: list[int] = []
        openBody = self.store.openBody

        async def counting(messageId: str) -> Any:
            f = await openBody(messageId)
            real = f.read

            def read(size: int = -1) -> bytes:
                data = real(size)
                reads.append(len(data))
                return data

            f.read = read  # type: ignore[method-assign]
            return f

        self.store.openBody = lambda messageId: defer.Deferred.fromCoroutine(counting(messageId))  # type: ignore[method-assign]
        body = BODY + b"x" * 70 + b"\r\n" * 3000
        messageId = await self.enqueue("alice@local.test", ["bob@remote.test"], body, extra={"eightBit": False})
        [outcome] = await self.waitRecorded(messageId)
        self.assertEqual(outcome.result.value, "delivered")
        self.assertEqual(sum(reads), len(body))

    async def test_deferredShownAndFlushed(self) -> None:
        """A 4xx defers, with the reason in ``txsmtp queue list --json``; flush over the socket retries."""
        await self.setUpPipeline("-r", "RCPT")
        port = await listenControl(self.store, os.path.join(self.directory, "control.sock"))
        self.addCleanup(port.stopListening)
        messageId = await self.enqueue("alice@local.test", ["bob@remote.test"])
        [outcome] = await self.waitRecorded(messageId)
        self.assertEqual(outcome.result.value, "deferred")
        status, out, err = await self.txsmtp("queue", "list", "--json")
        self.assertEqual((status, err), (0, ""))
        [line] = out.splitlines()
        listed = json.loads(line)
        self.assertEqual(listed["id"], messageId)
        [rcpt] = listed["recipients"]
        self.assertEqual((rcpt["address"], rcpt["state"], rcpt["attempts"]), ("bob@remote.test", "deferred", 1))
        self.assertIn("4", rcpt["last_error"])
        self.recorded.clear()
        status, out, err = await self.txsmtp("queue", "flush", messageId)
        self.assertEqual(status, 0, err)
        [outcome] = await self.waitRecorded(messageId)
        self.assertEqual(outcome.result.value, "deferred")
        [message] = await self.store.list()
        self.assertEqual(message.recipients[0].attempts, 2)

    async def test_bouncedWithReport(self) -> None:
        """A 5xx fails the recipient; a failure report from <> returns the whole message to the sender."""
        await self.setUpPipeline("-f", "RCPT")
        await self.scheduler.stopService()
        messageId = await self.enqueue("alice@local.test", ["bob@remote.test"])
        # Deliver the original only: the report, for a local domain, would go
        # to the local hop, which this pipeline does not have.
        [lease] = await self.store.claim("test", 10, 60)
        body = await self.store.openBody(messageId)
        try:
            hop = NextHop("smtp", f"[127.0.0.1]:{self.sink.port}", (("tls", "none"),))
            [result] = await self.outbound.deliver(hop, lease.message, lease.message.recipients, body)
        finally:
            body.close()
        self.assertEqual(result.result.value, "failed")
        [reportId] = await self.reporter.report(
            lease.message, [(lease.message.recipients[0], result)], lambda: self.store.openBody(messageId)
        )
        report = await self.store.show(reportId)
        assert report is not None
        self.assertEqual(report.sender, "")
        self.assertEqual([r.address for r in report.recipients], ["alice@local.test"])
        self.assertEqual(report.recipients[0].state, RecipientState.QUEUED)
        f = await self.store.openBody(reportId)
        try:
            parsed = email.message_from_bytes(f.read(), policy=policy.default)
        finally:
            f.close()
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        text, status, original = parsed.get_payload()
        fields = status.get_payload()[1]
        self.assertEqual(fields["Action"], "failed")
        self.assertEqual(fields["Final-Recipient"], "rfc822; bob@remote.test")
        self.assertTrue(fields["Status"].startswith("5."))
        self.assertEqual(status.get_payload()[0]["Original-Envelope-Id"], "env-1")
        self.assertEqual(original.get_content_type(), "message/rfc822")
        self.assertIn(b"..two dots", original.as_bytes())

    async def test_directCommandOnRealStore(self) -> None:
        """With no server answering, the command opens the real store itself (after the owner let go)."""
        await self.setUpPipeline("-r", "RCPT")
        messageId = await self.enqueue("alice@local.test", ["bob@remote.test"])
        await self.waitRecorded(messageId)
        await self.scheduler.stopService()
        await self.store.close()
        status, out, err = await self.txsmtp("queue", "hold", messageId)
        self.assertEqual(status, 0, err)
        status, out, err = await self.txsmtp("queue", "list", "--json")
        self.assertEqual(status, 0, err)
        self.assertEqual(json.loads(out)["recipients"][0]["state"], "held")
        status, out, err = await self.txsmtp("queue", "delete", messageId)
        self.assertEqual(status, 0, err)
        status, out, err = await self.txsmtp("queue", "list", "--json")
        self.assertEqual((status, out), (0, ""))
