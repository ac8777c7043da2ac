"""
SPF macros (RFC 7208 §7): the ``%{...}`` of domain-specs and explanation
strings, parsed once (:func:`parseMacroString`) and expanded against what
is known of one SMTP transaction (:class:`MacroContext`, :func:`expand`).

Pure: no DNS, no reactor.  The one macro letter that needs DNS, ``p``
(the validated domain name of the client, §7.3), is computed by the
caller (:mod:`txsmtp.mailauth.spf`) before expanding, only when the
string uses it (:attr:`MacroString.letters`), and handed over in
:attr:`MacroContext.validatedName`.

A macro ``%{letter transformers delimiters}``:

- the letter names a value (``s`` sender, ``l`` its local-part, ``o``
  its domain, ``d`` the domain being checked, ``i`` the client's address,
  ``p`` its validated name, ``v`` ``in-addr`` or ``ip6``, ``h`` the HELO
  domain; in explanations only: ``c`` the address in its usual text form,
  ``r`` the receiving host, ``t`` the time);
- the value is cut at the delimiters (any of ``.-+,/_=``, ``.`` when none
  is given), the parts reversed when ``r`` is given, the rightmost *N*
  parts kept when a number is given, and joined again with ``.``;
- an upper-case letter asks for the result URL-escaped (RFC 3986).

``%%``, ``%_`` and ``%-`` stand for ``%``, a space and ``%20``.  Anything
else after ``%`` is a syntax error, which makes the check ``permerror``.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from urllib.parse import quote

__all__ = [
    "MacroContext",
    "MacroString",
    "SPFSyntaxError",
    "expand",
    "expandDomain",
    "isValidDomain",
    "parseDomainSpec",
    "parseMacroString",
]

#: The letters of domain-specs (§7.2); explanations may use these and ``crt``.
DOMAIN_LETTERS = frozenset("slodipvh")
EXPLAIN_LETTERS = DOMAIN_LETTERS | frozenset("crt")
_DELIMITERS = ".-+,/_="

# %{ letter *DIGIT [r] *delimiter }, the letter and "r" in either case.
_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
# domain-end's "." toplabel ["."] (§7.1); a toplabel is not all digits.
_DOMAIN_END = re.compile(
    r"\.((?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*)|(?:[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]))\.?\Z"
)


class SPFSyntaxError(ValueError):
    """A record, term or macro-string that RFC 7208's grammar does not allow."""


@dataclass(frozen=True)
class _Macro:
    letter: str  # lower case
    keep: int  # 0: all the parts
    reverse: bool
    delimiters: str
    escape: bool  # the letter was upper case


@dataclass(frozen=True)
class MacroString:
    """
    A parsed macro-string.

    :ivar text: the string as written.
    :ivar parts: literal text (``str``) and macros, in order.
    :ivar letters: the macro letters used (lower case).
    """

    text: str
    parts: tuple[str | _Macro, ...]
    letters: frozenset[str] = field(default_factory=frozenset)
    endsWithMacro: bool = False


@dataclass
class MacroContext:
    """
    What the macros expand to in one check.

    :ivar sender: the sender identity ``local-part@domain`` (§4.3 has
        ``postmaster`` stand for a missing local-part).
    :ivar domain: the domain whose record is being evaluated (``d``).
    :ivar ip: the client's address (an IPv4-mapped IPv6 address already
        made IPv4, §5).
    :ivar helo: the HELO/EHLO domain (``h``).
    :ivar receiver: the receiving host's name (``r``).
    :ivar validatedName: ``p``; ``unknown`` unless the caller found one.
    :ivar now: the time for ``t`` (seconds since the epoch); the clock when
        ``None``.
    """

    sender: str
    domain: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    helo: str
    receiver: str = "unknown"
    validatedName: str = "unknown"
    now: int | None = None


def parseMacroString(text: str, explain: bool = False) -> MacroString:
    """
    Parse a macro-string (§7.1); ``explain`` allows spaces and the
    letters ``c``, ``r``, ``t`` (an explain-string, §6.2).

    :raise SPFSyntaxError: for any ``%`` not starting a macro, a letter not
        allowed here, a zero digit transformer, or a character outside
        the grammar.
    """
    letters = EXPLAIN_LETTERS if explain else DOMAIN_LETTERS
    parts: list[str | _Macro] = []
    used: set[str] = set()
    literal: list[str] = []
    endsWithMacro = False
    i = 0
    while i < len(text):
        ch = text[i]
        endsWithMacro = ch == "%"
        if ch != "%":
            if not ("\x21" <= ch <= "\x7e" or (explain and ch == " ")):
                raise SPFSyntaxError(f"character {ch!r} not allowed in {text!r}")
            literal.append(ch)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
            i += 2
            continue
        m = _MACRO.match(text, i)
        if m is None:
            raise SPFSyntaxError(f"bad macro at {text[i:i + 12]!r} in {text!r}")
        letter = m.group(1).lower()
        if letter not in letters:
            raise SPFSyntaxError(f"macro letter {m.group(1)!r} not allowed in {text!r}")
        if m.group(2) and int(m.group(2)) == 0:
            # §7.1: "If a DIGIT is specified, the value MUST be nonzero."
            raise SPFSyntaxError(f"zero digit transformer in {text!r}")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(
            _Macro(
                letter,
                min(int(m.group(2) or 0), 1000),
                bool(m.group(3)),
                m.group(4) or ".",
                m.group(1).isupper(),
            )
        )
        used.add(letter)
        i = m.end()
    if literal:
        parts.append("".join(literal))
    return MacroString(text, tuple(parts), frozenset(used), endsWithMacro)


def parseDomainSpec(text: str) -> MacroString:
    """
    Parse a domain-spec: a macro-string ending in a macro or in a dot
    and a top label (§7.1 ``domain-end``), so ``a:foo`` (no dot) or
    ``a:example.123`` are syntax errors.
    """
    spec = parseMacroString(text)
    if not spec.endsWithMacro:
        tail = spec.parts[-1] if spec.parts else ""
        if not isinstance(tail, str) or _DOMAIN_END.search(tail) is None:
            raise SPFSyntaxError(f"{text!r} is not a domain-spec (it needs a dot and a top label)")
    return spec


def _value(letter: str, ctx: MacroContext) -> str:
    ip = ctx.ip
    local, _, domain = ctx.sender.rpartition("@")
    if letter == "s":
        return ctx.sender
    if letter == "l":
        return local or "postmaster"
    if letter == "o":
        return domain
    if letter == "d":
        return ctx.domain
    if letter == "i":
        if ip.version == 4:
            return str(ip)
        # §7.3: IPv6 as dot-separated nibbles, most significant first.
        return ".".join(ip.exploded.replace(":", ""))
    if letter == "p":
        return ctx.validatedName
    if letter == "v":
        return "in-addr" if ip.version == 4 else "ip6"
    if letter == "h":
        return ctx.helo
    if letter == "c":
        return str(ip)  # RFC 5952 form for IPv6
    if letter == "r":
        return ctx.receiver
    if letter == "t":
        return str(int(time.time()) if ctx.now is None else ctx.now)
    raise SPFSyntaxError(f"unknown macro letter {letter!r}")  # parse refuses these


def _expandMacro(macro: _Macro, ctx: MacroContext) -> str:
    value = _value(macro.letter, ctx)
    pieces = re.split("[" + re.escape(macro.delimiters) + "]", value)
    if macro.reverse:
        pieces.reverse()
    if macro.keep:
        pieces = pieces[-macro.keep :]
    out = ".".join(pieces)
    if macro.escape:
        # §7.3: upper-case letters URL-escape everything but RFC 3986's
        # unreserved characters.
        out = quote(out, safe="")
    return out


def expand(spec: MacroString, ctx: MacroContext) -> str:
    """The text of ``spec`` with its macros replaced."""
    return "".join(part if isinstance(part, str) else _expandMacro(part, ctx) for part in spec.parts)


def expandDomain(spec: MacroString, ctx: MacroContext) -> str:
    """
    Expand a domain-spec into a name to look up, without its final dot,
    shortened from the left one label at a time while longer than 253
    characters (§7.3).
    """
    name = expand(spec, ctx)
    if name.endswith("."):
        name = name[:-1]
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


def isValidDomain(name: str) -> bool:
    """
    Whether ``name`` can be looked up as check_host()'s <domain> (§4.3):
    at least two labels, none empty or longer than 63 characters, at most
    253 characters in all (a final dot allowed), visible ASCII, and
    not an address (no brackets, a top label not all digits).
    """
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or any(not "\x21" <= ch <= "\x7e" or ch in "[]" for ch in name):
        return False
    labels = name.split(".")
    return len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels) and not labels[-1].isdigit()
