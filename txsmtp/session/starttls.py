"""
STARTTLS (RFC 3207), the session's side: the checks, the defence against
command injection, and forgetting what the client said in the clear.  The
handshake itself, and the TLS facts it brings, are the glue's
(``ESMTPServer._startTLS`` and ``handshakeCompleted``), which reports them
with :meth:`StartTLSCommand.tlsEstablished`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from txsmtp.envelope import TLSInfo
from txsmtp.session.actions import StartTLS
from txsmtp.session.base import SessionBase
from txsmtp.session.table import State

__all__ = ["StartTLSCommand"]

_log = Logger(namespace="txsmtp.server")


class StartTLSCommand(SessionBase):
    """STARTTLS, as part of :class:`~txsmtp.session.core.ServerSession`."""

    if not TYPE_CHECKING:
        __slots__ = ()

    # -- STARTTLS (RFC 3207) -----------------------------------------------------

    def do_STARTTLS(self, verb: str, argument: bytes) -> None:
        if argument.strip():
            self.commandError(501, "5.5.4", "Syntax: STARTTLS takes no argument")
            return
        conn = self.connection
        if conn.tls is not None:
            self.commandError(503, "5.5.1", "TLS is already active")
            return
        if self.config.tls is None:
            self.commandError(454, "4.7.0", "TLS not available")
            return
        # RFC 3207 §4.2 and the STARTTLS injection attacks (CVE-2011-0411 and
        # kin): anything the client sent after STARTTLS in plaintext must
        # never run inside the TLS session.  Drop it.
        injected = self._lines.takeRest()
        if injected:
            _log.warn(
                "{text}",
                text=f"discarded {len(injected)} octets sent after STARTTLS before the TLS handshake "
                f"from {conn.peerHost} (possible command injection)",
                peer=conn.peerHost,
                octets=len(injected),
                session=conn.sessionId,
            )
        self.reply(220, "2.0.0", "Ready to start TLS")
        self._endTransaction("STARTTLS")
        # RFC 3207 §4.2: forget everything the client said before TLS.
        conn.heloName = None
        conn.esmtp = False
        self.state = State.INITIAL
        if conn.authenticated:
            conn.authenticated = None
            self.restoreAnonymousSession()
        conn.tls = TLSInfo()
        self.emit(StartTLS())

    def tlsEstablished(self, info: TLSInfo) -> None:
        """The TLS handshake completed (after STARTTLS or on an implicit-TLS port)."""
        self.connection.tls = info
