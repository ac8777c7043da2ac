"""
Client-side SASL mechanisms for SMTP AUTH (RFC 4954), without I/O.

Theory of operation
===================

A mechanism object lives for one AUTH exchange; it never touches a
transport or the reactor.  The protocol drives it like this:

1. :func:`chooseMechanism` picks the strongest mechanism that the server
   offered (the names on its ``250-AUTH`` EHLO line), that the caller allows,
   and that the credentials at hand can use; it returns a fresh object.
2. The protocol sends ``AUTH <name>``, followed by the base64 of
   :meth:`ClientMechanism.initialResponse` when that is not ``None`` (an empty
   initial response would be sent as ``=``, RFC 4954 §4; none of the
   mechanisms here has one).
3. For each ``334`` reply the protocol base64-decodes the text and passes it
   to :meth:`ClientMechanism.respond`, then sends the base64 of what that
   returns (an empty line for ``b""``).
4. On ``235`` the protocol calls :meth:`ClientMechanism.verifySuccess` with
   the server-final data it last saw in a ``334`` (or ``None``).  Only
   SCRAM-SHA-256 checks anything there: the server must have proved that it
   knows the password too, or the client must not trust the session.

Every method raises :class:`SASLClientError`, and nothing else, when the
server misbehaves: a malformed challenge, a challenge where none belongs,
an error reported by the server, a wrong server signature.  The protocol
answers an error from :meth:`~ClientMechanism.respond` with a ``*`` line,
which cancels the exchange (RFC 4954 §4); an error from
:meth:`~ClientMechanism.verifySuccess` means the server accepted a client
that cannot accept the server, and the connection should be dropped.
Credentials that a mechanism cannot carry (a NUL inside a PLAIN user name, a
password that SASLprep refuses for SCRAM) raise :class:`SASLClientError`
from the constructor; :func:`chooseMechanism` then moves on to the next
mechanism.

When the server asked for the initial response with an empty ``334``
(because the client did not send one, e.g. since the AUTH line would have
been too long), ``respond(b"")`` of PLAIN, XOAUTH2 and SCRAM-SHA-256 returns
the initial response (RFC 4422 §5, RFC 4954 §4).

Mechanisms
----------

- :class:`ScramSHA256` (RFC 5802, RFC 7677): a salted challenge-response
  with mutual authentication; the password never crosses the wire.
- :class:`XOAuth2` (Google's XOAUTH2): an OAuth 2.0 bearer token, which is
  as good as a password to whoever reads it.
- :class:`CramMD5` (RFC 2195): an HMAC-MD5 of a server challenge; the
  password does not cross the wire, but the server must store it.
- :class:`Plain` (RFC 4616) and :class:`Login`
  (draft-murchison-sasl-login): the password in clear; use under TLS only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from txsmtp.sasl import SASLError, saslprep

__all__ = [
    "SASLClientError",
    "ClientMechanism",
    "Plain",
    "Login",
    "CramMD5",
    "ScramSHA256",
    "XOAuth2",
    "MECHANISM_PREFERENCE",
    "chooseMechanism",
]


class SASLClientError(Exception):
    """
    The server's side of a SASL exchange is unacceptable (a malformed or
    unexpected challenge, an error it reported, a wrong or missing server
    signature), or the credentials cannot be expressed in the mechanism.
    """


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: not Unicode text that UTF-8 can carry.
        raise SASLClientError(f"{what} is not valid Unicode text") from None


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLClientError(f"{what} is not valid UTF-8") from None


class ClientMechanism:
    """
    The client's side of one SASL exchange.

    :cvar name: the mechanism name, as the server advertises it.
    :cvar plaintext: ``True`` when what the client sends lets an eavesdropper
        (or the server) recover the secret: the password for PLAIN and LOGIN,
        the bearer token for XOAUTH2.  Such mechanisms belong under TLS.
    """

    name: str = ""
    plaintext: bool = False

    def initialResponse(self) -> bytes | None:
        """
        The initial response to send on the ``AUTH`` line.

        :return: the raw bytes (the protocol base64-encodes them), or
            ``None`` when the mechanism starts with a server challenge.
        """
        return None

    def respond(self, challenge: bytes) -> bytes:
        """
        Answer a server challenge.

        :param challenge: the base64-decoded text of a ``334`` reply.
        :return: the raw response (the protocol base64-encodes it).
        :raise SASLClientError: when the challenge is malformed or
            unexpected, or reports an error.
        """
        raise NotImplementedError

    def verifySuccess(self, data: bytes | None) -> None:
        """
        The server said ``235``: check that it may be trusted.

        :param data: the server-final data the server last sent in a ``334``
            (answered with an empty line), or ``None``.
        :raise SASLClientError: when the server did not authenticate itself
            (SCRAM-SHA-256 only; the other mechanisms accept any success).
        """
        return None


class Plain(ClientMechanism):
    """
    PLAIN (RFC 4616): ``[authzid] NUL authcid NUL passwd`` in one message.

    :param username: the authentication identity (authcid).
    :param password: the password.
    :param authzid: the identity to act as; empty to act as ``username``.
    :raise SASLClientError: when a value contains NUL, or the user name or
        password is empty (RFC 4616 §2: ``authcid = 1*SAFE``,
        ``passwd = 1*SAFE``, and SAFE excludes NUL).
    """

    name = "PLAIN"
    plaintext = True

    def __init__(self, username: str, password: str, authzid: str = "") -> None:
        if not username or not password:
            raise SASLClientError("PLAIN needs a non-empty user name and password")
        if "\0" in username or "\0" in password or "\0" in authzid:
            raise SASLClientError("PLAIN values must not contain NUL")
        # The server applies SASLprep (RFC 4616 §2 leaves preparation to the
        # verifier); the client sends the strings as the user gave them.
        self._message = b"\0".join(
            [
                _encode(authzid, "authorization identity"),
                _encode(username, "user name"),
                _encode(password, "password"),
            ]
        )
        self._answered = False

    def initialResponse(self) -> bytes:
        """:return: the whole PLAIN message."""
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        """
        PLAIN has no challenges, except the empty one a server sends when
        the client gave no initial response: answer that with the message.
        """
        if challenge or self._answered:
            raise SASLClientError("unexpected challenge in PLAIN")
        self._answered = True
        return self._message


class Login(ClientMechanism):
    """
    LOGIN (draft-murchison-sasl-login): the user name answers the first
    challenge, the password the second.

    The prompts (``Username:`` and ``Password:``, in practice) are ignored:
    the draft says the client answers by position, whatever the server
    asks, and servers word them differently.

    :param username: the user name.
    :param password: the password.
    """

    name = "LOGIN"
    plaintext = True

    def __init__(self, username: str, password: str) -> None:
        self._answers = [_encode(username, "user name"), _encode(password, "password")]
        self._step = 0

    def respond(self, challenge: bytes) -> bytes:
        """
        :return: the user name for the first challenge, the password for the
            second.
        :raise SASLClientError: on a third challenge.
        """
        if self._step >= len(self._answers):
            raise SASLClientError("unexpected third challenge in LOGIN")
        answer = self._answers[self._step]
        self._step += 1
        return answer


class CramMD5(ClientMechanism):
    """
    CRAM-MD5 (RFC 2195): the server sends a unique challenge (in the form
    of a message id); the client answers with its user name, a space and
    the hexadecimal HMAC-MD5 (RFC 2104) of the challenge keyed with the
    password.

    :param username: the user name.
    :param password: the password (the HMAC key, UTF-8 encoded).
    """

    name = "CRAM-MD5"

    def __init__(self, username: str, password: str) -> None:
        self._username = _encode(username, "user name")
        self._password = _encode(password, "password")
        self._answered = False

    def respond(self, challenge: bytes) -> bytes:
        """
        :return: ``username SP hex-digest`` (RFC 2195 §2).
        :raise SASLClientError: on an empty challenge (nothing to sign), or a
            second challenge.
        """
        if self._answered:
            raise SASLClientError("unexpected second challenge in CRAM-MD5")
        if not challenge:
            raise SASLClientError("CRAM-MD5 challenge is empty")
        self._answered = True
        # Lower-case hex, as in the RFC 2195 §2 example.
        digest = hmac.new(self._password, challenge, hashlib.md5).hexdigest()
        return self._username + b" " + digest.encode("ascii")


# -- SCRAM-SHA-256 ------------------------------------------------------------


def _hmacSHA256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _escapeSaslName(name: str) -> str:
    # RFC 5802 §5.1: "=" becomes "=3D" and "," becomes "=2C".  "=" goes first,
    # or the "=" of a "=2C" just produced would be escaped again.
    return name.replace("=", "=3D").replace(",", "=2C")


# RFC 5802 §7: printable = %x21-2B / %x2D-7E (visible ASCII except ",").
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# RFC 5802 §7: posit-number = %x31-39 *DIGIT.  At most ten digits, so a
# hostile count never turns into an expensive integer conversion.
_POSIT_NUMBER = re.compile(r"[1-9][0-9]{0,9}")
# RFC 5802 §7: base64 (standard alphabet, padded).
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

# gs2-header for a client that does not support channel binding, and no
# authorization identity (RFC 5802 §5.1 "n", §7 gs2-cbind-flag).
_GS2_HEADER = b"n,,"


def _strictBase64(value: str, what: str) -> bytes:
    if _BASE64.fullmatch(value) is None:
        raise SASLClientError(f"bad base64 in SCRAM {what}")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error included
        raise SASLClientError(f"bad base64 in SCRAM {what}") from None


class ScramSHA256(ClientMechanism):
    """
    SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding.

    The client sends ``n,,n=<user>,r=<nonce>``; the server answers with its
    nonce (which extends the client's), a salt and an iteration count; the
    client proves it knows the password; the server proves, with its
    signature in the server-final message ``v=...``, that it knows it too.
    That last message reaches :meth:`respond` (in a ``334``) or
    :meth:`verifySuccess`; either way :meth:`verifySuccess` refuses a
    success without a valid server signature.

    :param username: the user name; SASLprepped and escaped (RFC 5802 §5.1).
    :param password: the password; SASLprepped (RFC 5802 §2.2 "Normalize").
    :param nonce: the client nonce, printable ASCII without commas; random
        (24 base64 characters) when ``None``.  For tests.
    :raise SASLClientError: when SASLprep refuses the user name or password,
        or the user name is empty.
    :raise ValueError: when ``nonce`` has characters a nonce cannot have.

    :cvar minIterations: the smallest iteration count accepted from a
        server (RFC 7677 §4: at least 4096).
    :cvar maxIterations: the largest iteration count accepted: a hostile
        server must not make the client burn CPU time without bound.
    """

    name = "SCRAM-SHA-256"
    minIterations = 4096
    maxIterations = 1_000_000

    _START, _SENT_FINAL, _DONE, _FAILED = range(4)

    def __init__(self, username: str, password: str, nonce: str | None = None) -> None:
        try:
            preparedUser = saslprep(username)
            preparedPassword = saslprep(password)
        except SASLError as e:
            raise SASLClientError(f"SCRAM credentials: {e}") from None
        if not preparedUser:
            raise SASLClientError("SCRAM needs a non-empty user name")
        if nonce is None:
            nonce = base64.b64encode(os.urandom(18)).decode("ascii")
        elif _PRINTABLE.fullmatch(nonce) is None:
            raise ValueError("a SCRAM nonce is printable ASCII without commas")
        self._password = _encode(preparedPassword, "password")
        self._clientNonce = nonce
        self._clientFirstBare = (
            b"n=" + _encode(_escapeSaslName(preparedUser), "user name") + b",r=" + nonce.encode()
        )
        self._state = self._START
        self._sentFirst = False  # in answer to an empty challenge
        self._expectedSignature = b""
        self._verified = False

    def initialResponse(self) -> bytes:
        """:return: the client-first-message, ``n,,n=<user>,r=<nonce>``."""
        return _GS2_HEADER + self._clientFirstBare

    def respond(self, challenge: bytes) -> bytes:
        """
        :return: the client-final-message for the server-first-message; the
            client-first-message for an empty first challenge (only once);
            ``b""`` for a correct server-final-message.
        :raise SASLClientError: on a malformed message, a nonce that does not
            extend the client's, an iteration count outside
            [``minIterations``, ``maxIterations``], an ``e=`` error,
            a wrong server signature, or a challenge after the last.
        """
        try:
            if self._state == self._START:
                if not challenge and not self._sentFirst:
                    self._sentFirst = True
                    return self.initialResponse()
                return self._clientFinal(challenge)
            if self._state == self._SENT_FINAL:
                self._checkServerFinal(challenge)
                return b""
        except SASLClientError:
            self._state = self._FAILED
            raise
        if self._state == self._DONE:
            raise SASLClientError("unexpected challenge after the SCRAM exchange completed")
        raise SASLClientError("the SCRAM exchange has already failed")

    def verifySuccess(self, data: bytes | None) -> None:
        """
        Check the server signature: in ``data`` if given, else the one
        :meth:`respond` already verified.

        :raise SASLClientError: when the server claimed success without (or
            with a wrong) server signature, e.g. before the client even sent
            its proof.
        """
        if self._state == self._FAILED:
            raise SASLClientError("the SCRAM exchange has already failed")
        if data is not None:
            if self._state == self._START:
                raise SASLClientError("SCRAM server-final-message before the client proof")
            try:
                self._checkServerFinal(data)
            except SASLClientError:
                self._state = self._FAILED
                raise
        if not self._verified:
            # RFC 5802 §3: the client authenticates the server by its
            # ServerSignature; a success without it proves nothing.
            raise SASLClientError("the server did not send its SCRAM signature")

    def _clientFinal(self, serverFirst: bytes) -> bytes:
        text = _decode(serverFirst, "SCRAM server-first-message")
        attrs = text.split(",")
        if attrs[0].startswith("e="):
            # RFC 5802 errata 5271 (reported, §5.1): a server may put its
            # error in place of the server-first-message too.
            raise SASLClientError(f"SCRAM server error: {attrs[0][2:]}")
        if attrs[0].startswith("m="):
            # RFC 5802 §5.1 "m": a client that does not understand a
            # mandatory extension MUST fail.
            raise SASLClientError("SCRAM mandatory extension not supported")
        # RFC 5802 §5: the order of r, s, i is fixed; extensions may follow.
        if (
            len(attrs) < 3
            or not attrs[0].startswith("r=")
            or not attrs[1].startswith("s=")
            or not attrs[2].startswith("i=")
        ):
            raise SASLClientError("malformed SCRAM server-first-message")
        nonce, saltText, count = attrs[0][2:], attrs[1][2:], attrs[2][2:]
        if _PRINTABLE.fullmatch(nonce) is None:
            raise SASLClientError("malformed SCRAM nonce")
        # RFC 5802 §5.1 "r": the client MUST check that the server nonce
        # starts with its own; the server appends a part of its own.
        if not nonce.startswith(self._clientNonce) or len(nonce) == len(self._clientNonce):
            raise SASLClientError("SCRAM server nonce does not extend the client nonce")
        salt = _strictBase64(saltText, "salt")
        if not salt:
            raise SASLClientError("SCRAM salt is empty")
        if _POSIT_NUMBER.fullmatch(count) is None:
            raise SASLClientError("malformed SCRAM iteration count")
        iterations = int(count)
        if not self.minIterations <= iterations <= self.maxIterations:
            raise SASLClientError(
                f"SCRAM iteration count {iterations} is outside "
                f"{self.minIterations}..{self.maxIterations}"
            )

        # RFC 5802 §3.
        saltedPassword = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        clientKey = _hmacSHA256(saltedPassword, b"Client Key")
        storedKey = hashlib.sha256(clientKey).digest()
        serverKey = _hmacSHA256(saltedPassword, b"Server Key")
        # c= carries the base64 gs2-header ("biws" for "n,,"), RFC 5802 §5.1.
        withoutProof = b"c=" + base64.b64encode(_GS2_HEADER) + b",r=" + nonce.encode("ascii")
        # The server-first-message goes into AuthMessage byte for byte as
        # received, extensions included.
        authMessage = self._clientFirstBare + b"," + serverFirst + b"," + withoutProof
        clientSignature = _hmacSHA256(storedKey, authMessage)
        proof = bytes(a ^ b for a, b in zip(clientKey, clientSignature, strict=True))
        self._expectedSignature = _hmacSHA256(serverKey, authMessage)
        self._state = self._SENT_FINAL
        return withoutProof + b",p=" + base64.b64encode(proof)

    def _checkServerFinal(self, serverFinal: bytes) -> None:
        # RFC 5802 §7: server-final-message = (server-error / verifier)
        # ["," extensions].
        first = _decode(serverFinal, "SCRAM server-final-message").split(",", 1)[0]
        if first.startswith("e="):
            raise SASLClientError(f"SCRAM server error: {first[2:]}")
        if not first.startswith("v="):
            raise SASLClientError("malformed SCRAM server-final-message")
        signature = _strictBase64(first[2:], "server signature")
        if not hmac.compare_digest(signature, self._expectedSignature):
            raise SASLClientError("wrong SCRAM server signature")
        self._verified = True
        self._state = self._DONE


# -- XOAUTH2 ------------------------------------------------------------------


class XOAuth2(ClientMechanism):
    """
    XOAUTH2 (Google's "OAuth 2.0 Mechanism" for IMAP, POP and SMTP): one
    message, ``user=<user> ^A auth=Bearer <token> ^A ^A`` (``^A`` is
    ``\\x01``).

    On failure the server sends a ``334`` whose text is a JSON object
    (``status``, ``schemes``, ``scope``); the client answers it with an
    empty response and the server ends with ``535``.  ``error`` keeps
    that object for diagnostics.

    :param username: the mailbox the token grants access to.
    :param token: the OAuth 2.0 access token.
    :raise SASLClientError: when either is empty or contains ``\\x01``.

    :ivar error: the server's JSON error (a dict, or ``None`` before any
        error or when the challenge was not a JSON object).
    :ivar errorChallenge: the raw error challenge, or ``None``.
    """

    name = "XOAUTH2"
    plaintext = True

    def __init__(self, username: str, token: str) -> None:
        if not username or not token:
            raise SASLClientError("XOAUTH2 needs a non-empty user name and token")
        if "\x01" in username or "\x01" in token:
            raise SASLClientError("XOAUTH2 values must not contain \\x01")
        self._message = (
            b"user="
            + _encode(username, "user name")
            + b"\x01auth=Bearer "
            + _encode(token, "token")
            + b"\x01\x01"
        )
        self._answered = False
        self.error: dict[str, Any] | None = None
        self.errorChallenge: bytes | None = None

    def initialResponse(self) -> bytes:
        """:return: the whole XOAUTH2 message."""
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        """
        :return: the message for an empty first challenge; ``b""`` for the
            error challenge, so the server can finish with ``535``.
        :raise SASLClientError: on any challenge after that.
        """
        if self._answered:
            raise SASLClientError("unexpected challenge after the XOAUTH2 error")
        self._answered = True
        if not challenge:
            return self._message
        self.errorChallenge = challenge
        try:
            details = json.loads(challenge.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            details = None
        self.error = details if isinstance(details, dict) else None
        return b""


# -- choosing -----------------------------------------------------------------

#: Mechanism names, strongest first.  XOAUTH2 needs a token, the others a
#: password.
MECHANISM_PREFERENCE: tuple[str, ...] = ("SCRAM-SHA-256", "XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN")


_PASSWORD_MECHANISMS: dict[str, Callable[[str, str], ClientMechanism]] = {
    "SCRAM-SHA-256": ScramSHA256,
    "CRAM-MD5": CramMD5,
    "PLAIN": Plain,
    "LOGIN": Login,
}


def _names(names: Iterable[str]) -> set[str]:
    if isinstance(names, str):
        names = names.split()
    return {name.strip().upper() for name in names}


def chooseMechanism(
    offered: Iterable[str],
    *,
    username: str,
    password: str | None = None,
    oauthToken: str | None = None,
    allowed: Iterable[str] | None = None,
) -> ClientMechanism | None:
    """
    Pick the mechanism for an AUTH exchange.

    :param offered: the mechanism names from the server's EHLO ``AUTH``
        line, in any case (a single string is split on white space).
    :param username: the user name.
    :param password: the password, or ``None`` when there is none.
    :param oauthToken: an OAuth 2.0 access token for XOAUTH2, or ``None``.
    :param allowed: the names the caller accepts (any case), or ``None``
        for all; e.g. leave out PLAIN and LOGIN on a connection without TLS.
    :return: a fresh mechanism object for the first name in
        :data:`MECHANISM_PREFERENCE` that is offered, allowed, and usable with
        the credentials given, or ``None`` when there is none.  A mechanism
        that cannot carry the credentials (e.g. SCRAM-SHA-256 with a password
        SASLprep refuses) is skipped.
    """
    offeredNames = _names(offered)
    allowedNames = None if allowed is None else _names(allowed)
    for name in MECHANISM_PREFERENCE:
        if name not in offeredNames or (allowedNames is not None and name not in allowedNames):
            continue
        try:
            if name == "XOAUTH2":
                if oauthToken is not None:
                    return XOAuth2(username, oauthToken)
            elif password is not None:
                return _PASSWORD_MECHANISMS[name](username, password)
        except SASLClientError:
            pass
    return None
