"""
What ``twistd smtp`` checks before it starts, and how it says what is
wrong: endpoint descriptions (and their default listen backlog), host
names, TLS key files, credentials files, the Maildir directories the
server's user must be able to write, and the one-line start-up errors.
Used by :mod:`txsmtp.tap`.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import sys
from typing import Any, NoReturn

from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

__all__ = ["DEFAULT_BACKLOG", "withBacklog"]


#: Where ``twistd smtp`` listens when neither ``--listen``, ``--listen-tls``
#: nor ``--lmtp`` is given.
_log = Logger(namespace="txsmtp.tap")

#: The listen backlog of ``tcp``, ``tcp6``, ``unix`` and ``ssl`` listeners
#: whose description names none (``backlog=``): a mail server takes bursts
#: of connections that Twisted's default of 50 would refuse or delay.
DEFAULT_BACKLOG = 1024

#: Endpoint types whose descriptions take ``backlog=``.
_BACKLOG_ENDPOINTS = ("tcp", "tcp6", "unix", "ssl")

#: Endpoint types that listen on a network address, with the address in
#: ``interface=`` (every address when it is left out).
_NETWORK_ENDPOINTS = ("tcp", "tcp6", "ssl")


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
    """
    The directories the server's user must be able to write: for
    ``maildir:DIR``, DIR and its ``tmp``, ``new`` and ``cur``; for
    ``virtual:DIR``, DIR (where mailboxes' directories are made); else [].
    """
    kind, _, argument = spec.partition(":")
    if not argument or kind not in ("maildir", "virtual"):
        return []
    path = os.path.abspath(argument)
    if kind == "virtual":
        return [path]
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
                "--uid/--gid runs as: give it to that user (chown -R) or choose another directory"
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
    about in the log when it is not loopback (see :class:`txsmtp.tap.SMTPService`).
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


# Shown as txsmtp.tap.StartupError, where it is documented and imported
# from: when twistd daemonizes it reports a start-up error through a pipe
# of 100 octets, "module.class: message", and every octet of the name is
# one less of the reason.
StartupError.__module__ = "txsmtp.tap"


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
            (k.encode("utf-8") if isinstance(k, str) else k): (
                v.encode("utf-8") if isinstance(v, str) else v
            )
            for k, v in checker.users.items()
        }


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
