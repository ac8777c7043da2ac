"""
``twistd -n smtp --metrics`` end to end: a real twistd with the relay on,
Python's smtplib as the client, Postfix's smtp-sink as the next hop, the
exposition fetched over HTTP and parsed with prometheus_client's parser;
then a real Prometheus (Debian's ``prometheus``) scrapes it and is asked
for one of the metrics through its HTTP API.

Waits are on twistd's log lines (one per delivery attempt) and on files;
the one poll is of Prometheus's query API (nothing tells when it has
scraped), paced and bounded.
"""

from __future__ import annotations

import json
import os
import smtplib
import urllib.parse
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.peers import requirePeer
from tests.postfixd import freePort
from tests.relay_helpers import (
    DirectoryWatch,
    shortDirectory,
    sinkDirectory,
    startSinkOn,
    waitForDumps,
)
from tests.test_relay_e2e import LOCAL, REMOTE, mailbox, relayArgs
from tests.twistd_helpers import startTwistd, withTimeout

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - the test extra installs it
    text_string_to_metric_families = None  # type: ignore[assignment]

#: How long Prometheus may take to start and scrape once (its scrape interval is 1 s).
PROMETHEUS_TIMEOUT = 60.0


class _Body(protocol.Protocol):
    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done, self.data = done, b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(self.data)


async def fetch(url: str) -> tuple[int, bytes]:
    """GET ``url`` with Twisted's HTTP client: the status and the body."""
    from twisted.web.client import Agent

    response = await Agent(reactor).request(b"GET", url.encode())
    done: defer.Deferred[bytes] = defer.Deferred()
    response.deliverBody(_Body(done))
    return response.code, await done


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def converse(port: int) -> list[int]:
    """The client (in a thread): two refused commands, a relayed message, a local one with NOTIFY=SUCCESS."""
    codes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test.invalid")
        codes.append(client.docmd("RCPT", f"TO:<bob@{LOCAL}>")[0])  # no MAIL yet: 503
        client.mail(f"alice@{LOCAL}")
        codes.append(client.docmd("RCPT", "TO:<no address>")[0])  # a syntax error: 501
        client.rset()
        client.sendmail(f"alice@{LOCAL}", [f"carol@{REMOTE}"], b"Subject: away\r\n\r\nrelayed\r\n")
        client.sendmail(
            f"alice@{LOCAL}",
            [f"bob@{LOCAL}"],
            b"Subject: here\r\n\r\nlocal\r\n",
            rcpt_options=["NOTIFY=SUCCESS"],
        )
    return codes


class _Prometheus(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(None)

    def stop(self) -> defer.Deferred[None]:
        if self.running:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
        return self.ended


class MetricsEndToEndTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        if text_string_to_metric_families is None:
            raise unittest.SkipTest("prometheus_client is not installed (pip install 'txsmtp[metrics]')")

    async def test_twistd(self) -> None:
        cwd = shortDirectory(self)
        alice = mailbox(cwd, "alice")
        mailbox(cwd, "bob")
        sinkPort, metricsPort = freePort(), freePort()
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        await startSinkOn(self, sinkPort, sinkDir)
        endpoint = f"tcp:{metricsPort}:interface=127.0.0.1"
        running = await startTwistd(
            self,
            *relayArgs(
                "--relay-host", f"[127.0.0.1]:{sinkPort}", "--relay-tls", "none",
                "--relay-networks", "127.0.0.0/8", "--metrics", endpoint, "--metrics-queue-interval", "0.2",
            ),
            cwd=cwd,
        )  # fmt: skip
        self.assertIn(f"metrics on {endpoint}", running.log)
        codes = await deferToThread(converse, running.port)
        self.assertEqual(codes, [503, 501])
        await waitForDumps(watch, 1)
        await DirectoryWatch(self, os.path.join(alice, "new")).waitForCount(1, timeout=30)
        # The success report's own delivery is the last attempt.
        await running.waitForLog(rf"to=<alice@{LOCAL}> hop=local:\S* result=delivered", timeout=30)
        await running.waitForLog(rf"to=<carol@{REMOTE}> hop=smtp:\S* result=(?:relayed|delivered)", timeout=30)

        url = f"http://127.0.0.1:{metricsPort}/metrics"
        code, body = await fetch(url)
        self.assertEqual(code, 200)
        got = parse(body.decode())
        smtp = (("listener", str(running.port)), ("protocol", "SMTP"))
        self.assertEqual(got[("txsmtp_connections_total", smtp)], 1)
        # A command out of sequence counts as "command"; a bad RCPT as RCPT.
        self.assertEqual(got[("txsmtp_commands_refused_total", (("class", "5xx"), ("command", "command")))], 1)
        self.assertEqual(got[("txsmtp_commands_refused_total", (("class", "5xx"), ("command", "RCPT")))], 1)
        self.assertEqual(got[("txsmtp_messages_accepted_total", ())], 2)
        self.assertEqual(got[("txsmtp_messages_accepted_bytes_total", ())], 26 + 24)
        self.assertNotIn(("txsmtp_messages_refused_total", (("class", "5xx"),)), got)
        relayed = sum(
            got.get(("txsmtp_delivery_recipients_total", (("hop", "smtp"), ("result", r))), 0)
            for r in ("relayed", "delivered")
        )
        self.assertEqual(relayed, 1)
        # bob, and the success report to alice
        self.assertEqual(got[("txsmtp_delivery_recipients_total", (("hop", "local"), ("result", "delivered")))], 2)
        self.assertEqual(got[("txsmtp_delivery_attempt_duration_seconds_count", (("hop", "local"),))], 2)
        self.assertEqual(got[("txsmtp_delivery_attempt_duration_seconds_count", (("hop", "smtp"),))], 1)
        self.assertEqual(got[("txsmtp_dsn_queued_total", (("kind", "success"),))], 1)
        self.assertIn(("txsmtp_queue_messages", ()), got)
        self.assertIn(("txsmtp_queue_recipients", (("state", "deferred"),)), got)
        self.assertIn(("txsmtp_queue_oldest_message_age_seconds", ()), got)

        await self._prometheus(metricsPort)

    async def _prometheus(self, metricsPort: int) -> None:
        """A real Prometheus scrapes the endpoint; its query API answers with our count."""
        path = requirePeer("prometheus")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "scrape_configs:\n  - job_name: txsmtp\n"
                f"    static_configs:\n      - targets: ['127.0.0.1:{metricsPort}']\n"
            )
        webPort = freePort()
        process = _Prometheus()
        args = [
            path, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(directory, 'data')}",
            f"--web.listen-address=127.0.0.1:{webPort}", "--log.level=warn",
        ]  # fmt: skip
        reactor.spawnProcess(process, path, args, env=dict(os.environ), path=directory)  # type: ignore[attr-defined]
        self.addCleanup(process.stop)
        query = urllib.parse.urlencode({"query": "txsmtp_messages_accepted_total"})
        url = f"http://127.0.0.1:{webPort}/api/v1/query?{query}"
        tried: list[str] = []

        async def answered() -> list[Any]:
            # Prometheus says nothing when it has scraped: ask its API until
            # it knows the value (each question paced by a quarter second).
            while process.running:
                try:
                    code, body = await fetch(url)
                except Exception as e:
                    tried.append(repr(e))
                else:
                    tried.append(f"{code} {body[:300]!r}")
                    if code == 200:
                        result: list[Any] = json.loads(body)["data"]["result"]
                        if result:
                            return result
                await task.deferLater(reactor, 0.25, lambda: None)
            raise AssertionError(f"prometheus exited: {process.output.decode(errors='replace')}")

        result = await withTimeout(
            defer.Deferred.fromCoroutine(answered()),
            PROMETHEUS_TIMEOUT,
            lambda: f"Prometheus did not answer for our metric: {tried[-3:]} {process.output[-2000:]!r}",
        )
        [series] = result
        self.assertEqual(series["metric"]["job"], "txsmtp")
        self.assertEqual(series["metric"]["__name__"], "txsmtp_messages_accepted_total")
        self.assertEqual(float(series["value"][1]), 2)


class StartupTests(unittest.TestCase):
    """What twistd says when --metrics cannot work."""

    timeout = 60

    def setUp(self) -> None:
        if text_string_to_metric_families is None:
            raise unittest.SkipTest("prometheus_client is not installed (pip install 'txsmtp[metrics]')")

    async def test_portInUse(self) -> None:
        """The metrics port in use: one line naming the option, exit 1, no traceback."""
        import socket

        from tests.test_tap import _runTwistd

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        endpoint = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        result, _ = await _runTwistd(
            self,
            ["-n", "--pidfile=", "--logfile=-"],
            ["--deliver", "discard", "--listen", "tcp:0:interface=127.0.0.1", "--metrics", endpoint],
        )
        self.assertEqual(result.code, 1, result.describe())
        self.assertEqual(
            result.err.decode().splitlines(),
            [f"twistd smtp: cannot listen on --metrics {endpoint}: Address already in use"],
            result.describe(),
        )
        self.assertNotIn(b"Traceback", result.out + result.err)
