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
