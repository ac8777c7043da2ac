"""
The relay options of ``twistd smtp`` and the queue services they build.

The relay is on when any of ``--queue``, ``--relay-host``, ``--route``,
``--local-domains`` or ``--relay-networks`` is given.  Then every accepted
message goes into the queue directory (``--queue``, ``./queue`` by
default) through a :class:`~txsmtp.queue.relay.RelayDelivery`, and a
:class:`~txsmtp.queue.scheduler.Scheduler` hands it on: local domains to
the ``--deliver`` delivery (or their ``--route``), other domains to the
``--relay-host`` or their mail exchangers.  With none of those options,
``twistd smtp`` is the plain server it always was.

Used by :mod:`txsmtp.tap`: :class:`RelayOptions` is a base of its
:class:`~txsmtp.tap.Options`, :func:`buildRelay` is called by
:func:`~txsmtp.tap.makeService`, and :class:`QueueService` is started
before the listeners and stopped after the last session.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from txsmtp.queue.relay import DEFAULT_MAX_HOPS, RelayDelivery, RelayPolicy, parseNetworks
from txsmtp.queue.senders import SenderLoginMap
from txsmtp.tapchecks import _cannotStart, _hostnameProblem, _positiveInt

__all__ = ["RelayOptions", "QueueService", "RelaySetup", "buildRelay", "parseDuration", "relaySummary"]

_log = Logger(namespace="txsmtp.tap")

#: The options whose presence turns the relay on.
RELAY_SWITCHES = ("queue", "relay-host", "route", "local-domains", "relay-networks")

#: The options that mean something only with the relay on.
RELAY_ONLY = (
    "relay-credentials", "relay-tls", "relay-ca", "dns-server", "retry-min", "retry-max",
    "max-queue-lifetime", "delay-warning", "sender-login-map", "destination-concurrency", "max-hops",
    "queue-lease", "queue-node", "queue-pool",
)  # fmt: skip

#: How long a claim holds when ``--queue-lease`` is not given (seconds).
DEFAULT_LEASE = 300.0

#: The queue directory when the relay is on and ``--queue`` is not given.
DEFAULT_QUEUE = "queue"

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.I)


def parseDuration(text: str, option: str = "duration") -> float:
    """
    Seconds from ``300``, ``300s``, ``5m``, ``4h``, ``5d`` or ``1w``; at
    least 1 second.

    :raise ValueError: with a readable sentence naming ``--option``.
    """
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(
            f"--{option} takes a duration such as 300, 300s, 5m, 4h or 5d, not {text!r}"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if seconds < 1:
        raise ValueError(f"--{option} must be at least 1 second, not {text!r}")
    return seconds


def _duration(option: str) -> Any:
    def convert(value: str) -> float:
        return parseDuration(value, option)

    convert.coerceDoc = "A duration: 300, 300s, 5m, 4h, 5d (at least 1 s)."  # type: ignore[attr-defined]
    return convert


class RelayOptions:
    """
    The relay's options: a base of :class:`txsmtp.tap.Options`, whose
    ``optParameters`` end with :attr:`relayParameters`.
    """

    relayParameters = [
        ["queue", None, None, "The queue: a directory, or postgresql://USER@HOST/DB for one shared by several nodes; turns the relay on (default ./queue when another relay option is given)."],
        ["queue-lease", None, None, "How long a claim on queued mail holds before another node may take it; renewed while a delivery runs (default 5m)", _duration("queue-lease")],
        ["queue-node", None, None, "This node's name in a PostgreSQL queue, one per live node (default: the host name)."],
        ["queue-pool", None, None, "Connections to a PostgreSQL queue for its work, besides the listener's and the slots' (default 10)", _positiveInt("queue-pool")],
        ["local-domains", None, None, "Domains this server is the final destination for, D1,D2: their mail goes to --deliver."],
        ["relay-networks", None, None, "Client networks allowed to relay without AUTH, CIDR,... (default: none)."],
        ["relay-host", None, None, "Send all mail for other domains through this smart host, [HOST]:PORT."],
        ["relay-credentials", None, None, "A file with one line USER:PASSWORD to log in to --relay-host."],
        ["relay-tls", None, None, "TLS toward --relay-host: require (default), verify, opportunistic or none."],
        ["relay-ca", None, None, "PEM CA certificates to verify --relay-host with (default: the system's)."],
        ["dns-server", None, None, "The DNS server for MX lookups, IP:PORT (default: the system's)."],
        ["retry-min", None, None, "The shortest delay before a retry (default 300s)", _duration("retry-min")],
        ["retry-max", None, None, "The longest delay between retries (default 4000s)", _duration("retry-max")],
        ["max-queue-lifetime", None, None, "How long a message may stay queued before it bounces (default 5d)", _duration("max-queue-lifetime")],
        ["delay-warning", None, None, "Send a delay report after this long (default: never)", _duration("delay-warning")],
        ["sender-login-map", None, None, "A file of 'user: address, @domain' lines: what each authenticated user may send as."],
        ["destination-concurrency", None, None, "The most deliveries at once to one destination (default 20)", _positiveInt("destination-concurrency")],
        ["max-hops", None, None, "The most Received: header fields a message may carry (default 50)", _positiveInt("max-hops")],
    ]  # fmt: skip

    def opt_route(self, route: str) -> None:
        """Send one domain's mail to a host: DOMAIN=smtp:[HOST]:PORT, DOMAIN=lmtp:unix:/PATH or DOMAIN=lmtp:[HOST]:PORT; repeatable."""
        routes: list[str] = self.setdefault("route", [])  # type: ignore[attr-defined]
        routes.append(route)

    def postRelayOptions(self) -> None:
        """
        Check the relay options and put what they mean in ``self``:
        ``relay`` (whether it is on), ``relaySetup`` (a :class:`RelaySetup`,
        or ``None``).

        :raise usage.UsageError: with a readable sentence.
        """
        options: Any = self
        options.setdefault("route", [])
        on = any(options[name] for name in RELAY_SWITCHES)
        options["relay"] = on
        options["relaySetup"] = None
        if not on:
            given = [name for name in RELAY_ONLY if options[name] is not None]
            if given:
                raise usage.UsageError(
                    f"--{given[0]} applies only to the relay: turn it on with --queue DIR "
                    "(or --local-domains, --relay-host, --route, --relay-networks)"
                )
            return
        try:
            options["relaySetup"] = _setup(options)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


@dataclass
class RelaySetup:
    """What the relay options say, checked (see :meth:`RelayOptions.postRelayOptions`)."""

    queue: str
    localDomains: list[str]
    routes: dict[str, Any]
    relayHost: Any
    policy: RelayPolicy
    credentials: tuple[str, str] | None
    trustRoot: Any
    dnsServer: tuple[str, int] | None
    retryMin: float
    retryMax: float
    lifetime: float
    delayWarning: float | None
    destinationConcurrency: int
    #: how long a claim holds (``--queue-lease``)
    lease: float = DEFAULT_LEASE
    #: for a PostgreSQL queue: the node's name and pool size (``None``: a directory)
    node: str | None = None
    pool: int = 10

    @property
    def shared(self) -> bool:
        """Whether the queue is in PostgreSQL (shared by nodes), not in a directory."""
        from txsmtp.queue.postgres import isPostgresURL

        return isPostgresURL(self.queue)


def _setup(options: Any) -> RelaySetup:
    from txsmtp.queue.routing import parseRelayHost, parseRoute

    localDomains: list[str] = []
    for domain in (options["local-domains"] or "").split(","):
        domain = domain.strip().rstrip(".").lower()
        if not domain:
            continue
        if domain.startswith("["):
            raise ValueError(f"--local-domains: {domain!r} is not a domain name (an address literal is never local)")
        problem = _hostnameProblem(domain)
        if problem:
            raise ValueError(f"--local-domains: {domain!r} is not a domain name: {problem}")
        localDomains.append(domain)
    if options["local-domains"] is not None and not localDomains:
        raise ValueError("--local-domains: no domain given (write D1,D2)")
    routes: dict[str, Any] = {}
    for text in options["route"]:
        try:
            domain, hop = parseRoute(text)
        except ValueError as e:
            raise ValueError(f"--route {text}: {e}") from None
        if domain in routes:
            raise ValueError(f"--route {text}: {domain} already has a route")
        routes[domain] = hop
    tls = (options["relay-tls"] or "require").lower()
    if tls not in ("require", "verify", "opportunistic", "none"):
        raise ValueError(
            f"--relay-tls takes require, verify, opportunistic or none, not {options['relay-tls']!r}"
        )
    relayHost = None
    if options["relay-host"]:
        try:
            relayHost = parseRelayHost(options["relay-host"], tls)
        except ValueError as e:
            raise ValueError(f"--relay-host {options['relay-host']}: {e}") from None
    else:
        for name in ("relay-credentials", "relay-tls", "relay-ca"):
            if options[name] is not None:
                raise ValueError(f"--{name} needs --relay-host")
    credentials = _credentials(options["relay-credentials"]) if options["relay-credentials"] else None
    trustRoot = trustRootFile(options["relay-ca"]) if options["relay-ca"] else None
    networks: tuple[Any, ...] = ()
    if options["relay-networks"] is not None:
        try:
            networks = parseNetworks(options["relay-networks"])
        except ValueError as e:
            raise ValueError(f"--relay-networks: {e}") from None
    logins = None
    if options["sender-login-map"]:
        logins = SenderLoginMap.fromFile(options["sender-login-map"])
    policy = RelayPolicy(
        networks, maxHops=options["max-hops"] or DEFAULT_MAX_HOPS, senderLogins=logins
    )
    retryMin = options["retry-min"] or 300.0
    retryMax = options["retry-max"] or 4000.0
    if retryMax < retryMin:
        raise ValueError(
            f"--retry-max ({retryMax:g}s) must not be shorter than --retry-min ({retryMin:g}s)"
        )
    queue = options["queue"] or DEFAULT_QUEUE
    node = None
    from txsmtp.queue.postgres import isPostgresURL

    if isPostgresURL(queue):
        _checkPsycopg()
        node = options["queue-node"] or _hostname()
    else:
        queue = os.path.abspath(queue)
        for name in ("queue-node", "queue-pool"):
            if options[name] is not None:
                raise ValueError(f"--{name} applies only to a PostgreSQL queue (--queue postgresql://...)")
    lease = options["queue-lease"] or DEFAULT_LEASE
    if lease < 5:
        raise ValueError(f"--queue-lease must be at least 5s, not {lease:g}s")
    return RelaySetup(
        queue=queue,
        lease=lease,
        node=node,
        pool=options["queue-pool"] or 10,
        localDomains=localDomains,
        routes=routes,
        relayHost=relayHost,
        policy=policy,
        credentials=credentials,
        trustRoot=trustRoot,
        dnsServer=_dnsServer(options["dns-server"]) if options["dns-server"] else None,
        retryMin=retryMin,
        retryMax=retryMax,
        lifetime=options["max-queue-lifetime"] or 5 * 86400.0,
        delayWarning=options["delay-warning"],
        destinationConcurrency=options["destination-concurrency"] or 20,
    )


def _checkPsycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ValueError(
            "--queue postgresql://... needs psycopg 3: pip install 'txsmtp[postgresql]'"
        ) from None


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _credentials(path: str) -> tuple[str, str]:
    """The one ``USER:PASSWORD`` line of ``--relay-credentials``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip("\r\n") for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"--relay-credentials: cannot read {path}: {why}") from None
    if len(lines) != 1 or ":" not in lines[0] or not lines[0].partition(":")[0]:
        raise ValueError(f"--relay-credentials: {path} must hold one line USER:PASSWORD")
    user, _, password = lines[0].partition(":")
    return user, password


def trustRootFile(path: str, option: str = "--relay-ca") -> Any:
    """The CA certificates of ``--relay-ca`` (or of ``option``) as a trust root."""
    from twisted.internet import ssl

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{option}: cannot read {path}: {e.strerror or e}") from None
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S
    )
    if not blocks:
        raise ValueError(f"{option}: {path} holds no PEM certificate")
    try:
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])
    except Exception as e:
        raise ValueError(f"{option}: {path}: {e}") from None


def _dnsServer(text: str) -> tuple[str, int]:
    """``IP:PORT``, ``[IPv6]:PORT`` or ``IP`` (port 53)."""
    import ipaddress

    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"--dns-server: write IP:PORT or [IPv6]:PORT, not {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--dns-server: {host!r} is not an IP address (write IP:PORT)") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--dns-server: {port!r} is not a port number")
    return host, int(port)


def relaySummary(options: Any) -> str:
    """The relay's part of the start-up line (``""`` with the relay off)."""
    setup: RelaySetup | None = options.get("relaySetup")
    if setup is None:
        return ""
    if setup.shared:
        from txsmtp.queue.postgres import redactURL

        parts = [f"queue {redactURL(setup.queue)} (node {setup.node}, lease {setup.lease:g}s)"]
    else:
        parts = [f"queue {setup.queue}"]
    parts.append("local domains " + (",".join(setup.localDomains) or "none"))
    if setup.routes:
        parts.append(
            "routes " + ", ".join(f"{d}={hop.kind}:{hop.destination}" for d, hop in sorted(setup.routes.items()))
        )
    if setup.relayHost is not None:
        parts.append(f"relay host {setup.relayHost.destination} (TLS {setup.relayHost.option('tls')})")
    else:
        parts.append("other domains to their MX hosts")
    networks = ",".join(str(n) for n in setup.policy.relayNetworks)
    parts.append(f"relaying for authenticated users and {networks}" if networks else "relaying for authenticated users only")
    return "; relay: " + ", ".join(parts)


class QueueService(service.MultiService):
    """
    The queue of a ``twistd smtp`` with the relay on: the store (opened
    before the listeners, so that a queue another process owns stops the
    start-up with one line), the scheduler (a child service), and the
    control socket ``DIR/control.sock`` for ``txsmtp queue``.  Stopped
    after the last session: scheduler first (attempts under way finish),
    then the outbound connections, the inner delivery, and the store.

    :param runAs: ``(uid, gid)`` twistd switches to after start-up, if any:
        the queue directory is given to that user once opened.
    :param outbound: the :class:`~txsmtp.queue.outbound.Outbound`, closed
        when the service stops.
    """

    def __init__(
        self,
        store: Any,
        directory: str | None,
        inner: Any = None,
        runAs: tuple[int, int] | None = None,
        outbound: Any = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.outbound = outbound
        self.directory = directory
        self.inner = inner
        self.runAs = runAs
        #: ``None`` for a queue in PostgreSQL (``txsmtp queue`` reaches the database)
        self.controlPath = os.path.join(directory, "control.sock") if directory is not None else None
        #: twistd's own options: how to report a failure to start
        self.twistdOptions: Any = None
        self._control: Any = None
        self._opened = False

    def openStore(self) -> None:
        """
        Open the store now (once), or stop the start-up with one line
        saying why; then listen on the control socket.
        """
        if self._opened:
            return
        from txsmtp.queue.errors import QueueError, QueueLockedError

        try:
            self.store.openNow()
        except QueueLockedError as e:
            if self.directory is None:
                _cannotStart(f"cannot open the queue: {e}", self.twistdOptions)
            # The reason first: daemonizing, twistd passes on only 100 octets.
            _cannotStart(
                "the queue is in use by another process (stop that server, or give another "
                f"--queue): {os.path.join(self.directory, 'lock')} is locked",
                self.twistdOptions,
            )
        except (QueueError, OSError) as e:
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            where = self.directory if self.directory is not None else repr(self.store)
            _cannotStart(f"cannot open the queue: {why} ({where})", self.twistdOptions)
        self._opened = True
        if self.directory is not None:
            self._listenControl()
            if self.runAs is not None:
                _giveTree(self.directory, *self.runAs)

    def _listenControl(self) -> None:
        """The control socket, at once (a UNIX socket listens synchronously)."""
        from txsmtp.queue.control import listenControl

        def listening(port: Any) -> None:
            self._control = port

        def failed(failure: Any) -> None:
            _log.error(
                "cannot listen on the control socket {path}: {why}; txsmtp queue will work on "
                "the store only when this server is stopped",
                path=self.controlPath,
                why=failure.getErrorMessage(),
            )

        assert self.controlPath is not None
        listenControl(self.store, self.controlPath).addCallbacks(listening, failed)

    def privilegedStartService(self) -> None:
        self.openStore()
        super().privilegedStartService()

    def startService(self) -> None:
        self.openStore()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if self._control is not None:
            control, self._control = self._control, None
            yield defer.maybeDeferred(control.stopListening)
        yield defer.maybeDeferred(super().stopService)
        if self.outbound is not None:
            yield self.outbound.close()
        stop = getattr(self.inner, "stop", None)
        if callable(stop):
            stop()
        if self._opened:
            self._opened = False
            yield self.store.close()


def _giveTree(path: str, uid: int, gid: int) -> None:
    """Give ``path`` and everything in it to ``uid``/``gid`` (made as root, run as them)."""
    os.chown(path, uid, gid)
    for root, directories, files in os.walk(path):
        for name in directories + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def buildRelay(options: Any, hostname: str, inner: Any, runAs: tuple[int, int] | None = None) -> tuple[RelayDelivery, QueueService] | None:
    """
    The relay's delivery and queue service for ``twistd smtp``'s options,
    or ``None`` with the relay off.  Nothing is opened here: the store is
    opened by :meth:`QueueService.openStore` when the service starts.

    :param inner: the ``--deliver`` delivery, where local domains end.
    """
    setup: RelaySetup | None = options.get("relaySetup")
    if setup is None:
        return None
    from twisted.internet import reactor

    from txsmtp.queue.outbound import Outbound
    from txsmtp.queue.reports import Reporter
    from txsmtp.queue.retry import RetryPolicy
    from txsmtp.queue.routing import Router
    from txsmtp.queue.scheduler import Scheduler
    from txsmtp.queue.sqlite import SQLiteStore
    from txsmtp.tapmailauth import mailAuthFilters, mxSecurity

    store: Any
    if setup.shared:
        from txsmtp.queue.postgres import PostgresStore

        store = PostgresStore(setup.queue, node=setup.node, poolSize=setup.pool)
    else:
        store = SQLiteStore(setup.queue)
    router = Router(setup.localDomains, setup.routes, setup.relayHost)
    outbound = Outbound(
        hostname,
        localDelivery=inner,
        relayCredentials=setup.credentials,
        trustRoot=setup.trustRoot,
        dnsServer=setup.dnsServer,
        mxSecurity=mxSecurity(options, reactor),
        mxTrustRoot=options.get("mtaSTSTrust"),
    )
    retry = RetryPolicy(minimum=setup.retryMin, maximum=setup.retryMax, lifetime=setup.lifetime)
    reporter = Reporter(store, hostname, lifetime=setup.lifetime)
    scheduler = Scheduler(
        store,
        router,
        outbound,
        reporter,
        retry=retry,
        destinationConcurrency=setup.destinationConcurrency,
        delayWarning=setup.delayWarning,
        owner=setup.node or "local",
        leaseSeconds=setup.lease,
    )
    queue = QueueService(store, None if setup.shared else setup.queue, inner, runAs, outbound)
    scheduler.setServiceParent(queue)
    delivery = RelayDelivery(store, router, setup.policy, inner, hostname, filters=mailAuthFilters(options, hostname, reactor))
    return delivery, queue
