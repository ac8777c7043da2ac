"""
DKIM signing on the relay, end to end: ``twistd -n smtp --dkim
example.org:sel:KEYFILE`` in a subprocess signs what the relay networks
send for example.org (and its subdomains) as it is queued; the message
reaches the next hop (txsmtp's server in this test, recording the exact
bytes) with the ``DKIM-Signature:`` in front, and two independent
verifiers accept it: dkimpy, and OpenDKIM's ``opendkim-testmsg`` (Debian's
opendkim-tools) with the key served by DNS in a private network namespace.
Mail from another domain, and mail from a client outside the relay
networks, goes unsigned.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

from twisted.trial import unittest

from tests.outbound_helpers import listen
from tests.peers import PEERS_REQUIRED, requirePeer
from tests.test_dkimsign import _PEER_SCRIPT, KEYS, pem, record, verify
from tests.twistd_helpers import connectClient, startTwistd
from txsmtp.testing import MemoryDelivery

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@remote.test>\r\n"
    b"Subject: signed on the way out\r\n"
    b"Date: Mon, 7 Dec 2026 04:00:00 +0000\r\n"
    b"Message-ID: <dkim-e2e-1@example.org>\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"the end\r\n"
)


def opendkimVerify(message: bytes, key: Any) -> tuple[int, bytes]:
    """``opendkim-testmsg`` on ``message``, the key for sel._domainkey.example.org served by DNS."""
    program = requirePeer("opendkim-testmsg")
    unshare = [requirePeer("unshare"), "--mount", "--net"]
    probe = subprocess.run(unshare + ["true"], capture_output=True)
    if probe.returncode != 0:
        message_ = "unshare --mount --net is not permitted here: " + probe.stderr.decode()
        if PEERS_REQUIRED:
            raise AssertionError(message_)
        raise unittest.SkipTest(message_)
    result = subprocess.run(
        unshare + [sys.executable, _PEER_SCRIPT, program, "sel._domainkey.example.org", record(key).hex()],
        input=message,
        capture_output=True,
        timeout=60,
    )
    return result.returncode, result.stderr


class RelaySigningTests(unittest.TestCase):
    timeout = 120

    async def start(self, keyName: str) -> tuple[Any, Any]:
        cwd = tempfile.mkdtemp(prefix="txsmtp-test-dkim-")
        self.addCleanup(subprocess.run, ["rm", "-rf", cwd])
        keyPath = os.path.join(cwd, "dkim.pem")
        with open(keyPath, "wb") as f:
            f.write(pem(KEYS[keyName]))
        nextHop = listen(self, delivery=MemoryDelivery())
        running = await startTwistd(
            self,
            "--hostname", "relay.test.invalid", "--queue", "queue", "--relay-networks", "127.0.0.0/8",
            "--route", f"remote.test=smtp:[127.0.0.1]:{nextHop.port}",
            "--dkim", f"example.org:sel:{keyPath}",
            cwd=cwd,
        )  # fmt: skip
        return running, nextHop

    async def send(self, running: Any, message: bytes, sender: str = "alice@example.org") -> None:
        client = await connectClient(self, running.port)
        for line in (b"EHLO client.test", f"MAIL FROM:<{sender}>".encode(), b"RCPT TO:<bob@remote.test>", b"DATA"):
            [reply] = await client.command(line)
            self.assertLess(reply.code, 400, reply)
        [done] = await client.command(message.replace(b"\r\n.", b"\r\n..") + b".")
        self.assertEqual(done.code, 250, done)
        await client.command(b"QUIT")

    async def received(self, running: Any, nextHop: Any) -> Any:
        """The message the next hop stored, once the relay logged its delivery."""
        await running.waitForLog(r"to=<bob@remote\.test>.*result=delivered", timeout=60)
        [stored] = nextHop.delivery.messages
        return stored

    async def test_rsaSignedAndVerified(self) -> None:
        """RSA: the relayed message carries a signature both dkimpy and OpenDKIM accept."""
        running, nextHop = await self.start("rsa")
        await self.send(running, MESSAGE)
        stored = await self.received(running, nextHop)
        self.assertTrue(stored.body.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;"), stored.body[:300])
        self.assertTrue(stored.body.endswith(MESSAGE))
        signature = stored.body.split(b"\r\nReceived: ", 1)[0]
        self.assertIn(b"d=example.org", signature)
        self.assertIn(b"c=relaxed/relaxed", signature)
        self.assertTrue(verify(stored.body, KEYS["rsa"]))
        status, errors = opendkimVerify(stored.body, KEYS["rsa"])
        self.assertEqual(status, 0, errors)
        # A changed body no longer verifies: the checks above mean something.
        tampered = stored.body.replace(b"the end", b"the END")
        self.assertFalse(verify(tampered, KEYS["rsa"]))
        self.assertNotEqual(opendkimVerify(tampered, KEYS["rsa"])[0], 0)

    async def test_ed25519AndSubdomain(self) -> None:
        """Ed25519 (RFC 8463), From: in a subdomain of the signing domain: d=example.org, verified."""
        running, nextHop = await self.start("ed25519")
        await self.send(running, MESSAGE.replace(b"alice@example.org>", b"alice@eu.example.org>"))
        stored = await self.received(running, nextHop)
        self.assertTrue(stored.body.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;"), stored.body[:300])
        self.assertTrue(verify(stored.body, KEYS["ed25519"]))
        status, errors = opendkimVerify(stored.body, KEYS["ed25519"])
        self.assertEqual(status, 0, errors)

    async def test_otherDomainUnsigned(self) -> None:
        """From: in a domain without a key: relayed unsigned, and the log says why."""
        running, nextHop = await self.start("rsa")
        await self.send(running, MESSAGE.replace(b"alice@example.org>", b"alice@elsewhere.test>"))
        stored = await self.received(running, nextHop)
        self.assertNotIn(b"DKIM-Signature", stored.body)
        self.assertIn("not DKIM-signed: no key for the From: domain elsewhere.test", running.log)

