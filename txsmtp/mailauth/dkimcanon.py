"""
The canonicalization of DKIM (RFC 6376 §3.4), shared by the signer
(:mod:`txsmtp.dkimsign`) and the verifier (:mod:`txsmtp.mailauth.dkimverify`).

A message reaches both as it streams, in chunks cut anywhere:

- :class:`HeaderReader` keeps the header section, up to a bound, and hands
  back what follows the empty line that ends it;
- :func:`splitFields` cuts the section into fields, :func:`selectFields`
  picks the fields an ``h=`` list names (bottom up, RFC 6376 §5.4.2) and
  :func:`canonHeader` canonicalizes each ("simple" or "relaxed",
  §3.4.1-3.4.2);
- :class:`BodyHasher` hashes the canonical body line by line as it comes,
  never keeping more than the end of an unfinished line, dropping the
  empty lines at the end (§3.4.3-3.4.4), and stops at a length (``l=``,
  §3.5) when given one.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "BodyHasher",
    "CANONICALIZATIONS",
    "HeaderReader",
    "HeaderSectionTooLong",
    "canonHeader",
    "fieldName",
    "parseCanonicalization",
    "relaxedHeader",
    "selectFields",
    "splitFields",
]

#: The canonicalization algorithms of RFC 6376 §3.4.
CANONICALIZATIONS: tuple[str, ...] = ("simple", "relaxed")

_WSP_RUN = re.compile(rb"[ \t]+")
_CRLF = b"\r\n"
# Above this size an unfinished body line is hashed in part
# (BodyHasher._hashLinePart), so that one long line takes no memory.
_CARRY_LIMIT = 8192
# Empty lines deferred are hashed this many at a time.
_EMPTY_BLOCK = 4096


class HeaderSectionTooLong(ValueError):
    """
    The header section is longer than the bound of a :class:`HeaderReader`.

    :ivar partial: the first bytes of the section, at most the bound
        (the complete fields among them may still be read).
    """

    def __init__(self, message: str, partial: bytes) -> None:
        super().__init__(message)
        self.partial = partial


def parseCanonicalization(value: str) -> tuple[str, str]:
    """
    Read a ``c=`` value: ``"header/body"``, each ``simple`` or ``relaxed``;
    one name alone means ``name/simple``, and an empty value
    ``simple/simple`` (RFC 6376 §3.5).

    :raise ValueError: for an unknown algorithm.
    """
    header, _, body = value.strip().partition("/")
    header = header.strip().lower() or "simple"
    body = body.strip().lower() or "simple"
    if header not in CANONICALIZATIONS or body not in CANONICALIZATIONS:
        raise ValueError(f"unknown canonicalization {value!r}")
    return header, body


def relaxedHeader(field: bytes) -> bytes:
    """
    Canonicalize one header field (without its final CRLF) by the
    "relaxed" algorithm of RFC 6376 §3.4.2, returning it with a CRLF:
    name in lower case, unfolded, runs of WSP made one space, WSP removed
    at the end of the value and around the colon.
    """
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(_CRLF, b"")).strip(b" \t")
    return name.rstrip(b" \t").lower() + b":" + value + _CRLF


def canonHeader(field: bytes, canonicalization: str) -> bytes:
    """
    One header field (without its final CRLF, with its folding) in the
    canonical form ``canonicalization`` (``"simple"``: unchanged, §3.4.1;
    ``"relaxed"``: :func:`relaxedHeader`), with a final CRLF.
    """
    if canonicalization == "relaxed":
        return relaxedHeader(field)
    return field + _CRLF


def splitFields(block: bytes) -> list[bytes]:
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


def fieldName(field: bytes) -> str:
    """The name of a header field, in lower case, without WSP before the colon."""
    return field.partition(b":")[0].rstrip(b" \t").decode("latin-1").lower()


def selectFields(fields: Sequence[bytes], names: Iterable[str]) -> list[bytes]:
    """
    The fields ``names`` (an ``h=`` list) signs, in its order.

    RFC 6376 §5.4.2: each occurrence of a name takes the last instance of
    that field not taken yet, going up from the bottom of the header; a
    name with no instance left signs nothing (the "nonexistent" fields a
    signer names to forbid adding them, §5.4).
    """
    byName: dict[str, list[bytes]] = {}
    for field in fields:
        byName.setdefault(fieldName(field), []).append(field)
    selected: list[bytes] = []
    for name in names:
        instances = byName.get(name.strip().lower())
        if instances:
            selected.append(instances.pop())
    return selected


class HeaderReader:
    """
    Keep the header section of a message fed in chunks, up to ``maxBytes``.

    :meth:`feed` returns ``None`` while the section goes on, then, once,
    what follows the empty line that ends it (the start of the body);
    :attr:`block` is then the section without its last CRLF.
    """

    def __init__(self, maxBytes: int = 65536) -> None:
        self.maxBytes = maxBytes
        self._head: bytearray | None = bytearray()
        #: The header section, without the CRLF of its last line.
        self.block = b""

    @property
    def done(self) -> bool:
        """Whether the header section has ended."""
        return self._head is None

    def _tooLong(self, head: bytes | bytearray) -> HeaderSectionTooLong:
        self._head = None
        return HeaderSectionTooLong(
            f"the header section is longer than {self.maxBytes} bytes", bytes(head[: self.maxBytes])
        )

    def feed(self, data: bytes) -> bytes | None:
        """
        Take the next chunk of the message, until the header section ends.

        :return: ``None`` if the section has not ended yet, else the bytes
            of ``data`` after the empty line.
        :raise HeaderSectionTooLong: when the section passes the bound;
            nothing is kept then.
        """
        head = self._head
        if head is None:
            raise ValueError("the header section has already ended")
        searchFrom = max(0, len(head) - 3)
        head += data
        if head.startswith(_CRLF):
            end, skip = 0, 2  # no header fields at all
        else:
            end = head.find(b"\r\n\r\n", searchFrom)
            skip = 4
        if end < 0:
            if len(head) > self.maxBytes:
                raise self._tooLong(head)
            return None
        if end > self.maxBytes:
            raise self._tooLong(head)
        self.block = bytes(head[:end])
        rest = bytes(head[end + skip :])
        self._head = None
        return rest

    def finish(self) -> None:
        """
        The message ended: if no empty line came, all of it was header
        fields (and the body is empty).

        :raise HeaderSectionTooLong: when the section passes the bound.
        """
        head = self._head
        if head is None:
            return
        if len(head) > self.maxBytes:
            raise self._tooLong(head)
        block = bytes(head)
        self.block = block[:-2] if block.endswith(_CRLF) else block
        self._head = None


class BodyHasher:
    """
    Hash the canonical form of a body fed in chunks cut anywhere.

    :param canonicalization: ``"simple"`` or ``"relaxed"`` (the body part
        of ``c=``).
    :param hashname: a :mod:`hashlib` name (``"sha256"``).
    :param limit: hash only the first ``limit`` bytes of the canonical body
        (``l=``, RFC 6376 §3.5); past them the rest is not even read.

    The lines are hashed as they complete.  Empty lines are counted, not
    hashed, until a non-empty line follows (they are dropped at the end of
    the body, §3.4.3-3.4.4); the end of an unfinished line is kept, and
    hashed in part when it passes a few KiB.
    """

    def __init__(self, canonicalization: str, hashname: str = "sha256", limit: int | None = None) -> None:
        if canonicalization not in CANONICALIZATIONS:
            raise ValueError(f"unknown canonicalization {canonicalization!r}")
        self._relaxed = canonicalization == "relaxed"
        self._hash = hashlib.new(hashname)
        self._limit = limit
        #: The bytes of canonical body hashed so far (at most ``limit``).
        self.length = 0
        # The end of the current line not hashed yet, whether part of that
        # line was hashed, the empty lines seen but not hashed, and whether
        # any canonical body was produced.
        self.carry = b""
        self._lineStarted = False
        self._emptyLines = 0
        self._bodyStarted = False
        self._digest: bytes | None = None

    @property
    def full(self) -> bool:
        """Whether ``limit`` bytes were hashed (the rest is ignored)."""
        return self._limit is not None and self.length >= self._limit

    def _emit(self, data: bytes) -> None:
        """Hash canonical body bytes, up to the limit."""
        if self._limit is not None:
            data = data[: self._limit - self.length]
        self._hash.update(data)
        self.length += len(data)

    def update(self, data: bytes) -> None:
        """
        Hash the complete lines of ``data`` (after what is carried over from
        the previous chunk), keeping the unfinished last line.
        """
        if self._digest is not None:
            raise ValueError("the body was already finished")
        if self.full:
            return
        lines = (self.carry + data).split(_CRLF)
        carry = lines.pop()
        for line in lines:
            self._line(line)
            if self.full:
                self.carry = b""
                return
        if len(carry) > _CARRY_LIMIT:
            carry = self._hashLinePart(carry)
        self.carry = carry

    def _canonLine(self, line: bytes) -> bytes:
        """
        One body line (without CRLF) canonicalized: unchanged for "simple";
        for "relaxed", runs of WSP made one space and WSP at the end
        removed (RFC 6376 §3.4.4).
        """
        if self._relaxed:
            return _WSP_RUN.sub(b" ", line).rstrip(b" ")
        return line

    def _line(self, line: bytes) -> None:
        """
        Hash one complete body line, deferring empty lines: they count
        only when a non-empty line follows (RFC 6376 §3.4.3, §3.4.4).
        """
        canon = self._canonLine(line)
        if not canon and not self._lineStarted:
            self._emptyLines += 1
            return
        self._flushEmptyLines()
        self._emit(canon + _CRLF)
        self._lineStarted = False

    def _flushEmptyLines(self) -> None:
        """
        Hash the empty lines deferred so far (a non-empty line follows), a
        block at a time, so that a long run of them takes no memory.
        """
        while self._emptyLines and not self.full:
            count = min(self._emptyLines, _EMPTY_BLOCK)
            self._emit(_CRLF * count)
            self._emptyLines -= count
        self._emptyLines = 0
        self._bodyStarted = True

    def _hashLinePart(self, part: bytes) -> bytes:
        """
        Hash the beginning of a long unfinished line, returning what must
        still be kept: a final CR (it may start the line's CRLF) and, for
        "relaxed", the WSP run before it (it may end the line, or continue
        in the next part).  What is hashed then ends with a byte no later
        byte can change the canonical form of.
        """
        keep = 1 if part.endswith(b"\r") else 0
        if self._relaxed:
            part = _WSP_RUN.sub(b" ", part)
            body = part[: len(part) - keep]
            cut = len(body.rstrip(b" \t"))
        else:
            cut = len(part) - keep
        if cut:
            self._flushEmptyLines()
            self._emit(self._canonLine(part[:cut]))
            self._lineStarted = True
        return part[cut:]

    def digest(self) -> bytes:
        """
        Finish the body and return its hash (the same on later calls).

        What follows the last CRLF, if anything, is hashed with a CRLF
        added (§3.4.3, §3.4.4); it is not a line, so "relaxed" reduces its
        runs of WSP but keeps WSP at its end (``"a  "`` becomes
        ``"a \\r\\n"``, as dkimpy reads it).  "simple" makes an empty body
        one CRLF; "relaxed" leaves it empty.
        """
        if self._digest is not None:
            return self._digest
        if not self.full:
            if self.carry or self._lineStarted:
                tail = self.carry
                if self._relaxed:
                    tail = _WSP_RUN.sub(b" ", tail)
                self._flushEmptyLines()
                self._emit(tail + _CRLF)
                self.carry = b""
            if not self._bodyStarted and not self._relaxed:
                self._emit(_CRLF)
        self._digest = self._hash.digest()
        return self._digest
