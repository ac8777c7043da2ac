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
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

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

_CANONICALIZATIONS = ("simple", "relaxed")
_WSP_RUN = re.compile(rb"[ \t]+")
_CRLF = b"\r\n"
# Above this size an unfinished body line is hashed in part (see _feedBody).
_CARRY_LIMIT = 8192
_MAX_LINE = 78


class DKIMSignError(Exception):
    """
    The message cannot be signed (for instance, it has no ``From`` field).
    """


class HeadersTooLong(DKIMSignError):
    """
    The header section of the message is longer than the signer's bound.
    """


def _relaxedHeader(field: bytes) -> bytes:
    """
    Canonicalize one header field (without its final CRLF) by the
    "relaxed" algorithm of RFC 6376 §3.4.2, returning it with a CRLF.
    """
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(_CRLF, b"")).strip(b" \t")
    return name.rstrip(b" \t").lower() + b":" + value + _CRLF


def _splitFields(block: bytes) -> list[bytes]:
    """
    Split a header section into its fields, each with its folding CRLFs but
    without its final CRLF (RFC 5322 §2.2.3: a line starting with WSP
    continues the field before it).
    """
    fields: list[bytes] = []
    for line in block.split(_CRLF):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += _CRLF + line
        elif line:
            fields.append(line)
    return fields


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
        or Ed25519.
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
        privateKey: bytes,
        headers: Sequence[str] = DEFAULT_HEADERS,
        canonicalization: str = "relaxed/relaxed",
        timestamp: int | None = None,
        maxHeaderBytes: int = 65536,
    ) -> None:
        headerCanon, _, bodyCanon = canonicalization.partition("/")
        bodyCanon = bodyCanon or "simple"
        if headerCanon not in _CANONICALIZATIONS or bodyCanon not in _CANONICALIZATIONS:
            raise ValueError(f"unknown canonicalization {canonicalization!r}")
        key = serialization.load_pem_private_key(privateKey, password=None)
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
        self._relaxedBody = bodyCanon == "relaxed"
        self._canonicalization = f"{headerCanon}/{bodyCanon}"
        self._timestamp = timestamp
        self._maxHeaderBytes = maxHeaderBytes
        # The header section while it is read; None once the body started.
        self._head: bytearray | None = bytearray()
        self._headerBlock = b""
        # The body (RFC 6376 §3.4.3, §3.4.4): the end of the current line
        # not yet hashed, whether part of it was hashed, and the empty
        # lines seen but not hashed (they are dropped at the end).
        self._bodyHash = hashlib.sha256()
        self._carry = b""
        self._lineStarted = False
        self._emptyLines = 0
        self._bodyHashed = False
        self._bodyDigest: bytes | None = None
        self._signature: bytes | None = None

    def feed(self, data: bytes) -> None:
        """
        Take the next part of the message; parts may be cut anywhere.

        :raise HeadersTooLong: when the header section passes the bound.
        :raise DKIMSignError: after :meth:`signature`.
        """
        if self._signature is not None:
            raise DKIMSignError("the message was already signed")
        if self._head is None:
            self._feedBody(data)
            return
        head = self._head
        searchFrom = max(0, len(head) - 3)
        head += data
        if head.startswith(_CRLF):
            end, skip = 0, 2  # no header fields at all
        else:
            end = head.find(b"\r\n\r\n", searchFrom)
            skip = 4
        if end < 0:
            if len(head) > self._maxHeaderBytes:
                raise HeadersTooLong(
                    f"the header section is longer than {self._maxHeaderBytes} bytes"
                )
            return
        if end > self._maxHeaderBytes:
            raise HeadersTooLong(
                f"the header section is longer than {self._maxHeaderBytes} bytes"
            )
        self._headerBlock = bytes(head[:end])
        rest = bytes(head[end + skip:])
        self._head = None
        self._feedBody(rest)

    def _feedBody(self, data: bytes) -> None:
        """
        Hash the complete body lines of ``data`` (after what is carried over
        from the previous part), keeping the unfinished last line.
        """
        lines = (self._carry + data).split(_CRLF)
        carry = lines.pop()
        for line in lines:
            self._bodyLine(line)
        if len(carry) > _CARRY_LIMIT:
            carry = self._hashLinePart(carry)
        self._carry = carry

    def _canonLine(self, line: bytes) -> bytes:
        """
        One body line (without CRLF) canonicalized: unchanged for "simple";
        for "relaxed", runs of WSP made one space and WSP at the end removed
        (RFC 6376 §3.4.4).
        """
        if self._relaxedBody:
            return _WSP_RUN.sub(b" ", line).rstrip(b" ")
        return line

    def _bodyLine(self, line: bytes) -> None:
        """
        Hash one complete body line, deferring empty lines: they count only
        when a non-empty line follows (RFC 6376 §3.4.3, §3.4.4).
        """
        canon = self._canonLine(line)
        if not canon and not self._lineStarted:
            self._emptyLines += 1
            return
        self._flushEmptyLines()
        self._bodyHash.update(canon + _CRLF)
        self._lineStarted = False

    def _flushEmptyLines(self) -> None:
        """
        Hash the empty lines deferred so far (a non-empty line follows), a
        block at a time, so that a long run of them takes no memory.
        """
        while self._emptyLines:
            count = min(self._emptyLines, 4096)
            self._bodyHash.update(_CRLF * count)
            self._emptyLines -= count
        self._bodyHashed = True

    def _hashLinePart(self, part: bytes) -> bytes:
        """
        Hash the beginning of a long unfinished line, returning what must
        still be kept: a final CR (it may start the line's CRLF) and, for
        "relaxed", the WSP run before it (it may end the line, or continue
        in the next part).  What is hashed then ends with a byte no later
        byte can change the canonical form of.
        """
        keep = 1 if part.endswith(b"\r") else 0
        if self._relaxedBody:
            part = _WSP_RUN.sub(b" ", part)
            body = part[: len(part) - keep]
            cut = len(body.rstrip(b" \t"))
        else:
            cut = len(part) - keep
        if cut:
            self._flushEmptyLines()
            self._bodyHash.update(self._canonLine(part[:cut]))
            self._lineStarted = True
        return part[cut:]

    def _finishBody(self) -> bytes:
        """
        Hash what follows the last CRLF, if anything, and return the body
        hash.  "simple" makes an empty body one CRLF; "relaxed" leaves it
        empty (RFC 6376 §3.4.3, §3.4.4).

        A body not ending with CRLF gets one (§3.4.3, §3.4.4).  What follows
        the last CRLF is not a line, so "relaxed" reduces its runs of WSP
        but keeps WSP at its end: ``"a  "`` becomes ``"a \\r\\n"``, as
        dkimpy reads it.  (OpenDKIM 2.11 disagrees with both on some bodies
        not ending with CRLF, even ``"a\\r\\n\\r\\nb"``.)  A message received
        by SMTP always ends with CRLF, so this matters little.
        """
        if self._bodyDigest is not None:
            return self._bodyDigest
        if self._head is not None:
            # No empty line: all header fields, no body.
            block = bytes(self._head)
            if len(block) > self._maxHeaderBytes:
                raise HeadersTooLong(
                    f"the header section is longer than {self._maxHeaderBytes} bytes"
                )
            self._headerBlock = block[:-2] if block.endswith(_CRLF) else block
            self._head = None
        if self._carry or self._lineStarted:
            tail = self._carry
            if self._relaxedBody:
                tail = _WSP_RUN.sub(b" ", tail)
            self._flushEmptyLines()
            self._bodyHash.update(tail + _CRLF)
            self._carry = b""
        if not self._bodyHashed and not self._relaxedBody:
            self._bodyHash.update(_CRLF)
        self._bodyDigest = self._bodyHash.digest()
        return self._bodyDigest

    def _canonHeader(self, field: bytes) -> bytes:
        if self._headerCanon == "relaxed":
            return _relaxedHeader(field)
        return field + _CRLF

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
        fields = _splitFields(self._headerBlock)
        byName: dict[str, list[bytes]] = {}
        for field in fields:
            name = field.partition(b":")[0].rstrip(b" \t").decode("latin-1").lower()
            byName.setdefault(name, []).append(field)
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
