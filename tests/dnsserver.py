"""
A small authoritative DNS server for tests: :func:`startDNSServer` serves
zones given as Python data on 127.0.0.1, UDP and TCP on one ephemeral port,
with :mod:`twisted.names`.  Point a resolver at it (:meth:`RunningDNS.resolver`,
or ``--dns-server 127.0.0.1:PORT``) and MX lookups go over the wire as they
would in production.

A zone maps a name to its records::

    zones = {
        "example.com": {"MX": [(10, "mx1.example.com"), (20, "mx2.example.com")]},
        "mx1.example.com": {"A": ["127.0.0.1"]},
        "mx2.example.com": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
        "nullmx.example": {"MX": [(0, ".")]},           # RFC 7505: no mail at all
        "implicit.example": {"A": ["127.0.0.1"]},       # no MX: the implicit MX
        "alias.example": {"CNAME": "example.com"},
        "broken.example": SERVFAIL,                     # every query: SERVFAIL
        "example.org": {"TXT": ["v=spf1 -all", ("two ", "strings")]},
        "1.0.0.127.in-addr.arpa": {"PTR": ["mx1.example.com"]},
    }

A name absent from the zones is NXDOMAIN; a name present without records
of the type asked is NODATA (NOERROR, no answer).  Names are compared
without regard to case.  The server reads the zones dict at each query, so
a test may change it (add, replace or remove names) while the server runs.  :attr:`RunningDNS.queries` records every query as
``(name, type name)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.names import client, dns, server
from twisted.names.common import ResolverBase
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from twisted.trial import unittest

__all__ = ["SERVFAIL", "RunningDNS", "startDNSServer"]

#: A zone value: every query for the name is answered SERVFAIL.
SERVFAIL = "SERVFAIL"

_REACTOR: Any = reactor
_TTL = 60


class _ServerFailure(Exception):
    """Raised by the zone resolver for a name marked :data:`SERVFAIL`."""


def _records(rrType: str, value: Any) -> list[Any]:
    if rrType == "MX":
        return [dns.Record_MX(pref, name.encode("ascii"), ttl=_TTL) for pref, name in value]
    if rrType == "A":
        return [dns.Record_A(address, ttl=_TTL) for address in value]
    if rrType == "AAAA":
        return [dns.Record_AAAA(address, ttl=_TTL) for address in value]
    if rrType == "CNAME":
        return [dns.Record_CNAME(value.encode("ascii"), ttl=_TTL)]
    if rrType == "TXT":
        # One record per item: a str (cut into 255-octet strings) or a
        # tuple of its character-strings.
        return [dns.Record_TXT(*_txtStrings(item), ttl=_TTL) for item in value]
    if rrType == "PTR":
        return [dns.Record_PTR(name.encode("ascii"), ttl=_TTL) for name in value]
    raise ValueError(f"unsupported record type in a test zone: {rrType}")


def _txtStrings(item: Any) -> list[bytes]:
    if isinstance(item, tuple):
        return [s.encode("utf-8") if isinstance(s, str) else s for s in item]
    data = item.encode("utf-8") if isinstance(item, str) else item
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class _ZoneResolver(ResolverBase):
    def __init__(self, zones: dict[str, Any], queries: list[tuple[str, str]], chaseCNAME: bool = False) -> None:
        super().__init__()
        # The caller's dict itself, read at each query: a test may change
        # the zones while the server runs.
        self.zones = zones
        self.queries = queries
        self.chaseCNAME = chaseCNAME

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        text = name.decode("ascii").lower().rstrip(".")
        self.queries.append((text, dns.QUERY_TYPES.get(type, str(type))))
        entry = next(
            (records for key, records in self.zones.items() if key.lower().rstrip(".") == text),
            None,
        )
        if entry is None:
            return defer.fail(DNSNameError(text))
        if entry == SERVFAIL:
            return defer.fail(_ServerFailure(text))
        answers = []
        owner, seen = name, {text}
        while True:
            target = None
            for rrType, value in entry.items():
                for record in _records(rrType, value):
                    if record.TYPE == type or record.TYPE == dns.CNAME:
                        answers.append(dns.RRHeader(owner, record.TYPE, dns.IN, _TTL, record, auth=True))
                    if record.TYPE == dns.CNAME:
                        target = value.lower().rstrip(".")
            # chaseCNAME: the target's records too when it is in the zones
            # (RFC 1034 §4.3.2), as an authoritative server for both does.
            if not self.chaseCNAME or type == dns.CNAME or target is None or target in seen:
                break
            entry = self.zones.get(target)
            if entry is None or entry == SERVFAIL:
                break
            owner = target.encode("ascii")
            seen.add(target)
        return defer.succeed((answers, [], []))


class _Factory(server.DNSServerFactory):
    def gotResolverError(self, failure: Failure, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(_ServerFailure):
            # SERVFAIL on purpose: no error logged.
            self.sendReply(protocol, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)
            return
        super().gotResolverError(failure, protocol, message, address)


@dataclass
class RunningDNS:
    """A DNS server started by :func:`startDNSServer`."""

    port: int
    zones: dict[str, Any]
    queries: list[tuple[str, str]] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``: what ``dnsServer=`` takes."""
        return ("127.0.0.1", self.port)

    def resolver(self, testCase: unittest.TestCase | None = None) -> client.Resolver:
        """A :class:`twisted.names.client.Resolver` asking this server only, with short timeouts."""
        return client.Resolver(servers=[self.address], reactor=_REACTOR, timeout=(2, 5))


def startDNSServer(testCase: unittest.TestCase, zones: dict[str, Any], chaseCNAME: bool = False) -> RunningDNS:
    """
    Serve ``zones`` on 127.0.0.1 (UDP and TCP, one port found free); the
    server stops in the test's cleanup.

    With ``chaseCNAME``, the answer for a name with a CNAME also holds the
    records of the type asked of its target (and of the target's target),
    when the target is in ``zones``; without, only the CNAME record.
    """
    running = RunningDNS(0, zones)
    factory = _Factory(authorities=[_ZoneResolver(zones, running.queries, chaseCNAME)], verbose=0)
    for _ in range(10):
        udp = _REACTOR.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = _REACTOR.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            continue
        testCase.addCleanup(udp.stopListening)
        testCase.addCleanup(tcp.stopListening)
        running.port = port
        return running
    raise AssertionError("no port free for both UDP and TCP on 127.0.0.1")
