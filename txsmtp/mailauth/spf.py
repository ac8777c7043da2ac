"""
SPF (RFC 7208): whether a client address may send mail for a domain.

:func:`checkHost` is the RFC's check_host() (§4): it fetches the
domain's ``v=spf1`` TXT record, evaluates its mechanisms from left to
right, and answers ``pass``, ``fail``, ``softfail``, ``neutral``,
``none``, ``temperror`` or ``permerror`` (:class:`SPFResult`).
:func:`checkSender` is what a receiving MX does with it (§2.3, §2.4):
check the MAIL FROM identity, or ``postmaster@<HELO>`` for a null
reverse-path, and report a :class:`txsmtp.mailauth.results.MethodResult`;
:func:`checkHelo` does the same for the HELO identity (``smtp.helo``).

Theory of operation
-------------------

A check is one :class:`_Check` object: the client's address, the sender,
the HELO name, and the two counters every record of the check shares
however deeply it is reached through ``include`` and ``redirect``
(§4.6.4): the terms that cost DNS lookups (``include``, ``a``, ``mx``,
``ptr``, ``exists``, ``redirect``: more than
:attr:`SPFLimits.dnsTerms` is ``permerror``) and the void lookups (a
term's query answered NXDOMAIN or NODATA: more than
:attr:`SPFLimits.voidLookups` is ``permerror``).

Parsing is pure (records in :mod:`txsmtp.mailauth.spfrecord`,
macro-strings in :mod:`txsmtp.mailauth.spfmacro`): a record with any syntax error is
``permerror`` before any term is evaluated (§4.6).  Evaluation asks the
DNS through :func:`txsmtp.mailauth.dnsquery.query` (twisted.names, each
query with its own timeout; the caller bounds the whole check if it
wants).  ``permerror`` and ``temperror`` travel as exceptions
(:class:`_PermError`, :class:`_TempError`) out of any depth of
``include``/``redirect``, which is what the table of §5.2 asks for.

``%{p}`` is implemented, not left ``unknown`` (§7.3 allows either): the
validated names of §5.5 (the client's PTR names, at most
:attr:`SPFLimits.ptrNames`, whose addresses include the client), the
domain itself preferred, then a subdomain of it, then any; ``unknown``
when there is none.  The lookups are made once per check and shared with
``ptr``.

The explanation of ``exp=`` (§6.2) is fetched only for a ``fail``, from
the record that decided it (the target's after ``redirect``, never an
included record's); any trouble with it leaves it out, never changes the
result.

pyspf was not used: its DNS is synchronous and its only DNS hook is a
module global, neither of which fits a reactor.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import dns

from txsmtp.mailauth.dnsquery import Answer, DNSTemporaryError, query, txtStrings
from txsmtp.mailauth.results import MethodResult
from txsmtp.mailauth.spfmacro import (
    MacroContext,
    MacroString,
    SPFSyntaxError,
    expand,
    expandDomain,
    isValidDomain,
    parseMacroString,
)
from txsmtp.mailauth.spfrecord import DNS_MECHANISMS, Mechanism, Modifier, parseRecord

__all__ = [
    "SPFLimits",
    "SPFResult",
    "checkHelo",
    "checkHost",
    "checkSender",
    "spfReason",
]

log = Logger(namespace="txsmtp.mailauth.spf")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
#: How deep include/redirect may nest, whatever SPFLimits.dnsTerms says.
_MAX_DEPTH = 50
_VERSION = re.compile(rb"v=spf1(?: |\Z)", re.I)


@dataclass(frozen=True)
class SPFLimits:
    """
    The limits of one check (RFC 7208 §4.6.4), the RFC's values by default.

    :ivar dnsTerms: terms that query the DNS (include, a, mx, ptr,
        exists, redirect) over the whole check; more is ``permerror``.
    :ivar voidLookups: lookups answered NXDOMAIN or without records; more
        is ``permerror``.
    :ivar mxNames: MX records one ``mx`` term may look at; more is
        ``permerror``.
    :ivar ptrNames: PTR names one ``ptr`` term or ``%{p}`` looks at; the
        rest are ignored.
    """

    dnsTerms: int = 10
    voidLookups: int = 2
    mxNames: int = 10
    ptrNames: int = 10


@dataclass(frozen=True)
class SPFResult:
    """
    The answer of :func:`checkHost`.

    :ivar result: ``pass``, ``fail``, ``softfail``, ``neutral``, ``none``,
        ``temperror`` or ``permerror``.
    :ivar domain: the domain asked about (the <domain> argument).
    :ivar mechanism: the term that decided, as written (``-all``,
        ``include:_spf.example.com``, ``redirect=...``'s own matching term),
        or ``None`` (no record, an error, or the default ``neutral``).
    :ivar explanation: for ``fail``, the expanded ``exp=`` text when the
        record has one and its TXT record could be fetched, else ``None``.
    :ivar detail: a sentence on why, for errors and ``none``.
    """

    result: str
    domain: str
    mechanism: str | None = None
    explanation: str | None = None
    detail: str | None = None



class _PermError(Exception):
    """The check ends with ``permerror``."""


class _TempError(Exception):
    """The check ends with ``temperror``."""


@dataclass(frozen=True)
class _Outcome:
    result: str
    mechanism: str | None = None
    explanation: str | None = None
    detail: str | None = None


class _Check:
    """One check_host() with its shared counters (§4.6.4)."""

    def __init__(self, resolver: IResolver, ip: IPAddress, sender: str, helo: str, receiver: str, limits: SPFLimits):
        self.resolver = resolver
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.receiver = receiver
        self.limits = limits
        self.dnsTerms = 0
        self.voids = 0
        self.depth = 0
        self.validated: list[str] | None = None

    async def _query(self, name: str, rrType: int, countVoid: bool = True) -> Answer:
        try:
            answer = await query(self.resolver, name, rrType)
        except DNSTemporaryError as e:
            raise _TempError(str(e)) from e
        if countVoid and not answer.records:
            self.voids += 1
            if self.voids > self.limits.voidLookups:
                raise _PermError(f"more than {self.limits.voidLookups} void DNS lookups")
        return answer

    def _countTerm(self, term: str) -> None:
        self.dnsTerms += 1
        if self.dnsTerms > self.limits.dnsTerms:
            raise _PermError(f"more than {self.limits.dnsTerms} DNS lookups ({term})")

    async def _context(self, domain: str, spec: MacroString) -> MacroContext:
        ctx = MacroContext(self.sender, domain, self.ip, self.helo, self.receiver)
        if "p" in spec.letters:
            ctx.validatedName = await self._pMacro(domain)
        return ctx

    async def _target(self, domain: str, spec: MacroString | None) -> str:
        if spec is None:
            return domain
        return expandDomain(spec, await self._context(domain, spec))

    async def evaluate(self, domain: str, explain: bool) -> _Outcome:
        """check_host() for ``domain``: an outcome, or _PermError/_TempError."""
        self.depth += 1
        try:
            return await self._evaluate(domain, explain)
        finally:
            self.depth -= 1

    async def _evaluate(self, domain: str, explain: bool) -> _Outcome:
        if self.depth > _MAX_DEPTH:
            # Only reachable with a dnsTerms limit far above the RFC's.
            raise _PermError(f"include/redirect nested more than {_MAX_DEPTH} deep")
        if not isValidDomain(domain):
            return _Outcome("none", detail=f"{domain!r} is not a domain name")
        answer = await self._query(domain, dns.TXT, countVoid=False)
        texts = [txtStrings(r) for r in answer.records]
        records = [t for t in texts if _VERSION.match(t)]
        if not records:
            return _Outcome("none", detail=f"no SPF record at {domain}")
        if len(records) > 1:
            raise _PermError(f"{len(records)} SPF records at {domain}")  # §4.5
        try:
            record = parseRecord(records[0].decode("ascii"))
        except (UnicodeDecodeError, SPFSyntaxError) as e:
            raise _PermError(f"bad SPF record at {domain}: {e}") from None

        for mechanism in record.mechanisms:
            if mechanism.name in DNS_MECHANISMS:
                self._countTerm(mechanism.text)
            if await self._matches(mechanism, domain):
                result = _QUALIFIERS[mechanism.qualifier]
                explanation = None
                if result == "fail" and explain and record.exp is not None:
                    explanation = await self._explanation(record.exp, domain)
                return _Outcome(result, mechanism.text, explanation)

        # §6.1: redirect= only when no mechanism matched, and never with "all".
        if record.redirect is not None and not any(m.name == "all" for m in record.mechanisms):
            self._countTerm(record.redirect.text)
            target = await self._target(domain, record.redirect.value)
            # §6.2: the target's own exp= is the one used, not ours.
            outcome = await self.evaluate(target, explain)
            if outcome.result == "none":
                raise _PermError(f"{record.redirect.text}: no SPF record at {target}")
            return outcome
        return _Outcome("neutral", detail=f"no mechanism matched at {domain}")

    async def _matches(self, mechanism: Mechanism, domain: str) -> bool:
        name = mechanism.name
        ip = self.ip
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            network = mechanism.network
            return network is not None and network.version == ip.version and ip in network
        target = await self._target(domain, mechanism.domainSpec)
        if name == "include":
            # §5.2: the included domain's own exp= is never used.
            outcome = await self.evaluate(target, explain=False)
            if outcome.result == "none":
                raise _PermError(f"{mechanism.text}: no SPF record at {target}")
            return outcome.result == "pass"
        if not isValidDomain(target):
            # Not a name any DNS could answer for (an empty or overlong
            # label after expansion): nothing to match.
            log.debug("SPF {term}: {target!r} is not a domain name", term=mechanism.text, target=target)
            return False
        if name == "exists":
            return bool((await self._query(target, dns.A)).records)  # §5.7: A, whatever the client
        if name == "a":
            return self._inNetwork(await self._addresses(target, True), mechanism)
        if name == "mx":
            mx = await self._query(target, dns.MX)
            if len(mx.records) > self.limits.mxNames:
                raise _PermError(f"{mechanism.text}: more than {self.limits.mxNames} MX records")
            for record in mx.records:
                exchange = record.name.name.decode("ascii", "replace").rstrip(".")
                if not exchange:
                    continue  # RFC 7505 null MX
                if self._inNetwork(await self._addresses(exchange, False), mechanism):
                    return True
            return False
        if name == "ptr":
            target = target.lower().rstrip(".")
            for validated in await self._validatedNames():
                if validated == target or validated.endswith("." + target):
                    return True
            return False
        raise AssertionError(name)

    async def _addresses(self, name: str, countVoid: bool) -> list[IPAddress]:
        rrType = dns.A if self.ip.version == 4 else dns.AAAA
        answer = await self._query(name, rrType, countVoid)
        out: list[IPAddress] = []
        for record in answer.records:
            text = record.dottedQuad() if rrType == dns.A else _aaaaText(record)
            out.append(ipaddress.ip_address(text))
        return out

    def _inNetwork(self, addresses: list[IPAddress], mechanism: Mechanism) -> bool:
        prefix = mechanism.cidr4 if self.ip.version == 4 else mechanism.cidr6
        network = ipaddress.ip_network(f"{self.ip}/{prefix}", strict=False)
        return any(a in network for a in addresses)

    async def _validatedNames(self) -> list[str]:
        """
        The client's validated names (§5.5): the PTR names of its address
        (the first :attr:`SPFLimits.ptrNames`) whose own addresses include
        it.  A DNS error on the PTR lookup gives none; on an address lookup
        skips that name.  Looked up once per check.
        """
        if self.validated is None:
            self.validated = await self._lookUpValidatedNames()
        return self.validated

    async def _lookUpValidatedNames(self) -> list[str]:
        try:
            answer = await self._query(_reverseName(self.ip), dns.PTR)
        except _TempError:
            return []
        names = [r.name.name.decode("ascii", "replace").lower().rstrip(".") for r in answer.records]
        validated = []
        for name in names[: self.limits.ptrNames]:
            if not isValidDomain(name):
                continue
            try:
                addresses = await self._addresses(name, countVoid=False)
            except _TempError:
                continue
            if self.ip in addresses:
                validated.append(name)
        return validated

    async def _pMacro(self, domain: str) -> str:
        """
        ``%{p}`` (§7.3): a validated name, preferring the domain itself,
        then one of its subdomains, then any; ``unknown`` when none.
        """
        names = await self._validatedNames()
        domain = domain.lower().rstrip(".")
        best = [n for n in names if n == domain] or [n for n in names if n.endswith("." + domain)] or names
        return best[0] if best else "unknown"

    async def _explanation(self, exp: Modifier, domain: str) -> str | None:
        """
        The expanded text of ``exp=`` (§6.2); ``None`` whenever it cannot
        be had (no name, a DNS error, not exactly one TXT record, a
        syntax error): the explanation never changes the result.
        """
        try:
            target = await self._target(domain, exp.value)
            if not isValidDomain(target):
                return None
            answer = await query(self.resolver, target, dns.TXT)
            if len(answer.records) != 1:
                return None
            text = txtStrings(answer.records[0]).decode("ascii")
            spec = parseMacroString(text, explain=True)
            return expand(spec, await self._context(domain, spec))
        except (DNSTemporaryError, _TempError, _PermError, UnicodeDecodeError, SPFSyntaxError):
            return None


def _aaaaText(record: Any) -> str:
    return str(ipaddress.IPv6Address(record.address))


def _reverseName(ip: IPAddress) -> str:
    return ip.reverse_pointer


def _clientAddress(ip: str) -> IPAddress:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # §5: an IPv4-mapped IPv6 address is its IPv4 address
    return address


def _senderIdentity(sender: str, domain: str) -> str:
    # §4.3: no local-part: "postmaster"; no "@" at all: the domain.
    if "@" not in sender:
        return f"postmaster@{sender or domain}"
    local, _, senderDomain = sender.rpartition("@")
    return f"{local or 'postmaster'}@{senderDomain}"


async def checkHost(
    resolver: IResolver,
    ip: str,
    domain: str,
    sender: str,
    helo: str,
    receiver: str = "unknown",
    *,
    limits: SPFLimits = SPFLimits(),
) -> SPFResult:
    """
    RFC 7208's check_host(<ip>, <domain>, <sender>).

    :param resolver: any :class:`~twisted.internet.interfaces.IResolver`.
    :param ip: the client's address, text (IPv4, IPv6, or IPv4-mapped IPv6,
        which is checked as IPv4).
    :param domain: the domain whose record is checked.
    :param sender: the sender identity (``local@domain``; ``postmaster``
        stands for a missing local-part).
    :param helo: the HELO/EHLO name (``%{h}``).
    :param receiver: this host's name (``%{r}`` of explanations).
    :param limits: the limits of §4.6.4.

    Never raises for anything the DNS or the records do: every problem is a
    ``temperror`` or ``permerror`` result.  Each DNS query has its own
    timeout; bound the whole check yourself if you need to.
    """
    address = _clientAddress(ip)
    check = _Check(resolver, address, _senderIdentity(sender, domain), helo, receiver, limits)
    try:
        outcome = await check.evaluate(domain.rstrip("."), explain=True)
    except _PermError as e:
        return SPFResult("permerror", domain, detail=str(e))
    except _TempError as e:
        return SPFResult("temperror", domain, detail=str(e))
    return SPFResult(outcome.result, domain, outcome.mechanism, outcome.explanation, outcome.detail)


async def checkSender(
    resolver: IResolver,
    ip: str,
    mailFrom: str | None,
    helo: str,
    receiver: str = "unknown",
    *,
    limits: SPFLimits = SPFLimits(),
) -> MethodResult:
    """
    The SPF check of an MX (§2.3, §2.4): the MAIL FROM identity, or
    ``postmaster@<helo>`` when the reverse-path is null (``None`` or
    ``""``).

    :return: ``MethodResult("spf", result, reason, (("smtp.mailfrom",
        identity),))``; the identity is the address checked, whose domain
        is the one SPF authorized (what DMARC aligns, RFC 7489 §4.2).
    """
    if mailFrom:
        identity = mailFrom if "@" in mailFrom else f"postmaster@{mailFrom}"
    else:
        identity = f"postmaster@{helo}"
    domain = identity.rpartition("@")[2]
    result = await checkHost(resolver, ip, domain, identity, helo, receiver, limits=limits)
    return MethodResult("spf", result.result, spfReason(result, ip), (("smtp.mailfrom", identity),))


async def checkHelo(
    resolver: IResolver,
    ip: str,
    helo: str,
    receiver: str = "unknown",
    *,
    limits: SPFLimits = SPFLimits(),
) -> MethodResult:
    """
    The HELO identity check (§2.3): ``postmaster@<helo>`` against the
    HELO name's record; ``none`` for an address literal or a name that is
    not a domain.

    :return: ``MethodResult("spf", result, reason, (("smtp.helo", helo),))``.
    """
    identity = f"postmaster@{helo}"
    result = await checkHost(resolver, ip, helo, identity, helo, receiver, limits=limits)
    return MethodResult("spf", result.result, spfReason(result, ip), (("smtp.helo", helo),))


def spfReason(result: SPFResult, ip: str) -> str:
    """A sentence for ``reason=``: what decided, for which address and domain."""
    if result.mechanism is not None:
        text = f"{ip} {result.result} for {result.domain} by {result.mechanism}"
    else:
        text = f"{ip} {result.result} for {result.domain}" + (f": {result.detail}" if result.detail else "")
    if result.explanation:
        text += f" ({result.explanation})"
    return text

