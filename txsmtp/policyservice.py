"""
A client of Postfix's SMTP access policy delegation protocol, as a guard
(:mod:`txsmtp.guards`): the server asks an external policy service
(postgrey, policyd-spf, ...) about each recipient, and optionally about
DATA and the end of the message, and does what it answers.

Theory of operation
-------------------

The protocol (Postfix's SMTPD_POLICY_README): the client sends
``name=value`` lines, ended by an empty line; the service answers one
``action=...`` line (other attributes are ignored), ended by an empty
line, and keeps the connection open for the next request.  Lines end in
LF; a value never holds a line end (one would be cut into a new
attribute), so line ends in values are replaced by spaces.

:class:`PolicyClient` keeps connections to one service (a
``clientFromString`` endpoint description: ``tcp:HOST:PORT``,
``unix:PATH``): a small pool (``connections``, 1 by default), each made
when a request finds none idle and kept for the next requests, each
carrying one request at a time (when all are busy, requests wait their
turn).  Each request has a
time limit, waiting for its turn and connecting included; a request that
timed out closes the connection (a late answer would be taken for the next
request's).  A request sent on a connection that was made earlier and
turns out closed by the service (an idle connection it dropped) is sent
once more on a new connection.

:class:`PolicyGuard` asks its clients in order at the stages it is given
(``RCPT``: :meth:`~PolicyGuard.checkRecipient`; ``DATA``:
:meth:`~PolicyGuard.checkData`; ``END-OF-MESSAGE``:
:meth:`~PolicyGuard.checkMessage`).  :func:`interpretAction` turns an
answer into a :class:`Verdict`; the actions are those of Postfix's
access(5): ``OK`` stops the asking (the later services are not asked,
as a ``permit`` ends Postfix's restriction list), ``DUNNO`` asks the
next, ``REJECT``, ``DEFER``, ``DEFER_IF_PERMIT`` and ``4NN``/``5NN``
refuse, ``PREPEND`` adds a header field (through
:attr:`~txsmtp.envelope.Envelope.addedHeaders`, which only the relay queue
puts into the message: without the queue the field is logged as not
added), ``WARN`` logs, and ``HOLD``, ``DISCARD``, ``FILTER``,
``REDIRECT``, ``BCC``, ``DEFER_IF_REJECT`` are logged as not supported
and the asking goes on.  An action that is none of these is what Postfix
calls a server configuration error: ``451 4.3.5``.  When a service
cannot be reached, breaks the protocol or does not answer in time, the
guard does its *default* action (``DUNNO`` unless configured otherwise).

The ``instance`` attribute names the transaction: the same for every
request about one message (its recipients, its DATA, its end), a new one
for the next transaction, so a service can tell one message from
another (policyd-spf prepends its field once per instance).
``recipient_count`` is 0 at RCPT and the number of accepted recipients
at DATA and END-OF-MESSAGE, where ``recipient`` is the recipient when
there is just one and empty otherwise, as Postfix sends them.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from txsmtp.envelope import ConnectionInfo, Envelope, Recipient
from txsmtp.errors import SMTPError

__all__ = [
    "PolicyClient",
    "PolicyGuard",
    "PolicyServiceError",
    "Verdict",
    "formatRequest",
    "interpretAction",
    "policyConnections",
]

log = Logger(namespace="txsmtp.policyservice")

#: Longest answer line taken (Postfix's own limit is a few kB too).
MAX_LINE = 4096
#: Most attributes taken in one answer.
MAX_ATTRIBUTES = 32

STAGES = ("RCPT", "DATA", "END-OF-MESSAGE")

#: Actions logged and ignored (the asking goes on).
UNSUPPORTED = frozenset({"HOLD", "DISCARD", "FILTER", "REDIRECT", "BCC", "DEFER_IF_REJECT"})

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_NUMERIC = re.compile(r"^([45])(\d\d)(?:\s+|$)")
_HEADER = re.compile(r"^[\x21-\x39\x3b-\x7e]+:")


class PolicyServiceError(Exception):
    """The service could not be asked or answered outside the protocol."""


class _ConnectionLost(PolicyServiceError):
    """The connection ended before the answer."""


@dataclass(frozen=True)
class Verdict:
    """
    What an answer asks for.

    :ivar kind: ``"ok"`` (accept, ask no further service), ``"dunno"``
        (ask the next), ``"refuse"``, ``"prepend"``, ``"warn"``,
        ``"unsupported"``.
    :ivar code: the reply code of a refusal.
    :ivar enhanced: its enhanced status code (RFC 3463).
    :ivar text: the refusal's or the warning's text, the header field of a
        prepend, the action of an unsupported one.
    """

    kind: str
    code: int = 0
    enhanced: str = ""
    text: str = ""

    def error(self) -> SMTPError:
        """The refusal as an :class:`~txsmtp.errors.SMTPError`."""
        return SMTPError(self.code, self.enhanced, self.text)


def _refusal(code: int, default: str, text: str, fallback: str) -> Verdict:
    """``code`` with the enhanced code at the start of ``text`` (its class made to agree) or ``default``."""
    enhanced = default
    m = _ENHANCED.match(text)
    if m:
        # Postfix replaces a class that disagrees with the reply code's.
        enhanced = f"{str(code)[0]}.{m.group(2)}.{m.group(3)}"
        text = text[m.end() :]
    return Verdict("refuse", code, enhanced, text.strip() or fallback)


def interpretAction(action: str) -> Verdict:
    """
    The :class:`Verdict` of an ``action=`` value (Postfix's access(5)
    actions; the keywords in any case).
    """
    action = action.strip()
    word, _, rest = action.partition(" ")
    if "\t" in word:
        word, _, more = word.partition("\t")
        rest = (more + " " + rest).strip()
    rest = rest.strip()
    keyword = word.upper()
    if keyword in ("OK", "PERMIT") or (word.isdigit() and not _NUMERIC.match(action)):
        # access(5): an all-numerical result is treated as OK.
        return Verdict("ok")
    if keyword == "DUNNO" or not action:
        return Verdict("dunno")
    if keyword == "REJECT":
        return _refusal(554, "5.7.1", rest, "Access denied")
    if keyword in ("DEFER", "DEFER_IF_PERMIT"):
        return _refusal(450, "4.7.1", rest, "Try again later")
    m = _NUMERIC.match(action)
    if m:
        code = int(m.group(1) + m.group(2))
        if code in (421, 521):
            # A connection-closing code is Postfix's business; here it is a plain refusal.
            code = 450 if code == 421 else 550
        return _refusal(code, f"{m.group(1)}.7.1", action[m.end() :], "Access denied")
    if keyword == "PREPEND":
        if not _HEADER.match(rest):
            return Verdict("refuse", 451, "4.3.5", "Server configuration error")
        return Verdict("prepend", text=rest)
    if keyword == "WARN":
        return Verdict("warn", text=rest)
    if keyword in UNSUPPORTED:
        return Verdict("unsupported", text=action)
    # Postfix takes anything else for a restriction class, and logs a
    # configuration error when it is none.
    return Verdict("refuse", 451, "4.3.5", "Server configuration error")


def formatRequest(attributes: Mapping[str, str]) -> bytes:
    """A request: ``name=value`` lines, an empty line; line ends in values become spaces."""
    lines = []
    for name, value in attributes.items():
        clean = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}={clean}\n")
    return "".join(lines).encode("utf-8", "surrogateescape") + b"\n"


class _PolicyProtocol(LineOnlyReceiver):
    """One connection to a service: one request at a time."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    transport: Any

    def __init__(self) -> None:
        self._pending: defer.Deferred[dict[str, str]] | None = None
        self._answer: dict[str, str] = {}
        self.connected = False
        self.used = 0
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.connected = True

    def ask(self, request: bytes) -> defer.Deferred[dict[str, str]]:
        if self._pending is not None:
            raise RuntimeError("a request is already waiting for its answer")
        self.used += 1
        self._answer = {}
        self._pending = defer.Deferred(self._cancel)
        self.transport.write(request)
        return self._pending

    def _cancel(self, pending: defer.Deferred[dict[str, str]]) -> None:
        # The answer may still come: the connection cannot carry another request.
        self._pending = None
        self.connected = False
        self.transport.abortConnection()

    def _fail(self, why: str, error: type[PolicyServiceError] = PolicyServiceError) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.errback(Failure(error(why)))

    def _drop(self, why: str) -> None:
        """The service broke the protocol: fail the request, end the connection."""
        self.connected = False
        self._fail(why)
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._pending is None:
            self._drop("answer without a request")
            return
        if not line:
            pending, self._pending = self._pending, None
            pending.callback(self._answer)
            return
        name, sep, value = line.decode("utf-8", "replace").partition("=")
        if not sep or len(self._answer) >= MAX_ATTRIBUTES:
            self._drop(f"not a policy answer: {line[:80]!r}")
            return
        self._answer[name.strip()] = value

    def lineLengthExceeded(self, line: bytes) -> None:
        self._drop(f"answer line longer than {MAX_LINE} bytes")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self._fail(f"connection lost: {reason.getErrorMessage()}", _ConnectionLost)
        self.lost.callback(None)


class PolicyClient:
    """
    The persistent connections to one policy service (see the module
    documentation).

    :param description: a client endpoint description (``tcp:HOST:PORT``,
        ``unix:PATH``, anything ``clientFromString`` takes).
    :param timeout: seconds for one request: its turn, the connection and
        the answer.
    :param connections: the most connections kept at once (each carries
        one request at a time).
    """

    def __init__(self, reactor: Any, description: str, timeout: float = 10.0, connections: int = 1) -> None:
        if connections < 1:
            raise ValueError("a policy client needs at least one connection")
        self.reactor = reactor
        self.description = description
        self.timeout = timeout
        self.connections = connections
        self._endpoint = clientFromString(reactor, description)
        self._turns = defer.DeferredSemaphore(connections)
        #: connected protocols with no request in flight
        self._idle: list[_PolicyProtocol] = []
        #: every protocol made and not yet lost
        self._open: set[_PolicyProtocol] = set()

    def ask(self, attributes: Mapping[str, str]) -> defer.Deferred[dict[str, str]]:
        """
        Send one request; fires with the answer's attributes, or fails with
        :class:`PolicyServiceError` (or :class:`~twisted.internet.defer.TimeoutError`).
        """
        clock: IReactorTime = self.reactor
        d = defer.Deferred.fromCoroutine(self._ask(formatRequest(attributes)))
        d.addTimeout(self.timeout, clock, onTimeoutCancel=self._timedOut)
        return d

    def _timedOut(self, result: Any, timeout: float) -> Any:
        # The cancelled request aborted its own connection (a late answer
        # would be taken for the next request's); the others are untouched.
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            return Failure(defer.TimeoutError(f"{self.description} did not answer within {timeout}s"))
        return result

    async def _ask(self, request: bytes) -> dict[str, str]:
        await self._turns.acquire()
        try:
            protocol = await self._connection()
            try:
                answer = await protocol.ask(request)
            except _ConnectionLost:
                if protocol.used == 1:
                    raise
                # The service closed a connection kept from earlier: once more on a new one.
                protocol = await self._connection(fresh=True)
                answer = await protocol.ask(request)
            if protocol.connected:
                self._idle.append(protocol)
            return answer
        finally:
            self._turns.release()

    async def _connection(self, fresh: bool = False) -> _PolicyProtocol:
        while self._idle and not fresh:
            protocol = self._idle.pop()
            if protocol.connected:
                return protocol
        try:
            protocol = await self._endpoint.connect(Factory.forProtocol(_PolicyProtocol))
        except defer.CancelledError:
            raise
        except Exception as e:
            raise PolicyServiceError(f"cannot connect to {self.description}: {e}") from None
        self._open.add(protocol)
        protocol.lost.addCallback(lambda _: self._open.discard(protocol))
        return protocol

    @property
    def openConnections(self) -> int:
        """How many connections to the service are open."""
        return len(self._open)

    def close(self) -> defer.Deferred[Any]:
        """Close the connections (later requests make new ones); fires once they are closed."""
        self._idle = []
        closing = list(self._open)
        for protocol in closing:
            protocol.transport.abortConnection()
        return defer.gatherResults([p.lost for p in closing] + [defer.succeed(None)])

    def __repr__(self) -> str:
        return f"PolicyClient({self.description!r})"


def _protocolName(connection: ConnectionInfo) -> str:
    if connection.protocol == "LMTP":
        return "LMTP"
    return "ESMTP" if connection.esmtp else "SMTP"


class PolicyGuard:
    """
    Asks policy services about transactions (see the module documentation).

    :param clients: the :class:`PolicyClient` objects, asked in order.
    :param default: the action when a service fails (an access(5) action).
    :param stages: some of ``RCPT``, ``DATA``, ``END-OF-MESSAGE``.
    :param prepends: whether ``PREPEND`` fields reach the message (the
        delivery is the relay queue).
    """

    def __init__(
        self,
        clients: Sequence[PolicyClient],
        default: str = "DUNNO",
        stages: Iterable[str] = ("RCPT",),
        prepends: bool = True,
    ) -> None:
        self.clients = list(clients)
        self.default = default
        self.defaultVerdict = interpretAction(default)
        self.stages = frozenset(stages)
        unknown = self.stages - set(STAGES)
        if unknown:
            raise ValueError(f"unknown policy stage(s): {', '.join(sorted(unknown))}")
        self.prepends = prepends
        self._transactions: dict[int, tuple[Envelope, str]] = {}
        self._counter = itertools.count(1)
        self._prefix = f"{os.getpid():x}.{os.urandom(4).hex()}"

    def instance(self, connection: ConnectionInfo, envelope: Envelope) -> str:
        """The ``instance`` attribute of ``envelope``'s transaction."""
        known = self._transactions.get(id(connection))
        if known is not None and known[0] is envelope:
            return known[1]
        name = f"{self._prefix}.{next(self._counter)}"
        self._transactions[id(connection)] = (envelope, name)
        return name

    def attributes(
        self, stage: str, connection: ConnectionInfo, envelope: Envelope, recipient: Recipient | None
    ) -> dict[str, str]:
        """The request for ``stage`` (names and meanings as Postfix sends them)."""
        peer = connection.peer
        host = connection.host
        if recipient is not None:
            rcpt = str(recipient.address)
        elif len(envelope.recipients) == 1:
            rcpt = str(envelope.recipients[0].address)
        else:
            rcpt = ""
        tls = connection.tls
        size = envelope.parameters.size
        return {
            "request": "smtpd_access_policy",
            "protocol_state": stage,
            "protocol_name": _protocolName(connection),
            "helo_name": connection.heloName or "",
            "queue_id": envelope.queueId or "",
            "sender": str(envelope.sender) if envelope.sender is not None else "",
            "recipient": rcpt,
            "recipient_count": "0" if stage == "RCPT" else str(len(envelope.recipients)),
            "client_address": connection.peerHost if getattr(peer, "host", None) else "",
            "client_name": "unknown",
            "reverse_client_name": "unknown",
            "client_port": str(getattr(peer, "port", "") or ""),
            "server_address": str(getattr(host, "host", "") or ""),
            "server_port": str(getattr(host, "port", "") or ""),
            "instance": self.instance(connection, envelope),
            "sasl_method": "",
            "sasl_username": connection.authenticated or "",
            "sasl_sender": "",
            "size": str(size) if size is not None else "0",
            "ccert_subject": "",
            "ccert_issuer": "",
            "ccert_fingerprint": "",
            "encryption_protocol": (tls.version or "") if tls else "",
            "encryption_cipher": (tls.cipher or "") if tls else "",
            "encryption_keysize": "0",
            "etrn_domain": "",
            "stress": "",
        }

    async def _check(self, stage: str, connection: ConnectionInfo, envelope: Envelope, recipient: Recipient | None) -> None:
        if stage not in self.stages:
            return
        attributes = self.attributes(stage, connection, envelope, recipient)
        for client in self.clients:
            try:
                answer = await client.ask(attributes)
                action = answer.get("action", "")
                if "action" not in answer:
                    raise PolicyServiceError(f"answer without an action: {answer!r}")
                verdict = interpretAction(action)
            except (PolicyServiceError, defer.TimeoutError) as e:
                log.warn(
                    "policy service {service} failed ({error}): default action {default}",
                    service=client.description, error=str(e), default=self.default,
                    session=connection.sessionId,
                )  # fmt: skip
                action, verdict = self.default, self.defaultVerdict
            if self._apply(verdict, action, client, stage, connection, envelope, attributes["recipient"]):
                return

    def _apply(
        self, verdict: Verdict, action: str, client: PolicyClient, stage: str,
        connection: ConnectionInfo, envelope: Envelope, recipient: str,
    ) -> bool:  # fmt: skip
        """Do ``verdict``; ``True`` when no further service is to be asked."""
        kind = verdict.kind
        if kind == "refuse":
            log.info(
                "policy service {service} refused {stage} from={sender} to={recipient}: {action}",
                service=client.description, stage=stage, sender=envelope.returnPath, recipient=recipient,
                action=action, session=connection.sessionId,
            )  # fmt: skip
            raise verdict.error()
        if kind == "ok":
            return True
        if kind == "prepend":
            field = verdict.text.encode("utf-8", "replace") + b"\r\n"
            if not self.prepends:
                log.warn(
                    "policy service {service}: PREPEND {field} cannot be honoured without the relay queue",
                    service=client.description, field=verdict.text, session=connection.sessionId,
                )  # fmt: skip
            elif field not in envelope.addedHeaders:
                envelope.addedHeaders.append(field)
        elif kind == "warn":
            log.warn(
                "policy service {service} warns about {stage} from={sender} to={recipient}: {text}",
                service=client.description, stage=stage, sender=envelope.returnPath, recipient=recipient,
                text=verdict.text, session=connection.sessionId,
            )  # fmt: skip
        elif kind == "unsupported":
            log.warn(
                "policy service {service}: action not supported, ignored: {action}",
                service=client.description, action=action, session=connection.sessionId,
            )  # fmt: skip
        return False

    def checkRecipient(self, connection: ConnectionInfo, recipient: Recipient, envelope: Envelope) -> Any:
        """The ``RCPT`` stage."""
        return defer.Deferred.fromCoroutine(self._check("RCPT", connection, envelope, recipient))

    def checkData(self, connection: ConnectionInfo, envelope: Envelope) -> Any:
        """The ``DATA`` stage (when configured)."""
        return defer.Deferred.fromCoroutine(self._check("DATA", connection, envelope, None))

    def checkMessage(self, connection: ConnectionInfo, envelope: Envelope) -> Any:
        """The ``END-OF-MESSAGE`` stage (when configured)."""
        return defer.Deferred.fromCoroutine(self._check("END-OF-MESSAGE", connection, envelope, None))

    def connectionClosed(self, connection: ConnectionInfo) -> None:
        """Forget the connection's transaction."""
        self._transactions.pop(id(connection), None)

    def __repr__(self) -> str:
        return f"PolicyGuard({self.clients!r}, default={self.default!r}, stages={sorted(self.stages)!r})"


def policyConnections(clients: Sequence[PolicyClient]) -> Service:
    """A service that closes the clients' connections when it stops (for ``twistd``)."""
    return _PolicyConnections(clients)


class _PolicyConnections(Service):
    txsmtpLabel = "policy service connections"

    def __init__(self, clients: Sequence[PolicyClient]) -> None:
        self.clients = list(clients)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return defer.DeferredList([client.close() for client in self.clients])
