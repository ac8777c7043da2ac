"""
Real peers against the real server, over loopback sockets.

- Python's smtplib (in a thread) against an in-process server
  (``runServer`` with a :class:`~txsmtp.delivery.MaildirDelivery`) and
  against ``twistd smtp`` in a subprocess;
- swaks and Postfix's smtp-source against ``twistd smtp``;
- raw sockets for SMTP smuggling and for clients that vanish mid-DATA.

The stored Maildir files are compared byte for byte: ``Return-Path:``,
``Delivered-To:``, ``Received:`` and then exactly what the client sent.
"""

from __future__ import annotations

import os
import re
import smtplib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import threads
from twisted.trial import unittest

from tests.peers import requirePeer
from tests.twistd_helpers import (
    LogEvents,
    connectClient,
    maildirFiles,
    parseStored,
    readAll,
    runProcess,
    startTwistd,
)
from txsmtp.delivery import MaildirDelivery
from txsmtp.testing import runServer

HELO = "client.test.invalid"


@dataclass
class Target:
    """Where a test's server listens and stores."""

    port: int
    maildir: str
    hostname: str
    #: fires once the server has handled the ``n``-th client that
    #: disconnected in the middle of a transaction
    waitDisconnected: Any


def _index(body: bytes) -> int:
    m = re.search(rb"^X-Index: (\d+)\r$", body, re.M)
    if m is None:
        raise AssertionError(f"no X-Index header in {body[:200]!r}")
    return int(m.group(1))


# -- the same tests against both servers ------------------------------------------------


if TYPE_CHECKING:
    _MixinBase = unittest.TestCase
else:
    _MixinBase = object


class _ServerMixin(_MixinBase):
    """Tests run against each server; subclasses provide :meth:`startServer`."""

    timeout = 60

    async def startServer(self, bareLF: str = "reject") -> Target:
        raise NotImplementedError

    def assertEmptyMaildir(self, maildir: str, sub: str = "new") -> None:
        self.assertEqual(maildirFiles(maildir, sub), [])

    # smtplib ----------------------------------------------------------------

    async def test_smtplib_sendmail_byte_exact(self) -> None:
        """
        Several messages over one smtplib connection (dot lines, several
        recipients, the null sender, 8-bit with BODY=8BITMIME, an SMTPUTF8
        address): each Maildir file is the trace headers and then exactly
        the message.
        """
        target = await self.startServer()
        messages = [
            # (sender, recipients, body, mail options)
            (
                "alice@example.com",
                ["bob@example.org"],
                b"Subject: dots\r\nX-Index: 0\r\n\r\nfirst\r\n.leading dot\r\n.\r\n..\r\n...three\r\nlast\r\n",
                [],
            ),
            (
                "alice@example.com",
                ["bob@example.org", "carol@example.net"],
                b"Subject: two recipients\r\nX-Index: 1\r\n\r\nhello both\r\n",
                [],
            ),
            (
                "",
                ["bob@example.org"],
                b"Subject: bounce\r\nX-Index: 2\r\n\r\nnull sender\r\n",
                [],
            ),
            (
                "alice@example.com",
                ["bob@example.org"],
                b"Subject: 8bit\r\nX-Index: 3\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9 \xe2\x82\xac \x80\xff\xfe\x01\r\n.\xc3\xa9 dot\r\n",
                ["BODY=8BITMIME"],
            ),
            (
                "j\u00f6rg@b\u00fccher.example",
                ["\u00f1and\u00fa@ex\u00e4mple.org"],
                "Subject: \u00fcml\u00e4ut\r\nX-Index: 4\r\n\r\nGr\u00fc\u00dfe, \u00e7a va\r\n".encode(),
                ["SMTPUTF8", "BODY=8BITMIME"],
            ),
        ]

        def send() -> list[dict[str, Any]]:
            refused = []
            with smtplib.SMTP("127.0.0.1", target.port, local_hostname=HELO, timeout=20) as client:
                for sender, recipients, body, options in messages:
                    refused.append(client.sendmail(sender, recipients, body, mail_options=options))
            return refused

        refused = await threads.deferToThread(send)
        self.assertEqual(refused, [{}] * len(messages))

        self.assertEmptyMaildir(target.maildir, "tmp")
        files = readAll(maildirFiles(target.maildir))
        self.assertEqual(len(files), len(messages))
        seen = set()
        for data in files:
            stored = parseStored(data)
            i = _index(stored.body)
            seen.add(i)
            sender, recipients, body, options = messages[i]
            self.assertEqual(stored.body, body)
            self.assertEqual(stored.returnPath, sender.encode("utf-8"))
            self.assertEqual(stored.deliveredTo, [r.encode("utf-8") for r in recipients])
            self.assertEqual(stored.heloName, HELO.encode())
            self.assertEqual(stored.peer, b"[127.0.0.1]")
            self.assertEqual(stored.hostname, target.hostname.encode())
            self.assertEqual(stored.withKeyword, b"UTF8SMTP" if "SMTPUTF8" in options else b"ESMTP")
            self.assertEqual(
                stored.forAddress, recipients[0].encode("utf-8") if len(recipients) == 1 else None
            )
        self.assertEqual(seen, set(range(len(messages))))

    async def test_smtplib_queue_id_matches_received(self) -> None:
        """The id in the 250 reply to the final dot is the id in the stored Received: header."""
        target = await self.startServer()
        body = b"Subject: id\r\n\r\nwhich id?\r\n"

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", target.port, local_hostname=HELO, timeout=20) as client:
                client.ehlo()
                self_code = client.mail("a@example.com")[0]
                rcpt_code = client.rcpt("b@example.com")[0]
                assert (self_code, rcpt_code) == (250, 250), (self_code, rcpt_code)
                return client.data(body)

        code, text = await threads.deferToThread(send)
        self.assertEqual(code, 250)
        m = re.fullmatch(rb"2\.0\.0 OK: queued as ([0-9A-F]+)", text)
        self.assertIsNotNone(m, text)
        [data] = readAll(maildirFiles(target.maildir))
        stored = parseStored(data)
        self.assertEqual(stored.queueId, m.group(1))
        self.assertEqual(stored.body, body)

    async def test_smtplib_bare_lf_refused(self) -> None:
        """
        smtplib sends a bytes body as it is: a bare LF gets 550 5.6.0 after
        the final dot, nothing is stored, and the connection goes on.
        """
        target = await self.startServer()
        good = b"Subject: fine\r\n\r\nCRLF only\r\n"

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", target.port, local_hostname=HELO, timeout=20) as client:
                try:
                    client.sendmail(
                        "a@example.com", ["b@example.com"], b"Subject: bare\r\n\r\nbare\nLF\r\n"
                    )
                except smtplib.SMTPDataError as e:
                    refusal = (e.smtp_code, e.smtp_error)
                else:
                    raise AssertionError("the bare LF message was accepted")
                self.assertEmptyMaildir(target.maildir)
                self.assertEqual(client.sendmail("a@example.com", ["b@example.com"], good), {})
                return refusal

        code, text = await threads.deferToThread(send)
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.6.0 "), text)
        self.assertEmptyMaildir(target.maildir, "tmp")
        [data] = readAll(maildirFiles(target.maildir))
        self.assertEqual(parseStored(data).body, good)

    # raw sockets ----------------------------------------------------------------------

    async def _openTransaction(self, client: Any) -> None:
        """EHLO (once), MAIL, RCPT, DATA: each answered as expected."""
        if not getattr(client, "_greeted", False):
            [ehlo] = await client.command(b"EHLO " + HELO.encode())
            self.assertEqual(ehlo.code, 250)
            client._greeted = True
        [mail] = await client.command(b"MAIL FROM:<sender@example.com>")
        [rcpt] = await client.command(b"RCPT TO:<rcpt@example.com>")
        [data] = await client.command(b"DATA")
        self.assertEqual((mail.code, rcpt.code, data.code), (250, 250, 354))

    async def test_smuggling_refused(self) -> None:
        """
        ``<LF>.<LF>`` (and the other near misses of ``<CRLF>.<CRLF>``) never
        ends DATA: the smuggled MAIL/RCPT/DATA are message text, the message
        (bare line ends) gets one 550, nothing is stored, and no second
        transaction runs.  The ``<CRLF>.<CRLF>`` after "smuggled" is the one
        real end of the message.
        """
        target = await self.startServer()
        client = await connectClient(self, target.port)
        smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\n"
        nearMisses = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\r.\r"]
        for nearMiss in nearMisses:
            await self._openTransaction(client)
            start = len(client.replies)
            client.send(b"Subject: smuggle\r\n\r\nhello" + nearMiss + smuggled)
            [final] = (await client.waitReplies(start + 1))[start:]
            self.assertEqual((final.code, final.enhanced), (550, "5.6.0"), f"{nearMiss!r}: {final}")
        [quit] = await client.command(b"QUIT")
        self.assertEqual(quit.code, 221)
        await client.whenLost()
        # Exactly the replies of the real commands: nothing answered the
        # smuggled MAIL, RCPT and DATA.
        expected = [220, 250] + [250, 250, 354, 550] * len(nearMisses) + [221]
        self.assertEqual([r.code for r in client.replies], expected)
        self.assertEmptyMaildir(target.maildir)
        self.assertEmptyMaildir(target.maildir, "tmp")

    async def test_smuggling_normalized_is_one_message(self) -> None:
        """
        With bare line ends normalised instead of refused, ``<LF>.<LF>``
        still does not end the message: one message is stored, holding the
        smuggled commands as text, with no bare LF left.
        """
        target = await self.startServer(bareLF="normalize")
        client = await connectClient(self, target.port)
        await self._openTransaction(client)
        start = len(client.replies)
        client.send(
            b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\n"
        )
        [final] = (await client.waitReplies(start + 1))[start:]
        self.assertEqual(final.code, 250)
        [quit] = await client.command(b"QUIT")
        self.assertEqual(quit.code, 221)
        await client.whenLost()
        self.assertEqual([r.code for r in client.replies], [220, 250, 250, 250, 354, 250, 221])
        [data] = readAll(maildirFiles(target.maildir))
        stored = parseStored(data)
        self.assertEqual(stored.deliveredTo, [b"rcpt@example.com"])
        self.assertTrue(stored.body.startswith(b"Subject: smuggle\r\n\r\nhello\r\n"), stored.body)
        self.assertTrue(
            stored.body.endswith(
                b"\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n"
            ),
            stored.body,
        )
        self.assertEqual(data.count(b"\n"), data.count(b"\r\n"), "bare LF stored")
        self.assertEqual(data.count(b"\r"), data.count(b"\r\n"), "bare CR stored")

    async def _vanish(self, how: str) -> None:
        target = await self.startServer()
        client = await connectClient(self, target.port)
        await self._openTransaction(client)
        # The message file exists in tmp/ from the 354 on.
        self.assertEqual(len(maildirFiles(target.maildir, "tmp")), 1)
        client.send(
            b"Subject: half\r\n\r\n"
            + b"x" * 70
            + b"\r\n" * 2
            + b"y" * 5000
            + b"\r\n"
            + b"an unfinished line"
        )
        if how == "reset":
            await client.abort()
        else:
            await client.close()
        await target.waitDisconnected(1)
        self.assertEmptyMaildir(target.maildir, "tmp")
        self.assertEmptyMaildir(target.maildir)
        # The server carries on: a new connection delivers.
        second = await connectClient(self, target.port)
        await self._openTransaction(second)
        start = len(second.replies)
        second.send(b"Subject: whole\r\n\r\ncomplete\r\n.\r\n")
        [final] = (await second.waitReplies(start + 1))[start:]
        self.assertEqual(final.code, 250, str(final))
        [data] = readAll(maildirFiles(target.maildir))
        self.assertEqual(parseStored(data).body, b"Subject: whole\r\n\r\ncomplete\r\n")
        self.assertEmptyMaildir(target.maildir, "tmp")

    async def test_client_resets_mid_data(self) -> None:
        """A client that aborts (RST) halfway through a message leaves nothing behind."""
        await self._vanish("reset")

    async def test_client_closes_mid_data(self) -> None:
        """A client that closes (FIN) halfway through a message leaves nothing behind."""
        await self._vanish("close")


class InProcessServerTests(_ServerMixin, unittest.TestCase):
    """The tests above against ``runServer(self, MaildirDelivery(dir))``."""

    async def startServer(self, bareLF: str = "reject") -> Target:
        maildir = os.path.abspath(self.mktemp())
        events = LogEvents(self)
        server = runServer(self, MaildirDelivery(maildir), bareLineEnds=bareLF)

        def isDisconnect(event: dict[str, Any]) -> bool:
            return (
                event.get("log_namespace") == "txsmtp.server"
                and event.get("result") == "disconnected"
            )

        def waitDisconnected(n: int) -> Any:
            return events.waitForCount(isDisconnect, n)

        return Target(server.port, maildir, server.factory.hostname, waitDisconnected)


class TwistdServerTests(_ServerMixin, unittest.TestCase):
    """The tests above against ``twistd -n smtp`` (``--deliver maildir:Maildir``, the default)."""

    async def startServer(self, bareLF: str = "reject") -> Target:
        running = await startTwistd(self, "--hostname", "mx.test.invalid", "--bare-lf", bareLF)

        def waitDisconnected(n: int) -> Any:
            return running.waitForLog(r"(?s)(?:\bdisconnected id=.*?){" + str(n) + "}")

        return Target(running.port, running.path("Maildir"), "mx.test.invalid", waitDisconnected)


# -- swaks ------------------------------------------------------------------------------------


class SwaksTests(unittest.TestCase):
    """swaks against ``twistd smtp``."""

    timeout = 60

    async def _swaks(self, port: int, *args: str) -> Any:
        swaks = requirePeer("swaks")
        return await runProcess(
            swaks,
            ["--server", f"127.0.0.1:{port}", "--helo", HELO, "--timeout", "20", *args],
            timeout=40,
        )

    async def _sendAndCheck(self, *extra: str) -> str:
        requirePeer("swaks")
        running = await startTwistd(self, "--hostname", "mx.test.invalid")
        body = "first line\\n.dot line\\n..two dots\\nlast line"
        result = await self._swaks(
            running.port, "--to", "a@example.com", "--from", "b@example.com", "--body", body, *extra
        )
        self.assertEqual(result.code, 0, result.describe())
        maildir = running.path("Maildir")
        self.assertEqual(maildirFiles(maildir, "tmp"), [])
        [data] = readAll(maildirFiles(maildir))
        stored = parseStored(data)
        self.assertEqual(
            (stored.returnPath, stored.deliveredTo), (b"b@example.com", [b"a@example.com"])
        )
        self.assertEqual((stored.heloName, stored.withKeyword), (HELO.encode(), b"ESMTP"))
        head, sep, text = stored.body.partition(b"\r\n\r\n")
        self.assertTrue(sep, stored.body)
        self.assertIn(b"\r\nTo: a@example.com\r\n", b"\r\n" + head + b"\r\n")
        # swaks turns "\n" into line ends and dot-stuffs; it also appends
        # two empty lines of its own.
        self.assertEqual(text, b"first line\r\n.dot line\r\n..two dots\r\nlast line\r\n\r\n\r\n")
        return result.out.decode("utf-8", "replace")

    async def test_swaks(self) -> None:
        """swaks exits 0 and the Maildir holds its message, dot lines intact."""
        transcript = await self._sendAndCheck()
        self.assertIn("<-  250 2.0.0 ", transcript)

    async def test_swaks_pipeline(self) -> None:
        """With --pipeline, swaks sends MAIL, RCPT and DATA in one go; same result."""
        transcript = await self._sendAndCheck("--pipeline")
        lines = [
            line for line in transcript.splitlines() if line.startswith((" -> ", "<-  ", "<** "))
        ]
        i = next(n for n, line in enumerate(lines) if line.startswith(" -> MAIL FROM:"))
        self.assertEqual(
            [line[:12] for line in lines[i : i + 6]],
            [
                " -> MAIL FRO",
                " -> RCPT TO:",
                " -> DATA",
                "<-  250 2.1.",
                "<-  250 2.1.",
                "<-  354 End ",
            ],
            transcript,
        )

    async def test_swaks_virtual(self) -> None:
        """
        ``--deliver virtual:DIR``: swaks delivers to an existing mailbox
        (exit 0) and gets 550 5.1.1 for an unknown one (swaks exit 24:
        no recipient accepted).
        """
        requirePeer("swaks")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(cwd, "vmail", "example.com", "alice"))
        running = await startTwistd(
            self, "--hostname", "mx.test.invalid", "--deliver", "virtual:vmail", cwd=cwd
        )
        ok = await self._swaks(
            running.port,
            "--to",
            "Alice@Example.COM",
            "--from",
            "b@example.com",
            "--body",
            "for alice",
        )
        self.assertEqual(ok.code, 0, ok.describe())
        refused = await self._swaks(
            running.port, "--to", "nobody@example.com", "--from", "b@example.com", "--body", "x"
        )
        self.assertEqual(refused.code, 24, refused.describe())
        self.assertIn(b"550 5.1.1", refused.out)
        mailbox = os.path.join(cwd, "vmail", "example.com", "alice")
        [data] = readAll(maildirFiles(mailbox))
        stored = parseStored(data)
        self.assertEqual(stored.deliveredTo, [b"Alice@Example.COM"])
        self.assertTrue(stored.body.endswith(b"\r\n\r\nfor alice\r\n\r\n\r\n"), stored.body)
        self.assertEqual(sorted(os.listdir(os.path.join(cwd, "vmail"))), ["example.com"])
        self.assertEqual(sorted(os.listdir(os.path.join(cwd, "vmail", "example.com"))), ["alice"])


# -- smtp-source ----------------------------------------------------------------------------


def smtpSourceText(length: int) -> bytes:
    """
    The text smtp-source sends after its header block for ``-l length``:
    ``length`` octets in 80-octet lines (a digit, 77 X, CRLF) with a last
    line of X's, then the CRLF it adds before the final dot.
    """
    data = bytearray(b"X" * length)
    for i in range(80, length, 80):
        data[i - 80] = ord("0123456789"[(i // 80) % 10])
        data[i - 2 : i] = b"\r\n"
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return bytes(data)


_SMTP_SOURCE_HEADERS = re.compile(
    rb"From: <x@example\.com>\r\n"
    rb"To: <y@example\.com>\r\n"
    rb"Date: [^\r\n]+\r\n"
    rb"Message-Id: <(?P<id>[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+@[^<>\r\n]+)>\r\n"
    rb"\r\n"
)


class SmtpSourceTests(unittest.TestCase):
    """Postfix's smtp-source load generator against ``twistd smtp`` with a Maildir."""

    timeout = 90

    def test_expected_text_shape(self) -> None:
        """Sanity check of the model of smtp-source's text (as observed on the wire)."""
        text = smtpSourceText(2048)
        lines = text.split(b"\r\n")
        self.assertEqual(len(text), 2050)
        self.assertEqual(lines[0], b"1" + b"X" * 77)
        self.assertEqual(lines[9], b"0" + b"X" * 77)
        self.assertEqual(lines[24], b"5" + b"X" * 77)
        self.assertEqual(lines[25:], [b"X" * 48, b""])

    async def _runSmtpSource(self, *flags: str) -> None:
        source = requirePeer("smtp-source")
        running = await startTwistd(self, "--hostname", "mx.test.invalid")
        args = [
            *flags,
            "-s",
            "5",
            "-m",
            "50",
            "-l",
            "2048",
            "-f",
            "x@example.com",
            "-t",
            "y@example.com",
            f"127.0.0.1:{running.port}",
        ]
        result = await runProcess(source, args, timeout=60)
        self.assertEqual((result.code, result.err), (0, b""), result.describe())
        maildir = running.path("Maildir")
        self.assertEqual(maildirFiles(maildir, "tmp"), [])
        files = readAll(maildirFiles(maildir))
        self.assertEqual(len(files), 50)
        expectedText = smtpSourceText(2048)
        messageIds = set()
        for data in files:
            stored = parseStored(data)
            self.assertEqual(
                (stored.returnPath, stored.deliveredTo, stored.forAddress),
                (b"x@example.com", [b"y@example.com"], b"y@example.com"),
            )
            self.assertEqual(stored.peer, b"[127.0.0.1]")
            self.assertIn(stored.withKeyword, (b"SMTP", b"ESMTP"))
            m = _SMTP_SOURCE_HEADERS.match(stored.body)
            self.assertIsNotNone(m, stored.body[:400])
            self.assertEqual(stored.body[m.end() :], expectedText)  # type: ignore[union-attr]
            messageIds.add(m.group("id"))  # type: ignore[union-attr]
        # Every message once: no loss, no duplicate.
        self.assertEqual(len(messageIds), 50)

    async def test_smtp_source_reusing_connections(self) -> None:
        """``smtp-source -d -s 5 -m 50 -l 2048``: 50 messages, byte-exact, over 5 reused connections."""
        await self._runSmtpSource("-d")

    async def test_smtp_source_connection_per_message(self) -> None:
        """``smtp-source -s 5 -m 50 -l 2048``: 50 messages, byte-exact, one connection each."""
        await self._runSmtpSource()
