"""
SMTP replies: formatting (server side) and incremental parsing (client side).

RFC 5321 §4.2: a reply is one or more lines ``CODE-text`` ending with a
line ``CODE text``; §4.5.3.1.5 bounds a reply line at 512 octets.  RFC 2034
puts an enhanced status code (RFC 3463, ``class.subject.detail``) at the
start of the text of every line once ENHANCEDSTATUSCODES is advertised.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from txsmtp.errors import SMTPProtocolError

__all__ = ["Reply", "ReplyParser", "formatReply", "ENHANCED_RE"]

#: Matches an RFC 3463 enhanced status code.
ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_LINEBREAK = re.compile(r"\r\n|\r|\n")
_ENHANCED_PREFIX = re.compile(rb"^([245]\.\d{1,3}\.\d{1,3})(?: |$)")


def formatReply(code: int, text: str | list[str] = "", enhanced: str | None = None) -> bytes:
    """
    Return the wire form of a reply.

    :param code: the reply code.
    :param text: one line of text, a string containing newlines, or a list
        of lines; each becomes one reply line.
    :param enhanced: an enhanced status code to put in front of every line,
        or ``None``.

    >>> formatReply(250, ["mx.example.com", "PIPELINING"])
    b'250-mx.example.com\\r\\n250 PIPELINING\\r\\n'
    """
    if text and isinstance(text, str) and "\n" not in text and "\r" not in text:
        # The common case: one line.
        if enhanced:
            return f"{code:03d} {enhanced} {text}\r\n".encode("utf-8", "replace")
        return f"{code:03d} {text}\r\n".encode("utf-8", "replace")
    # RFC 5321 §4.2.1: no CR or LF inside a reply line; each line break in
    # the text starts a new reply line.
    if isinstance(text, str):
        lines = _LINEBREAK.split(text) if ("\n" in text or "\r" in text) else [text]
    else:
        lines = [part for item in text for part in _LINEBREAK.split(item)] or [""]
    prefix = f"{code:03d}"
    parts = []
    last = len(lines) - 1
    for n, line in enumerate(lines):
        sep = " " if n == last else "-"
        if enhanced:
            parts.append(f"{prefix}{sep}{enhanced} {line}\r\n" if line else f"{prefix}{sep}{enhanced}\r\n")
        else:
            parts.append(f"{prefix}{sep}{line}\r\n" if line else f"{prefix}{sep}\r\n")
    return "".join(parts).encode("utf-8", "replace")


class Reply(NamedTuple):
    """
    A parsed reply (a named tuple: cheap to make, immutable, comparable).

    :ivar code: the reply code as an integer.
    :ivar lines: the text of each line, with the enhanced code removed.
    :ivar enhanced: the first enhanced status code in the reply, or ``None``.
    """

    code: int
    lines: tuple[str, ...] = ()
    enhanced: str | None = None

    @property
    def text(self) -> str:
        """The text lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def positive(self) -> bool:
        """``True`` for 2xx and 3xx replies."""
        return self.code < 400

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return head + " / ".join(self.lines)


# Replies are immutable, and a server says the same few one-line replies
# over and over: parsed ones are kept, a bounded number of them.
_recent: dict[bytes, Reply] = {}
_RECENT_MAX = 256


class ReplyParser:
    """
    Incremental parser for the replies a server sends.

    :param maxLineLength: the longest reply line accepted, CRLF included.
        RFC 5321 allows 512; real servers exceed it a little, so the default
        is 2048.
    :param maxReplyLength: the most octets one (multi-line) reply may take.

    :meth:`feed` returns the complete replies it could parse.  Anything
    malformed or over a bound raises :class:`~txsmtp.errors.SMTPProtocolError`
    and leaves the parser unusable: the connection should be dropped.
    """

    def __init__(self, maxLineLength: int = 2048, maxReplyLength: int = 65536) -> None:
        self.maxLineLength = maxLineLength
        self.maxReplyLength = maxReplyLength
        self._buf = b""
        self._lines: list[bytes] = []
        self._replySize = 0

    def feed(self, data: bytes) -> list[Reply]:
        """Parse ``data`` and return the replies it completes."""
        lines = (self._buf + data if self._buf else data).split(b"\r\n")
        self._buf = rest = lines.pop()
        replies: list[Reply] = []
        append = replies.append
        maxLine = self.maxLineLength - 2
        cache = _recent
        for line in lines:
            if not self._lines:
                # The common case, inline: a one-line reply, quite likely one
                # seen before ("250 2.1.5 Ok").
                reply = cache.get(line)
                if reply is not None and len(line) <= maxLine:
                    append(reply)
                    continue
                if line[3:4] == b" " and len(line) <= maxLine and line[:3].isdigit():
                    code = int(line[:3])
                    if 200 <= code <= 599:
                        body = line[4:]
                        m = _ENHANCED_PREFIX.match(body)
                        if m is not None and body[0] - 48 == code // 100:
                            text = body[m.end() :].decode("utf-8", "replace")
                            reply = Reply(code, (text,), m.group(1).decode("ascii"))
                        else:
                            reply = Reply(code, (body.decode("utf-8", "replace"),), None)
                        if len(cache) >= _RECENT_MAX:
                            cache.clear()
                        cache[line] = reply
                        append(reply)
                        continue
            reply = self._line(line)
            if reply is not None:
                append(reply)
        if len(rest) > self.maxLineLength:
            raise SMTPProtocolError("reply line too long")
        if self._replySize + len(rest) > self.maxReplyLength:
            raise SMTPProtocolError("reply too long")
        return replies

    def _line(self, line: bytes) -> Reply | None:
        if len(line) + 2 > self.maxLineLength:
            raise SMTPProtocolError("reply line too long")
        self._replySize += len(line) + 2
        if self._replySize > self.maxReplyLength:
            raise SMTPProtocolError("reply too long")
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise SMTPProtocolError(f"malformed reply line: {line[:80]!r}")
        if self._lines and line[:3] != self._lines[0][:3]:
            raise SMTPProtocolError("reply code changed inside a multi-line reply")
        self._lines.append(line)
        if line[3:4] == b"-":
            return None
        lines, self._lines = self._lines, []
        self._replySize = 0
        code = int(lines[0][:3])
        if not 200 <= code <= 599:
            raise SMTPProtocolError(f"reply code out of range: {code}")
        enhanced = None
        texts = []
        for raw in lines:
            body = raw[4:]
            m = _ENHANCED_PREFIX.match(body)
            if m and int(m.group(1)[:1]) == code // 100:
                if enhanced is None:
                    enhanced = m.group(1).decode("ascii")
                body = body[m.end() :]
            texts.append(body.decode("utf-8", "replace"))
        return Reply(code, tuple(texts), enhanced)
