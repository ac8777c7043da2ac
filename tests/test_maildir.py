"""
Maildir deliveries: :class:`~txsmtp.delivery.MaildirDelivery`,
:class:`~txsmtp.delivery.VirtualMaildirDelivery` and
:func:`~txsmtp.deliveryplugins.makeDelivery`.

Storage faults are injected by replacing the ``os`` module that
``txsmtp.maildir`` uses (tests run as root, who ignores permission bits, so
a read-only directory would prove nothing).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Any

from twisted.trial import unittest
from zope.interface.verify import verifyObject

import txsmtp.delivery
import txsmtp.maildir
from tests.twistd_helpers import maildirFiles, parseStored, readAll
from txsmtp.delivery import DiscardDelivery, Maildir, MaildirDelivery, VirtualMaildirDelivery
from txsmtp.deliveryplugins import deliveryFactories, makeDelivery
from txsmtp.envelope import ConnectionInfo, Envelope, Recipient
from txsmtp.errors import SMTPError
from txsmtp.interfaces import IDeliveryFactory, IMessageReceiver
from txsmtp.testing import ServerHarness
from txsmtp.wire.address import Address, parsePath

_NAME = re.compile(r"\d+\.M\d+P\d+Q\d+R[0-9a-f]{8}\.[^/:]+")


def address(text: str) -> Address:
    parsed = parsePath(b"<" + text.encode("utf-8") + b">", utf8=True, postmasterOK=True)
    assert parsed is not None
    return parsed


def envelope(sender: str | None, recipients: list[str]) -> Envelope:
    env = Envelope(address(sender) if sender else None, queueId="TESTID")
    env.recipients.extend(Recipient(address(r)) for r in recipients)
    return env


def snapshot(top: str) -> list[tuple[str, bool]]:
    """Every path under ``top`` (relative), with whether it is a directory."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            out.append((os.path.relpath(os.path.join(dirpath, name), top), True))
        for name in filenames:
            out.append((os.path.relpath(os.path.join(dirpath, name), top), False))
    return sorted(out)


# -- fault injection ----------------------------------------------------------------


class FaultyOS:
    """Stands in for the ``os`` module in txsmtp.maildir; overrides some functions."""

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(os, name)


def enospc(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FailingFile:
    """A file object whose ``write`` (or ``flush``) fails once ``failWrite(n, size)`` says so."""

    def __init__(self, real: Any, failWrite: Any = None, failFlush: bool = False) -> None:
        self._real = real
        self._failWrite = failWrite
        self._failFlush = failFlush
        self.writes = 0
        self.written = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        self.written += len(data)
        if self._failWrite is not None and self._failWrite(self.writes, self.written):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._real.write(data)

    def flush(self) -> None:
        if self._failFlush:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def failingFdopen(**kwargs: Any) -> Any:
    def fdopen(*args: Any, **kw: Any) -> FailingFile:
        return FailingFile(os.fdopen(*args, **kw), **kwargs)

    return fdopen


# -- direct use of the receivers ------------------------------------------------------


class MaildirReceiverTests(unittest.TestCase):
    """
    MaildirDelivery's receivers used directly: write, finish, abort.  These
    tests and the server tests below commit on the calling thread
    (``threads=0``), so that finish() and the harness answer at once;
    tests/test_maildir_durable.py covers the thread pool.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.delivery = MaildirDelivery(self.path, threads=0)
        self.session = self.delivery.openSession(ConnectionInfo())

    def test_creates_maildir(self) -> None:
        """The Maildir and its tmp, new and cur are created, private (0700); existing ones are reused."""
        for sub in ("tmp", "new", "cur"):
            mode = os.stat(os.path.join(self.path, sub)).st_mode
            self.assertTrue(stat.S_ISDIR(mode))
            self.assertEqual(stat.S_IMODE(mode), 0o700)
        self.assertEqual(MaildirDelivery(self.path).maildir.path, self.path)
        self.assertEqual(Maildir(self.path + "/", create=False).path, self.path)

    def test_finish_moves_into_new(self) -> None:
        """
        The message is written in tmp/ and appears in new/ only after
        finish(): Return-Path, one Delivered-To per recipient, then the chunks.
        """
        receiver = self.session.openMessage(
            envelope("alice@example.com", ["bob@example.org", "carol@example.net"])
        )
        self.assertTrue(verifyObject(IMessageReceiver, receiver))
        self.assertEqual(len(maildirFiles(self.path, "tmp")), 1)
        for chunk in (b"Received: by test\r\n", b"Subject: hi\r\n\r\n", b"body ", b"in pieces\r\n"):
            receiver.write(chunk)
        self.assertEqual(maildirFiles(self.path), [])
        self.assertIsNone(receiver.finish())
        self.assertEqual(maildirFiles(self.path, "tmp"), [])
        [path] = maildirFiles(self.path)
        self.assertRegex(os.path.basename(path), _NAME)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        [data] = readAll([path])
        self.assertEqual(
            data,
            b"Return-Path: <alice@example.com>\r\nDelivered-To: bob@example.org\r\nDelivered-To: carol@example.net\r\n"
            b"Received: by test\r\nSubject: hi\r\n\r\nbody in pieces\r\n",
        )

    def test_null_sender_and_utf8(self) -> None:
        """The null sender is ``Return-Path: <>``; UTF-8 addresses are stored as UTF-8."""
        receiver = self.session.openMessage(envelope(None, ["j\u00f6rg@b\u00fccher.example"]))
        receiver.write(b"x\r\n")
        receiver.finish()
        [data] = readAll(maildirFiles(self.path))
        self.assertEqual(
            data, "Return-Path: <>\r\nDelivered-To: j\u00f6rg@b\u00fccher.example\r\nx\r\n".encode()
        )

    def test_abort_removes_tmp(self) -> None:
        """abort() removes the file from tmp/ and puts nothing in new/."""
        receiver = self.session.openMessage(envelope("a@example.com", ["b@example.com"]))
        receiver.write(b"Subject: doomed\r\n\r\n" + b"x" * 300_000)
        self.assertEqual(len(maildirFiles(self.path, "tmp")), 1)
        receiver.abort("test")
        self.assertEqual(maildirFiles(self.path, "tmp"), [])
        self.assertEqual(maildirFiles(self.path), [])

    def test_unique_names(self) -> None:
        """Many messages in the same instant get distinct Maildir names, none lost."""
        receivers = [
            self.session.openMessage(envelope("a@example.com", ["b@example.com"]))
            for _ in range(200)
        ]
        for i, receiver in enumerate(receivers):
            receiver.write(b"%d\r\n" % i)
        for receiver in receivers:
            receiver.finish()
        paths = maildirFiles(self.path)
        self.assertEqual(len(paths), 200)
        for path in paths:
            self.assertRegex(os.path.basename(path), _NAME)
        bodies = sorted(int(data.rsplit(b"\r\n", 2)[-2]) for data in readAll(paths))
        self.assertEqual(bodies, list(range(200)))

    def test_sync_fsyncs_file_and_directory(self) -> None:
        """With sync (the default) the file and new/ are fsync'ed before finish() returns."""
        synced = []

        def fsync(fd: int) -> None:
            synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
            os.fsync(fd)

        self.patch(txsmtp.maildir, "os", FaultyOS(fsync=fsync))
        receiver = self.session.openMessage(envelope("a@example.com", ["b@example.com"]))
        receiver.write(b"x\r\n")
        receiver.finish()
        self.assertEqual(sorted(synced), ["dir", "file"])

    def test_no_sync(self) -> None:
        """sync=False never calls fsync."""
        self.patch(txsmtp.maildir, "os", FaultyOS(fsync=enospc))
        session = MaildirDelivery(self.path, sync=False, threads=0).openSession(ConnectionInfo())
        receiver = session.openMessage(envelope("a@example.com", ["b@example.com"]))
        receiver.write(b"x\r\n")
        receiver.finish()
        self.assertEqual(len(maildirFiles(self.path)), 1)


# -- through the server -----------------------------------------------------------------------

_MESSAGE = b"Subject: test\r\n\r\nline one\r\n..dot line\r\n\r\nlast line\r\n"
_STORED_MESSAGE = b"Subject: test\r\n\r\nline one\r\n.dot line\r\n\r\nlast line\r\n"


class MaildirServerTests(unittest.TestCase):
    """MaildirDelivery behind a server (ServerHarness: no sockets, no waiting)."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.harness = ServerHarness(MaildirDelivery(self.path, threads=0))

    def assertNothingStored(self) -> None:
        self.assertEqual(maildirFiles(self.path, "tmp"), [])
        self.assertEqual(maildirFiles(self.path), [])

    def assertStillWorks(self, stored: int = 0) -> None:
        """Another transaction on the same connection is stored normally."""
        replies = self.harness.sendMessage(
            b"again@example.com", [b"rcpt@example.com"], b"Subject: again\r\n\r\nok\r\n"
        )
        self.assertEqual(replies[-1].code, 250, [str(r) for r in replies])
        self.assertEqual(maildirFiles(self.path, "tmp"), [])
        paths = maildirFiles(self.path)
        self.assertEqual(len(paths), stored + 1)
        bodies = [parseStored(data).body for data in readAll(paths)]
        self.assertIn(b"Subject: again\r\n\r\nok\r\n", bodies)

    def test_bdatStoredByteExact(self) -> None:
        """
        BDAT (RFC 3030): the octets go to the Maildir exactly as sent, over
        several chunks; lines starting with a dot stay as they are (there is
        no dot-stuffing to undo).
        """
        h = self.harness
        message = b"Subject: chunks\r\n\r\n.one dot\r\n..two dots\r\n.\r\nend\r\n"
        first, second = message[:25], message[25:]
        replies = h.send(
            b"EHLO client.example\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\n"
            + b"BDAT %d\r\n" % len(first) + first
        )
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250])
        self.assertEqual(len(maildirFiles(self.path, "tmp")), 1)
        self.assertEqual(maildirFiles(self.path), [])
        [final] = h.send(b"BDAT %d LAST\r\n" % len(second) + second)
        self.assertEqual((final.code, final.enhanced), (250, "2.0.0"))
        [data] = readAll(maildirFiles(self.path))
        stored = parseStored(data)
        self.assertEqual(stored.body, message)
        self.assertEqual(maildirFiles(self.path, "tmp"), [])

    def test_stored_after_final_dot_only(self) -> None:
        """
        The file is in tmp/ while the message arrives and in new/ once the
        final dot is answered 250: trace headers, then the message unstuffed.
        """
        h = self.harness
        replies = h.send(
            b"EHLO client.example\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        )
        self.assertEqual([r.code for r in replies], [250, 250, 250, 354])
        h.send(_MESSAGE[:20])
        self.assertEqual(len(maildirFiles(self.path, "tmp")), 1)
        self.assertEqual(maildirFiles(self.path), [])
        [final] = h.send(_MESSAGE[20:] + b".\r\n")
        self.assertEqual((final.code, final.enhanced), (250, "2.0.0"))
        self.assertEqual(maildirFiles(self.path, "tmp"), [])
        [data] = readAll(maildirFiles(self.path))
        stored = parseStored(data)
        self.assertEqual(stored.returnPath, b"alice@example.com")
        self.assertEqual(stored.deliveredTo, [b"bob@example.org"])
        self.assertEqual(stored.forAddress, b"bob@example.org")
        self.assertEqual(
            (stored.heloName, stored.peer, stored.hostname),
            (b"client.example", b"[192.0.2.7]", b"test.invalid"),
        )
        self.assertIn(stored.queueId.decode(), final.text)
        self.assertEqual(stored.body, _STORED_MESSAGE)

    def test_several_recipients_one_copy(self) -> None:
        """A catch-all Maildir gets one copy with one Delivered-To per recipient."""
        replies = self.harness.sendMessage(
            b"a@example.com", [b"b@example.com", b"c@example.org", b"Postmaster"], _MESSAGE
        )
        self.assertEqual(replies[-1].code, 250)
        [data] = readAll(maildirFiles(self.path))
        stored = parseStored(data)
        self.assertEqual(stored.deliveredTo, [b"b@example.com", b"c@example.org", b"Postmaster"])
        self.assertIsNone(stored.forAddress)

    def test_large_message_in_chunks(self) -> None:
        """A 1 MiB message fed in odd-sized chunks is stored byte for byte."""
        h = self.harness
        h.send(
            b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
        )
        lines = [
            b".%d leading dot" % i if i % 7 == 0 else b"line %d " % i + b"x" * (i % 90)
            for i in range(20000)
        ]
        original = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
        wire = original.replace(b"\r\n.", b"\r\n..")
        for i in range(0, len(wire), 4093):
            h.send(wire[i : i + 4093])
        [final] = h.send(b".\r\n")
        self.assertEqual(final.code, 250)
        [data] = readAll(maildirFiles(self.path))
        self.assertEqual(parseStored(data).body, original)

    def test_client_vanishes(self) -> None:
        """A client that disconnects mid-message leaves nothing in tmp/ or new/."""
        h = self.harness
        h.send(
            b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
        )
        h.send(b"Subject: half\r\n\r\n" + b"x" * 10000)
        self.assertEqual(len(maildirFiles(self.path, "tmp")), 1)
        h.disconnect()
        self.assertNothingStored()

    def test_too_big_refused_nothing_left(self) -> None:
        """A message over the size limit gets 552 5.3.4 and leaves no file behind."""
        path = os.path.abspath(self.mktemp())
        h = ServerHarness(MaildirDelivery(path, threads=0), maxMessageSize=1000)
        replies = h.sendMessage(
            b"a@example.com", [b"b@example.com"], b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n"
        )
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (552, "5.3.4"))
        self.assertEqual(maildirFiles(path, "tmp") + maildirFiles(path), [])

    def test_bare_lf_refused_nothing_left(self) -> None:
        """A bare LF gets 550 5.6.0 and leaves no file behind; the session goes on."""
        replies = self.harness.sendMessage(
            b"a@example.com", [b"b@example.com"], b"Subject: lf\r\n\r\nbare\nlf\r\n"
        )
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (550, "5.6.0"))
        self.assertNothingStored()
        self.assertStillWorks()

    # storage faults: 451 4.3.0, nothing left behind, the server goes on --------------------

    def assertStorageFault(self, fault: FaultyOS, atData: bool = False) -> None:
        patch = self.patch(txsmtp.maildir, "os", fault)
        replies = self.harness.sendMessage(
            b"a@example.com", [b"b@example.com"], _MESSAGE + b"x" * 50_000 + b"\r\n"
        )
        patch.restore()
        if atData:
            # The file could not even be created: DATA itself is refused.
            self.assertEqual(
                [r.code for r in replies[:4]], [250, 250, 250, 451], [str(r) for r in replies]
            )
        final = replies[-1] if not atData else replies[3]
        self.assertEqual((final.code, final.enhanced), (451, "4.3.0"), [str(r) for r in replies])
        self.assertNothingStored()
        self.assertStillWorks()

    def test_create_fails(self) -> None:
        """tmp/ file creation fails (ENOSPC): DATA is answered 451 4.3.0."""
        self.assertStorageFault(FaultyOS(open=enospc), atData=True)

    def test_write_fails_at_once(self) -> None:
        """The first write after the trace headers fails (ENOSPC): 451 after the final dot."""
        self.assertStorageFault(FaultyOS(fdopen=failingFdopen(failWrite=lambda n, size: n >= 2)))

    def test_write_fails_midway(self) -> None:
        """A write fails once 20 kB are written (ENOSPC): 451 after the final dot."""
        h = self.harness
        patch = self.patch(
            txsmtp.maildir,
            "os",
            FaultyOS(fdopen=failingFdopen(failWrite=lambda n, size: size > 20_000)),
        )
        h.send(
            b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
        )
        for _ in range(10):
            self.assertEqual(h.send(b"y" * 4998 + b"\r\n"), [])
        [final] = h.send(b".\r\n")
        patch.restore()
        self.assertEqual((final.code, final.enhanced), (451, "4.3.0"))
        self.assertNothingStored()
        self.assertStillWorks()

    def test_flush_fails(self) -> None:
        """Flushing the file at the end fails (ENOSPC): 451."""
        self.assertStorageFault(FaultyOS(fdopen=failingFdopen(failFlush=True)))

    def test_file_fsync_fails(self) -> None:
        """fsync of the message file fails (EIO): 451."""

        def fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.assertStorageFault(FaultyOS(fsync=fsync))

    def test_rename_fails(self) -> None:
        """Moving the file from tmp/ to new/ fails: 451."""
        self.assertStorageFault(FaultyOS(rename=enospc))

    def test_directory_fsync_fails(self) -> None:
        """
        fsync of new/ fails (EIO) after the file was moved there: the reply
        is 451, so the message must not stay in new/ (the client will send
        it again: it would be delivered twice).
        """

        def fsync(fd: int) -> None:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.fsync(fd)

        self.assertStorageFault(FaultyOS(fsync=fsync))


# -- virtual mailboxes ------------------------------------------------------------------------


class VirtualMaildirTests(unittest.TestCase):
    """VirtualMaildirDelivery: DIR/<domain>/<local part>/, unknown recipients refused at RCPT."""

    def setUp(self) -> None:
        self.top = os.path.abspath(self.mktemp())
        self.root = os.path.join(self.top, "vmail")
        for mailbox in ("example.com/alice", "example.com/bob", "example.org/carol"):
            os.makedirs(os.path.join(self.root, mailbox))
        os.makedirs(os.path.join(self.top, "outside"))
        self.delivery = VirtualMaildirDelivery(self.root, threads=0)
        self.harness = ServerHarness(self.delivery)
        self.harness.command(b"EHLO client.example")

    def mailbox(self, name: str) -> str:
        return os.path.join(self.root, name)

    def rcpt(self, path: bytes) -> Any:
        h = self.harness
        if self.harness.protocol.envelope is None:
            self.assertEqual(h.command(b"MAIL FROM:<sender@example.net>").code, 250)
        return h.command(b"RCPT TO:" + path)

    def data(self, body: bytes = _MESSAGE) -> Any:
        self.assertEqual(self.harness.command(b"DATA").code, 354)
        [final] = self.harness.send(body + b".\r\n")
        return final

    def test_nonexistent_directory(self) -> None:
        """The top directory must exist."""
        with self.assertRaises(ValueError) as cm:
            VirtualMaildirDelivery(os.path.join(self.top, "missing"))
        self.assertIn("does not exist", str(cm.exception))

    def test_existing_mailbox(self) -> None:
        """An existing mailbox is accepted; its Maildir is completed and gets the message."""
        reply = self.rcpt(b"<alice@example.com>")
        self.assertEqual((reply.code, reply.enhanced), (250, "2.1.5"))
        self.assertEqual(self.data().code, 250)
        box = self.mailbox("example.com/alice")
        self.assertEqual(sorted(os.listdir(box)), ["cur", "new", "tmp"])
        [data] = readAll(maildirFiles(box))
        stored = parseStored(data)
        self.assertEqual(
            (stored.returnPath, stored.deliveredTo), (b"sender@example.net", [b"alice@example.com"])
        )
        self.assertEqual(stored.body, _STORED_MESSAGE)
        self.assertEqual(os.listdir(self.mailbox("example.com/bob")), [])

    def test_case(self) -> None:
        """The domain matches in any case; the local part as given, then in lower case."""
        self.assertEqual(self.rcpt(b"<Alice@EXAMPLE.Com>").code, 250)
        self.assertEqual(self.data().code, 250)
        [data] = readAll(maildirFiles(self.mailbox("example.com/alice")))
        self.assertEqual(parseStored(data).deliveredTo, [b"Alice@EXAMPLE.Com"])

    def test_unknown_refused_at_rcpt(self) -> None:
        """Unknown mailbox or domain: 550 5.1.1 at RCPT, and nothing is created."""
        before = snapshot(self.top)
        for path in (
            b"<nobody@example.com>",
            b"<alice@example.net>",
            b"<carol@example.com>",
            b"<Postmaster>",
        ):
            reply = self.rcpt(path)
            self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"), path)
        [data] = self.harness.send(b"DATA\r\n")
        self.assertEqual(data.code, 554)
        self.assertEqual(snapshot(self.top), before)

    def test_mixed_recipients(self) -> None:
        """
        Recipients in two mailboxes (one of them twice, in two spellings)
        and an unknown one: each mailbox gets one copy, with its own
        Delivered-To lines; the unknown one is refused alone.
        """
        codes = [
            self.rcpt(p).code
            for p in (
                b"<alice@example.com>",
                b"<carol@example.org>",
                b"<nobody@example.org>",
                b"<ALICE@example.com>",
            )
        ]
        self.assertEqual(codes, [250, 250, 550, 250])
        final = self.data()
        self.assertEqual(final.code, 250)
        [alice] = readAll(maildirFiles(self.mailbox("example.com/alice")))
        [carol] = readAll(maildirFiles(self.mailbox("example.org/carol")))
        alice, carol = parseStored(alice), parseStored(carol)
        self.assertEqual(alice.deliveredTo, [b"alice@example.com", b"ALICE@example.com"])
        self.assertEqual(carol.deliveredTo, [b"carol@example.org"])
        for stored in (alice, carol):
            self.assertEqual(stored.returnPath, b"sender@example.net")
            self.assertEqual(stored.body, _STORED_MESSAGE)
            self.assertIsNone(stored.forAddress)
            self.assertIn(stored.queueId.decode(), final.text)
        self.assertEqual(
            maildirFiles(self.mailbox("example.com/alice"), "tmp")
            + maildirFiles(self.mailbox("example.org/carol"), "tmp"),
            [],
        )
        self.assertEqual(os.listdir(self.mailbox("example.com/bob")), [])

    def test_path_traversal_refused(self) -> None:
        """
        Local parts or domains that would leave DIR, name a hidden entry, or
        contain "/" are refused (550 5.1.1; 501 when the syntax is already
        wrong), even when the directory they point to exists, and nothing is
        created anywhere.
        """
        # Directories an escaping address could hit.
        os.makedirs(os.path.join(self.root, "example.com", ".hidden"))
        os.makedirs(os.path.join(self.root, "example.com", "a", "b"))
        before = snapshot(self.top)
        attempts = {
            b'<"../../outside"@example.com>': 550,
            b'<"../x"@example.com>': 550,
            b'<".."@example.com>': 550,
            b'<"."@example.com>': 550,
            b'<".hidden"@example.com>': 550,
            b"<a/b@example.com>": 550,
            b'<"a/../alice"@example.com>': 550,
            b'<"a\\/b"@example.com>': 550,
            b"<outside@[a:/../..]>": 550,
            b"<.hidden@example.com>": 501,
            b"<x@..>": 501,
        }
        for path, code in attempts.items():
            reply = self.rcpt(path)
            self.assertEqual(reply.code, code, f"{path!r}: {reply}")
            if code == 550:
                self.assertEqual(reply.enhanced, "5.1.1", path)
        self.assertEqual(snapshot(self.top), before)

    def test_path_traversal_direct(self) -> None:
        """mailboxFor() refuses hostile Address values that the parser would never produce."""
        before = snapshot(self.top)
        session = self.delivery.openSession(ConnectionInfo())
        env = Envelope(None)
        for hostile in (
            Address("..", "example.com"),
            Address("outside", ".."),
            Address("outside", "../.."),
            Address("../../outside", "example.com"),
            Address("alice", "example.com/../example.com"),
            Address("a\0b", "example.com"),
            Address("", "example.com"),
            Address("alice", ""),
        ):
            self.assertIsNone(self.delivery.mailboxFor(hostile), hostile)
            with self.assertRaises(SMTPError) as cm:
                session.checkRecipient(Recipient(hostile), env)
            self.assertEqual((cm.exception.code, cm.exception.enhanced), (550, "5.1.1"))
        self.assertEqual(snapshot(self.top), before)

    def test_postmaster(self) -> None:
        """``<Postmaster>`` (any case, no domain) goes to DIR/postmaster when it exists."""
        os.makedirs(self.mailbox("postmaster"))
        self.assertEqual(self.rcpt(b"<Postmaster>").code, 250)
        self.assertEqual(self.rcpt(b"<POSTMASTER>").code, 250)
        self.assertEqual(self.data().code, 250)
        [data] = readAll(maildirFiles(self.mailbox("postmaster")))
        stored = parseStored(data)
        self.assertEqual(stored.deliveredTo, [b"Postmaster", b"POSTMASTER"])
        self.assertEqual(stored.body, _STORED_MESSAGE)

    def test_postmaster_maildir_is_not_a_domain(self) -> None:
        """
        DIR/postmaster is the postmaster's Maildir, not a domain directory:
        ``<new@postmaster>`` and friends must not reach its tmp/, new/ or
        cur/ (which would nest Maildirs inside it and deliver there).
        """
        os.makedirs(self.mailbox("postmaster"))
        self.assertEqual(self.rcpt(b"<Postmaster>").code, 250)
        self.assertEqual(self.data().code, 250)
        before = snapshot(self.top)
        for local in (b"new", b"cur", b"tmp"):
            reply = self.rcpt(b"<" + local + b"@postmaster>")
            self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"), f"{local!r}: {reply}")
        self.harness.send(b"RSET\r\n")
        self.assertEqual(snapshot(self.top), before)
        for sub in ("new", "cur", "tmp"):
            inside = os.listdir(self.mailbox(os.path.join("postmaster", sub)))
            self.assertFalse(
                any(
                    os.path.isdir(os.path.join(self.mailbox("postmaster"), sub, n)) for n in inside
                ),
                inside,
            )

    def test_copy_fails_for_second_mailbox(self) -> None:
        """
        Two mailboxes, and the move into the second new/ fails: 451 4.3.0,
        and the first copy is taken back out of its new/ as well.
        """
        self.assertEqual(self.rcpt(b"<alice@example.com>").code, 250)
        self.assertEqual(self.rcpt(b"<carol@example.org>").code, 250)
        renames = []

        def rename(src: str, dst: str) -> None:
            renames.append(dst)
            if len(renames) == 2:
                enospc()
            os.rename(src, dst)

        patch = self.patch(txsmtp.maildir, "os", FaultyOS(rename=rename))
        final = self.data()
        patch.restore()
        self.assertEqual((final.code, final.enhanced), (451, "4.3.0"))
        self.assertEqual(len(renames), 2)
        for box in ("example.com/alice", "example.org/carol"):
            self.assertEqual(
                maildirFiles(self.mailbox(box)) + maildirFiles(self.mailbox(box), "tmp"), [], box
            )

    def test_create_fails_for_second_mailbox(self) -> None:
        """The second copy cannot be created: DATA gets 451, the first copy's tmp file is removed."""
        self.assertEqual(self.rcpt(b"<alice@example.com>").code, 250)
        self.assertEqual(self.rcpt(b"<carol@example.org>").code, 250)
        opened = []

        def failingOpen(path: str, *args: Any) -> int:
            opened.append(path)
            if len(opened) == 2:
                enospc()
            return os.open(path, *args)

        patch = self.patch(txsmtp.maildir, "os", FaultyOS(open=failingOpen))
        reply = self.harness.command(b"DATA")
        patch.restore()
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        for box in ("example.com/alice", "example.org/carol"):
            self.assertEqual(
                maildirFiles(self.mailbox(box)) + maildirFiles(self.mailbox(box), "tmp"), [], box
            )
        # The session is back in READY: a new transaction works.
        self.assertEqual(self.rcpt(b"<bob@example.com>").code, 250)
        self.assertEqual(self.data().code, 250)
        self.assertEqual(len(maildirFiles(self.mailbox("example.com/bob"))), 1)


# -- makeDelivery ------------------------------------------------------------------------------


class MakeDeliveryTests(unittest.TestCase):
    """deliveryplugins.makeDelivery: the --deliver TYPE:ARGS of twistd smtp."""

    def test_factories(self) -> None:
        """The three built-in types are there and provide IDeliveryFactory."""
        factories = deliveryFactories()
        self.assertTrue({"maildir", "virtual", "discard"} <= set(factories))
        for name in ("maildir", "virtual", "discard"):
            self.assertTrue(verifyObject(IDeliveryFactory, factories[name]))
            self.assertEqual(factories[name].deliveryType, name)

    def test_maildir(self) -> None:
        path = os.path.abspath(self.mktemp())
        delivery = makeDelivery("maildir:" + path)
        self.assertIsInstance(delivery, MaildirDelivery)
        self.assertEqual(delivery.maildir.path, path)
        self.assertEqual(sorted(os.listdir(path)), ["cur", "new", "tmp"])

    def test_maildir_relative(self) -> None:
        """A relative directory is relative to the working directory, resolved once."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(cwd)
        delivery = makeDelivery("maildir:Mail/box")
        self.assertEqual(delivery.maildir.path, os.path.join(cwd, "Mail", "box"))
        self.assertTrue(os.path.isdir(os.path.join(cwd, "Mail", "box", "new")))

    def test_maildir_errors(self) -> None:
        for spec, words in (
            ("maildir", "needs a directory"),
            ("maildir:", "needs a directory"),
            ("maildir:/dev/null/x", "cannot use"),
        ):
            with self.assertRaises(ValueError, msg=spec) as cm:
                makeDelivery(spec)
            self.assertIn(words, str(cm.exception))

    def test_virtual(self) -> None:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        delivery = makeDelivery("virtual:" + path)
        self.assertIsInstance(delivery, VirtualMaildirDelivery)
        self.assertEqual(delivery.path, path)

    def test_virtual_errors(self) -> None:
        aFile = os.path.abspath(self.mktemp())
        with open(aFile, "w") as f:
            f.write("not a directory")
        for spec in (
            "virtual:/nonexistent",
            "virtual:/nonexistent/vmail",
            "virtual:" + aFile,
            "virtual",
            "virtual:",
        ):
            with self.assertRaises(ValueError, msg=spec):
                makeDelivery(spec)
        self.assertFalse(os.path.exists("/nonexistent"))

    def test_discard(self) -> None:
        delivery = makeDelivery("discard")
        self.assertIsInstance(delivery, DiscardDelivery)
        with self.assertRaises(ValueError):
            makeDelivery("discard:something")
        h = ServerHarness(delivery)
        self.assertEqual(
            h.sendMessage(b"a@example.com", [b"b@example.com"], _MESSAGE)[-1].code, 250
        )

    def test_unknown_type(self) -> None:
        """An unknown type is a ValueError that names it and every known type."""
        for spec, kind in (
            ("nope:x", "'nope'"),
            ("nope", "'nope'"),
            ("", "''"),
            ("MAILDIR:x", "'MAILDIR'"),
        ):
            with self.assertRaises(ValueError, msg=spec) as cm:
                makeDelivery(spec)
            message = str(cm.exception)
            self.assertIn(kind, message)
            for known in ("discard", "maildir", "virtual"):
                self.assertIn(known, message)
