"""
One server a delivery attempt connects to, and how (:class:`Target`):
the key of a pooled :class:`~txsmtp.client.Mailer` in
:class:`~txsmtp.queue.outbound.Outbound`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from txsmtp.client import TLSPolicy

__all__ = ["Target"]


@dataclass(frozen=True)
class Target:
    """One server to connect to, and how: the key of a pooled Mailer."""

    host: str
    port: int
    tls: TLSPolicy
    lmtp: bool = False
    #: a UNIX socket path (LMTP), instead of host and port
    socket: str | None = None
    #: the name a verified certificate must carry (default: host)
    tlsHostname: str | None = None
    username: str | None = None
    password: str | None = None
    #: an MX host: its certificate is checked against ``mxTrustRoot``
    mx: bool = False
    #: the host's DANE TLSA records (a TLSASet), when DANE applies
    dane: Any = None

    def withoutTLS(self) -> Target:
        return Target(self.host, self.port, TLSPolicy.NONE, self.lmtp, self.socket, self.tlsHostname, mx=self.mx)
