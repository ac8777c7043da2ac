"""
AUTH (RFC 4954): the SASL exchange of a server session.

The mechanisms themselves (:mod:`txsmtp.sasl`) are pure; this part runs
one exchange: ``AUTH`` starts it, each following line is a base64 response
(or ``*`` to cancel), and the mechanism's credentials go to the portal
through a ``login`` hook call.  A success replaces the delivery session by
the realm's avatar (the anonymous session is kept and comes back after
STARTTLS resets the session).  A failure is answered after a delay that
doubles with each failure on the connection, and the connection is closed
after ``maxAuthFailures``; a client's fallback through several mechanisms
with the same user name, with no other command between them, is one
failure.  The delay is a hook call too, so it is
cancelled with the connection.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtp.errors import SMTPError
from txsmtp.interfaces import IDeliverySession
from txsmtp.sasl import (
    MECHANISMS,
    Challenge,
    IScramCredentials,
    IScramKeyStore,
    NeedKeys,
    SASLError,
)
from txsmtp.session.actions import Notify
from txsmtp.session.base import SessionBase
from txsmtp.session.table import State

__all__ = ["AuthCommands"]

_log = Logger(namespace="txsmtp.server")


def _logoutAction(result: Any) -> Notify:
    return Notify(None, "logout", (result[2],), "avatar logout")


class AuthCommands(SessionBase):
    """The AUTH part of :class:`~txsmtp.session.core.ServerSession`."""

    if not TYPE_CHECKING:
        __slots__ = ()

    def do_AUTH(self, verb: str, argument: bytes) -> None:
        f = self.config
        conn = self.connection
        if f.portal is None:
            self.commandError(502, "5.5.1", "AUTH is not available on this server")
            return
        if conn.authenticated:
            # RFC 4954 §4: one successful AUTH per session.
            self.commandError(503, "5.5.1", "Already authenticated")
            return
        parts = argument.split()
        if not parts or len(parts) > 2:
            self.commandError(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
            return
        name = parts[0].decode("ascii", "replace").upper()
        if conn.tls is None and not f.allowInsecureAuth:
            # RFC 4954 §6: 538 when the mechanism needs an encrypted session.
            self.commandError(
                538, "5.7.11", "Encryption required for requested authentication mechanism"
            )
            return
        if name not in f.authMechanisms:
            self.commandError(504, "5.5.4", f"Unrecognized authentication type: {name[:20]}")
            return
        refusal = f.authLimiter.refusal(conn) if f.authLimiter is not None else None
        if refusal is not None:
            # Too many failures from this address, across connections.
            self.replyError(refusal)
            self.logRefusal("AUTH", refusal)
            if refusal.code == 421:
                self.close("auth-limit")
            return
        initial = None
        if len(parts) == 2:
            initial = self._decodeSASL(parts[1], allowEquals=True)
            if initial is None:
                return
        self._mechanism = MECHANISMS[name](f.hostname)
        self.state = State.AUTH
        # RFC 4954 §4: responses may be up to 12288 octets.
        self._lines.maxLength = f.maxAuthLineLength
        try:
            step = self._mechanism.start(initial)
        except SASLError as e:
            self._authDone()
            self.commandError(501, "5.5.2", f"Malformed authentication data: {e}")
            return
        self._authStep(step)

    def _decodeSASL(self, data: bytes, allowEquals: bool = False) -> bytes | None:
        if allowEquals and data == b"=":
            # RFC 4954 §4: "=" is an empty initial response.
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self._authDone()
            self.commandError(501, "5.5.2", "Invalid base64 data in authentication exchange")
            return None

    def _authResponse(self, line: bytes) -> None:
        pending = self._pendingLogin
        if pending is not None and not line:
            # The client accepted the server's final message (SCRAM): only
            # now is the AUTH command a success.
            self._pendingLogin = None
            self._install(*pending)
            self._authSucceeded()
            return
        if line == b"*":
            self._authDone()
            self.commandError(501, "5.7.0", "Authentication cancelled")
            return
        if pending is not None:
            self._authDone()
            self.commandError(
                501, "5.5.2", "Expected an empty response to the server's final message"
            )
            return
        data = self._decodeSASL(line)
        if data is None:
            return
        try:
            step = self._mechanism.respond(data)
        except SASLError as e:
            self._authDone()
            self.commandError(501, "5.5.2", f"Malformed authentication data: {e}")
            return
        self._authStep(step)

    def _authStep(self, step: Any) -> None:
        if isinstance(step, Challenge):
            self._say(b"334 " + base64.b64encode(step.data) + b"\r\n")
        elif isinstance(step, NeedKeys):
            store = self._scramKeyStore()
            if store is None:
                self._authStep(self._mechanism.useRandomSalt())
                return

            def then(keys: Any, failure: Failure | None) -> None:
                if failure is not None:
                    self._authDone()
                    self.errorFromFailure(failure, "scramKeys")
                    self.reply(454, "4.7.0", "Temporary authentication failure")
                    return
                # An unknown user gets a made-up salt, so the exchange does
                # not tell who exists; the proof then fails.
                if keys is None:
                    self._authStep(self._mechanism.useRandomSalt())
                else:
                    self._authStep(self._mechanism.keysFound(keys.salt, keys.iterations))

            self.call(store, "scramKeys", (step.username, self._mechanism.name), then)
        else:
            self._login(step.credentials)

    def _scramKeyStore(self) -> Any:
        checker = self.config.portal.checkers.get(IScramCredentials)
        return checker if IScramKeyStore.providedBy(checker) else None

    def _login(self, credentials: Any) -> None:
        def then(result: Any, failure: Failure | None) -> None:
            if failure is not None:
                # A realm may have noted the user before failing.
                self.connection.authenticated = None
                if isinstance(failure.value, (UnauthorizedLogin, UnhandledCredentials)):
                    self._authFailed(credentials)
                elif isinstance(failure.value, SMTPError):
                    # The delivery refused this user its session (say, a
                    # disabled account): its own words reach the client.
                    self._authDone()
                    self.replyError(failure.value)
                else:
                    self._authDone()
                    self.errorFromFailure(failure, "login")
                    self.reply(454, "4.7.0", "Temporary authentication failure")
                return
            _, avatar, logout = result
            self._authenticated(credentials, avatar, logout)

        self.call(
            self.config.portal,
            "login",
            (credentials, self.connection, IDeliverySession),
            then,
            cleanup=_logoutAction,
        )

    def _authenticated(self, credentials: Any, avatar: Any, logout: Any) -> None:
        username = self.connection.authenticated
        if not username:
            raw: Any = getattr(credentials, "username", None) or b""
            username = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        final = getattr(self._mechanism, "serverFinal", None)
        if final is not None:
            # RFC 4954 §4: additional data with success goes in a 334
            # challenge, answered by an empty line; until then the client is
            # not authenticated.
            self.connection.authenticated = None
            self._pendingLogin = (username, avatar, logout)
            self._say(b"334 " + base64.b64encode(final()) + b"\r\n")
            return
        self._install(username, avatar, logout)
        self._authSucceeded()

    def _install(self, username: str, avatar: Any, logout: Any) -> None:
        """Make the realm's avatar the session's delivery policy."""
        self.connection.authenticated = username
        old, self.deliverySession = self.deliverySession, avatar
        if self._anonymousSession is None:
            self._anonymousSession = old
        self._logout = logout

    def _authSucceeded(self) -> None:
        name = self._mechanism.name if self._mechanism is not None else "?"
        self._authDone()
        self.config.events.authDone(self.connection, name, True)
        if self.config.authLimiter is not None:
            self.config.authLimiter.succeeded(self.connection)
        self.reply(235, "2.7.0", "Authentication successful")
        conn = self.connection
        _log.info(
            "{text}",
            text=f"authenticated {conn.authenticated} with {name} from {conn.peerHost}",
            user=conn.authenticated,
            mechanism=name,
            peer=conn.peerHost,
            session=conn.sessionId,
        )

    def _authFailed(self, credentials: Any) -> None:
        f = self.config
        name = self._mechanism.name if self._mechanism is not None else "?"
        username = getattr(credentials, "username", b"")
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        self._authDone()
        f.events.authDone(self.connection, name, False)
        # A client that falls back from one mechanism to the next with the
        # same user name (Python's smtplib.login tries CRAM-MD5, PLAIN, then
        # LOGIN) makes one attempt, not several: the mechanisms tried in a
        # row, with no other command between them, count as one failure and
        # are delayed once.  Another user name, or a mechanism tried again,
        # is a new attempt.  (Any other command ends the run: see
        # CommandDispatch.lineReceived.)
        chain = self._authChain
        again = chain is not None and chain[0] == username and name not in chain[1]
        if again:
            assert chain is not None
            chain[1].append(name)
            tried = ", ".join(chain[1][:-1])
            note = f", the same attempt as with {tried}"
        else:
            self._authChain = (username, [name])
            self._authFailures += 1
            note = ""
        failures = self._authFailures
        # Passwords never reach the log; the user name does (for fail2ban).
        _log.info(
            "{text}",
            text=f"authentication failed for {username!r} with {name} from {self.connection.peerHost} "
            f"(failure {failures} of {f.maxAuthFailures}{note})",
            user=username,
            mechanism=name,
            peer=self.connection.peerHost,
            failures=failures,
            session=self.connection.sessionId,
        )

        def answer(value: Any = None, failure: Failure | None = None) -> None:
            self.reply(535, "5.7.8", "Authentication credentials invalid")
            if failures >= f.maxAuthFailures:
                self.reply(
                    421,
                    "4.7.0",
                    f"{f.hostname} Too many authentication failures, closing connection",
                )
                self.close("auth-failures")

        # Brute force: each failure is answered later than the one before,
        # and the connection is closed after maxAuthFailures.  A fallback
        # to another mechanism was delayed with its first try.
        delay = 0.0 if again else min(f.authFailureDelay * 2 ** (failures - 1), 30.0)
        if not again and f.authLimiter is not None:
            # And the failures of the address on other connections.
            delay = max(delay, f.authLimiter.failed(self.connection))
        if delay <= 0:
            answer()
        else:
            self.call(None, "delay", (delay,), answer, what="AUTH failure delay")

    def _authDone(self) -> None:
        """Leave the AUTH exchange (success or not)."""
        self._mechanism = None
        pending, self._pendingLogin = self._pendingLogin, None
        if pending is not None:
            # An exchange abandoned after the checker said yes: log out again.
            self.emit(Notify(None, "logout", (pending[2],), "avatar logout"))
        self._lines.maxLength = self.config.maxLineLength
        if self.state is State.AUTH:
            self.state = State.READY

    def restoreAnonymousSession(self) -> None:
        """After STARTTLS: the avatar is logged out and the anonymous session is back."""
        anonymous, self._anonymousSession = self._anonymousSession, None
        if anonymous is not None and anonymous is not self.deliverySession:
            logout, self._logout = self._logout, None
            if logout is not None:
                self.emit(Notify(None, "logout", (logout,), "avatar logout"))
            self.deliverySession = anonymous
