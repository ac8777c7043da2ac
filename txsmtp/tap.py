"""
``twistd smtp``: option parsing and service construction.

A thin layer: every option maps onto an argument of
:class:`~txsmtp.server.SMTPFactory` or a listening endpoint.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from txsmtp.deliveryplugins import deliveryFactories, makeDelivery
from txsmtp.server import SMTPFactory

__all__ = ["Options", "makeService", "SMTPService", "DEFAULT_LISTEN"]

_log = Logger(namespace="txsmtp.tap")

#: Where ``twistd smtp`` listens when no ``--listen`` is given.
DEFAULT_LISTEN = "tcp:8025:interface=127.0.0.1"


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


class Options(usage.Options):
    """Command-line options of ``twistd smtp``."""

    synopsis = "[options]"
    longdesc = (
        "Run an ESMTP server. Without options it listens on 127.0.0.1:8025 and stores every "
        "message in ./Maildir. --listen takes Twisted endpoint descriptions (strports), e.g. "
        "tcp:25, tcp6:25:interface=\\:\\:, unix:/run/txsmtp.sock."
    )

    optParameters = [
        ["hostname", None, None, "The server's name in the greeting, EHLO and Received: (default: this machine's FQDN)."],
        ["deliver", None, "maildir:Maildir", "Where mail goes: TYPE:ARGS (see --help-deliver)."],
        ["max-size", None, 32 * 1024 * 1024, "The largest message accepted, in octets.", _positiveInt("max-size")],
        ["max-recipients", None, 100, "The most recipients in one transaction.", _positiveInt("max-recipients")],
        ["timeout", None, 300.0, "Seconds to wait for a command before closing with 421.", _seconds("timeout")],
        ["bare-lf", None, "reject", "What to do with a bare CR or LF in a message: reject or normalize.", _bareLF],
        ["shutdown-grace", None, 30.0, "Seconds to let transactions finish when stopping.", _seconds("shutdown-grace")],
    ]

    compData = usage.Completions(optActions={"bare-lf": usage.CompleteList(["reject", "normalize"])})

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Listen on this endpoint (strports syntax); repeat for several."""
        self["listen"].append(description)

    def opt_help_deliver(self) -> None:
        """List the delivery types for --deliver and exit."""
        out = ["Delivery types for --deliver TYPE:ARGS:", ""]
        for name, factory in sorted(deliveryFactories().items()):
            out.append(f"  {name}: {factory.description}")
            out.append(f"      {factory.argumentHelp}")
        print("\n".join(out))
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        from twisted.internet import reactor

        for description in self["listen"]:
            try:
                endpoints.serverFromString(reactor, description)
            except Exception as e:
                raise usage.UsageError(f"bad --listen {description!r}: {e}") from None
        try:
            self["delivery"] = makeDelivery(self["deliver"])
        except ValueError as e:
            raise usage.UsageError(f"--deliver {self['deliver']}: {e}") from None
        if self["hostname"] is None:
            self["hostname"] = socket.getfqdn()


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """Logs the address once the wrapped endpoint is listening."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str) -> None:
        self._endpoint = endpoint
        self._description = description

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        d = self._endpoint.listen(factory)

        def listening(port: Any) -> Any:
            _log.info("txsmtp listening on {address} ({description})", address=port.getHost(), description=self._description)
            return port

        d.addCallback(listening)
        return d


class SMTPService(service.MultiService):
    """
    The listening endpoints of one factory, stopped gracefully: listeners
    close first, then idle sessions get ``421`` and sessions in a
    transaction are given ``grace`` seconds to finish.
    """

    def __init__(self, factory: SMTPFactory, descriptions: list[str], grace: float = 30.0) -> None:
        super().__init__()
        from twisted.internet import reactor

        self.factory = factory
        self.grace = grace
        for description in descriptions:
            endpoint = _AnnouncingEndpoint(endpoints.serverFromString(reactor, description), description)
            child = StreamServerEndpointService(endpoint, factory)
            child._raiseSynchronously = True
            child.setServiceParent(self)

    def stopService(self) -> defer.Deferred[None]:
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.factory.shutdown(self.grace))
        return d


def makeService(options: Options) -> SMTPService:
    """Build the service ``twistd smtp`` runs."""
    factory = SMTPFactory(
        options["delivery"],
        options["hostname"],
        maxMessageSize=options["max-size"],
        maxRecipients=options["max-recipients"],
        commandTimeout=options["timeout"],
        bareLineEnds=options["bare-lf"],
    )
    return SMTPService(factory, options["listen"], options["shutdown-grace"])
