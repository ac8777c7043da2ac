"""
``twistd smtp``: option parsing and service construction.

A thin layer: every option maps onto an argument of
:class:`~txsmtp.server.SMTPFactory` or a listening endpoint.  ``--lmtp``
listeners get an :class:`~txsmtp.lmtp.LMTPFactory` made from the same
arguments (the same delivery, TLS, AUTH, limits and host name).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import signal
import socket
import sys
from typing import Any, NoReturn

from twisted.application import service, strports
from twisted.cred import strcred
from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.internet import defer, endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import implementer

from txsmtp.auth import makePortal
from txsmtp.deliveryplugins import deliveryFactories, makeDelivery
from txsmtp.lmtp import LMTPFactory
from txsmtp.server import SMTPFactory
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

#: The listen backlog of ``tcp``, ``tcp6``, ``unix`` and ``ssl`` listeners
#: whose description names none (``backlog=``): a mail server takes bursts
#: of connections that Twisted's default of 50 would refuse or delay.
DEFAULT_BACKLOG = 1024

#: Endpoint types whose descriptions take ``backlog=``.
_BACKLOG_ENDPOINTS = ("tcp", "tcp6", "unix", "ssl")

#: Endpoint types that listen on a network address, with the address in
#: ``interface=`` (every address when it is left out).
_NETWORK_ENDPOINTS = ("tcp", "tcp6", "ssl")


def _positiveInt(name: str) -> Any:
    def convert(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"--{name} takes a whole number, not {value!r}") from None
        if n < 1:
            raise ValueError(f"--{name} must be at least 1")
        return n

    convert.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]
    return convert


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


class Options(usage.Options, strcred.AuthOptionMixin):
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
    ]

    optFlags = [
        ["require-tls", None, "Refuse MAIL before STARTTLS (530 5.7.0)."],
        ["require-auth", None, "Refuse MAIL before AUTH (530 5.7.0): for submission ports."],
        [
            "allow-insecure-auth",
            None,
            "Offer AUTH without TLS. Only for trusted transports such as loopback or UNIX sockets.",
        ],
    ]

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
        _useCheapLog(self.parent)


def _runAs(parent: Any) -> tuple[int, int] | None:
    """
    The user and group twistd switches to after start-up (its ``--uid``
    and ``--gid``), when it runs as root and is told to switch; else None.
    """
    if parent is None or not hasattr(parent, "get") or os.geteuid() != 0:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is None:
        uid = os.geteuid()
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = os.getegid()
    return int(uid), int(gid)


def _maildirDirectories(spec: str) -> list[str]:
    """For ``maildir:DIR``: DIR and its ``tmp``, ``new`` and ``cur``; else []."""
    kind, _, argument = spec.partition(":")
    if kind != "maildir" or not argument:
        return []
    path = os.path.abspath(argument)
    return [path] + [os.path.join(path, sub) for sub in ("tmp", "new", "cur")]


def _giveMaildir(spec: str, directories: list[str], created: list[str], uid: int, gid: int) -> None:
    """
    twistd runs as root now and as ``uid``/``gid`` once started: give it
    the Maildir directories created just now (as root), and refuse to start
    when the Maildir is not writable by that user, rather than answer every
    message with 451.
    """
    for d in created:
        os.chown(d, uid, gid)
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        groups = {gid}
    path = directories[0]
    parent = os.path.dirname(path)
    ancestors = []
    while True:
        ancestors.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    for d in reversed(ancestors):
        if not _allows(d, uid, groups, 0o1):
            raise usage.UsageError(
                f"--deliver {spec}: uid {uid} (twistd --uid/--gid) cannot reach {path}: "
                f"{d} is closed to it"
            )
    for d in directories:
        if not _allows(d, uid, groups, 0o3):
            raise usage.UsageError(
                f"--deliver {spec}: {d} is not writable by uid {uid} gid {gid}, which twistd "
                "--uid/--gid runs as: give the Maildir to that user (chown -R) or choose another"
            )


def _allows(path: str, uid: int, groups: set[int], bits: int) -> bool:
    """Whether the mode of ``path`` grants ``bits`` (1 search, 2 write) to ``uid`` in ``groups``."""
    if uid == 0:
        return True
    st = os.stat(path)
    if st.st_uid == uid:
        mode = st.st_mode >> 6
    elif st.st_gid in groups:
        mode = st.st_mode >> 3
    else:
        mode = st.st_mode
    return mode & bits == bits


def _endpointHint(description: str) -> str:
    """A suggestion for an endpoint description that is only a port number."""
    if description.isdigit():
        return f" (a port number alone is not an endpoint: did you mean tcp:{description}?)"
    return ""


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _hostnameProblem(name: str) -> str | None:
    """
    What makes ``name`` unfit to be the server's name in the greeting, EHLO
    and ``Received:``, or ``None``: it must be a domain name (RFC 5321
    ``Domain``: letters, digits and hyphens in dot-separated labels) or an
    address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``).
    """
    if name.startswith("[") and name.endswith("]"):
        inner = name[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
            else:
                ipaddress.IPv4Address(inner)
        except ValueError:
            return "not a valid address literal (e.g. [192.0.2.1] or [IPv6:2001:db8::1])"
        return None
    if not name or len(name) > 253:
        return "a host name must be a domain name of 1 to 253 characters, or an address literal"
    if not name.isascii():
        return "a host name must be ASCII: give an internationalized name in its xn-- form"
    for label in name.split("."):
        if not _LABEL.match(label):
            return (
                "not a valid domain name (letters, digits and hyphens in labels separated by "
                "dots, e.g. mx.example.com) nor an address literal such as [192.0.2.1]"
            )
    return None


def _holdsNoKey(path: str) -> bool:
    """Whether the file at ``path`` can be read and has no PEM private key in it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False  # ServerTLS says why it cannot be read
    return b"PRIVATE KEY-----" not in data


def _useCheapLog(parent: Any) -> None:
    """
    Under twistd, log through :mod:`txsmtp.logfile` (the same lines, a
    quarter of the cost) unless ``--logger`` or ``--syslog`` chose another
    observer.  ``parent`` is twistd's own options (a mapping), which its
    application runner reads after this subcommand's options are parsed.
    """
    if parent is None or not hasattr(parent, "get"):
        return
    if parent.get("logger") or parent.get("syslog"):
        return
    from txsmtp import logfile

    # twistd takes --logger as the name of a factory called with no argument.
    logfile.twistdOptions = {"logfile": parent.get("logfile"), "nodaemon": parent.get("nodaemon")}
    parent["logger"] = "txsmtp.logfile.twistdLogger"


def _endpointKind(description: str) -> str:
    """The endpoint type of a strports description, under any ``haproxy:`` wrapper."""
    while description.startswith("haproxy:"):
        description = description[len("haproxy:") :]
    return description.split(":", 1)[0]


def _checkLMTPEndpoint(reactor: Any, description: str, requireAuth: bool) -> None:
    """
    Refuse an ``--lmtp`` endpoint that does not parse, and one that would
    listen on every network address only because no ``interface=`` was
    given: LMTP is final delivery into the mail store, and without AUTH
    whoever reaches the port can put mail into any mailbox.  An explicit
    ``interface=`` (even ``0.0.0.0``) is taken as meant, and is warned
    about in the log when it is not loopback (see :class:`SMTPService`).
    """
    try:
        endpoints.serverFromString(reactor, description)
        args, kwargs = _descriptionParts(description)
    except Exception as e:
        hint = _endpointHint(description).replace("?)", ":interface=127.0.0.1?)")
        raise usage.UsageError(f"bad --lmtp {description!r}: {e}{hint}") from None
    while args and args[0] == "haproxy":
        # The PROXY wrapper listens where the endpoint it wraps does.
        args = args[1:]
    kind = args[0] if args else ""
    if kind == "unix" and (len(args) < 2 or not args[1]):
        raise usage.UsageError(
            f"bad --lmtp {description!r}: unix: needs a path, e.g. unix:/run/txsmtp/lmtp.sock"
        )
    if kind in _NETWORK_ENDPOINTS and "interface" not in kwargs and not requireAuth:
        raise usage.UsageError(
            f"--lmtp {description!r} would listen on every network address: anyone who can "
            "reach it could put mail into any mailbox. Use a unix: socket, or say where: "
            "interface=127.0.0.1 (or an explicit address such as interface=0.0.0.0 behind a "
            "firewall), or give --require-auth"
        )


def withBacklog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    ``description`` with ``backlog=BACKLOG`` added when it is a ``tcp``,
    ``tcp6``, ``unix`` or ``ssl`` endpoint (also under ``haproxy:``) that
    names no backlog of its own; any other description as it is.
    """
    args, kwargs = _descriptionParts(description)
    while args and args[0] == "haproxy":
        args = args[1:]
    if not args or args[0] not in _BACKLOG_ENDPOINTS or "backlog" in kwargs:
        return description
    return f"{description}:backlog={backlog}"


def _descriptionParts(description: str) -> tuple[list[str], dict[str, str]]:
    """
    The positional and keyword parts of a strports description, in the
    syntax of :func:`twisted.internet.endpoints.serverFromString`: parts
    separated by ``:``, ``key=value`` for a keyword, a backslash taking the
    next character as it is (``interface=\\:\\:1``).  Twisted keeps its own
    parser private; the description has already been accepted by
    ``serverFromString`` when this is called.
    """
    parts: list[list[str]] = [[]]
    keys: list[bool] = [False]
    chars = iter(description)
    for c in chars:
        if c == "\\":
            parts[-1].append(next(chars, ""))
        elif c == ":":
            parts.append([])
            keys.append(False)
        elif c == "=" and not keys[-1]:
            keys[-1] = True
            parts[-1].append("\0")  # the key ends here (no description holds a NUL)
        else:
            parts[-1].append(c)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part, isKeyword in zip(parts, keys, strict=True):
        text = "".join(part)
        if isKeyword:
            key, _, value = text.partition("\0")
            kwargs[key] = value
        else:
            args.append(text)
    return args, kwargs


def _isOpenToNetwork(address: Any) -> bool:
    """Whether a listening address can be reached from other machines."""
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return False  # UNIX sockets, and whatever else has no IP address
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_loopback


def _why(e: BaseException) -> str:
    """The cause of a failure to listen, without Twisted's wrapping."""
    if isinstance(e, CannotListenError) and e.socketError is not None:
        inner = e.socketError
        return getattr(inner, "strerror", None) or str(inner)
    return str(e) or type(e).__name__


class StartupError(Exception):
    """The server cannot start; the message says why, in one line."""


def _cannotStart(message: str, twistdOptions: Any = None) -> NoReturn:
    """
    Stop ``twistd`` before it runs, with ``message`` as one line.

    Daemonizing (no ``-n``), twistd's parent process prints the error of an
    exception raised here; so raise :class:`StartupError`.  In the
    foreground (``-n``, or outside twistd) an exception would be printed as
    a traceback: write the line to the real standard error (twistd has
    redirected ``sys.stderr`` into its log), and to the log unless that is
    the same terminal, then exit with status 1.
    """
    config = twistdOptions if hasattr(twistdOptions, "get") else {}
    if config and not config.get("nodaemon"):
        _log.critical("{message}", message=message)
        raise StartupError(message) from None
    if config.get("logfile") not in (None, "", "-"):
        _log.critical("{message}", message=message)
    pidfile = config.get("pidfile")
    if pidfile:
        try:
            with open(pidfile) as f:
                mine = f.read().strip() == str(os.getpid())
            if mine:
                os.remove(pidfile)
        except OSError:
            pass
    stream = sys.__stderr__
    if stream is not None:
        stream.write(f"twistd smtp: {message}\n")
        stream.flush()
    raise SystemExit(1)


def _checkReadable(checker: Any) -> None:
    """
    Refuse a credentials file (``--auth file:PATH``) that cannot be read:
    Twisted's checker would only find out at each login, and refuse every
    one with a permanent ``535``.
    """
    if not isinstance(checker, FilePasswordDB):
        return
    path = checker.filename
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise usage.UsageError(
            f"--auth file:{path}: cannot read the credentials file {path}: {e.strerror or e}"
        ) from None


def _bytesUsers(checker: Any) -> None:
    """
    Twisted's ``memory`` checker keeps the user names and passwords of
    ``--auth memory:U:P`` as text, while credentials carry bytes (and
    CRAM-MD5 hashes bytes): store them as UTF-8 bytes so both match.
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (v.encode("utf-8") if isinstance(v, str) else v)
            for k, v in checker.users.items()
        }


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
        super().startService()
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
    )


def makeService(options: Options) -> SMTPService:
    """Build the service ``twistd smtp`` runs."""
    delivery = options["delivery"]
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
    # The start-up summary says what "Starting factory <...>" did not.
    factory.noisy = False
    lmtpFactory = None
    if options["lmtp"]:
        lmtpFactory = LMTPFactory(delivery, options["hostname"], **arguments)
        # One sequence of queue ids for the whole process.
        lmtpFactory.queueIds = factory.queueIds
        lmtpFactory.noisy = False
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
    return smtpService
