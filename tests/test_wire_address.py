"""
Tests for :mod:`txsmtp.wire.address`: RFC 5321 §4.1.2 paths, the limits of
§4.5.3.1, address literals (§4.1.3) and RFC 6531 UTF-8 addresses.
"""

from __future__ import annotations

import re

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.strategies import (
    MAIL_PARAMETERS,
    RCPT_PARAMETERS,
    PathCase,
    mutated,
    parameterLists,
    paths,
)
from txsmtp.errors import SMTPSyntaxError
from txsmtp.wire.address import (
    MAX_DOMAIN,
    MAX_LOCAL,
    MAX_PATH,
    Address,
    parsePath,
    splitPathAndParameters,
)
from txsmtp.wire.params import parseMailParameters, parseRecipientParameters


class ValidPathTests(unittest.TestCase):
    def test_simple(self):
        a = parsePath(b"<user@example.com>")
        self.assertEqual(a, Address("user", "example.com"))
        self.assertEqual(str(a), "user@example.com")
        self.assertTrue(a.isASCII)
        self.assertFalse(a.isLiteral)
        self.assertFalse(a.isPostmaster)

    def test_dotString(self):
        a = parsePath(b"<first.last+tag=x!#$%&'*/?^_`{|}~-@sub.example-domain.co.uk>")
        self.assertEqual(a.localPart, "first.last+tag=x!#$%&'*/?^_`{|}~-")
        self.assertEqual(a.domain, "sub.example-domain.co.uk")

    def test_quotedWithSpaces(self):
        a = parsePath(b'<"john doe"@example.com>')
        self.assertEqual(a.localPart, '"john doe"')
        self.assertEqual(a.unquotedLocalPart, "john doe")

    def test_quotedWithEscapes(self):
        a = parsePath(b'<"a\\"b\\\\c@d"@example.com>')
        self.assertEqual(a.localPart, '"a\\"b\\\\c@d"')
        self.assertEqual(a.unquotedLocalPart, 'a"b\\c@d')

    def test_quotedWithAngleBracket(self):
        a = parsePath(b'<"a>b"@example.com>')
        self.assertEqual(a.unquotedLocalPart, "a>b")

    def test_ipv4Literal(self):
        a = parsePath(b"<user@[192.0.2.1]>")
        self.assertEqual(a.domain, "[192.0.2.1]")
        self.assertTrue(a.isLiteral)

    def test_ipv6Literal(self):
        for lit in (b"IPv6:2001:db8::1", b"IPv6:::1", b"ipv6:2001:db8:0:0:0:0:0:1", b"IPv6:::ffff:192.0.2.1"):
            a = parsePath(b"<user@[" + lit + b"]>")
            self.assertEqual(a.domain, "[" + lit.decode() + "]")

    def test_generalLiteral(self):
        a = parsePath(b"<user@[x-tag:something]>")
        self.assertEqual(a.domain, "[x-tag:something]")

    def test_sourceRouteIgnored(self):
        """RFC 5321 §4.1.1.3 / Appendix C: accept and ignore the source route."""
        a = parsePath(b"<@relay1.example,@relay2.example:user@example.com>")
        self.assertEqual(a, Address("user", "example.com"))

    def test_postmasterOnlyWhenAllowed(self):
        for form in (b"<Postmaster>", b"<postmaster>", b"<POSTMASTER>", b"<PostMaster>"):
            self.assertRaises(SMTPSyntaxError, parsePath, form)
            a = parsePath(form, postmasterOK=True)
            self.assertEqual(a.domain, "")
            self.assertTrue(a.isPostmaster)
            self.assertEqual(str(a), form[1:-1].decode())

    def test_postmasterWithDomain(self):
        self.assertTrue(parsePath(b"<postmaster@example.com>").isPostmaster)

    def test_nullOnlyWhenAllowed(self):
        self.assertIsNone(parsePath(b"<>", nullOK=True))
        with self.assertRaises(SMTPSyntaxError) as cm:
            parsePath(b"<>")
        self.assertEqual(cm.exception.code, 501)


class InvalidPathTests(unittest.TestCase):
    def assertSyntax(self, path: bytes, code: int = 501, **kw) -> SMTPSyntaxError:
        with self.assertRaises(SMTPSyntaxError) as cm:
            parsePath(path, **kw)
        self.assertEqual(cm.exception.code, code, path)
        return cm.exception

    def test_badForms(self):
        for path in (
            b"user@example.com",
            b"<user@example.com",
            b"user@example.com>",
            b"<user>",
            b"<@example.com>",
            b"<user@>",
            b"<user@@example.com>",
            b"<us er@example.com>",
            b"<.user@example.com>",
            b"<user.@example.com>",
            b"<us..er@example.com>",
            b"<user@-example.com>",
            b"<user@example-.com>",
            b"<user@example..com>",
            b"<user@example.com.>",
            b'<"unterminated@example.com>',
            b"<user@exa mple.com>",
            b"<<user@example.com>>",
        ):
            self.assertSyntax(path)

    def test_controlCharactersRefused(self):
        """Command injection through arguments (aiosmtplib GHSA-v3q9-hj7j-63hq, bpo-43124)."""
        for c in (b"\r", b"\n", b"\x00", b"\t", b"\x1b", b"\x7f"):
            self.assertSyntax(b"<us" + c + b"er@example.com>")
            self.assertSyntax(b'<"us' + c + b'er"@example.com>')
            self.assertSyntax(b"<user@exam" + c + b"ple.com>")
            self.assertSyntax(b"<user@[192.0.2.1" + c + b"]>")

    def test_badLiterals(self):
        for lit in (b"[300.1.1.1]", b"[192.0.2]", b"[IPv6:zz::1]", b"[IPv6:1:2:3:4:5:6:7:8:9]", b"[]", b"[:x]", b"[tag:]"):
            self.assertSyntax(b"<user@" + lit + b">")

    def test_ipv6ZoneIdRefused(self):
        """
        RFC 5321 §4.1.3: IPv6-addr is IPv6-full / IPv6-comp / IPv6v4-full /
        IPv6v4-comp, hex digits, colons and dots only; a "%zone" suffix is
        not part of the grammar.
        """
        self.assertSyntax(b"<user@[IPv6:fe80::1%eth0]>")

    def test_localPartLimit(self):
        """RFC 5321 §4.5.3.1.1: local part at most 64 octets."""
        self.assertEqual(parsePath(b"<" + b"a" * MAX_LOCAL + b"@example.com>").localPart, "a" * 64)
        self.assertSyntax(b"<" + b"a" * (MAX_LOCAL + 1) + b"@example.com>")

    def test_quotedLocalPartLimit(self):
        self.assertSyntax(b'<"' + b"a b" * 30 + b'"@example.com>')

    def test_pathLimit(self):
        """RFC 5321 §4.5.3.1.3: a path is at most 256 octets, brackets included."""
        domain = b"d" * 60 + b"." + b"e" * 60 + b"." + b"f" * 60 + b"." + b"g" * (MAX_PATH - 4 - 183)
        path = b"<u@" + domain + b">"
        self.assertEqual(len(path), MAX_PATH)
        self.assertEqual(parsePath(path).domain, domain.decode())
        self.assertSyntax(b"<uu@" + domain + b">")

    def test_domainLimit(self):
        """RFC 5321 §4.5.3.1.2: a domain is at most 255 octets."""
        domain = b"a" * 63 + b"." + b"b" * 63 + b"." + b"c" * 63 + b"." + b"d" * 66
        self.assertGreater(len(domain), MAX_DOMAIN)
        self.assertSyntax(b"<u@" + domain + b">")

    def test_utf8NeedsSMTPUTF8(self):
        """RFC 6531 §3.2: a UTF-8 address without SMTPUTF8 gets 553 5.6.7."""
        for path in ("<用户@例子.广告>", "<jos\u00e9@example.com>", "<user@b\u00fccher.example>"):
            err = self.assertSyntax(path.encode("utf-8"), 553)
            self.assertEqual(err.enhanced, "5.6.7")
            a = parsePath(path.encode("utf-8"), utf8=True)
            self.assertFalse(a.isASCII)
            self.assertEqual(f"<{a}>", path)

    def test_utf8QuotedLocalPart(self):
        a = parsePath('<"j\u00f6 d"@example.com>'.encode(), utf8=True)
        self.assertEqual(a.unquotedLocalPart, "j\u00f6 d")

    def test_invalidUTF8(self):
        self.assertSyntax(b"<\xff\xfe@example.com>", utf8=True)
        self.assertSyntax(b"<\xff\xfe@example.com>", 553)

    def test_utf8LocalPartLimitCountsOctets(self):
        local = "\u00e9" * 33  # 66 octets
        self.assertSyntax(f"<{local}@example.com>".encode(), utf8=True)


class SplitTests(unittest.TestCase):
    def test_noParameters(self):
        self.assertEqual(splitPathAndParameters(b"<a@b.example>"), (b"<a@b.example>", []))

    def test_parameters(self):
        self.assertEqual(
            splitPathAndParameters(b"<a@b.example> SIZE=100 BODY=8BITMIME"),
            (b"<a@b.example>", [b"SIZE=100", b"BODY=8BITMIME"]),
        )

    def test_spaceAfterColonTolerated(self):
        self.assertEqual(splitPathAndParameters(b" <a@b.example>"), (b"<a@b.example>", []))

    def test_quotedAngleBracket(self):
        self.assertEqual(
            splitPathAndParameters(b'<"x> SIZE=1"@b.example> SIZE=2'),
            (b'<"x> SIZE=1"@b.example>', [b"SIZE=2"]),
        )

    def test_quotedEscapedQuote(self):
        self.assertEqual(
            splitPathAndParameters(b'<"x\\">y"@b.example> BODY=7BIT'),
            (b'<"x\\">y"@b.example>', [b"BODY=7BIT"]),
        )

    def test_nullPath(self):
        self.assertEqual(splitPathAndParameters(b"<> SIZE=10"), (b"<>", [b"SIZE=10"]))

    def test_generalLiteralWithAngleBracketAndQuote(self):
        """RFC 5321 §4.1.3: dcontent (%d33-90 / %d94-126) includes ">" and DQUOTE."""
        for path in (b'<a@[x:>]>', b'<a@[x:"]>', b'<"q"@[x:a>b"c]>', b'<@[x:>]:a@b.example>'):
            self.assertEqual(splitPathAndParameters(path + b" SIZE=1"), (path, [b"SIZE=1"]))
        self.assertEqual(parsePath(b'<a@[x:a>b"c]>'), Address("a", '[x:a>b"c]'))
        with self.assertRaises(SMTPSyntaxError):
            splitPathAndParameters(b"<a@[192.0.2.1> SIZE=1")

    def test_errors(self):
        for arg in (b"a@b.example", b"<a@b.example", b"<a@b.example>SIZE=1", b"", b'<"a>@b.example'):
            with self.assertRaises(SMTPSyntaxError) as cm:
                splitPathAndParameters(arg)
            self.assertEqual(cm.exception.code, 501)


_interesting = st.lists(
    st.sampled_from(
        [b"<", b">", b"@", b'"', b"\\", b"[", b"]", b":", b".", b",", b" ", b"=", b"+", b"a", b"Z9", b"-",
         b"IPv6:", b"::1", b"192.0.2.1", b"\xc3\xa9", b"\xff", b"\x00", b"\r", b"SIZE", b"NOTIFY", b"ORCPT",
         b"rfc822;", b"+2B", b"SMTPUTF8", b"postmaster"]
    ),
    max_size=30,
).map(b"".join)
_arbitrary = st.one_of(st.binary(max_size=300), _interesting)
_mailParams = parameterLists(MAIL_PARAMETERS)
_rcptParams = parameterLists(RCPT_PARAMETERS)
#: Parameter lists as splitPathAndParameters gives them: random, well-formed
#: (MAIL, maybe with X-FOO, or RCPT), and well-formed with one of them damaged.
_wellFormedParamLists = st.one_of(
    st.tuples(_mailParams, st.sampled_from([[], [b"X-FOO"], [b"x-foo=bar"]])).map(lambda t: t[0][0] + t[1]),
    _rcptParams.map(lambda t: t[0]),
)
_paramLists = st.one_of(
    st.lists(_arbitrary, max_size=5),
    _wellFormedParamLists,
    st.tuples(_wellFormedParamLists.filter(bool), st.data()).map(
        lambda t: t[0][:-1] + [t[1].draw(mutated(st.just(t[0][-1])))]
    ),
)


def _mailArgument(case: PathCase, params: list[bytes], spaces: int) -> bytes:
    """The text after ``MAIL FROM:`` / ``RCPT TO:``: optional spaces, the path, its parameters."""
    return b" " * spaces + b" ".join([case.wire, *params])


def _expectedPath(case: PathCase, utf8: bool) -> tuple[int, str] | Address:
    """What parsePath must make of a well-formed path: the address, or the (code, enhanced) refusal."""
    if len(case.wire) > MAX_PATH:
        return (501, "5.1.0")
    if not case.isASCII and not utf8:
        return (553, "5.6.7")
    if len(case.localPart.encode("utf-8")) > MAX_LOCAL:
        return (501, "5.1.3")
    return Address(case.localPart, case.domain)


def _parseOrRefusal(data: bytes, **kw) -> tuple[int, str] | Address | None:
    try:
        return parsePath(data, **kw)
    except SMTPSyntaxError as e:
        return (e.code, e.enhanced)


_wellFormedArguments = st.builds(
    _mailArgument, paths(), st.one_of(_mailParams, _rcptParams).map(lambda t: t[0]), st.integers(0, 2)
)

#: Anything: random octets, octets from the grammar's alphabet, well-formed
#: paths and arguments, and those a little damaged.
_anyPathInput = st.one_of(
    _arbitrary,
    paths().map(lambda c: c.wire),
    mutated(paths().map(lambda c: c.wire)),
    _wellFormedArguments,
    mutated(_wellFormedArguments),
)


class WellFormedPathTests(unittest.TestCase):
    """parsePath on paths built from the RFC 5321 / RFC 6531 grammar: it finds the mailbox that was written."""

    @settings(max_examples=400, deadline=None)
    @given(paths(), st.booleans(), st.booleans(), st.booleans())
    def test_parsesWhatWasWritten(self, case, utf8, nullOK, postmasterOK):
        expected = _expectedPath(case, utf8)
        got = _parseOrRefusal(case.wire, utf8=utf8, nullOK=nullOK, postmasterOK=postmasterOK)
        if isinstance(expected, Address):
            kind = "literal" if case.domain.startswith("[") else "domain"
            quoted = "quoted" if case.localPart.startswith('"') else "dot-string"
            event(f"parsed: {quoted}@{kind}" + (", UTF-8" if not case.isASCII else "") + (", route" if case.route else ""))
        else:
            event(f"refused as expected: {expected[0]} {expected[1]}")
        self.assertEqual(got, expected, case)
        if isinstance(got, Address):
            self.assertEqual(got.isASCII, case.isASCII)
            self.assertEqual(got.isLiteral, case.domain.startswith("["))
            self.assertEqual(f"<{got}>".encode(), case.wire.replace(case.route.encode(), b"", 1))
            if case.localPart.startswith('"'):
                self.assertEqual(f'"{got.unquotedLocalPart}"', re.sub(r"\\(.)", r"\1", case.localPart))

    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from(["Postmaster", "postmaster", "POSTMASTER", "PostMaster"]), st.booleans())
    def test_postmaster(self, name, utf8):
        got = _parseOrRefusal(f"<{name}>".encode(), utf8=utf8, postmasterOK=True)
        self.assertEqual(got, Address(name, ""))
        self.assertTrue(got.isPostmaster)
        self.assertEqual(_parseOrRefusal(f"<{name}>".encode(), utf8=utf8), (501, "5.1.3"))


class RobustnessTests(unittest.TestCase):
    """Every parser raises SMTPSyntaxError or returns, for any input."""

    @settings(max_examples=400, deadline=None)
    @given(_anyPathInput, st.booleans(), st.booleans(), st.booleans())
    def test_parsePath(self, data, utf8, nullOK, postmasterOK):
        try:
            result = parsePath(data, utf8=utf8, nullOK=nullOK, postmasterOK=postmasterOK)
        except SMTPSyntaxError as e:
            event("parsePath: refused")
            self.assertIn((e.code, e.enhanced[:4]), ((501, "5.1."), (501, "5.5."), (501, "5.6."), (553, "5.6.")))
            return
        if result is None:
            event("parsePath: null path")
            self.assertTrue(nullOK)
            self.assertEqual(data, b"<>")
        else:
            event("parsePath: parsed")
            self.assertIsInstance(result, Address)
            text = str(result)
            self.assertFalse(any(ord(c) < 0x20 or ord(c) == 0x7F for c in text))
            self.assertLessEqual(len(data), MAX_PATH)
            self.assertLessEqual(len(result.localPart.encode("utf-8")), MAX_LOCAL)
            self.assertTrue(data.endswith(f"{result}>".encode()))
            if not utf8:
                self.assertTrue(result.isASCII)
            if not result.domain:
                self.assertTrue(postmasterOK)
                self.assertTrue(result.isPostmaster)

    @settings(max_examples=400, deadline=None)
    @given(paths(), st.one_of(_mailParams, _rcptParams), st.integers(0, 2))
    def test_splitWellFormed(self, case, params, spaces):
        """A well-formed argument splits into its path and its parameters, whatever the path holds."""
        wire, _ = params
        event(f"{min(len(wire), 2)} parameters" + (", quoted local part" if case.localPart.startswith('"') else ""))
        self.assertEqual(splitPathAndParameters(_mailArgument(case, wire, spaces)), (case.wire, wire))

    @settings(max_examples=400, deadline=None)
    @given(_anyPathInput)
    def test_splitPathAndParameters(self, data):
        try:
            path, params = splitPathAndParameters(data)
        except SMTPSyntaxError as e:
            event("split: refused")
            self.assertEqual(e.code, 501)
            return
        event("split: split")
        self.assertTrue(path.startswith(b"<") and path.endswith(b">"))
        self.assertTrue(all(params))
        self.assertFalse(any(b" " in p for p in params))
        self.assertTrue(data.lstrip(b" ").startswith(path))

    @settings(max_examples=400, deadline=None)
    @given(paths(), _mailParams, _rcptParams, st.integers(0, 2))
    def test_wholeMailArgument(self, case, mail, rcpt, spaces):
        """
        The sequence the server runs for MAIL FROM: and RCPT TO: gives the
        mailbox and the parameters that were written.
        """
        mailWire, mailExpected = mail
        utf8 = bool(mailExpected.get("smtputf8"))
        expectedPath = _expectedPath(case, utf8)
        path, params = splitPathAndParameters(_mailArgument(case, mailWire, spaces))
        parsed = parseMailParameters(params, utf8=utf8)
        for name, value in mailExpected.items():
            self.assertEqual(getattr(parsed, name), value, name)
        self.assertEqual(_parseOrRefusal(path, utf8=parsed.smtputf8, nullOK=True), expectedPath)

        rcptWire, rcptExpected = rcpt
        path, params = splitPathAndParameters(_mailArgument(case, rcptWire, spaces))
        rparsed = parseRecipientParameters(params, utf8=utf8)
        for name, value in rcptExpected.items():
            self.assertEqual(getattr(rparsed, name), value, name)
        self.assertEqual(_parseOrRefusal(path, utf8=utf8, postmasterOK=True), expectedPath)
        event("mailbox accepted" if isinstance(expectedPath, Address) else f"mailbox refused: {expectedPath}")
        event(f"{min(len(mailWire), 3)} MAIL parameters, {len(rcptWire)} RCPT parameters")

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(["MAIL", "RCPT"]), st.data(), st.booleans())
    def test_anyMailArgument(self, command, data, utf8):
        """
        Any argument, well-formed, damaged or random: the server's sequence
        refuses it with a syntax error or accepts a sane result.
        """
        if command == "MAIL":
            params, path = parseMailParameters, lambda a: parsePath(a, utf8=utf8, nullOK=True)
            wellFormed = st.builds(_mailArgument, paths(st.just(utf8)), _mailParams.map(lambda t: t[0]), st.integers(0, 2))
        else:
            params, path = parseRecipientParameters, lambda a: parsePath(a, utf8=utf8, postmasterOK=True)
            wellFormed = st.builds(_mailArgument, paths(st.just(utf8)), _rcptParams.map(lambda t: t[0]), st.integers(0, 2))
        argument = data.draw(st.one_of(_arbitrary, wellFormed, mutated(wellFormed)))
        try:
            a, p = splitPathAndParameters(argument)
            parsed = params(p, utf8=utf8)
            address = path(a)
        except SMTPSyntaxError as e:
            event(f"{command}: refused")
            self.assertIn(e.code, (501, 553, 555))
        else:
            event(f"{command}: accepted")
            self.assertTrue(address is None or isinstance(address, Address))
            self.assertEqual(parsed.extra, {})

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(_mailParams, _rcptParams), st.booleans())
    def test_parameterModel(self, params, utf8):
        """Well-formed parameter lists parse to the values that were written; the other command refuses them."""
        wire, expected = params
        isMail = any(w.upper().split(b"=")[0] in (b"SIZE", b"BODY", b"SMTPUTF8", b"AUTH", b"RET", b"ENVID") for w in wire)
        parse, other = (
            (parseMailParameters, parseRecipientParameters) if isMail or not wire else
            (parseRecipientParameters, parseMailParameters)
        )
        result = parse(wire, utf8=utf8)
        for name, value in expected.items():
            self.assertEqual(getattr(result, name), value, name)
        event(f"{parse.__name__}: {len(wire)} parameters")
        if wire:
            with self.assertRaises(SMTPSyntaxError) as cm:
                other(wire, utf8=utf8)
            self.assertEqual(cm.exception.code, 555)

    @settings(max_examples=300, deadline=None)
    @given(_paramLists, st.booleans())
    def test_parameterParsers(self, params, utf8):
        allMail = frozenset({"SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID", "X-FOO"})
        try:
            result = parseMailParameters(params, allMail, utf8)
        except SMTPSyntaxError as e:
            event("MAIL parameters: refused")
            self.assertIn(e.code, (501, 555))
        else:
            event("MAIL parameters: parsed" + (" (some)" if params else " (none)"))
            self.assertTrue(result.size is None or result.size >= 0)
            self.assertLessEqual(set(result.extra), {"X-FOO"})
        try:
            rresult = parseRecipientParameters(params, frozenset({"NOTIFY", "ORCPT"}), utf8)
        except SMTPSyntaxError as e:
            event("RCPT parameters: refused")
            self.assertIn(e.code, (501, 555))
        else:
            event("RCPT parameters: parsed" + (" (some)" if params else " (none)"))
            self.assertTrue(rresult.notify is None or len(rresult.notify) >= 1)
            self.assertEqual(rresult.extra, {})
