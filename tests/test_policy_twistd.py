"""
The policy services end to end: ``twistd -n smtp --policy-service ...``
in a subprocess, asking the real policyd-spf (a unix socket) then the real
postgrey (TCP); the fields they prepend reach the delivered message
through the relay queue.  Then a service that is down, with
``--policy-default defer``, and the command lines of
docs/operations/policy.rst.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from tests.policypeers import freePort, startPolicydSPF, startPostgrey
from tests.relay_helpers import DirectoryWatch
from tests.test_docs_relay import commandLines, readPage
from tests.test_policyservice import SPF_ZONES
from tests.test_relay_e2e import transaction
from tests.twistd_helpers import connectClient, startTwistd
from txsmtp.tap import Options


def message(sender: str, subject: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: bob@local.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@test>\r\n\r\nHello Bob\r\n"
    ).encode()


class PolicyTwistdTests(unittest.TestCase):
    timeout = 120

    async def start(self, *extra: str) -> Any:
        cwd = tempfile.mkdtemp(prefix="txsmtp-test-policy-")
        self.addCleanup(subprocess.run, ["rm", "-rf", cwd])
        running = await startTwistd(
            self,
            "--hostname", "mx.local.test", "--queue", "queue", "--local-domains", "local.test",
            "--deliver", "maildir:Maildir", *extra,
            cwd=cwd,
        )  # fmt: skip
        self.watch = DirectoryWatch(self, os.path.join(cwd, "Maildir", "new"))
        return running

    async def send(self, running: Any, sender: str, subject: str) -> list[Any]:
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.example.org")
        replies = await transaction(client, sender, ["bob@local.test"], message(sender, subject))
        await client.command(b"QUIT")
        return replies

    async def test_spfAndGreylisting(self) -> None:
        """
        policyd-spf refuses a failing sender at RCPT; for a passing one
        postgrey greylists the first attempt, and the retry after its
        delay is delivered with both services' fields above the message.
        """
        path = await startPolicydSPF(self, SPF_ZONES)
        port, _ = await startPostgrey(self, delay=1)
        running = await self.start("--policy-service", f"unix:{path}", "--policy-service", f"tcp:127.0.0.1:{port}")
        self.assertIn(f"policy services unix:{path}, tcp:127.0.0.1:{port} at RCPT", running.log)
        refused = await self.send(running, "mallory@fail.example", "forged")
        self.assertEqual((refused[1].code, refused[1].enhanced), (550, "5.7.23"), refused)
        first = await self.send(running, "alice@pass.example", "hello")
        self.assertEqual(first[1].code, 450, first)
        self.assertIn("Greylisted", first[1].text)
        retries = 0
        while True:
            replies = await self.send(running, "alice@pass.example", "hello")
            if replies[1].code == 450:
                retries += 1
                self.assertLess(retries, 40, "postgrey never let the retry through")
                await task.deferLater(reactor, 0.25, lambda: None)
                continue
            break
        self.assertEqual(replies[-1].code, 250, replies)
        [name] = await self.watch.waitForCount(1)
        with open(os.path.join(self.watch.path, name), "rb") as f:
            stored = f.read()
        head = stored.split(b"\r\n\r\n", 1)[0]
        fields = [line.split(b":", 1)[0] for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
        self.assertIn(b"Received-SPF", fields)
        self.assertIn(b"X-Greylist", fields)
        self.assertIn(b"Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=127.0.0.1", head)
        # Above the message's own fields.
        self.assertLess(fields.index(b"Received-SPF"), fields.index(b"Subject"))
        self.assertEqual(head.count(b"Received-SPF:"), 1)

    async def test_dataStage(self) -> None:
        """
        --policy-stages DATA: both services are asked once, at DATA, with
        the one recipient's address: postgrey greylists, then policyd-spf
        refuses the failing sender.
        """
        path = await startPolicydSPF(self, SPF_ZONES)
        port, _ = await startPostgrey(self, delay=1)
        running = await self.start(
            "--policy-service", f"tcp:127.0.0.1:{port}", "--policy-service", f"unix:{path}",
            "--policy-stages", "data",
        )  # fmt: skip
        replies = await self.send(running, "mallory@fail.example", "forged")
        self.assertEqual([r.code for r in replies], [250, 250, 450], replies)
        self.assertIn("Greylisted", replies[2].text)
        retries = 0
        while True:
            replies = await self.send(running, "mallory@fail.example", "forged")
            if replies[2].code == 450:
                retries += 1
                self.assertLess(retries, 40, "postgrey never let the retry through")
                await task.deferLater(reactor, 0.25, lambda: None)
                continue
            break
        self.assertEqual([r.code for r in replies], [250, 250, 550], replies)
        self.assertEqual(replies[2].enhanced, "5.7.23")

    async def test_endOfMessage(self) -> None:
        """
        --policy-stages END-OF-MESSAGE: policyd-spf refuses after the final
        dot, and its field for a pass reaches the delivered message.
        """
        path = await startPolicydSPF(self, SPF_ZONES)
        running = await self.start("--policy-service", f"unix:{path}", "--policy-stages", "END-OF-MESSAGE")
        replies = await self.send(running, "mallory@fail.example", "forged")
        self.assertEqual([r.code for r in replies], [250, 250, 354, 550], replies)
        self.assertEqual(replies[3].enhanced, "5.7.23")
        replies = await self.send(running, "alice@pass.example", "hello")
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250], replies)
        [name] = await self.watch.waitForCount(1)
        with open(os.path.join(self.watch.path, name), "rb") as f:
            stored = f.read()
        self.assertIn(b"Subject: hello", stored)
        self.assertEqual(stored.count(b"\r\nReceived-SPF: Pass (mailfrom)") + stored.startswith(b"Received-SPF: Pass"), 1)

    async def test_downDefers(self) -> None:
        """A service that is down, with --policy-default defer: 451 4.3.0 at RCPT, and a log line."""
        running = await self.start(
            "--policy-service", f"tcp:127.0.0.1:{freePort()}", "--policy-default", "defer", "--policy-timeout", "3"
        )
        replies = await self.send(running, "alice@pass.example", "hello")
        self.assertEqual((replies[1].code, replies[1].enhanced), (451, "4.3.0"), replies)
        self.assertIn("try again later", replies[1].text)
        await running.waitForLog(r"policy service tcp:127\.0\.0\.1:\d+ failed")


class PolicyDocsTests(unittest.TestCase):
    def test_commandLines(self) -> None:
        """Every twistd command line of docs/operations/policy.rst is taken by the option parser."""
        commands = commandLines(readPage("operations/policy.rst"))
        self.assertGreaterEqual(len(commands), 2)
        for words in commands:
            options = Options()
            options.parseOptions(words)
            self.assertTrue(options["policy-service"], words)

    def test_badOptions(self) -> None:
        from twisted.python import usage

        for words, error in [
            (["--policy-service", "carrier-pigeon:x"], "not a client endpoint description"),
            (["--policy-service", "tcp:127.0.0.1:10023", "--policy-default", "HOLD"], "--policy-default"),
            (["--policy-service", "tcp:127.0.0.1:10023", "--policy-stages", "MAIL"], "--policy-stages"),
            (["--policy-service", "tcp:127.0.0.1:10023", "--policy-timeout", "0"], "--policy-timeout"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(["--deliver", "maildir:/tmp/x", *words])
            self.assertIn(error, str(caught.exception))

    def test_connectionsOption(self) -> None:
        from twisted.python import usage

        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--deliver", "maildir:/tmp/x", "--policy-service", "tcp:127.0.0.1:1", "--policy-connections", "0"])
