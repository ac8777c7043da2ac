"""
The operations options of ``twistd smtp`` (a base of
:class:`txsmtp.tap.Options`) and what they build: metrics
(``txsmtp.metrics``), limits (``txsmtp.limits``), blocklists
(``txsmtp.dnsbl``), a policy service (``txsmtp.policyservice``),
the log format.  See docs/operations.rst.

Each topic keeps its options, its checks and its parts in a section of
its own below; :func:`buildOperations` gathers them for
:func:`txsmtp.tap.makeService`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.python import usage

__all__ = ["Operations", "OperationsOptions", "buildOperations"]


@dataclass
class Operations:
    """
    What the operations options built.

    :ivar guards: for :class:`~txsmtp.guards.GuardedDelivery`, in order.
    :ivar events: :class:`~txsmtp.serverevents.ServerEvents` observers.
    :ivar authLimiter: the factory's ``authLimiter``, or ``None``.
    :ivar services: services to run beside the listeners (each with a
        ``txsmtpLabel`` for start-up errors).
    :ivar summary: words for the start-up line.
    """

    guards: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    authLimiter: Any = None
    services: list[Any] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


# == metrics (txsmtp.metrics) ===========================================

METRICS_PARAMETERS: list[list[Any]] = []
METRICS_FLAGS: list[list[Any]] = []


def _checkMetrics(options: Any) -> None:
    pass


def _buildMetrics(options: Any, built: Operations) -> None:
    pass


# == limits (txsmtp.limits) =============================================

LIMITS_PARAMETERS: list[list[Any]] = [
    [
        "max-connections-per-ip", None, "20",
        "Open connections one client address may hold at once (more get 421 4.7.0 as the greeting), or off.",
    ],
    ["connection-rate", None, "off", "New connections per client address, N/PERIOD such as 60/1m (421 4.7.0), or off."],
    ["message-rate", None, "off", "Messages (MAIL) per client address not authenticated, N/PERIOD such as 100/1h (451 4.7.1), or off."],
    ["recipient-rate", None, "off", "Recipients (RCPT) per client address not authenticated, N/PERIOD such as 500/1h (450 4.7.1), or off."],
    ["user-message-rate", None, "off", "Messages (MAIL) per authenticated user, N/PERIOD such as 200/1h (451 4.7.1), or off."],
    [
        "auth-failures", None, "10/15m",
        "AUTH failures per client address across connections, N/PERIOD: each failure is answered later than "
        "the one before, the N-th locks AUTH out for the address for --auth-lockout (421 4.7.0); or off.",
    ],
    ["auth-lockout", None, "15m", "How long an address stays locked out of AUTH after --auth-failures (e.g. 15m, 1h)."],
    [
        "limits-exempt", None, "loopback,relay-networks",
        "Client networks no per-address limit applies to: CIDR blocks, 'loopback', 'relay-networks', "
        "comma-separated, or none.",
    ],
    ["limits-ipv6-prefix", None, "64", "IPv6 clients are counted per network of this prefix length (64: a site; 128: each address)."],
]  # fmt: skip
LIMITS_FLAGS: list[list[Any]] = []


def _checkLimits(options: Any) -> None:
    from txsmtp.limits import LOOPBACK, parseDuration, parseRate
    from txsmtp.queue.relay import parseNetworks

    parsed: dict[str, Any] = {}
    text = str(options["max-connections-per-ip"]).strip().lower()
    if text in ("off", "none", "0"):
        parsed["maxConnections"] = None
    elif text.isdigit():
        parsed["maxConnections"] = int(text)
    else:
        raise ValueError(f"--max-connections-per-ip {options['max-connections-per-ip']!r}: write a number such as 20, or off")
    for option, name in (
        ("connection-rate", "connectionRate"),
        ("message-rate", "messageRate"),
        ("recipient-rate", "recipientRate"),
        ("user-message-rate", "userMessageRate"),
        ("auth-failures", "authFailures"),
    ):
        try:
            parsed[name] = parseRate(str(options[option]))
        except ValueError as e:
            raise ValueError(f"--{option}: {e}") from None
    try:
        parsed["lockout"] = parseDuration(str(options["auth-lockout"]))
    except ValueError as e:
        raise ValueError(f"--auth-lockout: {e}") from None
    try:
        prefix = int(options["limits-ipv6-prefix"])
    except ValueError:
        prefix = -1
    if not 1 <= prefix <= 128:
        raise ValueError(f"--limits-ipv6-prefix {options['limits-ipv6-prefix']!r}: write a prefix length from 1 to 128, such as 64")
    parsed["ipv6Prefix"] = prefix
    networks: list[Any] = []
    relayNetworks = False
    for entry in (e.strip() for e in str(options["limits-exempt"]).split(",")):
        if entry.lower() in ("", "none"):
            continue
        if entry.lower() == "loopback":
            networks += LOOPBACK
        elif entry.lower() == "relay-networks":
            relayNetworks = True
        else:
            try:
                networks += parseNetworks(entry)
            except ValueError as e:
                raise ValueError(f"--limits-exempt: {e}, or loopback, relay-networks, none") from None
    parsed["exempt"] = networks
    parsed["exemptRelayNetworks"] = relayNetworks
    options["limits"] = parsed


def _buildLimits(options: Any, built: Operations) -> None:
    from twisted.internet import reactor

    from txsmtp.limits import AuthLimiter, LimitsGuard, summary

    parsed = options.get("limits")
    if parsed is None:
        _checkLimits(options)
        parsed = options["limits"]
    exempt = list(parsed["exempt"])
    setup = options.get("relaySetup")
    if parsed["exemptRelayNetworks"] and setup is not None:
        exempt += setup.policy.relayNetworks
    common = dict(exempt=exempt, ipv6Prefix=parsed["ipv6Prefix"])
    rates = ("connectionRate", "messageRate", "recipientRate", "userMessageRate")
    guard = None
    if parsed["maxConnections"] is not None or any(parsed[name] is not None for name in rates):
        guard = LimitsGuard(reactor, maxConnections=parsed["maxConnections"], **{n: parsed[n] for n in rates}, **common)
        built.guards.append(guard)
    auth = None
    if parsed["authFailures"] is not None:
        auth = AuthLimiter(reactor, parsed["authFailures"], parsed["lockout"], **common)
        built.authLimiter = auth
    built.summary.append(summary(guard, auth))


# == blocklists (txsmtp.dnsbl) ==========================================

DNSBL_PARAMETERS: list[list[Any]] = []
DNSBL_FLAGS: list[list[Any]] = []


def _checkDNSBL(options: Any) -> None:
    pass


def _buildDNSBL(options: Any, built: Operations) -> None:
    pass


# == policy service (txsmtp.policyservice) ==============================

POLICY_PARAMETERS: list[list[Any]] = []
POLICY_FLAGS: list[list[Any]] = []


def _checkPolicy(options: Any) -> None:
    pass


def _buildPolicy(options: Any, built: Operations) -> None:
    pass


# == logs ===============================================================

LOG_PARAMETERS: list[list[Any]] = []
LOG_FLAGS: list[list[Any]] = []


def _checkLogs(options: Any) -> None:
    pass


def _buildLogs(options: Any, built: Operations) -> None:
    pass


# == together ===========================================================


class OperationsOptions:
    """
    The operations options: a base of :class:`txsmtp.tap.Options`, whose
    ``optParameters`` and ``optFlags`` end with these.
    """

    operationsParameters: list[list[Any]] = (
        METRICS_PARAMETERS + LIMITS_PARAMETERS + DNSBL_PARAMETERS + POLICY_PARAMETERS + LOG_PARAMETERS
    )
    operationsFlags: list[list[Any]] = METRICS_FLAGS + LIMITS_FLAGS + DNSBL_FLAGS + POLICY_FLAGS + LOG_FLAGS

    def postOperationsOptions(self) -> None:
        """
        Check the operations options.

        :raise usage.UsageError: with a readable sentence.
        """
        for check in (_checkMetrics, _checkLimits, _checkDNSBL, _checkPolicy, _checkLogs):
            try:
                check(self)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


def buildOperations(options: Any) -> Operations:
    """The parts the operations options ask for (guards in order: limits, blocklists, policy service)."""
    built = Operations()
    _buildLimits(options, built)
    _buildDNSBL(options, built)
    _buildPolicy(options, built)
    _buildMetrics(options, built)
    _buildLogs(options, built)
    return built
