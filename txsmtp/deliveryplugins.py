"""
The built-in ``--deliver`` types, as :class:`~txsmtp.interfaces.IDeliveryFactory`
plugins, and the lookup that ``twistd smtp`` uses.

Third-party delivery types are Twisted plugins: a module in a
``twisted/plugins/`` directory on ``sys.path`` with a module-level object
that provides :class:`~txsmtp.interfaces.IDeliveryFactory`.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from txsmtp.interfaces import IDelivery, IDeliveryFactory

__all__ = ["MaildirFactory", "VirtualFactory", "DiscardFactory", "deliveryFactories", "makeDelivery", "BUILTIN"]

_log = Logger(namespace="txsmtp.deliveryplugins")


@implementer(IPlugin, IDeliveryFactory)
class MaildirFactory:
    deliveryType = "maildir"
    description = "Store every accepted message in one Maildir (a catch-all)."
    argumentHelp = "DIR: the Maildir, created if missing (relative to the working directory)."

    def makeDelivery(self, argument: str) -> IDelivery:
        from txsmtp.delivery import MaildirDelivery

        if not argument:
            raise ValueError("maildir needs a directory: --deliver maildir:DIR")
        try:
            return MaildirDelivery(argument)
        except OSError as e:
            raise ValueError(f"cannot use {argument!r} as a Maildir: {e.strerror or e}") from e


@implementer(IPlugin, IDeliveryFactory)
class VirtualFactory:
    deliveryType = "virtual"
    description = "One Maildir per address, DIR/<domain>/<local part>/; unknown recipients get 550 5.1.1."
    argumentHelp = "DIR: an existing directory holding one directory per domain."

    def makeDelivery(self, argument: str) -> IDelivery:
        from txsmtp.delivery import VirtualMaildirDelivery

        if not argument:
            raise ValueError("virtual needs a directory: --deliver virtual:DIR")
        return VirtualMaildirDelivery(argument)


@implementer(IPlugin, IDeliveryFactory)
class DiscardFactory:
    deliveryType = "discard"
    description = "Accept every message and throw it away (for tests and benchmarks)."
    argumentHelp = "No argument."

    def makeDelivery(self, argument: str) -> IDelivery:
        from txsmtp.delivery import DiscardDelivery

        if argument:
            raise ValueError("discard takes no argument")
        return DiscardDelivery()


#: The delivery types txsmtp ships.  They are also exposed as Twisted
#: plugins, but never depend on the plugin cache being fresh.
BUILTIN: tuple[IDeliveryFactory, ...] = (MaildirFactory(), VirtualFactory(), DiscardFactory())


def deliveryFactories() -> dict[str, IDeliveryFactory]:
    """Every known delivery type, built-in and plugged in, by name."""
    found: dict[str, IDeliveryFactory] = {f.deliveryType: f for f in BUILTIN}
    try:
        for plugin in getPlugins(IDeliveryFactory):
            found.setdefault(plugin.deliveryType, plugin)
    except Exception:
        _log.failure("looking for delivery plugins failed; only the built-in types are available")
    return found


def makeDelivery(spec: str) -> IDelivery:
    """
    Make a delivery from ``TYPE:ARGS`` (or ``TYPE``).

    :raise ValueError: for an unknown type or a bad argument, with a message
        meant for the operator.
    """
    kind, _, argument = spec.partition(":")
    factories = deliveryFactories()
    factory = factories.get(kind)
    if factory is None:
        known = ", ".join(sorted(factories))
        raise ValueError(f"unknown delivery type {kind!r} (known: {known}; see --help-deliver)")
    return factory.makeDelivery(argument)
