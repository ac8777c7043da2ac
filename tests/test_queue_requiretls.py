"""
The queue's side of REQUIRETLS (RFC 8689) and of the header fields the
server adds once it has the whole message, through
:class:`~txsmtp.queue.outbound.Outbound` to real servers (txsmtp's, with
STARTTLS verified against the test CA) and into the local delivery.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl as tssl
from twisted.trial import unittest

from tests.certs import certificates
from tests.outbound_helpers import BODY, body, listen, queued
from txsmtp.queue.model import AttemptResult, NextHop, QueuedMessage, Result
from txsmtp.queue.outbound import Outbound
from txsmtp.queue.prefixed import PrefixedBody
from txsmtp.queue.routing import parseRelayHost, parseRoute
from txsmtp.testing import MemoryDelivery
from txsmtp.tls import ServerTLS

ADDED = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s; bh=x; b=y\r\n"


def _requireTLS(message: QueuedMessage) -> QueuedMessage:
    message.envelope["parameters"]["requiretls"] = True
    return message


class _Base(unittest.TestCase):
    timeout = 60

    def outbound(self, **kw: Any) -> Outbound:
        with open(certificates().ca, "rb") as f:
            trust = tssl.Certificate.loadPEM(f.read())
        outbound = Outbound("relay.test.invalid", trustRoot=trust, **kw)
        self.addCleanup(outbound.close)
        return outbound

    def server(self, *, tls: bool = True, **kw: Any) -> Any:
        c = certificates()
        return listen(self, delivery=MemoryDelivery(), tls=ServerTLS(c.chain, c.key) if tls else None, **kw)

    async def deliver(self, outbound: Outbound, hop: NextHop, message: QueuedMessage) -> list[AttemptResult]:
        data = body()
        prefix = b"".join(h.encode() for h in message.envelope.get("addedHeaders", []))
        return await outbound.deliver(hop, message, message.recipients, PrefixedBody(prefix, data) if prefix else data)


class RequireTLSTests(_Base):
    async def test_verifiedHopOffering(self) -> None:
        """A smart host verified against the CA that offers REQUIRETLS gets the message, with REQUIRETLS."""
        server = self.server()
        hop = parseRelayHost(f"[localhost]:{server.port}")
        [r] = await self.deliver(self.outbound(), hop, _requireTLS(queued(["you@example.net"])))
        self.assertEqual(r.result, Result.DELIVERED, r)
        [stored] = server.delivery.messages
        self.assertTrue(stored.envelope.parameters.requireTLS)
        self.assertIsNotNone(stored.envelope.connection.tls)

    async def test_hopNotOffering(self) -> None:
        """Verified TLS to a hop that does not offer REQUIRETLS: FAILED 5.7.10, nothing sent."""
        server = self.server(offerRequireTLS=False)
        hop = parseRelayHost(f"[localhost]:{server.port}")
        [r] = await self.deliver(self.outbound(), hop, _requireTLS(queued(["you@example.net"])))
        self.assertEqual((r.result, r.status), (Result.FAILED, "5.7.10"), r)
        self.assertIn("does not offer REQUIRETLS", r.reason or "")
        self.assertEqual(server.delivery.messages, [])

    async def test_routeWithoutVerifiedTLS(self) -> None:
        """A route with tls=none or opportunistic: FAILED 5.7.10 before any connection."""
        server = self.server(tls=False)
        for policy in ("none", "opportunistic"):
            _, hop = parseRoute(f"example.net=smtp:[127.0.0.1]:{server.port}", tls=policy)
            [r] = await self.deliver(self.outbound(), hop, _requireTLS(queued(["you@example.net"])))
            self.assertEqual((r.result, r.status), (Result.FAILED, "5.7.10"), (policy, r))
        self.assertEqual(server.connections, [])

    async def test_withoutRequireTLS(self) -> None:
        """The same route takes a message without REQUIRETLS (the check is the flag's, not the route's)."""
        server = self.server(tls=False)
        _, hop = parseRoute(f"example.net=smtp:[127.0.0.1]:{server.port}", tls="none")
        [r] = await self.deliver(self.outbound(), hop, queued(["you@example.net"]))
        self.assertEqual(r.result, Result.DELIVERED, r)

    async def test_localIsFinal(self) -> None:
        """The local hop is final delivery: a REQUIRETLS message is stored."""
        local = MemoryDelivery()
        outbound = self.outbound(localDelivery=local)
        [r] = await self.deliver(outbound, NextHop("local", "local"), _requireTLS(queued(["you@example.net"])))
        self.assertEqual(r.result, Result.DELIVERED, r)
        self.assertEqual(len(local.messages), 1)


class AddedHeadersTests(_Base):
    def added(self) -> QueuedMessage:
        message = queued(["you@example.net"])
        message.envelope["addedHeaders"] = [ADDED.decode()]
        message.envelope["eightBit"] = False
        return message

    async def test_smtpHop(self) -> None:
        """The added fields go first, then the stored body; SIZE counts them."""
        server = self.server()
        hop = parseRelayHost(f"[localhost]:{server.port}")
        [r] = await self.deliver(self.outbound(), hop, self.added())
        self.assertEqual(r.result, Result.DELIVERED, r)
        [stored] = server.delivery.messages
        self.assertTrue(stored.body.endswith(ADDED + BODY), stored.body[:200])
        self.assertEqual(stored.envelope.parameters.size, len(ADDED) + len(BODY))

    async def test_localHop(self) -> None:
        """The local delivery gets them too."""
        local = MemoryDelivery()
        [r] = await self.deliver(self.outbound(localDelivery=local), NextHop("local", "local"), self.added())
        self.assertEqual(r.result, Result.DELIVERED, r)
        self.assertTrue(local.messages[0].body.endswith(ADDED + BODY))
