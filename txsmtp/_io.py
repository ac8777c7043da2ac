"""
Writing to a Twisted TCP transport without waiting for the reactor.

Both protocols write small batches (a group of replies, a group of
pipelined commands).  ``transport.write`` queues them and asks the reactor
to watch the socket for writability, which costs two ``epoll_ctl`` calls
and a wake-up per write.  When nothing is queued in the transport, sending
straight away keeps the byte order and saves that round trip.

Twisted has no public way to ask whether a transport has bytes queued:
that is read in :mod:`txsmtp._twistedprivate`.
"""

from __future__ import annotations

from twisted.internet import tcp as _tcp

from txsmtp._twistedprivate import hasTCPWriteState, queuedBytes, writeShutDown

__all__ = ["canWriteDirectly", "writeNow"]


def canWriteDirectly(transport: object) -> bool:
    """Whether ``transport`` is a Twisted TCP connection whose write path we know."""
    return hasTCPWriteState(transport) and hasattr(transport, "socket") and hasattr(transport, "TLS")


def writeNow(t: _tcp.Connection, data: bytes) -> None:
    """
    Send ``data`` on ``t`` now if nothing is queued ahead of it (and TLS is
    not in the way); what the kernel does not take, or anything when that
    is not possible, goes through ``t.write`` as usual.
    """
    if not t.TLS and not queuedBytes(t):
        if t.connected and not t.disconnecting and not writeShutDown(t):
            try:
                sent = t.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
    t.write(data)
