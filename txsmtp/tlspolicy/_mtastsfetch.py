"""
The HTTPS fetch and the cache file of :mod:`txsmtp.tlspolicy.mtasts`
(private: the names here may change).

- :class:`EndpointFactory` makes :class:`twisted.web.client.Agent` connect
  to ``mta-sts.<domain>`` at the addresses the caller's ``twisted.names``
  resolver gives, with TLS checked for that host name;
- :func:`readBody` reads a response body up to a bound, aborting beyond;
- :func:`classify` turns what the Agent raised into an RFC 8460 result type;
- :func:`writeFile` writes the cache file durably (in a thread).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IResolver, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.names import dns
from twisted.python.failure import Failure
from twisted.web.client import URI, ResponseDone
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txsmtp.mailauth.dnsquery import DNSTemporaryError, query

__all__ = [
    "FETCH_ERROR",
    "WEBPKI_INVALID",
    "EndpointFactory",
    "PolicyError",
    "classify",
    "drain",
    "readBody",
    "writeFile",
]

FETCH_ERROR = "sts-policy-fetch-error"
WEBPKI_INVALID = "sts-webpki-invalid"


class PolicyError(Exception):
    """
    A policy could not be had: ``resultType`` is the RFC 8460 result type,
    ``str()`` the detail.
    """

    def __init__(self, resultType: str, detail: str) -> None:
        super().__init__(detail)
        self.resultType = resultType


@implementer(IStreamClientEndpoint)
class _ResolvedTLSEndpoint:
    """TLS to ``host``, its addresses looked up through the given resolver."""

    def __init__(self, factory: EndpointFactory, host: str) -> None:
        self.factory = factory
        self.host = host

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> Any:
        f = self.factory
        addresses: list[tuple[socket.AddressFamily, str]] = []
        for rrType, family in ((dns.A, socket.AF_INET), (dns.AAAA, socket.AF_INET6)):
            try:
                answer = await query(f.resolver, self.host, rrType)
            except DNSTemporaryError as e:
                raise PolicyError(FETCH_ERROR, f"cannot resolve {self.host}: {e}") from e
            addresses += [(family, socket.inet_ntop(family, r.address)) for r in answer.records]
        if not addresses:
            raise PolicyError(FETCH_ERROR, f"{self.host} has no address (A/AAAA)")
        tlsOptions = optionsForClientTLS(self.host, trustRoot=f.trustRoot)
        lastError: Exception | None = None
        for family, address in addresses:
            endpointType = TCP4ClientEndpoint if family == socket.AF_INET else TCP6ClientEndpoint
            tcp = endpointType(f.reactor, address, f.port, timeout=f.connectTimeout)
            try:
                return await wrapClientTLS(tlsOptions, tcp).connect(protocolFactory)
            except Exception as e:  # the next address, if any
                lastError = e
        raise PolicyError(FETCH_ERROR, f"cannot connect to {self.host} port {f.port}: {lastError}")


@implementer(IAgentEndpointFactory)
class EndpointFactory:
    def __init__(
        self, reactor: Any, resolver: IResolver, trustRoot: Any, port: int, connectTimeout: float
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.trustRoot = trustRoot
        self.port = port
        self.connectTimeout = connectTimeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return _ResolvedTLSEndpoint(self, uri.host.decode("ascii"))


class _BoundedReader(Protocol):
    """Collects a response body up to ``limit`` octets; beyond, aborts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished: defer.Deferred[bytes] | None = defer.Deferred(lambda d: self._abort())

    def _abort(self) -> None:
        self.finished = None
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self.size += len(data)
        if self.size > self.limit:
            finished = self.finished
            self._abort()
            finished.errback(PolicyError(FETCH_ERROR, f"policy larger than {self.limit} octets"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if reason is not None and reason.check(ResponseDone):
            finished.callback(b"".join(self.chunks))
        else:
            detail = reason.getErrorMessage() if reason is not None else "connection lost"
            finished.errback(PolicyError(FETCH_ERROR, f"policy body cut short: {detail}"))


def _causes(error: BaseException) -> list[BaseException]:
    """The error and those it wraps (twisted.web's ``reasons`` lists of failures)."""
    found = [error]
    for reason in getattr(error, "reasons", None) or []:
        if isinstance(reason, Failure) and reason.value is not None:
            found += _causes(reason.value)
    return found


def _sslText(error: BaseException) -> str:
    # pyOpenSSL's errors carry [(library, function, reason), ...].
    try:
        reasons = [str(r[2]) for r in error.args[0] if r[2]]
    except (IndexError, TypeError):
        reasons = []
    return "; ".join(reasons) or repr(error)


def classify(error: BaseException) -> PolicyError:
    if isinstance(error, PolicyError):
        return error
    for cause in _causes(error):
        module = type(cause).__module__
        if module.startswith("service_identity"):
            return PolicyError(
                WEBPKI_INVALID, f"TLS: certificate not valid for the host name ({cause!r})"
            )
        if module.startswith("OpenSSL"):
            return PolicyError(WEBPKI_INVALID, f"TLS: {_sslText(cause)}")
    causes = (
        "; ".join(str(c) or type(c).__name__ for c in _causes(error)[1:])
        or str(error)
        or type(error).__name__
    )
    return PolicyError(FETCH_ERROR, causes)


async def readBody(response: Any, limit: int) -> bytes:
    length = response.length
    if isinstance(length, int) and length > limit:
        aborter = _BoundedReader(0)  # aborts at the first octet
        assert aborter.finished is not None
        aborter.finished.addErrback(lambda _: None)
        response.deliverBody(aborter)
        raise PolicyError(
            FETCH_ERROR, f"policy larger than {limit} octets (Content-Length {length})"
        )
    reader = _BoundedReader(limit)
    assert reader.finished is not None
    finished = reader.finished
    response.deliverBody(reader)
    return await finished


async def drain(response: Any, limit: int) -> None:
    """Read and drop a body (up to ``limit`` octets), so the connection ends cleanly."""
    try:
        await readBody(response, limit)
    except PolicyError:
        pass


def writeFile(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
