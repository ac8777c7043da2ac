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
from inspect import iscoroutine
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txsmtp.envelope import ConnectionInfo, Envelope, Recipient
from txsmtp.interfaces import IDelivery, IDeliverySession, IMessageReceiver
from txsmtp.wire.address import Address
from txsmtp.wire.params import MailParameters

__all__ = ["GuardedDelivery", "GuardedReceiver", "GuardedSession"]


def _checks(guards: list[Any], method: str) -> list[Any]:
    """The bound ``method`` of each guard that has one, in order."""
    return [check for check in (getattr(g, method, None) for g in guards) if check is not None]


def _ask(checks: list[Any], args: tuple[Any, ...], then: Any) -> Any:
    """
    Call ``checks`` in turn with ``args``, then ``then()``; a check that
    answers at once (the common case: a limit under its rate) costs no
    Deferred, and the first that answers later chains the rest.  A
    refusal raises, or fails the Deferred.
    """
    for i, check in enumerate(checks):
        result = check(*args)
        if isinstance(result, defer.Deferred) or iscoroutine(result):
            return defer.ensureDeferred(result).addCallback(_askRest, checks[i + 1 :], args, then)
    return then()


def _askRest(ignored: Any, checks: list[Any], args: tuple[Any, ...], then: Any) -> Any:
    return _ask(checks, args, then)


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
        self.checks = {
            stage: _checks(self.guards, stage)
            for stage in ("checkConnection", "checkSender", "checkRecipient", "checkData", "checkMessage")
        }
        # A receiver is wrapped only when a guard wants its end.
        self.wrapsReceiver = bool(self.checks["checkMessage"] or _checks(self.guards, "messageAccepted"))
        # id(connection) -> its sessions open now
        self._sessions: dict[int, int] = {}

    def openSession(self, connection: ConnectionInfo) -> Any:
        key = id(connection)
        first = not self._sessions.get(key)
        self._sessions[key] = self._sessions.get(key, 0) + 1

        def opened(inner: Any) -> GuardedSession:
            return GuardedSession(self, connection, inner)

        def open() -> Any:
            return defer.maybeDeferred(self.inner.openSession, connection).addCallback(opened)

        try:
            result = _ask(self.checks["checkConnection"] if first else [], (connection,), open)
        except BaseException:
            self.sessionClosed(connection)
            raise

        def failed(failure: Any) -> Any:
            self.sessionClosed(connection)
            return failure

        return result.addErrback(failed)

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

    def checkSender(self, sender: Address | None, parameters: MailParameters) -> Any:
        inner = self.inner
        checks = self.delivery.checks["checkSender"]
        if not checks:
            return inner.checkSender(sender, parameters)
        return _ask(checks, (self.connection, sender, parameters), lambda: inner.checkSender(sender, parameters))

    def checkRecipient(self, recipient: Recipient, envelope: Envelope) -> Any:
        inner = self.inner
        checks = self.delivery.checks["checkRecipient"]
        if not checks:
            return inner.checkRecipient(recipient, envelope)
        return _ask(checks, (self.connection, recipient, envelope), lambda: inner.checkRecipient(recipient, envelope))

    def openMessage(self, envelope: Envelope) -> Any:
        delivery = self.delivery

        def open() -> Any:
            receiver = self.inner.openMessage(envelope)
            if not delivery.wrapsReceiver:
                return receiver
            return defer.maybeDeferred(lambda: receiver).addCallback(
                lambda r: GuardedReceiver(self, envelope, r)
            )

        return _ask(delivery.checks["checkData"], (self.connection, envelope), open)

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

    def finish(self) -> Any:
        session = self.session

        def refused(failure: Any) -> Any:
            self.inner.abort("refused by a guard")
            return failure

        def finish() -> Any:
            return defer.maybeDeferred(self.inner.finish).addCallback(accepted)

        def accepted(result: Any) -> Any:
            _tell(session.guards, "messageAccepted", session.connection, self.envelope)
            return result

        try:
            outcome = _ask(session.delivery.checks["checkMessage"], (session.connection, self.envelope), lambda: None)
        except BaseException:
            self.inner.abort("refused by a guard")
            raise
        if isinstance(outcome, defer.Deferred):
            return outcome.addCallbacks(lambda _: finish(), refused)
        return finish()

    def abort(self, reason: str) -> None:
        self.inner.abort(reason)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
