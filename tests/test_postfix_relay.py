"""
txsmtp and a real Postfix passing mail to each other (:mod:`tests.postfixd`).

- Postfix relays into txsmtp: Postfix (``relayhost = [127.0.0.1]:PORT``)
  takes a message from Python's :mod:`smtplib` and passes it to ``twistd
  -n smtp``, the final destination, which stores it in a Maildir.  The
  stored message is, byte for byte, what smtplib sent, after the trace
  headers txsmtp adds and the one ``Received:`` Postfix adds; Postfix
  logged ``status=sent`` with txsmtp's queue id.
- txsmtp relays into Postfix: ``twistd -n smtp --queue DIR --relay-host
  [127.0.0.1]:PORT --relay-tls none --relay-networks 127.0.0.0/8`` takes the
  message and, out of its queue, passes it to Postfix, the final
  destination of the domain (``virtual(8)`` into a Maildir).  The Maildir
  file is what smtplib sent after the headers the two servers added, and
  txsmtp's queue is empty afterwards.

The messages have lines starting with dots (dot-stuffing both ways),
8-bit text, a line of 998 octets (the most RFC 5322 allows), an empty last
line and complete headers (so that Postfix adds none but ``Received:``).
Nothing sleeps: every wait is a log line (twistd's, Postfix's) or a reply.
"""

from __future__ import annotations

import os
import re
import smtplib

from twisted.internet import threads
from twisted.trial import unittest

from tests.postfixd import LOOPBACK, RunningPostfix, startPostfix
from tests.twistd_helpers import RunningTwistd, parseStored, startTwistd

SENDER = "sender@example.com"
#: txsmtp's side is the destination of example.org; Postfix's of example.net.
TXSMTP_RCPT = "rcpt@example.org"
POSTFIX_RCPT = "alice@example.net"
TXSMTP_NAME = "mx.test.invalid"
POSTFIX_NAME = "postfix.test.invalid"


def message(subject: str) -> bytes:
    """A message with every line end CRLF, that neither server has any reason to change."""
    body = [
        b"From: Sender <sender@example.com>",
        b"To: Someone <someone@example.org>",
        b"Subject: " + subject.encode(),
        b"Date: Sun, 06 Dec 2026 12:00:00 +0000",
        b"Message-ID: <" + subject.replace(" ", "-").encode() + b"@example.com>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        b".a line starting with a dot",
        b"..two dots",
        b".",
        b"caf\xc3\xa9, na\xc3\xafve, \xe2\x82\xac",
        b"x" * 998,
        b" leading space and trailing space ",
        b"",
    ]
    return b"\r\n".join(body) + b"\r\n"


#: the header Postfix prepends (RFC 5321 §4.4), three lines
_POSTFIX_RECEIVED = re.compile(
    rb"Received: from [^\r\n]+\r\n"
    rb"\tby " + re.escape(POSTFIX_NAME.encode()) + rb" \(Postfix\) with E?SMTP id (?P<id>[0-9A-F]+)"
    rb"(?:\r\n\tfor <[^<>\r\n]+>)?; [^\r\n]+\r\n"
)


def splitPostfixReceived(data: bytes) -> tuple[bytes, bytes]:
    """(Postfix's queue id, the rest) of a message that starts with Postfix's ``Received:``."""
    m = _POSTFIX_RECEIVED.match(data)
    if m is None:
        raise AssertionError(f"no Postfix Received: header first: {data[:400]!r}")
    return m.group("id"), data[m.end() :]


async def submit(port: int, recipient: str, data: bytes) -> None:
    """Send ``data`` to 127.0.0.1:``port`` with :mod:`smtplib` (in a thread); every recipient accepted."""

    def send() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(LOOPBACK, port, local_hostname="client.test.invalid", timeout=30) as c:
            return c.sendmail(SENDER, [recipient], data)

    refused = await threads.deferToThread(send)
    assert refused == {}, refused


class PostfixIntoTxsmtpTests(unittest.TestCase):
    """A real Postfix relays into txsmtp, the final destination."""

    async def test_postfixRelaysIntoMaildir(self) -> None:
        twistd: RunningTwistd = await startTwistd(
            self, "--hostname", TXSMTP_NAME, "--deliver", "maildir:Maildir"
        )
        postfix: RunningPostfix = await startPostfix(
            self, relayHost=f"[{LOOPBACK}]:{twistd.port}", hostname=POSTFIX_NAME
        )
        sent = message("postfix into txsmtp")
        await submit(postfix.port, TXSMTP_RCPT, sent)

        [match] = await postfix.waitForLog(r"status=sent \(250 2\.0\.0 OK: queued as (\w+)\)")
        accepted = await twistd.waitForLog(r"accepted id=(\w+)")
        self.assertEqual(match.group(1), accepted.group(1))
        self.assertIn(f"relay={LOOPBACK}[{LOOPBACK}]:{twistd.port}", postfix.log)

        [name] = os.listdir(twistd.path("Maildir", "new"))
        with open(twistd.path("Maildir", "new", name), "rb") as f:
            stored = parseStored(f.read())
        self.assertEqual(stored.returnPath, SENDER.encode())
        self.assertEqual(stored.deliveredTo, [TXSMTP_RCPT.encode()])
        self.assertEqual(stored.heloName, POSTFIX_NAME.encode())
        self.assertEqual(stored.peer, b"[127.0.0.1]")
        self.assertEqual(stored.queueId.decode(), accepted.group(1))
        postfixId, rest = splitPostfixReceived(stored.body)
        self.assertIn(f"{postfixId.decode()}: to=<{TXSMTP_RCPT}>", postfix.log)
        self.assertEqual(rest, sent)


class PostfixIntoTxsmtpQueueTests(unittest.TestCase):
    """The same, with txsmtp's relay on: the message goes through its queue to ``--deliver``."""

    async def test_postfixRelaysThroughTheQueue(self) -> None:
        queue = os.path.abspath(self.mktemp())
        twistd = await startTwistd(
            self,
            "--hostname", TXSMTP_NAME,
            "--deliver", "maildir:Maildir",
            "--queue", queue,
            "--local-domains", TXSMTP_RCPT.rpartition("@")[2],
        )  # fmt: skip
        postfix = await startPostfix(
            self, relayHost=f"[{LOOPBACK}]:{twistd.port}", hostname=POSTFIX_NAME
        )
        sent = message("postfix into the queue")
        await submit(postfix.port, TXSMTP_RCPT, sent)

        [match] = await postfix.waitForLog(r"status=sent \(250 2\.0\.0 OK: queued as (\w+)\)")
        accepted = await twistd.waitForLog(rf"accepted id={match.group(1)} .* stored=(\w+)")
        await twistd.waitForLog(
            rf"{accepted.group(1)}: to=<{re.escape(TXSMTP_RCPT)}> hop=local: result=delivered"
        )
        [name] = os.listdir(twistd.path("Maildir", "new"))
        with open(twistd.path("Maildir", "new", name), "rb") as f:
            stored = parseStored(f.read())
        self.assertEqual(stored.returnPath, SENDER.encode())
        self.assertEqual(stored.deliveredTo, [TXSMTP_RCPT.encode()])
        self.assertEqual(stored.heloName, POSTFIX_NAME.encode())
        self.assertEqual(stored.peer, b"[127.0.0.1]")
        self.assertEqual(stored.queueId.decode(), match.group(1))
        _, rest = splitPostfixReceived(stored.body)
        self.assertEqual(rest, sent)


class TxsmtpIntoPostfixTests(unittest.TestCase):
    """txsmtp relays out of its queue into a real Postfix, the final destination."""

    async def test_relayIntoPostfix(self) -> None:
        postfix = await startPostfix(self, mailboxes=[POSTFIX_RCPT], hostname=POSTFIX_NAME)
        queue = os.path.abspath(self.mktemp())
        twistd = await startTwistd(
            self,
            "--hostname", TXSMTP_NAME,
            "--queue", queue,
            "--relay-host", f"[{LOOPBACK}]:{postfix.port}",
            "--relay-tls", "none",
            "--relay-networks", "127.0.0.0/8",
        )  # fmt: skip
        sent = message("txsmtp into postfix")
        await submit(twistd.port, POSTFIX_RCPT, sent)
        accepted = await twistd.waitForLog(r"accepted id=(\w+)")

        [delivered] = await postfix.waitForLog(
            rf"(\w+): to=<{re.escape(POSTFIX_RCPT)}>, relay=virtual, .*status=sent \(delivered to maildir\)"
        )
        [name] = postfix.maildirFiles(POSTFIX_RCPT)
        with open(name, "rb") as f:
            stored = f.read()
        # virtual(8) adds Return-Path:, X-Original-To: (enable_original_recipient)
        # and Delivered-To: (man 8 virtual), and stores LF line ends.
        head = b"Return-Path: <%s>\nX-Original-To: %s\nDelivered-To: %s\n" % (
            SENDER.encode(),
            POSTFIX_RCPT.encode(),
            POSTFIX_RCPT.encode(),
        )
        self.assertTrue(stored.startswith(head), stored[:400])
        postfixId, rest = splitPostfixReceived(stored[len(head) :].replace(b"\n", b"\r\n"))
        self.assertEqual(postfixId.decode(), delivered.group(1))
        # Then txsmtp's own Received:, naming the smtplib client and its queue id.
        m = re.match(
            rb"Received: from client\.test\.invalid \(\[127\.0\.0\.1\]\)\r\n"
            rb"\tby " + re.escape(TXSMTP_NAME.encode()) + rb" \(txsmtp\) with E?SMTP id (?P<id>\w+)"
            rb"(?:\r\n\tfor <[^<>\r\n]+>)?; [^\r\n]+\r\n",
            rest,
        )
        self.assertIsNotNone(m, rest[:400])
        assert m is not None
        self.assertEqual(m.group("id").decode(), accepted.group(1))
        self.assertEqual(rest[m.end() :], sent)
