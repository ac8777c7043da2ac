"""
A message ready to send: :class:`OutgoingMessage` checks the envelope and
the DSN parameters before anything is written, and measures the message.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, cast

from txsmtp.client.errors import SMTPAddressError
from txsmtp.errors import SMTPError
from txsmtp.wire.address import parsePath
from txsmtp.wire.data import _normalize
from txsmtp.wire.params import xtextEncode

if TYPE_CHECKING:
    from twisted.internet import defer

    from txsmtp.client.errors import SendResult

__all__ = ["CHUNK_SIZE", "OutgoingMessage", "RecipientDSN", "encodeWhole"]

#: How much of a file is read, encoded and written at a time.
CHUNK_SIZE = 65536


def _checkText(value: str, what: str) -> None:
    # RFC 5321 §4.1.2: command arguments are printable; a CR or LF here
    # would let the caller's data run as commands (bpo-43124).
    for ch in value:
        if ch < " " or ch == "\x7f":
            raise SMTPAddressError(f"{what} contains a control character: {value!r}")


def _checkToken(value: str, what: str) -> None:
    _checkText(value, what)
    if not value or " " in value:
        raise SMTPAddressError(f"{what} must be one word: {value!r}")


def _path(address: str, *, sender: bool) -> bytes:
    _checkText(address, "sender" if sender else "recipient")
    path = b"<" + address.encode("utf-8") + b">"
    try:
        parsePath(path, utf8=True, nullOK=sender, postmasterOK=not sender)
    except SMTPError as e:
        raise SMTPAddressError(f"bad {'sender' if sender else 'recipient'} address {address!r}: {e.text}") from None
    return path


# Checked paths, by address: programs send from few senders to the same
# recipients again and again.  Bounded; a refused address is not kept.
_senderPaths: dict[str, bytes] = {}
_recipientPaths: dict[str, bytes] = {}
_PATHS_MAX = 512


def _senderPath(address: str) -> bytes:
    path = _senderPaths.get(address)
    if path is None:
        path = _path(address, sender=True)
        if len(_senderPaths) >= _PATHS_MAX:
            _senderPaths.clear()
        _senderPaths[address] = path
    return path


def _recipientPath(address: str) -> bytes:
    path = _recipientPaths.get(address)
    if path is None:
        path = _path(address, sender=False)
        if len(_recipientPaths) >= _PATHS_MAX:
            _recipientPaths.clear()
        _recipientPaths[address] = path
    return path


_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _notifyParam(notify: Iterable[str]) -> bytes:
    values = [n.upper() for n in notify]
    # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
    if values == ["NEVER"]:
        return b" NOTIFY=NEVER"
    if not values or len(set(values)) != len(values) or not set(values) <= _NOTIFY:
        raise SMTPAddressError(f"NOTIFY must be NEVER alone or some of SUCCESS, FAILURE, DELAY: {notify!r}")
    return b" NOTIFY=" + ",".join(values).encode("ascii")


#: One recipient's DSN parameters (RFC 3461 §4): its ``NOTIFY`` values (or
#: ``None``) and its ``ORCPT`` (``"rfc822;a@example.com"``, or ``None``).
RecipientDSN = tuple[Iterable[str] | None, str | None]


def _orcptParam(orcpt: str) -> bytes:
    _checkText(orcpt, "ORCPT")
    addrType, sep, address = orcpt.partition(";")
    if not sep:
        addrType, address = "rfc822", orcpt
    if not addrType.isascii() or not addrType.replace("-", "").isalnum():
        raise SMTPAddressError(f"bad ORCPT address type: {addrType!r}")
    # RFC 3461 §4.2: the address is xtext-encoded.
    return b" ORCPT=" + f"{addrType};{xtextEncode(address)}".encode("ascii")


@dataclass(slots=True)
class OutgoingMessage:
    """
    A message ready to send: the envelope checked and its commands built.

    Made by :meth:`prepare`; :meth:`ESMTPClient.sendMessage` and
    :class:`Mailer` make one from their arguments.

    :ivar sender: the reverse-path (``""`` for ``<>``).
    :ivar recipients: the forward-paths, in order.
    :ivar message: the message, bytes or a binary file.
    :ivar size: its size in octets, when known.
    :ivar eightBit: whether it contains octets above 127 (``None``: unknown).
    :ivar utf8: whether an address needs SMTPUTF8.
    """

    sender: str
    recipients: list[str]
    message: bytes | BinaryIO
    size: int | None
    eightBit: bool | None
    utf8: bool
    senderPath: bytes
    recipientPaths: Sequence[bytes]
    mailDSN: bytes = b""
    rcptDSN: Sequence[bytes] = ()
    start: int = 0
    #: UTF-8 in the header section (RFC 6532): SMTPUTF8 is declared when
    #: the server offers it (without it the message still goes, as 8-bit).
    utf8Headers: bool = False
    #: REQUIRETLS (RFC 8689): only over verified TLS, to a server offering it.
    requireTLS: bool = False
    #: How many times this message has been tried (by :class:`Mailer`).
    attempts: int = 0
    deferred: defer.Deferred[SendResult] | None = None

    @classmethod
    def prepare(
        cls,
        sender: str,
        recipients: Iterable[str],
        message: bytes | BinaryIO,
        *,
        ret: str | None = None,
        envid: str | None = None,
        notify: Iterable[str] | None = None,
        orcpt: str | None = None,
        recipientParams: Sequence[RecipientDSN] | None = None,
        size: int | None = None,
        eightBit: bool | None = None,
        requireTLS: bool = False,
    ) -> OutgoingMessage:
        """
        Check the envelope and the DSN parameters (RFC 3461) and measure the
        message.

        :param ret: ``"FULL"`` or ``"HDRS"``.
        :param envid: the envelope identifier (xtext-encoded for you).
        :param notify: ``["NEVER"]`` or some of ``SUCCESS``, ``FAILURE``, ``DELAY``,
            for every recipient.
        :param orcpt: the original recipient (``"rfc822;a@example.com"``, or
            just the address), for every recipient.
        :param recipientParams: instead of ``notify`` and ``orcpt``, each
            recipient's own: one ``(notify, orcpt)`` pair per recipient, in
            order, either of them ``None`` (a relay passes on what each
            recipient was given, RFC 3461 §6.2).
        :param size: with ``eightBit``, for a file: its size from the
            current position and whether it holds octets above 127, when
            the caller knows them; the file is then not read through to
            learn them.
        :param eightBit: see ``size``.
        :param requireTLS: send ``MAIL FROM ... REQUIRETLS`` (RFC 8689):
            the message goes only on a connection under TLS whose
            certificate was verified (or matched DANE records), to a server
            that offers REQUIRETLS; otherwise it fails with
            :class:`SMTPUnsupportedError` and nothing is sent.
        :raises SMTPAddressError: for anything malformed; nothing is sent.
        :raises ValueError: when ``recipientParams`` does not have one pair
            per recipient, or comes with ``notify`` or ``orcpt``.
        """
        if isinstance(sender, bytes) or isinstance(recipients, (str, bytes)):
            raise TypeError("sender is a str and recipients an iterable of str")
        recipients = list(recipients)
        if not recipients:
            raise SMTPAddressError("no recipients")
        senderPath = _senderPaths.get(sender) or _senderPath(sender)
        # A tuple of bytes: the garbage collector stops tracking it.
        found = tuple(map(_recipientPaths.get, recipients))
        recipientPaths = cast("tuple[bytes, ...]", found) if None not in found else tuple(map(_recipientPath, recipients))
        utf8 = not sender.isascii() or not "".join(recipients).isascii()
        if (
            type(message) is bytes
            and ret is None
            and envid is None
            and notify is None
            and orcpt is None
            and recipientParams is None
            and not requireTLS
        ):
            # The common case: bytes, no DSN.
            is8Bit = not message.isascii()
            return cls(
                sender,
                recipients,
                message,
                len(message),
                is8Bit,
                utf8,
                senderPath,
                recipientPaths,
                b"",
                (),
                0,
                is8Bit and _nonASCIIHeaders(message),
            )
        mailDSN = b""
        if ret is not None:
            if ret.upper() not in ("FULL", "HDRS"):
                raise SMTPAddressError(f"RET must be FULL or HDRS: {ret!r}")
            mailDSN += b" RET=" + ret.upper().encode("ascii")
        if envid is not None:
            _checkText(envid, "ENVID")
            mailDSN += b" ENVID=" + xtextEncode(envid).encode("ascii")
        rcptDSN: Sequence[bytes] = ()
        if recipientParams is not None:
            if notify is not None or orcpt is not None:
                raise ValueError("give recipientParams, or notify and orcpt, not both")
            if len(recipientParams) != len(recipients):
                raise ValueError(
                    f"recipientParams has {len(recipientParams)} entries for {len(recipients)} recipients"
                )
            each = tuple(_rcptParams(n, o) for n, o in recipientParams)
            if any(each):
                rcptDSN = each
        else:
            rcpt = _rcptParams(notify, orcpt)
            if rcpt:
                rcptDSN = (rcpt,) * len(recipients)
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)
        if size is not None and eightBit is not None and not isinstance(message, bytes):
            # The caller knows (a queue measured the body as it arrived): no
            # pass over the whole file, only its first chunk when 8-bit, for
            # the header section (RFC 6532).
            start = message.tell()
            utf8Headers = eightBit and _nonASCIIHeaders(message.read(CHUNK_SIZE))
            message.seek(start)
        else:
            size, eightBit, start, utf8Headers = _measure(message)
        return cls(
            sender=sender,
            recipients=recipients,
            message=message,
            size=size,
            eightBit=eightBit,
            utf8=utf8,
            senderPath=senderPath,
            recipientPaths=recipientPaths,
            mailDSN=mailDSN,
            rcptDSN=rcptDSN,
            start=start,
            utf8Headers=utf8Headers,
            requireTLS=requireTLS,
        )

    def unfitFor(self, extensions: Mapping[str, str], sizeLimit: int | None, verifiedTLS: bool) -> str | None:
        """
        Why a server with these EHLO ``extensions`` and SIZE limit cannot
        take this message (on a connection whose TLS is verified or not),
        with ``{server}`` where its name goes; ``None`` when it can.
        """
        if self.utf8 and "SMTPUTF8" not in extensions:
            return "{server} does not offer SMTPUTF8, which a non-ASCII address needs (RFC 6531)"
        if self.eightBit and "8BITMIME" not in extensions:
            return "{server} does not offer 8BITMIME and the message has 8-bit octets (RFC 6152 §3)"
        if self.requireTLS:
            # RFC 8689 §4.2.1: verified TLS, and a server that offers
            # REQUIRETLS, or the message is not sent at all.
            if not verifiedTLS:
                return (
                    "the connection to {server} is not TLS with a verified certificate,"
                    " which a REQUIRETLS message needs (RFC 8689 §4.2.1)"
                )
            if "REQUIRETLS" not in extensions:
                return "{server} does not offer REQUIRETLS, which the message requires (RFC 8689 §4.2.1)"
        if sizeLimit is not None and self.size is not None and self.size > sizeLimit:
            return f"the message ({self.size} octets) is larger than {{server}} accepts ({sizeLimit} octets, RFC 1870)"
        return None

    def rewind(self) -> None:
        """Go back to the start of a file message, to send it again."""
        if not isinstance(self.message, bytes):
            self.message.seek(self.start)


def _rcptParams(notify: Iterable[str] | None, orcpt: str | None) -> bytes:
    rcpt = b""
    if notify is not None:
        rcpt += _notifyParam(notify)
    if orcpt is not None:
        rcpt += _orcptParam(orcpt)
    return rcpt


def _nonASCIIHeaders(head: bytes) -> bool:
    """Whether the header section at the start of ``head`` has non-ASCII octets (RFC 6532)."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    return not (head if end < 0 else head[:end]).isascii()


def _measure(message: bytes | BinaryIO) -> tuple[int | None, bool | None, int, bool]:
    """The size, whether there are 8-bit octets, the start and whether the headers are UTF-8."""
    if isinstance(message, bytes):
        eightBit = not message.isascii()
        return len(message), eightBit, 0, eightBit and _nonASCIIHeaders(message)
    if not hasattr(message, "read"):
        raise TypeError(f"message must be bytes or a binary file, not {type(message).__name__}")
    try:
        start = message.tell()
        end = message.seek(0, os.SEEK_END)
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None, None, 0, False
    # One pass to learn whether the body needs 8BITMIME (RFC 6152), then
    # back to where the caller left the file.
    message.seek(start)
    eightBit = utf8Headers = False
    first = True
    while True:
        chunk = message.read(CHUNK_SIZE)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise TypeError("message must be opened in binary mode")
        if not chunk.isascii():
            eightBit = True
            utf8Headers = first and _nonASCIIHeaders(chunk)
            break
        first = False
    message.seek(start)
    return end - start, eightBit, start, utf8Headers


def encodeWhole(message: bytes, dotStuffing: bool = True) -> tuple[bytes, bytes]:
    """
    The wire form of a whole message held as bytes, in two pieces to write
    one after the other: what
    :class:`DataEncoder(dotStuffing) <txsmtp.wire.data.DataEncoder>`'s
    ``encode(message) + finish()`` gives, without its chunk-to-chunk state.

    Line ends are normalised to CRLF (RFC 5321 §2.3.8), a dot that starts
    a line is doubled (§4.5.2), a missing final CRLF is added and, with
    ``dotStuffing``, the terminator ``.CRLF`` follows.
    """
    if b"\r" in message or b"\n" in message:
        n = message.count(b"\n")
        if message.count(b"\r") != n or message.count(b"\r\n") != n:
            message = _normalize(message)
        if dotStuffing:
            message = message.replace(b"\r\n.", b"\r\n..")
    if dotStuffing and message[:1] == b".":
        message = b"." + message
    if not message or message.endswith(b"\r\n"):
        return message, (b".\r\n" if dotStuffing else b"")
    return message, (b"\r\n.\r\n" if dotStuffing else b"\r\n")
