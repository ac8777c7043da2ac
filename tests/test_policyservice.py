"""
The policy service client (txsmtp.policyservice): the actions and the
request (pure), then the client and the guard against the real Debian
peers (postgrey on TCP, policyd-spf on a unix socket), a service that is
down and one that never answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from tests.policypeers import freePort, startPolicydSPF, startPostgrey, startSilentService
from tests.twistd_helpers import withTimeout
from txsmtp.envelope import ConnectionInfo, Envelope, Recipient
from txsmtp.errors import SMTPError
from txsmtp.policyservice import PolicyClient, PolicyGuard, Verdict, formatRequest, interpretAction
from txsmtp.wire.address import Address
from txsmtp.wire.params import MailParameters

SPF_ZONES = {
    "pass.example": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "fail.example": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
}


def connection(helo: str = "client.example.org") -> ConnectionInfo:
    info = ConnectionInfo(
        peer=IPv4Address("TCP", "127.0.0.1", 40000), host=IPv4Address("TCP", "127.0.0.1", 25), sessionId="s1"
    )
    info.heloName = helo
    info.esmtp = True
    return info


def envelope(sender: str | None, conn: ConnectionInfo, size: int | None = None) -> Envelope:
    return Envelope(Address(*sender.split("@")) if sender else None, MailParameters(size=size), conn)


def rcpt(address: str) -> Recipient:
    return Recipient(Address(*address.split("@")))


class ActionTests(unittest.TestCase):
    """interpretAction: Postfix's access(5) actions."""

    def test_goOn(self) -> None:
        self.assertEqual(interpretAction("DUNNO"), Verdict("dunno"))
        self.assertEqual(interpretAction("dunno"), Verdict("dunno"))
        self.assertEqual(interpretAction("OK"), Verdict("ok"))
        self.assertEqual(interpretAction("123"), Verdict("ok"))

    def test_reject(self) -> None:
        self.assertEqual(interpretAction("REJECT"), Verdict("refuse", 554, "5.7.1", "Access denied"))
        self.assertEqual(interpretAction("REJECT go away"), Verdict("refuse", 554, "5.7.1", "go away"))
        self.assertEqual(interpretAction("reject 5.7.23 no SPF"), Verdict("refuse", 554, "5.7.23", "no SPF"))

    def test_defer(self) -> None:
        self.assertEqual(interpretAction("DEFER"), Verdict("refuse", 450, "4.7.1", "Try again later"))
        greylisted = interpretAction("DEFER_IF_PERMIT 4.2.0 Greylisted, see http://x/")
        self.assertEqual(greylisted, Verdict("refuse", 450, "4.2.0", "Greylisted, see http://x/"))
        # A class that disagrees with the code is made to agree, as Postfix does.
        self.assertEqual(interpretAction("DEFER 5.7.1 later").enhanced, "4.7.1")

    def test_numeric(self) -> None:
        self.assertEqual(
            interpretAction("550 5.7.23 Message rejected due to: SPF fail"),
            Verdict("refuse", 550, "5.7.23", "Message rejected due to: SPF fail"),
        )
        self.assertEqual(interpretAction("451 try later"), Verdict("refuse", 451, "4.7.1", "try later"))
        self.assertEqual(interpretAction("521 bye").code, 550)

    def test_prependWarnUnsupported(self) -> None:
        self.assertEqual(interpretAction("prepend Received-SPF: Pass x "), Verdict("prepend", text="Received-SPF: Pass x"))
        self.assertEqual(interpretAction("PREPEND not a header").code, 451)
        self.assertEqual(interpretAction("WARN odd client"), Verdict("warn", text="odd client"))
        for action in ("HOLD", "DISCARD spam", "FILTER smtp:[127.0.0.1]:10025", "REDIRECT a@b", "BCC a@b", "DEFER_IF_REJECT x"):
            self.assertEqual(interpretAction(action).kind, "unsupported", action)
        self.assertEqual(interpretAction("no_such_class"), Verdict("refuse", 451, "4.3.5", "Server configuration error"))

    def test_request(self) -> None:
        """name=value lines and an empty line; a line end in a value cannot make another attribute."""
        request = formatRequest({"request": "smtpd_access_policy", "helo_name": "evil\naction=OK"})
        self.assertEqual(request, b"request=smtpd_access_policy\nhelo_name=evil action=OK\n\n")


class AttributeTests(unittest.TestCase):
    """The request a guard sends, as Postfix sends it."""

    def test_rcptAndData(self) -> None:
        guard = PolicyGuard([], stages=("RCPT", "DATA"))
        conn = connection()
        env = envelope("alice@example.org", conn, size=1234)
        first = guard.attributes("RCPT", conn, env, rcpt("bob@local.test"))
        self.assertEqual(first["request"], "smtpd_access_policy")
        self.assertEqual(first["protocol_state"], "RCPT")
        self.assertEqual(first["protocol_name"], "ESMTP")
        self.assertEqual(first["helo_name"], "client.example.org")
        self.assertEqual((first["sender"], first["recipient"], first["recipient_count"]), ("alice@example.org", "bob@local.test", "0"))
        self.assertEqual((first["client_address"], first["client_name"], first["reverse_client_name"]), ("127.0.0.1", "unknown", "unknown"))
        self.assertEqual((first["size"], first["server_port"]), ("1234", "25"))
        env.recipients.append(rcpt("bob@local.test"))
        second = guard.attributes("RCPT", conn, env, rcpt("carol@local.test"))
        self.assertEqual(second["instance"], first["instance"])
        env.recipients.append(rcpt("carol@local.test"))
        data = guard.attributes("DATA", conn, env, None)
        self.assertEqual((data["recipient"], data["recipient_count"], data["instance"]), ("", "2", first["instance"]))
        # The next transaction on the connection is another instance.
        nextOne = envelope(None, conn)
        nextOne.recipients.append(rcpt("bob@local.test"))
        other = guard.attributes("DATA", conn, nextOne, None)
        self.assertEqual((other["sender"], other["recipient"], other["recipient_count"]), ("", "bob@local.test", "1"))
        self.assertNotEqual(other["instance"], first["instance"])

    def test_stages(self) -> None:
        self.assertRaises(ValueError, PolicyGuard, [], stages=("MAIL",))


class PostgreyTests(unittest.TestCase):
    """Greylisting by the real postgrey, over one kept TCP connection."""

    timeout = 90

    async def test_greylistThenAccept(self) -> None:
        """The first attempt is deferred with postgrey's text; a retry after its delay passes, with its X-Greylist field."""
        port, _ = await startPostgrey(self, delay=1)
        client = PolicyClient(reactor, f"tcp:127.0.0.1:{port}", timeout=10)
        self.addCleanup(client.close)
        guard = PolicyGuard([client])
        conn = connection()
        env = envelope("alice@example.org", conn)
        with self.assertRaises(SMTPError) as caught:
            await guard.checkRecipient(conn, rcpt("bob@local.test"), env)
        self.assertEqual(caught.exception.code, 450)
        # Postgrey answers 4.2.0 to a client that sends etrn_domain, as Postfix does.
        self.assertEqual(caught.exception.enhanced, "4.2.0")
        self.assertIn("Greylisted", caught.exception.text)
        [kept] = client._idle
        # Retries, as a sending server would make them, until the delay passed (bounded).
        retries = 0
        while True:
            retry = envelope("alice@example.org", conn)
            try:
                await guard.checkRecipient(conn, rcpt("bob@local.test"), retry)
            except SMTPError as e:
                self.assertEqual(e.code, 450)
                retries += 1
                if retries > 40:
                    self.fail("postgrey never let the retry through")
                await task.deferLater(reactor, 0.25, lambda: None)
                continue
            break
        self.assertGreater(retries, 0)
        self.assertTrue(any(h.startswith(b"X-Greylist: delayed") for h in retry.addedHeaders), retry.addedHeaders)
        self.assertEqual(client._idle, [kept], "the connection was not kept")
        self.assertEqual(client.openConnections, 1)

    async def test_autoWhitelist(self) -> None:
        """
        postgrey --auto-whitelist-clients=1: once a client got one message
        through greylisting, its new (sender, recipient) pairs pass at once.
        """
        port, _ = await startPostgrey(self, 1, None, None, "--auto-whitelist-clients=1")
        client = PolicyClient(reactor, f"tcp:127.0.0.1:{port}", timeout=10)
        self.addCleanup(client.close)
        guard = PolicyGuard([client])
        conn = connection()
        retries = 0
        while True:
            try:
                await guard.checkRecipient(conn, rcpt("bob@local.test"), envelope("alice@example.org", conn))
            except SMTPError as e:
                self.assertEqual(e.code, 450)
                retries += 1
                self.assertLess(retries, 40, "postgrey never let the retry through")
                await task.deferLater(reactor, 0.25, lambda: None)
                continue
            break
        self.assertGreater(retries, 0)
        fresh = envelope("carol@elsewhere.example", conn)
        await guard.checkRecipient(conn, rcpt("dave@local.test"), fresh)
        # Whitelisted clients get DUNNO: no X-Greylist field.
        self.assertEqual(fresh.addedHeaders, [])

    async def test_pool(self) -> None:
        """Requests at once share the pool: one connection by default, up to ``connections``."""
        port, _ = await startPostgrey(self, delay=1)
        for size in (1, 3):
            client = PolicyClient(reactor, f"tcp:127.0.0.1:{port}", timeout=10, connections=size)
            self.addCleanup(client.close)
            guard = PolicyGuard([client])
            conn = connection()
            asked = [
                defer.ensureDeferred(guard.checkRecipient(conn, rcpt(f"u{i}@local.test"), envelope(f"s{size}@example.org", conn)))
                for i in range(5)
            ]
            results = await defer.DeferredList(asked, consumeErrors=True)
            for ok, failure in results:
                self.assertFalse(ok)
                self.assertEqual(failure.value.code, 450)
            self.assertEqual(client.openConnections, size)
            self.assertEqual(len(client._idle), size)

    async def test_reconnect(self) -> None:
        """postgrey restarted: the next request goes over a new connection."""
        port, stop = await startPostgrey(self, delay=1)
        client = PolicyClient(reactor, f"tcp:127.0.0.1:{port}", timeout=10)
        self.addCleanup(client.close)
        guard = PolicyGuard([client])
        conn = connection()
        with self.assertRaises(SMTPError):
            await guard.checkRecipient(conn, rcpt("bob@local.test"), envelope("a@example.org", conn))
        await stop()
        await startPostgrey(self, delay=1, port=port)
        with self.assertRaises(SMTPError) as caught:
            await guard.checkRecipient(conn, rcpt("bob@local.test"), envelope("b@example.org", conn))
        self.assertIn("Greylisted", caught.exception.text)


class PolicydSPFTests(unittest.TestCase):
    """The real policyd-spf on a unix socket, its DNS answered from the test's zones."""

    timeout = 90

    async def test_failAndPass(self) -> None:
        path = await startPolicydSPF(self, SPF_ZONES)
        client = PolicyClient(reactor, f"unix:{path}", timeout=20)
        self.addCleanup(client.close)
        guard = PolicyGuard([client])
        conn = connection()
        with self.assertRaises(SMTPError) as caught:
            await guard.checkRecipient(conn, rcpt("bob@local.test"), envelope("mallory@fail.example", conn))
        self.assertEqual((caught.exception.code, caught.exception.enhanced), (550, "5.7.23"))
        self.assertIn("SPF fail", caught.exception.text)
        good = envelope("alice@pass.example", conn)
        await guard.checkRecipient(conn, rcpt("bob@local.test"), good)
        good.recipients.append(rcpt("bob@local.test"))
        await guard.checkRecipient(conn, rcpt("carol@local.test"), good)
        # One field for the message, whatever the number of recipients.
        self.assertEqual(len(good.addedHeaders), 1, good.addedHeaders)
        self.assertTrue(good.addedHeaders[0].startswith(b"Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=127.0.0.1"))
        self.assertTrue(good.addedHeaders[0].endswith(b"\r\n"))

    async def test_noPrependWithoutQueue(self) -> None:
        """Without the relay queue a PREPEND is logged, not added."""
        path = await startPolicydSPF(self, SPF_ZONES)
        client = PolicyClient(reactor, f"unix:{path}", timeout=20)
        self.addCleanup(client.close)
        guard = PolicyGuard([client], prepends=False)
        conn = connection()
        good = envelope("alice@pass.example", conn)
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await guard.checkRecipient(conn, rcpt("bob@local.test"), good)
        self.assertEqual(good.addedHeaders, [])
        self.assertTrue(any("cannot be honoured" in e.get("log_format", "") for e in events))


class FailureTests(unittest.TestCase):
    """A service down or silent: the default action."""

    timeout = 30

    async def test_downDefaultAccepts(self) -> None:
        client = PolicyClient(reactor, f"tcp:127.0.0.1:{freePort()}", timeout=5)
        guard = PolicyGuard([client])
        conn = connection()
        env = envelope("a@example.org", conn)
        await guard.checkRecipient(conn, rcpt("bob@local.test"), env)
        self.assertEqual(env.addedHeaders, [])

    async def test_downDefaultDefers(self) -> None:
        client = PolicyClient(reactor, f"tcp:127.0.0.1:{freePort()}", timeout=5)
        guard = PolicyGuard([client], default="451 4.3.0 Policy service unavailable, try again later")
        conn = connection()
        with self.assertRaises(SMTPError) as caught:
            await guard.checkRecipient(conn, rcpt("bob@local.test"), envelope("a@example.org", conn))
        self.assertEqual((caught.exception.code, caught.exception.enhanced), (451, "4.3.0"))

    async def test_timeout(self) -> None:
        """A service that never answers: the default action after the time limit, the connection closed."""
        port, factory = await startSilentService(self)
        client = PolicyClient(reactor, f"tcp:127.0.0.1:{port}", timeout=0.5)
        guard = PolicyGuard([client], default="DEFER")
        conn = connection()
        started = reactor.seconds()
        with self.assertRaises(SMTPError) as caught:
            await guard.checkRecipient(conn, rcpt("bob@local.test"), envelope("a@example.org", conn))
        self.assertEqual(caught.exception.code, 450)
        self.assertGreaterEqual(reactor.seconds() - started, 0.45)
        self.assertIn(b"request=smtpd_access_policy\n", b"".join(factory.received))
        # The connection is not used again: the service sees it closed.
        self.assertEqual(client._idle, [])
        if factory.closed == 0:
            closed: defer.Deferred[None] = defer.Deferred()
            factory.waiters.append(closed)
            await withTimeout(closed, 10, lambda: "the timed-out connection stayed open")
        self.assertEqual(factory.closed, 1)
        await client.close()

    async def test_firstRefusalWins(self) -> None:
        """Services are asked in order; a refusal ends the asking (the silent second is not asked)."""
        port, _ = await startPostgrey(self, delay=1, dbdir=None)
        silentPort, factory = await startSilentService(self)
        first = PolicyClient(reactor, f"tcp:127.0.0.1:{port}", timeout=10)
        second = PolicyClient(reactor, f"tcp:127.0.0.1:{silentPort}", timeout=0.5)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        guard = PolicyGuard([first, second], default="DUNNO")
        conn = connection()
        with self.assertRaises(SMTPError):
            await guard.checkRecipient(conn, rcpt("bob@local.test"), envelope("a@example.org", conn))
        self.assertEqual(factory.received, [])

