"""
A queued message as it is delivered: the header fields the server added
once it had the whole message (a ``DKIM-Signature:``, an
``Authentication-Results:``; :attr:`txsmtp.envelope.Envelope.addedHeaders`,
kept in the queued envelope), then the body as it was stored.

:func:`openMessage` opens it for the scheduler, for delivery attempts and
for delivery reports alike; :class:`PrefixedBody` is the read-only,
seekable file it gives when there are added fields.  Nothing is copied:
the body file is read through.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO, cast

from twisted.internet.defer import Deferred

from txsmtp.queue.model import QueuedMessage

__all__ = ["PrefixedBody", "addedHeaders", "openMessage"]


def addedHeaders(message: QueuedMessage) -> bytes:
    """The header fields the server added to ``message``, as they go before it."""
    fields = message.envelope.get("addedHeaders") or ()
    return b"".join(f.encode("utf-8") for f in fields)


def openMessage(store: Any, message: QueuedMessage) -> Deferred[BinaryIO]:
    """``store.openBody(message.id)``, with the added header fields in front."""
    prefix = addedHeaders(message)
    d: Deferred[BinaryIO] = store.openBody(message.id)
    if prefix:
        d.addCallback(lambda body: cast(BinaryIO, PrefixedBody(prefix, body)))
    return d


class PrefixedBody(io.RawIOBase):
    """
    ``prefix`` followed by the binary file ``body``, read-only and
    seekable; closing it closes ``body``.
    """

    def __init__(self, prefix: bytes, body: BinaryIO) -> None:
        super().__init__()
        self._prefix = prefix
        self._body = body
        self._position = 0
        body.seek(0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        out = b""
        n = len(self._prefix)
        if self._position < n:
            end = n if size is None or size < 0 else min(n, self._position + size)
            out = self._prefix[self._position : end]
            self._position = end
            if size is not None and size >= 0:
                size -= len(out)
                if size == 0:
                    return out
            self._body.seek(0)
        rest = self._body.read(-1 if size is None else size)
        self._position += len(rest)
        return out + rest

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += len(self._prefix) + self._body.seek(0, os.SEEK_END)
        elif whence != os.SEEK_SET:
            raise ValueError(f"bad whence {whence}")
        if offset < 0:
            raise ValueError("negative seek position")
        self._position = offset
        self._body.seek(max(0, offset - len(self._prefix)))
        return offset

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
