"""
Bounded CRLF line splitting for the command phase.

RFC 5321 §2.3.8: only the sequence CR LF ends a line.  A bare CR or a bare LF
is just another octet as far as line splitting goes; the command layer then
refuses a line that contains one.  RFC 5321 §4.5.3.1.4: a command line is at
most 512 octets including the CRLF (AUTH raises the bound to 12288, RFC 4954
§4).  A longer line is consumed up to its CRLF without being buffered and is
reported once as :data:`TOO_LONG`, so the session stays in step with the
client.
"""

from __future__ import annotations

__all__ = ["LineReader", "TOO_LONG"]


class _TooLong:
    """Marker returned by :meth:`LineReader.readLine` for an over-long line."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"

    def __bool__(self) -> bool:
        return True


#: Returned by :meth:`LineReader.readLine` in place of a line longer than the
#: limit; the offending octets have already been discarded.
TOO_LONG = _TooLong()


class LineReader:
    """
    Split a byte stream into CRLF-terminated lines, holding at most
    ``maxLength`` octets of any one line.

    Feed it bytes with :meth:`feed`, then call :meth:`readLine` until it
    returns ``None``.  :meth:`takeRest` hands over the unread bytes (for
    example when the protocol switches to reading a message body).

    :param maxLength: the longest acceptable line, counting the CRLF.
    """

    __slots__ = ("maxLength", "_buf", "_pos", "_discarding")

    def __init__(self, maxLength: int = 512) -> None:
        if maxLength < 3:
            raise ValueError("maxLength must allow at least one octet and CRLF")
        self.maxLength = maxLength
        self._buf = b""
        self._pos = 0
        self._discarding = False

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        elif self._buf:
            self._buf += data
        else:
            self._buf = data

    def readLine(self) -> bytes | _TooLong | None:
        """
        Return the next complete line without its CRLF, :data:`TOO_LONG` for a
        line over the limit (once the whole of it has been consumed), or
        ``None`` when no complete line is buffered.
        """
        buf = self._buf
        pos = self._pos
        i = buf.find(b"\r\n", pos)
        if i < 0:
            if self._discarding or len(buf) - pos >= self.maxLength:
                # Drop what we hold of the over-long line, but keep a final CR:
                # its LF may be the first octet of the next read.
                self._discarding = True
                self._buf = b"\r" if buf.endswith(b"\r") else b""
                self._pos = 0
            return None
        self._pos = i + 2
        if self._discarding:
            self._discarding = False
            return TOO_LONG
        if i + 2 - pos > self.maxLength:
            return TOO_LONG
        return buf[pos:i]

    def takeRest(self) -> bytes:
        """Return and forget every byte not yet returned as a line."""
        rest = self._buf[self._pos :]
        self._buf = b""
        self._pos = 0
        self._discarding = False
        return rest

    def pending(self) -> int:
        """The number of buffered octets not yet returned."""
        return len(self._buf) - self._pos

    @property
    def discarding(self) -> bool:
        """``True`` while the reader is skipping the rest of an over-long line."""
        return self._discarding
