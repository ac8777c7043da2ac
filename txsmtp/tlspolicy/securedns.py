"""
DNS questions whose answers say whether DNSSEC validated them.

DANE (RFC 7672) must tell apart three states of every answer: *secure*
(validated), *insecure* (no DNSSEC on the way) and *bogus* (validation
failed).  txsmtp does not validate DNSSEC itself: like Postfix and Exim it
trusts a validating resolver it can reach without crossing the network,
and reads the resolver's verdict from the AD (Authenticated Data) bit of
the answer:

- the query is sent with the AD bit set, which asks the resolver to report
  it (RFC 6840 §5.7), with recursion desired;
- an answer with AD set is *secure*, but only if the resolver is on a
  loopback address: the AD bit of a resolver across the network could have
  been set by anyone on the path (RFC 4035 §4.9.3; RFC 7672 §2.1.3 on
  stub resolvers).  A
  non-loopback resolver is used, but never trusted, and this is logged
  once per :class:`SecureResolver`;
- a validating resolver answers SERVFAIL for a *bogus* answer: SERVFAIL,
  like a timeout or a refusal, raises
  :class:`~txsmtp.mailauth.dnsquery.DNSTemporaryError`, and DANE turns it
  into a deferred delivery (RFC 7672 §2.1.1).

:mod:`twisted.names`' resolver cannot be used for this: it neither sets nor
reports the AD bit.  This module is a small stub that uses
:mod:`twisted.names.dns` only for the wire format (``dns.Message``, which
encodes and decodes the AD bit as ``authenticData``), and does the
transport itself: a query over UDP from a fresh socket and a random id; an
answer counts only if its id and question are those of the query (others
are dropped, as forgeries or strays); a truncated answer (TC) is asked
again over TCP (RFC 7766 §5); every try is bounded in time, and the tries
follow a tuple of timeouts.  Record types twisted.names does not know (TLSA
is one) come back as ``dns.UnknownRecord`` whose ``data`` is the raw rdata:
:mod:`txsmtp.tlspolicy.dane` parses TLSA from those bytes itself, in the
wire format of RFC 6698 §2.1, rather than adding dnspython as a dependency
for one record type.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import Logger
from twisted.names import dns

from txsmtp.mailauth.dnsquery import DNSTemporaryError

__all__ = ["SecureAnswer", "SecureResolver", "isLoopback"]

_log = Logger(namespace="txsmtp.tlspolicy.securedns")

#: The timeout of each try, in seconds.
DEFAULT_TIMEOUTS: tuple[float, ...] = (2.0, 3.0, 5.0)

#: The most octets of a DNS message over TCP (its two-octet length prefix).
_MAX_TCP_MESSAGE = 65535


@dataclass
class SecureAnswer:
    """
    What a query found, and whether it can be believed.

    :ivar records: the payloads of the answer's records of the type asked
        (``dns.Record_A``, ...; ``dns.UnknownRecord`` with the raw rdata in
        ``data`` for types twisted.names does not know, such as TLSA).
        Records of other types in the answer section (the CNAMEs the
        resolver followed) are left out.
    :ivar secure: whether the resolver validated the answer with DNSSEC:
        the AD bit was set in it *and* the resolver is on loopback.
    :ivar nxdomain: whether the name does not exist.
    :ivar canonicalName: the owner name of ``records``: the name asked, or
        the target of the CNAME chain the resolver followed (lower case,
        without the final dot); the name asked when there are no records.
    """

    records: list[Any] = field(default_factory=list)
    secure: bool = False
    nxdomain: bool = False
    canonicalName: str = ""


def isLoopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ``::1``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SecureResolver:
    """
    Ask one validating recursive resolver, and report whether it validated
    the answers.

    :param host: the resolver's IP address (IPv4 or IPv6): normally a
        local unbound or similar on 127.0.0.1.
    :param port: its port.
    :param timeouts: one try per entry, each waiting that many seconds.
    :param reactor: the reactor (``None``: the global one).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 53,
        timeouts: Sequence[float] = DEFAULT_TIMEOUTS,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        ipaddress.ip_address(host)  # an address, not a name: raise ValueError early
        if not timeouts:
            raise ValueError("at least one timeout is needed")
        self.host = host
        self.port = port
        self.timeouts = tuple(timeouts)
        self.reactor = reactor
        self.trusted = isLoopback(host)
        self._warned = False

    async def query(self, name: str, rrType: int) -> SecureAnswer:
        """
        Ask for the ``rrType`` records of ``name``.

        :raise DNSTemporaryError: SERVFAIL (which is also what a validating
            resolver answers for bogus data), another error code, or no
            answer within the timeouts.
        """
        qname = name.rstrip(".").encode("idna") if not name.isascii() else name.rstrip(".").encode("ascii")
        lastError = "no answer (timeout)"
        for timeout in self.timeouts:
            try:
                message = await self._udp(qname, rrType, timeout)
                if message.trunc:
                    message = await self._tcp(qname, rrType, timeout)
            except (defer.TimeoutError, error.TimeoutError):
                continue
            except error.ConnectError as e:
                lastError = str(e) or "connection refused"
                continue
            return self._answer(name, rrType, message)
        raise DNSTemporaryError(f"{_typeName(rrType)} {name}: {lastError} from {self.host}:{self.port}")

    def _answer(self, name: str, rrType: int, message: dns.Message) -> SecureAnswer:
        if message.rCode not in (dns.OK, dns.ENAME):
            text = "server failure (SERVFAIL; bogus if the resolver validates)" if message.rCode == dns.ESERVER else (
                f"error code {message.rCode}"
            )
            raise DNSTemporaryError(f"{_typeName(rrType)} {name}: {text}")
        secure = bool(message.authenticData)
        if secure and not self.trusted:
            if not self._warned:
                self._warned = True
                _log.warn(
                    "DNS resolver {host} is not on loopback: its DNSSEC verdicts (AD bit) are not trusted,"
                    " so DANE never applies",
                    host=self.host,
                )
            secure = False
        found = [rr for rr in message.answers if rr.type == rrType]
        owner = found[0].name.name.decode("ascii", "replace") if found else name
        return SecureAnswer(
            records=[rr.payload for rr in found],
            secure=secure,
            nxdomain=message.rCode == dns.ENAME,
            canonicalName=owner.rstrip(".").lower(),
        )

    def _request(self, qname: bytes, rrType: int) -> tuple[bytes, Any]:
        ident = secrets.randbelow(65536)
        message = dns.Message(id=ident, recDes=1, authenticData=1)
        message.queries = [dns.Query(qname, rrType, dns.IN)]

        def matches(answer: dns.Message) -> bool:
            # An answer counts only for this id and this very question
            # (RFC 5452 §9.1); the name is compared without case.
            if answer.id != ident or not answer.answer or len(answer.queries) != 1:
                return False
            q = answer.queries[0]
            return bool(q.name.name.lower() == qname.lower() and q.type == rrType and q.cls == dns.IN)

        return message.toStr(), matches

    async def _udp(self, qname: bytes, rrType: int, timeout: float) -> dns.Message:
        payload, matches = self._request(qname, rrType)
        proto = _UDPQuery(self.host, self.port, payload, matches)
        interface = "::" if ":" in self.host else ""
        port = self.reactor.listenUDP(0, proto, interface=interface)
        try:
            d = proto.deferred
            d.addTimeout(timeout, self.reactor)
            result: dns.Message = await d
            return result
        finally:
            await defer.maybeDeferred(port.stopListening)

    async def _tcp(self, qname: bytes, rrType: int, timeout: float) -> dns.Message:
        payload, matches = self._request(qname, rrType)
        proto = _TCPQuery(payload, matches)
        if ":" in self.host:
            endpoint: Any = endpoints.TCP6ClientEndpoint(self.reactor, self.host, self.port, timeout=timeout)
        else:
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=timeout)
        connecting = endpoints.connectProtocol(endpoint, proto)
        connecting.addTimeout(timeout, self.reactor)
        await connecting
        try:
            d = proto.deferred
            d.addTimeout(timeout, self.reactor)
            result: dns.Message = await d
            return result
        finally:
            transport: Any = proto.transport
            if transport is not None:
                transport.abortConnection()


def _parse(data: bytes) -> dns.Message | None:
    message = dns.Message()
    try:
        message.fromStr(data)
    except Exception:
        return None
    return message


class _UDPQuery(protocol.DatagramProtocol):
    """One query from its own socket, connected to the resolver."""

    def __init__(self, host: str, port: int, payload: bytes, matches: Any) -> None:
        self.host = host
        self.port = port
        self.payload = payload
        self.matches = matches
        self.deferred: defer.Deferred[dns.Message] = defer.Deferred()

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.transport.connect(self.host, self.port)
        self.transport.write(self.payload, (self.host, self.port))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        message = _parse(data)
        if message is None or not self.matches(message) or self.deferred.called:
            return
        self.deferred.callback(message)

    def connectionRefused(self) -> None:
        if not self.deferred.called:
            self.deferred.errback(ConnectionRefusedError(self.host, self.port))


class _TCPQuery(protocol.Protocol):
    """One query over TCP (RFC 1035 §4.2.2: each message after its length)."""

    def __init__(self, payload: bytes, matches: Any) -> None:
        self.payload = payload
        self.matches = matches
        self.buffer = b""
        self.deferred: defer.Deferred[dns.Message] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(struct.pack("!H", len(self.payload)) + self.payload)

    def dataReceived(self, data: bytes) -> None:
        # Bounded: at most one length prefix and one message are kept.
        self.buffer += data[: 2 + _MAX_TCP_MESSAGE - len(self.buffer)]
        if len(self.buffer) < 2:
            return
        (length,) = struct.unpack("!H", self.buffer[:2])
        if len(self.buffer) < 2 + length:
            return
        message = _parse(self.buffer[2 : 2 + length])
        self.buffer = self.buffer[2 + length :]
        if message is not None and self.matches(message) and not self.deferred.called:
            self.deferred.callback(message)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.deferred.called:
            self.deferred.errback(ConnectionRefusedError("connection closed before an answer"))


def _typeName(rrType: int) -> str:
    name = dns.QUERY_TYPES.get(rrType)
    if name is None:
        return "TLSA" if rrType == 52 else f"TYPE{rrType}"
    return str(name)
