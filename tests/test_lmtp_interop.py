"""
LMTP end to end: the real ``twistd -n smtp --lmtp ... --deliver virtual:DIR``
against real LMTP clients, over a UNIX socket and over loopback TCP.

- Postfix's ``smtp-source -L`` (three recipients per message);
- swaks ``--protocol LMTP``;
- txsmtp's own client (``lmtp=True``), with DATA and with BDAT.

Each test builds a ``virtual:`` tree with some mailboxes, leaves others
out (refused at RCPT with 550 5.1.1) and can break one: its ``new/`` is a
symbolic link to a directory on another filesystem, so that the final
rename of the Maildir delivery fails (EXDEV) after the data, and only that
recipient gets 451 4.3.0.  The stored Maildir files are compared byte for
byte: ``Return-Path:``, ``Delivered-To:``, ``Received:`` and then exactly
what the client sent.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial import unittest
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from tests.certs import certificates
from tests.peers import PEERS_REQUIRED, requirePeer
from tests.test_interop import smtpSourceText
from tests.twistd_helpers import (
    STARTUP_TIMEOUT,
    TWISTD,
    RawSMTPClient,
    RunningTwistd,
    Stored,
    _TwistdProcess,
    childEnv,
    parseStored,
    readAll,
    runProcess,
    withTimeout,
)
from txsmtp.client import SMTPRecipientsRefused, TLSPolicy, sendmail
from txsmtp.wire.reply import Reply

DOMAIN = "example.com"
HOSTNAME = "lmtp.test.invalid"
HELO = "client.test.invalid"
SENDER = "sender@example.org"

_LMTP_LISTENING = re.compile(
    r"txsmtp LMTP listening on (?:UNIXAddress\('(?P<path>[^']+)'\)"
    r"|IPv4Address\(type='TCP', host='127\.0\.0\.1', port=(?P<port>\d+)\))"
)
_SMTP_LISTENING = re.compile(r"txsmtp listening on .*?port=(\d+)")


# -- the server ---------------------------------------------------------------------------------


@dataclass
class LMTPTarget:
    """A running ``twistd smtp --lmtp`` and its ``virtual:`` tree."""

    running: RunningTwistd
    vmail: str
    #: the UNIX socket, or None
    socket: str | None
    #: the LMTP port on 127.0.0.1, or None
    port: int | None
    #: the SMTP port on 127.0.0.1 (with smtp=True), or None
    smtpPort: int | None

    def mailbox(self, local: str) -> str:
        return os.path.join(self.vmail, DOMAIN, local)

    def files(self, local: str, sub: str = "new") -> list[str]:
        d = os.path.join(self.mailbox(local), sub)
        if not os.path.isdir(d):
            return []
        return sorted(os.path.join(d, name) for name in os.listdir(d))

    def stored(self, local: str) -> list[bytes]:
        return readAll(self.files(local))


def shortDirectory(testCase: unittest.TestCase) -> str:
    """A new directory with a short path: a UNIX socket path must fit in 108 octets."""
    path = tempfile.mkdtemp(prefix="txlmtp-")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


#: Directories that are often on a filesystem of their own (tmpfs).
XDEV_CANDIDATES = ("/dev/shm", "/run/shm", f"/run/user/{os.getuid()}", "/run")


def otherFilesystem(testCase: Any, near: str, candidates: tuple[str, ...] | None = None) -> str:
    """
    A new empty directory on another filesystem than ``near`` (a rename
    from ``near`` into it fails with EXDEV): in one of ``candidates`` when
    one is writable and on another filesystem (:data:`XDEV_CANDIDATES`
    by default), or else on a small tmpfs
    mounted for the test (as root) and unmounted by its cleanup.

    :raise SkipTest: when there is no such directory and none can be
        mounted.
    :raise AssertionError: in that case under ``TXSMTP_REQUIRE_PEERS=1``.
    """
    here = os.stat(near).st_dev
    for candidate in XDEV_CANDIDATES if candidates is None else candidates:
        if not os.path.isdir(candidate) or not os.access(candidate, os.W_OK | os.X_OK):
            continue
        if os.stat(candidate).st_dev == here:
            continue
        path = tempfile.mkdtemp(prefix="txlmtp-xdev-", dir=candidate)
        testCase.addCleanup(shutil.rmtree, path, True)
        return path
    problem = _mountTmpfs(testCase, here)
    if isinstance(problem, _Mounted):
        return problem.path
    message = f"no writable directory on another filesystem (such as /dev/shm), and {problem}"
    if PEERS_REQUIRED:
        raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
    raise SkipTest(message)


@dataclass
class _Mounted:
    path: str


def _mountTmpfs(testCase: Any, here: int) -> _Mounted | str:
    """
    Mount a 4 MiB tmpfs on a new directory and have the test's cleanup
    unmount it and remove the directory; return it, or why it could not be.
    """
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0:
        return "not root, so no tmpfs can be mounted"
    if mount is None or umount is None:
        return "mount(8) or umount(8) is missing"
    point = tempfile.mkdtemp(prefix="txlmtp-tmpfs-")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m,mode=0700", "txsmtp-test", point],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode != 0:
        os.rmdir(point)
        return f"mount -t tmpfs failed: {result.stderr.decode(errors='replace').strip()}"
    testCase.addCleanup(_unmount, umount, point)
    if os.stat(point).st_dev == here:
        return "the tmpfs mounted on the same device"
    return _Mounted(point)


def _unmount(umount: str, point: str) -> None:
    result = subprocess.run([umount, point], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AssertionError(f"umount {point} failed: {result.stderr.decode(errors='replace').strip()}")
    os.rmdir(point)


async def startLMTP(
    testCase: unittest.TestCase,
    mailboxes: tuple[str, ...],
    broken: tuple[str, ...] = (),
    *,
    unix: bool = True,
    tcp: bool = False,
    smtp: bool = False,
    extra: tuple[str, ...] = (),
) -> LMTPTarget:
    """
    Make ``DIR/example.com/<local>`` for each of ``mailboxes`` (and the
    ``broken`` ones, whose ``new/`` points to another filesystem), then run
    ``twistd -n smtp --lmtp unix:SOCK [--lmtp tcp:0:interface=127.0.0.1]
    [--listen tcp:0:interface=127.0.0.1] --deliver virtual:DIR`` and wait
    (by its log, bounded) until every listener is up.
    """
    cwd = shortDirectory(testCase)
    vmail = os.path.join(cwd, "vmail")
    for local in mailboxes:
        os.makedirs(os.path.join(vmail, DOMAIN, local))
    for local in broken:
        box = os.path.join(vmail, DOMAIN, local)
        for sub in ("tmp", "cur"):
            os.makedirs(os.path.join(box, sub))
        os.symlink(otherFilesystem(testCase, box), os.path.join(box, "new"))
    os.makedirs(vmail, exist_ok=True)
    sock = os.path.join(cwd, "lmtp.sock") if unix else None
    args = [*TWISTD, "-n", "--pidfile=", "--logfile=-", "smtp", "--hostname", HOSTNAME]
    if sock is not None:
        args += ["--lmtp", "unix:" + sock]
    if tcp:
        args += ["--lmtp", "tcp:0:interface=127.0.0.1"]
    if smtp:
        args += ["--listen", "tcp:0:interface=127.0.0.1"]
    args += ["--deliver", "virtual:vmail", *extra]
    process = _TwistdProcess()
    spawn = reactor.spawnProcess  # type: ignore[attr-defined]
    spawn(process, sys.executable, args, env=childEnv(), path=cwd)
    running = RunningTwistd(process, cwd)
    testCase.addCleanup(running.stop)
    pattern = r"(?s)" + r"txsmtp LMTP listening on .*?" * (int(unix) + int(tcp))

    def describe() -> str:
        process.signal("KILL")
        return f"twistd did not start its listeners within {STARTUP_TIMEOUT}s:\n{process.text}"

    await withTimeout(process.waitFor(pattern), STARTUP_TIMEOUT, describe)
    if smtp:
        await running.waitForLog(r"txsmtp listening on .*?port=\d+")
    port = None
    for m in _LMTP_LISTENING.finditer(running.log):
        if m.group("path") is not None:
            testCase.assertEqual(m.group("path"), sock)
        else:
            port = int(m.group("port"))
    smtpPort = None
    m = _SMTP_LISTENING.search(running.log)
    if m is not None:
        smtpPort = int(m.group(1))
    testCase.assertEqual((smtpPort is not None, port is not None), (smtp, tcp), running.log)
    return LMTPTarget(running, vmail, sock, port, smtpPort)


# -- stored files ------------------------------------------------------------------------------


class _Checks(unittest.TestCase):
    timeout = 90

    def assertStoredOnce(
        self, target: LMTPTarget, local: str, body: bytes | None, *, peer: bytes = b"local"
    ) -> Stored:
        """
        ``local``'s mailbox holds exactly one message, for ``local`` alone:
        ``body`` (unless None) after the trace headers.
        """
        self.assertEqual(target.files(local, "tmp"), [])
        [data] = target.stored(local)
        stored = parseStored(data)
        if body is not None:
            self.assertEqual(stored.body, body)
        self.assertEqual(stored.returnPath, SENDER.encode())
        self.assertEqual(stored.deliveredTo, [f"{local}@{DOMAIN}".encode()])
        self.assertEqual((stored.hostname, stored.withKeyword), (HOSTNAME.encode(), b"LMTP"))
        self.assertEqual(stored.peer, peer)
        return stored

    def assertNothingStored(self, target: LMTPTarget, local: str) -> None:
        self.assertEqual(target.files(local) + target.files(local, "tmp"), [])


# -- smtp-source -L -----------------------------------------------------------------------------


_SMTP_SOURCE_HEADERS = re.compile(
    rb"From: <x@example\.com>\r\n"
    rb"To: <y@example\.com>\r\n"
    rb"Date: [^\r\n]+\r\n"
    rb"Message-Id: <(?P<id>[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+@client\.test\.invalid)>\r\n"
    rb"\r\n"
)

#: smtp-source -r 3 -t y@example.com sends RCPT TO 3y@, 2y@ and y@.
SMTP_SOURCE_RECIPIENTS = ("3y", "2y", "y")


class SmtpSourceLMTPTests(_Checks):
    """Postfix's ``smtp-source -L -r 3`` against ``twistd smtp --lmtp unix:SOCK``."""

    async def _smtpSource(self, target: LMTPTarget, *flags: str) -> Any:
        source = requirePeer("smtp-source")
        args = [
            "-L", *flags, "-f", "x@example.com", "-t", "y@example.com", "-M", HELO,
            f"unix:{target.socket}",
        ]  # fmt: skip
        return await runProcess(source, args, timeout=60)

    async def _threeRecipients(self, *flags: str) -> None:
        requirePeer("smtp-source")
        target = await startLMTP(self, SMTP_SOURCE_RECIPIENTS)
        result = await self._smtpSource(
            target, "-r", "3", "-s", "3", "-m", "12", "-l", "2048", *flags
        )
        self.assertEqual((result.code, result.out, result.err), (0, b"", b""), result.describe())
        expectedText = smtpSourceText(2048)
        byMessageId: dict[bytes, set[tuple[bytes, bytes]]] = {}
        for local in SMTP_SOURCE_RECIPIENTS:
            self.assertEqual(target.files(local, "tmp"), [])
            files = target.stored(local)
            self.assertEqual(len(files), 12, local)
            for data in files:
                stored = parseStored(data)
                self.assertEqual(
                    (stored.returnPath, stored.deliveredTo, stored.forAddress),
                    (b"x@example.com", [f"{local}@{DOMAIN}".encode()], None),
                )
                self.assertEqual(
                    (stored.peer, stored.heloName, stored.withKeyword),
                    (b"local", HELO.encode(), b"LMTP"),
                )
                m = _SMTP_SOURCE_HEADERS.match(stored.body)
                self.assertIsNotNone(m, stored.body[:400])
                self.assertEqual(stored.body[m.end() :], expectedText)  # type: ignore[union-attr]
                messageId = m.group("id")  # type: ignore[union-attr]
                byMessageId.setdefault(messageId, set()).add((local.encode(), stored.queueId))
        # 12 messages, each stored once in each of the three mailboxes, the
        # three copies under one queue id.
        self.assertEqual(len(byMessageId), 12)
        for copies in byMessageId.values():
            self.assertEqual(sorted(local for local, _ in copies), [b"2y", b"3y", b"y"])
            self.assertEqual(len({queueId for _, queueId in copies}), 1, copies)

    async def test_three_recipients_per_message(self) -> None:
        """
        ``smtp-source -L -r 3 -s 3 -m 12 -l 2048``, a connection per message:
        every message lands byte-exact in each of the three mailboxes.
        """
        await self._threeRecipients()

    async def test_three_recipients_reusing_connections(self) -> None:
        """The same with ``-d``: three connections, four transactions each."""
        await self._threeRecipients("-d")

    async def test_missing_mailbox(self) -> None:
        """
        No mailbox for ``2y``: 550 5.1.1 at RCPT, and smtp-source (without
        ``-A``) gives up at once (exit 1, naming the refusal) before DATA,
        so nothing is stored for anyone.  (With ``-A`` it would go on, but
        then wait for a reply after the dot for each RCPT *sent*, while
        RFC 2033 §4.2, and txsmtp, give one per RCPT *accepted*: it would
        wait for ever.)  The server goes on serving.
        """
        requirePeer("smtp-source")
        target = await startLMTP(self, ("3y", "y"))
        result = await self._smtpSource(target, "-r", "3", "-m", "1", "-l", "100")
        self.assertEqual(result.code, 1, result.describe())
        self.assertIn(
            b"fatal: recipient rejected: 550 5.1.1 <2y@example.com>: no such mailbox here",
            result.err,
        )
        for local in ("3y", "2y", "y"):
            self.assertNothingStored(target, local)
        # Still serving: one recipient per message now (-r 1 sends y@ alone).
        result = await self._smtpSource(target, "-r", "1", "-m", "2", "-l", "100")
        self.assertEqual((result.code, result.err), (0, b""), result.describe())
        self.assertEqual(len(target.stored("y")), 2)
        self.assertNothingStored(target, "3y")

    async def test_mailbox_failing_after_the_data(self) -> None:
        """
        ``2y``'s mailbox accepts RCPT but cannot store (its ``new/`` is on
        another filesystem): after each dot smtp-source (with ``-A``) reads
        three replies, 250, 451 4.3.0 and 250, warns about the 451 only and
        exits 0; ``3y`` and ``y`` have every message, ``2y`` none and
        nothing is left in its ``tmp/``.
        """
        requirePeer("smtp-source")
        target = await startLMTP(self, ("3y", "y"), broken=("2y",))
        result = await self._smtpSource(target, "-A", "-r", "3", "-d", "-m", "4", "-l", "1024")
        self.assertEqual((result.code, result.out), (0, b""), result.describe())
        # Each line starts with smtp-source's argv[0].
        warnings = [line.split(": ", 1)[1] for line in result.err.decode().splitlines()]
        self.assertEqual(
            warnings,
            [
                "warning: end of data rejected: 451 4.3.0 <2y@example.com>: mailbox "
                "temporarily unavailable (local storage error); try again later"
            ]
            * 4,
            result.describe(),
        )
        expectedText = smtpSourceText(1024)
        for local in ("3y", "y"):
            files = target.stored(local)
            self.assertEqual(len(files), 4)
            for data in files:
                self.assertTrue(parseStored(data).body.endswith(b"\r\n\r\n" + expectedText))
        self.assertNothingStored(target, "2y")
        self.assertIn("Invalid cross-device link", target.running.log)


class OtherFilesystemTests(unittest.TestCase):
    """The second filesystem the storage-failure tests need is found or made, never silently missing."""

    def test_tmpfsMountedAndUnmounted(self) -> None:
        """
        With no candidate directory, a tmpfs is mounted (as root): a rename
        into it fails with EXDEV, and the cleanup unmounts and removes it.
        """
        if os.geteuid() != 0:
            message = "mounting a tmpfs needs root"
            if PEERS_REQUIRED:
                self.fail(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
            raise SkipTest(message)
        near = shortDirectory(self)
        cleanups: list[tuple[Any, tuple[Any, ...]]] = []

        class Recorder:
            def addCleanup(self, f: Any, *args: Any) -> None:
                cleanups.append((f, args))

        path = otherFilesystem(Recorder(), near, candidates=())
        # Should an assertion below fail, unmount all the same.
        self.addCleanup(lambda: [f(*args) for f, args in reversed(cleanups) if os.path.ismount(path)])
        self.assertTrue(os.path.ismount(path))
        self.assertNotEqual(os.stat(path).st_dev, os.stat(near).st_dev)
        with open(os.path.join(near, "f"), "wb") as f:
            f.write(b"x")
        with self.assertRaises(OSError) as cm:
            os.rename(os.path.join(near, "f"), os.path.join(path, "f"))
        self.assertEqual(cm.exception.errno, errno.EXDEV)
        self.assertEqual(len(cleanups), 1)
        for f, args in reversed(cleanups):
            f(*args)
        self.assertFalse(os.path.ismount(path))
        self.assertFalse(os.path.exists(path))

    def test_noneFoundIsNotSilent(self) -> None:
        """Without a second filesystem the test fails under TXSMTP_REQUIRE_PEERS=1, else is skipped."""
        near = shortDirectory(self)
        problems = []

        class NoMount:
            def addCleanup(self, f: Any, *args: Any) -> None:
                f(*args)

        import tests.test_lmtp_interop as module

        self.patch(module, "_mountTmpfs", lambda testCase, here: problems.append(here) or "mounting was refused")
        expected = AssertionError if PEERS_REQUIRED else SkipTest
        with self.assertRaises(expected) as cm:
            otherFilesystem(NoMount(), near, candidates=(near,))
        self.assertIn("mounting was refused", str(cm.exception))
        self.assertEqual(problems, [os.stat(near).st_dev])


# -- swaks --protocol LMTP ----------------------------------------------------------------------


SWAKS_BODY = "first line\\n.dot line\\n..two dots\\nlast line"
#: What swaks sends for SWAKS_BODY after its headers: "\n" made CRLF, the
#: dots unstuffed again by the server, and two empty lines of its own.
SWAKS_TEXT = b"first line\r\n.dot line\r\n..two dots\r\nlast line\r\n\r\n\r\n"


def transcriptLines(out: bytes) -> list[str]:
    """swaks's protocol lines: ' -> ' sent, '<-  ' received, '<** ' received error."""
    return [
        line
        for line in out.decode("utf-8", "replace").splitlines()
        if line.startswith((" -> ", "<-  ", "<** "))
    ]


class SwaksLMTPTests(_Checks):
    """swaks ``--protocol LMTP`` against ``twistd smtp --lmtp``."""

    recipients = ["alice", "nobody", "carol", "bob"]

    async def _swaks(self, connect: list[str], *extra: str) -> Any:
        swaks = requirePeer("swaks")
        to = ",".join(f"{local}@{DOMAIN}" for local in self.recipients)
        args = [
            *connect, "--protocol", "LMTP", "--helo", HELO, "--from", SENDER, "--to", to,
            "--body", SWAKS_BODY, "--timeout", "20", *extra,
        ]  # fmt: skip
        return await runProcess(swaks, args, timeout=40)

    def assertMixedOutcome(self, target: LMTPTarget, result: Any, peer: bytes) -> None:
        """
        alice and bob stored, nobody refused at RCPT, carol refused after the
        data: in the transcript, exactly three replies follow the dot, one
        per accepted recipient, in RCPT order.
        """
        lines = transcriptLines(result.out)
        self.assertIn("<** 550 5.1.1 <nobody@example.com>: no such mailbox here", lines)
        dot = lines.index(" -> .")
        after = lines[dot + 1 :]
        self.assertEqual(len(after), 5, after)
        self.assertRegex(
            after[0], r"^<-  250 2\.0\.0 <alice@example\.com> OK: delivered as [0-9A-F]+$"
        )
        self.assertEqual(
            after[1],
            "<** 451 4.3.0 <carol@example.com>: mailbox temporarily unavailable"
            " (local storage error); try again later",
        )
        self.assertRegex(
            after[2], r"^<-  250 2\.0\.0 <bob@example\.com> OK: delivered as [0-9A-F]+$"
        )
        self.assertEqual(after[3:], [" -> QUIT", f"<-  221 2.0.0 {HOSTNAME} Bye"])
        # swaks exits 0 when any recipient got the message after the data.
        self.assertEqual(result.code, 0, result.describe())
        queueIds = set()
        for local, reply in (("alice", after[0]), ("bob", after[2])):
            stored = self.assertStoredOnce(target, local, None, peer=peer)
            self.assertEqual(stored.heloName, HELO.encode())
            head, _, text = stored.body.partition(b"\r\n\r\n")
            self.assertEqual(text, SWAKS_TEXT)
            self.assertIn(b"\r\nTo: alice@example.com,nobody@example.com,", b"\r\n" + head)
            self.assertTrue(reply.endswith(f" OK: delivered as {stored.queueId.decode()}"), reply)
            queueIds.add(stored.queueId)
        self.assertEqual(len(queueIds), 1)
        self.assertNothingStored(target, "carol")
        self.assertFalse(os.path.exists(target.mailbox("nobody")))

    async def test_swaks_over_socket(self) -> None:
        """``swaks --socket SOCK --protocol LMTP`` with four recipients: two stored, two refused."""
        requirePeer("swaks")
        target = await startLMTP(self, ("alice", "bob"), broken=("carol",))
        result = await self._swaks(["--socket", target.socket])  # type: ignore[list-item]
        self.assertMixedOutcome(target, result, b"local")

    async def test_swaks_tcp_pipelined(self) -> None:
        """
        The same over ``--lmtp tcp:0:interface=127.0.0.1`` with ``--pipeline``:
        MAIL, the RCPTs and DATA go in one group, and the replies after the
        dot are the same.
        """
        requirePeer("swaks")
        target = await startLMTP(self, ("alice", "bob"), broken=("carol",), unix=False, tcp=True)
        result = await self._swaks(["--server", f"127.0.0.1:{target.port}"], "--pipeline")
        self.assertMixedOutcome(target, result, b"[127.0.0.1]")
        lines = transcriptLines(result.out)
        i = lines.index(" -> MAIL FROM:<sender@example.org>")
        self.assertEqual(
            [line[:12] for line in lines[i : i + 6]],
            [
                " -> MAIL FRO",
                " -> RCPT TO:",
                " -> RCPT TO:",
                " -> RCPT TO:",
                " -> RCPT TO:",
                " -> DATA",
            ],
        )

    async def test_swaks_every_recipient_fails_after_data(self) -> None:
        """Only carol, who cannot store: one 451 after the dot, and swaks exits 26."""
        requirePeer("swaks")
        target = await startLMTP(self, (), broken=("carol",))
        self.recipients = ["carol"]
        result = await self._swaks(["--socket", target.socket])  # type: ignore[list-item]
        self.assertEqual(result.code, 26, result.describe())
        lines = transcriptLines(result.out)
        dot = lines.index(" -> .")
        self.assertEqual(
            lines[dot + 1],
            "<** 451 4.3.0 <carol@example.com>: mailbox temporarily unavailable"
            " (local storage error); try again later",
        )
        self.assertEqual(lines[dot + 2], " -> QUIT")
        self.assertNothingStored(target, "carol")


# -- txsmtp's client --------------------------------------------------------------------------


class _RecordingProtocol(ProtocolWrapper):
    """Records what the client writes."""

    def write(self, data: bytes) -> None:
        self.factory.sent.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        self.factory.sent.extend(data)
        super().writeSequence(data)


class _RecordingFactory(WrappingFactory):
    protocol = _RecordingProtocol

    def __init__(self, wrapped: Any, sent: list[bytes]) -> None:
        super().__init__(wrapped)
        self.sent = sent


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """A client endpoint that records every octet its connections send."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.sent: list[bytes] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d = self.endpoint.connect(_RecordingFactory(factory, self.sent))
        return d.addCallback(lambda wrapper: wrapper.wrappedProtocol)

    @property
    def wire(self) -> bytes:
        return b"".join(self.sent)


def address(local: str) -> str:
    return f"{local}@{DOMAIN}"


class TxsmtpClientLMTPTests(_Checks):
    """txsmtp.client.sendmail(..., lmtp=True) against ``twistd smtp --lmtp``."""

    recipients = [address(r) for r in ("alice", "nobody", "carol", "bob")]
    message = (
        b"Subject: lmtp\r\nFrom: <sender@example.org>\r\n\r\n"
        b".leading dot\r\n.\r\n..two dots\r\nlast line\r\n"
    )

    async def _send(
        self, target: LMTPTarget, recipients: list[str], **kw: Any
    ) -> tuple[Any, bytes]:
        endpoint = RecordingEndpoint(UNIXClientEndpoint(reactor, target.socket, timeout=10))
        d = sendmail(
            "localhost",
            SENDER,
            recipients,
            self.message,
            lmtp=True,
            endpoint=endpoint,
            tls=TLSPolicy.NONE,
            heloName=HELO,
            **kw,
        )
        result = await withTimeout(
            d, 30, lambda: f"sendmail did not finish: {endpoint.wire[-500:]!r}"
        )
        return result, endpoint.wire

    def assertMixedResult(self, target: LMTPTarget, result: Any) -> None:
        """Each recipient, in the order given, with the reply that decided its fate."""
        self.assertEqual(list(result.recipients), self.recipients)
        replies = result.recipients
        alice, bob = (
            self.assertStoredOnce(target, local, self.message) for local in ("alice", "bob")
        )
        self.assertEqual(alice.queueId, bob.queueId)
        self.assertEqual(
            replies[address("alice")],
            Reply(
                250, (f"<alice@example.com> OK: delivered as {alice.queueId.decode()}",), "2.0.0"
            ),
        )
        self.assertEqual(
            replies[address("bob")],
            Reply(250, (f"<bob@example.com> OK: delivered as {bob.queueId.decode()}",), "2.0.0"),
        )
        self.assertEqual(
            replies[address("nobody")],
            Reply(550, ("<nobody@example.com>: no such mailbox here",), "5.1.1"),
        )
        self.assertEqual(
            replies[address("carol")],
            Reply(
                451,
                (
                    "<carol@example.com>: mailbox temporarily unavailable"
                    " (local storage error); try again later",
                ),
                "4.3.0",
            ),
        )
        self.assertEqual(result.reply, replies[address("alice")])
        self.assertEqual(result.accepted, [address("alice"), address("bob")])
        self.assertEqual(list(result.refused), [address("nobody"), address("carol")])
        self.assertNothingStored(target, "carol")

    async def test_mixed_with_data(self) -> None:
        """
        ``chunking=False``: DATA, the message dot-stuffed on the wire, stored
        unstuffed (byte-exact); one result per recipient.
        """
        target = await startLMTP(self, ("alice", "bob"), broken=("carol",))
        result, wire = await self._send(target, self.recipients, chunking=False)
        self.assertIn(b"\r\nDATA\r\n", wire)
        self.assertNotIn(b"BDAT", wire)
        self.assertIn(b"\r\n\r\n..leading dot\r\n..\r\n...two dots\r\nlast line\r\n.\r\n", wire)
        self.assertTrue(wire.startswith(b"LHLO " + HELO.encode() + b"\r\n"), wire[:100])
        self.assertMixedResult(target, result)

    async def test_mixed_with_bdat(self) -> None:
        """
        The default: the server offers CHUNKING and PIPELINING, so the client
        sends ``BDAT n LAST`` with the message as it is (no dot-stuffing);
        the same results and files.
        """
        target = await startLMTP(self, ("alice", "bob"), broken=("carol",))
        result, wire = await self._send(target, self.recipients)
        self.assertIn(b"BDAT %d LAST\r\n" % len(self.message) + self.message, wire)
        self.assertNotIn(b"\r\nDATA\r\n", wire)
        self.assertMixedResult(target, result)

    async def test_dot_lines_stored_as_is(self) -> None:
        """A message of dot lines to one mailbox, by DATA then by BDAT: stored as sent each time."""
        target = await startLMTP(self, ("alice",))
        self.message = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n. \r\n.\r\n"
        for chunking in (False, True):
            result, wire = await self._send(target, [address("alice")], chunking=chunking)
            self.assertEqual(result.accepted, [address("alice")])
            stuffed = b"\r\n..\r\n...\r\n..x\r\n.. \r\n..\r\n.\r\n"
            if chunking:
                self.assertNotIn(stuffed, wire)
            else:
                self.assertIn(stuffed, wire)
        files = target.stored("alice")
        self.assertEqual([parseStored(data).body for data in files], [self.message] * 2)

    async def test_every_recipient_refused(self) -> None:
        """nobody at RCPT, carol after the data: SMTPRecipientsRefused with both replies."""
        target = await startLMTP(self, (), broken=("carol",))
        with self.assertRaises(SMTPRecipientsRefused) as caught:
            await self._send(target, [address("nobody"), address("carol")])
        self.assertEqual(
            {r: reply.code for r, reply in caught.exception.recipients.items()},
            {address("nobody"): 550, address("carol"): 451},
        )
        self.assertNothingStored(target, "carol")

    async def test_tcp_beside_smtp(self) -> None:
        """
        ``--listen`` and ``--lmtp tcp:...`` in one process: one delivery, one
        sequence of queue ids; SMTP answers once, LMTP once per recipient.
        """
        target = await startLMTP(self, ("alice", "bob"), unix=False, tcp=True, smtp=True)
        options = dict(tls=TLSPolicy.NONE, heloName=HELO)
        rcpts = [address("alice"), address("bob")]
        viaLMTP = await sendmail(
            "127.0.0.1", SENDER, rcpts, self.message, port=target.port, lmtp=True, **options
        )
        viaSMTP = await sendmail(
            "127.0.0.1", SENDER, rcpts, self.message, port=target.smtpPort, **options
        )
        self.assertEqual(
            [reply.text.split(" OK")[0] for reply in viaLMTP.recipients.values()],
            ["<alice@example.com>", "<bob@example.com>"],
        )
        self.assertEqual(len({reply.text for reply in viaSMTP.recipients.values()}), 1)
        self.assertTrue(viaSMTP.reply.text.startswith("OK: queued as "), viaSMTP.reply)
        lmtpId = viaLMTP.reply.text.rsplit(" ", 1)[1]
        smtpId = viaSMTP.reply.text.rsplit(" ", 1)[1]
        self.assertEqual(lmtpId[:12], smtpId[:12], "one queue id prefix per process")
        self.assertNotEqual(lmtpId, smtpId)
        for local in ("alice", "bob"):
            files = [parseStored(data) for data in target.stored(local)]
            self.assertEqual(sorted(s.withKeyword for s in files), [b"ESMTP", b"LMTP"])
            for stored in files:
                self.assertEqual(stored.body, self.message)
                self.assertEqual(stored.peer, b"[127.0.0.1]")

    async def test_starttls_over_lmtp(self) -> None:
        """
        ``--tls-cert`` applies to the LMTP listener too: the client upgrades
        with STARTTLS and verifies the certificate; ``Received:`` says
        ``with LMTPS``.
        """
        from twisted.internet import ssl

        c = certificates()
        target = await startLMTP(
            self,
            ("alice",),
            unix=False,
            tcp=True,
            extra=("--tls-cert", c.chain, "--tls-key", c.key),
        )
        with open(c.ca) as f:
            trustRoot = ssl.Certificate.loadPEM(f.read())
        result = await sendmail(
            "127.0.0.1", SENDER, [address("alice")], self.message, port=target.port, lmtp=True,
            tls=TLSPolicy.REQUIRE, trustRoot=trustRoot, heloName=HELO,
        )  # fmt: skip
        self.assertEqual(result.accepted, [address("alice")])
        [data] = target.stored("alice")
        stored = parseStored(data)
        self.assertEqual((stored.withKeyword, stored.body), (b"LMTPS", self.message))


# -- twistd smtp --lmtp: the process ------------------------------------------------------------


class TwistdLMTPTests(_Checks):
    """What ``--lmtp`` changes in the process itself."""

    async def test_lmtp_only_starts_no_smtp(self) -> None:
        """
        ``--lmtp unix:SOCK`` alone: the log names the socket, no SMTP
        listener is started; SIGTERM stops twistd cleanly and removes the
        socket.
        """
        target = await startLMTP(self, ("alice",))
        log = target.running.log
        self.assertEqual(len(_LMTP_LISTENING.findall(log)), 1, log)
        self.assertNotIn("txsmtp listening on", log)
        self.assertNotIn("8025", log)
        self.assertTrue(os.path.exists(target.socket))  # type: ignore[arg-type]
        # A session first: the reactor runs (and twistd handles SIGTERM) by then.
        client = await connectProtocol(
            UNIXClientEndpoint(reactor, target.socket, timeout=10), RawSMTPClient()
        )
        self.addCleanup(client.close)
        [greeting] = await client.waitReplies(1)
        self.assertEqual(greeting.code, 220)
        self.assertTrue(greeting.text.startswith(f"{HOSTNAME} LMTP "), greeting.text)
        [bye] = await client.command(b"QUIT")
        self.assertEqual(bye.code, 221)
        await client.whenLost()
        ended = await target.running.stop()
        self.assertIn(getattr(ended, "exitCode", 0), (0, None), target.running.log)
        self.assertIn("Server Shut Down", target.running.log)
        self.assertFalse(os.path.exists(target.socket))  # type: ignore[arg-type]

    async def test_non_loopback_warning(self) -> None:
        """An explicit non-loopback interface starts, with a warning in the log."""
        cwd = shortDirectory(self)
        process = _TwistdProcess()
        args = [
            *TWISTD, "-n", "--pidfile=", "--logfile=-", "smtp", "--deliver", "discard",
            "--lmtp", "tcp:0:interface=0.0.0.0",
        ]  # fmt: skip
        spawn = reactor.spawnProcess  # type: ignore[attr-defined]
        spawn(process, sys.executable, args, env=childEnv(), path=cwd)
        running = RunningTwistd(process, cwd)
        self.addCleanup(running.stop)
        m = await running.waitForLog(r"\[txsmtp\.tap#warn\] LMTP on (.*)\n")
        self.assertIn("host='0.0.0.0'", m.group(1))
        self.assertIn("requires no AUTH", m.group(1))
        self.assertIn("any mailbox", m.group(1))


# -- docs/lmtp.rst --------------------------------------------------------------------------------


class DocumentationExampleTests(unittest.TestCase):
    """The example of docs/lmtp.rst runs, and answers as the text says."""

    def test_quota_store(self) -> None:
        from tests.test_docs import rstBlocks
        from txsmtp.testing import ServerHarness

        [block] = rstBlocks("lmtp.rst")
        namespace: dict[str, Any] = {"__name__": "store"}
        exec(block, namespace)
        store, factory = namespace["store"], namespace["factory"]
        self.assertEqual(factory.hostname, "store.example.com")
        store.quota = 1000
        store.mailboxes["bob@example.com"].append(b"x" * 990)
        message = b"Subject: quota\r\n\r\n.dot\r\n"

        def transaction(h: ServerHarness) -> list[Reply]:
            return h.send(
                b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\n"
                b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
                + message.replace(b"\r\n.", b"\r\n..")
                + b".\r\n"
            )

        h = ServerHarness(factory=factory)
        self.assertEqual(h.command(b"LHLO client.example").code, 250)
        replies = transaction(h)
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies],
            [(250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"), (354, None),
             (250, "2.0.0"), (452, "4.2.2")],
        )  # fmt: skip
        [stored] = store.mailboxes["alice@example.com"]
        self.assertTrue(stored.endswith(b"\r\n" + message), stored)
        self.assertEqual(store.mailboxes["bob@example.com"], [b"x" * 990])

        # Over SMTP the same store refuses the message for everybody.
        from txsmtp.server import SMTPFactory

        h = ServerHarness(factory=SMTPFactory(store, "store.example.com"))
        h.command(b"EHLO client.example")
        replies = transaction(h)
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (452, "4.2.2"))
        self.assertEqual(len(store.mailboxes["alice@example.com"]), 1)
