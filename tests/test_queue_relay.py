"""
The relay's server side (:mod:`txsmtp.queue.relay`): who may relay, what
goes into the queue, and when ``250`` is given.

Sessions run in a :class:`~txsmtp.testing.ServerHarness` (an in-memory
transport, a fake clock) over a store kept in memory
(:mod:`tests.relayfakes`), so that a test sees what was committed and can
make the store fail or hold a commit back.  The PROXY tests use real
loopback connections.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from tests.relayfakes import MemoryQueueStore
from tests.test_tls_auth import passwordChecker
from tests.twistd_helpers import LogEvents, connectClient
from txsmtp.auth import makePortal
from txsmtp.delivery import VirtualMaildirDelivery
from txsmtp.envelope import ConnectionInfo
from txsmtp.errors import SMTPError
from txsmtp.queue.errors import QueueFullError
from txsmtp.queue.relay import (
    DEFAULT_MAX_HOPS,
    HopCounter,
    RelayDelivery,
    RelayPolicy,
    parseNetworks,
)
from txsmtp.queue.routing import Router, parseRelayHost, parseRoute
from txsmtp.queue.senders import SenderLoginMap
from txsmtp.server import SMTPFactory
from txsmtp.testing import MemoryDelivery, ServerHarness
from txsmtp.wire.reply import Reply

LOCAL = "local.test"
REMOTE = "remote.test"
LMTP_DOMAIN = "store.test"
SMTP_ROUTED = "routed.test"
USER = "alice"
PASSWORD = "Wonder-l4nd-pw"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


def router() -> Router:
    return Router(
        frozenset({LOCAL, "second.test"}),
        dict(parseRoute(r) for r in (f"{LMTP_DOMAIN}=lmtp:unix:/run/lmtp.sock", f"{SMTP_ROUTED}=smtp:[192.0.2.99]:25")),
        parseRelayHost("[smtp.example.net]:587"),
    )


class Relay:
    """A harness around a RelayDelivery over a memory store."""

    def __init__(
        self,
        policy: RelayPolicy | None = None,
        inner: Any = None,
        *,
        auth: bool = False,
        delivery: RelayDelivery | None = None,
    ) -> None:
        self.store = MemoryQueueStore()
        self.delivery = delivery or RelayDelivery(self.store, router(), policy, inner, hostname="mx.test")
        self.delivery.store = self.store
        kw: dict[str, Any] = {}
        if auth:
            kw = dict(
                portal=makePortal(self.delivery, [passwordChecker(**{USER: PASSWORD, "bob@second.test": "pw2"})]),
                allowInsecureAuth=True,
                authFailureDelay=0,
            )
        self.h = ServerHarness(self.delivery, hostname="mx.test", **kw)
        ehlo = self.h.command(b"EHLO client.example")
        assert ehlo.code == 250, ehlo

    def login(self, user: str = USER, password: str = PASSWORD) -> Reply:
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        return self.h.command(b"AUTH PLAIN " + token)

    def rcpt(self, address: str, sender: str = f"someone@{REMOTE}") -> Reply:
        mail = self.h.command(f"MAIL FROM:<{sender}>".encode())
        assert mail.code == 250, mail
        reply = self.h.command(b"RCPT TO:<" + address.encode() + b">")
        rset = self.h.command(b"RSET")
        assert rset.code == 250, rset
        return reply

    def send(self, sender: str, recipients: list[str], body: bytes = MESSAGE) -> list[Reply]:
        lines = [f"MAIL FROM:<{sender}>".encode()] + [f"RCPT TO:<{r}>".encode() for r in recipients]
        replies = self.h.send(b"".join(line + b"\r\n" for line in lines) + b"DATA\r\n")
        if replies[-1].code != 354:
            return replies
        return replies + self.h.send(body + b".\r\n")


class RelayAccessTests(unittest.TestCase):
    """RCPT: never an open relay."""

    def assertDenied(self, reply: Reply, address: str) -> None:
        self.assertEqual((reply.code, reply.enhanced), (554, "5.7.1"), f"{address}: {reply}")
        self.assertIn("Relay access denied", reply.text)
        self.assertIn("authenticate first", reply.text)

    def test_local_domains_from_anyone(self) -> None:
        """An unauthenticated client outside the relay networks reaches local domains (any case)."""
        r = Relay()
        for address in (f"bob@{LOCAL}", f"bob@{LOCAL.upper()}", "bob@Second.Test", "Postmaster", f"bob@{LMTP_DOMAIN}"):
            self.assertEqual(r.rcpt(address).code, 250, address)

    def test_remote_denied(self) -> None:
        """Any other domain gets 554 5.7.1 with a sentence saying what to do."""
        r = Relay()
        for address in (f"bob@{REMOTE}", f"bob@{REMOTE.upper()}", f"bob@{SMTP_ROUTED}", "bob@sub.local.test"):
            self.assertDenied(r.rcpt(address), address)

    def test_tricks_denied(self) -> None:
        """
        The percent hack, bang paths, a quoted "@", address literals and a
        source route ending in another domain are refused; a trailing dot
        is not even valid syntax.
        """
        r = Relay()
        tricks = [
            f"bob%{REMOTE}@{LOCAL}",
            f"bob%{REMOTE}%{LOCAL}@{LOCAL}",
            f"{REMOTE}!bob@{LOCAL}",
            f'"bob@{REMOTE}"@{LOCAL}',
            f'"bob%{REMOTE}"@{LOCAL}',
            "bob@[192.0.2.1]",
            "bob@[127.0.0.1]",
            "bob@[IPv6:2001:db8::1]",
            f"@{LOCAL}:bob@{REMOTE}",
            f"@{LOCAL},@{LOCAL}:bob@{REMOTE}",
        ]
        for address in tricks:
            self.assertDenied(r.rcpt(address), address)
        for address in (f"bob@{REMOTE}.", f"bob@{LOCAL}.."):
            reply = r.rcpt(address)
            self.assertEqual(reply.code, 501, f"{address}: {reply}")
        self.assertEqual(r.store.opened, 0)

    def test_harmless_local_parts(self) -> None:
        """Routing characters naming only local domains, and a source route to a local domain, pass."""
        r = Relay()
        for address in (f"bob%{LOCAL}@{LOCAL}", f"second.test!bob@{LOCAL}", f"@{REMOTE}:bob@{LOCAL}"):
            self.assertEqual(r.rcpt(address).code, 250, address)

    def test_relay_networks(self) -> None:
        """A client in --relay-networks relays (the harness's client is 192.0.2.7)."""
        r = Relay(RelayPolicy("198.51.100.0/24,192.0.2.0/28"))
        self.assertEqual(r.rcpt(f"bob@{REMOTE}").code, 250)
        self.assertEqual(r.rcpt(f"bob%{REMOTE}@{LOCAL}").code, 250)
        r = Relay(RelayPolicy("192.0.2.8/29"))
        self.assertDenied(r.rcpt(f"bob@{REMOTE}"), REMOTE)

    def test_relay_networks_ipv6(self) -> None:
        """IPv6 networks, and IPv4-mapped IPv6 clients matched against IPv4 networks."""
        policy = RelayPolicy(["2001:db8::/32", ipaddress.ip_network("203.0.113.0/24")])
        cases = [
            (IPv6Address("TCP", "2001:db8::5", 1), True),
            (IPv6Address("TCP", "2001:db9::5", 1), False),
            (IPv6Address("TCP", "::ffff:203.0.113.9", 1), True),
            (IPv4Address("TCP", "203.0.113.9", 1), True),
            (IPv4Address("TCP", "203.0.114.9", 1), False),
            (UNIXAddress(b"/run/smtp.sock"), False),
            (None, False),
        ]
        for peer, expected in cases:
            self.assertEqual(policy.inRelayNetworks(ConnectionInfo(peer)), expected, peer)
        r = Relay(policy)
        r.h.protocol.connection.peer = IPv6Address("TCP", "2001:db8::5", 1)
        self.assertEqual(r.rcpt(f"bob@{REMOTE}").code, 250)
        r.h.protocol.connection.peer = IPv6Address("TCP", "2001:db9::5", 1)
        self.assertDenied(r.rcpt(f"bob@{REMOTE}"), REMOTE)

    def test_authenticated_relays(self) -> None:
        """After AUTH, any domain (and the tricks, which then do no harm)."""
        r = Relay(auth=True)
        self.assertDenied(r.rcpt(f"bob@{REMOTE}", f"{USER}@{LOCAL}"), REMOTE)
        self.assertEqual(r.login().code, 235)
        for address in (f"bob@{REMOTE}", f"bob%{REMOTE}@{LOCAL}", f"bob@{SMTP_ROUTED}"):
            self.assertEqual(r.rcpt(address, f"{USER}@{LOCAL}").code, 250, address)

    def test_inner_decides_local_users(self) -> None:
        """The inner delivery's checkRecipient refuses unknown local users at RCPT, even after AUTH."""
        inner = MemoryDelivery()
        inner.refusedRecipients[f"nobody@{LOCAL}"] = SMTPError(550, "5.1.1", "no such user")
        r = Relay(inner=inner, auth=True)
        reply = r.rcpt(f"nobody@{LOCAL}")
        self.assertEqual((reply.code, reply.enhanced, reply.text), (550, "5.1.1", "no such user"))
        self.assertEqual(r.rcpt(f"bob@{LOCAL}").code, 250)
        r.login()
        reply = r.rcpt(f"nobody@{LOCAL}", f"{USER}@{LOCAL}")
        self.assertEqual(reply.code, 550)
        # Remote recipients are not the inner delivery's business.
        inner.refusedRecipients[f"x@{REMOTE}"] = SMTPError(550, "5.1.1", "no")
        self.assertEqual(r.rcpt(f"x@{REMOTE}", f"{USER}@{LOCAL}").code, 250)

    def test_inner_only_for_its_own_mail(self) -> None:
        """A local domain routed elsewhere (LMTP to a mail store) is not the inner delivery's to check."""
        inner = MemoryDelivery()
        refusal = SMTPError(550, "5.1.1", "no such user here")
        inner.refusedRecipients["bob@routed-local.test"] = refusal
        inner.refusedRecipients[f"bob@{LOCAL}"] = refusal
        inner.refusedRecipients["Postmaster"] = refusal
        store = MemoryQueueStore()
        routes = dict([parseRoute("routed-local.test=lmtp:unix:/run/lmtp.sock")])
        delivery = RelayDelivery(store, Router({LOCAL, "routed-local.test"}, routes), inner=inner)
        r = Relay(delivery=delivery)
        self.assertEqual(r.rcpt("bob@routed-local.test").code, 250)
        self.assertEqual(r.rcpt(f"bob@{LOCAL}").code, 550)
        self.assertEqual(r.rcpt("Postmaster").code, 550)

    def test_virtual_maildir_inner(self) -> None:
        """With virtual:DIR inside, an unknown mailbox is 550 5.1.1 at RCPT, a known one 250."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, LOCAL, "bob"))
        inner = VirtualMaildirDelivery(root, threads=0)
        r = Relay(inner=inner)
        self.assertEqual(r.rcpt(f"Bob@{LOCAL.upper()}").code, 250)
        reply = r.rcpt(f"carol@{LOCAL}")
        self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"), reply)

    def test_inner_checks_sender(self) -> None:
        """The inner delivery's checkSender is asked too."""
        inner = MemoryDelivery()
        inner.refusedSenders[f"spam@{REMOTE}"] = SMTPError(550, "5.7.1", "go away")
        r = Relay(inner=inner)
        reply = r.h.command(f"MAIL FROM:<spam@{REMOTE}>".encode())
        self.assertEqual((reply.code, reply.text), (550, "go away"))


class SenderLoginTests(unittest.TestCase):
    """MAIL FROM of authenticated users: the addresses they own."""

    def mail(self, r: Relay, sender: str) -> Reply:
        reply = r.h.command(f"MAIL FROM:<{sender}>".encode())
        r.h.command(b"RSET")
        return reply

    def test_default_rule(self) -> None:
        """Without a map: login@local domain, or the login itself when it is an address; <> always."""
        r = Relay(auth=True)
        self.assertEqual(r.login().code, 235)
        for sender in (f"{USER}@{LOCAL}", f"{USER}@SECOND.TEST", f"Alice@{LOCAL}", ""):
            self.assertEqual(self.mail(r, sender).code, 250, sender)
        for sender in (f"bob@{LOCAL}", f"{USER}@{REMOTE}", f"{USER}x@{LOCAL}"):
            reply = self.mail(r, sender)
            self.assertEqual((reply.code, reply.enhanced), (553, "5.7.1"), sender)
            self.assertEqual(reply.text, f"Sender address <{sender}> not owned by user {USER}")
        r = Relay(auth=True)
        self.assertEqual(r.login("bob@second.test", "pw2").code, 235)
        self.assertEqual(self.mail(r, "BOB@second.test").code, 250)
        self.assertEqual(self.mail(r, f"bob@{LOCAL}").code, 553)

    def test_map(self) -> None:
        """With a map, the map decides (addresses and @domain)."""
        logins = SenderLoginMap({USER: [f"a.liddell@{REMOTE}", "@wonderland.test"]})
        r = Relay(RelayPolicy(senderLogins=logins), auth=True)
        r.login()
        for sender in (f"a.liddell@{REMOTE}", "queen@Wonderland.TEST", ""):
            self.assertEqual(self.mail(r, sender).code, 250, sender)
        self.assertEqual(self.mail(r, f"{USER}@{LOCAL}").code, 553)

    def test_unauthenticated_not_restricted(self) -> None:
        """An MX takes anyone's mail for its domains: no sender check without AUTH."""
        r = Relay(auth=True)
        self.assertEqual(self.mail(r, f"bob@{LOCAL}").code, 250)
        self.assertEqual(r.rcpt(f"carol@{LOCAL}", f"bob@{LOCAL}").code, 250)

    def test_hook(self) -> None:
        """senderAllowed can be overridden (a directory lookup, say)."""
        calls = []

        class Directory(RelayDelivery):
            def senderAllowed(self, user: str, sender: str) -> bool:
                calls.append((user, sender))
                return sender == "ceo@corp.test"

        store = MemoryQueueStore()
        r = Relay(delivery=Directory(store, router()), auth=True)
        r.login()
        self.assertEqual(self.mail(r, "ceo@corp.test").code, 250)
        self.assertEqual(self.mail(r, f"{USER}@{LOCAL}").code, 553)
        self.mail(r, "")
        self.assertEqual(calls, [(USER, "ceo@corp.test"), (USER, f"{USER}@{LOCAL}")])


class QueueingTests(unittest.TestCase):
    """Every accepted message goes into the store; 250 only after commit."""

    def test_committed(self) -> None:
        """The body (Received: first), sender, recipients with NOTIFY and ORCPT, and the envelope."""
        r = Relay()
        lines = [
            f"MAIL FROM:<me@{REMOTE}> RET=HDRS ENVID=abc+2Bd",
            f"RCPT TO:<bob@{LOCAL}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@{LOCAL}",
            f"RCPT TO:<carol@{LOCAL}>",
            "DATA",
        ]
        replies = r.h.send(b"".join(line.encode() + b"\r\n" for line in lines))
        self.assertEqual([x.code for x in replies], [250, 250, 250, 354])
        [done] = r.h.send(MESSAGE + b".\r\n")
        self.assertEqual(done.code, 250, done)
        [m] = r.store.messages
        self.assertEqual(m.sender, f"me@{REMOTE}")
        self.assertTrue(m.body.startswith(b"Received: from client.example ([192.0.2.7])"), m.body)
        self.assertTrue(m.body.endswith(b"\r\n" + MESSAGE), m.body)
        self.assertEqual(
            [(x.index, x.address, x.notify, x.orcpt) for x in m.recipients],
            [
                (0, f"bob@{LOCAL}", ("SUCCESS", "FAILURE"), ("rfc822", f"bob@{LOCAL}")),
                (1, f"carol@{LOCAL}", None, None),
            ],
        )
        self.assertNotIn("recipients", m.envelope)
        self.assertEqual(m.envelope["parameters"]["ret"], "HDRS")
        self.assertEqual(m.envelope["parameters"]["envid"], "abc+d")
        self.assertEqual(m.envelope["connection"]["peer"], "192.0.2.7")
        self.assertEqual(m.envelope["connection"]["heloName"], "client.example")
        self.assertEqual(m.envelope["sender"], f"me@{REMOTE}")
        # Measured as it streamed in, for the delivery attempts.
        self.assertIs(m.envelope["eightBit"], not MESSAGE.isascii())

    def test_eightBitRecorded(self) -> None:
        """A body with octets above 127 is marked so in the queued envelope."""
        r = Relay()
        replies = r.h.send(f"MAIL FROM:<me@{REMOTE}> BODY=8BITMIME\r\nRCPT TO:<bob@{LOCAL}>\r\nDATA\r\n".encode())
        self.assertEqual([x.code for x in replies], [250, 250, 354])
        [done] = r.h.send("Subject: caf\u00e9\r\n\r\nbody\r\n.\r\n".encode())
        self.assertEqual(done.code, 250, done)
        [m] = r.store.messages
        self.assertIs(m.envelope["eightBit"], True)

    def test_250_waits_for_commit(self) -> None:
        """No reply to the final dot while the commit is pending; 250 once it fires."""
        r = Relay()
        r.store.holdCommits = True
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual([x.code for x in replies], [250, 250, 354])
        self.assertEqual((r.store.messages, len(r.store.pending)), ([], 1))
        r.store.releaseCommits()
        [done] = r.h.replies()
        self.assertEqual(done.code, 250)
        self.assertEqual(len(r.store.messages), 1)

    def test_logged_with_queue_id(self) -> None:
        """The transaction's log line names the queue id (stored=)."""
        log = LogEvents(self)
        r = Relay()
        r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        [m] = r.store.messages
        event = [e for e in log.events if e.get("result") == "accepted"][-1]
        self.assertIn(f"stored={m.id}", event["text"])

    def test_queue_full(self) -> None:
        """QueueFullError: 452 4.3.1, nothing queued, and the next message is taken."""
        log = LogEvents(self)
        r = Relay()
        r.store.full()
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (452, "4.3.1"))
        self.assertIn("queue is full", replies[-1].text)
        self.assertEqual((r.store.messages, r.store.writers), ([], []))
        self.assertTrue(any("queue full" in str(e.get("log_format")) for e in log.events))
        r.store.failCommit = None
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual(replies[-1].code, 250)
        self.assertEqual(len(r.store.messages), 1)

    def test_queue_error(self) -> None:
        """Another QueueError: 451 4.3.0; the session goes on."""
        r = Relay()
        r.store.broken()
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (451, "4.3.0"))
        self.assertEqual(r.h.command(b"NOOP").code, 250)

    def test_full_when_opening(self) -> None:
        """A store full before the body: DATA is refused with 452 4.3.1."""
        r = Relay()
        r.store.failNew = QueueFullError("No space left on device")
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (452, "4.3.1"))
        self.assertEqual(r.h.command(b"NOOP").code, 250)

    def test_full_while_writing(self) -> None:
        """A store full while the body streams in (raised or a failed Deferred): 452 after the dot."""
        r = Relay()
        r.store.failWrite = QueueFullError("No space left on device")
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (452, "4.3.1"))
        self.assertEqual((r.store.messages, r.store.writers), ([], []))
        r.store.failWrite = None
        r.store.writeResult = defer.fail(QueueFullError("No space left on device"))
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (452, "4.3.1"))
        self.assertEqual(r.store.writers, [])

    def test_unexpected_commit_error(self) -> None:
        """Any other exception from the store: 451 4.3.0 and a logged traceback."""
        r = Relay()
        r.store.failCommit = RuntimeError("bug")
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"])
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (451, "4.3.0"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_vanishes(self) -> None:
        """A message abandoned mid-body is aborted in the store."""
        r = Relay()
        r.h.send(f"MAIL FROM:<me@{REMOTE}>\r\nRCPT TO:<bob@{LOCAL}>\r\nDATA\r\nSubject: x\r\n".encode())
        [writer] = r.store.writers
        r.h.disconnect()
        self.assertTrue(writer.aborted)
        self.assertEqual(r.store.messages, [])


def received(n: int) -> bytes:
    return b"".join(
        b"Received: from hop%d.test by hop%d.test;\r\n\tSat, 1 Jan 2000 00:00:00 +0000\r\n" % (i, i + 1)
        for i in range(n)
    )


class LoopTests(unittest.TestCase):
    """Too many Received: header fields: 554 5.4.6 after the final dot."""

    def test_too_many_hops(self) -> None:
        """50 in the message plus the server's own: refused, nothing queued; 49 plus one pass."""
        self.assertEqual(DEFAULT_MAX_HOPS, 50)
        log = LogEvents(self)
        r = Relay()
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"], received(50) + MESSAGE)
        self.assertEqual((replies[-1].code, replies[-1].enhanced), (554, "5.4.6"), replies[-1])
        self.assertIn("51 Received: header fields (at most 50", replies[-1].text)
        self.assertEqual((r.store.messages, r.store.writers), ([], []))
        self.assertTrue(any("a mail loop" in str(e.get("log_format")) for e in log.events))
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"], received(49) + MESSAGE)
        self.assertEqual(replies[-1].code, 250)

    def test_max_hops_option(self) -> None:
        """RelayPolicy(maxHops=N); Received: in the body does not count."""
        r = Relay(RelayPolicy(maxHops=3))
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"], received(3) + MESSAGE)
        self.assertEqual(replies[-1].code, 554)
        body = b"Subject: x\r\n\r\n" + received(10)
        replies = r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"], received(2) + body)
        self.assertEqual(replies[-1].code, 250)

    def test_counter_any_chunking(self) -> None:
        """HopCounter gives the same count for every way of cutting the message."""
        header = received(3) + b"received :x\r\nX-Received: no\r\nSubject: Received: no\r\n RECEIVED: folded, no\r\nRECEIVED:yes\r\n"
        message = header + b"\r\nReceived: in the body\r\n"
        for cut in range(len(message) + 1):
            for step in (1, 3, 7, len(message)):
                counter = HopCounter()
                counter.feed(message[:cut])
                for i in range(cut, len(message), step):
                    counter.feed(message[i : i + step])
                self.assertEqual(counter.count, 5, (cut, step))
                self.assertTrue(counter.done)

    def test_counter_bounded(self) -> None:
        """A huge header line keeps nothing but a few octets; the scan stops at the limit."""
        counter = HopCounter(limit=100_000)
        counter.feed(b"X-Long: " + b"a" * 50_000)
        self.assertLessEqual(len(counter._prefix), 32)
        counter.feed(b"b" * 60_000 + b"\r\nReceived: late\r\n")
        self.assertTrue(counter.done)
        self.assertEqual(counter.count, 0)


    def test_tlsRequiredNo(self) -> None:
        """
        ``TLS-Required: No`` in the header section (RFC 8689 §5) is kept
        with the queued message, cut anywhere; in the body, or under
        REQUIRETLS (§4.1), it is not.
        """
        for cut in (0, 5, 30, 40):
            message = b"Subject: x\r\ntls-required:  NO \r\n\r\nhi\r\n"
            counter = HopCounter()
            counter.feed(message[:cut])
            counter.feed(message[cut:])
            self.assertTrue(counter.tlsOptional, cut)
        for message in (b"Subject: x\r\n\r\nTLS-Required: No\r\n", b"TLS-Required: Nope\r\n\r\n"):
            counter = HopCounter()
            counter.feed(message)
            self.assertFalse(counter.tlsOptional, message)
        r = Relay()
        r.send(f"me@{REMOTE}", [f"bob@{LOCAL}"], b"TLS-Required: No\r\n" + MESSAGE)
        [m] = r.store.messages
        self.assertIs(m.envelope.get("tlsRequiredNo"), True)


class NetworkParsingTests(unittest.TestCase):
    def test_parse(self) -> None:
        self.assertEqual(
            [str(n) for n in parseNetworks("10.0.0.0/8, 2001:db8::/32,192.0.2.1,[::1]")],
            ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32", "::1/128"],
        )

    def test_bad(self) -> None:
        for text, words in [
            ("10.0.0.1/8", ["host bits", "10.0.0.0/8"]),
            ("example.com", ["not a network", "192.0.2.0/24"]),
            ("10.0.0.0/33", ["not a network"]),
            ("", ["no network"]),
        ]:
            with self.assertRaises(ValueError) as cm:
                parseNetworks(text)
            for word in words:
                self.assertIn(word, str(cm.exception), text)


class ProxyTests(unittest.TestCase):
    """Behind a PROXY-protocol front end, the reported client address is the one that counts."""

    timeout = 20

    async def _listen(self, policy: RelayPolicy) -> tuple[MemoryQueueStore, int]:
        store = MemoryQueueStore()
        factory = SMTPFactory(RelayDelivery(store, router(), policy), "mx.test")
        port = await serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1").listen(factory)

        def stop() -> Any:
            d = defer.maybeDeferred(port.stopListening)
            return d.addCallback(lambda _: factory.shutdown(grace=0))

        self.addCleanup(stop)
        return store, port.getHost().port

    async def _rcpt(self, port: int, source: str) -> Reply:
        client = await connectClient(self, port, greeting=False)
        client.send(f"PROXY TCP4 {source} 192.0.2.25 4242 25\r\n".encode())
        await client.waitReplies(1)
        await client.command(b"EHLO client.example")
        await client.command(f"MAIL FROM:<me@{REMOTE}>".encode())
        [reply] = await client.command(f"RCPT TO:<bob@{REMOTE}>".encode())
        return reply

    async def test_reported_address_in_network(self) -> None:
        _, port = await self._listen(RelayPolicy("203.0.113.0/24"))
        self.assertEqual((await self._rcpt(port, "203.0.113.7")).code, 250)

    async def test_proxy_address_does_not_count(self) -> None:
        """The front end itself (loopback) is in the networks; the client it reports is not."""
        _, port = await self._listen(RelayPolicy("127.0.0.0/8"))
        reply = await self._rcpt(port, "198.51.100.7")
        self.assertEqual((reply.code, reply.enhanced), (554, "5.7.1"))
