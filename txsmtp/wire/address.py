"""
RFC 5321 paths (``<local@domain>``) and RFC 6531 internationalised paths.

The grammar is RFC 5321 §4.1.2; the limits are §4.5.3.1 (local part 64
octets, domain 255 octets, path 256 octets including the angle brackets).
RFC 6531 §3.3 widens ``atext``, ``qtextSMTP`` and ``sub-domain`` to UTF-8,
but only for a transaction whose MAIL command carried ``SMTPUTF8``.

Every parser here raises only :class:`~txsmtp.errors.SMTPSyntaxError`, with
the reply the server should send.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from txsmtp.errors import SMTPSyntaxError

__all__ = ["Address", "parsePath", "splitPathAndParameters", "MAX_LOCAL", "MAX_DOMAIN", "MAX_PATH"]

MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = "\u0080-\U0010ffff"


def _grammar(utf8: bool) -> re.Pattern[str]:
    extra = _UTF8 if utf8 else ""
    atom = f"[{_ATEXT}{extra}]+"
    dotString = f"{atom}(?:\\.{atom})*"
    quoted = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{extra}]|\\\\[\\x20-\\x7e])*"'
    letDig = f"[A-Za-z0-9{extra}]"
    subDomain = f"{letDig}(?:[A-Za-z0-9\\-{extra}]*{letDig})?"
    domain = f"{subDomain}(?:\\.{subDomain})*"
    literal = r"\[[^\[\]\\\x00-\x20\x7f]+\]"
    return re.compile(f"(?P<local>{dotString}|{quoted})@(?P<domain>{domain}|{literal})")


_MAILBOX = {False: _grammar(False), True: _grammar(True)}
_ADL = re.compile(r"@[^,:@<>\s]+(?:,@[^,:@<>\s]+)*:")
_GENERAL_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Address:
    """
    A mailbox from a MAIL or RCPT command.

    :ivar localPart: the local part as sent (a quoted local part keeps its
        quotes and backslashes).
    :ivar domain: the domain or address literal as sent; empty only for the
        special recipient ``<Postmaster>``.
    """

    localPart: str
    domain: str

    def __str__(self) -> str:
        return f"{self.localPart}@{self.domain}" if self.domain else self.localPart

    @property
    def isPostmaster(self) -> bool:
        """``True`` for ``<Postmaster>`` and ``<postmaster@any.domain>``."""
        return self.localPart.lower() == "postmaster"

    @property
    def isASCII(self) -> bool:
        """``False`` when the address needs SMTPUTF8."""
        return str(self).isascii()

    @property
    def isLiteral(self) -> bool:
        """``True`` when the domain is an address literal such as ``[192.0.2.1]``."""
        return self.domain.startswith("[")

    @property
    def unquotedLocalPart(self) -> str:
        """The local part with quoting removed (``"a b"`` becomes ``a b``)."""
        lp = self.localPart
        if lp.startswith('"'):
            return re.sub(r"\\(.)", r"\1", lp[1:-1])
        return lp


def _checkLiteral(literal: str) -> None:
    inner = literal[1:-1]
    if ":" in inner:
        tag, _, rest = inner.partition(":")
        if tag.lower() == "ipv6":
            if "%" in rest:
                # RFC 5321 §4.1.3 IPv6-addr has no zone identifier.
                raise SMTPSyntaxError(501, "5.1.3", f"Bad IPv6 address literal: {literal}")
            try:
                ipaddress.IPv6Address(rest)
            except ValueError:
                raise SMTPSyntaxError(501, "5.1.3", f"Bad IPv6 address literal: {literal}") from None
            return
        # General-address-literal: Standardized-tag ":" 1*dcontent.  No tag
        # other than IPv6 is registered, but the syntax is valid.
        if not _GENERAL_TAG.fullmatch(tag) or not rest:
            raise SMTPSyntaxError(501, "5.1.3", f"Bad address literal: {literal}")
        return
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        raise SMTPSyntaxError(501, "5.1.3", f"Bad IPv4 address literal: {literal}") from None


def splitPathAndParameters(arg: bytes) -> tuple[bytes, list[bytes]]:
    """
    Split the text after ``FROM:`` or ``TO:`` into the path (angle brackets
    included) and the list of ``keyword[=value]`` parameters.

    A quoted local part may contain spaces and ``>``, and so may a
    General-address-literal (RFC 5321 §4.1.3 ``dcontent`` includes ``>``
    and ``"``, as in ``<user@[tag:a>b"c]>``); the scan honours the quoting
    and the brackets.  Spaces between the colon and the path are tolerated,
    as widespread clients send them.
    """
    arg = arg.lstrip(b" ")
    if not arg.startswith(b"<"):
        raise SMTPSyntaxError(501, "5.5.4", "Syntax: the address must be in angle brackets, like <user@example.com>")
    if b'"' not in arg and b"[" not in arg:
        # No quoted local part, no address literal: the first ">" closes the path.
        end = arg.find(b">")
        if end < 0:
            raise SMTPSyntaxError(501, "5.5.4", "Syntax: missing closing angle bracket")
        rest = arg[end + 1 :]
        if rest and not rest.startswith(b" "):
            raise SMTPSyntaxError(501, "5.5.4", "Syntax: expected a space between the address and its parameters")
        return arg[: end + 1], rest.split()
    inQuotes = False
    inLiteral = False
    escaped = False
    end = -1
    for i in range(1, len(arg)):
        c = arg[i]
        if escaped:
            escaped = False
        elif inLiteral:
            # dcontent excludes "[", "]" and backslash: only "]" ends it.
            inLiteral = c != 0x5D
        elif c == 0x5C and inQuotes:  # backslash
            escaped = True
        elif c == 0x22:  # double quote
            inQuotes = not inQuotes
        elif c == 0x5B and not inQuotes:  # [ opens an address literal
            inLiteral = True
        elif c == 0x3E and not inQuotes:  # >
            end = i
            break
    if end < 0:
        raise SMTPSyntaxError(501, "5.5.4", "Syntax: missing closing angle bracket")
    path = arg[: end + 1]
    rest = arg[end + 1 :]
    if rest and not rest.startswith(b" "):
        raise SMTPSyntaxError(501, "5.5.4", "Syntax: expected a space between the address and its parameters")
    return path, rest.split()


def parsePath(path: bytes, *, utf8: bool = False, nullOK: bool = False, postmasterOK: bool = False) -> Address | None:
    """
    Parse an RFC 5321 ``Path`` (with its angle brackets).

    :param utf8: allow RFC 6531 UTF-8 local parts and domains.
    :param nullOK: allow ``<>`` (the null reverse-path); returns ``None``.
    :param postmasterOK: allow ``<Postmaster>`` without a domain
        (RFC 5321 §4.5.1).
    :raises SMTPSyntaxError: 501 for bad syntax, 553 5.6.7 for a UTF-8
        address without ``utf8``, 501 5.1.x for length limits.
    """
    if len(path) > MAX_PATH:
        raise SMTPSyntaxError(501, "5.1.0", f"Address too long (at most {MAX_PATH} octets)")
    if not (path.startswith(b"<") and path.endswith(b">")):
        raise SMTPSyntaxError(501, "5.5.4", "Syntax: the address must be in angle brackets")
    inner = path[1:-1]
    if not inner:
        if nullOK:
            return None
        raise SMTPSyntaxError(501, "5.1.3", "The null address <> is not allowed here")
    try:
        text = inner.decode("ascii")
    except UnicodeDecodeError:
        if not utf8:
            raise SMTPSyntaxError(
                553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter on MAIL"
            ) from None
        try:
            text = inner.decode("utf-8")
        except UnicodeDecodeError:
            raise SMTPSyntaxError(501, "5.6.7", "Address is not valid UTF-8") from None
    if postmasterOK and text.lower() == "postmaster":
        return Address(text, "")
    if text.startswith("@"):
        # A source route (RFC 5321 §4.1.1.3, Appendix C): accepted and ignored.
        m = _ADL.match(text)
        if not m:
            raise SMTPSyntaxError(501, "5.1.3", "Bad source route in address")
        text = text[m.end() :]
    m = _MAILBOX[utf8].fullmatch(text)
    if m is None:
        raise SMTPSyntaxError(501, "5.1.3", f"Bad address syntax: <{text[:100]}>")
    local = m.group("local")
    domain = m.group("domain")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise SMTPSyntaxError(501, "5.1.3", f"Local part too long (at most {MAX_LOCAL} octets)")
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise SMTPSyntaxError(501, "5.1.2", f"Domain too long (at most {MAX_DOMAIN} octets)")
    if domain.startswith("["):
        _checkLiteral(domain)
    return Address(local, domain)
