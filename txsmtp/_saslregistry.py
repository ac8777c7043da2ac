"""
The registry of server-side SASL mechanisms, public as
:func:`txsmtp.sasl.registerMechanism`, :data:`txsmtp.sasl.MECHANISMS` and
:func:`txsmtp.sasl.usableMechanism` (:mod:`txsmtp.sasl` registers the
built-in ones when it is imported).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from zope.interface import Interface

if TYPE_CHECKING:
    from txsmtp.sasl import Mechanism

__all__ = [
    "MECHANISMS",
    "MechanismFactory",
    "credentialInterfacesOf",
    "registerMechanism",
    "unregisterMechanism",
    "usableMechanism",
]

#: A mechanism factory: called with the server's host name for each AUTH
#: exchange, it returns a fresh :class:`~txsmtp.sasl.Mechanism`.
MechanismFactory = Callable[[str], "Mechanism"]

#: Mechanisms by name, strongest first (the order they are advertised in).
#: Change it with :func:`registerMechanism` and :func:`unregisterMechanism`
#: only: the object stays the same, so modules that imported it see the
#: changes.
MECHANISMS: dict[str, MechanismFactory] = {}

#: For each registered name, the credential interfaces a portal's checker
#: must take (any one of them) for the mechanism to be offered.
_credentials: dict[str, tuple[type[Interface], ...]] = {}

# RFC 4422 §3.1: 1 to 20 characters from [A-Z0-9-_].
_MECHANISM_NAME = re.compile(r"[A-Z0-9_-]{1,20}")


def registerMechanism(
    name: str,
    factory: MechanismFactory,
    credentialInterfaces: Iterable[type[Interface]],
    *,
    before: str | None = None,
    replace: bool = False,
) -> None:
    """
    Make a SASL mechanism known to every server created afterwards.

    A server offers it in EHLO, and accepts it in AUTH, when its portal has
    a checker for one of ``credentialInterfaces`` (and, if the factory is
    given ``authMechanisms``, when the name is among them).  Servers made
    before the call do not change.

    :param name: the mechanism's name (RFC 4422 §3.1: 1 to 20 upper-case
        letters, digits, ``-`` and ``_``), e.g. ``"XOAUTH2"``.
    :param factory: called with the server's host name at each AUTH,
        returns a :class:`~txsmtp.sasl.Mechanism` (usually the class itself) whose
        ``start`` and ``respond`` return :class:`~txsmtp.sasl.Challenge` or
        :class:`~txsmtp.sasl.Credentials` (:class:`~txsmtp.sasl.NeedKeys` is for SCRAM's key stores
        only).
    :param credentialInterfaces: the twisted.cred interfaces the
        credentials it produces provide; the mechanism is usable when a
        checker of the portal declares one of them in its
        ``credentialInterfaces``.
    :param before: put it ahead of this registered mechanism in the
        advertised order (which is strongest first); by default, last.
    :param replace: allow a registered name to get another factory (it
        keeps its place unless ``before`` is given).
    :raise ValueError: for a malformed name, a name already registered
        (without ``replace``), no credential interface, or an unknown
        ``before``.
    """
    if not _MECHANISM_NAME.fullmatch(name):
        raise ValueError(f"SASL mechanism names are 1 to 20 of A-Z, 0-9, '-' and '_' (RFC 4422 §3.1): {name!r}")
    if name in MECHANISMS and not replace:
        raise ValueError(f"SASL mechanism {name} is already registered")
    interfaces = tuple(credentialInterfaces)
    if not interfaces:
        raise ValueError(f"SASL mechanism {name} needs at least one credential interface")
    if before is not None and (before not in MECHANISMS or before == name):
        raise ValueError(f"cannot register {name} before {before!r}: no such other mechanism")
    _credentials[name] = interfaces
    if before is None:
        MECHANISMS[name] = factory
        return
    ordered = [(n, f) for n, f in MECHANISMS.items() if n != name]
    at = [n for n, _ in ordered].index(before)
    ordered.insert(at, (name, factory))
    MECHANISMS.clear()
    MECHANISMS.update(ordered)


def unregisterMechanism(name: str) -> None:
    """
    Forget a registered mechanism (servers made afterwards neither offer
    nor accept it).

    :raise KeyError: when ``name`` is not registered.
    """
    del MECHANISMS[name]
    del _credentials[name]


def credentialInterfacesOf(name: str) -> tuple[type[Interface], ...]:
    """
    The credential interfaces registered for mechanism ``name``.

    :raise KeyError: when ``name`` is not registered.
    """
    return _credentials[name]


def usableMechanism(name: str, portal: Any) -> bool:
    """
    Whether the checkers of ``portal`` can verify what mechanism ``name``
    produces: whether one of them takes one of the credential interfaces it
    was registered with.  PLAIN and LOGIN need ``IUsernamePassword``,
    CRAM-MD5 ``IUsernameHashedPassword``, SCRAM-SHA-256 either
    ``IUsernamePassword`` (plaintext passwords) or
    :class:`~txsmtp.sasl.IScramCredentials` (a key store).  An unknown name is not
    usable.
    """
    wanted = _credentials.get(name)
    if not wanted:
        return False
    interfaces = set(portal.listCredentialsInterfaces())
    return any(i in interfaces for i in wanted)
