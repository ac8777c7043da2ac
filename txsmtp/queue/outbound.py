"""
Delivery attempts for the queue: :class:`Outbound` provides
:class:`~txsmtp.queue.interfaces.IOutbound`.

One call of :meth:`Outbound.deliver` is one attempt for some recipients of
one message, through one :class:`~txsmtp.queue.model.NextHop`:

``mx``
    The domain's mail exchangers (:mod:`txsmtp.queue.outboundmx`): looked
    up through the resolver given (e.g. ``--dns-server``), tried in
    preference order, each host's addresses in turn.  TLS follows
    :class:`~txsmtp.queue.mxtls.MXSecurity`: DANE and MTA-STS when they
    apply, else opportunistic (RFC 7435: STARTTLS whenever offered, the
    certificate not checked; when the handshake fails, the host is tried
    again on a new connection without STARTTLS, never on the same one).
``smtp``
    One host, ``[host]:port`` (the smart host of ``--relay-host``, or a
    ``--route``).  Its ``tls`` option decides STARTTLS (``require`` when
    absent: the certificate must verify against ``trustRoot``); with the
    ``auth`` option, the relay credentials are used (and never sent
    without TLS).
``lmtp``
    A mail store over LMTP (RFC 2033), ``unix:/path`` or ``[host]:port``:
    one reply per recipient after the data.
``local``
    The server's own delivery (:mod:`txsmtp.queue.outboundlocal`).

What each recipient gets (:mod:`txsmtp.queue.attempts` builds them):

- a 2xx reply: ``DELIVERED``; ``RELAYED`` instead when the recipient asked
  for a success report (``NOTIFY=SUCCESS``) and the SMTP next hop does not
  offer DSN, so that no report will ever come from further on (RFC 3461
  §6.2.1.d).  Over LMTP and locally, always ``DELIVERED``;
- a 4xx reply, a timeout, a connection error, a DNS failure: ``DEFERRED``;
- a 5xx reply, a null MX, a domain that does not exist: ``FAILED``;
- a connection lost (or a reply that never came) after the final dot:
  ``DEFERRED``.  The next hop may have taken the message, so the next
  attempt may deliver it a second time.  That is the one case where mail
  can be delivered twice; every MTA has it (RFC 5321 §6.1 prefers a
  duplicate to a loss; RFC 1047 describes it).

Each recipient's NOTIFY and ORCPT, and the message's RET and ENVID, are
passed on when the next hop offers DSN (RFC 3461 §6.2).

Connections are pooled per (host, port, TLS and login settings): one
:class:`~txsmtp.client.Mailer` each, so consecutive transactions to the
same host reuse a connection (with PIPELINING, the next message's commands
go out with the end of the previous one).  A connection idle for
``idleTimeout`` seconds says QUIT; :meth:`Outbound.close` ends them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import client as dnsclient
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp.client import (
    Mailer,
    OutgoingMessage,
    SendResult,
    SMTPClientError,
    SMTPRecipientsRefused,
    SMTPReplyError,
    SMTPServerRefused,
    SMTPTLSError,
    Timeouts,
    TLSPolicy,
)
from txsmtp.queue.attempts import (
    deferred,
    diagnostic,
    errorResult,
    failed,
    replyResult,
    replyText,
    statusOf,
)
from txsmtp.queue.interfaces import IOutbound
from txsmtp.queue.model import AttemptResult, NextHop, QueuedMessage, QueuedRecipient, Result
from txsmtp.queue.mxtls import MXSecurity
from txsmtp.queue.outboundlocal import deliverLocal
from txsmtp.queue.outboundmx import deliverMX
from txsmtp.queue.prefixed import addedHeaders
from txsmtp.queue.routing import hostPort
from txsmtp.queue.targets import Target as _Target

__all__ = ["Outbound"]

_log = Logger(namespace="txsmtp.queue.outbound")

_POLICIES = {p.value: p for p in TLSPolicy}


class _Attempt:
    """One call of :meth:`Outbound.deliver`: its inputs and the results so far."""

    def __init__(self, hop: NextHop, message: QueuedMessage, recipients: list[QueuedRecipient], body: BinaryIO) -> None:
        self.hop = hop
        self.message = message
        self.recipients = recipients
        self.body = body
        self.results: list[AttemptResult | None] = [None] * len(recipients)
        parameters = message.envelope.get("parameters") or {}
        self.ret: str | None = parameters.get("ret")
        self.envid: str | None = parameters.get("envid")
        #: REQUIRETLS (RFC 8689): verified TLS to every hop but a final one
        self.requireTLS = bool(parameters.get("requiretls"))

    def measured(self) -> dict[str, Any]:
        """The body's size and 8-bit-ness when the queue recorded them, so the client need not read it through."""
        eightBit = self.message.envelope.get("eightBit")
        if isinstance(eightBit, bool):
            return {"size": self.message.size + len(addedHeaders(self.message)), "eightBit": eightBit}
        return {}

    def params(self, index: int) -> tuple[tuple[str, ...] | None, str | None]:
        r = self.recipients[index]
        orcpt = f"{r.orcpt[0]};{r.orcpt[1]}" if r.orcpt is not None else None
        return (tuple(r.notify) if r.notify is not None else None, orcpt)

    def wantsSuccess(self, index: int) -> bool:
        notify = self.recipients[index].notify
        return notify is not None and "SUCCESS" in (n.upper() for n in notify)

    def setAll(self, indexes: Sequence[int], result: AttemptResult) -> None:
        for i in indexes:
            self.results[i] = result


@implementer(IOutbound)
class Outbound:
    """
    Makes the queue's delivery attempts (see the module's description).

    :param hostname: this server's name, given in EHLO/LHLO.
    :param localDelivery: the :class:`~txsmtp.interfaces.IDelivery` of the
        ``local`` hop (``--deliver``), or ``None``.
    :param resolver: the :class:`~twisted.internet.interfaces.IResolver`
        for MX and address lookups; by default one asking ``dnsServer``
        when given, else the system's (:func:`twisted.names.client.getResolver`).
    :param relayCredentials: ``(user, password)`` to log in to hops with the
        ``auth`` option (the smart host).
    :param trustRoot: the authorities that verify a smart host's or a
        route's certificate (see :func:`twisted.internet.ssl.optionsForClientTLS`);
        ``None`` trusts the platform's.
    :param reactor: the reactor (the global one by default).
    :param dnsServer: ``(address, port)`` of the one DNS server to ask
        (``--dns-server``), when no ``resolver`` is given.
    :param mxPort: the port of mail exchangers: 25, but for tests.
    :param timeouts: the client's :class:`~txsmtp.client.Timeouts`.
    :param idleTimeout: how long an unused connection stays open.
    :param connectionsPerHost: at most this many connections to one server
        at once (more messages wait for one of them).
    :param mxSecurity: the TLS policies toward MX hosts, an
        :class:`~txsmtp.queue.mxtls.MXSecurity` (MTA-STS, DANE); the
        default is opportunistic TLS alone.
    :param mxTrustRoot: the authorities an MX host's certificate must
        chain to when an MTA-STS policy enforces TLS (``None``: the
        platform's).
    :param mxAddressLimit: at most this many addresses tried per attempt
        through mail exchangers.
    """

    def __init__(
        self,
        hostname: str,
        localDelivery: Any = None,
        resolver: IResolver | None = None,
        relayCredentials: tuple[str, str] | None = None,
        trustRoot: Any = None,
        reactor: Any = None,
        *,
        dnsServer: tuple[str, int] | None = None,
        mxPort: int = 25,
        timeouts: Timeouts | None = None,
        idleTimeout: float = 30.0,
        connectionsPerHost: int = 10,
        mxAddressLimit: int = 5,
        mxSecurity: Any = None,
        mxTrustRoot: Any = None,
    ) -> None:
        if not hostname or any(c.isspace() or c < " " for c in hostname):
            raise ValueError(f"the host name given in EHLO must be one word, not {hostname!r}")
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.hostname = hostname
        self.localDelivery = localDelivery
        if resolver is None and dnsServer is not None:
            resolver = dnsclient.Resolver(servers=[dnsServer], reactor=reactor)
        self.resolver = resolver
        self.relayCredentials = relayCredentials
        self.trustRoot = trustRoot
        self.reactor = reactor
        self.mxPort = mxPort
        self.timeouts = timeouts or Timeouts()
        self.idleTimeout = idleTimeout
        self.connectionsPerHost = connectionsPerHost
        self.mxAddressLimit = mxAddressLimit
        self.mxSecurity = mxSecurity if mxSecurity is not None else MXSecurity()
        self.mxTrustRoot = mxTrustRoot
        self._mailers: dict[_Target, Mailer] = {}
        self._inUse: dict[_Target, int] = {}
        self._closed = False

    # -- IOutbound ----------------------------------------------------------------------------

    def deliver(
        self, hop: NextHop, message: QueuedMessage, recipients: Sequence[QueuedRecipient], body: BinaryIO
    ) -> Deferred[list[AttemptResult]]:
        """
        Try once to deliver ``message`` to ``recipients`` through ``hop``;
        see :meth:`txsmtp.queue.interfaces.IOutbound.deliver`.  Never fails:
        anything unexpected is logged and defers every recipient (``4.3.0``).

        A connection lost (or a reply never received) after the final dot
        defers the recipients although the next hop may have taken the
        message: the next attempt may then deliver it twice.  It is the one
        case of a duplicate; the alternative, calling it delivered, could
        lose mail.
        """
        attempt = _Attempt(hop, message, list(recipients), body)
        if not attempt.recipients:
            return defer.succeed([])
        d = Deferred.fromCoroutine(self._deliver(attempt))

        def unexpected(f: Failure) -> list[AttemptResult]:
            _log.failure("delivery attempt of {id} via {hop} failed", f, id=message.id, hop=hop.key)
            result = deferred("4.3.0", f"internal error: {f.getErrorMessage() or f.type.__name__}")
            return [r if r is not None else result for r in attempt.results]

        return d.addErrback(unexpected)

    def close(self) -> Deferred[None]:
        """
        Take no more attempts (later ones are deferred), and end every
        pooled connection (QUIT) once the messages on it are done.
        """
        self._closed = True
        mailers = list(self._mailers.values())
        self._mailers.clear()
        self._inUse.clear()
        d = defer.gatherResults([m.close() for m in mailers], consumeErrors=True)
        return d.addCallback(lambda _: None)

    @property
    def connections(self) -> int:
        """How many connections are open (or being opened) in the pool."""
        return sum(m.connections for m in self._mailers.values())

    # -- one attempt ---------------------------------------------------------------------------

    async def _deliver(self, attempt: _Attempt) -> list[AttemptResult]:
        n = len(attempt.recipients)
        hop = attempt.hop
        if self._closed:
            return [deferred("4.3.2", "the outbound delivery is shutting down")] * n
        try:
            attempt.body.seek(0)
        except (AttributeError, OSError):
            pass
        if hop.kind == "local":
            return await deliverLocal(self.localDelivery, attempt.message, attempt.recipients, attempt.body)
        pending = self._checkAddresses(attempt)
        if pending:
            if hop.kind == "mx":
                await self._deliverMX(attempt, pending)
            elif hop.kind in ("smtp", "lmtp"):
                await self._deliverHost(attempt, pending)
            else:
                attempt.setAll(pending, deferred("4.3.5", f"unknown kind of next hop {hop.kind!r} ({hop.key})"))
        return [r if r is not None else deferred("4.3.0", "no result") for r in attempt.results]

    def _checkAddresses(self, attempt: _Attempt) -> list[int]:
        """
        Fail the recipients whose address (or DSN parameters) the client
        cannot send; return the indexes of the others.  A sender it cannot
        send fails them all.
        """
        sender = attempt.message.sender
        try:
            OutgoingMessage.prepare(sender, ["postmaster"], b"", ret=attempt.ret, envid=attempt.envid)
        except SMTPClientError as e:
            attempt.setAll(range(len(attempt.recipients)), failed("5.1.7", f"the sender cannot be sent on: {e}"))
            return []
        pending = []
        for i, r in enumerate(attempt.recipients):
            try:
                OutgoingMessage.prepare(sender, [r.address], b"", recipientParams=[attempt.params(i)])
            except (SMTPClientError, ValueError) as e:
                attempt.results[i] = failed("5.1.3", f"the recipient cannot be sent on: {e}")
                continue
            pending.append(i)
        return pending

    async def _deliverHost(self, attempt: _Attempt, pending: list[int]) -> None:
        hop = attempt.hop
        lmtp = hop.kind == "lmtp"
        policyName = hop.option("tls", "none" if lmtp else "require")
        policy = _POLICIES.get(str(policyName).lower())
        if policy is None:
            attempt.setAll(pending, deferred("4.3.5", f"unknown TLS policy {policyName!r} for {hop.key}"))
            return
        if attempt.requireTLS and not lmtp and policy not in (TLSPolicy.REQUIRE, TLSPolicy.VERIFY):
            # RFC 8689 §4.2.1: a certificate that verifies, or no delivery.
            attempt.setAll(
                pending,
                failed("5.7.10", f"the message requires verified TLS (REQUIRETLS) and {hop.key} has tls={policyName}"),
            )
            return
        username = password = None
        if hop.option("auth") and self.relayCredentials is not None:
            username, password = self.relayCredentials
        if lmtp and hop.destination.startswith("unix:"):
            path = hop.destination[5:]
            target = _Target("localhost", 24, TLSPolicy.NONE, True, socket=path)
            where, remoteMTA = f"LMTP socket {path}", None
        else:
            try:
                host, port = hostPort(hop.destination)
            except ValueError as e:
                attempt.setAll(pending, deferred("4.3.5", f"bad next hop {hop.key}: {e}"))
                return
            target = _Target(host, port, policy, lmtp, username=username, password=password)
            where, remoteMTA = f"{host}:{port}", f"dns; {host}"
        outcome = await self._send(target, attempt, pending)
        final, transient, _ = self._classify(outcome, attempt, pending, where, remoteMTA, lmtp)
        for i, result in {**final, **transient}.items():
            attempt.results[i] = result

    async def _deliverMX(self, attempt: _Attempt, pending: list[int]) -> None:
        await deliverMX(self, attempt, pending)

    # -- talking to one server -------------------------------------------------------------------

    def _mailer(self, target: _Target) -> Mailer:
        mailer = self._mailers.get(target)
        if mailer is not None:
            return mailer
        # Forget the Mailers that have no connection and nothing to do.
        for key, other in list(self._mailers.items()):
            if not self._inUse.get(key) and not other.connections and not other.queued:
                del self._mailers[key]
        options: dict[str, Any] = dict(
            tls=target.tls,
            heloName=self.hostname,
            lmtp=target.lmtp,
            timeouts=self.timeouts,
            reactor=self.reactor,
            trustRoot=self.trustRoot,
            tlsHostname=target.tlsHostname,
        )
        if target.dane is not None:
            from txsmtp.tlspolicy.daneclient import DANEClientCreator

            name = target.tlsHostname or target.host
            options["tlsCreator"] = DANEClientCreator(name, target.dane.records, target.dane.names())
        elif target.mx:
            options["trustRoot"] = self.mxTrustRoot
        if target.username is not None:
            options.update(username=target.username, password=target.password)
        if target.socket is not None:
            options["endpoint"] = UNIXClientEndpoint(self.reactor, target.socket, timeout=int(self.timeouts.connect))
        mailer = Mailer(
            target.host,
            target.port,
            poolSize=self.connectionsPerHost,
            idleTimeout=self.idleTimeout,
            **options,
        )
        self._mailers[target] = mailer
        return mailer

    async def _send(self, target: _Target, attempt: _Attempt, indexes: list[int]) -> SendResult | BaseException:
        """Send the message to ``indexes`` through ``target``: the result, or the exception."""
        outcome = await self._sendOnce(target, attempt, indexes)
        if isinstance(outcome, SMTPTLSError) and target.tls is TLSPolicy.OPPORTUNISTIC:
            # RFC 7435: opportunistic TLS must not make delivery worse than
            # none; but after a failed handshake nothing more is said on
            # that connection: a new one, without STARTTLS.
            _log.info(
                "TLS with {host}:{port} failed ({error}); trying again without STARTTLS",
                host=target.host,
                port=target.port,
                error=str(outcome),
            )
            outcome = await self._sendOnce(target.withoutTLS(), attempt, indexes)
        return outcome

    async def _sendOnce(self, target: _Target, attempt: _Attempt, indexes: list[int]) -> SendResult | BaseException:
        if self._closed:
            return SMTPClientError("the outbound delivery is shutting down")
        try:
            attempt.body.seek(0)
        except (AttributeError, OSError):
            pass
        mailer = self._mailer(target)
        self._inUse[target] = self._inUse.get(target, 0) + 1
        try:
            return await mailer.send(
                attempt.message.sender,
                [attempt.recipients[i].address for i in indexes],
                attempt.body,
                ret=attempt.ret,
                envid=attempt.envid,
                recipientParams=[attempt.params(i) for i in indexes],
                requireTLS=attempt.requireTLS and not target.lmtp,
                **attempt.measured(),
            )
        except Exception as e:
            return e
        finally:
            count = self._inUse.get(target, 1) - 1
            if count > 0:
                self._inUse[target] = count
            else:
                self._inUse.pop(target, None)

    def _classify(
        self,
        outcome: SendResult | BaseException,
        attempt: _Attempt,
        indexes: list[int],
        where: str,
        remoteMTA: str | None,
        lmtp: bool,
    ) -> tuple[dict[int, AttemptResult], dict[int, AttemptResult], bool]:
        """
        What one transaction did for each of ``indexes``: the final
        results, the deferred ones, and whether another server (the next
        mail exchanger) should be tried for the deferred ones.
        """
        final: dict[int, AttemptResult] = {}
        transient: dict[int, AttemptResult] = {}

        def put(i: int, result: AttemptResult) -> None:
            (transient if result.result is Result.DEFERRED else final)[i] = result

        if isinstance(outcome, SendResult):
            for i in indexes:
                address = attempt.recipients[i].address
                reply = outcome.recipients.get(address, outcome.reply)
                success = Result.DELIVERED
                if not lmtp and not outcome.dsn and attempt.wantsSuccess(i):
                    # RFC 3461 §6.2.1.d: no DSN further on, so say "relayed".
                    success = Result.RELAYED
                result = replyResult(reply, where, remoteMTA, success)
                if not lmtp and outcome.dsn:
                    # The next hop took NOTIFY with the message: a success
                    # report is its to send, not ours (RFC 3461 §6.2.1).
                    result.passedOn = True
                result.tls = outcome.tls
                put(i, result)
            # Some recipients took it: the others wait for the next attempt.
            return final, transient, False
        if isinstance(outcome, SMTPRecipientsRefused):
            for i in indexes:
                reply = outcome.recipients.get(attempt.recipients[i].address, outcome.reply)
                put(i, replyResult(reply, where, remoteMTA))
            return final, transient, True
        if isinstance(outcome, SMTPServerRefused) and attempt.hop.kind == "mx":
            # A mail exchanger that will not talk (a 554 greeting, EHLO and
            # HELO refused) says nothing about the recipients: RFC 5321
            # §3.1 lets the client try elsewhere, so the next exchanger is
            # tried, and with none left the message waits (Postfix does the
            # same, smtp_skip_5xx_greeting).
            reply = outcome.reply
            status = "4" + statusOf(reply.code, reply.enhanced)[1:]
            reason = f"{where} refused the session: {reply.code} {' '.join(reply.lines)}"
            result = deferred(status, reason, remoteMTA, diagnostic(reply.code, reply.enhanced, replyText(reply)))
            for i in indexes:
                put(i, result)
            return final, transient, True
        if isinstance(outcome, SMTPReplyError):
            result = replyResult(outcome.reply, where, remoteMTA)
            for i in indexes:
                put(i, result)
            return final, transient, True
        result, tryNext = errorResult(outcome, where, remoteMTA)
        if result.result is Result.DEFERRED and getattr(outcome, "afterData", False):
            _log.warn(
                "{where}: the connection ended after the end of message {id} was sent; it will be sent again"
                " and may be delivered twice",
                where=where,
                id=attempt.message.id,
            )
        for i in indexes:
            put(i, result)
        return final, transient, tryNext

