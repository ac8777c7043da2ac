"""Shared test data: splitting a byte string into chunks, and the smuggling sequences."""

from __future__ import annotations

#: Near misses of CRLF "." CRLF that must never end DATA (SMTP smuggling:
#: CVE-2023-51764 and kin).
SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\n.\r",
    b"\r\n.\rX",
    b"\r.\n",
    b"\n.\n\r\n",
]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the (sorted, de-duplicated) offsets in ``cuts``."""
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    pieces = []
    start = 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces
