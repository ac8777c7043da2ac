"""
DMARC (RFC 7489): whether the domain a reader sees in ``From:`` is the
domain that SPF or DKIM authenticated, and what its owner asks a receiver
to do with a message where it is not.

Theory of operation:

1. :func:`fromDomain` reads the RFC5322.From domain out of the message's
   header section (§6.6.1).  It gives ``None`` unless there is exactly one
   ``From:`` field holding exactly one address with a domain name: a
   message with none, several fields or several addresses has no single
   domain to evaluate, and :func:`evaluate` given ``None`` answers
   ``permerror`` (the RFC leaves the choice to the receiver, "typically
   rejected"; ``permerror`` says the message itself is at fault and lets
   the caller decide).
2. :func:`evaluate` finds the policy (§6.6.3): the TXT records at
   ``_dmarc.<From domain>``, those not starting ``v=DMARC1`` discarded;
   none left: the same at ``_dmarc.<organizational domain>``.  Several
   records, or none: result ``none``.  A record with a bad ``p=`` (or
   ``sp=``) counts as ``p=none`` if it names a valid ``rua=`` URI, else
   as no record (result ``none``).  The organizational domain comes from
   the Public Suffix List (§3.2, the ``publicsuffixlist`` package, which
   bundles it).
3. Alignment (§3.1): a ``dkim=pass`` whose ``header.d``, or an
   ``spf=pass`` whose ``smtp.mailfrom`` domain, is the From domain
   (strict, ``adkim=s`` / ``aspf=s``) or shares its organizational domain
   (relaxed, the default).  Any aligned pass: ``pass``; else ``fail``.
4. On ``fail`` the policy applies: ``p=`` when the record is the From
   domain's own, ``sp=`` (default ``p=``) when it is the organizational
   domain's, and ``np=`` (RFC 9091) when the From domain does not exist
   (NXDOMAIN or no A, AAAA and MX records).  ``pct=`` samples (§6.6.4):
   a message not picked gets the next lower policy (``reject`` ->
   ``quarantine``, ``quarantine`` -> ``none``).  The random source is a
   parameter so tests are deterministic.

Everything but the DNS questions (through
:func:`txsmtp.mailauth.dnsquery.query`) is pure.  No reports are sent:
``rua``/``ruf``/``fo``/``ri`` are parsed and kept for a caller.
"""

from __future__ import annotations

import random as _random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import threads
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import dns

from txsmtp.mailauth.dnsquery import DEFAULT_TIMEOUT, DNSTemporaryError, query, txtStrings
from txsmtp.mailauth.results import MethodResult
from txsmtp.mailauth.rfc5322 import tokens as _tokens

__all__ = [
    "DMARCOutcome",
    "DMARCRecord",
    "DMARCRecordError",
    "evaluate",
    "fromDomain",
    "isAligned",
    "isDMARCRecord",
    "normalizeDomain",
    "organizationalDomain",
    "parseRecord",
]

_log = Logger(namespace="txsmtp.mailauth.dmarc")

#: The longest ``From:`` field value :func:`fromDomain` parses; a longer
#: one counts as unusable (no single domain).
MAX_FROM_LENGTH = 8192

_POLICIES = ("none", "quarantine", "reject")
_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:[^\s!]+(![0-9]+[kmgt]?)?\Z")


class DMARCRecordError(ValueError):
    """A DMARC record that cannot be used (the text says why)."""


@dataclass(frozen=True)
class DMARCRecord:
    """
    A parsed DMARC policy record (§6.3).

    :ivar policy: ``p=``: ``none``, ``quarantine`` or ``reject``.
    :ivar subdomainPolicy: ``sp=``, or ``None`` when absent.
    :ivar nonexistentPolicy: ``np=`` (RFC 9091), or ``None``.
    :ivar adkim: ``"r"`` (relaxed, the default) or ``"s"`` (strict).
    :ivar aspf: likewise for SPF.
    :ivar pct: the percentage of failing mail the policy is for (0-100).
    :ivar rua: the aggregate report URIs, as written.
    :ivar ruf: the failure report URIs, as written.
    :ivar fo: ``fo=`` as written (default ``"0"``).
    :ivar ri: ``ri=`` in seconds (default 86400).
    :ivar policyFromRua: whether ``p=`` was missing or bad and
        ``none`` stands for it because ``rua=`` is valid (§6.6.3 step 6).
    """

    policy: str
    subdomainPolicy: str | None = None
    nonexistentPolicy: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    ri: int = 86400
    policyFromRua: bool = False


def isDMARCRecord(text: bytes | str) -> bool:
    """Whether a TXT record claims to be DMARC: it starts with ``v=DMARC1`` (§6.6.3 step 2)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    first = text.lstrip(" \t").split(";", 1)[0]
    name, sep, value = first.partition("=")
    return bool(sep) and name.strip(" \t") == "v" and value.strip(" \t") == "DMARC1"


def parseRecord(text: bytes | str) -> DMARCRecord:
    """
    Parse a DMARC record's text (§6.4).

    ``v=DMARC1`` must come first (``DMARC1`` is case-sensitive in the
    ABNF); tag names and keyword values are read without regard to case;
    unknown tags are ignored, and so are bad ``adkim``, ``aspf``,
    ``pct``, ``np``, ``fo`` and ``ri`` values (their defaults stand,
    §6.3).  ``p=`` is accepted wherever it appears after ``v=``.

    :raise DMARCRecordError: not a DMARC record, or no valid ``p=`` (or a
        bad ``sp=``) and no valid ``rua=`` URI (§6.6.3 step 6).
    """
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if not isDMARCRecord(text):
        raise DMARCRecordError("does not start with v=DMARC1")
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        name, sep, value = part.partition("=")
        name = name.strip(" \t\r\n").lower()
        if sep and name and name not in tags:  # the first of a repeated tag counts
            tags[name] = value.strip(" \t\r\n")

    policy = tags.get("p", "").lower()
    sp = tags["sp"].lower() if "sp" in tags else None
    rua = _uris(tags.get("rua", ""))
    policyFromRua = False
    if policy not in _POLICIES or (sp is not None and sp not in _POLICIES):
        if not any(_URI.match(uri) for uri in rua):
            raise DMARCRecordError(f"no valid policy: p={tags.get('p', '')!r} sp={tags.get('sp', '')!r}")
        # §6.6.3 step 6.1: act as if the record said p=none.
        policy, policyFromRua = "none", True
        sp = sp if sp in _POLICIES else None
    np = tags["np"].lower() if "np" in tags else None
    return DMARCRecord(
        policy=policy,
        subdomainPolicy=sp,
        nonexistentPolicy=np if np in _POLICIES else None,
        adkim=_mode(tags.get("adkim")),
        aspf=_mode(tags.get("aspf")),
        pct=_integer(tags.get("pct"), 100, 0, 100),
        rua=rua,
        ruf=_uris(tags.get("ruf", "")),
        fo=tags.get("fo", "0") or "0",
        ri=_integer(tags.get("ri"), 86400, 0, 2**32 - 1),
        policyFromRua=policyFromRua,
    )


def _mode(value: str | None) -> str:
    return "s" if value is not None and value.lower() == "s" else "r"


def _integer(value: str | None, default: int, low: int, high: int) -> int:
    if value is None or not value.isdigit() or not value.isascii() or len(value) > 10:
        return default
    number = int(value)
    return number if low <= number <= high else default


def _uris(value: str) -> tuple[str, ...]:
    return tuple(uri for uri in (u.strip(" \t") for u in value.split(",")) if uri)


# --- The From domain (§6.6.1) ------------------------------------------------


def fromDomain(headerBlock: bytes) -> str | None:
    """
    The RFC5322.From domain of a message, lowercased, in A-labels.

    The field is read with a small tokenizer of RFC 5322 §3.4 of this
    module's own, linear in the field's length (the stdlib's address
    parser recurses on nested comments and is quadratic on some input).

    :param headerBlock: the header section (anything after the first empty
        line is ignored).
    :return: ``None`` unless exactly one ``From:`` field holds exactly one
        address (groups count their members) whose domain is a DNS name.
    """
    values = [value for name, value in _fields(headerBlock) if name.lower() == b"from"]
    if len(values) != 1 or len(values[0]) > MAX_FROM_LENGTH:
        return None
    mailboxes = _mailboxes(values[0].decode("utf-8", "replace"))
    if mailboxes is None or len(mailboxes) != 1:
        return None
    domain = _domainOf(mailboxes[0])
    return normalizeDomain(domain) if domain is not None else None


def _mailboxes(text: str) -> list[list[tuple[str, str]]] | None:
    """
    The mailboxes of an address list (RFC 5322 §3.4), each as its tokens;
    a group's members count one by one, its display name dropped.
    ``None`` when the structure is broken (unbalanced ``<>``, groups).
    """
    tokens = _tokens(text)
    if tokens is None:
        return None
    mailboxes: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    inAngle = inGroup = False
    for token in tokens:
        kind, value = token
        special = value if kind == "special" else ""
        if special == "<":
            if inAngle:
                return None
            inAngle = True
        elif special == ">":
            if not inAngle:
                return None
            inAngle = False
        elif inAngle:
            pass
        elif special == ":":
            if inGroup:
                return None
            inGroup, current = True, []
            continue
        elif special in (",", ";"):
            if special == ";":
                if not inGroup:
                    return None
                inGroup = False
            if current:
                mailboxes.append(current)
            current = []
            continue
        current.append(token)
    if inAngle or inGroup:
        return None
    if current:
        mailboxes.append(current)
    return mailboxes


def _domainOf(mailbox: list[tuple[str, str]]) -> str | None:
    """The domain of a mailbox's address: after the one ``@`` of its addr-spec."""
    angles = [i for i, t in enumerate(mailbox) if t == ("special", "<")]
    if len(angles) > 1:
        return None
    if angles:
        start = angles[0] + 1
        end = mailbox.index(("special", ">"), start)
        if mailbox[end + 1 :]:
            return None  # something after the angle-addr
        spec = mailbox[start:end]
        # obs-route (RFC 5322 §4.4): "@a,@b:" before the address.
        colons = [i for i, t in enumerate(spec) if t == ("special", ":")]
        if colons:
            spec = spec[colons[-1] + 1 :]
    else:
        spec = mailbox
    ats = [i for i, t in enumerate(spec) if t == ("special", "@")]
    if len(ats) != 1 or ats[0] == 0:
        return None
    domain = spec[ats[0] + 1 :]
    if len(domain) == 1 and domain[0][0] == "literal":
        return None  # an address literal has no DMARC
    parts = []
    for index, (kind, value) in enumerate(domain):
        if (kind == "atom") if index % 2 == 0 else (kind, value) == ("special", "."):
            parts.append(value)
        else:
            return None
    return "".join(parts) if parts and len(parts) % 2 == 1 else None


def _fields(headerBlock: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields as ``(name, unfolded value)``, up to the first empty line."""
    fields: list[tuple[bytes, list[bytes]]] = []
    continuing = False
    for line in headerBlock.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if continuing:
                fields[-1][1].append(line)
            continue
        name, sep, value = line.partition(b":")
        continuing = bool(sep)
        if sep:  # a line without a colon is no field (and not a continuation point)
            fields.append((name.rstrip(b" \t"), [value]))
    return [(name, b"".join(parts).strip(b" \t")) for name, parts in fields]


def normalizeDomain(domain: str) -> str | None:
    """A domain name lowercased, without a final dot, in A-labels; ``None`` if it is not a DNS name."""
    domain = domain.strip().rstrip(".").lower()
    if not domain or domain.startswith("["):
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = domain.split(".")
    if len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        return None
    return domain


# --- Organizational domains and alignment (§3.1, §3.2) -----------------------

_psl: Any = None
_pslLock = threading.Lock()


def _loadPublicSuffixList() -> Any:
    """The Public Suffix List, read once (0.4 s or so: :func:`evaluate` does it in a thread)."""
    global _psl
    with _pslLock:
        if _psl is None:
            from publicsuffixlist import PublicSuffixList

            _psl = PublicSuffixList()
    return _psl


def organizationalDomain(domain: str) -> str:
    """
    The organizational domain of ``domain`` (§3.2): its public suffix (the
    longest match in the Public Suffix List, ICANN and private sections,
    unknown top-level domains counting as public suffixes) and one label
    more.  A domain that is itself a public suffix is its own.

    The first call reads the list, unless :func:`evaluate` did already.
    """
    psl = _psl if _psl is not None else _loadPublicSuffixList()
    domain = domain.rstrip(".").lower()
    found = psl.privatesuffix(domain)
    return found if isinstance(found, str) else domain


def isAligned(identifier: str, fromDomain: str, mode: str) -> bool:
    """
    Whether an authenticated domain aligns with the From domain (§3.1):
    ``mode`` ``"s"`` (strict) wants the same name, ``"r"`` (relaxed) the
    same organizational domain.
    """
    a = normalizeDomain(identifier)
    b = normalizeDomain(fromDomain)
    if a is None or b is None:
        return False
    if a == b:
        return True
    return mode != "s" and organizationalDomain(a) == organizationalDomain(b)


# --- Evaluation (§6.6.2 - §6.6.4) --------------------------------------------


@dataclass(frozen=True)
class DMARCOutcome:
    """
    What :func:`evaluate` found.

    :ivar result: the ``dmarc`` :class:`~txsmtp.mailauth.results.MethodResult`
        (``pass``, ``fail``, ``none``, ``temperror``, ``permerror``), with
        the property ``header.from``.
    :ivar policy: the policy the domain asks for such a message (``p=``,
        ``sp=`` or ``np=`` as §6.6.3 and RFC 9091 pick it) whenever a
        record was found, ``None`` otherwise.
    :ivar disposition: on ``fail`` only, what to do: ``policy`` after the
        ``pct=`` sampling (``none``, ``quarantine``, ``reject``); ``None``
        for any other result.  This is what
        :attr:`txsmtp.mailauth.results.AuthenticationResults.dmarcPolicy`
        takes.
    :ivar sampledOut: whether ``pct=`` left this message out, so that
        ``disposition`` is one step below ``policy``.
    :ivar record: the record used, if any.
    :ivar recordDomain: the domain whose ``_dmarc`` record it is (the From
        domain, or its organizational domain).
    :ivar organizationalDomain: the From domain's organizational domain.
    """

    result: MethodResult
    policy: str | None = None
    disposition: str | None = None
    sampledOut: bool = False
    record: DMARCRecord | None = None
    recordDomain: str | None = None
    organizationalDomain: str | None = None


async def evaluate(
    resolver: IResolver,
    fromDomain: str | None,
    spf: MethodResult | None,
    dkim: Sequence[MethodResult],
    *,
    random: Callable[[], float] | None = None,
    timeout: tuple[int, ...] | None = None,
) -> DMARCOutcome:
    """
    Evaluate DMARC for a message.

    :param resolver: where DNS questions go.
    :param fromDomain: the RFC5322.From domain (:func:`fromDomain`), or
        ``None`` when the message has no single one: ``permerror``.
    :param spf: the ``spf`` result of the MAIL FROM identity (or of
        ``postmaster@<HELO>`` for a null reverse path), ``None`` if SPF was
        not checked.  Only ``pass`` counts; its domain is the one of the
        ``smtp.mailfrom`` property.
    :param dkim: the ``dkim`` results, one per signature; a ``pass``
        counts with its ``header.d``.
    :param random: returns a float in [0, 1) for the ``pct=`` sampling
        (default :func:`random.random`); called only when ``pct`` is
        between 1 and 99 and the result is ``fail``.
    :param timeout: the DNS timeouts (default: :func:`query`'s).
    """
    if fromDomain is None or normalizeDomain(fromDomain) is None:
        return DMARCOutcome(
            MethodResult("dmarc", "permerror", "no single RFC5322.From domain to evaluate")
        )
    domain = normalizeDomain(fromDomain)
    assert domain is not None
    if _psl is None:
        # Reading the list takes a while: not on the reactor's thread.
        await threads.deferToThread(_loadPublicSuffixList)
    org = organizationalDomain(domain)
    headerFrom = (("header.from", domain),)

    def outcome(result: str, reason: str, **kw: Any) -> DMARCOutcome:
        return DMARCOutcome(MethodResult("dmarc", result, reason, headerFrom), organizationalDomain=org, **kw)

    askDNS = _asker(resolver, timeout)
    try:
        recordDomain = domain
        texts = await _records(askDNS, domain)
        if not texts and org != domain:
            recordDomain = org
            texts = await _records(askDNS, org)
    except DNSTemporaryError as e:
        return outcome("temperror", f"DMARC policy lookup: {e}")
    if not texts:
        return outcome("none", "no DMARC record")
    if len(texts) > 1:
        # §6.6.3 step 5: several records, DMARC does not apply.
        return outcome("none", f"{len(texts)} DMARC records at _dmarc.{recordDomain}")
    try:
        record = parseRecord(texts[0])
    except DMARCRecordError as e:
        _log.debug("Unusable DMARC record at _dmarc.{domain}: {error}", domain=recordDomain, error=str(e))
        return outcome("none", f"unusable DMARC record at _dmarc.{recordDomain}: {e}")

    aligned = _alignedPass(domain, record, spf, dkim)
    if recordDomain == domain:
        policy = record.policy
    else:
        policy = record.subdomainPolicy or record.policy
        if aligned is None and record.nonexistentPolicy is not None:
            if not await _exists(askDNS, domain):
                policy = record.nonexistentPolicy  # RFC 9091 §4.1
    found = {"policy": policy, "record": record, "recordDomain": recordDomain}
    if aligned is not None:
        return outcome("pass", aligned, **found)

    sampledOut = False
    disposition = policy
    if record.pct < 100 and (record.pct == 0 or (random or _random.random)() * 100 >= record.pct):
        # §6.6.4: a message the sampling leaves out gets the next lower policy.
        sampledOut, disposition = True, _LOWER[policy]
    reason = f"no aligned SPF or DKIM pass; policy {policy}"
    if sampledOut:
        reason += f", not sampled (pct={record.pct}): {disposition}"
    return outcome("fail", reason, disposition=disposition, sampledOut=sampledOut, **found)


def _alignedPass(
    domain: str, record: DMARCRecord, spf: MethodResult | None, dkim: Sequence[MethodResult]
) -> str | None:
    """The reason of a pass (which identifier aligned), or ``None``."""
    for result in dkim:
        d = result.get("header.d")
        if result.method == "dkim" and result.result == "pass" and d and isAligned(d, domain, record.adkim):
            return f"DKIM pass aligned ({d})"
    if spf is not None and spf.method == "spf" and spf.result == "pass":
        mailfrom = spf.get("smtp.mailfrom") or ""
        spfDomain = mailfrom.rpartition("@")[2]
        if spfDomain and isAligned(spfDomain, domain, record.aspf):
            return f"SPF pass aligned ({spfDomain})"
    return None


def _asker(resolver: IResolver, timeout: tuple[int, ...] | None) -> Callable[[str, int], Any]:
    return lambda name, rrType: query(resolver, name, rrType, timeout or DEFAULT_TIMEOUT)


async def _records(ask: Callable[[str, int], Any], domain: str) -> list[bytes]:
    """The DMARC records at ``_dmarc.<domain>`` (§6.6.3 steps 1-4), others discarded."""
    answer = await ask(f"_dmarc.{domain}", dns.TXT)
    return [text for text in (txtStrings(r) for r in answer.records) if isDMARCRecord(text)]


async def _exists(ask: Callable[[str, int], Any], domain: str) -> bool:
    """
    Whether ``domain`` exists in RFC 9091's sense (§2.7): an A, AAAA or MX
    record.  A DNS failure counts as existing, so ``sp=``/``p=`` apply.
    """
    try:
        for rrType in (dns.A, dns.AAAA, dns.MX):
            answer = await ask(domain, rrType)
            if answer.nxdomain:
                return False
            if answer.records:
                return True
    except DNSTemporaryError:
        return True
    return False
