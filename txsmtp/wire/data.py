"""
Message body transparency: DATA decoding (server) and encoding (client).

Theory of operation
===================

RFC 5321 §4.5.2: the sender doubles a dot at the start of every line, and
ends the message with a line holding a single dot, so the receiver sees
``CRLF . CRLF``.  §4.1.1.4: ``<LF>.<LF>`` and the other near misses must
never end the data; accepting them is the "SMTP smuggling" attack (Postfix
CVE-2023-51764, aiosmtpd CVE-2024-27305 and many others).

:class:`DataDecoder` works on whatever chunks TCP delivers and never makes
one Python call per line.  It pretends the stream starts with the CRLF that
ended the ``DATA`` command, so the first line is not a special case, and it
keeps a *tail* of at most four octets: the longest suffix of what it has
seen that could still grow into ``CRLF . CRLF``.  For each chunk:

1. ``buf = tail + chunk``; look for ``CRLF . CRLF`` with one ``find``.
2. Everything before the terminator (or before the new tail) is a
   *segment*.  A segment never ends in the middle of a CRLF pair and never
   splits a ``CRLF .`` sequence, because both are prefixes of the
   terminator and so stay in the tail.  Counting CR, LF and CRLF in the
   segment therefore tells exactly whether it holds a bare CR or LF.
3. Unstuffing is one ``replace(CRLF ".", CRLF)`` on the segment.

Bare line ends are refused by default (the caller answers 550 after the
final dot) or, when asked, normalised to CRLF; either way they never reach a
delivery as they came, and they never end the data.  Long lines are passed
through untouched: line length never changes the decoder's state (the
twisted.mail.smtp bug).

:class:`DataEncoder` is the reverse for clients: it normalises line ends to
CRLF and stuffs dots per *line*, carrying its state across chunks, so a dot
at a chunk boundary is stuffed like any other.
"""

from __future__ import annotations

__all__ = ["ChunkDecoder", "DataDecoder", "DataEncoder", "REJECT", "NORMALIZE"]

#: Bare CR or LF in a body makes the message refused.
REJECT = "reject"
#: Bare CR or LF in a body is turned into CRLF.
NORMALIZE = "normalize"

_TERMINATOR = b"\r\n.\r\n"
# Proper prefixes of the terminator, longest first, that may end a buffer.
_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")


def _normalize(segment: bytes) -> bytes:
    """Turn every bare CR and bare LF into CRLF."""
    return segment.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class DataDecoder:
    """
    Incremental decoder for the text following a ``354`` reply.

    :param bareLineEnds: :data:`REJECT` (record the fact in
        :attr:`bareLineEnd` and pass the segment on unchanged; the caller must
        refuse the message) or :data:`NORMALIZE` (rewrite them as CRLF).

    After each :meth:`feed`, :attr:`done` tells whether the terminator was
    seen; :attr:`rest` then holds the bytes that followed it (pipelined
    commands).  :attr:`size` counts the decoded octets.
    """

    __slots__ = ("bareLineEnds", "done", "rest", "size", "bareLineEnd", "_tail", "_skip", "_afterBareLF")

    def __init__(self, bareLineEnds: str = REJECT) -> None:
        if bareLineEnds not in (REJECT, NORMALIZE):
            raise ValueError(f"bareLineEnds must be {REJECT!r} or {NORMALIZE!r}")
        self.bareLineEnds = bareLineEnds
        self.done = False
        self.rest = b""
        self.size = 0
        self.bareLineEnd = False
        # The CRLF that ended the DATA command line: makes a leading "." or
        # ".CRLF" behave like any other line start.  It is not output.
        self._tail = b"\r\n"
        self._skip = 2
        self._afterBareLF = False

    def feed(self, data: bytes) -> bytes:
        """
        Decode ``data`` and return the body octets it completes (possibly
        empty).  Must not be called once :attr:`done` is true.
        """
        if self.done:
            raise RuntimeError("the end of data has already been seen")
        tail = self._tail
        buf = tail + data if tail else data
        # One search serves both the terminator and unstuffing: both start
        # with CRLF ".".  A buffer without any dot (memchr) skips it.
        dot = buf.find(b"\r\n.") if b"." in buf else -1
        end = buf.find(_TERMINATOR, dot) if dot >= 0 else -1
        if end >= 0:
            segment = buf[: end + 2]
            self.rest = buf[end + 5 :]
            self._tail = b""
            self.done = True
        else:
            for prefix in _PREFIXES:
                if buf.endswith(prefix):
                    self._tail = prefix
                    segment = buf[: -len(prefix)]
                    break
            else:
                self._tail = b""
                segment = buf
        if not segment:
            return b""
        if self._afterBareLF and segment[:1] == b".":
            # Normalising: the previous segment ended with a bare LF, now a
            # line end, so this dot starts a line and is a stuffed one.
            segment = segment[1:]
        self._afterBareLF = False
        # Every CR must be followed by LF and every LF preceded by CR.  The
        # single-octet counts go through memchr-speed deletions; only the
        # pair count needs a two-octet search.
        size = len(segment)
        crlf = segment.count(b"\r\n")
        if crlf != size - len(segment.replace(b"\r", b"")) or crlf != size - len(segment.replace(b"\n", b"")):
            if self.bareLineEnds == NORMALIZE:
                # A CRLF is never at the end of a segment (it stays in the
                # tail), so a final LF here is a bare one.
                self._afterBareLF = segment.endswith(b"\n")
                segment = _normalize(segment)
                dot = 0
            else:
                self.bareLineEnd = True
        if dot >= 0 and b"\r\n." in segment:
            segment = segment.replace(b"\r\n.", b"\r\n")
        if self._skip:
            # Drop the pretend CRLF; it may be split over two segments.
            skip = min(self._skip, len(segment))
            segment = segment[skip:]
            self._skip -= skip
        self.size += len(segment)
        return segment


class ChunkDecoder:
    """
    Incremental checker for the octets of BDAT chunks (RFC 3030).

    BDAT has no dot-stuffing and no terminator: the octets are the message.
    What stays is the bare CR/LF policy of DATA (RFC 5321 §2.3.8, the
    smuggling defence): :data:`REJECT` records a bare line end in
    :attr:`bareLineEnd`, :data:`NORMALIZE` rewrites it as CRLF.  With
    ``binary=True`` (``BODY=BINARYMIME``) octets pass untouched, since a
    binary body has no lines.

    A CRLF pair may straddle chunks (and BDAT commands), so a CR at the end
    of a feed waits for the next one; :meth:`finish` settles it at the end
    of the message.  :attr:`size` counts the octets returned.
    """

    __slots__ = ("bareLineEnds", "binary", "bareLineEnd", "size", "_pendingCR")

    def __init__(self, bareLineEnds: str = REJECT, binary: bool = False) -> None:
        if bareLineEnds not in (REJECT, NORMALIZE):
            raise ValueError(f"bareLineEnds must be {REJECT!r} or {NORMALIZE!r}")
        self.bareLineEnds = bareLineEnds
        self.binary = binary
        self.bareLineEnd = False
        self.size = 0
        self._pendingCR = False

    def feed(self, data: bytes) -> bytes:
        """Check ``data`` and return the octets to store (possibly fewer, or more)."""
        if self.binary:
            self.size += len(data)
            return data
        if self._pendingCR:
            data = b"\r" + data
            self._pendingCR = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._pendingCR = True
        size = len(data)
        crlf = data.count(b"\r\n")
        if crlf != size - len(data.replace(b"\r", b"")) or crlf != size - len(data.replace(b"\n", b"")):
            if self.bareLineEnds == NORMALIZE:
                data = _normalize(data)
            else:
                self.bareLineEnd = True
        self.size += len(data)
        return data

    def finish(self) -> bytes:
        """The octets still held back at the end of the message (a final lone CR)."""
        if not self._pendingCR:
            return b""
        self._pendingCR = False
        if self.bareLineEnds == NORMALIZE:
            self.size += 2
            return b"\r\n"
        self.bareLineEnd = True
        self.size += 1
        return b"\r"


class DataEncoder:
    """
    Incremental encoder for a message body sent after ``354``.

    Line ends are normalised to CRLF (a bare CR or LF becomes CRLF), a dot
    that starts a line is doubled, a missing final CRLF is added, and
    :meth:`finish` returns the terminator.

    The state (are we at the start of a line? did the last chunk end in CR?)
    is carried from one chunk to the next, so a dot that starts a line is
    stuffed wherever the chunk boundaries fall.

    :param dotStuffing: ``False`` for BDAT (RFC 3030), which sends octets as
        they are: line ends are still normalised and a final CRLF still
        added, but no dot is doubled and :meth:`finish` returns no ``.CRLF``.
    """

    __slots__ = ("_atLineStart", "_pendingCR", "_stuff")

    def __init__(self, dotStuffing: bool = True) -> None:
        self._atLineStart = True
        self._pendingCR = False
        self._stuff = dotStuffing

    def encode(self, chunk: bytes) -> bytes:
        """Return the wire form of the next piece of the message."""
        if self._pendingCR:
            chunk = b"\r" + chunk
            self._pendingCR = False
        if chunk.endswith(b"\r"):
            # Its LF (if any) is in the next chunk.
            chunk = chunk[:-1]
            self._pendingCR = True
        if not chunk:
            return b""
        if b"\r" in chunk or b"\n" in chunk:
            crlf = chunk.count(b"\r\n")
            if crlf != chunk.count(b"\r") or crlf != chunk.count(b"\n"):
                chunk = _normalize(chunk)
            if self._stuff and b"\r\n." in chunk:
                chunk = chunk.replace(b"\r\n.", b"\r\n..")
        if self._atLineStart and self._stuff and chunk[:1] == b".":
            chunk = b"." + chunk
        self._atLineStart = chunk.endswith(b"\r\n")
        return chunk

    def finish(self) -> bytes:
        """
        Return the bytes that end the message: a final CRLF if needed, then
        ``.CRLF`` (only the CRLF when not dot-stuffing).
        """
        out = b""
        if self._pendingCR:
            self._pendingCR = False
            out = b"\r\n"
        elif not self._atLineStart:
            out = b"\r\n"
        self._atLineStart = True
        return out + b".\r\n" if self._stuff else out
