"""
Message filters: receivers that stand between the server and a delivery's
:class:`~txsmtp.interfaces.IMessageReceiver`, see the message go by, and
act once it is whole.  DKIM signing (:mod:`txsmtp.mailauth.signing`) and
the inbound checks (:mod:`txsmtp.mailauth.inbound`) are two.

A :class:`MessageFilter` holds back the header section, up to a bound
(:data:`HEADER_LIMIT`), until the empty line that ends it, because what
to do (which key signs, which ``Authentication-Results:`` fields are
forged) depends on the header fields; it then passes the section on
(perhaps changed, :meth:`MessageFilter.headers`) and every later chunk
as it comes (:meth:`MessageFilter.body`), with the inner receiver's
back-pressure.  The body is never held.  At the end,
:meth:`MessageFilter.done` runs (it may wait on DNS, or refuse the
message with an :class:`~txsmtp.errors.SMTPError`) before the inner
receiver's ``finish``.

A header section longer than the bound is passed on as it is, and the
filter is told so (:attr:`MessageFilter.overflowed`): no message is
refused or held for it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from txsmtp.envelope import Envelope

__all__ = ["HEADER_LIMIT", "MessageFilter", "fieldName", "splitFields"]

#: The most octets of header section a filter holds back.
HEADER_LIMIT = 256 * 1024


def splitFields(section: bytes) -> list[bytes]:
    """
    The header fields of ``section`` (the header section, with or without
    the empty line that ends it), each with its folded lines and its CRLF.
    """
    fields: list[bytes] = []
    for line in section.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def fieldName(field: bytes) -> str:
    """The name of a header field, lower case (``""`` for a line without a colon)."""
    name, colon, _ = field.partition(b":")
    return name.strip().decode("ascii", "replace").lower() if colon else ""


class MessageFilter:
    """
    The base of a filter (see the module documentation): subclasses
    override :meth:`headers`, :meth:`body` and :meth:`done`.

    :param inner: the receiver the message goes on to.
    :param envelope: the message's envelope.
    """

    limit = HEADER_LIMIT

    def __init__(self, inner: Any, envelope: Envelope) -> None:
        self.inner = inner
        self.envelope = envelope
        #: whether the header section passed :attr:`limit`
        self.overflowed = False
        self._held: bytearray | None = bytearray()

    # -- what subclasses override -----------------------------------------------

    def headers(self, section: bytes) -> bytes:
        """
        The header section (with its ending empty line, when there is one):
        return what to pass on.  Not called when the section overflowed.
        """
        return section

    def body(self, chunk: bytes) -> None:
        """A chunk of the body (after the header section), as it goes by."""

    def done(self) -> Any:
        """
        The message is whole: do what needs it all (a Deferred may be
        returned).  Raise (or fail with) :class:`~txsmtp.errors.SMTPError`
        to refuse it; the inner receiver is then aborted.
        """
        return None

    # -- IMessageReceiver ----------------------------------------------------------

    def write(self, chunk: bytes) -> Any:
        held = self._held
        if held is None:
            self.body(chunk)
            return self.inner.write(chunk)
        start = max(0, len(held) - 3)
        held += chunk
        end = held.find(b"\r\n\r\n", start)
        if end < 0 and held.startswith(b"\r\n"):
            end = -2  # no header fields at all
        if end == -1:
            if len(held) > self.limit:
                self.overflowed = True
                self._held = None
                return self.inner.write(bytes(held))
            return None
        self._held = None
        cut = end + 4
        section, rest = bytes(held[:cut]), bytes(held[cut:])
        out = self.headers(section)
        if rest:
            self.body(rest)
        return self.inner.write(out + rest)

    def finish(self) -> Any:
        d = defer.succeed(None)
        held = self._held
        if held is not None:
            # A message that is all header section (no empty line).
            self._held = None
            out = self.headers(bytes(held))
            if out:
                d.addCallback(lambda _: self.inner.write(out))
        d.addCallback(lambda _: self.done())

        def refused(failure: Any) -> Any:
            self.inner.abort(f"refused by {type(self).__name__}")
            return failure

        d.addCallbacks(lambda _: self.inner.finish(), refused)
        return d

    def abort(self, reason: str) -> None:
        self._held = None
        self.inner.abort(reason)

    def __getattr__(self, name: str) -> Any:
        # What the inner receiver offers beyond the interface (storedAt...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
