"""
MX delivery under MTA-STS (RFC 8461) and REQUIRETLS (RFC 8689), end to
end: :class:`~txsmtp.queue.outbound.Outbound` with an
:class:`~txsmtp.queue.mxtls.MXSecurity` holding a real
:class:`~txsmtp.tlspolicy.mtasts.MTASTS`; the DNS answers from the test DNS
server (:mod:`tests.dnsserver`), the policy from a real HTTPS server
(:class:`tests.test_tlspolicy_mtasts.PolicyServer`), and txsmtp's own
server as the MX hosts, with STARTTLS and certificates from the test CA
(:mod:`tests.certs`), the one authority both the policy fetch and the MX
certificate check trust.

What is checked on the MX side is what a server sees: the messages stored,
the connections made and every MAIL command with whether TLS was on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, ssl, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.certs import certificates, serverCertificate
from tests.dnsserver import SERVFAIL, startDNSServer
from tests.outbound_helpers import BODY, body, freePort, listen, queued
from tests.test_tlspolicy_mtasts import PolicyServer
from txsmtp.queue.model import AttemptResult, NextHop, QueuedMessage, Result
from txsmtp.queue.mxtls import MXSecurity
from txsmtp.queue.outbound import Outbound
from txsmtp.testing import MemoryDelivery
from txsmtp.testing import _MemorySession as MemorySession
from txsmtp.tls import ServerTLS
from txsmtp.tlspolicy.mtasts import MTASTS

_REACTOR: Any = reactor
DOMAIN = "example.com"
POLICY_HOST = "mta-sts.example.com"


def policyText(mode: str, *mx: str) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 86400"]
    return ("\n".join(lines) + "\n").encode()


def trustRoot() -> Any:
    """The test root CA, as the only authority."""
    with open(certificates().ca, "rb") as f:
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(f.read())])


def requireTLS(message: QueuedMessage) -> QueuedMessage:
    message.envelope["parameters"]["requiretls"] = True
    return message


class _RecordingSession(MemorySession):
    def checkSender(self, sender: Any, parameters: Any) -> None:
        self.delivery.mailCommands.append((str(sender), self.connection.tls is not None))
        super().checkSender(sender, parameters)


class RecordingDelivery(MemoryDelivery):
    """A :class:`MemoryDelivery` that also records every MAIL command: ``(sender, under TLS)``."""

    sessionFactory = _RecordingSession

    def __init__(self) -> None:
        super().__init__()
        self.mailCommands: list[tuple[str, bool]] = []


_issued: dict[str, tuple[str, str]] = {}


def certificateFor(name: str, trusted: bool = True) -> tuple[str, str]:
    """A server certificate (chain, key) for ``name`` from the test CA (or a rogue one), made once."""
    key = f"{name} {trusted}"
    if key not in _issued:
        _issued[key] = serverCertificate((name,), trusted=trusted)
    return _issued[key]


class _Fixture(unittest.TestCase):
    """The DNS server, the policy server, the MX port, and the log lines of txsmtp."""

    timeout = 60

    def setUp(self) -> None:
        self.zones: dict[str, Any] = {
            DOMAIN: {"MX": [(10, "mx1.example.com")]},
            "mx1.example.com": {"A": ["127.0.0.2"]},
            "mx2.example.com": {"A": ["127.0.0.1"]},
            "_mta-sts.example.com": {"TXT": ["v=STSv1; id=2026120701"]},
            POLICY_HOST: {"A": ["127.0.0.1"]},
        }
        self.dns = startDNSServer(self, self.zones)
        self.policyServer = PolicyServer(self, *certificateFor(POLICY_HOST))
        self.port = freePort()
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace", "").startswith("txsmtp."):
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def servePolicy(self, mode: str, *mx: str) -> None:
        self.policyServer.serve(policyText(mode, *mx), host=POLICY_HOST)

    def mx(self, address: str, certificate: tuple[str, str] | None, **kw: Any) -> Any:
        """An MX host (txsmtp's server) on ``address`` at the MX port; STARTTLS with ``certificate``."""
        tls = ServerTLS(*certificate) if certificate is not None else None
        return listen(self, address, self.port, delivery=RecordingDelivery(), tls=tls, **kw)

    def outbound(self) -> Outbound:
        mtasts = MTASTS(
            self.dns.resolver(), _REACTOR, clock=task.Clock(), trustRoot=trustRoot(), timeout=10, port=self.policyServer.port
        )
        outbound = Outbound(
            "relay.test.invalid",
            dnsServer=self.dns.address,
            mxPort=self.port,
            mxSecurity=MXSecurity(mtasts),
            mxTrustRoot=trustRoot(),
        )
        self.addCleanup(outbound.close)
        return outbound

    async def deliver(self, message: QueuedMessage | None = None, outbound: Outbound | None = None) -> AttemptResult:
        message = message or queued([f"rcpt@{DOMAIN}"])
        outbound = outbound or self.outbound()
        [result] = await outbound.deliver(NextHop("mx", DOMAIN), message, message.recipients, body())
        return result

    def logged(self, word: str) -> list[str]:
        return [line for line in self.lines if word in line]


class EnforceTests(_Fixture):
    """A policy in ``enforce`` mode."""

    async def test_delivered(self) -> None:
        """The MX host matches the policy and its certificate is valid for its name: delivered over TLS."""
        self.servePolicy("enforce", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertEqual(result.remoteMTA, "dns; mx1.example.com")
        self.assertIn("(mta-sts)", result.reason)
        [stored] = mx1.delivery.messages
        self.assertEqual(stored.body, BODY)
        self.assertIsNotNone(stored.envelope.connection.tls)
        self.assertEqual(mx1.delivery.mailCommands, [("sender@example.org", True)])
        # The policy was fetched from mta-sts.<domain> (RFC 8461 §3.3).
        self.assertEqual(self.policyServer.requests, [(POLICY_HOST, b"/.well-known/mta-sts.txt")])
        self.assertIn(("_mta-sts.example.com", "TXT"), self.dns.queries)

    async def test_wildcardPattern(self) -> None:
        """A ``*.`` pattern of the policy matches one label (RFC 8461 §4.1)."""
        self.zones[DOMAIN]["MX"] = [(10, "in.mx.example.com")]
        self.zones["in.mx.example.com"] = {"A": ["127.0.0.2"]}
        self.servePolicy("enforce", "*.mx.example.com")
        mx = self.mx("127.0.0.2", certificateFor("in.mx.example.com"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertEqual(len(mx.delivery.messages), 1)

    async def test_caseOfNames(self) -> None:
        """The MX record and the policy spell the host name in other cases: it matches all the same."""
        self.zones[DOMAIN]["MX"] = [(10, "MX1.Example.COM")]
        self.servePolicy("enforce", "mx1.EXAMPLE.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertIn("(mta-sts)", result.reason)
        self.assertEqual(len(mx1.delivery.messages), 1)

    async def test_certificateForAnotherName(self) -> None:
        """
        The certificate is valid but for another name: deferred ``4.7.5``,
        and no new connection without TLS (RFC 8461 §5: no plaintext
        fallback): the server saw no MAIL at all and stored nothing.
        """
        self.servePolicy("enforce", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("elsewhere.example.net"))
        result = await self.deliver()
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.7.5"), result.reason)
        self.assertIn("mx1.example.com", result.reason)
        self.assertEqual(mx1.delivery.messages, [])
        self.assertEqual(mx1.delivery.mailCommands, [])
        self.assertEqual(len(mx1.connections), 1)
        # Logged in TLS-RPT's words (RFC 8460 §4.3).
        [line] = self.logged("result=certificate-host-mismatch")
        self.assertIn("mta-sts domain=example.com mx=mx1.example.com", line)

    async def test_tlsRequiredNo(self) -> None:
        """
        ``TLS-Required: No`` (RFC 8689 §5): the enforce policy does not stop
        delivery to a host whose certificate is for another name; TLS is
        still used, unchecked.
        """
        self.servePolicy("enforce", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("elsewhere.example.net"))
        message = queued([f"rcpt@{DOMAIN}"])
        message.envelope["tlsRequiredNo"] = True
        result = await self.deliver(message)
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertNotIn("(mta-sts)", result.reason)
        self.assertEqual(mx1.delivery.mailCommands, [("sender@example.org", True)])
        self.assertEqual(self.policyServer.requests, [])
        self.assertTrue(self.logged("TLS-Required: No"))

    async def test_untrustedAuthority(self) -> None:
        """The right name, from an authority nobody trusts: deferred ``4.7.5``, nothing sent."""
        self.servePolicy("enforce", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com", trusted=False))
        result = await self.deliver()
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.7.5"), result.reason)
        self.assertEqual(mx1.delivery.mailCommands, [])
        self.assertEqual(len(mx1.connections), 1)
        self.assertEqual(len(self.logged("result=certificate-not-trusted")), 1, self.lines)

    async def test_noSTARTTLS(self) -> None:
        """The MX host offers no STARTTLS: deferred (``4.7.4``), nothing sent in plaintext."""
        self.servePolicy("enforce", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", None)
        result = await self.deliver()
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.7.4"), result.reason)
        self.assertEqual(mx1.delivery.mailCommands, [])
        self.assertEqual(mx1.delivery.messages, [])
        self.assertEqual(len(self.logged("result=starttls-not-supported")), 1, self.lines)

    async def test_unlistedHostNotUsed(self) -> None:
        """
        Two MX hosts, the preferred one not in the policy: it is not used,
        the listed one gets the mail (RFC 8461 §4.1).
        """
        self.zones[DOMAIN]["MX"] = [(10, "mx2.example.com"), (20, "mx1.example.com")]
        self.servePolicy("enforce", "mx1.example.com")
        mx2 = self.mx("127.0.0.1", certificateFor("mx2.example.com"))
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver()
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mx1.example.com"), result.reason)
        self.assertEqual(len(mx1.delivery.messages), 1)
        self.assertEqual(mx2.connections, [])
        self.assertNotIn(("mx2.example.com", "A"), self.dns.queries)
        [line] = self.logged("matches no mx of the policy")
        self.assertIn("mx2.example.com", line)

    async def test_nextListedHostAfterTLSFailure(self) -> None:
        """
        Two listed hosts, the preferred one's certificate for another name:
        deferred there (no MAIL), and the next one gets the mail.
        """
        self.zones[DOMAIN]["MX"] = [(10, "mx2.example.com"), (20, "mx1.example.com")]
        self.servePolicy("enforce", "mx1.example.com", "mx2.example.com")
        mx2 = self.mx("127.0.0.1", certificateFor("elsewhere.example.net"))
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver()
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mx1.example.com"), result.reason)
        self.assertEqual(len(mx1.delivery.messages), 1)
        self.assertEqual(len(mx2.connections), 1)
        self.assertEqual(mx2.delivery.mailCommands, [])

    async def test_cachedPolicyOutlivesTXT(self) -> None:
        """
        The TXT record and the policy file go away: the cached enforce
        policy (max_age not over) still applies to the next message (RFC
        8461 §3.3, §5.1): the mismatched host is not used in plaintext.
        """
        self.servePolicy("enforce", "mx1.example.com")
        good = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        outbound = self.outbound()
        first = await self.deliver(outbound=outbound)
        self.assertEqual(first.result, Result.DELIVERED, first.reason)
        self.assertEqual(len(good.delivery.messages), 1)
        del self.zones["_mta-sts.example.com"]
        self.policyServer.answers.clear()
        self.zones[DOMAIN]["MX"] = [(10, "mx2.example.com")]
        bad = self.mx("127.0.0.1", certificateFor("mx2.example.com"))
        second = await self.deliver(outbound=outbound)
        self.assertEqual((second.result, second.status), (Result.DEFERRED, "4.7.5"), second.reason)
        self.assertIn("matches its MTA-STS policy", second.reason)
        self.assertEqual(bad.connections, [])

    async def test_noHostMatches(self) -> None:
        """No MX host matches: deferred ``4.7.5`` without a connection."""
        self.servePolicy("enforce", "mx9.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver()
        self.assertEqual((result.result, result.status), (Result.DEFERRED, "4.7.5"), result.reason)
        self.assertIn("matches its MTA-STS policy", result.reason)
        self.assertEqual(mx1.connections, [])


class TestingModeTests(_Fixture):
    """A policy in ``testing`` mode: delivery as without one, the failures logged."""

    async def test_mismatchDeliveredAndLogged(self) -> None:
        """
        The MX host is not in the policy and its certificate is for another
        name: delivered all the same (opportunistic TLS, RFC 8461 §5), and
        a TLS-RPT ``validation-failure`` line logged (RFC 8460 §4.3.2.1).
        """
        self.servePolicy("testing", "mx9.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("elsewhere.example.net"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertNotIn("(mta-sts)", result.reason)
        [stored] = mx1.delivery.messages
        self.assertIsNotNone(stored.envelope.connection.tls)
        [line] = self.logged("result=validation-failure")
        self.assertIn("mode=testing", line)
        self.assertIn("MX host mx1.example.com matches no mx", line)

    async def test_matchingNothingLogged(self) -> None:
        """The MX host is in the policy: delivered, no failure logged."""
        self.servePolicy("testing", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertEqual(len(mx1.delivery.messages), 1)
        self.assertEqual(self.logged("validation-failure"), [])

    async def test_requireTLSRefused(self) -> None:
        """A testing policy authenticates nothing: a REQUIRETLS message fails ``5.7.10``."""
        self.servePolicy("testing", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver(requireTLS(queued([f"rcpt@{DOMAIN}"])))
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.7.10"), result.reason)
        self.assertEqual(mx1.connections, [])


class UnusablePolicyTests(_Fixture):
    """A policy that cannot be had: delivery as without one (RFC 8461 §5: no policy, no change)."""

    async def test_fetchFails(self) -> None:
        """The TXT record is there but the HTTPS server has no policy (404): opportunistic TLS, delivered."""
        mx1 = self.mx("127.0.0.2", certificateFor("elsewhere.example.net"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertEqual(len(self.policyServer.requests), 1)
        self.assertEqual(len(mx1.delivery.messages), 1)

    async def test_txtServfail(self) -> None:
        """The TXT lookup fails (SERVFAIL): no policy known, delivered opportunistically."""
        self.zones["_mta-sts.example.com"] = SERVFAIL
        self.servePolicy("enforce", "mx9.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("elsewhere.example.net"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertEqual(len(mx1.delivery.messages), 1)


class RequireTLSTests(_Fixture):
    """REQUIRETLS (RFC 8689 §4.2.1) toward MX hosts."""

    async def test_enforcePolicy(self) -> None:
        """An enforce policy and a server offering REQUIRETLS: delivered, with REQUIRETLS."""
        self.servePolicy("enforce", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver(requireTLS(queued([f"rcpt@{DOMAIN}"])))
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        [stored] = mx1.delivery.messages
        self.assertTrue(stored.envelope.parameters.requireTLS)
        self.assertIsNotNone(stored.envelope.connection.tls)

    async def test_enforceServerNotOffering(self) -> None:
        """Authenticated, but the server does not offer REQUIRETLS: failed ``5.7.10``, nothing stored."""
        self.servePolicy("enforce", "mx1.example.com")
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"), offerRequireTLS=False)
        result = await self.deliver(requireTLS(queued([f"rcpt@{DOMAIN}"])))
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.7.10"), result.reason)
        self.assertEqual(mx1.delivery.messages, [])
        self.assertEqual(mx1.delivery.mailCommands, [])

    async def test_nextHostOffering(self) -> None:
        """
        The preferred MX host does not offer REQUIRETLS, the next one does:
        the next one gets the message (RFC 8689 §4.2.1 is about a host, not
        the domain).
        """
        self.zones[DOMAIN]["MX"] = [(10, "mx2.example.com"), (20, "mx1.example.com")]
        self.servePolicy("enforce", "mx1.example.com", "mx2.example.com")
        mx2 = self.mx("127.0.0.1", certificateFor("mx2.example.com"), offerRequireTLS=False)
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver(requireTLS(queued([f"rcpt@{DOMAIN}"])))
        self.assertEqual((result.result, result.remoteMTA), (Result.DELIVERED, "dns; mx1.example.com"), result.reason)
        self.assertEqual(len(mx2.connections), 1)
        self.assertEqual(mx2.delivery.mailCommands, [])
        [stored] = mx1.delivery.messages
        self.assertTrue(stored.envelope.parameters.requireTLS)

    async def test_noPolicy(self) -> None:
        """No policy (nor DANE): failed ``5.7.10`` without a connection."""
        del self.zones["_mta-sts.example.com"]
        mx1 = self.mx("127.0.0.2", certificateFor("mx1.example.com"))
        result = await self.deliver(requireTLS(queued([f"rcpt@{DOMAIN}"])))
        self.assertEqual((result.result, result.status), (Result.FAILED, "5.7.10"), result.reason)
        self.assertIn("REQUIRETLS", result.reason)
        self.assertEqual(mx1.connections, [])
        self.assertEqual(self.policyServer.requests, [])

    async def test_withoutRequireTLSNoPolicy(self) -> None:
        """The same host takes a message without REQUIRETLS (opportunistic TLS)."""
        del self.zones["_mta-sts.example.com"]
        mx1 = self.mx("127.0.0.2", certificateFor("elsewhere.example.net"))
        result = await self.deliver()
        self.assertEqual(result.result, Result.DELIVERED, result.reason)
        self.assertEqual(mx1.delivery.mailCommands, [("sender@example.org", True)])
