"""
The client protocol and Mailer, driven by hand: an in-memory transport
plays the server, a Clock plays time.  Interop tests with real servers are
in test_client_interop.py.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from txsmtp import sasl
from txsmtp.client import (
    ClientOptions,
    ESMTPClient,
    LMTPClient,
    Mailer,
    OutgoingMessage,
    SendResult,
    SMTPAddressError,
    SMTPAuthError,
    SMTPBadReplyError,
    SMTPClientError,
    SMTPClientFactory,
    SMTPConnectError,
    SMTPConnectionLost,
    SMTPMessageRefused,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerRefused,
    SMTPTimeoutError,
    SMTPTLSError,
    SMTPUnsupportedError,
    Timeouts,
    TLSPolicy,
    sendmail,
)
from txsmtp.wire.reply import Reply

EHLO_PIPELINING = (
    b"250-server.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000000\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n"
)
EHLO_PLAIN = b"250-server.example\r\n250 8BITMIME\r\n"


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS (no encryption happens)."""

    TLS = False

    def __init__(self) -> None:
        super().__init__()
        self.tlsStarted: list[Any] = []

    def startTLS(self, options: Any) -> None:
        self.tlsStarted.append(options)
        self.TLS = True


class Harness:
    """A client protocol on an in-memory transport; the test speaks for the server."""

    def __init__(self, protocol: type[ESMTPClient] = ESMTPClient, factory: Any = None, **options: Any) -> None:
        options.setdefault("tls", TLSPolicy.NONE)
        options.setdefault("heloName", "client.example")
        self.clock = options.setdefault("reactor", Clock())
        self.options = ClientOptions(host="server.example", **options)
        self.protocol = protocol(self.options)
        if factory is not None:
            self.protocol.factory = factory
        self.transport = TLSStringTransport()
        self.protocol.makeConnection(self.transport)
        self.closed = False

    def server(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self, reason: Any = None) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(reason or ConnectionDone()))

    def setUp(self, ehlo: bytes = EHLO_PIPELINING) -> None:
        """Greeting and EHLO; the session is ready."""
        self.server(b"220 server.example ESMTP\r\n")
        assert self.sent() == b"EHLO client.example\r\n"
        self.server(ehlo)


def ok(reply: Reply, code: int) -> None:
    assert reply.code == code, reply


class SessionSetupTests(unittest.TestCase):
    def test_ehlo(self) -> None:
        """The client waits for the greeting, says EHLO and learns the extensions."""
        h = Harness()
        self.assertEqual(h.sent(), b"")
        h.server(b"220 server.example ESMTP\r\n")
        self.assertEqual(h.sent(), b"EHLO client.example\r\n")
        self.assertNoResult(h.protocol.ready)
        h.server(EHLO_PIPELINING)
        self.assertIs(self.successResultOf(h.protocol.ready), h.protocol)
        self.assertEqual(h.protocol.extensions["SIZE"], "1000000")
        self.assertIn("PIPELINING", h.protocol.extensions)
        self.assertEqual(h.protocol.maxMessageSize, 1000000)
        self.assertTrue(h.protocol.esmtp)

    def test_heloFallback(self) -> None:
        """A server that refuses EHLO gets HELO, and then no extension is used."""
        h = Harness()
        h.server(b"220 old.example\r\n")
        h.sent()
        h.server(b"500 5.5.1 Command unrecognized\r\n")
        self.assertEqual(h.sent(), b"HELO client.example\r\n")
        h.server(b"250 old.example\r\n")
        self.successResultOf(h.protocol.ready)
        self.assertFalse(h.protocol.esmtp)
        self.assertEqual(h.protocol.extensions, {})

    def test_heloRefused(self) -> None:
        """EHLO and HELO both refused: QUIT, and the session fails."""
        h = Harness()
        h.server(b"220 x\r\n")
        h.server(b"502 no\r\n")
        h.sent()
        h.server(b"550 go away\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.server(b"221 bye\r\n")
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPServerRefused)
        self.assertEqual(f.value.code, 550)
        self.assertTrue(f.value.permanent)

    def test_greetingRefused(self) -> None:
        """A 554 greeting (RFC 5321 §3.1): QUIT, a permanent SMTPServerRefused."""
        h = Harness()
        h.server(b"554 5.7.1 no service for you\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.server(b"221 bye\r\n")
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPServerRefused)
        self.assertEqual((f.value.code, f.value.enhanced), (554, "5.7.1"))
        self.assertIn("no service for you", str(f.value))

    def test_closedBeforeGreeting(self) -> None:
        h = Harness()
        h.lose()
        self.failureResultOf(h.protocol.ready, SMTPConnectError)

    def test_multilineGreeting(self) -> None:
        h = Harness()
        h.server(b"220-server.example\r\n220-more text\r\n")
        self.assertEqual(h.sent(), b"")
        h.server(b"220 ready\r\n")
        self.assertEqual(h.sent(), b"EHLO client.example\r\n")

    def test_defaultHeloName(self) -> None:
        """Without heloName: a fully qualified host name, or the local address literal."""
        h = Harness(heloName=None)
        h.server(b"220 x\r\n")
        line = h.sent()
        self.assertTrue(line.startswith(b"EHLO ") and line.endswith(b"\r\n"))
        name = line[5:-2]
        self.assertTrue(b"." in name or name.startswith(b"["), name)

    def test_authEqualsSyntax(self) -> None:
        """Old servers announce AUTH=LOGIN PLAIN; it counts as AUTH."""
        h = Harness()
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH CRAM-MD5\r\n")
        self.assertEqual(h.protocol.extensions["AUTH"].split(), ["LOGIN", "PLAIN", "CRAM-MD5"])


class TransactionTests(unittest.TestCase):
    def ready(self, ehlo: bytes = EHLO_PIPELINING, **options: Any) -> Harness:
        h = Harness(**options)
        h.setUp(ehlo)
        self.successResultOf(h.protocol.ready)
        h.sent()
        return h

    def test_pipelinedGroup(self) -> None:
        """
        With PIPELINING, MAIL, every RCPT and DATA leave in one write
        (RFC 2920 §3.1); the body follows the 354, dot-stuffed.
        """
        h = self.ready()
        writes: list[bytes] = []
        h.transport.write = writes.append  # type: ignore[method-assign]
        d = h.protocol.sendMessage("a@example.com", ["b@example.com", "c@example.com"], b"Hi\n.dot\n")
        self.assertEqual(
            writes,
            [
                b"MAIL FROM:<a@example.com> SIZE=8\r\n"
                b"RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
            ],
        )
        writes.clear()
        h.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        self.assertEqual(writes, [b"Hi\r\n..dot\r\n.\r\n"])
        self.assertNoResult(d)
        h.server(b"250 2.0.0 queued as X\r\n")
        result = self.successResultOf(d)
        self.assertIsInstance(result, SendResult)
        self.assertEqual(result.accepted, ["b@example.com"])
        self.assertEqual(list(result.refused), ["c@example.com"])
        self.assertEqual(result.refused["c@example.com"].enhanced, "5.1.1")
        self.assertEqual(result.reply.text, "queued as X")
        self.assertEqual(list(result.recipients), ["b@example.com", "c@example.com"])

    def test_withoutPipelining(self) -> None:
        """Without PIPELINING, one command at a time."""
        h = self.ready(EHLO_PLAIN)
        d = h.protocol.sendMessage("a@example.com", ["b@example.com", "c@example.com"], b"x")
        self.assertEqual(h.sent(), b"MAIL FROM:<a@example.com>\r\n")
        h.server(b"250 ok\r\n")
        self.assertEqual(h.sent(), b"RCPT TO:<b@example.com>\r\n")
        h.server(b"250 ok\r\n")
        self.assertEqual(h.sent(), b"RCPT TO:<c@example.com>\r\n")
        h.server(b"250 ok\r\n")
        self.assertEqual(h.sent(), b"DATA\r\n")
        h.server(b"354 go\r\n")
        self.assertEqual(h.sent(), b"x\r\n.\r\n")
        h.server(b"250 ok\r\n")
        self.assertEqual(self.successResultOf(d).accepted, ["b@example.com", "c@example.com"])

    def test_withoutPipeliningSenderRefused(self) -> None:
        """MAIL refused, no PIPELINING: nothing more is sent, not even RSET."""
        h = self.ready(EHLO_PLAIN)
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.sent()
        h.server(b"550 not you\r\n")
        f = self.failureResultOf(d, SMTPSenderRefused)
        self.assertEqual(f.value.code, 550)
        self.assertEqual(h.sent(), b"")
        self.assertEqual(h.protocol.state.value, "idle")

    def test_withoutPipeliningAllRefused(self) -> None:
        h = self.ready(EHLO_PLAIN)
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.sent()
        h.server(b"250 ok\r\n")
        h.sent()
        h.server(b"550 no\r\n")
        self.assertEqual(h.sent(), b"RSET\r\n")
        h.server(b"250 ok\r\n")
        f = self.failureResultOf(d, SMTPRecipientsRefused)
        self.assertEqual(list(f.value.recipients), ["b@example.com"])

    def test_senderRefusedPipelined(self) -> None:
        """MAIL refused in a group: the other replies are read, then RSET."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.sent()
        h.server(b"550 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n")
        self.assertEqual(h.sent(), b"")
        h.server(b"503 5.5.1 no RCPT\r\n")
        self.assertEqual(h.sent(), b"RSET\r\n")
        self.assertNoResult(d)
        h.server(b"250 2.0.0 ok\r\n")
        f = self.failureResultOf(d, SMTPSenderRefused)
        self.assertEqual(f.value.enhanced, "5.7.1")
        self.assertTrue(f.value.permanent)
        # The connection is usable again.
        d2 = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        self.assertTrue(h.sent().startswith(b"MAIL FROM:"))
        self.assertNoResult(d2)

    def test_allRecipientsRefused(self) -> None:
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com", "c@example.com"], b"x")
        h.sent()
        h.server(b"250 ok\r\n550 5.1.1 no b\r\n450 4.2.0 try c later\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(h.sent(), b"RSET\r\n")
        h.server(b"250 ok\r\n")
        f = self.failureResultOf(d, SMTPRecipientsRefused)
        self.assertEqual(f.value.recipients["b@example.com"].code, 550)
        self.assertEqual(f.value.recipients["c@example.com"].code, 450)
        # One of them is transient: trying later might help.
        self.assertFalse(f.value.permanent)

    def test_dataAcceptedAfterEveryRecipientRefused(self) -> None:
        """
        RFC 2920 §3.1: a server that answers 354 although no recipient was
        accepted gets an empty message, then RSET.
        """
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"secret body")
        h.sent()
        h.server(b"250 ok\r\n550 no\r\n354 go ahead\r\n")
        self.assertEqual(h.sent(), b".\r\n")
        h.server(b"554 no recipients\r\n")
        self.assertEqual(h.sent(), b"RSET\r\n")
        h.server(b"250 ok\r\n")
        self.failureResultOf(d, SMTPRecipientsRefused)

    def test_dataRefused(self) -> None:
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.sent()
        h.server(b"250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n")
        self.assertEqual(h.sent(), b"RSET\r\n")
        h.server(b"250 ok\r\n")
        f = self.failureResultOf(d, SMTPMessageRefused)
        self.assertEqual(f.value.code, 451)
        self.assertFalse(f.value.permanent)

    def test_messageRefused(self) -> None:
        """The reply to the final dot refuses: no RSET is needed."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.sent()
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        h.sent()
        h.server(b"554 5.6.0 spam\r\n")
        f = self.failureResultOf(d, SMTPMessageRefused)
        self.assertEqual(f.value.text, "spam")
        self.assertEqual(h.sent(), b"")
        self.assertEqual(h.protocol.state.value, "idle")

    def test_sizeDeclaredAndChecked(self) -> None:
        """SIZE is declared (RFC 1870); a message over the limit fails before MAIL."""
        h = self.ready(b"250-x\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x" * 101)
        f = self.failureResultOf(d, SMTPUnsupportedError)
        self.assertIn("101", str(f.value))
        self.assertTrue(f.value.permanent)
        self.assertEqual(h.sent(), b"")
        h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x" * 100)
        self.assertIn(b" SIZE=100\r\n", h.sent())

    def test_eightBit(self) -> None:
        """BODY=8BITMIME for an 8-bit body only (RFC 6152)."""
        h = self.ready()
        h.protocol.sendMessage("a@example.com", ["b@example.com"], "caf\u00e9".encode())
        self.assertIn(b"BODY=8BITMIME", h.sent())
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        h.server(b"250 ok\r\n")
        h.protocol.sendMessage("a@example.com", ["b@example.com"], b"plain")
        self.assertNotIn(b"BODY=", h.sent())

    def test_eightBitWithout8BITMIME(self) -> None:
        h = self.ready(b"250-x\r\n250 PIPELINING\r\n")
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"\xff")
        self.failureResultOf(d, SMTPUnsupportedError)
        self.assertEqual(h.sent(), b"")

    def test_smtputf8(self) -> None:
        """A non-ASCII address needs SMTPUTF8 (RFC 6531), or fails clearly."""
        h = self.ready(b"250-x\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n")
        h.protocol.sendMessage("j\u00f6rg@example.com", ["b@example.com"], b"x")
        self.assertIn(b" SMTPUTF8\r\n", h.sent())
        h2 = self.ready()
        d = h2.protocol.sendMessage("a@example.com", ["\u00fc@example.com"], b"x")
        f = self.failureResultOf(d, SMTPUnsupportedError)
        self.assertIn("SMTPUTF8", str(f.value))
        self.assertEqual(h2.sent(), b"")

    def test_dsnParameters(self) -> None:
        """RET, ENVID (xtext), NOTIFY and ORCPT (xtext) when the server offers DSN."""
        h = self.ready()
        h.protocol.sendMessage(
            "a@example.com",
            ["b@example.com"],
            b"x",
            ret="hdrs",
            envid="id+1=2",
            notify=["success", "FAILURE"],
            orcpt="b+x@example.com",
        )
        self.assertEqual(
            h.sent(),
            b"MAIL FROM:<a@example.com> SIZE=1 RET=HDRS ENVID=id+2B1+3D2\r\n"
            b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com\r\n"
            b"DATA\r\n",
        )

    def test_dsnWithoutServerSupport(self) -> None:
        """Without DSN advertised, the DSN parameters are left out."""
        h = self.ready(b"250-x\r\n250 PIPELINING\r\n")
        h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x", ret="FULL", notify=["NEVER"])
        self.assertEqual(h.sent(), b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")

    def test_badDSN(self) -> None:
        for kwargs in (
            {"notify": ["NEVER", "SUCCESS"]},
            {"notify": []},
            {"notify": ["SOMETIMES"]},
            {"ret": "ALL"},
            {"orcpt": "bad type;x@example.com"},
        ):
            with self.assertRaises(SMTPAddressError, msg=kwargs):
                OutgoingMessage.prepare("a@example.com", ["b@example.com"], b"x", **kwargs)

    def test_controlCharacters(self) -> None:
        """
        CR, LF or another control character in an address or parameter is
        refused before anything is written (command injection).
        """
        h = self.ready()
        bad = [
            ("a@example.com\r\nRCPT TO:<evil@example.com>", ["b@example.com"], {}),
            ("a@example.com", ["b@example.com>\r\nDATA"], {}),
            ("a@example.com", ["b@exa\x00mple.com"], {}),
            ("a@example.com", ["b@example.com"], {"envid": "x\r\nRSET"}),
            ("a@example.com", ["b@example.com"], {"orcpt": "rfc822;x\n@example.com"}),
            ("a@example.com", ["b@example.com"], {"notify": ["SUCCESS\r\nQUIT"]}),
            ("a@example.com", ["b@exa mple.com"], {}),
            ("<a@example.com>", ["b@example.com"], {}),
        ]
        for sender, recipients, kwargs in bad:
            d = h.protocol.sendMessage(sender, recipients, b"x", **kwargs)
            f = self.failureResultOf(d, SMTPAddressError)
            self.assertIsInstance(f.value, ValueError)
        self.assertEqual(h.sent(), b"")
        with self.assertRaises(SMTPAddressError):
            ClientOptions(heloName="x\r\nMAIL FROM:<a@b>")
        with self.assertRaises(SMTPAddressError):
            ClientOptions(username="alice\r\n")

    def test_nullSenderAndPostmaster(self) -> None:
        h = self.ready()
        h.protocol.sendMessage("", ["Postmaster"], b"x")
        self.assertEqual(h.sent(), b"MAIL FROM:<> SIZE=1\r\nRCPT TO:<Postmaster>\r\nDATA\r\n")

    def test_noRecipients(self) -> None:
        with self.assertRaises(SMTPAddressError):
            OutgoingMessage.prepare("a@example.com", [], b"x")
        with self.assertRaises(TypeError):
            OutgoingMessage.prepare("a@example.com", "b@example.com", b"x")

    def test_lineEndingsAndStuffing(self) -> None:
        """LF and CR become CRLF, dots are stuffed, a final CRLF is added."""
        h = self.ready()
        h.protocol.sendMessage("a@example.com", ["b@example.com"], b".a\nb\r.c\r\n..d")
        h.sent()
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(h.sent(), b"..a\r\nb\r\n..c\r\n...d\r\n.\r\n")

    def test_fileStreamed(self) -> None:
        """
        A file is read in chunks as the transport asks for them, stuffed per
        line across chunk boundaries.
        """
        from txsmtp import client

        h = self.ready()
        body = b"x" * (client.CHUNK_SIZE - 2) + b"\r\n.\r\n" + b"y" * 10
        f = io.BytesIO(body)
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], f)
        self.assertIn(b"SIZE=%d" % len(body), h.sent())
        self.assertEqual(f.tell(), 0)
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        producer = h.transport.producer
        self.assertIsNotNone(producer)
        self.assertFalse(h.transport.streaming)
        out = b""
        while h.transport.producer is not None:
            producer.resumeProducing()
            out += h.sent()
        self.assertEqual(out, b"x" * (client.CHUNK_SIZE - 2) + b"\r\n..\r\n" + b"y" * 10 + b"\r\n.\r\n")
        h.server(b"250 ok\r\n")
        self.successResultOf(d)

    def test_fileFromMiddle(self) -> None:
        """A file is sent from its current position."""
        h = self.ready()
        f = io.BytesIO(b"skip me|Subject: x\r\n\r\nbody\r\n")
        f.seek(8)
        h.protocol.sendMessage("a@example.com", ["b@example.com"], f)
        self.assertIn(b"SIZE=%d" % len(b"Subject: x\r\n\r\nbody\r\n"), h.sent())

    def test_notIdle(self) -> None:
        h = Harness()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        self.failureResultOf(d, SMTPClientError)


class FailureTests(unittest.TestCase):
    def ready(self, **options: Any) -> Harness:
        h = Harness(**options)
        h.setUp()
        h.sent()
        return h

    def test_421InTheMiddle(self) -> None:
        """RFC 5321 §3.8: 421 ends the session; the message fails, transient."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.sent()
        h.server(b"250 ok\r\n421 4.3.2 shutting down\r\n")
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        f = self.failureResultOf(d, SMTPServerRefused)
        self.assertEqual(f.value.code, 421)
        self.assertFalse(f.value.permanent)

    def test_closedMidData(self) -> None:
        """The server closes while the message is being sent: lost, not after data."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], io.BytesIO(b"x" * 200000))
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        h.transport.producer.resumeProducing()
        h.lose(ConnectionLost("reset by peer"))
        f = self.failureResultOf(d, SMTPConnectionLost)
        self.assertFalse(f.value.afterData)
        self.assertFalse(f.value.permanent)

    def test_closedAfterFinalDot(self) -> None:
        """Lost while waiting for the reply to the dot: the message may have arrived."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertTrue(h.sent().endswith(b"\r\n.\r\n"))
        h.lose()
        f = self.failureResultOf(d, SMTPConnectionLost)
        self.assertTrue(f.value.afterData)
        self.assertIn("may have been delivered", str(f.value))

    def test_hugeReply(self) -> None:
        """A reply of 100 KB (in 512-octet lines) is refused, not buffered."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        line = b"250-" + b"x" * 506 + b"\r\n"
        h.server(line * 200)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        f = self.failureResultOf(d, SMTPBadReplyError)
        self.assertIn("too long", str(f.value))

    def test_endlessLine(self) -> None:
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.server(b"250 " + b"x" * 100000)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.failureResultOf(d, SMTPBadReplyError)

    def test_garbage(self) -> None:
        for garbage in (b"hello there\r\n", b"2500 ok\r\n", b"999 what\r\n", b"250-a\r\n354 b\r\n", b"\x00\xff\r\n"):
            h = self.ready()
            d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
            h.server(garbage)
            self.assertTrue(h.transport.disconnecting, garbage)
            h.lose()
            self.failureResultOf(d, SMTPBadReplyError)

    def test_unsolicitedReply(self) -> None:
        """A reply to nothing means the session is out of step: drop it."""
        h = self.ready()
        h.server(b"250 surprise\r\n")
        self.assertTrue(h.transport.disconnecting)

    def test_unsolicited421(self) -> None:
        """An idle connection the server closes with 421 goes quietly."""
        h = self.ready()
        h.server(b"421 4.4.2 idle too long\r\n")
        self.assertTrue(h.transport.disconnecting)
        h.lose()

    def test_greetingTimeout(self) -> None:
        h = Harness()
        h.clock.advance(299)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.failureResultOf(h.protocol.ready, SMTPTimeoutError)

    def test_commandTimeouts(self) -> None:
        """RFC 5321 §4.5.3.2: DATA 2 minutes, the final dot 10 minutes."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.clock.advance(200)
        h.server(b"250 ok\r\n250 ok\r\n")
        # The DATA reply has its own 2 minutes from the RCPT reply.
        h.clock.advance(119)
        self.assertFalse(h.transport.disconnecting)
        h.server(b"354 go\r\n")
        h.clock.advance(599)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        f = self.failureResultOf(d, SMTPTimeoutError)
        self.assertFalse(f.value.permanent)

    def test_dataTimeout(self) -> None:
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.server(b"250 ok\r\n250 ok\r\n")
        h.clock.advance(120)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.failureResultOf(d, SMTPTimeoutError)

    def test_blockTimeout(self) -> None:
        """Sending a file: 3 minutes without progress is a timeout."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], io.BytesIO(b"x" * 200000))
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        h.clock.advance(100)
        h.transport.producer.resumeProducing()
        h.clock.advance(179)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.failureResultOf(d, SMTPTimeoutError)

    def test_customTimeouts(self) -> None:
        h = Harness(timeouts=Timeouts(greeting=5))
        h.clock.advance(5)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.failureResultOf(h.protocol.ready, SMTPTimeoutError)

    def test_quitTimeout(self) -> None:
        h = self.ready()
        d = h.protocol.quit()
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.clock.advance(30)
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.assertIsNone(self.successResultOf(d))


class TLSTests(unittest.TestCase):
    def test_startTLS(self) -> None:
        """
        STARTTLS when offered; after the 220 the client starts TLS and says
        EHLO again, having forgotten the old extensions (RFC 3207 §4.2).
        """
        h = Harness(tls=TLSPolicy.OPPORTUNISTIC)
        h.server(b"220 x\r\n")
        h.sent()
        h.server(b"250-x\r\n250-STARTTLS\r\n250 SIZE 10\r\n")
        self.assertEqual(h.sent(), b"STARTTLS\r\n")
        self.assertEqual(h.transport.tlsStarted, [])
        h.server(b"220 2.0.0 go ahead\r\n")
        self.assertEqual(len(h.transport.tlsStarted), 1)
        self.assertTrue(h.protocol.tls)
        self.assertEqual(h.sent(), b"EHLO client.example\r\n")
        self.assertEqual(h.protocol.extensions, {})
        self.assertIsNone(h.protocol.maxMessageSize)
        h.server(b"250-x\r\n250 PIPELINING\r\n")
        self.successResultOf(h.protocol.ready)

    def test_responseInjection(self) -> None:
        """
        Replies that arrive with the 220 to STARTTLS, before the handshake,
        are thrown away (CVE-2021-38371, GHSA-vxj7-4xrp-5vr4).
        """
        h = Harness(tls=TLSPolicy.OPPORTUNISTIC)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 STARTTLS\r\n")
        h.sent()
        h.server(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(h.sent(), b"EHLO client.example\r\n")
        self.assertNoResult(h.protocol.ready)
        self.assertEqual(h.protocol.extensions, {})
        # The next reply answers the new EHLO.
        h.server(b"250-real\r\n250 PIPELINING\r\n")
        self.successResultOf(h.protocol.ready)
        self.assertNotIn("AUTH", h.protocol.extensions)

    def test_responseInjectionPartial(self) -> None:
        """Half a line after the 220 is thrown away too."""
        h = Harness(tls=TLSPolicy.OPPORTUNISTIC)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 STARTTLS\r\n")
        h.sent()
        h.server(b"220 go ahead\r\n250 inj")
        h.server(b"250 PIPELINING\r\n")
        self.successResultOf(h.protocol.ready)
        self.assertEqual(h.protocol.extensions, {})

    def test_requireWithoutSTARTTLS(self) -> None:
        h = Harness(tls=TLSPolicy.REQUIRE)
        h.server(b"220 x\r\n")
        h.server(b"250 x\r\n")
        self.assertEqual(h.sent(), b"EHLO client.example\r\nQUIT\r\n")
        h.server(b"221 bye\r\n")
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPTLSError)
        self.assertIn("does not offer STARTTLS", str(f.value))
        self.assertTrue(f.value.permanent)

    def test_verifyWithoutSTARTTLS(self) -> None:
        """The default policy goes on in plaintext with a server without STARTTLS."""
        h = Harness(tls=TLSPolicy.VERIFY)
        h.server(b"220 x\r\n")
        h.server(b"250 x\r\n")
        self.successResultOf(h.protocol.ready)
        self.assertFalse(h.protocol.tls)

    def test_noneIgnoresSTARTTLS(self) -> None:
        h = Harness(tls=TLSPolicy.NONE)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 STARTTLS\r\n")
        self.successResultOf(h.protocol.ready)
        self.assertEqual(h.transport.tlsStarted, [])

    def test_startTLSRefused(self) -> None:
        """454: fatal when verifying (a downgrade), tolerated when opportunistic."""
        h = Harness(tls=TLSPolicy.VERIFY)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 STARTTLS\r\n")
        h.sent()
        h.server(b"454 4.7.0 TLS not available\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPTLSError)
        self.assertFalse(f.value.permanent)
        h = Harness(tls=TLSPolicy.OPPORTUNISTIC)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 STARTTLS\r\n")
        h.server(b"454 4.7.0 TLS not available\r\n")
        self.successResultOf(h.protocol.ready)
        self.assertFalse(h.protocol.tls)

    def test_policyFromString(self) -> None:
        self.assertIs(ClientOptions(tls="require").tls, TLSPolicy.REQUIRE)
        with self.assertRaises(ValueError):
            ClientOptions(tls="sometimes")

    def test_implicitTLS(self) -> None:
        """Port 465 means TLS from the first byte (RFC 8314)."""
        self.assertTrue(ClientOptions(port=465).implicitTLS)
        self.assertFalse(ClientOptions(port=587).implicitTLS)
        h = Harness(port=465)
        self.assertEqual(len(h.transport.tlsStarted), 1)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 STARTTLS\r\n")
        # Already under TLS: no STARTTLS.
        self.successResultOf(h.protocol.ready)

    def test_verifiedOptions(self) -> None:
        """VERIFY and REQUIRE check the certificate against the host name."""
        from twisted.internet import ssl

        options = ClientOptions(host="mail.example.com").tlsOptions()
        self.assertIsInstance(options, ssl.optionsForClientTLS("x").__class__)
        self.assertEqual(options._hostnameASCII, "mail.example.com")
        options = ClientOptions(host="10.0.0.1", tlsHostname="mx.example.net").tlsOptions()
        self.assertEqual(options._hostnameASCII, "mx.example.net")


class AuthTests(unittest.TestCase):
    def ready(self, ehlo: bytes, **options: Any) -> Harness:
        h = Harness(tls=TLSPolicy.OPPORTUNISTIC, username="alice", password="secret", **options)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 STARTTLS\r\n")
        h.server(b"220 go\r\n")
        self.assertEqual(h.sent(), b"EHLO client.example\r\nSTARTTLS\r\nEHLO client.example\r\n")
        h.server(ehlo)
        return h

    def test_plain(self) -> None:
        h = self.ready(b"250-x\r\n250 AUTH PLAIN LOGIN\r\n")
        self.assertEqual(h.sent(), b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n")
        h.server(b"235 2.7.0 ok\r\n")
        self.successResultOf(h.protocol.ready)
        self.assertEqual(h.protocol.authenticated, "PLAIN")

    def test_login(self) -> None:
        h = self.ready(b"250-x\r\n250 AUTH LOGIN\r\n")
        self.assertEqual(h.sent(), b"AUTH LOGIN\r\n")
        h.server(b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(h.sent(), base64.b64encode(b"alice") + b"\r\n")
        h.server(b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(h.sent(), base64.b64encode(b"secret") + b"\r\n")
        h.server(b"235 ok\r\n")
        self.assertEqual(h.protocol.authenticated, "LOGIN")

    def test_scramAgainstServerMechanism(self) -> None:
        """SCRAM-SHA-256 is preferred; the server's signature is checked."""
        h = self.ready(b"250-x\r\n250 AUTH PLAIN CRAM-MD5 SCRAM-SHA-256\r\n")
        line = h.sent()
        self.assertTrue(line.startswith(b"AUTH SCRAM-SHA-256 "))
        server = sasl.ScramSHA256("server.example")
        server.start(base64.b64decode(line.split()[2]))
        challenge = server.useRandomSalt()
        h.server(b"334 " + base64.b64encode(challenge.data) + b"\r\n")
        credentials = server.respond(base64.b64decode(h.sent().strip()))
        self.assertTrue(credentials.credentials.checkPassword(b"secret"))
        h.server(b"334 " + base64.b64encode(server.serverFinal()) + b"\r\n")
        self.assertEqual(h.sent(), b"\r\n")
        h.server(b"235 2.7.0 ok\r\n")
        self.assertEqual(self.successResultOf(h.protocol.ready).authenticated, "SCRAM-SHA-256")

    def test_scramWithoutServerProof(self) -> None:
        """A server that says 235 without proving it knows the password is refused."""
        h = self.ready(b"250-x\r\n250 AUTH SCRAM-SHA-256\r\n")
        line = h.sent()
        server = sasl.ScramSHA256("server.example")
        server.start(base64.b64decode(line.split()[2]))
        h.server(b"334 " + base64.b64encode(server.useRandomSalt().data) + b"\r\n")
        h.sent()
        h.server(b"235 welcome, whoever you are\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.lose()
        self.failureResultOf(h.protocol.ready, SMTPAuthError)

    def test_refused(self) -> None:
        h = self.ready(b"250-x\r\n250 AUTH PLAIN\r\n")
        h.sent()
        h.server(b"535 5.7.8 bad credentials\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPAuthError)
        self.assertEqual(f.value.reply.code, 535)
        self.assertTrue(f.value.permanent)

    def test_badChallenge(self) -> None:
        """A challenge that is not base64 cancels the exchange with '*'."""
        h = self.ready(b"250-x\r\n250 AUTH LOGIN\r\n")
        h.sent()
        h.server(b"334 not base64!\r\n")
        self.assertEqual(h.sent(), b"*\r\n")
        h.server(b"501 5.7.0 cancelled\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.lose()
        self.failureResultOf(h.protocol.ready, SMTPAuthError)

    def test_noAuthOffered(self) -> None:
        h = self.ready(b"250 x\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPAuthError)
        self.assertIn("does not offer AUTH", str(f.value))

    def test_noUsableMechanism(self) -> None:
        h = self.ready(b"250 AUTH GSSAPI\r\n".join([b"250-x\r\n", b""]), authMechanisms=["PLAIN"])
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPAuthError)
        self.assertIn("GSSAPI", str(f.value))

    def test_restrictedMechanisms(self) -> None:
        h = self.ready(b"250-x\r\n250 AUTH SCRAM-SHA-256 PLAIN\r\n", authMechanisms=["PLAIN"])
        self.assertTrue(h.sent().startswith(b"AUTH PLAIN "))

    def test_xoauth2(self) -> None:
        h = Harness(tls=TLSPolicy.OPPORTUNISTIC, port=465, username="alice", oauthToken="tok")
        h.server(b"220 x\r\n")
        h.sent()
        h.server(b"250-x\r\n250 AUTH XOAUTH2 PLAIN\r\n")
        self.assertEqual(
            h.sent(), b"AUTH XOAUTH2 " + base64.b64encode(b"user=alice\x01auth=Bearer tok\x01\x01") + b"\r\n"
        )
        h.server(b"334 " + base64.b64encode(b'{"status":"401"}') + b"\r\n")
        self.assertEqual(h.sent(), b"\r\n")
        h.server(b"535 5.7.8 invalid token\r\n")
        h.lose()
        self.failureResultOf(h.protocol.ready, SMTPAuthError)

    def test_neverInPlaintext(self) -> None:
        """Credentials are not sent without TLS unless allowed."""
        h = Harness(tls=TLSPolicy.NONE, username="alice", password="secret")
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(h.sent(), b"EHLO client.example\r\nQUIT\r\n")
        h.lose()
        f = self.failureResultOf(h.protocol.ready, SMTPAuthError)
        self.assertIn("without TLS", str(f.value))
        h = Harness(tls=TLSPolicy.NONE, username="alice", password="secret", allowPlaintextAuth=True)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 AUTH PLAIN\r\n")
        self.assertIn(b"AUTH PLAIN", h.sent())

    def test_longInitialResponse(self) -> None:
        """An initial response that would make the line too long waits for the 334."""
        h = Harness(tls=TLSPolicy.OPPORTUNISTIC, port=465, username="alice", password="p" * 600)
        h.server(b"220 x\r\n")
        h.sent()
        h.server(b"250-x\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(h.sent(), b"AUTH PLAIN\r\n")
        h.server(b"334 \r\n")
        self.assertEqual(h.sent(), base64.b64encode(b"\0alice\0" + b"p" * 600) + b"\r\n")


EHLO_CHUNKING = b"250-x\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"


class ChunkingTests(unittest.TestCase):
    def ready(self, **options: Any) -> Harness:
        h = Harness(**options)
        h.setUp(EHLO_CHUNKING)
        h.sent()
        return h

    def test_bdat(self) -> None:
        """
        With CHUNKING and PIPELINING the whole message is one group: MAIL,
        RCPT, BDAT n LAST and the octets, not dot-stuffed (RFC 3030).
        """
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b".a\n.\n")
        self.assertEqual(
            h.sent(),
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 7 LAST\r\n.a\r\n.\r\n",
        )
        h.server(b"250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n")
        self.assertEqual(self.successResultOf(d).reply.text, "queued")

    def test_chunkingDisabled(self) -> None:
        h = self.ready(chunking=False)
        h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        self.assertTrue(h.sent().endswith(b"DATA\r\n"))

    def test_bdatFile(self) -> None:
        from txsmtp import client

        h = self.ready()
        body = b"x" * client.CHUNK_SIZE + b"tail"
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], io.BytesIO(body))
        self.assertEqual(h.sent(), b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        producer = h.transport.producer
        producer.resumeProducing()
        self.assertEqual(h.sent(), b"BDAT %d\r\n" % client.CHUNK_SIZE + b"x" * client.CHUNK_SIZE)
        producer.resumeProducing()
        # The short last read ends the message: it goes with the end (the
        # CRLF the message lacked) in one LAST chunk.
        self.assertEqual(h.sent(), b"BDAT 6 LAST\r\ntail\r\n")
        self.assertIsNone(h.transport.producer)
        h.server(b"250 ok\r\n250 ok\r\n250 ok\r\n250 done\r\n")
        self.assertEqual(self.successResultOf(d).reply.text, "done")

    def test_bdatRecipientsRefusedStopsStreaming(self) -> None:
        from txsmtp import client

        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], io.BytesIO(b"x" * 3 * client.CHUNK_SIZE))
        h.sent()
        h.transport.producer.resumeProducing()
        h.sent()
        h.server(b"250 ok\r\n550 no\r\n")
        self.assertIsNone(h.transport.producer)
        self.assertEqual(h.sent(), b"")
        h.server(b"503 5.5.1 no valid recipients\r\n")
        self.assertEqual(h.sent(), b"RSET\r\n")
        h.server(b"250 ok\r\n")
        self.failureResultOf(d, SMTPRecipientsRefused)

    def test_bdatRefusedAll(self) -> None:
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.sent()
        h.server(b"250 ok\r\n550 no\r\n554 5.5.1 no recipients\r\n")
        self.assertEqual(h.sent(), b"RSET\r\n")
        h.server(b"250 ok\r\n")
        self.failureResultOf(d, SMTPRecipientsRefused)


class LMTPTests(unittest.TestCase):
    def ready(self) -> Harness:
        h = Harness(LMTPClient)
        h.server(b"220 lmtp.example LMTP\r\n")
        self.assertEqual(h.sent(), b"LHLO client.example\r\n")
        h.server(b"250-lmtp.example\r\n250 ENHANCEDSTATUSCODES\r\n")
        self.successResultOf(h.protocol.ready)
        return h

    def test_perRecipientReplies(self) -> None:
        """RFC 2033 §4.2: one reply per accepted recipient, in RCPT order."""
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@x", "c@x", "d@x"], b"x")
        # LMTP servers always pipeline.
        self.assertEqual(
            h.sent(), b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nRCPT TO:<d@x>\r\nDATA\r\n"
        )
        h.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no c\r\n250 ok\r\n354 go\r\n")
        h.sent()
        h.server(b"250 2.0.0 b stored\r\n")
        self.assertNoResult(d)
        h.server(b"452 4.2.2 d over quota\r\n")
        result = self.successResultOf(d)
        self.assertEqual(result.accepted, ["b@x"])
        self.assertEqual(result.recipients["b@x"].text, "b stored")
        self.assertEqual(result.refused["c@x"].code, 550)
        self.assertEqual(result.refused["d@x"].enhanced, "4.2.2")

    def test_allFailAfterData(self) -> None:
        h = self.ready()
        d = h.protocol.sendMessage("a@example.com", ["b@x", "c@x"], b"x")
        h.server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        h.server(b"452 full\r\n552 too big\r\n")
        f = self.failureResultOf(d, SMTPRecipientsRefused)
        self.assertEqual(sorted(f.value.recipients), ["b@x", "c@x"])
        self.assertFalse(f.value.permanent)

    def test_noHeloFallback(self) -> None:
        h = Harness(LMTPClient)
        h.server(b"220 x\r\n")
        h.sent()
        h.server(b"500 what\r\n")
        self.assertEqual(h.sent(), b"QUIT\r\n")

    def test_factoryChoosesLMTP(self) -> None:
        factory = SMTPClientFactory(ClientOptions(lmtp=True))
        self.assertIsInstance(factory.buildProtocol(None), LMTPClient)


class FakeEndpoint:
    """Connects factories to in-memory transports; the test plays the servers."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.connections: list[Harness] = []
        self.fail: list[Exception] = []

    def connect(self, factory: SMTPClientFactory) -> defer.Deferred[ESMTPClient]:
        if self.fail:
            return defer.fail(self.fail.pop(0))
        proto = factory.buildProtocol(None)
        h = Harness.__new__(Harness)
        h.protocol = proto
        h.clock = self.clock
        h.transport = TLSStringTransport()
        h.closed = False
        proto.makeConnection(h.transport)
        self.connections.append(h)
        return defer.succeed(proto)


class MailerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint(self.clock)

    def mailer(self, **kw: Any) -> Mailer:
        kw.setdefault("tls", TLSPolicy.NONE)
        kw.setdefault("heloName", "client.example")
        return Mailer("server.example", endpoint=self.endpoint, reactor=self.clock, **kw)

    def accept(self, h: Harness, groups: int = 1) -> None:
        for _ in range(groups):
            h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")

    def test_poolLimit(self) -> None:
        """At most poolSize connections; the rest wait in the queue."""
        m = self.mailer(poolSize=2)
        ds = [m.send("a@example.com", ["b@example.com"], b"m%d" % i) for i in range(5)]
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertEqual(m.queued, 5)
        for h in self.endpoint.connections:
            h.setUp()
        self.assertEqual(m.queued, 3)
        for d in ds:
            self.assertNoResult(d)

    def test_nextMessagePipelined(self) -> None:
        """
        The next queued message's MAIL, RCPT and DATA leave in the same
        write as the end of the current one.
        """
        m = self.mailer(poolSize=1)
        d1 = m.send("a@example.com", ["b@example.com"], b"one")
        d2 = m.send("a@example.com", ["c@example.com"], b"two")
        [h] = self.endpoint.connections
        h.setUp()
        self.assertEqual(h.sent(), b"MAIL FROM:<a@example.com> SIZE=3\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        writes: list[bytes] = []
        h.transport.write = writes.append  # type: ignore[method-assign]
        self.accept(h)
        self.assertEqual(
            writes,
            [b"one\r\n.\r\nMAIL FROM:<a@example.com> SIZE=3\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"],
        )
        writes.clear()
        h.server(b"250 first\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(self.successResultOf(d1).reply.text, "first")
        self.assertEqual(writes, [b"two\r\n.\r\n"])
        h.server(b"250 second\r\n")
        self.assertEqual(self.successResultOf(d2).reply.text, "second")

    def test_close(self) -> None:
        """close() waits for queued messages, then QUIT on every connection."""
        m = self.mailer(poolSize=1)
        d1 = m.send("a@example.com", ["b@example.com"], b"one")
        closed = m.close()
        self.failureResultOf(m.send("a@example.com", ["b@example.com"], b"late"), SMTPClientError)
        [h] = self.endpoint.connections
        h.setUp()
        h.sent()
        self.accept(h)
        self.assertNoResult(closed)
        h.server(b"250 ok\r\n")
        self.successResultOf(d1)
        self.assertEqual(h.sent(), b"one\r\n.\r\nQUIT\r\n")
        self.assertNoResult(closed)
        h.server(b"221 bye\r\n")
        h.lose()
        self.assertIsNone(self.successResultOf(closed))
        self.assertEqual(m.connections, 0)

    def test_idleTimeout(self) -> None:
        m = self.mailer(poolSize=1, idleTimeout=30)
        d = m.send("a@example.com", ["b@example.com"], b"one")
        [h] = self.endpoint.connections
        h.setUp()
        self.accept(h)
        h.server(b"250 ok\r\n")
        self.successResultOf(d)
        h.sent()
        self.clock.advance(29)
        self.assertEqual(h.sent(), b"")
        self.clock.advance(1)
        self.assertEqual(h.sent(), b"QUIT\r\n")
        h.server(b"221 bye\r\n")
        h.lose()
        self.assertEqual(m.connections, 0)
        # A new message opens a new connection.
        m.send("a@example.com", ["b@example.com"], b"two")
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_reuse(self) -> None:
        """An idle connection takes the next message."""
        m = self.mailer(poolSize=3)
        d = m.send("a@example.com", ["b@example.com"], b"one")
        [h] = self.endpoint.connections
        h.setUp()
        self.accept(h)
        h.server(b"250 ok\r\n")
        self.successResultOf(d)
        h.sent()
        m.send("a@example.com", ["b@example.com"], b"two")
        self.assertEqual(len(self.endpoint.connections), 1)
        self.assertTrue(h.sent().startswith(b"MAIL FROM:"))

    def test_retryBeforeData(self) -> None:
        """A connection lost before the final dot: the message goes again on a new one."""
        m = self.mailer(poolSize=1)
        d = m.send("a@example.com", ["b@example.com"], b"one")
        [h] = self.endpoint.connections
        h.setUp()
        h.server(b"250 ok\r\n")
        h.lose(ConnectionLost("reset"))
        self.assertNoResult(d)
        self.assertEqual(len(self.endpoint.connections), 2)
        h2 = self.endpoint.connections[1]
        h2.setUp()
        self.assertTrue(h2.sent().startswith(b"MAIL FROM:<a@example.com>"))
        self.accept(h2)
        h2.server(b"250 ok\r\n")
        self.successResultOf(d)

    def test_retryOnlyOnce(self) -> None:
        m = self.mailer(poolSize=1)
        d = m.send("a@example.com", ["b@example.com"], b"one")
        for n in range(2):
            h = self.endpoint.connections[n]
            h.setUp()
            h.lose(ConnectionLost("reset"))
        self.failureResultOf(d, SMTPConnectionLost)
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_noRetryAfterData(self) -> None:
        """Never after the final dot: the server may have the message."""
        m = self.mailer(poolSize=1)
        d = m.send("a@example.com", ["b@example.com"], b"one")
        [h] = self.endpoint.connections
        h.setUp()
        self.accept(h)
        h.lose(ConnectionLost("reset"))
        f = self.failureResultOf(d, SMTPConnectionLost)
        self.assertTrue(f.value.afterData)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_pipelinedNextRetried(self) -> None:
        """
        The connection breaks after the first message's dot, with the second
        message's MAIL already sent: the first fails (afterData), the second
        goes again on a new connection.
        """
        m = self.mailer(poolSize=1)
        d1 = m.send("a@example.com", ["b@example.com"], b"one")
        d2 = m.send("a@example.com", ["c@example.com"], b"two")
        [h] = self.endpoint.connections
        h.setUp()
        self.accept(h)
        h.lose(ConnectionLost("reset"))
        self.assertTrue(self.failureResultOf(d1, SMTPConnectionLost).value.afterData)
        self.assertNoResult(d2)
        h2 = self.endpoint.connections[1]
        h2.setUp()
        self.assertIn(b"RCPT TO:<c@example.com>", h2.sent())

    def test_retryFile(self) -> None:
        """A file message is read again from where it started."""
        m = self.mailer(poolSize=1)
        from txsmtp import client

        body = b"x" * client.CHUNK_SIZE + b"the message\r\n"
        f = io.BytesIO(b"head|" + body)
        f.seek(5)
        d = m.send("a@example.com", ["b@example.com"], f)
        [h] = self.endpoint.connections
        h.setUp()
        self.accept(h)
        h.transport.producer.resumeProducing()
        self.assertIsNotNone(h.transport.producer)
        h.lose(ConnectionLost("reset"))
        # The end of the message had not gone out yet: retried.
        self.assertNoResult(d)
        h2 = self.endpoint.connections[1]
        h2.setUp()
        h2.sent()
        self.accept(h2)
        while h2.transport.producer is not None:
            h2.transport.producer.resumeProducing()
        self.assertEqual(h2.sent(), body + b".\r\n")

    def test_connectFailure(self) -> None:
        """A connection that cannot be made is tried once more, then the message fails."""
        from twisted.internet.error import ConnectionRefusedError

        self.endpoint.fail = [ConnectionRefusedError(), ConnectionRefusedError()]
        m = self.mailer(poolSize=1)
        d = m.send("a@example.com", ["b@example.com"], b"one")
        f = self.failureResultOf(d, SMTPConnectError)
        self.assertIn("server.example", str(f.value))
        self.assertFalse(f.value.permanent)
        self.assertEqual(m.connections, 0)

    def test_permanentSetupFailure(self) -> None:
        """A permanent refusal of the session fails every queued message at once."""
        m = self.mailer(poolSize=1)
        ds = [m.send("a@example.com", ["b@example.com"], b"m") for _ in range(3)]
        [h] = self.endpoint.connections
        h.server(b"554 go away\r\n")
        h.server(b"221 bye\r\n")
        h.lose()
        for d in ds:
            self.failureResultOf(d, SMTPServerRefused)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_unsupportedMessageDoesNotStall(self) -> None:
        """A message the connection cannot carry fails; the next one is sent."""
        m = self.mailer(poolSize=1)
        d1 = m.send("a@example.com", ["\u00fc@example.com"], b"x")
        d2 = m.send("a@example.com", ["b@example.com"], b"y")
        [h] = self.endpoint.connections
        h.setUp()
        self.failureResultOf(d1, SMTPUnsupportedError)
        self.assertIn(b"RCPT TO:<b@example.com>", h.sent())
        self.assertNoResult(d2)

    def test_manyUnsupportedMessages(self) -> None:
        """Thousands of messages failing at once do not recurse."""
        m = self.mailer(poolSize=1)
        ds = [m.send("a@example.com", ["\u00fc@example.com"], b"x") for _ in range(3000)]
        [h] = self.endpoint.connections
        h.setUp()
        for d in ds:
            self.failureResultOf(d, SMTPUnsupportedError)

    def test_refusalsDoNotRetry(self) -> None:
        m = self.mailer(poolSize=1)
        d = m.send("a@example.com", ["b@example.com"], b"one")
        [h] = self.endpoint.connections
        h.setUp()
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        h.server(b"451 4.3.0 later\r\n")
        self.failureResultOf(d, SMTPMessageRefused)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_badPool(self) -> None:
        with self.assertRaises(ValueError):
            Mailer("x", poolSize=0)


class SendmailTests(unittest.TestCase):
    def test_sendmailClosesFirst(self) -> None:
        """sendmail's Deferred fires once the connection has said QUIT and closed."""
        clock = Clock()
        endpoint = FakeEndpoint(clock)
        d = sendmail(
            "server.example", "a@example.com", ["b@example.com"], b"x",
            endpoint=endpoint, reactor=clock, tls=TLSPolicy.NONE, heloName="client.example",
        )
        [h] = endpoint.connections
        h.setUp()
        # (The reply to the dot comes in a read of its own: one in the same
        # read as the 354 would answer a message not yet sent.)
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        h.server(b"250 ok\r\n")
        self.assertEqual(h.sent(), b"MAIL FROM:<a@example.com> SIZE=1\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n")
        self.assertNoResult(d)
        h.server(b"221 bye\r\n")
        h.lose()
        self.assertEqual(self.successResultOf(d).accepted, ["b@example.com"])

    def test_sendmailFailure(self) -> None:
        clock = Clock()
        endpoint = FakeEndpoint(clock)
        d = sendmail(
            "server.example", "a@example.com", ["b@example.com"], b"x",
            endpoint=endpoint, reactor=clock, tls=TLSPolicy.NONE, heloName="client.example",
        )
        [h] = endpoint.connections
        h.setUp()
        h.server(b"550 no\r\n503 no\r\n503 no\r\n")
        h.server(b"250 reset\r\n")
        h.server(b"221 bye\r\n")
        h.lose()
        self.failureResultOf(d, SMTPSenderRefused)

    def test_badArguments(self) -> None:
        d = sendmail("server.example", "a@example.com", ["b@exa\nmple.com"], b"x", tls=TLSPolicy.NONE)
        self.failureResultOf(d, SMTPAddressError)


class LoopbackTests(unittest.TestCase):
    """The client over real loopback connections to txsmtp's server."""

    def listen(self, interface: str) -> tuple[Any, int]:
        from twisted.internet import reactor

        from txsmtp.server import SMTPFactory
        from txsmtp.testing import MemoryDelivery

        delivery = MemoryDelivery()
        factory = SMTPFactory(delivery, "test.invalid")
        port = reactor.listenTCP(0, factory, interface=interface)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return delivery, port.getHost().port

    @defer.inlineCallbacks
    def test_ipv6(self) -> Any:
        """An IPv6 address literal as the host (RFC 5321 MX hosts may be IPv6-only)."""
        import socket

        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback on this machine") from None
        delivery, port = self.listen("::1")
        result = yield sendmail("::1", "a@example.com", ["b@example.com"], b"over v6\n", port=port, tls=TLSPolicy.NONE)
        self.assertEqual(result.accepted, ["b@example.com"])
        [stored] = delivery.messages
        self.assertTrue(stored.data.endswith(b"over v6\r\n"))
        self.assertIn("::1", str(stored.envelope.connection.peer))

    @defer.inlineCallbacks
    def test_connectionRefused(self) -> Any:
        """Nobody listening: SMTPConnectError, transient, after one retry."""
        from twisted.internet import reactor

        port = reactor.listenTCP(0, SMTPClientFactory(ClientOptions()), interface="127.0.0.1")  # type: ignore[attr-defined]
        number = port.getHost().port
        yield port.stopListening()
        with self.assertRaises(SMTPConnectError) as cm:
            yield sendmail("127.0.0.1", "a@example.com", ["b@example.com"], b"x", port=number, tls=TLSPolicy.NONE)
        self.assertFalse(cm.exception.permanent)
        self.assertIn(str(number), str(cm.exception))

    @defer.inlineCallbacks
    def test_fileAndLargeMessageOverTCP(self) -> Any:
        """
        A file, and bytes over 1 MiB, are streamed by a pull producer; on a
        real TCP transport the producer must keep being asked for more.
        """
        delivery, port = self.listen("127.0.0.1")
        line = b"x" * 998 + b"\r\n"
        big = line * 2000  # 2 MB
        result = yield sendmail("127.0.0.1", "a@example.com", ["b@example.com"], big, port=port, tls=TLSPolicy.NONE)
        self.assertEqual(result.accepted, ["b@example.com"])
        f = io.BytesIO(b".starts with a dot\r\n" + line * 300)
        result = yield sendmail("127.0.0.1", "a@example.com", ["b@example.com"], f, port=port, tls=TLSPolicy.NONE)
        self.assertEqual(result.accepted, ["b@example.com"])
        first, second = delivery.messages
        self.assertTrue(first.data.endswith(big))
        self.assertTrue(second.data.endswith(b"\r\n.starts with a dot\r\n" + line * 300))


class FixesTests(unittest.TestCase):
    """Behaviours found in review."""

    def test_unreachableWithSeveralQueued(self) -> None:
        """Every connection attempt fails: every message fails, and close() fires."""
        from twisted.internet.error import ConnectionRefusedError

        clock = Clock()
        endpoint = FakeEndpoint(clock)
        endpoint.fail = [ConnectionRefusedError() for _ in range(20)]
        m = Mailer("server.example", poolSize=4, endpoint=endpoint, reactor=clock, tls=TLSPolicy.NONE)
        ds = [m.send("a@example.com", ["b@example.com"], b"x") for _ in range(3)]
        for d in ds:
            self.failureResultOf(d, SMTPConnectError)
        self.assertIsNone(self.successResultOf(m.close()))

    def test_unseekableReaderNotRetried(self) -> None:
        """A reader with only read() is not sent twice, and its failure is reported."""

        class Reader:
            def __init__(self) -> None:
                self.data = io.BytesIO(b"hello\r\n")

            def read(self, n: int = -1) -> bytes:
                return self.data.read(n)

        clock = Clock()
        endpoint = FakeEndpoint(clock)
        m = Mailer("server.example", poolSize=1, endpoint=endpoint, reactor=clock, tls=TLSPolicy.NONE, heloName="client.example")
        d = m.send("a@example.com", ["b@example.com"], Reader())
        [h] = endpoint.connections
        h.setUp()
        h.lose(ConnectionLost("reset"))
        self.failureResultOf(d, SMTPConnectionLost)
        self.assertEqual(len(endpoint.connections), 1)

    def test_factoryClassSubclass(self) -> None:
        """Mailer.factoryClass is the factory (its endpoint() is used), not just its protocol."""
        clock = Clock()
        endpoint = FakeEndpoint(clock)

        class MyFactory(SMTPClientFactory):
            def endpoint(self) -> Any:
                return endpoint

        class MyMailer(Mailer):
            factoryClass = MyFactory

        m = MyMailer("server.example", poolSize=1, reactor=clock, tls=TLSPolicy.NONE)
        m.send("a@example.com", ["b@example.com"], b"x")
        self.assertEqual(len(endpoint.connections), 1)

    def test_timeoutAfterDataSaysSo(self) -> None:
        h = Harness()
        h.setUp()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], b"x")
        h.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        h.clock.advance(600)
        h.lose()
        f = self.failureResultOf(d, SMTPTimeoutError)
        self.assertTrue(f.value.afterData)
        self.assertIn("may have been delivered", str(f.value))

    def test_opportunisticHandshakeFailureIsTransient(self) -> None:
        for policy, permanent in ((TLSPolicy.OPPORTUNISTIC, False), (TLSPolicy.VERIFY, True)):
            h = Harness(tls=policy)
            h.server(b"220 x\r\n")
            h.server(b"250-x\r\n250 STARTTLS\r\n")
            h.server(b"220 go\r\n")
            h.lose(ConnectionLost("handshake failure"))
            f = self.failureResultOf(h.protocol.ready, SMTPTLSError)
            self.assertEqual(f.value.permanent, permanent, policy)

    def test_lmtpAllRefusedListsEveryone(self) -> None:
        h = Harness(LMTPClient)
        h.server(b"220 x\r\n")
        h.server(b"250-x\r\n250 PIPELINING\r\n")
        d = h.protocol.sendMessage("a@example.com", ["b@x", "c@x"], b"x")
        h.server(b"250 ok\r\n250 ok\r\n550 no c\r\n354 go\r\n")
        h.server(b"452 b full\r\n")
        f = self.failureResultOf(d, SMTPRecipientsRefused)
        self.assertEqual({r: reply.code for r, reply in f.value.recipients.items()}, {"b@x": 452, "c@x": 550})

    def test_lmtpNeedsLMTPProtocol(self) -> None:
        class Custom(ESMTPClient):
            pass

        class F(SMTPClientFactory):
            protocol = Custom

        with self.assertRaises(TypeError):
            F(ClientOptions(lmtp=True))

    def test_utf8Headers(self) -> None:
        """UTF-8 headers (RFC 6532): SMTPUTF8 when offered, plain 8-bit otherwise."""
        message = "Subject: caf\u00e9\r\n\r\nbody\r\n".encode()
        h = Harness()
        h.setUp(b"250-x\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
        h.sent()
        h.protocol.sendMessage("a@example.com", ["b@example.com"], message)
        self.assertEqual(h.sent().split(b"\r\n")[0], b"MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8")
        h = Harness()
        h.setUp(b"250-x\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        h.sent()
        d = h.protocol.sendMessage("a@example.com", ["b@example.com"], message)
        self.assertEqual(h.sent().split(b"\r\n")[0], b"MAIL FROM:<a@example.com> BODY=8BITMIME")
        self.assertNoResult(d)
        # 8-bit only in the body: no SMTPUTF8.
        self.assertFalse(OutgoingMessage.prepare("a@x.org", ["b@x.org"], "S: x\r\n\r\n\u00e9".encode()).utf8Headers)


class ReplyOrderTests(unittest.TestCase):
    """
    One queue of replies owed: a reply is matched to the oldest command that
    has been sent and not yet answered, never to one still to be written,
    and the LMTP replies after a message's data belong to that message.
    """

    def test_lmtpQueuedMessagesKeepTheirReplies(self) -> None:
        """
        Issue 11, bug 1: Mailer(lmtp=True), several queued messages with two
        recipients each, one recipient refused after the data.  The second
        per-recipient reply of message 1 must not be taken for the reply to
        message 2's MAIL, nor message 2's replies for message 3's.
        """
        clock = Clock()
        endpoint = FakeEndpoint(clock)
        m = Mailer(
            "server.example", poolSize=1, lmtp=True, endpoint=endpoint, reactor=clock,
            tls=TLSPolicy.NONE, heloName="client.example",
        )
        ds = [m.send("a@example.com", [f"b{i}@x", f"c{i}@x"], b"m%d" % i) for i in range(3)]
        [h] = endpoint.connections
        h.server(b"220 lmtp.example LMTP\r\n")
        self.assertEqual(h.sent(), b"LHLO client.example\r\n")
        h.server(b"250-lmtp.example\r\n250 PIPELINING\r\n")
        self.assertEqual(
            h.sent(), b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b0@x>\r\nRCPT TO:<c0@x>\r\nDATA\r\n"
        )
        h.server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(
            h.sent(), b"m0\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b1@x>\r\nRCPT TO:<c1@x>\r\nDATA\r\n"
        )
        # Message 0: b0 stored, c0 over quota; then message 1's group.
        h.server(b"250 2.0.0 b0 stored\r\n452 4.2.2 c0 over quota\r\n")
        h.server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(
            h.sent(), b"m1\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b2@x>\r\nRCPT TO:<c2@x>\r\nDATA\r\n"
        )
        # Message 1: both stored; message 2: b2 refused, c2 stored.
        h.server(b"250 2.0.0 b1 stored\r\n250 2.0.0 c1 stored\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(h.sent(), b"m2\r\n.\r\n")
        h.server(b"550 5.1.1 b2 gone\r\n250 2.0.0 c2 stored\r\n")
        r0, r1, r2 = (self.successResultOf(d) for d in ds)
        self.assertEqual({k: v.code for k, v in r0.recipients.items()}, {"b0@x": 250, "c0@x": 452})
        self.assertEqual(r0.recipients["b0@x"].text, "b0 stored")
        self.assertEqual(r0.recipients["c0@x"].text, "c0 over quota")
        self.assertEqual(r1.accepted, ["b1@x", "c1@x"])
        self.assertEqual([v.text for v in r1.recipients.values()], ["b1 stored", "c1 stored"])
        self.assertEqual(r2.accepted, ["c2@x"])
        self.assertEqual(r2.refused["b2@x"].text, "b2 gone")
        self.assertEqual(r2.recipients["c2@x"].text, "c2 stored")

    def test_finalReplyBeforeTheDataIsSent(self) -> None:
        """
        Issue 11, bug 11: a 250 in the same read as the 354, before the
        message was even written, answers nothing the client sent: it is an
        unexpected reply, for a small bytes message as for a streamed one.
        """
        for message in (b"x", io.BytesIO(b"x")):
            h = Harness()
            h.setUp()
            h.sent()
            d = h.protocol.sendMessage("a@example.com", ["b@example.com"], message)
            h.server(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n")
            self.assertTrue(h.transport.disconnecting)
            h.lose()
            f = self.failureResultOf(d, SMTPBadReplyError)
            self.assertIn("unexpected reply", str(f.value))
