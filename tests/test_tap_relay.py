"""
``twistd smtp``'s relay options (:mod:`txsmtp.tapqueue`): parsing, the
errors they give, what :func:`~txsmtp.tap.makeService` builds from them,
and the start-up of a real ``twistd -n smtp`` with a queue (a queue
another process owns is refused in one line).
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.python import usage
from twisted.trial import unittest

from tests.certs import certificates
from tests.relay_helpers import shortDirectory
from tests.test_tap import _InScratchDirectory, _nobody, parse
from tests.twistd_helpers import (
    TWISTD,
    childEnv,
    connectClient,
    maildirFiles,
    runProcess,
    startTwistd,
)
from txsmtp.auth import DeliveryRealm
from txsmtp.delivery import DiscardDelivery, MaildirDelivery
from txsmtp.queue.relay import RelayDelivery
from txsmtp.tap import makeService, startupSummary
from txsmtp.tapqueue import QueueService, parseDuration


class DurationTests(unittest.TestCase):
    def test_units(self) -> None:
        for text, seconds in [
            ("300", 300), ("300s", 300), ("5m", 300), ("4h", 14400), ("5d", 432000),
            ("1w", 604800), ("1", 1), ("1.5h", 5400), (" 2M ", 120),
        ]:  # fmt: skip
            self.assertEqual(parseDuration(text), seconds, text)

    def test_bad(self) -> None:
        for text, words in [
            ("soon", ["--retry-min", "duration", "5m", "'soon'"]),
            ("5y", ["duration"]),
            ("-5", ["duration"]),
            ("0", ["at least 1 second"]),
            ("0.5s", ["at least 1 second"]),
            ("", ["duration"]),
        ]:
            with self.assertRaises(ValueError) as cm:
                parseDuration(text, "retry-min")
            for word in words:
                self.assertIn(word, str(cm.exception), text)


class RelayOptionTests(_InScratchDirectory, unittest.TestCase):
    def test_off_by_default(self) -> None:
        """No relay option: the relay is off and the delivery is --deliver itself."""
        options = parse("--deliver", "discard")
        self.assertFalse(options["relay"])
        self.assertIsNone(options["relaySetup"])
        service = makeService(options)
        # Behind the guard of the limits (the per-address cap is on by default).
        self.assertIsInstance(service.factory.delivery.inner, DiscardDelivery)
        self.assertIsNone(service.queue)
        self.assertNotIn("relay", startupSummary(options))
        self.assertEqual(os.listdir(self.cwd), [])

    def test_each_switch_turns_it_on(self) -> None:
        for args in (
            ["--queue", "q"],
            ["--local-domains", "example.com"],
            ["--relay-networks", "10.0.0.0/8"],
            ["--relay-host", "[smtp.example.net]:587"],
            ["--route", "example.org=lmtp:unix:/run/lmtp.sock"],
        ):
            options = parse("--deliver", "discard", *args)
            self.assertTrue(options["relay"], args)
            setup = options["relaySetup"]
            self.assertEqual(setup.queue, os.path.join(self.cwd, "q" if args[0] == "--queue" else "queue"))

    def test_values(self) -> None:
        credentials = os.path.join(self.cwd, "relay-credentials")
        with open(credentials, "w") as f:
            f.write("submit-user:pass:with:colons\n")
        senders = os.path.join(self.cwd, "senders")
        with open(senders, "w") as f:
            f.write("alice: alice@example.com, @example.org\n")
        options = parse(
            "--deliver", "discard", "--queue", "/var/spool/txsmtp",
            "--local-domains", "Example.COM., example.org", "--relay-networks", "192.0.2.0/24,2001:db8::/32",
            "--relay-host", "[smtp.example.net]:587", "--relay-credentials", credentials,
            "--relay-tls", "verify", "--relay-ca", certificates().ca,
            "--route", "lists.example.com=smtp:[10.0.0.5]:25", "--route", "example.org=lmtp:unix:/run/dovecot/lmtp",
            "--dns-server", "127.0.0.1:5353", "--retry-min", "1", "--retry-max", "2m",
            "--max-queue-lifetime", "3d", "--delay-warning", "4h", "--sender-login-map", senders,
            "--destination-concurrency", "7", "--max-hops", "30",
        )  # fmt: skip
        s = options["relaySetup"]
        self.assertEqual(s.queue, "/var/spool/txsmtp")
        self.assertEqual(s.localDomains, ["example.com", "example.org"])
        self.assertEqual([str(n) for n in s.policy.relayNetworks], ["192.0.2.0/24", "2001:db8::/32"])
        self.assertEqual((s.relayHost.kind, s.relayHost.destination), ("smtp", "[smtp.example.net]:587"))
        self.assertEqual(s.relayHost.option("tls"), "verify")
        self.assertEqual(s.credentials, ("submit-user", "pass:with:colons"))
        self.assertIsNotNone(s.trustRoot)
        self.assertEqual(sorted(s.routes), ["example.org", "lists.example.com"])
        self.assertEqual(s.routes["example.org"].kind, "lmtp")
        self.assertEqual(s.dnsServer, ("127.0.0.1", 5353))
        self.assertEqual((s.retryMin, s.retryMax, s.lifetime, s.delayWarning), (1, 120, 3 * 86400, 4 * 3600))
        self.assertEqual((s.destinationConcurrency, s.policy.maxHops), (7, 30))
        self.assertTrue(s.policy.senderLogins.allows("alice", "x@example.org"))
        summary = startupSummary(options)
        for words in (
            "relay: queue /var/spool/txsmtp",
            "local domains example.com,example.org",
            "routes example.org=lmtp:unix:/run/dovecot/lmtp, lists.example.com=smtp:[10.0.0.5]:25",
            "relay host [smtp.example.net]:587 (TLS verify)",
            "relaying for authenticated users and 192.0.2.0/24,2001:db8::/32",
        ):
            self.assertIn(words, summary)

    def test_defaults(self) -> None:
        s = parse("--deliver", "discard", "--queue", "q")["relaySetup"]
        self.assertEqual((s.retryMin, s.retryMax, s.lifetime, s.delayWarning), (300, 4000, 5 * 86400, None))
        self.assertEqual((s.destinationConcurrency, s.policy.maxHops), (20, 50))
        self.assertEqual((s.localDomains, s.routes, s.relayHost, s.policy.relayNetworks), ([], {}, None, ()))
        self.assertIsNone(s.policy.senderLogins)

    def test_bad_values(self) -> None:
        """Each bad value is a UsageError that says what is wrong."""
        cases = [
            (["--retry-min", "5m"], ["--retry-min applies only to the relay", "--queue"]),
            (["--sender-login-map", "x"], ["--sender-login-map applies only to the relay"]),
            (["--queue", "q", "--retry-min", "soon"], ["--retry-min", "duration"]),
            (["--queue", "q", "--retry-min", "1h", "--retry-max", "5m"], ["--retry-max", "--retry-min"]),
            (["--queue", "q", "--max-hops", "0"], ["--max-hops", "at least 1"]),
            (["--queue", "q", "--destination-concurrency", "many"], ["--destination-concurrency", "whole number"]),
            (["--relay-networks", "10.0.0.1/8"], ["--relay-networks", "host bits", "10.0.0.0/8"]),
            (["--relay-networks", "localhost"], ["--relay-networks", "not a network"]),
            (["--local-domains", "exa mple.com"], ["--local-domains", "not a domain"]),
            (["--local-domains", ","], ["--local-domains", "no domain"]),
            (["--local-domains", "[127.0.0.1]"], ["--local-domains", "not a domain"]),
            (["--queue", "q", "--relay-credentials", "x"], ["--relay-credentials needs --relay-host"]),
            (["--queue", "q", "--relay-tls", "none"], ["--relay-tls needs --relay-host"]),
            (["--relay-host", "[h.example]:587", "--relay-tls", "maybe"], ["--relay-tls", "require, verify"]),
            (["--relay-host", "[h.example]:99999"], ["--relay-host", "port"]),
            (["--relay-host", "[h.example]:587", "--relay-credentials", "/nonexistent"], ["--relay-credentials", "cannot read"]),
            (["--relay-host", "[h.example]:587", "--relay-ca", "/nonexistent"], ["--relay-ca", "cannot read"]),
            (["--route", "example.com"], ["--route example.com"]),
            (["--route", "example.com=ftp:[h]:21"], ["--route", "smtp:", "lmtp:"]),
            (["--route", "a.example=lmtp:unix:/x", "--route", "A.example=lmtp:unix:/y"], ["already has a route"]),
            (["--queue", "q", "--dns-server", "dns.example:53"], ["--dns-server", "not an IP address"]),
            (["--queue", "q", "--dns-server", "127.0.0.1:0"], ["--dns-server", "port"]),
            (["--queue", "q", "--sender-login-map", "/nonexistent"], ["cannot read the sender login map"]),
        ]
        for args, words in cases:
            with self.assertRaises(usage.UsageError, msg=args) as cm:
                parse("--deliver", "discard", *args)
            for word in words:
                self.assertIn(word, str(cm.exception), f"{args}: {cm.exception}")

    def test_bad_credentials_file(self) -> None:
        for text in ("", "no-colon\n", "a:b\nc:d\n", ":password\n"):
            path = os.path.join(self.cwd, "creds")
            with open(path, "w") as f:
                f.write(text)
            with self.assertRaises(usage.UsageError) as cm:
                parse("--deliver", "discard", "--relay-host", "[h.example]:587", "--relay-credentials", path)
            self.assertIn("one line USER:PASSWORD", str(cm.exception))

    def test_makeService(self) -> None:
        """The factory's delivery is the RelayDelivery, around --deliver; AUTH logs in to it too."""
        options = parse(
            "--queue", "q", "--local-domains", "example.com", "--relay-networks", "10.0.0.0/8",
            "--auth", "memory:alice:pw", "--allow-insecure-auth", "--max-hops", "9",
        )  # fmt: skip
        service = makeService(options)
        # Behind the guard of the limits (the per-address cap is on by default).
        delivery = service.factory.delivery.inner
        self.assertIsInstance(delivery, RelayDelivery)
        self.assertIsInstance(delivery.inner, MaildirDelivery)
        self.assertIs(delivery.inner, options["delivery"])
        self.assertEqual(delivery.policy.maxHops, 9)
        self.assertTrue(delivery.router.isLocal("EXAMPLE.com"))
        realm = service.factory.portal.realm
        self.assertIsInstance(realm, DeliveryRealm)
        self.assertIs(realm.delivery, service.factory.delivery)
        self.assertIsInstance(service.queue, QueueService)
        self.assertEqual(service.queue.directory, os.path.join(self.cwd, "q"))
        # Nothing is opened before the service starts.
        self.assertFalse(os.path.exists(os.path.join(self.cwd, "q")))


class TwistdRelayTests(unittest.TestCase):
    """A real ``twistd -n smtp`` with the relay on."""

    timeout = 60

    async def test_starts_and_summarizes(self) -> None:
        running = await startTwistd(
            self, "--deliver", "discard", "--hostname", "mx.test.invalid", "--local-domains", "example.com",
            "--relay-host", "[127.0.0.1]:2525", "--relay-tls", "none", cwd=shortDirectory(self),
        )  # fmt: skip
        self.assertRegex(
            running.log,
            r"txsmtp \S+ starting as mx\.test\.invalid: .*; relay: queue \S+/queue, local domains example\.com, "
            r"relay host \[127\.0\.0\.1\]:2525 \(TLS none\), relaying for authenticated users only",
        )
        for name in ("queue.sqlite", "lock", "control.sock"):
            self.assertTrue(os.path.exists(running.path("queue", name)), name)
        client = await connectClient(self, running.port)
        [reply] = await client.command(b"EHLO client.test.invalid")
        self.assertEqual(reply.code, 250)
        await client.close()
        await running.stop()
        self.assertNotIn("Traceback", running.log)
        self.assertFalse(os.path.exists(running.path("queue", "control.sock")))

    async def test_locked_queue(self) -> None:
        """A second server on the same queue stops at start-up, in one line, before listening."""
        first = await startTwistd(self, "--deliver", "discard", "--queue", "queue")
        port = _freePort()
        result = await runProcess(
            TWISTD[0],
            [*TWISTD[1:], "-n", "--pidfile=", "--logfile=-", "smtp", "--deliver", "discard",
             "--queue", "queue", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=first.cwd,
            env=childEnv(),
            timeout=30,
        )  # fmt: skip
        self.assertEqual(result.code, 1, result.describe())
        err = result.err.decode()
        self.assertRegex(
            err,
            r"^twistd smtp: the queue is in use by another process \(stop that server, or give another "
            r"--queue\): \S+/queue/lock is locked\n\Z",
        )
        self.assertNotIn(b"Traceback", result.out + result.err)
        self.assertNotIn(b"listening on", result.out)
        # The first is untouched.
        client = await connectClient(self, first.port)
        await client.close()

    async def test_locked_queue_daemon(self) -> None:
        """Daemonizing, twistd's parent prints the reason and exits non-zero; no pid file is left."""
        first = await startTwistd(self, "--deliver", "discard", "--queue", "queue")
        result = await runProcess(
            TWISTD[0],
            [*TWISTD[1:], "--pidfile=twistd.pid", "--logfile=twistd.log", "smtp", "--deliver", "discard",
             "--queue", "queue", "--listen", f"tcp:{_freePort()}:interface=127.0.0.1"],
            cwd=first.cwd,
            env=childEnv(),
            timeout=30,
        )  # fmt: skip
        self.assertNotEqual(result.code, 0, result.describe())
        self.assertIn("is in use by another process", result.err.decode(), result.describe())
        self.assertFalse(os.path.exists(os.path.join(first.cwd, "twistd.pid")))

    async def test_unusable_queue(self) -> None:
        """A queue directory that cannot be made: one line, exit 1."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        with open(os.path.join(cwd, "file"), "w"):
            pass
        result = await runProcess(
            TWISTD[0],
            [*TWISTD[1:], "-n", "--pidfile=", "--logfile=-", "smtp", "--deliver", "discard",
             "--queue", "file/queue", "--listen", f"tcp:{_freePort()}:interface=127.0.0.1"],
            cwd=cwd,
            env=childEnv(),
            timeout=30,
        )  # fmt: skip
        self.assertEqual(result.code, 1, result.describe())
        lines = result.err.decode().splitlines()
        self.assertEqual(len(lines), 1, result.describe())
        self.assertRegex(lines[0], r"^twistd smtp: cannot open the queue: .+ \(\S+/file/queue\)$")


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



class DropPrivilegesRelayTests(unittest.TestCase):
    """
    ``twistd --uid nobody --gid nogroup smtp --queue DIR`` as root: the
    queue is opened (and its lock taken) as root before the switch, then
    given to nobody, who writes every message into it from then on.
    """

    timeout = 60

    def setUp(self) -> None:
        ids = _nobody()
        if ids is None:
            raise unittest.SkipTest("needs root, and the user nobody and the group nogroup")
        self.uid, self.gid = ids
        self.base = shortDirectory(self)
        os.chmod(self.base, 0o755)

    async def test_queue_given_to_the_user(self) -> None:
        from twisted.internet import reactor

        from tests.twistd_helpers import RunningTwistd, _TwistdProcess

        args = [
            *TWISTD, "-n", "--pidfile=", "--logfile=-", "--uid", "nobody", "--gid", "nogroup",
            "smtp", "--listen", "tcp:0:interface=127.0.0.1", "--deliver", "maildir:Maildir",
            "--queue", "queue", "--local-domains", "example.com", "--retry-min", "1",
        ]  # fmt: skip
        process = _TwistdProcess()
        reactor.spawnProcess(process, sys.executable, args, env=childEnv(), path=self.base)  # type: ignore[attr-defined]
        running = RunningTwistd(process, self.base)
        self.addCleanup(running.stop)
        m = await running.waitForLog(r"txsmtp listening on .*?port=(\d+)")
        await running.waitForLog(r"set uid/gid")
        queue = os.path.join(self.base, "queue")
        for root, directories, files in os.walk(queue):
            for name in [root, *(os.path.join(root, n) for n in directories + files)]:
                st = os.lstat(name)
                self.assertEqual((st.st_uid, st.st_gid), (self.uid, self.gid), name)
        client = await connectClient(self, int(m.group(1)))
        for line in (b"EHLO client.test.invalid", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA"):
            [reply] = await client.command(line)
            self.assertLess(reply.code, 400, running.log)
        [done] = await client.command(b"Subject: uid\r\n\r\nhello\r\n.")
        self.assertEqual(done.code, 250, running.log)
        await running.waitForLog(r"to=<b@example\.com> hop=local:.* result=delivered")
        [stored] = maildirFiles(os.path.join(self.base, "Maildir"))
        self.assertEqual(os.stat(stored).st_uid, self.uid)
        await client.close()
        await running.stop()
        self.assertNotIn("Traceback", running.log)
