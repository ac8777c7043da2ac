"""
``twistd smtp``: option parsing and service construction.

A thin layer: every option maps onto an argument of
:class:`~txsmtp.server.SMTPFactory` or a listening endpoint.  ``--lmtp``
listeners get an :class:`~txsmtp.lmtp.LMTPFactory` made from the same
arguments (the same delivery, TLS, AUTH, limits and host name).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from twisted.application import service, strports
from twisted.cred import strcred
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import implementer

from txsmtp.auth import makePortal
from txsmtp.deliveryplugins import deliveryFactories, makeDelivery
from txsmtp.lmtp import LMTPFactory
from txsmtp.server import SMTPFactory
from txsmtp.tapchecks import (  # noqa: F401  (names tests and users import from here)
    _BACKLOG_ENDPOINTS,
    _NETWORK_ENDPOINTS,
    DEFAULT_BACKLOG,
    StartupError,
    _allows,
    _bytesUsers,
    _cannotStart,
    _checkLMTPEndpoint,
    _checkReadable,
    _descriptionParts,
    _endpointHint,
    _endpointKind,
    _giveMaildir,
    _holdsNoKey,
    _hostnameProblem,
    _isOpenToNetwork,
    _maildirDirectories,
    _positiveInt,
    _runAs,
    _useCheapLog,
    _why,
    withBacklog,
)
from txsmtp.tapmailauth import MailAuthOptions, mailAuthSummary
from txsmtp.tapoperations import OperationsOptions, buildOperations
from txsmtp.tapqueue import RelayOptions, buildRelay, relaySummary
from txsmtp.tls import ServerTLS, TLSConfigurationError

__all__ = [
    "Options",
    "makeService",
    "SMTPService",
    "StartupError",
    "startupSummary",
    "withBacklog",
    "DEFAULT_LISTEN",
    "DEFAULT_BACKLOG",
]

_log = Logger(namespace="txsmtp.tap")

#: Where ``twistd smtp`` listens when neither ``--listen``, ``--listen-tls``
#: nor ``--lmtp`` is given.
DEFAULT_LISTEN = "tcp:8025:interface=127.0.0.1"

def _seconds(name: str) -> Any:
    def convert(value: str) -> float:
        try:
            n = float(value)
        except ValueError:
            raise ValueError(f"--{name} takes a number of seconds, not {value!r}") from None
        if not n > 0:
            raise ValueError(f"--{name} must be more than 0 seconds")
        return n

    convert.coerceDoc = "Seconds (a number above 0)."  # type: ignore[attr-defined]
    return convert


def _bareLF(value: str) -> str:
    if value not in ("reject", "normalize"):
        raise ValueError(f"--bare-lf takes 'reject' or 'normalize', not {value!r}")
    return value


_bareLF.coerceDoc = "'reject' (550 after the final dot) or 'normalize' (rewrite as CRLF)."  # type: ignore[attr-defined]


class Options(usage.Options, strcred.AuthOptionMixin, RelayOptions, MailAuthOptions, OperationsOptions):
    """Command-line options of ``twistd smtp``."""

    # What --auth checkers must understand: the SASL mechanisms need
    # plaintext passwords (PLAIN, LOGIN, SCRAM without stored keys) or
    # CRAM-MD5 credentials.
    supportedInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    synopsis = "[options]"
    longdesc = (
        "Run an ESMTP server. Without options it listens on 127.0.0.1:8025 and stores every "
        "message in ./Maildir. --listen takes Twisted endpoint descriptions (strports), e.g. "
        "tcp:25, tcp6:25:interface=\\:\\:, unix:/run/txsmtp.sock. --lmtp listens for LMTP "
        "(RFC 2033: final delivery, one reply per recipient) with the same delivery and "
        "options, beside --listen or instead of it (then no SMTP listener is started); over "
        "TCP it needs an explicit interface=."
    )

    optParameters = [
        ["hostname", None, None, "The server's name in the greeting, EHLO and Received: (default: this machine's FQDN)."],
        ["deliver", None, "maildir:Maildir", "Where mail goes: TYPE:ARGS (see --help-deliver)."],
        ["max-size", None, 32 * 1024 * 1024, "The largest message accepted, in octets.", _positiveInt("max-size")],
        ["max-recipients", None, 100, "The most recipients in one transaction.", _positiveInt("max-recipients")],
        ["timeout", None, 300.0, "Seconds to wait for a command before closing with 421.", _seconds("timeout")],
        ["bare-lf", None, "reject", "What to do with a bare CR or LF in a message: reject or normalize.", _bareLF],
        ["shutdown-grace", None, 30.0, "Seconds to let transactions finish when stopping.", _seconds("shutdown-grace")],
        ["tls-cert", None, None, "PEM certificate chain for STARTTLS and --listen-tls (reloaded on SIGHUP)."],
        ["tls-key", None, None, "PEM private key for --tls-cert (default: the --tls-cert file)."],
    ] + RelayOptions.relayParameters + MailAuthOptions.mailAuthParameters + OperationsOptions.operationsParameters

    optFlags = [
        ["require-tls", None, "Refuse MAIL before STARTTLS (530 5.7.0)."],
        ["require-auth", None, "Refuse MAIL before AUTH (530 5.7.0): for submission ports."],
        [
            "allow-insecure-auth",
            None,
            "Offer AUTH without TLS. Only for trusted transports such as loopback or UNIX sockets.",
        ],
    ] + MailAuthOptions.mailAuthFlags + OperationsOptions.operationsFlags

    compData = usage.Completions(optActions={"bare-lf": usage.CompleteList(["reject", "normalize"])})

    def __init__(self) -> None:
        super().__init__()
        #: the message of the usage error parsing stopped with, if any
        self.usageError: str | None = None
        self["listen"] = []
        self["listen-tls"] = []
        self["lmtp"] = []

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            self.usageError = str(e)
            raise

    def getUsage(self, width: int | None = None) -> str:
        """
        The help text; after a usage error only a pointer to ``--help``.
        twistd prints this before the error's message, so a mistyped
        option ends with two lines instead of the whole help.
        """
        if self.usageError is not None:
            return "twistd smtp: usage error ('twistd smtp --help' lists the options):"
        return super().getUsage(width)

    def opt_version(self) -> None:
        """Print the versions of txsmtp, Twisted and Python, and exit."""
        import txsmtp
        from twisted import copyright

        print(f"txsmtp {txsmtp.__version__} (Twisted {copyright.version}, Python {sys.version.split()[0]})")
        sys.exit(0)

    def opt_listen(self, description: str) -> None:
        """Listen on this endpoint (strports syntax); repeat for several."""
        self["listen"].append(description)

    def opt_listen_tls(self, description: str) -> None:
        """Listen with implicit TLS (port 465, "submissions") on this endpoint, using --tls-cert; repeatable."""
        self["listen-tls"].append(description)

    def opt_lmtp(self, description: str) -> None:
        """Listen for LMTP (RFC 2033) on this endpoint, e.g. unix:/run/lmtp.sock; repeatable."""
        self["lmtp"].append(description)

    def opt_help_deliver(self) -> None:
        """List the delivery types for --deliver and exit."""
        out = ["Delivery types for --deliver TYPE:ARGS:", ""]
        for name, factory in sorted(deliveryFactories().items()):
            out.append(f"  {name}: {factory.description}")
            out.append(f"      {factory.argumentHelp}")
        print("\n".join(out))
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["listen"] and not self["listen-tls"] and not self["lmtp"]:
            self["listen"] = [DEFAULT_LISTEN]
        from twisted.internet import reactor

        for option in ("listen", "listen-tls"):
            for description in self[option]:
                try:
                    endpoints.serverFromString(reactor, description)
                except Exception as e:
                    raise usage.UsageError(
                        f"bad --{option} {description!r}: {e}{_endpointHint(description)}"
                    ) from None
        for description in self["lmtp"]:
            _checkLMTPEndpoint(reactor, description, bool(self["require-auth"]))
        runAs = _runAs(self.parent)
        maildirs = _maildirDirectories(self["deliver"])
        missing = [d for d in maildirs if not os.path.lexists(d)]
        try:
            self["delivery"] = makeDelivery(self["deliver"])
        except ValueError as e:
            raise usage.UsageError(f"--deliver {self['deliver']}: {e}") from None
        if runAs is not None and maildirs:
            _giveMaildir(self["deliver"], maildirs, missing, *runAs)
        if self["hostname"] is None:
            self["hostname"] = socket.getfqdn()
        else:
            problem = _hostnameProblem(self["hostname"])
            if problem:
                raise usage.UsageError(f"--hostname {self['hostname']!r}: {problem}")
        self["tls"] = None
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["tls-cert"] and not self["tls-key"] and _holdsNoKey(self["tls-cert"]):
            raise usage.UsageError(
                f"--tls-cert {self['tls-cert']} holds no private key: give the key file with --tls-key"
            )
        if self["tls-cert"]:
            try:
                self["tls"] = ServerTLS(self["tls-cert"], self["tls-key"])
            except TLSConfigurationError as e:
                raise usage.UsageError(f"--tls-cert: {e}") from None
        elif self["listen-tls"]:
            raise usage.UsageError("--listen-tls needs --tls-cert (and --tls-key)")
        elif self["require-tls"]:
            raise usage.UsageError("--require-tls needs --tls-cert (and --tls-key) to offer STARTTLS")
        if self["require-auth"] and not self.get("credCheckers"):
            raise usage.UsageError("--require-auth needs at least one --auth checker")
        tlsListener = any(_endpointKind(d) in ("ssl", "tls") for d in self["listen"] + self["lmtp"])
        if self.get("credCheckers") and self["tls"] is None and not tlsListener and not self["allow-insecure-auth"]:
            raise usage.UsageError(
                "AUTH is offered only under TLS: give --tls-cert (and --tls-key) or an ssl: listener, "
                "or --allow-insecure-auth for a trusted transport such as loopback or a UNIX socket"
            )
        for checker in self.get("credCheckers") or []:
            _checkReadable(checker)
            _bytesUsers(checker)
        self.postRelayOptions()
        self.postMailAuthOptions()
        self.postOperationsOptions()
        _useCheapLog(self.parent)


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """
    Logs the address once the wrapped endpoint is listening; for LMTP
    without required AUTH, warns when that address is not loopback.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, description: str, protocol: str = "SMTP"
    ) -> None:
        self._endpoint = endpoint
        self._description = description
        self._protocol = protocol
        #: the listening port, once there is one
        self.port: Any = None

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        d = self._endpoint.listen(factory)

        def listening(port: Any) -> Any:
            self.port = port
            address = port.getHost()
            if self._protocol == "LMTP":
                _log.info(
                    "txsmtp LMTP listening on {address} ({description})",
                    address=address,
                    description=self._description,
                    protocol="LMTP",
                )
                if _isOpenToNetwork(address) and not getattr(factory, "requireAuth", False):
                    _log.warn(
                        "LMTP on {address} ({description}) is reachable from the network and "
                        "requires no AUTH: whoever can connect can put mail into any mailbox. "
                        "Prefer a unix: socket or loopback, or firewall the port.",
                        address=address,
                        description=self._description,
                    )
            else:
                _log.info(
                    "txsmtp listening on {address} ({description})",
                    address=address,
                    description=self._description,
                )
            return port

        d.addCallback(listening)
        return d


class SMTPService(service.MultiService):
    """
    The listening endpoints of one factory (and of an LMTP factory beside
    it), stopped gracefully: listeners close first, then idle sessions get
    ``421`` and sessions in a transaction are given ``grace`` seconds to
    finish; last, a delivery with a ``stop()`` method (the Maildir
    deliveries, whose commit threads end) is stopped.

    :param lmtpFactory: an :class:`~txsmtp.lmtp.LMTPFactory` for the
        ``lmtpListen`` endpoints (needed when there are any).
    """

    def __init__(
        self,
        factory: SMTPFactory,
        descriptions: list[str],
        grace: float = 30.0,
        tlsListen: list[str] | None = None,
        lmtpFactory: LMTPFactory | None = None,
        lmtpListen: list[str] | None = None,
    ) -> None:
        super().__init__()
        from twisted.internet import reactor

        self.factory = factory
        self.lmtpFactory = lmtpFactory
        self.grace = grace
        self._previousHUP: Any = None
        #: twistd's own options (``nodaemon``, ``pidfile``...) when run by
        #: ``twistd smtp``: how to report a failure to start.
        self.twistdOptions: Any = None
        #: the line logged at start-up (see :func:`startupSummary`)
        self.summary = ""
        #: the relay's :class:`~txsmtp.tapqueue.QueueService`, if any:
        #: started before the listeners, stopped after the last session
        self.queue: Any = None
        self._summaryLogged = False
        for description in descriptions:
            self._listen(reactor, description, description, factory)
        if tlsListen:
            if factory.tls is None:
                raise ValueError("implicit TLS listeners need a factory with tls")
            # Implicit TLS: the whole connection is TLS, with the same
            # (reloadable) certificate as STARTTLS.
            tlsFactory = TLSMemoryBIOFactory(factory.tls, False, factory)
            tlsFactory.noisy = False
            for description in tlsListen:
                self._listen(reactor, description, description + " (implicit TLS)", tlsFactory)
        if lmtpListen:
            if lmtpFactory is None:
                raise ValueError("LMTP listeners need an lmtpFactory")
            for description in lmtpListen:
                self._listen(reactor, description, description, lmtpFactory, "LMTP")

    def _listen(self, reactor: Any, description: str, label: str, factory: Any, protocol: str = "SMTP") -> None:
        # strports.service makes a listener that raises at startService when
        # it cannot listen (a port in use), as twistd's own do, so that the
        # server does not start without it.
        child = strports.service(withBacklog(description), factory, reactor)
        child.endpoint = _AnnouncingEndpoint(child.endpoint, label, protocol)
        child.txsmtpLabel = label  # type: ignore[attr-defined]
        child.setServiceParent(self)

    def privilegedStartService(self) -> None:
        # A listener that cannot listen (a port in use, no permission)
        # raises here; twistd would print it as a long double traceback
        # with the cause on its last line.  Say it in one line and exit.
        self._logSummary()
        if self.queue is not None:
            self.queue.twistdOptions = self.twistdOptions
            self.queue.privilegedStartService()
        for child in self:
            try:
                child.privilegedStartService()
            except Exception as e:
                label = getattr(child, "txsmtpLabel", None)
                if label is None:
                    raise
                _cannotStart(f"cannot listen on {label}: {_why(e)}", self.twistdOptions)


    def _logSummary(self) -> None:
        # Once, before the listeners' own lines: under twistd they listen
        # in privilegedStartService, otherwise in startService.
        if self.summary and not self._summaryLogged:
            self._summaryLogged = True
            _log.info("{summary}", summary=self.summary)

    def startService(self) -> None:
        self._logSummary()
        if self.queue is not None:
            self.queue.twistdOptions = self.twistdOptions
            self.queue.startService()
        super().startService()
        # Stale tmp/ files of interrupted deliveries: swept now and every
        # 6 hours (the Maildir deliveries; others have no such method).
        startCleanup = getattr(self.factory.delivery, "startCleanup", None)
        if startCleanup is not None:
            startCleanup()
        if hasattr(signal, "SIGHUP"):
            # Operators renew certificates every few months: SIGHUP re-reads
            # them without dropping a connection (and never kills the server).
            from twisted.internet import reactor

            def onHUP(signum: int, frame: Any) -> None:
                reactor.callFromThread(self.reload)  # type: ignore[attr-defined]

            self._previousHUP = signal.signal(signal.SIGHUP, onHUP)

    def reload(self) -> None:
        """Re-read what can change without a restart: the TLS certificate."""
        tls = self.factory.tls
        if tls is not None and hasattr(tls, "reload"):
            tls.reload()
        else:
            _log.info("SIGHUP: nothing to reload (no --tls-cert)")

    def stopService(self) -> defer.Deferred[None]:
        if self._previousHUP is not None:
            signal.signal(signal.SIGHUP, self._previousHUP)
            self._previousHUP = None
        d = defer.maybeDeferred(super().stopService)
        factories = [f for f in (self.factory, self.lmtpFactory) if f is not None]

        def shutdown(_: Any) -> Any:
            waits = [f.shutdown(self.grace) for f in factories]
            return defer.gatherResults(waits).addCallback(lambda _: None)

        def stopDeliveries(_: Any) -> None:
            # Once no session is left: a delivery's own threads (the Maildir
            # commits) end here, not at some later reactor shutdown.
            for delivery in {id(f.delivery): f.delivery for f in factories}.values():
                stop = getattr(delivery, "stop", None)
                if callable(stop):
                    stop()

        d.addCallback(shutdown)
        d.addCallback(stopDeliveries)
        if self.queue is not None and self.queue.running:
            d.addCallback(lambda _: self.queue.stopService())
        return d


def startupSummary(options: Options) -> str:
    """
    One line for the log at start-up: the txsmtp version, the host name,
    each listener, the delivery, and the TLS and AUTH state.
    """
    import txsmtp

    listeners = [f"SMTP on {d}" for d in options["listen"]]
    listeners += [f"SMTP with implicit TLS on {d}" for d in options["listen-tls"]]
    listeners += [f"LMTP on {d}" for d in options["lmtp"]]
    if options["tls"] is not None:
        tls = f"STARTTLS with {options['tls-cert']}"
        if options["tls-key"]:
            tls += f" (key {options['tls-key']})"
        if options["require-tls"]:
            tls += ", required before MAIL"
    else:
        tls = "off"
    checkers = options.get("credCheckers") or []
    if not checkers:
        auth = "off"
    else:
        auth = "required before MAIL" if options["require-auth"] else "offered"
        auth += " without TLS too" if options["allow-insecure-auth"] else " under TLS"
    return (
        f"txsmtp {txsmtp.__version__} starting as {options['hostname']}: "
        f"{', '.join(listeners)}; delivery {options['deliver']}; TLS {tls}; AUTH {auth}"
        f"{relaySummary(options)}{mailAuthSummary(options)}"
    )


def makeService(options: Options) -> SMTPService:
    """Build the service ``twistd smtp`` runs."""
    delivery = options["delivery"]
    relay = buildRelay(options, options["hostname"], delivery, _runAs(options.parent))
    if relay is not None:
        # Every accepted message goes into the queue; --deliver gets local mail from there.
        delivery = relay[0]
    operations = buildOperations(options)
    if operations.guards:
        from txsmtp.guards import GuardedDelivery

        delivery = GuardedDelivery(delivery, operations.guards)
    checkers = options.get("credCheckers") or []
    arguments = dict(
        maxMessageSize=options["max-size"],
        maxRecipients=options["max-recipients"],
        commandTimeout=options["timeout"],
        bareLineEnds=options["bare-lf"],
        tls=options["tls"],
        requireTLS=bool(options["require-tls"]),
        portal=makePortal(delivery, checkers) if checkers else None,
        requireAuth=bool(options["require-auth"]),
        allowInsecureAuth=bool(options["allow-insecure-auth"]),
    )
    factory = SMTPFactory(delivery, options["hostname"], **arguments)
    _observe(factory, operations)
    # The start-up summary says what "Starting factory <...>" did not.
    factory.noisy = False
    lmtpFactory = None
    if options["lmtp"]:
        lmtpFactory = LMTPFactory(delivery, options["hostname"], **arguments)
        # One sequence of queue ids for the whole process.
        lmtpFactory.queueIds = factory.queueIds
        lmtpFactory.noisy = False
        _observe(lmtpFactory, operations)
    smtpService = SMTPService(
        factory,
        options["listen"],
        options["shutdown-grace"],
        tlsListen=options["listen-tls"],
        lmtpFactory=lmtpFactory,
        lmtpListen=options["lmtp"],
    )
    smtpService.twistdOptions = options.parent
    smtpService.summary = startupSummary(options)
    if relay is not None:
        smtpService.queue = relay[1]
    for child in operations.services:
        child.setServiceParent(smtpService)
    if operations.summary:
        smtpService.summary += "; " + ", ".join(operations.summary)
    return smtpService


def _observe(factory: Any, operations: Any) -> None:
    """Give ``factory`` the observers and the AUTH limiter of the operations options."""
    if operations.events:
        from txsmtp.serverevents import EventFanout

        factory.events = operations.events[0] if len(operations.events) == 1 else EventFanout(operations.events)
    factory.authLimiter = operations.authLimiter
