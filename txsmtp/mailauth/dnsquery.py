"""
The DNS questions of the mail authentication checks, asked through any
:class:`twisted.internet.interfaces.IResolver` (``twisted.names``), with
the three outcomes the RFCs tell apart:

- records of the type asked (:attr:`Answer.records`, the payloads);
- none: the name exists without such records (NODATA), or does not exist
  at all (NXDOMAIN, :attr:`Answer.nxdomain`).  SPF counts both as "void
  lookups" (RFC 7208 §4.6.4);
- no answer: a timeout, SERVFAIL, a refusal.  :func:`query` raises
  :class:`DNSTemporaryError`, which the checks turn into ``temperror``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names.error import DNSNameError

__all__ = ["Answer", "DNSTemporaryError", "query", "txtStrings"]

#: How long to wait for each try of a query, in seconds (twisted.names
#: retries with each timeout in turn).
DEFAULT_TIMEOUT: tuple[int, ...] = (2, 3, 5)


class DNSTemporaryError(Exception):
    """The DNS gave no usable answer (timeout, SERVFAIL, refused)."""


@dataclass
class Answer:
    """
    What a query found.

    :ivar records: the payloads of the answer's records of the type asked
        (``dns.Record_TXT``, ``dns.Record_A``, ...; ``dns.UnknownRecord``
        for the types twisted.names does not know).
    :ivar nxdomain: whether the name does not exist.
    """

    records: list[Any] = field(default_factory=list)
    nxdomain: bool = False


async def query(resolver: IResolver, name: str, rrType: int, timeout: tuple[int, ...] = DEFAULT_TIMEOUT) -> Answer:
    """
    Ask ``resolver`` for the ``rrType`` records of ``name``.

    :raise DNSTemporaryError: when no answer came (the caller's
        ``temperror``).
    """
    try:
        result: Any = await defer.maybeDeferred(
            resolver.query, dns.Query(name.encode("idna") if not name.isascii() else name, rrType), timeout
        )
    except DNSNameError:
        return Answer(nxdomain=True)
    except Exception as e:
        raise DNSTemporaryError(f"{dns.QUERY_TYPES.get(rrType, rrType)} {name}: {_errorText(e)}") from e
    answers = result[0]
    return Answer(records=[rr.payload for rr in answers if rr.type == rrType])


def txtStrings(record: Any) -> bytes:
    """A TXT record's character-strings, joined without spaces (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
    return b"".join(record.data)


def _errorText(error: BaseException) -> str:
    text = type(error).__name__
    if text == "DNSServerError":
        return "server failure (SERVFAIL)"
    if text == "DNSQueryRefusedError":
        return "query refused"
    if isinstance(error, defer.TimeoutError) or text.endswith("TimeoutError"):
        return "no answer (timeout)"
    return str(error) or text
