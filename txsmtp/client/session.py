"""
Setting up a client session: the greeting, EHLO (or HELO, or LHLO),
STARTTLS and AUTH, up to the connection being ready for mail.

A mixin of :class:`~txsmtp.client.ESMTPClient`: each step writes its command
with ``_write`` and names the handler of its reply in the connection's one
queue of replies owed (:class:`~txsmtp.client.pipeline.Pipeline`).
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.logger import Logger

from txsmtp import saslclient
from txsmtp.client.errors import SMTPAuthError, SMTPClientError, SMTPServerRefused, SMTPTLSError
from txsmtp.client.options import ClientOptions, TLSPolicy
from txsmtp.wire.reply import Reply

if TYPE_CHECKING:
    from twisted.internet import defer

    from txsmtp.client.pipeline import Pipeline

__all__: list[str] = []

_log = Logger(namespace="txsmtp.client")


class _State(enum.Enum):
    CONNECTING = "connecting"
    GREETING = "greeting"
    HELLO = "hello"
    STARTTLS = "starttls"
    AUTH = "auth"
    IDLE = "idle"
    TRANSACTION = "transaction"
    QUIT = "quit"
    CLOSED = "closed"


class _SessionSetup:
    """The session set-up steps of :class:`~txsmtp.client.ESMTPClient`."""

    if TYPE_CHECKING:
        helloVerb: ClassVar[bytes]
        options: ClientOptions
        transport: Any
        state: _State
        esmtp: bool
        extensions: dict[str, str]
        tls: bool
        authenticated: str | None
        ready: defer.Deferred[Any]
        _pipeline: Pipeline
        _error: SMTPClientError | None
        _heloTried: bool
        _tlsStarting: bool
        _sizeLimit: int | None
        _mechanism: saslclient.ClientMechanism | None
        _pendingInitial: bytes | None

        def _write(self, data: bytes) -> None: ...
        def _flush(self) -> None: ...
        def _fatal(self, err: SMTPClientError) -> None: ...
        def _becomeIdle(self) -> None: ...
        def _heloName(self) -> str: ...
        def _peerName(self) -> str: ...
        def helloReceived(self, reply: Reply) -> None: ...
        def chooseMechanism(self, offered: list[str]) -> saslclient.ClientMechanism | None: ...

    def _expect(self, handler: Any, timeout: float) -> None:
        self._pipeline.expect(handler, timeout)

    def _onGreeting(self, reply: Reply) -> None:
        if reply.code != 220:
            # RFC 5321 §3.1: 554 means "no service here"; say QUIT and go.
            self._setupFailed(SMTPServerRefused(f"{self._peerName()} refused the session", reply), quit=True)
            return
        self._hello()

    def _hello(self) -> None:
        self.state = _State.HELLO
        self._write(self.helloVerb + b" " + self._heloName().encode("utf-8") + b"\r\n")
        self._expect(self._onEhlo, self.options.timeouts.command)

    def _onEhlo(self, reply: Reply) -> None:
        if reply.code == 250:
            self.esmtp = True
            self._setExtensions(reply)
            self._afterHello(reply)
        elif reply.code >= 500 and self.helloVerb == b"EHLO" and not self._heloTried:
            # RFC 5321 §3.2: a server that does not know EHLO; fall back.
            self._heloTried = True
            self._write(b"HELO " + self._heloName().encode("utf-8") + b"\r\n")
            self._expect(self._onHelo, self.options.timeouts.command)
        else:
            self._setupFailed(SMTPServerRefused(f"{self._peerName()} refused {self.helloVerb.decode()}", reply), quit=True)

    def _onHelo(self, reply: Reply) -> None:
        if reply.code != 250:
            self._setupFailed(SMTPServerRefused(f"{self._peerName()} refused HELO", reply), quit=True)
            return
        self.esmtp = False
        self.extensions = {}
        self._sizeLimit = None
        self._afterHello(reply)

    def _setExtensions(self, reply: Reply) -> None:
        ext: dict[str, str] = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            if "=" in keyword and keyword.upper().startswith("AUTH="):
                # Old servers say "AUTH=LOGIN PLAIN".
                keyword, params = "AUTH", keyword[5:] + " " + params
            if keyword:
                key = keyword.upper()
                ext[key] = (ext[key] + " " + params).strip() if key in ext else params.strip()
        self.extensions = ext
        self._sizeLimit = None
        size = ext.get("SIZE", "")
        if size.isdigit() and int(size) > 0:
            self._sizeLimit = int(size)

    def _afterHello(self, reply: Reply) -> None:
        self.helloReceived(reply)
        policy = self.options.tls
        if not self.tls and policy is not TLSPolicy.NONE:
            if "STARTTLS" in self.extensions:
                self.state = _State.STARTTLS
                self._write(b"STARTTLS\r\n")
                self._expect(self._onStartTLS, self.options.timeouts.command)
                return
            if policy is TLSPolicy.REQUIRE:
                self._setupFailed(SMTPTLSError(f"{self._peerName()} does not offer STARTTLS and TLS is required"), quit=True)
                return
        self._authenticate()

    def _onStartTLS(self, reply: Reply) -> None:
        if reply.code != 220:
            if self.options.tls is TLSPolicy.OPPORTUNISTIC:
                _log.info("STARTTLS refused by {peer} ({reply}); going on without TLS", peer=self._peerName(), reply=str(reply))
                self._authenticate()
                return
            self._setupFailed(
                SMTPTLSError(f"{self._peerName()} refused STARTTLS: {reply}", permanent=reply.code >= 500),
                quit=True,
            )
            return
        # RFC 3207 §4.2: forget everything, and ignore anything that came
        # with the 220.
        self._pipeline.resetParser()
        self._startTLS()
        if self._error is not None:
            return
        self._heloTried = False
        self.extensions = {}
        self._sizeLimit = None
        self._hello()

    def _startTLS(self) -> None:
        self._flush()
        self._tlsStarting = True
        self.tls = True
        try:
            options = self.options.tlsOptions()
        except Exception as e:
            self._fatal(SMTPTLSError(f"cannot set up TLS for {self.options.tlsHostname or self.options.host}: {e}"))
            return
        self.transport.startTLS(options)

    def _authenticate(self) -> None:
        o = self.options
        if o.username is None:
            self._becomeReady()
            return
        if not self.tls and not o.allowPlaintextAuth:
            self._setupFailed(
                SMTPAuthError(f"not sending credentials to {self._peerName()} without TLS (allowPlaintextAuth is off)"),
                quit=True,
            )
            return
        if "AUTH" not in self.extensions:
            self._setupFailed(SMTPAuthError(f"{self._peerName()} does not offer AUTH"), quit=True)
            return
        offered = self.extensions["AUTH"].upper().split()
        mechanism = self.chooseMechanism(offered)
        if mechanism is None:
            self._setupFailed(
                SMTPAuthError(f"no usable AUTH mechanism: {self._peerName()} offers {' '.join(offered) or 'none'}"),
                quit=True,
            )
            return
        self.state = _State.AUTH
        self._mechanism = mechanism
        try:
            initial = mechanism.initialResponse()
        except saslclient.SASLClientError as e:
            self._setupFailed(SMTPAuthError(f"AUTH {mechanism.name}: {e}"), quit=True)
            return
        line = b"AUTH " + mechanism.name.encode("ascii")
        if initial is not None:
            encoded = _b64(initial)
            # RFC 4954 §4: an empty initial response is "="; one that would
            # make the line longer than 512 octets waits for the 334.
            if len(line) + 1 + len(encoded) + 2 <= 512:
                line += b" " + encoded
                initial = None
        self._pendingInitial = initial
        self._write(line + b"\r\n")
        self._expect(self._onAuth, self.options.timeouts.command)

    def _onAuth(self, reply: Reply) -> None:
        mechanism = self._mechanism
        assert mechanism is not None
        if reply.code == 334:
            initial = self._pendingInitial
            if initial is not None:
                self._pendingInitial = None
                response = initial
            else:
                try:
                    challenge = _unb64(reply.lines[0].strip() if reply.lines else "")
                    response = mechanism.respond(challenge)
                except (binascii.Error, ValueError, saslclient.SASLClientError) as e:
                    # RFC 4954 §4: "*" cancels the exchange.
                    err = SMTPAuthError(f"AUTH {mechanism.name}: {e}")
                    self._write(b"*\r\n")
                    self._expect(lambda r: self._setupFailed(err, quit=True), self.options.timeouts.command)
                    return
            self._write(_b64(response) if response else b"")
            self._write(b"\r\n")
            self._expect(self._onAuth, self.options.timeouts.command)
            return
        if reply.code == 235:
            try:
                mechanism.verifySuccess(None)
            except saslclient.SASLClientError as e:
                # The server did not prove it knows the password.
                self._setupFailed(SMTPAuthError(f"AUTH {mechanism.name}: the server's proof is wrong: {e}"), quit=True)
                return
            self.authenticated = mechanism.name
            self._becomeReady()
            return
        self._setupFailed(SMTPAuthError(f"{self._peerName()} refused AUTH {mechanism.name}: {reply}", reply), quit=True)

    def _becomeReady(self) -> None:
        self._becomeIdle()
        if not self.ready.called:
            self.ready.callback(self)

    def _setupFailed(self, err: SMTPClientError, quit: bool = False) -> None:
        self._error = err
        if quit and self.state is not _State.CLOSED:
            self.state = _State.QUIT
            self._pipeline.clear()
            self._pipeline.closing = True
            self._write(b"QUIT\r\n")
            self._expect(self._onQuit, self.options.timeouts.quit)
        else:
            self._fatal(err)

    def _onQuit(self, reply: Reply) -> None:
        self._flush()
        self.transport.loseConnection()


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data) if data else b"="


def _unb64(text: str) -> bytes:
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError(f"the server's challenge is not base64: {text[:40]!r}") from None
