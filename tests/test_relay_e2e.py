"""
The relay end to end: ``twistd -n smtp`` with the relay on, in a
subprocess, with real clients (raw SMTP, swaks, txsmtp's own client) and
Postfix's smtp-sink as the next hop.

1. Never an open relay: an unauthenticated client outside the relay
   networks gets ``554 5.7.1`` for every other domain, tricks included,
   and ``250`` for a local one (delivered through the queue's local hop,
   with the "delivered" report NOTIFY=SUCCESS asks for).
2. swaks submits with AUTH over STARTTLS on a ``--require-auth`` listener;
   the message is relayed through ``--relay-host`` into smtp-sink, byte
   for byte.
3. A soft refusal defers (the reason shown by ``txsmtp queue list``), a
   retry delivers; a hard refusal bounces, and the failure report reaches
   the sender's local mailbox.
4. ``kill -9`` during a run of hundreds of messages, restart on the same
   queue: every message acknowledged with 250 reaches the sink; the
   duplicates (messages in flight at the kill) are counted.
5. The queue on a full disk (a small tmpfs): ``452 4.3.1``, nothing half
   queued, the server goes on.
6. A routing loop ends with ``554 5.4.6`` and a failure report.

Nothing sleeps: waits are on log lines (the scheduler logs each attempt's
result), on files (inotify) and on processes.
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
from email.message import Message
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.certs import certificates
from tests.peers import PEERS_REQUIRED, requirePeer
from tests.relay_helpers import (
    DirectoryWatch,
    freePort,
    shortDirectory,
    sinkDirectory,
    sinkMessages,
    startSinkOn,
    waitForDumps,
)
from tests.twistd_helpers import (
    RawSMTPClient,
    RunningTwistd,
    childEnv,
    connectClient,
    readAll,
    runProcess,
    startTwistd,
    withTimeout,
)

HOSTNAME = "mx.test.invalid"
LOCAL = "local.test"
REMOTE = "remote.test"
PASSWORD = "Wonder-l4nd-pw"


def mailbox(cwd: str, user: str, domain: str = LOCAL) -> str:
    """Make ``vmail/DOMAIN/USER`` with its ``new``, ``tmp`` and ``cur``; return it."""
    path = os.path.join(cwd, "vmail", domain, user)
    for sub in ("new", "tmp", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


def newDirectory(testCase: unittest.TestCase) -> str:
    # Short: the queue's control.sock must fit in a UNIX socket address.
    return shortDirectory(testCase)


def relayArgs(*extra: str) -> list[str]:
    """The options every test here uses: a queue, one local domain in vmail/, quick retries."""
    return [
        "--hostname", HOSTNAME, "--queue", "queue", "--local-domains", LOCAL,
        "--deliver", "virtual:vmail", "--retry-min", "1", "--retry-max", "2", *extra,
    ]  # fmt: skip


def queueList(queue: str) -> list[dict[str, Any]]:
    """``txsmtp queue list --json --queue QUEUE``, parsed."""
    out = subprocess.run(
        [sys.executable, "-m", "txsmtp.cli", "queue", "list", "--json", "--queue", queue],
        capture_output=True,
        env=childEnv(),
        timeout=30,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def transaction(
    client: RawSMTPClient, sender: str, recipients: list[str], message: bytes
) -> list[Any]:
    """MAIL, RCPT..., DATA, the message (dot-stuffed here), the final dot; every reply."""
    replies = []
    for line in [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]:
        replies += await client.command(line.encode())
    if replies[-1].code != 354:
        return replies
    stuffed = re.sub(rb"(?m)^\.", b"..", message)
    replies += await client.command(stuffed + b".")
    return replies


def parseMaildirFile(path: str) -> Message:
    with open(path, "rb") as f:
        return email.message_from_bytes(f.read())


def statusFields(report: Message) -> list[Message]:
    """The per-message and per-recipient field groups of a message/delivery-status part."""
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            groups = part.get_payload()
            assert isinstance(groups, list), groups
            return groups
    raise AssertionError(f"no message/delivery-status part in {report.as_string()[:2000]}")


class OpenRelayTests(unittest.TestCase):
    """1. The open-relay proof, and local mail through the queue."""

    timeout = 60

    async def test_unauthenticated_remote_refused(self) -> None:
        cwd = newDirectory(self)
        bob = mailbox(cwd, "bob")
        running = await startTwistd(self, *relayArgs(), cwd=cwd)
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.test.invalid")
        tricks = [
            f"bob@{REMOTE}",
            f"bob@{REMOTE.upper()}",
            f"bob%{REMOTE}@{LOCAL}",
            f"{REMOTE}!bob@{LOCAL}",
            f'"bob@{REMOTE}"@{LOCAL}',
            "bob@[127.0.0.1]",
            "bob@[192.0.2.1]",
            f"@{LOCAL}:bob@{REMOTE}",
        ]
        for address in tricks:
            [mail] = await client.command(f"MAIL FROM:<someone@{REMOTE}>".encode())
            self.assertEqual(mail.code, 250)
            [reply] = await client.command(f"RCPT TO:<{address}>".encode())
            self.assertEqual((reply.code, reply.enhanced), (554, "5.7.1"), f"{address}: {reply}")
            self.assertIn("Relay access denied", reply.text)
            await client.command(b"RSET")
        for address in (f"bob@{REMOTE}.", f"bob@{LOCAL}."):
            await client.command(f"MAIL FROM:<someone@{REMOTE}>".encode())
            [reply] = await client.command(f"RCPT TO:<{address}>".encode())
            self.assertEqual(reply.code, 501, f"{address}: {reply}")
            await client.command(b"RSET")
        # Unknown local users are refused at RCPT, never accepted and bounced.
        await client.command(f"MAIL FROM:<someone@{REMOTE}>".encode())
        [reply] = await client.command(f"RCPT TO:<carol@{LOCAL}>".encode())
        self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"))
        await client.command(b"RSET")
        message = b"Subject: for bob\r\n\r\nhello bob\r\n"
        replies = await transaction(client, f"someone@{REMOTE}", [f"Bob@{LOCAL.upper()}"], message)
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250], replies)
        [path] = await DirectoryWatch(self, os.path.join(bob, "new")).waitForCount(1)
        with open(os.path.join(bob, "new", path), "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(b"\r\n" + message), data)
        self.assertIn(b"Delivered-To: Bob@LOCAL.TEST\r\n", data)
        await running.waitForLog(r"result=delivered")
        self.assertNotIn("result=relayed", running.log)

    async def test_local_success_report(self) -> None:
        """NOTIFY=SUCCESS to a local mailbox: the message, and a "delivered" report to the sender."""
        cwd = newDirectory(self)
        alice, bob = mailbox(cwd, "alice"), mailbox(cwd, "bob")
        running = await startTwistd(self, *relayArgs(), cwd=cwd)
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.test.invalid")
        lines = [
            f"MAIL FROM:<alice@{LOCAL}> RET=HDRS ENVID=e-42",
            f"RCPT TO:<bob@{LOCAL}> NOTIFY=SUCCESS ORCPT=rfc822;bob@{LOCAL}",
            "DATA",
        ]
        for line in lines:
            [reply] = await client.command(line.encode())
            self.assertLess(reply.code, 400, reply)
        [done] = await client.command(b"Subject: tell me\r\n\r\nplease\r\n.")
        self.assertEqual(done.code, 250)
        await DirectoryWatch(self, os.path.join(bob, "new")).waitForCount(1)
        [name] = await DirectoryWatch(self, os.path.join(alice, "new")).waitForCount(1)
        report = parseMaildirFile(os.path.join(alice, "new", name))
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        self.assertIn("Return-Path: <>", str(report))
        perMessage, perRecipient = statusFields(report)
        self.assertEqual(perMessage["Original-Envelope-Id"], "e-42")
        self.assertEqual(perRecipient["Action"], "delivered")
        self.assertTrue(perRecipient["Status"].startswith("2."), perRecipient["Status"])
        self.assertEqual(perRecipient["Final-Recipient"], f"rfc822; bob@{LOCAL}")
        self.assertEqual(perRecipient["Original-Recipient"], f"rfc822; bob@{LOCAL}")


class SubmissionTests(unittest.TestCase):
    """2. swaks with AUTH over STARTTLS, relayed to a smart host (smtp-sink)."""

    timeout = 90

    async def test_swaks_auth_relayed_byte_exact(self) -> None:
        swaks = requirePeer("swaks")
        cwd = newDirectory(self)
        mailbox(cwd, "alice")
        c = certificates()
        with open(os.path.join(cwd, "users"), "w") as f:
            f.write(f"alice:{PASSWORD}\n")
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        sink = await startSinkOn(self, freePort(), sinkDir)
        running = await startTwistd(
            self,
            *relayArgs(
                "--tls-cert", c.chain, "--tls-key", c.key, "--auth", "file:users", "--require-auth",
                "--relay-host", f"[127.0.0.1]:{sink.port}", "--relay-tls", "none",
            ),
            cwd=cwd,
        )  # fmt: skip
        message = (
            b"From: Alice <alice@local.test>\r\nTo: carol@remote.test\r\nSubject: submitted\r\n\r\n"
            b"first line\r\n.a line starting with a dot\r\n\r\n\xc3\xa9 8-bit\r\nlast line\r\n"
        )
        path = os.path.join(cwd, "message.eml")
        with open(path, "wb") as f:
            f.write(message)
        # Without AUTH: refused before MAIL (a submission port).
        refused = await runProcess(
            swaks,
            ["--server", f"127.0.0.1:{running.port}", "--tls", "--from", f"alice@{LOCAL}",
             "--to", f"carol@{REMOTE}", "--data", "@" + path, "--timeout", "20"],
            timeout=40,
        )  # fmt: skip
        self.assertNotEqual(refused.code, 0)
        self.assertIn(b"530 5.7.0", refused.out)
        # Logged in, alice may not send as bob.
        forged = await runProcess(
            swaks,
            ["--server", f"127.0.0.1:{running.port}", "--tls", "--auth", "PLAIN",
             "--auth-user", "alice", "--auth-password", PASSWORD, "--from", f"bob@{LOCAL}",
             "--to", f"carol@{REMOTE}", "--data", "@" + path, "--timeout", "20"],
            timeout=40,
        )  # fmt: skip
        self.assertNotEqual(forged.code, 0)
        self.assertIn(b"<~* 553 5.7.1 Sender address <bob@local.test> not owned by user alice", forged.out)
        result = await runProcess(
            swaks,
            ["--server", f"127.0.0.1:{running.port}", "--tls", "--auth", "PLAIN",
             "--auth-user", "alice", "--auth-password", PASSWORD, "--from", f"alice@{LOCAL}",
             "--to", f"carol@{REMOTE}", "--data", "@" + path, "--timeout", "20"],
            timeout=40,
        )  # fmt: skip
        self.assertEqual(result.code, 0, result.describe())
        transcript = result.out.decode("utf-8", "replace")
        self.assertIn("<~  235 2.7.0", transcript)
        self.assertIn("<~  250 2.0.0", transcript)
        # What swaks sent, line by line after 354 (TLS lines are marked "~>").
        sent = transcript.split("<~  354 ", 1)[1].split("\n", 1)[1]
        lines = []
        for line in sent.splitlines():
            if not line.startswith(" ~> "):
                break
            lines.append(line[4:])
        self.assertEqual(lines[-1], ".")
        sentBody = "".join(line[1:] if line.startswith(".") else line for line in [x + "\n" for x in lines[:-1]])
        await waitForDumps(watch, 1)
        [dump] = sinkMessages(watch)
        self.assertEqual(dump.mailArgs.split(b" ")[0], b"<alice@local.test>")
        self.assertEqual([a.split(b" ")[0] for a in dump.rcptArgs], [b"<carol@remote.test>"])
        # smtp-sink stores LF line ends; txsmtp's Received: comes first.
        m = re.match(rb"Received: from [^\n]*\n(?:\t[^\n]*\n)+", dump.body)
        self.assertIsNotNone(m, dump.body[:400])
        assert m is not None
        self.assertIn(b"by mx.test.invalid (txsmtp) with ESMTPSA", m.group(0))
        self.assertEqual(dump.body[m.end() :], sentBody.encode("utf-8", "surrogateescape"))
        # swaks sends the file and one more line end of its own.
        self.assertEqual(dump.body[m.end() :], message.replace(b"\r\n", b"\n") + b"\n")
        await running.waitForLog(r"result=(?:relayed|delivered)")


class DeferTests(unittest.TestCase):
    """3. Soft refusal: deferred, then delivered; hard refusal: bounced to the sender."""

    timeout = 90

    async def _send(self, running: RunningTwistd, sender: str, recipient: str, message: bytes) -> None:
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.test.invalid")
        replies = await transaction(client, sender, [recipient], message)
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250], replies)
        await client.close()

    async def test_defer_then_deliver(self) -> None:
        cwd = newDirectory(self)
        mailbox(cwd, "alice")
        port = freePort()
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        soft = await startSinkOn(self, port, sinkDir, "-r", "rcpt")
        running = await startTwistd(
            self,
            *relayArgs("--relay-host", f"[127.0.0.1]:{port}", "--relay-tls", "none", "--relay-networks", "127.0.0.0/8"),
            cwd=cwd,
        )
        message = b"Subject: patience\r\n\r\nsoon\r\n"
        await self._send(running, f"alice@{LOCAL}", f"carol@{REMOTE}", message)
        await running.waitForLog(r"to=<carol@remote\.test>.*result=deferred", timeout=30)
        [queued] = queueList(os.path.join(cwd, "queue"))
        [recipient] = queued["recipients"]
        self.assertEqual(recipient["address"], f"carol@{REMOTE}")
        self.assertEqual(recipient["state"], "deferred")
        self.assertGreaterEqual(recipient["attempts"], 1)
        self.assertRegex(recipient["last_error"] or "", r"4\d\d")
        await soft.stop()
        await startSinkOn(self, port, sinkDir)
        await waitForDumps(watch, 1)
        [dump] = sinkMessages(watch)
        self.assertTrue(dump.body.endswith(b"\n\nsoon\n"), dump.body)
        await running.waitForLog(r"to=<carol@remote\.test>.*result=(?:relayed|delivered)", timeout=30)
        self.assertEqual(queueList(os.path.join(cwd, "queue")), [])

    async def test_hard_refusal_bounces(self) -> None:
        cwd = newDirectory(self)
        alice = mailbox(cwd, "alice")
        port = freePort()
        sinkDir = sinkDirectory(self)
        await startSinkOn(self, port, sinkDir, "-f", "rcpt")
        running = await startTwistd(
            self,
            *relayArgs("--relay-host", f"[127.0.0.1]:{port}", "--relay-tls", "none", "--relay-networks", "127.0.0.0/8"),
            cwd=cwd,
        )
        message = b"Subject: doomed\r\nMessage-Id: <doomed@local.test>\r\n\r\nno\r\n"
        await self._send(running, f"alice@{LOCAL}", f"carol@{REMOTE}", message)
        [name] = await DirectoryWatch(self, os.path.join(alice, "new")).waitForCount(1, timeout=30)
        report = parseMaildirFile(os.path.join(alice, "new", name))
        self.assertEqual(report.get_content_type(), "multipart/report")
        _, perRecipient = statusFields(report)
        self.assertEqual(perRecipient["Action"], "failed")
        self.assertTrue(perRecipient["Status"].startswith("5."), perRecipient["Status"])
        self.assertEqual(perRecipient["Final-Recipient"], f"rfc822; carol@{REMOTE}")
        self.assertRegex(perRecipient["Diagnostic-Code"], r"^smtp; 5\d\d")
        self.assertIn("doomed@local.test", report.as_string())
        self.assertEqual(os.listdir(sinkDir), [])
        self.assertEqual(queueList(os.path.join(cwd, "queue")), [])


class KillTests(unittest.TestCase):
    """4. kill -9 during a relay run; restart on the same queue."""

    timeout = 240

    async def test_kill_and_restart(self) -> None:
        from txsmtp.client import Mailer

        total, concurrency, destinationConcurrency = 300, 10, 5
        cwd = newDirectory(self)
        mailbox(cwd, "alice")
        sinkDir = sinkDirectory(self)
        watch = DirectoryWatch(self, sinkDir)
        sink = await startSinkOn(self, freePort(), sinkDir)
        args = relayArgs(
            "--relay-host", f"[127.0.0.1]:{sink.port}", "--relay-tls", "none",
            "--relay-networks", "127.0.0.0/8", "--destination-concurrency", str(destinationConcurrency),
        )  # fmt: skip
        first = await startTwistd(self, *args, cwd=cwd)
        mailer = Mailer("127.0.0.1", first.port, poolSize=concurrency, tls="none")
        acknowledged: set[int] = set()
        # The kill comes once half the messages are acknowledged: more are
        # being submitted, and the queue is relaying the first ones.
        half: defer.Deferred[None] = defer.Deferred()

        def ok(_: Any, n: int) -> None:
            acknowledged.add(n)
            if len(acknowledged) == total // 2:
                half.callback(None)

        def send(n: int) -> defer.Deferred[Any]:
            message = (
                f"Message-Id: <relay-{n}@local.test>\r\nSubject: message {n}\r\n\r\n".encode()
                + b"x" * 1000 + b"\r\n"
            )
            d = mailer.send(f"alice@{LOCAL}", [f"carol@{REMOTE}"], message)
            d.addCallbacks(ok, lambda f: None, callbackArgs=(n,))
            return d

        sends = defer.DeferredList([send(n) for n in range(total)], consumeErrors=True)
        await withTimeout(half, 120, lambda: f"{len(acknowledged)} acknowledged")
        first.process.signal("KILL")
        atKill = len(sinkMessages(watch))
        await first.process.whenEnded()
        await sends
        await mailer.close()
        self.assertLess(len(acknowledged), total, "the kill came after the last message")
        # The same queue, a new process.
        second = await startTwistd(self, *args, cwd=cwd)

        def delivered() -> dict[int, int]:
            counts: dict[int, int] = {}
            for dump in sinkMessages(watch):
                m = re.search(rb"Message-Id: <relay-(\d+)@local\.test>", dump.body)
                assert m is not None, dump.body[:300]
                counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
            return counts

        await watch.waitUntil(
            lambda names: acknowledged <= set(delivered()),
            120,
            lambda: f"missing after restart: {sorted(acknowledged - set(delivered()))}\n{second.log[-3000:]}",
        )
        counts = delivered()
        duplicates = {n: c for n, c in counts.items() if c > 1}
        print(
            f"\nkill -9 test: {len(acknowledged)} of {total} acknowledged before the kill, {atKill} at the sink then, "
            f"{len(counts)} distinct delivered, {len(duplicates)} duplicated: {sorted(duplicates)}"
        )
        self.assertLessEqual(len(duplicates), destinationConcurrency)
        self.assertTrue(all(c == 2 for c in duplicates.values()), duplicates)


class FullDiskTests(unittest.TestCase):
    """5. The queue on a full disk."""

    timeout = 90

    def _mountTmpfs(self, path: str, size: str) -> None:
        os.makedirs(path)
        why = ""
        if os.geteuid() != 0:
            why = "not root"
        else:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                capture_output=True,
            )
            if result.returncode == 0:
                self.addCleanup(subprocess.run, ["umount", "-l", path], capture_output=True)
                return
            why = result.stderr.decode(errors="replace").strip()
        message = f"cannot mount a tmpfs for the full-disk test: {why}"
        if PEERS_REQUIRED:
            raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
        raise unittest.SkipTest(message)

    async def test_queue_full(self) -> None:
        cwd = newDirectory(self)
        bob = mailbox(cwd, "bob")
        queue = os.path.join(cwd, "queue")
        self._mountTmpfs(queue, "4m")
        running = await startTwistd(self, *relayArgs(), cwd=cwd)
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.test.invalid")
        big = b"Subject: too big for the disk\r\n\r\n" + (b"y" * 998 + b"\r\n") * 8000
        replies = await transaction(client, f"someone@{REMOTE}", [f"bob@{LOCAL}"], big)
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (452, "4.3.1"), replies[-1])
        # Nothing half queued: no message, no body, nothing being written.
        self.assertEqual(queueListViaServer(queue), [])
        leftovers = [
            os.path.join(root, name)
            for root, _, names in os.walk(queue)
            for name in names
            if os.path.basename(root) in ("tmp", "bodies")
        ]
        self.assertEqual(leftovers, [])
        small = b"Subject: small\r\n\r\nfits\r\n"
        replies = await transaction(client, f"someone@{REMOTE}", [f"bob@{LOCAL}"], small)
        self.assertEqual(replies[-1].code, 250, replies[-1])
        [name] = await DirectoryWatch(self, os.path.join(bob, "new")).waitForCount(1)
        [data] = readAll([os.path.join(bob, "new", name)])
        self.assertTrue(data.endswith(b"\r\n" + small))


def queueListViaServer(queue: str) -> list[dict[str, Any]]:
    """``txsmtp queue list`` while the server runs (it answers over DIR/control.sock)."""
    return queueList(queue)


class LoopTests(unittest.TestCase):
    """6. A route that leads back to the server itself."""

    timeout = 90

    async def test_loop_ends(self) -> None:
        cwd = newDirectory(self)
        alice = mailbox(cwd, "alice")
        port = freePort()
        running = await startTwistd(
            self,
            *relayArgs("--route", f"loop.test=smtp:[127.0.0.1]:{port}", "--relay-networks", "127.0.0.0/8", "--max-hops", "8"),
            cwd=cwd,
            listen=f"tcp:{port}:interface=127.0.0.1",
        )
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.test.invalid")
        message = b"Subject: round and round\r\nMessage-Id: <loop@local.test>\r\n\r\nloop\r\n"
        replies = await transaction(client, f"alice@{LOCAL}", ["x@loop.test"], message)
        self.assertEqual(replies[-1].code, 250)
        [name] = await DirectoryWatch(self, os.path.join(alice, "new")).waitForCount(1, timeout=60)
        report = parseMaildirFile(os.path.join(alice, "new", name))
        _, perRecipient = statusFields(report)
        self.assertEqual(perRecipient["Action"], "failed")
        self.assertEqual(perRecipient["Status"], "5.4.6")
        self.assertIn("554", perRecipient["Diagnostic-Code"])
        # Eight hops were made (the client's, then seven through the route), no more.
        self.assertEqual(running.log.count("a mail loop?\n"), 1, running.log[-3000:])
        self.assertEqual(len(re.findall(r"to=<x@loop\.test> hop=smtp:", running.log)), 8)
        self.assertEqual(queueList(os.path.join(cwd, "queue")), [])
