"""
Hypothesis strategies for well-formed SMTP protocol elements, and mutations
of them.

Property tests that feed parsers random octets almost never reach the
branch where the parse succeeds; these strategies build input from the RFC
grammar so that they do, and :func:`mutated` damages it a little so that
the error paths near the valid forms are reached too.

- paths: RFC 5321 §4.1.2 ``Path`` (dot-atoms, quoted local parts, domains,
  source routes) with §4.1.3 address literals (IPv4, IPv6, General) and
  RFC 6531 UTF-8 addresses;
- parameters: RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 4954
  AUTH, RFC 3461 RET, ENVID, NOTIFY and ORCPT with RFC 3461 §4 xtext;
- replies: RFC 5321 §4.2 single- and multi-line replies, with RFC 2034
  enhanced status codes.

Each strategy draws the input together with what a correct parser must
make of it, so the tests can compare with a model, not only check that
nothing crashed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from txsmtp.wire.params import xtextEncode

ATEXT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
LETDIG = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

# RFC 6531 §3.3 UTF8-non-ascii: any non-ASCII scalar value (no surrogates).
_nonASCII = st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=("Cs",))


def _atom(utf8: bool) -> st.SearchStrategy[str]:
    chars = st.one_of(st.sampled_from(ATEXT), _nonASCII) if utf8 else st.sampled_from(ATEXT)
    return st.text(chars, min_size=1, max_size=12)


def _dotString(utf8: bool) -> st.SearchStrategy[str]:
    return st.lists(_atom(utf8), min_size=1, max_size=4).map(".".join)


def _quotedString(utf8: bool) -> st.SearchStrategy[str]:
    # qtextSMTP = %d32-33 / %d35-91 / %d93-126 ; quoted-pairSMTP = "\" %d32-126
    qtext = st.sampled_from([chr(c) for c in range(32, 127) if c not in (34, 92)])
    if utf8:
        qtext = st.one_of(qtext, _nonASCII)
    pair = st.sampled_from([chr(c) for c in range(32, 127)]).map(lambda c: "\\" + c)
    return st.lists(st.one_of(qtext, pair), max_size=15).map(lambda parts: '"' + "".join(parts) + '"')


def localParts(utf8: bool = False) -> st.SearchStrategy[str]:
    """RFC 5321 ``Local-part``: a dot-string or a quoted string."""
    return st.one_of(_dotString(utf8), _quotedString(utf8))


def _subDomain(utf8: bool) -> st.SearchStrategy[str]:
    letDig = st.one_of(st.sampled_from(LETDIG), _nonASCII) if utf8 else st.sampled_from(LETDIG)
    ldh = st.one_of(letDig, st.just("-"))
    return st.one_of(
        letDig,
        st.tuples(letDig, st.text(ldh, max_size=10), letDig).map("".join),
    )


def domains(utf8: bool = False) -> st.SearchStrategy[str]:
    """RFC 5321 ``Domain`` (RFC 6531: U-labels when ``utf8``)."""
    return st.lists(_subDomain(utf8), min_size=1, max_size=4).map(".".join)


_ipv4 = st.ip_addresses(v=4).map(lambda a: f"[{a}]")
_ipv6 = st.ip_addresses(v=6).flatmap(
    lambda a: st.sampled_from([a.compressed, a.exploded, a.compressed.upper()]).map(lambda t: f"[IPv6:{t}]")
)
# General-address-literal = Standardized-tag ":" 1*dcontent; dcontent = %d33-90 / %d94-126
_tag = st.tuples(
    st.sampled_from(LETDIG), st.text(st.sampled_from(LETDIG + "-"), max_size=6), st.sampled_from(LETDIG)
).map("".join).filter(lambda t: t.lower() != "ipv6")
_dcontent = st.text(st.sampled_from([chr(c) for c in list(range(33, 91)) + list(range(94, 127))]), min_size=1, max_size=20)
_general = st.tuples(_tag, _dcontent).map(lambda t: f"[{t[0]}:{t[1]}]")
addressLiterals = st.one_of(_ipv4, _ipv6, _general)


@dataclass(frozen=True)
class PathCase:
    """A path as sent, and the local part and domain it holds."""

    wire: bytes
    localPart: str
    domain: str
    route: str = ""

    @property
    def isASCII(self) -> bool:
        return self.wire.isascii()


@st.composite
def paths(draw: st.DrawFn, utf8: st.SearchStrategy[bool] | None = None) -> PathCase:
    """
    A well-formed RFC 5321 ``Path`` (``<local@domain>``, maybe with a
    source route) as octets, with the mailbox a parser must find in it.
    ``utf8`` decides whether RFC 6531 characters may appear.
    """
    u = draw(st.booleans() if utf8 is None else utf8)
    local = draw(localParts(u))
    # Three in four get a domain name, the rest an address literal.
    domain = draw(domains(u) if draw(st.integers(0, 3)) else addressLiterals)
    route = ""
    if draw(st.integers(0, 9)) == 0:
        route = ",".join("@" + d for d in draw(st.lists(domains(False), min_size=1, max_size=2))) + ":"
    wire = f"<{route}{local}@{domain}>".encode()
    return PathCase(wire, local, domain, route)


# Octets that matter to the path and parameter grammars, for mutations.
_SPECIAL = [b"<", b">", b"@", b'"', b"\\", b"[", b"]", b":", b".", b",", b" ", b"=", b"+", b"-", b";",
            b"\x00", b"\r", b"\n", b"\t", b"\x7f", b"\xc3\xa9", b"\xff", b"\xc3", b"IPv6:", b"%"]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes], special: list[bytes] = _SPECIAL) -> bytes:
    """
    ``base`` with one to three small edits: an octet inserted, deleted or
    replaced, a slice duplicated, or the end cut off.
    """
    data = draw(base)
    # Mostly one edit: enough damage to be wrong, near enough to the valid form.
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        if kind == "insert":
            data = data[:pos] + draw(st.sampled_from(special)) + data[pos:]
        elif kind == "delete":
            data = data[:pos] + data[pos + 1 :]
        elif kind == "replace":
            data = data[:pos] + draw(st.sampled_from(special)) + data[pos + 1 :]
        elif kind == "duplicate":
            end = draw(st.integers(pos, len(data)))
            data = data[:end] + data[pos:end] + data[end:]
        else:
            data = data[:pos]
    return data


# ESMTP parameters.  Each strategy draws (wire form, keyword, parsed value).

def _anyCase(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda flags: "".join(c.lower() if f else c for c, f in zip(word, flags, strict=True))
    )


_xtextSource = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
_xtext = _xtextSource.map(lambda s: (xtextEncode(s), s))

MAIL_PARAMETERS: dict[str, st.SearchStrategy[tuple[str | None, object]]] = {
    "SIZE": st.integers(0, 10**20 - 1).map(lambda n: (str(n), n)),
    "BODY": st.sampled_from(["7BIT", "8BITMIME", "BINARYMIME"]).flatmap(
        lambda v: _anyCase(v).map(lambda w: (w, v))
    ),
    "SMTPUTF8": st.just((None, True)),
    # xtext "<>" would be read as the null AUTH (RFC 4954 §5): not drawn as text.
    "AUTH": st.one_of(st.just(("<>", None)), _xtext.filter(lambda t: t[0] != "<>")),
    "RET": st.sampled_from(["FULL", "HDRS"]).flatmap(lambda v: _anyCase(v).map(lambda w: (w, v))),
    # At most 8 characters, 12 xtext characters each: within ENVID's 100.
    "ENVID": st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8).map(
        lambda s: (xtextEncode(s), s)
    ),
}

_notify = st.one_of(
    st.just(("NEVER",)),
    st.permutations(["SUCCESS", "FAILURE", "DELAY"]).flatmap(
        lambda p: st.integers(1, 3).map(lambda n: tuple(p[:n]))
    ),
).flatmap(lambda items: _anyCase(",".join(items)).map(lambda w: (w, items)))
_addrType = st.tuples(
    st.sampled_from(LETDIG), st.text(st.sampled_from(LETDIG + "-"), max_size=8)
).map("".join)
_orcpt = st.tuples(_addrType, _xtextSource).map(
    lambda t: (f"{t[0]};{xtextEncode(t[1])}", (t[0].lower(), t[1]))
).filter(lambda t: len(t[0]) <= 500)

RCPT_PARAMETERS: dict[str, st.SearchStrategy[tuple[str | None, object]]] = {
    "NOTIFY": _notify,
    "ORCPT": _orcpt,
}

_FIELDS = {"SIZE": "size", "BODY": "body", "SMTPUTF8": "smtputf8", "AUTH": "auth", "RET": "ret",
           "ENVID": "envid", "NOTIFY": "notify", "ORCPT": "orcpt"}


@st.composite
def parameterLists(draw: st.DrawFn, table: dict[str, st.SearchStrategy[tuple[str | None, object]]]) -> tuple[list[bytes], dict[str, object]]:
    """
    Some parameters of ``table``, each at most once, in any order and any
    keyword case, as the octets :func:`splitPathAndParameters` gives; with
    the attribute values the parsed result must have.
    """
    names = draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=len(table)))
    wire: list[bytes] = []
    expected: dict[str, object] = {}
    for name in names:
        value, parsed = draw(table[name])
        keyword = draw(_anyCase(name))
        wire.append((keyword if value is None else f"{keyword}={value}").encode())
        expected[_FIELDS[name]] = parsed
    return wire, expected


# Replies (RFC 5321 §4.2).

_replyText = st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"").replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def replies(draw: st.DrawFn) -> tuple[bytes, int, int, str | None]:
    """
    One reply on the wire, written out by hand (not by formatReply): its
    octets, code, number of lines, and the enhanced code on its lines.
    """
    code = draw(st.integers(200, 599))
    n = draw(st.integers(1, 4))
    enhanced = None
    if code // 100 != 3 and draw(st.booleans()):
        # RFC 3463 classes are 2, 4 and 5; RFC 2034 puts them on 2xx, 4xx and 5xx replies.
        enhanced = f"{code // 100}.{draw(st.integers(0, 999))}.{draw(st.integers(0, 999))}"
    out = b""
    for i in range(n):
        sep = b" " if i == n - 1 else b"-"
        text = draw(_replyText)
        if enhanced:
            text = enhanced.encode() + (b" " + text if text else b"")
        out += b"%03d" % code + sep + text + b"\r\n"
    return out, code, n, enhanced
