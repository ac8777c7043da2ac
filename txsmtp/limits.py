"""
Rate and concurrency limits per client address and per authenticated
user, and the AUTH limiter that slows and then locks out an address
guessing passwords.

Theory of operation
-------------------

The counting is pure and knows nothing of SMTP: a :class:`TokenBucket`
table answers "may this key do one more now?" for a rate of ``N per M
seconds``, a :class:`ConnectionCounter` counts the open connections per
key.  Each bucket holds ``N`` tokens and gains ``N/M`` per second; an
event takes one token, and an empty bucket says how long until the next
token.  A full bucket is the same as no entry, so entries whose bucket
has refilled are dropped; the table is also an LRU with a cap on the keys
it tracks (the least recently used key is forgotten first, which only
ever forgives).  Time is a clock's ``seconds()`` (the reactor in
``twistd``, a :class:`twisted.internet.task.Clock` in tests).

Clients are counted by address: an IPv4 address, or an IPv6 address
grouped by its first ``ipv6Prefix`` bits (``/64`` by default: one site
usually holds a whole ``/64``, and counting each of its 2**64 addresses
apart would make every limit moot).  IPv4-mapped IPv6 addresses count
as IPv4.  Behind a PROXY-protocol front end the address the header named
counts (:class:`~txsmtp.envelope.ConnectionInfo` holds it).  Clients
without an IP address (a UNIX socket) and clients in the exempt networks
(loopback and ``--relay-networks`` by default) are never limited per
address.

:class:`LimitsGuard` is a guard of :class:`~txsmtp.guards.GuardedDelivery`:

- at the connection: the open connections of the address (a cap) and its
  connection rate: ``421 4.7.0`` as the greeting, after which the server
  closes the connection (RFC 5321 §3.8: 421 is the reply of a server that
  must close the transmission channel; RFC 3463 §3.8: ``X.7.0`` is "other
  or undefined security status", the code for a policy refusal that is
  neither a relay nor an authentication matter);
- at ``MAIL``: the message rate of the address (sessions not
  authenticated) or of the authenticated user: ``451 4.7.1``.  RFC 5321
  §4.3.2 does not list 450 among MAIL's replies (451 is, and any 4yz
  makes a client retry later, §4.2.1); ``X.7.1`` is "delivery not
  authorized, message refused" (RFC 3463 §3.8), the code Postfix uses for
  its rate limits too;
- at ``RCPT``: the recipient rate of the address: ``450 4.7.1``
  (RFC 5321 §4.2.2: 450 is "mailbox unavailable (e.g., ... temporarily
  blocked for policy reasons)", and is among RCPT's replies, §4.3.2).

Every text names the limit (the option that sets it) and when to retry,
so the server's ``refused ...`` log line names it too.

:class:`AuthLimiter` is the server factory's ``authLimiter``: the AUTH
failures of an address across all its connections.  Each failure takes a
token from the address's bucket (``N`` failures per ``M`` seconds); the
535 of the ``n``-th recent failure is delayed ``base * 2**(n-1)`` seconds
(capped); the failure that empties the bucket locks the address out for
a while: every AUTH from it is then answered ``421 4.7.0`` and the
connection closed.  A success changes nothing: a client holding one
valid account must not be able to wipe its record of wrong guesses for
others (and each address has its own record).

A limit set to ``None`` is off.  All of it lives in the memory of one
process: each node of a cluster counts its own clients.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol, Union

from twisted.logger import Logger

from txsmtp.envelope import ConnectionInfo, Envelope, Recipient, peerIP
from txsmtp.errors import SMTPError
from txsmtp.wire.address import Address
from txsmtp.wire.params import MailParameters

__all__ = [
    "AuthLimiter",
    "ConnectionCounter",
    "LimitsGuard",
    "Rate",
    "TokenBucket",
    "addressKey",
    "formatDuration",
    "parseDuration",
    "parseRate",
    "summary",
]

_log = Logger(namespace="txsmtp.limits")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007

#: The keys a table tracks at most by default.
DEFAULT_MAX_TRACKED = 100_000


class Clock(Protocol):
    """What the limits need of a clock (:class:`twisted.internet.interfaces.IReactorTime`)."""

    def seconds(self) -> float: ...


# -- parsing --------------------------------------------------------------

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([smhd]?)\s*$", re.IGNORECASE)


def parseDuration(text: str) -> float:
    """
    A duration: seconds (``30``, ``30s``), minutes (``10m``), hours
    (``1h``), days (``1d``); a unit alone is one of it (``m``).

    :raise ValueError: with a readable sentence.
    """
    m = _DURATION.match(text)
    if m is None or (m.group(1) is None and not m.group(2)):
        raise ValueError(f"{text!r} is not a duration: write seconds or a number with s, m, h or d, such as 90, 10m, 1h")
    value = float(m.group(1) or 1) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than 0 seconds")
    return value


class Rate:
    """
    ``count`` events per ``period`` seconds.

    :ivar count: the events allowed in a period (and the burst).
    :ivar period: the period in seconds.
    """

    __slots__ = ("count", "period")

    def __init__(self, count: int, period: float) -> None:
        if count < 1 or period <= 0:
            raise ValueError("a rate needs a count of at least 1 and a period longer than 0 seconds")
        self.count = count
        self.period = period

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rate) and (self.count, self.period) == (other.count, other.period)

    def __hash__(self) -> int:
        return hash((self.count, self.period))

    def __repr__(self) -> str:
        return f"Rate({self.count}, {self.period:g})"

    def __str__(self) -> str:
        period = formatDuration(self.period)
        return f"{self.count} per {period[2:] if period.startswith('1 ') else period}"


def parseRate(text: str) -> Rate | None:
    """
    ``N/PERIOD`` (``100/1h``, ``10/1m``, ``5/30s``, ``20/m``), or ``off``
    (``None``).

    :raise ValueError: with a readable sentence.
    """
    if text.strip().lower() in ("off", "none", "0"):
        return None
    count, slash, period = text.partition("/")
    if not slash or not count.strip().isdigit():
        raise ValueError(f"{text!r} is not a rate: write N/PERIOD such as 100/1h or 10/1m, or off")
    n = int(count)
    if n < 1:
        raise ValueError(f"{text!r}: the count of a rate must be at least 1 (or write off)")
    return Rate(n, parseDuration(period))


def formatDuration(seconds: float) -> str:
    """
    ``seconds`` in words: ``1 second``, ``90 seconds``, ``10 minutes``,
    ``1 hour``, ``2 days``; rounded up to whole minutes above two minutes
    and to whole hours above two hours.
    """
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}" + ("s" if n != 1 else "")
    if seconds > 7200:
        n = math.ceil(seconds / 3600)
        return f"{n} hours"
    if seconds > 120:
        n = math.ceil(seconds / 60)
        return f"{n} minutes"
    n = max(1, math.ceil(seconds))
    return f"{n} second" + ("s" if n != 1 else "")


def addressKey(connection: ConnectionInfo, ipv6Prefix: int = 64) -> str | None:
    """
    The key a client is counted under: its IPv4 address, or its IPv6
    network of ``ipv6Prefix`` bits (``2001:db8:1:2::/64``); ``None`` for a
    client without an IP address.
    """
    ip = peerIP(connection)
    if ip is None:
        return None
    if ip.version == 6 and ipv6Prefix < 128:
        return str(ipaddress.ip_network(f"{ip}/{ipv6Prefix}", strict=False))
    return str(ip)




# -- counting -------------------------------------------------------------


class TokenBucket:
    """
    A table of token buckets, one per key, for one :class:`Rate`; memory
    bounded (see the module documentation).

    :ivar rate: the rate.
    :ivar maxTracked: the keys tracked at most.
    """

    def __init__(self, rate: Rate, clock: Clock, maxTracked: int = DEFAULT_MAX_TRACKED) -> None:
        self.rate = rate
        self.clock = clock
        self.maxTracked = maxTracked
        # key -> (tokens, time of that count), least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.rate.count)
        tokens, then = entry
        refill = (now - then) * self.rate.count / self.rate.period
        return min(float(self.rate.count), tokens + max(refill, 0.0))

    def _expire(self, now: float) -> None:
        # Drop refilled buckets from the old end (no entry = a full bucket),
        # then the least recently used beyond the cap.
        buckets = self._buckets
        while buckets:
            key, (tokens, then) = next(iter(buckets.items()))
            if now - then < (self.rate.count - tokens) * self.rate.period / self.rate.count:
                break
            del buckets[key]
        while len(buckets) > self.maxTracked:
            buckets.popitem(last=False)

    def level(self, key: str) -> float:
        """The tokens ``key`` has now (``rate.count`` for an unknown key)."""
        return self._level(key, self.clock.seconds())

    def take(self, key: str) -> float | None:
        """
        Take one token for ``key``.

        :return: ``None`` if there was one, else the seconds until there
            is (nothing is taken then).
        """
        now = self.clock.seconds()
        self._expire(now)
        level = self._level(key, now)
        if level < 1.0:
            return (1.0 - level) * self.rate.period / self.rate.count
        self._buckets[key] = (level - 1.0, now)
        self._buckets.move_to_end(key)
        self._expire(now)
        return None

    def force(self, key: str) -> float:
        """Take one token for ``key`` even below zero tokens; the tokens left."""
        now = self.clock.seconds()
        level = self._level(key, now) - 1.0
        self._buckets[key] = (level, now)
        self._buckets.move_to_end(key)
        self._expire(now)
        return level

    def forget(self, key: str) -> None:
        """Drop ``key``'s bucket (as if full)."""
        self._buckets.pop(key, None)


class ConnectionCounter:
    """
    The open connections per key (a key is gone at zero: the table holds
    only keys with open connections, so it is bounded by the descriptors).
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, key: str) -> int:
        """The open connections of ``key``."""
        return self._counts.get(key, 0)

    def opened(self, key: str) -> int:
        """One more for ``key``; the count now."""
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        return n

    def closed(self, key: str) -> None:
        """One less for ``key``."""
        n = self._counts.get(key, 0) - 1
        if n > 0:
            self._counts[key] = n
        else:
            self._counts.pop(key, None)


def _retry(seconds: float) -> str:
    return f"try again in {formatDuration(max(seconds, 1.0))}"


class _Exemptions:
    """Networks whose clients no per-address limit applies to."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def __call__(self, connection: ConnectionInfo) -> bool:
        ip = peerIP(connection)
        return ip is None or any(ip in net for net in self.networks)


#: Exempt by default: the host itself (local submission, health checks).
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class LimitsGuard:
    """
    Per-address and per-user limits, as a guard of
    :class:`~txsmtp.guards.GuardedDelivery` (see the module documentation).

    :param clock: the time source (the reactor).
    :param maxConnections: open connections per address at once, or ``None``.
    :param connectionRate: new connections per address, or ``None``.
    :param messageRate: ``MAIL`` commands per address (sessions not
        authenticated), or ``None``.
    :param recipientRate: ``RCPT`` commands per address (sessions not
        authenticated), or ``None``.
    :param userMessageRate: ``MAIL`` commands per authenticated user, or ``None``.
    :param exempt: networks no per-address limit applies to.
    :param ipv6Prefix: IPv6 clients are counted per network of this length.
    :param maxTracked: addresses (or users) each rate table tracks at most.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        maxConnections: int | None = None,
        connectionRate: Rate | None = None,
        messageRate: Rate | None = None,
        recipientRate: Rate | None = None,
        userMessageRate: Rate | None = None,
        exempt: Iterable[Network] = LOOPBACK,
        ipv6Prefix: int = 64,
        maxTracked: int = DEFAULT_MAX_TRACKED,
    ) -> None:
        self.clock = clock
        self.maxConnections = maxConnections
        self.ipv6Prefix = ipv6Prefix
        self.exempt = _Exemptions(exempt)
        self.open = ConnectionCounter()
        table = lambda rate: TokenBucket(rate, clock, maxTracked) if rate is not None else None  # noqa: E731
        self.connections = table(connectionRate)
        self.messages = table(messageRate)
        self.recipients = table(recipientRate)
        self.userMessages = table(userMessageRate)
        # id(connection) -> the connection (held: its id cannot be reused
        # while it is here), the key it is counted under, the sessions open
        # on it.
        self._counted: dict[int, tuple[ConnectionInfo, str, int]] = {}

    def _key(self, connection: ConnectionInfo) -> str | None:
        if self.exempt(connection):
            return None
        return addressKey(connection, self.ipv6Prefix)

    def checkConnection(self, connection: ConnectionInfo) -> None:
        counted = self._counted.get(id(connection))
        if counted is not None and counted[0] is connection:
            # The same connection opens a session again: after AUTH, the
            # portal's realm opens the authenticated user's session
            # (txsmtp.auth.DeliveryRealm).  Not a new connection.
            self._counted[id(connection)] = (connection, counted[1], counted[2] + 1)
            return
        key = self._key(connection)
        if key is None:
            return
        if self.maxConnections is not None and self.open.count(key) >= self.maxConnections:
            raise SMTPError(
                421, "4.7.0",
                f"Too many connections from {key} (limit {self.maxConnections} at once, "
                "--max-connections-per-ip); try again when some of them are closed",
            )  # fmt: skip
        if self.connections is not None:
            wait = self.connections.take(key)
            if wait is not None:
                raise SMTPError(
                    421, "4.7.0",
                    f"Too many connections from {key} (limit {self.connections.rate}, --connection-rate); "
                    f"{_retry(wait)}",
                )  # fmt: skip
        self.open.opened(key)
        self._counted[id(connection)] = (connection, key, 1)

    def connectionClosed(self, connection: ConnectionInfo) -> None:
        counted = self._counted.get(id(connection))
        if counted is None or counted[0] is not connection:
            return
        del self._counted[id(connection)]
        _, key, sessions = counted
        if sessions > 1:
            self._counted[id(connection)] = (connection, key, sessions - 1)
        else:
            self.open.closed(key)

    def checkSender(self, connection: ConnectionInfo, sender: Address | None, parameters: MailParameters) -> None:
        user = connection.authenticated
        if user is not None:
            if self.userMessages is not None:
                wait = self.userMessages.take(user)
                if wait is not None:
                    raise SMTPError(
                        451, "4.7.1",
                        f"Too many messages from user {user} (limit {self.userMessages.rate}, "
                        f"--user-message-rate); {_retry(wait)}",
                    )  # fmt: skip
            return
        if self.messages is None:
            return
        key = self._key(connection)
        if key is None:
            return
        wait = self.messages.take(key)
        if wait is not None:
            raise SMTPError(
                451, "4.7.1",
                f"Too many messages from {key} (limit {self.messages.rate}, --message-rate); {_retry(wait)}",
            )  # fmt: skip

    def checkRecipient(self, connection: ConnectionInfo, recipient: Recipient, envelope: Envelope) -> None:
        if self.recipients is None or connection.authenticated is not None:
            return
        key = self._key(connection)
        if key is None:
            return
        wait = self.recipients.take(key)
        if wait is not None:
            raise SMTPError(
                450, "4.7.1",
                f"Too many recipients from {key} (limit {self.recipients.rate}, --recipient-rate); {_retry(wait)}",
            )  # fmt: skip

    def __repr__(self) -> str:
        return f"<LimitsGuard maxConnections={self.maxConnections}>"


class AuthLimiter:
    """
    AUTH failures per client address across connections: the factory's
    ``authLimiter`` (see the module documentation).

    :param clock: the time source (the reactor).
    :param failures: failures per address: the ``count``-th failure within
        ``period`` (less the decay) locks the address out.
    :param lockout: seconds an address stays locked out.
    :param baseDelay: the delay of the first recent failure's 535.
    :param maxDelay: the longest delay.
    :param exempt: networks never limited.
    :param ipv6Prefix: IPv6 clients are counted per network of this length.
    :param maxTracked: addresses tracked at most.
    """

    def __init__(
        self,
        clock: Clock,
        failures: Rate,
        lockout: float,
        *,
        baseDelay: float = 1.0,
        maxDelay: float = 8.0,
        exempt: Iterable[Network] = LOOPBACK,
        ipv6Prefix: int = 64,
        maxTracked: int = DEFAULT_MAX_TRACKED,
    ) -> None:
        self.clock = clock
        self.failures = TokenBucket(failures, clock, maxTracked)
        self.lockout = lockout
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.exempt = _Exemptions(exempt)
        self.ipv6Prefix = ipv6Prefix
        # key -> end of the lockout, oldest first.
        self._locked: OrderedDict[str, float] = OrderedDict()
        self.maxTracked = maxTracked

    def _key(self, connection: ConnectionInfo) -> str | None:
        if self.exempt(connection):
            return None
        return addressKey(connection, self.ipv6Prefix)

    def _lockedUntil(self, key: str) -> float | None:
        now = self.clock.seconds()
        locked = self._locked
        while locked and next(iter(locked.values())) <= now:
            locked.popitem(last=False)
        return locked.get(key)

    def refusal(self, connection: ConnectionInfo) -> SMTPError | None:
        """The ``421`` for an address locked out, else ``None``."""
        key = self._key(connection)
        if key is None:
            return None
        until = self._lockedUntil(key)
        if until is None:
            return None
        return SMTPError(
            421, "4.7.0",
            f"Too many authentication failures from {key} (--auth-failures {self.failures.rate}); "
            f"AUTH is locked for this address, {_retry(until - self.clock.seconds())}",
        )  # fmt: skip

    def failed(self, connection: ConnectionInfo) -> float:
        """Count a failure; the seconds to delay its 535."""
        key = self._key(connection)
        if key is None:
            return 0.0
        left = self.failures.force(key)
        recent = self.failures.rate.count - left
        if left < 0.5 and self._lockedUntil(key) is None:
            now = self.clock.seconds()
            self._locked[key] = now + self.lockout
            while len(self._locked) > self.maxTracked:
                self._locked.popitem(last=False)
            # The bucket starts again after the lockout.
            self.failures.forget(key)
            _log.warn(
                "{text}",
                text=f"AUTH locked out for {key} for {formatDuration(self.lockout)}: "
                f"{self.failures.rate.count} authentication failures (--auth-failures {self.failures.rate})",
                peer=key,
                lockout=self.lockout,
            )
        return min(self.baseDelay * 2 ** max(math.ceil(recent) - 1, 0), self.maxDelay)

    def succeeded(self, connection: ConnectionInfo) -> None:
        """A success: changes no record (see the module documentation)."""

    def __repr__(self) -> str:
        return f"<AuthLimiter {self.failures.rate}, lockout {self.lockout:g}s>"


def summary(guard: LimitsGuard | None, auth: AuthLimiter | None) -> str:
    """Words for the start-up line."""
    parts: list[str] = []
    if guard is not None:
        if guard.maxConnections is not None:
            parts.append(f"{guard.maxConnections} connections per address")
        for name, table in (
            ("connections", guard.connections),
            ("messages", guard.messages),
            ("recipients", guard.recipients),
            ("messages per user", guard.userMessages),
        ):
            if table is not None:
                parts.append(f"{name} {table.rate}")
    if auth is not None:
        parts.append(f"AUTH failures {auth.failures.rate}")
    return "limits " + ("; ".join(parts) if parts else "off")
