"""
Unit tests of :mod:`txsmtp.metrics`: the counting of server and queue
events, the queue gauges read from a real SQLite store, the options.
The end-to-end tests (a real twistd, real clients, Prometheus) are in
tests/test_metrics_e2e.py.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.python import usage
from twisted.trial import unittest

from txsmtp.envelope import ConnectionInfo, Envelope
from txsmtp.queue.model import AttemptResult, NextHop, QueuedRecipient, RecipientOutcome, Result
from txsmtp.queue.sqlite import SQLiteStore

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - the test extra installs it
    CollectorRegistry = None

from txsmtp.metrics import MetricsService, QueueGauges, QueueMetrics, ServerMetrics

START = 1_800_000_000.0


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back: ``(name, sorted labels) -> value``."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def connection(port: int = 2525, protocol: str = "SMTP") -> ConnectionInfo:
    return ConnectionInfo(
        peer=IPv4Address("TCP", "192.0.2.7", 40000), host=IPv4Address("TCP", "127.0.0.1", port), protocol=protocol
    )


class _WithRegistry(unittest.TestCase):
    def setUp(self) -> None:
        if CollectorRegistry is None:
            raise unittest.SkipTest("prometheus_client is not installed (pip install 'txsmtp[metrics]')")
        self.registry = CollectorRegistry(auto_describe=True)


class ServerMetricsTests(_WithRegistry):
    def test_connections(self) -> None:
        """Open connections go up and down by protocol and listener; the total only up."""
        m = ServerMetrics(self.registry)
        a, b, lmtp = connection(), connection(), connection(2424, "LMTP")
        m.connectionMade(a, "SMTP")
        m.connectionMade(b, "SMTP")
        m.connectionMade(lmtp, "LMTP")
        m.connectionLost(a, "SMTP")
        got = samples(self.registry)
        smtp = (("listener", "2525"), ("protocol", "SMTP"))
        self.assertEqual(got[("txsmtp_connections_open", smtp)], 1)
        self.assertEqual(got[("txsmtp_connections_total", smtp)], 2)
        self.assertEqual(got[("txsmtp_connections_open", (("listener", "2424"), ("protocol", "LMTP")))], 1)

    def test_unixListener(self) -> None:
        """A UNIX socket has no port: the listener label says so."""
        m = ServerMetrics(self.registry)
        m.connectionMade(ConnectionInfo(host=UNIXAddress("/run/lmtp.sock")), "LMTP")
        got = samples(self.registry)
        self.assertEqual(got[("txsmtp_connections_total", (("listener", "unixaddress"), ("protocol", "LMTP")))], 1)

    def test_refusalsMessagesTLSAuth(self) -> None:
        """Refusals by command and class; messages by result with their octets; TLS and AUTH by outcome."""
        m = ServerMetrics(self.registry)
        c = connection()
        m.commandRefused(c, "RCPT", 550)
        m.commandRefused(c, "RCPT", 554)
        m.commandRefused(c, "MAIL", 451)
        m.messageDone(c, Envelope(None), 250, 1000)
        m.messageDone(c, Envelope(None), 250, 24)
        m.messageDone(c, Envelope(None), 552, None)
        m.tlsDone(c, True)
        m.tlsDone(c, False)
        m.authDone(c, "PLAIN", True)
        m.authDone(c, "PLAIN", False)
        m.authDone(c, "PLAIN", False)
        got = samples(self.registry)
        self.assertEqual(got[("txsmtp_commands_refused_total", (("class", "5xx"), ("command", "RCPT")))], 2)
        self.assertEqual(got[("txsmtp_commands_refused_total", (("class", "4xx"), ("command", "MAIL")))], 1)
        self.assertEqual(got[("txsmtp_messages_accepted_total", ())], 2)
        self.assertEqual(got[("txsmtp_messages_accepted_bytes_total", ())], 1024)
        self.assertEqual(got[("txsmtp_messages_refused_total", (("class", "5xx"),))], 1)
        self.assertEqual(got[("txsmtp_tls_handshakes_total", (("outcome", "ok"),))], 1)
        self.assertEqual(got[("txsmtp_tls_handshakes_total", (("outcome", "failed"),))], 1)
        self.assertEqual(got[("txsmtp_auth_attempts_total", (("mechanism", "PLAIN"), ("outcome", "success")))], 1)
        self.assertEqual(got[("txsmtp_auth_attempts_total", (("mechanism", "PLAIN"), ("outcome", "failure")))], 2)

    def test_childrenCached(self) -> None:
        """A set of label values is resolved once: the same child each time."""
        m = ServerMetrics(self.registry)
        c = connection()
        m.commandRefused(c, "RCPT", 550)
        children = dict(m._refused.children)
        m.commandRefused(c, "RCPT", 551)
        self.assertEqual(m._refused.children, children)


class QueueMetricsTests(_WithRegistry):
    def test_attempts(self) -> None:
        """Each recipient's result by hop kind; one latency observation per attempt; reports by kind."""
        m = QueueMetrics(self.registry)
        hop = NextHop("smtp", "[192.0.2.1]:25")
        m.attemptDone(hop, [AttemptResult(Result.RELAYED, "2.0.0"), AttemptResult(Result.DEFERRED, "2.0.0")], 0.3)
        m.attemptDone(NextHop("local", ""), [AttemptResult(Result.DELIVERED, "2.0.0")], 0.01)
        m.reportQueued("failure")
        m.reportQueued("delay")
        m.reportQueued("delay")
        got = samples(self.registry)
        self.assertEqual(got[("txsmtp_delivery_recipients_total", (("hop", "smtp"), ("result", "relayed")))], 1)
        self.assertEqual(got[("txsmtp_delivery_recipients_total", (("hop", "smtp"), ("result", "deferred")))], 1)
        self.assertEqual(got[("txsmtp_delivery_recipients_total", (("hop", "local"), ("result", "delivered")))], 1)
        smtp = (("hop", "smtp"),)
        self.assertEqual(got[("txsmtp_delivery_attempt_duration_seconds_count", smtp)], 1)
        self.assertAlmostEqual(got[("txsmtp_delivery_attempt_duration_seconds_sum", smtp)], 0.3)
        self.assertEqual(got[("txsmtp_delivery_attempt_duration_seconds_bucket", (("hop", "smtp"), ("le", "0.25")))], 0)
        self.assertEqual(got[("txsmtp_delivery_attempt_duration_seconds_bucket", (("hop", "smtp"), ("le", "0.5")))], 1)
        self.assertEqual(got[("txsmtp_dsn_queued_total", (("kind", "delay"),))], 2)
        self.assertEqual(got[("txsmtp_dsn_queued_total", (("kind", "failure"),))], 1)


class QueueGaugesTests(_WithRegistry):
    """The gauges from a real SQLite store, polled on a fake clock."""

    def setUp(self) -> defer.Deferred[None]:
        super().setUp()
        self.clock = task.Clock()
        self.clock.advance(START)
        self.store = SQLiteStore(self.mktemp(), clock=self.clock)
        d: defer.Deferred[None] = defer.maybeDeferred(self.store.open)
        self.addCleanup(lambda: self.store.close())
        return d

    async def enqueue(self, *addresses: str, arrival: float) -> str:
        writer = self.store.newMessage()
        writer.write(b"Subject: x\r\n\r\ny\r\n")
        rcpts = [QueuedRecipient(-1, a) for a in addresses]
        messageId: str = await writer.commit("s@example.org", rcpts, {}, arrival)
        return messageId

    async def test_poll(self) -> None:
        """Recipients by state, messages, and the age of the oldest (computed when scraped)."""
        gauges = QueueGauges(self.registry, self.store, interval=15)
        await gauges.poll()
        got = samples(self.registry)
        self.assertEqual(got[("txsmtp_queue_messages", ())], 0)
        self.assertEqual(got[("txsmtp_queue_oldest_message_age_seconds", ())], 0)
        await self.enqueue("a@example.com", "b@example.com", arrival=START - 100)
        held = await self.enqueue("c@example.com", arrival=START - 5)
        await self.store.hold(held)
        [lease] = await self.store.claim("n", 1, 300)
        await self.store.record(lease, [RecipientOutcome(0, Result.DEFERRED, START + 60, "later")])
        await gauges.poll()
        self.clock.advance(20)
        got = samples(self.registry)
        self.assertEqual(got[("txsmtp_queue_messages", ())], 2)
        self.assertEqual(got[("txsmtp_queue_recipients", (("state", "deferred"),))], 1)
        self.assertEqual(got[("txsmtp_queue_recipients", (("state", "queued"),))], 1)
        self.assertEqual(got[("txsmtp_queue_recipients", (("state", "held"),))], 1)
        self.assertEqual(got[("txsmtp_queue_oldest_message_age_seconds", ())], 120)

    async def test_loop(self) -> None:
        """start polls at once and every interval; stop stops; a failure is counted."""
        polls: list[defer.Deferred[Any]] = []

        class Recording(QueueGauges):
            def poll(self) -> Any:
                d = super().poll()
                polls.append(d)
                return d

        gauges = Recording(self.registry, self.store, interval=15)
        gauges.start()
        self.assertEqual(len(polls), 1)
        await polls[0]
        await self.enqueue("a@example.com", arrival=START)
        self.assertEqual(samples(self.registry)[("txsmtp_queue_messages", ())], 0)
        self.clock.advance(15)
        self.assertEqual(len(polls), 2)
        await polls[1]
        self.assertEqual(samples(self.registry)[("txsmtp_queue_messages", ())], 1)
        gauges.stop()
        self.clock.advance(15)
        self.assertEqual(len(polls), 2)
        await self.store.close()
        await gauges.poll()
        self.assertEqual(samples(self.registry)[("txsmtp_queue_stats_errors_total", ())], 1)


class OptionsTests(unittest.TestCase):
    def parse(self, *args: str) -> Any:
        from txsmtp.tap import Options

        options = Options()
        options.parseOptions(["--deliver", "maildir:/tmp/nowhere", *args])
        return options

    def test_missingLibrary(self) -> None:
        """Without prometheus_client, --metrics says what to install."""
        saved = sys.modules.pop("prometheus_client", None)
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]

        def restore() -> None:
            del sys.modules["prometheus_client"]
            if saved is not None:
                sys.modules["prometheus_client"] = saved

        self.addCleanup(restore)
        e = self.assertRaises(usage.UsageError, self.parse, "--metrics", "tcp:9464")
        self.assertIn("pip install 'txsmtp[metrics]'", str(e))

    def test_badEndpoint(self) -> None:
        """An endpoint description that does not parse is refused at once."""
        e = self.assertRaises(usage.UsageError, self.parse, "--metrics", "nonsense:9464")
        self.assertIn("--metrics nonsense:9464", str(e))

    def test_badInterval(self) -> None:
        e = self.assertRaises(
            usage.UsageError, self.parse, "--metrics", "tcp:9464", "--metrics-queue-interval", "0"
        )
        self.assertIn("--metrics-queue-interval", str(e))

    def test_built(self) -> None:
        """--metrics builds a MetricsService (labelled) whose server metrics observe the factories."""
        if CollectorRegistry is None:
            raise unittest.SkipTest("prometheus_client is not installed")
        from txsmtp.tap import makeService

        smtp = makeService(self.parse("--metrics", "tcp:0:interface=127.0.0.1", "--lmtp", "tcp:0:interface=127.0.0.1"))
        [metrics] = [c for c in smtp if isinstance(c, MetricsService)]
        self.assertEqual(metrics.txsmtpLabel, "--metrics tcp:0:interface=127.0.0.1")
        self.assertIs(smtp.factory.events, metrics.server)
        self.assertIs(smtp.lmtpFactory.events, metrics.server)
        self.assertIn("metrics on tcp:0:interface=127.0.0.1", smtp.summary)


class DocsTests(unittest.TestCase):
    """docs/operations/metrics.rst: its command lines parse, and it names every metric txsmtp has."""

    def test_commandLines(self) -> None:
        from tests.test_docs_relay import commandLines, readPage
        from txsmtp.tap import Options

        commands = commandLines(readPage("operations/metrics.rst"))
        self.assertEqual(len(commands), 2)
        parsed = []
        for words in commands:
            options = Options()
            options.parseOptions(words)
            parsed.append(options)
        self.assertEqual(parsed[0]["metrics"], "tcp:9464:interface=127.0.0.1")
        self.assertEqual(parsed[0]["metrics-queue-interval"], 15.0)
        self.assertEqual(parsed[1]["metrics-queue-interval"], 30.0)
        self.assertIsNotNone(parsed[1]["relaySetup"])

    def test_everyMetricDocumented(self) -> None:
        if CollectorRegistry is None:
            raise unittest.SkipTest("prometheus_client is not installed")
        from tests.test_docs_relay import readPage

        page = readPage("operations/metrics.rst")
        registry = CollectorRegistry(auto_describe=True)
        ServerMetrics(registry)
        QueueMetrics(registry)
        store = SQLiteStore(self.mktemp())
        QueueGauges(registry, store)
        names = {family.name for family in registry.collect()}
        self.assertEqual(len(names), 15)
        for name in names:
            documented = name + "_total" if f"``{name}_total``" in page else name
            self.assertIn(f"``{documented}``", page)
