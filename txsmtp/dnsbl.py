"""
DNS blocklists and allowlists (DNSBL, DNSWL; RFC 5782) as a connection
guard (:mod:`txsmtp.guards`).

Theory of operation
-------------------

A list is a DNS zone.  To ask whether the client ``192.0.2.1`` is on the
list ``bl.example``, one asks for the A records of
``1.2.0.192.bl.example``: the octets reversed (RFC 5782 §2.1).  An IPv6
client is written as its 32 nibbles reversed, dot-separated (RFC 5782
§2.4).  An answer (an address in ``127.0.0.0/8`` by convention, the
last octet often saying why) means "listed"; NXDOMAIN means "not listed";
the TXT records of the same name usually say why, with a link (RFC 5782
§2.1).

Each list is a :class:`DNSList`: a zone, an optional filter of the
answers that count (some lists answer different codes for different
reasons, and lists queried through a public resolver answer error codes
such as ``127.255.255.254``), and a weight.  As Postfix's postscreen
does, the weights of the lists that list the client are added up
(allowlists have negative weights) and the client is refused when the
sum reaches the threshold.  :func:`parseDNSList` reads the text form
``ZONE[=FILTER][*WEIGHT]`` of ``twistd smtp --dnsbl``.

:class:`DNSListGuard` asks every list at once when a client connects
(:meth:`~DNSListGuard.checkConnection`), each query with its own
timeout, and refuses with ``554 5.7.1`` naming the list and its TXT
reason (sanitized, bounded).  Answers, positive and negative, are kept
in a bounded in-memory :class:`AnswerCache` for their TTL (bounded too),
so a client that reconnects costs no query; clients from one address
connecting at once share the queries in flight.  A list that does not answer
(timeout, SERVFAIL) counts as not listing the client: the guard fails
open and logs it.  Clients in the exempt networks (loopback and the relay
networks by default, see :func:`txsmtp.tapoperations`) are not looked up.

The checks are pure (:func:`queryName`, :func:`parseDNSList`,
:meth:`DNSList.matches`, :func:`sanitizeReason`); the guard does its I/O
through any :class:`twisted.internet.interfaces.IResolver`.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError

from txsmtp.envelope import ConnectionInfo, peerIP
from txsmtp.errors import SMTPError

__all__ = [
    "AnswerCache",
    "DNSList",
    "DNSListGuard",
    "Verdict",
    "parseDNSList",
    "queryName",
    "sanitizeReason",
]

_log = Logger(namespace="txsmtp.dnsbl")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Seconds each list has to answer, by default.
DEFAULT_TIMEOUT = 5.0
#: The longest a cached answer is kept, whatever its TTL, in seconds.
MAX_TTL = 3600
#: How long a "not listed" (NXDOMAIN) answer is kept: twisted.names does
#: not hand on the SOA minimum of a negative answer (RFC 2308 §5).
NEGATIVE_TTL = 300
#: How many answers the cache holds.
DEFAULT_CACHE_SIZE = 10000
#: The longest reason (from TXT) put in a reply, in characters.
MAX_REASON = 200

_ZONE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$")

_OCTET = r"(\[[^\]]*\]|[^.\[\]]+)"
_FILTER = re.compile(r"\.".join([_OCTET] * 4))


def queryName(address: IPAddress, zone: str) -> str:
    """
    The name to ask ``zone`` about ``address``: IPv4 octets reversed, or
    IPv6 nibbles reversed (RFC 5782 §2.1, §2.4).

    >>> queryName(ipaddress.ip_address("192.0.2.1"), "bl.example")
    '1.2.0.192.bl.example'
    """
    if isinstance(address, ipaddress.IPv4Address):
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone


def _octetSet(text: str, what: str) -> frozenset[int]:
    # One octet of a filter: 2, or [2..11], or [2;4;10..12] (postscreen's form).
    if text.startswith("[") and text.endswith("]"):
        parts = text[1:-1].split(";")
    else:
        parts = [text]
    values: set[int] = set()
    for part in parts:
        low, sep, high = part.partition("..")
        try:
            a = int(low)
            b = int(high) if sep else a
        except ValueError:
            raise ValueError(f"{what}: {text!r} is not an octet: write 2, [2..11] or [2;4;10..12]") from None
        if not (0 <= a <= b <= 255):
            raise ValueError(f"{what}: {text!r} is not within 0..255 (low..high)")
        values.update(range(a, b + 1))
    return frozenset(values)


@dataclass(frozen=True)
class DNSList:
    """
    One list.

    :ivar zone: the list's DNS zone (``bl.example``).
    :ivar filter: for each of the four octets of an answer, the values
        that count; ``None`` for the default: any address in
        ``127.0.0.0/8`` but ``127.255.255.0/24`` (the error codes some
        lists answer through public resolvers).
    :ivar weight: added to the client's score when the list lists it
        (negative for an allowlist).
    :ivar text: how it was written (for logs).
    """

    zone: str
    filter: tuple[frozenset[int], ...] | None = None
    weight: int = 1
    text: str = ""

    def matches(self, answer: ipaddress.IPv4Address) -> bool:
        """Whether the A record ``answer`` counts as a listing."""
        octets = answer.packed
        if self.filter is None:
            return octets[0] == 127 and octets[1:3] != b"\xff\xff"
        return all(o in allowed for o, allowed in zip(octets, self.filter, strict=True))

    @property
    def allowlist(self) -> bool:
        """Whether this list lowers the score (a DNSWL)."""
        return self.weight < 0


def parseDNSList(text: str, allowlist: bool = False) -> DNSList:
    """
    A list from ``ZONE[=FILTER][*WEIGHT]`` (the form of postscreen's
    ``postscreen_dnsbl_sites``): ``bl.example``,
    ``bl.example=127.0.0.[2..11]``, ``bl.example*2``,
    ``bl.example=127.0.0.[2;4;10..12]*3``.

    With ``allowlist`` (``--dnswl``), the weight (default 1) is taken
    away from the score: ``wl.example*5`` weighs -5.

    :raise ValueError: with a readable sentence.
    """
    option = "--dnswl" if allowlist else "--dnsbl"
    rest, star, weightText = text.strip().rpartition("*") if "*" in text else (text.strip(), "", "")
    zone, eq, filterText = rest.partition("=")
    zone = zone.strip().rstrip(".").lower()
    if not _ZONE.match(zone) or "." not in zone:
        raise ValueError(f"{option} {text!r}: {zone!r} is not a DNS zone; write ZONE[=FILTER][*WEIGHT], e.g. bl.example=127.0.0.[2..11]*2")
    weight = 1
    if star:
        try:
            weight = int(weightText)
        except ValueError:
            raise ValueError(f"{option} {text!r}: the weight after '*' must be a whole number") from None
        if weight == 0:
            raise ValueError(f"{option} {text!r}: a weight of 0 has no effect")
        if allowlist and weight < 0:
            raise ValueError(f"{option} {text!r}: write the weight as a positive number; --dnswl takes it away from the score")
    if allowlist:
        weight = -weight
    octetFilter: tuple[frozenset[int], ...] | None = None
    if eq:
        m = _FILTER.fullmatch(filterText.strip())
        octets = list(m.groups()) if m else []
        if len(octets) != 4:
            raise ValueError(f"{option} {text!r}: the filter must have four octets, e.g. 127.0.0.[2..11]")
        octetFilter = tuple(_octetSet(o, f"{option} {text!r}") for o in octets)
    return DNSList(zone, octetFilter, weight, text.strip())


_UNSAFE = re.compile(r"[^\x21-\x7e]+")


def sanitizeReason(text: bytes | str, limit: int = MAX_REASON) -> str:
    """
    A TXT record made fit for an SMTP reply: printable ASCII only (every
    run of anything else, CR and LF included, becomes one space), at most
    ``limit`` characters.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    clean = _UNSAFE.sub(" ", text).strip()
    if len(clean) > limit:
        clean = clean[: limit - 3].rstrip() + "..."
    return clean


class AnswerCache:
    """
    Answers by query name, each until its expiry, at most ``size`` of them
    (the least recently used goes first).

    :param clock: an :class:`~twisted.internet.interfaces.IReactorTime`.
    """

    def __init__(self, clock: Any, size: int = DEFAULT_CACHE_SIZE) -> None:
        self.clock = clock
        self.size = size
        self._entries: OrderedDict[tuple[str, int], tuple[float, Any]] = OrderedDict()

    def get(self, key: tuple[str, int]) -> Any:
        """The answer kept for ``key``, or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock.seconds():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: tuple[str, int], value: Any, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds (at most :data:`MAX_TTL`)."""
        ttl = min(ttl, MAX_TTL)
        if ttl <= 0 or self.size <= 0:
            return
        self._entries[key] = (self.clock.seconds() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Verdict:
    """
    What the lists say of one client.

    :ivar score: the sum of the weights of the lists listing it.
    :ivar listedBy: those lists, in the order given.
    :ivar failed: the lists that did not answer (counted as not listing).
    """

    score: int
    listedBy: tuple[DNSList, ...]
    failed: tuple[DNSList, ...]


def _timeouts(seconds: float) -> tuple[float, ...]:
    # twisted.names tries once per item: a second try for a lost UDP
    # datagram, the whole bounded by ``seconds``.
    if seconds > 2:
        return (seconds / 3, seconds * 2 / 3)
    return (seconds,)




class DNSListGuard:
    """
    A guard (:mod:`txsmtp.guards`) refusing clients the lists add up
    against: ``554 5.7.1`` at the greeting.

    :param lists: the :class:`DNSList` s, blocklists and allowlists.
    :param resolver: an :class:`~twisted.internet.interfaces.IResolver`.
    :param clock: an :class:`~twisted.internet.interfaces.IReactorTime`
        for the cache.
    :param threshold: the score at which a client is refused.
    :param exempt: networks whose clients are not looked up.
    :param timeout: seconds each list has to answer.
    :param cacheSize: how many answers to keep.
    """

    def __init__(
        self,
        lists: Sequence[DNSList],
        resolver: Any,
        clock: Any,
        *,
        threshold: int = 1,
        exempt: Iterable[Network] = (),
        timeout: float = DEFAULT_TIMEOUT,
        cacheSize: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.lists = tuple(lists)
        self.resolver = resolver
        self.threshold = threshold
        self.exempt = tuple(exempt)
        self.timeout = timeout
        self.clock = clock
        self.cache = AnswerCache(clock, cacheSize)
        self._pending: dict[tuple[str, int], list[defer.Deferred[Any]]] = {}

    def isExempt(self, address: IPAddress) -> bool:
        """Whether ``address`` is in an exempt network."""
        return any(address.version == n.version and address in n for n in self.exempt)

    async def checkConnection(self, connection: ConnectionInfo) -> None:
        """Refuse the client if the lists' score reaches the threshold."""
        address = peerIP(connection)
        if address is None or self.isExempt(address):
            return
        verdict = await self.verdict(address)
        if verdict.score < self.threshold:
            return
        blockers = [dl for dl in verdict.listedBy if not dl.allowlist]
        worst = max(blockers, key=lambda dl: dl.weight) if blockers else verdict.listedBy[0]
        reason = await self.reason(address, worst)
        _log.info(
            "dnsbl: refused [{address}] (session {session}): score {score} >= {threshold}, listed by {zones}",
            address=str(address),
            session=connection.sessionId,
            score=verdict.score,
            threshold=self.threshold,
            zones=",".join(dl.zone for dl in verdict.listedBy),
        )
        text = f"Service unavailable; client [{address}] blocked using {worst.zone}"
        if reason:
            text += f": {reason}"
        raise SMTPError(554, "5.7.1", text)

    async def verdict(self, address: IPAddress) -> Verdict:
        """Ask every list at once about ``address``."""
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._answers(address, dl)) for dl in self.lists], consumeErrors=True
        )
        score = 0
        listed: list[DNSList] = []
        failed: list[DNSList] = []
        for dl, answers in zip(self.lists, results, strict=True):
            if answers is None:
                failed.append(dl)
            elif any(dl.matches(a) for a in answers):
                listed.append(dl)
                score += dl.weight
        return Verdict(score, tuple(listed), tuple(failed))

    def _lookup(self, name: str, rrType: int) -> defer.Deferred[Any]:
        """
        The payloads of ``name``'s ``rrType`` records (a tuple, empty for
        NXDOMAIN), from the cache or the DNS; ``None`` if the DNS failed.
        Connections asking the same question at once share one query.
        """
        key = (name, rrType)
        cached = self.cache.get(key)
        if cached is not None:
            return defer.succeed(cached)
        waiter: defer.Deferred[Any] = defer.Deferred()
        pending = self._pending.get(key)
        if pending is not None:
            pending.append(waiter)
            return waiter
        self._pending[key] = [waiter]
        asking = defer.Deferred.fromCoroutine(self._ask(name, rrType))
        asking.addErrback(lambda f: _log.failure("dnsbl: looking up {name} failed", f, name=name))
        asking.addCallback(self._answered, key)
        return waiter

    def _answered(self, payloads: Any, key: tuple[str, int]) -> None:
        for waiter in self._pending.pop(key, []):
            waiter.callback(payloads)

    async def _ask(self, name: str, rrType: int) -> Any:
        key = (name, rrType)
        asking = defer.maybeDeferred(self.resolver.query, dns.Query(name, rrType), _timeouts(self.timeout))
        # twisted.names bounds each try; this bounds the whole (a fallback
        # to TCP included).
        asking.addTimeout(self.timeout + 1, self.clock)
        try:
            result: Any = await asking
        except DNSNameError:
            self.cache.put(key, (), NEGATIVE_TTL)
            return ()
        except Exception as e:
            _log.warn(
                "dnsbl: no answer for {type} {name} ({error}); counted as not listed",
                type=dns.QUERY_TYPES.get(rrType, rrType),
                name=name,
                error=_errorText(e),
            )
            return None
        records = [rr for rr in result[0] if rr.type == rrType]
        payloads = tuple(rr.payload for rr in records)
        ttl = min((rr.ttl for rr in records), default=NEGATIVE_TTL)
        self.cache.put(key, payloads, ttl)
        return payloads

    async def _answers(self, address: IPAddress, dl: DNSList) -> tuple[ipaddress.IPv4Address, ...] | None:
        payloads = await self._lookup(queryName(address, dl.zone), dns.A)
        if payloads is None:
            return None
        return tuple(ipaddress.IPv4Address(p.address) for p in payloads)

    async def reason(self, address: IPAddress, dl: DNSList) -> str:
        """The list's TXT record for ``address``, sanitized; ``""`` if none."""
        payloads = await self._lookup(queryName(address, dl.zone), dns.TXT)
        if not payloads:
            return ""
        return sanitizeReason(b" ".join(b"".join(p.data) for p in payloads))

    def __repr__(self) -> str:
        return f"DNSListGuard({[dl.text or dl.zone for dl in self.lists]}, threshold={self.threshold})"


def _errorText(error: BaseException) -> str:
    name = type(error).__name__
    if name == "DNSServerError":
        return "server failure (SERVFAIL)"
    if name == "DNSQueryRefusedError":
        return "query refused"
    if isinstance(error, defer.TimeoutError) or name.endswith("TimeoutError"):
        return "timeout"
    return str(error) or name
