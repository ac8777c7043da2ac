"""
The operator's log (docs/operations/logs.rst): the connection line
(txsmtp.session.logs), the delivery attempt line (txsmtp.queue.attempts),
the JSON output (txsmtp.logfile.JSONLogObserver, ``--log-format json``),
and, with a real ``twistd -n smtp`` relaying under TLS to a real txsmtp
server, one message followed from its connection to its delivery in
both formats, against the example the page prints.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from twisted.logger import Logger, formatEvent
from twisted.python import usage
from twisted.trial import unittest

from tests.certs import certificates
from tests.outbound_helpers import listen
from tests.test_docs_relay import commandLines, readPage
from tests.test_tap import _InScratchDirectory
from tests.test_testing import _RefusingDelivery
from tests.test_tls_auth import USER, authHarness, b64
from tests.twistd_helpers import LogEvents, connectClient, startTwistd
from txsmtp import logfile
from txsmtp.errors import SMTPError
from txsmtp.logfile import JSONLogObserver
from txsmtp.queue.attempts import logAttempt
from txsmtp.queue.model import AttemptResult, NextHop, QueuedRecipient, RecipientOutcome, Result
from txsmtp.tap import Options
from txsmtp.tapoperations import _checkLogs
from txsmtp.testing import MemoryDelivery, ServerHarness
from txsmtp.tls import ServerTLS

BODY = b"Subject: x\r\n\r\nhi\r\n"


def connectionEvents(events: LogEvents) -> list[dict[str, Any]]:
    return [e for e in events.events if "end" in e and "refusedCommands" in e]


class ConnectionLineTests(unittest.TestCase):
    """One line per connection, at its end, over the session harness."""

    def setUp(self) -> None:
        self.events = LogEvents(self)

    def test_quit(self) -> None:
        """A message, a refused recipient, QUIT: the counts, the ids, the reason."""
        delivery = MemoryDelivery()
        delivery.refusedRecipients["no@example.org"] = SMTPError(550, "5.1.1", "no such user")
        h = ServerHarness(delivery)
        h.sendMessage(b"a@example.com", [b"b@example.org"], BODY)
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com>").code, 250)
        self.assertEqual(h.command(b"RCPT TO:<no@example.org>").code, 550)
        h.clock.advance(2.5)
        self.assertEqual(h.command(b"QUIT").code, 221)
        self.assertEqual(connectionEvents(self.events), [])  # not before its end
        h.disconnect()
        [event] = connectionEvents(self.events)
        [transaction] = [e for e in self.events.events if e.get("result") == "accepted"]
        session = event["session"]
        self.assertTrue(session)
        self.assertEqual(transaction["session"], session)
        text = formatEvent(event)
        self.assertEqual(
            text,
            f"connection session={session} peer=192.0.2.7 helo=client.example duration=2.500 "
            "accepted=1 refused=0 refusedCommands=1 end=quit",
        )
        self.assertEqual((event["accepted"], event["refused"], event["refusedCommands"]), (1, 0, 1))
        self.assertEqual(event["duration"], 2.5)
        self.assertIsNone(event["tlsVersion"])
        self.assertIn(f" session={session}", formatEvent(transaction))

    def test_refusedMessageCounted(self) -> None:
        """A message the delivery refuses at DATA counts as refused."""
        h = ServerHarness(_RefusingDelivery())
        replies = h.sendMessage(b"a@example.com", [b"b@example.org"], BODY)
        self.assertGreaterEqual(replies[-1].code, 400)
        h.command(b"QUIT")
        h.disconnect()
        [event] = connectionEvents(self.events)
        self.assertEqual((event["accepted"], event["refused"], event["end"]), (0, 1, "quit"))

    def test_timeout(self) -> None:
        h = ServerHarness()
        h.command(b"EHLO client.example")
        h.clock.advance(301)
        self.assertTrue(h.closed)
        h.disconnect()
        [event] = connectionEvents(self.events)
        self.assertEqual(event["end"], "timeout")
        self.assertIn(" end=timeout", formatEvent(event))
        self.assertNotIn("error=", formatEvent(event))

    def test_tooManyErrors(self) -> None:
        h = ServerHarness(maxErrors=3)
        h.command(b"EHLO client.example")
        for i in range(2):
            h.command(b"XYZZY%d" % i)
        self.assertEqual([r.code for r in h.send(b"XYZZY2\r\n")], [500, 421])
        self.assertTrue(h.closed)
        h.disconnect()
        [event] = connectionEvents(self.events)
        self.assertEqual((event["end"], event["refusedCommands"]), ("too-many-errors", 3))

    def test_lostSaysWhy(self) -> None:
        """The client vanished without QUIT (a non-clean close): ``lost`` and the error."""
        h = ServerHarness()
        h.command(b"EHLO client.example")
        h.disconnect()
        [event] = connectionEvents(self.events)
        self.assertEqual(event["end"], "lost")
        self.assertIn("error=[Connection to the other side was lost", formatEvent(event))

    def test_authenticatedUserAndTLS(self) -> None:
        h = authHarness()
        self.assertEqual(h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0wrong")).code, 535)
        self.assertEqual(h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{_password()}")).code, 235)
        h.command(b"QUIT")
        h.disconnect()
        [event] = connectionEvents(self.events)
        self.assertEqual(event["authenticated"], USER)
        self.assertIn(f" tls={event['tlsVersion']} auth={USER} ", formatEvent(event))
        self.assertTrue(event["tlsVersion"].startswith("TLSv1."))
        self.assertEqual(event["refusedCommands"], 0)  # a failed AUTH has its own line

    def test_fail2banRegex(self) -> None:
        """The page's fail2ban filter matches the line of a failed login (as the text log writes it)."""
        h = authHarness()
        self.assertEqual(h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0wrong")).code, 535)
        [event] = [e for e in self.events.events if "mechanism" in e]
        out = io.StringIO()
        logfile.TextLogObserver(out)(event)
        page = readPage("operations/logs.rst")
        failregex = re.search(r"failregex = (.*)", page).group(1)  # type: ignore[union-attr]
        pattern = failregex.replace("<HOST>", r"(?P<host>\S+)")
        m = re.search(pattern, out.getvalue())
        self.assertIsNotNone(m, (pattern, out.getvalue()))
        self.assertEqual(m.group("host"), "192.0.2.7")  # type: ignore[union-attr]


def _password() -> str:
    from tests.test_tls_auth import PASSWORD

    return PASSWORD


class AttemptLineTests(unittest.TestCase):
    def test_hostTLSDuration(self) -> None:
        log = Logger(namespace="txsmtp.queue")
        events: list[dict[str, Any]] = []
        log.observer = events.append  # type: ignore[method-assign]
        hop = NextHop("mx", "example.com")
        recipients = [QueuedRecipient(0, "a@example.com"), QueuedRecipient(1, "b@example.com"), QueuedRecipient(2, "c@example.com")]
        ok = AttemptResult(Result.DELIVERED, "2.0.0", "smtp; 250 ok", "dns; mx.example.com", "delivered to mx.example.com:25: 250 ok", tls="TLSv1.3")
        refused = AttemptResult(Result.FAILED, "5.1.1", "smtp; 550 5.1.1 no", "dns; mx.example.com", "mx.example.com:25 said: 550 5.1.1 no")
        outcomes = [RecipientOutcome(0, Result.DELIVERED), RecipientOutcome(1, Result.DELIVERED), RecipientOutcome(2, Result.FAILED)]
        logAttempt(log, "Q1", hop, recipients, [ok, ok, refused], outcomes, 0.41234)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                'Q1: to=<a@example.com>,<b@example.com> hop=mx:example.com result=delivered status=2.0.0 attempts=1 '
                'host=mx.example.com tls=TLSv1.3 duration=0.412 reason="delivered to mx.example.com:25: 250 ok"',
                'Q1: to=<c@example.com> hop=mx:example.com result=failed status=5.1.1 attempts=1 '
                'host=mx.example.com duration=0.412 reason="mx.example.com:25 said: 550 5.1.1 no"',
            ],
        )
        self.assertEqual((events[0]["host"], events[0]["tls"], events[0]["duration"]), ("mx.example.com", "TLSv1.3", 0.412))
        self.assertIsNone(events[1]["tls"])

    def test_tlsNotPartOfEquality(self) -> None:
        a = AttemptResult(Result.DELIVERED, "2.0.0", tls="TLSv1.3")
        self.assertEqual(a, AttemptResult(Result.DELIVERED, "2.0.0"))


class JSONObserverTests(unittest.TestCase):
    def record(self, emit: Any) -> list[dict[str, Any]]:
        out = io.StringIO()
        log = Logger(namespace="txsmtp.test", observer=JSONLogObserver(out))
        emit(log)
        lines = out.getvalue().splitlines()
        return [json.loads(line) for line in lines]

    def test_fieldsAndText(self) -> None:
        [record] = self.record(lambda log: log.info("{text}", text="accepted id=X", queueId="X", stored=["Q"], obj=object()))
        self.assertEqual(record["text"], "accepted id=X")
        self.assertEqual((record["level"], record["namespace"]), ("info", "txsmtp.test"))
        self.assertEqual((record["queueId"], record["stored"]), ("X", ["Q"]))
        self.assertTrue(record["obj"].startswith("<object object"))
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertFalse([k for k in record if k.startswith("log_")])

    def test_formatted(self) -> None:
        [record] = self.record(lambda log: log.warn("queue {store}: {n} left", store="q", n=3))
        self.assertEqual((record["text"], record["level"], record["n"]), ("queue q: 3 left", "warn", 3))

    def test_tracebackKept(self) -> None:
        def emit(log: Logger) -> None:
            try:
                {}["missing"]
            except KeyError:
                log.failure("lookup of {what} failed", what="missing")

        [record] = self.record(emit)
        self.assertEqual(record["text"], "lookup of missing failed")
        self.assertEqual(record["level"], "critical")
        self.assertIn("Traceback", record["traceback"])
        self.assertIn("KeyError", record["traceback"])
        self.assertIn("test_logs.py", record["traceback"])

    def test_unserialisableKeys(self) -> None:
        [record] = self.record(lambda log: log.info("{text}", text="odd", odd={1: "x", (2, 3): "y"}))
        self.assertEqual(record["text"], "odd")


class _Parent(dict):  # type: ignore[type-arg]
    pass


class LogFormatOptionTests(_InScratchDirectory, unittest.TestCase):
    def options(self, *args: str, **parent: Any) -> Options:
        options = Options()
        options.parent = _Parent(parent)
        options.parseOptions(list(args))
        return options

    def test_default(self) -> None:
        options = self.options(logfile="-")
        self.assertEqual(options["log-format"], "text")
        self.assertEqual(options.parent["logger"], "txsmtp.logfile.twistdLogger")

    def test_json(self) -> None:
        options = self.options("--log-format", "JSON", logfile="out.json", nodaemon=True)
        self.assertEqual(options["log-format"], "json")
        self.assertEqual(options.parent["logger"], "txsmtp.logfile.jsonLogger")
        self.assertEqual(logfile.twistdOptions["logfile"], "out.json")

    def test_refused(self) -> None:
        with self.assertRaisesRegex(usage.UsageError, "--log-format takes text or json, not 'xml'"):
            self.options("--log-format", "xml")
        with self.assertRaisesRegex(usage.UsageError, "--syslog do not go together"):
            self.options("--log-format", "json", syslog=True)
        with self.assertRaisesRegex(usage.UsageError, "--logger my.observer do not go together"):
            self.options("--log-format", "json", logger="my.observer")

    def test_checkWithoutTwistd(self) -> None:
        options: dict[str, Any] = {"log-format": "json"}
        _checkLogs(options)
        self.assertEqual(options["log-format"], "json")

    def test_pageCommandLinesParse(self) -> None:
        """Every ``twistd ... smtp ...`` command line of the page is accepted by the option parser."""
        commands = commandLines(readPage("operations/logs.rst"))
        self.assertGreaterEqual(len(commands), 1)
        for words in commands:
            words = [w.replace("/var/spool/txsmtp", "queue") for w in words]
            self.options(*words, logfile="-")


# -- a real twistd ---------------------------------------------------------------------

_KEYS = re.compile(r"(\w+)=")


def shape(line: str) -> tuple[str, list[str]]:
    """The first word (or ``QUEUEID:``) and the keys in order: the form of a log line."""
    text = line.split("] ", 1)[1] if "] " in line else line
    head = text.split(" ", 1)[0]
    head = "QUEUEID:" if head.endswith(":") else head
    # The keys before any quoted or bracketed free text.
    body = re.sub(r'reason=(".*"|\[.*\])$', "reason=", text)
    return head, _KEYS.findall(body)


def documentedExample() -> list[str]:
    page = readPage("operations/logs.rst")
    m = re.search(r"these fields,\s+in this order\)::\n\n((?: {4}.*\n)+)", page)
    assert m is not None, "no example in docs/operations/logs.rst"
    return [line.strip() for line in m.group(1).splitlines()]


class TwistdTests(unittest.TestCase):
    """``twistd -n smtp`` with a queue, relaying under TLS to a txsmtp server."""

    timeout = 120

    async def relay(self, *extra: str) -> tuple[Any, str, str]:
        certs = certificates()
        nextHop = listen(self, tls=ServerTLS(certs.chain, certs.key))
        route = f"remote.test=smtp:[127.0.0.1]:{nextHop.port}"
        running = await startTwistd(
            self, "--hostname", "relay.test.invalid", "--queue", "queue", "--relay-networks", "127.0.0.0/8",
            "--route", route, *extra,
        )  # fmt: skip
        client = await connectClient(self, running.port)
        for line in (b"EHLO client.test", b"MAIL FROM:<alice@example.org>", b"RCPT TO:<bob@remote.test>", b"DATA"):
            [reply] = await client.command(line)
            self.assertLess(reply.code, 400, running.log)
        [done] = await client.command(b"Subject: logs\r\n\r\nhello\r\n.")
        self.assertEqual(done.code, 250, running.log)
        replyId = done.lines[0].split()[-1] if done.lines else ""
        await client.command(b"QUIT")
        await running.waitForLog(r"to=<bob@remote\.test>.*result=delivered", timeout=60)
        await running.waitForLog(r"end=quit", timeout=60)
        self.assertEqual(len(nextHop.factory.delivery.messages), 1)
        return running, replyId, f"smtp:[127.0.0.1]:{nextHop.port}"

    async def test_followOneMessageText(self) -> None:
        running, replyId, hop = await self.relay()
        lines = running.log.splitlines()
        [accepted] = [line for line in lines if "] accepted id=" in line]
        queueId = re.search(r" stored=(\S+)", accepted).group(1)  # type: ignore[union-attr]
        session = re.search(r" session=(\S+)", accepted).group(1)  # type: ignore[union-attr]
        transactionId = re.search(r" id=(\S+)", accepted).group(1)  # type: ignore[union-attr]
        self.assertIn(transactionId, replyId + " " + running.log)
        [connection] = [line for line in lines if f"] connection session={session} " in line]
        [attempt] = [line for line in lines if f"] {queueId}: to=" in line]
        self.assertIn(" end=quit", connection)
        self.assertIn(" accepted=1 refused=0 ", connection)
        self.assertNotIn(" tls=", connection)  # the client did not use STARTTLS
        self.assertIn(f" hop={hop} result=delivered ", attempt)
        self.assertRegex(attempt, r" host=127\.0\.0\.1 tls=TLSv1\.[23] duration=\d+\.\d{3} ")
        # The page's example has the shape of these lines.
        documented = {shape(line)[0]: shape(line)[1] for line in documentedExample()}
        got = {shape(line)[0]: shape(line)[1] for line in (accepted, connection, attempt)}
        self.assertEqual(documented.keys(), got.keys())
        for head in got:
            self.assertEqual(got[head], documented[head], head)

    async def test_followOneMessageJSON(self) -> None:
        running, replyId, hop = await self.relay("--log-format", "json")
        await running.stop()
        records = []
        for line in running.log.splitlines():
            if not line.strip():
                continue
            records.append(json.loads(line))  # every line: a JSON object
        self.assertTrue(all({"time", "level", "namespace", "text"} <= r.keys() for r in records))
        [accepted] = [r for r in records if r.get("result") == "accepted"]
        [queueId] = accepted["stored"]
        [connection] = [r for r in records if r.get("end") is not None and r.get("session") == accepted["session"]]
        [attempt] = [r for r in records if r.get("queueId") == queueId and "hop" in r]
        self.assertEqual((connection["end"], connection["accepted"]), ("quit", 1))
        # The page's JSON example has the keys of the real record, in order.
        [documented] = re.findall(r'^    (\{"time".*\})$', readPage("operations/logs.rst"), re.M)
        self.assertEqual(list(json.loads(documented)), list(connection))
        self.assertEqual((attempt["result"], attempt["hop"], attempt["host"]), ("delivered", hop, "127.0.0.1"))
        self.assertTrue(attempt["tls"].startswith("TLSv1."))
        self.assertIsInstance(attempt["duration"], float)
        self.assertEqual(attempt["namespace"], "txsmtp.queue")
        self.assertTrue(any("listening on" in r["text"] for r in records))
        self.assertNotIn("Traceback", running.log)
