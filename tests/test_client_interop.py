"""
The client (:mod:`txsmtp.client`) against real servers, over loopback sockets.

- Postfix's smtp-sink, which captures each transaction to a file (``-d``):
  byte-exact delivery of awkward messages (a lone dot at every 16 KiB
  boundary, LF-only, no final newline, 8-bit, 10 MiB streamed from a file),
  bytes and files alike, and the DSN parameters; refusals and dropped
  connections (``-f``, ``-r``, ``-q``) and what the Mailer sends again; in
  LMTP mode (``-L``), one reply per recipient, refusals at RCPT and after
  the data;
- txsmtp's own server with STARTTLS, implicit TLS and AUTH: every SASL
  mechanism, the certificate checked against the test CA (:mod:`tests.certs`),
  each :class:`~txsmtp.client.TLSPolicy`, credentials kept off plaintext
  connections, SMTPUTF8, a :class:`~txsmtp.client.Mailer` pool;
- a recording TCP proxy between the client and a server, to see what the
  client writes and how it is grouped: MAIL, every RCPT and DATA (or BDAT
  and the message, with CHUNKING) in one segment with PIPELINING, the next
  message's group behind the final dot, the DSN parameters as sent.

What smtp-sink stores (see ``man smtp-sink``, "DUMP FILE FORMAT", and
``data_read`` in its source): ``X-Client-Addr:``, ``X-Client-Proto:``,
``X-Helo-Args:``, ``X-Mail-Args:`` (the MAIL arguments after ``FROM:``),
one ``X-Rcpt-Args:`` per accepted RCPT, a three-line ``Received:`` header,
then the message data as received with every CR dropped and the first dot of
each line that follows a CRLF removed (it un-stuffs), then the LF of the
final ``.CRLF``.  So the stored body is the message with LF line ends: what
it shows is exact except for the line ends, which are checked on the wire
(through the proxy) instead.

Nothing sleeps: smtp-sink is waited for through its own verbose log (it logs
``event_enable_read`` for its listening socket once ``listen()`` is done),
everything else through Deferreds.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, protocol, reactor
from twisted.internet import ssl as tssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.certs import certificates
from tests.peers import requirePeer
from tests.test_tls_auth import listenImplicitTLS
from tests.twistd_helpers import LogEvents, withTimeout
from txsmtp.auth import makePortal
from txsmtp.client import (
    ClientOptions,
    Mailer,
    SendResult,
    SMTPAuthError,
    SMTPClientFactory,
    SMTPConnectionLost,
    SMTPMessageRefused,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerRefused,
    SMTPTLSError,
    SMTPUnsupportedError,
    TLSPolicy,
    sendmail,
)
from txsmtp.errors import SMTPError
from txsmtp.lmtp import LMTPFactory
from txsmtp.server import ESMTPServer, SMTPFactory
from txsmtp.testing import MemoryDelivery, RunningServer, runServer
from txsmtp.tls import ServerTLS
from txsmtp.wire.reply import Reply

#: the reactor, typed loosely (its interfaces are provided dynamically)
REACTOR: Any = reactor

LOOPBACK = "127.0.0.1"
HELO = "client.test.invalid"
HOSTNAME = "mx.test.invalid"
SINK_NAME = "sink.test.invalid"
SENDER = "sender@example.com"
RCPT = "rcpt@example.org"
USER = "alice"
PASSWORD = "Wonder-l4nd-pw"
MECHANISMS = ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]

#: smtp-sink's replies
SINK_OK = Reply(250, ("Ok",), "2.0.0")
SINK_LMTP_OK = Reply(250, ("Ok",), "2.2.0")

KIB16 = 16 * 1024

#: a transfer through the recording proxy fails once nothing has crossed it
#: for this long (loopback transfers here never pause that long)
STALL = 5.0


# -- messages and what must arrive --------------------------------------------------


def canonical(message: bytes) -> bytes:
    """
    The message as it must arrive: every line end CRLF and a CRLF at the
    end.  (The messages here hold no bare CR.)
    """
    text = message.replace(b"\r\n", b"\n")
    assert b"\r" not in text, "a bare CR in a test message"
    if not text:
        return b""
    if not text.endswith(b"\n"):
        text += b"\n"
    return text.replace(b"\n", b"\r\n")


def dotStuffed(crlfText: bytes) -> bytes:
    """The DATA section for a canonical message: each leading dot doubled, then ``.CRLF``."""
    lines = crlfText.split(b"\r\n")
    assert lines[-1] == b""
    out = [b"." + line if line.startswith(b".") else line for line in lines[:-1]]
    return b"".join(line + b"\r\n" for line in out) + b".\r\n"


def sinkForm(message: bytes) -> bytes:
    """What smtp-sink stores for ``message``: the canonical form with LF line ends."""
    return canonical(message).replace(b"\r\n", b"\n")


def boundaryMessage(blocks: int, lineEnd: bytes = b"\r\n") -> bytes:
    """
    A message of ``blocks`` * 16 KiB octets (and a little more) in which a
    line holding a lone dot falls on every 16 KiB boundary, placed four ways
    in turn: the boundary just before the dot, between the dot and its line
    end, inside the line end before the dot, inside the line end after it
    (the last two only with CRLF).  The 64 KiB boundaries (where the client
    reads a file) get every placement too.  Other lines start with dots
    here and there.
    """
    crlf = lineEnd == b"\r\n"
    # Where the dot goes, relative to the boundary.
    deltas = [0, -1, 1, -2] if crlf else [0, -1, 1]
    out = bytearray(b"Subject: dots on the 16 KiB boundaries" + lineEnd + lineEnd)
    fillerIndex = 0

    def fill(length: int) -> None:
        nonlocal fillerIndex
        # Lines of at most 78 octets plus the line end, the last one shorter.
        while length > 0:
            fillerIndex += 1
            text = (b"%d " % fillerIndex) * 20
            if fillerIndex % 7 == 0:
                text = b"." + text
            elif fillerIndex % 11 == 0:
                text = b".." + text
            room = length - len(lineEnd)
            if room < 0:
                raise AssertionError("cannot fill with whole lines")
            take = min(78, room)
            if 0 < room - take < 1 + len(lineEnd):
                # Leave room for at least one more line.
                take = room - len(lineEnd) - 1 if room - len(lineEnd) - 1 > 0 else room
            line = text[:take]
            if line == b".":
                line = b"x"  # lone dots only where placed
            out.extend(line + lineEnd)
            length -= len(line) + len(lineEnd)

    for k in range(1, blocks + 1):
        boundary = k * KIB16
        delta = deltas[(k + k // 4) % len(deltas)]
        fill(boundary + delta - len(out))
        out.extend(b"." + lineEnd)
    fill(200)
    return bytes(out)


def splitSession(stream: bytes) -> list[bytes]:
    """
    Split what a client sent into its command lines and message data (from
    after ``DATA`` up to and including the final ``.CRLF``).  Only for
    sessions where every DATA was answered 354.
    """
    items = []
    pos = 0
    while pos < len(stream):
        end = stream.index(b"\r\n", pos) + 2
        line = stream[pos:end]
        items.append(line)
        pos = end
        if line.upper() == b"DATA\r\n":
            end = (
                pos + 3 if stream.startswith(b".\r\n", pos) else stream.index(b"\r\n.\r\n", pos) + 5
            )
            items.append(stream[pos:end])
            pos = end
    return items


def dataSections(stream: bytes) -> list[bytes]:
    items = splitSession(stream)
    return [items[i + 1] for i, item in enumerate(items) if item.upper() == b"DATA\r\n"]


def freePort() -> int:
    """A port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class RecordingFile(io.FileIO):
    """A file that remembers the size asked of each read."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "rb")
        self.reads: list[int] = []

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        self.reads.append(size)
        return super().read(size)


# -- a recording proxy ----------------------------------------------------------------------


class ProxiedConnection:
    """
    One connection through a :class:`RecordingProxy`.

    :ivar chunks: ``("client", data)`` for each read from the client and
        ``("server", data)`` for each read from the server, in order.
    """

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []
        self._open = 2  # the client side, and the server side to be
        self._waiters: list[defer.Deferred[None]] = []
        self.front: _ProxyFront | None = None

    @property
    def clientChunks(self) -> list[bytes]:
        return [data for who, data in self.chunks if who == "client"]

    @property
    def clientStream(self) -> bytes:
        return b"".join(self.clientChunks)

    @property
    def serverStream(self) -> bytes:
        return b"".join(data for who, data in self.chunks if who == "server")

    def _sideClosed(self) -> None:
        self._open -= 1
        if self._open == 0:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def whenClosed(self) -> defer.Deferred[None]:
        if self._open == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d


class _ProxyFront(protocol.Protocol):
    """The client's side of a proxied connection."""

    def __init__(self, proxy: RecordingProxy) -> None:
        self.proxy = proxy
        self.record = ProxiedConnection()
        self.record.front = self
        self.back: _ProxyBack | None = None
        self.lost = False

    def connectionMade(self) -> None:
        self.proxy.connections.append(self.record)
        # Read nothing until the server side is connected.
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, self.proxy.targetPort, timeout=10)
        connectProtocol(endpoint, _ProxyBack(self)).addCallbacks(self._connected, self._failed)

    def _connected(self, back: _ProxyBack) -> None:
        if self.lost:
            back.transport.abortConnection()
            return
        self.back = back
        # Each side stops reading while the other cannot keep up.
        self.transport.registerProducer(back.transport, True)
        back.transport.registerProducer(self.transport, True)
        self.transport.resumeProducing()

    def _failed(self, reason: Failure) -> None:
        self.record._sideClosed()
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.record.chunks.append(("client", data))
        self.proxy.traffic()
        assert self.back is not None
        self.back.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        if self.back is not None:
            self.back.transport.loseConnection()
        self.record._sideClosed()


class _ProxyBack(protocol.Protocol):
    """The server's side of a proxied connection."""

    def __init__(self, front: _ProxyFront) -> None:
        self.front = front

    def dataReceived(self, data: bytes) -> None:
        self.front.record.chunks.append(("server", data))
        self.front.proxy.traffic()
        self.front.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.front.lost:
            self.front.transport.loseConnection()
        self.front.record._sideClosed()


class RecordingProxy(protocol.Factory):
    """
    Listens on an ephemeral port of 127.0.0.1 and forwards each connection
    to ``127.0.0.1:targetPort`` both ways, recording every chunk read from
    either side (one ``recv`` each).  Stopped, its connections closed, in
    the test's cleanup.
    """

    def __init__(self, testCase: unittest.TestCase, targetPort: int) -> None:
        self.targetPort = targetPort
        self.connections: list[ProxiedConnection] = []
        self.listeningPort = REACTOR.listenTCP(0, self, interface=LOOPBACK)
        self.port: int = self.listeningPort.getHost().port
        self.listening = True
        self._watchdog: Any = None
        self._stallSeconds = 0.0
        testCase.addCleanup(self.stop)

    def buildProtocol(self, addr: Any) -> _ProxyFront:
        return _ProxyFront(self)

    def traffic(self) -> None:
        """Called for every chunk, either way (see :meth:`watch`)."""
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self._stallSeconds)

    async def watch(self, d: defer.Deferred[Any], stallSeconds: float, what: str) -> Any:
        """
        Wait for ``d``; if nothing crosses the proxy for ``stallSeconds``
        meanwhile, cut every connection (so that the client gives up) and
        fail with what was seen.
        """
        stalled: list[str] = []

        def expire() -> None:
            last = self.connections[-1] if self.connections else None
            tail = last.clientStream[-300:] if last is not None else b""
            stalled.append(
                f"{what}: stalled, nothing crossed the proxy for {stallSeconds}s; the client's "
                f"last {len(tail)} octets: {tail!r}; its last reads from the server: "
                f"{last.serverStream[-300:] if last is not None else b''!r}"
            )
            self.cut()

        self._stallSeconds = stallSeconds
        self._watchdog = REACTOR.callLater(stallSeconds, expire)
        try:
            result = await d
        except Exception:
            if stalled:
                raise AssertionError(stalled[0]) from None
            raise
        finally:
            if self._watchdog.active():
                self._watchdog.cancel()
            self._watchdog = None
        if stalled:
            raise AssertionError(stalled[0])
        return result

    def cut(self) -> defer.Deferred[Any]:
        """Stop listening and abort every connection; fire once all are closed."""
        d: defer.Deferred[Any] = defer.succeed(None)
        if self.listening:
            self.listening = False
            d = defer.maybeDeferred(self.listeningPort.stopListening)

        def closeAll(_: Any) -> defer.Deferred[Any]:
            for record in self.connections:
                if record.front is not None and not record.front.lost:
                    record.front.transport.abortConnection()
            return defer.gatherResults([r.whenClosed() for r in self.connections])

        return d.addCallback(closeAll)

    stop = cut


# -- smtp-sink ----------------------------------------------------------------------------


@dataclass
class SinkDump:
    """One transaction smtp-sink captured."""

    clientAddr: bytes
    proto: bytes
    helo: bytes | None
    mailArgs: bytes
    rcptArgs: list[bytes]
    withProto: bytes
    #: the message as stored: LF line ends, dots un-stuffed
    body: bytes


_DUMP = re.compile(
    rb"X-Client-Addr: (?P<addr>[^\n]*)\n"
    rb"X-Client-Proto: (?P<proto>[^\n]*)\n"
    rb"(?:X-Helo-Args: (?P<helo>[^\n]*)\n)?"
    rb"X-Mail-Args: (?P<mail>[^\n]*)\n"
    rb"(?P<rcpts>(?:X-Rcpt-Args: [^\n]*\n)*)"
    rb"Received: from [^\n]*\n"
    rb"\tby [^ \n]+ \(smtp-sink\) with (?P<with>[A-Z]+) id [0-9a-f]{8};\n"
    rb"\t[^\n]+\n"
)


def parseDump(data: bytes) -> SinkDump:
    m = _DUMP.match(data)
    if m is None:
        raise AssertionError(f"not an smtp-sink dump: {data[:600]!r}")
    rest = data[m.end() :]
    if not rest.endswith(b"\n"):
        raise AssertionError(f"the dump does not end with the LF of the final dot: {rest[-200:]!r}")
    return SinkDump(
        clientAddr=m.group("addr"),
        proto=m.group("proto"),
        helo=m.group("helo"),
        mailArgs=m.group("mail"),
        rcptArgs=[line[len(b"X-Rcpt-Args: ") :] for line in m.group("rcpts").split(b"\n") if line],
        withProto=m.group("with"),
        body=rest[:-1],
    )


_SINK_READY = re.compile(r"event_enable_read: fd \d+")


class _SinkProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.running = True
        self.exitValue: Any = None
        self._ready: defer.Deferred[None] | None = defer.Deferred()
        self._ended: list[defer.Deferred[Any]] = []

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self._ready is not None and _SINK_READY.search(self.text):
            d, self._ready = self._ready, None
            d.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.exitValue = reason.value
        if self._ready is not None:
            d, self._ready = self._ready, None
            d.errback(AssertionError(f"smtp-sink exited ({reason.value}): {self.text}"))
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(reason.value)

    def whenReady(self) -> defer.Deferred[None]:
        assert self._ready is not None
        return self._ready

    def stop(self) -> defer.Deferred[Any]:
        if not self.running:
            return defer.succeed(self.exitValue)
        d: defer.Deferred[Any] = defer.Deferred()
        self._ended.append(d)
        self.signal("TERM")
        kill = REACTOR.callLater(10, self.signal, "KILL")

        def ended(value: Any) -> Any:
            if kill.active():
                kill.cancel()
            return value

        return d.addCallback(ended)

    def signal(self, name: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass


class SmtpSink:
    """A running smtp-sink (see :func:`startSmtpSink`)."""

    def __init__(self, process: _SinkProcess, port: int, directory: str) -> None:
        self.process = process
        self.port = port
        self.directory = directory
        self._seen: set[str] = set()

    @property
    def log(self) -> str:
        return self.process.text

    def newDumps(self) -> list[SinkDump]:
        """The transactions captured since the last call."""
        names = sorted(set(os.listdir(self.directory)) - self._seen)
        self._seen.update(names)
        dumps = []
        for name in names:
            with open(os.path.join(self.directory, name), "rb") as f:
                dumps.append(parseDump(f.read()))
        return dumps


async def startSmtpSink(testCase: unittest.TestCase, *flags: str) -> SmtpSink:
    """
    Run ``smtp-sink -vvv -h sink.test.invalid -d DIR/%M%S. FLAGS
    127.0.0.1:PORT 64`` (with ``-u nobody`` as root, DIR then belonging to
    nobody) on a port found free, trying another one if it was taken in the
    meantime; fire once it listens.  Stopped in the test's cleanup.
    """
    path = requirePeer("smtp-sink")
    directory = tempfile.mkdtemp(prefix="txsmtp-sink-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    privileges: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        privileges = ["-u", "nobody"]
    template = os.path.join(directory, "%M%S.")
    for _ in range(5):
        port = freePort()
        process = _SinkProcess()
        args = [path, *privileges, "-vvv", "-h", SINK_NAME, "-d", template, *flags]
        args += [f"{LOOPBACK}:{port}", "64"]
        REACTOR.spawnProcess(process, path, args, env=dict(os.environ), path=directory)
        testCase.addCleanup(process.stop)
        try:
            await withTimeout(
                process.whenReady(), 15, lambda p=process: f"smtp-sink not listening: {p.text}"
            )
        except AssertionError:
            if "Address already in use" in process.text:
                continue
            raise
        return SmtpSink(process, port, directory)
    raise AssertionError("smtp-sink found no free port in 5 tries")


# -- txsmtp's server ------------------------------------------------------------------------


def trustRoot() -> Any:
    with open(certificates().ca) as f:
        return tssl.Certificate.loadPEM(f.read())


def startServer(
    testCase: unittest.TestCase,
    *,
    tls: bool = True,
    auth: bool = True,
    protocolClass: type[ESMTPServer] | None = None,
    **factoryArgs: Any,
) -> RunningServer:
    """txsmtp's server on an ephemeral port, with STARTTLS and AUTH (user alice) by default."""
    c = certificates()
    delivery = MemoryDelivery()
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(USER.encode(), PASSWORD.encode())
    factory = SMTPFactory(
        delivery,
        HOSTNAME,
        tls=ServerTLS(c.chain, c.key) if tls else None,
        portal=makePortal(delivery, [checker]) if auth else None,
        authFailureDelay=0,
        **factoryArgs,
    )
    if protocolClass is not None:
        factory.protocol = protocolClass
    return runServer(testCase, factory=factory)


class NoPipeliningServer(ESMTPServer):
    """txsmtp's server without PIPELINING in its EHLO reply."""

    def extensions(self) -> list[str]:
        return [e for e in super().extensions() if e != "PIPELINING"]


def countConnections(server: RunningServer) -> list[Any]:
    """A list that gets the address of every connection ``server`` accepts from now on."""
    accepted: list[Any] = []
    build = server.factory.buildProtocol

    def counting(addr: Any) -> Any:
        accepted.append(addr)
        return build(addr)

    server.factory.buildProtocol = counting  # type: ignore[method-assign]
    return accepted


def authEvents(events: LogEvents) -> list[tuple[str, str]]:
    """(user, mechanism) of each successful AUTH the server logged."""
    return [
        (e["user"], e["mechanism"])
        for e in events.events
        if e.get("log_namespace") == "txsmtp.server"
        and "mechanism" in e
        and "failures" not in e
        and str(e.get("text", "")).startswith("authenticated ")
    ]


# -- assertions ---------------------------------------------------------------------------------


class _Checks(unittest.TestCase):
    """Assertions shared by the test classes (no tests of its own)."""

    def assertSameBytes(self, actual: bytes, expected: bytes, what: str) -> None:
        """assertEqual for big byte strings: on a mismatch, say where."""
        if actual == expected:
            return
        n = next(
            (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b),
            min(len(actual), len(expected)),
        )
        self.fail(
            f"{what}: {len(actual)} octets, expected {len(expected)}; first difference at {n}: "
            f"{actual[max(0, n - 60) : n + 60]!r} != {expected[max(0, n - 60) : n + 60]!r}"
        )


# -- 1. smtp-sink --------------------------------------------------------------------------------


@dataclass
class Sent:
    result: SendResult
    dump: SinkDump
    connection: ProxiedConnection

    @property
    def data(self) -> bytes:
        """The DATA section the client sent (dot-stuffed, ``.CRLF`` included)."""
        [data] = dataSections(self.connection.clientStream)
        return data


class SmtpSinkTests(_Checks):
    """sendmail() against Postfix's smtp-sink (SMTP), through the recording proxy."""

    timeout = 60

    async def startSink(self, *flags: str) -> None:
        self.sink = await startSmtpSink(self, *flags)
        self.proxy = RecordingProxy(self, self.sink.port)

    async def send(self, message: Any, recipients: list[str] | None = None, **kw: Any) -> Sent:
        recipients = recipients or [RCPT]
        d = sendmail(
            LOOPBACK,
            SENDER,
            recipients,
            message,
            port=self.proxy.port,
            tls=TLSPolicy.NONE,
            heloName=HELO,
            **kw,
        )
        result = await self.proxy.watch(d, STALL, f"sending {type(message).__name__}")
        dumps = self.sink.newDumps()
        self.assertEqual(len(dumps), 1, self.sink.log[-2000:])
        return Sent(result, dumps[0], self.proxy.connections[-1])

    def assertDelivered(
        self,
        sent: Sent,
        message: bytes,
        mailArgs: bytes,
        recipients: list[str] | None = None,
        rcptArgs: bytes = b"",
    ) -> None:
        """
        The client sent exactly the dot-stuffed CRLF form of ``message``;
        smtp-sink stored exactly ``message`` (LF line ends); the envelope and
        the per-recipient result are as expected.
        """
        recipients = recipients or [RCPT]
        expected = canonical(message)
        self.assertSameBytes(sent.data, dotStuffed(expected), "on the wire")
        self.assertEqual(sent.data.count(b"\n"), sent.data.count(b"\r\n"), "a bare LF on the wire")
        self.assertSameBytes(sent.dump.body, sinkForm(message), "stored by smtp-sink")
        self.assertEqual(
            (sent.dump.clientAddr, sent.dump.proto, sent.dump.helo),
            (b"127.0.0.1", b"ESMTP", HELO.encode()),
        )
        self.assertEqual(sent.dump.mailArgs, mailArgs)
        self.assertEqual(sent.dump.rcptArgs, [f"<{r}>".encode() + rcptArgs for r in recipients])
        self.assertEqual(sent.result.reply, SINK_OK)
        self.assertEqual(sent.result.recipients, {r: SINK_OK for r in recipients})
        self.assertEqual((sent.result.accepted, sent.result.refused), (recipients, {}))

    async def test_dot_lines_on_16k_boundaries(self) -> None:
        """
        A lone-dot line on every 16 KiB boundary (each placement of the
        boundary around it, 64 KiB ones included; over 1 MiB, so bytes are
        streamed too), other lines starting with dots: sent as bytes and as
        a file read from its current position (after some junk), each
        arrives byte-exact, and the two are identical on the wire.
        """
        await self.startSink()
        message = boundaryMessage(72)
        self.assertGreater(len(message), 1 << 20)
        # The generator did what it says: where each lone dot is, relative
        # to its boundary, every placement at the 64 KiB boundaries too.
        placements = [
            message.index(b"\r\n.\r\n", k * KIB16 - 4) + 2 - k * KIB16 for k in range(1, 73)
        ]
        self.assertEqual(message.count(b"\r\n.\r\n"), 72)
        self.assertEqual(set(placements), {0, -1, 1, -2})
        self.assertEqual(set(placements[3::4]), {0, -1, 1, -2})
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"junk before the message\r\n.\r\n")
            start = f.tell()
            f.write(message)
        asBytes = await self.send(message)
        self.assertDelivered(asBytes, message, b"<sender@example.com>")
        with open(path, "rb") as f:
            f.seek(start)
            fromFile = await self.send(f)
        self.assertDelivered(fromFile, message, b"<sender@example.com>")
        self.assertSameBytes(fromFile.data, asBytes.data, "file vs bytes")
        self.assertSameBytes(fromFile.dump.body, asBytes.dump.body, "file vs bytes (stored)")

    async def test_lf_only_dot_lines_on_16k_boundaries(self) -> None:
        """
        The same with LF line ends only (a file, and bytes): it arrives with
        CRLF everywhere and the dots stuffed wherever the LF before them fell.
        """
        await self.startSink()
        message = boundaryMessage(72, b"\n")
        self.assertNotIn(b"\r", message)
        placements = [message.index(b"\n.\n", k * KIB16 - 3) + 1 - k * KIB16 for k in range(1, 73)]
        self.assertEqual(message.count(b"\n.\n"), 72)
        self.assertEqual(set(placements[3::4]), {0, -1, 1})
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(message)
        with open(path, "rb") as f:
            fromFile = await self.send(f)
        self.assertDelivered(fromFile, message, b"<sender@example.com>")
        asBytes = await self.send(message)
        self.assertSameBytes(asBytes.data, fromFile.data, "bytes vs file")

    async def test_awkward_small_messages(self) -> None:
        """
        A message starting with a dot, one starting with a lone-dot line,
        LF-only line ends, no final newline, a last line that is a lone dot
        without a newline, mixed CRLF and LF, an empty message: each
        arrives exactly (CRLF line ends, a CRLF added at the end).
        """
        await self.startSink()
        messages = [
            b".starts with a dot\r\nSubject: dot\r\n\r\n.body dot\r\n",
            b".\r\nthe first line was a lone dot\r\n..\r\n...\r\n",
            b"Subject: lf\n\nline one\n.dot line\n\n..two dots\nlast\n",
            b"Subject: no newline\r\n\r\nno newline at the end",
            b"Subject: ends in a dot\r\n\r\nlast line is a lone dot\r\n.",
            b"Subject: mixed\r\n\nlf\r\ncrlf\n.\r\n",
            b"",
        ]
        for message in messages:
            sent = await self.send(message)
            self.assertDelivered(sent, message, b"<sender@example.com>")
        # The message ending in "\r\n." did not end the data early.
        self.assertEqual(
            dataSections(self.proxy.connections[4].clientStream),
            [b"Subject: ends in a dot\r\n\r\nlast line is a lone dot\r\n..\r\n.\r\n"],
        )

    async def test_8bit_body(self) -> None:
        """
        An 8-bit body goes with BODY=8BITMIME (bytes and file, byte-exact);
        an ASCII one without it; to a server without 8BITMIME (``-8``) the
        8-bit one fails with SMTPUnsupportedError and no MAIL is sent.
        """
        await self.startSink()
        message = (
            b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9 \xe2\x82\xac \x80\xff\xfe\r\n"
            b".\xc3\xa9 dot\r\n\xff\r\n"
        )
        sent = await self.send(message)
        self.assertDelivered(sent, message, b"<sender@example.com> BODY=8BITMIME")
        self.assertIn(
            b"MAIL FROM:<sender@example.com> BODY=8BITMIME\r\n", sent.connection.clientStream
        )
        sent = await self.send(io.BytesIO(message))
        self.assertDelivered(sent, message, b"<sender@example.com> BODY=8BITMIME")
        ascii = await self.send(b"Subject: ascii\r\n\r\nplain\r\n")
        self.assertDelivered(ascii, b"Subject: ascii\r\n\r\nplain\r\n", b"<sender@example.com>")

        await self.startSink("-8")
        with self.assertRaises(SMTPUnsupportedError) as caught:
            await sendmail(
                LOOPBACK, SENDER, [RCPT], message, port=self.proxy.port, tls=TLSPolicy.NONE
            )
        self.assertTrue(caught.exception.permanent)
        [connection] = self.proxy.connections
        self.assertNotIn(b"MAIL", connection.clientStream)
        self.assertEqual(self.sink.newDumps(), [])

    async def test_10MiB_file_streamed(self) -> None:
        """
        A 10 MiB message (dot lines on every 16 KiB boundary) from a file
        object: read in pieces (never the whole file at once), sent in many
        writes, delivered byte-exact.
        """
        await self.startSink()
        message = boundaryMessage(640)
        self.assertGreaterEqual(len(message), 10 * 1024 * 1024)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(message)
        with RecordingFile(path) as f:
            sent = await self.send(f)
            reads = f.reads
        self.assertDelivered(sent, message, b"<sender@example.com>")
        self.assertTrue(reads, "the file was not read")
        self.assertTrue(all(0 < size <= 1 << 20 for size in reads), sorted(set(reads)))
        self.assertGreater(len(sent.connection.clientChunks), 10)

    async def test_dsn_parameters(self) -> None:
        """
        RET, ENVID (xtext), NOTIFY and ORCPT (xtext) to a server offering
        DSN: accepted, and on the wire (MAIL, both RCPTs and DATA in one
        segment) and in smtp-sink's capture exactly as RFC 3461 spells them.
        Without DSN offered (``-N``) they are left out and the message goes.
        """
        await self.startSink()
        recipients = [RCPT, "second@example.org"]
        dsn = dict(
            ret="hdrs",
            envid="id+1=2 x",
            notify=["success", "delay"],
            orcpt="rfc822;bob+tag@example.org",
        )
        sent = await self.send(b"Subject: dsn\r\n\r\ndsn\r\n", recipients, **dsn)
        mail = b"<sender@example.com> RET=HDRS ENVID=id+2B1+3D2+20x"
        rcpt = b" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+2Btag@example.org"
        self.assertDelivered(sent, b"Subject: dsn\r\n\r\ndsn\r\n", mail, recipients, rcpt)
        group = (
            b"MAIL FROM:"
            + mail
            + b"\r\n"
            + b"".join(b"RCPT TO:<" + r.encode() + b">" + rcpt + b"\r\n" for r in recipients)
            + b"DATA\r\n"
        )
        self.assertIn(group, sent.connection.clientChunks)

        await self.startSink("-N")
        sent = await self.send(b"Subject: no dsn\r\n\r\nx\r\n", recipients, **dsn)
        self.assertDelivered(
            sent, b"Subject: no dsn\r\n\r\nx\r\n", b"<sender@example.com>", recipients
        )
        for keyword in (b"RET=", b"ENVID=", b"NOTIFY=", b"ORCPT="):
            self.assertNotIn(keyword, sent.connection.clientStream)


class SmtpSinkFailureTests(_Checks):
    """
    sendmail() against smtp-sink told to refuse (``-f``, ``-r``) or to drop
    the connection (``-q``) at a given command, through the recording proxy.
    """

    timeout = 60

    message = b"Subject: x\r\n\r\nx\r\n"

    async def sendmail(self, *flags: str) -> tuple[BaseException, RecordingProxy, SmtpSink]:
        """Send :attr:`message` to a new smtp-sink with ``flags``; return how it failed."""
        sink = await startSmtpSink(self, *flags)
        proxy = RecordingProxy(self, sink.port)
        d = sendmail(
            LOOPBACK,
            SENDER,
            [RCPT],
            self.message,
            port=proxy.port,
            tls=TLSPolicy.NONE,
            heloName=HELO,
        )
        try:
            result = await proxy.watch(d, STALL, f"smtp-sink {' '.join(flags)}")
        except Exception as e:
            return e, proxy, sink
        raise AssertionError(f"smtp-sink {' '.join(flags)} accepted the message: {result}")

    async def test_dropped_after_final_dot_not_sent_again(self) -> None:
        """
        ``-q .``: the connection drops after the final dot, without a reply.
        smtp-sink has the message, so sending it again could deliver it
        twice: SMTPConnectionLost with afterData, over one connection only.
        """
        error, proxy, sink = await self.sendmail("-q", ".")
        self.assertIsInstance(error, SMTPConnectionLost)
        assert isinstance(error, SMTPConnectionLost)
        self.assertTrue(error.afterData)
        self.assertEqual(len(proxy.connections), 1)
        [dump] = sink.newDumps()
        self.assertEqual(dump.body, sinkForm(self.message))

    async def test_dropped_before_data_sent_again_once(self) -> None:
        """
        ``-q DATA``: the connection drops before any of the message went: the
        message is tried once more on a new connection, then
        SMTPConnectionLost (not afterData, not permanent).
        """
        error, proxy, sink = await self.sendmail("-q", "DATA")
        self.assertIsInstance(error, SMTPConnectionLost)
        assert isinstance(error, SMTPConnectionLost)
        self.assertFalse(error.afterData)
        self.assertFalse(error.permanent)
        self.assertEqual(len(proxy.connections), 2)
        for connection in proxy.connections:
            self.assertTrue(connection.clientStream.endswith(b"DATA\r\n"))
            self.assertNotIn(b"354", connection.serverStream)

    async def test_421_after_final_dot_sent_again_once(self) -> None:
        """
        ``-Q .``: 421 in reply to the final dot, and the connection closes.
        A 4xx reply says the message was not accepted, so it is sent once
        more on a new connection (smtp-sink captures it both times); then
        SMTPServerRefused with the 421, temporary.
        """
        error, proxy, sink = await self.sendmail("-Q", ".")
        self.assertIsInstance(error, SMTPServerRefused)
        assert isinstance(error, SMTPServerRefused)
        self.assertEqual((error.code, error.permanent), (421, False))
        self.assertEqual(len(proxy.connections), 2)
        for connection in proxy.connections:
            self.assertTrue(
                connection.serverStream.endswith(b"\r\n421 4.0.0 Server closing connection\r\n")
            )
        self.assertEqual([d.body for d in sink.newDumps()], [sinkForm(self.message)] * 2)

    async def test_refusals(self) -> None:
        """
        ``-f .``: the message refused after the data (500 5.3.0):
        SMTPMessageRefused, permanent, then QUIT.  ``-r MAIL`` (which also
        stops smtp-sink offering PIPELINING): MAIL alone, refused (450
        4.3.0): SMTPSenderRefused, temporary, no RCPT, no RSET, QUIT.
        """
        error, proxy, _ = await self.sendmail("-f", ".")
        self.assertIsInstance(error, SMTPMessageRefused)
        assert isinstance(error, SMTPMessageRefused)
        self.assertEqual((error.code, error.enhanced, error.permanent), (500, "5.3.0", True))
        self.assertTrue(proxy.connections[0].clientStream.endswith(b"\r\n.\r\nQUIT\r\n"))

        error, proxy, _ = await self.sendmail("-r", "MAIL")
        self.assertIsInstance(error, SMTPSenderRefused)
        assert isinstance(error, SMTPSenderRefused)
        self.assertEqual((error.code, error.enhanced, error.permanent), (450, "4.3.0", False))
        self.assertEqual(
            proxy.connections[0].clientChunks,
            [
                b"EHLO " + HELO.encode() + b"\r\n",
                b"MAIL FROM:<sender@example.com>\r\n",
                b"QUIT\r\n",
            ],
        )


# -- 2. LMTP against smtp-sink -L ---------------------------------------------------------------


class SmtpSinkLMTPTests(_Checks):
    """sendmail(..., lmtp=True) against ``smtp-sink -L``, through the recording proxy."""

    timeout = 60

    recipients = ["one@example.org", "two@example.org", "three@example.org"]

    async def startSink(self, *flags: str) -> None:
        self.sink = await startSmtpSink(self, "-L", *flags)
        self.proxy = RecordingProxy(self, self.sink.port)

    async def sendmail(self, message: bytes) -> SendResult:
        d = sendmail(
            LOOPBACK,
            SENDER,
            self.recipients,
            message,
            port=self.proxy.port,
            tls=TLSPolicy.NONE,
            heloName=HELO,
            lmtp=True,
        )
        return await self.proxy.watch(d, STALL, "LMTP")

    async def test_reply_per_recipient(self) -> None:
        """
        LHLO, one pipelined group, and after the data one reply for each of
        the three recipients, each in SendResult.recipients; the message is
        stored byte-exact.
        """
        await self.startSink()
        message = b"Subject: lmtp\r\n\r\n.dot\r\nthree recipients\r\n"
        result = await self.sendmail(message)
        self.assertEqual(result.recipients, {r: SINK_LMTP_OK for r in self.recipients})
        self.assertEqual(result.reply, SINK_LMTP_OK)
        self.assertEqual(result.accepted, self.recipients)
        [connection] = self.proxy.connections
        items = splitSession(connection.clientStream)
        self.assertEqual(items[0], b"LHLO " + HELO.encode() + b"\r\n")
        self.assertSameBytes(dataSections(connection.clientStream)[0], dotStuffed(message), "wire")
        group = b"MAIL FROM:<sender@example.com>\r\n" + b"".join(
            b"RCPT TO:<" + r.encode() + b">\r\n" for r in self.recipients
        )
        self.assertIn(group + b"DATA\r\n", connection.clientChunks)
        # Three replies to the final dot, none more.
        self.assertEqual(connection.serverStream.count(b"250 2.2.0 Ok\r\n"), 3)
        [dump] = self.sink.newDumps()
        self.assertEqual((dump.proto, dump.withProto), (b"LMTP", b"LMTP"))
        self.assertEqual(dump.rcptArgs, [f"<{r}>".encode() for r in self.recipients])
        self.assertSameBytes(dump.body, sinkForm(message), "stored")

    async def test_refused_after_data(self) -> None:
        """
        ``-f . -B "552 5.2.2 ..."``: every recipient refused by its own reply
        to the final dot: SMTPRecipientsRefused (permanent) with each reply.
        """
        await self.startSink("-f", ".", "-B", "552 5.2.2 Mailbox full")
        with self.assertRaises(SMTPRecipientsRefused) as caught:
            await self.sendmail(b"Subject: full\r\n\r\nx\r\n")
        refused = Reply(552, ("Mailbox full",), "5.2.2")
        self.assertEqual(caught.exception.recipients, {r: refused for r in self.recipients})
        self.assertTrue(caught.exception.permanent)
        [connection] = self.proxy.connections
        self.assertEqual(connection.serverStream.count(b"552 5.2.2 Mailbox full\r\n"), 3)
        self.assertTrue(connection.clientStream.endswith(b"\r\n.\r\nQUIT\r\n"))

    async def test_refused_at_rcpt(self) -> None:
        """
        ``-r RCPT -b "452 4.2.2 ..."``: every RCPT refused (DATA then gets
        503): SMTPRecipientsRefused, temporary, with each RCPT reply; no
        message data is sent, the transaction is reset.
        """
        await self.startSink("-r", "RCPT", "-b", "452 4.2.2 Over quota")
        with self.assertRaises(SMTPRecipientsRefused) as caught:
            await self.sendmail(b"Subject: quota\r\n\r\nx\r\n")
        refused = Reply(452, ("Over quota",), "4.2.2")
        self.assertEqual(caught.exception.recipients, {r: refused for r in self.recipients})
        self.assertFalse(caught.exception.permanent)
        [connection] = self.proxy.connections
        self.assertNotIn(b"Subject: quota", connection.clientStream)
        self.assertTrue(connection.clientStream.endswith(b"DATA\r\nRSET\r\nQUIT\r\n"))
        self.assertEqual(self.sink.newDumps(), [])


class TxsmtpLMTPTests(_Checks):
    """
    lmtp=True against txsmtp's own LMTP server (:class:`~txsmtp.lmtp.LMTPFactory`
    with a :class:`~txsmtp.testing.MemoryDelivery`), through the recording
    proxy: the mix of refusals smtp-sink cannot make (it refuses every RCPT
    or every recipient after the data, never some).
    """

    timeout = 60

    recipients = ["one@example.org", "two@example.org", "three@example.org", "four@example.org"]
    atRcpt = Reply(550, ("No such user",), "5.1.1")
    afterData = Reply(452, ("Mailbox full",), "4.2.2")

    def startServer(
        self, refuseAtRcpt: list[str], refuseAfterData: list[str]
    ) -> tuple[RunningServer, RecordingProxy]:
        delivery = MemoryDelivery()
        for r in refuseAtRcpt:
            delivery.refusedRecipients[r] = SMTPError(550, "5.1.1", "No such user")

        def results(message: Any) -> list[SMTPError | None]:
            return [
                SMTPError(452, "4.2.2", "Mailbox full") if r in refuseAfterData else None
                for r in message.recipients
            ]

        delivery.results = results
        server = runServer(self, factory=LMTPFactory(delivery, HOSTNAME))
        return server, RecordingProxy(self, server.port)

    async def sendmail(self, proxy: RecordingProxy, recipients: list[str], **kw: Any) -> Any:
        d = sendmail(
            LOOPBACK,
            SENDER,
            recipients,
            b"Subject: lmtp\r\n\r\n.mix\r\n",
            port=proxy.port,
            tls=TLSPolicy.NONE,
            heloName=HELO,
            lmtp=True,
            **kw,
        )
        return await proxy.watch(d, STALL, "LMTP")

    async def test_mixed_replies(self) -> None:
        """
        Four recipients: the second refused at RCPT (550 5.1.1), the third
        by the delivery after the data (452 4.2.2).  SendResult has, in the
        order given, each accepted recipient's own reply (it names the
        recipient), the RCPT refusal and the after-data refusal; the reply
        is the first accepted recipient's.  With DATA and with BDAT; one
        pipelined group either way.
        """
        body = b"Subject: lmtp\r\n\r\n.mix\r\n"
        for chunking in (False, True):
            server, proxy = self.startServer(["two@example.org"], ["three@example.org"])
            result = await self.sendmail(proxy, self.recipients, chunking=chunking)
            self.assertEqual(list(result.recipients), self.recipients)
            self.assertEqual(result.recipients["two@example.org"], self.atRcpt)
            self.assertEqual(result.recipients["three@example.org"], self.afterData)
            for r in ("one@example.org", "four@example.org"):
                reply = result.recipients[r]
                self.assertEqual((reply.code, reply.enhanced), (250, "2.0.0"))
                self.assertTrue(reply.text.startswith(f"<{r}> OK: delivered as "), reply)
            self.assertEqual(result.reply, result.recipients["one@example.org"])
            self.assertEqual(result.accepted, ["one@example.org", "four@example.org"])
            self.assertEqual(list(result.refused), ["two@example.org", "three@example.org"])
            [stored] = server.delivery.messages
            self.assertEqual(
                stored.recipients, ["one@example.org", "three@example.org", "four@example.org"]
            )
            self.assertEqual(stored.body, body)
            [connection] = proxy.connections
            self.assertEqual(connection.clientChunks[0], b"LHLO " + HELO.encode() + b"\r\n")
            group = b"MAIL FROM:<sender@example.com> SIZE=%d\r\n" % len(body)
            group += b"".join(b"RCPT TO:<" + r.encode() + b">\r\n" for r in self.recipients)
            group += b"BDAT %d LAST\r\n" % len(body) + body if chunking else b"DATA\r\n"
            self.assertEqual(connection.clientChunks[1], group, f"chunking={chunking}")

    async def test_every_recipient_refused_some_at_rcpt(self) -> None:
        """
        Every recipient refused, the first at RCPT and the other two after
        the data: SMTPRecipientsRefused (temporary: not every refusal is
        5xx) giving each recipient with the reply that refused it, as its
        documentation says, the RCPT refusal included.
        """
        recipients = self.recipients[:3]
        server, proxy = self.startServer(recipients[:1], recipients[1:])
        with self.assertRaises(SMTPRecipientsRefused) as caught:
            await self.sendmail(proxy, recipients)
        self.assertEqual(len(server.delivery.messages), 1)
        self.assertFalse(caught.exception.permanent)
        self.assertEqual(
            caught.exception.recipients,
            {
                "one@example.org": self.atRcpt,
                "two@example.org": self.afterData,
                "three@example.org": self.afterData,
            },
        )


# -- 3. txsmtp's server: TLS and AUTH --------------------------------------------------------------


class TLSAuthTests(_Checks):
    """The client against txsmtp's server with STARTTLS, implicit TLS and AUTH."""

    timeout = 60

    message = b"Subject: tls\r\n\r\n.dot\r\nover TLS\r\n"

    def options(self, port: int, **kw: Any) -> dict[str, Any]:
        base: dict[str, Any] = dict(
            port=port, trustRoot=trustRoot(), username=USER, password=PASSWORD, heloName=HELO
        )
        base.update(kw)
        return base

    async def connect(self, port: int, **kw: Any) -> Any:
        options = self.options(port, **kw)
        factory = SMTPClientFactory(ClientOptions(host="localhost", **options))
        proto = await factory.connect()
        self.addCleanup(proto.quit)
        return proto

    def assertStoredSecurely(self, server: RunningServer, message: bytes, keyword: bytes) -> None:
        [stored] = server.delivery.messages
        self.assertSameBytes(stored.body, canonical(message), "stored")
        connection = stored.envelope.connection
        self.assertIsNotNone(connection.tls)
        self.assertIn(connection.tls.version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(connection.authenticated, USER)
        self.assertIn(b" with " + keyword + b" id ", stored.envelope.receivedHeader)

    async def test_starttls_auth_each_mechanism(self) -> None:
        """
        STARTTLS (the chain verified against the test CA for "localhost"),
        then AUTH with each of SCRAM-SHA-256, CRAM-MD5, PLAIN and LOGIN: the
        client says which it used, the server logged the same, and the
        message is stored as sent under TLS by alice (ESMTPSA).
        """
        events = LogEvents(self)
        for mechanism in MECHANISMS:
            server = startServer(self)
            proto = await self.connect(server.port, authMechanisms=[mechanism])
            self.assertEqual((proto.tls, proto.authenticated), (True, mechanism))
            self.assertNotIn("STARTTLS", proto.extensions)
            result = await proto.sendMessage(SENDER, [RCPT], self.message)
            await proto.quit()
            self.assertEqual(result.recipients[RCPT].code, 250)
            self.assertStoredSecurely(server, self.message, b"ESMTPSA")
        self.assertEqual(authEvents(events), [(USER, m) for m in MECHANISMS])

    async def test_default_mechanism_is_scram(self) -> None:
        """Without authMechanisms the client picks SCRAM-SHA-256, the strongest offered."""
        events = LogEvents(self)
        server = startServer(self)
        result = await sendmail(
            "localhost", SENDER, [RCPT], self.message, **self.options(server.port)
        )
        self.assertEqual(result.recipients[RCPT].code, 250)
        self.assertEqual(authEvents(events), [(USER, "SCRAM-SHA-256")])
        self.assertStoredSecurely(server, self.message, b"ESMTPSA")

    async def test_wrong_password(self) -> None:
        """A wrong password: SMTPAuthError with the server's 535, permanent; nothing stored."""
        server = startServer(self)
        for mechanism in MECHANISMS:
            with self.assertRaises(SMTPAuthError) as caught:
                await sendmail(
                    "localhost",
                    SENDER,
                    [RCPT],
                    self.message,
                    **self.options(
                        server.port, password="not-the-password", authMechanisms=[mechanism]
                    ),
                )
            self.assertEqual(caught.exception.reply.code, 535, mechanism)
            self.assertTrue(caught.exception.permanent)
        self.assertEqual(server.delivery.messages, [])

    async def test_certificate_not_verified(self) -> None:
        """
        No trust root (the platform's does not know the test CA), or a name
        the certificate does not carry (STARTTLS or implicit TLS):
        SMTPTLSError, permanent, and nothing stored.
        """
        server = startServer(self)
        implicitPort = listenImplicitTLS(self, server.factory)
        cases = [
            dict(port=server.port, trustRoot=None),
            dict(port=server.port, tlsHostname="wrong.example"),
            dict(port=implicitPort, tlsHostname="wrong.example", implicitTLS=True),
        ]
        for case in cases:
            with self.assertRaises(SMTPTLSError) as caught:
                await sendmail("localhost", SENDER, [RCPT], self.message, **self.options(**case))
            self.assertTrue(caught.exception.permanent, case)
        self.assertEqual(server.delivery.messages, [])

    async def test_opportunistic_without_trust_root(self) -> None:
        """TLSPolicy.OPPORTUNISTIC: TLS without checking the certificate; delivered under TLS."""
        server = startServer(self)
        result = await sendmail(
            "localhost",
            SENDER,
            [RCPT],
            self.message,
            **self.options(server.port, trustRoot=None, tls=TLSPolicy.OPPORTUNISTIC),
        )
        self.assertEqual(result.recipients[RCPT].code, 250)
        self.assertStoredSecurely(server, self.message, b"ESMTPSA")

    async def test_require_tls_without_starttls(self) -> None:
        """
        TLSPolicy.REQUIRE against a server without STARTTLS: SMTPTLSError,
        no MAIL sent.  (The default policy, VERIFY, goes on in plaintext there.)
        """
        server = startServer(self, tls=False, auth=False)
        proxy = RecordingProxy(self, server.port)
        with self.assertRaises(SMTPTLSError):
            await sendmail(
                LOOPBACK, SENDER, [RCPT], self.message, port=proxy.port, tls=TLSPolicy.REQUIRE
            )
        self.assertEqual(server.delivery.messages, [])
        self.assertNotIn(b"MAIL FROM", proxy.connections[0].clientStream)
        result = await sendmail(LOOPBACK, SENDER, [RCPT], self.message, port=proxy.port)
        self.assertEqual(result.recipients[RCPT].code, 250)
        [stored] = server.delivery.messages
        self.assertIsNone(stored.envelope.connection.tls)

    async def test_no_credentials_without_tls(self) -> None:
        """
        Credentials and TLSPolicy.NONE, against a server that offers AUTH in
        plaintext (allowInsecureAuth): SMTPAuthError without a reply and no
        AUTH on the wire; with allowPlaintextAuth=True, AUTH goes and the
        message is stored as alice's.
        """
        events = LogEvents(self)
        server = startServer(self, tls=False, allowInsecureAuth=True)
        proxy = RecordingProxy(self, server.port)
        with self.assertRaises(SMTPAuthError) as caught:
            await sendmail(
                LOOPBACK,
                SENDER,
                [RCPT],
                self.message,
                port=proxy.port,
                tls=TLSPolicy.NONE,
                username=USER,
                password=PASSWORD,
            )
        self.assertIsNone(caught.exception.reply)
        stream = proxy.connections[0].clientStream
        self.assertIn(b"AUTH SCRAM-SHA-256", proxy.connections[0].serverStream)
        self.assertNotIn(b"AUTH", stream)
        self.assertNotIn(b"MAIL", stream)
        self.assertEqual(server.delivery.messages, [])
        self.assertEqual(authEvents(events), [])

        result = await sendmail(
            LOOPBACK,
            SENDER,
            [RCPT],
            self.message,
            port=proxy.port,
            tls=TLSPolicy.NONE,
            username=USER,
            password=PASSWORD,
            allowPlaintextAuth=True,
        )
        self.assertEqual(result.recipients[RCPT].code, 250)
        self.assertIn(b"AUTH SCRAM-SHA-256 ", proxy.connections[1].clientStream)
        self.assertNotIn(PASSWORD.encode(), proxy.connections[1].clientStream)
        [stored] = server.delivery.messages
        self.assertEqual(stored.envelope.connection.authenticated, USER)
        self.assertIsNone(stored.envelope.connection.tls)
        self.assertEqual(authEvents(events), [(USER, "SCRAM-SHA-256")])

    async def test_implicit_tls(self) -> None:
        """
        implicitTLS=True against a port that is TLS from the start: no
        STARTTLS offered or needed, AUTH works, the message is stored under
        TLS by alice.
        """
        server = startServer(self)
        port = listenImplicitTLS(self, server.factory)
        proto = await self.connect(port, implicitTLS=True)
        self.assertEqual((proto.tls, proto.authenticated), (True, "SCRAM-SHA-256"))
        self.assertNotIn("STARTTLS", proto.extensions)
        result = await proto.sendMessage(SENDER, [RCPT], self.message)
        await proto.quit()
        self.assertEqual(result.recipients[RCPT].code, 250)
        self.assertStoredSecurely(server, self.message, b"ESMTPSA")

    async def test_file_over_starttls(self) -> None:
        """
        A 2 MiB message (a lone dot on every 16 KiB boundary) from a file
        and as bytes, over STARTTLS+AUTH: both stored byte-exact.
        """
        server = startServer(self)
        message = boundaryMessage(128)
        for source in (io.BytesIO(message), message):
            result = await sendmail(
                "localhost", SENDER, [RCPT], source, **self.options(server.port)
            )
            self.assertEqual(result.recipients[RCPT].code, 250)
        self.assertEqual(len(server.delivery.messages), 2)
        for stored in server.delivery.messages:
            self.assertSameBytes(stored.body, canonical(message), "stored")
            self.assertIsNotNone(stored.envelope.connection.tls)

    async def test_smtputf8(self) -> None:
        """
        Non-ASCII addresses (the server offers SMTPUTF8) over STARTTLS+AUTH:
        MAIL carries SMTPUTF8 and the addresses arrive intact (UTF8SMTPSA).
        """
        server = startServer(self)
        sender = "j\u00f6rg@b\u00fccher.example"
        recipients = ["\u00f1and\u00fa@ex\u00e4mple.org", "ascii@example.org"]
        message = "Subject: gr\u00fc\u00dfe\r\n\r\n\u00e7a va\r\n".encode()
        result = await sendmail(
            "localhost", sender, recipients, message, **self.options(server.port)
        )
        self.assertEqual([r.code for r in result.recipients.values()], [250, 250])
        self.assertEqual(list(result.recipients), recipients)
        [stored] = server.delivery.messages
        self.assertEqual((stored.sender, stored.recipients), (sender, recipients))
        self.assertTrue(stored.envelope.parameters.smtputf8)
        self.assertEqual(stored.envelope.parameters.body, "8BITMIME")
        self.assertStoredSecurely(server, message, b"UTF8SMTPSA")

    async def test_mailer_pool(self) -> None:
        """
        A Mailer with poolSize=3 sends 200 messages over STARTTLS+AUTH: all
        accepted, each stored once, under TLS by alice, over at most three
        connections.
        """
        server = startServer(self)
        accepted = countConnections(server)
        mailer = Mailer("localhost", poolSize=3, **self.options(server.port))
        count = 200
        messages = [
            b"Subject: %d\r\nX-Index: %d\r\n\r\nmessage %d\r\n" % (i, i, i) for i in range(count)
        ]
        sends = [mailer.send(SENDER, [RCPT], m) for m in messages]
        self.assertLessEqual(mailer.connections, 3)
        results = await defer.gatherResults(sends)
        await mailer.close()
        self.assertEqual(mailer.connections, 0)
        self.assertEqual({r.recipients[RCPT].code for r in results}, {250})
        stored = server.delivery.messages
        self.assertEqual(sorted(s.body for s in stored), sorted(messages))
        self.assertTrue(1 <= len(accepted) <= 3, len(accepted))
        self.assertLessEqual(len({id(s.envelope.connection) for s in stored}), len(accepted))
        for s in stored:
            self.assertIsNotNone(s.envelope.connection.tls)
            self.assertEqual(s.envelope.connection.authenticated, USER)


# -- 4. on the wire --------------------------------------------------------------------------------


def bdatCommands(stream: bytes) -> list[tuple[bytes, bytes]]:
    """
    Split a client's stream of pipelined groups with BDAT into (command,
    chunk) pairs: each command line, with the octets that follow a BDAT.
    """
    items = []
    pos = 0
    while pos < len(stream):
        end = stream.index(b"\r\n", pos) + 2
        line = stream[pos:end]
        pos = end
        chunk = b""
        m = re.fullmatch(rb"BDAT (\d+)( LAST)?\r\n", line)
        if m is not None:
            size = int(m.group(1))
            chunk = stream[pos : pos + size]
            pos += size
        items.append((line, chunk))
    return items


class WireTests(_Checks):
    """
    What the client writes, seen by a recording proxy in front of txsmtp's
    server (no TLS).  Every read of the proxy from the client is one chunk:
    one segment on loopback for a single send() of these sizes.
    """

    timeout = 60

    recipients = ["one@example.org", "two@example.org", "three@example.org"]

    def startServer(self, **kw: Any) -> tuple[RunningServer, RecordingProxy]:
        server = startServer(self, tls=False, auth=False, **kw)
        return server, RecordingProxy(self, server.port)

    def commands(self, body: bytes, dsn: bytes = b"", rcptDSN: bytes = b"") -> list[bytes]:
        """MAIL (with SIZE) and the RCPTs the client sends for ``body``."""
        mail = b"MAIL FROM:<sender@example.com> SIZE=%d" % len(body) + dsn + b"\r\n"
        return [
            mail,
            *(b"RCPT TO:<" + r.encode() + b">" + rcptDSN + b"\r\n" for r in self.recipients),
        ]

    def bdat(self, body: bytes) -> bytes:
        wire = canonical(body)
        return b"BDAT %d LAST\r\n" % len(wire) + wire

    async def sendmail(self, proxy: RecordingProxy, body: Any, **kw: Any) -> SendResult:
        d = sendmail(
            LOOPBACK,
            SENDER,
            self.recipients,
            body,
            port=proxy.port,
            tls=TLSPolicy.NONE,
            heloName=HELO,
            **kw,
        )
        return await proxy.watch(d, STALL, f"sending {type(body).__name__}")

    async def test_pipelined_group_in_one_segment(self) -> None:
        """
        With PIPELINING, MAIL, the three RCPTs and DATA arrive in one read
        (then the message, then QUIT); with CHUNKING too (the default),
        MAIL, the RCPTs, BDAT LAST and the whole message in one read; with
        PIPELINING removed from the server's EHLO, one read per command.
        The message is stored the same each time.
        """
        body = b"Subject: pipelining\r\n\r\n.hello\r\n"
        ehlo = b"EHLO " + HELO.encode() + b"\r\n"
        group = self.commands(body)
        cases = [
            (None, dict(chunking=False), [b"".join(group) + b"DATA\r\n", dotStuffed(body)]),
            (None, {}, [b"".join(group) + self.bdat(body)]),
            (NoPipeliningServer, {}, [*group, b"DATA\r\n", dotStuffed(body)]),
        ]
        for protocolClass, options, chunks in cases:
            server, proxy = self.startServer(protocolClass=protocolClass)
            result = await self.sendmail(proxy, body, **options)
            self.assertEqual([r.code for r in result.recipients.values()], [250] * 3)
            [connection] = proxy.connections
            self.assertEqual(
                connection.clientChunks, [ehlo, *chunks, b"QUIT\r\n"], (protocolClass, options)
            )
            [stored] = server.delivery.messages
            self.assertEqual((stored.body, stored.recipients), (body, self.recipients))

    async def test_next_message_behind_final_dot(self) -> None:
        """
        A Mailer with two messages queued and one connection: the second
        message's MAIL, RCPTs and DATA arrive in the same read as the end of
        the first message; both are stored, over one connection.
        """
        server, proxy = self.startServer()
        mailer = Mailer(
            LOOPBACK, proxy.port, poolSize=1, tls=TLSPolicy.NONE, heloName=HELO, chunking=False
        )
        first = b"Subject: first\r\n\r\n.one\r\n"
        second = b"Subject: second\r\n\r\ntwo\r\n"
        sends = [mailer.send(SENDER, self.recipients, m) for m in (first, second)]
        results = await proxy.watch(defer.gatherResults(sends), STALL, "Mailer")
        await mailer.close()
        self.assertEqual([r.reply.code for r in results], [250, 250])
        [connection] = proxy.connections
        self.assertEqual(
            connection.clientChunks,
            [
                b"EHLO " + HELO.encode() + b"\r\n",
                b"".join(self.commands(first)) + b"DATA\r\n",
                dotStuffed(first) + b"".join(self.commands(second)) + b"DATA\r\n",
                dotStuffed(second),
                b"QUIT\r\n",
            ],
        )
        self.assertEqual([m.body for m in server.delivery.messages], [first, second])

    async def test_next_message_behind_bdat_last(self) -> None:
        """
        The same with CHUNKING: both whole messages (MAIL, RCPTs, BDAT LAST
        and the octets) leave in one write and arrive in one read.
        """
        server, proxy = self.startServer()
        mailer = Mailer(LOOPBACK, proxy.port, poolSize=1, tls=TLSPolicy.NONE, heloName=HELO)
        first = b"Subject: first\r\n\r\n.one\r\n"
        second = b"Subject: second\n\ntwo"
        sends = [mailer.send(SENDER, self.recipients, m) for m in (first, second)]
        results = await proxy.watch(defer.gatherResults(sends), STALL, "Mailer")
        await mailer.close()
        self.assertEqual([r.reply.code for r in results], [250, 250])
        [connection] = proxy.connections
        both = b"".join(self.commands(first)) + self.bdat(first)
        both += b"".join(self.commands(second)) + self.bdat(second)
        self.assertEqual(
            connection.clientChunks, [b"EHLO " + HELO.encode() + b"\r\n", both, b"QUIT\r\n"]
        )
        self.assertEqual([m.body for m in server.delivery.messages], [first, canonical(second)])

    async def test_file_message(self) -> None:
        """
        A message of a little over 128 KiB (a lone dot on each 16 KiB
        boundary) as a file, with DATA and with BDAT: stored byte-exact; with
        BDAT the chunk sizes add up to the message and only the last says
        LAST.
        """
        message = boundaryMessage(8)
        for chunking in (False, True):
            server, proxy = self.startServer()
            result = await self.sendmail(proxy, io.BytesIO(message), chunking=chunking)
            self.assertEqual(result.reply.code, 250)
            [stored] = server.delivery.messages
            self.assertSameBytes(stored.body, canonical(message), f"chunking={chunking}")
            stream = proxy.connections[0].clientStream
            if chunking:
                bdats = [
                    (line, chunk)
                    for line, chunk in bdatCommands(stream)
                    if line.startswith(b"BDAT")
                ]
                self.assertGreater(len(bdats), 1)
                self.assertTrue(bdats[-1][0].endswith(b" LAST\r\n"))
                self.assertFalse(any(line.endswith(b" LAST\r\n") for line, _ in bdats[:-1]))
                self.assertSameBytes(b"".join(c for _, c in bdats), canonical(message), "BDAT")
            else:
                self.assertSameBytes(
                    dataSections(stream)[0], dotStuffed(canonical(message)), "DATA"
                )

    async def test_some_recipients_refused(self) -> None:
        """
        One recipient of three refused at RCPT (550 5.1.1): the message is
        accepted for the other two; SendResult gives the final reply for
        them and the RCPT refusal for the third, in the order given (with
        DATA and with BDAT, still one pipelined group).
        """
        body = b"Subject: some\r\n\r\nx\r\n"
        for chunking in (False, True):
            server, proxy = self.startServer()
            server.delivery.refusedRecipients["two@example.org"] = SMTPError(
                550, "5.1.1", "No such user"
            )
            result = await self.sendmail(proxy, body, chunking=chunking)
            self.assertEqual(list(result.recipients), self.recipients)
            refusal = result.recipients["two@example.org"]
            self.assertEqual(
                (refusal.code, refusal.enhanced, refusal.text), (550, "5.1.1", "No such user")
            )
            self.assertEqual(result.accepted, ["one@example.org", "three@example.org"])
            self.assertEqual(list(result.refused), ["two@example.org"])
            self.assertEqual(result.reply.code, 250)
            self.assertEqual(result.recipients["one@example.org"], result.reply)
            self.assertEqual(result.recipients["three@example.org"], result.reply)
            [stored] = server.delivery.messages
            self.assertEqual(stored.recipients, ["one@example.org", "three@example.org"])
            group = b"".join(self.commands(body))
            group += self.bdat(body) if chunking else b"DATA\r\n"
            self.assertIn(group, proxy.connections[0].clientChunks)

    async def test_dsn_parameters(self) -> None:
        """
        RET, ENVID, NOTIFY and ORCPT to txsmtp's server (which offers DSN):
        on the wire as RFC 3461 spells them (xtext), in the pipelined group,
        and what the server parsed from them is what was given.
        """
        server, proxy = self.startServer()
        body = b"Subject: dsn\r\n\r\nx\r\n"
        await self.sendmail(
            proxy,
            body,
            ret="full",
            envid="q1+x=y z",
            notify=["failure"],
            orcpt="rfc822;B+b@example.org",
        )
        group = b"".join(
            self.commands(
                body,
                b" RET=FULL ENVID=q1+2Bx+3Dy+20z",
                b" NOTIFY=FAILURE ORCPT=rfc822;B+2Bb@example.org",
            )
        )
        [connection] = proxy.connections
        self.assertTrue(
            any(chunk.startswith(group) for chunk in connection.clientChunks),
            connection.clientChunks,
        )
        [stored] = server.delivery.messages
        parameters = stored.envelope.parameters
        self.assertEqual((parameters.ret, parameters.envid), ("FULL", "q1+x=y z"))
        for recipient in stored.envelope.recipients:
            self.assertEqual(recipient.parameters.notify, ("FAILURE",))
            self.assertEqual(recipient.parameters.orcpt, ("rfc822", "B+b@example.org"))
