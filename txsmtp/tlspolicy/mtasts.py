"""
MTA-STS (RFC 8461): which MX hosts of a recipient domain a sender may use,
and whether it must insist on TLS with a certificate valid for them.

Theory of operation
-------------------

:meth:`MTASTS.policyFor` answers "what policy applies to mail for this
domain now?", in the steps of RFC 8461 §3 and §5:

1. Ask DNS for the TXT records at ``_mta-sts.<domain>`` (through the
   ``twisted.names`` resolver the caller gives, with
   :func:`txsmtp.mailauth.dnsquery.query`).  Exactly one record that
   starts with ``v=STSv1`` must remain, with an ``id`` of 1 to 32 letters
   and digits (§3.1); otherwise the domain has no *live* policy.
2. If the ``id`` is the one of the policy in the cache, and that policy has
   not outlived its ``max_age``, it is the answer: nothing is fetched (§3.1,
   §5.1).
3. Otherwise fetch ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
   (§3.3): HTTPS only, the certificate checked against a trust root for the
   name ``mta-sts.<domain>``, the host name resolved through the SAME
   resolver as the TXT record, no redirect followed, only 200, media type
   ``text/plain``, at most 64 KiB of body, one timeout for the whole fetch.
   The body is parsed (§3.2, :func:`parsePolicy`); an invalid policy is a
   failed fetch.  A new policy replaces the cached one only on success.
4. When no live policy can be had (no TXT record, a DNS failure, a failed
   fetch), an unexpired cached policy still applies (§3.3, §5.1: the
   absence of a TXT record is not enough to drop a cached policy).

Parsing, matching and the MX decision (:func:`parseRecord`,
:func:`parsePolicy`, :meth:`Policy.matches`, :func:`selectMX`) are pure.
Fetch failures and policy changes are logged one line each, with the
result types of SMTP TLS Reporting (RFC 8460 §4.3): ``sts-policy-fetch-error``,
``sts-policy-invalid``, ``sts-webpki-invalid``, and ``validation-failure``
for an MX host the policy does not list.  An operator can grep for them.

The cache is in memory, keyed by policy domain; with ``cachePath`` it is
also kept in a JSON file (written in a thread, to a temporary file that is
fsynced then renamed over the old one), read back at start.

What the caller does with the answer (RFC 8461 §5):

- :func:`selectMX` with the policy and the MX host names: in ``enforce``
  mode deliver only to :attr:`MXDecision.usable`, with STARTTLS required
  and the certificate checked (PKIX) for the MX host name; in ``testing``
  mode check the same, log :attr:`MXDecision.logLines` and the TLS
  failures, and deliver anyway;
- before failing a message for good because of an ``enforce`` policy, call
  :meth:`MTASTS.policyFor` again: it always asks DNS first, so a changed
  ``id`` is seen (§5.1).

Not done here: refreshing cached policies before they expire (§3.3
suggests daily), and the TLS-RPT reports themselves (only log lines).
The HTTPS plumbing lives in the private ``txsmtp.tlspolicy._mtastsfetch``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from txsmtp.mailauth.dnsquery import DNSTemporaryError, query, txtStrings
from txsmtp.tlspolicy import _mtastsfetch
from txsmtp.tlspolicy._mtastsfetch import (
    EndpointFactory,
    PolicyError,
    classify,
    drain,
    readBody,
    writeFile,
)

__all__ = [
    "FETCH_ERROR",
    "MAX_AGE_LIMIT",
    "MAX_POLICY_SIZE",
    "MTASTS",
    "MXDecision",
    "POLICY_INVALID",
    "Policy",
    "PolicyError",
    "VALIDATION_FAILURE",
    "WEBPKI_INVALID",
    "parsePolicy",
    "parseRecord",
    "selectMX",
]

# The RFC 8460 §4.3.2.1 result types, as logged.

#: The policy could not be fetched (no address, no connection, not 200,
#: too large, too slow).
FETCH_ERROR = _mtastsfetch.FETCH_ERROR
#: The policy fetched is not valid (syntax, media type).
POLICY_INVALID = "sts-policy-invalid"
#: The HTTPS certificate of ``mta-sts.<domain>`` is not valid (PKIX, name).
WEBPKI_INVALID = _mtastsfetch.WEBPKI_INVALID
#: An MX host the policy does not list (:func:`selectMX`).
VALIDATION_FAILURE = "validation-failure"

#: The largest ``max_age`` (one year, RFC 8461 §3.2).
MAX_AGE_LIMIT = 31557600
#: The largest policy body read (RFC 8461 §3.3: senders may limit it to 64 KiB).
MAX_POLICY_SIZE = 64 * 1024

_MODES = ("enforce", "testing", "none")
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_WSP = " \t"

log = Logger(namespace="txsmtp.tlspolicy.mtasts")


# -- names and patterns ------------------------------------------------------


def _normalName(name: str) -> str:
    """Lower case, no trailing dot, A-labels for a name with U-labels."""
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return name


def _validDomain(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def _patternMatches(pattern: str, host: str) -> bool:
    # RFC 8461 §4.1: matching as in RFC 6125, except that "*" stands for
    # exactly the whole left-most label: "*.example.com" matches
    # "mail.example.com" but neither "example.com" nor "a.b.example.com".
    pattern = _normalName(pattern)
    host = _normalName(host)
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


@dataclass(frozen=True)
class Policy:
    """
    An MTA-STS policy (RFC 8461 §3.2).

    :ivar mode: ``"enforce"``, ``"testing"`` or ``"none"``.
    :ivar mx: the MX host patterns (lower case; ``*.`` wildcards).
    :ivar maxAge: how long the policy may be cached, in seconds.
    :ivar id: the ``id`` of the TXT record the policy was fetched for.
    """

    mode: str
    mx: tuple[str, ...]
    maxAge: int
    id: str

    def matches(self, mxHost: str) -> bool:
        """Whether ``mxHost`` (an MX record's name) is one the policy lists (§4.1)."""
        return any(_patternMatches(pattern, mxHost) for pattern in self.mx)


# -- parsing (pure) ----------------------------------------------------------


def _isSTSRecord(text: bytes) -> bool:
    # §3.1: records that do not begin with "v=STSv1" are discarded.  The
    # ABNF lets white space come before the ";" (sts-field-delim), so the
    # version may be followed by ";", white space, or nothing.
    return text.startswith(b"v=STSv1") and text[7:8] in (b"", b";", b" ", b"\t")


def parseRecord(text: bytes | str) -> str:
    """
    Parse an MTA-STS TXT record (its strings already joined, §3.1) and
    return its ``id``.

    :raise ValueError: when it is not a valid ``v=STSv1`` record.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("TXT record is not ASCII") from None
    fields = [field.strip(_WSP) for field in text.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing delimiter is allowed
    if not fields or fields[0] != "v=STSv1":
        raise ValueError("TXT record does not start with v=STSv1")
    recordId = None
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if not equals or not name or not value:
            raise ValueError(f"TXT record field {field!r} is not name=value")
        if name == "id" and recordId is None:
            if not _ID.match(value):
                raise ValueError(f"TXT record id {value!r} is not 1 to 32 letters and digits")
            recordId = value
        # Other fields are extensions (sts-extension): ignored.
    if recordId is None:
        raise ValueError("TXT record has no id")
    return recordId


def parsePolicy(body: bytes, policyId: str) -> Policy:
    """
    Parse a policy body (RFC 8461 §3.2): ``key: value`` lines ended by LF or
    CRLF; ``version: STSv1``, ``mode``, ``max_age`` and at least one ``mx``
    (except with ``mode: none``, which needs none).  Unknown keys are
    ignored; of a repeated key other than ``mx``, the first value counts.

    :raise PolicyError: (``sts-policy-invalid``) when the policy is invalid.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(POLICY_INVALID, "policy is not UTF-8 text") from None
    values: dict[str, str] = {}
    mx: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip(_WSP):
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip(_WSP):
            raise PolicyError(POLICY_INVALID, f"policy line {number} is not 'key: value'")
        value = value.strip(_WSP)
        if key == "mx":
            pattern = _normalName(value)
            if not _validDomain(pattern[2:] if pattern.startswith("*.") else pattern):
                raise PolicyError(POLICY_INVALID, f"policy mx {value!r} is not a host name pattern")
            mx.append(pattern)
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise PolicyError(
            POLICY_INVALID, f"policy version is {values.get('version')!r}, not 'STSv1'"
        )
    mode = values.get("mode")
    if mode not in _MODES:
        raise PolicyError(POLICY_INVALID, f"policy mode {mode!r} is not enforce, testing or none")
    maxAge = values.get("max_age", "")
    if not (
        maxAge.isascii() and maxAge.isdigit() and len(maxAge) <= 10 and int(maxAge) <= MAX_AGE_LIMIT
    ):
        raise PolicyError(POLICY_INVALID, f"policy max_age {maxAge!r} is not 0 to {MAX_AGE_LIMIT}")
    if not mx and mode != "none":
        raise PolicyError(POLICY_INVALID, "policy lists no mx")
    return Policy(mode, tuple(mx), int(maxAge), policyId)


# -- what the MX list becomes under a policy ---------------------------------


@dataclass(frozen=True)
class MXDecision:
    """
    What a policy says of a domain's MX hosts (:func:`selectMX`).

    :ivar mode: the policy's mode, ``None`` without a policy.
    :ivar usable: the MX hosts delivery may use, in the order given.
    :ivar mismatched: the MX hosts no ``mx`` pattern of the policy matches.
    :ivar requireTLS: ``True`` in ``enforce`` mode: to each usable host,
        STARTTLS is required and its certificate must be valid (PKIX) for
        the MX host name (RFC 8461 §4.2, §5); delivery without it must not
        happen.  In ``testing`` mode it is ``False``: check the same, report
        failures, deliver anyway.
    :ivar logLines: the lines to log (RFC 8460 ``validation-failure``), one
        per mismatched host, in ``enforce`` and ``testing`` modes.
    """

    mode: str | None
    usable: tuple[str, ...]
    mismatched: tuple[str, ...]
    requireTLS: bool
    logLines: tuple[str, ...]


def selectMX(policy: Policy | None, mxHosts: Sequence[str], domain: str = "") -> MXDecision:
    """
    Apply ``policy`` (of the recipient ``domain``) to the domain's MX host
    names (RFC 8461 §4.1, §5): in ``enforce`` mode only the hosts the
    policy matches may be used; in ``testing`` mode all may, and the
    mismatches are to be logged; with mode ``none`` or no policy, all may.
    """
    hosts = tuple(mxHosts)
    if policy is None or policy.mode == "none":
        return MXDecision(None if policy is None else "none", hosts, (), False, ())
    mismatched = tuple(host for host in hosts if not policy.matches(host))
    lines = tuple(
        f"mta-sts domain={domain or '?'} result={VALIDATION_FAILURE} mode={policy.mode} "
        f"id={policy.id}: MX host {_normalName(host)} matches no mx of the policy ({' '.join(policy.mx)})"
        for host in mismatched
    )
    if policy.mode == "enforce":
        usable = tuple(host for host in hosts if host not in mismatched)
        return MXDecision("enforce", usable, mismatched, True, lines)
    return MXDecision(policy.mode, hosts, mismatched, False, lines)


# -- fetching ----------------------------------------------------------------


# -- the cache and the API ---------------------------------------------------


@dataclass
class _Entry:
    policy: Policy
    fetchedAt: float


class MTASTS:
    """
    MTA-STS policies of recipient domains, discovered, fetched and cached.

    :param resolver: the ``twisted.names`` resolver for the TXT record and
        for the address of ``mta-sts.<domain>``.
    :param reactor: the reactor for connections and the fetch timeout.
    :param clock: what tells the time for ``max_age`` (default ``reactor``).
    :param trustRoot: what the HTTPS certificate must chain to, as
        :func:`twisted.internet.ssl.optionsForClientTLS` takes it (default:
        the platform's trust store).
    :param timeout: seconds for a whole fetch (connection, TLS, response and
        body).
    :param cachePath: a JSON file to keep the cache in across restarts.
    :param port: the TCP port of the policy hosts (443; tests use another).
    """

    def __init__(
        self,
        resolver: IResolver,
        reactor: Any,
        clock: IReactorTime | None = None,
        trustRoot: Any = None,
        timeout: float = 60.0,
        cachePath: str | None = None,
        port: int = 443,
    ) -> None:
        self.resolver = resolver
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.timeout = timeout
        self.cachePath = cachePath
        self._endpoints = EndpointFactory(reactor, resolver, trustRoot, port, timeout)
        self._cache: dict[str, _Entry] = {}
        self._waiting: dict[str, list[defer.Deferred[Policy | None]]] = {}
        self._saving: defer.Deferred[None] = defer.succeed(None)
        if cachePath is not None:
            self._cache = _load(cachePath)

    # The cache, for callers and tests.

    def cached(self, domain: str) -> Policy | None:
        """The cached, unexpired policy of ``domain``, without asking DNS or HTTPS."""
        entry = self._fresh(_normalName(domain))
        return entry.policy if entry is not None else None

    def _fresh(self, domain: str) -> _Entry | None:
        entry = self._cache.get(domain)
        if entry is not None and self.clock.seconds() >= entry.fetchedAt + entry.policy.maxAge:
            log.info(
                "mta-sts domain={domain} policy id={id} expired (max_age {maxAge} s)",
                domain=domain,
                id=entry.policy.id,
                maxAge=entry.policy.maxAge,
            )
            del self._cache[domain]
            self._save()
            return None
        return entry

    async def policyFor(self, domain: str) -> Policy | None:
        """
        The policy that applies to mail for ``domain`` now, or ``None`` when
        the domain has none.  A policy with mode ``none`` is returned as
        such (it says the domain withdrew its policy).  Never raises for DNS
        or HTTPS trouble: those are logged, and the cached policy if any is
        used.  Concurrent calls for one domain share one lookup.
        """
        domain = _normalName(domain)
        waiting = self._waiting.get(domain)
        if waiting is not None:
            d: defer.Deferred[Policy | None] = defer.Deferred()
            waiting.append(d)
            return await d
        self._waiting[domain] = waiting = []
        try:
            result = await self._policyFor(domain)
        except BaseException as e:
            del self._waiting[domain]
            for d in waiting:
                d.errback(e)
            raise
        del self._waiting[domain]
        for d in waiting:
            d.callback(result)
        return result

    async def _policyFor(self, domain: str) -> Policy | None:
        entry = self._fresh(domain)
        cachedPolicy = entry.policy if entry is not None else None
        try:
            recordId = await self._discover(domain)
        except DNSTemporaryError as e:
            log.warn(
                "mta-sts domain={domain} TXT lookup failed: {error}; {using}",
                domain=domain,
                error=str(e),
                using=_using(cachedPolicy),
            )
            return cachedPolicy
        if recordId is None:
            # §3.1, §5.1: no usable TXT record does not remove a cached policy.
            return cachedPolicy
        if cachedPolicy is not None and cachedPolicy.id == recordId:
            return cachedPolicy
        fetch = defer.Deferred.fromCoroutine(self._fetch(domain, recordId))
        fetch.addTimeout(self.timeout, self.reactor)
        try:
            policy = await fetch
        except Exception as e:
            error = (
                PolicyError(FETCH_ERROR, f"no complete answer within {self.timeout:g} s")
                if isinstance(e, defer.TimeoutError)
                else classify(e)
            )
            log.warn(
                "mta-sts domain={domain} result={resultType} id={id}: {detail}; {using}",
                domain=domain,
                resultType=error.resultType,
                id=recordId,
                detail=str(error),
                using=_using(cachedPolicy),
            )
            return cachedPolicy
        if policy != cachedPolicy:
            log.info(
                "mta-sts domain={domain} policy id={id} mode={mode} max_age={maxAge} mx={mx} (was: {was})",
                domain=domain,
                id=policy.id,
                mode=policy.mode,
                maxAge=policy.maxAge,
                mx=",".join(policy.mx) or "-",
                was=_describe(cachedPolicy),
            )
        self._cache[domain] = _Entry(policy, self.clock.seconds())
        self._save()
        return policy

    async def _discover(self, domain: str) -> str | None:
        """The ``id`` of the domain's one MTA-STS TXT record, or ``None``."""
        answer = await query(self.resolver, f"_mta-sts.{domain}", dns.TXT)
        records = [txtStrings(r) for r in answer.records]
        records = [r for r in records if _isSTSRecord(r)]
        if len(records) != 1:
            # §3.1: "If the number of resulting records is not one, or if the
            # resulting record is syntactically invalid, senders MUST assume
            # the recipient domain does not have an available MTA-STS Policy".
            if records:
                log.warn(
                    "mta-sts domain={domain} has {count} v=STSv1 TXT records: treated as none",
                    domain=domain,
                    count=len(records),
                )
            return None
        try:
            return parseRecord(records[0])
        except ValueError as e:
            log.warn(
                "mta-sts domain={domain} TXT record unusable: {error}", domain=domain, error=str(e)
            )
            return None

    async def _fetch(self, domain: str, recordId: str) -> Policy:
        # §3.3: a new pool without persistent connections, and a plain Agent:
        # it follows no redirect, and there is no HTTP cache.
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        agent = Agent.usingEndpointFactory(self.reactor, self._endpoints, pool=pool)
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
        try:
            response = await agent.request(
                b"GET", url.encode("ascii"), Headers({b"User-Agent": [b"txsmtp MTA-STS"]})
            )
        except defer.CancelledError:
            raise
        except Exception as e:
            raise classify(e) from e
        if response.code != 200:
            # §3.3: only 200 is a policy; 3xx redirects are not followed.
            await drain(response, MAX_POLICY_SIZE)
            where = response.headers.getRawHeaders(b"location", [b""])[0].decode("latin-1")
            raise PolicyError(
                FETCH_ERROR, f"HTTP status {response.code}" + (f" (to {where})" if where else "")
            )
        mediaType = (
            response.headers.getRawHeaders(b"content-type", [b""])[0].split(b";")[0].strip().lower()
        )
        if mediaType != b"text/plain":
            # §3.2: senders SHOULD check the media type is text/plain.
            await drain(response, MAX_POLICY_SIZE)
            raise PolicyError(
                POLICY_INVALID, f"media type is {mediaType.decode('latin-1')!r}, not text/plain"
            )
        body = await readBody(response, MAX_POLICY_SIZE)
        return parsePolicy(body, recordId)

    # Persistence.

    def _save(self) -> None:
        if self.cachePath is None:
            return
        data = json.dumps(
            {
                "version": 1,
                "policies": {
                    domain: {
                        "id": e.policy.id,
                        "mode": e.policy.mode,
                        "mx": list(e.policy.mx),
                        "maxAge": e.policy.maxAge,
                        "fetchedAt": e.fetchedAt,
                    }
                    for domain, e in self._cache.items()
                },
            },
            sort_keys=True,
        ).encode("utf-8")
        path = self.cachePath
        # One write at a time, in the order of the changes.
        self._saving = self._saving.addCallback(
            lambda _: threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), writeFile, path, data
            )
        )
        self._saving.addErrback(
            lambda f: log.failure("mta-sts cache not saved to {path}", f, path=path)
        )

    def saved(self) -> defer.Deferred[None]:
        """Fires when the cache file has every change made so far."""
        d: defer.Deferred[None] = defer.Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._saving.addBoth(fire)
        return d


def _using(policy: Policy | None) -> str:
    return (
        f"cached policy id={policy.id} mode={policy.mode} used"
        if policy is not None
        else "no policy"
    )


def _describe(policy: Policy | None) -> str:
    return f"id={policy.id} mode={policy.mode}" if policy is not None else "no policy"


def _load(path: str) -> dict[str, _Entry]:
    """Read the cache file; a missing or unreadable one is an empty cache."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(16 * 1024 * 1024))
        entries = {}
        for domain, e in data["policies"].items():
            policy = Policy(
                str(e["mode"]), tuple(str(p) for p in e["mx"]), int(e["maxAge"]), str(e["id"])
            )
            if policy.mode in _MODES and _ID.match(policy.id):
                entries[str(domain)] = _Entry(policy, float(e["fetchedAt"]))
        return entries
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warn("mta-sts cache {path} not read: {error}", path=path, error=repr(e))
        return {}
