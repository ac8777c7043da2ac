"""
The PROXY protocol (``--listen haproxy:tcp:...``, Twisted's
:mod:`twisted.protocols.haproxy` wrapper, versions 1 and 2).

Behind a load balancer every connection comes from the balancer; the PROXY
header it sends first names the real client.  That address, not the
balancer's, must be the one in ``Received:``, in the logs and in what a
delivery sees (``ConnectionInfo.peer`` / ``peerHost``, from
``openSession`` on: relay decisions and limits are made with it).

- in-process: an :class:`~txsmtp.server.SMTPFactory` on
  ``serverFromString(reactor, "haproxy:tcp:0:...")`` and raw clients that
  write v1 lines and v2 binary headers built here from the specification
  (https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt); no header
  or a malformed one: dropped, no session, nothing delivered; STARTTLS and
  implicit TLS through the wrapper;
- swaks ``--proxy-version 1`` and ``2`` against ``twistd -n smtp --listen
  haproxy:tcp:...``;
- a real HAProxy (``mode tcp``, ``send-proxy-v2``, SMTP health checks) in
  front of ``twistd smtp``, plain and with STARTTLS (TCP mode passes TLS
  through; txsmtp terminates it).  The client connects from 127.0.0.2 so
  that its address differs from HAProxy's own (127.0.0.1).  The
  haproxy.cfg of docs/deployments.rst passes ``haproxy -c``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import textwrap
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from tests.certs import certificates
from tests.peers import requirePeer
from tests.twistd_helpers import (
    LogEvents,
    RawSMTPClient,
    RunningTwistd,
    _TwistdProcess,
    connectClient,
    maildirFiles,
    parseStored,
    readAll,
    runProcess,
    startTwistd,
)
from txsmtp.errors import SMTPError
from txsmtp.server import SMTPFactory
from txsmtp.testing import MemoryDelivery, StoredMessage
from txsmtp.tls import ServerTLS

HELO = "client.test.invalid"
HOSTNAME = "mx.test.invalid"
PROXIED = "haproxy:tcp:0:interface=127.0.0.1"

# -- PROXY headers, from the specification ------------------------------------------------------

#: The 12 octets every v2 header starts with (section 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxyV1(source: str, sourcePort: int, dest: str, destPort: int) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport`` CRLF (section 2.1)."""
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {dest} {sourcePort} {destPort}\r\n".encode("ascii")


def proxyV2(
    source: str | None = None,
    sourcePort: int = 0,
    dest: str = "192.0.2.25",
    destPort: int = 25,
    *,
    tlvs: bytes = b"",
) -> bytes:
    """
    A binary v2 header (section 2.2): the PROXY command over TCP with these
    addresses, or the LOCAL command (what HAProxy's health checks send)
    without any when ``source`` is None.  ``tlvs`` are appended after the
    addresses and counted in the length, as the specification allows.
    """
    if source is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    assert src.version == dst.version
    family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    addresses = src.packed + dst.packed + struct.pack("!HH", sourcePort, destPort)
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def receivedPeer(message: StoredMessage) -> str:
    """The address in ``Received: from HELO ([address])`` (``IPv6:`` removed)."""
    m = re.match(rb"Received: from \S+ \(\[(?:IPv6:)?([^\]\r\n]+)\]\)\r\n", message.data)
    assert m is not None, message.data[:300]
    return m.group(1).decode("ascii")


def freePorts(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# -- in-process deliveries with a policy ---------------------------------------------------------

#: The network a policy trusts to relay: HAProxy's own (loopback) address
#: must never count, or every proxied client would be an open relay.
TRUSTED = ipaddress.ip_network("127.0.0.0/8")
LOCAL_DOMAIN = "example.org"
BLOCKED = "192.0.2.66"


class _PolicySession(MemoryDelivery.sessionFactory):  # type: ignore[name-defined,misc]
    def checkRecipient(self, recipient: Any, envelope: Any) -> None:
        if recipient.address.domain.lower() == LOCAL_DOMAIN:
            return
        if ipaddress.ip_address(envelope.connection.peerHost) not in TRUSTED:
            raise SMTPError(554, "5.7.1", f"Relaying denied for {envelope.connection.peerHost}")


class PolicyDelivery(MemoryDelivery):
    """
    A :class:`MemoryDelivery` with the decisions a real MX makes by address:
    a blocked client is refused at connect, and only :data:`TRUSTED`
    clients may relay (recipients outside :data:`LOCAL_DOMAIN`).  Records
    the address each session was opened for, as ``openSession`` saw it.
    """

    sessionFactory = _PolicySession

    def __init__(self) -> None:
        super().__init__()
        self.openedFor: list[str] = []

    def openSession(self, connection: Any) -> Any:
        self.openedFor.append(connection.peerHost)
        if connection.peerHost == BLOCKED:
            raise SMTPError(554, "5.7.1", f"No SMTP service for {connection.peerHost}")
        return super().openSession(connection)


# -- in-process -----------------------------------------------------------------------------------


class InProcessProxyTests(unittest.TestCase):
    """An SMTPFactory behind Twisted's ``haproxy:`` endpoint, raw clients."""

    timeout = 30

    async def listen(self, delivery: Any = None, *, implicitTLS: bool = False, **kw: Any) -> int:
        """Listen on ``haproxy:tcp:0`` (loopback); the port."""
        self.delivery = delivery if delivery is not None else PolicyDelivery()
        factory = SMTPFactory(self.delivery, HOSTNAME, **kw)
        wrapped: Any = factory
        if implicitTLS:
            wrapped = TLSMemoryBIOFactory(factory.tls, False, factory)
        port = await serverFromString(reactor, PROXIED).listen(wrapped)

        def stop() -> defer.Deferred[Any]:
            d = defer.maybeDeferred(port.stopListening)
            return d.addCallback(lambda _: factory.shutdown(grace=0))

        self.addCleanup(stop)
        return port.getHost().port

    async def proxiedClient(self, port: int, header: bytes) -> RawSMTPClient:
        """Connect, send ``header`` and wait for the greeting."""
        client = await connectClient(self, port, greeting=False)
        client.send(header)
        await client.waitReplies(1)
        return client

    async def transaction(self, client: RawSMTPClient, rcpt: str = f"bob@{LOCAL_DOMAIN}") -> None:
        """EHLO (if not yet), MAIL, RCPT, DATA; every reply positive."""
        for line in (
            f"MAIL FROM:<alice@{LOCAL_DOMAIN}>",
            f"RCPT TO:<{rcpt}>",
            "DATA",
            "Subject: proxied\r\n\r\nhello\r\n.",
        ):
            [reply] = await client.command(line.encode("ascii"))
            self.assertLess(reply.code, 400, f"{line!r}: {reply}")

    async def assertProxied(self, header: bytes, peer: Any) -> StoredMessage:
        """
        Through ``header``: the greeting, the EHLO reply, ``openSession``,
        the stored ``Received:``, ``envelope.connection`` and the log line
        all name ``peer`` (an IPv4Address or IPv6Address).
        """
        log = LogEvents(self)
        port = await self.listen()
        client = await self.proxiedClient(port, header)
        self.assertEqual(client.replies[0].code, 220)
        [ehlo] = await client.command(f"EHLO {HELO}".encode())
        self.assertEqual(ehlo.code, 250)
        self.assertIn(f"[{peer.host}]", str(ehlo))
        await self.transaction(client)
        [message] = self.delivery.messages
        connection = message.envelope.connection
        self.assertEqual(connection.peer, peer)
        self.assertEqual(connection.peerHost, peer.host)
        self.assertEqual(self.delivery.openedFor, [peer.host])
        self.assertEqual(
            ipaddress.ip_address(receivedPeer(message)), ipaddress.ip_address(peer.host)
        )
        event = await log.waitFor(lambda e: e.get("result") == "accepted")
        self.assertEqual(event["peer"], peer.host)
        self.assertIn(f" peer={peer.host} ", event["text"])
        [quit] = await client.command(b"QUIT")
        self.assertEqual(quit.code, 221)
        await client.whenLost()
        # The connection's line names the client and the proxy that sent it.
        closed = await log.waitFor(lambda e: "refusedCommands" in e)
        self.assertEqual((closed["peer"], closed["proxy"], closed["end"]), (peer.host, "127.0.0.1", "quit"))
        self.assertIn(f" peer={peer.host} proxy=127.0.0.1 helo={HELO} ", closed["text"])
        return message

    async def test_v1_header(self) -> None:
        """``PROXY TCP4 203.0.113.7 ...``: the client is 203.0.113.7:4242."""
        message = await self.assertProxied(
            proxyV1("203.0.113.7", 4242, "192.0.2.25", 25), IPv4Address("TCP", "203.0.113.7", 4242)
        )
        self.assertIn(b"Received: from client.test.invalid ([203.0.113.7])\r\n", message.data)
        # The address the client reached is the header's destination.
        self.assertEqual(message.envelope.connection.host, IPv4Address("TCP", "192.0.2.25", 25))

    async def test_v1_header_ipv6(self) -> None:
        """``PROXY TCP6 ...``: ``Received:`` has an ``[IPv6:...]`` literal."""
        message = await self.assertProxied(
            proxyV1("2001:db8::7", 4242, "2001:db8::25", 25),
            IPv6Address("TCP", "2001:db8::7", 4242),
        )
        self.assertIn(b"Received: from client.test.invalid ([IPv6:2001:db8::7])\r\n", message.data)

    async def test_v2_header(self) -> None:
        """A binary v2 header (PROXY, TCP over IPv4): the client is 203.0.113.7:4242."""
        message = await self.assertProxied(
            proxyV2("203.0.113.7", 4242, "192.0.2.25", 25), IPv4Address("TCP", "203.0.113.7", 4242)
        )
        self.assertIn(b"Received: from client.test.invalid ([203.0.113.7])\r\n", message.data)
        self.assertEqual(message.envelope.connection.host, IPv4Address("TCP", "192.0.2.25", 25))

    async def test_v2_header_ipv6_with_tlv(self) -> None:
        """A v2 header over IPv6 followed by a TLV (a NOOP, type 0x04): the TLV is skipped."""
        noop = b"\x04" + struct.pack("!H", 3) + b"\x00\x00\x00"
        src = ipaddress.ip_address("2001:db8::7")
        peer = await self.assertProxied(
            proxyV2(str(src), 4242, "2001:db8::25", 25, tlvs=noop),
            IPv6Address("TCP", "2001:db8::7", 4242),
        )
        self.assertEqual(ipaddress.ip_address(receivedPeer(peer)), src)

    async def test_header_and_commands_in_one_write(self) -> None:
        """
        A client that sends EHLO in the same segment as the header (before
        the greeting) still gets the greeting first, and EHLO is answered
        with the proxied address.
        """
        port = await self.listen()
        client = await connectClient(self, port, greeting=False)
        client.send(proxyV2("203.0.113.7", 4242) + f"EHLO {HELO}\r\n".encode())
        greeting, ehlo = await client.waitReplies(2)
        self.assertEqual((greeting.code, ehlo.code), (220, 250))
        self.assertIn("[203.0.113.7]", str(ehlo))
        self.assertEqual(self.delivery.openedFor, ["203.0.113.7"])

    async def test_local_command(self) -> None:
        """
        The v2 LOCAL command (HAProxy's health checks) names no client: the
        connection's own peer (here 127.0.0.1) stands.
        """
        port = await self.listen()
        client = await self.proxiedClient(port, proxyV2(None))
        [ehlo] = await client.command(f"EHLO {HELO}".encode())
        self.assertIn("[127.0.0.1]", str(ehlo))
        self.assertEqual(self.delivery.openedFor, ["127.0.0.1"])

    async def assertDropped(self, data: bytes) -> None:
        """``data`` as the first octets: closed, no greeting, no session, nothing stored."""
        port = await self.listen()
        client = await connectClient(self, port, greeting=False)
        client.send(data)
        await client.whenLost()
        self.assertEqual(client.received, b"", data)
        self.assertEqual(self.delivery.openedFor, [], data)
        self.assertEqual(self.delivery.messages, [], data)

    async def test_no_header(self) -> None:
        """A plain SMTP client (no PROXY header) is dropped: it never gets a greeting."""
        await self.assertDropped(
            f"EHLO {HELO}\r\nMAIL FROM:<a@{LOCAL_DOMAIN}>\r\nRCPT TO:<b@{LOCAL_DOMAIN}>\r\n".encode()
        )

    async def test_malformed_headers(self) -> None:
        """
        Headers Twisted rejects (bad prefix, protocol, signature, version)
        and headers its v1 parser lets through but txsmtp refuses: an
        address that is no address (a line end in it would reach replies,
        logs and ``Received:``), a family that does not match the address,
        a scope id, a port that is not a number.  Each is dropped.
        """
        bad = [
            b"PROXY TCP9 203.0.113.7 192.0.2.25 4242 25\r\n",
            b"PROXX TCP4 203.0.113.7 192.0.2.25 4242 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.25 4242\r\n",
            b"PROXY TCP4 203.0.113.7\nX-Injected:yes 192.0.2.25 4242 25\r\n",
            b"PROXY TCP4 mail.example.com 192.0.2.25 4242 25\r\n",
            b"PROXY TCP4 2001:db8::7 192.0.2.25 4242 25\r\n",
            b"PROXY TCP6 fe80::1%eth0 2001:db8::25 4242 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.25 port 25\r\n",
            b"PROXY " + b"x" * 120 + b"\r\n",
            # v2: version 3, an unknown command, a wrong signature.
            b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),
            b"\r\n\r\n\x00\r\nQUIT\n\x2f\x11\x00\x0c" + bytes(12),
            b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12),
        ]
        for data in bad:
            await self.assertDropped(data)

    async def test_policy_sees_the_proxied_address(self) -> None:
        """
        The decisions made by address use the client's: a blocked client is
        refused at connect; a proxied public address may not relay even
        though the proxy itself (127.0.0.1) is trusted; a trusted client
        (127.0.0.9, through the proxy) may.
        """
        port = await self.listen()
        blocked = await self.proxiedClient(port, proxyV1(BLOCKED, 1000, "192.0.2.25", 25))
        self.assertEqual(blocked.replies[0].code, 554)
        self.assertIn(BLOCKED, str(blocked.replies[0]))

        outsider = await self.proxiedClient(port, proxyV2("203.0.113.7", 4242))
        await outsider.command(f"EHLO {HELO}".encode())
        await outsider.command(f"MAIL FROM:<alice@{LOCAL_DOMAIN}>".encode())
        [relay] = await outsider.command(b"RCPT TO:<carol@elsewhere.example>")
        self.assertEqual((relay.code, relay.enhanced), (554, "5.7.1"), str(relay))
        [local] = await outsider.command(f"RCPT TO:<bob@{LOCAL_DOMAIN}>".encode())
        self.assertEqual(local.code, 250)

        insider = await self.proxiedClient(port, proxyV2("127.0.0.9", 4242, "127.0.0.1", 25))
        await insider.command(f"EHLO {HELO}".encode())
        await self.transaction(insider, rcpt="carol@elsewhere.example")
        [message] = self.delivery.messages
        self.assertEqual(message.envelope.connection.peerHost, "127.0.0.9")
        self.assertEqual(self.delivery.openedFor, [BLOCKED, "203.0.113.7", "127.0.0.9"])

    async def test_starttls_through_the_wrapper(self) -> None:
        """
        STARTTLS on a PROXY connection: the handshake completes (the TLS
        facts reach ``connection.tls`` and the log), ``Received:`` says
        ESMTPS with the proxied address, and QUIT closes cleanly with 221.
        """
        c = certificates()
        log = LogEvents(self)
        port = await self.listen(tls=ServerTLS(c.chain, c.key))
        client = await self.proxiedClient(port, proxyV2("203.0.113.7", 4242))
        [ehlo] = await client.command(f"EHLO {HELO}".encode())
        self.assertIn("STARTTLS", str(ehlo))
        [ready] = await client.command(b"STARTTLS")
        self.assertEqual(ready.code, 220)
        with open(c.ca, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        client.transport.startTLS(optionsForClientTLS("localhost", trustRoot=trust))
        [ehlo] = await client.command(f"EHLO {HELO}".encode())
        self.assertIn("[203.0.113.7]", str(ehlo))
        self.assertNotIn("STARTTLS", str(ehlo))
        await self.transaction(client)
        [message] = self.delivery.messages
        tls = message.envelope.connection.tls
        self.assertIsNotNone(tls)
        self.assertTrue((tls.version or "").startswith("TLSv1."), tls)
        self.assertRegex(
            message.data,
            rb"^Received: from client\.test\.invalid \(\[203\.0\.113\.7\]\)\r\n"
            rb"\tby mx\.test\.invalid \(txsmtp\) with ESMTPS ",
        )
        event = await log.waitFor(lambda e: e.get("result") == "accepted")
        self.assertEqual((event["peer"], event["tlsVersion"]), ("203.0.113.7", tls.version))
        [quit] = await client.command(b"QUIT")
        self.assertEqual(quit.code, 221)
        await client.whenLost()
        self.assertFalse(
            [e for e in log.events if "did not complete" in str(e.get("text", ""))], log.events
        )

    async def test_implicit_tls_through_the_wrapper(self) -> None:
        """
        Implicit TLS (``--listen-tls haproxy:tcp:...``): the PROXY header in
        the clear, then TLS; the session is for the proxied address.
        """
        c = certificates()
        port = await self.listen(tls=ServerTLS(c.chain, c.key), implicitTLS=True)
        client = await connectClient(self, port, greeting=False)
        client.send(proxyV1("198.51.100.9", 5555, "192.0.2.25", 465))
        with open(c.ca, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        client.transport.startTLS(optionsForClientTLS("localhost", trustRoot=trust))
        [greeting] = await client.waitReplies(1)
        self.assertEqual(greeting.code, 220)
        [ehlo] = await client.command(f"EHLO {HELO}".encode())
        self.assertIn("[198.51.100.9]", str(ehlo))
        await self.transaction(client)
        [message] = self.delivery.messages
        self.assertEqual(message.envelope.connection.peer, IPv4Address("TCP", "198.51.100.9", 5555))
        self.assertIn(
            b"([198.51.100.9])\r\n\tby mx.test.invalid (txsmtp) with ESMTPS ", message.data
        )


# -- swaks against twistd ---------------------------------------------------------------------------


async def swaks(port: int, *args: str) -> Any:
    return await runProcess(
        requirePeer("swaks"),
        [
            "--server",
            f"127.0.0.1:{port}",
            "--helo",
            HELO,
            "--timeout",
            "20",
            "--from",
            "alice@example.com",
            "--to",
            "bob@example.org",
            *args,
        ],
        timeout=40,
    )


def storedMessages(maildir: str) -> list[Any]:
    assert maildirFiles(maildir, "tmp") == [], maildirFiles(maildir, "tmp")
    return [parseStored(data) for data in readAll(maildirFiles(maildir))]


class SwaksProxyTests(unittest.TestCase):
    """swaks's PROXY options against ``twistd -n smtp --listen haproxy:tcp:...``."""

    timeout = 90

    async def startProxied(self) -> tuple[RunningTwistd, str]:
        requirePeer("swaks")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        maildir = os.path.join(cwd, "mail")
        running = await startTwistd(
            self, "--hostname", HOSTNAME, "--deliver", f"maildir:{maildir}", cwd=cwd, listen=PROXIED
        )
        return running, maildir

    async def sendProxied(
        self, running: RunningTwistd, version: str, family: str, source: str, dest: str
    ) -> Any:
        """swaks with a PROXY header for ``source``; the stored message it made."""
        before = len(maildirFiles(running.path("mail")))
        result = await swaks(
            running.port,
            "--proxy-version",
            version,
            "--proxy-family",
            family,
            "--proxy-source",
            source,
            "--proxy-source-port",
            "40001",
            "--proxy-dest",
            dest,
            "--proxy-dest-port",
            "25",
        )
        self.assertEqual(result.code, 0, result.describe())
        self.assertIn(f"Hello {HELO} [", result.out.decode())
        stored = storedMessages(running.path("mail"))
        self.assertEqual(len(stored), before + 1)
        [new] = [s for s in stored if s.queueId.decode() in result.out.decode()]
        queueId = new.queueId.decode()
        line = await running.waitForLog(rf"accepted id={queueId} [^\n]* peer=(\S+) ")
        self.assertEqual(ipaddress.ip_address(line.group(1)), ipaddress.ip_address(source))
        literal = new.peer.decode()[1:-1].removeprefix("IPv6:")
        self.assertEqual(ipaddress.ip_address(literal), ipaddress.ip_address(source))
        return new

    async def test_swaks_proxy_v1(self) -> None:
        """``--proxy-version 1`` (TCP4): Received: and the log name 198.51.100.9."""
        running, _ = await self.startProxied()
        stored = await self.sendProxied(running, "1", "TCP4", "198.51.100.9", "192.0.2.25")
        self.assertEqual(stored.peer, b"[198.51.100.9]")
        self.assertIn("peer=198.51.100.9 helo=client.test.invalid", running.log)

    async def test_swaks_proxy_v2(self) -> None:
        """``--proxy-version 2``, over IPv4 and then IPv6, to one server."""
        running, _ = await self.startProxied()
        stored = await self.sendProxied(running, "2", "AF_INET", "198.51.100.9", "192.0.2.25")
        self.assertEqual(stored.peer, b"[198.51.100.9]")
        stored = await self.sendProxied(running, "2", "AF_INET6", "2001:db8::9", "2001:db8::25")
        self.assertEqual(stored.peer, b"[IPv6:2001:db8::9]")

    async def test_swaks_without_header(self) -> None:
        """A client that sends no PROXY header never gets a greeting; nothing is stored."""
        running, maildir = await self.startProxied()
        client = await connectClient(self, running.port, greeting=False)
        client.send(f"EHLO {HELO}\r\n".encode())
        await client.whenLost()
        self.assertEqual(client.received, b"")
        self.assertEqual(maildirFiles(maildir), [])


# -- a real HAProxy -----------------------------------------------------------------------------------

HAPROXY_CONFIG = """\
global
    maxconn 64

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend smtp
    bind 127.0.0.1:{front}
    default_backend txsmtp

backend txsmtp
    option smtpchk EHLO haproxy.test.invalid
    server mx1 127.0.0.1:{back} send-proxy-v2 check inter 100ms fall 1 rise 1
"""

#: The client's own address: not HAProxy's (127.0.0.1), so that only a
#: working PROXY header can put it into Received:.
CLIENT = "127.0.0.2"


class HAProxyTests(unittest.TestCase):
    """``swaks -> HAProxy (mode tcp, send-proxy-v2) -> twistd smtp --listen haproxy:tcp:...``."""

    timeout = 90

    async def startBehindHAProxy(self, *smtpArgs: str) -> tuple[RunningTwistd, int]:
        """
        Start HAProxy, see its health check fail (nothing listens yet),
        start ``twistd smtp`` on the backend port and see the SMTP health
        check pass (``EHLO`` and ``QUIT`` over a PROXY v2 LOCAL header):
        then HAProxy forwards.  Returns twistd and HAProxy's port.
        """
        haproxy = requirePeer("haproxy")
        requirePeer("swaks")
        front, back = freePorts(2)
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        config = os.path.join(cwd, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(HAPROXY_CONFIG.format(front=front, back=back))
        # -db: in the foreground, warnings (server state changes) on stderr.
        process = _TwistdProcess()
        reactor.spawnProcess(  # type: ignore[attr-defined]
            process, haproxy, [haproxy, "-db", "-f", config], env=dict(os.environ), path=cwd
        )
        self.haproxy = RunningTwistd(process, cwd)
        self.addCleanup(self.haproxy.stop)
        await self.haproxy.waitForLog(r"Server txsmtp/mx1 is DOWN")
        running = await startTwistd(
            self,
            "--hostname",
            HOSTNAME,
            *smtpArgs,
            cwd=cwd,
            listen=f"haproxy:tcp:{back}:interface=127.0.0.1",
        )
        await self.haproxy.waitForLog(r"Server txsmtp/mx1 is UP, reason: Layer7 check passed")
        return running, front

    async def send(self, front: int, *args: str) -> str:
        result = await swaks(front, "--local-interface", CLIENT, *args)
        self.assertEqual(result.code, 0, result.describe() + "\nHAProxy:\n" + self.haproxy.log)
        transcript = result.out.decode("utf-8", "replace")
        self.assertIn(f"Hello {HELO} [{CLIENT}]", transcript)
        self.assertIn("<-  221 ", transcript.replace("<~  221 ", "<-  221 "))
        return transcript

    async def test_through_haproxy(self) -> None:
        """The message HAProxy forwards names the client (127.0.0.2), not HAProxy."""
        running, front = await self.startBehindHAProxy()
        await self.send(front)
        [stored] = storedMessages(running.path("Maildir"))
        self.assertEqual(stored.peer, f"[{CLIENT}]".encode())
        self.assertEqual(stored.withKeyword, b"ESMTP")
        await running.waitForLog(rf"accepted id={stored.queueId.decode()} [^\n]* peer={CLIENT} ")

    async def test_starttls_through_haproxy(self) -> None:
        """
        ``swaks -tls`` through HAProxy: TCP mode passes the TLS session
        through and txsmtp terminates it on the PROXY connection
        (certificate verified, ESMTPS, the client's address, a clean 221).
        """
        c = certificates()
        running, front = await self.startBehindHAProxy("--tls-cert", c.chain, "--tls-key", c.key)
        transcript = await self.send(front, "-tls", "--tls-verify", "--tls-ca-path", c.ca)
        self.assertIn("=== TLS started with cipher", transcript)
        [stored] = storedMessages(running.path("Maildir"))
        self.assertEqual((stored.peer, stored.withKeyword), (f"[{CLIENT}]".encode(), b"ESMTPS"))
        await running.waitForLog(
            rf"accepted id={stored.queueId.decode()} [^\n]* peer={CLIENT} [^\n]* tls=TLSv1\.\d/"
        )
        self.assertNotIn("did not complete", running.log)

    async def test_documented_config(self) -> None:
        """The haproxy.cfg example of docs/deployments.rst is valid (``haproxy -c``)."""
        haproxy = requirePeer("haproxy")
        docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
        with open(os.path.join(docs, "deployments.rst"), encoding="utf-8") as f:
            text = f.read()
        section = text[text.index(".. _deployments-haproxy:") :]
        m = re.search(r"\.\. code-block:: none\n\n((?:(?:    .*)?\n)+)", section)
        assert m is not None, "no haproxy.cfg block in docs/deployments.rst"
        config = textwrap.dedent(m.group(1))
        self.assertIn("send-proxy-v2", config)
        self.assertIn("mode tcp", config)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(config)
        result = await runProcess(haproxy, ["-c", "-f", path], timeout=30)
        self.assertEqual(result.code, 0, result.describe())
        listeners = re.findall(r"--listen(?:-tls)? (haproxy:\w+:\S+)", section)
        self.assertTrue(listeners)
        for listen in listeners:
            # Every documented PROXY listener is a UNIX socket or names its interface.
            self.assertRegex(listen, r"^haproxy:(unix:|tcp:\d+:interface=)", listen)
