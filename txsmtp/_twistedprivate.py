"""
Every use txsmtp makes of Twisted's private names, and nothing else.

Twisted has no public API for these:

- whether a TCP transport has bytes queued that it has not yet sent
  (:func:`queuedBytes`, :func:`writeShutDown`): :mod:`txsmtp._io` writes
  straight to the socket only when nothing is queued ahead, to keep the
  byte order;
- the PROXY-protocol wrapper of :mod:`twisted.protocols.haproxy` and the
  header it has read (:data:`HAProxyProtocolWrapper`, :func:`proxyInfo`):
  the public module offers only ``proxyEndpoint``, while
  :mod:`txsmtp._proxy` must find the wrapper under a session and know when
  its header is in.

tests/test_twistedprivate.py pins each name and what it means, so a Twisted
release that renames or changes one fails a test that names it, instead of
failing the mail.  When Twisted grows a public way, use it and drop the
entry here.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

__all__ = [
    "HAProxyProtocolWrapper",
    "TCP_WRITE_STATE",
    "hasTCPWriteState",
    "proxyInfo",
    "queuedBytes",
    "writeShutDown",
]

#: The attributes of :class:`twisted.internet.tcp.Connection` (through
#: ``abstract.FileDescriptor``) that :func:`queuedBytes` and
#: :func:`writeShutDown` read.
TCP_WRITE_STATE = ("dataBuffer", "_tempDataLen", "_writeDisconnected")


def hasTCPWriteState(transport: object) -> bool:
    """Whether ``transport`` is a Twisted TCP connection with the write state read here."""
    return isinstance(transport, tcp.Connection) and all(hasattr(transport, name) for name in TCP_WRITE_STATE)


def queuedBytes(transport: tcp.Connection) -> bool:
    """
    Whether ``transport`` holds written bytes not yet handed to the kernel:
    ``write`` appends to a list counted by ``_tempDataLen``, which the
    reactor moves into ``dataBuffer`` before sending.
    """
    return bool(transport._tempDataLen or transport.dataBuffer)


def writeShutDown(transport: tcp.Connection) -> bool:
    """Whether the writing half of ``transport`` was shut down (``loseWriteConnection``)."""
    return bool(transport._writeDisconnected)


def proxyInfo(wrapper: HAProxyProtocolWrapper) -> Any:
    """
    The :class:`twisted.protocols.haproxy.IProxyInfo` of the PROXY header
    ``wrapper`` has read (``source`` is the client's address, or ``None``
    for a LOCAL or UNKNOWN header), or ``None`` while the header has not
    been read.
    """
    return wrapper._proxyInfo
