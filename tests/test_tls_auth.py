"""
TLS (RFC 3207) and AUTH (RFC 4954) on the server, in process.

- :mod:`txsmtp.tls`: PEM loading, chains, TLS versions, reload;
- STARTTLS and implicit TLS over real loopback sockets (smtplib and raw
  sockets in threads): state reset, command injection (one packet and
  split), clients that drop or stall in the middle of a handshake, the TLS
  facts a delivery and the log get;
- AUTH over :class:`~txsmtp.testing.ServerHarness` (a fake clock for the
  brute-force delay) and over real sockets: every mechanism, every error
  reply, the realm, passwords kept out of the log;
- :mod:`txsmtp.auth`: the realm, the portal, the SCRAM key checker.

Certificates are made at test time (:mod:`tests.certs`).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib
import socket
import ssl
import threading
import warnings
from datetime import datetime, timezone
from typing import Any

from OpenSSL import SSL, crypto
from twisted.cred import error as credError
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, reactor, threads
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from zope.interface import implementer

from tests.certs import certificates, copyServerFiles, fingerprint
from tests.test_sasl import ScramClient, cramResponse
from tests.twistd_helpers import LogEvents, withTimeout
from txsmtp.auth import DeliveryRealm, ScramKeyChecker, makePortal
from txsmtp.delivery import BaseDelivery, BaseDeliverySession
from txsmtp.envelope import ConnectionInfo, TLSInfo
from txsmtp.errors import SMTPError
from txsmtp.interfaces import IDeliverySession
from txsmtp.sasl import IScramCredentials, IScramKeyStore, ScramSHA256, scramKeys
from txsmtp.server import SMTPFactory, State
from txsmtp.testing import ServerHarness, runServer
from txsmtp.tls import ServerTLS, TLSConfigurationError, loadCertificateOptions, tlsInfo
from txsmtp.wire.reply import Reply, ReplyParser

USER = "alice"
#: distinctive, so that a leak into the log is found by a substring search
PASSWORD = "Xyzzy-Pa55w0rd-7f3a"
HELO = b"client.example"
TLS13 = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def b64(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data)


def unb64(reply: Reply) -> bytes:
    return base64.b64decode(reply.lines[0])


def codes(replies: list[Reply]) -> list[int]:
    return [r.code for r in replies]


def passwordChecker(**users: str) -> InMemoryUsernamePasswordDatabaseDontUse:
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in (users or {USER: PASSWORD}).items():
        checker.addUser(name.encode(), password.encode())
    return checker


def clientContext(**kw: Any) -> ssl.SSLContext:
    """A client context that trusts only the test root CA (and checks the name)."""
    ctx = ssl.create_default_context(cafile=certificates().ca)
    if kw.get("clientCert"):
        ctx.load_cert_chain(certificates().clientCert, certificates().clientKey)
    return ctx


def serverTLS() -> ServerTLS:
    c = certificates()
    return ServerTLS(c.chain, c.key)


# -- a delivery that records what the server asked of it ----------------------------------------


class _Receiver:
    def __init__(self, delivery: TrackingDelivery, envelope: Any) -> None:
        self.delivery = delivery
        self.envelope = envelope
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        self.delivery.messages.append((self.envelope, b"".join(self.chunks)))

    def abort(self, reason: str) -> None:
        pass


class TrackingSession(BaseDeliverySession):
    """
    Records senders; relays (recipients at remote.example) only for a
    session opened for an authenticated user: the realm's job.
    """

    delivery: TrackingDelivery

    def __init__(self, delivery: TrackingDelivery, connection: ConnectionInfo) -> None:
        super().__init__(delivery, connection)
        self.user = connection.authenticated
        self.tlsAtOpen = connection.tls
        self.closeCount = 0

    def checkSender(self, sender: Any, parameters: Any) -> None:
        self.delivery.senders.append((str(sender) if sender is not None else "", self.user))

    def checkRecipient(self, recipient: Any, envelope: Any) -> None:
        if str(recipient.address).lower().endswith("@remote.example") and self.user is None:
            raise SMTPError(550, "5.7.1", "Relaying denied")

    def openMessage(self, envelope: Any) -> _Receiver:
        return _Receiver(self.delivery, envelope)

    def close(self) -> None:
        self.closeCount += 1
        self.delivery._sessionClosed()


class TrackingDelivery(BaseDelivery):
    sessionFactory = TrackingSession

    def __init__(self, refuseAuthenticated: bool = False) -> None:
        self.refuseAuthenticated = refuseAuthenticated
        self.sessions: list[TrackingSession] = []
        self.senders: list[tuple[str, str | None]] = []
        self.messages: list[tuple[Any, bytes]] = []
        self.closes = 0
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []
        self._openWaiters: list[tuple[int, defer.Deferred[None]]] = []

    def openSession(self, connection: ConnectionInfo) -> TrackingSession:
        if self.refuseAuthenticated and connection.authenticated:
            raise RuntimeError("the user database is down")
        session = super().openSession(connection)
        self.sessions.append(session)
        ready = [d for n, d in self._openWaiters if len(self.sessions) >= n]
        self._openWaiters = [(n, d) for n, d in self._openWaiters if len(self.sessions) < n]
        for d in ready:
            d.callback(None)
        return session

    def whenOpened(self, n: int, timeout: float = 10.0) -> defer.Deferred[None]:
        """Fire once ``n`` sessions have been opened in all."""
        if len(self.sessions) >= n:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._openWaiters.append((n, d))
        return withTimeout(d, timeout, lambda: f"{len(self.sessions)} sessions opened, wanted {n}")

    def _sessionClosed(self) -> None:
        self.closes += 1
        ready = [d for n, d in self._waiters if self.closes >= n]
        self._waiters = [(n, d) for n, d in self._waiters if self.closes < n]
        for d in ready:
            d.callback(None)

    def whenClosed(self, n: int, timeout: float = 10.0) -> defer.Deferred[None]:
        """Fire once ``n`` session closes have happened in all."""
        if self.closes >= n:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((n, d))
        return withTimeout(d, timeout, lambda: f"{self.closes} session closes, wanted {n}")


def withKeyword(data: bytes) -> str:
    m = re.match(rb"Received: from [^\r\n]+\r\n\tby [^ ]+ \(txsmtp\) with ([A-Z0-9]+) id ", data)
    if m is None:
        raise AssertionError(f"no Received: header at the start of {data[:300]!r}")
    return m.group(1).decode()


@implementer(ICredentialsChecker, IScramKeyStore)
class SlowKeyStore:
    """A SCRAM key store that answers later: each call leaves a Deferred in :attr:`pending`."""

    credentialInterfaces = (IScramCredentials,)

    def __init__(self, users: dict[str, Any]) -> None:
        self.users = users
        self.lookups: list[tuple[str, str]] = []
        self.pending: list[defer.Deferred[Any]] = []

    def scramKeys(self, username: str, mechanism: str) -> defer.Deferred[Any]:
        self.lookups.append((username, mechanism))
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        name = credentials.username.decode("utf-8")
        keys = self.users.get(name)
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)

        def check(avatarId: Any) -> Any:
            if keys is not None and credentials.checkKeys(keys.storedKey, keys.serverKey):
                return avatarId
            raise credError.UnauthorizedLogin()

        return d.addCallback(check)


# -- harness helpers ------------------------------------------------------------------------------


def authHarness(
    delivery: Any = None, *, checkers: list[Any] | None = None, tls: bool = True, **kw: Any
) -> ServerHarness:
    """
    A harness with a portal (a memory checker with alice's password by
    default) whose session is marked as under TLS (``tls=True``, as after
    a completed handshake), greeted with EHLO.
    """
    delivery = delivery if delivery is not None else TrackingDelivery()
    portal = makePortal(delivery, checkers if checkers is not None else [passwordChecker()])
    kw.setdefault("authFailureDelay", 0)
    h = ServerHarness(delivery, portal=portal, **kw)
    if tls:
        h.protocol.connection.tls = TLSInfo(TLS13.version, TLS13.cipher)
    ehlo = h.command(b"EHLO " + HELO)
    assert ehlo.code == 250, ehlo
    return h


def advertisedAuth(reply: Reply) -> list[str] | None:
    for line in reply.lines[1:]:
        if line.upper().startswith("AUTH "):
            return line.split()[1:]
    return None


def scramExchange(
    h: ServerHarness, client: ScramClient, initial: bool = True
) -> tuple[Reply, Reply | None, Reply | None]:
    """
    AUTH SCRAM-SHA-256 through the harness; returns the reply to the
    client-final-message, the server-final check result, and the reply to
    the empty acknowledgement (None when the exchange ended earlier).
    """
    if initial:
        first = h.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
    else:
        empty = h.command(b"AUTH SCRAM-SHA-256")
        assert (empty.code, unb64(empty)) == (334, b""), empty
        first = h.command(b64(client.first()))
    assert first.code == 334, first
    final = h.command(b64(client.final(unb64(first))))
    if final.code != 334:
        return final, None, None
    assert client.verify(unb64(final)), final
    return final, h.command(b""), None


# -- threads: a blocking SMTP client on a raw socket ----------------------------------------------


class BlockingClient:
    """
    A blocking SMTP client on a plain socket, for threads: sends exactly
    the bytes given, parses replies, and can switch to TLS.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.parser = ReplyParser()
        self.pending: list[Reply] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, n: int = 1) -> list[Reply]:
        while len(self.pending) < n:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed; wanted {n} replies, have {self.pending}")
            self.pending.extend(self.parser.feed(data))
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def command(self, line: bytes) -> Reply:
        self.send(line + b"\r\n")
        return self.read(1)[0]

    def startTLS(self, context: ssl.SSLContext | None = None) -> None:
        assert not self.pending, self.pending
        self.sock = (context or clientContext()).wrap_socket(self.sock, server_hostname="localhost")

    def waitClosed(self) -> str:
        """Read until the server closes: ``"closed"``, ``"reset"`` or ``"open"`` (timed out)."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return "closed"
        except TimeoutError:
            return "open"
        except (ssl.SSLError, OSError):
            return "reset"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def clientHello() -> bytes:
    """A real TLS ClientHello (what a client sends first), made with a memory BIO."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = clientContext().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:10]  # a handshake record
    return hello


class HeldTLS:
    """
    A TLS client over memory BIOs on a raw socket (for threads) that never
    answers the server's close_notify and never closes: what a careless or
    hostile client does.  It watches for the server closing the TCP
    connection itself.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = clientContext().wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )
        self.parser = ReplyParser()
        self.replies: list[Reply] = []
        self.closeNotify = False
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send()
                data = self.sock.recv(65536)
                if not data:
                    raise AssertionError("closed during the handshake") from None
                self.incoming.write(data)
        self._send()
        self._drain()

    def _send(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _pump(self) -> bool:
        """Read from the socket once; False at TCP end of file."""
        data = self.sock.recv(65536)
        if not data:
            return False
        self.incoming.write(data)
        self._drain()
        return True

    def _drain(self) -> None:
        while not self.closeNotify:
            try:
                plain = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                plain = b""
            if not plain:
                self.closeNotify = True  # noted, and deliberately not answered
                break
            self.replies.extend(self.parser.feed(plain))

    def command(self, line: bytes) -> Reply:
        start = len(self.replies)
        self.tls.write(line + b"\r\n")
        self._send()
        while len(self.replies) <= start:
            if not self._pump():
                raise AssertionError(
                    f"closed before the reply to {line!r}; replies: {self.replies}"
                )
        return self.replies[start]

    def waitTCPClosed(self) -> str:
        """``"closed"`` (FIN), ``"reset"`` or ``"open"`` (the socket timed out)."""
        try:
            while self._pump():
                pass
            return "closed"
        except TimeoutError:
            return "open"
        except OSError:
            return "reset"


def fireFromThread(ready: defer.Deferred[None]) -> None:
    """From a thread: fire ``ready`` (once) in the reactor thread."""

    def fire() -> None:
        if not ready.called:
            ready.callback(None)

    reactor.callFromThread(fire)  # type: ignore[attr-defined]


def listenImplicitTLS(testCase: unittest.TestCase, factory: SMTPFactory) -> int:
    """Listen with implicit TLS (as ``--listen-tls`` does) on an ephemeral loopback port."""
    port = reactor.listenTCP(  # type: ignore[attr-defined]
        0, TLSMemoryBIOFactory(factory.tls, False, factory), interface="127.0.0.1"
    )
    testCase.addCleanup(port.stopListening)
    return port.getHost().port


def stopWithClock(testCase: unittest.TestCase, server: Any, clock: Clock) -> None:
    """
    Clean up a server whose factory runs on a Clock: its graceful shutdown
    waits on that clock, so advance it (runs before runServer's own cleanup).
    """

    def stop() -> defer.Deferred[Any]:
        d = defer.maybeDeferred(server.listeningPort.stopListening)

        def shutdown(_: Any) -> defer.Deferred[Any]:
            done = server.factory.shutdown(grace=0)
            clock.advance(1)
            return withTimeout(done, 10, lambda: "server shutdown")

        return d.addCallback(shutdown)

    testCase.addCleanup(stop)


# -- txsmtp.tls -------------------------------------------------------------------------------------


def _memoryHandshake(serverContext: SSL.Context, clientContext_: SSL.Context) -> tuple[str, Any]:
    """
    Run a TLS handshake between two pyOpenSSL connections over memory BIOs.
    Returns ``("ok", (serverConnection, clientConnection))`` or ``(side, error)`` where side is
    ``"client"`` or ``"server"``: who raised.
    """
    server = SSL.Connection(serverContext, None)
    server.set_accept_state()
    client = SSL.Connection(clientContext_, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    done = {"client": False, "server": False}
    for _ in range(30):
        for side, conn in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    conn.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    return side, e
        for source, target in ((client, server), (server, client)):
            try:
                data = source.bio_read(1 << 16)
            except SSL.WantReadError:
                continue
            target.bio_write(data)
        if all(done.values()):
            return "ok", (server, client)
    raise AssertionError("handshake made no progress")


def _pyopensslClient(minimum: int, maximum: int, ciphers: bytes | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(minimum)
    ctx.set_max_proto_version(maximum)
    if ciphers is not None:
        ctx.set_cipher_list(ciphers)
    ctx.load_verify_locations(certificates().ca)
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    return ctx


class CertificateLoadingTests(unittest.TestCase):
    """loadCertificateOptions and ServerTLS: PEM files in, clear errors out."""

    def setUp(self) -> None:
        self.certs = certificates()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def test_chain_is_sent(self) -> None:
        """
        The chain file's intermediate is sent: a client that trusts only the
        root verifies the server; with the leaf alone it cannot.
        """
        client = _pyopensslClient(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
        side, result = _memoryHandshake(serverTLS().getContext(), client)
        self.assertEqual(side, "ok", result)
        chain = result[1].get_peer_cert_chain(as_cryptography=True)
        self.assertEqual(
            [c.subject.rfc4514_string() for c in chain],
            ["CN=localhost,O=txsmtp tests", "CN=txsmtp test intermediate CA,O=txsmtp tests"],
        )
        side, err = _memoryHandshake(
            ServerTLS(self.certs.leafOnly, self.certs.key).getContext(),
            _pyopensslClient(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION),
        )
        self.assertEqual(side, "client")
        self.assertIn("certificate verify failed", str(err))

    def test_combined_file(self) -> None:
        """Without a key path the key is read from the certificate file."""
        tls = ServerTLS(self.certs.combined)
        self.assertEqual(tls.keyPath, self.certs.combined)
        side, _ = _memoryHandshake(
            tls.getContext(), _pyopensslClient(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
        )
        self.assertEqual(side, "ok")

    def test_tls12_and_tls13(self) -> None:
        """TLS 1.2 and 1.3 work, with forward-secret AEAD ciphers for a default client."""
        for version, name in ((SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")):
            side, result = _memoryHandshake(
                serverTLS().getContext(), _pyopensslClient(version, version)
            )
            self.assertEqual(side, "ok", result)
            server = result[0]
            self.assertEqual(server.get_protocol_version_name(), name)
            cipher = server.get_cipher_name()
            if name == "TLSv1.2":
                self.assertRegex(cipher, r"^ECDHE-.*(GCM|CHACHA20)")
            else:
                self.assertRegex(cipher, r"^TLS_(AES_\d+_GCM|CHACHA20_POLY1305)_SHA\d+$")

    def test_old_protocols_refused(self) -> None:
        """TLS 1.0 and 1.1 are refused by the server (the client offered them)."""
        for version in (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION):
            client = _pyopensslClient(SSL.TLS1_VERSION, version, b"DEFAULT:@SECLEVEL=0")
            side, err = _memoryHandshake(serverTLS().getContext(), client)
            self.assertEqual(side, "server", err)
            self.assertIn("unsupported protocol", str(err))

    def test_weak_ciphers_refused(self) -> None:
        """
        A TLS 1.2 client offering only NULL, anonymous, RC4, 3DES or export
        suites gets no handshake: the server refuses (no shared cipher).
        """
        tried = []
        for ciphers in [b"eNULL", b"aNULL", b"RC4", b"3DES", b"EXP", b"MD5"]:
            try:
                client = _pyopensslClient(
                    SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, ciphers + b":@SECLEVEL=0"
                )
            except SSL.Error:
                continue  # this OpenSSL does not even have them
            tried.append(ciphers)
            side, err = _memoryHandshake(serverTLS().getContext(), client)
            self.assertEqual(side, "server", (ciphers, err))
            self.assertIn("no shared cipher", str(err), ciphers)
        self.assertIn(b"eNULL", tried)  # at least the NULL suites exist in every OpenSSL

    def test_missing_file(self) -> None:
        missing = os.path.join(self.dir, "nope.pem")
        with self.assertRaises(TLSConfigurationError) as cm:
            loadCertificateOptions(missing, self.certs.key)
        self.assertIn("nope.pem", str(cm.exception))
        with self.assertRaises(TLSConfigurationError) as cm:
            ServerTLS(self.certs.chain, missing)
        self.assertIn("nope.pem", str(cm.exception))

    def test_no_certificate(self) -> None:
        for name, data in [
            ("empty.pem", b""),
            ("keyonly.pem", self.read(self.certs.key)),
            ("text.pem", b"hello\n"),
        ]:
            path = self.write(name, data)
            with self.assertRaises(TLSConfigurationError, msg=name) as cm:
                ServerTLS(path, self.certs.key)
            self.assertIn(name, str(cm.exception))

    def test_corrupt_certificate(self) -> None:
        pem = self.read(self.certs.leafOnly)
        lines = pem.split(b"\n")
        lines[3] = b"A" * len(lines[3])
        path = self.write("corrupt.pem", b"\n".join(lines))
        with self.assertRaises(TLSConfigurationError) as cm:
            ServerTLS(path, self.certs.key)
        self.assertIn("corrupt.pem", str(cm.exception))

    def test_no_key(self) -> None:
        for name, data in [("nokey.pem", b""), ("cert-as-key.pem", self.read(self.certs.leafOnly))]:
            path = self.write(name, data)
            with self.assertRaises(TLSConfigurationError, msg=name) as cm:
                ServerTLS(self.certs.chain, path)
            self.assertIn(name, str(cm.exception))

    def test_mismatched_key(self) -> None:
        """A key that is not the certificate's is refused at load time, naming both files."""
        with self.assertRaises(TLSConfigurationError) as cm:
            ServerTLS(self.certs.chain, self.certs.wrongKey)
        self.assertIn("chain.pem", str(cm.exception))
        self.assertIn("wrong-key.pem", str(cm.exception))

    def test_expired_certificate(self) -> None:
        """
        An expired certificate is served as configured (whether to accept it
        is the client's decision; opportunistic senders still get
        encryption): a verifying client refuses it as expired.
        """
        tls = ServerTLS(self.certs.expiredChain, self.certs.expiredKey)
        side, err = _memoryHandshake(
            tls.getContext(), _pyopensslClient(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
        )
        self.assertEqual(side, "client")
        self.assertIn("certificate verify failed", str(err))
        relaxed = _pyopensslClient(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
        relaxed.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        side, result = _memoryHandshake(tls.getContext(), relaxed)
        self.assertEqual(side, "ok", result)
        served = result[1].get_peer_certificate(as_cryptography=True)
        self.assertLess(served.not_valid_after_utc, datetime.now(timezone.utc))

    def test_tls_info_of_a_test_double(self) -> None:
        """tlsInfo on a transport that cannot say still counts as TLS, with unknown facts."""
        info = tlsInfo(object())
        self.assertEqual((info.version, info.cipher, info.peerCertificate), (None, None, None))


class CertificateReloadTests(unittest.TestCase):
    """ServerTLS.reload: new connections get the new certificate; errors keep the old one."""

    timeout = 30

    async def _peerFingerprint(
        self, port: int, keepOpen: list[BlockingClient] | None = None
    ) -> str:
        def fetch() -> str:
            client = BlockingClient(port)
            client.read()
            client.command(b"EHLO " + HELO)
            reply = client.command(b"STARTTLS")
            assert reply.code == 220, reply
            client.startTLS()
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            if keepOpen is not None:
                keepOpen.append(client)
            else:
                client.command(b"QUIT")
                client.close()
            return fingerprint(der)

        return await threads.deferToThread(fetch)

    async def test_reload(self) -> None:
        c = certificates()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        certPath, keyPath = copyServerFiles(directory, "main")
        tls = ServerTLS(certPath, keyPath)
        events = LogEvents(self)
        server = runServer(self, TrackingDelivery(), tls=tls)
        opened: list[BlockingClient] = []
        self.addCleanup(lambda: [client.close() for client in opened])
        self.assertEqual(await self._peerFingerprint(server.port, opened), c.leafSHA256)

        copyServerFiles(directory, "other")
        self.assertTrue(tls.reload())
        self.assertEqual(await self._peerFingerprint(server.port), c.otherSHA256)

        # The connection made before the reload carries on with its session.
        def useOld() -> list[int]:
            client = opened[0]
            return [
                client.command(b"EHLO " + HELO).code,
                client.command(b"NOOP").code,
                client.command(b"QUIT").code,
            ]

        self.assertEqual(await threads.deferToThread(useOld), [250, 250, 221])

        # A broken file: reload says no, logs why, and the last good certificate stays.
        with open(certPath, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        self.assertFalse(tls.reload())
        self.assertEqual(await self._peerFingerprint(server.port), c.otherSHA256)
        failed = [e for e in events.events if "reload failed" in formatEvent(e)]
        self.assertEqual(len(failed), 1, events.events)
        self.assertIn("cert.pem", formatEvent(failed[0]))
        # A mismatched pair, as when only one of two files was renewed.
        shutil.copyfile(c.chain, certPath)
        self.assertFalse(tls.reload())
        self.assertEqual(await self._peerFingerprint(server.port), c.otherSHA256)
        shutil.copyfile(c.key, keyPath)
        self.assertTrue(tls.reload())
        self.assertEqual(await self._peerFingerprint(server.port), c.leafSHA256)


class TLSProtocolVersionTests(unittest.TestCase):
    """The same checks over a real connection: TLS 1.1 refused, TLS 1.2 accepted."""

    timeout = 30

    async def test_versions_over_starttls(self) -> None:
        server = runServer(self, TrackingDelivery(), tls=serverTLS())

        def attempt(maximum: ssl.TLSVersion) -> str:
            ctx = clientContext()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = maximum
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            client = BlockingClient(server.port)
            try:
                client.read()
                client.command(b"EHLO " + HELO)
                assert client.command(b"STARTTLS").code == 220
                try:
                    client.startTLS(ctx)
                except (ssl.SSLError, OSError) as e:
                    return f"failed: {e}"
                return client.sock.version() or ""  # type: ignore[attr-defined]
            finally:
                client.close()

        self.assertEqual(await threads.deferToThread(attempt, ssl.TLSVersion.TLSv1_2), "TLSv1.2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tls11 = ssl.TLSVersion.TLSv1_1
        result = await threads.deferToThread(attempt, tls11)
        self.assertTrue(result.startswith("failed: "), result)


# -- STARTTLS: the command ------------------------------------------------------------------------


class StartTLSCommandTests(unittest.TestCase):
    """STARTTLS as a command, over the harness (the handshake itself is tested over sockets)."""

    def test_advertised_only_with_tls_configured(self) -> None:
        h = ServerHarness(tls=serverTLS())
        self.assertIn("STARTTLS", h.command(b"EHLO " + HELO).lines)
        h = ServerHarness()
        self.assertNotIn("STARTTLS", h.command(b"EHLO " + HELO).lines)

    def test_not_configured(self) -> None:
        """RFC 3207 §4: 454 when TLS is not available."""
        h = ServerHarness()
        h.command(b"EHLO " + HELO)
        reply = h.command(b"STARTTLS")
        self.assertEqual((reply.code, reply.enhanced), (454, "4.7.0"))
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_argument(self) -> None:
        """RFC 3207 §4: 501 for STARTTLS with a parameter; nothing starts."""
        h = ServerHarness(tls=serverTLS())
        h.command(b"EHLO " + HELO)
        reply = h.command(b"STARTTLS now")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"))
        self.assertIsNone(h.protocol.connection.tls)
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_under_tls(self) -> None:
        """Under TLS: STARTTLS is not advertised and gets 503 5.5.1."""
        h = ServerHarness(tls=serverTLS())
        h.protocol.connection.tls = TLSInfo(TLS13.version, TLS13.cipher)
        self.assertNotIn("STARTTLS", h.command(b"EHLO " + HELO).lines)
        reply = h.command(b"STARTTLS")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"))
        self.assertEqual(h.protocol.connection.tls.version, "TLSv1.3")

    def test_require_tls(self) -> None:
        """RFC 3207 §4: MAIL before STARTTLS gets 530 5.7.0 with requireTLS."""
        h = ServerHarness(tls=serverTLS(), requireTLS=True)
        h.command(b"EHLO " + HELO)
        reply = h.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual((reply.code, reply.enhanced), (530, "5.7.0"))
        self.assertEqual(h.protocol.state, State.READY)
        h.protocol.connection.tls = TLSInfo(TLS13.version, TLS13.cipher)
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com>").code, 250)

    def test_received_and_log_under_tls(self) -> None:
        """Under TLS: Received: says ESMTPS (RFC 3848), the log line names version and cipher."""
        events = LogEvents(self)
        delivery = TrackingDelivery()
        h = ServerHarness(delivery, tls=serverTLS())
        h.protocol.connection.tls = TLSInfo(TLS13.version, TLS13.cipher)
        replies = h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual(codes(replies), [250, 250, 250, 354, 250])
        [(envelope, data)] = delivery.messages
        self.assertEqual(withKeyword(data), "ESMTPS")
        self.assertEqual(envelope.connection.tls.version, "TLSv1.3")
        [event] = [e for e in events.events if e.get("result") == "accepted"]
        self.assertEqual((event["tlsVersion"], event["tlsCipher"]), (TLS13.version, TLS13.cipher))
        self.assertIn(f"tls={TLS13.version}/{TLS13.cipher}", formatEvent(event))


# -- STARTTLS over sockets ---------------------------------------------------------------------------


@implementer(IOpenSSLContextFactory)
class SignallingTLS:
    """Wraps a context factory; sets :attr:`started` when the server starts TLS."""

    def __init__(self, inner: ServerTLS) -> None:
        self.inner = inner
        self.started = threading.Event()

    def getContext(self) -> SSL.Context:
        self.started.set()
        return self.inner.getContext()


async def closedUnderTLS(testCase: Any, implicit: bool, how: str) -> None:
    """
    RFC 5321 §4.1.1.10 (QUIT: send 221, "and then close the transmission
    channel") and §4.5.3.2 (idle timeouts): under TLS the server closes
    the TCP connection itself; it may send close_notify first, but must
    not wait forever for the client's answer to it.
    """
    clock = Clock()
    delivery = TrackingDelivery()
    server = runServer(testCase, delivery, tls=serverTLS(), clock=clock)
    stopWithClock(testCase, server, clock)
    port = listenImplicitTLS(testCase, server.factory) if implicit else server.port
    ready: defer.Deferred[None] = defer.Deferred()
    answered: defer.Deferred[None] = defer.Deferred()

    def talk() -> tuple[list[Reply], str, bool]:
        client = BlockingClient(port, timeout=5)
        try:
            if not implicit:
                client.read()
                client.command(b"EHLO " + HELO)
                assert client.command(b"STARTTLS").code == 220
            held = HeldTLS(client.sock)
            if implicit:
                while not held.replies:  # the greeting
                    assert held._pump()
            held.command(b"EHLO " + HELO)
            if how == "quit":
                held.command(b"QUIT")
            fireFromThread(ready)
            if how == "timeout":
                seen = len(held.replies)
                while len(held.replies) == seen and held._pump():
                    pass  # wait for the 421
            fireFromThread(answered)
            return held.replies, held.waitTCPClosed(), held.closeNotify
        finally:
            fireFromThread(ready)
            fireFromThread(answered)
            client.close()

    d = threads.deferToThread(talk)
    await ready
    clock.advance(server.factory.commandTimeout + 2)  # the idle timeout, if that is the test
    await answered
    # However long the server waits (on its clock) for the client's
    # close_notify, it gives up within another command timeout.
    clock.advance(server.factory.commandTimeout + 2)
    replies, outcome, closeNotify = await d
    expected = [221] if how == "quit" else [421]
    testCase.assertEqual(codes(replies)[-1:], expected, replies)
    testCase.assertIn(
        outcome,
        ("closed", "reset"),
        f"the server kept the TCP connection open (close_notify sent: {closeNotify}) until the client gave up",
    )
    await delivery.whenClosed(1)


class StartTLSSocketTests(unittest.TestCase):
    """STARTTLS over real loopback connections."""

    timeout = 30

    def server(self, delivery: Any = None, **kw: Any) -> Any:
        kw.setdefault("tls", serverTLS())
        return runServer(self, delivery if delivery is not None else TrackingDelivery(), **kw)

    async def test_smtplib_starttls(self) -> None:
        """
        smtplib: STARTTLS, EHLO again, a message.  The delivery sees the TLS
        facts; Received: says ESMTPS; the transaction log line has the
        version and cipher.
        """
        events = LogEvents(self)
        delivery = TrackingDelivery()
        server = self.server(delivery)

        def send() -> tuple[str, str]:
            with smtplib.SMTP(
                "127.0.0.1", server.port, local_hostname=HELO.decode(), timeout=10
            ) as c:
                c.ehlo()
                assert c.has_extn("starttls")
                code, _ = c.starttls(context=clientContext())
                assert code == 220, code
                c.ehlo()
                assert not c.has_extn("starttls"), c.esmtp_features
                c.sendmail("a@example.com", ["b@example.com"], b"Subject: tls\r\n\r\nsecret\r\n")
                return c.sock.version(), c.sock.cipher()[0]  # type: ignore[union-attr]

        version, cipher = await threads.deferToThread(send)
        [(envelope, data)] = delivery.messages
        self.assertEqual(withKeyword(data), "ESMTPS")
        self.assertTrue(data.endswith(b"Subject: tls\r\n\r\nsecret\r\n"))
        tls = envelope.connection.tls
        self.assertEqual((tls.version, tls.cipher), (version, cipher))
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertIsNone(tls.peerCertificate)
        # The session was opened before TLS, and reads the facts live.
        self.assertIsNone(delivery.sessions[0].tlsAtOpen)
        self.assertIs(delivery.sessions[0].connection.tls, tls)
        [event] = [e for e in events.events if e.get("result") == "accepted"]
        self.assertEqual((event["tlsVersion"], event["tlsCipher"]), (version, cipher))
        self.assertIn(f" tls={version}/{cipher}", formatEvent(event))

    async def test_state_reset(self) -> None:
        """
        RFC 3207 §4.2: after the handshake the server forgets the HELO name,
        the transaction and the authentication, and wants EHLO again;
        STARTTLS is no longer offered and a second one gets 503 5.5.1.
        """
        delivery = TrackingDelivery()
        portal = makePortal(delivery, [passwordChecker()])
        server = self.server(
            delivery, portal=portal, allowInsecureAuth=True, requireAuth=True, authFailureDelay=0
        )
        plain = b64(f"\0{USER}\0{PASSWORD}")

        def talk() -> list[Reply]:
            client = BlockingClient(server.port)
            try:
                seen = client.read()
                seen.append(client.command(b"EHLO before.example"))
                seen.append(client.command(b"AUTH PLAIN " + plain))
                seen.append(client.command(b"MAIL FROM:<before@example.com>"))
                seen.append(client.command(b"STARTTLS"))
                client.startTLS()
                seen.append(client.command(b"MAIL FROM:<early@example.com>"))
                seen.append(client.command(b"EHLO after.example"))
                seen.append(client.command(b"RCPT TO:<b@example.com>"))
                seen.append(client.command(b"MAIL FROM:<c@example.com>"))
                seen.append(client.command(b"STARTTLS"))
                seen.append(client.command(b"AUTH PLAIN " + plain))
                seen.append(client.command(b"MAIL FROM:<c@example.com>"))
                seen.append(client.command(b"RCPT TO:<b@example.com>"))
                seen.append(client.command(b"DATA"))
                client.send(b"Subject: after\r\n\r\nhi\r\n.\r\n")
                seen.extend(client.read())
                seen.append(client.command(b"QUIT"))
                return seen
            finally:
                client.close()

        (
            greeting,
            ehlo1,
            auth1,
            mail1,
            starttls,
            early,
            ehlo2,
            rcpt,
            mail2,
            starttls2,
            auth2,
            mail3,
            rcpt3,
            data,
            final,
            quit,
        ) = await threads.deferToThread(talk)
        self.assertEqual([greeting.code, ehlo1.code, auth1.code, mail1.code], [220, 250, 235, 250])
        self.assertIn("STARTTLS", ehlo1.lines)
        self.assertEqual((starttls.code, starttls.enhanced), (220, "2.0.0"))
        # EHLO is needed again.
        self.assertEqual((early.code, early.enhanced), (503, "5.5.1"))
        self.assertEqual(ehlo2.code, 250)
        self.assertNotIn("STARTTLS", ehlo2.lines)
        self.assertIn("PLAIN", advertisedAuth(ehlo2) or [])  # offered again: auth was forgotten
        # The transaction is gone.
        self.assertEqual((rcpt.code, rcpt.enhanced), (503, "5.5.1"))
        # So is the authentication.
        self.assertEqual((mail2.code, mail2.enhanced), (530, "5.7.0"))
        self.assertEqual((starttls2.code, starttls2.enhanced), (503, "5.5.1"))
        self.assertEqual(
            [auth2.code, mail3.code, rcpt3.code, data.code, final.code, quit.code],
            [235, 250, 250, 354, 250, 221],
        )
        [(envelope, stored)] = delivery.messages
        self.assertTrue(stored.startswith(b"Received: from after.example ("), stored[:80])
        self.assertEqual(withKeyword(stored), "ESMTPSA")
        self.assertEqual(str(envelope.sender), "c@example.com")
        # The delivery saw MAIL twice: before TLS, then after the new AUTH.
        self.assertEqual(delivery.senders, [("before@example.com", USER), ("c@example.com", USER)])
        # The anonymous session, the avatar of the first AUTH (logged out at
        # STARTTLS) and that of the second: each closed exactly once.
        await delivery.whenClosed(3)
        self.assertEqual(
            [(s.user, s.closeCount) for s in delivery.sessions], [(None, 1), (USER, 1), (USER, 1)]
        )

    async def test_injection_one_packet(self) -> None:
        """
        CVE-2011-0411 and kin: MAIL sent in the same packet as STARTTLS is
        never executed, inside TLS or out; it is logged and dropped.
        """
        events = LogEvents(self)
        delivery = TrackingDelivery()
        server = self.server(delivery)
        injected = b"MAIL FROM:<evil@attacker.example>\r\n"

        def talk() -> list[Reply]:
            client = BlockingClient(server.port)
            try:
                seen = client.read()
                client.send(b"EHLO " + HELO + b"\r\nSTARTTLS\r\n" + injected)
                seen += client.read(2)
                client.startTLS()
                seen.append(client.command(b"EHLO " + HELO))
                seen.append(client.command(b"RCPT TO:<victim@example.com>"))
                seen.append(client.command(b"MAIL FROM:<good@example.com>"))
                seen.append(client.command(b"QUIT"))
                assert not client.pending, client.pending
                return seen
            finally:
                client.close()

        seen = await threads.deferToThread(talk)
        self.assertEqual(codes(seen), [220, 250, 220, 250, 503, 250, 221])
        self.assertEqual(seen[4].enhanced, "5.5.1")
        self.assertEqual(delivery.senders, [("good@example.com", None)])
        warned = [e for e in events.events if e.get("octets") is not None]
        self.assertEqual([e["octets"] for e in warned], [len(injected)])
        self.assertIn("STARTTLS", formatEvent(warned[0]))

    async def test_injection_split(self) -> None:
        """
        Plaintext sent after STARTTLS in a later packet, once the server has
        switched to TLS, is never run as a command: it is not TLS, so the
        handshake fails (or, were it skipped, the command must not exist).
        """
        delivery = TrackingDelivery()
        tls = SignallingTLS(serverTLS())
        server = self.server(delivery, tls=tls)

        def talk() -> tuple[list[Reply], str]:
            client = BlockingClient(server.port)
            try:
                seen = client.read()
                seen.append(client.command(b"EHLO " + HELO))
                client.send(b"STARTTLS\r\n")
                assert tls.started.wait(10), "the server did not start TLS"
                # Before reading the 220: the injected command, in plaintext.
                client.send(
                    b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\n"
                )
                seen += client.read()
                try:
                    client.startTLS()
                except (ssl.SSLError, OSError) as e:
                    return seen, f"handshake failed: {e}"
                after = client.command(b"RCPT TO:<victim@example.com>")
                return seen, f"after handshake: {after}"
            finally:
                client.close()

        seen, outcome = await threads.deferToThread(talk)
        self.assertEqual(codes(seen), [220, 250, 220])
        if not outcome.startswith("handshake failed"):
            self.assertTrue(outcome.startswith("after handshake: 503"), outcome)
        await delivery.whenClosed(1)
        self.assertEqual(delivery.senders, [])
        self.assertEqual(server.factory.protocols, set())
        # The server carries on.
        await self._fullSession(server.port)

    async def _fullSession(self, port: int) -> None:
        def talk() -> list[int]:
            with smtplib.SMTP("127.0.0.1", port, local_hostname=HELO.decode(), timeout=10) as c:
                c.starttls(context=clientContext())
                return [c.ehlo()[0], c.noop()[0]]

        self.assertEqual(await threads.deferToThread(talk), [250, 250])

    async def test_client_drops_mid_handshake(self) -> None:
        """
        A client that closes or resets the connection after STARTTLS, part
        way through its ClientHello or after the server's reply to it: the
        session is closed and forgotten, and the server carries on.
        """
        delivery = TrackingDelivery()
        server = self.server(delivery)
        hello = clientHello()
        cases = [
            ("nothing", b"", False, False),
            ("half a ClientHello", hello[: len(hello) // 2], False, False),
            ("half a ClientHello, RST", hello[: len(hello) // 2], True, False),
            ("ClientHello, then gone", hello, False, True),
            ("ClientHello, RST", hello, True, True),
            ("garbage", b"\x16\x03\x01\x00\x05hello", False, False),
        ]
        for n, (what, data, reset, waitServer) in enumerate(cases, 1):

            def drop(
                data: bytes = data, reset: bool = reset, waitServer: bool = waitServer
            ) -> None:
                client = BlockingClient(server.port)
                try:
                    client.read()
                    client.command(b"EHLO " + HELO)
                    assert client.command(b"STARTTLS").code == 220
                    if data:
                        client.send(data)
                    if waitServer:
                        # The server answers a whole ClientHello.
                        assert client.sock.recv(5)[:1] == b"\x16"
                    if reset:
                        client.sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                finally:
                    client.close()

            await threads.deferToThread(drop)
            await delivery.whenClosed(n)
            self.assertEqual(server.factory.protocols, set(), what)
        self.assertEqual(delivery.senders, [])
        await self._fullSession(server.port)

    async def test_stalled_handshake_times_out(self) -> None:
        """
        A client that sends STARTTLS and then nothing is disconnected after
        the command timeout like any idle client (RFC 5321 §4.5.3.2), and
        its session is released: the server must not keep a socket forever
        for a handshake that never comes.
        """
        clock = Clock()
        delivery = TrackingDelivery()
        server = self.server(delivery, clock=clock)
        stopWithClock(self, server, clock)
        ready: defer.Deferred[None] = defer.Deferred()

        def stall() -> str:
            client = BlockingClient(server.port, timeout=5)
            try:
                client.read()
                client.command(b"EHLO " + HELO)
                assert client.command(b"STARTTLS").code == 220
                fireFromThread(ready)
                return client.waitClosed()
            finally:
                fireFromThread(ready)
                client.close()

        d = threads.deferToThread(stall)
        await ready
        clock.advance(server.factory.commandTimeout + 2)
        states = [p.state.name for p in server.factory.protocols]
        self.assertIn(await d, ("closed", "reset"), f"server sessions after the timeout: {states}")
        self.assertEqual(delivery.closes, 1)

    async def test_quit_closes_the_connection_under_tls(self) -> None:
        """After QUIT under STARTTLS the server closes the connection (no waiting for close_notify forever)."""
        await closedUnderTLS(self, implicit=False, how="quit")

    async def test_timeout_closes_the_connection_under_tls(self) -> None:
        """An idle client under STARTTLS gets 421 and the connection is closed, whatever the client does."""
        await closedUnderTLS(self, implicit=False, how="timeout")

    async def test_client_certificate(self) -> None:
        """
        With a context factory that asks for client certificates, the
        client's certificate is among the TLS facts the delivery sees.
        """
        c = certificates()

        def load(path: str) -> crypto.X509:
            with open(path, "rb") as f:
                return crypto.load_certificate(crypto.FILETYPE_PEM, f.read())

        with open(c.key, "rb") as f:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        options = tssl.CertificateOptions(
            privateKey=key,
            certificate=load(c.leafOnly),
            extraCertChain=[load(c.intermediate)],
            verify=True,
            caCerts=[load(c.ca)],
            requireCertificate=False,
            raiseMinimumTo=tssl.TLSVersion.TLSv1_2,
        )
        delivery = TrackingDelivery()
        server = self.server(delivery, tls=options)

        def send(withCert: bool) -> None:
            with smtplib.SMTP(
                "127.0.0.1", server.port, local_hostname=HELO.decode(), timeout=10
            ) as s:
                s.starttls(context=clientContext(clientCert=withCert))
                s.sendmail("a@example.com", ["b@example.com"], b"Subject: cert\r\n\r\nx\r\n")

        await threads.deferToThread(send, True)
        await threads.deferToThread(send, False)
        withCert, without = (envelope.connection.tls for envelope, _ in delivery.messages)
        self.assertIsNotNone(withCert.peerCertificate)
        subject = withCert.peerCertificate.to_cryptography().subject
        self.assertEqual(subject.rfc4514_string(), "CN=client.localhost,O=txsmtp tests")
        self.assertIsNone(without.peerCertificate)


# -- implicit TLS --------------------------------------------------------------------------------------


class ImplicitTLSTests(unittest.TestCase):
    """Implicit TLS (port 465, RFC 8314) in process: the listener ``--listen-tls`` builds."""

    timeout = 30

    async def test_session_under_tls(self) -> None:
        """
        The session knows it is under TLS from the start; STARTTLS is neither
        offered nor accepted; AUTH PLAIN is offered and works; requireTLS
        and requireAuth are satisfied; Received: says ESMTPSA.
        """
        delivery = TrackingDelivery()
        server = runServer(
            self,
            delivery,
            tls=serverTLS(),
            portal=makePortal(delivery, [passwordChecker()]),
            authFailureDelay=0,
            requireTLS=True,
            requireAuth=True,
        )
        port = listenImplicitTLS(self, server.factory)

        def talk() -> tuple[dict[str, str], tuple[int, bytes], tuple[int, bytes]]:
            with smtplib.SMTP_SSL(
                "127.0.0.1", port, local_hostname=HELO.decode(), context=clientContext(), timeout=10
            ) as c:
                c.ehlo()
                features = dict(c.esmtp_features)
                starttls = c.docmd("STARTTLS")
                c.user, c.password = USER, PASSWORD
                auth = c.auth("PLAIN", c.auth_plain)
                c.sendmail(
                    "a@example.com", ["x@remote.example"], b"Subject: 465\r\n\r\nimplicit\r\n"
                )
                return features, starttls, auth

        features, starttls, auth = await threads.deferToThread(talk)
        self.assertNotIn("starttls", features)
        self.assertIn("PLAIN", features["auth"].split())
        self.assertEqual(starttls[0], 503)
        self.assertTrue(starttls[1].startswith(b"5.5.1 "), starttls)
        self.assertEqual(auth[0], 235)
        [(envelope, data)] = delivery.messages
        self.assertEqual(withKeyword(data), "ESMTPSA")
        self.assertIsNotNone(delivery.sessions[0].tlsAtOpen)
        self.assertIn(envelope.connection.tls.version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(envelope.connection.authenticated, USER)

    async def test_client_drops_mid_handshake(self) -> None:
        """A client that gives up during the implicit TLS handshake leaves nothing behind."""
        delivery = TrackingDelivery()
        server = runServer(self, delivery, tls=serverTLS())
        port = listenImplicitTLS(self, server.factory)
        hello = clientHello()
        for n, data in enumerate([b"", hello[:20], hello], 1):

            def drop(data: bytes = data) -> None:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    if data:
                        s.sendall(data)

            await threads.deferToThread(drop)
            await delivery.whenClosed(n)
            self.assertEqual(server.factory.protocols, set())

    async def test_quit_closes_the_connection(self) -> None:
        """After QUIT on the implicit TLS port the server closes the connection."""
        await closedUnderTLS(self, implicit=True, how="quit")

    async def test_timeout_closes_the_connection(self) -> None:
        """An idle client on the implicit TLS port gets 421 and the connection is closed."""
        await closedUnderTLS(self, implicit=True, how="timeout")

    async def test_stalled_handshake_times_out(self) -> None:
        """A client that connects to the implicit TLS port and says nothing is disconnected after the timeout."""
        clock = Clock()
        delivery = TrackingDelivery()
        server = runServer(self, delivery, tls=serverTLS(), clock=clock)
        stopWithClock(self, server, clock)
        port = listenImplicitTLS(self, server.factory)
        ready: defer.Deferred[None] = defer.Deferred()

        def stall() -> str:
            client = BlockingClient(port, timeout=5)
            try:
                fireFromThread(ready)
                return client.waitClosed()
            finally:
                fireFromThread(ready)
                client.close()

        d = threads.deferToThread(stall)
        await ready
        # Let the server see the connection before time passes.
        await delivery.whenOpened(1)
        clock.advance(server.factory.commandTimeout + 2)
        states = [p.state.name for p in server.factory.protocols]
        self.assertIn(await d, ("closed", "reset"), f"server sessions after the timeout: {states}")
        self.assertEqual(delivery.closes, 1)


# -- AUTH: what is offered ---------------------------------------------------------------------------------


class AuthAdvertisingTests(unittest.TestCase):
    """Which mechanisms EHLO offers, and when AUTH is refused outright."""

    def test_offered_under_tls(self) -> None:
        h = authHarness(tls=False)
        h.protocol.connection.tls = TLSInfo(TLS13.version, TLS13.cipher)
        self.assertEqual(
            advertisedAuth(h.command(b"EHLO " + HELO)),
            ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"],
        )

    def test_not_before_tls(self) -> None:
        """
        RFC 4954 §4 (and docs/auth.rst): by default AUTH is not offered
        without TLS, and PLAIN and LOGIN (the plaintext mechanisms), like
        the others, get 538 5.7.11.
        """
        h = authHarness(tls=False)
        self.assertIsNone(advertisedAuth(h.command(b"EHLO " + HELO)))
        for command in [
            b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"),
            b"AUTH PLAIN",
            b"AUTH LOGIN",
            b"AUTH CRAM-MD5",
            b"AUTH SCRAM-SHA-256",
        ]:
            reply = h.command(command)
            self.assertEqual((reply.code, reply.enhanced), (538, "5.7.11"), command)
        self.assertIsNone(h.protocol.connection.authenticated)
        self.assertEqual(h.protocol.state, State.READY)

    def test_allow_insecure_auth(self) -> None:
        h = authHarness(tls=False, allowInsecureAuth=True)
        self.assertIn("PLAIN", advertisedAuth(h.command(b"EHLO " + HELO)) or [])
        reply = h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual((reply.code, reply.enhanced), (235, "2.7.0"))

    def test_mechanism_selection(self) -> None:
        """authMechanisms limits and orders what is offered; others get 504."""
        h = authHarness(authMechanisms=("PLAIN", "SCRAM-SHA-256"))
        self.assertEqual(advertisedAuth(h.command(b"EHLO " + HELO)), ["PLAIN", "SCRAM-SHA-256"])
        reply = h.command(b"AUTH CRAM-MD5")
        self.assertEqual((reply.code, reply.enhanced), (504, "5.5.4"))
        with self.assertRaises(ValueError):
            SMTPFactory(TrackingDelivery(), "x", authMechanisms=("PLAIN", "DIGEST-MD5"))

    def test_no_portal(self) -> None:
        """Without a portal: no AUTH keyword, AUTH is 502, the AUTH= MAIL parameter is unknown."""
        h = ServerHarness(tls=serverTLS())
        h.protocol.connection.tls = TLSInfo(TLS13.version, TLS13.cipher)
        self.assertIsNone(advertisedAuth(h.command(b"EHLO " + HELO)))
        self.assertEqual(h.command(b"AUTH PLAIN " + b64("\0a\0b")).code, 502)
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com> AUTH=<>").code, 555)

    def test_not_offered_once_authenticated(self) -> None:
        h = authHarness()
        self.assertEqual(h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")).code, 235)
        self.assertIsNone(advertisedAuth(h.command(b"EHLO " + HELO)))
        # EHLO and RSET keep the authentication (only STARTTLS resets it).
        self.assertEqual(h.command(b"RSET").code, 250)
        self.assertEqual(h.protocol.connection.authenticated, USER)


# -- AUTH: the mechanisms ----------------------------------------------------------------------------------


class AuthMechanismTests(unittest.TestCase):
    """Each mechanism through the server, with a twisted.cred checker."""

    def assertAuthenticated(self, h: ServerHarness, reply: Reply, user: str = USER) -> None:
        self.assertEqual((reply.code, reply.enhanced), (235, "2.7.0"), str(reply))
        self.assertEqual(h.protocol.connection.authenticated, user)
        self.assertEqual(h.protocol.state, State.READY)

    def test_plain_initial_response(self) -> None:
        h = authHarness()
        self.assertAuthenticated(h, h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")))

    def test_plain_after_empty_challenge(self) -> None:
        """RFC 4616/4954: without an initial response the server sends "334 " and waits."""
        h = authHarness()
        reply = h.command(b"AUTH plain")
        self.assertEqual((reply.code, unb64(reply)), (334, b""))
        self.assertAuthenticated(h, h.command(b64(f"{USER}\0{USER}\0{PASSWORD}")))

    def test_login(self) -> None:
        h = authHarness()
        reply = h.command(b"AUTH LOGIN")
        self.assertEqual((reply.code, unb64(reply)), (334, b"Username:"))
        reply = h.command(b64(USER))
        self.assertEqual((reply.code, unb64(reply)), (334, b"Password:"))
        self.assertAuthenticated(h, h.command(b64(PASSWORD)))

    def test_login_initial_response(self) -> None:
        h = authHarness()
        reply = h.command(b"AUTH LOGIN " + b64(USER))
        self.assertEqual((reply.code, unb64(reply)), (334, b"Password:"))
        self.assertAuthenticated(h, h.command(b64(PASSWORD)))

    def test_cram_md5(self) -> None:
        h = authHarness()
        reply = h.command(b"AUTH CRAM-MD5")
        self.assertEqual(reply.code, 334)
        challenge = unb64(reply)
        self.assertRegex(challenge, rb"^<[^<>]+@test\.invalid>$")
        self.assertAuthenticated(
            h, h.command(b64(cramResponse(USER.encode(), PASSWORD.encode(), challenge)))
        )

    def test_scram_with_password_checker(self) -> None:
        """SCRAM-SHA-256 against a checker that holds plaintext passwords; the server proves itself."""
        for initial in (True, False):
            h = authHarness()
            final, done, _ = scramExchange(h, ScramClient(USER, PASSWORD), initial=initial)
            self.assertEqual(final.code, 334)
            assert done is not None
            self.assertAuthenticated(h, done)

    def test_scram_with_key_store(self) -> None:
        """
        SCRAM-SHA-256 against ScramKeyChecker: the stored salt and count are
        sent, no password exists on the server.
        """
        keys = scramKeys(PASSWORD, b"fixed-salt-16oct", 4096)
        h = authHarness(checkers=[ScramKeyChecker({USER: keys})])
        client = ScramClient(USER, PASSWORD)
        final, done, _ = scramExchange(h, client)
        self.assertEqual((client.salt, client.iterations), (b"fixed-salt-16oct", 4096))
        assert done is not None
        self.assertAuthenticated(h, done)

    def test_scram_key_store_wrong_password_and_unknown_user(self) -> None:
        """
        A wrong password fails with 535 5.7.8 after the proof; an unknown
        user gets a server-first-message all the same (the exchange does not
        tell who exists) and fails the same way.
        """
        keys = scramKeys(PASSWORD, b"fixed-salt-16oct", 4096)
        for user, password in [(USER, "wrong"), ("mallory", PASSWORD)]:
            h = authHarness(checkers=[ScramKeyChecker({USER: keys})])
            client = ScramClient(user, password)
            final, done, _ = scramExchange(h, client)
            self.assertEqual((final.code, final.enhanced), (535, "5.7.8"), user)
            self.assertEqual(client.iterations, 4096)
            self.assertIsNone(h.protocol.connection.authenticated)

    def test_scram_wrong_password(self) -> None:
        h = authHarness()
        final, done, _ = scramExchange(h, ScramClient(USER, "wrong"))
        self.assertEqual((final.code, final.enhanced), (535, "5.7.8"))
        self.assertIsNone(done)
        self.assertIsNone(h.protocol.connection.authenticated)

    def test_scram_asynchronous_key_store(self) -> None:
        """
        A key store whose scramKeys and requestAvatarId answer later
        (Deferreds, as a database would): the server waits, holding
        pipelined input, and completes the exchange.
        """
        keys = scramKeys(PASSWORD, b"async-salt-16oct", 4096)
        store = SlowKeyStore({USER: keys})
        h = authHarness(checkers=[store])
        client = ScramClient(USER, PASSWORD)
        self.assertEqual(h.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n"), [])
        self.assertEqual(store.lookups, [(USER, "SCRAM-SHA-256")])
        store.pending.pop(0).callback(keys)
        [serverFirst] = h.replies()
        self.assertEqual(serverFirst.code, 334)
        self.assertEqual(h.send(b64(client.final(unb64(serverFirst))) + b"\r\nNOOP\r\n"), [])
        store.pending.pop(0).callback(USER)
        final, noop = h.replies()  # the NOOP waited its turn...
        self.assertEqual(final.code, 334)
        self.assertTrue(client.verify(unb64(final)))
        self.assertEqual(noop.code, 501)  # ...and answered the final challenge: not empty
        self.assertIsNone(h.protocol.connection.authenticated)
        self.assertEqual(client.salt, b"async-salt-16oct")

    def test_scram_key_store_unavailable(self) -> None:
        """A key store that fails: 454 4.7.0 (temporary), not authenticated, the error logged."""
        store = SlowKeyStore({})
        h = authHarness(checkers=[store])
        self.assertEqual(
            h.send(b"AUTH SCRAM-SHA-256 " + b64(ScramClient(USER, PASSWORD).first()) + b"\r\n"), []
        )
        store.pending.pop(0).errback(RuntimeError("directory server down"))
        [reply] = h.replies()
        self.assertEqual((reply.code, reply.enhanced), (454, "4.7.0"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.protocol.state, State.READY)
        self.assertIsNone(h.protocol.connection.authenticated)
        self.assertEqual(h.command(b"NOOP").code, 250)

    def test_scram_key_store_beside_password_checker(self) -> None:
        """
        A portal with a password checker *and* a SCRAM key store: a user
        whose keys the server fetched from the store (and whose salt it sent)
        logs in with SCRAM, and a password user still logs in with PLAIN.
        """
        keys = scramKeys("bobs-password", b"bob-salt-16octet", 4096)
        checkers = [passwordChecker(), ScramKeyChecker({"bob": keys})]
        h = authHarness(checkers=checkers)
        client = ScramClient("bob", "bobs-password")
        final, done, _ = scramExchange(h, client)
        self.assertEqual(client.salt, b"bob-salt-16octet")  # the store's salt was used
        self.assertEqual(final.code, 334, str(final))
        assert done is not None
        self.assertAuthenticated(h, done, "bob")
        h = authHarness(checkers=checkers)
        self.assertAuthenticated(h, h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")))

    def test_failure(self) -> None:
        """RFC 4954 §6: 535 5.7.8 for bad credentials, with every mechanism; the session goes on."""
        h = authHarness(maxAuthFailures=10)
        replies = [
            h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0wrong")),
            h.command(b"AUTH PLAIN " + b64(f"\0nobody\0{PASSWORD}")),
        ]
        h.command(b"AUTH LOGIN " + b64(USER))
        replies.append(h.command(b64("wrong")))
        challenge = unb64(h.command(b"AUTH CRAM-MD5"))
        replies.append(h.command(b64(cramResponse(USER.encode(), b"wrong", challenge))))
        replies.append(scramExchange(h, ScramClient(USER, "wrong"))[0])
        for reply in replies:
            self.assertEqual((reply.code, reply.enhanced), (535, "5.7.8"), str(reply))
        self.assertIsNone(h.protocol.connection.authenticated)
        self.assertEqual(h.command(b"NOOP").code, 250)
        self.assertAuthenticated(h, h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")))

    def test_auth_mail_parameter(self) -> None:
        """RFC 4954 §5: MAIL accepts AUTH=<> and AUTH=xtext, before and after AUTH."""
        h = authHarness()
        reply = h.command(b"MAIL FROM:<a@example.com> AUTH=<>")
        self.assertEqual(reply.code, 250, str(reply))
        self.assertIsNone(h.protocol.envelope.parameters.auth)
        h.command(b"RSET")
        h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        reply = h.command(b"MAIL FROM:<a@example.com> AUTH=alice+40example.com")
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(h.protocol.envelope.parameters.auth, "alice@example.com")


# -- AUTH: errors in every step --------------------------------------------------------------------------------


class AuthErrorTests(unittest.TestCase):
    """Cancellation, bad base64 and garbage at every step; sequencing errors."""

    def steps(self, mechanism: str) -> list[list[bytes]]:
        """The prefixes of a (correct) exchange, one per step at which the client may answer."""
        if mechanism == "PLAIN":
            return [[b"AUTH PLAIN"]]
        if mechanism == "LOGIN":
            return [[b"AUTH LOGIN"], [b"AUTH LOGIN", b64(USER)]]
        if mechanism == "CRAM-MD5":
            return [[b"AUTH CRAM-MD5"]]
        return [
            [b"AUTH SCRAM-SHA-256"],
            [b"AUTH SCRAM-SHA-256 " + b64(ScramClient(USER, PASSWORD).first())],
        ]

    def walk(self, h: ServerHarness, lines: list[bytes]) -> None:
        for line in lines:
            reply = h.command(line)
            self.assertEqual(reply.code, 334, (line, str(reply)))

    def assertBackToCommands(self, h: ServerHarness) -> None:
        self.assertEqual(h.protocol.state, State.READY)
        self.assertIsNone(h.protocol.connection.authenticated)
        self.assertEqual(h.command(b"NOOP").code, 250)
        # A fresh, correct exchange still works.
        self.assertEqual(h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")).code, 235)

    def test_cancel_at_every_step(self) -> None:
        """RFC 4954 §4: "*" cancels the exchange with 501."""
        for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"]:
            for lines in self.steps(mechanism):
                h = authHarness()
                self.walk(h, lines)
                reply = h.command(b"*")
                self.assertEqual((reply.code, reply.enhanced), (501, "5.7.0"), (mechanism, lines))
                self.assertBackToCommands(h)

    def test_bad_base64_at_every_step(self) -> None:
        """RFC 4954 §4: a response that is not base64 gets 501 5.5.2."""
        bad = [b"not base64!", b"QUJDRA", b"QU=D", b"\xff\xfe", b"QU JD", b"QUJD\x00"]
        for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"]:
            for lines in self.steps(mechanism):
                for garbage in bad:
                    h = authHarness()
                    self.walk(h, lines)
                    reply = h.command(garbage)
                    self.assertEqual(
                        (reply.code, reply.enhanced), (501, "5.5.2"), (mechanism, lines, garbage)
                    )
                    self.assertBackToCommands(h)
            # And in the initial response.
            h = authHarness()
            reply = h.command(b"AUTH " + mechanism.encode() + b" not*base64")
            self.assertEqual((reply.code, reply.enhanced), (501, "5.5.2"), mechanism)
            self.assertBackToCommands(h)

    def test_garbage_at_every_step(self) -> None:
        """Well-formed base64 of nonsense: 501 5.5.2, and no authentication."""
        garbage = [
            b"",
            b"\0",
            b"\0\0\0",
            b"x" * 200,
            b"\xff\xfe\xfd",
            b"n,,",
            b"c=biws,r=x,p=AAAA",
            b"a b c",
        ]
        for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"]:
            for lines in self.steps(mechanism):
                for data in garbage:
                    h = authHarness()
                    self.walk(h, lines)
                    reply = h.command(b64(data) if data else b"")
                    # Some garbage is a well-formed (wrong) answer at some
                    # steps: LOGIN takes any user name; then it is 334 or 535.
                    self.assertIn(reply.code, (501, 535, 334), (mechanism, lines, data, str(reply)))
                    if reply.code in (501, 535):
                        self.assertEqual(reply.enhanced, {501: "5.5.2", 535: "5.7.8"}[reply.code])
                    if reply.code == 334:
                        reply = h.command(b"*")
                        self.assertEqual(reply.code, 501)
                    self.assertIsNone(h.protocol.connection.authenticated, (mechanism, data))
                    self.assertEqual(h.protocol.state, State.READY)
                    self.assertEqual(h.command(b"NOOP").code, 250)

    def test_scram_final_acknowledgement(self) -> None:
        """
        After the SCRAM server-final-message the client answers with an empty
        line (RFC 4954 §4); "*" there cancels the exchange (501) and a
        non-empty line is an error (501): either way the AUTH command
        failed, so the client is NOT authenticated and MAIL is refused with
        requireAuth (RFC 4954 §4: a cancelled AUTH is rejected).
        """
        for answer, enhanced in [(b"*", "5.7.0"), (b"Zm9v", "5.5.2")]:
            h = authHarness(requireAuth=True)
            client = ScramClient(USER, PASSWORD)
            serverFirst = h.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
            final = h.command(b64(client.final(unb64(serverFirst))))
            self.assertEqual(final.code, 334)
            self.assertTrue(client.verify(unb64(final)))
            reply = h.command(answer)
            self.assertEqual((reply.code, reply.enhanced), (501, enhanced), answer)
            self.assertIsNone(h.protocol.connection.authenticated, answer)
            mail = h.command(b"MAIL FROM:<a@example.com>")
            self.assertEqual((mail.code, mail.enhanced), (530, "5.7.0"), answer)
            # And a new AUTH is allowed (not "503 already authenticated").
            self.assertEqual(h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")).code, 235)
            # The abandoned avatar was released; every session is closed once.
            h.disconnect()
            self.assertEqual([s.closeCount for s in h.delivery.sessions], [1, 1, 1], answer)

    def test_scram_client_leaves_before_acknowledging(self) -> None:
        """A client that vanishes after the server-final-message: both sessions are closed once."""
        h = authHarness()
        client = ScramClient(USER, PASSWORD)
        serverFirst = h.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        self.assertEqual(h.command(b64(client.final(unb64(serverFirst)))).code, 334)
        h.disconnect()
        self.assertEqual(
            [(s.user, s.closeCount) for s in h.delivery.sessions], [(None, 1), (USER, 1)]
        )

    def test_idle_during_exchange(self) -> None:
        """A client that stops in the middle of AUTH is timed out like any idle client (421 4.4.2)."""
        h = authHarness(commandTimeout=60.0)
        self.assertEqual(h.command(b"AUTH LOGIN").code, 334)
        h.clock.advance(59)
        self.assertEqual(h.replies(), [])
        h.clock.advance(2)
        [reply] = h.replies()
        self.assertEqual((reply.code, reply.enhanced), (421, "4.4.2"))
        self.assertTrue(h.closed)

    def test_already_authenticated(self) -> None:
        """RFC 4954 §4: AUTH after a successful AUTH gets 503 5.5.1."""
        h = authHarness()
        h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        reply = h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"))
        reply = h.command(b"AUTH LOGIN")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"))

    def test_in_transaction(self) -> None:
        """RFC 4954 §4: AUTH during a mail transaction gets 503."""
        h = authHarness()
        h.command(b"MAIL FROM:<a@example.com>")
        reply = h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual(reply.code, 503)
        self.assertIsNone(h.protocol.connection.authenticated)
        self.assertEqual(h.command(b"RCPT TO:<b@example.com>").code, 250)

    def test_syntax(self) -> None:
        h = authHarness()
        for command in [b"AUTH", b"AUTH ", b"AUTH PLAIN a b"]:
            reply = h.command(command)
            self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"), command)
        reply = h.command(b"AUTH DIGEST-MD5")
        self.assertEqual((reply.code, reply.enhanced), (504, "5.5.4"))
        self.assertEqual(h.protocol.state, State.READY)

    def test_empty_initial_response(self) -> None:
        """RFC 4954 §4: "=" is an empty initial response; for PLAIN that is malformed (501)."""
        h = authHarness()
        reply = h.command(b"AUTH PLAIN =")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.2"))
        self.assertEqual(h.protocol.state, State.READY)

    def test_long_responses(self) -> None:
        """
        RFC 4954 §4: responses of up to 12288 octets are read; a longer one
        gets 500 5.5.6 and ends the exchange; afterwards commands are back
        to 512 octets.
        """
        h = authHarness()
        self.assertEqual(h.command(b"AUTH LOGIN").code, 334)
        user = b64(b"u" * 9213)  # 12284 octets + CRLF
        self.assertEqual(len(user) + 2, 12286)
        reply = h.command(user)
        self.assertEqual((reply.code, unb64(reply)), (334, b"Password:"))
        self.assertEqual(h.command(b64(PASSWORD)).code, 535)
        self.assertEqual(h.command(b"AUTH LOGIN").code, 334)
        reply = h.command(b"QUFB" * 5000)
        self.assertEqual((reply.code, reply.enhanced), (500, "5.5.6"))
        self.assertEqual(h.protocol.state, State.READY)
        self.assertEqual(h.command(b"NOOP").code, 250)
        reply = h.command(b"NOOP " + b"x" * 600)
        self.assertEqual((reply.code, reply.enhanced), (500, "5.5.2"))


# -- AUTH: the realm, the session, the log -----------------------------------------------------------------------


class AuthSessionTests(unittest.TestCase):
    """What authentication changes: the delivery session, Received:, requireAuth."""

    def test_require_auth(self) -> None:
        """RFC 4954 §6: 530 5.7.0 "Authentication required" for MAIL before AUTH."""
        h = authHarness(requireAuth=True)
        reply = h.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual((reply.code, reply.enhanced), (530, "5.7.0"))
        h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual(h.command(b"MAIL FROM:<a@example.com>").code, 250)

    def test_realm_turns_avatar_into_delivery_policy(self) -> None:
        """
        The realm opens the delivery's session again for the user: the
        anonymous session refuses to relay, the authenticated one relays.
        """
        delivery = TrackingDelivery()
        h = authHarness(delivery)
        h.command(b"MAIL FROM:<a@example.com>")
        reply = h.command(b"RCPT TO:<x@remote.example>")
        self.assertEqual((reply.code, reply.enhanced), (550, "5.7.1"))
        h.command(b"RSET")
        h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual([s.user for s in delivery.sessions], [None, USER])
        self.assertIs(h.protocol.session, delivery.sessions[1])
        replies = h.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@remote.example>\r\nDATA\r\n")
        self.assertEqual(codes(replies), [250, 250, 354])
        self.assertEqual(codes(h.send(b"Subject: relay\r\n\r\nhi\r\n.\r\n")), [250])
        self.assertEqual(delivery.senders, [("a@example.com", None), ("a@example.com", USER)])

    def test_sessions_closed_once(self) -> None:
        """When the client leaves, the anonymous and the authenticated session are each closed exactly once."""
        delivery = TrackingDelivery()
        h = authHarness(delivery)
        h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        h.disconnect()
        self.assertEqual([s.closeCount for s in delivery.sessions], [1, 1])

    def test_realm_failure_is_temporary_and_not_authenticated(self) -> None:
        """
        RFC 4954 §6: 454 4.7.0 when the server cannot complete the login (the
        realm failed); the client is then not authenticated: requireAuth
        still refuses MAIL, Received: does not say ESMTPSA, AUTH may be tried
        again.
        """
        delivery = TrackingDelivery(refuseAuthenticated=True)
        h = authHarness(delivery, requireAuth=True)
        reply = h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual((reply.code, reply.enhanced), (454, "4.7.0"))
        self.flushLoggedErrors(RuntimeError)
        self.assertIsNone(h.protocol.connection.authenticated)
        mail = h.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual((mail.code, mail.enhanced), (530, "5.7.0"))
        again = h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual(again.code, 454)
        self.flushLoggedErrors(RuntimeError)

    def test_received_keyword(self) -> None:
        """RFC 3848: ESMTPA with AUTH in the clear, ESMTPSA with AUTH under TLS."""
        for tls, keyword in [(False, "ESMTPA"), (True, "ESMTPSA")]:
            delivery = TrackingDelivery()
            h = authHarness(delivery, tls=tls, allowInsecureAuth=True)
            h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
            h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: k\r\n\r\nx\r\n")
            [(envelope, data)] = delivery.messages
            self.assertEqual(withKeyword(data), keyword)
            self.assertEqual(envelope.connection.authenticated, USER)

    def test_log_line_names_user(self) -> None:
        events = LogEvents(self)
        h = authHarness()
        h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        h.sendMessage(b"a@example.com", [b"b@example.com"], b"Subject: k\r\n\r\nx\r\n")
        [event] = [e for e in events.events if e.get("result") == "accepted"]
        self.assertEqual(event["authenticated"], USER)
        self.assertIn(f" auth={USER}", formatEvent(event))


class BruteForceTests(unittest.TestCase):
    """A growing delay after each failure, 421 after maxAuthFailures (the clock is fake)."""

    bad = b"AUTH PLAIN " + b64(f"\0{USER}\0wrong") + b"\r\n"

    def test_growing_delay_then_disconnect(self) -> None:
        h = authHarness(authFailureDelay=1.0, maxAuthFailures=3)
        # 1st failure: 1 s.
        self.assertEqual(h.send(self.bad), [])
        h.clock.advance(0.99)
        self.assertEqual(h.replies(), [])
        h.clock.advance(0.01)
        [reply] = h.replies()
        self.assertEqual((reply.code, reply.enhanced), (535, "5.7.8"))
        # 2nd: 2 s, and pipelined commands wait their turn.
        self.assertEqual(h.send(self.bad + b"NOOP\r\n"), [])
        h.clock.advance(1.99)
        self.assertEqual(h.replies(), [])
        h.clock.advance(0.01)
        self.assertEqual(codes(h.replies()), [535, 250])
        # 3rd: 4 s, then 421 and the connection is closed.
        self.assertEqual(h.send(self.bad), [])
        h.clock.advance(3.99)
        self.assertEqual(h.replies(), [])
        self.assertFalse(h.closed)
        h.clock.advance(0.01)
        replies = h.replies()
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(535, "5.7.8"), (421, "4.7.0")])
        self.assertTrue(h.closed)

    def test_success_is_not_delayed(self) -> None:
        h = authHarness(authFailureDelay=1.0, maxAuthFailures=3)
        h.send(self.bad)
        h.clock.advance(1)
        self.assertEqual(codes(h.replies()), [535])
        reply = h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
        self.assertEqual(reply.code, 235)

    def test_delay_is_capped(self) -> None:
        """The delay doubles up to 30 s."""
        h = authHarness(authFailureDelay=20.0, maxAuthFailures=5)
        h.send(self.bad)
        h.clock.advance(20)
        self.assertEqual(codes(h.replies()), [535])
        h.send(self.bad)
        h.clock.advance(29.9)
        self.assertEqual(h.replies(), [])
        h.clock.advance(0.1)
        self.assertEqual(codes(h.replies()), [535])

    def test_every_mechanism_counts(self) -> None:
        """
        Failures with different mechanisms add up once another command
        comes between them (in a row, they are one client's fallback: see
        tests/test_auth_fallback.py).
        """
        h = authHarness(authFailureDelay=0, maxAuthFailures=3)
        h.command(b"AUTH LOGIN " + b64(USER))
        self.assertEqual(h.command(b64("wrong")).code, 535)
        self.assertEqual(h.command(b"NOOP").code, 250)
        challenge = unb64(h.command(b"AUTH CRAM-MD5"))
        self.assertEqual(h.command(b64(cramResponse(USER.encode(), b"wrong", challenge))).code, 535)
        self.assertEqual(h.command(b"RSET").code, 250)
        client = ScramClient(USER, "wrong")
        serverFirst = h.command(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        replies = h.send(b64(client.final(unb64(serverFirst))) + b"\r\n")
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(535, "5.7.8"), (421, "4.7.0")])
        self.assertTrue(h.closed)

    def test_timeouts_do_not_fire_during_the_delay(self) -> None:
        """Waiting out the delay is the server's doing: the idle timeout does not count it."""
        h = authHarness(authFailureDelay=20.0, maxAuthFailures=10, commandTimeout=25.0)
        h.send(self.bad)
        h.clock.advance(20)
        self.assertEqual(codes(h.replies()), [535])
        h.send(self.bad)
        h.clock.advance(24)  # the second delay is 30 s; 24 s are inside it
        self.assertFalse(h.closed)
        h.clock.advance(6)
        self.assertEqual(codes(h.replies()), [535])
        self.assertFalse(h.closed)

    def test_client_leaves_during_the_delay(self) -> None:
        delivery = TrackingDelivery()
        h = authHarness(delivery, authFailureDelay=5.0)
        h.send(self.bad)
        h.disconnect()
        h.clock.advance(10)
        self.assertEqual(h.replies(), [])
        self.assertEqual(delivery.closes, 1)


class PasswordLoggingTests(unittest.TestCase):
    """Passwords never reach the log, in any form; user names do (for fail2ban)."""

    def test_no_password_in_log(self) -> None:
        events = LogEvents(self)
        secrets = [PASSWORD, "Wr0ng-" + PASSWORD]
        for password in secrets:
            h = authHarness()
            h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{password}"))
            h = authHarness()
            h.command(b"AUTH LOGIN")
            h.command(b64(USER))
            h.command(b64(password))
            h = authHarness()
            challenge = unb64(h.command(b"AUTH CRAM-MD5"))
            h.command(b64(cramResponse(USER.encode(), password.encode(), challenge)))
            h = authHarness()
            scramExchange(h, ScramClient(USER, password))
            # Malformed exchanges that carry the password.
            h = authHarness()
            h.command(b"AUTH PLAIN " + b64(f"other\0{USER}\0{password}"))
            h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{password}\x07"))
            h.command(b"AUTH PLAIN " + b64(f"\0{USER}\0{password}")[:-1])
            h.command(b"AUTH LOGIN " + b64(USER))
            h.command(b64(password) + b"*")
        self.assertGreater(len(events.events), 10)
        forms = set()
        for secret in secrets:
            forms |= {secret, secret.lower(), secret.upper()}
            forms |= {b64(secret).decode(), b64(f"\0{USER}\0{secret}").decode()}
        for event in events.events:
            text = formatEvent(event) + repr(event)
            for form in forms:
                self.assertNotIn(form, text)
        failures = [e for e in events.events if "authentication failed" in formatEvent(e)]
        self.assertEqual(len(failures), 4)  # the wrong password, with each mechanism
        self.assertTrue(all(e.get("user") == USER for e in failures), failures)
        successes = [e for e in events.events if "authenticated alice" in formatEvent(e)]
        self.assertEqual(len(successes), 4)


# -- AUTH with smtplib -------------------------------------------------------------------------------------


class SmtplibAuthTests(unittest.TestCase):
    """smtplib over real sockets: STARTTLS, then each mechanism it speaks."""

    timeout = 30

    async def test_starttls_then_each_mechanism(self) -> None:
        delivery = TrackingDelivery()
        server = runServer(
            self,
            delivery,
            tls=serverTLS(),
            portal=makePortal(delivery, [passwordChecker()]),
            requireAuth=True,
            authFailureDelay=0,
        )

        def send(mechanism: str) -> tuple[str | None, int]:
            with smtplib.SMTP(
                "127.0.0.1", server.port, local_hostname=HELO.decode(), timeout=10
            ) as c:
                c.ehlo()
                before = c.esmtp_features.get("auth")
                c.starttls(context=clientContext())
                c.ehlo()
                c.user, c.password = USER, PASSWORD
                method = {
                    "PLAIN": c.auth_plain,
                    "LOGIN": c.auth_login,
                    "CRAM-MD5": c.auth_cram_md5,
                }[mechanism]
                code, _ = c.auth(mechanism, method)
                c.sendmail(
                    "a@example.com",
                    ["x@remote.example"],
                    f"Subject: {mechanism}\r\n\r\nx\r\n".encode(),
                )
                return before, code

        for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"]:
            before, code = await threads.deferToThread(send, mechanism)
            self.assertEqual(code, 235, mechanism)
            self.assertNotIn("PLAIN", (before or "").split(), mechanism)
        self.assertEqual(len(delivery.messages), 3)
        for envelope, data in delivery.messages:
            self.assertEqual(withKeyword(data), "ESMTPSA")
            self.assertEqual(envelope.connection.authenticated, USER)

    async def test_login_refused_without_tls(self) -> None:
        """smtplib.login() in the clear: AUTH is not offered, and MAIL needs it."""
        delivery = TrackingDelivery()
        server = runServer(
            self,
            delivery,
            tls=serverTLS(),
            portal=makePortal(delivery, [passwordChecker()]),
            requireAuth=True,
        )

        def attempt() -> tuple[str, tuple[int, bytes]]:
            with smtplib.SMTP(
                "127.0.0.1", server.port, local_hostname=HELO.decode(), timeout=10
            ) as c:
                try:
                    c.login(USER, PASSWORD)
                except smtplib.SMTPNotSupportedError:
                    outcome = "not supported"
                else:
                    outcome = "logged in"
                return outcome, c.mail("a@example.com")

        outcome, mail = await threads.deferToThread(attempt)
        self.assertEqual(outcome, "not supported")
        self.assertEqual(mail[0], 530)
        self.assertTrue(mail[1].startswith(b"5.7.0 "), mail)

    async def test_wrong_password(self) -> None:
        delivery = TrackingDelivery()
        server = runServer(
            self,
            delivery,
            tls=serverTLS(),
            portal=makePortal(delivery, [passwordChecker()]),
            authFailureDelay=0,
            maxAuthFailures=10,  # smtplib tries CRAM-MD5, PLAIN and LOGIN in turn
        )

        def attempt() -> tuple[int, bytes]:
            with smtplib.SMTP(
                "127.0.0.1", server.port, local_hostname=HELO.decode(), timeout=10
            ) as c:
                c.starttls(context=clientContext())
                try:
                    c.login(USER, "wrong")
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code, e.smtp_error
                raise AssertionError("logged in with a wrong password")

        code, text = await threads.deferToThread(attempt)
        self.assertEqual(code, 535)
        self.assertTrue(text.startswith(b"5.7.8 "), text)


# -- txsmtp.auth ------------------------------------------------------------------------------------------


class AuthModuleTests(unittest.TestCase):
    """DeliveryRealm, makePortal, ScramKeyChecker on their own."""

    def test_realm(self) -> None:
        delivery = TrackingDelivery()
        realm = DeliveryRealm(delivery)
        connection = ConnectionInfo()
        interface, avatar, logout = self.successResultOf(
            realm.requestAvatar(b"alice", connection, IDeliverySession)
        )
        self.assertIs(interface, IDeliverySession)
        self.assertEqual(connection.authenticated, "alice")
        self.assertEqual(avatar.user, "alice")
        logout()
        self.assertEqual(avatar.closeCount, 1)
        with self.assertRaises(NotImplementedError):
            realm.requestAvatar(b"alice", connection, IScramCredentials)

    def test_portal(self) -> None:
        delivery = TrackingDelivery()
        portal = makePortal(delivery, [passwordChecker()])
        interface, avatar, _ = self.successResultOf(
            portal.login(
                UsernamePassword(USER.encode(), PASSWORD.encode()),
                ConnectionInfo(),
                IDeliverySession,
            )
        )
        self.assertEqual(avatar.user, USER)
        self.failureResultOf(
            portal.login(
                UsernamePassword(USER.encode(), b"wrong"), ConnectionInfo(), IDeliverySession
            ),
            credError.UnauthorizedLogin,
        )

    def test_scram_key_checker(self) -> None:
        keys = scramKeys(PASSWORD, b"salt-salt-salt-1", 4096)
        checker = ScramKeyChecker({"I\u00adX": keys})  # stored under the SASLprepped name
        self.assertIs(checker.scramKeys("IX", "SCRAM-SHA-256"), keys)
        self.assertIsNone(checker.scramKeys("IX", "SCRAM-SHA-1"))
        self.assertIsNone(checker.scramKeys("nobody", "SCRAM-SHA-256"))
        self.assertEqual(checker.credentialInterfaces, (IScramCredentials,))
        mechanism = ScramSHA256()
        client = ScramClient("IX", PASSWORD)
        mechanism.start(client.first())
        step = mechanism.respond(client.final(mechanism.keysFound(keys.salt, keys.iterations).data))
        self.assertEqual(self.successResultOf(checker.requestAvatarId(step.credentials)), "IX")
        mechanism = ScramSHA256()
        client = ScramClient("IX", "wrong")
        mechanism.start(client.first())
        step = mechanism.respond(client.final(mechanism.keysFound(keys.salt, keys.iterations).data))
        self.failureResultOf(checker.requestAvatarId(step.credentials), credError.UnauthorizedLogin)
