"""
Delivery to a domain's mail exchangers: the ``mx`` next hop of
:class:`~txsmtp.queue.outbound.Outbound`.

The MX hosts (:func:`txsmtp.mx.lookupMailExchangers`) in preference
order; for each, its TLS policy (:class:`~txsmtp.queue.mxtls.MXSecurity`:
DANE, MTA-STS, else opportunistic TLS), then its addresses (A, then
AAAA; at most ``mxAddressLimit`` in all, as Postfix's
``smtp_mx_address_limit``) in turn until the recipients have a final
answer.  A null MX (RFC 7505) fails every recipient with ``5.1.10``; a
domain that does not exist fails them with ``5.1.2``; a DNS failure
defers them with ``4.4.3``; a TLS policy that leaves no host to use
defers them with ``4.7.5``; a failed TLS session with a host whose
policy makes TLS mandatory is logged in TLS-RPT terms (RFC 8460 §4.3:
``dane domain=... mx=... result=validation-failure``); a message with
``TLS-Required: No`` (RFC 8689 §5) goes without MTA-STS and DANE,
opportunistically; a REQUIRETLS message (RFC 8689) for which no
host is authenticated fails with ``5.7.10``.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger
from twisted.names import client as dnsclient
from twisted.names import dns

from txsmtp.client import SMTPTLSError, SMTPUnsupportedError, TLSPolicy
from txsmtp.mailauth.dnsquery import DNSTemporaryError
from txsmtp.mx import NoMailExchangerError, NullMXError, lookupMailExchangers
from txsmtp.queue.attempts import deferred, failed
from txsmtp.queue.model import AttemptResult
from txsmtp.queue.mxtls import MXSecurity
from txsmtp.queue.targets import Target

__all__ = ["deliverMX", "tlsrptResult"]

_log = Logger(namespace="txsmtp.queue.outbound")


async def deliverMX(outbound: Any, attempt: Any, pending: list[int]) -> None:
    """Deliver ``attempt`` (an ``Outbound`` attempt) to the recipients ``pending`` through their domain's MX hosts."""
    domain = attempt.hop.destination
    try:
        exchangers = await lookupMailExchangers(domain, resolver=outbound.resolver)
    except NullMXError:
        # RFC 7505 §4.2: a null MX is a permanent failure, 5.1.10.
        attempt.setAll(pending, failed("5.1.10", f"{domain} accepts no mail: it publishes a null MX (RFC 7505)"))
        return
    except NoMailExchangerError as e:
        if e.permanent:
            attempt.setAll(pending, failed("5.1.2", str(e)))
        else:
            attempt.setAll(pending, deferred("4.4.3", str(e)))
        return
    security = outbound.mxSecurity
    if attempt.message.envelope.get("tlsRequiredNo"):
        # RFC 8689 §4.2.2 (TLS-Required: No): the sender asks that the
        # domain's policies not stop delivery; TLS is still used when offered.
        _log.info(
            "{queueId}: TLS-Required: No: MTA-STS and DANE not applied for {domain}",
            queueId=attempt.message.id,
            domain=domain,
        )
        security = MXSecurity()
    plan = await security.plan(domain, exchangers)
    if plan.refused is not None:
        _log.warn("{domain}: {reason}", domain=domain, reason=plan.refused)
        attempt.setAll(pending, deferred("4.7.5", plan.refused))
        return
    last: dict[int, AttemptResult] = {}
    tried = 0
    for exchanger in plan.exchangers:
        try:
            hostTLS = await security.hostTLS(plan, exchanger)
        except DNSTemporaryError as e:
            # RFC 7672 §2.1.1: bogus or missing DNSSEC answers: not this host now.
            reason = f"DANE: the DNSSEC lookups for mail exchanger {exchanger.host} of {domain} failed: {e}"
            _log.warn("dane domain={domain} mx={host} result=dnssec-invalid: {reason}", domain=domain, host=exchanger.host, reason=reason)
            last = {i: deferred("4.7.5", reason) for i in pending}
            continue
        if attempt.requireTLS and not hostTLS.verified:
            reason = (
                f"the message requires TLS (REQUIRETLS) and mail exchanger {exchanger.host} of {domain} "
                "is authenticated neither by DANE nor by an MTA-STS policy in enforce mode (RFC 8689 §4.2.1)"
            )
            # The 5.7.10 is the answer only when no other host gave one: a
            # host that could be authenticated but failed now (a deferral)
            # may work at the next attempt, so the message waits instead
            # of bouncing on the hosts that never can.
            for i in pending:
                last.setdefault(i, failed("5.7.10", reason))
            continue
        try:
            addresses = await _addresses(outbound, exchanger.host)
        except Exception as e:
            reason = f"cannot find the address of mail exchanger {exchanger.host} for {domain}: {_dnsText(e)}"
            _log.info("{reason}", reason=reason)
            last = {i: deferred("4.4.3", reason) for i in pending}
            continue
        policy = TLSPolicy.REQUIRE if hostTLS.mandatory else TLSPolicy.OPPORTUNISTIC
        stop = False
        for address in addresses:
            if tried >= outbound.mxAddressLimit:
                stop = True
                break
            tried += 1
            target = Target(
                address,
                outbound.mxPort,
                policy,
                tlsHostname=exchanger.host if hostTLS.mandatory else None,
                mx=True,
                dane=hostTLS.dane,
            )
            where = f"{exchanger.host}[{address}]:{outbound.mxPort}"
            if hostTLS.mandatory:
                where += f" ({hostTLS.mode})"
            outcome = await outbound._send(target, attempt, pending)
            if hostTLS.mandatory and isinstance(outcome, SMTPTLSError):
                _log.warn(
                    "{mode} domain={domain} mx={host} result={result}: {error}",
                    mode="dane" if hostTLS.dane is not None else "mta-sts",
                    domain=domain,
                    host=exchanger.host,
                    result=tlsrptResult(str(outcome), hostTLS.dane is not None),
                    error=str(outcome),
                )
            final, transient, tryNext = outbound._classify(outcome, attempt, pending, where, f"dns; {exchanger.host}", False)
            if isinstance(outcome, SMTPUnsupportedError) and "REQUIRETLS" in str(outcome):
                # RFC 8689 §4.2.1: not sent to this host (no REQUIRETLS, or
                # TLS not verified); another MX host may do.  The 5.7.10
                # stands only when no other host gave an answer.
                for i, result in final.items():
                    last.setdefault(i, result)
                break
            for i, result in final.items():
                attempt.results[i] = result
            pending = sorted(transient)
            last = transient
            if not pending:
                return
            if not tryNext:
                stop = True
                break
        if stop:
            break
    for i in pending:
        attempt.results[i] = last.get(i) or deferred("4.4.1", f"no mail exchanger of {domain} could be tried")


async def _addresses(outbound: Any, host: str) -> list[str]:
    """The IP addresses of a mail exchanger: IPv4 first (RFC 5321 §5.1 leaves the order open)."""
    if isIPAddress(host) or isIPv6Address(host):
        return [host]
    resolver: Any = outbound.resolver if outbound.resolver is not None else dnsclient.getResolver()
    results = await defer.DeferredList(
        [defer.maybeDeferred(resolver.lookupAddress, host), defer.maybeDeferred(resolver.lookupIPV6Address, host)],
        consumeErrors=True,
    )
    addresses: list[str] = []
    errors: list[BaseException] = []
    for ok, value in results:
        if not ok:
            errors.append(value.value)
            continue
        for rr in value[0]:
            if rr.type == dns.A:
                addresses.append(rr.payload.dottedQuad())
            elif rr.type == dns.AAAA:
                addresses.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
    if not addresses:
        if errors:
            raise errors[0]
        raise LookupError("no A or AAAA records")
    return addresses


def _dnsText(error: BaseException) -> str:
    name = type(error).__name__
    if name in ("DNSNameError", "AuthoritativeDomainError"):
        return "no such host"
    if name == "DNSServerError":
        return "the DNS server failed (SERVFAIL)"
    return str(error) or name


def tlsrptResult(error: str, dane: bool) -> str:
    """
    The TLS-RPT result type (RFC 8460 §4.3) of a failed TLS session with
    a host whose policy made TLS mandatory, from the client's error text.
    """
    text = error.lower()
    if "does not offer starttls" in text:
        return "starttls-not-supported"
    if dane:
        return "validation-failure"
    if "not valid for" in text:
        return "certificate-host-mismatch"
    if "expired" in text:
        return "certificate-expired"
    if "certificate verify failed" in text or "not signed by" in text:
        return "certificate-not-trusted"
    return "validation-failure"
