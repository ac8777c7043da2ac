"""
DANE for SMTP (RFC 7672): TLSA parsing and certificate matching
(:mod:`txsmtp.tlspolicy.dane`), the DANE TLS client creator in real
handshakes on loopback (:mod:`txsmtp.tlspolicy.daneclient`), and the secure
DNS stub (:mod:`txsmtp.tlspolicy.securedns`) against a real validating
unbound in front of nsd serving signed, unsigned and broken zones
(:mod:`tests.unboundpeer`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.names import dns
from twisted.trial import unittest

from tests.certs import certificates
from tests.unboundpeer import Zone, startUnbound
from txsmtp.client.options import ClientOptions, TLSPolicy
from txsmtp.mailauth.dnsquery import DNSTemporaryError
from txsmtp.tlspolicy.dane import (
    TLSA,
    DANEVerificationError,
    TLSARecord,
    TLSASet,
    Usage,
    hostAddresses,
    lookupDANE,
    tlsaName,
    tlsaRecords,
    verifyChain,
)
from txsmtp.tlspolicy.daneclient import DANEClientCreator
from txsmtp.tlspolicy.securedns import SecureResolver, isLoopback

_REACTOR: Any = reactor


def _pems(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def _chain() -> list[x509.Certificate]:
    """The test server's chain: leaf (localhost) then intermediate."""
    return _pems(certificates().chain)


def _root() -> x509.Certificate:
    return _pems(certificates().ca)[0]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _record(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> TLSARecord:
    selected = _der(cert) if selector == 0 else _spki(cert)
    data = {0: selected, 1: hashlib.sha256(selected).digest(), 2: hashlib.sha512(selected).digest()}[mtype]
    return TLSARecord(usage, selector, mtype, data)


class TLSARecordTests(unittest.TestCase):
    def test_fromRdata(self) -> None:
        """The three octets then the association data (RFC 6698 §2.1)."""
        digest = bytes(range(32))
        record = TLSARecord.fromRdata(b"\x03\x01\x01" + digest)
        self.assertEqual((record.usage, record.selector, record.matchingType, record.data), (3, 1, 1, digest))
        self.assertTrue(record.usable)
        self.assertEqual(str(record), "3 1 1 " + digest.hex())

    def test_shortRdata(self) -> None:
        self.assertRaises(ValueError, TLSARecord.fromRdata, b"\x03\x01")

    def test_usable(self) -> None:
        """Only DANE-TA(2)/DANE-EE(3), known selectors and matching types, right digest sizes (RFC 7672 §3.1)."""
        sha256, sha512 = b"x" * 32, b"x" * 64
        self.assertTrue(TLSARecord(2, 0, 1, sha256).usable)
        self.assertTrue(TLSARecord(3, 1, 2, sha512).usable)
        self.assertTrue(TLSARecord(3, 0, 0, b"der").usable)
        self.assertFalse(TLSARecord(0, 0, 1, sha256).usable, "PKIX-TA")
        self.assertFalse(TLSARecord(1, 1, 1, sha256).usable, "PKIX-EE")
        self.assertFalse(TLSARecord(4, 1, 1, sha256).usable, "unknown usage")
        self.assertFalse(TLSARecord(3, 2, 1, sha256).usable, "unknown selector")
        self.assertFalse(TLSARecord(3, 1, 3, sha256).usable, "unknown matching type")
        self.assertFalse(TLSARecord(3, 1, 1, sha512).usable, "SHA-256 of 64 octets")
        self.assertFalse(TLSARecord(3, 1, 0, b"").usable, "empty full data")

    def test_setWithoutUsableRecords(self) -> None:
        """Secure but all unusable: DANE applies (TLS mandatory) without authentication."""
        found = TLSASet("mx.example", 25, (TLSARecord(1, 1, 1, b"x" * 32),))
        self.assertFalse(found.authenticated)
        self.assertEqual(found.usable, ())
        self.assertEqual(found.names(), ("mx.example",))

    def test_tlsaName(self) -> None:
        self.assertEqual(tlsaName("MX.Example.COM."), "_25._tcp.mx.example.com")
        self.assertEqual(tlsaName("mx.example", 465), "_465._tcp.mx.example")


class MatchingTests(unittest.TestCase):
    """:func:`verifyChain` with the test PKI (leaf for localhost, intermediate, root)."""

    def setUp(self) -> None:
        self.chain = _chain()
        self.leaf, self.intermediate = self.chain

    def test_eeBySPKISHA256(self) -> None:
        record = _record(3, 1, 1, self.leaf)
        self.assertIs(verifyChain([record], self.chain, ["localhost"]), record)

    def test_eeByCertificateSHA512(self) -> None:
        record = _record(3, 0, 2, self.leaf)
        self.assertIs(verifyChain([record], [self.leaf], ["localhost"]), record)

    def test_eeExact(self) -> None:
        record = _record(3, 0, 0, self.leaf)
        self.assertIs(verifyChain([record], [self.leaf], ["localhost"]), record)

    def test_mismatch(self) -> None:
        other = _pems(certificates().otherChain)[0]
        records = [_record(3, 1, 1, other), _record(3, 0, 2, other)]
        self.assertRaises(DANEVerificationError, verifyChain, records, self.chain, ["localhost"])

    def test_eeIgnoresNames(self) -> None:
        """DANE-EE(3): the leaf's names do not matter (RFC 7672 §3.1.1)."""
        record = _record(3, 1, 1, self.leaf)
        self.assertIs(verifyChain([record], self.chain, ["mx.elsewhere.example"]), record)

    def test_eeIgnoresExpiry(self) -> None:
        """DANE-EE(3): nor do its dates."""
        expired = _pems(certificates().expiredChain)
        record = _record(3, 1, 1, expired[0])
        self.assertIs(verifyChain([record], expired, ["localhost"]), record)

    def test_taInChain(self) -> None:
        """DANE-TA(2) on the intermediate the server sends: the leaf chains to it and carries the name."""
        record = _record(2, 0, 1, self.intermediate)
        self.assertIs(verifyChain([record], self.chain, ["localhost"]), record)
        spki = _record(2, 1, 2, self.intermediate)
        self.assertIs(verifyChain([spki], self.chain, ["localhost"]), spki)

    def test_taWrongName(self) -> None:
        """DANE-TA(2) checks the reference names (RFC 7672 §3.2.2)."""
        record = _record(2, 0, 1, self.intermediate)
        error = self.assertRaises(DANEVerificationError, verifyChain, [record], self.chain, ["mx.dane.test"])
        self.assertIn("mx.dane.test", str(error))

    def test_taAnyReferenceName(self) -> None:
        record = _record(2, 0, 1, self.intermediate)
        self.assertIs(verifyChain([record], self.chain, ["mx.dane.test", "localhost"]), record)

    def test_taExpiredLeaf(self) -> None:
        """DANE-TA(2) is X.509 validation up to the anchor: dates count."""
        expired = _pems(certificates().expiredChain)
        record = _record(2, 0, 1, self.intermediate)
        self.assertRaises(DANEVerificationError, verifyChain, [record], expired, ["localhost"])

    def test_taNotPresented(self) -> None:
        """A digest of a CA the server does not send cannot anchor anything; a full certificate can (RFC 7671 §5.2.2)."""
        root = _root()
        self.assertRaises(DANEVerificationError, verifyChain, [_record(2, 0, 1, root)], self.chain, ["localhost"])
        full = _record(2, 0, 0, root)
        self.assertIs(verifyChain([full], self.chain, ["localhost"]), full)

    def test_taOnlyLeafSent(self) -> None:
        """DANE-TA(2) on the intermediate, but the server sent only its leaf."""
        record = _record(2, 0, 1, self.intermediate)
        self.assertRaises(DANEVerificationError, verifyChain, [record], [self.leaf], ["localhost"])

    def test_pkixIgnored(self) -> None:
        """PKIX-EE(1) matching the leaf is still unusable (RFC 7672 §3.1)."""
        record = _record(Usage.PKIX_EE, 1, 1, self.leaf)
        self.assertRaises(DANEVerificationError, verifyChain, [record], self.chain, ["localhost"])

    def test_anyRecordMatches(self) -> None:
        other = _pems(certificates().otherChain)[0]
        good = _record(3, 1, 1, self.leaf)
        self.assertIs(verifyChain([_record(3, 1, 1, other), good], self.chain, ["localhost"]), good)


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _Ping(protocol.Protocol):
    def __init__(self) -> None:
        self.echo: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Any = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        if not self.echo.called:
            self.echo.callback(data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.echo.called:
            self.echo.errback(reason)
        self.reason = reason
        self.lost.callback(None)


class HandshakeTests(unittest.TestCase):
    """:class:`DANEClientCreator` against a Twisted TLS server on loopback."""

    def setUp(self) -> None:
        c = certificates()
        leaf, intermediate = _chain()
        with open(c.key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        from OpenSSL import crypto

        options = ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            certificate=crypto.X509.from_cryptography(leaf),
            extraCertChain=[crypto.X509.from_cryptography(intermediate)],
        )
        factory = protocol.Factory.forProtocol(_Echo)
        factory.connections = []  # type: ignore[attr-defined]
        self.factory = factory
        self.port = _REACTOR.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(self._stop)

    async def _stopAsync(self) -> None:
        await defer.maybeDeferred(self.port.stopListening)
        for connection in self.factory.connections:  # type: ignore[attr-defined]
            await connection.lost

    def _stop(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stopAsync())

    async def _connect(self, creator: DANEClientCreator) -> _Ping:
        endpoint = endpoints.wrapClientTLS(
            creator, endpoints.TCP4ClientEndpoint(_REACTOR, "127.0.0.1", self.port.getHost().port, timeout=5)
        )
        client = _Ping()
        await endpoints.connectProtocol(endpoint, client)
        return client

    async def _exchange(self, creator: DANEClientCreator) -> bytes:
        client = await self._connect(creator)
        try:
            return await client.echo.addTimeout(10, _REACTOR)
        finally:
            if client.transport is not None:
                client.transport.loseConnection()
            await client.lost

    def test_match(self) -> defer.Deferred[None]:
        leaf = _chain()[0]
        creator = DANEClientCreator("mx.dane.test", [_record(3, 1, 1, leaf)])

        async def run() -> None:
            self.assertEqual(await self._exchange(creator), b"ping")

        return defer.Deferred.fromCoroutine(run())

    def test_taMatch(self) -> defer.Deferred[None]:
        """DANE-TA(2) against the chain the server sends, with SNI and reference name localhost."""
        intermediate = _chain()[1]
        creator = DANEClientCreator("localhost", [_record(2, 0, 1, intermediate)])

        async def run() -> None:
            self.assertEqual(await self._exchange(creator), b"ping")

        return defer.Deferred.fromCoroutine(run())

    def test_mismatch(self) -> defer.Deferred[None]:
        """The verify callback aborts the handshake: no data goes through, the error is a TLS one."""
        from OpenSSL import SSL

        other = _pems(certificates().otherChain)[0]
        creator = DANEClientCreator("mx.dane.test", [_record(3, 1, 1, other)])

        async def run() -> None:
            client = await self._connect(creator)
            failure = None
            try:
                await client.echo.addTimeout(10, _REACTOR)
            except Exception as e:
                failure = e
            await client.lost
            self.assertIsInstance(failure, SSL.Error)

        return defer.Deferred.fromCoroutine(run())

    def test_taWrongName(self) -> defer.Deferred[None]:
        from OpenSSL import SSL

        intermediate = _chain()[1]
        creator = DANEClientCreator("mx.dane.test", [_record(2, 0, 1, intermediate)])

        async def run() -> None:
            client = await self._connect(creator)
            with self.assertRaises(SSL.Error):
                await client.echo.addTimeout(10, _REACTOR)
            await client.lost

        return defer.Deferred.fromCoroutine(run())

    def test_unusableOnly(self) -> defer.Deferred[None]:
        """No usable record: TLS without authentication (RFC 7672 §2.2)."""
        other = _pems(certificates().otherChain)[0]
        creator = DANEClientCreator("mx.dane.test", [_record(1, 1, 1, other)])
        self.assertFalse(creator.authenticated)

        async def run() -> None:
            self.assertEqual(await self._exchange(creator), b"ping")

        return defer.Deferred.fromCoroutine(run())

    def test_clientOptions(self) -> None:
        """ClientOptions.tlsCreator replaces the options tlsOptions() would make."""
        creator = DANEClientCreator("mx.dane.test", [])
        self.assertIs(ClientOptions(host="mx.dane.test", tls=TLSPolicy.REQUIRE, tlsCreator=creator).tlsOptions(), creator)
        self.assertIsNot(ClientOptions(host="mx.dane.test").tlsOptions(), None)


class _Stub(protocol.DatagramProtocol):
    """A UDP DNS server that answers wrongly first (id, then question), then rightly, with AD set."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        query = dns.Message()
        query.fromStr(data)
        good = dns.Message(id=query.id, answer=1, recDes=1, recAv=1, authenticData=1)
        good.queries = query.queries
        good.answers = [dns.RRHeader(query.queries[0].name.name, dns.A, dns.IN, 60, dns.Record_A("192.0.2.1"))]
        wrongId = dns.Message(id=(query.id + 1) % 65536, answer=1, authenticData=1)
        wrongId.queries = query.queries
        wrongId.answers = [dns.RRHeader(query.queries[0].name.name, dns.A, dns.IN, 60, dns.Record_A("192.0.2.66"))]
        wrongQuestion = dns.Message(id=query.id, answer=1, authenticData=1)
        wrongQuestion.queries = [dns.Query(b"forged.example", dns.A, dns.IN)]
        wrongQuestion.answers = [dns.RRHeader(b"forged.example", dns.A, dns.IN, 60, dns.Record_A("192.0.2.66"))]
        for message in (wrongId, wrongQuestion, good):
            self.transport.write(message.toStr(), addr)


class _Silent(protocol.DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pass


class SecureResolverTests(unittest.TestCase):
    """The stub's own rules, with small UDP servers on loopback."""

    def test_isLoopback(self) -> None:
        self.assertTrue(isLoopback("127.0.0.1"))
        self.assertTrue(isLoopback("127.0.0.53"))
        self.assertTrue(isLoopback("::1"))
        self.assertFalse(isLoopback("192.0.2.1"))
        self.assertFalse(isLoopback("localhost"))

    def test_nonLoopbackNeverTrusted(self) -> None:
        """An AD bit from a resolver across the network is ignored."""
        resolver = SecureResolver("192.0.2.53")
        message = dns.Message(id=1, answer=1, authenticData=1)
        self.assertFalse(resolver._answer("example.com", dns.A, message).secure)
        self.assertTrue(resolver._warned)

    def test_forgeriesIgnored(self) -> defer.Deferred[None]:
        """Answers with another id or another question are dropped; the AD bit makes it secure."""
        port = _REACTOR.listenUDP(0, _Stub(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = SecureResolver("127.0.0.1", port.getHost().port, timeouts=(5,))

        async def run() -> None:
            answer = await resolver.query("mx.example", dns.A)
            self.assertEqual([r.dottedQuad() for r in answer.records], ["192.0.2.1"])
            self.assertTrue(answer.secure)
            self.assertEqual(answer.canonicalName, "mx.example")

        return defer.Deferred.fromCoroutine(run())

    def test_timeout(self) -> defer.Deferred[None]:
        """No answer after every try: a temporary error."""
        port = _REACTOR.listenUDP(0, _Silent(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = SecureResolver("127.0.0.1", port.getHost().port, timeouts=(0.1, 0.1))

        async def run() -> None:
            with self.assertRaises(DNSTemporaryError):
                await resolver.query("mx.example", dns.A)

        return defer.Deferred.fromCoroutine(run())


def _zones() -> list[Zone]:
    leaf = _chain()[0]
    ee = _record(3, 1, 1, leaf)
    pkix = _record(1, 1, 1, leaf)
    many = [f"_25._tcp.big IN TLSA 3 0 2 {hashlib.sha512(bytes([i])).hexdigest()}" for i in range(12)]
    return [
        Zone(
            "dane.test",
            [
                "@ IN MX 10 mx.dane.test.",
                "mx IN A 127.0.0.1",
                f"_25._tcp.mx IN TLSA {ee}",
                "alias IN CNAME mx.dane.test.",
                "pkix IN A 127.0.0.1",
                f"_25._tcp.pkix IN TLSA {pkix}",
                "notlsa IN A 127.0.0.1",
                "big IN A 127.0.0.1",
                *many,
            ],
        ),
        Zone("insecure.test", ["mx IN A 127.0.0.1", f"_25._tcp.mx IN TLSA {ee}"], signed=False),
        Zone(
            "bogus.test",
            ["mx IN A 127.0.0.1", f"_25._tcp.mx IN TLSA {ee}"],
            corrupt=("_25._tcp.mx", "TLSA"),
        ),
    ]


class _CountingResolver(SecureResolver):
    """Counts the questions that had to be asked again over TCP."""

    tcpQueries = 0

    async def _tcp(self, qname: bytes, rrType: int, timeout: float) -> dns.Message:
        self.tcpQueries += 1
        return await super()._tcp(qname, rrType, timeout)


class ValidatingResolverTests(unittest.TestCase):
    """Against unbound validating nsd's zones (tests/unboundpeer.py)."""

    async def _resolver(self) -> _CountingResolver:
        running = await startUnbound(self, _zones())
        return _CountingResolver(running.host, running.port, timeouts=(2, 3))

    def test_secure(self) -> defer.Deferred[None]:
        """Signed zone: the addresses and the TLSA records are secure, and the records match the server."""

        async def run() -> None:
            resolver = await self._resolver()
            addresses = await hostAddresses(resolver, "mx.dane.test")
            self.assertEqual(addresses.addresses, ("127.0.0.1",))
            self.assertTrue(addresses.secure)
            found = await lookupDANE(resolver, "mx.dane.test")
            assert found is not None
            self.assertEqual(found.host, "mx.dane.test")
            self.assertEqual(found.records, (_record(3, 1, 1, _chain()[0]),))
            self.assertTrue(found.authenticated)
            self.assertEqual(verifyChain(found.usable, _chain(), found.names()), found.records[0])
            # Securely no TLSA records: DANE does not apply.
            self.assertIsNone(await lookupDANE(resolver, "notlsa.dane.test"))
            mx = await resolver.query("dane.test", dns.MX)
            self.assertTrue(mx.secure)
            self.assertEqual([str(r.name) for r in mx.records], ["mx.dane.test"])
            missing = await resolver.query("nothing.dane.test", dns.A)
            self.assertTrue(missing.nxdomain)
            self.assertTrue(missing.secure)

        return defer.Deferred.fromCoroutine(run())

    def test_unusableAndCNAMEAndTCP(self) -> defer.Deferred[None]:
        """PKIX-EE only: DANE applies unauthenticated; a CNAME's target is the base domain; a big RRset comes over TCP."""

        async def run() -> None:
            resolver = await self._resolver()
            pkix = await lookupDANE(resolver, "pkix.dane.test")
            assert pkix is not None
            self.assertFalse(pkix.authenticated)
            self.assertEqual([r.usage for r in pkix.records], [Usage.PKIX_EE])
            alias = await lookupDANE(resolver, "alias.dane.test")
            assert alias is not None
            self.assertEqual(alias.host, "mx.dane.test")
            self.assertEqual(alias.referenceNames, ("mx.dane.test", "alias.dane.test"))
            self.assertEqual(resolver.tcpQueries, 0)
            big = await tlsaRecords(resolver, "big.dane.test")
            assert big is not None
            self.assertEqual(resolver.tcpQueries, 1, "12 SHA-512 records do not fit in 512 octets")
            self.assertEqual(len(big.records), 12)
            self.assertEqual({r.data for r in big.records}, {hashlib.sha512(bytes([i])).digest() for i in range(12)})

        return defer.Deferred.fromCoroutine(run())

    def test_insecure(self) -> defer.Deferred[None]:
        """Unsigned zone: answers come without AD, so DANE does not apply."""

        async def run() -> None:
            resolver = await self._resolver()
            raw = await resolver.query(tlsaName("mx.insecure.test"), TLSA)
            self.assertEqual(len(raw.records), 1)
            self.assertFalse(raw.secure)
            self.assertIsNone(await tlsaRecords(resolver, "mx.insecure.test"))
            addresses = await hostAddresses(resolver, "mx.insecure.test")
            self.assertFalse(addresses.secure)
            self.assertIsNone(await lookupDANE(resolver, "mx.insecure.test"))

        return defer.Deferred.fromCoroutine(run())

    def test_bogus(self) -> defer.Deferred[None]:
        """A record changed after signing: SERVFAIL from the validator, a temporary error (RFC 7672 §2.1.1)."""

        async def run() -> None:
            resolver = await self._resolver()
            addresses = await hostAddresses(resolver, "mx.bogus.test")
            self.assertTrue(addresses.secure)
            with self.assertRaises(DNSTemporaryError) as caught:
                await tlsaRecords(resolver, "mx.bogus.test")
            self.assertIn("SERVFAIL", str(caught.exception))
            with self.assertRaises(DNSTemporaryError):
                await lookupDANE(resolver, "mx.bogus.test")

        return defer.Deferred.fromCoroutine(run())


class SMTPTests(unittest.TestCase):
    """
    The creator through :attr:`ClientOptions.tlsCreator`: txsmtp's client
    delivers to txsmtp's server over STARTTLS authenticated by DANE, and
    fails with a TLS error when the records do not match.
    """

    message = b"Subject: DANE\r\n\r\nauthenticated by TLSA\r\n"

    def _send(self, port: int, creator: DANEClientCreator) -> Any:
        from tests.test_client_interop import LOOPBACK, RCPT, SENDER
        from txsmtp.client.mailer import sendmail

        return sendmail(
            LOOPBACK,
            SENDER,
            [RCPT],
            self.message,
            port=port,
            tls=TLSPolicy.REQUIRE,
            tlsCreator=creator,
            heloName="client.test.invalid",
        )

    def test_delivered(self) -> defer.Deferred[None]:
        from tests.test_client_interop import RCPT, startServer

        server = startServer(self, auth=False)
        creator = DANEClientCreator("mx.dane.test", [_record(3, 1, 1, _chain()[0])])

        async def run() -> None:
            result = await self._send(server.port, creator)
            self.assertEqual(result.recipients[RCPT].code, 250)
            [stored] = server.delivery.messages
            self.assertIsNotNone(stored.envelope.connection.tls)

        return defer.Deferred.fromCoroutine(run())

    def test_mismatch(self) -> defer.Deferred[None]:
        from tests.test_client_interop import startServer
        from txsmtp.client.errors import SMTPTLSError

        server = startServer(self, auth=False)
        other = _pems(certificates().otherChain)[0]
        creator = DANEClientCreator("mx.dane.test", [_record(3, 1, 1, other)])

        async def run() -> None:
            with self.assertRaises(SMTPTLSError) as caught:
                await self._send(server.port, creator)
            # The client words it as a PKIX failure and calls it permanent;
            # for DANE the queue must defer instead (RFC 7672 §2.2).
            self.assertIn("certificate verify failed", str(caught.exception))
            self.assertEqual(server.delivery.messages, [])

        return defer.Deferred.fromCoroutine(run())
