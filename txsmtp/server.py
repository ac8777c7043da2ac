"""
The ESMTP server protocol: Twisted glue around a
:class:`~txsmtp.session.core.ServerSession`.

The session (:mod:`txsmtp.session`) holds every rule of the conversation
and does no I/O.  :class:`ESMTPServer` carries octets from the transport
into it, executes the actions it asks for (hook calls, clean-ups, STARTTLS,
close), writes its replies, and owns what belongs to Twisted: the
transport, TLS, the producer that gives back-pressure in both directions,
and the clock.  Its settings come from :class:`SMTPFactory`.

Extending it: a subclass adds a command with a method
``do_VERB(self, argument)`` (it may return a Deferred or be ``async def``;
replies stay in order either way) and its states in :attr:`~ESMTPServer.allowedStates`,
an extension keyword by overriding :meth:`~ESMTPServer.extensions`, and a different
``Received:`` or greeting by overriding :meth:`~ESMTPServer.receivedHeader` or
:meth:`~ESMTPServer.greeting`.  See ``docs/architecture.rst``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from twisted.internet import defer, interfaces, task
from twisted.internet import error as error_
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp._io import canWriteDirectly, writeNow
from txsmtp._proxy import compactPeer, forwardHandshake, pendingProxyHeader, whenProxyHeaderRead
from txsmtp.envelope import ConnectionInfo, Envelope, TLSInfo
from txsmtp.errors import SMTPError
from txsmtp.serverfactory import SMTPFactory
from txsmtp.serverhost import SessionHost
from txsmtp.session.actions import Action, Call, Cancel, Close, Notify, StartTLS
from txsmtp.session.commands import CommandTable
from txsmtp.session.core import ServerSession
from txsmtp.session.table import COMMANDS, State
from txsmtp.tls import tlsInfo

__all__ = ["ESMTPServer", "SMTPFactory", "State"]

_log = Logger(namespace="txsmtp.server")


@implementer(interfaces.IHandshakeListener, interfaces.IPushProducer)
class ESMTPServer(SessionHost, Protocol):
    """
    One ESMTP server session.

    The public surface: :meth:`reply`, :meth:`resetTransaction`,
    :attr:`state`, :attr:`connection`, :attr:`session` (the delivery
    session), :attr:`envelope`; and the methods a subclass overrides:
    :meth:`extensions`, :meth:`greeting`, :meth:`receivedHeader`,
    :meth:`checkMailParameters`, :meth:`authMechanisms`, and ``do_VERB``.
    """

    #: The states in which a command of this class's own (``do_VERB``) may
    #: be used; one missing here is allowed in every command state.  The
    #: built-in commands' states are in :data:`txsmtp.session.table.COMMANDS`.
    allowedStates: ClassVar[dict[str, frozenset[State]]] = {}

    #: The word in ``Received: ... with`` (RFC 3848), before S/A suffixes.
    receivedProtocol = "ESMTP"

    #: Speak LMTP (RFC 2033): LHLO, and one reply per recipient at the end.
    lmtp = False

    @property
    def _protocolName(self) -> str:
        # ConnectionInfo.protocol: "SMTP" or "LMTP" (a constant string, not a
        # new one per connection).
        return "LMTP" if self.lmtp else "SMTP"

    #: The class of the session this protocol runs.
    sessionFactory: ClassVar[type[ServerSession]] = ServerSession

    #: Pause reading when this many octets of pipelined input wait unprocessed.
    maxPendingInput = 256 * 1024

    #: On a plain TCP transport with nothing queued, hand replies to the
    #: socket at once instead of waiting for the reactor's next write cycle.
    directWrites = True

    factory: SMTPFactory
    connection: ConnectionInfo
    # A TCP, UNIX, TLS or PROXY-wrapped transport: more than ITransport says.
    transport: Any
    _clock: Any

    __slots__ = (
        "factory", "transport", "connected", "connection", "_session", "_clock", "_directWrites",
        "_handshakePending", "_disconnected", "_closeDeferreds", "_registered", "_running",
        "_inputPaused", "_outputPaused", "_readPaused",
    )  # fmt: skip

    def __init__(self) -> None:
        self.factory = None  # type: ignore[assignment]
        self.transport = None
        self.connected = 0
        self._session: ServerSession | None = None
        self._directWrites = False
        self._handshakePending = False
        self._disconnected = False
        self._closeDeferreds: list[Deferred[None]] | None = None
        self._registered = False
        self._running = False
        self._inputPaused = False
        self._outputPaused = False
        self._readPaused = False

    # -- the public view of the session -------------------------------------------

    @property
    def state(self) -> State:
        """The session's :class:`~txsmtp.session.table.State`."""
        return self._session.state if self._session is not None else State.INITIAL

    @property
    def session(self) -> Any:
        """The delivery session (an ``IDeliverySession``, or the avatar after AUTH)."""
        return self._session.deliverySession if self._session is not None else None

    @property
    def envelope(self) -> Envelope | None:
        """The envelope of the transaction under way, or ``None``."""
        t = self._session.transaction if self._session is not None else None
        return t.envelope if t is not None else None

    def reply(self, code: int, enhanced: str | None, text: str | list[str]) -> None:
        """
        Queue a reply; it is written, batched with its neighbours, once the
        input is drained.

        :param enhanced: the enhanced status code, or ``None`` for none.
        :param text: a line, or a list of lines for a multi-line reply.
        """
        assert self._session is not None
        self._session.reply(code, enhanced, text)

    def replyError(self, error: SMTPError) -> None:
        """Queue the reply an :class:`~txsmtp.errors.SMTPError` describes."""
        assert self._session is not None
        self._session.replyError(error)

    def resetTransaction(self) -> None:
        """Abandon the current transaction (and tell the delivery session)."""
        assert self._session is not None
        self._session.resetTransaction()

    # -- connection life -----------------------------------------------------------

    @classmethod
    def commandTable(cls) -> CommandTable:
        """The command table of this class (built once): the session's commands and this class's own ``do_VERB`` methods."""
        table = cls.__dict__.get("_commandTable")
        if table is None:
            sessionClass = cls.sessionFactory
            builtin = {verb: getattr(sessionClass, "do_" + verb) for verb in COMMANDS}
            extra = {
                name[3:]: cls.allowedStates.get(name[3:])
                for name in dir(cls)
                if name.startswith("do_") and name[3:].isalpha()
            }
            table = CommandTable(builtin, extra, sessionClass._extraCommand, cls.lmtp)
            type.__setattr__(cls, "_commandTable", table)
        return table

    def connectionMade(self) -> None:
        f = self.factory
        transport = self.transport
        self._clock = f.clock
        self._directWrites = self.directWrites and canWriteDirectly(transport)
        self.connection = ConnectionInfo(
            transport.getPeer(), None, self._protocolName, f.queueIds.next(), transport
        )
        if interfaces.ISSLTransport.providedBy(transport):
            # Implicit TLS (port 465): the facts arrive with handshakeCompleted.
            self.connection.tls = TLSInfo()
            self._handshakePending = True
        now = self._clock.seconds()
        self._session = self.sessionFactory(
            f, self, self.connection, self.commandTable(), now, self._execute
        )
        f._register(self)
        self._register()
        f.events.connectionMade(self.connection, self._protocolName)
        proxy = pendingProxyHeader(transport)
        if proxy is not None:
            # Behind a PROXY-protocol listener: no greeting and no session
            # before the header names the client.
            whenProxyHeaderRead(proxy, self._proxyHeaderRead)
            return
        self._inSession(self._session.start, now)

    def _proxyHeaderRead(self) -> None:
        assert self._session is not None
        # The connection's log line names the proxy too.
        self._session.proxyPeer = self.connection.peerHost
        self.connection.peer = compactPeer(self.transport.getPeer())
        self._inSession(self._session.start, self._clock.seconds())

    def dataReceived(self, data: bytes) -> None:
        session = self._session
        assert session is not None
        session.receive(data, self._clock.seconds())
        self._run()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._disconnected = True
        session = self._session
        assert session is not None
        events = self.factory.events
        if self._handshakePending:
            events.tlsDone(self.connection, False)
            # Worth seeing for an MX: a sender that cannot do TLS with us.
            _log.info(
                "{text}",
                text=f"TLS handshake with {self.connection.peerHost} did not complete: "
                f"{reason.getErrorMessage() if reason is not None else 'connection closed'}",
                peer=self.connection.peerHost,
                session=self.connection.sessionId,
            )
        self.factory._unregister(self)
        events.connectionLost(self.connection, self._protocolName)
        # The transport forgets its producer itself as it closes.
        self._registered = False
        error = None
        if reason is not None and not reason.check(error_.ConnectionDone):
            error = reason.getErrorMessage()
        self._inSession(session.connectionLost, self._clock.seconds(), error)
        waiting, self._closeDeferreds = self._closeDeferreds, None
        for d in waiting or ():
            d.callback(None)

    # -- running the session ----------------------------------------------------------

    def _run(self) -> None:
        """Let the session work until it waits; then write its replies."""
        if self._running or (self._outputPaused and not self._disconnected):
            # Called back from inside the session (a cancelled Deferred
            # answering at once): the loop already under way goes on.  Or
            # the client is not reading: wait for resumeProducing.
            return
        session = self._session
        assert session is not None
        self._running = True
        try:
            data = session.advance()
        finally:
            self._running = False
        if self._disconnected:
            if not session.inFlight:
                session.detach()
            return
        if data:
            if self._directWrites:
                # Saves the reactor a writability round trip per reply batch.
                writeNow(self.transport, data)
            else:
                self.transport.write(data)
        paused = session.wantsInputPaused
        if paused is not self._inputPaused:
            self._setInputPaused(paused)

    def _inSession(self, method: Any, *args: Any) -> None:
        """Call into the session (its actions run as it goes), then run it."""
        if self._running:
            method(*args)
            return
        self._running = True
        try:
            method(*args)
        finally:
            self._running = False
        self._run()

    def _execute(self, action: Action) -> None:
        """Carry out one of the session's actions (it calls this as it goes)."""
        kind = type(action)
        if kind is Call:
            self._call(action)  # type: ignore[arg-type]
        elif kind is Notify:
            self._notify(action)  # type: ignore[arg-type]
        elif kind is Cancel:
            call = action.call  # type: ignore[union-attr]
            d, call.pending = call.pending, None
            if d is not None:
                d.cancel()
        elif kind is StartTLS:
            self._startTLS()
        elif kind is Close:
            self._close()

    def _invoke(self, target: Any, method: str, args: tuple[Any, ...]) -> Any:
        if target is not None:
            return getattr(target, method)(*args)
        # Services of the glue itself.
        if method == "command":
            name, argument = args
            return getattr(self, "do_" + name)(argument)
        if method == "delay":
            return task.deferLater(self._clock, args[0], lambda: None)
        if method == "logout":
            return args[0]()
        raise ValueError(f"unknown service {method!r}")

    def _call(self, call: Call) -> None:
        session = self._session
        assert session is not None
        target = call.target
        try:
            if target is not None:
                result = getattr(target, call.method)(*call.args)
            else:
                result = self._invoke(target, call.method, call.args)
        except Exception:
            session.hookFailed(call, Failure())
            return
        if result is None or not (isinstance(result, Deferred) or inspect.iscoroutine(result)):
            session.hookDone(call, result)
            return
        d = result if isinstance(result, Deferred) else defer.ensureDeferred(result)
        fired: list[bool] = []

        def done(value: Any) -> None:
            call.pending = None
            fired.append(True)
            if not later or self._running:
                # At once, or from inside the session (a Cancel): the loop
                # under way goes on.
                self._resolve(call, value)
                return
            # Fired later, from the reactor: go on where the session stopped.
            self._running = True
            try:
                self._resolve(call, value)
            finally:
                self._running = False
            self._run()

        later = False
        d.addBoth(done)
        if not fired:
            call.pending = d
            later = True
            session.hookPending(call)

    def _resolve(self, call: Call, value: Any) -> None:
        session = self._session
        assert session is not None
        now = self._clock.seconds()
        if isinstance(value, Failure):
            session.hookFailed(call, value, now)
        else:
            session.hookDone(call, value, now)

    def _notify(self, action: Notify) -> None:
        target = action.target
        try:
            if target is not None:
                getattr(target, action.method)(*action.args)
            else:
                self._invoke(target, action.method, action.args)
        except Exception:
            _log.failure("{what} failed", what=action.what)

    # -- output ------------------------------------------------------------------------

    def _flush(self) -> None:
        assert self._session is not None
        data = self._session.takeOutput()
        if not data:
            return
        if self._directWrites:
            # Saves the reactor a writability round trip per reply batch.
            writeNow(self.transport, data)
        else:
            self.transport.write(data)

    def _close(self) -> None:
        """Write what is queued and close once it is sent."""
        if self._disconnected:
            # A Close that waited while the client did not read its replies:
            # the connection is gone, and its (TLS) transport with it.
            return
        self._flush()
        self._unregister()
        if self._handshakePending:
            # A TLS handshake that never finished: nothing can be said to
            # this client, and a graceful close would wait for it forever.
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- back-pressure -----------------------------------------------------------------
    #
    # Reading stops for two reasons: the session wants it (input piles up
    # behind a slow hook, or the receiver pushes back), or the client does
    # not read its replies (the transport pauses us as its producer).  The
    # second holds under TLS too, once the handshake is done.

    def _register(self) -> None:
        if not self._registered and not self._handshakePending and not self._disconnected:
            self.transport.registerProducer(self, True)
            self._registered = True

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        if self._outputPaused:
            self._outputPaused = False
            self._updateReading()

    def _setInputPaused(self, paused: bool) -> None:
        if paused is not self._inputPaused:
            self._inputPaused = paused
            self._updateReading()

    def _updateReading(self) -> None:
        paused = self._inputPaused or self._outputPaused
        if paused is self._readPaused or self._disconnected:
            return
        if not paused and self.state is State.CLOSED:
            return
        self._readPaused = paused
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """The client is not reading its replies: stop reading its commands."""
        self._outputPaused = True
        self._updateReading()

    def resumeProducing(self) -> None:
        """The replies have drained: read commands again."""
        if self._outputPaused:
            self._outputPaused = False
            self._updateReading()
            self._run()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the rest."""

    # -- TLS ---------------------------------------------------------------------------

    def _startTLS(self) -> None:
        self._flush()
        # No producer during the handshake: a paused reader would stall it.
        self._unregister()
        self._handshakePending = True
        forwardHandshake(self.transport, self)
        self.transport.startTLS(self.factory.tls)

    def handshakeCompleted(self) -> None:
        """Twisted's ``IHandshakeListener``: record the TLS facts."""
        self._handshakePending = False
        assert self._session is not None
        self.factory.events.tlsDone(self.connection, True)
        self._session.tlsEstablished(tlsInfo(self.transport))
        self._register()

    # -- timeouts and shutdown ------------------------------------------------------------

    def checkTimeouts(self, now: float) -> None:
        """Enforce the session's timeouts; called by the factory's sweep."""
        session = self._session
        if self._disconnected or session is None:
            return
        if session.state is State.CLOSED:
            # Closing: under TLS, Twisted waits for the client's close_notify
            # before it closes the socket.  RFC 5321 §3.8 has the server
            # close, so a client that never answers is cut off.
            if session.closeOverdue(now):
                self.transport.abortConnection()
            return
        self._inSession(session.checkTime, now)

    def timeoutConnection(self) -> None:
        """The client said nothing for too long: ``421 4.4.2`` and close."""
        assert self._session is not None
        self._session.giveUp(
            f"{self.factory.hostname} Timeout waiting for the client, closing connection", "timeout"
        )
        self._run()

    def shutdown(self) -> Deferred[None]:
        """
        Close gracefully: at once when no transaction is under way, else
        after the current transaction is answered.  Fires when the
        connection is closed.
        """
        d: Deferred[None] = Deferred()
        if self._disconnected:
            d.callback(None)
            return d
        if self._closeDeferreds is None:
            self._closeDeferreds = []
        self._closeDeferreds.append(d)
        assert self._session is not None
        self._inSession(self._session.shutdown)
        return d

    def forceClose(self) -> None:
        """Close now, abandoning any transaction (``421 4.3.2``)."""
        if self._disconnected:
            return
        if self.state is not State.CLOSED:
            assert self._session is not None
            self._session.giveUp(
                f"{self.factory.hostname} Service shutting down, closing connection",
                "shutdown",
                "4.3.2",
            )
            self._run()
        else:
            self.transport.abortConnection()


SMTPFactory.protocol = ESMTPServer
