"""
Server-side SASL mechanisms for SMTP AUTH (RFC 4954), without I/O.

Theory of operation
===================

A mechanism object lives for one AUTH exchange.  The protocol calls
:meth:`Mechanism.start` with the initial response (or ``None``), then
:meth:`Mechanism.respond` with each decoded client response.  Each call
returns one of:

- :class:`Challenge`: send ``334`` with these bytes (base64-encoded);
- :class:`Credentials`: the exchange is complete; log in to the portal with
  these twisted.cred credentials.  ``final`` is data to send the client once
  the portal accepted (SCRAM's server signature), as a last ``334``
  challenge that the client answers with an empty line (RFC 4954 §4);
- :class:`NeedKeys`: SCRAM only; the protocol asks the portal's checker for
  the user's stored SCRAM keys and calls :meth:`ScramSHA256.keysFound` or
  :meth:`ScramSHA256.useRandomSalt`, which returns the next step.

Malformed input raises :class:`SASLError`, which the protocol answers with
``501 5.5.2``.

Mechanisms are looked up by name in :data:`MECHANISMS`; an application adds
its own with :func:`registerMechanism`, naming the credential interfaces
its credentials provide, and a server offers it when a checker of its
portal takes one of them (:func:`usableMechanism`).

Credentials and checkers
------------------------

PLAIN and LOGIN produce :class:`twisted.cred.credentials.UsernamePassword`;
CRAM-MD5 produces :class:`twisted.cred.credentials.CramMD5Credentials`,
which checkers with plaintext passwords understand.

SCRAM-SHA-256 (RFC 5802, RFC 7677) works two ways:

- with a checker that keeps plaintext passwords (memory, file): the server
  makes up a salt (:meth:`ScramSHA256.fakeSalt`), and the :class:`ScramPasswordCredentials` it produces
  provide ``IUsernamePassword``: the checker's ``checkPassword(password)``
  derives the keys from the password and verifies the client's proof;
- with a checker that keeps SCRAM keys and provides
  :class:`IScramKeyStore`: the server sends the stored salt and iteration
  count, and :class:`ScramCredentials` provide :class:`IScramCredentials`,
  whose ``checkKeys(storedKey, serverKey)`` verifies the proof without the
  password ever existing on the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass
from typing import Any

from twisted.cred.credentials import (
    CramMD5Credentials,
    ICredentials,
    IUsernameHashedPassword,
    IUsernamePassword,
    UsernamePassword,
)
from zope.interface import Attribute, Interface, implementer

from txsmtp._saslregistry import (
    MECHANISMS,
    MechanismFactory,
    credentialInterfacesOf,
    registerMechanism,
    unregisterMechanism,
    usableMechanism,
)

__all__ = [
    "SASLError",
    "Challenge",
    "Credentials",
    "NeedKeys",
    "Mechanism",
    "Plain",
    "Login",
    "CramMD5",
    "ScramSHA256",
    "ScramKeys",
    "ScramCredentials",
    "ScramPasswordCredentials",
    "IScramCredentials",
    "IScramKeyStore",
    "MECHANISMS",
    "MechanismFactory",
    "credentialInterfacesOf",
    "registerMechanism",
    "unregisterMechanism",
    "saslprep",
    "scramKeys",
    "usableMechanism",
]


class SASLError(Exception):
    """The client's SASL data is malformed."""


@dataclass(frozen=True)
class Challenge:
    """Send ``334`` with :attr:`data` (raw bytes; the protocol base64-encodes)."""

    data: bytes = b""


@dataclass(frozen=True)
class Credentials:
    """The exchange is complete: log in with :attr:`credentials`."""

    credentials: Any
    final: bytes | None = None


@dataclass(frozen=True)
class NeedKeys:
    """Look up the stored SCRAM keys of :attr:`username`."""

    username: str


# -- SASLprep (RFC 4013) -------------------------------------------------------


def saslprep(text: str) -> str:
    """
    Prepare a user name or password with SASLprep (RFC 4013): map non-ASCII
    spaces to a space and drop characters mapped to nothing, normalise to
    NFKC, refuse prohibited and inconsistent bidirectional text.

    :raise SASLError: when the string contains prohibited characters.
    """
    if text.isascii() and all(0x20 <= ord(c) < 0x7F for c in text):
        return text
    mapped = []
    for c in text:
        if stringprep.in_table_c12(c):
            mapped.append(" ")
        elif not stringprep.in_table_b1(c):
            mapped.append(c)
    out = unicodedata.normalize("NFKC", "".join(mapped))
    for c in out:
        if (
            stringprep.in_table_c12(c)
            or stringprep.in_table_c21_c22(c)
            or stringprep.in_table_c3(c)
            or stringprep.in_table_c4(c)
            or stringprep.in_table_c5(c)
            or stringprep.in_table_c6(c)
            or stringprep.in_table_c7(c)
            or stringprep.in_table_c8(c)
            or stringprep.in_table_c9(c)
            or stringprep.in_table_a1(c)
        ):
            raise SASLError("prohibited character in SASL string")
    if any(stringprep.in_table_d1(c) for c in out):
        if any(stringprep.in_table_d2(c) for c in out):
            raise SASLError("mixed bidirectional text in SASL string")
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            raise SASLError("bidirectional text must start and end with RandALCat characters")
    return out


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError(f"{what} is not valid UTF-8") from None


# -- mechanisms -----------------------------------------------------------------


class Mechanism:
    """
    One SASL exchange.

    :cvar name: the mechanism name as advertised.
    :cvar plaintext: ``True`` when the password crosses the wire in clear.
        Informational: the server offers every mechanism only under TLS
        unless told otherwise (``allowInsecureAuth``).
    """

    name = ""
    plaintext = False

    def __init__(self, hostname: str = "localhost") -> None:
        self.hostname = hostname

    def start(self, initial: bytes | None) -> Challenge | Credentials | NeedKeys:
        """Begin, with the client's initial response if it sent one."""
        raise NotImplementedError

    def respond(self, response: bytes) -> Challenge | Credentials | NeedKeys:
        """Continue with the client's (decoded) response to a challenge."""
        raise NotImplementedError


class Plain(Mechanism):
    """PLAIN (RFC 4616): ``[authzid] NUL authcid NUL password``."""

    name = "PLAIN"
    plaintext = True

    def start(self, initial: bytes | None) -> Challenge | Credentials:
        if initial is None:
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, response: bytes) -> Credentials:
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SASLError("PLAIN response must be authzid NUL authcid NUL password")
        authzid, authcid, password = (_utf8(p, "PLAIN response") for p in parts)
        if not authcid or not password:
            raise SASLError("PLAIN needs a user name and a password")
        if authzid and authzid != authcid:
            # Acting as another user is not supported.
            raise SASLError("PLAIN authorization identity must be empty or equal the user name")
        return Credentials(UsernamePassword(saslprep(authcid).encode("utf-8"), saslprep(password).encode("utf-8")))


class Login(Mechanism):
    """LOGIN (draft-murchison-sasl-login): user name, then password."""

    name = "LOGIN"
    plaintext = True

    def __init__(self, hostname: str = "localhost") -> None:
        super().__init__(hostname)
        self._username: bytes | None = None

    def start(self, initial: bytes | None) -> Challenge:
        if initial is None:
            return Challenge(b"Username:")
        return self.respond(initial)  # type: ignore[return-value]

    def respond(self, response: bytes) -> Challenge | Credentials:
        if self._username is None:
            if not response:
                raise SASLError("LOGIN needs a user name")
            self._username = saslprep(_utf8(response, "user name")).encode("utf-8")
            return Challenge(b"Password:")
        password = saslprep(_utf8(response, "password")).encode("utf-8")
        return Credentials(UsernamePassword(self._username, password))


class CramMD5(Mechanism):
    """CRAM-MD5 (RFC 2195): an HMAC-MD5 of a server challenge."""

    name = "CRAM-MD5"

    def __init__(self, hostname: str = "localhost") -> None:
        super().__init__(hostname)
        self._credentials = CramMD5Credentials(hostname)

    def start(self, initial: bytes | None) -> Challenge:
        if initial:
            raise SASLError("CRAM-MD5 takes no initial response")
        return Challenge(self._credentials.getChallenge())

    def respond(self, response: bytes) -> Credentials:
        user, sep, digest = response.rpartition(b" ")
        if not sep or not user or len(digest) != 32:
            raise SASLError("CRAM-MD5 response must be 'user digest'")
        try:
            int(digest, 16)
        except ValueError:
            raise SASLError("CRAM-MD5 digest must be hexadecimal") from None
        self._credentials.setResponse(response)
        return Credentials(self._credentials)


# -- SCRAM ----------------------------------------------------------------------


class IScramCredentials(ICredentials):
    """
    The outcome of a SCRAM exchange whose salt and iteration count came from
    a key store: a checker verifies it with the user's stored keys.
    """

    username = Attribute("The user name, as bytes (UTF-8).")

    def checkKeys(storedKey, serverKey):
        """
        :param storedKey: the user's StoredKey (bytes).
        :param serverKey: the user's ServerKey (bytes).
        :return: ``True`` when the client's proof matches.
        """


class IScramKeyStore(Interface):
    """
    A twisted.cred checker that keeps SCRAM keys instead of passwords
    provides this too, so the server can send the stored salt.
    """

    def scramKeys(username, mechanism):
        """
        :param username: the user name (text, SASLprepped).
        :param mechanism: ``"SCRAM-SHA-256"``.
        :return: a :class:`ScramKeys` (or a Deferred firing with one), or
            ``None`` for an unknown user.
        """


@dataclass(frozen=True)
class ScramKeys:
    """What a server stores for a SCRAM user (RFC 5802 §3)."""

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def scramKeys(password: str, salt: bytes | None = None, iterations: int = 4096) -> ScramKeys:
    """
    Derive the SCRAM-SHA-256 keys to store for ``password`` (for a key
    store; see :class:`IScramKeyStore`).
    """
    if salt is None:
        salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    clientKey = _hmac(salted, b"Client Key")
    return ScramKeys(salt, iterations, hashlib.sha256(clientKey).digest(), _hmac(salted, b"Server Key"))


class _ScramProof:
    """A completed SCRAM-SHA-256 exchange, waiting for a checker's verdict."""

    def __init__(self, username: bytes, salt: bytes, iterations: int, authMessage: bytes, clientProof: bytes) -> None:
        self.username = username
        self._salt = salt
        self._iterations = iterations
        self._authMessage = authMessage
        self._clientProof = clientProof
        #: What the client expects in server-final, once a check succeeded.
        self.serverSignature: bytes | None = None

    def checkKeys(self, storedKey: bytes, serverKey: bytes) -> bool:
        self.serverSignature = None
        clientSignature = _hmac(storedKey, self._authMessage)
        if len(self._clientProof) != len(clientSignature):
            return False
        clientKey = bytes(a ^ b for a, b in zip(self._clientProof, clientSignature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(clientKey).digest(), storedKey):
            return False
        self.serverSignature = _hmac(serverKey, self._authMessage)
        return True

    def checkPassword(self, password: bytes | str) -> bool:
        """Derive the keys from a plaintext ``password`` and check the proof."""
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        try:
            keys = scramKeys(password, self._salt, self._iterations)
        except SASLError:
            return False
        return self.checkKeys(keys.storedKey, keys.serverKey)


@implementer(IScramCredentials)
class ScramCredentials(_ScramProof):
    """
    SCRAM credentials from an exchange that used a key store's salt: a
    checker for :class:`IScramCredentials` verifies them with
    ``checkKeys(storedKey, serverKey)``.
    """


@implementer(IUsernamePassword)
class ScramPasswordCredentials(_ScramProof):
    """
    SCRAM credentials from an exchange with a made-up salt: any checker that
    knows plaintext passwords verifies them through ``checkPassword``, which
    derives the keys from the password.
    """

    password = b""  # never known; present for IUsernamePassword


def _scramName(value: str) -> str:
    # RFC 5802 §5.1: "," and "=" are encoded as =2C and =3D; any other "=" is an error.
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "=":
            code = value[i : i + 3]
            if code == "=2C":
                out.append(",")
            elif code == "=3D":
                out.append("=")
            else:
                raise SASLError("bad escape in SCRAM user name")
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise SASLError(f"bad base64 in SCRAM {what}") from None


#: The secret the fake salts of this process are derived from (see
#: :attr:`ScramSHA256.fakeSaltSecret`).
_PROCESS_SECRET = os.urandom(32)


class ScramSHA256(Mechanism):
    """
    SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding.

    :cvar iterations: the iteration count sent when no stored keys give
        one (a password checker, or a user the key store does not know);
        keep it equal to the count the key store uses (``scramKeys``'
        default, 4096, unless yours differs).
    :cvar fakeSaltSecret: the secret the salt of such an exchange is
        derived from, with the user name; ``None`` (the default) uses a
        random secret made when the process starts.  A server whose key
        store outlives restarts may set a stable secret of its own, so
        that an unknown user's salt does not change at a restart when a
        known user's does not.
    """

    name = "SCRAM-SHA-256"
    iterations = 4096
    fakeSaltSecret: bytes | None = None

    def __init__(self, hostname: str = "localhost") -> None:
        super().__init__(hostname)
        self._step = 0
        self._gs2Header = ""
        self._clientFirstBare = ""
        self._clientNonce = ""
        self._nonce = ""
        self._serverFirst = ""
        self._salt = b""
        self._iterations = 0
        self._stored = False
        self.username = ""
        self._credentials: _ScramProof | None = None

    def start(self, initial: bytes | None) -> Challenge | NeedKeys:
        if initial is None or initial == b"":
            self._step = 0
            return Challenge(b"")
        return self._clientFirst(initial)

    def respond(self, response: bytes) -> Challenge | Credentials | NeedKeys:
        if self._step == 0:
            return self._clientFirst(response)
        if self._step == 2:
            return self._clientFinal(response)
        raise SASLError("unexpected SCRAM message")

    def _clientFirst(self, data: bytes) -> NeedKeys:
        text = _utf8(data, "client-first-message")
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise SASLError("malformed SCRAM client-first-message")
        cbind, authzid, bare = parts
        if cbind not in ("n", "y"):
            # "p=..." asks for channel binding, which this server does not offer.
            raise SASLError("SCRAM channel binding is not supported here")
        if authzid and not authzid.startswith("a="):
            raise SASLError("malformed SCRAM authorization identity")
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise SASLError("SCRAM mandatory extensions are not supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise SASLError("SCRAM client-first-message needs n= and r=")
        username = saslprep(_scramName(attrs[0][2:]))
        nonce = attrs[1][2:]
        if not username or not nonce or "," in nonce:
            raise SASLError("SCRAM user name and nonce must not be empty")
        if authzid and _scramName(authzid[2:]) != username:
            raise SASLError("SCRAM authorization identity must equal the user name")
        self._gs2Header = f"{cbind},{authzid},"
        self._clientFirstBare = bare
        self._clientNonce = nonce
        self.username = username
        self._step = 1
        return NeedKeys(username)

    def keysFound(self, salt: bytes, iterations: int) -> Challenge:
        """Continue with the salt and iteration count the key store holds."""
        self._stored = True
        self._salt = salt
        self._iterations = iterations
        return self._serverFirstMessage()

    def useRandomSalt(self) -> Challenge:
        """
        Continue without stored keys (plaintext-password checkers, or a user
        the key store does not know), with :meth:`fakeSalt` and
        :attr:`iterations`.

        The salt is not random, despite the name (kept for callers): were it
        fresh on each attempt, an unknown user would stand out against a
        known one, whose stored salt never changes: probing twice would
        tell who has an account.
        """
        self._stored = False
        self._salt = self.fakeSalt(self.username)
        self._iterations = self.iterations
        return self._serverFirstMessage()

    def fakeSalt(self, username: str) -> bytes:
        """
        A 16-octet salt for ``username`` (as long as :func:`scramKeys`'):
        HMAC-SHA-256 of the user name keyed with :attr:`fakeSaltSecret`,
        the same for the same user as long as the secret stays.
        """
        secret = self.fakeSaltSecret if self.fakeSaltSecret is not None else _PROCESS_SECRET
        return _hmac(secret, username.encode("utf-8"))[:16]

    def _serverFirstMessage(self) -> Challenge:
        if self._step != 1:
            raise SASLError("unexpected SCRAM state")
        self._nonce = self._clientNonce + base64.b64encode(os.urandom(18)).decode("ascii")
        salt = base64.b64encode(self._salt).decode("ascii")
        self._serverFirst = f"r={self._nonce},s={salt},i={self._iterations}"
        self._step = 2
        return Challenge(self._serverFirst.encode("ascii"))

    def _clientFinal(self, data: bytes) -> Credentials:
        text = _utf8(data, "client-final-message")
        withoutProof, sep, proof = text.rpartition(",p=")
        if not sep:
            raise SASLError("SCRAM client-final-message has no proof")
        attrs = withoutProof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise SASLError("SCRAM client-final-message needs c= and r=")
        if _b64(attrs[0][2:], "channel binding") != self._gs2Header.encode("utf-8"):
            raise SASLError("SCRAM channel binding data does not match")
        if attrs[1][2:] != self._nonce:
            raise SASLError("SCRAM nonce does not match")
        authMessage = f"{self._clientFirstBare},{self._serverFirst},{withoutProof}".encode()
        # Credentials go to the checker that matches where the salt came
        # from: the key store, or a password checker.
        kind = ScramCredentials if self._stored else ScramPasswordCredentials
        self._credentials = kind(
            self.username.encode("utf-8"), self._salt, self._iterations, authMessage, _b64(proof, "proof")
        )
        self._step = 3
        return Credentials(self._credentials, final=None)

    def serverFinal(self) -> bytes:
        """The server-final-message, once a checker accepted the credentials."""
        creds = self._credentials
        if creds is None or creds.serverSignature is None:
            raise SASLError("SCRAM exchange not verified")
        return b"v=" + base64.b64encode(creds.serverSignature)


# -- the registry (txsmtp._saslregistry; public here) --------------------------

registerMechanism("SCRAM-SHA-256", ScramSHA256, (IUsernamePassword, IScramCredentials))
registerMechanism("CRAM-MD5", CramMD5, (IUsernameHashedPassword,))
registerMechanism("PLAIN", Plain, (IUsernamePassword,))
registerMechanism("LOGIN", Login, (IUsernamePassword,))
