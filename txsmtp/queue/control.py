"""
The queue's control channel: AMP (:mod:`twisted.protocols.amp`) over the
UNIX socket ``DIR/control.sock`` of a queue directory.

A running server listens there (:func:`listenControl`, mode ``0600``, so
only the server's own user, and root, may connect); the ``txsmtp queue``
command (:mod:`txsmtp.cli`) connects (:func:`connectControl`) and sends one
of the commands :class:`List`, :class:`Show`, :class:`Flush`,
:class:`Hold`, :class:`Release` and :class:`Delete`.  Messages travel as
JSON: :meth:`~txsmtp.queue.model.QueuedMessage.toJSON` for a listing,
:func:`messageDetails` (the same plus the envelope) for :class:`Show`.

Both ends offer the same operations (:class:`IQueueControl`):
:class:`StoreControl` does them on a store, in the server or in the command
when no server runs; :class:`ControlClient` asks a server for them.

The socket answers these commands only.  A request with missing or
malformed arguments gets an AMP error (``BAD_REQUEST``); an unknown command
gets AMP's own ``UNHANDLED`` error; a request larger than
:data:`MAX_REQUEST_SIZE` closes the connection.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import Interface, implementer

from txsmtp.queue.errors import QueueError
from txsmtp.queue.model import QueuedMessage

__all__ = [
    "CONTROL_SOCKET",
    "MAX_REQUEST_SIZE",
    "UnknownMessageError",
    "IQueueControl",
    "StoreControl",
    "ControlClient",
    "ControlProtocol",
    "ControlFactory",
    "List",
    "Show",
    "Flush",
    "Hold",
    "Release",
    "Delete",
    "messageDetails",
    "listenControl",
    "connectControl",
]

_log = Logger(namespace="txsmtp.queue.control")

#: The control socket's name in a queue directory.
CONTROL_SOCKET = "control.sock"

#: The largest request (one AMP box, keys and values) the server reads; a
#: command with a message id needs far less.
MAX_REQUEST_SIZE = 16 * 1024

#: The most octets AMP carries in one value.
_CHUNK = amp.MAX_VALUE_LENGTH


class UnknownMessageError(QueueError):
    """No message with this id is in the queue (the id is the argument)."""


def _checkId(messageId: str) -> str:
    # Store ids are [0-9A-Za-z]; anything far off cannot name a message,
    # and must not reach a log line with its control characters.
    if not (0 < len(messageId) <= 128 and messageId.isprintable() and " " not in messageId):
        raise UnknownMessageError(messageId)
    return messageId


def messageDetails(message: QueuedMessage) -> dict[str, Any]:
    """
    What :class:`Show` answers: :meth:`QueuedMessage.toJSON
    <txsmtp.queue.model.QueuedMessage.toJSON>`, with ``ret`` and ``envid``
    (RFC 3461 §4.3, §4.4), the MAIL ``parameters``, the ``client`` (the
    connection facts of :meth:`txsmtp.envelope.Envelope.toDict`: peer, HELO
    name, TLS, authenticated identity), the server's ``queue_id``, and for
    each recipient its ``notify`` (a list of words, or ``None``) and
    ``orcpt`` (``[type, address]`` or ``None``).
    """
    data = message.toJSON()
    envelope = message.envelope or {}
    data["ret"] = message.ret
    data["envid"] = message.envid
    data["parameters"] = envelope.get("parameters") or {}
    data["client"] = envelope.get("connection") or {}
    data["queue_id"] = envelope.get("queueId")
    for out, recipient in zip(data["recipients"], message.recipients, strict=True):
        out["notify"] = list(recipient.notify) if recipient.notify is not None else None
        out["orcpt"] = list(recipient.orcpt) if recipient.orcpt is not None else None
    return data


class IQueueControl(Interface):
    """
    The operator's operations on a queue, the same whether they are done on
    a store (:class:`StoreControl`) or asked of a running server
    (:class:`ControlClient`).  Every method returns a Deferred; those that
    take a message id fail with :class:`UnknownMessageError` when there is
    no such message.
    """

    def list():
        """:return: Deferred[list[dict]]: each message's ``toJSON()``, oldest first."""

    def show(messageId):
        """:return: Deferred[dict]: :func:`messageDetails` of the message."""

    def flush(messageId=None):
        """Make deferred recipients due now and wake the scheduler.  :return: Deferred[int]: how many."""

    def hold(messageId):
        """Hold the message.  :return: Deferred[None]."""

    def release(messageId):
        """Release a held message.  :return: Deferred[None]."""

    def delete(messageId):
        """Remove the message, without any report.  :return: Deferred[None]."""


@implementer(IQueueControl)
class StoreControl:
    """
    :class:`IQueueControl` on an :class:`~txsmtp.queue.interfaces.IQueueStore`
    (open: opening and closing it is the caller's business).
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def list(self) -> defer.Deferred[list[dict[str, Any]]]:
        d = self.store.list()
        d.addCallback(lambda messages: [m.toJSON() for m in messages])
        return d

    @defer.inlineCallbacks
    def show(self, messageId: str) -> Any:
        message = yield self.store.show(_checkId(messageId))
        if message is None:
            raise UnknownMessageError(messageId)
        return messageDetails(message)

    @defer.inlineCallbacks
    def flush(self, messageId: str | None = None) -> Any:
        if messageId is not None:
            # A store answers 0 for an unknown id and for a message with
            # nothing deferred: tell them apart for the operator.
            message = yield self.store.show(_checkId(messageId))
            if message is None:
                raise UnknownMessageError(messageId)
        count = yield self.store.flush(messageId)
        _log.info("queue control: flush {target}: {count} recipients due now", target=messageId or "all", count=count)
        return int(count)

    @defer.inlineCallbacks
    def _change(self, verb: str, messageId: str) -> Any:
        done = yield getattr(self.store, verb)(_checkId(messageId))
        if not done:
            raise UnknownMessageError(messageId)
        _log.info("queue control: {verb} {messageId}", verb=verb, messageId=messageId)

    def hold(self, messageId: str) -> defer.Deferred[None]:
        return self._change("hold", messageId)

    def release(self, messageId: str) -> defer.Deferred[None]:
        return self._change("release", messageId)

    def delete(self, messageId: str) -> defer.Deferred[None]:
        return self._change("delete", messageId)


class _JSON(amp.Argument):
    """
    A JSON value, UTF-8, split over as many AMP values as it needs: AMP
    carries at most 65,535 octets in one value, and a listing of a large
    queue is longer.  The pieces go in ``NAME``, ``NAME.2``, ``NAME.3`` ...
    """

    def toBox(self, name: bytes, strings: Any, objects: dict[str, Any], proto: Any) -> None:
        value = self.retrieve(objects, name.decode("ascii"), proto)
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        strings[name] = data[:_CHUNK]
        for n, start in enumerate(range(_CHUNK, len(data), _CHUNK), 2):
            strings[name + b".%d" % n] = data[start : start + _CHUNK]

    def fromBox(self, name: bytes, strings: Any, objects: dict[str, Any], proto: Any) -> None:
        parts = [self.retrieve(strings, name, proto)]
        n = 2
        while name + b".%d" % n in strings:
            parts.append(strings.pop(name + b".%d" % n))
            n += 1
        objects[name.decode("ascii")] = json.loads(b"".join(parts).decode("utf-8"))


_ERRORS: dict[type[Exception], bytes] = {UnknownMessageError: b"UNKNOWN_MESSAGE"}


class List(amp.Command):
    """Every message in the queue: ``messages``, a list of ``toJSON()`` objects."""

    response = [(b"messages", _JSON())]


class Show(amp.Command):
    """One message: ``message``, its :func:`messageDetails`."""

    arguments = [(b"id", amp.Unicode())]
    response = [(b"message", _JSON())]
    errors = _ERRORS


class Flush(amp.Command):
    """Make deferred recipients (of message ``id``, or of all) due now: ``count`` of them."""

    arguments = [(b"id", amp.Unicode(optional=True))]
    response = [(b"count", amp.Integer())]
    errors = _ERRORS


class Hold(amp.Command):
    """Hold message ``id``."""

    arguments = [(b"id", amp.Unicode())]
    errors = _ERRORS


class Release(amp.Command):
    """Release message ``id``: its recipients are due now."""

    arguments = [(b"id", amp.Unicode())]
    errors = _ERRORS


class Delete(amp.Command):
    """Remove message ``id`` (body and all, no report)."""

    arguments = [(b"id", amp.Unicode())]
    errors = _ERRORS


class ControlProtocol(amp.AMP):
    """The server's end of a control connection: answers the commands on a :class:`StoreControl`."""

    def __init__(self, control: StoreControl) -> None:
        super().__init__()
        self.control = control
        self._requestSize = 0

    def stringReceived(self, string: bytes) -> None:
        # Bounded buffers: AMP alone would gather keys into one box without end.
        if self._requestSize > MAX_REQUEST_SIZE:
            return  # closing already
        self._requestSize += len(string) + 2
        if self._requestSize > MAX_REQUEST_SIZE:
            _log.warn("queue control: a request over {limit} octets, connection closed", limit=MAX_REQUEST_SIZE)
            if self.transport is not None:
                self.transport.loseConnection()
            return
        super().stringReceived(string)

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self._requestSize = 0
        super().ampBoxReceived(box)

    def locateResponder(self, name: bytes) -> Any:
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def guarded(box: amp.AmpBox) -> Any:
            # The arguments are parsed before the responder runs; a request
            # that does not parse is the client's error, not ours.
            try:
                return responder(box)
            except (KeyError, ValueError, TypeError, UnicodeError) as e:
                return defer.fail(amp.RemoteAmpError(b"BAD_REQUEST", f"malformed {name.decode('ascii', 'replace')} request: {e!r}"))

        return guarded

    @List.responder
    def _list(self) -> Any:
        return self.control.list().addCallback(lambda messages: {"messages": messages})

    @Show.responder
    def _show(self, id: str) -> Any:
        return self.control.show(id).addCallback(lambda message: {"message": message})

    @Flush.responder
    def _flush(self, id: str | None) -> Any:
        return self.control.flush(id).addCallback(lambda count: {"count": count})

    @Hold.responder
    def _hold(self, id: str) -> Any:
        return self.control.hold(id).addCallback(lambda _: {})

    @Release.responder
    def _release(self, id: str) -> Any:
        return self.control.release(id).addCallback(lambda _: {})

    @Delete.responder
    def _delete(self, id: str) -> Any:
        return self.control.delete(id).addCallback(lambda _: {})


class ControlFactory(Factory):
    """Makes a :class:`ControlProtocol` per connection, all on one store."""

    # No "Starting factory" lines: the server's start-up summary says it.
    noisy = False

    def __init__(self, store: Any) -> None:
        self.control = StoreControl(store)

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self.control)


def listenControl(store: Any, path: str, reactor: Any = None) -> defer.Deferred[IListeningPort]:
    """
    Listen on the UNIX socket ``path`` (mode ``0600``) for control
    connections to ``store``.  Call it once the store is open: the caller
    owns the queue then, so a socket left at ``path`` by a process that died
    is stale and is removed first.  Stopping the port removes the socket.

    :return: a Deferred firing with the
        :class:`~twisted.internet.interfaces.IListeningPort`.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        address, directory = _addressOf(path)
    except OSError as e:
        return defer.fail(e)
    endpoint = UNIXServerEndpoint(reactor, address, mode=0o600)
    d = endpoint.listen(ControlFactory(store))
    if directory is None:
        return d

    def listening(port: Any) -> Any:
        # The port removes its socket when it stops, through the directory
        # descriptor: close that only afterwards.
        stopListening = port.stopListening

        def stop() -> defer.Deferred[None]:
            return defer.maybeDeferred(stopListening).addBoth(_closing, directory)

        port.stopListening = stop
        return port

    def failed(f: Any) -> Any:
        os.close(directory)
        return f

    return d.addCallbacks(listening, failed)


#: The longest socket path used as it is (``sun_path`` holds 108 octets
#: on Linux, with its final NUL).
_MAX_SOCKET_PATH = 100


def _addressOf(path: str) -> tuple[str, int | None]:
    """
    The address to bind or connect to for the socket ``path``, and a
    descriptor to close once done with it.  A path too long for a UNIX
    socket address (a queue deep in a file system) is reached through
    ``/proc/self/fd/N/``, N a descriptor of its directory.
    """
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH or not os.path.isdir("/proc/self/fd"):
        return path, None
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{directory}/{os.path.basename(path)}", directory


def _closing(result: Any, directory: int) -> Any:
    try:
        os.close(directory)
    except OSError:
        pass
    return result


@implementer(IQueueControl)
class ControlClient:
    """
    :class:`IQueueControl` asked of a running server over a connected AMP
    protocol.  Each call fails with :class:`defer.TimeoutError
    <twisted.internet.defer.TimeoutError>` when no answer comes within
    ``timeout`` seconds.
    """

    def __init__(self, protocol: amp.AMP, reactor: Any, timeout: float = 300.0) -> None:
        self.protocol = protocol
        self.reactor = reactor
        self.timeout = timeout

    def _call(self, command: type[amp.Command], **kwargs: Any) -> defer.Deferred[Any]:
        d = self.protocol.callRemote(command, **kwargs)
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=self._timedOut)
        return d

    def _timedOut(self, result: Any, timeout: float) -> Any:
        self.close()
        raise defer.TimeoutError(f"the server did not answer within {timeout:g} seconds")

    def list(self) -> defer.Deferred[list[dict[str, Any]]]:
        return self._call(List).addCallback(lambda answer: answer["messages"])

    def show(self, messageId: str) -> defer.Deferred[dict[str, Any]]:
        return self._call(Show, id=messageId).addCallback(lambda answer: answer["message"])

    def flush(self, messageId: str | None = None) -> defer.Deferred[int]:
        return self._call(Flush, id=messageId).addCallback(lambda answer: answer["count"])

    def hold(self, messageId: str) -> defer.Deferred[None]:
        return self._call(Hold, id=messageId).addCallback(lambda _: None)

    def release(self, messageId: str) -> defer.Deferred[None]:
        return self._call(Release, id=messageId).addCallback(lambda _: None)

    def delete(self, messageId: str) -> defer.Deferred[None]:
        return self._call(Delete, id=messageId).addCallback(lambda _: None)

    def close(self) -> None:
        """Close the connection."""
        transport = self.protocol.transport
        if transport is not None:
            transport.loseConnection()


def connectControl(path: str, reactor: Any = None, timeout: float = 300.0) -> defer.Deferred[ControlClient]:
    """
    Connect to the control socket ``path``.

    :param timeout: how long to wait for the connection, and then for each
        answer, in seconds.
    :return: a Deferred firing with a :class:`ControlClient`, or failing
        as the connection did (e.g.
        :class:`~twisted.internet.error.ConnectionRefusedError` for a socket
        no server listens on any more).
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    try:
        address, directory = _addressOf(path)
    except OSError as e:
        return defer.fail(e)
    endpoint = UNIXClientEndpoint(reactor, address, timeout=max(1, int(timeout)))
    d = connectProtocol(endpoint, amp.AMP())
    if directory is not None:
        d.addBoth(_closing, directory)
    d.addCallback(lambda protocol: ControlClient(protocol, reactor, timeout))
    return d
