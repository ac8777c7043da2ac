"""
``twistd smtp``: option parsing, the service it builds, its plugin, graceful
stop, and the real ``twistd -n smtp`` end to end.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import signal
import socket
import sys
import time
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.logger import LogLevel, formatEvent
from twisted.plugin import CachedDropin, getPlugins
from twisted.python import usage
from twisted.trial import unittest

import twisted.plugins
import txsmtp.tap
from tests.twistd_helpers import (
    REPO_ROOT,
    TWISTD,
    LogEvents,
    RawSMTPClient,
    childEnv,
    connectClient,
    maildirFiles,
    parseStored,
    readAll,
    runProcess,
    startTwistd,
)
from txsmtp.delivery import DiscardDelivery, MaildirDelivery
from txsmtp.server import SMTPFactory
from txsmtp.tap import DEFAULT_LISTEN, Options, SMTPService, makeService
from txsmtp.testing import MemoryDelivery

LOOPBACK = "tcp:0:interface=127.0.0.1"


class _InScratchDirectory:
    """Run each test in its own empty working directory (``maildir:Maildir`` is relative)."""

    def setUp(self) -> None:
        self.cwd = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(self.cwd)
        self.addCleanup(os.chdir, os.getcwd())  # type: ignore[attr-defined]
        os.chdir(self.cwd)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


# -- options --------------------------------------------------------------------------------


class OptionsTests(_InScratchDirectory, unittest.TestCase):
    """txsmtp.tap.Options."""

    def test_defaults(self) -> None:
        """No options: 127.0.0.1:8025, ./Maildir, 32 MiB, 100 recipients, 300 s, reject bare LF."""
        options = parse()
        self.assertEqual(DEFAULT_LISTEN, "tcp:8025:interface=127.0.0.1")
        self.assertEqual(options["listen"], ["tcp:8025:interface=127.0.0.1"])
        self.assertEqual(options["deliver"], "maildir:Maildir")
        self.assertEqual(options["max-size"], 33554432)
        self.assertEqual(options["max-recipients"], 100)
        self.assertEqual(options["timeout"], 300)
        self.assertEqual(options["bare-lf"], "reject")
        self.assertEqual(options["shutdown-grace"], 30)
        self.assertEqual(options["hostname"], socket.getfqdn())
        delivery = options["delivery"]
        self.assertIsInstance(delivery, MaildirDelivery)
        self.assertEqual(delivery.maildir.path, os.path.join(self.cwd, "Maildir"))
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.cwd, "Maildir"))), ["cur", "new", "tmp"]
        )

    def test_values(self) -> None:
        """Every option, with --listen repeated (in order)."""
        options = parse(
            "--listen", LOOPBACK, "--listen=tcp6:0:interface=\\:\\:1", "--deliver", "discard", "--max-size", "1000",
            "--max-recipients=5", "--timeout", "12.5", "--bare-lf", "normalize", "--hostname", "mx.example",
            "--shutdown-grace", "2",
        )  # fmt: skip
        self.assertEqual(options["listen"], [LOOPBACK, "tcp6:0:interface=\\:\\:1"])
        self.assertIsInstance(options["delivery"], DiscardDelivery)
        self.assertEqual(
            (
                options["max-size"],
                options["max-recipients"],
                options["timeout"],
                options["bare-lf"],
                options["hostname"],
                options["shutdown-grace"],
            ),
            (1000, 5, 12.5, "normalize", "mx.example", 2.0),
        )
        self.assertIsInstance(options["max-size"], int)
        self.assertEqual(os.listdir(self.cwd), [], "--deliver discard must not create ./Maildir")

    def test_bad_values(self) -> None:
        """Bad values are UsageErrors that say what is wrong."""
        cases = [
            (["--max-size=abc"], ["--max-size", "whole number", "'abc'"]),
            (["--max-size=0"], ["--max-size", "at least 1"]),
            (["--max-size=-5"], ["--max-size", "at least 1"]),
            (["--max-recipients=0"], ["--max-recipients", "at least 1"]),
            (["--max-recipients=1.5"], ["--max-recipients", "whole number"]),
            (["--timeout=-1"], ["--timeout", "more than 0"]),
            (["--timeout=0"], ["--timeout", "more than 0"]),
            (["--timeout=nan"], ["--timeout", "more than 0"]),
            (["--timeout=soon"], ["--timeout", "seconds", "'soon'"]),
            (["--shutdown-grace=0"], ["--shutdown-grace", "more than 0"]),
            (["--bare-lf=maybe"], ["--bare-lf", "reject", "normalize", "'maybe'"]),
            (["--deliver=nope:x"], ["--deliver", "'nope'", "discard", "maildir", "virtual"]),
            (["--deliver=virtual:/nonexistent"], ["--deliver", "does not exist"]),
            (["--deliver=maildir:"], ["--deliver", "needs a directory"]),
            (["--listen=bogus:1"], ["--listen", "bogus:1"]),
            (["--listen=tcp:notaport"], ["--listen", "tcp:notaport"]),
            (["--no-such-option"], ["no-such-option"]),
        ]
        for args, words in cases:
            with self.assertRaises(usage.UsageError, msg=args) as cm:
                parse(*args)
            message = str(cm.exception)
            for word in words:
                self.assertIn(word, message, f"{args}: {message!r}")
        self.assertEqual(os.listdir(self.cwd), [])

    def test_help_deliver(self) -> None:
        """--help-deliver lists the delivery types and exits 0."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as cm:
            parse("--help-deliver")
        self.assertIn(cm.exception.code, (0, None))
        for name in ("maildir:", "virtual:", "discard:"):
            self.assertIn(name, out.getvalue())


# -- makeService and SMTPService ---------------------------------------------------------------------


def _isListening(event: dict[str, Any]) -> bool:
    return event.get("log_namespace") == "txsmtp.tap" and "address" in event


class ServiceTests(_InScratchDirectory, unittest.TestCase):
    """makeService() and the graceful stop of SMTPService, on real loopback sockets."""

    timeout = 30

    def test_makeService(self) -> None:
        """One child per --listen, all sharing one factory configured from the options."""
        options = parse(
            "--listen", LOOPBACK, "--listen", LOOPBACK, "--deliver", "discard", "--max-size", "1000",
            "--max-recipients", "7", "--timeout", "42", "--bare-lf", "normalize", "--hostname", "mx.test.invalid",
            "--shutdown-grace", "3",
        )  # fmt: skip
        service = makeService(options)
        self.assertIsInstance(service, SMTPService)
        children = list(service)
        self.assertEqual(len(children), 2)
        factory = service.factory
        self.assertIsInstance(factory, SMTPFactory)
        for child in children:
            self.assertIsInstance(child, StreamServerEndpointService)
            self.assertIs(child.factory, factory)
        # Behind the guard of the limits (the per-address cap is on by default).
        self.assertIs(factory.delivery.inner, options["delivery"])
        self.assertEqual(factory.hostname, "mx.test.invalid")
        self.assertEqual(factory.maxMessageSize, 1000)
        self.assertEqual(factory.maxRecipients, 7)
        self.assertEqual(factory.commandTimeout, 42)
        self.assertEqual(factory.bareLineEnds, "normalize")
        self.assertEqual(service.grace, 3)

    async def _start(
        self, delivery: Any, listeners: int = 1, grace: float = 10.0
    ) -> tuple[SMTPService, list[int]]:
        events = LogEvents(self)
        factory = SMTPFactory(delivery, "test.invalid")
        service = SMTPService(factory, [LOOPBACK] * listeners, grace)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        ports = []
        for n in range(1, listeners + 1):
            event = await events.waitForCount(_isListening, n)
            ports.append(event["address"].port)
        return service, ports

    async def test_listens_on_each(self) -> None:
        """Every listener answers, and logs its address."""
        service, ports = await self._start(DiscardDelivery(), listeners=2)
        self.assertEqual(len(set(ports)), 2)
        for port in ports:
            client = await connectClient(self, port)
            self.assertEqual(client.replies[0].code, 220)
            self.assertIn("test.invalid", client.replies[0].text)
            await client.command(b"QUIT")
            await client.whenLost()

    async def test_start_sweeps_stale_tmp(self) -> None:
        """Starting the service starts the delivery's tmp/ clean-up (Maildir); stopping ends it."""
        from txsmtp.maildir import MaildirDelivery

        delivery = MaildirDelivery(os.path.abspath("md"), threads=0)
        started: list[bool] = []
        realStart = delivery.startCleanup

        def startCleanup(*args: Any, **kwargs: Any) -> None:
            started.append(True)
            realStart(*args, **kwargs)

        delivery.startCleanup = startCleanup  # type: ignore[method-assign]
        stale = os.path.join("md", "tmp", "left-by-a-crash")
        with open(stale, "wb"):
            pass
        os.utime(stale, (time.time() - 40 * 3600,) * 2)
        service, ports = await self._start(delivery)
        self.assertEqual(started, [True])
        # threads=0: the start-up sweep ran in startService itself.
        self.assertFalse(os.path.exists(stale))
        await service.stopService()

    async def test_stop_idle_client_gets_421(self) -> None:
        """stopService(): an idle client gets 421 4.3.2 and is closed; no new connection is accepted."""
        service, [port] = await self._start(DiscardDelivery())
        client = await connectClient(self, port)
        [ehlo] = await client.command(b"EHLO client.test.invalid")
        self.assertEqual(ehlo.code, 250)
        stopped = service.stopService()
        [bye] = (await client.waitReplies(3))[2:]
        self.assertEqual((bye.code, bye.enhanced), (421, "4.3.2"))
        await client.whenLost()
        await stopped
        with self.assertRaises(ConnectionRefusedError):
            await connectClient(self, port, greeting=False)

    async def test_stop_lets_transaction_finish(self) -> None:
        """
        stopService() during a message: the listener closes at once, idle
        clients get 421, and the message in progress is finished (250)
        before its client gets 421 too.
        """
        delivery = MemoryDelivery()
        service, [port] = await self._start(delivery)
        idle = await connectClient(self, port)
        busy = await connectClient(self, port)
        await busy.command(b"EHLO client.test.invalid")
        await busy.command(b"MAIL FROM:<a@example.com>")
        await busy.command(b"RCPT TO:<b@example.com>")
        [go] = await busy.command(b"DATA")
        self.assertEqual(go.code, 354)
        busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        stopped = service.stopService()
        finished: list[Any] = []
        stopped.addBoth(lambda result: finished.append(result) or result)
        [bye] = (await idle.waitReplies(2))[1:]
        self.assertEqual((bye.code, bye.enhanced), (421, "4.3.2"))
        await idle.whenLost()
        with self.assertRaises(ConnectionRefusedError):
            await connectClient(self, port, greeting=False)
        self.assertTrue(busy.connected)
        self.assertEqual(finished, [], "stopService() finished with a transaction in progress")
        start = len(busy.replies)
        busy.send(b"second half\r\n.\r\n")
        done, closing = (await busy.waitReplies(start + 2))[start:]
        self.assertEqual(done.code, 250)
        self.assertEqual((closing.code, closing.enhanced), (421, "4.3.2"))
        await busy.whenLost()
        await stopped
        [message] = delivery.messages
        self.assertEqual(message.body, b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n")

    async def test_stop_ends_delivery_threads(self) -> None:
        """A Maildir delivery's commit threads end when the service stops, after the sessions."""
        maildir = os.path.join(self.cwd, "Maildir")
        delivery = MaildirDelivery(maildir)
        service, [port] = await self._start(delivery, grace=5)
        client = await connectClient(self, port)
        await client.command(b"EHLO client.test.invalid")
        await client.command(b"MAIL FROM:<a@example.com>")
        await client.command(b"RCPT TO:<b@example.com>")
        await client.command(b"DATA")
        [stored] = await client.command(b"Subject: stored\r\n\r\nhi\r\n.")
        self.assertEqual(stored.code, 250)
        self.assertEqual(len(maildirFiles(maildir)), 1)
        pool = delivery.runner.pool
        assert pool is not None
        await service.stopService()
        self.assertIsNone(delivery.runner.pool)
        self.assertFalse(any(t.is_alive() for t in pool.threads))

    async def test_stop_grace_expires(self) -> None:
        """A message still unfinished when the grace period ends is abandoned: 421, nothing stored."""
        maildir = os.path.join(self.cwd, "Maildir")
        service, [port] = await self._start(MaildirDelivery(maildir), grace=0.2)
        client = await connectClient(self, port)
        await client.command(b"EHLO client.test.invalid")
        await client.command(b"MAIL FROM:<a@example.com>")
        await client.command(b"RCPT TO:<b@example.com>")
        [go] = await client.command(b"DATA")
        self.assertEqual(go.code, 354)
        client.send(b"Subject: never finished\r\n\r\n")
        self.assertEqual(len(maildirFiles(maildir, "tmp")), 1)
        await service.stopService()
        await client.whenLost()
        self.assertEqual(client.replies[-1].code, 421)
        self.assertEqual(maildirFiles(maildir, "tmp") + maildirFiles(maildir), [])


# -- the plugin ------------------------------------------------------------------------------------


class PluginTests(unittest.TestCase):
    """The ``smtp`` IServiceMaker plugin in twisted/plugins/txsmtp_plugin.py."""

    def assertIsTxsmtpMaker(self, maker: Any) -> None:
        self.assertEqual(maker.tapname, "smtp")
        self.assertEqual(maker.module, "txsmtp.tap")
        self.assertIs(maker.options, txsmtp.tap.Options)
        self.assertIs(maker.makeService, txsmtp.tap.makeService)
        self.assertTrue(maker.description)

    def test_discoverable(self) -> None:
        """getPlugins(IServiceMaker) finds tapname "smtp" (as twistd does)."""
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "smtp"]
        self.assertTrue(makers, "no 'smtp' IServiceMaker plugin found")
        for maker in makers:
            self.assertIsTxsmtpMaker(maker)

    def _pluginDirWithCache(self, cache: bytes, cacheIsOlder: bool) -> tuple[str, str]:
        """
        A second plugin directory holding a copy of txsmtp_plugin.py (under
        a name of its own) and the given dropin.cache, on twisted.plugins'
        path for this test.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        name = "txsmtp_plugin_cachetest"
        source = os.path.join(REPO_ROOT, "twisted", "plugins", "txsmtp_plugin.py")
        shutil.copy(source, os.path.join(directory, name + ".py"))
        cachePath = os.path.join(directory, "dropin.cache")
        with open(cachePath, "wb") as f:
            f.write(cache)
        now = time.time()
        os.utime(cachePath, (now - 3600, now - 3600) if cacheIsOlder else (now, now))
        self.patch(twisted.plugins, "__path__", [*twisted.plugins.__path__, directory])
        moduleName = "twisted.plugins." + name
        self.addCleanup(sys.modules.pop, moduleName, None)
        self.addCleanup(lambda: twisted.plugins.__dict__.pop(name, None))
        return moduleName, cachePath

    def _assertFoundThroughCache(self, moduleName: str, cachePath: str) -> None:
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "smtp"]
        copy = sys.modules.get(moduleName)
        self.assertIsNotNone(copy, "the plugin copy was never loaded")
        self.assertTrue(any(m is copy.txsmtpServiceMaker for m in makers), makers)  # type: ignore[union-attr]
        for maker in makers:
            self.assertIsTxsmtpMaker(maker)
        # The cache was rewritten and now describes the plugin.
        with open(cachePath, "rb") as f:
            fresh = pickle.load(f)
        names = {p.name for p in fresh[moduleName.rsplit(".", 1)[1]].plugins}
        self.assertIn("txsmtpServiceMaker", names)

    def test_garbage_cache(self) -> None:
        """A dropin.cache that is not a pickle at all does not hide the plugin."""
        self._assertFoundThroughCache(
            *self._pluginDirWithCache(b"\x00\xffthis is not a pickle", cacheIsOlder=False)
        )

    def test_stale_cache(self) -> None:
        """An old dropin.cache that lists no plugin for the module does not hide it."""
        stale = pickle.dumps(
            {
                "txsmtp_plugin_cachetest": CachedDropin(
                    "twisted.plugins.txsmtp_plugin_cachetest", "stale"
                )
            }
        )
        self._assertFoundThroughCache(*self._pluginDirWithCache(stale, cacheIsOlder=True))


# -- twistd -n smtp, end to end ---------------------------------------------------------------------


class TwistdTests(unittest.TestCase):
    """The real ``twistd -n smtp`` from this checkout, in a subprocess."""

    timeout = 60

    def assertStoppedCleanly(self, ended: Any, log: str) -> None:
        """
        Stopped by our SIGTERM after a clean shutdown: twistd exits 0, or (as
        Twisted does since 22.x) re-raises SIGTERM once its reactor stopped.
        """
        if not isinstance(ended, ProcessDone):
            self.assertIsInstance(ended, ProcessTerminated, log)
            self.assertEqual((ended.exitCode, ended.signal), (None, signal.SIGTERM), log)
        self.assertIn("Server Shut Down", log)

    async def test_starts_with_defaults(self) -> None:
        """
        Only --listen given: ./Maildir (tmp, new, cur) appears in the working
        directory, the greeting names this host, SIZE is 32 MiB, and a
        message lands in ./Maildir/new.
        """
        running = await startTwistd(self)
        maildir = running.path("Maildir")
        self.assertEqual(sorted(os.listdir(maildir)), ["cur", "new", "tmp"])
        client = await connectClient(self, running.port)
        greeting = client.replies[0]
        self.assertEqual(greeting.code, 220)
        self.assertTrue(greeting.text.startswith(socket.getfqdn() + " "), greeting.text)
        [ehlo] = await client.command(b"EHLO client.test.invalid")
        self.assertIn("SIZE 33554432", ehlo.lines)
        for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>"):
            [reply] = await client.command(line)
            self.assertEqual(reply.code, 250)
        [go] = await client.command(b"DATA")
        self.assertEqual(go.code, 354)
        [done] = await client.command(b"Subject: defaults\r\n\r\nhello\r\n.")
        self.assertEqual(done.code, 250)
        [data] = readAll(maildirFiles(maildir))
        self.assertEqual(parseStored(data).body, b"Subject: defaults\r\n\r\nhello\r\n")
        await client.command(b"QUIT")
        await client.whenLost()
        self.assertStoppedCleanly(await running.stop(), running.log)

    async def test_sigterm_is_graceful(self) -> None:
        """SIGTERM: an idle client gets 421 4.3.2, and twistd shuts down cleanly."""
        running = await startTwistd(self, "--deliver", "discard")
        client = await connectClient(self, running.port)
        await client.command(b"EHLO client.test.invalid")
        stopping = running.stop()
        [bye] = (await client.waitReplies(3))[2:]
        self.assertEqual((bye.code, bye.enhanced), (421, "4.3.2"))
        await client.whenLost()
        self.assertStoppedCleanly(await stopping, running.log)

    async def test_options_reach_the_server(self) -> None:
        """--max-size, --max-recipients, --timeout and --hostname change what the server does."""
        running = await startTwistd(
            self,
            "--deliver",
            "discard",
            "--max-size",
            "100",
            "--max-recipients",
            "2",
            "--timeout",
            "1",
            "--hostname",
            "mx.test.invalid",
        )
        client = await connectClient(self, running.port)
        self.assertTrue(client.replies[0].text.startswith("mx.test.invalid "))
        [ehlo] = await client.command(b"EHLO client.test.invalid")
        self.assertIn("SIZE 100", ehlo.lines)
        await client.command(b"MAIL FROM:<a@example.com>")
        codes = [(await client.command(b"RCPT TO:<r%d@example.com>" % i))[0] for i in range(3)]
        self.assertEqual(
            [(r.code, r.enhanced) for r in codes], [(250, "2.1.5"), (250, "2.1.5"), (452, "4.5.3")]
        )
        await client.command(b"DATA")
        [big] = await client.command(b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n.")
        self.assertEqual((big.code, big.enhanced), (552, "5.3.4"))
        # Then silence: --timeout 1 closes the connection with 421 4.4.2.
        await client.whenLost()
        self.assertEqual((client.replies[-1].code, client.replies[-1].enhanced), (421, "4.4.2"))

    async def test_two_listeners(self) -> None:
        """--listen twice: two ports, both serving."""
        running = await startTwistd(self, "--listen", LOOPBACK, "--deliver", "discard")
        m = await running.waitForLog(
            r"(?s)txsmtp listening on .*?port=(\d+).*?txsmtp listening on .*?port=(\d+)"
        )
        ports = {int(m.group(1)), int(m.group(2))}
        self.assertEqual(len(ports), 2)
        self.assertIn(running.port, ports)
        for port in ports:
            client = await connectClient(self, port)
            self.assertEqual(client.replies[0].code, 220)

    async def test_usage_errors(self) -> None:
        """A bad option: twistd exits non-zero, says why, and starts nothing."""
        for args, words in (
            (["--max-size=abc"], "--max-size takes a whole number"),
            (["--deliver=nope:x"], "unknown delivery type 'nope'"),
            (["--listen=bogus:1"], "bad --listen 'bogus:1'"),
        ):
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            result = await runProcess(
                sys.executable,
                [*TWISTD[1:], "-n", "--pidfile=", "--logfile=-", "smtp", *args],
                cwd=cwd,
                env=childEnv(),
                timeout=30,
            )
            self.assertNotEqual(result.code, 0, result.describe())
            self.assertIn(
                words, (result.out + result.err).decode("utf-8", "replace"), result.describe()
            )
            self.assertEqual(os.listdir(cwd), [], result.describe())

    async def test_helper_reports_failed_start(self) -> None:
        """startTwistd() fails with twistd's output when it exits instead of listening."""
        with self.assertRaises(AssertionError) as cm:
            await startTwistd(self, "--max-size=abc")
        self.assertIn("exited", str(cm.exception))
        self.assertIn("--max-size takes a whole number", str(cm.exception))

    async def test_helper_startup_timeout(self) -> None:
        """startTwistd() kills a twistd that does not listen in time and says so."""
        with self.assertRaises(AssertionError) as cm:
            await startTwistd(self, "--deliver", "discard", timeout=0.01)
        self.assertIn("did not log 'txsmtp listening on'", str(cm.exception))

    async def test_help_deliver(self) -> None:
        """``twistd smtp --help-deliver`` lists the delivery types and exits 0."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        result = await runProcess(
            sys.executable,
            [*TWISTD[1:], "smtp", "--help-deliver"],
            cwd=cwd,
            env=childEnv(),
            timeout=30,
        )
        self.assertEqual(result.code, 0, result.describe())
        for name in (b"maildir:", b"virtual:", b"discard:"):
            self.assertIn(name, result.out)


# -- --lmtp ---------------------------------------------------------------------------------------


def _shortDirectory(testCase: unittest.TestCase) -> str:
    """A new directory with a short path: a UNIX socket path must fit in 108 octets."""
    import tempfile

    path = tempfile.mkdtemp(prefix="txlmtp-")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


async def _connectUNIX(testCase: unittest.TestCase, path: str) -> RawSMTPClient:
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

    client = await connectProtocol(UNIXClientEndpoint(reactor, path, timeout=10), RawSMTPClient())
    testCase.addCleanup(client.close)
    await client.waitReplies(1)
    return client


class LMTPOptionsTests(_InScratchDirectory, unittest.TestCase):
    """--lmtp in txsmtp.tap.Options."""

    def test_default_none(self) -> None:
        """Without --lmtp there is no LMTP listener."""
        self.assertEqual(parse("--deliver", "discard")["lmtp"], [])

    def test_lmtp_only(self) -> None:
        """--lmtp alone: no SMTP listener at all (the default applies only without either)."""
        options = parse("--lmtp", "unix:/run/txsmtp/lmtp.sock", "--deliver", "discard")
        self.assertEqual(options["lmtp"], ["unix:/run/txsmtp/lmtp.sock"])
        self.assertEqual(options["listen"], [])
        self.assertEqual(options["listen-tls"], [])

    def test_repeatable_beside_listen(self) -> None:
        """--lmtp repeated, in order, beside --listen (which is then kept as given)."""
        options = parse(
            "--listen", LOOPBACK, "--lmtp", "unix:lmtp.sock", "--lmtp=tcp:24:interface=127.0.0.1",
            "--lmtp", "tcp6:24:interface=\\:\\:1", "--deliver", "discard",
        )  # fmt: skip
        self.assertEqual(
            options["lmtp"],
            ["unix:lmtp.sock", "tcp:24:interface=127.0.0.1", "tcp6:24:interface=\\:\\:1"],
        )
        self.assertEqual(options["listen"], [LOOPBACK])

    def test_bad_endpoints(self) -> None:
        """Bad --lmtp descriptions are UsageErrors naming the option and the value."""
        cases = [
            (["--lmtp=bogus:1"], ["bad --lmtp 'bogus:1'", "bogus"]),
            (["--lmtp=tcp:notaport:interface=127.0.0.1"], ["bad --lmtp", "notaport"]),
            (["--lmtp=unix:"], ["bad --lmtp 'unix:'", "needs a path"]),
            (["--lmtp=unix:/x.sock:mode=999"], ["bad --lmtp", "999"]),
            (["--lmtp="], ["bad --lmtp ''"]),
        ]
        for args, words in cases:
            with self.assertRaises(usage.UsageError, msg=args) as cm:
                parse(*args, "--deliver", "discard")
            message = str(cm.exception)
            for word in words:
                self.assertIn(word, message, f"{args}: {message!r}")

    def test_every_address_refused(self) -> None:
        """
        LMTP over TCP without interface= (every address) and without
        required AUTH is refused: it would let anyone fill the mailboxes.
        """
        for description in ("tcp:24", "tcp6:24", "tcp:24:backlog=5", "haproxy:tcp:24"):
            with self.assertRaises(usage.UsageError, msg=description) as cm:
                parse("--lmtp", description, "--deliver", "discard")
            message = str(cm.exception)
            for word in (
                repr(description),
                "every network address",
                "interface=127.0.0.1",
                "unix:",
            ):
                self.assertIn(word, message, f"{description}: {message!r}")

    def test_explicit_interface_or_auth_accepted(self) -> None:
        """An explicit interface (even 0.0.0.0), or --require-auth, is taken as meant."""
        for args in (
            ["--lmtp", "tcp:24:interface=0.0.0.0"],
            ["--lmtp", "tcp:24:interface=192.0.2.1"],
            ["--lmtp", "tcp6:24:interface=\\:\\:"],
            ["--lmtp", "tcp:24", "--require-auth", "--auth", "memory:u:p", "--allow-insecure-auth"],
        ):
            self.assertEqual(parse(*args, "--deliver", "discard")["lmtp"], [args[1]])

    def test_shared_checks(self) -> None:
        """The TLS and AUTH checks cover LMTP listeners too."""
        with self.assertRaises(usage.UsageError) as cm:
            parse("--lmtp", "unix:lmtp.sock", "--auth", "memory:u:p", "--deliver", "discard")
        self.assertIn("AUTH is offered only under TLS", str(cm.exception))
        with self.assertRaises(usage.UsageError) as cm:
            parse("--lmtp", "unix:lmtp.sock", "--require-tls", "--deliver", "discard")
        self.assertIn("--require-tls needs --tls-cert", str(cm.exception))


    def test_haproxyWrappedTLSListenerCounts(self) -> None:
        """An implicit-TLS listener behind the PROXY wrapper counts as TLS for AUTH."""
        from txsmtp.tap import _endpointKind

        self.assertEqual(_endpointKind("haproxy:ssl:465:privateKey=k.pem"), "ssl")
        self.assertEqual(_endpointKind("haproxy:tcp:25"), "tcp")
        self.assertEqual(_endpointKind("unix:/run/x.sock"), "unix")


class LMTPServiceTests(_InScratchDirectory, unittest.TestCase):
    """makeService() and SMTPService with --lmtp listeners, on real sockets."""

    timeout = 30

    def test_makeService_shares_configuration(self) -> None:
        """One LMTPFactory for the --lmtp children, configured exactly like the SMTP one."""
        from txsmtp.lmtp import LMTPFactory

        options = parse(
            "--listen", LOOPBACK, "--lmtp", "unix:lmtp.sock", "--lmtp", LOOPBACK,
            "--deliver", "discard", "--max-size", "1000", "--max-recipients", "7",
            "--timeout", "42", "--bare-lf", "normalize", "--hostname", "mx.test.invalid",
            "--shutdown-grace", "3", "--auth", "memory:u:p", "--allow-insecure-auth",
        )  # fmt: skip
        service = makeService(options)
        smtp, lmtp = service.factory, service.lmtpFactory
        self.assertIsInstance(lmtp, LMTPFactory)
        self.assertNotIsInstance(smtp, LMTPFactory)
        children = list(service)
        self.assertEqual([child.factory for child in children], [smtp, lmtp, lmtp])
        # The same objects ...
        for name in ("delivery", "tls", "portal", "queueIds"):
            self.assertIs(getattr(lmtp, name), getattr(smtp, name), name)
        # ... and the same settings.
        for name in (
            "hostname", "maxMessageSize", "maxRecipients", "commandTimeout", "dataTimeout",
            "bareLineEnds", "requireTLS", "requireAuth", "allowInsecureAuth", "authMechanisms",
        ):  # fmt: skip
            self.assertEqual(getattr(lmtp, name), getattr(smtp, name), name)
        self.assertIs(lmtp.delivery.inner, options["delivery"])
        self.assertEqual(
            (lmtp.hostname, lmtp.maxMessageSize, lmtp.maxRecipients, lmtp.commandTimeout),
            ("mx.test.invalid", 1000, 7, 42),
        )
        self.assertIsNotNone(lmtp.portal)
        self.assertTrue(lmtp.allowInsecureAuth)

    def test_makeService_lmtp_only(self) -> None:
        """--lmtp alone: only LMTP children."""
        service = makeService(parse("--lmtp", "unix:lmtp.sock", "--deliver", "discard"))
        self.assertEqual([child.factory for child in service], [service.lmtpFactory])

    def test_makeService_without_lmtp(self) -> None:
        service = makeService(parse("--listen", LOOPBACK, "--deliver", "discard"))
        self.assertIsNone(service.lmtpFactory)
        self.assertEqual(len(list(service)), 1)

    def test_lmtpListen_needs_factory(self) -> None:
        with self.assertRaises(ValueError):
            SMTPService(SMTPFactory(DiscardDelivery(), "t.invalid"), [], lmtpListen=[LOOPBACK])

    async def test_listens_and_logs(self) -> None:
        """
        LMTP on a UNIX socket and on loopback TCP beside SMTP: each logs
        "txsmtp LMTP listening on", greets as LMTP and takes LHLO; the SMTP
        listener still speaks ESMTP.  Loopback and UNIX sockets get no warning.
        """
        from twisted.internet.address import IPv4Address, UNIXAddress

        events = LogEvents(self)
        sock = os.path.join(_shortDirectory(self), "lmtp.sock")
        options = parse(
            "--listen", LOOPBACK, "--lmtp", "unix:" + sock, "--lmtp", LOOPBACK,
            "--deliver", "discard", "--hostname", "lmtp.test.invalid",
        )  # fmt: skip
        service = makeService(options)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)

        def isLMTP(event: dict[str, Any]) -> bool:
            return _isListening(event) and event.get("protocol") == "LMTP"

        await events.waitForCount(isLMTP, 2)
        await events.waitForCount(_isListening, 3)
        lmtp = [e for e in events.events if isLMTP(e)]
        texts = [formatEvent(e) for e in lmtp]
        self.assertTrue(all(t.startswith("txsmtp LMTP listening on ") for t in texts), texts)
        [unixEvent] = [e for e in lmtp if isinstance(e["address"], UNIXAddress)]
        [tcpEvent] = [e for e in lmtp if isinstance(e["address"], IPv4Address)]
        self.assertEqual(os.fsdecode(unixEvent["address"].name), sock)
        tcpPort = tcpEvent["address"].port
        [smtpEvent] = [e for e in events.events if _isListening(e) and not isLMTP(e)]
        self.assertTrue(formatEvent(smtpEvent).startswith("txsmtp listening on "))
        self.assertEqual([e for e in events.events if e.get("log_level") == LogLevel.warn], [])

        unixClient = await _connectUNIX(self, sock)
        tcpClient = await connectClient(self, tcpPort)
        for client in (unixClient, tcpClient):
            self.assertEqual(client.replies[0].code, 220)
            self.assertIn("LMTP", client.replies[0].text)
            [refused] = await client.command(b"EHLO client.test.invalid")
            self.assertEqual(refused.code, 500)
            [lhlo] = await client.command(b"LHLO client.test.invalid")
            self.assertEqual(lhlo.code, 250)
            self.assertIn("PIPELINING", lhlo.lines)
        smtpClient = await connectClient(self, smtpEvent["address"].port)
        self.assertNotIn("LMTP", smtpClient.replies[0].text)
        [ehlo] = await smtpClient.command(b"EHLO client.test.invalid")
        self.assertEqual(ehlo.code, 250)

    async def test_open_to_network_warns(self) -> None:
        """
        LMTP listening on a non-loopback address without --require-auth logs
        a warning that names the address; loopback, UNIX sockets, SMTP
        listeners and --require-auth do not.
        """
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        from txsmtp.tap import _AnnouncingEndpoint

        class FakePort:
            def __init__(self, address: Any) -> None:
                self.address = address

            def getHost(self) -> Any:
                return self.address

        class FakeEndpoint:
            def __init__(self, address: Any) -> None:
                self.address = address

            def listen(self, factory: Any) -> Any:
                from twisted.internet import defer

                return defer.succeed(FakePort(self.address))

        class Factory:
            def __init__(self, requireAuth: bool) -> None:
                self.requireAuth = requireAuth

        cases = [
            (IPv4Address("TCP", "0.0.0.0", 24), "LMTP", False, True),
            (IPv4Address("TCP", "192.0.2.7", 24), "LMTP", False, True),
            (IPv6Address("TCP", "::", 24), "LMTP", False, True),
            (IPv6Address("TCP", "2001:db8::1", 24), "LMTP", False, True),
            (IPv4Address("TCP", "0.0.0.0", 24), "LMTP", True, False),
            (IPv4Address("TCP", "0.0.0.0", 25), "SMTP", False, False),
            (IPv4Address("TCP", "127.0.0.1", 24), "LMTP", False, False),
            (IPv4Address("TCP", "127.0.0.2", 24), "LMTP", False, False),
            (IPv6Address("TCP", "::1", 24), "LMTP", False, False),
            (IPv6Address("TCP", "::ffff:127.0.0.1", 24), "LMTP", False, False),
            (UNIXAddress("/run/txsmtp/lmtp.sock"), "LMTP", False, False),
        ]
        for address, protocol, requireAuth, warns in cases:
            events = LogEvents(self)
            endpoint = _AnnouncingEndpoint(FakeEndpoint(address), "the-description", protocol)
            await endpoint.listen(Factory(requireAuth))
            warnings = [
                formatEvent(e) for e in events.events if e.get("log_level") == LogLevel.warn
            ]
            if warns:
                self.assertEqual(len(warnings), 1, (address, warnings))
                self.assertIn(address.host, warnings[0])
                self.assertIn("the-description", warnings[0])
                self.assertIn("any mailbox", warnings[0])
            else:
                self.assertEqual(warnings, [], (address, protocol, requireAuth))

    async def test_stop_covers_lmtp_sessions(self) -> None:
        """
        stopService(): an idle LMTP client gets 421 4.3.2, and an LMTP
        transaction in progress is finished (one reply per recipient)
        before its client gets 421; the UNIX socket file is removed.
        """
        delivery = MemoryDelivery()
        sock = os.path.join(_shortDirectory(self), "lmtp.sock")
        from txsmtp.lmtp import LMTPFactory

        events = LogEvents(self)
        service = SMTPService(
            SMTPFactory(delivery, "test.invalid"),
            [],
            10.0,
            lmtpFactory=LMTPFactory(delivery, "test.invalid"),
            lmtpListen=["unix:" + sock],
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await events.waitFor(_isListening)
        idle = await _connectUNIX(self, sock)
        busy = await _connectUNIX(self, sock)
        await idle.command(b"LHLO client.test.invalid")
        await busy.command(b"LHLO client.test.invalid")
        for line in (
            b"MAIL FROM:<a@example.com>",
            b"RCPT TO:<b@example.com>",
            b"RCPT TO:<c@example.com>",
        ):
            [reply] = await busy.command(line)
            self.assertEqual(reply.code, 250)
        [go] = await busy.command(b"DATA")
        self.assertEqual(go.code, 354)
        busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        stopped = service.stopService()
        [bye] = (await idle.waitReplies(3))[2:]
        self.assertEqual((bye.code, bye.enhanced), (421, "4.3.2"))
        await idle.whenLost()
        start = len(busy.replies)
        busy.send(b"second half\r\n.\r\n")
        replies = (await busy.waitReplies(start + 3))[start:]
        self.assertEqual([r.code for r in replies], [250, 250, 421])
        await busy.whenLost()
        await stopped
        [message] = delivery.messages
        self.assertEqual(message.recipients, ["b@example.com", "c@example.com"])
        self.assertFalse(os.path.exists(sock))


class LMTPTwistdUsageTests(unittest.TestCase):
    """``twistd smtp --lmtp`` with bad values: exit non-zero, say why, start nothing."""

    timeout = 60

    async def test_usage_errors(self) -> None:
        for args, words in (
            (["--lmtp=bogus:1"], "bad --lmtp 'bogus:1'"),
            (["--lmtp=tcp:2424"], "would listen on every network address"),
            (["--lmtp=unix:"], "unix: needs a path"),
        ):
            cwd = os.path.abspath(self.mktemp())
            os.makedirs(cwd)
            result = await runProcess(
                sys.executable,
                [
                    *TWISTD[1:],
                    "-n",
                    "--pidfile=",
                    "--logfile=-",
                    "smtp",
                    "--deliver",
                    "discard",
                    *args,
                ],
                cwd=cwd,
                env=childEnv(),
                timeout=30,
            )
            self.assertNotEqual(result.code, 0, result.describe())
            self.assertIn(
                words, (result.out + result.err).decode("utf-8", "replace"), result.describe()
            )
            self.assertEqual(os.listdir(cwd), [], result.describe())


# -- start-up failures (issue 12) -------------------------------------------------------------------


async def _runTwistd(
    testCase: unittest.TestCase, twistdArgs: list[str], smtpArgs: list[str]
) -> tuple[Any, str]:
    """Run ``twistd TWISTDARGS smtp SMTPARGS`` to its end in a new directory."""
    cwd = os.path.abspath(testCase.mktemp())
    os.makedirs(cwd)
    result = await runProcess(
        sys.executable,
        [*TWISTD[1:], *twistdArgs, "smtp", *smtpArgs],
        cwd=cwd,
        env=childEnv(),
        timeout=30,
    )
    return result, cwd


class StartupFailureTests(unittest.TestCase):
    """A server that cannot start says why in one line and exits non-zero."""

    timeout = 60

    def busyPort(self) -> int:
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        return int(s.getsockname()[1])

    async def test_port_in_use_foreground(self) -> None:
        """-n: one line on stderr naming the endpoint and the cause, exit 1, no traceback, no pidfile left."""
        port = self.busyPort()
        listen = f"tcp:{port}:interface=127.0.0.1"
        result, cwd = await _runTwistd(
            self, ["-n", "--pidfile=twistd.pid", "--logfile=-"], ["--deliver", "discard", "--listen", listen]
        )
        self.assertEqual(result.code, 1, result.describe())
        err = result.err.decode("utf-8", "replace")
        self.assertEqual(
            err.splitlines(), [f"twistd smtp: cannot listen on {listen}: Address already in use"], result.describe()
        )
        self.assertNotIn(b"Traceback", result.out + result.err)
        self.assertEqual(os.listdir(cwd), [], result.describe())

    async def test_port_in_use_logfile(self) -> None:
        """-n --logfile=FILE: the line goes to the terminal and to the log."""
        port = self.busyPort()
        listen = f"tcp:{port}:interface=127.0.0.1"
        result, cwd = await _runTwistd(
            self, ["-n", "--pidfile=", "--logfile=twistd.log"], ["--deliver", "discard", "--listen", listen]
        )
        self.assertEqual(result.code, 1, result.describe())
        self.assertEqual(
            result.err.decode().splitlines(), [f"twistd smtp: cannot listen on {listen}: Address already in use"]
        )
        with open(os.path.join(cwd, "twistd.log")) as f:
            log = f.read()
        self.assertIn(f"cannot listen on {listen}: Address already in use", log)
        self.assertNotIn("Traceback", log)

    async def test_port_in_use_daemon(self) -> None:
        """Daemonizing: twistd's parent prints the one-line reason and exits non-zero."""
        port = self.busyPort()
        listen = f"tcp:{port}:interface=127.0.0.1"
        result, cwd = await _runTwistd(
            self, ["--pidfile=twistd.pid", "--logfile=twistd.log"], ["--deliver", "discard", "--listen", listen]
        )
        self.assertNotEqual(result.code, 0, result.describe())
        self.assertIn(f"cannot listen on {listen}: Address already in use", result.err.decode(), result.describe())
        self.assertFalse(os.path.exists(os.path.join(cwd, "twistd.pid")))


class ClearerUsageErrorTests(_InScratchDirectory, unittest.TestCase):
    """Usage errors that say what to do (issue 12)."""

    def test_tls_cert_without_key(self) -> None:
        """--tls-cert FILE without a key in it and no --tls-key: says --tls-key is missing."""
        from tests.certs import certificates

        c = certificates()
        with self.assertRaises(usage.UsageError) as cm:
            parse("--deliver", "discard", "--tls-cert", c.chain)
        message = str(cm.exception)
        self.assertIn(f"--tls-cert {c.chain} holds no private key", message)
        self.assertIn("--tls-key", message)
        self.assertNotIn("encrypted", message)
        # A file with both, or an explicit --tls-key, still works.
        self.assertIsNotNone(parse("--deliver", "discard", "--tls-cert", c.combined)["tls"])
        self.assertIsNotNone(
            parse("--deliver", "discard", "--tls-cert", c.chain, "--tls-key", c.key)["tls"]
        )
        # An unreadable file is still reported as such.
        with self.assertRaises(usage.UsageError) as cm:
            parse("--deliver", "discard", "--tls-cert", "/nonexistent/cert.pem")
        self.assertIn("cannot read /nonexistent/cert.pem", str(cm.exception))

    def test_port_number_alone(self) -> None:
        """--listen 28551 suggests tcp:28551 (and --listen-tls, --lmtp likewise)."""
        for option, suggestion in (
            ("--listen", "did you mean tcp:28551?"),
            ("--listen-tls", "did you mean tcp:28551?"),
            ("--lmtp", "did you mean tcp:28551:interface=127.0.0.1?"),
        ):
            with self.assertRaises(usage.UsageError) as cm:
                parse("--deliver", "discard", f"{option}=28551")
            message = str(cm.exception)
            self.assertIn(f"bad {option} '28551'", message)
            self.assertIn(suggestion, message)
        with self.assertRaises(usage.UsageError) as cm:
            parse("--deliver", "discard", "--listen=bogus:1")
        self.assertNotIn("did you mean", str(cm.exception))

    def test_bad_hostname(self) -> None:
        """--hostname must be a domain name or an address literal."""
        for bad in (
            "bad name",
            "",
            "mx..example",
            "-mx.example",
            "mx_1.example",
            "mx.example.",
            "a" * 64 + ".example",
            "x." * 127 + "xx",
            "[300.1.2.3]",
            "[IPv6:nope]",
            "[2001:db8::1]",
            "mx.exämple",
            "mx.example\r\nX: y",
        ):
            with self.assertRaises(usage.UsageError, msg=bad) as cm:
                parse("--deliver", "discard", "--hostname", bad)
            self.assertIn(f"--hostname {bad!r}", str(cm.exception))
        for good in (
            "mx.example.com",
            "localhost",
            "mx-1.EXAMPLE",
            "xn--bcher-kva.example",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "a" * 63 + ".example",
        ):
            self.assertEqual(parse("--deliver", "discard", "--hostname", good)["hostname"], good)


class ShortUsageErrorTests(unittest.TestCase):
    """A usage error is not buried under the help text (issue 12)."""

    timeout = 60

    def test_getUsage(self) -> None:
        """Before an error getUsage() is the help; after one, a pointer to --help."""
        options = Options()
        self.assertIn("--max-recipients", options.getUsage())
        with self.assertRaises(usage.UsageError):
            options.parseOptions(["--max-size=abc"])
        self.assertEqual(options.usageError, str(options.usageError))
        self.assertIn("--max-size", options.usageError or "")
        self.assertEqual(
            options.getUsage(), "twistd smtp: usage error ('twistd smtp --help' lists the options):"
        )

    async def test_twistd_prints_the_error_not_the_help(self) -> None:
        """twistd smtp with a bad option: at most three lines, the error last, no option list."""
        for args, words in (
            (["--max-size=abc"], "--max-size takes a whole number"),
            (["--no-such-option"], "no-such-option"),
            (["--deliver", "discard", "--listen=28551"], "did you mean tcp:28551?"),
        ):
            result, cwd = await _runTwistd(self, ["-n", "--pidfile=", "--logfile=-"], args)
            self.assertEqual(result.code, 1, result.describe())
            lines = (result.out + result.err).decode("utf-8", "replace").splitlines()
            self.assertLessEqual(len(lines), 3, result.describe())
            self.assertIn(words, lines[-1], result.describe())
            self.assertIn("'twistd smtp --help' lists the options", "\n".join(lines))
            self.assertNotIn("--max-recipients", "\n".join(lines))
            self.assertEqual(os.listdir(cwd), [])

    async def test_help_is_whole(self) -> None:
        """twistd smtp --help still prints every option."""
        result, _ = await _runTwistd(self, [], ["--help"])
        self.assertEqual(result.code, 0, result.describe())
        for option in (b"--listen", b"--max-recipients", b"--tls-key", b"--auth"):
            self.assertIn(option, result.out)


class VersionAndSummaryTests(_InScratchDirectory, unittest.TestCase):
    """--version names txsmtp; start-up logs one summary line (issue 12)."""

    timeout = 60

    def test_version_option(self) -> None:
        """Options --version prints txsmtp's, Twisted's and Python's versions and exits 0."""
        import txsmtp
        from twisted import copyright

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as cm:
            parse("--version")
        self.assertIn(cm.exception.code, (0, None))
        self.assertEqual(
            out.getvalue(),
            f"txsmtp {txsmtp.__version__} (Twisted {copyright.version}, Python {sys.version.split()[0]})\n",
        )

    def test_summary_plain(self) -> None:
        import txsmtp

        options = parse("--listen", LOOPBACK, "--lmtp", "unix:lmtp.sock", "--deliver", "discard", "--hostname", "mx.test.invalid")
        self.assertEqual(
            txsmtp.tap.startupSummary(options),
            f"txsmtp {txsmtp.__version__} starting as mx.test.invalid: SMTP on {LOOPBACK}, "
            "LMTP on unix:lmtp.sock; delivery discard; TLS off; AUTH off",
        )

    def test_summary_tls_and_auth(self) -> None:
        import txsmtp
        from tests.certs import certificates

        c = certificates()
        options = parse(
            "--listen", LOOPBACK, "--listen-tls", LOOPBACK, "--deliver", "maildir:Maildir",
            "--hostname", "mx.test.invalid", "--tls-cert", c.chain, "--tls-key", c.key,
            "--require-tls", "--auth", "memory:u:p", "--require-auth",
        )  # fmt: skip
        self.assertEqual(
            txsmtp.tap.startupSummary(options),
            f"txsmtp {txsmtp.__version__} starting as mx.test.invalid: SMTP on {LOOPBACK}, "
            f"SMTP with implicit TLS on {LOOPBACK}; delivery maildir:Maildir; "
            f"TLS STARTTLS with {c.chain} (key {c.key}), required before MAIL; "
            "AUTH required before MAIL under TLS",
        )
        options = parse("--listen", LOOPBACK, "--deliver", "discard", "--auth", "memory:u:p", "--allow-insecure-auth")
        self.assertTrue(txsmtp.tap.startupSummary(options).endswith("; TLS off; AUTH offered without TLS too"))

    async def test_twistd_logs_summary(self) -> None:
        """twistd smtp logs the summary before the listeners, and no 'Starting factory' line."""
        import txsmtp

        running = await startTwistd(self, "--deliver", "discard", "--hostname", "mx.test.invalid")
        summary = (
            f"txsmtp {txsmtp.__version__} starting as mx.test.invalid: SMTP on {LOOPBACK}; "
            "delivery discard; TLS off; AUTH off"
        )
        self.assertIn(summary, running.log)
        self.assertLess(running.log.index(summary), running.log.index("txsmtp listening on"))
        self.assertNotIn("Starting factory", running.log)
        self.assertEqual(running.log.count("starting as"), 1)
        await running.stop()
        self.assertNotIn("Stopping factory", running.log)

    async def test_twistd_version(self) -> None:
        """``twistd smtp --version`` names txsmtp's version."""
        import txsmtp

        result, _ = await _runTwistd(self, [], ["--version"])
        self.assertEqual(result.code, 0, result.describe())
        self.assertIn(f"txsmtp {txsmtp.__version__} (Twisted ".encode(), result.out)


class AuthFileTests(_InScratchDirectory, unittest.TestCase):
    """--auth file:PATH that cannot be read is refused at start-up (issue 12)."""

    timeout = 60

    def test_unreadable_file_refused(self) -> None:
        for path, why in (("/nonexistent/users", "No such file or directory"), (self.cwd, "Is a directory")):
            with self.assertRaises(usage.UsageError, msg=path) as cm:
                parse("--deliver", "discard", "--auth", f"file:{path}", "--allow-insecure-auth")
            self.assertEqual(
                str(cm.exception),
                f"--auth file:{path}: cannot read the credentials file {path}: {why}",
            )

    def test_readable_file_accepted(self) -> None:
        with open("users", "w") as f:
            f.write("alice:secret\n")
        options = parse("--deliver", "discard", "--auth", "file:users", "--allow-insecure-auth")
        self.assertEqual(len(options["credCheckers"]), 1)

    async def test_twistd_refuses(self) -> None:
        result, cwd = await _runTwistd(
            self,
            ["-n", "--pidfile=", "--logfile=-"],
            ["--deliver", "discard", "--auth", "file:/nonexistent/users", "--allow-insecure-auth"],
        )
        self.assertEqual(result.code, 1, result.describe())
        lines = result.out.decode().splitlines()
        self.assertIn("cannot read the credentials file /nonexistent/users", lines[-1], result.describe())
        self.assertNotIn(b"txsmtp listening", result.out + result.err)

    def test_failing_checker_is_temporary(self) -> None:
        """A checker that fails with an unexpected error: 454 4.7.0, not 535."""
        from twisted.cred.checkers import ICredentialsChecker
        from twisted.cred.credentials import IUsernamePassword
        from twisted.internet import defer
        from zope.interface import implementer

        from tests.test_tls_auth import PASSWORD, USER, authHarness, b64

        @implementer(ICredentialsChecker)
        class Broken:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
                return defer.fail(OSError(13, "Permission denied", "/etc/txsmtp/users"))

        h = authHarness(checkers=[Broken()])
        reply = h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual((reply.code, reply.enhanced), (454, "4.7.0"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class BacklogTests(_InScratchDirectory, unittest.TestCase):
    """Listeners get a mail server's listen backlog unless the description names one (issue 12)."""

    timeout = 30

    def test_withBacklog(self) -> None:
        from txsmtp.tap import DEFAULT_BACKLOG, withBacklog

        self.assertEqual(DEFAULT_BACKLOG, 1024)
        for description, expected in (
            ("tcp:25", "tcp:25:backlog=1024"),
            ("tcp:25:interface=127.0.0.1", "tcp:25:interface=127.0.0.1:backlog=1024"),
            ("tcp6:25:interface=\\:\\:1", "tcp6:25:interface=\\:\\:1:backlog=1024"),
            ("unix:/run/txsmtp.sock", "unix:/run/txsmtp.sock:backlog=1024"),
            ("ssl:465:privateKey=k.pem", "ssl:465:privateKey=k.pem:backlog=1024"),
            ("haproxy:tcp:25", "haproxy:tcp:25:backlog=1024"),
            # An explicit backlog is kept.
            ("tcp:25:backlog=20", "tcp:25:backlog=20"),
            ("tcp:backlog=20:25", "tcp:backlog=20:25"),
            ("haproxy:tcp:25:backlog=5000", "haproxy:tcp:25:backlog=5000"),
            ("unix:/s.sock:backlog=7", "unix:/s.sock:backlog=7"),
            # Endpoints that take no backlog are left alone.
            ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ):
            self.assertEqual(withBacklog(description), expected, description)
        self.assertEqual(withBacklog("tcp:25", 99), "tcp:25:backlog=99")

    async def _ports(self, descriptions: list[str]) -> list[Any]:
        events = LogEvents(self)
        service = SMTPService(SMTPFactory(DiscardDelivery(), "test.invalid"), descriptions)
        service.startService()
        self.addCleanup(service.stopService)
        await events.waitForCount(_isListening, len(descriptions))
        return [child.endpoint.port for child in service]

    async def test_listeners_get_the_backlog(self) -> None:
        """The default 1024 reaches the listening ports; an explicit backlog= is kept."""
        sock = os.path.join(_shortDirectory(self), "s.sock")
        ports = await self._ports(
            [LOOPBACK, f"{LOOPBACK}:backlog=17", f"unix:{sock}", f"haproxy:{LOOPBACK}"]
        )
        self.assertEqual([port.backlog for port in ports], [1024, 17, 1024, 1024])


def _nobody() -> tuple[int, int] | None:
    """nobody's uid and nogroup's gid, when both exist and this runs as root."""
    import grp
    import pwd

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return None


class DropPrivilegesTests(unittest.TestCase):
    """
    ``twistd --uid nobody --gid nogroup smtp --deliver maildir:DIR`` as
    root: the Maildir is given to nobody, or the start is refused (issue 12).
    """

    timeout = 60

    def setUp(self) -> None:
        ids = _nobody()
        if ids is None:
            raise unittest.SkipTest("needs root, and the user nobody and the group nogroup")
        self.uid, self.gid = ids
        import tempfile

        # A directory nobody can reach (the trial directory may not be).
        self.base = tempfile.mkdtemp(prefix="txsmtp-uid-")
        os.chmod(self.base, 0o755)
        self.addCleanup(shutil.rmtree, self.base, True)

    def start(self, maildir: str, kind: str = "maildir") -> Any:
        from twisted.internet import reactor

        from tests.twistd_helpers import RunningTwistd, _TwistdProcess

        args = [
            *TWISTD, "-n", "--pidfile=", "--logfile=-", "--uid", "nobody", "--gid", "nogroup",
            "smtp", "--listen", LOOPBACK, "--deliver", f"{kind}:{maildir}",
        ]  # fmt: skip
        process = _TwistdProcess()
        reactor.spawnProcess(process, sys.executable, args, env=childEnv(), path=self.base)  # type: ignore[attr-defined]
        running = RunningTwistd(process, self.base)
        self.addCleanup(running.stop)
        return running

    async def test_new_maildir_is_given_to_the_user(self) -> None:
        """A Maildir created at start-up belongs to nobody:nogroup, and a message is stored in it."""
        maildir = os.path.join(self.base, "Maildir")
        running = self.start(maildir)
        m = await running.waitForLog(r"txsmtp listening on .*?port=(\d+)")
        await running.waitForLog(r"set uid/gid")
        for d in (maildir, *(os.path.join(maildir, sub) for sub in ("tmp", "new", "cur"))):
            st = os.stat(d)
            self.assertEqual((st.st_uid, st.st_gid), (self.uid, self.gid), d)
        client = await connectClient(self, int(m.group(1)))
        for line in (b"EHLO client.test.invalid", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>"):
            [reply] = await client.command(line)
            self.assertEqual(reply.code, 250, running.log)
        await client.command(b"DATA")
        [done] = await client.command(b"Subject: uid\r\n\r\nhello\r\n.")
        self.assertEqual(done.code, 250, running.log)
        [stored] = maildirFiles(maildir)
        self.assertEqual(os.stat(stored).st_uid, self.uid)

    async def test_virtual_root_of_the_user_accepted(self) -> None:
        """virtual:DIR (which must exist) that nobody:nogroup can write: the server starts."""
        root = os.path.join(self.base, "vhosts")
        os.makedirs(root, mode=0o755)
        os.chown(root, self.uid, self.gid)
        running = self.start(root, "virtual")
        await running.waitForLog(r"txsmtp listening on")
        await running.waitForLog(r"set uid/gid")

    async def test_unwritable_virtual_root_refused(self) -> None:
        """A virtual root that root made before, and nobody cannot write: refused, in one line."""
        root = os.path.join(self.base, "vhosts")
        os.makedirs(root, mode=0o755)
        running = self.start(root, "virtual")
        ended = await running.process.whenEnded()
        self.assertIsInstance(ended, ProcessTerminated, running.log)
        self.assertEqual(ended.exitCode, 1, running.log)
        self.assertIn(
            f"--deliver virtual:{root}: {root} is not writable by uid {self.uid} gid {self.gid}",
            running.log.splitlines()[-1],
        )

    async def test_unwritable_maildir_refused(self) -> None:
        """A Maildir that root made before, and nobody cannot write: refused, in one line, exit 1."""
        maildir = os.path.join(self.base, "Maildir")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(maildir, sub), mode=0o755)
        running = self.start(maildir)
        ended = await running.process.whenEnded()
        self.assertIsInstance(ended, ProcessTerminated, running.log)
        self.assertEqual(ended.exitCode, 1, running.log)
        lines = running.log.splitlines()
        self.assertIn(
            f"--deliver maildir:{maildir}: {maildir} is not writable by uid {self.uid} gid {self.gid}",
            lines[-1],
        )
        self.assertNotIn("txsmtp listening", running.log)
        self.assertEqual(os.stat(maildir).st_uid, 0)

    async def test_unreachable_maildir_refused(self) -> None:
        """A Maildir under a directory closed to nobody: refused, naming that directory."""
        closed = os.path.join(self.base, "closed")
        os.mkdir(closed, 0o700)
        maildir = os.path.join(closed, "Maildir")
        running = self.start(maildir)
        ended = await running.process.whenEnded()
        self.assertEqual(getattr(ended, "exitCode", None), 1, running.log)
        self.assertIn(f"cannot reach {maildir}: {closed} is closed to it", running.log.splitlines()[-1])
