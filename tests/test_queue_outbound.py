"""
:class:`txsmtp.queue.outbound.Outbound` through one host (``smtp`` and
``lmtp`` hops) and into the server's own delivery (``local``), with real
peers:

- Postfix's smtp-sink as the next hop: per-recipient NOTIFY and ORCPT, RET
  and ENVID as sent; RELAYED for NOTIFY=SUCCESS when the next hop offers no
  DSN (``-N``, and ``-e``: no ESMTP); its failure switches ``-r`` (4xx: deferred), ``-f``
  (5xx: failed), ``-q .`` (dropped after the final dot: deferred, and the
  message did arrive); one connection for consecutive messages, closed by
  :meth:`~txsmtp.queue.outbound.Outbound.close`;
- LMTP: smtp-sink ``-L`` over TCP, and txsmtp's LMTP server on a UNIX
  socket with a different fate for each recipient;
- a smart host (txsmtp's server) with STARTTLS verified against the test CA
  and AUTH, and the refusals: no STARTTLS, no TLS for credentials, a wrong
  password;
- the local hop into a Maildir.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import ssl as tssl
from twisted.trial import unittest

from tests.certs import certificates
from tests.outbound_helpers import BODY, REACTOR, body, freePort, listen, queued
from tests.test_client_interop import RecordingProxy, sinkForm, startSmtpSink
from txsmtp.auth import makePortal
from txsmtp.errors import SMTPError
from txsmtp.lmtp import LMTPFactory
from txsmtp.maildir import MaildirDelivery, VirtualMaildirDelivery
from txsmtp.queue.attempts import replyResult, statusOf
from txsmtp.queue.model import AttemptResult, NextHop, QueuedMessage, Result
from txsmtp.queue.outbound import Outbound
from txsmtp.queue.routing import parseRelayHost, parseRoute
from txsmtp.testing import MemoryDelivery
from txsmtp.tls import ServerTLS
from txsmtp.wire.reply import Reply

USER = "relay-user"
PASSWORD = "S3cret-relay-pw"


class _Base(unittest.TestCase):
    timeout = 60

    def outbound(self, **kw: Any) -> Outbound:
        outbound = Outbound("relay.test.invalid", **kw)
        self.addCleanup(outbound.close)
        return outbound

    async def deliver(self, outbound: Outbound, hop: NextHop, message: QueuedMessage) -> list[AttemptResult]:
        return await outbound.deliver(hop, message, message.recipients, body())


class SmtpSinkTests(_Base):
    """An ``smtp`` hop (a route without TLS) to smtp-sink, through the recording proxy."""

    async def sink(self, *flags: str) -> NextHop:
        self.smtpSink = await startSmtpSink(self, *flags)
        self.proxy = RecordingProxy(self, self.smtpSink.port)
        return NextHop("smtp", f"[127.0.0.1]:{self.proxy.port}", (("tls", "none"),))

    async def test_perRecipientDSN(self) -> None:
        """
        Each recipient's own NOTIFY and ORCPT, the message's RET and ENVID,
        as smtp-sink saw them; every recipient DELIVERED (smtp-sink offers
        DSN), with its reply.
        """
        hop = await self.sink()
        message = queued(
            [
                ("one@example.com", ("SUCCESS", "FAILURE"), ("rfc822", "orig+one@example.net")),
                ("two@example.com", ("NEVER",), None),
                "three@example.com",
            ],
            ret="HDRS",
            envid="env=1",
        )
        results = await self.deliver(self.outbound(), hop, message)
        self.assertEqual([r.result for r in results], [Result.DELIVERED] * 3)
        for r in results:
            self.assertEqual((r.status, r.diagnostic), ("2.0.0", "smtp; 250 2.0.0 Ok"))
            self.assertEqual(r.remoteMTA, "dns; 127.0.0.1")
            # smtp-sink took NOTIFY: success reports are its to send.
            self.assertTrue(r.passedOn)
        [dump] = self.smtpSink.newDumps()
        self.assertEqual(dump.mailArgs, b"<sender@example.org> RET=HDRS ENVID=env+3D1")
        self.assertEqual(
            dump.rcptArgs,
            [
                b"<one@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Bone@example.net",
                b"<two@example.com> NOTIFY=NEVER",
                b"<three@example.com>",
            ],
        )
        self.assertEqual(dump.body, sinkForm(BODY))

    async def test_relayedWithoutDSN(self) -> None:
        """
        ``-N``: no DSN offered: the recipient that asked for a success
        report is RELAYED, the other DELIVERED; no DSN parameter is sent.
        ``-e`` (no ESMTP at all, HELO) does the same.
        """
        hop = await self.sink("-N")
        message = queued([("one@example.com", ("SUCCESS",), None), ("two@example.com", ("FAILURE",), None)], ret="FULL")
        results = await self.deliver(self.outbound(), hop, message)
        self.assertEqual([r.result for r in results], [Result.RELAYED, Result.DELIVERED])
        self.assertTrue(results[0].reason.startswith(f"relayed to 127.0.0.1:{self.proxy.port}: 250"))
        stream = self.proxy.connections[0].clientStream
        for keyword in (b"NOTIFY=", b"RET=", b"ORCPT="):
            self.assertNotIn(keyword, stream)
        self.assertIn(b"EHLO relay.test.invalid\r\n", stream)

        hop = await self.sink("-e")
        results = await self.deliver(self.outbound(), hop, message)
        self.assertEqual([r.result for r in results], [Result.RELAYED, Result.DELIVERED])
        self.assertIn(b"HELO relay.test.invalid\r\n", self.proxy.connections[0].clientStream)

    async def test_softRefusal(self) -> None:
        """``-r RCPT``: 450 to every recipient: DEFERRED with the reply, no data sent."""
        hop = await self.sink("-r", "RCPT", "-b", "452 4.2.2 Over quota")
        results = await self.deliver(self.outbound(), hop, queued(["a@example.com", "b@example.com"]))
        for r in results:
            self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.2.2"))
            self.assertEqual(r.diagnostic, "smtp; 452 4.2.2 Over quota")
            self.assertEqual(r.reason, f"127.0.0.1:{self.proxy.port} said: 452 4.2.2 Over quota")
        self.assertEqual(self.smtpSink.newDumps(), [])

    async def test_hardRefusals(self) -> None:
        """``-f RCPT``: FAILED at RCPT; ``-f .``: FAILED after the data (500 5.3.0)."""
        hop = await self.sink("-f", "RCPT", "-B", "550 5.1.1 No such user")
        [r] = await self.deliver(self.outbound(), hop, queued(["a@example.com"]))
        self.assertEqual((r.result, r.status, r.diagnostic), (Result.FAILED, "5.1.1", "smtp; 550 5.1.1 No such user"))

        hop = await self.sink("-f", ".")
        results = await self.deliver(self.outbound(), hop, queued(["a@example.com", "b@example.com"]))
        for r in results:
            self.assertEqual((r.result, r.status), (Result.FAILED, "5.3.0"))
            self.assertTrue(r.diagnostic.startswith("smtp; 500 5.3.0 "), r.diagnostic)

    async def test_droppedAfterFinalDot(self) -> None:
        """
        ``-q .``: the connection drops after the final dot with no reply:
        DEFERRED (4.4.2), the reason saying it may have been delivered, and
        smtp-sink does have the message: the next attempt will be a duplicate.
        """
        hop = await self.sink("-q", ".")
        [r] = await self.deliver(self.outbound(), hop, queued(["a@example.com"]))
        self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.4.2"))
        self.assertIn("may have been delivered", r.reason)
        self.assertIsNone(r.diagnostic)
        [dump] = self.smtpSink.newDumps()
        self.assertEqual(dump.body, sinkForm(BODY))
        self.assertEqual(len(self.proxy.connections), 1)

    async def test_connectionReused(self) -> None:
        """
        Three messages one after the other: one connection; close() says
        QUIT on it.
        """
        hop = await self.sink()
        outbound = self.outbound()
        for n in range(3):
            [r] = await self.deliver(outbound, hop, queued([f"n{n}@example.com"], messageId=f"message{n:012d}"))
            self.assertEqual(r.result, Result.DELIVERED)
        self.assertEqual(len(self.proxy.connections), 1)
        self.assertEqual(outbound.connections, 1)
        await outbound.close()
        self.assertEqual(outbound.connections, 0)
        await self.proxy.connections[0].whenClosed()
        self.assertTrue(self.proxy.connections[0].clientStream.endswith(b"QUIT\r\n"))
        self.assertEqual(len(self.smtpSink.newDumps()), 3)
        # Closed: later attempts are deferred, without a connection.
        [r] = await self.deliver(outbound, hop, queued(["late@example.com"]))
        self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.3.2"))
        self.assertEqual(len(self.proxy.connections), 1)

    async def test_idleConnectionClosed(self) -> None:
        """
        A connection left idle for ``idleTimeout`` says QUIT and closes on
        its own (waited for as an event); the next message opens a new one.
        """
        hop = await self.sink()
        outbound = self.outbound(idleTimeout=0.2)
        [r] = await self.deliver(outbound, hop, queued(["a@example.com"]))
        self.assertEqual(r.result, Result.DELIVERED)
        await self.proxy.connections[0].whenClosed()
        self.assertTrue(self.proxy.connections[0].clientStream.endswith(b"QUIT\r\n"))
        [r] = await self.deliver(outbound, hop, queued(["b@example.com"]))
        self.assertEqual(r.result, Result.DELIVERED)
        self.assertEqual(len(self.proxy.connections), 2)

    async def test_connectionRefused(self) -> None:
        """Nothing listens: DEFERRED, 4.4.1."""
        hop = NextHop("smtp", f"[127.0.0.1]:{freePort()}", (("tls", "none"),))
        [r] = await self.deliver(self.outbound(), hop, queued(["a@example.com"]))
        self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.4.1"))
        self.assertIn("cannot connect", r.reason)

    async def test_badRecipientAddress(self) -> None:
        """An address the client cannot send fails alone (5.1.3); the others go."""
        hop = await self.sink()
        results = await self.deliver(self.outbound(), hop, queued(["bad address@example.com", "ok@example.com"]))
        self.assertEqual([r.result for r in results], [Result.FAILED, Result.DELIVERED])
        self.assertEqual(results[0].status, "5.1.3")
        [dump] = self.smtpSink.newDumps()
        self.assertEqual(dump.rcptArgs, [b"<ok@example.com>"])


class LMTPTests(_Base):
    async def test_smtpSinkLMTP(self) -> None:
        """``smtp-sink -L`` over TCP: one reply per recipient, DELIVERED even with NOTIFY=SUCCESS."""
        sink = await startSmtpSink(self, "-L")
        _, hop = parseRoute(f"example.com=lmtp:[127.0.0.1]:{sink.port}")
        message = queued([("one@example.com", ("SUCCESS",), None), "two@example.com"])
        results = await self.deliver(self.outbound(), hop, message)
        self.assertEqual([r.result for r in results], [Result.DELIVERED] * 2)
        self.assertEqual(results[0].diagnostic, "smtp; 250 2.2.0 Ok")
        [dump] = sink.newDumps()
        self.assertEqual(dump.proto, b"LMTP")

    async def test_unixSocketMixedFates(self) -> None:
        """
        txsmtp's LMTP server on a UNIX socket: one recipient refused at RCPT
        (550), one refused after the data (452), one delivered.
        """
        delivery = MemoryDelivery()
        delivery.refusedRecipients["gone@example.com"] = SMTPError(550, "5.1.1", "No such user")
        delivery.results = lambda m: [
            SMTPError(452, "4.2.2", "Mailbox full") if r == "full@example.com" else None for r in m.recipients
        ]
        directory = tempfile.mkdtemp(prefix="txsmtp-lmtp-")
        self.addCleanup(_rmtree, directory)
        path = os.path.join(directory, "lmtp")
        factory = LMTPFactory(delivery, "store.test.invalid")
        port = REACTOR.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.shutdown, 0)
        _, hop = parseRoute(f"example.com=lmtp:unix:{path}")
        message = queued(["gone@example.com", ("full@example.com", ("SUCCESS",), None), "ok@example.com"])
        results = await self.deliver(self.outbound(), hop, message)
        self.assertEqual([r.result for r in results], [Result.FAILED, Result.DEFERRED, Result.DELIVERED])
        self.assertEqual([r.status for r in results], ["5.1.1", "4.2.2", "2.0.0"])
        self.assertEqual(results[1].diagnostic, "smtp; 452 4.2.2 Mailbox full")
        self.assertIsNone(results[2].remoteMTA)
        [stored] = delivery.messages
        self.assertEqual(stored.body, BODY)


class SmartHostTests(_Base):
    """A smart host (txsmtp's server) with STARTTLS and AUTH, as ``--relay-host`` sets it up."""

    def smartHost(self, *, tls: bool = True) -> Any:
        c = certificates()
        delivery = MemoryDelivery()
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(USER.encode(), PASSWORD.encode())
        return listen(
            self,
            delivery=delivery,
            tls=ServerTLS(c.chain, c.key) if tls else None,
            portal=makePortal(delivery, [checker]),
            authFailureDelay=0,
        )

    def trustRoot(self) -> Any:
        with open(certificates().ca, "rb") as f:
            return tssl.Certificate.loadPEM(f.read())

    async def test_verifiedTLSAndAuth(self) -> None:
        """The certificate verified against the test CA, then AUTH: stored as sent by the relay user over TLS."""
        server = self.smartHost()
        hop = parseRelayHost(f"[localhost]:{server.port}")
        outbound = self.outbound(relayCredentials=(USER, PASSWORD), trustRoot=self.trustRoot())
        message = queued([("you@example.net", ("SUCCESS",), None)])
        [r] = await self.deliver(outbound, hop, message)
        self.assertEqual((r.result, r.remoteMTA), (Result.DELIVERED, "dns; localhost"))
        [stored] = server.delivery.messages
        self.assertIsNotNone(stored.envelope.connection.tls)
        self.assertEqual(stored.envelope.connection.authenticated, USER)
        self.assertEqual(stored.body, BODY)

    async def test_untrustedCertificate(self) -> None:
        """Without the test CA, the certificate does not verify: DEFERRED (4.7.5), nothing sent."""
        server = self.smartHost()
        hop = parseRelayHost(f"[localhost]:{server.port}")
        outbound = self.outbound(relayCredentials=(USER, PASSWORD))
        [r] = await self.deliver(outbound, hop, queued(["you@example.net"]))
        self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.7.5"))
        self.assertEqual(server.delivery.messages, [])

    async def test_noStartTLS(self) -> None:
        """TLS required and not offered: DEFERRED (4.7.4)."""
        server = self.smartHost(tls=False)
        hop = parseRelayHost(f"[localhost]:{server.port}")
        outbound = self.outbound(relayCredentials=(USER, PASSWORD), trustRoot=self.trustRoot())
        [r] = await self.deliver(outbound, hop, queued(["you@example.net"]))
        self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.7.4"))
        self.assertIn("does not offer STARTTLS", r.reason)
        self.assertEqual(server.delivery.messages, [])

    async def test_noCredentialsWithoutTLS(self) -> None:
        """
        tls=none with credentials: they are never sent in plaintext; the
        message is DEFERRED and the server saw no AUTH.
        """
        server = self.smartHost()
        proxy = RecordingProxy(self, server.port)
        hop = parseRelayHost(f"[localhost]:{proxy.port}", tls="none")
        outbound = self.outbound(relayCredentials=(USER, PASSWORD), trustRoot=self.trustRoot())
        [r] = await self.deliver(outbound, hop, queued(["you@example.net"]))
        self.assertEqual(r.result, Result.DEFERRED)
        self.assertIn("without TLS", r.reason)
        self.assertEqual(server.delivery.messages, [])
        for connection in proxy.connections:
            self.assertNotIn(b"AUTH", connection.clientStream)
            self.assertNotIn(PASSWORD.encode(), connection.clientStream)

    async def test_wrongPassword(self) -> None:
        """AUTH refused (535): DEFERRED, class 4 (the operator fixes the password; the mail waits)."""
        server = self.smartHost()
        hop = parseRelayHost(f"[localhost]:{server.port}")
        outbound = self.outbound(relayCredentials=(USER, "wrong"), trustRoot=self.trustRoot())
        [r] = await self.deliver(outbound, hop, queued(["you@example.net"]))
        self.assertEqual(r.result, Result.DEFERRED)
        self.assertTrue(r.status.startswith("4.7."), r.status)
        self.assertEqual(server.delivery.messages, [])

    async def test_routeGetsNoCredentials(self) -> None:
        """A --route is not the smart host: no AUTH there, even with relay credentials."""
        server = self.smartHost()
        _, hop = parseRoute(f"example.net=smtp:[localhost]:{server.port}")
        outbound = self.outbound(relayCredentials=(USER, PASSWORD))
        [r] = await self.deliver(outbound, hop, queued(["you@example.net"]))
        self.assertEqual(r.result, Result.DELIVERED)
        [stored] = server.delivery.messages
        self.assertIsNone(stored.envelope.connection.authenticated)
        # Opportunistic TLS: used, the certificate not checked.
        self.assertIsNotNone(stored.envelope.connection.tls)


class LocalTests(_Base):
    async def test_maildir(self) -> None:
        """The local hop into a Maildir: the body as queued, after Return-Path and Delivered-To."""
        directory = tempfile.mkdtemp(prefix="txsmtp-local-")
        self.addCleanup(_rmtree, directory)
        delivery = MaildirDelivery(os.path.join(directory, "Maildir"), threads=0)
        outbound = self.outbound(localDelivery=delivery)
        message = queued([("alice@example.org", ("SUCCESS",), None), "bob@example.org"])
        results = await self.deliver(outbound, NextHop("local", ""), message)
        self.assertEqual([r.result for r in results], [Result.DELIVERED] * 2)
        self.assertEqual(results[0].status, "2.0.0")
        [name] = os.listdir(os.path.join(directory, "Maildir", "new"))
        with open(os.path.join(directory, "Maildir", "new", name), "rb") as f:
            stored = f.read()
        self.assertEqual(
            stored,
            b"Return-Path: <sender@example.org>\r\nDelivered-To: alice@example.org\r\n"
            b"Delivered-To: bob@example.org\r\n" + BODY,
        )

    async def test_virtualMaildirRefusals(self) -> None:
        """A recipient without a mailbox fails (550 5.1.1); the other is delivered."""
        directory = tempfile.mkdtemp(prefix="txsmtp-virtual-")
        self.addCleanup(_rmtree, directory)
        os.makedirs(os.path.join(directory, "example.org", "alice"))
        delivery = VirtualMaildirDelivery(directory, threads=0)
        outbound = self.outbound(localDelivery=delivery)
        message = queued(["nobody@example.org", "alice@example.org"])
        results = await self.deliver(outbound, NextHop("local", ""), message)
        self.assertEqual([r.result for r in results], [Result.FAILED, Result.DELIVERED])
        self.assertEqual(results[0].status, "5.1.1")
        self.assertEqual(len(os.listdir(os.path.join(directory, "example.org", "alice", "new"))), 1)

    async def test_noLocalDelivery(self) -> None:
        """No --deliver: local recipients wait (4.3.5), they are not bounced."""
        [r] = await self.deliver(self.outbound(), NextHop("local", ""), queued(["alice@example.org"]))
        self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.3.5"))


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class ResultWordsTests(unittest.TestCase):
    """The words of :mod:`txsmtp.queue.attempts` and the checks made before any connection."""

    def test_statusOf(self) -> None:
        self.assertEqual(statusOf(550, "5.1.1"), "5.1.1")
        self.assertEqual(statusOf(550, None), "5.0.0")
        self.assertEqual(statusOf(451, None), "4.0.0")
        # The reply code decides the class (RFC 3463 §2).
        self.assertEqual(statusOf(550, "4.2.2"), "5.2.2")
        self.assertEqual(statusOf(250, "2.6.0"), "2.6.0")

    def test_multiLineReply(self) -> None:
        r = replyResult(Reply(452, ("Mailbox full", "try later"), "4.2.2"), "mx[192.0.2.1]:25", "dns; mx")
        self.assertEqual(r.diagnostic, "smtp; 452 4.2.2 Mailbox full try later")
        self.assertEqual(r.reason, "mx[192.0.2.1]:25 said: 452 4.2.2 Mailbox full try later")
        self.assertEqual((r.result, r.status, r.remoteMTA), (Result.DEFERRED, "4.2.2", "dns; mx"))

    def test_badHostname(self) -> None:
        with self.assertRaises(ValueError):
            Outbound("two words")

    async def test_unknownKind(self) -> None:
        outbound = Outbound("relay.test.invalid")
        message = queued(["a@example.com"])
        [r] = await outbound.deliver(NextHop("carrier-pigeon", "x"), message, message.recipients, body())
        self.assertEqual((r.result, r.status), (Result.DEFERRED, "4.3.5"))

    async def test_badSender(self) -> None:
        """A sender the client cannot send fails every recipient (5.1.7), with no connection."""
        outbound = Outbound("relay.test.invalid")
        message = queued(["a@example.com", "b@example.com"])
        message.sender = "bad sender@example.org"
        hop = NextHop("smtp", f"[127.0.0.1]:{freePort()}", (("tls", "none"),))
        results = await outbound.deliver(hop, message, message.recipients, body())
        self.assertEqual([(r.result, r.status) for r in results], [(Result.FAILED, "5.1.7")] * 2)
        self.assertEqual(outbound.connections, 0)

    async def test_noRecipients(self) -> None:
        outbound = Outbound("relay.test.invalid")
        self.assertEqual(await outbound.deliver(NextHop("mx", "example.com"), queued([]), [], body()), [])
