"""
Tests for :mod:`txsmtp.tlspolicy.mtasts`.

The fetches are real: DNS from the test DNS server (:mod:`tests.dnsserver`)
over UDP, the policy from a twisted.web HTTPS server on 127.0.0.1 with a
certificate from the test CA (:mod:`tests.certs`); the client trusts only
that CA.  The parsing and matching are tested as the pure functions they are.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor, ssl, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server

from tests.certs import certificates, serverCertificate
from tests.dnsserver import SERVFAIL, startDNSServer
from txsmtp.tls import loadCertificateOptions
from txsmtp.tlspolicy.mtasts import (
    MAX_AGE_LIMIT,
    MTASTS,
    Policy,
    PolicyError,
    parsePolicy,
    parseRecord,
    selectMX,
)

_REACTOR: Any = reactor
PATH = b"/.well-known/mta-sts.txt"
DOMAIN = "example.com"
HOST = "mta-sts.example.com"
ENFORCE = (
    b"version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.mx.example.net\nmax_age: 86400\n"
)

# (status, headers, body) or a callable rendering the request.
Answer = Any


class _PolicyResource(resource.Resource):
    isLeaf = True

    def __init__(self, site: PolicyServer) -> None:
        super().__init__()
        self.site = site

    def render_GET(self, request: Any) -> Any:
        host = (request.getHeader("host") or "").lower()
        self.site.requests.append((host, request.path))
        answer = self.site.answers.get((host, request.path))
        if answer is None:
            request.setResponseCode(404)
            request.setHeader("content-type", "text/plain")
            return b"not here\n"
        if callable(answer):
            return answer(request)
        status, headers, body = answer
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class _Site(server.Site):
    def __init__(self, policyServer: PolicyServer) -> None:
        super().__init__(_PolicyResource(policyServer))
        self.policyServer = policyServer

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.policyServer.connections.append(protocol)
        lost = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            self.policyServer.connections.remove(protocol)
            lost(reason)
            if not self.policyServer.connections:
                closed, self.policyServer.closed = self.policyServer.closed, []
                for d in closed:
                    d.callback(None)

        protocol.connectionLost = connectionLost
        return protocol

    def log(self, request: Any) -> None:
        pass  # no access log lines in the test log


class PolicyServer:
    """
    A real HTTPS server (on 127.0.0.1 and a port the kernel picks, unless
    told): ``answers`` maps (Host, path) to what to send.
    """

    def __init__(
        self, testCase: unittest.TestCase, chain: str, key: str, port: int = 0, interface: str = "127.0.0.1"
    ) -> None:
        self.answers: dict[tuple[str, bytes], Answer] = {}
        self.requests: list[tuple[str, bytes]] = []
        self.connections: list[Any] = []
        self.closed: list[defer.Deferred[None]] = []
        self.listening = _REACTOR.listenSSL(
            port, _Site(self), loadCertificateOptions(chain, key), interface=interface
        )
        self.port = self.listening.getHost().port
        testCase.addCleanup(self.stop)

    def serve(self, body: bytes, host: str = HOST, contentType: str = "text/plain") -> None:
        self.answers[(host, PATH)] = (200, {"content-type": contentType}, body)

    def stop(self) -> defer.Deferred[Any]:
        waits = [defer.maybeDeferred(self.listening.stopListening)]
        if self.connections:
            d: defer.Deferred[None] = defer.Deferred()
            self.closed.append(d)
            for protocol in list(self.connections):
                # (twisted.web's protocol is a proxy for the channel)
                getattr(protocol, "_channel", protocol).transport.abortConnection()
            waits.append(d)
        return defer.gatherResults(waits)


def _trustRoot() -> Any:
    with open(certificates().ca, "rb") as f:
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(f.read())])


class _Fixture(unittest.TestCase):
    """A DNS server, an HTTPS server, an MTASTS client, and the log lines."""

    chain: tuple[str, str] | None = None

    def setUp(self) -> None:
        if _Fixture.chain is None:
            _Fixture.chain = serverCertificate((HOST,))
        self.zones: dict[str, Any] = {
            "_mta-sts.example.com": {"TXT": ["v=STSv1; id=20240101"]},
            HOST: {"A": ["127.0.0.1"]},
        }
        self.dns = startDNSServer(self, self.zones)
        self.server = PolicyServer(self, *self.chain)
        self.clock = task.Clock()
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace", "").startswith("txsmtp.tlspolicy"):
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def client(self, port: int | None = None, **kwargs: Any) -> MTASTS:
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("trustRoot", _trustRoot())
        return MTASTS(self.dns.resolver(), _REACTOR, port=port or self.server.port, **kwargs)

    def policyFor(self, client: MTASTS, domain: str = DOMAIN) -> defer.Deferred[Policy | None]:
        return defer.Deferred.fromCoroutine(client.policyFor(domain))

    def setTXT(self, *records: str) -> None:
        self.zones["_mta-sts.example.com"]["TXT"] = list(records)

    def logged(self, word: str) -> list[str]:
        return [line for line in self.lines if word in line]


class FetchTests(_Fixture):
    @defer.inlineCallbacks
    def test_enforce(self) -> Any:
        """An enforce policy is fetched over HTTPS (Host mta-sts.<domain>) and parsed."""
        self.server.serve(ENFORCE)
        policy = yield self.policyFor(self.client())
        self.assertEqual(
            policy, Policy("enforce", ("mx1.example.com", "*.mx.example.net"), 86400, "20240101")
        )
        self.assertEqual(self.server.requests, [(HOST, PATH)])
        self.assertIn(("mta-sts.example.com", "A"), self.dns.queries)
        [change] = self.logged("policy id=20240101")
        self.assertIn("mode=enforce", change)
        self.assertIn("was: no policy", change)

    @defer.inlineCallbacks
    def test_testing(self) -> Any:
        """A testing policy, CRLF line ends."""
        self.server.serve(
            b"version: STSv1\r\nmode: testing\r\nmx: mx.example.com\r\nmax_age: 600\r\n"
        )
        policy = yield self.policyFor(self.client())
        self.assertEqual(policy, Policy("testing", ("mx.example.com",), 600, "20240101"))

    @defer.inlineCallbacks
    def test_none(self) -> Any:
        """A policy with mode none is returned as such (the domain withdrew its policy)."""
        self.server.serve(b"version: STSv1\nmode: none\nmax_age: 86400\n")
        policy = yield self.policyFor(self.client())
        self.assertEqual(policy, Policy("none", (), 86400, "20240101"))
        self.assertEqual(
            selectMX(policy, ["a.example", "b.example"]).usable, ("a.example", "b.example")
        )

    @defer.inlineCallbacks
    def test_noTXT(self) -> Any:
        """No TXT record: no policy, and no HTTPS request."""
        self.setTXT("v=spf1 -all")
        self.server.serve(ENFORCE)
        policy = yield self.policyFor(self.client())
        self.assertIsNone(policy)
        self.assertEqual(self.server.requests, [])

    @defer.inlineCallbacks
    def test_nxdomain(self) -> Any:
        """No _mta-sts name at all: no policy."""
        policy = yield self.policyFor(self.client(), "nothing.example")
        self.assertIsNone(policy)
        self.assertEqual(self.server.requests, [])

    @defer.inlineCallbacks
    def test_severalRecords(self) -> Any:
        """Two v=STSv1 records: treated as none (RFC 8461 §3.1), and nothing is fetched."""
        self.setTXT("v=STSv1; id=1", "v=STSv1; id=2", "v=spf1 -all")
        self.server.serve(ENFORCE)
        policy = yield self.policyFor(self.client())
        self.assertIsNone(policy)
        self.assertEqual(self.server.requests, [])
        self.assertTrue(self.logged("2 v=STSv1 TXT records"))

    @defer.inlineCallbacks
    def test_invalidRecord(self) -> Any:
        """A record whose id is not 1-32 letters and digits: no policy."""
        self.setTXT("v=STSv1; id=not-valid!")
        self.server.serve(ENFORCE)
        self.assertIsNone((yield self.policyFor(self.client())))
        self.assertEqual(self.server.requests, [])

    @defer.inlineCallbacks
    def test_multipleStrings(self) -> Any:
        """A record cut into several strings is joined without spaces (§3.1)."""
        self.zones["_mta-sts.example.com"]["TXT"] = [("v=STSv1; id=2024", "0101")]
        self.server.serve(ENFORCE)
        policy = yield self.policyFor(self.client())
        self.assertEqual(policy.id, "20240101")

    @defer.inlineCallbacks
    def assertFails(self, client: MTASTS, resultType: str, detail: str) -> Any:
        policy = yield self.policyFor(client)
        self.assertIsNone(policy)
        [line] = self.logged("result=")
        self.assertIn(f"result={resultType} ", line)
        self.assertIn(detail, line)
        self.assertIn("mta-sts domain=example.com", line)

    @defer.inlineCallbacks
    def test_wrongName(self) -> Any:
        """A certificate (from the trusted CA) for another name: sts-webpki-invalid."""
        c = certificates()
        wrong = PolicyServer(self, c.chain, c.key)
        wrong.serve(ENFORCE)
        yield self.assertFails(self.client(wrong.port), "sts-webpki-invalid", "TLS")
        self.assertEqual(wrong.requests, [])

    @defer.inlineCallbacks
    def test_unknownCA(self) -> Any:
        """A certificate for the right name from a CA not trusted: sts-webpki-invalid."""
        rogue = PolicyServer(self, *serverCertificate((HOST,), trusted=False))
        rogue.serve(ENFORCE)
        yield self.assertFails(self.client(rogue.port), "sts-webpki-invalid", "TLS")
        self.assertEqual(rogue.requests, [])

    @defer.inlineCallbacks
    def test_platformTrustRejectsTestCA(self) -> Any:
        """Without trustRoot, the platform's roots are used: the test CA is not one of them."""
        self.server.serve(ENFORCE)
        yield self.assertFails(self.client(trustRoot=None), "sts-webpki-invalid", "TLS")

    @defer.inlineCallbacks
    def test_redirectNotFollowed(self) -> Any:
        """A 301 is not followed (§3.3), even to a policy that would be valid."""
        self.server.answers[(HOST, PATH)] = (
            301,
            {"location": "https://mta-sts.example.com/p"},
            b"",
        )
        self.server.answers[(HOST, b"/p")] = (200, {"content-type": "text/plain"}, ENFORCE)
        yield self.assertFails(self.client(), "sts-policy-fetch-error", "HTTP status 301")
        self.assertEqual(self.server.requests, [(HOST, PATH)])

    @defer.inlineCallbacks
    def test_notFound(self) -> Any:
        """404: sts-policy-fetch-error."""
        yield self.assertFails(self.client(), "sts-policy-fetch-error", "HTTP status 404")

    @defer.inlineCallbacks
    def test_wrongMediaType(self) -> Any:
        """A policy served as text/html is refused (§3.2)."""
        self.server.serve(ENFORCE, contentType="text/html")
        yield self.assertFails(self.client(), "sts-policy-invalid", "'text/html'")

    @defer.inlineCallbacks
    def test_mediaTypeParameters(self) -> Any:
        """text/plain with a charset parameter is text/plain."""
        self.server.serve(ENFORCE, contentType="Text/Plain; charset=utf-8")
        policy = yield self.policyFor(self.client())
        self.assertEqual(policy.mode, "enforce")

    @defer.inlineCallbacks
    def test_oversizedWithLength(self) -> Any:
        """A body over 64 KiB announced by Content-Length is refused."""
        self.server.serve(ENFORCE + b"#" * (64 * 1024))
        yield self.assertFails(self.client(), "sts-policy-fetch-error", "larger than 65536")

    @defer.inlineCallbacks
    def test_oversizedChunked(self) -> Any:
        """A chunked body is read only up to 64 KiB, then the fetch is aborted."""

        def render(request: Any) -> Any:
            request.setHeader("content-type", "text/plain")
            request.write(ENFORCE)
            for _ in range(20):
                request.write(b"x" * 4096)
            request.finish()
            return server.NOT_DONE_YET

        self.server.answers[(HOST, PATH)] = render
        yield self.assertFails(self.client(), "sts-policy-fetch-error", "larger than 65536")

    @defer.inlineCallbacks
    def test_malformed(self) -> Any:
        """An invalid policy is a failed fetch: sts-policy-invalid."""
        self.server.serve(b"version: STSv1\nmode: enforce\nmax_age: 86400\n")
        yield self.assertFails(self.client(), "sts-policy-invalid", "no mx")

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """A server that never finishes its answer: the fetch ends at the timeout."""
        pending: list[Any] = []

        def render(request: Any) -> Any:
            request.setHeader("content-type", "text/plain")
            request.write(b"version: STSv1\n")
            pending.append(request)
            return server.NOT_DONE_YET

        self.server.answers[(HOST, PATH)] = render
        yield self.assertFails(self.client(timeout=1.0), "sts-policy-fetch-error", "within 1 s")
        self.assertEqual(len(pending), 1)

    @defer.inlineCallbacks
    def test_noAddress(self) -> Any:
        """mta-sts.<domain> without an address: sts-policy-fetch-error."""
        del self.zones[HOST]
        yield self.assertFails(self.client(), "sts-policy-fetch-error", "mta-sts.example.com")


class CacheTests(_Fixture):
    @defer.inlineCallbacks
    def test_sameIdNoFetch(self) -> Any:
        """The TXT id of the cached policy: no second request."""
        self.server.serve(ENFORCE)
        client = self.client()
        first = yield self.policyFor(client)
        second = yield self.policyFor(client)
        self.assertEqual(first, second)
        self.assertEqual(len(self.server.requests), 1)
        self.assertEqual(len(self.logged("policy id=")), 1)

    @defer.inlineCallbacks
    def test_concurrentCallsShareOneFetch(self) -> Any:
        """Two lookups at once for one domain make one request."""
        self.server.serve(ENFORCE)
        client = self.client()
        results = yield defer.gatherResults(
            [self.policyFor(client), self.policyFor(client, "Example.COM.")]
        )
        self.assertEqual(results[0], results[1])
        self.assertEqual(len(self.server.requests), 1)

    @defer.inlineCallbacks
    def test_idChangeRefetches(self) -> Any:
        """A new TXT id: the policy is fetched again and replaces the old one."""
        self.server.serve(ENFORCE)
        client = self.client()
        yield self.policyFor(client)
        self.setTXT("v=STSv1; id=20240202")
        self.server.serve(b"version: STSv1\nmode: testing\nmx: mx9.example.com\nmax_age: 600\n")
        policy = yield self.policyFor(client)
        self.assertEqual(policy, Policy("testing", ("mx9.example.com",), 600, "20240202"))
        self.assertEqual(len(self.server.requests), 2)
        [change] = self.logged("policy id=20240202")
        self.assertIn("was: id=20240101 mode=enforce", change)

    @defer.inlineCallbacks
    def test_failedRefetchKeepsCached(self) -> Any:
        """A new id whose fetch fails: the cached policy is still used (§3.3)."""
        self.server.serve(ENFORCE)
        client = self.client()
        old = yield self.policyFor(client)
        self.setTXT("v=STSv1; id=20240202")
        del self.server.answers[(HOST, PATH)]
        policy = yield self.policyFor(client)
        self.assertEqual(policy, old)
        [line] = self.logged("result=sts-policy-fetch-error")
        self.assertIn("cached policy id=20240101 mode=enforce used", line)
        # The id still differs from the cached one: the next lookup tries again.
        yield self.policyFor(client)
        self.assertEqual(len(self.server.requests), 3)

    @defer.inlineCallbacks
    def test_noTXTKeepsCached(self) -> Any:
        """The TXT record gone: the unexpired cached policy still applies (§5.1)."""
        self.server.serve(ENFORCE)
        client = self.client()
        old = yield self.policyFor(client)
        del self.zones["_mta-sts.example.com"]
        self.assertEqual((yield self.policyFor(client)), old)

    @defer.inlineCallbacks
    def test_dnsFailureKeepsCached(self) -> Any:
        """A DNS failure (SERVFAIL) for the TXT record: the cached policy is used, logged."""
        self.server.serve(ENFORCE)
        client = self.client()
        old = yield self.policyFor(client)
        self.zones["_mta-sts.example.com"] = SERVFAIL
        self.assertEqual((yield self.policyFor(client)), old)
        [line] = self.logged("TXT lookup failed")
        self.assertIn("cached policy id=20240101 mode=enforce used", line)
        self.assertEqual(len(self.server.requests), 1)

    @defer.inlineCallbacks
    def test_dnsFailureWithoutCache(self) -> Any:
        """A DNS failure and nothing cached: no policy."""
        self.zones["_mta-sts.example.com"] = SERVFAIL
        self.assertIsNone((yield self.policyFor(self.client())))

    @defer.inlineCallbacks
    def test_maxAgeExpiry(self) -> Any:
        """A policy older than max_age is dropped: fetched again, or gone without TXT."""
        self.server.serve(b"version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 100\n")
        client = self.client()
        yield self.policyFor(client)
        self.clock.advance(99)
        yield self.policyFor(client)
        self.assertEqual(len(self.server.requests), 1)
        self.clock.advance(1)
        self.assertIsNone(client.cached(DOMAIN))
        yield self.policyFor(client)
        self.assertEqual(len(self.server.requests), 2)
        self.assertTrue(self.logged("expired (max_age 100 s)"))
        self.clock.advance(100)
        del self.zones["_mta-sts.example.com"]
        self.assertIsNone((yield self.policyFor(client)))

    @defer.inlineCallbacks
    def test_persisted(self) -> Any:
        """With cachePath, a new client (a restart) has the policies: no fetch."""
        path = os.path.abspath(self.mktemp())
        self.server.serve(ENFORCE)
        client = self.client(cachePath=path)
        policy = yield self.policyFor(client)
        yield client.saved()
        with open(path) as f:
            saved = json.load(f)
        self.assertEqual(saved["policies"]["example.com"]["id"], "20240101")
        self.assertFalse(os.path.exists(path + ".tmp"))
        restarted = self.client(cachePath=path)
        self.assertEqual(restarted.cached(DOMAIN), policy)
        self.assertEqual((yield self.policyFor(restarted)), policy)
        self.assertEqual(len(self.server.requests), 1)

    def test_unreadableCacheFile(self) -> None:
        """A cache file that is not the expected JSON is an empty cache (logged)."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("{not json")
        self.assertIsNone(self.client(cachePath=path).cached(DOMAIN))
        self.assertTrue(self.logged("not read"))


class RecordTests(unittest.TestCase):
    def test_valid(self) -> None:
        """The id of v=STSv1 records, with white space, a trailing ; and extensions."""
        self.assertEqual(parseRecord(b"v=STSv1; id=20160831085700Z;"), "20160831085700Z")
        self.assertEqual(parseRecord("v=STSv1;id=abc"), "abc")
        self.assertEqual(parseRecord("v=STSv1 ; id=a1 ; ext_1=x"), "a1")
        self.assertEqual(parseRecord("v=STSv1; id=" + "a" * 32), "a" * 32)

    def test_invalid(self) -> None:
        """No id, a bad id, another version, a field that is not name=value."""
        for text in [
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=" + "a" * 33,
            "v=STSv1; id=a-b",
            "v=STSv2; id=1",
            "v=STSv1; id=1; junk",
            "id=1; v=STSv1",
        ]:
            with self.assertRaises(ValueError, msg=text):
                parseRecord(text)
        with self.assertRaises(ValueError):
            parseRecord("v=STSv1; id=1\u00e9".encode())


class PolicyParseTests(unittest.TestCase):
    def test_keysAnyOrderUnknownIgnored(self) -> None:
        """Keys in any order, white space after the colon, unknown keys ignored."""
        body = b"mx: MX1.Example.COM.\nfoo: bar\nmax_age:  0\nversion: STSv1\nmode:\ttesting\n"
        self.assertEqual(parsePolicy(body, "x"), Policy("testing", ("mx1.example.com",), 0, "x"))

    def test_lineEnds(self) -> None:
        """LF and CRLF, mixed, with or without a final line end."""
        body = b"version: STSv1\r\nmode: enforce\nmx: a.example\r\nmax_age: 5"
        self.assertEqual(parsePolicy(body, "x"), Policy("enforce", ("a.example",), 5, "x"))

    def test_maxAgeBounds(self) -> None:
        """max_age is 0 to 31557600 in digits."""
        base = b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: "
        self.assertEqual(parsePolicy(base + str(MAX_AGE_LIMIT).encode(), "x").maxAge, MAX_AGE_LIMIT)
        for bad in [
            str(MAX_AGE_LIMIT + 1).encode(),
            b"-1",
            b"1e3",
            b"",
            b"12345678901",
            "\u0661".encode(),
        ]:
            with self.assertRaises(PolicyError, msg=bad) as caught:
                parsePolicy(base + bad, "x")
            self.assertEqual(caught.exception.resultType, "sts-policy-invalid")

    def test_invalid(self) -> None:
        """Wrong or missing version, mode, mx; a line without a colon; not UTF-8."""
        good = {"version": b"STSv1", "mode": b"enforce", "mx": b"a.example", "max_age": b"60"}
        for key, value in [
            ("version", b"STSv2"),
            ("version", None),
            ("mode", b"Enforce"),
            ("mode", None),
            ("mx", None),
            ("mx", b"*.*.example"),
            ("mx", b"a..example"),
            ("mx", b"-a.example"),
            ("max_age", None),
        ]:
            fields = dict(good)
            if value is None:
                del fields[key]
            else:
                fields[key] = value
            body = b"".join(k.encode() + b": " + v + b"\n" for k, v in fields.items())
            with self.assertRaises(PolicyError, msg=(key, value)):
                parsePolicy(body, "x")
        for body in [
            b"version: STSv1\nmode enforce\n",
            b"version: STSv1\n\xff\n",
            b" mode: none\n",
        ]:
            with self.assertRaises(PolicyError, msg=body):
                parsePolicy(body, "x")

    def test_firstValueCounts(self) -> None:
        """A repeated key other than mx: the first value counts; every mx is kept."""
        body = b"version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmx: b.example\nmax_age: 1\n"
        self.assertEqual(
            parsePolicy(body, "x"), Policy("testing", ("a.example", "b.example"), 1, "x")
        )


class MatchTests(unittest.TestCase):
    policy = Policy("enforce", ("mail.example.com", "*.example.net"), 60, "1")

    def test_exact(self) -> None:
        """An exact pattern matches the name, whatever the case, with or without a trailing dot."""
        for host in ["mail.example.com", "MAIL.Example.Com", "mail.example.com."]:
            self.assertTrue(self.policy.matches(host), host)
        for host in ["example.com", "x.mail.example.com", "mail.example.co"]:
            self.assertFalse(self.policy.matches(host), host)

    def test_wildcard(self) -> None:
        """A wildcard stands for exactly one whole left-most label (RFC 8461 §4.1)."""
        self.assertTrue(self.policy.matches("mx1.example.net"))
        self.assertTrue(self.policy.matches("MX1.EXAMPLE.NET."))
        self.assertFalse(self.policy.matches("example.net"))
        self.assertFalse(self.policy.matches("a.b.example.net"))
        self.assertFalse(self.policy.matches(".example.net"))
        self.assertFalse(self.policy.matches("xexample.net"))

    def test_patternTrailingDot(self) -> None:
        """A pattern written with a trailing dot or capitals matches the same."""
        self.assertTrue(Policy("enforce", ("MX.Example.ORG.",), 1, "1").matches("mx.example.org"))

    def test_idna(self) -> None:
        """A host name with U-labels matches the pattern in A-labels."""
        policy = Policy("enforce", ("*.xn--bcher-kva.example",), 1, "1")
        self.assertTrue(policy.matches("mx.b\u00fccher.example"))


class SelectMXTests(unittest.TestCase):
    mxs = ["mx1.example.com", "backup.other.example", "mx2.example.com"]

    def test_enforce(self) -> None:
        """enforce: only the matched hosts, TLS required, the others logged as validation-failure."""
        policy = Policy("enforce", ("*.example.com",), 60, "7")
        decision = selectMX(policy, self.mxs, "example.com")
        self.assertEqual(decision.usable, ("mx1.example.com", "mx2.example.com"))
        self.assertEqual(decision.mismatched, ("backup.other.example",))
        self.assertTrue(decision.requireTLS)
        [line] = decision.logLines
        self.assertIn("result=validation-failure", line)
        self.assertIn("backup.other.example", line)
        self.assertIn("domain=example.com", line)

    def test_enforceNothingMatches(self) -> None:
        """enforce with no host matching: nothing usable (the mail waits for a new policy)."""
        decision = selectMX(Policy("enforce", ("mx.elsewhere.example",), 60, "7"), self.mxs)
        self.assertEqual(decision.usable, ())
        self.assertEqual(len(decision.logLines), 3)

    def test_testing(self) -> None:
        """testing: every host usable, TLS not required, the mismatch logged with mode=testing."""
        decision = selectMX(Policy("testing", ("*.example.com",), 60, "7"), self.mxs, "example.com")
        self.assertEqual(decision.usable, tuple(self.mxs))
        self.assertFalse(decision.requireTLS)
        [line] = decision.logLines
        self.assertIn("mode=testing", line)

    def test_noneAndNoPolicy(self) -> None:
        """mode none, or no policy: every host, nothing to log."""
        for policy in [None, Policy("none", (), 60, "7")]:
            decision = selectMX(policy, self.mxs)
            self.assertEqual(
                (decision.usable, decision.logLines, decision.requireTLS),
                (tuple(self.mxs), (), False),
            )
