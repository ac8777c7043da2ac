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
