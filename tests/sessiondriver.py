"""
A driver for :class:`txsmtp.session.core.ServerSession` without Twisted's
transport: it builds the session the way
:meth:`txsmtp.server.ESMTPServer.connectionMade` does (the factory as the
config, an unconnected protocol as the host), feeds it octets, executes its
actions itself and collects its output.

Hook calls are either answered at once or *held* (the Deferred that has not
fired yet): :attr:`Driver.hold` decides, per call.  Held results are handed
back later with :meth:`Driver.resolve`.  The hook itself runs when the call
is made (as the real glue does); only its result is delayed.

Every action is recorded, so that tests can say what the session asked for
and when (:attr:`Driver.log`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp.delivery import BaseDelivery, BaseDeliverySession
from txsmtp.envelope import ConnectionInfo
from txsmtp.errors import SMTPError
from txsmtp.interfaces import IMessageReceiver
from txsmtp.lmtp import LMTPFactory
from txsmtp.server import SMTPFactory
from txsmtp.session import Call, Cancel, Close, Notify, ServerSession, StartTLS
from txsmtp.wire.reply import Reply, ReplyParser

__all__ = ["Driver", "ScriptedDelivery", "ScriptedReceiver", "OPEN_REFUSED", "SENDER_REFUSED"]

#: What the scripted delivery says to the senders and recipients it refuses.
SENDER_REFUSED = SMTPError(550, "5.7.1", "sender refused")
RCPT_REFUSED = SMTPError(550, "5.1.1", "no such user")
OPEN_REFUSED = SMTPError(452, "4.3.1", "openMessage refused")
WRITE_FAILED = SMTPError(451, "4.3.2", "write failed")
FINISH_FAILED = SMTPError(451, "4.3.3", "finish failed")
MAILBOX_FULL = SMTPError(452, "4.2.2", "mailbox full")


@implementer(IMessageReceiver)
class ScriptedReceiver:
    """Records what the session did with it; fails as its sender asks."""

    def __init__(self, delivery: ScriptedDelivery, envelope: Any) -> None:
        self.delivery = delivery
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.finished = 0
        self.aborted: list[str] = []

    @property
    def sender(self) -> str:
        s = self.envelope.sender
        return str(s) if s is not None else ""

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self.sender.startswith("writefail@"):
            raise WRITE_FAILED

    def finish(self) -> Any:
        self.finished += 1
        if self.sender.startswith("finishfail@"):
            raise FINISH_FAILED
        results = [
            MAILBOX_FULL if str(r.address).startswith("full@") else None
            for r in self.envelope.recipients
        ]
        self.delivery.stored.append((self.envelope, b"".join(self.chunks)))
        return results if any(results) else None

    def abort(self, reason: str) -> None:
        self.aborted.append(reason)


class ScriptedSession(BaseDeliverySession):
    delivery: ScriptedDelivery

    def __init__(self, delivery: Any, connection: Any) -> None:
        super().__init__(delivery, connection)
        self.closed = 0
        self.resets = 0

    def checkSender(self, sender: Any, parameters: Any) -> None:
        if sender is not None and str(sender).startswith("refused@"):
            raise SENDER_REFUSED

    def checkRecipient(self, recipient: Any, envelope: Any) -> None:
        if str(recipient.address).startswith("bad@"):
            raise RCPT_REFUSED

    def openMessage(self, envelope: Any) -> ScriptedReceiver:
        sender = str(envelope.sender) if envelope.sender is not None else ""
        if sender.startswith("openfail@"):
            raise OPEN_REFUSED
        r = ScriptedReceiver(self.delivery, envelope)
        self.delivery.receivers.append(r)
        return r

    def verify(self, address: str) -> Any:
        return f"<{address}>" if address.startswith("known@") else None

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed += 1


class ScriptedDelivery(BaseDelivery):
    """
    A synchronous delivery whose behaviour is chosen by the addresses:
    sender ``refused@`` is refused, ``openfail@`` refused at openMessage,
    ``writefail@`` fails every write, ``finishfail@`` fails finish();
    recipient ``bad@`` is refused, ``full@`` fails in finish's results.
    """

    sessionFactory = ScriptedSession

    def __init__(self) -> None:
        self.receivers: list[ScriptedReceiver] = []
        self.sessions: list[ScriptedSession] = []
        self.stored: list[tuple[Any, bytes]] = []

    def openSession(self, connection: Any) -> Any:
        s = super().openSession(connection)
        self.sessions.append(s)
        return s


class Held:
    """A hook call whose result has not been handed back yet."""

    def __init__(self, call: Call, value: Any, failure: Failure | None) -> None:
        self.call = call
        self.value = value
        self.failure = failure
        self.cancelled = False

    def __repr__(self) -> str:
        return f"<Held {self.call!r}{' cancelled' if self.cancelled else ''}>"


class Driver:
    """
    One session, driven by hand.

    :param hold: ``hold(call) -> bool``: whether the result of ``call``
        comes later (default: never).
    :param honourCancel: ``honourCancel(call) -> bool``: whether a
        :class:`Cancel` of a held call behaves as ``Deferred.cancel()``
        without a canceller (a CancelledError at once; the result is lost),
        rather than a hook that answers anyway (default: answers anyway).
    :ivar out: every reply octet the session produced, in order.
    :ivar log: every action, in order, as ``(kind, what)``.
    :ivar held: the calls whose result has not been handed back.
    """

    def __init__(
        self,
        delivery: Any = None,
        *,
        lmtp: bool = False,
        hold: Callable[[Call], bool] | None = None,
        honourCancel: Callable[[Call], bool] | None = None,
        start: bool = True,
        **factoryArgs: Any,
    ) -> None:
        self.clock = Clock()
        self.delivery = delivery if delivery is not None else ScriptedDelivery()
        factoryArgs.setdefault("clock", self.clock)
        factoryClass = LMTPFactory if lmtp else SMTPFactory
        self.factory = factoryClass(self.delivery, "test.invalid", **factoryArgs)
        # The host: an unconnected protocol, as in connectionMade.
        host = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        host.connection = ConnectionInfo(
            IPv4Address("TCP", "192.0.2.7", 40000), IPv4Address("TCP", "127.0.0.1", 25),
            host.receivedProtocol[-4:], "T1",
        )  # fmt: skip
        self.host = host
        self.session = ServerSession(
            self.factory, host, host.connection, type(host).commandTable(), self.clock.seconds()
        )
        self.hold = hold or (lambda call: False)
        self.honourCancel = honourCancel or (lambda call: False)
        self.out = b""
        self.log: list[tuple[str, str]] = []
        self.held: list[Held] = []
        self.calls: list[Call] = []
        self.notifies: list[Notify] = []
        self.cancels: list[Call] = []
        self.closed = False
        self.startTLS = 0
        self.disconnected = False
        self.callsAfterDisconnect: list[Call] = []
        self.lostToCancel: list[Held] = []
        self.outputAfterDisconnect = b""
        self._parser = ReplyParser(maxReplyLength=1 << 20)
        #: The replies to the start (the greeting, unless openSession is held).
        self.greeting: list[Reply] = []
        if start:
            self.session.start(self.clock.seconds())
            self.run()
            self.greeting = self.replies()

    # -- inputs ----------------------------------------------------------------

    def feed(self, data: bytes) -> list[Reply]:
        """Octets from the client; the replies produced (all of them, once the session waits)."""
        self.session.receive(data, self.clock.seconds())
        self.run()
        return self.replies()

    def command(self, line: bytes) -> Reply:
        replies = self.feed(line + b"\r\n")
        if len(replies) != 1:
            raise AssertionError(f"expected one reply to {line!r}, got {replies!r}")
        return replies[0]

    def resolve(self, which: Held | None = None) -> list[Reply]:
        """Hand back the result of a held call (the oldest by default)."""
        held = which if which is not None else self.held[0]
        self.held.remove(held)
        now = self.clock.seconds()
        if held.failure is not None:
            self.session.hookFailed(held.call, held.failure, now)
        else:
            self.session.hookDone(held.call, held.value, now)
        self.run()
        return self.replies()

    def disconnect(self) -> None:
        self.session.connectionLost(self.clock.seconds())
        self.disconnected = True
        self.run()

    def advance(self, seconds: float) -> list[Reply]:
        self.clock.advance(seconds)
        self.session.checkTime(self.clock.seconds())
        self.run()
        return self.replies()

    # -- outputs ---------------------------------------------------------------

    def replies(self) -> list[Reply]:
        data = self.session.takeOutput()
        if self.disconnected:
            self.outputAfterDisconnect += data
        self.out += data
        return self._parser.feed(data)

    def run(self) -> None:
        """Execute the session's actions until it waits."""
        session = self.session
        while True:
            action = session.nextAction()
            if action is None:
                break
            kind = type(action)
            if kind is Call:
                self._call(action)  # type: ignore[arg-type]
            elif kind is Notify:
                self._notify(action)  # type: ignore[arg-type]
            elif kind is Cancel:
                call = action.call  # type: ignore[union-attr]
                self.log.append(("cancel", call.name))
                self.cancels.append(call)
                for h in list(self.held):
                    if h.call is call:
                        h.cancelled = True
                        if self.honourCancel(call):
                            # Deferred.cancel() without a canceller: a
                            # CancelledError now, and the hook's own result
                            # is lost (Twisted drops it).
                            self.held.remove(h)
                            self.lostToCancel.append(h)
                            session.hookFailed(call, Failure(CancelledError()), self.clock.seconds())
            elif kind is StartTLS:
                self.log.append(("starttls", ""))
                self.startTLS += 1
            elif kind is Close:
                self.log.append(("close", ""))
                self.closed = True

    def _invoke(self, target: Any, method: str, args: tuple[Any, ...]) -> Any:
        if target is not None:
            return getattr(target, method)(*args)
        if method == "command":
            name, argument = args
            return getattr(self.host, "do_" + name)(argument)
        if method == "delay":
            return None
        if method == "logout":
            return args[0]()
        raise ValueError(method)

    def _call(self, call: Call) -> None:
        self.log.append(("call", call.name))
        self.calls.append(call)
        if self.disconnected:
            self.callsAfterDisconnect.append(call)
        value: Any = None
        failure: Failure | None = None
        try:
            value = self._invoke(call.target, call.method, call.args)
        except Exception:
            failure = Failure()
        if isinstance(value, Deferred):
            # (A portal's login answers with a Deferred; the ones used here
            # have fired already.)
            fired: list[Any] = []
            value.addBoth(fired.append)
            assert fired, f"{call!r}: the driver takes only Deferreds that have fired"
            value = fired[0]
            if isinstance(value, Failure):
                value, failure = None, value
        if self.hold(call):
            self.held.append(Held(call, value, failure))
            self.session.hookPending(call)
        elif failure is not None:
            self.session.hookFailed(call, failure)
        else:
            self.session.hookDone(call, value)

    def _notify(self, action: Notify) -> None:
        self.log.append(("notify", action.what))
        self.notifies.append(action)
        self._invoke(action.target, action.method, action.args)

    def cancelHeld(self, held: Held) -> list[Reply]:
        """The held call's Deferred was cancelled: a CancelledError comes back now."""
        self.held.remove(held)
        self.session.hookFailed(held.call, Failure(CancelledError()), self.clock.seconds())
        self.run()
        return self.replies()
