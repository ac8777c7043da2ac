"""
DKIM signing (RFC 6376), with RSA-SHA256 and Ed25519-SHA256 (RFC 8463).

:class:`DKIMSigner` is pure: it does no I/O and reads no clock.  The
message is fed to it as it arrives, in chunks cut anywhere; the header
fields are kept (up to a bound) because they are signed, but the body is
only hashed, line by line, so a message is never held whole in memory.

.. code-block:: python

    from txsmtp.dkimsign import DKIMSigner

    signer = DKIMSigner("example.org", "mail", pemBytes, timestamp=now)
    for chunk in chunks:
        signer.feed(chunk)
    signed = signer.signature() + message

The key is loaded with the ``cryptography`` package and the signature made
by it (RSA PKCS#1 v1.5 with SHA-256, or Ed25519).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from txsmtp.mailauth.dkimcanon import (
    BodyHasher,
    HeaderReader,
    HeaderSectionTooLong,
    canonHeader,
    fieldName,
    parseCanonicalization,
    splitFields,
)

__all__ = [
    "DEFAULT_HEADERS",
    "DKIMSigner",
    "DKIMSignError",
    "HeadersTooLong",
]

#: The header fields signed by default: those RFC 6376 §5.4.1 recommends,
#: and the MIME fields and Message-ID.  Only those present are signed.
DEFAULT_HEADERS: tuple[str, ...] = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc",
    "Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
    "In-Reply-To", "References",
    "List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe",
    "List-Post", "List-Owner", "List-Archive",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Message-ID",
)

_CRLF = b"\r\n"
_MAX_LINE = 78


class DKIMSignError(Exception):
    """
    The message cannot be signed (for instance, it has no ``From`` field).
    """


class HeadersTooLong(DKIMSignError):
    """
    The header section of the message is longer than the signer's bound.
    """


def _fold(items: Sequence[tuple[bytes, bytes]], start: int) -> bytes:
    """
    Join ``items`` (pairs of separator and text) into one header value,
    breaking lines with CRLF and a space (folding white space, which every
    place of a break allows in a DKIM-Signature) before an item that would
    pass :data:`_MAX_LINE` columns.  ``start`` is the column of the first
    item.
    """
    out = bytearray()
    column = start
    for index, (sep, text) in enumerate(items):
        if index and column + len(sep) + len(text) > _MAX_LINE:
            out += b"\r\n "
            column = 1
        elif index:
            out += sep
            column += len(sep)
        out += text
        column += len(text)
    return bytes(out)


class DKIMSigner:
    """
    Sign one message: :meth:`feed` it the message as stored (header fields,
    an empty line, the body, with CRLF line endings), then ask for
    :meth:`signature`.

    :param domain: the signing domain (``d=``).
    :param selector: the selector (``s=``); the public key is published at
        ``<selector>._domainkey.<domain>``.
    :param privateKey: the private key in PEM (PKCS#8 or traditional), RSA
        or Ed25519, or the key already loaded by ``cryptography``.  Loading
        an RSA key checks it, which takes tens of milliseconds: a caller
        signing many messages loads it once and passes the key object.
    :param headers: the names of the header fields to sign, when present;
        ``From`` is always signed (RFC 6376 §5.4).
    :param canonicalization: ``"header/body"``, each ``relaxed`` or
        ``simple``; one name alone means ``name/simple`` (RFC 6376 §3.5).
    :param timestamp: the signature's ``t=`` (seconds since the epoch),
        from the caller's clock; ``None`` omits it.
    :param maxHeaderBytes: the bound on the header section kept.
    :raise ValueError: for an unknown canonicalization or a key that is
        neither RSA nor Ed25519.
    """

    def __init__(
        self,
        domain: str,
        selector: str,
        privateKey: bytes | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
        headers: Sequence[str] = DEFAULT_HEADERS,
        canonicalization: str = "relaxed/relaxed",
        timestamp: int | None = None,
        maxHeaderBytes: int = 65536,
    ) -> None:
        headerCanon, bodyCanon = parseCanonicalization(canonicalization)
        key = (
            serialization.load_pem_private_key(privateKey, password=None)
            if isinstance(privateKey, bytes)
            else privateKey
        )
        if isinstance(key, rsa.RSAPrivateKey):
            self._algorithm = "rsa-sha256"
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            self._algorithm = "ed25519-sha256"
        else:
            raise ValueError("a DKIM key is RSA or Ed25519")
        self._key = key
        self.domain = domain
        self.selector = selector
        names = list(dict.fromkeys(headers))
        if not any(name.lower() == "from" for name in names):
            names.insert(0, "From")
        self._headerNames = names
        self._headerCanon = headerCanon
        self._canonicalization = f"{headerCanon}/{bodyCanon}"
        self._timestamp = timestamp
        self._maxHeaderBytes = maxHeaderBytes
        # The header section is kept (bounded); the body only hashed.
        self._reader = HeaderReader(maxHeaderBytes)
        self._body = BodyHasher(bodyCanon, "sha256")
        self._signature: bytes | None = None

    @property
    def _carry(self) -> bytes:
        """The end of the body line not hashed yet (bounded)."""
        return self._body.carry

    def feed(self, data: bytes) -> None:
        """
        Take the next part of the message; parts may be cut anywhere.

        :raise HeadersTooLong: when the header section passes the bound.
        :raise DKIMSignError: after :meth:`signature`.
        """
        if self._signature is not None:
            raise DKIMSignError("the message was already signed")
        if self._reader.done:
            self._body.update(data)
            return
        try:
            rest = self._reader.feed(data)
        except HeaderSectionTooLong as e:
            raise HeadersTooLong(str(e)) from None
        if rest is not None:
            self._body.update(rest)

    def _finishBody(self) -> bytes:
        """
        Finish the message and return the body hash (see
        :meth:`txsmtp.mailauth.dkimcanon.BodyHasher.digest`).  A message
        with no empty line is all header fields, with an empty body.

        A body not ending with CRLF gets one (RFC 6376 §3.4.3, §3.4.4).
        (OpenDKIM 2.11 disagrees with dkimpy and this signer on some bodies
        not ending with CRLF, even ``"a\\r\\n\\r\\nb"``.)  A message
        received by SMTP always ends with CRLF, so this matters little.
        """
        try:
            self._reader.finish()
        except HeaderSectionTooLong as e:
            raise HeadersTooLong(str(e)) from None
        return self._body.digest()

    def _canonHeader(self, field: bytes) -> bytes:
        return canonHeader(field, self._headerCanon)

    def signature(self) -> bytes:
        """
        Finish the message and return its ``DKIM-Signature`` header field,
        folded, with its final CRLF, to be put before the message's other
        header fields.

        :raise DKIMSignError: when the message has no ``From`` field.
        :raise HeadersTooLong: when the header section passes the bound.
        """
        if self._signature is not None:
            return self._signature
        bodyHash = base64.b64encode(self._finishBody())
        fields = splitFields(self._reader.block)
        byName: dict[str, list[bytes]] = {}
        for field in fields:
            byName.setdefault(fieldName(field), []).append(field)
        if "from" not in byName:
            raise DKIMSignError("the message has no From header field")
        # RFC 6376 §5.4.2: a name is listed once per instance signed, and
        # the instances are taken from the bottom of the header up.
        signedNames: list[str] = []
        signed: list[bytes] = []
        for name in self._headerNames:
            instances = byName.get(name.lower(), [])
            signedNames.extend([name] * len(instances))
            signed.extend(reversed(instances))

        tags: list[tuple[bytes, bytes]] = [
            (b"", b"v=1;"),
            (b" ", b"a=" + self._algorithm.encode() + b";"),
            (b" ", b"c=" + self._canonicalization.encode() + b";"),
            (b" ", b"d=" + self.domain.encode("ascii") + b";"),
            (b" ", b"s=" + self.selector.encode("ascii") + b";"),
        ]
        if self._timestamp is not None:
            tags.append((b" ", b"t=%d;" % (self._timestamp,)))
        # A break after a colon of h= is folding white space (§3.5).
        hNames = [n.encode("ascii") + b":" for n in signedNames]
        hNames[0] = b"h=" + hNames[0]
        hNames[-1] = hNames[-1][:-1] + b";"
        tags.append((b" ", hNames[0]))
        tags.extend((b"", n) for n in hNames[1:])
        tags.append((b" ", b"bh=" + bodyHash + b";"))
        tags.append((b" ", b"b="))
        prefix = b"DKIM-Signature: "
        unsigned = prefix + _fold(tags, len(prefix))

        # RFC 6376 §3.7: the signed fields, then this field with an empty
        # b= and without its final CRLF.
        data = b"".join(self._canonHeader(field) for field in signed)
        data += self._canonHeader(unsigned)[:-2]
        if isinstance(self._key, rsa.RSAPrivateKey):
            raw = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
            assert isinstance(self._key, ed25519.Ed25519PrivateKey)
            raw = self._key.sign(hashlib.sha256(data).digest())
        b64 = base64.b64encode(raw)
        column = len(unsigned) - unsigned.rfind(b"\n") - 1
        pieces = [(b"", b64[:max(1, _MAX_LINE - column)])]
        rest = b64[len(pieces[0][1]):]
        pieces += [(b"", rest[i:i + _MAX_LINE - 1]) for i in range(0, len(rest), _MAX_LINE - 1)]
        self._signature = unsigned + _fold(pieces, column) + _CRLF
        return self._signature
