"""
Regression tests for the server's lifecycle bugs fixed by the I/O-free
session (txsmtp/session/), through the Twisted glue (ESMTPServer): a
ServerHarness (StringTransport, task.Clock), or real loopback connections
where the bug lives in the transport (TLS back-pressure, a real client).

Each test names the bug it guards and failed on the code before the
refactor (commit 2c40f6b); the failure seen there is in the docstring.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import protocol, reactor
from twisted.internet import ssl as tssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from tests.certs import certificates
from tests.test_server import HookDelivery, Receiver
from txsmtp.auth import DeliveryRealm
from txsmtp.client import ClientOptions, SMTPClientFactory, SMTPRecipientsRefused, Timeouts
from txsmtp.errors import SMTPError
from txsmtp.lmtp import LMTPFactory
from txsmtp.server import ESMTPServer, SMTPFactory
from txsmtp.testing import MemoryDelivery, ServerHarness, runServer
from txsmtp.tls import ServerTLS

EHLO = b"EHLO client.example\r\n"
ENVELOPE = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"


def codes(replies) -> list[int]:
    return [r.code for r in replies]


def pairs(replies) -> list[tuple[int, str | None]]:
    return [(r.code, r.enhanced) for r in replies]


# -- bug 2: a BDAT write still pending when the next transaction starts ------------------------


class PendingWriteAcrossTransactionsTests(unittest.TestCase):
    """
    Bug 2.  A BDAT chunk is written to the receiver, whose write() Deferred
    has not fired, and the client pipelines RSET, a new MAIL/RCPT and
    ``BDAT n LAST``.  The old code kept one count of pending writes and one
    message error for the whole connection: the new message waited for the
    old write, and a late failure of that write refused the new message.
    """

    def startWithPendingWrite(self) -> tuple[ServerHarness, HookDelivery]:
        delivery = HookDelivery()
        h = ServerHarness(delivery)
        h.send(EHLO)
        delivery.holdWrites = True
        replies = h.send(ENVELOPE + b"BDAT 4\r\nab\r\n")
        self.assertEqual(codes(replies), [250, 250, 250])
        [first] = delivery.receivers
        self.assertTrue(first.pendingWrites)
        self.assertFalse(any(d.called for d in first.pendingWrites))
        delivery.holdWrites = False
        return h, delivery

    def test_lateWriteFailureDoesNotRefuseNextMessage(self) -> None:
        """
        The old write fails after the new message is complete: the new
        message is stored and answered 250, never 451.

        Old code: no reply at all to the pipelined group (the new BDAT LAST
        waited for the old write), then ``[250, 250, 250, 451]`` once the old
        write failed: the new message refused for the old one's error.
        """
        h, delivery = self.startWithPendingWrite()
        replies = h.send(
            b"RSET\r\nMAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nBDAT 3 LAST\r\nxyz"
        )
        first = delivery.receivers[0]
        for d in first.pendingWrites:
            d.errback(SMTPError(451, "4.3.0", "disk on fire"))
        replies += h.replies()
        self.assertEqual(pairs(replies), [(250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")])
        self.assertIn("queued as", replies[-1].text)
        second = delivery.receivers[1]
        self.assertTrue(second.finished)
        self.assertTrue(b"".join(second.chunks).endswith(b"\r\nxyz"))
        self.assertIsNone(second.aborted)
        # The first message was abandoned by RSET, once.
        self.assertEqual(first.aborted, "transaction reset")
        self.assertFalse(first.finished)
        self.assertEqual(codes(h.send(b"NOOP\r\n")), [250])

    def test_writeThatNeverFiresDoesNotHoldNextMessage(self) -> None:
        """
        The old write never fires: the new message is answered all the same,
        and the old receiver is aborted.

        Old code: the pipelined group got no reply at all (the session hung
        waiting for the old transaction's write).
        """
        h, delivery = self.startWithPendingWrite()
        replies = h.send(
            b"RSET\r\nMAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nBDAT 3 LAST\r\nxyz"
        )
        self.assertEqual(codes(replies), [250, 250, 250, 250])
        first, second = delivery.receivers
        self.assertEqual(first.aborted, "transaction reset")
        self.assertTrue(second.finished)
        self.assertFalse(h.closed)

    def test_writeThatNeverFiresTimesOut(self) -> None:
        """
        A write of the current message that never fires: the session does
        not hang for ever once BDAT LAST is read; after the command timeout
        it answers 421 4.3.0, closes and aborts the receiver.

        Old code: no timeout while writes were pending; after 301 s (and
        after an hour) there was still no reply and the connection was open.
        """
        delivery = HookDelivery()
        h = ServerHarness(delivery)
        h.send(EHLO)
        delivery.holdWrites = True
        # The replies wait for the end of the pipelined group (RFC 2920).
        self.assertEqual(codes(h.send(ENVELOPE + b"BDAT 3 LAST\r\nxyz")), [])
        h.clock.advance(299)
        self.assertFalse(h.closed)
        h.clock.advance(2)
        self.assertEqual(pairs(h.replies()), [(421, "4.3.0")])
        self.assertTrue(h.closed)
        [receiver] = delivery.receivers
        self.assertFalse(receiver.finished)
        self.assertIsNotNone(receiver.aborted)


# -- bug 3: a client that never reads its replies, under TLS -----------------------------------


class _Flooder(protocol.Protocol):
    """
    EHLO, STARTTLS, EHLO again under TLS, then stop reading and write
    ``total`` octets of pipelined NOOPs.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.buffer = b""
        self.step = 0
        self.flooding: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        # A small receive buffer: the kernel must not absorb megabytes of
        # replies for us, so that the server's own buffering shows.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] == b"-":
                continue
            self.step += 1
            if self.step == 1:  # greeting
                self.transport.write(EHLO)
            elif self.step == 2:
                self.transport.write(b"STARTTLS\r\n")
            elif self.step == 3:
                assert line.startswith(b"220"), line
                self.transport.startTLS(tssl.CertificateOptions())
                self.transport.write(EHLO)
            elif self.step == 4:
                assert line.startswith(b"250"), line
                # Never read again; pipeline NOOPs.
                self.transport.pauseProducing()
                self.transport.write(b"NOOP\r\n" * (self.total // 6))
                self.flooding.callback(None)


class _WatchedServer(ESMTPServer):
    """The server protocol, watched: the octets it read and whether it was paused."""

    def connectionMade(self) -> None:
        self.octetsRead = 0
        self.pausedAt: int | None = None
        self.watch: Deferred[str] = self.factory.watch
        # A small send buffer for the same reason as the client's.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.octetsRead += len(data)
        super().dataReceived(data)
        if self.octetsRead >= self.factory.total and not self.watch.called:
            self.watch.callback("read everything")

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if self.connection.tls is not None and self.pausedAt is None:
            self.pausedAt = self.octetsRead
            if not self.watch.called:
                self.watch.callback("paused")


class TLSOutputBackPressureTests(unittest.TestCase):
    """
    Bug 3.  Under TLS the server was not the producer of its replies: a
    client that pipelined NOOPs and never read made the server read
    everything and buffer every reply (15 MB for 8 MB of NOOPs).
    """

    timeout = 60

    async def flood(self) -> tuple[SMTPFactory, Any, str]:
        """
        8 MB of NOOPs after STARTTLS from a client that never reads; fires
        when the server is paused as the transport's producer, or when it
        has read (nearly) everything.
        """
        total = 8 * 1024 * 1024
        c = certificates()
        factory = SMTPFactory(MemoryDelivery(), "test.invalid", tls=ServerTLS(c.chain, c.key))
        factory.protocol = _WatchedServer
        factory.watch = Deferred()  # type: ignore[attr-defined]
        factory.total = total - 100_000  # type: ignore[attr-defined]
        server = runServer(self, factory=factory)
        client = _Flooder(total)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        await endpoint.connect(protocol.Factory.forProtocol(lambda: client))
        self.addCleanup(lambda: client.transport.abortConnection())
        outcome = await factory.watch  # type: ignore[attr-defined]
        [proto] = factory.protocols
        return factory, proto, outcome

    async def test_stopsReadingWhenRepliesAreNotRead(self) -> None:
        """
        The server stops reading (it is paused as the transport's producer)
        after a bounded amount of input, instead of reading all of it.

        Old code: the server was never paused and read all 8 MB, queueing
        ~19 MB of replies ("read everything" instead of "paused").
        """
        factory, proto, outcome = await self.flood()
        self.assertEqual(outcome, "paused", f"the server read {proto.octetsRead} octets")
        self.assertIsNotNone(proto.connection.tls)
        # Bounded: a small part of the flood was read (and answered).
        self.assertLess(proto.pausedAt, 2 * 1024 * 1024)
        self.assertLess(proto.octetsRead, 2 * 1024 * 1024)

    async def test_shutdownWhileRepliesAreNotRead(self) -> None:
        """
        Shutting the server down while such a client holds it paused: the
        421 and the close wait behind the unread replies, the connection is
        then aborted (grace 0), and the shutdown completes.

        Found with the new code (not a regression test of the old one):
        the Close action left waiting while the output was paused ran after
        the disconnect, and ``unregisterProducer`` on the dead TLS transport
        raised AttributeError inside connectionLost, so the shutdown never
        completed (the test timed out).
        """
        factory, proto, outcome = await self.flood()
        self.assertEqual(outcome, "paused")
        await factory.shutdown(grace=0)
        self.assertEqual(factory.protocols, set())
        self.assertFalse(proto.transport.connected)


# -- bug 4: LMTP BDAT LAST refused at openMessage ---------------------------------------------


class _RefusingOpen(MemoryDelivery):
    def __init__(self) -> None:
        super().__init__()
        self.sessionFactory = _RefusingOpenSession


class _RefusingOpenSession(MemoryDelivery.sessionFactory):  # type: ignore[misc,name-defined]
    def openMessage(self, envelope: Any) -> Any:
        raise SMTPError(452, "4.3.1", "Insufficient system storage")


class LMTPBdatRefusedAtOpenTests(unittest.TestCase):
    """
    Bug 4.  Under LMTP, ``BDAT n LAST`` ends the message, and RFC 2033 §4.2
    owes one reply per accepted recipient.  When openMessage refused the
    message, the old code answered once, and an LMTP client waiting for
    the other replies hung.
    """

    def test_oneReplyPerRecipient(self) -> None:
        """
        Old code: ``[250, 250, 250, 452]`` (one 452 for two recipients), and
        the next command's reply was taken for the second recipient's.
        """
        factory = LMTPFactory(_RefusingOpen(), "lmtp.test")
        h = ServerHarness(factory=factory)
        replies = h.send(
            b"LHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"RCPT TO:<c@example.com>\r\nBDAT 5 LAST\r\nhelloNOOP\r\n"
        )
        self.assertEqual(
            pairs(replies)[1:],
            [(250, "2.1.0"), (250, "2.1.5"), (250, "2.1.5"), (452, "4.3.1"), (452, "4.3.1"), (250, "2.0.0")],
        )
        self.assertEqual(h.delivery.messages, [])

    def test_sameAsRefusedInTheBody(self) -> None:
        """A refusal at open and one in the body (too big) get as many replies."""
        for delivery, body in ((_RefusingOpen(), b"hello"), (MemoryDelivery(), b"x" * 50)):
            factory = LMTPFactory(delivery, "lmtp.test", maxMessageSize=20)
            h = ServerHarness(factory=factory)
            replies = h.send(
                b"LHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                b"RCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\n"
                + b"BDAT %d LAST\r\n" % len(body) + body
            )
            self.assertEqual(len(replies), 1 + 4 + 3, replies)
            self.assertEqual(len({r.code for r in replies[5:]}), 1)
            self.assertGreaterEqual(replies[-1].code, 400)

    timeout = 30

    async def test_lmtpClientDoesNotHang(self) -> None:
        """
        txsmtp's own LMTPClient, over loopback, sending with BDAT: it gets
        both refusals and completes at once, long before its timeout.

        Old code: the client waited for the second recipient's reply until
        its final-reply timeout (SMTPTimeoutError instead of the refusal).
        """
        factory = LMTPFactory(_RefusingOpen(), "lmtp.test")
        server = runServer(self, factory=factory)
        options = ClientOptions(
            host="127.0.0.1", port=server.port, lmtp=True, tls="none",
            timeouts=Timeouts(final=10.0, block=10.0),
        )  # fmt: skip
        client = await SMTPClientFactory(options).connect()
        self.addCleanup(lambda: client.transport.abortConnection())
        self.assertIn("CHUNKING", client.extensions)
        started = reactor.seconds()
        with self.assertRaises(SMTPRecipientsRefused) as caught:
            await client.sendMessage(
                "a@example.com", ["b@example.com", "c@example.com"], b"Subject: x\r\n\r\nhello\r\n"
            )
        self.assertLess(reactor.seconds() - started, 5.0)
        refused = caught.exception.recipients
        self.assertEqual(sorted(refused), ["b@example.com", "c@example.com"])
        self.assertEqual({(r.code, r.enhanced) for r in refused.values()}, {(452, "4.3.1")})
        await client.quit()


# -- bug 5: hook results that arrive after the client left ---------------------------------------


class _LaterSessionDelivery(MemoryDelivery):
    """openSession answers later (the test fires it)."""

    def __init__(self) -> None:
        super().__init__()
        self.opening: list[Deferred[Any]] = []

    def openSession(self, connection: Any) -> Any:
        d: Deferred[Any] = Deferred()
        self.opening.append(d)
        return d


class _ClosableSession:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class _HeldPortal(Portal):
    """A portal whose logins answer when the test says so."""

    def __init__(self, realm: Any, checkers: Any) -> None:
        super().__init__(realm, checkers)
        self.held: list[Deferred[Any]] = []

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append(d)
        return d


class LateResultsAfterDisconnectTests(unittest.TestCase):
    """
    Bug 5.  A hook result that arrived after the client left was dropped:
    whatever it opened (a receiver, a delivery session, an avatar) was
    never closed.  Now the result of a dead owner is cleaned up.
    """

    def test_openMessageResultAborted(self) -> None:
        """
        Old code: the receiver that openMessage returned after the
        disconnect was never aborted (``aborted`` stayed ``None``).
        """
        delivery = HookDelivery()
        delivery.onOpen = delivery.later
        h = ServerHarness(delivery)
        self.assertEqual(codes(h.send(EHLO + ENVELOPE + b"DATA\r\n")), [])
        h.disconnect()
        receiver = Receiver(delivery, None)
        delivery.pending[0].callback(receiver)
        self.assertEqual(receiver.aborted, "transaction ended")
        self.assertEqual(receiver.chunks, [])
        self.assertFalse(receiver.finished)
        self.assertEqual(h.replies(), [])

    def test_openSessionResultClosed(self) -> None:
        """
        Old code: the delivery session opened after the disconnect was
        never closed (``closed`` stayed 0).
        """
        delivery = _LaterSessionDelivery()
        h = ServerHarness(delivery)
        self.assertIsNone(h.greeting)
        h.disconnect()
        session = _ClosableSession()
        delivery.opening[0].callback(session)
        self.assertEqual(session.closed, 1)
        self.assertEqual(h.replies(), [])

    def portalHarness(self) -> tuple[ServerHarness, _HeldPortal]:
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"secret")
        delivery = MemoryDelivery()
        portal = _HeldPortal(DeliveryRealm(delivery), [checker])
        h = ServerHarness(delivery, portal=portal, allowInsecureAuth=True)
        h.send(EHLO)
        return h, portal

    def test_loginResultLoggedOut(self) -> None:
        """
        Old code: the avatar of a login that succeeded after the disconnect
        was never logged out (``logouts`` stayed empty).
        """
        import base64

        h, portal = self.portalHarness()
        self.assertEqual(h.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"), [])
        h.disconnect()
        logouts: list[str] = []
        portal.held[0].callback((object, _ClosableSession(), lambda: logouts.append("alice")))
        self.assertEqual(logouts, ["alice"])
        self.assertEqual(h.replies(), [])

    def test_authFailureDelayCancelled(self) -> None:
        """
        The delay before answering a failed AUTH is cancelled with the
        connection: nothing is left on the clock.

        Old code: the delayed call stayed scheduled after the disconnect.
        """
        import base64

        from twisted.cred.error import UnauthorizedLogin

        h, portal = self.portalHarness()
        h.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong") + b"\r\n")
        portal.held[0].errback(UnauthorizedLogin())
        self.assertEqual(h.replies(), [])
        self.assertTrue(h.clock.getDelayedCalls())
        h.disconnect()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.clock.advance(60)
        self.assertEqual(h.replies(), [])


# -- bug 10: a client that trickles a command ------------------------------------------------


class TrickleTests(unittest.TestCase):
    """
    Bug 10.  The command timeout counted from the last octet received, so a
    client sending one octet every few seconds held a session for ever.
    RFC 5321 §4.5.3.2.7 times the command: now its deadline runs from its
    first octet.
    """

    def trickle(self, h: ServerHarness, octets: bytes, every: float = 5.0) -> tuple[float, list[Any]]:
        """Send one octet every ``every`` seconds until the server closes; the time it took."""
        start = h.clock.seconds()
        replies: list[Any] = []
        for i in range(len(octets)):
            replies += h.send(octets[i : i + 1])
            h.clock.advance(every)
            replies += h.replies()
            if h.closed:
                break
        return h.clock.seconds() - start, replies

    def assertCutOff(self, elapsed: float, replies: list[Any], h: ServerHarness, timeout: float = 300.0) -> None:
        self.assertTrue(h.closed, f"still open after {elapsed} s")
        self.assertEqual(pairs(replies)[-1], (421, "4.4.2"))
        self.assertIn("Timeout", replies[-1].text)
        self.assertGreaterEqual(elapsed, timeout)
        self.assertLessEqual(elapsed, timeout + 10)

    def test_commandLine(self) -> None:
        """
        Old code: still open after 200 octets (1000 s), no 421.
        """
        h = ServerHarness()
        h.send(EHLO)
        elapsed, replies = self.trickle(h, b"NOOP " + b"x" * 200)
        self.assertCutOff(elapsed, replies, h)
        self.assertEqual(codes(replies), [421])

    def test_commandLineBeforeEhlo(self) -> None:
        h = ServerHarness(commandTimeout=60.0)
        elapsed, replies = self.trickle(h, b"EHLO " + b"x" * 200)
        self.assertCutOff(elapsed, replies, h, 60.0)

    def test_authLine(self) -> None:
        """
        During AUTH, the SASL response line is a command line too.

        Old code: still open after 1000 s.
        """
        import base64

        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"secret")
        delivery = MemoryDelivery()
        portal = Portal(DeliveryRealm(delivery), [checker])
        h = ServerHarness(delivery, portal=portal, allowInsecureAuth=True)
        h.send(EHLO)
        self.assertEqual(codes(h.send(b"AUTH LOGIN\r\n")), [334])
        elapsed, replies = self.trickle(h, base64.b64encode(b"alice" * 40))
        self.assertCutOff(elapsed, replies, h)

    def test_bdatHeaderLine(self) -> None:
        """
        A BDAT command line trickled before its octets.

        Old code: still open after 1000 s.
        """
        h = ServerHarness()
        self.assertEqual(codes(h.send(EHLO + ENVELOPE)), [250, 250, 250])
        elapsed, replies = self.trickle(h, b"BDAT " + b"0" * 150 + b"1 LAST")
        self.assertCutOff(elapsed, replies, h)
        self.assertEqual(h.delivery.messages, [])

    def test_fastCommandsAreNotCut(self) -> None:
        """Commands that each arrive in time are never cut, however long the session."""
        h = ServerHarness()
        h.send(EHLO)
        for _ in range(20):
            h.clock.advance(200)
            self.assertEqual(codes(h.send(b"NOOP\r\n")), [250])
        self.assertFalse(h.closed)

    def test_dataMinimumRateStillApplies(self) -> None:
        """
        Inside DATA the minimum rate decides (not a bug fix: it held before
        too): one octet every 5 s is cut off after the rate window.
        """
        h = ServerHarness()
        self.assertEqual(codes(h.send(EHLO + ENVELOPE + b"DATA\r\n")), [250, 250, 250, 354])
        elapsed, replies = self.trickle(h, b"x" * 200)
        self.assertTrue(h.closed)
        self.assertEqual(pairs(replies), [(421, "4.4.2")])
        self.assertIn("too slowly", replies[0].text)
        self.assertLessEqual(elapsed, h.factory.dataRateWindow + 10)
        self.assertEqual(h.delivery.messages, [])
        [(_, why)] = h.delivery.aborted
        self.assertIn("slow", why)

    def test_bdatOctetsMinimumRate(self) -> None:
        """The same for the octets of a BDAT chunk."""
        h = ServerHarness()
        self.assertEqual(codes(h.send(EHLO + ENVELOPE + b"BDAT 1000 LAST\r\n")), [250, 250, 250])
        elapsed, replies = self.trickle(h, b"x" * 200)
        self.assertTrue(h.closed)
        self.assertEqual(pairs(replies), [(421, "4.4.2")])
        self.assertLessEqual(elapsed, h.factory.dataRateWindow + 10)



