"""
The ``Authentication-Results:`` header field (RFC 8601): writing the one a
receiving server adds, and recognising the ones it must remove.

Theory of operation:

- :func:`formatHeader` writes an
  :class:`~txsmtp.mailauth.results.AuthenticationResults` as a header
  field, CRLF-terminated, each ``method=result`` on a line of its own and
  longer ones folded (CRLF and a tab) between their words so lines stay
  under 78 characters where a word allows.  A ``reason`` comes before the
  properties, as the grammar of §2.2 orders them.  Values are written as
  RFC 2045 tokens when they are tokens, as ``local-part@domain`` (§2.2's
  ``pvalue``) when they are addresses, and as quoted strings otherwise.
  Without SMTPUTF8 the field is ASCII: domain names go to A-labels and
  any other non-ASCII character becomes ``?`` (such values can only come
  from an SMTPUTF8 transaction anyway); with it, UTF-8 goes out in quoted
  strings (RFC 6532).
- §5: a server must remove the fields that claim to be its own
  (forgeries, or left over from an earlier pass), before it adds its own.
  :func:`authservIdOf` reads the authserv-id of a field value, skipping
  the whitespace, folding and (nested) comments that may come first;
  :func:`isOwnField` takes one raw field as it streams by and says whether
  it is such a field.

Pure functions, no I/O.
"""

from __future__ import annotations

import re

from txsmtp.mailauth.results import AuthenticationResults, MethodResult
from txsmtp.mailauth.rfc5322 import skipCFWS

__all__ = ["authservIdOf", "formatHeader", "formatValue", "isOwnField"]

FIELD_NAME = "Authentication-Results"

#: Folding aims at lines this long (RFC 5322 §2.1.1's SHOULD).
LINE_LENGTH = 78

#: A ``reason`` longer than this is cut (the field stays far below the
#: 998-octet line limit of RFC 5322 §2.1.1).
MAX_REASON_LENGTH = 300

_TSPECIALS = set('()<>@,;:\\"/[]?=')
_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def _isToken(value: str) -> bool:
    return bool(value) and all(33 <= ord(c) <= 126 and c not in _TSPECIALS for c in value)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _domain(domain: str, utf8: bool) -> str | None:
    """A ``domain-name`` (RFC 6376 §3.5: dot-separated labels), or ``None``."""
    if not domain.isascii():
        if utf8:
            return domain if all(label and "." not in label for label in domain.split(".")) else None
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = domain.split(".")
    return domain if all(_LABEL.match(label) for label in labels) else None


def formatValue(value: str, *, smtputf8: bool = False, address: bool = False) -> str:
    """
    Write a property value (§2.2 ``pvalue``): a token as it is, an address
    (when ``address``; also ``@domain`` and a bare ``domain``) as
    ``local-part@domain`` with the local part quoted if it is no
    dot-atom, anything else as a quoted string.
    """
    if address and "@" in value:
        local, _, domain = value.rpartition("@")
        name = _domain(domain, smtputf8)
        if name is not None:
            if not local or all(_ATEXT.match(atom) for atom in local.split(".")):
                return f"{local}@{name}"
            return _quoted(_ascii(local, smtputf8)) + "@" + name
    if value.isascii() and _isToken(value):
        return value
    if address and not value.isascii():
        name = _domain(value, smtputf8)
        if name is not None and name.isascii():
            return name
    return _quoted(_ascii(value, smtputf8))


def _ascii(text: str, smtputf8: bool) -> str:
    """``text`` with the characters a quoted string cannot hold replaced."""
    out = []
    for c in text:
        if c in "\r\n\t":
            c = " "
        elif ord(c) < 32 or ord(c) == 127 or (ord(c) > 127 and not smtputf8):
            c = "?"
        out.append(c)
    return "".join(out)


def _words(result: MethodResult, smtputf8: bool) -> list[str]:
    for keyword in (result.method, result.result):
        if not _KEYWORD.match(keyword):
            raise ValueError(f"not a method or result keyword: {keyword!r}")
    words = [f"{result.method}={result.result}"]
    if result.reason:
        reason = result.reason
        if len(reason) > MAX_REASON_LENGTH:
            reason = reason[: MAX_REASON_LENGTH - 3] + "..."
        words.append("reason=" + _quoted(_ascii(reason, smtputf8)))
    for name, value in result.properties:
        ptype, dot, prop = name.partition(".")
        if not dot or not _KEYWORD.match(ptype) or not re.fullmatch(r"[A-Za-z0-9_.-]+", prop):
            raise ValueError(f"not a ptype.property: {name!r}")
        # An address-shaped value may be written as one (§2.2 pvalue).
        words.append(f"{name}=" + formatValue(value, smtputf8=smtputf8, address=True))
    return words


def formatHeader(results: AuthenticationResults, *, smtputf8: bool = False) -> bytes:
    """
    The ``Authentication-Results:`` field for ``results``, folded, ending
    in CRLF; ``<authserv-id>; none`` when there are no results (§2.2).

    :param smtputf8: whether the message travels with SMTPUTF8, so that
        the field may hold UTF-8.
    :raise ValueError: a method, result or property name that is not a
        keyword.
    """
    servId = formatValue(results.authservId, smtputf8=smtputf8)
    if not results.results:
        return f"{FIELD_NAME}: {servId}; none\r\n".encode()
    lines = [f"{FIELD_NAME}: {servId};"]
    for index, result in enumerate(results.results):
        words = _words(result, smtputf8)
        if index < len(results.results) - 1:
            words[-1] += ";"
        line = "\t" + words[0]
        for word in words[1:]:
            if len(line) + 1 + len(word) > LINE_LENGTH:
                lines.append(line)
                line = "\t " + word
            else:
                line += " " + word
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# --- Reading: the authserv-id of existing fields (§5) ------------------------


def authservIdOf(fieldValue: bytes) -> str | None:
    """
    The authserv-id of an ``Authentication-Results:`` field value (what
    follows the colon, folded or not), unquoted; ``None`` when there is
    none to read (empty, an unterminated comment or quoted string).
    """
    text = fieldValue.decode("utf-8", "surrogateescape")
    i = skipCFWS(text, 0)
    if i is None or i >= len(text):
        return None
    if text[i] == '"':
        out = []
        i += 1
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 2
            elif c == '"':
                value = "".join(out)
                return value or None
            elif c in "\r\n":
                i += 1  # folding inside the quoted string
            else:
                out.append(c)
                i += 1
        return None
    start = i
    while i < len(text) and (ord(text[i]) > 127 or _isToken(text[i])):
        i += 1
    return text[start:i] or None


def isOwnField(rawField: bytes, authservId: str) -> bool:
    """
    Whether ``rawField`` (one whole header field, name and value, folded
    or not) is an ``Authentication-Results:`` field claiming
    ``authservId``; names and ids compare without regard to case.
    """
    name, sep, value = rawField.partition(b":")
    if not sep or name.rstrip(b" \t").lower() != FIELD_NAME.lower().encode():
        return False
    found = authservIdOf(value.replace(b"\r\n", b"").replace(b"\n", b""))
    return found is not None and found.casefold() == authservId.casefold()
