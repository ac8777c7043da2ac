"""
AUTH through twisted.cred.

The server logs a client in with ``portal.login(credentials, connection,
IDeliverySession)``: the *mind* is the session's
:class:`~txsmtp.envelope.ConnectionInfo`, and the avatar is the
:class:`~txsmtp.interfaces.IDeliverySession` that serves the rest of the
connection.  So the realm decides what an authenticated user may do: with
:class:`DeliveryRealm`, the delivery's own ``openSession`` is called again
with ``connection.authenticated`` set, and a delivery that relays can let
authenticated sessions relay while anonymous ones reach only local mailboxes.

:func:`makePortal` builds a portal from checkers (for example those of
``twistd smtp --auth``).  :class:`ScramKeyChecker` is a checker that stores
SCRAM-SHA-256 keys instead of passwords, and shows what a store of your own
needs to provide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import implementer

from txsmtp.interfaces import IDelivery, IDeliverySession
from txsmtp.sasl import IScramCredentials, IScramKeyStore, ScramKeys, saslprep

__all__ = ["CheckerChain", "DeliveryRealm", "ScramKeyChecker", "makePortal"]


@implementer(IRealm)
class DeliveryRealm:
    """
    Turns an authenticated user into a delivery session: the delivery's
    ``openSession(connection)``, called with ``connection.authenticated``
    set to the avatar ID.
    """

    def __init__(self, delivery: IDelivery) -> None:
        self.delivery = delivery

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IDeliverySession not in interfaces:
            raise NotImplementedError("DeliveryRealm only provides IDeliverySession")
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8", "replace")
        if mind is not None:
            mind.authenticated = avatarId
        d = defer.maybeDeferred(self.delivery.openSession, mind)

        def avatar(session: Any) -> tuple[Any, Any, Any]:
            return IDeliverySession, session, getattr(session, "close", lambda: None)

        return d.addCallback(avatar)


@implementer(ICredentialsChecker)
class CheckerChain:
    """
    Several checkers for the same kind of credentials, tried in turn until
    one accepts (a Portal keeps only one checker per interface).
    """

    def __init__(self, checkers: Iterable[ICredentialsChecker], interface: Any) -> None:
        self.checkers = list(checkers)
        self.credentialInterfaces = (interface,)

    async def _check(self, credentials: Any) -> Any:
        for checker in self.checkers:
            try:
                return await defer.maybeDeferred(checker.requestAvatarId, credentials)
            except error.UnauthorizedLogin:
                continue
        raise error.UnauthorizedLogin()

    def requestAvatarId(self, credentials: Any) -> Any:
        return defer.ensureDeferred(self._check(credentials))


def makePortal(delivery: IDelivery, checkers: Iterable[ICredentialsChecker]) -> Portal:
    """
    A :class:`~twisted.cred.portal.Portal` over a :class:`DeliveryRealm`.
    When several checkers handle the same credentials (``--auth`` given
    twice), each is tried in turn.
    """
    byInterface: dict[Any, list[ICredentialsChecker]] = {}
    for checker in checkers:
        for interface in checker.credentialInterfaces:
            byInterface.setdefault(interface, []).append(checker)
    portal = Portal(DeliveryRealm(delivery))
    for interface, group in byInterface.items():
        portal.checkers[interface] = group[0] if len(group) == 1 else CheckerChain(group, interface)
    return portal


@implementer(ICredentialsChecker, IScramKeyStore)
class ScramKeyChecker:
    """
    Checks SCRAM-SHA-256 logins against stored keys; no password is kept.

    :param users: maps user names to :class:`~txsmtp.sasl.ScramKeys` (make
        them with :func:`txsmtp.sasl.scramKeys`).

    Only SCRAM can be checked against keys: PLAIN, LOGIN and CRAM-MD5 need a
    checker that knows passwords.
    """

    credentialInterfaces = (IScramCredentials,)

    def __init__(self, users: Mapping[str, ScramKeys]) -> None:
        self.users = {saslprep(name): keys for name, keys in users.items()}

    def scramKeys(self, username: str, mechanism: str) -> ScramKeys | None:
        if mechanism != "SCRAM-SHA-256":
            return None
        return self.users.get(username)

    def requestAvatarId(self, credentials: Any) -> Any:
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        keys = self.users.get(username)
        if keys is not None and credentials.checkKeys(keys.storedKey, keys.serverKey):
            return defer.succeed(username)
        return defer.fail(error.UnauthorizedLogin())
