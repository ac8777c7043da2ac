"""
TLS toward a domain's MX hosts: which hosts a delivery may use and, for
each, whether STARTTLS is mandatory and how the server is authenticated.
:class:`MXSecurity` decides; :mod:`txsmtp.queue.outboundmx` connects.

Per host, in this order:

1. **DANE** (RFC 7672), when a validating resolver on loopback is given
   (``twistd smtp --dane``).  It applies when the domain's MX answer is
   DNSSEC-secure (§2.2.1), the host's addresses are secure and it has
   secure TLSA records (§2.2.3).  TLS is then mandatory, authenticated
   by the records (DANE-EE, DANE-TA; when none is usable, TLS is still
   mandatory but not authenticated, §2.2).  A DNSSEC failure (bogus
   data: SERVFAIL) makes the host unusable for this attempt (§2.1.1):
   ``4.7.5``, and the next MX host is tried.  DANE wins over MTA-STS
   for the hosts it covers (RFC 8461 §2).
2. **MTA-STS** (RFC 8461), when the domain publishes a policy
   (:class:`~txsmtp.tlspolicy.mtasts.MTASTS`).  ``enforce``: only the MX
   hosts its ``mx`` patterns match are used (none matching defers the
   mail, ``4.7.5``), TLS is mandatory and the certificate must be valid
   for the MX host name (PKIX, against ``mxTrustRoot``); ``testing``:
   every host, opportunistic TLS, the mismatches logged in TLS-RPT terms
   (RFC 8460 ``validation-failure``); ``none``: as without a policy.
3. Otherwise **opportunistic** TLS (RFC 7435), as before.

**REQUIRETLS** (RFC 8689 §4.2.1): a message that asks for it goes only to
hosts authenticated by DANE or by an ``enforce`` MTA-STS policy; to any
other the answer is ``5.7.10`` without a connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger
from twisted.names import dns

from txsmtp.mailauth.dnsquery import DNSTemporaryError
from txsmtp.mx import MailExchanger

__all__ = ["HostTLS", "MXPlan", "MXSecurity"]

_log = Logger(namespace="txsmtp.queue.mxtls")

OPPORTUNISTIC = "opportunistic"
DANE = "dane"
DANE_UNAUTHENTICATED = "dane-unauthenticated"
MTA_STS = "mta-sts"


@dataclass(frozen=True)
class HostTLS:
    """
    How to use TLS with one MX host.

    :ivar mode: ``"opportunistic"``, ``"mta-sts"`` (mandatory, PKIX for
        the host name), ``"dane"`` (mandatory, TLSA) or
        ``"dane-unauthenticated"`` (mandatory, not checked).
    :ivar dane: the host's :class:`~txsmtp.tlspolicy.dane.TLSASet` for the
        two DANE modes.
    """

    mode: str = OPPORTUNISTIC
    dane: Any = None

    @property
    def mandatory(self) -> bool:
        """Whether the mail must not go to this host without TLS."""
        return self.mode != OPPORTUNISTIC

    @property
    def verified(self) -> bool:
        """Whether the server will be authenticated (what REQUIRETLS needs)."""
        return self.mode in (DANE, MTA_STS)


@dataclass
class MXPlan:
    """
    What :meth:`MXSecurity.plan` decided for one domain.

    :ivar exchangers: the MX hosts to try, in order.
    :ivar mxSecure: whether the MX answer was DNSSEC-secure (DANE may apply).
    :ivar stsMode: the MTA-STS policy's mode, ``None`` without one.
    :ivar refused: why no host may be used (an ``enforce`` policy
        matching none), else ``None``.
    """

    domain: str
    exchangers: list[MailExchanger] = field(default_factory=list)
    mxSecure: bool = False
    stsMode: str | None = None
    refused: str | None = None


class MXSecurity:
    """
    The TLS policies of MX delivery (see the module documentation).

    :param mtasts: an :class:`~txsmtp.tlspolicy.mtasts.MTASTS`, or ``None``.
    :param secureResolver: a :class:`~txsmtp.tlspolicy.securedns.SecureResolver`
        (a validating resolver on loopback) for DANE, or ``None``.
    """

    def __init__(self, mtasts: Any = None, secureResolver: Any = None) -> None:
        self.mtasts = mtasts
        self.secureResolver = secureResolver

    async def plan(self, domain: str, exchangers: list[MailExchanger]) -> MXPlan:
        """Apply the domain's MTA-STS policy to its MX hosts, and learn whether DANE may apply."""
        plan = MXPlan(domain, list(exchangers))
        if self.secureResolver is not None and not all(e.implicit for e in exchangers):
            try:
                answer = await self.secureResolver.query(domain, dns.MX)
                plan.mxSecure = bool(answer.secure)
            except DNSTemporaryError as e:
                # RFC 7672 §2.2.1: a bogus MX answer: no DANE, and the
                # ordinary MX lookup (which succeeded) is not to be trusted
                # either; defer.
                plan.refused = f"the DNSSEC validation of the MX records of {domain} failed: {e}"
                return plan
        if self.mtasts is None:
            return plan
        from txsmtp.tlspolicy.mtasts import selectMX

        policy = await self.mtasts.policyFor(domain)
        decision = selectMX(policy, [e.host for e in exchangers], domain)
        plan.stsMode = decision.mode if decision.mode != "none" else None
        for line in decision.logLines:
            _log.warn("{line}", line=line)
        if decision.mode == "enforce":
            usable = set(decision.usable)
            plan.exchangers = [e for e in exchangers if e.host in usable]
            if not plan.exchangers:
                plan.refused = (
                    f"no MX host of {domain} matches its MTA-STS policy (mode enforce, "
                    f"mx {' '.join(policy.mx) if policy is not None else ''})"
                )
        return plan

    async def hostTLS(self, plan: MXPlan, exchanger: MailExchanger) -> HostTLS:
        """
        How to use TLS with ``exchanger``.

        :raise DNSTemporaryError: when DANE's DNSSEC lookups failed (the
            host is not to be used now).
        """
        if self.secureResolver is not None and plan.mxSecure and not exchanger.implicit:
            from txsmtp.tlspolicy.dane import lookupDANE

            found = await lookupDANE(self.secureResolver, exchanger.host)
            if found is not None:
                return HostTLS(DANE if found.authenticated else DANE_UNAUTHENTICATED, found)
        if plan.stsMode == "enforce":
            return HostTLS(MTA_STS)
        return HostTLS(OPPORTUNISTIC)
