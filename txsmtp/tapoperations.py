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

METRICS_PARAMETERS: list[list[Any]] = [
    [
        "metrics",
        None,
        None,
        "Serve Prometheus metrics over HTTP on this strports endpoint "
        "(e.g. tcp:9464:interface=127.0.0.1); needs pip install 'txsmtp[metrics]'.",
    ],
    [
        "metrics-queue-interval",
        None,
        15.0,
        "Seconds between two reads of the queue's counts for the metrics.",
        float,
    ],
]
METRICS_FLAGS: list[list[Any]] = []


def _checkMetrics(options: Any) -> None:
    endpoint = options["metrics"]
    if endpoint is None:
        return
    from txsmtp.metrics import requirePrometheus

    requirePrometheus()
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, endpoint)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"--metrics {endpoint}: not an endpoint description ({e})") from None
    if not options["metrics-queue-interval"] > 0:
        raise ValueError("--metrics-queue-interval must be a number of seconds above 0")


def _buildMetrics(options: Any, built: Operations) -> None:
    endpoint = options["metrics"]
    if endpoint is None:
        return
    from txsmtp.metrics import MetricsService

    metrics = MetricsService(endpoint, queueInterval=options["metrics-queue-interval"])
    built.events.append(metrics.server)
    built.services.append(metrics)
    built.summary.append(f"metrics on {endpoint}")


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

DNSBL_PARAMETERS: list[list[Any]] = [
    ["dnsbl-threshold", None, 1, "Refuse a client when the weights of the --dnsbl lists listing it, less those of the --dnswl ones, add up to N.", int],
    ["dnsbl-timeout", None, 5.0, "Seconds each --dnsbl/--dnswl list has to answer (then it counts as not listing the client).", float],
    ["dnsbl-exempt", None, "127.0.0.0/8,::1/128", "Client networks not looked up, CIDR,... or 'none' (the --relay-networks are never looked up)."],
]  # fmt: skip
DNSBL_FLAGS: list[list[Any]] = []


class DNSBLOptions:
    """The repeatable options of the blocklists (a base of :class:`OperationsOptions`)."""

    def opt_dnsbl(self, value: str) -> None:
        """Look the client up in a DNS blocklist at connection: ZONE[=FILTER][*WEIGHT], e.g. bl.example=127.0.0.[2..11]*2; repeatable (docs/operations/dnsbl.rst)."""
        self._addDNSList(value, False)

    def opt_dnswl(self, value: str) -> None:
        """A DNS allowlist: ZONE[=FILTER][*WEIGHT], its weight (default 1) taken away from the --dnsbl score; repeatable."""
        self._addDNSList(value, True)

    def _addDNSList(self, value: str, allowlist: bool) -> None:
        from txsmtp.dnsbl import parseDNSList

        options: Any = self
        try:
            dl = parseDNSList(value, allowlist)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        lists = options.setdefault("dnsLists", [])
        if any(other.zone == dl.zone for other in lists):
            raise usage.UsageError(f"--dnsbl/--dnswl: {dl.zone} is given twice")
        lists.append(dl)


def _checkDNSBL(options: Any) -> None:
    lists = options.setdefault("dnsLists", [])
    if lists and not any(dl.weight > 0 for dl in lists):
        raise ValueError("--dnswl lowers the score of --dnsbl lists: give at least one --dnsbl")
    if options["dnsbl-threshold"] < 1:
        raise ValueError("--dnsbl-threshold must be 1 or more")
    if not options["dnsbl-timeout"] > 0:
        raise ValueError("--dnsbl-timeout must be more than 0 seconds")
    exempt = options["dnsbl-exempt"].strip()
    if exempt.lower() in ("", "none"):
        options["dnsblExempt"] = ()
    else:
        from txsmtp.queue.relay import parseNetworks

        try:
            options["dnsblExempt"] = parseNetworks(exempt)
        except ValueError as e:
            raise ValueError(f"--dnsbl-exempt: {e}") from None


def _buildDNSBL(options: Any, built: Operations) -> None:
    lists = options.get("dnsLists")
    if not lists:
        return
    from twisted.internet import reactor

    from txsmtp.dnsbl import DNSListGuard
    from txsmtp.tapmailauth import resolver

    exempt = list(options.get("dnsblExempt", ()))
    setup = options.get("relaySetup")
    if setup is not None:
        exempt.extend(setup.policy.relayNetworks)
    guard = DNSListGuard(
        lists,
        resolver(options),
        reactor,
        threshold=options["dnsbl-threshold"],
        exempt=exempt,
        timeout=options["dnsbl-timeout"],
    )
    built.guards.append(guard)
    blocklists = sum(1 for dl in lists if dl.weight > 0)
    words = f"dnsbl {blocklists} list{'s' if blocklists > 1 else ''}"
    if len(lists) > blocklists:
        words += f" + {len(lists) - blocklists} dnswl"
    built.summary.append(f"{words} (threshold {options['dnsbl-threshold']})")


# == policy service (txsmtp.policyservice) ==============================

POLICY_PARAMETERS: list[list[Any]] = [
    ["policy-timeout", None, 10.0, "Seconds for one request to a policy service (its turn, the connection, the answer).", float],
    ["policy-default", None, "DUNNO", "The action when a policy service is down, breaks the protocol or times out: DUNNO (accept), or an access(5) action such as '451 4.3.0 Try again later'; 'defer' is short for that one."],
    ["policy-connections", None, 4, "The most connections kept to each policy service (each carries one request at a time).", int],
    ["policy-stages", None, "RCPT", "The stages at which the policy services are asked, comma-separated: RCPT, DATA, END-OF-MESSAGE."],
]
POLICY_FLAGS: list[list[Any]] = []

#: What ``--policy-default defer`` stands for.
POLICY_DEFER = "451 4.3.0 Policy service unavailable, try again later"


def _optPolicyService(self: Any, description: str) -> None:
    """A Postfix policy service to ask (tcp:HOST:PORT, unix:PATH, any client endpoint description); repeatable: asked in order."""
    self.setdefault("policy-service", []).append(description)


def _policyDefault(options: Any) -> str:
    value = (options.get("policy-default") or "DUNNO").strip()
    return POLICY_DEFER if value.lower() == "defer" else value


def _checkPolicy(options: Any) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString

    from txsmtp.policyservice import STAGES, interpretAction

    services = options.get("policy-service") or []
    for description in services:
        try:
            clientFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--policy-service {description!r} is not a client endpoint description ({e}): use tcp:HOST:PORT or unix:PATH") from None
    if options["policy-connections"] < 1:
        raise ValueError("--policy-connections must be at least 1")
    if options["policy-timeout"] <= 0:
        raise ValueError("--policy-timeout must be a positive number of seconds")
    default = _policyDefault(options)
    verdict = interpretAction(default)
    if verdict.kind not in ("dunno", "ok", "refuse") or (verdict.kind == "refuse" and verdict.enhanced == "4.3.5" and not default.startswith("4")):
        raise ValueError(f"--policy-default {default!r} is not DUNNO, OK, REJECT, DEFER or a 4NN/5NN reply")
    stages = [s.strip().upper() for s in (options["policy-stages"] or "").split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"--policy-stages takes {', '.join(STAGES)} (comma-separated), not {options['policy-stages']!r}")


def _buildPolicy(options: Any, built: Operations) -> None:
    services = options.get("policy-service") or []
    if not services:
        return
    from twisted.internet import reactor

    from txsmtp.policyservice import PolicyClient, PolicyGuard, policyConnections

    clients = [PolicyClient(reactor, d, options["policy-timeout"], options["policy-connections"]) for d in services]
    stages = [s.strip().upper() for s in options["policy-stages"].split(",") if s.strip()]
    # PREPEND fields go through Envelope.addedHeaders, which only the relay queue puts into messages.
    prepends = options.get("relaySetup") is not None
    built.guards.append(PolicyGuard(clients, _policyDefault(options), stages, prepends=prepends))
    built.services.append(policyConnections(clients))
    built.summary.append(f"policy service{'s' if len(services) > 1 else ''} {', '.join(services)} at {'/'.join(stages)}")


# == logs ===============================================================
#
# The lines themselves are txsmtp.session.logs (connections, transactions,
# refused commands) and txsmtp.queue.attempts (delivery attempts); here
# only their format: text (txsmtp.logfile.TextLogObserver, the default)
# or JSON (txsmtp.logfile.JSONLogObserver).  See docs/operations/logs.rst.

LOG_FORMATS = ("text", "json")

LOG_PARAMETERS: list[list[Any]] = [
    [
        "log-format",
        None,
        "text",
        "How the log is written: text (one line per event) or json (one JSON object per line, "
        "with every field of the event). Honours twistd's --logfile and -n.",
    ],
]
LOG_FLAGS: list[list[Any]] = []


def _checkLogs(options: Any) -> None:
    fmt = (options.get("log-format") or "text").lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"--log-format takes text or json, not {options.get('log-format')!r}")
    options["log-format"] = fmt
    parent = getattr(options, "parent", None)
    if parent is None or not hasattr(parent, "get"):
        return
    from txsmtp import logfile

    # twistd names its observer by a factory called with no argument: the
    # factories in txsmtp.logfile read twistd's own log options from here.
    logfile.twistdOptions = {"logfile": parent.get("logfile"), "nodaemon": parent.get("nodaemon")}
    if fmt != "json":
        return
    if parent.get("syslog"):
        raise ValueError("--log-format json and twistd's --syslog do not go together: choose one")
    chosen = parent.get("logger")
    if chosen and chosen != "txsmtp.logfile.jsonLogger":
        raise ValueError(f"--log-format json and twistd's --logger {chosen} do not go together: choose one")
    parent["logger"] = "txsmtp.logfile.jsonLogger"


def _buildLogs(options: Any, built: Operations) -> None:
    if options.get("log-format") == "json":
        built.summary.append("JSON log")


# == together ===========================================================


class OperationsOptions(DNSBLOptions):
    """
    The operations options: a base of :class:`txsmtp.tap.Options`, whose
    ``optParameters`` and ``optFlags`` end with these.
    """

    operationsParameters: list[list[Any]] = (
        METRICS_PARAMETERS + LIMITS_PARAMETERS + DNSBL_PARAMETERS + POLICY_PARAMETERS + LOG_PARAMETERS
    )
    operationsFlags: list[list[Any]] = METRICS_FLAGS + LIMITS_FLAGS + DNSBL_FLAGS + POLICY_FLAGS + LOG_FLAGS

    # Repeatable options (usage.Options calls opt_* methods).
    opt_policy_service = _optPolicyService

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
