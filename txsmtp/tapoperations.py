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

LIMITS_PARAMETERS: list[list[Any]] = []
LIMITS_FLAGS: list[list[Any]] = []


def _checkLimits(options: Any) -> None:
    pass


def _buildLimits(options: Any, built: Operations) -> None:
    pass


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


class OperationsOptions(DNSBLOptions):
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
