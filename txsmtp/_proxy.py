"""
Glue between the server and Twisted's PROXY-protocol wrapper.

``--listen haproxy:tcp:...`` puts :mod:`twisted.protocols.haproxy`'s wrapper
between the socket and the session.  Three things about that wrapper need
help, and this module is all of it (the server calls these four functions
and nothing else knows):

- it connects the session at once, before the PROXY header that names the
  client has arrived, so ``getPeer()`` would still name the proxy: the
  session waits (:func:`pendingProxyHeader`, :func:`whenProxyHeaderRead`)
  and sends no greeting and opens no delivery session until the header is
  in;
- its version 1 parser checks no address, so a header could put any text
  (a line end too) into replies, ``Received:`` and logs: only real IP
  addresses of the announced family are taken, anything else drops the
  connection;
- under STARTTLS, Twisted's TLS layer reports the finished handshake to the
  protocol it wraps, the PROXY wrapper, which does not pass it on
  (:func:`forwardHandshake`).

The wrapper's class and the header it read are private to Twisted:
:mod:`txsmtp._twistedprivate` reaches them, and tests/test_twistedprivate.py
(with tests/test_proxy.py for the behaviour) pins them, so a Twisted release
that changes them fails the tests rather than the mail.
"""

from __future__ import annotations

import ipaddress
import types
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import alsoProvides

from txsmtp._twistedprivate import HAProxyProtocolWrapper, proxyInfo

__all__ = ["compactPeer", "forwardHandshake", "pendingProxyHeader", "whenProxyHeaderRead"]

_log = Logger(namespace="txsmtp.server")


def pendingProxyHeader(transport: Any) -> HAProxyProtocolWrapper | None:
    """The PROXY wrapper under ``transport`` (or under its TLS layer) still waiting for its header."""
    while isinstance(transport, ProtocolWrapper):
        if isinstance(transport, HAProxyProtocolWrapper):
            return transport if proxyInfo(transport) is None else None
        transport = transport.transport
    return None


def _usableProxiedSource(source: Any) -> bool:
    """A header's source: none (LOCAL, UNKNOWN: the connection's own) or a plain IP address."""
    if source is None:
        return True
    if not isinstance(source, (IPv4Address, IPv6Address)) or "%" in source.host:
        return False
    try:
        version = ipaddress.ip_address(source.host).version
    except ValueError:
        return False
    return version == (4 if isinstance(source, IPv4Address) else 6)


def whenProxyHeaderRead(wrapper: HAProxyProtocolWrapper, then: Callable[[], None]) -> None:
    """
    Call ``then()`` once ``wrapper`` has read a usable header, before the
    bytes that follow it reach the session; drop the connection on a bad one.
    """

    def dataReceived(data: bytes) -> None:
        protocol, early = wrapper.wrappedProtocol, list[bytes]()
        wrapper.wrappedProtocol = types.SimpleNamespace(dataReceived=early.append)  # type: ignore[assignment]
        try:
            type(wrapper).dataReceived(wrapper, data)
            info = proxyInfo(wrapper)
            if info is None:
                return  # more of the header to come, or a bad one (the wrapper closes)
            usable = _usableProxiedSource(info.source)
        except ValueError:  # a v1 header with a port that is not a number
            usable = False
        finally:
            wrapper.wrappedProtocol = protocol
        if not usable:
            transport: Any = wrapper.transport
            proxy = transport.getPeer()
            _log.warn("dropped a connection from {proxy}: unusable PROXY header", proxy=getattr(proxy, "host", proxy))
            transport.abortConnection()
            return
        del wrapper.dataReceived  # a plain pass-through from now on
        then()
        if early:
            protocol.dataReceived(b"".join(early))

    wrapper.dataReceived = dataReceived  # type: ignore[method-assign]


def compactPeer(peer: Any) -> Any:
    """The peer address, IPv6 written the short way (Twisted spells a v2 header's in full)."""
    if isinstance(peer, IPv6Address):
        host = ipaddress.ip_address(peer.host).compressed
        return IPv6Address(peer.type, host, peer.port, peer.flowInfo, peer.scopeID)
    return peer


def forwardHandshake(transport: Any, listener: Any) -> None:
    """
    Before ``transport.startTLS``: when ``transport`` is a wrapper that would
    swallow the TLS layer's ``handshakeCompleted``, have it call
    ``listener.handshakeCompleted`` instead.
    """
    if isinstance(transport, ProtocolWrapper) and not IHandshakeListener.providedBy(transport):
        alsoProvides(transport, IHandshakeListener)
        transport.handshakeCompleted = listener.handshakeCompleted  # type: ignore[attr-defined]
