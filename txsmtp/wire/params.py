"""
MAIL and RCPT parameters (RFC 5321 §4.1.2 ``esmtp-param``) and xtext.

Known parameters are parsed into typed values:

========== ======== =========================================================
keyword    command  meaning
========== ======== =========================================================
SIZE       MAIL     RFC 1870: declared message size in octets
BODY       MAIL     RFC 6152 / RFC 3030: ``7BIT``, ``8BITMIME``, ``BINARYMIME``
SMTPUTF8   MAIL     RFC 6531: UTF-8 addresses and headers (no value)
AUTH       MAIL     RFC 4954 §5: the authenticated submitter, xtext or ``<>``
RET        MAIL     RFC 3461 §4.3: ``FULL`` or ``HDRS``
ENVID      MAIL     RFC 3461 §4.4: envelope identifier, xtext
REQUIRETLS MAIL     RFC 8689 §3: onward delivery only over verified TLS (no value)
NOTIFY     RCPT     RFC 3461 §4.1: ``NEVER`` or some of SUCCESS, FAILURE, DELAY
ORCPT      RCPT     RFC 3461 §4.2: ``addr-type;xtext``
========== ======== =========================================================

The caller passes the set of keywords it accepts (what its EHLO
advertised); anything else is refused with 555 5.5.4 (RFC 5321 §4.1.1.11).
Keywords outside this table that the caller accepts land in ``extra``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from txsmtp.errors import SMTPSyntaxError

__all__ = [
    "MailParameters",
    "RecipientParameters",
    "parseMailParameters",
    "parseRecipientParameters",
    "xtextDecode",
    "xtextEncode",
    "MAIL_KEYWORDS",
    "RCPT_KEYWORDS",
]

MAIL_KEYWORDS = frozenset({"SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID", "REQUIRETLS"})
RCPT_KEYWORDS = frozenset({"NOTIFY", "ORCPT"})

_KEYWORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(rb"[\x21-\x3c\x3e-\x7e]+")
_VALUE_UTF8 = re.compile(rb"[\x21-\x3c\x3e-\x7e\x80-\xff]+")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_HEX = re.compile(r"\+([0-9A-F]{2})")


def xtextDecode(value: str) -> str:
    """
    Decode RFC 3461 §4 xtext (``+XX`` hex escapes, upper case only).

    :raises SMTPSyntaxError: 501 5.5.4 for malformed xtext.
    """
    if not _XTEXT.fullmatch(value):
        raise SMTPSyntaxError(501, "5.5.4", "Malformed xtext value")
    if "+" not in value:
        return value
    raw = _HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    # Escapes encode octets; reinterpret as UTF-8 where possible.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return raw


def xtextEncode(value: str) -> str:
    """Encode text as RFC 3461 xtext (the inverse of :func:`xtextDecode`)."""
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


@dataclass(slots=True)
class MailParameters:
    """The parameters of a MAIL command, parsed."""

    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    auth: str | None = None
    ret: str | None = None
    envid: str | None = None
    #: REQUIRETLS (RFC 8689): every onward hop must be verified TLS.
    requireTLS: bool = False
    extra: dict[str, str | None] = field(default_factory=dict)


@dataclass(slots=True)
class RecipientParameters:
    """The parameters of a RCPT command, parsed."""

    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    extra: dict[str, str | None] = field(default_factory=dict)


def _split(params: Iterable[bytes], allowed: frozenset[str], utf8: bool) -> dict[str, str | None]:
    seen: dict[str, str | None] = {}
    valueRE = _VALUE_UTF8 if utf8 else _VALUE
    for param in params:
        keyword, eq, value = param.partition(b"=")
        if not _KEYWORD.fullmatch(keyword):
            raise SMTPSyntaxError(501, "5.5.4", f"Malformed parameter: {param[:40].decode('ascii', 'replace')}")
        name = keyword.decode("ascii").upper()
        if name not in allowed:
            raise SMTPSyntaxError(555, "5.5.4", f"Unsupported parameter: {name}")
        if name in seen:
            raise SMTPSyntaxError(501, "5.5.4", f"Parameter given twice: {name}")
        if eq:
            if not valueRE.fullmatch(value):
                raise SMTPSyntaxError(501, "5.5.4", f"Malformed value for {name}")
            seen[name] = value.decode("utf-8", "strict") if utf8 else value.decode("ascii")
        else:
            seen[name] = None
    return seen


def _need(name: str, value: str | None) -> str:
    if value is None:
        raise SMTPSyntaxError(501, "5.5.4", f"{name} needs a value")
    return value


def parseMailParameters(
    params: Iterable[bytes], allowed: frozenset[str] = MAIL_KEYWORDS, utf8: bool = False
) -> MailParameters:
    """
    Parse the parameters that follow the reverse-path of MAIL.

    :param allowed: the keywords the server accepts (upper case).
    :param utf8: whether UTF-8 is allowed in values (``SMTPUTF8`` given).
    """
    try:
        raw = _split(params, allowed, utf8)
    except UnicodeDecodeError:
        raise SMTPSyntaxError(501, "5.5.4", "Parameter value is not valid UTF-8") from None
    result = MailParameters()
    for name, value in raw.items():
        if name == "SIZE":
            v = _need(name, value)
            if not v.isdigit() or not v.isascii() or len(v) > 20:
                raise SMTPSyntaxError(501, "5.5.4", "SIZE must be a number of octets")
            result.size = int(v)
        elif name == "BODY":
            v = _need(name, value).upper()
            if v not in ("7BIT", "8BITMIME", "BINARYMIME"):
                raise SMTPSyntaxError(501, "5.5.4", "BODY must be 7BIT, 8BITMIME or BINARYMIME")
            result.body = v
        elif name == "SMTPUTF8":
            if value is not None:
                raise SMTPSyntaxError(501, "5.5.4", "SMTPUTF8 takes no value")
            result.smtputf8 = True
        elif name == "AUTH":
            v = _need(name, value)
            result.auth = None if v == "<>" else xtextDecode(v)
        elif name == "RET":
            v = _need(name, value).upper()
            if v not in ("FULL", "HDRS"):
                raise SMTPSyntaxError(501, "5.5.4", "RET must be FULL or HDRS")
            result.ret = v
        elif name == "ENVID":
            v = _need(name, value)
            if len(v) > 100:
                raise SMTPSyntaxError(501, "5.5.4", "ENVID is too long (at most 100 characters)")
            result.envid = xtextDecode(v)
        elif name == "REQUIRETLS":
            if value is not None:
                raise SMTPSyntaxError(501, "5.5.4", "REQUIRETLS takes no value")
            result.requireTLS = True
        else:
            result.extra[name] = value
    return result


def parseRecipientParameters(
    params: Iterable[bytes], allowed: frozenset[str] = RCPT_KEYWORDS, utf8: bool = False
) -> RecipientParameters:
    """Parse the parameters that follow the forward-path of RCPT."""
    try:
        raw = _split(params, allowed, utf8)
    except UnicodeDecodeError:
        raise SMTPSyntaxError(501, "5.5.4", "Parameter value is not valid UTF-8") from None
    result = RecipientParameters()
    for name, value in raw.items():
        if name == "NOTIFY":
            items = tuple(_need(name, value).upper().split(","))
            if items == ("NEVER",):
                result.notify = items
            elif items and all(i in ("SUCCESS", "FAILURE", "DELAY") for i in items) and len(set(items)) == len(
                items
            ):
                result.notify = items
            else:
                raise SMTPSyntaxError(
                    501, "5.5.4", "NOTIFY must be NEVER or a list of SUCCESS, FAILURE and DELAY"
                )
        elif name == "ORCPT":
            addrType, semi, addr = _need(name, value).partition(";")
            if not semi or not addrType or not addr or len(value or "") > 500:
                raise SMTPSyntaxError(501, "5.5.4", "ORCPT must be addr-type;address")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", addrType):
                raise SMTPSyntaxError(501, "5.5.4", "ORCPT address type is malformed")
            result.orcpt = (addrType.lower(), xtextDecode(addr))
        else:
            result.extra[name] = value
    return result
