"""
Prometheus metrics for ``twistd smtp --metrics ENDPOINT``.

Theory of operation:

- :class:`ServerMetrics` is a :class:`~txsmtp.serverevents.ServerEvents`
  observer (a factory's ``events``); :class:`QueueMetrics` is a
  :class:`~txsmtp.queue.events.QueueEvents` observer (the scheduler's and
  the reporter's ``events``).  Both count into the metrics of one
  ``prometheus_client.CollectorRegistry`` of their own (not the
  global one: several servers, and tests, in one process do not collide).
- They are called on the reactor's hot path, so the labelled children
  are resolved once per set of label values and kept in a dict: counting
  is a dict lookup and the child's own increment (prometheus_client's
  lock, no other).  Every label value comes from a bounded set (protocol,
  local port, command word, reply class, mechanism name, hop kind,
  result), never from what a client wrote.
- :class:`QueueGauges` asks the store for its counts
  (:meth:`~txsmtp.queue.interfaces.IQueueStore.stats`, one SQL aggregate
  off the reactor thread) every :data:`QUEUE_INTERVAL` seconds through a
  :class:`~twisted.internet.task.LoopingCall`; a scrape reads the last
  answer and never touches the store.  The age of the oldest message is
  computed at scrape time from the last oldest arrival.
- :class:`MetricsService` serves the exposition over HTTP
  (``prometheus_client.twisted.MetricsResource`` in a
  :class:`twisted.web.server.Site`, at ``/metrics`` and ``/``) on a
  strports endpoint, and at start-up finds the relay's queue (its
  parent's ``queue``) to observe its scheduler and reporter and to poll
  its store.

prometheus_client is imported only when metrics are asked for
(``pip install 'txsmtp[metrics]'``).
"""

from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txsmtp.envelope import ConnectionInfo, Envelope
from txsmtp.queue.events import QueueEvents
from txsmtp.queue.model import statsOf
from txsmtp.serverevents import ServerEvents

__all__ = [
    "DURATION_BUCKETS",
    "QUEUE_INTERVAL",
    "MetricsService",
    "QueueGauges",
    "QueueMetrics",
    "ServerMetrics",
    "requirePrometheus",
]

_log = Logger(namespace="txsmtp.metrics")

#: Seconds between two questions to the store for the queue gauges.
QUEUE_INTERVAL = 15.0
#: The delivery latency histogram's buckets, in seconds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
INSTALL_HINT = "pip install 'txsmtp[metrics]'"


def requirePrometheus() -> None:
    """:raise ValueError: saying how to install prometheus_client when it is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ValueError(f"--metrics needs prometheus_client: {INSTALL_HINT}") from None


def _codeClass(code: int) -> str:
    return f"{code // 100}xx"


def _listener(connection: ConnectionInfo) -> str:
    host = connection.host
    port = getattr(host, "port", None)
    return str(port) if port is not None else type(host).__name__.lower()


class _Children:
    """The children of one labelled metric, resolved once per set of values."""

    __slots__ = ("metric", "children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[Any, Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class ServerMetrics(ServerEvents):
    """
    Counts what the SMTP and LMTP servers do (see the module's description).

    :param registry: the ``prometheus_client.CollectorRegistry``.
    """

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, labels, registry=registry)

        self._open = _Children(
            Gauge("txsmtp_connections_open", "Connections open now.", ("protocol", "listener"), registry=registry)
        )
        self._connections = _Children(
            counter("txsmtp_connections", "Connections accepted.", ("protocol", "listener"))
        )
        self._refused = _Children(
            counter("txsmtp_commands_refused", "Commands refused, by command and reply class.", ("command", "class"))
        )
        self._accepted = counter("txsmtp_messages_accepted", "Messages accepted (250 at the end of data).")
        self._acceptedBytes = counter("txsmtp_messages_accepted_bytes", "Octets of the messages accepted.")
        self._refusedMessages = _Children(
            counter("txsmtp_messages_refused", "Messages refused at the end of data, by reply class.", ("class",))
        )
        self._tls = _Children(counter("txsmtp_tls_handshakes", "TLS handshakes, by outcome.", ("outcome",)))
        self._auth = _Children(
            counter("txsmtp_auth_attempts", "AUTH exchanges, by mechanism and outcome.", ("mechanism", "outcome"))
        )

    def connectionMade(self, connection: ConnectionInfo, protocol: str) -> None:
        listener = _listener(connection)
        self._open(protocol, listener).inc()
        self._connections(protocol, listener).inc()

    def connectionLost(self, connection: ConnectionInfo, protocol: str) -> None:
        self._open(protocol, _listener(connection)).dec()

    def commandRefused(self, connection: ConnectionInfo, command: str, code: int) -> None:
        self._refused(command, _codeClass(code)).inc()

    def messageDone(self, connection: ConnectionInfo, envelope: Envelope, code: int, size: int | None) -> None:
        if code < 400:
            self._accepted.inc()
            if size:
                self._acceptedBytes.inc(size)
        else:
            self._refusedMessages(_codeClass(code)).inc()

    def tlsDone(self, connection: ConnectionInfo, ok: bool) -> None:
        self._tls("ok" if ok else "failed").inc()

    def authDone(self, connection: ConnectionInfo, mechanism: str, ok: bool) -> None:
        self._auth(mechanism, "success" if ok else "failure").inc()


class QueueMetrics(QueueEvents):
    """
    Counts the queue's delivery attempts and reports.

    :param registry: the ``prometheus_client.CollectorRegistry``.
    """

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        self._outcomes = _Children(
            Counter(
                "txsmtp_delivery_recipients",
                "Recipients of delivery attempts, by result and next hop kind.",
                ("result", "hop"),
                registry=registry,
            )
        )
        self._duration = _Children(
            Histogram(
                "txsmtp_delivery_attempt_duration_seconds",
                "How long delivery attempts took, by next hop kind.",
                ("hop",),
                buckets=DURATION_BUCKETS,
                registry=registry,
            )
        )
        self._reports = _Children(
            Counter("txsmtp_dsn_queued", "Delivery status notifications queued, by kind.", ("kind",), registry=registry)
        )

    def attemptDone(self, hop: Any, results: Any, seconds: float) -> None:
        kind = hop.kind
        self._duration(kind).observe(max(seconds, 0.0))
        for result in results:
            self._outcomes(result.result.value, kind).inc()

    def reportQueued(self, kind: str) -> None:
        self._reports(kind).inc()


class QueueGauges:
    """
    The queue's gauges, from the store's counts every ``interval`` seconds.

    :param registry: the ``prometheus_client.CollectorRegistry``.
    :param store: the :class:`~txsmtp.queue.interfaces.IQueueStore`; one
        without ``stats()`` is asked for ``list()`` (a full read: for
        small test stores only).
    :param clock: the :class:`~twisted.internet.interfaces.IReactorTime`
        (default: the store's, else the reactor).
    """

    def __init__(self, registry: Any, store: Any, clock: IReactorTime | None = None, interval: float = QUEUE_INTERVAL) -> None:
        from prometheus_client import Counter, Gauge

        if clock is None:
            clock = getattr(store, "clock", None)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.store = store
        self.clock: IReactorTime = clock
        self.interval = interval
        self._oldest: float | None = None
        self._recipients = _Children(
            Gauge("txsmtp_queue_recipients", "Recipients in the queue, by state.", ("state",), registry=registry)
        )
        self._messages = Gauge("txsmtp_queue_messages", "Messages in the queue.", registry=registry)
        age = Gauge(
            "txsmtp_queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (0 when it is empty).",
            registry=registry,
        )
        age.set_function(self._oldestAge)
        self._errors = Counter(
            "txsmtp_queue_stats_errors", "Failures to read the queue's counts from the store.", registry=registry
        )
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.clock

    def _oldestAge(self) -> float:
        oldest = self._oldest
        return 0.0 if oldest is None else max(0.0, self.clock.seconds() - oldest)

    def start(self) -> None:
        """Poll now and every ``interval`` seconds."""
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop polling."""
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def poll(self) -> Any:
        """Ask the store once; a failure is counted and logged, never raised."""
        try:
            if hasattr(self.store, "stats"):
                stats = yield self.store.stats()
            else:
                stats = statsOf((yield self.store.list()))
        except Exception as e:
            self._errors.inc()
            _log.warn("metrics: could not read the queue's counts: {why}", why=str(e) or type(e).__name__)
            return
        for state, count in stats["recipients"].items():
            self._recipients(state).set(count)
        self._messages.set(stats["messages"])
        self._oldest = stats["oldestArrival"]


class MetricsService(service.MultiService):
    """
    The metrics of a ``twistd smtp`` and their HTTP endpoint.

    :param endpoint: a strports description, e.g.
        ``tcp:9464:interface=127.0.0.1``.
    :param registry: the registry (default: a new one).
    :param reactor: the reactor to listen with.
    :param queueInterval: seconds between two polls of the store.
    :ivar server: the :class:`ServerMetrics`, for the factories' ``events``.
    :ivar queue: the :class:`QueueMetrics`.
    :ivar gauges: the :class:`QueueGauges` once a queue is found, else ``None``.
    """

    def __init__(
        self, endpoint: str, registry: Any = None, reactor: Any = None, queueInterval: float = QUEUE_INTERVAL
    ) -> None:
        super().__init__()
        from prometheus_client import CollectorRegistry
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.server = ServerMetrics(self.registry)
        self.queue = QueueMetrics(self.registry)
        self.gauges: QueueGauges | None = None
        self.queueInterval = queueInterval
        self.endpoint = endpoint
        #: for the start-up error of a port in use
        self.txsmtpLabel = f"--metrics {endpoint}"
        metrics = MetricsResource(registry=self.registry)
        root = Resource()
        root.putChild(b"metrics", metrics)
        root.putChild(b"", metrics)
        site = Site(root)
        site.noisy = False
        if reactor is None:
            strports.service(endpoint, site).setServiceParent(self)
        else:
            strports.service(endpoint, site, reactor).setServiceParent(self)

    def observeQueue(self, queueService: Any) -> None:
        """Observe the scheduler and reporter of a relay's queue service, and poll its store."""
        from txsmtp.queue.scheduler import Scheduler

        for child in queueService:
            if isinstance(child, Scheduler):
                child.events = self.queue
                if child.reporter is not None:
                    child.reporter.events = self.queue
        if self.gauges is None:
            self.gauges = QueueGauges(self.registry, queueService.store, interval=self.queueInterval)

    def _findQueue(self) -> None:
        queueService = getattr(self.parent, "queue", None)
        if queueService is not None and self.gauges is None:
            self.observeQueue(queueService)

    def privilegedStartService(self) -> None:
        self._findQueue()
        super().privilegedStartService()

    def startService(self) -> None:
        self._findQueue()
        super().startService()
        if self.gauges is not None:
            # The parent starts the queue (opening the store) before its children.
            self.gauges.start()

    def stopService(self) -> Any:
        if self.gauges is not None:
            self.gauges.stop()
        return super().stopService()
