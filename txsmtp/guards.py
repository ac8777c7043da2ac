"""
Guards: the checks a server makes of its clients before any delivery sees
them: blocklists (``txsmtp.dnsbl``), rate and concurrency limits
(``txsmtp.limits``), a Postfix policy service
(``txsmtp.policyservice``).

A guard is any object with some of these methods (each may return a
value, a Deferred or a coroutine, and refuses by raising
:class:`~txsmtp.errors.SMTPError`):

``checkConnection(connection)``
    A client connected (behind PROXY: once the header named it).  A
    refusal is the greeting (``554``: every command but QUIT is then
    answered 503; ``421``: the connection is closed after it).
``checkSender(connection, sender, parameters)``
    ``MAIL``.
``checkRecipient(connection, recipient, envelope)``
    ``RCPT``.
``checkData(connection, envelope)``
    ``DATA`` or the first ``BDAT``, before the delivery opens the message.
``checkMessage(connection, envelope)``
    After the final dot, before the delivery's ``finish`` (the message is
    whole; ``envelope`` has its size in ``envelope.data`` only if the
    delivery put it there).
``messageAccepted(connection, envelope)``
    The delivery stored the message (for counting, not refusing).
``connectionClosed(connection)``
    The connection ended (never raises).

:class:`GuardedDelivery` wraps any :class:`~txsmtp.interfaces.IDelivery`
with a list of guards, asked in order before the wrapped delivery: the
first refusal wins and the delivery is not asked.  Authenticated
sessions and trusted networks are the guards' own business (each gets the
live :class:`~txsmtp.envelope.ConnectionInfo`).

A connection may open a second session: after AUTH, the realm of
:func:`txsmtp.auth.makePortal` opens one for the user.  The guards are
asked ``checkConnection`` once per connection, and told
``connectionClosed`` once, when its last session closes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txsmtp.envelope import ConnectionInfo, Envelope, Recipient
from txsmtp.interfaces import IDelivery, IDeliverySession, IMessageReceiver
from txsmtp.wire.address import Address
from txsmtp.wire.params import MailParameters

__all__ = ["GuardedDelivery", "GuardedReceiver", "GuardedSession"]


async def _ask(guards: list[Any], method: str, *args: Any) -> None:
    for guard in guards:
        check = getattr(guard, method, None)
        if check is not None:
            await defer.maybeDeferred(check, *args)


def _tell(guards: list[Any], method: str, *args: Any) -> None:
    for guard in guards:
        hook = getattr(guard, method, None)
        if hook is not None:
            try:
                hook(*args)
            except Exception:
                from twisted.logger import Logger

                Logger(namespace="txsmtp.guards").failure("guard {guard!r}.{method} failed", guard=guard, method=method)


@implementer(IDelivery)
class GuardedDelivery:
    """
    ``inner`` behind ``guards`` (see the module documentation).

    :ivar inner: the wrapped delivery; attributes this class does not have
        are looked up on it (``startCleanup``, ``stop``, ...).
    """

    def __init__(self, inner: Any, guards: Iterable[Any]) -> None:
        self.inner = inner
        self.guards = list(guards)
        # id(connection) -> its sessions open now
        self._sessions: dict[int, int] = {}

    def openSession(self, connection: ConnectionInfo) -> defer.Deferred[GuardedSession]:
        return defer.Deferred.fromCoroutine(self._open(connection))

    async def _open(self, connection: ConnectionInfo) -> GuardedSession:
        key = id(connection)
        first = not self._sessions.get(key)
        self._sessions[key] = self._sessions.get(key, 0) + 1
        try:
            if first:
                await _ask(self.guards, "checkConnection", connection)
            inner = await defer.maybeDeferred(self.inner.openSession, connection)
        except BaseException:
            self.sessionClosed(connection)
            raise
        return GuardedSession(self, connection, inner)

    def sessionClosed(self, connection: ConnectionInfo) -> None:
        """One session of ``connection`` ended: the guards hear of the connection's end with its last."""
        key = id(connection)
        left = self._sessions.get(key, 1) - 1
        if left > 0:
            self._sessions[key] = left
            return
        self._sessions.pop(key, None)
        _tell(self.guards, "connectionClosed", connection)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"GuardedDelivery({self.inner!r}, {self.guards!r})"


@implementer(IDeliverySession)
class GuardedSession:
    """One connection's session of a :class:`GuardedDelivery`."""

    def __init__(self, delivery: GuardedDelivery, connection: ConnectionInfo, inner: Any) -> None:
        self.delivery = delivery
        self.guards = delivery.guards
        self.connection = connection
        self.inner = inner
        self._closed = False

    async def checkSender(self, sender: Address | None, parameters: MailParameters) -> Any:
        await _ask(self.guards, "checkSender", self.connection, sender, parameters)
        return await defer.maybeDeferred(self.inner.checkSender, sender, parameters)

    async def checkRecipient(self, recipient: Recipient, envelope: Envelope) -> Any:
        await _ask(self.guards, "checkRecipient", self.connection, recipient, envelope)
        return await defer.maybeDeferred(self.inner.checkRecipient, recipient, envelope)

    async def openMessage(self, envelope: Envelope) -> Any:
        await _ask(self.guards, "checkData", self.connection, envelope)
        receiver = await defer.maybeDeferred(self.inner.openMessage, envelope)
        return GuardedReceiver(self, envelope, receiver)

    def verify(self, address: str) -> Any:
        return self.inner.verify(address)

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.delivery.sessionClosed(self.connection)
        self.inner.close()


@implementer(IMessageReceiver)
class GuardedReceiver:
    """The receiver of a :class:`GuardedSession`: asks ``checkMessage`` before the inner ``finish``."""

    def __init__(self, session: GuardedSession, envelope: Envelope, inner: Any) -> None:
        self.session = session
        self.envelope = envelope
        self.inner = inner

    def write(self, chunk: bytes) -> Any:
        return self.inner.write(chunk)

    def finish(self) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> Any:
        session = self.session
        try:
            await _ask(session.guards, "checkMessage", session.connection, self.envelope)
        except BaseException:
            self.inner.abort("refused by a guard")
            raise
        result = await defer.maybeDeferred(self.inner.finish)
        _tell(session.guards, "messageAccepted", session.connection, self.envelope)
        return result

    def abort(self, reason: str) -> None:
        self.inner.abort(reason)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
