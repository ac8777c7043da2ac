"""
The queue's control channel (txsmtp.queue.control) over a real UNIX socket,
and the ``txsmtp`` command (txsmtp.cli): in-process through both of its
paths (a server answering on DIR/control.sock, and the store opened
directly when no server runs), and as a subprocess for its usage and exit
statuses.  The store is the in-memory one of tests/queuememory.py.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from tests.queuememory import MemoryStore
from tests.twistd_helpers import REPO_ROOT, childEnv, runProcess, withTimeout
from txsmtp import __version__, cli
from txsmtp.queue.control import (
    MAX_REQUEST_SIZE,
    ControlClient,
    IQueueControl,
    StoreControl,
    UnknownMessageError,
    connectControl,
    listenControl,
)
from txsmtp.queue.interfaces import IQueueStore
from txsmtp.queue.model import RecipientState

NOW = 1_800_000_000.0

ENVELOPE = {
    "sender": "alice@example.com",
    "parameters": {"size": None, "body": "8BITMIME", "smtputf8": False, "auth": None, "ret": "HDRS", "envid": "env-42", "extra": {}},
    "queueId": "SRV123",
    "connection": {
        "peer": "192.0.2.7",
        "heloName": "client.example.com",
        "esmtp": True,
        "protocol": "SMTP",
        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
        "authenticated": "alice",
        "sessionId": "s1",
    },
}


def makeStore() -> tuple[MemoryStore, str, str]:
    """A store with two messages: one plain, one with a deferred and a held-free DSN recipient."""
    clock = Clock()
    clock.advance(NOW)
    store = MemoryStore(clock)
    first = store.add("alice@example.com", ["bob@example.org", "carol@example.net"], ENVELOPE, arrival=NOW - 600)
    second = store.add("", ["dave@example.com"], {}, arrival=NOW - 60)
    bob, carol = store.messages[first].recipients
    bob.notify = ("SUCCESS", "FAILURE")
    bob.orcpt = ("rfc822", "Bob@Example.org")
    carol.state = RecipientState.DEFERRED
    carol.attempts = 2
    carol.nextAttempt = NOW + 900
    carol.lastError = "mx.example.net[192.0.2.9] said: 451 4.3.0 try later"
    return store, first, second


def shortTempDir(case: unittest.TestCase) -> str:
    # A UNIX socket's path must stay under ~100 octets: not under _trial_temp.
    directory = tempfile.mkdtemp(prefix="txq-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def staleSocket(path: str) -> None:
    """Leave a socket file nobody listens on, as a server killed with -9 does."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


class _Silent(protocol.Protocol):
    """A server that reads and never answers."""

    def dataReceived(self, data: bytes) -> None:
        pass


class _Raw(protocol.Protocol):
    """A client that writes bytes and waits for the connection to close."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class _Big(amp.Command):
    commandName = b"Show"
    arguments = [(b"id", amp.Unicode()), (b"padding", amp.ListOf(amp.Unicode()))]
    response = [(b"message", amp.Unicode())]


class _WrongArgument(amp.Command):
    commandName = b"Show"
    arguments = [(b"messageId", amp.Unicode())]
    response = [(b"message", amp.Unicode())]


class _Shutdown(amp.Command):
    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []


class ControlProtocolTests(unittest.TestCase):
    """The AMP commands, from ControlClient to ControlFactory, over a real UNIX socket."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.store, self.first, self.second = makeStore()
        self.woken: list[bool] = []
        self.store.addWakeListener(lambda: self.woken.append(True))
        self.directory = shortTempDir(self)
        self.path = os.path.join(self.directory, "control.sock")
        self.port = await listenControl(self.store, self.path, reactor)
        self.addCleanup(self.port.stopListening)
        self.client = await connectControl(self.path, reactor, timeout=30)
        self.addCleanup(self.client.close)

    def test_socketOwnerOnly(self) -> None:
        mode = os.stat(self.path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    async def test_list(self) -> None:
        messages = await self.client.list()
        self.assertEqual(messages, [m.toJSON() for m in await self.store.list()])
        self.assertEqual([m["id"] for m in messages], [self.first, self.second])
        carol = messages[0]["recipients"][1]
        self.assertEqual(carol["state"], "deferred")
        self.assertEqual(carol["attempts"], 2)
        self.assertIn("451 4.3.0", carol["last_error"])

    async def test_showEnvelope(self) -> None:
        message = await self.client.show(self.first)
        self.assertEqual((message["id"], message["sender"]), (self.first, "alice@example.com"))
        self.assertEqual((message["ret"], message["envid"], message["queue_id"]), ("HDRS", "env-42", "SRV123"))
        self.assertEqual(message["client"]["authenticated"], "alice")
        bob, carol = message["recipients"]
        self.assertEqual(bob["notify"], ["SUCCESS", "FAILURE"])
        self.assertEqual(bob["orcpt"], ["rfc822", "Bob@Example.org"])
        self.assertIsNone(carol["notify"])
        self.assertIsNone(carol["orcpt"])

    async def test_unknownMessage(self) -> None:
        for call in (self.client.show, self.client.hold, self.client.release, self.client.delete, self.client.flush):
            with self.assertRaises(UnknownMessageError):
                await call("0000000000000000")
        # An id that could be no store's never reaches the store either.
        with self.assertRaises(UnknownMessageError):
            await self.client.show("bad\x1b[2Jid")
        self.assertEqual(len(self.store.messages), 2)

    async def test_holdAndRelease(self) -> None:
        await self.client.hold(self.first)
        states = {r.address: r.state for r in self.store.messages[self.first].recipients}
        self.assertEqual(set(states.values()), {RecipientState.HELD})
        self.assertEqual(await self.store.nextDue(), NOW - 60)  # only the other message
        await self.client.release(self.first)
        bob, carol = self.store.messages[self.first].recipients
        self.assertEqual((bob.state, carol.state), (RecipientState.QUEUED, RecipientState.DEFERRED))
        self.assertEqual(carol.nextAttempt, NOW)
        self.assertTrue(self.woken)

    async def test_delete(self) -> None:
        await self.client.delete(self.second)
        self.assertEqual(list(self.store.messages), [self.first])
        self.assertNotIn(self.second, self.store.bodies)

    async def test_flushWakesTheScheduler(self) -> None:
        self.assertEqual(await self.client.flush(), 1)
        self.assertEqual(self.store.messages[self.first].recipients[1].nextAttempt, NOW)
        self.assertEqual(self.woken, [True])
        self.assertEqual(await self.client.flush(self.first), 0)

    async def test_largeAnswer(self) -> None:
        """An answer longer than one AMP value (64 KiB) arrives whole."""
        many = [f"user{i:05d}-{'x' * 40}@example.com" for i in range(3000)]
        big = self.store.add("bulk@example.com", many, arrival=NOW)
        message = await self.client.show(big)
        self.assertEqual([r["address"] for r in message["recipients"]], many)
        self.assertGreater(len(json.dumps(message)), 2 * amp.MAX_VALUE_LENGTH)
        listed = await self.client.list()
        self.assertEqual(len(listed[-1]["recipients"]), 3000)

    async def test_malformedRequest(self) -> None:
        """Arguments that do not parse: an AMP error, and the connection still serves."""
        with self.assertRaises(amp.RemoteAmpError) as caught:
            await self.client.protocol.callRemote(_WrongArgument, messageId=self.first)
        self.assertIn("malformed", str(caught.exception))
        self.assertEqual(len(await self.client.list()), 2)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_unknownCommand(self) -> None:
        with self.assertRaises(amp.UnhandledCommand):
            await self.client.protocol.callRemote(_Shutdown)
        self.assertEqual(len(await self.client.list()), 2)

    async def test_oversizedRequest(self) -> None:
        """A request above MAX_REQUEST_SIZE closes the connection; the server lives."""
        padding = ["p" * 1000] * (MAX_REQUEST_SIZE // 1000 + 5)
        d = self.client.protocol.callRemote(_Big, id=self.first, padding=padding)
        await self.assertFailure(withTimeout(d, 10, lambda: "the server kept the connection"), error.ConnectionDone, error.ConnectionLost)
        other = await connectControl(self.path, reactor, timeout=30)
        self.addCleanup(other.close)
        self.assertEqual(len(await other.list()), 2)

    async def test_garbage(self) -> None:
        """Bytes that are not AMP close the connection, nothing more."""
        raw = _Raw()
        await connectProtocol(UNIXClientEndpoint(reactor, self.path), raw)
        assert raw.transport is not None
        raw.transport.write(b"\xff\xff" + b"z" * 300 + b"\x00\x00")
        await withTimeout(raw.closed, 10, lambda: f"still open, got {raw.received!r}")
        self.assertEqual(len(await self.client.list()), 2)


class ControlSocketFileTests(unittest.TestCase):
    def test_interfaces(self) -> None:
        store = makeStore()[0]
        verifyObject(IQueueStore, store)
        verifyObject(IQueueControl, StoreControl(store))
        verifyObject(IQueueControl, ControlClient(amp.AMP(), Clock()))

    async def test_staleSocketReplaced(self) -> None:
        directory = shortTempDir(self)
        path = os.path.join(directory, "control.sock")
        staleSocket(path)
        store, first, _ = makeStore()
        port = await listenControl(store, path, reactor)
        client = await connectControl(path, reactor, timeout=30)
        self.assertEqual((await client.show(first))["id"], first)
        client.close()
        await port.stopListening()
        self.assertFalse(os.path.lexists(path))

    async def test_longPath(self) -> None:
        """
        A queue directory deeper than a UNIX socket address can name (108
        octets): the socket is still made there and reached, through the
        directory's descriptor; stopping removes it and closes the descriptor.
        """
        directory = shortTempDir(self)
        deep = os.path.join(directory, *(["a-rather-long-directory-name"] * 5))
        os.makedirs(deep)
        path = os.path.join(deep, "control.sock")
        self.assertGreater(len(path), 120)
        def openOnDeep() -> list[str]:
            found = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") == deep:
                        found.append(fd)
                except OSError:
                    pass
            return found

        store, first, _ = makeStore()
        port = await listenControl(store, path, reactor)
        self.assertTrue(stat.S_ISSOCK(os.lstat(path).st_mode))
        self.assertEqual(len(openOnDeep()), 1)  # the listener's, until it stops
        client = await connectControl(path, reactor, timeout=30)
        self.assertEqual((await client.show(first))["id"], first)
        client.close()
        await port.stopListening()
        self.assertFalse(os.path.lexists(path))
        self.assertEqual(openOnDeep(), [])

    async def test_timeout(self) -> None:
        """A server that never answers: TimeoutError after the client's timeout, connection closed."""
        directory = shortTempDir(self)
        path = os.path.join(directory, "control.sock")
        port = reactor.listenUNIX(path, protocol.Factory.forProtocol(_Silent))  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        conn = await connectProtocol(UNIXClientEndpoint(reactor, path), amp.AMP())
        clock = Clock()
        client = ControlClient(conn, clock, timeout=5)
        d = client.list()
        clock.advance(5)
        with self.assertRaises(defer.TimeoutError):
            await d
        self.assertTrue(conn.transport is None or conn.transport.disconnecting)  # type: ignore[attr-defined]


class _CommandLineBase(unittest.TestCase):
    def setUp(self) -> None:
        self.store, self.first, self.second = makeStore()
        self.woken: list[bool] = []
        self.store.addWakeListener(lambda: self.woken.append(True))
        self.directory = shortTempDir(self)
        self.path = os.path.join(self.directory, "control.sock")
        self.opened: list[str] = []
        self.patch(cli, "storeFactory", self.factory)

    def factory(self, directory: str, reactor: Any) -> MemoryStore:
        self.opened.append(directory)
        return self.store

    async def txsmtp(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = await cli.run(list(args), reactor, out, err)
        self.assertNotIn("Traceback", err.getvalue())
        return status, out.getvalue(), err.getvalue()


class CommandLineServerTests(_CommandLineBase):
    """``txsmtp queue ...`` in-process, with a server answering on DIR/control.sock."""

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.port = await listenControl(self.store, self.path, reactor)
        self.addCleanup(self.port.stopListening)

    def tearDown(self) -> None:
        self.assertEqual(self.opened, [], "the command opened the store although the server answers")

    async def test_listTable(self) -> None:
        status, out, err = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[-1], "2 messages, 3 recipients")
        self.assertTrue(lines[0].startswith("ID"))
        first = next(i for i, line in enumerate(lines) if line.startswith(self.first))
        self.assertIn("<alice@example.com>", lines[first])
        self.assertIn("2027-01-15T07:50:00Z", lines[first])  # NOW - 600 s, in UTC
        self.assertRegex(lines[first + 1], r"^    bob@example\.org  queued, 0 attempts, next ")
        self.assertEqual(lines[first + 2], "    carol@example.net  deferred, 2 attempts, next 2027-01-15T08:15:00Z")
        self.assertEqual(lines[first + 3], "      last error: mx.example.net[192.0.2.9] said: 451 4.3.0 try later")
        second = next(line for line in lines if line.startswith(self.second))
        self.assertIn("<>", second)

    async def test_listJSON(self) -> None:
        status, out, _ = await self.txsmtp("queue", "list", "--json", "--queue", self.directory)
        self.assertEqual(status, 0)
        objects = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([o["id"] for o in objects], [self.first, self.second])
        first = objects[0]
        self.assertEqual((first["sender"], first["arrival"]), ("alice@example.com", "2027-01-15T07:50:00+00:00"))
        carol = first["recipients"][1]
        self.assertEqual(set(carol), {"address", "state", "attempts", "next_attempt", "last_error"})
        self.assertEqual((carol["state"], carol["attempts"], carol["next_attempt"]), ("deferred", 2, "2027-01-15T08:15:00+00:00"))

    async def test_emptyQueue(self) -> None:
        self.store.messages.clear()
        status, out, _ = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertEqual((status, out), (0, "0 messages, 0 recipients\n"))
        status, out, _ = await self.txsmtp("queue", "list", "--json", "--queue", self.directory)
        self.assertEqual((status, out), (0, ""))

    async def test_show(self) -> None:
        # Options after the id, as GNU tools take them.
        status, out, err = await self.txsmtp("queue", "show", self.first, "--queue", self.directory)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"Message:    {self.first}\n", out)
        self.assertIn("Sender:     <alice@example.com>\n", out)
        self.assertIn("RET:        HDRS\n", out)
        self.assertIn("ENVID:      env-42\n", out)
        self.assertIn("Client:     192.0.2.7 (HELO client.example.com) over ESMTP with TLSv1.3 TLS_AES_256_GCM_SHA384 authenticated as alice\n", out)
        self.assertIn("    NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@Example.org\n", out)
        self.assertIn("  carol@example.net  deferred, 2 attempts", out)

    async def test_showJSON(self) -> None:
        status, out, _ = await self.txsmtp("queue", "--queue", self.directory, "show", "--json", self.first)
        self.assertEqual(status, 0)
        message = json.loads(out)
        self.assertEqual((message["id"], message["envid"]), (self.first, "env-42"))
        self.assertEqual(message["recipients"][0]["notify"], ["SUCCESS", "FAILURE"])

    async def test_unknownId(self) -> None:
        for command in ("show", "hold", "release", "delete", "flush"):
            status, out, err = await self.txsmtp("queue", command, "NOSUCHMESSAGE", "--queue", self.directory)
            self.assertEqual((status, out), (1, ""), command)
            self.assertEqual(err, f"txsmtp: no message NOSUCHMESSAGE in the queue {self.directory}\n")

    async def test_flush(self) -> None:
        status, out, _ = await self.txsmtp("queue", "flush", "--queue", self.directory)
        self.assertEqual((status, out), (0, "1 recipient due now\n"))
        self.assertEqual(self.woken, [True])
        self.assertEqual(self.store.messages[self.first].recipients[1].nextAttempt, NOW)
        status, out, _ = await self.txsmtp("queue", "flush", self.first, "--queue", self.directory)
        self.assertEqual((status, out), (0, f"{self.first}: 0 recipients due now\n"))

    async def test_holdReleaseDelete(self) -> None:
        status, out, _ = await self.txsmtp("queue", "hold", self.second, "--queue", self.directory)
        self.assertEqual((status, out), (0, f"{self.second}: held\n"))
        self.assertEqual(self.store.messages[self.second].recipients[0].state, RecipientState.HELD)
        _, listed, _ = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertIn("    dave@example.com  held, 0 attempts\n", listed)
        status, out, _ = await self.txsmtp("queue", "release", self.second, "--queue", self.directory)
        self.assertEqual((status, out), (0, f"{self.second}: released\n"))
        self.assertEqual(self.store.messages[self.second].recipients[0].state, RecipientState.QUEUED)
        status, out, _ = await self.txsmtp("queue", "delete", self.second, "--queue", self.directory)
        self.assertEqual((status, out), (0, f"{self.second}: deleted\n"))
        self.assertNotIn(self.second, self.store.messages)

    async def test_controlCharactersShownEscaped(self) -> None:
        """A last error from another machine cannot drive the terminal."""
        self.store.messages[self.first].recipients[1].lastError = "evil said: \x1b[2J\x07 451"
        _, out, _ = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertIn("last error: evil said: \\x1b[2J\\x07 451\n", out)
        self.assertNotIn("\x1b", out)


class CommandLineDirectTests(_CommandLineBase):
    """``txsmtp queue ...`` in-process, with no server: the store is opened directly."""

    def assertOpenedAndClosed(self) -> None:
        self.assertEqual(self.opened, [self.directory])
        self.assertTrue(self.store.opened)
        self.assertTrue(self.store.closed)

    async def test_list(self) -> None:
        status, out, _ = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[-1], "2 messages, 3 recipients")
        self.assertOpenedAndClosed()

    async def test_staleSocket(self) -> None:
        """A socket nobody listens on (a server killed): the store is opened directly."""
        staleSocket(self.path)
        status, out, _ = await self.txsmtp("queue", "list", "--json", "--queue", self.directory)
        self.assertEqual(status, 0)
        self.assertEqual(len(out.splitlines()), 2)
        self.assertOpenedAndClosed()

    async def test_changes(self) -> None:
        status, out, _ = await self.txsmtp("queue", "hold", self.first, "--queue", self.directory)
        self.assertEqual((status, out), (0, f"{self.first}: held\n"))
        self.assertEqual({r.state for r in self.store.messages[self.first].recipients}, {RecipientState.HELD})
        status, _, _ = await self.txsmtp("queue", "delete", self.second, "--queue", self.directory)
        self.assertEqual(status, 0)
        self.assertEqual(list(self.store.messages), [self.first])
        self.assertTrue(self.store.closed)

    async def test_flushSaysNoServer(self) -> None:
        status, out, _ = await self.txsmtp("queue", "flush", "--queue", self.directory)
        self.assertEqual(status, 0)
        self.assertEqual(out, "1 recipient due now (no server runs on this queue: they go when it starts)\n")
        self.assertEqual(self.store.messages[self.first].recipients[1].nextAttempt, NOW)

    async def test_unknownIdClosesStore(self) -> None:
        status, _, err = await self.txsmtp("queue", "show", "NOSUCHMESSAGE", "--queue", self.directory)
        self.assertEqual((status, err), (1, f"txsmtp: no message NOSUCHMESSAGE in the queue {self.directory}\n"))
        self.assertOpenedAndClosed()

    async def test_lockedWithoutServer(self) -> None:
        """Locked by another process whose socket does not answer: said plainly, status 1."""
        self.store.locked = True
        staleSocket(self.path)
        status, out, err = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"the queue {self.directory} is locked by another process, but no server answers on {self.path}", err)
        self.assertEqual(err.count("\n"), 1)

    async def test_storeCannotOpen(self) -> None:
        def broken(directory: str, reactor: Any) -> MemoryStore:
            store = MemoryStore()
            store.open = lambda: defer.fail(PermissionError(13, "Permission denied", directory + "/queue.sqlite"))  # type: ignore[method-assign]
            return store

        self.patch(cli, "storeFactory", broken)
        status, _, err = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertEqual(status, 1)
        self.assertIn(f"txsmtp: cannot open the queue {self.directory}: [Errno 13] Permission denied", err)

    async def test_missingDirectory(self) -> None:
        missing = os.path.join(self.directory, "nope")
        status, out, err = await self.txsmtp("queue", "list", "--queue", missing)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"txsmtp: no queue directory at {missing} (--queue DIR names it)\n")
        self.assertEqual(self.opened, [])

    async def test_notAQueueDirectory(self) -> None:
        """The real store factory refuses a directory without queue.sqlite, before importing SQLite."""
        self.patch(cli, "storeFactory", cli._openSQLiteStore)
        status, _, err = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertEqual(status, 1)
        self.assertEqual(err, f"txsmtp: {self.directory} is not a queue directory: it has no queue.sqlite\n")
        self.assertFalse(os.path.exists(os.path.join(self.directory, "queue.sqlite")))

    async def test_otherUsersQueue(self) -> None:
        """Run as another user than the queue's owner, the command does not open it."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to give the directory away")
        self.patch(cli, "storeFactory", cli._openSQLiteStore)
        open(os.path.join(self.directory, "queue.sqlite"), "wb").close()
        os.chown(self.directory, 65534, 65534)
        status, _, err = await self.txsmtp("queue", "list", "--queue", self.directory)
        self.assertEqual(status, 1)
        self.assertIn("belongs to user id 65534: run txsmtp queue as that user", err)

    async def test_usage(self) -> None:
        for args in ([], ["queue"], ["queue", "bogus"], ["queue", "show"], ["queue", "hold", "a", "b"], ["queue", "list", "--nope"]):
            status, out, err = await self.txsmtp(*args)
            self.assertEqual((status, out), (2, ""), args)
            self.assertTrue(err.startswith("txsmtp: "), err)
        self.assertEqual(self.opened, [])

    async def test_helpAndVersion(self) -> None:
        status, out, _ = await self.txsmtp("--version")
        self.assertEqual((status, out), (0, f"txsmtp {__version__}\n"))
        status, out, _ = await self.txsmtp("queue", "--help")
        self.assertEqual(status, 0)
        self.assertIn("Usage: txsmtp queue [--queue DIR] COMMAND [options]", out)
        for command in ("list", "show", "flush", "hold", "release", "delete"):
            self.assertIn(f"    {command} ", out)
        status, out, _ = await self.txsmtp("queue", "show", "--help")
        self.assertIn("Usage: txsmtp queue show [--queue DIR] [--json] ID", out)

    def test_defaultDirectory(self) -> None:
        for args, expected in (
            (["queue", "list"], "queue"),
            (["queue", "--queue", "/a", "list"], "/a"),
            (["queue", "-q", "/a", "list", "--queue", "/b"], "/b"),
            (["queue", "show", "X", "-q", "/c"], "/c"),
        ):
            config = cli.Options()
            config.parseOptions(args)
            self.assertEqual(config.subOptions.subOptions.directory(), expected, args)


class ConsoleScriptTests(unittest.TestCase):
    """The console script in a subprocess: exit statuses and streams, never a traceback."""

    async def script(self, *args: str, cwd: str | None = None) -> tuple[int | None, str, str]:
        result = await runProcess(sys.executable, ["-m", "txsmtp.cli", *args], cwd=cwd, env=childEnv(), timeout=60)
        err = result.err.decode()
        self.assertNotIn("Traceback", err, result.describe())
        return result.code, result.out.decode(), err

    def test_entryPoint(self) -> None:
        config = configparser.ConfigParser()
        config.read(os.path.join(REPO_ROOT, "setup.cfg"))
        scripts = config["options.entry_points"]["console_scripts"].split("\n")
        self.assertIn("txsmtp = txsmtp.cli:main", [s.strip() for s in scripts])
        self.assertTrue(callable(cli.main))

    async def test_version(self) -> None:
        self.assertEqual(await self.script("--version"), (0, f"txsmtp {__version__}\n", ""))

    async def test_usageErrors(self) -> None:
        for args in ([], ["queue", "frobnicate"], ["queue", "show"]):
            code, out, err = await self.script(*args)
            self.assertEqual((code, out), (2, ""), args)
            self.assertIn("txsmtp: ", err)

    async def test_missingQueue(self) -> None:
        directory = shortTempDir(self)
        code, out, err = await self.script("queue", "list", cwd=directory)
        self.assertEqual((code, out, err), (1, "", "txsmtp: no queue directory at queue (--queue DIR names it)\n"))

    async def test_withServer(self) -> None:
        """The script talks to a server (this test process) over DIR/control.sock."""
        store, first, second = makeStore()
        directory = shortTempDir(self)
        port = await listenControl(store, os.path.join(directory, "control.sock"), reactor)
        self.addCleanup(port.stopListening)
        code, out, _ = await self.script("queue", "list", "--json", "--queue", directory)
        self.assertEqual(code, 0)
        self.assertEqual([json.loads(line)["id"] for line in out.splitlines()], [first, second])
        code, out, _ = await self.script("queue", "hold", first, "--queue", os.path.basename(directory), cwd=os.path.dirname(directory))
        self.assertEqual((code, out), (0, f"{first}: held\n"))
        self.assertEqual(store.messages[first].recipients[0].state, RecipientState.HELD)
        code, out, err = await self.script("queue", "show", "NOSUCHMESSAGE", "--queue", directory)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"txsmtp: no message NOSUCHMESSAGE in the queue {directory}\n")
