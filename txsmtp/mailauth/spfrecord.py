"""
The SPF record grammar (RFC 7208 §4.6, §5, §6, §12): :func:`parseRecord`
turns the text of a ``v=spf1`` record into its mechanisms and modifiers,
or raises :class:`~txsmtp.mailauth.spfmacro.SPFSyntaxError`, which
:mod:`txsmtp.mailauth.spf` reports as ``permerror`` before evaluating any
term (§4.6: a record with a syntax error anywhere is not evaluated at
all).

Pure: no DNS, no reactor.  Names of mechanisms and modifiers are
case-insensitive; terms are separated by one or more spaces; unknown
modifiers are kept (and ignored by the evaluation) but must be well
formed; an unknown mechanism is a syntax error; ``redirect=`` and
``exp=`` may each appear once (§6).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from txsmtp.mailauth.spfmacro import MacroString, SPFSyntaxError, parseDomainSpec, parseMacroString

__all__ = ["DNS_MECHANISMS", "Mechanism", "Modifier", "SPFRecord", "parseRecord"]

#: The mechanisms that query the DNS (and count against the limit of §4.6.4).
DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
_MECHANISMS = DNS_MECHANISMS | {"all", "ip4", "ip6"}
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)\Z", re.S)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)\Z", re.S)
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9][0-9]*))?(?://(0|[1-9][0-9]*))?\Z")


@dataclass(frozen=True)
class Mechanism:
    """
    One mechanism of a record (§5).

    :ivar qualifier: ``+``, ``-``, ``~`` or ``?``.
    :ivar name: ``all``, ``include``, ``a``, ``mx``, ``ptr``, ``ip4``,
        ``ip6`` or ``exists`` (lower case).
    :ivar domainSpec: the target's domain-spec, if one is written.
    :ivar network: for ``ip4``/``ip6``, the network.
    :ivar cidr4: for ``a``/``mx``, the IPv4 prefix length.
    :ivar cidr6: for ``a``/``mx``, the IPv6 prefix length.
    :ivar text: the term as written.
    """

    qualifier: str
    name: str
    text: str
    domainSpec: MacroString | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class Modifier:
    """A ``name=value`` term (§6); ``value`` parsed as a macro-string."""

    name: str
    value: MacroString
    text: str


@dataclass(frozen=True)
class SPFRecord:
    """A parsed ``v=spf1`` record: its mechanisms in order, and its modifiers."""

    mechanisms: tuple[Mechanism, ...]
    redirect: Modifier | None = None
    exp: Modifier | None = None
    unknown: tuple[Modifier, ...] = ()


def parseRecord(text: str) -> SPFRecord:
    """
    Parse an SPF record (``v=spf1 ...``, §4.6, §12).

    :raise SPFSyntaxError: when any term is not in the grammar, a
        mechanism is unknown, or ``redirect``/``exp`` is given twice (§6).
    """
    terms = text.split(" ")
    if terms[0].lower() != "v=spf1":
        raise SPFSyntaxError(f"not an SPF record: {text[:40]!r}")
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, Modifier] = {}
    unknown: list[Modifier] = []
    for term in terms[1:]:
        if not term:
            continue  # 1*SP between terms
        mod = _MODIFIER.match(term)
        if mod:
            name = mod.group(1).lower()
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise SPFSyntaxError(f"{name}= given twice")
                modifiers[name] = Modifier(name, parseDomainSpec(mod.group(2)), term)
            else:
                # Unknown modifiers are ignored, but must be well formed.
                unknown.append(Modifier(name, parseMacroString(mod.group(2)), term))
            continue
        mechanisms.append(_parseMechanism(term))
    return SPFRecord(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"), tuple(unknown))


def _parseMechanism(term: str) -> Mechanism:
    m = _MECHANISM.match(term)
    if m is None:
        raise SPFSyntaxError(f"bad term {term!r}")
    qualifier, name, rest = m.group(1) or "+", m.group(2).lower(), m.group(3)
    if name not in _MECHANISMS:
        raise SPFSyntaxError(f"unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise SPFSyntaxError(f"bad term {term!r}")
        return Mechanism(qualifier, name, term)
    if name in ("ip4", "ip6"):
        return Mechanism(qualifier, name, term, network=_parseNetwork(name, rest, term))
    spec: MacroString | None = None
    cidr4, cidr6 = 32, 128
    if name in ("a", "mx"):
        cidr = _DUAL_CIDR.search(rest)
        assert cidr is not None  # everything optional: matches at the end
        rest = rest[: cidr.start()]
        cidr4 = _cidr(cidr.group(1), 32, term)
        cidr6 = _cidr(cidr.group(2), 128, term)
    if rest:
        if not rest.startswith(":") or len(rest) == 1:
            raise SPFSyntaxError(f"bad term {term!r}")
        spec = parseDomainSpec(rest[1:])
    elif name in ("include", "exists"):
        raise SPFSyntaxError(f"{name} needs a domain: {term!r}")
    return Mechanism(qualifier, name, term, domainSpec=spec, cidr4=cidr4, cidr6=cidr6)


def _cidr(text: str | None, top: int, term: str) -> int:
    if text is None:
        return top
    if int(text) > top or len(text) > 3:
        raise SPFSyntaxError(f"bad prefix length in {term!r}")
    return int(text)


def _parseNetwork(name: str, rest: str, term: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not rest.startswith(":"):
        raise SPFSyntaxError(f"{name} needs an address: {term!r}")
    address, slash, length = rest[1:].partition("/")
    top = 32 if name == "ip4" else 128
    try:
        ip = ipaddress.IPv4Address(address) if name == "ip4" else ipaddress.IPv6Address(address)
    except ValueError:
        raise SPFSyntaxError(f"bad address in {term!r}") from None
    if slash and not re.fullmatch(r"0|[1-9][0-9]{0,2}", length):
        raise SPFSyntaxError(f"bad prefix length in {term!r}")
    prefix = _cidr(length, top, term) if slash else top
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
