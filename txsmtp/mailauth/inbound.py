"""
The inbound checks of an MX: SPF (RFC 7208), DKIM (RFC 6376) and DMARC
(RFC 7489) on what it receives, reported in an ``Authentication-Results:``
header field (RFC 8601), as ``twistd smtp --verify-inbound`` (and
``--dmarc-reject``) turn them on.

Which messages: those of sessions that may not relay, the mail an MX
gets from the world.  Mail from authenticated users and from the relay
networks is the server's own users' (it is DKIM-signed instead, see
:mod:`txsmtp.mailauth.signing`), and the delivery reports the queue makes
never pass through a session: neither is checked.

How, for one message (a :class:`CheckingFilter` between the session and
the queue):

1. At ``DATA``: the SPF check of the MAIL FROM identity (or of
   ``postmaster@HELO`` for the null sender) starts, and runs while the
   message streams in.
2. As it streams: the header section is held (bounded); any
   ``Authentication-Results:`` field that claims this server's name is
   removed (RFC 8601 §5: only this server may speak in its name); the
   rest, and the body, go through a
   :class:`~txsmtp.mailauth.dkimverify.DKIMVerifier`, which hashes the
   body without keeping it.
3. After the final dot, before the answer: the DKIM keys are looked up,
   the signatures checked, the DMARC policy of the ``From:`` domain found
   and evaluated.  Everything is bounded in time (:attr:`InboundChecks.timeout`):
   a check that has not finished is reported ``temperror``.
4. The results go into the envelope
   (:attr:`~txsmtp.envelope.Envelope.authentication`, which a delivery
   may read to decide for itself) and into an ``Authentication-Results:``
   field put in front of the message
   (:attr:`~txsmtp.envelope.Envelope.addedHeaders`).  One log line gives
   them with the queue id.
5. By default nothing is refused, but for a header section longer than
   :data:`~txsmtp.mailauth.filters.HEADER_LIMIT` (``552 5.3.4``: the
   forged fields in it could not be removed).  With ``dmarcReject``, a
   message that fails DMARC for a domain whose policy (after ``pct=``
   sampling) is ``reject`` gets ``550 5.7.1`` after the final dot
   (RFC 7489 §6.7) and is not queued.

All DNS goes through twisted.names (the resolver given), never blocking
the reactor; the lookups are bounded as each RFC says (SPF's ten
lookups and two void lookups, DKIM's signatures checked at most
:attr:`InboundChecks.maxSignatures`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.envelope import Envelope
from txsmtp.errors import SMTPError
from txsmtp.mailauth import dmarc
from txsmtp.mailauth.authresults import formatHeader, isOwnField
from txsmtp.mailauth.dkimverify import DKIMVerifier
from txsmtp.mailauth.filters import MessageFilter, splitFields
from txsmtp.mailauth.results import AuthenticationResults, MethodResult
from txsmtp.mailauth.spf import checkSender

__all__ = ["CheckingFilter", "InboundChecks", "checkingFilter"]

_log = Logger(namespace="txsmtp.mailauth.inbound")


class InboundChecks:
    """
    The settings of the inbound checks.

    :param resolver: the :class:`~twisted.internet.interfaces.IResolver`
        for every lookup.
    :param authservId: this server's name in ``Authentication-Results:``
        (its host name).
    :param clock: the reactor (for the time limit and DKIM's ``x=``).
    :param dmarcReject: refuse (``550 5.7.1``) what fails DMARC under a
        ``reject`` policy.
    :param timeout: seconds all the checks of one message may take after
        its final dot (SPF's lookups start earlier).
    :param maxSignatures: the most DKIM signatures checked per message.
    """

    def __init__(
        self,
        resolver: IResolver,
        authservId: str,
        clock: Any,
        *,
        dmarcReject: bool = False,
        timeout: float = 30.0,
        maxSignatures: int = 5,
    ) -> None:
        self.resolver = resolver
        self.authservId = authservId
        self.clock = clock
        self.dmarcReject = dmarcReject
        self.timeout = timeout
        self.maxSignatures = maxSignatures

    def __repr__(self) -> str:
        return f"InboundChecks({self.authservId!r}, dmarcReject={self.dmarcReject})"


def checkingFilter(checks: InboundChecks) -> Any:
    """
    The filter for :class:`~txsmtp.queue.relay.RelayDelivery`'s
    ``filters``: check what untrusted sessions send.
    """

    def make(receiver: Any, envelope: Envelope, trusted: bool) -> Any:
        return receiver if trusted else CheckingFilter(receiver, envelope, checks)

    return make


def _bounded(d: defer.Deferred[Any], seconds: float, clock: Any, fallback: Any) -> defer.Deferred[Any]:
    """``d``'s result, or ``fallback`` once ``seconds`` have passed (or on an unexpected error)."""
    out: defer.Deferred[Any] = defer.Deferred()

    def expire() -> None:
        if not out.called:
            out.callback(fallback)

    timer = clock.callLater(seconds, expire)

    def fired(result: Any) -> None:
        if isinstance(result, Failure):
            _log.failure("inbound check failed", result)
            result = fallback
        if not out.called:
            if timer.active():
                timer.cancel()
            out.callback(result)

    d.addBoth(fired)
    return out


class CheckingFilter(MessageFilter):
    """Runs the inbound checks on one message (see the module documentation)."""

    def __init__(self, inner: Any, envelope: Envelope, checks: InboundChecks) -> None:
        super().__init__(inner, envelope)
        self.checks = checks
        self.verifier = DKIMVerifier(checks.maxSignatures, now=checks.clock.seconds())
        self.fromDomain: str | None = None
        self.removed = 0
        connection = envelope.connection
        sender = str(envelope.sender) if envelope.sender is not None else None
        helo = connection.heloName or ""
        self._spf = defer.Deferred.fromCoroutine(
            checkSender(checks.resolver, connection.peerHost, sender, helo, checks.authservId)
        )
        self._spf.addErrback(_logged, "SPF check")

    def headers(self, section: bytes) -> bytes:
        kept: list[bytes] = []
        for field in splitFields(section):
            if isOwnField(field, self.checks.authservId):
                # RFC 8601 §5: a field in this server's name, not made here.
                self.removed += 1
                continue
            kept.append(field)
        ending = b"\r\n" if section.endswith(b"\r\n\r\n") or section == b"\r\n" else b""
        out = b"".join(kept) + ending if self.removed else section
        self.fromDomain = dmarc.fromDomain(out)
        self.verifier.feed(out)
        return out

    def body(self, chunk: bytes) -> None:
        if not self.overflowed:
            self.verifier.feed(chunk)

    def done(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._done())

    async def _done(self) -> None:
        checks = self.checks
        envelope = self.envelope
        if self.overflowed:
            # Fields in this server's name could not be taken out of a
            # header section this long (RFC 8601 §5), nor its From: read.
            await _bounded(self._spf, checks.timeout, checks.clock, None)
            _log.info("{queueId}: refused: header section over {limit} octets", queueId=envelope.queueId, limit=self.limit)
            raise SMTPError(
                552, "5.3.4", f"Message refused: its header section is longer than {self.limit // 1024} KiB"
            )
        deadline = checks.clock.seconds() + checks.timeout
        remaining = lambda: max(0.1, deadline - checks.clock.seconds())  # noqa: E731
        spfFallback = MethodResult("spf", "temperror", "the SPF check did not finish in time")
        spf: MethodResult | None = await _bounded(self._spf, remaining(), checks.clock, spfFallback)
        if spf is None:
            spf = MethodResult("spf", "temperror", "the SPF check failed")
        dkimFallback = [MethodResult("dkim", "temperror", "the DKIM check did not finish in time")]
        dkim: list[MethodResult] = await _bounded(
            defer.Deferred.fromCoroutine(self.verifier.verify(checks.resolver)), remaining(), checks.clock, dkimFallback
        )
        dmarcFallback = dmarc.DMARCOutcome(MethodResult("dmarc", "temperror", "the DMARC check did not finish in time"))
        outcome: dmarc.DMARCOutcome = await _bounded(
            defer.Deferred.fromCoroutine(dmarc.evaluate(checks.resolver, self.fromDomain, spf, dkim)),
            remaining(),
            checks.clock,
            dmarcFallback,
        )
        results = [spf, *(dkim or [MethodResult("dkim", "none", "no signature")]), outcome.result]
        authentication = AuthenticationResults(checks.authservId, results, outcome.disposition)
        envelope.authentication = authentication
        envelope.addedHeaders.append(formatHeader(authentication, smtputf8=envelope.parameters.smtputf8))
        _log.info(
            "{queueId}: {results}{removed}",
            queueId=envelope.queueId,
            results=" ".join(f"{r.method}={r.result}" + _detail(r) for r in results),
            removed=f" (removed {self.removed} forged Authentication-Results)" if self.removed else "",
        )
        if checks.dmarcReject and outcome.result.result == "fail" and outcome.disposition == "reject":
            domain = outcome.result.get("header.from") or self.fromDomain
            _log.info("{queueId}: refused: fails DMARC for {domain}, policy reject", queueId=envelope.queueId, domain=domain)
            raise SMTPError(
                550,
                "5.7.1",
                f"Message refused: it fails DMARC for {domain}, whose owner asks for it to be rejected "
                "(neither an aligned SPF nor an aligned DKIM pass; RFC 7489)",
            )


def _logged(failure: Failure, what: str) -> None:
    _log.failure("{what} failed", failure, what=what)
    return None


def _detail(result: MethodResult) -> str:
    for name in ("smtp.mailfrom", "header.d", "header.from"):
        value = result.get(name)
        if value:
            return f" ({name}={value})"
    return ""
