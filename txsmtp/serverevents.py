"""
What a server tells its observers, for counting (metrics) and for limits
that span connections: :class:`ServerEvents`, the base with every method a
no-op, and :class:`EventFanout`, several observers as one.  A factory's
``events`` attribute holds the observer; ``twistd smtp`` sets it from its
options (``--metrics``, the limits).

The calls are made on the server's hot path: an observer must answer at
once and never raise (it is not the place for I/O).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from txsmtp.envelope import ConnectionInfo, Envelope

__all__ = ["EventFanout", "ServerEvents", "NO_EVENTS"]


class ServerEvents:
    """The observer interface, with nothing done; override what you count."""

    def connectionMade(self, connection: ConnectionInfo, protocol: str) -> None:
        """A client connected (``protocol``: ``"SMTP"`` or ``"LMTP"``)."""

    def connectionLost(self, connection: ConnectionInfo, protocol: str) -> None:
        """The connection ended."""

    def commandRefused(self, connection: ConnectionInfo, command: str, code: int) -> None:
        """A command (``"MAIL"``, ``"RCPT"``, ``"connect"``...) got the reply ``code`` (4xx or 5xx)."""

    def messageDone(self, connection: ConnectionInfo, envelope: Envelope, code: int, size: int | None) -> None:
        """A transaction's final reply: ``code`` 250 when the message was taken, else the refusal."""

    def tlsDone(self, connection: ConnectionInfo, ok: bool) -> None:
        """A TLS handshake (STARTTLS or implicit) completed (``ok``) or did not."""

    def authDone(self, connection: ConnectionInfo, mechanism: str, ok: bool) -> None:
        """An AUTH exchange succeeded or failed."""


#: The observer of a factory nobody observes.
NO_EVENTS = ServerEvents()


class EventFanout(ServerEvents):
    """Several observers, called in order."""

    def __init__(self, observers: Iterable[ServerEvents]) -> None:
        self.observers = list(observers)

    def _each(self, name: str, *args: Any) -> None:
        for observer in self.observers:
            getattr(observer, name)(*args)

    def connectionMade(self, connection: ConnectionInfo, protocol: str) -> None:
        self._each("connectionMade", connection, protocol)

    def connectionLost(self, connection: ConnectionInfo, protocol: str) -> None:
        self._each("connectionLost", connection, protocol)

    def commandRefused(self, connection: ConnectionInfo, command: str, code: int) -> None:
        self._each("commandRefused", connection, command, code)

    def messageDone(self, connection: ConnectionInfo, envelope: Envelope, code: int, size: int | None) -> None:
        self._each("messageDone", connection, envelope, code, size)

    def tlsDone(self, connection: ConnectionInfo, ok: bool) -> None:
        self._each("tlsDone", connection, ok)

    def authDone(self, connection: ConnectionInfo, mechanism: str, ok: bool) -> None:
        self._each("authDone", connection, mechanism, ok)
